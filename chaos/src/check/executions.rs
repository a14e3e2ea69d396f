//! Executions, as the witness saw them from inside the containers:
//! * an older execution of a task ends no later than the allowance (stop grace plus
//!   measurement slack) after a newer one starts: a runner that lost its lease, frozen
//!   or cut off, has its container stopped by the time the task is re-leased;
//! * executions started later carry higher lease epochs;
//! * a task recorded `complete` has an execution that ran to its end;
//! * no container is still running once the run has settled.

use std::collections::BTreeMap;

use super::{Finding, Inputs};
use crate::witness::Execution;

pub fn check(i: &Inputs) -> Finding {
    let mut f = Finding::new("executions of a task never overlap");
    let mut by_task: BTreeMap<u64, Vec<&Execution>> = BTreeMap::new();
    for e in &i.executions {
        by_task.entry(e.task).or_default().push(e);
    }
    for (task, execs) in by_task.iter_mut() {
        execs.sort_by_key(|e| (e.start_ms, e.epoch));
        for (n, newer) in execs.iter().enumerate().skip(1) {
            for older in &execs[..n] {
                if older.epoch >= newer.epoch {
                    f.violation(|| {
                        format!(
                            "task {task}: epoch {} started at {} ms after epoch {} started at {} ms",
                            newer.epoch, newer.start_ms, older.epoch, older.start_ms
                        )
                    });
                }
                let overlap = older.last_ms.saturating_sub(newer.start_ms);
                if overlap > i.overlap_allowance_ms {
                    f.violation(|| {
                        format!("task {task}: epoch {} ran until {} ms, {overlap} ms into epoch {} (started {} ms); allowance {} ms",
                            older.epoch, older.last_ms, newer.epoch, newer.start_ms, i.overlap_allowance_ms)
                    });
                }
            }
        }
    }
    for (id, _) in i.final_tasks.iter().filter(|(_, v)| v.state == "complete") {
        if !by_task.get(id).is_some_and(|ex| ex.iter().any(|e| e.finished)) {
            f.violation(|| format!("task {id} is complete but no execution of it ran to its end"));
        }
    }
    for e in &i.still_running {
        f.violation(|| {
            format!("task {} epoch {} still running at the end (started {} ms)", e.task, e.epoch, e.start_ms)
        });
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::TaskView;

    fn ex(task: u64, epoch: u64, start_ms: u64, last_ms: u64, finished: bool) -> Execution {
        Execution { task, epoch, payload_id: task, start_ms, last_ms, finished }
    }

    #[test]
    fn overlap_beyond_the_allowance_and_epoch_order_are_violations() {
        let mut i = Inputs { overlap_allowance_ms: 500, ..Default::default() };
        i.executions = vec![ex(1, 1, 0, 1_000, false), ex(1, 2, 800, 2_000, true)];
        assert_eq!(check(&i).violations, 0);
        i.executions = vec![ex(1, 1, 0, 3_000, false), ex(1, 2, 800, 2_000, true)];
        assert_eq!(check(&i).violations, 1);
        i.executions = vec![ex(1, 3, 0, 100, false), ex(1, 2, 800, 2_000, true)];
        assert_eq!(check(&i).violations, 1);
        i.executions = vec![ex(2, 1, 0, 100, false)];
        i.final_tasks.insert(
            2,
            TaskView {
                state: "complete".into(),
                exit_code: 0,
                attempts: 1,
                lost_leases: 0,
                payload_id: Some(2),
                created_ms: 0,
            },
        );
        assert_eq!(check(&i).violations, 1);
    }
}
