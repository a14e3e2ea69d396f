//! Replicated commands and their responses: the data of every Raft log entry.
//!
//! A [`Request`] is versioned; the leader stamps the time on it (`stamp_ms`) before it is
//! proposed, so replicas never read a clock. Commands are coarse and batched: one
//! `QueueTasks` carries many tasks, one `Lease` the requests of many agents, one
//! `Complete` many completions.

use serde::{Deserialize, Serialize};

use super::error::StateError;
use super::model::{AgentAttrs, Code, CodeLimits, Placement, Task, Tenant, TenantLimits};
use super::retry::RetryOverride;
use super::schedules::{Fired, Schedule, ScheduleFire, ScheduleSpec};

/// One Raft entry's application data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Request {
    V1(Proposal),
}

/// A command stamped by the leader with its wall-clock time in milliseconds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Proposal {
    pub stamp_ms: u64,
    pub cmd: Command,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CodeSpec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub env: std::collections::BTreeMap<String, String>,
    pub limits: CodeLimits,
    pub max_concurrency: u32,
    pub default_retries: u32,
    /// Unset fields take the defaults of [`super::retry`].
    pub retry: RetryOverride,
    pub placement: Placement,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NewTask {
    pub code: String,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub priority: u8,
    pub delay_ms: u64,
    /// 0 takes the code's timeout.
    pub timeout_ms: u64,
    /// None takes the code's default.
    pub retries: Option<u32>,
    /// Unset fields take the code's.
    pub retry: RetryOverride,
    pub placement: Option<Placement>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LeaseRequest {
    pub agent_id: String,
    pub attrs: AgentAttrs,
    pub slots: u32,
    pub max_tasks: u32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseRef {
    pub task_id: u64,
    pub epoch: u64,
}

/// How an attempt ended, as the agent classified it. `Error` is a non-zero exit, or an
/// OOM kill when `oom_killed` is set, or (with no exit code) a failure to prepare or
/// create the container; `Killed` is a run stopped on purpose (reason `cancelled`).
/// `ImagePull` and `Infrastructure` name the failure reasons the older variants could
/// not. (New variants are appended so older entries keep their tags.)
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Error,
    Timeout,
    Killed,
    /// The image could not be pulled or resolved.
    ImagePull,
    /// The container engine failed the run, and the agent reports it rather than hand it back.
    Infrastructure,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Completion {
    pub agent_id: String,
    pub lease: LeaseRef,
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    pub error: String,
    pub started_ms: u64,
    pub peak_memory_bytes: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpireReason {
    /// The holder went silent past the lease TTL.
    LeaseLost,
    /// The task ran past its timeout plus grace (control-plane backstop).
    TimedOut,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Command {
    UpsertTenant {
        id: String,
        limits: TenantLimits,
        allowed_cidrs: Vec<String>,
    },
    /// [`Command::RegisterCode`] as written before retry policies (see [`super::legacy`]):
    /// applied with the retry defaults. Kept for entries already in logs.
    RegisterCodeV1 {
        tenant: String,
        spec: super::legacy::CodeSpecV1,
    },
    DeleteCode {
        tenant: String,
        name: String,
    },
    /// [`Command::QueueTasks`] as written before retry policies (see [`super::legacy`]):
    /// its tasks take their code's retry policy. Kept for entries already in logs.
    QueueTasksV1 {
        tenant: String,
        idempotency_key: Option<String>,
        idempotency_ttl_ms: u64,
        tasks: Vec<super::legacy::NewTaskV1>,
    },
    /// Grants leases to the agents whose long polls the leader is serving. `term`: the
    /// term in which that leader checked it may grant (see [`Command::leader_term`]): a
    /// long poll held on a node that has since lost leadership must not grant through
    /// its successor, since the node could not vouch for the lease it would answer with.
    Lease {
        term: u64,
        requests: Vec<LeaseRequest>,
    },
    Complete {
        completions: Vec<Completion>,
    },
    /// The leader's lease-expiry and timeout-backstop tick. `term` is the Raft term in
    /// which the proposing leader computed it: a deposed leader's tracker no longer hears
    /// heartbeats and would call healthy leases lost, so `apply` refuses the command from
    /// an entry of a later term (see [`Command::leader_term`]).
    ExpireLeases {
        term: u64,
        leases: Vec<LeaseRef>,
        reason: ExpireReason,
    },
    Cancel {
        tenant: String,
        task_id: u64,
    },
    /// Moves every delayed task whose time has come (by the stamp) to its ready queue.
    /// `term`: the proposing leader's term (see [`Command::leader_term`]).
    PromoteDelayed {
        term: u64,
        max_tasks: u32,
    },
    /// Deletes finished tasks (and payloads) finished before the given time, and
    /// idempotency records that have expired. `term`: the proposing leader's term (see
    /// [`Command::leader_term`]).
    Purge {
        term: u64,
        finished_before_ms: u64,
        max_tasks: u32,
    },
    /// Output shipped by one agent for its running tasks. `max_task_log_bytes` is the
    /// leader's configured cap, stamped here so every replica applies the same one.
    AppendLogs {
        agent_id: String,
        max_task_log_bytes: u64,
        chunks: Vec<super::logs::LogAppend>,
    },
    /// Several clients' commands in one log entry (the proposal batcher's hot path). Each
    /// is applied, or refused, on its own.
    Batch(Vec<Command>),
    /// An agent gives back leases it holds but did not finish: a draining agent's
    /// unfinished work, or a task it could not run because its container engine or the
    /// agent itself failed. Neither is the task's fault, so unlike a lost lease
    /// ([`Command::ExpireLeases`]) or a failure ([`Command::Complete`]) a hand-back consumes
    /// neither `lost_leases` nor the tenant's `retries_left`: each named lease that is the
    /// current lease of a task `agent_id` runs re-queues the task; any other lease (stale
    /// epoch, another agent's, finished task) is skipped. At most
    /// [`MAX_COMPLETIONS`](super::validate::MAX_COMPLETIONS) leases. Answered with
    /// [`Response::HandedBack`]. (Appended last so the other variants keep their tags.)
    HandBack {
        agent_id: String,
        leases: Vec<LeaseRef>,
    },
    /// [`Command::Purge`] bounded by work: deletes at most `max_keys` keys in all (log
    /// chunks, log metadata, tasks, idempotency records; a task counts as one key, and the
    /// task that empties its group also deletes the group's few dozen rows at most, see
    /// [`super::groups`]), so one entry's apply (and
    /// the state-machine lock it holds) is short however large the purged logs are. A
    /// task whose log does not fit loses its chunks from the last one down (its log stays
    /// numbered from 0) and stays in the finished index, so the leader's next purge goes
    /// on with it. What the leader proposes; `Purge` stays for entries already in logs.
    /// (Appended last so the other variants keep their tags.)
    PurgeBounded {
        term: u64,
        finished_before_ms: u64,
        max_tasks: u32,
        max_keys: u64,
    },
    /// Creates a schedule (see [`super::schedules`]); answered with
    /// [`Response::Schedule`].
    CreateSchedule {
        tenant: String,
        spec: ScheduleSpec,
    },
    DeleteSchedule {
        tenant: String,
        id: u64,
    },
    /// Pauses or resumes a schedule.
    PauseSchedule {
        tenant: String,
        id: u64,
        paused: bool,
    },
    /// The leader's schedule ticker: fires the named ticks, each accepted only if it is
    /// the tick its schedule expects (so a tick fires once across leader changes).
    /// `term`: the proposing leader's term (see [`Command::leader_term`]). Answered with
    /// [`Response::Fired`].
    FireSchedules {
        term: u64,
        fires: Vec<ScheduleFire>,
    },
    /// Registers or updates a code, with its retry policy (`spec.retry`: unset fields take
    /// the defaults of [`super::retry`]). Answered with [`Response::Code`]. Replaces
    /// [`Command::RegisterCodeV1`]. (Appended last so the other variants keep their tags.)
    RegisterCode {
        tenant: String,
        spec: CodeSpec,
    },
    /// Queues a batch of tasks, each with its retry settings (`NewTask::retry`: unset
    /// fields take the code's). Answered with [`Response::Queued`]. Replaces
    /// [`Command::QueueTasksV1`]. (Appended last so the other variants keep their tags.)
    QueueTasks {
        tenant: String,
        idempotency_key: Option<String>,
        /// How long the key is remembered, from the entry's stamp.
        idempotency_ttl_ms: u64,
        tasks: Vec<NewTask>,
    },
    /// Enables (or rotates) a code's webhook with `Some(hash)`, the SHA-256 of a secret
    /// made at the API edge (randomness never enters `apply`); disables it with `None`
    /// (disabling one that is off succeeds). Refused for an unknown tenant or code.
    /// Answered with [`Response::Webhook`]. The hash goes to its own `w/` row, so the
    /// `Code` record's encoding does not change. (Appended last so the other variants
    /// keep their postcard tags.)
    SetWebhook {
        tenant: String,
        code: String,
        secret_sha256: Option<[u8; 32]>,
    },
    /// Presence transitions the leader saw (see [`super::presence`]): known agents not
    /// heard from within the grace are marked `gone`; agents heard from that are new,
    /// marked gone, or changed their attributes are `seen` (recorded and marked connected).
    /// `term`: the proposing leader's term (see [`Command::leader_term`]). Answered with
    /// [`Response::Presence`]. (Appended last so the other variants keep their tags.)
    AgentPresence {
        term: u64,
        gone: Vec<String>,
        seen: Vec<super::presence::SeenAgent>,
    },
    /// Creates a cluster, shared (`owner` None) or dedicated to a tenant, or updates its
    /// guaranteed slots (the owner never changes). Answered with [`Response::Cluster`].
    /// See [`super::fleet`]. (Appended last so the other variants keep their tags.)
    CreateCluster {
        name: String,
        owner: Option<String>,
        guaranteed_slots: u32,
    },
    /// Deletes a cluster no agent is registered to. Answered with [`Response::ClusterDeleted`].
    DeleteCluster {
        name: String,
    },
    /// Registers an agent (or replaces its registration): what it may serve. Answered with
    /// [`Response::Registration`].
    RegisterAgent {
        registration: super::fleet::AgentRegistration,
    },
    /// Removes an agent's registration: it serves the shared fleet only from its next
    /// lease call (if unregistered agents are allowed). Answered with [`Response::Deregistered`].
    DeregisterAgent {
        id: String,
    },
    /// Sets the resource ceilings of a cluster, or of the shared fleet (`cluster` empty).
    /// Answered with [`Response::Ceilings`].
    SetCeilings {
        cluster: String,
        ceilings: super::fleet::Ceilings,
    },
    /// Creates an IP pool or replaces its addresses (see [`super::modes`]). Answered with
    /// [`Response::Pool`].
    CreatePool {
        name: String,
        addresses: Vec<String>,
    },
    /// Deletes a pool no tenant and no registration uses. Answered with
    /// [`Response::PoolDeleted`].
    DeletePool {
        name: String,
    },
    /// Sets a tenant's mode: shared, ip_whitelist (a pool) or vpc. Answered with
    /// [`Response::TenantMode`].
    SetTenantMode {
        tenant: String,
        mode: super::modes::TenantMode,
    },
    /// Saves a tenant's login for a registry (`login`: username and the password as the
    /// API edge sealed it), or removes it (None). Answered with [`Response::RegistryLogin`].
    SetRegistryLogin {
        tenant: String,
        registry: String,
        login: Option<(String, Vec<u8>)>,
    },
}

impl Command {
    /// The term a leader command was proposed in; `None` for every other command.
    ///
    /// Leader commands are computed from the proposing leader's own view: lease expiry
    /// from a tracker fed only by the heartbeats that leader received, grants from the
    /// long polls it holds and vouches for. A deposed leader's command, if committed by
    /// its successor, would expire leases that are being heartbeated elsewhere, or grant
    /// leases nobody can answer for. So `apply` refuses one whose term is older than the
    /// entry's ([`StateError::StaleTerm`]); timer commands are moreover proposed only
    /// locally.
    pub fn leader_term(&self) -> Option<u64> {
        match self {
            Command::ExpireLeases { term, .. }
            | Command::PromoteDelayed { term, .. }
            | Command::Purge { term, .. }
            | Command::PurgeBounded { term, .. }
            | Command::FireSchedules { term, .. }
            | Command::AgentPresence { term, .. }
            | Command::Lease { term, .. } => Some(*term),
            _ => None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub agent_id: String,
    pub task_id: u64,
    pub epoch: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Response {
    /// Blank and membership entries.
    Empty,
    Tenant(Tenant),
    Code(Code),
    CodeDeleted,
    Queued {
        task_ids: Vec<u64>,
        deduplicated: bool,
    },
    Leased {
        grants: Vec<Grant>,
    },
    Completed {
        results: Vec<Result<(), StateError>>,
    },
    Expired {
        task_ids: Vec<u64>,
    },
    Cancelled(Box<Task>),
    Promoted {
        count: u64,
    },
    Purged {
        tasks: u64,
        idempotency_keys: u64,
    },
    /// One result per chunk, in order.
    LogsAppended {
        results: Vec<Result<(), StateError>>,
    },
    Rejected(StateError),
    Batch(Vec<Response>),
    /// The tasks a [`Command::HandBack`] re-queued, in the order named.
    HandedBack {
        task_ids: Vec<u64>,
    },
    Schedule(Box<Schedule>),
    ScheduleDeleted,
    /// One result per fire, in order.
    Fired {
        results: Vec<Result<Fired, StateError>>,
    },
    /// A [`Command::SetWebhook`] applied: whether the code now has a webhook.
    Webhook {
        code: String,
        enabled: bool,
    },
    /// A [`Command::AgentPresence`] applied: how many agents it marked gone, and how many
    /// it recorded or marked connected again.
    Presence {
        gone: u32,
        seen: u32,
    },
    Cluster(Box<super::fleet::Cluster>),
    ClusterDeleted,
    Registration(Box<super::fleet::AgentRegistration>),
    Deregistered,
    Ceilings(super::fleet::Ceilings),
    Pool(Box<super::modes::IpPool>),
    PoolDeleted,
    TenantMode(super::modes::TenantMode),
    /// A [`Command::SetRegistryLogin`] applied: whether the tenant now has a login there.
    RegistryLogin {
        registry: String,
        saved: bool,
    },
}
