//! The order queue on RabbitMQ: the message format, the queue topology
//! (order, retry, dead-letter and expiry queues), the confirmed publisher,
//! and the order writer that turns messages into orders.

pub mod broker;
pub mod message;
pub mod publisher;
pub mod topology;
pub mod writer;

pub use message::OrderMessage;
pub use publisher::{PublishError, Publisher};
pub use writer::{OrderWriter, WriterHooks};
