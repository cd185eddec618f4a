//! Rounds (sale windows) and their items: validation of a new round and the
//! approval state machine.
//!
//! `draft → submitted → approved`, or `submitted → rejected`; a rejected
//! round can be edited back to draft by resubmitting. Only an approved round
//! is preheated and visible to buyers, and its reviewer must not be the
//! operator who submitted it.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoundStatus {
    Draft,
    Submitted,
    Approved,
    Rejected,
}

impl RoundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Submitted => "submitted",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "draft" => Self::Draft,
            "submitted" => Self::Submitted,
            "approved" => Self::Approved,
            "rejected" => Self::Rejected,
            _ => return None,
        })
    }
}

/// A requested change of a round's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Submit,
    Approve,
    Reject,
}

/// Why a transition is not allowed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransitionError {
    #[error("a round cannot be {verb} while it is {from}")]
    WrongState {
        verb: &'static str,
        from: &'static str,
    },
    #[error("the operator who submitted a round cannot review it")]
    SelfReview,
}

impl Transition {
    fn verb(self) -> &'static str {
        match self {
            Self::Submit => "submitted",
            Self::Approve => "approved",
            Self::Reject => "rejected",
        }
    }

    /// The status after this transition, given who submitted the round and
    /// who asks now.
    pub fn apply(
        self,
        from: RoundStatus,
        submitted_by: Option<&str>,
        actor: &str,
    ) -> Result<RoundStatus, TransitionError> {
        use RoundStatus::*;
        let wrong = || TransitionError::WrongState {
            verb: self.verb(),
            from: from.as_str(),
        };
        match self {
            Self::Submit => match from {
                Draft | Rejected => Ok(Submitted),
                _ => Err(wrong()),
            },
            Self::Approve | Self::Reject => {
                if from != Submitted {
                    return Err(wrong());
                }
                if submitted_by == Some(actor) {
                    return Err(TransitionError::SelfReview);
                }
                Ok(if self == Self::Approve {
                    Approved
                } else {
                    Rejected
                })
            }
        }
    }
}

/// A round as an operator submits it, before validation.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRoundBody {
    pub name: String,
    /// RFC 3339 with an offset.
    #[schema(value_type = String, format = DateTime)]
    pub starts_at: chrono::DateTime<chrono::FixedOffset>,
    /// RFC 3339 with an offset; after `starts_at`.
    #[schema(value_type = String, format = DateTime)]
    pub ends_at: chrono::DateTime<chrono::FixedOffset>,
    pub items: Vec<NewItemBody>,
    /// Milliseconds from the start during which the edge admits buys in
    /// random order instead of arrival order (0: off). At most
    /// 60000 and less than the round's length; default 1000 (or half the
    /// round, if that is shorter).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 60000)]
    pub admission_window_ms: Option<i64>,
    /// Keys the ticket's proof-of-work challenge makes a buyer derive at
    /// most (0-[`MAX_POW_DIFFICULTY`]); 0, the default, asks for none.
    /// Needs purchase tickets (`tickets.enabled`).
    #[serde(default)]
    pub pow_difficulty: Option<i64>,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewItemBody {
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub image_url: String,
    pub original_price_cents: i64,
    pub sale_price_cents: i64,
    pub stock: i64,
    #[serde(default)]
    pub per_user_limit: Option<i64>,
}

/// A validated round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRound {
    pub name: String,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub items: Vec<NewItem>,
    /// The admission window at the start (0: off); see
    /// [`NewRoundBody::admission_window_ms`].
    pub admission_window_ms: i64,
    /// 0: no challenge.
    pub pow_difficulty: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewItem {
    pub title: String,
    pub description: String,
    pub image_url: String,
    pub original_price_cents: i64,
    pub sale_price_cents: i64,
    pub stock: i64,
    pub per_user_limit: i64,
}

