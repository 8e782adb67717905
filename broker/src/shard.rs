//! One shard: a core's share of the broker. It owns some partitions (as recorded in the
//! metadata), answers calls about them from every shard, and serves client connections.
//!
//! **Invariant:** a partition's log is mutated only by its owning shard.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use event_listener::{Event, EventListener};
use glommio::sync::Semaphore;
use kafka_protocol::ResponseError;
use weir_replication::{ControllerRequest, FetchAnswer, FetchPosition, FetchRefusal, NO_LEADER};
use weir_storage::{FlushPolicy, Log, LogIdentity, ShardStorage};
use weir_wire::native::schema::{Acks, OffsetSpec};

use weir_client::ArrivalGate;

use crate::cluster::Cluster;
use crate::config::BrokerConfig;
use crate::error::{BrokerError, BrokerResult};
use crate::group::{Coordinator, GroupLimits, GroupState};
use crate::metadata::{MetadataImage, NodeId, OFFSETS_TOPIC};
use crate::metrics::ShardMetrics;
use crate::offsets::{self, OffsetsPartition};
use crate::producers::{ProducerTable, SequenceCheck};
use crate::replica::{LogView, Replication, Role};
use crate::router::{
    CallHandler, Committed, GroupAnswer, GroupCall, MemberClaim, PartitionStatus, Router,
    ShardAnswer, ShardCall, TopicPartition,
};
use crate::topic;
use crate::txn::coordinator::{TXN_TOPIC, TxnStore};
use crate::txn::partition::PartitionTxns;

mod txn;

type SharedTxns = Rc<RefCell<PartitionTxns>>;

/// How far back a partition's idempotent-producer state is rebuilt (in offsets, within
/// the active segment). A producer whose batches are all older is treated as new.
const PRODUCER_REBUILD_OFFSETS: i64 = 100_000;

/// How often transaction timeouts are checked and transaction checkpoints written.
const TXN_TICK: Duration = Duration::from_secs(1);

/// How often group sessions and join deadlines are checked.
const GROUP_TICK: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct Shard {
    pub id: usize,
    pub count: usize,
    pub config: Arc<BrokerConfig>,
    /// What topics get unless they override it (from the broker's configuration).
    pub topic_defaults: topic::TopicConfig,
    pub storage: Rc<ShardStorage>,
    pub router: Rc<Router>,
    partitions: RefCell<BTreeMap<TopicPartition, Rc<Log>>>,
    /// The configs of the topics of `partitions`, for what the produce path does beyond
    /// the log (codec and timestamp rewrites).
    topic_configs: RefCell<BTreeMap<String, topic::TopicConfig>>,
    offsets: RefCell<BTreeMap<i32, Rc<RefCell<OffsetsPartition>>>>,
    /// The `__transaction_state` partitions this shard leads: it coordinates their ids.
    txn_stores: RefCell<BTreeMap<i32, Rc<RefCell<TxnStore>>>>,
    /// Transactional ids whose markers a task of this shard is writing.
    txns_completing: RefCell<std::collections::BTreeSet<String>>,
    /// The transaction state of partitions this shard leads, loaded when first needed.
    txns: RefCell<BTreeMap<TopicPartition, Rc<RefCell<PartitionTxns>>>>,
    /// For compaction, the transaction state of partitions this shard follows, with the
    /// log's truncation count it is valid for.
    replica_txns: RefCell<BTreeMap<TopicPartition, (u64, SharedTxns)>>,
    /// Idempotent producers' sequence state per partition, loaded on first use.
    producers: RefCell<BTreeMap<TopicPartition, ProducerTable>>,
    producer_loads: Semaphore,
    /// Partitions whose producer state is being rebuilt, each with the queue of the
    /// idempotent requests that arrived meanwhile; see `load_producers`.
    producer_gates: RefCell<BTreeMap<TopicPartition, Rc<ArrivalGate>>>,
    /// This shard's block of producer ids: the next one and the end.
    producer_ids: Cell<(i64, i64)>,
    metadata: RefCell<Arc<MetadataImage>>,
    /// The ACLs of `metadata`, enforced when `authorizer_enabled`.
    pub authorizer: crate::security::acl::Authorizer,
    /// Client quotas' usage, shared with the other shards.
    pub quotas: Arc<crate::security::quotas::QuotaManager>,
    /// How this broker dials the others (replication, Raft, transaction markers).
    pub peer_tls: crate::security::tls::PeerTls,
    /// Whether this broker is registered and unfenced in `metadata` (it leads only then).
    active: Cell<bool>,
    /// Set once `is_ready` first holds.
    ready: Cell<bool>,
    /// Fired when a new metadata image is applied.
    pub metadata_changed: Event,
    /// This broker's id.
    pub node: NodeId,
    /// Shard 0 only: the cluster (controller quorum node, controller, membership).
    cluster: RefCell<Option<Rc<Cluster>>>,
    /// The active controller as shard 0 last knew it (-1: none), shared by every shard.
    controller: Arc<std::sync::atomic::AtomicI32>,
    /// The replication role of each partition this shard holds.
    replication: RefCell<BTreeMap<TopicPartition, Rc<Replication>>>,
    /// Leaders this shard runs a fetcher for (one per leader broker, for all the
    /// partitions this shard follows there).
    fetchers: RefCell<std::collections::BTreeSet<NodeId>>,
    pub metrics: ShardMetrics,
    /// Consumer groups whose offsets partition this shard owns.
    pub groups: Coordinator,
    /// Bytes of requests this shard may hold; readers wait for permits (backpressure).
    pub memory: Rc<Semaphore>,
    pub shutdown: Arc<AtomicBool>,
    in_flight: Cell<usize>,
    pub drained: Event,
    /// Fired once, when the background task sees the shutdown flag.
    stopping: Event,
}

fn status(log: &Log, high_watermark: i64, last_stable_offset: i64) -> PartitionStatus {
    PartitionStatus {
        log_start_offset: log.log_start_offset(),
        high_watermark,
        last_stable_offset,
        log_end_offset: log.log_end_offset(),
        size_bytes: log.size_bytes(),
    }
}

impl CallHandler for Shard {
    async fn handle(self: Rc<Self>, call: ShardCall) -> ShardAnswer {
        self.answer(call).await
    }
}

/// What a deleted partition's directory is renamed to before its files are removed. No
/// partition's directory has such a name (theirs end in the partition's number), so a
/// partition created again meanwhile gets a fresh directory, and a broker starting finds
/// the removals a crash interrupted ([`remove_deleted_dirs`]).
const DELETED_DIR_SUFFIX: &str = ".deleted";

fn deleted_dir_name(dir: &std::path::Path) -> std::path::PathBuf {
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut name = dir.as_os_str().to_owned();
    name.push(format!(".{unique}{DELETED_DIR_SUFFIX}"));
    name.into()
}

/// Finishes the removals of deleted partitions' directories that a crash or kill
/// interrupted, at the shard's delete rate.
pub fn remove_deleted_dirs(data_dir: &std::path::Path, storage: &ShardStorage) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let deleted = entry
            .file_name()
            .to_string_lossy()
            .ends_with(DELETED_DIR_SUFFIX);
        if !(is_dir && deleted) {
            continue;
        }
        storage.free_dir(entry.path());
    }
}

impl Shard {
    pub fn new(
        id: usize,
        count: usize,
        config: Arc<BrokerConfig>,
        router: Rc<Router>,
        shutdown: Arc<AtomicBool>,
        controller: Arc<std::sync::atomic::AtomicI32>,
        shared: crate::security::SharedSecurity,
    ) -> anyhow::Result<Rc<Shard>> {
        let limits = GroupLimits {
            min_session_timeout_ms: config.group_min_session_timeout_ms,
            max_session_timeout_ms: config.group_max_session_timeout_ms,
            initial_rebalance_delay_ms: config.group_initial_rebalance_delay_ms,
        };
        let node = config.node_id;
        let authorizer = crate::security::acl::Authorizer::new(config.authorizer_config());
        Ok(Rc::new(Shard {
            id,
            count,
            topic_defaults: config.topic_defaults()?,
            storage: ShardStorage::new(config.storage_config()),
            memory: Rc::new(Semaphore::new(config.shard_memory_bytes as u64)),
            config,
            router,
            partitions: RefCell::new(BTreeMap::new()),
            topic_configs: RefCell::new(BTreeMap::new()),
            offsets: RefCell::new(BTreeMap::new()),
            txn_stores: RefCell::new(BTreeMap::new()),
            txns_completing: RefCell::default(),
            txns: RefCell::new(BTreeMap::new()),
            replica_txns: RefCell::new(BTreeMap::new()),
            producers: RefCell::new(BTreeMap::new()),
            producer_loads: Semaphore::new(1),
            producer_gates: RefCell::default(),
            producer_ids: Cell::new((0, 0)),
            metadata: RefCell::new(Arc::new(MetadataImage::default())),
            authorizer,
            quotas: shared.quotas,
            peer_tls: shared.peer_tls,
            active: Cell::new(false),
            ready: Cell::new(false),
            metadata_changed: Event::new(),
            node,
            cluster: RefCell::new(None),
            controller,
            replication: RefCell::new(BTreeMap::new()),
            fetchers: RefCell::new(std::collections::BTreeSet::new()),
            metrics: ShardMetrics::default(),
            groups: Coordinator::new(limits),
            shutdown,
            in_flight: Cell::new(0),
            drained: Event::new(),
            stopping: Event::new(),
        }))
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        self.metadata.borrow().clone()
    }

