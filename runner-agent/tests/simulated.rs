//! The whole agent (lease loop, heartbeats, deadline timer, runners, shipper, drain) on a
//! simulated clock, against a simulated control plane and the in-memory executor; a
//! property test over seeds of the timing of everything.
//!
//! The simulated control plane is adversarial within the rules the real one keeps: it
//! answers each call after a random delay, holds long polls until work arrives (tasks are
//! queued at random moments, so grants land early, midway and late in a poll), and gives
//! each lease answer `lease_valid_ms = held + ttl - since_quorum`, with `since_quorum`
//! random. It then expires a lease at the earliest moment the real one could: `ttl` after
//! the last quorum confirmation before its last renewal. In the stormy runs calls also
//! fail, answers come slowly, and the quorum is old or lost.
//!
//! Checked: no container runs after the control plane expired its lease; no completion
//! is *sent* for a lease the control plane had already expired; and in calm runs every
//! task runs exactly once, start to end, with no lease lost.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_proto::agent as pa;
use drover_runner_agent::agent::{Agent, now};
use drover_runner_agent::config::AgentConfig;
use drover_runner_agent::executor::fake::{FakeBehaviour, FakeExecutor};
use drover_runner_agent::metrics::AgentMetrics;
use drover_runner_agent::uplink::{ControlPlane, Reply, UplinkError};
use proptest::prelude::*;

const TTL: Duration = Duration::from_secs(2);
const LONG_POLL: Duration = Duration::from_secs(6);

/// A small deterministic generator (the seed comes from proptest).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Copy, Debug)]
struct Weather {
    /// Upper bound of each one-way delay, ms.
    delay_ms: u64,
    /// Upper bound of the time since the leader's last quorum confirmation, ms.
    since_quorum_ms: u64,
    /// Percent of calls refused `Unavailable`.
    fail_percent: u64,
}

const CALM: Weather = Weather { delay_ms: 100, since_quorum_ms: 200, fail_percent: 0 };
/// The worst of the storms drawn (each run draws its weather up to these).
const STORMY: Weather = Weather { delay_ms: 700, since_quorum_ms: 2_300, fail_percent: 20 };

#[derive(Debug)]
struct Held {
    epoch: u64,
    /// The earliest moment this control plane may hand the task to someone else.
    expiry: Instant,
}

#[derive(Default)]
struct State {
    queued: VecDeque<u64>,
    held: BTreeMap<u64, Held>,
    epoch: u64,
    /// (task, epoch) -> when the control plane expired it.
    expired: BTreeMap<(u64, u64), Instant>,
    completed: BTreeMap<u64, u32>,
    lost: u32,
    handed_back: u32,
    /// Completions sent for a lease the control plane had already expired.
    late_reports: Vec<(u64, u64)>,
    run_ms: BTreeMap<u64, u64>,
}

struct SimControlPlane {
    weather: Weather,
    rng: Mutex<Rng>,
    state: Mutex<State>,
    work: tokio::sync::Notify,
}

fn unavailable() -> UplinkError {
    UplinkError::Status { addr: "sim".into(), status: Box::new(tonic::Status::unavailable("simulated")) }
}

impl SimControlPlane {
    fn delay(&self) -> Duration {
        Duration::from_millis(self.rng.lock().expect("rng").below(self.weather.delay_ms + 1))
    }

    fn since_quorum(&self) -> Duration {
        Duration::from_millis(self.rng.lock().expect("rng").below(self.weather.since_quorum_ms + 1))
    }

    fn fails(&self) -> bool {
        self.rng.lock().expect("rng").chance(self.weather.fail_percent)
    }

    fn queue(&self, task: u64, run_ms: u64) {
        let mut s = self.state.lock().expect("state");
        s.queued.push_back(task);
        s.run_ms.insert(task, run_ms);
        drop(s);
        self.work.notify_waiters();
    }

    /// Expires every lease past its expiry (the control plane's lease tracker).
    fn expire(&self, at: Instant) {
        let mut s = self.state.lock().expect("state");
        let due: Vec<u64> = s.held.iter().filter(|(_, h)| h.expiry <= at).map(|(t, _)| *t).collect();
        if due.is_empty() {
            return;
        }
        for t in due {
            if let Some(h) = s.held.remove(&t) {
                s.expired.insert((t, h.epoch), h.expiry);
                s.lost += 1;
                s.queued.push_back(t);
            }
        }
        drop(s);
        self.work.notify_waiters();
    }

