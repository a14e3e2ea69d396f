//! A terminal state and result never change once observed: after a read saw a task
//! finished, every later read (and the final state) shows the same state, exit code and
//! attempt count.

use std::collections::BTreeMap;

use super::{Finding, Inputs};
use crate::history::{Kind, Op, TaskView};

pub fn check(i: &Inputs) -> Finding {
    let mut f = Finding::new("a terminal state never changes");
    let mut first: BTreeMap<u64, (u64, TaskView)> = BTreeMap::new();
    let reads = i.events.iter().filter(|e| e.kind == Kind::Ok).filter_map(|e| match &e.op {
        Op::Get { task, seen: Some(v) } => Some((e.t_ms, *task, v)),
        _ => None,
    });
    for (t, task, v) in reads {
        match first.get(&task) {
            Some((t0, v0)) if !same_end(v0, v) => {
                f.violation(|| format!("task {task}: at {t0} ms {v0:?}, at {t} ms {v:?}"));
            }
            None if v.terminal() => {
                first.insert(task, (t, v.clone()));
            }
            _ => {}
        }
    }
    for (task, (t0, v0)) in &first {
        if let Some(end) = i.final_tasks.get(task).filter(|end| !same_end(v0, end)) {
            f.violation(|| format!("task {task}: at {t0} ms {v0:?}, at the end {end:?}"));
        }
    }
    f
}

fn same_end(a: &TaskView, b: &TaskView) -> bool {
    a.state == b.state && a.exit_code == b.exit_code && a.attempts == b.attempts
}
