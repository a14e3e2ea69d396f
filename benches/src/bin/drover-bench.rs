//! `drover-bench`: end-to-end load against a real 3-node loopback cluster.
//!
//! `drover-bench queue` measures replicated enqueue throughput and latency: it starts
//! three `drover server` processes (the `drover` binary next to this one, or `--drover`),
//! then for each batch size runs many concurrent clients, each queuing batches of 1 KiB
//! payloads in a closed loop, for a bounded time and count. It prints tasks/s and p50/p99
//! call latency.
//!
//! `drover-bench reads` measures linearizable `GetTask`/`ListTasks` throughput through
//! the leader and through a follower ([`drover_benches::reads`]).
//!
//! `drover-bench fleet` runs many simulated agents (the real agent over the in-memory
//! executor) against the cluster and prints one table row per fleet size
//! ([`drover_benches::fleet`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use drover_chaos::{Cluster, ClusterOptions, clients};
use drover_proto::admin as pa;
use drover_proto::v1 as pv;

#[derive(Parser)]
#[command(about = "Drover load generator")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Replicated enqueue throughput on a 3-node loopback cluster.
    Queue {
        /// Path to the drover binary (default: next to drover-bench).
        #[arg(long)]
        drover: Option<PathBuf>,
        /// Batch sizes to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,100")]
        batch: Vec<usize>,
        /// Concurrent clients per run.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Length of each run.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        duration: Duration,
        /// Upper bound on tasks queued per run.
        #[arg(long, default_value_t = 2_000_000)]
        max_tasks: u64,
        #[arg(long, default_value_t = 1024)]
        payload_bytes: usize,
        /// Send through a follower (forwarded) instead of the leader.
        #[arg(long)]
        via_follower: bool,
        /// Sample every node's Raft counters and CPU every 100 ms and print the samples
        /// around the longest stall.
        #[arg(long)]
        timeline: bool,
    },
    /// Simulated agents leasing, heartbeating and completing tasks; one row per fleet
    /// size. Exits non-zero on any error.
    Fleet {
        #[arg(long)]
        drover: Option<PathBuf>,
        /// Fleet sizes, comma-separated (a fresh cluster each).
        #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
        agents: Vec<usize>,
        #[arg(long, default_value_t = 4)]
        slots: u32,
        /// How long each task "runs" in the in-memory executor.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
        run_time: Duration,
        /// The measured window.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
        duration: Duration,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        warmup: Duration,
        /// Agents started per second.
        #[arg(long, default_value_t = 1000)]
        ramp: usize,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        lease_ttl: Duration,
        /// Tasks queued per second (0: the fleet's capacity, slots / run time).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Queue this many tasks before the agents start, over `--tenants` tenants of
        /// `--codes` codes each (the feeder is off).
        #[arg(long, default_value_t = 0)]
        backlog: u64,
        #[arg(long, default_value_t = 1000)]
        tenants: usize,
        #[arg(long, default_value_t = 20)]
        codes: usize,
    },
    /// Linearizable read throughput (GetTask, ListTasks) via the leader and a follower.
    /// Exits non-zero if any read failed.
    Reads {
        #[arg(long)]
        drover: Option<PathBuf>,
        /// Calls kept in flight, comma-separated (one run each).
        #[arg(long, value_delimiter = ',', default_value = "16,128,512")]
        in_flight: Vec<usize>,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
        duration: Duration,
        /// Tasks queued before reading.
        #[arg(long, default_value_t = 10_000)]
        tasks: u64,
        /// Client connections the calls are spread over.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Mutual TLS (a CA made for the run) instead of development identities.
        #[arg(long)]
        tls: bool,
        /// ListTasks page size.
        #[arg(long, default_value_t = 20)]
        list_limit: u32,
    },
    /// Queue a large backlog and report each node's memory and single-task enqueue
    /// latency before and after it (the backlog lives on disk, not in memory).
    Backlog {
        #[arg(long)]
        drover: Option<PathBuf>,
        /// Tasks to queue.
        #[arg(long, default_value_t = 1_000_000)]
        tasks: u64,
        #[arg(long, default_value_t = 1024)]
        payload_bytes: usize,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Extra TOML lines for every server's config (for example `cache_capacity = "64 MiB"`).
        #[arg(long, default_value = "")]
        server_config: String,
    },
    /// Queue-to-completion latency of a no-op task through one control-plane node and one
    /// real agent (Docker), next to plain `docker run --rm` of the same image.
    E2e {
        #[arg(long)]
        drover: Option<PathBuf>,
        /// Sequential tasks (and sequential `docker run`s).
        #[arg(long, default_value_t = 30)]
        runs: usize,
        #[arg(long, default_value = "drover-test/busybox:1")]
        image: String,
    },
}

