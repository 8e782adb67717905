//! A shard's part in transactions: the partitions it leads keep their transaction state
//! (last stable offset, aborted transactions) and append markers; the
//! `__transaction_state` partitions it leads make it the coordinator of their
//! transactional ids.
//!
//! A coordinator's decision is durable (written to its partition and replicated) before
//! it acts on it: PrepareCommit or PrepareAbort before any marker, Complete only after
//! every marker. While a decision's markers are being written the entry is in a Prepare
//! state, and every other request for the id is answered CONCURRENT_TRANSACTIONS, which
//! clients retry; so requests of one id never interleave.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use weir_storage::Log;
use weir_wire::{BatchHeader, ControlType};

use super::{Shard, not_leader};
use crate::error::{BrokerError, BrokerResult};
use crate::metadata::{NodeId, OFFSETS_TOPIC, now_ms};
use crate::offsets;
use crate::replica::{Replication, Role};
use crate::router::{MemberClaim, ShardAnswer, ShardCall, TopicPartition};
use crate::txn::coordinator::{self, TXN_TOPIC, TxnMetadata, TxnStore};
use crate::txn::partition::PartitionTxns;
use crate::txn::{TxnAnswer, TxnCall};

/// How long a marker that could not be written waits before it is tried again.
const MARKER_RETRY: Duration = Duration::from_millis(100);

/// A `__transaction_state` partition this shard leads.
pub(super) struct TxnLeader {
    partition: TopicPartition,
    store: Rc<RefCell<TxnStore>>,
    log: Rc<Log>,
    replication: Rc<Replication>,
    leader_epoch: i32,
}

impl Shard {
    /// The transaction state of a partition this shard leads, loaded if it is not yet.
    pub(super) async fn partition_txns(
        &self,
        partition: &TopicPartition,
        log: &Rc<Log>,
    ) -> BrokerResult<Rc<RefCell<PartitionTxns>>> {
        if let Some(state) = self.txns.borrow().get(partition) {
            return Ok(state.clone());
        }
        let epoch = self.replication(partition)?.role.borrow().leader_epoch();
        let loaded = PartitionTxns::load(log).await?;
        // Loaded under another leadership (the state is a leader's): not kept.
        let now = self.replication(partition)?.role.borrow().leader_epoch();
        if epoch.is_none() || now != epoch {
            let leader = self.replication(partition)?.state.borrow().leader;
            return Err(not_leader(partition, self.node, leader));
        }
        tracing::debug!(node = self.node, %partition, "transaction state loaded");
        // Two loads may race; both end consistent with the log, either may stay.
        Ok(self
            .txns
            .borrow_mut()
            .entry(partition.clone())
            .or_insert_with(|| Rc::new(RefCell::new(loaded)))
            .clone())
    }

    /// The transaction state compaction works with: the leader's, or for a follower one
    /// kept up to date from its log (scanned again whole after a truncation).
    pub(super) async fn compaction_txns(
        &self,
        partition: &TopicPartition,
        log: &Rc<Log>,
    ) -> BrokerResult<Rc<RefCell<PartitionTxns>>> {
        let leading = self
            .replication(partition)?
            .role
            .borrow()
            .leader_epoch()
            .is_some();
        if leading {
            return self.partition_txns(partition, log).await;
        }
        let truncations = log.truncations();
        let cached = self.replica_txns.borrow_mut().remove(partition);
        let mut state = match cached {
            Some((seen, state)) if seen == truncations => state.borrow().clone(),
            _ => PartitionTxns::scan(log).await?,
        };
        state.catch_up(log).await?;
        if log.truncations() != truncations {
            return Err(BrokerError::Internal(format!(
                "{partition} was truncated while its transactions were read"
            )));
        }
        let state = Rc::new(RefCell::new(state));
        self.replica_txns
            .borrow_mut()
            .insert(partition.clone(), (truncations, state.clone()));
        Ok(state)
    }

    /// A produced batch was appended at `base_offset`: the partition's transaction state,
    /// if loaded, takes it in (if not, its load will read it from the log).
    pub(super) fn observe_append(
        &self,
        partition: &TopicPartition,
        header: &BatchHeader,
        base_offset: i64,
    ) {
        if let Some(state) = self.txns.borrow().get(partition) {
            let header = BatchHeader {
                base_offset,
                ..*header
            };
            state.borrow_mut().observe(&header, None);
        }
    }

