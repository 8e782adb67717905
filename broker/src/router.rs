//! Calls between shards, over glommio's channel mesh created at boot.
//!
//! **Invariant:** a partition is touched only by its owning shard; other shards send it a
//! `ShardCall` and await the `ShardAnswer`. Record bytes travel as `Bytes`/`BytesMut`,
//! which move between cores without being copied.
//!
//! Calls are started in the order a connection needs them (a produce request's appends)
//! and awaited later: a remote call is in the owner's queue once `start` returns, and the
//! owner starts handling calls in arrival order. A local call is spawned as a task, and
//! glommio runs a queue's tasks in spawn order, so local appends keep the order too.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use weir_wire::native::schema::{Acks, OffsetSpec};

use kafka_protocol::ResponseError;

use crate::error::{BrokerError, BrokerResult};
use crate::group::{
    GroupDescription, GroupState, JoinRequest, JoinResult, SyncRequest, SyncResult,
};
use crate::metadata::{MetadataImage, NodeId};
use crate::metrics::ShardMetricsSnapshot;
use weir_replication::{ControllerAnswer, ControllerRequest, FetchPosition};

/// Messages in flight between two shards at most (per direction). A full channel makes
/// the sender wait: backpressure between cores.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// A request for the shard that owns what it names.
#[derive(Debug)]
pub enum ShardCall {
    Produce {
        partition: TopicPartition,
        batches: Vec<BytesMut>,
        acks: Acks,
    },
    Fetch {
        partition: TopicPartition,
        offset: i64,
        limit: weir_storage::ReadLimit,
        /// Up to the last stable offset, with the aborted transactions of what is read.
        read_committed: bool,
    },
    /// Answers once any listed partition has data at or after its offset (below its high
    /// watermark, or with `to_log_end` below its log end), or at the timeout.
    Watch {
        partitions: Vec<(TopicPartition, i64)>,
        timeout: Duration,
        /// Data counts below the last stable offset only.
        read_committed: bool,
        to_log_end: bool,
    },
    /// A follower's fetch of one partition this shard leads.
    ReplicaFetch {
        partition: TopicPartition,
        replica: NodeId,
        position: FetchPosition,
        limit: weir_storage::ReadLimit,
    },
    ListOffsets {
        partition: TopicPartition,
        spec: OffsetSpec,
        timestamp: i64,
        /// Latest is the last stable offset.
        read_committed: bool,
    },
    PartitionStatus {
        partition: TopicPartition,
    },
    CommitOffsets {
        group: String,
        member: MemberClaim,
        offsets: Vec<OffsetCommit>,
    },
    /// Deletes a group's committed offsets: all of them, or those of these partitions.
    DeleteOffsets {
        group: String,
        partitions: Option<Vec<TopicPartition>>,
    },
    /// TxnOffsetCommit: offsets committed when the producer's transaction commits.
    TxnCommitOffsets {
        group: String,
        producer_id: i64,
        producer_epoch: i16,
        /// Checked against the group's membership when given (TxnOffsetCommit v3+).
        member: Option<MemberClaim>,
        offsets: Vec<OffsetCommit>,
    },
    /// For the transaction coordinator of the id the call names.
    Txn(crate::txn::TxnCall),
    /// A transaction marker for the partition's leader to append.
    WriteMarker {
        partition: TopicPartition,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
    },
    /// Membership of a consumer group (its coordinator is the owner of its offsets).
    Group(GroupCall),
    FetchOffsets {
        group: String,
    },
    /// The partitions with offsets of an open transaction pending for the group.
    UnstableOffsets {
        group: String,
    },
    ListGroups,
    CreateTopic {
        name: String,
        partitions: i32,
        configs: Vec<(String, String)>,
        /// -1: the broker's default.
        replication_factor: i16,
    },
    DeleteTopic {
        name: String,
    },
    /// Shard 0: replaces a topic's config overrides.
    AlterTopicConfigs {
        name: String,
        configs: Vec<(String, String)>,
    },
    /// Shard 0: adds and removes ACLs.
    AlterAcls {
        added: Vec<weir_replication::AclBinding>,
        removed: Vec<weir_replication::AclBinding>,
    },
    /// Shard 0: sets or removes client quotas.
    AlterClientQuotas {
        changes: Vec<(weir_replication::QuotaEntity, String, Option<u64>)>,
    },
    /// Shard 0: sets or removes users' SCRAM credentials.
    AlterScramCredentials {
        changes: Vec<(
            String,
            weir_replication::ScramMechanism,
            Option<weir_replication::ScramCredential>,
        )>,
    },
    /// Shard 0: grows a topic to `count` partitions.
    CreatePartitions {
        name: String,
        count: i32,
    },
    /// Moves a partition's log start offset up to `offset` (-1: the high watermark).
    DeleteRecords {
        partition: TopicPartition,
        offset: i64,
    },
    /// Shard 0: reserves the next block of producer ids.
    ReserveProducerIds,
    /// Shard 0: moves a partition's replicas.
    MovePartition {
        partition: TopicPartition,
        replicas: Vec<NodeId>,
    },
    /// A new metadata image; `active` says whether this broker is registered and
    /// unfenced in it.
    ApplyMetadata {
        image: Arc<MetadataImage>,
        active: bool,
    },
    /// Shard 0: Raft messages from a peer.
    RaftMessages {
        messages: Vec<weir_replication::eraftpb::Message>,
    },
    /// Shard 0: a request another broker sends this one as the active controller.
    ControllerCall {
        request: ControllerRequest,
    },
    /// Shard 0: a request of this broker for the active controller, wherever it runs.
    Controller {
        request: ControllerRequest,
    },
    Metrics,
}