fn drover_bin(drover: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match drover {
        Some(p) => Ok(p),
        None => Ok(std::env::current_exe()?.parent().context("exe dir")?.join("drover")),
    }
}

/// Starts the bench cluster; returns it, the address clients should use and the leader.
async fn setup(
    bin: &std::path::Path,
    via_follower: bool,
    extra_config: &str,
) -> anyhow::Result<(Cluster, String, u64)> {
    let b = drover_benches::cluster::start(bin, false, extra_config).await?;
    let target = if via_follower { b.cluster.follower().await? } else { b.leader };
    let addr = b.cluster.addr(target).to_string();
    Ok((b.cluster, addr, b.leader))
}

/// Every node's CPU time, this process's and the machine's counters at one moment.
struct CpuMark {
    nodes: Vec<(u64, Duration)>,
    own: Duration,
    machine: drover_benches::cpu::MachineCpu,
}

impl CpuMark {
    fn now(c: &Cluster) -> Self {
        CpuMark {
            nodes: c.ids().into_iter().map(|id| (id, c.cpu_time(id).unwrap_or_default())).collect(),
            own: drover_benches::cpu::own_cpu_time(),
            machine: drover_benches::cpu::MachineCpu::now(),
        }
    }

    /// CPU per 1,000 tasks of each node and of this load generator since `self`, and how
    /// busy the machine was.
    fn line_since(&self, later: &CpuMark, leader: u64, tasks: u64) -> String {
        use drover_benches::cpu::ms_per_1000;
        let mut parts: Vec<String> = self
            .nodes
            .iter()
            .zip(&later.nodes)
            .map(|((id, was), (_, now))| {
                let mark = if *id == leader { " (leader)" } else { "" };
                format!("node {id}{mark} {:.0} ms", ms_per_1000(now.saturating_sub(*was), tasks))
            })
            .collect();
        parts.push(format!("clients {:.0} ms", ms_per_1000(later.own.saturating_sub(self.own), tasks)));
        format!(
            "CPU per 1,000 tasks: {}; machine {:.0} % busy",
            parts.join(", "),
            100.0 * self.machine.busy_since(&later.machine)
        )
    }
}

use drover_benches::cluster::new_tasks;

/// One node's progress counters at one moment of a run.
struct Sample {
    at: Duration,
    node: u64,
    cpu: Duration,
    applied: u64,
    syncs: u64,
    appends: u64,
}

