//! Tenant modes and IP pools: whitelist tenants run on their pool's agents only, VPC
//! tenants on their VPC's agents (and plain ones with fallback), and pool or VPC agents
//! never run anyone else's tasks.

use super::*;
use crate::state::fleet::AgentRegistration;
use crate::state::modes::TenantMode;
use crate::state::placement::{Waiting, why_waiting};

fn pool(name: &str, addrs: &[&str]) -> Command {
    Command::CreatePool { name: name.into(), addresses: addrs.iter().map(|a| a.to_string()).collect() }
}

fn mode(tenant: &str, mode: TenantMode) -> Command {
    Command::SetTenantMode { tenant: tenant.into(), mode }
}

fn whitelist(pool: &str) -> TenantMode {
    TenantMode::IpWhitelist { pool: pool.into() }
}

fn vpc(name: &str, fallback: bool) -> TenantMode {
    TenantMode::Vpc { vpc: name.into(), fallback }
}

fn register(id: &str, attrs: &AgentAttrs) -> Command {
    Command::RegisterAgent {
        registration: AgentRegistration {
            id: id.into(),
            cluster: attrs.cluster.clone(),
            region: attrs.region.clone(),
            vpc: attrs.vpc.clone(),
            ip_pool: attrs.ip_pool.clone(),
            egress_ip: attrs.egress_ip.clone(),
            labels: Default::default(),
            registered_ms: 0,
        },
    }
}

fn pooled(pool: &str, ip: &str) -> AgentAttrs {
    AgentAttrs { ip_pool: pool.into(), egress_ip: ip.into(), ..Default::default() }
}

fn in_vpc(name: &str) -> AgentAttrs {
    AgentAttrs { vpc: name.into(), ..Default::default() }
}

fn invalid(r: &Response) -> String {
    match r {
        Response::Rejected(StateError::Invalid { field, reason }) => format!("{field}: {reason}"),
        other => format!("{other:?}"),
    }
}

fn ids(g: &[Grant]) -> Vec<u64> {
    g.iter().map(|g| g.task_id).collect()
}

