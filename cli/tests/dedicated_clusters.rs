//! Dedicated clusters and agent registration, end to end with real mTLS identities, real
//! agents and real containers. In the order an operator works: tenants, a cluster
//! dedicated to one of them, agents registered, then the agents start (two of them lying
//! about what they serve), then three tenants queue a few hundred mixed tasks. Every task
//! must run only on an agent it is allowed on, the liars must get nothing, and a tenant
//! must not be able to place work on another tenant's cluster.
//! Needs a running Docker engine: `.ci/run` installs and starts one.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::agent_tasks::*;
use drover_chaos::{AgentOptions, Cluster, ClusterOptions, eventually};
use drover_proto::admin as pa;
use drover_proto::v1 as pv;

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const DEDICATED: &str = "acme-dedicated";

fn agent_config(cluster: &str, region: &str) -> AgentOptions {
    AgentOptions { slots: 4, extra_config: format!("[attributes]\nregion = {region:?}\ncluster = {cluster:?}\n") }
}

fn registration(id: &str, cluster: &str, region: &str) -> pa::RegisterAgentRequest {
    pa::RegisterAgentRequest {
        registration: Some(pa::AgentRegistration {
            id: id.into(),
            cluster: cluster.into(),
            region: region.into(),
            ..Default::default()
        }),
    }
}

fn placed(cluster: &str, region: &str) -> Option<pv::Placement> {
    Some(pv::Placement { cluster: cluster.into(), region: region.into(), ..Default::default() })
        .filter(|p| !p.cluster.is_empty() || !p.region.is_empty())
}

/// Queues `n` tasks of code `work` for `tenant` with this placement; returns their ids.
async fn queue_n(c: &Cluster, tenant: &str, n: usize, placement: Option<pv::Placement>) -> Vec<u64> {
    let mut t = c.tenant(c.ids()[0], tenant).expect("tenant client");
    let task = pv::NewTask { code: "work".into(), placement, ..Default::default() };
    let r = t
        .queue_tasks(pv::QueueTasksRequest { tasks: vec![task; n], idempotency_key: String::new() })
        .await
        .expect("queue");
    r.into_inner().task_ids
}

async fn metric(c: &Cluster, series: &str) -> Option<f64> {
    let (_, body) = c.http_get(c.ids()[0], "/metrics").await.ok()?;
    drover_chaos::exposition::value(&body, series)
}

