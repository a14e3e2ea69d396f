//! [`SimFs`]: an in-memory file system that models what a power loss keeps, after the
//! approach of TigerBeetle's storage simulator and LazyFS.
//!
//! Each file has its current bytes and its synced bytes; each name is current or
//! durable (synced by [`Fs::sync_dir`] of its directory). [`SimFs::power_loss`] puts
//! every file back to its synced bytes (optionally keeping a seeded prefix of an
//! unsynced appended tail, a torn write) and every directory back to its durable names.
//! [`SimFs::crash_at_sync`] arms a crash: the n-th sync (file or directory) from then on
//! does not happen, and every operation after it fails, as if the machine lost power at
//! that instant. Handles opened before a power loss fail afterwards. Directories are
//! durable once created (a simplification: drover creates them once, at open).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{FileRef, Fs, FsFile};

#[derive(Default)]
struct Inode {
    data: Vec<u8>,
    synced: Vec<u8>,
}

#[derive(Default)]
struct State {
    inodes: BTreeMap<u64, Inode>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    next_inode: u64,
    /// Bumped by each power loss; handles of an older epoch are dead.
    epoch: u64,
    /// Syncs performed since the crash was armed.
    syncs: u64,
    /// The sync (counted from 1) at which the power fails.
    crash_at: Option<u64>,
    /// The power has failed; everything errs until [`SimFs::power_loss`].
    down: bool,
}

fn power_lost() -> io::Error {
    io::Error::other("simulated power loss")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display()))
}

impl State {
    fn live(&self) -> io::Result<()> {
        if self.down { Err(power_lost()) } else { Ok(()) }
    }

    /// Counts a sync; fails (and brings the power down) if it is the armed one.
    fn sync_point(&mut self) -> io::Result<()> {
        self.live()?;
        self.syncs += 1;
        if self.crash_at.is_some_and(|n| self.syncs >= n) {
            self.down = true;
            return Err(power_lost());
        }
        Ok(())
    }
}

/// The simulated file system; clones share it.
#[derive(Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

struct SimFile {
    state: Arc<Mutex<State>>,
    inode: u64,
    epoch: u64,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding it can only come from a test assertion; the data is plain.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut State, u64) -> io::Result<T>) -> io::Result<T> {
        let mut s = lock(&self.state);
        s.live()?;
        if s.epoch != self.epoch {
            return Err(io::Error::other("file handle from before a power loss"));
        }
        f(&mut s, self.inode)
    }
}

fn inode(s: &mut State, ino: u64) -> io::Result<&mut Inode> {
    s.inodes.get_mut(&ino).ok_or_else(|| io::Error::other("dangling inode"))
}

impl FsFile for SimFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(|s, ino| {
            let data = &inode(s, ino)?.data;
            let start = usize::try_from(offset).map_err(io::Error::other)?;
            let src = data
                .get(start..start + buf.len())
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
            buf.copy_from_slice(src);
            Ok(())
        })
    }

    fn append(&self, buf: &[u8]) -> io::Result<()> {
        self.with(|s, ino| {
            inode(s, ino)?.data.extend_from_slice(buf);
            Ok(())
        })
    }

    fn size(&self) -> io::Result<u64> {
        self.with(|s, ino| Ok(inode(s, ino)?.data.len() as u64))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|s, ino| {
            inode(s, ino)?.data.resize(usize::try_from(len).map_err(io::Error::other)?, 0);
            Ok(())
        })
    }

    fn sync(&self) -> io::Result<()> {
        self.with(|s, ino| {
            s.sync_point()?;
            let i = inode(s, ino)?;
            i.synced = i.data.clone();
            Ok(())
        })
    }
}

