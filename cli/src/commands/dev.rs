//! `drover dev`: a whole fleet on this machine in one command — a single-node control
//! plane (sled, in `./.drover`), its own CA and certificates (made on first start), one
//! agent in the same process against the local Docker engine — plus the `export` lines
//! that point the CLI at it (also written to `.drover/env`). `--demo` imports a small image
//! from the static busybox, registers a code, queues a few tasks, follows their output
//! and prints a summary, then keeps serving. Nothing is pulled from a registry.
//!
//! Loopback only; the control plane still speaks mutual TLS, with certificates for one
//! operator (`ops`), one tenant (`dev`) and one agent (`dev-agent`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use drover_identity::certs::{self, LeafSpec, Pem};
use drover_identity::{Role, SpiffeId};
use drover_proto::admin as pa;
use drover_proto::v1 as pv;
use tokio_util::sync::CancellationToken;

use super::client::{self, Conn};

#[derive(Args)]
pub struct DevArgs {
    /// Where data, certificates and the env file live.
    #[arg(long, default_value = ".drover")]
    dir: PathBuf,
    /// gRPC port on 127.0.0.1.
    #[arg(long, default_value_t = 7400)]
    port: u16,
    /// HTTP port (/metrics, /healthz, /readyz) on 127.0.0.1.
    #[arg(long, default_value_t = 7480)]
    http_port: u16,
    /// Serve webhooks (HTTPS, POST /v1/webhooks/<tenant>/<code>) on this port of 127.0.0.1.
    #[arg(long)]
    webhook_port: Option<u16>,
    /// Task slots of the in-process agent.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Build a demo image, register a code, run a few tasks and show their output.
    #[arg(long)]
    demo: bool,
}

const TENANT: &str = "dev";
const OPERATOR: &str = "ops";
const AGENT: &str = "dev-agent";
pub const DEMO_IMAGE: &str = "drover-demo/busybox:1";

struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Makes the CA and the four certificates unless they exist.
    fn ensure(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let ca_cert = self.path("ca.pem");
        let ca = if ca_cert.exists() {
            Pem {
                cert: std::fs::read_to_string(&ca_cert)?,
                key: std::fs::read_to_string(self.path("ca.key")).context("reading the dev CA key")?,
            }
        } else {
            let ca = certs::new_ca("Drover dev CA", 3650)?;
            certs::write_file(&ca_cert, &ca.cert, false)?;
            certs::write_file(&self.path("ca.key"), &ca.key, true)?;
            ca
        };
        for (role, id) in
            [(Role::Server, "1"), (Role::Operator, OPERATOR), (Role::Tenant, TENANT), (Role::Agent, AGENT)]
        {
            let name = format!("{}-{id}", role.as_str());
            if self.path(&format!("{name}.pem")).exists() {
                continue;
            }
            let mut spec = LeafSpec::new(SpiffeId::new(role, id)?, 3650);
            if role == Role::Server {
                spec.ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
                spec.dns = vec!["localhost".into()];
            }
            let leaf = certs::issue(&ca, &spec)?;
            certs::write_file(&self.path(&format!("{name}.pem")), &leaf.cert, false)?;
            certs::write_file(&self.path(&format!("{name}.key")), &leaf.key, true)?;
        }
        Ok(())
    }

    fn conn(&self, addr: &str, role: Role, id: &str) -> Conn {
        let name = format!("{}-{id}", role.as_str());
        Conn {
            addr: vec![addr.to_string()],
            ca: Some(self.path("ca.pem")),
            cert: Some(self.path(&format!("{name}.pem"))),
            key: Some(self.path(&format!("{name}.key"))),
            dev_tenant: None,
            context: None,
        }
    }
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir()?.join(p) })
}

