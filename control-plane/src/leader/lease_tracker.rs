//! Soft, leader-local lease liveness: when each live lease was last heard from.
//!
//! Heartbeats never go through Raft; only their absence does (an `ExpireLeases` command).
//! A new leader has no heartbeat history, so [`LeaseTracker::reset`] grants every lease
//! a full TTL from the moment of election. A lease first seen by [`LeaseTracker::overdue`]
//! (granted since the last check) likewise starts its TTL then.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::state::command::LeaseRef;

#[derive(Default)]
pub struct LeaseTracker {
    heard: Mutex<HashMap<u64, (u64, Instant)>>,
}

impl LeaseTracker {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<u64, (u64, Instant)>) -> R) -> R {
        // A poisoned map only loses liveness history; recover it rather than stop tracking.
        let mut g = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Forgets all history and treats every given lease as heard at `now`.
    pub fn reset(&self, running: impl IntoIterator<Item = LeaseRef>, now: Instant) {
        self.with(|m| {
            m.clear();
            for l in running {
                m.insert(l.task_id, (l.epoch, now));
            }
        })
    }

    /// Records a heartbeat for a lease the caller has checked is current.
    pub fn touch(&self, lease: LeaseRef, now: Instant) {
        self.with(|m| {
            m.insert(lease.task_id, (lease.epoch, now));
        })
    }

    /// The leases among `running` not heard from for longer than `ttl`. Drops history of
    /// leases no longer running.
    pub fn overdue(&self, running: &[LeaseRef], now: Instant, ttl: Duration) -> Vec<LeaseRef> {
        self.with(|m| {
            let live: std::collections::HashSet<u64> = running.iter().map(|l| l.task_id).collect();
            m.retain(|id, _| live.contains(id));
            let mut out = Vec::new();
            for l in running {
                let e = m.entry(l.task_id).or_insert((l.epoch, now));
                if e.0 != l.epoch {
                    *e = (l.epoch, now);
                }
                if now.duration_since(e.1) > ttl {
                    out.push(*l);
                }
            }
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_ttl_from_reset_and_touch_extends() {
        let t = LeaseTracker::default();
        let l = LeaseRef { task_id: 1, epoch: 7 };
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        t.reset([l], t0);
        assert!(t.overdue(&[l], t0 + Duration::from_secs(9), ttl).is_empty());
        t.touch(l, t0 + Duration::from_secs(9));
        assert!(t.overdue(&[l], t0 + Duration::from_secs(18), ttl).is_empty());
        assert_eq!(t.overdue(&[l], t0 + Duration::from_secs(20), ttl), vec![l]);
        // A re-grant (new epoch) starts a fresh TTL.
        let l2 = LeaseRef { task_id: 1, epoch: 9 };
        assert!(t.overdue(&[l2], t0 + Duration::from_secs(21), ttl).is_empty());
    }
}
