//! Cluster metadata: the records of the metadata log and the image they build.
//!
//! Every broker applies the same committed records in the same order (the Raft log of
//! the controller quorum, `crate::quorum`), so every broker holds the same image at the
//! same applied index. A single `weir serve` is a quorum of one and works the same way.
//!
//! Records carry whole values (a partition's complete new state, a topic's complete
//! config overrides), so applying one never depends on reading anything but the image.

use std::collections::BTreeMap;
use std::sync::Arc;

use rkyv::{Archive, Deserialize, Serialize};

/// A broker's id (Kafka's `node.id`).
pub type NodeId = i32;

/// The leader of a partition that has none (Kafka's -1).
pub const NO_LEADER: NodeId = -1;

/// Where a broker serves.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Endpoint {
    pub host: String,
    pub native_port: u16,
    pub kafka_port: u16,
    /// Every Kafka listener's port, by listener name (`SASL_SSL`, ...), `kafka_port`'s
    /// among them: a client is told the brokers' ports on the listener it came in by.
    pub kafka_listeners: Vec<ListenerPort>,
}

impl Endpoint {
    /// The port of the Kafka listener `name` (the main Kafka port if there is none of
    /// that name).
    pub fn kafka_port_of(&self, name: &str) -> u16 {
        self.kafka_listeners
            .iter()
            .find(|l| l.name == name)
            .map_or(self.kafka_port, |l| l.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ListenerPort {
    pub name: String,
    pub port: u16,
}

/// One copy of a partition: on which broker, and which of its shards owns it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Replica {
    pub node: NodeId,
    pub shard: u32,
}

/// A partition's replication state, as the controller decided it.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct PartitionState {
    /// In preference order: the first is the preferred leader.
    pub replicas: Vec<Replica>,
    /// `NO_LEADER` while no in-sync replica can lead.
    pub leader: NodeId,
    /// Bumped whenever the leader changes (or leads again after restarting): batches are
    /// stamped with it, and followers find where their logs diverge by it (KIP-101).
    pub leader_epoch: i32,
    /// In-sync replicas: every one holds every record below the high watermark.
    pub isr: Vec<NodeId>,
    /// Bumped on every change, so that a leader's ISR change is applied only to the state
    /// it was computed from (Kafka's partition epoch, KIP-497).
    pub partition_epoch: i32,
    /// While the partition moves to other brokers: the replicas it will end with.
    pub target: Option<Vec<NodeId>>,
}

impl PartitionState {
    pub fn replica(&self, node: NodeId) -> Option<&Replica> {
        self.replicas.iter().find(|r| r.node == node)
    }

    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.replicas.iter().map(|r| r.node)
    }

    pub fn in_isr(&self, node: NodeId) -> bool {
        self.isr.contains(&node)
    }

    pub fn preferred_leader(&self) -> Option<NodeId> {
        self.replicas.first().map(|r| r.node)
    }
}

/// One change to the metadata. A Raft entry carries a list of them, applied together.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum MetadataRecord {
    /// The first record of a new cluster.
    ClusterCreated {
        cluster_id: String,
    },
    /// A broker (re)started. It is fenced (leads nothing, takes no place in an ISR) until
    /// it has caught up with the metadata and its heartbeat says so.
    BrokerRegistered {
        node: NodeId,
        /// Random per process start: tells a restarted broker from the one before it.
        incarnation: u64,
        endpoint: Endpoint,
        shards: u32,
    },
    /// The broker missed its heartbeats or restarted: it leads nothing and is no longer
    /// in any ISR (the records moving its partitions come in the same entry).
    BrokerFenced {
        node: NodeId,
    },
    BrokerUnfenced {
        node: NodeId,
    },
    TopicCreated {
        name: String,
        /// The topic's id (a UUID): it tells a topic from an earlier one of the same name.
        id: [u8; 16],
        partitions: Vec<PartitionState>,
        configs: Vec<(String, String)>,
        internal: bool,
    },
    TopicDeleted {
        name: String,
    },
    /// New partitions at the end of a topic.
    PartitionsAdded {
        name: String,
        partitions: Vec<PartitionState>,
    },
    /// A partition's new state, whole.
    PartitionChanged {
        topic: String,
        partition: i32,
        state: PartitionState,
    },
    /// The topic's configuration overrides, replaced whole.
    TopicConfigsChanged {
        name: String,
        configs: Vec<(String, String)>,
    },
    /// Producer ids below `end` are reserved (handed out or lost in a crash: never reused).
    ProducerIdsReserved {
        end: i64,
    },
    /// ACLs added and removed, together.
    AclsChanged {
        added: Vec<AclBinding>,
        removed: Vec<AclBinding>,
    },
    /// A user's SCRAM credential for one mechanism, set or (`None`) removed.
    ScramCredentialChanged {
        user: String,
        mechanism: ScramMechanism,
        credential: Option<ScramCredential>,
    },
    /// One client quota of an entity (`producer_byte_rate`, ...), set or (`None`) removed.
    ClientQuotaChanged {
        entity: QuotaEntity,
        key: String,
        value: Option<u64>,
    },
}

