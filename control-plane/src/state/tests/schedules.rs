//! Schedules in the state machine: each tick fires once (a repeated or stale fire is
//! refused and changes nothing), the catch-up rule, `run_times` and `end_at`, the three
//! overlap policies, pause and resume, term fencing, and reloading from the tables.

use super::*;
use crate::state::schedules::{FireOutcome, Fired, Overlap, Schedule, ScheduleFire, ScheduleSpec};
use crate::state::timing::{ScheduleTiming, Timing};

fn every(every_ms: u64) -> ScheduleSpec {
    ScheduleSpec {
        timing: ScheduleTiming { timing: Timing::Every { every_ms }, start_at_ms: 0, end_at_ms: 0, run_times: 0 },
        task: task("a"),
        overlap: Overlap::Allow,
        catch_up_ms: 0,
    }
}

impl Harness {
    fn with_codes() -> Self {
        let mut h = Harness::new();
        h.tenant("t1", limits(100, 0), &[spec("a", 0, 0)]);
        h.tenant("t2", limits(100, 0), &[spec("a", 0, 0)]);
        h
    }

    fn create_schedule(&mut self, tenant: &str, spec: ScheduleSpec) -> Schedule {
        match self.apply(Command::CreateSchedule { tenant: tenant.into(), spec }) {
            Response::Schedule(s) => *s,
            other => panic!("create schedule failed: {other:?}"),
        }
    }

    fn schedule(&self, id: u64) -> Schedule {
        crate::state::schedules::get(&self.kv, id).expect("read").expect("schedule exists")
    }

    fn fire_cmd(&self, id: u64, tick_ms: u64, owed: bool) -> Command {
        Command::FireSchedules { term: self.term, fires: vec![ScheduleFire { id, tick_ms, owed }] }
    }

    /// Fires the tick the schedule expects, at `now_ms`.
    fn fire(&mut self, id: u64, now_ms: u64) -> Fired {
        self.now_ms = now_ms;
        let tick = self.schedule(id).next_tick_ms.expect("a next tick");
        self.fire_result(self.fire_cmd(id, tick, false)).expect("fire accepted")
    }

    fn fire_result(&mut self, cmd: Command) -> Result<Fired, StateError> {
        match self.apply(cmd) {
            Response::Fired { mut results } if results.len() == 1 => results.remove(0),
            other => panic!("fire answered {other:?}"),
        }
    }

    fn queued_task(f: &Fired) -> u64 {
        match f.outcome {
            FireOutcome::Queued { task_id } => task_id,
            ref other => panic!("expected a queued task, got {other:?}"),
        }
    }
}

#[test]
fn each_tick_fires_once_and_a_repeated_fire_changes_nothing() {
    let mut h = Harness::with_codes();
    h.now_ms = 10_000;
    let s = h.create_schedule("t1", every(1_000));
    assert_eq!(s.next_tick_ms, Some(10_000), "a run_every schedule without start_at runs at once");
    let f = h.fire(s.id, 10_040);
    let id = Harness::queued_task(&f);
    assert_eq!((f.tick_ms, f.missed), (10_000, 0));
    let t = h.task(id);
    assert_eq!(t.schedule.map(|r| (r.schedule_id, r.tick_ms)), Some((s.id, 10_000)), "the task records its tick");
    assert_eq!(h.schedule(s.id).next_tick_ms, Some(11_000));

    // The same tick again (a retried proposal, a second leader): refused, nothing changes.
    let again = h.fire_cmd(s.id, 10_000, false);
    let r = h.apply_unchanged(again);
    assert!(
        matches!(&r, Response::Fired { results } if matches!(results[0], Err(StateError::StaleTick { .. }))),
        "{r:?}"
    );
    // A tick not yet due is refused too.
    let early = h.fire_cmd(s.id, 11_000, false);
    h.now_ms = 10_500;
    let r = h.apply_unchanged(early);
    assert!(matches!(&r, Response::Fired { results } if results[0].is_err()), "{r:?}");
    // Another tenant's, or an unknown, schedule id: not found.
    let r = h.apply_unchanged(Command::DeleteSchedule { tenant: "t2".into(), id: s.id });
    assert_eq!(r, Response::Rejected(StateError::ScheduleNotFound(s.id)));
}

