//! The Raft log's entries on disk: append-only segment files, outside sled.
//!
//! Why not sled: sled 0.34 stores any page larger than a quarter of its segment size
//! (128 KiB by default) as a separate blob, and accounts for it in its cache by the size
//! of the *pointer*, so such pages are never evicted. A Raft entry carrying a batch of
//! queued tasks is up to 16 MiB, so every entry between two snapshots stayed resident
//! (measured: 300 entries of 1 MiB added ~300 MiB to a node). Here an entry costs memory
//! only as one index slot (offset and length, 12 bytes) while it is in the log.
//!
//! Layout: `<dir>/<first index, 20 digits>.seg`, each a sequence of records
//! `[len: u32 BE][crc32 of index and body: u32 BE][index: u64 BE][body: len bytes]`.
//! A segment is closed (synced) and a new one started once it passes
//! [`SEGMENT_TARGET_BYTES`]. Indexes are contiguous within a segment; a segment may
//! start past the end of the previous one (entries appended after a snapshot install).
//!
//! Invariants:
//! * the in-memory index describes exactly the records on disk, in order, with no gaps;
//! * a record is visible to readers only after it is completely written;
//! * at open, a torn or corrupt record at the end of the *last* segment (a crash during
//!   a write that was never acknowledged) is cut off; anywhere else it is an error.
//!
//! Durability is the caller's: [`Segments::append`] writes, [`Segments::sync_handle`] gives
//! the file to sync before acknowledging (the adapter groups those syncs). Everything
//! else syncs before it returns: a segment is synced before the next one is started, a
//! new segment's name and a truncation's removals are made durable by syncing the
//! directory, a cut record by syncing its file. Purge's removals are not synced: a
//! removed segment that comes back after a power loss is at or below the purge point and
//! is removed again at open. All file access goes through [`Fs`], so the power-loss tests
//! in [`super::power_loss`] exercise exactly these syncs.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::fs::{FileRef, Fs};

/// A segment is closed once it is larger than this.
pub const SEGMENT_TARGET_BYTES: u64 = 64 << 20;
const HEADER: usize = 16;
/// A record body larger than this is treated as corruption when reading (entries are
/// bounded far below by the API's message limits).
pub const MAX_RECORD: u32 = 256 << 20;

struct Segment {
    file: FileRef,
    /// Index of the first record in this segment (also its file name).
    first: u64,
    /// Offset and body length of each record; record `i` has index `first + i`.
    slots: Vec<(u64, u32)>,
}

impl Segment {
    fn next_index(&self) -> u64 {
        self.first + self.slots.len() as u64
    }

    /// Bytes of complete records: where the next one goes.
    fn end(&self) -> u64 {
        self.slots.last().map_or(0, |(off, len)| off + u64::from(*len))
    }
}

pub struct Segments {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    /// Close a segment once it is larger than this ([`SEGMENT_TARGET_BYTES`] outside tests).
    target: u64,
    /// By first index.
    segs: BTreeMap<u64, Segment>,
    /// Test-only switch: appends are acknowledged without syncing their segment, to show
    /// that the power-loss tests catch a missing sync.
    #[cfg(test)]
    pub(crate) skip_append_sync_for_test: bool,
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn crc(index: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_be_bytes());
    h.update(body);
    h.finalize()
}

fn seg_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

/// What reading one segment file found.
struct Scan {
    slots: Vec<(u64, u32)>,
    /// Length of the prefix of complete, valid records.
    valid: u64,
    /// A bad or partial record ended the scan before the end of the file.
    torn: bool,
}

/// Reads the records of one segment file (a transient copy of at most one segment).
fn scan(file: &dyn super::fs::FsFile, first: u64) -> io::Result<Scan> {
    let len = usize::try_from(file.size()?).map_err(io::Error::other)?;
    let mut data = vec![0; len];
    file.read_exact_at(&mut data, 0)?;
    let mut slots = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let Some(h) = data.get(at..at + HEADER) else { return Ok(Scan { slots, valid: at as u64, torn: true }) };
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let sum = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let index = u64::from_be_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
        let want = first + slots.len() as u64;
        let body = data.get(at + HEADER..at + HEADER + len as usize);
        match body {
            Some(body) if len <= MAX_RECORD && index == want && crc(index, body) == sum => {
                slots.push(((at + HEADER) as u64, len));
                at += HEADER + len as usize;
            }
            _ => return Ok(Scan { slots, valid: at as u64, torn: true }),
        }
    }
    Ok(Scan { slots, valid: at as u64, torn: false })
}

