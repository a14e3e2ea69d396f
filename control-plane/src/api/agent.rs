//! `drover.agent.v1.Agent`: leasing (long-poll), heartbeats, completion, hand-backs and
//! log shipping. Lease and heartbeat are served by the leader only (the lease tracker
//! lives there; a follower answers `Unavailable` with the leader's address in metadata),
//! and only while [`super::ApiCtx::lease_validity`] allows: once the leader has applied
//! an entry of its own term, and within the TTL of its last quorum confirmation. Every
//! answer says how long its leases are valid counted from the agent's send time
//! (`lease_valid_ms`), so a grant late in a long poll keeps its full TTL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_proto::agent as pa;
use drover_proto::agent::agent_server::Agent;
use tonic::{Request, Response};

use super::error::{ApiError, ApiResult};
use super::tenant::unexpected;
use super::{ApiCtx, caller};
use crate::state::command::{Command, Completion, LeaseRef, LeaseRequest, Outcome};
use crate::state::logs::{self, LogAppend, LogStream};
use crate::state::model::AgentAttrs;
use crate::state::{Response as SmResponse, fleet, placement, validate, views};

pub struct AgentService {
    pub ctx: Arc<ApiCtx>,
}

/// Refuses a list longer than `max`, naming the field and the limit.
fn at_most(field: &str, len: usize, max: usize) -> Result<(), ApiError> {
    if len > max {
        return Err(ApiError::invalid(field, format!("{len} entries is over the limit of {max}")));
    }
    Ok(())
}

fn attrs_in(a: Option<pa::AgentAttributes>) -> Result<AgentAttrs, ApiError> {
    let a = a.unwrap_or_default();
    let attrs = AgentAttrs {
        region: a.region,
        cluster: a.cluster,
        vpc: a.vpc,
        ip_pool: a.ip_pool,
        egress_ip: a.egress_ip,
        labels: a.labels.into_iter().collect(),
    };
    validate::agent_attrs("attributes", &attrs)?;
    Ok(attrs)
}

/// What a lease answer tells the agent: valid for `valid` from `now`, counted from the
/// agent's send time, which was no later than `received`. Rounded down, so the agent
/// never gets more than the leader gave.
fn valid_ms(received: Instant, now: Instant, valid: Duration) -> u64 {
    (now.saturating_duration_since(received) + valid).as_millis() as u64
}

/// The most bytes of granted tasks one `Lease` answer carries: agents decode up to 64 MiB,
/// and 256 grants of 1 MiB payloads would not fit. Grants past it are handed back.
pub const MAX_LEASE_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// Builds the answer for committed grants one by one: a grant that cannot be built (its
/// task unreadable) or that would take the answer past `max_bytes` is left out and
/// returned in the second list, to be handed back, instead of failing the whole answer and
/// orphaning every lease in it until its TTL. The first grant is always answered when it
/// can be built (one task is at most a 1 MiB payload).
pub fn answer_grants(
    grants: &[LeaseRef],
    max_bytes: usize,
    mut build: impl FnMut(LeaseRef) -> Result<pa::GrantedTask, ApiError>,
) -> (Vec<pa::GrantedTask>, Vec<LeaseRef>) {
    use prost::Message;
    let mut tasks = Vec::with_capacity(grants.len());
    let mut unanswered = Vec::new();
    let mut bytes = 0usize;
    for &lease in grants {
        match build(lease) {
            Ok(t) => {
                let len = t.encoded_len() + 8;
                if tasks.is_empty() || bytes + len <= max_bytes {
                    bytes += len;
                    tasks.push(t);
                } else {
                    unanswered.push(lease);
                }
            }
            Err(e) => {
                tracing::warn!(task_id = lease.task_id, epoch = lease.epoch, error = %e, "granted task not answered; handing it back");
                unanswered.push(lease);
            }
        }
    }
    (tasks, unanswered)
}

impl AgentService {
    /// Hands back committed grants the agent will never hear of, so their tasks are queued
    /// again now rather than when the lease expires. Best effort: if it fails, the lease
    /// tracker expires them after the TTL as before.
    async fn hand_back_unanswered(&self, agent_id: &str, leases: Vec<LeaseRef>) {
        if leases.is_empty() {
            return;
        }
        let n = leases.len();
        match self.ctx.propose(Command::HandBack { agent_id: agent_id.to_string(), leases }).await {
            Ok(_) => tracing::info!(agent = %agent_id, leases = n, "handed back grants left out of a lease answer"),
            Err(e) => {
                tracing::warn!(agent = %agent_id, leases = n, error = %e, "handing back unanswered grants failed; they expire after the TTL")
            }
        }
    }

