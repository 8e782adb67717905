//! Cluster metadata on a Raft library, and partition replication.
//!
//! Everything here is a state machine without I/O or a runtime: it is driven with what
//! happened (a message arrived, time passed, a write became durable) and answers with
//! what to do. The broker drives it over its sockets and files; the simulator in
//! `tests/simulation.rs` drives the very same code through dropped, reordered and
//! partitioned messages, crashes and lost unsynced writes, from a seed.
//!
//! - `metadata`: the records of the metadata log and the image they build.
//! - `quorum`: the metadata log replicated by Raft (raft-rs).
//! - `controller`: what the active controller decides (fencing, elections, placement,
//!   ISR changes, moves).
//! - `partition`: one partition's leader and follower (Kafka's ISR protocol).

pub mod controller;
pub mod metadata;
pub mod partition;
pub mod quorum;

pub use controller::{
    Controller, ControllerAnswer, ControllerConfig, ControllerError, ControllerRequest, Decision,
    InternalTopic,
};
pub use metadata::{
    AclBinding, AclOperation, AclPatternType, AclPermission, AclResourceType, BrokerImage,
    ClientQuotas, Endpoint, ListenerPort, MetadataImage, MetadataRecord, NO_LEADER, NodeId,
    PartitionState, QuotaEntity, QuotaName, Replica, ScramCredential, ScramMechanism, TopicImage,
    UserScramCredential,
};
pub use partition::{
    FetchAnswer, FetchPosition, FetchRefusal, FollowerAction, FollowerReplica, LeaderReplica,
    ReplicaLog, ReplicationConfig,
};
pub use quorum::{Committed, Proposal, Quorum, QuorumConfig, QuorumStorage, QuorumWork};

/// The raft-rs message and state types the driver stores and sends.
pub use raft::eraftpb;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    #[error("this node does not lead the controller quorum (the leader is {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("corrupt {what}: {reason}")]
    Corrupt { what: &'static str, reason: String },
    #[error("raft: {0}")]
    Raft(String),
}
