//! Pure domain types of a sale: rounds and their approval, items, attempts,
//! buy requests. Everything here validates itself and does no I/O.

pub mod attempt;
pub mod buy;
pub mod round;

pub use attempt::{AttemptId, AttemptStatus};
pub use buy::BuyRequest;
pub use round::{NewItem, NewRound, RoundStatus, Transition};
