//! Attempts within their bounds: each lease (task, epoch) runs at most one container;
//! a task ran under no more epochs than it was granted leases (`attempts` counts
//! grants); and no task lost more leases than the control plane allows before failing
//! it.

use std::collections::{BTreeMap, BTreeSet};

use super::{Finding, Inputs};
use drover_control_plane::state::leases::MAX_LOST_LEASES;

pub fn check(i: &Inputs) -> Finding {
    let mut f = Finding::new("attempts within their bounds");
    let mut epochs: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for e in i.executions.iter().chain(&i.still_running) {
        if !epochs.entry(e.task).or_default().insert(e.epoch) {
            f.violation(|| format!("task {} epoch {} ran more than one container", e.task, e.epoch));
        }
    }
    for (task, v) in &i.final_tasks {
        // A task still open when the settle wait gave up was read while it could still be
        // leased and run (its containers seen later than its view): the settle check
        // reports it; comparing its grants here would report the same stall again.
        if i.settle.unfinished.contains(task) {
            continue;
        }
        let ran = epochs.get(task).map_or(0, BTreeSet::len);
        if ran > v.attempts as usize {
            f.violation(|| format!("task {task} ran under {ran} epochs but was granted {} leases", v.attempts));
        }
        if v.lost_leases > MAX_LOST_LEASES {
            f.violation(|| format!("task {task} lost {} leases (the bound is {MAX_LOST_LEASES})", v.lost_leases));
        }
    }
    f
}
