//! One idempotency key gives at most one task: every answer for a key names the same
//! task, and no payload (one key each) appears in two tasks.

use std::collections::{BTreeMap, BTreeSet};

use super::{Finding, Inputs, acknowledged};

pub fn check(i: &Inputs) -> Finding {
    let mut f = Finding::new("one idempotency key gives at most one task");
    let mut by_key: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for (key, _, task) in acknowledged(&i.events) {
        by_key.entry(key).or_default().insert(task);
    }
    for (key, tasks) in by_key.iter().filter(|(_, t)| t.len() > 1) {
        f.violation(|| format!("key {key} answered with tasks {tasks:?}"));
    }
    let mut by_payload: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (id, v) in &i.final_tasks {
        if let Some(p) = v.payload_id {
            by_payload.entry(p).or_default().push(*id);
        }
    }
    for (p, tasks) in by_payload.iter().filter(|(_, t)| t.len() > 1) {
        f.violation(|| format!("payload {p} (one key) is in tasks {tasks:?}"));
    }
    f
}
