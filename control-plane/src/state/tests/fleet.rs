//! Clusters and agent registrations: who may place work where, and what an agent serves.

use super::*;
use crate::state::fleet::{AgentRegistration, allowed};

fn cluster(name: &str, owner: Option<&str>) -> Command {
    Command::CreateCluster { name: name.into(), owner: owner.map(String::from), guaranteed_slots: 4 }
}

fn register(id: &str, cluster: &str, region: &str) -> Command {
    Command::RegisterAgent {
        registration: AgentRegistration {
            id: id.into(),
            cluster: cluster.into(),
            region: region.into(),
            vpc: String::new(),
            ip_pool: String::new(),
            egress_ip: String::new(),
            labels: Default::default(),
            registered_ms: 0,
        },
    }
}

fn on(cluster: &str) -> NewTask {
    placed("one", cluster, "")
}

fn denied(cluster: &str) -> Response {
    Response::Rejected(StateError::ClusterNotAllowed { cluster: cluster.into() })
}

#[test]
fn tenants_place_only_on_the_shared_fleet_shared_clusters_and_clusters_they_own() {
    let mut h = Harness::new();
    h.tenant("acme", limits(100, 0), &[spec("one", 0, 0)]);
    h.tenant("globex", limits(100, 0), &[spec("one", 0, 0)]);
    assert!(matches!(h.apply(cluster("acme-c", Some("acme"))), Response::Cluster(_)));
    assert!(matches!(h.apply(cluster("pool", None)), Response::Cluster(_)));

    // Queue: the owner and the shared cluster yes; another tenant's or a missing one, one answer.
    h.queue("acme", vec![on("acme-c"), on("pool"), task("one")]);
    h.queue("globex", vec![on("pool")]);
    let r = h.apply_unchanged(Harness::queue_cmd("globex", None, vec![task("one"), on("acme-c")]));
    assert_eq!(r, denied("acme-c"), "a batch with one refused task is refused whole");
    assert_eq!(h.apply_unchanged(Harness::queue_cmd("globex", None, vec![on("nope")])), denied("nope"));

    // A code's default placement, and a task taking it.
    let sneaky = CodeSpec { placement: on("acme-c").placement.expect("placement"), ..spec("sneaky", 0, 0) };
    let r = h.apply_unchanged(Command::RegisterCode { tenant: "globex".into(), spec: sneaky.clone() });
    assert_eq!(r, denied("acme-c"));
    assert!(matches!(h.apply(Command::RegisterCode { tenant: "acme".into(), spec: sneaky }), Response::Code(_)));
    h.queue("acme", vec![task("sneaky")]);

    // The owner never changes; a cluster with agents cannot go.
    let r = h.apply_unchanged(cluster("acme-c", Some("globex")));
    assert!(matches!(&r, Response::Rejected(StateError::Invalid { field, .. }) if field == "owner"), "{r:?}");
    assert!(matches!(h.apply(register("d1", "acme-c", "eu")), Response::Registration(_)));
    let r = h.apply_unchanged(Command::DeleteCluster { name: "acme-c".into() });
    assert!(matches!(r, Response::Rejected(StateError::Invalid { .. })), "{r:?}");
    let r = h.apply_unchanged(register("d2", "missing", ""));
    assert_eq!(r, Response::Rejected(StateError::ClusterNotFound("missing".into())));

    let loaded = StateMachine::load(&h.kv).expect("load");
    assert_eq!((loaded.clusters(), loaded.registrations()), (h.sm.clusters(), h.sm.registrations()));
}

#[test]
fn agents_serve_what_they_are_registered_for_and_dedicated_agents_only_their_owner() {
    let mut h = Harness::new();
    h.tenant("acme", limits(100, 0), &[spec("one", 0, 0)]);
    h.tenant("globex", limits(100, 0), &[spec("one", 0, 0)]);
    h.apply(cluster("acme-c", Some("acme")));
    h.apply(register("d1", "acme-c", "eu"));
    let dedicated = agent("acme-c", "eu");

    let acme_task = h.queue("acme", vec![on("acme-c")])[0];
    let shared_task = h.queue("globex", vec![task("one")])[0];

    // An unregistered agent claiming the cluster, and the registered one claiming less:
    // nothing granted, nothing recorded.
    assert!(h.lease("intruder", &dedicated, 4).is_empty());
    assert!(h.lease("d1", &agent("", "eu"), 4).is_empty());
    assert!(!h.sm.agents().contains_key("intruder") && !h.sm.agents().contains_key("d1"));
    assert!(allowed(None, &dedicated).is_err());
    assert!(allowed(None, &agent("", "eu")).is_ok(), "unregistered agents may declare a region");

    // As registered: the owner's task only, never the shared one.
    let g = h.lease("d1", &dedicated, 4);
    assert_eq!(g.iter().map(|g| g.task_id).collect::<Vec<_>>(), [acme_task]);
    let g = h.lease("shared", &agent("", ""), 4);
    assert_eq!(g.iter().map(|g| g.task_id).collect::<Vec<_>>(), [shared_task]);

    // The cluster made again for another tenant: acme's waiting work placed on the old one
    // never goes to globex's agents.
    let stranded = h.queue("acme", vec![on("acme-c")])[0];
    assert_eq!(h.apply(Command::DeregisterAgent { id: "d1".into() }), Response::Deregistered);
    assert_eq!(h.apply(Command::DeleteCluster { name: "acme-c".into() }), Response::ClusterDeleted);
    h.apply(cluster("acme-c", Some("globex")));
    h.apply(register("d1", "acme-c", "eu"));
    let globex_task = h.queue("globex", vec![on("acme-c")])[0];
    let g = h.lease("d1", &dedicated, 4);
    assert_eq!(g.iter().map(|g| g.task_id).collect::<Vec<_>>(), [globex_task]);
    assert_eq!(h.task(stranded).state, TaskState::Queued);
    let r = h.apply_unchanged(Command::DeregisterAgent { id: "nobody".into() });
    assert_eq!(r, Response::Rejected(StateError::AgentNotRegistered("nobody".into())));
}
