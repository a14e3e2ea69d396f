//! Real `drover agent run` processes against a [`Cluster`], with their own data dirs,
//! control sockets and (in TLS mode) agent certificates issued by the cluster's CA.
//!
//! Agent ids are made unique per process and call ([`Cluster::start_agent`] appends a
//! suffix), because containers live on the host's one Docker engine and an agent
//! reconciles every container labelled with its id. Dropping an [`AgentProc`] kills the
//! agent and removes every container labelled with its id.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use drover_identity::certs::{self, LeafSpec};
use drover_identity::{Role, SpiffeId};

use crate::cluster::{Cluster, signal};

#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub slots: u32,
    /// Extra TOML appended to the agent's config.
    pub extra_config: String,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self { slots: 4, extra_config: String::new() }
    }
}

pub struct AgentProc {
    /// The agent id (unique per test).
    pub id: String,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Cluster {
    /// Starts an agent named `name` (made unique) dialling every node of the cluster.
    pub fn start_agent(&self, name: &str, opts: AgentOptions) -> anyhow::Result<AgentProc> {
        let id = format!("{name}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        self.start_agent_as(&id, opts)
    }

    /// Starts an agent with exactly this id (its certificate's identity), for tests that
    /// register it before it starts; the id must be unique within the cluster.
    pub fn start_agent_as(&self, id: &str, opts: AgentOptions) -> anyhow::Result<AgentProc> {
        let id = id.to_string();
        let base = self.dir().join(format!("agent-{id}"));
        std::fs::create_dir_all(&base)?;
        let data_dir = base.join("data");
        let socket = base.join("agent.sock");
        let addrs: Vec<String> = self.ids().into_iter().map(|n| format!("{:?}", self.addr(n))).collect();
        let mut toml = format!(
            "control_plane = [{}]\ndata_dir = {:?}\ncontrol_socket = {:?}\nslots = {}\n",
            addrs.join(", "),
            data_dir.display().to_string(),
            socket.display().to_string(),
            opts.slots
        );
        match self.ca() {
            None => toml.push_str(&format!("dev_agent_id = {id:?}\n")),
            Some(ca) => {
                let leaf = certs::issue(ca, &LeafSpec::new(SpiffeId::new(Role::Agent, &id)?, 30))?;
                let (ca_path, cert, key) = (base.join("ca.pem"), base.join("agent.pem"), base.join("agent.key"));
                certs::write_file(&ca_path, &ca.cert, false)?;
                certs::write_file(&cert, &leaf.cert, false)?;
                certs::write_file(&key, &leaf.key, true)?;
                toml.push_str(&format!(
                    "tls = {{ ca = {:?}, cert = {:?}, key = {:?} }}\n",
                    ca_path.display().to_string(),
                    cert.display().to_string(),
                    key.display().to_string()
                ));
            }
        }
        if let Some(net) = self.net() {
            let dial: Vec<String> = self
                .ids()
                .into_iter()
                .map(|n| {
                    Ok(format!("{:?} = {:?}", self.addr(n), net.link(&crate::net::agent(&id), n, self.addr(n))?.addr()))
                })
                .collect::<std::io::Result<_>>()?;
            toml.push_str(&format!("dial = {{ {} }}\n", dial.join(", ")));
        }
        toml.push_str(&opts.extra_config);
        toml.push('\n');
        let config = base.join("agent.toml");
        std::fs::write(&config, toml)?;
        let mut a = AgentProc {
            id,
            data_dir,
            socket,
            bin: self.bin().to_path_buf(),
            config,
            log: base.join("agent.log"),
            child: None,
        };
        a.spawn()?;
        Ok(a)
    }
}

impl AgentProc {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.bin)
            .args(["agent", "run", "--config"])
            .arg(&self.config)
            .env("DROVER_LOG", "info,h2=warn,tower=warn,hyper=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kill -9.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM (drain), then wait up to `within` for a clean exit.
    pub fn stop(&mut self, within: Duration) -> anyhow::Result<()> {
        let Some(mut c) = self.child.take() else { return Ok(()) };
        signal(&c, libc::SIGTERM)?;
        let until = Instant::now() + within;
        loop {
            if let Some(status) = c.try_wait()? {
                if !status.success() {
                    bail!("agent {} exited with {status} on SIGTERM\n{}", self.id, self.log_tail(20));
                }
                return Ok(());
            }
            if Instant::now() > until {
                c.kill()?;
                c.wait()?;
                bail!("agent {} did not exit within {within:?} of SIGTERM\n{}", self.id, self.log_tail(20));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process has exited (reaping it if so).
    pub fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        match &mut self.child {
            Some(c) => Ok(c.try_wait()?),
            None => Ok(None),
        }
    }

    pub fn pause(&self) -> anyhow::Result<()> {
        signal(self.child.as_ref().context("agent not running")?, libc::SIGSTOP)
    }

    pub fn resume(&self) -> anyhow::Result<()> {
        signal(self.child.as_ref().context("agent not running")?, libc::SIGCONT)
    }

    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("agent {} is still running", self.id);
        }
        self.spawn()
    }

    /// Ids of containers (running or not) labelled with this agent's id, via the docker CLI.
    pub fn containers(&self) -> anyhow::Result<Vec<String>> {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--no-trunc", "--filter"])
            .arg(format!("label=drover.agent-id={}", self.id))
            .output()
            .context("running docker ps")?;
        if !out.status.success() {
            bail!("docker ps: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect())
    }

    /// Ids of this agent's containers that are running.
    pub fn running_containers(&self) -> anyhow::Result<Vec<String>> {
        let out = Command::new("docker")
            .args(["ps", "-q", "--no-trunc", "--filter"])
            .arg(format!("label=drover.agent-id={}", self.id))
            .output()
            .context("running docker ps")?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect())
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.kill();
        if let Ok(ids) = self.containers()
            && !ids.is_empty()
        {
            let _ = Command::new("docker").args(["rm", "-f"]).args(&ids).stdout(Stdio::null()).status();
        }
    }
}
