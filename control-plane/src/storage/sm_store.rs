//! The state machine store: openraft's `RaftStateMachine` over the `sm` sled tree, and
//! the node's current snapshot file.
//!
//! Each batch of entries openraft hands over is applied in slices: the entries of a slice
//! go to one [`Txn`], committed as a single atomic `sled::Batch` together with the
//! last-applied log id (and membership), so a crash never leaves a half-applied entry.
//! In-memory indexes live in the [`StateMachine`] behind a mutex, rebuilt from the tree
//! at open and after a snapshot is installed. API handlers take that mutex on async
//! runtime threads, so the apply holds it for one slice at a time: a slice ends after the
//! first entry that brings the time under the lock past [`APPLY_LOCK_SLICE`], and every
//! entry's work is bounded (by the batcher's entry size and, for purges, by keys
//! deleted), so a reader waits at most about one slice. Where slices end changes only
//! when readers get in, never the state.
//!
//! **One snapshot, one file.** `<dir>/current.snap` holds the snapshot's metadata in its
//! header and its data after it ([`snapshot_file`]). A new snapshot is written to a
//! `.tmp` file, synced, renamed over `current.snap`, and the directory synced: after any
//! crash `current.snap` is the old snapshot or the new one, whole. Readers open the file
//! once and take the metadata from that open file, so a reader can never pair one
//! snapshot's metadata with another's data, whatever builds or installs do meanwhile.
//! Builds and installs hold the *snapshot lock* for their whole run, so they never
//! overlap and the current snapshot only moves forward (an install used to run during a
//! build, whose older snapshot could then replace the installed one). Readers take no
//! lock (a build of a large state takes seconds; reads must not wait for it).
//!
//! Snapshots are a fuzzy scan made consistent by redo, so applies never wait for one:
//! under the *apply gate* (held by every apply) the builder starts recording every write
//! applies make, streams the live tree to a scan file without the gate, then takes the
//! gate for an instant to stop recording and read the applied id. Every key written after
//! recording began is in the recording with its value at that id; every other key was
//! stable for the whole scan. The final file is the scan with the recording laid over it
//! ([`snapshot_file::merge`]): exactly the state at the applied id. The recording holds
//! only what is written during one scan; it lives inside the gate's mutex, since only
//! gate holders touch it. Applies run on the blocking pool, and readers of the in-memory
//! indexes take the state machine mutex, which a snapshot never holds. Lock order:
//! snapshot lock, gate, machine.
//!
//! Installing a snapshot replaces the tree in chunks of [`INSTALL_CHUNK_BYTES`] (one
//! batch for a whole backlog would hold all of it in memory at once, twice). Crash
//! safety comes from a marker: the received file is synced and made the current snapshot
//! first (its header must name the metadata openraft gave), then `r/installing` is
//! written and sled flushed, then the old keys are deleted and the snapshot's written
//! chunk by chunk, and the last batch sets the applied id and membership (from the
//! file's header) and removes the marker. A node that opens with the marker present
//! redoes the install from `current.snap` before it loads anything.
//!
//! Snapshot files go through the [`Fs`] layer (see [`super::fs`] for the power-loss
//! tests); the tree is sled's.

use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};

