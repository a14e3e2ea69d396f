//! Conversions between wire messages and state-machine types. Inputs are checked for
//! ranges that the wire types allow but the state does not (u32 priority → u8).

use drover_proto::{admin as pa, v1 as pv};

use super::error::ApiError;
use crate::state::command::{CodeSpec, NewTask};
use crate::state::model::{
    Attempt, Code, CodeLimits, FailureReason, Placement, RetryOn, Task, TaskResult, TaskState, Tenant, TenantLimits,
};
use crate::state::placement::Waiting;
use crate::state::retry::{RetryOverride, RetryPolicy};
use crate::state::validate;

pub fn placement_in(p: Option<pv::Placement>) -> Placement {
    p.map(|p| Placement { cluster: p.cluster, region: p.region, labels: p.labels.into_iter().collect() })
        .unwrap_or_default()
}

pub fn placement_out(p: &Placement) -> pv::Placement {
    pv::Placement {
        cluster: p.cluster.clone(),
        region: p.region.clone(),
        labels: p.labels.clone().into_iter().collect(),
    }
}

pub fn reason_out(r: Option<FailureReason>) -> pv::FailureReason {
    match r {
        None => pv::FailureReason::Unspecified,
        Some(FailureReason::ExitCode) => pv::FailureReason::ExitCode,
        Some(FailureReason::Oom) => pv::FailureReason::Oom,
        Some(FailureReason::Timeout) => pv::FailureReason::Timeout,
        Some(FailureReason::ImagePull) => pv::FailureReason::ImagePull,
        Some(FailureReason::RunnerLost) => pv::FailureReason::RunnerLost,
        Some(FailureReason::Infrastructure) => pv::FailureReason::Infrastructure,
        Some(FailureReason::Cancelled) => pv::FailureReason::Cancelled,
    }
}

/// A wire `retry_on` list: empty is "not set"; each entry must name a reason.
pub fn retry_on_in(field: &str, list: &[i32]) -> Result<Option<RetryOn>, ApiError> {
    if list.is_empty() {
        return Ok(None);
    }
    let mut reasons = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let r = match pv::FailureReason::try_from(*v) {
            Ok(pv::FailureReason::ExitCode) => FailureReason::ExitCode,
            Ok(pv::FailureReason::Oom) => FailureReason::Oom,
            Ok(pv::FailureReason::Timeout) => FailureReason::Timeout,
            Ok(pv::FailureReason::ImagePull) => FailureReason::ImagePull,
            Ok(pv::FailureReason::RunnerLost) => FailureReason::RunnerLost,
            Ok(pv::FailureReason::Infrastructure) => FailureReason::Infrastructure,
            Ok(pv::FailureReason::Cancelled) => FailureReason::Cancelled,
            Ok(pv::FailureReason::Unspecified) | Err(_) => {
                return Err(ApiError::invalid(
                    format!("{field}[{i}]"),
                    format!(
                        "{v} is not a failure reason (exit_code, oom, timeout, image_pull, runner_lost, infrastructure, cancelled)"
                    ),
                ));
            }
        };
        reasons.push(r);
    }
    Ok(Some(RetryOn::from_reasons(reasons)))
}

fn retry_on_out(on: RetryOn) -> Vec<i32> {
    on.reasons().into_iter().map(|r| reason_out(Some(r)) as i32).collect()
}

pub fn code_spec_in(r: pv::RegisterCodeRequest) -> Result<CodeSpec, ApiError> {
    let l = r.limits.unwrap_or_default();
    let retry = RetryOverride {
        retry_delay_ms: r.retry_delay_ms,
        backoff_max_ms: r.retry_backoff_max_ms,
        retry_on: retry_on_in("retry_on", &r.retry_on)?,
    };
    Ok(CodeSpec {
        name: r.name,
        image: r.image,
        command: r.command,
        env: r.env.into_iter().collect(),
        limits: CodeLimits {
            memory_bytes: l.memory_bytes,
            cpu_millis: l.cpu_millis,
            pids: l.pids,
            timeout_ms: l.timeout_ms,
        },
        max_concurrency: r.max_concurrency,
        default_retries: r.default_retries,
        retry,
        placement: placement_in(r.placement),
    })
}

pub fn code_out(c: &Code) -> pv::Code {
    pv::Code {
        tenant: c.tenant.clone(),
        name: c.name.clone(),
        image: c.image.clone(),
        command: c.command.clone(),
        env: c.env.clone().into_iter().collect(),
        limits: Some(pv::CodeLimits {
            memory_bytes: c.limits.memory_bytes,
            cpu_millis: c.limits.cpu_millis,
            pids: c.limits.pids,
            timeout_ms: c.limits.timeout_ms,
        }),
        max_concurrency: c.max_concurrency,
        default_retries: c.default_retries,
        placement: Some(placement_out(&c.placement)),
        created_ms: c.created_ms,
        updated_ms: c.updated_ms,
        retry_delay_ms: c.retry.retry_delay_ms,
        retry_backoff_max_ms: c.retry.backoff_max_ms,
        retry_on: retry_on_out(c.retry.retry_on),
        // Filled in by the handlers that read the webhook table.
        webhook_enabled: false,
    }
}

