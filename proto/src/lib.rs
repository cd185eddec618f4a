//! What the Seckill edge and backend share, so both speak the same contract:
//! the bearer-token format ([`auth`]), the stable error codes of the HTTP
//! API ([`errors`]), the edge-permit headers ([`permit`]), the purchase
//! tickets ([`ticket`]) and the proof-of-work challenges in front of them
//! ([`pow`]).

pub mod auth;
pub mod errors;
pub mod permit;
pub mod pow;
pub mod ticket;
