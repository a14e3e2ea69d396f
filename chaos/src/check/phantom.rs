//! No task that was never queued: every task of the workload's tenant carries a payload
//! id some client invoked a queue call with.

use std::collections::BTreeSet;

use super::{Finding, Inputs};
use crate::history::{Kind, Op};

pub fn check(i: &Inputs) -> Finding {
    let mut f = Finding::new("no task that was never queued");
    let invoked: BTreeSet<u64> = i
        .events
        .iter()
        .filter(|e| e.kind == Kind::Invoke)
        .filter_map(|e| match e.op {
            Op::Queue { payload_id, .. } => Some(payload_id),
            _ => None,
        })
        .collect();
    for (id, v) in &i.final_tasks {
        if !v.payload_id.is_some_and(|p| invoked.contains(&p)) {
            f.violation(|| format!("task {id} has payload {:?}, which no client queued", v.payload_id));
        }
    }
    f
}
