//! Topic names and per-topic configuration, with Kafka's names, defaults and rules.
//!
//! A topic's configuration is the broker's defaults (`docs/CONFIG.md`) with the topic's
//! overrides applied: key-value strings kept as given in the metadata log, parsed and
//! checked here every time they are set or used. Every key has one entry in
//! `TOPIC_CONFIG_KEYS`, which parses, prints, types and documents it, so that what
//! DescribeConfigs reports is always a value that can be set back.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use weir_storage::{CleanupPolicy, FlushPolicy, LogConfig};
use weir_wire::{Compression, TimestampType};

/// Kafka's limit: 249 characters, so that `<topic>-<partition>` fits a file name.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Partitions one topic may have.
pub const TOPIC_PARTITIONS_MAX: i32 = 10_000;

/// Checks a topic name as Kafka does: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!(
            "topic name must be 1 to {TOPIC_NAME_BYTES_MAX} characters"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is not allowed"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {name:?} has {bad:?}; allowed are ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Kafka's `compression.type` of a topic: keep the codec each producer chose, or store
/// every batch in one codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionType {
    /// Batches are stored as the producer compressed them (Kafka's default).
    Producer,
    /// Batches are stored in this codec; Kafka calls `Compression::None` `uncompressed`.
    Codec(Compression),
}

impl CompressionType {
    /// Every value, in the order Kafka lists them.
    pub const ALL: [CompressionType; 6] = [
        CompressionType::Codec(Compression::None),
        CompressionType::Codec(Compression::Zstd),
        CompressionType::Codec(Compression::Lz4),
        CompressionType::Codec(Compression::Snappy),
        CompressionType::Codec(Compression::Gzip),
        CompressionType::Producer,
    ];

    /// Kafka's name of the value.
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Producer => "producer",
            CompressionType::Codec(Compression::None) => "uncompressed",
            CompressionType::Codec(codec) => codec.name(),
        }
    }
}

impl fmt::Display for CompressionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CompressionType {
    type Err = ();

    fn from_str(text: &str) -> Result<CompressionType, ()> {
        CompressionType::ALL
            .into_iter()
            .find(|value| value.name() == text)
            .ok_or(())
    }
}

/// Kafka's name of a `message.timestamp.type` value.
pub fn timestamp_type_name(timestamp_type: TimestampType) -> &'static str {
    match timestamp_type {
        TimestampType::CreateTime => "CreateTime",
        TimestampType::LogAppendTime => "LogAppendTime",
    }
}

fn parse_timestamp_type(text: &str) -> Option<TimestampType> {
    [TimestampType::CreateTime, TimestampType::LogAppendTime]
        .into_iter()
        .find(|value| timestamp_type_name(*value) == text)
}

/// A topic's settings: its logs' (storage's) and what the broker applies to the batches
/// produced to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopicConfig {
    pub log: LogConfig,
    /// Replicas that must hold a batch before `acks=all` is answered (Kafka
    /// `min.insync.replicas`, 1).
    pub min_insync_replicas: i32,
    /// The codec batches are stored in (Kafka `compression.type`, `producer`).
    pub compression: CompressionType,
    /// Whose timestamps batches carry (Kafka `message.timestamp.type`, `CreateTime`).
    pub timestamp_type: TimestampType,
    /// Kafka's `flush.messages` and `flush.ms` as set, so that DescribeConfigs reports
    /// them back. The flush policy the log runs (`log.flush`) always follows from them
    /// (`flush_policy_of`); `flush.policy`, weir's own name for it, sets both.
    pub flush_messages: u64,
    pub flush_ms: u64,
}

/// Kafka's `Long.MAX_VALUE`, its default of `flush.messages` and `flush.ms`: no flush by
/// that trigger.
const FLUSH_NEVER: u64 = i64::MAX as u64;

/// What Kafka's two flush triggers ask of weir. Kafka syncs once `flush.messages`
/// records are unflushed (inside the append, before the producer is answered) or once the
/// oldest is `flush.ms` old (in the background). weir syncs by the batch, not by the
/// record, so any count below Kafka's "never" syncs every batch: as durable as asked or
/// more, never less. `flush.ms` 0 means at once, which is every batch too.
fn flush_policy_of(messages: u64, ms: u64) -> FlushPolicy {
    if messages < FLUSH_NEVER || ms == 0 {
        FlushPolicy::EveryBatch
    } else if ms < FLUSH_NEVER {
        FlushPolicy::Interval { interval_ms: ms }
    } else {
        FlushPolicy::Never
    }
}

/// The `flush.messages` and `flush.ms` that mean `policy`.
fn kafka_flush_of(policy: FlushPolicy) -> (u64, u64) {
    match policy {
        FlushPolicy::EveryBatch => (1, FLUSH_NEVER),
        FlushPolicy::Interval { interval_ms } => (FLUSH_NEVER, interval_ms),
        FlushPolicy::Never => (FLUSH_NEVER, FLUSH_NEVER),
    }
}

impl TopicConfig {
    fn set_flush_policy(&mut self, policy: FlushPolicy) {
        // Kafka values that already mean the policy are kept as the user gave them.
        if flush_policy_of(self.flush_messages, self.flush_ms) != policy {
            (self.flush_messages, self.flush_ms) = kafka_flush_of(policy);
        }
        self.log.flush = policy;
    }

