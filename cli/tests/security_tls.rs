//! Mutual TLS on a real three-node cluster: node-to-node Raft over server certificates,
//! the role table (each certificate role may call only its own service), tenant
//! isolation, and refusal of connections without an acceptable client certificate.

mod common;

use std::time::Duration;

use common::batch;
use drover_chaos::clients::{self, Creds};
use drover_chaos::{Cluster, ClusterOptions};
use drover_identity::certs::{self, LeafSpec};
use drover_identity::{Role, SpiffeId};
use drover_proto::admin as pa;
use drover_proto::agent as pg;
use drover_proto::raft::ReadIndexRequest;
use drover_proto::raft::raft_client::RaftClient;
use drover_proto::v1 as pv;
use tonic::Code;

async fn tls_cluster() -> Cluster {
    let opts = ClusterOptions { tls: true, ..Default::default() };
    Cluster::start(common::bin(), opts).await.expect("start TLS cluster")
}

async fn setup(c: &Cluster, node: u64) {
    c.admin(node)
        .expect("admin")
        .upsert_tenant(pa::UpsertTenantRequest { id: "acme".into(), ..Default::default() })
        .await
        .expect("create tenant acme");
    c.admin(node)
        .expect("admin")
        .upsert_tenant(pa::UpsertTenantRequest { id: "beta".into(), ..Default::default() })
        .await
        .expect("create tenant beta");
    c.tenant(node, "acme")
        .expect("tenant")
        .register_code(pv::RegisterCodeRequest {
            name: "echo".into(),
            image: "drover-test/busybox:1".into(),
            ..Default::default()
        })
        .await
        .expect("register code");
}

