//! The agent's shared state and its life: what every loop and runner reaches through one
//! `Arc<Agent>`.
//!
//! Owns the [`LeaseBook`] (behind one mutex, with the per-task handles the shell needs:
//! each runner's cancellation token and what the status page shows) and carries out the
//! book's [`Action`]s: stopping a container is cancelling its runner, arming is writing
//! the watchdog's deadline file. The loops live in [`crate::session`] (leasing,
//! heartbeats, the deadline timer, the engine watch), one task's run in
//! [`crate::runner`], process wiring and signals in [`crate::serve`].
//!
//! [`Agent::run`]: start the watchdog, reconcile what an earlier run left, pre-pull, then
//! lease until drained; on drain wait up to the grace period, hand back what is still
//! running, wait for every runner, and stop every loop (joined through one tracker).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::clock::now;
use crate::config::AgentConfig;
use crate::executor::{DockerExecutor, Executor, ExecutorConfig, ImageCache};
use crate::lease_book::{Action, LeaseBook, StopReason, margin_for};
use crate::metrics::AgentMetrics;
use crate::shipper::{Lease, ShipMsg, Shipper, ShipperHost};
use crate::status::{ControlTarget, RunningView, StatusView};
use crate::uplink::{ControlPlane, Uplink, UplinkError};
use crate::watchdog::{self, Deadlines};

