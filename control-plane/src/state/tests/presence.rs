//! Agent presence: gone marks, what clears them, and what "no connected agent" then means.

use super::*;
use crate::state::placement::{Waiting, why_waiting};

fn presence(h: &Harness, gone: &[&str], seen: &[(&str, AgentAttrs)]) -> Command {
    Command::AgentPresence {
        term: h.term,
        gone: gone.iter().map(|s| s.to_string()).collect(),
        seen: seen.iter().map(|(id, attrs)| SeenAgent { id: id.to_string(), attrs: attrs.clone(), slots: 2 }).collect(),
    }
}

fn connected(h: &Harness) -> Vec<String> {
    h.sm.connected_agents().map(|a| a.id.clone()).collect()
}

#[test]
fn gone_marks_known_agents_a_lease_or_a_sighting_clears_them_and_they_survive_a_reload() {
    let mut h = Harness::new();
    h.tenant("acme", limits(100, 0), &[spec("one", 0, 0)]);
    let eu = agent("", "eu");
    let us = agent("", "us");

    // Seen agents are recorded without ever leasing; unknown ones cannot be marked gone.
    let r = h.apply(presence(&h, &["nobody"], &[("a-eu", eu.clone()), ("a-us", us.clone())]));
    assert_eq!(r, Response::Presence { gone: 0, seen: 2 });
    assert_eq!(connected(&h), ["a-eu", "a-us"]);

    h.now_ms += 1_000;
    let r = h.apply(presence(&h, &["a-eu", "a-eu"], &[]));
    assert_eq!(r, Response::Presence { gone: 1, seen: 0 }, "marked once");
    assert_eq!(connected(&h), ["a-us"]);
    assert_eq!(h.sm.agents_gone().get("a-eu"), Some(&h.now_ms));

    // The state reloaded from its tables has the same marks.
    let loaded = StateMachine::load(&h.kv).expect("load");
    assert_eq!(loaded.agents_gone(), h.sm.agents_gone());

    // A task only a-eu could run: no connected agent matches it.
    let id = h.queue("acme", vec![placed("one", "", "eu")])[0];
    let agents: Vec<AgentAttrs> = h.sm.connected_agents().map(|a| a.attrs.clone()).collect();
    let t = h.task(id);
    let why = why_waiting(&t, h.sm.indexes(), h.sm.tenants(), h.sm.codes(), h.sm.tenant_mode("acme"), &agents);
    assert_eq!(why, Some(Waiting::NoAgentMatches { constraint: "region=eu".into() }));
    assert_eq!(placement::unplaceable(h.sm.indexes(), h.sm.tenant_modes(), &agents), 1);

    // Its lease call clears the mark in the same entry, and it gets the task.
    let g = h.lease("a-eu", &eu, 1);
    assert_eq!(g.len(), 1);
    assert!(h.sm.agents_gone().is_empty());
    assert_eq!(connected(&h), ["a-eu", "a-us"]);

    // Marked gone again, then seen with new attributes: recorded and connected.
    h.apply(presence(&h, &["a-eu"], &[]));
    let gpu = AgentAttrs { labels: [("gpu".to_string(), "1".to_string())].into(), ..eu.clone() };
    assert_eq!(h.apply(presence(&h, &[], &[("a-eu", gpu.clone())])), Response::Presence { gone: 0, seen: 1 });
    assert_eq!(h.sm.agents()["a-eu"].attrs, gpu);
    assert!(h.sm.agents_gone().is_empty());
}

#[test]
fn a_deposed_leaders_presence_and_bad_input_change_nothing() {
    let mut h = Harness::new();
    h.apply(presence(&h, &[], &[("a-eu", agent("", "eu"))]));
    h.term += 1;
    let stale = Command::AgentPresence { term: h.term - 1, gone: vec!["a-eu".into()], seen: vec![] };
    assert_stale_term_refused(&mut h, stale);

    let too_many = Command::AgentPresence {
        term: h.term,
        gone: (0..=crate::state::presence::MAX_PRESENCE_CHANGES).map(|i| format!("a{i}")).collect(),
        seen: vec![],
    };
    let r = h.apply_unchanged(too_many);
    assert!(matches!(&r, Response::Rejected(StateError::Invalid { field, .. }) if field == "gone"), "{r:?}");

    let bad = AgentAttrs { labels: [("bad key!".to_string(), "1".to_string())].into(), ..Default::default() };
    let r = h.apply_unchanged(presence(&h, &["a-eu"], &[("a-new", bad)]));
    assert!(
        matches!(&r, Response::Rejected(StateError::Invalid { field, .. }) if field.starts_with("seen[0]")),
        "{r:?}"
    );
    assert!(h.sm.agents_gone().is_empty(), "the gone half of a refused command is not applied");
}
