//! Schedules: tasks queued on a timing ([`super::timing`]), each tick exactly once.
//!
//! A schedule stores the tick it expects next (`next_tick_ms`). The leader's ticker
//! proposes [`Command::FireSchedules`](super::command::Command::FireSchedules) naming
//! that tick once it is due; `apply` accepts a fire only for the tick the schedule
//! expects, then moves `next_tick_ms` past it. A fire proposed twice (a retried
//! proposal, two leaders around an election, a deposed leader's ticker) names a tick the
//! schedule no longer expects and is refused, so no tick fires twice whatever the leaders
//! do. Fires are also leader commands carrying their proposer's term (refused from a
//! later term, like every timer command).
//!
//! **Catch-up.** When a fire is applied, every tick from the expected one up to the
//! entry's time is due (there is more than one only when no leader fired for a while).
//! The latest of them fires if it is at most `catch_up_ms` old (default 60 s); the ones
//! before it, and the latest too if it is older, are skipped and counted in `missed`
//! (and `drover_schedule_ticks_missed_total`). Counting stops at
//! [`MAX_CATCH_UP_COUNT`] ticks per fire (the catch-up itself is exact).
//!
//! **Overlap** (`skip` by default): when a tick comes while the schedule's previous task
//! is still queued, delayed or running, `skip` drops the tick (counted in `skipped`),
//! `allow` queues another task, and `queue_one` keeps the tick owed and queues it when
//! the previous task finishes (the leader fires owed ticks; a later tick owed in turn
//! replaces an earlier one, which counts as skipped).
//!
//! A fire that cannot queue (the code was deleted, the tenant is over its quota) still
//! consumes its tick: it is counted in `failed` with the reason in `last_error`.
//!
//! Tasks a schedule queued carry [`ScheduleRun`] (schedule id and tick time). In memory:
//! the due index (`(next tick, id)`), the schedules with an owed tick, and each tenant's
//! schedule ids; all rebuilt from the `s/` table at load.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::command::{NewTask, Response};
use super::error::StateError;
use super::keys;
use super::kv::{KvError, KvRead, Txn};
use super::machine::{ApplyCtx, StateMachine};
use super::model::TenantLimits;
use super::timing::ScheduleTiming;
use super::validate;

pub const MAX_SCHEDULES_PER_TENANT: usize = 1_000;
pub const DEFAULT_CATCH_UP_MS: u64 = 60_000;
/// The catch-up window is at least a second (a tick is never fired the instant it is
/// due: the ticker and the commit take time) and at most a day.
pub const MIN_CATCH_UP_MS: u64 = 1_000;
pub const MAX_CATCH_UP_MS: u64 = 24 * 3600 * 1000;
/// Skipped ticks counted per fire at most (see the module doc).
pub const MAX_CATCH_UP_COUNT: u64 = 10_000;
/// Most fires in one command.
pub const MAX_FIRES: usize = 256;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Overlap {
    #[default]
    Skip,
    Allow,
    QueueOne,
}

/// What a tenant asks for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ScheduleSpec {
    pub timing: ScheduleTiming,
    /// The task each tick queues (`delay_ms` must be 0).
    pub task: NewTask,
    pub overlap: Overlap,
    /// 0 takes [`DEFAULT_CATCH_UP_MS`].
    pub catch_up_ms: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Schedule {
    pub id: u64,
    pub tenant: String,
    pub spec: ScheduleSpec,
    pub paused: bool,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// The tick the schedule expects next; None once it has no more (end_at passed,
    /// run_times reached).
    pub next_tick_ms: Option<u64>,
    /// A tick held by `queue_one` until the previous task finishes.
    pub owed_tick_ms: Option<u64>,
    /// Tasks queued.
    pub fired: u64,
    /// Ticks skipped by the catch-up rule.
    pub missed: u64,
    /// Ticks dropped by the overlap policy.
    pub skipped: u64,
    /// Ticks whose task could not be queued.
    pub failed: u64,
    pub last_tick_ms: Option<u64>,
    pub last_task: Option<u64>,
    pub last_error: String,
}

/// On a task a schedule queued: which schedule, for which tick.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduleRun {
    pub schedule_id: u64,
    pub tick_ms: u64,
}

/// One tick the leader found due. `owed`: the tick `queue_one` held back.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduleFire {
    pub id: u64,
    pub tick_ms: u64,
    pub owed: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum FireOutcome {
    Queued {
        task_id: u64,
    },
    /// Dropped by the overlap policy (`skip`, or an owed tick replaced).
    Skipped,
    /// Held by `queue_one`.
    Owed,
    /// Older than the catch-up window.
    TooLate,
    Failed(StateError),
}

