//! Lease commands: grant (placement inside apply), complete/fail with the epoch check,
//! expiry (lost holder or control-plane timeout backstop), and hand-back (the holder gives
//! a task back unfinished, at no cost to the task).
//!
//! Invariants: a running task has exactly one lease; its epoch is the log index of the
//! grant; a completion or expiry naming any other (agent, epoch) is refused and changes
//! nothing.

use super::command::{Completion, ExpireReason, Grant, LeaseRef, LeaseRequest, Outcome, Response};
use super::error::StateError;
use super::keys::{self, TaskRow};
use super::kv::{KvError, Txn};
use super::machine::{ApplyCtx, StateMachine};
use super::model::{Attempt, FailureReason, Lease, Task, TaskResult, TaskState};
use super::placement;
use super::retry::{self, MAX_ATTEMPT_ERROR_BYTES, MAX_ATTEMPTS_KEPT};
use super::validate;

/// The most leases a task may lose: the fifth lost lease ends the task `error` (reason
/// `runner_lost`), where the first four re-queue it at once, unless `retry_on` leaves
/// `runner_lost` out, when the first does. Lost leases are counted apart from failures
/// (`retries`), and a hand-back ([`Command::HandBack`](super::command::Command)) is not a
/// lost lease.
pub const MAX_LOST_LEASES: u32 = 5;

type Applied = Result<Result<Response, StateError>, KvError>;

impl StateMachine {
    pub(super) fn lease(&mut self, txn: &mut Txn<'_>, ctx: ApplyCtx, requests: &[LeaseRequest]) -> Applied {
        if requests.len() > validate::MAX_LEASE_REQUESTS {
            return Ok(Err(StateError::invalid(
                "requests",
                format!("{} is over the limit of {}", requests.len(), validate::MAX_LEASE_REQUESTS),
            )));
        }
        for (i, r) in requests.iter().enumerate() {
            if let Err(e) = validate::agent_attrs(&format!("requests[{i}].attributes"), &r.attrs) {
                return Ok(Err(e));
            }
        }
        let mut grants = Vec::new();
        let cursor_before = self.rr_cursor.clone();
        for req in requests {
            // The API edge refused it already; a registration changed since gets nothing.
            if super::fleet::allowed(self.registrations.get(&req.agent_id), &req.attrs).is_err() {
                continue;
            }
            self.record_agent(txn, ctx, &req.agent_id, &req.attrs, req.slots);
            let want = req.max_tasks.min(validate::MAX_TASKS_PER_LEASE_REQUEST);
            for _ in 0..want {
                let serves = self.serves(&req.attrs);
                let Some((tenant, id)) =
                    placement::pick(&self.idx, &self.tenants, &self.codes, &self.rr_cursor, &req.attrs, serves)
                else {
                    break;
                };
                self.rr_cursor = tenant;
                let Some(old) = self.read_task(txn, id)? else {
                    return Err(KvError(format!("task {id} is indexed as ready but missing from the table")));
                };
                let mut t = old.task.clone();
                t.state = TaskState::Running;
                t.attempts += 1;
                t.lease = Some(Lease { agent_id: req.agent_id.clone(), epoch: ctx.index, granted_ms: ctx.now_ms });
                self.write_task(txn, &old, &t);
                grants.push(Grant { agent_id: req.agent_id.clone(), task_id: id, epoch: ctx.index });
            }
        }
        if self.rr_cursor != cursor_before {
            txn.put(keys::META_RR_CURSOR.to_vec(), keys::encode(&self.rr_cursor));
        }
        Ok(Ok(Response::Leased { grants }))
    }

    /// The task if `lease` (held by `agent_id`) is its current lease.
    fn current(
        &self,
        txn: &Txn<'_>,
        lease: LeaseRef,
        agent_id: Option<&str>,
    ) -> Result<Result<TaskRow, StateError>, KvError> {
        let stale = StateError::StaleEpoch { task_id: lease.task_id, epoch: lease.epoch };
        let Some(row) = self.read_task(txn, lease.task_id)? else {
            return Ok(Err(StateError::TaskNotFound(lease.task_id)));
        };
        let ok = row.task.state == TaskState::Running
            && row
                .task
                .lease
                .as_ref()
                .is_some_and(|l| l.epoch == lease.epoch && agent_id.is_none_or(|a| a == l.agent_id));
        Ok(if ok { Ok(row) } else { Err(stale) })
    }

