//! weir's measurements.
//!
//! Every performance figure weir reports is a ratio to a limit of the same machine
//! measured in the same run ([`limits`]), because absolute figures drift between runs and
//! machines. Criterion benchmarks live in `benches/`; results go to `docs/BENCHMARKS.md`.

pub mod limits;
pub mod percentiles;
pub mod process;
pub mod steal;

pub use percentiles::Percentiles;