/// Three nodes replicate over server certificates (writes through a follower are
/// forwarded over TLS); every role is confined to its own service.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_cluster_replicates_and_enforces_roles() {
    let c = tls_cluster().await;
    let follower = c.follower().await.expect("follower");
    setup(&c, follower).await;
    let mut acme = c.tenant(follower, "acme").expect("tenant");
    let ids = acme.queue_tasks(batch(20, 64, "k1")).await.expect("queue over TLS").into_inner().task_ids;
    assert_eq!(ids.len(), 20);
    common::assert_replicas_identical(&c, 20).await;

    let addr = c.addr(follower).to_string();
    let tenant_creds = c.creds(Role::Tenant, "acme").expect("creds");
    let agent_creds = c.creds(Role::Agent, "a1").expect("creds");

    let e = clients::admin_with(&addr, &tenant_creds)
        .expect("client")
        .raft_status(pa::RaftStatusRequest {})
        .await
        .expect_err("tenant calling admin");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    let e = clients::agent_with(&addr, &tenant_creds, "acme")
        .expect("client")
        .lease(pg::LeaseRequest { max_tasks: 1, ..Default::default() })
        .await
        .expect_err("tenant calling agent service");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    let e = clients::tenant_with(&addr, &agent_creds, "a1")
        .expect("client")
        .queue_tasks(batch(1, 8, ""))
        .await
        .expect_err("agent queuing a task");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    let ch = clients::channel_with(&addr, &tenant_creds).expect("channel");
    let e = RaftClient::new(ch).read_index(ReadIndexRequest {}).await.expect_err("tenant calling raft");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // Tenant isolation: another tenant's id answers exactly like a missing one.
    let mut beta = c.tenant(follower, "beta").expect("tenant beta");
    let other =
        beta.get_task(pv::GetTaskRequest { id: ids[0], include_payload: false }).await.expect_err("beta reads acme");
    let missing = beta.get_task(pv::GetTaskRequest { id: 7, include_payload: false }).await.expect_err("missing id");
    assert_eq!(other.code(), Code::NotFound);
    assert_eq!(other.message().replace(&ids[0].to_string(), "ID"), missing.message().replace('7', "ID"));
    let e = beta.cancel_task(pv::CancelTaskRequest { id: ids[0] }).await.expect_err("beta cancels acme's task");
    assert_eq!(e.code(), Code::NotFound);
    let log = |id| pv::GetTaskLogRequest { id, from_index: 0, follow: true };
    let other = beta.get_task_log(log(ids[0])).await.expect_err("beta reads acme's log");
    let missing = beta.get_task_log(log(7)).await.expect_err("log of a missing id");
    assert_eq!(other.code(), Code::NotFound);
    assert_eq!(other.message().replace(&ids[0].to_string(), "ID"), missing.message().replace('7', "ID"));
    acme.get_task_log(log(ids[0])).await.expect("acme reads its own log");
    let listed = beta.list_tasks(pv::ListTasksRequest::default()).await.expect("list").into_inner();
    assert!(listed.tasks.is_empty(), "beta sees acme's tasks");
    let listed = acme.list_tasks(pv::ListTasksRequest::default()).await.expect("list").into_inner();
    assert_eq!(listed.tasks.len(), 20);

    // Operators get read-only views of any tenant's objects through the admin service.
    let mut ops = c.admin(follower).expect("operator");
    let seen = ops
        .list_tasks(pa::TenantListTasksRequest { tenant: "acme".into(), filter: None })
        .await
        .expect("operator lists acme's tasks")
        .into_inner();
    assert_eq!(seen.tasks.len(), 20);
    let one = ops.get_task(pa::TenantGetTaskRequest { tenant: "acme".into(), id: ids[0] }).await.expect("get");
    assert_eq!(one.into_inner().tenant, "acme");
    let e = ops.get_task(pa::TenantGetTaskRequest { tenant: "beta".into(), id: ids[0] }).await.expect_err("scoped");
    assert_eq!(e.code(), Code::NotFound);
    let req = pa::TenantGetTaskLogRequest {
        tenant: "acme".into(),
        request: Some(pv::GetTaskLogRequest { id: ids[0], from_index: 0, follow: false }),
    };
    ops.get_task_log(req).await.expect("operator reads acme's log");
    let codes = ops.list_codes(pa::TenantListCodesRequest { tenant: "acme".into() }).await.expect("codes");
    assert_eq!(codes.into_inner().codes.len(), 1);

    // An agent cannot heartbeat or complete a lease granted to another agent.
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    let mut a1 = c.agent(leader, "a1").expect("agent a1");
    let g = a1
        .lease(pg::LeaseRequest { max_tasks: 1, wait_ms: 5_000, ..Default::default() })
        .await
        .expect("lease")
        .into_inner()
        .tasks
        .remove(0);
    let lease = pg::LeaseRef { task_id: g.task_id, lease_epoch: g.lease_epoch };
    let mut a2 = c.agent(leader, "a2").expect("agent a2");
    let e = a2
        .heartbeat(pg::HeartbeatRequest { leases: vec![lease], ..Default::default() })
        .await
        .expect_err("heartbeat of another agent's lease");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let done = pg::Completion { lease: Some(lease), outcome: pg::Outcome::Success as i32, ..Default::default() };
    let e = a2
        .complete(pg::CompleteRequest { completions: vec![done.clone()], ..Default::default() })
        .await
        .expect_err("completion of another agent's lease");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let hb = a1.heartbeat(pg::HeartbeatRequest { leases: vec![lease], ..Default::default() }).await.expect("own lease");
    assert!(hb.into_inner().revoked.is_empty());
    let r = a1.complete(pg::CompleteRequest { completions: vec![done], ..Default::default() }).await.expect("own");
    assert!(r.into_inner().results[0].accepted);
}

