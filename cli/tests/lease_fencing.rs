//! Fencing a runner whose leader has lost its quorum. A leader cut off from its followers
//! may no longer vouch for a lease: the majority can elect another leader, which expires
//! the lease a TTL later and grants the task again. So the old leader must stop renewing,
//! the agent must stop the container before that re-grant can happen, and the stopped
//! runner must report nothing. Needs a running Docker engine (see `agent_docker.rs`).
//!
//! (A drained task handed back many times must still run: that test waits for the
//! server's hand-back command.)

mod common;

use std::time::{Duration, Instant};

use common::agent_tasks::*;
use drover_chaos::{AgentOptions, Cluster, ClusterOptions, eventually};
use drover_proto::v1 as pv;

/// Short so the test is fast.
const TTL: Duration = Duration::from_secs(2);
/// The cluster's Raft timing, written into its config so the bound below follows it.
const RAFT_HEARTBEAT_MS: u64 = 100;
const ELECTION_MIN_MS: u64 = 500;
const ELECTION_MAX_MS: u64 = 1_000;
/// The server's cap on a long poll: a few TTLs, so an idle agent's poll ends soon.
const MAX_LEASE_WAIT: Duration = Duration::from_secs(6);
/// The agent's grace for a container it stops before killing it.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// Stopping and removing a container, seen through `docker ps`.
const DOCKER_SLACK: Duration = Duration::from_secs(1);
/// Once the followers stop, a majority without the leader could elect a new leader within
/// one election timeout and expire the lease one TTL later; by then the container must be
/// gone (plus the agent's stop grace and Docker's own latency).
const CONTAINER_GONE_WITHIN: Duration =
    Duration::from_millis(ELECTION_MAX_MS + TTL.as_millis() as u64 + STOP_GRACE.as_millis() as u64)
        .saturating_add(DOCKER_SLACK);
/// The first attempt sleeps far past the bound, so a container still up at the bound is
/// the old lease being renewed, not a task that has not finished yet.
const FIRST_ATTEMPT_SLEEP: Duration = Duration::from_secs(60);

async fn fencing_cluster() -> Cluster {
    let extra_config = format!(
        "max_lease_wait = \"{}ms\"\n[raft]\nheartbeat_ms = {RAFT_HEARTBEAT_MS}\nelection_min_ms = {ELECTION_MIN_MS}\n\
         election_max_ms = {ELECTION_MAX_MS}\n",
        MAX_LEASE_WAIT.as_millis()
    );
    common::cluster(ClusterOptions {
        nodes: 3,
        lease_ttl: Some(format!("{}ms", TTL.as_millis())),
        tls: true,
        extra_config,
        proxied: None,
    })
    .await
}

/// `attempt=<n> epoch=<lease epoch>` lines from a task's output.
fn attempts_in(out: &[u8]) -> Vec<(u32, u64)> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| {
            let (a, e) = l.strip_prefix("attempt=")?.split_once(" epoch=")?;
            Some((a.parse().ok()?, e.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn a_leader_whose_followers_stop_stops_renewing_and_the_task_runs_again_under_a_higher_epoch() {
    let _d = docker().await;
    let c = fencing_cluster().await;
    create_tenant(&c).await;
    let script = format!(
        "echo attempt=$TASK_ATTEMPT epoch=$LEASE_EPOCH; if [ \"$TASK_ATTEMPT\" = 1 ]; then sleep {}; fi; echo end",
        FIRST_ATTEMPT_SLEEP.as_secs()
    );
    register(&c, sh("fenced", &script)).await;
    let opts = AgentOptions { slots: 1, extra_config: format!("stop_grace = \"{}ms\"", STOP_GRACE.as_millis()) };
    let a = c.start_agent("fenced", opts).expect("start agent");
    // An agent that has been polling: it heartbeats at the cluster's TTL (before its first
    // lease answer it assumes a longer one), and the task comes early in a poll.
    eventually(Duration::from_secs(30), "the agent to learn the lease TTL", || async {
        (agent_status(&a)?["lease_ttl_ms"].as_u64()? == TTL.as_millis() as u64).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plain_tail(&a, 30)));
    let id = queue(&c, "fenced", b"", 1).await[0];

    // Running under renewal (past one TTL), its first output committed, its container up.
    let first_epoch = eventually(Duration::from_secs(30), "the task to run past one TTL", || async {
        let s = agent_status(&a)?;
        let r = s["running"].as_array()?.first()?.clone();
        let renewed = r["running_for_ms"].as_u64()? > (TTL + TTL / 2).as_millis() as u64;
        match attempts_in(&try_stdout(&c, id).await?).as_slice() {
            [(1, epoch)] if renewed && r["lease_epoch"].as_u64() == Some(*epoch) => Some(*epoch),
            _ => None,
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n--- watchdog ---\n{}", plain_tail(&a, 30), watchdog_log(&a)));
    assert_eq!(a.running_containers().expect("docker ps").len(), 1, "{}", plain_tail(&a, 30));
    let t = get(&c, id).await;
    assert_eq!((state(&t), t.lease_epoch), (pv::TaskState::Running, first_epoch), "{t:?}");

    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    let followers: Vec<u64> = c.ids().into_iter().filter(|n| *n != leader).collect();
    for f in &followers {
        c.pause(*f).expect("SIGSTOP a follower");
    }
    let paused = Instant::now();
    let gone = eventually(CONTAINER_GONE_WITHIN, "the agent's container to be stopped", || async {
        a.running_containers().ok().filter(|c| c.is_empty())
    })
    .await;
    let gone_after = paused.elapsed();
    if let Err(e) = gone {
        for f in &followers {
            c.resume(*f).expect("SIGCONT a follower");
        }
        panic!(
            "{e}: the leader (node {leader}) still renews the lease of task {id} (epoch {first_epoch}) {gone_after:?} \
             after both followers stopped (TTL {TTL:?}, election timeout up to {ELECTION_MAX_MS} ms)\n--- agent ---\n{}\n\
             --- watchdog ---\n{}",
            plain_tail(&a, 20),
            watchdog_log(&a)
        );
    }
    eprintln!("container gone {gone_after:?} after the followers stopped (bound {CONTAINER_GONE_WITHIN:?})");
    for f in &followers {
        c.resume(*f).expect("SIGCONT a follower");
    }

    let t = wait_finished(&c, id, Duration::from_secs(45), &[&a]).await;
    assert_eq!((state(&t), t.attempts, t.lost_leases), (pv::TaskState::Complete, 2, 1), "{t:?}");
    let out = log(&c, id).await.0;
    let runs = attempts_in(&out);
    assert!(
        matches!(runs.as_slice(), [(1, e1), (2, e2)] if *e1 == first_epoch && *e2 > first_epoch),
        "the second attempt runs under a higher epoch than {first_epoch}: {:?}",
        String::from_utf8_lossy(&out)
    );
    assert!(out.ends_with(b"end\n"), "{:?}", String::from_utf8_lossy(&out));
    // The stopped runner reported nothing: no completion, accepted or not, in its span.
    let span = format!("epoch={first_epoch}}}");
    let agent_log = plain_log(&a);
    let reports: Vec<&str> = agent_log
        .lines()
        .filter(|l| l.contains(&span))
        .filter(|l| {
            ["reported", "completion rejected", "completion refused", "reporting failed"].iter().any(|m| l.contains(m))
        })
        .collect();
    assert!(reports.is_empty(), "the first runner (epoch {first_epoch}) reported:\n{}", reports.join("\n"));
    no_containers_left(&a).await;
}
