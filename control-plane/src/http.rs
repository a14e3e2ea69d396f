//! The HTTP side listener: `GET /metrics` (Prometheus text), `GET /healthz` (the process
//! serves) and `GET /readyz` (this node knows a leader and has applied what it has).
//! With TLS on, it speaks HTTPS with the node's certificates and requires a client
//! certificate from the same CA (a Prometheus scraper gets an operator certificate).
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

use drover_identity::{Role, SpiffeId};

use crate::metrics::Metrics;
use crate::raft::node::RaftNode;
use crate::tls::{HANDSHAKE_TIMEOUT, NodeTls};

#[derive(Clone)]
struct Ctx {
    node: Arc<RaftNode>,
    metrics: Arc<Metrics>,
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

/// Accepts TCP connections and completes TLS handshakes one at a time (each bounded by
/// the handshake timeout); a failed handshake is dropped and the next one accepted.
struct TlsListener {
    inner: tokio::net::TcpListener,
    tls: Arc<NodeTls>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = HttpPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, addr) = match self.inner.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.tls.http_acceptor().accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let identity = match stream.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                        Some(leaf) => {
                            drover_identity::certs::identity_from_der(leaf.as_ref()).map_err(|e| e.to_string())
                        }
                        None => Err("no client certificate".to_string()),
                    };
                    return (stream, HttpPeer { addr, identity });
                }
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "https handshake refused"),
                Err(_) => tracing::debug!(%addr, "https handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(HttpPeer { addr: self.inner.local_addr()?, identity: Err("the listener itself".into()) })
    }
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<NodeTls>>,
    node: Arc<RaftNode>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready));
    let ctx = Ctx { node, metrics };
    let app = app.layer(axum::middleware::from_fn_with_state(ctx.clone(), authorize)).with_state(ctx);
    match tls {
        Some(tls) => {
            axum::serve(TlsListener { inner: listener, tls }, app.into_make_service_with_connect_info::<HttpPeer>())
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
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
    match ctx.metrics.render(&ctx.node) {
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