    /// Counts `amount` of a client's usage against the quota that applies to it; how
    /// long its connection must now hold off (zero, at the cost of one check, when no
    /// quota is set).
    pub fn throttle(
        &self,
        kind: crate::security::quotas::QuotaKind,
        caller: &crate::security::Caller,
        client_id: &str,
        amount: u64,
    ) -> Duration {
        let image = self.metadata.borrow();
        if image.quotas.is_empty() {
            return Duration::ZERO;
        }
        let now = std::time::Instant::now();
        let user = &caller.principal.name;
        let throttle = self
            .quotas
            .record(&image.quotas, kind, user, client_id, amount, now);
        if !throttle.is_zero() {
            ShardMetrics::add(&self.metrics.quota_throttled, 1);
            ShardMetrics::add(&self.metrics.quota_throttle_ms, throttle.as_millis() as u64);
        }
        throttle
    }

    /// Resolves once the shard is shutting down. Waits on an event rather than a timer, so
    /// that a future raced against it (an accept) is polled only when it is woken: glommio
    /// keeps a waker per poll of a pending accept, and a timer re-polling it every tick
    /// overflowed the task's waker count (i16) after a few idle minutes.
    pub async fn stopped(&self) {
        loop {
            let listener = self.stopping.listen();
            if self.shutting_down() {
                return;
            }
            listener.await;
        }
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// Counts a request from its frame being read to its response being queued; shutdown
    /// waits for the count to reach zero.
    pub fn request_started(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
    }

    pub fn request_finished(&self) {
        self.in_flight.set(self.in_flight.get() - 1);
        if self.in_flight.get() == 0 {
            self.drained.notify(usize::MAX);
        }
    }

    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// Stops the whole broker (as SIGTERM does), after a failure it cannot go on from.
    pub fn stop_broker(&self) {
        self.shutdown.store(true, Ordering::Release);
    }

    /// Shard 0's cluster node.
    pub fn cluster(&self) -> BrokerResult<Rc<Cluster>> {
        self.cluster
            .borrow()
            .clone()
            .ok_or_else(|| BrokerError::Internal(format!("shard {} has no cluster node", self.id)))
    }

    /// The active controller, as this broker knows it.
    pub fn controller_node(&self) -> Option<NodeId> {
        Some(self.controller.load(Ordering::Acquire)).filter(|n| *n >= 0)
    }

    pub fn set_controller_node(&self, node: Option<NodeId>) {
        self.controller.store(node.unwrap_or(-1), Ordering::Release);
    }

    /// Whether this broker is registered and unfenced (serving as a member of the cluster).
    pub fn is_active(&self) -> bool {
        self.active.get()
    }

    /// The shard of this broker that holds `partition`, from the current metadata; for a
    /// partition this broker holds no replica of, the error names its leader.
    pub fn owner(&self, partition: &TopicPartition) -> BrokerResult<usize> {
        let image = self.metadata.borrow();
        let state = image
            .topic(&partition.topic)
            .and_then(|t| t.partition(partition.partition))
            .ok_or_else(|| unknown(partition))?;
        match state.replica(self.node) {
            Some(replica) if (replica.shard as usize) < self.count => Ok(replica.shard as usize),
            Some(_) => Err(BrokerError::Internal(format!(
                "{partition} is assigned to a shard this broker does not run"
            ))),
            None if state.leader == NO_LEADER => Err(BrokerError::LeaderNotAvailable {
                topic: partition.topic.clone(),
                partition: partition.partition,
            }),
            None => Err(not_leader(partition, self.node, state.leader)),
        }
    }

    fn log(&self, partition: &TopicPartition) -> BrokerResult<Rc<Log>> {
        self.partitions
            .borrow()
            .get(partition)
            .cloned()
            .ok_or_else(|| self.not_here(partition))
    }

    fn replication(&self, partition: &TopicPartition) -> BrokerResult<Rc<Replication>> {
        self.replication
            .borrow()
            .get(partition)
            .cloned()
            .ok_or_else(|| self.not_here(partition))
    }

    /// Why a partition is not open on this shard. Only one the metadata does not know is
    /// unknown; one it knows is led elsewhere, or (this broker's, not opened yet, as just
    /// after a restart) has no leader here yet. Both are retriable; an unknown topic is
    /// not, for librdkafka, which fails the producer's messages at once.
    fn not_here(&self, partition: &TopicPartition) -> BrokerError {
        let image = self.image();
        let state = image
            .topic(&partition.topic)
            .and_then(|topic| topic.partition(partition.partition));
        match state {
            Some(state) if state.leader >= 0 && state.leader != self.node => {
                not_leader(partition, self.node, state.leader)
            }
            Some(_) => BrokerError::LeaderNotAvailable {
                topic: partition.topic.clone(),
                partition: partition.partition,
            },
            None => unknown(partition),
        }
    }

    /// The log and replication of a partition this shard leads; the error says who does.
    fn leader_log(&self, partition: &TopicPartition) -> BrokerResult<(Rc<Log>, Rc<Replication>)> {
        let log = self.log(partition)?;
        let replication = self.replication(partition)?;
        match &*replication.role.borrow() {
            Role::Leader(_) => {}
            Role::Follower(follower) => {
                return Err(not_leader(partition, self.node, follower.leader));
            }
            Role::Offline { .. } => {
                return Err(BrokerError::LeaderNotAvailable {
                    topic: partition.topic.clone(),
                    partition: partition.partition,
                });
            }
        }
        Ok((log, replication))
    }

    fn partition_status(&self, partition: &TopicPartition, log: &Log) -> PartitionStatus {
        let high_watermark = self.high_watermark(partition, log);
        status(
            log,
            high_watermark,
            self.last_stable_offset(partition, high_watermark),
        )
    }

    /// The high watermark of a partition this shard holds.
    fn high_watermark(&self, partition: &TopicPartition, log: &Log) -> i64 {
        self.replication(partition)
            .map_or(log.log_start_offset(), |r| r.high_watermark(log))
    }

    /// Waits until the high watermark of a partition this shard leads in `leader_epoch`
    /// reaches `offset`: every in-sync replica holds what lies before it. If the ISR shrank
    /// below `min_insync_replicas` meanwhile, that is not enough: the answer is then
    /// NOT_ENOUGH_REPLICAS_AFTER_APPEND (Kafka's), which producers retry.
    async fn wait_replicated(
        &self,
        partition: &TopicPartition,
        log: &Log,
        replication: &Replication,
        leader_epoch: i32,
        offset: i64,
        min_insync_replicas: i32,
    ) -> BrokerResult<()> {
        let deadline = Instant::now() + REPLICATION_WAIT_MAX;
        loop {
            let changed = replication.changed.listen();
            let appended = log.listen_changes();
            if replication.role.borrow().leader_epoch() != Some(leader_epoch) {
                let leader = replication.state.borrow().leader;
                return Err(not_leader(partition, self.node, leader));
            }
            if replication.high_watermark(log) >= offset {
                let in_sync = match &*replication.role.borrow() {
                    Role::Leader(leader) => leader.in_sync_count(),
                    _ => 0,
                };
                if (in_sync as i32) < min_insync_replicas {
                    return Err(BrokerError::NotEnoughReplicasAfterAppend {
                        topic: partition.topic.clone(),
                        partition: partition.partition,
                        in_sync,
                        min: min_insync_replicas,
                    });
                }
                return Ok(());
            }
            if self.shutting_down() {
                return Err(BrokerError::ShuttingDown);
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Err(BrokerError::TimedOut(format!(
                    "{partition}: replicas did not catch up with offset {offset}"
                )));
            };
            futures_lite::future::or(
                futures_lite::future::or(changed, appended),
                glommio::timer::sleep(left),
            )
            .await;
        }
    }

    async fn answer(self: Rc<Self>, call: ShardCall) -> ShardAnswer {
        match call {
            ShardCall::Produce {
                partition,
                batches,
                acks,
            } => ShardAnswer::Produce(self.produce(&partition, batches, acks).await),
            ShardCall::Fetch {
                partition,
                offset,
                limit,
                read_committed,
            } => ShardAnswer::Fetch(self.fetch(&partition, offset, limit, read_committed).await),
            ShardCall::Watch {
                partitions,
                timeout,
                to_log_end,
                read_committed,
            } => {
                self.watch(&partitions, timeout, to_log_end, read_committed)
                    .await;
                ShardAnswer::Watched
            }
            ShardCall::ReplicaFetch {
                partition,
                replica,
                position,
                limit,
            } => ShardAnswer::ReplicaFetch(
                self.replica_fetch(&partition, replica, position, limit)
                    .await,
            ),
            ShardCall::ListOffsets {
                partition,
                spec,
                timestamp,
                read_committed,
            } => ShardAnswer::ListOffsets(
                self.list_offsets(&partition, spec, timestamp, read_committed)
                    .await,
            ),
            ShardCall::PartitionStatus { partition } => ShardAnswer::PartitionStatus(
                self.log(&partition)
                    .map(|l| self.partition_status(&partition, &l)),
            ),
            ShardCall::TxnCommitOffsets {
                group,
                producer_id,
                producer_epoch,
                member,
                offsets,
            } => ShardAnswer::CommitOffsets(
                self.txn_commit_offsets(
                    &group,
                    producer_id,
                    producer_epoch,
                    member.as_ref(),
                    offsets,
                )
                .await,
            ),
            ShardCall::Txn(call) => ShardAnswer::Txn(self.txn_call(call).await),
            ShardCall::WriteMarker {
                partition,
                producer_id,
                producer_epoch,
                commit,
                coordinator_epoch,
            } => ShardAnswer::Admin(
                self.write_marker(
                    &partition,
                    producer_id,
                    producer_epoch,
                    commit,
                    coordinator_epoch,
                )
                .await,
            ),
            ShardCall::CommitOffsets {
                group,
                member,
                offsets,
            } => ShardAnswer::CommitOffsets(self.commit_offsets(&group, &member, offsets).await),
            ShardCall::DeleteOffsets { group, partitions } => {
                ShardAnswer::DeleteOffsets(self.delete_offsets(&group, partitions.as_deref()).await)
            }
            ShardCall::Group(call) => ShardAnswer::Group(self.group_call(call).await),
            ShardCall::FetchOffsets { group } => {
                ShardAnswer::FetchOffsets(self.fetch_offsets(&group))
            }
            ShardCall::UnstableOffsets { group } => ShardAnswer::UnstableOffsets(
                offsets::validate_group(&group)
                    .and_then(|()| self.offsets_partition(&group))
                    .map(|leader| leader.store.borrow().unstable(&group)),
            ),
            ShardCall::ListGroups => ShardAnswer::ListGroups(self.groups()),
            ShardCall::CreateTopic {
                name,
                partitions,
                configs,
                replication_factor,
            } => ShardAnswer::Admin(
                self.create_topic(&name, partitions, configs, replication_factor)
                    .await,
            ),
            ShardCall::DeleteTopic { name } => ShardAnswer::Admin(self.delete_topic(&name).await),
            ShardCall::AlterTopicConfigs { name, configs } => {
                ShardAnswer::Admin(self.alter_topic_configs(&name, configs).await)
            }
            ShardCall::CreatePartitions { name, count } => {
                ShardAnswer::Admin(self.create_partitions(&name, count).await)
            }
            ShardCall::AlterAcls { added, removed } => ShardAnswer::Admin(
                self.ask_controller(ControllerRequest::AlterAcls { added, removed })
                    .await
                    .map(|_| ()),
            ),
            ShardCall::AlterClientQuotas { changes } => ShardAnswer::Admin(
                self.ask_controller(ControllerRequest::AlterClientQuotas { changes })
                    .await
                    .map(|_| ()),
            ),
            ShardCall::AlterScramCredentials { changes } => ShardAnswer::Admin(
                self.ask_controller(ControllerRequest::AlterScramCredentials { changes })
                    .await
                    .map(|_| ()),
            ),
            ShardCall::DeleteRecords { partition, offset } => {
                ShardAnswer::DeleteRecords(self.delete_records(&partition, offset).await)
            }
            ShardCall::ReserveProducerIds => {
                ShardAnswer::ProducerIds(self.reserve_producer_ids().await)
            }
            ShardCall::MovePartition {
                partition,
                replicas,
            } => ShardAnswer::Admin(self.move_partition(&partition, replicas).await),
            ShardCall::ApplyMetadata { image, active } => {
                ShardAnswer::Admin(self.apply_metadata(image, active).await)
            }
            ShardCall::RaftMessages { messages } => {
                if let Ok(cluster) = self.cluster() {
                    cluster.receive(messages);
                }
                ShardAnswer::Admin(Ok(()))
            }
            ShardCall::ControllerCall { request } => {
                ShardAnswer::ControllerReply(match self.cluster() {
                    Ok(cluster) => cluster.submit(request).await,
                    Err(_) => {
                        Err(weir_replication::ControllerError::NotController { leader: None })
                    }
                })
            }
            ShardCall::Controller { request } => ShardAnswer::Controller(match self.cluster() {
                Ok(cluster) => cluster.ask(request).await,
                Err(error) => Err(error),
            }),
            ShardCall::Metrics => {
                let partitions = self
                    .partitions
                    .borrow()
                    .iter()
                    .map(|(tp, log)| (tp.clone(), self.partition_status(tp, log)))
                    .collect();
                let mut snapshot =
                    self.metrics
                        .snapshot(self.id, self.storage.cache_bytes(), partitions);
                // As storage counts them: a pass under the I/O limit reads for seconds.
                snapshot.compaction.bytes_read = self.storage.compaction_bytes_read();
                snapshot.compaction.bytes_read_from_cache =
                    self.storage.compaction_bytes_read_from_cache();
                snapshot.compaction.throttled_us =
                    self.storage.compaction_throttled().as_micros() as u64;
                snapshot.delete_backlog_bytes = self.storage.delete_backlog_bytes();
                snapshot.deleted_bytes_freed = self.storage.deleted_bytes_freed();
                let stores = self.led_offsets_stores();
                snapshot.group_offsets = stores.iter().flat_map(|s| s.borrow().all()).collect();
                ShardAnswer::Metrics(Box::new(snapshot))
            }
        }
    }

    /// Appends a request's batches for one partition. All are checked before any is
    /// appended, so a request is applied whole or not at all. A batch an idempotent
    /// producer already sent (a retry) is not appended again; it answers with the offset
    /// it got the first time. Returns the first batch's base offset and the log start
    /// offset.
    async fn produce(
        &self,
        partition: &TopicPartition,
        batches: Vec<BytesMut>,
        acks: Acks,
    ) -> BrokerResult<(i64, i64)> {
        let (log, replication) = self.leader_log(partition)?;
        if self
            .image()
            .topic(&partition.topic)
            .is_some_and(|t| t.internal)
        {
            // Only the broker writes its internal topics (Kafka refuses this too).
            return Err(BrokerError::InvalidTopic(format!(
                "{} is internal: clients may not produce to it",
                partition.topic
            )));
        }
        let (leader_epoch, in_sync) = match &*replication.role.borrow() {
            Role::Leader(leader) => (leader.leader_epoch(), leader.in_sync_count()),
            _ => return Err(not_leader(partition, self.node, NO_LEADER)),
        };
        let batch_bytes_max = log.config().batch_bytes_max as usize;
        let mut headers = Vec::with_capacity(batches.len());
        for batch in &batches {
            // `start_append` checks the CRC; a request of several batches is checked whole
            // first so that none is appended if one is bad.
            let header = if batches.len() > 1 {
                weir_wire::batch::validate(batch, batch_bytes_max)?
            } else {
                weir_wire::BatchHeader::parse(batch)?
            };
            weir_wire::check_client_batch(batch)?;
            if log.config().cleanup.compact {
                check_keys(partition, batch)?;
            }
            headers.push(header);
        }
        let config = self.topic_configs.borrow().get(&partition.topic).copied();
        let mut batches = batches;
        let idempotent = headers.iter().any(|h| h.producer_id >= 0);
        let too_few = config
            .filter(|c| acks == Acks::All && (in_sync as i32) < c.min_insync_replicas)
            .map(|c| BrokerError::NotEnoughReplicas {
                topic: partition.topic.clone(),
                partition: partition.partition,
                in_sync,
                min: c.min_insync_replicas,
            });
        if let Some(config) = config {
            // An idempotent producer's batches are refused after their sequence check,
            // which must know of the refusal (`ProducerTable::refused`).
            if !idempotent && let Some(error) = too_few {
                return Err(error);
            }
            for (batch, header) in batches.iter_mut().zip(&mut headers) {
                if rewrite(batch, header, &config)? {
                    *header = weir_wire::BatchHeader::parse(batch)?;
                }
            }
        }
        if idempotent {
            self.load_producers(partition, &log).await?;
            // Leadership may have moved while the state was read: append only in the
            // epoch this request was checked against.
            if replication.role.borrow().leader_epoch() != Some(leader_epoch) {
                let leader = replication.state.borrow().leader;
                return Err(not_leader(partition, self.node, leader));
            }
        }
        // From here to the last `start_append` nothing awaits: the sequence checks and
        // the appends they allow happen as one step.
        let (first_offset, last_append, durable_needed) = {
            let mut producers = self.producers.borrow_mut();
            // Present once loaded, which happened above if any batch is a producer's.
            let mut table = producers.get_mut(partition);
            let mut checks = Vec::with_capacity(headers.len());
            for header in &headers {
                let check = match &table {
                    Some(table) => table.check(header).map_err(|error| {
                        tracing::debug!(
                            node = self.node,
                            %partition,
                            producer = header.producer_id,
                            epoch = header.producer_epoch,
                            sequence = header.base_sequence,
                            known = ?table.describe(header.producer_id),
                            ?error,
                            "refusing an idempotent producer's batch"
                        );
                        BrokerError::kafka(error, format!("batch for {partition}"))
                    })?,
                    None => {
                        if header.producer_id >= 0 {
                            tracing::warn!(node = self.node, %partition, producer = header.producer_id, sequence = header.base_sequence, "idempotent batch without producer state");
                        }
                        SequenceCheck::Append
                    }
                };
                checks.push(check);
            }
            if let Some(error) = too_few {
                if let (Some(table), Some(at)) = (
                    table.as_mut(),
                    checks.iter().position(|c| *c == SequenceCheck::Append),
                ) {
                    table.refused(&headers[at]);
                }
                return Err(error);
            }
            let mut first_offset = None;
            let mut last_append = None;
            let mut durable_needed = 0;
            for ((batch, header), check) in batches.into_iter().zip(&headers).zip(checks) {
                match check {
                    SequenceCheck::Append => {
                        let info = log.start_append(batch, leader_epoch)?;
                        if let Some(table) = table.as_mut() {
                            table.record(header, info.base_offset);
                        }
                        self.observe_append(partition, header, info.base_offset);
                        first_offset.get_or_insert(info.base_offset);
                        durable_needed = info.last_offset + 1;
                        last_append = Some(info);
                    }
                    SequenceCheck::Duplicate { base_offset } => {
                        first_offset.get_or_insert(base_offset);
                        durable_needed = durable_needed
                            .max(base_offset + i64::from(header.last_offset_delta) + 1);
                    }
                }
            }
            (first_offset, last_append, durable_needed)
        };
        let first_offset = first_offset.ok_or_else(|| {
            BrokerError::InvalidRequest(format!("no record batches for {partition}"))
        })?;
        match &last_append {
            Some(last) => log.finish_append(last).await?,
            // Only retries: the originals may still be on their way to disk.
            None if log.config().flush != FlushPolicy::Never => {
                log.wait_durable(durable_needed).await?;
            }
            None => {}
        }
        if acks == Acks::All {
            // Durable on the leader (under the syncing policies) and on every in-sync
            // replica: the high watermark counts both.
            let min = config.map_or(1, |c| c.min_insync_replicas);
            self.wait_replicated(
                partition,
                &log,
                &replication,
                leader_epoch,
                durable_needed,
                min,
            )
            .await?;
        }
        Ok((first_offset, log.log_start_offset()))
    }

    /// Rebuilds the partition's idempotent-producer state from its recent batches, once,
    /// before its first idempotent batch since the partition was opened or changed
    /// leader. Requests must reach the sequence check in the order they arrived (an
    /// idempotent producer pipelines up to five, and one overtaken by its successor is
    /// a fatal error for librdkafka), so while a rebuild runs every idempotent request
    /// for the partition, even one arriving after the state is in place, takes a ticket
    /// at an [`ArrivalGate`] and passes in ticket order; the gate goes away when nobody
    /// waits at it. A request returns from here and checks and appends without
    /// awaiting, before the next one passes.
    async fn load_producers(&self, partition: &TopicPartition, log: &Rc<Log>) -> BrokerResult<()> {
        if self.producers.borrow().contains_key(partition)
            && !self.producer_gates.borrow().contains_key(partition)
        {
            return Ok(());
        }
        let gate = self
            .producer_gates
            .borrow_mut()
            .entry(partition.clone())
            .or_default()
            .clone();
        let ticket = gate.take_ticket();
        ticket.wait_turn().await;
        let loaded = if self.producers.borrow().contains_key(partition) {
            Ok(())
        } else {
            self.rebuild_producers(partition, log).await
        };
        drop(ticket);
        if gate.is_idle() {
            self.producer_gates.borrow_mut().remove(partition);
        }
        loaded
    }

    async fn rebuild_producers(
        &self,
        partition: &TopicPartition,
        log: &Rc<Log>,
    ) -> BrokerResult<()> {
        // One rebuild at a time per shard: each reads up to a segment's worth of batches.
        let _read = self
            .producer_loads
            .acquire_permit(1)
            .await
            .map_err(|_| BrokerError::ShuttingDown)?;
        // A leadership change while the log is read removes the state (`role_changed`)
        // before this would put a state built from an older log in: then nothing is put
        // in, and the next request reads again.
        let epoch = self.replication(partition)?.role.borrow().leader_epoch();
        let mut table = ProducerTable::default();
        let active_base = log.segment_base_offsets().last().copied().unwrap_or(0);
        let from = active_base
            .max(log.log_end_offset() - PRODUCER_REBUILD_OFFSETS)
            .max(log.log_start_offset());
        let offset = crate::replay::replay(log, from, |_, header| {
            table.record(header, header.base_offset);
            Ok(())
        })
        .await?;
        let now = self.replication(partition)?.role.borrow().leader_epoch();
        if epoch.is_none() || now != epoch {
            return Ok(());
        }
        tracing::debug!(node = self.node, %partition, from = offset, end = log.log_end_offset(), "producer state rebuilt");
        self.producers.borrow_mut().insert(partition.clone(), table);
        Ok(())
    }

    async fn fetch(
        &self,
        partition: &TopicPartition,
        offset: i64,
        limit: weir_storage::ReadLimit,
        read_committed: bool,
    ) -> BrokerResult<crate::router::Fetched> {
        let (log, _) = self.leader_log(partition)?;
        if !read_committed {
            let status = self.partition_status(partition, &log);
            let batches = log
                .read_within(offset, limit, status.high_watermark)
                .await?;
            return Ok(crate::router::Fetched {
                batches,
                status,
                aborted: Vec::new(),
            });
        }
        let txns = self.partition_txns(partition, &log).await?;
        let status = self.partition_status(partition, &log);
        let batches = log
            .read_within(offset, limit, status.last_stable_offset)
            .await?;
        let end = match batches.last() {
            Some(last) => weir_wire::BatchHeader::parse(last)?.next_offset(),
            None => offset,
        };
        let aborted = txns.borrow().aborted_between(offset, end);
        Ok(crate::router::Fetched {
            batches,
            status,
            aborted,
        })
    }

    /// A follower's fetch: where its log diverges from this leader's, or the batches from
    /// its log end on (up to this log's end, not only the high watermark: the follower's
    /// next fetch moves the high watermark).
    async fn replica_fetch(
        &self,
        partition: &TopicPartition,
        replica: NodeId,
        position: FetchPosition,
        limit: weir_storage::ReadLimit,
    ) -> BrokerResult<ReplicaFetched> {
        let log = self.log(partition)?;
        let replication = self.replication(partition)?;
        let now = crate::metadata::now_ms().max(0) as u64;
        let answer = match &mut *replication.role.borrow_mut() {
            Role::Leader(leader) => leader.on_fetch(replica, position, &LogView(&log), now),
            _ => Err(FetchRefusal::NotLeader),
        }?;
        let high_watermark = replication.high_watermark(&log);
        let mut fetched = ReplicaFetched {
            batches: Vec::new(),
            high_watermark,
            log_start_offset: log.log_start_offset(),
            log_end_offset: log.log_end_offset(),
            diverging: None,
        };
        match answer {
            FetchAnswer::Diverging { epoch, end_offset } => {
                fetched.diverging = Some((epoch, end_offset));
            }
            FetchAnswer::Read => {
                let read = log
                    .read_within(position.fetch_offset, limit, log.log_end_offset())
                    .await;
                fetched.batches = match read {
                    Ok(batches) => batches,
                    Err(weir_storage::StorageError::OffsetOutOfRange {
                        log_start_offset,
                        log_end_offset,
                        ..
                    }) => {
                        return Err(FetchRefusal::OutOfRange {
                            log_start_offset,
                            log_end_offset,
                        }
                        .into());
                    }
                    Err(error) => return Err(error.into()),
                };
            }
        }
        Ok(fetched)
    }

    /// Waits until one of the partitions has data readable at its offset (below the high
    /// watermark, or with `to_log_end` below the log end, as followers read), or the
    /// timeout.
    async fn watch(
        &self,
        partitions: &[(TopicPartition, i64)],
        timeout: Duration,
        to_log_end: bool,
        read_committed: bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let watched: Vec<(Rc<Log>, Rc<Replication>, i64)> = partitions
                .iter()
                .filter_map(|(tp, offset)| {
                    Some((self.log(tp).ok()?, self.replication(tp).ok()?, *offset))
                })
                .collect();
            let mut listeners: Vec<EventListener> = Vec::with_capacity(2 * watched.len());
            for (log, replication, _) in &watched {
                listeners.push(log.listen_changes());
                listeners.push(replication.changed.listen());
            }
            let ready =
                partitions
                    .iter()
                    .zip(&watched)
                    .any(|((tp, _), (log, replication, offset))| {
                        let end = if to_log_end {
                            log.log_end_offset()
                        } else if read_committed {
                            self.last_stable_offset(tp, replication.high_watermark(log))
                        } else {
                            replication.high_watermark(log)
                        };
                        end > *offset
                    });
            let Some(remaining) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            if ready || watched.is_empty() || self.shutting_down() {
                return;
            }
            let changed = futures_lite::future::or(
                async {
                    any_of(listeners).await;
                    true
                },
                async {
                    glommio::timer::sleep(remaining).await;
                    false
                },
            );
            if !changed.await {
                return;
            }
        }
    }