    pub(super) fn complete(&mut self, txn: &mut Txn<'_>, ctx: ApplyCtx, completions: &[Completion]) -> Applied {
        if completions.len() > validate::MAX_COMPLETIONS {
            return Ok(Err(StateError::invalid(
                "completions",
                format!("{} is over the limit of {}", completions.len(), validate::MAX_COMPLETIONS),
            )));
        }
        let mut results = Vec::with_capacity(completions.len());
        for c in completions {
            let old = match self.current(txn, c.lease, Some(&c.agent_id))? {
                Ok(row) => row,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let mut t = old.task.clone();
            let end = AttemptEnd {
                reason: classify(c),
                exit_code: c.exit_code,
                oom_killed: c.oom_killed,
                started_ms: c.started_ms,
                peak_memory_bytes: c.peak_memory_bytes,
                error: c.error.clone(),
            };
            settle(&mut t, end, ctx.now_ms, Settle::Retry);
            self.write_task(txn, &old, &t);
            results.push(Ok(()));
        }
        Ok(Ok(Response::Completed { results }))
    }

    pub(super) fn expire_leases(
        &mut self,
        txn: &mut Txn<'_>,
        ctx: ApplyCtx,
        leases: &[LeaseRef],
        reason: ExpireReason,
    ) -> Applied {
        let mut expired = Vec::new();
        for lease in leases {
            // Expiring a lease that has since completed or been re-granted is a no-op: the
            // leader's view may be one entry behind.
            let Ok(old) = self.current(txn, *lease, None)? else { continue };
            let mut t = old.task.clone();
            let end = match reason {
                ExpireReason::LeaseLost => AttemptEnd::failed(
                    FailureReason::RunnerLost,
                    "lease lost: its agent went silent past the lease TTL".into(),
                ),
                ExpireReason::TimedOut => AttemptEnd::failed(
                    FailureReason::Timeout,
                    format!("timed out after {} ms (control plane backstop)", t.timeout_ms),
                ),
            };
            settle(&mut t, end, ctx.now_ms, Settle::Retry);
            self.write_task(txn, &old, &t);
            expired.push(lease.task_id);
        }
        Ok(Ok(Response::Expired { task_ids: expired }))
    }

    /// Re-queues each task whose current lease `agent_id` hands back; `lost_leases` and
    /// `retries_left` stay as they are (see [`Command::HandBack`](super::command::Command)).
    pub(super) fn hand_back(
        &mut self,
        txn: &mut Txn<'_>,
        ctx: ApplyCtx,
        agent_id: &str,
        leases: &[LeaseRef],
    ) -> Applied {
        if leases.len() > validate::MAX_COMPLETIONS {
            return Ok(Err(StateError::invalid(
                "leases",
                format!("{} entries is over the limit of {}", leases.len(), validate::MAX_COMPLETIONS),
            )));
        }
        let mut handed_back = Vec::new();
        for lease in leases {
            // Not (or no longer) this agent's current lease: skipped, as a completion of it
            // would be refused. A lease named twice is skipped the second time.
            let Ok(old) = self.current(txn, *lease, Some(agent_id))? else { continue };
            let mut t = old.task.clone();
            let end = AttemptEnd::failed(
                FailureReason::Infrastructure,
                format!("handed back by agent {agent_id} (draining, or its container engine failed); no retry used"),
            );
            settle(&mut t, end, ctx.now_ms, Settle::HandBack);
            self.write_task(txn, &old, &t);
            handed_back.push(lease.task_id);
        }
        Ok(Ok(Response::HandedBack { task_ids: handed_back }))
    }
}

/// What ended an attempt, before the task's next state is decided.
pub(super) struct AttemptEnd {
    reason: Option<FailureReason>,
    exit_code: Option<i32>,
    oom_killed: bool,
    started_ms: u64,
    peak_memory_bytes: u64,
    error: String,
}

impl AttemptEnd {
    /// An end the control plane records itself (no container facts).
    pub(super) fn failed(reason: FailureReason, error: String) -> AttemptEnd {
        AttemptEnd {
            reason: Some(reason),
            exit_code: None,
            oom_killed: false,
            started_ms: 0,
            peak_memory_bytes: 0,
            error,
        }
    }
}

/// Whether the end may use the retry policy, re-queues at no cost (a hand-back), or
/// ends the task `cancelled` (the tenant cancelled it while it ran).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Settle {
    Retry,
    HandBack,
    Cancel,
}

