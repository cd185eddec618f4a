//! What the Seckill edge and backend share, so both speak the same contract:
//! the bearer-token format ([`auth`]) and the stable error codes of the HTTP
//! API ([`errors`]).

pub mod auth;
pub mod errors;
