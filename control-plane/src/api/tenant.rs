//! `drover.v1.Tenant`: codes and tasks, always scoped to the calling tenant. Writes are
//! proposed (and forwarded to the leader from a follower); reads pass a linearizable read
//! barrier first, then read this node's tables.

use std::sync::Arc;

use drover_proto::v1 as pv;
use drover_proto::v1::tenant_server::Tenant;
use tonic::{Request, Response, Status};

use super::convert;
use super::error::{ApiError, ApiResult};
use super::{ApiCtx, caller};
use crate::state::command::Command;
use crate::state::{Response as SmResponse, validate, views};

pub struct TenantService {
    pub ctx: Arc<ApiCtx>,
}

const MAX_LIST_LIMIT: u32 = 1_000;
const DEFAULT_LIST_LIMIT: u32 = 100;

#[tonic::async_trait]
impl Tenant for TenantService {
    async fn register_code(&self, req: Request<pv::RegisterCodeRequest>) -> ApiResult<pv::Code> {
        let tenant = caller::tenant(&req)?;
        let spec = convert::code_spec_in(req.into_inner());
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
        let code = sm
            .codes()
            .get(&(tenant, name.clone()))
            .ok_or_else(|| ApiError::NotFound(format!("code {name:?} not found")))?;
        Ok(Response::new(convert::code_out(code)))
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
        // Check at the edge with the tenant's limits as this node knows them, so bad input
        // is refused before it costs a log entry; apply checks again.
        let limits = {
            let sm = self.ctx.node.sm.machine().map_err(ApiError::from)?;
            sm.tenants().get(&tenant).map(|t| t.limits.clone())
        };
        if let Some(limits) = &limits {
            validate::queue_batch(&tasks, key.as_deref(), limits).map_err(ApiError::from)?;
        }
        let cmd = Command::QueueTasks {
            tenant,
            idempotency_key: key,
            idempotency_ttl_ms: self.ctx.cfg.idempotency_ttl.as_millis() as u64,
            tasks,
        };
        match self.ctx.propose(cmd).await? {
            SmResponse::Queued { task_ids, deduplicated } => {
                Ok(Response::new(pv::QueueTasksResponse { task_ids, deduplicated }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn get_task(&self, req: Request<pv::GetTaskRequest>) -> ApiResult<pv::Task> {
        let tenant = caller::tenant(&req)?;
        Ok(Response::new(get_task(&self.ctx, &tenant, req.into_inner().id).await?))
    }

    async fn list_tasks(&self, req: Request<pv::ListTasksRequest>) -> ApiResult<pv::ListTasksResponse> {
        let tenant = caller::tenant(&req)?;
        Ok(Response::new(list_tasks(&self.ctx, &tenant, req.into_inner()).await?))
    }

    async fn cancel_task(&self, req: Request<pv::CancelTaskRequest>) -> ApiResult<pv::Task> {
        let tenant = caller::tenant(&req)?;
        let task_id = req.into_inner().id;
        match self.ctx.propose(Command::Cancel { tenant, task_id }).await? {
            SmResponse::Cancelled(t) => Ok(Response::new(convert::task_out(&t))),
            other => Err(unexpected(other)),
        }
    }
}

// Linearizable reads scoped to one tenant, shared by the tenant service (the caller's own
// tenant) and the admin service (operators' read-only views).

pub(super) async fn get_task(ctx: &ApiCtx, tenant: &str, id: u64) -> Result<pv::Task, ApiError> {
    ctx.read_barrier().await?;
    let kv = ctx.node.sm.kv();
    let task =
        views::get_task(&kv, Some(tenant), id)?.ok_or_else(|| ApiError::NotFound(format!("task {id} not found")))?;
    Ok(convert::task_out(&task))
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
    let kv = ctx.node.sm.kv();
    let (tasks, next) = views::list_tasks(&kv, tenant, &filter, r.after_id, limit as usize)?;
    Ok(pv::ListTasksResponse { tasks: tasks.iter().map(convert::task_out).collect(), next_after_id: next.unwrap_or(0) })
}

pub(super) async fn list_codes(ctx: &ApiCtx, tenant: &str) -> Result<pv::ListCodesResponse, ApiError> {
    ctx.read_barrier().await?;
    let sm = ctx.node.sm.machine()?;
    let codes = sm.codes().values().filter(|c| c.tenant == tenant).map(convert::code_out).collect();
    Ok(pv::ListCodesResponse { codes })
}

pub(super) fn unexpected(r: SmResponse) -> Status {
    ApiError::Internal(format!("unexpected state machine response {r:?}")).into()
}
