//! The controller's decisions: what to write to the metadata log in answer to a broker's
//! request or to the passing of time.
//!
//! Pure functions of the committed image, a request and the time. The active controller
//! (the broker whose quorum node leads the Raft group) runs one decision at a time:
//! decide, propose the records, wait until they are applied, decide the next. A decision
//! therefore always sees the effect of the one before.
//!
//! **Invariant:** a leader is only ever chosen from the in-sync replicas (no unclean
//! election), and the last in-sync replica is never removed from the ISR: when it fails
//! the partition waits, leaderless, for it to come back.

use std::collections::{BTreeMap, BTreeSet};

use rkyv::{Archive, Deserialize, Serialize};

use crate::metadata::{
    AclBinding, Endpoint, MetadataImage, MetadataRecord, NO_LEADER, NodeId, PartitionState,
    QuotaEntity, Replica, ScramCredential, ScramMechanism,
};

/// The partition count and replica count limits of one request, so that no request can
/// make the controller allocate without bound.
pub const PARTITIONS_PER_REQUEST_MAX: i32 = 10_000;
pub const REPLICATION_FACTOR_MAX: i16 = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerConfig {
    /// A broker that has not sent a heartbeat for this long is fenced.
    pub session_timeout_ms: u64,
    /// How often leadership is moved back to preferred replicas (0: never).
    pub leader_rebalance_interval_ms: u64,
    /// Replicas of topics created without a replication factor.
    pub default_replication_factor: i16,
    /// The brokers the cluster was formed with.
    pub initial_brokers: usize,
    /// The internal topics (committed offsets, transaction state), each created once
    /// enough brokers are up.
    pub internal_topics: Vec<InternalTopic>,
    /// The id a new cluster gets (the first controller's proposal wins; the broker draws a
    /// random one at start).
    pub new_cluster_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: Vec<(String, String)>,
}

/// What brokers ask of the controller. Sent between brokers (rkyv) when the controller
/// is elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum ControllerRequest {
    RegisterBroker {
        node: NodeId,
        incarnation: u64,
        endpoint: Endpoint,
        shards: u32,
    },
    Heartbeat {
        node: NodeId,
        incarnation: u64,
        /// How far the broker has applied the metadata log.
        applied_index: u64,
    },
    CreateTopic {
        name: String,
        partitions: i32,
        /// -1: the broker's default.
        replication_factor: i16,
        configs: Vec<(String, String)>,
    },
    DeleteTopic {
        name: String,
    },
    AlterTopicConfigs {
        name: String,
        configs: Vec<(String, String)>,
    },
    CreatePartitions {
        name: String,
        count: i32,
    },
    ReserveProducerIds {
        count: i64,
    },
    /// A leader's change of its partition's ISR (Kafka's AlterPartition).
    AlterPartition {
        topic: String,
        partition: i32,
        leader: NodeId,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<NodeId>,
    },
    /// Moves a partition onto these brokers (the first is the preferred leader). The new
    /// replicas are added, catch up, join the ISR; then the old ones are removed.
    MovePartition {
        topic: String,
        partition: i32,
        replicas: Vec<NodeId>,
    },
    /// Adds and removes ACLs, all together.
    AlterAcls {
        added: Vec<AclBinding>,
        removed: Vec<AclBinding>,
    },
    /// Sets or (`None`) removes users' SCRAM credentials, all together.
    AlterScramCredentials {
        changes: Vec<(String, ScramMechanism, Option<ScramCredential>)>,
    },
    /// Sets or (`None`) removes client quotas, all together.
    AlterClientQuotas {
        changes: Vec<(QuotaEntity, String, Option<u64>)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum ControllerAnswer {
    Done,
    Heartbeat { fenced: bool },
    ProducerIds { start: i64, end: i64 },
    Partition(PartitionState),
}

#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum ControllerError {
    #[error("this broker is not the controller (the controller is {leader:?})")]
    NotController { leader: Option<NodeId> },
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error("unknown partition {topic}-{partition}")]
    UnknownPartition { topic: String, partition: i32 },
    #[error("topic {0} already exists")]
    TopicExists(String),
    #[error("{0}")]
    InvalidTopic(String),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidReplicationFactor(String),
    #[error("{0}")]
    InvalidReplicaAssignment(String),
    #[error("broker {node} is not registered as incarnation {incarnation}")]
    StaleBrokerEpoch { node: NodeId, incarnation: u64 },
    #[error("leader epoch {given} of {topic}-{partition} is stale: it is {current}")]
    FencedLeaderEpoch {
        topic: String,
        partition: i32,
        given: i32,
        current: i32,
    },
    #[error("partition epoch {given} of {topic}-{partition} is stale: it is {current}")]
    InvalidUpdateVersion {
        topic: String,
        partition: i32,
        given: i32,
        current: i32,
    },
    #[error("{0}")]
    IneligibleReplica(String),
}

