use thiserror::Error;
use weir_wire::WireError;
use weir_wire::native::schema::ErrorCode;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("connecting to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    #[error("malformed response: {0}")]
    Protocol(#[from] WireError),
    #[error("broker error {code:?}: {message}")]
    Broker { code: ErrorCode, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("timed out: {0}")]
    Timeout(String),
}

impl ClientError {
    pub fn broker(code: ErrorCode, message: Option<&str>) -> ClientError {
        ClientError::Broker {
            code,
            message: message.unwrap_or_default().to_string(),
        }
    }

    /// Whether retrying the same request may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::ConnectionLost(_)
            | ClientError::Timeout(_)
            | ClientError::Connect { .. } => true,
            ClientError::Broker { code, .. } => {
                matches!(
                    *code,
                    ErrorCode::Timeout
                        | ErrorCode::ShuttingDown
                        | ErrorCode::NotOwner
                        | ErrorCode::NotLeader
                        | ErrorCode::LeaderNotAvailable
                        | ErrorCode::NotEnoughReplicas
                        | ErrorCode::NotController
                        | ErrorCode::FencedLeaderEpoch
                        | ErrorCode::UnknownLeaderEpoch
                        | ErrorCode::ConcurrentTransactions
                        | ErrorCode::CoordinatorNotAvailable
                        | ErrorCode::UnstableOffsetCommit
                )
            }
            _ => false,
        }
    }

    /// Whether the error means the request went to the wrong broker (or lost it): the
    /// client looks the leader or coordinator up again.
    pub fn is_moved(&self) -> bool {
        match self {
            ClientError::ConnectionLost(_) | ClientError::Connect { .. } => true,
            ClientError::Broker { code, .. } => matches!(
                *code,
                ErrorCode::NotLeader
                    | ErrorCode::LeaderNotAvailable
                    | ErrorCode::ShuttingDown
                    | ErrorCode::NotOwner
                    | ErrorCode::FencedLeaderEpoch
                    | ErrorCode::UnknownLeaderEpoch
                    | ErrorCode::CoordinatorNotAvailable
            ),
            _ => false,
        }
    }
}

pub type ClientResult<T> = Result<T, ClientError>;
