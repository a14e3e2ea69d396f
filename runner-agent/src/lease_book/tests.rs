//! Unit and property tests of the lease book against a model of the control plane's
//! side of the timing rule (what `lease_valid_ms` is, and the earliest moment the control
//! plane may hand a task to someone else), on a simulated clock.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const TTL_MS: u64 = 10_000;
const TICK: Duration = Duration::from_millis(100);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn book(slots: u32) -> LeaseBook {
    LeaseBook::new(slots, margin_for(ms(TTL_MS), TICK))
}

fn lease(task_id: u64) -> Lease {
    Lease { task_id, epoch: task_id * 10 }
}

#[test]
fn a_grant_late_in_a_long_poll_keeps_a_full_ttl() {
    // The failure seen from outside: an idle agent's poll was answered 15 s after it was
    // sent, with a 10 s TTL. The leader held the poll 15 s and says so.
    let t0 = Instant::now();
    let mut b = book(1);
    let arrived = t0 + ms(15_020);
    let d = b.grant(lease(1), t0, ms(15_000 + TTL_MS), arrived);
    let GrantDecision::Run { deadline } = d else { panic!("{d:?}") };
    assert!(deadline > arrived + ms(TTL_MS - 600), "{:?} left", deadline - arrived);
    // The container is created 3 s later (a pull): it starts.
    assert_eq!(b.created(lease(1), "c1", arrived + ms(3_000)), CreatedDecision::Start { deadline });
    assert!(b.tick(arrived + ms(3_000)).is_empty());
}

#[test]
fn an_answer_whose_deadline_has_passed_is_handed_back_unrun() {
    let t0 = Instant::now();
    let mut b = book(1);
    assert_eq!(b.grant(lease(1), t0, ms(TTL_MS), t0 + ms(TTL_MS)), GrantDecision::HandBack);
    assert_eq!(b.busy(), 0);
}

#[test]
fn no_slot_or_a_duplicate_is_ignored() {
    let t0 = Instant::now();
    let mut b = book(1);
    assert!(matches!(b.grant(lease(1), t0, ms(TTL_MS), t0), GrantDecision::Run { .. }));
    assert_eq!(b.grant(lease(2), t0, ms(TTL_MS), t0), GrantDecision::Ignore);
    assert_eq!(b.grant(lease(1), t0, ms(TTL_MS), t0), GrantDecision::Ignore);
}

#[test]
fn renewals_push_the_deadline_and_rearm_the_watchdog_but_never_revive_a_passed_one() {
    let t0 = Instant::now();
    let mut b = book(2);
    let GrantDecision::Run { deadline: d0 } = b.grant(lease(1), t0, ms(TTL_MS), t0) else { panic!() };
    b.created(lease(1), "c1", t0 + ms(10));
    let sent = t0 + ms(2_500);
    let a = b.renewed(&[lease(1)], &[], sent, ms(TTL_MS), sent + ms(5));
    let d1 = b.get(1).expect("held").deadline;
    assert!(d1 > d0);
    assert_eq!(a, vec![Action::Arm { container: "c1".into(), deadline: d1 }]);
    // An older answer arriving late does not pull the deadline back.
    assert!(b.renewed(&[lease(1)], &[], t0 + ms(1_000), ms(TTL_MS), sent + ms(10)).is_empty());
    assert_eq!(b.get(1).expect("held").deadline, d1);
    // Past the deadline the lease is lost, whatever answer arrives afterwards.
    let after = d1 + ms(1);
    assert!(b.renewed(&[lease(1)], &[], after - ms(50), ms(TTL_MS), after).is_empty());
    assert_eq!(b.tick(after), vec![Action::Stop { task_id: 1, reason: StopReason::LeaseLost }]);
    assert_eq!(b.exited(lease(1), Exit::Ended, after), AfterExit::Forget(StopReason::LeaseLost));
}