/// Samples every node every 100 ms from `started` until `until`.
async fn sample_until(c: &Cluster, started: Instant, until: Instant) -> Vec<Sample> {
    use drover_benches::cluster::counter;
    let mut out = Vec::new();
    while Instant::now() < until {
        // A failed scrape (a node busy past the client's timeout) is a missing sample.
        for (id, text) in scrape_all(c).await.unwrap_or_default() {
            out.push(Sample {
                at: started.elapsed(),
                node: id,
                cpu: c.cpu_time(id).unwrap_or_default(),
                applied: counter(&text, "drover_raft_applied_entries_total"),
                syncs: counter(&text, "drover_raft_log_sync_seconds_count"),
                appends: counter(&text, "drover_raft_append_entries_seconds_count"),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out
}

/// The samples from 300 ms before the stall to 300 ms after it: per node, what moved
/// since its previous sample, and the acknowledgements clients saw in between.
fn print_timeline(samples: &[Sample], acked: &[Instant], started: Instant, stall_at: Duration, stall: Duration) {
    let (from, to) =
        (stall_at.saturating_sub(Duration::from_millis(300)), stall_at + stall + Duration::from_millis(300));
    println!(
        "       {:>8} {:>5} {:>8} {:>8} {:>6} {:>8} {:>6}",
        "at", "node", "cpu ms", "applied", "syncs", "appends", "acks"
    );
    let mut prev: std::collections::HashMap<u64, &Sample> = Default::default();
    for s in samples {
        if let Some(p) = prev.insert(s.node, s)
            && s.at >= from
            && s.at <= to
        {
            let acks = acked.iter().filter(|a| **a - started > p.at && **a - started <= s.at).count();
            println!(
                "       {:>8.1?} {:>5} {:>8} {:>8} {:>6} {:>8} {:>6}",
                s.at,
                s.node,
                s.cpu.saturating_sub(p.cpu).as_millis(),
                s.applied.saturating_sub(p.applied),
                s.syncs.saturating_sub(p.syncs),
                s.appends.saturating_sub(p.appends),
                acks
            );
        }
    }
}

/// Every node's metrics exposition, by node id.
async fn scrape_all(c: &Cluster) -> anyhow::Result<Vec<(u64, String)>> {
    let mut out = Vec::new();
    for id in c.ids() {
        let (status, text) = c.http_get(id, "/metrics").await?;
        anyhow::ensure!(status == 200, "node {id}'s /metrics answered {status}");
        out.push((id, text));
    }
    Ok(out)
}

/// A node's Raft disk and replication timing between two scrapes: AppendEntries it
/// answered (as a follower) and its log syncs, as bucket upper bounds.
fn raft_io_line(before: &str, after: &str) -> String {
    use drover_benches::histogram::Delta;
    let show = |q: Option<f64>| q.map_or("-".to_string(), |s| format!("<={:.1?}", Duration::from_secs_f64(s)));
    let mean = |m: Option<f64>| m.map_or("-".to_string(), |s| format!("{:.2?}", Duration::from_secs_f64(s)));
    let append = Delta::between(before, after, "drover_raft_append_entries_seconds");
    let sync = Delta::between(before, after, "drover_raft_log_sync_seconds");
    let apply = Delta::between(before, after, "drover_apply_seconds");
    format!(
        "AppendEntries answered {} (mean {} p50 {} p99 {}), abandoned by the leader {}; log syncs {} (mean {} p50 {} p99 {} max {}); \
         applies {} (mean {} p99 {} max {})",
        append.count(),
        mean(append.mean()),
        show(append.quantile(0.5)),
        show(append.quantile(0.99)),
        drover_benches::cluster::counter(after, "drover_raft_append_entries_abandoned_total")
            .saturating_sub(drover_benches::cluster::counter(before, "drover_raft_append_entries_abandoned_total")),
        sync.count(),
        mean(sync.mean()),
        show(sync.quantile(0.5)),
        show(sync.quantile(0.99)),
        show(sync.quantile(1.0)),
        apply.count(),
        mean(apply.mean()),
        show(apply.quantile(0.99)),
        show(apply.quantile(1.0)),
    )
}

/// p50/p99 of `n` sequential single-task queue calls.
async fn single_latency(addr: &str, n: usize) -> anyhow::Result<drover_benches::Percentiles> {
    let mut t = clients::tenant(addr, "bench")?;
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        t.queue_tasks(pv::QueueTasksRequest { tasks: new_tasks(1, 1024), idempotency_key: String::new() }).await?;
        lat.push(t0.elapsed());
    }
    drover_benches::percentiles(&mut lat).context("no samples")
}

fn rss_line(c: &Cluster, leader: u64) -> String {
    c.ids()
        .into_iter()
        .map(|id| {
            let mark = if id == leader { " (leader)" } else { "" };
            format!("node {id}{mark}: {:.0} MiB", c.rss_bytes(id).unwrap_or(0) as f64 / (1024.0 * 1024.0))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn backlog(
    bin: &std::path::Path,
    tasks: u64,
    payload_bytes: usize,
    n_clients: usize,
    extra_config: &str,
) -> anyhow::Result<()> {
    let (cluster, addr, _) = setup(bin, false, extra_config).await?;
    let leader = cluster.wait_leader(Duration::from_secs(30)).await?;
    const BATCH: usize = 1000;
    let before = single_latency(&addr, 500).await?;
    let rss_before: Vec<(u64, u64)> =
        cluster.ids().into_iter().map(|id| (id, cluster.rss_bytes(id).unwrap_or(0))).collect();
    println!("drover-bench backlog: {tasks} tasks of {payload_bytes} B in batches of {BATCH}, {n_clients} clients");
    println!(
        "before: rss {}; single enqueue p50 {:.1?} p99 {:.1?}",
        rss_line(&cluster, leader),
        before.p50,
        before.p99
    );
    let queued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..n_clients {
        let (addr, queued) = (addr.clone(), queued.clone());
        handles.push(tokio::spawn(async move {
            let mut t = clients::tenant(&addr, "bench")?;
            let req = pv::QueueTasksRequest { tasks: new_tasks(BATCH, payload_bytes), idempotency_key: String::new() };
            while queued.fetch_add(BATCH as u64, Ordering::SeqCst) < tasks {
                t.queue_tasks(req.clone()).await?;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let after = single_latency(&addr, 500).await?;
    println!("queued {tasks} in {secs:.1} s ({:.0} tasks/s)", tasks as f64 / secs);
    println!("after:  rss {}; single enqueue p50 {:.1?} p99 {:.1?}", rss_line(&cluster, leader), after.p50, after.p99);
    // Memory after load is partly allocator and page-cache retention; show it once idle too.
    tokio::time::sleep(Duration::from_secs(15)).await;
    println!("idle 15 s later: rss {}", rss_line(&cluster, leader));
    let per_task: Vec<String> = rss_before
        .iter()
        .map(|(id, was)| {
            let now = cluster.rss_bytes(*id).unwrap_or(0);
            format!("node {id}: {:.0} B", now.saturating_sub(*was) as f64 / tasks.max(1) as f64)
        })
        .collect();
    println!("memory per queued task (idle RSS growth / tasks): {}", per_task.join(", "));
    // A snapshot of the whole backlog on the leader (and the log purge behind it), with
    // single-task enqueues measured while it runs.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (addr, stop) = (addr.clone(), stop.clone());
        tokio::spawn(async move {
            let mut t = clients::tenant(&addr, "bench")?;
            let mut lat = Vec::new();
            while !stop.load(Ordering::SeqCst) && lat.len() < 100_000 {
                let t0 = Instant::now();
                t.queue_tasks(pv::QueueTasksRequest { tasks: new_tasks(1, 1024), idempotency_key: String::new() })
                    .await?;
                lat.push(t0.elapsed());
            }
            anyhow::Ok(lat)
        })
    };
    let t0 = Instant::now();
    let snap = clients::admin(&addr)?.snapshot(pa::SnapshotRequest {}).await?.into_inner();
    let took = t0.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut lat = prober.await??;
    let during = drover_benches::percentiles(&mut lat).context("no samples")?;
    println!(
        "snapshot at index {} (log purged to {}) in {:.1?}; {} single enqueues meanwhile: p50 {:.1?} p99 {:.1?} max {:.1?}",
        snap.snapshot_index,
        snap.purged_index,
        took,
        lat.len(),
        during.p50,
        during.p99,
        during.max
    );
    println!("after snapshot: rss {}", rss_line(&cluster, leader));
    // A fourth node joins as a learner and catches up from that snapshot.
    let mut cluster = cluster;
    let new = cluster.start_joining_node()?;
    let new_addr = cluster.addr(new).to_string();
    drover_chaos::eventually(Duration::from_secs(30), "node 4 to listen", || async { cluster.status(new).await.ok() })
        .await?;
    let t0 = Instant::now();
    // Returns once node 4 is a learner; it catches up in the background (the leader's
    // `raft status` shows how far), which on a large state outlasts any call deadline.
    clients::admin(&addr)?.add_learner(pa::AddLearnerRequest { node_id: new, addr: new_addr }).await?;
    println!("learner added in {:.1?}; catching up", t0.elapsed());
    let want = snap.snapshot_index;
    let reported = std::sync::Mutex::new(Instant::now());
    drover_chaos::eventually(Duration::from_secs(600), "node 4 to install the snapshot", || async {
        let due = {
            let mut last = reported.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.elapsed() >= Duration::from_secs(10);
            if due {
                *last = Instant::now();
            }
            due
        };
        if due
            && let Ok(s) = cluster.status(leader).await
            && let Some(p) = s.replication.iter().find(|p| p.node_id == new)
        {
            println!("  {:.0?}: node 4 matched index {} ({} behind)", t0.elapsed(), p.matched_index, p.behind);
        }
        let s = cluster.status(new).await.ok()?;
        (s.snapshot_index >= want && s.last_applied_index >= want).then_some(())
    })
    .await?;
    let mib = |b: Option<u64>| b.unwrap_or(0) as f64 / (1024.0 * 1024.0);
    println!(
        "learner caught up from the snapshot in {:.1?}: rss {:.0} MiB, peak {:.0} MiB",
        t0.elapsed(),
        mib(cluster.rss_bytes(new)),
        mib(cluster.peak_rss_bytes(new))
    );
    let (applied, views) = cluster.identical_replicas().await.context("after the learner's catch-up")?;
    println!("all {} replicas identical at applied index {applied}", views.len());
    Ok(())
}

async fn e2e(bin: &std::path::Path, runs: usize, image: &str) -> anyhow::Result<()> {
    let docker = bollard::Docker::connect_with_local_defaults()?.negotiate_version().await?;
    drover_runner_agent::executor::import::ensure_busybox_image(&docker, image).await?;
    let opts = ClusterOptions { nodes: 1, ..Default::default() };
    let cluster = Cluster::start(bin, opts).await?;
    let addr = cluster.addr(cluster.ids()[0]).to_string();
    clients::admin(&addr)?.upsert_tenant(pa::UpsertTenantRequest { id: "bench".into(), ..Default::default() }).await?;
    let mut t = clients::tenant(&addr, "bench")?;
    t.register_code(pv::RegisterCodeRequest {
        name: "noop".into(),
        image: image.into(),
        command: vec!["true".into()],
        ..Default::default()
    })
    .await?;
    let agent = cluster.start_agent("bench", drover_chaos::AgentOptions { slots: 1, ..Default::default() })?;
    // Warm-up: the agent's first task pays for connections and the image check.
    let mut fleet = Vec::with_capacity(runs);
    for i in 0..=runs {
        let t0 = Instant::now();
        let id = t
            .queue_tasks(pv::QueueTasksRequest {
                tasks: vec![pv::NewTask { code: "noop".into(), ..Default::default() }],
                idempotency_key: String::new(),
            })
            .await?
            .into_inner()
            .task_ids[0];
        loop {
            let task = t.get_task(pv::GetTaskRequest { id, include_payload: false }).await?.into_inner();
            if task.state == pv::TaskState::Complete as i32 {
                break;
            }
            if task.state > pv::TaskState::Complete as i32 {
                anyhow::bail!("task {id} ended {:?}\n{}", task, agent.log_tail(20));
            }
            if t0.elapsed() > Duration::from_secs(60) {
                anyhow::bail!("task {id} did not finish in 60 s\n{}", agent.log_tail(20));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if i > 0 {
            fleet.push(t0.elapsed());
        }
    }
    drop(agent);
    let mut plain = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        let st = tokio::process::Command::new("docker")
            .args(["run", "--rm", "--network", "none", image, "true"])
            .status()
            .await?;
        anyhow::ensure!(st.success(), "docker run failed: {st}");
        plain.push(t0.elapsed());
    }
    let f = drover_benches::percentiles(&mut fleet).context("no samples")?;
    let p = drover_benches::percentiles(&mut plain).context("no samples")?;
    println!("drover-bench e2e: {runs} sequential no-op tasks, 1 node, 1 agent (1 slot), image {image}");
    println!("{:<34} {:>10} {:>10} {:>10}", "", "p50", "p99", "max");
    println!("{:<34} {:>10.1?} {:>10.1?} {:>10.1?}", "queue -> complete (drover)", f.p50, f.p99, f.max);
    println!("{:<34} {:>10.1?} {:>10.1?} {:>10.1?}", "docker run --rm (CLI)", p.p50, p.p99, p.max);
    println!(
        "ratio p50 {:.2}, p99 {:.2}",
        f.p50.as_secs_f64() / p.p50.as_secs_f64(),
        f.p99.as_secs_f64() / p.p99.as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (drover, batch, n_clients, duration, max_tasks, payload_bytes, via_follower, timeline) = match Cli::parse().cmd
    {
        Cmd::Backlog { drover, tasks, payload_bytes, clients, server_config } => {
            return backlog(&drover_bin(drover)?, tasks, payload_bytes, clients, &server_config).await;
        }
        Cmd::E2e { drover, runs, image } => return e2e(&drover_bin(drover)?, runs, &image).await,
        Cmd::Fleet {
            drover,
            agents,
            slots,
            run_time,
            duration,
            warmup,
            ramp,
            lease_ttl,
            rate,
            backlog,
            tenants,
            codes,
        } => {
            let bin = drover_bin(drover)?;
            let mut reports = Vec::new();
            for n in agents {
                let o = drover_benches::fleet::Options {
                    agents: n,
                    slots,
                    run_time,
                    duration,
                    warmup,
                    ramp_per_s: ramp,
                    lease_ttl,
                    rate,
                    tenants,
                    codes,
                    backlog,
                };
                reports.push(drover_benches::fleet::run(&bin, &o).await?);
                drover_benches::fleet::print(&reports, &o);
            }
            let errors: u64 = reports.iter().map(|r| r.errors).sum();
            anyhow::ensure!(errors == 0, "{errors} errors in the fleet runs");
            return Ok(());
        }
        Cmd::Reads { drover, in_flight, duration, tasks, connections, tls, list_limit } => {
            let o = drover_benches::reads::Options { in_flight, duration, tasks, connections, tls, list_limit };
            let errors = drover_benches::reads::run(&drover_bin(drover)?, &o).await?;
            anyhow::ensure!(errors == 0, "{errors} reads failed");
            return Ok(());
        }
        Cmd::Queue { drover, batch, clients, duration, max_tasks, payload_bytes, via_follower, timeline } => {
            (drover, batch, clients, duration, max_tasks, payload_bytes, via_follower, timeline)
        }
    };
    let bin = drover_bin(drover)?;
    let (cluster, addr, leader) = setup(&bin, via_follower, "").await?;
    println!(
        "drover-bench queue: 3 nodes on loopback, {n_clients} clients, {payload_bytes} B payloads, {duration:?} per run, via {}",
        if via_follower { "a follower" } else { "the leader" }
    );
    println!(
        "{:>6} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "batch", "tasks", "tasks/s", "p50", "p99", "max", "stall", "errors"
    );
    for b in batch {
        let before = scrape_all(&cluster).await?;
        let cpu_before = CpuMark::now(&cluster);
        let queued = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let until = started + duration;
        let mut handles = Vec::new();
        for _ in 0..n_clients {
            let (addr, queued, errors) = (addr.clone(), queued.clone(), errors.clone());
            handles.push(tokio::spawn(async move {
                let mut t = clients::tenant(&addr, "bench")?;
                let mut lat = Vec::new();
                let mut acked = Vec::new();
                let req = pv::QueueTasksRequest {
                    tasks: (0..b)
                        .map(|_| pv::NewTask {
                            code: "noop".into(),
                            payload: vec![b'x'; payload_bytes],
                            ..Default::default()
                        })
                        .collect(),
                    idempotency_key: String::new(),
                };
                while Instant::now() < until && queued.load(Ordering::Relaxed) < max_tasks {
                    let t0 = Instant::now();
                    match t.queue_tasks(req.clone()).await {
                        Ok(_) => {
                            lat.push(t0.elapsed());
                            acked.push(Instant::now());
                            queued.fetch_add(b as u64, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                anyhow::Ok((lat, acked))
            }));
        }
        let samples = if timeline { sample_until(&cluster, started, until).await } else { Vec::new() };
        let (mut lat, mut acked) = (Vec::new(), Vec::new());
        for h in handles {
            let (l, a) = h.await??;
            lat.extend(l);
            acked.extend(a);
        }
        // A write stall: the longest time, after the first acknowledgement (before it the
        // clients connect and the first calls queue), in which no call was acknowledged.
        acked.sort();
        let (stall, stall_at) = acked.windows(2).map(|w| (w[1] - w[0], w[0] - started)).max().unwrap_or_default();
        let secs = started.elapsed().as_secs_f64();
        let n = queued.load(Ordering::Relaxed);
        let cpu_line = cpu_before.line_since(&CpuMark::now(&cluster), leader, n);
        let p = drover_benches::percentiles(&mut lat).context("no call succeeded")?;
        println!(
            "{:>6} {:>12} {:>12.0} {:>10.1?} {:>10.1?} {:>10.1?} {:>10.1?} {:>8}",
            b,
            n,
            n as f64 / secs,
            p.p50,
            p.p99,
            p.max,
            stall,
            errors.load(Ordering::Relaxed)
        );
        let after = scrape_all(&cluster).await?;
        println!("       {cpu_line}");
        println!("       longest stall began {stall_at:.1?} into the run");
        if timeline {
            print_timeline(&samples, &acked, started, stall_at, stall);
        }
        for ((id, was), (_, now)) in before.iter().zip(&after) {
            println!("       node {id}: {}", raft_io_line(was, now));
        }
    }
    drop(cluster);
    Ok(())
}
