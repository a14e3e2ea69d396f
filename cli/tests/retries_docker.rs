//! Retries end to end: a real control plane, a real `drover agent` and real Docker
//! containers (the busybox image built here). A container fails or succeeds by the attempt
//! number the agent gives it (`TASK_ATTEMPT`), so the test decides nothing behind the
//! system's back; the delays between attempts are measured from the attempt log the
//! control plane keeps (grant and end stamps) and checked against the backoff bounds.
//! Needs a running Docker engine: `.ci/run` installs and starts one.

mod common;

use std::process::Command;
use std::time::Duration;

use common::agent_tasks::*;
use drover_chaos::{AgentOptions, ClusterOptions};
use drover_proto::v1 as pv;

const RETRY_DELAY_MS: u64 = 1_000;
const BACKOFF_MAX_MS: u64 = 10_000;
/// How late a retry may be granted past its backoff: the leader's promotion tick (200 ms)
/// plus a lease round trip, with room for a loaded 2-core machine.
const GRANT_SLACK_MS: u64 = 2_000;

fn reason(r: i32) -> pv::FailureReason {
    pv::FailureReason::try_from(r).expect("known reason")
}

async fn queue_one(c: &drover_chaos::Cluster, task: pv::NewTask) -> u64 {
    let r = tenant(c)
        .queue_tasks(pv::QueueTasksRequest { tasks: vec![task], idempotency_key: String::new() })
        .await
        .expect("queue");
    r.into_inner().task_ids[0]
}

