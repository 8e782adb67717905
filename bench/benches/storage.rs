//! Storage engine benchmarks, reported as ratios to the disk's own limits measured in the
//! same run.
//!
//! `cargo bench -p weir-bench --bench storage` measures the raw limits of the device under
//! `BENCH_DATA_DIR` (default `target/weir-bench-data`), runs the criterion throughput
//! groups, then the append latency runs, and prints a summary with every ratio (also
//! written to `target/weir-bench/storage.json`).

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput};
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use serde::Serialize;
use weir_bench::Percentiles;
use weir_bench::limits::{self, DiskLimits, DiskOptions};
use weir_bench::percentiles::nanos_histogram;
use weir_storage::{FlushPolicy, Log, LogConfig, LogIdentity, ShardStorage, ShardStorageConfig};
use weir_wire::BatchBuilder;

const RECORD_BYTES: usize = 1024;
const SMALL_BATCH_RECORDS: usize = 16;
const LARGE_BATCH_RECORDS: usize = 1000;

fn workspace_target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
}

fn bench_dir() -> PathBuf {
    std::env::var_os("BENCH_DATA_DIR")
        .map_or_else(|| workspace_target().join("weir-bench-data"), PathBuf::from)
}

fn executor() -> LocalExecutor {
    LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .expect("glommio executor")
}

/// One batch of `records` records of 1 KiB each.
fn batch(records: usize) -> Bytes {
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    let value: Vec<u8> = (0..RECORD_BYTES).map(|i| (i * 7) as u8).collect();
    for i in 0..records {
        builder.append(1_700_000_000_000 + i as i64, None, Some(&value), &[]);
    }
    builder.build().freeze()
}

fn log_config(flush: FlushPolicy) -> LogConfig {
    LogConfig {
        flush,
        segment_bytes: 256 << 20,
        batch_bytes_max: 2 << 20,
        retention_bytes: Some(1 << 30),
        retention_ms: None,
        ..LogConfig::default()
    }
}

fn open_log(executor: &LocalExecutor, dir: &Path, config: LogConfig, cache_bytes: u64) -> Rc<Log> {
    let _ = std::fs::remove_dir_all(dir);
    let identity = LogIdentity {
        topic: "bench".into(),
        partition: 0,
    };
    let shard = ShardStorage::new(ShardStorageConfig {
        cache_bytes,
        ..ShardStorageConfig::default()
    });
    executor
        .run(Log::open(dir, &identity, config, shard))
        .expect("open log")
}

/// The mutable copy a network read would have produced; part of every measured append.
fn owned(batch: &Bytes) -> BytesMut {
    BytesMut::from(&batch[..])
}

fn append_throughput(criterion: &mut Criterion, dir: &Path) {
    let mut group = criterion.benchmark_group("append");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(6))
        .warm_up_time(Duration::from_secs(1));
    for (flush, name) in [
        (FlushPolicy::Never, "never"),
        (FlushPolicy::EveryBatch, "every-batch"),
    ] {
        for (records, size) in [
            (SMALL_BATCH_RECORDS, "16KiB"),
            (LARGE_BATCH_RECORDS, "1MiB"),
        ] {
            let executor = executor();
            let log = open_log(
                &executor,
                &dir.join(format!("append-{name}-{size}")),
                log_config(flush),
                64 << 20,
            );
            let batch = batch(records);
            group.throughput(Throughput::Bytes(batch.len() as u64));
            group.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter_custom(|iterations| {
                    let elapsed = executor.run(async {
                        let started = Instant::now();
                        for _ in 0..iterations {
                            log.append(owned(&batch), 0).await.expect("append");
                        }
                        // Whatever is still pending counts: write it out (and, for
                        // every-batch, it is already synced).
                        log.tick().await.expect("write pending");
                        started.elapsed()
                    });
                    executor
                        .run(log.apply_retention(i64::MAX))
                        .expect("retention");
                    elapsed
                });
            });
            executor.run(log.close()).expect("close");
        }
    }
    group.finish();
}

