//! Key layout of the state machine tables (one ordered key space, one prefix per table)
//! and the versioned value encoding.
//!
//! | prefix | key                      | value            |
//! |--------|--------------------------|------------------|
//! | `t/`   | tenant                   | [`Tenant`]       |
//! | `c/`   | tenant `\0` code name    | [`Code`]         |
//! | `k/`   | task id (u64 big-endian) | [`Task`] and its payload (see [`encode_task`]) |
//! | `i/`   | tenant `\0` idem. key    | [`IdemRecord`]   |
//! | `w/`   | tenant `\0` code name    | [`Webhook`] (the code's webhook, if enabled) |
//! | `a/`   | agent id                 | [`AgentRecord`]  |
//! | `d/`   | agent id                 | [`AgentGone`] (the agent is not connected; see [`super::presence`]) |
//! | `e/`   | agent id                 | [`AgentRegistration`] (what it may serve; see [`super::fleet`]) |
//! | `n/`   | cluster name             | [`Cluster`]      |
//! | `o/`   | IP pool name             | [`IpPool`] (see [`super::modes`]) |
//! | `q/`   | tenant                   | [`TenantMode`] (absent: shared) |
//! | `y/`   | tenant `\0` registry     | [`RegistryLogin`] (password sealed; see [`super::registries`]) |
//! | `s/`   | schedule id (u64 big-endian) | [`Schedule`](super::schedules::Schedule) |
//! | `g/`   | task id                  | log metadata (see [`super::logs`]) |
//! | `l/`   | task id, chunk index (u32) | log chunk      |
//! | `m/`   | name                     | state metadata   |
//! | `r/`   | name                     | owned by the Raft storage adapter (applied index, membership) |
//!
//! Integers in keys are big-endian so ranges iterate in order. Values are one version
//! byte followed by the postcard encoding of the type. Task and code rows are version 2
//! since retry policies; version 1 rows are still read (see [`super::legacy`]).
//!
//! One key per task, payload inline: sled 0.34 spends memory per *key* written (page
//! splits and copy-on-write node garbage that its cache limit does not bound), so a
//! separate payload row and a per-tenant listing row tripled a node's resident memory
//! under a large backlog (measured: 1M tasks with three keys each, 64 B payloads, 3.6 GiB
//! peak; one key each, 0.2 GiB). The tenant listing is an in-memory index of task ids
//! instead ([`super::indexes::Indexes::by_tenant`]).
//!
//! [`Tenant`]: super::model::Tenant
//! [`Code`]: super::model::Code
//! [`IdemRecord`]: super::model::IdemRecord
//! [`Webhook`]: super::model::Webhook
//! [`AgentRecord`]: super::model::AgentRecord
//! [`AgentGone`]: super::presence::AgentGone
//! [`AgentRegistration`]: super::fleet::AgentRegistration
//! [`Cluster`]: super::fleet::Cluster
//! [`IpPool`]: super::modes::IpPool
//! [`TenantMode`]: super::modes::TenantMode
//! [`RegistryLogin`]: super::registries::RegistryLogin

use serde::{Serialize, de::DeserializeOwned};

use super::kv::KvError;
use super::legacy::{CodeV1, TaskV1};
use super::model::{Code, Task};

pub const TENANT: &[u8] = b"t/";
pub const CODE: &[u8] = b"c/";
pub const TASK: &[u8] = b"k/";
pub const IDEM: &[u8] = b"i/";
pub const AGENT: &[u8] = b"a/";
pub const AGENT_GONE: &[u8] = b"d/";
pub const REGISTRATION: &[u8] = b"e/";
pub const CLUSTER: &[u8] = b"n/";
pub const POOL: &[u8] = b"o/";
pub const TENANT_MODE: &[u8] = b"q/";
pub const REGISTRY_LOGIN: &[u8] = b"y/";
pub const SCHEDULE: &[u8] = b"s/";
pub const WEBHOOK: &[u8] = b"w/";
pub const META_RR_CURSOR: &[u8] = b"m/rr_cursor";
/// Keys under this prefix belong to the Raft adapter and are not part of the state digest.
pub const RAFT_OWNED: &[u8] = b"r/";

const VALUE_VERSION: u8 = 1;
/// Task and code rows with retry policies and attempt logs.
const RETRY_ROW_VERSION: u8 = 2;

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