/// The result of one fire: which tick it settled on, what happened, and how many ticks
/// before it were skipped by the catch-up rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Fired {
    pub id: u64,
    pub tick_ms: u64,
    pub outcome: FireOutcome,
    pub missed: u64,
}

/// The in-memory indexes of the schedule table.
#[derive(Default, Debug)]
pub struct ScheduleIndex {
    /// `(next tick, id)` of every schedule that is not paused and has a next tick.
    pub due: BTreeSet<(u64, u64)>,
    /// Schedules holding an owed tick.
    pub owed: BTreeSet<u64>,
    pub by_tenant: BTreeMap<String, BTreeSet<u64>>,
}

impl ScheduleIndex {
    pub fn insert(&mut self, s: &Schedule) {
        if let (false, Some(t)) = (s.paused, s.next_tick_ms) {
            self.due.insert((t, s.id));
        }
        if s.owed_tick_ms.is_some() {
            self.owed.insert(s.id);
        }
        self.by_tenant.entry(s.tenant.clone()).or_default().insert(s.id);
    }

    pub fn remove(&mut self, s: &Schedule) {
        if let Some(t) = s.next_tick_ms {
            self.due.remove(&(t, s.id));
        }
        self.owed.remove(&s.id);
        if let Some(ids) = self.by_tenant.get_mut(&s.tenant) {
            ids.remove(&s.id);
            if ids.is_empty() {
                self.by_tenant.remove(&s.tenant);
            }
        }
    }
}

const META_SCHEDULE_SEQ: &[u8] = b"m/schedule_seq";

type Applied = Result<Result<Response, StateError>, KvError>;

pub fn validate_spec(spec: &ScheduleSpec, limits: &TenantLimits) -> Result<(), StateError> {
    spec.timing.validate()?;
    validate::new_task_at("task", &spec.task, limits)?;
    if spec.task.delay_ms != 0 {
        return Err(StateError::invalid("task.delay_ms", "must be 0 on a schedule (use start_at)"));
    }
    if spec.catch_up_ms != 0 && !(MIN_CATCH_UP_MS..=MAX_CATCH_UP_MS).contains(&spec.catch_up_ms) {
        return Err(StateError::invalid(
            "catch_up",
            format!("{} ms is outside {MIN_CATCH_UP_MS}..={MAX_CATCH_UP_MS} ms", spec.catch_up_ms),
        ));
    }
    Ok(())
}

pub fn get(kv: &dyn KvRead, id: u64) -> Result<Option<Schedule>, KvError> {
    kv.get(&keys::schedule(id))?.map(|v| keys::decode::<Schedule>(&v)).transpose()
}

/// A tenant's schedule (another tenant's answers as a missing one).
pub fn get_for(kv: &dyn KvRead, tenant: &str, id: u64) -> Result<Option<Schedule>, KvError> {
    Ok(get(kv, id)?.filter(|s| s.tenant == tenant))
}

impl StateMachine {
    pub(super) fn load_schedules(&mut self, kv: &dyn KvRead) -> Result<(), KvError> {
        super::kv::try_scan(kv, keys::SCHEDULE, keys::SCHEDULE, &mut |_, v| {
            self.sched.insert(&keys::decode::<Schedule>(v)?);
            Ok(true)
        })
    }

    pub fn schedules(&self) -> &ScheduleIndex {
        &self.sched
    }

    fn read_schedule(&self, txn: &Txn<'_>, tenant: Option<&str>, id: u64) -> Result<Option<Schedule>, KvError> {
        let s = txn.get(&keys::schedule(id))?.map(|v| keys::decode::<Schedule>(&v)).transpose()?;
        Ok(s.filter(|s| tenant.is_none_or(|t| s.tenant == t)))
    }

    fn write_schedule(&mut self, txn: &mut Txn<'_>, old: Option<&Schedule>, new: &Schedule) {
        if let Some(old) = old {
            self.sched.remove(old);
        }
        self.sched.insert(new);
        txn.put(keys::schedule(new.id), keys::encode(new));
    }

