//! `loadgen`: drives a weir broker with producers and consumers, measures throughput and
//! latency (HdrHistogram, coordinated omission corrected in open loop), and verifies
//! every message it consumed: counts, gaps, duplicates, per-partition order, checksums.
//! A run that loses data fails loudly.

mod kafka;
pub mod message;
mod run;
pub mod verify;

pub use run::{AcksArg, Config, Protocol, Report, run};
