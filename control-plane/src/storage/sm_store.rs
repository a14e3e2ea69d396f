//! The state machine store: openraft's `RaftStateMachine` over the `sm` sled tree.
//!
//! Each batch of entries openraft hands over is applied to one [`Txn`] and committed as a
//! single atomic `sled::Batch` together with the last-applied log id (and membership), so
//! a crash never leaves a half-applied batch. In-memory indexes live in the
//! [`StateMachine`] behind a mutex, rebuilt from the tree at open and after a snapshot
//! is installed.
//!
//! Snapshots are a fuzzy scan made consistent by redo, so applies never wait for one:
//! under the *apply gate* (held by every apply) the builder starts recording every write
//! applies make, streams the live tree to a scan file without the gate, then takes the
//! gate for an instant to stop recording and read the applied id. Every key written after
//! recording began is in the recording with its value at that id; every other key was
//! stable for the whole scan. The final file is the scan with the recording laid over it
//! ([`snapshot_file::merge`]): exactly the state at the applied id. The recording holds
//! only what is written during one scan; it lives inside the gate's mutex, since only
//! gate holders touch it. Builds are serialized by their own lock. An install (which
//! replaces the tree) discards a recording in progress, and the builder scans again.
//! Applies run on the blocking pool, and readers of the in-memory indexes take the state
//! machine mutex, which a snapshot never holds. Lock order: build, gate, machine.
//!
//! Installing a snapshot replaces the tree in chunks of [`INSTALL_CHUNK_BYTES`] (one
//! batch for a whole backlog would hold all of it in memory at once, twice). Crash
//! safety comes from a marker: the received file is made the current snapshot first,
//! then `r/installing` is written and flushed, then the old keys are deleted and the
//! snapshot's written chunk by chunk, and the last batch sets the applied id and removes
//! the marker. A node that opens with the marker present redoes the install from the
//! current snapshot file before it loads anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};

