//! Log shipping: container output from every running task, batched into `AppendLogs`
//! calls (one Raft command for many tasks) by size and by time.
//!
//! Owns the ordered queue of output between runners and the control plane. Invariants:
//! * chunks of one lease are shipped in the order the runner queued them, each with a
//!   per-lease `seq` that only increases, so a retried call cannot duplicate output;
//! * a `Flush` is acknowledged only after every chunk queued before it was accepted or
//!   given up on; a runner flushes before it reports completion, so a task's output is
//!   committed before its end;
//! * a batch is retried while any of its leases is still held; chunks of leases the
//!   control plane calls stale are dropped and the lease is reported to the agent.

use std::time::Duration;

use bytes::Bytes;
use drover_proto::agent as pa;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::executor::LogStream;
use crate::uplink::ControlPlane;

/// Largest chunk sent (the control plane refuses more than 256 KiB).
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;
const MAX_CHUNKS_PER_CALL: usize = 500;

pub use crate::lease_book::Lease;

pub enum ShipMsg {
    Chunk {
        lease: Lease,
        seq: u64,
        stream: LogStream,
        data: Bytes,
    },
    /// Acknowledged once everything queued before it has been shipped or dropped.
    Flush {
        ack: oneshot::Sender<()>,
    },
}

/// What the shipper needs from the agent.
pub trait ShipperHost: Send + Sync + 'static {
    /// Whether the agent still holds the lease (else its chunks are dropped).
    fn holds(&self, lease: Lease) -> bool;
    /// The control plane refused chunks of this lease as stale.
    fn lease_stale(&self, lease: Lease);
    fn shipped_bytes(&self, n: u64);
}

pub struct Shipper<H: ShipperHost> {
    pub uplink: std::sync::Arc<dyn ControlPlane>,
    pub host: std::sync::Arc<H>,
    pub batch_bytes: usize,
    pub flush_interval: Duration,
}

struct Batch {
    chunks: Vec<(Lease, u64, LogStream, Vec<u8>)>,
    bytes: usize,
    flushes: Vec<oneshot::Sender<()>>,
}

impl Batch {
    fn add(&mut self, msg: ShipMsg) {
        match msg {
            ShipMsg::Chunk { lease, seq, stream, data } => {
                self.bytes += data.len();
                // Merge with the previous chunk of the same lease and stream: fewer keys,
                // same bytes; the merged chunk carries the later seq.
                if let Some(last) = self.chunks.last_mut()
                    && last.0 == lease
                    && last.2 == stream
                    && last.3.len() + data.len() <= MAX_CHUNK_BYTES
                {
                    last.1 = seq;
                    last.3.extend_from_slice(&data);
                    return;
                }
                self.chunks.push((lease, seq, stream, data.to_vec()));
            }
            ShipMsg::Flush { ack } => self.flushes.push(ack),
        }
    }

    fn ready(&self, batch_bytes: usize) -> bool {
        !self.flushes.is_empty() || self.bytes >= batch_bytes || self.chunks.len() >= MAX_CHUNKS_PER_CALL
    }
}