    fn current(s: &State, task: u64, epoch: u64, at: Instant) -> bool {
        s.held.get(&task).is_some_and(|h| h.epoch == epoch && h.expiry > at)
    }

    async fn lease_inner(
        &self,
        req: pa::LeaseRequest,
        sent: Instant,
    ) -> Result<(pa::LeaseResponse, Instant), UplinkError> {
        tokio::time::sleep(self.delay()).await;
        if self.fails() {
            return Err(unavailable());
        }
        let received = now();
        let until = received + LONG_POLL;
        loop {
            let notified = self.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let at = now();
            self.expire(at);
            let since = self.since_quorum();
            let grant = {
                let mut s = self.state.lock().expect("state");
                if since >= TTL || req.max_tasks == 0 {
                    None
                } else {
                    s.queued.pop_front().map(|t| {
                        s.epoch += 1;
                        let epoch = s.epoch;
                        s.held.insert(t, Held { epoch, expiry: at - since + TTL });
                        let run_ms = s.run_ms[&t];
                        (t, epoch, run_ms)
                    })
                }
            };
            if let Some((task_id, lease_epoch, run_ms)) = grant {
                let valid = (at - received) + TTL - since;
                let g = pa::GrantedTask {
                    task_id,
                    lease_epoch,
                    attempt: 1,
                    env: [("FAKE_RUN_MS".to_string(), run_ms.to_string())].into(),
                    timeout_ms: 3_600_000,
                    ..Default::default()
                };
                tokio::time::sleep(self.delay()).await;
                let resp = pa::LeaseResponse {
                    tasks: vec![g],
                    lease_ttl_ms: TTL.as_millis() as u64,
                    lease_valid_ms: valid.as_millis() as u64,
                };
                return Ok((resp, sent));
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until.into()) => {
                    let resp = pa::LeaseResponse { tasks: vec![], lease_ttl_ms: TTL.as_millis() as u64, lease_valid_ms: 0 };
                    return Ok((resp, sent));
                }
                // The tracker's tick.
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    async fn heartbeat_inner(
        &self,
        req: pa::HeartbeatRequest,
        sent: Instant,
    ) -> Result<(pa::HeartbeatResponse, Instant), UplinkError> {
        tokio::time::sleep(self.delay()).await;
        let since = self.since_quorum();
        if self.fails() || since >= TTL {
            return Err(unavailable());
        }
        let at = now();
        self.expire(at);
        let mut revoked = Vec::new();
        {
            let mut s = self.state.lock().expect("state");
            for l in &req.leases {
                if Self::current(&s, l.task_id, l.lease_epoch, at) {
                    let h = s.held.get_mut(&l.task_id).expect("held");
                    h.expiry = h.expiry.max(at - since + TTL);
                } else {
                    revoked.push(*l);
                }
            }
        }
        tokio::time::sleep(self.delay()).await;
        let valid = TTL - since;
        Ok((
            pa::HeartbeatResponse {
                revoked,
                lease_ttl_ms: TTL.as_millis() as u64,
                lease_valid_ms: valid.as_millis() as u64,
            },
            sent,
        ))
    }
}

impl ControlPlane for SimControlPlane {
    fn agent_id(&self) -> &str {
        "sim-agent"
    }

    fn lease(&self, req: pa::LeaseRequest, _timeout: Duration) -> Reply<'_, (pa::LeaseResponse, Instant)> {
        let sent = now();
        Box::pin(self.lease_inner(req, sent))
    }

    fn heartbeat(&self, req: pa::HeartbeatRequest, _timeout: Duration) -> Reply<'_, (pa::HeartbeatResponse, Instant)> {
        let sent = now();
        Box::pin(self.heartbeat_inner(req, sent))
    }

