//! The client subcommands of `weir`, in the habits of kcat and rpk.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use weir_client::{
    Acks, Client, ConfigSource, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
    StartFrom,
};

/// How every connection the CLI makes is secured (`--tls-*`, `--sasl-*`).
static SECURITY: std::sync::OnceLock<weir_client::Security> = std::sync::OnceLock::new();

pub fn secure_with(security: weir_client::Security) {
    let _ = SECURITY.set(security);
}

/// A client of `brokers`, over TLS and logged in when the CLI was told to.
async fn connect(brokers: &str) -> weir_client::ClientResult<Client> {
    Client::connect_with(brokers, SECURITY.get().cloned().unwrap_or_default()).await
}

#[derive(Debug, Args)]
pub struct Brokers {
    /// Brokers to connect to, HOST:PORT[,...].
    #[arg(long, default_value = "127.0.0.1:9192", global = true)]
    pub brokers: String,
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, short)]
        partitions: Option<i32>,
        /// Replicas of each partition (default: the broker's default_replication_factor).
        #[arg(long, short = 'r')]
        replication_factor: Option<i16>,
        /// A topic config, KEY=VALUE (repeatable): cleanup.policy, retention.ms,
        /// compression.type, flush.policy, ... (docs/CONFIG.md)
        #[arg(long = "config", short = 'c')]
        configs: Vec<String>,
    },
    /// List topics.
    List {
        /// Include internal topics.
        #[arg(long)]
        internal: bool,
    },
    /// Show a topic's partitions and offsets, and every config with its value and source:
    /// topic (an override), broker (the broker's configuration) or default.
    Describe { name: String },
    /// Change a topic's configs: override keys, or delete overrides so that the broker's
    /// defaults apply again. Other overrides stay; all or nothing.
    AlterConfig {
        name: String,
        /// Override a config, KEY=VALUE (repeatable; docs/CONFIG.md lists the keys).
        #[arg(
            long = "set",
            value_name = "KEY=VALUE",
            required_unless_present = "delete"
        )]
        set: Vec<String>,
        /// Remove a config's override, KEY (repeatable).
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
        /// Check the change and make none.
        #[arg(long)]
        validate_only: bool,
    },
    /// Delete a topic and its data.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The brokers (live or fenced), the active controller, and per broker how many
    /// partitions it leads and holds, and how many partitions lack in-sync replicas.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum PartitionCommand {
    /// Move a partition onto other brokers, online: the new replicas are added and catch
    /// up, then the old ones leave (`weir topic describe` shows the progress).
    Move {
        topic: String,
        partition: i32,
        /// The brokers to hold it, the preferred leader first (comma-separated ids).
        #[arg(long, value_delimiter = ',', required = true)]
        replicas: Vec<i32>,
    },
}

/// Offline tools over data directories.
#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Print every batch of a partition directory's segments (offsets, leader epoch,
    /// producer id, epoch and sequences, record count, CRC), without opening the log:
    /// nothing is changed, and a torn tail ends the listing (Kafka's kafka-dump-log).
    Dump { dir: std::path::PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List groups with committed offsets.
    List,
    /// Show a group's committed offsets and lag.
    Describe { group: String },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user, or set its password: a SCRAM credential for each mechanism, salted
    /// and hashed here (the password is not sent).
    Create {
        name: String,
        #[arg(long)]
        password: String,
        /// SCRAM-SHA-256, SCRAM-SHA-512 or both (comma-separated).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "SCRAM-SHA-256,SCRAM-SHA-512"
        )]
        mechanism: Vec<String>,
        #[arg(long, default_value_t = 8192)]
        iterations: u32,
    },
    /// Remove a user's credentials (every mechanism unless one is named).
    Delete {
        name: String,
        #[arg(long)]
        mechanism: Option<String>,
    },
    /// Users with credentials, their mechanisms and iterations.
    List,
}

