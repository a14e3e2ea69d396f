//! [`ReadRounds`]: one read-index round shared by every linearizable read waiting for one.
//!
//! A read-index round (the leader confirming its leadership with a quorum, or a follower
//! asking the leader for its read index) costs a message to every peer. Run once per
//! read, a few hundred concurrent reads saturate two cores with heartbeats and time out
//! (measured: ~121,900 "timeout while confirming leadership" at 128 in flight). Here at
//! most one round runs at a time, and every read that arrived while it ran shares the
//! round after it.
//!
//! Invariant (what keeps a shared answer linearizable): a read is answered only by a
//! round that *started after the read arrived*. Rounds are numbered as they start and run
//! one after another under an async mutex; a read notes the number of the last round
//! started when it arrives, and takes the result of a finished round only if that
//! round's number is greater. A read index captured after the read arrived covers every
//! write acknowledged before it arrived, which is all linearizability asks.
//!
//! A round whose driver is cancelled (its caller went away) records nothing; the next
//! waiter runs its own. An error is shared like a result: the reads that waited for that
//! round fail with it (each could only have failed the same way in its own round).

use std::future::Future;
use std::sync::Mutex;

use super::node::ProposeError;

#[derive(Default)]
pub struct ReadRounds {
    /// Held for the whole of a round: rounds never overlap.
    driving: tokio::sync::Mutex<()>,
    state: Mutex<Rounds>,
}

#[derive(Default)]
struct Rounds {
    /// Number of the last round started.
    started: u64,
    /// Number of the last round finished, and what it returned.
    finished: u64,
    result: Option<Result<u64, ProposeError>>,
}

impl ReadRounds {
    /// The read index for a read arriving now: a finished round that started after now,
    /// or `round` run by this caller when none has.
    pub async fn read_index<F, Fut>(&self, round: F) -> Result<u64, ProposeError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<u64, ProposeError>>,
    {
        let arrived_after = self.lock().started;
        let _driving = self.driving.lock().await;
        let number = {
            let mut s = self.lock();
            if s.finished > arrived_after
                && let Some(r) = &s.result
            {
                return r.clone();
            }
            s.started += 1;
            s.started
        };
        let result = round().await;
        let mut s = self.lock();
        s.finished = number;
        s.result = Some(result.clone());
        result
    }

    /// Rounds run so far (for tests and metrics).
    pub fn rounds(&self) -> u64 {
        self.lock().started
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rounds> {
        // The guarded numbers are consistent after any panic (each update is one store).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;

    /// A round's "read index" is the value of a commit counter read when the round
    /// starts; a read that arrives after a write was acknowledged must see an index at
    /// least that write's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reads_share_rounds_and_never_see_an_index_older_than_their_arrival() {
        let rounds = Arc::new(ReadRounds::default());
        let commit = Arc::new(AtomicU64::new(0));
        let writer = {
            let commit = commit.clone();
            tokio::spawn(async move {
                for _ in 0..2_000 {
                    commit.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut readers = Vec::new();
        for _ in 0..64 {
            let (rounds, commit) = (rounds.clone(), commit.clone());
            readers.push(tokio::spawn(async move {
                for _ in 0..50 {
                    let acknowledged = commit.load(Ordering::SeqCst);
                    let c = commit.clone();
                    let index = rounds
                        .read_index(|| async move {
                            let at = c.load(Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_micros(200)).await;
                            Ok(at)
                        })
                        .await
                        .expect("round");
                    assert!(index >= acknowledged, "read index {index} older than acknowledged write {acknowledged}");
                }
            }));
        }
        for r in readers {
            r.await.expect("reader");
        }
        writer.await.expect("writer");
        let n = rounds.rounds();
        assert!(n < 64 * 50 / 4, "{n} rounds for {} reads: not shared", 64 * 50);
    }

    #[tokio::test]
    async fn a_cancelled_round_is_not_reused_and_errors_are_shared_only_within_a_round() {
        let rounds = ReadRounds::default();
        // A driver cancelled mid-round records nothing.
        let cancelled = tokio::time::timeout(
            Duration::from_millis(10),
            rounds.read_index(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok(1)
            }),
        )
        .await;
        assert!(cancelled.is_err());
        assert_eq!(rounds.read_index(|| async { Ok(7) }).await.expect("own round"), 7);
        let failed = rounds.read_index(|| async { Err(ProposeError::NoLeader) }).await;
        assert!(matches!(failed, Err(ProposeError::NoLeader)));
        // A read arriving after the failed round runs a new one.
        assert_eq!(rounds.read_index(|| async { Ok(9) }).await.expect("new round"), 9);
        assert_eq!(rounds.rounds(), 4);
    }
}
