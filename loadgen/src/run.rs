//! One loadgen run: producers and consumers on glommio executors, a progress line while
//! they run, and a report.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use serde::Serialize;
use weir_bench::Percentiles;
use weir_bench::percentiles::nanos_histogram;
use weir_client::{
    Acks, Client, ErrorCode, FetchSpec, FetchedPartition, OffsetQuery, ProduceResult, murmur2,
};
use weir_wire::{BatchBuilder, BatchHeader, Compression, RecordIter};

use crate::kafka::KafkaClient;
use crate::message::{self, Message};
use crate::verify::{self, Receipts, Verdict};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Native,
    Kafka,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AcksArg {
    None,
    Leader,
    All,
}

#[derive(Debug, Clone, Args, Serialize)]
pub struct Config {
    /// Broker address, HOST:PORT (the native port, or the Kafka port with
    /// `--protocol kafka`).
    #[arg(long, default_value = "127.0.0.1:9192")]
    pub brokers: String,
    #[arg(long, value_enum, default_value = "native")]
    pub protocol: Protocol,
    #[arg(long, default_value = "loadgen")]
    pub topic: String,
    /// Topics to spread the load over: with more than one, `TOPIC-0`, `TOPIC-1`, ...
    #[arg(long, default_value = "1")]
    pub topics: u32,
    /// Partitions of each topic (created when missing).
    #[arg(long, default_value = "1")]
    pub partitions: i32,
    #[arg(long, default_value = "1024")]
    pub message_bytes: usize,
    /// With this, message sizes are uniform in [message-bytes, message-bytes-max].
    #[arg(long)]
    pub message_bytes_max: Option<usize>,
    #[arg(long, value_enum, default_value = "all")]
    pub acks: AcksArg,
    /// Open loop at this total rate; without it, closed loop at full speed.
    #[arg(long)]
    pub rate_mb_s: Option<f64>,
    #[arg(long, default_value = "10")]
    pub duration_s: f64,
    /// Stop after this many messages per producer; the duration is then ignored.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Latencies, message rates and throughputs of the first seconds are not counted.
    #[arg(long, default_value = "1")]
    pub warmup_s: f64,
    #[arg(long, default_value = "1")]
    pub producers: u32,
    #[arg(long, default_value = "1")]
    pub consumers: u32,
    /// Codec of the batches loadgen builds: none, gzip, snappy, lz4, zstd (the broker
    /// stores batches as given; with a codec, loadgen's own compression and
    /// decompression share its CPU with the load).
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// A partition's batch is sent at this size ...
    #[arg(long, default_value = "16384")]
    pub batch_bytes: usize,
    /// ... or when its first message waited this long.
    #[arg(long, default_value = "1")]
    pub linger_ms: f64,
    /// Produce requests in flight per producer.
    #[arg(long, default_value = "16")]
    pub in_flight: usize,
    /// Distinct keys (0: no keys, batches rotate over partitions).
    #[arg(long, default_value = "0")]
    pub key_cardinality: u64,
    /// Executors (threads) the producers and consumers are spread over.
    #[arg(long, default_value = "1")]
    pub threads: usize,
    /// How long consumers may take, after producing ends, to receive everything.
    #[arg(long, default_value = "15")]
    pub drain_timeout_s: f64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print no progress line.
    #[arg(long)]
    pub quiet: bool,
    /// A config for the topic when loadgen creates it, KEY=VALUE (repeatable).
    #[arg(long = "topic-config")]
    pub topic_configs: Vec<String>,
    /// Consumers start at the earliest offset and, with no producers, stop once they
    /// reach the log end as it was at start (reading what is stored, from disk); every
    /// offset in that range must then hold a loadgen message.
    #[arg(long)]
    pub from_beginning: bool,
    /// With no consumers, loadgen reads back everything produced once producing ends
    /// (untimed) to verify it; this skips that, and the report says it is unverified.
    #[arg(long)]
    pub no_read_back: bool,
    /// Produce as idempotent producers (either protocol, acks all): each gets a producer
    /// id, and its batches carry sequence numbers the broker checks.
    #[arg(long)]
    pub idempotent: bool,
    /// Produce in transactions of this many messages per producer (either protocol, acks
    /// all; implies --idempotent): a transaction adds its partitions as it first writes
    /// to them, and commits once every batch of it is acknowledged.
    #[arg(long)]
    pub transaction_messages: Option<u64>,
}

/// A producer's idempotence and transaction state: its id and epoch, the next sequence
/// number of each partition slot, and the open transaction's partitions and size.
struct Idempotence {
    producer: (i64, i16),
    transactional_id: Option<String>,
    sequences: HashMap<i32, i32>,
    in_transaction: std::collections::BTreeSet<i32>,
    transaction_messages: u64,
}