    fn complete(&self, req: pa::CompleteRequest) -> Reply<'_, pa::CompleteResponse> {
        // Checked when the agent sends it: the report must be for a lease still held.
        let at = now();
        {
            let mut s = self.state.lock().expect("state");
            for c in &req.completions {
                let l = c.lease.expect("lease");
                if !Self::current(&s, l.task_id, l.lease_epoch, at) {
                    s.late_reports.push((l.task_id, l.lease_epoch));
                }
            }
        }
        Box::pin(async move {
            tokio::time::sleep(self.delay()).await;
            if self.fails() {
                return Err(unavailable());
            }
            let at = now();
            self.expire(at);
            let mut results = Vec::new();
            let mut s = self.state.lock().expect("state");
            for c in req.completions {
                let l = c.lease.expect("lease");
                let ok = Self::current(&s, l.task_id, l.lease_epoch, at);
                if ok {
                    s.held.remove(&l.task_id);
                    *s.completed.entry(l.task_id).or_default() += 1;
                }
                results.push(pa::CompletionResult { lease: Some(l), accepted: ok, reason: String::new() });
            }
            Ok(pa::CompleteResponse { results })
        })
    }

    fn release(&self, req: pa::ReleaseRequest) -> Reply<'_, pa::ReleaseResponse> {
        Box::pin(async move {
            tokio::time::sleep(self.delay()).await;
            let at = now();
            let mut released = Vec::new();
            let mut s = self.state.lock().expect("state");
            for l in req.leases {
                if Self::current(&s, l.task_id, l.lease_epoch, at) {
                    s.held.remove(&l.task_id);
                    s.queued.push_back(l.task_id);
                    s.handed_back += 1;
                    released.push(l.task_id);
                }
            }
            drop(s);
            self.work.notify_waiters();
            Ok(pa::ReleaseResponse { released })
        })
    }

    fn append_logs(&self, _req: pa::AppendLogsRequest) -> Reply<'_, pa::AppendLogsResponse> {
        Box::pin(async move {
            tokio::time::sleep(self.delay()).await;
            Ok(pa::AppendLogsResponse { stale: vec![] })
        })
    }
}

struct Outcome {
    completed: BTreeMap<u64, u32>,
    handed_back: u32,
    lost: u32,
    late_reports: Vec<(u64, u64)>,
    /// Containers that ran after the control plane expired their lease: (task, epoch, by).
    overran: Vec<(u64, u64, Duration)>,
    runs: usize,
}

/// An engine outage: from `at` after the first task is queued, for `lasting`.
#[derive(Clone, Copy, Debug)]
struct Outage {
    at: Duration,
    lasting: Duration,
}

/// Runs one simulated agent for `tasks` tasks queued at random moments, then drains it.
fn simulate(seed: u64, weather: Weather, tasks: u64, slots: u32) -> Outcome {
    simulate_with(seed, weather, tasks, slots, None)
}

