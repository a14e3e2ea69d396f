//! The runner agent end to end: a real control plane, real `drover agent` processes and
//! real Docker containers (an image built here from the static busybox; nothing is
//! pulled). Needs a running Docker engine: `.ci/run` installs and starts one.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::agent_tasks::*;
use drover_chaos::{AgentOptions, Cluster, ClusterOptions, eventually};
use drover_proto::v1 as pv;

async fn cluster(nodes: u64, ttl: &str, tls: bool) -> Cluster {
    cluster_with(nodes, ttl, tls, "").await
}

async fn cluster_with(nodes: u64, ttl: &str, tls: bool, extra_config: &str) -> Cluster {
    let extra_config = extra_config.to_string();
    common::cluster(ClusterOptions { nodes, lease_ttl: Some(ttl.into()), tls, extra_config, proxied: None }).await
}

#[tokio::test]
async fn results_exit_codes_oom_and_timeouts_come_back_from_real_containers() {
    let _d = docker().await;
    let c = cluster_with(1, "5s", true, "max_task_log_bytes = \"1 KiB\"").await;
    create_tenant(&c).await;
    register(&c, sh("echo", "cat \"$PAYLOAD_FILE\"")).await;
    register(&c, sh("chatty", "yes drover | head -c 5000")).await;
    register(&c, sh("exit3", "echo failing >&2; exit 3")).await;
    let mut hog = sh("hog", "exec dd if=/dev/zero of=/dev/null bs=64M count=1");
    hog.limits = Some(pv::CodeLimits { memory_bytes: 32 << 20, ..Default::default() });
    register(&c, hog).await;
    let mut sleeper = sh("sleeper", "echo sleeping; sleep 30");
    sleeper.limits = Some(pv::CodeLimits { timeout_ms: 1_000, ..Default::default() });
    register(&c, sleeper).await;

    // Binary, non-UTF-8, no trailing newline.
    let payload: Vec<u8> = (0..=255u8).chain(b"{\"x\": 1}".iter().copied()).chain([0xff, 0xfe, 0x00]).collect();
    let echo = queue(&c, "echo", &payload, 1).await[0];
    let exit3 = queue(&c, "exit3", b"", 1).await[0];
    let hog = queue(&c, "hog", b"", 1).await[0];
    let sleeper = queue(&c, "sleeper", b"", 1).await[0];
    let chatty = queue(&c, "chatty", b"", 1).await[0];

    let a = c.start_agent("runner", AgentOptions::default()).expect("start agent");
    let t = wait_finished(&c, echo, Duration::from_secs(60), &[&a]).await;
    assert_eq!(state(&t), pv::TaskState::Complete, "{t:?}");
    let (out, _, _) = log(&c, echo).await;
    assert_eq!(out, payload, "the payload comes back byte for byte");

    let t = wait_finished(&c, exit3, Duration::from_secs(60), &[&a]).await;
    assert_eq!(state(&t), pv::TaskState::Error, "{t:?}");
    assert_eq!(t.result.as_ref().and_then(|r| r.exit_code), Some(3));
    assert_eq!(log(&c, exit3).await.1, b"failing\n");

    let t = wait_finished(&c, hog, Duration::from_secs(60), &[&a]).await;
    assert_eq!(state(&t), pv::TaskState::Error, "{t:?}");
    assert!(t.result.as_ref().is_some_and(|r| r.oom_killed), "reported OOM-killed: {t:?}");

    let t = wait_finished(&c, sleeper, Duration::from_secs(60), &[&a]).await;
    assert_eq!(state(&t), pv::TaskState::Timeout, "{t:?}");
    assert_eq!(log(&c, sleeper).await.0, b"sleeping\n");

    // The server caps each task's log (1 KiB here) and says so in the log.
    let t = wait_finished(&c, chatty, Duration::from_secs(60), &[&a]).await;
    assert_eq!(state(&t), pv::TaskState::Complete, "{t:?}");
    let (out, _, sys) = log(&c, chatty).await;
    assert_eq!(out, b"drover\n".repeat(200)[..1024].to_vec());
    assert!(String::from_utf8_lossy(&sys).contains("log truncated at 1024 bytes"), "{sys:?}");
    no_containers_left(&a).await;
}

