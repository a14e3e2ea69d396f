//! No stale-epoch call accepted: every completion, heartbeat and log chunk the zombie
//! replayed for a lease that a newer epoch had replaced was refused (a heartbeat's lease
//! revoked, a chunk reported stale).

use super::{Finding, Inputs};
use crate::history::{Kind, Op};

pub fn check(i: &Inputs) -> Finding {
    let mut f = Finding::new("no stale-epoch call accepted");
    for e in i.events.iter().filter(|e| e.kind == Kind::Ok) {
        if let Op::Stale { task, epoch, agent, call, accepted: Some(true) } = &e.op {
            f.violation(|| format!("{call} of task {task} epoch {epoch} as {agent} accepted at {} ms", e.t_ms));
        }
    }
    f
}
