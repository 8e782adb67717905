//! Per-shard metrics, rendered as Prometheus text by the HTTP endpoint.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::router::{PartitionStatus, TopicPartition};

/// The request kinds counted separately.
pub const APIS: &[&str] = &[
    "handshake",
    "metadata",
    "create_topic",
    "delete_topic",
    "produce",
    "fetch",
    "list_offsets",
    "commit_offsets",
    "fetch_offsets",
    "list_groups",
    "describe_topic_configs",
    "alter_topic_configs",
    "alter_scram_credentials",
    "describe_scram_credentials",
    "create_acls",
    "describe_acls",
    "delete_acls",
    "alter_client_quotas",
    "sasl",
    "describe_client_quotas",
    "describe_cluster",
    "move_partition",
    "raft_messages",
    "controller_call",
    "replica_fetch",
    "init_producer",
    "add_partitions_to_txn",
    "add_offsets_to_txn",
    "end_txn",
    "txn_commit_offsets",
    "kafka_produce",
    "kafka_fetch",
    "kafka_list_offsets",
    "kafka_metadata",
    "kafka_offset_commit",
    "kafka_offset_fetch",
    "kafka_find_coordinator",
    "kafka_join_group",
    "kafka_heartbeat",
    "kafka_leave_group",
    "kafka_sync_group",
    "kafka_describe_groups",
    "kafka_list_groups",
    "kafka_api_versions",
    "kafka_create_topics",
    "kafka_delete_topics",
    "kafka_init_producer_id",
    "kafka_describe_configs",
    "kafka_alter_configs",
    "kafka_incremental_alter_configs",
    "kafka_create_partitions",
    "kafka_delete_records",
    "kafka_describe_cluster",
    "kafka_delete_groups",
    "kafka_offset_delete",
    "kafka_add_partitions_to_txn",
    "kafka_add_offsets_to_txn",
    "kafka_end_txn",
    "kafka_write_txn_markers",
    "kafka_txn_offset_commit",
    "kafka_sasl",
    "kafka_create_acls",
    "kafka_describe_acls",
    "kafka_delete_acls",
    "kafka_describe_user_scram_credentials",
    "kafka_alter_user_scram_credentials",
    "kafka_describe_client_quotas",
    "kafka_alter_client_quotas",
    "kafka_other",
];

#[derive(Debug)]
struct ApiMetrics {
    requests: u64,
    errors: u64,
    latency_ns: Histogram<u64>,
}

/// Counters of one shard. Updated only by that shard's tasks.
#[derive(Debug)]
pub struct ShardMetrics {
    apis: RefCell<Vec<ApiMetrics>>,
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    pub connections: Cell<u64>,
    pub connections_total: Cell<u64>,
    pub authentication_failures: Cell<u64>,
    /// Connections closed on accept for a connection limit, and accepts delayed by the
    /// creation rate.
    pub connections_refused: Cell<u64>,
    pub connections_throttled: Cell<u64>,
    /// Requests over a client quota, and the milliseconds their connections were held.
    pub quota_throttled: Cell<u64>,
    pub quota_throttle_ms: Cell<u64>,
    pub memory_in_use: Cell<u64>,
    pub compaction: Cell<CompactionTotals>,
}

/// What compaction did on a shard since it started.
#[derive(Debug, Clone, Copy, Default)]
pub struct CompactionTotals {
    pub passes: u64,
    /// Counted by storage as compaction reads, not per pass (`Shard` fills it in).
    pub bytes_read: u64,
    /// Of `bytes_read`, what the batch cache served (no device read).
    pub bytes_read_from_cache: u64,
    pub bytes_written: u64,
    pub records_removed: u64,
    /// The longest synchronous step of any pass, in microseconds of wall time, and of
    /// the shard thread's CPU time.
    pub longest_step_us: u64,
    pub longest_step_cpu_us: u64,
    /// Time compaction waited for `log_cleaner_io_max_bytes_per_second`, in
    /// microseconds: counted by storage as it waits, like `bytes_read`.
    pub throttled_us: u64,
}