/// One part of a quota entity (Kafka's `ClientQuotaEntity`): a name, or the default
/// (`<default>`: every user, or client id, without a quota of its own).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize)]
pub enum QuotaName {
    Default,
    Named(String),
}

/// Whom a client quota applies to: a user, a client id, or a client id of a user, each
/// named or the default. Both `None` is no entity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize)]
pub struct QuotaEntity {
    pub user: Option<QuotaName>,
    pub client_id: Option<QuotaName>,
}

/// Every entity's quotas, by key.
pub type ClientQuotas = BTreeMap<QuotaEntity, BTreeMap<String, u64>>;

/// What an ACL is about, with Kafka's ids (`ResourceType`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize,
)]
pub enum AclResourceType {
    Topic,
    Group,
    Cluster,
    TransactionalId,
}

impl AclResourceType {
    pub const ALL: [AclResourceType; 4] = [
        AclResourceType::Topic,
        AclResourceType::Group,
        AclResourceType::Cluster,
        AclResourceType::TransactionalId,
    ];

    pub fn id(self) -> i8 {
        match self {
            AclResourceType::Topic => 2,
            AclResourceType::Group => 3,
            AclResourceType::Cluster => 4,
            AclResourceType::TransactionalId => 5,
        }
    }

    pub fn from_id(id: i8) -> Option<AclResourceType> {
        AclResourceType::ALL.into_iter().find(|t| t.id() == id)
    }

    /// Kafka's name (`TOPIC`, `TRANSACTIONAL_ID`).
    pub fn name(self) -> &'static str {
        match self {
            AclResourceType::Topic => "TOPIC",
            AclResourceType::Group => "GROUP",
            AclResourceType::Cluster => "CLUSTER",
            AclResourceType::TransactionalId => "TRANSACTIONAL_ID",
        }
    }
}

/// How an ACL's resource name matches (Kafka's `PatternType`): the name itself (`*`:
/// every resource of the type), or every name it begins.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize,
)]
pub enum AclPatternType {
    Literal,
    Prefixed,
}

impl AclPatternType {
    pub fn id(self) -> i8 {
        match self {
            AclPatternType::Literal => 3,
            AclPatternType::Prefixed => 4,
        }
    }

    pub fn from_id(id: i8) -> Option<AclPatternType> {
        [AclPatternType::Literal, AclPatternType::Prefixed]
            .into_iter()
            .find(|t| t.id() == id)
    }

    pub fn name(self) -> &'static str {
        match self {
            AclPatternType::Literal => "LITERAL",
            AclPatternType::Prefixed => "PREFIXED",
        }
    }
}

/// Kafka's ACL operations (`AclOperation`), with its ids.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize,
)]
pub enum AclOperation {
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    ClusterAction,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
}

impl AclOperation {
    pub const ALL: [AclOperation; 11] = [
        AclOperation::All,
        AclOperation::Read,
        AclOperation::Write,
        AclOperation::Create,
        AclOperation::Delete,
        AclOperation::Alter,
        AclOperation::Describe,
        AclOperation::ClusterAction,
        AclOperation::DescribeConfigs,
        AclOperation::AlterConfigs,
        AclOperation::IdempotentWrite,
    ];

    pub fn id(self) -> i8 {
        match self {
            AclOperation::All => 2,
            AclOperation::Read => 3,
            AclOperation::Write => 4,
            AclOperation::Create => 5,
            AclOperation::Delete => 6,
            AclOperation::Alter => 7,
            AclOperation::Describe => 8,
            AclOperation::ClusterAction => 9,
            AclOperation::DescribeConfigs => 10,
            AclOperation::AlterConfigs => 11,
            AclOperation::IdempotentWrite => 12,
        }
    }