    /// Whether the leader's current state has a task this agent could be granted.
    fn has_work(&self, attrs: &AgentAttrs) -> Result<bool, ApiError> {
        let sm = self.ctx.node.sm.machine().map_err(ApiError::from)?;
        Ok(placement::pick(sm.indexes(), sm.tenants(), sm.codes(), "", attrs, sm.serves(attrs)).is_some())
    }

    /// Refuses a lease call whose declared attributes its registration does not allow, or
    /// from an unregistered agent where those may not lease (see `state::fleet`).
    fn check_registration(&self, agent_id: &str, attrs: &AgentAttrs) -> Result<(), ApiError> {
        let sm = self.ctx.node.sm.machine().map_err(ApiError::from)?;
        let reg = sm.registrations().get(agent_id);
        let why = match reg {
            None if !self.ctx.cfg.allow_unregistered_agents => Some(format!(
                "agent {agent_id:?} is not registered, and this control plane serves registered agents only \
                 (drover agents register)"
            )),
            _ => fleet::allowed(reg, attrs).err().map(|e| format!("agent {agent_id:?}: {e}")),
        };
        match why {
            Some(why) => {
                self.ctx.denied.with_label_values(&["agent_attributes"]).inc();
                Err(ApiError::PermissionDenied(why))
            }
            None => Ok(()),
        }
    }

    /// Refuses the whole call if any lease it names is a current lease of another agent.
    /// (A stale epoch is not a permission matter: it is answered per lease.)
    fn check_owned(&self, agent_id: &str, leases: impl IntoIterator<Item = (u64, u64)>) -> Result<(), ApiError> {
        let sm = self.ctx.node.sm.machine().map_err(ApiError::from)?;
        for (task_id, epoch) in leases {
            if let Some(run) = sm.indexes().running.get(&task_id)
                && run.epoch == epoch
                && run.agent_id != agent_id
            {
                return Err(ApiError::PermissionDenied(format!(
                    "the lease of task {task_id} (epoch {epoch}) was granted to another agent"
                )));
            }
        }
        Ok(())
    }