pub fn new_tasks_in(tasks: Vec<pv::NewTask>) -> Result<Vec<NewTask>, ApiError> {
    if tasks.len() > validate::MAX_BATCH_TASKS {
        return Err(ApiError::invalid(
            "tasks",
            format!("{} tasks is over the batch limit of {}", tasks.len(), validate::MAX_BATCH_TASKS),
        ));
    }
    tasks.into_iter().enumerate().map(|(i, t)| new_task_in(&format!("tasks[{i}]"), t)).collect()
}

/// One task as the state machine takes it; errors name fields under `prefix`.
pub fn new_task_in(prefix: &str, t: pv::NewTask) -> Result<NewTask, ApiError> {
    let priority = u8::try_from(t.priority).ok().filter(|p| *p <= validate::MAX_PRIORITY).ok_or_else(|| {
        ApiError::invalid(
            format!("{prefix}.priority"),
            format!("{} is out of range 0..={}", t.priority, validate::MAX_PRIORITY),
        )
    })?;
    let retry = RetryOverride {
        retry_delay_ms: t.retry_delay_ms,
        backoff_max_ms: t.retry_backoff_max_ms,
        retry_on: retry_on_in(&format!("{prefix}.retry_on"), &t.retry_on)?,
    };
    Ok(NewTask {
        code: t.code,
        payload: t.payload,
        priority,
        delay_ms: t.delay_ms,
        timeout_ms: t.timeout_ms,
        retries: t.retries,
        retry,
        placement: t.placement.map(|p| placement_in(Some(p))),
    })
}

pub fn new_task_out(t: &NewTask) -> pv::NewTask {
    pv::NewTask {
        code: t.code.clone(),
        payload: t.payload.clone(),
        priority: u32::from(t.priority),
        delay_ms: t.delay_ms,
        timeout_ms: t.timeout_ms,
        retries: t.retries,
        retry_delay_ms: t.retry.retry_delay_ms,
        retry_backoff_max_ms: t.retry.backoff_max_ms,
        retry_on: t.retry.retry_on.map(retry_on_out).unwrap_or_default(),
        placement: t.placement.as_ref().map(placement_out),
    }
}

pub fn state_out(s: TaskState) -> pv::TaskState {
    match s {
        TaskState::Delayed => pv::TaskState::Delayed,
        TaskState::Queued => pv::TaskState::Queued,
        TaskState::Running => pv::TaskState::Running,
        TaskState::Complete => pv::TaskState::Complete,
        TaskState::Error => pv::TaskState::Error,
        TaskState::Timeout => pv::TaskState::Timeout,
        TaskState::Killed => pv::TaskState::Killed,
        TaskState::Cancelled => pv::TaskState::Cancelled,
    }
}

pub fn state_in(s: i32) -> Result<Option<TaskState>, ApiError> {
    let s = pv::TaskState::try_from(s).map_err(|_| ApiError::invalid("state", format!("unknown task state {s}")))?;
    Ok(match s {
        pv::TaskState::Unspecified => None,
        pv::TaskState::Delayed => Some(TaskState::Delayed),
        pv::TaskState::Queued => Some(TaskState::Queued),
        pv::TaskState::Running => Some(TaskState::Running),
        pv::TaskState::Complete => Some(TaskState::Complete),
        pv::TaskState::Error => Some(TaskState::Error),
        pv::TaskState::Timeout => Some(TaskState::Timeout),
        pv::TaskState::Killed => Some(TaskState::Killed),
        pv::TaskState::Cancelled => Some(TaskState::Cancelled),
    })
}

fn result_out(r: &TaskResult) -> pv::TaskResult {
    pv::TaskResult {
        exit_code: r.exit_code,
        oom_killed: r.oom_killed,
        error: r.error.clone(),
        started_ms: r.started_ms,
        finished_ms: r.finished_ms,
        peak_memory_bytes: r.peak_memory_bytes,
    }
}

fn attempt_out(a: &Attempt) -> pv::Attempt {
    pv::Attempt {
        number: a.number,
        agent_id: a.agent_id.clone(),
        lease_epoch: a.epoch,
        granted_ms: a.granted_ms,
        started_ms: a.started_ms,
        finished_ms: a.finished_ms,
        exit_code: a.exit_code,
        reason: reason_out(a.reason) as i32,
        peak_memory_bytes: a.peak_memory_bytes,
        error: a.error.clone(),
        retry_delay_ms: a.retry_delay_ms,
    }
}