    pub fn from_id(id: i8) -> Option<AclOperation> {
        AclOperation::ALL.into_iter().find(|o| o.id() == id)
    }

    /// Kafka's name (`READ`, `DESCRIBE_CONFIGS`).
    pub fn name(self) -> &'static str {
        match self {
            AclOperation::All => "ALL",
            AclOperation::Read => "READ",
            AclOperation::Write => "WRITE",
            AclOperation::Create => "CREATE",
            AclOperation::Delete => "DELETE",
            AclOperation::Alter => "ALTER",
            AclOperation::Describe => "DESCRIBE",
            AclOperation::ClusterAction => "CLUSTER_ACTION",
            AclOperation::DescribeConfigs => "DESCRIBE_CONFIGS",
            AclOperation::AlterConfigs => "ALTER_CONFIGS",
            AclOperation::IdempotentWrite => "IDEMPOTENT_WRITE",
        }
    }

    /// The operation Kafka names so, in any case, with `-` or `_`.
    pub fn from_name(name: &str) -> Option<AclOperation> {
        let name = name.replace('-', "_");
        AclOperation::ALL
            .into_iter()
            .find(|o| o.name().eq_ignore_ascii_case(&name))
    }
}

/// Whether an ACL allows or denies (Kafka's `AclPermissionType`; deny wins).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize,
)]
pub enum AclPermission {
    Deny,
    Allow,
}

impl AclPermission {
    pub fn id(self) -> i8 {
        match self {
            AclPermission::Deny => 2,
            AclPermission::Allow => 3,
        }
    }

    pub fn from_id(id: i8) -> Option<AclPermission> {
        [AclPermission::Deny, AclPermission::Allow]
            .into_iter()
            .find(|p| p.id() == id)
    }

    pub fn name(self) -> &'static str {
        match self {
            AclPermission::Deny => "DENY",
            AclPermission::Allow => "ALLOW",
        }
    }
}

/// One ACL: `principal` (`User:alice`, `User:*`) from `host` (an address, `*`) may (or
/// may not) do `operation` on the resources `resource_name` names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize)]
pub struct AclBinding {
    pub resource_type: AclResourceType,
    pub resource_name: String,
    pub pattern: AclPatternType,
    pub principal: String,
    pub host: String,
    pub operation: AclOperation,
    pub permission: AclPermission,
}

/// The SCRAM mechanisms, with Kafka's ids (`ScramMechanism` in its admin API).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize,
)]
pub enum ScramMechanism {
    Sha256,
    Sha512,
}

impl ScramMechanism {
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    /// Kafka's id of the mechanism.
    pub fn id(self) -> i8 {
        match self {
            ScramMechanism::Sha256 => 1,
            ScramMechanism::Sha512 => 2,
        }
    }

    pub fn from_id(id: i8) -> Option<ScramMechanism> {
        ScramMechanism::ALL.into_iter().find(|m| m.id() == id)
    }

    /// The SASL name of the mechanism.
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<ScramMechanism> {
        ScramMechanism::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }
}

/// What a server keeps of a SCRAM password (RFC 5802): enough to check a client's proof
/// and to prove itself, not enough to log in as the user.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ScramCredential {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// One user's credential for one mechanism, as a snapshot holds it.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct UserScramCredential {
    pub user: String,
    pub mechanism: ScramMechanism,
    pub credential: ScramCredential,
}

#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct BrokerImage {
    pub node: NodeId,
    pub incarnation: u64,
    pub endpoint: Endpoint,
    pub shards: u32,
    pub fenced: bool,
    /// The index of the entry that registered this incarnation: the broker is unfenced
    /// only once it has applied that far.
    pub registered_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct TopicImage {
    pub name: String,
    pub id: [u8; 16],
    pub partitions: Vec<PartitionState>,
    pub configs: BTreeMap<String, String>,
    pub internal: bool,
}

impl TopicImage {
    pub fn partition_count(&self) -> i32 {
        self.partitions.len() as i32
    }

    pub fn partition(&self, partition: i32) -> Option<&PartitionState> {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.partitions.get(p))
    }

    /// The shard of `node` that holds `partition`, if `node` holds it.
    pub fn local_shard(&self, partition: i32, node: NodeId) -> Option<usize> {
        self.partition(partition)
            .and_then(|p| p.replica(node))
            .map(|r| r.shard as usize)
    }
}

