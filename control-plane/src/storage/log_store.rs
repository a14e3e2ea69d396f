//! The Raft log and vote on sled, for openraft's `RaftLogStorage`.
//!
//! Durability: an append is reported to openraft (its `LogFlushed` callback) only after
//! sled has flushed it to disk, and `save_vote` returns only after the vote is flushed.
//! Flushes are grouped: one background flush completes every append written before it,
//! in order, so concurrent appends share a disk sync.
//! sled itself only flushes on a timer, so without this an acknowledged entry could be
//! lost by a power cut.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};

use super::io_err;
use crate::raft::types::{Entry, LogId, RaftStorageError, TypeConfig, Vote};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    flusher: Arc<OnceLock<mpsc::Sender<LogFlushed<TypeConfig>>>>,
}

/// Most appends waiting for one group flush.
const FLUSH_QUEUE_LEN: usize = 1_024;

/// Group commit: waits for appends' callbacks, flushes sled once for everything written so
/// far, then completes the callbacks in append order. Ends when every `LogStore` handle
/// (the channel's senders) is gone.
async fn flush_loop(db: sled::Db, mut rx: mpsc::Receiver<LogFlushed<TypeConfig>>) {
    let mut pending = Vec::new();
    while let Some(first) = rx.recv().await {
        pending.push(first);
        while let Ok(more) = rx.try_recv() {
            pending.push(more);
        }
        let result = db.flush_async().await.map(|_| ()).map_err(|e| e.to_string());
        for cb in pending.drain(..) {
            cb.log_io_completed(result.clone().map_err(std::io::Error::other));
        }
    }
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    match postcard::to_stdvec(v) {
        Ok(b) => b,
        Err(e) => unreachable!("postcard encoding of a Raft value failed: {e}"),
    }
}

impl LogStore {
    pub fn new(db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(Self {
            db: db.clone(),
            log: db.open_tree("raft_log")?,
            meta: db.open_tree("raft_meta")?,
            flusher: Arc::new(OnceLock::new()),
        })
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, RaftStorageError> {
        let v = self.meta.get(key).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
        match v {
            None => Ok(None),
            Some(b) => postcard::from_bytes(&b).map(Some).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e)),
        }
    }

    async fn flush(&self) -> Result<(), sled::Error> {
        self.db.flush_async().await.map(|_| ())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for item in self.log.range(start.to_be_bytes()..) {
            let (k, v) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            let idx = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| io_err(ErrorSubject::Logs, ErrorVerb::Read, std::io::Error::other("bad log key")))?,
            );
            if !range.contains(&idx) {
                break;
            }
            let e: Entry = postcard::from_bytes(&v).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            out.push(e);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let last_purged: Option<LogId> = self.read_meta(LAST_PURGED)?;
        let last = match self.log.last().map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))? {
            Some((_, v)) => {
                let e: Entry = postcard::from_bytes(&v).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                Some(e.log_id)
            }
            None => last_purged,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), RaftStorageError> {
        self.meta.insert(VOTE, enc(vote)).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.flush().await.map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, RaftStorageError> {
        self.read_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        // Not flushed: it is only a hint for faster restart (openraft re-derives it).
        self.meta.insert(COMMITTED, enc(&committed)).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        Ok(self.read_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for e in entries {
            batch.insert(&e.log_id.index.to_be_bytes(), enc(&e));
        }
        self.log.apply_batch(batch).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        // Returning before the flush lets openraft keep appending (and replicating) while
        // the disk works; the callback, which is what makes the entry count as persisted,
        // fires only after a flush that covers it.
        let flusher = self.flusher.get_or_init(|| {
            let (tx, rx) = mpsc::channel(FLUSH_QUEUE_LEN);
            tokio::spawn(flush_loop(self.db.clone(), rx));
            tx
        });
        flusher
            .send(callback)
            .await
            .map_err(|_| io_err(ErrorSubject::Logs, ErrorVerb::Write, std::io::Error::other("log flusher stopped")))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        let mut batch = sled::Batch::default();
        for k in self.log.range(log_id.index.to_be_bytes()..).keys() {
            batch.remove(k.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?);
        }
        self.log.apply_batch(batch).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.flush().await.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        self.meta.insert(LAST_PURGED, enc(&log_id)).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.flush().await.map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        let mut batch = sled::Batch::default();
        for k in self.log.range(..=log_id.index.to_be_bytes()).keys() {
            batch.remove(k.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?);
        }
        self.log.apply_batch(batch).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}
