//! Wiring of one `drover server` node, and its shutdown tree: storage → Raft → gRPC
//! services + HTTP listener + webhook listener + leader supervisor, all children of one cancellation token;
//! shutdown cancels, joins every task, then shuts Raft down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::admin::admin_server::AdminServer;
use drover_proto::agent::agent_server::AgentServer;
use drover_proto::raft::raft_server::RaftServer;
use drover_proto::v1::tenant_server::TenantServer;
use openraft::SnapshotPolicy;
use tokio_util::sync::CancellationToken;

use std::future::Future;
use std::pin::Pin;

use tonic::service::interceptor::InterceptedService;

use crate::api::admin::AdminService;
use crate::api::agent::AgentService;
use crate::api::authz::Authz;
use crate::api::tenant::TenantService;
use crate::api::{ApiConfig, ApiCtx};
use crate::config::{ConfigError, ServerConfig};
use crate::leader::lease_tracker::LeaseTracker;
use crate::leader::quorum_clock::{self, QuorumClock};
use crate::leader::{LeaderConfig, supervise};
use crate::metrics::{Metrics, MetricsError};
use crate::raft::batcher::Batcher;
use crate::raft::network::{Dialer, MAX_RAFT_MESSAGE_BYTES, NetworkFactory};
use crate::raft::node::RaftNode;
use crate::raft::service::RaftService;
use crate::raft::types::{Node, Raft};
use crate::storage::{self, StorageError};
use crate::tls::NodeTls;

/// Largest tenant/agent/admin message (a queue batch at its payload ceiling, plus framing).
pub const MAX_API_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Client entries the batcher keeps in flight at once.
const MAX_ENTRIES_IN_FLIGHT: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("binding {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("grpc server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error(transparent)]
    Seal(#[from] crate::sealing::SealError),
}