pub const MAX_ITEMS: usize = 100;
pub const MAX_STOCK: i64 = 10_000_000;
pub const MAX_PRICE_CENTS: i64 = 100_000_000_000;
/// The admission window a round gets when none is given.
pub const DEFAULT_ADMISSION_WINDOW_MS: i64 = 1_000;
/// The longest admission window: what a buyer may wait at most.
pub const MAX_ADMISSION_WINDOW_MS: i64 = 60_000;

/// A round's admission window: `given`, or the default (capped at half
/// the round's length, so a short round still gets one shorter than
/// itself); between 0 and [`MAX_ADMISSION_WINDOW_MS`] and shorter than
/// the round.
pub fn admission_window(given: Option<i64>, round_ms: i64) -> Result<i64, String> {
    let w = given.unwrap_or(DEFAULT_ADMISSION_WINDOW_MS.min(round_ms / 2));
    if !(0..=MAX_ADMISSION_WINDOW_MS).contains(&w) {
        return Err(format!(
            "admission_window_ms must be 0-{MAX_ADMISSION_WINDOW_MS}"
        ));
    }
    if w > 0 && w >= round_ms {
        return Err("admission_window_ms must be shorter than the round".into());
    }
    Ok(w)
}
pub const MAX_POW_DIFFICULTY: i64 = seckill_proto::pow::MAX_DIFFICULTY as i64;

