//! `drover-bench fleet`: many simulated agents against a real 3-node loopback cluster.
//!
//! Each simulated agent is the real agent ([`Agent`]: lease long-poll, heartbeats on the
//! real schedule, deadline timer, runners, completion reports) with its own gRPC
//! connection and its own development identity, over the in-memory executor: a task
//! "runs" for `run_time` on the clock and exits 0. A feeder keeps the queue ahead of the
//! fleet. Agents start in a ramp; the window measured begins once all are up plus a
//! warm-up.
//!
//! Measured, in the window: placements/s (completions the control plane accepted, as the
//! agents saw them), heartbeat latency (agent side, every heartbeat call), grant latency
//! (the leader's `drover_task_dispatch_seconds`: runnable → lease granted), the leader's
//! CPU and RSS, Raft entries/s and commands per entry (the leader's
//! `drover_raft_applied_{entries,commands}_total`), and the leader's RSS per connected
//! agent. Errors: every failed agent→control-plane call, every completion the control
//! plane refused, every lease an agent lost, over the whole run (ramp included).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use drover_proto::agent as pa;
use drover_proto::v1 as pv;
use drover_runner_agent::agent::Agent;
use drover_runner_agent::config::AgentConfig;
use drover_runner_agent::executor::fake::{FakeBehaviour, FakeExecutor};
use drover_runner_agent::metrics::AgentMetrics;
use drover_runner_agent::uplink::{ControlPlane, Reply, Uplink};

use crate::cluster::{self, BenchCluster, TENANT};

pub struct Options {
    pub agents: usize,
    pub slots: u32,
    /// How long each task "runs".
    pub run_time: Duration,
    /// Length of the measured window.
    pub duration: Duration,
    /// After the last agent started, before the window opens.
    pub warmup: Duration,
    /// Agents started per second.
    pub ramp_per_s: usize,
    /// Server lease TTL (heartbeats go every quarter of it).
    pub lease_ttl: Duration,
    /// Tasks queued per second; 0 means the fleet's capacity (slots / run time). The
    /// queue is never let grow past one task per slot.
    pub rate: f64,
    /// With `backlog` > 0: this many more tenants, each with `codes` codes, and a backlog
    /// of `backlog` tasks spread over all of them, queued before the agents start; the
    /// feeder is off (the backlog is the work).
    pub tenants: usize,
    pub codes: usize,
    pub backlog: u64,
}

impl Options {
    pub fn offered_rate(&self) -> f64 {
        if self.rate > 0.0 {
            self.rate
        } else {
            self.agents as f64 * f64::from(self.slots) / self.run_time.as_secs_f64().max(0.001)
        }
    }
}

#[derive(Debug)]
pub struct Report {
    pub agents: usize,
    pub placements_per_s: f64,
    pub heartbeat: Option<crate::Percentiles>,
    pub heartbeats: usize,
    pub grant_p50: Option<f64>,
    pub grant_p99: Option<f64>,
    /// The leader's own heartbeat handling time (`drover_heartbeat_seconds`): p99 in the
    /// window, and the largest from the start to the end of the window.
    pub server_hb_p99: Option<f64>,
    pub server_hb_max_run: Option<f64>,
    pub leader_cpu: f64,
    pub leader_rss: u64,
    pub rss_per_agent: f64,
    pub entries_per_s: f64,
    pub commands_per_entry: f64,
    pub errors: u64,
    /// Of `errors`: while agents started and warmed up, in the window, while they drained.
    pub errors_by_phase: [u64; 3],
    /// Errors per second of the run, for the seconds that had any.
    pub error_seconds: Vec<(u32, u32)>,
    pub first_error: Option<String>,
}

/// What every simulated agent's uplink reports into.
#[derive(Default)]
struct Stats {
    heartbeats: Mutex<Vec<Duration>>,
    /// Accepted completions in the window, and over the whole run.
    completed: AtomicU64,
    completed_all: AtomicU64,
    errors: AtomicU64,
    /// 0: ramp and warm-up, 1: the window, 2: drain.
    phase: std::sync::atomic::AtomicUsize,
    by_phase: [AtomicU64; 3],
    /// When the run started, and the seconds since then of the first 10,000 errors.
    started: std::sync::OnceLock<Instant>,
    error_times: Mutex<Vec<u32>>,
    first_error: Mutex<Option<String>>,
}

