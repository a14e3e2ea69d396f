//! The agent's connection to the control plane: the only traffic it has, always dialled
//! out (the agent listens on no network port for control).
//!
//! [`ControlPlane`] is what the rest of the agent calls: one method per RPC, lease and
//! heartbeat answers paired with the send time of the attempt that was answered. The
//! gRPC [`Uplink`] implements it; tests put a simulated control plane in its place.
//!
//! Owns one lazily connected gRPC channel to the node believed to be the leader. A
//! `NotLeader` answer carries the leader's address (`x-drover-leader`): the uplink
//! switches to it and retries once at once. A transport failure or an `Unavailable`
//! without a hint moves on to the next configured address; the caller retries later.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use drover_proto::agent as pa;
use futures::future::BoxFuture;

use drover_proto::agent::agent_client::AgentClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::AgentConfig;

pub const LEADER_METADATA: &str = "x-drover-leader";
const AGENT_METADATA: &str = "x-drover-agent";

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("reading {path}: {source}")]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("the agent certificate {path} carries no usable identity: {reason}")]
    Identity { path: std::path::PathBuf, reason: String },
    #[error("invalid control-plane address {addr:?}: {reason}")]
    Address { addr: String, reason: String },
    #[error("control plane at {addr}: {status}")]
    Status { addr: String, status: Box<tonic::Status> },
}

impl UplinkError {
    /// The gRPC status, when the server answered.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            UplinkError::Status { status, .. } => Some(status),
            _ => None,
        }
    }
}

pub struct Uplink {
    addrs: Vec<String>,
    /// `[dial]` overrides: advertised address → address to connect to.
    dial: std::collections::BTreeMap<String, String>,
    tls: Option<ClientTlsConfig>,
    /// Sent as metadata in development mode (no certificate).
    dev_agent_id: Option<String>,
    agent_id: String,
    current: Mutex<Current>,
    timeout: Duration,
}

struct Current {
    index: usize,
    /// Address and channel in use; None until the first call or after a failure.
    conn: Option<(String, Channel)>,
}

impl Uplink {
    pub fn new(cfg: &AgentConfig) -> Result<Self, UplinkError> {
        let read =
            |p: &std::path::PathBuf| std::fs::read(p).map_err(|source| UplinkError::Read { path: p.clone(), source });
        let (tls, agent_id) = match (&cfg.tls, &cfg.dev_agent_id) {
            (Some(files), _) => {
                let cert = read(&files.cert)?;
                let id = drover_identity::certs::identity_from_pem(&cert)
                    .map_err(|e| UplinkError::Identity { path: files.cert.clone(), reason: e.to_string() })?;
                if id.role != drover_identity::Role::Agent {
                    return Err(UplinkError::Identity {
                        path: files.cert.clone(),
                        reason: format!("{id} is not an agent identity"),
                    });
                }
                let tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(read(&files.ca)?))
                    .identity(Identity::from_pem(cert, read(&files.key)?));
                (Some(tls), id.id)
            }
            (None, Some(id)) => (None, id.clone()),
            (None, None) => {
                return Err(UplinkError::Identity {
                    path: "<none>".into(),
                    reason: "no [tls] and no dev_agent_id".into(),
                });
            }
        };
        Ok(Uplink {
            addrs: cfg.control_plane.clone(),
            dial: cfg.dial.clone(),
            tls,
            dev_agent_id: cfg.dev_agent_id.clone(),
            agent_id,
            current: Mutex::new(Current { index: 0, conn: None }),
            timeout: Duration::from_secs(30),
        })
    }

    /// This agent's id: from its certificate, or the development id.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    fn channel(&self, addr: &str) -> Result<Channel, UplinkError> {
        let bad = |reason: String| UplinkError::Address { addr: addr.to_string(), reason };
        let target = drover_identity::dial::resolve(&self.dial, addr);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{}", target.connect))
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            let tls = match target.server_name {
                Some(name) => tls.clone().domain_name(name),
                None => tls.clone(),
            };
            ep = ep.tls_config(tls).map_err(|e| bad(e.to_string()))?;
        }
        Ok(ep.connect_lazy())
    }

    fn pick(&self) -> Result<(String, Channel), UplinkError> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = &cur.conn {
            return Ok(c.clone());
        }
        let addr = self.addrs[cur.index % self.addrs.len()].clone();
        let ch = self.channel(&addr)?;
        cur.conn = Some((addr.clone(), ch.clone()));
        Ok((addr, ch))
    }

    fn switch_to(&self, addr: &str) -> Result<(), UplinkError> {
        let ch = self.channel(addr)?;
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        cur.conn = Some((addr.to_string(), ch));
        Ok(())
    }

    fn rotate(&self) {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        cur.conn = None;
        cur.index = cur.index.wrapping_add(1);
    }

    /// Builds a request with the agent's metadata and a deadline.
    pub fn request<T>(&self, msg: T, timeout: Option<Duration>) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(timeout.unwrap_or(self.timeout));
        if let Some(id) = &self.dev_agent_id
            && let Ok(v) = id.parse()
        {
            req.metadata_mut().insert(AGENT_METADATA, v);
        }
        req
    }

    /// One call, following a leader hint once. `f` gets a client and makes the call.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, UplinkError>
    where
        F: FnMut(AgentClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_timed(f).await.map(|(r, _)| r)
    }

    /// [`Uplink::call`], also returning when the attempt that was answered was sent: the
    /// moment lease clocks count from (an earlier attempt, refused by a node that is not
    /// the leader, may have taken seconds).
    pub async fn call_timed<T, F, Fut>(&self, mut f: F) -> Result<(T, Instant), UplinkError>
    where
        F: FnMut(AgentClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut followed = false;
        loop {
            let (addr, ch) = self.pick()?;
            let client = AgentClient::new(ch).max_decoding_message_size(64 * 1024 * 1024);
            let sent = crate::clock::now();
            match f(client).await {
                Ok(r) => return Ok((r.into_inner(), sent)),
                Err(status) => {
                    let hint = status.metadata().get(LEADER_METADATA).and_then(|v| v.to_str().ok()).map(str::to_string);
                    match hint {
                        Some(leader) if !followed && leader != addr => {
                            followed = true;
                            self.switch_to(&leader)?;
                        }
                        _ => {
                            if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown) {
                                self.rotate();
                            }
                            return Err(UplinkError::Status { addr, status: Box::new(status) });
                        }
                    }
                }
            }
        }
    }
}

