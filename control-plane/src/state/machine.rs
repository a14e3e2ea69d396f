//! [`StateMachine`]: the replicated state and its `apply`.
//!
//! `apply(txn, request, log_index, term)` is a pure function of the current tables, the
//! in-memory indexes derived from them, the command and the entry's log id: no clock, no
//! randomness, no I/O beyond the [`Txn`] it is handed. Time is the leader's stamp on the
//! entry, clamped so it never runs backwards across leader changes (the clamp is itself
//! replicated, in `m/clock`).
//!
//! Tenants, codes and agents are small and mirrored in memory; tasks and payloads are
//! read from and written to the tables (queued in groups, see [`super::groups`]), with
//! only index entries kept in memory.
//!
//! Tasks queued while an entry is applied are written as groups when the entry is done,
//! so the tasks of every command of a batched entry share groups: many single-task calls
//! the proposal batcher put in one entry cost a few table keys, not one each. Until
//! then they are [`Unwritten`]: indexed, and readable through [`StateMachine::read_task`].

use std::collections::BTreeMap;

use super::command::{Command, NewTask, Request, Response};
use super::error::StateError;
use super::indexes::Indexes;
use super::keys;
use super::keys::TaskRow;
use super::kv::{KvError, KvRead, Txn, try_scan};
use super::model::{AgentRecord, Code, IdemRecord, Task, Tenant, Webhook};
use super::validate;

const META_CLOCK: &[u8] = b"m/clock";

/// What `apply` knows about the entry being applied.
#[derive(Clone, Copy, Debug)]
pub struct ApplyCtx {
    /// Raft log index of the entry: the source of task ids and lease epochs.
    pub index: u64,
    /// Raft term of the entry (the term of the leader that appended it): leader timer
    /// commands from an older term are refused against it.
    pub term: u64,
    /// Leader-stamped time, never earlier than any entry before it.
    pub now_ms: u64,
    /// Tasks already queued by earlier commands of the same entry (a batch): task ids
    /// continue from here.
    pub first_task_seq: u64,
}

#[derive(Default, Debug)]
pub struct StateMachine {
    pub(super) idx: Indexes,
    pub(super) tenants: BTreeMap<String, Tenant>,
    pub(super) codes: BTreeMap<(String, String), Code>,
    pub(super) agents: BTreeMap<String, AgentRecord>,
    /// Agents marked not connected, with the time they were (see [`super::presence`]).
    pub(super) agents_gone: BTreeMap<String, u64>,
    /// Clusters and agent registrations (see [`super::fleet`]).
    pub(super) clusters: BTreeMap<String, super::fleet::Cluster>,
    pub(super) registrations: BTreeMap<String, super::fleet::AgentRegistration>,
    pub(super) shared_ceilings: super::fleet::Ceilings,
    /// IP pools, and the modes of tenants not in shared mode (see [`super::modes`]).
    pub(super) pools: BTreeMap<String, super::modes::IpPool>,
    pub(super) tenant_modes: BTreeMap<String, super::modes::TenantMode>,
    /// Registry logins by (tenant, registry) (see [`super::registries`]).
    pub(super) registry_logins: BTreeMap<(String, String), super::registries::RegistryLogin>,
    /// Webhooks by (tenant, code); every one belongs to an existing code.
    pub(super) webhooks: BTreeMap<(String, String), Webhook>,
    pub(super) rr_cursor: String,
    pub(super) clock_ms: u64,
    pub(super) sched: super::schedules::ScheduleIndex,
    /// Tasks the entry being applied has queued so far; empty between entries.
    unwritten: Unwritten,
}

/// Tasks queued by the entry being applied and not yet in the tables, in id order, with
/// their payloads end to end in one buffer.
#[derive(Default, Debug)]
struct Unwritten {
    tasks: Vec<Task>,
    payloads: Vec<u8>,
    ends: Vec<usize>,
}

impl Unwritten {
    fn find(&self, id: u64) -> Option<&Task> {
        self.tasks.binary_search_by_key(&id, |t| t.id).ok().map(|i| &self.tasks[i])
    }

