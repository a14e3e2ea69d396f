//! Durability of acknowledged writes across leader kills and whole-cluster crashes, on
//! three real `drover server` processes.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use drover_chaos::{ClusterOptions, clients};
use drover_proto::v1 as pv;
use tokio::sync::Mutex;

/// A batch number and the task ids its acknowledged call returned.
type AckedBatch = (usize, Vec<u64>);

/// 10,000 tasks in batches of 100 through a follower by four concurrent clients, with the
/// leader killed (-9) midway and restarted: every acknowledged task exists exactly once on
/// all three nodes and nothing else does; batches whose calls failed were retried with
/// their idempotency key and exist exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_through_follower_survives_leader_kill() {
    let mut c = cluster(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    let via = c.follower().await.expect("follower");
    setup_tenant(&c, via).await;

    const BATCHES: usize = 100;
    const PER_BATCH: usize = 100;
    let acked: Arc<Mutex<Vec<AckedBatch>>> = Arc::default();
    let failed_calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let half_done = Arc::new(tokio::sync::Notify::new());
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (acked, failed_calls, next, half_done) =
            (acked.clone(), failed_calls.clone(), next.clone(), half_done.clone());
        let addr = c.addr(via).to_string();
        workers.push(tokio::spawn(async move {
            let mut t = clients::tenant(&addr, "acme").expect("client");
            loop {
                let b = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if b >= BATCHES {
                    return;
                }
                if b == BATCHES / 2 {
                    half_done.notify_one();
                }
                let key = format!("batch-{b}");
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    match t.queue_tasks(batch(PER_BATCH, 64, &key)).await {
                        Ok(r) => {
                            acked.lock().await.push((b, r.into_inner().task_ids));
                            break;
                        }
                        Err(s) => {
                            assert!(Instant::now() < deadline, "batch {b} never succeeded: {s:?}");
                            failed_calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        }));
    }
    half_done.notified().await;
    c.kill(leader).expect("kill leader");
    for w in workers {
        w.await.expect("worker");
    }
    c.restart(leader).expect("restart old leader");

    let acked = acked.lock().await;
    assert_eq!(acked.len(), BATCHES, "every batch acknowledged once");
    let mut all = BTreeSet::new();
    for (b, ids) in acked.iter() {
        assert_eq!(ids.len(), PER_BATCH, "batch {b}");
        for id in ids {
            assert!(all.insert(*id), "task id {id} acknowledged twice");
        }
    }
    assert!(failed_calls.load(std::sync::atomic::Ordering::SeqCst) > 0, "the kill should have failed some calls");

    let listed: Vec<u64> = all_task_ids(&c, via).await;
    let listed_set: BTreeSet<u64> = listed.iter().copied().collect();
    assert_eq!(listed.len(), listed_set.len(), "a task is listed twice");
    assert_eq!(listed_set, all, "the cluster holds exactly the acknowledged tasks");
    assert_replicas_identical(&c, (BATCHES * PER_BATCH) as u64).await;
}

/// kill -9 of all three nodes right after a burst of acknowledged queue calls: after a
/// restart every acknowledged task is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_cluster_crash_keeps_acknowledged_tasks() {
    let mut c = cluster(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    setup_tenant(&c, leader).await;
    let mut handles = Vec::new();
    for w in 0..8 {
        let addr = c.addr(leader).to_string();
        handles.push(tokio::spawn(async move {
            let mut t = clients::tenant(&addr, "acme").expect("client");
            let mut ids = Vec::new();
            for b in 0..10 {
                let r = t.queue_tasks(batch(20, 256, &format!("w{w}-b{b}"))).await.expect("queue");
                ids.extend(r.into_inner().task_ids);
            }
            ids
        }));
    }
    let mut acked = BTreeSet::new();
    for h in handles {
        acked.extend(h.await.expect("worker"));
    }
    for id in c.ids() {
        c.kill(id).expect("kill");
    }
    for id in c.ids() {
        c.restart(id).expect("restart");
    }
    c.wait_leader(Duration::from_secs(30)).await.expect("leader after restart");
    let listed: BTreeSet<u64> = all_task_ids(&c, 1).await.into_iter().collect();
    assert_eq!(acked.len(), 8 * 10 * 20);
    assert_eq!(listed, acked, "every acknowledged task survives a whole-cluster kill -9");
    assert_replicas_identical(&c, acked.len() as u64).await;
}

/// A follower that was down while large entries (batches of big payloads) were committed
/// catches up after its restart: the leader splits AppendEntries past 1 MiB (openraft
/// resends fewer entries on `PayloadTooLarge`), and every replica ends identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_catches_up_through_large_entries() {
    let mut c = cluster(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    setup_tenant(&c, leader).await;
    let down = c.follower().await.expect("follower");
    c.kill(down).expect("kill follower");
    let mut t = clients::tenant(c.addr(leader), "acme").expect("client");
    let mut acked = BTreeSet::new();
    // 12 entries of about 800 KiB each (near the 1 MiB per-call payload limit): any two
    // together are over the split threshold.
    for b in 0..12 {
        let r = t.queue_tasks(batch(4, 200 * 1024, &format!("big-{b}"))).await.expect("queue with one node down");
        acked.extend(r.into_inner().task_ids);
    }
    c.restart(down).expect("restart follower");
    assert_replicas_identical(&c, acked.len() as u64).await;
    let listed: BTreeSet<u64> = all_task_ids(&c, down).await.into_iter().collect();
    assert_eq!(listed, acked, "the restarted follower holds every task");
    let (_, metrics) = c.http_get(leader, "/metrics").await.expect("leader metrics");
    let splits = drover_chaos::exposition::value(&metrics, "drover_raft_append_splits_total")
        .unwrap_or_else(|| panic!("no split counter in:\n{metrics}"));
    assert!(splits > 0.0, "catching up through 800 KiB entries split at least one AppendEntries");
}

/// With two of three nodes gone, a queue call fails fast with Unavailable instead of
/// hanging or being acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_quorum_fails_fast() {
    let mut c = cluster(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    setup_tenant(&c, leader).await;
    let others: Vec<u64> = c.ids().into_iter().filter(|i| *i != leader).collect();
    for id in &others {
        c.kill(*id).expect("kill");
    }
    let mut t = clients::tenant(c.addr(leader), "acme").expect("client");
    let started = Instant::now();
    let err = t.queue_tasks(batch(5, 8, "lost-quorum")).await.expect_err("must not be acknowledged");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

/// The Raft log on a directory of its own (`raft_log_dir`): acknowledged tasks survive a
/// kill -9 and a restart; started with its log directory gone (a new disk, a changed
/// setting) the node refuses, naming the directory, instead of starting with an empty
/// log that has forgotten its vote; with the files moved back it starts with every task.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_raft_log_on_a_directory_of_its_own() {
    let logs = tempfile::tempdir().expect("temp dir");
    let log_dir = logs.path().join("log");
    let opts = ClusterOptions {
        nodes: 1,
        extra_config: format!("raft_log_dir = {:?}\n", log_dir.display().to_string()),
        ..Default::default()
    };
    let mut c = cluster(opts).await;
    let id = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    setup_tenant(&c, id).await;
    let mut t = clients::tenant(c.addr(id), "acme").expect("client");
    let mut acked = BTreeSet::new();
    for b in 0..5 {
        acked.extend(t.queue_tasks(batch(10, 512, &format!("b{b}"))).await.expect("queue").into_inner().task_ids);
    }
    let segs = |dir: &std::path::Path| -> usize {
        fn walk(d: &std::path::Path, n: &mut usize) {
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, n);
                } else if p.extension().is_some_and(|x| x == "seg") {
                    *n += 1;
                }
            }
        }
        let mut n = 0;
        walk(dir, &mut n);
        n
    };
    assert!(segs(&log_dir) > 0 && log_dir.join("owner").exists(), "the log is in raft_log_dir");
    assert_eq!(segs(c.dir()), 0, "no log segment under the data directories");

    c.kill(id).expect("kill");
    c.restart(id).expect("restart");
    c.wait_leader(Duration::from_secs(30)).await.expect("leader after restart");
    assert_eq!(all_task_ids(&c, id).await.into_iter().collect::<BTreeSet<_>>(), acked);

    c.kill(id).expect("kill");
    let aside = logs.path().join("aside");
    std::fs::rename(&log_dir, &aside).expect("move the log away");
    c.restart(id).expect("restart without its log");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = c.exit_status(id).expect("status") {
            break s;
        }
        assert!(Instant::now() < deadline, "the node started with an empty log:\n{}", c.log_tail(id, 20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "{status}");
    let log = c.log_tail(id, 20);
    assert!(log.contains("holds no vote and no log entries") && log.contains(&log_dir.display().to_string()), "{log}");
    assert_eq!(log.matches("holds no vote").count(), 1, "said once: {log}");
    assert!(!log_dir.exists(), "a refusal creates nothing");

    std::fs::rename(&aside, &log_dir).expect("move the log back");
    c.restart(id).expect("restart with its log");
    c.wait_leader(Duration::from_secs(30)).await.expect("leader with the log back");
    assert_eq!(all_task_ids(&c, id).await.into_iter().collect::<BTreeSet<_>>(), acked);
}

