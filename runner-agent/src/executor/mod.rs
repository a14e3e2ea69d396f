//! The executor: runs one leased task in a fresh container and reports how it ended.
//! [`Executor`] is the narrow trait the agent drives (run, re-adopt, list labelled,
//! remove, ping); [`DockerExecutor`] implements it on the Docker Engine API (bollard,
//! local unix socket, `DOCKER_HOST` honoured), [`fake::FakeExecutor`] in memory, for the
//! agent's own logic tests and for simulated fleets (never for integration tests).
//!
//! Owns: the container's whole life (create → start → stream output → wait/timeout →
//! inspect → remove) and the hardening applied to it. Invariants:
//! * every container it creates is removed before [`Executor::run`] returns, on every
//!   path (success, error, timeout, cancellation);
//! * a container carries the labels [`LABEL_TASK`], [`LABEL_EPOCH`], [`LABEL_AGENT`],
//!   [`LABEL_ATTEMPT`] so a later run of the agent can find it;
//! * output is forwarded in the order the engine delivers it, per stream.

pub mod container;
pub mod fake;
pub mod image_cache;
pub mod import;
pub mod metrics;
pub mod network;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use container::{DockerExecutor, ExecutorConfig, Labelled, OnCreated};
pub use image_cache::ImageCache;
pub use metrics::ExecMetrics;

pub const LABEL_TASK: &str = "drover.task-id";
pub const LABEL_EPOCH: &str = "drover.lease-epoch";
pub const LABEL_AGENT: &str = "drover.agent-id";
pub const LABEL_ATTEMPT: &str = "drover.attempt";
/// The attempt's timeout, so a re-adopted container keeps its deadline.
pub const LABEL_TIMEOUT: &str = "drover.timeout-ms";

/// Everything needed to run one task attempt.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub task_id: u64,
    pub attempt: u32,
    pub lease_epoch: u64,
    pub agent_id: String,
    pub tenant: String,
    pub code: String,
    pub image: String,
    /// Empty = the image's default command.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub payload: Vec<u8>,
    /// 0 = the agent's default.
    pub memory_bytes: u64,
    /// Thousandths of a CPU; 0 = the agent's default.
    pub cpu_millis: u32,
    /// 0 = the agent's default.
    pub pids: u32,
    pub timeout: Duration,
    /// Docker network mode; "none" isolates the container (the default).
    pub network_mode: String,
    /// The tenant's login for the image's registry, from the grant (never shown by Debug).
    pub credentials: Option<image_cache::RegistryCredentials>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// How a run ended, from the container's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// Exit code 0.
    Success,
    /// Non-zero exit, OOM kill (`oom_killed`), or a failure to start the container.
    Error,
    /// Ran past its timeout and was stopped.
    Timeout,
    /// Stopped because the run was cancelled (lease lost, revoked, agent shutting down).
    Killed,
    /// The image could not be pulled or resolved (not an engine failure).
    ImagePull,
    /// The agent could not prepare or create the container, and the engine itself answers
    /// (an engine that does not is handed back instead: [`RunReport::infrastructure`]).
    Infrastructure,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunReport {
    pub outcome: RunOutcome,
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    /// Empty unless something other than the task's own exit went wrong.
    pub error: String,
    /// Unix milliseconds when the container started (0 if it never did).
    pub started_ms: u64,
    /// Peak memory use of the container's cgroup; 0 when the engine did not report it.
    pub peak_memory_bytes: u64,
    pub container_id: String,
    /// The engine failed (unreachable, restarted), not the task: the task is handed back
    /// to be re-queued, consuming no retry, instead of reported.
    pub infrastructure: bool,
}

impl RunReport {
    /// A report of nothing yet: an error until the run says otherwise.
    pub fn new(container_id: String) -> Self {
        RunReport {
            outcome: RunOutcome::Error,
            exit_code: None,
            oom_killed: false,
            error: String::new(),
            started_ms: 0,
            peak_memory_bytes: 0,
            container_id,
            infrastructure: false,
        }
    }
}

/// One piece of output, in engine order.
#[derive(Clone, Debug)]
pub struct OutputChunk {
    pub stream: LogStream,
    pub data: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(
        "cannot reach the Docker engine at {endpoint}: {source}. Start it (for example `dockerd &` as root, or `systemctl start docker`) or set DOCKER_HOST"
    )]
    Unreachable { endpoint: String, source: bollard::errors::Error },
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error("image {image}: {reason}")]
    Image { image: String, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("task network: {0}")]
    Network(String),
}

impl ExecError {
    /// Whether the engine failed (see [`container::engine_failure`]), not the request.
    pub fn is_engine_failure(&self) -> bool {
        match self {
            ExecError::Unreachable { .. } => true,
            ExecError::Docker(e) => container::engine_failure(e),
            ExecError::Image { .. } | ExecError::Io(_) | ExecError::Network(_) => false,
        }
    }
}

/// What the agent needs from a container engine. Every container the executor makes for
/// a task carries the task, epoch, agent and attempt labels; [`Executor::run`] and
/// [`Executor::adopt`] never fail (problems are in the report) and remove the container
/// before returning whenever the engine lets them.
pub trait Executor: Send + Sync + 'static {
    /// One attempt: image, container, start (if `on_created` says so), output, wait,
    /// timeout and cancellation, result.
    fn run<'a>(
        &'a self,
        spec: &'a ContainerSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: CancellationToken,
        on_created: OnCreated<'a>,
    ) -> BoxFuture<'a, RunReport>;
    /// Supervises a container found running at start, as `run` would.
    fn adopt<'a>(
        &'a self,
        container_id: &'a str,
        timeout_left: Duration,
        logs_since: SystemTime,
        output: mpsc::Sender<OutputChunk>,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, RunReport>;
    /// Containers (running or not) labelled with `agent_id`.
    fn labelled<'a>(&'a self, agent_id: &'a str) -> BoxFuture<'a, Result<Vec<Labelled>, ExecError>>;
    /// Removes a container, killing it if it runs; a missing one is fine.
    fn remove<'a>(&'a self, container_id: &'a str) -> BoxFuture<'a, Result<(), ExecError>>;
    /// Whether the engine answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), ExecError>>;
    /// Makes these images local now, so the first task using each does not wait.
    fn prepull<'a>(&'a self, images: &'a [String]) -> BoxFuture<'a, ()>;
    /// The image cache, for the status view.
    fn images(&self) -> Vec<image_cache::CachedImage>;
}
