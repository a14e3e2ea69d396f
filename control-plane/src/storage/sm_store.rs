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
use crate::state::{Response, kv::KvError};
use crate::state::{StateMachine, Txn, keys};

const APPLIED: &[u8] = b"r/applied";
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
pub struct ApplyMetrics {
    pub apply_seconds: prometheus::Histogram,
    pub applied_entries: prometheus::IntCounter,
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
    metrics: ApplyMetrics,
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
        metrics: ApplyMetrics,
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
        let tree = db.open_tree("sm")?;
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
mod tests {
    use std::time::Duration;

    use super::super::fs::RealFs;
    use super::*;
    use crate::state::Command;
    use crate::state::command::LeaseRef;

    fn store(dir: &Path) -> (sled::Db, SmStore) {
        let db = sled::Config::new().path(dir.join("sled")).open().expect("sled");
        let sm = SmStore::open(Arc::new(RealFs), &db, &dir.join("snapshots"), super::super::suite::test_metrics())
            .expect("open");
        (db, sm)
    }

    /// Every key and value of the tree outside the Raft adapter's own keys.
    fn contents(tree: &sled::Tree) -> Vec<(Vec<u8>, Vec<u8>)> {
        tree.iter()
            .map(|kv| kv.expect("read"))
            .filter(|(k, _)| !k.starts_with(keys::RAFT_OWNED))
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    /// A source store with `n` entries of 1 KiB under a prefix `load` ignores, and its
    /// snapshot.
    fn source(dir: &Path, n: u32) -> (SmStore, SnapshotMeta) {
        let (_db, sm) = store(dir);
        for i in 0..n {
            sm.shared.tree.insert(format!("z/{i:06}"), vec![i as u8; 1024]).expect("insert");
        }
        let (meta, _) = sm.build_blocking().expect("snapshot");
        (sm, meta)
    }

    #[test]
    fn install_in_chunks_replaces_the_tree() {
        let (a, b) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
        let (src, meta) = source(a.path(), 300);
        let (db, dst) = store(b.path());
        dst.shared.tree.insert("z/old", b"gone".to_vec()).expect("insert");
        // 4 KiB chunks: the 300 KiB snapshot goes in ~75 batches.
        let (got, batches) = replace_tree(&RealFs, &db, &dst.shared.tree, &src.current_path(), 4096).expect("install");
        assert!(batches >= 70, "{batches} batches");
        assert_eq!(got, meta, "the metadata comes from the file");
        assert_eq!(contents(&dst.shared.tree), contents(&src.shared.tree));
        assert!(!dst.shared.tree.contains_key(INSTALLING).expect("read"), "marker removed");
    }

    /// Written keys sit among the 20,000 filler keys `y/000000`.. so a scan meets them
    /// throughout; the counter comes first.
    fn wkey(k: u32) -> Vec<u8> {
        format!("y/{:06}w", k * 400).into_bytes()
    }
    const COUNTER: &[u8] = b"y/!counter";

    /// The state after `n` writer steps (see the test below).
    fn model(n: u32) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut m: BTreeMap<Vec<u8>, Vec<u8>> = (0..50).map(|k| (wkey(k), vec![0])).collect();
        m.insert(COUNTER.to_vec(), 0u32.to_be_bytes().to_vec());
        for i in 1..=n {
            for (k, v) in step(i) {
                match v {
                    Some(v) => m.insert(k, v),
                    None => m.remove(&k),
                };
            }
        }
        m
    }

    fn step(i: u32) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        let mut w = BTreeMap::new();
        w.insert(wkey((i * 7) % 50), Some(i.to_be_bytes().to_vec()));
        if i.is_multiple_of(3) {
            w.insert(wkey((i * 13) % 50), None);
        }
        w.insert(COUNTER.to_vec(), Some(i.to_be_bytes().to_vec()));
        w
    }