    /// The partition's last stable offset: the high watermark unless its transaction
    /// state is loaded and holds an open transaction below it.
    pub(super) fn last_stable_offset(
        &self,
        partition: &TopicPartition,
        high_watermark: i64,
    ) -> i64 {
        self.txns
            .borrow()
            .get(partition)
            .map_or(high_watermark, |s| {
                s.borrow().last_stable_offset(high_watermark)
            })
    }

    /// The partition stops being led here: its transaction state goes, and if it now
    /// follows, its checkpoint too (a follower's log may be truncated under it).
    pub(super) fn forget_partition_txns(&self, partition: &TopicPartition, log: &Log) {
        self.txns.borrow_mut().remove(partition);
        if !self
            .replication(partition)
            .is_ok_and(|r| matches!(&*r.role.borrow(), Role::Leader(_)))
            && let Err(error) = crate::txn::partition::discard_checkpoint(log.dir())
        {
            tracing::warn!(%partition, %error, "could not delete a txn checkpoint");
        }
    }

    /// Writes the checkpoints of the transaction states that changed (background).
    pub(super) async fn checkpoint_txns(&self) {
        let states: Vec<(TopicPartition, Rc<RefCell<PartitionTxns>>)> = self
            .txns
            .borrow()
            .iter()
            .map(|(tp, s)| (tp.clone(), s.clone()))
            .collect();
        for (partition, state) in states {
            let Ok(log) = self.log(&partition) else {
                continue;
            };
            state.borrow_mut().forget_before(log.log_start_offset());
            if let Err(error) = PartitionTxns::checkpoint_if_changed(&state, log.dir()).await {
                tracing::warn!(%partition, %error, "writing a txn checkpoint failed");
            }
            // The partition stopped being led here while the checkpoint was written
            // (which deleted the file first): delete what was just written.
            let still = self
                .txns
                .borrow()
                .get(&partition)
                .is_some_and(|s| Rc::ptr_eq(s, &state));
            if !still && let Err(error) = crate::txn::partition::discard_checkpoint(log.dir()) {
                tracing::warn!(%partition, %error, "could not delete a txn checkpoint");
            }
        }
    }

    /// Appends a transaction marker to a partition this shard leads, and waits until it is
    /// durable on the in-sync replicas. A marker for a producer without an open
    /// transaction here is appended too (a retry after a coordinator failover): it changes
    /// nothing for readers.
    pub(super) async fn write_marker(
        &self,
        partition: &TopicPartition,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
    ) -> BrokerResult<()> {
        let (log, replication) = self.leader_log(partition)?;
        let Some(leader_epoch) = replication.role.borrow().leader_epoch() else {
            return Err(not_leader(partition, self.node, -1));
        };
        let outcome = if commit {
            ControlType::Commit
        } else {
            ControlType::Abort
        };
        let marker = weir_wire::control_batch(
            now_ms(),
            producer_id,
            producer_epoch,
            outcome,
            coordinator_epoch,
        );
        let header = BatchHeader::parse(&marker)?;
        let info = log.start_append(marker, leader_epoch)?;
        let header = BatchHeader {
            base_offset: info.base_offset,
            ..header
        };
        if let Some(state) = self.txns.borrow().get(partition) {
            state.borrow_mut().observe(&header, Some(outcome));
        }
        if let Some(table) = self.producers.borrow_mut().get_mut(partition) {
            table.record(&header, info.base_offset);
        }
        if partition.topic == OFFSETS_TOPIC
            && let Some(store) = self.offsets.borrow().get(&partition.partition)
        {
            store
                .borrow_mut()
                .end_txn(producer_id, producer_epoch, commit);
        }
        log.finish_append(&info).await?;
        self.wait_replicated(
            partition,
            &log,
            &replication,
            leader_epoch,
            info.last_offset + 1,
            1,
        )
        .await
    }