impl Default for ShardMetrics {
    fn default() -> ShardMetrics {
        let histogram = || match Histogram::new_with_bounds(1, 60_000_000_000, 2) {
            Ok(histogram) => histogram,
            Err(error) => unreachable!("constant histogram bounds are valid: {error}"),
        };
        let apis = APIS
            .iter()
            .map(|_| ApiMetrics {
                requests: 0,
                errors: 0,
                latency_ns: histogram(),
            })
            .collect();
        ShardMetrics {
            apis: RefCell::new(apis),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
            connections: Cell::new(0),
            connections_total: Cell::new(0),
            authentication_failures: Cell::new(0),
            connections_refused: Cell::new(0),
            connections_throttled: Cell::new(0),
            quota_throttled: Cell::new(0),
            quota_throttle_ms: Cell::new(0),
            memory_in_use: Cell::new(0),
            compaction: Cell::new(CompactionTotals::default()),
        }
    }
}

impl ShardMetrics {
    pub fn record(&self, api: &str, latency: Duration, failed: bool) {
        let Some(index) = APIS.iter().position(|a| *a == api) else {
            // A request kind without its line in `/metrics` would go uncounted.
            debug_assert!(false, "{api} is not in metrics::APIS");
            return;
        };
        let mut apis = self.apis.borrow_mut();
        let metrics = &mut apis[index];
        metrics.requests += 1;
        metrics.errors += u64::from(failed);
        metrics
            .latency_ns
            .saturating_record(latency.as_nanos() as u64);
    }

    pub fn record_compaction(&self, stats: &weir_storage::CompactionStats) {
        let mut totals = self.compaction.get();
        totals.passes += 1;
        totals.bytes_written += stats.bytes_written;
        totals.records_removed += stats.records_removed;
        totals.longest_step_us = totals.longest_step_us.max(stats.longest_step_us);
        totals.longest_step_cpu_us = totals.longest_step_cpu_us.max(stats.longest_step_cpu_us);
        self.compaction.set(totals);
    }

    pub fn add(cell: &Cell<u64>, amount: u64) {
        cell.set(cell.get() + amount);
    }