    /// Snapshots built while writes keep landing are each exactly the state after some
    /// whole number of writes: the scan plus the recording, never a mix.
    #[test]
    fn snapshots_taken_under_concurrent_writes_are_consistent_cuts() {
        let dir = tempfile::tempdir().expect("tmp");
        let (_db, sm) = store(dir.path());
        for i in 0..20_000u32 {
            sm.shared.tree.insert(format!("y/{i:06}"), vec![7; 100]).expect("filler");
        }
        for (k, v) in model(0) {
            sm.shared.tree.insert(k, v).expect("insert");
        }
        const STEPS: u32 = 3_000;
        let writer = {
            let sm = sm.clone();
            std::thread::spawn(move || {
                for i in 1..=STEPS {
                    let mut gate = sm.gate().expect("gate");
                    sm.commit_writes(&mut gate, step(i)).expect("write");
                    drop(gate);
                    // Spread the writes over many snapshot builds.
                    if i.is_multiple_of(16) {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
            })
        };
        let mut overlapped = 0;
        for _ in 0..30 {
            let (_, file) = sm.build_blocking().expect("snapshot");
            let mut got = BTreeMap::new();
            snapshot_file::read_entries(file, |k, v| {
                if k.ends_with(b"w") || k == COUNTER {
                    got.insert(k, v);
                }
                Ok(())
            })
            .expect("read");
            let c = u32::from_be_bytes(got[COUNTER].as_slice().try_into().expect("counter"));
            assert_eq!(got, model(c), "snapshot at counter {c} is not the state after {c} writes");
            if c > 0 && c < STEPS {
                overlapped += 1;
            }
        }
        writer.join().expect("writer");
        assert!(overlapped > 0, "no snapshot was taken while writes were landing");
    }

    #[test]
    fn an_interrupted_install_is_finished_at_open() {
        let (a, b) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
        let (src, meta) = source(a.path(), 50);
        let want = contents(&src.shared.tree);
        {
            let (db, dst) = store(b.path());
            // The state a crash leaves: the snapshot made current, the marker written, the
            // old keys half deleted and part of the new ones in.
            let copy = b.path().join("snapshots").join("recv.tmp");
            std::fs::copy(src.current_path(), &copy).expect("copy");
            dst.make_current(&copy).expect("current");
            dst.shared.tree.insert(INSTALLING, keys::encode(&meta.snapshot_id)).expect("marker");
            dst.shared.tree.insert("z/old", b"stale".to_vec()).expect("insert");
            dst.shared.tree.insert("z/000001", vec![1; 1024]).expect("insert");
            db.flush().expect("flush");
        }
        std::fs::write(b.path().join("snapshots").join("scan-0.tmp"), b"partial").expect("leftover");
        let (_db, dst) = store(b.path());
        assert_eq!(contents(&dst.shared.tree), want);
        assert!(!dst.shared.tree.contains_key(INSTALLING).expect("read"));
        let left: Vec<_> = std::fs::read_dir(b.path().join("snapshots"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.iter().all(|n| !n.ends_with(".tmp")), "partial files removed at open: {left:?}");
    }

    /// The applied id a snapshot's data carries (its `r/applied` key).
    fn applied_in_data(bytes: &[u8]) -> Option<LogId> {
        let mut applied = None;
        snapshot_file::read_entries(bytes, |k, v| {
            if k.as_slice() == APPLIED {
                applied = keys::decode::<Option<LogId>>(&v).expect("applied id");
            }
            Ok(())
        })
        .expect("snapshot data reads");
        applied
    }

    fn log_id(index: u64) -> LogId {
        openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index)
    }

    /// Builds (on one task), installs (on another) and reads (on a third) the current
    /// snapshot over many rounds while applies advance the applied id: every snapshot a
    /// reader gets carries data whose applied id is the one its metadata names.
    #[test]
    fn concurrent_build_install_and_read_never_pair_metadata_with_other_data() {
        const ROUNDS: u64 = 200;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(3).enable_all().build().expect("runtime");
        let (a, b) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
        // Snapshots to install, from another store, at applied ids far above the writer's.
        let (_src_db, src) = store(a.path());
        let mut sources = Vec::new();
        for r in 0..4u64 {
            for i in 0..200 {
                src.shared.tree.insert(format!("z/{r}/{i:04}"), vec![r as u8; 64]).expect("insert");
            }
            let mut gate = src.gate().expect("gate");
            let writes = BTreeMap::from([(APPLIED.to_vec(), Some(keys::encode(&Some(log_id(1_000_000 + r)))))]);
            src.commit_writes(&mut gate, writes).expect("applied");
            drop(gate);
            let (meta, _) = src.build_blocking().expect("source snapshot");
            sources.push((meta, std::fs::read(src.current_path()).expect("source bytes")));
        }
        let (_db, sm) = store(b.path());
        for i in 0..2_000 {
            sm.shared.tree.insert(format!("y/{i:05}"), vec![1; 64]).expect("filler");
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mismatches = rt.block_on(async {
            let writer = {
                let (sm, stop) = (sm.clone(), stop.clone());
                tokio::task::spawn_blocking(move || {
                    let mut i = 1;
                    while !stop.load(Ordering::Relaxed) {
                        let mut gate = sm.gate().expect("gate");
                        let writes = BTreeMap::from([(APPLIED.to_vec(), Some(keys::encode(&Some(log_id(i)))))]);
                        sm.commit_writes(&mut gate, writes).expect("apply");
                        drop(gate);
                        i += 1;
                    }
                })
            };
            let builder = {
                let mut sm = sm.clone();
                tokio::spawn(async move {
                    for _ in 0..ROUNDS {
                        let mut b = sm.get_snapshot_builder().await;
                        b.build_snapshot().await.expect("build");
                    }
                })
            };
            let installer = {
                let mut sm = sm.clone();
                tokio::spawn(async move {
                    for r in 0..ROUNDS / 4 {
                        let (meta, bytes) = &sources[(r % 4) as usize];
                        let mut file = sm.begin_receiving_snapshot().await.expect("receive");
                        tokio::io::AsyncWriteExt::write_all(&mut *file, bytes).await.expect("write");
                        sm.install_snapshot(meta, file).await.expect("install");
                    }
                })
            };
            let reader = {
                let (mut sm, stop) = (sm.clone(), stop.clone());
                tokio::spawn(async move {
                    let (mut reads, mut mismatches) = (0u64, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        let Some(snap) = sm.get_current_snapshot().await.expect("read") else {
                            tokio::task::yield_now().await;
                            continue;
                        };
                        let mut f = *snap.snapshot;
                        let mut bytes = Vec::new();
                        tokio::io::AsyncReadExt::read_to_end(&mut f, &mut bytes).await.expect("read data");
                        let data = applied_in_data(&bytes);
                        if data != snap.meta.last_log_id {
                            mismatches.push((snap.meta.last_log_id, data));
                        }
                        reads += 1;
                    }
                    (reads, mismatches)
                })
            };
            builder.await.expect("builder");
            installer.await.expect("installer");
            stop.store(true, Ordering::Relaxed);
            writer.await.expect("writer");
            let (reads, mismatches) = reader.await.expect("reader");
            assert!(reads > ROUNDS, "the reader ran alongside: {reads} reads");
            mismatches
        });
        assert!(
            mismatches.is_empty(),
            "{} snapshots paired metadata with other data, e.g. {:?}",
            mismatches.len(),
            &mismatches[..mismatches.len().min(3)]
        );
    }

    /// Applies the commands that make `tasks` running tasks (a tenant, a code, a queue
    /// call, a lease) from log index 1; returns their leases.
    fn running_tasks(sm: &SmStore, tasks: usize) -> Vec<LeaseRef> {
        use crate::state::command::{CodeSpec, LeaseRequest, NewTask};
        use crate::state::model::{CodeLimits, TenantLimits};
        let cmds = vec![
            Command::UpsertTenant {
                id: "acme".into(),
                limits: TenantLimits { max_queued_tasks: 1_000, max_concurrency: 0, max_payload_bytes: 1024 },
                allowed_cidrs: vec![],
            },
            Command::RegisterCode {
                tenant: "acme".into(),
                spec: CodeSpec {
                    name: "work".into(),
                    image: "registry.example/app@sha256:00".into(),
                    command: vec!["run".into()],
                    env: BTreeMap::new(),
                    limits: CodeLimits { timeout_ms: 60_000, ..Default::default() },
                    max_concurrency: 0,
                    default_retries: 0,
                    placement: Default::default(),
                },
            },
            Command::QueueTasks {
                tenant: "acme".into(),
                idempotency_key: None,
                idempotency_ttl_ms: 0,
                tasks: vec![
                    NewTask {
                        code: "work".into(),
                        payload: b"{}".to_vec(),
                        priority: 0,
                        delay_ms: 0,
                        timeout_ms: 0,
                        retries: None,
                        placement: None,
                    };
                    tasks
                ],
            },
            Command::Lease {
                term: 1,
                requests: vec![LeaseRequest {
                    agent_id: "a1".into(),
                    attrs: Default::default(),
                    slots: tasks as u32,
                    max_tasks: tasks as u32,
                }],
            },
        ];
        let entries = cmds.into_iter().enumerate().map(|(i, cmd)| entry(i as u64 + 1, cmd)).collect();
        match sm.apply_batch(entries).expect("setup").pop() {
            Some(Response::Leased { grants }) if grants.len() == tasks => {
                grants.into_iter().map(|g| LeaseRef { task_id: g.task_id, epoch: g.epoch }).collect()
            }
            other => panic!("lease: {other:?}"),
        }
    }

    /// Entries from log index `first` that give each leased task `chunks` log chunks and
    /// then finish it.
    fn log_and_finish(leases: &[LeaseRef], chunks: u64, first: u64) -> Vec<Entry> {
        use crate::state::command::{Completion, Outcome};
        use crate::state::logs::{LogAppend, LogStream};
        let mut cmds = Vec::new();
        for l in leases {
            for from in (0..chunks).step_by(crate::state::logs::MAX_CHUNKS_PER_APPEND) {
                let to = (from + crate::state::logs::MAX_CHUNKS_PER_APPEND as u64).min(chunks);
                let chunks = (from..to)
                    .map(|seq| LogAppend { lease: *l, seq, stream: LogStream::Stdout, data: b"out".to_vec() })
                    .collect();
                cmds.push(Command::AppendLogs { agent_id: "a1".into(), max_task_log_bytes: u64::MAX, chunks });
            }
        }
        let completions = leases
            .iter()
            .map(|l| Completion {
                agent_id: "a1".into(),
                lease: *l,
                outcome: Outcome::Success,
                exit_code: Some(0),
                oom_killed: false,
                error: String::new(),
                started_ms: 0,
                peak_memory_bytes: 0,
            })
            .collect();
        cmds.push(Command::Complete { completions });
        cmds.into_iter().enumerate().map(|(i, cmd)| entry(first + i as u64, cmd)).collect()
    }

    fn entry(index: u64, cmd: Command) -> Entry {
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(crate::state::Request::V1(crate::state::Proposal { stamp_ms: 1_000, cmd })),
        }
    }

    /// Applies `purges` (one entry per call, as the leader proposes them) until no
    /// finished task is left, while a reader on an async runtime thread takes the state
    /// machine lock as the API handlers do; returns the longest the reader waited and how
    /// many entries it took.
    fn purge_under_readers(sm: &SmStore, mut purge: impl FnMut(u64) -> Entry) -> (Duration, u64) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (shared, stop) = (sm.shared.clone(), stop.clone());
            rt.spawn(async move {
                let mut worst = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let asked = Instant::now();
                    let finished = shared.machine().expect("machine").indexes().finished.len();
                    worst = worst.max(asked.elapsed());
                    std::hint::black_box(finished);
                    tokio::task::yield_now().await;
                }
                worst
            })
        };
        let mut index = sm.shared.applied_index().expect("applied") + 1;
        let mut entries = 0;
        while !sm.shared.machine().expect("machine").indexes().finished.is_empty() {
            assert!(entries < 1_000, "the purge does not end");
            sm.apply_batch(vec![purge(index)]).expect("purge");
            index += 1;
            entries += 1;
        }
        stop.store(true, Ordering::Relaxed);
        (rt.block_on(reader).expect("reader"), entries)
    }

    /// 10 finished tasks with 10,000 log chunks each (100,020 keys to delete). The
    /// unbounded purge of older entries deletes them in one entry, holding the lock for
    /// all of it; the leader's bounded purge deletes at most `MAX_PURGE_KEYS_PER_ENTRY`
    /// per entry, and a reader taking the lock meanwhile waits at most `READER_WAIT_BOUND`
    /// (a debug build on a shared, loaded 2-core machine: about one entry's apply).
    #[test]
    fn a_purge_of_large_logs_delays_a_concurrent_reader_by_at_most_one_bounded_entry() {
        const READER_WAIT_BOUND: Duration = Duration::from_millis(500);
        const TASKS: usize = 10;
        const CHUNKS: u64 = 10_000;
        let max_keys = crate::leader::MAX_PURGE_KEYS_PER_ENTRY;
        let run = |bounded: bool| {
            let dir = tempfile::tempdir().expect("tmp");
            let (_db, sm) = store(dir.path());
            let leases = running_tasks(&sm, TASKS);
            for e in log_and_finish(&leases, CHUNKS, 5) {
                sm.apply_batch(vec![e]).expect("setup");
            }
            assert_eq!(sm.shared.machine().expect("machine").indexes().finished.len(), TASKS);
            let keys_before = sm.shared.tree.len();
            let (worst, entries) = purge_under_readers(&sm, |index| {
                let cmd = if bounded {
                    Command::PurgeBounded { term: 1, finished_before_ms: u64::MAX, max_tasks: 10_000, max_keys }
                } else {
                    Command::Purge { term: 1, finished_before_ms: u64::MAX, max_tasks: 10_000 }
                };
                entry(index, cmd)
            });
            let deleted = keys_before - sm.shared.tree.len();
            (worst, entries, deleted)
        };
        let (unbounded_wait, unbounded_entries, deleted) = run(false);
        let (bounded_wait, bounded_entries, bounded_deleted) = run(true);
        eprintln!(
            "unbounded purge: {unbounded_entries} entry, reader waited up to {unbounded_wait:?}; \
             bounded: {bounded_entries} entries, reader waited up to {bounded_wait:?}; {deleted} keys deleted"
        );
        assert_eq!((unbounded_entries, deleted, bounded_deleted), (1, bounded_deleted, bounded_deleted));
        assert!(bounded_entries >= deleted as u64 / max_keys, "{bounded_entries} entries for {deleted} keys");
        assert!(bounded_wait <= READER_WAIT_BOUND, "a reader waited {bounded_wait:?} behind a bounded purge");
    }

    /// A batch of many entries releases the lock between slices: a reader never waits for
    /// the whole batch.
    #[test]
    fn a_long_batch_of_entries_lets_readers_in_between_slices() {
        let dir = tempfile::tempdir().expect("tmp");
        let (_db, sm) = store(dir.path());
        let leases = running_tasks(&sm, 4);
        let setup = log_and_finish(&leases, 3_000, 5);
        let n = 4 + setup.len();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = {
            let (shared, stop) = (sm.shared.clone(), stop.clone());
            rt.spawn(async move {
                let mut seen = std::collections::BTreeSet::new();
                while !stop.load(Ordering::Relaxed) {
                    // Under the lock, as a handler reads: the tree and the indexes agree.
                    let machine = shared.machine().expect("machine");
                    seen.insert(shared.applied_index().expect("applied"));
                    drop(machine);
                    tokio::task::yield_now().await;
                }
                seen
            })
        };
        let started = Instant::now();
        sm.apply_batch(setup).expect("apply");
        let took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let seen = rt.block_on(seen).expect("reader");
        assert_eq!(sm.shared.applied_index().expect("applied"), n as u64);
        // Only meaningful when the batch outlasted several slices.
        if took > APPLY_LOCK_SLICE * 4 {
            let inside = seen.iter().filter(|i| **i > 4 && **i < n as u64).count();
            assert!(inside > 0, "a {took:?} batch of {n} entries committed only at its end: {seen:?}");
        }
    }
}
