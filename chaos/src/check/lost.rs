//! No acknowledged task lost: every task id a queue call was answered with exists at the
//! end, with the payload it was queued with.

use super::{Finding, Inputs, acknowledged};

pub fn check(i: &Inputs) -> Finding {
    let mut f = Finding::new("no acknowledged task lost");
    for (key, payload_id, task) in acknowledged(&i.events) {
        match i.final_tasks.get(&task) {
            None => f.violation(|| format!("task {task} (key {key}) was acknowledged but is gone")),
            Some(v) if v.payload_id != Some(payload_id) => f.violation(|| {
                format!("task {task} (key {key}) holds payload {:?}, queued with {payload_id}", v.payload_id)
            }),
            Some(_) => {}
        }
    }
    f
}