/// The metadata at one point: immutable once built, shared by every shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataImage {
    /// The index of the last Raft entry applied (0 before any).
    pub applied_index: u64,
    pub cluster_id: String,
    pub brokers: BTreeMap<NodeId, BrokerImage>,
    pub topics: BTreeMap<String, Arc<TopicImage>>,
    /// Producer ids below this are reserved.
    pub producer_ids_end: i64,
    /// SCRAM credentials by user and mechanism.
    pub scram_credentials: BTreeMap<(String, ScramMechanism), Arc<ScramCredential>>,
    /// Every ACL.
    pub acls: Arc<std::collections::BTreeSet<AclBinding>>,
    /// Client quotas (produce and fetch byte rates, request rates).
    pub quotas: Arc<ClientQuotas>,
}

impl MetadataImage {
    /// Applies the records of the entry at `index`, in order. Records that do not fit (a
    /// second creation, a change to an unknown topic) change nothing: the controller
    /// checks before it proposes, and a replay must reach the same image.
    pub fn apply(&mut self, index: u64, records: &[MetadataRecord]) {
        for record in records {
            self.apply_one(index, record);
        }
        self.applied_index = index;
    }

    fn apply_one(&mut self, index: u64, record: &MetadataRecord) {
        match record {
            MetadataRecord::ClusterCreated { cluster_id } => {
                if self.cluster_id.is_empty() {
                    self.cluster_id = cluster_id.clone();
                }
            }
            MetadataRecord::BrokerRegistered {
                node,
                incarnation,
                endpoint,
                shards,
            } => {
                self.brokers.insert(
                    *node,
                    BrokerImage {
                        node: *node,
                        incarnation: *incarnation,
                        endpoint: endpoint.clone(),
                        shards: *shards,
                        fenced: true,
                        registered_at: index,
                    },
                );
            }
            MetadataRecord::BrokerFenced { node } => {
                if let Some(broker) = self.brokers.get_mut(node) {
                    broker.fenced = true;
                }
            }
            MetadataRecord::BrokerUnfenced { node } => {
                if let Some(broker) = self.brokers.get_mut(node) {
                    broker.fenced = false;
                }
            }
            MetadataRecord::TopicCreated {
                name,
                id,
                partitions,
                configs,
                internal,
            } => {
                let topic = TopicImage {
                    name: name.clone(),
                    id: *id,
                    partitions: partitions.clone(),
                    configs: configs.iter().cloned().collect(),
                    internal: *internal,
                };
                self.topics
                    .entry(name.clone())
                    .or_insert_with(|| Arc::new(topic));
            }
            MetadataRecord::TopicDeleted { name } => {
                self.topics.remove(name);
            }
            MetadataRecord::PartitionsAdded { name, partitions } => {
                self.change_topic(name, |topic| topic.partitions.extend_from_slice(partitions));
            }
            MetadataRecord::PartitionChanged {
                topic,
                partition,
                state,
            } => {
                self.change_topic(topic, |topic| {
                    if let Some(slot) = usize::try_from(*partition)
                        .ok()
                        .and_then(|p| topic.partitions.get_mut(p))
                    {
                        *slot = state.clone();
                    }
                });
            }
            MetadataRecord::TopicConfigsChanged { name, configs } => {
                self.change_topic(name, |topic| {
                    topic.configs = configs.iter().cloned().collect();
                });
            }
            MetadataRecord::ProducerIdsReserved { end } => {
                self.producer_ids_end = self.producer_ids_end.max(*end);
            }
            MetadataRecord::AclsChanged { added, removed } => {
                let acls = Arc::make_mut(&mut self.acls);
                for acl in removed {
                    acls.remove(acl);
                }
                acls.extend(added.iter().cloned());
            }
            MetadataRecord::ClientQuotaChanged { entity, key, value } => {
                let quotas = Arc::make_mut(&mut self.quotas);
                let keys = quotas.entry(entity.clone()).or_default();
                match value {
                    Some(value) => {
                        keys.insert(key.clone(), *value);
                    }
                    None => {
                        keys.remove(key);
                    }
                }
                if keys.is_empty() {
                    quotas.remove(entity);
                }
            }
            MetadataRecord::ScramCredentialChanged {
                user,
                mechanism,
                credential,
            } => {
                let key = (user.clone(), *mechanism);
                match credential {
                    Some(credential) => {
                        self.scram_credentials
                            .insert(key, Arc::new(credential.clone()));
                    }
                    None => {
                        self.scram_credentials.remove(&key);
                    }
                }
            }
        }
    }

