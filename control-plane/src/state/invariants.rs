//! The state machine's invariants as code, checked after every apply in tests:
//!
//! * the in-memory indexes equal indexes rebuilt from the tables (so every task is in
//!   exactly the index of its state, counted once);
//! * a running task has exactly one lease, and a task that is not running has none;
//! * every task has its payload and its tenant-listing entry.

use super::indexes::Indexes;
use super::keys;
use super::kv::KvRead;
use super::machine::StateMachine;
use super::model::{Task, TaskState};

pub fn check(sm: &StateMachine, kv: &dyn KvRead) -> Result<(), String> {
    let mut rebuilt = Indexes::default();
    let mut problems = Vec::new();
    let mut tasks = Vec::new();
    kv.scan(keys::TASK, keys::TASK, &mut |_, v| {
        match keys::decode::<Task>(v) {
            Ok(t) => tasks.push(t),
            Err(e) => problems.push(e.to_string()),
        }
        true
    })
    .map_err(|e| e.to_string())?;
    for t in &tasks {
        rebuilt.add(t);
        if (t.state == TaskState::Running) != t.lease.is_some() {
            problems.push(format!("task {} is {:?} with lease {:?}", t.id, t.state, t.lease));
        }
        match kv.get(&keys::payload(t.id)) {
            Ok(Some(p)) if p.len() as u64 == t.payload_bytes => {}
            other => problems.push(format!("task {} payload: {other:?}", t.id)),
        }
        if !matches!(kv.get(&keys::tenant_task(&t.tenant, t.id)), Ok(Some(_))) {
            problems.push(format!("task {} missing from its tenant listing", t.id));
        }
    }
    let mut live = sm.idx.canonical();
    let want = rebuilt.canonical();
    // Idempotency expiries are not derived from tasks; compare them separately.
    live.idem_expiry.clear();
    if live != want {
        problems.push(format!("indexes diverge from tables:\n live {live:?}\n want {want:?}"));
    }
    let total: u64 = sm.idx.state_counts.iter().sum();
    if total != tasks.len() as u64 {
        problems.push(format!("state counts sum to {total}, table holds {}", tasks.len()));
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}
