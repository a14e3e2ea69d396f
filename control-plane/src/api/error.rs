//! `ApiError`: every failure the API edge reports, mapped to a gRPC status in exactly one
//! place. A leader hint travels in the `x-drover-leader` metadata entry (never inside a
//! message to be parsed).

use tonic::{Code, Status};

use crate::raft::node::ProposeError;
use crate::state::{KvError, StateError};

pub const LEADER_METADATA: &str = "x-drover-leader";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Exhausted(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unavailable(String),
    /// This call must be served by the leader; the hint says where it is.
    #[error("this node is not the leader{}", .leader.as_ref().map(|a| format!("; the leader is at {a}")).unwrap_or_default())]
    NotLeader { leader: Option<String> },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::Invalid { field: field.into(), reason: reason.into() }
    }

    /// A state machine answer the handler did not expect for its command (a bug).
    pub fn unexpected(r: crate::state::Response) -> Self {
        ApiError::Internal(format!("unexpected state machine response {r:?}"))
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Invalid { field, reason } => ApiError::Invalid { field, reason },
            StateError::UnknownTenant(_)
            | StateError::CodeNotFound(_)
            | StateError::TaskNotFound(_)
            | StateError::ScheduleNotFound(_)
            | StateError::ClusterNotFound(_)
            | StateError::AgentNotRegistered(_)
            | StateError::PoolNotFound(_) => ApiError::NotFound(e.to_string()),
            StateError::ClusterNotAllowed { .. } => ApiError::PermissionDenied(e.to_string()),
            StateError::QuotaExceeded { .. } => ApiError::Exhausted(e.to_string()),
            StateError::StaleEpoch { .. } | StateError::AlreadyFinished(_) | StateError::StaleTick { .. } => {
                ApiError::FailedPrecondition(e.to_string())
            }
            // A leadership change under the proposal: the caller may retry.
            StateError::StaleTerm { .. } => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        match e {
            // Retrying cannot help: the message names the limit.
            ProposeError::TooLarge { .. } => ApiError::Exhausted(e.to_string()),
            _ => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl From<KvError> for ApiError {
    fn from(e: KvError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let code = match &e {
            ApiError::Invalid { .. } => Code::InvalidArgument,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::Exhausted(_) => Code::ResourceExhausted,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::Unavailable(_) | ApiError::NotLeader { .. } => Code::Unavailable,
            ApiError::Internal(_) => Code::Internal,
        };
        let mut status = Status::new(code, e.to_string());
        if let ApiError::NotLeader { leader: Some(addr) } = &e
            && let Ok(v) = addr.parse()
        {
            status.metadata_mut().insert(LEADER_METADATA, v);
        }
        status
    }
}

pub type ApiResult<T> = Result<tonic::Response<T>, Status>;
