//! One task attempt in one container: create → attach → start → wait (timeout, cancel) →
//! inspect → remove. See the module doc in `mod.rs` for the invariants.
//!
//! Output is read through an attach made *before* start, so nothing a task writes early
//! is lost (`logs=true` as well would replay output the stream also delivers: seen as
//! duplicated lines); a re-adopted container is followed with `logs`
//! from a given time instead. Peak memory comes from the stats stream (cgroup v1
//! `max_usage`, else the highest `usage` seen); a task shorter than the engine's first
//! stats sample reports what the sample saw, or 0.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters as q;
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    ContainerSpec, ExecError, ExecMetrics, ImageCache, LABEL_AGENT, LABEL_ATTEMPT, LABEL_EPOCH, LABEL_TASK,
    LABEL_TIMEOUT, LogStream, OutputChunk, RunOutcome, RunReport,
};

#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    pub default_memory_bytes: u64,
    pub default_cpu_millis: u32,
    pub default_pids: u32,
    /// SIGTERM-to-SIGKILL time when a container is stopped (timeout).
    pub stop_grace: Duration,
    /// Per-run directories (payload, config.json), bind-mounted read-only at `/drover`.
    pub work_dir: PathBuf,
}

pub struct DockerExecutor {
    docker: Docker,
    cfg: ExecutorConfig,
    cache: Arc<ImageCache>,
    metrics: ExecMetrics,
}

/// A container found on the engine with this agent's labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labelled {
    pub id: String,
    pub task_id: u64,
    pub epoch: u64,
    pub attempt: u32,
    pub timeout_ms: u64,
    pub running: bool,
    pub started_unix_s: i64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Asked once a container exists, before it starts: whether to start it.
pub type OnCreated<'a> = &'a (dyn Fn(String) -> futures::future::BoxFuture<'static, bool> + Send + Sync);

/// How [`DockerExecutor::supervise`] comes by its container.
enum Start<'a> {
    /// Just created: started if `OnCreated` still says so.
    New(OnCreated<'a>),
    /// Adopted at start-up, already running: output from this time on.
    Adopted(SystemTime),
}

/// Whether a failure is the engine's (unreachable, connection dropped, timed out) rather
/// than an answer about the task (an HTTP error from the engine, a non-zero exit).
pub fn engine_failure(e: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as E;
    !matches!(
        e,
        E::DockerResponseServerError { .. }
            | E::DockerContainerWaitError { .. }
            | E::DockerStreamError { .. }
            | E::JsonDataError { .. }
            | E::JsonSerdeError { .. }
    )
}

fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

/// Docker container names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn container_name(agent: &str, task: u64, epoch: u64) -> String {
    let clean: String = agent
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '_' })
        .collect();
    format!("drover-{clean}-{task}-{epoch}")
}

/// The agent's own variables win over a code's (which the control plane refuses anyway).
const DROVER_ENV: [&str; 5] = drover_proto::TASK_ENV;

