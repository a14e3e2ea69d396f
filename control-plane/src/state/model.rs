//! The replicated entities: tenants, codes, tasks, leases, agents, idempotency records.
//! Plain data; the rules that change them live in `apply` and its helpers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use super::retry::{FailureReason, RetryOn, RetryPolicy};

/// Per-tenant limits. Zero means "unlimited" for concurrency.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TenantLimits {
    pub max_queued_tasks: u64,
    pub max_concurrency: u32,
    pub max_payload_bytes: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    pub id: String,
    pub limits: TenantLimits,
    /// Source networks the tenant's API calls may come from; empty = anywhere.
    pub allowed_cidrs: Vec<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// Where a task may run. Empty strings and an empty label map mean "anywhere"
/// except for `cluster`, which must equal the agent's (empty = the shared fleet).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Placement {
    pub cluster: String,
    pub region: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct CodeLimits {
    pub memory_bytes: u64,
    pub cpu_millis: u32,
    pub pids: u32,
    pub timeout_ms: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Code {
    pub tenant: String,
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub limits: CodeLimits,
    /// 0 = unlimited.
    pub max_concurrency: u32,
    pub default_retries: u32,
    /// Delay, backoff cap and `retry_on` for the code's tasks (see [`super::retry`]).
    pub retry: RetryPolicy,
    pub placement: Placement,
    pub created_ms: u64,
    pub updated_ms: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TaskState {
    Delayed,
    Queued,
    Running,
    Complete,
    Error,
    Timeout,
    Killed,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 8] = [
        TaskState::Delayed,
        TaskState::Queued,
        TaskState::Running,
        TaskState::Complete,
        TaskState::Error,
        TaskState::Timeout,
        TaskState::Killed,
        TaskState::Cancelled,
    ];

    pub fn is_finished(self) -> bool {
        !matches!(self, TaskState::Delayed | TaskState::Queued | TaskState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Delayed => "delayed",
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Error => "error",
            TaskState::Timeout => "timeout",
            TaskState::Killed => "killed",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A grant of a task to one agent. `epoch` is the Raft log index of the grant: the
/// fencing token every agent message about the task must carry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub agent_id: String,
    pub epoch: u64,
    pub granted_ms: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskResult {
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    pub error: String,
    pub started_ms: u64,
    pub finished_ms: u64,
    pub peak_memory_bytes: u64,
}

/// One attempt's end: a lease granted to an agent, and what became of it. `reason` is
/// `None` for a success. Kept on the task (at most
/// [`MAX_ATTEMPTS_KEPT`](super::retry::MAX_ATTEMPTS_KEPT), the oldest dropped first).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first grant; counts every grant (retries, lost leases, hand-backs).
    pub number: u32,
    pub agent_id: String,
    pub epoch: u64,
    pub granted_ms: u64,
    /// When the container started, by the agent's clock; 0 if it never did.
    pub started_ms: u64,
    /// When the control plane recorded the end (the entry's stamp).
    pub finished_ms: u64,
    pub exit_code: Option<i32>,
    pub reason: Option<FailureReason>,
    pub peak_memory_bytes: u64,
    /// The agent's or control plane's explanation, cut to
    /// [`MAX_ATTEMPT_ERROR_BYTES`](super::retry::MAX_ATTEMPT_ERROR_BYTES).
    pub error: String,
    /// The backoff wait this attempt's failure scheduled before the next one; 0 if none.
    pub retry_delay_ms: u64,
}

/// A task record. Its payload is stored apart (`p/` table) so that state changes do not
/// rewrite it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub id: u64,
    pub tenant: String,
    pub code: String,
    pub priority: u8,
    pub state: TaskState,
    pub created_ms: u64,
    pub ready_at_ms: u64,
    pub timeout_ms: u64,
    pub retries_left: u32,
    /// `retries_left` at queue time: the retry number of a failure is
    /// `max_retries - retries_left` after it is counted.
    pub max_retries: u32,
    pub retry: RetryPolicy,
    pub attempts: u32,
    pub lost_leases: u32,
    /// The ends of the latest attempts, oldest first.
    pub attempt_log: Vec<Attempt>,
    /// The reason of the last attempt that ended (None after a success or before any).
    pub reason: Option<FailureReason>,
    pub placement: Placement,
    pub lease: Option<Lease>,
    pub result: Option<TaskResult>,
    pub payload_bytes: u64,
    /// Set on a task a schedule queued.
    pub schedule: Option<super::schedules::ScheduleRun>,
}

/// What an agent declares about itself; placement constraints are matched against it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentAttrs {
    pub region: String,
    pub cluster: String,
    pub vpc: String,
    pub ip_pool: String,
    pub egress_ip: String,
    pub labels: BTreeMap<String, String>,
}

/// Replicated only when it changes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AgentRecord {
    pub id: String,
    pub attrs: AgentAttrs,
    pub slots: u32,
    pub first_seen_ms: u64,
    pub updated_ms: u64,
}

/// A code's webhook: the SHA-256 of its secret (the secret itself is shown once, when
/// it is made, and never stored). Kept in its own row beside the code's (`w/`, same key
/// as the code's `c/` row) rather than as a field of [`Code`], so that the code record's
/// encoding is unchanged: rows and snapshots written before webhooks existed decode as
/// they are. Deleting the code deletes its webhook.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    pub tenant: String,
    pub code: String,
    pub secret_sha256: [u8; 32],
    pub enabled_ms: u64,
}

/// Remembers the ids a keyed queue call produced, until `expires_ms`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct IdemRecord {
    pub task_ids: Vec<u64>,
    pub expires_ms: u64,
}