/// The control plane as the agent uses it. Lease and heartbeat answers come with the
/// send time of the attempt that was answered, read on the agent's clock
/// ([`crate::clock::now`]): lease clocks count from it.
pub trait ControlPlane: Send + Sync + 'static {
    /// This agent's id (from its certificate, or the development id).
    fn agent_id(&self) -> &str;
    fn lease(&self, req: pa::LeaseRequest, timeout: Duration) -> Reply<'_, (pa::LeaseResponse, Instant)>;
    fn heartbeat(&self, req: pa::HeartbeatRequest, timeout: Duration) -> Reply<'_, (pa::HeartbeatResponse, Instant)>;
    fn complete(&self, req: pa::CompleteRequest) -> Reply<'_, pa::CompleteResponse>;
    fn release(&self, req: pa::ReleaseRequest) -> Reply<'_, pa::ReleaseResponse>;
    fn append_logs(&self, req: pa::AppendLogsRequest) -> Reply<'_, pa::AppendLogsResponse>;
}

pub type Reply<'a, T> = BoxFuture<'a, Result<T, UplinkError>>;

impl ControlPlane for Uplink {
    fn agent_id(&self) -> &str {
        Uplink::agent_id(self)
    }

    fn lease(&self, req: pa::LeaseRequest, timeout: Duration) -> Reply<'_, (pa::LeaseResponse, Instant)> {
        Box::pin(self.call_timed(move |mut c| {
            let r = self.request(req.clone(), Some(timeout));
            async move { c.lease(r).await }
        }))
    }

    fn heartbeat(&self, req: pa::HeartbeatRequest, timeout: Duration) -> Reply<'_, (pa::HeartbeatResponse, Instant)> {
        Box::pin(self.call_timed(move |mut c| {
            let r = self.request(req.clone(), Some(timeout));
            async move { c.heartbeat(r).await }
        }))
    }

    fn complete(&self, req: pa::CompleteRequest) -> Reply<'_, pa::CompleteResponse> {
        Box::pin(self.call(move |mut c| {
            let r = self.request(req.clone(), None);
            async move { c.complete(r).await }
        }))
    }

    fn release(&self, req: pa::ReleaseRequest) -> Reply<'_, pa::ReleaseResponse> {
        Box::pin(self.call(move |mut c| {
            let r = self.request(req.clone(), None);
            async move { c.release(r).await }
        }))
    }

    fn append_logs(&self, req: pa::AppendLogsRequest) -> Reply<'_, pa::AppendLogsResponse> {
        Box::pin(self.call(move |mut c| {
            let r = self.request(req.clone(), None);
            async move { c.append_logs(r).await }
        }))
    }
}
