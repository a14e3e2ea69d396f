//! The schedule calls of `drover.v1.Tenant`: create, get, list, delete, pause and
//! resume, always scoped to the calling tenant (another tenant's schedule answers as a
//! missing one). Writes are proposed; reads pass the read barrier, then read this node's
//! tables. A schedule's next five fire times are computed here, from the same timing code
//! `apply` uses, not stored.

use drover_proto::v1 as pv;

use super::ApiCtx;
use super::convert;
use super::error::ApiError;
use crate::state::command::Command;
use crate::state::kv::KvRead;
use crate::state::schedules::{self, Overlap, Schedule, ScheduleSpec};
use crate::state::timing::{ScheduleTiming, Timing};
use crate::state::{Response as SmResponse, views};

/// How many upcoming fire times a schedule shows.
const UPCOMING: usize = 5;

fn spec_in(r: pv::CreateScheduleRequest) -> Result<ScheduleSpec, ApiError> {
    let timing = match (r.cron.is_empty(), r.run_every_ms) {
        (false, 0) => Timing::Cron { expr: r.cron, tz: if r.timezone.is_empty() { "UTC".into() } else { r.timezone } },
        (true, every_ms) if every_ms > 0 => {
            if !r.timezone.is_empty() {
                return Err(ApiError::invalid("timezone", "applies to cron schedules only"));
            }
            Timing::Every { every_ms }
        }
        (false, _) => return Err(ApiError::invalid("cron", "give either cron or run_every, not both")),
        (true, _) => return Err(ApiError::invalid("cron", "a schedule needs cron or run_every")),
    };
    let overlap = match pv::Overlap::try_from(r.overlap) {
        Ok(pv::Overlap::Skip) => Overlap::Skip,
        Ok(pv::Overlap::Allow) => Overlap::Allow,
        Ok(pv::Overlap::QueueOne) => Overlap::QueueOne,
        Err(_) => return Err(ApiError::invalid("overlap", format!("unknown overlap policy {}", r.overlap))),
    };
    let task = r.task.ok_or_else(|| ApiError::invalid("task", "is required"))?;
    Ok(ScheduleSpec {
        timing: ScheduleTiming { timing, start_at_ms: r.start_at_ms, end_at_ms: r.end_at_ms, run_times: r.run_times },
        task: convert::new_task_in("task", task)?,
        overlap,
        catch_up_ms: r.catch_up_ms,
    })
}

/// The next fire times of `s`, as many as [`UPCOMING`].
fn upcoming(s: &Schedule) -> Vec<u64> {
    let Some(first) = s.next_tick_ms.filter(|_| !s.paused) else { return Vec::new() };
    let Ok(clock) = s.spec.timing.clock(s.created_ms) else { return Vec::new() };
    let mut out = vec![first];
    while out.len() < UPCOMING {
        let after = out[out.len() - 1].saturating_add(1);
        match s.spec.timing.next_from(&clock, after, s.fired + out.len() as u64) {
            Some(t) => out.push(t),
            None => break,
        }
    }
    out
}

fn schedule_out(kv: &dyn KvRead, s: &Schedule) -> Result<pv::Schedule, ApiError> {
    let (cron, timezone, run_every_ms) = match &s.spec.timing.timing {
        Timing::Cron { expr, tz } => (expr.clone(), tz.clone(), 0),
        Timing::Every { every_ms } => (String::new(), String::new(), *every_ms),
    };
    let last_task_state = match s.last_task {
        Some(id) => views::get_task(kv, Some(&s.tenant), id)?.map(|t| convert::state_out(t.state)),
        None => None,
    };
    Ok(pv::Schedule {
        id: s.id,
        tenant: s.tenant.clone(),
        cron,
        timezone,
        run_every_ms,
        start_at_ms: s.spec.timing.start_at_ms,
        end_at_ms: s.spec.timing.end_at_ms,
        run_times: s.spec.timing.run_times,
        task: Some(convert::new_task_out(&s.spec.task)),
        overlap: match s.spec.overlap {
            Overlap::Skip => pv::Overlap::Skip,
            Overlap::Allow => pv::Overlap::Allow,
            Overlap::QueueOne => pv::Overlap::QueueOne,
        } as i32,
        catch_up_ms: if s.spec.catch_up_ms == 0 { schedules::DEFAULT_CATCH_UP_MS } else { s.spec.catch_up_ms },
        paused: s.paused,
        created_ms: s.created_ms,
        next_ticks_ms: upcoming(s),
        fired: s.fired,
        missed: s.missed,
        skipped: s.skipped,
        failed: s.failed,
        last_error: s.last_error.clone(),
        last_tick_ms: s.last_tick_ms.unwrap_or(0),
        last_task_id: s.last_task.unwrap_or(0),
        last_task_state: last_task_state.unwrap_or(pv::TaskState::Unspecified) as i32,
        owed_tick_ms: s.owed_tick_ms.unwrap_or(0),
    })
}

fn answer(ctx: &ApiCtx, r: SmResponse) -> Result<pv::Schedule, ApiError> {
    match r {
        SmResponse::Schedule(s) => schedule_out(&ctx.node.sm.kv(), &s),
        other => Err(ApiError::unexpected(other)),
    }
}

pub(super) async fn create(
    ctx: &ApiCtx,
    tenant: String,
    r: pv::CreateScheduleRequest,
) -> Result<pv::Schedule, ApiError> {
    let spec = spec_in(r)?;
    // Checked here with the tenant's limits as this node knows them, so bad input costs
    // no log entry; apply checks again.
    let limits = ctx.node.sm.machine()?.tenants().get(&tenant).map(|t| t.limits.clone());
    if let Some(limits) = &limits {
        schedules::validate_spec(&spec, limits)?;
    }
    let r = ctx.propose(Command::CreateSchedule { tenant, spec }).await?;
    answer(ctx, r)
}

pub(super) async fn get(ctx: &ApiCtx, tenant: &str, id: u64) -> Result<pv::Schedule, ApiError> {
    ctx.read_barrier().await?;
    let kv = ctx.node.sm.kv();
    let s =
        schedules::get_for(&kv, tenant, id)?.ok_or_else(|| ApiError::NotFound(format!("schedule {id} not found")))?;
    schedule_out(&kv, &s)
}

pub(super) async fn list(ctx: &ApiCtx, tenant: &str) -> Result<pv::ListSchedulesResponse, ApiError> {
    ctx.read_barrier().await?;
    let ids: Vec<u64> =
        ctx.node.sm.machine()?.schedules().by_tenant.get(tenant).into_iter().flatten().copied().collect();
    let kv = ctx.node.sm.kv();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(s) = schedules::get_for(&kv, tenant, id)? {
            out.push(schedule_out(&kv, &s)?);
        }
    }
    Ok(pv::ListSchedulesResponse { schedules: out })
}

pub(super) async fn delete(ctx: &ApiCtx, tenant: String, id: u64) -> Result<pv::DeleteScheduleResponse, ApiError> {
    match ctx.propose(Command::DeleteSchedule { tenant, id }).await? {
        SmResponse::ScheduleDeleted => Ok(pv::DeleteScheduleResponse {}),
        other => Err(ApiError::unexpected(other)),
    }
}

pub(super) async fn pause(ctx: &ApiCtx, tenant: String, id: u64, paused: bool) -> Result<pv::Schedule, ApiError> {
    let r = ctx.propose(Command::PauseSchedule { tenant, id, paused }).await?;
    answer(ctx, r)
}