impl Segments {
    /// Opens (creating) the directory and indexes every record, dropping whole segments
    /// that hold only entries at or below `purged`.
    pub fn open(fs: Arc<dyn Fs>, dir: &Path, purged: Option<u64>) -> io::Result<Self> {
        Self::open_with_target(fs, dir, purged, SEGMENT_TARGET_BYTES)
    }

    pub fn open_with_target(fs: Arc<dyn Fs>, dir: &Path, purged: Option<u64>, target: u64) -> io::Result<Self> {
        fs.create_dir_all(dir)?;
        let mut firsts = Vec::new();
        for name in fs.list(dir)? {
            if let Some(stem) = name.strip_suffix(".seg") {
                let first = stem.parse::<u64>().map_err(|_| corrupt(format!("unexpected file {name} in the log")))?;
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut segs = BTreeMap::new();
        let mut expect: Option<u64> = None;
        for (i, &first) in firsts.iter().enumerate() {
            let path = seg_path(dir, first);
            let last_segment = i + 1 == firsts.len();
            let file = fs.open(&path)?;
            let Scan { slots, valid, torn } = scan(&*file, first)?;
            if torn {
                if !last_segment {
                    return Err(corrupt(format!("corrupt record in {} at byte {valid}", path.display())));
                }
                // The tail of an append that never completed: no one was told it was stored.
                tracing::warn!(path = %path.display(), at = valid, "cutting a torn record off the Raft log");
                file.set_len(valid)?;
                file.sync()?;
            }
            // A later segment may start past the end of the one before (see `append`),
            // never inside it.
            if let Some(want) = expect
                && first < want
            {
                return Err(corrupt(format!(
                    "log segment {} starts at {first}, inside the one before",
                    path.display()
                )));
            }
            let seg = Segment { file, first, slots };
            expect = Some(seg.next_index());
            if purged.is_some_and(|p| seg.next_index() <= p + 1) && !last_segment {
                fs.remove_file(&path)?;
                continue;
            }
            segs.insert(first, seg);
        }
        Ok(Self {
            fs,
            dir: dir.to_path_buf(),
            target,
            segs,
            #[cfg(test)]
            skip_append_sync_for_test: false,
        })
    }

    /// Index the next appended record must have, if any record exists.
    pub fn next_index(&self) -> Option<u64> {
        self.segs.values().next_back().map(Segment::next_index)
    }

    /// First and last index held (including purged ones still in a partly purged segment).
    pub fn bounds(&self) -> Option<(u64, u64)> {
        let first = self.segs.values().find(|s| !s.slots.is_empty())?.first;
        let last = self.next_index()?.checked_sub(1)?;
        (last >= first).then_some((first, last))
    }

    /// Appends records with consecutive indexes. Rolls to a new segment (syncing the old
    /// one first) when the current one is full or when `records` does not continue it.
    pub fn append(&mut self, records: &[(u64, Vec<u8>)]) -> io::Result<()> {
        let Some((first_index, _)) = records.first() else { return Ok(()) };
        let next = self.next_index();
        if let Some(next) = next
            && *first_index < next
        {
            return Err(corrupt(format!("append at index {first_index} overlaps the log, which continues at {next}")));
        }
        // Appending past the end happens after a snapshot is installed over a shorter log
        // (everything before it is purged): the new entries start a segment of their own.
        let roll = match self.segs.values().next_back() {
            None => true,
            Some(s) => s.end() >= self.target || next != Some(*first_index),
        };
        if roll {
            if let Some(s) = self.segs.values().next_back() {
                s.file.sync()?;
            }
            self.start_segment(*first_index)?;
        }
        let Some(seg) = self.segs.values_mut().next_back() else {
            return Err(io::Error::other("no log segment to append to"));
        };
        let mut buf = Vec::with_capacity(records.iter().map(|(_, b)| b.len() + HEADER).sum());
        let mut slots = Vec::with_capacity(records.len());
        let mut at = seg.end();
        for (i, (index, body)) in records.iter().enumerate() {
            if *index != first_index + i as u64 {
                return Err(corrupt(format!("append of non-consecutive index {index}")));
            }
            let len = u32::try_from(body.len())
                .ok()
                .filter(|l| *l <= MAX_RECORD)
                .ok_or_else(|| io::Error::other(format!("log entry of {} bytes is too large", body.len())))?;
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(&crc(*index, body).to_be_bytes());
            buf.extend_from_slice(&index.to_be_bytes());
            buf.extend_from_slice(body);
            slots.push((at + HEADER as u64, len));
            at += (HEADER + body.len()) as u64;
        }
        seg.file.append(&buf)?;
        seg.slots.extend(slots);
        Ok(())
    }

    fn start_segment(&mut self, first: u64) -> io::Result<()> {
        let path = seg_path(&self.dir, first);
        // A leftover file of that name can only hold records that were cut off.
        let file = self.fs.create(&path)?;
        self.fs.sync_dir(&self.dir)?;
        self.segs.insert(first, Segment { file, first, slots: Vec::new() });
        Ok(())
    }

    /// The file to `sync_data` for everything appended so far (older segments were
    /// synced when they were closed).
    pub fn sync_handle(&self) -> Option<FileRef> {
        #[cfg(test)]
        if self.skip_append_sync_for_test {
            return None;
        }
        self.segs.values().next_back().map(|s| s.file.clone())
    }

    /// Where record `index` is: its file, offset and length.
    pub fn locate(&self, index: u64) -> Option<(FileRef, u64, u32)> {
        let (_, seg) = self.segs.range(..=index).next_back()?;
        let (off, len) = *seg.slots.get(usize::try_from(index - seg.first).ok()?)?;
        Some((seg.file.clone(), off, len))
    }

    /// Deletes every record from `index` on, and syncs.
    pub fn truncate(&mut self, index: u64) -> io::Result<()> {
        // The segment holding `index`, if it starts before it, is cut; later ones go.
        self.remove_segments(self.segs.range(index..).map(|(k, _)| *k).collect())?;
        if let Some((_, seg)) = self.segs.range_mut(..index).next_back()
            && let Ok(keep) = usize::try_from(index - seg.first)
            && keep < seg.slots.len()
        {
            let cut = seg.slots[keep].0 - HEADER as u64;
            seg.slots.truncate(keep);
            seg.file.set_len(cut)?;
            seg.file.sync()?;
        }
        self.fs.sync_dir(&self.dir)
    }

    /// Deletes whole segments whose records are all at or below `index` (the caller has
    /// recorded the purge point durably first). The newest segment is kept even when
    /// fully purged, so the log still knows where it continues.
    pub fn purge(&mut self, index: u64) -> io::Result<()> {
        let newest = self.segs.keys().next_back().copied();
        let gone: Vec<u64> = self
            .segs
            .values()
            .filter(|s| Some(s.first) != newest && s.next_index() <= index + 1)
            .map(|s| s.first)
            .collect();
        self.remove_segments(gone)
    }

    fn remove_segments(&mut self, firsts: Vec<u64>) -> io::Result<()> {
        for first in firsts {
            if self.segs.remove(&first).is_some() {
                self.fs.remove_file(&seg_path(&self.dir, first))?;
            }
        }
        Ok(())
    }

    #[cfg(test)]
    fn segment_count(&self) -> usize {
        self.segs.len()
    }
}

/// Reads one record body.
pub fn read_at(file: &dyn super::fs::FsFile, offset: u64, len: u32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::os::unix::fs::FileExt;

    use super::super::fs::RealFs;
    use super::*;

    fn rec(i: u64, n: usize) -> (u64, Vec<u8>) {
        (i, vec![i as u8; n])
    }

    fn read(s: &Segments, i: u64) -> Vec<u8> {
        let (f, off, len) = s.locate(i).expect("present");
        read_at(&*f, off, len).expect("read")
    }

    #[test]
    fn append_read_reopen_truncate_purge() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Segments::open(Arc::new(RealFs), dir.path(), None).expect("open");
        assert_eq!(s.next_index(), None);
        s.append(&[rec(1, 10), rec(2, 0), rec(3, 300)]).expect("append");
        assert!(s.append(&[rec(3, 1)]).is_err(), "an overlap is refused");
        assert_eq!(read(&s, 3), vec![3; 300]);
        assert_eq!(read(&s, 2), Vec::<u8>::new());
        drop(s);
        let mut s = Segments::open(Arc::new(RealFs), dir.path(), None).expect("reopen");
        assert_eq!((s.bounds(), s.next_index()), (Some((1, 3)), Some(4)));
        s.truncate(2).expect("truncate");
        assert_eq!((s.bounds(), s.locate(2).is_none()), (Some((1, 1)), true));
        s.append(&[rec(2, 7)]).expect("append after truncate");
        assert_eq!(read(&s, 2), vec![2; 7]);
        drop(s);
        let mut s = Segments::open(Arc::new(RealFs), dir.path(), None).expect("reopen");
        assert_eq!((s.bounds(), read(&s, 1)), (Some((1, 2)), vec![1; 10]));
        // After a snapshot install the log continues past its end, in a new segment.
        s.append(&[rec(10, 3), rec(11, 4)]).expect("append past the end");
        assert_eq!((s.segment_count(), s.locate(5).is_none(), read(&s, 11)), (2, true, vec![11; 4]));
        drop(s);
        let s = Segments::open(Arc::new(RealFs), dir.path(), Some(9)).expect("reopen");
        assert_eq!((s.bounds(), s.segment_count(), read(&s, 10)), (Some((10, 11)), 1, vec![10; 3]));
    }

    #[test]
    fn segments_roll_and_purge_deletes_whole_old_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Segments::open_with_target(Arc::new(RealFs), dir.path(), None, 1000).expect("open");
        let big = 500;
        for i in 1..=5 {
            s.append(&[rec(i, big)]).expect("append");
        }
        // Two records fill a segment past the target; the third starts a new one.
        assert_eq!(s.segment_count(), 3);
        s.purge(3).expect("purge");
        assert_eq!(s.segment_count(), 2, "the segment of 1 and 2 is gone, 3 and 4 share one");
        assert!(s.locate(1).is_none());
        assert_eq!(read(&s, 5).len(), big);
        drop(s);
        let s = Segments::open_with_target(Arc::new(RealFs), dir.path(), Some(3), 1000).expect("reopen");
        assert_eq!(s.bounds(), Some((3, 5)));
        // Truncating into an earlier segment removes the later ones.
        let mut s = s;
        s.truncate(4).expect("truncate");
        assert_eq!((s.bounds(), s.segment_count()), (Some((3, 3)), 1));
    }

