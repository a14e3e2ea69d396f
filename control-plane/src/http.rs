//! The HTTP side listener: `GET /metrics` (Prometheus text), `GET /healthz` (the process
//! serves) and `GET /readyz` (this node knows a leader and has applied what it has).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::raft::node::RaftNode;

#[derive(Clone)]
struct Ctx {
    node: Arc<RaftNode>,
    metrics: Arc<Metrics>,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<RaftNode>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Ctx { node, metrics });
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
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
