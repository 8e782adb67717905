//! The broker's settings: defaults, then a TOML file, then `WEIR_*` environment
//! variables, then command-line flags, each overriding the one before. An unknown key in
//! any of them is an error, so that a misspelt setting (say, a flush policy) is never
//! silently ignored. Every key is documented with its default in `docs/CONFIG.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weir_storage::{LogConfig, ShardStorageConfig};

use crate::security::limits::LimitSettings;
use crate::security::tls::{ClientAuth, TlsSettings};
use crate::security::{Listener, ListenerKind, SecurityProtocol};
use crate::topic::{self, TopicConfig};

/// Prefix of the environment variables that set configuration keys.
pub const ENV_PREFIX: &str = "WEIR_";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Where partitions and metadata are stored.
    pub data_dir: PathBuf,
    /// This broker's id (a single node is node 0).
    pub node_id: i32,
    /// The native addresses (`HOST:PORT`) of the brokers the cluster is formed with, in
    /// node-id order from node 0, or as `ID@HOST:PORT`; they are the controller quorum's
    /// voters. Empty: this broker alone is the cluster.
    pub cluster: Vec<String>,
    /// Period of the controller quorum's Raft tick.
    pub raft_tick_ms: u64,
    /// Raft ticks without a leader before a voter campaigns (randomized up to twice this).
    pub raft_election_ticks: usize,
    /// Raft ticks between a leader's heartbeats.
    pub raft_heartbeat_ticks: usize,
    /// How often a broker tells the controller it is alive.
    pub broker_heartbeat_interval_ms: u64,
    /// A broker not heard from for this long is fenced: it leads nothing and leaves every
    /// ISR (Kafka's `broker.session.timeout.ms`).
    pub broker_session_timeout_ms: u64,
    /// A follower that has not caught up for this long leaves the ISR (Kafka's
    /// `replica.lag.time.max.ms`).
    pub replica_lag_time_max_ms: u64,
    /// How long a leader holds a follower's fetch for new records.
    pub replica_fetch_wait_max_ms: u64,
    /// Bytes a follower asks for per fetch.
    pub replica_fetch_max_bytes: usize,
    /// Replicas of topics created without a replication factor (Kafka's
    /// `default.replication.factor`).
    pub default_replication_factor: i16,
    /// Replicas of the committed-offsets topic, at most the initial brokers (Kafka's
    /// `offsets.topic.replication.factor`).
    pub offsets_topic_replication_factor: i16,
    /// Replicas of the transaction-state topic, at most the initial brokers (Kafka's
    /// `transaction.state.log.replication.factor`).
    pub transaction_state_replication_factor: i16,
    /// How often leadership moves back to preferred replicas (0: never; Kafka's
    /// `leader.imbalance.check.interval.seconds`).
    pub leader_imbalance_check_interval_ms: u64,
    /// Metadata log entries between snapshots of the metadata.
    pub metadata_snapshot_entries: u64,
    /// Where the native protocol listens.
    pub native_listen: SocketAddr,
    /// Where the Kafka protocol gateway listens.
    pub kafka_listen: SocketAddr,
    /// Where `/metrics`, `/health` and `/ready` are served.
    pub http_listen: SocketAddr,
    /// The security protocol of `kafka_listen`: PLAINTEXT, SSL, SASL_PLAINTEXT or
    /// SASL_SSL.
    pub kafka_listen_protocol: String,
    /// The security protocol of `native_listen`, likewise. In a cluster, brokers reach
    /// each other on `native_listen` and `kafka_listen`: PLAINTEXT, or SSL with each
    /// broker's certificate as its client certificate.
    pub native_listen_protocol: String,
    /// More Kafka listeners, as `PROTOCOL://HOST:PORT`, one per protocol.
    pub kafka_listeners: Vec<String>,
    /// More native listeners (`PLAINTEXT://` or `SSL://HOST:PORT`).
    pub native_listeners: Vec<String>,
    /// More HTTP listeners (`PLAINTEXT://` or `SSL://HOST:PORT`).
    pub http_listeners: Vec<String>,
    /// PEM files of the certificate chain and private key TLS listeners present.
    pub tls_cert_file: String,
    pub tls_key_file: String,
    /// PEM file of the CAs client certificates must chain to.
    pub tls_client_ca_file: String,
    /// Whether TLS clients present certificates: `none`, `requested` or `required`
    /// (Kafka's `ssl.client.auth`).
    pub tls_client_auth: String,
    /// How often the certificate files are checked for a new certificate (0: never).
    pub tls_reload_interval_ms: u64,
    /// Principals that may change credentials and ACLs (`User:admin`; Kafka's
    /// `super.users`). Empty: anyone may.
    pub super_users: Vec<String>,
    /// Whether every request is checked against the ACLs (Kafka's `authorizer.class.name`
    /// set to its standard authorizer). Off: every request is allowed.
    pub authorizer_enabled: bool,
    /// With the authorizer on, whether a resource no ACL matches is open to everyone
    /// (Kafka's `allow.everyone.if.no.acl.found`).
    pub allow_everyone_if_no_acl_found: bool,
    /// How far ahead of its quota a client may run before it is throttled (a burst of
    /// this many milliseconds' worth of its quota).
    pub quota_burst_ms: u64,
    /// The SASL mechanisms SASL listeners offer (Kafka's `sasl.enabled.mechanisms`).
    pub sasl_enabled_mechanisms: Vec<String>,
    /// How long a failed authentication waits before it is answered (Kafka's
    /// `connection.failed.authentication.delay.ms`).
    pub sasl_failed_authentication_delay_ms: u64,
    /// The largest frame a connection may send before it has authenticated (Kafka's
    /// `sasl.server.max.receive.size`).
    pub sasl_max_receive_bytes: usize,
    /// How long a connection to a SASL listener has to authenticate before it is closed.
    pub sasl_authentication_timeout_ms: u64,
    /// The longest a SASL session lasts before the client must authenticate again on its
    /// connection (Kafka's `connections.max.reauth.ms`; 0: sessions do not end).
    pub connections_max_reauth_ms: u64,
    /// Kafka client connections open at once on this broker (0: no limit; Kafka's
    /// `max.connections`). Native listeners carry the brokers' own traffic: not limited.
    pub max_connections: usize,
    /// Kafka client connections from one address (0: no limit; Kafka's
    /// `max.connections.per.ip`).
    pub max_connections_per_ip: usize,
    /// Other limits for particular addresses, as `ADDRESS=COUNT` (Kafka's
    /// `max.connections.per.ip.overrides`).
    pub max_connections_per_ip_overrides: Vec<String>,
    /// New Kafka client connections taken per second (0: no limit; Kafka's
    /// `max.connection.creation.rate`).
    pub max_connection_creation_rate: u32,
    /// The host clients are told to connect to; empty means the native listen address
    /// (or 127.0.0.1 when that is a wildcard address).
    pub advertised_host: String,
    /// Shards (one executor per core); 0 means every core.
    pub cores: usize,
    /// CPUs to pin shards to, in shard order; empty means CPUs 0, 1, ...
    pub cpus: Vec<usize>,
    /// The largest frame a client may send (Kafka's `socket.request.max.bytes`).
    pub frame_bytes_max: usize,
    /// Bytes of requests and fetch responses a shard holds at once; beyond it, the shard
    /// stops reading sockets until responses are written (backpressure).
    pub shard_memory_bytes: usize,
    /// The most record bytes one fetch response carries, whatever the client asks
    /// (Kafka's broker-side `fetch.max.bytes`); a response reserves this much of the
    /// shard's memory while it reads.
    pub fetch_bytes_max: usize,
    /// Requests one connection may have in flight.
    pub connection_requests_max: usize,
    /// Connections one shard accepts at once.
    pub shard_connections_max: usize,
    /// Byte budget of each shard's cache of recent batches.
    pub cache_bytes: u64,
    /// Sealed segments each shard keeps open.
    pub open_segments_max: usize,
    /// Logs of each shard that keep a read-ahead window between reads.
    pub readahead_windows_max: usize,
    /// Partitions of a topic created without a count.
    pub default_partitions: i32,
    /// Whether a Kafka client's metadata request for a missing topic creates it (Kafka's
    /// `auto.create.topics.enable`).
    pub auto_create_topics_enable: bool,
    /// Partitions of a topic created that way.
    pub auto_create_topics_partitions: i32,
    /// Partitions of the internal topic holding committed offsets (fixed at creation).
    pub offsets_topic_partitions: i32,
    /// Partitions of the internal topic holding transaction state (fixed at creation;
    /// Kafka's `transaction.state.log.num.partitions`).
    pub transaction_state_partitions: i32,
    /// The longest transaction timeout a producer may ask for (Kafka's
    /// `transaction.max.timeout.ms`).
    pub transaction_max_timeout_ms: u64,
    /// How long the first rebalance of an empty group waits for more members (Kafka's
    /// `group.initial.rebalance.delay.ms`).
    pub group_initial_rebalance_delay_ms: u64,
    /// Bounds on a group member's session timeout (Kafka's `group.min.session.timeout.ms`
    /// and `group.max.session.timeout.ms`).
    pub group_min_session_timeout_ms: u64,
    pub group_max_session_timeout_ms: u64,
    /// Period of each shard's background tick (write-behind, interval syncs, shutdown).
    pub tick_ms: u64,
    /// Period of retention checks (Kafka's `log.retention.check.interval.ms`).
    pub retention_check_ms: u64,
    /// How long a shard's compaction waits, once no log needs a pass, before looking
    /// again (Kafka's `log.cleaner.backoff.ms`).
    pub log_cleaner_backoff_ms: u64,
    /// Topic defaults (overridable per topic): see `docs/CONFIG.md`.
    pub log_segment_bytes: u64,
    pub log_segment_ms: u64,
    /// -1 keeps data forever.
    pub log_retention_ms: i64,
    /// -1 means no size limit.
    pub log_retention_bytes: i64,
    /// `every-batch`, `interval(MS)` or `never`.
    pub log_flush: String,
    pub log_index_interval_bytes: u32,
    pub log_batch_bytes_max: u32,
    pub log_preallocate: bool,
    /// Reuse the file of a segment retention deletes as the log's next segment.
    pub log_recycle_segments: bool,
    /// `delete`, `compact` or `compact,delete`.
    pub log_cleanup_policy: String,
    pub log_cleaner_delete_retention_ms: u64,
    pub log_cleaner_min_compaction_lag_ms: u64,
    pub log_cleaner_max_compaction_lag_ms: u64,
    pub log_cleaner_min_cleanable_ratio: f64,
    pub min_insync_replicas: i32,
    /// `uncompressed`, `zstd`, `lz4`, `snappy`, `gzip` or `producer`.
    pub compression_type: String,
    /// `CreateTime` or `LogAppendTime`.
    pub log_message_timestamp_type: String,
    /// Memory of each shard's compaction map (Kafka's `log.cleaner.dedupe.buffer.size`,
    /// which is for all cleaner threads; weir's is per shard).
    pub log_cleaner_dedupe_buffer_size: u64,
    /// The most bytes a second each shard's compaction reads and writes (Kafka's
    /// `log.cleaner.io.max.bytes.per.second`, for all cleaner threads); 0: no limit.
    pub log_cleaner_io_max_bytes_per_second: u64,
    /// The most bytes a second each shard frees of deleted segment files (retention,
    /// compaction, deleted topics); 0: as fast as the disk frees them. The files leave
    /// their names at once.
    pub delete_max_bytes_per_second: u64,
    /// Past this many bytes of deleted files waiting on a shard, it frees them as fast as
    /// the disk does.
    pub delete_backlog_max_bytes: u64,
}

