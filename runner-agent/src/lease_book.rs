//! The lease book: every lease this agent holds, its deadline, why it was stopped, and
//! the slots. Pure and synchronous: it takes `now` as an argument, reads no clock, does
//! no I/O, and answers with [`Action`]s (arm a watchdog deadline, stop a container) and
//! decisions (start, report, hand back, forget) that the shell carries out.
//!
//! ## The timing rule
//! A lease's deadline here is never later than the earliest moment the control plane may
//! give its task to another agent (safety), and not needlessly earlier (liveness).
//!
//! Every lease answer (a grant or a heartbeat) carries `lease_valid_ms`: how long the
//! leases it names stay valid counted from when *this agent sent the request* (the leader
//! adds the time it held a long poll before granting, and subtracts the time since it
//! last confirmed a quorum; the control plane's `leader::quorum_clock` gives the
//! argument). The deadline is therefore `sent + valid - margin`, measured on this agent's
//! monotonic clock, with `sent` read just before the request left. Because the leader's
//! clock for the lease started no earlier than its receipt of the request, which is no
//! earlier than `sent`, the deadline is safe whatever the network delay; because the time
//! the long poll was held is added back, a grant that arrives late in a long poll keeps a
//! full TTL (the old rule, `sent + ttl`, armed such a grant already expired). `margin`
//! covers the watchdog's tick and kill latency and clock-rate differences.
//!
//! ## Invariants
//! * A deadline only moves forward, and never after it has passed: a lease whose
//!   deadline passed is lost, even if a late answer would renew it.
//! * A lease that is stopped (lost, revoked, handed back) is never reported; a task is
//!   reported only if its container ended before the deadline, and only while the lease
//!   is still held.
//! * A container is started only while its lease is held and its deadline ahead.
//! * At most `slots` leases are held.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// A lease as the agent holds it: the task and the epoch (the fencing token).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lease {
    pub task_id: u64,
    pub epoch: u64,
}

/// Why the agent stopped a task before it ended by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Not renewed before the deadline: the control plane may hand it to another agent.
    LeaseLost,
    /// The control plane no longer recognises the lease (cancelled, expired, re-granted).
    Revoked,
    /// Draining ran out of time: given back to be re-queued.
    HandedBack,
}

/// What a held lease is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Image pull and container creation.
    Preparing,
    /// The container was started (or re-adopted).
    Running,
    /// The container ended; its result is being reported.
    Reporting,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub lease: Lease,
    pub deadline: Instant,
    pub phase: Phase,
    pub stop: Option<StopReason>,
    pub container: Option<String>,
}

/// Something the shell must do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Set (or push forward) the watchdog deadline of this container.
    Arm { container: String, deadline: Instant },
    /// Stop this task's container (it will not be reported; see [`AfterExit`]).
    Stop { task_id: u64, reason: StopReason },
}

/// What to do with a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantDecision {
    /// Run it; the lease is held until this deadline unless renewed.
    Run { deadline: Instant },
    /// The answer came too late to use (its deadline has passed): hand it back unrun.
    HandBack,
    /// Not taken (a lease for this task is already held, or no slot is free): the
    /// control plane expires it after its TTL.
    Ignore,
}

/// What to do when a container has been created, before starting it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreatedDecision {
    /// Start it, with the watchdog armed at this deadline first.
    Start { deadline: Instant },
    /// Do not start it: the lease was stopped or expired during the pull and create.
    Abort,
}

/// What to do once a task's container has ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterExit {
    /// Report the result with the lease epoch.
    Report,
    /// Give the lease back so the task is re-queued (drain, or a failure of the agent or
    /// its engine, which is not the task's): no retry is consumed.
    HandBack,
    /// Say nothing: the lease is gone and someone else may run the task.
    Forget(StopReason),
}

/// How a run ended, as far as the lease book cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The task ran to an end of its own (any exit code, timeout, OOM): a result to report.
    Ended,
    /// The agent or its container engine failed; the task's own fate is unknown.
    Infrastructure,
}

#[derive(Clone, Debug)]
pub struct LeaseBook {
    slots: u32,
    margin: Duration,
    held: BTreeMap<u64, Held>,
}