    async fn list_offsets(
        &self,
        partition: &TopicPartition,
        spec: OffsetSpec,
        timestamp: i64,
        read_committed: bool,
    ) -> BrokerResult<(i64, i64)> {
        let (log, replication) = self.leader_log(partition)?;
        match spec {
            OffsetSpec::Earliest => Ok((log.log_start_offset(), -1)),
            OffsetSpec::Latest if read_committed => {
                self.partition_txns(partition, &log).await?;
                let hw = replication.high_watermark(&log);
                Ok((self.last_stable_offset(partition, hw), -1))
            }
            OffsetSpec::Latest => Ok((replication.high_watermark(&log), -1)),
            _ => {
                let timestamp = if timestamp == crate::ops::MAX_TIMESTAMP {
                    match log.max_timestamp() {
                        Some(max) => max,
                        None => return Ok((-1, -1)),
                    }
                } else {
                    timestamp
                };
                let found = log.offset_for_timestamp(timestamp).await?;
                // Nothing above the high watermark is visible: a max-timestamp record
                // still being replicated is "no offset" until it is committed.
                let hw = replication.high_watermark(&log);
                Ok(found
                    .filter(|f| f.offset < hw)
                    .map_or((-1, -1), |f| (f.offset, f.timestamp)))
            }
        }
    }

