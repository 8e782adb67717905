//! Kafka error codes for the broker's errors.

use kafka_protocol::ResponseError;
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
        BrokerError::Storage(_) => ResponseError::KafkaStorageError,
        // Retriable: clients refresh metadata and retry, reaching the broker once it is
        // back.
        BrokerError::ShuttingDown => ResponseError::NotLeaderOrFollower,
        BrokerError::Kafka { code, .. } => return *code,
        BrokerError::InvalidRecords { .. } => ResponseError::InvalidRecord,
        BrokerError::Internal(_) => ResponseError::UnknownServerError,
    };
    kafka.code()
}

/// The message to put next to the code, where the response has room for one.
pub fn message(error: &BrokerError) -> String {
    error.to_string()
}