/// `drover task get ID` (with `-o json` when `json`) against the cluster, as a tenant runs it.
fn task_get(c: &drover_chaos::Cluster, id: u64, json: bool) -> String {
    let mut cmd = Command::new(common::bin());
    cmd.args(["task", "get", &id.to_string(), "--addr", c.addr(c.ids()[0]), "--dev-tenant", "acme"]);
    if json {
        cmd.args(["-o", "json"]);
    }
    let out = cmd.output().expect("run drover task get");
    assert!(out.status.success(), "drover task get: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[tokio::test]
async fn failed_containers_are_retried_after_their_backoff_until_retries_or_retry_on_say_stop() {
    let _d = docker().await;
    let c = common::cluster(ClusterOptions { nodes: 1, lease_ttl: Some("5s".into()), ..Default::default() }).await;
    create_tenant(&c).await;
    // Fails its first two attempts, then succeeds.
    let mut flaky = sh(
        "flaky",
        "if [ \"$TASK_ATTEMPT\" -lt 3 ]; then echo \"attempt $TASK_ATTEMPT fails\" >&2; exit 1; fi; echo ok",
    );
    (flaky.default_retries, flaky.retry_delay_ms, flaky.retry_backoff_max_ms) =
        (2, Some(RETRY_DELAY_MS), Some(BACKOFF_MAX_MS));
    register(&c, flaky).await;
    let mut hog = sh("hog", "exec dd if=/dev/zero of=/dev/null bs=64M count=1");
    hog.limits = Some(pv::CodeLimits { memory_bytes: 32 << 20, ..Default::default() });
    register(&c, hog).await;

    let twice_then_ok = queue_one(&c, pv::NewTask { code: "flaky".into(), ..Default::default() }).await;
    // The same code with one retry: attempts 1 and 2 both fail.
    let one_retry = queue_one(&c, pv::NewTask { code: "flaky".into(), retries: Some(1), ..Default::default() }).await;
    let oom = queue_one(
        &c,
        pv::NewTask {
            code: "hog".into(),
            retries: Some(2),
            retry_delay_ms: Some(100),
            retry_on: vec![pv::FailureReason::ExitCode as i32, pv::FailureReason::Timeout as i32],
            ..Default::default()
        },
    )
    .await;

    let a = c.start_agent("runner", AgentOptions::default()).expect("start agent");

    // max_retries 2: fails twice, then completes, three attempts.
    let t = wait_finished(&c, twice_then_ok, Duration::from_secs(90), &[&a]).await;
    assert_eq!(
        (state(&t), reason(t.reason), t.attempts),
        (pv::TaskState::Complete, pv::FailureReason::Unspecified, 3),
        "{t:?}"
    );
    let log = &t.attempt_log;
    let reasons: Vec<_> = log.iter().map(|a| reason(a.reason)).collect();
    assert_eq!(
        reasons,
        [pv::FailureReason::ExitCode, pv::FailureReason::ExitCode, pv::FailureReason::Unspecified],
        "{t:?}"
    );
    let exits: Vec<_> = log.iter().map(|a| a.exit_code).collect();
    assert_eq!(exits, [Some(1), Some(1), Some(0)]);
    for (i, pair) in log.windows(2).enumerate() {
        let (prev, next) = (&pair[0], &pair[1]);
        let capped = (RETRY_DELAY_MS << i).min(BACKOFF_MAX_MS);
        let low = capped - capped / 5;
        assert!(
            (low..=capped).contains(&prev.retry_delay_ms),
            "retry {}: scheduled backoff {} ms outside [{low}, {capped}]",
            i + 1,
            prev.retry_delay_ms
        );
        let granted_after = next.granted_ms - prev.finished_ms;
        let started_after = next.started_ms.saturating_sub(prev.finished_ms);
        eprintln!(
            "retry {}: backoff bounds [{low}, {capped}] ms, scheduled {} ms, granted {granted_after} ms and \
             container started {started_after} ms after the failure was recorded",
            i + 1,
            prev.retry_delay_ms
        );
        assert!(
            granted_after >= prev.retry_delay_ms && granted_after <= capped + GRANT_SLACK_MS,
            "retry {}: granted {granted_after} ms after the failure; backoff {} ms (bounds [{low}, {capped}])",
            i + 1,
            prev.retry_delay_ms
        );
        assert!(next.started_ms >= next.granted_ms && next.started_ms > 0, "started after its grant: {next:?}");
    }
    assert!(
        log.iter().all(|a| a.agent_id == log[0].agent_id && a.lease_epoch > 0 && a.finished_ms >= a.started_ms),
        "{log:?}"
    );

    // max_retries 1: two failures, ends `error` with reason exit_code.
    let t = wait_finished(&c, one_retry, Duration::from_secs(60), &[&a]).await;
    assert_eq!(
        (state(&t), reason(t.reason), t.attempts, t.attempt_log.len()),
        (pv::TaskState::Error, pv::FailureReason::ExitCode, 2, 2),
        "{t:?}"
    );

    // OOM with retry_on leaving out oom: one attempt, not retried.
    let t = wait_finished(&c, oom, Duration::from_secs(60), &[&a]).await;
    assert_eq!(
        (state(&t), reason(t.reason), t.attempts, t.retries_left),
        (pv::TaskState::Error, pv::FailureReason::Oom, 1, 2),
        "{t:?}"
    );
    assert!(t.result.as_ref().is_some_and(|r| r.oom_killed), "{t:?}");
    assert!(t.attempt_log[0].peak_memory_bytes > 0 || t.attempt_log[0].exit_code == Some(137), "{t:?}");

    // What a tenant sees: every attempt, in both outputs.
    let json: serde_json::Value = serde_json::from_str(&task_get(&c, twice_then_ok, true)).expect("task get JSON");
    assert_eq!(json["state"], "complete");
    assert_eq!(json["reason"], serde_json::Value::Null);
    let attempts = json["attempt_log"].as_array().expect("attempt_log");
    let reasons: Vec<_> = attempts.iter().map(|a| a["reason"].clone()).collect();
    assert_eq!(reasons, [serde_json::json!("exit_code"), serde_json::json!("exit_code"), serde_json::Value::Null]);
    for a in attempts {
        for key in ["agent_id", "lease_epoch", "started_ms", "finished_ms", "exit_code", "peak_memory_bytes"] {
            assert!(!a[key].is_null(), "attempt without {key}: {a}");
        }
    }
    let json: serde_json::Value = serde_json::from_str(&task_get(&c, oom, true)).expect("task get JSON");
    assert_eq!((json["state"].as_str(), json["reason"].as_str()), (Some("error"), Some("oom")));
    assert_eq!(json["retry_on"], serde_json::json!(["exit_code", "timeout"]));
    let human = task_get(&c, twice_then_ok, false);
    eprintln!("drover task get {twice_then_ok}:\n{human}");
    assert!(human.contains("retries: 0 of 2 left, delay 1s doubling to at most 10s"), "{human}");
    let human = task_get(&c, one_retry, false);
    assert!(human.contains("[exit_code]"), "the final state names its reason:\n{human}");
    assert_eq!(human.lines().filter(|l| l.contains(" exit_code ")).count(), 2, "one line per attempt:\n{human}");
    no_containers_left(&a).await;
}
