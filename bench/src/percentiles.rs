//! Latency percentiles from an HdrHistogram.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Percentiles of a latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
    pub count: u64,
}

impl Percentiles {
    /// Reads percentiles from a histogram recorded in nanoseconds.
    pub fn from_nanos(histogram: &Histogram<u64>) -> Percentiles {
        let us = |nanos: u64| nanos as f64 / 1000.0;
        Percentiles {
            p50: us(histogram.value_at_quantile(0.50)),
            p90: us(histogram.value_at_quantile(0.90)),
            p99: us(histogram.value_at_quantile(0.99)),
            p999: us(histogram.value_at_quantile(0.999)),
            p9999: us(histogram.value_at_quantile(0.9999)),
            max: us(histogram.max()),
            count: histogram.len(),
        }
    }
}

/// A histogram for nanosecond latencies from 1 ns to 100 s with 3 significant digits.
pub fn nanos_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 100_000_000_000, 3) {
        Ok(histogram) => histogram,
        Err(error) => unreachable!("constant histogram bounds are valid: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut histogram = nanos_histogram();
        for micros in 1..=10_000u64 {
            histogram.record(micros * 1000).unwrap();
        }
        let p = Percentiles::from_nanos(&histogram);
        let close = |value: f64, expected: f64| (value - expected).abs() <= expected * 0.002;
        assert!(close(p.p50, 5000.0), "{p:?}");
        assert!(close(p.p99, 9900.0), "{p:?}");
        assert!(close(p.p999, 9990.0), "{p:?}");
        assert!(close(p.max, 10_000.0), "{p:?}");
        assert_eq!(p.count, 10_000);
    }

    #[test]
    fn percentiles_of_a_bimodal_distribution() {
        // 98% at 100 us, 2% at 5 ms: p50 and p90 see the fast mode, p99 the slow one.
        let mut histogram = nanos_histogram();
        for i in 0..10_000u64 {
            histogram
                .record(if i % 50 == 0 { 5_000_000 } else { 100_000 })
                .unwrap();
        }
        let p = Percentiles::from_nanos(&histogram);
        assert!(
            (p.p90 - 100.0).abs() < 0.1 && (p.p99 - 5000.0).abs() < 5.0,
            "{p:?}"
        );
    }
}
