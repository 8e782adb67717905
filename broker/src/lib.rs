//! The weir broker: executors and shards, the channel mesh between them, the native
//! protocol's listeners, metadata, committed offsets, configuration and metrics.
//! See `docs/ARCHITECTURE.md`.

pub mod bench;
pub mod boot;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod error;
pub mod fetcher;
pub mod group;
pub mod http;
pub mod kafka;
pub mod metadata;
pub mod metrics;
pub mod native;
pub mod net;
pub mod offsets;
pub mod ops;
pub mod producers;
pub mod replay;
pub mod replica;
pub mod router;
pub mod security;
pub mod shard;
pub mod topic;
pub mod txn;
