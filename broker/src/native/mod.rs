//! The native protocol's front door: listeners, connections, request handlers.

mod codec;
mod connection;
mod handlers;

pub use connection::serve_connection;
