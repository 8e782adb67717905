//! `weir bench limits`, `compare`, `gateway`, `compaction` and `replication`: the
//! machine's own limits, a fixed suite of loadgen scenarios against a freshly started
//! broker, each figure reported as a ratio to the limit that bounds it, the Kafka gateway
//! against the native protocol, latency beside compaction, and the cost of replication.
//! See `docs/BENCHMARKS.md`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;
use weir_bench::Percentiles;
use weir_bench::limits::{self, DiskLimits, DiskOptions, NetworkLimits, NetworkOptions};
use weir_bench::process::BrokerProcess;
use weir_bench::steal::CpuTimes;
use weir_loadgen::{AcksArg, Config, Protocol, Report};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Measure the machine's limits on the data directory's device and on loopback.
    Limits {
        #[arg(long, default_value = "./weir-data")]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Measure the limits, then run the loadgen suite against a fresh broker.
    Compare {
        /// Scratch directory for the limits and the broker's data (emptied first).
        #[arg(long, default_value = "./weir-bench")]
        data_dir: PathBuf,
        /// Runs of each scenario; figures are their median.
        #[arg(long, default_value = "3")]
        runs: usize,
        /// Shards of the broker under test.
        #[arg(long, default_value = "1")]
        cores: usize,
        /// CPUs to pin the broker's shards to (comma-separated); default CPU 0, 1, ...
        #[arg(long)]
        broker_cpus: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The Kafka gateway against the native protocol: the same loadgen scenarios through
    /// both front doors of one fresh broker, runs alternating, each figure as the ratio
    /// Kafka / native (and each to its machine limit).
    Gateway(PairedRuns),
    /// Produce and end-to-end latency of a durable 50 MB/s stream while compaction runs,
    /// against the same with compaction off: in both, a second producer churns updates
    /// over 1,000 keys at 20 MB/s into a topic with 1 MiB segments, compacted in one mode
    /// and not in the other. Runs alternate; figures are medians and the ratio
    /// with / without.
    Compaction(PairedRuns),
    /// The cost of replication: a durable 50 MB/s stream (acks=all, every batch fsynced
    /// on each replica that counts) into an RF=3 topic against an RF=1 topic, on one
    /// 3-broker cluster on this machine (three processes sharing its cores and its
    /// device). Runs alternate; figures are medians and the ratio RF=3 / RF=1.
    Replication(PairedRuns),
    /// What exactly-once costs: durable closed-loop produce over the Kafka protocol
    /// (acks=all, every batch fsynced, no consumers; read back to verify) as a plain producer, an idempotent one and a
    /// transactional one committing every 100 messages, runs alternating; figures are
    /// medians and each mode's ratio to plain.
    ExactlyOnce(PairedRuns),
}

/// A comparison of two modes on one single-shard broker, runs alternating.
#[derive(Debug, clap::Args)]
pub struct PairedRuns {
    /// Scratch directory for the limits and the broker's data (emptied first).
    #[arg(long, default_value = "./weir-bench")]
    data_dir: PathBuf,
    /// Runs of each scenario and mode; figures are their median.
    #[arg(long, default_value = "3")]
    runs: usize,
    /// CPUs to pin the broker's shard to (comma-separated); default CPU 0.
    #[arg(long)]
    broker_cpus: Option<String>,
    /// A setting for the brokers under test, as the environment variable that sets it
    /// (`WEIR_LOG_CLEANER_IO_MAX_BYTES_PER_SECOND=24000000`; repeatable; docs/CONFIG.md).
    #[arg(long = "broker-env", value_parser = parse_broker_env)]
    broker_env: Vec<(String, String)>,
    #[arg(long)]
    json: bool,
}

/// `KEY=VALUE` for `--broker-env`; the broker itself checks the key and the value.
fn parse_broker_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if key.starts_with("WEIR_") => Ok((key.into(), value.into())),
        _ => Err(format!(
            "{text:?}: expected WEIR_SETTING=VALUE (a broker setting, docs/CONFIG.md)"
        )),
    }
}

/// `extra` and then the settings given with `--broker-env`, as `start_with_env` takes them.
fn broker_env<'a>(
    extra: &[(&'a str, &'a str)],
    given: &'a [(String, String)],
) -> Vec<(&'a str, &'a str)> {
    extra
        .iter()
        .copied()
        .chain(given.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .collect()
}

#[derive(Debug, Serialize)]
pub struct Limits {
    #[serde(flatten)]
    pub disk: DiskLimits,
    #[serde(flatten)]
    pub network: NetworkLimits,
    /// The ideal durable stream of 1 KiB messages at 200 MB/s on this device
    /// (`weir_bench::limits::measure_durable_stream`): the floor for durable produce latency.
    pub ideal_durable_stream_us: Percentiles,
    /// The same stream writing over a file's existing blocks: the floor for a log whose
    /// segments reuse deleted segments' files.
    pub ideal_durable_overwrite_us: Percentiles,
}

/// The rate of the durable open-loop scenario, and of its ideal-stream limit.
const DURABLE_RATE_MB_S: f64 = 200.0;

pub fn measure_limits(dir: &Path) -> anyhow::Result<Limits> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // The ideal stream goes first: after the bandwidth tests the device is still flushing
    // a gigabyte, and its stalls then would be the bandwidth test's, not the stream's.
    let duration = std::time::Duration::from_secs(6);
    let ideal = limits::measure_durable_stream(dir, DURABLE_RATE_MB_S, 1024, duration, false)?;
    let overwrite = limits::measure_durable_stream(dir, DURABLE_RATE_MB_S, 1024, duration, true)?;
    let disk = limits::measure_disk(dir, DiskOptions::default())?;
    let network = limits::measure_network(NetworkOptions::default())?;
    Ok(Limits {
        disk,
        network,
        ideal_durable_stream_us: ideal,
        ideal_durable_overwrite_us: overwrite,
    })
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Limits { data_dir, json } => {
            let limits = measure_limits(&data_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&limits)?);
            } else {
                print!("{}", limits_table(&limits));
            }
            Ok(())
        }
        BenchCommand::Compare {
            data_dir,
            runs,
            cores,
            broker_cpus,
            json,
        } => compare(&data_dir, runs, cores, broker_cpus, json),
        BenchCommand::Gateway(args) => gateway(args),
        BenchCommand::Compaction(args) => compaction(args),
        BenchCommand::Replication(args) => replication(args),
        BenchCommand::ExactlyOnce(args) => exactly_once(args),
    }
}