    /// The offsets partition of `group`, which this shard must lead (it coordinates the
    /// group), with its leader epoch.
    fn offsets_partition(&self, group: &str) -> BrokerResult<OffsetsLeader> {
        let partitions = self
            .image()
            .topic(OFFSETS_TOPIC)
            .map_or(1, |t| t.partition_count());
        let partition = TopicPartition {
            topic: OFFSETS_TOPIC.into(),
            partition: offsets::partition_for(group, partitions),
        };
        let (log, replication) = self
            .leader_log(&partition)
            .map_err(|_| BrokerError::NotCoordinator(group.to_string()))?;
        let leader_epoch = replication
            .role
            .borrow()
            .leader_epoch()
            .ok_or_else(|| BrokerError::NotCoordinator(group.to_string()))?;
        let store = self
            .offsets
            .borrow()
            .get(&partition.partition)
            .cloned()
            .ok_or_else(|| BrokerError::NotCoordinator(group.to_string()))?;
        Ok(OffsetsLeader {
            partition,
            store,
            log,
            replication,
            leader_epoch,
        })
    }

    /// The committed-offsets stores of the offsets partitions this shard leads.
    fn led_offsets_stores(&self) -> Vec<Rc<RefCell<OffsetsPartition>>> {
        self.offsets
            .borrow()
            .iter()
            .filter(|(index, _)| {
                let partition = TopicPartition {
                    topic: OFFSETS_TOPIC.into(),
                    partition: **index,
                };
                self.replication(&partition)
                    .is_ok_and(|r| matches!(*r.role.borrow(), Role::Leader(_)))
            })
            .map(|(_, store)| store.clone())
            .collect()
    }