    fn set_kafka_flush(&mut self, messages: u64, ms: u64) {
        (self.flush_messages, self.flush_ms) = (messages, ms);
        self.log.flush = flush_policy_of(messages, ms);
    }
}

impl Default for TopicConfig {
    /// Kafka's defaults, and storage's where weir has settings of its own.
    fn default() -> TopicConfig {
        let log = LogConfig::default();
        let (flush_messages, flush_ms) = kafka_flush_of(log.flush);
        TopicConfig {
            log,
            min_insync_replicas: 1,
            compression: CompressionType::Producer,
            timestamp_type: TimestampType::CreateTime,
            flush_messages,
            flush_ms,
        }
    }
}

/// The type of a config's value, with the codes DescribeConfigs reports (Kafka's
/// `ConfigDef.Type` as `DescribeConfigsResponse` numbers it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    Double = 6,
    List = 7,
}

/// Where a config's value comes from, with Kafka's `ConfigSource` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// The topic overrides it (`DYNAMIC_TOPIC_CONFIG`).
    Topic = 1,
    /// The broker's configuration sets a value other than the built-in default
    /// (`STATIC_BROKER_CONFIG`).
    Broker = 4,
    /// The built-in default (`DEFAULT_CONFIG`).
    Default = 5,
}

impl ConfigSource {
    pub fn name(self) -> &'static str {
        match self {
            ConfigSource::Topic => "topic",
            ConfigSource::Broker => "broker",
            ConfigSource::Default => "default",
        }
    }
}

/// One topic config key: its names, type, documentation, and how it is parsed and
/// printed.
pub struct TopicConfigKey {
    /// The topic-level name (Kafka's).
    pub name: &'static str,
    /// The broker-level name of its default, as Kafka names it (and DescribeConfigs
    /// reports it as a synonym).
    pub broker_name: &'static str,
    pub config_type: ConfigType,
    /// What it sets.
    pub documentation: &'static str,
    /// The values accepted, as error messages state them.
    pub allowed: &'static str,
    /// Sets the value, or says what is wrong with it (the caller adds `allowed`).
    set: fn(&mut TopicConfig, &str) -> Result<(), String>,
    /// The value as DescribeConfigs reports it, which `set` accepts.
    get: fn(&TopicConfig) -> String,
}

impl TopicConfigKey {
    /// The value of this key under `config`, in the form `set` accepts.
    pub fn value(&self, config: &TopicConfig) -> String {
        (self.get)(config)
    }
}

impl fmt::Debug for TopicConfigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// A whole number of Kafka type LONG, at least `min`.
fn long(value: &str, min: i64) -> Result<i64, String> {
    let number = value
        .trim()
        .parse::<i64>()
        .map_err(|_| "not a number of type LONG".to_string())?;
    if number < min {
        return Err(format!("Value must be at least {min}"));
    }
    Ok(number)
}

/// A whole number of Kafka type INT (at most 2^31 - 1), at least `min`.
fn int(value: &str, min: i32) -> Result<i32, String> {
    let number = value
        .trim()
        .parse::<i32>()
        .map_err(|_| format!("not a number of type INT (at most {})", i32::MAX))?;
    if number < min {
        return Err(format!("Value must be at least {min}"));
    }
    Ok(number)
}

/// A non-negative LONG as storage keeps it.
fn long_u64(value: &str, min: i64) -> Result<u64, String> {
    debug_assert!(min >= 0);
    Ok(long(value, min)? as u64)
}

/// A non-negative INT as storage keeps it.
fn int_u32(value: &str, min: i32) -> Result<u32, String> {
    debug_assert!(min >= 0);
    Ok(int(value, min)? as u32)
}

/// -1 (or any absent limit) is printed as Kafka does.
fn or_minus_one(value: Option<u64>) -> String {
    value.map_or(-1, |v| v as i64).to_string()
}

const NOT_ALLOWED: &str = "not one of the allowed values";

/// Kafka's smallest `segment.bytes` (`LegacyRecord.RECORD_OVERHEAD_V0`); weir also needs
/// a segment to hold the largest batch (`check`).
const SEGMENT_BYTES_MIN: i32 = 14;