#[test]
fn revoked_leases_are_stopped_and_never_reported() {
    let t0 = Instant::now();
    let mut b = book(1);
    b.grant(lease(1), t0, ms(TTL_MS), t0);
    b.created(lease(1), "c1", t0);
    let a = b.renewed(&[lease(1)], &[lease(1)], t0, ms(TTL_MS), t0 + ms(5));
    assert_eq!(a, vec![Action::Stop { task_id: 1, reason: StopReason::Revoked }]);
    assert!(b.to_renew().is_empty());
    assert_eq!(b.exited(lease(1), Exit::Ended, t0 + ms(10)), AfterExit::Forget(StopReason::Revoked));
}

#[test]
fn a_revocation_answering_a_heartbeat_sent_before_the_report_stops_nothing() {
    // The heartbeat carried the lease, the report was applied before it was answered:
    // the control plane no longer knows the lease, and the run has already ended.
    let t0 = Instant::now();
    let mut b = book(1);
    b.grant(lease(1), t0, ms(TTL_MS), t0);
    b.created(lease(1), "c1", t0);
    assert_eq!(b.exited(lease(1), Exit::Ended, t0 + ms(5)), AfterExit::Report);
    assert!(b.renewed(&[lease(1)], &[lease(1)], t0, ms(TTL_MS), t0 + ms(6)).is_empty());
    assert!(!b.may_report(lease(1), t0 + ms(7)), "a revoked lease's report is not retried");
    assert!(b.to_renew().is_empty());
}

#[test]
fn a_lease_lost_during_the_pull_never_starts_its_container() {
    let t0 = Instant::now();
    let mut b = book(1);
    let GrantDecision::Run { deadline } = b.grant(lease(1), t0, ms(TTL_MS), t0) else { panic!() };
    assert_eq!(b.created(lease(1), "c1", deadline), CreatedDecision::Abort);
    assert_eq!(b.exited(lease(1), Exit::Ended, deadline), AfterExit::Forget(StopReason::LeaseLost));
    // Cancelled (revoked) during the pull: same.
    let mut b = book(1);
    b.grant(lease(2), t0, ms(TTL_MS), t0);
    assert!(b.stop(lease(2), StopReason::Revoked));
    assert_eq!(b.created(lease(2), "c2", t0 + ms(1)), CreatedDecision::Abort);
}

#[test]
fn a_freeze_between_the_check_and_the_start_request_is_caught_by_the_last_check() {
    // Seen in the long chaos run: an agent passed the check, was frozen (SIGSTOP) for 6 s,
    // and on waking started the container of a lease that had meanwhile been re-granted.
    let t0 = Instant::now();
    let mut b = book(1);
    let GrantDecision::Run { deadline } = b.grant(lease(1), t0, ms(TTL_MS), t0) else { panic!() };
    assert_eq!(b.created(lease(1), "c1", t0 + ms(10)), CreatedDecision::Start { deadline });
    assert!(b.may_start(lease(1), t0 + ms(20)), "still well inside the lease");
    assert!(!b.may_start(lease(1), deadline), "the deadline passed while frozen");
    assert_eq!(b.exited(lease(1), Exit::Ended, deadline), AfterExit::Forget(StopReason::LeaseLost));
    // Another lease of the same task, or one being stopped, never starts.
    let mut b = book(1);
    b.grant(lease(2), t0, ms(TTL_MS), t0);
    b.created(lease(2), "c2", t0);
    assert!(!b.may_start(Lease { task_id: 2, epoch: 99 }, t0));
    assert!(b.stop(lease(2), StopReason::Revoked));
    assert!(!b.may_start(lease(2), t0));
}

