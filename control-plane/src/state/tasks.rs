//! Task lifecycle commands that do not involve a lease: queue (with idempotency keys and
//! the queued-task quota), cancel, delayed-task promotion and retention purge.

use super::command::{NewTask, Response};
use super::error::StateError;
use super::keys;
use super::kv::{KvError, Txn};
use super::leases::{AttemptEnd, Settle, settle};
use super::machine::{ApplyCtx, StateMachine};
use super::model::{FailureReason, IdemRecord, Task, TaskState};
use super::validate;

/// Task ids are `log_index << TASK_ID_SHIFT | position among the entry's tasks`: unique,
/// increasing with the log, and the same on every replica.
pub const TASK_ID_SHIFT: u32 = 20;
const _: () = assert!(validate::MAX_BATCH_TASKS < (1 << TASK_ID_SHIFT));

type Applied = Result<Result<Response, StateError>, KvError>;

impl StateMachine {
    pub(super) fn queue_tasks(
        &mut self,
        txn: &mut Txn<'_>,
        ctx: ApplyCtx,
        tenant_id: &str,
        idempotency_key: Option<&str>,
        idempotency_ttl_ms: u64,
        tasks: &[NewTask],
    ) -> Applied {
        self.queue_tasks_from(txn, ctx, tenant_id, idempotency_key, idempotency_ttl_ms, tasks, None)
    }

