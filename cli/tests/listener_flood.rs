//! Connections that never finish a TLS handshake (idle TCP, half a ClientHello) do not
//! hold up anyone else: an operator's `/healthz` on the HTTPS side listener and an
//! admin call on the gRPC listener stay fast, on a real TLS node over loopback.

mod common;

use std::time::{Duration, Instant};

use drover_chaos::{Cluster, ClusterOptions};
use drover_proto::admin as pa;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What an operator may wait for a health check under the flood.
const HEALTHZ_BOUND: Duration = Duration::from_secs(1);

/// The first 6 bytes of a TLS record carrying a ClientHello that announces 512 bytes and
/// never sends them: the server waits for the rest.
const PARTIAL_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01];

/// Opens `idle` connections that send nothing and `stalled` that send half a ClientHello;
/// the caller keeps them open by holding the result.
async fn flood(addr: &str, idle: usize, stalled: usize) -> Vec<TcpStream> {
    // A listener that stops accepting lets its backlog fill, and connect then waits on
    // SYN retries: bounded so the test fails instead of hanging.
    let connect = || async {
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .expect("TCP connect within 5 s (is the accept loop stuck?)")
            .expect("TCP connect")
    };
    let mut held = Vec::with_capacity(idle + stalled);
    for _ in 0..idle {
        held.push(connect().await);
    }
    for _ in 0..stalled {
        let mut s = connect().await;
        s.write_all(PARTIAL_CLIENT_HELLO).await.expect("partial hello");
        held.push(s);
    }
    held
}

/// The value of the first sample line of `metrics` starting with `prefix`.
fn sample(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Five `/healthz` calls in a row; returns the slowest.
async fn slowest_healthz(c: &Cluster, node: u64) -> Duration {
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(15), c.http_get(node, "/healthz")).await;
        let took = started.elapsed();
        let (code, body) = got.expect("healthz answered within 15 s").expect("healthz");
        assert_eq!(code, 200, "{body}");
        worst = worst.max(took);
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_handshakes_do_not_delay_healthz_or_grpc() {
    let c = Cluster::start(common::bin(), ClusterOptions { nodes: 1, tls: true, ..Default::default() })
        .await
        .expect("start a TLS node");
    let node = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    let quiet = slowest_healthz(&c, node).await;

    let held_http = flood(c.http(node), 100, 100).await;
    let flooded = slowest_healthz(&c, node).await;
    eprintln!("healthz: slowest of 5 {quiet:?} quiet, {flooded:?} with 100 idle + 100 stalled connections");
    assert!(flooded < HEALTHZ_BOUND, "healthz took {flooded:?} under the flood");

    // The same flood on the gRPC port leaves an operator's call as fast.
    let held_grpc = flood(c.addr(node), 100, 100).await;
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(15), async {
        c.admin(node).expect("admin").raft_status(pa::RaftStatusRequest {}).await
    })
    .await
    .expect("raft status within 15 s")
    .expect("raft status");
    let took = started.elapsed();
    eprintln!("grpc raft_status with 100 idle + 100 stalled connections: {took:?}");
    assert!(status.into_inner().has_leader);
    assert!(took < HEALTHZ_BOUND, "raft status took {took:?} under the flood");

    // The HTTPS listener's bound on pending handshakes (64) dropped the oldest stalled
    // connections, and says so.
    let (_, metrics) = c.http_get(node, "/metrics").await.expect("metrics");
    let evicted = "drover_connections_refused_total{listener=\"http\",reason=\"evicted\"}";
    assert!(sample(&metrics, evicted) >= 100.0, "{evicted} not counted:\n{metrics}");
    drop((held_http, held_grpc));
}