/// Every topic config key, in name order (as DescribeConfigs lists them).
pub const TOPIC_CONFIG_KEYS: &[TopicConfigKey] = &[
    TopicConfigKey {
        name: "cleanup.policy",
        broker_name: "log.cleanup.policy",
        config_type: ConfigType::List,
        documentation: "delete: old segments are deleted by retention.ms and retention.bytes; \
            compact: the latest record of every key is kept",
        allowed: "delete, compact, or compact,delete",
        set: |c, v| {
            c.log.cleanup = v.parse::<CleanupPolicy>().map_err(|_| NOT_ALLOWED)?;
            Ok(())
        },
        get: |c| c.log.cleanup.to_string(),
    },
    TopicConfigKey {
        name: "compression.type",
        broker_name: "compression.type",
        config_type: ConfigType::String,
        documentation: "the codec batches are stored in; producer keeps the producer's",
        allowed: "uncompressed, zstd, lz4, snappy, gzip or producer",
        set: |c, v| {
            c.compression = v.parse().map_err(|()| NOT_ALLOWED)?;
            Ok(())
        },
        get: |c| c.compression.to_string(),
    },
    TopicConfigKey {
        name: "delete.retention.ms",
        broker_name: "log.cleaner.delete.retention.ms",
        config_type: ConfigType::Long,
        documentation: "how long compaction keeps a tombstone (a record with a null value)",
        allowed: "milliseconds, at least 0",
        set: |c, v| {
            c.log.delete_retention_ms = long_u64(v, 0)?;
            Ok(())
        },
        get: |c| c.log.delete_retention_ms.to_string(),
    },
    TopicConfigKey {
        name: "flush.messages",
        broker_name: "log.flush.interval.messages",
        config_type: ConfigType::Long,
        documentation: "Kafka's sync after this many records; weir syncs every batch for \
            any count below 9223372036854775807 (never), so 1 is every-batch",
        allowed: "a count, at least 1 (9223372036854775807: never by count)",
        set: |c, v| {
            c.set_kafka_flush(long_u64(v, 1)?, c.flush_ms);
            Ok(())
        },
        get: |c| c.flush_messages.to_string(),
    },
    TopicConfigKey {
        name: "flush.ms",
        broker_name: "log.flush.interval.ms",
        config_type: ConfigType::Long,
        documentation: "Kafka's sync at most this long after a write: interval(MS) unless \
            flush.messages already syncs every batch; 0 is every batch",
        allowed: "milliseconds, at least 0 (9223372036854775807: never by time)",
        set: |c, v| {
            c.set_kafka_flush(c.flush_messages, long_u64(v, 0)?);
            Ok(())
        },
        get: |c| c.flush_ms.to_string(),
    },
    TopicConfigKey {
        name: "flush.policy",
        broker_name: "log.flush.policy",
        config_type: ConfigType::String,
        documentation: "when appended batches are made durable with fdatasync (weir's own \
            name for what flush.messages and flush.ms set)",
        allowed: "every-batch, interval(MS) with MS > 0, or never",
        set: |c, v| {
            c.set_flush_policy(v.parse::<FlushPolicy>().map_err(|_| NOT_ALLOWED)?);
            Ok(())
        },
        get: |c| c.log.flush.to_string(),
    },
    TopicConfigKey {
        name: "index.interval.bytes",
        broker_name: "log.index.interval.bytes",
        config_type: ConfigType::Int,
        documentation: "bytes between sparse index entries",
        allowed: "bytes, at least 1",
        set: |c, v| {
            c.log.index_interval_bytes = int_u32(v, 1)?;
            Ok(())
        },
        get: |c| c.log.index_interval_bytes.to_string(),
    },
    TopicConfigKey {
        name: "max.compaction.lag.ms",
        broker_name: "log.cleaner.max.compaction.lag.ms",
        config_type: ConfigType::Long,
        documentation: "the longest a record stays uncompacted",
        allowed: "milliseconds, at least 1 and at least min.compaction.lag.ms",
        set: |c, v| {
            c.log.max_compaction_lag_ms = long_u64(v, 1)?;
            Ok(())
        },
        get: |c| c.log.max_compaction_lag_ms.to_string(),
    },
    TopicConfigKey {
        name: "max.message.bytes",
        broker_name: "message.max.bytes",
        config_type: ConfigType::Int,
        documentation: "the largest record batch accepted",
        allowed: "bytes, at least 61 (a batch header) and at most segment.bytes",
        set: |c, v| {
            c.log.batch_bytes_max = int_u32(v, weir_wire::batch::BATCH_HEADER_BYTES as i32)?;
            Ok(())
        },
        get: |c| c.log.batch_bytes_max.to_string(),
    },
    TopicConfigKey {
        name: "message.timestamp.type",
        broker_name: "log.message.timestamp.type",
        config_type: ConfigType::String,
        documentation: "CreateTime keeps the producer's timestamps; LogAppendTime stamps \
            each batch with the broker's time",
        allowed: "CreateTime or LogAppendTime",
        set: |c, v| {
            c.timestamp_type = parse_timestamp_type(v).ok_or(NOT_ALLOWED)?;
            Ok(())
        },
        get: |c| timestamp_type_name(c.timestamp_type).to_string(),
    },
    TopicConfigKey {
        name: "min.cleanable.dirty.ratio",
        broker_name: "log.cleaner.min.cleanable.ratio",
        config_type: ConfigType::Double,
        documentation: "compact a log once this share of it is uncompacted",
        allowed: "a number from 0 to 1",
        set: |c, v| {
            let ratio = v
                .trim()
                .parse::<f64>()
                .map_err(|_| "not a number of type DOUBLE")?;
            if !(0.0..=1.0).contains(&ratio) {
                return Err("Value must be from 0 to 1".into());
            }
            c.log.min_cleanable_dirty_ratio = ratio;
            Ok(())
        },
        // Debug prints 1.0 where Display prints 1, as Java's Double.toString does.
        get: |c| format!("{:?}", c.log.min_cleanable_dirty_ratio),
    },
    TopicConfigKey {
        name: "min.compaction.lag.ms",
        broker_name: "log.cleaner.min.compaction.lag.ms",
        config_type: ConfigType::Long,
        documentation: "the shortest a record stays uncompacted",
        allowed: "milliseconds, at least 0 and at most max.compaction.lag.ms",
        set: |c, v| {
            c.log.min_compaction_lag_ms = long_u64(v, 0)?;
            Ok(())
        },
        get: |c| c.log.min_compaction_lag_ms.to_string(),
    },
    TopicConfigKey {
        name: "min.insync.replicas",
        broker_name: "min.insync.replicas",
        config_type: ConfigType::Int,
        documentation: "replicas that must hold a batch before acks=all is answered",
        allowed: "at least 1",
        set: |c, v| {
            c.min_insync_replicas = int(v, 1)?;
            Ok(())
        },
        get: |c| c.min_insync_replicas.to_string(),
    },
    TopicConfigKey {
        name: "retention.bytes",
        broker_name: "log.retention.bytes",
        config_type: ConfigType::Long,
        documentation: "delete the oldest sealed segments while a partition is larger; \
            -1 is no limit",
        allowed: "bytes, at least -1 (-1: no limit)",
        set: |c, v| {
            c.log.retention_bytes = u64::try_from(long(v, -1)?).ok();
            Ok(())
        },
        get: |c| or_minus_one(c.log.retention_bytes),
    },
    TopicConfigKey {
        name: "retention.ms",
        broker_name: "log.retention.ms",
        config_type: ConfigType::Long,
        documentation: "delete sealed segments whose newest record is older; -1 keeps them",
        allowed: "milliseconds, at least -1 (-1: keep forever)",
        set: |c, v| {
            c.log.retention_ms = u64::try_from(long(v, -1)?).ok();
            Ok(())
        },
        get: |c| or_minus_one(c.log.retention_ms),
    },
    TopicConfigKey {
        name: "segment.bytes",
        broker_name: "log.segment.bytes",
        config_type: ConfigType::Int,
        documentation: "roll a segment before it grows past this",
        allowed: "bytes, at least max.message.bytes and at most 2147483647",
        set: |c, v| {
            c.log.segment_bytes = u64::from(int_u32(v, SEGMENT_BYTES_MIN)?);
            Ok(())
        },
        get: |c| c.log.segment_bytes.to_string(),
    },
    TopicConfigKey {
        name: "segment.ms",
        broker_name: "log.roll.ms",
        config_type: ConfigType::Long,
        documentation: "roll a segment older than this at the next append",
        allowed: "milliseconds, at least 1",
        set: |c, v| {
            c.log.segment_ms = long_u64(v, 1)?;
            Ok(())
        },
        get: |c| c.log.segment_ms.to_string(),
    },
];

