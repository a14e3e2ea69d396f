//! `drover.v1.Tenant`: codes and tasks, always scoped to the calling tenant. Writes are
//! proposed (and forwarded to the leader from a follower); reads pass a linearizable read
//! barrier first, then read this node's tables.

use std::sync::Arc;
use std::time::Duration;

use drover_proto::v1 as pv;
use drover_proto::v1::tenant_server::Tenant;
use tonic::{Request, Response, Status};

use super::convert;
use super::error::{ApiError, ApiResult};
use super::{ApiCtx, caller, schedules};
use crate::state::command::{Command, NewTask};
use crate::state::logs::{self, LogStream};
use crate::state::{Response as SmResponse, placement, validate, views};

pub struct TenantService {
    pub ctx: Arc<ApiCtx>,
}

impl TenantService {
    /// Deliberate defect (chaos self-test): answers a queue call before its entry is
    /// proposed, with the ids it would get were it the next entry, and proposes it in the
    /// background. A leader change or a concurrent entry makes the answer false.
    fn ack_before_commit(&self, cmd: Command) -> pv::QueueTasksResponse {
        let n = match &cmd {
            Command::QueueTasks { tasks, .. } => tasks.len() as u64,
            _ => 0,
        };
        let next = self.ctx.node.metrics().last_log_index.unwrap_or(0) + 1;
        let task_ids = (0..n).map(|i| (next << crate::state::tasks::TASK_ID_SHIFT) | i).collect();
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let _ = ctx.propose(cmd).await;
        });
        pv::QueueTasksResponse { task_ids, deduplicated: false }
    }

    /// Deliberate defect (chaos self-test): answers a cancel with the task as this node
    /// reads it, shown `cancelled`, before the cancel is proposed, and proposes it in the
    /// background. A task that had already finished refuses the cancel there, unseen, so
    /// the answer was false.
    async fn cancel_before_commit(&self, tenant: String, task_id: u64) -> Result<pv::Task, ApiError> {
        let mut task = get_task(&self.ctx, &tenant, task_id, false).await?;
        task.state = pv::TaskState::Cancelled as i32;
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let _ = ctx.propose(Command::Cancel { tenant, task_id }).await;
        });
        Ok(task)
    }
}

const MAX_LIST_LIMIT: u32 = 1_000;
const DEFAULT_LIST_LIMIT: u32 = 100;

/// The log stream a `GetTaskLog` call returns.
pub type LogStreamOut = tokio_stream::wrappers::ReceiverStream<Result<pv::TaskLogBatch, Status>>;

#[tonic::async_trait]
impl Tenant for TenantService {
    type GetTaskLogStream = LogStreamOut;

    async fn get_task_log(&self, req: Request<pv::GetTaskLogRequest>) -> ApiResult<Self::GetTaskLogStream> {
        let tenant = caller::tenant(&req)?;
        Ok(Response::new(task_log(self.ctx.clone(), tenant, req.into_inner()).await?))
    }

    async fn register_code(&self, req: Request<pv::RegisterCodeRequest>) -> ApiResult<pv::Code> {
        let tenant = caller::tenant(&req)?;
        let spec = convert::code_spec_in(req.into_inner())?;
        validate::code_spec(&spec).map_err(ApiError::from)?;
        match self.ctx.propose(Command::RegisterCode { tenant, spec }).await? {
            SmResponse::Code(c) => Ok(Response::new(convert::code_out(&c))),
            other => Err(unexpected(other)),
        }
    }

    async fn get_code(&self, req: Request<pv::GetCodeRequest>) -> ApiResult<pv::Code> {
        let tenant = caller::tenant(&req)?;
        self.ctx.read_barrier().await?;
        let name = req.into_inner().name;
        let sm = self.ctx.node.sm.machine().map_err(ApiError::from)?;
        let key = (tenant, name.clone());
        let code = sm.codes().get(&key).ok_or_else(|| ApiError::NotFound(format!("code {name:?} not found")))?;
        let mut out = convert::code_out(code);
        out.webhook_enabled = sm.webhooks().contains_key(&key);
        Ok(Response::new(out))
    }

    async fn list_codes(&self, req: Request<pv::ListCodesRequest>) -> ApiResult<pv::ListCodesResponse> {
        let tenant = caller::tenant(&req)?;
        Ok(Response::new(list_codes(&self.ctx, &tenant).await?))
    }

    async fn delete_code(&self, req: Request<pv::DeleteCodeRequest>) -> ApiResult<pv::DeleteCodeResponse> {
        let tenant = caller::tenant(&req)?;
        let name = req.into_inner().name;
        match self.ctx.propose(Command::DeleteCode { tenant, name }).await? {
            SmResponse::CodeDeleted => Ok(Response::new(pv::DeleteCodeResponse {})),
            other => Err(unexpected(other)),
        }
    }

