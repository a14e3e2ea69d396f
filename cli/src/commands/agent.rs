//! `drover agent`: run a runner agent (`run`), and talk to a running one on this host
//! through its control socket (`status`, `drain`). `watchdog` is the agent's own helper
//! process and is not meant to be started by hand.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use drover_runner_agent::config::AgentConfig;

#[derive(Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    cmd: AgentCmd,
}

#[derive(Subcommand)]
enum AgentCmd {
    /// Run an agent: lease tasks and run them in Docker containers.
    Run(Box<RunArgs>),
    /// Show a local agent's slots, running tasks (with lease epochs) and image cache.
    Status(SocketArgs),
    /// Stop a local agent from leasing, let running tasks finish (up to its drain
    /// grace), hand the rest back, and exit.
    Drain {
        #[command(flatten)]
        socket: SocketArgs,
        /// Wait until the agent has exited.
        #[arg(long)]
        wait: bool,
    },
    /// The lease watchdog (started by the agent itself).
    #[command(hide = true)]
    Watchdog {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// TOML config file (docs/configuration.md, the agent's keys); flags override it.
    #[arg(long, env = "DROVER_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Control-plane addresses (HOST:PORT, comma-separated).
    #[arg(long, value_delimiter = ',')]
    control_plane: Vec<String>,
    /// Directory for task files, the watchdog's deadlines and the control socket.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Tasks run at once.
    #[arg(long)]
    slots: Option<u32>,
    /// CA bundle (PEM) the control plane's certificate must chain to.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// This agent's certificate (PEM, role agent).
    #[arg(long, requires = "tls_ca")]
    tls_cert: Option<PathBuf>,
    /// This agent's private key (PEM).
    #[arg(long, requires = "tls_ca")]
    tls_key: Option<PathBuf>,
    /// Development only: plaintext to a --dev-insecure control plane, with this agent id.
    #[arg(long, conflicts_with = "tls_ca")]
    dev_agent_id: Option<String>,
    /// The region this host is in.
    #[arg(long)]
    region: Option<String>,
    /// Serve only this dedicated cluster's tasks.
    #[arg(long)]
    cluster: Option<String>,
    /// Labels tasks can require, KEY=VALUE (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Loopback address for a read-only /metrics listener.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// The control socket's path (default: DATA_DIR/agent.sock).
    #[arg(long)]
    control_socket: Option<PathBuf>,
}

#[derive(Args)]
struct SocketArgs {
    /// The agent's control socket.
    #[arg(long, env = "DROVER_AGENT_SOCKET", default_value = "/var/lib/drover-agent/agent.sock")]
    socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long, value_parser = ["table", "json"], default_value = "table")]
    output: String,
}