#[test]
fn ticks_due_while_no_leader_fired_catch_up_to_the_latest_once() {
    let mut h = Harness::with_codes();
    h.now_ms = 10_000;
    let s = h.create_schedule("t1", every(1_000));
    h.fire(s.id, 10_010);
    // No leader fired 11_000..=14_000; the next leader fires at 14_300.
    let f = h.fire(s.id, 14_300);
    assert_eq!((f.tick_ms, f.missed), (14_000, 3), "the latest due tick fires; the three before it are missed");
    let task = h.task(Harness::queued_task(&f));
    assert_eq!(task.schedule.map(|r| r.tick_ms), Some(14_000));
    let s2 = h.schedule(s.id);
    assert_eq!((s2.fired, s2.missed, s2.next_tick_ms), (2, 3, Some(15_000)));

    // Past the catch-up window the latest tick is missed too.
    let mut slow = every(10_000);
    slow.catch_up_ms = 1_000;
    h.now_ms = 20_000;
    let s = h.create_schedule("t1", slow);
    h.fire(s.id, 20_000);
    let f = h.fire(s.id, 35_000);
    assert_eq!((f.tick_ms, f.outcome.clone(), f.missed), (30_000, FireOutcome::TooLate, 1));
    assert_eq!(h.schedule(s.id).next_tick_ms, Some(40_000));
}

#[test]
fn run_times_and_end_at_bound_the_runs() {
    let mut h = Harness::with_codes();
    h.now_ms = 1_000;
    let mut three = every(1_000);
    three.timing.run_times = 3;
    let s = h.create_schedule("t1", three);
    for i in 0..3 {
        h.fire(s.id, 1_000 + i * 1_000);
    }
    let done = h.schedule(s.id);
    assert_eq!((done.fired, done.next_tick_ms), (3, None), "run_times 3 fires exactly three times");
    assert!(!h.sm.schedules().due.iter().any(|(_, id)| *id == s.id));

    let mut ending = every(1_000);
    ending.timing.end_at_ms = 12_500;
    h.now_ms = 10_000;
    let s = h.create_schedule("t1", ending);
    h.fire(s.id, 10_000);
    h.fire(s.id, 11_000);
    // Ticks after end_at do not exist: catching up at 20_000 stops at 12_000.
    let f = h.fire(s.id, 12_000);
    assert_eq!(f.tick_ms, 12_000);
    assert_eq!(h.schedule(s.id).next_tick_ms, None, "no tick after end_at");
}

#[test]
fn overlap_skip_drops_ticks_while_the_previous_run_is_active() {
    let mut h = Harness::with_codes();
    h.now_ms = 1_000;
    let mut sp = every(1_000);
    sp.overlap = Overlap::Skip;
    let s = h.create_schedule("t1", sp);
    let first = Harness::queued_task(&h.fire(s.id, 1_000));
    let grants = h.lease("ag", &AgentAttrs::default(), 1);
    assert_eq!(grants[0].task_id, first);
    // A task slower than the period: two ticks come while it runs.
    assert_eq!(h.fire(s.id, 2_000).outcome, FireOutcome::Skipped);
    assert_eq!(h.fire(s.id, 3_000).outcome, FireOutcome::Skipped);
    h.complete("ag", first, grants[0].epoch, Outcome::Success).expect("complete");
    let next = Harness::queued_task(&h.fire(s.id, 4_000));
    assert_ne!(next, first);
    let s2 = h.schedule(s.id);
    assert_eq!((s2.fired, s2.skipped, s2.missed), (2, 2, 0));
}

#[test]
fn overlap_queue_one_holds_one_tick_until_the_previous_run_ends() {
    let mut h = Harness::with_codes();
    h.now_ms = 1_000;
    let mut sp = every(1_000);
    sp.overlap = Overlap::QueueOne;
    let s = h.create_schedule("t1", sp);
    let first = Harness::queued_task(&h.fire(s.id, 1_000));
    let grants = h.lease("ag", &AgentAttrs::default(), 1);
    assert_eq!(h.fire(s.id, 2_000).outcome, FireOutcome::Owed);
    assert_eq!(h.fire(s.id, 3_000).outcome, FireOutcome::Owed, "a later tick replaces the owed one");
    assert_eq!(h.schedule(s.id).owed_tick_ms, Some(3_000));
    assert_eq!(h.schedule(s.id).skipped, 1);
    // While the first run is active the owed tick cannot fire.
    let early = h.fire_cmd(s.id, 3_000, true);
    let r = h.apply_unchanged(early);
    assert!(matches!(&r, Response::Fired { results } if results[0].is_err()), "{r:?}");
    h.complete("ag", first, grants[0].epoch, Outcome::Success).expect("complete");
    let owed = h.fire_cmd(s.id, 3_000, true);
    let f = h.fire_result(owed).expect("owed fire");
    let t = h.task(Harness::queued_task(&f));
    assert_eq!(t.schedule.map(|r| r.tick_ms), Some(3_000));
    assert_eq!(h.schedule(s.id).owed_tick_ms, None);
    assert!(h.sm.schedules().owed.is_empty());
}

