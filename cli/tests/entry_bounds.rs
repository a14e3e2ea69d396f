//! A leader under a load of maximum-size log appends keeps serving: the batcher packs
//! them into entries no larger than storage takes (over the limit the node would stop
//! with a storage error), tenant calls keep being answered, and every replica ends
//! identical.

mod common;

use std::time::{Duration, Instant};

use common::{assert_replicas_identical, cluster, setup_tenant};
use drover_chaos::{ClusterOptions, clients};
use drover_proto::agent as pg;
use drover_proto::v1 as pv;

/// Chunks of the largest size, as many as fit one API message (16 MiB) with room for
/// the framing.
const CHUNK: usize = 256 * 1024;
const CHUNKS_PER_CALL: usize = 60;
const CALLERS: usize = 6;
const CALLS_EACH: usize = 2;

// Fails today (debug build, 2 cores): the appends are answered Unavailable "not
// committed within 5000 ms", and in one run of two a concurrent tenant read failed.
// Issue 12 keeps it open; run it with `-- --ignored`.
#[ignore = "known failure under maximum-size appends; see issue 12"]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn maximum_size_appends_keep_the_leader_serving() {
    let c = cluster(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    setup_tenant(&c, leader).await;
    let mut t = clients::tenant(c.addr(leader), "acme").expect("tenant client");
    let queued = t.queue_tasks(common::batch(CALLERS, 8, "appends")).await.expect("queue").into_inner().task_ids;

    // One agent leases every task; each caller appends to its own lease.
    let mut a = clients::agent(c.addr(leader), "big-appender").expect("agent client");
    let mut leases = Vec::new();
    while leases.len() < queued.len() {
        let r = a
            .lease(pg::LeaseRequest {
                agent_id: "big-appender".into(),
                slots: 16,
                max_tasks: 16,
                wait_ms: 1_000,
                ..Default::default()
            })
            .await
            .expect("lease")
            .into_inner();
        leases.extend(r.tasks.iter().map(|g| (g.task_id, g.lease_epoch)));
    }

    let callers: Vec<_> = leases
        .into_iter()
        .map(|(task_id, lease_epoch)| {
            let addr = c.addr(leader).to_string();
            tokio::spawn(async move {
                let mut a = clients::agent(&addr, "big-appender").expect("agent client");
                let mut seq = 0u64;
                for _ in 0..CALLS_EACH {
                    let chunks = (0..CHUNKS_PER_CALL)
                        .map(|i| {
                            seq += 1;
                            pg::LogChunk {
                                lease: Some(pg::LeaseRef { task_id, lease_epoch }),
                                seq,
                                stream: pg::LogStream::Stdout as i32,
                                data: vec![b'a' + (i % 26) as u8; CHUNK],
                            }
                        })
                        .collect();
                    a.append_logs(pg::AppendLogsRequest { agent_id: "big-appender".into(), chunks })
                        .await
                        .expect("a maximum-size append is answered");
                }
            })
        })
        .collect();

    // Meanwhile a tenant keeps reading; every read is answered, none slowly.
    let mut slowest = Duration::ZERO;
    let mut reads = 0;
    while callers.iter().any(|h| !h.is_finished()) {
        let t0 = Instant::now();
        t.get_task(pv::GetTaskRequest { id: queued[0], include_payload: false }).await.expect("tenant read");
        slowest = slowest.max(t0.elapsed());
        reads += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for h in callers {
        h.await.expect("caller");
    }
    assert!(reads > 0);
    assert!(slowest < Duration::from_secs(5), "a tenant read took {slowest:?} during the appends");

    // No node stopped on a storage error, the leader kept its place, replicas agree.
    for id in c.ids() {
        c.status(id).await.unwrap_or_else(|e| panic!("node {id} stopped answering: {e}\n{}", c.log_tail(id, 20)));
    }
    let s = c.status(leader).await.expect("leader status");
    assert_eq!(s.state, "Leader", "the leader under load lost its place: {s:?}");
    for id in c.ids() {
        assert!(!c.log(id).contains("panicked"), "node {id}:\n{}", c.log_tail(id, 20));
    }
    assert_replicas_identical(&c, queued.len() as u64).await;
}