pub fn schedule(id: u64) -> Vec<u8> {
    join(SCHEDULE, &[&id.to_be_bytes()])
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
pub fn idem(tenant: &str, key: &str) -> Vec<u8> {
    join(IDEM, &[tenant.as_bytes(), key.as_bytes()])
}
pub fn webhook(tenant: &str, code: &str) -> Vec<u8> {
    join(WEBHOOK, &[tenant.as_bytes(), code.as_bytes()])
}
pub fn agent(id: &str) -> Vec<u8> {
    join(AGENT, &[id.as_bytes()])
}
pub fn agent_gone(id: &str) -> Vec<u8> {
    join(AGENT_GONE, &[id.as_bytes()])
}
pub fn registration(id: &str) -> Vec<u8> {
    join(REGISTRATION, &[id.as_bytes()])
}
pub fn cluster(name: &str) -> Vec<u8> {
    join(CLUSTER, &[name.as_bytes()])
}
pub fn pool(name: &str) -> Vec<u8> {
    join(POOL, &[name.as_bytes()])
}
pub fn tenant_mode(tenant: &str) -> Vec<u8> {
    join(TENANT_MODE, &[tenant.as_bytes()])
}
pub fn registry_login(tenant: &str, registry: &str) -> Vec<u8> {
    join(REGISTRY_LOGIN, &[tenant.as_bytes(), registry.as_bytes()])
}

/// The task id at the end of a `k/` or `g/` key.
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

/// A task row: the version byte, the record's encoded length (u32 big-endian), the
/// postcard record, then the payload bytes as they came. Reading the record never copies
/// the payload; state changes rewrite the row with the payload carried over.
pub fn encode_task(task: &Task, payload: &[u8]) -> Vec<u8> {
    let record = match postcard::to_stdvec(task) {
        Ok(v) => v,
        Err(e) => unreachable!("postcard encoding of a task failed: {e}"),
    };
    let mut out = Vec::with_capacity(5 + record.len() + payload.len());
    out.push(RETRY_ROW_VERSION);
    // A record is a few hundred bytes (strings are length-limited by validation).
    out.extend_from_slice(&(record.len() as u32).to_be_bytes());
    out.extend_from_slice(&record);
    out.extend_from_slice(payload);
    out
}

/// Decodes a task row's record; returns it and the offset where the payload starts.
fn split_task(bytes: &[u8]) -> Result<(Task, usize), KvError> {
    const HEAD: usize = 5;
    match bytes.split_first() {
        Some((&v @ (VALUE_VERSION | RETRY_ROW_VERSION), rest)) => {
            let len = rest
                .get(..4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(|b| u32::from_be_bytes(b) as usize)
                .ok_or_else(|| KvError("corrupt task row: short header".into()))?;
            let record = bytes
                .get(HEAD..HEAD + len)
                .ok_or_else(|| KvError(format!("corrupt task row: record of {len} bytes in {}", bytes.len())))?;
            let corrupt = |e: postcard::Error| KvError(format!("corrupt task record: {e}"));
            let task = if v == VALUE_VERSION {
                postcard::from_bytes::<TaskV1>(record).map_err(corrupt)?.into()
            } else {
                postcard::from_bytes(record).map_err(corrupt)?
            };
            Ok((task, HEAD + len))
        }
        Some((v, _)) => Err(KvError(format!("unknown value version {v}"))),
        None => Err(KvError("empty value".into())),
    }
}

/// A task row's record, leaving the payload alone.
pub fn decode_task(bytes: &[u8]) -> Result<Task, KvError> {
    split_task(bytes).map(|(task, _)| task)
}

/// A task row as read: the record decoded, the payload still in the row's bytes, so a
/// state change can write it back without copying it out first.
#[derive(Debug)]
pub struct TaskRow {
    pub task: Task,
    row: Vec<u8>,
    payload_at: usize,
}

impl TaskRow {
    pub fn decode(row: Vec<u8>) -> Result<Self, KvError> {
        let (task, payload_at) = split_task(&row)?;
        Ok(Self { task, row, payload_at })
    }

    pub fn payload(&self) -> &[u8] {
        &self.row[self.payload_at..]
    }

    /// The record and the payload, reusing the row's allocation for the payload.
    pub fn into_parts(mut self) -> (Task, Vec<u8>) {
        self.row.drain(..self.payload_at);
        (self.task, self.row)
    }
}

/// A code row (version 2; version 1 read as [`CodeV1`]).
pub fn encode_code(code: &Code) -> Vec<u8> {
    let mut out = encode(code);
    out[0] = RETRY_ROW_VERSION;
    out
}

pub fn decode_code(bytes: &[u8]) -> Result<Code, KvError> {
    match bytes.split_first() {
        Some((&VALUE_VERSION, _)) => decode::<CodeV1>(bytes).map(Code::from),
        Some((&RETRY_ROW_VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|e| KvError(format!("corrupt code: {e}")))
        }
        Some((v, _)) => Err(KvError(format!("unknown value version {v}"))),
        None => Err(KvError("empty value".into())),
    }
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, KvError> {
    match bytes.split_first() {
        Some((&VALUE_VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| KvError(format!("corrupt value: {e}"))),
        Some((v, _)) => Err(KvError(format!("unknown value version {v}"))),
        None => Err(KvError("empty value".into())),
    }
}