/// The safety margin taken off every deadline: enough for the watchdog to notice and
/// kill (a few of its ticks) and for clock-rate differences, never more than a tenth of
/// the TTL.
pub fn margin_for(ttl: Duration, watchdog_tick: Duration) -> Duration {
    (ttl / 20).max(watchdog_tick * 2).min(ttl / 10)
}

impl LeaseBook {
    pub fn new(slots: u32, margin: Duration) -> Self {
        LeaseBook { slots, margin, held: BTreeMap::new() }
    }

    pub fn set_margin(&mut self, margin: Duration) {
        self.margin = margin;
    }

    pub fn slots(&self) -> u32 {
        self.slots
    }

    pub fn busy(&self) -> usize {
        self.held.len()
    }

    pub fn free_slots(&self) -> u32 {
        self.slots.saturating_sub(self.held.len() as u32)
    }

    pub fn get(&self, task_id: u64) -> Option<&Held> {
        self.held.get(&task_id)
    }

    pub fn held(&self) -> impl Iterator<Item = &Held> {
        self.held.values()
    }

    /// Whether `lease` is held and not stopped.
    pub fn holds(&self, lease: Lease) -> bool {
        self.held.get(&lease.task_id).is_some_and(|h| h.lease == lease && h.stop.is_none())
    }

    fn deadline(&self, sent: Instant, valid: Duration) -> Instant {
        sent + valid.saturating_sub(self.margin)
    }

    /// A lease granted in answer to a request sent at `sent`, valid for `valid` from then.
    pub fn grant(&mut self, lease: Lease, sent: Instant, valid: Duration, now: Instant) -> GrantDecision {
        if self.held.contains_key(&lease.task_id) || self.free_slots() == 0 {
            return GrantDecision::Ignore;
        }
        let deadline = self.deadline(sent, valid);
        if deadline <= now {
            return GrantDecision::HandBack;
        }
        self.held.insert(lease.task_id, Held { lease, deadline, phase: Phase::Preparing, stop: None, container: None });
        GrantDecision::Run { deadline }
    }

    /// A container found running at start whose lease the control plane confirmed, in
    /// answer to a request sent at `sent`.
    pub fn adopt(
        &mut self,
        lease: Lease,
        container: String,
        sent: Instant,
        valid: Duration,
        now: Instant,
    ) -> Option<Instant> {
        if self.held.contains_key(&lease.task_id) || self.free_slots() == 0 {
            return None;
        }
        let deadline = self.deadline(sent, valid);
        if deadline <= now {
            return None;
        }
        let held = Held { lease, deadline, phase: Phase::Running, stop: None, container: Some(container) };
        self.held.insert(lease.task_id, held);
        Some(deadline)
    }

    /// The leases to renew: every held lease not stopped (also those being reported).
    pub fn to_renew(&self) -> Vec<Lease> {
        self.held.values().filter(|h| h.stop.is_none()).map(|h| h.lease).collect()
    }

    /// A heartbeat for `sent_leases`, sent at `sent`, was answered: the control plane
    /// revoked `revoked` and renewed the rest for `valid` from `sent`.
    pub fn renewed(
        &mut self,
        sent_leases: &[Lease],
        revoked: &[Lease],
        sent: Instant,
        valid: Duration,
        now: Instant,
    ) -> Vec<Action> {
        let renewed_until = self.deadline(sent, valid);
        let mut actions = Vec::new();
        for l in sent_leases {
            let Some(h) = self.held.get_mut(&l.task_id) else { continue };
            if h.lease != *l || h.stop.is_some() {
                continue;
            }
            if revoked.contains(l) {
                h.stop = Some(StopReason::Revoked);
                // A lease being reported has no run left to stop: its report, once the
                // control plane applies it, is itself why the heartbeat finds it gone.
                // Marking it stopped ends any report retry; nothing more is done.
                if h.phase != Phase::Reporting {
                    actions.push(Action::Stop { task_id: l.task_id, reason: StopReason::Revoked });
                }
                continue;
            }
            // A passed deadline is final: the control plane may already have re-granted.
            if h.deadline <= now || renewed_until <= h.deadline {
                continue;
            }
            h.deadline = renewed_until;
            if let Some(c) = &h.container {
                actions.push(Action::Arm { container: c.clone(), deadline: renewed_until });
            }
        }
        actions
    }

