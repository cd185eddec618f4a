//! A buy request's body, validated.

use serde::Deserialize;

/// The JSON body of `POST …/buy`: `{"qty": n}`, `qty` defaulting to 1.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuyBody {
    /// Units to buy, 1 up to the sale's and the item's limit (default 1).
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 1)]
    pub qty: Option<serde_json::Number>,
}

/// A validated quantity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuyRequest {
    pub qty: i64,
}

impl BuyRequest {
    /// `max_qty` is the configured ceiling of one request; the item's own
    /// per-user limit is checked atomically in Redis.
    pub fn parse(body: BuyBody, max_qty: i64) -> Result<Self, String> {
        let qty = match body.qty {
            None => 1,
            Some(n) => n
                .as_i64()
                .ok_or_else(|| "qty must be a whole number".to_string())?,
        };
        if qty < 1 {
            return Err("qty must be at least 1".into());
        }
        if qty > max_qty {
            return Err(format!("qty must be at most {max_qty}"));
        }
        Ok(Self { qty })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<BuyRequest, String> {
        let body: BuyBody = serde_json::from_str(json).map_err(|e| e.to_string())?;
        BuyRequest::parse(body, 100)
    }

    #[test]
    fn quantities() {
        assert_eq!(parse("{}").unwrap().qty, 1);
        assert_eq!(parse(r#"{"qty":3}"#).unwrap().qty, 3);
        assert!(parse(r#"{"qty":0}"#).is_err());
        assert!(parse(r#"{"qty":-2}"#).is_err());
        assert!(parse(r#"{"qty":101}"#).is_err());
        assert!(parse(r#"{"qty":1.5}"#).is_err());
        assert!(parse(r#"{"qty":1e30}"#).is_err());
        assert!(parse(r#"{"qty":"2"}"#).is_err());
        assert!(parse(r#"{"qty":2,"x":1}"#).is_err());
    }
}