    /// Makes an append to an offsets partition durable on its in-sync replicas.
    async fn replicate_offsets(
        &self,
        leader: &OffsetsLeader,
        info: &weir_storage::AppendInfo,
    ) -> BrokerResult<()> {
        leader.log.finish_append(info).await?;
        self.wait_replicated(
            &leader.partition,
            &leader.log,
            &leader.replication,
            leader.leader_epoch,
            info.last_offset + 1,
            1,
        )
        .await
    }

    async fn commit_offsets(
        &self,
        group: &str,
        member: &MemberClaim,
        offsets: Vec<crate::router::OffsetCommit>,
    ) -> BrokerResult<()> {
        offsets::validate_group(group)?;
        self.groups
            .check_commit(
                group,
                &member.member_id,
                member.instance_id.as_deref(),
                member.generation,
            )
            .map_err(|error| BrokerError::kafka(error, format!("commit to group {group}")))?;
        let leader = self.offsets_partition(group)?;
        let pending =
            leader
                .store
                .borrow_mut()
                .start_commit(group, &offsets, leader.leader_epoch)?;
        match pending {
            Some(info) => self.replicate_offsets(&leader, &info).await,
            None => Ok(()),
        }
    }

    async fn delete_offsets(
        &self,
        group: &str,
        partitions: Option<&[TopicPartition]>,
    ) -> BrokerResult<Vec<TopicPartition>> {
        offsets::validate_group(group)?;
        let leader = self.offsets_partition(group)?;
        let (deleted, pending) =
            leader
                .store
                .borrow_mut()
                .start_delete(group, partitions, leader.leader_epoch)?;
        if let Some(info) = pending {
            self.replicate_offsets(&leader, &info).await?;
        }
        Ok(deleted)
    }

    async fn group_call(&self, call: GroupCall) -> GroupAnswer {
        match call {
            GroupCall::Join { group, request } => {
                GroupAnswer::Join(self.groups.join(&group, request).await)
            }
            GroupCall::Sync { group, request } => {
                GroupAnswer::Sync(self.groups.sync(&group, request).await)
            }
            GroupCall::Heartbeat { group, member } => {
                GroupAnswer::Heartbeat(self.groups.heartbeat(
                    &group,
                    &member.member_id,
                    member.instance_id.as_deref(),
                    member.generation,
                ))
            }
            GroupCall::Leave { group, members } => {
                GroupAnswer::Leave(self.groups.leave(&group, &members))
            }
            GroupCall::Describe { group } => GroupAnswer::Describe(self.groups.describe(&group)),
            GroupCall::Delete { group } => {
                let known = self.groups.describe(&group).is_some()
                    || self.fetch_offsets(&group).is_ok_and(|c| !c.is_empty());
                if !known {
                    return GroupAnswer::Delete(Err(ResponseError::GroupIdNotFound));
                }
                if let Err(error) = self.groups.delete(&group) {
                    return GroupAnswer::Delete(Err(error));
                }
                match self.delete_offsets(&group, None).await {
                    Ok(_) => GroupAnswer::Delete(Ok(())),
                    Err(error) => {
                        tracing::error!(%group, %error, "deleting a group's offsets failed");
                        GroupAnswer::Delete(Err(ResponseError::KafkaStorageError))
                    }
                }
            }
        }
    }

    fn fetch_offsets(&self, group: &str) -> BrokerResult<Vec<Committed>> {
        offsets::validate_group(group)?;
        Ok(self
            .offsets_partition(group)?
            .store
            .borrow()
            .committed(group))
    }

    /// Groups this shard coordinates, and groups with offsets committed here but no
    /// membership (listed as `Empty`).
    fn groups(&self) -> Vec<(String, GroupState, String)> {
        let mut groups = self.groups.list();
        let stores = self.led_offsets_stores();
        for store in &stores {
            for name in store.borrow().groups() {
                if !groups.iter().any(|(g, _, _)| g == name) {
                    groups.push((name.to_string(), GroupState::Empty, String::new()));
                }
            }
        }
        groups
    }

    /// Shard 0, at start: opens this broker's node of the controller quorum and starts
    /// its tasks (in `queue`): raft, publishing images to the shards, the controller, and
    /// this broker's registration and heartbeats.
    pub async fn start_cluster(
        self: &Rc<Self>,
        queue: glommio::TaskQueueHandle,
    ) -> BrokerResult<()> {
        assert_eq!(self.id, 0, "the cluster runs on shard 0");
        let cluster = Cluster::open(
            self.config.clone(),
            self.storage.clone(),
            self.peer_tls.native.clone(),
        )
        .await?;
        *self.cluster.borrow_mut() = Some(cluster.clone());
        let spawn = |task: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>| {
            glommio::spawn_local_into(task, queue)
                .map(|task| task.detach())
                .map_err(|e| BrokerError::Internal(format!("starting a cluster task: {e}")))
        };
        spawn(Box::pin(cluster.clone().run_quorum(self.clone())))?;
        spawn(Box::pin(cluster.clone().run_publisher(self.clone())))?;
        spawn(Box::pin(cluster.clone().run_controller(self.clone())))?;
        spawn(Box::pin(cluster.run_membership(self.clone())))?;
        Ok(())
    }

