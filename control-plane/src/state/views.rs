//! Read-only queries over the committed tables. They read the store directly (not the
//! transaction), so callers get what is committed on this replica; linearizability is the
//! API layer's job (read-index before reading).

use sha2::{Digest, Sha256};

use super::groups;
use super::keys;
use super::kv::{KvError, KvRead};
use super::model::{Task, TaskState};

/// The last group a listing read, by first id: consecutive tasks mostly share one, and a
/// group never changes while it exists.
type LastGroup = Option<(u64, Vec<u8>)>;

/// Calls `f` with task `id`'s group and its position in it, from `last` if it holds the
/// task (a listing), else found in the tables (and kept in `last`).
fn in_group(
    kv: &dyn KvRead,
    id: u64,
    last: &mut LastGroup,
    f: &mut dyn FnMut(&groups::GroupView<'_>, usize),
) -> Result<bool, KvError> {
    if let Some((g, bytes)) = last.as_ref() {
        let view = groups::GroupView::parse(bytes)?;
        if view.holds(*g, id) {
            f(&view, (id - g) as usize);
            return Ok(true);
        }
    }
    groups::find(kv, id, &mut |g, view| {
        f(view, (id - g) as usize);
        *last = Some((g, view.bytes().to_vec()));
    })
}

/// A task's current record and, if `with_payload`, its payload (from its group or old
/// inline row); `None` if there is no such task. See [`super::groups`].
fn read(
    kv: &dyn KvRead,
    id: u64,
    with_payload: bool,
    last: &mut LastGroup,
) -> Result<Option<(Task, Vec<u8>)>, KvError> {
    // A row of its own, if the task changed since it was queued.
    let row = match kv.get(&keys::task(id))? {
        Some(row) => match keys::TaskRow::decode(row)? {
            None => return Ok(None),
            Some(row) => Some(row.into_parts()),
        },
        None => None,
    };
    match row {
        // An old inline row holds the payload too.
        Some((task, Some(payload))) => return Ok(Some((task, payload))),
        Some((task, None)) if !with_payload => return Ok(Some((task, Vec::new()))),
        _ => {}
    }
    // The record as queued (unless the row has a newer one) and the payload, from the group.
    let mut found = None;
    in_group(kv, id, last, &mut |g, i| {
        let record = if row.is_none() { g.record(i).map(Some) } else { Ok(None) };
        let payload = if with_payload { g.payload(i).map(<[u8]>::to_vec) } else { Ok(Vec::new()) };
        found = Some(record.and_then(|r| Ok((r, payload?))));
    })?;
    // No group: never queued, or purged with its group since the row was read (views read
    // the live tables, not a snapshot).
    let Some(found) = found else { return Ok(None) };
    let (record, payload) = found?;
    Ok(row.map(|(task, _)| task).or(record).map(|task| (task, payload)))
}

pub fn get_task(kv: &dyn KvRead, tenant: Option<&str>, id: u64) -> Result<Option<Task>, KvError> {
    get_task_via(kv, tenant, id, &mut None)
}

fn get_task_via(kv: &dyn KvRead, tenant: Option<&str>, id: u64, last: &mut LastGroup) -> Result<Option<Task>, KvError> {
    // Another tenant's task is reported exactly as a missing one.
    Ok(read(kv, id, false, last)?.map(|(t, _)| t).filter(|t| tenant.is_none_or(|tenant| t.tenant == tenant)))
}

/// A task and its payload.
pub fn get_task_with_payload(
    kv: &dyn KvRead,
    tenant: Option<&str>,
    id: u64,
) -> Result<Option<(Task, Vec<u8>)>, KvError> {
    Ok(read(kv, id, true, &mut None)?.filter(|(t, _)| tenant.is_none_or(|tenant| t.tenant == tenant)))
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
    let mut group = None;
    for &id in candidates {
        if out.len() >= limit {
            more = true;
            break;
        }
        last = Some(id);
        // A task purged since the ids were taken is simply absent.
        if let Some(t) = get_task_via(kv, Some(tenant), id, &mut group)?
            && filter.state.is_none_or(|s| s == t.state)
            && filter.code.as_ref().is_none_or(|c| *c == t.code)
        {
            out.push(t);
        }
    }
    Ok((out, if more { last } else { None }))
}

/// Number of tasks in the tables.
pub fn task_count(kv: &dyn KvRead) -> Result<u64, KvError> {
    groups::task_count(kv)
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