    fn granted(&self, task_id: u64, epoch: u64) -> Result<pa::GrantedTask, ApiError> {
        let kv = self.ctx.node.sm.kv();
        let (task, payload) = views::get_task_with_payload(&kv, None, task_id)?
            .ok_or_else(|| ApiError::Internal(format!("granted task {task_id} vanished")))?;
        let waited_ms = crate::raft::node::now_ms().saturating_sub(task.ready_at_ms.max(task.created_ms));
        self.ctx.task_metrics.dispatch_seconds.observe(waited_ms as f64 / 1000.0);
        let sm = self.ctx.node.sm.machine().map_err(ApiError::from)?;
        let code = sm.codes().get(&(task.tenant.clone(), task.code.clone()));
        let (image, command, env, limits) = match code {
            Some(c) => (c.image.clone(), c.command.clone(), c.env.clone().into_iter().collect(), c.limits.clone()),
            None => Default::default(),
        };
        let registry_auth = super::registries::auth_for(&self.ctx, &sm, &task.tenant, &image);
        Ok(pa::GrantedTask {
            task_id,
            lease_epoch: epoch,
            attempt: task.attempts,
            tenant: task.tenant,
            code: task.code,
            image,
            command,
            env,
            payload,
            memory_bytes: limits.memory_bytes,
            cpu_millis: limits.cpu_millis,
            pids: limits.pids,
            timeout_ms: task.timeout_ms,
            registry_auth,
        })
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn lease(&self, req: Request<pa::LeaseRequest>) -> ApiResult<pa::LeaseResponse> {
        let agent_id = caller::agent(&req)?;
        let received = Instant::now();
        let r = req.into_inner();
        if r.max_tasks > validate::MAX_TASKS_PER_LEASE_REQUEST {
            return Err(ApiError::invalid(
                "max_tasks",
                format!("{} is over the limit of {}", r.max_tasks, validate::MAX_TASKS_PER_LEASE_REQUEST),
            )
            .into());
        }
        let attrs = attrs_in(r.attributes)?;
        self.check_registration(&agent_id, &attrs)?;
        // The agent counts as connected while this poll is open (see `leader::presence`).
        let _poll = self.ctx.presence.poll(&agent_id, &attrs, r.slots, received);
        let wait = Duration::from_millis(r.wait_ms).min(self.ctx.cfg.max_lease_wait);
        let deadline = tokio::time::Instant::now() + wait;
        let lease_ttl_ms = self.ctx.cfg.lease_ttl.as_millis() as u64;
        // Woken when work for an agent like this one may have arrived (`lease_waits`).
        let waiting = self.ctx.lease_waits.wait(&attrs);
        loop {
            let notified = waiting.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Propose only when something could be granted: idle agents must not fill the
            // log with empty lease entries.
            // Checked before every grant, the first at once: leadership can move while a
            // poll waits, and a grant proposed here must be one this node can vouch for
            // (the command carries the term; a successor refuses it).
            let window = self.ctx.lease_validity(Instant::now())?;
            if r.max_tasks > 0 && self.has_work(&attrs)? {
                let cmd = Command::Lease {
                    term: window.term,
                    requests: vec![LeaseRequest {
                        agent_id: agent_id.clone(),
                        attrs: attrs.clone(),
                        slots: r.slots,
                        max_tasks: r.max_tasks,
                    }],
                };
                let proposed = Instant::now();
                let grants = match self.ctx.propose(cmd).await? {
                    SmResponse::Leased { grants } => grants,
                    other => return Err(unexpected(other)),
                };
                if !grants.is_empty() {
                    // The leases' clocks start now, on the leader: a grant late in the
                    // long poll is valid for the time it was held plus what is left of
                    // the TTL, counted from the agent's send time.
                    let now = Instant::now();
                    let window = match self.ctx.lease_validity(now) {
                        Ok(w) => w,
                        Err(e) => {
                            // The grants are committed but cannot be vouched for: hand them
                            // back (if this node can still propose), else they expire after
                            // the TTL and are re-queued.
                            tracing::warn!(agent = %agent_id, grants = grants.len(), error = %e, "granted leases not answered");
                            let refs = grants.iter().map(|g| LeaseRef { task_id: g.task_id, epoch: g.epoch }).collect();
                            self.hand_back_unanswered(&agent_id, refs).await;
                            return Err(e.into());
                        }
                    };
                    let refs: Vec<LeaseRef> =
                        grants.iter().map(|g| LeaseRef { task_id: g.task_id, epoch: g.epoch }).collect();
                    let (tasks, unanswered) =
                        answer_grants(&refs, MAX_LEASE_RESPONSE_BYTES, |l| self.granted(l.task_id, l.epoch));
                    for t in &tasks {
                        self.ctx.tracker.touch(LeaseRef { task_id: t.task_id, epoch: t.lease_epoch }, now);
                    }
                    self.hand_back_unanswered(&agent_id, unanswered).await;
                    let lease_valid_ms = valid_ms(received, now, window.valid);
                    tracing::debug!(
                        agent = %agent_id,
                        held_ms = proposed.duration_since(received).as_millis() as u64,
                        propose_ms = now.duration_since(proposed).as_millis() as u64,
                        lease_valid_ms,
                        "granted"
                    );
                    return Ok(Response::new(pa::LeaseResponse { tasks, lease_ttl_ms, lease_valid_ms }));
                }
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Ok(Response::new(pa::LeaseResponse { tasks: vec![], lease_ttl_ms, lease_valid_ms: 0 }));
                }
                // The agent polls another node at once.
                _ = self.ctx.shutdown.cancelled() => {
                    return Err(ApiError::Unavailable("this node is shutting down".into()).into());
                }
            }
        }
    }

    async fn heartbeat(&self, req: Request<pa::HeartbeatRequest>) -> ApiResult<pa::HeartbeatResponse> {
        let _timer = self.ctx.task_metrics.heartbeat_seconds.start_timer();
        let agent_id = caller::agent(&req)?;
        // Measured on receipt and counted from the agent's send time, which was earlier;
        // the renewals below happen later still, so the leader's own expiry is later too.
        let now = Instant::now();
        let window = self.ctx.lease_validity(now)?;
        self.ctx.presence.touch(&agent_id, now);
        let r = req.into_inner();
        at_most("leases", r.leases.len(), validate::MAX_COMPLETIONS)?;
        self.check_owned(&agent_id, r.leases.iter().map(|l| (l.task_id, l.lease_epoch)))?;
        let mut revoked = Vec::new();
        let sm = self.ctx.node.sm.machine().map_err(ApiError::from)?;
        for l in r.leases {
            let current = sm
                .indexes()
                .running
                .get(&l.task_id)
                .is_some_and(|run| run.epoch == l.lease_epoch && run.agent_id == agent_id);
            if current {
                self.ctx.tracker.touch(LeaseRef { task_id: l.task_id, epoch: l.lease_epoch }, now);
            } else {
                revoked.push(l);
            }
        }
        Ok(Response::new(pa::HeartbeatResponse {
            revoked,
            lease_ttl_ms: self.ctx.cfg.lease_ttl.as_millis() as u64,
            lease_valid_ms: window.valid.as_millis() as u64,
        }))
    }

