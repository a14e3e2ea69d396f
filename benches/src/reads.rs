//! `drover-bench reads`: linearizable read throughput on a 3-node cluster.
//!
//! Queues a set of tasks, then for each entry point (the leader, a follower), each read
//! (`GetTask` of a random task, `ListTasks` of one page after a random id) and each
//! concurrency, keeps that many calls in flight over a fixed number of connections for a
//! bounded time. It reports calls/s, latency, errors (with the first error's text), and
//! the read-index rounds the nodes ran meanwhile (from their `/metrics`), so reads per
//! round is visible: every read on either node needs a leadership confirmation, and
//! concurrent reads share one (`control-plane/src/raft/read_rounds.rs`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use drover_proto::v1 as pv;

use crate::cluster::{self, BenchCluster, TENANT};

pub struct Options {
    pub in_flight: Vec<usize>,
    pub duration: Duration,
    /// Tasks queued before the reads start (the ids reads pick from).
    pub tasks: u64,
    /// Client connections the in-flight calls are spread over.
    pub connections: usize,
    pub tls: bool,
    /// Page size of `ListTasks`.
    pub list_limit: u32,
}

#[derive(Clone, Copy, PartialEq)]
enum Read {
    Get,
    List,
}

pub struct Row {
    pub calls: u64,
    pub per_s: f64,
    pub p: Option<crate::Percentiles>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub leader_rounds: u64,
    pub follower_rounds: u64,
}

pub async fn run(bin: &Path, o: &Options) -> anyhow::Result<u64> {
    let b = cluster::start(bin, o.tls, "").await?;
    let ids = preload(&b, o.tasks).await?;
    let follower = b.cluster.follower().await?;
    println!(
        "drover-bench reads: 3 nodes on loopback ({}), {} tasks, {} connections, {:?} per run",
        if o.tls { "mutual TLS" } else { "development identities" },
        ids.len(),
        o.connections,
        o.duration
    );
    println!(
        "{:<9} {:<9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>7} {:>13}",
        "read", "via", "in flight", "calls", "calls/s", "p50", "p99", "max", "errors", "reads/round"
    );
    let mut total_errors = 0;
    for (via, node) in [("leader", b.leader), ("follower", follower)] {
        for read in [Read::Get, Read::List] {
            for &n in &o.in_flight {
                let row = load(&b, node, read, n, &ids, o).await?;
                total_errors += row.errors;
                let rounds = if node == b.leader { row.leader_rounds } else { row.follower_rounds };
                let fmt = |d: Option<Duration>| d.map(|d| format!("{d:.1?}")).unwrap_or_else(|| "-".into());
                println!(
                    "{:<9} {:<9} {:>9} {:>9} {:>10.0} {:>9} {:>9} {:>9} {:>7} {:>13.1}",
                    if read == Read::Get { "GetTask" } else { "ListTasks" },
                    via,
                    n,
                    row.calls,
                    row.per_s,
                    fmt(row.p.map(|p| p.p50)),
                    fmt(row.p.map(|p| p.p99)),
                    fmt(row.p.map(|p| p.max)),
                    row.errors,
                    row.calls as f64 / rounds.max(1) as f64,
                );
                if let Some(e) = row.first_error {
                    println!("          first error: {e}");
                }
            }
        }
    }
    Ok(total_errors)
}

/// Queues `n` tasks through the leader in batches; returns their ids.
async fn preload(b: &BenchCluster, n: u64) -> anyhow::Result<Vec<u64>> {
    let mut t = b.cluster.tenant(b.leader, TENANT)?;
    let mut ids = Vec::with_capacity(n as usize);
    while (ids.len() as u64) < n {
        let batch = (n - ids.len() as u64).min(1000) as usize;
        let r = t
            .queue_tasks(pv::QueueTasksRequest { tasks: cluster::new_tasks(batch, 64), idempotency_key: String::new() })
            .await?;
        ids.extend(r.into_inner().task_ids);
    }
    Ok(ids)
}

async fn rounds(b: &BenchCluster, node: u64, side: &str) -> anyhow::Result<u64> {
    let (_, text) = b.cluster.http_get(node, "/metrics").await?;
    Ok(cluster::counter(&text, &format!("drover_raft_read_index_rounds_total{{side=\"{side}\"}}")))
}

async fn load(b: &BenchCluster, node: u64, read: Read, n: usize, ids: &[u64], o: &Options) -> anyhow::Result<Row> {
    let clients: Vec<_> =
        (0..o.connections.max(1)).map(|_| b.cluster.tenant(node, TENANT)).collect::<anyhow::Result<_>>()?;
    let leader_before = rounds(b, b.leader, "leader").await?;
    let follower_before = rounds(b, node, "follower").await?;
    let ids: Arc<[u64]> = ids.into();
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let started = Instant::now();
    let until = started + o.duration;
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let mut t = clients[i % clients.len()].clone();
        let (ids, errors, first_error) = (ids.clone(), errors.clone(), first_error.clone());
        let limit = o.list_limit;
        handles.push(tokio::spawn(async move {
            // xorshift: a different, repeatable id sequence per caller.
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
            let mut lat = Vec::new();
            while Instant::now() < until && lat.len() < 1_000_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let id = ids[(x % ids.len() as u64) as usize];
                let t0 = Instant::now();
                let r = match read {
                    Read::Get => t.get_task(pv::GetTaskRequest { id, include_payload: false }).await.map(|_| ()),
                    Read::List => t
                        .list_tasks(pv::ListTasksRequest { after_id: id, limit, ..Default::default() })
                        .await
                        .map(|_| ()),
                };
                match r {
                    Ok(()) => lat.push(t0.elapsed()),
                    Err(status) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        first.get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
                    }
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await.context("reader")?);
    }
    let secs = started.elapsed().as_secs_f64();
    let leader_rounds = rounds(b, b.leader, "leader").await?.saturating_sub(leader_before);
    let follower_rounds = rounds(b, node, "follower").await?.saturating_sub(follower_before);
    let calls = lat.len() as u64;
    let first_error = first_error.lock().unwrap_or_else(|p| p.into_inner()).take();
    Ok(Row {
        calls,
        per_s: calls as f64 / secs,
        p: crate::percentiles(&mut lat),
        errors: errors.load(Ordering::Relaxed),
        first_error,
        leader_rounds,
        follower_rounds,
    })
}
