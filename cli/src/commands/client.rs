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

pub async fn connect(conn: &Conn, addr: &str) -> anyhow::Result<Channel> {
    let tls = conn.tls()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep =
        Endpoint::from_shared(format!("{scheme}://{addr}"))?.connect_timeout(std::time::Duration::from_secs(3));
    if let Some(tls) = tls {
        ep = ep.tls_config(tls)?;
    }
    ep.connect().await.map_err(|e| anyhow::anyhow!("cannot reach the control plane at {addr}: {e}"))
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
