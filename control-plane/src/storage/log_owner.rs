//! Which data directory a Raft log directory belongs to.
//!
//! The log (segments and the vote) may live outside the data directory (`raft_log_dir`,
//! for a disk of its own), so a node can be started with its sled tables and a log that
//! are not each other's: a setting changed without moving the files, a fresh disk, a
//! data directory wiped without its log. Either mismatch breaks Raft's promises (an empty
//! log loses the node's vote, so it could vote twice in one term; a log without its
//! tables replays onto nothing). So the pair is bound by an id: a random id in sled's
//! `raft_meta`, and the same id in the log directory's `owner` file. A node opens only
//! when both agree; moving the log directory's files keeps them agreeing.
//!
//! Binding, the first time (a fresh node, or one from before this check): the id goes to
//! sled marked unconfirmed and is flushed; then the file is written durably (the
//! directory created and its parent synced first); then sled marks it confirmed. A crash
//! between leaves an unconfirmed id and maybe no file, and the next open finishes the
//! binding; a confirmed id with no file is refused.
//!
//! The id says which directory this is, not what is in it, so every open also checks the
//! content against the tables: a node whose state machine has applied entries must find a
//! vote (the file, or the one older releases kept in sled) or log segments in its log
//! directory. That refuses an empty directory bound on a first start after an upgrade,
//! and a copy that kept the `owner` file but not the log.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::fs::{self, Fs};
use super::log_store::{LEGACY_VOTE, VOTE_FILE};
use super::sm_store::{APPLIED, SM_TREE};

pub const OWNER_FILE: &str = "owner";
const OWNER_KEY: &[u8] = b"log_owner";

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
struct Binding {
    id: u128,
    /// The owner file was written (durably) after the id was stored.
    confirmed: bool,
}

/// Checks that the log in `dir` belongs to the tables in `db` (`meta` is its `raft_meta`),
/// binding the two the first time. An error names the directory and what to do.
pub fn check(fs: &dyn Fs, dir: &Path, db: &sled::Db, meta: &sled::Tree) -> std::io::Result<()> {
    let stored: Option<Binding> = match meta.get(OWNER_KEY).map_err(std::io::Error::other)? {
        Some(b) => Some(postcard::from_bytes(&b).map_err(std::io::Error::other)?),
        None => None,
    };
    let on_disk = read_file(fs, dir)?;
    let refuse = |why: String| {
        Err(std::io::Error::other(format!(
            "the Raft log directory {} {why}; start the server with the log directory that was used \
             with this data directory (move its files there, or set raft_log_dir back). To replace the \
             server instead, follow \"Replace a failed server\" in docs/operations.md: remove it from \
             the cluster, wipe both directories, and add it back as a learner",
            dir.display()
        )))
    };
    let legacy_vote = meta.contains_key(LEGACY_VOTE).map_err(std::io::Error::other)?;
    if applied_entries(db)? && !legacy_vote && !holds_vote_or_entries(fs, dir)? {
        return refuse(
            "holds no vote and no log entries, but this data directory's state machine has applied \
             entries (a server that lost its vote could vote twice in one term)"
                .into(),
        );
    }
    match (stored, on_disk) {
        (Some(b), Some(id)) if b.id == id => {
            if !b.confirmed {
                store(db, meta, Binding { id, confirmed: true })?;
            }
            Ok(())
        }
        (Some(b), Some(id)) => {
            refuse(format!("belongs to another data directory (its id {id:032x}, this one's {:032x})", b.id))
        }
        (Some(b), None) if b.confirmed => refuse(format!(
            "is not this data directory's log (no `{OWNER_FILE}` file; this data directory's id is {:032x})",
            b.id
        )),
        (Some(b), None) => {
            // A crash interrupted the binding: finish it.
            write_file(fs, dir, b.id)?;
            store(db, meta, Binding { id: b.id, confirmed: true })
        }
        (None, Some(id)) => refuse(format!("belongs to another data directory (its id {id:032x}; this one has none)")),
        (None, None) => {
            let id = rand::random::<u128>();
            store(db, meta, Binding { id, confirmed: false })?;
            write_file(fs, dir, id)?;
            store(db, meta, Binding { id, confirmed: true })
        }
    }
}

