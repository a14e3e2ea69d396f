//! Retries: the backoff schedule through the delayed index, `retry_on`, the failure
//! taxonomy of every way an attempt ends, lost leases apart from retries, and the attempt
//! log (see [`crate::state::retry`]).

use super::*;
use crate::state::model::{FailureReason, RetryOn};
use crate::state::retry::{self, MAX_ATTEMPTS_KEPT, RetryPolicy};

/// Tenant "acme" with code "flaky": 3 retries, 1 s doubling to at most 3 s.
fn flaky() -> Harness {
    let mut h = Harness::new();
    let retry = RetryOverride { retry_delay_ms: Some(1_000), backoff_max_ms: Some(3_000), retry_on: None };
    h.tenant("acme", limits(100, 0), &[CodeSpec { retry, ..spec("flaky", 0, 3) }]);
    h
}

fn fail(h: &mut Harness, id: u64, agent_id: &str) -> u64 {
    let g = h.lease(agent_id, &agent("", ""), 1);
    assert_eq!(g.len(), 1, "task {id} should be leasable");
    h.complete(agent_id, id, g[0].epoch, Outcome::Error).expect("current");
    g[0].epoch
}

/// Moves the clock to `at_ms` and runs the leader's promotion tick.
fn promote_at(h: &mut Harness, at_ms: u64) -> u64 {
    h.now_ms = at_ms;
    match h.apply(h.promote_cmd(100)) {
        Response::Promoted { count } => count,
        other => panic!("promote failed: {other:?}"),
    }
}

#[test]
fn failures_wait_out_a_capped_exponential_backoff_as_delayed_tasks() {
    let mut h = flaky();
    let id = h.queue("acme", vec![task("flaky")])[0];
    let policy = RetryPolicy { retry_delay_ms: 1_000, backoff_max_ms: 3_000, retry_on: RetryOn::DEFAULT };
    // Capped exponential 1 s, 2 s, 3 s (capped); each less up to a fifth.
    for (n, capped) in [(1u32, 1_000u64), (2, 2_000), (3, 3_000)] {
        let epoch = fail(&mut h, id, "a1");
        let failed_at = h.now_ms;
        let t = h.task(id);
        let wait = t.ready_at_ms - failed_at;
        assert_eq!(t.state, TaskState::Delayed, "retry {n}");
        assert!(
            wait <= capped && wait >= capped - capped / 5,
            "retry {n}: wait {wait} ms outside the bounds of {capped}"
        );
        assert_eq!(wait, retry::backoff_ms(&policy, id, n), "the wait is the documented function");
        let a = t.attempt_log.last().expect("attempt");
        assert_eq!((a.number, a.epoch, a.reason, a.retry_delay_ms), (n, epoch, Some(FailureReason::ExitCode), wait));
        assert_eq!((t.retries_left, t.reason), (3 - n, Some(FailureReason::ExitCode)));
        assert!(h.lease("a1", &agent("", ""), 1).is_empty(), "a task in backoff is not leased");
        assert_eq!(promote_at(&mut h, t.ready_at_ms - 1), 0, "not due a millisecond early");
        assert_eq!(promote_at(&mut h, t.ready_at_ms), 1, "due at the stamp plus the wait");
        assert_eq!(h.task(id).state, TaskState::Queued);
    }
    fail(&mut h, id, "a2");
    let t = h.task(id);
    assert_eq!(
        (t.state, t.reason, t.attempts, t.retries_left),
        (TaskState::Error, Some(FailureReason::ExitCode), 4, 0)
    );
    let numbers: Vec<u32> = t.attempt_log.iter().map(|a| a.number).collect();
    assert_eq!(numbers, vec![1, 2, 3, 4]);
    assert_eq!(t.attempt_log[3].agent_id, "a2");
    assert_eq!(t.attempt_log[3].retry_delay_ms, 0, "no retry follows the last failure");
}

#[test]
fn two_failures_then_a_success_complete_with_three_attempts() {
    let mut h = flaky();
    let id = h.queue("acme", vec![task("flaky")])[0];
    for _ in 0..2 {
        fail(&mut h, id, "a1");
        let due = h.task(id).ready_at_ms;
        promote_at(&mut h, due);
    }
    let g = h.lease("a1", &agent("", ""), 1);
    h.now_ms += 250;
    let mut c = completion("a1", id, g[0].epoch, Outcome::Success, "");
    c.started_ms = h.now_ms - 200;
    c.peak_memory_bytes = 4096;
    assert!(matches!(h.apply(Command::Complete { completions: vec![c] }), Response::Completed { .. }));
    let t = h.task(id);
    assert_eq!((t.state, t.reason, t.attempts, t.retries_left), (TaskState::Complete, None, 3, 1));
    let last = &t.attempt_log[2];
    assert_eq!((last.reason, last.exit_code, last.peak_memory_bytes), (None, Some(0), 4096));
    assert_eq!((last.started_ms, last.finished_ms), (h.now_ms - 200, h.now_ms));
    assert_eq!(last.granted_ms, h.now_ms - 250);
}