/// The resource an ACL is about: one of these.
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct AclResource {
    /// A topic (`*`: every topic; with `--pattern prefixed`, a prefix).
    #[arg(long)]
    pub topic: Option<String>,
    /// A consumer group.
    #[arg(long)]
    pub group: Option<String>,
    /// The cluster (Kafka's `kafka-cluster`): admin, transactions' markers, idempotence.
    #[arg(long)]
    pub cluster: bool,
    /// A transactional producer's id.
    #[arg(long)]
    pub transactional_id: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AclPatternArg {
    /// The name itself (`*`: every resource of the type).
    Literal,
    /// Every resource whose name starts with it.
    Prefixed,
    /// (Filters only) either.
    Any,
    /// (Filters only) what applies to the named resource: its name, `*` and its prefixes.
    Match,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AclPermissionArg {
    Allow,
    Deny,
}

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Allow (or deny) a principal operations on a resource; one ACL per operation.
    Create {
        #[command(flatten)]
        resource: AclResource,
        #[arg(long, value_enum, default_value = "literal")]
        pattern: AclPatternArg,
        /// `User:NAME`, or `User:*` for every principal.
        #[arg(long, required = true)]
        principal: String,
        /// The client address it applies to.
        #[arg(long, default_value = "*")]
        host: String,
        /// Kafka's operations, comma-separated: all, read, write, create, delete, alter,
        /// describe, cluster_action, describe_configs, alter_configs, idempotent_write.
        #[arg(long, value_delimiter = ',', required = true)]
        operation: Vec<String>,
        #[arg(long, value_enum, default_value = "allow")]
        permission: AclPermissionArg,
    },
    /// The ACLs, all or those the options select.
    List {
        #[command(flatten)]
        filter: AclFilterArgs,
    },
    /// Remove the ACLs the options select (at least one option).
    Delete {
        #[command(flatten)]
        filter: AclFilterArgs,
    },
}

#[derive(Debug, Args)]
pub struct AclFilterArgs {
    #[command(flatten)]
    resource: AclResource,
    #[arg(long, value_enum, default_value = "any")]
    pattern: AclPatternArg,
    #[arg(long)]
    principal: Option<String>,
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    operation: Option<String>,
    #[arg(long, value_enum)]
    permission: Option<AclPermissionArg>,
}

/// Whom a quota is for: a user, a client id, or both (each a name or the default).
#[derive(Debug, Args)]
pub struct QuotaEntityArgs {
    #[arg(long, conflicts_with = "default_user")]
    pub user: Option<String>,
    /// Every user without a quota of its own.
    #[arg(long)]
    pub default_user: bool,
    #[arg(long, conflicts_with = "default_client_id")]
    pub client_id: Option<String>,
    /// Every client id without a quota of its own.
    #[arg(long)]
    pub default_client_id: bool,
}

#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Set or remove an entity's quotas: producer_byte_rate and consumer_byte_rate
    /// (bytes a second), request_rate (requests a second). All or nothing.
    Alter {
        #[command(flatten)]
        entity: QuotaEntityArgs,
        /// KEY=VALUE (repeatable).
        #[arg(
            long = "set",
            value_name = "KEY=VALUE",
            required_unless_present = "remove"
        )]
        set: Vec<String>,
        /// KEY (repeatable).
        #[arg(long = "remove", value_name = "KEY")]
        remove: Vec<String>,
    },
    /// Quotas of entities naming the user and (or) client id; neither: every one.
    Describe {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        client_id: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AcksArg {
    None,
    Leader,
    All,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    pub topic: String,
    /// Split each line at the first occurrence into key and value.
    #[arg(long)]
    pub key_separator: Option<String>,
    /// A header for every record, KEY=VALUE (repeatable).
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// Send every record to this partition (default: by key hash, else sticky).
    #[arg(long, short)]
    pub partition: Option<i32>,
    #[arg(long, value_enum, default_value = "all")]
    pub acks: AcksArg,
    #[arg(long, default_value = "5")]
    pub linger_ms: u64,
    /// An idempotent producer: retries never duplicate a record.
    #[arg(long)]
    pub idempotent: bool,
    /// Send every line in one transaction of this transactional id, committed at the
    /// end of the input (fencing any older producer of the id).
    /// A transactional producer's id.
    #[arg(long)]
    pub transactional_id: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// The value only.
    Value,
    /// Key, tab, value.
    KeyValue,
    /// One JSON object per record.
    Json,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    pub topic: String,
    /// beginning, end, an offset, or @TIMESTAMP_MS.
    #[arg(long, default_value = "end")]
    pub from: String,
    /// Stop after this many records.
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// Start from the group's committed offsets and commit what was printed.
    #[arg(long, short)]
    pub group: Option<String>,
    /// Only this partition.
    #[arg(long, short)]
    pub partition: Option<i32>,
    #[arg(long, value_enum, default_value = "value")]
    pub format: Format,
    /// Stop when nothing arrived for this long.
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
    /// Only records of committed transactions (Kafka's isolation.level=read_committed).
    #[arg(long)]
    pub read_committed: bool,
}

/// Runs a client command on a glommio executor of its own.
pub fn run<F, T>(command: impl FnOnce() -> F + Send + 'static) -> anyhow::Result<T>
where
    F: std::future::Future<Output = anyhow::Result<T>> + 'static,
    T: Send + 'static,
{
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .map_err(|e| anyhow::anyhow!(std::io::Error::from(e)))
        .context("starting glommio (weir needs io_uring)")?;
    executor.run(command())
}

fn key_value(pair: &str) -> anyhow::Result<(String, String)> {
    pair.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .with_context(|| format!("{pair:?} is not KEY=VALUE"))
}

pub async fn topic(brokers: String, command: TopicCommand) -> anyhow::Result<()> {
    let client = connect(&brokers).await?;
    let mut out = std::io::stdout().lock();
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => {
            let configs = configs
                .iter()
                .map(|c| key_value(c))
                .collect::<anyhow::Result<Vec<_>>>()?;
            client
                .create_replicated_topic(
                    &name,
                    partitions.unwrap_or(0),
                    replication_factor.unwrap_or(-1),
                    &configs,
                )
                .await?;
            writeln!(out, "created topic {name}")?;
        }
        TopicCommand::List { internal } => {
            for topic in client
                .metadata(None)
                .await?
                .topics
                .iter()
                .filter(|t| internal || !t.internal)
            {
                writeln!(out, "{}\t{} partitions", topic.name, topic.partitions.len())?;
            }
        }
        TopicCommand::Describe { name } => {
            let metadata = client.metadata(Some(std::slice::from_ref(&name))).await?;
            let topic = metadata.topics.first().context("no metadata")?;
            if topic.error != weir_client::ErrorCode::None {
                bail!("topic {name}: {:?}", topic.error);
            }
            writeln!(
                out,
                "topic {name}{}",
                if topic.internal { " (internal)" } else { "" }
            )?;
            for config in client.describe_topic_configs(&name).await? {
                let source = source_name(config.source);
                writeln!(out, "config {}={}\t({source})", config.key, config.value)?;
            }
            writeln!(
                out,
                "partition\tleader\tepoch\treplicas\tisr\tshard\tlog_start\thigh_watermark\tbytes"
            )?;
            for p in &topic.partitions {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    p.partition,
                    p.leader,
                    p.leader_epoch,
                    ids(&p.replicas),
                    ids(&p.isr),
                    p.shard,
                    p.log_start_offset,
                    p.high_watermark,
                    p.size_bytes
                )?;
            }
        }
        TopicCommand::AlterConfig {
            name,
            set,
            delete,
            validate_only,
        } => {
            let set = set
                .iter()
                .map(|c| key_value(c))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if validate_only {
                client.validate_topic_configs(&name, &set, &delete).await?;
                writeln!(out, "the change to topic {name} is valid; nothing changed")?;
            } else {
                client.alter_topic_configs(&name, &set, &delete).await?;
                writeln!(out, "altered the configs of topic {name}")?;
            }
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            writeln!(out, "deleted topic {name}")?;
        }
    }
    Ok(())
}