    /// TxnOffsetCommit at the group's coordinator: the offsets are written as the
    /// producer's transactional records and take effect with its commit marker.
    pub(super) async fn txn_commit_offsets(
        &self,
        group: &str,
        producer_id: i64,
        producer_epoch: i16,
        member: Option<&MemberClaim>,
        offsets: Vec<crate::router::OffsetCommit>,
    ) -> BrokerResult<()> {
        offsets::validate_group(group)?;
        if let Some(member) = member {
            self.groups
                .check_commit(
                    group,
                    &member.member_id,
                    member.instance_id.as_deref(),
                    member.generation,
                )
                .map_err(|error| BrokerError::kafka(error, format!("commit to group {group}")))?;
        }
        let leader = self.offsets_partition(group)?;
        let pending = leader.store.borrow_mut().start_txn_commit(
            group,
            (producer_id, producer_epoch),
            &offsets,
            leader.leader_epoch,
        )?;
        let Some((info, header)) = pending else {
            return Ok(());
        };
        self.observe_append(&leader.partition, &header, info.base_offset);
        self.replicate_offsets(&leader, &info).await
    }

    /// Claims the right to write a decision of `transactional_id` and its markers: `None`
    /// while another task of this shard does (a request then gets
    /// CONCURRENT_TRANSACTIONS). Released when dropped.
    fn completing(self: &Rc<Self>, transactional_id: &str) -> Option<Completing> {
        self.txns_completing
            .borrow_mut()
            .insert(transactional_id.to_string())
            .then(|| Completing {
                shard: self.clone(),
                transactional_id: transactional_id.to_string(),
            })
    }

    /// The `__transaction_state` partition of `transactional_id`, which this shard must
    /// lead.
    fn txn_coordinator(&self, transactional_id: &str) -> BrokerResult<TxnLeader> {
        let not_coordinator = || BrokerError::NotCoordinator(transactional_id.to_string());
        let partitions = self
            .image()
            .topic(TXN_TOPIC)
            .map(|t| t.partition_count())
            .ok_or_else(not_coordinator)?;
        let partition = TopicPartition {
            topic: TXN_TOPIC.into(),
            partition: coordinator::partition_for(transactional_id, partitions),
        };
        let (log, replication) = self.leader_log(&partition).map_err(|_| not_coordinator())?;
        let leader_epoch = replication
            .role
            .borrow()
            .leader_epoch()
            .ok_or_else(not_coordinator)?;
        let store = self
            .txn_stores
            .borrow()
            .get(&partition.partition)
            .cloned()
            .ok_or_else(not_coordinator)?;
        Ok(TxnLeader {
            partition,
            store,
            log,
            replication,
            leader_epoch,
        })
    }

