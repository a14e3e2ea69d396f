//! The narrow key-value interface the state machine reads and writes through.
//!
//! The state machine never touches sled directly: `apply` reads through [`KvRead`] and
//! writes into a [`Txn`], an ordered overlay of puts and deletes. The storage layer commits
//! a whole batch of entries' overlays atomically (one `sled::Batch`, together with the
//! last-applied index), so a crash never half-applies anything. [`MemKv`] is the same
//! interface over a `BTreeMap`, used by the state machine's own unit and property tests
//! and by the criterion benchmarks.

use std::collections::BTreeMap;

/// A storage read failed underneath the state machine. Fatal for the replica.
#[derive(Debug, Clone, thiserror::Error)]
#[error("state machine storage: {0}")]
pub struct KvError(pub String);

/// Read access to the committed state machine tables.
pub trait KvRead {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    /// Calls `f` for each key with `prefix`, in key order, starting at `start`
    /// (which must itself start with `prefix`), until `f` returns false.
    fn scan(&self, prefix: &[u8], start: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), KvError>;
    /// Calls `f` with the value of `key` where it is stored, without copying it out (task
    /// groups are up to a few MiB and a read wants one task of them); false if absent.
    fn read_with(&self, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool, KvError> {
        Ok(self.get(key)?.map(|v| f(&v)).is_some())
    }
    /// Calls `f` with the greatest key under `prefix` not above `key`, and its value, if
    /// there is one (how a task finds its group).
    fn last_at_or_before(&self, prefix: &[u8], key: &[u8], f: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), KvError>;
}

/// A [`try_scan`] callback: `Ok(true)` goes on, `Ok(false)` stops, an error stops and is
/// returned.
pub type ScanStep<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool, KvError> + 'a;

/// [`KvRead::scan`] with a callback that can fail: the first error stops the scan and is
/// returned; `Ok(false)` stops it quietly.
pub fn try_scan(kv: &dyn KvRead, prefix: &[u8], start: &[u8], f: &mut ScanStep<'_>) -> Result<(), KvError> {
    let mut err = None;
    kv.scan(prefix, start, &mut |k, v| {
        f(k, v).unwrap_or_else(|e| {
            err = Some(e);
            false
        })
    })?;
    err.map_or(Ok(()), Err)
}

/// The writes of one or more applied entries, not yet committed.
pub struct Txn<'a> {
    base: &'a dyn KvRead,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Txn<'a> {
    pub fn new(base: &'a dyn KvRead) -> Self {
        Self { base, writes: BTreeMap::new() }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    /// [`KvRead::read_with`] through the pending writes.
    pub fn read_with(&self, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool, KvError> {
        match self.writes.get(key) {
            Some(Some(v)) => {
                f(v);
                Ok(true)
            }
            Some(None) => Ok(false),
            None => self.base.read_with(key, f),
        }
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// The pending writes in key order: `None` is a delete.
    pub fn into_writes(self) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        self.writes
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// The state machine tables in memory: for tests and benchmarks of the pure core.
#[derive(Default, Clone, PartialEq, Eq, Debug)]
pub struct MemKv {
    pub map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl MemKv {
    pub fn commit(&mut self, writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>) {
        for (k, v) in writes {
            match v {
                Some(v) => {
                    self.map.insert(k, v);
                }
                None => {
                    self.map.remove(&k);
                }
            }
        }
    }
}

impl KvRead for MemKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.map.get(key).cloned())
    }

    fn read_with(&self, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool, KvError> {
        Ok(self.map.get(key).map(|v| f(v)).is_some())
    }

    fn last_at_or_before(&self, prefix: &[u8], key: &[u8], f: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), KvError> {
        if let Some((k, v)) = self.map.range(..=key.to_vec()).next_back().filter(|(k, _)| k.starts_with(prefix)) {
            f(k, v);
        }
        Ok(())
    }

    fn scan(&self, prefix: &[u8], start: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), KvError> {
        for (k, v) in self.map.range(start.to_vec()..) {
            if !k.starts_with(prefix) || !f(k, v) {
                break;
            }
        }
        Ok(())
    }
}
