//! The checker: invariants over a run's history, the witness's executions and the final
//! state, one module per invariant. Each reports how many violations it found and the
//! first few examples; a run passes when every count is zero.
//!
//! | invariant | module |
//! |---|---|
//! | no acknowledged task lost | [`lost`] |
//! | no task that was never queued | [`phantom`] |
//! | one idempotency key gives at most one task | [`idempotency`] |
//! | a terminal state and result never change once observed | [`terminal`] |
//! | no stale-epoch call accepted | [`stale`] |
//! | a leader cut off from its quorum stops serving leases within the TTL | [`authority`] |
//! | tenants never see each other's tasks | [`isolation`] |
//! | leader-stamped time never goes back | [`clock`] |
//! | executions of one task never overlap beyond the kill grace, epochs increase, a completed task ran to its end | [`executions`] |
//! | each lease runs one container, epochs run ≤ leases granted, lost leases ≤ 5 | [`attempts`] |
//! | after heal: all work ends, members converge, writes are accepted | [`settle`] |
//! | no panic in any process's log | [`logs`] |

pub mod attempts;
pub mod authority;
pub mod clock;
pub mod executions;
pub mod idempotency;
pub mod isolation;
pub mod logs;
pub mod lost;
pub mod phantom;
pub mod settle;
pub mod stale;
pub mod terminal;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::history::{Event, Kind, Op, TaskView};
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
