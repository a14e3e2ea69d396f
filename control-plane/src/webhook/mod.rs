//! Webhooks: `POST /v1/webhooks/<tenant>/<code>` on the `webhook_listen` listener queues
//! one task of that code whose payload is the request body, and answers
//! `202 {"task_id": N, "deduplicated": false}`.
//!
//! **A listener of its own.** Webhook callers (a Git host, a payment provider, `curl`)
//! have no client certificate, and the side listener (`/metrics`, `/healthz`, `/readyz`)
//! requires one. Rather than making client certificates optional there, and then keeping
//! every other path's check right forever, webhooks get a separate HTTPS listener: the
//! node's server certificate, no client certificate asked for, TLS 1.3, HTTP/1.1, and
//! nothing on it but this one route. Its connections go through [`crate::accept`] with
//! [`crate::accept::WEBHOOK_LIMITS`] (handshakes off the accept loop, bounded in time and
//! number; bounded open connections). Each connection serves one request (no keep-alive),
//! must send its headers within [`HEADER_TIMEOUT`] and is closed, answered or not, at
//! [`CONNECTION_DEADLINE`] (a body still trickling in then is dropped unqueued); headers
//! are bounded by [`MAX_HEADER_BYTES`].
//!
//! **The secret** ([`secret`]) is sent as `Authorization: Bearer <secret>` or as
//! `?token=<secret>` (for senders that cannot set headers; a query string can end up in
//! access logs, so prefer the header). It is checked against the SHA-256 kept in the
//! replicated `w/` row, in constant time.
//!
//! **One path for queueing.** The task goes through [`crate::api::tenant::queue`], the
//! path of the gRPC `QueueTasks`: the same validation and tenant limits, the same
//! idempotency (an `Idempotency-Key` header is the call's idempotency key, so a retried
//! delivery gets the first delivery's task id), the same proposal batcher, forwarded to
//! the leader when this node is a follower. Lookups pass a linearizable read barrier
//! first, so a secret that was rotated or disabled stops working at once on every node.
//!
//! **Answers** (each counted in `drover_webhook_requests_total{result}`). A blocked
//! address is answered before anything else is looked at; the secret is checked before
//! the body is read:
//!
//! | status | result label | when |
//! |---|---|---|
//! | 429 + `Retry-After` | `rate_limited` | the source address has used up its failed attempts ([`limiter`]) |
//! | 405 | `bad_request` | not a POST |
//! | 401 | `unauthorized` | no secret, or a wrong one (counts as a failed attempt) |
//! | 404 | `not_found` | no such tenant, no such code, or a code without a webhook, or a caller outside the tenant's `allowed_cidrs`: one identical body for all (counts as a failed attempt) |
//! | 413 | `too_large` | body over the tenant's `max_payload_bytes` (at most that plus one byte is read) |
//! | 429 + `Retry-After` | `queue_full` | the tenant is at its `max_queued_tasks` |
//! | 400 | `bad_request` | an invalid `Idempotency-Key` (too long, not text), a body cut short |
//! | 503 + `Retry-After` | `unavailable` | no leader right now |
//! | 202 | `accepted` / `deduplicated` | queued, or a repeated `Idempotency-Key` |
//!
//! A 401 is only possible for a code that has a webhook: the existence of a webhook is
//! not secret, its secret is. Source addresses are the TCP peer's (no forwarded-for
//! header is trusted): behind a proxy every caller shares the proxy's allowance.

pub mod limiter;
pub mod secret;

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use prometheus::IntCounterVec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::ApiCtx;
use crate::api::error::ApiError;
use crate::state::command::NewTask;
use crate::state::validate::MAX_PAYLOAD_BYTES;
use crate::tls::NodeTls;
use limiter::{FailureLimiter, FailureLimits};

/// Where webhooks are served.
pub const PATH_PREFIX: &str = "/v1/webhooks/";
/// The header that carries a delivery's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// The headers of a request must arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection (handshake done) is closed this long after it opened, whatever it is doing.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// hyper's read buffer, which bounds the request line and headers.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// `Retry-After` when the tenant's queue is full: long enough for agents to start some
/// of its tasks, short enough that a sender's retry schedule does not give up.
pub const QUEUE_FULL_RETRY_AFTER_S: u64 = 5;
/// `Retry-After` while no leader is known (an election takes about a second).
pub const UNAVAILABLE_RETRY_AFTER_S: u64 = 1;

