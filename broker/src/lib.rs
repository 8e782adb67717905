//! The weir broker: executors, shards, listeners, coordinators, config, metrics.
//!
//! Only the command-line entry exists so far; see `src/main.rs`.
