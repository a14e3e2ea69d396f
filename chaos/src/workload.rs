//! The client workload: processes that queue tasks (one per call, each with a unique
//! payload id and idempotency key) and read them back, through the client links, into
//! the [`History`].
//!
//! A call that fails in a way that may have applied (timeout, lost connection, leader
//! change while proposing) is recorded `info` and retried later with the same key, so
//! idempotency is exercised exactly where it matters. Every loop is bounded in count and
//! time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use drover_proto::v1 as pv;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio_util::sync::CancellationToken;

use crate::clients::{self, Creds};
use crate::history::{History, Kind, Op, TaskView};

pub const TENANT: &str = "chaos";
pub const CODE: &str = "witness";
/// A second tenant that reads the first one's task ids (and must never see them).
pub const INTRUDER: &str = "intruder";

/// Most operations one client makes in a run.
const MAX_OPS: u64 = 5_000;

#[derive(Clone)]
pub struct WorkloadConfig {
    /// Client addresses of the servers (through their links).
    pub addrs: Vec<String>,
    pub creds: Creds,
    pub clients: usize,
    /// Pause between one client's operations.
    pub pace: Duration,
    /// Task length: 100 ms ticks, drawn from this range...
    pub ticks: std::ops::RangeInclusive<u32>,
    /// ...or, with this probability, from `long_ticks` (tasks that outlive a lease TTL,
    /// so faults catch them running).
    pub long_share: f64,
    pub long_ticks: std::ops::RangeInclusive<u32>,
    pub seed: u64,
    /// The intruder tenant's credentials.
    pub intruder: Creds,
}

/// Whether an error status means the call certainly did not apply.
pub fn definite_failure(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        InvalidArgument
            | NotFound
            | PermissionDenied
            | Unauthenticated
            | ResourceExhausted
            | FailedPrecondition
            | AlreadyExists
            | OutOfRange
            | Unimplemented
    )
}

pub fn view(t: &pv::Task) -> TaskView {
    let state = pv::TaskState::try_from(t.state)
        .map(|s| s.as_str_name().trim_start_matches("TASK_STATE_").to_ascii_lowercase())
        .unwrap_or_else(|_| format!("unknown({})", t.state));
    let payload_id = std::str::from_utf8(&t.payload).ok().and_then(|p| p.split_whitespace().next()?.parse().ok());
    TaskView {
        state,
        exit_code: t.result.as_ref().and_then(|r| r.exit_code).unwrap_or(-1),
        attempts: t.attempts,
        lost_leases: t.lost_leases,
        payload_id,
        created_ms: t.created_ms,
    }
}

/// Queues one task with `key`; records invoke and outcome.
pub async fn queue_one(
    h: &History,
    process: &str,
    client: &mut clients::Tenant,
    key: &str,
    payload_id: u64,
    ticks: u32,
) -> Kind {
    let op = |task| Op::Queue { key: key.to_string(), payload_id, task };
    h.record(process, Kind::Invoke, op(None), None);
    let req = pv::QueueTasksRequest {
        tasks: vec![pv::NewTask {
            code: CODE.into(),
            payload: format!("{payload_id} {ticks}").into_bytes(),
            ..Default::default()
        }],
        idempotency_key: key.to_string(),
    };
    let mut req = tonic::Request::new(req);
    req.set_timeout(Duration::from_secs(5));
    match client.queue_tasks(req).await {
        Ok(r) => {
            let ids = r.into_inner().task_ids;
            match ids.as_slice() {
                [id] => h.record(process, Kind::Ok, op(Some(*id)), None).kind,
                _ => {
                    h.record(process, Kind::Info, op(None), Some(format!("answered {} ids for one task", ids.len())))
                        .kind
                }
            }
        }
        Err(s) => {
            let kind = if definite_failure(s.code()) { Kind::Fail } else { Kind::Info };
            h.record(process, kind, op(None), Some(format!("{:?}: {}", s.code(), s.message()))).kind
        }
    }
}

