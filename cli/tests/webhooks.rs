//! Webhooks end to end: a real 3-node TLS cluster with a `webhook_listen` on every node,
//! a real HTTPS client without a client certificate, `drover code webhook enable` run as
//! a tenant does, and a real agent running the task in a Docker container that prints
//! its payload. Needs a running Docker engine: `.ci/run` installs and starts one.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::agent_tasks::*;
use drover_chaos::{AgentOptions, Cluster, ClusterOptions};
use drover_identity::{Role, SpiffeId, certs};
use drover_proto::admin as pa;
use drover_proto::v1 as pv;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject;

/// One HTTP answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    fn task_id(&self) -> u64 {
        assert_eq!(self.status, 202, "{self:?}");
        self.json()["task_id"].as_u64().unwrap_or_else(|| panic!("no task_id: {self:?}"))
    }

    fn retry_after_s(&self) -> u64 {
        let v = self.headers.get("retry-after").unwrap_or_else(|| panic!("no Retry-After: {self:?}"));
        v.to_str().ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("Retry-After {v:?}"))
    }
}

/// An HTTPS client that trusts the cluster's CA and has no certificate of its own.
struct Client {
    tls: tokio_rustls::TlsConnector,
}

impl Client {
    fn new(c: &Cluster) -> Self {
        let ca = c.ca().expect("a TLS cluster");
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.cert.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA certificate");
        }
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Client { tls: tokio_rustls::TlsConnector::from(Arc::new(config)) }
    }

    /// The TLS connection a request goes over, from the local address `from`.
    async fn connect(
        &self,
        from: Option<IpAddr>,
        addr: &str,
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let addr: SocketAddr = addr.parse().expect("webhook address");
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(ip) = from {
            sock.bind(SocketAddr::new(ip, 0)).expect("bind the source address");
        }
        let tcp = sock.connect(addr).await.expect("connect to the webhook listener");
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        self.tls.connect(name, tcp).await.expect("TLS handshake without a client certificate")
    }

    /// Writes `raw` (a whole HTTP/1.1 request) and returns the answer's status line and
    /// body, for requests the HTTP client does not make (a chunked body).
    async fn raw(&self, addr: &str, raw: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = self.connect(None, addr).await;
        tls.write_all(raw).await.expect("write request");
        let mut out = Vec::new();
        // The server answers and closes (one request per connection); a reset after the
        // answer is read is fine.
        let _ = tls.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// `POST path_and_query` to `addr` from the local address `from` (127.0.0.1 if None).
    async fn post_from(
        &self,
        from: Option<IpAddr>,
        addr: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let tls = self.connect(from, addr).await;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.expect("HTTP handshake");
        tokio::spawn(conn);
        let mut req = http::Request::builder().method("POST").uri(path_and_query).header("host", addr);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::copy_from_slice(body))).expect("request");
        let resp = sender.send_request(req).await.expect("webhook answer");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("answer body").to_bytes();
        Reply { status: parts.status.as_u16(), headers: parts.headers, body: String::from_utf8_lossy(&body).into() }
    }

    async fn post(&self, addr: &str, path_and_query: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        self.post_from(None, addr, path_and_query, headers, body).await
    }
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

/// Runs `drover code webhook ARGS -o json` as tenant `acme` against node `id`, with
/// certificate files like a tenant's.
fn webhook_cli(c: &Cluster, dir: &std::path::Path, id: u64, args: &[&str]) -> std::process::Output {
    let ca = c.ca().expect("TLS cluster");
    let leaf = certs::issue(ca, &certs::LeafSpec::new(SpiffeId::new(Role::Tenant, "acme").expect("id"), 30))
        .expect("tenant certificate");
    let (ca_path, cert, key) = (dir.join("ca.pem"), dir.join("acme.pem"), dir.join("acme.key"));
    std::fs::write(&ca_path, &ca.cert).expect("write CA");
    std::fs::write(&cert, &leaf.cert).expect("write certificate");
    std::fs::write(&key, &leaf.key).expect("write key");
    std::process::Command::new(common::bin())
        .args(["code", "webhook"])
        .args(args)
        .args(["-o", "json", "--addr", c.addr(id)])
        .arg("--ca")
        .arg(&ca_path)
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .output()
        .expect("run drover code webhook")
}

async fn tenant_with(c: &Cluster, id: &str, limits: pa::TenantLimits) {
    let mut admin = c.admin(c.ids()[0]).expect("admin client");
    let req = pa::UpsertTenantRequest { id: id.into(), limits: Some(limits), ..Default::default() };
    admin.upsert_tenant(req).await.expect("create tenant");
}