impl Stats {
    /// In the measured window.
    fn measuring(&self) -> bool {
        self.phase.load(Ordering::Relaxed) == 1
    }

    fn error(&self, what: &str, e: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.by_phase[self.phase.load(Ordering::Relaxed).min(2)].fetch_add(1, Ordering::Relaxed);
        if let Some(t0) = self.started.get() {
            let mut times = self.error_times.lock().unwrap_or_else(|p| p.into_inner());
            if times.len() < 10_000 {
                times.push(t0.elapsed().as_secs() as u32);
            }
        }
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(|| format!("{what}: {e}"));
    }
}

/// The real gRPC uplink, observed: latency of heartbeats, errors of every call, and the
/// completions the control plane accepted.
struct Observed {
    inner: Uplink,
    stats: Arc<Stats>,
}

impl Observed {
    async fn watch<T>(
        &self,
        what: &'static str,
        call: Reply<'_, T>,
    ) -> Result<T, drover_runner_agent::uplink::UplinkError> {
        let r = call.await;
        if let Err(e) = &r {
            self.stats.error(what, e);
        }
        r
    }
}

impl ControlPlane for Observed {
    fn agent_id(&self) -> &str {
        self.inner.agent_id()
    }

    fn lease(&self, req: pa::LeaseRequest, timeout: Duration) -> Reply<'_, (pa::LeaseResponse, Instant)> {
        Box::pin(self.watch("lease", self.inner.lease(req, timeout)))
    }

    fn heartbeat(&self, req: pa::HeartbeatRequest, timeout: Duration) -> Reply<'_, (pa::HeartbeatResponse, Instant)> {
        Box::pin(async move {
            let t0 = Instant::now();
            let r = self.watch("heartbeat", self.inner.heartbeat(req, timeout)).await;
            if r.is_ok() && self.stats.measuring() {
                self.stats.heartbeats.lock().unwrap_or_else(|p| p.into_inner()).push(t0.elapsed());
            }
            r
        })
    }

    fn complete(&self, req: pa::CompleteRequest) -> Reply<'_, pa::CompleteResponse> {
        Box::pin(async move {
            let r = self.watch("complete", self.inner.complete(req)).await?;
            for c in &r.results {
                if c.accepted {
                    self.stats.completed_all.fetch_add(1, Ordering::Relaxed);
                    if self.stats.measuring() {
                        self.stats.completed.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    self.stats.error("completion refused", &c.reason);
                }
            }
            Ok(r)
        })
    }

    fn release(&self, req: pa::ReleaseRequest) -> Reply<'_, pa::ReleaseResponse> {
        Box::pin(self.watch("release", self.inner.release(req)))
    }

    fn append_logs(&self, req: pa::AppendLogsRequest) -> Reply<'_, pa::AppendLogsResponse> {
        Box::pin(self.watch("append_logs", self.inner.append_logs(req)))
    }
}

/// Leader-side counters read from its `/metrics`.
struct LeaderSample {
    at: Instant,
    cpu: Duration,
    entries: u64,
    commands: u64,
    exposition: String,
}

async fn sample(b: &BenchCluster) -> anyhow::Result<LeaderSample> {
    let (_, exposition) = b.cluster.http_get(b.leader, "/metrics").await?;
    Ok(LeaderSample {
        at: Instant::now(),
        cpu: b.cluster.cpu_time(b.leader).context("leader CPU time")?,
        entries: cluster::counter(&exposition, "drover_raft_applied_entries_total"),
        commands: cluster::counter(&exposition, "drover_raft_applied_commands_total"),
        exposition,
    })
}

