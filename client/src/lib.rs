//! The native Rust client (producer, consumer, admin). Not built yet: it arrives with the
//! broker's native protocol.