#[test]
fn drain_hands_back_running_work_and_lets_reports_finish() {
    let t0 = Instant::now();
    let mut b = book(3);
    for t in 1..=3 {
        b.grant(lease(t), t0, ms(TTL_MS), t0);
        b.created(lease(t), &format!("c{t}"), t0);
    }
    assert_eq!(b.exited(lease(3), Exit::Ended, t0 + ms(1)), AfterExit::Report);
    let stops = b.drain_over();
    assert_eq!(stops.len(), 2, "{stops:?}");
    assert_eq!(b.exited(lease(1), Exit::Ended, t0 + ms(2)), AfterExit::HandBack);
    assert!(b.may_report(lease(3), t0 + ms(2)));
    assert!(!b.may_report(lease(3), t0 + ms(TTL_MS)), "not past the deadline");
}

#[test]
fn an_engine_failure_hands_the_task_back() {
    let t0 = Instant::now();
    let mut b = book(1);
    b.grant(lease(1), t0, ms(TTL_MS), t0);
    b.created(lease(1), "c1", t0);
    assert_eq!(b.exited(lease(1), Exit::Infrastructure, t0 + ms(5)), AfterExit::HandBack);
    assert!(b.release(lease(1)).is_some());
    assert_eq!(b.free_slots(), 1);
}

#[test]
fn margin_is_a_small_fraction_of_the_ttl() {
    assert_eq!(margin_for(ms(10_000), TICK), ms(500));
    assert_eq!(margin_for(ms(2_000), TICK), ms(200));
    assert_eq!(margin_for(ms(1_000), TICK), ms(100));
}

// ---------------------------------------------------------------------------------------
// The model: the control plane's side, as `leader::quorum_clock` argues it. A lease answer
// is computed by the leader at `touch` (after receiving the request at `recv >= sent`)
// as `valid = (touch - recv) + ttl - since_quorum`; the earliest moment the control plane
// may hand the task to anyone else is `touch - since_quorum + ttl` for the latest touch.

#[derive(Clone, Debug)]
enum Op {
    /// Time passes (the agent's deadline timer fires on the way).
    Advance(u64),
    /// A long poll sent now is answered with a grant: request delay, time held at the
    /// leader, time since the leader's last quorum confirmation, answer delay.
    Grant { task: u64, d1: u64, held: u64, since_q: u64, d2: u64 },
    /// A heartbeat of every lease to renew is sent now; the leader touches the current
    /// ones after `d1`. The answer may be lost, or delivered later (reordered).
    Heartbeat { d1: u64, since_q: u64, revoke: bool, lose: bool },
    /// Deliver one pending heartbeat answer (any order).
    Deliver(usize),
    /// A task's container is created (after a pull).
    Created(u64),
    /// A task's container ends; `infra`: the engine failed.
    Exit { task: u64, infra: bool },
    /// The agent freezes for this long (nothing runs, not even the deadline timer).
    Pause(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..4_000u64).prop_map(Op::Advance),
        2 => (1..6u64, 0..200u64, 0..30_000u64, 0..12_000u64, 0..200u64)
            .prop_map(|(task, d1, held, since_q, d2)| Op::Grant { task, d1, held, since_q, d2 }),
        4 => (0..300u64, 0..12_000u64, prop::bool::weighted(0.1), prop::bool::weighted(0.2))
            .prop_map(|(d1, since_q, revoke, lose)| Op::Heartbeat { d1, since_q, revoke, lose }),
        2 => (0..4usize).prop_map(Op::Deliver),
        2 => (1..6u64).prop_map(Op::Created),
        2 => (1..6u64, prop::bool::weighted(0.2)).prop_map(|(task, infra)| Op::Exit { task, infra }),
        1 => (1..15_000u64).prop_map(Op::Pause),
    ]
}

struct Pending {
    leases: Vec<Lease>,
    revoked: Vec<Lease>,
    sent: Instant,
    valid: Duration,
}

struct Sim {
    t0: Instant,
    now: Instant,
    book: LeaseBook,
    /// Per task: the earliest moment the control plane may give it to someone else.
    cp_expiry: BTreeMap<u64, Instant>,
    pending: Vec<Pending>,
    epoch: u64,
    reports: u32,
    /// The last step froze the agent: its deadline timer did not run.
    frozen: bool,
}

