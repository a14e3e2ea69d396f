//! `StateError`: why the state machine refused a command. A refused command changes
//! nothing. These travel inside the replicated response, so they are serde types.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StateError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("tenant {0:?} does not exist")]
    UnknownTenant(String),
    #[error("code {0:?} not found")]
    CodeNotFound(String),
    #[error("task {0} not found")]
    TaskNotFound(u64),
    #[error("tenant {tenant:?} is over its queued-task quota ({queued} queued + {adding} > max_queued_tasks {limit})")]
    QuotaExceeded { tenant: String, queued: u64, adding: u64, limit: u64 },
    #[error("stale lease for task {task_id}: epoch {epoch} is not the current lease")]
    StaleEpoch { task_id: u64, epoch: u64 },
    #[error("task {0} has already finished")]
    AlreadyFinished(u64),
    /// A leader command (a timer tick, a lease grant) proposed in term `proposed` reached
    /// the log in a later term `entry`: its proposer was deposed, so its view (lease expiry
    /// above all) is not the current leader's. Refused; nothing changes.
    #[error("stale leader command: proposed by the leader of term {proposed}, committed in term {entry}")]
    StaleTerm { proposed: u64, entry: u64 },
    #[error("schedule {0} not found")]
    ScheduleNotFound(u64),
    /// A fire for a tick the schedule no longer expects (already fired, paused, or not yet
    /// due): each tick fires once.
    #[error("schedule {schedule_id} does not expect a fire for tick {tick_ms}")]
    StaleTick { schedule_id: u64, tick_ms: u64 },
    /// The tenant may not place work on this cluster: it does not exist or is dedicated to
    /// another tenant (one answer for both, so names do not leak).
    #[error("cluster {cluster:?} is not one this tenant may place work on (not a shared cluster or one it owns)")]
    ClusterNotAllowed { cluster: String },
    #[error("cluster {0:?} not found")]
    ClusterNotFound(String),
    #[error("agent {0:?} is not registered")]
    AgentNotRegistered(String),
    #[error("IP pool {0:?} not found")]
    PoolNotFound(String),
}

impl StateError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        StateError::Invalid { field: field.into(), reason: reason.into() }
    }
}
