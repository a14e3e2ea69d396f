//! Whole-cluster restarts, snapshots with log purge, and a fourth node that joins from a
//! snapshot and serves linearizable reads; input validation at the API edge.

mod common;

use std::time::Duration;

use common::*;
use drover_chaos::{ClusterOptions, clients, eventually};
use drover_proto::admin as pa;
use drover_proto::v1 as pv;

/// Stop all three nodes (SIGTERM) and start them again: identical state tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_all_keeps_identical_state() {
    let mut c = cluster(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    setup_tenant(&c, leader).await;
    let mut t = clients::tenant(c.addr(leader), "acme").expect("client");
    for b in 0..5 {
        t.queue_tasks(batch(50, 100, &format!("k{b}"))).await.expect("queue");
    }
    let before_applied = assert_replicas_identical(&c, 250).await;
    let before = c.inspect_all(before_applied).await.expect("inspect")[0].state_digest.clone();
    for id in c.ids() {
        c.stop(id).expect("clean stop");
    }
    for id in c.ids() {
        c.restart(id).expect("restart");
    }
    c.wait_leader(Duration::from_secs(30)).await.expect("leader after restart");
    for v in c.inspect_all(before_applied).await.expect("inspect") {
        assert_eq!(v.state_digest, before, "node {} changed across a restart", v.node_id);
        assert_eq!(v.task_count, 250);
    }
}

/// Force a snapshot and log purge, add a fourth node as a learner (it must catch up from
/// the snapshot, since the log behind it is gone), promote it, and read through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn learner_catches_up_from_snapshot_and_serves_reads() {
    let opts =
        ClusterOptions { extra_config: "[raft]\nkeep_entries_behind_snapshot = 0\n".into(), ..Default::default() };
    let mut c = cluster(opts).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    setup_tenant(&c, leader).await;
    let mut t = clients::tenant(c.addr(leader), "acme").expect("client");
    for b in 0..10 {
        t.queue_tasks(batch(100, 200, &format!("s{b}"))).await.expect("queue");
    }
    let mut admin = clients::admin(c.addr(leader)).expect("admin");
    let snap = admin.snapshot(pa::SnapshotRequest {}).await.expect("snapshot").into_inner();
    assert!(snap.snapshot_index > 0 && snap.purged_index >= snap.snapshot_index, "{snap:?}");
    let status = c.status(leader).await.expect("status");
    assert_eq!(status.purged_index, snap.purged_index);

    let new = c.start_joining_node().expect("start node 4");
    let new_addr = c.addr(new).to_string();
    eventually(Duration::from_secs(20), "node 4 to listen", || async { c.status(new).await.ok() })
        .await
        .expect("node 4 up");
    admin.add_learner(pa::AddLearnerRequest { node_id: new, addr: new_addr.clone() }).await.expect("add learner");
    let want = snap.snapshot_index;
    eventually(Duration::from_secs(20), "node 4 to install the snapshot", || async {
        let s = c.status(new).await.ok()?;
        (s.snapshot_index >= want && s.last_applied_index >= want).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; node 4 log:\n{}", c.log_tail(new, 30)));
    // The leader reports the learner's catch-up progress (add-learner no longer waits for it).
    eventually(Duration::from_secs(20), "the leader to see node 4 caught up", || async {
        let s = c.status(leader).await.ok()?;
        s.replication.iter().find(|p| p.node_id == new && p.matched_index >= want && p.behind < 100).map(|_| ())
    })
    .await
    .expect("replication progress of node 4");
    let m = admin.promote(pa::PromoteRequest { node_ids: vec![new] }).await.expect("promote").into_inner();
    assert!(m.nodes.iter().any(|n| n.id == new && n.voter), "{m:?}");

    // A write through node 1 is visible through node 4 at once (read-index).
    let id = t.queue_tasks(batch(1, 8, "after-join")).await.expect("queue").into_inner().task_ids[0];
    let mut t4 = clients::tenant(&new_addr, "acme").expect("client 4");
    let got =
        t4.get_task(pv::GetTaskRequest { id, include_payload: false }).await.expect("read via node 4").into_inner();
    assert_eq!(got.id, id);
    assert_eq!(all_task_ids(&c, new).await.len(), 1001);
    assert_replicas_identical(&c, 1001).await;
}

/// Bad input is refused with InvalidArgument naming the field, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_and_changes_nothing() {
    let c = cluster(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    setup_tenant(&c, leader).await;
    let before_applied = c.status(leader).await.expect("status").last_applied_index;
    let before = c.inspect_all(before_applied).await.expect("inspect")[0].state_digest.clone();
    let via = c.follower().await.expect("follower");
    let mut t = clients::tenant(c.addr(via), "acme").expect("client");

    let mut big = batch(1, 300 * 1024, "");
    let e = t.queue_tasks(big.clone()).await.expect_err("oversize payload");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("tasks[0].payload") && e.message().contains("262144"), "{}", e.message());

    big = batch(1001, 1, "");
    let e = t.queue_tasks(big).await.expect_err("oversize batch");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("tasks") && e.message().contains("1000"), "{}", e.message());

    // A request message over the server's 16 MiB limit: refused by the transport layer,
    // as ResourceExhausted naming the limit.
    let huge = pv::QueueTasksRequest {
        tasks: (0..20)
            .map(|_| pv::NewTask { code: "echo".into(), payload: vec![0; 1 << 20], ..Default::default() })
            .collect(),
        idempotency_key: String::new(),
    };
    let e = t.clone().max_encoding_message_size(64 << 20).queue_tasks(huge).await.expect_err("oversize message");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("16777216"), "{}", e.message());

    let mut p7 = batch(1, 1, "");
    p7.tasks[0].priority = 7;
    let e = t.queue_tasks(p7).await.expect_err("priority 7");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("tasks[0].priority"), "{}", e.message());

    let e = t
        .register_code(pv::RegisterCodeRequest { name: String::new(), image: "x:1".into(), ..Default::default() })
        .await
        .expect_err("empty code name");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("name"), "{}", e.message());

    let mut unknown = batch(1, 1, "");
    unknown.tasks[0].code = "nope".into();
    let e = t.queue_tasks(unknown).await.expect_err("unknown code");
    assert_eq!(e.code(), tonic::Code::NotFound);

    let after = c.inspect_all(before_applied).await.expect("inspect")[0].state_digest.clone();
    assert_eq!(before, after, "a refused call changed state");
}

/// A client's deadline (`grpc-timeout`) bounds a call on the server: a lease long-poll
/// asked to wait 15 s under a 300 ms deadline is ended by the server at the deadline
/// (tonic's server answers `Cancelled` "Timeout expired"; gRPC clients that enforce their
/// own deadline see `DeadlineExceeded`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_call_deadlines_are_honoured() {
    let c = cluster(ClusterOptions { nodes: 1, ..Default::default() }).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    setup_tenant(&c, leader).await;
    let mut a = clients::agent(c.addr(leader), "waiter").expect("agent client");
    let mut req = tonic::Request::new(drover_proto::agent::LeaseRequest {
        agent_id: "waiter".into(),
        slots: 1,
        max_tasks: 1,
        wait_ms: 15_000,
        ..Default::default()
    });
    // The header alone, so that the server (not the client's own timer) ends the call.
    req.metadata_mut().insert("grpc-timeout", "300m".parse().expect("header"));
    let started = std::time::Instant::now();
    let e = a.lease(req).await.expect_err("the deadline passes first");
    assert!(
        matches!(e.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled) && e.message().contains("Timeout"),
        "{e:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
}