fn limits_table(limits: &Limits) -> String {
    let (d, n) = (&limits.disk, &limits.network);
    format!(
        "O_DIRECT sequential write   {:>10.1} MB/s\nO_DIRECT sequential read    {:>10.1} MB/s\n\
         16 KiB write+fdatasync      p50 {:.0} us  p99 {:.0} us  p99.9 {:.0} us\n\
         loopback TCP, one stream    {:>10.1} MB/s\nloopback round trip         p50 {:.1} us  p99 {:.1} us\n\
         ideal durable stream        p50 {:.0} us  p99 {:.0} us  p99.9 {:.0} us (1 KiB at 200 MB/s)\n\
         ... writing over old blocks p50 {:.0} us  p99 {:.0} us  p99.9 {:.0} us\n",
        d.direct_write_mb_s,
        d.direct_read_mb_s,
        d.fdatasync_us.p50,
        d.fdatasync_us.p99,
        d.fdatasync_us.p999,
        n.loopback_tcp_mb_s,
        n.loopback_rtt_us.p50,
        n.loopback_rtt_us.p99,
        limits.ideal_durable_stream_us.p50,
        limits.ideal_durable_stream_us.p99,
        limits.ideal_durable_stream_us.p999,
        limits.ideal_durable_overwrite_us.p50,
        limits.ideal_durable_overwrite_us.p99,
        limits.ideal_durable_overwrite_us.p999
    )
}

