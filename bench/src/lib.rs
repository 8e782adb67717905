//! Criterion benchmarks live in benches/; see docs/BENCHMARKS.md.
