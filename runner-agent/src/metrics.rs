//! The agent's Prometheus metrics (`drover_agent_*`, base units, no task-id labels),
//! served at `/metrics` on the control socket and the optional loopback listener.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use crate::executor::ExecMetrics;

#[derive(Clone)]
pub struct AgentMetrics {
    pub registry: Registry,
    pub exec: ExecMetrics,
    pub slots_busy: IntGauge,
    pub slots_free: IntGauge,
    /// By outcome: success, error, timeout, killed, lost (lease lost or revoked),
    /// handed_back (drain, or an engine failure).
    pub tasks: IntCounterVec,
    /// Leases not renewed before their deadline (their containers were stopped).
    pub leases_lost: IntCounter,
    pub log_bytes_shipped: IntCounter,
    pub lease_renew_failures: IntCounter,
    pub completions_rejected: IntCounter,
}

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
        })
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding gathered metric families into a Vec does not fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}
