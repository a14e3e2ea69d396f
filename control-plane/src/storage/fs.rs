//! The file-system layer under the files drover writes itself: the Raft log segments
//! ([`super::segments`]), the vote file ([`super::log_store`]) and the snapshots
//! ([`super::sm_store`]). Production uses [`RealFs`] (std files, `fdatasync`, directory
//! `fsync`); tests use [`sim::SimFs`], which keeps every byte and every directory entry
//! that was not synced in memory and drops them at a simulated power loss, so a missing
//! sync makes a crash test fail (kill -9 cannot show that: the page cache survives it).
//!
//! The operations are the few the storage code needs, each with the durability POSIX
//! gives it and nothing more:
//! * [`FsFile::append`] and [`FsFile::set_len`] change a file's data; only
//!   [`FsFile::sync`] makes those changes survive a power loss;
//! * [`Fs::create`], [`Fs::rename`] and [`Fs::remove_file`] change a directory; only
//!   [`Fs::sync_dir`] of that directory makes the change survive (a synced file whose
//!   name was never synced is lost with its name).
//!
//! What this layer does not cover: sled (the state-machine tables, the purge point and
//! the committed hint). sled makes its own writes durable when it is flushed
//! (`Db::flush`), which drover calls before anything depends on them (before a purge,
//! around an install marker, before acknowledging a vote written by older versions);
//! between flushes sled may lose its most recent writes, which openraft repairs by
//! re-applying the log. The power-loss tests treat sled as durable at every write (they
//! cannot drop its unflushed pages), so they check drover's own files and the order of
//! drover's syncs relative to sled flushes, not sled itself.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

/// An open file: read anywhere, append at the end, cut, sync.
pub trait FsFile: Send + Sync {
    /// Fills `buf` from `offset` (an error if the file ends first).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at the end of the file.
    fn append(&self, buf: &[u8]) -> io::Result<()>;
    /// The file's size in bytes.
    fn size(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data (and size) durable: `fdatasync`.
    fn sync(&self) -> io::Result<()>;
}

pub type FileRef = Arc<dyn FsFile>;

/// The directory operations (see the module docs for what is durable when).
pub trait Fs: Send + Sync + 'static {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens an existing file to read and append.
    fn open(&self, path: &Path) -> io::Result<FileRef>;
    /// Creates an empty file to read and append (emptying one that has the name).
    fn create(&self, path: &Path) -> io::Result<FileRef>;
    fn exists(&self, path: &Path) -> io::Result<bool>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Atomically gives `from`'s file the name `to`, replacing any file there.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// A std file with `path`'s content as of this call, positioned at its start, that a
    /// later rename of `path` does not change: what openraft streams to a follower.
    fn snapshot_handle(&self, path: &Path) -> io::Result<std::fs::File>;
    /// An empty std file with no name, in `dir` when it is on disk, to receive a
    /// snapshot into; nothing is left behind if the transfer is abandoned.
    fn scratch_file(&self, dir: &Path, name: &str) -> io::Result<std::fs::File>;
}

/// Production: the operating system's files.
pub struct RealFs;

impl FsFile for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }

    fn append(&self, buf: &[u8]) -> io::Result<()> {
        // Every file is opened in append mode: each write goes to the end.
        (&*self).write_all(buf)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        std::fs::File::set_len(self, len)
    }

    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }
}

impl Fs for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        std::fs::read_dir(dir)?.map(|e| Ok(e?.file_name().to_string_lossy().into_owned())).collect()
    }

    fn open(&self, path: &Path) -> io::Result<FileRef> {
        Ok(Arc::new(std::fs::OpenOptions::new().read(true).append(true).open(path)?))
    }

    fn create(&self, path: &Path) -> io::Result<FileRef> {
        let f = std::fs::OpenOptions::new().read(true).append(true).create(true).truncate(false).open(path)?;
        f.set_len(0)?;
        Ok(Arc::new(f))
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    fn snapshot_handle(&self, path: &Path) -> io::Result<std::fs::File> {
        // An open descriptor keeps its inode: a later rename over the name replaces the
        // name, not what this handle reads.
        std::fs::File::open(path)
    }

    fn scratch_file(&self, dir: &Path, name: &str) -> io::Result<std::fs::File> {
        let path = dir.join(name);
        let f = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
        std::fs::remove_file(&path)?;
        Ok(f)
    }
}

/// Reads a file from its start, in order.
pub struct FileReader {
    file: FileRef,
    pos: u64,
    len: u64,
}

impl FileReader {
    pub fn new(file: FileRef) -> io::Result<Self> {
        let len = file.size()?;
        Ok(Self { file, pos: 0, len })
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        if n == 0 {
            return Ok(0);
        }
        self.file.read_exact_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Dirty bytes a snapshot write may leave for the kernel before syncing them.
pub const SYNC_EVERY_BYTES: u64 = 8 << 20;

/// Appends to a file, syncing every [`SYNC_EVERY_BYTES`]. Writing a large snapshot in
/// one go left a gigabyte of dirty pages, and the Raft log's `fdatasync` on the same disk
/// then waited behind it for seconds (long enough for a leader to lose contact with its
/// quorum); paced syncs keep each log sync short. Durability still needs a final
/// [`FsFile::sync`] by the owner.
pub struct PacedWriter {
    file: FileRef,
    unsynced: u64,
}

impl PacedWriter {
    pub fn new(file: FileRef) -> Self {
        Self { file, unsynced: 0 }
    }
}

impl Write for PacedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.append(buf)?;
        self.unsynced += buf.len() as u64;
        if self.unsynced >= SYNC_EVERY_BYTES {
            self.file.sync()?;
            self.unsynced = 0;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes `bytes` to `path` so that, after any crash, `path` holds either its old
/// content or all of `bytes`: a synced temporary file renamed over it, then the
/// directory synced.
pub fn replace_file(fs: &dyn Fs, dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let f = fs.create(&tmp)?;
    f.append(bytes)?;
    f.sync()?;
    fs.rename(&tmp, &dir.join(name))?;
    fs.sync_dir(dir)
}

#[cfg(test)]
pub mod sim;
