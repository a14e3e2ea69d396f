//! Read-only queries over the committed tables. They read the store directly (not the
//! transaction), so callers get what is committed on this replica; linearizability is the
//! API layer's job (read-index before reading).

use sha2::{Digest, Sha256};

use super::keys;
use super::kv::{KvError, KvRead};
use super::model::{Task, TaskState};

pub fn get_task(kv: &dyn KvRead, tenant: Option<&str>, id: u64) -> Result<Option<Task>, KvError> {
    let Some(v) = kv.get(&keys::task(id))? else { return Ok(None) };
    let t = keys::decode_task(&v)?;
    // Another tenant's task is reported exactly as a missing one.
    Ok(match tenant {
        Some(tenant) if t.tenant != tenant => None,
        _ => Some(t),
    })
}

/// A task and its payload, from one read of its row.
pub fn get_task_with_payload(
    kv: &dyn KvRead,
    tenant: Option<&str>,
    id: u64,
) -> Result<Option<(Task, Vec<u8>)>, KvError> {
    let Some(v) = kv.get(&keys::task(id))? else { return Ok(None) };
    let (t, payload) = keys::TaskRow::decode(v)?.into_parts();
    Ok(match tenant {
        Some(tenant) if t.tenant != tenant => None,
        _ => Some((t, payload)),
    })
}

#[derive(Default, Clone, Debug)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    pub code: Option<String>,
}

/// How many task ids one listing page looks at: filters skip tasks, so a page considers
/// more ids than it returns, but never the whole table.
pub fn list_window(limit: usize) -> usize {
    limit.saturating_mul(8).max(limit + 1)
}

/// One page of a tenant's tasks. `candidates` are the tenant's next task ids in order (at
/// most [`list_window`] of them, from [`super::indexes::Indexes::tenant_task_ids`]).
/// Returns at most `limit` tasks that pass the filter and the id to continue after (None
/// when the listing is done).
pub fn list_tasks(
    kv: &dyn KvRead,
    tenant: &str,
    candidates: &[u64],
    filter: &TaskFilter,
    limit: usize,
) -> Result<(Vec<Task>, Option<u64>), KvError> {
    let mut more = candidates.len() >= list_window(limit);
    let mut out = Vec::new();
    let mut last = None;
    for &id in candidates {
        if out.len() >= limit {
            more = true;
            break;
        }
        last = Some(id);
        // A task purged since the ids were taken is simply absent.
        if let Some(t) = get_task(kv, Some(tenant), id)?
            && filter.state.is_none_or(|s| s == t.state)
            && filter.code.as_ref().is_none_or(|c| *c == t.code)
        {
            out.push(t);
        }
    }
    Ok((out, if more { last } else { None }))
}

/// Number of tasks in the table.
pub fn task_count(kv: &dyn KvRead) -> Result<u64, KvError> {
    let mut n = 0;
    kv.scan(keys::TASK, keys::TASK, &mut |_, _| {
        n += 1;
        true
    })?;
    Ok(n)
}

/// SHA-256 over every (key, value) of the state tables in key order, excluding the Raft
/// adapter's own keys. Two replicas at the same applied index must agree on it.
pub fn digest(kv: &dyn KvRead) -> Result<(String, u64), KvError> {
    let mut h = Sha256::new();
    let mut n = 0u64;
    kv.scan(b"", b"", &mut |k, v| {
        if !k.starts_with(keys::RAFT_OWNED) {
            h.update((k.len() as u64).to_be_bytes());
            h.update(k);
            h.update((v.len() as u64).to_be_bytes());
            h.update(v);
            n += 1;
        }
        true
    })?;
    Ok((hex::encode(h.finalize()), n))
}