fn ids(nodes: &[i32]) -> String {
    let ids: Vec<String> = nodes.iter().map(i32::to_string).collect();
    ids.join(",")
}

pub async fn cluster(brokers: String, command: ClusterCommand) -> anyhow::Result<()> {
    let client = connect(&brokers).await?;
    let mut out = std::io::stdout().lock();
    match command {
        ClusterCommand::Status => {
            let cluster = client.describe_cluster().await?;
            let metadata = client.metadata(None).await?;
            let partitions: Vec<&weir_client::PartitionMeta> =
                metadata.topics.iter().flat_map(|t| &t.partitions).collect();
            writeln!(out, "cluster {}", cluster.cluster_id)?;
            writeln!(
                out,
                "controller {}",
                if cluster.controller < 0 {
                    "none".to_string()
                } else {
                    cluster.controller.to_string()
                }
            )?;
            writeln!(out, "broker\tstate\tnative\tkafka\tshards\tleads\treplicas")?;
            for broker in &cluster.brokers {
                let leads = partitions
                    .iter()
                    .filter(|p| p.leader == broker.node_id)
                    .count();
                let holds = partitions
                    .iter()
                    .filter(|p| p.replicas.contains(&broker.node_id))
                    .count();
                writeln!(
                    out,
                    "{}\t{}\t{}:{}\t{}:{}\t{}\t{}\t{}",
                    broker.node_id,
                    if broker.fenced { "fenced" } else { "live" },
                    broker.host,
                    broker.native_port,
                    broker.host,
                    broker.kafka_port,
                    broker.shards,
                    leads,
                    holds
                )?;
            }
            let under = partitions
                .iter()
                .filter(|p| p.isr.len() < p.replicas.len())
                .count();
            let offline = partitions.iter().filter(|p| p.leader < 0).count();
            writeln!(
                out,
                "partitions {}\tunder-replicated {under}\twithout a leader {offline}",
                partitions.len()
            )?;
        }
    }
    Ok(())
}

