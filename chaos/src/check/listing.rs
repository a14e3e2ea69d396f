//! A listing shows only tasks its tenant queued, in order, within its page: every task a
//! page of the workload tenant shows is one of that tenant's tasks at the end (whose
//! payloads [`super::phantom`] checks were queued), and every task a page of the intruder
//! shows is one the intruder queued; a page holds at most `limit` tasks, in increasing
//! id order, all after `after_id`. (Tasks of the other tenant are [`super::isolation`]'s
//! to report; they are skipped here.)

use super::{Finding, Inputs, foreign_tasks, pages};
use crate::workload::{INTRUDER, TENANT};

pub fn check(i: &Inputs) -> Finding {
    let mut f = Finding::new("a listing shows only queued tasks, in order");
    let foreign = foreign_tasks(&i.events);
    for p in pages(&i.events) {
        if p.tasks.len() > p.limit as usize {
            f.violation(|| format!("a page at {} ms holds {} tasks, limit {}", p.t_ms, p.tasks.len(), p.limit));
        }
        let mut prev = p.after_id;
        for l in p.tasks {
            if l.id <= prev {
                f.violation(|| {
                    format!("a page after {} at {} ms shows task {} after {prev}", p.after_id, p.t_ms, l.id)
                });
            }
            prev = prev.max(l.id);
            if l.tenant != p.as_tenant {
                continue;
            }
            let queued = match p.as_tenant {
                TENANT => i.final_tasks.contains_key(&l.id),
                INTRUDER => foreign.contains(&l.id),
                _ => true,
            };
            if !queued {
                f.violation(|| {
                    format!(
                        "tenant {} listed task {} at {} ms, which it never queued or lost",
                        p.as_tenant, l.id, p.t_ms
                    )
                });
            }
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::{ev, listed, page, view};
    use crate::history::{Kind, Op};

    fn inputs(events: Vec<crate::history::Event>) -> Inputs {
        let mut i = Inputs { events, ..Default::default() };
        i.events.insert(
            0,
            ev(
                1,
                "intruder",
                Kind::Ok,
                Op::ForeignQueue { as_tenant: INTRUDER.into(), key: "i".into(), task: Some(9) },
            ),
        );
        for id in [3, 5, 7] {
            i.final_tasks.insert(id, view("complete"));
        }
        i
    }

    #[test]
    fn a_listed_task_never_queued_is_a_violation() {
        let good = vec![
            page(10, TENANT, 0, 3, vec![listed(3, TENANT, "queued"), listed(5, TENANT, "running")]),
            page(20, INTRUDER, 0, 3, vec![listed(9, INTRUDER, "delayed")]),
        ];
        assert_eq!(check(&inputs(good)).violations, 0);
        let phantom = vec![page(10, TENANT, 0, 3, vec![listed(3, TENANT, "queued"), listed(4, TENANT, "queued")])];
        assert_eq!(check(&inputs(phantom)).violations, 1);
        let foreign_phantom = vec![page(10, INTRUDER, 0, 3, vec![listed(8, INTRUDER, "queued")])];
        assert_eq!(check(&inputs(foreign_phantom)).violations, 1);
    }

    #[test]
    fn pages_out_of_order_over_their_limit_or_before_their_start_are_violations() {
        let tasks = |ids: &[u64]| ids.iter().map(|id| listed(*id, TENANT, "complete")).collect::<Vec<_>>();
        assert_eq!(check(&inputs(vec![page(10, TENANT, 4, 2, tasks(&[5, 7]))])).violations, 0);
        assert_eq!(check(&inputs(vec![page(10, TENANT, 0, 2, tasks(&[3, 5, 7]))])).violations, 1, "over the limit");
        assert_eq!(check(&inputs(vec![page(10, TENANT, 0, 3, tasks(&[5, 3]))])).violations, 1, "out of order");
        assert_eq!(check(&inputs(vec![page(10, TENANT, 5, 3, tasks(&[5, 7]))])).violations, 1, "not after after_id");
    }
}
