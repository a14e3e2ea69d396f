//! Leader-only loops: lease expiry, delayed-task promotion, the timeout backstop,
//! retention purge and the schedule ticker. [`supervise`] watches Raft's metrics and starts the loops (with a
//! child cancellation token) for each term in which this node leads, and cancels and
//! joins them when that leadership ends (it stops leading, or leads again in a new term
//! between two metric observations) or the server shuts down.
//!
//! The loops only *propose*, and every decision that changes state is made again inside
//! `apply`. But lease expiry is decided here, from a tracker fed only by the heartbeats
//! this node received as leader; a deposed leader's tick, committed by its successor,
//! would expire healthy leases in bulk. A loop running one extra tick on a deposed leader
//! is harmless because its commands carry the term it leads and are proposed with
//! [`RaftNode::propose_as_leader`]: never forwarded, refused unless this node still leads
//! that term, and refused by `apply` (`StateError::StaleTerm`) if leadership changed
//! between that check and the append.

pub mod lease_tracker;
pub mod presence;
pub mod quorum_clock;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::lease_tracker::LeaseTracker;
use self::presence::Presence;
use crate::metrics::Metrics;
use crate::raft::node::{RaftNode, now_ms};
use crate::state::Response;
use crate::state::command::{Command, ExpireReason, LeaseRef};
use crate::state::schedules::{self, FireOutcome, ScheduleFire};

/// Most tasks one timer command moves (bounds one log entry).
const MAX_TASKS_PER_TIMER_COMMAND: u32 = 10_000;
/// Most keys one purge entry deletes. Applying it holds the state-machine lock (which API
/// handlers take) for about the time sled needs to delete this many keys: measured in
/// `storage::sm_store::tests::a_purge_of_large_logs_delays_a_concurrent_reader_by_at_most_one_bounded_entry`
/// (a debug build on a loaded 2-core machine spent about 50 µs per deleted key under it).
pub const MAX_PURGE_KEYS_PER_ENTRY: u64 = 1_000;
/// Purge entries proposed back to back in one tick while a purge is still due; readers
/// get the lock between them (each is its own apply slice).
const MAX_PURGE_ENTRIES_PER_TICK: usize = 8;

#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub lease_ttl: Duration,
    pub tick: Duration,
    /// How long past its timeout a running task may go before the control plane expires it.
    pub timeout_grace: Duration,
    /// How long finished tasks are kept.
    pub retention: Duration,
}

pub async fn supervise(
    node: Arc<RaftNode>,
    tracker: Arc<LeaseTracker>,
    presence: Arc<Presence>,
    cfg: LeaderConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut rx = node.raft.metrics();
    // The term the running loops lead, their token and their handle.
    let mut running: Option<(u64, CancellationToken, JoinHandle<()>)> = None;
    loop {
        let leading = node.leader_term();
        // A leadership is (this node, term): losing and regaining leadership between two
        // observations shows as a new term, and the old loops must not carry on in it.
        if let Some((term, token, h)) = running.take_if(|(term, _, _)| leading != Some(*term)) {
            tracing::info!(term, "no longer leader of this term: stopping leader loops");
            token.cancel();
            let _ = h.await;
        }
        if let Some(term) = leading
            && running.is_none()
        {
            let leases = running_leases(&node);
            tracing::info!(term, leases = leases.len(), "became leader: granting every lease a full TTL");
            tracker.reset(leases, Instant::now());
            presence.reset(Instant::now());
            let token = shutdown.child_token();
            let leader = Leader { node: node.clone(), term, tracker: tracker.clone(), presence: presence.clone() };
            let loops = run_loops(leader, cfg.clone(), metrics.clone(), token.clone());
            running = Some((term, token, tokio::spawn(loops)));
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = rx.changed() => if r.is_err() { break },
        }
    }
    if let Some((_, token, h)) = running.take() {
        token.cancel();
        let _ = h.await;
    }
}

fn running_leases(node: &RaftNode) -> Vec<LeaseRef> {
    match node.sm.machine() {
        Ok(sm) => sm.indexes().running.iter().map(|(id, r)| LeaseRef { task_id: *id, epoch: r.epoch }).collect(),
        Err(_) => Vec::new(),
    }
}

/// What one tick found to do, gathered under the state machine lock.
#[derive(Default)]
struct Due {
    running: Vec<LeaseRef>,
    timed_out: Vec<LeaseRef>,
    promote: bool,
    purge: bool,
    /// Schedule ticks due (and `queue_one` ticks whose previous run finished).
    fires: Vec<ScheduleFire>,
}

fn due(node: &RaftNode, cfg: &LeaderConfig, now_ms: u64) -> Due {
    let Ok(sm) = node.sm.machine() else { return Due::default() };
    let idx = sm.indexes();
    let mut fires: Vec<ScheduleFire> = sm
        .schedules()
        .due
        .iter()
        .take_while(|(at, _)| *at <= now_ms)
        .take(schedules::MAX_FIRES)
        .map(|(at, id)| ScheduleFire { id: *id, tick_ms: *at, owed: false })
        .collect();
    if !sm.schedules().owed.is_empty() {
        let room = schedules::MAX_FIRES - fires.len();
        match schedules::owed_ready(&node.sm.kv(), &sm.schedules().owed, room) {
            Ok(owed) => fires.extend(owed),
            Err(e) => tracing::warn!(error = %e, "reading owed schedule ticks"),
        }
    }
    let grace = cfg.timeout_grace.as_millis() as u64;
    let retention = cfg.retention.as_millis() as u64;
    Due {
        running: idx.running.iter().map(|(id, r)| LeaseRef { task_id: *id, epoch: r.epoch }).collect(),
        timed_out: idx
            .running
            .iter()
            .filter(|(_, r)| r.deadline_ms.saturating_add(grace) < now_ms)
            .map(|(id, r)| LeaseRef { task_id: *id, epoch: r.epoch })
            .take(MAX_TASKS_PER_TIMER_COMMAND as usize)
            .collect(),
        promote: idx.delayed.first().is_some_and(|(at, _)| *at <= now_ms),
        purge: idx.finished.first().is_some_and(|(at, _)| *at < now_ms.saturating_sub(retention))
            || idx.idem_expiry.first().is_some_and(|(at, _)| *at <= now_ms),
        fires,
    }
}