    async fn queue_tasks(&self, req: Request<pv::QueueTasksRequest>) -> ApiResult<pv::QueueTasksResponse> {
        let tenant = caller::tenant(&req)?;
        let r = req.into_inner();
        let tasks = convert::new_tasks_in(r.tasks)?;
        let key = (!r.idempotency_key.is_empty()).then_some(r.idempotency_key);
        if self.ctx.cfg.breaks.ack_before_commit {
            let cmd = queue_command(&self.ctx, tenant, key, tasks);
            return Ok(Response::new(self.ack_before_commit(cmd)));
        }
        let (task_ids, deduplicated) = queue(&self.ctx, tenant, key, tasks).await?;
        Ok(Response::new(pv::QueueTasksResponse { task_ids, deduplicated }))
    }

    async fn create_schedule(&self, req: Request<pv::CreateScheduleRequest>) -> ApiResult<pv::Schedule> {
        let tenant = caller::tenant(&req)?;
        Ok(Response::new(schedules::create(&self.ctx, tenant, req.into_inner()).await?))
    }

    async fn get_schedule(&self, req: Request<pv::GetScheduleRequest>) -> ApiResult<pv::Schedule> {
        let tenant = caller::tenant(&req)?;
        Ok(Response::new(schedules::get(&self.ctx, &tenant, req.into_inner().id).await?))
    }

    async fn list_schedules(&self, req: Request<pv::ListSchedulesRequest>) -> ApiResult<pv::ListSchedulesResponse> {
        let tenant = caller::tenant(&req)?;
        Ok(Response::new(schedules::list(&self.ctx, &tenant).await?))
    }

    async fn delete_schedule(&self, req: Request<pv::DeleteScheduleRequest>) -> ApiResult<pv::DeleteScheduleResponse> {
        let tenant = caller::tenant(&req)?;
        Ok(Response::new(schedules::delete(&self.ctx, tenant, req.into_inner().id).await?))
    }

    async fn pause_schedule(&self, req: Request<pv::PauseScheduleRequest>) -> ApiResult<pv::Schedule> {
        let tenant = caller::tenant(&req)?;
        let r = req.into_inner();
        Ok(Response::new(schedules::pause(&self.ctx, tenant, r.id, r.paused).await?))
    }

    async fn get_task(&self, req: Request<pv::GetTaskRequest>) -> ApiResult<pv::Task> {
        let tenant = caller::tenant(&req)?;
        let r = req.into_inner();
        Ok(Response::new(get_task(&self.ctx, &tenant, r.id, r.include_payload).await?))
    }

    async fn list_tasks(&self, req: Request<pv::ListTasksRequest>) -> ApiResult<pv::ListTasksResponse> {
        let tenant = caller::tenant(&req)?;
        Ok(Response::new(list_tasks(&self.ctx, &tenant, req.into_inner()).await?))
    }

    async fn enable_webhook(&self, req: Request<pv::EnableWebhookRequest>) -> ApiResult<pv::EnableWebhookResponse> {
        let tenant = caller::tenant(&req)?;
        let code = req.into_inner().name;
        validate::name("name", &code).map_err(ApiError::from)?;
        let secret = crate::webhook::secret::Secret::generate();
        let cmd =
            Command::SetWebhook { tenant: tenant.clone(), code: code.clone(), secret_sha256: Some(secret.sha256()) };
        match self.ctx.propose(cmd).await? {
            SmResponse::Webhook { enabled: true, .. } => {}
            other => return Err(unexpected(other)),
        }
        let path = crate::webhook::path(&tenant, &code);
        let url = self.ctx.cfg.webhook_base_url.as_ref().map(|base| format!("{base}{path}")).unwrap_or_default();
        Ok(Response::new(pv::EnableWebhookResponse { url, path, secret: secret.reveal().to_string() }))
    }

    async fn list_pool_ips(&self, req: Request<pv::ListPoolIpsRequest>) -> ApiResult<pv::ListPoolIpsResponse> {
        let tenant = caller::tenant(&req)?;
        Ok(Response::new(super::modes::list_pool_ips(&self.ctx, &tenant).await?))
    }

    async fn registry_login(&self, req: Request<pv::RegistryLoginRequest>) -> ApiResult<pv::RegistryLoginResponse> {
        let tenant = caller::tenant(&req)?;
        Ok(Response::new(super::registries::login(&self.ctx, tenant, req.into_inner()).await?))
    }

    async fn registry_logout(&self, req: Request<pv::RegistryLogoutRequest>) -> ApiResult<pv::RegistryLoginResponse> {
        let tenant = caller::tenant(&req)?;
        Ok(Response::new(super::registries::logout(&self.ctx, tenant, req.into_inner().registry).await?))
    }

