//! The proposal batcher: concurrent client commands share Raft entries.
//!
//! openraft appends, flushes and replicates each `client_write` separately, so one entry
//! per call caps single-task enqueues at one disk flush each. Here callers hand their
//! command to a bounded queue; a loop takes everything waiting (up to
//! [`MAX_COMMANDS_PER_ENTRY`] commands and [`MAX_PAYLOAD_BYTES_PER_ENTRY`]) as one
//! [`Command::Batch`], keeps up to `max_in_flight` such entries in flight, and hands each
//! caller its own response. Under light load a batch is one command, so latency is that of
//! a direct proposal; under heavy load batches grow and throughput follows.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::node::{ProposeError, RaftNode};
use crate::state::{Command, Response};

pub const MAX_COMMANDS_PER_ENTRY: usize = 64;
pub const MAX_PAYLOAD_BYTES_PER_ENTRY: usize = 16 * 1024 * 1024;
const QUEUE_LEN: usize = 4_096;

type Reply = oneshot::Sender<Result<Response, ProposeError>>;

#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<(Command, Reply)>,
}

fn payload_bytes(cmd: &Command) -> usize {
    match cmd {
        Command::QueueTasks { tasks, .. } => tasks.iter().map(|t| t.payload.len()).sum(),
        _ => 0,
    }
}

impl Batcher {
    /// Starts the batching loop on `tracker`; it stops when `shutdown` is cancelled.
    pub fn start(
        node: Arc<RaftNode>,
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

async fn run(
    node: Arc<RaftNode>,
    mut rx: mpsc::Receiver<(Command, Reply)>,
    max_in_flight: usize,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let mut carry: Option<(Command, Reply)> = None;
    loop {
        // Take a slot first, so that while every slot is busy, commands pile up and the
        // next entry carries them all.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let first = match carry.take() {
            Some(c) => c,
            None => tokio::select! {
                _ = shutdown.cancelled() => return,
                c = rx.recv() => match c { Some(c) => c, None => return },
            },
        };
        let mut bytes = payload_bytes(&first.0);
        let mut batch = vec![first];
        while batch.len() < MAX_COMMANDS_PER_ENTRY {
            let Ok(next) = rx.try_recv() else { break };
            let b = payload_bytes(&next.0);
            if bytes + b > MAX_PAYLOAD_BYTES_PER_ENTRY {
                carry = Some(next);
                break;
            }
            bytes += b;
            batch.push(next);
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