    fn clear(&mut self) {
        self.tasks.clear();
        self.payloads.clear();
        self.ends.clear();
    }
}

impl StateMachine {
    /// Rebuilds the in-memory mirror and indexes from the tables.
    pub fn load(kv: &dyn KvRead) -> Result<Self, KvError> {
        let mut sm = StateMachine::default();
        try_scan(kv, keys::TENANT, keys::TENANT, &mut |_, v| {
            let t = keys::decode::<Tenant>(v)?;
            sm.tenants.insert(t.id.clone(), t);
            Ok(true)
        })?;
        try_scan(kv, keys::CODE, keys::CODE, &mut |_, v| {
            let c = keys::decode_code(v)?;
            sm.codes.insert((c.tenant.clone(), c.name.clone()), c);
            Ok(true)
        })?;
        try_scan(kv, keys::WEBHOOK, keys::WEBHOOK, &mut |_, v| {
            let w = keys::decode::<Webhook>(v)?;
            sm.webhooks.insert((w.tenant.clone(), w.code.clone()), w);
            Ok(true)
        })?;
        try_scan(kv, keys::AGENT, keys::AGENT, &mut |_, v| {
            let a = keys::decode::<AgentRecord>(v)?;
            sm.agents.insert(a.id.clone(), a);
            Ok(true)
        })?;
        try_scan(kv, keys::AGENT_GONE, keys::AGENT_GONE, &mut |_, v| {
            let g = keys::decode::<super::presence::AgentGone>(v)?;
            sm.agents_gone.insert(g.id, g.since_ms);
            Ok(true)
        })?;
        try_scan(kv, keys::CLUSTER, keys::CLUSTER, &mut |_, v| {
            let c = keys::decode::<super::fleet::Cluster>(v)?;
            sm.clusters.insert(c.name.clone(), c);
            Ok(true)
        })?;
        try_scan(kv, keys::REGISTRATION, keys::REGISTRATION, &mut |_, v| {
            let r = keys::decode::<super::fleet::AgentRegistration>(v)?;
            sm.registrations.insert(r.id.clone(), r);
            Ok(true)
        })?;
        try_scan(kv, keys::POOL, keys::POOL, &mut |_, v| {
            let p = keys::decode::<super::modes::IpPool>(v)?;
            sm.pools.insert(p.name.clone(), p);
            Ok(true)
        })?;
        try_scan(kv, keys::TENANT_MODE, keys::TENANT_MODE, &mut |k, v| {
            let tenant = String::from_utf8_lossy(&k[keys::TENANT_MODE.len()..]).into_owned();
            let m = keys::decode::<super::modes::TenantMode>(v)?;
            sm.tenant_modes.insert(tenant, m);
            Ok(true)
        })?;
        try_scan(kv, keys::REGISTRY_LOGIN, keys::REGISTRY_LOGIN, &mut |_, v| {
            let l = keys::decode::<super::registries::RegistryLogin>(v)?;
            sm.registry_logins.insert((l.tenant.clone(), l.registry.clone()), l);
            Ok(true)
        })?;
        try_scan(kv, keys::IDEM, keys::IDEM, &mut |k, v| {
            let r = keys::decode::<IdemRecord>(v)?;
            sm.idx.idem_expiry.insert((r.expires_ms, k.to_vec()));
            Ok(true)
        })?;
        sm.idx.groups = super::groups::for_each_task(kv, &mut |t, _| sm.idx.insert(&t))?;
        sm.load_schedules(kv)?;
        if let Some(v) = kv.get(keys::META_RR_CURSOR)? {
            sm.rr_cursor = keys::decode(&v)?;
        }
        if let Some(v) = kv.get(super::fleet::META_SHARED_CEILINGS)? {
            sm.shared_ceilings = keys::decode(&v)?;
        }
        if let Some(v) = kv.get(META_CLOCK)? {
            sm.clock_ms = keys::decode(&v)?;
        }
        Ok(sm)
    }