use super::fs::{FileReader, Fs, PacedWriter};
use super::sled_kv::SledKv;
use super::snapshot_file;
use super::{blocking, io_err};
use crate::raft::types::{Entry, LogId, RaftStorageError, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::state::{Command, Request, Response, kv::KvError};
use crate::state::{StateMachine, Txn, keys};

/// The sled tree holding the state machine's tables.
pub(super) const SM_TREE: &[u8] = b"sm";
pub(super) const APPLIED: &[u8] = b"r/applied";
const MEMBERSHIP: &[u8] = b"r/membership";
const CURRENT_SNAPSHOT: &str = "current.snap";
/// The metadata file of a version 1 snapshot (upgraded at open).
const LEGACY_META: &str = "current.meta.json";
/// Key to its value after the last write during a snapshot scan (`None`: deleted).
type Recording = BTreeMap<Vec<u8>, Option<Vec<u8>>>;
const INSTALLING: &[u8] = b"r/installing";
/// Bytes of snapshot entries written to sled per batch while installing.
pub const INSTALL_CHUNK_BYTES: usize = 16 << 20;
/// After the entry that passes this much time under the state-machine lock, the apply
/// commits what it applied and lets readers in before it goes on.
pub const APPLY_LOCK_SLICE: std::time::Duration = std::time::Duration::from_millis(10);
/// Keys deleted per sled batch when an install clears the tree.
const CLEAR_KEYS_PER_BATCH: usize = 10_000;

/// Replaces every key of `tree` with the entries of the snapshot file `snap`, in batches
/// of about `chunk` bytes, finishing with the applied id and membership from the file's
/// header and the removal of the install marker; flushes. See the module docs for crash
/// safety. Returns the snapshot's metadata and how many batches wrote its entries.
fn replace_tree(
    fs: &dyn Fs,
    db: &sled::Db,
    tree: &sled::Tree,
    snap: &Path,
    chunk: usize,
) -> std::io::Result<(SnapshotMeta, u64)> {
    let sled_io = |e: sled::Error| std::io::Error::other(e.to_string());
    let file = fs.open(snap)?;
    let meta = snapshot_file::read_meta(&mut std::io::BufReader::new(FileReader::new(file.clone())?))?;
    tree.insert(INSTALLING, keys::encode(&meta.snapshot_id)).map_err(sled_io)?;
    db.flush().map_err(sled_io)?;
    loop {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for k in tree.iter().keys() {
            let k = k.map_err(sled_io)?;
            if k.as_ref() == INSTALLING {
                continue;
            }
            batch.remove(k);
            n += 1;
            if n >= CLEAR_KEYS_PER_BATCH {
                break;
            }
        }
        if n == 0 {
            break;
        }
        tree.apply_batch(batch).map_err(sled_io)?;
    }
    let mut batch = sled::Batch::default();
    let (mut bytes, mut batches) = (0, 1);
    snapshot_file::read_entries(FileReader::new(file)?, |k, v| {
        if k.as_slice() == INSTALLING {
            return Ok(());
        }
        bytes += k.len() + v.len();
        batch.insert(k, v);
        if bytes >= chunk {
            tree.apply_batch(std::mem::take(&mut batch)).map_err(sled_io)?;
            bytes = 0;
            batches += 1;
        }
        Ok(())
    })?;
    // The snapshot's own applied/membership keys are authoritative, but write them from
    // the header too so the two can never disagree.
    batch.insert(APPLIED, keys::encode(&meta.last_log_id));
    batch.insert(MEMBERSHIP, keys::encode(&meta.last_membership));
    batch.remove(INSTALLING);
    tree.apply_batch(batch).map_err(sled_io)?;
    db.flush().map_err(sled_io)?;
    Ok((meta, batches))
}

/// Rewrites a version 1 snapshot (data file plus `current.meta.json`, written by older
/// drovers) as a version 2 file, or drops a pair that cannot be read (the state is in
/// the tree; openraft builds a new snapshot when it needs one).
fn upgrade_legacy(fs: &dyn Fs, dir: &Path) -> std::io::Result<()> {
    let meta_path = dir.join(LEGACY_META);
    if !fs.exists(&meta_path)? {
        return Ok(());
    }
    let snap = dir.join(CURRENT_SNAPSHOT);
    let upgraded = (|| -> std::io::Result<()> {
        let mut json = Vec::new();
        FileReader::new(fs.open(&meta_path)?)?.read_to_end(&mut json)?;
        let meta: SnapshotMeta = serde_json::from_slice(&json).map_err(std::io::Error::other)?;
        let tmp = dir.join("upgrade.tmp");
        let out = fs.create(&tmp)?;
        let src = FileReader::new(fs.open(&snap)?)?;
        snapshot_file::write_with(&meta, PacedWriter::new(out.clone()), |emit| {
            snapshot_file::read_legacy_entries(src, emit)
        })?;
        out.sync()?;
        fs.rename(&tmp, &snap)
    })();
    if let Err(e) = upgraded {
        tracing::warn!(error = %e, "dropping an unreadable version 1 snapshot");
        if fs.exists(&snap)? {
            fs.remove_file(&snap)?;
        }
    }
    fs.remove_file(&meta_path)?;
    fs.sync_dir(dir)
}

/// Metrics the store records while applying.
#[derive(Clone)]
/// The storage layer's metrics: the state machine's applies and the log's syncs.
pub struct StorageMetrics {
    pub apply_seconds: prometheus::Histogram,
    /// One group sync of the Raft log (`fdatasync` of the segment files it covers).
    pub log_sync_seconds: prometheus::Histogram,
    pub applied_entries: prometheus::IntCounter,
    /// Client and leader commands applied; with `applied_entries`, commands per entry.
    pub applied_commands: prometheus::IntCounter,
}

pub struct SmShared {
    pub tree: sled::Tree,
    db: sled::Db,
    /// A fair-unlocking mutex: the apply hands it to a waiting reader between slices
    /// (std's mutex let the apply thread take it straight back: a reader measured 585 ms
    /// behind slices of about 150 ms).
    machine: parking_lot::Mutex<StateMachine>,
    /// Held while entries are applied or a snapshot is installed, and for an instant at
    /// the start and end of a snapshot build. Holds the writes applied since a snapshot
    /// build began (`None`: no build is recording).
    apply_gate: Mutex<Option<Recording>>,
    /// Held for a whole snapshot build or install: one at a time.
    snapshot_lock: Mutex<()>,
    fs: Arc<dyn Fs>,
    snapshot_dir: PathBuf,
    metrics: StorageMetrics,
    /// Woken after every applied batch (long-polling lease requests wait on it).
    pub applied: tokio::sync::Notify,
    snapshot_seq: AtomicU64,
}

#[derive(Clone)]
pub struct SmStore {
    pub shared: Arc<SmShared>,
}

fn sm_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> RaftStorageError {
    io_err(ErrorSubject::StateMachine, verb, e)
}

fn poisoned(what: &str) -> RaftStorageError {
    sm_err(ErrorVerb::Write, std::io::Error::other(format!("{what} poisoned by a panic")))
}

impl SmShared {
    /// The in-memory state machine (never poisoned: a panic inside apply fails the node's
    /// storage, which stops Raft). Hold it briefly: the apply waits for it.
    pub fn machine(&self) -> Result<parking_lot::MutexGuard<'_, StateMachine>, KvError> {
        Ok(self.machine.lock())
    }

    pub fn kv(&self) -> SledKv<'_> {
        SledKv(&self.tree)
    }

    fn read<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, RaftStorageError> {
        match self.tree.get(key).map_err(|e| sm_err(ErrorVerb::Read, e))? {
            None => Ok(None),
            Some(v) => keys::decode(&v).map(Some).map_err(|e| sm_err(ErrorVerb::Read, e)),
        }
    }

    pub fn applied_index(&self) -> Result<u64, RaftStorageError> {
        Ok(self.read::<Option<LogId>>(APPLIED)?.flatten().map(|l| l.index).unwrap_or(0))
    }
}

