//! An acknowledged cancel ends the task `cancelled`.
//!
//! The control plane applies a cancel as one entry (`state::tasks::cancel`): a task not
//! yet finished becomes `cancelled` in that entry, a running one's lease revoked with it
//! (its runner's later reports carry a stale epoch and are refused); a task already
//! finished refuses the cancel with `FailedPrecondition`. A cancel that loses the race to
//! the task's completion is therefore refused, never acknowledged, and nothing but a
//! cancel makes a task `cancelled`. So:
//! * an acknowledged cancel answers with the task `cancelled`, and the task ends so;
//! * a task's cancel is acknowledged at most once (a second one finds it finished);
//! * no cancel is acknowledged for a task a read had seen finished before the cancel
//!   was invoked;
//! * a task ends `cancelled` only if a cancel of it may have applied (not every one was
//!   refused);
//! * a cancel of a task acknowledged to its tenant is never answered "not found".

use std::collections::{BTreeMap, BTreeSet};

use super::{Finding, Inputs, acknowledged, observations};
use crate::history::{Kind, Op};

const CANCELLED: &str = "cancelled";

pub fn check(i: &Inputs) -> Finding {
    let mut f = Finding::new("an acknowledged cancel ends the task cancelled");
    // When each task was first seen finished, and in what state.
    let mut finished: BTreeMap<u64, (u64, &str)> = BTreeMap::new();
    for (t, task, v) in observations(&i.events) {
        if v.terminal() {
            finished.entry(task).or_insert((t, v.state.as_str()));
        }
    }
    let ours: BTreeSet<u64> = acknowledged(&i.events).map(|(_, _, task)| task).collect();
    // Per task: cancels invoked, refused for certain, and acknowledged.
    let mut tried: BTreeMap<u64, (usize, usize, usize)> = BTreeMap::new();
    let mut invoked_at: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &i.events {
        let Op::Cancel { task, seen } = &e.op else { continue };
        let counts = tried.entry(*task).or_default();
        match e.kind {
            Kind::Invoke => {
                invoked_at.insert(&e.process, e.t_ms);
                counts.0 += 1;
            }
            Kind::Fail => {
                counts.1 += 1;
                if e.status() == Some("NotFound") && ours.contains(task) {
                    f.violation(|| format!("cancel of task {task} answered not found at {} ms", e.t_ms));
                }
            }
            Kind::Info => {}
            Kind::Ok => {
                counts.2 += 1;
                if counts.2 == 2 {
                    f.violation(|| format!("cancel of task {task} acknowledged a second time at {} ms", e.t_ms));
                }
                let state = seen.as_ref().map_or("nothing", |v| v.state.as_str());
                if state != CANCELLED {
                    f.violation(|| {
                        format!("cancel of task {task} acknowledged at {} ms with the task {state}", e.t_ms)
                    });
                }
                let invoked = invoked_at.get(e.process.as_str()).copied().unwrap_or(e.t_ms);
                if let Some((t0, s0)) = finished.get(task).filter(|(t0, _)| *t0 < invoked) {
                    f.violation(|| {
                        format!("cancel of task {task} invoked at {invoked} ms was acknowledged, but it was seen {s0} at {t0} ms")
                    });
                }
                if let Some(end) = i.final_tasks.get(task).filter(|end| end.state != CANCELLED) {
                    f.violation(|| {
                        format!("cancel of task {task} acknowledged at {} ms, but the task ended {}", e.t_ms, end.state)
                    });
                }
            }
        }
    }
    for (task, end) in i.final_tasks.iter().filter(|(_, v)| v.state == CANCELLED) {
        let (invoked, refused, _) = tried.get(task).copied().unwrap_or_default();
        if invoked <= refused {
            f.violation(|| format!("task {task} ended {} though no cancel of it can have applied", end.state));
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::{ev, listed, page, queued, refused, view};

    fn cancel(t: u64, kind: Kind, state: Option<&str>) -> crate::history::Event {
        ev(t, "client-0", kind, Op::Cancel { task: 7, seen: state.map(view) })
    }

    fn inputs(events: Vec<crate::history::Event>, end: &str) -> Inputs {
        let mut i = Inputs { events, ..Default::default() };
        i.events.insert(0, queued(10, "k", 1, 7));
        i.final_tasks.insert(7, view(end));
        i
    }

    #[test]
    fn an_acknowledged_cancel_of_a_task_that_ends_otherwise_is_a_violation() {
        let ok = vec![cancel(100, Kind::Invoke, None), cancel(120, Kind::Ok, Some(CANCELLED))];
        assert_eq!(check(&inputs(ok.clone(), CANCELLED)).violations, 0);
        let twice = [ok.clone(), ok.clone()].concat();
        assert_eq!(check(&inputs(twice, CANCELLED)).violations, 1, "acknowledged twice");
        assert_eq!(check(&inputs(ok, "complete")).violations, 1, "acknowledged, then complete");
        let wrong_answer = vec![cancel(100, Kind::Invoke, None), cancel(120, Kind::Ok, Some("running"))];
        assert_eq!(check(&inputs(wrong_answer, "running")).violations, 2, "answered running, never cancelled");
    }

    #[test]
    fn a_cancel_that_lost_the_race_must_be_refused() {
        let op = Op::Cancel { task: 7, seen: None };
        let lost = vec![
            page(50, "chaos", 0, 10, vec![listed(7, "chaos", "complete")]),
            cancel(100, Kind::Invoke, None),
            refused(120, "client-0", op.clone(), "FailedPrecondition"),
        ];
        assert_eq!(check(&inputs(lost, "complete")).violations, 0);
        let acked = vec![
            page(50, "chaos", 0, 10, vec![listed(7, "chaos", "complete")]),
            cancel(100, Kind::Invoke, None),
            cancel(120, Kind::Ok, Some(CANCELLED)),
        ];
        assert_eq!(check(&inputs(acked, CANCELLED)).violations, 1, "acknowledged after it was seen complete");
        let gone = vec![cancel(100, Kind::Invoke, None), refused(120, "client-0", op, "NotFound")];
        assert_eq!(check(&inputs(gone, "queued")).violations, 1, "an acknowledged task not found");
    }

    #[test]
    fn a_task_cancelled_with_every_cancel_refused_is_a_violation() {
        let op = Op::Cancel { task: 7, seen: None };
        let refused_only = vec![cancel(100, Kind::Invoke, None), refused(120, "client-0", op, "FailedPrecondition")];
        assert_eq!(check(&inputs(refused_only, CANCELLED)).violations, 1);
        assert_eq!(check(&inputs(vec![], CANCELLED)).violations, 1, "never cancelled at all");
        let unknown = vec![cancel(100, Kind::Invoke, None), cancel(5_100, Kind::Info, None)];
        assert_eq!(check(&inputs(unknown, CANCELLED)).violations, 0, "an unknown outcome may have applied");
    }
}
