//! A `run_every 1s` schedule on a 3-node cluster across two kill -9s of the leader (the
//! second with the cluster left without a leader for a few seconds): every fired task
//! records its tick; no tick fires twice; and each tick that fired is the latest one due
//! when its fire was applied, with every grid tick that did not fire counted as missed —
//! the catch-up rule, checked exactly. Also: pause, resume, delete, and the refusals of a
//! bad schedule, through the tenant API.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{cluster, setup_tenant};
use drover_chaos::{Cluster, ClusterOptions, clients};
use drover_proto::v1 as pv;

const EVERY_MS: u64 = 1_000;

async fn schedule(c: &Cluster, id: u64) -> pv::Schedule {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for node in c.running_ids() {
            let Ok(mut t) = clients::tenant(c.addr(node), "acme") else { continue };
            if let Ok(r) = t.get_schedule(pv::GetScheduleRequest { id }).await {
                return r.into_inner();
            }
        }
        assert!(Instant::now() < deadline, "no node answers GetSchedule");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the schedule has fired `more` more times than `from`.
async fn wait_fired(c: &Cluster, id: u64, from: u64, more: u64) -> pv::Schedule {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = schedule(c, id).await;
        if s.fired >= from + more {
            return s;
        }
        assert!(Instant::now() < deadline, "schedule {id} fired {} times, waited for {}", s.fired, from + more);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_every_fires_each_tick_once_across_leader_kills() {
    let mut c = cluster(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    setup_tenant(&c, leader).await;
    let mut t = clients::tenant(c.addr(leader), "acme").expect("tenant client");
    let created = t
        .create_schedule(pv::CreateScheduleRequest {
            run_every_ms: EVERY_MS,
            task: Some(pv::NewTask { code: "echo".into(), payload: b"{\"tick\":true}".to_vec(), ..Default::default() }),
            // Every tick queues (no agent runs them): each fire shows as a task.
            overlap: pv::Overlap::Allow as i32,
            ..Default::default()
        })
        .await
        .expect("create schedule")
        .into_inner();
    let id = created.id;
    let anchor = created.next_ticks_ms[0];
    assert_eq!(created.next_ticks_ms.len(), 5);
    assert!(created.next_ticks_ms.windows(2).all(|w| w[1] - w[0] == EVERY_MS), "{:?}", created.next_ticks_ms);
    let s = wait_fired(&c, id, 0, 3).await;

    // First failover: kill -9 the leader; the others elect a new one.
    let first = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    c.kill(first).expect("kill leader");
    let s = wait_fired(&c, id, s.fired, 3).await;
    c.restart(first).expect("restart");

    // Second: kill -9 the new leader and freeze a follower, so no leader can exist for a
    // few seconds (one live node of three); ticks come due meanwhile.
    let second = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    c.kill(second).expect("kill leader");
    let frozen = c.running_ids().into_iter().find(|n| *n != second).expect("a follower");
    c.pause(frozen).expect("SIGSTOP");
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    c.resume(frozen).expect("SIGCONT");
    let s = wait_fired(&c, id, s.fired, 3).await;
    c.restart(second).expect("restart");
    let _ = wait_fired(&c, id, s.fired, 2).await;

    // Stop the schedule, then read everything it did.
    let node = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    let mut t = clients::tenant(c.addr(node), "acme").expect("tenant client");
    let paused = t.pause_schedule(pv::PauseScheduleRequest { id, paused: true }).await.expect("pause").into_inner();
    assert!(paused.paused && paused.next_ticks_ms.is_empty());
    let tasks = common::all_tasks(&c, node).await;

    let mut ticks = BTreeSet::new();
    let mut lateness = Vec::new();
    for task in &tasks {
        assert_eq!(task.schedule_id, id, "task {} was not queued by the schedule", task.id);
        let tick = task.schedule_tick_ms;
        assert_eq!((tick - anchor) % EVERY_MS, 0, "task {} has tick {tick}, off the grid from {anchor}", task.id);
        assert!(ticks.insert(tick), "tick {tick} fired twice");
        // The catch-up rule: the tick that fires is the latest one due when the fire is
        // applied (the task's creation time is that entry's stamp).
        assert!(
            tick <= task.created_ms && task.created_ms < tick + EVERY_MS,
            "task {} fired tick {tick} at {}: not the latest due tick",
            task.id,
            task.created_ms
        );
        lateness.push(task.created_ms - tick);
    }
    assert_eq!(ticks.len() as u64, paused.fired, "one task per fired tick");
    let (first_tick, last_tick) = (*ticks.first().expect("ticks"), *ticks.last().expect("ticks"));
    assert_eq!(first_tick, anchor, "the first tick is the schedule's start");
    let on_grid = (last_tick - first_tick) / EVERY_MS + 1;
    assert_eq!(
        on_grid - ticks.len() as u64,
        paused.missed,
        "every grid tick that did not fire is counted missed (fired {}, grid {on_grid})",
        ticks.len()
    );
    assert!(paused.missed >= 2, "ticks came due while no leader existed, yet {} were missed", paused.missed);
    lateness.sort_unstable();
    eprintln!(
        "fired {} ticks, missed {}; fire delay after the tick p50 {} ms, p99 {} ms, max {} ms",
        ticks.len(),
        paused.missed,
        lateness[lateness.len() / 2],
        lateness[lateness.len() * 99 / 100],
        lateness[lateness.len() - 1]
    );

    // Paused: no more fires. Resumed: fires again. Deleted: gone.
    let before = schedule(&c, id).await.fired;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(schedule(&c, id).await.fired, before, "a paused schedule fired");
    let resumed = t.pause_schedule(pv::PauseScheduleRequest { id, paused: false }).await.expect("resume").into_inner();
    assert!(!resumed.paused && !resumed.next_ticks_ms.is_empty());
    let after_resume = wait_fired(&c, id, before, 1).await;
    assert_eq!(after_resume.missed, paused.missed, "ticks while paused are not missed");
    t.delete_schedule(pv::DeleteScheduleRequest { id }).await.expect("delete");
    let gone = t.get_schedule(pv::GetScheduleRequest { id }).await.expect_err("deleted");
    assert_eq!(gone.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_schedules_are_refused_naming_the_field() {
    let c = cluster(ClusterOptions { nodes: 1, ..Default::default() }).await;
    let node = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    setup_tenant(&c, node).await;
    let mut t = clients::tenant(c.addr(node), "acme").expect("tenant client");
    let task = || Some(pv::NewTask { code: "echo".into(), ..Default::default() });
    let cases = [
        (pv::CreateScheduleRequest { cron: "* * *".into(), task: task(), ..Default::default() }, "cron"),
        (
            pv::CreateScheduleRequest {
                cron: "0 9 * * *".into(),
                timezone: "Mars/Olympus".into(),
                task: task(),
                ..Default::default()
            },
            "timezone",
        ),
        (pv::CreateScheduleRequest { run_every_ms: 10, task: task(), ..Default::default() }, "run_every"),
        (pv::CreateScheduleRequest { run_every_ms: 1_000, ..Default::default() }, "task"),
        (pv::CreateScheduleRequest { task: task(), ..Default::default() }, "cron"),
    ];
    for (req, field) in cases {
        let err = t.create_schedule(req).await.expect_err("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(&format!("invalid {field}")), "{field}: {err:?}");
    }
    let missing = t
        .create_schedule(pv::CreateScheduleRequest {
            run_every_ms: 1_000,
            task: Some(pv::NewTask { code: "nope".into(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .expect_err("unknown code");
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    let listed = t.list_schedules(pv::ListSchedulesRequest {}).await.expect("list").into_inner();
    assert!(listed.schedules.is_empty(), "refused schedules changed nothing: {listed:?}");

    // A cron schedule in a zone shows its next fire times.
    let s = t
        .create_schedule(pv::CreateScheduleRequest {
            cron: "30 9 * * MON-FRI".into(),
            timezone: "Europe/Berlin".into(),
            task: task(),
            ..Default::default()
        })
        .await
        .expect("cron schedule")
        .into_inner();
    assert_eq!(s.next_ticks_ms.len(), 5);
    assert!(s.next_ticks_ms.windows(2).all(|w| w[0] < w[1]));
}