fn read_throughput(criterion: &mut Criterion, dir: &Path) {
    let mut group = criterion.benchmark_group("read");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    let batch = batch(SMALL_BATCH_RECORDS);
    let fetch_bytes = 1 << 20;
    for (source, cache_bytes, data_bytes) in
        [("cache", 512u64 << 20, 256u64 << 20), ("disk", 0, 1 << 30)]
    {
        let executor = executor();
        let config = LogConfig {
            retention_bytes: None,
            ..log_config(FlushPolicy::Never)
        };
        let log = open_log(
            &executor,
            &dir.join(format!("read-{source}")),
            config,
            cache_bytes,
        );
        executor.run(async {
            for _ in 0..data_bytes / batch.len() as u64 {
                log.append(owned(&batch), 0).await.expect("append");
            }
            log.flush().await.expect("flush");
        });
        let end = log.log_end_offset();
        let mut offset = 0;
        group.throughput(Throughput::Bytes(fetch_bytes as u64));
        group.bench_function(BenchmarkId::new(source, "1MiB-fetches"), |b| {
            b.iter_custom(|iterations| {
                executor.run(async {
                    let started = Instant::now();
                    for _ in 0..iterations {
                        if offset >= end {
                            offset = 0;
                        }
                        let batches = log.read(offset, fetch_bytes, i64::MAX).await.expect("read");
                        let last = weir_wire::BatchHeader::parse(batches.last().expect("a batch"))
                            .expect("header");
                        offset = last.next_offset();
                    }
                    started.elapsed()
                })
            });
        });
        executor.run(log.close()).expect("close");
    }
    group.finish();
}

#[derive(Debug, Serialize)]
struct LatencyRun {
    writers: usize,
    batches: u64,
    batches_per_s: f64,
    latency_us: Percentiles,
    /// Raw write+fdatasync samples taken in rounds alternating with the appends.
    raw_fdatasync_us: Percentiles,
}