/// Who commits offsets: a member of a generation of the group, or (member id empty,
/// generation -1) a client outside group membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberClaim {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
}

impl MemberClaim {
    pub fn none() -> MemberClaim {
        MemberClaim {
            member_id: String::new(),
            instance_id: None,
            generation: -1,
        }
    }
}

#[derive(Debug)]
pub enum GroupCall {
    Join {
        group: String,
        request: JoinRequest,
    },
    Sync {
        group: String,
        request: SyncRequest,
    },
    Heartbeat {
        group: String,
        member: MemberClaim,
    },
    Leave {
        group: String,
        members: Vec<(String, Option<String>)>,
    },
    Describe {
        group: String,
    },
    Delete {
        group: String,
    },
}

#[derive(Debug)]
pub enum GroupAnswer {
    Join(JoinResult),
    Sync(SyncResult),
    Heartbeat(Result<(), ResponseError>),
    Leave(Vec<Result<(), ResponseError>>),
    Describe(Option<GroupDescription>),
    Delete(Result<(), ResponseError>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionStatus {
    pub log_start_offset: i64,
    pub high_watermark: i64,
    /// The first offset of the oldest open transaction, or the high watermark (also when
    /// the partition's transaction state is not loaded: nobody read_committed asked).
    pub last_stable_offset: i64,
    pub log_end_offset: i64,
    pub size_bytes: u64,
}

/// One partition's part of a fetch.
#[derive(Debug)]
pub struct Fetched {
    pub batches: Vec<Bytes>,
    pub status: PartitionStatus,
    /// Under read_committed, the aborted transactions with records among `batches`.
    pub aborted: Vec<crate::txn::partition::AbortedTxn>,
}

/// One partition's offset to commit, with the leader epoch of the record before it
/// (KIP-320; -1: unknown) and the client's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommit {
    pub partition: TopicPartition,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

#[derive(Debug)]
pub struct Committed {
    pub partition: TopicPartition,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

/// The owner's answer to a `ShardCall`, variant for variant.
#[derive(Debug)]
pub enum ShardAnswer {
    Produce(BrokerResult<(i64, i64)>),
    Fetch(BrokerResult<Fetched>),
    Watched,
    ListOffsets(BrokerResult<(i64, i64)>),
    PartitionStatus(BrokerResult<PartitionStatus>),
    CommitOffsets(BrokerResult<()>),
    FetchOffsets(BrokerResult<Vec<Committed>>),
    UnstableOffsets(BrokerResult<Vec<TopicPartition>>),
    /// Groups with their state and protocol type.
    ListGroups(Vec<(String, GroupState, String)>),
    DeleteOffsets(BrokerResult<Vec<TopicPartition>>),
    Group(GroupAnswer),
    Txn(crate::txn::TxnAnswer),
    Admin(BrokerResult<()>),
    /// The new log start offset.
    DeleteRecords(BrokerResult<i64>),
    /// A block of producer ids, `start..end`.
    ProducerIds(BrokerResult<(i64, i64)>),
    ReplicaFetch(BrokerResult<crate::shard::ReplicaFetched>),
    ControllerReply(crate::cluster::ControllerReply),
    Controller(BrokerResult<ControllerAnswer>),
    Metrics(Box<ShardMetricsSnapshot>),
}

/// What travels on the mesh.
#[derive(Debug)]
pub enum Envelope {
    Call {
        from: usize,
        id: u64,
        call: ShardCall,
    },
    Answer {
        id: u64,
        answer: ShardAnswer,
    },
}

/// An answer to await.
#[derive(Debug)]
pub enum Pending {
    Local(glommio::Task<ShardAnswer>),
    Remote(LocalReceiver<ShardAnswer>),
}

impl Pending {
    pub async fn wait(self) -> BrokerResult<ShardAnswer> {
        match self {
            Pending::Local(task) => Ok(task.await),
            Pending::Remote(receiver) => receiver.recv().await.ok_or(BrokerError::ShuttingDown),
        }
    }
}

/// Handles calls addressed to this shard.
pub trait CallHandler: 'static {
    fn handle(
        self: Rc<Self>,
        call: ShardCall,
    ) -> impl std::future::Future<Output = ShardAnswer> + 'static;
}

/// This shard's end of the mesh.
#[derive(Debug)]
pub struct Router {
    me: usize,
    senders: Senders<Envelope>,
    next_id: Cell<u64>,
    waiting: RefCell<HashMap<u64, LocalSender<ShardAnswer>>>,
}

impl Router {
    /// Wraps this shard's mesh senders. The mesh orders peers by executor creation, and
    /// shards are created in order, so peer ids are shard ids; checked here.
    pub fn new(me: usize, senders: Senders<Envelope>) -> Rc<Router> {
        assert_eq!(senders.peer_id(), me, "mesh peer id differs from shard id");
        Rc::new(Router {
            me,
            senders,
            next_id: Cell::new(0),
            waiting: RefCell::new(HashMap::new()),
        })
    }

    pub fn shard_id(&self) -> usize {
        self.me
    }

    /// Starts `call` on `shard`. For a remote shard the call is queued there when this
    /// returns; the answer is awaited through the returned `Pending`.
    pub async fn start<H: CallHandler>(
        &self,
        handler: &Rc<H>,
        shard: usize,
        call: ShardCall,
    ) -> BrokerResult<Pending> {
        if shard == self.me {
            let handler = handler.clone();
            return Ok(Pending::Local(glommio::spawn_local(handler.handle(call))));
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (sender, receiver) = local_channel::new_bounded(1);
        self.waiting.borrow_mut().insert(id, sender);
        let envelope = Envelope::Call {
            from: self.me,
            id,
            call,
        };
        if self.senders.send_to(shard, envelope).await.is_err() {
            self.waiting.borrow_mut().remove(&id);
            return Err(BrokerError::ShuttingDown);
        }
        Ok(Pending::Remote(receiver))
    }

    /// Starts and awaits.
    pub async fn call<H: CallHandler>(
        &self,
        handler: &Rc<H>,
        shard: usize,
        call: ShardCall,
    ) -> BrokerResult<ShardAnswer> {
        self.start(handler, shard, call).await?.wait().await
    }

    /// Serves the mesh until it closes: calls from other shards are started in arrival
    /// order, answers are handed to whoever waits for them. The receivers run in `queue`,
    /// and so do the calls' handlers (a task spawns into its own queue): other shards'
    /// requests get the request path's shares, not the default queue's.
    pub fn serve<H: CallHandler>(
        self: &Rc<Self>,
        handler: Rc<H>,
        mut receivers: Receivers<Envelope>,
        queue: glommio::TaskQueueHandle,
    ) -> glommio::Result<(), ()> {
        for (peer, receiver) in receivers.streams() {
            let (router, handler) = (self.clone(), handler.clone());
            glommio::spawn_local_into(
                async move {
                    while let Some(envelope) = receiver.recv().await {
                        router.receive(&handler, peer, envelope);
                    }
                },
                queue,
            )?
            .detach();
        }
        Ok(())
    }

    fn receive<H: CallHandler>(self: &Rc<Self>, handler: &Rc<H>, peer: usize, envelope: Envelope) {
        match envelope {
            Envelope::Call { from, id, call } => {
                debug_assert_eq!(from, peer);
                let (router, handler) = (self.clone(), handler.clone());
                glommio::spawn_local(async move {
                    let answer = handler.handle(call).await;
                    // A closed mesh means the caller's shard is gone: nobody to tell.
                    let _ = router
                        .senders
                        .send_to(from, Envelope::Answer { id, answer })
                        .await;
                })
                .detach();
            }
            Envelope::Answer { id, answer } => {
                if let Some(sender) = self.waiting.borrow_mut().remove(&id) {
                    let _ = sender.try_send(answer);
                }
            }
        }
    }

    pub fn close(&self) {
        self.senders.close();
    }
}

/// Builds the full mesh every shard joins at boot.
pub fn mesh(shards: usize) -> glommio::channels::channel_mesh::FullMesh<Envelope> {
    glommio::channels::channel_mesh::MeshBuilder::full(shards, MESH_CHANNEL_CAPACITY)
}
