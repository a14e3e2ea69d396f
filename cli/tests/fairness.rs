//! Fairness across tenants: with one tenant holding 10,000 queued tasks, another tenant's
//! newly queued task is granted in the next dispatch round (the next lease call that has
//! a free slot for it), not after the backlog. Placement is round-robin across tenants
//! with ready work, starting after the tenant served last.

mod common;

use std::time::Duration;

use common::{batch, cluster, setup_tenant};
use drover_chaos::{ClusterOptions, clients};
use drover_proto::admin as pa;
use drover_proto::agent as pg;
use drover_proto::v1 as pv;

const BACKLOG: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_tenants_task_starts_in_the_next_round_behind_a_10k_backlog() {
    let c = cluster(ClusterOptions { nodes: 1, ..Default::default() }).await;
    let node = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    setup_tenant(&c, node).await;
    let mut big = clients::tenant(c.addr(node), "acme").expect("tenant client");
    for i in 0..BACKLOG / 1000 {
        big.queue_tasks(batch(1000, 8, &format!("backlog-{i}"))).await.expect("queue backlog");
    }
    let mut agent = clients::agent(c.addr(node), "worker").expect("agent client");
    let lease = |max_tasks: u32| pg::LeaseRequest {
        agent_id: "worker".into(),
        slots: max_tasks,
        max_tasks,
        wait_ms: 1_000,
        ..Default::default()
    };
    // The backlog is being served.
    let first = agent.lease(lease(4)).await.expect("lease").into_inner();
    assert_eq!(first.tasks.len(), 4);
    assert!(first.tasks.iter().all(|g| g.tenant == "acme"));

    c.admin(node)
        .expect("admin")
        .upsert_tenant(pa::UpsertTenantRequest { id: "small".into(), ..Default::default() })
        .await
        .expect("tenant small");
    let mut small = clients::tenant(c.addr(node), "small").expect("tenant client");
    small
        .register_code(pv::RegisterCodeRequest {
            name: "echo".into(),
            image: "drover-test/busybox:1".into(),
            ..Default::default()
        })
        .await
        .expect("code");
    let id = small.queue_tasks(batch(1, 8, "one")).await.expect("queue").into_inner().task_ids[0];

    // The next round with room for two tasks serves both tenants.
    let next = agent.lease(lease(2)).await.expect("lease").into_inner();
    let tenants: Vec<&str> = next.tasks.iter().map(|g| g.tenant.as_str()).collect();
    assert!(
        next.tasks.iter().any(|g| g.task_id == id),
        "the new tenant's task was not granted in the next round: {tenants:?} behind {BACKLOG} queued"
    );
    let state = small.get_task(pv::GetTaskRequest { id, include_payload: false }).await.expect("get").into_inner();
    assert_eq!(state.state, pv::TaskState::Running as i32);
}
