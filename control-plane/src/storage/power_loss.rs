//! Power-loss tests of the node's storage over [`SimFs`]: one workload of votes,
//! appends, applies, snapshot builds, a truncation, purges, a snapshot install and
//! appends past it, cut by a power loss at every sync point in turn (and again at every
//! sync point of the reopen that follows), with and without torn unsynced tails. After
//! each loss the node must open, and everything acknowledged before it must be there:
//! the vote, every appended entry not since truncated or purged, the purge point, and a
//! current snapshot at least as new as the last one built or installed, whose data is
//! the state its metadata names.
//!
//! sled (the state machine and the purge point) lives in a real temporary directory and
//! keeps every write across a simulated loss (see [`super::fs`] for what that covers).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{EntryPayload, RaftLogReader, RaftSnapshotBuilder};

use super::fs::RealFs;
use super::fs::sim::SimFs;
use super::log_store::LogStore;
use super::sm_store::SmStore;
use super::snapshot_file;
use crate::raft::types::{Entry, LogId, SnapshotMeta, Vote};
use crate::state::keys;

/// Segments close at this size, so the workload rolls through several.
const SEGMENT_BYTES: u64 = 120;
const LOG_DIR: &str = "/node/raft-log";
const SNAP_DIR: &str = "/node/snapshots";

fn log_id(term: u64, index: u64) -> LogId {
    openraft::LogId::new(openraft::CommittedLeaderId::new(term, 1), index)
}

fn entries(term: u64, from: u64, to: u64) -> Vec<Entry> {
    (from..=to).map(|i| Entry { log_id: log_id(term, i), payload: EntryPayload::Blank }).collect()
}

struct Node {
    db: sled::Db,
    log: LogStore,
    sm: SmStore,
}

fn open(fs: &SimFs, sled_dir: &Path) -> Result<Node, super::StorageError> {
    let db = super::suite::open_sled(sled_dir)?;
    let log = LogStore::open_with_target(Arc::new(fs.clone()), &db, Path::new(LOG_DIR), SEGMENT_BYTES)?;
    let sm = SmStore::open(Arc::new(fs.clone()), &db, Path::new(SNAP_DIR), super::suite::test_metrics())?;
    Ok(Node { db, log, sm })
}

/// What the workload was told is durable.
#[derive(Debug, Default)]
struct Acked {
    vote: Option<Vote>,
    /// Index to log id of every acknowledged entry not since (even tentatively) removed.
    log: BTreeMap<u64, LogId>,
    purged: Option<u64>,
    snapshot: Option<LogId>,
}

/// A snapshot to install, as a leader would send it: built by another store at index 30.
async fn leader_snapshot() -> (SnapshotMeta, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tmp");
    let db = sled::Config::new().path(dir.path().join("sled")).open().expect("sled");
    let sm =
        SmStore::open(Arc::new(RealFs), &db, &dir.path().join("snap"), super::suite::test_metrics()).expect("open");
    for i in 0..40u32 {
        sm.shared.tree.insert(format!("z/{i:04}"), vec![i as u8; 32]).expect("insert");
    }
    sm.shared.tree.insert(b"r/applied", keys::encode(&Some(log_id(2, 30)))).expect("applied");
    let mut sm = sm;
    let snap = sm.get_snapshot_builder().await.build_snapshot().await.expect("build");
    let mut bytes = Vec::new();
    let mut f = *snap.snapshot;
    tokio::io::AsyncReadExt::read_to_end(&mut f, &mut bytes).await.expect("read");
    (snap.meta, bytes)
}