    async fn list_registry_logins(
        &self,
        req: Request<pv::ListRegistryLoginsRequest>,
    ) -> ApiResult<pv::ListRegistryLoginsResponse> {
        let tenant = caller::tenant(&req)?;
        Ok(Response::new(super::registries::list(&self.ctx, &tenant).await?))
    }

    async fn disable_webhook(&self, req: Request<pv::DisableWebhookRequest>) -> ApiResult<pv::DisableWebhookResponse> {
        let tenant = caller::tenant(&req)?;
        let code = req.into_inner().name;
        match self.ctx.propose(Command::SetWebhook { tenant, code, secret_sha256: None }).await? {
            SmResponse::Webhook { enabled: false, .. } => Ok(Response::new(pv::DisableWebhookResponse {})),
            other => Err(unexpected(other)),
        }
    }

    async fn cancel_task(&self, req: Request<pv::CancelTaskRequest>) -> ApiResult<pv::Task> {
        let tenant = caller::tenant(&req)?;
        let task_id = req.into_inner().id;
        if self.ctx.cfg.breaks.cancel_before_commit {
            return Ok(Response::new(self.cancel_before_commit(tenant, task_id).await?));
        }
        match self.ctx.propose(Command::Cancel { tenant, task_id }).await? {
            SmResponse::Cancelled(t) => Ok(Response::new(convert::task_out(&t))),
            other => Err(unexpected(other)),
        }
    }
}

/// The queue command for `tasks` of `tenant`, stamped with the configured idempotency
/// window.
fn queue_command(ctx: &ApiCtx, tenant: String, key: Option<String>, tasks: Vec<NewTask>) -> Command {
    let idempotency_ttl_ms = ctx.cfg.idempotency_ttl.as_millis() as u64;
    Command::QueueTasks { tenant, idempotency_key: key, idempotency_ttl_ms, tasks }
}

/// Queues `tasks` for `tenant`: the one path of `QueueTasks` and of webhooks. Checks the
/// batch at the edge with the tenant's limits as this node knows them, so bad input is
/// refused before it costs a log entry (apply checks again), then proposes through the
/// batcher (forwarded to the leader from a follower). Returns the task ids and whether
/// `key` matched an earlier call.
pub async fn queue(
    ctx: &ApiCtx,
    tenant: String,
    key: Option<String>,
    tasks: Vec<NewTask>,
) -> Result<(Vec<u64>, bool), ApiError> {
    let limits = {
        let sm = ctx.node.sm.machine().map_err(ApiError::from)?;
        sm.tenants().get(&tenant).map(|t| t.limits.clone())
    };
    if let Some(limits) = &limits {
        validate::queue_batch(&tasks, key.as_deref(), limits).map_err(ApiError::from)?;
    }
    match ctx.propose(queue_command(ctx, tenant, key, tasks)).await? {
        SmResponse::Queued { task_ids, deduplicated } => Ok((task_ids, deduplicated)),
        other => Err(ApiError::Internal(format!("unexpected state machine response {other:?}"))),
    }
}

// Linearizable reads scoped to one tenant, shared by the tenant service (the caller's own
// tenant) and the admin service (operators' read-only views).

pub(super) async fn get_task(ctx: &ApiCtx, tenant: &str, id: u64, include_payload: bool) -> Result<pv::Task, ApiError> {
    ctx.read_barrier().await?;
    let kv = ctx.node.sm.kv();
    let not_found = || ApiError::NotFound(format!("task {id} not found"));
    let (task, payload) = if include_payload {
        views::get_task_with_payload(&kv, Some(tenant), id)?.ok_or_else(not_found)?
    } else {
        (views::get_task(&kv, Some(tenant), id)?.ok_or_else(not_found)?, Vec::new())
    };
    let mut out = convert::task_out(&task);
    out.payload = payload;
    out.waiting = why_waiting(ctx, &task)?.as_ref().map(convert::waiting_out);
    Ok(out)
}

/// Why `task` is not running, judged against the agents the replicated state shows as
/// connected (see `state::presence`), so every member answers alike.
fn why_waiting(ctx: &ApiCtx, task: &crate::state::model::Task) -> Result<Option<placement::Waiting>, ApiError> {
    let sm = ctx.node.sm.machine().map_err(ApiError::from)?;
    let agents: Vec<_> = sm.connected_agents().map(|a| a.attrs.clone()).collect();
    let mode = sm.tenant_mode(&task.tenant);
    Ok(placement::why_waiting(task, sm.indexes(), sm.tenants(), sm.codes(), mode, &agents))
}