/// The key named `name`, or Kafka's answer to an unknown one, with the known ones.
pub fn config_key(name: &str) -> Result<&'static TopicConfigKey, String> {
    TOPIC_CONFIG_KEYS
        .iter()
        .find(|key| key.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = TOPIC_CONFIG_KEYS.iter().map(|key| key.name).collect();
            format!(
                "Unknown topic config name: {name}; known are {}",
                known.join(", ")
            )
        })
}

/// Sets one key of `config` from its text, or says what is wrong and what is allowed.
pub fn set_config(config: &mut TopicConfig, name: &str, value: &str) -> Result<(), String> {
    let key = config_key(name)?;
    (key.set)(config, value).map_err(|reason| {
        format!(
            "Invalid value {value} for configuration {name}: {reason}; allowed: {}",
            key.allowed
        )
    })
}

/// Checks the relations between a topic's settings.
pub fn check(config: &TopicConfig) -> Result<(), String> {
    let log = &config.log;
    if log.segment_bytes < u64::from(log.batch_bytes_max) {
        return Err(format!(
            "segment.bytes {} is smaller than max.message.bytes {}: the largest batch must \
             fit in a segment",
            log.segment_bytes, log.batch_bytes_max
        ));
    }
    if log.min_compaction_lag_ms > log.max_compaction_lag_ms {
        return Err(format!(
            "min.compaction.lag.ms {} is larger than max.compaction.lag.ms {}",
            log.min_compaction_lag_ms, log.max_compaction_lag_ms
        ));
    }
    // Storage's own checks, as a second line: the ones above say it in Kafka's names.
    log.validate().map_err(|e| e.to_string())
}

/// A topic's settings: the broker's defaults with the topic's overrides applied, checked.
pub fn topic_config(
    defaults: &TopicConfig,
    overrides: &BTreeMap<String, String>,
) -> Result<TopicConfig, String> {
    let mut config = *defaults;
    for (name, value) in overrides {
        set_config(&mut config, name, value)?;
    }
    check(&config)?;
    check_flush_overrides(defaults, overrides, &config)?;
    Ok(config)
}

/// `flush.policy` beside `flush.messages` or `flush.ms` must say the same thing (as all
/// three do when DescribeConfigs' values are set back); otherwise which one wins would
/// depend on the order they are applied in.
fn check_flush_overrides(
    defaults: &TopicConfig,
    overrides: &BTreeMap<String, String>,
    config: &TopicConfig,
) -> Result<(), String> {
    let Some(policy) = overrides.get("flush.policy") else {
        return Ok(());
    };
    let kafka_keys = &FLUSH_KEYS[..2];
    if !kafka_keys.iter().any(|name| overrides.contains_key(*name)) {
        return Ok(());
    }
    let mut kafka = *defaults;
    for &name in kafka_keys {
        if let Some(value) = overrides.get(name) {
            set_config(&mut kafka, name, value)?;
        }
    }
    if kafka.log.flush == config.log.flush {
        return Ok(());
    }
    Err(format!(
        "flush.policy {policy} disagrees with flush.messages {} and flush.ms {}, which mean \
         {}: set either flush.policy or flush.messages and flush.ms",
        kafka.flush_messages, kafka.flush_ms, kafka.log.flush
    ))
}

