//! Output for the client commands: aligned tables for people, JSON (`--output json`) for
//! scripts, and the JSON shapes of tenant objects.

use std::io::Write;

use drover_proto::v1 as pv;
use serde_json::{Value, json};

/// Writes command output to stdout. When the reader has gone (a closed pipe) the process
/// ends at once with status 0: there is nobody left to tell.
pub fn emit(args: std::fmt::Arguments<'_>, newline: bool) {
    let mut out = std::io::stdout().lock();
    let r = out.write_fmt(args).and_then(|()| if newline { out.write_all(b"\n") } else { Ok(()) });
    if let Err(e) = r.and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// Whether an error comes from writing to a closed pipe.
pub fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

pub fn state_name(s: i32) -> &'static str {
    match pv::TaskState::try_from(s) {
        Ok(pv::TaskState::Delayed) => "delayed",
        Ok(pv::TaskState::Queued) => "queued",
        Ok(pv::TaskState::Running) => "running",
        Ok(pv::TaskState::Complete) => "complete",
        Ok(pv::TaskState::Error) => "error",
        Ok(pv::TaskState::Timeout) => "timeout",
        Ok(pv::TaskState::Killed) => "killed",
        Ok(pv::TaskState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

pub fn parse_state(s: &str) -> anyhow::Result<pv::TaskState> {
    Ok(match s {
        "delayed" => pv::TaskState::Delayed,
        "queued" => pv::TaskState::Queued,
        "running" => pv::TaskState::Running,
        "complete" => pv::TaskState::Complete,
        "error" => pv::TaskState::Error,
        "timeout" => pv::TaskState::Timeout,
        "killed" => pv::TaskState::Killed,
        "cancelled" => pv::TaskState::Cancelled,
        other => anyhow::bail!(
            "--state {other:?}: expected one of delayed, queued, running, complete, error, timeout, killed, cancelled"
        ),
    })
}

pub fn finished(s: i32) -> bool {
    !matches!(pv::TaskState::try_from(s), Ok(pv::TaskState::Delayed | pv::TaskState::Queued | pv::TaskState::Running))
}

/// The taxonomy name of a failure reason; `None` for no failure.
pub fn reason_name(r: i32) -> Option<&'static str> {
    Some(match pv::FailureReason::try_from(r) {
        Ok(pv::FailureReason::ExitCode) => "exit_code",
        Ok(pv::FailureReason::Oom) => "oom",
        Ok(pv::FailureReason::Timeout) => "timeout",
        Ok(pv::FailureReason::ImagePull) => "image_pull",
        Ok(pv::FailureReason::RunnerLost) => "runner_lost",
        Ok(pv::FailureReason::Infrastructure) => "infrastructure",
        Ok(pv::FailureReason::Cancelled) => "cancelled",
        Ok(pv::FailureReason::Unspecified) => return None,
        Err(_) => "unknown",
    })
}

/// Parses `--retry-on` values (the taxonomy names).
pub fn parse_reason(s: &str) -> anyhow::Result<pv::FailureReason> {
    Ok(match s {
        "exit_code" => pv::FailureReason::ExitCode,
        "oom" => pv::FailureReason::Oom,
        "timeout" => pv::FailureReason::Timeout,
        "image_pull" => pv::FailureReason::ImagePull,
        "runner_lost" => pv::FailureReason::RunnerLost,
        "infrastructure" => pv::FailureReason::Infrastructure,
        "cancelled" => pv::FailureReason::Cancelled,
        other => anyhow::bail!(
            "--retry-on {other:?}: expected one of exit_code, oom, timeout, image_pull, runner_lost, infrastructure, cancelled"
        ),
    })
}

/// `--retry-on` values as wire enum numbers (comma-separated or repeated).
pub fn retry_on_arg(values: &[String]) -> anyhow::Result<Vec<i32>> {
    let mut out = Vec::new();
    for v in values.iter().flat_map(|v| v.split(',')).map(str::trim).filter(|v| !v.is_empty()) {
        out.push(parse_reason(v)? as i32);
    }
    Ok(out)
}

fn reasons_json(list: &[i32]) -> Value {
    Value::Array(list.iter().filter_map(|r| reason_name(*r)).map(|n| json!(n)).collect())
}

fn attempt_json(a: &pv::Attempt) -> Value {
    json!({
        "number": a.number,
        "agent_id": a.agent_id,
        "lease_epoch": a.lease_epoch,
        "granted_ms": a.granted_ms,
        "started_ms": a.started_ms,
        "finished_ms": a.finished_ms,
        "exit_code": a.exit_code,
        "reason": reason_name(a.reason),
        "peak_memory_bytes": a.peak_memory_bytes,
        "error": a.error,
        "retry_delay_ms": a.retry_delay_ms,
    })
}

/// Why a task is not running, with its reason in snake case (`no_agent_matches`).
fn waiting_json(w: &pv::Waiting) -> Value {
    let reason = pv::WaitingReason::try_from(w.reason)
        .map(|r| r.as_str_name().trim_start_matches("WAITING_REASON_").to_ascii_lowercase())
        .unwrap_or_else(|_| w.reason.to_string());
    json!({
        "reason": reason,
        "message": w.message,
        "until_ms": w.until_ms,
        "constraint": w.constraint,
        "limit": w.limit,
        "running": w.running,
    })
}

pub fn task_json(t: &pv::Task) -> Value {
    let r = t.result.clone().unwrap_or_default();
    json!({
        "id": t.id,
        "code": t.code,
        "state": state_name(t.state),
        "reason": reason_name(t.reason),
        "max_retries": t.max_retries,
        "retry_delay_ms": t.retry_delay_ms,
        "retry_backoff_max_ms": t.retry_backoff_max_ms,
        "retry_on": reasons_json(&t.retry_on),
        "ready_at_ms": t.ready_at_ms,
        "attempt_log": t.attempt_log.iter().map(attempt_json).collect::<Vec<_>>(),
        "waiting": t.waiting.as_ref().map(waiting_json),
        "priority": t.priority,
        "attempts": t.attempts,
        "retries_left": t.retries_left,
        "lost_leases": t.lost_leases,
        "created_ms": t.created_ms,
        "timeout_ms": t.timeout_ms,
        "agent_id": t.agent_id,
        "lease_epoch": t.lease_epoch,
        "payload_bytes": t.payload_bytes,
        "result": t.result.as_ref().map(|_| json!({
            "exit_code": r.exit_code,
            "oom_killed": r.oom_killed,
            "error": r.error,
            "started_ms": r.started_ms,
            "finished_ms": r.finished_ms,
            "peak_memory_bytes": r.peak_memory_bytes,
        })),
    })
}

pub fn code_json(c: &pv::Code) -> Value {
    let l = c.limits.unwrap_or_default();
    json!({
        "name": c.name,
        "image": c.image,
        "command": c.command,
        "env": c.env,
        "memory_bytes": l.memory_bytes,
        "cpu_millis": l.cpu_millis,
        "pids": l.pids,
        "timeout_ms": l.timeout_ms,
        "max_concurrency": c.max_concurrency,
        "default_retries": c.default_retries,
        "retry_delay_ms": c.retry_delay_ms,
        "retry_backoff_max_ms": c.retry_backoff_max_ms,
        "retry_on": reasons_json(&c.retry_on),
        "webhook_enabled": c.webhook_enabled,
    })
}

pub fn print_json(v: &Value) {
    outln!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

pub fn task_table(tasks: &[pv::Task]) {
    outln!("{:<22} {:<20} {:<10} {:>4} {:>8} {:>5}  RESULT", "ID", "CODE", "STATE", "PRIO", "ATTEMPTS", "EXIT");
    for t in tasks {
        let r = t.result.clone().unwrap_or_default();
        let exit = r.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
        let note = if r.oom_killed { "out of memory".to_string() } else { r.error.clone() };
        let note = match reason_name(t.reason) {
            Some(why) if finished(t.state) => format!("[{why}] {note}"),
            _ => note,
        };
        outln!(
            "{:<22} {:<20} {:<10} {:>4} {:>8} {:>5}  {}",
            t.id,
            t.code,
            state_name(t.state),
            t.priority,
            t.attempts,
            exit,
            note
        );
    }
}

fn ms(d: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(d)).to_string()
}

/// Unix milliseconds as RFC 3339 (UTC, milliseconds), or `-` for 0.
fn at(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

/// `task get`: the task, its retry policy, and one line per attempt.
pub fn task_detail(t: &pv::Task) {
    task_table(std::slice::from_ref(t));
    let on: Vec<&str> = t.retry_on.iter().filter_map(|r| reason_name(*r)).collect();
    outln!(
        "retries: {} of {} left, delay {} doubling to at most {}, on {}",
        t.retries_left,
        t.max_retries,
        ms(t.retry_delay_ms),
        ms(t.retry_backoff_max_ms),
        if on.is_empty() { "-".to_string() } else { on.join(",") }
    );
    if let Some(w) = &t.waiting {
        outln!("waiting: {}", w.message);
    }
    if t.attempt_log.is_empty() {
        return;
    }
    outln!(
        "{:>3} {:<16} {:>10} {:<24} {:<24} {:>5} {:<14} {:>10} {:>8}  ERROR",
        "#",
        "AGENT",
        "EPOCH",
        "STARTED",
        "ENDED",
        "EXIT",
        "REASON",
        "PEAK MEM",
        "BACKOFF"
    );
    for a in &t.attempt_log {
        outln!(
            "{:>3} {:<16} {:>10} {:<24} {:<24} {:>5} {:<14} {:>10} {:>8}  {}",
            a.number,
            a.agent_id,
            a.lease_epoch,
            at(if a.started_ms > 0 { a.started_ms } else { a.granted_ms }),
            at(a.finished_ms),
            a.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            reason_name(a.reason).unwrap_or("-"),
            if a.peak_memory_bytes > 0 { bytesize::ByteSize(a.peak_memory_bytes).to_string() } else { "-".into() },
            if a.retry_delay_ms > 0 { ms(a.retry_delay_ms) } else { "-".into() },
            a.error
        );
    }
}
