//! The agent's configuration: a TOML file, overridable by `drover agent run` flags.
//!
//! Every limit has a default that fits a small host; durations are humantime strings
//! (`"10s"`), sizes bytesize strings (`"128MiB"`). Unknown keys are refused so a typo is
//! an error, not a silently ignored setting.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// PEM files for mutual TLS: the CA bundle the control plane's certificate must chain to,
/// and this agent's `agent` role certificate and key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What the agent declares about itself; the control plane matches placement against it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Attributes {
    pub region: String,
    /// A dedicated cluster's name; empty = the shared fleet.
    pub cluster: String,
    pub vpc: String,
    pub ip_pool: String,
    pub egress_ip: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Control-plane gRPC addresses (HOST:PORT); any node works, leader hints are followed.
    pub control_plane: Vec<String>,
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Development only: plaintext to a `--dev-insecure` control plane on loopback, with
    /// this id sent in metadata instead of a certificate.
    #[serde(default)]
    pub dev_agent_id: Option<String>,
    /// Tasks run at once.
    #[serde(default = "d_slots")]
    pub slots: u32,
    #[serde(default)]
    pub attributes: Attributes,
    /// Payload files of running tasks, watchdog deadlines.
    pub data_dir: PathBuf,
    /// The local control socket (`drover agent status|drain`); default `<data_dir>/agent.sock`.
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// Optional loopback HTTP listener for `/metrics` (read-only). The control socket
    /// serves `/metrics` too.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    #[serde(default)]
    pub limits: DefaultLimits,
    #[serde(default)]
    pub images: ImageConfig,
    #[serde(default)]
    pub logs: LogConfig,
    /// SIGTERM waits this long for running tasks before handing the rest back.
    #[serde(default = "d_drain", deserialize_with = "duration")]
    pub drain_grace: Duration,
    /// A container asked to stop gets this long before it is killed.
    #[serde(default = "d_stop_grace", deserialize_with = "duration")]
    pub stop_grace: Duration,
    /// Run the out-of-process watchdog that stops containers whose lease deadline passed,
    /// even while the agent is frozen. Only turn off for debugging.
    #[serde(default = "d_true")]
    pub watchdog: bool,
    /// Docker network mode for task containers on a plain (shared-fleet) agent ("none"
    /// isolates them). An IP-pool agent uses its egress network and a VPC agent its
    /// `task_network` instead (see `executor::network`).
    #[serde(default = "d_network")]
    pub network_mode: String,
    /// A VPC agent (`attributes.vpc`): the tenant's Docker network task containers join.
    /// Required for a VPC agent, refused for any other.
    #[serde(default)]
    pub task_network: Option<String>,
    /// Dial overrides: a control-plane node's advertised `HOST:PORT` (as configured or
    /// as a leader hint names it) → the `HOST:PORT` to connect to instead (a proxy or
    /// tunnel). TLS still verifies the advertised host.
    #[serde(default)]
    pub dial: BTreeMap<String, String>,
}

/// Limits for tasks whose code sets none.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultLimits {
    pub memory: bytesize::ByteSize,
    /// CPUs in thousandths.
    pub cpu_millis: u32,
    pub pids: u32,
}

impl Default for DefaultLimits {
    fn default() -> Self {
        Self { memory: bytesize::ByteSize::mib(256), cpu_millis: 1000, pids: 256 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// Pulled at start so the first task of each does not wait.
    pub prepull: Vec<String>,
    /// Images this agent used are evicted least-recently-used past this size.
    pub disk_budget: bytesize::ByteSize,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self { prepull: Vec::new(), disk_budget: bytesize::ByteSize::gib(10) }
    }
}

/// Largest `logs.batch_bytes`: a batch may pass it by one chunk (64 KiB), and the control
/// plane takes at most 1 MiB of output per append call.
pub const MAX_LOG_BATCH_BYTES: u64 = 960 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A batch of output is shipped when it reaches this size...
    pub batch_bytes: bytesize::ByteSize,
    /// ...or this long after its first byte, whichever comes first.
    #[serde(deserialize_with = "duration")]
    pub flush_interval: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { batch_bytes: bytesize::ByteSize::kib(256), flush_interval: Duration::from_millis(200) }
    }
}