impl Idempotence {
    /// Gives the batch its producer fields; sequences follow the order batches are
    /// sent in (one connection, written in arrival order).
    fn stamp(&mut self, slot: i32, batch: &mut OpenBatch) {
        let sequence = self.sequences.entry(slot).or_insert(0);
        batch
            .builder
            .producer(self.producer.0, self.producer.1, *sequence);
        if self.transactional_id.is_some() {
            batch.builder.transactional();
        }
        *sequence = sequence.wrapping_add(batch.builder.records_count()) & i32::MAX;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub config: Config,
    /// Messages produced (acknowledged, or sent with acks none) during the whole run.
    pub messages: u64,
    /// Acknowledged messages per second after the warm-up.
    pub messages_per_s: f64,
    /// Produce throughput after the warm-up, in MB/s (10^6 bytes of message values).
    pub throughput_mb_s: f64,
    pub consumed: u64,
    pub consume_throughput_mb_s: f64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub corrupt: u64,
    pub produce_errors: u64,
    pub produce_latency_us: Percentiles,
    pub end_to_end_latency_us: Percentiles,
    /// Whether what was produced (or, reading stored data, the offsets read) was checked
    /// against what consumers or the read-back received.
    pub verified: bool,
    pub ok: bool,
}

impl Config {
    /// Reading what is stored, with nothing produced: consumers stop at the log end as
    /// it was at start.
    fn catch_up_only(&self) -> bool {
        self.from_beginning && self.producers == 0
    }
}

/// Where the load goes: every (topic, partition), numbered as one list of slots.
#[derive(Debug, Clone)]
pub struct Layout {
    topics: Vec<String>,
    partitions: i32,
}

impl Layout {
    pub fn new(config: &Config) -> Layout {
        let topics = match config.topics {
            0 | 1 => vec![config.topic.clone()],
            n => (0..n).map(|i| format!("{}-{i}", config.topic)).collect(),
        };
        Layout {
            topics,
            partitions: config.partitions.max(1),
        }
    }

    pub fn slots(&self) -> i32 {
        self.topics.len() as i32 * self.partitions
    }

    pub fn topic(&self, slot: i32) -> &str {
        &self.topics[(slot / self.partitions) as usize]
    }

    pub fn partition(&self, slot: i32) -> i32 {
        slot % self.partitions
    }

    pub fn slot(&self, topic: &str, partition: i32) -> Option<i32> {
        let index = self.topics.iter().position(|t| t == topic)?;
        (0..self.partitions)
            .contains(&partition)
            .then_some(index as i32 * self.partitions + partition)
    }

    fn all(&self) -> Vec<(String, i32)> {
        (0..self.slots())
            .map(|s| (self.topic(s).to_string(), self.partition(s)))
            .collect()
    }
}

/// Counters every task updates, read by the progress line and the stop logic.
#[derive(Debug, Default)]
struct Shared {
    produced: AtomicU64,
    produced_bytes: AtomicU64,
    consumed: AtomicU64,
    errors: AtomicU64,
    /// Set when a loadgen thread failed: the run ends instead of waiting for it.
    failed: AtomicBool,
    producers_done: AtomicU64,
    consumers_done: AtomicU64,
    /// Messages consumers must receive; known once every producer is done.
    expected: AtomicU64,
    stop_consuming: AtomicBool,
}

struct ProducerOutcome {
    id: u32,
    expected: Vec<bool>,
    latency: Histogram<u64>,
    bytes_after_warmup: u64,
    messages_after_warmup: u64,
    finished_ns: u64,
}

struct ConsumerOutcome {
    receipts: Receipts,
    latency: Histogram<u64>,
    /// Bytes received after the warm-up.
    bytes: u64,
    /// When the consumer first received data after the warm-up, and last received any
    /// (ns since the epoch).
    first_ns: Option<u64>,
    last_ns: u64,
    /// Offsets read past (the range consumed), to check catch-up reads against.
    offsets_read: u64,
    /// Of those, offsets of transaction markers (which hold no message).
    control_offsets: i64,
}

enum Outcome {
    Producer(ProducerOutcome),
    Consumer(ConsumerOutcome),
}

fn acks(arg: AcksArg) -> Acks {
    match arg {
        AcksArg::None => Acks::None,
        AcksArg::Leader => Acks::Leader,
        AcksArg::All => Acks::All,
    }
}

fn executor() -> anyhow::Result<glommio::LocalExecutor> {
    LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .map_err(|e| anyhow::anyhow!(std::io::Error::from(e)))
}

/// A connection to the broker over the protocol under test; both give the same calls.
#[derive(Clone)]
enum Broker {
    Native(Client),
    Kafka(KafkaClient),
}

impl Broker {
    async fn connect(config: &Config) -> anyhow::Result<Broker> {
        Ok(match config.protocol {
            Protocol::Native => Broker::Native(Client::connect(&config.brokers).await?),
            Protocol::Kafka => Broker::Kafka(KafkaClient::connect(&config.brokers).await?),
        })
    }

    async fn init_producer_id(&self, transactional_id: Option<&str>) -> anyhow::Result<(i64, i16)> {
        match self {
            Broker::Native(c) => Ok(c.init_producer(transactional_id, 60_000, None).await?),
            Broker::Kafka(c) => c.init_producer_id(transactional_id).await,
        }
    }

    async fn add_partitions_to_txn(
        &self,
        transactional_id: &str,
        producer: (i64, i16),
        partitions: &[(String, i32)],
    ) -> anyhow::Result<()> {
        match self {
            Broker::Native(c) => Ok(c
                .add_partitions_to_txn(transactional_id, producer, partitions)
                .await?),
            Broker::Kafka(c) => {
                c.add_partitions_to_txn(transactional_id, producer, partitions)
                    .await
            }
        }
    }

    async fn end_txn(
        &self,
        transactional_id: &str,
        producer: (i64, i16),
        commit: bool,
    ) -> anyhow::Result<()> {
        match self {
            Broker::Native(c) => Ok(c.end_txn(transactional_id, producer, commit).await?),
            Broker::Kafka(c) => c.end_txn(transactional_id, producer, commit).await,
        }
    }