/// The least memory a shard's compaction map may have (Kafka's cleaner refuses less than
/// 1 MiB per thread as well).
pub const COMPACTION_MAP_BYTES_MIN: u64 = 1 << 20;

impl Default for BrokerConfig {
    fn default() -> BrokerConfig {
        let topic = TopicConfig::default();
        let log = topic.log;
        BrokerConfig {
            data_dir: PathBuf::from("./weir-data"),
            node_id: 0,
            cluster: Vec::new(),
            raft_tick_ms: 50,
            raft_election_ticks: 10,
            raft_heartbeat_ticks: 2,
            broker_heartbeat_interval_ms: 250,
            broker_session_timeout_ms: 1_500,
            replica_lag_time_max_ms: 10_000,
            replica_fetch_wait_max_ms: 500,
            replica_fetch_max_bytes: 8 << 20,
            default_replication_factor: 1,
            offsets_topic_replication_factor: 3,
            transaction_state_replication_factor: 3,
            leader_imbalance_check_interval_ms: 30_000,
            metadata_snapshot_entries: 10_000,
            native_listen: SocketAddr::from(([0, 0, 0, 0], 9192)),
            kafka_listen: SocketAddr::from(([0, 0, 0, 0], 9092)),
            http_listen: SocketAddr::from(([0, 0, 0, 0], 9644)),
            kafka_listen_protocol: "PLAINTEXT".into(),
            native_listen_protocol: "PLAINTEXT".into(),
            kafka_listeners: Vec::new(),
            native_listeners: Vec::new(),
            http_listeners: Vec::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_client_ca_file: String::new(),
            tls_client_auth: "none".into(),
            tls_reload_interval_ms: 10_000,
            super_users: Vec::new(),
            authorizer_enabled: false,
            allow_everyone_if_no_acl_found: false,
            quota_burst_ms: 500,
            sasl_enabled_mechanisms: crate::security::sasl::MECHANISMS
                .iter()
                .map(|m| m.to_string())
                .collect(),
            sasl_failed_authentication_delay_ms: 100,
            sasl_max_receive_bytes: 512 << 10,
            sasl_authentication_timeout_ms: 10_000,
            connections_max_reauth_ms: 0,
            max_connections: 0,
            max_connections_per_ip: 0,
            max_connections_per_ip_overrides: Vec::new(),
            max_connection_creation_rate: 0,
            advertised_host: String::new(),
            cores: 0,
            cpus: Vec::new(),
            frame_bytes_max: 100 << 20,
            shard_memory_bytes: 512 << 20,
            fetch_bytes_max: 55 << 20,
            connection_requests_max: 1024,
            shard_connections_max: 10_000,
            cache_bytes: ShardStorageConfig::default().cache_bytes,
            open_segments_max: ShardStorageConfig::default().open_segments_max,
            readahead_windows_max: ShardStorageConfig::default().readahead_windows_max,
            default_partitions: 1,
            auto_create_topics_enable: true,
            auto_create_topics_partitions: 4,
            offsets_topic_partitions: 8,
            transaction_state_partitions: 8,
            transaction_max_timeout_ms: 900_000,
            group_initial_rebalance_delay_ms: 3_000,
            group_min_session_timeout_ms: 6_000,
            group_max_session_timeout_ms: 1_800_000,
            tick_ms: 5,
            retention_check_ms: 300_000,
            log_cleaner_backoff_ms: 15_000,
            log_segment_bytes: log.segment_bytes,
            log_segment_ms: log.segment_ms,
            log_retention_ms: log.retention_ms.map_or(-1, |ms| ms as i64),
            log_retention_bytes: log.retention_bytes.map_or(-1, |bytes| bytes as i64),
            log_flush: log.flush.to_string(),
            log_index_interval_bytes: log.index_interval_bytes,
            log_batch_bytes_max: log.batch_bytes_max,
            log_preallocate: log.preallocate,
            log_recycle_segments: log.recycle_segments,
            log_cleanup_policy: log.cleanup.to_string(),
            log_cleaner_delete_retention_ms: log.delete_retention_ms,
            log_cleaner_min_compaction_lag_ms: log.min_compaction_lag_ms,
            log_cleaner_max_compaction_lag_ms: log.max_compaction_lag_ms,
            log_cleaner_min_cleanable_ratio: log.min_cleanable_dirty_ratio,
            min_insync_replicas: topic.min_insync_replicas,
            compression_type: topic.compression.to_string(),
            log_message_timestamp_type: topic::timestamp_type_name(topic.timestamp_type).into(),
            log_cleaner_dedupe_buffer_size: ShardStorageConfig::default().compaction_map_bytes,
            log_cleaner_io_max_bytes_per_second: ShardStorageConfig::default()
                .compaction_io_bytes_per_second,
            delete_max_bytes_per_second: ShardStorageConfig::default().delete_bytes_per_second,
            delete_backlog_max_bytes: ShardStorageConfig::default().delete_backlog_bytes_max,
        }
    }
}