/// One figure of the suite: per-run values, their median, and the ratio to its limit.
#[derive(Debug, Serialize)]
struct Figure {
    scenario: &'static str,
    name: &'static str,
    unit: &'static str,
    runs: Vec<f64>,
    median: f64,
    limit_name: &'static str,
    limit: f64,
    ratio: f64,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A figure to take from each run: name, unit, how to read it, the limit it is compared to.
type FigureSpec = (&'static str, &'static str, fn(&Report) -> f64, &'static str);

/// A scenario: how to configure loadgen for run `n`, and which figures to take.
struct Scenario {
    name: &'static str,
    config: fn(&str, usize) -> Config,
    figures: &'static [FigureSpec],
    /// Reads the stored topic, which is filled just before.
    reads_stored: bool,
    /// The front door loadgen uses.
    protocol: Protocol,
}

fn base(brokers: &str, topic: String) -> Config {
    Config {
        brokers: brokers.to_string(),
        protocol: Protocol::Native,
        topic,
        topics: 1,
        partitions: 1,
        message_bytes: 1024,
        message_bytes_max: None,
        acks: AcksArg::All,
        rate_mb_s: None,
        duration_s: 6.0,
        messages: None,
        warmup_s: 1.0,
        producers: 1,
        consumers: 1,
        compression: "none".into(),
        batch_bytes: 64 << 10,
        linger_ms: 1.0,
        in_flight: 64,
        key_cardinality: 0,
        threads: 1,
        drain_timeout_s: 30.0,
        json: true,
        quiet: true,
        topic_configs: vec![],
        from_beginning: false,
        no_read_back: false,
        idempotent: false,
        transaction_messages: None,
    }
}

fn durable_open_loop(brokers: &str, n: usize) -> Config {
    Config {
        rate_mb_s: Some(DURABLE_RATE_MB_S),
        duration_s: 8.0,
        warmup_s: 2.0,
        batch_bytes: 16 << 10,
        consumers: 0,
        ..base(brokers, format!("durable-rate-{n}"))
    }
}

fn max_produce(brokers: &str, n: usize) -> Config {
    Config {
        acks: AcksArg::Leader,
        topic_configs: vec!["flush.policy=never".into()],
        consumers: 0,
        // Throughput runs batch as Kafka producers tuned for it do (batch.size 256 KiB);
        // 16 requests in flight measured best here (64 let pending data pile up).
        batch_bytes: 256 << 10,
        in_flight: 16,
        ..base(brokers, format!("never-max-{n}"))
    }
}

const PRODUCE_ACK_P50: FigureSpec = (
    "produce ack p50",
    "us",
    |r| r.produce_latency_us.p50,
    "ideal_durable_stream_us.p50",
);
const PRODUCE_ACK_P99: FigureSpec = (
    "produce ack p99",
    "us",
    |r| r.produce_latency_us.p99,
    "ideal_durable_stream_us.p99",
);
const END_TO_END_P99: FigureSpec = (
    "end to end p99",
    "us",
    |r| r.end_to_end_latency_us.p99,
    "ideal_durable_stream_us.p99",
);

const OFFERED_RATE: FigureSpec = (
    "produce MB/s",
    "MB/s",
    |r| r.throughput_mb_s,
    "offered_rate_mb_s",
);

/// Max produce, over either protocol: its throughput against loopback TCP.
const MAX_PRODUCE_FIGURES: &[FigureSpec] = &[(
    "produce MB/s",
    "MB/s",
    |r| r.throughput_mb_s,
    "loopback_tcp_mb_s",
)];

/// The suite's first scenario: durable produce at 200 MB/s into fresh segments.
const DURABLE_OPEN_LOOP: Scenario = Scenario {
    name: "durable produce, open loop 200 MB/s (every-batch, acks=all, 1 KiB, 16 KiB batches)",
    config: durable_open_loop,
    reads_stored: false,
    protocol: Protocol::Native,
    figures: &[
        OFFERED_RATE,
        PRODUCE_ACK_P50,
        PRODUCE_ACK_P99,
        (
            "produce ack p99.9",
            "us",
            |r| r.produce_latency_us.p999,
            "ideal_durable_stream_us.p999",
        ),
    ],
};

/// Max produce: the throughput scenario.
const MAX_PRODUCE: Scenario = Scenario {
    name: "max produce, closed loop, no consumers (flush never, acks=leader, 1 KiB, 256 KiB batches)",
    config: max_produce,
    reads_stored: false,
    protocol: Protocol::Native,
    figures: MAX_PRODUCE_FIGURES,
};

const SCENARIOS: &[Scenario] = &[
    DURABLE_OPEN_LOOP,
    Scenario {
        name: "durable produce in steady state, open loop 200 MB/s (as above; 64 MiB segments, retention.bytes 256 MiB: retention deletes as fast as the stream writes, and each new segment reuses a deleted one's file)",
        config: |b, n| Config {
            // Retention starts deleting after ~320 MB (1.6 s); from then on every roll
            // finds a spare file. The warmup covers that.
            warmup_s: 4.0,
            topic: format!("durable-steady-{n}"),
            topic_configs: vec![
                "segment.bytes=67108864".into(),
                "retention.bytes=268435456".into(),
            ],
            // Retention deletes what a read-back would verify; every acknowledgement is
            // still checked against what was sent.
            no_read_back: true,
            ..durable_open_loop(b, n)
        },
        reads_stored: false,
        protocol: Protocol::Native,
        figures: &[
            OFFERED_RATE,
            (
                "produce ack p50",
                "us",
                |r| r.produce_latency_us.p50,
                "ideal_durable_overwrite_us.p50",
            ),
            (
                "produce ack p99",
                "us",
                |r| r.produce_latency_us.p99,
                "ideal_durable_overwrite_us.p99",
            ),
            (
                "produce ack p99.9",
                "us",
                |r| r.produce_latency_us.p999,
                "ideal_durable_overwrite_us.p999",
            ),
        ],
    },
    Scenario {
        name: "durable produce and consume, open loop 200 MB/s (every-batch, acks=all, 16 KiB batches)",
        config: |b, n| Config {
            rate_mb_s: Some(DURABLE_RATE_MB_S),
            duration_s: 8.0,
            warmup_s: 2.0,
            batch_bytes: 16 << 10,
            ..base(b, format!("durable-consume-{n}"))
        },
        reads_stored: false,
        protocol: Protocol::Native,
        figures: &[
            PRODUCE_ACK_P99,
            (
                "end to end p50",
                "us",
                |r| r.end_to_end_latency_us.p50,
                "ideal_durable_stream_us.p50",
            ),
            END_TO_END_P99,
        ],
    },
    Scenario {
        name: "durable produce, closed loop (every-batch, acks=all, 1 KiB)",
        config: |b, n| base(b, format!("durable-max-{n}")),
        reads_stored: false,
        protocol: Protocol::Native,
        figures: &[(
            "produce MB/s",
            "MB/s",
            |r| r.throughput_mb_s,
            "direct_write_mb_s",
        )],
    },
    MAX_PRODUCE,
    Scenario {
        name: "produce and consume from the tail, open loop 200 MB/s (flush never, acks=leader)",
        config: |b, n| Config {
            acks: AcksArg::Leader,
            topic_configs: vec!["flush.policy=never".into()],
            rate_mb_s: Some(200.0),
            batch_bytes: 16 << 10,
            ..base(b, format!("never-tail-{n}"))
        },
        reads_stored: false,
        protocol: Protocol::Native,
        figures: &[
            (
                "tail consume MB/s",
                "MB/s",
                |r| r.consume_throughput_mb_s,
                "offered_rate_mb_s",
            ),
            (
                "end to end p50",
                "us",
                |r| r.end_to_end_latency_us.p50,
                "loopback_rtt_us.p50",
            ),
            (
                "end to end p99",
                "us",
                |r| r.end_to_end_latency_us.p99,
                "loopback_rtt_us.p99",
            ),
        ],
    },
    Scenario {
        name: "consume from disk (1.5 GB stored, cache 256 MiB)",
        config: |b, _| Config {
            producers: 0,
            from_beginning: true,
            ..base(b, "stored".into())
        },
        reads_stored: true,
        protocol: Protocol::Native,
        figures: &[(
            "consume MB/s",
            "MB/s",
            |r| r.consume_throughput_mb_s,
            "direct_read_mb_s",
        )],
    },
    Scenario {
        name: "max produce over the Kafka protocol (as above)",
        config: |b, n| Config {
            topic: format!("kafka-never-max-{n}"),
            ..max_produce(b, n)
        },
        reads_stored: false,
        protocol: Protocol::Kafka,
        figures: MAX_PRODUCE_FIGURES,
    },
    Scenario {
        name: "durable produce over the Kafka protocol, open loop 200 MB/s (as above)",
        config: |b, n| Config {
            topic: format!("kafka-durable-rate-{n}"),
            ..durable_open_loop(b, n)
        },
        reads_stored: false,
        protocol: Protocol::Kafka,
        figures: &[PRODUCE_ACK_P50, PRODUCE_ACK_P99],
    },
];

fn limit_value(limits: &Limits, name: &str) -> f64 {
    let (d, n) = (&limits.disk, &limits.network);
    match name {
        "direct_write_mb_s" => d.direct_write_mb_s,
        "direct_read_mb_s" => d.direct_read_mb_s,
        "fdatasync_us.p50" => d.fdatasync_us.p50,
        "fdatasync_us.p99" => d.fdatasync_us.p99,
        "fdatasync_us.p999" => d.fdatasync_us.p999,
        "loopback_tcp_mb_s" => n.loopback_tcp_mb_s,
        "loopback_rtt_us.p50" => n.loopback_rtt_us.p50,
        "loopback_rtt_us.p99" => n.loopback_rtt_us.p99,
        "offered_rate_mb_s" => DURABLE_RATE_MB_S,
        "ideal_durable_stream_us.p50" => limits.ideal_durable_stream_us.p50,
        "ideal_durable_stream_us.p99" => limits.ideal_durable_stream_us.p99,
        "ideal_durable_stream_us.p999" => limits.ideal_durable_stream_us.p999,
        "ideal_durable_overwrite_us.p50" => limits.ideal_durable_overwrite_us.p50,
        "ideal_durable_overwrite_us.p99" => limits.ideal_durable_overwrite_us.p99,
        "ideal_durable_overwrite_us.p999" => limits.ideal_durable_overwrite_us.p999,
        _ => f64::NAN,
    }
}

/// Measures the limits in `root` (emptied first), then starts the broker under test.
fn limits_and_broker(
    root: &Path,
    cores: usize,
    broker_cpus: Option<String>,
) -> anyhow::Result<(Limits, BrokerProcess)> {
    limits_and_broker_with_env(root, cores, broker_cpus, &[])
}

/// Empties `root`, measures the limits in it and prints them.
fn fresh_limits(root: &Path) -> anyhow::Result<Limits> {
    let _ = std::fs::remove_dir_all(root);
    let limits = measure_limits(&root.join("limits"))?;
    eprint!("{}", limits_table(&limits));
    Ok(limits)
}

fn limits_and_broker_with_env(
    root: &Path,
    cores: usize,
    broker_cpus: Option<String>,
    extra_env: &[(&str, &str)],
) -> anyhow::Result<(Limits, BrokerProcess)> {
    let limits = fresh_limits(root)?;
    let binary = std::env::current_exe().context("locating the weir binary")?;
    let cpus = broker_cpus.map(|c| format!("[{c}]"));
    let mut env: Vec<(&str, &str)> = cpus.iter().map(|c| ("WEIR_CPUS", c.as_str())).collect();
    env.extend_from_slice(extra_env);
    let broker = BrokerProcess::start_with_env(&binary, &root.join("broker"), cores, &[], &env)?;
    Ok((limits, broker))
}

fn compare(
    root: &Path,
    runs: usize,
    cores: usize,
    broker_cpus: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let (limits, broker) = limits_and_broker(root, cores, broker_cpus.clone())?;
    let mut figures = Vec::new();
    for scenario in SCENARIOS {
        if scenario.reads_stored {
            fill_stored_topic(&broker.native)?;
        }
        // Let the device finish writing back what the last scenario wrote.
        std::thread::sleep(std::time::Duration::from_secs(2));
        let mut reports = Vec::with_capacity(runs);
        for n in 0..runs {
            eprintln!("{} (run {})", scenario.name, n + 1);
            let address = match scenario.protocol {
                Protocol::Native => &broker.native,
                Protocol::Kafka => &broker.kafka,
            };
            let mut config = (scenario.config)(address, n);
            config.protocol = scenario.protocol;
            let topic = config.topic.clone();
            let meter = StealMeter::start(broker_cpus.as_deref());
            let report = weir_loadgen::run(config)?;
            eprintln!("  CPU steal {:.1}%", meter.percent());
            // Runs write gigabytes: delete each run's topic so the suite fits the disk.
            if !scenario.reads_stored {
                delete_topic(&broker.native, &topic)?;
            }
            anyhow::ensure!(
                report.ok,
                "{}: verification failed\n{}",
                scenario.name,
                report.table()
            );
            reports.push(report);
        }
        if scenario.reads_stored {
            delete_topic(&broker.native, "stored")?;
        }
        for (name, unit, take, limit_name) in scenario.figures {
            let values: Vec<f64> = reports.iter().map(take).collect();
            let limit = limit_value(&limits, limit_name);
            let median = median(&values);
            figures.push(Figure {
                scenario: scenario.name,
                name,
                unit,
                runs: values,
                median,
                limit_name,
                limit,
                ratio: median / limit,
            });
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "limits": limits, "figures": figures })
            )?
        );
    } else {
        print!("{}", figures_table(&figures));
    }
    Ok(())
}

