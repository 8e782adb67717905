//! The Kafka protocol's front door (port 9092): unmodified Kafka clients produce,
//! consume, run consumer groups and administer topics. Requests are decoded and
//! responses encoded by the `kafka-protocol` crate; the work is done by `crate::ops`,
//! the same operations the native protocol calls.

mod admin;
pub mod codec;
mod connection;
pub(crate) mod errors;
mod fetch;
mod groups;
mod handlers;
pub mod peer;
mod produce;
mod sasl;
mod topics;
mod txn;
pub mod versions;

pub use connection::serve_connection;