fn simulate_with(seed: u64, weather: Weather, tasks: u64, slots: u32, outage: Option<Outage>) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg: AgentConfig = toml::from_str(&format!(
            "control_plane = [\"sim\"]\ndev_agent_id = \"sim-agent\"\nslots = {slots}\nwatchdog = false\n\
             drain_grace = \"5s\"\ndata_dir = {:?}\n",
            dir.path().display().to_string()
        ))
        .expect("config");
        let cp = Arc::new(SimControlPlane {
            weather,
            rng: Mutex::new(Rng(seed | 1)),
            state: Mutex::new(State::default()),
            work: tokio::sync::Notify::new(),
        });
        let exec = Arc::new(FakeExecutor::new(FakeBehaviour {
            run_time: Duration::from_millis(100),
            create_time: Duration::from_millis(300),
        }));
        let agent = Agent::with_parts(cfg, cp.clone(), exec.clone(), AgentMetrics::new().expect("metrics"));
        let running = {
            let agent = agent.clone();
            tokio::spawn(async move { agent.run(std::path::Path::new("/nonexistent")).await })
        };
        // The control plane's lease tracker ticks whether or not calls come in.
        let ticker = {
            let cp = cp.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    cp.expire(now());
                }
            })
        };
        // Work arrives later, at random moments: the agent idles past the TTL first.
        let mut rng = Rng(seed.rotate_left(17) | 1);
        tokio::time::sleep(TTL * 2).await;
        let outage_task = outage.map(|o| {
            let exec = exec.clone();
            tokio::spawn(async move {
                tokio::time::sleep(o.at).await;
                exec.set_down(true);
                tokio::time::sleep(o.lasting).await;
                exec.set_down(false);
            })
        });
        for t in 1..=tasks {
            tokio::time::sleep(Duration::from_millis(rng.below(LONG_POLL.as_millis() as u64 + 3_000))).await;
            // Runs of up to four TTLs: they must be renewed many times.
            cp.queue(t, 200 + rng.below(4 * TTL.as_millis() as u64));
        }
        // Everything ends (or, in a storm, gives up) well within this.
        let give_up = now() + Duration::from_secs(600);
        loop {
            let done = cp.state.lock().expect("state").completed.len() as u64 == tasks;
            if done || now() > give_up {
                break;
            }
            if std::env::var("SIM_DEBUG").is_ok() {
                let s = cp.state.lock().expect("state");
                eprintln!(
                    "t={:?} queued={:?} held={:?} completed={:?} lost={}",
                    now(),
                    s.queued,
                    s.held,
                    s.completed,
                    s.lost
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if std::env::var("SIM_DEBUG").is_ok() {
            eprintln!("draining");
        }
        agent.draining().cancel();
        running.await.expect("join").expect("agent run");
        ticker.abort();
        if let Some(t) = outage_task {
            t.abort();
        }
        let s = cp.state.lock().expect("state");
        let runs = exec.runs();
        let mut overran = Vec::new();
        for r in &runs {
            if let (Some(_), Some(end)) = (r.started, r.ended)
                && let Some(expired) = s.expired.get(&(r.task_id, r.epoch))
                && end > *expired
            {
                overran.push((r.task_id, r.epoch, end - *expired));
            }
        }
        Outcome {
            completed: s.completed.clone(),
            handed_back: s.handed_back,
            lost: s.lost,
            late_reports: s.late_reports.clone(),
            overran,
            runs: runs.iter().filter(|r| r.started.is_some()).count(),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// Calm weather, work arriving at any moment of an idle agent's long polls: every task
    /// runs exactly once to its end, and no lease is lost.
    #[test]
    fn in_calm_weather_every_task_runs_once_whenever_it_arrives(seed in any::<u64>(), slots in 1..4u32) {
        let o = simulate(seed, CALM, 6, slots);
        prop_assert_eq!(o.completed.len(), 6, "completed {:?}", o.completed);
        prop_assert!(o.completed.values().all(|n| *n == 1));
        prop_assert_eq!(o.lost, 0);
        prop_assert_eq!(o.runs, 6);
        prop_assert!(o.late_reports.is_empty());
        prop_assert!(o.overran.is_empty());
    }

    /// Stormy weather (slow and failing calls, an old or lost quorum): leases are lost and
    /// tasks re-run, but no container outlives its lease at the control plane and no
    /// completion is sent for a lease the control plane no longer holds.
    #[test]
    fn in_a_storm_no_container_outlives_its_lease_and_no_lost_lease_is_reported(
        seed in any::<u64>(),
        slots in 1..4u32,
        delay_ms in 20..STORMY.delay_ms,
        since_quorum_ms in 100..STORMY.since_quorum_ms,
        fail_percent in 0..STORMY.fail_percent,
    ) {
        let weather = Weather { delay_ms, since_quorum_ms, fail_percent };
        let o = simulate(seed, weather, 6, slots);
        if std::env::var("SIM_DEBUG").is_ok() {
            eprintln!("storm: completed {} lost {} runs {}", o.completed.len(), o.lost, o.runs);
        }
        prop_assert!(o.overran.is_empty(), "containers ran past their lease: {:?}", o.overran);
        prop_assert!(o.late_reports.is_empty(), "reports for expired leases: {:?}", o.late_reports);
    }

    /// The container engine fails for a while under running tasks (a restart): that is
    /// the agent's failure, not the tasks'. The tasks are handed back (not lost, no
    /// retry consumed), leasing waits for the engine, and every task still runs to its
    /// end exactly once.
    #[test]
    fn an_engine_outage_hands_tasks_back_and_every_task_still_completes(
        seed in any::<u64>(),
        slots in 1..4u32,
        at_ms in 0..20_000u64,
        lasting_ms in 100..10_000u64,
    ) {
        let outage = Outage { at: Duration::from_millis(at_ms), lasting: Duration::from_millis(lasting_ms) };
        let o = simulate_with(seed, CALM, 6, slots, Some(outage));
        prop_assert_eq!(o.completed.len(), 6, "completed {:?}", o.completed);
        prop_assert!(o.completed.values().all(|n| *n == 1));
        prop_assert_eq!(o.lost, 0, "an engine failure is not a lost lease");
        prop_assert!(o.overran.is_empty());
        prop_assert!(o.late_reports.is_empty());
        // Each hand-back reruns its task once (some were handed back before they started).
        prop_assert!(o.runs >= 6 && o.runs as u32 <= 6 + o.handed_back, "runs {} hand-backs {}", o.runs, o.handed_back);
    }
}
