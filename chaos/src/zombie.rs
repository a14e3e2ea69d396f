//! The zombie: replays calls of runners that lost their lease. Whenever the witness has
//! seen a task run under a newer epoch, the zombie sends, as each agent in turn, a
//! completion, a heartbeat and a log chunk naming the older epoch, and records whether
//! the control plane accepted them (it must not: [`crate::check::stale`]).
//!
//! A stale epoch stays stale: epochs of a task only grow, so once a newer one has run,
//! no call naming the older one can be legitimate.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use drover_proto::agent as pa;
use tokio_util::sync::CancellationToken;

use crate::clients::{self, Creds};
use crate::history::{History, Kind, Op};
use crate::witness::Witness;

const PROCESS: &str = "zombie";
/// Stale leases replayed per round at most (the loop is bounded in work and time).
const PER_ROUND: usize = 4;

pub struct ZombieConfig {
    pub addrs: Vec<String>,
    /// (agent id, its credentials).
    pub agents: Vec<(String, Creds)>,
    /// A server's advertised address → where the zombie reaches it (to follow a
    /// not-leader answer's hint).
    pub via: BTreeMap<String, String>,
}

pub async fn run(cfg: ZombieConfig, witness: Witness, h: History, stop: CancellationToken) {
    let mut tried: BTreeSet<(u64, u64)> = BTreeSet::new();
    let mut round = 0usize;
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        let (done, open) = witness.executions();
        let mut newest: BTreeMap<u64, u64> = BTreeMap::new();
        for e in done.iter().chain(&open) {
            let n = newest.entry(e.task).or_default();
            *n = (*n).max(e.epoch);
        }
        let stale: Vec<(u64, u64)> = done
            .iter()
            .chain(&open)
            .filter(|e| newest.get(&e.task).is_some_and(|n| *n > e.epoch))
            .map(|e| (e.task, e.epoch))
            .filter(|k| !tried.contains(k))
            .take(PER_ROUND)
            .collect();
        for (task, epoch) in stale {
            tried.insert((task, epoch));
            for (agent_id, creds) in &cfg.agents {
                round += 1;
                let addr = &cfg.addrs[round % cfg.addrs.len()];
                replay(&h, &cfg, addr, creds, agent_id, task, epoch).await;
            }
        }
    }
}

fn record(h: &History, agent: &str, task: u64, epoch: u64, call: &str, r: Result<bool, tonic::Status>) {
    let op = |accepted| Op::Stale { task, epoch, agent: agent.to_string(), call: call.to_string(), accepted };
    match r {
        Ok(accepted) => h.record(PROCESS, Kind::Ok, op(Some(accepted)), None),
        Err(s) => {
            let kind = if crate::workload::definite_failure(s.code()) { Kind::Fail } else { Kind::Info };
            h.record(PROCESS, kind, op(None), Some(format!("{:?}: {}", s.code(), s.message())))
        }
    };
}

/// Probes every server's lease authority every 250 ms with an empty heartbeat as
/// `agent` (see [`crate::check::authority`]).
pub async fn probe_authority(servers: Vec<(u64, String)>, agent: (String, Creds), h: History, stop: CancellationToken) {
    while !stop.is_cancelled() {
        for (node, addr) in &servers {
            let Ok(mut c) = clients::agent_with(addr, &agent.1, &agent.0) else { continue };
            h.record("probe", Kind::Invoke, Op::Authority { node: *node, granted: None }, None);
            let mut req = tonic::Request::new(pa::HeartbeatRequest { agent_id: agent.0.clone(), leases: Vec::new() });
            req.set_timeout(Duration::from_millis(1_000));
            match c.heartbeat(req).await {
                Ok(_) => h.record("probe", Kind::Ok, Op::Authority { node: *node, granted: Some(true) }, None),
                Err(s) => h.record(
                    "probe",
                    Kind::Fail,
                    Op::Authority { node: *node, granted: Some(false) },
                    Some(format!("{:?}: {}", s.code(), s.message())),
                ),
            };
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Where a not-leader answer says the leader is, reached the zombie's way.
fn hinted(cfg: &ZombieConfig, s: &tonic::Status) -> Option<String> {
    let leader = s.metadata().get("x-drover-leader")?.to_str().ok()?;
    cfg.via.get(leader).cloned()
}

async fn replay(h: &History, cfg: &ZombieConfig, addr: &str, creds: &Creds, agent: &str, task: u64, epoch: u64) {
    let Ok(mut client) = clients::agent_with(addr, creds, agent) else { return };
    let client = &mut client;
    let lease = pa::LeaseRef { task_id: task, lease_epoch: epoch };
    let timeout = Duration::from_secs(5);

    let mut req = tonic::Request::new(pa::CompleteRequest {
        agent_id: agent.to_string(),
        completions: vec![pa::Completion {
            lease: Some(lease),
            outcome: pa::Outcome::Error as i32,
            exit_code: Some(99),
            error: "zombie: stale completion".into(),
            ..Default::default()
        }],
    });
    req.set_timeout(timeout);
    let r = client.complete(req).await.map(|r| r.into_inner().results.iter().any(|c| c.accepted));
    record(h, agent, task, epoch, "complete", r);

    // Heartbeats are answered by the leader only: follow its hint once.
    let beat = pa::HeartbeatRequest { agent_id: agent.to_string(), leases: vec![lease] };
    let mut req = tonic::Request::new(beat.clone());
    req.set_timeout(timeout);
    let mut r = client.heartbeat(req).await;
    if let Err(s) = &r
        && let Some(leader) = hinted(cfg, s)
        && let Ok(mut c) = clients::agent_with(&leader, creds, agent)
    {
        let mut req = tonic::Request::new(beat);
        req.set_timeout(timeout);
        r = c.heartbeat(req).await;
    }
    let r = r.map(|r| !r.into_inner().revoked.contains(&lease));
    record(h, agent, task, epoch, "heartbeat", r);

    let mut req = tonic::Request::new(pa::AppendLogsRequest {
        agent_id: agent.to_string(),
        chunks: vec![pa::LogChunk {
            lease: Some(lease),
            seq: 1_000_000,
            stream: pa::LogStream::Stdout as i32,
            data: b"zombie output\n".to_vec(),
        }],
    });
    req.set_timeout(timeout);
    let r = client.append_logs(req).await.map(|r| !r.into_inner().stale.contains(&lease));
    record(h, agent, task, epoch, "append_logs", r);
}
