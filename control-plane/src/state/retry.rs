//! Retry policy, the failure taxonomy, and the backoff schedule: pure functions of the
//! task's policy, its id and the number of the failure, so every replica computes the same
//! delay from the same log.
//!
//! * **Taxonomy.** Every attempt that does not succeed ends with one [`FailureReason`]:
//!   `exit_code`, `oom`, `timeout`, `image_pull`, `runner_lost`, `infrastructure`,
//!   `cancelled`. The agent classifies what it saw; the control plane records
//!   `runner_lost` (an expired lease) and `timeout` (its own backstop) itself.
//! * **Which failures retry.** A failure is retried when its reason is in the policy's
//!   `retry_on` set and retries are left. A lost lease (`runner_lost`) consumes no retry:
//!   it is bounded on its own by [`MAX_LOST_LEASES`](super::leases::MAX_LOST_LEASES), and is
//!   re-queued at once (the task did nothing wrong) unless `retry_on` leaves it out, in
//!   which case the task ends `error` (for work that must not run twice).
//!   A hand-back (drain, engine failure on the agent) is recorded as an `infrastructure`
//!   attempt but, as before, consumes nothing and is re-queued at once.
//! * **Backoff.** The `n`th retry (n ≥ 1) waits `min(retry_delay · 2^(n-1), backoff_max)`,
//!   less a jitter of up to a fifth of that ([`JITTER_DIVISOR`]): the wait lies in
//!   `[d - d/5, d]` where `d` is the capped exponential, so the cap is a true cap and
//!   retries of tasks that failed together spread out. The jitter is a hash of
//!   (task id, retry number), not randomness, so `apply` stays deterministic.
//!   A retry with a non-zero wait becomes a `delayed` task due at the entry's stamp plus
//!   the wait, promoted by the leader's `PromoteDelayed` timer like any delayed task.
//!
//! Defaults (a code registered without retry settings): no retries
//! (`default_retries` 0), `retry_delay` [`DEFAULT_RETRY_DELAY_MS`] (1 s), backoff cap
//! [`DEFAULT_BACKOFF_MAX_MS`] (5 min, or the delay if larger), `retry_on` every reason but
//! `cancelled` ([`RetryOn::DEFAULT`]). Bounds: `retry_delay` ≤ [`MAX_RETRY_DELAY_MS`]
//! (1 h), `backoff_max` between `retry_delay` and [`MAX_BACKOFF_MAX_MS`] (24 h).

use serde::{Deserialize, Serialize};

/// Why an attempt did not succeed. The set is fixed: clients match on these names.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureReason {
    /// The container exited non-zero.
    ExitCode,
    /// The container was killed for using more memory than its limit.
    Oom,
    /// The task ran past its timeout (agent-enforced, or the control plane's backstop).
    Timeout,
    /// The image could not be pulled or resolved.
    ImagePull,
    /// The agent holding the lease went silent past the lease TTL.
    RunnerLost,
    /// The container engine or the agent failed, not the task.
    Infrastructure,
    /// The run was stopped on purpose (the task cancelled, the agent's run killed).
    Cancelled,
}