#[tokio::test]
async fn logs_follow_live_status_shows_leases_and_sigterm_drains() {
    let _d = docker().await;
    let c = cluster(1, "5s", false).await;
    create_tenant(&c).await;
    register(&c, sh("steps", "echo start; sleep 2; echo end")).await;
    let ids = queue(&c, "steps", b"", 2).await;
    let mut a = c.start_agent("drainee", AgentOptions::default()).expect("start agent");
    // Follow one task's log from the start: the stream ends by itself when the task ends.
    let mut follow = tenant(&c)
        .get_task_log(pv::GetTaskLogRequest { id: ids[0], from_index: 0, follow: true })
        .await
        .expect("follow")
        .into_inner();
    let running = eventually(Duration::from_secs(30), "both tasks running on the agent", || async {
        let s = agent_status(&a)?;
        let running = s["running"].as_array().cloned().unwrap_or_default();
        (running.len() == 2 && running.iter().all(|r| r["container_id"].is_string())).then_some(running)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail(30)));
    for r in &running {
        let t = get(&c, r["task_id"].as_u64().expect("task id")).await;
        assert_eq!(Some(t.lease_epoch), r["lease_epoch"].as_u64(), "status shows the lease epoch");
    }
    let (code, metrics) =
        drover_runner_agent::socket::request(&a.socket, hyper::Method::GET, "/metrics").await.expect("metrics");
    assert!(code.is_success());
    for line in
        ["drover_agent_slots_busy 2", "drover_agent_slots_free 2", "drover_agent_container_create_seconds_count 2"]
    {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    }
    let mode = std::fs::metadata(&a.socket).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    assert_eq!(mode.expect("socket") & 0o777, 0o600);
    a.stop(Duration::from_secs(30)).expect("SIGTERM drains and exits cleanly");
    for id in &ids {
        let t = get(&c, *id).await;
        assert_eq!((state(&t), t.attempts), (pv::TaskState::Complete, 1), "finished during the drain: {t:?}");
    }
    let mut followed = Vec::new();
    while let Some(batch) = tokio::time::timeout(Duration::from_secs(10), follow.message())
        .await
        .expect("the follow stream ends when the task does")
        .expect("follow stream")
    {
        followed.extend(batch.chunks.into_iter().flat_map(|c| c.data));
    }
    assert_eq!(log(&c, ids[0]).await.0, b"start\nend\n", "stored log");
    assert_eq!(followed, b"start\nend\n", "followed log");
    no_containers_left(&a).await;
}

