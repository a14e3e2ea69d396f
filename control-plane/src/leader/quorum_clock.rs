//! When this node, as leader of a term, last *confirmed* that a quorum still follows it:
//! the clock that bounds every lease it grants or renews.
//!
//! The source is openraft's own leader clock: for each follower, the *send* time of the
//! latest replication request (append or heartbeat) it acknowledged; the quorum-th
//! latest of those is reported as `millis_since_quorum_ack` in every metrics update.
//! [`run`] turns each update into an instant, `c = seen - millis - METRICS_LAG`, where
//! `seen` is when this task saw the update (the update was made no later, usually
//! microseconds before; `METRICS_LAG` allows for a slow wake-up).
//!
//! The argument. A lease renewed by this leader at time `r` is valid on the agent until
//! `sent + (r - received) + ttl - (r - c)` at the latest, where `sent ≤ received` is when
//! the agent sent the request. That is at most `c + ttl`. A quorum acknowledged a request
//! sent *after* `c`, and had not voted in a newer term when it did, so any newer leader
//! won a vote from one of those nodes after `c`, and only then resets its lease tracker,
//! giving every lease a full TTL: it cannot expire (and re-grant) the task before
//! `c + ttl`. Within one term the leader itself expires a lease only a TTL after it last
//! touched it, which is no earlier than `r`. So the agent's deadline never passes the
//! earliest moment the control plane may hand its task to someone else. A leader cut off
//! from its followers stops being acknowledged, its `c` ages (whether or not metrics keep
//! coming), and once `ttl` has passed since `c` it renews nothing (the agent's watchdog
//! then stops the container).
//!
//! (Confirming with read-index rounds of our own was tried first: openraft bounds each
//! such round's RPCs by the heartbeat interval, and under load on a small machine most
//! rounds failed, so healthy leaders refused leases.)

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

    /// Records that a quorum acknowledged this node as leader of `term` a request sent at
    /// `at`. Keeps the latest.
    pub fn confirmed(&self, term: u64, at: Instant) {
        self.with(|c| match c {
            Some((t, latest)) if *t == term && *latest >= at => {}
            _ => *c = Some((term, at)),
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

/// Allowance for the time between openraft publishing a metrics update and [`run`]
/// seeing it; taken off every confirmation so the clock errs on the old side.
pub const METRICS_LAG: Duration = Duration::from_millis(50);

/// Feeds the clock from every metrics update while this node leads.
pub async fn run(node: Arc<RaftNode>, clock: Arc<QuorumClock>, token: CancellationToken) {
    let mut rx = node.raft.metrics();
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
        let seen = Instant::now();
        let m = rx.borrow_and_update();
        if m.state != ServerState::Leader || m.current_leader != Some(node.id) {
            continue;
        }
        if let Some(ms) = m.millis_since_quorum_ack
            && let Some(at) = seen.checked_sub(Duration::from_millis(ms) + METRICS_LAG)
        {
            clock.confirmed(m.current_term, at);
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
        // An older acknowledgement reported late does not move the clock back.
        c.confirmed(3, t0);
        assert_eq!(c.since(3, t0 + Duration::from_millis(600)), Some(Duration::from_millis(500)));
        // Another term's confirmation says nothing about this one.
        assert_eq!(c.since(4, t0 + Duration::from_millis(600)), None);
        c.confirmed(4, t0 + Duration::from_millis(700));
        assert_eq!(c.since(3, t0 + Duration::from_millis(800)), None);
        assert_eq!(c.since(4, t0 + Duration::from_millis(800)), Some(Duration::from_millis(100)));
    }
}