impl FailureReason {
    pub const ALL: [FailureReason; 7] = [
        FailureReason::ExitCode,
        FailureReason::Oom,
        FailureReason::Timeout,
        FailureReason::ImagePull,
        FailureReason::RunnerLost,
        FailureReason::Infrastructure,
        FailureReason::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::ExitCode => "exit_code",
            FailureReason::Oom => "oom",
            FailureReason::Timeout => "timeout",
            FailureReason::ImagePull => "image_pull",
            FailureReason::RunnerLost => "runner_lost",
            FailureReason::Infrastructure => "infrastructure",
            FailureReason::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<FailureReason> {
        FailureReason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`FailureReason`]s: the failures a task is retried on. One bit per reason, so
/// it is bounded by construction.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RetryOn(u8);

impl RetryOn {
    /// Every reason but `cancelled`: a cancellation was meant.
    pub const DEFAULT: RetryOn = RetryOn(
        (1 << FailureReason::ExitCode as u8)
            | (1 << FailureReason::Oom as u8)
            | (1 << FailureReason::Timeout as u8)
            | (1 << FailureReason::ImagePull as u8)
            | (1 << FailureReason::RunnerLost as u8)
            | (1 << FailureReason::Infrastructure as u8),
    );
    const VALID: u8 = (1 << FailureReason::ALL.len()) - 1;

    pub fn from_reasons(reasons: impl IntoIterator<Item = FailureReason>) -> RetryOn {
        RetryOn(reasons.into_iter().fold(0, |m, r| m | r.bit()))
    }

    /// A set from raw bits, as a decoded entry could carry them: check [`RetryOn::is_valid`].
    pub fn from_bits(bits: u8) -> RetryOn {
        RetryOn(bits)
    }

    pub fn contains(self, r: FailureReason) -> bool {
        self.0 & r.bit() != 0
    }

    pub fn reasons(self) -> Vec<FailureReason> {
        FailureReason::ALL.into_iter().filter(|r| self.contains(*r)).collect()
    }

    /// Whether every bit names a reason (a decoded value could carry others).
    pub fn is_valid(self) -> bool {
        self.0 & !Self::VALID == 0
    }
}

impl Default for RetryOn {
    fn default() -> Self {
        RetryOn::DEFAULT
    }
}

pub const DEFAULT_RETRY_DELAY_MS: u64 = 1_000;
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 5 * 60 * 1000;
pub const MAX_RETRY_DELAY_MS: u64 = 3600 * 1000;
pub const MAX_BACKOFF_MAX_MS: u64 = 24 * 3600 * 1000;
/// The jitter takes off up to `1/JITTER_DIVISOR` of the capped exponential delay.
pub const JITTER_DIVISOR: u64 = 5;
/// The most attempts a task record keeps (the oldest are dropped; `attempts` still counts
/// them all). Retries (≤ 100), lost leases (≤ 5) and hand-backs all add attempts.
pub const MAX_ATTEMPTS_KEPT: usize = 128;

/// The most bytes of an error message an [`Attempt`](super::model::Attempt) keeps (the
/// task's result keeps the last one whole): 128 attempts stay a few tens of KiB.
pub const MAX_ATTEMPT_ERROR_BYTES: usize = 256;

/// `s` cut to at most `max` bytes on a character boundary.
pub fn truncate_error(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// How a task's failures are retried (its retry count lives apart, in `retries_left`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait before the first retry.
    pub retry_delay_ms: u64,
    /// The cap on the exponential wait.
    pub backoff_max_ms: u64,
    pub retry_on: RetryOn,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retry_delay_ms: DEFAULT_RETRY_DELAY_MS,
            backoff_max_ms: DEFAULT_BACKOFF_MAX_MS,
            retry_on: RetryOn::DEFAULT,
        }
    }
}

/// A task's (or a registration's) override of its code's policy: `None` keeps the code's.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryOverride {
    pub retry_delay_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    pub retry_on: Option<RetryOn>,
}

impl RetryOverride {
    /// The policy that results from applying this override to `base`. A delay set without a
    /// cap raises the cap to the delay when the base cap is lower, so any accepted delay
    /// yields a valid policy.
    pub fn over(self, base: RetryPolicy) -> RetryPolicy {
        let retry_delay_ms = self.retry_delay_ms.unwrap_or(base.retry_delay_ms);
        let backoff_max_ms = self.backoff_max_ms.unwrap_or(base.backoff_max_ms.max(retry_delay_ms));
        RetryPolicy { retry_delay_ms, backoff_max_ms, retry_on: self.retry_on.unwrap_or(base.retry_on) }
    }
}

/// The capped exponential wait before retry `n` (1 = the first retry), before jitter.
pub fn capped_delay_ms(p: &RetryPolicy, n: u32) -> u64 {
    let shift = n.saturating_sub(1).min(63);
    let exp = p.retry_delay_ms.saturating_mul(1u64 << shift);
    exp.min(p.backoff_max_ms)
}

