//! Failed-secret rate limiting per source address: a token bucket per address in a
//! bounded table. Pure (the caller passes `now`), so the policy is tested without a clock.
//!
//! Each address may fail [`FailureLimits::burst`] times at once, then one more time per
//! [`FailureLimits::refill`]; while its bucket is empty every webhook request from it is
//! answered `429` with `Retry-After` (the seconds until its next token), whatever secret
//! it carries, so guessing cannot go faster than the refill. Failures are a wrong or
//! missing secret (`401`) and an unknown tenant or code (`404`, so names cannot be
//! probed quickly either). IPv6 addresses count per /64, the block one host usually
//! holds. The table holds at most [`FailureLimits::max_addresses`]: a full bucket is the
//! same as no entry and is dropped first; when every entry is still penalised, the one
//! with the most tokens left (the least suspicious) is evicted. Eviction is the
//! trade-off of bounded memory: an attacker with more addresses than the table holds can
//! make it forget some of them, but never block anyone else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct FailureLimits {
    pub burst: u32,
    pub refill: Duration,
    pub max_addresses: usize,
}

/// 10 failures at once, then one per 6 s (10 a minute), across 4096 addresses
/// (about 200 KiB).
pub const DEFAULT_LIMITS: FailureLimits =
    FailureLimits { burst: 10, refill: Duration::from_secs(6), max_addresses: 4096 };

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Tokens at `at`.
    tokens: u32,
    at: Instant,
}

pub struct FailureLimiter {
    limits: FailureLimits,
    table: HashMap<IpAddr, Bucket>,
}

/// The key an address is counted under.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Bucket `b` brought up to `now`.
fn refilled(limits: &FailureLimits, b: Bucket, now: Instant) -> Bucket {
    let elapsed = now.saturating_duration_since(b.at);
    let steps = elapsed.as_nanos() / limits.refill.as_nanos();
    let tokens = (u128::from(b.tokens) + steps).min(u128::from(limits.burst)) as u32;
    if tokens == limits.burst {
        return Bucket { tokens, at: now };
    }
    // Keep the fraction of a refill already earned (steps < burst here, so it fits).
    let at = b.at + limits.refill * steps as u32;
    Bucket { tokens, at }
}

impl FailureLimiter {
    pub fn new(limits: FailureLimits) -> Self {
        assert!(limits.burst > 0 && limits.max_addresses > 0 && !limits.refill.is_zero());
        FailureLimiter { limits, table: HashMap::new() }
    }

    fn current(&self, b: Bucket, now: Instant) -> Bucket {
        refilled(&self.limits, b, now)
    }

    /// `Some(wait)` if `ip` may not try now: its bucket is empty until `wait` has passed.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let b = self.current(*self.table.get(&source_key(ip))?, now);
        (b.tokens == 0).then(|| (b.at + self.limits.refill).saturating_duration_since(now))
    }

    /// Records one failed attempt from `ip`.
    pub fn fail(&mut self, ip: IpAddr, now: Instant) {
        let key = source_key(ip);
        if !self.table.contains_key(&key) && self.table.len() >= self.limits.max_addresses {
            self.make_room(now);
        }
        let full = Bucket { tokens: self.limits.burst, at: now };
        let b = self.table.get(&key).map(|b| self.current(*b, now)).unwrap_or(full);
        self.table.insert(key, Bucket { tokens: b.tokens.saturating_sub(1), at: b.at });
    }

    /// Drops refilled buckets; if none, the one with the most tokens now.
    fn make_room(&mut self, now: Instant) {
        let limits = self.limits;
        self.table.retain(|_, b| refilled(&limits, *b, now).tokens < limits.burst);
        if self.table.len() < limits.max_addresses {
            return;
        }
        let evict =
            self.table.iter().max_by_key(|(_, b)| (refilled(&limits, **b, now).tokens, std::cmp::Reverse(b.at)));
        if let Some((&key, _)) = evict {
            self.table.remove(&key);
        }
    }

    /// Addresses in the table.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    const L: FailureLimits = FailureLimits { burst: 3, refill: Duration::from_secs(6), max_addresses: 4 };

    #[test]
    fn an_address_is_blocked_after_its_burst_and_gets_one_try_per_refill() {
        let mut l = FailureLimiter::new(L);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(l.blocked(a, t0), None);
            l.fail(a, t0);
        }
        assert_eq!(l.blocked(a, t0), Some(Duration::from_secs(6)));
        assert_eq!(l.blocked(a, t0 + Duration::from_secs(2)), Some(Duration::from_secs(4)));
        assert_eq!(l.blocked(ip("192.0.2.2"), t0), None, "other addresses are not affected");
        let t1 = t0 + Duration::from_secs(6);
        assert_eq!(l.blocked(a, t1), None, "one token back after a refill period");
        l.fail(a, t1);
        assert_eq!(l.blocked(a, t1), Some(Duration::from_secs(6)));
        // After burst × refill the bucket is full again: three more tries.
        let t2 = t1 + Duration::from_secs(18);
        for _ in 0..3 {
            assert_eq!(l.blocked(a, t2), None);
            l.fail(a, t2);
        }
        assert!(l.blocked(a, t2).is_some());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let mut l = FailureLimiter::new(L);
        let t = Instant::now();
        for host in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9"] {
            l.fail(ip(host), t);
        }
        assert!(l.blocked(ip("2001:db8:1:2::77"), t).is_some());
        assert!(l.blocked(ip("2001:db8:1:3::1"), t).is_none());
        for _ in 0..3 {
            l.fail(ip("::ffff:192.0.2.9"), t);
        }
        assert!(l.blocked(ip("192.0.2.9"), t).is_some());
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_least_penalised() {
        let mut l = FailureLimiter::new(L);
        let t = Instant::now();
        let blocked = ip("198.51.100.1");
        for _ in 0..3 {
            l.fail(blocked, t);
        }
        for i in 2..=4 {
            l.fail(ip(&format!("198.51.100.{i}")), t);
        }
        assert_eq!(l.len(), 4);
        for i in 10..100 {
            l.fail(ip(&format!("203.0.113.{i}")), t);
            assert!(l.len() <= 4);
        }
        assert!(l.blocked(blocked, t).is_some(), "the blocked address outlives addresses with tokens left");
        // Refilled buckets are dropped first.
        let later = t + Duration::from_secs(60);
        l.fail(ip("192.0.2.200"), later);
        assert_eq!(l.len(), 1);
    }
}
