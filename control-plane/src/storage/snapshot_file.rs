//! The snapshot file format: every (key, value) of the state machine tree, streamed in key
//! order. `DRVSNAP1`, then frames `u32 key_len | key | u32 value_len | value` (big-endian),
//! then a `u32::MAX` end marker, so a truncated file is detected rather than half-installed.

use std::io::{self, BufReader, BufWriter, Read, Write};

const MAGIC: &[u8; 8] = b"DRVSNAP1";
/// Dirty bytes a snapshot write may leave for the kernel before syncing them.
pub const SYNC_EVERY_BYTES: u64 = 8 << 20;

/// A file writer that syncs every [`SYNC_EVERY_BYTES`]. Writing a large snapshot in one go
/// left a gigabyte of dirty pages, and the Raft log's `fdatasync` on the same disk then
/// waited behind it for seconds (long enough for a leader to lose contact with its
/// quorum); paced syncs keep each log sync short.
pub struct PacedFile<'a> {
    file: &'a std::fs::File,
    unsynced: u64,
}

impl<'a> PacedFile<'a> {
    pub fn new(file: &'a std::fs::File) -> Self {
        Self { file, unsynced: 0 }
    }
}

impl Write for PacedFile<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (&*self.file).write(buf)?;
        self.unsynced += n as u64;
        if self.unsynced >= SYNC_EVERY_BYTES {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
const END: u32 = u32::MAX;

/// Writes every entry of `tree` to `w`.
pub fn write_tree(tree: &sled::Tree, w: impl Write) -> io::Result<u64> {
    let mut w = BufWriter::new(w);
    w.write_all(MAGIC)?;
    let mut n = 0u64;
    for item in tree.iter() {
        let (k, v) = item.map_err(io::Error::other)?;
        w.write_all(&(k.len() as u32).to_be_bytes())?;
        w.write_all(&k)?;
        w.write_all(&(v.len() as u32).to_be_bytes())?;
        w.write_all(&v)?;
        n += 1;
    }
    w.write_all(&END.to_be_bytes())?;
    w.flush()?;
    Ok(n)
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// Reads a snapshot, calling `f` for each entry in order (stopping at its first error).
pub fn read_entries(r: impl Read, mut f: impl FnMut(Vec<u8>, Vec<u8>) -> io::Result<()>) -> io::Result<u64> {
    let mut r = BufReader::new(r);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a drover snapshot"));
    }
    let mut n = 0;
    loop {
        let klen = read_u32(&mut r)?;
        if klen == END {
            return Ok(n);
        }
        let mut k = vec![0; klen as usize];
        r.read_exact(&mut k)?;
        let vlen = read_u32(&mut r)?;
        let mut v = vec![0; vlen as usize];
        r.read_exact(&mut v)?;
        f(k, v)?;
        n += 1;
    }
}