/// A tenant whose source allowlist excludes 127.0.0.1 is refused before any handler runs
/// (and counted); widening the allowlist lets it through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn source_cidr_allowlist() {
    let c = tls_cluster().await;
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    setup(&c, leader).await;
    let allow = |cidrs: &[&str]| pa::UpsertTenantRequest {
        id: "acme".into(),
        allowed_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let mut admin = c.admin(leader).expect("admin");
    let e = admin.upsert_tenant(allow(&["10.0.0.0/33"])).await.expect_err("bad CIDR");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("allowed_cidrs[0]"), "{}", e.message());
    admin.upsert_tenant(allow(&["10.0.0.0/8", "fd00::/8"])).await.expect("narrow allowlist");

    // Every node applies the change before it is checked there.
    let applied = c.status(leader).await.expect("status").last_applied_index;
    c.inspect_all(applied).await.expect("caught up");
    for node in c.ids() {
        let e = c
            .tenant(node, "acme")
            .expect("client")
            .list_tasks(pv::ListTasksRequest::default())
            .await
            .expect_err("outside the allowlist");
        assert_eq!(e.code(), Code::PermissionDenied, "node {node}: {e:?}");
        assert!(e.message().contains("127.0.0.1"), "{}", e.message());
    }
    // The HTTPS side listener applies the same allowlist to a tenant certificate.
    let (code, body) = c.http_get_as(leader, "/healthz", Role::Tenant, "acme").await.expect("https get");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("127.0.0.1") && body.contains("allowed_cidrs"), "{body}");
    // The HTTP listener speaks HTTPS with client certificates too; plaintext is refused.
    let (code, metrics) = c.http_get(leader, "/metrics").await.expect("https get");
    assert_eq!(code, 200);
    let plain = drover_chaos::clients::plain_http_get(c.http(leader), "/metrics").await;
    assert!(plain.is_err() || plain.as_ref().is_ok_and(|(code, _)| *code != 200), "plaintext HTTP served: {plain:?}");
    assert!(counted(&metrics, "drover_api_denied_total{reason=\"source_cidr\"}"), "denial not counted:\n{metrics}");

    admin.upsert_tenant(allow(&["10.0.0.0/8", "127.0.0.0/8"])).await.expect("widen allowlist");
    let applied = c.status(leader).await.expect("status").last_applied_index;
    c.inspect_all(applied).await.expect("caught up");
    c.tenant(leader, "acme").expect("client").queue_tasks(batch(1, 8, "")).await.expect("inside the allowlist");
    let (code, _) = c.http_get_as(leader, "/healthz", Role::Tenant, "acme").await.expect("https get");
    assert_eq!(code, 200, "inside the allowlist on HTTP too");
    // Metrics name every tenant: not for tenants.
    let (code, body) = c.http_get_as(leader, "/metrics", Role::Tenant, "acme").await.expect("https get");
    assert_eq!(code, 403, "{body}");
}

/// Connections without an acceptable client certificate are refused, and the server
/// keeps serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unacceptable_clients_are_refused() {
    let c = tls_cluster().await;
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    let addr = c.addr(leader).to_string();
    let ca = c.ca().expect("TLS cluster has a CA").clone();
    let op = SpiffeId::new(Role::Operator, "mallory").expect("id");
    let status = |creds: Creds| {
        let addr = addr.clone();
        async move {
            clients::admin_with(&addr, &creds)?.raft_status(pa::RaftStatusRequest {}).await.map_err(anyhow::Error::from)
        }
    };

    // A certificate from another CA (the client trusts the cluster CA for the server).
    let other_ca = certs::new_ca("someone else", 30).expect("ca");
    let foreign = certs::issue(&other_ca, &LeafSpec::new(op.clone(), 30)).expect("leaf");
    assert!(status(clients::tls_creds(&ca.cert, &foreign.cert, &foreign.key)).await.is_err(), "foreign CA accepted");

    // Expired, and not yet valid.
    let past = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    let expired =
        certs::issue(&ca, &LeafSpec { not_before: Some(past), ..LeafSpec::new(op.clone(), 1) }).expect("leaf");
    assert!(status(clients::tls_creds(&ca.cert, &expired.cert, &expired.key)).await.is_err(), "expired accepted");
    let future = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let early =
        certs::issue(&ca, &LeafSpec { not_before: Some(future), ..LeafSpec::new(op.clone(), 30) }).expect("leaf");
    assert!(status(clients::tls_creds(&ca.cert, &early.cert, &early.key)).await.is_err(), "not-yet-valid accepted");

    // No URI SAN, and two URI SANs.
    for uris in [vec![], vec!["spiffe://drover/operator/a".to_string(), "spiffe://drover/tenant/b".to_string()]] {
        let spec = LeafSpec { uri_sans_override: Some(uris.clone()), ..LeafSpec::new(op.clone(), 30) };
        let odd = certs::issue(&ca, &spec).expect("leaf");
        let e = status(clients::tls_creds(&ca.cert, &odd.cert, &odd.key)).await.expect_err("odd SANs accepted");
        let status = e.downcast_ref::<tonic::Status>().expect("refused by the server, not the transport");
        assert_eq!(status.code(), Code::Unauthenticated, "{uris:?}: {status:?}");
    }

    // The CA's own certificate used as a client certificate.
    assert!(status(clients::tls_creds(&ca.cert, &ca.cert, &ca.key)).await.is_err(), "CA cert accepted as a client");

    // No client certificate at all, and plaintext.
    let no_cert = Creds::Tls(
        tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(&ca.cert)),
    );
    assert!(status(no_cert).await.is_err(), "no client certificate accepted");
    assert!(status(Creds::Dev).await.is_err(), "plaintext accepted");

    // The server still serves a good client.
    let ok = status(c.creds(Role::Operator, "ops").expect("creds")).await.expect("good operator");
    assert!(ok.into_inner().has_leader);

    // Certificates refused during the handshake are counted, by reason.
    let (_, metrics) = c.http_get(leader, "/metrics").await.expect("metrics");
    for reason in ["no_certificate", "expired_certificate", "unknown_ca", "bad_certificate"] {
        let line = format!("drover_api_denied_total{{reason=\"{reason}\"}}");
        assert!(counted(&metrics, &line), "{line} not counted:\n{metrics}");
    }
}