    pub(super) fn create_schedule(
        &mut self,
        txn: &mut Txn<'_>,
        ctx: ApplyCtx,
        tenant: &str,
        spec: &ScheduleSpec,
    ) -> Applied {
        let Some(t) = self.tenants.get(tenant) else {
            return Ok(Err(StateError::UnknownTenant(tenant.to_string())));
        };
        if let Err(e) = validate_spec(spec, &t.limits) {
            return Ok(Err(e));
        }
        let Some(code) = self.codes.get(&(tenant.to_string(), spec.task.code.clone())) else {
            return Ok(Err(StateError::CodeNotFound(spec.task.code.clone())));
        };
        let p = spec.task.placement.as_ref().unwrap_or(&code.placement);
        if let Err(e) = self.may_place(tenant, p).and_then(|_| self.check_ceilings(&p.cluster, &code.limits)) {
            return Ok(Err(e));
        }
        let count = self.sched.by_tenant.get(tenant).map_or(0, BTreeSet::len);
        if count >= MAX_SCHEDULES_PER_TENANT {
            return Ok(Err(StateError::invalid(
                "schedules",
                format!("tenant {tenant:?} has {count} schedules, the limit is {MAX_SCHEDULES_PER_TENANT}"),
            )));
        }
        let clock = match spec.timing.clock(ctx.now_ms) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let seq: u64 = match txn.get(META_SCHEDULE_SEQ)? {
            Some(v) => keys::decode(&v)?,
            None => 0,
        };
        let id = seq + 1;
        txn.put(META_SCHEDULE_SEQ.to_vec(), keys::encode(&id));
        let s = Schedule {
            id,
            tenant: tenant.to_string(),
            spec: spec.clone(),
            paused: false,
            created_ms: ctx.now_ms,
            updated_ms: ctx.now_ms,
            next_tick_ms: spec.timing.next_from(&clock, ctx.now_ms, 0),
            owed_tick_ms: None,
            fired: 0,
            missed: 0,
            skipped: 0,
            failed: 0,
            last_tick_ms: None,
            last_task: None,
            last_error: String::new(),
        };
        self.write_schedule(txn, None, &s);
        Ok(Ok(Response::Schedule(Box::new(s))))
    }

    pub(super) fn delete_schedule(&mut self, txn: &mut Txn<'_>, tenant: &str, id: u64) -> Applied {
        let Some(s) = self.read_schedule(txn, Some(tenant), id)? else {
            return Ok(Err(StateError::ScheduleNotFound(id)));
        };
        self.sched.remove(&s);
        txn.delete(keys::schedule(id));
        Ok(Ok(Response::ScheduleDeleted))
    }

    /// Pauses (no ticks while paused, none counted as missed) or resumes (the next tick
    /// is the first at or after the resume).
    pub(super) fn pause_schedule(
        &mut self,
        txn: &mut Txn<'_>,
        ctx: ApplyCtx,
        tenant: &str,
        id: u64,
        paused: bool,
    ) -> Applied {
        let Some(old) = self.read_schedule(txn, Some(tenant), id)? else {
            return Ok(Err(StateError::ScheduleNotFound(id)));
        };
        let mut s = old.clone();
        if s.paused != paused {
            s.paused = paused;
            s.updated_ms = ctx.now_ms;
            if !paused && s.next_tick_ms.is_some() {
                let clock = match s.spec.timing.clock(s.created_ms) {
                    Ok(c) => c,
                    Err(e) => return Ok(Err(e)),
                };
                s.next_tick_ms = s.spec.timing.next_from(&clock, ctx.now_ms, s.fired);
            }
            self.write_schedule(txn, Some(&old), &s);
        }
        Ok(Ok(Response::Schedule(Box::new(s))))
    }

    pub(super) fn fire_schedules(&mut self, txn: &mut Txn<'_>, ctx: ApplyCtx, fires: &[ScheduleFire]) -> Applied {
        if fires.len() > MAX_FIRES {
            return Ok(Err(StateError::invalid("fires", format!("{} is over the limit of {MAX_FIRES}", fires.len()))));
        }
        let mut ctx = ctx;
        let mut out = Vec::with_capacity(fires.len());
        for f in fires {
            let r = self.fire_one(txn, ctx, f)?;
            if let Ok(Fired { outcome: FireOutcome::Queued { .. }, .. }) = &r {
                ctx.first_task_seq += 1;
            }
            out.push(r);
        }
        Ok(Ok(Response::Fired { results: out }))
    }