/// A drain hands back what does not finish in its grace: re-queued at once, not a lost
/// lease, no retry consumed. Five hand-backs in a row (more than the lost-lease bound)
/// and the task still runs.
#[tokio::test]
async fn a_task_drained_and_handed_back_five_times_still_runs_once_more() {
    const HAND_BACKS: u32 = 5;
    let _d = docker().await;
    let c = cluster(1, "5s", false).await;
    create_tenant(&c).await;
    let script = format!("echo attempt=$TASK_ATTEMPT; if [ \"$TASK_ATTEMPT\" -le {HAND_BACKS} ]; then sleep 60; fi");
    register(&c, sh("long", &script)).await;
    let mut id = None;
    let mut expected_log = String::new();
    for attempt in 1..=HAND_BACKS {
        let opts = AgentOptions { slots: 1, extra_config: "drain_grace = \"1s\"\nstop_grace = \"1s\"".into() };
        let mut a = c.start_agent(&format!("impatient-{attempt}"), opts).expect("start agent");
        // The first agent is up and polling before the task exists (work arrives later);
        // each next one starts with the handed-back task waiting for it.
        let task = match id {
            Some(task) => task,
            None => {
                eventually(Duration::from_secs(30), "the first agent's control socket", || async { agent_status(&a) })
                    .await
                    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail(30)));
                let task = queue(&c, "long", b"", 1).await[0];
                id = Some(task);
                task
            }
        };
        expected_log.push_str(&format!("attempt={attempt}\n"));
        eventually(Duration::from_secs(30), &format!("attempt {attempt}'s first output"), || async {
            (log(&c, task).await.0 == expected_log.as_bytes()).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail(30)));
        a.stop(Duration::from_secs(30)).expect("SIGTERM drains and exits cleanly");
        let t = get(&c, task).await;
        assert_eq!(
            (state(&t), t.attempts, t.lost_leases),
            (pv::TaskState::Queued, attempt, 0),
            "handed back for another agent, not a lost lease: {t:?}"
        );
        assert!(a.log().contains("handed back"), "{}", a.log_tail(30));
        no_containers_left(&a).await;
    }
    let id = id.expect("queued by the first round");
    let b = c.start_agent("next", AgentOptions::default()).expect("start agent");
    let t = wait_finished(&c, id, Duration::from_secs(60), &[&b]).await;
    assert_eq!((state(&t), t.attempts, t.lost_leases), (pv::TaskState::Complete, HAND_BACKS + 1, 0), "{t:?}");
}

#[tokio::test]
async fn containers_run_hardened_and_isolated() {
    let _d = docker().await;
    let c = cluster(1, "5s", false).await;
    create_tenant(&c).await;
    let script = "grep -E '^(NoNewPrivs|CapEff|Seccomp):' /proc/self/status; \
        echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes); \
        echo cpu=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us); \
        echo pids=$(cat /sys/fs/cgroup/pids/pids.max); \
        if [ -e /var/run/docker.sock ] || [ -e /run/docker.sock ]; then echo docker=reachable; else echo docker=absent; fi; \
        echo ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ,); \
        echo net=$(readlink /proc/self/ns/net) pid=$(readlink /proc/self/ns/pid) ipc=$(readlink /proc/self/ns/ipc); \
        echo env=$TASK_ID,$TASK_ATTEMPT,$LEASE_EPOCH,$PAYLOAD_FILE,$CONFIG_FILE; \
        echo rw=$(touch $PAYLOAD_FILE 2>/dev/null && echo writable || echo readonly)";
    let mut code = sh("probe", script);
    code.limits = Some(pv::CodeLimits { memory_bytes: 96 << 20, cpu_millis: 500, pids: 64, timeout_ms: 30_000 });
    register(&c, code).await;
    let id = queue(&c, "probe", b"{}", 1).await[0];
    let a = c.start_agent("hardening", AgentOptions::default()).expect("start agent");
    let t = wait_finished(&c, id, Duration::from_secs(60), &[&a]).await;
    assert_eq!(state(&t), pv::TaskState::Complete, "{t:?}");
    let out = String::from_utf8(log(&c, id).await.0).expect("utf-8");
    let line =
        |k: &str| out.lines().find(|l| l.starts_with(k)).unwrap_or_else(|| panic!("no {k} in:\n{out}")).to_string();
    assert!(line("NoNewPrivs:").ends_with("\t1"), "{out}");
    assert!(line("CapEff:").ends_with("0000000000000000"), "{out}");
    assert!(line("Seccomp:").ends_with("\t2"), "{out}");
    assert_eq!(line("mem="), format!("mem={}", 96 << 20));
    assert_eq!(line("cpu="), "cpu=50000");
    assert_eq!(line("pids="), "pids=64");
    assert_eq!(line("docker="), "docker=absent");
    assert_eq!(line("ifaces="), "ifaces=lo,", "no network but loopback");
    let host = |ns: &str| std::fs::read_link(format!("/proc/self/ns/{ns}")).expect("host ns").display().to_string();
    let ns = line("net=");
    for kind in ["net", "pid", "ipc"] {
        assert!(!ns.contains(&host(kind)), "shares the host's {kind} namespace: {ns}");
    }
    let lease_epoch = t.lease_epoch;
    let env = line("env=");
    assert!(env.starts_with(&format!("env={id},1,")), "{env}");
    assert!(env.ends_with(",/drover/payload,/drover/config.json"), "{env} (epoch {lease_epoch})");
    assert_eq!(line("rw="), "rw=readonly");
    no_containers_left(&a).await;
}