/// Records to append, and the answer to give once they are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub records: Vec<MetadataRecord>,
    pub answer: ControllerAnswer,
}

impl Decision {
    fn done(records: Vec<MetadataRecord>) -> Decision {
        Decision {
            records,
            answer: ControllerAnswer::Done,
        }
    }
}

/// The active controller's soft state: when each broker was last heard from. It starts
/// afresh whenever a node becomes the controller; every broker then gets a whole session
/// timeout before it can be fenced.
#[derive(Debug, Clone)]
pub struct Controller {
    config: ControllerConfig,
    heard_ms: BTreeMap<NodeId, u64>,
    since_ms: u64,
    last_rebalance_ms: u64,
    /// When time last decided something: a long gap means this controller itself was
    /// stopped (SIGSTOP, a stall), and the heartbeats it missed meanwhile say nothing.
    last_tick_ms: u64,
    /// The broker this controller runs on: alive as long as it decides, never fenced for
    /// silence by itself.
    host: Option<NodeId>,
}

type Result<T> = std::result::Result<T, ControllerError>;

impl Controller {
    pub fn new(config: ControllerConfig, now_ms: u64) -> Controller {
        Controller {
            config,
            heard_ms: BTreeMap::new(),
            since_ms: now_ms,
            last_rebalance_ms: now_ms,
            last_tick_ms: now_ms,
            host: None,
        }
    }