    async fn partition_count(&self, topic: &str) -> anyhow::Result<i32> {
        match self {
            Broker::Native(c) => Ok(c.partition_count(topic).await?),
            Broker::Kafka(c) => c.partition_count(topic).await,
        }
    }

    async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &[(String, String)],
    ) -> anyhow::Result<()> {
        match self {
            Broker::Native(c) => Ok(c.create_topic(name, partitions, configs).await?),
            Broker::Kafka(c) => c.create_topic(name, partitions, configs).await,
        }
    }

    async fn list_offsets(
        &self,
        partitions: &[(String, i32)],
        query: OffsetQuery,
    ) -> anyhow::Result<Vec<(String, i32, i64, i64)>> {
        match self {
            Broker::Native(c) => Ok(c.list_offsets(partitions, query).await?),
            Broker::Kafka(c) => c.list_offsets(partitions, query).await,
        }
    }

    async fn produce(
        &self,
        acks: Acks,
        timeout_ms: i32,
        records: Vec<(String, i32, Bytes)>,
    ) -> anyhow::Result<Vec<ProduceResult>> {
        match self {
            Broker::Native(c) => Ok(c.produce(acks, timeout_ms, records).await?),
            Broker::Kafka(c) => c.produce(acks, timeout_ms, records).await,
        }
    }

    async fn fetch(&self, spec: &FetchSpec) -> anyhow::Result<Vec<FetchedPartition>> {
        match self {
            Broker::Native(c) => Ok(c.fetch(spec).await?),
            Broker::Kafka(c) => c.fetch(spec).await,
        }
    }
}

/// The codec named `name` (Kafka's names: none, gzip, snappy, lz4, zstd).
fn codec(name: &str) -> anyhow::Result<Compression> {
    Compression::ALL
        .into_iter()
        .find(|c| c.name() == name)
        .with_context(|| {
            let names: Vec<&str> = Compression::ALL.iter().map(|c| c.name()).collect();
            format!("--compression {name}: not one of {}", names.join(", "))
        })
}

/// The most a fetched batch may decompress to (a batch is at most a produce frame).
const DECOMPRESSED_BATCH_BYTES_MAX: usize = 256 << 20;

/// Runs the load described by `config` and reports on it.
pub fn run(config: Config) -> anyhow::Result<Report> {
    codec(&config.compression)?;
    if (config.idempotent || config.transaction_messages.is_some()) && config.acks != AcksArg::All {
        bail!("--idempotent and --transaction-messages need --acks all");
    }
    if config.transaction_messages == Some(0) {
        bail!("--transaction-messages must be positive");
    }
    if config.message_bytes < message::MESSAGE_HEADER_BYTES
        || config.batch_bytes == 0
        || config.threads == 0
    {
        bail!(
            "--message-bytes must be at least {} and --batch-bytes, --threads positive",
            message::MESSAGE_HEADER_BYTES
        );
    }
    let layout = Layout::new(&config);
    let (starts, ends) = executor()?.run(prepare(config.clone(), layout.clone()))?;
    // Producer ids carry a per-run nonce, so runs that share a topic never look like each
    // other's duplicates.
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let nonce = (clock.map_or(1, |d| d.subsec_nanos()) & 0xff_ffff) << 8;
    let shared = Arc::new(Shared {
        expected: AtomicU64::new(u64::MAX),
        ..Shared::default()
    });
    let epoch = Instant::now();
    let mut threads = Vec::with_capacity(config.threads);
    for thread in 0..config.threads {
        let (config, shared, layout) = (config.clone(), shared.clone(), layout.clone());
        let offsets = (starts.clone(), ends.clone());
        threads.push(
            LocalExecutorBuilder::new(Placement::Unbound)
                .name(&format!("loadgen-{thread}"))
                .spawn(move || async move {
                    // Marks the run failed unless the thread ends well, panics included.
                    let mut failed = FailOnDrop(Some(shared.clone()));
                    let result =
                        run_thread(thread, nonce, config, &layout, shared, epoch, offsets).await;
                    if result.is_ok() {
                        failed.0 = None;
                    }
                    result
                })
                .map_err(|e| anyhow::anyhow!(std::io::Error::from(e)))?,
        );
    }
    watch(&config, &shared, epoch);
    let mut outcomes = Vec::new();
    for thread in threads {
        outcomes.extend(
            thread
                .join()
                .map_err(|e| anyhow::anyhow!("loadgen thread: {e}"))??,
        );
    }
    let stored = ends_minus(&ends, &starts);
    let read_back = config.consumers == 0 && config.producers > 0 && !config.no_read_back;
    if read_back {
        let (config, layout) = (config.clone(), layout.clone());
        let receipts =
            executor()?.run(async move { read_back_all(config, layout, starts).await })?;
        outcomes.push(Outcome::Consumer(receipts));
    }
    Ok(report(config, &shared, outcomes, read_back, &stored))
}

/// Marks the run failed when dropped while it still holds the shared counters.
struct FailOnDrop(Option<Arc<Shared>>);

impl Drop for FailOnDrop {
    fn drop(&mut self) {
        if let Some(shared) = &self.0 {
            shared.failed.store(true, Ordering::Release);
        }
    }
}

/// Offsets per slot between where consumers started and the log end at start.
fn ends_minus(ends: &[i64], starts: &[i64]) -> Vec<u64> {
    ends.iter()
        .zip(starts)
        .map(|(end, start)| end.saturating_sub(*start).max(0) as u64)
        .collect()
}

