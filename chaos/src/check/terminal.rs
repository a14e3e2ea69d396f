//! A terminal state and result never change once observed: after a read or a listing
//! saw a task finished, every later read and listing (and the final state) shows the same
//! state, exit code and attempt count.

use std::collections::BTreeMap;

use super::{Finding, Inputs, observations};
use crate::history::TaskView;

pub fn check(i: &Inputs) -> Finding {
    let mut f = Finding::new("a terminal state never changes");
    let mut first: BTreeMap<u64, (u64, TaskView)> = BTreeMap::new();
    for (t, task, v) in observations(&i.events) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::{ev, listed, page, view};
    use crate::history::{Kind, Op};

    #[test]
    fn a_finished_task_seen_in_a_listing_that_later_changes_is_a_violation() {
        let get = |t, state| ev(t, "client-1", Kind::Ok, Op::Get { task: 7, seen: Some(view(state)) });
        let mut i = Inputs::default();
        i.final_tasks.insert(7, view("complete"));
        i.events = vec![get(100, "running"), page(200, "chaos", 0, 10, vec![listed(7, "chaos", "complete")])];
        assert_eq!(check(&i).violations, 0);
        i.events.push(get(300, "queued"));
        assert_eq!(check(&i).violations, 1, "a later read");
        i.events.pop();
        i.final_tasks.insert(7, view("cancelled"));
        assert_eq!(check(&i).violations, 1, "the final state");
    }
}