    /// The controller runs on broker `node`.
    pub fn running_on(mut self, node: NodeId) -> Controller {
        self.host = Some(node);
        self
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// Decides a broker's request against the committed image.
    pub fn decide(
        &mut self,
        image: &MetadataImage,
        request: &ControllerRequest,
        now_ms: u64,
    ) -> Result<Decision> {
        match request {
            ControllerRequest::RegisterBroker {
                node,
                incarnation,
                endpoint,
                shards,
            } => {
                self.heard_ms.insert(*node, now_ms);
                Ok(Decision::done(register(
                    image,
                    *node,
                    *incarnation,
                    endpoint,
                    *shards,
                )))
            }
            ControllerRequest::Heartbeat {
                node,
                incarnation,
                applied_index,
            } => self.heartbeat(image, *node, *incarnation, *applied_index, now_ms),
            ControllerRequest::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
            } => {
                let factor = if *replication_factor < 0 {
                    self.config.default_replication_factor
                } else {
                    *replication_factor
                };
                create_topic(image, name, *partitions, factor, configs, false).map(Decision::done)
            }
            ControllerRequest::DeleteTopic { name } => {
                let topic = user_topic(image, name)?;
                Ok(Decision::done(vec![MetadataRecord::TopicDeleted {
                    name: topic.name.clone(),
                }]))
            }
            ControllerRequest::AlterTopicConfigs { name, configs } => {
                user_topic(image, name)?;
                Ok(Decision::done(vec![MetadataRecord::TopicConfigsChanged {
                    name: name.clone(),
                    configs: configs.clone(),
                }]))
            }
            ControllerRequest::CreatePartitions { name, count } => {
                create_partitions(image, name, *count).map(Decision::done)
            }
            ControllerRequest::ReserveProducerIds { count } => {
                let count = (*count).clamp(1, 1 << 20);
                let start = image.producer_ids_end;
                let end = start + count;
                Ok(Decision {
                    records: vec![MetadataRecord::ProducerIdsReserved { end }],
                    answer: ControllerAnswer::ProducerIds { start, end },
                })
            }
            ControllerRequest::AlterPartition {
                topic,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                isr,
            } => alter_partition(
                image,
                topic,
                *partition,
                *leader,
                *leader_epoch,
                *partition_epoch,
                isr,
            ),
            ControllerRequest::MovePartition {
                topic,
                partition,
                replicas,
            } => move_partition(image, topic, *partition, replicas),
            ControllerRequest::AlterAcls { added, removed } => {
                Ok(Decision::done(vec![MetadataRecord::AclsChanged {
                    added: added.clone(),
                    removed: removed.clone(),
                }]))
            }
            ControllerRequest::AlterClientQuotas { changes } => Ok(Decision::done(
                changes
                    .iter()
                    .map(|(entity, key, value)| MetadataRecord::ClientQuotaChanged {
                        entity: entity.clone(),
                        key: key.clone(),
                        value: *value,
                    })
                    .collect(),
            )),
            ControllerRequest::AlterScramCredentials { changes } => Ok(Decision::done(
                changes
                    .iter()
                    .map(
                        |(user, mechanism, credential)| MetadataRecord::ScramCredentialChanged {
                            user: user.clone(),
                            mechanism: *mechanism,
                            credential: credential.clone(),
                        },
                    )
                    .collect(),
            )),
        }
    }

    fn heartbeat(
        &mut self,
        image: &MetadataImage,
        node: NodeId,
        incarnation: u64,
        applied_index: u64,
        now_ms: u64,
    ) -> Result<Decision> {
        let broker = image
            .broker(node)
            .filter(|b| b.incarnation == incarnation)
            .ok_or(ControllerError::StaleBrokerEpoch { node, incarnation })?;
        self.heard_ms.insert(node, now_ms);
        let records = if broker.fenced && applied_index >= broker.registered_at {
            let mut records = vec![MetadataRecord::BrokerUnfenced { node }];
            let mut unfenced = image.clone();
            unfenced.apply(image.applied_index, &records);
            records.extend(elect_leaderless(&unfenced));
            records
        } else {
            Vec::new()
        };
        Ok(Decision {
            answer: ControllerAnswer::Heartbeat {
                fenced: broker.fenced && records.is_empty(),
            },
            records,
        })
    }

    /// What the passing of time decides: naming a new cluster, fencing brokers that went quiet, creating the
    /// offsets topic once enough brokers are up, electing leaders for partitions without
    /// one, finishing moves, and (now and then) moving leadership back to preferred
    /// replicas.
    pub fn tick(&mut self, image: &MetadataImage, now_ms: u64) -> Vec<MetadataRecord> {
        if image.cluster_id.is_empty() {
            return vec![MetadataRecord::ClusterCreated {
                cluster_id: self.config.new_cluster_id.clone(),
            }];
        }
        let timeout = self.config.session_timeout_ms;
        if now_ms.saturating_sub(self.last_tick_ms) > timeout / 2 {
            // This controller did not run for a while: every broker gets a fresh session
            // before it can be fenced, as after an election.
            self.heard_ms.clear();
            self.since_ms = now_ms;
        }
        self.last_tick_ms = now_ms;
        let silent: Vec<NodeId> = image
            .live_brokers()
            .filter(|b| Some(b.node) != self.host)
            .filter(|b| {
                let heard = self.heard_ms.get(&b.node).copied().unwrap_or(self.since_ms);
                now_ms.saturating_sub(heard) > timeout
            })
            .map(|b| b.node)
            .collect();
        if let Some(node) = silent.first() {
            // One broker per decision: each sees the elections the one before made.
            return fence(image, *node);
        }
        if let Some(records) = self.create_internal_topic(image) {
            return records;
        }
        let records = elect_leaderless(image);
        if !records.is_empty() {
            return records;
        }
        let records = finish_moves(image);
        if !records.is_empty() {
            return records;
        }
        let every = self.config.leader_rebalance_interval_ms;
        if every > 0 && now_ms.saturating_sub(self.last_rebalance_ms) >= every {
            self.last_rebalance_ms = now_ms;
            return elect_preferred(image);
        }
        Vec::new()
    }

