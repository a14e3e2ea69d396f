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

pub fn task_json(t: &pv::Task) -> Value {
    let r = t.result.clone().unwrap_or_default();
    json!({
        "id": t.id,
        "code": t.code,
        "state": state_name(t.state),
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
