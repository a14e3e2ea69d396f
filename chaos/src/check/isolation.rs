//! Tenants never see each other's objects: a read of the workload tenant's task ids by
//! another tenant is always answered "not found".

use super::{Finding, Inputs};
use crate::history::{Kind, Op};

pub fn check(i: &Inputs) -> Finding {
    let mut f = Finding::new("tenants never see each other's tasks");
    for e in i.events.iter().filter(|e| e.kind == Kind::Ok) {
        if let Op::ForeignGet { task, as_tenant, seen: Some(true) } = &e.op {
            f.violation(|| format!("tenant {as_tenant} read task {task} at {} ms", e.t_ms));
        }
    }
    f
}
