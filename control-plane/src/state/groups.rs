//! Task groups: the tasks one queue command created, stored as one `b/` value.
//!
//! A queue command of n tasks writes one key, not n: the group, keyed by its first task
//! id, holds each task's record as queued and its payload. A task gets a `k/` row of its
//! own only when it first changes (leased, cancelled, promoted…), and that row holds the
//! record alone (row version 3): the payload stays in the group and is never written
//! again. So a task's current record is its `k/` row if it has one, else its entry in the
//! group. sled's cost is per key written (measured on this machine, 100 tasks of 1 KiB
//! per command: one key per task ~50,000 tasks per CPU-second; one key per command
//! ~180,000–230,000), and a queued task is written once instead of once per state.
//!
//! Purging a task of a group writes a tombstone row (version 4) in place of its record,
//! since the group would otherwise still show it as queued; the task that empties the
//! group deletes the group and every row of its tasks. The in-memory
//! [`GroupCounts`](super::indexes::GroupCounts) say how many of a group's tasks are still
//! there, so that purge knows when, without reading the rows; they are rebuilt from the
//! tables at load.
//!
//! Rows from before groups (versions 1 and 2: record and payload inline) belong to no
//! group and keep their payload inline when they are rewritten.
//!
//! Value layout (big-endian u32s): the version byte, n, then for each task the offsets of
//! its record and of its payload within the value, then the offset where the last payload
//! ends; then the records and payloads. A record is the postcard [`Task`]. Reading one
//! task decodes only its own record, from the stored bytes in place.

use super::keys::{self, Row};
use super::kv::{KvError, KvRead};
use super::model::Task;

const GROUP_VERSION: u8 = 1;
const HEAD: usize = 5;

/// A group's bytes, checked enough to slice safely.
pub struct GroupView<'a> {
    bytes: &'a [u8],
    len: usize,
}

fn corrupt(what: impl std::fmt::Display) -> KvError {
    KvError(format!("corrupt task group: {what}"))
}

fn u32_at(bytes: &[u8], at: usize) -> Result<usize, KvError> {
    bytes
        .get(at..at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(|b| u32::from_be_bytes(b) as usize)
        .ok_or_else(|| corrupt(format!("offset at {at} past the end ({} bytes)", bytes.len())))
}

impl<'a> GroupView<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, KvError> {
        match bytes.first() {
            Some(&GROUP_VERSION) => {}
            Some(v) => return Err(corrupt(format!("unknown version {v}"))),
            None => return Err(corrupt("empty value")),
        }
        let len = u32_at(bytes, 1)?;
        let table_end = HEAD + 8 * len + 4;
        if table_end > bytes.len() || u32_at(bytes, table_end - 4)? != bytes.len() {
            return Err(corrupt(format!("{len} tasks do not fit {} bytes", bytes.len())));
        }
        Ok(Self { bytes, len })
    }

    /// How many tasks the group holds (never 0: an empty command writes no group).
    pub fn tasks(&self) -> usize {
        self.len
    }

    /// The record and payload ranges of task `i` (0-based within the group).
    fn ranges(&self, i: usize) -> Result<(std::ops::Range<usize>, std::ops::Range<usize>), KvError> {
        if i >= self.len {
            return Err(corrupt(format!("task {i} of {}", self.len)));
        }
        let at = HEAD + 8 * i;
        let (rec, pay, next) = (u32_at(self.bytes, at)?, u32_at(self.bytes, at + 4)?, u32_at(self.bytes, at + 8)?);
        if !(rec <= pay && pay <= next && next <= self.bytes.len()) {
            return Err(corrupt(format!("task {i} offsets {rec}, {pay}, {next}")));
        }
        Ok((rec..pay, pay..next))
    }

    /// Task `i`'s record as queued.
    pub fn record(&self, i: usize) -> Result<Task, KvError> {
        let (rec, _) = self.ranges(i)?;
        postcard::from_bytes(&self.bytes[rec]).map_err(|e| corrupt(format!("task {i}: {e}")))
    }

    /// Task `i`'s payload.
    pub fn payload(&self, i: usize) -> Result<&'a [u8], KvError> {
        let (_, pay) = self.ranges(i)?;
        Ok(&self.bytes[pay])
    }
}