pub(super) async fn list_tasks(
    ctx: &ApiCtx,
    tenant: &str,
    r: pv::ListTasksRequest,
) -> Result<pv::ListTasksResponse, ApiError> {
    if r.limit > MAX_LIST_LIMIT {
        return Err(ApiError::invalid("limit", format!("{} is over the limit of {MAX_LIST_LIMIT}", r.limit)));
    }
    let filter = views::TaskFilter { state: convert::state_in(r.state)?, code: (!r.code.is_empty()).then_some(r.code) };
    let limit = if r.limit == 0 { DEFAULT_LIST_LIMIT } else { r.limit };
    ctx.read_barrier().await?;
    let limit = limit as usize;
    let candidates = ctx.node.sm.machine()?.indexes().tenant_task_ids(tenant, r.after_id, views::list_window(limit));
    let kv = ctx.node.sm.kv();
    let (tasks, next) = views::list_tasks(&kv, tenant, &candidates, &filter, limit)?;
    Ok(pv::ListTasksResponse { tasks: tasks.iter().map(convert::task_out).collect(), next_after_id: next.unwrap_or(0) })
}

pub(super) async fn list_codes(ctx: &ApiCtx, tenant: &str) -> Result<pv::ListCodesResponse, ApiError> {
    ctx.read_barrier().await?;
    let sm = ctx.node.sm.machine()?;
    let codes = sm
        .codes()
        .iter()
        .filter(|((t, _), _)| t == tenant)
        .map(|(key, c)| pv::Code { webhook_enabled: sm.webhooks().contains_key(key), ..convert::code_out(c) })
        .collect();
    Ok(pv::ListCodesResponse { codes })
}

/// Most chunk bytes in one streamed batch.
const LOG_BATCH_BYTES: usize = 256 * 1024;
/// A follower re-reads at least this often even without an apply notification.
const LOG_RECHECK: Duration = Duration::from_secs(1);
/// ... and at most this often: every apply wakes every follow stream, and under a busy
/// log a stream would otherwise re-read on each one.
const LOG_MIN_REREAD: Duration = Duration::from_millis(100);

/// Streams a task's log from `from_index`; with `follow`, until the task has finished and
/// all its output is sent. Reads state before chunks each round: every chunk of a task is
/// committed before its completion (the agent flushes first; later chunks are refused),
/// so a finished task with no chunks left has nothing more to come. Follow streams are
/// bounded per tenant ([`super::MAX_FOLLOW_STREAMS_PER_TENANT`]).
pub(super) async fn task_log(
    ctx: Arc<ApiCtx>,
    tenant: String,
    r: pv::GetTaskLogRequest,
) -> Result<LogStreamOut, ApiError> {
    ctx.read_barrier().await?;
    let id = r.id;
    if views::get_task(&ctx.node.sm.kv(), Some(&tenant), id)?.is_none() {
        return Err(ApiError::NotFound(format!("task {id} not found")));
    }
    let slot = if r.follow { Some(ctx.log_followers.acquire(&tenant)?) } else { None };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let _slot = slot;
        let mut from = r.from_index;
        let mut last_read: Option<tokio::time::Instant> = None;
        loop {
            if let Some(at) = last_read {
                tokio::select! {
                    _ = tokio::time::sleep_until(at + LOG_MIN_REREAD) => {}
                    _ = tx.closed() => return,
                }
            }
            let notified = ctx.node.sm.applied.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let read = (|| {
                let kv = ctx.node.sm.kv();
                let finished = views::get_task(&kv, Some(&tenant), id)?.is_none_or(|t| t.state.is_finished());
                Ok::<_, ApiError>((finished, logs::read_log(&kv, id, from, LOG_BATCH_BYTES)?))
            })();
            let (finished, chunks) = match read {
                Ok(v) => v,
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
            if let Some((last, _)) = chunks.last() {
                from = last + 1;
                let batch = pv::TaskLogBatch { chunks: chunks.into_iter().map(|(i, c)| log_chunk_out(i, c)).collect() };
                if tx.send(Ok(batch)).await.is_err() {
                    return;
                }
                continue;
            }
            if !r.follow || finished {
                return;
            }
            last_read = Some(tokio::time::Instant::now());
            tokio::select! {
                _ = &mut notified => {}
                _ = tx.closed() => return,
                _ = tokio::time::sleep(LOG_RECHECK) => {}
                _ = ctx.shutdown.cancelled() => {
                    let why = format!("this node is shutting down; follow again from index {from} on another node");
                    let _ = tx.send(Err(ApiError::Unavailable(why).into())).await;
                    return;
                }
            }
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

fn log_chunk_out(index: u32, c: logs::LogChunk) -> pv::TaskLogChunk {
    let stream = match c.stream {
        LogStream::Stdout => pv::LogStream::Stdout,
        LogStream::Stderr => pv::LogStream::Stderr,
        LogStream::System => pv::LogStream::System,
    };
    pv::TaskLogChunk { index, stream: stream as i32, data: c.data, lease_epoch: c.epoch, stamp_ms: c.stamp_ms }
}

pub(super) fn unexpected(r: SmResponse) -> Status {
    ApiError::unexpected(r).into()
}
