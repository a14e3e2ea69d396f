//! drover-chaos: starts real `drover` processes on loopback for tests, benchmarks and
//! fault injection.
//!
//! * [`Cluster`] — N `drover server` processes with their own temp data dirs and ports
//!   picked at run time; kill -9, SIGTERM, SIGSTOP/SIGCONT, restart, add a node.
//! * [`AgentProc`] — `drover agent run` processes against a cluster.
//! * [`clients`] — gRPC clients that carry a caller identity.
//! * [`exposition`] — one sample's value from a `/metrics` page.
//! * [`eventually`] — poll a condition until a deadline (tests never sleep for a fixed
//!   time to "let things settle").
//! * The fault-injection suite (`drover-chaos`): [`run`] drives one run; [`scenario`]
//!   says which faults and for how long, [`nemesis`] injects and heals them through the
//!   [`proxy`] links of [`net`] and the processes; [`workload`], [`witness`] and
//!   [`zombie`] record into the [`history`]; [`check`] holds one module per invariant.
//!
//! Every process is killed and reaped when the [`Cluster`] is dropped.

pub mod agents;
pub mod check;
pub mod clients;
pub mod cluster;
pub mod engine;
pub mod exposition;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod ports;
pub mod proxy;
pub mod run;
pub mod scenario;
pub mod wan;
pub mod witness;
pub mod workload;
pub mod zombie;

pub use agents::{AgentOptions, AgentProc};
pub use cluster::{Cluster, ClusterOptions};

use std::time::{Duration, Instant};

/// Polls `f` every 50 ms until it returns `Some`, or fails after `deadline` naming `what`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= until {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
