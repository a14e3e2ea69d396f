//! The agent's Prometheus metrics (`drover_agent_*`, base units, no task-id labels),
//! served at `/metrics` on the control socket and the optional loopback listener
//! (`metrics_listen`). `drover_build_info` and `drover_tls_cert_expiry_seconds` carry the
//! same names as the server's, so one alert covers both. Every metric is listed in
//! `docs/operations.md` (a test compares that table with a live scrape).
//!
//! `drover_agent_tasks_total` starts at zero for every outcome, so a rate over it sees
//! the first event of each (the image-cache gauges are refreshed at scrape time).

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::executor::ExecMetrics;

#[derive(Clone)]
pub struct AgentMetrics {
    pub registry: Registry,
    pub exec: ExecMetrics,
    pub slots_busy: IntGauge,
    pub slots_free: IntGauge,
    /// By outcome: success, error, timeout, killed, image_pull, infrastructure (as
    /// reported), lost (lease lost or revoked), handed_back (drain, or an engine failure).
    pub tasks: IntCounterVec,
    /// Leases not renewed before their deadline (their containers were stopped).
    pub leases_lost: IntCounter,
    pub log_bytes_shipped: IntCounter,
    pub lease_renew_failures: IntCounter,
    pub completions_rejected: IntCounter,
    /// Bytes of the images this agent has used that are on the engine now (refreshed at
    /// scrape time) and the budget past which they are evicted.
    pub image_cache_bytes: IntGauge,
    pub image_cache_budget_bytes: IntGauge,
    tls_cert_expiry: IntGauge,
}

/// Every outcome `tasks` is counted under (see [`AgentMetrics::tasks`]).
const TASK_OUTCOMES: &[&str] =
    &["success", "error", "timeout", "killed", "image_pull", "infrastructure", "lost", "handed_back"];

impl AgentMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let exec = ExecMetrics::new(&registry)?;
        let slots_busy = IntGauge::new("drover_agent_slots_busy", "Task slots in use")?;
        let slots_free = IntGauge::new("drover_agent_slots_free", "Task slots free")?;
        let tasks = IntCounterVec::new(
            Opts::new("drover_agent_tasks_total", "Task attempts run to an end, by outcome"),
            &["outcome"],
        )?;
        let log_bytes_shipped =
            IntCounter::new("drover_agent_log_bytes_shipped_total", "Container output accepted by the control plane")?;
        let lease_renew_failures = IntCounter::new(
            "drover_agent_lease_renew_failures_total",
            "Heartbeats that failed to reach the leader or were refused",
        )?;
        let completions_rejected = IntCounter::new(
            "drover_agent_completions_rejected_total",
            "Completions the control plane refused (stale lease epoch)",
        )?;
        registry.register(Box::new(slots_busy.clone()))?;
        registry.register(Box::new(slots_free.clone()))?;
        registry.register(Box::new(tasks.clone()))?;
        registry.register(Box::new(log_bytes_shipped.clone()))?;
        registry.register(Box::new(lease_renew_failures.clone()))?;
        let leases_lost = IntCounter::new(
            "drover_agent_leases_lost_total",
            "Leases not renewed before their deadline; their containers were stopped and not reported",
        )?;
        registry.register(Box::new(completions_rejected.clone()))?;
        registry.register(Box::new(leases_lost.clone()))?;
        for outcome in TASK_OUTCOMES {
            tasks.with_label_values(&[outcome]);
        }
        let build_info = IntGaugeVec::new(
            Opts::new("drover_build_info", "Always 1; the label carries the version of the running agent"),
            &["version"],
        )?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(build_info))?;
        let image_cache_bytes = IntGauge::new(
            "drover_agent_image_cache_bytes",
            "Size of the images this agent has used that are on the engine now",
        )?;
        let image_cache_budget_bytes = IntGauge::new(
            "drover_agent_image_cache_budget_bytes",
            "The image disk budget: least-recently-used images are evicted past it",
        )?;
        registry.register(Box::new(image_cache_bytes.clone()))?;
        registry.register(Box::new(image_cache_budget_bytes.clone()))?;
        let tls_cert_expiry = IntGauge::new(
            "drover_tls_cert_expiry_seconds",
            "When this agent's own TLS certificate expires, in unix seconds (absent without TLS)",
        )?;
        Ok(AgentMetrics {
            registry,
            exec,
            slots_busy,
            slots_free,
            tasks,
            log_bytes_shipped,
            lease_renew_failures,
            completions_rejected,
            leases_lost,
            image_cache_bytes,
            image_cache_budget_bytes,
            tls_cert_expiry,
        })
    }

    /// Records when the agent's certificate expires; the gauge is exported from the first
    /// call on (an agent without TLS has none, so an expiry alert cannot fire for it).
    pub fn set_tls_cert_expiry(&self, not_after_unix_seconds: i64) {
        self.tls_cert_expiry.set(not_after_unix_seconds);
        match self.registry.register(Box::new(self.tls_cert_expiry.clone())) {
            Ok(()) | Err(prometheus::Error::AlreadyReg) => {}
            Err(e) => tracing::warn!(error = %e, "registering drover_tls_cert_expiry_seconds failed"),
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding gathered metric families into a Vec does not fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}
