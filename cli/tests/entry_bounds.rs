//! A leader under a load of maximum-size log appends and maximum-label lease calls keeps
//! serving, on the default Raft timing (100 ms heartbeats, which openraft also uses as
//! the time allowed for each AppendEntries call): the batcher packs the appends into
//! entries no larger than `MAX_ENTRY_BYTES`, tenant calls keep being answered, the
//! leader keeps its place, and every replica ends identical. Requests over a limit are
//! refused with a status naming it, and change nothing.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{assert_replicas_identical, cluster, setup_tenant};
use drover_chaos::{ClusterOptions, clients};
use drover_proto::agent as pg;
use drover_proto::v1 as pv;

/// The largest chunk the control plane takes, and as many as fit one append call.
const CHUNK: usize = 256 * 1024;
const CHUNKS_PER_CALL: usize = 4;
const CALLERS: usize = 6;
const CALLS_EACH: usize = 6;
/// Lease calls carrying the largest label map an agent may send.
const LEASERS: usize = 2;
/// A tenant read slower than this during the load fails the test. Commits of 1 MiB
/// entries take a few hundred milliseconds in a debug build on 2 cores; before entries
/// were bounded, reads failed outright ("not enough for a quorum").
const READ_BOUND: Duration = Duration::from_secs(3);

fn max_labels() -> HashMap<String, String> {
    // 32 labels of 63-byte keys and 64-byte values: 4064 bytes, under the 4096 total.
    (0..32).map(|i| (format!("{i:02}{}", "k".repeat(61)), "v".repeat(64))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn maximum_size_appends_keep_the_leader_serving() {
    let c = cluster(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    setup_tenant(&c, leader).await;
    let mut t = clients::tenant(c.addr(leader), "acme").expect("tenant client");
    let queued = t.queue_tasks(common::batch(CALLERS, 8, "appends")).await.expect("queue").into_inner().task_ids;
    let term_before = c.status(leader).await.expect("leader status").term;

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

    // Over the per-call limit: refused, naming it, before anything is proposed.
    let (task_id, lease_epoch) = leases[0];
    let over = (0..CHUNKS_PER_CALL + 1)
        .map(|i| pg::LogChunk {
            lease: Some(pg::LeaseRef { task_id, lease_epoch }),
            seq: i as u64,
            stream: pg::LogStream::Stdout as i32,
            data: vec![b'x'; CHUNK],
        })
        .collect();
    let err = a
        .append_logs(pg::AppendLogsRequest { agent_id: "big-appender".into(), chunks: over })
        .await
        .expect_err("an append over 1 MiB is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("chunks") && err.message().contains("1048576"), "names the limit: {err:?}");
    let over_batch = common::batch(2, 600 * 1024, "over-batch");
    let err = t.queue_tasks(over_batch).await.expect_err("a queue call over 1 MiB of payloads is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("1048576"), "names the limit: {err:?}");

    let mut load: Vec<tokio::task::JoinHandle<Duration>> = leases
        .into_iter()
        .map(|(task_id, lease_epoch)| {
            let addr = c.addr(leader).to_string();
            tokio::spawn(async move {
                let mut a = clients::agent(&addr, "big-appender").expect("agent client");
                let mut seq = 0u64;
                let mut slowest = Duration::ZERO;
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
                    let t0 = Instant::now();
                    a.append_logs(pg::AppendLogsRequest { agent_id: "big-appender".into(), chunks })
                        .await
                        .expect("a maximum-size append is answered");
                    slowest = slowest.max(t0.elapsed());
                }
                slowest
            })
        })
        .collect();
    for n in 0..LEASERS {
        let addr = c.addr(leader).to_string();
        load.push(tokio::spawn(async move {
            let id = format!("labelled-{n}");
            let mut a = clients::agent(&addr, &id).expect("agent client");
            let mut slowest = Duration::ZERO;
            for _ in 0..20 {
                let t0 = Instant::now();
                a.lease(pg::LeaseRequest {
                    agent_id: id.clone(),
                    attributes: Some(pg::AgentAttributes { labels: max_labels(), ..Default::default() }),
                    slots: 1,
                    max_tasks: 1,
                    wait_ms: 0,
                })
                .await
                .expect("a maximum-label lease call is answered");
                slowest = slowest.max(t0.elapsed());
            }
            slowest
        }));
    }

    // Meanwhile a tenant keeps reading; every read is answered, none slowly.
    let mut slowest_read = Duration::ZERO;
    let mut reads = 0;
    while load.iter().any(|h| !h.is_finished()) {
        let t0 = Instant::now();
        t.get_task(pv::GetTaskRequest { id: queued[0], include_payload: false }).await.expect("tenant read");
        slowest_read = slowest_read.max(t0.elapsed());
        reads += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut slowest_call = Duration::ZERO;
    for h in load {
        slowest_call = slowest_call.max(h.await.expect("load caller"));
    }
    eprintln!("{reads} reads, slowest {slowest_read:?}; slowest append or lease call {slowest_call:?}");
    assert!(reads > 0);
    assert!(slowest_read < READ_BOUND, "a tenant read took {slowest_read:?} during the appends");

    // No node stopped on a storage error, the leader kept its place, replicas agree.
    for id in c.ids() {
        c.status(id).await.unwrap_or_else(|e| panic!("node {id} stopped answering: {e}\n{}", c.log_tail(id, 20)));
    }
    let s = c.status(leader).await.expect("leader status");
    assert_eq!(s.state, "Leader", "the leader under load lost its place: {s:?}");
    assert_eq!(s.term, term_before, "an election happened under the load");
    for id in c.ids() {
        assert!(!c.log(id).contains("panicked"), "node {id}:\n{}", c.log_tail(id, 20));
    }
    assert_replicas_identical(&c, queued.len() as u64).await;
}
