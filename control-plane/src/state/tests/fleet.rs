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

#[test]
fn codes_and_tasks_over_the_ceilings_of_where_they_would_run_are_refused() {
    use crate::state::fleet::{Ceilings, DEFAULT_CEILINGS};
    let mut h = Harness::new();
    h.tenant("acme", limits(100, 0), &[]);
    let with = |memory_bytes: u64, pids: u32| CodeSpec {
        limits: CodeLimits { memory_bytes, pids, ..Default::default() },
        ..spec("big", 0, 0)
    };
    let register = |spec: CodeSpec| Command::RegisterCode { tenant: "acme".into(), spec };
    let field = |r: &Response| match r {
        Response::Rejected(StateError::Invalid { field, reason }) => format!("{field}: {reason}"),
        other => format!("{other:?}"),
    };

    // Past the shared fleet's default ceiling, and past the absolute bound.
    let r = h.apply_unchanged(register(with(128 << 30, 0)));
    assert_eq!(
        field(&r),
        format!("limits.memory_bytes: {} is over the shared fleet's ceiling of {}", 128u64 << 30, 64u64 << 30)
    );
    let r = h.apply_unchanged(register(with(0, 4_000_000_000)));
    assert_eq!(field(&r), "limits.pids: 4000000000 is over the limit of 4194304");

    // The operator raises the shared ceiling; the same code is accepted.
    let raised = Ceilings { max_memory_bytes: 256 << 30, ..DEFAULT_CEILINGS };
    let r = h.apply(Command::SetCeilings { cluster: String::new(), ceilings: raised });
    assert_eq!(r, Response::Ceilings(raised));
    assert!(matches!(h.apply(register(with(128 << 30, 0))), Response::Code(_)));
    let bad = Ceilings { max_pids: 5_000_000, ..DEFAULT_CEILINGS };
    let r = h.apply_unchanged(Command::SetCeilings { cluster: String::new(), ceilings: bad });
    assert!(field(&r).starts_with("ceilings.max_pids: "), "{r:?}");

    // A small cluster: the code may run on the shared fleet, not be queued onto it.
    h.apply(cluster("small", Some("acme")));
    let small = Ceilings { max_memory_bytes: 1 << 30, ..DEFAULT_CEILINGS };
    h.apply(Command::SetCeilings { cluster: "small".into(), ceilings: small });
    h.queue("acme", vec![task("big")]);
    let r = h.apply_unchanged(Harness::queue_cmd("acme", None, vec![placed("big", "small", "")]));
    assert_eq!(
        field(&r),
        format!("limits.memory_bytes: {} is over cluster \"small\"'s ceiling of {}", 128u64 << 30, 1u64 << 30)
    );
    let r = h.apply_unchanged(Command::SetCeilings { cluster: "none".into(), ceilings: small });
    assert_eq!(r, Response::Rejected(StateError::ClusterNotFound("none".into())));

    let loaded = StateMachine::load(&h.kv).expect("load");
    assert_eq!((loaded.ceilings(""), loaded.ceilings("small")), (raised, small));
}