pub async fn run(cfg: ServerConfig, shutdown: CancellationToken) -> Result<(), ServerError> {
    cfg.validate()?;
    let registry_key = match &cfg.registry_key_file {
        Some(path) => Some(Arc::new(crate::sealing::RegistryKey::from_file(path)?)),
        None => None,
    };
    std::fs::create_dir_all(&cfg.data_dir).map_err(StorageError::from)?;
    let metrics = Arc::new(Metrics::new()?);
    metrics.set_region(&cfg.region);
    let log_dir = cfg.raft_log_dir.clone().unwrap_or_else(|| storage::default_log_dir(&cfg.data_dir));
    let (log_store, sm_store) =
        storage::open(&cfg.data_dir, &log_dir, cfg.cache_capacity.as_u64(), metrics.apply.clone())?;
    let sm = sm_store.shared.clone();

    let raft_config = openraft::Config {
        cluster_name: "drover".into(),
        heartbeat_interval: cfg.raft.heartbeat_ms,
        election_timeout_min: cfg.raft.election_min_ms,
        election_timeout_max: cfg.raft.election_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.raft.snapshot_every_entries),
        max_in_snapshot_log_to_keep: cfg.raft.keep_entries_behind_snapshot,
        snapshot_max_chunk_size: 1024 * 1024,
        max_payload_entries: cfg.raft.max_entries_per_append,
        ..Default::default()
    }
    .validate()
    .map_err(|e| ServerError::Raft(e.to_string()))?;
    let tls = cfg.tls.as_ref().map(NodeTls::load).transpose()?.map(Arc::new);
    if let Some(files) = &cfg.tls {
        record_cert_expiry(&metrics, &files.cert);
    }
    let dialer = Dialer { tls: tls.as_ref().map(|t| t.client.clone()), overrides: Arc::new(cfg.dial.clone()) };
    let network = NetworkFactory::new(dialer.clone(), metrics.append_splits.clone());
    let raft = Raft::new(cfg.node_id, Arc::new(raft_config), network, log_store, sm_store)
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))?;

    let quorum_timeout = Duration::from_millis(cfg.raft.election_max_ms * 2);
    let node = Arc::new(RaftNode::new(cfg.node_id, raft.clone(), sm, dialer, cfg.propose_timeout, quorum_timeout));
    let tracker = Arc::new(LeaseTracker::default());
    let presence = Arc::new(crate::leader::presence::Presence::default());
    let quorum = Arc::new(QuorumClock::default());
    let tasks = tokio_util::task::TaskTracker::new();
    let batcher = Batcher::start(node.clone(), MAX_ENTRIES_IN_FLIGHT, &tasks, shutdown.clone());
    let ctx = Arc::new(ApiCtx {
        tls: tls.clone(),
        node: node.clone(),
        batcher,
        cfg: ApiConfig {
            idempotency_ttl: cfg.idempotency_window,
            lease_ttl: cfg.lease_ttl,
            max_lease_wait: cfg.max_lease_wait,
            max_task_log_bytes: cfg.max_task_log_bytes.as_u64(),
            webhook_base_url: cfg.webhook_base_url(),
            breaks: cfg.test_breaks,
            allow_unregistered_agents: cfg.allow_unregistered_agents,
        },
        tracker: tracker.clone(),
        presence: presence.clone(),
        denied: metrics.api_denied.clone(),
        quorum: quorum.clone(),
        log_followers: Default::default(),
        shutdown: shutdown.clone(),
        task_metrics: metrics.tasks_api.clone(),
        registry_key,
        lease_waits: Default::default(),
    });

    let grpc_listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServerError::Bind { addr: cfg.listen.to_string(), source })?;
    let http_listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .map_err(|source| ServerError::Bind { addr: cfg.http_listen.to_string(), source })?;

    let webhook_listener = match cfg.webhook_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr: addr.to_string(), source })?,
        ),
        None => None,
    };

    maybe_initialize(&raft, &cfg).await?;

    let authz = |service| Authz::new(service, tls.is_some(), node.sm.clone(), metrics.api_denied.clone());
    let router = tonic::transport::Server::builder()
        .layer(crate::api::oversize::OversizeLayer { limit: MAX_API_MESSAGE_BYTES })
        .add_service(InterceptedService::new(
            RaftServer::new(RaftService {
                node: node.clone(),
                append_seconds: metrics.append_entries_seconds.clone(),
                append_abandoned: metrics.append_entries_abandoned.clone(),
            })
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
            authz("drover.raft.v1.Raft"),
        ))
        .add_service(InterceptedService::new(
            TenantServer::new(TenantService { ctx: ctx.clone() }).max_decoding_message_size(MAX_API_MESSAGE_BYTES),
            authz("drover.v1.Tenant"),
        ))
        .add_service(InterceptedService::new(
            AgentServer::new(AgentService { ctx: ctx.clone() }).max_decoding_message_size(MAX_API_MESSAGE_BYTES),
            authz("drover.agent.v1.Agent"),
        ))
        .add_service(InterceptedService::new(
            AdminServer::new(AdminService { ctx: ctx.clone() }).max_decoding_message_size(MAX_API_MESSAGE_BYTES),
            authz("drover.admin.v1.Admin"),
        ));
    let stop = shutdown.clone().cancelled_owned();
    let grpc: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match &tls {
        Some(tls) => {
            let incoming =
                crate::tls::incoming(grpc_listener, tls.clone(), metrics.accept_metrics(), &tasks, shutdown.clone());
            Box::pin(router.serve_with_incoming_shutdown(incoming, stop))
        }
        // Without TCP_NODELAY, small replies sit behind Nagle and delayed ACKs (~40 ms).
        None => Box::pin(router.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            stop,
        )),
    };
    let mut grpc_task = tasks.spawn(grpc);
    if let Some(tls) = &tls {
        tasks.spawn(reload_on_sighup(tls.clone(), metrics.clone(), cfg.tls.clone(), shutdown.clone()));
    }
    tasks.spawn(crate::metrics::watch_leader_changes(node.clone(), metrics.leader_changes.clone(), shutdown.clone()));
    tasks.spawn({
        let (node, metrics, token, tls) = (node.clone(), metrics.clone(), shutdown.clone(), tls.clone());
        let quorum = quorum.clone();
        async move {
            if let Err(e) = crate::http::serve(http_listener, tls, node, metrics, quorum, token).await {
                tracing::error!(error = %e, "http listener failed");
            }
        }
    });
    if let Some(listener) = webhook_listener {
        let hooks = Arc::new(crate::webhook::Webhooks::new(
            ctx.clone(),
            crate::webhook::limiter::DEFAULT_LIMITS,
            metrics.webhook_requests.clone(),
        ));
        tasks.spawn(crate::webhook::serve(listener, tls.clone(), hooks, metrics.accept_metrics(), shutdown.clone()));
    }
    let leader_cfg = LeaderConfig {
        lease_ttl: cfg.lease_ttl,
        tick: Duration::from_millis(200).min(cfg.lease_ttl / 4),
        timeout_grace: cfg.timeout_grace,
        retention: cfg.retention,
    };
    tasks.spawn(quorum_clock::run(node.clone(), quorum, shutdown.clone()));
    tasks.spawn(ctx.lease_waits.clone().run(node.sm.clone(), shutdown.clone()));
    tasks.spawn(supervise(node.clone(), tracker, presence, leader_cfg, metrics, shutdown.clone()));
    tasks.close();
    tracing::info!(
        node_id = cfg.node_id,
        listen = %cfg.listen,
        http = %cfg.http_listen,
        webhook = ?cfg.webhook_listen,
        "drover server started"
    );

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    let started = std::time::Instant::now();
    // The gRPC server drains: it answers the calls in flight, then closes each connection
    // gracefully. Long polls and log follows end on the shutdown token. A graceful HTTP/2
    // close needs the client's answer (GOAWAY, then a PING it must acknowledge), so a
    // client that has stopped answering (a frozen process; in the tests, a harness whose
    // runtime thread is blocked while it waits for this very stop) would hold the node up
    // forever: after the drain bound the rest is cut, and its client retries elsewhere.
    let grpc_result = match tokio::time::timeout(SHUTDOWN_DRAIN, &mut grpc_task).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(
                drain_ms = SHUTDOWN_DRAIN.as_millis() as u64,
                "gRPC calls still open after the drain bound; closing them"
            );
            grpc_task.abort();
            Ok(Ok(()))
        }
    };
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "gRPC server stopped");
    if tokio::time::timeout(SHUTDOWN_DRAIN, tasks.wait()).await.is_err() {
        tracing::warn!(
            drain_ms = SHUTDOWN_DRAIN.as_millis() as u64,
            "background tasks still running after the drain bound"
        );
    }
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "background tasks stopped");
    raft.shutdown().await.map_err(|e| ServerError::Raft(e.to_string()))?;
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "raft stopped");
    match grpc_result {
        Ok(r) => r.map_err(ServerError::from),
        Err(e) => Err(ServerError::Raft(format!("grpc task: {e}"))),
    }
}

