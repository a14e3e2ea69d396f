//! An in-memory [`Executor`]: containers that "run" for a set time on tokio's clock (so
//! a test with paused time runs hours of them in milliseconds), with labels, cancellation,
//! timeouts and a record of when each started and ended. For the agent's own logic tests
//! and for simulating many agents in one process; never a stand-in for Docker in
//! integration tests.
//!
//! A task's run time and exit code come from its environment (`FAKE_RUN_MS`,
//! `FAKE_EXIT_CODE`), else from [`FakeBehaviour`]. The engine can be made to fail
//! ([`FakeExecutor::set_down`]): every call then fails as an unreachable engine would.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::image_cache::CachedImage;
use super::{ContainerSpec, ExecError, Executor, Labelled, LogStream, OnCreated, OutputChunk, RunOutcome, RunReport};
use crate::clock::now;

#[derive(Clone, Debug)]
pub struct FakeBehaviour {
    /// How long a task runs unless its environment says (`FAKE_RUN_MS`).
    pub run_time: Duration,
    /// Image pull and create, before `on_created` is asked.
    pub create_time: Duration,
}

impl Default for FakeBehaviour {
    fn default() -> Self {
        FakeBehaviour { run_time: Duration::from_millis(100), create_time: Duration::ZERO }
    }
}

/// One container's life, on tokio's clock (as std instants).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeRun {
    pub container: String,
    pub task_id: u64,
    pub epoch: u64,
    pub started: Option<std::time::Instant>,
    pub ended: Option<std::time::Instant>,
    pub outcome: Option<RunOutcome>,
}

#[derive(Default)]
pub struct FakeExecutor {
    behaviour: FakeBehaviour,
    next_id: AtomicU64,
    down: AtomicBool,
    /// Wakes running containers when the engine goes down (they fail with it).
    went_down: tokio::sync::Notify,
    /// Every container ever made, by id.
    runs: Mutex<BTreeMap<String, FakeRun>>,
}

fn engine_down() -> ExecError {
    ExecError::Io(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "fake engine is down"))
}

impl FakeExecutor {
    pub fn new(behaviour: FakeBehaviour) -> Self {
        FakeExecutor { behaviour, ..Default::default() }
    }

    /// Makes the engine unreachable (or reachable again).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
        if down {
            self.went_down.notify_waiters();
        }
    }

    /// Every container made so far.
    pub fn runs(&self) -> Vec<FakeRun> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut FakeRun)) {
        if let Some(r) = self.runs.lock().unwrap_or_else(|p| p.into_inner()).get_mut(id) {
            f(r);
        }
    }

    async fn run_inner(
        &self,
        spec: &ContainerSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: CancellationToken,
        on_created: OnCreated<'_>,
    ) -> RunReport {
        let mut report = RunReport::new(String::new());
        if self.down.load(Ordering::Relaxed) {
            report.infrastructure = true;
            report.error = engine_down().to_string();
            return report;
        }
        tokio::time::sleep(self.behaviour.create_time).await;
        let id = format!("fake-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        report.container_id = id.clone();
        self.runs.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id.clone(),
            FakeRun {
                container: id.clone(),
                task_id: spec.task_id,
                epoch: spec.lease_epoch,
                started: None,
                ended: None,
                outcome: None,
            },
        );
        if !on_created(id.clone()).await {
            report.outcome = RunOutcome::Killed;
            report.error = "not started".into();
            self.update(&id, |r| r.outcome = Some(RunOutcome::Killed));
            return report;
        }
        let started = now();
        self.update(&id, |r| r.started = Some(started));
        report.started_ms =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let _ = output.send(OutputChunk { stream: LogStream::Stdout, data: Bytes::from_static(b"start\n") }).await;
        let env = |k: &str| spec.env.get(k).and_then(|v| v.parse::<u64>().ok());
        let run_time = env("FAKE_RUN_MS").map(Duration::from_millis).unwrap_or(self.behaviour.run_time);
        let exit_code = env("FAKE_EXIT_CODE").unwrap_or(0) as i32;
        let timeout = if spec.timeout.is_zero() { Duration::MAX } else { spec.timeout };
        let went_down = self.went_down.notified();
        tokio::pin!(went_down);
        went_down.as_mut().enable();
        if self.down.load(Ordering::Relaxed) {
            // The engine failed between the create and the start.
            report.infrastructure = true;
            report.error = engine_down().to_string();
            let ended = now();
            self.update(&id, |r| {
                r.ended = Some(ended);
                r.outcome = Some(RunOutcome::Error);
            });
            return report;
        }
        let outcome = tokio::select! {
            _ = &mut went_down => {
                // The engine failed under the container: its fate is unknown.
                report.infrastructure = true;
                report.error = engine_down().to_string();
                Some(RunOutcome::Error)
            }
            _ = tokio::time::sleep(run_time) => None,
            _ = tokio::time::sleep(timeout.min(Duration::from_secs(365 * 86_400))) => Some(RunOutcome::Timeout),
            _ = cancel.cancelled() => Some(RunOutcome::Killed),
        };
        report.outcome = match outcome {
            Some(o) => o,
            None => {
                let _ =
                    output.send(OutputChunk { stream: LogStream::Stdout, data: Bytes::from_static(b"end\n") }).await;
                report.exit_code = Some(exit_code);
                if exit_code == 0 { RunOutcome::Success } else { RunOutcome::Error }
            }
        };
        let ended = now();
        let o = report.outcome;
        self.update(&id, |r| {
            r.ended = Some(ended);
            r.outcome = Some(o);
        });
        report
    }
}

impl Executor for FakeExecutor {
    fn run<'a>(
        &'a self,
        spec: &'a ContainerSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: CancellationToken,
        on_created: OnCreated<'a>,
    ) -> BoxFuture<'a, RunReport> {
        Box::pin(self.run_inner(spec, output, cancel, on_created))
    }

    fn adopt<'a>(
        &'a self,
        container_id: &'a str,
        _timeout_left: Duration,
        _logs_since: SystemTime,
        _output: mpsc::Sender<OutputChunk>,
        _cancel: CancellationToken,
    ) -> BoxFuture<'a, RunReport> {
        // The fake keeps nothing across agent restarts: there is never anything to adopt.
        Box::pin(async move {
            let mut r = RunReport::new(container_id.to_string());
            r.error = "the fake executor adopts nothing".into();
            r
        })
    }

    fn labelled<'a>(&'a self, _agent_id: &'a str) -> BoxFuture<'a, Result<Vec<Labelled>, ExecError>> {
        Box::pin(async move {
            if self.down.load(Ordering::Relaxed) {
                return Err(engine_down());
            }
            Ok(Vec::new())
        })
    }

    fn remove<'a>(&'a self, _container_id: &'a str) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(async move { if self.down.load(Ordering::Relaxed) { Err(engine_down()) } else { Ok(()) } })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), ExecError>> {
        Box::pin(async move { if self.down.load(Ordering::Relaxed) { Err(engine_down()) } else { Ok(()) } })
    }

    fn prepull<'a>(&'a self, _images: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    fn images(&self) -> Vec<CachedImage> {
        Vec::new()
    }
}