#[test]
fn pools_and_modes_are_validated_and_their_rules_hold_across_a_reload() {
    let mut h = Harness::new();
    h.tenant("acme", limits(100, 0), &[]);
    h.tenant("globex", limits(100, 0), &[]);

    assert_eq!(invalid(&h.apply_unchanged(pool("p", &[]))), "addresses: a pool needs at least one address");
    assert_eq!(
        invalid(&h.apply_unchanged(pool("p", &["10.0.0.300"]))),
        "addresses: \"10.0.0.300\" is not an IPv4 address"
    );
    assert_eq!(
        invalid(&h.apply_unchanged(pool("p", &["127.0.0.1"]))),
        "addresses: 127.0.0.1 cannot be an egress address"
    );
    let r = h.apply(pool("p", &["10.0.0.11", "10.0.0.10", "10.0.0.11"]));
    assert!(matches!(&r, Response::Pool(p) if p.addresses == ["10.0.0.10", "10.0.0.11"]), "{r:?}");

    // Modes: the pool must exist, and belongs to one tenant; a VPC name likewise.
    let r = h.apply_unchanged(mode("acme", whitelist("nope")));
    assert_eq!(r, Response::Rejected(StateError::PoolNotFound("nope".into())));
    assert_eq!(h.apply(mode("acme", whitelist("p"))), Response::TenantMode(whitelist("p")));
    assert_eq!(invalid(&h.apply_unchanged(mode("globex", whitelist("p")))), "pool: pool \"p\" is tenant \"acme\"'s");
    assert_eq!(h.apply(mode("globex", vpc("corp", false))), Response::TenantMode(vpc("corp", false)));
    h.tenant("initech", limits(100, 0), &[]);
    assert_eq!(
        invalid(&h.apply_unchanged(mode("initech", vpc("corp", true)))),
        "vpc: VPC \"corp\" is tenant \"globex\"'s"
    );
    let r = h.apply_unchanged(mode("nobody", TenantMode::Shared));
    assert_eq!(r, Response::Rejected(StateError::UnknownTenant("nobody".into())));

    // Registrations: the egress address must be the pool's; a pool or a VPC, not both; the
    // VPC must be a tenant's.
    let r = h.apply_unchanged(register("a1", &pooled("p", "10.0.0.99")));
    assert!(invalid(&r).starts_with("egress_ip: \"10.0.0.99\" is not one of pool \"p\"'s addresses"), "{r:?}");
    assert_eq!(
        invalid(&h.apply_unchanged(register("a1", &pooled("", "10.0.0.10")))),
        "egress_ip: is only for an agent registered with an IP pool"
    );
    let both = AgentAttrs { vpc: "corp".into(), ..pooled("p", "10.0.0.10") };
    assert_eq!(
        invalid(&h.apply_unchanged(register("a1", &both))),
        "ip_pool: an agent serves an IP pool or a VPC, not both"
    );
    assert!(invalid(&h.apply_unchanged(register("a1", &in_vpc("other")))).starts_with("vpc: no tenant is in vpc mode"));
    assert!(matches!(h.apply(register("a1", &pooled("p", "10.0.0.10"))), Response::Registration(_)));
    assert!(matches!(h.apply(register("v1", &in_vpc("corp"))), Response::Registration(_)));

    // In use: the pool cannot go, nor lose a registered agent's address.
    assert!(invalid(&h.apply_unchanged(Command::DeletePool { name: "p".into() })).contains("ip_whitelist mode"));
    assert!(
        invalid(&h.apply_unchanged(pool("p", &["10.0.0.11"])))
            .contains("agent \"a1\" is registered with egress address 10.0.0.10")
    );

    let loaded = StateMachine::load(&h.kv).expect("load");
    assert_eq!((loaded.pools(), loaded.tenant_modes()), (h.sm.pools(), h.sm.tenant_modes()));

    // Back to shared, agent gone: the pool can go.
    assert_eq!(h.apply(mode("acme", TenantMode::Shared)), Response::TenantMode(TenantMode::Shared));
    assert_eq!(h.apply(Command::DeregisterAgent { id: "a1".into() }), Response::Deregistered);
    assert_eq!(h.apply(Command::DeletePool { name: "p".into() }), Response::PoolDeleted);
    let r = h.apply_unchanged(Command::DeletePool { name: "p".into() });
    assert_eq!(r, Response::Rejected(StateError::PoolNotFound("p".into())));
    let loaded = StateMachine::load(&h.kv).expect("load");
    assert_eq!((loaded.pools(), loaded.tenant_modes()), (h.sm.pools(), h.sm.tenant_modes()));
}