/// Runs the workload until it ends or the power fails; records what was acknowledged.
/// An error while the power is up is a bug.
async fn workload(node: &mut Node, fs: &SimFs, source: &(SnapshotMeta, Vec<u8>), acked: &mut Acked) {
    let result: Result<(), openraft::StorageError<u64>> = async {
        let (log, sm) = (&mut node.log, &mut node.sm);
        let vote = Vote::new(1, 1);
        log.save_vote(&vote).await?;
        acked.vote = Some(vote);
        for (from, to) in [(1, 4), (5, 8), (9, 12)] {
            log.append_and_sync(entries(1, from, to)).await?;
            acked.log.extend((from..=to).map(|i| (i, log_id(1, i))));
        }
        sm.apply(entries(1, 1, 8)).await?;
        let snap = sm.get_snapshot_builder().await.build_snapshot().await?;
        acked.snapshot = snap.meta.last_log_id;
        acked.log.retain(|i, _| *i > 6);
        log.purge(log_id(1, 6)).await?;
        acked.purged = Some(6);
        // A new leader overwrites the tail of the log.
        let vote = Vote::new(2, 1);
        log.save_vote(&vote).await?;
        acked.vote = Some(vote);
        acked.log.retain(|i, _| *i < 10);
        log.truncate(log_id(1, 10)).await?;
        log.append_and_sync(entries(2, 10, 14)).await?;
        acked.log.extend((10..=14).map(|i| (i, log_id(2, i))));
        // Then sends a snapshot past the end of the log; openraft purges the log behind it.
        let (meta, bytes) = source;
        let mut file = sm.begin_receiving_snapshot().await?;
        tokio::io::AsyncWriteExt::write_all(&mut *file, bytes)
            .await
            .map_err(|e| super::io_err(openraft::ErrorSubject::StateMachine, openraft::ErrorVerb::Write, e))?;
        sm.install_snapshot(meta, file).await?;
        acked.snapshot = meta.last_log_id;
        acked.log.retain(|i, _| *i > 30);
        log.purge(log_id(2, 30)).await?;
        acked.purged = Some(30);
        for (from, to) in [(31, 33), (34, 36)] {
            log.append_and_sync(entries(2, from, to)).await?;
            acked.log.extend((from..=to).map(|i| (i, log_id(2, i))));
        }
        sm.apply(entries(2, 31, 36)).await?;
        let snap = sm.get_snapshot_builder().await.build_snapshot().await?;
        acked.snapshot = snap.meta.last_log_id;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        assert!(fs.is_down(), "storage failed with the power on: {e}");
    }
}

/// The applied id a snapshot file's data carries, and its metadata.
fn read_snapshot(bytes: &[u8]) -> std::io::Result<(SnapshotMeta, Option<LogId>)> {
    let mut applied = None;
    let (meta, _) = snapshot_file::read_entries(bytes, |k, v| {
        if k.as_slice() == b"r/applied" {
            applied = keys::decode::<Option<LogId>>(&v).map_err(std::io::Error::other)?;
        }
        Ok(())
    })?;
    Ok((meta, applied))
}

