//! Key layout of the state machine tables (one ordered key space, one prefix per table)
//! and the versioned value encoding.
//!
//! | prefix | key                      | value            |
//! |--------|--------------------------|------------------|
//! | `t/`   | tenant                   | [`Tenant`]       |
//! | `c/`   | tenant `\0` code name    | [`Code`]         |
//! | `b/`   | first task id (u64 big-endian) | a task group: consecutive tasks of one queue command, records and payloads (see [`super::groups`]) |
//! | `k/`   | task id (u64 big-endian) | the task's current [`Task`] once it changed since queued; a tombstone once purged (see [`Row`]) |
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
//! Few keys per task: sled 0.34 spends memory and CPU per *key* written (page splits and
//! copy-on-write node garbage that its cache limit does not bound), so a separate payload
//! row and a per-tenant listing row tripled a node's resident memory under a large
//! backlog (measured: 1M tasks with three keys each, 64 B payloads, 3.6 GiB peak; one key
//! each, 0.2 GiB). A queue command writes its tasks as a few `b/` groups, and a task
//! gets a small `k/` row only when it changes ([`super::groups`]). The tenant listing is
//! an in-memory index of task ids ([`super::indexes::Indexes::by_tenant`]).
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
pub const GROUP: &[u8] = b"b/";
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
/// A task row holding the record alone: the payload is in the task's group.
const GROUPED_ROW_VERSION: u8 = 3;
/// A purged task of a group that still holds other tasks.
const PURGED_ROW_VERSION: u8 = 4;

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
pub fn group(first_task_id: u64) -> Vec<u8> {
    join(GROUP, &[&first_task_id.to_be_bytes()])
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

/// The id at the end of a `k/`, `b/` or `g/` key.
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

/// An inline task row (versions 1 and 2, written before task groups, and rewritten so):
/// the version byte, the record's encoded length (u32 big-endian), the postcard record,
/// then the payload bytes as they came.
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

/// The row of a grouped task that changed: version 3 and the postcard record.
pub fn encode_grouped_task(task: &Task) -> Vec<u8> {
    let out = vec![GROUPED_ROW_VERSION];
    match postcard::to_extend(task, out) {
        Ok(v) => v,
        Err(e) => unreachable!("postcard encoding of a task failed: {e}"),
    }
}

/// The row of a purged task whose group still holds others.
pub fn purged_row() -> Vec<u8> {
    vec![PURGED_ROW_VERSION]
}

/// A `k/` row, decoded.
#[derive(Debug)]
pub enum Row {
    /// Record and payload inline; the payload starts at `payload_at` in the row's bytes.
    Inline { task: Task, payload_at: usize },
    /// The record; the payload is in the task's group.
    Grouped(Task),
    /// Purged: the task is gone although its group is still there.
    Purged,
}

/// What kind of row `bytes` is, from its version byte alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowKind {
    Inline,
    Grouped,
    Purged,
}

pub fn row_kind(bytes: &[u8]) -> RowKind {
    match bytes.first() {
        Some(&GROUPED_ROW_VERSION) => RowKind::Grouped,
        Some(&PURGED_ROW_VERSION) => RowKind::Purged,
        _ => RowKind::Inline,
    }
}

pub fn decode_row(bytes: &[u8]) -> Result<Row, KvError> {
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
            Ok(Row::Inline { task, payload_at: HEAD + len })
        }
        Some((&GROUPED_ROW_VERSION, rest)) => {
            postcard::from_bytes(rest).map(Row::Grouped).map_err(|e| KvError(format!("corrupt task record: {e}")))
        }
        Some((&PURGED_ROW_VERSION, [])) => Ok(Row::Purged),
        Some((v, _)) => Err(KvError(format!("unknown task row version {v}"))),
        None => Err(KvError("empty value".into())),
    }
}

/// A task's current record as the state machine read it, and where its payload is: in
/// an old inline row (kept, so that rewriting the row carries it over) or in its group.
#[derive(Debug)]
pub struct TaskRow {
    pub task: Task,
    /// The inline row's bytes and where its payload starts; `None` for a grouped task.
    inline: Option<(Vec<u8>, usize)>,
}

impl TaskRow {
    /// A grouped task's record (from its row or its group).
    pub fn grouped(task: Task) -> Self {
        Self { task, inline: None }
    }

    /// Decodes a `k/` row; `None` for a tombstone.
    pub fn decode(row: Vec<u8>) -> Result<Option<Self>, KvError> {
        Ok(match decode_row(&row)? {
            Row::Inline { task, payload_at } => Some(Self { task, inline: Some((row, payload_at)) }),
            Row::Grouped(task) => Some(Self::grouped(task)),
            Row::Purged => None,
        })
    }

    /// The payload of an inline row; `None` when it is in the task's group.
    pub fn inline_payload(&self) -> Option<&[u8]> {
        self.inline.as_ref().map(|(row, at)| &row[*at..])
    }

    /// The row for `new`, this task's next version: inline rows stay inline.
    pub fn encode_next(&self, new: &Task) -> Vec<u8> {
        match self.inline_payload() {
            Some(payload) => encode_task(new, payload),
            None => encode_grouped_task(new),
        }
    }

    /// The record and an inline row's payload, reusing the row's allocation.
    pub fn into_parts(self) -> (Task, Option<Vec<u8>>) {
        let payload = self.inline.map(|(mut row, at)| {
            row.drain(..at);
            row
        });
        (self.task, payload)
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