    /// The first missing internal topic, if enough brokers are up for it.
    fn create_internal_topic(&self, image: &MetadataImage) -> Option<Vec<MetadataRecord>> {
        let topic = self
            .config
            .internal_topics
            .iter()
            .find(|t| image.topic(&t.name).is_none())?;
        let wanted = (topic.replication_factor.max(1) as usize).min(self.config.initial_brokers);
        let live = image.live_brokers().count();
        if live < wanted.max(1) {
            return None;
        }
        create_topic(
            image,
            &topic.name,
            topic.partitions,
            wanted as i16,
            &topic.configs,
            true,
        )
        .ok()
    }
}

fn user_topic<'a>(
    image: &'a MetadataImage,
    name: &str,
) -> Result<&'a std::sync::Arc<crate::metadata::TopicImage>> {
    let topic = image
        .topic(name)
        .ok_or_else(|| ControllerError::UnknownTopic(name.to_string()))?;
    if topic.internal {
        return Err(ControllerError::InvalidTopic(format!("{name} is internal")));
    }
    Ok(topic)
}

fn register(
    image: &MetadataImage,
    node: NodeId,
    incarnation: u64,
    endpoint: &Endpoint,
    shards: u32,
) -> Vec<MetadataRecord> {
    if let Some(broker) = image.broker(node)
        && broker.incarnation == incarnation
        && broker.endpoint == *endpoint
        && broker.shards == shards
    {
        return Vec::new();
    }
    let mut records = vec![MetadataRecord::BrokerRegistered {
        node,
        incarnation,
        endpoint: endpoint.clone(),
        shards: shards.max(1),
    }];
    let mut registered = image.clone();
    registered.apply(image.applied_index, &records);
    // A restarted broker may have lost what it had not synced: it leads nothing in the
    // epoch it led before, and rejoins ISRs once it has caught up again.
    records.extend(fence_changes(&registered, node));
    let mut fenced = registered.clone();
    fenced.apply(image.applied_index, &records[1..]);
    records.extend(move_off_vanished_shards(&fenced, node, shards.max(1)));
    records
}

/// Fences `node`: the records that take it out of every ISR and elect new leaders for the
/// partitions it led.
pub fn fence(image: &MetadataImage, node: NodeId) -> Vec<MetadataRecord> {
    let mut records = vec![MetadataRecord::BrokerFenced { node }];
    let mut fenced = image.clone();
    fenced.apply(image.applied_index, &records);
    records.extend(fence_changes(&fenced, node));
    records
}

/// In `image` (where `node` is already fenced): the partition changes that take `node`
/// out of ISRs and leadership.
fn fence_changes(image: &MetadataImage, node: NodeId) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for (topic, index, state) in image.partitions() {
        if state.replica(node).is_none() {
            continue;
        }
        let mut next = state.clone();
        if next.isr.len() > 1 {
            next.isr.retain(|n| *n != node);
        }
        if next.leader == node {
            next.leader = elect(image, &next, Some(node));
            next.leader_epoch += 1;
        }
        if next != *state {
            next.partition_epoch += 1;
            records.push(changed(&topic.name, index, next));
        }
    }
    records
}

