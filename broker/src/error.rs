//! What the broker answers instead of success, and the protocol error code for each.

use thiserror::Error;
use weir_replication::{ControllerError, FetchRefusal};
use weir_storage::StorageError;
use weir_wire::WireError;
use weir_wire::native::schema::ErrorCode;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BrokerError {
    #[error("unknown topic or partition {topic}-{partition}")]
    UnknownTopicOrPartition { topic: String, partition: i32 },
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error("topic {0} already exists")]
    TopicAlreadyExists(String),
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    #[error("invalid partitions: {0}")]
    InvalidPartitions(String),
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("invalid group: {0}")]
    InvalidGroup(String),
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] WireError),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// The broker is starting and does not have its metadata yet: clients retry.
    #[error("the broker is starting: its metadata is not loaded yet")]
    Starting,
    /// An error only the Kafka protocol has (consumer group membership, idempotent
    /// producers), with its Kafka error code.
    #[error("{message}")]
    Kafka { code: i16, message: String },
    /// Records a batch may not hold (a record without a key in a compacted topic): the
    /// batch is refused, and Kafka's answer names the records (`record_errors`).
    #[error("{message}")]
    InvalidRecords { message: String, records: Vec<i32> },
    /// This broker does not lead the partition; clients refresh metadata and retry.
    #[error("broker {node} does not lead {topic}-{partition} (its leader is {leader})")]
    NotLeader {
        topic: String,
        partition: i32,
        node: i32,
        leader: i32,
    },
    #[error("{topic}-{partition} has no leader at the moment")]
    LeaderNotAvailable { topic: String, partition: i32 },
    #[error(
        "{topic}-{partition} has {in_sync} in-sync replicas, fewer than its min.insync.replicas {min}"
    )]
    NotEnoughReplicas {
        topic: String,
        partition: i32,
        in_sync: usize,
        min: i32,
    },
    /// The batch is in the leader's log, but the ISR shrank below min.insync.replicas
    /// before enough replicas had it: it may be lost; producers retry (idempotent ones
    /// find it already appended).
    #[error(
        "{topic}-{partition}: appended, but the ISR shrank to {in_sync} replicas, fewer than its min.insync.replicas {min}"
    )]
    NotEnoughReplicasAfterAppend {
        topic: String,
        partition: i32,
        in_sync: usize,
        min: i32,
    },
    #[error("{0}")]
    Controller(weir_replication::ControllerError),
    #[error("{0}: a follower's fetch refused")]
    FetchRefused(#[from] weir_replication::FetchRefusal),
    #[error("this broker does not coordinate group {0}")]
    NotCoordinator(String),
    #[error("timed out: {0}")]
    TimedOut(String),
    /// SASL refused the credentials or the mechanism.
    #[error("{0}")]
    AuthenticationFailed(String),
    /// The ACLs do not allow the request (or this part of it).
    #[error("{principal} is not allowed {} on {} {name}", operation.name(), resource_type.name())]
    Unauthorized {
        principal: String,
        operation: weir_replication::AclOperation,
        resource_type: weir_replication::AclResourceType,
        name: String,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl BrokerError {
    pub fn code(&self) -> ErrorCode {
        match self {
            BrokerError::UnknownTopicOrPartition { .. } | BrokerError::UnknownTopic(_) => {
                ErrorCode::UnknownTopicOrPartition
            }
            BrokerError::TopicAlreadyExists(_) => ErrorCode::TopicAlreadyExists,
            BrokerError::InvalidTopic(_) => ErrorCode::InvalidTopic,
            BrokerError::InvalidPartitions(_) => ErrorCode::InvalidPartitions,
            BrokerError::InvalidConfig(_) => ErrorCode::InvalidConfig,
            BrokerError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            BrokerError::InvalidGroup(_) => ErrorCode::InvalidGroup,
            BrokerError::InvalidBatch(WireError::BatchTooLarge { .. }) => ErrorCode::BatchTooLarge,
            BrokerError::InvalidBatch(_) => ErrorCode::CorruptBatch,
            BrokerError::Storage(StorageError::InvalidBatch(WireError::BatchTooLarge {
                ..
            })) => ErrorCode::BatchTooLarge,
            BrokerError::Storage(StorageError::InvalidBatch(_)) => ErrorCode::CorruptBatch,
            BrokerError::Storage(StorageError::OffsetOutOfRange { .. }) => {
                ErrorCode::OffsetOutOfRange
            }
            // The partition changed leader under the request: its client retries there.
            BrokerError::Storage(
                StorageError::Truncated { .. } | StorageError::Truncating { .. },
            ) => ErrorCode::NotLeader,
            BrokerError::Storage(_) => ErrorCode::StorageError,
            BrokerError::ShuttingDown => ErrorCode::ShuttingDown,
            BrokerError::Starting => ErrorCode::LeaderNotAvailable,
            BrokerError::Kafka { code, .. } => native_of_kafka(*code),
            BrokerError::Unauthorized { .. } => ErrorCode::AuthorizationFailed,
            BrokerError::AuthenticationFailed(_) => ErrorCode::AuthenticationFailed,
            BrokerError::InvalidRecords { .. } => ErrorCode::InvalidRequest,
            BrokerError::NotLeader { .. } | BrokerError::NotCoordinator(_) => ErrorCode::NotLeader,
            BrokerError::LeaderNotAvailable { .. } => ErrorCode::LeaderNotAvailable,
            BrokerError::NotEnoughReplicas { .. }
            | BrokerError::NotEnoughReplicasAfterAppend { .. } => ErrorCode::NotEnoughReplicas,
            BrokerError::Controller(error) => controller_code(error),
            BrokerError::FetchRefused(refusal) => match refusal {
                FetchRefusal::NotLeader => ErrorCode::NotLeader,
                FetchRefusal::FencedLeaderEpoch => ErrorCode::FencedLeaderEpoch,
                FetchRefusal::UnknownLeaderEpoch => ErrorCode::UnknownLeaderEpoch,
                FetchRefusal::NotReplica => ErrorCode::NotReplica,
                FetchRefusal::OutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            },
            BrokerError::TimedOut(_) => ErrorCode::Timeout,
            BrokerError::Internal(_) => ErrorCode::Unknown,
        }
    }

    /// Whether a client (or a broker forwarding to the controller) should retry after
    /// refreshing its metadata.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            BrokerError::NotLeader { .. }
                | BrokerError::LeaderNotAvailable { .. }
                | BrokerError::NotEnoughReplicas { .. }
                | BrokerError::NotEnoughReplicasAfterAppend { .. }
                | BrokerError::NotCoordinator(_)
                | BrokerError::Starting
                | BrokerError::TimedOut(_)
                | BrokerError::Controller(ControllerError::NotController { .. })
        )
    }
}

