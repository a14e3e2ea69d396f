//! A cluster of real `drover server` processes on loopback.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use drover_proto::admin as pa;

use drover_identity::certs::{self, LeafSpec, Pem};
use drover_identity::{Role, SpiffeId};

use crate::clients::{self, Creds};
use crate::net::{self, Net};

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub nodes: u64,
    /// Passed as `--lease-ttl` (for example "3s").
    pub lease_ttl: Option<String>,
    /// Extra TOML lines appended to every node's config file.
    pub extra_config: String,
    /// Mutual TLS with a CA made for the cluster (otherwise plaintext development mode).
    pub tls: bool,
    /// Route every server→server, agent→server and client→server connection through a
    /// fault proxy ([`crate::net::Net`]); the value seeds the proxies' jitter.
    pub proxied: Option<u64>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self { nodes: 3, lease_ttl: None, extra_config: String::new(), tls: false, proxied: None }
    }
}

pub struct NodeProc {
    pub id: u64,
    pub addr: String,
    pub http: String,
    /// The webhook listener's address, in a cluster started with
    /// [`Cluster::start_with_webhooks`].
    pub webhook: Option<String>,
    pub data_dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// The identity its TLS certificate carries (normally `server/<id>`).
    identity: (Role, String),
}

pub struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, NodeProc>,
    opts: ClusterOptions,
    /// The cluster's CA in TLS mode.
    ca: Option<Pem>,
    /// The fault proxies, when started with `proxied`.
    net: Option<std::sync::Arc<Net>>,
    /// Keep the directory (logs, data, certificates) when dropped.
    keep: bool,
}

