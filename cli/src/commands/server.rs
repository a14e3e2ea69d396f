//! `drover server`: a control-plane node from a TOML config file and flags (flags win).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use drover_control_plane::config::ServerConfig;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct ServerArgs {
    /// TOML config file (every key: docs/configuration.md).
    #[arg(long, env = "DROVER_CONFIG")]
    config: Option<PathBuf>,
    /// This node's Raft id (a positive integer, unique in the cluster and never reused).
    #[arg(long)]
    node_id: Option<u64>,
    /// gRPC listen address (tenant, agent, admin and Raft services).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address other nodes and clients use to reach this one (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// HTTP listen address for /metrics, /healthz, /readyz.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Directory for the Raft log, state-machine tables and snapshots.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Members of a new cluster, as ID=HOST:PORT, comma-separated.
    #[arg(long, value_delimiter = ',')]
    initial_members: Vec<String>,
    /// Lease TTL, for example 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    lease_ttl: Option<Duration>,
    /// CA bundle (PEM) that client and peer certificates must chain to.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// This node's server certificate (PEM).
    #[arg(long, requires = "tls_ca")]
    tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, requires = "tls_ca")]
    tls_key: Option<PathBuf>,
    /// Plaintext development mode: loopback only, identities from metadata.
    #[arg(long, conflicts_with = "tls_ca")]
    dev_insecure: bool,
}

fn parse_members(items: &[String]) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut out = BTreeMap::new();
    for item in items {
        let (id, addr) =
            item.split_once('=').with_context(|| format!("--initial-members: {item:?} is not ID=HOST:PORT"))?;
        let id: u64 = id.trim().parse().with_context(|| format!("--initial-members: {id:?} is not a node id"))?;
        out.insert(id, addr.trim().to_string());
    }
    Ok(out)
}

fn build_config(a: ServerArgs) -> anyhow::Result<ServerConfig> {
    let mut cfg = match &a.config {
        Some(path) => ServerConfig::from_toml(path)?,
        None => {
            let (Some(node_id), Some(listen), Some(http), Some(data_dir)) =
                (a.node_id, a.listen, a.http, a.data_dir.clone())
            else {
                bail!("without --config, --node-id, --listen, --http and --data-dir are required");
            };
            toml::from_str::<ServerConfig>(&format!(
                "node_id = {node_id}\nlisten = \"{listen}\"\nhttp_listen = \"{http}\"\ndata_dir = {:?}\n",
                data_dir.display().to_string()
            ))?
        }
    };
    if let Some(v) = a.node_id {
        cfg.node_id = v;
    }
    if let Some(v) = a.listen {
        cfg.listen = v;
    }
    if let Some(v) = a.advertise {
        cfg.advertise = Some(v);
    }
    if let Some(v) = a.http {
        cfg.http_listen = v;
    }
    if let Some(v) = a.data_dir {
        cfg.data_dir = v;
    }
    if !a.initial_members.is_empty() {
        cfg.initial_members = parse_members(&a.initial_members)?;
    }
    if let Some(v) = a.lease_ttl {
        cfg.lease_ttl = v;
    }
    if let (Some(ca), Some(cert), Some(key)) = (a.tls_ca, a.tls_cert, a.tls_key) {
        cfg.tls = Some(drover_control_plane::config::TlsFiles { ca, cert, key });
        cfg.dev_insecure = false;
    }
    if a.dev_insecure {
        cfg.dev_insecure = true;
    }
    cfg.validate()?;
    Ok(cfg)
}

pub async fn run(a: ServerArgs) -> anyhow::Result<()> {
    let cfg = build_config(a)?;
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
                _ = shutdown.cancelled() => return,
            }
            shutdown.cancel();
        }
    });
    let result = drover_control_plane::server::run(cfg, shutdown.clone()).await;
    shutdown.cancel();
    let _ = signals.await;
    Ok(result?)
}
