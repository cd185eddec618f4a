//! What the Seckill edge and backend share, so both speak the same contract:
//! the bearer-token format ([`auth`]), the stable error codes of the HTTP
//! API ([`errors`]), the edge-permit headers ([`permit`]) and the purchase
//! tickets ([`ticket`]).

pub mod auth;
pub mod errors;
pub mod permit;
pub mod ticket;