/// The first replica, in preference order, that is in sync, live and not `excluded`.
fn elect(image: &MetadataImage, state: &PartitionState, excluded: Option<NodeId>) -> NodeId {
    state
        .nodes()
        .find(|n| Some(*n) != excluded && state.in_isr(*n) && image.is_live(*n))
        .unwrap_or(NO_LEADER)
}

/// Leaders for partitions that have none but have a live in-sync replica.
fn elect_leaderless(image: &MetadataImage) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for (topic, index, state) in image.partitions() {
        if state.leader != NO_LEADER && image.is_live(state.leader) {
            continue;
        }
        let leader = elect(image, state, None);
        if leader != NO_LEADER && leader != state.leader {
            let mut next = state.clone();
            next.leader = leader;
            next.leader_epoch += 1;
            next.partition_epoch += 1;
            records.push(changed(&topic.name, index, next));
        }
    }
    records
}

/// Leadership back to the preferred replica wherever it is in sync and live.
fn elect_preferred(image: &MetadataImage) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for (topic, index, state) in image.partitions() {
        let Some(preferred) = state.preferred_leader() else {
            continue;
        };
        if state.leader != preferred
            && state.target.is_none()
            && state.in_isr(preferred)
            && image.is_live(preferred)
        {
            let mut next = state.clone();
            next.leader = preferred;
            next.leader_epoch += 1;
            next.partition_epoch += 1;
            records.push(changed(&topic.name, index, next));
        }
    }
    records
}

fn changed(topic: &str, partition: i32, state: PartitionState) -> MetadataRecord {
    MetadataRecord::PartitionChanged {
        topic: topic.to_string(),
        partition,
        state,
    }
}

/// Chooses shards of `node` for `count` new replicas, least loaded first, counting what
/// `load` already holds.
fn next_shard(load: &mut BTreeMap<NodeId, Vec<usize>>, image: &MetadataImage, node: NodeId) -> u32 {
    let shards = image.broker(node).map_or(1, |b| b.shards.max(1));
    let load = load
        .entry(node)
        .or_insert_with(|| image.shard_load(node, shards));
    let (shard, _) = load
        .iter()
        .enumerate()
        .min_by_key(|(i, n)| (**n, *i))
        .unwrap_or((0, &0));
    load[shard] += 1;
    shard as u32
}

/// Replicas for partitions `first..first + count` of topic `name`: spread over the live
/// brokers round robin from a start that depends on the topic's name, so that leaders
/// (the first replicas) spread over the brokers too.
fn place(
    image: &MetadataImage,
    name: &str,
    first: i32,
    count: i32,
    factor: i16,
) -> Result<Vec<PartitionState>> {
    let brokers: Vec<NodeId> = image.live_brokers().map(|b| b.node).collect();
    if !(1..=REPLICATION_FACTOR_MAX).contains(&factor) {
        return Err(ControllerError::InvalidReplicationFactor(format!(
            "replication factor {factor} is not within 1..={REPLICATION_FACTOR_MAX}"
        )));
    }
    if factor as usize > brokers.len() {
        return Err(ControllerError::InvalidReplicationFactor(format!(
            "replication factor {factor} is larger than the {} available brokers",
            brokers.len()
        )));
    }
    let start = name
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
    let mut load = BTreeMap::new();
    Ok((first..first + count)
        .map(|partition| {
            let replicas = (0..factor as usize)
                .map(|j| {
                    let node = brokers[(start + partition as usize + j) % brokers.len()];
                    Replica {
                        node,
                        shard: next_shard(&mut load, image, node),
                    }
                })
                .collect::<Vec<_>>();
            PartitionState {
                leader: replicas[0].node,
                isr: replicas.iter().map(|r| r.node).collect(),
                replicas,
                leader_epoch: 0,
                partition_epoch: 0,
                target: None,
            }
        })
        .collect())
}