    async fn complete(&self, req: Request<pa::CompleteRequest>) -> ApiResult<pa::CompleteResponse> {
        let agent_id = caller::agent(&req)?;
        let r = req.into_inner();
        at_most("completions", r.completions.len(), validate::MAX_COMPLETIONS)?;
        let mut completions = Vec::with_capacity(r.completions.len());
        for (i, c) in r.completions.into_iter().enumerate() {
            let lease = c.lease.ok_or_else(|| ApiError::invalid(format!("completions[{i}].lease"), "is required"))?;
            let outcome = match pa::Outcome::try_from(c.outcome) {
                Ok(pa::Outcome::Success) => Outcome::Success,
                Ok(pa::Outcome::Error) => Outcome::Error,
                Ok(pa::Outcome::Timeout) => Outcome::Timeout,
                Ok(pa::Outcome::Killed) => Outcome::Killed,
                Ok(pa::Outcome::ImagePull) => Outcome::ImagePull,
                Ok(pa::Outcome::Infrastructure) => Outcome::Infrastructure,
                _ => {
                    return Err(ApiError::invalid(
                        format!("completions[{i}].outcome"),
                        "must be SUCCESS, ERROR, TIMEOUT, KILLED, IMAGE_PULL or INFRASTRUCTURE",
                    )
                    .into());
                }
            };
            completions.push(Completion {
                agent_id: agent_id.clone(),
                lease: LeaseRef { task_id: lease.task_id, epoch: lease.lease_epoch },
                outcome,
                exit_code: c.exit_code,
                oom_killed: c.oom_killed,
                error: c.error.chars().take(validate::MAX_VALUE_BYTES).collect(),
                started_ms: c.started_ms,
                peak_memory_bytes: c.peak_memory_bytes,
            });
        }
        if self.ctx.cfg.breaks.accept_stale_epochs {
            // Deliberate defect (chaos self-test): a completion naming any epoch of a
            // running task is applied to its current lease.
            let sm = self.ctx.node.sm.machine().map_err(ApiError::from)?;
            for c in &mut completions {
                if let Some(run) = sm.indexes().running.get(&c.lease.task_id) {
                    c.lease.epoch = run.epoch;
                    c.agent_id = run.agent_id.clone();
                }
            }
        }
        let leases: Vec<LeaseRef> = completions.iter().map(|c| c.lease).collect();
        self.check_owned(&agent_id, leases.iter().map(|l| (l.task_id, l.epoch)))?;
        let observed: Vec<(&'static str, u64)> =
            completions.iter().map(|c| (attempt_outcome(c), c.started_ms)).collect();
        let results = match self.ctx.propose(Command::Complete { completions }).await? {
            SmResponse::Completed { results } => results,
            other => return Err(unexpected(other)),
        };
        let now = crate::raft::node::now_ms();
        for ((outcome, started_ms), r) in observed.iter().zip(&results) {
            if r.is_ok() {
                self.ctx.task_metrics.attempts.with_label_values(&[outcome]).inc();
                if *started_ms > 0 {
                    self.ctx.task_metrics.run_seconds.observe(now.saturating_sub(*started_ms) as f64 / 1000.0);
                }
            }
        }
        let results = leases
            .into_iter()
            .zip(results)
            .map(|(l, r)| pa::CompletionResult {
                lease: Some(pa::LeaseRef { task_id: l.task_id, lease_epoch: l.epoch }),
                accepted: r.is_ok(),
                reason: r.err().map(|e| e.to_string()).unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pa::CompleteResponse { results }))
    }

    async fn release(&self, req: Request<pa::ReleaseRequest>) -> ApiResult<pa::ReleaseResponse> {
        let agent_id = caller::agent(&req)?;
        let r = req.into_inner();
        at_most("leases", r.leases.len(), validate::MAX_COMPLETIONS)?;
        let leases: Vec<LeaseRef> =
            r.leases.iter().map(|l| LeaseRef { task_id: l.task_id, epoch: l.lease_epoch }).collect();
        self.check_owned(&agent_id, leases.iter().map(|l| (l.task_id, l.epoch)))?;
        // The state machine re-queues only this agent's current leases (a stale one names
        // nobody's task any more), without counting a lost lease or consuming a retry.
        match self.ctx.propose(Command::HandBack { agent_id, leases }).await? {
            SmResponse::HandedBack { task_ids } => Ok(Response::new(pa::ReleaseResponse { released: task_ids })),
            other => Err(unexpected(other)),
        }
    }

    async fn append_logs(&self, req: Request<pa::AppendLogsRequest>) -> ApiResult<pa::AppendLogsResponse> {
        let agent_id = caller::agent(&req)?;
        let r = req.into_inner();
        at_most("chunks", r.chunks.len(), logs::MAX_CHUNKS_PER_APPEND)?;
        let mut chunks = Vec::with_capacity(r.chunks.len());
        for (i, c) in r.chunks.into_iter().enumerate() {
            let lease = c.lease.ok_or_else(|| ApiError::invalid(format!("chunks[{i}].lease"), "is required"))?;
            let stream = match pa::LogStream::try_from(c.stream) {
                Ok(pa::LogStream::Stdout) => LogStream::Stdout,
                Ok(pa::LogStream::Stderr) => LogStream::Stderr,
                _ => return Err(ApiError::invalid(format!("chunks[{i}].stream"), "must be STDOUT or STDERR").into()),
            };
            chunks.push(LogAppend {
                lease: LeaseRef { task_id: lease.task_id, epoch: lease.lease_epoch },
                seq: c.seq,
                stream,
                data: c.data,
            });
        }
        logs::check_chunks(&chunks).map_err(ApiError::from)?;
        logs::check_append_bytes(&chunks).map_err(ApiError::from)?;
        self.check_owned(&agent_id, chunks.iter().map(|c| (c.lease.task_id, c.lease.epoch)))?;
        let leases: Vec<LeaseRef> = chunks.iter().map(|c| c.lease).collect();
        let cmd = Command::AppendLogs { agent_id, max_task_log_bytes: self.ctx.cfg.max_task_log_bytes, chunks };
        let results = match self.ctx.propose(cmd).await? {
            SmResponse::LogsAppended { results } => results,
            other => return Err(unexpected(other)),
        };
        let mut stale: Vec<pa::LeaseRef> = Vec::new();
        for (l, r) in leases.into_iter().zip(results) {
            let seen = stale.iter().any(|s| s.task_id == l.task_id && s.lease_epoch == l.epoch);
            if r.is_err() && !seen {
                stale.push(pa::LeaseRef { task_id: l.task_id, lease_epoch: l.epoch });
            }
        }
        Ok(Response::new(pa::AppendLogsResponse { stale }))
    }
}

/// A completion's `drover_task_attempts_total` outcome: the agent's outcome, with a
/// failed or killed run the kernel killed for memory counted as `oom`.
fn attempt_outcome(c: &Completion) -> &'static str {
    match c.outcome {
        Outcome::Success => "success",
        Outcome::Error | Outcome::Killed if c.oom_killed => "oom",
        Outcome::Error => "exit_code",
        Outcome::Timeout => "timeout",
        Outcome::Killed => "killed",
        Outcome::ImagePull => "image_pull",
        Outcome::Infrastructure => "infrastructure",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: u64, payload_bytes: usize) -> pa::GrantedTask {
        pa::GrantedTask { task_id: id, lease_epoch: 7, payload: vec![1; payload_bytes], ..Default::default() }
    }