pub(crate) fn signal(child: &Child, sig: i32) -> anyhow::Result<()> {
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    let rc = unsafe_kill(pid, sig);
    if rc != 0 {
        bail!("kill({pid}, {sig}) failed: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

#[allow(unsafe_code)]
fn unsafe_kill(pid: i32, sig: i32) -> i32 {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid, sig) }
}

impl Cluster {
    /// Starts `opts.nodes` servers that bootstrap one cluster, and waits for a leader.
    pub async fn start(bin: &Path, opts: ClusterOptions) -> anyhow::Result<Self> {
        Self::start_inner(bin, opts, false).await
    }

    /// [`Cluster::start`], with a `webhook_listen` on every node ([`Cluster::webhook`]).
    pub async fn start_with_webhooks(bin: &Path, opts: ClusterOptions) -> anyhow::Result<Self> {
        Self::start_inner(bin, opts, true).await
    }

    async fn start_inner(bin: &Path, opts: ClusterOptions, webhooks: bool) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("drover-cluster-").tempdir()?;
        let ca = if opts.tls { Some(certs::new_ca("drover test CA", 30)?) } else { None };
        let net = opts.proxied.map(|seed| std::sync::Arc::new(Net::new(seed)));
        let mut c =
            Cluster { bin: bin.to_path_buf(), dir, nodes: BTreeMap::new(), opts: opts.clone(), ca, net, keep: false };
        let mut members = BTreeMap::new();
        for id in 1..=opts.nodes {
            let mut n = c.make_node(id)?;
            if webhooks {
                n.webhook = Some(format!("127.0.0.1:{}", crate::ports::reserve()?));
            }
            members.insert(id, n.addr.clone());
            c.nodes.insert(id, n);
        }
        if let Some(net) = &c.net {
            for (to, addr) in &members {
                net.link(net::CLIENT, *to, addr)?;
                for from in members.keys().filter(|f| *f != to) {
                    net.link(&net::server(*from), *to, addr)?;
                }
            }
        }
        for id in 1..=opts.nodes {
            c.write_config(id, &members, true)?;
            c.spawn(id)?;
        }
        if let Err(e) = c.wait_leader(Duration::from_secs(30)).await {
            let logs: Vec<String> =
                c.ids().into_iter().map(|id| format!("--- node {id} ---\n{}", c.log_tail(id, 15))).collect();
            bail!("{e}\n{}", logs.join("\n"));
        }
        Ok(c)
    }

    fn make_node(&self, id: u64) -> anyhow::Result<NodeProc> {
        let base = self.dir.path().join(format!("node{id}"));
        std::fs::create_dir_all(&base)?;
        Ok(NodeProc {
            id,
            addr: format!("127.0.0.1:{}", crate::ports::reserve()?),
            http: format!("127.0.0.1:{}", crate::ports::reserve()?),
            webhook: None,
            data_dir: base.join("data"),
            config: base.join("drover.toml"),
            log: base.join("server.log"),
            child: None,
            identity: (Role::Server, id.to_string()),
        })
    }

    /// `members`: the cluster's members (for the dial overrides); they are written as
    /// `initial_members` when `bootstrap` (a node started otherwise waits to be added).
    fn write_config(&self, id: u64, members: &BTreeMap<u64, String>, bootstrap: bool) -> anyhow::Result<()> {
        let n = &self.nodes[&id];
        let mut toml = format!(
            "node_id = {id}\nlisten = \"{}\"\nhttp_listen = \"{}\"\ndata_dir = {:?}\n",
            n.addr,
            n.http,
            n.data_dir.display().to_string()
        );
        match &self.ca {
            None => toml.push_str("dev_insecure = true\n"),
            Some(ca) => {
                let dir = n.config.parent().context("node dir")?;
                let (ca_path, cert, key) = (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"));
                certs::write_file(&ca_path, &ca.cert, false)?;
                self.write_node_cert(id)?;
                toml.push_str(&format!(
                    "tls = {{ ca = {:?}, cert = {:?}, key = {:?} }}\n",
                    ca_path.display().to_string(),
                    cert.display().to_string(),
                    key.display().to_string()
                ));
            }
        }
        if let Some(w) = &n.webhook {
            toml.push_str(&format!("webhook_listen = \"{w}\"\n"));
        }
        if let Some(ttl) = &self.opts.lease_ttl {
            toml.push_str(&format!("lease_ttl = \"{ttl}\"\n"));
        }
        if let Some(net) = &self.net {
            let dial: Vec<String> = members
                .iter()
                .filter(|(to, _)| **to != id)
                .map(|(to, addr)| Ok(format!("{addr:?} = {:?}", net.link(&net::server(id), *to, addr)?.addr())))
                .collect::<std::io::Result<_>>()?;
            toml.push_str(&format!("dial = {{ {} }}\n", dial.join(", ")));
        }
        toml.push_str(&self.opts.extra_config);
        toml.push('\n');
        if bootstrap && !members.is_empty() {
            toml.push_str("[initial_members]\n");
            for (mid, addr) in members {
                toml.push_str(&format!("{mid} = \"{addr}\"\n"));
            }
        }
        std::fs::write(&n.config, toml)?;
        Ok(())
    }

    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let n = self.nodes.get_mut(&id).context("no such node")?;
        let log = File::options().create(true).append(true).open(&n.log)?;
        let child = Command::new(&self.bin)
            .arg("server")
            .arg("--config")
            .arg(&n.config)
            .env("DROVER_LOG", "info,openraft=error,sled=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        n.child = Some(child);
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    pub fn addr(&self, id: u64) -> &str {
        &self.nodes[&id].addr
    }

    /// The fault proxies of a cluster started with `proxied`.
    pub fn net(&self) -> Option<&std::sync::Arc<Net>> {
        self.net.as_ref()
    }

    /// Where a test client reaches node `id`: through its client link when proxied.
    pub fn client_addr(&self, id: u64) -> String {
        self.net.as_ref().and_then(|n| n.client_addr(id)).unwrap_or_else(|| self.addr(id).to_string())
    }

    pub fn http(&self, id: u64) -> &str {
        &self.nodes[&id].http
    }

    /// Node `id`'s webhook listener, in a cluster started with
    /// [`Cluster::start_with_webhooks`].
    pub fn webhook(&self, id: u64) -> Option<&str> {
        self.nodes[&id].webhook.as_deref()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn running_ids(&self) -> Vec<u64> {
        self.nodes.values().filter(|n| n.child.is_some()).map(|n| n.id).collect()
    }

    /// Keeps the cluster's directory (every log, data dir and certificate) after drop;
    /// returns its path.
    pub fn keep_dir(&mut self) -> PathBuf {
        self.keep = true;
        self.dir.path().to_path_buf()
    }

    /// A node's whole server log.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.nodes[&id].log).unwrap_or_default()
    }

    /// The server log of a node, for failure messages.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[&id].log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Resident memory of a running node's process, from /proc (Linux).
    pub fn rss_bytes(&self, id: u64) -> Option<u64> {
        self.proc_status_bytes(id, "VmRSS:")
    }

    /// The node process's peak resident memory so far.
    pub fn peak_rss_bytes(&self, id: u64) -> Option<u64> {
        self.proc_status_bytes(id, "VmHWM:")
    }

    /// CPU time (user + system) a running node's process has used so far, from
    /// /proc/PID/stat (Linux; clock ticks of 1/100 s, the kernel's USER_HZ everywhere).
    pub fn cpu_time(&self, id: u64) -> Option<Duration> {
        process_cpu_time(self.nodes.get(&id)?.child.as_ref()?.id())
    }

    fn proc_status_bytes(&self, id: u64, field: &str) -> Option<u64> {
        let pid = self.nodes.get(&id)?.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// kill -9: no shutdown path runs.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let n = self.nodes.get_mut(&id).context("no such node")?;
        if let Some(mut c) = n.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then wait up to 20 s for a clean exit (kill -9 after that).
    pub fn stop(&mut self, id: u64) -> anyhow::Result<()> {
        let n = self.nodes.get_mut(&id).context("no such node")?;
        let Some(mut c) = n.child.take() else { return Ok(()) };
        signal(&c, libc::SIGTERM)?;
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = c.try_wait()? {
                if !status.success() {
                    bail!("node {id} exited with {status} on SIGTERM");
                }
                return Ok(());
            }
            if Instant::now() > until {
                c.kill()?;
                c.wait()?;
                bail!("node {id} did not exit within 20s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pause(&self, id: u64) -> anyhow::Result<()> {
        signal(self.nodes[&id].child.as_ref().context("not running")?, libc::SIGSTOP)
    }

    pub fn resume(&self, id: u64) -> anyhow::Result<()> {
        signal(self.nodes[&id].child.as_ref().context("not running")?, libc::SIGCONT)
    }

    /// The node's exit status once its process has ended by itself (it is then no longer
    /// running); `None` while it runs.
    pub fn exit_status(&mut self, id: u64) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let n = self.nodes.get_mut(&id).context("no such node")?;
        let Some(c) = n.child.as_mut() else { bail!("node {id} is not running") };
        let status = c.try_wait()?;
        if status.is_some() {
            n.child = None;
        }
        Ok(status)
    }

    /// Starts a stopped or killed node again with the same ports and data.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        if self.nodes[&id].child.is_some() {
            bail!("node {id} is still running");
        }
        self.spawn(id)
    }

    /// Kills node `id`, deletes its data and starts it empty, not bootstrapping: it waits
    /// to be added to the cluster again (remove it from the membership first).
    pub fn wipe(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill(id)?;
        let data = self.nodes[&id].data_dir.clone();
        if data.exists() {
            std::fs::remove_dir_all(&data).with_context(|| format!("wiping {}", data.display()))?;
        }
        let members: BTreeMap<u64, String> = self.nodes.values().map(|n| (n.id, n.addr.clone())).collect();
        self.write_config(id, &members, false)?;
        self.spawn(id)
    }

    /// Starts a brand-new node that is not a member yet (to be added as a learner).
    pub fn start_joining_node(&mut self) -> anyhow::Result<u64> {
        let id = self.nodes.keys().max().copied().unwrap_or(0) + 1;
        self.start_joining_node_as(Role::Server, &id.to_string())
    }

    /// Like [`Cluster::start_joining_node`], but its certificate carries `role/id` (TLS mode).
    pub fn start_joining_node_as(&mut self, role: Role, ident: &str) -> anyhow::Result<u64> {
        let id = self.nodes.keys().max().copied().unwrap_or(0) + 1;
        let mut n = self.make_node(id)?;
        n.identity = (role, ident.to_string());
        self.nodes.insert(id, n);
        self.write_config(id, &BTreeMap::new(), false)?;
        self.spawn(id)?;
        Ok(id)
    }

    /// Issues a fresh certificate for node `id` (with its identity and 127.0.0.1) and
    /// writes it where its config points; returns the certificate's DER.
    pub fn write_node_cert(&self, id: u64) -> anyhow::Result<Vec<u8>> {
        let ca = self.ca.as_ref().context("not a TLS cluster")?;
        let n = &self.nodes[&id];
        let dir = n.config.parent().context("node dir")?;
        let ident = SpiffeId::new(n.identity.0, &n.identity.1)?;
        let leaf = certs::issue(ca, &LeafSpec { ips: vec!["127.0.0.1".parse()?], ..LeafSpec::new(ident, 30) })?;
        certs::write_file(&dir.join("server.pem"), &leaf.cert, false)?;
        certs::write_file(&dir.join("server.key"), &leaf.key, true)?;
        use rustls::pki_types::pem::PemObject;
        Ok(rustls::pki_types::CertificateDer::from_pem_slice(leaf.cert.as_bytes())?.as_ref().to_vec())
    }

    /// Appends a CA certificate to node `id`'s CA bundle file (takes effect on SIGHUP).
    pub fn append_ca(&self, id: u64, ca_cert_pem: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let path = self.nodes[&id].config.parent().context("node dir")?.join("ca.pem");
        let mut f = File::options().append(true).open(&path)?;
        f.write_all(ca_cert_pem.as_bytes())?;
        Ok(())
    }

    pub fn hangup(&self, id: u64) -> anyhow::Result<()> {
        signal(self.nodes[&id].child.as_ref().context("not running")?, libc::SIGHUP)
    }

    /// A TLS client configuration holding a fresh `role/id` certificate from the CA.
    fn rustls_client(&self, role: Role, id: &str, alpn: &[u8]) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let ca = self.ca.as_ref().context("not a TLS cluster")?;
        let leaf = certs::issue(ca, &LeafSpec::new(SpiffeId::new(role, id)?, 1))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca.cert.as_bytes())?)?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(leaf.cert.as_bytes())?],
                PrivateKeyDer::from_pem_slice(leaf.key.as_bytes())?,
            )?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(std::sync::Arc::new(config))
    }

    async fn tls_connect(
        &self,
        addr: &str,
        alpn: &[u8],
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        self.tls_connect_as(addr, alpn, Role::Operator, "probe").await
    }

    async fn tls_connect_as(
        &self,
        addr: &str,
        alpn: &[u8],
        role: Role,
        ident: &str,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let config = self.rustls_client(role, ident, alpn)?;
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
        Ok(tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?)
    }

    /// The DER of the leaf certificate node `id` presents to a new TLS connection.
    pub async fn presented_cert(&self, id: u64) -> anyhow::Result<Vec<u8>> {
        let tls = self.tls_connect(self.addr(id), b"h2").await?;
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).context("no certificate")?;
        Ok(leaf.as_ref().to_vec())
    }

    /// `GET path` on node `id`'s HTTP listener (HTTPS with an operator certificate in TLS
    /// mode); returns the status code and body.
    pub async fn http_get(&self, id: u64, path: &str) -> anyhow::Result<(u16, String)> {
        self.http_get_as(id, path, Role::Operator, "probe").await
    }

    /// `GET path` over HTTPS presenting a `role`/`ident` certificate (TLS mode).
    pub async fn http_get_as(&self, id: u64, path: &str, role: Role, ident: &str) -> anyhow::Result<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.http(id);
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        let mut buf = String::new();
        if self.ca.is_some() {
            let mut s = self.tls_connect_as(addr, b"http/1.1", role, ident).await?;
            s.write_all(req.as_bytes()).await?;
            // A peer that closes without close_notify is fine for a one-shot GET.
            let _ = s.read_to_string(&mut buf).await;
        } else {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(req.as_bytes()).await?;
            s.read_to_string(&mut buf).await?;
        }
        let code = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((code, body))
    }

    /// The cluster's CA (TLS mode), to issue unusual certificates in tests.
    pub fn ca(&self) -> Option<&Pem> {
        self.ca.as_ref()
    }

    /// Credentials for `role`/`id`: a freshly issued certificate in TLS mode,
    /// development-mode metadata otherwise.
    pub fn creds(&self, role: Role, id: &str) -> anyhow::Result<Creds> {
        let Some(ca) = &self.ca else { return Ok(Creds::Dev) };
        let leaf = certs::issue(ca, &LeafSpec::new(SpiffeId::new(role, id)?, 30))?;
        Ok(clients::tls_creds(&ca.cert, &leaf.cert, &leaf.key))
    }

    pub fn tenant(&self, node: u64, tenant: &str) -> anyhow::Result<clients::Tenant> {
        clients::tenant_with(self.addr(node), &self.creds(Role::Tenant, tenant)?, tenant)
    }

    pub fn agent(&self, node: u64, agent: &str) -> anyhow::Result<clients::Agent> {
        clients::agent_with(self.addr(node), &self.creds(Role::Agent, agent)?, agent)
    }

    pub fn admin(&self, node: u64) -> anyhow::Result<clients::Admin> {
        clients::admin_with(self.addr(node), &self.creds(Role::Operator, "chaos")?)
    }

    pub async fn status(&self, id: u64) -> anyhow::Result<pa::RaftStatusResponse> {
        let mut a = self.admin(id)?;
        Ok(a.raft_status(pa::RaftStatusRequest {}).await?.into_inner())
    }

    /// Waits until a running node reports itself leader and the others agree; returns it.
    pub async fn wait_leader(&self, deadline: Duration) -> anyhow::Result<u64> {
        let ids = self.running_ids();
        crate::eventually(deadline, "a leader every running node agrees on", || {
            let ids = ids.clone();
            async move {
                let mut leader = None;
                for id in &ids {
                    let s = self.status(*id).await.ok()?;
                    if !s.has_leader || leader.is_some_and(|l| l != s.leader_id) {
                        return None;
                    }
                    leader = Some(s.leader_id);
                }
                let l = leader?;
                let s = self.status(l).await.ok()?;
                (s.state == "Leader").then_some(l)
            }
        })
        .await
    }

    /// Some running node other than the leader.
    pub async fn follower(&self) -> anyhow::Result<u64> {
        let leader = self.wait_leader(Duration::from_secs(30)).await?;
        self.running_ids().into_iter().find(|id| *id != leader).context("no running follower")
    }

    /// Every running node's inspection once it has applied at least `min_applied`.
    pub async fn inspect_all(&self, min_applied: u64) -> anyhow::Result<Vec<pa::InspectNodeResponse>> {
        let mut out = Vec::new();
        for id in self.running_ids() {
            let mut a = self.admin(id)?;
            let r = a
                .inspect_node(pa::InspectNodeRequest { min_applied_index: min_applied, wait_ms: 30_000 })
                .await
                .with_context(|| format!("inspecting node {id}"))?;
            out.push(r.into_inner());
        }
        Ok(out)
    }

    /// Waits until every running node has applied what the leader has, and checks that
    /// their state digests agree. Returns that applied index and each node's view.
    pub async fn identical_replicas(&self) -> anyhow::Result<(u64, Vec<pa::InspectNodeResponse>)> {
        let leader = self.wait_leader(Duration::from_secs(30)).await?;
        let applied = self.status(leader).await?.last_applied_index;
        let views = self.inspect_all(applied).await?;
        let digests: std::collections::BTreeSet<&str> = views.iter().map(|v| v.state_digest.as_str()).collect();
        anyhow::ensure!(digests.len() == 1, "replicas diverge: {views:#?}");
        Ok((applied, views))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.nodes.values_mut() {
            if let Some(mut c) = n.child.take() {
                // Resume first in case it was paused; then kill -9 and reap.
                let _ = signal(&c, libc::SIGCONT);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if self.keep || std::env::var_os("DROVER_KEEP_TEST_DIRS").is_some() {
            let path = self.dir.path().to_path_buf();
            if !self.keep {
                eprintln!("keeping cluster dir {}", path.display());
            }
            std::mem::forget(std::mem::replace(&mut self.dir, tempfile::TempDir::new().expect("temp dir")));
        }
    }
}

/// User plus system CPU time a process has used so far, from `/proc/PID/stat`.
pub fn process_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name (which may hold spaces): utime is
    // the 14th field of the line, the 12th after it; stime the 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}
