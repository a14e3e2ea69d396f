//! Tenants never see each other's objects: a read of the workload tenant's task ids by
//! another tenant is always answered "not found", and a listing shows only the caller's
//! tasks: none carrying another tenant, none of the ids acknowledged to another tenant.

use std::collections::BTreeSet;

use super::{Finding, Inputs, acknowledged, foreign_tasks, pages};
use crate::history::{Kind, Op};
use crate::workload::TENANT;

pub fn check(i: &Inputs) -> Finding {
    let mut f = Finding::new("tenants never see each other's tasks");
    for e in i.events.iter().filter(|e| e.kind == Kind::Ok) {
        if let Op::ForeignGet { task, as_tenant, seen: Some(true) } = &e.op {
            f.violation(|| format!("tenant {as_tenant} read task {task} at {} ms", e.t_ms));
        }
    }
    let ours: BTreeSet<u64> = acknowledged(&i.events).map(|(_, _, task)| task).collect();
    let foreign = foreign_tasks(&i.events);
    for p in pages(&i.events) {
        let others = if p.as_tenant == TENANT { &foreign } else { &ours };
        for l in p.tasks.iter().filter(|l| l.tenant != p.as_tenant || others.contains(&l.id)) {
            f.violation(|| {
                format!("tenant {} listed task {} of tenant {} at {} ms", p.as_tenant, l.id, l.tenant, p.t_ms)
            });
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::{ev, listed, page, queued};
    use crate::workload::INTRUDER;

    #[test]
    fn another_tenants_task_in_a_listing_is_a_violation() {
        let foreign = Op::ForeignQueue { as_tenant: INTRUDER.into(), key: "i".into(), task: Some(9) };
        let mut i =
            Inputs { events: vec![queued(1, "k", 1, 3), ev(2, "intruder", Kind::Ok, foreign)], ..Default::default() };
        i.events.push(page(10, TENANT, 0, 5, vec![listed(3, TENANT, "queued")]));
        i.events.push(page(11, INTRUDER, 0, 5, vec![listed(9, INTRUDER, "delayed")]));
        assert_eq!(check(&i).violations, 0);
        i.events.push(page(12, TENANT, 0, 5, vec![listed(9, INTRUDER, "delayed")]));
        assert_eq!(check(&i).violations, 1, "the intruder's task in the workload tenant's listing");
        i.events.push(page(13, INTRUDER, 0, 5, vec![listed(3, INTRUDER, "queued")]));
        assert_eq!(check(&i).violations, 2, "a workload task id in the intruder's listing, whatever it claims");
        i.events.push(ev(
            14,
            "client-0",
            Kind::Ok,
            Op::ForeignGet { task: 3, as_tenant: INTRUDER.into(), seen: Some(true) },
        ));
        assert_eq!(check(&i).violations, 3, "a read of another tenant's task");
    }
}