#[tokio::test]
async fn webhooks_queue_tasks_over_https_without_client_certificates() {
    let _d = docker().await;
    let opts = ClusterOptions { nodes: 3, lease_ttl: Some("5s".into()), tls: true, ..Default::default() };
    let c = Cluster::start_with_webhooks(common::bin(), opts).await.expect("start cluster");
    let follower = c.follower().await.expect("a follower");
    let others: Vec<u64> = c.ids().into_iter().filter(|id| *id != follower).collect();
    let (hook, other) = (c.webhook(follower).expect("webhook listener"), c.webhook(others[0]).expect("listener"));
    let limited = c.webhook(others[1]).expect("webhook listener");

    tenant_with(&c, "acme", pa::TenantLimits { max_payload_bytes: 1024, max_queued_tasks: 100, max_concurrency: 0 })
        .await;
    tenant_with(&c, "tight", pa::TenantLimits { max_queued_tasks: 1, ..Default::default() }).await;
    register(&c, sh("echo", "cat \"$PAYLOAD_FILE\"")).await;
    register(&c, sh("quiet", "true")).await;
    let mut t = c.tenant(c.ids()[0], "tight").expect("tenant client");
    // No agent serves region "nowhere": the task stays queued and the quota stays used.
    let hold = pv::RegisterCodeRequest {
        placement: Some(pv::Placement { region: "nowhere".into(), ..Default::default() }),
        ..sh("hold", "true")
    };
    t.register_code(hold).await.expect("register hold");

    // `drover code webhook enable` prints the URL (of the node it asked) and the secret.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = webhook_cli(&c, dir.path(), follower, &["enable", "echo"]);
    assert!(out.status.success(), "{out:?}");
    let enabled: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let secret = enabled["secret"].as_str().expect("secret").to_string();
    assert_eq!(enabled["url"], format!("https://{hook}/v1/webhooks/acme/echo"), "{enabled}");
    assert_eq!(enabled["path"], "/v1/webhooks/acme/echo");
    assert_eq!(secret.len(), 64);
    let code = tenant(&c).get_code(pv::GetCodeRequest { name: "echo".into() }).await.expect("get code").into_inner();
    assert!(code.webhook_enabled);
    let path = "/v1/webhooks/acme/echo";
    let auth = bearer(&secret);

    // 202 from a follower; the task runs with the body as its payload, byte for byte.
    let http = Client::new(&c);
    let body: Vec<u8> =
        b"{\"event\": \"push\", \"bytes\": \"".iter().copied().chain([0xff, 0x00, 0x7f]).chain(*b"\"}").collect();
    let r = http.post(hook, path, &[("authorization", &auth)], &body).await;
    let id = r.task_id();
    assert_eq!(r.json()["deduplicated"], false);
    assert_eq!(r.headers["content-type"], "application/json");
    let a = c.start_agent("runner", AgentOptions::default()).expect("start agent");
    let task = wait_finished(&c, id, Duration::from_secs(60), &[&a]).await;
    assert_eq!(state(&task), pv::TaskState::Complete, "{task:?}");
    assert_eq!(task.code, "echo");
    assert_eq!(log(&c, id).await.0, body, "the container printed the request body");

    // The secret may come as ?token= instead.
    let r = http.post(other, &format!("{path}?token={secret}"), &[], b"by query").await;
    let by_query = r.task_id();
    wait_finished(&c, by_query, Duration::from_secs(60), &[&a]).await;
    assert_eq!(log(&c, by_query).await.0, b"by query");

    // The same Idempotency-Key gives the same task, whichever node is asked.
    let key = [("authorization", auth.as_str()), ("idempotency-key", "delivery-42")];
    let first = http.post(hook, path, &key, b"once").await;
    let again = http.post(other, path, &key, b"once").await;
    assert_eq!(first.task_id(), again.task_id());
    assert_eq!(
        (first.json()["deduplicated"].as_bool(), again.json()["deduplicated"].as_bool()),
        (Some(false), Some(true))
    );

    // 401: a wrong secret, and none.
    let r = http.post(hook, path, &[("authorization", &bearer(&"0".repeat(64)))], b"x").await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = http.post(hook, path, &[], b"x").await;
    assert_eq!(r.status, 401, "{r:?}");

    // 404, one answer for an unknown tenant, an unknown code and a code without a webhook.
    let auth_h = [("authorization", auth.as_str())];
    let unknown_tenant = http.post(hook, "/v1/webhooks/nobody/echo", &auth_h, b"x").await;
    let unknown_code = http.post(hook, "/v1/webhooks/acme/nothing", &auth_h, b"x").await;
    let no_webhook = http.post(hook, "/v1/webhooks/acme/quiet", &auth_h, b"x").await;
    for r in [&unknown_tenant, &unknown_code, &no_webhook] {
        assert_eq!((r.status, &r.body), (404, &unknown_tenant.body), "{r:?}");
    }

    // 413: one byte over the tenant's payload limit; the limit itself is fine.
    let r = http.post(hook, path, &auth_h, &[b'a'; 1025]).await;
    assert_eq!(r.status, 413, "{r:?}");
    // A chunked body (no declared length) is cut off one byte past the limit too.
    let chunked = format!(
        "POST {path} HTTP/1.1\r\nhost: {hook}\r\nauthorization: {auth}\r\ntransfer-encoding: chunked\r\n\r\n\
         400\r\n{}\r\n1\r\nb\r\n0\r\n\r\n",
        "a".repeat(1024)
    );
    let answer = http.raw(hook, chunked.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let at_limit = http.post(hook, path, &auth_h, &[b'a'; 1024]).await.task_id();
    wait_finished(&c, at_limit, Duration::from_secs(60), &[&a]).await;

    // 429 with Retry-After over the tenant's queue limit.
    let tight = t.enable_webhook(pv::EnableWebhookRequest { name: "hold".into() }).await.expect("enable").into_inner();
    let tight_auth = [("authorization", bearer(&tight.secret))];
    let tight_auth: Vec<(&str, &str)> = tight_auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    http.post(other, "/v1/webhooks/tight/hold", &tight_auth, b"1").await.task_id();
    let r = http.post(other, "/v1/webhooks/tight/hold", &tight_auth, b"2").await;
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.retry_after_s() >= 1, "{r:?}");
    assert!(r.json()["error"].as_str().is_some_and(|e| e.contains("max_queued_tasks")), "{r:?}");

    // Enabling again rotates the secret: the old one stops working on every node.
    let out = webhook_cli(&c, dir.path(), others[0], &["enable", "echo"]);
    assert!(out.status.success(), "{out:?}");
    let rotated: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let new_auth = bearer(rotated["secret"].as_str().expect("secret"));
    assert_eq!(http.post(hook, path, &auth_h, b"old").await.status, 401);
    let r = http.post(hook, path, &[("authorization", &new_auth)], b"new").await;
    wait_finished(&c, r.task_id(), Duration::from_secs(60), &[&a]).await;

    // Disabled: the same 404 as for a code that never had one.
    let out = webhook_cli(&c, dir.path(), follower, &["disable", "echo"]);
    assert!(out.status.success(), "{out:?}");
    let r = http.post(hook, path, &[("authorization", &new_auth)], b"gone").await;
    assert_eq!((r.status, &r.body), (404, &unknown_tenant.body), "{r:?}");

    // Failed attempts are limited per source address (on each node): after 10, even the
    // right secret is answered 429 with Retry-After; another address is unaffected.
    let tight_path = "/v1/webhooks/tight/hold";
    let wrong = [("authorization", "Bearer wrong")];
    for i in 0..10 {
        let r = http.post(limited, tight_path, &wrong, b"x").await;
        assert_eq!(r.status, 401, "attempt {i}: {r:?}");
    }
    let r = http.post(limited, tight_path, &tight_auth, b"x").await;
    assert_eq!(r.status, 429, "{r:?}");
    assert!((1..=6).contains(&r.retry_after_s()), "{r:?}");
    assert!(r.body.contains("failed attempts"), "{r:?}");
    let elsewhere = "127.0.0.2".parse().ok();
    let r = http.post_from(elsewhere, limited, tight_path, &tight_auth, b"x").await;
    assert_eq!(r.status, 429, "another address gets through to the (full) queue: {r:?}");
    assert!(r.json()["error"].as_str().is_some_and(|e| e.contains("max_queued_tasks")), "{r:?}");

    let (status, metrics) = c.http_get(others[1], "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    for line in [
        "drover_webhook_requests_total{result=\"rate_limited\"} 1",
        "drover_webhook_requests_total{result=\"unauthorized\"} 10",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    no_containers_left(&a).await;
}