/// Reads task `id`; records invoke and outcome; returns what was seen.
pub async fn get_one(h: &History, process: &str, client: &mut clients::Tenant, id: u64) -> Option<TaskView> {
    h.record(process, Kind::Invoke, Op::Get { task: id, seen: None }, None);
    let mut req = tonic::Request::new(pv::GetTaskRequest { id, include_payload: true });
    req.set_timeout(Duration::from_secs(5));
    match client.get_task(req).await {
        Ok(t) => {
            let v = view(&t.into_inner());
            h.record(process, Kind::Ok, Op::Get { task: id, seen: Some(v.clone()) }, None);
            Some(v)
        }
        Err(s) => {
            let kind = if definite_failure(s.code()) { Kind::Fail } else { Kind::Info };
            h.record(process, kind, Op::Get { task: id, seen: None }, Some(format!("{:?}: {}", s.code(), s.message())));
            None
        }
    }
}

/// Reads task `id` as the intruder tenant; records whether it was visible.
pub async fn foreign_get(h: &History, process: &str, client: &mut clients::Tenant, id: u64) {
    let op = |seen| Op::ForeignGet { task: id, as_tenant: INTRUDER.into(), seen };
    h.record(process, Kind::Invoke, op(None), None);
    let mut req = tonic::Request::new(pv::GetTaskRequest { id, include_payload: true });
    req.set_timeout(Duration::from_secs(5));
    match client.get_task(req).await {
        Ok(_) => h.record(process, Kind::Ok, op(Some(true)), None),
        Err(s) if s.code() == tonic::Code::NotFound => h.record(process, Kind::Ok, op(Some(false)), None),
        Err(s) => h.record(process, Kind::Info, op(None), Some(format!("{:?}: {}", s.code(), s.message()))),
    };
}

/// Runs the clients until `stop`; returns when every client has ended.
pub async fn run(cfg: WorkloadConfig, h: History, stop: CancellationToken) {
    let next_payload = Arc::new(AtomicU64::new(1));
    let acked = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let mut set = tokio::task::JoinSet::new();
    for c in 0..cfg.clients {
        let (cfg, h, stop, next_payload, acked) =
            (cfg.clone(), h.clone(), stop.clone(), next_payload.clone(), acked.clone());
        set.spawn(async move {
            let process = format!("client-{c}");
            let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(c as u64));
            let mut retry: Option<(String, u64, u32, u32)> = None;
            let mut n = 0u64;
            while !stop.is_cancelled() && n < MAX_OPS {
                n += 1;
                let addr = &cfg.addrs[rng.random_range(0..cfg.addrs.len())];
                let Ok(mut client) = clients::tenant_with(addr, &cfg.creds, TENANT) else { break };
                let read = rng.random_bool(0.25);
                let known: Option<u64> = if read {
                    let a = acked.lock().unwrap_or_else(|p| p.into_inner());
                    (!a.is_empty()).then(|| a[rng.random_range(0..a.len())])
                } else {
                    None
                };
                if let Some(id) = known
                    && rng.random_bool(0.1)
                    && let Ok(mut other) = clients::tenant_with(addr, &cfg.intruder, INTRUDER)
                {
                    foreign_get(&h, &process, &mut other, id).await;
                } else if let Some(id) = known {
                    get_one(&h, &process, &mut client, id).await;
                } else {
                    let (key, payload_id, ticks, tries) = retry.take().unwrap_or_else(|| {
                        let p = next_payload.fetch_add(1, Ordering::Relaxed);
                        let ticks = if rng.random_bool(cfg.long_share) {
                            rng.random_range(cfg.long_ticks.clone())
                        } else {
                            rng.random_range(cfg.ticks.clone())
                        };
                        (format!("{process}-{p}"), p, ticks, 0)
                    });
                    match queue_one(&h, &process, &mut client, &key, payload_id, ticks).await {
                        Kind::Info if tries < 5 => retry = Some((key, payload_id, ticks, tries + 1)),
                        _ => {}
                    }
                    // The acknowledged id, for reads.
                    if let Some(crate::history::Event { op: Op::Queue { task: Some(id), .. }, .. }) =
                        h.last_of(&process)
                    {
                        acked.lock().unwrap_or_else(|p| p.into_inner()).push(id);
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(cfg.pace) => {}
                }
            }
            // An operation whose outcome is unknown is retried once more at the end, so
            // every key ends with a known answer where the cluster can give one.
            if let Some((key, payload_id, ticks, _)) = retry
                && let Ok(mut client) = clients::tenant_with(&cfg.addrs[0], &cfg.creds, TENANT)
            {
                for _ in 0..10 {
                    if queue_one(&h, &process, &mut client, &key, payload_id, ticks).await != Kind::Info {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
}
