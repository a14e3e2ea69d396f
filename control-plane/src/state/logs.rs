//! Task logs: the output agents ship, appended through Raft and capped per task.
//!
//! Owns the `g/` (per-task log metadata) and `l/` (chunks) tables. Invariants:
//! * a chunk is stored only if it names the task's current lease (agent and epoch);
//!   anything else is refused with `StaleEpoch` and writes nothing;
//! * per lease, an agent's chunk sequence numbers only move forward: a chunk whose `seq`
//!   was already accepted is acknowledged and ignored (so a retried batch cannot
//!   duplicate output);
//! * a task's stored output never exceeds the cap stamped on the command; the byte that
//!   would cross it is cut and one `System` chunk marking the truncation follows; after
//!   it, output is acknowledged and dropped;
//! * chunk numbers (`l/` keys) are dense from 0, so readers can resume at an index.

use serde::{Deserialize, Serialize};

use super::command::{LeaseRef, Response};
use super::error::StateError;
use super::keys;
use super::kv::{KvError, KvRead, Txn, try_scan};
use super::machine::{ApplyCtx, StateMachine};

/// Largest single chunk an agent may send.
pub const MAX_CHUNK_BYTES: usize = 256 * 1024;
/// Most chunks in one append command.
pub const MAX_CHUNKS_PER_APPEND: usize = 1_000;
/// Most chunk bytes in one append call (one Raft command, which must fit an entry of
/// [`crate::raft::batcher::MAX_ENTRY_BYTES`]). Checked at the API edge only: `apply`
/// keeps accepting what earlier versions committed.
pub const MAX_APPEND_BYTES: usize = 1024 * 1024;
/// Highest chunk sequence number an agent may use (it counts from 0), so `seq + 1` and
/// every later step stay in range.
pub const MAX_CHUNK_SEQ: u64 = i64::MAX as u64;

/// Refuses a whole append before anything is written: too many chunks, a chunk over
/// [`MAX_CHUNK_BYTES`], or a `seq` over [`MAX_CHUNK_SEQ`]. The API edge and `apply` both
/// run it.
pub fn check_chunks(chunks: &[LogAppend]) -> Result<(), StateError> {
    if chunks.len() > MAX_CHUNKS_PER_APPEND {
        return Err(StateError::invalid(
            "chunks",
            format!("{} entries is over the limit of {MAX_CHUNKS_PER_APPEND}", chunks.len()),
        ));
    }
    for (i, c) in chunks.iter().enumerate() {
        if c.data.len() > MAX_CHUNK_BYTES {
            return Err(StateError::invalid(
                format!("chunks[{i}].data"),
                format!("{} bytes is over the limit of {MAX_CHUNK_BYTES}", c.data.len()),
            ));
        }
        if c.seq > MAX_CHUNK_SEQ {
            return Err(StateError::invalid(
                format!("chunks[{i}].seq"),
                format!("{} is over the limit of {MAX_CHUNK_SEQ}", c.seq),
            ));
        }
    }
    Ok(())
}

/// Refuses an append call whose chunks hold more than [`MAX_APPEND_BYTES`] together.
pub fn check_append_bytes(chunks: &[LogAppend]) -> Result<(), StateError> {
    let total: usize = chunks.iter().map(|c| c.data.len()).sum();
    if total > MAX_APPEND_BYTES {
        return Err(StateError::invalid(
            "chunks",
            format!(
                "{total} data bytes in one call is over the limit of {MAX_APPEND_BYTES}; send fewer chunks per call"
            ),
        ));
    }
    Ok(())
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Written by Drover itself (truncation markers).
    System,
}

