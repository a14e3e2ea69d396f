//! Node storage: the Raft log ([`log_store`] over [`segments`] files in
//! `<data_dir>/raft-log` or `raft_log_dir`, with the vote in its `vote` file and its
//! [`log_owner`] id in `owner`), the current
//! snapshot (`<data_dir>/snapshots/current.snap`, see [`sm_store`] and [`snapshot_file`]),
//! and in one sled database the purge point (`raft_meta`) and the state machine tables
//! (`sm`; see `state::keys`). The files drover writes itself go through the [`fs`] layer,
//! whose simulated implementation drives the power-loss tests ([`power_loss`]).
//!
//! The log is outside sled because sled never evicts large values from memory (see
//! [`segments`]); everything else is small per key and stays in sled.

pub mod fs;
pub mod log_owner;
pub mod log_store;
pub mod segments;
pub mod sled_kv;
pub mod sm_store;
pub mod snapshot_file;

use std::path::{Path, PathBuf};

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};

use crate::raft::types::{NodeId, RaftStorageError};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("opening sled database at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("state machine: {0}")]
    State(#[from] crate::state::KvError),
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Where the Raft log lives unless `raft_log_dir` says otherwise.
pub fn default_log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("raft-log")
}

/// Opens the node's storage under `data_dir`, with the Raft log in `log_dir` (see
/// [`log_owner`] for how the two are checked to belong together).
pub fn open(
    data_dir: &Path,
    log_dir: &Path,
    cache_capacity_bytes: u64,
    metrics: sm_store::StorageMetrics,
) -> Result<(log_store::LogStore, sm_store::SmStore), StorageError> {
    let default = default_log_dir(data_dir);
    // The same directory however it is spelled (`./data/raft-log`, a symlink): compare
    // resolved paths where both exist.
    let same = match (std::fs::canonicalize(log_dir), std::fs::canonicalize(&default)) {
        (Ok(a), Ok(b)) => a == b,
        _ => log_dir == default,
    };
    let holds_a_log = |dir: &Path| -> std::io::Result<bool> {
        Ok(log_owner::holds_vote_or_entries(&fs::RealFs, dir)? || dir.join(log_owner::OWNER_FILE).exists())
    };
    if !same && holds_a_log(&default)? {
        return Err(StorageError::Io(std::io::Error::other(format!(
            "raft_log_dir is {}, but this data directory's Raft log is in {}: stop the node, move the \
             files from there to {} and start it again (or remove raft_log_dir)",
            log_dir.display(),
            default.display(),
            log_dir.display()
        ))));
    }
    let path = data_dir.join("sled");
    let db = sled::Config::new()
        .path(&path)
        // The Raft adapter flushes explicitly before acknowledging; the timer only bounds
        // how long the state machine's writes may sit in memory.
        .flush_every_ms(Some(500))
        // sled's page cache is the bulk of a node's memory; bound it (default 1 GiB).
        .cache_capacity(cache_capacity_bytes)
        .open()
        .map_err(|source| StorageError::Open { path: path.display().to_string(), source })?;
    let fs: std::sync::Arc<dyn fs::Fs> = std::sync::Arc::new(fs::RealFs);
    let log = log_store::LogStore::new(fs.clone(), &db, log_dir)?.with_sync_metric(metrics.log_sync_seconds.clone());
    let sm = sm_store::SmStore::open(fs, &db, &data_dir.join("snapshots"), metrics)?;
    Ok((log, sm))
}

/// Runs storage work on the blocking pool; a panic in it becomes a storage error.
pub(crate) async fn blocking<T: Send + 'static>(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    f: impl FnOnce() -> Result<T, RaftStorageError> + Send + 'static,
) -> Result<T, RaftStorageError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| io_err(subject, verb, std::io::Error::other(e.to_string())))?
}

pub(crate) fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> RaftStorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

#[cfg(test)]
mod power_loss;

#[cfg(test)]
mod suite {
    //! openraft's shared storage test suite, run against the sled stores.
    use openraft::testing::{StoreBuilder, Suite};

    use super::log_store::LogStore;
    use super::sm_store::{SmStore, StorageMetrics};
    use crate::raft::types::{RaftStorageError, TypeConfig};

    pub fn test_metrics() -> StorageMetrics {
        StorageMetrics {
            apply_seconds: prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("apply", "apply"))
                .expect("histogram opts are valid"),
            applied_entries: prometheus::IntCounter::new("applied", "applied").expect("counter opts are valid"),
            applied_commands: prometheus::IntCounter::new("commands", "commands").expect("counter opts are valid"),
            log_sync_seconds: prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("sync", "sync"))
                .expect("histogram opts are valid"),
        }
    }

    /// Opens sled at `path`. A store of the same directory dropped just before may still
    /// hold sled's file lock until its flusher thread exits (longer on a loaded machine):
    /// a lock failure is retried for up to 10 s; any other error is returned.
    pub fn open_sled(path: &std::path::Path) -> sled::Result<sled::Db> {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match sled::Config::new().path(path).open() {
                Err(e) if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => return r,
            }
        }
    }

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, SmStore, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, SmStore), RaftStorageError> {
            let dir = tempfile::tempdir().expect("temp dir");
            let log_dir = super::default_log_dir(dir.path());
            let (log, sm) = super::open(dir.path(), &log_dir, 64 << 20, test_metrics()).expect("open storage");
            Ok((dir, log, sm))
        }
    }

    /// A data directory whose log is still in the default place does not start with
    /// `raft_log_dir` pointing elsewhere: it would open an empty log and forget its vote.
    #[test]
    fn a_log_left_in_the_default_place_is_not_silently_abandoned() {
        let dir = tempfile::tempdir().expect("temp dir");
        let default = super::default_log_dir(dir.path());
        std::fs::create_dir_all(&default).expect("mkdir");
        std::fs::write(default.join("00000000000000000001.seg"), b"").expect("write");
        let elsewhere = dir.path().join("elsewhere");
        let e = super::open(dir.path(), &elsewhere, 64 << 20, test_metrics()).err().expect("refused");
        let msg = e.to_string();
        assert!(msg.contains(&default.display().to_string()) && msg.contains("move the files"), "{msg}");
        assert!(!elsewhere.exists() && !dir.path().join("sled").exists(), "a refusal creates nothing");
    }

    /// A plain test: the suite starts its own runtime per case.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).expect("openraft storage suite");
    }
}