use super::sled_kv::SledKv;
use super::snapshot_file;
use super::{blocking, io_err};
use crate::raft::types::{Entry, LogId, RaftStorageError, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::state::{Response, kv::KvError};
use crate::state::{StateMachine, Txn, keys};

const APPLIED: &[u8] = b"r/applied";
const MEMBERSHIP: &[u8] = b"r/membership";
const CURRENT_SNAPSHOT: &str = "current.snap";
const CURRENT_META: &str = "current.meta.json";
/// Key to its value after the last write during a snapshot scan (`None`: deleted).
type Recording = BTreeMap<Vec<u8>, Option<Vec<u8>>>;
const INSTALLING: &[u8] = b"r/installing";
/// Bytes of snapshot entries written to sled per batch while installing.
pub const INSTALL_CHUNK_BYTES: usize = 16 << 20;

/// Replaces every key of `tree` with the entries of the snapshot file `snap`, in batches
/// of about `chunk` bytes, finishing with the applied id and membership from `meta` and
/// the removal of the install marker; flushes. See the module docs for crash safety.
/// Returns how many batches wrote snapshot entries.
fn replace_tree(
    db: &sled::Db,
    tree: &sled::Tree,
    snap: &Path,
    meta: &SnapshotMeta,
    chunk: usize,
) -> std::io::Result<u64> {
    let sled_io = |e: sled::Error| std::io::Error::other(e.to_string());
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
            if n >= 10_000 {
                break;
            }
        }
        if n == 0 {
            break;
        }
        tree.apply_batch(batch).map_err(sled_io)?;
    }
    let file = std::fs::File::open(snap)?;
    let mut batch = sled::Batch::default();
    let (mut bytes, mut batches) = (0, 1);
    snapshot_file::read_entries(file, |k, v| {
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
    // the meta too so the two can never disagree.
    batch.insert(APPLIED, keys::encode(&meta.last_log_id));
    batch.insert(MEMBERSHIP, keys::encode(&meta.last_membership));
    batch.remove(INSTALLING);
    tree.apply_batch(batch).map_err(sled_io)?;
    db.flush().map_err(sled_io)?;
    Ok(batches)
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
    machine: Mutex<StateMachine>,
    /// Held while entries are applied or a snapshot is installed, and for an instant at
    /// the start and end of a snapshot build. Holds the writes applied since a snapshot
    /// build began (`None`: no build is recording).
    apply_gate: Mutex<Option<Recording>>,
    /// Held for a whole snapshot build: one at a time.
    build_lock: Mutex<()>,
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

impl SmShared {
    pub fn machine(&self) -> Result<MutexGuard<'_, StateMachine>, KvError> {
        self.machine.lock().map_err(|_| KvError("state machine lock poisoned by a panic".into()))
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
    pub fn open(db: &sled::Db, snapshot_dir: &Path, metrics: ApplyMetrics) -> Result<Self, super::StorageError> {
        std::fs::create_dir_all(snapshot_dir)?;
        // Partial files of builds, transfers and installs a crash cut short (a snapshot
        // of a large backlog is gigabytes; nothing else cleans them up).
        for e in std::fs::read_dir(snapshot_dir)? {
            let path = e?.path();
            if path.extension().is_some_and(|x| x == "tmp") {
                std::fs::remove_file(&path)?;
            }
        }
        let tree = db.open_tree("sm")?;
        if tree.contains_key(INSTALLING)? {
            // A crash interrupted a snapshot install: finish it from the current snapshot.
            let meta_path = snapshot_dir.join(CURRENT_META);
            let meta: SnapshotMeta = serde_json::from_slice(&std::fs::read(&meta_path)?)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            tracing::warn!(snapshot = %meta.snapshot_id, "finishing an interrupted snapshot install");
            replace_tree(db, &tree, &snapshot_dir.join(CURRENT_SNAPSHOT), &meta, INSTALL_CHUNK_BYTES)?;
        }
        let machine = StateMachine::load(&SledKv(&tree))?;
        Ok(Self {
            shared: Arc::new(SmShared {
                tree,
                db: db.clone(),
                machine: Mutex::new(machine),
                apply_gate: Mutex::new(None),
                build_lock: Mutex::new(()),
                snapshot_dir: snapshot_dir.to_path_buf(),
                metrics,
                applied: tokio::sync::Notify::new(),
                snapshot_seq: AtomicU64::new(0),
            }),
        })
    }

    fn gate(&self) -> Result<MutexGuard<'_, Option<Recording>>, RaftStorageError> {
        self.shared
            .apply_gate
            .lock()
            .map_err(|_| sm_err(ErrorVerb::Write, std::io::Error::other("apply gate poisoned by a panic")))
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
        let mut gate = self.gate()?;
        let started = Instant::now();
        let mut machine = s.machine().map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let kv = SledKv(&s.tree);
        let mut txn = Txn::new(&kv);
        let mut out = Vec::with_capacity(entries.len());
        let mut last = None;
        for e in &entries {
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
        }
        txn.put(APPLIED.to_vec(), keys::encode(&last));
        self.commit_writes(&mut gate, txn.into_writes())?;
        drop(machine);
        s.metrics.apply_seconds.observe(started.elapsed().as_secs_f64());
        s.metrics.applied_entries.inc_by(entries.len() as u64);
        s.applied.notify_waiters();
        Ok(out)
    }

    fn snapshot_paths(&self) -> (PathBuf, PathBuf) {
        (self.shared.snapshot_dir.join(CURRENT_SNAPSHOT), self.shared.snapshot_dir.join(CURRENT_META))
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

    /// Builds a snapshot without stopping applies (see the module docs) and makes it
    /// current.
    fn build_blocking(&self) -> Result<SnapshotMeta, RaftStorageError> {
        let s = &self.shared;
        let _build = s
            .build_lock
            .lock()
            .map_err(|_| sm_err(ErrorVerb::Write, std::io::Error::other("snapshot build lock poisoned by a panic")))?;
        let seq = s.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let scan = s.snapshot_dir.join(format!("scan-{seq}.tmp"));
        let tmp = s.snapshot_dir.join(format!("build-{seq}.tmp"));
        let write_err = |e| sm_err(ErrorVerb::Write, e);
        let result = loop {
            *self.gate()? = Some(Recording::new());
            let scanned = std::fs::File::create(&scan)
                .and_then(|f| snapshot_file::write_tree(&s.tree, snapshot_file::PacedFile::new(&f)));
            let (overlay, meta) = {
                let mut gate = self.gate()?;
                (gate.take(), self.new_meta(seq)?)
            };
            if let Err(e) = scanned {
                break Err(write_err(e));
            }
            // None: an install replaced the tree during the scan; scan the new one.
            let Some(overlay) = overlay else { continue };
            let merged = std::fs::File::open(&scan).and_then(|src| {
                let out = std::fs::File::create(&tmp)?;
                snapshot_file::merge(src, &overlay, snapshot_file::PacedFile::new(&out))?;
                out.sync_all()
            });
            break merged.map_err(write_err).and_then(|()| self.make_current(&tmp, &meta)).map(|()| meta);
        };
        let _ = std::fs::remove_file(&scan);
        result
    }

    fn make_current(&self, file: &Path, meta: &SnapshotMeta) -> Result<(), RaftStorageError> {
        let (snap, meta_path) = self.snapshot_paths();
        let meta_tmp = meta_path.with_extension("tmp");
        let json = serde_json::to_vec(meta).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        std::fs::write(&meta_tmp, json).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        std::fs::rename(file, &snap).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        std::fs::rename(&meta_tmp, &meta_path).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        Ok(())
    }

    /// Makes the received file the current snapshot, then replaces the tree with it in
    /// chunks (see the module docs) and reloads the in-memory state.
    fn install_blocking(&self, meta: &SnapshotMeta, path: &Path) -> Result<(), RaftStorageError> {
        let s = &self.shared;
        let mut gate = self.gate()?;
        // A snapshot build scanning the tree now would mix two states: make it start over.
        *gate = None;
        self.make_current(path, meta)?;
        let (snap, _) = self.snapshot_paths();
        replace_tree(&s.db, &s.tree, &snap, meta, INSTALL_CHUNK_BYTES).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let loaded = StateMachine::load(&SledKv(&s.tree)).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        *s.machine().map_err(|e| sm_err(ErrorVerb::Write, e))? = loaded;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SmStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, RaftStorageError> {
        let this = self.clone();
        let meta = blocking(ErrorSubject::StateMachine, ErrorVerb::Write, move || this.build_blocking()).await?;
        let (snap, _) = self.snapshot_paths();
        let file = tokio::fs::File::open(&snap).await.map_err(|e| sm_err(ErrorVerb::Read, e))?;
        Ok(Snapshot { meta, snapshot: Box::new(file) })
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
        let path = self.shared.snapshot_dir.join(format!("recv-{seq}.tmp"));
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        // Only the handle is used from here on; unlinking now means an aborted transfer
        // leaves nothing behind.
        tokio::fs::remove_file(&path).await.map_err(|e| sm_err(ErrorVerb::Write, e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), RaftStorageError> {
        use tokio::io::{AsyncSeekExt, AsyncWriteExt};
        let mut src = *snapshot;
        src.flush().await.map_err(|e| sm_err(ErrorVerb::Write, e))?;
        src.seek(std::io::SeekFrom::Start(0)).await.map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let path = self.shared.snapshot_dir.join(format!("install-{seq}.tmp"));
        let mut dst = tokio::fs::File::create(&path).await.map_err(|e| sm_err(ErrorVerb::Write, e))?;
        tokio::io::copy(&mut src, &mut dst).await.map_err(|e| sm_err(ErrorVerb::Write, e))?;
        dst.sync_all().await.map_err(|e| sm_err(ErrorVerb::Write, e))?;
        drop(dst);
        let this = self.clone();
        let meta = meta.clone();
        blocking(ErrorSubject::StateMachine, ErrorVerb::Write, move || this.install_blocking(&meta, &path)).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, RaftStorageError> {
        let (snap, meta_path) = self.snapshot_paths();
        let meta_bytes = match tokio::fs::read(&meta_path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(sm_err(ErrorVerb::Read, e)),
        };
        let meta: SnapshotMeta = serde_json::from_slice(&meta_bytes).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let file = tokio::fs::File::open(&snap).await.map_err(|e| sm_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(file) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> (sled::Db, SmStore) {
        let db = sled::Config::new().path(dir.join("sled")).open().expect("sled");
        let sm = SmStore::open(&db, &dir.join("snapshots"), super::super::suite::test_metrics()).expect("open");
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
        let meta = sm.build_blocking().expect("snapshot");
        (sm, meta)
    }

    #[test]
    fn install_in_chunks_replaces_the_tree() {
        let (a, b) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
        let (src, meta) = source(a.path(), 300);
        let (db, dst) = store(b.path());
        dst.shared.tree.insert("z/old", b"gone".to_vec()).expect("insert");
        let (snap, _) = src.snapshot_paths();
        // 4 KiB chunks: the 300 KiB snapshot goes in ~75 batches.
        let batches = replace_tree(&db, &dst.shared.tree, &snap, &meta, 4096).expect("install");
        assert!(batches >= 70, "{batches} batches");
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
            sm.build_blocking().expect("snapshot");
            let (snap, _) = sm.snapshot_paths();
            let mut got = BTreeMap::new();
            snapshot_file::read_entries(std::fs::File::open(&snap).expect("open"), |k, v| {
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
            let (snap, _) = src.snapshot_paths();
            let copy = b.path().join("snapshots").join("recv.tmp");
            std::fs::copy(&snap, &copy).expect("copy");
            dst.make_current(&copy, &meta).expect("current");
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
}
