//! The client workload: processes that queue tasks (one per call, each with a unique
//! payload id and idempotency key), read them back, cancel some of those they queued
//! and list the tenant's tasks a page at a time, through the client links, into the
//! [`History`]. A second tenant (the intruder) owns a few tasks of its own, reads the
//! workload tenant's task ids and lists its own tasks: neither tenant may see the other's.
//!
//! Every call is recorded invoke, then `ok`, `fail` (certainly not applied) or `info`
//! (may have applied: timeout, lost connection, leader change while proposing). A queue
//! call answered `info` is retried later with the same key, so idempotency is exercised
//! exactly where it matters. Every loop is bounded in count and time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use drover_proto::v1 as pv;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio_util::sync::CancellationToken;

use crate::clients::{self, Creds};
use crate::history::{History, Kind, Listed, Op, TaskView, status_text};

pub const TENANT: &str = "chaos";
pub const CODE: &str = "witness";
/// A second tenant that reads the first one's task ids (and must never see them).
pub const INTRUDER: &str = "intruder";

/// Most operations one client makes in a run.
const MAX_OPS: u64 = 5_000;
/// How long one call may take before it is given up and recorded `info`.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Half the cancels pick one of the client's latest this many acknowledged tasks (likely
/// still queued or running), the other half any of its tasks (likely finished: a cancel
/// that must be refused).
const CANCEL_RECENT: usize = 3;
/// Pages one listing follows at most, and the page sizes it asks for.
const LIST_PAGES: usize = 3;
const LIST_LIMITS: std::ops::RangeInclusive<u32> = 5..=25;
/// The intruder's own tasks: how many, and how long they are delayed (past any run, so
/// they never run).
const FOREIGN_TASKS: usize = 3;
const FOREIGN_DELAY_MS: u64 = 24 * 3600 * 1000;

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
    /// The share of a client's operations that cancel one of its latest tasks...
    pub cancel_share: f64,
    /// ...and that list tasks (a fifth of them as the intruder).
    pub list_share: f64,
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

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(CALL_TIMEOUT);
    req
}