pub fn task_out(t: &Task) -> pv::Task {
    let RetryPolicy { retry_delay_ms, backoff_max_ms, retry_on } = t.retry;
    pv::Task {
        id: t.id,
        tenant: t.tenant.clone(),
        code: t.code.clone(),
        priority: t.priority as u32,
        state: state_out(t.state) as i32,
        created_ms: t.created_ms,
        ready_at_ms: t.ready_at_ms,
        timeout_ms: t.timeout_ms,
        retries_left: t.retries_left,
        attempts: t.attempts,
        lost_leases: t.lost_leases,
        placement: Some(placement_out(&t.placement)),
        agent_id: t.lease.as_ref().map(|l| l.agent_id.clone()).unwrap_or_default(),
        lease_epoch: t.lease.as_ref().map(|l| l.epoch).unwrap_or(0),
        result: t.result.as_ref().map(result_out),
        payload_bytes: t.payload_bytes,
        payload: Vec::new(),
        schedule_id: t.schedule.map(|r| r.schedule_id).unwrap_or(0),
        schedule_tick_ms: t.schedule.map(|r| r.tick_ms).unwrap_or(0),
        max_retries: t.max_retries,
        retry_delay_ms,
        retry_backoff_max_ms: backoff_max_ms,
        retry_on: retry_on_out(retry_on),
        attempt_log: t.attempt_log.iter().map(attempt_out).collect(),
        reason: reason_out(t.reason) as i32,
        waiting: None,
    }
}

/// A time for people: RFC 3339 in UTC, to the second.
fn instant_out(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("{ms} ms after the epoch"))
}

pub fn waiting_out(w: &Waiting) -> pv::Waiting {
    use pv::WaitingReason as R;
    let mut out = pv::Waiting::default();
    let (reason, message) = match w {
        Waiting::Delayed { until_ms } => {
            out.until_ms = *until_ms;
            (R::Delayed, format!("delayed until {}", instant_out(*until_ms)))
        }
        Waiting::RetryBackoff { until_ms } => {
            out.until_ms = *until_ms;
            (R::RetryBackoff, format!("waiting for its retry backoff until {}", instant_out(*until_ms)))
        }
        Waiting::CodeMissing { code } => {
            (R::CodeMissing, format!("code {code:?} is not registered; it runs once the code is registered again"))
        }
        Waiting::CodeConcurrency { limit, running } => {
            (out.limit, out.running) = (*limit, *running);
            (R::CodeConcurrency, format!("held by its code's max_concurrency: {running} of {limit} running"))
        }
        Waiting::TenantConcurrency { limit, running } => {
            (out.limit, out.running) = (*limit, *running);
            (R::TenantConcurrency, format!("held by the tenant's max_concurrency: {running} of {limit} running"))
        }
        Waiting::NoAgentMatches { constraint } if constraint.is_empty() => {
            (R::NoAgentMatches, "no agent is connected".to_string())
        }
        Waiting::NoAgentMatches { constraint } => {
            out.constraint = constraint.clone();
            (R::NoAgentMatches, format!("no connected agent matches its placement: none meets {constraint}"))
        }
        Waiting::WaitingForSlot => {
            (R::WaitingForSlot, "waiting for a free slot on a matching agent (or behind earlier tasks)".to_string())
        }
    };
    out.reason = reason as i32;
    out.message = message;
    out
}

pub fn tenant_limits_in(l: Option<pa::TenantLimits>) -> TenantLimits {
    let d = validate::DEFAULT_TENANT_LIMITS;
    let l = l.unwrap_or_default();
    TenantLimits {
        max_queued_tasks: if l.max_queued_tasks == 0 { d.max_queued_tasks } else { l.max_queued_tasks },
        max_concurrency: l.max_concurrency,
        max_payload_bytes: if l.max_payload_bytes == 0 { d.max_payload_bytes } else { l.max_payload_bytes },
    }
}

pub fn tenant_out(t: &Tenant, queued: u64, running: u64) -> pa::TenantInfo {
    pa::TenantInfo {
        id: t.id.clone(),
        limits: Some(pa::TenantLimits {
            max_queued_tasks: t.limits.max_queued_tasks,
            max_concurrency: t.limits.max_concurrency,
            max_payload_bytes: t.limits.max_payload_bytes,
        }),
        created_ms: t.created_ms,
        queued_tasks: queued,
        running_tasks: running,
        allowed_cidrs: t.allowed_cidrs.clone(),
        mode: None,
    }
}