    /// Applies one command. `Err` only for a storage failure underneath (fatal for the
    /// replica); a refused command is `Ok(Response::Rejected(..))` and writes nothing.
    /// A [`Command::Batch`] applies its commands in order, each refused or applied on its
    /// own, and answers [`Response::Batch`] with one response each. `index` and `term` are
    /// the entry's log id.
    pub fn apply(&mut self, txn: &mut Txn<'_>, req: &Request, index: u64, term: u64) -> Result<Response, KvError> {
        let Request::V1(p) = req;
        // Left over only if an earlier apply failed in storage, which stops the node.
        self.unwritten.clear();
        let mut ctx = ApplyCtx { index, term, now_ms: p.stamp_ms.max(self.clock_ms), first_task_seq: 0 };
        let mut took_effect = false;
        let out = match &p.cmd {
            Command::Batch(cmds) => {
                let mut out = Vec::with_capacity(cmds.len());
                for cmd in cmds {
                    let r = match cmd {
                        Command::Batch(_) => Err(StateError::invalid("command", "batches do not nest")),
                        cmd => self.apply_one(txn, ctx, cmd)?,
                    };
                    out.push(match r {
                        Ok(r) => {
                            took_effect = true;
                            if let Response::Queued { task_ids, deduplicated: false } = &r {
                                ctx.first_task_seq += task_ids.len() as u64;
                            }
                            if let Response::Fired { results } = &r {
                                ctx.first_task_seq += results
                                    .iter()
                                    .filter(|f| {
                                        matches!(
                                            f,
                                            Ok(super::schedules::Fired {
                                                outcome: super::schedules::FireOutcome::Queued { .. },
                                                ..
                                            })
                                        )
                                    })
                                    .count() as u64;
                            }
                            r
                        }
                        Err(e) => Response::Rejected(e),
                    });
                }
                Response::Batch(out)
            }
            cmd => match self.apply_one(txn, ctx, cmd)? {
                Ok(r) => {
                    took_effect = true;
                    r
                }
                Err(e) => Response::Rejected(e),
            },
        };
        self.write_queued(txn);
        // The clock advances only with commands that take effect: a refused command
        // leaves the tables byte-identical.
        if took_effect && ctx.now_ms > self.clock_ms {
            self.clock_ms = ctx.now_ms;
            txn.put(META_CLOCK.to_vec(), keys::encode(&self.clock_ms));
        }
        Ok(out)
    }