fn d_slots() -> u32 {
    4
}
fn d_drain() -> Duration {
    Duration::from_secs(60)
}
fn d_stop_grace() -> Duration {
    Duration::from_secs(5)
}
fn d_true() -> bool {
    true
}
fn d_network() -> String {
    "none".to_string()
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

/// Most slots one agent may declare (the control plane caps a lease request at 256).
pub const MAX_SLOTS: u32 = 256;

impl AgentConfig {
    pub fn from_toml(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })
    }

    pub fn control_socket(&self) -> PathBuf {
        self.control_socket.clone().unwrap_or_else(|| self.data_dir.join("agent.sock"))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: String| Err(ConfigError::Invalid { field, reason });
        if self.control_plane.is_empty() {
            return invalid("control_plane", "needs at least one HOST:PORT address".into());
        }
        if self.slots == 0 || self.slots > MAX_SLOTS {
            return invalid("slots", format!("{} is outside 1..={MAX_SLOTS}", self.slots));
        }
        match (&self.tls, &self.dev_agent_id) {
            (Some(_), Some(_)) => return invalid("dev_agent_id", "cannot be combined with [tls]".into()),
            (None, None) => {
                return invalid("tls", "is required (or dev_agent_id for a --dev-insecure control plane)".into());
            }
            _ => {}
        }
        if let Some(addr) = self.metrics_listen
            && !addr.ip().is_loopback()
        {
            return invalid("metrics_listen", format!("{addr} is not a loopback address"));
        }
        if self.logs.batch_bytes.as_u64() > MAX_LOG_BATCH_BYTES {
            return invalid(
                "logs.batch_bytes",
                format!("{} is over the limit of {}", self.logs.batch_bytes, bytesize::ByteSize(MAX_LOG_BATCH_BYTES)),
            );
        }
        let a = &self.attributes;
        match (a.vpc.is_empty(), &self.task_network) {
            (false, None) => return invalid("task_network", "is required for a VPC agent (attributes.vpc)".into()),
            (true, Some(_)) => return invalid("task_network", "is only for a VPC agent (attributes.vpc)".into()),
            _ => {}
        }
        if !a.vpc.is_empty() && !a.ip_pool.is_empty() {
            return invalid("attributes.ip_pool", "an agent serves an IP pool or a VPC, not both".into());
        }
        if a.ip_pool.is_empty() != a.egress_ip.is_empty() {
            return invalid("attributes.egress_ip", "an IP-pool agent needs both ip_pool and egress_ip".into());
        }
        if !a.egress_ip.is_empty() && a.egress_ip.parse::<std::net::Ipv4Addr>().is_err() {
            return invalid("attributes.egress_ip", format!("{:?} is not an IPv4 address", a.egress_ip));
        }
        if self.limits.memory.as_u64() < 4 * 1024 * 1024 {
            return invalid("limits.memory", "must be at least 4 MiB (Docker's minimum)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    /// The example configs under deploy/examples parse and validate with the real parser.
    #[test]
    fn the_deploy_examples_parse_and_validate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        for name in
            ["agent-eu-west.toml", "agent-us-east.toml", "agent-dedicated.toml", "agent-egress.toml", "agent-vpc.toml"]
        {
            let path = dir.join(name);
            let c = AgentConfig::from_toml(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            c.validate().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(c.control_plane.len(), 3, "{name}");
        }
    }
    use super::*;

    fn parse(extra: &str) -> Result<AgentConfig, String> {
        let text = format!("control_plane = [\"127.0.0.1:7400\"]\ndata_dir = \"/tmp/a\"\n{extra}");
        let cfg: AgentConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    #[test]
    fn defaults_durations_and_sizes() {
        let cfg = parse("dev_agent_id = \"a\"\ndrain_grace = \"5s\"\n[limits]\nmemory = \"64 MiB\"\n").expect("valid");
        assert_eq!(cfg.slots, 4);
        assert_eq!(cfg.drain_grace, Duration::from_secs(5));
        assert_eq!(cfg.limits.memory.as_u64(), 64 << 20);
        assert_eq!(cfg.network_mode, "none");
        assert!(cfg.watchdog);
        assert_eq!(cfg.control_socket(), PathBuf::from("/tmp/a/agent.sock"));
    }

    #[test]
    fn bad_settings_name_the_field() {
        let err = |extra: &str| parse(extra).expect_err("invalid");
        assert!(err("dev_agent_id = \"a\"\nslots = 0").contains("invalid slots"));
        assert!(err("dev_agent_id = \"a\"\nslots = 257").contains("1..=256"));
        assert!(err("").contains("invalid tls"));
        assert!(err("dev_agent_id = \"a\"\nmetrics_listen = \"0.0.0.0:9100\"").contains("invalid metrics_listen"));
        assert!(err("dev_agent_id = \"a\"\n[limits]\nmemory = \"1 MiB\"").contains("invalid limits.memory"));
        assert!(err("dev_agent_id = \"a\"\nslotz = 3").contains("unknown field"));
        assert!(err("dev_agent_id = \"a\"\n[logs]\nbatch_bytes = \"2 MiB\"").contains("invalid logs.batch_bytes"));
    }

    #[test]
    fn pool_and_vpc_agents_say_what_they_need() {
        let err = |extra: &str| parse(&format!("dev_agent_id = \"a\"\n{extra}")).expect_err("invalid");
        let ok = |extra: &str| parse(&format!("dev_agent_id = \"a\"\n{extra}")).expect("valid");
        assert!(err("[attributes]\nvpc = \"corp\"").contains("invalid task_network: is required for a VPC agent"));
        assert!(err("task_network = \"corp-net\"").contains("invalid task_network: is only for a VPC agent"));
        assert!(err("[attributes]\nip_pool = \"p\"").contains("invalid attributes.egress_ip"));
        assert!(err("[attributes]\nip_pool = \"p\"\negress_ip = \"10.0.0.300\"").contains("not an IPv4 address"));
        let both = "task_network = \"n\"\n[attributes]\nvpc = \"v\"\nip_pool = \"p\"\negress_ip = \"10.0.0.1\"";
        assert!(err(both).contains("an IP pool or a VPC, not both"));
        assert_eq!(
            ok("task_network = \"corp-net\"\n[attributes]\nvpc = \"corp\"").task_network.as_deref(),
            Some("corp-net")
        );
        assert_eq!(ok("[attributes]\nip_pool = \"p\"\negress_ip = \"10.0.0.1\"").attributes.egress_ip, "10.0.0.1");
    }
}
