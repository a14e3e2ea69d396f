//! The snapshot file format. A snapshot is one file holding its metadata and its data,
//! so the two can never be paired wrongly: whoever holds the file holds both.
//!
//! `DRVSNAP2`, `u32 meta_len`, the [`SnapshotMeta`] as JSON (`meta_len` bytes, at most
//! [`MAX_META_BYTES`]), then every (key, value) of the state machine tree in key order
//! as frames `u32 key_len | key | u32 value_len | value` (big-endian, each length at most
//! [`MAX_FRAME_BYTES`]), then a `u32::MAX` end marker, so a truncated file is detected
//! rather than half-installed. Files from peers are read with the same bounds: a length
//! is never trusted for an allocation beyond the bytes actually present.
//!
//! A scan file (the first pass of a build, see `sm_store`) is the frames and the end
//! marker without magic or metadata. `DRVSNAP1` files (data only, the metadata in a
//! separate JSON file) are read by [`read_legacy_entries`] to upgrade them.

use std::collections::BTreeMap;
use std::io::{self, BufReader, BufWriter, Read, Write};

use crate::raft::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"DRVSNAP2";
const LEGACY_MAGIC: &[u8; 8] = b"DRVSNAP1";
const END: u32 = u32::MAX;
/// Largest metadata accepted (it is a log id and a membership config).
pub const MAX_META_BYTES: u32 = 1 << 20;
/// Largest key or value accepted in a frame; the same bound as a Raft log record, which
/// any value was written by.
pub const MAX_FRAME_BYTES: u32 = 256 << 20;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn write_frame(w: &mut impl Write, k: &[u8], v: &[u8]) -> io::Result<()> {
    for part in [k, v] {
        let len = u32::try_from(part.len()).ok().filter(|l| *l <= MAX_FRAME_BYTES).ok_or_else(|| {
            invalid(format!("snapshot frame of {} bytes is over the limit of {MAX_FRAME_BYTES}", part.len()))
        })?;
        w.write_all(&len.to_be_bytes())?;
        w.write_all(part)?;
    }
    Ok(())
}

fn write_header(w: &mut impl Write, meta: &SnapshotMeta) -> io::Result<()> {
    let json = serde_json::to_vec(meta).map_err(io::Error::other)?;
    let len = u32::try_from(json.len())
        .ok()
        .filter(|l| *l <= MAX_META_BYTES)
        .ok_or_else(|| invalid("snapshot metadata too large"))?;
    w.write_all(MAGIC)?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(&json)
}

/// Writes every entry of `tree` to `w` as a scan file (frames only).
pub fn write_tree(tree: &sled::Tree, w: impl Write) -> io::Result<u64> {
    let mut w = BufWriter::new(w);
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

/// Writes to `w` the snapshot file for `meta`: the scan file `scan` with `overlay` laid
/// over it. A key in the overlay takes the overlay's value, or is left out when that is
/// `None` (deleted). Both are in key order, so this is one streaming merge.
pub fn merge(
    scan: impl Read,
    overlay: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    meta: &SnapshotMeta,
    w: impl Write,
) -> io::Result<u64> {
    let mut w = BufWriter::new(w);
    write_header(&mut w, meta)?;
    let mut n = 0u64;
    let mut over = overlay.iter().peekable();
    read_frames(&mut BufReader::new(scan), |k, v| {
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

/// Reads exactly `len` bytes, growing the buffer only as bytes arrive (a length from a
/// damaged or hostile file must not size an allocation by itself).
fn read_len(r: &mut impl Read, len: u32, limit: u32, what: &str) -> io::Result<Vec<u8>> {
    if len > limit {
        return Err(invalid(format!("snapshot {what} of {len} bytes is over the limit of {limit}")));
    }
    let mut buf = Vec::new();
    r.take(u64::from(len)).read_to_end(&mut buf)?;
    if buf.len() != len as usize {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("snapshot {what} cut short")));
    }
    Ok(buf)
}

fn read_frames(r: &mut impl Read, mut f: impl FnMut(Vec<u8>, Vec<u8>) -> io::Result<()>) -> io::Result<u64> {
    let mut n = 0;
    loop {
        let klen = read_u32(r)?;
        if klen == END {
            return Ok(n);
        }
        let k = read_len(r, klen, MAX_FRAME_BYTES, "key")?;
        let vlen = read_u32(r)?;
        let v = read_len(r, vlen, MAX_FRAME_BYTES, "value")?;
        f(k, v)?;
        n += 1;
    }
}

/// Reads a snapshot file's metadata (its header) only.
pub fn read_meta(r: &mut impl Read) -> io::Result<SnapshotMeta> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid("not a drover snapshot (version 2)"));
    }
    let len = read_u32(r)?;
    let json = read_len(r, len, MAX_META_BYTES, "metadata")?;
    serde_json::from_slice(&json).map_err(|e| invalid(format!("snapshot metadata: {e}")))
}