pub async fn partition(brokers: String, command: PartitionCommand) -> anyhow::Result<()> {
    let client = connect(&brokers).await?;
    match command {
        PartitionCommand::Move {
            topic,
            partition,
            replicas,
        } => {
            client.move_partition(&topic, partition, &replicas).await?;
            println!("moving {topic}-{partition} to brokers {}", ids(&replicas));
        }
    }
    Ok(())
}

pub fn log(command: LogCommand) -> anyhow::Result<()> {
    let LogCommand::Dump { dir } = command;
    let mut segments: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "segment\tbase\tlast\tleader_epoch\tproducer\tproducer_epoch\tbase_sequence\trecords\tcrc"
    )?;
    for segment in segments {
        let bytes = std::fs::read(&segment)?;
        let name = segment
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let (mut at, mut next_offset) = (0, i64::MIN);
        while let Ok(header) = weir_wire::BatchHeader::parse(&bytes[at.min(bytes.len())..]) {
            let total = header.total_bytes();
            // An active segment in a recycled file is followed by an older segment's
            // batches, whose offsets go back: the data ends there, as recovery sees it.
            if at + total > bytes.len() || header.base_offset < next_offset {
                break;
            }
            next_offset = header.next_offset();
            writeln!(
                out,
                "{name}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:08x}",
                header.base_offset,
                header.last_offset(),
                header.partition_leader_epoch,
                header.producer_id,
                header.producer_epoch,
                header.base_sequence,
                header.records_count,
                header.crc
            )?;
            at += total;
        }
    }
    Ok(())
}

/// A config source as `weir topic describe` prints it.
fn source_name(source: ConfigSource) -> &'static str {
    match source {
        ConfigSource::Topic => "topic",
        ConfigSource::Broker => "broker",
        ConfigSource::Default => "default",
        _ => "unknown",
    }
}