impl SmStore {
    pub fn open(
        fs: Arc<dyn Fs>,
        db: &sled::Db,
        snapshot_dir: &Path,
        metrics: StorageMetrics,
    ) -> Result<Self, super::StorageError> {
        fs.create_dir_all(snapshot_dir)?;
        // Partial files of builds, transfers and installs a crash cut short (a snapshot
        // of a large backlog is gigabytes; nothing else cleans them up).
        for name in fs.list(snapshot_dir)? {
            if name.ends_with(".tmp") {
                fs.remove_file(&snapshot_dir.join(name))?;
            }
        }
        upgrade_legacy(&*fs, snapshot_dir)?;
        let tree = db.open_tree(SM_TREE)?;
        let current = snapshot_dir.join(CURRENT_SNAPSHOT);
        if !tree.contains_key(INSTALLING)? && fs.exists(&current)? {
            // Only the header is read here; an unreadable one (a version 1 file whose
            // metadata was lost to a crash of an older drover) would fail every snapshot
            // read, so it goes: the state is in the tree, and openraft builds a new one.
            let header = fs
                .open(&current)
                .and_then(FileReader::new)
                .and_then(|r| snapshot_file::read_meta(&mut std::io::BufReader::new(r)));
            if let Err(e) = header {
                tracing::warn!(error = %e, "dropping an unreadable current snapshot");
                fs.remove_file(&current)?;
                fs.sync_dir(snapshot_dir)?;
            }
        }
        if tree.contains_key(INSTALLING)? {
            // A crash interrupted a snapshot install: finish it from the current snapshot.
            let (meta, _) = replace_tree(&*fs, db, &tree, &snapshot_dir.join(CURRENT_SNAPSHOT), INSTALL_CHUNK_BYTES)?;
            tracing::warn!(snapshot = %meta.snapshot_id, "finished an interrupted snapshot install");
        }
        let machine = StateMachine::load(&SledKv(&tree))?;
        Ok(Self {
            shared: Arc::new(SmShared {
                tree,
                db: db.clone(),
                machine: parking_lot::Mutex::new(machine),
                apply_gate: Mutex::new(None),
                snapshot_lock: Mutex::new(()),
                fs,
                snapshot_dir: snapshot_dir.to_path_buf(),
                metrics,
                applied: tokio::sync::Notify::new(),
                snapshot_seq: AtomicU64::new(0),
            }),
        })
    }

