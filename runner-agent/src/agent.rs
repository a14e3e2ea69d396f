//! The agent proper: leasing, running, heartbeating, completing, draining.
//!
//! Owns the set of tasks this agent runs ([`Running`], one per leased task) and the
//! background loops that serve them:
//! * the **lease loop** asks for as many tasks as there are free slots (a long poll; it
//!   waits for a slot to free when all are busy, so it never spins);
//! * one **runner** per task runs it through the executor, forwards its output to the
//!   shipper, flushes, and reports the end with the lease epoch;
//! * the **heartbeat loop** renews every held lease a few times per TTL, pushes each
//!   container's watchdog deadline forward, and kills the containers of leases the
//!   control plane revoked or that could not be renewed before they expired;
//! * the **shipper** batches output (see [`crate::shipper`]).
//!
//! Invariants: a task is reported at most once, by the runner that ran it, with its
//! lease epoch; a task whose lease is lost or revoked is killed and never reported; a
//! container is never left running past its lease deadline (the watchdog backs this up
//! when the agent itself cannot act); every loop stops on the shutdown token and is
//! joined.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use drover_proto::agent as pa;
use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::AgentConfig;
use crate::executor::{
    ContainerSpec, Executor, ExecutorConfig, ImageCache, Labelled, OutputChunk, RunOutcome, RunReport,
};
use crate::metrics::AgentMetrics;
use crate::shipper::{Lease, MAX_CHUNK_BYTES, ShipMsg, Shipper, ShipperHost};
use crate::uplink::{Uplink, UplinkError};
use crate::watchdog::{self, Deadlines};

/// Lease TTL assumed until the control plane says otherwise.
const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// How long a lease long-poll may wait at the server.
const LEASE_WAIT: Duration = Duration::from_secs(20);

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

/// Why the agent stopped a task before it ended by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Not renewed before the TTL ran out: the control plane will hand it to another agent.
    LeaseLost,
    /// The control plane no longer recognises the lease (cancelled, expired, re-granted).
    Revoked,
    /// Draining ran out of time: given back to be re-queued.
    HandedBack,
}

struct Running {
    lease: Lease,
    attempt: u32,
    tenant: String,
    code: String,
    image: String,
    container_id: Option<String>,
    started: Instant,
    last_renewed: Instant,
    cancel: CancellationToken,
    stop: Option<StopReason>,
}

/// A running task as the status page shows it.
#[derive(Serialize, Debug, Clone)]
pub struct RunningView {
    pub task_id: u64,
    pub lease_epoch: u64,
    pub attempt: u32,
    pub tenant: String,
    pub code: String,
    pub image: String,
    pub container_id: Option<String>,
    pub running_for_ms: u64,
    pub stopping: Option<StopReason>,
}

#[derive(Serialize, Debug, Clone)]
pub struct StatusView {
    pub agent_id: String,
    pub slots: u32,
    pub busy: usize,
    pub draining: bool,
    pub lease_ttl_ms: u64,
    pub running: Vec<RunningView>,
    pub images: Vec<crate::executor::image_cache::CachedImage>,
}

