//! The server's configuration: parsed once (TOML file, then command-line overrides) into
//! validated, typed values. Libraries never read environment variables.
//!
//! ```toml
//! node_id = 1
//! listen = "127.0.0.1:7400"        # gRPC: tenant, agent, admin and node-to-node Raft
//! advertise = "127.0.0.1:7400"     # address peers and clients use (default: listen)
//! http_listen = "127.0.0.1:7401"   # /metrics /healthz /readyz
//! webhook_listen = "0.0.0.0:7443"  # POST /v1/webhooks/<tenant>/<code> (HTTPS, no client certificate)
//! webhook_url = "https://hooks.example.com"  # what webhook URLs start with (default: https://<webhook_listen>)
//! data_dir = "/var/lib/drover"
//! raft_log_dir = "/srv/drover-log"   # the Raft log on its own disk (default: <data_dir>/raft-log)
//! initial_members = { 1 = "127.0.0.1:7400", 2 = "127.0.0.1:7410", 3 = "127.0.0.1:7420" }
//! lease_ttl = "10s"
//! idempotency_window = "24h"
//! retention = "7d"
//! cache_capacity = "64 MiB"
//! allow_unregistered_agents = true   # agents without a registration serve the shared fleet
//! dial = { "127.0.0.1:7410" = "127.0.0.1:9410" }  # reach a peer through a proxy
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub node_id: u64,
    pub listen: SocketAddr,
    #[serde(default)]
    pub advertise: Option<String>,
    pub http_listen: SocketAddr,
    /// The region this server runs in (free text, for example `eu-west`): shown on
    /// `drover_build_info` and in its logs, so a spread of voters over regions can be
    /// checked. Placement does not use it.
    #[serde(default)]
    pub region: String,
    /// 64 hex digits (a 256-bit key, for example `openssl rand -hex 32`), the same on
    /// every server: seals tenants' registry passwords at rest (see `crate::sealing`).
    /// Absent: `drover registry login` is refused.
    #[serde(default)]
    pub registry_key_file: Option<PathBuf>,
    /// The webhook listener (see `crate::webhook`): HTTPS with the node's certificate and
    /// no client certificate. Off when absent.
    #[serde(default)]
    pub webhook_listen: Option<SocketAddr>,
    /// The scheme, host and port webhook callers use (a load balancer or DNS name), for
    /// the URL `drover code webhook enable` prints. Default: `https://<webhook_listen>`.
    #[serde(default)]
    pub webhook_url: Option<String>,
    pub data_dir: PathBuf,
    /// Where the Raft log (its segment files and the vote) lives; default
    /// `<data_dir>/raft-log`. Every acknowledged write waits for an `fdatasync` of the log,
    /// so a disk of its own keeps that wait from queueing behind the state machine's and
    /// snapshots' writes. The log and the data directory are bound to each other
    /// (`storage::log_owner`): a node refuses to start with a log that is not its own.
    #[serde(default)]
    pub raft_log_dir: Option<PathBuf>,
    /// Members to bootstrap a new cluster with (node id → advertised address). The node
    /// with the smallest id initializes the cluster if its storage is empty; a node
    /// started without members waits to be added (`drover operator raft add-learner`).
    #[serde(default)]
    pub initial_members: BTreeMap<u64, String>,
    /// Mutual TLS on the gRPC listener and for node-to-node traffic.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Serve plaintext gRPC and HTTP instead, taking caller identities from metadata.
    /// Development only: refused unless every listener is on loopback, and together with
    /// `[tls]`.
    #[serde(default)]
    pub dev_insecure: bool,
    #[serde(default = "d_lease_ttl", deserialize_with = "duration")]
    pub lease_ttl: Duration,
    #[serde(default = "d_idem", deserialize_with = "duration")]
    pub idempotency_window: Duration,
    #[serde(default = "d_retention", deserialize_with = "duration")]
    pub retention: Duration,
    #[serde(default = "d_grace", deserialize_with = "duration")]
    pub timeout_grace: Duration,
    #[serde(default = "d_propose", deserialize_with = "duration")]
    pub propose_timeout: Duration,
    #[serde(default = "d_lease_wait", deserialize_with = "duration")]
    pub max_lease_wait: Duration,
    /// Most output kept per task; output past it is dropped after a visible marker.
    #[serde(default = "d_max_log")]
    pub max_task_log_bytes: bytesize::ByteSize,
    /// Memory for sled's page cache (the bulk of a node's memory use).
    #[serde(default = "d_cache")]
    pub cache_capacity: bytesize::ByteSize,
    #[serde(default)]
    pub raft: RaftTuning,
    /// Whether agents without a registration (`drover agents register`) may lease work; they
    /// serve the shared fleet only (no cluster, VPC, IP pool or egress address) either way.
    #[serde(default = "d_true")]
    pub allow_unregistered_agents: bool,
    /// Dial overrides: a peer's advertised `HOST:PORT` → the `HOST:PORT` to connect to
    /// instead (a proxy or tunnel). TLS still verifies the advertised host.
    #[serde(default)]
    pub dial: BTreeMap<String, String>,
    /// Deliberate defects for the chaos suite's self-test; debug builds only.
    #[serde(default)]
    pub test_breaks: crate::test_breaks::TestBreaks,
}

