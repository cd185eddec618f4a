//! The edge-permit contract between edge and backend.
//!
//! An edge forwards a buy only with permits for its units, leased from
//! Redis (`lua/redis/lease.lua`). It names them in the request header
//! [`REQUEST_HEADER`] (`<node>;<lease generation>;<units>`); the backend
//! passes them to `reserve.lua`, which takes the units out of that node's
//! lease in the same step that reserves them, and answers in the response
//! header [`RESPONSE_HEADER`] what it did to the lease ([`Effect`]). The
//! edge settles its own count from that answer alone, so Redis and the edge
//! never need to agree on anything else.

use std::fmt;

/// Request header: the permits a forwarded buy carries.
pub const REQUEST_HEADER: &str = "x-seckill-permit";
/// Response header: what the reservation did to those permits.
pub const RESPONSE_HEADER: &str = "x-seckill-permit";

/// The common start of an item's Redis keys, `<prefix>:{r<round>:i<item>}`:
/// the hash tag keeps every key of one item (stock, attempts, leases) in one
/// Redis Cluster slot, so one script can touch them all.
pub fn item_base(prefix: &str, round_id: i64, item_id: i64) -> String {
    format!("{prefix}:{{r{round_id}:i{item_id}}}")
}

/// Permits named by a forwarded buy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgePermit {
    /// The edge node whose lease holds them.
    pub node: String,
    /// The generation of that lease (a new lease has a new one).
    pub generation: u64,
    /// How many units they cover.
    pub units: i64,
}

impl EdgePermit {
    /// Parses the request header's value; `None` when malformed.
    pub fn parse(v: &str) -> Option<Self> {
        let mut it = v.split(';');
        let node = it.next()?.trim();
        let generation = it.next()?.trim().parse().ok()?;
        let units: i64 = it.next()?.trim().parse().ok()?;
        if it.next().is_some() || node.is_empty() || node.len() > 128 || units <= 0 {
            return None;
        }
        Some(Self {
            node: node.to_owned(),
            generation,
            units,
        })
    }
}

impl fmt::Display for EdgePermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{};{};{}", self.node, self.generation, self.units)
    }
}

/// What a buy did to the permits it carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Taken out of the node's lease: they became a reservation.
    Spent,
    /// Taken out of the node's lease: the item is sold out.
    Dropped,
    /// The lease is unchanged (refused before any unit moved): the node may
    /// use them again.
    Kept,
    /// Not in the node's lease (an older generation, or fewer units than
    /// named): the node must forget them and renew its lease.
    Void,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Spent => "spent",
            Effect::Dropped => "dropped",
            Effect::Kept => "kept",
            Effect::Void => "void",
        }
    }

    pub fn parse(v: &str) -> Option<Self> {
        Some(match v {
            "spent" => Effect::Spent,
            "dropped" => Effect::Dropped,
            "kept" => Effect::Kept,
            "void" => Effect::Void,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permit_header_round_trips() {
        let p = EdgePermit {
            node: "edge-1".into(),
            generation: 7,
            units: 3,
        };
        assert_eq!(p.to_string(), "edge-1;7;3");
        assert_eq!(EdgePermit::parse("edge-1;7;3"), Some(p));
        for bad in [
            "", "a", "a;1", "a;x;1", "a;1;0", "a;1;-2", ";1;1", "a;1;1;1",
        ] {
            assert_eq!(EdgePermit::parse(bad), None, "{bad}");
        }
        for e in [Effect::Spent, Effect::Dropped, Effect::Kept, Effect::Void] {
            assert_eq!(Effect::parse(e.as_str()), Some(e));
        }
    }
}