/// Records the invocation `op(None)`, awaits `call`, and records its outcome: `ok` with
/// `op(Some(answer))`; `fail` when the status says the call certainly did not apply,
/// `info` otherwise, with the status in the event's error. Returns the outcome and answer.
async fn recorded<T: Clone>(
    h: &History,
    process: &str,
    op: impl Fn(Option<T>) -> Op,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> (Kind, Option<T>) {
    h.record(process, Kind::Invoke, op(None), None);
    match call.await {
        Ok(v) => {
            h.record(process, Kind::Ok, op(Some(v.clone())), None);
            (Kind::Ok, Some(v))
        }
        Err(s) => {
            let kind = if definite_failure(s.code()) { Kind::Fail } else { Kind::Info };
            h.record(process, kind, op(None), Some(status_text(&s)));
            (kind, None)
        }
    }
}

/// The one task id a queue call of one task was answered with.
fn one_id(r: Result<tonic::Response<pv::QueueTasksResponse>, tonic::Status>) -> Result<u64, tonic::Status> {
    let ids = r?.into_inner().task_ids;
    match ids.as_slice() {
        [id] => Ok(*id),
        _ => Err(tonic::Status::unknown(format!("answered {} ids for one task", ids.len()))),
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
    let req = pv::QueueTasksRequest {
        tasks: vec![pv::NewTask {
            code: CODE.into(),
            payload: format!("{payload_id} {ticks}").into_bytes(),
            ..Default::default()
        }],
        idempotency_key: key.to_string(),
    };
    let op = |task| Op::Queue { key: key.to_string(), payload_id, task };
    recorded(h, process, op, async { one_id(client.queue_tasks(request(req)).await) }).await.0
}

/// Reads task `id`; records invoke and outcome; returns what was seen.
pub async fn get_one(h: &History, process: &str, client: &mut clients::Tenant, id: u64) -> Option<TaskView> {
    let req = request(pv::GetTaskRequest { id, include_payload: true });
    let op = |seen| Op::Get { task: id, seen };
    recorded(h, process, op, async { client.get_task(req).await.map(|t| view(&t.into_inner())) }).await.1
}

/// Reads task `id` as the intruder tenant; records whether it was visible.
pub async fn foreign_get(h: &History, process: &str, client: &mut clients::Tenant, id: u64) {
    let req = request(pv::GetTaskRequest { id, include_payload: true });
    let op = |seen| Op::ForeignGet { task: id, as_tenant: INTRUDER.into(), seen };
    let call = async {
        match client.get_task(req).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(s),
        }
    };
    recorded(h, process, op, call).await;
}

/// Cancels task `id`; records invoke and outcome (refused `FailedPrecondition` when the
/// task had already finished).
pub async fn cancel_one(h: &History, process: &str, client: &mut clients::Tenant, id: u64) -> Kind {
    let req = request(pv::CancelTaskRequest { id });
    let op = |seen| Op::Cancel { task: id, seen };
    recorded(h, process, op, async { client.cancel_task(req).await.map(|t| view(&t.into_inner())) }).await.0
}

/// Lists `as_tenant`'s tasks after `after_id`, `limit` a page, following at most
/// [`LIST_PAGES`] pages; records each page.
pub async fn list_pages(
    h: &History,
    process: &str,
    client: &mut clients::Tenant,
    as_tenant: &str,
    mut after_id: u64,
    limit: u32,
) {
    for _ in 0..LIST_PAGES {
        let req = request(pv::ListTasksRequest { after_id, limit, ..Default::default() });
        let op = |page: Option<(Vec<Listed>, u64)>| {
            let (page, next_after_id) = page.map_or((None, 0), |(p, n)| (Some(p), n));
            Op::List { as_tenant: as_tenant.to_string(), after_id, limit, page, next_after_id }
        };
        let call = async {
            let r = client.list_tasks(req).await?.into_inner();
            let page = r.tasks.iter().map(|t| Listed { id: t.id, tenant: t.tenant.clone(), view: view(t) }).collect();
            Ok((page, r.next_after_id))
        };
        match recorded(h, process, op, call).await {
            (_, Some((_, next))) if next != 0 => after_id = next,
            _ => return,
        }
    }
}

/// Queues the intruder's own tasks (delayed past the run, so they never run), retrying
/// each key until it is answered; records each as a [`Op::ForeignQueue`].
pub async fn queue_foreign(h: &History, client: &mut clients::Tenant) -> anyhow::Result<()> {
    const PROCESS: &str = "intruder";
    for i in 0..FOREIGN_TASKS {
        let key = format!("{PROCESS}-{i}");
        let mut answered = false;
        for _ in 0..20 {
            let req = pv::QueueTasksRequest {
                tasks: vec![pv::NewTask {
                    code: CODE.into(),
                    payload: format!("{PROCESS} {i}").into_bytes(),
                    delay_ms: FOREIGN_DELAY_MS,
                    ..Default::default()
                }],
                idempotency_key: key.clone(),
            };
            let op = |task| Op::ForeignQueue { as_tenant: INTRUDER.into(), key: key.clone(), task };
            if recorded(h, PROCESS, op, async { one_id(client.queue_tasks(request(req)).await) }).await.0 == Kind::Ok {
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        anyhow::ensure!(answered, "the intruder's task {key} was not queued");
    }
    Ok(())
}

/// A queue call to make again with the same key (its outcome was unknown).
struct Retry {
    key: String,
    payload_id: u64,
    ticks: u32,
    tries: u32,
}

/// One client's next operation.
enum Step {
    Queue,
    Get(u64),
    ForeignGet(u64),
    Cancel(u64),
    List { after_id: u64, limit: u32 },
    ForeignList,
}

/// Draws the next operation. `acked`: every task id acknowledged to any client; `mine`:
/// those acknowledged to this one, oldest first.
fn choose(cfg: &WorkloadConfig, rng: &mut StdRng, acked: &[u64], mine: &[u64]) -> Step {
    let roll: f64 = rng.random();
    if roll < cfg.cancel_share && !mine.is_empty() {
        let among = if rng.random_bool(0.5) { mine.len().min(CANCEL_RECENT) } else { mine.len() };
        return Step::Cancel(mine[mine.len() - 1 - rng.random_range(0..among)]);
    }
    if (cfg.cancel_share..cfg.cancel_share + cfg.list_share).contains(&roll) {
        if rng.random_bool(0.2) {
            return Step::ForeignList;
        }
        let after_id = if acked.is_empty() || rng.random_bool(0.5) {
            0
        } else {
            acked[rng.random_range(0..acked.len())].saturating_sub(1)
        };
        return Step::List { after_id, limit: rng.random_range(LIST_LIMITS) };
    }
    if !rng.random_bool(0.25) || acked.is_empty() {
        return Step::Queue;
    }
    let id = acked[rng.random_range(0..acked.len())];
    if rng.random_bool(0.1) { Step::ForeignGet(id) } else { Step::Get(id) }
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
            let mut retry: Option<Retry> = None;
            let mut mine: Vec<u64> = Vec::new();
            let mut n = 0u64;
            while !stop.is_cancelled() && n < MAX_OPS {
                n += 1;
                let addr = &cfg.addrs[rng.random_range(0..cfg.addrs.len())];
                let Ok(mut client) = clients::tenant_with(addr, &cfg.creds, TENANT) else { break };
                let step = {
                    let all = acked.lock().unwrap_or_else(|p| p.into_inner());
                    choose(&cfg, &mut rng, &all, &mine)
                };
                let intruder = || clients::tenant_with(addr, &cfg.intruder, INTRUDER);
                match step {
                    Step::Get(id) => {
                        get_one(&h, &process, &mut client, id).await;
                    }
                    Step::ForeignGet(id) => {
                        if let Ok(mut other) = intruder() {
                            foreign_get(&h, &process, &mut other, id).await;
                        }
                    }
                    Step::Cancel(id) => {
                        cancel_one(&h, &process, &mut client, id).await;
                    }
                    Step::List { after_id, limit } => {
                        list_pages(&h, &process, &mut client, TENANT, after_id, limit).await;
                    }
                    Step::ForeignList => {
                        if let Ok(mut other) = intruder() {
                            list_pages(&h, &process, &mut other, INTRUDER, 0, *LIST_LIMITS.end()).await;
                        }
                    }
                    Step::Queue => {
                        let r = retry.take().unwrap_or_else(|| {
                            let payload_id = next_payload.fetch_add(1, Ordering::Relaxed);
                            let ticks = if rng.random_bool(cfg.long_share) {
                                rng.random_range(cfg.long_ticks.clone())
                            } else {
                                rng.random_range(cfg.ticks.clone())
                            };
                            Retry { key: format!("{process}-{payload_id}"), payload_id, ticks, tries: 0 }
                        });
                        match queue_one(&h, &process, &mut client, &r.key, r.payload_id, r.ticks).await {
                            Kind::Info if r.tries < 5 => retry = Some(Retry { tries: r.tries + 1, ..r }),
                            _ => {}
                        }
                        // The acknowledged id, for reads and cancels.
                        if let Some(crate::history::Event { op: Op::Queue { task: Some(id), .. }, .. }) =
                            h.last_of(&process)
                        {
                            acked.lock().unwrap_or_else(|p| p.into_inner()).push(id);
                            mine.push(id);
                        }
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(cfg.pace) => {}
                }
            }
            // An operation whose outcome is unknown is retried once more at the end, so
            // every key ends with a known answer where the cluster can give one.
            if let Some(r) = retry
                && let Ok(mut client) = clients::tenant_with(&cfg.addrs[0], &cfg.creds, TENANT)
            {
                for _ in 0..10 {
                    if queue_one(&h, &process, &mut client, &r.key, r.payload_id, r.ticks).await != Kind::Info {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
}
