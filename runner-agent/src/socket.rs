//! The local control socket: HTTP over a unix socket (mode 0600) for the host's
//! operator. `GET /status` (JSON), `POST /drain`, `GET /metrics`. Nothing about the agent
//! is controllable from the network; this socket is the only way in.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::status::ControlTarget;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another agent is already serving {0}")]
    InUse(PathBuf),
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Binds the socket (replacing a stale one left by a crashed agent) with mode 0600.
pub async fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let io = |source| SocketError::Io { path: path.to_path_buf(), source };
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(SocketError::InUse(path.to_path_buf()));
        }
        tokio::fs::remove_file(path).await.map_err(io)?;
    }
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).await.map_err(io)?;
    Ok(listener)
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle<T: ControlTarget>(agent: Arc<T>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/status") => match serde_json::to_vec_pretty(&agent.status()) {
            Ok(body) => reply(StatusCode::OK, "application/json", body),
            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", e.to_string()),
        },
        (&Method::POST, "/drain") => {
            let running = agent.drain();
            let body = serde_json::json!({ "draining": true, "running": running }).to_string();
            reply(StatusCode::ACCEPTED, "application/json", body)
        }
        (&Method::GET, "/metrics") => reply(StatusCode::OK, "text/plain; version=0.0.4", agent.metrics_text()),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: try GET /status, POST /drain, GET /metrics\n"),
    })
}

/// Serves the socket until `cancel` fires, then removes it.
pub async fn serve<T: ControlTarget>(listener: UnixListener, path: PathBuf, agent: Arc<T>, cancel: CancellationToken) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    continue;
                }
            },
            _ = cancel.cancelled() => break,
        };
        let agent = agent.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(agent.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { tracing::debug!(error = %e, "control socket connection"); },
                _ = cancel.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
    let _ = tokio::fs::remove_file(&path).await;
}

/// Open connections to the metrics listener; beyond it a new one is closed at once.
pub const MAX_METRICS_CONNECTIONS: usize = 64;
/// How long a metrics connection may take to send its request head.
pub const METRICS_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves read-only `GET /metrics` on a loopback TCP listener until `cancel` fires. Every
/// connection is served in its own task (a slow one delays nobody), at most
/// [`MAX_METRICS_CONNECTIONS`] at once, each with [`METRICS_HEADER_TIMEOUT`] to send its
/// request head.
pub async fn serve_metrics<T: ControlTarget>(
    listener: tokio::net::TcpListener,
    agent: Arc<T>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_METRICS_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    continue;
                }
            },
            _ = cancel.cancelled() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(limit = MAX_METRICS_CONNECTIONS, "metrics connection limit reached; closing a new one");
            continue;
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let agent = agent.clone();
                async move {
                    Ok::<_, Infallible>(match (req.method(), req.uri().path()) {
                        (&Method::GET, "/metrics") => {
                            reply(StatusCode::OK, "text/plain; version=0.0.4", agent.metrics_text())
                        }
                        _ => reply(StatusCode::NOT_FOUND, "text/plain", "only GET /metrics here\n"),
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(METRICS_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Client side for `drover agent status|drain`: one request, the body as a string.
pub async fn request(path: &Path, method: Method, uri_path: &str) -> Result<(StatusCode, String), SocketError> {
    use http_body_util::BodyExt;
    let io = |e: std::io::Error| SocketError::Io { path: path.to_path_buf(), source: e };
    let stream = tokio::net::UnixStream::connect(path).await.map_err(io)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| io(std::io::Error::other(e)))?;
    let driver = tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(uri_path)
        .header(hyper::header::HOST, "agent")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| io(std::io::Error::other(e)))?;
    let resp = sender.send_request(req).await.map_err(|e| io(std::io::Error::other(e)))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| io(std::io::Error::other(e)))?.to_bytes();
    driver.abort();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