    #[test]
    fn one_failing_grant_leaves_the_others_answered() {
        let grants: Vec<LeaseRef> = (1..=4).map(|id| LeaseRef { task_id: id, epoch: 7 }).collect();
        let (tasks, unanswered) = answer_grants(&grants, MAX_LEASE_RESPONSE_BYTES, |l| {
            if l.task_id == 2 {
                Err(ApiError::Internal("granted task 2 vanished".into()))
            } else {
                Ok(task(l.task_id, 10))
            }
        });
        assert_eq!(tasks.iter().map(|t| t.task_id).collect::<Vec<_>>(), [1, 3, 4]);
        assert_eq!(unanswered, [LeaseRef { task_id: 2, epoch: 7 }]);
    }

    #[test]
    fn grants_past_the_answer_budget_are_handed_back() {
        let grants: Vec<LeaseRef> = (1..=5).map(|id| LeaseRef { task_id: id, epoch: 7 }).collect();
        let (tasks, unanswered) = answer_grants(&grants, 2500, |l| Ok(task(l.task_id, 1000)));
        assert_eq!(tasks.len(), 2);
        assert_eq!(unanswered.iter().map(|l| l.task_id).collect::<Vec<_>>(), [3, 4, 5]);
        // The first grant is answered even when alone it is over the budget.
        let (tasks, unanswered) = answer_grants(&grants[..1], 10, |l| Ok(task(l.task_id, 1000)));
        assert_eq!((tasks.len(), unanswered.len()), (1, 0));
    }
}