fn config(a: RunArgs) -> anyhow::Result<AgentConfig> {
    let mut table: toml::Table = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
        }
        None => toml::Table::new(),
    };
    let s = |v: &str| toml::Value::String(v.to_string());
    if !a.control_plane.is_empty() {
        table.insert("control_plane".into(), toml::Value::Array(a.control_plane.iter().map(|x| s(x)).collect()));
    }
    if let Some(d) = &a.data_dir {
        table.insert("data_dir".into(), s(&d.to_string_lossy()));
    }
    if let Some(n) = a.slots {
        table.insert("slots".into(), toml::Value::Integer(n.into()));
    }
    if let (Some(ca), Some(cert), Some(key)) = (&a.tls_ca, &a.tls_cert, &a.tls_key) {
        let mut t = toml::Table::new();
        t.insert("ca".into(), s(&ca.to_string_lossy()));
        t.insert("cert".into(), s(&cert.to_string_lossy()));
        t.insert("key".into(), s(&key.to_string_lossy()));
        table.insert("tls".into(), toml::Value::Table(t));
        table.remove("dev_agent_id");
    }
    if let Some(id) = &a.dev_agent_id {
        table.insert("dev_agent_id".into(), s(id));
        table.remove("tls");
    }
    if let Some(addr) = a.metrics_listen {
        table.insert("metrics_listen".into(), s(&addr.to_string()));
    }
    if let Some(p) = &a.control_socket {
        table.insert("control_socket".into(), s(&p.to_string_lossy()));
    }
    let attrs = table.entry("attributes").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(attrs) = attrs.as_table_mut() else { bail!("attributes: must be a table") };
    if let Some(r) = &a.region {
        attrs.insert("region".into(), s(r));
    }
    if let Some(c) = &a.cluster {
        attrs.insert("cluster".into(), s(c));
    }
    if !a.labels.is_empty() {
        let labels = attrs.entry("labels").or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(labels) = labels.as_table_mut() else { bail!("attributes.labels: must be a table") };
        for l in &a.labels {
            let (k, v) = l.split_once('=').with_context(|| format!("--label: {l:?} is not KEY=VALUE"))?;
            labels.insert(k.to_string(), s(v));
        }
    }
    let cfg: AgentConfig = table.try_into().context("agent configuration")?;
    cfg.validate()?;
    Ok(cfg)
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    match args.cmd {
        AgentCmd::Run(a) => {
            let cfg = config(*a)?;
            let exe = std::env::current_exe().context("locating the drover binary for the watchdog")?;
            drover_runner_agent::serve::serve(cfg, exe).await?;
            Ok(())
        }
        AgentCmd::Watchdog { dir } => Ok(drover_runner_agent::watchdog::run(dir).await?),
        AgentCmd::Status(s) => {
            let (code, body) = drover_runner_agent::socket::request(&s.socket, hyper::Method::GET, "/status")
                .await
                .with_context(|| format!("is an agent running with control socket {}?", s.socket.display()))?;
            if !code.is_success() {
                bail!("agent answered {code}: {body}");
            }
            if s.output == "json" {
                outln!("{body}");
                return Ok(());
            }
            print_status(&body)
        }
        AgentCmd::Drain { socket, wait } => {
            let (code, body) = drover_runner_agent::socket::request(&socket.socket, hyper::Method::POST, "/drain")
                .await
                .with_context(|| format!("is an agent running with control socket {}?", socket.socket.display()))?;
            if !code.is_success() {
                bail!("agent answered {code}: {body}");
            }
            eprintln!("draining: {body}");
            if wait {
                while drover_runner_agent::socket::request(&socket.socket, hyper::Method::GET, "/status").await.is_ok()
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                eprintln!("agent exited");
            }
            Ok(())
        }
    }
}

fn print_status(body: &str) -> anyhow::Result<()> {
    let v: serde_json::Value = serde_json::from_str(body).context("agent status is not JSON")?;
    let get = |k: &str| v.get(k).cloned().unwrap_or_default();
    outln!(
        "agent {}  slots {}/{} busy{}  lease ttl {} ms",
        get("agent_id").as_str().unwrap_or("?"),
        get("busy"),
        get("slots"),
        if get("draining").as_bool() == Some(true) { "  DRAINING" } else { "" },
        get("lease_ttl_ms"),
    );
    outln!(
        "{:<22} {:>8} {:>7} {:<16} {:<20} {:>10}  CONTAINER",
        "TASK",
        "EPOCH",
        "ATTEMPT",
        "TENANT",
        "CODE",
        "RUNNING"
    );
    for r in get("running").as_array().cloned().unwrap_or_default() {
        let f = |k: &str| r.get(k).cloned().unwrap_or_default();
        let cid = f("container_id").as_str().map(|s| s.chars().take(12).collect::<String>()).unwrap_or_default();
        outln!(
            "{:<22} {:>8} {:>7} {:<16} {:<20} {:>9}s  {}",
            f("task_id"),
            f("lease_epoch"),
            f("attempt"),
            f("tenant").as_str().unwrap_or(""),
            f("code").as_str().unwrap_or(""),
            f("running_for_ms").as_u64().unwrap_or(0) / 1000,
            cid
        );
    }
    outln!("images:");
    for i in get("images").as_array().cloned().unwrap_or_default() {
        outln!(
            "  {} {} bytes{}",
            i.get("image").and_then(|x| x.as_str()).unwrap_or("?"),
            i.get("size_bytes").cloned().unwrap_or_default(),
            if i.get("in_use").and_then(|x| x.as_bool()) == Some(true) { " (in use)" } else { "" }
        );
    }
    Ok(())
}