/// The native code of a Kafka error the native protocol can meet (idempotent and
/// transactional producers); the rest, which only Kafka's group protocol produces, are
/// InvalidRequest.
fn native_of_kafka(code: i16) -> ErrorCode {
    use kafka_protocol::ResponseError as K;
    let native = [
        (K::OutOfOrderSequenceNumber, ErrorCode::OutOfOrderSequence),
        (K::InvalidProducerEpoch, ErrorCode::InvalidProducerEpoch),
        (K::ProducerFenced, ErrorCode::ProducerFenced),
        (
            K::InvalidProducerIdMapping,
            ErrorCode::InvalidProducerIdMapping,
        ),
        (K::InvalidTxnState, ErrorCode::InvalidTxnState),
        (K::ConcurrentTransactions, ErrorCode::ConcurrentTransactions),
        (
            K::InvalidTransactionTimeout,
            ErrorCode::InvalidTransactionTimeout,
        ),
        (K::UnstableOffsetCommit, ErrorCode::UnstableOffsetCommit),
        (
            K::ClusterAuthorizationFailed,
            ErrorCode::AuthorizationFailed,
        ),
        (K::TopicAuthorizationFailed, ErrorCode::AuthorizationFailed),
        (K::GroupAuthorizationFailed, ErrorCode::AuthorizationFailed),
        (
            K::TransactionalIdAuthorizationFailed,
            ErrorCode::AuthorizationFailed,
        ),
        (
            K::CoordinatorNotAvailable,
            ErrorCode::CoordinatorNotAvailable,
        ),
        (
            K::CoordinatorLoadInProgress,
            ErrorCode::CoordinatorNotAvailable,
        ),
        (K::NotCoordinator, ErrorCode::NotLeader),
        (K::NotLeaderOrFollower, ErrorCode::NotLeader),
        (K::NotEnoughReplicas, ErrorCode::NotEnoughReplicas),
        (K::OperationNotAttempted, ErrorCode::OperationNotAttempted),
        (
            K::UnknownTopicOrPartition,
            ErrorCode::UnknownTopicOrPartition,
        ),
        (K::RequestTimedOut, ErrorCode::Timeout),
        (K::LeaderNotAvailable, ErrorCode::LeaderNotAvailable),
        (
            K::NotEnoughReplicasAfterAppend,
            ErrorCode::NotEnoughReplicas,
        ),
        (K::NotController, ErrorCode::NotController),
        (K::KafkaStorageError, ErrorCode::StorageError),
        (K::UnknownServerError, ErrorCode::Unknown),
        (K::CorruptMessage, ErrorCode::CorruptBatch),
        (K::InvalidRecord, ErrorCode::CorruptBatch),
        (K::MessageTooLarge, ErrorCode::BatchTooLarge),
        (K::RecordListTooLarge, ErrorCode::BatchTooLarge),
        (K::InvalidTopicException, ErrorCode::InvalidTopic),
        (K::InvalidConfig, ErrorCode::InvalidConfig),
        (K::OffsetOutOfRange, ErrorCode::OffsetOutOfRange),
        (K::FencedLeaderEpoch, ErrorCode::FencedLeaderEpoch),
        (K::UnknownLeaderEpoch, ErrorCode::UnknownLeaderEpoch),
    ];
    native
        .iter()
        .find(|(kafka, _)| kafka.code() == code)
        .map_or(ErrorCode::InvalidRequest, |(_, native)| *native)
}

