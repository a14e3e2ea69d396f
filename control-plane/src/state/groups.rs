//! Task groups: consecutive tasks queued by one log entry (one queue command, or every
//! queue command batched into the entry), stored as one `b/` value.
//!
//! An entry writes the tasks it queues as a few groups, not a key per task: a group, keyed by
//! its first task id, holds each task's record as queued and its payload. A task gets a
//! `k/` row of its own only when it first changes (leased, cancelled, promoted…), and that
//! row holds the record alone (row version 3): the payload stays in the group and is never
//! written again. So a task's current record is its `k/` row if it has one, else its
//! entry in its group.
//!
//! Why, and why groups are small ([`GROUP_TARGET_BYTES`]): sled 0.34's cost is per key
//! written, but a leaf holds up to 17 values and is rewritten whole as it fills, and a
//! leaf over 128 KiB (a quarter of sled's 512 KiB segment) goes to a file of its own and
//! stays in memory. Measured on this machine with a standalone sled program (300,000
//! tasks of 1 KiB, 64 MiB cache): one key per task, ~44,000 tasks per CPU-second and
//! 82 MiB resident; groups of 4–8 tasks (5–10 KiB), 84,000–111,000 and 78–105 MiB;
//! groups of 16 (19 KiB), 54,000–56,000 and 132–135 MiB; groups of 100, 112,000 but
//! 375 MiB, and of 1,000, 92,000 and 360 MiB — everything held in memory.
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

use super::indexes::GroupCounts;
use super::keys::{self, Row};
use super::kv::{KvError, KvRead, try_scan};
use super::model::Task;

const GROUP_VERSION: u8 = 1;
const HEAD: usize = 5;
/// A group takes tasks while it stays within this size (a single larger task makes a
/// group of its own). sled splits a leaf past 16 values, lazily, and merges one under 4
/// into its neighbour: 20 groups (a full leaf and a near-empty one merged) still fit
/// under its 128 KiB limit.
pub const GROUP_TARGET_BYTES: usize = 6 * 1024;

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

    /// Whether this group, keyed `first_id`, holds task `id`.
    pub fn holds(&self, first_id: u64, id: u64) -> bool {
        first_id <= id && id - first_id < self.len as u64
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
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

/// One group of a queue command's tasks: its first task id, how many tasks, its value.
pub struct NewGroup {
    pub first_id: u64,
    pub len: u32,
    pub value: Vec<u8>,
}

/// The groups holding `tasks` (consecutive ids, in order) with their `payloads`: each as
/// many tasks as fit [`GROUP_TARGET_BYTES`], and at least one.
pub fn encode(tasks: &[Task], payloads: &[&[u8]]) -> Vec<NewGroup> {
    // Every record encoded into one buffer (no allocation per task), then sliced.
    let mut buf = Vec::new();
    let mut ends = Vec::with_capacity(tasks.len());
    for t in tasks {
        buf = match postcard::to_extend(t, buf) {
            Ok(v) => v,
            Err(e) => unreachable!("postcard encoding of a task failed: {e}"),
        };
        ends.push(buf.len());
    }
    let records = pieces(&buf, &ends);
    let mut out = Vec::new();
    let mut start = 0;
    while start < records.len() {
        let mut end = start;
        let mut bytes = HEAD + 4;
        while end < records.len() {
            let more = 8 + records[end].len() + payloads[end].len();
            if end > start && bytes + more > GROUP_TARGET_BYTES {
                break;
            }
            bytes += more;
            end += 1;
        }
        out.push(NewGroup {
            first_id: tasks[start].id,
            len: (end - start) as u32,
            value: encode_one(&records[start..end], &payloads[start..end], bytes),
        });
        start = end;
    }
    out
}

/// The consecutive pieces of `buf` ending at each of `ends` (in order, the first from 0).
pub fn pieces<'a>(buf: &'a [u8], ends: &[usize]) -> Vec<&'a [u8]> {
    let mut start = 0;
    ends.iter()
        .map(|&end| {
            let piece = &buf[start..end];
            start = end;
            piece
        })
        .collect()
}

fn encode_one(records: &[&[u8]], payloads: &[&[u8]], size: usize) -> Vec<u8> {
    let table_end = HEAD + 8 * records.len() + 4;
    let mut out = Vec::with_capacity(size);
    out.push(GROUP_VERSION);
    // A group holds at most an entry's tasks (under 1 << TASK_ID_SHIFT) and is at most
    // GROUP_TARGET_BYTES or one task, itself under an entry's byte limit.
    out.extend_from_slice(&(records.len() as u32).to_be_bytes());
    let mut at = table_end;
    for (r, p) in records.iter().zip(payloads) {
        out.extend_from_slice(&(at as u32).to_be_bytes());
        out.extend_from_slice(&((at + r.len()) as u32).to_be_bytes());
        at += r.len() + p.len();
    }
    out.extend_from_slice(&(at as u32).to_be_bytes());
    for (r, p) in records.iter().zip(payloads) {
        out.extend_from_slice(r);
        out.extend_from_slice(p);
    }
    out
}