/// The scenarios `weir bench gateway` runs through both protocols: the throughput one and
/// the durable-latency one of the suite (named, not indexed: an index into `SCENARIOS`
/// silently picked the durable closed loop once a scenario was inserted before it).
const GATEWAY_SCENARIOS: [&Scenario; 2] = [&MAX_PRODUCE, &DURABLE_OPEN_LOOP];

/// One figure through both protocols.
#[derive(Debug, Serialize)]
struct GatewayFigure {
    scenario: &'static str,
    name: &'static str,
    unit: &'static str,
    native_runs: Vec<f64>,
    kafka_runs: Vec<f64>,
    native: f64,
    kafka: f64,
    /// Kafka / native.
    ratio: f64,
    limit_name: &'static str,
    limit: f64,
}

fn gateway(args: PairedRuns) -> anyhow::Result<()> {
    let PairedRuns {
        data_dir,
        runs,
        broker_cpus,
        broker_env: given_env,
        json,
    } = args;
    let (limits, broker) = limits_and_broker_with_env(
        &data_dir,
        1,
        broker_cpus.clone(),
        &broker_env(&[], &given_env),
    )?;
    let mut figures = Vec::new();
    for scenario in GATEWAY_SCENARIOS {
        let mut reports: [Vec<Report>; 2] = [Vec::new(), Vec::new()];
        for n in 0..runs {
            // Alternate, so that both protocols see the device in the same moods.
            for (slot, protocol) in [Protocol::Native, Protocol::Kafka].into_iter().enumerate() {
                std::thread::sleep(std::time::Duration::from_secs(2));
                eprintln!("{} over {protocol:?} (run {})", scenario.name, n + 1);
                let address = match protocol {
                    Protocol::Native => &broker.native,
                    Protocol::Kafka => &broker.kafka,
                };
                let mut config = (scenario.config)(address, n);
                config.protocol = protocol;
                config.topic = format!("{}-{protocol:?}", config.topic);
                let topic = config.topic.clone();
                let meter = StealMeter::start(broker_cpus.as_deref());
                let report = weir_loadgen::run(config)?;
                eprintln!("  CPU steal {:.1}%", meter.percent());
                delete_topic(&broker.native, &topic)?;
                anyhow::ensure!(
                    report.ok,
                    "{} over {protocol:?}: verification failed\n{}",
                    scenario.name,
                    report.table()
                );
                reports[slot].push(report);
            }
        }
        for (name, unit, take, limit_name) in scenario.figures {
            let native_runs: Vec<f64> = reports[0].iter().map(take).collect();
            let kafka_runs: Vec<f64> = reports[1].iter().map(take).collect();
            let (native, kafka) = (median(&native_runs), median(&kafka_runs));
            figures.push(GatewayFigure {
                scenario: scenario.name,
                name,
                unit,
                native_runs,
                kafka_runs,
                native,
                kafka,
                ratio: kafka / native,
                limit_name,
                limit: limit_value(&limits, limit_name),
            });
        }
    }
    if json {
        let value = serde_json::json!({ "limits": limits, "figures": figures });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        for f in &figures {
            let runs = |v: &[f64]| joined(v, 0);
            println!(
                "{}\n  {:<18} native {:>8.1} {} [{}]  kafka {:>8.1} {} [{}]  kafka/native {:.3}  (kafka/{} {:.3})",
                f.scenario,
                f.name,
                f.native,
                f.unit,
                runs(&f.native_runs),
                f.kafka,
                f.unit,
                runs(&f.kafka_runs),
                f.ratio,
                f.limit_name,
                f.kafka / f.limit
            );
        }
    }
    Ok(())
}

