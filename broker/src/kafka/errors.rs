//! Kafka error codes for the broker's errors.

use kafka_protocol::ResponseError;
use weir_replication::{AclResourceType, ControllerError, FetchRefusal};
use weir_storage::StorageError;
use weir_wire::WireError;

use crate::error::BrokerError;

pub fn code(error: &BrokerError) -> i16 {
    let kafka = match error {
        BrokerError::UnknownTopicOrPartition { .. } | BrokerError::UnknownTopic(_) => {
            ResponseError::UnknownTopicOrPartition
        }
        BrokerError::TopicAlreadyExists(_) => ResponseError::TopicAlreadyExists,
        BrokerError::InvalidTopic(_) => ResponseError::InvalidTopicException,
        BrokerError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        BrokerError::InvalidConfig(_) => ResponseError::InvalidConfig,
        BrokerError::InvalidRequest(_) => ResponseError::InvalidRequest,
        BrokerError::InvalidGroup(_) => ResponseError::InvalidGroupId,
        BrokerError::InvalidBatch(wire)
        | BrokerError::Storage(StorageError::InvalidBatch(wire)) => match wire {
            WireError::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
            _ => ResponseError::CorruptMessage,
        },
        BrokerError::Storage(StorageError::OffsetOutOfRange { .. }) => {
            ResponseError::OffsetOutOfRange
        }
        BrokerError::Storage(StorageError::Truncated { .. } | StorageError::Truncating { .. }) => {
            ResponseError::NotLeaderOrFollower
        }
        BrokerError::Storage(_) => ResponseError::KafkaStorageError,
        // Retriable: clients refresh metadata and retry, reaching the broker once it is
        // back.
        BrokerError::ShuttingDown => ResponseError::NotLeaderOrFollower,
        BrokerError::Starting => ResponseError::LeaderNotAvailable,
        BrokerError::Kafka { code, .. } => return *code,
        BrokerError::InvalidRecords { .. } => ResponseError::InvalidRecord,
        BrokerError::NotLeader { .. } => ResponseError::NotLeaderOrFollower,
        BrokerError::LeaderNotAvailable { .. } => ResponseError::LeaderNotAvailable,
        BrokerError::NotEnoughReplicas { .. } => ResponseError::NotEnoughReplicas,
        BrokerError::NotEnoughReplicasAfterAppend { .. } => {
            ResponseError::NotEnoughReplicasAfterAppend
        }
        BrokerError::NotCoordinator(_) => ResponseError::NotCoordinator,
        BrokerError::TimedOut(_) => ResponseError::RequestTimedOut,
        BrokerError::FetchRefused(refusal) => match refusal {
            FetchRefusal::NotLeader | FetchRefusal::NotReplica => {
                ResponseError::NotLeaderOrFollower
            }
            FetchRefusal::FencedLeaderEpoch => ResponseError::FencedLeaderEpoch,
            FetchRefusal::UnknownLeaderEpoch => ResponseError::UnknownLeaderEpoch,
            FetchRefusal::OutOfRange { .. } => ResponseError::OffsetOutOfRange,
        },
        BrokerError::Controller(error) => match error {
            ControllerError::NotController { .. } => ResponseError::NotController,
            ControllerError::UnknownTopic(_) | ControllerError::UnknownPartition { .. } => {
                ResponseError::UnknownTopicOrPartition
            }
            ControllerError::TopicExists(_) => ResponseError::TopicAlreadyExists,
            ControllerError::InvalidTopic(_) => ResponseError::InvalidTopicException,
            ControllerError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
            ControllerError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
            ControllerError::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
            ControllerError::StaleBrokerEpoch { .. } => ResponseError::StaleBrokerEpoch,
            ControllerError::FencedLeaderEpoch { .. } => ResponseError::FencedLeaderEpoch,
            ControllerError::InvalidUpdateVersion { .. } => ResponseError::InvalidUpdateVersion,
            ControllerError::IneligibleReplica(_) => ResponseError::IneligibleReplica,
            _ => ResponseError::UnknownServerError,
        },
        BrokerError::Unauthorized { resource_type, .. } => match resource_type {
            AclResourceType::Topic => ResponseError::TopicAuthorizationFailed,
            AclResourceType::Group => ResponseError::GroupAuthorizationFailed,
            AclResourceType::Cluster => ResponseError::ClusterAuthorizationFailed,
            AclResourceType::TransactionalId => ResponseError::TransactionalIdAuthorizationFailed,
        },
        BrokerError::AuthenticationFailed(_) => ResponseError::SaslAuthenticationFailed,
        BrokerError::Internal(_) => ResponseError::UnknownServerError,
    };
    kafka.code()
}

/// The message to put next to the code, where the response has room for one.
pub fn message(error: &BrokerError) -> String {
    error.to_string()
}