/// Single-task calls from many clients at once, as webhooks and CLIs send them: the
/// proposal batcher puts many in one entry and their tasks share groups across calls.
/// Every task reads back with its own payload through a follower, the replicas hold the
/// same tables, and after a whole-cluster kill -9 (the load path rebuilds the indexes from
/// those groups) every payload reads back again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_single_task_calls_read_back_after_sharing_groups() {
    let mut c = cluster(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    setup_tenant(&c, leader).await;
    let payload = |client: usize, n: usize| format!("client {client} task {n} ").repeat(40).into_bytes();
    let mut handles = Vec::new();
    for client in 0..16 {
        let addr = c.addr(leader).to_string();
        handles.push(tokio::spawn(async move {
            let mut t = clients::tenant(&addr, "acme").expect("client");
            let mut ids = Vec::new();
            for n in 0..25 {
                let task = pv::NewTask { code: "echo".into(), payload: payload(client, n), ..Default::default() };
                let r = t
                    .queue_tasks(pv::QueueTasksRequest { tasks: vec![task], idempotency_key: String::new() })
                    .await
                    .expect("queue");
                ids.push((r.into_inner().task_ids[0], payload(client, n)));
            }
            ids
        }));
    }
    let mut acked = Vec::new();
    for h in handles {
        acked.extend(h.await.expect("client"));
    }
    let (_, metrics) = c.http_get(leader, "/metrics").await.expect("metrics");
    let value = |s: &str| drover_chaos::exposition::value(&metrics, s).unwrap_or(0.0);
    let (commands, entries) = (value("drover_raft_applied_commands_total"), value("drover_raft_applied_entries_total"));
    assert!(commands > entries, "calls shared entries: {commands} commands in {entries} entries");
    let read_all = |addr: String| {
        let acked = acked.clone();
        async move {
            let mut t = clients::tenant(&addr, "acme").expect("client");
            for (id, want) in acked {
                let got = t.get_task(pv::GetTaskRequest { id, include_payload: true }).await.expect("get").into_inner();
                assert_eq!((got.id, got.payload), (id, want), "task {id} through {addr}");
            }
        }
    };
    read_all(c.addr(c.follower().await.expect("follower")).to_string()).await;
    assert_replicas_identical(&c, acked.len() as u64).await;
    for id in c.ids() {
        c.kill(id).expect("kill");
    }
    for id in c.ids() {
        c.restart(id).expect("restart");
    }
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader after restart");
    read_all(c.addr(leader).to_string()).await;
}