/// The failure reason of an agent's report (see [`Outcome`]).
pub(super) fn classify(c: &Completion) -> Option<FailureReason> {
    match c.outcome {
        Outcome::Success => None,
        Outcome::Error if c.oom_killed => Some(FailureReason::Oom),
        Outcome::Error if c.exit_code.is_some() => Some(FailureReason::ExitCode),
        Outcome::Error | Outcome::Infrastructure => Some(FailureReason::Infrastructure),
        Outcome::Timeout => Some(FailureReason::Timeout),
        Outcome::Killed => Some(FailureReason::Cancelled),
        Outcome::ImagePull => Some(FailureReason::ImagePull),
    }
}

/// Ends a running task's attempt at `now_ms`: records it, then decides the next state by
/// the rules of [`super::retry`]: success completes; a retried failure re-queues, after
/// its backoff as a delayed task; anything else finishes the task with the state its
/// reason calls for (`timeout`, `killed` for `cancelled`, `error` for the rest).
pub(super) fn settle(t: &mut Task, end: AttemptEnd, now_ms: u64, how: Settle) {
    let lease = t.lease.take().unwrap_or(Lease { agent_id: String::new(), epoch: 0, granted_ms: now_ms });
    let mut attempt = Attempt {
        number: t.attempts,
        agent_id: lease.agent_id,
        epoch: lease.epoch,
        granted_ms: lease.granted_ms,
        started_ms: end.started_ms,
        finished_ms: now_ms,
        exit_code: end.exit_code,
        reason: end.reason,
        peak_memory_bytes: end.peak_memory_bytes,
        error: retry::truncate_error(&end.error, MAX_ATTEMPT_ERROR_BYTES),
        retry_delay_ms: 0,
    };
    t.reason = end.reason;
    let next = match (end.reason, how) {
        (_, Settle::Cancel) => TaskState::Cancelled,
        (None, _) => TaskState::Complete,
        (Some(_), Settle::HandBack) => TaskState::Queued,
        (Some(FailureReason::RunnerLost), Settle::Retry) => {
            t.lost_leases += 1;
            if t.lost_leases < MAX_LOST_LEASES && t.retry.retry_on.contains(FailureReason::RunnerLost) {
                TaskState::Queued
            } else {
                TaskState::Error
            }
        }
        (Some(r), Settle::Retry) if t.retries_left > 0 && t.retry.retry_on.contains(r) => {
            t.retries_left -= 1;
            let n = t.max_retries.saturating_sub(t.retries_left).max(1);
            attempt.retry_delay_ms = retry::backoff_ms(&t.retry, t.id, n);
            t.ready_at_ms = now_ms.saturating_add(attempt.retry_delay_ms);
            if attempt.retry_delay_ms > 0 { TaskState::Delayed } else { TaskState::Queued }
        }
        (Some(FailureReason::Timeout), Settle::Retry) => TaskState::Timeout,
        (Some(FailureReason::Cancelled), Settle::Retry) => TaskState::Killed,
        (Some(_), Settle::Retry) => TaskState::Error,
    };
    if next.is_finished() || how != Settle::HandBack {
        let mut error = end.error;
        if next == TaskState::Error && end.reason == Some(FailureReason::RunnerLost) {
            error = format!("lease lost {} times", t.lost_leases);
        }
        t.result = Some(TaskResult {
            exit_code: end.exit_code,
            oom_killed: end.oom_killed,
            error,
            started_ms: end.started_ms,
            finished_ms: now_ms,
            peak_memory_bytes: end.peak_memory_bytes,
        });
    }
    if t.attempt_log.len() >= MAX_ATTEMPTS_KEPT {
        t.attempt_log.remove(0);
    }
    t.attempt_log.push(attempt);
    t.state = next;
}
