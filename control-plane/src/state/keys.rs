//! Key layout of the state machine tables (one ordered key space, one prefix per table)
//! and the versioned value encoding.
//!
//! | prefix | key                      | value            |
//! |--------|--------------------------|------------------|
//! | `t/`   | tenant                   | [`Tenant`]       |
//! | `c/`   | tenant `\0` code name    | [`Code`]         |
//! | `k/`   | task id (u64 big-endian) | [`Task`]         |
//! | `p/`   | task id                  | payload bytes    |
//! | `x/`   | tenant `\0` task id      | empty (listing)  |
//! | `i/`   | tenant `\0` idem. key    | [`IdemRecord`]   |
//! | `a/`   | agent id                 | [`AgentRecord`]  |
//! | `g/`   | task id                  | log metadata (see [`super::logs`]) |
//! | `l/`   | task id, chunk index (u32) | log chunk      |
//! | `m/`   | name                     | state metadata   |
//! | `r/`   | name                     | owned by the Raft storage adapter (applied index, membership) |
//!
//! Integers in keys are big-endian so ranges iterate in order. Values are one version
//! byte followed by the postcard encoding of the type.
//!
//! [`Tenant`]: super::model::Tenant
//! [`Code`]: super::model::Code
//! [`Task`]: super::model::Task
//! [`IdemRecord`]: super::model::IdemRecord
//! [`AgentRecord`]: super::model::AgentRecord

use serde::{Serialize, de::DeserializeOwned};

use super::kv::KvError;

pub const TENANT: &[u8] = b"t/";
pub const CODE: &[u8] = b"c/";
pub const TASK: &[u8] = b"k/";
pub const PAYLOAD: &[u8] = b"p/";
pub const TENANT_TASK: &[u8] = b"x/";
pub const IDEM: &[u8] = b"i/";
pub const AGENT: &[u8] = b"a/";
pub const META_RR_CURSOR: &[u8] = b"m/rr_cursor";
/// Keys under this prefix belong to the Raft adapter and are not part of the state digest.
pub const RAFT_OWNED: &[u8] = b"r/";

const VALUE_VERSION: u8 = 1;

fn join(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

pub fn tenant(id: &str) -> Vec<u8> {
    join(TENANT, &[id.as_bytes()])
}
pub fn code(tenant: &str, name: &str) -> Vec<u8> {
    join(CODE, &[tenant.as_bytes(), name.as_bytes()])
}
pub fn task(id: u64) -> Vec<u8> {
    join(TASK, &[&id.to_be_bytes()])
}
pub fn payload(id: u64) -> Vec<u8> {
    join(PAYLOAD, &[&id.to_be_bytes()])
}
pub fn tenant_tasks_prefix(tenant: &str) -> Vec<u8> {
    let mut k = join(TENANT_TASK, &[tenant.as_bytes()]);
    k.push(0);
    k
}
pub fn tenant_task(tenant: &str, id: u64) -> Vec<u8> {
    join(TENANT_TASK, &[tenant.as_bytes(), &id.to_be_bytes()])
}
pub fn idem(tenant: &str, key: &str) -> Vec<u8> {
    join(IDEM, &[tenant.as_bytes(), key.as_bytes()])
}
pub fn agent(id: &str) -> Vec<u8> {
    join(AGENT, &[id.as_bytes()])
}

/// The task id at the end of a `k/`, `p/` or `x/` key.
pub fn trailing_id(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let out = vec![VALUE_VERSION];
    // Encoding our own plain serde types into a Vec cannot fail.
    match postcard::to_extend(value, out) {
        Ok(v) => v,
        Err(e) => unreachable!("postcard encoding of a state value failed: {e}"),
    }
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, KvError> {
    match bytes.split_first() {
        Some((&VALUE_VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| KvError(format!("corrupt value: {e}"))),
        Some((v, _)) => Err(KvError(format!("unknown value version {v}"))),
        None => Err(KvError("empty value".into())),
    }
}
