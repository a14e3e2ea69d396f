//! "Why is my task not running", from the placement rules: each reason in turn.

use super::*;
use crate::state::placement::{Waiting, why_waiting};

impl Harness {
    fn why(&self, id: u64, agents: &[AgentAttrs]) -> Option<Waiting> {
        let t = self.task(id);
        why_waiting(&t, self.sm.indexes(), self.sm.tenants(), self.sm.codes(), self.sm.tenant_mode(&t.tenant), agents)
    }
}

fn attrs(region: &str, labels: &[(&str, &str)]) -> AgentAttrs {
    AgentAttrs {
        region: region.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

#[test]
fn each_reason_a_queued_task_waits_for() {
    let mut h = Harness::new();
    let retry = RetryOverride { retry_delay_ms: Some(5_000), backoff_max_ms: None, retry_on: None };
    h.tenant("acme", limits(100, 0), &[spec("one", 1, 0), CodeSpec { retry, ..spec("flaky", 0, 2) }]);
    h.tenant("capped", limits(100, 1), &[spec("any", 0, 0)]);
    let eu = attrs("eu", &[("gpu", "1")]);
    let only_eu = std::slice::from_ref(&eu);

    // A delay, and a retry's backoff.
    let delayed = h.queue("acme", vec![NewTask { delay_ms: 30_000, ..task("one") }])[0];
    assert_eq!(h.why(delayed, only_eu), Some(Waiting::Delayed { until_ms: h.now_ms + 30_000 }));
    let flaky = h.queue("acme", vec![task("flaky")])[0];
    let g = h.lease("a1", &eu, 1);
    assert_eq!(g[0].task_id, flaky);
    h.complete("a1", flaky, g[0].epoch, Outcome::Error).expect("current");
    assert!(matches!(h.why(flaky, only_eu), Some(Waiting::RetryBackoff { until_ms }) if until_ms > h.now_ms));

    // The code's concurrency limit (1 running), then the tenant's.
    let first = h.queue("acme", vec![task("one")])[0];
    let g = h.lease("a1", &eu, 1);
    assert_eq!(g[0].task_id, first);
    let second = h.queue("acme", vec![task("one")])[0];
    assert_eq!(h.why(second, only_eu), Some(Waiting::CodeConcurrency { limit: 1, running: 1 }));
    let c1 = h.queue("capped", vec![task("any")])[0];
    let c2 = h.queue("capped", vec![task("any")])[0];
    let g = h.lease("a2", &eu, 1);
    assert_eq!(g[0].task_id, c1);
    assert_eq!(h.why(c2, only_eu), Some(Waiting::TenantConcurrency { limit: 1, running: 1 }));

    // Placement no agent meets, naming the constraint.
    let placed = |region: &str, labels: &[(&str, &str)], cluster: &str| NewTask {
        placement: Some(Placement {
            cluster: cluster.into(),
            region: region.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }),
        ..task("any")
    };
    let mut h2 = Harness::new();
    h2.tenant("t", limits(100, 0), &[spec("any", 0, 0)]);
    h2.cluster("acme", None, &[]);
    let us = h2.queue("t", vec![placed("us", &[], "")])[0];
    let why = |h: &Harness, id| h.why(id, &[eu.clone(), attrs("ap", &[])]);
    assert_eq!(why(&h2, us), Some(Waiting::NoAgentMatches { constraint: "region=us".into() }));
    let ssd = h2.queue("t", vec![placed("", &[("ssd", "y")], "")])[0];
    assert_eq!(why(&h2, ssd), Some(Waiting::NoAgentMatches { constraint: "label ssd=y".into() }));
    let dedicated = h2.queue("t", vec![placed("", &[], "acme")])[0];
    assert_eq!(why(&h2, dedicated), Some(Waiting::NoAgentMatches { constraint: "cluster=acme".into() }));
    // Each constraint met by some agent, but by none together.
    let both = h2.queue("t", vec![placed("ap", &[("gpu", "1")], "")])[0];
    assert_eq!(
        why(&h2, both),
        Some(Waiting::NoAgentMatches { constraint: "cluster, region and labels together".into() })
    );
    // No agent at all: no constraint to name.
    assert_eq!(h2.why(us, &[]), Some(Waiting::NoAgentMatches { constraint: String::new() }));
    // Agents, but only dedicated ones: the shared fleet is the constraint.
    let acme = AgentAttrs { cluster: "acme".into(), ..Default::default() };
    assert_eq!(
        h2.why(us, std::slice::from_ref(&acme)),
        Some(Waiting::NoAgentMatches { constraint: "cluster=(shared fleet)".into() })
    );
    // Eligible: waits for a slot.
    let free = h2.queue("t", vec![task("any")])[0];
    assert_eq!(why(&h2, free), Some(Waiting::WaitingForSlot));
    // The code deleted; a running or finished task is not waiting.
    assert_eq!(h2.apply(Command::DeleteCode { tenant: "t".into(), name: "any".into() }), Response::CodeDeleted);
    assert_eq!(why(&h2, free), Some(Waiting::CodeMissing { code: "any".into() }));
    assert_eq!(h.why(first, only_eu), None, "a running task is not waiting");
}
