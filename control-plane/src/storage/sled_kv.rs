//! [`KvRead`] over a sled tree: how the state machine reads its committed tables.

use crate::state::{KvError, KvRead};

pub struct SledKv<'a>(pub &'a sled::Tree);

impl KvRead for SledKv<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.0.get(key).map(|v| v.map(|v| v.to_vec())).map_err(|e| KvError(e.to_string()))
    }

    fn read_with(&self, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool, KvError> {
        Ok(self.0.get(key).map_err(|e| KvError(e.to_string()))?.map(|v| f(&v)).is_some())
    }

    fn last_at_or_before(&self, prefix: &[u8], key: &[u8], f: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), KvError> {
        if let Some(item) = self.0.range(prefix..=key).next_back() {
            let (k, v) = item.map_err(|e| KvError(e.to_string()))?;
            f(&k, &v);
        }
        Ok(())
    }

    fn scan(&self, prefix: &[u8], start: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), KvError> {
        for item in self.0.range(start..) {
            let (k, v) = item.map_err(|e| KvError(e.to_string()))?;
            if !k.starts_with(prefix) || !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }
}