impl<H: ShipperHost> Shipper<H> {
    /// Runs until `cancel` fires while idle, or every sender is gone.
    pub async fn run(self, mut rx: mpsc::Receiver<ShipMsg>, cancel: CancellationToken) {
        loop {
            let first = tokio::select! {
                m = rx.recv() => match m { Some(m) => m, None => return },
                _ = cancel.cancelled() => return,
            };
            let mut batch = Batch { chunks: Vec::new(), bytes: 0, flushes: Vec::new() };
            batch.add(first);
            let deadline = tokio::time::Instant::now() + self.flush_interval;
            while !batch.ready(self.batch_bytes) {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(m)) => batch.add(m),
                    Ok(None) | Err(_) => break,
                }
            }
            self.ship(batch.chunks, &cancel).await;
            for ack in batch.flushes {
                let _ = ack.send(());
            }
        }
    }

    async fn ship(&self, mut chunks: Vec<(Lease, u64, LogStream, Vec<u8>)>, cancel: &CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        loop {
            chunks.retain(|c| self.host.holds(c.0));
            if chunks.is_empty() {
                return;
            }
            let req = pa::AppendLogsRequest {
                agent_id: String::new(),
                chunks: chunks
                    .iter()
                    .map(|(l, seq, stream, data)| pa::LogChunk {
                        lease: Some(pa::LeaseRef { task_id: l.task_id, lease_epoch: l.epoch }),
                        seq: *seq,
                        stream: match stream {
                            LogStream::Stdout => pa::LogStream::Stdout,
                            LogStream::Stderr => pa::LogStream::Stderr,
                        } as i32,
                        data: data.clone(),
                    })
                    .collect(),
            };
            let bytes: u64 = chunks.iter().map(|c| c.3.len() as u64).sum();
            match self.uplink.append_logs(req.clone()).await {
                Ok(resp) => {
                    let mut stale_bytes = 0;
                    for s in &resp.stale {
                        let lease = Lease { task_id: s.task_id, epoch: s.lease_epoch };
                        stale_bytes += chunks.iter().filter(|c| c.0 == lease).map(|c| c.3.len() as u64).sum::<u64>();
                        self.host.lease_stale(lease);
                    }
                    self.host.shipped_bytes(bytes - stale_bytes);
                    return;
                }
                Err(e) => {
                    let code = e.status().map(|s| s.code());
                    if matches!(code, Some(tonic::Code::InvalidArgument | tonic::Code::PermissionDenied)) {
                        tracing::error!(error = %e, "the control plane refused a log batch; dropping it");
                        return;
                    }
                    tracing::warn!(error = %e, "shipping logs failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = cancel.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(task_id: u64, seq: u64, stream: LogStream, data: &[u8]) -> ShipMsg {
        ShipMsg::Chunk { lease: Lease { task_id, epoch: 7 }, seq, stream, data: Bytes::copy_from_slice(data) }
    }

    #[test]
    fn adjacent_chunks_of_one_lease_and_stream_merge_with_the_later_seq() {
        let mut b = Batch { chunks: Vec::new(), bytes: 0, flushes: Vec::new() };
        b.add(chunk(1, 0, LogStream::Stdout, b"a"));
        b.add(chunk(1, 1, LogStream::Stdout, b"b"));
        b.add(chunk(1, 2, LogStream::Stderr, b"c"));
        b.add(chunk(2, 0, LogStream::Stderr, b"d"));
        b.add(chunk(1, 3, LogStream::Stderr, b"e"));
        let got: Vec<(u64, u64, LogStream, &[u8])> =
            b.chunks.iter().map(|(l, s, st, d)| (l.task_id, *s, *st, d.as_slice())).collect();
        assert_eq!(
            got,
            [
                (1, 1, LogStream::Stdout, &b"ab"[..]),
                (1, 2, LogStream::Stderr, b"c"),
                (2, 0, LogStream::Stderr, b"d"),
                (1, 3, LogStream::Stderr, b"e")
            ]
        );
        assert_eq!(b.bytes, 5);
        assert!(!b.ready(6) && b.ready(5), "ready by size");
    }

    #[test]
    fn merging_stops_at_the_chunk_size_limit_and_a_flush_makes_a_batch_ready() {
        let mut b = Batch { chunks: Vec::new(), bytes: 0, flushes: Vec::new() };
        let big = vec![b'x'; MAX_CHUNK_BYTES - 1];
        b.add(chunk(1, 0, LogStream::Stdout, &big));
        b.add(chunk(1, 1, LogStream::Stdout, b"yy"));
        assert_eq!(b.chunks.len(), 2, "a merged chunk never exceeds MAX_CHUNK_BYTES");
        assert!(!b.ready(usize::MAX));
        let (ack, _rx) = oneshot::channel();
        b.add(ShipMsg::Flush { ack });
        assert!(b.ready(usize::MAX));
    }
}
