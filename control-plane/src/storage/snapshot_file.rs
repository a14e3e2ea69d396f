//! The snapshot file format: every (key, value) of the state machine tree, streamed in key
//! order. `DRVSNAP1`, then frames `u32 key_len | key | u32 value_len | value` (big-endian),
//! then a `u32::MAX` end marker, so a truncated file is detected rather than half-installed.

use std::collections::BTreeMap;
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

fn write_frame(w: &mut impl Write, k: &[u8], v: &[u8]) -> io::Result<()> {
    w.write_all(&(k.len() as u32).to_be_bytes())?;
    w.write_all(k)?;
    w.write_all(&(v.len() as u32).to_be_bytes())?;
    w.write_all(v)
}

/// Writes every entry of `tree` to `w`.
pub fn write_tree(tree: &sled::Tree, w: impl Write) -> io::Result<u64> {
    let mut w = BufWriter::new(w);
    w.write_all(MAGIC)?;
    let mut n = 0u64;
    for item in tree.iter() {
        let (k, v) = item.map_err(io::Error::other)?;
        write_frame(&mut w, &k, &v)?;
        n += 1;
    }
    w.write_all(&END.to_be_bytes())?;
    w.flush()?;
    Ok(n)
}

/// Writes to `w` the snapshot `scan` with `overlay` laid over it: a key in the overlay
/// takes the overlay's value, or is left out when that is `None` (deleted). Both are in
/// key order, so this is one streaming merge.
pub fn merge(scan: impl Read, overlay: &BTreeMap<Vec<u8>, Option<Vec<u8>>>, w: impl Write) -> io::Result<u64> {
    let mut w = BufWriter::new(w);
    w.write_all(MAGIC)?;
    let mut n = 0u64;
    let mut over = overlay.iter().peekable();
    read_entries(scan, |k, v| {
        while let Some((ok, ov)) = over.next_if(|(ok, _)| ok.as_slice() < k.as_slice()) {
            if let Some(ov) = ov {
                write_frame(&mut w, ok, ov)?;
                n += 1;
            }
        }
        match over.next_if(|(ok, _)| ok.as_slice() == k.as_slice()) {
            Some((_, Some(ov))) => write_frame(&mut w, &k, ov)?,
            Some((_, None)) => return Ok(()),
            None => write_frame(&mut w, &k, &v)?,
        }
        n += 1;
        Ok(())
    })?;
    for (ok, ov) in over {
        if let Some(ov) = ov {
            write_frame(&mut w, ok, ov)?;
            n += 1;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for (k, v) in entries {
            write_frame(&mut out, k.as_bytes(), v.as_bytes()).expect("write");
        }
        out.extend_from_slice(&END.to_be_bytes());
        out
    }

    fn entries_of(bytes: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        read_entries(bytes, |k, v| {
            out.push((String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned()));
            Ok(())
        })
        .expect("read");
        out
    }

    #[test]
    fn merge_lays_the_overlay_over_the_scan_in_key_order() {
        let scan = file_of(&[("b", "1"), ("d", "2"), ("f", "3")]);
        let overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            [("a", Some("new")), ("b", None), ("c", Some("ins")), ("d", Some("upd")), ("z", Some("end")), ("y", None)]
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
                .collect();
        let mut out = Vec::new();
        let n = merge(scan.as_slice(), &overlay, &mut out).expect("merge");
        let got = entries_of(&out);
        let want: Vec<(String, String)> = [("a", "new"), ("c", "ins"), ("d", "upd"), ("f", "3"), ("z", "end")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!((got, n), (want, 5));
    }
}