impl Sim {
    fn new(slots: u32) -> Self {
        let t0 = Instant::now();
        Sim {
            t0,
            now: t0,
            book: book(slots),
            cp_expiry: BTreeMap::new(),
            pending: Vec::new(),
            epoch: 0,
            reports: 0,
            frozen: false,
        }
    }

    fn ttl(&self) -> Duration {
        ms(TTL_MS)
    }

    /// The control plane is live for a lease at `t` only before its expiry.
    fn cp_holds(&self, task: u64, t: Instant) -> bool {
        self.cp_expiry.get(&task).is_some_and(|e| t < *e)
    }

    fn check_actions(&self, actions: &[Action]) {
        for a in actions {
            if let Action::Arm { container, deadline } = a {
                let task: u64 = container.trim_start_matches('c').parse().expect("container name");
                let e = self.cp_expiry[&task];
                assert!(*deadline <= e, "watchdog armed {:?} past the control plane's expiry", *deadline - e);
            }
        }
    }

    fn check(&self) {
        for h in self.book.held() {
            if h.stop.is_none() {
                let e = self.cp_expiry[&h.lease.task_id];
                assert!(
                    h.deadline <= e,
                    "task {} held {:?} past the control plane's expiry",
                    h.lease.task_id,
                    h.deadline - e
                );
                assert!(self.frozen || h.deadline > self.now, "a passed deadline is stopped by the timer");
            }
        }
    }

    fn tick(&mut self) {
        let a = self.book.tick(self.now);
        for a in &a {
            let Action::Stop { reason, .. } = a else { panic!("tick only stops: {a:?}") };
            assert_eq!(*reason, StopReason::LeaseLost);
        }
    }

