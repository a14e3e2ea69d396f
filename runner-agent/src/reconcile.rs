//! Reconciliation, pure: from the containers labelled with this agent's id and what the
//! control plane confirmed about their leases, decide which to re-adopt and which to
//! remove. Used at start (containers of an earlier run of the agent) and after the
//! container engine comes back from a failure (containers the failed runs left behind).
//!
//! Rules: a container is re-adopted only if it is running, its lease was confirmed by the
//! control plane in this round, and no runner of this process already owns that task.
//! Everything else labelled with this agent's id, running or not, is removed, except what
//! a live runner owns (it removes its own container).

use crate::executor::Labelled;
use crate::lease_book::Lease;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Re-adopt: supervise it under its lease.
    Adopt(Labelled),
    /// Remove it (killing it if it runs).
    Remove { container: String, why: &'static str },
}

/// What the control plane said about the leases of the running containers found.
#[derive(Clone, Debug)]
pub enum Confirmation {
    /// It answered: these leases are current (the others were revoked).
    Answered { current: Vec<Lease> },
    /// It could not be asked (unreachable): nothing can be adopted safely.
    Unknown,
}

/// `owned(task_id)`: a runner of this process already owns the task (its container is
/// left alone).
pub fn plan(found: &[Labelled], confirmed: &Confirmation, owned: impl Fn(u64) -> bool) -> Vec<Decision> {
    let mut out = Vec::with_capacity(found.len());
    for c in found {
        if owned(c.task_id) {
            continue;
        }
        let lease = Lease { task_id: c.task_id, epoch: c.epoch };
        let decision = if !c.running {
            Decision::Remove { container: c.id.clone(), why: "not running" }
        } else {
            match confirmed {
                Confirmation::Answered { current } if current.contains(&lease) => Decision::Adopt(c.clone()),
                Confirmation::Answered { .. } => Decision::Remove { container: c.id.clone(), why: "lease revoked" },
                Confirmation::Unknown => Decision::Remove { container: c.id.clone(), why: "lease unconfirmed" },
            }
        };
        out.push(decision);
    }
    // One container per task: a second one for the same task (an older epoch) goes.
    let mut adopted: Vec<u64> = Vec::new();
    for d in &mut out {
        if let Decision::Adopt(c) = d {
            if adopted.contains(&c.task_id) {
                *d = Decision::Remove { container: c.id.clone(), why: "duplicate for its task" };
            } else {
                adopted.push(c.task_id);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, task_id: u64, epoch: u64, running: bool) -> Labelled {
        Labelled { id: id.into(), task_id, epoch, attempt: 1, timeout_ms: 60_000, running, started_unix_s: 0 }
    }

    #[test]
    fn adopts_only_running_confirmed_unowned_containers() {
        let found = vec![c("a", 1, 10, true), c("b", 2, 20, true), c("c", 3, 30, false), c("d", 4, 40, true)];
        let confirmed = Confirmation::Answered {
            current: vec![
                Lease { task_id: 1, epoch: 10 },
                Lease { task_id: 3, epoch: 30 },
                Lease { task_id: 4, epoch: 40 },
            ],
        };
        let plan = plan(&found, &confirmed, |t| t == 4);
        assert_eq!(
            plan,
            vec![
                Decision::Adopt(c("a", 1, 10, true)),
                Decision::Remove { container: "b".into(), why: "lease revoked" },
                Decision::Remove { container: "c".into(), why: "not running" },
            ]
        );
    }

    #[test]
    fn without_an_answer_nothing_is_adopted() {
        let found = vec![c("a", 1, 10, true)];
        assert_eq!(
            plan(&found, &Confirmation::Unknown, |_| false),
            vec![Decision::Remove { container: "a".into(), why: "lease unconfirmed" }]
        );
    }

    #[test]
    fn one_container_per_task() {
        let found = vec![c("a", 1, 10, true), c("b", 1, 10, true)];
        let confirmed = Confirmation::Answered { current: vec![Lease { task_id: 1, epoch: 10 }] };
        let plan = plan(&found, &confirmed, |_| false);
        assert_eq!(plan[1], Decision::Remove { container: "b".into(), why: "duplicate for its task" });
    }
}
