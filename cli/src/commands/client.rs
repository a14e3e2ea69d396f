//! Connection settings shared by the client commands: the server address list, tried in
//! order, following the leader hint in `x-drover-leader`; and the client certificate for
//! mutual TLS (flags, or `DROVER_ADDR`, `DROVER_CA`, `DROVER_CERT`, `DROVER_KEY`). Without a
//! certificate the client speaks plaintext, which only a `--dev-insecure` server accepts.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[derive(Args, Clone)]
pub struct Conn {
    /// Control-plane gRPC addresses (HOST:PORT, comma-separated); any node works.
    #[arg(long, env = "DROVER_ADDR", value_delimiter = ',', default_value = "127.0.0.1:7400", global = true)]
    pub addr: Vec<String>,
    /// CA bundle (PEM) the server's certificate must chain to.
    #[arg(long, env = "DROVER_CA", global = true, requires_all = ["cert", "key"])]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) carrying your role identity.
    #[arg(long, env = "DROVER_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, env = "DROVER_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// Development only: act as this tenant against a `--dev-insecure` server (plaintext,
    /// identity in metadata instead of a certificate).
    #[arg(long, env = "DROVER_DEV_TENANT", global = true, conflicts_with = "cert")]
    pub dev_tenant: Option<String>,
}

impl Conn {
    fn tls(&self) -> anyhow::Result<Option<ClientTlsConfig>> {
        let (Some(ca), Some(cert), Some(key)) = (&self.ca, &self.cert, &self.key) else { return Ok(None) };
        let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        Ok(Some(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(ca)?))
                .identity(Identity::from_pem(read(cert)?, read(key)?)),
        ))
    }
}

/// Adds the development tenant id to every request (plaintext development servers).
#[derive(Clone)]
pub struct DevTenant(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for DevTenant {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("x-drover-tenant", v.clone());
        }
        Ok(req)
    }
}

pub type TenantClient =
    drover_proto::v1::tenant_client::TenantClient<tonic::service::interceptor::InterceptedService<Channel, DevTenant>>;

/// A tenant-API client on the first reachable address (any node serves tenant calls).
pub async fn tenant(conn: &Conn) -> anyhow::Result<TenantClient> {
    if conn.cert.is_none() && conn.dev_tenant.is_none() {
        anyhow::bail!(
            "no client certificate: set DROVER_CA, DROVER_CERT and DROVER_KEY (or --ca/--cert/--key), \
             for example with `source .drover/env` after `drover dev`"
        );
    }
    let dev = match &conn.dev_tenant {
        Some(t) => Some(t.parse().map_err(|_| anyhow::anyhow!("--dev-tenant {t:?} is not a valid tenant id"))?),
        None => None,
    };
    let mut last = None;
    for addr in &conn.addr {
        match connect(conn, addr).await {
            Ok(ch) => {
                return Ok(drover_proto::v1::tenant_client::TenantClient::with_interceptor(ch, DevTenant(dev))
                    .max_decoding_message_size(64 * 1024 * 1024));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no control-plane address given (--addr or DROVER_ADDR)")))
}

/// A one-line explanation of a failed call, with a hint where one helps.
pub fn explain(s: &tonic::Status) -> anyhow::Error {
    // A transport failure's cause (a TLS alert, say) is in the error chain, not the message.
    let mut msg = s.message().to_string();
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(s);
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg = format!("{msg}: {text}");
        }
        cause = c.source();
    }
    let hint = if msg.contains("UnknownIssuer") || msg.contains("unknown issuer") || msg.contains("BadSignature") {
        " (the server's certificate is not signed by your DROVER_CA)"
    } else if msg.contains("alert") || msg.contains("Certificate") {
        " (the server refused your client certificate: is DROVER_CERT issued by the server's CA, unexpired, for your role?)"
    } else if msg.contains("transport") {
        " (is the control plane running at DROVER_ADDR, and do DROVER_CA/DROVER_CERT belong to it?)"
    } else {
        ""
    };
    let code = match s.code() {
        tonic::Code::NotFound => "not found",
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::ResourceExhausted => "over a limit",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::DeadlineExceeded => "deadline exceeded",
        _ => "failed",
    };
    anyhow::anyhow!("{code}: {msg}{hint}")
}

pub async fn connect(conn: &Conn, addr: &str) -> anyhow::Result<Channel> {
    let tls = conn.tls()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep =
        Endpoint::from_shared(format!("{scheme}://{addr}"))?.connect_timeout(std::time::Duration::from_secs(3));
    if let Some(tls) = tls {
        ep = ep.tls_config(tls)?;
    }
    ep.connect().await.map_err(|e| {
        let detail = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_else(|| e.to_string());
        let hint = if detail.contains("UnknownIssuer") || detail.contains("certificate") {
            "; check that DROVER_CA is the CA that signed the server's certificate"
        } else {
            "; is the control plane running there? (DROVER_ADDR / --addr)"
        };
        anyhow::anyhow!("cannot reach the control plane at {addr}: {detail}{hint}")
    })
}

/// The leader's address from a status, if the server sent one.
pub fn leader_hint(status: &tonic::Status) -> Option<String> {
    status.metadata().get("x-drover-leader").and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// Calls `f` against the first reachable address, then once more against the leader if
/// the node answered that it is not the leader.
pub async fn with_leader<T, F, Fut>(conn: &Conn, mut f: F) -> anyhow::Result<T>
where
    F: FnMut(Channel) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let mut last = None;
    for addr in &conn.addr {
        let ch = match connect(conn, addr).await {
            Ok(c) => c,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        match f(ch).await {
            Ok(v) => return Ok(v),
            Err(s) => match leader_hint(&s) {
                Some(leader) => {
                    let ch = connect(conn, &leader).await?;
                    return f(ch).await.map_err(|s| anyhow::anyhow!("{}", s.message()));
                }
                None => return Err(anyhow::anyhow!("{} ({:?})", s.message(), s.code())),
            },
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no control-plane address given")))
}