    pub fn snapshot(
        &self,
        shard: usize,
        cache_bytes: u64,
        partitions: BTreeMap<TopicPartition, PartitionStatus>,
    ) -> ShardMetricsSnapshot {
        let apis = self.apis.borrow();
        ShardMetricsSnapshot {
            shard,
            apis: APIS
                .iter()
                .zip(apis.iter())
                .map(|(name, m)| ApiSnapshot {
                    api: name,
                    requests: m.requests,
                    errors: m.errors,
                    latency_ns: m.latency_ns.clone(),
                })
                .collect(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            connections: self.connections.get(),
            connections_total: self.connections_total.get(),
            authentication_failures: self.authentication_failures.get(),
            connections_refused: self.connections_refused.get(),
            connections_throttled: self.connections_throttled.get(),
            quota_throttled: self.quota_throttled.get(),
            quota_throttle_ms: self.quota_throttle_ms.get(),
            memory_in_use: self.memory_in_use.get(),
            compaction: self.compaction.get(),
            cache_bytes,
            delete_backlog_bytes: 0,
            deleted_bytes_freed: 0,
            partitions,
            group_offsets: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub struct ApiSnapshot {
    pub api: &'static str,
    pub requests: u64,
    pub errors: u64,
    pub latency_ns: Histogram<u64>,
}

/// A copy of one shard's metrics, sent to the shard serving `/metrics`.
#[derive(Debug)]
pub struct ShardMetricsSnapshot {
    pub shard: usize,
    pub apis: Vec<ApiSnapshot>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connections: u64,
    pub connections_total: u64,
    pub authentication_failures: u64,
    pub connections_refused: u64,
    pub connections_throttled: u64,
    pub quota_throttled: u64,
    pub quota_throttle_ms: u64,
    pub memory_in_use: u64,
    pub compaction: CompactionTotals,
    pub cache_bytes: u64,
    /// Bytes of deleted files the shard has yet to free, and has freed.
    pub delete_backlog_bytes: u64,
    pub deleted_bytes_freed: u64,
    pub partitions: BTreeMap<TopicPartition, PartitionStatus>,
    /// Committed offsets of the groups whose offsets this shard keeps.
    pub group_offsets: Vec<(String, TopicPartition, i64)>,
}

/// Upper bounds of the request latency histogram's buckets, in seconds: from a tenth of
/// a millisecond (a request answered from memory) doubling past the 2 ms a durable
/// produce should stay under, to the 10 s beyond which only long polls go.
const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
    1.0, 2.5, 10.0,
];

/// Cumulative counts per bucket bound (`le`), ending with `+Inf`: the Prometheus histogram
/// of what the HDR histogram recorded, so that shards and brokers can be aggregated.
fn latency_buckets(latency_ns: &Histogram<u64>) -> Vec<(String, u64)> {
    let mut buckets: Vec<(String, u64)> = LATENCY_BUCKETS_SECONDS
        .iter()
        .map(|&le| {
            let below = latency_ns.count_between(0, (le * 1e9) as u64);
            (le.to_string(), below)
        })
        .collect();
    buckets.push(("+Inf".into(), latency_ns.len()));
    buckets
}

/// Prometheus text exposition of every shard's snapshot.
pub fn render(snapshots: &[ShardMetricsSnapshot]) -> String {
    let mut out = String::new();
    let mut family =
        |name: &str, kind: &str, help: &str, samples: &mut dyn Iterator<Item = (String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
    let per_api = |f: fn(&ApiSnapshot) -> f64| {
        snapshots
            .iter()
            .flat_map(move |s| {
                s.apis
                    .iter()
                    .map(move |a| (format!("{{shard=\"{}\",api=\"{}\"}}", s.shard, a.api), f(a)))
            })
            .collect::<Vec<_>>()
    };
    family(
        "weir_requests_total",
        "counter",
        "Requests handled.",
        &mut per_api(|a| a.requests as f64).into_iter(),
    );
    family(
        "weir_request_errors_total",
        "counter",
        "Requests answered with an error.",
        &mut per_api(|a| a.errors as f64).into_iter(),
    );
    let mut buckets = Vec::new();
    let mut quantiles = Vec::new();
    for s in snapshots {
        for a in s.apis.iter().filter(|a| a.requests > 0) {
            let labels = format!("shard=\"{}\",api=\"{}\"", s.shard, a.api);
            for (le, count) in latency_buckets(&a.latency_ns) {
                buckets.push((format!("_bucket{{{labels},le=\"{le}\"}}"), count as f64));
            }
            let sum = a.latency_ns.mean() * a.latency_ns.len() as f64 / 1e9;
            buckets.push((format!("_sum{{{labels}}}"), sum));
            let count = a.latency_ns.len() as f64;
            buckets.push((format!("_count{{{labels}}}"), count));
            for quantile in [0.5, 0.9, 0.99, 0.999] {
                let seconds = a.latency_ns.value_at_quantile(quantile) as f64 / 1e9;
                quantiles.push((format!("{{{labels},quantile=\"{quantile}\"}}"), seconds));
            }
        }
    }
    family(
        "weir_request_latency_seconds",
        "histogram",
        "Request latency, from a whole frame read to its response queued.",
        &mut buckets.into_iter(),
    );
    family(
        "weir_request_latency_quantile_seconds",
        "gauge",
        "Request latency at a quantile, over every request since the broker started.",
        &mut quantiles.into_iter(),
    );
    let per_shard = |f: fn(&ShardMetricsSnapshot) -> u64| {
        snapshots
            .iter()
            .map(move |s| (format!("{{shard=\"{}\"}}", s.shard), f(s) as f64))
            .collect::<Vec<_>>()
    };
    family(
        "weir_bytes_in_total",
        "counter",
        "Request bytes read.",
        &mut per_shard(|s| s.bytes_in).into_iter(),
    );
    family(
        "weir_bytes_out_total",
        "counter",
        "Response bytes written.",
        &mut per_shard(|s| s.bytes_out).into_iter(),
    );
    family(
        "weir_compaction_passes_total",
        "counter",
        "Compaction passes finished.",
        &mut per_shard(|s| s.compaction.passes).into_iter(),
    );
    family(
        "weir_compaction_bytes_read_total",
        "counter",
        "Bytes of batches compaction read, from segments or the batch cache.",
        &mut per_shard(|s| s.compaction.bytes_read).into_iter(),
    );
    family(
        "weir_compaction_cache_read_bytes_total",
        "counter",
        "Bytes compaction read from the batch cache instead of segment files.",
        &mut per_shard(|s| s.compaction.bytes_read_from_cache).into_iter(),
    );
    family(
        "weir_compaction_bytes_written_total",
        "counter",
        "Bytes of compacted segments written.",
        &mut per_shard(|s| s.compaction.bytes_written).into_iter(),
    );
    family(
        "weir_compaction_records_removed_total",
        "counter",
        "Records compaction removed (superseded, expired tombstones, no key).",
        &mut per_shard(|s| s.compaction.records_removed).into_iter(),
    );
    // Microseconds counted, seconds reported.
    let per_shard_seconds = |f: fn(&ShardMetricsSnapshot) -> u64| {
        per_shard(f)
            .into_iter()
            .map(|(labels, us)| (labels, us / 1e6))
    };
    family(
        "weir_compaction_throttled_seconds_total",
        "counter",
        "Time compaction waited for log_cleaner_io_max_bytes_per_second.",
        &mut per_shard_seconds(|s| s.compaction.throttled_us),
    );
    family(
        "weir_compaction_longest_step_seconds",
        "gauge",
        "The longest compaction ran on the shard without yielding (one batch's work; passes yield every 200 us otherwise).",
        &mut per_shard_seconds(|s| s.compaction.longest_step_us),
    );
    family(
        "weir_compaction_longest_step_cpu_seconds",
        "gauge",
        "The same step in the shard thread's CPU time: what compaction itself kept the shard, without time the host or other threads took its CPU.",
        &mut per_shard_seconds(|s| s.compaction.longest_step_cpu_us),
    );
    family(
        "weir_connections",
        "gauge",
        "Open client connections.",
        &mut per_shard(|s| s.connections).into_iter(),
    );
    family(
        "weir_connections_total",
        "counter",
        "Client connections accepted.",
        &mut per_shard(|s| s.connections_total).into_iter(),
    );
    family(
        "weir_authentication_failures_total",
        "counter",
        "SASL authentications refused.",
        &mut per_shard(|s| s.authentication_failures).into_iter(),
    );
    family(
        "weir_connections_refused_total",
        "counter",
        "Connections closed on accept: max_connections or max_connections_per_ip.",
        &mut per_shard(|s| s.connections_refused).into_iter(),
    );
    family(
        "weir_connections_throttled_total",
        "counter",
        "Accepts delayed by max_connection_creation_rate.",
        &mut per_shard(|s| s.connections_throttled).into_iter(),
    );
    family(
        "weir_quota_throttled_total",
        "counter",
        "Requests over a client quota (their connections are held off).",
        &mut per_shard(|s| s.quota_throttled).into_iter(),
    );
    family(
        "weir_quota_throttle_milliseconds_total",
        "counter",
        "Milliseconds connections over a client quota were held off.",
        &mut per_shard(|s| s.quota_throttle_ms).into_iter(),
    );
    family(
        "weir_shard_memory_bytes",
        "gauge",
        "Bytes of requests held against the shard's memory budget.",
        &mut per_shard(|s| s.memory_in_use).into_iter(),
    );
    family(
        "weir_cache_bytes",
        "gauge",
        "Bytes in the shard's batch cache.",
        &mut per_shard(|s| s.cache_bytes).into_iter(),
    );
    family(
        "weir_delete_backlog_bytes",
        "gauge",
        "Bytes of deleted segment files the shard has yet to free (delete_max_bytes_per_second).",
        &mut per_shard(|s| s.delete_backlog_bytes).into_iter(),
    );
    family(
        "weir_deleted_freed_bytes_total",
        "counter",
        "Bytes of deleted segment files the shard has freed.",
        &mut per_shard(|s| s.deleted_bytes_freed).into_iter(),
    );
    let per_partition = |f: fn(&PartitionStatus) -> f64| {
        snapshots
            .iter()
            .flat_map(move |s| {
                s.partitions.iter().map(move |(tp, status)| {
                    (
                        format!(
                            "{{shard=\"{}\",topic=\"{}\",partition=\"{}\"}}",
                            s.shard, tp.topic, tp.partition
                        ),
                        f(status),
                    )
                })
            })
            .collect::<Vec<_>>()
    };
    family(
        "weir_partition_log_end_offset",
        "gauge",
        "Offset the next record will get.",
        &mut per_partition(|p| p.log_end_offset as f64).into_iter(),
    );
    family(
        "weir_partition_high_watermark",
        "gauge",
        "Offset up to which consumers may read.",
        &mut per_partition(|p| p.high_watermark as f64).into_iter(),
    );
    family(
        "weir_partition_log_start_offset",
        "gauge",
        "First offset still stored.",
        &mut per_partition(|p| p.log_start_offset as f64).into_iter(),
    );
    // A group's lag on a partition: what is readable beyond its committed offset.
    let high_watermarks: BTreeMap<&TopicPartition, i64> = snapshots
        .iter()
        .flat_map(|s| s.partitions.iter().map(|(tp, p)| (tp, p.high_watermark)))
        .collect();
    let per_group = |value: &dyn Fn(&TopicPartition, i64) -> Option<f64>| {
        snapshots
            .iter()
            .flat_map(|s| &s.group_offsets)
            .filter_map(|(group, tp, offset)| {
                let labels = format!(
                    "{{group=\"{group}\",topic=\"{}\",partition=\"{}\"}}",
                    tp.topic, tp.partition
                );
                Some((labels, value(tp, *offset)?))
            })
            .collect::<Vec<_>>()
    };
    family(
        "weir_group_committed_offset",
        "gauge",
        "The offset a consumer group committed for a partition.",
        &mut per_group(&|_, offset| Some(offset as f64)).into_iter(),
    );
    family(
        "weir_group_lag",
        "gauge",
        "Records readable in a partition beyond the group's committed offset.",
        &mut per_group(&|tp, offset| {
            let hw = high_watermarks.get(tp)?;
            Some((hw - offset).max(0) as f64)
        })
        .into_iter(),
    );
    family(
        "weir_partition_size_bytes",
        "gauge",
        "Bytes stored.",
        &mut per_partition(|p| p.size_bytes as f64).into_iter(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of(text: &str, series: &str) -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        line[series.len() + 1..].parse().unwrap()
    }

    #[test]
    fn request_latency_is_a_cumulative_histogram_per_shard_and_api() {
        let metrics = ShardMetrics::default();
        for us in [50, 300, 300, 1_500, 3_000, 20_000_000] {
            metrics.record("produce", Duration::from_micros(us), false);
        }
        metrics.record("fetch", Duration::from_micros(700), false);
        let text = render(&[metrics.snapshot(3, 0, BTreeMap::new())]);
        assert!(text.contains("# TYPE weir_request_latency_seconds histogram"));
        let produce = |le: &str| {
            let series = format!(
                "weir_request_latency_seconds_bucket{{shard=\"3\",api=\"produce\",le=\"{le}\"}}"
            );
            value_of(&text, &series)
        };
        assert_eq!(produce("0.0001"), 1.0);
        assert_eq!(produce("0.0005"), 3.0);
        assert_eq!(produce("0.001"), 3.0);
        assert_eq!(produce("0.002"), 4.0);
        assert_eq!(produce("0.004"), 5.0);
        assert_eq!(produce("10"), 5.0);
        assert_eq!(produce("+Inf"), 6.0);
        let count = "weir_request_latency_seconds_count{shard=\"3\",api=\"produce\"}";
        assert_eq!(value_of(&text, count), 6.0);
        let sum = value_of(
            &text,
            "weir_request_latency_seconds_sum{shard=\"3\",api=\"produce\"}",
        );
        assert!((sum - 20.005).abs() < 0.3, "sum {sum}");
        let fetch = "weir_request_latency_seconds_bucket{shard=\"3\",api=\"fetch\",le=\"0.001\"}";
        assert_eq!(value_of(&text, fetch), 1.0);
        let p50 = value_of(
            &text,
            "weir_request_latency_quantile_seconds{shard=\"3\",api=\"produce\",quantile=\"0.5\"}",
        );
        assert!((0.000_29..0.000_31).contains(&p50), "p50 {p50}");
        // Bounds only grow, and every bucket holds what the one below it holds.
        let counts: Vec<f64> = LATENCY_BUCKETS_SECONDS
            .iter()
            .map(|le| produce(&le.to_string()))
            .collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]));
        assert!(LATENCY_BUCKETS_SECONDS.windows(2).all(|w| w[0] < w[1]));
    }
}