pub async fn run(a: DevArgs) -> anyhow::Result<()> {
    let dir = absolute(&a.dir)?;
    let pki = Pki { dir: dir.join("pki") };
    pki.ensure()?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, a.port));
    let http = SocketAddr::from((Ipv4Addr::LOCALHOST, a.http_port));
    let p = |n: &str| pki.path(n).display().to_string();
    let webhook = a.webhook_port.map(|port| format!("webhook_listen = \"127.0.0.1:{port}\"\n")).unwrap_or_default();
    let server_toml = format!(
        "node_id = 1\nlisten = \"{addr}\"\nhttp_listen = \"{http}\"\n{webhook}data_dir = {:?}\n\
         tls = {{ ca = {:?}, cert = {:?}, key = {:?} }}\n[initial_members]\n1 = \"{addr}\"\n",
        dir.join("data").display().to_string(),
        p("ca.pem"),
        p("server-1.pem"),
        p("server-1.key"),
    );
    let server_cfg: drover_control_plane::config::ServerConfig =
        toml::from_str(&server_toml).context("dev server configuration")?;
    server_cfg.validate()?;

    // The engine must be there before anything starts.
    let docker = drover_runner_agent::executor::container::connect().await?;

    let shutdown = CancellationToken::new();
    let server = tokio::spawn(drover_control_plane::server::run(server_cfg, shutdown.clone()));
    let addr_s = addr.to_string();
    let ops = pki.conn(&addr_s, Role::Operator, OPERATOR);
    let started = std::time::Instant::now();
    loop {
        if server.is_finished() {
            return match server.await {
                Ok(Ok(())) => bail!("the control plane stopped during start"),
                Ok(Err(e)) => Err(anyhow::anyhow!("the control plane failed to start: {e} (is port {} free?)", a.port)),
                Err(e) => Err(e.into()),
            };
        }
        let ready = client::with_leader(&ops, |ch| async move {
            drover_proto::admin::admin_client::AdminClient::new(ch)
                .upsert_tenant(pa::UpsertTenantRequest { id: TENANT.into(), ..Default::default() })
                .await
                .map(|r| r.into_inner())
        })
        .await;
        if ready.is_ok() {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            shutdown.cancel();
            bail!("the control plane did not become ready within 30 s: {:?}", ready.err());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let agent_toml = format!(
        "control_plane = [\"{addr}\"]\ndata_dir = {:?}\nslots = {}\n\
         tls = {{ ca = {:?}, cert = {:?}, key = {:?} }}\n[limits]\nmemory = \"256 MiB\"\n",
        dir.join("agent").display().to_string(),
        a.slots,
        p("ca.pem"),
        p(&format!("agent-{AGENT}.pem")),
        p(&format!("agent-{AGENT}.key")),
    );
    let agent_cfg: drover_runner_agent::config::AgentConfig = toml::from_str(&agent_toml)?;
    agent_cfg.validate()?;
    let socket = agent_cfg.control_socket();
    let exe = std::env::current_exe().context("locating the drover binary for the watchdog")?;
    let agent = tokio::spawn(drover_runner_agent::serve::serve(agent_cfg, exe.clone()));

    let bin_dir = exe.parent().map(|p| p.display().to_string()).unwrap_or_default();
    let env = format!(
        "export PATH=\"{bin_dir}:$PATH\"\nexport DROVER_ADDR={addr}\nexport DROVER_CA={}\nexport DROVER_CERT={}\nexport DROVER_KEY={}\n\
         export DROVER_AGENT_SOCKET={}\n\
         # operator commands (drover tenant, drover operator raft): use\n\
         #   DROVER_CERT={} DROVER_KEY={}\n",
        p("ca.pem"),
        p(&format!("tenant-{TENANT}.pem")),
        p(&format!("tenant-{TENANT}.key")),
        socket.display(),
        p(&format!("operator-{OPERATOR}.pem")),
        p(&format!("operator-{OPERATOR}.key")),
    );
    let env_path = dir.join("env");
    std::fs::write(&env_path, &env).with_context(|| format!("writing {}", env_path.display()))?;
    outln!("drover dev: control plane on {addr} (mTLS), agent with {} slots, data in {}", a.slots, dir.display());
    outln!("Use the CLI from another shell with `source {}`, or:\n\n{env}", env_path.display());

    if a.demo {
        let tenant = pki.conn(&addr_s, Role::Tenant, TENANT);
        if let Err(e) = demo(&docker, &tenant).await {
            eprintln!("error: the demo failed: {e:#}");
        }
    }
    outln!("Serving. Ctrl-C stops the agent (running tasks finish first) and the control plane.");
    let r = agent.await;
    shutdown.cancel();
    let s = server.await;
    r??;
    s??;
    Ok(())
}

async fn demo(docker: &bollard::Docker, tenant: &Conn) -> anyhow::Result<()> {
    drover_runner_agent::executor::import::ensure_busybox_image(docker, DEMO_IMAGE).await?;
    let mut t = client::tenant(tenant).await?;
    let script = "echo \"hello from task $TASK_ID (attempt $TASK_ATTEMPT, lease epoch $LEASE_EPOCH)\"; \
                  echo \"payload: $(cat $PAYLOAD_FILE)\"; echo \"kernel says: $(uname -sr)\"";
    t.register_code(pv::RegisterCodeRequest {
        name: "hello".into(),
        image: DEMO_IMAGE.into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        limits: Some(pv::CodeLimits { memory_bytes: 64 << 20, cpu_millis: 500, pids: 64, timeout_ms: 60_000 }),
        ..Default::default()
    })
    .await
    .map_err(|s| client::explain(&s))?;
    let tasks = (1..=5)
        .map(|n| pv::NewTask {
            code: "hello".into(),
            payload: format!("{{\"n\": {n}}}").into_bytes(),
            ..Default::default()
        })
        .collect();
    let ids = t
        .queue_tasks(pv::QueueTasksRequest { tasks, idempotency_key: String::new() })
        .await
        .map_err(|s| client::explain(&s))?
        .into_inner()
        .task_ids;
    outln!("demo: registered code `hello` ({DEMO_IMAGE}) and queued {} tasks\n", ids.len());
    for id in &ids {
        let mut s = t
            .get_task_log(pv::GetTaskLogRequest { id: *id, from_index: 0, follow: true })
            .await
            .map_err(|s| client::explain(&s))?
            .into_inner();
        while let Some(batch) = s.message().await.map_err(|s| client::explain(&s))? {
            for c in batch.chunks {
                for line in String::from_utf8_lossy(&c.data).lines() {
                    outln!("  [{id}] {line}");
                }
            }
        }
    }
    let mut tasks = Vec::new();
    for id in &ids {
        tasks.push(t.get_task(pv::GetTaskRequest { id: *id, include_payload: false }).await?.into_inner());
    }
    outln!();
    super::output::task_table(&tasks);
    outln!("\ndemo done: try `drover task list`, `drover task logs {}`\n", ids[0]);
    Ok(())
}