    fn change_topic(&mut self, name: &str, change: impl FnOnce(&mut TopicImage)) {
        if let Some(topic) = self.topics.get_mut(name) {
            change(Arc::make_mut(topic));
        }
    }

    pub fn topic(&self, name: &str) -> Option<&Arc<TopicImage>> {
        self.topics.get(name)
    }

    /// The topic with this id.
    pub fn topic_by_id(&self, id: &[u8; 16]) -> Option<&Arc<TopicImage>> {
        self.topics.values().find(|t| t.id == *id)
    }

    pub fn scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Option<&Arc<ScramCredential>> {
        self.scram_credentials.get(&(user.to_string(), mechanism))
    }

    pub fn broker(&self, node: NodeId) -> Option<&BrokerImage> {
        self.brokers.get(&node)
    }

    pub fn is_live(&self, node: NodeId) -> bool {
        self.brokers.get(&node).is_some_and(|b| !b.fenced)
    }

    /// Brokers that are registered and not fenced, in id order.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerImage> {
        self.brokers.values().filter(|b| !b.fenced)
    }

    /// Every partition (topic, index, state), in topic order.
    pub fn partitions(&self) -> impl Iterator<Item = (&Arc<TopicImage>, i32, &PartitionState)> {
        self.topics.values().flat_map(|topic| {
            topic
                .partitions
                .iter()
                .enumerate()
                .map(move |(index, state)| (topic, index as i32, state))
        })
    }

    /// How many partitions each shard of `node` holds.
    pub fn shard_load(&self, node: NodeId, shards: u32) -> Vec<usize> {
        let mut load = vec![0; shards as usize];
        for (_, _, state) in self.partitions() {
            if let Some(replica) = state.replica(node)
                && let Some(count) = load.get_mut(replica.shard as usize)
            {
                *count += 1;
            }
        }
        load
    }

    /// How many partitions each broker leads.
    pub fn leader_load(&self) -> BTreeMap<NodeId, usize> {
        let mut load: BTreeMap<NodeId, usize> = self.brokers.keys().map(|n| (*n, 0)).collect();
        for (_, _, state) in self.partitions() {
            if let Some(count) = load.get_mut(&state.leader) {
                *count += 1;
            }
        }
        load
    }

    pub fn snapshot(&self) -> ImageSnapshot {
        ImageSnapshot {
            applied_index: self.applied_index,
            cluster_id: self.cluster_id.clone(),
            brokers: self.brokers.values().cloned().collect(),
            topics: self.topics.values().map(|t| (**t).clone()).collect(),
            producer_ids_end: self.producer_ids_end,
            scram_credentials: self
                .scram_credentials
                .iter()
                .map(|((user, mechanism), credential)| UserScramCredential {
                    user: user.clone(),
                    mechanism: *mechanism,
                    credential: (**credential).clone(),
                })
                .collect(),
            acls: self.acls.iter().cloned().collect(),
            quotas: self
                .quotas
                .iter()
                .flat_map(|(entity, keys)| {
                    keys.iter()
                        .map(move |(key, value)| (entity.clone(), key.clone(), *value))
                })
                .collect(),
        }
    }

    pub fn from_snapshot(snapshot: ImageSnapshot) -> MetadataImage {
        MetadataImage {
            applied_index: snapshot.applied_index,
            cluster_id: snapshot.cluster_id,
            brokers: snapshot.brokers.into_iter().map(|b| (b.node, b)).collect(),
            topics: snapshot
                .topics
                .into_iter()
                .map(|t| (t.name.clone(), Arc::new(t)))
                .collect(),
            producer_ids_end: snapshot.producer_ids_end,
            scram_credentials: snapshot
                .scram_credentials
                .into_iter()
                .map(|c| ((c.user, c.mechanism), Arc::new(c.credential)))
                .collect(),
            acls: Arc::new(snapshot.acls.into_iter().collect()),
            quotas: Arc::new(snapshot.quotas.into_iter().fold(
                ClientQuotas::new(),
                |mut quotas, (entity, key, value)| {
                    quotas.entry(entity).or_default().insert(key, value);
                    quotas
                },
            )),
        }
    }
}