pub async fn run(bin: &Path, o: &Options) -> anyhow::Result<Report> {
    let config = format!("lease_ttl = \"{}\"\n", humantime::format_duration(o.lease_ttl));
    let b = cluster::start(bin, false, &config).await?;
    let stats = Arc::new(Stats::default());
    let _ = stats.started.set(Instant::now());
    let dir = tempfile::tempdir()?;
    let addrs: Vec<String> = {
        // The leader first: agents dial it, and follow hints if it moves.
        let mut ids = b.cluster.ids();
        ids.sort_by_key(|id| *id != b.leader);
        ids.iter().map(|id| b.cluster.addr(*id).to_string()).collect()
    };
    if o.backlog > 0 {
        populate(&b, o).await?;
    }
    let rss_idle = b.cluster.rss_bytes(b.leader).unwrap_or(0);
    let stop_feeding = tokio_util::sync::CancellationToken::new();
    let feeder = tokio::spawn(feed(
        b.cluster.tenant(b.leader, TENANT)?,
        stats.clone(),
        if o.backlog > 0 { 0.0 } else { o.offered_rate() },
        o.agents as u64 * u64::from(o.slots),
        stop_feeding.clone(),
    ));

    let exe = std::env::current_exe()?;
    let mut agents = Vec::with_capacity(o.agents);
    let mut runs = Vec::with_capacity(o.agents);
    let ramp_started = Instant::now();
    for i in 0..o.agents {
        let due = ramp_started + Duration::from_secs_f64(i as f64 / o.ramp_per_s.max(1) as f64);
        tokio::time::sleep_until(due.into()).await;
        let (agent, metrics) = simulated_agent(i, &addrs, dir.path(), o, &stats)?;
        let (a, exe) = (agent.clone(), exe.clone());
        runs.push(tokio::spawn(async move { a.run(&exe).await }));
        agents.push((agent, metrics));
    }
    tokio::time::sleep(o.warmup).await;
    let rss_connected = b.cluster.rss_bytes(b.leader).unwrap_or(0);

    let before = sample(&b).await?;
    stats.phase.store(1, Ordering::SeqCst);
    tokio::time::sleep(o.duration).await;
    stats.phase.store(2, Ordering::SeqCst);
    let after = sample(&b).await?;
    let leader_rss = b.cluster.rss_bytes(b.leader).unwrap_or(0);

    stop_feeding.cancel();
    for (agent, _) in &agents {
        agent.draining().cancel();
    }
    for r in runs {
        if let Err(e) = r.await.context("agent task")? {
            stats.error("agent", &e);
        }
    }
    feeder.await.context("feeder")??;
    let lost: u64 = agents.iter().map(|(_, m)| m.leases_lost.get()).sum();
    if lost > 0 {
        stats.error("leases lost", &lost);
    }

    let secs = after.at.duration_since(before.at).as_secs_f64();
    let entries = after.entries.saturating_sub(before.entries);
    let mut hb = std::mem::take(&mut *stats.heartbeats.lock().unwrap_or_else(|p| p.into_inner()));
    let grants =
        crate::histogram::Delta::between(&before.exposition, &after.exposition, "drover_task_dispatch_seconds");
    if std::env::var_os("DROVER_BENCH_SHOW_WARNINGS").is_some() {
        for id in b.cluster.ids() {
            let log = b.cluster.log(id);
            let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
            println!("node {id}: {} warnings; the first 20:", warnings.len());
            for l in warnings.iter().take(20) {
                println!("  {l}");
            }
        }
    }
    let first_error = stats.first_error.lock().unwrap_or_else(|p| p.into_inner()).take();
    Ok(Report {
        agents: o.agents,
        placements_per_s: stats.completed.load(Ordering::Relaxed) as f64 / secs,
        heartbeats: hb.len(),
        heartbeat: crate::percentiles(&mut hb),
        grant_p50: grants.quantile(0.50),
        grant_p99: grants.quantile(0.99),
        server_hb_p99: crate::histogram::Delta::between(
            &before.exposition,
            &after.exposition,
            "drover_heartbeat_seconds",
        )
        .quantile(0.99),
        server_hb_max_run: crate::histogram::Delta::between("", &after.exposition, "drover_heartbeat_seconds")
            .quantile(1.0),
        leader_cpu: after.cpu.saturating_sub(before.cpu).as_secs_f64() / secs,
        leader_rss,
        rss_per_agent: rss_connected.saturating_sub(rss_idle) as f64 / o.agents.max(1) as f64,
        entries_per_s: entries as f64 / secs,
        commands_per_entry: after.commands.saturating_sub(before.commands) as f64 / entries.max(1) as f64,
        errors: stats.errors.load(Ordering::Relaxed),
        errors_by_phase: std::array::from_fn(|i| stats.by_phase[i].load(Ordering::Relaxed)),
        error_seconds: {
            let times = stats.error_times.lock().unwrap_or_else(|p| p.into_inner());
            let mut by: std::collections::BTreeMap<u32, u32> = Default::default();
            for t in times.iter() {
                *by.entry(*t).or_default() += 1;
            }
            by.into_iter().collect()
        },
        first_error,
    })
}