/// How long a stopping node waits for the gRPC calls in flight, and then for its
/// background tasks, before it goes on without them.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// `drover_tls_cert_expiry_seconds` from the certificate file. The file was just loaded
/// by [`NodeTls`], so failing to read it here only loses the metric (logged).
fn record_cert_expiry(metrics: &Metrics, cert: &std::path::Path) {
    let expiry = std::fs::read(cert)
        .map_err(|e| e.to_string())
        .and_then(|pem| drover_identity::certs::not_after_from_pem(&pem).map_err(|e| e.to_string()));
    match expiry {
        Ok(not_after) => metrics.set_tls_cert_expiry(not_after),
        Err(e) => tracing::warn!(path = %cert.display(), error = %e, "cannot read the certificate's expiry"),
    }
}

/// Re-reads the TLS files on every SIGHUP; new connections present the new certificate.
async fn reload_on_sighup(
    tls: Arc<NodeTls>,
    metrics: Arc<Metrics>,
    files: Option<crate::config::TlsFiles>,
    shutdown: CancellationToken,
) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; certificates will not reload");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = hup.recv() => if r.is_none() { return },
        }
        match tls.reload() {
            Ok(()) => {
                tracing::info!("SIGHUP: reloaded TLS certificates");
                if let Some(files) = &files {
                    record_cert_expiry(&metrics, &files.cert);
                }
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP: reloading TLS certificates failed; keeping the old ones"),
        }
    }
}

/// The lowest-id initial member bootstraps a brand-new cluster; every other case
/// (already initialized, or joining later) does nothing.
async fn maybe_initialize(raft: &Raft, cfg: &ServerConfig) -> Result<(), ServerError> {
    let Some((&first, _)) = cfg.initial_members.iter().next() else { return Ok(()) };
    if first != cfg.node_id {
        return Ok(());
    }
    if raft.is_initialized().await.map_err(|e| ServerError::Raft(e.to_string()))? {
        return Ok(());
    }
    let members: BTreeMap<u64, Node> =
        cfg.initial_members.iter().map(|(id, addr)| (*id, Node { addr: addr.clone() })).collect();
    tracing::info!(?members, "initializing a new cluster");
    match raft.initialize(members).await {
        Ok(()) => Ok(()),
        Err(openraft::error::RaftError::APIError(e)) => {
            tracing::info!(error = %e, "cluster already initialized");
            Ok(())
        }
        Err(e) => Err(ServerError::Raft(e.to_string())),
    }
}