impl DockerExecutor {
    /// Connects to the engine (`DOCKER_HOST`, else the local socket) and negotiates the API
    /// version.
    pub async fn connect(cfg: ExecutorConfig, cache: Arc<ImageCache>, metrics: ExecMetrics) -> Result<Self, ExecError> {
        let docker = connect().await?;
        Ok(DockerExecutor { docker, cfg, cache, metrics })
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Whether the engine answers.
    pub async fn ping(&self) -> Result<(), ExecError> {
        self.docker.ping().await.map(|_| ()).map_err(ExecError::from)
    }

    /// Runs one attempt. Never fails: problems become `RunOutcome::Error` with `error` set
    /// (and `infrastructure` when the engine, not the task, failed). `on_created` is asked
    /// once the container exists and before it starts; `false` removes it unstarted
    /// (outcome `Killed`). The container (and the run directory) are gone when this
    /// returns, unless the engine could not be reached to remove it.
    pub async fn run(
        &self,
        spec: &ContainerSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: CancellationToken,
        on_created: OnCreated<'_>,
    ) -> RunReport {
        let mut report = RunReport::new(String::new());
        let access = super::image_cache::Access { tenant: spec.tenant.clone(), credentials: spec.credentials.clone() };
        let _image = match self.cache.ensure(&spec.image, &access).await {
            Ok(g) => g,
            Err(e) => {
                report.infrastructure = e.is_engine_failure();
                report.outcome = RunOutcome::ImagePull;
                report.error = e.to_string();
                return report;
            }
        };
        let dir = self.cfg.work_dir.join(format!("{}-{}", spec.task_id, spec.lease_epoch));
        if let Err(e) = self.write_run_dir(spec, &dir).await {
            report.outcome = RunOutcome::Infrastructure;
            report.error = format!("preparing the payload: {e}");
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return report;
        }
        let created = Instant::now();
        let body = create_body(&self.cfg, spec, &dir);
        let name = container_name(&spec.agent_id, spec.task_id, spec.lease_epoch);
        let opts = q::CreateContainerOptionsBuilder::default().name(&name).build();
        match self.docker.create_container(Some(opts), body).await {
            Ok(r) => {
                self.metrics.create_seconds.observe(created.elapsed().as_secs_f64());
                report.container_id = r.id;
                let id = report.container_id.clone();
                self.supervise(&id, Start::New(on_created), spec.timeout, output, cancel, &mut report).await;
                if let Err(e) = self.remove(&id).await {
                    tracing::error!(container = %id, error = %e, "removing the container failed");
                }
            }
            Err(e) => {
                report.infrastructure = engine_failure(&e);
                report.outcome = RunOutcome::Infrastructure;
                report.error = format!("creating the container: {e}");
            }
        }
        let _ = tokio::fs::remove_dir_all(&dir).await;
        report
    }

    /// Supervises a running container found at start (re-adoption): same wait, timeout,
    /// cancel, inspect and remove as [`Executor::run`]; output written from `logs_since` on
    /// (the engine's timestamps, to the nanosecond).
    pub async fn adopt(
        &self,
        container_id: &str,
        timeout_left: Duration,
        logs_since: SystemTime,
        output: mpsc::Sender<OutputChunk>,
        cancel: CancellationToken,
    ) -> RunReport {
        let mut report = RunReport::new(container_id.to_string());
        self.supervise(container_id, Start::Adopted(logs_since), timeout_left, output, cancel, &mut report).await;
        if let Err(e) = self.remove(container_id).await {
            tracing::error!(container = %container_id, error = %e, "removing the container failed");
        }
        report
    }

    async fn write_run_dir(&self, spec: &ContainerSpec, dir: &std::path::Path) -> std::io::Result<()> {
        tokio::fs::create_dir_all(dir).await?;
        tokio::fs::write(dir.join("payload"), &spec.payload).await?;
        let config = serde_json::json!({
            "task_id": spec.task_id,
            "attempt": spec.attempt,
            "lease_epoch": spec.lease_epoch,
            "tenant": spec.tenant,
            "code": spec.code,
            "env": spec.env,
        });
        tokio::fs::write(dir.join("config.json"), config.to_string()).await
    }

    /// Starts (fresh) or follows (adopted) the container and waits for it to end.
    /// A new container is started only if `on_created` says so, asked as the last step
    /// before the start request (after the output is attached), so that nothing the agent
    /// awaits lies between the lease check and the start; an adopted one already runs.
    async fn supervise(
        &self,
        id: &str,
        start: Start<'_>,
        timeout: Duration,
        output: mpsc::Sender<OutputChunk>,
        cancel: CancellationToken,
        report: &mut RunReport,
    ) {
        let adopted_since = match start {
            Start::New(_) => None,
            Start::Adopted(since) => Some(since),
        };
        let stream: std::pin::Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>> =
            match adopted_since {
                None => {
                    let opts = q::AttachContainerOptionsBuilder::default()
                        .stream(true)
                        .logs(false)
                        .stdout(true)
                        .stderr(true)
                        .build();
                    match self.docker.attach_container(id, Some(opts)).await {
                        Ok(a) => a.output,
                        Err(e) => {
                            report.infrastructure = engine_failure(&e);
                            report.error = format!("attaching to the container: {e}");
                            return;
                        }
                    }
                }
                Some(since) => {
                    let secs = since.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                    let opts = q::LogsOptionsBuilder::default()
                        .follow(true)
                        .stdout(true)
                        .stderr(true)
                        .timestamps(true)
                        .since(secs.min(i32::MAX as u64) as i32)
                        .build();
                    Box::pin(self.docker.logs(id, Some(opts)))
                }
            };
        let pump = tokio::spawn(pump_output(stream, output, adopted_since));
        if let Start::New(on_created) = start {
            if !on_created(id.to_string()).await {
                pump.abort();
                report.outcome = RunOutcome::Killed;
                report.error = "not started: the lease ended before the container could start".into();
                return;
            }
            let started = Instant::now();
            if let Err(e) = self.docker.start_container(id, None::<q::StartContainerOptions>).await {
                report.infrastructure = engine_failure(&e);
                report.error = format!("starting the container: {e}");
                pump.abort();
                return;
            }
            self.metrics.start_seconds.observe(started.elapsed().as_secs_f64());
            report.started_ms = unix_ms(SystemTime::now());
        }
        let peak = Arc::new(AtomicU64::new(0));
        let stats = tokio::spawn(track_peak(self.docker.clone(), id.to_string(), peak.clone()));

        let mut wait = Box::pin(self.docker.wait_container(id, None::<q::WaitContainerOptions>));
        let ended = tokio::select! {
            r = wait.next() => {
                // The wait stream fails with the engine (a restart, a dropped socket):
                // the container's fate is unknown, which is ours, not the task's.
                if let Some(Err(e)) = &r && engine_failure(e) {
                    report.infrastructure = true;
                }
                None
            }
            _ = tokio::time::sleep(timeout) => Some(RunOutcome::Timeout),
            _ = cancel.cancelled() => Some(RunOutcome::Killed),
        };
        match ended {
            Some(RunOutcome::Timeout) => {
                let grace = self.cfg.stop_grace.as_secs().clamp(1, i32::MAX as u64) as i32;
                let opts = q::StopContainerOptionsBuilder::default().t(grace).build();
                if let Err(e) = self.docker.stop_container(id, Some(opts)).await
                    && !not_found(&e)
                {
                    tracing::warn!(container = %id, error = %e, "stopping a timed-out container failed");
                    let _ = self.kill(id).await;
                }
            }
            Some(_) => {
                if let Err(e) = self.kill(id).await {
                    tracing::warn!(container = %id, error = %e, "killing a cancelled container failed");
                }
            }
            None => {}
        }
        if ended.is_some() {
            // Make sure it has exited before inspecting.
            let mut again = Box::pin(self.docker.wait_container(id, None::<q::WaitContainerOptions>));
            let _ = tokio::time::timeout(self.cfg.stop_grace + Duration::from_secs(10), again.next()).await;
        }
        // The attach stream ends when the container exits; bound the wait anyway.
        if tokio::time::timeout(Duration::from_secs(10), pump).await.is_err() {
            tracing::warn!(container = %id, "output stream did not end within 10 s of exit");
        }
        stats.abort();
        report.peak_memory_bytes = peak.load(Ordering::Relaxed);

        match self.docker.inspect_container(id, None::<q::InspectContainerOptions>).await {
            Ok(info) => {
                let state = info.state.unwrap_or_default();
                report.exit_code = state.exit_code.map(|c| c as i32);
                report.oom_killed = state.oom_killed.unwrap_or(false);
                if report.started_ms == 0
                    && let Some(t) = state.started_at.as_deref().and_then(|s| humantime::parse_rfc3339_weak(s).ok())
                {
                    report.started_ms = unix_ms(t);
                }
            }
            Err(e) => {
                report.infrastructure |= engine_failure(&e);
                report.error = format!("inspecting the container: {e}");
            }
        }
        // The engine's OOMKilled flag misses kills that happen before containerd watches
        // the new cgroup (seen on Docker 20.10, cgroup v1, with several containers starting
        // at once: exit 137, OOMKilled false, and no `oom` event at all). A task SIGKILLed
        // by nobody we know of is looked up in the kernel's log, whose oom-kill record names
        // the container's memory cgroup.
        if !report.oom_killed && report.exit_code == Some(137) && ended.is_none() {
            let id = id.to_string();
            report.oom_killed = tokio::task::spawn_blocking(move || kernel_logged_oom_kill(&id)).await.unwrap_or(false);
        }
        if report.oom_killed {
            self.metrics.oom_kills.inc();
        }
        report.outcome = match ended {
            Some(o) => o,
            None if report.oom_killed => {
                report.error = "killed: out of memory".into();
                RunOutcome::Error
            }
            None if report.exit_code == Some(0) => RunOutcome::Success,
            None => RunOutcome::Error,
        };
        if report.outcome == RunOutcome::Timeout {
            report.error = format!("timed out after {timeout:?}");
        }
    }

    /// Containers (running or not) labelled with `agent_id`.
    pub async fn labelled(&self, agent_id: &str) -> Result<Vec<Labelled>, ExecError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_AGENT}={agent_id}")])]);
        let opts = q::ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let list = self.docker.list_containers(Some(opts)).await?;
        let mut out = Vec::new();
        for c in list {
            let labels = c.labels.unwrap_or_default();
            let num = |k: &str| labels.get(k).and_then(|v| v.parse::<u64>().ok());
            let (Some(id), Some(task_id), Some(epoch)) = (c.id, num(LABEL_TASK), num(LABEL_EPOCH)) else { continue };
            out.push(Labelled {
                id,
                task_id,
                epoch,
                attempt: num(LABEL_ATTEMPT).unwrap_or(0) as u32,
                timeout_ms: num(LABEL_TIMEOUT).unwrap_or(0),
                running: matches!(c.state, Some(bollard::models::ContainerSummaryStateEnum::RUNNING)),
                started_unix_s: c.created.unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// Force-removes a container; a missing one is fine.
    pub async fn remove(&self, container_id: &str) -> Result<(), ExecError> {
        let opts = q::RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(container_id, Some(opts)).await {
            Err(e) if !not_found(&e) => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// SIGKILL; a missing or stopped container is fine.
    pub async fn kill(&self, container_id: &str) -> Result<(), ExecError> {
        match self.docker.kill_container(container_id, None::<q::KillContainerOptions>).await {
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404 | 409, .. }) | Ok(()) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The container's configuration: limits (the spec's, else the defaults), hardening,
/// labels, environment and the read-only `/drover` mount.
fn create_body(cfg: &ExecutorConfig, spec: &ContainerSpec, dir: &std::path::Path) -> ContainerCreateBody {
    let memory = if spec.memory_bytes > 0 { spec.memory_bytes } else { cfg.default_memory_bytes };
    let cpu = if spec.cpu_millis > 0 { spec.cpu_millis } else { cfg.default_cpu_millis };
    let pids = if spec.pids > 0 { spec.pids } else { cfg.default_pids };
    let mut env: Vec<String> =
        spec.env.iter().filter(|(k, _)| !DROVER_ENV.contains(&k.as_str())).map(|(k, v)| format!("{k}={v}")).collect();
    env.push(format!("TASK_ID={}", spec.task_id));
    env.push(format!("TASK_ATTEMPT={}", spec.attempt));
    env.push(format!("LEASE_EPOCH={}", spec.lease_epoch));
    env.push("PAYLOAD_FILE=/drover/payload".into());
    env.push("CONFIG_FILE=/drover/config.json".into());
    let labels = HashMap::from([
        (LABEL_TASK.to_string(), spec.task_id.to_string()),
        (LABEL_EPOCH.to_string(), spec.lease_epoch.to_string()),
        (LABEL_AGENT.to_string(), spec.agent_id.clone()),
        (LABEL_ATTEMPT.to_string(), spec.attempt.to_string()),
        (LABEL_TIMEOUT.to_string(), spec.timeout.as_millis().to_string()),
    ]);
    let network = if spec.network_mode.is_empty() { "none".to_string() } else { spec.network_mode.clone() };
    ContainerCreateBody {
        image: Some(super::image_cache::normalize(&spec.image)),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        env: Some(env),
        labels: Some(labels),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        open_stdin: Some(false),
        host_config: Some(HostConfig {
            binds: Some(vec![format!("{}:/drover:ro", dir.display())]),
            memory: Some(memory as i64),
            memory_swap: Some(memory as i64),
            nano_cpus: Some(cpu as i64 * 1_000_000),
            pids_limit: Some(pids as i64),
            security_opt: Some(vec!["no-new-privileges".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            network_mode: Some(network),
            ipc_mode: Some("private".into()),
            privileged: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl super::Executor for DockerExecutor {
    fn run<'a>(
        &'a self,
        spec: &'a ContainerSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: CancellationToken,
        on_created: OnCreated<'a>,
    ) -> BoxFuture<'a, RunReport> {
        Box::pin(DockerExecutor::run(self, spec, output, cancel, on_created))
    }

    fn adopt<'a>(
        &'a self,
        container_id: &'a str,
        timeout_left: Duration,
        logs_since: SystemTime,
        output: mpsc::Sender<OutputChunk>,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, RunReport> {
        Box::pin(DockerExecutor::adopt(self, container_id, timeout_left, logs_since, output, cancel))
    }

    fn labelled<'a>(&'a self, agent_id: &'a str) -> BoxFuture<'a, Result<Vec<Labelled>, ExecError>> {
        Box::pin(DockerExecutor::labelled(self, agent_id))
    }

    fn remove<'a>(&'a self, container_id: &'a str) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(DockerExecutor::remove(self, container_id))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), ExecError>> {
        Box::pin(DockerExecutor::ping(self))
    }

    fn prepull<'a>(&'a self, images: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(self.cache.prepull(images))
    }

    fn images(&self) -> Vec<super::image_cache::CachedImage> {
        self.cache.snapshot()
    }
}

/// Connects to the engine and negotiates the API version.
pub async fn connect() -> Result<Docker, ExecError> {
    let endpoint = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let docker = Docker::connect_with_local_defaults()
        .map_err(|source| ExecError::Unreachable { endpoint: endpoint.clone(), source })?;
    docker.negotiate_version().await.map_err(|source| ExecError::Unreachable { endpoint, source })
}

/// Whether the kernel log (`/dev/kmsg`, readable by root) holds an `oom-kill:` record
/// whose memory cgroup path names `container_id`. False when it cannot be read.
fn kernel_logged_oom_kill(container_id: &str) -> bool {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut f) = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open("/dev/kmsg") else {
        return false;
    };
    // Each read returns one record; the end of the buffer answers EAGAIN. Bounded by the
    // ring buffer's size, and by a record cap for safety.
    let mut buf = vec![0u8; 8192];
    for _ in 0..100_000 {
        match f.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                let rec = &buf[..n];
                if rec.windows(9).any(|w| w == b"oom-kill:")
                    && rec.windows(container_id.len()).any(|w| w == container_id.as_bytes())
                {
                    return true;
                }
            }
            // EPIPE: a record was overwritten while reading; keep going.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => return false,
        }
    }
    false
}

/// Splits an engine timestamp (`logs` with `timestamps=true`: RFC 3339 with nanoseconds,
/// a space, then the line) off a frame.
fn split_timestamp(frame: &bytes::Bytes) -> Option<(SystemTime, bytes::Bytes)> {
    let space = frame.iter().position(|b| *b == b' ')?;
    let ts = std::str::from_utf8(&frame[..space]).ok()?;
    let t = humantime::parse_rfc3339_weak(ts).ok()?;
    Some((t, frame.slice(space + 1..)))
}

/// Forwards output in engine order. With `since` (a re-adopted container, read through
/// `logs` with timestamps), frames written before it are dropped and timestamps stripped.
async fn pump_output(
    mut stream: std::pin::Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>,
    output: mpsc::Sender<OutputChunk>,
    since: Option<SystemTime>,
) {
    while let Some(item) = stream.next().await {
        let item = match (item, since) {
            (Ok(LogOutput::StdOut { message }), Some(since)) => match split_timestamp(&message) {
                Some((t, _)) if t < since => continue,
                Some((_, rest)) => Ok(LogOutput::StdOut { message: rest }),
                None => Ok(LogOutput::StdOut { message }),
            },
            (Ok(LogOutput::StdErr { message }), Some(since)) => match split_timestamp(&message) {
                Some((t, _)) if t < since => continue,
                Some((_, rest)) => Ok(LogOutput::StdErr { message: rest }),
                None => Ok(LogOutput::StdErr { message }),
            },
            (item, _) => item,
        };
        let chunk = match item {
            Ok(LogOutput::StdOut { message }) => OutputChunk { stream: LogStream::Stdout, data: message },
            Ok(LogOutput::StdErr { message }) => OutputChunk { stream: LogStream::Stderr, data: message },
            Ok(LogOutput::Console { message }) => OutputChunk { stream: LogStream::Stdout, data: message },
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "container output stream failed");
                return;
            }
        };
        if chunk.data.is_empty() {
            continue;
        }
        if output.send(chunk).await.is_err() {
            return;
        }
    }
}

async fn track_peak(docker: Docker, id: String, peak: Arc<AtomicU64>) {
    let opts = q::StatsOptionsBuilder::default().stream(true).build();
    let mut s = Box::pin(docker.stats(&id, Some(opts)));
    while let Some(Ok(st)) = s.next().await {
        if let Some(m) = st.memory_stats {
            let v = m.max_usage.unwrap_or(0).max(m.usage.unwrap_or(0));
            peak.fetch_max(v, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_keep_to_dockers_charset() {
        assert_eq!(container_name("host 17/a:b", 5, 9), "drover-host_17_a_b-5-9");
    }

    #[test]
    fn drover_variables_cannot_be_overridden_and_defaults_apply() {
        let ex_cfg = ExecutorConfig {
            default_memory_bytes: 64 << 20,
            default_cpu_millis: 1000,
            default_pids: 100,
            stop_grace: Duration::from_secs(1),
            work_dir: "/tmp".into(),
        };
        let spec = ContainerSpec {
            task_id: 5,
            attempt: 2,
            lease_epoch: 9,
            agent_id: "a".into(),
            tenant: "t".into(),
            code: "c".into(),
            image: "img".into(),
            command: vec![],
            env: [("TASK_ID".to_string(), "evil".to_string()), ("MINE".to_string(), "1".to_string())].into(),
            payload: vec![],
            memory_bytes: 0,
            cpu_millis: 250,
            pids: 0,
            timeout: Duration::from_secs(3),
            network_mode: String::new(),
            credentials: None,
        };
        let body = create_body(&ex_cfg, &spec, std::path::Path::new("/tmp/run"));
        let env = body.env.expect("env");
        assert!(env.contains(&"TASK_ID=5".to_string()) && !env.iter().any(|e| e == "TASK_ID=evil"), "{env:?}");
        assert!(env.contains(&"MINE=1".to_string()));
        let hc = body.host_config.expect("host config");
        assert_eq!(
            (hc.memory, hc.memory_swap, hc.nano_cpus, hc.pids_limit),
            (Some(64 << 20), Some(64 << 20), Some(250_000_000), Some(100))
        );
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(hc.binds, Some(vec!["/tmp/run:/drover:ro".to_string()]));
        assert_eq!(body.cmd, None, "the image's own command");
        assert_eq!(body.labels.expect("labels").get(LABEL_TIMEOUT).map(String::as_str), Some("3000"));
    }
}

#[cfg(test)]
mod timestamp_tests {
    use super::*;

    #[test]
    fn engine_timestamps_are_split_off_frames() {
        let f = bytes::Bytes::from_static(b"2026-11-24T01:02:03.123456789Z hello world\n");
        let (t, rest) = split_timestamp(&f).expect("timestamp");
        assert_eq!(&rest[..], b"hello world\n");
        assert_eq!(unix_ms(t), 1_795_482_123_123);
        assert!(split_timestamp(&bytes::Bytes::from_static(b"no-timestamp-here\n")).is_none());
    }
}
