//! "Why is my task not running", end to end: a 3-node control plane, a real `drover agent`
//! running real containers, and `drover task get` as a tenant runs it, through a node that
//! need not be the leader. In the order the world runs: the agent starts and idles first,
//! then work arrives. Each reason in turn: a retry's backoff, a delay, the code's and then
//! the tenant's concurrency limit, a busy agent's slot, a placement no connected agent
//! meets, a deleted code; then the agent dies, is marked gone within the lease TTL (and
//! `agents list` and the metrics say so), and comes back.
//! Needs a running Docker engine: `.ci/run` installs and starts one.

mod common;

use std::process::Command;
use std::time::Duration;

use common::agent_tasks::*;
use drover_chaos::{AgentOptions, Cluster, ClusterOptions, eventually};
use drover_proto::admin as pa;
use drover_proto::v1 as pv;
use serde_json::Value;

const TTL: Duration = Duration::from_secs(3);

/// `drover task get ID -o json` through node `node`: the task as JSON.
fn task_json(c: &Cluster, node: u64, id: u64) -> Value {
    serde_json::from_str(&task_get(c, node, id, true)).expect("task get -o json prints JSON")
}

fn task_get(c: &Cluster, node: u64, id: u64, json: bool) -> String {
    let mut cmd = Command::new(common::bin());
    cmd.args(["task", "get", &id.to_string(), "--addr", c.addr(node), "--dev-tenant", "acme"]);
    if json {
        cmd.args(["-o", "json"]);
    }
    let out = cmd.output().expect("run drover task get");
    assert!(out.status.success(), "drover task get: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Waits until `drover task get` shows task `id` waiting for `reason`; returns its JSON.
async fn wait_reason(c: &Cluster, node: u64, id: u64, reason: &str) -> Value {
    let r = eventually(Duration::from_secs(30), &format!("task {id} waiting for {reason}"), || async {
        let t = task_json(c, node, id);
        (t["waiting"]["reason"] == reason).then_some(t)
    })
    .await;
    r.unwrap_or_else(|e| panic!("{e}; last: {}", task_json(c, node, id)))
}

async fn queue_task(c: &Cluster, task: pv::NewTask) -> u64 {
    let r = tenant(c)
        .queue_tasks(pv::QueueTasksRequest { tasks: vec![task], idempotency_key: String::new() })
        .await
        .expect("queue");
    r.into_inner().task_ids[0]
}

fn task(code: &str) -> pv::NewTask {
    pv::NewTask { code: code.into(), ..Default::default() }
}

async fn agent_connected(c: &Cluster, id: &str) -> Option<bool> {
    let mut admin = c.admin(c.ids()[0]).ok()?;
    let r = admin.list_agents(pa::ListAgentsRequest {}).await.ok()?.into_inner();
    r.agents.iter().find(|a| a.id == id).map(|a| a.connected)
}

async fn metric(c: &Cluster, node: u64, series: &str) -> Option<i64> {
    let (_, body) = c.http_get(node, "/metrics").await.ok()?;
    drover_chaos::exposition::value(&body, series).map(|v| v as i64)
}

#[tokio::test]
async fn task_get_says_why_a_task_waits_and_agent_presence_follows_the_agent() {
    let _d = docker().await;
    let c = common::cluster(ClusterOptions {
        nodes: 3,
        lease_ttl: Some(format!("{}ms", TTL.as_millis())),
        ..Default::default()
    })
    .await;
    let reader = c.ids()[2];
    create_tenant(&c).await;
    register(&c, pv::RegisterCodeRequest { max_concurrency: 1, ..sh("sleeper", "sleep 60") }).await;
    register(&c, sh("quick", "echo ok")).await;
    let mut fails = sh("fails", "exit 3");
    (fails.default_retries, fails.retry_delay_ms) = (1, Some(3_600_000));
    register(&c, fails).await;

    // One agent, one slot, region eu with an ssd: started first, idle, then seen connected.
    let extra = "[attributes]\nregion = \"eu\"\n[attributes.labels]\nssd = \"1\"\n".to_string();
    let mut agent = c.start_agent("eu-runner", AgentOptions { slots: 1, extra_config: extra }).expect("agent");
    let agent_id = agent.id.clone();
    eventually(Duration::from_secs(30), "the idle agent to be connected", || async {
        (agent_connected(&c, &agent_id).await == Some(true)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_tail(30)));

    // A failed attempt waits for its retry backoff (an hour), and says until when.
    let failing = queue_task(&c, task("fails")).await;
    let t = wait_reason(&c, reader, failing, "retry_backoff").await;
    assert_eq!(t["state"], "delayed");
    assert_eq!(t["waiting"]["until_ms"], t["ready_at_ms"]);
    assert!(task_get(&c, reader, failing, false).contains("waiting: waiting for its retry backoff until"));

    // A delayed task.
    let delayed = queue_task(&c, pv::NewTask { delay_ms: 3_600_000, ..task("quick") }).await;
    let t = wait_reason(&c, reader, delayed, "delayed").await;
    assert!(t["waiting"]["message"].as_str().is_some_and(|m| m.starts_with("delayed until ")), "{t}");

    // The sleeper runs; a second one is held by its code's max_concurrency of 1, and a
    // quick task waits for the agent's only slot.
    let running = queue_task(&c, task("sleeper")).await;
    eventually(Duration::from_secs(30), "the sleeper to run", || async {
        (state(&get(&c, running).await) == pv::TaskState::Running).then_some(())
    })
    .await
    .expect("sleeper running");
    let held = queue_task(&c, task("sleeper")).await;
    let t = wait_reason(&c, reader, held, "code_concurrency").await;
    assert_eq!((t["waiting"]["limit"].as_u64(), t["waiting"]["running"].as_u64()), (Some(1), Some(1)));
    let slot = queue_task(&c, task("quick")).await;
    wait_reason(&c, reader, slot, "waiting_for_slot").await;

    // A placement no connected agent meets, named in `task get`, and counted.
    // (Queued with the CLI's placement flags, as a tenant would.)
    let out = Command::new(common::bin())
        .args(["task", "queue", "quick", "--payload", "{}", "--label", "gpu=1", "--region", "eu"])
        .args(["--addr", c.addr(reader), "--dev-tenant", "acme"])
        .output()
        .expect("drover task queue");
    assert!(out.status.success(), "{out:?}");
    let unplaceable: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("task id");
    let t = wait_reason(&c, reader, unplaceable, "no_agent_matches").await;
    assert_eq!(t["waiting"]["constraint"], "label gpu=1");
    let text = task_get(&c, reader, unplaceable, false);
    assert!(text.contains("waiting: no connected agent matches its placement: none meets label gpu=1"), "{text}");
    let n = eventually(Duration::from_secs(10), "drover_tasks_unplaceable", || async {
        metric(&c, reader, "drover_tasks_unplaceable").await.filter(|n| *n >= 1)
    })
    .await
    .expect("unplaceable metric");
    assert_eq!(n, 1);

    // The tenant's own limit: with max_concurrency 1 and the sleeper running, the quick
    // task is held by the tenant, not the slot.
    let mut admin = c.admin(c.ids()[0]).expect("admin");
    let limits = pa::TenantLimits { max_concurrency: 1, ..Default::default() };
    admin
        .upsert_tenant(pa::UpsertTenantRequest { id: "acme".into(), limits: Some(limits), ..Default::default() })
        .await
        .expect("limit tenant");
    let t = wait_reason(&c, reader, slot, "tenant_concurrency").await;
    assert_eq!((t["waiting"]["limit"].as_u64(), t["waiting"]["running"].as_u64()), (Some(1), Some(1)));
    admin.upsert_tenant(pa::UpsertTenantRequest { id: "acme".into(), ..Default::default() }).await.expect("unlimit");
    wait_reason(&c, reader, slot, "waiting_for_slot").await;

    // A deleted code's task waits for the code.
    register(&c, sh("doomed", "true")).await;
    let orphan = queue_task(&c, pv::NewTask { delay_ms: 0, ..task("doomed") }).await;
    tenant(&c).delete_code(pv::DeleteCodeRequest { name: "doomed".into() }).await.expect("delete code");
    wait_reason(&c, reader, orphan, "code_missing").await;

    // Running or finished tasks are not waiting.
    assert!(task_json(&c, reader, running)["waiting"].is_null());

    // The agent dies: within the TTL (and a tick) it is marked gone, its lease is lost,
    // and a task for the shared fleet says no agent is connected.
    agent.kill().expect("kill agent");
    let killed = std::time::Instant::now();
    eventually(TTL * 4, "the dead agent to be marked gone", || async {
        (agent_connected(&c, &agent_id).await == Some(false)).then_some(())
    })
    .await
    .expect("agent gone");
    eprintln!("agent marked gone {} ms after kill -9 (lease TTL {} ms)", killed.elapsed().as_millis(), TTL.as_millis());
    let t = wait_reason(&c, reader, slot, "no_agent_matches").await;
    assert_eq!(t["waiting"]["message"], "no agent is connected");
    // Summed over regions (this agent has none).
    let (_, body) = c.http_get(reader, "/metrics").await.expect("metrics");
    let gone: i64 = body
        .lines()
        .filter(|l| l.starts_with("drover_agents{") && l.contains("state=\"gone\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<i64>().ok())
        .sum();
    assert_eq!(gone, 1, "{body}");
    let mut cmd = Command::new(common::bin());
    cmd.args(["agents", "list", "--addr", c.addr(reader)]);
    let out = cmd.output().expect("drover agents list");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.lines().any(|l| l.starts_with(&agent_id) && l.contains(" gone ")), "{out:?}");

    // It comes back: connected again, and the shared-fleet task no longer lacks an agent.
    agent.restart().expect("restart agent");
    let restarted = std::time::Instant::now();
    eventually(Duration::from_secs(30), "the agent to be connected again", || async {
        (agent_connected(&c, &agent_id).await == Some(true)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_tail(30)));
    eprintln!("agent connected again {} ms after its restart", restarted.elapsed().as_millis());
    eventually(Duration::from_secs(30), "the slot task to wait for something else", || async {
        let t = task_json(&c, reader, slot);
        (t["waiting"]["reason"] != "no_agent_matches").then_some(())
    })
    .await
    .expect("agent back");
    let t = wait_reason(&c, reader, unplaceable, "no_agent_matches").await;
    assert_eq!(t["waiting"]["constraint"], "label gpu=1");
}
