//! Shared setup for the integration tests: a real cluster of `drover` processes.
#![allow(dead_code)]

pub mod agent_tasks;

use std::path::Path;

use drover_chaos::{Cluster, ClusterOptions, clients};
use drover_proto::admin as pa;
use drover_proto::agent as pg;
use drover_proto::v1 as pv;

/// The `drover` binary under test; `DROVER_TEST_BIN` names another build (to measure a
/// fix against the binary before it).
pub fn bin() -> &'static Path {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var_os("DROVER_TEST_BIN")
            .filter(|p| !p.is_empty())
            .map(Into::into)
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_drover").into())
    })
}

pub async fn cluster(opts: ClusterOptions) -> Cluster {
    Cluster::start(bin(), opts).await.expect("start cluster")
}

/// Creates tenant `acme` with code `echo` through `addr`.
pub async fn setup_tenant(c: &Cluster, addr_id: u64) {
    let mut admin = clients::admin(c.addr(addr_id)).expect("admin client");
    admin
        .upsert_tenant(pa::UpsertTenantRequest { id: "acme".into(), ..Default::default() })
        .await
        .expect("create tenant");
    let mut t = clients::tenant(c.addr(addr_id), "acme").expect("tenant client");
    t.register_code(pv::RegisterCodeRequest {
        name: "echo".into(),
        image: "drover-test/busybox:1".into(),
        ..Default::default()
    })
    .await
    .expect("register code");
}

pub fn batch(n: usize, payload_bytes: usize, key: &str) -> pv::QueueTasksRequest {
    pv::QueueTasksRequest {
        tasks: (0..n)
            .map(|i| pv::NewTask {
                code: "echo".into(),
                payload: vec![(i % 251) as u8; payload_bytes],
                ..Default::default()
            })
            .collect(),
        idempotency_key: key.into(),
    }
}

/// Every task id of tenant `acme`, read (linearizably) through node `id`.
pub async fn all_task_ids(c: &Cluster, id: u64) -> Vec<u64> {
    all_tasks(c, id).await.iter().map(|t| t.id).collect()
}

/// Every task of tenant `acme`, read through node `id` page by page.
pub async fn all_tasks(c: &Cluster, id: u64) -> Vec<pv::Task> {
    let mut t = clients::tenant(c.addr(id), "acme").expect("tenant client");
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let r = t
            .list_tasks(pv::ListTasksRequest { after_id: after, limit: 1000, ..Default::default() })
            .await
            .expect("list tasks")
            .into_inner();
        out.extend(r.tasks);
        if r.next_after_id == 0 {
            return out;
        }
        after = r.next_after_id;
    }
}

/// Asserts every running node holds identical state tables; returns the applied index.
pub async fn assert_replicas_identical(c: &Cluster, expect_tasks: u64) -> u64 {
    let (applied, views) = c.identical_replicas().await.expect("identical replicas");
    for v in &views {
        assert_eq!(v.task_count, expect_tasks, "node {} holds {} tasks", v.node_id, v.task_count);
    }
    applied
}

/// Leases one task as `agent` through node `id`, waiting up to 5 s for one.
/// Leases one task as `agent` through node `id`, as an agent does: a leader that has just
/// been elected answers `Unavailable` until it has applied an entry of its term and
/// heard from a quorum, and the agent asks again.
pub async fn lease_one(c: &Cluster, id: u64, agent: &str) -> (pg::GrantedTask, u64) {
    let mut a = clients::agent(c.addr(id), agent).expect("agent client");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let req =
            pg::LeaseRequest { agent_id: agent.into(), slots: 1, max_tasks: 1, wait_ms: 5_000, ..Default::default() };
        match a.lease(req).await {
            Ok(r) => {
                let r = r.into_inner();
                return (r.tasks.into_iter().next().expect("a task was granted"), r.lease_ttl_ms);
            }
            Err(s) if s.code() == tonic::Code::Unavailable && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(s) => panic!("lease: {s:?}"),
        }
    }
}

/// Reports one completion as `agent`; returns whether the control plane accepted it.
pub async fn complete(c: &Cluster, id: u64, agent: &str, g: &pg::GrantedTask, outcome: pg::Outcome, exit: i32) -> bool {
    let mut a = clients::agent(c.addr(id), agent).expect("agent client");
    let r = a
        .complete(pg::CompleteRequest {
            agent_id: agent.into(),
            completions: vec![pg::Completion {
                lease: Some(pg::LeaseRef { task_id: g.task_id, lease_epoch: g.lease_epoch }),
                outcome: outcome as i32,
                exit_code: Some(exit),
                ..Default::default()
            }],
        })
        .await
        .expect("complete call")
        .into_inner();
    r.results[0].accepted
}