/// SIGHUP after replacing a node's certificate files: new connections are served with the
/// new certificate, and the node keeps serving and replicating.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_reloads_certificates() {
    let c = tls_cluster().await;
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    setup(&c, leader).await;
    let node = c.follower().await.expect("follower");
    let before = c.presented_cert(node).await.expect("presented");
    let fresh = c.write_node_cert(node).expect("new certificate");
    assert_ne!(before, fresh);
    assert_eq!(c.presented_cert(node).await.expect("presented"), before, "reloaded without a signal");
    c.hangup(node).expect("SIGHUP");
    drover_chaos::eventually(Duration::from_secs(10), "the new certificate to be presented", || async {
        (c.presented_cert(node).await.ok()? == fresh).then_some(())
    })
    .await
    .expect("reloaded");
    let ids = c.tenant(node, "acme").expect("client").queue_tasks(batch(3, 8, "")).await.expect("queue");
    assert_eq!(ids.into_inner().task_ids.len(), 3);
    common::assert_replicas_identical(&c, 3).await;
}

/// A node whose certificate carries a tenant identity cannot be added to the cluster: the
/// leader checks the identity a prospective member presents before changing membership.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_certificate_cannot_join() {
    let mut c = tls_cluster().await;
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    let new = c.start_joining_node_as(Role::Tenant, "sneaky").expect("start node");
    let addr = c.addr(new).to_string();
    drover_chaos::eventually(Duration::from_secs(20), "the node to listen", || async {
        tokio::net::TcpStream::connect(c.addr(new)).await.ok()
    })
    .await
    .expect("listening");
    let e = c
        .admin(leader)
        .expect("admin")
        .add_learner(pa::AddLearnerRequest { node_id: new, addr })
        .await
        .expect_err("a tenant certificate joined");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Its certificate is not a server's (no server-auth usage, no server identity).
    assert!(e.message().contains("not a valid server"), "{}", e.message());
    let s = c.status(leader).await.expect("status");
    assert_eq!(s.nodes.len(), 3, "membership changed: {:?}", s.nodes);
}

/// CA rotation: after a second CA is appended to a node's bundle and the node is sent
/// SIGHUP, clients with certificates from either CA are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ca_bundle_with_two_cas() {
    let c = tls_cluster().await;
    let node = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    let old_ca = c.ca().expect("CA").clone();
    let new_ca = certs::new_ca("drover CA 2", 30).expect("new CA");
    let op = SpiffeId::new(Role::Operator, "rotating").expect("id");
    let from_new = certs::issue(&new_ca, &LeafSpec::new(op, 30)).expect("leaf");
    // The client trusts the old CA for the server's certificate and presents a new-CA leaf.
    let creds = clients::tls_creds(&old_ca.cert, &from_new.cert, &from_new.key);
    let addr = c.addr(node).to_string();
    let call = || async {
        clients::admin_with(&addr, &creds)?.raft_status(pa::RaftStatusRequest {}).await.map_err(anyhow::Error::from)
    };
    assert!(call().await.is_err(), "a new-CA certificate was accepted before the bundle held it");
    c.append_ca(node, &new_ca.cert).expect("append CA");
    c.hangup(node).expect("SIGHUP");
    drover_chaos::eventually(Duration::from_secs(10), "the new CA to be trusted", || async { call().await.ok() })
        .await
        .expect("new CA accepted");
    c.status(node).await.expect("old-CA operator still accepted");
}

/// Whether the series `series` (name and labels) is in the exposition with a value of at
/// least 1: counters with known reasons are exported at 0 before anything is counted.
fn counted(metrics: &str, series: &str) -> bool {
    drover_chaos::exposition::value(metrics, series).is_some_and(|v| v >= 1.0)
}
