//! One task's run: the container through the executor, its output to the shipper, and
//! its end reported, handed back or forgotten as the lease book decides.
//!
//! The runner asks the book twice: once the container exists (start it only if the lease
//! is still held and its deadline ahead, arming the watchdog first), and once it has
//! ended (report only if it ended before the deadline and was not stopped; hand back on
//! drain or an engine failure; otherwise say nothing). A report is retried while the
//! book says it may still be sent. Whatever happens, the slot is freed at the end.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use drover_proto::agent as pa;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::agent::{Agent, lock, wall};
use crate::clock::now;
use crate::executor::{ContainerSpec, OutputChunk, RunOutcome, RunReport};
use crate::lease_book::{AfterExit, CreatedDecision, Exit, Lease};
use crate::shipper::{MAX_CHUNK_BYTES, ShipMsg};

/// What a runner runs.
pub(crate) enum Work {
    Fresh(Box<pa::GrantedTask>),
    Adopt { container_id: String, timeout_left: Duration, since: SystemTime },
}

impl Agent {
    /// The grant becomes the container's spec (moved: the payload can be megabytes).
    fn spec(&self, g: pa::GrantedTask) -> ContainerSpec {
        ContainerSpec {
            task_id: g.task_id,
            attempt: g.attempt,
            lease_epoch: g.lease_epoch,
            agent_id: self.agent_id().to_string(),
            tenant: g.tenant,
            code: g.code,
            image: g.image,
            command: g.command,
            env: g.env.into_iter().collect(),
            payload: g.payload,
            memory_bytes: g.memory_bytes,
            cpu_millis: g.cpu_millis,
            pids: g.pids,
            timeout: Duration::from_millis(g.timeout_ms),
            network_mode: self.cfg.network_mode.clone(),
            credentials: g.registry_auth.map(|a| crate::executor::image_cache::RegistryCredentials {
                server: a.server,
                username: a.username,
                password: a.password,
            }),
        }
    }

    pub(crate) fn spawn_runner(self: &Arc<Self>, lease: Lease, cancel: CancellationToken, work: Work) {
        let this = self.clone();
        let span = tracing::info_span!("task", task_id = lease.task_id, epoch = lease.epoch);
        self.tasks.spawn(async move { this.run_task(lease, cancel, work).await }.instrument(span));
    }

