//! A `Lease` answer is built grant by grant: grants that do not fit the answer (72 tasks
//! of 1 MiB would make a 72 MiB answer, over what an agent decodes) are handed back at
//! once instead of failing the whole answer and orphaning every lease in it until its TTL.

mod common;

use std::time::Duration;

use drover_chaos::ClusterOptions;
use drover_proto::admin as pa;
use drover_proto::agent as pg;
use drover_proto::v1 as pv;

const TASKS: usize = 72;
const PAYLOAD_BYTES: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grants_that_do_not_fit_one_answer_are_handed_back_not_orphaned() {
    // A long TTL: a task re-queued before it could expire was handed back, not expired.
    let opts = ClusterOptions { nodes: 1, lease_ttl: Some("60s".into()), ..Default::default() };
    let c = common::cluster(opts).await;
    let node = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    let limits = pa::TenantLimits { max_payload_bytes: PAYLOAD_BYTES as u64, ..Default::default() };
    c.admin(node)
        .expect("admin")
        .upsert_tenant(pa::UpsertTenantRequest { id: "acme".into(), limits: Some(limits), ..Default::default() })
        .await
        .expect("tenant");
    let mut t = c.tenant(node, "acme").expect("tenant client");
    t.register_code(pv::RegisterCodeRequest {
        name: "echo".into(),
        image: "drover-test/busybox:1".into(),
        ..Default::default()
    })
    .await
    .expect("code");
    // One task of (almost) 1 MiB per queue call, the most one call may carry.
    for i in 0..TASKS {
        let mut b = common::batch(1, PAYLOAD_BYTES, &format!("k{i}"));
        b.tasks.iter_mut().for_each(|t| t.payload.truncate(PAYLOAD_BYTES - 64));
        t.queue_tasks(b).await.expect("queue");
    }

    let (answered, _) = {
        let mut a = c.agent(node, "big").expect("agent client");
        let req = pg::LeaseRequest {
            agent_id: "big".into(),
            slots: TASKS as u32,
            max_tasks: TASKS as u32,
            wait_ms: 5_000,
            ..Default::default()
        };
        let r = a.lease(req).await.expect("a lease answer the agent can decode").into_inner();
        (r.tasks.len(), r.lease_ttl_ms)
    };
    assert!((1..TASKS).contains(&answered), "answered {answered} of {TASKS} grants");
    assert!(answered <= 32, "answered {answered} MiB of payload, over the 32 MiB answer budget");

    // Every grant left out is queued again at once, with no lost lease counted.
    let tasks = t
        .list_tasks(pv::ListTasksRequest { limit: 1000, ..Default::default() })
        .await
        .expect("list")
        .into_inner()
        .tasks;
    let running = tasks.iter().filter(|t| t.state == pv::TaskState::Running as i32).count();
    let queued = tasks.iter().filter(|t| t.state == pv::TaskState::Queued as i32).count();
    assert_eq!((running, queued), (answered, TASKS - answered), "{tasks:?}");
    assert!(tasks.iter().all(|t| t.lost_leases == 0));
}