#[tokio::test]
async fn two_agents_run_200_tasks_exactly_once() {
    let _d = docker().await;
    let c = cluster(1, "10s", false).await;
    create_tenant(&c).await;
    register(&c, sh("id", "echo task=$TASK_ID attempt=$TASK_ATTEMPT")).await;
    let ids = queue(&c, "id", b"", 200).await;
    let a = c.start_agent("pair-a", AgentOptions { slots: 4, ..Default::default() }).expect("agent a");
    let b = c.start_agent("pair-b", AgentOptions { slots: 4, ..Default::default() }).expect("agent b");
    let started = Instant::now();
    let mut done = BTreeSet::new();
    let deadline = Duration::from_secs(300);
    while done.len() < ids.len() {
        assert!(
            started.elapsed() < deadline,
            "only {} of 200 finished\n{}\n{}",
            done.len(),
            a.log_tail(20),
            b.log_tail(20)
        );
        let list = tenant(&c)
            .list_tasks(pv::ListTasksRequest { limit: 1000, ..Default::default() })
            .await
            .expect("list")
            .into_inner();
        done = list.tasks.iter().filter(|t| finished(t)).map(|t| t.id).collect();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("200 tasks on two 4-slot agents took {:?}", started.elapsed());
    for id in &ids {
        let t = get(&c, *id).await;
        assert_eq!((state(&t), t.attempts), (pv::TaskState::Complete, 1), "{t:?}");
        assert_eq!(log(&c, *id).await.0, format!("task={id} attempt=1\n").into_bytes(), "task {id}");
    }
    no_containers_left(&a).await;
    no_containers_left(&b).await;
}

#[tokio::test]
async fn killed_agent_task_is_rerun_elsewhere_and_its_orphan_removed_on_restart() {
    let _d = docker().await;
    let c = cluster(3, "2s", false).await;
    create_tenant(&c).await;
    register(&c, sh("slow", "echo attempt=$TASK_ATTEMPT; if [ \"$TASK_ATTEMPT\" = 1 ]; then sleep 60; fi; echo done"))
        .await;
    let id = queue(&c, "slow", b"", 1).await[0];
    let mut a = c.start_agent("doomed", AgentOptions { slots: 1, ..Default::default() }).expect("agent a");
    // Running, and its first output shipped while it runs.
    eventually(Duration::from_secs(30), "the task's first output", || async {
        (log(&c, id).await.0 == b"attempt=1\n").then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail(30)));
    assert_eq!(a.running_containers().expect("docker ps").len(), 1);
    a.kill().expect("kill -9 the agent");
    let b = c.start_agent("rescuer", AgentOptions { slots: 1, ..Default::default() }).expect("agent b");
    let t = wait_finished(&c, id, Duration::from_secs(60), &[&a, &b]).await;
    assert_eq!((state(&t), t.attempts, t.lost_leases), (pv::TaskState::Complete, 2, 1), "{t:?}");
    assert_eq!(log(&c, id).await.0, b"attempt=1\nattempt=2\ndone\n");
    assert!(!a.containers().expect("docker ps").is_empty(), "the dead agent's container is still there");
    a.restart().expect("restart the agent");
    no_containers_left(&a).await;
    no_containers_left(&b).await;
}

#[tokio::test]
async fn a_frozen_agents_container_is_stopped_by_its_watchdog_and_its_late_report_refused() {
    let _d = docker().await;
    let ttl = Duration::from_secs(2);
    let c = cluster(1, "2s", false).await;
    create_tenant(&c).await;
    register(&c, sh("slow", "echo attempt=$TASK_ATTEMPT; if [ \"$TASK_ATTEMPT\" = 1 ]; then sleep 60; fi; echo done"))
        .await;
    let id = queue(&c, "slow", b"", 1).await[0];
    let a = c.start_agent("frozen", AgentOptions { slots: 1, ..Default::default() }).expect("agent a");
    // Running, and its first output shipped while it runs.
    eventually(Duration::from_secs(30), "the task's first output", || async {
        (log(&c, id).await.0 == b"attempt=1\n").then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail(30)));
    assert_eq!(a.running_containers().expect("docker ps").len(), 1);
    a.pause().expect("SIGSTOP the agent");
    let paused = Instant::now();
    eventually(ttl + Duration::from_secs(3), "the watchdog to stop the frozen agent's container", || async {
        a.running_containers().ok().filter(|c| c.is_empty())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail(30)));
    let stopped_after = paused.elapsed();
    let b = c.start_agent("second", AgentOptions { slots: 1, ..Default::default() }).expect("agent b");
    let t = wait_finished(&c, id, Duration::from_secs(60), &[&a, &b]).await;
    a.resume().expect("SIGCONT the agent");
    assert_eq!((state(&t), t.attempts), (pv::TaskState::Complete, 2), "{t:?}");
    // The resumed agent's report is refused (or it sees its lease is gone and drops the
    // task); either way the recorded result stays the second runner's.
    eventually(Duration::from_secs(20), "the resumed agent to give the task up", || async {
        let log = a.log();
        (log.contains("completion rejected") || log.contains("lease not held")).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail(30)));
    let t2 = get(&c, id).await;
    assert_eq!((state(&t2), t2.attempts, t2.result.clone()), (pv::TaskState::Complete, 2, t.result.clone()));
    assert_eq!(log(&c, id).await.0, b"attempt=1\nattempt=2\ndone\n");
    eprintln!("container stopped {stopped_after:?} after the agent froze (TTL {ttl:?})");
    no_containers_left(&a).await;
}

#[tokio::test]
async fn a_restarted_agent_re_adopts_a_container_whose_lease_is_still_valid() {
    let _d = docker().await;
    let c = cluster(1, "10s", false).await;
    create_tenant(&c).await;
    register(&c, sh("steady", "echo before; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo after")).await;
    let id = queue(&c, "steady", b"", 1).await[0];
    let mut a = c.start_agent("phoenix", AgentOptions { slots: 1, ..Default::default() }).expect("agent");
    eventually(Duration::from_secs(30), "the task's first output", || async {
        (log(&c, id).await.0 == b"before\n").then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail(30)));
    let container = a.running_containers().expect("docker ps");
    assert_eq!(container.len(), 1);
    a.kill().expect("kill -9");
    a.restart().expect("restart within the lease TTL");
    eventually(Duration::from_secs(20), "the restarted agent to re-adopt the container", || async {
        a.log().contains("re-adopting running container").then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail(30)));
    // Let the task finish: after the restart, its output still reaches the log.
    let st = std::process::Command::new("docker")
        .args(["exec", &container[0], "touch", "/tmp/go"])
        .status()
        .expect("docker exec");
    assert!(st.success());
    let t = wait_finished(&c, id, Duration::from_secs(30), &[&a]).await;
    assert_eq!((state(&t), t.attempts, t.lost_leases), (pv::TaskState::Complete, 1, 0), "{t:?}");
    assert_eq!(log(&c, id).await.0, b"before\nafter\n");
    no_containers_left(&a).await;
}