/// Reads every slot from where the run started to its log end now, verifying but not
/// timing (latencies and throughput of this read are not reported).
async fn read_back_all(
    config: Config,
    layout: Layout,
    starts: Vec<i64>,
) -> anyhow::Result<ConsumerOutcome> {
    let client = Broker::connect(&config).await.context("connecting")?;
    let ends = offsets(&client, &layout, OffsetQuery::Latest).await?;
    let slots = (0..layout.slots())
        .map(|s| (s, starts[s as usize], ends[s as usize]))
        .collect();
    let shared = Arc::new(Shared::default());
    let mut outcome = consume(slots, client, config, &layout, shared, Instant::now(), true).await?;
    outcome.latency.reset();
    outcome.bytes = 0;
    outcome.first_ns = None;
    Ok(outcome)
}

/// Creates the topic when missing and returns, per partition, where consumers start and
/// the log end now: consumers start at the end (seeing exactly this run's messages), or
/// with `--from-beginning` at the earliest offset.
async fn prepare(config: Config, layout: Layout) -> anyhow::Result<(Vec<i64>, Vec<i64>)> {
    let client = Broker::connect(&config).await.context("connecting")?;
    let configs = config
        .topic_configs
        .iter()
        .map(|c| {
            let pair = c
                .split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()));
            pair.with_context(|| format!("--topic-config {c:?} is not KEY=VALUE"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for topic in &layout.topics {
        match client.partition_count(topic).await {
            Ok(count) if count == config.partitions => {}
            Ok(count) => bail!(
                "topic {topic} has {count} partitions, not {}",
                config.partitions
            ),
            Err(_) => client
                .create_topic(topic, config.partitions, &configs)
                .await
                .with_context(|| format!("creating topic {topic}"))?,
        }
    }
    let ends = offsets(&client, &layout, OffsetQuery::Latest).await?;
    let starts = if config.from_beginning {
        offsets(&client, &layout, OffsetQuery::Earliest).await?
    } else {
        ends.clone()
    };
    Ok((starts, ends))
}

/// Each slot's offset answered for `query`.
async fn offsets(client: &Broker, layout: &Layout, query: OffsetQuery) -> anyhow::Result<Vec<i64>> {
    let mut found = vec![None; layout.slots() as usize];
    for (topic, partition, offset, _) in client.list_offsets(&layout.all(), query).await? {
        if let Some(slot) = layout.slot(&topic, partition) {
            found[slot as usize] = Some(offset);
        }
    }
    found
        .into_iter()
        .enumerate()
        .map(|(slot, offset)| {
            offset.with_context(|| {
                let (topic, partition) = (layout.topic(slot as i32), layout.partition(slot as i32));
                format!("no offset listed for {topic}-{partition}")
            })
        })
        .collect()
}

async fn run_thread(
    thread: usize,
    nonce: u32,
    config: Config,
    layout: &Layout,
    shared: Arc<Shared>,
    epoch: Instant,
    (starts, ends): (Vec<i64>, Vec<i64>),
) -> anyhow::Result<Vec<Outcome>> {
    let client = Broker::connect(&config).await.context("connecting")?;
    let mut tasks = Vec::new();
    for id in (0..config.producers).filter(|p| *p as usize % config.threads == thread) {
        let (client, config, shared) = (client.clone(), config.clone(), shared.clone());
        let layout = layout.clone();
        tasks.push(glommio::spawn_local(async move {
            produce(nonce | id, client, config, &layout, shared, epoch)
                .await
                .map(Outcome::Producer)
        }));
    }
    let catch_up_only = config.catch_up_only();
    for id in (0..config.consumers).filter(|c| *c as usize % config.threads == thread) {
        let slots: Vec<(i32, i64, i64)> = (0..layout.slots())
            .filter(|s| (*s as u32) % config.consumers == id)
            .map(|s| (s, starts[s as usize], ends[s as usize]))
            .collect();
        let (client, config, shared) = (client.clone(), config.clone(), shared.clone());
        let layout = layout.clone();
        tasks.push(glommio::spawn_local(async move {
            consume(slots, client, config, &layout, shared, epoch, catch_up_only)
                .await
                .map(Outcome::Consumer)
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await?);
    }
    Ok(outcomes)
}

/// The shortest sleep of an open-loop producer.
const OPEN_LOOP_TICK_NS: u64 = 50_000;

fn nanos_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// A partition's batch being filled: the builder and, per message, its sequence and
/// intended send time.
struct OpenBatch {
    builder: BatchBuilder,
    messages: Vec<(u64, u64)>,
    bytes: u64,
    opened_ns: u64,
}

struct ProducerState {
    expected: Vec<bool>,
    latency: Histogram<u64>,
    bytes_after_warmup: u64,
    messages_after_warmup: u64,
}

async fn produce(
    id: u32,
    client: Broker,
    config: Config,
    layout: &Layout,
    shared: Arc<Shared>,
    epoch: Instant,
) -> anyhow::Result<ProducerOutcome> {
    let warmup_ns = (config.warmup_s * 1e9) as u64;
    let end_ns = (config.duration_s * 1e9) as u64;
    let interval_ns = config.rate_mb_s.map(|rate| {
        let per_producer = rate * 1e6 / f64::from(config.producers);
        (mean_message_bytes(&config) as f64 / per_producer * 1e9) as u64
    });
    let linger_ns = (config.linger_ms * 1e6) as u64;
    // Record timestamps are wall-clock milliseconds, as Kafka's are; latencies use `epoch`.
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let epoch_wall_ms = since_unix.as_millis() as i64 - epoch.elapsed().as_millis() as i64;
    let state = Rc::new(RefCell::new(ProducerState {
        expected: Vec::new(),
        latency: nanos_histogram(),
        bytes_after_warmup: 0,
        messages_after_warmup: 0,
    }));
    let in_flight = Rc::new(glommio::sync::Semaphore::new(config.in_flight as u64));
    let mut open: HashMap<i32, OpenBatch> = HashMap::new();
    let mut idempotence = if config.idempotent || config.transaction_messages.is_some() {
        let transactional_id = config
            .transaction_messages
            .map(|_| format!("loadgen-{}-{id}", std::process::id()));
        Some(Idempotence {
            producer: client.init_producer_id(transactional_id.as_deref()).await?,
            transactional_id,
            sequences: HashMap::new(),
            in_transaction: Default::default(),
            transaction_messages: 0,
        })
    } else {
        None
    };
    let mut value = Vec::with_capacity(config.message_bytes_max.unwrap_or(config.message_bytes));
    let compression = codec(&config.compression)?;
    let (mut sequence, mut next_ns, mut rotation) = (0u64, nanos_since(epoch), id as i32);
    loop {
        let now = nanos_since(epoch);
        // Open loop ends once every message intended before the end is generated, so a
        // stall at the end counts in latency as one in the middle does.
        let done = match (config.messages, interval_ns) {
            (Some(limit), _) => sequence >= limit,
            (None, Some(_)) => next_ns >= end_ns,
            (None, None) => now >= end_ns,
        };
        if done {
            break;
        }
        // Open loop: every message due by now, each stamped with its intended time.
        // Closed loop: one message, sent as soon as in-flight room allows.
        let due = match interval_ns {
            Some(_) if next_ns > now => 0,
            Some(interval) => ((now - next_ns) / interval.max(1) + 1)
                .min(10_000)
                .min(config.messages.map_or(u64::MAX, |limit| limit - sequence)),
            None => 1,
        };
        for _ in 0..due {
            let intended = if interval_ns.is_some() {
                next_ns
            } else {
                nanos_since(epoch)
            };
            let size = message_size(&config, sequence);
            message::encode(
                &mut value,
                Message {
                    producer: id,
                    sequence,
                    sent_ns: intended,
                },
                size,
            );
            // Unkeyed: batches rotate over every slot. Keyed: topics take turns, and the
            // key picks the partition as Kafka's default partitioner does.
            let partition = match config.key_cardinality {
                0 => rotation.rem_euclid(layout.slots()),
                cardinality => {
                    let topic = (sequence % u64::from(layout.topics.len() as u32)) as i32;
                    let hash = murmur2(format!("key-{}", sequence % cardinality).as_bytes());
                    topic * layout.partitions + (hash & 0x7fff_ffff) % layout.partitions
                }
            };
            let key = (config.key_cardinality > 0)
                .then(|| format!("key-{}", sequence % config.key_cardinality));
            if let Some(idem) = &mut idempotence
                && let Some(transactional_id) = &idem.transactional_id
                && !idem.in_transaction.contains(&partition)
            {
                let tp = (
                    layout.topic(partition).to_string(),
                    layout.partition(partition),
                );
                client
                    .add_partitions_to_txn(transactional_id, idem.producer, &[tp])
                    .await?;
                idem.in_transaction.insert(partition);
            }
            let batch = open.entry(partition).or_insert_with(|| {
                // A batch is sent once it reaches batch_bytes: room for that and one more
                // message (with its record framing) never regrows the buffer.
                let largest = config.message_bytes_max.unwrap_or(config.message_bytes);
                let mut builder = BatchBuilder::with_capacity(
                    wall_ms(epoch_wall_ms, intended),
                    config.batch_bytes + largest + 64,
                );
                builder.compression(compression);
                OpenBatch {
                    builder,
                    messages: Vec::new(),
                    bytes: 0,
                    opened_ns: now,
                }
            });
            batch.builder.append(
                wall_ms(epoch_wall_ms, intended),
                key.as_deref().map(str::as_bytes),
                Some(&value),
                &[],
            );
            batch.messages.push((sequence, intended));
            batch.bytes += value.len() as u64;
            state.borrow_mut().expected.push(false);
            sequence += 1;
            next_ns += interval_ns.unwrap_or(0);
            if batch.builder.size_bytes() >= config.batch_bytes {
                let mut batch = open.remove(&partition).expect("batch just filled");
                if let Some(idem) = &mut idempotence {
                    idem.stamp(partition, &mut batch);
                }
                send(
                    &client, &config, layout, &shared, &state, &in_flight, partition, batch, epoch,
                    warmup_ns,
                )
                .await?;
                rotation += 1;
            }
            let transaction_full = match (&mut idempotence, config.transaction_messages) {
                (Some(idem), Some(limit)) => {
                    idem.transaction_messages += 1;
                    idem.transaction_messages >= limit
                }
                _ => false,
            };
            if transaction_full {
                // Every batch of the transaction is sent and acknowledged, then it commits.
                for (partition, mut batch) in std::mem::take(&mut open) {
                    if let Some(idem) = &mut idempotence {
                        idem.stamp(partition, &mut batch);
                    }
                    send(
                        &client, &config, layout, &shared, &state, &in_flight, partition, batch,
                        epoch, warmup_ns,
                    )
                    .await?;
                }
                let all = in_flight
                    .acquire_permit(config.in_flight as u64)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                if let Some(idem) = &mut idempotence
                    && let Some(transactional_id) = &idem.transactional_id
                {
                    client
                        .end_txn(transactional_id, idem.producer, true)
                        .await?;
                    idem.in_transaction.clear();
                    idem.transaction_messages = 0;
                }
                drop(all);
            }
        }
        let lingering: Vec<i32> = open
            .iter()
            .filter(|(_, b)| nanos_since(epoch) >= b.opened_ns + linger_ns)
            .map(|(p, _)| *p)
            .collect();
        for partition in lingering {
            if let Some(mut batch) = open.remove(&partition) {
                if let Some(idem) = &mut idempotence {
                    idem.stamp(partition, &mut batch);
                }
                send(
                    &client, &config, layout, &shared, &state, &in_flight, partition, batch, epoch,
                    warmup_ns,
                )
                .await?;
                rotation += 1;
            }
        }
        if let Some(_interval) = interval_ns {
            let wake = open
                .values()
                .map(|b| b.opened_ns + linger_ns)
                .min()
                .unwrap_or(next_ns)
                .min(next_ns);
            let now = nanos_since(epoch);
            if wake > now {
                // Waking for every message (every 5 us at 200 MB/s of 1 KiB) costs loadgen
                // a core in timer syscalls; at most every 50 us, messages are generated in a
                // burst. Their intended times stay exact, so the wait counts in latency.
                glommio::timer::sleep(Duration::from_nanos((wake - now).max(OPEN_LOOP_TICK_NS)))
                    .await;
            }
        }
    }
    for (partition, mut batch) in std::mem::take(&mut open) {
        if let Some(idem) = &mut idempotence {
            idem.stamp(partition, &mut batch);
        }
        send(
            &client, &config, layout, &shared, &state, &in_flight, partition, batch, epoch,
            warmup_ns,
        )
        .await?;
    }
    let _all = in_flight.acquire_permit(config.in_flight as u64).await;
    if let Some(idem) = &mut idempotence
        && let Some(transactional_id) = &idem.transactional_id
        && !idem.in_transaction.is_empty()
    {
        client
            .end_txn(transactional_id, idem.producer, true)
            .await?;
    }
    shared.producers_done.fetch_add(1, Ordering::AcqRel);
    let state = Rc::try_unwrap(state)
        .map_err(|_| anyhow::anyhow!("a produce request outlived its producer"))?
        .into_inner();
    Ok(ProducerOutcome {
        id,
        expected: state.expected,
        latency: state.latency,
        bytes_after_warmup: state.bytes_after_warmup,
        messages_after_warmup: state.messages_after_warmup,
        finished_ns: nanos_since(epoch),
    })
}

/// The wall-clock time, in ms, of `nanos` after the run's epoch.
fn wall_ms(epoch_wall_ms: i64, nanos: u64) -> i64 {
    epoch_wall_ms + (nanos / 1_000_000) as i64
}

fn mean_message_bytes(config: &Config) -> usize {
    config
        .message_bytes_max
        .map_or(config.message_bytes, |max| (config.message_bytes + max) / 2)
}

/// The size of message `sequence`: fixed, or spread uniformly over the range.
fn message_size(config: &Config, sequence: u64) -> usize {
    match config.message_bytes_max {
        Some(max) if max > config.message_bytes => {
            let spread = (max - config.message_bytes + 1) as u64;
            config.message_bytes
                + (sequence.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as usize % spread as usize
        }
        _ => config.message_bytes,
    }
}

#[allow(clippy::too_many_arguments)]
async fn send(
    client: &Broker,
    config: &Config,
    layout: &Layout,
    shared: &Arc<Shared>,
    state: &Rc<RefCell<ProducerState>>,
    in_flight: &Rc<glommio::sync::Semaphore>,
    slot: i32,
    batch: OpenBatch,
    epoch: Instant,
    warmup_ns: u64,
) -> anyhow::Result<()> {
    let permit = in_flight
        .clone()
        .acquire_static_permit(1)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (client, acks, shared, state) = (
        client.clone(),
        acks(config.acks),
        shared.clone(),
        state.clone(),
    );
    let (topic, partition) = (layout.topic(slot).to_string(), layout.partition(slot));
    let records = vec![(topic, partition, batch.builder.build().freeze())];
    glommio::spawn_local(async move {
        let result = client.produce(acks, 30_000, records).await;
        let acked = match &result {
            Ok(_) if acks == Acks::None => true,
            Ok(results) => results.first().is_some_and(|r| r.error == ErrorCode::None),
            Err(_) => false,
        };
        let now = nanos_since(epoch);
        let mut state = state.borrow_mut();
        if acked {
            for (sequence, intended) in &batch.messages {
                state.expected[*sequence as usize] = true;
                if *intended >= warmup_ns {
                    state
                        .latency
                        .saturating_record(now.saturating_sub(*intended).max(1));
                    state.messages_after_warmup += 1;
                }
            }
            if batch.opened_ns >= warmup_ns {
                state.bytes_after_warmup += batch.bytes;
            }
            shared
                .produced
                .fetch_add(batch.messages.len() as u64, Ordering::Relaxed);
            shared
                .produced_bytes
                .fetch_add(batch.bytes, Ordering::Relaxed);
        } else {
            shared
                .errors
                .fetch_add(batch.messages.len() as u64, Ordering::Relaxed);
        }
        drop(permit);
    })
    .detach();
    Ok(())
}

/// Consumes `slots` (each with where to start and, for catch-up reads, where to stop)
/// until told to stop or, with `catch_up_only`, until every slot reached its end.
async fn consume(
    slots: Vec<(i32, i64, i64)>,
    client: Broker,
    config: Config,
    layout: &Layout,
    shared: Arc<Shared>,
    epoch: Instant,
    catch_up_only: bool,
) -> anyhow::Result<ConsumerOutcome> {
    let warmup_ns = (config.warmup_s * 1e9) as u64;
    let mut outcome = ConsumerOutcome {
        receipts: Receipts::default(),
        latency: nanos_histogram(),
        bytes: 0,
        first_ns: None,
        last_ns: 0,
        offsets_read: 0,
        control_offsets: 0,
    };
    // Per slot: where the next fetch starts, and where a catch-up read stops.
    let mut positions: HashMap<i32, (i64, i64)> = slots
        .iter()
        .map(|(s, start, end)| (*s, (*start, *end)))
        .collect();
    while !positions.is_empty() && !shared.stop_consuming.load(Ordering::Acquire) {
        let caught_up = positions.values().all(|(at, end)| at >= end);
        if catch_up_only && caught_up {
            break;
        }
        let spec = FetchSpec {
            max_wait_ms: 100,
            min_bytes: 1,
            max_bytes: 16 << 20,
            partitions: positions
                .iter()
                .filter(|(_, (at, end))| !catch_up_only || at < end)
                .map(|(s, (o, _))| {
                    (
                        layout.topic(*s).to_string(),
                        layout.partition(*s),
                        *o,
                        4 << 20,
                    )
                })
                .collect(),
            read_committed: false,
        };
        for fetched in client.fetch(&spec).await.context("fetching")? {
            if fetched.error != ErrorCode::None {
                bail!(
                    "fetch {}-{}: {:?} {}",
                    fetched.topic,
                    fetched.partition,
                    fetched.error,
                    fetched.error_message
                );
            }
            let slot = layout
                .slot(&fetched.topic, fetched.partition)
                .with_context(|| {
                    format!(
                        "fetched {}-{}: not asked for",
                        fetched.topic, fetched.partition
                    )
                })?;
            let Some((position, _)) = positions.get(&slot).copied() else {
                bail!(
                    "fetched {}-{}: not one of this consumer's partitions",
                    fetched.topic,
                    fetched.partition
                );
            };
            let before = outcome.receipts.received + outcome.receipts.corrupt;
            let next = receive(
                &fetched.records,
                slot,
                position,
                epoch,
                warmup_ns,
                &mut outcome,
            )?;
            let next = next.max(position);
            outcome.offsets_read += (next - position) as u64;
            if let Some((at, _)) = positions.get_mut(&slot) {
                *at = next;
            }
            let received = outcome.receipts.received + outcome.receipts.corrupt - before;
            let now = nanos_since(epoch);
            if received > 0 {
                if now >= warmup_ns {
                    outcome.first_ns.get_or_insert(now);
                }
                outcome.last_ns = now;
            }
            shared.consumed.fetch_add(received, Ordering::Relaxed);
        }
    }
    shared.consumers_done.fetch_add(1, Ordering::AcqRel);
    Ok(outcome)
}

/// Verifies and counts the messages of `records` at or after `position`; returns the
/// offset after the last batch.
fn receive(
    records: &Bytes,
    slot: i32,
    position: i64,
    epoch: Instant,
    warmup_ns: u64,
    outcome: &mut ConsumerOutcome,
) -> anyhow::Result<i64> {
    let mut next = position;
    let mut at = 0;
    while at < records.len() {
        let header = BatchHeader::parse(&records[at..])?;
        let batch = &records[at..at + header.total_bytes()];
        if header.attributes.is_control() {
            // A transaction marker: no message, but it holds an offset.
            outcome.control_offsets += header.next_offset() - header.base_offset;
            next = header.next_offset();
            at += header.total_bytes();
            continue;
        }
        let now = nanos_since(epoch);
        let (_, section) = weir_wire::record::records_section(batch, DECOMPRESSED_BATCH_BYTES_MAX)?;
        for record in RecordIter::over(header, &section) {
            let record = record?;
            if record.offset < position {
                continue;
            }
            let value = record.value.unwrap_or_default();
            match message::decode(value) {
                Some(message) => {
                    outcome
                        .receipts
                        .record(slot, message.producer, message.sequence);
                    if now >= warmup_ns {
                        outcome.bytes += value.len() as u64;
                    }
                    if message.sent_ns >= warmup_ns {
                        outcome
                            .latency
                            .saturating_record(now.saturating_sub(message.sent_ns).max(1));
                    }
                }
                None => outcome.receipts.corrupt += 1,
            }
        }
        next = header.next_offset();
        at += header.total_bytes();
    }
    Ok(next)
}

/// Prints a progress line each second until producers are done, then lets consumers
/// drain until they received everything expected or the drain timeout passes.
fn watch(config: &Config, shared: &Shared, epoch: Instant) {
    let mut last = (Instant::now(), 0u64);
    let mut drain_deadline = None;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let produced = shared.produced.load(Ordering::Relaxed);
        if !config.quiet && last.0.elapsed() >= Duration::from_secs(1) {
            let bytes = shared.produced_bytes.load(Ordering::Relaxed);
            let rate = (bytes - last.1) as f64 / 1e6 / last.0.elapsed().as_secs_f64();
            eprintln!(
                "[{:5.1}s] produced {produced} messages, {rate:.1} MB/s, errors {}",
                epoch.elapsed().as_secs_f64(),
                shared.errors.load(Ordering::Relaxed)
            );
            last = (Instant::now(), bytes);
        }
        if shared.failed.load(Ordering::Acquire) {
            shared.stop_consuming.store(true, Ordering::Release);
            return;
        }
        if shared.producers_done.load(Ordering::Acquire) < u64::from(config.producers) {
            continue;
        }
        let deadline = *drain_deadline.get_or_insert_with(|| {
            Instant::now() + Duration::from_secs_f64(config.drain_timeout_s)
        });
        shared.expected.store(produced, Ordering::Release);
        // Consumers catching up on stored data stop by themselves, at the end they saw.
        let catch_up_only = config.catch_up_only();
        let received_all = !catch_up_only && shared.consumed.load(Ordering::Relaxed) >= produced;
        let consumers_done =
            shared.consumers_done.load(Ordering::Acquire) >= u64::from(config.consumers);
        if received_all || consumers_done || Instant::now() >= deadline {
            shared.stop_consuming.store(true, Ordering::Release);
            return;
        }
    }
}

/// `read_back`: the receipts include a read-back of everything produced; `stored`: per
/// slot, the offsets between where consumers started and the log end at start.
fn report(
    config: Config,
    shared: &Shared,
    outcomes: Vec<Outcome>,
    read_back: bool,
    stored: &[u64],
) -> Report {
    let mut expected = HashMap::new();
    let mut produce_latency = nanos_histogram();
    let mut end_to_end = nanos_histogram();
    let mut receipts = Receipts::default();
    let (mut bytes_after_warmup, mut finished_ns, mut consumed_bytes) = (0u64, 0u64, 0u64);
    let (mut consume_first_ns, mut consume_last_ns) = (u64::MAX, 0u64);
    let (mut messages_after_warmup, mut offsets_read, mut stored_markers) = (0u64, 0u64, 0u64);
    for outcome in outcomes {
        match outcome {
            Outcome::Producer(p) => {
                let _ = produce_latency.add(&p.latency);
                bytes_after_warmup += p.bytes_after_warmup;
                messages_after_warmup += p.messages_after_warmup;
                finished_ns = finished_ns.max(p.finished_ns);
                expected.insert(p.id, p.expected);
            }
            Outcome::Consumer(c) => {
                let _ = end_to_end.add(&c.latency);
                consume_first_ns = consume_first_ns.min(c.first_ns.unwrap_or(u64::MAX));
                consume_last_ns = consume_last_ns.max(c.last_ns);
                consumed_bytes += c.bytes;
                offsets_read += c.offsets_read;
                stored_markers += c.control_offsets.max(0) as u64;
                receipts.merge(c.receipts);
            }
        }
    }
    let catch_up_only = config.catch_up_only();
    let verified = config.consumers > 0 || read_back;
    let mut verdict = if verified {
        verify::verdict(&receipts, &expected)
    } else {
        Verdict::default()
    };
    if catch_up_only {
        // Nothing was produced to expect: every stored offset read must have held a
        // message, and every stored offset must have been read.
        let stored: u64 = stored.iter().sum::<u64>().saturating_sub(stored_markers);
        let delivered = receipts.received + receipts.corrupt;
        verdict.lost += stored.saturating_sub(delivered.min(offsets_read));
    }
    let measured_s = (finished_ns as f64 / 1e9 - config.warmup_s).max(1e-9);
    let messages = shared.produced.load(Ordering::Relaxed);
    Report {
        messages,
        messages_per_s: messages_after_warmup as f64 / measured_s,
        throughput_mb_s: bytes_after_warmup as f64 / 1e6 / measured_s,
        consumed: receipts.received,
        consume_throughput_mb_s: consumed_bytes as f64
            / 1e6
            / (consume_last_ns.saturating_sub(consume_first_ns) as f64 / 1e9).max(1e-9),
        lost: verdict.lost,
        duplicates: verdict.duplicates,
        out_of_order: verdict.out_of_order,
        corrupt: verdict.corrupt,
        produce_errors: shared.errors.load(Ordering::Relaxed),
        produce_latency_us: Percentiles::from_nanos(&produce_latency),
        end_to_end_latency_us: Percentiles::from_nanos(&end_to_end),
        verified,
        ok: verdict.ok() && shared.errors.load(Ordering::Relaxed) == 0,
        config,
    }
}

impl Report {
    /// The human table.
    pub fn table(&self) -> String {
        let row = |name: &str, p: &Percentiles| {
            format!(
                "{name:<22} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0}\n",
                p.p50, p.p90, p.p99, p.p999, p.p9999, p.max
            )
        };
        let mut out = format!(
            "messages {}  ({:.0}/s)  produce {:.1} MB/s  consume {:.1} MB/s\nlost {}  duplicates {}  out of order {}  corrupt {}  produce errors {}  => {}\n\n",
            self.messages,
            self.messages_per_s,
            self.throughput_mb_s,
            self.consume_throughput_mb_s,
            self.lost,
            self.duplicates,
            self.out_of_order,
            self.corrupt,
            self.produce_errors,
            match (self.ok, self.verified) {
                (false, _) => "FAILED",
                (true, true) => "OK",
                (true, false) => "OK, NOT VERIFIED (--no-read-back and no consumers)",
            }
        );
        out += &format!(
            "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "latency (us)", "p50", "p90", "p99", "p99.9", "p99.99", "max"
        );
        out += &row("produce ack", &self.produce_latency_us);
        out += &row("end to end", &self.end_to_end_latency_us);
        out
    }
}