pub async fn produce(
    brokers: String,
    args: ProduceArgs,
    lines: Vec<String>,
) -> anyhow::Result<u64> {
    let client = connect(&brokers).await?;
    let acks = match args.acks {
        AcksArg::None => Acks::None,
        AcksArg::Leader => Acks::Leader,
        AcksArg::All => Acks::All,
    };
    let config = ProducerConfig {
        acks,
        linger: Duration::from_millis(args.linger_ms),
        idempotent: args.idempotent,
        transactional_id: args.transactional_id.clone(),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).await?;
    if args.transactional_id.is_some() {
        producer.begin_transaction()?;
    }
    let headers: Vec<(String, Option<Bytes>)> = args
        .headers
        .iter()
        .map(|h| key_value(h).map(|(k, v)| (k, Some(Bytes::from(v)))))
        .collect::<anyhow::Result<_>>()?;
    let mut deliveries = Vec::with_capacity(lines.len());
    for line in lines {
        let (key, value) = match &args.key_separator {
            Some(separator) => match line.split_once(separator.as_str()) {
                Some((key, value)) => (
                    Some(Bytes::from(key.to_string())),
                    Bytes::from(value.to_string()),
                ),
                None => (None, Bytes::from(line)),
            },
            None => (None, Bytes::from(line)),
        };
        let record = ProducerRecord {
            topic: args.topic.clone(),
            partition: args.partition,
            key,
            value: Some(value),
            headers: headers.clone(),
            timestamp: None,
        };
        deliveries.push(producer.send(record).await?);
    }
    producer.flush().await;
    let count = deliveries.len() as u64;
    let mut failure = None;
    for delivery in deliveries {
        if let Err(error) = delivery.wait().await {
            failure.get_or_insert(error);
        }
    }
    if args.transactional_id.is_some() {
        match &failure {
            // Nothing of a transaction with a lost record becomes visible.
            Some(_) => producer.abort_transaction().await?,
            None => producer.commit_transaction().await?,
        }
    }
    producer.close().await;
    if let Some(error) = failure {
        return Err(error.into());
    }
    Ok(count)
}

/// Reads stdin's lines (a producer on glommio must not block on stdin).
pub fn stdin_lines() -> anyhow::Result<Vec<String>> {
    std::io::stdin()
        .lock()
        .lines()
        .collect::<Result<_, _>>()
        .context("reading stdin")
}

fn start_from(from: &str) -> anyhow::Result<StartFrom> {
    Ok(match from {
        "beginning" => StartFrom::Earliest,
        "end" => StartFrom::Latest,
        timestamp if timestamp.starts_with('@') => {
            StartFrom::Timestamp(timestamp[1..].parse().context("--from @TIMESTAMP_MS")?)
        }
        offset => StartFrom::Offset(offset.parse().with_context(|| {
            format!("--from {offset:?}: beginning, end, OFFSET or @TIMESTAMP_MS")
        })?),
    })
}

pub async fn consume(brokers: String, args: ConsumeArgs) -> anyhow::Result<()> {
    let client = connect(&brokers).await?;
    let config = ConsumerConfig {
        group: args.group.clone(),
        start: start_from(&args.from)?,
        read_committed: args.read_committed,
        ..ConsumerConfig::default()
    };
    let mut consumer = match args.partition {
        Some(partition) => {
            Consumer::assign(client.clone(), &[(args.topic.clone(), partition)], config).await?
        }
        None => Consumer::subscribe(client.clone(), &args.topic, config).await?,
    };
    let mut printed = 0u64;
    let mut committed: std::collections::BTreeMap<(String, i32), i64> = Default::default();
    let mut last_record = Instant::now();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    'poll: while args.count.is_none_or(|n| printed < n) {
        let records = consumer.poll().await?;
        if records.is_empty() {
            out.flush()?;
            if args
                .idle_timeout_ms
                .is_some_and(|ms| last_record.elapsed() >= Duration::from_millis(ms))
            {
                break;
            }
            continue;
        }
        last_record = Instant::now();
        for record in records {
            print_record(&mut out, &record, args.format)?;
            committed.insert((record.topic.clone(), record.partition), record.offset + 1);
            printed += 1;
            if args.count.is_some_and(|n| printed >= n) {
                break 'poll;
            }
        }
    }
    out.flush()?;
    if let Some(group) = &args.group {
        let offsets: Vec<(String, i32, i64)> =
            committed.into_iter().map(|((t, p), o)| (t, p, o)).collect();
        client.commit_offsets(group, &offsets).await?;
    }
    Ok(())
}