    /// Advances time, firing the deadline timer at every deadline on the way (as the
    /// agent's timer loop does), unless the agent is frozen.
    fn advance(&mut self, by: Duration, frozen: bool) {
        self.frozen = frozen;
        let end = self.now + by;
        if !frozen {
            while let Some(d) = self.book.next_deadline().filter(|d| *d <= end) {
                self.now = self.now.max(d);
                self.tick();
            }
        }
        self.now = end;
        if !frozen {
            self.tick();
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Advance(n) => self.advance(ms(n), false),
            Op::Pause(n) => self.advance(ms(n), true),
            Op::Grant { task, d1, held, since_q, d2 } => {
                if self.book.get(task).is_some() || self.cp_holds(task, self.now) {
                    return;
                }
                self.epoch += 1;
                let l = Lease { task_id: task, epoch: self.epoch };
                let sent = self.now;
                let touch = sent + ms(d1 + held);
                if since_q >= TTL_MS {
                    return; // the leader refuses: Unavailable
                }
                self.cp_expiry.insert(task, touch - ms(since_q) + self.ttl());
                let valid = ms(held) + self.ttl() - ms(since_q);
                // The long poll is in flight: the timer keeps running meanwhile.
                self.advance(ms(d1 + held + d2), false);
                match self.book.grant(l, sent, valid, self.now) {
                    GrantDecision::Run { deadline } => assert!(deadline <= self.cp_expiry[&task]),
                    GrantDecision::HandBack | GrantDecision::Ignore => {}
                }
            }
            Op::Heartbeat { d1, since_q, revoke, lose } => {
                let leases = self.book.to_renew();
                if leases.is_empty() || since_q >= TTL_MS {
                    return;
                }
                let sent = self.now;
                let touch = sent + ms(d1);
                let mut revoked = Vec::new();
                for l in &leases {
                    // The control plane renews what it still holds; what it has expired it
                    // revokes (it may already be running elsewhere).
                    if self.cp_holds(l.task_id, touch) && !revoke {
                        let e = touch - ms(since_q) + self.ttl();
                        let cur = self.cp_expiry[&l.task_id];
                        self.cp_expiry.insert(l.task_id, cur.max(e));
                    } else {
                        revoked.push(*l);
                    }
                }
                let valid = self.ttl() - ms(since_q);
                if !lose {
                    self.pending.push(Pending { leases, revoked, sent, valid });
                }
            }
            Op::Deliver(i) => {
                if self.pending.is_empty() {
                    return;
                }
                let p = self.pending.remove(i % self.pending.len());
                let actions = self.book.renewed(&p.leases, &p.revoked, p.sent, p.valid, self.now);
                self.check_actions(&actions);
            }
            Op::Created(task) => {
                let Some(h) = self.book.get(task) else { return };
                if h.phase != Phase::Preparing {
                    return;
                }
                let l = h.lease;
                if let CreatedDecision::Start { deadline } = self.book.created(l, &format!("c{task}"), self.now) {
                    assert!(deadline > self.now && deadline <= self.cp_expiry[&task]);
                }
            }
            Op::Exit { task, infra } => {
                let Some(h) = self.book.get(task) else { return };
                if h.phase == Phase::Reporting {
                    self.book.release(h.lease);
                    return;
                }
                let l = h.lease;
                let exit = if infra { Exit::Infrastructure } else { Exit::Ended };
                match self.book.exited(l, exit, self.now) {
                    AfterExit::Report => {
                        assert!(self.cp_holds(task, self.now), "a report only while the control plane holds the lease");
                        assert!(self.book.may_report(l, self.now));
                        self.reports += 1;
                    }
                    AfterExit::HandBack | AfterExit::Forget(_) => {
                        self.book.release(l);
                    }
                }
            }
        }
        let _ = self.t0;
        self.check();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Safety under any interleaving of grants, heartbeats answered slowly, lost or out of
    /// order, revocations, pauses of the agent and exits: no deadline (held or armed in the
    /// watchdog) passes the earliest moment the control plane may give the task to another
    /// agent, and no result is reported for a lease the control plane no longer holds.
    #[test]
    fn no_deadline_outlives_the_control_planes_lease(ops in prop::collection::vec(op(), 1..80), slots in 1..4u32) {
        let mut sim = Sim::new(slots);
        for op in &ops {
            sim.apply(op);
        }
    }

    /// Liveness: a task granted at any point of a long poll (held up to three TTLs), with
    /// heartbeats every quarter TTL answered within a few hundred milliseconds by a leader
    /// in touch with its quorum, runs to its end, however long, and is reported.
    #[test]
    fn a_task_granted_anywhere_in_a_long_poll_runs_to_completion(
        held in 0..(3 * TTL_MS),
        d1 in 0..300u64,
        d2 in 0..300u64,
        since_q in 0..500u64,
        run_ms in 0..(6 * TTL_MS),
        hb_delays in prop::collection::vec((0..300u64, 0..300u64, 0..500u64), 64),
    ) {
        let mut sim = Sim::new(1);
        sim.apply(&Op::Grant { task: 1, d1, held, since_q, d2 });
        prop_assert!(sim.book.get(1).is_some(), "the grant was taken");
        sim.apply(&Op::Created(1));
        prop_assert_eq!(sim.book.get(1).map(|h| h.phase), Some(Phase::Running));
        let end = sim.now + ms(run_ms);
        let mut i = 0;
        while sim.now < end {
            let (hd1, hd2, hq) = hb_delays[i % hb_delays.len()];
            i += 1;
            sim.apply(&Op::Heartbeat { d1: hd1, since_q: hq, revoke: false, lose: false });
            sim.apply(&Op::Advance(hd1 + hd2));
            sim.apply(&Op::Deliver(0));
            let step = (TTL_MS / 4).saturating_sub(hd1 + hd2).max(1);
            sim.apply(&Op::Advance(step.min(end.saturating_duration_since(sim.now).as_millis() as u64).max(1)));
        }
        prop_assert!(sim.book.get(1).is_some_and(|h| h.stop.is_none()), "lease lost: {:?}", sim.book.get(1));
        sim.apply(&Op::Exit { task: 1, infra: false });
        prop_assert_eq!(sim.reports, 1);
    }
}