fn controller_code(error: &ControllerError) -> ErrorCode {
    match error {
        ControllerError::NotController { .. } => ErrorCode::NotController,
        ControllerError::UnknownTopic(_) | ControllerError::UnknownPartition { .. } => {
            ErrorCode::UnknownTopicOrPartition
        }
        ControllerError::TopicExists(_) => ErrorCode::TopicAlreadyExists,
        ControllerError::InvalidTopic(_) => ErrorCode::InvalidTopic,
        ControllerError::InvalidPartitions(_) => ErrorCode::InvalidPartitions,
        ControllerError::InvalidReplicationFactor(_) => ErrorCode::InvalidReplicationFactor,
        ControllerError::InvalidReplicaAssignment(_) | ControllerError::IneligibleReplica(_) => {
            ErrorCode::InvalidReplicaAssignment
        }
        ControllerError::StaleBrokerEpoch { .. } => ErrorCode::StaleBrokerEpoch,
        ControllerError::FencedLeaderEpoch { .. } => ErrorCode::FencedLeaderEpoch,
        ControllerError::InvalidUpdateVersion { .. } => ErrorCode::InvalidRequest,
        _ => ErrorCode::Unknown,
    }
}

/// The controller's refusals that the broker has its own words for become those, so that
/// both protocols answer them as before there was a controller.
impl From<ControllerError> for BrokerError {
    fn from(error: ControllerError) -> BrokerError {
        match error {
            ControllerError::UnknownTopic(name) => BrokerError::UnknownTopic(name),
            ControllerError::UnknownPartition { topic, partition } => {
                BrokerError::UnknownTopicOrPartition { topic, partition }
            }
            ControllerError::TopicExists(name) => BrokerError::TopicAlreadyExists(name),
            ControllerError::InvalidTopic(reason) => BrokerError::InvalidTopic(reason),
            ControllerError::InvalidPartitions(reason) => BrokerError::InvalidPartitions(reason),
            other => BrokerError::Controller(other),
        }
    }
}

impl BrokerError {
    /// The same error again, to answer several partitions with it (errors are not
    /// `Clone`: some carry I/O errors). The variants a client's next step depends on are
    /// kept; the others become their Kafka code and message.
    pub fn same(&self) -> BrokerError {
        match self {
            BrokerError::Kafka { code, message } => BrokerError::Kafka {
                code: *code,
                message: message.clone(),
            },
            BrokerError::NotLeader {
                topic,
                partition,
                node,
                leader,
            } => BrokerError::NotLeader {
                topic: topic.clone(),
                partition: *partition,
                node: *node,
                leader: *leader,
            },
            BrokerError::LeaderNotAvailable { topic, partition } => {
                BrokerError::LeaderNotAvailable {
                    topic: topic.clone(),
                    partition: *partition,
                }
            }
            BrokerError::UnknownTopicOrPartition { topic, partition } => {
                BrokerError::UnknownTopicOrPartition {
                    topic: topic.clone(),
                    partition: *partition,
                }
            }
            BrokerError::NotCoordinator(group) => BrokerError::NotCoordinator(group.clone()),
            BrokerError::ShuttingDown => BrokerError::ShuttingDown,
            BrokerError::Starting => BrokerError::Starting,
            BrokerError::TimedOut(what) => BrokerError::TimedOut(what.clone()),
            BrokerError::InvalidRequest(what) => BrokerError::InvalidRequest(what.clone()),
            BrokerError::InvalidGroup(what) => BrokerError::InvalidGroup(what.clone()),
            BrokerError::Unauthorized {
                principal,
                operation,
                resource_type,
                name,
            } => BrokerError::Unauthorized {
                principal: principal.clone(),
                operation: *operation,
                resource_type: *resource_type,
                name: name.clone(),
            },
            other => BrokerError::Kafka {
                code: crate::kafka::errors::code(other),
                message: other.to_string(),
            },
        }
    }

    /// A Kafka protocol error: `ResponseError` names the code.
    pub fn kafka(error: kafka_protocol::ResponseError, message: impl Into<String>) -> BrokerError {
        BrokerError::Kafka {
            code: error.code(),
            message: message.into(),
        }
    }
}

pub type BrokerResult<T> = Result<T, BrokerError>;