/// PEM files for mutual TLS: the CA bundle that client and peer certificates must chain
/// to (it may hold several CAs, for rotation), and this node's certificate and key (a
/// `server` role certificate with the node's IP or DNS name).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_every_entries: u64,
    /// Entries kept in the log behind a snapshot (for slow followers).
    pub keep_entries_behind_snapshot: u64,
    /// Most entries in one AppendEntries message (messages are also split past 8 MiB).
    pub max_entries_per_append: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_min_ms: 500,
            election_max_ms: 1000,
            snapshot_every_entries: 50_000,
            keep_entries_behind_snapshot: 1_000,
            max_entries_per_append: 8,
        }
    }
}

fn d_true() -> bool {
    true
}

fn d_lease_ttl() -> Duration {
    Duration::from_secs(10)
}
fn d_idem() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn d_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn d_grace() -> Duration {
    Duration::from_secs(30)
}
fn d_propose() -> Duration {
    Duration::from_secs(5)
}
fn d_cache() -> bytesize::ByteSize {
    bytesize::ByteSize::mib(64)
}
fn d_max_log() -> bytesize::ByteSize {
    bytesize::ByteSize::mib(4)
}
fn d_lease_wait() -> Duration {
    Duration::from_secs(20)
}

impl ServerConfig {
    pub fn from_toml(path: &std::path::Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: p, source })
    }

    pub fn advertised(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| self.listen.to_string())
    }

    /// What webhook URLs start with, when this node serves webhooks.
    pub fn webhook_base_url(&self) -> Option<String> {
        let listen = self.webhook_listen?;
        let scheme = if self.dev_insecure { "http" } else { "https" };
        Some(self.webhook_url.clone().unwrap_or_else(|| format!("{scheme}://{listen}")))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason: String| Err(ConfigError::Invalid { field, reason });
        if self.region.len() > 128 {
            return bad("region", format!("{} bytes is over the limit of 128", self.region.len()));
        }
        if self.node_id == 0 {
            return bad("node_id", "must be positive".into());
        }
        if self.test_breaks.any() && !cfg!(debug_assertions) {
            return bad("test_breaks", "deliberate defects are accepted by debug builds only".into());
        }
        match (&self.tls, self.dev_insecure) {
            (None, false) => {
                return bad("tls", "set [tls] ca/cert/key, or dev_insecure = true for loopback development".into());
            }
            (Some(_), true) => return bad("dev_insecure", "cannot be combined with [tls]".into()),
            (None, true)
                if !self.listen.ip().is_loopback()
                    || !self.http_listen.ip().is_loopback()
                    || self.webhook_listen.is_some_and(|w| !w.ip().is_loopback()) =>
            {
                return bad("listen", "plaintext (dev_insecure) listeners must bind to loopback".into());
            }
            _ => {}
        }
        if let Some(url) = &self.webhook_url {
            if self.webhook_listen.is_none() {
                return bad("webhook_url", "needs webhook_listen".into());
            }
            let rest =
                url.strip_prefix("https://").or_else(|| url.strip_prefix("http://").filter(|_| self.dev_insecure));
            match rest {
                Some(host) if !host.is_empty() && !host.contains(['/', '?', '#']) => {}
                _ => return bad("webhook_url", format!("{url:?} is not https://HOST[:PORT] (no path)")),
            }
        }
        if self.lease_ttl < Duration::from_millis(500) {
            return bad("lease_ttl", format!("{:?} is under the minimum of 500ms", self.lease_ttl));
        }
        if self.raft.election_min_ms <= self.raft.heartbeat_ms || self.raft.election_max_ms <= self.raft.election_min_ms
        {
            return bad("raft", "need heartbeat_ms < election_min_ms < election_max_ms".into());
        }
        for (id, addr) in &self.initial_members {
            if *id == 0 {
                return bad("initial_members", "node ids must be positive".into());
            }
            if addr.parse::<SocketAddr>().is_err() {
                return bad(
                    "initial_members",
                    format!("{addr:?} (node {id}) is not IP:port (names are not resolved here)"),
                );
            }
        }
        if !self.initial_members.is_empty() && !self.initial_members.contains_key(&self.node_id) {
            return bad("initial_members", format!("does not include this node ({})", self.node_id));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    /// The example configs under deploy/examples are what operators copy: they must parse
    /// and validate with the real parser.
    #[test]
    fn the_deploy_examples_parse_and_validate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        for id in 1..=3u64 {
            let path = dir.join(format!("server-{id}.toml"));
            let c = ServerConfig::from_toml(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            c.validate().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!((c.node_id, c.initial_members.len(), c.allow_unregistered_agents), (id, 3, false));
        }
    }
    use super::*;

    fn parse(extra: &str) -> ServerConfig {
        let text = format!(
            "node_id = 1\nlisten = \"127.0.0.1:7400\"\nhttp_listen = \"127.0.0.1:7401\"\ndata_dir = \"/tmp/x\"\n{extra}\n"
        );
        toml::from_str(&text).expect("config parses")
    }

    fn invalid_field(c: &ServerConfig) -> Option<&'static str> {
        match c.validate() {
            Err(ConfigError::Invalid { field, .. }) => Some(field),
            _ => None,
        }
    }

    const TLS: &str = "tls = { ca = \"ca.pem\", cert = \"s.pem\", key = \"s.key\" }";

    #[test]
    fn webhook_urls_default_to_the_listener_and_must_be_a_bare_origin() {
        let c = parse(&format!("{TLS}\nwebhook_listen = \"0.0.0.0:7443\""));
        assert_eq!(invalid_field(&c), None);
        assert_eq!(c.webhook_base_url().as_deref(), Some("https://0.0.0.0:7443"));
        let c =
            parse(&format!("{TLS}\nwebhook_listen = \"0.0.0.0:7443\"\nwebhook_url = \"https://hooks.example.com\""));
        assert_eq!(c.webhook_base_url().as_deref(), Some("https://hooks.example.com"));
        assert_eq!(invalid_field(&c), None);
        assert_eq!(parse(TLS).webhook_base_url(), None, "no listener, no webhooks");
        for bad in ["http://hooks.example.com", "https://hooks.example.com/x", "hooks.example.com", "https://"] {
            let c = parse(&format!("{TLS}\nwebhook_listen = \"0.0.0.0:7443\"\nwebhook_url = \"{bad}\""));
            assert_eq!(invalid_field(&c), Some("webhook_url"), "{bad}");
        }
        let c = parse(&format!("{TLS}\nwebhook_url = \"https://hooks.example.com\""));
        assert_eq!(invalid_field(&c), Some("webhook_url"), "a URL without a listener");
    }

    #[test]
    fn a_plaintext_webhook_listener_must_be_on_loopback() {
        let c = parse("dev_insecure = true\nwebhook_listen = \"0.0.0.0:7443\"");
        assert_eq!(invalid_field(&c), Some("listen"));
        let c = parse("dev_insecure = true\nwebhook_listen = \"127.0.0.1:7443\"");
        assert_eq!(invalid_field(&c), None);
        assert_eq!(c.webhook_base_url().as_deref(), Some("http://127.0.0.1:7443"));
    }
}
