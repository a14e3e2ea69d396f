//! When this node, as leader of a term, last *confirmed* that a quorum still follows it:
//! the clock that bounds every lease it grants or renews.
//!
//! The argument. A lease renewed by this leader at time `r` is valid on the agent until
//! `sent + (r - received) + ttl - (r - c)` at the latest, where `c` is the start of the
//! last successful quorum confirmation (a read-index round, [`run`]) and `sent ≤ received`
//! is when the agent sent the request. That is at most `c + ttl`. A quorum answered that
//! round *after* `c` and had not voted in a newer term when it answered, so any newer
//! leader won a vote from one of those nodes after `c`, and only then resets its lease
//! tracker, giving every lease a full TTL: it cannot expire (and re-grant) the task
//! before `c + ttl`. Within one term the leader itself expires a lease only a TTL after
//! it last touched it, which is no earlier than `r`. So the agent's deadline never
//! passes the earliest moment the control plane may hand its task to someone else. A
//! leader cut off from its followers stops confirming, its `c` ages, and once `ttl` has
//! passed since `c` it renews nothing (the agent's watchdog then stops the container).
//!
//! Confirmations run every [`confirm_interval`] while this node leads; a confirmation is
//! recorded only if the term did not change while it ran.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio_util::sync::CancellationToken;

use crate::raft::node::RaftNode;

#[derive(Default)]
pub struct QuorumClock {
    confirmed: Mutex<Option<(u64, Instant)>>,
}

impl QuorumClock {
    fn with<R>(&self, f: impl FnOnce(&mut Option<(u64, Instant)>) -> R) -> R {
        f(&mut self.confirmed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Records that a quorum confirmed this node as leader of `term` in a round that
    /// started at `started`. Keeps the latest.
    pub fn confirmed(&self, term: u64, started: Instant) {
        self.with(|c| match c {
            Some((t, at)) if *t == term && *at >= started => {}
            _ => *c = Some((term, started)),
        })
    }

    /// How long ago a quorum last confirmed this node as leader of `term`; None when it
    /// never has in that term.
    pub fn since(&self, term: u64, now: Instant) -> Option<Duration> {
        self.with(|c| match c {
            Some((t, at)) if *t == term => Some(now.saturating_duration_since(*at)),
            _ => None,
        })
    }
}

/// How often a leader confirms its quorum: often enough that a renewal keeps nearly a
/// full TTL, rarely enough to cost nothing (one heartbeat round).
pub fn confirm_interval(lease_ttl: Duration) -> Duration {
    (lease_ttl / 10).clamp(Duration::from_millis(20), Duration::from_millis(500))
}

/// Confirms leadership with a quorum every `interval` while this node leads.
pub async fn run(node: Arc<RaftNode>, clock: Arc<QuorumClock>, interval: Duration, token: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let term = {
            let m = node.raft.metrics();
            let m = m.borrow();
            if m.state != ServerState::Leader || m.current_leader != Some(node.id) {
                continue;
            }
            m.current_term
        };
        let started = Instant::now();
        let round = tokio::time::timeout(node.quorum_timeout, node.raft.ensure_linearizable());
        let ok = tokio::select! {
            _ = token.cancelled() => return,
            r = round => matches!(r, Ok(Ok(_))),
        };
        if ok && node.raft.metrics().borrow().current_term == term {
            clock.confirmed(term, started);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_confirmation_of_the_current_term() {
        let c = QuorumClock::default();
        let t0 = Instant::now();
        assert_eq!(c.since(3, t0), None);
        c.confirmed(3, t0 + Duration::from_millis(100));
        // An older round finishing late does not move the clock back.
        c.confirmed(3, t0);
        assert_eq!(c.since(3, t0 + Duration::from_millis(600)), Some(Duration::from_millis(500)));
        // Another term's confirmation says nothing about this one.
        assert_eq!(c.since(4, t0 + Duration::from_millis(600)), None);
        c.confirmed(4, t0 + Duration::from_millis(700));
        assert_eq!(c.since(3, t0 + Duration::from_millis(800)), None);
        assert_eq!(c.since(4, t0 + Duration::from_millis(800)), Some(Duration::from_millis(100)));
    }
}
