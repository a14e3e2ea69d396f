//! The cluster every `drover-bench` run loads: three `drover server` processes on
//! loopback (development identities, or mutual TLS with `tls`), tenant `bench` with no
//! queue limit that matters, and its code `noop`.

use std::path::Path;
use std::time::Duration;

use drover_chaos::{Cluster, ClusterOptions};
use drover_proto::admin as pa;
use drover_proto::v1 as pv;

pub const TENANT: &str = "bench";
pub const CODE: &str = "noop";

pub struct BenchCluster {
    pub cluster: Cluster,
    pub leader: u64,
}

/// Starts the cluster and creates the tenant and code through the leader.
pub async fn start(bin: &Path, tls: bool, extra_config: &str) -> anyhow::Result<BenchCluster> {
    let opts = ClusterOptions { extra_config: extra_config.to_string(), tls, ..Default::default() };
    let cluster = Cluster::start(bin, opts).await?;
    let leader = cluster.wait_leader(Duration::from_secs(30)).await?;
    cluster
        .admin(leader)?
        .upsert_tenant(pa::UpsertTenantRequest {
            id: TENANT.into(),
            limits: Some(pa::TenantLimits { max_queued_tasks: 100_000_000, ..Default::default() }),
            ..Default::default()
        })
        .await?;
    cluster
        .tenant(leader, TENANT)?
        .register_code(pv::RegisterCodeRequest {
            name: CODE.into(),
            image: "drover-test/busybox:1".into(),
            ..Default::default()
        })
        .await?;
    Ok(BenchCluster { cluster, leader })
}

/// `n` tasks of code `noop` with `payload_bytes` of payload each.
pub fn new_tasks(n: usize, payload_bytes: usize) -> Vec<pv::NewTask> {
    (0..n)
        .map(|_| pv::NewTask { code: CODE.into(), payload: vec![b'x'; payload_bytes], ..Default::default() })
        .collect()
}

/// A counter's value for one label set in a Prometheus text exposition (0 when absent).
pub fn counter(exposition: &str, series: &str) -> u64 {
    drover_chaos::exposition::value(exposition, series).map_or(0, |v| v as u64)
}