/// The producer modes `weir bench exactly-once` compares: name, idempotent, messages per
/// transaction.
const PRODUCER_MODES: [(&str, bool, Option<u64>); 3] = [
    ("plain", false, None),
    ("idempotent", true, None),
    (
        "transactional, 100 messages per transaction",
        true,
        Some(100),
    ),
];

fn exactly_once(args: PairedRuns) -> anyhow::Result<()> {
    let PairedRuns {
        data_dir,
        runs,
        broker_cpus,
        broker_env: given_env,
        json,
    } = args;
    let (limits, broker) = limits_and_broker_with_env(
        &data_dir,
        1,
        broker_cpus.clone(),
        &broker_env(&[], &given_env),
    )?;
    // Each mode over both protocols: the Kafka gateway, and the native protocol.
    let modes: Vec<(String, Protocol, bool, Option<u64>)> = [Protocol::Kafka, Protocol::Native]
        .into_iter()
        .flat_map(|protocol| {
            PRODUCER_MODES.iter().map(move |(name, idempotent, txn)| {
                let label = match protocol {
                    Protocol::Kafka => "kafka",
                    Protocol::Native => "native",
                };
                (format!("{label}: {name}"), protocol, *idempotent, *txn)
            })
        })
        .collect();
    let mut results: Vec<(&str, Vec<Report>)> = modes
        .iter()
        .map(|(name, ..)| (name.as_str(), Vec::new()))
        .collect();
    for n in 0..runs {
        // Alternate, so that every mode sees the device in the same moods.
        for (slot, (name, protocol, idempotent, transaction_messages)) in modes.iter().enumerate() {
            std::thread::sleep(std::time::Duration::from_secs(2));
            eprintln!("{name} (run {})", n + 1);
            let brokers = match protocol {
                Protocol::Kafka => &broker.kafka,
                Protocol::Native => &broker.native,
            };
            let mut config = base(brokers, format!("exactly-once-{slot}-{n}"));
            config.protocol = *protocol;
            // Produce only (read back afterwards to verify): a consumer would share the
            // producer's connection, and each commit would wait behind its long-poll.
            config.consumers = 0;
            config.idempotent = *idempotent;
            config.transaction_messages = *transaction_messages;
            let topic = config.topic.clone();
            let report = weir_loadgen::run(config)?;
            delete_topic(&broker.native, &topic)?;
            anyhow::ensure!(report.ok, "{name}: verification failed\n{}", report.table());
            results[slot].1.push(report);
        }
    }
    let figures: Vec<serde_json::Value> = results
        .iter()
        .map(|(mode, reports)| {
            let throughput: Vec<f64> = reports.iter().map(|r| r.throughput_mb_s).collect();
            let p99: Vec<f64> = reports.iter().map(|r| r.produce_latency_us.p99).collect();
            serde_json::json!({
                "mode": mode,
                "produce_mb_s_runs": throughput,
                "produce_mb_s": median(&throughput),
                "produce_ack_p99_us_runs": p99,
                "produce_ack_p99_us": median(&p99),
            })
        })
        .collect();
    // Each protocol's modes are against its own plain produce.
    let plain_of = |index: usize| {
        figures[index - index % PRODUCER_MODES.len()]["produce_mb_s"]
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    if json {
        let value = serde_json::json!({ "limits": limits, "figures": figures });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        for (index, f) in figures.iter().enumerate() {
            let plain = plain_of(index);
            let mb_s = f["produce_mb_s"].as_f64().unwrap_or(f64::NAN);
            println!(
                "{:<46} produce {:>7.1} MB/s {}  /plain {:.3}  /direct write {:.3}  ack p99 {:>8.0} us {}",
                f["mode"].as_str().unwrap_or_default(),
                mb_s,
                f["produce_mb_s_runs"],
                mb_s / plain,
                mb_s / limits.disk.direct_write_mb_s,
                f["produce_ack_p99_us"].as_f64().unwrap_or(f64::NAN),
                f["produce_ack_p99_us_runs"],
            );
        }
    }
    Ok(())
}

/// The latency figures taken with and without compaction running.
const COMPACTION_FIGURES: &[FigureSpec] = &[PRODUCE_ACK_P50, PRODUCE_ACK_P99, END_TO_END_P99];

const COMPACTION_SCENARIO: &str = "durable produce and consume, open loop 50 MB/s (every-batch, acks=all, 1 KiB, 16 KiB batches), beside a 20 MB/s churn of keyed updates";

/// The stream whose latency is measured beside compaction and under replication:
/// durable, with a consumer, at a rate that leaves the shard headroom (a latency-critical
/// pipeline, not a saturated one), so that what compaction or replication adds shows
/// rather than queueing at a full core.
fn measured_stream(brokers: &str, n: usize) -> Config {
    Config {
        rate_mb_s: Some(50.0),
        duration_s: 10.0,
        warmup_s: 2.0,
        batch_bytes: 16 << 10,
        ..base(brokers, format!("measured-{n}"))
    }
}

/// One figure of a paired comparison: the measured mode against its baseline (compaction
/// running against not; RF=3 against RF=1), runs alternating.
#[derive(Debug, Serialize)]
struct PairedFigure {
    name: &'static str,
    unit: &'static str,
    measured_runs: Vec<f64>,
    baseline_runs: Vec<f64>,
    measured: f64,
    baseline: f64,
    /// measured / baseline.
    ratio: f64,
    limit_name: &'static str,
    limit: f64,
}

/// Each figure's medians over the runs of both modes (`reports[0]` measured,
/// `reports[1]` the baseline).
fn paired_figures(
    specs: &[FigureSpec],
    reports: &[Vec<Report>; 2],
    limits: &Limits,
) -> Vec<PairedFigure> {
    specs
        .iter()
        .map(|(name, unit, take, limit_name)| {
            let measured_runs: Vec<f64> = reports[0].iter().map(take).collect();
            let baseline_runs: Vec<f64> = reports[1].iter().map(take).collect();
            let (measured, baseline) = (median(&measured_runs), median(&baseline_runs));
            PairedFigure {
                name,
                unit,
                measured_runs,
                baseline_runs,
                measured,
                baseline,
                ratio: measured / baseline,
                limit_name,
                limit: limit_value(limits, limit_name),
            }
        })
        .collect()
}

/// Values as a comma-separated list, with `decimals` digits after the point.
fn joined(values: &[f64], decimals: usize) -> String {
    values
        .iter()
        .map(|x| format!("{x:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The human table of a paired comparison, modes named `labels` (measured, baseline).
fn paired_table(figures: &[PairedFigure], labels: [&str; 2]) -> String {
    let runs = |v: &[f64]| joined(v, 0);
    let [measured, baseline] = labels;
    figures
        .iter()
        .map(|f| {
            format!(
                "  {:<18} {measured} {:>8.0} {} [{}]  {baseline} {:>8.0} {} [{}]  {measured}/{baseline} {:.3}  ({measured}/{} {:.2})\n",
                f.name,
                f.measured,
                f.unit,
                runs(&f.measured_runs),
                f.baseline,
                f.unit,
                runs(&f.baseline_runs),
                f.ratio,
                f.limit_name,
                f.measured / f.limit
            )
        })
        .collect()
}

/// The churn beside the measured scenario: keyed updates at 20 MB/s into 1 MiB segments,
/// compacted or not.
fn churn(brokers: &str, n: usize, compacted: bool, duration_s: f64) -> Config {
    let policy = if compacted { "compact" } else { "delete" };
    Config {
        acks: AcksArg::Leader,
        rate_mb_s: Some(20.0),
        message_bytes: 256,
        key_cardinality: 1000,
        consumers: 0,
        // Compaction removes superseded updates: reading them back would find them lost.
        no_read_back: true,
        duration_s,
        warmup_s: 0.0,
        topic_configs: vec![
            format!("cleanup.policy={policy}"),
            "segment.bytes=1048576".into(),
            "max.message.bytes=1048576".into(),
            "min.cleanable.dirty.ratio=0.01".into(),
            "flush.policy=never".into(),
        ],
        ..base(brokers, format!("churn-{policy}-{n}"))
    }
}

fn compaction(args: PairedRuns) -> anyhow::Result<()> {
    let PairedRuns {
        data_dir,
        runs,
        broker_cpus,
        broker_env: given_env,
        json,
    } = args;
    let (limits, broker) = limits_and_broker_with_env(
        &data_dir,
        1,
        broker_cpus.clone(),
        // A round a second (Kafka's default wait is 15 s): compaction runs all the time.
        &broker_env(&[("WEIR_LOG_CLEANER_BACKOFF_MS", "1000")], &given_env),
    )?;
    let mut reports: [Vec<Report>; 2] = [Vec::new(), Vec::new()];
    let mut steal: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut compacted_mb = Vec::new();
    for n in 0..runs {
        // Alternate which mode goes first, so that drift in the device's mood cancels.
        let order = if n % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for compacted in order {
            let slot = usize::from(!compacted);
            let run_started = std::time::Instant::now();
            std::thread::sleep(std::time::Duration::from_secs(2));
            eprintln!(
                "{COMPACTION_SCENARIO} with compaction {compacted} (run {})",
                n + 1
            );
            let config = measured_stream(&broker.native, n * 2 + slot);
            let measured_s = config.duration_s + config.warmup_s;
            // The churn starts first and outlasts the measurement, so compaction is busy
            // throughout it.
            let churn_config = churn(&broker.native, n, compacted, measured_s + 6.0);
            let churn_topic = churn_config.topic.clone();
            let churn = std::thread::spawn(move || weir_loadgen::run(churn_config));
            std::thread::sleep(std::time::Duration::from_secs(3));
            const READ: &str = "weir_compaction_bytes_read_total";
            const FROM_CACHE: &str = "weir_compaction_cache_read_bytes_total";
            let read_before = metric_sum(&broker, READ)?;
            let from_cache_before = metric_sum(&broker, FROM_CACHE)?;
            let topic = config.topic.clone();
            let meter = StealMeter::start(broker_cpus.as_deref());
            let report = weir_loadgen::run(config)?;
            let stolen = meter.percent();
            let read = metric_sum(&broker, READ)? - read_before;
            let cached = metric_sum(&broker, FROM_CACHE)? - from_cache_before;
            let churned = churn
                .join()
                .map_err(|_| anyhow::anyhow!("the churn producer panicked"))??;
            delete_topic(&broker.native, &topic)?;
            delete_topic(&broker.native, &churn_topic)?;
            anyhow::ensure!(report.ok, "verification failed\n{}", report.table());
            anyhow::ensure!(
                churned.ok,
                "the churn's verification failed\n{}",
                churned.table()
            );
            eprintln!(
                "  produce ack p99 {:.0} us, end to end p99 {:.0} us; compaction read {:.1} MB meanwhile ({:.1} from the cache; {:.0} s); CPU steal {stolen:.1}%",
                report.produce_latency_us.p99,
                report.end_to_end_latency_us.p99,
                read / 1e6,
                cached / 1e6,
                run_started.elapsed().as_secs_f64()
            );
            steal[slot].push(stolen);
            if compacted {
                anyhow::ensure!(read > 0.0, "compaction did not run during the measurement");
                compacted_mb.push(read / 1e6);
            }
            reports[slot].push(report);
        }
    }
    let longest = |family| -> anyhow::Result<f64> {
        Ok(metric_samples(&broker, family)?
            .into_iter()
            .fold(0.0, f64::max)
            * 1e6)
    };
    let longest_step_us = longest("weir_compaction_longest_step_seconds")?;
    let longest_step_cpu_us = longest("weir_compaction_longest_step_cpu_seconds")?;
    let figures = paired_figures(COMPACTION_FIGURES, &reports, &limits);
    if json {
        let value = serde_json::json!({
            "limits": limits,
            "compaction_read_mb_per_run": compacted_mb,
            "compaction_longest_step_us": longest_step_us,
            "compaction_longest_step_cpu_us": longest_step_cpu_us,
            "steal_percent_runs": { "with": steal[0], "without": steal[1] },
            "figures": figures,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{COMPACTION_SCENARIO}");
        println!(
            "  compaction read per measured run (MB): {:?}; its longest step without yielding {longest_step_us:.0} us ({longest_step_cpu_us:.0} us of the shard's CPU time)",
            compacted_mb
                .iter()
                .map(|m| format!("{m:.1}"))
                .collect::<Vec<_>>()
        );
        print!("{}", steal_line(&steal, ["with", "without"]));
        print!("{}", paired_table(&figures, ["with", "without"]));
    }
    Ok(())
}

/// Steal on the brokers' CPUs over one run (`weir_bench::steal`): on a VM, host
/// contention that stalls a shard with nothing in the guest to show for it.
struct StealMeter {
    cpus: Vec<usize>,
    start: Option<CpuTimes>,
}

impl StealMeter {
    /// `broker_cpus` as given to the bench (`1` or `0,1`); every CPU when not pinned.
    fn start(broker_cpus: Option<&str>) -> StealMeter {
        let cpus = broker_cpus
            .into_iter()
            .flat_map(|c| c.split(','))
            .filter_map(|c| c.trim().parse().ok())
            .collect();
        StealMeter {
            cpus,
            start: CpuTimes::now().ok(),
        }
    }

    /// Percent of the CPUs' time stolen since the start; NaN when `/proc/stat` was not
    /// readable.
    fn percent(&self) -> f64 {
        let now = CpuTimes::now().ok();
        match (&self.start, now) {
            (Some(start), Some(now)) => now.steal_percent_since(start, &self.cpus),
            _ => None,
        }
        .unwrap_or(f64::NAN)
    }
}

/// Each mode's steal per run, as `paired_table` labels them.
fn steal_line(steal: &[Vec<f64>; 2], labels: [&str; 2]) -> String {
    let runs = |v: &[f64]| joined(v, 1);
    format!(
        "  CPU steal on the brokers' CPUs per run (%): {} [{}]  {} [{}]\n",
        labels[0],
        runs(&steal[0]),
        labels[1],
        runs(&steal[1])
    )
}

/// Every shard's sample of a metric family, from the broker's `/metrics`.
fn metric_samples(broker: &BrokerProcess, family: &str) -> anyhow::Result<Vec<f64>> {
    let (_, text) = broker.http_get("/metrics")?;
    let prefix = format!("{family}{{");
    Ok(text
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .collect())
}

/// A counter family's total over the broker's shards.
fn metric_sum(broker: &BrokerProcess, family: &str) -> anyhow::Result<f64> {
    Ok(metric_samples(broker, family)?.iter().sum())
}

fn delete_topic(brokers: &str, topic: &str) -> anyhow::Result<()> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    crate::cli::run(move || async move {
        let client = weir_client::Client::connect(&brokers).await?;
        client.delete_topic(&topic).await?;
        anyhow::Ok(())
    })
}

/// Stores 1.5 GB for the consume-from-disk scenario: more than the broker's cache.
fn fill_stored_topic(brokers: &str) -> anyhow::Result<()> {
    let fill = Config {
        acks: AcksArg::Leader,
        consumers: 0,
        messages: Some(1_500_000),
        warmup_s: 0.0,
        // The from-disk runs read all of it back, and check every offset.
        no_read_back: true,
        topic_configs: vec!["flush.policy=never".into()],
        ..base(brokers, "stored".into())
    };
    let report = weir_loadgen::run(fill)?;
    anyhow::ensure!(report.ok, "filling the stored topic failed");
    Ok(())
}

fn figures_table(figures: &[Figure]) -> String {
    let mut out = String::new();
    let mut scenario = "";
    for f in figures {
        if f.scenario != scenario {
            scenario = f.scenario;
            out += &format!("\n{scenario}\n");
        }
        let runs: Vec<String> = f.runs.iter().map(|v| format!("{v:.1}")).collect();
        out += &format!(
            "  {:<20} median {:>10.1} {:<5} runs [{}]  ratio {:.3} to {} ({:.1})\n",
            f.name,
            f.median,
            f.unit,
            runs.join(", "),
            f.ratio,
            f.limit_name,
            f.limit
        );
    }
    out
}

const REPLICATION_SCENARIO: &str = "durable produce and consume, open loop 50 MB/s (every-batch, acks=all, min.insync.replicas=2 at RF=3, 1 KiB, 16 KiB batches), one partition";

fn replication(args: PairedRuns) -> anyhow::Result<()> {
    let PairedRuns {
        data_dir,
        runs,
        broker_cpus,
        broker_env: given_env,
        json,
    } = args;
    let limits = fresh_limits(&data_dir)?;
    let binary = std::env::current_exe().context("locating the weir binary")?;
    let cpus: Vec<String> = broker_cpus
        .as_ref()
        .map(|c| c.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    // Three single-shard brokers on two cores: pinned round robin over the CPUs given.
    let brokers = BrokerProcess::start_cluster(&binary, &data_dir, 3, 1, |node| {
        let pinned = cpus
            .get(node % cpus.len().max(1))
            .map(|cpu| ("WEIR_CPUS".to_string(), format!("[{cpu}]")));
        pinned
            .into_iter()
            .chain(given_env.iter().cloned())
            .collect()
    })?;
    let bootstrap = brokers[0].native.clone();
    let mut reports: [Vec<Report>; 2] = [Vec::new(), Vec::new()];
    let mut steal: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for n in 0..runs {
        let order = if n % 2 == 0 { [3, 1] } else { [1, 3] };
        for rf in order {
            let slot = usize::from(rf == 1);
            std::thread::sleep(std::time::Duration::from_secs(2));
            eprintln!("{REPLICATION_SCENARIO}, RF={rf} (run {})", n + 1);
            let config = measured_stream(&bootstrap, n * 2 + slot);
            let topic = format!("replicated-rf{rf}-{n}");
            let mut create = vec!["topic", "create", &topic, "--partitions", "1"];
            let rf_arg = rf.to_string();
            create.extend(["--replication-factor", &rf_arg]);
            if rf == 3 {
                create.extend(["--config", "min.insync.replicas=2"]);
            }
            brokers[0].cli_ok(&create, None)?;
            // Every broker knows the leader and the ISR is whole before the first write.
            let settled = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let describe = brokers[0].cli_ok(&["topic", "describe", &topic], None)?;
                let isr = describe
                    .lines()
                    .find(|l| l.starts_with("0\t"))
                    .and_then(|l| l.split('\t').nth(4).map(|isr| isr.split(',').count()));
                if isr == Some(rf) {
                    break;
                }
                anyhow::ensure!(
                    std::time::Instant::now() < settled,
                    "{topic} did not settle: {describe}"
                );
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
            let meter = StealMeter::start(broker_cpus.as_deref());
            let report = weir_loadgen::run(Config {
                topic: topic.clone(),
                ..config
            })?;
            let stolen = meter.percent();
            steal[slot].push(stolen);
            delete_topic(&bootstrap, &topic)?;
            anyhow::ensure!(report.ok, "verification failed\n{}", report.table());
            eprintln!(
                "  produce ack p99 {:.0} us, end to end p99 {:.0} us, {:.1} MB/s; CPU steal {stolen:.1}%",
                report.produce_latency_us.p99,
                report.end_to_end_latency_us.p99,
                report.throughput_mb_s
            );
            reports[slot].push(report);
        }
    }
    let figures = paired_figures(REPLICATION_FIGURES, &reports, &limits);
    if json {
        let value = serde_json::json!({
            "limits": limits,
            "steal_percent_runs": { "rf3": steal[0], "rf1": steal[1] },
            "figures": figures,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{REPLICATION_SCENARIO}");
        print!("{}", steal_line(&steal, ["RF=3", "RF=1"]));
        print!("{}", paired_table(&figures, ["RF=3", "RF=1"]));
    }
    Ok(())
}

const REPLICATION_FIGURES: &[FigureSpec] = &[
    PRODUCE_ACK_P50,
    PRODUCE_ACK_P99,
    END_TO_END_P99,
    (
        "throughput",
        "MB/s",
        |r| r.throughput_mb_s,
        "direct_write_mb_s",
    ),
];