    /// Stops every lease whose deadline has passed.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        for h in self.held.values_mut() {
            if h.stop.is_none() && h.deadline <= now {
                h.stop = Some(StopReason::LeaseLost);
                actions.push(Action::Stop { task_id: h.lease.task_id, reason: StopReason::LeaseLost });
            }
        }
        actions
    }

    /// The earliest deadline of a lease not yet stopped: when [`LeaseBook::tick`] must run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.held.values().filter(|h| h.stop.is_none()).map(|h| h.deadline).min()
    }

    /// Stops one task for `reason` (revoked by a log answer, drain); false if it was not
    /// held under `lease` or already stopped.
    pub fn stop(&mut self, lease: Lease, reason: StopReason) -> bool {
        match self.held.get_mut(&lease.task_id) {
            Some(h) if h.lease == lease && h.stop.is_none() => {
                h.stop = Some(reason);
                true
            }
            _ => false,
        }
    }

    /// Draining ran out of time: every task still running or preparing is handed back
    /// (those already reporting finish reporting).
    pub fn drain_over(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        for h in self.held.values_mut() {
            if h.stop.is_none() && h.phase != Phase::Reporting {
                h.stop = Some(StopReason::HandedBack);
                actions.push(Action::Stop { task_id: h.lease.task_id, reason: StopReason::HandedBack });
            }
        }
        actions
    }

    /// The task's container was created (not started yet).
    pub fn created(&mut self, lease: Lease, container: &str, now: Instant) -> CreatedDecision {
        let Some(h) = self.held.get_mut(&lease.task_id) else { return CreatedDecision::Abort };
        if h.lease != lease {
            return CreatedDecision::Abort;
        }
        h.container = Some(container.to_string());
        if h.stop.is_some() {
            return CreatedDecision::Abort;
        }
        if h.deadline <= now {
            h.stop = Some(StopReason::LeaseLost);
            return CreatedDecision::Abort;
        }
        h.phase = Phase::Running;
        CreatedDecision::Start { deadline: h.deadline }
    }

    /// The task's run ended (its container is gone, or was never made).
    pub fn exited(&mut self, lease: Lease, exit: Exit, now: Instant) -> AfterExit {
        let Some(h) = self.held.get_mut(&lease.task_id) else { return AfterExit::Forget(StopReason::Revoked) };
        if h.lease != lease {
            return AfterExit::Forget(StopReason::Revoked);
        }
        match h.stop {
            Some(StopReason::HandedBack) => return AfterExit::HandBack,
            Some(reason) => return AfterExit::Forget(reason),
            None => {}
        }
        if h.deadline <= now {
            // Ended after the lease ran out (the agent was slow or frozen, or the watchdog
            // stopped it): the result is not ours to report.
            h.stop = Some(StopReason::LeaseLost);
            return AfterExit::Forget(StopReason::LeaseLost);
        }
        match exit {
            Exit::Infrastructure => {
                h.stop = Some(StopReason::HandedBack);
                AfterExit::HandBack
            }
            Exit::Ended => {
                h.phase = Phase::Reporting;
                AfterExit::Report
            }
        }
    }

    /// The last word before a created container's start request: the lease is still held,
    /// not being stopped, and its deadline ahead. A deadline that has passed (the agent
    /// was slow or frozen since [`Self::created`]) stops the lease here.
    pub fn may_start(&mut self, lease: Lease, now: Instant) -> bool {
        let Some(h) = self.held.get_mut(&lease.task_id) else { return false };
        if h.lease != lease || h.stop.is_some() || h.phase != Phase::Running {
            return false;
        }
        if h.deadline <= now {
            h.stop = Some(StopReason::LeaseLost);
            return false;
        }
        true
    }

    /// Whether a report for `lease` may still be sent (or retried).
    pub fn may_report(&self, lease: Lease, now: Instant) -> bool {
        self.held
            .get(&lease.task_id)
            .is_some_and(|h| h.lease == lease && h.stop.is_none() && h.phase == Phase::Reporting && h.deadline > now)
    }

    /// The task is done with (reported, handed back or forgotten): frees its slot.
    pub fn release(&mut self, lease: Lease) -> Option<Held> {
        match self.held.get(&lease.task_id) {
            Some(h) if h.lease == lease => self.held.remove(&lease.task_id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