#[test]
fn with_one_retry_the_second_failure_ends_error_exit_code() {
    let mut h = flaky();
    let id = h.queue("acme", vec![NewTask { retries: Some(1), ..task("flaky") }])[0];
    fail(&mut h, id, "a1");
    let due = h.task(id).ready_at_ms;
    promote_at(&mut h, due);
    fail(&mut h, id, "a1");
    let t = h.task(id);
    assert_eq!((t.state, t.reason, t.attempt_log.len()), (TaskState::Error, Some(FailureReason::ExitCode), 2));
}

#[test]
fn a_reason_left_out_of_retry_on_is_not_retried() {
    let mut h = flaky();
    let only_exit = RetryOverride { retry_on: Some(RetryOn::from_reasons([FailureReason::ExitCode])), ..no_delay() };
    let ids = h.queue("acme", vec![NewTask { retry: only_exit, ..task("flaky") }; 2]);
    let g = h.lease("a1", &agent("", ""), 2);
    let mut oom = completion("a1", ids[0], g[0].epoch, Outcome::Error, "killed: out of memory");
    (oom.exit_code, oom.oom_killed) = (Some(137), true);
    let timeout = completion("a1", ids[1], g[1].epoch, Outcome::Timeout, "timed out after 1s");
    assert!(matches!(h.apply(Command::Complete { completions: vec![oom, timeout] }), Response::Completed { .. }));
    let t = h.task(ids[0]);
    assert_eq!((t.state, t.reason, t.retries_left), (TaskState::Error, Some(FailureReason::Oom), 3));
    assert!(t.result.expect("result").oom_killed);
    let t = h.task(ids[1]);
    assert_eq!((t.state, t.reason, t.retries_left), (TaskState::Timeout, Some(FailureReason::Timeout), 3));
    // The same task retries what retry_on names.
    let id = h.queue("acme", vec![NewTask { retry: only_exit, ..task("flaky") }])[0];
    fail(&mut h, id, "a1");
    assert_eq!((h.task(id).state, h.task(id).retries_left), (TaskState::Queued, 2), "zero delay: re-queued at once");
}

#[test]
fn every_agent_report_maps_to_one_reason_and_final_state() {
    let mut h = acme();
    let cases = [
        (Outcome::Error, Some(3), false, TaskState::Error, FailureReason::ExitCode),
        (Outcome::Error, Some(137), true, TaskState::Error, FailureReason::Oom),
        (Outcome::Error, None, false, TaskState::Error, FailureReason::Infrastructure),
        (Outcome::Timeout, Some(143), false, TaskState::Timeout, FailureReason::Timeout),
        (Outcome::Killed, Some(137), false, TaskState::Killed, FailureReason::Cancelled),
        (Outcome::ImagePull, None, false, TaskState::Error, FailureReason::ImagePull),
        (Outcome::Infrastructure, None, false, TaskState::Error, FailureReason::Infrastructure),
    ];
    for (outcome, exit_code, oom_killed, state, reason) in cases {
        let id = h.queue("acme", vec![task("work")])[0];
        let g = h.lease("a1", &agent("", ""), 1);
        let mut c = completion("a1", id, g[0].epoch, outcome, "why");
        (c.exit_code, c.oom_killed) = (exit_code, oom_killed);
        assert!(matches!(h.apply(Command::Complete { completions: vec![c] }), Response::Completed { .. }));
        let t = h.task(id);
        assert_eq!((t.state, t.reason), (state, Some(reason)), "{outcome:?} exit {exit_code:?} oom {oom_killed}");
        assert_eq!(t.attempt_log[0].reason, Some(reason));
    }
}

#[test]
fn lost_leases_requeue_at_once_without_using_a_retry_unless_retry_on_leaves_them_out() {
    let mut h = flaky();
    let id = h.queue("acme", vec![task("flaky")])[0];
    let e = h.lease("a1", &agent("", ""), 1)[0].epoch;
    assert_eq!(h.expire(id, e, ExpireReason::LeaseLost), vec![id]);
    let t = h.task(id);
    assert_eq!((t.state, t.retries_left, t.lost_leases), (TaskState::Queued, 3, 1), "no backoff, no retry used");
    let a = &t.attempt_log[0];
    assert_eq!((a.reason, a.agent_id.as_str(), a.epoch), (Some(FailureReason::RunnerLost), "a1", e));

    let at_most_once = RetryOverride {
        retry_on: Some(RetryOn::from_reasons([FailureReason::ExitCode, FailureReason::Oom])),
        ..Default::default()
    };
    let id = h.queue("acme", vec![NewTask { retry: at_most_once, ..task("flaky") }])[0];
    let g = h.lease("a1", &agent("", ""), 2);
    let e = g.iter().find(|g| g.task_id == id).expect("granted").epoch;
    h.expire(id, e, ExpireReason::LeaseLost);
    let t = h.task(id);
    assert_eq!((t.state, t.reason, t.lost_leases), (TaskState::Error, Some(FailureReason::RunnerLost), 1));
    assert_eq!(t.result.expect("result").error, "lease lost 1 times");
}

