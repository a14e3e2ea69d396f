//! Connection settings shared by the client commands: the server address list, tried in
//! order, following the leader hint in `x-drover-leader`; and the client certificate for
//! mutual TLS. Each setting comes from, in order of precedence: its flag (`--addr`,
//! `--ca`, `--cert`, `--key`), its environment variable (`DROVER_ADDR`, `DROVER_CA`,
//! `DROVER_CERT`, `DROVER_KEY`), or the named context (`--context`, `DROVER_CONTEXT`, else
//! the file's `current`) in `~/.config/drover/config.toml` (`$XDG_CONFIG_HOME` honoured):
//!
//! ```toml
//! current = "prod"
//! [contexts.prod]
//! addr = ["10.0.0.1:7400", "10.0.0.2:7400"]
//! ca = "/etc/drover/ca.pem"
//! cert = "/home/me/.drover/tenant-acme.pem"
//! key = "/home/me/.drover/tenant-acme.key"
//! ```
//!
//! Without a certificate the client speaks plaintext, which only a `--dev-insecure` server
//! accepts.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[derive(Args, Clone)]
pub struct Conn {
    /// Control-plane gRPC addresses (HOST:PORT, comma-separated); any node works.
    #[arg(help_heading = "Connection", long, env = "DROVER_ADDR", value_delimiter = ',', global = true)]
    pub addr: Vec<String>,
    /// CA bundle (PEM) the server's certificate must chain to.
    #[arg(help_heading = "Connection", long, env = "DROVER_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) carrying your role identity.
    #[arg(help_heading = "Connection", long, env = "DROVER_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(help_heading = "Connection", long, env = "DROVER_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// Development only: act as this tenant against a `--dev-insecure` server (plaintext,
    /// identity in metadata instead of a certificate).
    #[arg(help_heading = "Connection", long, env = "DROVER_DEV_TENANT", global = true, conflicts_with = "cert")]
    pub dev_tenant: Option<String>,
    /// A named context from ~/.config/drover/config.toml.
    #[arg(help_heading = "Connection", long, env = "DROVER_CONTEXT", global = true)]
    pub context: Option<String>,
}

/// One named context of the client config file.
#[derive(serde::Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct NamedContext {
    #[serde(default)]
    pub addr: Vec<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(serde::Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct ClientConfig {
    current: Option<String>,
    #[serde(default)]
    contexts: std::collections::BTreeMap<String, NamedContext>,
}

pub const DEFAULT_ADDR: &str = "127.0.0.1:7400";

pub fn config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("drover").join("config.toml"))
}

impl Conn {
    /// Fills what flags and environment left unset from the context, then defaults.
    pub fn resolve(&self) -> anyhow::Result<Conn> {
        let mut c = self.clone();
        let path = config_path();
        let file = match &path {
            Some(p) if p.exists() => {
                let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                toml::from_str::<ClientConfig>(&text).with_context(|| format!("parsing {}", p.display()))?
            }
            _ => ClientConfig::default(),
        };
        let name = self.context.clone().or(file.current.clone());
        let ctx = match &name {
            Some(n) => file.contexts.get(n).cloned().with_context(|| {
                format!(
                    "context {n:?} is not in {}",
                    path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "the client config".into())
                )
            })?,
            None => NamedContext::default(),
        };
        if c.addr.is_empty() {
            c.addr = if ctx.addr.is_empty() { vec![DEFAULT_ADDR.to_string()] } else { ctx.addr };
        }
        c.ca = c.ca.or(ctx.ca);
        if c.dev_tenant.is_none() {
            c.cert = c.cert.or(ctx.cert);
            c.key = c.key.or(ctx.key);
        }
        if c.cert.is_some() != c.key.is_some() || (c.cert.is_some() && c.ca.is_none()) {
            anyhow::bail!(
                "a client certificate needs all of DROVER_CA, DROVER_CERT and DROVER_KEY (or --ca/--cert/--key)"
            );
        }
        Ok(c)
    }
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
    let conn = &conn.resolve()?;
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
    let conn = &conn.resolve()?;
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