/// Appends of 16 KiB batches with `every-batch` from `writers` concurrent tasks, each
/// latency recorded, in rounds that alternate with raw write+fdatasync samples on a
/// scratch file of the same directory.
fn append_latency(dir: &Path, writers: usize, batches: usize) -> LatencyRun {
    const ROUNDS: usize = 6;
    const RAW_SAMPLES_PER_ROUND: usize = 500;
    let executor = executor();
    let log = open_log(
        &executor,
        &dir.join(format!("latency-{writers}")),
        log_config(FlushPolicy::EveryBatch),
        64 << 20,
    );
    let batch = batch(SMALL_BATCH_RECORDS);
    let scratch = dir.join(format!("latency-{writers}-raw"));
    let (histogram, raw, elapsed) = executor.run(async {
        let file = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(&scratch)
            .await
            .expect("scratch file");
        let mut sampler = limits::SyncSampler::new(&file);
        let mut raw = nanos_histogram();
        let histogram = Rc::new(std::cell::RefCell::new(nanos_histogram()));
        let mut elapsed = Duration::ZERO;
        for _ in 0..ROUNDS {
            for _ in 0..RAW_SAMPLES_PER_ROUND {
                sampler.sample(&mut raw).await.expect("raw sample");
            }
            let started = Instant::now();
            let tasks: Vec<_> = (0..writers)
                .map(|_| {
                    let (log, batch, histogram) = (log.clone(), batch.clone(), histogram.clone());
                    glommio::spawn_local(async move {
                        for _ in 0..batches / ROUNDS / writers {
                            let sent = Instant::now();
                            log.append(owned(&batch), 0).await.expect("append");
                            histogram
                                .borrow_mut()
                                .saturating_record(sent.elapsed().as_nanos() as u64);
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
            elapsed += started.elapsed();
        }
        file.close().await.expect("close scratch");
        let histogram = histogram.borrow().clone();
        (histogram, raw, elapsed)
    });
    executor.run(log.close()).expect("close");
    let _ = std::fs::remove_file(&scratch);
    LatencyRun {
        writers,
        batches: histogram.len(),
        batches_per_s: histogram.len() as f64 / elapsed.as_secs_f64(),
        latency_us: Percentiles::from_nanos(&histogram),
        raw_fdatasync_us: Percentiles::from_nanos(&raw),
    }
}

/// Criterion's mean time per iteration, in seconds, from its estimates file.
fn criterion_mean_seconds(group: &str, function: &str, parameter: &str) -> Option<f64> {
    let path = workspace_target()
        .join("criterion")
        .join(group)
        .join(function)
        .join(parameter)
        .join("new/estimates.json");
    let estimates: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(estimates["mean"]["point_estimate"].as_f64()? / 1e9)
}

#[derive(Debug, Serialize)]
struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
    limit_name: &'static str,
    limit: f64,
    ratio: f64,
    target: &'static str,
}

fn figure(
    name: String,
    value: f64,
    unit: &'static str,
    limit_name: &'static str,
    limit: f64,
    target: &'static str,
) -> Figure {
    Figure {
        name,
        value,
        unit,
        limit_name,
        limit,
        ratio: value / limit,
        target,
    }
}

fn report(limits: &DiskLimits, single: &LatencyRun, eight: &LatencyRun) -> Vec<Figure> {
    let mut figures = Vec::new();
    let sizes = [
        ("16KiB", batch(SMALL_BATCH_RECORDS).len()),
        ("1MiB", batch(LARGE_BATCH_RECORDS).len()),
    ];
    for policy in ["never", "every-batch"] {
        for (size, bytes) in sizes {
            if let Some(seconds) = criterion_mean_seconds("append", policy, size) {
                let target = if (policy, size) == ("never", "1MiB") {
                    ">= 0.80"
                } else {
                    ""
                };
                let mb_s = bytes as f64 / seconds / 1e6;
                figures.push(figure(
                    format!("append {policy} {size} batches"),
                    mb_s,
                    "MB/s",
                    "direct_write_mb_s",
                    limits.direct_write_mb_s,
                    target,
                ));
            }
        }
    }
    for source in ["cache", "disk"] {
        if let Some(seconds) = criterion_mean_seconds("read", source, "1MiB-fetches") {
            let mb_s = (1 << 20) as f64 / seconds / 1e6;
            figures.push(figure(
                format!("read from {source}"),
                mb_s,
                "MB/s",
                "direct_read_mb_s",
                limits.direct_read_mb_s,
                "",
            ));
        }
    }
    for (run, name) in [(single, "1 writer"), (eight, "8 writers")] {
        let (p, raw) = (&run.latency_us, &run.raw_fdatasync_us);
        figures.push(figure(
            format!("every-batch 16KiB append p50, {name}"),
            p.p50,
            "us",
            "fdatasync_us.p50",
            raw.p50,
            "",
        ));
        let target = if run.writers == 1 { "<= 1.5" } else { "" };
        figures.push(figure(
            format!("every-batch 16KiB append p99, {name}"),
            p.p99,
            "us",
            "fdatasync_us.p99",
            raw.p99,
            target,
        ));
        figures.push(figure(
            format!("every-batch 16KiB append p99.9, {name}"),
            p.p999,
            "us",
            "fdatasync_us.p999",
            raw.p999,
            "",
        ));
    }
    figures.push(figure(
        "every-batch batch rate, 8 writers".into(),
        eight.batches_per_s,
        "batches/s",
        "1-writer batch rate",
        single.batches_per_s,
        ">= 4",
    ));
    figures
}

fn main() {
    let dir = bench_dir();
    std::fs::create_dir_all(&dir).expect("bench directory");
    eprintln!("measuring the disk under {}", dir.display());
    let limits = limits::measure_disk(&dir, DiskOptions::default()).expect("disk limits");
    eprintln!("{limits:#?}");

    let mut criterion = Criterion::default()
        .output_directory(&workspace_target().join("criterion"))
        .configure_from_args();
    append_throughput(&mut criterion, &dir);
    read_throughput(&mut criterion, &dir);
    criterion.final_summary();

    let single = append_latency(&dir, 1, 3000);
    let eight = append_latency(&dir, 8, 8 * 750);
    let figures = report(&limits, &single, &eight);
    println!(
        "\n{:<44} {:>12} {:<10} {:>10}  {:<20} target",
        "figure", "value", "unit", "ratio", "to limit"
    );
    for f in &figures {
        println!(
            "{:<44} {:>12.1} {:<10} {:>10.3}  {:<20} {}",
            f.name, f.value, f.unit, f.ratio, f.limit_name, f.target
        );
    }
    let results =
        serde_json::json!({ "limits": limits, "latency": [single, eight], "figures": figures });
    let out = workspace_target().join("weir-bench");
    std::fs::create_dir_all(&out).expect("results directory");
    std::fs::write(
        out.join("storage.json"),
        serde_json::to_vec_pretty(&results).expect("json"),
    )
    .expect("write results");
    let _ = std::fs::remove_dir_all(&dir);
}
