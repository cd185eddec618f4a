//! sea-orm entities of the tables created in `migrations/`.

pub mod item;
pub mod order;
pub mod round;
