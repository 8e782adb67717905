//! What the broker answers instead of success, and the protocol error code for each.

use thiserror::Error;
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
    /// An error only the Kafka protocol has (consumer group membership, idempotent
    /// producers), with its Kafka error code.
    #[error("{message}")]
    Kafka { code: i16, message: String },
    /// Records a batch may not hold (a record without a key in a compacted topic): the
    /// batch is refused, and Kafka's answer names the records (`record_errors`).
    #[error("{message}")]
    InvalidRecords { message: String, records: Vec<i32> },
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
            BrokerError::Storage(_) => ErrorCode::StorageError,
            BrokerError::ShuttingDown => ErrorCode::ShuttingDown,
            BrokerError::Kafka { .. } | BrokerError::InvalidRecords { .. } => {
                ErrorCode::InvalidRequest
            }
            BrokerError::Internal(_) => ErrorCode::Unknown,
        }
    }
}

impl BrokerError {
    /// A Kafka protocol error: `ResponseError` names the code.
    pub fn kafka(error: kafka_protocol::ResponseError, message: impl Into<String>) -> BrokerError {
        BrokerError::Kafka {
            code: error.code(),
            message: message.into(),
        }
    }
}

pub type BrokerResult<T> = Result<T, BrokerError>;