fn check_partition_count(count: i32) -> Result<()> {
    if !(1..=PARTITIONS_PER_REQUEST_MAX).contains(&count) {
        return Err(ControllerError::InvalidPartitions(format!(
            "{count} partitions is not within 1..={PARTITIONS_PER_REQUEST_MAX}"
        )));
    }
    Ok(())
}

fn create_topic(
    image: &MetadataImage,
    name: &str,
    partitions: i32,
    factor: i16,
    configs: &[(String, String)],
    internal: bool,
) -> Result<Vec<MetadataRecord>> {
    if image.topic(name).is_some() {
        return Err(ControllerError::TopicExists(name.to_string()));
    }
    check_partition_count(partitions)?;
    Ok(vec![MetadataRecord::TopicCreated {
        name: name.to_string(),
        id: topic_id(image, name),
        partitions: place(image, name, 0, partitions, factor)?,
        configs: configs.to_vec(),
        internal,
    }])
}

/// A topic id that differs from every earlier topic's: derived from the name and the
/// log position (so that every replay of a decision agrees), never all zeros (Kafka's
/// "no id").
fn topic_id(image: &MetadataImage, name: &str) -> [u8; 16] {
    let mut id = [0u8; 16];
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    id[..8].copy_from_slice(&hash.to_be_bytes());
    id[8..].copy_from_slice(&(image.applied_index + 1).to_be_bytes());
    id[15] |= 1;
    id
}

fn create_partitions(image: &MetadataImage, name: &str, count: i32) -> Result<Vec<MetadataRecord>> {
    let topic = user_topic(image, name)?;
    let current = topic.partition_count();
    if count <= current {
        return Err(ControllerError::InvalidPartitions(format!(
            "{name} has {current} partitions; the count can only grow"
        )));
    }
    check_partition_count(count)?;
    let factor = topic.partitions.first().map_or(1, |p| p.replicas.len()) as i16;
    Ok(vec![MetadataRecord::PartitionsAdded {
        name: name.to_string(),
        partitions: place(image, name, current, count - current, factor)?,
    }])
}

fn partition_state<'a>(
    image: &'a MetadataImage,
    topic: &str,
    partition: i32,
) -> Result<&'a PartitionState> {
    image
        .topic(topic)
        .and_then(|t| t.partition(partition))
        .ok_or_else(|| ControllerError::UnknownPartition {
            topic: topic.to_string(),
            partition,
        })
}

fn alter_partition(
    image: &MetadataImage,
    topic: &str,
    partition: i32,
    leader: NodeId,
    leader_epoch: i32,
    partition_epoch: i32,
    isr: &[NodeId],
) -> Result<Decision> {
    let state = partition_state(image, topic, partition)?;
    if state.leader != leader || state.leader_epoch != leader_epoch {
        return Err(ControllerError::FencedLeaderEpoch {
            topic: topic.to_string(),
            partition,
            given: leader_epoch,
            current: state.leader_epoch,
        });
    }
    if state.partition_epoch != partition_epoch {
        return Err(ControllerError::InvalidUpdateVersion {
            topic: topic.to_string(),
            partition,
            given: partition_epoch,
            current: state.partition_epoch,
        });
    }
    let members: BTreeSet<NodeId> = isr.iter().copied().collect();
    if members.len() != isr.len() || !members.contains(&leader) {
        return Err(ControllerError::IneligibleReplica(format!(
            "the ISR {isr:?} of {topic}-{partition} must list its leader {leader} and no broker twice"
        )));
    }
    for node in isr {
        if state.replica(*node).is_none() {
            return Err(ControllerError::IneligibleReplica(format!(
                "broker {node} is not a replica of {topic}-{partition}"
            )));
        }
        if !state.in_isr(*node) && !image.is_live(*node) {
            return Err(ControllerError::IneligibleReplica(format!(
                "broker {node} is fenced and cannot join the ISR of {topic}-{partition}"
            )));
        }
    }
    let mut next = state.clone();
    next.isr = isr.to_vec();
    next.partition_epoch += 1;
    let next = finish_move(image, next);
    Ok(Decision {
        records: vec![changed(topic, partition, next.clone())],
        answer: ControllerAnswer::Partition(next),
    })
}