    async fn run_task(self: Arc<Self>, lease: Lease, cancel: CancellationToken, work: Work) {
        let seq_base = match &work {
            Work::Fresh(_) => 0,
            Work::Adopt { .. } => self.adopt_seq_base,
        };
        let (out_tx, mut out_rx) = mpsc::channel::<OutputChunk>(64);
        let ship = self.ship_tx.clone();
        let forward = tokio::spawn(async move {
            let mut seq = seq_base;
            while let Some(c) = out_rx.recv().await {
                let mut data: Bytes = c.data;
                while !data.is_empty() {
                    let part = data.split_to(data.len().min(MAX_CHUNK_BYTES));
                    if ship.send(ShipMsg::Chunk { lease, seq, stream: c.stream, data: part }).await.is_err() {
                        return;
                    }
                    seq += 1;
                }
            }
        });
        let report = match work {
            Work::Fresh(g) => {
                let spec = self.spec(*g);
                let this = self.clone();
                let on_created = move |id: String| -> futures::future::BoxFuture<'static, bool> {
                    let this = this.clone();
                    Box::pin(async move { this.created(lease, &id).await })
                };
                self.exec.run(&spec, out_tx, cancel.clone(), &on_created).await
            }
            Work::Adopt { container_id, timeout_left, since } => {
                self.exec.adopt(&container_id, timeout_left, since, out_tx, cancel.clone()).await
            }
        };
        let _ = forward.await;
        let (ack, acked) = oneshot::channel();
        if self.ship_tx.send(ShipMsg::Flush { ack }).await.is_ok() {
            let _ = acked.await;
        }
        let exit = if report.infrastructure { Exit::Infrastructure } else { Exit::Ended };
        let after = lock(&self.state).book.exited(lease, exit, now());
        match after {
            AfterExit::Report => self.complete(lease, &report).await,
            AfterExit::HandBack => {
                if report.infrastructure {
                    tracing::warn!(error = %report.error, "the container engine failed under the task; handing it back");
                    self.engine_down.store(true, Ordering::Relaxed);
                }
                self.hand_back(lease).await;
            }
            AfterExit::Forget(reason) => {
                tracing::warn!(?reason, "task stopped without reporting: lease not held");
                self.metrics.tasks.with_label_values(&["lost"]).inc();
            }
        }
        // Done with the lease before anything else is awaited: a heartbeat answered from
        // now on no longer carries it.
        {
            let mut s = lock(&self.state);
            s.book.release(lease);
            s.runs.remove(&lease.task_id);
        }
        if let Some(d) = &self.deadlines
            && !report.container_id.is_empty()
            && let Err(e) = d.disarm(&report.container_id).await
        {
            tracing::warn!(error = %e, "disarming the watchdog failed");
        }
        self.update_slot_metrics();
        self.book_changed.notify_one();
        self.slot_freed.notify_waiters();
        self.slot_freed.notify_one();
    }

    /// The container exists: start it only if the book still holds the lease, with the
    /// watchdog armed at the lease's deadline first.
    async fn created(&self, lease: Lease, container: &str) -> bool {
        let decision = lock(&self.state).book.created(lease, container, now());
        match decision {
            CreatedDecision::Start { deadline } => {
                if let Some(d) = &self.deadlines
                    && let Err(e) = d.arm(container, wall(deadline)).await
                {
                    tracing::error!(error = %e, "arming the watchdog failed; not starting the container");
                    return false;
                }
                // Arming awaited a file write: ask again, so that the start request follows
                // the last check with nothing awaited in between.
                let ok = lock(&self.state).book.may_start(lease, now());
                if !ok {
                    tracing::warn!("the lease ended while the watchdog was armed; not starting the container");
                }
                ok
            }
            CreatedDecision::Abort => {
                tracing::warn!("the lease ended during the image pull or create; not starting the container");
                false
            }
        }
    }

    /// Reports the end of a task, retrying while the book says the lease is still held.
    async fn complete(&self, lease: Lease, report: &RunReport) {
        let (outcome, label) = match report.outcome {
            RunOutcome::Success => (pa::Outcome::Success, "success"),
            RunOutcome::Error => (pa::Outcome::Error, "error"),
            RunOutcome::Timeout => (pa::Outcome::Timeout, "timeout"),
            RunOutcome::Killed => (pa::Outcome::Killed, "killed"),
            RunOutcome::ImagePull => (pa::Outcome::ImagePull, "image_pull"),
            RunOutcome::Infrastructure => (pa::Outcome::Infrastructure, "infrastructure"),
        };
        self.metrics.tasks.with_label_values(&[label]).inc();
        let req = pa::CompleteRequest {
            agent_id: String::new(),
            completions: vec![pa::Completion {
                lease: Some(pa::LeaseRef { task_id: lease.task_id, lease_epoch: lease.epoch }),
                outcome: outcome as i32,
                exit_code: report.exit_code,
                oom_killed: report.oom_killed,
                error: report.error.clone(),
                started_ms: report.started_ms,
                peak_memory_bytes: report.peak_memory_bytes,
            }],
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.uplink.complete(req.clone()).await {
                Ok(resp) => {
                    for r in resp.results {
                        if r.accepted {
                            tracing::info!(task_id = lease.task_id, epoch = lease.epoch, outcome = label, "reported");
                        } else {
                            self.metrics.completions_rejected.inc();
                            tracing::warn!(task_id = lease.task_id, reason = %r.reason, "completion rejected");
                        }
                    }
                    return;
                }
                Err(e) if e.status().is_some_and(|s| s.code() == tonic::Code::PermissionDenied) => {
                    self.metrics.completions_rejected.inc();
                    tracing::warn!(error = %e, "completion refused");
                    return;
                }
                Err(e) => {
                    let may = lock(&self.state).book.may_report(lease, now());
                    if !may || self.shutdown.is_cancelled() {
                        tracing::warn!(error = %e, "giving up reporting: lease no longer held");
                        return;
                    }
                    tracing::warn!(error = %e, "reporting failed; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}
