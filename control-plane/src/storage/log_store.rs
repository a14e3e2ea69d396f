//! The Raft log for openraft's `RaftLogStorage`: entries in append-only segment files
//! ([`super::segments`]) and the vote in the file `vote` beside them, both through the
//! [`Fs`] layer; the purge point (and the committed hint) in sled's `raft_meta` tree.
//!
//! Durability: an append is reported to openraft (its `LogFlushed` callback) only after
//! the segment file has been synced (`fdatasync`), and `save_vote` returns only after the
//! vote file was replaced durably (a synced temporary file renamed over it, then the
//! directory synced: a crash leaves the old vote or the new one). Syncs are grouped: one
//! background sync completes every append written before it, in order, so concurrent
//! appends share a disk sync. Votes written by older drovers are in sled (`raft_meta`
//! key `vote`) and are read from there until a vote file exists.
//!
//! The state machine lives in sled and is flushed on sled's timer, so after a crash it
//! may be behind the log; openraft re-applies the difference. Purging therefore flushes
//! sled first: the log is never cut above what the state machine has durably applied.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::mpsc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};

use super::fs::{FileReader, FileRef, Fs};
use super::segments::{self, Segments};
use super::{blocking, io_err};
use crate::raft::types::{Entry, LogId, RaftStorageError, TypeConfig, Vote};

/// The key of the vote in sled, where older drovers kept it.
pub(super) const LEGACY_VOTE: &[u8] = b"vote";
/// The vote file's name in the log directory.
pub(super) const VOTE_FILE: &str = "vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";
/// The sled tree that held the log before it moved to segment files.
const OLD_LOG_TREE: &[u8] = b"raft_log";

struct Inner {
    segs: Segments,
    last_purged: Option<LogId>,
    last_log_id: Option<LogId>,
}

type Pending = (LogFlushed<TypeConfig>, Option<FileRef>);

#[derive(Clone)]
pub struct LogStore {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    inner: Arc<Mutex<Inner>>,
    flusher: Arc<OnceLock<mpsc::Sender<Pending>>>,
    sync_seconds: Option<prometheus::Histogram>,
}

/// Most appends waiting for one group sync.
const FLUSH_QUEUE_LEN: usize = 1_024;

/// Group commit: waits for appends' callbacks, syncs each file written since the last
/// round once, then completes the callbacks in append order. Ends when every `LogStore`
/// handle (the channel's senders) is gone.
async fn flush_loop(mut rx: mpsc::Receiver<Pending>, sync_seconds: Option<prometheus::Histogram>) {
    let mut pending: Vec<Pending> = Vec::new();
    while let Some(first) = rx.recv().await {
        pending.push(first);
        while let Ok(more) = rx.try_recv() {
            pending.push(more);
        }
        let mut files: Vec<FileRef> = Vec::new();
        for f in pending.iter().filter_map(|(_, f)| f.as_ref()) {
            if !files.iter().any(|g| Arc::ptr_eq(f, g)) {
                files.push(f.clone());
            }
        }
        let timer = sync_seconds.as_ref().map(|h| h.start_timer());
        let result = tokio::task::spawn_blocking(move || sync_files(&files))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
            .map_err(|e| e.to_string());
        drop(timer);
        for (cb, _) in pending.drain(..) {
            cb.log_io_completed(result.clone().map_err(std::io::Error::other));
        }
    }
}

/// Syncs the segment files appends wrote to: what makes them count as persisted.
fn sync_files(files: &[FileRef]) -> std::io::Result<()> {
    files.iter().try_for_each(|f| f.sync())
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    match postcard::to_stdvec(v) {
        Ok(b) => b,
        Err(e) => unreachable!("postcard encoding of a Raft value failed: {e}"),
    }
}

fn log_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> RaftStorageError {
    io_err(ErrorSubject::Logs, verb, e)
}

