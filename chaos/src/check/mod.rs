//! The checker: invariants over a run's history, the witness's executions and the final
//! state, one module per invariant. Each reports how many violations it found and the
//! first few examples; a run passes when every count is zero.
//!
//! | invariant | module |
//! |---|---|
//! | no acknowledged task lost | [`lost`] |
//! | no task that was never queued | [`phantom`] |
//! | one idempotency key gives at most one task | [`idempotency`] |
//! | a terminal state and result never change once observed (reads and listings) | [`terminal`] |
//! | an acknowledged cancel ends the task cancelled | [`cancel`] |
//! | a listing shows only tasks its tenant queued, in order, within its page | [`listing`] |
//! | no stale-epoch call accepted | [`stale`] |
//! | a leader cut off from its quorum stops serving leases within the TTL | [`authority`] |
//! | tenants never see each other's tasks (reads and listings) | [`isolation`] |
//! | leader-stamped time never goes back | [`clock`] |
//! | executions of one task never overlap beyond the kill grace, epochs increase, a completed task ran to its end | [`executions`] |
//! | each lease runs one container, epochs run ≤ leases granted, lost leases ≤ 5 | [`attempts`] |
//! | after heal: all work ends, members converge, writes are accepted | [`settle`] |
//! | no panic in any process's log | [`logs`] |

pub mod attempts;
pub mod authority;
pub mod cancel;
pub mod clock;
pub mod executions;
pub mod idempotency;
pub mod isolation;
pub mod listing;
pub mod logs;
pub mod lost;
pub mod phantom;
pub mod settle;
pub mod stale;
pub mod terminal;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::history::{Event, Kind, Listed, Op, TaskView};
use crate::witness::Execution;

/// Everything a run produced that the invariants look at.
#[derive(Debug, Default)]
pub struct Inputs {
    pub events: Vec<Event>,
    /// Executions whose container is gone, and those still running at the end.
    pub executions: Vec<Execution>,
    pub still_running: Vec<Execution>,
    /// Every task of the workload's tenant at the end, by id.
    pub final_tasks: BTreeMap<u64, TaskView>,
    /// Process name → its log.
    pub logs: Vec<(String, String)>,
    pub settle: settle::Settled,
    /// How far an older execution may outlive the start of a newer one: the agent's stop
    /// grace plus measurement slack.
    pub overlap_allowance_ms: u64,
    pub lease_ttl_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub invariant: &'static str,
    pub violations: usize,
    pub examples: Vec<String>,
}

const EXAMPLES: usize = 5;

impl Finding {
    pub fn new(invariant: &'static str) -> Self {
        Finding { invariant, violations: 0, examples: Vec::new() }
    }

    pub fn violation(&mut self, example: impl FnOnce() -> String) {
        self.violations += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(example());
        }
    }
}

pub fn check_all(i: &Inputs) -> Vec<Finding> {
    vec![
        lost::check(i),
        phantom::check(i),
        idempotency::check(i),
        terminal::check(i),
        cancel::check(i),
        listing::check(i),
        stale::check(i),
        authority::check(i),
        isolation::check(i),
        clock::check(i),
        executions::check(i),
        attempts::check(i),
        settle::check(i),
        logs::check(i),
    ]
}

/// Acknowledged queue calls: (key, payload id, task id).
pub fn acknowledged(events: &[Event]) -> impl Iterator<Item = (&str, u64, u64)> {
    events.iter().filter(|e| e.kind == Kind::Ok).filter_map(|e| match &e.op {
        Op::Queue { key, payload_id, task: Some(t) } => Some((key.as_str(), *payload_id, *t)),
        _ => None,
    })
}

/// What reads saw of tasks, in history order: (completed at, task, view), from `GetTask`
/// answers and listing pages.
pub fn observations(events: &[Event]) -> impl Iterator<Item = (u64, u64, &TaskView)> {
    events.iter().filter(|e| e.kind == Kind::Ok).flat_map(|e| {
        let seen: Vec<(u64, u64, &TaskView)> = match &e.op {
            Op::Get { task, seen: Some(v) } => vec![(e.t_ms, *task, v)],
            Op::List { page: Some(page), .. } => page.iter().map(|l| (e.t_ms, l.id, &l.view)).collect(),
            _ => Vec::new(),
        };
        seen
    })
}

/// One answered listing page.
pub struct Page<'a> {
    pub t_ms: u64,
    pub as_tenant: &'a str,
    pub after_id: u64,
    pub limit: u32,
    pub tasks: &'a [Listed],
}

pub fn pages(events: &[Event]) -> impl Iterator<Item = Page<'_>> {
    events.iter().filter(|e| e.kind == Kind::Ok).filter_map(|e| match &e.op {
        Op::List { as_tenant, after_id, limit, page: Some(tasks), .. } => {
            Some(Page { t_ms: e.t_ms, as_tenant, after_id: *after_id, limit: *limit, tasks })
        }
        _ => None,
    })
}

/// Task ids acknowledged to the intruder tenant's own queue calls.
pub fn foreign_tasks(events: &[Event]) -> std::collections::BTreeSet<u64> {
    events
        .iter()
        .filter(|e| e.kind == Kind::Ok)
        .filter_map(|e| match &e.op {
            Op::ForeignQueue { task: Some(t), .. } => Some(*t),
            _ => None,
        })
        .collect()
}

/// Builders of hand-made histories for the checkers' unit tests.
#[cfg(test)]
pub mod testing {
    use crate::history::{Event, Kind, Listed, Op, TaskView};

    pub fn ev(t_ms: u64, process: &str, kind: Kind, op: Op) -> Event {
        Event { t_ms, process: process.into(), kind, op, error: None }
    }

    /// A refused call, its status code first in the error as the workload records it.
    pub fn refused(t_ms: u64, process: &str, op: Op, code: &str) -> Event {
        Event { error: Some(format!("{code}: refused")), ..ev(t_ms, process, Kind::Fail, op) }
    }

    pub fn view(state: &str) -> TaskView {
        TaskView {
            state: state.into(),
            exit_code: if state == "complete" { 0 } else { -1 },
            attempts: 1,
            lost_leases: 0,
            payload_id: None,
            created_ms: 0,
        }
    }

    pub fn listed(id: u64, tenant: &str, state: &str) -> Listed {
        Listed { id, tenant: tenant.into(), view: view(state) }
    }

    pub fn page(t_ms: u64, as_tenant: &str, after_id: u64, limit: u32, tasks: Vec<Listed>) -> Event {
        let op = Op::List { as_tenant: as_tenant.into(), after_id, limit, page: Some(tasks), next_after_id: 0 };
        ev(t_ms, "client-0", Kind::Ok, op)
    }

    pub fn queued(t_ms: u64, key: &str, payload_id: u64, task: u64) -> Event {
        ev(t_ms, "client-0", Kind::Ok, Op::Queue { key: key.into(), payload_id, task: Some(task) })
    }
}
