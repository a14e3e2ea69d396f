//! The HTTP side listener: `GET /metrics` (Prometheus text), `GET /healthz` (the process
//! serves) and `GET /readyz` (this node knows a leader and has applied what it has).
//! With TLS on, it speaks HTTPS with the node's certificates and requires a client
//! certificate from the same CA (a Prometheus scraper gets an operator certificate);
//! connections are accepted by [`crate::accept`] with [`crate::accept::HTTP_LIMITS`]
//! (handshakes off the accept loop, bounded in time and number).
//!
//! Access, checked before any handler (refusals are `403` and counted in
//! `drover_api_denied_total`): the certificate must carry one valid identity; a tenant
//! identity must call from inside its source allowlist and may reach only `/healthz` and
//! `/readyz` (metrics name every tenant); operators, servers and agents reach everything.

use std::sync::Arc;

use axum::Router;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use drover_identity::{Role, SpiffeId};

use crate::accept::PeerStream;
use crate::leader::quorum_clock::QuorumClock;
use crate::metrics::Metrics;
use crate::raft::node::RaftNode;
use crate::tls::NodeTls;

#[derive(Clone)]
struct Ctx {
    node: Arc<RaftNode>,
    metrics: Arc<Metrics>,
    quorum: Arc<QuorumClock>,
}

/// Who is on the other end of an HTTPS connection.
#[derive(Clone, Debug)]
pub struct HttpPeer {
    pub addr: std::net::SocketAddr,
    /// The client certificate's identity, or why it has none.
    pub identity: Result<SpiffeId, String>,
}

impl Connected<axum::serve::IncomingStream<'_, TlsListener>> for HttpPeer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Handshaken connections from [`crate::accept`]: the accept loop never waits on a
/// handshake (each runs in its own task, bounded in time and number), so a peer that
/// connects and stalls cannot hold up `/healthz` for anyone else.
struct TlsListener {
    incoming: tokio::sync::mpsc::Receiver<PeerStream>,
    local: std::net::SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = PeerStream;
    type Addr = HttpPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let Some(stream) = self.incoming.recv().await else {
            // The accept loop has stopped (shutdown): serve nothing more.
            return std::future::pending().await;
        };
        let identity = match stream.info.certs.as_ref().and_then(|c| c.first()) {
            Some(leaf) => drover_identity::certs::identity_from_der(leaf.as_ref()).map_err(|e| e.to_string()),
            None => Err("no client certificate".to_string()),
        };
        let addr = stream.info.remote.unwrap_or(self.local);
        (stream, HttpPeer { addr, identity })
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(HttpPeer { addr: self.local, identity: Err("the listener itself".into()) })
    }
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<NodeTls>>,
    node: Arc<RaftNode>,
    metrics: Arc<Metrics>,
    quorum: Arc<QuorumClock>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let accept_metrics = metrics.accept_metrics();
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready));
    let ctx = Ctx { node, metrics, quorum };
    let app = app.layer(axum::middleware::from_fn_with_state(ctx.clone(), authorize)).with_state(ctx);
    match tls {
        Some(tls) => {
            let local = listener.local_addr()?;
            let handshakes = TaskTracker::new();
            let acceptor = move || tls.http_acceptor();
            let incoming = crate::accept::spawn(
                "http",
                listener,
                acceptor,
                crate::accept::HTTP_LIMITS,
                accept_metrics,
                &handshakes,
                shutdown.clone(),
            );
            let served =
                axum::serve(TlsListener { incoming, local }, app.into_make_service_with_connect_info::<HttpPeer>())
                    .with_graceful_shutdown(shutdown.cancelled_owned())
                    .await;
            handshakes.close();
            handshakes.wait().await;
            served
        }
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await,
    }
}

/// The access rules of the module doc. Plaintext (development, loopback only) has no
/// identities and is not checked.
async fn authorize(State(ctx): State<Ctx>, req: Request, next: Next) -> axum::response::Response {
    let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<HttpPeer>>().cloned() else {
        return next.run(req).await;
    };
    let deny = |reason: &str, why: String| {
        ctx.metrics.api_denied.with_label_values(&[reason]).inc();
        (StatusCode::FORBIDDEN, format!("{why}\n")).into_response()
    };
    let id = match peer.identity {
        Ok(id) => id,
        Err(e) => return deny("bad_certificate", e),
    };
    if id.role == Role::Tenant {
        match crate::api::authz::source_refusal(&ctx.node.sm, &id.id, Some(peer.addr.ip())) {
            Ok(None) => {}
            Ok(Some(why)) => return deny("source_cidr", why),
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        }
        if !matches!(req.uri().path(), "/healthz" | "/readyz") {
            return deny("role", format!("{id} may not read {}", req.uri().path()));
        }
    }
    next.run(req).await
}

async fn metrics_handler(State(ctx): State<Ctx>) -> impl IntoResponse {
    // A leader counts as one only while a quorum follows it: openraft keeps a leader cut
    // off from its followers in the leader state, though it can commit nothing (writes
    // fail once no quorum has answered for `quorum_timeout`, the same bound used here).
    let fresh = ctx.node.leader_term().is_some_and(|term| {
        ctx.quorum.since(term, std::time::Instant::now()).is_some_and(|age| age < ctx.node.quorum_timeout)
    });
    match ctx.metrics.render(&ctx.node, fresh) {
        Ok(text) => (StatusCode::OK, [("content-type", "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn ready(State(ctx): State<Ctx>) -> impl IntoResponse {
    let m = ctx.node.metrics();
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    match m.current_leader {
        Some(leader) if applied > 0 => (StatusCode::OK, format!("ready: leader {leader}, applied {applied}\n")),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: nothing applied yet\n".to_string()),
        None => (StatusCode::SERVICE_UNAVAILABLE, "not ready: no leader known\n".to_string()),
    }
}