/// The value of a group holding `tasks` (in id order, consecutive ids) with their payloads.
pub fn encode<'p>(tasks: &[Task], payloads: impl Iterator<Item = &'p [u8]>) -> Vec<u8> {
    let records: Vec<Vec<u8>> = tasks
        .iter()
        .map(|t| match postcard::to_stdvec(t) {
            Ok(v) => v,
            Err(e) => unreachable!("postcard encoding of a task failed: {e}"),
        })
        .collect();
    let payloads: Vec<&[u8]> = payloads.collect();
    let data: usize = records.iter().map(Vec::len).sum::<usize>() + payloads.iter().map(|p| p.len()).sum::<usize>();
    let table_end = HEAD + 8 * records.len() + 4;
    let mut out = Vec::with_capacity(table_end + data);
    out.push(GROUP_VERSION);
    // Validation bounds a command to MAX_BATCH_TASKS tasks and a few MiB in all.
    out.extend_from_slice(&(records.len() as u32).to_be_bytes());
    let mut at = table_end;
    for (r, p) in records.iter().zip(&payloads) {
        out.extend_from_slice(&(at as u32).to_be_bytes());
        out.extend_from_slice(&((at + r.len()) as u32).to_be_bytes());
        at += r.len() + p.len();
    }
    out.extend_from_slice(&(at as u32).to_be_bytes());
    for (r, p) in records.iter().zip(&payloads) {
        out.extend_from_slice(r);
        out.extend_from_slice(p);
    }
    out
}