/// The path of a code's webhook. Tenant ids and code names are `[A-Za-z0-9._-]` (see
/// [`crate::state::validate::name`]), so they need no escaping.
pub fn path(tenant: &str, code: &str) -> String {
    format!("{PATH_PREFIX}{tenant}/{code}")
}

/// `(tenant, code)` from a webhook path, or None for any other path.
fn parse_path(p: &str) -> Option<(&str, &str)> {
    let (tenant, code) = p.strip_prefix(PATH_PREFIX)?.split_once('/')?;
    let ok = |s: &str| crate::state::validate::name("", s).is_ok();
    (ok(tenant) && ok(code)).then_some((tenant, code))
}

/// The secret a request carries: `Authorization: Bearer`, else `?token=`.
fn presented_secret<B>(req: &Request<B>) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string());
    }
    req.uri().query()?.split('&').find_map(|kv| kv.strip_prefix("token=")).map(str::to_string)
}

/// Why a request ended as it did: its status and its `result` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Deduplicated,
    RateLimited,
    Unauthorized,
    NotFound,
    TooLarge,
    QueueFull,
    BadRequest,
    Unavailable,
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Deduplicated => "deduplicated",
            Outcome::RateLimited => "rate_limited",
            Outcome::Unauthorized => "unauthorized",
            Outcome::NotFound => "not_found",
            Outcome::TooLarge => "too_large",
            Outcome::QueueFull => "queue_full",
            Outcome::BadRequest => "bad_request",
            Outcome::Unavailable => "unavailable",
            Outcome::Error => "error",
        }
    }

    /// Whether the attempt counts against the source address.
    fn is_failed_attempt(self) -> bool {
        matches!(self, Outcome::Unauthorized | Outcome::NotFound)
    }
}

type Answer = (Outcome, Response<Full<Bytes>>);

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(outcome: Outcome, status: StatusCode, message: &str) -> Answer {
    (outcome, json(status, serde_json::json!({ "error": message })))
}

fn retry_after(mut a: Answer, seconds: u64) -> Answer {
    a.1.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    a
}

/// The one answer for every unknown tenant, unknown code and code without a webhook.
fn not_found() -> Answer {
    error(Outcome::NotFound, StatusCode::NOT_FOUND, "no such webhook")
}

/// What the listener shares between connections.
pub struct Webhooks {
    ctx: Arc<ApiCtx>,
    failures: Mutex<FailureLimiter>,
    requests: IntCounterVec,
}

