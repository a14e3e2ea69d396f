//! An agent in the order the world runs: it starts with nothing to do, idles past the lease
//! TTL, and then work arrives at some moment of its long poll. A grant that reaches the
//! agent more than one TTL after it sent the poll must still get a full lease: the task
//! runs to its end, once. Needs a running Docker engine (see `agent_docker.rs`).
//!
//! How the test places a task at a chosen offset into a long poll it cannot see:
//! * the server holds each poll at most [`MAX_LEASE_WAIT`] (the agent asks for longer), and
//!   an agent with a free slot sends its next poll the moment the last one returns, so its
//!   polls run back to back, one every `MAX_LEASE_WAIT` (plus a loopback round trip);
//! * a poll starts at two moments the test can see: the agent's first poll right after it
//!   logs "agent running", and every later one when a grant returns (the task turns
//!   Running; the agent has slots to spare, so it polls again at once). That moment is the
//!   *anchor*; polls then start at `anchor + k × MAX_LEASE_WAIT`;
//! * for each offset the test takes the first poll that leaves the agent idle for at least
//!   [`IDLE_BEFORE_TASK`] (more than a TTL) after its previous task ended, sleeps until
//!   that poll's start plus the offset, and queues one task (the grant follows within a
//!   Raft round trip). The sleep's subject is the offset itself, not a wait to settle.
//!
//! What it checks. Each task must end `Complete` after one attempt with its whole output,
//! and no container may be armed with a lease deadline already past: the test watches the
//! agent's watchdog directory (one file per container holding its deadline, see
//! `runner_agent::watchdog`) for the whole run. An agent that counts a grant's lease from
//! the poll's send time arms a grant that came more than a TTL into the poll with a past
//! deadline; the watchdog then kills the container (exit 137), or, when it looks before
//! Docker has started the container, finds nothing to kill and drops the deadline, which
//! only the file shows.
//!
//! Why the middle offset comes first. A heartbeat that renews the new lease between the
//! grant and the container's creation hides the defect for that grant (the agent then
//! counts from the heartbeat). The agent heartbeats every quarter of the TTL it knows;
//! until its first lease answer that is its 10 s default, so in its first poll nothing
//! renews between a grant 3 s in and the container's creation, and the middle grant is
//! checked without that race. Later grants run at the 2 s TTL's cadence (every 500 ms),
//! where on a loaded host a renewal often falls in the few hundred milliseconds between
//! grant and creation: they add coverage but do not have to fail on a defective agent.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::agent_tasks::*;
use drover_chaos::{AgentOptions, Cluster, ClusterOptions, eventually};
use drover_proto::v1 as pv;

/// Short so the test is fast; the defect needs only a poll longer than it.
const TTL: Duration = Duration::from_secs(2);
/// The server's cap on a long poll (the agent asks for 20 s): three TTLs, so that most of a
/// poll lies past one TTL.
const MAX_LEASE_WAIT: Duration = Duration::from_secs(6);
/// Each task runs this long, past a TTL: a lease deadline that is wrong by a TTL kills it.
const TASK_SLEEP: Duration = Duration::from_secs(3);
/// How long the agent idles, with nothing running, before each task arrives.
const IDLE_BEFORE_TASK: Duration = Duration::from_secs(3);
/// Where in a long poll each task is queued: before the TTL, and twice past it.
const OFFSETS: [(&str, Duration); 3] = [
    ("middle", Duration::from_millis(3_000)),
    ("late", Duration::from_millis(5_000)),
    ("early", Duration::from_millis(500)),
];
/// How often the test reads the watchdog directory (the watchdog itself looks every 100 ms).
const WATCH_EVERY: Duration = Duration::from_millis(1);

/// Records every deadline an agent arms that is already past when written, by reading its
/// watchdog directory until dropped.
struct DeadlineWatch {
    stop: Arc<AtomicBool>,
    past: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DeadlineWatch {
    fn start(dir: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let past = Arc::new(Mutex::new(Vec::new()));
        let (s, p) = (stop.clone(), past.clone());
        let thread = std::thread::spawn(move || {
            let mut seen = BTreeMap::<String, String>::new();
            while !s.load(Ordering::Relaxed) {
                let mut now = BTreeMap::new();
                for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().to_string();
                    if name.starts_with('.') {
                        continue;
                    }
                    let (Ok(text), Ok(meta)) = (std::fs::read_to_string(e.path()), e.metadata()) else { continue };
                    if seen.get(&name) != Some(&text) {
                        let written_ms = meta.modified().map(unix_ms).unwrap_or(0);
                        let deadline_ms: u64 = text.trim().parse().unwrap_or(0);
                        if deadline_ms < written_ms {
                            p.lock().expect("lock").push(format!(
                                "container {} armed with a deadline {} ms before it was written",
                                &name[..12.min(name.len())],
                                written_ms - deadline_ms
                            ));
                        }
                    }
                    now.insert(name, text);
                }
                seen = now;
                std::thread::sleep(WATCH_EVERY);
            }
        });
        DeadlineWatch { stop, past, thread: Some(thread) }
    }