    /// Resolves once this broker serves as a member of the cluster: registered, unfenced,
    /// and the metadata holds the internal topics (or the broker stops).
    /// Whether the broker has its metadata: it is registered and unfenced, and the
    /// internal topics exist. Before, it would call every topic unknown.
    pub fn is_ready(&self) -> bool {
        if !self.ready.get() {
            let image = self.image();
            let ready = self.active.get()
                && image.topic(OFFSETS_TOPIC).is_some()
                && image.topic(TXN_TOPIC).is_some();
            self.ready.set(ready);
        }
        self.ready.get()
    }

    pub async fn wait_ready(&self) {
        loop {
            let changed = self.metadata_changed.listen();
            if self.is_ready() || self.shutting_down() {
                return;
            }
            futures_lite::future::or(changed, glommio::timer::sleep(Duration::from_millis(100)))
                .await;
        }
    }

    /// Shard 0: hands every shard the new image and waits until each has applied it.
    pub async fn broadcast(self: &Rc<Self>, image: Arc<MetadataImage>) -> BrokerResult<()> {
        let active = self.cluster()?.is_active_in(&image);
        let mut pending = Vec::with_capacity(self.count);
        for shard in 0..self.count {
            let call = ShardCall::ApplyMetadata {
                image: image.clone(),
                active,
            };
            pending.push(self.router.start(self, shard, call).await?);
        }
        for answer in pending {
            match answer.wait().await? {
                ShardAnswer::Admin(result) => result?,
                other => {
                    return Err(BrokerError::Internal(format!(
                        "unexpected answer {other:?}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Shard 0: a request for the active controller, wherever it runs; answers once this
    /// broker applied the decision.
    async fn ask_controller(
        &self,
        request: ControllerRequest,
    ) -> BrokerResult<weir_replication::ControllerAnswer> {
        self.cluster()?.ask(request).await
    }

    async fn alter_topic_configs(
        &self,
        name: &str,
        configs: Vec<(String, String)>,
    ) -> BrokerResult<()> {
        let overrides = configs.iter().cloned().collect();
        topic::log_config(&self.topic_defaults, &overrides).map_err(BrokerError::InvalidConfig)?;
        self.ask_controller(ControllerRequest::AlterTopicConfigs {
            name: name.to_string(),
            configs,
        })
        .await
        .map(|_| ())
    }

    /// Grows a topic to `count` partitions (Kafka's CreatePartitions; never shrinks).
    async fn create_partitions(&self, name: &str, count: i32) -> BrokerResult<()> {
        if count > topic::TOPIC_PARTITIONS_MAX {
            return Err(BrokerError::InvalidPartitions(format!(
                "{count} is over the limit of {}",
                topic::TOPIC_PARTITIONS_MAX
            )));
        }
        self.ask_controller(ControllerRequest::CreatePartitions {
            name: name.to_string(),
            count,
        })
        .await
        .map(|_| ())
    }

    /// Moves a partition's replicas (`weir partition move`).
    async fn move_partition(
        &self,
        partition: &TopicPartition,
        replicas: Vec<NodeId>,
    ) -> BrokerResult<()> {
        self.ask_controller(ControllerRequest::MovePartition {
            topic: partition.topic.clone(),
            partition: partition.partition,
            replicas,
        })
        .await
        .map(|_| ())
    }

    /// Moves a partition's log start offset forward (Kafka's DeleteRecords); -1 means the
    /// high watermark. Returns the new log start offset.
    async fn delete_records(&self, partition: &TopicPartition, offset: i64) -> BrokerResult<i64> {
        let (log, replication) = self.leader_log(partition)?;
        let hw = replication.high_watermark(&log);
        let offset = if offset == -1 { hw } else { offset };
        if offset < 0 || offset > hw {
            return Err(BrokerError::Storage(
                weir_storage::StorageError::OffsetOutOfRange {
                    offset,
                    log_start_offset: log.log_start_offset(),
                    log_end_offset: hw,
                },
            ));
        }
        log.advance_log_start_offset(offset).await?;
        Ok(log.log_start_offset())
    }

    /// Shard 0: reserves the next block of producer ids in the metadata log, so that no id
    /// is handed out twice, by any broker, even across restarts.
    async fn reserve_producer_ids(&self) -> BrokerResult<(i64, i64)> {
        let request = ControllerRequest::ReserveProducerIds {
            count: crate::metadata::PRODUCER_ID_BLOCK,
        };
        match self.ask_controller(request).await? {
            weir_replication::ControllerAnswer::ProducerIds { start, end } => Ok((start, end)),
            other => Err(BrokerError::Internal(format!(
                "the controller answered a producer-id reservation with {other:?}"
            ))),
        }
    }

    /// A producer id never handed out before, from this shard's block.
    pub async fn new_producer_id(self: &Rc<Self>) -> BrokerResult<i64> {
        let (next, end) = self.producer_ids.get();
        if next < end {
            self.producer_ids.set((next + 1, end));
            return Ok(next);
        }
        match self
            .router
            .call(self, 0, ShardCall::ReserveProducerIds)
            .await?
        {
            ShardAnswer::ProducerIds(result) => {
                let (start, end) = result?;
                self.producer_ids.set((start + 1, end));
                Ok(start)
            }
            other => Err(crate::ops::unexpected(other)),
        }
    }

    async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: Vec<(String, String)>,
        replication_factor: i16,
    ) -> BrokerResult<()> {
        topic::validate_topic_name(name).map_err(BrokerError::InvalidTopic)?;
        if name.starts_with("__") {
            return Err(BrokerError::InvalidTopic(format!(
                "{name}: names starting with __ are reserved"
            )));
        }
        if !(1..=topic::TOPIC_PARTITIONS_MAX).contains(&partitions) {
            return Err(BrokerError::InvalidPartitions(format!(
                "{partitions} is not within 1..={}",
                topic::TOPIC_PARTITIONS_MAX
            )));
        }
        let overrides = configs.iter().cloned().collect();
        topic::log_config(&self.topic_defaults, &overrides).map_err(BrokerError::InvalidConfig)?;
        self.ask_controller(ControllerRequest::CreateTopic {
            name: name.to_string(),
            partitions,
            replication_factor,
            configs,
        })
        .await
        .map(|_| ())
    }

    async fn delete_topic(&self, name: &str) -> BrokerResult<()> {
        self.ask_controller(ControllerRequest::DeleteTopic {
            name: name.to_string(),
        })
        .await
        .map(|_| ())
    }

    /// Makes this shard's partitions match `image`: opens the ones it now holds a replica
    /// of, closes the ones it no longer does (deleting the directories of deleted topics),
    /// and gives each the role the image says (leader, follower, or neither).
    async fn apply_metadata(
        self: &Rc<Self>,
        image: Arc<MetadataImage>,
        active: bool,
    ) -> BrokerResult<()> {
        let held: Vec<(
            TopicPartition,
            Arc<crate::metadata::TopicImage>,
            crate::metadata::PartitionState,
        )> = image
            .partitions()
            .filter(|(_, _, state)| {
                state
                    .replica(self.node)
                    .is_some_and(|r| r.shard as usize == self.id)
            })
            .map(|(topic, index, state)| {
                (
                    TopicPartition {
                        topic: topic.name.clone(),
                        partition: index,
                    },
                    topic.clone(),
                    state.clone(),
                )
            })
            .collect();
        let stale: Vec<TopicPartition> = self
            .partitions
            .borrow()
            .keys()
            .filter(|tp| !held.iter().any(|(h, _, _)| h == *tp))
            .cloned()
            .collect();
        for partition in stale {
            let deleted = image.topic(&partition.topic).is_none_or(|t| {
                t.partition(partition.partition)
                    .is_none_or(|p| p.replica(self.node).is_none())
            });
            self.close_partition(&partition, deleted).await?;
        }
        let now = crate::metadata::now_ms().max(0) as u64;
        for (partition, topic, state) in held {
            let open = self.partitions.borrow().get(&partition).cloned();
            let log = match open {
                None => self.open_partition(&partition, &topic, &state).await?,
                Some(log) => {
                    // The topic's configs may have changed (AlterConfigs).
                    let config = topic::topic_config(&self.topic_defaults, &topic.configs)
                        .map_err(BrokerError::InvalidConfig)?;
                    if log.config() != config.log {
                        log.set_config(config.log)?;
                    }
                    self.topic_configs
                        .borrow_mut()
                        .insert(partition.topic.clone(), config);
                    log
                }
            };
            let replication = self.replication(&partition)?;
            if replication.assume(self.node, active, &state, &log, now) {
                self.role_changed(&partition, &log, &replication).await?;
            }
        }
        self.authorizer.update(&image.acls);
        *self.metadata.borrow_mut() = image;
        self.active.set(active);
        self.metadata_changed.notify(usize::MAX);
        Ok(())
    }

    /// A partition took a new role: a new leader rebuilds what it keeps beside the log
    /// (idempotent producers' sequences, committed offsets) from the log its followers
    /// replicated; a new follower makes sure a fetcher runs for its leader.
    async fn role_changed(
        self: &Rc<Self>,
        partition: &TopicPartition,
        log: &Rc<Log>,
        replication: &Replication,
    ) -> BrokerResult<()> {
        let (state, hw) = (
            replication.state.borrow().clone(),
            replication.role.borrow().high_watermark(),
        );
        tracing::info!(
            node = self.node,
            %partition,
            leader = state.leader,
            epoch = state.leader_epoch,
            isr = ?state.isr,
            partition_epoch = state.partition_epoch,
            high_watermark = hw,
            log_end = log.log_end_offset(),
            durable = log.durable_offset(),
            "new role"
        );
        // Producer state is a leader's, rebuilt from its log when it starts leading; a
        // follower's log changes under it.
        self.producers.borrow_mut().remove(partition);
        self.forget_partition_txns(partition, log);
        // What an internal partition keeps in memory is a leader's, and is read again
        // from the log below: meanwhile nothing may decide on the old one.
        if partition.topic == OFFSETS_TOPIC {
            self.offsets.borrow_mut().remove(&partition.partition);
        } else if partition.topic == TXN_TOPIC {
            self.txn_stores.borrow_mut().remove(&partition.partition);
        }
        let leader = match &*replication.role.borrow() {
            Role::Leader(_) => None,
            Role::Follower(follower) => Some(follower.leader),
            Role::Offline { .. } => return Ok(()),
        };
        match leader {
            None => {
                tracing::debug!(%partition, epoch = replication.role.borrow().leader_epoch(), "leading");
                self.load_internal_partition(partition, log).await?;
            }
            Some(leader) => {
                if self.fetchers.borrow_mut().insert(leader) {
                    glommio::spawn_local(crate::fetcher::run(self.clone(), leader)).detach();
                }
            }
        }
        Ok(())
    }

    /// The partitions this shard follows `leader` for, with their logs and replication.
    pub fn followed(&self, leader: NodeId) -> Vec<(TopicPartition, Rc<Log>, Rc<Replication>)> {
        let partitions = self.partitions.borrow();
        self.replication
            .borrow()
            .iter()
            .filter(|(_, r)| matches!(&*r.role.borrow(), Role::Follower(f) if f.leader == leader))
            .filter_map(|(tp, r)| Some((tp.clone(), partitions.get(tp)?.clone(), r.clone())))
            .collect()
    }

    /// The fetcher for `leader` stops (it has nothing to fetch): the next follower role
    /// with that leader starts another.
    pub fn fetcher_stopped(&self, leader: NodeId) {
        self.fetchers.borrow_mut().remove(&leader);
    }

    fn partition_dir(&self, partition: &TopicPartition) -> std::path::PathBuf {
        self.config.data_dir.join(partition.to_string())
    }

    async fn open_partition(
        &self,
        partition: &TopicPartition,
        topic: &crate::metadata::TopicImage,
        state: &crate::metadata::PartitionState,
    ) -> BrokerResult<Rc<Log>> {
        let topic_config = topic::topic_config(&self.topic_defaults, &topic.configs)
            .map_err(BrokerError::InvalidConfig)?;
        let config = topic_config.log;
        self.topic_configs
            .borrow_mut()
            .insert(partition.topic.clone(), topic_config);
        let identity = LogIdentity {
            topic: partition.topic.clone(),
            partition: partition.partition,
        };
        let log = Log::open(
            &self.partition_dir(partition),
            &identity,
            config,
            self.storage.clone(),
        )
        .await?;
        crate::txn::partition::discard_checkpoint_beyond(&log).await?;
        self.load_internal_partition(partition, &log).await?;
        self.partitions
            .borrow_mut()
            .insert(partition.clone(), log.clone());
        self.replication
            .borrow_mut()
            .insert(partition.clone(), Rc::new(Replication::new(state.clone())));
        Ok(log)
    }

    /// What an internal topic's partition keeps in memory: committed offsets, or the
    /// transactions this shard coordinates.
    async fn load_internal_partition(
        &self,
        partition: &TopicPartition,
        log: &Rc<Log>,
    ) -> BrokerResult<()> {
        if partition.topic == OFFSETS_TOPIC {
            let store = OffsetsPartition::load(log.clone()).await?;
            self.offsets
                .borrow_mut()
                .insert(partition.partition, Rc::new(RefCell::new(store)));
        } else if partition.topic == TXN_TOPIC {
            let store = TxnStore::load(log.clone()).await?;
            self.txn_stores
                .borrow_mut()
                .insert(partition.partition, Rc::new(RefCell::new(store)));
        }
        Ok(())
    }

    async fn close_partition(&self, partition: &TopicPartition, delete: bool) -> BrokerResult<()> {
        let log = self.partitions.borrow_mut().remove(partition);
        self.producers.borrow_mut().remove(partition);
        self.txns.borrow_mut().remove(partition);
        self.replica_txns.borrow_mut().remove(partition);
        if partition.topic == TXN_TOPIC {
            self.txn_stores.borrow_mut().remove(&partition.partition);
        }
        if let Some(replication) = self.replication.borrow_mut().remove(partition) {
            // Waiters see the partition gone and answer.
            *replication.role.borrow_mut() = Role::Offline { high_watermark: 0 };
            replication.changed.notify(usize::MAX);
        }
        if partition.topic == OFFSETS_TOPIC {
            self.offsets.borrow_mut().remove(&partition.partition);
        }
        if let Some(log) = log {
            log.close().await?;
        }
        if delete {
            let dir = self.partition_dir(partition);
            let doomed = deleted_dir_name(&dir);
            std::fs::rename(&dir, &doomed)
                .map_err(|e| BrokerError::Internal(format!("deleting {}: {e}", dir.display())))?;
            // Its files' blocks go at the shard's delete rate: on ext4 mounted with
            // `discard` each unlink took 0.5-1.3 ms of the disk here, and a deleted
            // topic's thousand segments would have stalled durable appends for a second.
            self.storage.free_dir(doomed);
        }
        Ok(())
    }

    /// Background work, every `tick_ms`: write-behind and interval syncs; retention every
    /// `retention_check_ms`, and after each roll. Returns when shutdown begins.
    pub async fn run_background(self: Rc<Self>) {
        let tick = Duration::from_millis(self.config.tick_ms);
        let retention_every = Duration::from_millis(self.config.retention_check_ms);
        let mut last_retention = Instant::now();
        let mut last_group_tick = Instant::now();
        let mut last_txn_tick = Instant::now();
        while !self.shutting_down() {
            glommio::timer::sleep(tick).await;
            if last_group_tick.elapsed() >= GROUP_TICK {
                last_group_tick = Instant::now();
                self.groups.tick();
                self.replication_tick();
            }
            if last_txn_tick.elapsed() >= TXN_TICK {
                last_txn_tick = Instant::now();
                self.txn_tick();
                self.checkpoint_txns().await;
            }
            let logs: Vec<Rc<Log>> = self.partitions.borrow().values().cloned().collect();
            for log in &logs {
                if let Err(error) = log.tick().await {
                    tracing::error!(log = %log.dir().display(), %error, "background write failed");
                }
            }
            let retention_due = last_retention.elapsed() >= retention_every;
            if retention_due {
                last_retention = Instant::now();
            }
            // A log that rolled gets its retention at once too: the segment it deletes
            // then becomes the spare file its next roll reuses.
            for log in &logs {
                if (retention_due || log.rolled_since_retention())
                    && let Err(error) = log.apply_retention(crate::metadata::now_ms()).await
                {
                    tracing::error!(log = %log.dir().display(), %error, "retention failed");
                }
            }
        }
        self.stopping.notify(usize::MAX);
        // Requests waiting in a rebalance would hold the drain up for minutes.
        self.groups.release_waiters();
    }

    /// Every leader: its high watermark moves with what became durable since, and ISR
    /// changes it wants go to the controller.
    fn replication_tick(self: &Rc<Self>) {
        let now = crate::metadata::now_ms().max(0) as u64;
        let config = weir_replication::ReplicationConfig {
            replica_lag_time_max_ms: self.config.replica_lag_time_max_ms,
            isr_change_retry_ms: ISR_CHANGE_RETRY_MS,
        };
        let leaders: Vec<(TopicPartition, Rc<Log>, Rc<Replication>)> = {
            let partitions = self.partitions.borrow();
            self.replication
                .borrow()
                .iter()
                .filter(|(_, r)| matches!(&*r.role.borrow(), Role::Leader(_)))
                .filter_map(|(tp, r)| Some((tp.clone(), partitions.get(tp)?.clone(), r.clone())))
                .collect()
        };
        for (partition, log, replication) in leaders {
            replication.high_watermark(&log);
            let change = match &mut *replication.role.borrow_mut() {
                Role::Leader(leader) => leader
                    .isr_change(&config, now)
                    .map(|isr| (leader.leader_epoch(), leader.partition_epoch(), isr)),
                _ => None,
            };
            let Some((leader_epoch, partition_epoch, isr)) = change else {
                continue;
            };
            tracing::info!(%partition, ?isr, "asking the controller to change the ISR");
            let shard = self.clone();
            glommio::spawn_local(async move {
                let request = ControllerRequest::AlterPartition {
                    topic: partition.topic.clone(),
                    partition: partition.partition,
                    leader: shard.node,
                    leader_epoch,
                    partition_epoch,
                    isr: isr.clone(),
                };
                let answer = shard
                    .router
                    .call(&shard, 0, ShardCall::Controller { request })
                    .await;
                if let Ok(ShardAnswer::Controller(Err(BrokerError::Controller(
                    weir_replication::ControllerError::IneligibleReplica(reason),
                )))) = answer
                {
                    tracing::debug!(%partition, %reason, "ISR change refused");
                    if let Ok(replication) = shard.replication(&partition)
                        && let Role::Leader(leader) = &mut *replication.role.borrow_mut()
                        && leader.leader_epoch() == leader_epoch
                    {
                        leader.isr_change_refused(&isr);
                    }
                }
            })
            .detach();
        }
    }

    /// Compaction, one log at a time in the background task queue, in rounds: every
    /// `log_cleaner_backoff_ms`, each log whose dirty ratio is at least its
    /// `min.cleanable.dirty.ratio` (or with a record older than `max.compaction.lag.ms`
    /// uncompacted) gets one pass, overdue logs first, then by dirty ratio. Waiting a
    /// round between passes of a log lets its dirty segments gather, so one pass (one
    /// segment swap, one set of directory syncs) covers many: back-to-back passes of a
    /// busy log measured 1.6x the p99 of durable produce beside it
    /// (docs/BENCHMARKS.md). Returns when shutdown begins.
    pub async fn run_compaction(self: Rc<Self>) {
        let every = Duration::from_millis(self.config.log_cleaner_backoff_ms);
        let map_bytes = self.storage.config().compaction_map_bytes;
        while !self.shutting_down() {
            let stopping = self.stopping.listen();
            if !self.shutting_down() {
                futures_lite::future::or(
                    async {
                        glommio::timer::sleep(every).await;
                    },
                    stopping,
                )
                .await;
            }
            for (partition, log) in self.logs_to_compact() {
                if self.shutting_down() {
                    break;
                }
                let now_ms = crate::metadata::now_ms();
                // Only what every in-sync replica holds: above the high watermark a new
                // leader may truncate, and a key's older value removed for a newer one
                // that is then cut would be lost. (Without transactions every record
                // below it is stable.)
                // Nor anything of an open transaction, which may yet be aborted; and
                // aborted records are dropped without shadowing anything.
                let txns = match self.compaction_txns(&partition, &log).await {
                    Ok(txns) => txns,
                    Err(error) => {
                        tracing::warn!(%partition, %error, "no transaction state; not compacted");
                        continue;
                    }
                };
                let stable_offset = txns
                    .borrow()
                    .last_stable_offset(self.high_watermark(&partition, &log));
                let aborted = |header: &weir_wire::BatchHeader| txns.borrow().is_aborted(header);
                match log
                    .compact_transactional(now_ms, stable_offset, map_bytes, &aborted)
                    .await
                {
                    Ok(stats) => {
                        self.metrics.record_compaction(&stats);
                        tracing::debug!(%partition, ?stats, "compacted");
                    }
                    // The partition was deleted or moved meanwhile (a file the pass was
                    // about to open may be gone already).
                    Err(weir_storage::StorageError::Closed { .. }) => {}
                    Err(_) if log.is_closed() => {}
                    Err(error) => {
                        tracing::warn!(%partition, %error, "compaction failed; retrying later");
                    }
                }
            }
        }
    }

    /// The logs a compaction round works on, in order: overdue ones first, then by
    /// dirty ratio.
    fn logs_to_compact(&self) -> Vec<(TopicPartition, Rc<Log>)> {
        let now_ms = crate::metadata::now_ms();
        let partitions = self.partitions.borrow();
        let mut due: Vec<(f64, &TopicPartition, &Rc<Log>)> = Vec::new();
        for (partition, log) in partitions.iter() {
            let stable_offset =
                self.last_stable_offset(partition, self.high_watermark(partition, log));
            let Some(candidate) = log.compaction_candidate(now_ms, stable_offset) else {
                continue;
            };
            let ratio = candidate.dirty_ratio();
            if candidate.overdue || ratio >= log.config().min_cleanable_dirty_ratio {
                let rank = if candidate.overdue {
                    2.0 + ratio
                } else {
                    ratio
                };
                due.push((rank, partition, log));
            }
        }
        due.sort_by(|a, b| b.0.total_cmp(&a.0));
        due.into_iter()
            .map(|(_, partition, log)| (partition.clone(), log.clone()))
            .collect()
    }

    /// Closes every log (flushing it).
    pub async fn close(&self) {
        let logs: Vec<Rc<Log>> = std::mem::take(&mut *self.partitions.borrow_mut())
            .into_values()
            .collect();
        for log in logs {
            if let Err(error) = log.close().await {
                tracing::error!(log = %log.dir().display(), %error, "closing failed");
            }
        }
    }
}

/// An offsets partition this shard leads.
struct OffsetsLeader {
    partition: TopicPartition,
    store: Rc<RefCell<OffsetsPartition>>,
    log: Rc<Log>,
    replication: Rc<Replication>,
    leader_epoch: i32,
}

/// Kafka's broker-side rewrites of a produced batch: into the topic's codec when its
/// `compression.type` is not `producer`, and stamped with the broker's time under
/// `message.timestamp.type=LogAppendTime`. Returns whether the batch changed.
fn rewrite(
    batch: &mut BytesMut,
    header: &weir_wire::BatchHeader,
    config: &topic::TopicConfig,
) -> BrokerResult<bool> {
    let recompress = matches!(config.compression, topic::CompressionType::Codec(codec)
        if header.attributes.compression() != Some(codec) && !header.attributes.is_control());
    let stamp = config.timestamp_type == weir_wire::TimestampType::LogAppendTime;
    if !recompress && !stamp {
        return Ok(false);
    }
    // A rewritten batch gets a new CRC: check the producer's first, or corruption would
    // be stored as valid.
    weir_wire::batch::validate(batch, usize::MAX)?;
    if let (true, topic::CompressionType::Codec(codec)) = (recompress, config.compression) {
        *batch = weir_wire::record::recompress(batch, codec, DECOMPRESSED_BATCH_BYTES_MAX)?;
    }
    if stamp {
        weir_wire::batch::stamp_log_append_time(batch, crate::metadata::now_ms())?;
    }
    Ok(true)
}

/// How long a produce with `acks=all` (or a commit of offsets) waits for the in-sync
/// replicas before it answers REQUEST_TIMED_OUT (Kafka's default request timeout).
const REPLICATION_WAIT_MAX: Duration = Duration::from_secs(30);

/// How long a leader waits for its ISR change to be applied before proposing it again.
const ISR_CHANGE_RETRY_MS: u64 = 1_000;

/// The answer to a follower's fetch of one partition.
#[derive(Debug)]
pub struct ReplicaFetched {
    pub batches: Vec<bytes::Bytes>,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    /// Where the follower's log diverges: its epoch and that epoch's end here.
    pub diverging: Option<(i32, i64)>,
}

fn not_leader(partition: &TopicPartition, node: NodeId, leader: NodeId) -> BrokerError {
    BrokerError::NotLeader {
        topic: partition.topic.clone(),
        partition: partition.partition,
        node,
        leader,
    }
}

/// The most a produced batch may decompress to when its records must be looked at.
const DECOMPRESSED_BATCH_BYTES_MAX: usize = 64 << 20;

/// A compacted topic keeps the latest record of each key: a record without a key has no
/// place in it (Kafka answers INVALID_RECORD).
fn check_keys(partition: &TopicPartition, batch: &[u8]) -> BrokerResult<()> {
    let keyless = weir_wire::record::keyless_records(batch, DECOMPRESSED_BATCH_BYTES_MAX)?;
    if keyless.is_empty() {
        return Ok(());
    }
    Err(BrokerError::InvalidRecords {
        message: format!(
            "compacted topic {} cannot accept records without a key ({} in the batch for partition {})",
            partition.topic,
            keyless.len(),
            partition.partition
        ),
        records: keyless,
    })
}

fn unknown(partition: &TopicPartition) -> BrokerError {
    BrokerError::UnknownTopicOrPartition {
        topic: partition.topic.clone(),
        partition: partition.partition,
    }
}

/// Completes when any of the listeners fires.
async fn any_of(mut listeners: Vec<EventListener>) {
    futures_lite::future::poll_fn(|cx| {
        for listener in &mut listeners {
            if std::pin::Pin::new(listener).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}