/// Creates `tenants` tenants of `codes` codes each and queues `backlog` tasks over them
/// (batches of 1,000 for one tenant, codes in turn), 16 calls at a time.
async fn populate(b: &BenchCluster, o: &Options) -> anyhow::Result<()> {
    use drover_proto::admin as pa;
    use futures::{StreamExt, TryStreamExt};
    let t0 = Instant::now();
    let tenant = |i: usize| format!("t{i:05}");
    futures::stream::iter(0..o.tenants)
        .map(|i| async move {
            b.cluster
                .admin(b.leader)?
                .upsert_tenant(pa::UpsertTenantRequest {
                    id: tenant(i),
                    limits: Some(pa::TenantLimits { max_queued_tasks: 100_000_000, ..Default::default() }),
                    ..Default::default()
                })
                .await?;
            let mut t = b.cluster.tenant(b.leader, &tenant(i))?;
            for c in 0..o.codes {
                t.register_code(pv::RegisterCodeRequest {
                    name: format!("c{c:02}"),
                    image: "drover-test/busybox:1".into(),
                    ..Default::default()
                })
                .await?;
            }
            anyhow::Ok(())
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    const BATCH: u64 = 1_000;
    let batches = o.backlog.div_ceil(BATCH);
    futures::stream::iter(0..batches)
        .map(|k| async move {
            let i = k as usize % o.tenants.max(1);
            let n = BATCH.min(o.backlog - k * BATCH) as usize;
            let tasks = (0..n)
                .map(|j| pv::NewTask {
                    code: format!("c{:02}", j % o.codes.max(1)),
                    payload: vec![b'x'; 64],
                    ..Default::default()
                })
                .collect();
            b.cluster
                .tenant(b.leader, &tenant(i))?
                .queue_tasks(pv::QueueTasksRequest { tasks, idempotency_key: String::new() })
                .await?;
            anyhow::Ok(())
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    println!(
        "populated {} tenants × {} codes and a backlog of {} tasks in {:.1?}",
        o.tenants,
        o.codes,
        o.backlog,
        t0.elapsed()
    );
    Ok(())
}

fn simulated_agent(
    i: usize,
    addrs: &[String],
    dir: &Path,
    o: &Options,
    stats: &Arc<Stats>,
) -> anyhow::Result<(Arc<Agent>, AgentMetrics)> {
    let toml = format!(
        "control_plane = {addrs:?}\ndev_agent_id = \"sim-{i}\"\nslots = {}\nwatchdog = false\n\
         drain_grace = \"{}\"\ndata_dir = {:?}\n",
        o.slots,
        humantime::format_duration(o.run_time + Duration::from_secs(5)),
        dir.join(format!("sim-{i}")).display().to_string(),
    );
    let cfg: AgentConfig = toml::from_str(&toml).context("simulated agent config")?;
    let uplink = Arc::new(Observed { inner: Uplink::new(&cfg)?, stats: stats.clone() });
    let exec = Arc::new(FakeExecutor::new(FakeBehaviour { run_time: o.run_time, create_time: Duration::ZERO }));
    let metrics = AgentMetrics::new()?;
    Ok((Agent::with_parts(cfg, uplink, exec, metrics.clone()), metrics))
}

/// Queues tasks at `rate` per second, in batches of up to 1,000, never more than
/// `backlog` ahead of what the fleet has completed, until stopped.
async fn feed(
    mut tenant: drover_chaos::clients::Tenant,
    stats: Arc<Stats>,
    rate: f64,
    backlog: u64,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    const BATCH: u64 = 1_000;
    let started = Instant::now();
    let mut queued = 0u64;
    while !stop.is_cancelled() {
        let owed = (started.elapsed().as_secs_f64() * rate) as u64;
        let outstanding = queued.saturating_sub(stats.completed_all.load(Ordering::Relaxed));
        let n = owed.saturating_sub(queued).min(backlog.saturating_sub(outstanding)).min(BATCH);
        if n > 0 {
            tenant
                .queue_tasks(pv::QueueTasksRequest {
                    tasks: cluster::new_tasks(n as usize, 64),
                    idempotency_key: String::new(),
                })
                .await
                .context("feeding the queue")?;
            queued += n;
        } else {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                _ = stop.cancelled() => {}
            }
        }
    }
    Ok(())
}

/// Prints reports as one table.
pub fn print(reports: &[Report], o: &Options) {
    println!(
        "drover-bench fleet: 3 nodes on loopback, {} slots per agent, tasks run {:?}, lease TTL {:?}, {:?} measured, {}",
        o.slots,
        o.run_time,
        o.lease_ttl,
        o.duration,
        if o.backlog > 0 {
            format!("{} tenants × {} codes, a backlog of {} tasks", o.tenants, o.codes, o.backlog)
        } else if o.rate > 0.0 {
            format!("{:.0} tasks/s offered", o.rate)
        } else {
            "offered at fleet capacity".into()
        }
    );
    println!(
        "{:>7} {:>12} {:>9} {:>9} {:>9} {:>11} {:>11} {:>10} {:>10} {:>8} {:>9} {:>10} {:>9} {:>9} {:>7}",
        "agents",
        "placements/s",
        "hb p50",
        "hb p99",
        "hb max",
        "ldr hb p99",
        "ldr hb max*",
        "grant p50",
        "grant p99",
        "ldr CPU",
        "ldr RSS",
        "RSS/agent",
        "entries/s",
        "cmds/ent",
        "errors"
    );
    let d = |p: Option<Duration>| p.map(|d| format!("{d:.1?}")).unwrap_or_else(|| "-".into());
    let s = |q: Option<f64>| q.map(|v| format!("≤{:.0}ms", v * 1000.0)).unwrap_or_else(|| "-".into());
    for r in reports {
        println!(
            "{:>7} {:>12.0} {:>9} {:>9} {:>9} {:>11} {:>11} {:>10} {:>10} {:>7.0}% {:>6.0}MiB {:>8.1}KiB {:>9.0} {:>9.1} {:>7}",
            r.agents,
            r.placements_per_s,
            d(r.heartbeat.map(|p| p.p50)),
            d(r.heartbeat.map(|p| p.p99)),
            d(r.heartbeat.map(|p| p.max)),
            s(r.server_hb_p99),
            s(r.server_hb_max_run),
            s(r.grant_p50),
            s(r.grant_p99),
            r.leader_cpu * 100.0,
            r.leader_rss as f64 / (1024.0 * 1024.0),
            r.rss_per_agent / 1024.0,
            r.entries_per_s,
            r.commands_per_entry,
            r.errors
        );
        if let Some(e) = &r.first_error {
            let [ramp, window, drain] = r.errors_by_phase;
            println!("        errors: {ramp} starting, {window} in the window, {drain} draining; first: {e}");
            let at: Vec<String> = r.error_seconds.iter().map(|(s, n)| format!("{s}s:{n}")).collect();
            println!("        errors by second of the run: {}", at.join(" "));
        }
    }
}
