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
pub enum GroupCommand {
    /// List groups with committed offsets.
    List,
    /// Show a group's committed offsets and lag.
    Describe { group: String },
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
    let client = Client::connect(&brokers).await?;
    let mut out = std::io::stdout().lock();
    match command {
        TopicCommand::Create {
            name,
            partitions,
            configs,
        } => {
            let configs = configs
                .iter()
                .map(|c| key_value(c))
                .collect::<anyhow::Result<Vec<_>>>()?;
            client
                .create_topic(&name, partitions.unwrap_or(0), &configs)
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
                "partition\tleader\tshard\tlog_start\thigh_watermark\tbytes"
            )?;
            for p in &topic.partitions {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    p.partition,
                    p.leader,
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
    let client = Client::connect(&brokers).await?;
    let acks = match args.acks {
        AcksArg::None => Acks::None,
        AcksArg::Leader => Acks::Leader,
        AcksArg::All => Acks::All,
    };
    let config = ProducerConfig {
        acks,
        linger: Duration::from_millis(args.linger_ms),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config);
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
    for delivery in deliveries {
        delivery.wait().await?;
    }
    producer.close().await;
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
    let client = Client::connect(&brokers).await?;
    let config = ConsumerConfig {
        group: args.group.clone(),
        start: start_from(&args.from)?,
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

pub async fn group(brokers: String, command: GroupCommand) -> anyhow::Result<()> {
    let client = Client::connect(&brokers).await?;
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