/// One chunk an agent ships.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LogAppend {
    pub lease: LeaseRef,
    /// Per lease, increasing; chosen by the agent.
    pub seq: u64,
    pub stream: LogStream,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A stored chunk.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LogChunk {
    pub epoch: u64,
    pub stream: LogStream,
    pub stamp_ms: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Per-task log bookkeeping.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct LogMeta {
    /// Bytes of task output stored (markers not counted).
    pub bytes: u64,
    /// Number of chunks stored; the next chunk's index.
    pub chunks: u32,
    pub truncated: bool,
    /// The lease `next_seq` belongs to.
    pub epoch: u64,
    pub next_seq: u64,
}

pub const META: &[u8] = b"g/";
pub const CHUNK: &[u8] = b"l/";

pub fn meta_key(task_id: u64) -> Vec<u8> {
    let mut k = META.to_vec();
    k.extend_from_slice(&task_id.to_be_bytes());
    k
}

pub fn chunks_prefix(task_id: u64) -> Vec<u8> {
    let mut k = CHUNK.to_vec();
    k.extend_from_slice(&task_id.to_be_bytes());
    k
}

pub fn chunk_key(task_id: u64, index: u32) -> Vec<u8> {
    let mut k = chunks_prefix(task_id);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

pub fn truncation_marker(cap: u64) -> Vec<u8> {
    format!("\n[drover: log truncated at {cap} bytes; later output was dropped]\n").into_bytes()
}

type Applied = Result<Result<Response, StateError>, KvError>;

impl StateMachine {
    pub(super) fn append_logs(
        &mut self,
        txn: &mut Txn<'_>,
        ctx: ApplyCtx,
        agent_id: &str,
        max_task_log_bytes: u64,
        chunks: &[LogAppend],
    ) -> Applied {
        if let Err(e) = check_chunks(chunks) {
            return Ok(Err(e));
        }
        let mut results = Vec::with_capacity(chunks.len());
        for c in chunks {
            results.push(self.append_one(txn, ctx, agent_id, max_task_log_bytes, c)?);
        }
        Ok(Ok(Response::LogsAppended { results }))
    }

    fn append_one(
        &mut self,
        txn: &mut Txn<'_>,
        ctx: ApplyCtx,
        agent_id: &str,
        cap: u64,
        c: &LogAppend,
    ) -> Result<Result<(), StateError>, KvError> {
        let LeaseRef { task_id, epoch } = c.lease;
        let current = self.idx.running.get(&task_id).is_some_and(|run| run.epoch == epoch && run.agent_id == agent_id);
        if !current {
            return Ok(Err(StateError::StaleEpoch { task_id, epoch }));
        }
        let mut meta: LogMeta = match txn.get(&meta_key(task_id))? {
            Some(v) => keys::decode(&v)?,
            None => LogMeta::default(),
        };
        if meta.epoch != epoch {
            meta.epoch = epoch;
            meta.next_seq = 0;
        }
        if c.seq < meta.next_seq {
            return Ok(Ok(()));
        }
        // Checked, though `check_chunks` keeps `seq` far below the top: `apply` must not
        // be able to panic on anything a command carries.
        meta.next_seq = c.seq.saturating_add(1);
        // A chunk index is a u32; a log that would need more is cut like one over its cap.
        if meta.chunks >= u32::MAX - 1 {
            meta.truncated = true;
        }
        if !meta.truncated && !c.data.is_empty() {
            let room = cap.saturating_sub(meta.bytes);
            let keep = (c.data.len() as u64).min(room) as usize;
            if keep > 0 {
                let chunk = LogChunk { epoch, stream: c.stream, stamp_ms: ctx.now_ms, data: c.data[..keep].to_vec() };
                txn.put(chunk_key(task_id, meta.chunks), keys::encode(&chunk));
                meta.chunks += 1;
                meta.bytes = meta.bytes.saturating_add(keep as u64);
            }
            if keep < c.data.len() {
                let marker =
                    LogChunk { epoch, stream: LogStream::System, stamp_ms: ctx.now_ms, data: truncation_marker(cap) };
                txn.put(chunk_key(task_id, meta.chunks), keys::encode(&marker));
                meta.chunks += 1;
                meta.truncated = true;
            }
        }
        txn.put(meta_key(task_id), keys::encode(&meta));
        Ok(Ok(()))
    }

    /// Deletes a task's log (retention purge), at most `budget` keys of it, from the
    /// last chunk down so the chunks left are still `0..meta.chunks`; takes what it
    /// deleted off `budget`. Returns whether the log is gone.
    pub(super) fn delete_log_within(
        &mut self,
        txn: &mut Txn<'_>,
        task_id: u64,
        budget: &mut u64,
    ) -> Result<bool, KvError> {
        let Some(v) = txn.get(&meta_key(task_id))? else { return Ok(true) };
        let mut meta: LogMeta = keys::decode(&v)?;
        while meta.chunks > 0 && *budget > 0 {
            meta.chunks -= 1;
            txn.delete(chunk_key(task_id, meta.chunks));
            *budget -= 1;
        }
        if *budget == 0 {
            // Whatever is left (chunks, or just the metadata) waits for the next purge.
            txn.put(meta_key(task_id), keys::encode(&meta));
            return Ok(false);
        }
        txn.delete(meta_key(task_id));
        *budget -= 1;
        Ok(true)
    }
}

/// Chunks of a task's log from index `from`, at most `max_bytes` of data (at least one
/// chunk when any is there). Returns `(index, chunk)` pairs.
pub fn read_log(kv: &dyn KvRead, task_id: u64, from: u32, max_bytes: usize) -> Result<Vec<(u32, LogChunk)>, KvError> {
    let prefix = chunks_prefix(task_id);
    let start = chunk_key(task_id, from);
    let mut out = Vec::new();
    let mut bytes = 0usize;
    try_scan(kv, &prefix, &start, &mut |k, v| {
        let index = k
            .get(prefix.len()..)
            .and_then(|t| <[u8; 4]>::try_from(t).ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| KvError(format!("malformed log key {k:?}")))?;
        let c = keys::decode::<LogChunk>(v)?;
        bytes += c.data.len();
        out.push((index, c));
        Ok(bytes < max_bytes)
    })?;
    Ok(out)
}

pub fn log_meta(kv: &dyn KvRead, task_id: u64) -> Result<LogMeta, KvError> {
    match kv.get(&meta_key(task_id))? {
        Some(v) => keys::decode(&v),
        None => Ok(LogMeta::default()),
    }
}