    fn fire_one(
        &mut self,
        txn: &mut Txn<'_>,
        ctx: ApplyCtx,
        f: &ScheduleFire,
    ) -> Result<Result<Fired, StateError>, KvError> {
        let Some(old) = self.read_schedule(txn, None, f.id)? else {
            return Ok(Err(StateError::ScheduleNotFound(f.id)));
        };
        let stale = || StateError::StaleTick { schedule_id: f.id, tick_ms: f.tick_ms };
        let mut s = old.clone();
        if f.owed {
            if s.owed_tick_ms != Some(f.tick_ms) || self.task_active(txn, s.last_task)? {
                return Ok(Err(stale()));
            }
            s.owed_tick_ms = None;
            let outcome = self.queue_run(txn, ctx, &mut s, f.tick_ms)?;
            self.write_schedule(txn, Some(&old), &s);
            return Ok(Ok(Fired { id: s.id, tick_ms: f.tick_ms, outcome, missed: 0 }));
        }
        if s.paused || s.next_tick_ms != Some(f.tick_ms) || f.tick_ms > ctx.now_ms {
            return Ok(Err(stale()));
        }
        let clock = match s.spec.timing.clock(s.created_ms) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let end = s.spec.timing.end_at_ms;
        let horizon = if end == 0 { ctx.now_ms } else { ctx.now_ms.min(end) };
        let (tick, mut missed) = clock.latest_due(f.tick_ms, horizon, MAX_CATCH_UP_COUNT);
        let window = if s.spec.catch_up_ms == 0 { DEFAULT_CATCH_UP_MS } else { s.spec.catch_up_ms };
        let outcome = if ctx.now_ms.saturating_sub(tick) > window {
            missed += 1;
            FireOutcome::TooLate
        } else if self.task_active(txn, s.last_task)? {
            match s.spec.overlap {
                Overlap::Skip => {
                    s.skipped += 1;
                    FireOutcome::Skipped
                }
                Overlap::QueueOne => {
                    if s.owed_tick_ms.replace(tick).is_some() {
                        s.skipped += 1;
                    }
                    FireOutcome::Owed
                }
                Overlap::Allow => self.queue_run(txn, ctx, &mut s, tick)?,
            }
        } else {
            self.queue_run(txn, ctx, &mut s, tick)?
        };
        s.missed = s.missed.saturating_add(missed);
        s.next_tick_ms = s.spec.timing.next_from(&clock, tick.saturating_add(1), s.fired);
        self.write_schedule(txn, Some(&old), &s);
        Ok(Ok(Fired { id: s.id, tick_ms: tick, outcome, missed }))
    }

    /// Queues the schedule's task for `tick` (or records why it could not be).
    fn queue_run(
        &mut self,
        txn: &mut Txn<'_>,
        ctx: ApplyCtx,
        s: &mut Schedule,
        tick: u64,
    ) -> Result<FireOutcome, KvError> {
        let run = ScheduleRun { schedule_id: s.id, tick_ms: tick };
        s.last_tick_ms = Some(tick);
        let r = self.queue_tasks_from(txn, ctx, &s.tenant, None, 0, std::slice::from_ref(&s.spec.task), Some(run))?;
        Ok(match r {
            Ok(Response::Queued { task_ids, .. }) if task_ids.len() == 1 => {
                s.fired += 1;
                s.last_task = Some(task_ids[0]);
                s.last_error.clear();
                FireOutcome::Queued { task_id: task_ids[0] }
            }
            Ok(other) => {
                s.failed += 1;
                s.last_error = format!("unexpected answer {other:?}");
                FireOutcome::Failed(StateError::invalid("task", s.last_error.clone()))
            }
            Err(e) => {
                s.failed += 1;
                s.last_error = e.to_string();
                FireOutcome::Failed(e)
            }
        })
    }

    /// Whether the task exists and has not finished (a purged task has finished).
    pub(super) fn task_active(&self, txn: &Txn<'_>, task: Option<u64>) -> Result<bool, KvError> {
        let Some(id) = task else { return Ok(false) };
        Ok(self.read_task(txn, id)?.is_some_and(|row| !row.task.state.is_finished()))
    }
}

/// Which owed ticks may fire now: those whose schedule's last task has finished.
pub fn owed_ready(kv: &dyn KvRead, owed: &BTreeSet<u64>, max: usize) -> Result<Vec<ScheduleFire>, KvError> {
    let mut out = Vec::new();
    for id in owed {
        if out.len() >= max {
            break;
        }
        let Some(s) = get(kv, *id)? else { continue };
        let Some(tick) = s.owed_tick_ms else { continue };
        let active = match s.last_task {
            Some(t) => super::views::get_task(kv, None, t)?.is_some_and(|t| !t.state.is_finished()),
            None => false,
        };
        if !active {
            out.push(ScheduleFire { id: *id, tick_ms: tick, owed: true });
        }
    }
    Ok(out)
}