#[test]
fn each_agent_runs_only_the_tenants_its_pool_vpc_or_plainness_admits() {
    let mut h = Harness::new();
    for t in ["wl", "corp", "corp2", "plain"] {
        h.tenant(t, limits(100, 0), &[spec("one", 0, 0)]);
    }
    h.apply(pool("egress", &["10.0.0.10"]));
    h.apply(pool("unused", &["10.0.0.20"]));
    h.apply(mode("wl", whitelist("egress")));
    h.apply(mode("corp", vpc("corp-net", false)));
    h.apply(mode("corp2", vpc("corp2-net", true)));
    let (pool_agent, idle_pool, vpc_agent, plain) =
        (pooled("egress", "10.0.0.10"), pooled("unused", "10.0.0.20"), in_vpc("corp-net"), agent("", ""));
    for (id, a) in [("pa", &pool_agent), ("ia", &idle_pool), ("va", &vpc_agent)] {
        assert!(matches!(h.apply(register(id, a)), Response::Registration(_)));
    }
    let wl = h.queue("wl", vec![task("one"), task("one")]);
    let corp = h.queue("corp", vec![task("one"), task("one")]);
    let corp2 = h.queue("corp2", vec![task("one")]);
    let shared = h.queue("plain", vec![task("one")]);

    // Waiting: a whitelist task with only plain agents connected names its pool.
    let why = |h: &Harness, id: u64, agents: &[AgentAttrs]| {
        let t = h.task(id);
        why_waiting(&t, h.sm.indexes(), h.sm.tenants(), h.sm.codes(), h.sm.tenant_mode(&t.tenant), agents)
    };
    assert_eq!(
        why(&h, wl[0], std::slice::from_ref(&plain)),
        Some(Waiting::NoAgentMatches { constraint: "ip_pool=egress".into() })
    );
    assert_eq!(
        why(&h, corp[0], &[plain.clone(), pool_agent.clone()]),
        Some(Waiting::NoAgentMatches { constraint: "vpc=corp-net".into() })
    );
    assert_eq!(why(&h, corp2[0], std::slice::from_ref(&plain)), Some(Waiting::WaitingForSlot));
    let constraint = "a shared-fleet agent (no IP pool, no VPC)".to_string();
    assert_eq!(
        why(&h, shared[0], &[pool_agent.clone(), vpc_agent.clone()]),
        Some(Waiting::NoAgentMatches { constraint })
    );
    assert_eq!(
        crate::state::placement::unplaceable(h.sm.indexes(), h.sm.tenant_modes(), std::slice::from_ref(&plain)),
        4
    );

    // The pool no tenant uses serves nobody; the pool agent its tenant only; the VPC
    // agent its tenant only; the plain agent the shared tenant and the VPC tenant that
    // allows fallback, never the whitelist tenant nor the VPC tenant without fallback.
    assert!(h.lease("ia", &idle_pool, 10).is_empty());
    assert_eq!(ids(&h.lease("pa", &pool_agent, 10)), wl);
    assert_eq!(ids(&h.lease("va", &vpc_agent, 10)), corp);
    let mut got = ids(&h.lease("plain-1", &plain, 10));
    got.sort();
    assert_eq!(got, [corp2[0], shared[0]]);

    // A whitelist task, and a VPC task without fallback, queued while only plain agents
    // ask wait for their pool and their VPC.
    let later = h.queue("wl", vec![task("one")]);
    let corp_later = h.queue("corp", vec![task("one")]);
    assert!(h.lease("plain-1", &plain, 10).is_empty());
    assert_eq!(ids(&h.lease("pa", &pool_agent, 10)), later);
    assert_eq!(ids(&h.lease("va", &vpc_agent, 10)), corp_later);
}

#[test]
fn registry_logins_are_kept_per_tenant_bounded_and_survive_a_reload() {
    let mut h = Harness::new();
    h.tenant("acme", limits(100, 0), &[]);
    let set = |registry: &str, login: Option<(&str, &[u8])>| Command::SetRegistryLogin {
        tenant: "acme".into(),
        registry: registry.into(),
        login: login.map(|(u, p)| (u.to_string(), p.to_vec())),
    };
    let saved = |registry: &str, saved: bool| Response::RegistryLogin { registry: registry.into(), saved };
    assert_eq!(h.apply(set("127.0.0.1:5000", Some(("alice", b"sealed")))), saved("127.0.0.1:5000", true));
    assert_eq!(h.sm.registry_login("acme", "127.0.0.1:5000").map(|l| l.username.as_str()), Some("alice"));
    assert!(h.sm.registry_login("acme", "ghcr.io").is_none());
    assert_eq!(
        invalid(&h.apply_unchanged(set("not a host", Some(("u", b"p"))))),
        "registry: \"not a host\" is not a registry host[:port]"
    );
    assert_eq!(invalid(&h.apply_unchanged(set("ghcr.io", Some(("", b"p"))))), "username: must not be empty");
    assert_eq!(
        invalid(&h.apply_unchanged(set("ghcr.io", Some(("u", &[0; 2000]))))),
        "password: must be 1 to 1024 bytes"
    );
    let other = Command::SetRegistryLogin { tenant: "nobody".into(), registry: "ghcr.io".into(), login: None };
    assert_eq!(h.apply_unchanged(other), Response::Rejected(StateError::UnknownTenant("nobody".into())));
    for i in 1..16 {
        h.apply(set(&format!("r{i}.example"), Some(("u", b"p"))));
    }
    assert!(invalid(&h.apply_unchanged(set("r16.example", Some(("u", b"p"))))).contains("the limit of 16"));
    let loaded = StateMachine::load(&h.kv).expect("load");
    assert_eq!(loaded.registry_logins("acme").count(), 16);
    assert_eq!(h.apply(set("127.0.0.1:5000", None)), saved("127.0.0.1:5000", false));
    assert_eq!(StateMachine::load(&h.kv).expect("load").registry_logins("acme").count(), 15);
}
