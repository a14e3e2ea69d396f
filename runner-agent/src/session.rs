//! The agent's conversation with the control plane: the lease long-poll, heartbeats,
//! hand-backs, the deadline timer, and reconciliation with the container engine.
//!
//! * The **lease loop** asks for as many tasks as there are free slots (a long poll),
//!   reading the send time just before each request: grants are entered in the lease
//!   book with that time and the answer's `lease_valid_ms` (see [`crate::lease_book`]).
//!   It waits for a slot when all are busy, and for the engine when it has failed.
//! * The **heartbeat loop** renews every held lease four times per TTL; the book decides
//!   the new deadlines and which leases were revoked.
//! * The **deadline timer** wakes at the earliest deadline and stops what has expired:
//!   a lease nobody renewed in time is lost, and the container goes at once (the
//!   out-of-process watchdog backs this up if the agent is frozen).
//! * The **engine watch**: after a run failed because of the engine, leasing waits until
//!   the engine answers, then removes what the failed runs left behind.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use drover_proto::agent as pa;

use crate::agent::{Agent, AgentError, RunInfo, lock, wall};
use crate::clock::now;
use crate::executor::Labelled;
use crate::lease_book::{GrantDecision, Lease};
use crate::reconcile::{self, Confirmation, Decision};
use crate::runner::Work;
use crate::watchdog;

/// How long a lease long-poll may wait at the server (the server caps it with its
/// `max_lease_wait`).
const LEASE_WAIT: Duration = Duration::from_secs(20);
/// How often the engine is asked whether it is back.
const ENGINE_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Attempts at handing a task back before leaving it to expire.
const HAND_BACK_ATTEMPTS: u32 = 5;

fn lease_ref(l: Lease) -> pa::LeaseRef {
    pa::LeaseRef { task_id: l.task_id, lease_epoch: l.epoch }
}

fn lease_of(l: &pa::LeaseRef) -> Lease {
    Lease { task_id: l.task_id, epoch: l.lease_epoch }
}

impl Agent {
    fn attributes(&self) -> pa::AgentAttributes {
        let a = &self.cfg.attributes;
        pa::AgentAttributes {
            region: a.region.clone(),
            cluster: a.cluster.clone(),
            vpc: a.vpc.clone(),
            ip_pool: a.ip_pool.clone(),
            egress_ip: a.egress_ip.clone(),
            labels: a.labels.clone().into_iter().collect(),
        }
    }