impl NewRound {
    pub fn parse(body: NewRoundBody) -> Result<Self, String> {
        let name = body.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 200 {
            return Err("name must be 1-200 characters".into());
        }
        let starts_at_ms = body.starts_at.timestamp_millis();
        let ends_at_ms = body.ends_at.timestamp_millis();
        if ends_at_ms <= starts_at_ms {
            return Err("ends_at must be after starts_at".into());
        }
        if body.items.is_empty() || body.items.len() > MAX_ITEMS {
            return Err(format!("a round has 1-{MAX_ITEMS} items"));
        }
        let items = body
            .items
            .into_iter()
            .enumerate()
            .map(|(i, it)| NewItem::parse(it).map_err(|e| format!("items[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let admission_window_ms =
            admission_window(body.admission_window_ms, ends_at_ms - starts_at_ms)?;
        let pow_difficulty = body.pow_difficulty.unwrap_or(0);
        if !(0..=MAX_POW_DIFFICULTY).contains(&pow_difficulty) {
            return Err(format!("pow_difficulty must be 0-{MAX_POW_DIFFICULTY}"));
        }
        Ok(Self {
            name,
            starts_at_ms,
            ends_at_ms,
            items,
            admission_window_ms,
            pow_difficulty,
        })
    }
}

impl NewItem {
    pub fn parse(b: NewItemBody) -> Result<Self, String> {
        let title = b.title.trim().to_owned();
        if title.is_empty() || title.chars().count() > 200 {
            return Err("title must be 1-200 characters".into());
        }
        if b.description.chars().count() > 10_000 {
            return Err("description must be at most 10000 characters".into());
        }
        let image_url = b.image_url.trim().to_owned();
        if !(image_url.is_empty()
            || image_url.starts_with("https://")
            || image_url.starts_with("http://")
            || image_url.starts_with('/'))
            || image_url.len() > 2000
            || image_url.contains(['"', '<', '>', ' '])
        {
            return Err("image_url must be an http(s) URL or an absolute path".into());
        }
        for (field, v) in [
            ("original_price_cents", b.original_price_cents),
            ("sale_price_cents", b.sale_price_cents),
        ] {
            if !(0..=MAX_PRICE_CENTS).contains(&v) {
                return Err(format!("{field} must be 0-{MAX_PRICE_CENTS}"));
            }
        }
        if !(1..=MAX_STOCK).contains(&b.stock) {
            return Err(format!("stock must be 1-{MAX_STOCK}"));
        }
        let per_user_limit = b.per_user_limit.unwrap_or(1);
        if per_user_limit < 1 || per_user_limit > b.stock {
            return Err("per_user_limit must be between 1 and stock".into());
        }
        Ok(Self {
            title,
            description: b.description,
            image_url,
            original_price_cents: b.original_price_cents,
            sale_price_cents: b.sale_price_cents,
            stock: b.stock,
            per_user_limit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RoundStatus::*;

    #[test]
    fn approval_needs_another_person() {
        let t = Transition::Approve;
        assert_eq!(
            t.apply(Submitted, Some("op"), "op"),
            Err(TransitionError::SelfReview)
        );
        assert_eq!(t.apply(Submitted, Some("op"), "boss"), Ok(Approved));
        assert!(t.apply(Draft, None, "boss").is_err());
        assert!(t.apply(Approved, Some("op"), "boss").is_err());
        assert_eq!(
            Transition::Reject.apply(Submitted, Some("op"), "boss"),
            Ok(Rejected)
        );
        assert_eq!(
            Transition::Submit.apply(Rejected, None, "op"),
            Ok(Submitted)
        );
        assert!(Transition::Submit.apply(Approved, None, "op").is_err());
    }

    fn body(items: serde_json::Value) -> NewRoundBody {
        serde_json::from_value(serde_json::json!({
            "name": "Singles day",
            "starts_at": "2026-11-11T00:00:00Z",
            "ends_at": "2026-11-11T01:00:00+00:00",
            "items": items,
        }))
        .unwrap()
    }

    #[test]
    fn parses_a_round() {
        let r = NewRound::parse(body(serde_json::json!([{
            "title": "Phone", "original_price_cents": 99900, "sale_price_cents": 100, "stock": 50
        }])))
        .unwrap();
        assert_eq!(r.items[0].per_user_limit, 1);
        assert_eq!(r.ends_at_ms - r.starts_at_ms, 3_600_000);
        assert_eq!(r.admission_window_ms, DEFAULT_ADMISSION_WINDOW_MS);
    }

    #[test]
    fn admission_window_is_bounded_by_the_round() {
        let hour = 3_600_000;
        assert_eq!(admission_window(None, hour), Ok(1_000));
        assert_eq!(admission_window(Some(0), hour), Ok(0));
        assert_eq!(admission_window(Some(60_000), hour), Ok(60_000));
        assert!(admission_window(Some(60_001), hour).is_err());
        assert!(admission_window(Some(-1), hour).is_err());
        // Shorter than the round it opens.
        assert!(admission_window(Some(5_000), 5_000).is_err());
        assert_eq!(admission_window(Some(4_999), 5_000), Ok(4_999));
        assert_eq!(admission_window(Some(0), 1), Ok(0));
        // The default never refuses a short round.
        assert_eq!(admission_window(None, 600), Ok(300));
        assert_eq!(admission_window(None, 1), Ok(0));

        let mut b = body(serde_json::json!([{
            "title": "Phone", "original_price_cents": 1, "sale_price_cents": 1, "stock": 1
        }]));
        b.admission_window_ms = Some(250);
        assert_eq!(NewRound::parse(b.clone()).unwrap().admission_window_ms, 250);
        b.admission_window_ms = Some(hour);
        assert!(NewRound::parse(b).is_err());
    }

    #[test]
    fn refuses_bad_items() {
        for it in [
            serde_json::json!({"title": "", "original_price_cents": 1, "sale_price_cents": 1, "stock": 1}),
            serde_json::json!({"title": "a", "original_price_cents": -1, "sale_price_cents": 1, "stock": 1}),
            serde_json::json!({"title": "a", "original_price_cents": 1, "sale_price_cents": 1, "stock": 0}),
            serde_json::json!({"title": "a", "original_price_cents": 1, "sale_price_cents": 1, "stock": 2, "per_user_limit": 3}),
            serde_json::json!({"title": "a", "original_price_cents": 1, "sale_price_cents": 1, "stock": 2, "image_url": "javascript:x"}),
        ] {
            assert!(NewRound::parse(body(serde_json::json!([it]))).is_err());
        }
        assert!(NewRound::parse(body(serde_json::json!([]))).is_err());
    }
}