fn text(bytes: &Option<Bytes>) -> String {
    bytes
        .as_ref()
        .map_or_else(String::new, |b| String::from_utf8_lossy(b).into_owned())
}

fn print_record(
    out: &mut impl Write,
    record: &weir_client::ConsumedRecord,
    format: Format,
) -> std::io::Result<()> {
    match format {
        Format::Value => writeln!(out, "{}", text(&record.value)),
        Format::KeyValue => writeln!(out, "{}\t{}", text(&record.key), text(&record.value)),
        Format::Json => {
            let json = serde_json::json!({
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "timestamp": record.timestamp,
                "key": record.key.as_ref().map(|_| text(&record.key)),
                "value": record.value.as_ref().map(|_| text(&record.value)),
                "headers": record.headers.iter().map(|(k, v)| (k.clone(), text(v))).collect::<std::collections::BTreeMap<_, _>>(),
            });
            writeln!(out, "{json}")
        }
    }
}

pub async fn user(brokers: String, command: UserCommand) -> anyhow::Result<()> {
    use weir_replication::ScramMechanism;
    let mechanism = |name: &str| {
        ScramMechanism::from_name(name)
            .with_context(|| format!("unknown mechanism {name}: SCRAM-SHA-256 or SCRAM-SHA-512"))
    };
    let client = connect(&brokers).await?;
    let mut out = std::io::stdout().lock();
    let check = |results: Vec<(String, weir_client::ClientResult<()>)>| -> anyhow::Result<()> {
        for (user, result) in results {
            result.with_context(|| format!("user {user}"))?;
        }
        Ok(())
    };
    match command {
        UserCommand::Create {
            name,
            password,
            mechanism: mechanisms,
            iterations,
        } => {
            let mut upsertions = Vec::new();
            for m in &mechanisms {
                let m = mechanism(m)?;
                let (salt, salted_password) =
                    crate::security::scram::salt_password(m, &password, iterations)
                        .map_err(|e| anyhow::anyhow!(e))?;
                upsertions.push(weir_client::ScramUpsertion {
                    user: name.clone(),
                    mechanism: m.id(),
                    iterations: iterations as i32,
                    salt,
                    salted_password,
                });
            }
            check(client.alter_scram_credentials(&upsertions, &[]).await?)?;
            writeln!(out, "user {name}: {}", mechanisms.join(","))?;
        }
        UserCommand::Delete {
            name,
            mechanism: only,
        } => {
            let mechanisms = match only {
                Some(m) => vec![mechanism(&m)?],
                None => {
                    let described = client
                        .describe_scram_credentials(std::slice::from_ref(&name))
                        .await?;
                    let (_, credentials) = described
                        .into_iter()
                        .next()
                        .with_context(|| format!("no answer for user {name}"))?;
                    credentials
                        .with_context(|| format!("user {name}"))?
                        .into_iter()
                        .filter_map(|(id, _)| ScramMechanism::from_id(id))
                        .collect()
                }
            };
            let deletions: Vec<(String, i8)> =
                mechanisms.iter().map(|m| (name.clone(), m.id())).collect();
            check(client.alter_scram_credentials(&[], &deletions).await?)?;
            writeln!(out, "user {name} deleted")?;
        }
        UserCommand::List => {
            writeln!(out, "user\tmechanism\titerations")?;
            for (user, credentials) in client.describe_scram_credentials(&[]).await? {
                for (id, iterations) in credentials? {
                    let name = ScramMechanism::from_id(id).map_or("?", |m| m.name());
                    writeln!(out, "{user}\t{name}\t{iterations}")?;
                }
            }
        }
    }
    Ok(())
}