    fn past(&self) -> Vec<String> {
        self.past.lock().expect("lock").clone()
    }
}

impl Drop for DeadlineWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

async fn idle_cluster() -> Cluster {
    common::cluster(ClusterOptions {
        nodes: 1,
        lease_ttl: Some(format!("{}ms", TTL.as_millis())),
        tls: true,
        extra_config: format!("max_lease_wait = \"{}ms\"", MAX_LEASE_WAIT.as_millis()),
        proxied: None,
    })
    .await
}

/// The first poll start `anchor + k × MAX_LEASE_WAIT` at which, plus `offset`, the agent
/// has been idle for `IDLE_BEFORE_TASK` since `idle_since`.
fn queue_time(anchor: Instant, idle_since: Instant, offset: Duration) -> Instant {
    let earliest = idle_since + IDLE_BEFORE_TASK;
    let mut poll = anchor;
    while poll + offset < earliest {
        poll += MAX_LEASE_WAIT;
    }
    poll + offset
}

#[tokio::test]
async fn an_agent_idle_past_the_ttl_runs_tasks_granted_early_midway_and_late_in_its_long_poll_once_each() {
    assert!(IDLE_BEFORE_TASK > TTL && TASK_SLEEP > TTL, "the test's premise");
    assert!(OFFSETS.iter().all(|(_, o)| *o < MAX_LEASE_WAIT), "offsets fall inside one poll");
    assert!(OFFSETS.iter().filter(|(_, o)| *o > TTL).count() >= 2, "grants past the TTL into a poll");
    assert!(OFFSETS[0].1 > TTL, "the first grant, in the agent's first poll, comes past the TTL");
    let _d = docker().await;
    let c = idle_cluster().await;
    create_tenant(&c).await;
    register(&c, sh("steps", &format!("echo start; sleep {}; echo end", TASK_SLEEP.as_secs()))).await;

    let a = c.start_agent("idler", AgentOptions::default()).expect("start agent");
    let watch = DeadlineWatch::start(a.data_dir.join("watchdog"));
    let mut anchor = eventually(Duration::from_secs(30), "the agent to start polling", || async {
        a.log().contains("agent running").then(Instant::now)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail(30)));
    let mut idle_since = anchor;
    let t = tenant(&c);
    let mut failures = Vec::new();
    for (name, offset) in OFFSETS {
        let at = queue_time(anchor, idle_since, offset);
        tokio::time::sleep_until(at.into()).await;
        let past_before = watch.past().len();
        let id = queue(&c, "steps", b"", 1).await[0];
        // Granted (and so the start of the agent's next poll) when it turns Running.
        let running = eventually(Duration::from_secs(10), &format!("task {id} to be granted"), || {
            let mut t = t.clone();
            async move {
                let task = t.get_task(pv::GetTaskRequest { id, include_payload: false }).await.ok()?.into_inner();
                (task.state != pv::TaskState::Queued as i32).then(Instant::now)
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail(30)));
        let granted_after = running.duration_since(at);
        anchor = running;
        let done = wait_finished(&c, id, TASK_SLEEP + Duration::from_secs(30), &[&a]).await;
        idle_since = Instant::now();
        let out = log(&c, id).await.0;
        let seen = (state(&done), done.attempts, done.lost_leases, out.as_slice());
        let want = (pv::TaskState::Complete, 1, 0, b"start\nend\n".as_slice());
        if seen != want {
            failures.push(format!(
                "{name}: task {id} queued {offset:?} into a long poll (granted {granted_after:?} later; TTL {TTL:?}) \
                 ended {:?} after {} attempt(s), {} lost lease(s), exit code {:?}, output {:?}",
                seen.0,
                seen.1,
                seen.2,
                done.result.as_ref().and_then(|r| r.exit_code),
                String::from_utf8_lossy(&out)
            ));
        }
        eprintln!("{name}: task {id} queued {offset:?} into a long poll ended {:?}", seen.0);
        failures.extend(watch.past().into_iter().skip(past_before).map(|p| format!("{name}: task {id}: {p}")));
    }
    drop(watch);
    assert!(
        failures.is_empty(),
        "{}\n--- agent ---\n{}\n--- watchdog ---\n{}",
        failures.join("\n"),
        plain_tail(&a, 30),
        watchdog_log(&a)
    );
    assert!(!plain_log(&a).contains("stopping task"), "the agent stopped a task:\n{}", plain_tail(&a, 30));
    assert!(!watchdog_log(&a).contains("killed"), "the watchdog killed a container:\n{}", watchdog_log(&a));
    no_containers_left(&a).await;
}