fn move_partition(
    image: &MetadataImage,
    topic: &str,
    partition: i32,
    replicas: &[NodeId],
) -> Result<Decision> {
    let state = partition_state(image, topic, partition)?;
    let wanted: BTreeSet<NodeId> = replicas.iter().copied().collect();
    if replicas.is_empty() || wanted.len() != replicas.len() {
        return Err(ControllerError::InvalidReplicaAssignment(format!(
            "replicas {replicas:?} must name at least one broker, none twice"
        )));
    }
    if replicas.len() > REPLICATION_FACTOR_MAX as usize {
        return Err(ControllerError::InvalidReplicaAssignment(format!(
            "at most {REPLICATION_FACTOR_MAX} replicas"
        )));
    }
    if let Some(node) = replicas.iter().find(|n| image.broker(**n).is_none()) {
        return Err(ControllerError::InvalidReplicaAssignment(format!(
            "broker {node} is not registered"
        )));
    }
    if state.nodes().eq(replicas.iter().copied()) && state.target.is_none() {
        return Ok(Decision::done(Vec::new()));
    }
    let mut load = BTreeMap::new();
    let mut next = state.clone();
    // The new replicas first (the first is the preferred leader), then the old ones that
    // leave once the new ones are in sync.
    next.replicas = replicas
        .iter()
        .map(|node| {
            state.replica(*node).copied().unwrap_or_else(|| Replica {
                node: *node,
                shard: next_shard(&mut load, image, *node),
            })
        })
        .chain(
            state
                .replicas
                .iter()
                .filter(|r| !wanted.contains(&r.node))
                .copied(),
        )
        .collect();
    next.target = Some(replicas.to_vec());
    next.partition_epoch += 1;
    let next = finish_move(image, next);
    Ok(Decision {
        records: vec![changed(topic, partition, next.clone())],
        answer: ControllerAnswer::Partition(next),
    })
}

/// Completes a move whose target replicas are all in sync: the others leave, and the
/// leader changes if it was one of them.
fn finish_move(image: &MetadataImage, mut state: PartitionState) -> PartitionState {
    let Some(target) = state.target.clone() else {
        return state;
    };
    if !target.iter().all(|n| state.in_isr(*n)) {
        return state;
    }
    state.replicas = target
        .iter()
        .filter_map(|n| state.replica(*n).copied())
        .collect();
    state.isr.retain(|n| target.contains(n));
    state.target = None;
    if !target.contains(&state.leader) {
        state.leader = elect(image, &state, None);
        state.leader_epoch += 1;
    }
    state
}

fn finish_moves(image: &MetadataImage) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for (topic, index, state) in image.partitions() {
        if state.target.is_none() {
            continue;
        }
        let mut next = finish_move(image, state.clone());
        if next != *state {
            next.partition_epoch += 1;
            records.push(changed(&topic.name, index, next));
        }
    }
    records
}

/// Replicas of `node` on shards it no longer has (it restarted with fewer cores) move to
/// its remaining shards.
fn move_off_vanished_shards(
    image: &MetadataImage,
    node: NodeId,
    shards: u32,
) -> Vec<MetadataRecord> {
    let mut load: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
    let mut records = Vec::new();
    for (topic, index, state) in image.partitions() {
        let Some(replica) = state.replica(node) else {
            continue;
        };
        if replica.shard < shards {
            continue;
        }
        let mut next = state.clone();
        let shard = next_shard(&mut load, image, node);
        for r in next.replicas.iter_mut().filter(|r| r.node == node) {
            r.shard = shard;
        }
        next.partition_epoch += 1;
        records.push(changed(&topic.name, index, next));
    }
    records
}

#[cfg(test)]
mod tests;