    fn gate(&self) -> Result<MutexGuard<'_, Option<Recording>>, RaftStorageError> {
        self.shared.apply_gate.lock().map_err(|_| poisoned("apply gate"))
    }

    fn snapshot_lock(&self) -> Result<MutexGuard<'_, ()>, RaftStorageError> {
        self.shared.snapshot_lock.lock().map_err(|_| poisoned("snapshot lock"))
    }

    /// Writes one applied batch to the tree in one atomic sled batch, recording it for a
    /// snapshot scan in progress. The caller holds the apply gate (`gate`).
    fn commit_writes(
        &self,
        gate: &mut MutexGuard<'_, Option<Recording>>,
        writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        if let Some(rec) = gate.as_mut() {
            rec.extend(writes.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let mut batch = sled::Batch::default();
        for (k, v) in writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.shared.tree.apply_batch(batch).map_err(|e| sm_err(ErrorVerb::Write, e))
    }

    fn apply_batch(&self, entries: Vec<Entry>) -> Result<Vec<Response>, RaftStorageError> {
        let s = &self.shared;
        let started = Instant::now();
        let count = entries.len() as u64;
        let mut commands = 0u64;
        let mut out = Vec::with_capacity(entries.len());
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            // One slice (see the module docs): lock order gate, then machine.
            let mut gate = self.gate()?;
            let mut machine = s.machine().map_err(|e| sm_err(ErrorVerb::Write, e))?;
            let locked = Instant::now();
            let kv = SledKv(&s.tree);
            let mut txn = Txn::new(&kv);
            let mut last = None;
            for e in entries.by_ref() {
                last = Some(e.log_id);
                out.push(match &e.payload {
                    EntryPayload::Blank => Response::Empty,
                    EntryPayload::Normal(req) => {
                        let Request::V1(p) = req;
                        commands += match &p.cmd {
                            Command::Batch(cmds) => cmds.len() as u64,
                            _ => 1,
                        };
                        let (index, term) = (e.log_id.index, e.log_id.leader_id.term);
                        machine.apply(&mut txn, req, index, term).map_err(|e| sm_err(ErrorVerb::Write, e))?
                    }
                    EntryPayload::Membership(m) => {
                        let stored = StoredMembership::new(Some(e.log_id), m.clone());
                        txn.put(MEMBERSHIP.to_vec(), keys::encode(&stored));
                        Response::Empty
                    }
                });
                if locked.elapsed() >= APPLY_LOCK_SLICE {
                    break;
                }
            }
            txn.put(APPLIED.to_vec(), keys::encode(&last));
            self.commit_writes(&mut gate, txn.into_writes())?;
            // A reader waiting for the lock gets it before the next slice does.
            parking_lot::MutexGuard::unlock_fair(machine);
        }
        s.metrics.apply_seconds.observe(started.elapsed().as_secs_f64());
        s.metrics.applied_entries.inc_by(count);
        s.metrics.applied_commands.inc_by(commands);
        s.applied.notify_waiters();
        Ok(out)
    }

    fn current_path(&self) -> PathBuf {
        self.shared.snapshot_dir.join(CURRENT_SNAPSHOT)
    }

    fn new_meta(&self, seq: u64) -> Result<SnapshotMeta, RaftStorageError> {
        let s = &self.shared;
        let last_log_id: Option<LogId> = s.read::<Option<LogId>>(APPLIED)?.flatten();
        let membership: StoredMembership = s.read(MEMBERSHIP)?.unwrap_or_default();
        let snapshot_id = match last_log_id {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, seq),
            None => format!("0-0-{seq}"),
        };
        Ok(SnapshotMeta { last_log_id, last_membership: membership, snapshot_id })
    }

    /// Builds a snapshot without stopping applies (see the module docs), makes it
    /// current, and returns it with a handle on its file.
    fn build_blocking(&self) -> Result<(SnapshotMeta, std::fs::File), RaftStorageError> {
        let s = &self.shared;
        let fs = &*s.fs;
        let _lock = self.snapshot_lock()?;
        let seq = s.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let scan = s.snapshot_dir.join(format!("scan-{seq}.tmp"));
        let tmp = s.snapshot_dir.join(format!("build-{seq}.tmp"));
        *self.gate()? = Some(Recording::new());
        let scanned = fs.create(&scan).and_then(|f| snapshot_file::write_tree(&s.tree, PacedWriter::new(f)));
        let (overlay, meta) = {
            let mut gate = self.gate()?;
            (gate.take(), self.new_meta(seq))
        };
        let write_err = |e| sm_err(ErrorVerb::Write, e);
        let result = (|| {
            let meta = meta?;
            scanned.map_err(write_err)?;
            // Only builds start a recording and only builds end one, under the lock.
            let overlay = overlay.ok_or_else(|| write_err(std::io::Error::other("snapshot recording lost")))?;
            let out = fs.create(&tmp).map_err(write_err)?;
            let src = FileReader::new(fs.open(&scan).map_err(write_err)?).map_err(write_err)?;
            snapshot_file::merge(src, &overlay, &meta, PacedWriter::new(out.clone())).map_err(write_err)?;
            out.sync().map_err(write_err)?;
            self.make_current(&tmp)?;
            let handle = fs.snapshot_handle(&self.current_path()).map_err(|e| sm_err(ErrorVerb::Read, e))?;
            Ok((meta, handle))
        })();
        let _ = fs.remove_file(&scan);
        result
    }

    /// Makes the synced file `file` the current snapshot: one rename, then the directory
    /// synced. The caller holds the snapshot lock.
    fn make_current(&self, file: &Path) -> Result<(), RaftStorageError> {
        let fs = &*self.shared.fs;
        fs.rename(file, &self.current_path()).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        fs.sync_dir(&self.shared.snapshot_dir).map_err(|e| sm_err(ErrorVerb::Write, e))
    }

    /// The current snapshot, if any: its metadata read from the same open file that is
    /// returned (positioned at its start).
    fn current_blocking(&self) -> Result<Option<(SnapshotMeta, std::fs::File)>, RaftStorageError> {
        let read_err = |e| sm_err(ErrorVerb::Read, e);
        let mut file = match self.shared.fs.snapshot_handle(&self.current_path()) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_err(e)),
        };
        let meta = snapshot_file::read_meta(&mut std::io::BufReader::new(&file)).map_err(read_err)?;
        file.rewind().map_err(read_err)?;
        Ok(Some((meta, file)))
    }

    /// Copies the received snapshot `src` to a synced file, checks that its header names
    /// `meta`, makes it current, then replaces the tree with it in chunks (see the module
    /// docs) and reloads the in-memory state.
    fn install_blocking(&self, meta: &SnapshotMeta, mut src: std::fs::File) -> Result<(), RaftStorageError> {
        let s = &self.shared;
        let fs = &*s.fs;
        let write_err = |e| sm_err(ErrorVerb::Write, e);
        let seq = s.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = s.snapshot_dir.join(format!("install-{seq}.tmp"));
        let out = fs.create(&tmp).map_err(write_err)?;
        src.rewind().map_err(write_err)?;
        std::io::copy(&mut src, &mut PacedWriter::new(out.clone())).map_err(write_err)?;
        out.sync().map_err(write_err)?;
        let named = snapshot_file::read_meta(&mut std::io::BufReader::new(FileReader::new(out).map_err(write_err)?))
            .map_err(write_err)?;
        if named != *meta {
            let _ = fs.remove_file(&tmp);
            return Err(write_err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "received snapshot file is {} at {:?}, but the transfer named {} at {:?}",
                    named.snapshot_id, named.last_log_id, meta.snapshot_id, meta.last_log_id
                ),
            )));
        }
        let _lock = self.snapshot_lock()?;
        let _gate = self.gate()?;
        self.make_current(&tmp)?;
        replace_tree(fs, &s.db, &s.tree, &self.current_path(), INSTALL_CHUNK_BYTES).map_err(write_err)?;
        let loaded = StateMachine::load(&SledKv(&s.tree)).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        *s.machine().map_err(|e| sm_err(ErrorVerb::Write, e))? = loaded;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SmStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, RaftStorageError> {
        let this = self.clone();
        let (meta, file) =
            blocking(ErrorSubject::StateMachine, ErrorVerb::Write, move || this.build_blocking()).await?;
        Ok(Snapshot { meta, snapshot: Box::new(tokio::fs::File::from_std(file)) })
    }
}