/// The image as stored in a Raft snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ImageSnapshot {
    pub applied_index: u64,
    pub cluster_id: String,
    pub brokers: Vec<BrokerImage>,
    pub topics: Vec<TopicImage>,
    pub producer_ids_end: i64,
    pub scram_credentials: Vec<UserScramCredential>,
    pub acls: Vec<AclBinding>,
    pub quotas: Vec<(QuotaEntity, String, u64)>,
}

/// Encodes the records of one Raft entry.
/// The layout of the metadata's records and snapshots. rkyv archives have a fixed
/// layout, so any change to a record or the snapshot is a new version; a build refuses
/// (as corrupt, naming both versions) what another version wrote instead of misreading
/// it. 1: client quotas (`ClientQuotaChanged`, `ImageSnapshot::quotas`).
pub const METADATA_FORMAT_VERSION: u32 = 1;

/// Before each archive: a magic and the format version (16 bytes, so the archive
/// after it stays aligned).
const FORMAT_MAGIC: &[u8; 8] = b"weirmeta";
const FORMAT_HEADER_BYTES: usize = 16;

fn with_header(archive: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(FORMAT_HEADER_BYTES + archive.len());
    bytes.extend_from_slice(FORMAT_MAGIC);
    bytes.extend_from_slice(&METADATA_FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(archive);
    bytes
}

/// The archive after the header, if the header names this build's format.
fn archive_of<'a>(
    bytes: &'a [u8],
    what: &'static str,
) -> Result<&'a [u8], crate::ReplicationError> {
    let corrupt = |reason: String| crate::ReplicationError::Corrupt { what, reason };
    if bytes.len() < FORMAT_HEADER_BYTES || &bytes[..8] != FORMAT_MAGIC {
        return Err(corrupt(
            "no format header: written by a build before metadata format versions".into(),
        ));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != METADATA_FORMAT_VERSION {
        return Err(corrupt(format!(
            "metadata format version {version}; this build reads version {METADATA_FORMAT_VERSION}"
        )));
    }
    Ok(&bytes[FORMAT_HEADER_BYTES..])
}

pub fn encode_records(records: &[MetadataRecord]) -> Vec<u8> {
    let records = records.to_vec();
    rkyv::to_bytes::<rkyv::rancor::Error>(&records)
        .map(|bytes| with_header(&bytes))
        .unwrap_or_else(|error| panic!("archiving metadata records cannot fail: {error}"))
}

/// Decodes (and validates) the records of one Raft entry.
pub fn decode_records(bytes: &[u8]) -> Result<Vec<MetadataRecord>, crate::ReplicationError> {
    let aligned = aligned(archive_of(bytes, "metadata records")?);
    rkyv::from_bytes::<Vec<MetadataRecord>, rkyv::rancor::Error>(&aligned).map_err(|error| {
        crate::ReplicationError::Corrupt {
            what: "metadata records",
            reason: error.to_string(),
        }
    })
}

pub fn encode_snapshot(snapshot: &ImageSnapshot) -> Vec<u8> {
    rkyv::to_bytes::<rkyv::rancor::Error>(snapshot)
        .map(|bytes| with_header(&bytes))
        .unwrap_or_else(|error| panic!("archiving a metadata snapshot cannot fail: {error}"))
}

pub fn decode_snapshot(bytes: &[u8]) -> Result<ImageSnapshot, crate::ReplicationError> {
    let aligned = aligned(archive_of(bytes, "metadata snapshot")?);
    rkyv::from_bytes::<ImageSnapshot, rkyv::rancor::Error>(&aligned).map_err(|error| {
        crate::ReplicationError::Corrupt {
            what: "metadata snapshot",
            reason: error.to_string(),
        }
    })
}

