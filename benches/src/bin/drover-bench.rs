//! `drover-bench`: end-to-end load against a real 3-node loopback cluster.
//!
//! `drover-bench queue` measures replicated enqueue throughput and latency: it starts
//! three `drover server` processes (the `drover` binary next to this one, or `--drover`),
//! then for each batch size runs many concurrent clients, each queuing batches of 1 KiB
//! payloads in a closed loop, for a bounded time and count. It prints tasks/s and p50/p99
//! call latency.

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
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cmd::Queue { drover, batch, clients: n_clients, duration, max_tasks, payload_bytes, via_follower } =
        Cli::parse().cmd;
    let bin = match drover {
        Some(p) => p,
        None => std::env::current_exe()?.parent().context("exe dir")?.join("drover"),
    };
    let cluster = Cluster::start(&bin, ClusterOptions::default()).await?;
    let leader = cluster.wait_leader(Duration::from_secs(30)).await?;
    let target = if via_follower { cluster.follower().await? } else { leader };
    let addr = cluster.addr(target).to_string();
    let mut admin = clients::admin(&addr)?;
    admin
        .upsert_tenant(pa::UpsertTenantRequest {
            id: "bench".into(),
            limits: Some(pa::TenantLimits { max_queued_tasks: 100_000_000, ..Default::default() }),
        })
        .await?;
    clients::tenant(&addr, "bench")?
        .register_code(pv::RegisterCodeRequest {
            name: "noop".into(),
            image: "drover-test/busybox:1".into(),
            ..Default::default()
        })
        .await?;
    println!(
        "drover-bench queue: 3 nodes on loopback, {n_clients} clients, {payload_bytes} B payloads, {duration:?} per run, via {}",
        if via_follower { "a follower" } else { "the leader" }
    );
    println!(
        "{:>6} {:>12} {:>12} {:>10} {:>10} {:>10} {:>8}",
        "batch", "tasks", "tasks/s", "p50", "p99", "max", "errors"
    );
    for b in batch {
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
                            queued.fetch_add(b as u64, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                anyhow::Ok(lat)
            }));
        }
        let mut lat = Vec::new();
        for h in handles {
            lat.extend(h.await??);
        }
        let secs = started.elapsed().as_secs_f64();
        let n = queued.load(Ordering::Relaxed);
        let p = drover_benches::percentiles(&mut lat).context("no call succeeded")?;
        println!(
            "{:>6} {:>12} {:>12.0} {:>10.1?} {:>10.1?} {:>10.1?} {:>8}",
            b,
            n,
            n as f64 / secs,
            p.p50,
            p.p99,
            p.max,
            errors.load(Ordering::Relaxed)
        );
    }
    drop(cluster);
    Ok(())
}