impl SimFs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Arms a crash at the `n`-th sync from now (1 = the next one).
    pub fn crash_at_sync(&self, n: u64) {
        let mut s = lock(&self.state);
        s.syncs = 0;
        s.crash_at = Some(n);
    }

    /// Syncs performed since the last [`Self::crash_at_sync`] or power loss.
    pub fn syncs(&self) -> u64 {
        lock(&self.state).syncs
    }

    /// Whether the armed crash happened.
    pub fn is_down(&self) -> bool {
        lock(&self.state).down
    }

    /// Loses power: every unsynced byte and directory change is dropped. With a seed,
    /// a file whose unsynced change is an append keeps a pseudo-random prefix of it (a
    /// torn write). Disarms the crash and brings the power back.
    pub fn power_loss(&self, torn_seed: Option<u64>) {
        let mut s = lock(&self.state);
        let durable = s.durable_names.clone();
        s.names = durable;
        for (ino, i) in s.inodes.iter_mut() {
            let mut keep = i.synced.clone();
            if let Some(seed) = torn_seed
                && i.data.len() > i.synced.len()
                && i.data.starts_with(&i.synced)
            {
                let tail = &i.data[i.synced.len()..];
                let n = splitmix(seed ^ ino) as usize % (tail.len() + 1);
                keep.extend_from_slice(&tail[..n]);
            }
            i.data = keep;
        }
        let reachable: BTreeSet<u64> = s.names.values().copied().collect();
        s.inodes.retain(|ino, _| reachable.contains(ino));
        s.epoch += 1;
        s.crash_at = None;
        s.down = false;
        s.syncs = 0;
    }

    /// The current bytes of `path` (for checks).
    pub fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = lock(&self.state);
        let ino = s.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(s.inodes.get(ino).map(|i| i.data.clone()).unwrap_or_default())
    }

    fn handle(&self, s: &State, ino: u64) -> FileRef {
        Arc::new(SimFile { state: self.state.clone(), inode: ino, epoch: s.epoch })
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Fs for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.live()?;
        s.dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = lock(&self.state);
        s.live()?;
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn open(&self, path: &Path) -> io::Result<FileRef> {
        let s = lock(&self.state);
        s.live()?;
        let ino = *s.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(self.handle(&s, ino))
    }

    fn create(&self, path: &Path) -> io::Result<FileRef> {
        let mut s = lock(&self.state);
        s.live()?;
        if !path.parent().is_some_and(|d| s.dirs.contains(d)) {
            return Err(not_found(path));
        }
        if let Some(&ino) = s.names.get(path) {
            inode(&mut s, ino)?.data.clear();
            return Ok(self.handle(&s, ino));
        }
        let ino = s.next_inode;
        s.next_inode += 1;
        s.inodes.insert(ino, Inode::default());
        s.names.insert(path.to_path_buf(), ino);
        Ok(self.handle(&s, ino))
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let s = lock(&self.state);
        s.live()?;
        Ok(s.names.contains_key(path))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.live()?;
        s.names.remove(path).map(|_| ()).ok_or_else(|| not_found(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.live()?;
        let ino = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_path_buf(), ino);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.sync_point()?;
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        s.durable_names.retain(|p, _| !in_dir(p));
        let current: Vec<(PathBuf, u64)> =
            s.names.iter().filter(|(p, _)| in_dir(p)).map(|(p, i)| (p.clone(), *i)).collect();
        s.durable_names.extend(current);
        Ok(())
    }

    fn snapshot_handle(&self, path: &Path) -> io::Result<std::fs::File> {
        use std::io::{Seek, Write};
        let bytes = {
            let s = lock(&self.state);
            s.live()?;
            let ino = s.names.get(path).ok_or_else(|| not_found(path))?;
            s.inodes.get(ino).map(|i| i.data.clone()).unwrap_or_default()
        };
        let mut f = tempfile::tempfile()?;
        f.write_all(&bytes)?;
        f.rewind()?;
        Ok(f)
    }

    fn scratch_file(&self, _dir: &Path, _name: &str) -> io::Result<std::fs::File> {
        lock(&self.state).live()?;
        tempfile::tempfile()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_power_loss_keeps_only_synced_bytes_and_names() {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).expect("dir");
        let a = fs.create(&dir.join("a")).expect("a");
        a.append(b"synced").expect("append");
        a.sync().expect("sync");
        fs.sync_dir(dir).expect("sync dir");
        a.append(b" lost").expect("append");
        let b = fs.create(&dir.join("b")).expect("b");
        b.append(b"name never synced").expect("append");
        b.sync().expect("sync");
        fs.rename(&dir.join("a"), &dir.join("c")).expect("rename");
        fs.power_loss(None);
        assert_eq!(fs.list(dir).expect("list"), vec!["a".to_string()]);
        assert_eq!(fs.read(&dir.join("a")).expect("a"), b"synced");
        assert!(a.size().is_err(), "old handles are dead");
    }

    #[test]
    fn an_armed_crash_stops_at_that_sync() {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).expect("dir");
        let a = fs.create(&dir.join("a")).expect("a");
        fs.sync_dir(dir).expect("sync dir");
        fs.crash_at_sync(2);
        a.append(b"one").expect("append");
        a.sync().expect("first sync");
        a.append(b"two").expect("append");
        assert!(a.sync().is_err(), "the second sync is the crash");
        assert!(fs.is_down() && a.append(b"x").is_err());
        fs.power_loss(Some(7));
        let got = fs.read(&dir.join("a")).expect("a");
        assert!(got.starts_with(b"one") && got.len() <= 6, "{got:?}");
    }
}