#[test]
fn the_control_plane_timeout_backstop_is_a_timeout_and_retries_by_policy() {
    let mut h = flaky();
    let id = h.queue("acme", vec![task("flaky")])[0];
    let e = h.lease("a1", &agent("", ""), 1)[0].epoch;
    h.expire(id, e, ExpireReason::TimedOut);
    let t = h.task(id);
    assert_eq!((t.state, t.reason, t.retries_left), (TaskState::Delayed, Some(FailureReason::Timeout), 2));
}

#[test]
fn cancelling_a_running_task_ends_its_attempt_cancelled() {
    let mut h = flaky();
    let ids = h.queue("acme", vec![task("flaky"), NewTask { delay_ms: 500, ..task("flaky") }]);
    let e = h.lease("a1", &agent("", ""), 1)[0].epoch;
    for id in &ids {
        assert!(matches!(h.apply(Command::Cancel { tenant: "acme".into(), task_id: *id }), Response::Cancelled(_)));
    }
    let t = h.task(ids[0]);
    assert_eq!((t.state, t.reason, t.lease), (TaskState::Cancelled, Some(FailureReason::Cancelled), None));
    assert_eq!((t.attempt_log.len(), t.attempt_log[0].epoch), (1, e));
    let t = h.task(ids[1]);
    assert_eq!((t.state, t.reason, t.attempt_log.len()), (TaskState::Cancelled, Some(FailureReason::Cancelled), 0));
}

#[test]
fn the_attempt_log_keeps_the_latest_attempts_within_its_bound() {
    let mut h = acme();
    let id = h.queue("acme", vec![task("work")])[0];
    let n = MAX_ATTEMPTS_KEPT as u32 + 3;
    for _ in 0..n {
        let e = h.lease("a1", &agent("", ""), 1)[0].epoch;
        assert_eq!(h.hand_back("a1", id, e), vec![id]);
    }
    let t = h.task(id);
    assert_eq!((t.attempts, t.attempt_log.len()), (n, MAX_ATTEMPTS_KEPT));
    assert_eq!((t.attempt_log[0].number, t.attempt_log.last().map(|a| a.number)), (4, Some(n)));
    assert!(t.attempt_log.iter().all(|a| a.reason == Some(FailureReason::Infrastructure) && a.retry_delay_ms == 0));
    assert_eq!((t.state, t.retries_left, t.lost_leases), (TaskState::Queued, 0, 0), "hand-backs cost nothing");
}

#[test]
fn replicas_applying_the_same_failures_schedule_the_same_retries() {
    let run = || {
        let mut h = flaky();
        let ids = h.queue("acme", vec![task("flaky"); 20]);
        let g = h.lease("a1", &agent("", ""), 20);
        let completions = g.iter().map(|g| completion("a1", g.task_id, g.epoch, Outcome::Error, "")).collect();
        h.apply(Command::Complete { completions });
        ids.iter().map(|id| h.task(*id).ready_at_ms).collect::<Vec<_>>()
    };
    let (a, b) = (run(), run());
    assert_eq!(a, b);
    let distinct: std::collections::BTreeSet<_> = a.iter().collect();
    assert!(distinct.len() > 10, "tasks failing together retry apart: {a:?}");
}

#[test]
fn retry_settings_come_from_the_code_unless_the_task_overrides_them() {
    let mut h = flaky();
    let ids = h.queue(
        "acme",
        vec![
            task("flaky"),
            NewTask {
                retries: Some(7),
                retry: RetryOverride { retry_delay_ms: Some(5_000), ..Default::default() },
                ..task("flaky")
            },
        ],
    );
    let t = h.task(ids[0]);
    assert_eq!((t.max_retries, t.retry.retry_delay_ms, t.retry.backoff_max_ms), (3, 1_000, 3_000));
    let t = h.task(ids[1]);
    assert_eq!(
        (t.max_retries, t.retry.retry_delay_ms, t.retry.backoff_max_ms),
        (7, 5_000, 5_000),
        "cap lifted to the delay"
    );
    let bad = NewTask {
        retry: RetryOverride { retry_delay_ms: Some(retry::MAX_RETRY_DELAY_MS + 1), ..Default::default() },
        ..task("flaky")
    };
    let r = h.apply_unchanged(Harness::queue_cmd("acme", None, vec![bad]));
    assert_eq!(invalid_field(&r), "tasks[0].retry_delay_ms");
}