/// One leadership: the node, the term it leads, and its leader-local trackers.
struct Leader {
    node: Arc<RaftNode>,
    term: u64,
    tracker: Arc<LeaseTracker>,
    presence: Arc<Presence>,
}

/// The timer loops of one leadership: every command names `term` and is proposed only as
/// its leader.
async fn run_loops(leader: Leader, cfg: LeaderConfig, metrics: Arc<Metrics>, token: CancellationToken) {
    let Leader { node, term, tracker, presence } = leader;
    let mut tick = tokio::time::interval(cfg.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        let due = due(&node, &cfg, now);
        let overdue = tracker.overdue(&due.running, Instant::now(), cfg.lease_ttl);
        if !overdue.is_empty() {
            let cmd = Command::ExpireLeases { term, leases: overdue, reason: ExpireReason::LeaseLost };
            let n = propose(&node, term, cmd).await;
            metrics.leases_expired.with_label_values(&["lease_lost"]).inc_by(n);
        }
        if !due.timed_out.is_empty() {
            let cmd = Command::ExpireLeases { term, leases: due.timed_out, reason: ExpireReason::TimedOut };
            let n = propose(&node, term, cmd).await;
            metrics.leases_expired.with_label_values(&["timeout"]).inc_by(n);
        }
        if !due.fires.is_empty() {
            fire(&node, term, due.fires, &metrics).await;
        }
        let changes = match node.sm.machine() {
            Ok(sm) => presence.changes(sm.agents(), sm.agents_gone(), Instant::now(), cfg.lease_ttl),
            Err(_) => Default::default(),
        };
        if !changes.is_empty() {
            if !changes.gone.is_empty() {
                tracing::info!(agents = ?changes.gone, "agents not heard from within the lease TTL: marking them gone");
            }
            let cmd = Command::AgentPresence { term, gone: changes.gone, seen: changes.seen };
            propose(&node, term, cmd).await;
        }
        if due.promote {
            propose(&node, term, Command::PromoteDelayed { term, max_tasks: MAX_TASKS_PER_TIMER_COMMAND }).await;
        }
        if due.purge {
            let before = now.saturating_sub(cfg.retention.as_millis() as u64);
            for _ in 0..MAX_PURGE_ENTRIES_PER_TICK {
                let cmd = Command::PurgeBounded {
                    term,
                    finished_before_ms: before,
                    max_tasks: MAX_TASKS_PER_TIMER_COMMAND,
                    max_keys: MAX_PURGE_KEYS_PER_ENTRY,
                };
                propose(&node, term, cmd).await;
                if token.is_cancelled() || !self::due(&node, &cfg, now).purge {
                    break;
                }
            }
        }
    }
}

/// Proposes the due schedule ticks as leader of `term` and counts what they did.
async fn fire(node: &RaftNode, term: u64, fires: Vec<ScheduleFire>, metrics: &Metrics) {
    match node.propose_as_leader(term, Command::FireSchedules { term, fires }).await {
        Ok(Response::Fired { results }) => {
            for r in results {
                let Ok(f) = r else { continue };
                metrics.schedule_ticks_missed.inc_by(f.missed);
                let outcome = match &f.outcome {
                    FireOutcome::Queued { .. } => "queued",
                    FireOutcome::Skipped => "skipped",
                    FireOutcome::Owed => "owed",
                    FireOutcome::TooLate => "too_late",
                    FireOutcome::Failed(e) => {
                        tracing::info!(schedule = f.id, tick_ms = f.tick_ms, error = %e, "a schedule tick could not queue its task");
                        "failed"
                    }
                };
                metrics.schedule_fires.with_label_values(&[outcome]).inc();
            }
        }
        Ok(Response::Rejected(e)) => tracing::info!(error = %e, "schedule fire refused"),
        Ok(other) => tracing::warn!(?other, "schedule fire answered unexpectedly"),
        Err(e) => tracing::warn!(error = %e, "schedule fire proposal failed"),
    }
}

/// Proposes a timer command as leader of `term`; returns how many leases it expired (for
/// metrics).
async fn propose(node: &RaftNode, term: u64, cmd: Command) -> u64 {
    match node.propose_as_leader(term, cmd).await {
        Ok(Response::Expired { task_ids }) => {
            if !task_ids.is_empty() {
                tracing::info!(tasks = ?task_ids, "expired leases");
            }
            task_ids.len() as u64
        }
        // This leadership ended under the proposal (StaleTerm); supervise stops the loops.
        Ok(Response::Rejected(e)) => {
            tracing::info!(error = %e, "leader timer command refused");
            0
        }
        Ok(_) => 0,
        Err(e) => {
            tracing::warn!(error = %e, "leader timer proposal failed");
            0
        }
    }
}
