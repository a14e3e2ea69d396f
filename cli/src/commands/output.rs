//! Output for the client commands: aligned tables for people, JSON (`--output json`) for
//! scripts, and the JSON shapes of tenant objects.

use drover_proto::v1 as pv;
use serde_json::{Value, json};

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
    })
}

pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

pub fn task_table(tasks: &[pv::Task]) {
    println!("{:<22} {:<20} {:<10} {:>4} {:>8} {:>5}  RESULT", "ID", "CODE", "STATE", "PRIO", "ATTEMPTS", "EXIT");
    for t in tasks {
        let r = t.result.clone().unwrap_or_default();
        let exit = r.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
        let note = if r.oom_killed { "out of memory".to_string() } else { r.error.clone() };
        println!(
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
