//! Lease liveness on a real three-node cluster: heartbeats keep a lease, silence expires
//! it after the TTL, and a new leader grants every lease a full TTL from its election.

mod common;

use std::time::{Duration, Instant};

use common::*;
use drover_chaos::{Cluster, ClusterOptions, clients, eventually};
use drover_proto::agent as pg;
use drover_proto::v1 as pv;

const TTL: Duration = Duration::from_secs(3);

fn opts() -> ClusterOptions {
    ClusterOptions { lease_ttl: Some("3s".into()), ..Default::default() }
}

async fn lease_checked(c: &Cluster, leader: u64, agent: &str) -> pg::GrantedTask {
    let (g, ttl_ms) = lease_one(c, leader, agent).await;
    assert_eq!(ttl_ms, TTL.as_millis() as u64);
    g
}

async fn heartbeat(
    c: &Cluster,
    node: u64,
    agent: &str,
    g: &pg::GrantedTask,
) -> Result<pg::HeartbeatResponse, tonic::Status> {
    let mut a = clients::agent(c.addr(node), agent).expect("agent client");
    a.heartbeat(pg::HeartbeatRequest {
        agent_id: agent.into(),
        leases: vec![pg::LeaseRef { task_id: g.task_id, lease_epoch: g.lease_epoch }],
    })
    .await
    .map(|r| r.into_inner())
}

async fn task(c: &Cluster, node: u64, id: u64) -> pv::Task {
    let mut t = clients::tenant(c.addr(node), "acme").expect("tenant client");
    t.get_task(pv::GetTaskRequest { id, include_payload: false }).await.expect("get task").into_inner()
}

/// Heartbeats keep a lease alive well past its TTL; once they stop, the lease is expired
/// after the TTL and the task re-queued, and the old holder's completion is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_holder_loses_lease_after_ttl() {
    let c = cluster(opts()).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    setup_tenant(&c, leader).await;
    let mut t = clients::tenant(c.addr(leader), "acme").expect("client");
    t.queue_tasks(batch(1, 16, "")).await.expect("queue");
    let g = lease_checked(&c, leader, "agent-a").await;

    // Alive for two TTLs while heartbeating every TTL/3.
    let alive_until = Instant::now() + 2 * TTL;
    let mut last_sent = Instant::now();
    while Instant::now() < alive_until {
        last_sent = Instant::now();
        let hb = heartbeat(&c, leader, "agent-a", &g).await.expect("heartbeat");
        assert!(hb.revoked.is_empty(), "lease revoked while heartbeating");
        tokio::time::sleep(TTL / 3).await;
    }
    assert_eq!(task(&c, leader, g.task_id).await.state, pv::TaskState::Running as i32);

    // The leader heard the last heartbeat no earlier than it was sent.
    let silent_since = last_sent;
    let t2 = eventually(Duration::from_secs(15), "the silent lease to expire", || async {
        let t = task(&c, leader, g.task_id).await;
        (t.state == pv::TaskState::Queued as i32).then_some(t)
    })
    .await
    .expect("expiry");
    assert!(silent_since.elapsed() >= TTL, "expired after {:?}, before the TTL", silent_since.elapsed());
    assert_eq!(t2.lost_leases, 1);

    // The lost holder is fenced: its heartbeat is revoked and its completion refused.
    let hb = heartbeat(&c, leader, "agent-a", &g).await.expect("heartbeat");
    assert_eq!(hb.revoked.len(), 1);
    let g2 = lease_checked(&c, leader, "agent-b").await;
    assert_eq!(g2.task_id, g.task_id);
    assert!(g2.lease_epoch > g.lease_epoch);
    assert!(!complete(&c, leader, "agent-a", &g, pg::Outcome::Success, 0).await, "stale completion accepted");
    assert!(complete(&c, leader, "agent-b", &g2, pg::Outcome::Error, 3).await, "current holder refused");
    let done = task(&c, leader, g.task_id).await;
    assert_eq!(done.state, pv::TaskState::Error as i32);
    assert_eq!(done.result.expect("result").exit_code, Some(3), "the recorded result is the second holder's");
}

/// A lease whose holder went quiet just before the leader was killed is not expired by
/// the new leader until one full TTL after the new leader took over (it has no heartbeat
/// history); after that it is expired and re-queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_leader_grants_full_ttl_from_election() {
    let mut c = cluster(opts()).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    setup_tenant(&c, leader).await;
    let mut t = clients::tenant(c.addr(leader), "acme").expect("client");
    t.queue_tasks(batch(1, 16, "")).await.expect("queue");
    let g = lease_checked(&c, leader, "agent-a").await;
    heartbeat(&c, leader, "agent-a", &g).await.expect("heartbeat");
    // Most of the TTL passes in silence: under the old leader's clock the lease has
    // well under a second left when the leader dies.
    tokio::time::sleep(TTL - Duration::from_millis(700)).await;
    c.kill(leader).expect("kill leader");
    let killed_at = Instant::now();
    let new_leader = c.wait_leader(Duration::from_secs(30)).await.expect("new leader");
    let elected_seen = Instant::now();
    assert_ne!(new_leader, leader);

    // Well inside one TTL of the election the lease must still stand.
    let check_at = elected_seen + TTL / 2;
    tokio::time::sleep_until(check_at.into()).await;
    let during = task(&c, new_leader, g.task_id).await;
    assert_eq!(during.state, pv::TaskState::Running as i32, "expired before a full TTL from the election");
    assert_eq!(during.lease_epoch, g.lease_epoch);

    eventually(Duration::from_secs(20), "expiry by the new leader", || async {
        let t = task(&c, new_leader, g.task_id).await;
        (t.state == pv::TaskState::Queued as i32).then_some(())
    })
    .await
    .expect("expiry");
    assert!(killed_at.elapsed() >= TTL, "expired {:?} after the kill", killed_at.elapsed());
}
