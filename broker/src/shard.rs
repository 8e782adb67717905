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
use weir_storage::{FlushPolicy, Log, LogIdentity, ShardStorage};
use weir_wire::native::schema::{Acks, OffsetSpec};

use crate::config::BrokerConfig;
use crate::error::{BrokerError, BrokerResult};
use crate::group::{Coordinator, GroupLimits, GroupState};
use crate::metadata::{MetadataImage, MetadataLog, MetadataRecord, OFFSETS_TOPIC};
use crate::metrics::ShardMetrics;
use crate::offsets::{self, OffsetsPartition};
use crate::producers::{ProducerTable, SequenceCheck};
use crate::router::{
    CallHandler, Committed, GroupAnswer, GroupCall, MemberClaim, PartitionStatus, Router,
    ShardAnswer, ShardCall, TopicPartition,
};
use crate::topic;

/// How far back a partition's idempotent-producer state is rebuilt (in offsets, within
/// the active segment). A producer whose batches are all older is treated as new.
const PRODUCER_REBUILD_OFFSETS: i64 = 100_000;

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
    /// Idempotent producers' sequence state per partition, loaded on first use.
    producers: RefCell<BTreeMap<TopicPartition, ProducerTable>>,
    producer_loads: Semaphore,
    /// This shard's block of producer ids: the next one and the end.
    producer_ids: Cell<(i64, i64)>,
    metadata: RefCell<Arc<MetadataImage>>,
    /// Fired when a new metadata image is applied.
    pub metadata_changed: Event,
    /// Shard 0 only: the metadata log, taken out while an admin operation runs.
    controller: RefCell<Option<MetadataLog>>,
    controller_lock: Semaphore,
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

/// Consumers may read up to here: what is durable, unless the topic opted out of syncing.
pub fn high_watermark(log: &Log) -> i64 {
    match log.config().flush {
        FlushPolicy::Never => log.log_end_offset(),
        FlushPolicy::EveryBatch | FlushPolicy::Interval { .. } => log.durable_offset(),
    }
}

fn status(log: &Log) -> PartitionStatus {
    PartitionStatus {
        log_start_offset: log.log_start_offset(),
        high_watermark: high_watermark(log),
        log_end_offset: log.log_end_offset(),
        size_bytes: log.size_bytes(),
    }
}

impl CallHandler for Shard {
    async fn handle(self: Rc<Self>, call: ShardCall) -> ShardAnswer {
        self.answer(call).await
    }
}