pub struct Agent {
    cfg: AgentConfig,
    uplink: Arc<Uplink>,
    exec: Arc<Executor>,
    cache: Arc<ImageCache>,
    pub metrics: AgentMetrics,
    deadlines: Option<Deadlines>,
    running: Mutex<BTreeMap<u64, Running>>,
    slot_freed: Notify,
    ship_tx: mpsc::Sender<ShipMsg>,
    ship_rx: Mutex<Option<mpsc::Receiver<ShipMsg>>>,
    lease_ttl_ms: AtomicU64,
    draining: CancellationToken,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Log seq numbers of re-adopted containers start here, above anything the earlier
    /// run of the agent can have sent.
    adopt_seq_base: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Agent {
    /// Connects to the Docker engine, prepares the data directory and the watchdog.
    pub async fn new(cfg: AgentConfig) -> Result<Arc<Self>, AgentError> {
        let uplink = Arc::new(Uplink::new(&cfg)?);
        let metrics = AgentMetrics::new()?;
        let work_dir = cfg.data_dir.join("tasks");
        tokio::fs::create_dir_all(&work_dir)
            .await
            .map_err(|source| AgentError::Io { path: work_dir.clone(), source })?;
        let docker = bollard::Docker::connect_with_local_defaults()
            .map_err(|e| crate::executor::ExecError::Unreachable { endpoint: docker_endpoint(), source: e })?;
        let cache = Arc::new(ImageCache::new(docker, cfg.images.disk_budget.as_u64(), metrics.exec.clone()));
        let exec = Arc::new(
            Executor::connect(
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
        let deadlines = cfg.watchdog.then(|| Deadlines::new(cfg.data_dir.join("watchdog")));
        let (ship_tx, ship_rx) = mpsc::channel(1024);
        metrics.slots_free.set(cfg.slots as i64);
        Ok(Arc::new(Agent {
            uplink,
            exec,
            cache,
            metrics,
            deadlines,
            running: Mutex::new(BTreeMap::new()),
            slot_freed: Notify::new(),
            ship_tx,
            ship_rx: Mutex::new(Some(ship_rx)),
            lease_ttl_ms: AtomicU64::new(DEFAULT_TTL.as_millis() as u64),
            draining: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            adopt_seq_base: watchdog::unix_ms(SystemTime::now()) << 20,
            cfg,
        }))
    }

    pub fn agent_id(&self) -> &str {
        self.uplink.agent_id()
    }

    pub fn draining(&self) -> &CancellationToken {
        &self.draining
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms.load(Ordering::Relaxed).max(1))
    }

    fn set_ttl(&self, ms: u64) {
        if ms > 0 {
            self.lease_ttl_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// Starts the watchdog, reconciles containers from an earlier run, pre-pulls images,
    /// then runs until drained (SIGTERM or the control socket) or `stop` fires.
    pub async fn run(self: &Arc<Self>, exe: &std::path::Path) -> Result<(), AgentError> {
        let mut watchdog_child = None;
        if let Some(d) = &self.deadlines {
            watchdog_child = watchdog::ensure_running(d.dir(), exe, std::process::id()).await?;
        }
        self.reconcile().await?;
        if !self.cfg.images.prepull.is_empty() {
            self.cache.prepull(&self.cfg.images.prepull).await;
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
        let hb = self.clone();
        self.tasks.spawn(async move { hb.heartbeat_loop().await });
        tracing::info!(agent = self.agent_id(), slots = self.cfg.slots, "agent running");
        self.lease_loop().await;
        // Drained: wait for running tasks, up to the grace period, then hand the rest back.
        let grace = tokio::time::Instant::now() + self.cfg.drain_grace;
        while self.busy() > 0 && tokio::time::Instant::now() < grace {
            let notified = self.slot_freed.notified();
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(grace) => {}
            }
        }
        let left: Vec<u64> = lock(&self.running).keys().copied().collect();
        if !left.is_empty() {
            tracing::warn!(tasks = left.len(), "drain grace over; handing running tasks back");
            for id in left {
                self.stop_task(id, StopReason::HandedBack);
            }
        }
        while self.busy() > 0 {
            let notified = self.slot_freed.notified();
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
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

    pub fn busy(&self) -> usize {
        lock(&self.running).len()
    }

    fn update_slot_metrics(&self, busy: usize) {
        self.metrics.slots_busy.set(busy as i64);
        self.metrics.slots_free.set(self.cfg.slots.saturating_sub(busy as u32) as i64);
    }

    pub fn status(&self) -> StatusView {
        let now = Instant::now();
        let running = lock(&self.running)
            .values()
            .map(|r| RunningView {
                task_id: r.lease.task_id,
                lease_epoch: r.lease.epoch,
                attempt: r.attempt,
                tenant: r.tenant.clone(),
                code: r.code.clone(),
                image: r.image.clone(),
                container_id: r.container_id.clone(),
                running_for_ms: now.duration_since(r.started).as_millis() as u64,
                stopping: r.stop,
            })
            .collect::<Vec<_>>();
        StatusView {
            agent_id: self.agent_id().to_string(),
            slots: self.cfg.slots,
            busy: running.len(),
            draining: self.draining.is_cancelled(),
            lease_ttl_ms: self.ttl().as_millis() as u64,
            running,
            images: self.cache.snapshot(),
        }
    }

    fn attributes(&self) -> pa::AgentAttributes {
        let a = &self.cfg.attributes;
        pa::AgentAttributes {
            region: a.region.clone(),
            cluster: a.cluster.clone(),
            vpc: a.vpc.clone(),
            ip_pool: a.ip_pool.clone(),
            egress_ip: a.egress_ip.clone(),
            labels: a.labels.clone().into_iter().collect(),
        }
    }

    async fn lease_loop(self: &Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        while !self.draining.is_cancelled() {
            let free = self.cfg.slots as usize - self.busy().min(self.cfg.slots as usize);
            if free == 0 {
                let notified = self.slot_freed.notified();
                tokio::select! {
                    _ = notified => {}
                    _ = self.draining.cancelled() => {}
                }
                continue;
            }
            let req = pa::LeaseRequest {
                agent_id: String::new(),
                attributes: Some(self.attributes()),
                slots: self.cfg.slots,
                max_tasks: free as u32,
                wait_ms: LEASE_WAIT.as_millis() as u64,
            };
            let sent = Instant::now();
            let sent_wall = SystemTime::now();
            let call = self.uplink.call(|mut c| {
                let r = self.uplink.request(req.clone(), Some(LEASE_WAIT * 2));
                async move { c.lease(r).await }
            });
            let resp = tokio::select! {
                r = call => r,
                // A grant racing with the drain is not lost: the control plane re-queues it
                // when its lease expires.
                _ = self.draining.cancelled() => break,
            };
            match resp {
                Ok(resp) => {
                    backoff = Duration::from_millis(100);
                    self.set_ttl(resp.lease_ttl_ms);
                    for g in resp.tasks {
                        self.start_task(g, sent, sent_wall);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease request failed; retrying in {backoff:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.draining.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn start_task(self: &Arc<Self>, g: pa::GrantedTask, granted: Instant, granted_wall: SystemTime) {
        let lease = Lease { task_id: g.task_id, epoch: g.lease_epoch };
        let cancel = self.shutdown.child_token();
        let busy = {
            let mut running = lock(&self.running);
            running.insert(
                g.task_id,
                Running {
                    lease,
                    attempt: g.attempt,
                    tenant: g.tenant.clone(),
                    code: g.code.clone(),
                    image: g.image.clone(),
                    container_id: None,
                    started: granted,
                    last_renewed: granted,
                    cancel: cancel.clone(),
                    stop: None,
                },
            );
            running.len()
        };
        self.update_slot_metrics(busy);
        let spec = ContainerSpec {
            task_id: g.task_id,
            attempt: g.attempt,
            lease_epoch: g.lease_epoch,
            agent_id: self.agent_id().to_string(),
            tenant: g.tenant,
            code: g.code,
            image: g.image,
            command: g.command,
            env: g.env.into_iter().collect(),
            payload: g.payload,
            memory_bytes: g.memory_bytes,
            cpu_millis: g.cpu_millis,
            pids: g.pids,
            timeout: Duration::from_millis(g.timeout_ms),
            network_mode: self.cfg.network_mode.clone(),
        };
        let deadline = granted_wall + self.ttl();
        let this = self.clone();
        let span = tracing::info_span!("task", task_id = lease.task_id, epoch = lease.epoch);
        self.tasks.spawn(this.run_task(lease, cancel, Work::Fresh(Box::new(spec)), deadline, 0).instrument(span));
    }

    async fn run_task(
        self: Arc<Self>,
        lease: Lease,
        cancel: CancellationToken,
        work: Work,
        deadline: SystemTime,
        seq_base: u64,
    ) {
        let (out_tx, mut out_rx) = mpsc::channel::<OutputChunk>(64);
        let ship = self.ship_tx.clone();
        let forward = tokio::spawn(async move {
            let mut seq = seq_base;
            while let Some(c) = out_rx.recv().await {
                let mut data: Bytes = c.data;
                while !data.is_empty() {
                    let part = data.split_to(data.len().min(MAX_CHUNK_BYTES));
                    if ship.send(ShipMsg::Chunk { lease, seq, stream: c.stream, data: part }).await.is_err() {
                        return;
                    }
                    seq += 1;
                }
            }
        });
        let report = match &work {
            Work::Fresh(spec) => {
                let this = self.clone();
                let on_created = move |id: &str| {
                    // The deadline follows the last renewal (a slow image pull may have
                    // spanned heartbeats), never later than the grant's.
                    let mut deadline = deadline;
                    if let Some(r) = lock(&this.running).get_mut(&lease.task_id) {
                        r.container_id = Some(id.to_string());
                        deadline = SystemTime::now() - r.last_renewed.elapsed() + this.ttl();
                    }
                    if let Some(d) = this.deadlines.clone() {
                        let id = id.to_string();
                        tokio::spawn(async move {
                            if let Err(e) = d.arm(&id, deadline).await {
                                tracing::error!(error = %e, "arming the watchdog failed");
                            }
                        });
                    }
                };
                self.exec.run(spec, out_tx, cancel.clone(), &on_created).await
            }
            Work::Adopt { container_id, timeout_left, since } => {
                self.exec.adopt(container_id, *timeout_left, *since, out_tx, cancel.clone()).await
            }
        };
        let _ = forward.await;
        let (ack, acked) = oneshot::channel();
        if self.ship_tx.send(ShipMsg::Flush { ack }).await.is_ok() {
            let _ = acked.await;
        }
        let stop = lock(&self.running).get(&lease.task_id).and_then(|r| r.stop);
        match stop {
            Some(StopReason::HandedBack) => {
                self.metrics.tasks.with_label_values(&["released"]).inc();
                self.release(lease).await;
            }
            Some(reason) => {
                tracing::warn!(task_id = lease.task_id, ?reason, "task stopped without reporting: lease not held");
                self.metrics.tasks.with_label_values(&["lost"]).inc();
            }
            None => self.complete(lease, &report).await,
        }
        if let Some(d) = &self.deadlines
            && !report.container_id.is_empty()
            && let Err(e) = d.disarm(&report.container_id).await
        {
            tracing::warn!(error = %e, "disarming the watchdog failed");
        }
        let busy = {
            let mut running = lock(&self.running);
            running.remove(&lease.task_id);
            running.len()
        };
        self.update_slot_metrics(busy);
        self.slot_freed.notify_waiters();
        self.slot_freed.notify_one();
    }

    /// Reports the end of a task, retrying while the lease is still held.
    async fn complete(&self, lease: Lease, report: &RunReport) {
        let outcome = match report.outcome {
            RunOutcome::Success => pa::Outcome::Success,
            RunOutcome::Error => pa::Outcome::Error,
            RunOutcome::Timeout => pa::Outcome::Timeout,
            RunOutcome::Killed => pa::Outcome::Killed,
        };
        let label = match report.outcome {
            RunOutcome::Success => "success",
            RunOutcome::Error => "error",
            RunOutcome::Timeout => "timeout",
            RunOutcome::Killed => "killed",
        };
        self.metrics.tasks.with_label_values(&[label]).inc();
        let req = pa::CompleteRequest {
            agent_id: String::new(),
            completions: vec![pa::Completion {
                lease: Some(pa::LeaseRef { task_id: lease.task_id, lease_epoch: lease.epoch }),
                outcome: outcome as i32,
                exit_code: report.exit_code,
                oom_killed: report.oom_killed,
                error: report.error.clone(),
                started_ms: report.started_ms,
                peak_memory_bytes: report.peak_memory_bytes,
            }],
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            match self
                .uplink
                .call(|mut c| {
                    let r = self.uplink.request(req.clone(), None);
                    async move { c.complete(r).await }
                })
                .await
            {
                Ok(resp) => {
                    for r in resp.results {
                        if r.accepted {
                            tracing::info!(task_id = lease.task_id, outcome = label, "reported");
                        } else {
                            self.metrics.completions_rejected.inc();
                            tracing::warn!(task_id = lease.task_id, reason = %r.reason, "completion rejected");
                        }
                    }
                    return;
                }
                Err(e) if e.status().is_some_and(|s| s.code() == tonic::Code::PermissionDenied) => {
                    self.metrics.completions_rejected.inc();
                    tracing::warn!(error = %e, "completion refused");
                    return;
                }
                Err(e) => {
                    let held = lock(&self.running).get(&lease.task_id).is_some_and(|r| r.stop.is_none());
                    if !held || self.shutdown.is_cancelled() {
                        tracing::warn!(error = %e, "giving up reporting: lease no longer held");
                        return;
                    }
                    tracing::warn!(error = %e, "reporting failed; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    async fn release(&self, lease: Lease) {
        let req = pa::ReleaseRequest {
            agent_id: String::new(),
            leases: vec![pa::LeaseRef { task_id: lease.task_id, lease_epoch: lease.epoch }],
        };
        for _ in 0..5 {
            match self
                .uplink
                .call(|mut c| {
                    let r = self.uplink.request(req.clone(), None);
                    async move { c.release(r).await }
                })
                .await
            {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "handing a task back failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        tracing::warn!(task_id = lease.task_id, "could not hand the task back; it is re-queued when its lease expires");
    }

    /// Marks a task stopped for `reason` and kills its container (the runner then ends).
    fn stop_task(&self, task_id: u64, reason: StopReason) {
        let mut running = lock(&self.running);
        if let Some(r) = running.get_mut(&task_id)
            && r.stop.is_none()
        {
            tracing::warn!(task_id, ?reason, "stopping task");
            r.stop = Some(reason);
            r.cancel.cancel();
        }
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        loop {
            let interval = self.ttl() / 4;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.shutdown.cancelled() => return,
            }
            self.heartbeat_once().await;
        }
    }

    async fn heartbeat_once(&self) {
        let held: Vec<Lease> = lock(&self.running).values().filter(|r| r.stop.is_none()).map(|r| r.lease).collect();
        if held.is_empty() {
            return;
        }
        let sent = Instant::now();
        let sent_wall = SystemTime::now();
        let req = pa::HeartbeatRequest {
            agent_id: String::new(),
            leases: held.iter().map(|l| pa::LeaseRef { task_id: l.task_id, lease_epoch: l.epoch }).collect(),
        };
        let ttl = self.ttl();
        match self
            .uplink
            .call(|mut c| {
                let r = self.uplink.request(req.clone(), Some(ttl / 2));
                async move { c.heartbeat(r).await }
            })
            .await
        {
            Ok(resp) => {
                self.set_ttl(resp.lease_ttl_ms);
                let revoked: Vec<Lease> =
                    resp.revoked.iter().map(|l| Lease { task_id: l.task_id, epoch: l.lease_epoch }).collect();
                let mut arm = Vec::new();
                {
                    let mut running = lock(&self.running);
                    for l in &held {
                        if revoked.contains(l) {
                            continue;
                        }
                        if let Some(r) = running.get_mut(&l.task_id)
                            && r.lease == *l
                        {
                            r.last_renewed = sent;
                            if let Some(id) = &r.container_id {
                                arm.push(id.clone());
                            }
                        }
                    }
                }
                for l in revoked {
                    self.stop_task(l.task_id, StopReason::Revoked);
                }
                if let Some(d) = &self.deadlines {
                    let deadline = sent_wall + self.ttl();
                    for id in arm {
                        if let Err(e) = d.arm(&id, deadline).await {
                            tracing::error!(error = %e, "pushing the watchdog deadline failed");
                        }
                    }
                }
            }
            Err(e) => {
                self.metrics.lease_renew_failures.inc();
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
        // Leases not renewed within the TTL are gone: the control plane may already have
        // given the task to someone else.
        let now = Instant::now();
        let ttl = self.ttl();
        let lost: Vec<u64> = lock(&self.running)
            .values()
            .filter(|r| r.stop.is_none() && now.duration_since(r.last_renewed) >= ttl)
            .map(|r| r.lease.task_id)
            .collect();
        for id in lost {
            self.stop_task(id, StopReason::LeaseLost);
        }
    }

    /// Containers labelled by an earlier run of this agent: re-adopt those whose lease the
    /// control plane still recognises, remove the rest.
    async fn reconcile(self: &Arc<Self>) -> Result<(), AgentError> {
        let found = self.exec.labelled(self.agent_id()).await?;
        let mut keep: Vec<Labelled> = Vec::new();
        let running: Vec<&Labelled> = found.iter().filter(|c| c.running).collect();
        if !running.is_empty() {
            let req = pa::HeartbeatRequest {
                agent_id: String::new(),
                leases: running.iter().map(|c| pa::LeaseRef { task_id: c.task_id, lease_epoch: c.epoch }).collect(),
            };
            match self
                .uplink
                .call(|mut c| {
                    let r = self.uplink.request(req.clone(), None);
                    async move { c.heartbeat(r).await }
                })
                .await
            {
                Ok(resp) => {
                    self.set_ttl(resp.lease_ttl_ms);
                    for c in &running {
                        let revoked = resp.revoked.iter().any(|l| l.task_id == c.task_id && l.lease_epoch == c.epoch);
                        if !revoked {
                            keep.push((*c).clone());
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot confirm leases of running containers; removing them"),
            }
        }
        for c in &found {
            if keep.iter().any(|k| k.id == c.id) {
                continue;
            }
            tracing::info!(container = %c.id, task_id = c.task_id, epoch = c.epoch, "removing orphaned container");
            if let Err(e) = self.exec.remove(&c.id).await {
                tracing::warn!(error = %e, container = %c.id, "removing orphaned container failed");
            }
            if let Some(d) = &self.deadlines {
                let _ = d.disarm(&c.id).await;
            }
        }
        // Deadlines of containers that no longer exist.
        if let Some(d) = &self.deadlines {
            for id in d.armed().await.unwrap_or_default() {
                if !found.iter().any(|c| c.id == id) {
                    let _ = d.disarm(&id).await;
                }
            }
        }
        let now = Instant::now();
        let now_wall = SystemTime::now();
        for c in keep {
            tracing::info!(container = %c.id, task_id = c.task_id, epoch = c.epoch, "re-adopting running container");
            let lease = Lease { task_id: c.task_id, epoch: c.epoch };
            let cancel = self.shutdown.child_token();
            lock(&self.running).insert(
                c.task_id,
                Running {
                    lease,
                    attempt: c.attempt,
                    tenant: String::new(),
                    code: String::new(),
                    image: String::new(),
                    container_id: Some(c.id.clone()),
                    started: now,
                    last_renewed: now,
                    cancel: cancel.clone(),
                    stop: None,
                },
            );
            let elapsed = now_wall
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
                .saturating_sub(c.started_unix_s)
                .max(0) as u64;
            let timeout_left = Duration::from_millis(c.timeout_ms).saturating_sub(Duration::from_secs(elapsed));
            let deadline = now_wall + self.ttl();
            let work = Work::Adopt { container_id: c.id.clone(), timeout_left, since: now_wall };
            if let Some(d) = &self.deadlines {
                d.arm(&c.id, deadline).await?;
            }
            let this = self.clone();
            let seq_base = self.adopt_seq_base;
            self.tasks.spawn(async move { this.run_task(lease, cancel, work, deadline, seq_base).await });
        }
        self.update_slot_metrics(self.busy());
        Ok(())
    }
}

enum Work {
    Fresh(Box<ContainerSpec>),
    Adopt { container_id: String, timeout_left: Duration, since: SystemTime },
}

impl ShipperHost for Agent {
    fn holds(&self, lease: Lease) -> bool {
        lock(&self.running).get(&lease.task_id).is_some_and(|r| r.lease == lease)
    }

    fn lease_stale(&self, lease: Lease) {
        let held = lock(&self.running).get(&lease.task_id).is_some_and(|r| r.lease == lease);
        if held {
            self.stop_task(lease.task_id, StopReason::Revoked);
        }
    }

    fn shipped_bytes(&self, n: u64) {
        self.metrics.log_bytes_shipped.inc_by(n);
    }
}

fn docker_endpoint() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string())
}

/// Runs an agent from its configuration until it has drained (SIGTERM, SIGINT or
/// `POST /drain` on the control socket): the control socket, the optional metrics
/// listener, the watchdog and the agent's loops, all stopped and joined before returning.
pub async fn serve(cfg: AgentConfig, exe: std::path::PathBuf) -> Result<(), AgentError> {
    let socket_path = cfg.control_socket();
    let metrics_listen = cfg.metrics_listen;
    let listener = crate::socket::bind(&socket_path).await?;
    let agent = Agent::new(cfg).await?;
    let stop = CancellationToken::new();
    let background = TaskTracker::new();
    background.spawn(crate::socket::serve(listener, socket_path.clone(), agent.clone(), stop.clone()));
    if let Some(addr) = metrics_listen {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Io { path: addr.to_string().into(), source })?;
        background.spawn(crate::socket::serve_metrics(tcp, agent.clone(), stop.clone()));
    }
    let drain = agent.draining.clone();
    let signals_stop = stop.clone();
    background.spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: draining"),
            _ = drain.cancelled() => return,
            _ = signals_stop.cancelled() => return,
        }
        drain.cancel();
    });
    tracing::info!(socket = %socket_path.display(), "control socket ready");
    let r = agent.run(&exe).await;
    stop.cancel();
    background.close();
    background.wait().await;
    r
}
