//! What the Seckill edge and backend share, so both speak the same contract:
//! the bearer-token format ([`auth`]), the stable error codes of the HTTP
//! API ([`errors`]) and the edge-permit headers ([`permit`]).

pub mod auth;
pub mod errors;
pub mod permit;
