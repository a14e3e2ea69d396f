//! The server's Prometheus registry. Gauges that mirror state (Raft progress, follower
//! lag, queue depth and the age of each queue's head, tasks by state) are refreshed at
//! scrape time from Raft's metrics and the state machine's in-memory indexes; labels are
//! bounded (tenant, priority, state, reason, follower node id), never task ids. Every
//! metric is listed in `docs/operations.md` (a test compares that table with a live
//! scrape).
//!
//! Counters whose label values are a closed set start at zero for every value, so that a
//! series exists before its first event (a rate over a series that appears at 1 misses
//! that first event, and an alert on it never sees a change). The one counter fed by a
//! watcher rather than by the code that acts, `drover_raft_leader_changes_total`, is
//! driven by [`watch_leader_changes`].

use std::collections::BTreeMap;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tokio_util::sync::CancellationToken;

use crate::raft::node::RaftNode;
use crate::raft::types::NodeId;
use crate::state::model::Task;
use crate::storage::sm_store::StorageMetrics;

/// Label values known in advance, initialised to zero (see the module doc). They name
/// what the counting code passes: `leader` (lease expiry, schedule firing), `api::authz`,
/// `accept`, `http` and `webhook`.
const LEASE_EXPIRY_REASONS: &[&str] = &["lease_lost", "timeout"];
const SCHEDULE_OUTCOMES: &[&str] = &["queued", "skipped", "owed", "too_late", "failed"];
const DENIAL_REASONS: &[&str] = &[
    "no_certificate",
    "bad_certificate",
    "expired_certificate",
    "unknown_ca",
    "role",
    "source_cidr",
    "agent_attributes",
];
const READ_SIDES: &[&str] = &["leader", "follower"];
const LISTENERS: &[&str] = &["grpc", "http", "webhook"];
const REFUSAL_REASONS: &[&str] = &["connection_limit", "evicted", "tls_error", "handshake_timeout"];
const WEBHOOK_RESULTS: &[&str] = &[
    "accepted",
    "deduplicated",
    "rate_limited",
    "unauthorized",
    "not_found",
    "too_large",
    "queue_full",
    "bad_request",
    "unavailable",
    "error",
];

/// The `outcome` values of `drover_task_attempts_total`.
pub const ATTEMPT_OUTCOMES: [&str; 7] =
    ["success", "exit_code", "oom", "timeout", "killed", "image_pull", "infrastructure"];

/// Task and proposal metrics the leader's API handlers record.
#[derive(Clone)]
pub struct TaskApiMetrics {
    pub dispatch_seconds: Histogram,
    pub run_seconds: Histogram,
    pub attempts: IntCounterVec,
    pub propose_seconds: Histogram,
    /// On the leader: time to answer one agent heartbeat, from the handler's start.
    pub heartbeat_seconds: Histogram,
}