/// Checks the reopened node against what was acknowledged.
async fn check(node: &mut Node, acked: &Acked) -> Result<(), String> {
    let (log, sm) = (&mut node.log, &mut node.sm);
    let vote = log.read_vote().await.map_err(|e| format!("read vote: {e}"))?;
    if vote < acked.vote {
        return Err(format!("vote {vote:?} is older than the acknowledged {:?}", acked.vote));
    }
    let state = log.get_log_state().await.map_err(|e| format!("log state: {e}"))?;
    let purged = state.last_purged_log_id.map(|l| l.index);
    if purged < acked.purged {
        return Err(format!("purge point {purged:?} is below the acknowledged {:?}", acked.purged));
    }
    let first = purged.map_or(1, |p| p + 1);
    let last = state.last_log_id.map_or(0, |l| l.index);
    let held = log.try_get_log_entries(first..=last).await.map_err(|e| format!("read log: {e}"))?;
    if held.len() as u64 != (last + 1).saturating_sub(first) {
        return Err(format!("log {first}..={last} has gaps: {} entries", held.len()));
    }
    let held: BTreeMap<u64, LogId> = held.iter().map(|e| (e.log_id.index, e.log_id)).collect();
    for (i, id) in acked.log.range(first..) {
        if held.get(i) != Some(id) {
            return Err(format!("acknowledged entry {id} is {:?} after the power loss", held.get(i)));
        }
    }
    let current = sm.get_current_snapshot().await.map_err(|e| format!("current snapshot: {e}"))?;
    match (current, acked.snapshot) {
        (None, None) => {}
        (None, Some(want)) => return Err(format!("the snapshot at {want} is gone")),
        (Some(snap), want) => {
            let mut bytes = Vec::new();
            let mut f = *snap.snapshot;
            tokio::io::AsyncReadExt::read_to_end(&mut f, &mut bytes).await.map_err(|e| e.to_string())?;
            let (header, data) = read_snapshot(&bytes).map_err(|e| format!("current snapshot unreadable: {e}"))?;
            if header != snap.meta || data != snap.meta.last_log_id {
                return Err(format!("snapshot {:?} carries the data of {data:?}", snap.meta.last_log_id));
            }
            if snap.meta.last_log_id < want {
                return Err(format!("snapshot {:?} is older than the acknowledged {want:?}", snap.meta.last_log_id));
            }
        }
    }
    // The node goes on: the next append lands and reads back.
    let next = state.last_log_id.map_or(1, |l| l.index + 1);
    log.append_and_sync(entries(3, next, next)).await.map_err(|e| format!("append after reopen: {e}"))?;
    let got = log.try_get_log_entries(next..=next).await.map_err(|e| e.to_string())?;
    if got.first().map(|e| e.log_id) != Some(log_id(3, next)) {
        return Err(format!("append after reopen reads back as {got:?}"));
    }
    Ok(())
}

/// Opens after a power loss, crashing at each sync point of the open in turn first.
fn reopen(fs: &SimFs, sled_dir: &Path, torn: Option<u64>) -> Node {
    for j in 1.. {
        fs.crash_at_sync(j);
        match open(fs, sled_dir) {
            Ok(node) if !fs.is_down() => {
                fs.crash_at_sync(u64::MAX);
                return node;
            }
            Ok(node) => drop(node),
            Err(e) => assert!(fs.is_down(), "the node does not open: {e}"),
        }
        fs.power_loss(torn.map(|s| s ^ j));
    }
    unreachable!("the open loop returns")
}

/// Runs the workload with a power loss at every sync point; returns the failures.
async fn sweep(torn: bool, skip_append_sync: bool) -> (u64, Vec<String>) {
    let source = leader_snapshot().await;
    let mut failures = Vec::new();
    let mut points = 0;
    for k in 1.. {
        let fs = SimFs::new();
        let dir = tempfile::tempdir().expect("tmp");
        let sled_dir = dir.path().join("sled");
        let mut acked = Acked::default();
        {
            let mut node = open(&fs, &sled_dir).expect("fresh open");
            if skip_append_sync {
                node.log.skip_append_sync_for_test();
            }
            fs.crash_at_sync(k);
            workload(&mut node, &fs, &source, &mut acked).await;
            node.db.flush().expect("sled flush");
        }
        let crashed = fs.is_down();
        let seed = torn.then_some(k);
        fs.power_loss(seed);
        let mut node = reopen(&fs, &sled_dir, seed);
        if let Err(e) = check(&mut node, &acked).await {
            failures.push(format!("power loss at sync {k}: {e}"));
        }
        if !crashed {
            break;
        }
        points = k;
    }
    (points, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_acknowledged_survives_a_power_loss_at_every_sync_point() {
    let (points, failures) = sweep(false, false).await;
    eprintln!("{points} sync points, {} failures", failures.len());
    assert!(points > 20, "the workload has {points} sync points");
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_unsynced_tails_are_cut_and_everything_acknowledged_survives() {
    let (_, failures) = sweep(true, false).await;
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The layer matters: with the append's sync switched off, some power loss loses an
/// acknowledged entry, and the check says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_append_sync_a_power_loss_loses_acknowledged_entries() {
    let (points, failures) = sweep(false, true).await;
    eprintln!(
        "without the append sync: {points} sync points, {} failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        failures.iter().any(|f| f.contains("acknowledged entry")),
        "no power loss lost an acknowledged entry: {failures:#?}"
    );
}