/// Reads and decodes the entry at a located record.
fn read_spot((file, off, len): (FileRef, u64, u32)) -> std::io::Result<Entry> {
    let body = segments::read_at(&*file, off, len)?;
    postcard::from_bytes(&body).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn read_entry(segs: &Segments, index: u64) -> std::io::Result<Option<Entry>> {
    segs.locate(index).map(read_spot).transpose()
}

impl LogStore {
    /// Opens the log under `dir` with its metadata in `db`.
    pub fn new(fs: Arc<dyn Fs>, db: &sled::Db, dir: &Path) -> Result<Self, super::StorageError> {
        Self::open_with_target(fs, db, dir, segments::SEGMENT_TARGET_BYTES)
    }

    /// Observes each group sync's duration in `h` (set before the first append).
    pub fn with_sync_metric(mut self, h: prometheus::Histogram) -> Self {
        self.sync_seconds = Some(h);
        self
    }

    /// [`Self::new`] with segments closed at `target` bytes (small in tests).
    pub fn open_with_target(
        fs: Arc<dyn Fs>,
        db: &sled::Db,
        dir: &Path,
        target: u64,
    ) -> Result<Self, super::StorageError> {
        if db.tree_names().iter().any(|n| n.as_ref() == OLD_LOG_TREE) && !db.open_tree(OLD_LOG_TREE)?.is_empty() {
            return Err(super::StorageError::Io(std::io::Error::other(
                "this data directory holds a Raft log in sled, written by an older drover; \
                 start the node with an empty data directory and let it catch up from the cluster",
            )));
        }
        let meta = db.open_tree("raft_meta")?;
        super::log_owner::check(&*fs, dir, db, &meta)?;
        let last_purged: Option<LogId> = match meta.get(LAST_PURGED)? {
            Some(b) => Some(postcard::from_bytes(&b).map_err(|e| std::io::Error::other(e.to_string()))?),
            None => None,
        };
        let segs = Segments::open_with_target(fs.clone(), dir, last_purged.map(|l| l.index), target)?;
        // A vote file's temporary, left by a crash before its rename.
        let vote_tmp = dir.join(format!("{VOTE_FILE}.tmp"));
        if fs.exists(&vote_tmp)? {
            fs.remove_file(&vote_tmp)?;
        }
        let mut last_log_id = last_purged;
        if let Some((_, last)) = segs.bounds()
            && last_purged.is_none_or(|p| last > p.index)
        {
            last_log_id = read_entry(&segs, last)?.map(|e| e.log_id);
        }
        Ok(Self {
            fs,
            dir: dir.to_path_buf(),
            db: db.clone(),
            meta,
            inner: Arc::new(Mutex::new(Inner { segs, last_purged, last_log_id })),
            flusher: Arc::new(OnceLock::new()),
            sync_seconds: None,
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

    /// The vote file's content: a CRC32 of the encoded vote, then the vote.
    fn read_vote_file(fs: &dyn Fs, dir: &Path) -> std::io::Result<Option<Vote>> {
        let path = dir.join(VOTE_FILE);
        if !fs.exists(&path)? {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut FileReader::new(fs.open(&path)?)?, &mut bytes)?;
        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("vote file: {what}"));
        let (sum, body) = bytes.split_at_checked(4).ok_or_else(|| bad("too short"))?;
        if crc32fast::hash(body).to_be_bytes() != sum {
            return Err(bad("checksum mismatch"));
        }
        postcard::from_bytes(body).map(Some).map_err(|e| bad(&e.to_string()))
    }

    /// Writes entries to the segments (unsynced); returns the file to sync to make them
    /// durable.
    async fn write_entries(&self, entries: Vec<Entry>) -> Result<Option<FileRef>, RaftStorageError> {
        let last = entries.last().map(|e| e.log_id);
        let records: Vec<(u64, Vec<u8>)> = entries.iter().map(|e| (e.log_id.index, enc(e))).collect();
        let inner = self.inner.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Write, move || {
            let mut g = lock(&inner)?;
            g.segs.append(&records).map_err(|e| log_err(ErrorVerb::Write, e))?;
            if last.is_some() {
                g.last_log_id = last;
            }
            Ok(g.segs.sync_handle())
        })
        .await
    }

    /// Test path for appends: the same write and the same sync as [`RaftLogStorage::append`]
    /// (whose callback cannot be built outside openraft), the sync awaited inline. `Ok`
    /// means acknowledged.
    #[cfg(test)]
    pub(crate) async fn append_and_sync(&self, entries: Vec<Entry>) -> Result<(), RaftStorageError> {
        let file = self.write_entries(entries).await?;
        blocking(ErrorSubject::Logs, ErrorVerb::Write, move || {
            sync_files(&file.into_iter().collect::<Vec<_>>()).map_err(|e| log_err(ErrorVerb::Write, e))
        })
        .await
    }

    /// Test-only switch: acknowledge appends without syncing them (see the power-loss tests).
    #[cfg(test)]
    pub(crate) fn skip_append_sync_for_test(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.segs.skip_append_sync_for_test = true;
        }
    }
}

fn lock(inner: &Mutex<Inner>) -> Result<MutexGuard<'_, Inner>, RaftStorageError> {
    inner.lock().map_err(|_| log_err(ErrorVerb::Read, std::io::Error::other("log lock poisoned by a panic")))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        let inner = self.inner.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Read, move || {
            let spots = {
                let g = lock(&inner)?;
                let first_held = g.segs.bounds().map_or(0, |(first, _)| first);
                let from = start.max(first_held).max(g.last_purged.map_or(0, |p| p.index + 1));
                let mut spots = Vec::new();
                let mut i = from;
                while i < end {
                    match g.segs.locate(i) {
                        Some(spot) => spots.push(spot),
                        None => break,
                    }
                    i += 1;
                }
                spots
            };
            // Read outside the lock: appends go on while a follower is being caught up.
            spots.into_iter().map(|spot| read_spot(spot).map_err(|e| log_err(ErrorVerb::Read, e))).collect()
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let g = lock(&self.inner)?;
        Ok(LogState { last_purged_log_id: g.last_purged, last_log_id: g.last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), RaftStorageError> {
        let (fs, dir) = (self.fs.clone(), self.dir.clone());
        let body = enc(vote);
        let mut bytes = crc32fast::hash(&body).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        blocking(ErrorSubject::Vote, ErrorVerb::Write, move || {
            super::fs::replace_file(&*fs, &dir, VOTE_FILE, &bytes)
                .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, RaftStorageError> {
        let (fs, dir) = (self.fs.clone(), self.dir.clone());
        let from_file = blocking(ErrorSubject::Vote, ErrorVerb::Read, move || {
            Self::read_vote_file(&*fs, &dir).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, e))
        })
        .await?;
        match from_file {
            Some(v) => Ok(Some(v)),
            None => self.read_meta(LEGACY_VOTE),
        }
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
        let handle = self.write_entries(entries.into_iter().collect()).await?;
        // Returning before the sync lets openraft keep appending (and replicating) while
        // the disk works; the callback, which is what makes the entry count as persisted,
        // fires only after a sync that covers it.
        let flusher = self.flusher.get_or_init(|| {
            let (tx, rx) = mpsc::channel(FLUSH_QUEUE_LEN);
            tokio::spawn(flush_loop(rx, self.sync_seconds.clone()));
            tx
        });
        flusher
            .send((callback, handle))
            .await
            .map_err(|_| log_err(ErrorVerb::Write, std::io::Error::other("log flusher stopped")))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        let inner = self.inner.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Delete, move || {
            let mut g = lock(&inner)?;
            g.segs.truncate(log_id.index).map_err(|e| log_err(ErrorVerb::Delete, e))?;
            let prev = match log_id.index.checked_sub(1) {
                Some(p) if g.last_purged.is_none_or(|lp| p > lp.index) => {
                    read_entry(&g.segs, p).map_err(|e| log_err(ErrorVerb::Read, e))?.map(|e| e.log_id)
                }
                _ => None,
            };
            g.last_log_id = prev.or(g.last_purged);
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        // One flush makes both the purge point and the state machine's applied state
        // durable before any entry is deleted.
        self.meta.insert(LAST_PURGED, enc(&log_id)).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.flush().await.map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        let inner = self.inner.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Delete, move || {
            let mut g = lock(&inner)?;
            g.last_purged = Some(log_id);
            if g.last_log_id.is_none_or(|l| l.index < log_id.index) {
                g.last_log_id = Some(log_id);
            }
            g.segs.purge(log_id.index).map_err(|e| log_err(ErrorVerb::Delete, e))
        })
        .await
    }
}
