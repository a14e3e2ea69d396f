//! Placement: which ready task an agent gets next. Pure and deterministic.
//!
//! * Across tenants: round-robin, starting after the tenant served last (the cursor is
//!   replicated state, so every replica makes the same choice).
//! * Within a tenant: strict priority (2 before 1 before 0), then the lowest task id
//!   (FIFO, since ids grow with the log).
//! * A task is eligible only if its placement matches the agent's attributes, its code is
//!   under the code's `max_concurrency` and its tenant under the tenant's.

use std::collections::BTreeMap;

use super::indexes::Indexes;
use super::model::{AgentAttrs, Code, Placement, Task, TaskState, Tenant};
use super::modes::{Serves, TenantMode};

/// Whether a task with placement `p` may run on an agent with attributes `a`.
///
/// `cluster` must be equal (empty on both = the shared fleet: dedicated-cluster agents
/// never take shared work and shared agents never take a dedicated cluster's). An empty
/// `region` matches any region; every label the task asks for must be on the agent.
pub fn matches(p: &Placement, a: &AgentAttrs) -> bool {
    p.cluster == a.cluster
        && (p.region.is_empty() || p.region == a.region)
        && p.labels.iter().all(|(k, v)| a.labels.get(k) == Some(v))
}

/// Picks the next task for an agent, or None. Returns (tenant, task id). `serves`: the
/// tenants whose tasks the agent may run at all (its dedicated cluster's owner, its IP
/// pool's or VPC's tenant, or tenants whose mode admits plain agents; see
/// [`super::modes`]).
pub fn pick(
    idx: &Indexes,
    tenants: &BTreeMap<String, Tenant>,
    codes: &BTreeMap<(String, String), Code>,
    cursor: &str,
    agent: &AgentAttrs,
    serves: Serves<'_>,
) -> Option<(String, u64)> {
    // Tenants after the cursor first, then from the start up to and including it.
    let after = idx.ready.range::<str, _>((std::ops::Bound::Excluded(cursor), std::ops::Bound::Unbounded));
    let before = idx.ready.range::<str, _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(cursor)));
    for (tenant, q) in after.chain(before) {
        if !serves.tenant(tenant) {
            continue;
        }
        if let Some(t) = tenants.get(tenant)
            && t.limits.max_concurrency > 0
            && idx.running_for_tenant(tenant) >= t.limits.max_concurrency
        {
            continue;
        }
        for level in q.by_priority.iter().rev() {
            let mut best: Option<u64> = None;
            for (class_id, ids) in level {
                let Some(first) = ids.first() else { continue };
                if best.is_some_and(|b| b <= *first) {
                    continue;
                }
                let class = idx.class(*class_id);
                if !matches(&class.placement, agent) {
                    continue;
                }
                // A deleted code's tasks wait until it is registered again.
                let Some(code) = codes.get(&(tenant.clone(), class.code.clone())) else { continue };
                let limit = code.max_concurrency;
                if limit > 0 && idx.running_for_code(tenant, &class.code) >= limit {
                    continue;
                }
                best = Some(*first);
            }
            if let Some(id) = best {
                return Some((tenant.clone(), id));
            }
        }
    }
    None
}

/// Why a task that is not running is waiting, from the same rules [`pick`] applies.
/// The first reason that holds is given, in this order: a delay, the code missing, the
/// code's or the tenant's concurrency limit, placement no agent meets, and otherwise a
/// free slot (or its turn behind earlier tasks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// Queued with a delay, until this time.
    Delayed {
        until_ms: u64,
    },
    /// Re-queued after a failed attempt; the retry waits until this time.
    RetryBackoff {
        until_ms: u64,
    },
    /// No code of this name is registered (it was deleted); the task waits for it.
    CodeMissing {
        code: String,
    },
    CodeConcurrency {
        limit: u32,
        running: u32,
    },
    TenantConcurrency {
        limit: u32,
        running: u32,
    },
    /// None of the agents given meets this constraint (`cluster=x`, `region=y`,
    /// `label k=v`, or all of them together); empty when no agent is given at all.
    NoAgentMatches {
        constraint: String,
    },
    /// Eligible: it waits for a free slot on a matching agent, or behind earlier tasks.
    WaitingForSlot,
}