pub async fn quota(brokers: String, command: QuotaCommand) -> anyhow::Result<()> {
    let client = connect(&brokers).await?;
    let mut out = std::io::stdout().lock();
    match command {
        QuotaCommand::Alter {
            entity,
            set,
            remove,
        } => {
            let set = set
                .iter()
                .map(|pair| {
                    let (key, value) = pair
                        .split_once('=')
                        .with_context(|| format!("--set {pair}: KEY=VALUE"))?;
                    let value: f64 = value
                        .parse()
                        .with_context(|| format!("--set {pair}: the value is a number"))?;
                    Ok((key.to_string(), value))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let entity = weir_client::QuotaTarget {
                user: entity.user,
                user_default: entity.default_user,
                client_id: entity.client_id,
                client_id_default: entity.default_client_id,
            };
            let alteration = weir_client::QuotaAlteration {
                entity,
                set,
                remove,
            };
            for result in client.alter_client_quotas(&[alteration]).await? {
                result?;
            }
        }
        QuotaCommand::Describe { user, client_id } => {
            let found = client
                .describe_client_quotas(user.as_deref(), client_id.as_deref())
                .await?;
            for (target, values) in found {
                let part = |name: &Option<String>, default: bool| match (name, default) {
                    (Some(name), _) => Some(name.clone()),
                    (None, true) => Some("<default>".to_string()),
                    (None, false) => None,
                };
                let mut entity = Vec::new();
                if let Some(user) = part(&target.user, target.user_default) {
                    entity.push(format!("user={user}"));
                }
                if let Some(client_id) = part(&target.client_id, target.client_id_default) {
                    entity.push(format!("client-id={client_id}"));
                }
                let values: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
                writeln!(out, "{}\t{}", entity.join(","), values.join(","))?;
            }
        }
    }
    Ok(())
}

/// Kafka's ids of the filter-only values.
const ACL_ANY: i8 = 1;
const ACL_MATCH: i8 = 2;

/// The resource's type id and name (`None` when no resource is named).
fn acl_resource(resource: &AclResource) -> Option<(i8, String)> {
    use weir_replication::AclResourceType as T;
    let named = |t: T, name: &Option<String>| name.clone().map(|n| (t.id(), n));
    named(T::Topic, &resource.topic)
        .or_else(|| named(T::Group, &resource.group))
        .or_else(|| named(T::TransactionalId, &resource.transactional_id))
        .or_else(|| {
            resource.cluster.then(|| {
                let name = crate::security::acl::CLUSTER_RESOURCE.to_string();
                (T::Cluster.id(), name)
            })
        })
}

fn acl_pattern(pattern: AclPatternArg) -> i8 {
    use weir_replication::AclPatternType as P;
    match pattern {
        AclPatternArg::Literal => P::Literal.id(),
        AclPatternArg::Prefixed => P::Prefixed.id(),
        AclPatternArg::Any => ACL_ANY,
        AclPatternArg::Match => ACL_MATCH,
    }
}

fn acl_permission(permission: AclPermissionArg) -> i8 {
    use weir_replication::AclPermission as P;
    match permission {
        AclPermissionArg::Allow => P::Allow.id(),
        AclPermissionArg::Deny => P::Deny.id(),
    }
}

fn acl_operation(name: &str) -> anyhow::Result<i8> {
    weir_replication::AclOperation::from_name(name)
        .map(|o| o.id())
        .with_context(|| format!("unknown operation {name}"))
}

fn acl_filter(args: AclFilterArgs) -> anyhow::Result<weir_client::AclFilter> {
    let (resource_type, resource_name) = match acl_resource(&args.resource) {
        Some((t, name)) => (t, Some(name)),
        None => (ACL_ANY, None),
    };
    Ok(weir_client::AclFilter {
        resource_type,
        resource_name,
        pattern: acl_pattern(args.pattern),
        principal: args.principal,
        host: args.host,
        operation: args
            .operation
            .as_deref()
            .map_or(Ok(ACL_ANY), acl_operation)?,
        permission: args.permission.map_or(ACL_ANY, acl_permission),
    })
}

fn write_acl(out: &mut impl Write, acl: &weir_client::Acl) -> std::io::Result<()> {
    use weir_replication::{AclOperation, AclPatternType, AclPermission, AclResourceType};
    let name = |n: Option<&'static str>| n.unwrap_or("?");
    writeln!(
        out,
        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
        name(AclResourceType::from_id(acl.resource_type).map(|t| t.name())),
        acl.resource_name,
        name(AclPatternType::from_id(acl.pattern).map(|p| p.name())),
        acl.principal,
        acl.host,
        name(AclOperation::from_id(acl.operation).map(|o| o.name())),
        name(AclPermission::from_id(acl.permission).map(|p| p.name())),
    )
}

const ACL_HEADER: &str = "resource\tname\tpattern\tprincipal\thost\toperation\tpermission";

pub async fn acl(brokers: String, command: AclCommand) -> anyhow::Result<()> {
    let client = connect(&brokers).await?;
    let mut out = std::io::stdout().lock();
    match command {
        AclCommand::Create {
            resource,
            pattern,
            principal,
            host,
            operation,
            permission,
        } => {
            let (resource_type, resource_name) = acl_resource(&resource)
                .context("name the resource: --topic, --group, --cluster or --transactional-id")?;
            if matches!(pattern, AclPatternArg::Any | AclPatternArg::Match) {
                bail!("an ACL's pattern is literal or prefixed");
            }
            let acls = operation
                .iter()
                .map(|op| {
                    Ok(weir_client::Acl {
                        resource_type,
                        resource_name: resource_name.clone(),
                        pattern: acl_pattern(pattern),
                        principal: principal.clone(),
                        host: host.clone(),
                        operation: acl_operation(op)?,
                        permission: acl_permission(permission),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            for (acl, result) in acls.iter().zip(client.create_acls(&acls).await?) {
                result.with_context(|| format!("ACL {acl:?}"))?;
                write_acl(&mut out, acl)?;
            }
        }
        AclCommand::List { filter } => {
            let filter = acl_filter(filter)?;
            writeln!(out, "{ACL_HEADER}")?;
            for acl in client.describe_acls(&filter).await? {
                write_acl(&mut out, &acl)?;
            }
        }
        AclCommand::Delete { filter } => {
            let filter = acl_filter(filter)?;
            if filter == weir_client::AclFilter::default() {
                bail!("name what to delete (a resource, --principal, --operation, ...)");
            }
            for result in client.delete_acls(&[filter]).await? {
                for acl in result? {
                    write_acl(&mut out, &acl)?;
                }
            }
        }
    }
    Ok(())
}

pub async fn group(brokers: String, command: GroupCommand) -> anyhow::Result<()> {
    let client = connect(&brokers).await?;
    let mut out = std::io::stdout().lock();
    match command {
        GroupCommand::List => {
            for group in client.list_groups().await? {
                writeln!(out, "{group}")?;
            }
        }
        GroupCommand::Describe { group } => {
            let committed = client.fetch_offsets(&group, None).await?;
            if committed.is_empty() {
                bail!("group {group} has no committed offsets");
            }
            let topics: Vec<String> = committed
                .iter()
                .map(|c| c.topic.clone())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let metadata = client.metadata(Some(&topics)).await?;
            writeln!(out, "topic\tpartition\tcommitted\thigh_watermark\tlag")?;
            for c in &committed {
                let hw = metadata
                    .topics
                    .iter()
                    .find(|t| t.name == c.topic)
                    .and_then(|t| t.partitions.iter().find(|p| p.partition == c.partition))
                    .map_or(-1, |p| p.high_watermark);
                let lag = if hw >= 0 {
                    (hw - c.offset).max(0).to_string()
                } else {
                    "?".into()
                };
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}",
                    c.topic, c.partition, c.offset, hw, lag
                )?;
            }
        }
    }
    Ok(())
}