    pub(crate) async fn lease_loop(self: &Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        while !self.draining.is_cancelled() {
            if self.engine_down.load(Ordering::Relaxed) {
                self.wait_for_engine().await;
                continue;
            }
            let free = lock(&self.state).book.free_slots();
            if free == 0 {
                let notified = self.slot_freed.notified();
                tokio::select! {
                    _ = notified => {}
                    _ = self.draining.cancelled() => {}
                }
                continue;
            }
            let req = pa::LeaseRequest {
                agent_id: String::new(),
                attributes: Some(self.attributes()),
                slots: self.cfg.slots,
                max_tasks: free,
                wait_ms: LEASE_WAIT.as_millis() as u64,
            };
            // The answered attempt's send time: no lease clock can start earlier.
            let call = self.uplink.lease(req, LEASE_WAIT * 2);
            let resp = tokio::select! {
                r = call => r,
                // A grant racing with the drain is not lost: the control plane re-queues it
                // when its lease expires.
                _ = self.draining.cancelled() => break,
            };
            match resp {
                Ok((resp, sent)) => {
                    backoff = Duration::from_millis(100);
                    let valid = self.validity(resp.lease_ttl_ms, resp.lease_valid_ms);
                    for g in resp.tasks {
                        self.take_grant(g, sent, valid);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease request failed; retrying in {backoff:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.draining.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn take_grant(self: &Arc<Self>, g: pa::GrantedTask, sent: Instant, valid: Duration) {
        let lease = Lease { task_id: g.task_id, epoch: g.lease_epoch };
        let now = now();
        let cancel = self.shutdown.child_token();
        let decision = {
            let mut s = lock(&self.state);
            let d = s.book.grant(lease, sent, valid, now);
            if let GrantDecision::Run { .. } = d {
                s.runs.insert(
                    lease.task_id,
                    RunInfo {
                        attempt: g.attempt,
                        tenant: g.tenant.clone(),
                        code: g.code.clone(),
                        image: g.image.clone(),
                        started: now,
                        cancel: cancel.clone(),
                    },
                );
            }
            d
        };
        match decision {
            GrantDecision::Run { deadline } => {
                self.book_changed.notify_one();
                self.update_slot_metrics();
                tracing::info!(
                    task_id = lease.task_id,
                    epoch = lease.epoch,
                    lease_left_ms = deadline.saturating_duration_since(now).as_millis() as u64,
                    "leased"
                );
                self.spawn_runner(lease, cancel, Work::Fresh(Box::new(g)));
            }
            GrantDecision::HandBack => {
                tracing::warn!(
                    task_id = lease.task_id,
                    answered_after_ms = now.duration_since(sent).as_millis() as u64,
                    valid_ms = valid.as_millis() as u64,
                    "a grant arrived after its lease ran out; handing it back"
                );
                let this = self.clone();
                self.tasks.spawn(async move { this.hand_back(lease).await });
            }
            GrantDecision::Ignore => {
                tracing::warn!(
                    task_id = lease.task_id,
                    "ignoring a grant for a task already held or with no free slot"
                );
            }
        }
    }

    /// Beats every quarter TTL. The TTL is learnt from the first answer, so a change
    /// re-plans the beat already waiting: an agent that started with the default 10 s
    /// must not sleep 2.5 s on a cluster whose TTL is 2 s.
    pub(crate) async fn heartbeat_loop(self: Arc<Self>) {
        let mut last = tokio::time::Instant::now();
        loop {
            let changed = self.ttl_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let due = last + self.ttl() / 4;
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = &mut changed => continue,
                _ = self.shutdown.cancelled() => return,
            }
            last = tokio::time::Instant::now();
            self.heartbeat_once().await;
        }
    }

    async fn heartbeat_once(&self) {
        let held = lock(&self.state).book.to_renew();
        if held.is_empty() {
            return;
        }
        let req =
            pa::HeartbeatRequest { agent_id: String::new(), leases: held.iter().copied().map(lease_ref).collect() };
        let ttl = self.ttl();
        match self.uplink.heartbeat(req, ttl / 2).await {
            Ok((resp, sent)) => {
                let valid = self.validity(resp.lease_ttl_ms, resp.lease_valid_ms);
                let revoked: Vec<Lease> = resp.revoked.iter().map(lease_of).collect();
                let actions = lock(&self.state).book.renewed(&held, &revoked, sent, valid, now());
                self.book_changed.notify_one();
                self.carry_out(actions).await;
            }
            Err(e) => {
                self.metrics.lease_renew_failures.inc();
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
    }

    /// Stops every lease at its deadline.
    pub(crate) async fn deadline_loop(self: Arc<Self>) {
        loop {
            let changed = self.book_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let next = lock(&self.state).book.next_deadline();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = &mut changed => {}
                _ = self.shutdown.cancelled() => return,
            }
            let actions = lock(&self.state).book.tick(now());
            if !actions.is_empty() {
                self.carry_out(actions).await;
            }
        }
    }

    /// Gives a lease back: the task is re-queued at once, consuming no retry and not
    /// counted as a lost lease.
    pub(crate) async fn hand_back(&self, lease: Lease) {
        let req = pa::ReleaseRequest { agent_id: String::new(), leases: vec![lease_ref(lease)] };
        for _ in 0..HAND_BACK_ATTEMPTS {
            match self.uplink.release(req.clone()).await {
                Ok(_) => {
                    self.metrics.tasks.with_label_values(&["handed_back"]).inc();
                    tracing::info!(task_id = lease.task_id, "handed back");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "handing a task back failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        tracing::warn!(task_id = lease.task_id, "could not hand the task back; it is re-queued when its lease expires");
    }

    /// Leasing pauses here after a run failed because of the engine: probe until it
    /// answers, remove what the failed runs left behind, then lease again.
    async fn wait_for_engine(&self) {
        tracing::warn!("the container engine failed; leasing waits until it answers again");
        loop {
            if self.exec.ping().await.is_ok() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(ENGINE_PROBE_INTERVAL) => {}
                _ = self.draining.cancelled() => return,
            }
        }
        match self.exec.labelled(self.agent_id()).await {
            Ok(found) => {
                // Containers of live runners are theirs; the rest are left over.
                let decisions = {
                    let s = lock(&self.state);
                    reconcile::plan(&found, &Confirmation::Unknown, |t| s.book.get(t).is_some())
                };
                self.remove_all(decisions).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "listing containers after the engine came back failed");
                return;
            }
        }
        tracing::info!("the container engine answers again; leasing resumes");
        self.engine_down.store(false, Ordering::Relaxed);
    }

    async fn remove_all(&self, decisions: Vec<Decision>) {
        for d in decisions {
            if let Decision::Remove { container, why } = d {
                tracing::info!(container = %container, why, "removing a left-over container");
                if let Err(e) = self.exec.remove(&container).await {
                    tracing::warn!(error = %e, container = %container, "removing a left-over container failed");
                }
                if let Some(w) = &self.deadlines {
                    let _ = w.disarm(&container).await;
                }
            }
        }
    }

    /// Containers labelled by an earlier run of this agent: re-adopt those whose lease the
    /// control plane confirms (their deadlines count from the confirming heartbeat's send
    /// time), remove the rest.
    pub(crate) async fn reconcile_at_start(self: &Arc<Self>) -> Result<(), AgentError> {
        let found = self.exec.labelled(self.agent_id()).await?;
        let running: Vec<&Labelled> = found.iter().filter(|c| c.running).collect();
        let mut confirmation = Confirmation::Unknown;
        let mut sent = now();
        let mut valid = Duration::ZERO;
        if !running.is_empty() {
            let req = pa::HeartbeatRequest {
                agent_id: String::new(),
                leases: running.iter().map(|c| pa::LeaseRef { task_id: c.task_id, lease_epoch: c.epoch }).collect(),
            };
            match self.uplink.heartbeat(req, self.ttl()).await {
                Ok((resp, answered_sent)) => {
                    sent = answered_sent;
                    valid = self.validity(resp.lease_ttl_ms, resp.lease_valid_ms);
                    let revoked: Vec<Lease> = resp.revoked.iter().map(lease_of).collect();
                    let current = running
                        .iter()
                        .map(|c| Lease { task_id: c.task_id, epoch: c.epoch })
                        .filter(|l| !revoked.contains(l))
                        .collect();
                    confirmation = Confirmation::Answered { current };
                }
                Err(e) => tracing::warn!(error = %e, "cannot confirm leases of running containers; removing them"),
            }
        }
        let decisions = reconcile::plan(&found, &confirmation, |_| false);
        let mut adopt = Vec::new();
        let mut remove = Vec::new();
        for d in decisions {
            match d {
                Decision::Adopt(c) => adopt.push(c),
                other => remove.push(other),
            }
        }
        self.remove_all(remove).await;
        // Deadlines of containers that no longer exist.
        if let Some(d) = &self.deadlines {
            for id in d.armed().await.unwrap_or_default() {
                if !adopt.iter().any(|c| c.id == id) {
                    let _ = d.disarm(&id).await;
                }
            }
        }
        for c in adopt {
            let lease = Lease { task_id: c.task_id, epoch: c.epoch };
            let now = now();
            let cancel = self.shutdown.child_token();
            let deadline = {
                let mut s = lock(&self.state);
                let d = s.book.adopt(lease, c.id.clone(), sent, valid, now);
                if d.is_some() {
                    s.runs.insert(
                        c.task_id,
                        RunInfo {
                            attempt: c.attempt,
                            tenant: String::new(),
                            code: String::new(),
                            image: String::new(),
                            started: now,
                            cancel: cancel.clone(),
                        },
                    );
                }
                d
            };
            let Some(deadline) = deadline else {
                tracing::info!(container = %c.id, task_id = c.task_id, "lease ran out before re-adoption; removing");
                self.remove_all(vec![Decision::Remove { container: c.id.clone(), why: "lease ran out" }]).await;
                continue;
            };
            tracing::info!(container = %c.id, task_id = c.task_id, epoch = c.epoch, "re-adopting running container");
            if let Some(d) = &self.deadlines {
                d.arm(&c.id, wall(deadline)).await?;
            }
            let now_s = (watchdog::unix_ms(std::time::SystemTime::now()) / 1000) as i64;
            let elapsed_s = now_s.saturating_sub(c.started_unix_s).max(0) as u64;
            let timeout_left = Duration::from_millis(c.timeout_ms).saturating_sub(Duration::from_secs(elapsed_s));
            let work = Work::Adopt { container_id: c.id.clone(), timeout_left, since: std::time::SystemTime::now() };
            self.spawn_runner(lease, cancel, work);
        }
        self.book_changed.notify_one();
        self.update_slot_metrics();
        Ok(())
    }
}
