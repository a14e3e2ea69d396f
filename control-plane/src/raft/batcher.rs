//! The proposal batcher: concurrent client commands share Raft entries.
//!
//! openraft appends, flushes and replicates each `client_write` separately, so one entry
//! per call caps single-task enqueues at one disk flush each. Here callers hand their
//! command to a bounded queue; a loop takes everything waiting (up to
//! [`MAX_COMMANDS_PER_ENTRY`] commands and [`MAX_ENTRY_BYTES`] of encoded commands) as
//! one [`Command::Batch`], keeps up to `max_in_flight` such entries in flight, and hands
//! each caller its own response. Under light load a batch is one command, so latency is
//! that of a direct proposal; under heavy load batches grow and throughput follows.
//!
//! Invariant: no entry the batcher proposes encodes to more than [`MAX_ENTRY_BYTES`]
//! plus a small envelope, far under what a log segment record may hold
//! ([`segments::MAX_RECORD`]); a command that alone is over [`MAX_ENTRY_BYTES`] is
//! refused with [`ProposeError::TooLarge`] (the node checks it again for every other
//! path to the log). The size counted is the command's postcard encoding, which is how
//! the log stores it: every command kind counts, not only queued payloads.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::node::{ProposeError, RaftNode};
use crate::state::{Command, Response};
use crate::storage::segments;

pub const MAX_COMMANDS_PER_ENTRY: usize = 64;
/// Most encoded command bytes in one entry (1.5 MiB, etcd's request limit, for the same
/// reason). openraft 0.9 gives every AppendEntries call `heartbeat_interval` to finish
/// (100 ms by default) and heartbeats ride the same stream: an entry that cannot cross
/// to a follower, be written and be acknowledged within it is resent forever, never
/// commits, and starves the heartbeats behind it until the followers depose the leader.
/// Measured on a 2-core machine with a debug build, one 15 MiB entry took 0.6–1.1 s to
/// commit. Every request that becomes one command is bounded under this at the API edge
/// (queue calls by [`crate::state::validate::MAX_BATCH_PAYLOAD_BYTES`], log appends by
/// [`crate::state::logs::MAX_APPEND_BYTES`]); anything else larger is refused here.
pub const MAX_ENTRY_BYTES: usize = 1536 * 1024;
/// Bound on an entry's bytes outside its commands' encodings.
const ENVELOPE_BYTES: usize = 64 * 1024;
const _: () = assert!(MAX_ENTRY_BYTES + ENVELOPE_BYTES <= segments::MAX_RECORD as usize);
const QUEUE_LEN: usize = 4_096;

type Reply = oneshot::Sender<Result<Response, ProposeError>>;

/// The postcard-encoded size of `cmd`: what it adds to a log entry.
pub fn encoded_bytes(cmd: &Command) -> usize {
    // The size flavor only counts; encoding our own serde types cannot fail, and a failure
    // would surface as a refusal (usize::MAX is over every limit).
    postcard::serialize_with_flavor(cmd, postcard::ser_flavors::Size::default()).unwrap_or(usize::MAX)
}

/// What the batching loop proposes through: the Raft node (or a stand-in in tests).
pub trait Proposer: Send + Sync + 'static {
    fn propose(&self, cmd: Command) -> impl Future<Output = Result<Response, ProposeError>> + Send;
}

impl Proposer for RaftNode {
    fn propose(&self, cmd: Command) -> impl Future<Output = Result<Response, ProposeError>> + Send {
        RaftNode::propose(self, cmd)
    }
}

#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<(Command, Reply)>,
}

impl Batcher {
    /// Starts the batching loop on `tracker`; it stops when `shutdown` is cancelled.
    pub fn start<P: Proposer>(
        node: Arc<P>,
        max_in_flight: usize,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        tracker.spawn(run(node, rx, max_in_flight, tracker.clone(), shutdown));
        Batcher { tx }
    }

    /// Proposes `cmd` in a shared entry and returns its own response.
    pub async fn propose(&self, cmd: Command) -> Result<Response, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send((cmd, reply)).await.map_err(|_| ProposeError::ShuttingDown)?;
        rx.await.map_err(|_| ProposeError::ShuttingDown)?
    }
}

/// A command with its encoded size, or its refusal sent (None) when it cannot fit in
/// any entry.
fn sized((cmd, reply): (Command, Reply)) -> Option<(Command, Reply, usize)> {
    let bytes = encoded_bytes(&cmd);
    if bytes > MAX_ENTRY_BYTES {
        let _ = reply.send(Err(ProposeError::TooLarge { bytes, limit: MAX_ENTRY_BYTES }));
        return None;
    }
    Some((cmd, reply, bytes))
}

