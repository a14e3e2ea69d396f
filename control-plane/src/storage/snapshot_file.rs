//! The snapshot file format: every (key, value) of the state machine tree, streamed in key
//! order. `DRVSNAP1`, then frames `u32 key_len | key | u32 value_len | value` (big-endian),
//! then a `u32::MAX` end marker, so a truncated file is detected rather than half-installed.

use std::io::{self, BufReader, BufWriter, Read, Write};

const MAGIC: &[u8; 8] = b"DRVSNAP1";
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

/// Reads a snapshot, calling `f` for each entry in order.
pub fn read_entries(r: impl Read, mut f: impl FnMut(Vec<u8>, Vec<u8>)) -> io::Result<u64> {
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
        f(k, v);
        n += 1;
    }
}