    #[test]
    fn a_torn_tail_is_cut_and_corruption_elsewhere_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Segments::open(Arc::new(RealFs), dir.path(), None).expect("open");
        s.append(&[rec(1, 100), rec(2, 100)]).expect("append");
        drop(s);
        let path = seg_path(dir.path(), 1);
        let len = std::fs::metadata(&path).expect("meta").len();
        // A crash in the middle of writing record 2.
        OpenOptions::new().write(true).open(&path).expect("open").set_len(len - 30).expect("cut");
        let mut s = Segments::open(Arc::new(RealFs), dir.path(), None).expect("reopen cuts the tail");
        assert_eq!(s.bounds(), Some((1, 1)));
        s.append(&[rec(2, 5)]).expect("append continues");
        assert_eq!(read(&s, 2), vec![2; 5]);
        drop(s);
        // A flipped byte in the body of record 1 of a segment that is not the last.
        let mut s = Segments::open_with_target(Arc::new(RealFs), dir.path(), None, 100).expect("reopen");
        s.append(&[rec(3, 1)]).expect("append");
        s.append(&[rec(4, 1)]).expect("append");
        assert_eq!(s.segment_count(), 2);
        drop(s);
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.write_all_at(&[0xff], HEADER as u64 + 3).expect("flip");
        let e = Segments::open(Arc::new(RealFs), dir.path(), None).err().expect("corruption is refused");
        assert!(e.to_string().contains("corrupt record"), "{e}");
    }
}