impl Webhooks {
    pub fn new(ctx: Arc<ApiCtx>, limits: FailureLimits, requests: IntCounterVec) -> Self {
        Webhooks { ctx, failures: Mutex::new(FailureLimiter::new(limits)), requests }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, FailureLimiter> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn handle(
        self: Arc<Self>,
        peer: IpAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let (outcome, resp) = self.answer(peer, req).await;
        if outcome.is_failed_attempt() {
            self.failures().fail(peer, Instant::now());
        }
        self.requests.with_label_values(&[outcome.label()]).inc();
        tracing::debug!(%peer, result = outcome.label(), status = resp.status().as_u16(), "webhook request");
        Ok(resp)
    }

    async fn answer(&self, peer: IpAddr, req: Request<Incoming>) -> Answer {
        if let Some(wait) = self.failures().blocked(peer, Instant::now()) {
            let a = error(
                Outcome::RateLimited,
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed attempts from this address",
            );
            return retry_after(a, wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
        }
        let Some((tenant, code)) = parse_path(req.uri().path()).map(|(t, c)| (t.to_string(), c.to_string())) else {
            return not_found();
        };
        if req.method() != Method::POST {
            let mut a = error(Outcome::BadRequest, StatusCode::METHOD_NOT_ALLOWED, "webhooks take POST");
            a.1.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
            return a;
        }
        let Some(token) = presented_secret(&req) else {
            return error(
                Outcome::Unauthorized,
                StatusCode::UNAUTHORIZED,
                "missing secret: send Authorization: Bearer <secret> or ?token=<secret>",
            );
        };
        if let Err(e) = self.ctx.read_barrier().await {
            return api_error(e);
        }
        let lookup = match self.lookup(&tenant, &code, peer) {
            Ok(l) => l,
            Err(e) => return api_error(e),
        };
        let Some((hash, max_payload_bytes)) = lookup else { return not_found() };
        if !secret::matches(&token, &hash) {
            return error(Outcome::Unauthorized, StatusCode::UNAUTHORIZED, "wrong secret");
        }
        let key = match req.headers().get(IDEMPOTENCY_HEADER).map(|v| v.to_str()) {
            None => None,
            Some(Ok(k)) => Some(k.to_string()),
            Some(Err(_)) => return error(Outcome::BadRequest, StatusCode::BAD_REQUEST, "Idempotency-Key is not text"),
        };
        let payload = match read_body(req.into_body(), max_payload_bytes).await {
            Ok(p) => p,
            Err(a) => return a,
        };
        let task = NewTask {
            code,
            payload,
            priority: 0,
            delay_ms: 0,
            timeout_ms: 0,
            retries: None,
            retry: Default::default(),
            placement: None,
        };
        match crate::api::tenant::queue(&self.ctx, tenant, key, vec![task]).await {
            Ok((ids, deduplicated)) => {
                let Some(&task_id) = ids.first() else {
                    return error(Outcome::Error, StatusCode::INTERNAL_SERVER_ERROR, "no task id in the answer");
                };
                let outcome = if deduplicated { Outcome::Deduplicated } else { Outcome::Accepted };
                (
                    outcome,
                    json(StatusCode::ACCEPTED, serde_json::json!({ "task_id": task_id, "deduplicated": deduplicated })),
                )
            }
            Err(e) => api_error(e),
        }
    }

    /// The webhook's stored hash and the tenant's payload limit, or None for every case
    /// that answers the one 404 (no tenant, no code, no webhook, caller outside the
    /// tenant's source allowlist).
    fn lookup(&self, tenant: &str, code: &str, peer: IpAddr) -> Result<Option<([u8; 32], u64)>, ApiError> {
        let sm = self.ctx.node.sm.machine()?;
        let Some(t) = sm.tenants().get(tenant) else { return Ok(None) };
        let inside = t.allowed_cidrs.is_empty()
            || t.allowed_cidrs.iter().filter_map(|c| c.parse::<ipnet::IpNet>().ok()).any(|n| n.contains(&peer));
        if !inside {
            return Ok(None);
        }
        let Some(w) = sm.webhooks().get(&(tenant.to_string(), code.to_string())) else { return Ok(None) };
        Ok(Some((w.secret_sha256, t.limits.max_payload_bytes.min(MAX_PAYLOAD_BYTES))))
    }
}

/// The body, read up to `max_bytes` (a declared length over it is refused before reading).
async fn read_body(body: Incoming, max_bytes: u64) -> Result<Vec<u8>, Answer> {
    let too_large = || {
        error(
            Outcome::TooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is over the tenant's payload limit of {max_bytes} bytes"),
        )
    };
    if hyper::body::Body::size_hint(&body).lower() > max_bytes {
        return Err(too_large());
    }
    // `Limited` fails as soon as more than `max_bytes` have arrived: at most one read
    // buffer past the limit is ever held.
    match Limited::new(body, max_bytes as usize).collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(error(Outcome::BadRequest, StatusCode::BAD_REQUEST, &format!("reading the body: {e}"))),
    }
}

fn api_error(e: ApiError) -> Answer {
    match e {
        ApiError::NotFound(_) => not_found(),
        ApiError::Exhausted(m) => {
            retry_after(error(Outcome::QueueFull, StatusCode::TOO_MANY_REQUESTS, &m), QUEUE_FULL_RETRY_AFTER_S)
        }
        ApiError::Invalid { .. } => error(Outcome::BadRequest, StatusCode::BAD_REQUEST, &e.to_string()),
        ApiError::Unavailable(_) | ApiError::NotLeader { .. } => retry_after(
            error(Outcome::Unavailable, StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
            UNAVAILABLE_RETRY_AFTER_S,
        ),
        other => {
            tracing::warn!(error = %other, "webhook request failed");
            error(Outcome::Error, StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// Serves one connection: one request, headers within [`HEADER_TIMEOUT`], everything
/// within [`CONNECTION_DEADLINE`]; on shutdown an in-flight request gets a moment to end.
async fn serve_connection<IO>(hooks: Arc<Webhooks>, io: IO, peer: IpAddr, shutdown: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(MAX_HEADER_BYTES);
    let service = hyper::service::service_fn(move |req| hooks.clone().handle(peer, req));
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    let deadline = tokio::time::sleep(CONNECTION_DEADLINE);
    tokio::pin!(deadline);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "webhook connection ended");
            }
        }
        _ = &mut deadline => tracing::debug!(%peer, "webhook connection closed at its deadline"),
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}

/// Serves webhooks on `listener` until `shutdown`: HTTPS without client certificates
/// when `tls` is set, else plaintext (development on loopback only; the config refuses
/// anything else).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<NodeTls>>,
    hooks: Arc<Webhooks>,
    accept_metrics: crate::accept::AcceptMetrics,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    match tls {
        Some(tls) => {
            let acceptor = move || tls.webhook_acceptor();
            let limits = crate::accept::WEBHOOK_LIMITS;
            let mut incoming = crate::accept::spawn(
                "webhook",
                listener,
                acceptor,
                limits,
                accept_metrics,
                &connections,
                shutdown.clone(),
            );
            loop {
                let stream = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    s = incoming.recv() => match s { Some(s) => s, None => break },
                };
                let Some(peer) = stream.info.remote.map(|a| a.ip()) else { continue };
                connections.spawn(serve_connection(hooks.clone(), stream, peer, shutdown.clone()));
            }
        }
        None => {
            let slots = Arc::new(tokio::sync::Semaphore::new(crate::accept::WEBHOOK_LIMITS.max_connections));
            loop {
                let (tcp, remote) = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "webhook accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    },
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
                let _ = tcp.set_nodelay(true);
                let (hooks, shutdown) = (hooks.clone(), shutdown.clone());
                connections.spawn(async move {
                    serve_connection(hooks, tcp, remote.ip(), shutdown).await;
                    drop(slot);
                });
            }
        }
    }
    connections.close();
    connections.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_paths_name_a_tenant_and_a_code_and_nothing_else() {
        assert_eq!(parse_path(&path("acme", "echo")), Some(("acme", "echo")));
        assert_eq!(parse_path("/v1/webhooks/acme/my.code_2"), Some(("acme", "my.code_2")));
        for bad in ["/v1/webhooks/acme", "/v1/webhooks/acme/", "/v1/webhooks//echo", "/v1/webhooks/a/b/c", "/metrics"] {
            assert_eq!(parse_path(bad), None, "{bad}");
        }
        assert_eq!(parse_path("/v1/webhooks/../echo"), None);
    }

    fn req(auth: Option<&str>, uri: &str) -> Request<()> {
        let mut b = Request::builder().method("POST").uri(uri);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn the_secret_comes_from_a_bearer_header_or_the_token_parameter() {
        assert_eq!(presented_secret(&req(Some("Bearer abc"), "/v1/webhooks/a/b")).as_deref(), Some("abc"));
        assert_eq!(presented_secret(&req(Some("bearer  abc "), "/v1/webhooks/a/b")).as_deref(), Some("abc"));
        assert_eq!(presented_secret(&req(None, "/v1/webhooks/a/b?x=1&token=abc")).as_deref(), Some("abc"));
        assert_eq!(presented_secret(&req(None, "/v1/webhooks/a/b?tokens=abc")), None);
        assert_eq!(presented_secret(&req(Some("Basic abc"), "/v1/webhooks/a/b?token=abc")), None);
        assert_eq!(presented_secret(&req(None, "/v1/webhooks/a/b")), None);
    }

    #[test]
    fn every_not_found_answer_is_the_same() {
        let (o, r) = not_found();
        assert_eq!((o, r.status()), (Outcome::NotFound, StatusCode::NOT_FOUND));
        let (_, r2) = api_error(ApiError::NotFound("code \"x\" not found".into()));
        assert_eq!(r2.status(), StatusCode::NOT_FOUND);
        assert_eq!(format!("{:?}", r.body()), format!("{:?}", r2.body()), "the message does not leak which name");
    }

    #[test]
    fn a_full_queue_is_429_with_retry_after() {
        let (o, r) = api_error(ApiError::Exhausted("over quota".into()));
        assert_eq!((o, r.status()), (Outcome::QueueFull, StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(r.headers()[header::RETRY_AFTER], QUEUE_FULL_RETRY_AFTER_S.to_string().as_str());
    }
}