pub struct Metrics {
    pub registry: Registry,
    pub apply: StorageMetrics,
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
    /// On a follower: time to answer one AppendEntries from the leader.
    pub append_entries_seconds: Histogram,
    /// On a follower: AppendEntries the leader gave up on before this node answered.
    pub append_entries_abandoned: IntCounter,
    /// Webhook requests by how they ended (`result`, see [`crate::webhook`]).
    pub webhook_requests: IntCounterVec,
    /// Leaders this node has seen take office (fed by [`watch_leader_changes`]).
    pub leader_changes: IntCounter,
    /// Read-index rounds this node ran, as leader or as follower (caught up at scrape time
    /// from the node's own counts).
    read_index_rounds: IntCounterVec,
    /// What the leader's API handlers observe about tasks and proposals.
    pub tasks_api: TaskApiMetrics,
    build_info: IntGaugeVec,
    tls_cert_expiry: IntGauge,
    follower_lag: IntGaugeVec,
    queue_oldest_age: GaugeVec,
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
        let apply = StorageMetrics {
            apply_seconds: Histogram::with_opts(
                HistogramOpts::new("apply_seconds", "Time to apply one batch of Raft entries to the state machine")
                    .buckets(prometheus::exponential_buckets(0.0001, 2.0, 16)?),
            )?,
            applied_entries: IntCounter::new(
                "raft_applied_entries_total",
                "Raft entries applied to the state machine",
            )?,
            applied_commands: IntCounter::new(
                "raft_applied_commands_total",
                "Commands applied to the state machine (a batched entry counts each command it carries)",
            )?,
            log_sync_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "raft_log_sync_seconds",
                    "Time of one group sync (fdatasync) of the Raft log; appends are acknowledged after it",
                )
                .buckets(prometheus::exponential_buckets(0.0001, 2.0, 16)?),
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
            append_entries_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "raft_append_entries_seconds",
                    "On a follower: time from an AppendEntries arriving to its answer (entries written and synced), answered calls only",
                )
                .buckets(prometheus::exponential_buckets(0.0001, 2.0, 16)?),
            )?,
            append_entries_abandoned: IntCounter::new(
                "raft_append_entries_abandoned_total",
                "On a follower: AppendEntries the leader gave up on (past its heartbeat interval) before this node answered",
            )?,
            append_splits: IntCounter::new(
                "raft_append_splits_total",
                "AppendEntries messages over 1 MiB resent to a follower as fewer entries",
            )?,
            webhook_requests: IntCounterVec::new(
                Opts::new(
                    "webhook_requests_total",
                    "Webhook requests by result (rate_limited: refused for failed secrets)",
                ),
                &["result"],
            )?,
            leader_changes: IntCounter::new(
                "raft_leader_changes_total",
                "Leaders this node has seen take office (a new leader id, or a new term), the first after start included",
            )?,
            read_index_rounds: IntCounterVec::new(
                Opts::new(
                    "raft_read_index_rounds_total",
                    "Read-index rounds run for linearizable reads (one round serves every read waiting for it), by side",
                ),
                &["side"],
            )?,
            build_info: IntGaugeVec::new(
                Opts::new("build_info", "Always 1; the labels carry the version of the running server and its region"),
                &["version", "region"],
            )?,
            tls_cert_expiry: IntGauge::new(
                "tls_cert_expiry_seconds",
                "When this node's own TLS certificate expires, in unix seconds (absent without TLS)",
            )?,
            follower_lag: IntGaugeVec::new(
                Opts::new(
                    "raft_follower_lag_entries",
                    "On the leader: log entries each follower is behind the leader's last log index",
                ),
                &["follower"],
            )?,
            queue_oldest_age: GaugeVec::new(
                Opts::new(
                    "queue_oldest_age_seconds",
                    "Seconds the task at the head of each ready queue (the next one placement takes) has waited",
                ),
                &["tenant", "priority"],
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
                Opts::new(
                    "agents",
                    "Known agents by presence (connected, or gone: not heard from within the grace) and region",
                ),
                &["state", "region"],
            )?,
            tasks_api: TaskApiMetrics {
                dispatch_seconds: Histogram::with_opts(
                    HistogramOpts::new(
                        "task_dispatch_seconds",
                        "Time from a task becoming runnable (queued, its delay or backoff over) to its lease grant",
                    )
                    .buckets(prometheus::exponential_buckets(0.005, 2.0, 16)?),
                )?,
                run_seconds: Histogram::with_opts(
                    HistogramOpts::new("task_run_seconds", "Time from a task's container start to its accepted report")
                        .buckets(prometheus::exponential_buckets(0.05, 2.0, 18)?),
                )?,
                attempts: IntCounterVec::new(
                    Opts::new("task_attempts_total", "Task attempts whose report the leader accepted, by outcome"),
                    &["outcome"],
                )?,
                propose_seconds: Histogram::with_opts(
                    HistogramOpts::new(
                        "propose_seconds",
                        "Time for an API command to be proposed, committed and applied (batched with others)",
                    )
                    .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
                )?,
                heartbeat_seconds: Histogram::with_opts(
                    HistogramOpts::new(
                        "heartbeat_seconds",
                        "On the leader: time to answer one agent heartbeat, from its handler's start",
                    )
                    .buckets(prometheus::exponential_buckets(0.0001, 2.0, 16)?),
                )?,
            },
            apply,
            registry,
        };
        m.registry.register(Box::new(m.apply.apply_seconds.clone()))?;
        m.registry.register(Box::new(m.apply.applied_entries.clone()))?;
        m.registry.register(Box::new(m.apply.applied_commands.clone()))?;
        m.registry.register(Box::new(m.apply.log_sync_seconds.clone()))?;
        m.registry.register(Box::new(m.leases_expired.clone()))?;
        m.registry.register(Box::new(m.schedule_fires.clone()))?;
        m.registry.register(Box::new(m.schedule_ticks_missed.clone()))?;
        m.registry.register(Box::new(m.api_denied.clone()))?;
        m.registry.register(Box::new(m.connections_refused.clone()))?;
        m.registry.register(Box::new(m.append_splits.clone()))?;
        m.registry.register(Box::new(m.append_entries_seconds.clone()))?;
        m.registry.register(Box::new(m.append_entries_abandoned.clone()))?;
        m.registry.register(Box::new(m.webhook_requests.clone()))?;
        m.registry.register(Box::new(m.leader_changes.clone()))?;
        m.registry.register(Box::new(m.read_index_rounds.clone()))?;
        m.registry.register(Box::new(m.build_info.clone()))?;
        m.registry.register(Box::new(m.follower_lag.clone()))?;
        m.registry.register(Box::new(m.queue_oldest_age.clone()))?;
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
        m.registry.register(Box::new(m.tasks_api.dispatch_seconds.clone()))?;
        m.registry.register(Box::new(m.tasks_api.run_seconds.clone()))?;
        m.registry.register(Box::new(m.tasks_api.attempts.clone()))?;
        m.registry.register(Box::new(m.tasks_api.propose_seconds.clone()))?;
        m.registry.register(Box::new(m.tasks_api.heartbeat_seconds.clone()))?;
        for outcome in ATTEMPT_OUTCOMES {
            m.tasks_api.attempts.with_label_values(&[outcome]);
        }
        m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), ""]).set(1);
        for reason in LEASE_EXPIRY_REASONS {
            m.leases_expired.with_label_values(&[reason]);
        }
        for outcome in SCHEDULE_OUTCOMES {
            m.schedule_fires.with_label_values(&[outcome]);
        }
        for reason in DENIAL_REASONS {
            m.api_denied.with_label_values(&[reason]);
        }
        for listener in LISTENERS {
            for reason in REFUSAL_REASONS {
                m.connections_refused.with_label_values(&[listener, reason]);
            }
        }
        for result in WEBHOOK_RESULTS {
            m.webhook_requests.with_label_values(&[result]);
        }
        for side in READ_SIDES {
            m.read_index_rounds.with_label_values(&[side]);
        }
        Ok(m)
    }

    /// The counters the TLS accept loops report to.
    pub fn accept_metrics(&self) -> crate::accept::AcceptMetrics {
        crate::accept::AcceptMetrics { denied: self.api_denied.clone(), refused: self.connections_refused.clone() }
    }

    /// Records when this node's certificate expires (at start, and after each reload).
    /// The gauge is exported from the first call on: a node without TLS has none, so an
    /// expiry alert cannot fire for it.
    pub fn set_tls_cert_expiry(&self, not_after_unix_seconds: i64) {
        self.tls_cert_expiry.set(not_after_unix_seconds);
        match self.registry.register(Box::new(self.tls_cert_expiry.clone())) {
            Ok(()) | Err(prometheus::Error::AlreadyReg) => {}
            Err(e) => tracing::warn!(error = %e, "registering drover_tls_cert_expiry_seconds failed"),
        }
    }

    /// Refreshes the state gauges and renders the Prometheus text exposition.
    /// `quorum_fresh`: whether this node is a leader a quorum has confirmed recently (see
    /// `drover_raft_is_leader` in docs/operations.md); the caller reads the quorum clock.
    pub fn render(&self, node: &RaftNode, quorum_fresh: bool) -> Result<String, MetricsError> {
        let r = node.metrics();
        self.term.set(r.current_term as i64);
        self.last_log_index.set(r.last_log_index.unwrap_or(0) as i64);
        self.follower_lag.reset();
        if let Some(replication) = &r.replication {
            let matched = replication.iter().map(|(id, log)| (*id, log.map(|l| l.index)));
            for (follower, lag) in follower_lags(node.id, r.last_log_index, matched) {
                self.follower_lag.with_label_values(&[&follower.to_string()]).set(lag as i64);
            }
        }
        self.applied_index.set(r.last_applied.map(|l| l.index).unwrap_or(0) as i64);
        self.snapshot_index.set(r.snapshot.map(|l| l.index).unwrap_or(0) as i64);
        self.is_leader.set(i64::from(quorum_fresh));
        let (leader_rounds, follower_rounds) = node.read_index_rounds();
        for (side, total) in [("leader", leader_rounds), ("follower", follower_rounds)] {
            let c = self.read_index_rounds.with_label_values(&[side]);
            c.inc_by(total.saturating_sub(c.get()));
        }
        let mut heads = Vec::new();
        if let Ok(sm) = node.sm.machine() {
            let idx = sm.indexes();
            heads = queue_heads(idx);
            self.queue_depth.reset();
            for (tenant, priority, n) in idx.queue_depths() {
                self.queue_depth.with_label_values(&[tenant.as_str(), &priority.to_string()]).set(n as i64);
            }
            self.leases_active.set(idx.running.len() as i64);
            for s in crate::state::model::TaskState::ALL {
                self.tasks.with_label_values(&[s.as_str()]).set(idx.state_counts[s.index()] as i64);
            }
            let connected: Vec<_> = sm.connected_agents().map(|a| a.attrs.clone()).collect();
            self.tasks_unplaceable.set(crate::state::placement::unplaceable(idx, sm.tenant_modes(), &connected) as i64);
            // By region; both states always have a series (region "" when none), so a
            // fleet with no gone agent reads 0 rather than nothing.
            let mut by: std::collections::BTreeMap<(&str, &str), i64> =
                [(("connected", ""), 0), (("gone", ""), 0)].into_iter().collect();
            for a in &connected {
                *by.entry(("connected", a.region.as_str())).or_default() += 1;
            }
            let known = sm.agents();
            for id in sm.agents_gone().keys() {
                let region = known.get(id).map(|r| r.attrs.region.as_str()).unwrap_or("");
                *by.entry(("gone", region)).or_default() += 1;
            }
            self.agents.reset();
            for ((state, region), n) in by {
                self.agents.with_label_values(&[state, region]).set(n);
            }
        }
        // One task-row read per (tenant, priority) with ready tasks, outside the state
        // machine lock (an apply may run meanwhile; a head that has just left its queue
        // is skipped, and the next scrape sees the new head).
        self.queue_oldest_age.reset();
        let now_ms = crate::raft::node::now_ms();
        let kv = node.sm.kv();
        for (tenant, priority, id) in heads {
            match crate::state::views::get_task(&kv, None, id) {
                Ok(Some(task)) if task.state == crate::state::model::TaskState::Queued => {
                    let age_ms = now_ms.saturating_sub(waiting_since_ms(&task));
                    self.queue_oldest_age
                        .with_label_values(&[tenant.as_str(), &priority.to_string()])
                        .set(age_ms as f64 / 1000.0);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(task_id = id, error = %e, "reading a queue head for metrics failed"),
            }
        }
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

/// The lowest ready task id per (tenant, priority): the task placement takes next from
/// that queue (it picks the lowest id among the classes an agent may take).
fn queue_heads(idx: &crate::state::indexes::Indexes) -> Vec<(String, u8, u64)> {
    let mut out = Vec::new();
    for (tenant, q) in &idx.ready {
        for (priority, classes) in q.by_priority.iter().enumerate() {
            if let Some(id) = classes.values().filter_map(|ids| ids.first().copied()).min() {
                out.push((tenant.clone(), priority as u8, id));
            }
        }
    }
    out
}

/// When a queued task last became ready: queued, promoted from a delay, or put back
/// after its last attempt ended (a lost lease, a hand-back, a retry).
fn waiting_since_ms(task: &Task) -> u64 {
    let requeued = task.attempt_log.last().map(|a| a.finished_ms).unwrap_or(0);
    task.created_ms.max(task.ready_at_ms).max(requeued)
}

/// Each follower's lag behind the leader's last log index, from the leader's replication
/// progress (`matched` is `None` for a follower nothing is known to match yet). The
/// leader's own entry is left out.
fn follower_lags(
    leader: NodeId,
    last_log_index: Option<u64>,
    matched: impl Iterator<Item = (NodeId, Option<u64>)>,
) -> BTreeMap<NodeId, u64> {
    let last = last_log_index.unwrap_or(0);
    matched.filter(|(id, _)| *id != leader).map(|(id, m)| (id, last.saturating_sub(m.unwrap_or(0)))).collect()
}

/// The leader a node has last seen, to count changes: a different leader id, or the same
/// node leading in a new term (it was elected again).
#[derive(Default)]
struct LeaderSeen {
    last: Option<(NodeId, u64)>,
}

impl LeaderSeen {
    /// Whether `(leader, term)` is a change from what was seen before. A moment with no
    /// leader (an election under way) is not a change by itself.
    fn observe(&mut self, leader: Option<NodeId>, term: u64) -> bool {
        let Some(leader) = leader else { return false };
        let changed = self.last != Some((leader, term));
        self.last = Some((leader, term));
        changed
    }
}

/// Counts leader changes in `drover_raft_leader_changes_total` until `shutdown` fires or
/// Raft stops. Raft's metrics are a watch channel that keeps only the latest value, so
/// two elections between two observations count as one; a flapping leader still shows.
pub async fn watch_leader_changes(node: std::sync::Arc<RaftNode>, counter: IntCounter, shutdown: CancellationToken) {
    let mut rx = node.raft.metrics();
    let mut seen = LeaderSeen::default();
    loop {
        let (leader, term) = {
            let m = rx.borrow_and_update();
            (m.current_leader, m.current_term)
        };
        if seen.observe(leader, term) {
            counter.inc();
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}

impl Metrics {
    /// The server's configured region, on `drover_build_info`.
    pub fn set_region(&self, region: &str) {
        let version = env!("CARGO_PKG_VERSION");
        let _ = self.build_info.remove_label_values(&[version, ""]);
        self.build_info.with_label_values(&[version, region]).set(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exported_from_the_start_except_the_scrape_time_ones() {
        let m = Metrics::new().expect("metrics");
        let names: Vec<String> = m.registry.gather().iter().map(|f| f.name().to_string()).collect();
        for name in [
            "drover_build_info",
            "drover_raft_leader_changes_total",
            "drover_leases_expired_total",
            "drover_api_denied_total",
            "drover_connections_refused_total",
            "drover_webhook_requests_total",
            "drover_schedule_fires_total",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} missing from {names:?}");
        }
        assert!(!names.iter().any(|n| n == "drover_tls_cert_expiry_seconds"), "no certificate, no expiry");
        m.set_tls_cert_expiry(1_900_000_000);
        m.set_tls_cert_expiry(1_900_000_001);
        let expiry = m.registry.gather().into_iter().find(|f| f.name() == "drover_tls_cert_expiry_seconds");
        let value = expiry.map(|f| f.get_metric()[0].get_gauge().get_value());
        assert_eq!(value, Some(1_900_000_001.0), "a reload replaces the value");
    }

    #[test]
    fn follower_lag_leaves_the_leader_out_and_counts_unmatched_followers_from_zero() {
        let lags = follower_lags(1, Some(100), [(1, Some(100)), (2, Some(97)), (3, None)].into_iter());
        assert_eq!(lags, BTreeMap::from([(2, 3), (3, 100)]));
        // A follower ahead of a stale last index (they are read at different moments).
        assert_eq!(follower_lags(1, Some(5), [(2, Some(6))].into_iter()), BTreeMap::from([(2, 0)]));
    }

    #[test]
    fn a_leader_change_is_a_new_leader_or_a_new_term_and_elections_are_not_changes() {
        let mut seen = LeaderSeen::default();
        let steps = [(None, 1), (Some(1), 1), (Some(1), 1), (None, 2), (Some(2), 2), (Some(2), 3), (Some(2), 3)];
        let changes: Vec<bool> = steps.iter().map(|(l, t)| seen.observe(*l, *t)).collect();
        assert_eq!(changes, [false, true, false, false, true, true, false]);
    }
}