/// Reads a snapshot file: returns its metadata after calling `f` for each entry in order
/// (stopping at its first error), and the number of entries.
pub fn read_entries(
    r: impl Read,
    f: impl FnMut(Vec<u8>, Vec<u8>) -> io::Result<()>,
) -> io::Result<(SnapshotMeta, u64)> {
    let mut r = BufReader::new(r);
    let meta = read_meta(&mut r)?;
    let n = read_frames(&mut r, f)?;
    Ok((meta, n))
}

/// Reads a version 1 snapshot file (data only) the same way.
pub fn read_legacy_entries(r: impl Read, f: impl FnMut(Vec<u8>, Vec<u8>) -> io::Result<()>) -> io::Result<u64> {
    let mut r = BufReader::new(r);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != LEGACY_MAGIC {
        return Err(invalid("not a drover snapshot (version 1)"));
    }
    read_frames(&mut r, f)
}

/// Writes a snapshot file for `meta` with the entries `f` yields (to `emit`).
pub fn write_with(
    meta: &SnapshotMeta,
    w: impl Write,
    f: impl FnOnce(&mut dyn FnMut(Vec<u8>, Vec<u8>) -> io::Result<()>) -> io::Result<u64>,
) -> io::Result<u64> {
    let mut w = BufWriter::new(w);
    write_header(&mut w, meta)?;
    let n = f(&mut |k, v| write_frame(&mut w, &k, &v))?;
    w.write_all(&END.to_be_bytes())?;
    w.flush()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta {
        SnapshotMeta { snapshot_id: "1-2-3".into(), ..Default::default() }
    }

    /// A scan file of `entries`.
    fn file_of(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in entries {
            write_frame(&mut out, k.as_bytes(), v.as_bytes()).expect("write");
        }
        out.extend_from_slice(&END.to_be_bytes());
        out
    }

    fn entries_of(bytes: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let (m, _) = read_entries(bytes, |k, v| {
            out.push((String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned()));
            Ok(())
        })
        .expect("read");
        assert_eq!(m, meta(), "the header carries the metadata");
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
        let n = merge(scan.as_slice(), &overlay, &meta(), &mut out).expect("merge");
        let got = entries_of(&out);
        let want: Vec<(String, String)> = [("a", "new"), ("c", "ins"), ("d", "upd"), ("f", "3"), ("z", "end")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!((got, n), (want, 5));
    }

    #[test]
    fn a_damaged_or_hostile_file_is_refused_without_allocating_its_lengths() {
        let mut good = Vec::new();
        write_with(&meta(), &mut good, |emit| {
            emit(b"k".to_vec(), b"v".to_vec())?;
            Ok(1)
        })
        .expect("write");
        assert_eq!(entries_of(&good), vec![("k".to_string(), "v".to_string())]);
        // Cut anywhere: an error, never a shorter snapshot.
        for cut in 0..good.len() {
            assert!(read_entries(&good[..cut], |_, _| Ok(())).is_err(), "cut at {cut} accepted");
        }
        // A value length of 4 GiB - 2 in a 30-byte file: refused by the bound, not allocated.
        let mut hostile = good[..good.len() - 4 - 1 - 4].to_vec();
        hostile.extend_from_slice(&(u32::MAX - 1).to_be_bytes());
        let e = read_entries(hostile.as_slice(), |_, _| Ok(())).expect_err("refused");
        assert!(e.to_string().contains("over the limit"), "{e}");
        // A length under the bound but past the end of the file: cut short.
        let mut short = good[..good.len() - 4 - 1 - 4].to_vec();
        short.extend_from_slice(&(MAX_FRAME_BYTES - 1).to_be_bytes());
        let e = read_entries(short.as_slice(), |_, _| Ok(())).expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }
}
