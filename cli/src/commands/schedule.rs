//! `drover schedule create|list|get|delete|pause|resume` (tenant API). Times are shown
//! in UTC (RFC 3339); a cron schedule's expression is evaluated in its own zone.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use drover_proto::v1 as pv;
use serde_json::{Value, json};

use super::client::{Conn, explain, tenant};
use super::output::{Format, print_json, state_name};

#[derive(Args)]
pub struct ScheduleArgs {
    #[command(flatten)]
    conn: Conn,
    /// Output format: aligned tables for people, or JSON for scripts.
    #[arg(long, short = 'o', value_enum, default_value = "table", global = true)]
    output: Format,
    #[command(subcommand)]
    cmd: ScheduleCmd,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OverlapArg {
    /// Skip a tick while the previous run is queued or running.
    Skip,
    /// Queue every tick.
    Allow,
    /// Hold one tick and queue it when the previous run ends.
    QueueOne,
}

#[derive(Args)]
struct CreateArgs {
    /// The code each tick queues a task of.
    code: String,
    /// A cron expression: 5 fields (minute first) or 6 (second first), or @hourly etc.
    #[arg(long, required_unless_present = "every", conflicts_with = "every")]
    cron: Option<String>,
    /// The IANA time zone of --cron (default UTC), for example Europe/Berlin.
    #[arg(long, requires = "cron")]
    tz: Option<String>,
    /// A fixed period, for example 30s or 1h (at least 1s).
    #[arg(long, value_parser = humantime::parse_duration)]
    every: Option<Duration>,
    /// No run before this time (RFC 3339, for example 2027-01-01T09:00:00Z).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    start_at: Option<SystemTime>,
    /// No run after this time (RFC 3339).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    end_at: Option<SystemTime>,
    /// Stop after this many runs.
    #[arg(long)]
    run_times: Option<u32>,
    /// What a tick does while the previous run is still active.
    #[arg(long, value_enum, default_value = "skip")]
    overlap: OverlapArg,
    /// After an outage, run the latest missed tick if it is at most this old (default 1m).
    #[arg(long, value_parser = humantime::parse_duration)]
    catch_up: Option<Duration>,
    #[command(flatten)]
    task: super::task_flags::TaskFlags,
}

#[derive(Subcommand)]
enum ScheduleCmd {
    /// Queue CODE on a cron expression or every fixed period.
    Create(Box<CreateArgs>),
    /// Your schedules, with their next fire time and state.
    List,
    /// A schedule, its next five fire times and its last run.
    Get {
        /// The schedule's id.
        id: u64,
    },
    /// Delete a schedule (tasks it already queued are kept).
    Delete {
        /// The schedule's id.
        id: u64,
    },
    /// Stop firing until resumed (ticks while paused are not run, nor counted as missed).
    Pause {
        /// The schedule's id.
        id: u64,
    },
    /// Fire again from the next tick on.
    Resume {
        /// The schedule's id.
        id: u64,
    },
}

fn ms(t: SystemTime) -> anyhow::Result<u64> {
    Ok(t.duration_since(UNIX_EPOCH).context("a time before 1970")?.as_millis() as u64)
}

fn when(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn timing(s: &pv::Schedule) -> String {
    if s.cron.is_empty() {
        format!("every {}", humantime::format_duration(Duration::from_millis(s.run_every_ms)))
    } else {
        format!("cron {:?} {}", s.cron, s.timezone)
    }
}

fn overlap_name(o: i32) -> &'static str {
    match pv::Overlap::try_from(o) {
        Ok(pv::Overlap::Allow) => "allow",
        Ok(pv::Overlap::QueueOne) => "queue_one",
        _ => "skip",
    }
}

fn schedule_json(s: &pv::Schedule) -> Value {
    let task = s.task.clone().unwrap_or_default();
    json!({
        "id": s.id,
        "code": task.code,
        "cron": s.cron,
        "timezone": s.timezone,
        "run_every_ms": s.run_every_ms,
        "start_at_ms": s.start_at_ms,
        "end_at_ms": s.end_at_ms,
        "run_times": s.run_times,
        "overlap": overlap_name(s.overlap),
        "catch_up_ms": s.catch_up_ms,
        "paused": s.paused,
        "created_ms": s.created_ms,
        "next_ticks_ms": s.next_ticks_ms,
        "fired": s.fired,
        "missed": s.missed,
        "skipped": s.skipped,
        "failed": s.failed,
        "last_error": s.last_error,
        "last_tick_ms": s.last_tick_ms,
        "last_task_id": s.last_task_id,
        "last_task_state": if s.last_task_id == 0 { Value::Null } else { state_name(s.last_task_state).into() },
        "owed_tick_ms": s.owed_tick_ms,
    })
}

fn print_table(list: &[pv::Schedule]) {
    outln!("{:<6} {:<20} {:<36} {:<8} {:<21} {:>6} {:>6}", "ID", "CODE", "TIMING", "STATE", "NEXT", "FIRED", "MISSED");
    for s in list {
        let code = s.task.as_ref().map(|t| t.code.as_str()).unwrap_or("");
        let state = if s.paused {
            "paused"
        } else if s.next_ticks_ms.is_empty() {
            "ended"
        } else {
            "active"
        };
        let next = s.next_ticks_ms.first().map(|t| when(*t)).unwrap_or_else(|| "-".into());
        outln!("{:<6} {:<20} {:<36} {:<8} {:<21} {:>6} {:>6}", s.id, code, timing(s), state, next, s.fired, s.missed);
    }
}

fn print_one(s: &pv::Schedule) {
    let task = s.task.clone().unwrap_or_default();
    outln!("schedule {}: {} queues {} (overlap {})", s.id, timing(s), task.code, overlap_name(s.overlap));
    if s.paused {
        outln!("paused");
    }
    if s.next_ticks_ms.is_empty() && !s.paused {
        outln!("ended: no more ticks");
    }
    for t in &s.next_ticks_ms {
        outln!("next   {}", when(*t));
    }
    let last = if s.last_task_id == 0 {
        "none yet".to_string()
    } else {
        let state = if s.last_task_state == 0 { "purged" } else { state_name(s.last_task_state) };
        format!("task {} for tick {} ({state})", s.last_task_id, when(s.last_tick_ms))
    };
    outln!("last   {last}");
    outln!(
        "ticks  {} fired, {} missed (catch-up window {}), {} skipped by overlap, {} failed",
        s.fired,
        s.missed,
        humantime::format_duration(Duration::from_millis(s.catch_up_ms)),
        s.skipped,
        s.failed
    );
    if !s.last_error.is_empty() {
        outln!("error  {}", s.last_error);
    }
    if s.owed_tick_ms != 0 {
        outln!("owed   tick {} runs when the last task ends", when(s.owed_tick_ms));
    }
}

pub async fn run(a: ScheduleArgs) -> anyhow::Result<()> {
    let mut t = tenant(&a.conn).await?;
    let one = match a.cmd {
        ScheduleCmd::Create(c) => {
            let CreateArgs { code, cron, tz, every, start_at, end_at, run_times, overlap, catch_up, task } = *c;
            let req = pv::CreateScheduleRequest {
                cron: cron.unwrap_or_default(),
                timezone: tz.unwrap_or_default(),
                run_every_ms: every.map(|d| d.as_millis() as u64).unwrap_or(0),
                start_at_ms: start_at.map(ms).transpose()?.unwrap_or(0),
                end_at_ms: end_at.map(ms).transpose()?.unwrap_or(0),
                run_times: run_times.unwrap_or(0),
                task: Some(task.new_task(code, None)?),
                overlap: match overlap {
                    OverlapArg::Skip => pv::Overlap::Skip,
                    OverlapArg::Allow => pv::Overlap::Allow,
                    OverlapArg::QueueOne => pv::Overlap::QueueOne,
                } as i32,
                catch_up_ms: catch_up.map(|d| d.as_millis() as u64).unwrap_or(0),
            };
            let s = t.create_schedule(req).await.map_err(|s| explain(&s))?.into_inner();
            if a.output == Format::Table {
                outln!(
                    "schedule {} created; first run {}",
                    s.id,
                    s.next_ticks_ms.first().map(|t| when(*t)).unwrap_or_default()
                );
                return Ok(());
            }
            s
        }
        ScheduleCmd::List => {
            let r = t.list_schedules(pv::ListSchedulesRequest {}).await.map_err(|s| explain(&s))?.into_inner();
            match a.output {
                Format::Json => print_json(&Value::Array(r.schedules.iter().map(schedule_json).collect())),
                Format::Table => print_table(&r.schedules),
            }
            return Ok(());
        }
        ScheduleCmd::Get { id } => {
            t.get_schedule(pv::GetScheduleRequest { id }).await.map_err(|s| explain(&s))?.into_inner()
        }
        ScheduleCmd::Delete { id } => {
            t.delete_schedule(pv::DeleteScheduleRequest { id }).await.map_err(|s| explain(&s))?;
            if a.output == Format::Table {
                outln!("schedule {id} deleted");
            }
            return Ok(());
        }
        ScheduleCmd::Pause { id } | ScheduleCmd::Resume { id } => {
            let paused = matches!(a.cmd, ScheduleCmd::Pause { .. });
            t.pause_schedule(pv::PauseScheduleRequest { id, paused }).await.map_err(|s| explain(&s))?.into_inner()
        }
    };
    match a.output {
        Format::Json => print_json(&schedule_json(&one)),
        Format::Table => print_one(&one),
    }
    Ok(())
}