    /// Makes an entry current and durable on the coordinator's in-sync replicas. If it
    /// does not become durable, the entry before it is current again, so that nothing
    /// acts on a decision that may be lost (the client retries; a coordinator that
    /// later finds the record in its log finishes it as decided, which is what the retry
    /// asks for).
    async fn write_txn_entry(
        &self,
        leader: &TxnLeader,
        transactional_id: &str,
        entry: TxnMetadata,
    ) -> BrokerResult<()> {
        let previous = leader.store.borrow().get(transactional_id).cloned();
        let written = entry.clone();
        let info =
            leader
                .store
                .borrow_mut()
                .start_write(transactional_id, entry, leader.leader_epoch)?;
        let durable = match leader.log.finish_append(&info).await {
            Ok(()) => {
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
            Err(error) => Err(error.into()),
        };
        if durable.is_err() {
            let mut store = leader.store.borrow_mut();
            if store.get(transactional_id) == Some(&written) {
                store.restore(transactional_id, previous);
            }
        }
        durable
    }

    pub(super) async fn txn_call(self: &Rc<Self>, call: TxnCall) -> TxnAnswer {
        match call {
            TxnCall::InitProducerId {
                transactional_id,
                timeout_ms,
                expected,
            } => TxnAnswer::Producer(
                self.init_txn_producer(&transactional_id, timeout_ms, expected)
                    .await,
            ),
            TxnCall::AddPartitions {
                transactional_id,
                producer_id,
                producer_epoch,
                partitions,
            } => TxnAnswer::Done(
                self.add_txn_partitions(&transactional_id, producer_id, producer_epoch, partitions)
                    .await,
            ),
            TxnCall::AddOffsets {
                transactional_id,
                producer_id,
                producer_epoch,
                group,
            } => {
                let partitions = self
                    .image()
                    .topic(OFFSETS_TOPIC)
                    .map_or(1, |t| t.partition_count());
                let partition = TopicPartition {
                    topic: OFFSETS_TOPIC.into(),
                    partition: offsets::partition_for(&group, partitions),
                };
                TxnAnswer::Done(
                    self.add_txn_partitions(
                        &transactional_id,
                        producer_id,
                        producer_epoch,
                        vec![partition],
                    )
                    .await,
                )
            }
            TxnCall::End {
                transactional_id,
                producer_id,
                producer_epoch,
                commit,
            } => TxnAnswer::Done(
                self.end_txn(&transactional_id, producer_id, producer_epoch, commit)
                    .await,
            ),
        }
    }

    async fn init_txn_producer(
        self: &Rc<Self>,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> BrokerResult<(i64, i16)> {
        coordinator::validate_id(transactional_id)?;
        let max = self.config.transaction_max_timeout_ms;
        if timeout_ms <= 0 || i64::from(timeout_ms) > max as i64 {
            return Err(BrokerError::kafka(
                ResponseError::InvalidTransactionTimeout,
                format!("transaction.timeout.ms must be 1 to {max}, not {timeout_ms}"),
            ));
        }
        let leader = self.txn_coordinator(transactional_id)?;
        let current = leader.store.borrow().get(transactional_id).cloned();
        if let (Some((id, epoch)), Some(entry)) = (expected, &current)
            && (id != entry.producer_id || epoch != entry.producer_epoch)
        {
            // Checked before anything is aborted: a stale producer must not end the
            // current one's transaction.
            return Err(kafka_error(ResponseError::ProducerFenced, transactional_id));
        }
        let Some(_claim) = self.completing(transactional_id) else {
            return Err(kafka_error(
                ResponseError::ConcurrentTransactions,
                transactional_id,
            ));
        };
        let current = match current {
            Some(entry) if entry.status == coordinator::TxnStatus::Ongoing => {
                // A new producer of the id: the old one's transaction is aborted, at an
                // epoch the old one no longer has.
                let aborting = entry.fence_and_abort();
                self.write_txn_entry(&leader, transactional_id, aborting.clone())
                    .await?;
                self.complete_txn(transactional_id, aborting).await?
            }
            other => other,
        };
        let next = match &current {
            None => None,
            Some(entry) => entry.init(timeout_ms, expected),
        };
        let next = match next {
            Some(decision) => decision.map_err(|e| kafka_error(e, transactional_id))?,
            None => {
                if let Some((id, _)) = expected
                    && current.as_ref().is_some_and(|c| c.producer_id != id)
                {
                    return Err(kafka_error(ResponseError::ProducerFenced, transactional_id));
                }
                TxnMetadata::new(self.new_producer_id().await?, timeout_ms)
            }
        };
        // The leader may have changed while a producer id was fetched.
        let leader = self.txn_coordinator(transactional_id)?;
        if leader.store.borrow().get(transactional_id) != current.as_ref() {
            return Err(kafka_error(
                ResponseError::ConcurrentTransactions,
                transactional_id,
            ));
        }
        let answer = (next.producer_id, next.producer_epoch);
        self.write_txn_entry(&leader, transactional_id, next)
            .await?;
        Ok(answer)
    }

    async fn add_txn_partitions(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: Vec<TopicPartition>,
    ) -> BrokerResult<()> {
        let leader = self.txn_coordinator(transactional_id)?;
        let next = {
            let store = leader.store.borrow();
            let entry = store.get(transactional_id).ok_or_else(|| {
                kafka_error(ResponseError::InvalidProducerIdMapping, transactional_id)
            })?;
            if entry.status == coordinator::TxnStatus::Ongoing
                && partitions.iter().all(|p| entry.partitions.contains(p))
                && entry.producer_id == producer_id
                && entry.producer_epoch == producer_epoch
            {
                return Ok(());
            }
            entry
                .add_partitions(producer_id, producer_epoch, &partitions, now_ms())
                .map_err(|e| kafka_error(e, transactional_id))?
        };
        self.write_txn_entry(&leader, transactional_id, next).await
    }

    async fn end_txn(
        self: &Rc<Self>,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
    ) -> BrokerResult<()> {
        let leader = self.txn_coordinator(transactional_id)?;
        let (current, next) = {
            let store = leader.store.borrow();
            let entry = store.get(transactional_id).ok_or_else(|| {
                kafka_error(ResponseError::InvalidProducerIdMapping, transactional_id)
            })?;
            let next = entry
                .end(producer_id, producer_epoch, commit)
                .map_err(|e| kafka_error(e, transactional_id))?;
            (entry.clone(), next)
        };
        if next == current {
            return Ok(()); // a retry of what is already complete
        }
        let Some(_claim) = self.completing(transactional_id) else {
            return Err(kafka_error(
                ResponseError::ConcurrentTransactions,
                transactional_id,
            ));
        };
        self.write_txn_entry(&leader, transactional_id, next.clone())
            .await?;
        self.complete_txn(transactional_id, next).await.map(|_| ())
    }

    /// Writes the markers of a Prepare entry, then its Complete state. Returns the entry
    /// as it is afterwards. The caller holds the id's claim (`completing`).
    async fn complete_txn(
        self: &Rc<Self>,
        transactional_id: &str,
        entry: TxnMetadata,
    ) -> BrokerResult<Option<TxnMetadata>> {
        let leader = self.txn_coordinator(transactional_id)?;
        let unchanged = |leader: &TxnLeader| {
            if leader.store.borrow().get(transactional_id) == Some(&entry) {
                Ok(())
            } else {
                Err(kafka_error(
                    ResponseError::ConcurrentTransactions,
                    transactional_id,
                ))
            }
        };
        unchanged(&leader)?;
        self.send_markers(&entry, leader.leader_epoch, transactional_id)
            .await?;
        let leader = self.txn_coordinator(transactional_id)?;
        unchanged(&leader)?;
        let completed = entry.completed();
        self.write_txn_entry(&leader, transactional_id, completed.clone())
            .await?;
        tracing::debug!(
            node = self.node,
            transactional_id,
            producer = entry.producer_id,
            epoch = entry.producer_epoch,
            status = completed.status.name(),
            partitions = entry.partitions.len(),
            "transaction complete"
        );
        Ok(Some(completed))
    }

    /// Writes the entry's marker to each of its partitions, retrying those whose leader
    /// is moving, until all are written or this shard stops coordinating the id.
    async fn send_markers(
        self: &Rc<Self>,
        entry: &TxnMetadata,
        coordinator_epoch: i32,
        transactional_id: &str,
    ) -> BrokerResult<()> {
        let commit = entry.is_committing();
        let mut remaining: Vec<TopicPartition> = entry.partitions.iter().cloned().collect();
        let mut attempts = 0u32;
        while !remaining.is_empty() {
            // Partitions led here go to their shards; the others to their leader's
            // Kafka port, as WriteTxnMarkers.
            let image = self.image();
            let mut local = Vec::new();
            let mut remote: BTreeMap<NodeId, Vec<TopicPartition>> = BTreeMap::new();
            for partition in remaining.drain(..) {
                let leader = image
                    .topic(&partition.topic)
                    .and_then(|t| t.partition(partition.partition))
                    .map(|p| p.leader);
                match leader {
                    Some(leader) if leader >= 0 && leader != self.node => {
                        remote.entry(leader).or_default().push(partition);
                    }
                    _ => local.push(partition),
                }
            }
            let mut results: Vec<(TopicPartition, BrokerResult<()>)> = crate::ops::fan_out(
                self,
                local,
                |partition| ShardCall::WriteMarker {
                    partition,
                    producer_id: entry.producer_id,
                    producer_epoch: entry.producer_epoch,
                    commit,
                    coordinator_epoch,
                },
                |answer| match answer {
                    ShardAnswer::Admin(result) => result,
                    other => Err(crate::ops::unexpected(other)),
                },
            )
            .await;
            for (leader, partitions) in remote {
                let Some(broker) = image.broker(leader) else {
                    let error = || BrokerError::Internal(format!("broker {leader} is unknown"));
                    results.extend(partitions.into_iter().map(|p| (p, Err(error()))));
                    continue;
                };
                let address = format!("{}:{}", broker.endpoint.host, broker.endpoint.kafka_port);
                let producer = (entry.producer_id, entry.producer_epoch);
                match crate::kafka::peer::write_txn_markers(
                    &address,
                    self.peer_tls.kafka.as_deref(),
                    producer,
                    commit,
                    coordinator_epoch,
                    &partitions,
                )
                .await
                {
                    Ok(codes) => {
                        for partition in partitions {
                            let code = codes
                                .iter()
                                .find(|(p, _)| *p == partition)
                                .map_or(ResponseError::UnknownServerError.code(), |(_, c)| *c);
                            let result = match code {
                                0 => Ok(()),
                                // Deleted only if this broker's metadata says so too:
                                // the leader's may lag behind a new topic.
                                c if c == ResponseError::UnknownTopicOrPartition.code()
                                    && image
                                        .topic(&partition.topic)
                                        .and_then(|t| t.partition(partition.partition))
                                        .is_none() =>
                                {
                                    Err(BrokerError::UnknownTopic(partition.topic.clone()))
                                }
                                c => Err(BrokerError::Kafka {
                                    code: c,
                                    message: format!("from broker {leader}"),
                                }),
                            };
                            results.push((partition, result));
                        }
                    }
                    Err(error) => {
                        let message = error.to_string();
                        results.extend(
                            partitions
                                .into_iter()
                                .map(|p| (p, Err(BrokerError::Internal(message.clone())))),
                        );
                    }
                }
            }
            for (partition, result) in results {
                match result {
                    Ok(()) => {}
                    // A deleted partition holds no transaction any more.
                    Err(
                        BrokerError::UnknownTopicOrPartition { .. } | BrokerError::UnknownTopic(_),
                    ) => {}
                    Err(error) => {
                        if attempts.is_multiple_of(50) {
                            tracing::warn!(node = self.node, %partition, transactional_id, %error, "a transaction marker could not be written; retrying");
                        }
                        remaining.push(partition);
                    }
                }
            }
            if remaining.is_empty() {
                break;
            }
            if self.shutting_down() {
                return Err(BrokerError::ShuttingDown);
            }
            // Retried only while this shard still coordinates the id in the same epoch;
            // a new coordinator resumes from the Prepare entry.
            let leader = self.txn_coordinator(transactional_id)?;
            if leader.leader_epoch != coordinator_epoch {
                return Err(BrokerError::NotCoordinator(transactional_id.to_string()));
            }
            attempts += 1;
            glommio::timer::sleep(MARKER_RETRY).await;
        }
        Ok(())
    }

    /// Background, at the coordinator: open transactions past their timeout are aborted
    /// (fencing their producer); a Prepare entry (found after a restart or a failover)
    /// gets its markers written.
    pub(super) fn txn_tick(self: &Rc<Self>) {
        let now = now_ms();
        let stores: Vec<Rc<RefCell<TxnStore>>> =
            self.txn_stores.borrow().values().cloned().collect();
        for store in stores {
            let due: Vec<(String, TxnMetadata)> = store
                .borrow()
                .entries()
                .filter(|(_, e)| e.timed_out(now) || e.is_preparing())
                .map(|(id, e)| (id.clone(), e.clone()))
                .collect();
            for (id, entry) in due {
                let Some(claim) = self.completing(&id) else {
                    continue;
                };
                let shard = self.clone();
                glommio::spawn_local(async move {
                    let result = shard.abort_or_resume(&id, entry).await;
                    drop(claim);
                    if let Err(error) = result {
                        tracing::debug!(node = shard.node, transactional_id = %id, %error, "transaction not completed yet");
                    }
                })
                .detach();
            }
        }
    }

    async fn abort_or_resume(
        self: &Rc<Self>,
        transactional_id: &str,
        entry: TxnMetadata,
    ) -> BrokerResult<()> {
        let leader = self.txn_coordinator(transactional_id)?;
        if leader.store.borrow().get(transactional_id) != Some(&entry) {
            return Ok(()); // changed meanwhile
        }
        let preparing = if entry.is_preparing() {
            entry
        } else {
            tracing::info!(
                node = self.node,
                transactional_id,
                producer = entry.producer_id,
                "aborting a transaction past its timeout"
            );
            let aborting = entry.fence_and_abort();
            self.write_txn_entry(&leader, transactional_id, aborting.clone())
                .await?;
            aborting
        };
        self.complete_txn(transactional_id, preparing)
            .await
            .map(|_| ())
    }
}

fn kafka_error(error: ResponseError, transactional_id: &str) -> BrokerError {
    BrokerError::kafka(error, format!("transactional id {transactional_id}"))
}

/// A task's claim on a transactional id's decisions (`Shard::completing`).
pub(super) struct Completing {
    shard: Rc<Shard>,
    transactional_id: String,
}

impl Drop for Completing {
    fn drop(&mut self) {
        self.shard
            .txns_completing
            .borrow_mut()
            .remove(&self.transactional_id);
    }
}