async fn run<P: Proposer>(
    node: Arc<P>,
    mut rx: mpsc::Receiver<(Command, Reply)>,
    max_in_flight: usize,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let mut carry: Option<(Command, Reply, usize)> = None;
    loop {
        // Take a slot first, so that while every slot is busy, commands pile up and the
        // next entry carries them all.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let first = match carry.take() {
            Some(c) => c,
            None => loop {
                let c = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    c = rx.recv() => match c { Some(c) => c, None => return },
                };
                if let Some(c) = sized(c) {
                    break c;
                }
            },
        };
        let mut bytes = first.2;
        let mut batch = vec![(first.0, first.1)];
        while batch.len() < MAX_COMMANDS_PER_ENTRY {
            let Ok(next) = rx.try_recv() else { break };
            let Some(next) = sized(next) else { continue };
            if bytes + next.2 > MAX_ENTRY_BYTES {
                carry = Some(next);
                break;
            }
            bytes += next.2;
            batch.push((next.0, next.1));
        }
        let node = node.clone();
        tracker.spawn(async move {
            let _permit = permit;
            if batch.len() == 1 {
                let (cmd, reply) = batch.remove(0);
                let _ = reply.send(node.propose(cmd).await);
                return;
            }
            let (cmds, replies): (Vec<Command>, Vec<Reply>) = batch.into_iter().unzip();
            match node.propose(Command::Batch(cmds)).await {
                Ok(Response::Batch(rs)) if rs.len() == replies.len() => {
                    for (r, reply) in rs.into_iter().zip(replies) {
                        let _ = reply.send(Ok(r));
                    }
                }
                Ok(other) => {
                    let e = ProposeError::Raft(format!("batch answered with {other:?}"));
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use openraft::EntryPayload;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::raft::types::Entry;
    use crate::state::command::{LeaseRef, LeaseRequest};
    use crate::state::logs::{LogAppend, LogStream};
    use crate::state::{Proposal, Request};

    /// Stands in for the Raft node: sizes each entry as the log stores it, fails like
    /// storage on one over the record limit, and holds proposals until `gate` opens.
    struct SizingLog {
        entered: std::sync::atomic::AtomicUsize,
        gate: Semaphore,
        entry_bytes: Mutex<Vec<usize>>,
    }

    impl Proposer for SizingLog {
        async fn propose(&self, cmd: Command) -> Result<Response, ProposeError> {
            self.entered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _open = self.gate.acquire().await.map_err(|_| ProposeError::ShuttingDown)?;
            let n = match &cmd {
                Command::Batch(cmds) => Some(cmds.len()),
                _ => None,
            };
            let entry = Entry {
                log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(u64::MAX, u64::MAX), u64::MAX),
                payload: EntryPayload::Normal(Request::V1(Proposal { stamp_ms: u64::MAX, cmd })),
            };
            let bytes = postcard::serialize_with_flavor(&entry, postcard::ser_flavors::Size::default())
                .map_err(|e| ProposeError::Raft(e.to_string()))?;
            self.entry_bytes.lock().map_err(|_| ProposeError::ShuttingDown)?.push(bytes);
            if bytes > segments::MAX_RECORD as usize {
                return Err(ProposeError::Raft(format!("storage: log entry of {bytes} bytes is too large")));
            }
            Ok(match n {
                Some(n) => Response::Batch(vec![Response::Empty; n]),
                None => Response::Empty,
            })
        }
    }

    /// An `AppendLogs` of `chunks` full-size chunks (256 KiB each).
    fn append_logs(chunks: usize) -> Command {
        let chunk = LogAppend {
            lease: LeaseRef { task_id: 1, epoch: 1 },
            seq: 0,
            stream: LogStream::Stdout,
            data: vec![b'x'; crate::state::logs::MAX_CHUNK_BYTES],
        };
        Command::AppendLogs {
            agent_id: "a".into(),
            max_task_log_bytes: u64::MAX,
            chunks: (0..chunks).map(|i| LogAppend { seq: i as u64, ..chunk.clone() }).collect(),
        }
    }

    /// A `Lease` whose agent carries 1 MiB of labels.
    fn big_lease() -> Command {
        let mut req = LeaseRequest { agent_id: "a".into(), attrs: Default::default(), slots: 1, max_tasks: 1 };
        req.attrs.labels = (0..4).map(|i| (format!("k{i}"), "v".repeat(256 * 1024))).collect::<BTreeMap<_, _>>();
        Command::Lease { term: 1, requests: vec![req] }
    }

    /// `AppendLogs` of 1 MiB (the old cap counted only queued payloads, so any number of
    /// these shared one entry) and 1 MiB-label `Lease` calls: every entry stays under
    /// the entry bound, every caller is served, and a command too large for any entry is
    /// refused as `ResourceExhausted` naming the limit, without stopping the others.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_are_bounded_by_encoded_size_and_an_oversized_command_is_refused() {
        let log = Arc::new(SizingLog {
            entered: Default::default(),
            gate: Semaphore::new(0),
            entry_bytes: Mutex::new(Vec::new()),
        });
        let tracker = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let batcher = Batcher::start(log.clone(), 1, &tracker, shutdown.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut calls = Vec::new();
        for i in 0..28 {
            // The first call alone takes the only slot and waits in the log; the rest
            // queue up behind it, so the batcher has all of them to batch.
            if i == 1 {
                while log.entered.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                    assert!(Instant::now() < deadline, "the first call never reached the log");
                    tokio::task::yield_now().await;
                }
            }
            let cmd = match i {
                0..8 => append_logs(4),
                8..27 => big_lease(),
                // 2 MiB: over the entry bound by itself.
                _ => append_logs(8),
            };
            let b = batcher.clone();
            calls.push(tokio::spawn(async move { b.propose(cmd).await }));
        }
        while batcher.tx.max_capacity() - batcher.tx.capacity() < 27 {
            assert!(Instant::now() < deadline, "the calls never queued");
            tokio::task::yield_now().await;
        }
        log.gate.add_permits(1_000);
        let mut refused = Vec::new();
        for c in calls {
            if let Err(e) = c.await.expect("call") {
                refused.push(e);
            }
        }
        shutdown.cancel();
        let sizes = log.entry_bytes.lock().expect("sizes").clone();
        let biggest = sizes.iter().copied().max().unwrap_or(0);
        assert!(biggest <= MAX_ENTRY_BYTES + ENVELOPE_BYTES, "an entry of {biggest} bytes: {sizes:?}");
        assert!(sizes.len() >= 18, "27 MiB of commands in entries of at most 1.5 MiB: {sizes:?}");
        assert_eq!(refused.len(), 1, "{refused:?}");
        let status = tonic::Status::from(crate::api::error::ApiError::from(refused.remove(0)));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains(&MAX_ENTRY_BYTES.to_string()), "names the limit: {}", status.message());
    }
}