/// The log settings of a topic (its `topic_config`'s), checking every override.
pub fn log_config(
    defaults: &TopicConfig,
    overrides: &BTreeMap<String, String>,
) -> Result<LogConfig, String> {
    topic_config(defaults, overrides).map(|config| config.log)
}

/// The three names of the flush policy: setting one sets what the others report.
const FLUSH_KEYS: [&str; 3] = ["flush.messages", "flush.ms", "flush.policy"];

/// Whether the topic sets `key`'s value, itself or through a name that shares it.
fn is_overridden(key: &TopicConfigKey, overrides: &BTreeMap<String, String>) -> bool {
    if FLUSH_KEYS.contains(&key.name) {
        FLUSH_KEYS.iter().any(|name| overrides.contains_key(*name))
    } else {
        overrides.contains_key(key.name)
    }
}

/// One config of a topic as DescribeConfigs reports it.
#[derive(Debug, Clone)]
pub struct DescribedConfig {
    pub key: &'static TopicConfigKey,
    pub value: String,
    pub source: ConfigSource,
    /// Each level that gives the key a value, highest precedence first (the first is the
    /// entry itself): the topic's override, the broker's setting, the built-in default.
    pub synonyms: Vec<Synonym>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synonym {
    pub name: &'static str,
    pub value: String,
    pub source: ConfigSource,
}

/// Every config of a topic with its value and where that comes from, in key order.
/// `defaults` are the broker's, which come from its configuration where that sets them.
pub fn describe(
    defaults: &TopicConfig,
    overrides: &BTreeMap<String, String>,
) -> Result<Vec<DescribedConfig>, String> {
    let config = topic_config(defaults, overrides)?;
    let built_in = TopicConfig::default();
    let described = TOPIC_CONFIG_KEYS
        .iter()
        .map(|key| {
            let value = key.value(&config);
            let broker = key.value(defaults);
            let default = key.value(&built_in);
            let mut synonyms = Vec::with_capacity(3);
            if is_overridden(key, overrides) {
                synonyms.push(Synonym {
                    name: key.name,
                    value: value.clone(),
                    source: ConfigSource::Topic,
                });
            }
            if broker != default {
                synonyms.push(Synonym {
                    name: key.broker_name,
                    value: broker,
                    source: ConfigSource::Broker,
                });
            }
            synonyms.push(Synonym {
                name: key.broker_name,
                value: default,
                source: ConfigSource::Default,
            });
            DescribedConfig {
                key,
                value,
                source: synonyms[0].source,
                synonyms,
            }
        })
        .collect();
    Ok(described)
}

/// The topic's overrides as DescribeConfigs reports them (normalized: `compact, delete`
/// becomes `compact,delete`, `010` becomes `10`).
pub fn described_overrides(
    defaults: &TopicConfig,
    overrides: &BTreeMap<String, String>,
) -> Result<Vec<(&'static str, String)>, String> {
    Ok(describe(defaults, overrides)?
        .into_iter()
        .filter(|config| config.source == ConfigSource::Topic)
        .map(|config| (config.key.name, config.value))
        .collect())
}

/// One change to a topic's overrides (Kafka's IncrementalAlterConfigs operations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigChange<'a> {
    /// Override the key with this value.
    Set(&'a str),
    /// Remove the override: the broker's default applies again.
    Delete,
    /// Add the comma-separated items missing from a list key's current value.
    Append(&'a str),
    /// Remove the comma-separated items from a list key's current value.
    Subtract(&'a str),
}

fn list_items(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// Applies `change` to the key `name` of a topic's overrides. A list's current value is
/// its override, else the broker's default. The result is not checked here: the caller
/// checks the whole set (`topic_config`).
pub fn change_overrides(
    overrides: &mut BTreeMap<String, String>,
    defaults: &TopicConfig,
    name: &str,
    change: ConfigChange<'_>,
) -> Result<(), String> {
    let key = config_key(name)?;
    let (items, append) = match change {
        ConfigChange::Set(value) => {
            overrides.insert(name.to_string(), value.to_string());
            return Ok(());
        }
        ConfigChange::Delete => {
            overrides.remove(name);
            return Ok(());
        }
        ConfigChange::Append(items) => (items, true),
        ConfigChange::Subtract(items) => (items, false),
    };
    if key.config_type != ConfigType::List {
        let lists: Vec<&str> = TOPIC_CONFIG_KEYS
            .iter()
            .filter(|key| key.config_type == ConfigType::List)
            .map(|key| key.name)
            .collect();
        return Err(format!(
            "{name} is not a list: APPEND and SUBTRACT apply only to {}",
            lists.join(", ")
        ));
    }
    let current = overrides
        .get(name)
        .cloned()
        .unwrap_or_else(|| key.value(defaults));
    let mut list: Vec<&str> = list_items(&current).collect();
    for item in list_items(items) {
        if append && !list.contains(&item) {
            list.push(item);
        } else if !append {
            list.retain(|i| *i != item);
        }
    }
    let value = list.join(",");
    overrides.insert(name.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A broker whose configuration changes some defaults.
    fn broker_defaults() -> TopicConfig {
        let mut defaults = TopicConfig::default();
        for (key, value) in [
            ("retention.ms", "3600000"),
            ("cleanup.policy", "compact"),
            ("compression.type", "lz4"),
            ("min.cleanable.dirty.ratio", "0.25"),
        ] {
            set_config(&mut defaults, key, value).unwrap();
        }
        defaults
    }

    /// What DescribeConfigs reports can be set back unchanged, whatever the defaults.
    #[test]
    fn described_values_are_valid_overrides() {
        for defaults in [TopicConfig::default(), broker_defaults()] {
            let values: BTreeMap<String, String> = describe(&defaults, &BTreeMap::new())
                .unwrap()
                .into_iter()
                .map(|c| (c.key.name.to_string(), c.value))
                .collect();
            assert_eq!(values.len(), TOPIC_CONFIG_KEYS.len());
            assert_eq!(topic_config(&defaults, &values), Ok(defaults));
            assert_eq!(topic_config(&TopicConfig::default(), &values), Ok(defaults));
        }
    }

    #[test]
    fn keys_are_in_name_order_and_unique() {
        let names: Vec<&str> = TOPIC_CONFIG_KEYS.iter().map(|k| k.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        for good in ["orders", "a.b_c-D9", &"x".repeat(249)] {
            assert!(validate_topic_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "has space",
            "slash/name",
            "ünïcode",
            &"x".repeat(250),
        ] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }

    /// Each valid value sets the field it names; each prints back as given.
    #[test]
    fn valid_overrides_apply() {
        type Case = (&'static str, &'static str, fn(&TopicConfig) -> bool);
        let cases: &[Case] = &[
            ("cleanup.policy", "compact", |c| {
                c.log.cleanup == CleanupPolicy::COMPACT
            }),
            ("cleanup.policy", "delete", |c| {
                c.log.cleanup == CleanupPolicy::DELETE
            }),
            ("cleanup.policy", "compact,delete", |c| {
                c.log.cleanup.compact && c.log.cleanup.delete
            }),
            ("compression.type", "producer", |c| {
                c.compression == CompressionType::Producer
            }),
            ("compression.type", "uncompressed", |c| {
                c.compression == CompressionType::Codec(Compression::None)
            }),
            ("compression.type", "zstd", |c| {
                c.compression == CompressionType::Codec(Compression::Zstd)
            }),
            ("compression.type", "lz4", |c| {
                c.compression == CompressionType::Codec(Compression::Lz4)
            }),
            ("compression.type", "snappy", |c| {
                c.compression == CompressionType::Codec(Compression::Snappy)
            }),
            ("compression.type", "gzip", |c| {
                c.compression == CompressionType::Codec(Compression::Gzip)
            }),
            ("delete.retention.ms", "0", |c| {
                c.log.delete_retention_ms == 0
            }),
            ("flush.messages", "1", |c| {
                c.log.flush == FlushPolicy::EveryBatch
            }),
            ("flush.messages", "9223372036854775807", |c| {
                c.log.flush == FlushPolicy::Never
            }),
            ("flush.ms", "0", |c| c.log.flush == FlushPolicy::EveryBatch),
            ("flush.policy", "never", |c| {
                c.log.flush == FlushPolicy::Never
            }),
            ("flush.policy", "interval(50)", |c| {
                c.log.flush == FlushPolicy::Interval { interval_ms: 50 }
            }),
            ("index.interval.bytes", "1", |c| {
                c.log.index_interval_bytes == 1
            }),
            ("max.compaction.lag.ms", "1", |c| {
                c.log.max_compaction_lag_ms == 1
            }),
            ("max.message.bytes", "61", |c| c.log.batch_bytes_max == 61),
            ("message.timestamp.type", "LogAppendTime", |c| {
                c.timestamp_type == TimestampType::LogAppendTime
            }),
            ("message.timestamp.type", "CreateTime", |c| {
                c.timestamp_type == TimestampType::CreateTime
            }),
            ("min.cleanable.dirty.ratio", "0.0", |c| {
                c.log.min_cleanable_dirty_ratio == 0.0
            }),
            ("min.cleanable.dirty.ratio", "1.0", |c| {
                c.log.min_cleanable_dirty_ratio == 1.0
            }),
            ("min.compaction.lag.ms", "60000", |c| {
                c.log.min_compaction_lag_ms == 60_000
            }),
            ("min.insync.replicas", "2", |c| c.min_insync_replicas == 2),
            ("retention.bytes", "-1", |c| c.log.retention_bytes.is_none()),
            ("retention.bytes", "1048576", |c| {
                c.log.retention_bytes == Some(1 << 20)
            }),
            ("retention.ms", "-1", |c| c.log.retention_ms.is_none()),
            ("retention.ms", "0", |c| c.log.retention_ms == Some(0)),
            ("segment.bytes", "2097152", |c| {
                c.log.segment_bytes == 2 << 20
            }),
            ("segment.bytes", "2147483647", |c| {
                c.log.segment_bytes == i32::MAX as u64
            }),
            ("segment.ms", "1", |c| c.log.segment_ms == 1),
        ];
        for (key, value, holds) in cases {
            let config = topic_config(&TopicConfig::default(), &map(&[(key, value)]))
                .unwrap_or_else(|e| panic!("{key}={value}: {e}"));
            assert!(holds(&config), "{key}={value}");
            let printed = config_key(key).unwrap().value(&config);
            assert_eq!(&printed, value, "{key} prints back");
        }
        // Every key has a case.
        for key in TOPIC_CONFIG_KEYS {
            assert!(cases.iter().any(|(k, _, _)| *k == key.name), "{key:?}");
        }
    }

    /// Each invalid value is refused with a message naming the key and what is allowed.
    #[test]
    fn invalid_overrides_are_refused_with_what_is_allowed() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("cleanup.policy", "forever")],
                "delete, compact, or compact,delete",
            ),
            (
                &[("cleanup.policy", "")],
                "delete, compact, or compact,delete",
            ),
            (&[("cleanup.policy", "compact,compact")], "compact,delete"),
            (&[("compression.type", "brotli")], "uncompressed, zstd, lz4"),
            (&[("compression.type", "none")], "gzip or producer"),
            (&[("delete.retention.ms", "-1")], "Value must be at least 0"),
            (&[("flush.policy", "always")], "every-batch, interval(MS)"),
            (&[("flush.messages", "0")], "Value must be at least 1"),
            (&[("flush.ms", "-1")], "Value must be at least 0"),
            (
                &[("flush.policy", "never"), ("flush.ms", "100")],
                "flush.policy never disagrees with flush.messages 1 and flush.ms 100, \
                 which mean every-batch",
            ),
            (&[("index.interval.bytes", "0")], "Value must be at least 1"),
            (
                &[("max.compaction.lag.ms", "0")],
                "Value must be at least 1",
            ),
            (&[("max.message.bytes", "60")], "at least 61"),
            (&[("max.message.bytes", "1e6")], "not a number of type INT"),
            (
                &[("message.timestamp.type", "createtime")],
                "CreateTime or LogAppendTime",
            ),
            (&[("min.cleanable.dirty.ratio", "1.5")], "from 0 to 1"),
            (&[("min.cleanable.dirty.ratio", "-0.1")], "from 0 to 1"),
            (&[("min.cleanable.dirty.ratio", "NaN")], "from 0 to 1"),
            (&[("min.cleanable.dirty.ratio", "half")], "type DOUBLE"),
            (&[("min.compaction.lag.ms", "-5")], "at least 0"),
            (&[("min.insync.replicas", "0")], "Value must be at least 1"),
            (&[("min.insync.replicas", "two")], "type INT"),
            (&[("retention.bytes", "-2")], "at least -1"),
            (&[("retention.ms", "-2")], "at least -1 (-1: keep forever)"),
            (&[("retention.ms", "1h")], "not a number of type LONG"),
            (&[("segment.bytes", "0")], "Value must be at least 14"),
            (&[("segment.bytes", "2147483648")], "at most 2147483647"),
            (
                &[("segment.bytes", "1000")],
                "smaller than max.message.bytes",
            ),
            (&[("segment.ms", "0")], "Value must be at least 1"),
            (
                &[("no.such", "1")],
                "Unknown topic config name: no.such; known are cleanup",
            ),
            (
                &[
                    ("min.compaction.lag.ms", "10"),
                    ("max.compaction.lag.ms", "5"),
                ],
                "larger than max.compaction.lag.ms",
            ),
            (
                &[
                    ("segment.bytes", "1048576"),
                    ("max.message.bytes", "2000000"),
                ],
                "the largest batch must fit in a segment",
            ),
        ];
        for (overrides, expected) in cases {
            let error = topic_config(&TopicConfig::default(), &map(overrides))
                .expect_err(&format!("{overrides:?} was accepted"));
            assert!(error.contains(expected), "{overrides:?}: {error}");
            if let [(key, value)] = overrides
                && *key != "no.such"
                && !error.contains("smaller")
            {
                let prefix = format!("Invalid value {value} for configuration {key}: ");
                assert!(error.starts_with(&prefix), "{error}");
            }
        }
    }

    /// Kafka's two flush triggers decide weir's flush policy together, whichever level
    /// sets each; flush.policy sets both, and beside them must agree with them.
    #[test]
    fn kafka_flush_settings_decide_the_flush_policy() {
        const NEVER: &str = "9223372036854775807";
        let mut kafka_defaults = TopicConfig::default();
        set_config(&mut kafka_defaults, "flush.policy", "never").unwrap();
        type Case<'a> = (&'a TopicConfig, &'a [(&'a str, &'a str)], FlushPolicy);
        let cases: &[Case] = &[
            // weir's default syncs every batch: flush.messages 1.
            (&TopicConfig::default(), &[], FlushPolicy::EveryBatch),
            (
                &TopicConfig::default(),
                &[("flush.ms", "1000")],
                FlushPolicy::EveryBatch,
            ),
            (
                &TopicConfig::default(),
                &[("flush.messages", NEVER), ("flush.ms", "1000")],
                FlushPolicy::Interval { interval_ms: 1000 },
            ),
            // A broker with Kafka's defaults (never): flush.ms alone is an interval.
            (
                &kafka_defaults,
                &[("flush.ms", "1000")],
                FlushPolicy::Interval { interval_ms: 1000 },
            ),
            (
                &kafka_defaults,
                &[("flush.messages", "10000")],
                FlushPolicy::EveryBatch,
            ),
            (
                &kafka_defaults,
                &[("flush.ms", "0")],
                FlushPolicy::EveryBatch,
            ),
            (&kafka_defaults, &[("flush.ms", NEVER)], FlushPolicy::Never),
            // Agreeing names together; the Kafka values are kept as given.
            (
                &TopicConfig::default(),
                &[("flush.policy", "every-batch"), ("flush.messages", "500")],
                FlushPolicy::EveryBatch,
            ),
            (
                &kafka_defaults,
                &[("flush.policy", "interval(20)"), ("flush.ms", "20")],
                FlushPolicy::Interval { interval_ms: 20 },
            ),
        ];
        for (defaults, overrides, policy) in cases {
            let config = topic_config(defaults, &map(overrides))
                .unwrap_or_else(|e| panic!("{overrides:?}: {e}"));
            assert_eq!(config.log.flush, *policy, "{overrides:?}");
            for (name, value) in *overrides {
                assert_eq!(&config_key(name).unwrap().value(&config), value, "{name}");
            }
        }
        // Each of the three names reports the topic as its source when any is set.
        let described = describe(&kafka_defaults, &map(&[("flush.ms", "20")])).unwrap();
        for name in FLUSH_KEYS {
            let config = described.iter().find(|c| c.key.name == name).unwrap();
            assert_eq!(config.source, ConfigSource::Topic, "{name}");
        }
        // flush.policy prints as the Kafka pair it sets.
        let config =
            topic_config(&kafka_defaults, &map(&[("flush.policy", "interval(20)")])).unwrap();
        let value = |name| config_key(name).unwrap().value(&config);
        assert_eq!(
            (value("flush.messages"), value("flush.ms")),
            (NEVER.into(), "20".into())
        );
    }

    /// A value's source is the topic where it overrides, the broker where the broker's
    /// configuration differs from the built-in default, else the default; the synonyms
    /// list every level that sets it.
    #[test]
    fn sources_and_synonyms() {
        let defaults = broker_defaults();
        let overrides = map(&[("retention.ms", "1000"), ("segment.ms", "60000")]);
        let described = describe(&defaults, &overrides).unwrap();
        let find = |name: &str| described.iter().find(|c| c.key.name == name).unwrap();
        let synonyms = |name: &str| {
            find(name)
                .synonyms
                .iter()
                .map(|s| (s.name, s.value.as_str(), s.source))
                .collect::<Vec<_>>()
        };
        use ConfigSource::{Broker, Default, Topic};
        type Level = (&'static str, &'static str, ConfigSource);
        type Case = (&'static str, &'static str, ConfigSource, &'static [Level]);
        let cases: &[Case] = &[
            (
                "retention.ms",
                "1000",
                Topic,
                &[
                    ("retention.ms", "1000", Topic),
                    ("log.retention.ms", "3600000", Broker),
                    ("log.retention.ms", "604800000", Default),
                ],
            ),
            (
                "segment.ms",
                "60000",
                Topic,
                &[
                    ("segment.ms", "60000", Topic),
                    ("log.roll.ms", "604800000", Default),
                ],
            ),
            (
                "cleanup.policy",
                "compact",
                Broker,
                &[
                    ("log.cleanup.policy", "compact", Broker),
                    ("log.cleanup.policy", "delete", Default),
                ],
            ),
            (
                "compression.type",
                "lz4",
                Broker,
                &[
                    ("compression.type", "lz4", Broker),
                    ("compression.type", "producer", Default),
                ],
            ),
            (
                "min.insync.replicas",
                "1",
                Default,
                &[("min.insync.replicas", "1", Default)],
            ),
            (
                "max.compaction.lag.ms",
                "9223372036854775807",
                Default,
                &[(
                    "log.cleaner.max.compaction.lag.ms",
                    "9223372036854775807",
                    Default,
                )],
            ),
        ];
        for (name, value, source, expected) in cases {
            assert_eq!(
                (find(name).value.as_str(), find(name).source),
                (*value, *source),
                "{name}"
            );
            assert_eq!(synonyms(name), expected.to_vec(), "{name}");
        }
        assert_eq!(
            described_overrides(&defaults, &map(&[("cleanup.policy", "delete, compact")])),
            Ok(vec![("cleanup.policy", "compact,delete".to_string())])
        );
    }

    #[test]
    fn incremental_changes() {
        let defaults = TopicConfig::default();
        type Case<'a> = (
            &'a [(&'a str, ConfigChange<'a>)],
            Result<&'a [(&'a str, &'a str)], &'a str>,
        );
        let cases: &[Case] = &[
            (
                &[("cleanup.policy", ConfigChange::Append("compact"))],
                Ok(&[("cleanup.policy", "delete,compact")]),
            ),
            (
                &[
                    ("cleanup.policy", ConfigChange::Set("compact,delete")),
                    ("cleanup.policy", ConfigChange::Subtract("delete")),
                ],
                Ok(&[("cleanup.policy", "compact")]),
            ),
            (
                &[
                    ("retention.ms", ConfigChange::Set("5")),
                    ("segment.ms", ConfigChange::Set("9")),
                    ("retention.ms", ConfigChange::Delete),
                ],
                Ok(&[("segment.ms", "9")]),
            ),
            (
                &[("retention.ms", ConfigChange::Append("5"))],
                Err("retention.ms is not a list: APPEND and SUBTRACT apply only to cleanup.policy"),
            ),
            (
                &[("no.such", ConfigChange::Delete)],
                Err("Unknown topic config name: no.such"),
            ),
        ];
        for (changes, expected) in cases {
            let mut overrides = BTreeMap::new();
            let result = changes.iter().try_for_each(|(name, change)| {
                change_overrides(&mut overrides, &defaults, name, *change)
            });
            match (result, expected) {
                (Ok(()), Ok(pairs)) => assert_eq!(overrides, map(pairs), "{changes:?}"),
                (Err(error), Err(fragment)) => {
                    assert!(error.contains(fragment), "{changes:?}: {error}")
                }
                (result, _) => panic!("{changes:?}: {result:?}"),
            }
        }
    }
}