/// Whether the state machine in `db` has applied any entry.
fn applied_entries(db: &sled::Db) -> std::io::Result<bool> {
    if !db.tree_names().iter().any(|n| n.as_ref() == SM_TREE) {
        return Ok(false);
    }
    let applied = db.open_tree(SM_TREE).map_err(std::io::Error::other)?.get(APPLIED).map_err(std::io::Error::other)?;
    match applied {
        None => Ok(false),
        Some(v) => {
            let id: Option<crate::raft::types::LogId> =
                crate::state::keys::decode(&v).map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(id.is_some())
        }
    }
}

/// Whether `dir` holds a vote file or a log segment (a missing directory holds neither).
pub fn holds_vote_or_entries(fs: &dyn Fs, dir: &Path) -> std::io::Result<bool> {
    if fs.exists(&dir.join(VOTE_FILE))? {
        return Ok(true);
    }
    match fs.list(dir) {
        Ok(names) => Ok(names.iter().any(|n| n.ends_with(".seg"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn store(db: &sled::Db, meta: &sled::Tree, b: Binding) -> std::io::Result<()> {
    let bytes = postcard::to_stdvec(&b).map_err(std::io::Error::other)?;
    meta.insert(OWNER_KEY, bytes).map_err(std::io::Error::other)?;
    db.flush().map_err(std::io::Error::other)?;
    Ok(())
}

fn read_file(fs: &dyn Fs, dir: &Path) -> std::io::Result<Option<u128>> {
    let path = dir.join(OWNER_FILE);
    if !fs.exists(&path)? {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut fs::FileReader::new(fs.open(&path)?)?, &mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    u128::from_str_radix(text.trim(), 16).map(Some).map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: not a log owner id: {e}", path.display()))
    })
}

fn write_file(fs: &dyn Fs, dir: &Path, id: u128) -> std::io::Result<()> {
    if !fs.exists(dir)? {
        fs.create_dir_all(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs.sync_dir(parent)?;
        }
    }
    fs::replace_file(fs, dir, OWNER_FILE, format!("{id:032x}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::RealFs;

    struct Data {
        _dir: tempfile::TempDir,
        db: sled::Db,
        meta: sled::Tree,
    }

    fn data() -> Data {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::Config::new().path(dir.path().join("sled")).open().expect("sled");
        let meta = db.open_tree("raft_meta").expect("tree");
        Data { _dir: dir, db, meta }
    }

    fn log_dir(root: &tempfile::TempDir, name: &str) -> std::path::PathBuf {
        let d = root.path().join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    fn binding(d: &Data) -> Option<Binding> {
        d.meta.get(OWNER_KEY).expect("get").map(|b| postcard::from_bytes(&b).expect("binding"))
    }

    #[test]
    fn the_first_open_binds_the_pair_and_later_opens_accept_it() {
        let (d, root) = (data(), tempfile::tempdir().expect("temp dir"));
        let x = log_dir(&root, "x");
        check(&RealFs, &x, &d.db, &d.meta).expect("bind");
        let b = binding(&d).expect("bound");
        assert!(b.confirmed);
        assert_eq!(read_file(&RealFs, &x).expect("read"), Some(b.id));
        check(&RealFs, &x, &d.db, &d.meta).expect("the same pair again");
        assert_eq!(binding(&d), Some(b));
    }

    #[test]
    fn a_moved_log_is_accepted_an_empty_or_foreign_one_is_refused() {
        let (a, b, root) = (data(), data(), tempfile::tempdir().expect("temp dir"));
        let x = log_dir(&root, "x");
        check(&RealFs, &x, &a.db, &a.meta).expect("bind a to x");
        // The operator moves the log's files to another disk.
        let moved = root.path().join("moved");
        std::fs::rename(&x, &moved).expect("move");
        check(&RealFs, &moved, &a.db, &a.meta).expect("a moved log is still a's");
        // An empty directory in its place (a new disk, a changed setting).
        let empty = log_dir(&root, "empty");
        let e = check(&RealFs, &empty, &a.db, &a.meta).expect_err("an empty log for a bound data directory");
        assert!(e.to_string().contains("is not this data directory's log"), "{e}");
        assert!(e.to_string().contains(&empty.display().to_string()), "{e}");
        assert!(!empty.join(OWNER_FILE).exists(), "a refusal writes nothing");
        // a's log offered to another data directory, fresh or bound.
        let e = check(&RealFs, &moved, &b.db, &b.meta).expect_err("a's log for a fresh data directory");
        assert!(e.to_string().contains("belongs to another data directory"), "{e}");
        assert_eq!(binding(&b), None, "a refusal writes nothing");
        let y = log_dir(&root, "y");
        check(&RealFs, &y, &b.db, &b.meta).expect("bind b to y");
        let e = check(&RealFs, &moved, &b.db, &b.meta).expect_err("a's log for b");
        assert!(e.to_string().contains("belongs to another data directory"), "{e}");
    }

    #[test]
    fn a_binding_a_crash_interrupted_is_finished() {
        let (d, root) = (data(), tempfile::tempdir().expect("temp dir"));
        let x = log_dir(&root, "x");
        // The crash came after the id was stored, before the file was written.
        store(&d.db, &d.meta, Binding { id: 42, confirmed: false }).expect("store");
        check(&RealFs, &x, &d.db, &d.meta).expect("finish the binding");
        assert_eq!(binding(&d), Some(Binding { id: 42, confirmed: true }));
        assert_eq!(read_file(&RealFs, &x).expect("read"), Some(42));
        // ... or after the file was written, before it was confirmed.
        store(&d.db, &d.meta, Binding { id: 42, confirmed: false }).expect("store");
        check(&RealFs, &x, &d.db, &d.meta).expect("confirm");
        assert_eq!(binding(&d), Some(Binding { id: 42, confirmed: true }));
    }

    /// Marks `d`'s state machine as having applied entries up to index 5.
    fn applied(d: &Data) {
        let id = Some(openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), 5));
        let id: Option<crate::raft::types::LogId> = id;
        d.db.open_tree(SM_TREE).expect("tree").insert(APPLIED, crate::state::keys::encode(&id)).expect("insert");
    }

    /// A data directory with applied entries is never bound to, nor opened with, a log
    /// directory that holds no vote and no segment: not on the first start after an
    /// upgrade (nothing bound yet), not with a copy that kept only the `owner` file.
    #[test]
    fn a_log_directory_without_vote_or_entries_is_refused_when_the_tables_have_applied_some() {
        let (d, root) = (data(), tempfile::tempdir().expect("temp dir"));
        applied(&d);
        let empty = log_dir(&root, "empty");
        let e = check(&RealFs, &empty, &d.db, &d.meta).expect_err("an empty log for applied tables");
        assert!(e.to_string().contains("holds no vote and no log entries"), "{e}");
        assert_eq!(binding(&d), None, "a refusal binds nothing");
        // A log with a vote (or segments) binds; an owner-only copy of it does not open.
        let x = log_dir(&root, "x");
        std::fs::write(x.join(VOTE_FILE), b"v").expect("write");
        check(&RealFs, &x, &d.db, &d.meta).expect("bind");
        let copy = log_dir(&root, "copy");
        std::fs::copy(x.join(OWNER_FILE), copy.join(OWNER_FILE)).expect("copy");
        let e = check(&RealFs, &copy, &d.db, &d.meta).expect_err("owner only");
        assert!(e.to_string().contains("holds no vote and no log entries"), "{e}");
        let y = log_dir(&root, "y");
        std::fs::write(y.join("00000000000000000001.seg"), b"").expect("write");
        std::fs::copy(x.join(OWNER_FILE), y.join(OWNER_FILE)).expect("copy");
        check(&RealFs, &y, &d.db, &d.meta).expect("segments without a vote file");
        // A vote older releases kept in sled counts as the log's.
        let (old, root2) = (data(), tempfile::tempdir().expect("temp dir"));
        applied(&old);
        old.meta.insert(LEGACY_VOTE, b"v".to_vec()).expect("insert");
        check(&RealFs, &log_dir(&root2, "fresh"), &old.db, &old.meta).expect("legacy vote in sled");
    }

    #[test]
    fn binding_creates_a_missing_log_directory_and_a_refusal_creates_nothing() {
        let (d, root) = (data(), tempfile::tempdir().expect("temp dir"));
        let x = root.path().join("new").join("log");
        check(&RealFs, &x, &d.db, &d.meta).expect("bind");
        assert!(x.join(OWNER_FILE).exists());
        let (other, gone) = (data(), root.path().join("gone"));
        applied(&other);
        check(&RealFs, &gone, &other.db, &other.meta).expect_err("applied tables, no log");
        assert!(!gone.exists());
    }

    #[test]
    fn a_damaged_owner_file_is_an_error_naming_it() {
        let (d, root) = (data(), tempfile::tempdir().expect("temp dir"));
        let x = log_dir(&root, "x");
        std::fs::write(x.join(OWNER_FILE), "not hex\n").expect("write");
        let e = check(&RealFs, &x, &d.db, &d.meta).expect_err("damaged");
        assert!(e.to_string().contains("not a log owner id"), "{e}");
    }
}