/// Calls `f` with the committed group holding task `id` and the task's position in it;
/// false if no group holds it. Groups are keyed by first task id and a task's group is
/// the one with the greatest key not above it, from the same log entry; the scan starts
/// at that entry's first possible id, so it visits only that entry's groups.
pub fn find(kv: &dyn KvRead, id: u64, f: &mut dyn FnMut(&GroupView<'_>, usize)) -> Result<bool, KvError> {
    let entry_first = id >> super::tasks::TASK_ID_SHIFT << super::tasks::TASK_ID_SHIFT;
    let mut err = None;
    let mut found = false;
    kv.scan(keys::GROUP, &keys::group(entry_first), &mut |k, v| {
        let Some(g) = keys::trailing_id(k).filter(|g| *g <= id) else { return false };
        match GroupView::parse(v) {
            Ok(view) if id < g + view.tasks() as u64 => {
                f(&view, (id - g) as usize);
                found = true;
                false
            }
            Ok(_) => true,
            Err(e) => {
                err = Some(e);
                false
            }
        }
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok(found),
    }
}

/// One group as read at load: its key, how many tasks it holds and how many are still
/// there (not purged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub first_id: u64,
    pub len: u32,
    pub live: u32,
}

/// Every task in the tables with its current record and its payload: grouped tasks (from
/// their row if they have one, else from the group), then tasks with old inline rows.
/// `on_group` hears of every group. Purged tasks are skipped.
pub fn for_each_task(
    kv: &dyn KvRead,
    on_task: &mut dyn FnMut(Task, &[u8]),
    on_group: &mut dyn FnMut(Loaded),
) -> Result<(), KvError> {
    let mut err = None;
    let mut keep = |r: Result<(), KvError>| match r {
        Ok(()) => true,
        Err(e) => {
            err = Some(e);
            false
        }
    };
    kv.scan(keys::GROUP, keys::GROUP, &mut |k, v| {
        keep((|| {
            let g = keys::trailing_id(k).ok_or_else(|| corrupt(format!("key {k:?}")))?;
            let view = GroupView::parse(v)?;
            // The rows of this group's tasks that changed since they were queued.
            let mut rows = Vec::new();
            let mut row_err = None;
            kv.scan(keys::TASK, &keys::task(g), &mut |k, v| match keys::trailing_id(k) {
                Some(id) if id < g + view.tasks() as u64 => {
                    match keys::decode_row(v) {
                        Ok(r) => rows.push((id, r)),
                        Err(e) => row_err = Some(e),
                    }
                    row_err.is_none()
                }
                _ => false,
            })?;
            if let Some(e) = row_err {
                return Err(e);
            }
            let mut rows = rows.into_iter().peekable();
            let mut live = 0;
            for i in 0..view.tasks() {
                let id = g + i as u64;
                let row = match rows.peek() {
                    Some((rid, _)) if *rid == id => rows.next().map(|(_, r)| r),
                    _ => None,
                };
                let task = match row {
                    None => view.record(i)?,
                    Some(Row::Grouped(t)) => t,
                    Some(Row::Purged) => continue,
                    Some(Row::Inline { .. }) => {
                        return Err(corrupt(format!("task {id} has an inline row in group {g}")));
                    }
                };
                live += 1;
                on_task(task, view.payload(i)?);
            }
            on_group(Loaded { first_id: g, len: view.tasks() as u32, live });
            Ok(())
        })())
    })?;
    kv.scan(keys::TASK, keys::TASK, &mut |_, v| {
        keep(keys::decode_row(v).map(|r| {
            if let Row::Inline { task, payload_at } = r {
                on_task(task, &v[payload_at..]);
            }
        }))
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// How many tasks the tables hold, from group headers and row version bytes only.
pub fn task_count(kv: &dyn KvRead) -> Result<u64, KvError> {
    let mut n: i64 = 0;
    let mut err = None;
    kv.scan(keys::GROUP, keys::GROUP, &mut |_, v| match GroupView::parse(v) {
        Ok(view) => {
            n += view.tasks() as i64;
            true
        }
        Err(e) => {
            err = Some(e);
            false
        }
    })?;
    kv.scan(keys::TASK, keys::TASK, &mut |_, v| {
        n += match keys::row_kind(v) {
            keys::RowKind::Inline => 1,
            keys::RowKind::Grouped => 0,
            keys::RowKind::Purged => -1,
        };
        true
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok(n.max(0) as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::model::{Placement, RetryPolicy, TaskState};

    fn task(id: u64) -> Task {
        Task {
            id,
            tenant: "acme".into(),
            code: "work".into(),
            priority: 1,
            state: TaskState::Queued,
            created_ms: 5,
            ready_at_ms: 5,
            timeout_ms: 1_000,
            retries_left: 0,
            max_retries: 0,
            retry: RetryPolicy::default(),
            attempts: 0,
            lost_leases: 0,
            attempt_log: Vec::new(),
            reason: None,
            placement: Placement::default(),
            lease: None,
            result: None,
            payload_bytes: 0,
            schedule: None,
        }
    }

    #[test]
    fn a_group_reads_back_each_record_and_payload() {
        let tasks: Vec<Task> = (0..3).map(|i| task(100 + i)).collect();
        let payloads: [&[u8]; 3] = [b"one", b"", b"three!"];
        let bytes = encode(&tasks, payloads.iter().copied());
        let view = GroupView::parse(&bytes).expect("parse");
        assert_eq!(view.tasks(), 3);
        for (i, t) in tasks.iter().enumerate() {
            assert_eq!(&view.record(i).expect("record"), t);
            assert_eq!(view.payload(i).expect("payload"), payloads[i]);
        }
        assert!(view.record(3).is_err());
    }

    #[test]
    fn a_truncated_or_unknown_group_is_an_error_not_a_panic() {
        let bytes = encode(&[task(1), task(2)], [b"ab".as_slice(), b"cd"].into_iter());
        for cut in 0..bytes.len() {
            assert!(GroupView::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut other = bytes.clone();
        other[0] = 9;
        assert!(GroupView::parse(&other).is_err());
        // Offsets that run backwards are refused when read.
        let mut bad = bytes.clone();
        bad[HEAD + 4..HEAD + 8].copy_from_slice(&0u32.to_be_bytes());
        let view = GroupView::parse(&bad).expect("the header still fits");
        assert!(view.record(0).is_err() && view.payload(0).is_err());
    }
}
