//! The HTTP side listener: `GET /metrics` (Prometheus text), `GET /healthz` (the process
//! serves) and `GET /readyz` (this node knows a leader and has applied what it has).
//! With TLS on, it speaks HTTPS with the node's certificates and requires a client
//! certificate from the same CA (a Prometheus scraper gets an operator certificate).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::raft::node::RaftNode;
use crate::tls::{HANDSHAKE_TIMEOUT, NodeTls};

#[derive(Clone)]
struct Ctx {
    node: Arc<RaftNode>,
    metrics: Arc<Metrics>,
}

/// Accepts TCP connections and completes TLS handshakes one at a time (each bounded by
/// the handshake timeout); a failed handshake is dropped and the next one accepted.
struct TlsListener {
    inner: tokio::net::TcpListener,
    tls: Arc<NodeTls>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

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
                Ok(Ok(stream)) => return (stream, addr),
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "https handshake refused"),
                Err(_) => tracing::debug!(%addr, "https handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
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
        .route("/readyz", get(ready))
        .with_state(Ctx { node, metrics });
    match tls {
        Some(tls) => {
            axum::serve(TlsListener { inner: listener, tls }, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await,
    }
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