    fn apply_one(
        &mut self,
        txn: &mut Txn<'_>,
        ctx: ApplyCtx,
        cmd: &Command,
    ) -> Result<Result<Response, StateError>, KvError> {
        // A deposed leader's command committed by its successor: see `Command::leader_term`.
        if let Some(proposed) = cmd.leader_term()
            && proposed < ctx.term
        {
            return Ok(Err(StateError::StaleTerm { proposed, entry: ctx.term }));
        }
        match cmd {
            Command::UpsertTenant { id, limits, allowed_cidrs } => {
                self.upsert_tenant(txn, ctx, id, limits, allowed_cidrs)
            }
            Command::RegisterCode { tenant, spec } => self.register_code(txn, ctx, tenant, spec),
            Command::RegisterCodeV1 { tenant, spec } => self.register_code(txn, ctx, tenant, &spec.clone().into()),
            Command::DeleteCode { tenant, name } => self.delete_code(txn, tenant, name),
            Command::QueueTasks { tenant, idempotency_key, idempotency_ttl_ms, tasks } => {
                self.queue_tasks(txn, ctx, tenant, idempotency_key.as_deref(), *idempotency_ttl_ms, tasks)
            }
            Command::QueueTasksV1 { tenant, idempotency_key, idempotency_ttl_ms, tasks } => {
                let tasks: Vec<NewTask> = tasks.iter().cloned().map(NewTask::from).collect();
                self.queue_tasks(txn, ctx, tenant, idempotency_key.as_deref(), *idempotency_ttl_ms, &tasks)
            }
            Command::Lease { requests, .. } => self.lease(txn, ctx, requests),
            Command::Complete { completions } => self.complete(txn, ctx, completions),
            Command::ExpireLeases { term: _, leases, reason } => self.expire_leases(txn, ctx, leases, *reason),
            Command::Cancel { tenant, task_id } => self.cancel(txn, ctx, tenant, *task_id),
            Command::PromoteDelayed { term: _, max_tasks } => self.promote_delayed(txn, ctx, *max_tasks),
            Command::Purge { term: _, finished_before_ms, max_tasks } => {
                self.purge(txn, ctx, *finished_before_ms, *max_tasks, u64::MAX)
            }
            Command::PurgeBounded { term: _, finished_before_ms, max_tasks, max_keys } => {
                self.purge(txn, ctx, *finished_before_ms, *max_tasks, *max_keys)
            }
            Command::AppendLogs { agent_id, max_task_log_bytes, chunks } => {
                self.append_logs(txn, ctx, agent_id, *max_task_log_bytes, chunks)
            }
            Command::HandBack { agent_id, leases } => self.hand_back(txn, ctx, agent_id, leases),
            Command::CreateSchedule { tenant, spec } => self.create_schedule(txn, ctx, tenant, spec),
            Command::DeleteSchedule { tenant, id } => self.delete_schedule(txn, tenant, *id),
            Command::PauseSchedule { tenant, id, paused } => self.pause_schedule(txn, ctx, tenant, *id, *paused),
            Command::FireSchedules { term: _, fires } => self.fire_schedules(txn, ctx, fires),
            Command::SetWebhook { tenant, code, secret_sha256 } => {
                self.set_webhook(txn, ctx, tenant, code, secret_sha256.as_ref())
            }
            Command::AgentPresence { term: _, gone, seen } => self.agent_presence(txn, ctx, gone, seen),
            Command::CreateCluster { name, owner, guaranteed_slots } => {
                self.create_cluster(txn, ctx, name, owner.as_deref(), *guaranteed_slots)
            }
            Command::DeleteCluster { name } => self.delete_cluster(txn, name),
            Command::RegisterAgent { registration } => self.register_agent(txn, ctx, registration),
            Command::DeregisterAgent { id } => self.deregister_agent(txn, id),
            Command::SetCeilings { cluster, ceilings } => self.set_ceilings(txn, cluster, *ceilings),
            Command::CreatePool { name, addresses } => self.create_pool(txn, ctx, name, addresses),
            Command::DeletePool { name } => self.delete_pool(txn, name),
            Command::SetTenantMode { tenant, mode } => self.set_tenant_mode(txn, tenant, mode),
            Command::SetRegistryLogin { tenant, registry, login } => {
                self.set_registry_login(txn, ctx, tenant, registry, login.as_ref())
            }
            Command::Batch(_) => Ok(Err(StateError::invalid("command", "batches do not nest"))),
        }
    }

    fn upsert_tenant(
        &mut self,
        txn: &mut Txn<'_>,
        ctx: ApplyCtx,
        id: &str,
        limits: &super::model::TenantLimits,
        allowed_cidrs: &[String],
    ) -> Result<Result<Response, StateError>, KvError> {
        if let Err(e) = validate::name("id", id)
            .and_then(|_| validate::tenant_limits(limits))
            .and_then(|_| validate::cidrs("allowed_cidrs", allowed_cidrs))
        {
            return Ok(Err(e));
        }
        let tenant = match self.tenants.get(id) {
            Some(t) => Tenant {
                limits: limits.clone(),
                allowed_cidrs: allowed_cidrs.to_vec(),
                updated_ms: ctx.now_ms,
                ..t.clone()
            },
            None => Tenant {
                id: id.to_string(),
                limits: limits.clone(),
                allowed_cidrs: allowed_cidrs.to_vec(),
                created_ms: ctx.now_ms,
                updated_ms: ctx.now_ms,
            },
        };
        txn.put(keys::tenant(id), keys::encode(&tenant));
        self.tenants.insert(id.to_string(), tenant.clone());
        Ok(Ok(Response::Tenant(tenant)))
    }