/// Settings given as command-line flags, which override everything else.
#[derive(Debug, Clone, Default)]
pub struct FlagOverrides {
    pub data_dir: Option<PathBuf>,
    pub node_id: Option<i32>,
    pub cluster: Option<Vec<String>>,
    pub native_listen: Option<SocketAddr>,
    pub kafka_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub cores: Option<usize>,
}

impl BrokerConfig {
    /// Layers the file (if any), the environment and the flags over the defaults, then
    /// validates the result.
    pub fn load(
        file: Option<&Path>,
        environment: impl IntoIterator<Item = (String, String)>,
        flags: &FlagOverrides,
    ) -> anyhow::Result<BrokerConfig> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("reading config file {}: {e}", path.display()))?;
                toml::from_str::<toml::Table>(&text)
                    .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?
            }
            None => toml::Table::new(),
        };
        for (name, value) in environment {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            table.insert(key.to_ascii_lowercase(), env_value(&value));
        }
        let mut config: BrokerConfig = toml::Value::Table(table).try_into().map_err(|e| {
            anyhow::anyhow!("configuration (file, then {ENV_PREFIX}* environment): {e}")
        })?;
        config.apply(flags);
        config.validate()?;
        Ok(config)
    }

    fn apply(&mut self, flags: &FlagOverrides) {
        if let Some(dir) = &flags.data_dir {
            self.data_dir = dir.clone();
        }
        if let Some(node) = flags.node_id {
            self.node_id = node;
        }
        if let Some(cluster) = &flags.cluster {
            self.cluster = cluster.clone();
        }
        if let Some(address) = flags.native_listen {
            self.native_listen = address;
        }
        if let Some(address) = flags.kafka_listen {
            self.kafka_listen = address;
        }
        if let Some(address) = flags.http_listen {
            self.http_listen = address;
        }
        if let Some(cores) = flags.cores {
            self.cores = cores;
        }
    }

    /// Checks every limit and the relations between settings.
    pub fn validate(&self) -> anyhow::Result<()> {
        let available = std::thread::available_parallelism().map_or(1, |n| n.get());
        anyhow::ensure!(
            self.cores <= available,
            "cores = {} but this machine has {available}",
            self.cores
        );
        anyhow::ensure!(
            self.cpus.is_empty() || self.cpus.len() >= self.shard_count(),
            "cpus lists {} CPUs for {} shards",
            self.cpus.len(),
            self.shard_count()
        );
        anyhow::ensure!(
            self.cpus.iter().all(|cpu| *cpu < available),
            "cpus names a CPU this machine lacks"
        );
        anyhow::ensure!(
            self.frame_bytes_max >= 1024,
            "frame_bytes_max must be at least 1024"
        );
        anyhow::ensure!(
            self.shard_memory_bytes >= self.frame_bytes_max,
            "shard_memory_bytes ({}) must hold at least one frame of frame_bytes_max ({})",
            self.shard_memory_bytes,
            self.frame_bytes_max
        );
        anyhow::ensure!(
            self.fetch_bytes_max >= 1024
                && self.shard_memory_bytes >= self.frame_bytes_max + self.fetch_bytes_max,
            "fetch_bytes_max ({}) must be at least 1024, and shard_memory_bytes ({}) must hold \
             a frame of frame_bytes_max ({}) and a fetch response of fetch_bytes_max",
            self.fetch_bytes_max,
            self.shard_memory_bytes,
            self.frame_bytes_max
        );
        anyhow::ensure!(
            self.connection_requests_max > 0,
            "connection_requests_max must be positive"
        );
        anyhow::ensure!(
            self.shard_connections_max > 0,
            "shard_connections_max must be positive"
        );
        anyhow::ensure!(
            self.default_partitions > 0 && self.auto_create_topics_partitions > 0,
            "default_partitions and auto_create_topics_partitions must be positive"
        );
        anyhow::ensure!(
            self.group_min_session_timeout_ms <= self.group_max_session_timeout_ms,
            "group_min_session_timeout_ms must not exceed group_max_session_timeout_ms"
        );
        anyhow::ensure!(
            self.offsets_topic_partitions > 0 && self.transaction_state_partitions > 0,
            "offsets_topic_partitions and transaction_state_partitions must be positive"
        );
        anyhow::ensure!(
            (1..=i32::MAX as u64).contains(&self.transaction_max_timeout_ms),
            "transaction_max_timeout_ms must be within 1..={}",
            i32::MAX
        );
        anyhow::ensure!(
            self.tick_ms > 0 && self.tick_ms <= 1000,
            "tick_ms must be within 1..=1000"
        );
        anyhow::ensure!(
            self.log_cleaner_backoff_ms > 0,
            "log_cleaner_backoff_ms must be positive"
        );
        anyhow::ensure!(
            self.log_cleaner_dedupe_buffer_size >= COMPACTION_MAP_BYTES_MIN,
            "log_cleaner_dedupe_buffer_size must be at least {COMPACTION_MAP_BYTES_MIN}"
        );
        anyhow::ensure!(self.node_id >= 0, "node_id must not be negative");
        // A node_id outside `cluster` is a broker added to a running cluster: it joins the
        // controller quorum as a learner (it gets the metadata, votes in nothing).
        self.voters()?;
        anyhow::ensure!(
            self.raft_tick_ms > 0 && self.raft_election_ticks > self.raft_heartbeat_ticks,
            "raft_tick_ms must be positive and raft_election_ticks larger than raft_heartbeat_ticks"
        );
        anyhow::ensure!(
            self.raft_heartbeat_ticks > 0,
            "raft_heartbeat_ticks must be positive"
        );
        anyhow::ensure!(
            self.broker_heartbeat_interval_ms > 0
                && self.broker_session_timeout_ms > 2 * self.broker_heartbeat_interval_ms,
            "broker_session_timeout_ms must exceed two broker_heartbeat_interval_ms"
        );
        anyhow::ensure!(
            self.replica_fetch_max_bytes >= 1024
                && self.replica_fetch_max_bytes <= self.frame_bytes_max,
            "replica_fetch_max_bytes must be within 1024..=frame_bytes_max"
        );
        anyhow::ensure!(
            (1..=weir_replication::controller::REPLICATION_FACTOR_MAX)
                .contains(&self.default_replication_factor)
                && (1..=weir_replication::controller::REPLICATION_FACTOR_MAX)
                    .contains(&self.offsets_topic_replication_factor)
                && (1..=weir_replication::controller::REPLICATION_FACTOR_MAX)
                    .contains(&self.transaction_state_replication_factor),
            "replication factors must be within 1..={}",
            weir_replication::controller::REPLICATION_FACTOR_MAX
        );
        anyhow::ensure!(
            self.metadata_snapshot_entries >= 10,
            "metadata_snapshot_entries must be at least 10"
        );
        self.topic_defaults()?;
        self.validate_security()?;
        self.connection_limits()?;
        Ok(())
    }

    /// The connection limits, overrides parsed.
    pub fn connection_limits(&self) -> anyhow::Result<LimitSettings> {
        let per_ip_overrides = self
            .max_connections_per_ip_overrides
            .iter()
            .map(|entry| {
                let (address, count) = entry.split_once('=').ok_or_else(|| {
                    anyhow::anyhow!(
                        "max_connections_per_ip_overrides entry {entry:?}: expected ADDRESS=COUNT"
                    )
                })?;
                let address = address.trim().parse().map_err(|e| {
                    anyhow::anyhow!("max_connections_per_ip_overrides entry {entry:?}: {e}")
                })?;
                let count = count.trim().parse().map_err(|e| {
                    anyhow::anyhow!("max_connections_per_ip_overrides entry {entry:?}: {e}")
                })?;
                Ok((address, count))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(LimitSettings {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            per_ip_overrides,
            creation_rate: self.max_connection_creation_rate,
        })
    }

    fn validate_security(&self) -> anyhow::Result<()> {
        let listeners = self.listeners()?;
        for kind in [
            ListenerKind::Kafka,
            ListenerKind::Native,
            ListenerKind::Http,
        ] {
            let of_kind: Vec<&Listener> = listeners.iter().filter(|l| l.kind == kind).collect();
            for (index, listener) in of_kind.iter().enumerate() {
                anyhow::ensure!(
                    !of_kind[..index]
                        .iter()
                        .any(|l| l.protocol == listener.protocol),
                    "two {} listeners with protocol {}: each protocol is served once",
                    kind.name(),
                    listener.protocol
                );
                anyhow::ensure!(
                    kind != ListenerKind::Http || !listener.protocol.sasl(),
                    "{} listener {listener}: SASL is served on Kafka and native listeners",
                    kind.name()
                );
            }
        }
        if self.cluster.len() > 1 {
            self.validate_inter_broker(&listeners)?;
        }
        for user in &self.super_users {
            anyhow::ensure!(
                user.strip_prefix("User:")
                    .is_some_and(|name| !name.is_empty()),
                "super_users: {user:?} is not User:NAME"
            );
        }
        let tls = self.tls_settings()?;
        anyhow::ensure!(
            tls.is_some() || !listeners.iter().any(|l| l.protocol.tls()),
            "TLS listeners need tls_cert_file and tls_key_file"
        );
        for mechanism in &self.sasl_enabled_mechanisms {
            anyhow::ensure!(
                crate::security::sasl::MECHANISMS.contains(&mechanism.as_str()),
                "sasl_enabled_mechanisms: {mechanism} is not one of {:?}",
                crate::security::sasl::MECHANISMS
            );
        }
        anyhow::ensure!(
            (1024..=self.frame_bytes_max).contains(&self.sasl_max_receive_bytes),
            "sasl_max_receive_bytes must be within 1024..=frame_bytes_max"
        );
        Ok(())
    }

    /// Brokers dial each other's `native_listen` (Raft, controller calls, replication)
    /// and `kafka_listen` (transaction markers) as their own listeners are, so these are
    /// PLAINTEXT or SSL (a broker has no SASL login of its own). Over SSL a broker
    /// presents its certificate, and checks the other's against `tls_client_ca_file`.
    /// The authorizer needs brokers known for brokers: SSL both ways, with client
    /// certificates required (each broker's principal a super user: checked at start).
    fn validate_inter_broker(&self, listeners: &[Listener]) -> anyhow::Result<()> {
        let between = &listeners[..2];
        for listener in between {
            anyhow::ensure!(
                matches!(
                    listener.protocol,
                    SecurityProtocol::Plaintext | SecurityProtocol::Ssl
                ),
                "in a cluster, brokers reach each other on {} {}: it is PLAINTEXT or SSL \
                 (serve SASL with extra listeners)",
                listener.kind.name(),
                listener.address
            );
        }
        let tls_between = between.iter().any(|l| l.protocol.tls());
        anyhow::ensure!(
            !tls_between || !self.tls_client_ca_file.is_empty(),
            "brokers dialling each other over SSL check each other's certificates: set \
             tls_client_ca_file"
        );
        anyhow::ensure!(
            !self.authorizer_enabled
                || (between.iter().all(|l| l.protocol.tls()) && self.tls_client_auth == "required"),
            "authorizer_enabled in a cluster: brokers must know each other for brokers, so \
             native_listen_protocol and kafka_listen_protocol are SSL and tls_client_auth \
             is required (each broker's certificate subject a super user)"
        );
        Ok(())
    }

    /// How requests are authorized: `None` when the authorizer is off.
    pub fn authorizer_config(&self) -> Option<crate::security::acl::AuthorizerConfig> {
        self.authorizer_enabled
            .then(|| crate::security::acl::AuthorizerConfig {
                super_users: self.super_users.clone(),
                allow_if_no_acl: self.allow_everyone_if_no_acl_found,
            })
    }

    /// Every listener: the three main ones, then the extra ones.
    pub fn listeners(&self) -> anyhow::Result<Vec<Listener>> {
        let kafka_protocol = SecurityProtocol::parse(&self.kafka_listen_protocol).ok_or_else(|| {
            anyhow::anyhow!(
                "kafka_listen_protocol {:?}: expected PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
                self.kafka_listen_protocol
            )
        })?;
        let native_protocol =
            SecurityProtocol::parse(&self.native_listen_protocol).ok_or_else(|| {
                anyhow::anyhow!(
                    "native_listen_protocol {:?}: expected PLAINTEXT, SSL, SASL_PLAINTEXT or \
                     SASL_SSL",
                    self.native_listen_protocol
                )
            })?;
        // The first two are what brokers dial each other on (`validate_inter_broker`).
        let mut listeners = vec![
            Listener {
                kind: ListenerKind::Native,
                protocol: native_protocol,
                address: self.native_listen,
            },
            Listener {
                kind: ListenerKind::Kafka,
                protocol: kafka_protocol,
                address: self.kafka_listen,
            },
            Listener {
                kind: ListenerKind::Http,
                protocol: SecurityProtocol::Plaintext,
                address: self.http_listen,
            },
        ];
        for (kind, extra) in [
            (ListenerKind::Kafka, &self.kafka_listeners),
            (ListenerKind::Native, &self.native_listeners),
            (ListenerKind::Http, &self.http_listeners),
        ] {
            for text in extra {
                listeners.push(Listener::parse(kind, text)?);
            }
        }
        Ok(listeners)
    }

    /// The TLS settings, if a certificate is configured.
    pub fn tls_settings(&self) -> anyhow::Result<Option<TlsSettings>> {
        let client_auth = ClientAuth::parse(&self.tls_client_auth).ok_or_else(|| {
            anyhow::anyhow!(
                "tls_client_auth {:?}: expected none, requested or required",
                self.tls_client_auth
            )
        })?;
        if self.tls_cert_file.is_empty() && self.tls_key_file.is_empty() {
            return Ok(None);
        }
        anyhow::ensure!(
            !self.tls_cert_file.is_empty() && !self.tls_key_file.is_empty(),
            "tls_cert_file and tls_key_file go together"
        );
        let client_ca_file = Some(PathBuf::from(&self.tls_client_ca_file))
            .filter(|_| !self.tls_client_ca_file.is_empty());
        anyhow::ensure!(
            client_auth == ClientAuth::None || client_ca_file.is_some(),
            "tls_client_auth = {} needs tls_client_ca_file",
            self.tls_client_auth
        );
        Ok(Some(TlsSettings {
            cert_file: PathBuf::from(&self.tls_cert_file),
            key_file: PathBuf::from(&self.tls_key_file),
            client_ca_file,
            client_auth,
        }))
    }

    /// The controller quorum's voters: each initial broker's id and native address. A
    /// broker without `cluster` is the only one, at its own native address.
    pub fn voters(&self) -> anyhow::Result<Vec<(i32, String)>> {
        if self.cluster.is_empty() {
            return Ok(vec![(
                self.node_id,
                format!("{}:{}", self.advertised_host(), self.native_listen.port()),
            )]);
        }
        let mut voters = Vec::with_capacity(self.cluster.len());
        for (index, entry) in self.cluster.iter().enumerate() {
            let (node, address) = match entry.split_once('@') {
                Some((node, address)) => (
                    node.parse::<i32>()
                        .map_err(|_| anyhow::anyhow!("cluster entry {entry}: bad node id"))?,
                    address,
                ),
                None => (index as i32, entry.as_str()),
            };
            anyhow::ensure!(
                address
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()),
                "cluster entry {entry}: expected HOST:PORT or ID@HOST:PORT"
            );
            anyhow::ensure!(
                node >= 0 && !voters.iter().any(|(n, _)| *n == node),
                "cluster entry {entry}: node id {node} is negative or listed twice"
            );
            voters.push((node, address.to_string()));
        }
        Ok(voters)
    }

    /// Shards this broker runs.
    pub fn shard_count(&self) -> usize {
        if self.cores == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.cores
        }
    }

    /// Each topic default: its setting here, the topic config it is the default of, and
    /// its value as that topic config would be written.
    fn topic_default_settings(&self) -> [(&'static str, &'static str, String); 15] {
        [
            (
                "log_segment_bytes",
                "segment.bytes",
                self.log_segment_bytes.to_string(),
            ),
            (
                "log_segment_ms",
                "segment.ms",
                self.log_segment_ms.to_string(),
            ),
            (
                "log_retention_ms",
                "retention.ms",
                self.log_retention_ms.to_string(),
            ),
            (
                "log_retention_bytes",
                "retention.bytes",
                self.log_retention_bytes.to_string(),
            ),
            ("log_flush", "flush.policy", self.log_flush.clone()),
            (
                "log_index_interval_bytes",
                "index.interval.bytes",
                self.log_index_interval_bytes.to_string(),
            ),
            (
                "log_batch_bytes_max",
                "max.message.bytes",
                self.log_batch_bytes_max.to_string(),
            ),
            (
                "log_cleanup_policy",
                "cleanup.policy",
                self.log_cleanup_policy.clone(),
            ),
            (
                "log_cleaner_delete_retention_ms",
                "delete.retention.ms",
                self.log_cleaner_delete_retention_ms.to_string(),
            ),
            (
                "log_cleaner_min_compaction_lag_ms",
                "min.compaction.lag.ms",
                self.log_cleaner_min_compaction_lag_ms.to_string(),
            ),
            (
                "log_cleaner_max_compaction_lag_ms",
                "max.compaction.lag.ms",
                self.log_cleaner_max_compaction_lag_ms.to_string(),
            ),
            (
                "log_cleaner_min_cleanable_ratio",
                "min.cleanable.dirty.ratio",
                self.log_cleaner_min_cleanable_ratio.to_string(),
            ),
            (
                "min_insync_replicas",
                "min.insync.replicas",
                self.min_insync_replicas.to_string(),
            ),
            (
                "compression_type",
                "compression.type",
                self.compression_type.clone(),
            ),
            (
                "log_message_timestamp_type",
                "message.timestamp.type",
                self.log_message_timestamp_type.clone(),
            ),
        ]
    }

    /// The settings topics get unless they override them, checked by the rules of the
    /// topic configs they are the defaults of.
    pub fn topic_defaults(&self) -> anyhow::Result<TopicConfig> {
        let mut defaults = TopicConfig {
            log: LogConfig {
                preallocate: self.log_preallocate,
                recycle_segments: self.log_recycle_segments,
                ..LogConfig::default()
            },
            ..TopicConfig::default()
        };
        for (setting, key, value) in self.topic_default_settings() {
            topic::set_config(&mut defaults, key, &value)
                .map_err(|e| anyhow::anyhow!("{setting}: {e}"))?;
        }
        topic::check(&defaults).map_err(|e| anyhow::anyhow!("topic defaults: {e}"))?;
        Ok(defaults)
    }

    pub fn storage_config(&self) -> ShardStorageConfig {
        ShardStorageConfig {
            cache_bytes: self.cache_bytes,
            open_segments_max: self.open_segments_max,
            readahead_windows_max: self.readahead_windows_max,
            compaction_map_bytes: self.log_cleaner_dedupe_buffer_size,
            compaction_io_bytes_per_second: self.log_cleaner_io_max_bytes_per_second,
            delete_bytes_per_second: self.delete_max_bytes_per_second,
            delete_backlog_bytes_max: self.delete_backlog_max_bytes,
        }
    }

    /// The host clients should connect to.
    pub fn advertised_host(&self) -> String {
        if !self.advertised_host.is_empty() {
            return self.advertised_host.clone();
        }
        let ip = self.native_listen.ip();
        if ip.is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            ip.to_string()
        }
    }
}

