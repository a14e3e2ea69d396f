//! Linearizable reads under concurrency, on three real `drover server` processes: reads
//! share read-index rounds (`control-plane/src/raft/read_rounds.rs`), and a shared round
//! must never answer a read that arrived after it started.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use drover_chaos::{ClusterOptions, clients};
use drover_proto::v1 as pv;

/// One writer queues tasks one at a time through the leader and publishes each id once
/// its call is acknowledged; 96 readers spread over all three nodes keep reading the
/// latest published id. Every read must find its task: a read that began after the write
/// was acknowledged and did not see it would be a stale read. The nodes' read-index
/// round counters show the rounds were shared (far fewer rounds than reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_on_every_node_see_every_write_acknowledged_before_they_began() {
    let c = cluster(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    setup_tenant(&c, leader).await;

    let latest = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(6);
    let writer = {
        let (addr, latest) = (c.addr(leader).to_string(), latest.clone());
        tokio::spawn(async move {
            let mut t = clients::tenant(&addr, "acme").expect("client");
            let mut writes = 0u64;
            while Instant::now() < stop_at && writes < 20_000 {
                let r = t.queue_tasks(batch(1, 16, "")).await.expect("queue");
                latest.store(r.into_inner().task_ids[0], Ordering::SeqCst);
                writes += 1;
            }
            writes
        })
    };
    let mut readers = Vec::new();
    for i in 0..96 {
        let node = c.ids()[i % 3];
        let (addr, latest) = (c.addr(node).to_string(), latest.clone());
        readers.push(tokio::spawn(async move {
            let mut t = clients::tenant(&addr, "acme").expect("client");
            let mut reads = 0u64;
            while Instant::now() < stop_at && reads < 100_000 {
                let id = latest.load(Ordering::SeqCst);
                if id == 0 {
                    tokio::task::yield_now().await;
                    continue;
                }
                match t.get_task(pv::GetTaskRequest { id, include_payload: false }).await {
                    Ok(task) => assert_eq!(task.into_inner().id, id),
                    Err(s) => panic!("read of task {id} (acknowledged before the read began) on node {node}: {s:?}"),
                }
                reads += 1;
            }
            reads
        }));
    }
    let writes = writer.await.expect("writer");
    let mut reads = 0;
    for r in readers {
        reads += r.await.expect("reader");
    }
    assert!(writes > 50 && reads > 1_000, "too little load to mean anything: {writes} writes, {reads} reads");
    let mut rounds = 0;
    for id in c.ids() {
        let (_, text) = c.http_get(id, "/metrics").await.expect("metrics");
        for side in ["leader", "follower"] {
            let series = format!("drover_raft_read_index_rounds_total{{side=\"{side}\"}}");
            rounds += drover_chaos::exposition::value(&text, &series).expect("read-index round counter") as u64;
        }
    }
    assert!(rounds > 0, "no read-index round counted");
    assert!(rounds * 2 < reads, "{rounds} rounds for {reads} reads: reads did not share rounds");
}