    fn register_code(
        &mut self,
        txn: &mut Txn<'_>,
        ctx: ApplyCtx,
        tenant: &str,
        spec: &super::command::CodeSpec,
    ) -> Result<Result<Response, StateError>, KvError> {
        if !self.tenants.contains_key(tenant) {
            return Ok(Err(StateError::UnknownTenant(tenant.to_string())));
        }
        let placed = validate::code_spec(spec)
            .and_then(|_| self.may_place(tenant, &spec.placement))
            .and_then(|_| self.check_ceilings(&spec.placement.cluster, &spec.limits));
        if let Err(e) = placed {
            return Ok(Err(e));
        }
        let key = (tenant.to_string(), spec.name.clone());
        let created_ms = self.codes.get(&key).map(|c| c.created_ms).unwrap_or(ctx.now_ms);
        let code = Code {
            tenant: tenant.to_string(),
            name: spec.name.clone(),
            image: spec.image.clone(),
            command: spec.command.clone(),
            env: spec.env.clone(),
            limits: spec.limits.clone(),
            max_concurrency: spec.max_concurrency,
            default_retries: spec.default_retries,
            retry: spec.retry.over(super::retry::RetryPolicy::default()),
            placement: spec.placement.clone(),
            created_ms,
            updated_ms: ctx.now_ms,
        };
        txn.put(keys::code(tenant, &spec.name), keys::encode_code(&code));
        self.codes.insert(key, code.clone());
        Ok(Ok(Response::Code(code)))
    }

    fn delete_code(
        &mut self,
        txn: &mut Txn<'_>,
        tenant: &str,
        name: &str,
    ) -> Result<Result<Response, StateError>, KvError> {
        // Tasks of a deleted code stay queued, and placement skips them, until a code of
        // that name is registered again or they are cancelled.
        if self.codes.remove(&(tenant.to_string(), name.to_string())).is_none() {
            return Ok(Err(StateError::CodeNotFound(name.to_string())));
        }
        txn.delete(keys::code(tenant, name));
        // A code registered again under this name starts without a webhook: the old
        // secret must not come back with it.
        if self.webhooks.remove(&(tenant.to_string(), name.to_string())).is_some() {
            txn.delete(keys::webhook(tenant, name));
        }
        Ok(Ok(Response::CodeDeleted))
    }

    fn set_webhook(
        &mut self,
        txn: &mut Txn<'_>,
        ctx: ApplyCtx,
        tenant: &str,
        code: &str,
        secret_sha256: Option<&[u8; 32]>,
    ) -> Result<Result<Response, StateError>, KvError> {
        if !self.tenants.contains_key(tenant) {
            return Ok(Err(StateError::UnknownTenant(tenant.to_string())));
        }
        let key = (tenant.to_string(), code.to_string());
        if !self.codes.contains_key(&key) {
            return Ok(Err(StateError::CodeNotFound(code.to_string())));
        }
        match secret_sha256 {
            Some(hash) => {
                let w = Webhook {
                    tenant: tenant.to_string(),
                    code: code.to_string(),
                    secret_sha256: *hash,
                    enabled_ms: ctx.now_ms,
                };
                txn.put(keys::webhook(tenant, code), keys::encode(&w));
                self.webhooks.insert(key, w);
            }
            None => {
                if self.webhooks.remove(&key).is_some() {
                    txn.delete(keys::webhook(tenant, code));
                }
            }
        }
        Ok(Ok(Response::Webhook { code: code.to_string(), enabled: secret_sha256.is_some() }))
    }

    /// Reads a task's current record through the transaction: its row if it has one,
    /// else its entry in its group (see [`super::groups`]), or in [`Unwritten`] if this
    /// entry queued it. `None` if there is no such task (never queued, or purged).
    pub(super) fn read_task(&self, txn: &Txn<'_>, id: u64) -> Result<Option<TaskRow>, KvError> {
        if let Some(row) = txn.get(&keys::task(id))? {
            return TaskRow::decode(row);
        }
        if let Some(t) = self.unwritten.find(id) {
            return Ok(Some(TaskRow::grouped(t.clone())));
        }
        let Some((g, _)) = self.idx.groups.group_of(id) else { return Ok(None) };
        let mut out = None;
        txn.read_with(&keys::group(g), &mut |bytes| {
            out = Some(super::groups::GroupView::parse(bytes).and_then(|v| v.record((id - g) as usize)));
        })?;
        match out {
            Some(task) => Ok(Some(TaskRow::grouped(task?))),
            None => Err(KvError(format!("task {id}'s group {g} is missing from the table"))),
        }
    }

