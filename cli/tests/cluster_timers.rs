//! Leader-only timers on a real cluster (delayed-task promotion, the timeout backstop,
//! retention purge) and the HTTP side listener (/metrics, /healthz, /readyz).

mod common;

use std::time::Duration;

use common::*;
use drover_chaos::{Cluster, ClusterOptions, clients, eventually};
use drover_proto::agent as pg;
use drover_proto::v1 as pv;

async fn task(c: &Cluster, node: u64, id: u64) -> Option<pv::Task> {
    let mut t = clients::tenant(c.addr(node), "acme").expect("tenant client");
    t.get_task(pv::GetTaskRequest { id, include_payload: false }).await.ok().map(|r| r.into_inner())
}

/// A delayed task is promoted to queued by the leader once its delay has passed; a leased
/// task running past its timeout plus grace is ended `timeout` by the control plane even
/// while its holder heartbeats; finished tasks are purged after the retention period.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delay_timeout_backstop_and_retention() {
    let opts =
        ClusterOptions { extra_config: "timeout_grace = \"1s\"\nretention = \"4s\"\n".into(), ..Default::default() };
    let c = cluster(opts).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    setup_tenant(&c, leader).await;
    let mut t = clients::tenant(c.addr(leader), "acme").expect("client");

    let mut req = batch(1, 8, "");
    req.tasks[0].delay_ms = 1_500;
    let delayed = t.queue_tasks(req).await.expect("queue").into_inner().task_ids[0];
    assert_eq!(task(&c, leader, delayed).await.expect("task").state, pv::TaskState::Delayed as i32);
    let promoted = eventually(Duration::from_secs(10), "promotion of the delayed task", || async {
        let t = task(&c, leader, delayed).await?;
        (t.state == pv::TaskState::Queued as i32).then_some(t)
    })
    .await
    .expect("promoted");
    assert!(promoted.ready_at_ms >= promoted.created_ms + 1_500);

    // Lease it with a 1 s timeout and keep heartbeating: the backstop still ends it.
    let a = clients::agent(c.addr(leader), "agent-a").expect("agent");
    let mut short = batch(1, 8, "");
    short.tasks[0].timeout_ms = 1_000;
    short.tasks[0].priority = 2;
    let id = t.queue_tasks(short).await.expect("queue").into_inner().task_ids[0];
    let (g, _) = lease_one(&c, leader, "agent-a").await;
    assert_eq!(g.task_id, id, "priority 2 leased first");
    let ended = eventually(Duration::from_secs(15), "the timeout backstop", || {
        let mut a = a.clone();
        let c = &c;
        let g = g.clone();
        async move {
            let _ = a
                .heartbeat(pg::HeartbeatRequest {
                    agent_id: "agent-a".into(),
                    leases: vec![pg::LeaseRef { task_id: g.task_id, lease_epoch: g.lease_epoch }],
                })
                .await;
            let t = task(c, leader, id).await?;
            (t.state == pv::TaskState::Timeout as i32).then_some(t)
        }
    })
    .await
    .expect("timed out by the control plane");
    assert!(ended.result.expect("result").error.contains("timed out"));

    // Retention: the finished task disappears a few seconds later.
    eventually(Duration::from_secs(20), "purge after retention", || async {
        task(&c, leader, id).await.is_none().then_some(())
    })
    .await
    .expect("purged");
    assert!(task(&c, leader, delayed).await.is_some(), "an unfinished task is never purged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_and_health_endpoints() {
    let c = cluster(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    setup_tenant(&c, leader).await;
    let mut t = clients::tenant(c.addr(leader), "acme").expect("client");
    t.queue_tasks(batch(7, 8, "")).await.expect("queue");

    let (code, body) = c.http_get(leader, "/healthz").await.expect("http get");
    assert_eq!(code, 200, "{body}");
    let (code, body) = c.http_get(leader, "/readyz").await.expect("http get");
    assert_eq!(code, 200, "{body}");
    let (code, body) = c.http_get(leader, "/metrics").await.expect("http get");
    assert_eq!(code, 200);
    for line in [
        "drover_raft_is_leader 1",
        "drover_queue_depth{priority=\"0\",tenant=\"acme\"} 7",
        "drover_tasks{state=\"queued\"} 7",
        "drover_leases_active 0",
    ] {
        assert!(body.lines().any(|l| l == line), "missing {line:?} in:\n{body}");
    }
    for name in
        ["drover_raft_term", "drover_raft_applied_index", "drover_apply_seconds_bucket", "drover_raft_last_log_index"]
    {
        assert!(body.contains(name), "missing {name}");
    }
    let follower = c.follower().await.expect("follower");
    let (_, body) = c.http_get(follower, "/metrics").await.expect("http get");
    assert!(body.lines().any(|l| l == "drover_raft_is_leader 0"));
}