/// The wait before retry `n` of task `task_id`: [`capped_delay_ms`] less a deterministic
/// jitter of at most a [`JITTER_DIVISOR`]th of it.
pub fn backoff_ms(p: &RetryPolicy, task_id: u64, n: u32) -> u64 {
    let d = capped_delay_ms(p, n);
    let span = d / JITTER_DIVISOR;
    if span == 0 {
        return d;
    }
    d - mix(task_id, n) % (span + 1)
}

/// splitmix64 of the task id and the retry number: a well-spread, stable hash.
fn mix(task_id: u64, n: u32) -> u64 {
    let mut z = task_id ^ (u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(delay: u64, cap: u64) -> RetryPolicy {
        RetryPolicy { retry_delay_ms: delay, backoff_max_ms: cap, retry_on: RetryOn::DEFAULT }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_stays_within_a_fifth() {
        let p = policy(1_000, 10_000);
        let want = [1_000, 2_000, 4_000, 8_000, 10_000, 10_000];
        for (i, d) in want.iter().enumerate() {
            let n = i as u32 + 1;
            assert_eq!(capped_delay_ms(&p, n), *d, "retry {n}");
            for task_id in 0..500u64 {
                let b = backoff_ms(&p, task_id << 20, n);
                assert!(b <= *d && b >= d - d / 5, "retry {n} of task {task_id}: {b} ms outside [{}, {d}]", d - d / 5);
            }
        }
        assert_eq!(capped_delay_ms(&p, u32::MAX), 10_000, "no overflow far out");
        assert_eq!(capped_delay_ms(&policy(MAX_RETRY_DELAY_MS, MAX_BACKOFF_MAX_MS), 100), MAX_BACKOFF_MAX_MS);
        assert_eq!(backoff_ms(&policy(0, 0), 7, 3), 0, "no delay, no jitter");
    }

    #[test]
    fn jitter_is_a_function_of_task_and_retry_and_spreads_them() {
        let p = policy(10_000, 60_000);
        assert_eq!(backoff_ms(&p, 42, 2), backoff_ms(&p, 42, 2));
        let waits: std::collections::BTreeSet<u64> = (0..100u64).map(|id| backoff_ms(&p, id, 1)).collect();
        assert!(
            waits.len() > 50,
            "100 tasks failing together should not retry together: {} distinct waits",
            waits.len()
        );
        let per_retry: std::collections::BTreeSet<u64> = (1..=3).map(|n| backoff_ms(&p, 42, n) % 1000).collect();
        assert!(per_retry.len() > 1, "the retry number feeds the jitter");
    }

    #[test]
    fn retry_on_holds_exactly_the_named_reasons() {
        let set = RetryOn::from_reasons([FailureReason::Oom, FailureReason::Timeout]);
        assert_eq!(set.reasons(), vec![FailureReason::Oom, FailureReason::Timeout]);
        assert!(set.is_valid() && !set.contains(FailureReason::ExitCode));
        assert!(!RetryOn::DEFAULT.contains(FailureReason::Cancelled));
        assert_eq!(RetryOn::DEFAULT.reasons().len(), 6);
        assert!(!RetryOn::from_bits(0x80).is_valid());
        for r in FailureReason::ALL {
            assert_eq!(FailureReason::parse(r.as_str()), Some(r));
        }
        assert_eq!(FailureReason::parse("oom_killed"), None);
    }

    #[test]
    fn an_override_keeps_what_it_does_not_name_and_lifts_the_cap_to_the_delay() {
        let base = policy(1_000, 5_000);
        assert_eq!(RetryOverride::default().over(base), base);
        let p = RetryOverride { retry_delay_ms: Some(60_000), ..Default::default() }.over(base);
        assert_eq!((p.retry_delay_ms, p.backoff_max_ms), (60_000, 60_000));
        let p = RetryOverride { backoff_max_ms: Some(2_000), ..Default::default() }.over(base);
        assert_eq!((p.retry_delay_ms, p.backoff_max_ms), (1_000, 2_000));
    }
}
