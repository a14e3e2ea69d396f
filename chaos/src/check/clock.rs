//! Leader-stamped time never goes back: tasks are stamped with the time of the entry
//! that queued them, and task ids follow log order, so a task with a larger id (queued
//! by a later entry, possibly under a later leader) never has an earlier creation time.

use super::{Finding, Inputs};

pub fn check(i: &Inputs) -> Finding {
    let mut f = Finding::new("leader-stamped time never goes back");
    let mut prev: Option<(u64, u64)> = None;
    for (id, v) in &i.final_tasks {
        if let Some((pid, pms)) = prev
            && v.created_ms < pms
        {
            f.violation(|| format!("task {id} created at {} ms, before task {pid} at {pms} ms", v.created_ms));
        }
        prev = Some((*id, v.created_ms));
    }
    f
}