impl Shard {
    pub fn new(
        id: usize,
        count: usize,
        config: Arc<BrokerConfig>,
        router: Rc<Router>,
        shutdown: Arc<AtomicBool>,
    ) -> anyhow::Result<Rc<Shard>> {
        let limits = GroupLimits {
            min_session_timeout_ms: config.group_min_session_timeout_ms,
            max_session_timeout_ms: config.group_max_session_timeout_ms,
            initial_rebalance_delay_ms: config.group_initial_rebalance_delay_ms,
        };
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
            producers: RefCell::new(BTreeMap::new()),
            producer_loads: Semaphore::new(1),
            producer_ids: Cell::new((0, 0)),
            metadata: RefCell::new(Arc::new(MetadataImage::default())),
            metadata_changed: Event::new(),
            controller: RefCell::new(None),
            controller_lock: Semaphore::new(1),
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

    /// The shard that owns `partition`, from the current metadata.
    pub fn owner(&self, partition: &TopicPartition) -> BrokerResult<usize> {
        self.metadata
            .borrow()
            .topic(&partition.topic)
            .and_then(|t| t.owner(partition.partition))
            .ok_or_else(|| unknown(partition))
    }

    fn log(&self, partition: &TopicPartition) -> BrokerResult<Rc<Log>> {
        self.partitions
            .borrow()
            .get(partition)
            .cloned()
            .ok_or_else(|| unknown(partition))
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
                max_bytes,
            } => ShardAnswer::Fetch(self.fetch(&partition, offset, max_bytes).await),
            ShardCall::Watch {
                partitions,
                timeout,
            } => {
                self.watch(&partitions, timeout).await;
                ShardAnswer::Watched
            }
            ShardCall::ListOffsets {
                partition,
                spec,
                timestamp,
            } => ShardAnswer::ListOffsets(self.list_offsets(&partition, spec, timestamp).await),
            ShardCall::PartitionStatus { partition } => {
                ShardAnswer::PartitionStatus(self.log(&partition).map(|l| status(&l)))
            }
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
            ShardCall::ListGroups => ShardAnswer::ListGroups(self.groups()),
            ShardCall::CreateTopic {
                name,
                partitions,
                configs,
            } => ShardAnswer::Admin(self.create_topic(&name, partitions, configs).await),
            ShardCall::DeleteTopic { name } => ShardAnswer::Admin(self.delete_topic(&name).await),
            ShardCall::AlterTopicConfigs { name, configs } => {
                ShardAnswer::Admin(self.alter_topic_configs(&name, configs).await)
            }
            ShardCall::CreatePartitions { name, count } => {
                ShardAnswer::Admin(self.create_partitions(&name, count).await)
            }
            ShardCall::DeleteRecords { partition, offset } => {
                ShardAnswer::DeleteRecords(self.delete_records(&partition, offset).await)
            }
            ShardCall::ReserveProducerIds => {
                ShardAnswer::ProducerIds(self.reserve_producer_ids().await)
            }
            ShardCall::ApplyMetadata { image } => {
                ShardAnswer::Admin(self.apply_metadata(image).await)
            }
            ShardCall::Metrics => {
                let partitions = self
                    .partitions
                    .borrow()
                    .iter()
                    .map(|(tp, log)| (tp.clone(), status(log)))
                    .collect();
                let mut snapshot =
                    self.metrics
                        .snapshot(self.id, self.storage.cache_bytes(), partitions);
                let stores: Vec<_> = self.offsets.borrow().values().cloned().collect();
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
        let log = self.log(partition)?;
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
        if let Some(config) = config {
            // One broker is one in-sync replica: acks=all cannot be met above that.
            if acks == Acks::All && config.min_insync_replicas > IN_SYNC_REPLICAS {
                return Err(BrokerError::kafka(
                    ResponseError::NotEnoughReplicas,
                    format!(
                        "{partition} has {IN_SYNC_REPLICAS} in-sync replica, fewer than its min.insync.replicas {}",
                        config.min_insync_replicas
                    ),
                ));
            }
            for (batch, header) in batches.iter_mut().zip(&mut headers) {
                if rewrite(batch, header, &config)? {
                    *header = weir_wire::BatchHeader::parse(batch)?;
                }
            }
        }
        if headers.iter().any(|h| h.producer_id >= 0) {
            self.load_producers(partition, &log).await?;
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
                        BrokerError::kafka(error, format!("batch for {partition}"))
                    })?,
                    None => SequenceCheck::Append,
                };
                checks.push(check);
            }
            let mut first_offset = None;
            let mut last_append = None;
            let mut durable_needed = 0;
            for ((batch, header), check) in batches.into_iter().zip(&headers).zip(checks) {
                match check {
                    SequenceCheck::Append => {
                        let info = log.start_append(batch, 0)?;
                        if let Some(table) = table.as_mut() {
                            table.record(header, info.base_offset);
                        }
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
        if acks == Acks::All && matches!(log.config().flush, FlushPolicy::Interval { .. }) {
            log.wait_durable(durable_needed).await?;
        }
        Ok((first_offset, log.log_start_offset()))
    }

    /// Rebuilds the partition's idempotent-producer state from its recent batches, once,
    /// before its first idempotent batch since the partition was opened. Loads run one at
    /// a time, in arrival order, so requests waiting here keep their order.
    async fn load_producers(&self, partition: &TopicPartition, log: &Rc<Log>) -> BrokerResult<()> {
        if self.producers.borrow().contains_key(partition) {
            return Ok(());
        }
        let _turn = self
            .producer_loads
            .acquire_permit(1)
            .await
            .map_err(|_| BrokerError::ShuttingDown)?;
        if self.producers.borrow().contains_key(partition) {
            return Ok(());
        }
        let mut table = ProducerTable::default();
        let active_base = log.segment_base_offsets().last().copied().unwrap_or(0);
        let mut offset = active_base
            .max(log.log_end_offset() - PRODUCER_REBUILD_OFFSETS)
            .max(log.log_start_offset());
        loop {
            let batches = log.read(offset, 1 << 20, i64::MAX).await?;
            let Some(last) = batches.last() else { break };
            offset = weir_wire::BatchHeader::parse(last)?.next_offset();
            for batch in &batches {
                let header = weir_wire::BatchHeader::parse(batch)?;
                table.record(&header, header.base_offset);
            }
        }
        self.producers.borrow_mut().insert(partition.clone(), table);
        Ok(())
    }

    async fn fetch(
        &self,
        partition: &TopicPartition,
        offset: i64,
        max_bytes: usize,
    ) -> BrokerResult<(Vec<bytes::Bytes>, PartitionStatus)> {
        let log = self.log(partition)?;
        let status = status(&log);
        let batches = log.read(offset, max_bytes, status.high_watermark).await?;
        Ok((batches, status))
    }

    /// Waits until one of the partitions has data readable at its offset, or the timeout.
    async fn watch(&self, partitions: &[(TopicPartition, i64)], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let logs: Vec<(Rc<Log>, i64)> = partitions
                .iter()
                .filter_map(|(tp, offset)| Some((self.log(tp).ok()?, *offset)))
                .collect();
            let listeners: Vec<EventListener> =
                logs.iter().map(|(log, _)| log.listen_changes()).collect();
            let ready = logs
                .iter()
                .any(|(log, offset)| high_watermark(log) > *offset);
            let Some(remaining) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            if ready || logs.is_empty() || self.shutting_down() {
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
    ) -> BrokerResult<(i64, i64)> {
        let log = self.log(partition)?;
        match spec {
            OffsetSpec::Earliest => Ok((log.log_start_offset(), -1)),
            OffsetSpec::Latest => Ok((high_watermark(&log), -1)),
            _ => {
                let found = log.offset_for_timestamp(timestamp).await?;
                let hw = high_watermark(&log);
                Ok(found
                    .filter(|f| f.offset < hw)
                    .map_or((-1, -1), |f| (f.offset, f.timestamp)))
            }
        }
    }

    fn offsets_partition(&self, group: &str) -> BrokerResult<Rc<RefCell<OffsetsPartition>>> {
        let partitions = self
            .image()
            .topic(OFFSETS_TOPIC)
            .map_or(1, |t| t.partition_count());
        let index = offsets::partition_for(group, partitions);
        self.offsets.borrow().get(&index).cloned().ok_or_else(|| {
            BrokerError::Internal(format!(
                "shard {} does not hold {OFFSETS_TOPIC}-{index}",
                self.id
            ))
        })
    }

    async fn commit_offsets(
        &self,
        group: &str,
        member: &MemberClaim,
        offsets: Vec<(TopicPartition, i64, String)>,
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
        let store = self.offsets_partition(group)?;
        let pending = store.borrow_mut().start_commit(group, &offsets)?;
        match pending {
            Some((log, info)) => Ok(log.finish_append(&info).await?),
            None => Ok(()),
        }
    }

    async fn delete_offsets(
        &self,
        group: &str,
        partitions: Option<&[TopicPartition]>,
    ) -> BrokerResult<Vec<TopicPartition>> {
        offsets::validate_group(group)?;
        let store = self.offsets_partition(group)?;
        let (deleted, pending) = store.borrow_mut().start_delete(group, partitions)?;
        if let Some((log, info)) = pending {
            log.finish_append(&info).await?;
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
        Ok(self.offsets_partition(group)?.borrow().committed(group))
    }

    /// Groups this shard coordinates, and groups with offsets committed here but no
    /// membership (listed as `Empty`).
    fn groups(&self) -> Vec<(String, GroupState, String)> {
        let mut groups = self.groups.list();
        let stores: Vec<_> = self.offsets.borrow().values().cloned().collect();
        for store in &stores {
            for name in store.borrow().groups() {
                if !groups.iter().any(|(g, _, _)| g == name) {
                    groups.push((name.to_string(), GroupState::Empty, String::new()));
                }
            }
        }
        groups
    }

    /// Shard 0, at start: opens the metadata log, creates the internal topics it lacks and
    /// moves partitions of shards that no longer exist.
    pub async fn start_controller(self: &Rc<Self>) -> BrokerResult<()> {
        assert_eq!(self.id, 0, "only shard 0 is the controller");
        let mut log = MetadataLog::open(&self.config.data_dir, self.storage.clone()).await?;
        for record in log.image().reassignments(self.count) {
            log.append(record).await?;
        }
        if log.image().cluster_id.is_empty() {
            let cluster_id = uuid::Uuid::from_bytes(crate::metadata::random_id())
                .simple()
                .to_string();
            log.append(MetadataRecord::ClusterCreated { cluster_id })
                .await?;
        }
        if log.image().topic(OFFSETS_TOPIC).is_none() {
            let partitions = self.config.offsets_topic_partitions as usize;
            let record = MetadataRecord::TopicCreated {
                name: OFFSETS_TOPIC.into(),
                id: crate::metadata::random_id(),
                shards: log.image().assign(partitions, self.count),
                configs: offsets_topic_configs(),
                internal: true,
            };
            log.append(record).await?;
        } else if log.image().topic(OFFSETS_TOPIC).is_some_and(|topic| {
            topic.configs.get("cleanup.policy").map(String::as_str) != Some("compact")
        }) {
            // Made by a weir that did not compact it yet.
            log.append(MetadataRecord::TopicConfigsChanged {
                name: OFFSETS_TOPIC.into(),
                configs: offsets_topic_configs(),
            })
            .await?;
        }
        let image = Arc::new(log.image().clone());
        *self.controller.borrow_mut() = Some(log);
        self.broadcast(image).await
    }

    /// Hands every shard the new image and waits until each has applied it.
    async fn broadcast(self: &Rc<Self>, image: Arc<MetadataImage>) -> BrokerResult<()> {
        let mut pending = Vec::with_capacity(self.count);
        for shard in 0..self.count {
            pending.push(
                self.router
                    .start(
                        self,
                        shard,
                        ShardCall::ApplyMetadata {
                            image: image.clone(),
                        },
                    )
                    .await?,
            );
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

    /// Runs one metadata change on the controller: append the record, then broadcast.
    async fn change_metadata(
        self: &Rc<Self>,
        decide: impl FnOnce(&MetadataImage) -> BrokerResult<MetadataRecord>,
    ) -> BrokerResult<()> {
        if self.id != 0 {
            return Err(BrokerError::Internal(
                "metadata changes run on shard 0".into(),
            ));
        }
        let _permit = self
            .controller_lock
            .acquire_permit(1)
            .await
            .map_err(|_| BrokerError::ShuttingDown)?;
        let mut log = self
            .controller
            .borrow_mut()
            .take()
            .ok_or(BrokerError::ShuttingDown)?;
        let result = match decide(log.image()) {
            Ok(record) => log
                .append(record)
                .await
                .map(|image| Arc::new(image.clone())),
            Err(error) => Err(error),
        };
        *self.controller.borrow_mut() = Some(log);
        self.broadcast(result?).await
    }

    async fn alter_topic_configs(
        self: &Rc<Self>,
        name: &str,
        configs: Vec<(String, String)>,
    ) -> BrokerResult<()> {
        let overrides = configs.iter().cloned().collect();
        topic::log_config(&self.topic_defaults, &overrides).map_err(BrokerError::InvalidConfig)?;
        self.change_metadata(|image| match image.topic(name) {
            None => Err(BrokerError::UnknownTopic(name.to_string())),
            Some(topic) if topic.internal => {
                Err(BrokerError::InvalidTopic(format!("{name} is internal")))
            }
            Some(_) => Ok(MetadataRecord::TopicConfigsChanged {
                name: name.to_string(),
                configs,
            }),
        })
        .await
    }

    /// Grows a topic to `count` partitions (Kafka's CreatePartitions; never shrinks).
    async fn create_partitions(self: &Rc<Self>, name: &str, count: i32) -> BrokerResult<()> {
        let shard_count = self.count;
        self.change_metadata(|image| {
            let topic = image
                .topic(name)
                .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
            let current = topic.partition_count();
            if topic.internal {
                return Err(BrokerError::InvalidTopic(format!("{name} is internal")));
            }
            if count <= current {
                return Err(BrokerError::InvalidPartitions(format!(
                    "{name} has {current} partitions; the count can only grow"
                )));
            }
            if count > topic::TOPIC_PARTITIONS_MAX {
                return Err(BrokerError::InvalidPartitions(format!(
                    "{count} is over the limit of {}",
                    topic::TOPIC_PARTITIONS_MAX
                )));
            }
            Ok(MetadataRecord::PartitionsAdded {
                name: name.to_string(),
                shards: image.assign((count - current) as usize, shard_count),
            })
        })
        .await
    }

    /// Moves a partition's log start offset forward (Kafka's DeleteRecords); -1 means the
    /// high watermark. Returns the new log start offset.
    async fn delete_records(&self, partition: &TopicPartition, offset: i64) -> BrokerResult<i64> {
        let log = self.log(partition)?;
        let hw = high_watermark(&log);
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
    /// is handed out twice, even across restarts.
    async fn reserve_producer_ids(self: &Rc<Self>) -> BrokerResult<(i64, i64)> {
        let end = Cell::new(0);
        self.change_metadata(|image| {
            let next = image.producer_ids_end + crate::metadata::PRODUCER_ID_BLOCK;
            end.set(next);
            Ok(MetadataRecord::ProducerIdsReserved { end: next })
        })
        .await?;
        Ok((end.get() - crate::metadata::PRODUCER_ID_BLOCK, end.get()))
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
        self: &Rc<Self>,
        name: &str,
        partitions: i32,
        configs: Vec<(String, String)>,
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
        let count = self.count;
        self.change_metadata(|image| {
            if image.topic(name).is_some() {
                return Err(BrokerError::TopicAlreadyExists(name.to_string()));
            }
            let shards = image.assign(partitions as usize, count);
            Ok(MetadataRecord::TopicCreated {
                name: name.to_string(),
                id: crate::metadata::random_id(),
                shards,
                configs,
                internal: false,
            })
        })
        .await
    }

    async fn delete_topic(self: &Rc<Self>, name: &str) -> BrokerResult<()> {
        self.change_metadata(|image| match image.topic(name) {
            None => Err(BrokerError::UnknownTopic(name.to_string())),
            Some(topic) if topic.internal => {
                Err(BrokerError::InvalidTopic(format!("{name} is internal")))
            }
            Some(_) => Ok(MetadataRecord::TopicDeleted {
                name: name.to_string(),
            }),
        })
        .await
    }

    /// Makes this shard's partitions match `image`: opens the ones it now owns, closes the
    /// ones it no longer does, and deletes the directories of deleted topics.
    async fn apply_metadata(&self, image: Arc<MetadataImage>) -> BrokerResult<()> {
        let owned: Vec<(TopicPartition, Arc<crate::metadata::TopicImage>)> = image
            .topics
            .values()
            .flat_map(|t| {
                t.shards
                    .iter()
                    .enumerate()
                    .filter(|(_, shard)| **shard as usize == self.id)
                    .map(move |(p, _)| {
                        (
                            TopicPartition {
                                topic: t.name.clone(),
                                partition: p as i32,
                            },
                            t.clone(),
                        )
                    })
            })
            .collect();
        let stale: Vec<TopicPartition> = self
            .partitions
            .borrow()
            .keys()
            .filter(|tp| !owned.iter().any(|(o, _)| o == *tp))
            .cloned()
            .collect();
        for partition in stale {
            self.close_partition(&partition, image.topic(&partition.topic).is_none())
                .await?;
        }
        for (partition, topic) in owned {
            let open = self.partitions.borrow().get(&partition).cloned();
            match open {
                None => self.open_partition(&partition, &topic).await?,
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
                }
            }
        }
        *self.metadata.borrow_mut() = image;
        self.metadata_changed.notify(usize::MAX);
        Ok(())
    }

    fn partition_dir(&self, partition: &TopicPartition) -> std::path::PathBuf {
        self.config.data_dir.join(partition.to_string())
    }

    async fn open_partition(
        &self,
        partition: &TopicPartition,
        topic: &crate::metadata::TopicImage,
    ) -> BrokerResult<()> {
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
        if partition.topic == OFFSETS_TOPIC {
            let store = OffsetsPartition::load(log.clone()).await?;
            self.offsets
                .borrow_mut()
                .insert(partition.partition, Rc::new(RefCell::new(store)));
        }
        self.partitions.borrow_mut().insert(partition.clone(), log);
        Ok(())
    }

    async fn close_partition(&self, partition: &TopicPartition, delete: bool) -> BrokerResult<()> {
        let log = self.partitions.borrow_mut().remove(partition);
        self.producers.borrow_mut().remove(partition);
        if let Some(log) = log {
            log.close().await?;
        }
        if delete {
            let dir = self.partition_dir(partition);
            std::fs::remove_dir_all(&dir)
                .map_err(|e| BrokerError::Internal(format!("deleting {}: {e}", dir.display())))?;
        }
        Ok(())
    }

    /// Background work, every `tick_ms`: write-behind and interval syncs; retention every
    /// `retention_check_ms`. Returns when shutdown begins.
    pub async fn run_background(self: Rc<Self>) {
        let tick = Duration::from_millis(self.config.tick_ms);
        let retention_every = Duration::from_millis(self.config.retention_check_ms);
        let mut last_retention = Instant::now();
        let mut last_group_tick = Instant::now();
        while !self.shutting_down() {
            glommio::timer::sleep(tick).await;
            if last_group_tick.elapsed() >= GROUP_TICK {
                last_group_tick = Instant::now();
                self.groups.tick();
            }
            let logs: Vec<Rc<Log>> = self.partitions.borrow().values().cloned().collect();
            for log in &logs {
                if let Err(error) = log.tick().await {
                    tracing::error!(log = %log.dir().display(), %error, "background write failed");
                }
            }
            if last_retention.elapsed() >= retention_every {
                last_retention = Instant::now();
                for log in &logs {
                    if let Err(error) = log.apply_retention(crate::metadata::now_ms()).await {
                        tracing::error!(log = %log.dir().display(), %error, "retention failed");
                    }
                }
            }
        }
        self.stopping.notify(usize::MAX);
        // Requests waiting in a rebalance would hold the drain up for minutes.
        self.groups.release_waiters();
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
                // Without transactions every record is stable.
                let stable_offset = log.log_end_offset();
                match log.compact(now_ms, stable_offset, map_bytes).await {
                    Ok(stats) => {
                        self.metrics.record_compaction(&stats);
                        tracing::debug!(%partition, ?stats, "compacted");
                    }
                    // The partition was deleted or moved meanwhile.
                    Err(weir_storage::StorageError::Closed { .. }) => {}
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
            let Some(candidate) = log.compaction_candidate(now_ms, log.log_end_offset()) else {
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

    /// Closes every log (flushing it), then the metadata log.
    pub async fn close(&self) {
        let logs: Vec<Rc<Log>> = std::mem::take(&mut *self.partitions.borrow_mut())
            .into_values()
            .collect();
        for log in logs {
            if let Err(error) = log.close().await {
                tracing::error!(log = %log.dir().display(), %error, "closing failed");
            }
        }
        let controller = self.controller.borrow_mut().take();
        if let Some(Err(error)) = match controller {
            Some(log) => Some(log.close().await),
            None => None,
        } {
            tracing::error!(%error, "closing the metadata log failed");
        }
    }
}

/// Committed offsets are a table: compacted, kept forever, every commit durable.
fn offsets_topic_configs() -> Vec<(String, String)> {
    vec![
        ("cleanup.policy".into(), "compact".into()),
        // Kafka's offsets.topic.segment.bytes: only sealed segments are compacted.
        ("segment.bytes".into(), (100 << 20).to_string()),
        ("retention.ms".into(), "-1".into()),
        ("flush.policy".into(), "every-batch".into()),
    ]
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

/// In-sync replicas of every partition until replication exists.
const IN_SYNC_REPLICAS: i32 = 1;

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