/// Calls `f` with the committed group holding task `id`: its first id and its view; false
/// if no group holds it. A task's group is the one with the greatest first id not above
/// it, if it reaches that far.
pub fn find(kv: &dyn KvRead, id: u64, f: &mut dyn FnMut(u64, &GroupView<'_>)) -> Result<bool, KvError> {
    let mut out = Ok(false);
    kv.last_at_or_before(keys::GROUP, &keys::group(id), &mut |k, v| {
        let Some(g) = keys::trailing_id(k) else { return };
        out = GroupView::parse(v).map(|view| {
            let inside = view.holds(g, id);
            if inside {
                f(g, &view);
            }
            inside
        });
    })?;
    out
}

/// Every task in the tables with its current record and its payload: grouped tasks (from
/// their row if they have one, else from the group), then tasks with old inline rows.
/// Purged tasks are skipped. Returns every group's counts.
pub fn for_each_task(kv: &dyn KvRead, on_task: &mut dyn FnMut(Task, &[u8])) -> Result<GroupCounts, KvError> {
    let mut counts = GroupCounts::default();
    try_scan(kv, keys::GROUP, keys::GROUP, &mut |k, v| {
        let g = keys::trailing_id(k).ok_or_else(|| corrupt(format!("key {k:?}")))?;
        let view = GroupView::parse(v)?;
        let live = visit_group(kv, g, &view, on_task)?;
        counts.insert(g, view.tasks() as u32, live);
        Ok(true)
    })?;
    try_scan(kv, keys::TASK, keys::TASK, &mut |_, v| {
        if let Row::Inline { task, payload_at } = keys::decode_row(v)? {
            on_task(task, &v[payload_at..]);
        }
        Ok(true)
    })?;
    Ok(counts)
}

/// Calls `on_task` for each task of group `g` still there; returns how many.
fn visit_group(
    kv: &dyn KvRead,
    g: u64,
    view: &GroupView<'_>,
    on_task: &mut dyn FnMut(Task, &[u8]),
) -> Result<u32, KvError> {
    // The rows of this group's tasks that changed since they were queued, in id order.
    let mut rows = Vec::new();
    try_scan(kv, keys::TASK, &keys::task(g), &mut |k, v| match keys::trailing_id(k) {
        Some(id) if view.holds(g, id) => {
            rows.push((id, keys::decode_row(v)?));
            Ok(true)
        }
        _ => Ok(false),
    })?;
    let mut rows = rows.into_iter().peekable();
    let mut live = 0;
    for i in 0..view.tasks() {
        let id = g.saturating_add(i as u64);
        let row = rows.next_if(|(rid, _)| *rid == id).map(|(_, r)| r);
        let task = match row {
            None => view.record(i)?,
            Some(Row::Grouped(t)) => t,
            Some(Row::Purged) => continue,
            Some(Row::Inline { .. }) => return Err(corrupt(format!("task {id} has an inline row in group {g}"))),
        };
        live += 1;
        on_task(task, view.payload(i)?);
    }
    Ok(live)
}

/// How many tasks the tables hold, from group headers and row version bytes only.
pub fn task_count(kv: &dyn KvRead) -> Result<u64, KvError> {
    let mut n: i64 = 0;
    try_scan(kv, keys::GROUP, keys::GROUP, &mut |_, v| {
        n += GroupView::parse(v)?.tasks() as i64;
        Ok(true)
    })?;
    try_scan(kv, keys::TASK, keys::TASK, &mut |_, v| {
        n += match keys::row_kind(v) {
            keys::RowKind::Inline => 1,
            keys::RowKind::Grouped => 0,
            keys::RowKind::Purged => -1,
        };
        Ok(true)
    })?;
    Ok(n.max(0) as u64)
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
        let groups = encode(&tasks, &payloads);
        assert_eq!(groups.len(), 1);
        let view = GroupView::parse(&groups[0].value).expect("parse");
        assert_eq!(view.tasks(), 3);
        for (i, t) in tasks.iter().enumerate() {
            assert_eq!(&view.record(i).expect("record"), t);
            assert_eq!(view.payload(i).expect("payload"), payloads[i]);
        }
        assert!(view.record(3).is_err());
    }

    #[test]
    fn a_command_is_cut_into_groups_within_the_target_size() {
        let tasks: Vec<Task> = (0..20).map(|i| task(1_000 + i)).collect();
        let kib = vec![7u8; 1024];
        let big = vec![8u8; 3 * GROUP_TARGET_BYTES];
        let mut payloads: Vec<&[u8]> = vec![&kib; 20];
        payloads[9] = &big;
        let groups = encode(&tasks, &payloads);
        // Consecutive, covering every task once, in order.
        let mut next = 1_000;
        for g in &groups {
            assert_eq!(g.first_id, next);
            let view = GroupView::parse(&g.value).expect("parse");
            assert_eq!(view.tasks(), g.len as usize);
            for i in 0..view.tasks() {
                assert_eq!(view.record(i).expect("record").id, next + i as u64);
                assert_eq!(view.payload(i).expect("payload"), payloads[(next - 1_000) as usize + i]);
            }
            // Within the target, unless a single task is larger on its own.
            assert!(g.value.len() <= GROUP_TARGET_BYTES || g.len == 1, "{} bytes, {} tasks", g.value.len(), g.len);
            next += u64::from(g.len);
        }
        assert_eq!(next, 1_020);
        assert!(groups.iter().any(|g| g.first_id == 1_009 && g.len == 1), "the large task is alone");
        assert!(groups.iter().all(|g| g.len < 20) && groups.iter().any(|g| g.len > 1));
    }

    #[test]
    fn a_truncated_or_unknown_group_is_an_error_not_a_panic() {
        let bytes = encode(&[task(1), task(2)], &[b"ab", b"cd"]).remove(0).value;
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