/// Why `task` waits, or None when it does not (running or finished). `agents`: the
/// attributes of the agents to match placement against (the connected ones).
pub fn why_waiting(
    task: &Task,
    idx: &Indexes,
    tenants: &BTreeMap<String, Tenant>,
    codes: &BTreeMap<(String, String), Code>,
    mode: &TenantMode,
    agents: &[AgentAttrs],
) -> Option<Waiting> {
    match task.state {
        TaskState::Delayed if task.attempts > 0 => return Some(Waiting::RetryBackoff { until_ms: task.ready_at_ms }),
        TaskState::Delayed => return Some(Waiting::Delayed { until_ms: task.ready_at_ms }),
        TaskState::Queued => {}
        _ => return None,
    }
    let Some(code) = codes.get(&(task.tenant.clone(), task.code.clone())) else {
        return Some(Waiting::CodeMissing { code: task.code.clone() });
    };
    let running = idx.running_for_code(&task.tenant, &task.code);
    if code.max_concurrency > 0 && running >= code.max_concurrency {
        return Some(Waiting::CodeConcurrency { limit: code.max_concurrency, running });
    }
    if let Some(t) = tenants.get(&task.tenant) {
        let running = idx.running_for_tenant(&task.tenant);
        if t.limits.max_concurrency > 0 && running >= t.limits.max_concurrency {
            return Some(Waiting::TenantConcurrency { limit: t.limits.max_concurrency, running });
        }
    }
    // Only the agents the tenant's mode admits (its pool's, its VPC's, or plain ones).
    let admitted: Vec<&AgentAttrs> = agents.iter().filter(|a| mode.admits(a)).collect();
    if admitted.is_empty() && (!agents.is_empty() || *mode != TenantMode::Shared) {
        return Some(Waiting::NoAgentMatches { constraint: mode.constraint() });
    }
    let agents = admitted;
    if !agents.iter().any(|a| matches(&task.placement, a)) {
        let p = &task.placement;
        let constraint = if agents.is_empty() {
            String::new()
        } else if !agents.iter().any(|a| a.cluster == p.cluster) {
            if p.cluster.is_empty() { "cluster=(shared fleet)".to_string() } else { format!("cluster={}", p.cluster) }
        } else if !p.region.is_empty() && !agents.iter().any(|a| a.region == p.region) {
            format!("region={}", p.region)
        } else if let Some((k, v)) = p.labels.iter().find(|(k, v)| !agents.iter().any(|a| a.labels.get(*k) == Some(*v)))
        {
            format!("label {k}={v}")
        } else {
            "cluster, region and labels together".to_string()
        };
        return Some(Waiting::NoAgentMatches { constraint });
    }
    Some(Waiting::WaitingForSlot)
}

/// How many ready tasks have a placement that none of `agents` (the connected ones) its
/// tenant's mode admits meets: the tasks [`why_waiting`] would report as
/// [`Waiting::NoAgentMatches`] or behind a limit they would meet next. Counted per
/// ready-queue class, so the cost is the number of classes, not of tasks. `modes`: the
/// tenants not in shared mode.
pub fn unplaceable(idx: &Indexes, modes: &BTreeMap<String, TenantMode>, agents: &[AgentAttrs]) -> u64 {
    let plain: Vec<&AgentAttrs> = agents.iter().filter(|a| TenantMode::Shared.admits(a)).collect();
    let mut n = 0;
    for (tenant, q) in &idx.ready {
        let admitted: Vec<&AgentAttrs> = match modes.get(tenant) {
            Some(m) => agents.iter().filter(|a| m.admits(a)).collect(),
            None => plain.clone(),
        };
        for level in &q.by_priority {
            for (class_id, ids) in level {
                if !admitted.iter().any(|a| matches(&idx.class(*class_id).placement, a)) {
                    n += ids.len() as u64;
                }
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(cluster: &str, region: &str, labels: &[(&str, &str)]) -> AgentAttrs {
        AgentAttrs {
            cluster: cluster.into(),
            region: region.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn constraint_matching() {
        let any = Placement::default();
        assert!(matches(&any, &attrs("", "eu", &[("gpu", "1")])));
        assert!(!matches(&any, &attrs("acme", "", &[])), "dedicated agents take no shared work");
        let acme = Placement { cluster: "acme".into(), ..Default::default() };
        assert!(matches(&acme, &attrs("acme", "", &[])));
        assert!(!matches(&acme, &attrs("", "", &[])));
        let eu = Placement { region: "eu".into(), ..Default::default() };
        assert!(matches(&eu, &attrs("", "eu", &[])));
        assert!(!matches(&eu, &attrs("", "us", &[])));
        let gpu = Placement { labels: [("gpu".to_string(), "1".to_string())].into(), ..Default::default() };
        assert!(matches(&gpu, &attrs("", "", &[("gpu", "1"), ("ssd", "y")])));
        assert!(!matches(&gpu, &attrs("", "", &[("gpu", "0")])));
    }
}