#[tokio::test]
async fn registered_agents_serve_only_what_they_are_allowed_and_tenants_only_their_clusters() {
    let _d = docker().await;
    let c = common::cluster(ClusterOptions { nodes: 1, tls: true, ..Default::default() }).await;
    let node = c.ids()[0];
    let mut admin = c.admin(node).expect("admin");
    for t in TENANTS {
        admin.upsert_tenant(pa::UpsertTenantRequest { id: t.into(), ..Default::default() }).await.expect("tenant");
        let mut client = c.tenant(node, t).expect("tenant client");
        client.register_code(sh("work", "true")).await.expect("register code");
    }
    let dedicated = pa::CreateClusterRequest { name: DEDICATED.into(), owner: "acme".into(), guaranteed_slots: 4 };
    admin.create_cluster(dedicated).await.expect("create cluster");

    // Registered before they start: the dedicated agent, a shared agent in us, and a liar
    // registered for us that will claim eu. Unregistered: a shared agent in eu, and an
    // impostor that will claim the dedicated cluster.
    let pid = std::process::id();
    let id = |name: &str| format!("{name}-{pid}");
    let (d1, us, liar, eu, impostor) = (id("acme-d1"), id("shared-us"), id("liar"), id("shared-eu"), id("impostor"));
    admin.register_agent(registration(&d1, DEDICATED, "eu")).await.expect("register d1");
    admin.register_agent(registration(&us, "", "us")).await.expect("register us");
    admin.register_agent(registration(&liar, "", "us")).await.expect("register liar");

    let agents = [
        c.start_agent_as(&d1, agent_config(DEDICATED, "eu")).expect("d1"),
        c.start_agent_as(&us, agent_config("", "us")).expect("us"),
        c.start_agent_as(&eu, agent_config("", "eu")).expect("eu"),
        c.start_agent_as(&liar, agent_config("", "eu")).expect("liar"),
        c.start_agent_as(&impostor, agent_config(DEDICATED, "eu")).expect("impostor"),
    ];
    // The liars are refused on every lease call, and say so in their logs.
    let refused = eventually(Duration::from_secs(30), "both liars refused", || async {
        metric(&c, "drover_api_denied_total{reason=\"agent_attributes\"}").await.filter(|n| *n >= 2.0)
    })
    .await;
    refused.unwrap_or_else(|e| panic!("{e}\n{}\n{}", agents[3].log_tail(20), agents[4].log_tail(20)));
    assert!(agents[4].log().contains("is not registered") || agents[4].log().contains("needs a registration"));
    assert!(agents[3].log().contains("differs from its registration"), "{}", agents[3].log_tail(20));

    // No tenant places work on another tenant's cluster (nor on one that does not exist:
    // the same answer), by task or by a code's default.
    let mut globex = c.tenant(node, "globex").expect("globex");
    for cluster in [DEDICATED, "no-such-cluster"] {
        let task = pv::NewTask { code: "work".into(), placement: placed(cluster, ""), ..Default::default() };
        let e = globex
            .queue_tasks(pv::QueueTasksRequest { tasks: vec![task], idempotency_key: String::new() })
            .await
            .expect_err("queued onto another tenant's cluster");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains(cluster), "{e:?}");
    }
    let sneaky = pv::RegisterCodeRequest { placement: placed(DEDICATED, ""), ..sh("sneaky", "true") };
    let e = globex.register_code(sneaky).await.expect_err("code placed on another tenant's cluster");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // Ceilings: the shared fleet's default (64 GiB), and one the operator sets on acme's
    // cluster, refuse what cannot run there, naming the field and the ceiling.
    let huge = pv::RegisterCodeRequest {
        limits: Some(pv::CodeLimits { memory_bytes: 1 << 40, ..Default::default() }),
        ..sh("huge", "true")
    };
    let e = globex.register_code(huge).await.expect_err("a 1 TiB code on the shared fleet");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("limits.memory_bytes") && e.message().contains("ceiling"), "{e:?}");
    let small = pa::Ceilings { max_memory_bytes: 1 << 30, ..Default::default() };
    admin
        .set_ceilings(pa::SetCeilingsRequest { cluster: DEDICATED.into(), ceilings: Some(small) })
        .await
        .expect("set ceilings");
    let mut acme = c.tenant(node, "acme").expect("acme");
    let big = pv::RegisterCodeRequest {
        limits: Some(pv::CodeLimits { memory_bytes: 2 << 30, ..Default::default() }),
        ..sh("big", "true")
    };
    acme.register_code(big).await.expect("2 GiB is under the shared fleet's ceiling");
    let task = pv::NewTask { code: "big".into(), placement: placed(DEDICATED, ""), ..Default::default() };
    let e = acme
        .queue_tasks(pv::QueueTasksRequest { tasks: vec![task], idempotency_key: String::new() })
        .await
        .expect_err("2 GiB onto a 1 GiB cluster");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains(DEDICATED), "{e:?}");

    // 300 mixed tasks: what each may run on.
    let mut allowed: BTreeMap<u64, (&str, BTreeSet<String>)> = BTreeMap::new();
    let shared: BTreeSet<String> = [us.clone(), eu.clone()].into();
    let plan = [
        ("acme", 60, placed(DEDICATED, ""), BTreeSet::from([d1.clone()])),
        ("acme", 40, None, shared.clone()),
        ("globex", 40, None, shared.clone()),
        ("globex", 30, placed("", "us"), BTreeSet::from([us.clone()])),
        ("initech", 70, None, shared.clone()),
        ("initech", 30, placed("", "eu"), BTreeSet::from([eu.clone()])),
        ("acme", 30, placed("", "eu"), BTreeSet::from([eu.clone()])),
    ];
    for (tenant, n, placement, on) in plan {
        for task_id in queue_n(&c, tenant, n, placement).await {
            allowed.insert(task_id, (tenant, on.clone()));
        }
    }
    assert_eq!(allowed.len(), 300);

    let mut ran: BTreeMap<String, usize> = BTreeMap::new();
    for (id, (tenant, on)) in &allowed {
        let client = c.tenant(node, tenant).expect("tenant client");
        let t = eventually(Duration::from_secs(240), &format!("task {id} to finish"), || {
            let mut client = client.clone();
            async move {
                let req = pv::GetTaskRequest { id: *id, include_payload: false };
                let t = client.get_task(req).await.ok()?.into_inner();
                finished(&t).then_some(t)
            }
        })
        .await
        .unwrap_or_else(|e| {
            let logs: Vec<String> = agents.iter().map(|a| format!("--- {} ---\n{}", a.id, a.log_tail(20))).collect();
            panic!("{e}\n{}", logs.join("\n"))
        });
        assert_eq!(state(&t), pv::TaskState::Complete, "task {id}: {t:?}");
        for a in &t.attempt_log {
            assert!(on.contains(&a.agent_id), "task {id} ran on {} (allowed {on:?})", a.agent_id);
            *ran.entry(a.agent_id.clone()).or_default() += 1;
        }
    }
    eprintln!("executions per agent: {ran:?}");
    assert_eq!(ran.values().sum::<usize>(), 300, "every task ran exactly once: {ran:?}");
    assert_eq!(ran.get(&d1), Some(&60), "the dedicated agent ran acme's dedicated tasks only");
    assert!(!ran.contains_key(&liar) && !ran.contains_key(&impostor));

    // The operator's view: registrations, and the liars never recorded as agents.
    let list = admin.list_agents(pa::ListAgentsRequest {}).await.expect("list agents").into_inner();
    let by_id: BTreeMap<&str, &pa::AgentInfo> = list.agents.iter().map(|a| (a.id.as_str(), a)).collect();
    assert_eq!(by_id[d1.as_str()].registration.as_ref().map(|r| r.cluster.as_str()), Some(DEDICATED));
    assert!(by_id[eu.as_str()].registration.is_none() && by_id[eu.as_str()].connected);
    assert!(!by_id.contains_key(impostor.as_str()));
    assert!(by_id[liar.as_str()].first_seen_ms == 0 && !by_id[liar.as_str()].connected, "{:?}", by_id[liar.as_str()]);
    let clusters = admin.list_clusters(pa::ListClustersRequest {}).await.expect("clusters").into_inner();
    assert_eq!(clusters.clusters.len(), 1);
    assert_eq!((clusters.clusters[0].registered_agents, clusters.clusters[0].connected_slots), (1, 4));
}