/// An environment value as TOML would read it (`2`, `true`, `[1, 2]`), else a string.
fn env_value(text: &str) -> toml::Value {
    let wrapped = format!("value = {text}");
    toml::from_str::<toml::Table>(&wrapped)
        .ok()
        .and_then(|mut table| table.remove("value"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(
        file: Option<&str>,
        env: &[(&str, &str)],
        flags: FlagOverrides,
    ) -> anyhow::Result<BrokerConfig> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.toml");
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
        }
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        BrokerConfig::load(file.map(|_| path.as_path()), env, &flags)
    }

    #[test]
    fn defaults_serve_a_single_node_from_weir_data() {
        let config = load(None, &[], FlagOverrides::default()).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("./weir-data"));
        assert_eq!(
            (
                config.native_listen.port(),
                config.kafka_listen.port(),
                config.http_listen.port()
            ),
            (9192, 9092, 9644)
        );
        assert_eq!(config.topic_defaults().unwrap(), TopicConfig::default());
        assert_eq!(config.storage_config(), ShardStorageConfig::default());
    }

    /// Topic defaults set in the file or the environment reach the topics, checked by the
    /// rules of the topic configs they are the defaults of.
    #[test]
    fn topic_defaults_are_set_and_checked() {
        let file = "log_cleanup_policy = \"compact,delete\"\ncompression_type = \"zstd\"\n";
        let env = [
            ("WEIR_LOG_CLEANER_MIN_CLEANABLE_RATIO", "0.1"),
            ("WEIR_MIN_INSYNC_REPLICAS", "2"),
            ("WEIR_LOG_MESSAGE_TIMESTAMP_TYPE", "LogAppendTime"),
            ("WEIR_LOG_CLEANER_DELETE_RETENTION_MS", "1000"),
            ("WEIR_LOG_CLEANER_DEDUPE_BUFFER_SIZE", "8388608"),
        ];
        let config = load(Some(file), &env, FlagOverrides::default()).unwrap();
        let defaults = config.topic_defaults().unwrap();
        let described: Vec<(&str, String)> = topic::describe(&defaults, &Default::default())
            .unwrap()
            .into_iter()
            .filter(|c| c.source == topic::ConfigSource::Broker)
            .map(|c| (c.key.name, c.value))
            .collect();
        let expected = [
            ("cleanup.policy", "compact,delete"),
            ("compression.type", "zstd"),
            ("delete.retention.ms", "1000"),
            ("message.timestamp.type", "LogAppendTime"),
            ("min.cleanable.dirty.ratio", "0.1"),
            ("min.insync.replicas", "2"),
        ];
        assert_eq!(
            described,
            expected.map(|(k, v)| (k, v.to_string())).to_vec()
        );
        assert_eq!(config.storage_config().compaction_map_bytes, 8 << 20);
    }

    /// The authorizer reads `super_users` and `allow_everyone_if_no_acl_found`; in a
    /// cluster it needs brokers to reach each other over mutual TLS.
    #[test]
    fn the_authorizer_is_configured_and_brokers_authenticated() {
        let config = load(None, &[], FlagOverrides::default()).unwrap();
        assert!(config.authorizer_config().is_none());
        let env = [
            ("WEIR_AUTHORIZER_ENABLED", "true"),
            ("WEIR_SUPER_USERS", "[\"User:admin\"]"),
            ("WEIR_ALLOW_EVERYONE_IF_NO_ACL_FOUND", "true"),
        ];
        let authorizer = load(None, &env, FlagOverrides::default())
            .unwrap()
            .authorizer_config()
            .unwrap();
        assert_eq!(authorizer.super_users, ["User:admin"]);
        assert!(authorizer.allow_if_no_acl);
        let cluster = FlagOverrides {
            cluster: Some(vec!["127.0.0.1:9192".into(), "127.0.0.1:9193".into()]),
            ..FlagOverrides::default()
        };
        let error = load(None, &env[..1], cluster.clone())
            .unwrap_err()
            .to_string();
        assert!(error.contains("authorizer_enabled"), "{error}");
        let tls = [
            ("WEIR_TLS_CERT_FILE", "broker.pem"),
            ("WEIR_TLS_KEY_FILE", "broker.key"),
            ("WEIR_TLS_CLIENT_CA_FILE", "ca.pem"),
        ];
        let mutual = [
            ("WEIR_NATIVE_LISTEN_PROTOCOL", "SSL"),
            ("WEIR_KAFKA_LISTEN_PROTOCOL", "SSL"),
            ("WEIR_TLS_CLIENT_AUTH", "required"),
        ];
        let secured: Vec<_> = env[..1]
            .iter()
            .chain(&tls)
            .chain(&mutual)
            .copied()
            .collect();
        load(None, &secured, cluster.clone()).unwrap();
        // Without client certificates, or with one plaintext way between brokers.
        for left_out in ["WEIR_TLS_CLIENT_AUTH", "WEIR_KAFKA_LISTEN_PROTOCOL"] {
            let partly: Vec<_> = secured
                .iter()
                .filter(|(k, _)| *k != left_out)
                .copied()
                .collect();
            let error = load(None, &partly, cluster.clone())
                .unwrap_err()
                .to_string();
            assert!(error.contains("authorizer_enabled"), "{left_out}: {error}");
        }
        // Brokers dial each other with no SASL login of their own.
        let sasl: Vec<_> = tls
            .iter()
            .copied()
            .chain([("WEIR_NATIVE_LISTEN_PROTOCOL", "SASL_SSL")])
            .collect();
        let error = load(None, &sasl, cluster.clone()).unwrap_err().to_string();
        assert!(error.contains("PLAINTEXT or SSL"), "{error}");
        // Over SSL they check each other's certificates: against which CAs?
        let no_ca: Vec<_> = secured[..3]
            .iter()
            .copied()
            .chain([("WEIR_NATIVE_LISTEN_PROTOCOL", "SSL")])
            .collect();
        let error = load(None, &no_ca[1..], cluster).unwrap_err().to_string();
        assert!(error.contains("tls_client_ca_file"), "{error}");
    }

    #[test]
    fn file_then_environment_then_flags() {
        let file = "cores = 1\nlog_flush = \"never\"\ndefault_partitions = 3\n";
        let env = [
            ("WEIR_LOG_FLUSH", "interval(50)"),
            ("WEIR_DEFAULT_PARTITIONS", "5"),
            ("PATH", "/bin"),
        ];
        let flags = FlagOverrides {
            data_dir: Some("/tmp/x".into()),
            ..FlagOverrides::default()
        };
        let config = load(Some(file), &env, flags).unwrap();
        assert_eq!(config.cores, 1);
        assert_eq!(config.log_flush, "interval(50)");
        assert_eq!(config.default_partitions, 5);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        type Case<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (Some("log_flsh = \"never\""), &[], "unknown field"),
            (None, &[("WEIR_LOG_FLSH", "never")], "unknown field"),
            (
                None,
                &[("WEIR_LOG_FLUSH", "sometimes")],
                "log_flush: Invalid value sometimes",
            ),
            (None, &[("WEIR_FRAME_BYTES_MAX", "10")], "frame_bytes_max"),
            (None, &[("WEIR_CORES", "1000")], "cores"),
            (Some("cores = \"two\""), &[], "invalid type"),
            (
                None,
                &[("WEIR_LOG_CLEANUP_POLICY", "keep")],
                "log_cleanup_policy: Invalid",
            ),
            (
                None,
                &[("WEIR_COMPRESSION_TYPE", "brotli")],
                "gzip or producer",
            ),
            (None, &[("WEIR_MIN_INSYNC_REPLICAS", "0")], "at least 1"),
            (
                None,
                &[("WEIR_LOG_CLEANER_MIN_CLEANABLE_RATIO", "2")],
                "from 0 to 1",
            ),
            (None, &[("WEIR_LOG_RETENTION_MS", "-2")], "at least -1"),
            (
                None,
                &[("WEIR_LOG_MESSAGE_TIMESTAMP_TYPE", "Now")],
                "CreateTime or LogAppendTime",
            ),
            (
                None,
                &[("WEIR_LOG_SEGMENT_BYTES", "1000")],
                "smaller than max.message.bytes",
            ),
            (
                None,
                &[("WEIR_LOG_CLEANER_DEDUPE_BUFFER_SIZE", "1000")],
                "log_cleaner_dedupe_buffer_size",
            ),
        ];
        for (file, env, expected) in cases {
            let error = load(*file, env, FlagOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{file:?} {env:?}: {error}");
        }
    }

    #[test]
    fn every_key_is_documented() {
        let documented =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CONFIG.md"))
                .unwrap();
        let defaults = toml::Table::try_from(BrokerConfig::default()).unwrap();
        for key in defaults.keys() {
            assert!(
                documented.contains(&format!("`{key}`")),
                "docs/CONFIG.md does not document {key}"
            );
        }
    }
}
