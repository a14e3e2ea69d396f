//! Executor and image-cache metrics (`drover_agent_*`, base units, no task-id labels).

use prometheus::{Histogram, HistogramOpts, IntCounter, Registry};

#[derive(Clone)]
pub struct ExecMetrics {
    pub create_seconds: Histogram,
    pub start_seconds: Histogram,
    pub image_hits: IntCounter,
    pub image_misses: IntCounter,
    pub pull_seconds: Histogram,
    pub oom_kills: IntCounter,
}

const BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl ExecMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let h = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        };
        let m = ExecMetrics {
            create_seconds: h(
                "drover_agent_container_create_seconds",
                "Time to create a task container",
                BUCKETS.to_vec(),
            )?,
            start_seconds: h(
                "drover_agent_container_start_seconds",
                "Time to start a task container",
                BUCKETS.to_vec(),
            )?,
            image_hits: IntCounter::new("drover_agent_image_cache_hits_total", "Images found in the local cache")?,
            image_misses: IntCounter::new("drover_agent_image_cache_misses_total", "Images that had to be pulled")?,
            pull_seconds: h(
                "drover_agent_image_pull_seconds",
                "Time to pull an image",
                vec![0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0],
            )?,
            oom_kills: IntCounter::new("drover_agent_oom_kills_total", "Task containers killed for memory")?,
        };
        registry.register(Box::new(m.create_seconds.clone()))?;
        registry.register(Box::new(m.start_seconds.clone()))?;
        registry.register(Box::new(m.image_hits.clone()))?;
        registry.register(Box::new(m.image_misses.clone()))?;
        registry.register(Box::new(m.pull_seconds.clone()))?;
        registry.register(Box::new(m.oom_kills.clone()))?;
        Ok(m)
    }
}