impl RaftStateMachine<TypeConfig> for SmStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        let applied = self.shared.read::<Option<LogId>>(APPLIED)?.flatten();
        let membership = self.shared.read(MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let this = self.clone();
        blocking(ErrorSubject::StateMachine, ErrorVerb::Write, move || this.apply_batch(entries)).await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, RaftStorageError> {
        let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let this = self.clone();
        // An unnamed file: an aborted transfer leaves nothing behind.
        let file = blocking(ErrorSubject::StateMachine, ErrorVerb::Write, move || {
            let s = &this.shared;
            s.fs.scratch_file(&s.snapshot_dir, &format!("recv-{seq}.tmp")).map_err(|e| sm_err(ErrorVerb::Write, e))
        })
        .await?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), RaftStorageError> {
        use tokio::io::AsyncWriteExt;
        let mut src = *snapshot;
        src.flush().await.map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let src = src.into_std().await;
        let this = self.clone();
        let meta = meta.clone();
        blocking(ErrorSubject::StateMachine, ErrorVerb::Write, move || this.install_blocking(&meta, src)).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, RaftStorageError> {
        let this = self.clone();
        let current = blocking(ErrorSubject::StateMachine, ErrorVerb::Read, move || this.current_blocking()).await?;
        Ok(current.map(|(meta, file)| Snapshot { meta, snapshot: Box::new(tokio::fs::File::from_std(file)) }))
    }
}

#[cfg(test)]
mod tests;