/// rkyv validates archives in place and needs them aligned.
pub(crate) fn aligned(bytes: &[u8]) -> rkyv::util::AlignedVec<16> {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    aligned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(nodes: &[NodeId]) -> PartitionState {
        PartitionState {
            replicas: nodes
                .iter()
                .map(|n| Replica { node: *n, shard: 0 })
                .collect(),
            leader: nodes[0],
            leader_epoch: 0,
            isr: nodes.to_vec(),
            partition_epoch: 0,
            target: None,
        }
    }

    fn created(name: &str, partitions: &[&[NodeId]]) -> MetadataRecord {
        MetadataRecord::TopicCreated {
            name: name.into(),
            id: [7; 16],
            partitions: partitions.iter().map(|p| state(p)).collect(),
            configs: vec![],
            internal: false,
        }
    }

    #[test]
    fn records_apply_in_order_and_set_the_index() {
        let mut image = MetadataImage::default();
        image.apply(3, &[created("a", &[&[1, 2]]), created("b", &[&[2]])]);
        assert_eq!(image.applied_index, 3);
        assert_eq!(image.topic("a").unwrap().local_shard(0, 2), Some(0));
        assert_eq!(image.topic("a").unwrap().local_shard(0, 3), None);
        image.apply(4, &[MetadataRecord::TopicDeleted { name: "a".into() }]);
        assert!(image.topic("a").is_none() && image.topic("b").is_some());
    }

    #[test]
    fn a_partition_change_replaces_the_state_whole() {
        let mut image = MetadataImage::default();
        image.apply(1, &[created("a", &[&[1, 2, 3], &[2, 3, 1]])]);
        let mut next = state(&[1, 2, 3]);
        next.leader = 2;
        next.leader_epoch = 1;
        next.isr = vec![2, 3];
        image.apply(
            2,
            &[MetadataRecord::PartitionChanged {
                topic: "a".into(),
                partition: 0,
                state: next.clone(),
            }],
        );
        assert_eq!(image.topic("a").unwrap().partition(0), Some(&next));
        assert_eq!(image.topic("a").unwrap().partition(1).unwrap().leader, 2);
    }

    #[test]
    fn registered_brokers_start_fenced() {
        let mut image = MetadataImage::default();
        let endpoint = Endpoint {
            host: "127.0.0.1".into(),
            native_port: 9192,
            kafka_port: 9092,
            kafka_listeners: Vec::new(),
        };
        image.apply(
            5,
            &[MetadataRecord::BrokerRegistered {
                node: 1,
                incarnation: 9,
                endpoint,
                shards: 2,
            }],
        );
        assert!(!image.is_live(1));
        assert_eq!(image.broker(1).unwrap().registered_at, 5);
        image.apply(6, &[MetadataRecord::BrokerUnfenced { node: 1 }]);
        assert!(image.is_live(1));
    }

    #[test]
    fn records_and_snapshots_round_trip() {
        let records = vec![
            created("a", &[&[1, 2]]),
            MetadataRecord::ProducerIdsReserved { end: 1000 },
            MetadataRecord::ScramCredentialChanged {
                user: "alice".into(),
                mechanism: ScramMechanism::Sha512,
                credential: Some(ScramCredential {
                    salt: vec![1; 16],
                    iterations: 4096,
                    stored_key: vec![2; 64],
                    server_key: vec![3; 64],
                }),
            },
            MetadataRecord::AclsChanged {
                added: vec![AclBinding {
                    resource_type: AclResourceType::Topic,
                    resource_name: "orders-".into(),
                    pattern: AclPatternType::Prefixed,
                    principal: "User:alice".into(),
                    host: "*".into(),
                    operation: AclOperation::Read,
                    permission: AclPermission::Allow,
                }],
                removed: vec![],
            },
            MetadataRecord::ClientQuotaChanged {
                entity: QuotaEntity {
                    user: Some(QuotaName::Named("alice".into())),
                    client_id: Some(QuotaName::Default),
                },
                key: "producer_byte_rate".into(),
                value: Some(1 << 20),
            },
        ];
        assert_eq!(decode_records(&encode_records(&records)).unwrap(), records);
        // Another format version, or none, is refused, not misread.
        let mut other = encode_records(&records);
        other[8] ^= 0xff;
        let error = decode_records(&other).unwrap_err().to_string();
        assert!(error.contains("format version"), "{error}");
        let unversioned = &encode_records(&records)[FORMAT_HEADER_BYTES..];
        assert!(decode_records(unversioned).is_err());
        let mut image = MetadataImage::default();
        image.apply(2, &records);
        let back = MetadataImage::from_snapshot(
            decode_snapshot(&encode_snapshot(&image.snapshot())).unwrap(),
        );
        assert_eq!(back, image);
        assert!(decode_records(&[1, 2, 3]).is_err());
    }
}
