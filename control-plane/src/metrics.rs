//! The server's Prometheus registry. Gauges that mirror state (Raft progress, queue
//! depth, tasks by state) are refreshed at scrape time from Raft's metrics and the state
//! machine's in-memory indexes; labels are bounded (tenant, priority, state, reason),
//! never task ids.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::raft::node::RaftNode;
use crate::storage::sm_store::ApplyMetrics;

pub struct Metrics {
    pub registry: Registry,
    pub apply: ApplyMetrics,
    pub leases_expired: IntCounterVec,
    /// Schedule ticks this node fired as leader, by outcome.
    pub schedule_fires: IntCounterVec,
    /// Schedule ticks skipped by the catch-up rule (fired as leader by this node).
    pub schedule_ticks_missed: IntCounter,
    pub api_denied: IntCounterVec,
    /// Connections a listener dropped before serving them (`listener`, `reason`).
    pub connections_refused: IntCounterVec,
    /// AppendEntries messages refused locally as too large and resent with fewer entries.
    pub append_splits: IntCounter,
    /// Webhook requests by how they ended (`result`, see [`crate::webhook`]).
    pub webhook_requests: IntCounterVec,
    term: IntGauge,
    last_log_index: IntGauge,
    applied_index: IntGauge,
    snapshot_index: IntGauge,
    is_leader: IntGauge,
    queue_depth: IntGaugeVec,
    leases_active: IntGauge,
    tasks: IntGaugeVec,
    tasks_unplaceable: IntGauge,
    agents: IntGaugeVec,
}

#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new_custom(Some("drover".into()), None)?;
        let apply = ApplyMetrics {
            apply_seconds: Histogram::with_opts(
                HistogramOpts::new("apply_seconds", "Time to apply one batch of Raft entries to the state machine")
                    .buckets(prometheus::exponential_buckets(0.0001, 2.0, 16)?),
            )?,
            applied_entries: IntCounter::new(
                "raft_applied_entries_total",
                "Raft entries applied to the state machine",
            )?,
        };
        let m = Metrics {
            leases_expired: IntCounterVec::new(
                Opts::new("leases_expired_total", "Leases expired by the leader"),
                &["reason"],
            )?,
            schedule_fires: IntCounterVec::new(
                Opts::new("schedule_fires_total", "Schedule ticks fired by this node as leader, by outcome"),
                &["outcome"],
            )?,
            schedule_ticks_missed: IntCounter::with_opts(Opts::new(
                "schedule_ticks_missed_total",
                "Schedule ticks skipped by the catch-up rule (due while no leader fired them)",
            ))?,
            api_denied: IntCounterVec::new(
                Opts::new("api_denied_total", "Calls refused before any handler ran, by reason"),
                &["reason"],
            )?,
            connections_refused: IntCounterVec::new(
                Opts::new(
                    "connections_refused_total",
                    "Connections a listener dropped before serving them, by listener and reason",
                ),
                &["listener", "reason"],
            )?,
            append_splits: IntCounter::new(
                "raft_append_splits_total",
                "AppendEntries messages over 8 MiB resent to a follower as fewer entries",
            )?,
            webhook_requests: IntCounterVec::new(
                Opts::new(
                    "webhook_requests_total",
                    "Webhook requests by result (rate_limited: refused for failed secrets)",
                ),
                &["result"],
            )?,
            term: IntGauge::new("raft_term", "Current Raft term")?,
            last_log_index: IntGauge::new("raft_last_log_index", "Index of the last entry in this node's log")?,
            applied_index: IntGauge::new("raft_applied_index", "Index of the last entry applied on this node")?,
            snapshot_index: IntGauge::new("raft_snapshot_index", "Last log index covered by this node's snapshot")?,
            is_leader: IntGauge::new("raft_is_leader", "1 if this node is the Raft leader")?,
            queue_depth: IntGaugeVec::new(
                Opts::new("queue_depth", "Ready tasks by tenant and priority"),
                &["tenant", "priority"],
            )?,
            leases_active: IntGauge::new("leases_active", "Tasks currently leased to agents")?,
            tasks: IntGaugeVec::new(Opts::new("tasks", "Tasks held by the control plane, by state"), &["state"])?,
            tasks_unplaceable: IntGauge::new(
                "tasks_unplaceable",
                "Queued tasks whose placement no connected agent meets",
            )?,
            agents: IntGaugeVec::new(
                Opts::new("agents", "Known agents by presence (connected, or gone: not heard from within the grace)"),
                &["state"],
            )?,
            apply,
            registry,
        };
        m.registry.register(Box::new(m.apply.apply_seconds.clone()))?;
        m.registry.register(Box::new(m.apply.applied_entries.clone()))?;
        m.registry.register(Box::new(m.leases_expired.clone()))?;
        m.registry.register(Box::new(m.schedule_fires.clone()))?;
        m.registry.register(Box::new(m.schedule_ticks_missed.clone()))?;
        m.registry.register(Box::new(m.api_denied.clone()))?;
        m.registry.register(Box::new(m.connections_refused.clone()))?;
        m.registry.register(Box::new(m.append_splits.clone()))?;
        m.registry.register(Box::new(m.webhook_requests.clone()))?;
        m.registry.register(Box::new(m.term.clone()))?;
        m.registry.register(Box::new(m.last_log_index.clone()))?;
        m.registry.register(Box::new(m.applied_index.clone()))?;
        m.registry.register(Box::new(m.snapshot_index.clone()))?;
        m.registry.register(Box::new(m.is_leader.clone()))?;
        m.registry.register(Box::new(m.queue_depth.clone()))?;
        m.registry.register(Box::new(m.leases_active.clone()))?;
        m.registry.register(Box::new(m.tasks.clone()))?;
        m.registry.register(Box::new(m.tasks_unplaceable.clone()))?;
        m.registry.register(Box::new(m.agents.clone()))?;
        Ok(m)
    }

    /// The counters the TLS accept loops report to.
    pub fn accept_metrics(&self) -> crate::accept::AcceptMetrics {
        crate::accept::AcceptMetrics { denied: self.api_denied.clone(), refused: self.connections_refused.clone() }
    }

    /// Refreshes the state gauges and renders the Prometheus text exposition.
    pub fn render(&self, node: &RaftNode) -> Result<String, MetricsError> {
        let r = node.metrics();
        self.term.set(r.current_term as i64);
        self.last_log_index.set(r.last_log_index.unwrap_or(0) as i64);
        self.applied_index.set(r.last_applied.map(|l| l.index).unwrap_or(0) as i64);
        self.snapshot_index.set(r.snapshot.map(|l| l.index).unwrap_or(0) as i64);
        self.is_leader.set(i64::from(node.is_leader()));
        if let Ok(sm) = node.sm.machine() {
            let idx = sm.indexes();
            self.queue_depth.reset();
            for (tenant, priority, n) in idx.queue_depths() {
                self.queue_depth.with_label_values(&[tenant.as_str(), &priority.to_string()]).set(n as i64);
            }
            self.leases_active.set(idx.running.len() as i64);
            for s in crate::state::model::TaskState::ALL {
                self.tasks.with_label_values(&[s.as_str()]).set(idx.state_counts[s.index()] as i64);
            }
            let connected: Vec<_> = sm.connected_agents().map(|a| a.attrs.clone()).collect();
            self.tasks_unplaceable.set(crate::state::placement::unplaceable(idx, &connected) as i64);
            self.agents.with_label_values(&["connected"]).set(connected.len() as i64);
            self.agents.with_label_values(&["gone"]).set(sm.agents_gone().len() as i64);
        }
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}