/// Lease TTL assumed until the control plane says otherwise.
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Exec(#[from] crate::executor::ExecError),
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    #[error(transparent)]
    Watchdog(#[from] watchdog::WatchdogError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Socket(#[from] crate::socket::SocketError),
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
}

/// What the shell keeps per held lease beside the book: the runner's cancellation and
/// what the status page shows. Entered together with the lease, removed with it.
pub(crate) struct RunInfo {
    pub attempt: u32,
    pub tenant: String,
    pub code: String,
    pub image: String,
    pub started: Instant,
    pub cancel: CancellationToken,
}

pub(crate) struct Book {
    pub book: LeaseBook,
    pub runs: BTreeMap<u64, RunInfo>,
}

impl Book {
    /// Cancels the runner of a task the book has stopped: it kills the container and,
    /// told by the book, reports nothing.
    fn stop_runner(&self, task_id: u64, reason: StopReason, metrics: &AgentMetrics) {
        if reason == StopReason::LeaseLost {
            metrics.leases_lost.inc();
        }
        tracing::warn!(task_id, ?reason, "stopping task");
        if let Some(info) = self.runs.get(&task_id) {
            info.cancel.cancel();
        }
    }
}

pub struct Agent {
    pub(crate) cfg: AgentConfig,
    pub(crate) uplink: Arc<dyn ControlPlane>,
    pub(crate) exec: Arc<dyn Executor>,
    pub metrics: AgentMetrics,
    pub(crate) deadlines: Option<Deadlines>,
    pub(crate) state: Mutex<Book>,
    /// A lease was added or a deadline moved: the deadline timer looks again.
    pub(crate) book_changed: Notify,
    /// The control plane's TTL changed: the heartbeat loop re-plans its next beat.
    pub(crate) ttl_changed: Notify,
    pub(crate) slot_freed: Notify,
    pub(crate) ship_tx: mpsc::Sender<ShipMsg>,
    ship_rx: Mutex<Option<mpsc::Receiver<ShipMsg>>>,
    lease_ttl_ms: AtomicU64,
    /// Set when a run failed because of the engine; leasing waits until it answers again
    /// and what the failed runs left behind has been removed.
    pub(crate) engine_down: AtomicBool,
    pub(crate) draining: CancellationToken,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    /// Log seq numbers of re-adopted containers start here, above anything the earlier
    /// run of the agent can have sent.
    pub(crate) adopt_seq_base: u64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The wall-clock time of a monotonic deadline, for the watchdog (another process).
pub(crate) fn wall(deadline: Instant) -> SystemTime {
    let now = now();
    let wall_now = SystemTime::now();
    if deadline >= now { wall_now + (deadline - now) } else { wall_now - (now - deadline) }
}

impl Agent {
    /// Connects to the Docker engine, prepares the data directory and the watchdog.
    pub async fn new(mut cfg: AgentConfig) -> Result<Arc<Self>, AgentError> {
        let uplink = Arc::new(Uplink::new(&cfg)?);
        let metrics = AgentMetrics::new()?;
        if let Some(tls) = &cfg.tls {
            // The uplink has just read this file, so failing here only loses the metric.
            match std::fs::read(&tls.cert)
                .map_err(|e| e.to_string())
                .and_then(|pem| drover_identity::certs::not_after_from_pem(&pem).map_err(|e| e.to_string()))
            {
                Ok(not_after) => metrics.set_tls_cert_expiry(not_after),
                Err(e) => {
                    tracing::warn!(path = %tls.cert.display(), error = %e, "cannot read the certificate's expiry")
                }
            }
        }
        let work_dir = cfg.data_dir.join("tasks");
        tokio::fs::create_dir_all(&work_dir)
            .await
            .map_err(|source| AgentError::Io { path: work_dir.clone(), source })?;
        let docker = bollard::Docker::connect_with_local_defaults()
            .map_err(|e| crate::executor::ExecError::Unreachable { endpoint: docker_endpoint(), source: e })?;
        // From here on `network_mode` is what task containers join: the egress network of
        // an IP-pool agent, the VPC's network of a VPC agent, the configured mode otherwise.
        cfg.network_mode = crate::executor::network::task_network(&docker, &cfg).await?;
        tracing::info!(network = %cfg.network_mode, "task containers join this network");
        let marks = Some(cfg.data_dir.join("private-images.json"));
        let cache = Arc::new(ImageCache::with_private_marks(
            docker,
            cfg.images.disk_budget.as_u64(),
            metrics.exec.clone(),
            marks,
        ));
        let exec = Arc::new(
            DockerExecutor::connect(
                ExecutorConfig {
                    default_memory_bytes: cfg.limits.memory.as_u64(),
                    default_cpu_millis: cfg.limits.cpu_millis,
                    default_pids: cfg.limits.pids,
                    stop_grace: cfg.stop_grace,
                    work_dir,
                },
                cache.clone(),
                metrics.exec.clone(),
            )
            .await?,
        );
        Ok(Self::with_parts(cfg, uplink, exec, metrics))
    }

    /// An agent over any control plane and executor: the gRPC uplink and Docker in
    /// production ([`Agent::new`]); a simulated control plane and the in-memory executor
    /// in the agent's logic tests and simulated fleets.
    pub fn with_parts(
        cfg: AgentConfig,
        uplink: Arc<dyn ControlPlane>,
        exec: Arc<dyn Executor>,
        metrics: AgentMetrics,
    ) -> Arc<Self> {
        let deadlines = cfg.watchdog.then(|| Deadlines::new(cfg.data_dir.join("watchdog")));
        let (ship_tx, ship_rx) = mpsc::channel(1024);
        metrics.slots_free.set(cfg.slots as i64);
        metrics.image_cache_budget_bytes.set(i64::try_from(cfg.images.disk_budget.as_u64()).unwrap_or(i64::MAX));
        let book = LeaseBook::new(cfg.slots, margin_for(DEFAULT_TTL, watchdog::TICK));
        Arc::new(Agent {
            uplink,
            exec,
            metrics,
            deadlines,
            state: Mutex::new(Book { book, runs: BTreeMap::new() }),
            book_changed: Notify::new(),
            ttl_changed: Notify::new(),
            slot_freed: Notify::new(),
            ship_tx,
            ship_rx: Mutex::new(Some(ship_rx)),
            lease_ttl_ms: AtomicU64::new(DEFAULT_TTL.as_millis() as u64),
            engine_down: AtomicBool::new(false),
            draining: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            adopt_seq_base: watchdog::unix_ms(SystemTime::now()) << 20,
            cfg,
        })
    }

    pub fn agent_id(&self) -> &str {
        self.uplink.agent_id()
    }

    pub fn draining(&self) -> &CancellationToken {
        &self.draining
    }

    pub(crate) fn ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms.load(Ordering::Relaxed).max(1))
    }

    /// Takes the control plane's TTL (and the safety margin that goes with it).
    pub(crate) fn set_ttl(&self, ms: u64) {
        if ms > 0 && self.lease_ttl_ms.swap(ms, Ordering::Relaxed) != ms {
            let margin = margin_for(Duration::from_millis(ms), watchdog::TICK);
            lock(&self.state).book.set_margin(margin);
            self.ttl_changed.notify_one();
        }
    }

    /// How long leases in an answer stay valid from the request's send time; an older
    /// server does not say, and then the TTL counts from the send time (safe: its clock
    /// started later).
    pub(crate) fn validity(&self, lease_ttl_ms: u64, lease_valid_ms: u64) -> Duration {
        self.set_ttl(lease_ttl_ms);
        if lease_valid_ms > 0 { Duration::from_millis(lease_valid_ms) } else { self.ttl() }
    }

    /// Starts the watchdog, reconciles containers from an earlier run, pre-pulls images,
    /// then runs until drained (SIGTERM or the control socket).
    pub async fn run(self: &Arc<Self>, exe: &std::path::Path) -> Result<(), AgentError> {
        let mut watchdog_child = None;
        if let Some(d) = &self.deadlines {
            watchdog_child = watchdog::ensure_running(d.dir(), exe, std::process::id()).await?;
        }
        self.reconcile_at_start().await?;
        if !self.cfg.images.prepull.is_empty() {
            self.exec.prepull(&self.cfg.images.prepull).await;
        }
        if let Some(rx) = lock(&self.ship_rx).take() {
            let shipper = Shipper {
                uplink: self.uplink.clone(),
                host: self.clone(),
                batch_bytes: self.cfg.logs.batch_bytes.as_u64() as usize,
                flush_interval: self.cfg.logs.flush_interval,
            };
            self.tasks.spawn(shipper.run(rx, self.shutdown.clone()));
        }
        let this = self.clone();
        self.tasks.spawn(async move { this.heartbeat_loop().await });
        let this = self.clone();
        self.tasks.spawn(async move { this.deadline_loop().await });
        tracing::info!(agent = self.agent_id(), slots = self.cfg.slots, "agent running");
        self.lease_loop().await;
        self.drain().await;
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if let Some(mut child) = watchdog_child {
            // It exits by itself once this agent is gone and nothing is armed; reap it
            // if it already has.
            let _ = child.try_wait();
        }
        tracing::info!("agent stopped");
        Ok(())
    }

    /// Waits for running tasks up to the drain grace, then hands the rest back and waits
    /// for their runners to end.
    async fn drain(&self) {
        let grace = tokio::time::Instant::now() + self.cfg.drain_grace;
        while self.busy() > 0 && tokio::time::Instant::now() < grace {
            let notified = self.slot_freed.notified();
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(grace) => {}
            }
        }
        let actions = lock(&self.state).book.drain_over();
        if !actions.is_empty() {
            tracing::warn!(tasks = actions.len(), "drain grace over; handing running tasks back");
            self.carry_out(actions).await;
        }
        while self.busy() > 0 {
            let notified = self.slot_freed.notified();
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    pub fn busy(&self) -> usize {
        lock(&self.state).book.busy()
    }

    pub(crate) fn update_slot_metrics(&self) {
        let (busy, free) = {
            let s = lock(&self.state);
            (s.book.busy(), s.book.free_slots())
        };
        self.metrics.slots_busy.set(busy as i64);
        self.metrics.slots_free.set(free as i64);
    }

    pub fn status(&self) -> StatusView {
        let now = now();
        let running = {
            let s = lock(&self.state);
            s.book
                .held()
                .map(|h| {
                    let info = s.runs.get(&h.lease.task_id);
                    RunningView {
                        task_id: h.lease.task_id,
                        lease_epoch: h.lease.epoch,
                        attempt: info.map(|i| i.attempt).unwrap_or(0),
                        tenant: info.map(|i| i.tenant.clone()).unwrap_or_default(),
                        code: info.map(|i| i.code.clone()).unwrap_or_default(),
                        image: info.map(|i| i.image.clone()).unwrap_or_default(),
                        container_id: h.container.clone(),
                        phase: h.phase,
                        running_for_ms: info.map(|i| now.duration_since(i.started).as_millis() as u64).unwrap_or(0),
                        lease_left_ms: h.deadline.saturating_duration_since(now).as_millis() as u64,
                        stopping: h.stop,
                    }
                })
                .collect::<Vec<_>>()
        };
        StatusView {
            agent_id: self.agent_id().to_string(),
            slots: self.cfg.slots,
            busy: running.len(),
            draining: self.draining.is_cancelled(),
            lease_ttl_ms: self.ttl().as_millis() as u64,
            engine_down: self.engine_down.load(Ordering::Relaxed),
            running,
            images: self.exec.images(),
        }
    }

    /// Carries out the lease book's actions: stop = cancel the runner (it kills the
    /// container and, told by the book, reports nothing); arm = the watchdog's deadline.
    pub(crate) async fn carry_out(&self, actions: Vec<Action>) {
        let mut arms = Vec::new();
        {
            let s = lock(&self.state);
            for a in actions {
                match a {
                    Action::Stop { task_id, reason } => s.stop_runner(task_id, reason, &self.metrics),
                    Action::Arm { container, deadline } => arms.push((container, deadline)),
                }
            }
        }
        if let Some(d) = &self.deadlines {
            for (container, deadline) in arms {
                if let Err(e) = d.arm(&container, wall(deadline)).await {
                    tracing::error!(error = %e, "pushing the watchdog deadline failed");
                }
            }
        }
    }
}

impl ControlTarget for Agent {
    fn status(&self) -> StatusView {
        Agent::status(self)
    }

    fn drain(&self) -> usize {
        self.draining.cancel();
        self.busy()
    }

    fn metrics_text(&self) -> String {
        let cached: u64 = self.exec.images().iter().map(|i| i.size_bytes).sum();
        self.metrics.image_cache_bytes.set(i64::try_from(cached).unwrap_or(i64::MAX));
        self.metrics.render()
    }
}

impl ShipperHost for Agent {
    fn holds(&self, lease: Lease) -> bool {
        lock(&self.state).book.holds(lease)
    }

    /// The control plane refused the lease's output as stale: it was revoked.
    fn lease_stale(&self, lease: Lease) {
        let mut s = lock(&self.state);
        if s.book.stop(lease, StopReason::Revoked) {
            s.stop_runner(lease.task_id, StopReason::Revoked, &self.metrics);
        }
    }

    fn shipped_bytes(&self, n: u64) {
        self.metrics.log_bytes_shipped.inc_by(n);
    }
}

fn docker_endpoint() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string())
}