    /// [`Self::queue_tasks`], recording the schedule run that queued the tasks (if any).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn queue_tasks_from(
        &mut self,
        txn: &mut Txn<'_>,
        ctx: ApplyCtx,
        tenant_id: &str,
        idempotency_key: Option<&str>,
        idempotency_ttl_ms: u64,
        tasks: &[NewTask],
        schedule: Option<super::schedules::ScheduleRun>,
    ) -> Applied {
        let Some(tenant) = self.tenants.get(tenant_id) else {
            return Ok(Err(StateError::UnknownTenant(tenant_id.to_string())));
        };
        let mut stale_key = None;
        if let Some(key) = idempotency_key
            && let Some(v) = txn.get(&keys::idem(tenant_id, key))?
        {
            let rec: IdemRecord = keys::decode(&v)?;
            if rec.expires_ms > ctx.now_ms {
                return Ok(Ok(Response::Queued { task_ids: rec.task_ids, deduplicated: true }));
            }
            stale_key = Some(rec.expires_ms);
        }
        if let Err(e) = validate::queue_batch(tasks, idempotency_key, &tenant.limits) {
            return Ok(Err(e));
        }
        if let Some(t) = tasks.iter().find(|t| !self.codes.contains_key(&(tenant_id.to_string(), t.code.clone()))) {
            return Ok(Err(StateError::CodeNotFound(t.code.clone())));
        }
        for t in tasks {
            let code = &self.codes[&(tenant_id.to_string(), t.code.clone())];
            let p = t.placement.as_ref().unwrap_or(&code.placement);
            if let Err(e) = self.may_place(tenant_id, p).and_then(|_| self.check_ceilings(&p.cluster, &code.limits)) {
                return Ok(Err(e));
            }
        }
        if ctx.first_task_seq + tasks.len() as u64 >= 1 << TASK_ID_SHIFT {
            return Ok(Err(StateError::invalid("tasks", "too many tasks in one log entry")));
        }
        let queued = self.idx.waiting(tenant_id);
        let adding = tasks.len() as u64;
        if tenant.limits.max_queued_tasks > 0 && queued + adding > tenant.limits.max_queued_tasks {
            return Ok(Err(StateError::QuotaExceeded {
                tenant: tenant_id.to_string(),
                queued,
                adding,
                limit: tenant.limits.max_queued_tasks,
            }));
        }

        let mut ids = Vec::with_capacity(tasks.len());
        let mut records = Vec::with_capacity(tasks.len());
        for (i, t) in tasks.iter().enumerate() {
            let code = &self.codes[&(tenant_id.to_string(), t.code.clone())];
            let id = (ctx.index << TASK_ID_SHIFT) | (ctx.first_task_seq + i as u64);
            let timeout_ms = match (t.timeout_ms, code.limits.timeout_ms) {
                (0, 0) => validate::DEFAULT_TIMEOUT_MS,
                (0, c) => c,
                (t, _) => t,
            };
            let task = Task {
                id,
                tenant: tenant_id.to_string(),
                code: t.code.clone(),
                priority: t.priority,
                state: if t.delay_ms > 0 { TaskState::Delayed } else { TaskState::Queued },
                created_ms: ctx.now_ms,
                ready_at_ms: ctx.now_ms.saturating_add(t.delay_ms),
                timeout_ms,
                retries_left: t.retries.unwrap_or(code.default_retries),
                max_retries: t.retries.unwrap_or(code.default_retries),
                retry: t.retry.over(code.retry),
                attempts: 0,
                lost_leases: 0,
                attempt_log: Vec::new(),
                reason: None,
                placement: t.placement.clone().unwrap_or_else(|| code.placement.clone()),
                lease: None,
                result: None,
                payload_bytes: t.payload.len() as u64,
                schedule,
            };
            records.push(task);
            ids.push(id);
        }
        let payloads: Vec<&[u8]> = tasks.iter().map(|t| t.payload.as_slice()).collect();
        self.insert_tasks(records, &payloads);
        if let Some(key) = idempotency_key {
            let rec = IdemRecord { task_ids: ids.clone(), expires_ms: ctx.now_ms.saturating_add(idempotency_ttl_ms) };
            let k = keys::idem(tenant_id, key);
            if let Some(expired_at) = stale_key {
                self.idx.idem_expiry.remove(&(expired_at, k.clone()));
            }
            self.idx.idem_expiry.insert((rec.expires_ms, k.clone()));
            txn.put(k, keys::encode(&rec));
        }
        Ok(Ok(Response::Queued { task_ids: ids, deduplicated: false }))
    }

    pub(super) fn cancel(&mut self, txn: &mut Txn<'_>, ctx: ApplyCtx, tenant: &str, id: u64) -> Applied {
        let Some(old) = self.read_task(txn, id)? else {
            return Ok(Err(StateError::TaskNotFound(id)));
        };
        // Another tenant's task answers exactly as a missing one does.
        if old.task.tenant != tenant {
            return Ok(Err(StateError::TaskNotFound(id)));
        }
        if old.task.state.is_finished() {
            return Ok(Err(StateError::AlreadyFinished(id)));
        }
        let mut t = old.task.clone();
        // A running task's lease is revoked: the agent learns it at its next heartbeat
        // and kills the container; anything it reports later carries a stale epoch. Its
        // attempt ends here, `cancelled`.
        if t.state == TaskState::Running {
            settle(
                &mut t,
                AttemptEnd::failed(FailureReason::Cancelled, "cancelled".into()),
                ctx.now_ms,
                Settle::Cancel,
            );
        } else {
            t.state = TaskState::Cancelled;
            t.reason = Some(FailureReason::Cancelled);
            let mut result = t.result.take().unwrap_or_default();
            result.finished_ms = ctx.now_ms;
            result.error = "cancelled".into();
            t.result = Some(result);
        }
        self.write_task(txn, &old, &t);
        Ok(Ok(Response::Cancelled(Box::new(t))))
    }

    pub(super) fn promote_delayed(&mut self, txn: &mut Txn<'_>, ctx: ApplyCtx, max_tasks: u32) -> Applied {
        let due: Vec<u64> = self
            .idx
            .delayed
            .iter()
            .take_while(|(at, _)| *at <= ctx.now_ms)
            .take(max_tasks as usize)
            .map(|(_, id)| *id)
            .collect();
        let mut count = 0;
        for id in due {
            let Some(old) = self.read_task(txn, id)? else { continue };
            let mut t = old.task.clone();
            t.state = TaskState::Queued;
            self.write_task(txn, &old, &t);
            count += 1;
        }
        Ok(Ok(Response::Promoted { count }))
    }

    /// Deletes up to `max_tasks` tasks finished before `finished_before_ms`, with their
    /// logs, and up to `max_tasks` expired idempotency records, deleting at most
    /// `max_keys` keys (`u64::MAX` for the unbounded [`Command::Purge`] of older entries:
    /// the same keys as before the bound existed). See [`Command::PurgeBounded`].
    pub(super) fn purge(
        &mut self,
        txn: &mut Txn<'_>,
        ctx: ApplyCtx,
        finished_before_ms: u64,
        max_tasks: u32,
        max_keys: u64,
    ) -> Applied {
        let mut budget = max_keys;
        let old: Vec<u64> = self
            .idx
            .finished
            .iter()
            .take_while(|(at, _)| *at < finished_before_ms)
            .take(max_tasks as usize)
            .map(|(_, id)| *id)
            .collect();
        let mut tasks = 0;
        for id in old {
            if budget == 0 {
                break;
            }
            let Some(row) = self.read_task(txn, id)? else { continue };
            // The log goes first: a task whose log is cut short by the budget is still
            // there (and still finished) for the next purge to find.
            if !self.delete_log_within(txn, id, &mut budget)? || budget == 0 {
                break;
            }
            // A task costs one key of the budget however it is stored: where the purge stops
            // must not depend on the layout (replicas that applied the same entries under
            // releases before and after task groups store them differently). The task that
            // empties its group also deletes the group and its tasks' tombstones, so an
            // entry may delete up to one group's worth (a few dozen keys) over `max_keys`.
            self.delete_task(txn, &row.task);
            budget -= 1;
            tasks += 1;
        }
        let expired: Vec<(u64, Vec<u8>)> = self
            .idx
            .idem_expiry
            .iter()
            .take_while(|(at, _)| *at <= ctx.now_ms)
            .take((max_tasks as usize).min(usize::try_from(budget).unwrap_or(usize::MAX)))
            .cloned()
            .collect();
        let idempotency_keys = expired.len() as u64;
        for entry in expired {
            self.idx.idem_expiry.remove(&entry);
            txn.delete(entry.1);
        }
        Ok(Ok(Response::Purged { tasks, idempotency_keys }))
    }
}