    /// Indexes the tasks one command queued and holds them, with copies of their
    /// payloads, until the entry is done ([`Self::write_queued`]). `tasks` have
    /// consecutive ids, above those of any task held; `payloads` are theirs, in order.
    pub(super) fn insert_tasks(&mut self, tasks: Vec<Task>, payloads: &[&[u8]]) {
        debug_assert_eq!(tasks.len(), payloads.len());
        debug_assert!(
            tasks.windows(2).all(|w| w[0].id < w[1].id)
                && self.unwritten.tasks.last().zip(tasks.first()).is_none_or(|(held, new)| held.id < new.id),
            "tasks are held in id order (Unwritten::find searches them)"
        );
        for (t, p) in tasks.into_iter().zip(payloads) {
            self.idx.insert(&t);
            self.unwritten.payloads.extend_from_slice(p);
            self.unwritten.ends.push(self.unwritten.payloads.len());
            self.unwritten.tasks.push(t);
        }
    }

    /// Writes the tasks this entry queued as groups: each run of consecutive ids is cut
    /// into groups as one command's tasks would be.
    fn write_queued(&mut self, txn: &mut Txn<'_>) {
        let mut u = std::mem::take(&mut self.unwritten);
        {
            let payloads = super::groups::pieces(&u.payloads, &u.ends);
            let mut start = 0;
            while start < u.tasks.len() {
                let mut end = start + 1;
                while end < u.tasks.len() && u.tasks[end].id == u.tasks[end - 1].id.saturating_add(1) {
                    end += 1;
                }
                for g in super::groups::encode(&u.tasks[start..end], &payloads[start..end]) {
                    self.idx.groups.insert(g.first_id, g.len, g.len);
                    txn.put(keys::group(g.first_id), g.value);
                }
                start = end;
            }
        }
        // The buffers keep their capacity for the next entry.
        u.clear();
        self.unwritten = u;
    }

    /// Writes a task's new version (its payload never changes: it stays in the group, or
    /// in the old inline row) and moves it between the indexes of its old and new states.
    pub(super) fn write_task(&mut self, txn: &mut Txn<'_>, old: &TaskRow, new: &Task) {
        self.idx.remove(&old.task);
        self.idx.add(new);
        txn.put(keys::task(new.id), old.encode_next(new));
    }

    /// Deletes a task (it is finished) from the tables and the indexes. A grouped task
    /// leaves a tombstone row while its group holds others; the last one deletes the
    /// group and every row of its tasks.
    pub(super) fn delete_task(&mut self, txn: &mut Txn<'_>, task: &Task) {
        if self.unwritten.find(task.id).is_some() {
            // Queued and finished within one entry: its group must exist to be purged from.
            self.write_queued(txn);
        }
        self.idx.forget(task);
        let Some((g, len)) = self.idx.groups.group_of(task.id) else {
            txn.delete(keys::task(task.id));
            return;
        };
        if !self.idx.groups.purge_one(g) {
            txn.put(keys::task(task.id), keys::purged_row());
            return;
        }
        for id in g..g.saturating_add(u64::from(len)) {
            txn.delete(keys::task(id));
        }
        txn.delete(keys::group(g));
    }

    pub fn indexes(&self) -> &Indexes {
        &self.idx
    }

    pub fn tenants(&self) -> &BTreeMap<String, Tenant> {
        &self.tenants
    }

    pub fn codes(&self) -> &BTreeMap<(String, String), Code> {
        &self.codes
    }

    pub fn webhooks(&self) -> &BTreeMap<(String, String), Webhook> {
        &self.webhooks
    }

    pub fn agents(&self) -> &BTreeMap<String, AgentRecord> {
        &self.agents
    }

    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }
}
