//! The gRPC services: [`tenant`] (`drover.v1`), [`agent`] (`drover.agent.v1`) and
//! [`admin`] (`drover.admin.v1`). Handlers validate, propose or read, and convert; every
//! error becomes a status through [`error::ApiError`].

pub mod admin;
pub mod agent;
pub mod authz;
pub mod caller;
pub mod convert;
pub mod error;
pub mod fleet;
pub mod lease_waits;
pub mod modes;
pub mod oversize;
pub mod registries;
pub mod schedules;
pub mod tenant;

use std::sync::Arc;
use std::time::Duration;

use error::ApiError;

use crate::leader::lease_tracker::LeaseTracker;
use crate::leader::quorum_clock::QuorumClock;
use crate::raft::batcher::Batcher;
use crate::raft::node::RaftNode;
use crate::state::{Command, Response};

/// Limits and windows the API applies (from the server config).
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub idempotency_ttl: Duration,
    pub lease_ttl: Duration,
    pub max_lease_wait: Duration,
    pub max_task_log_bytes: u64,
    /// `https://host:port` that webhook URLs start with (from `webhook_url`, else
    /// `webhook_listen`); None when this node serves no webhooks.
    pub webhook_base_url: Option<String>,
    /// Deliberate defects (debug builds, chaos self-test only).
    pub breaks: crate::test_breaks::TestBreaks,
    /// Agents without a registration may lease shared-fleet work.
    pub allow_unregistered_agents: bool,
}

/// What [`ApiCtx::lease_validity`] allows: leases granted or renewed now, by the leader of
/// `term`, are valid for `valid`.
#[derive(Clone, Copy, Debug)]
pub struct LeaseWindow {
    pub term: u64,
    pub valid: Duration,
}

/// What every handler shares.
pub struct ApiCtx {
    pub node: Arc<RaftNode>,
    /// The node's TLS material (None in development mode).
    pub tls: Option<Arc<crate::tls::NodeTls>>,
    pub batcher: Batcher,
    pub cfg: ApiConfig,
    pub tracker: Arc<LeaseTracker>,
    /// Who this node, as leader, has heard from (see [`crate::leader::presence`]).
    pub presence: Arc<crate::leader::presence::Presence>,
    /// `drover_api_denied_total`, for refusals made inside handlers.
    pub denied: prometheus::IntCounterVec,
    pub quorum: Arc<QuorumClock>,
    /// Open `GetTaskLog` follow streams per tenant.
    pub log_followers: LogFollowers,
    /// Cancelled when the node shuts down: long polls and follow streams end then, since
    /// the gRPC server's graceful shutdown waits for every open call (an idle agent's
    /// `Lease` poll would hold a stopping node for `max_lease_wait`, a log follower for
    /// as long as its task runs).
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Dispatch and run times, attempt outcomes, proposal latency.
    pub task_metrics: crate::metrics::TaskApiMetrics,
    /// Open lease polls by agent class, and which of them to wake after an apply.
    pub lease_waits: Arc<lease_waits::LeaseWaits>,
    /// Seals and opens registry passwords (`registry_key_file`); None: registry logins
    /// are refused.
    pub registry_key: Option<Arc<crate::sealing::RegistryKey>>,
}

/// Most `GetTaskLog` streams with `follow` one tenant may hold open on one node.
pub const MAX_FOLLOW_STREAMS_PER_TENANT: usize = 16;

/// Counts open follow streams per tenant; a [`FollowSlot`] gives its place back on drop.
#[derive(Default)]
pub struct LogFollowers {
    open: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

/// One open follow stream of a tenant.
pub struct FollowSlot {
    open: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    tenant: String,
}

impl LogFollowers {
    /// A slot for one more follow stream of `tenant`, or `ResourceExhausted` naming the
    /// limit.
    pub fn acquire(&self, tenant: &str) -> Result<FollowSlot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(tenant.to_string()).or_default();
        if *n >= MAX_FOLLOW_STREAMS_PER_TENANT {
            return Err(ApiError::Exhausted(format!(
                "tenant {tenant} has {n} GetTaskLog follow streams open on this node, \
                 the limit is {MAX_FOLLOW_STREAMS_PER_TENANT}"
            )));
        }
        *n += 1;
        Ok(FollowSlot { open: self.open.clone(), tenant: tenant.to_string() })
    }
}

impl Drop for FollowSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

impl ApiCtx {
    /// Proposes and turns a state-machine refusal into an API error.
    pub async fn propose(&self, cmd: Command) -> Result<Response, ApiError> {
        let started = std::time::Instant::now();
        let r = self.batcher.propose(cmd).await;
        self.task_metrics.propose_seconds.observe(started.elapsed().as_secs_f64());
        match r? {
            Response::Rejected(e) => Err(e.into()),
            r => Ok(r),
        }
    }

    pub async fn read_barrier(&self) -> Result<(), ApiError> {
        Ok(self.node.read_barrier().await?)
    }

    /// Fails with the leader's address unless this node is the leader.
    pub fn require_leader(&self) -> Result<(), ApiError> {
        if self.node.is_leader() {
            return Ok(());
        }
        Err(ApiError::NotLeader { leader: self.node.leader().map(|(_, addr)| addr) })
    }

    /// How long a lease granted or renewed at `now` stays valid, or why this node may not
    /// grant or renew leases now (see [`crate::leader::quorum_clock`] for the argument):
    /// only the leader, once it has applied an entry of its own term (so its state holds
    /// every lease the previous term granted), and only for what is left of the TTL since
    /// a quorum last confirmed it.
    pub fn lease_validity(&self, now: std::time::Instant) -> Result<LeaseWindow, ApiError> {
        self.require_leader()?;
        let (term, applied_term) = {
            let m = self.node.raft.metrics();
            let m = m.borrow();
            (m.current_term, m.last_applied.map(|l| l.leader_id.term))
        };
        if applied_term != Some(term) {
            return Err(ApiError::Unavailable(format!(
                "this node has just become leader (term {term}) and has not yet applied an entry of its term; \
                 leases are served once it has"
            )));
        }
        let ttl = self.cfg.lease_ttl;
        if self.cfg.breaks.renew_without_quorum {
            return Ok(LeaseWindow { term, valid: ttl });
        }
        match self.quorum.since(term, now) {
            Some(since) if since < ttl => Ok(LeaseWindow { term, valid: ttl - since }),
            Some(since) => Err(ApiError::Unavailable(format!(
                "this leader has not confirmed a quorum for {} ms (the lease TTL is {} ms); it renews no lease",
                since.as_millis(),
                ttl.as_millis()
            ))),
            None => Err(ApiError::Unavailable(format!(
                "this leader has not yet confirmed a quorum in term {term}; leases are served once it has"
            ))),
        }
    }
}