#[test]
fn overlap_allow_queues_every_tick() {
    let mut h = Harness::with_codes();
    h.now_ms = 1_000;
    let s = h.create_schedule("t1", every(1_000));
    let a = Harness::queued_task(&h.fire(s.id, 1_000));
    let b = Harness::queued_task(&h.fire(s.id, 2_000));
    assert_ne!(a, b);
}

#[test]
fn pause_resume_fencing_failures_and_reload() {
    let mut h = Harness::with_codes();
    h.now_ms = 1_000;
    let s = h.create_schedule("t1", every(1_000));
    h.fire(s.id, 1_000);
    let paused = h.apply(Command::PauseSchedule { tenant: "t1".into(), id: s.id, paused: true });
    assert!(matches!(paused, Response::Schedule(ref p) if p.paused));
    let stale = h.fire_cmd(s.id, 2_000, false);
    h.now_ms = 5_000;
    let r = h.apply_unchanged(stale);
    assert!(matches!(&r, Response::Fired { results } if results[0].is_err()), "a paused schedule does not fire");
    h.now_ms = 7_300;
    let resumed = h.apply(Command::PauseSchedule { tenant: "t1".into(), id: s.id, paused: false });
    assert!(matches!(resumed, Response::Schedule(ref r) if r.next_tick_ms == Some(8_000) && r.missed == 0));

    // A fire from an older term is refused whole.
    h.term = 3;
    let old_term =
        Command::FireSchedules { term: 2, fires: vec![ScheduleFire { id: s.id, tick_ms: 8_000, owed: false }] };
    h.now_ms = 8_100;
    let r = h.apply_unchanged(old_term);
    assert!(matches!(r, Response::Rejected(StateError::StaleTerm { .. })), "{r:?}");

    // A tick whose code is gone is consumed and counted as failed.
    assert_eq!(h.apply(Command::DeleteCode { tenant: "t1".into(), name: "a".into() }), Response::CodeDeleted);
    let f = h.fire(s.id, 8_100);
    assert!(matches!(f.outcome, FireOutcome::Failed(StateError::CodeNotFound(_))), "{f:?}");
    let s2 = h.schedule(s.id);
    assert_eq!((s2.failed, s2.next_tick_ms), (1, Some(9_000)));
    assert!(s2.last_error.contains("not found"), "{}", s2.last_error);

    let loaded = StateMachine::load(&h.kv).expect("load");
    assert_eq!(loaded.schedules().due, h.sm.schedules().due);
    assert_eq!(loaded.schedules().by_tenant, h.sm.schedules().by_tenant);

    assert_eq!(h.apply(Command::DeleteSchedule { tenant: "t1".into(), id: s.id }), Response::ScheduleDeleted);
    assert!(h.sm.schedules().due.is_empty());
}

#[test]
fn bad_schedules_are_refused_naming_the_field() {
    let mut h = Harness::with_codes();
    let mut bad = every(500);
    let r = h.apply_unchanged(Command::CreateSchedule { tenant: "t1".into(), spec: bad.clone() });
    assert!(matches!(&r, Response::Rejected(StateError::Invalid { field, .. }) if field == "run_every"), "{r:?}");
    bad = every(1_000);
    bad.task.payload = vec![0; 2_000];
    let r = h.apply_unchanged(Command::CreateSchedule { tenant: "t1".into(), spec: bad.clone() });
    assert!(matches!(&r, Response::Rejected(StateError::Invalid { field, .. }) if field == "task.payload"), "{r:?}");
    bad = every(1_000);
    bad.task.code = "missing".into();
    let r = h.apply_unchanged(Command::CreateSchedule { tenant: "t1".into(), spec: bad });
    assert_eq!(r, Response::Rejected(StateError::CodeNotFound("missing".into())));
    let mut cron = every(1_000);
    cron.timing.timing = Timing::Cron { expr: "0 9 * * *".into(), tz: "Nowhere/Land".into() };
    let r = h.apply_unchanged(Command::CreateSchedule { tenant: "t1".into(), spec: cron });
    assert!(matches!(&r, Response::Rejected(StateError::Invalid { field, .. }) if field == "timezone"), "{r:?}");
}
