//! Tasks run by real `drover agent` processes in real Docker containers: the test image,
//! code registration, queueing, and waiting for a task's end and its log.

use std::time::Duration;

use drover_chaos::{AgentProc, Cluster, clients, eventually};
use drover_proto::admin as pa;
use drover_proto::v1 as pv;

/// Built here from the static busybox; nothing is pulled.
pub const IMAGE: &str = "drover-test/busybox:1";

/// Connects to the engine and imports the test image; fails (never skips) without Docker.
pub async fn docker() -> bollard::Docker {
    let how = "this test needs a running Docker engine: run `bash .ci/run` (installs docker.io and busybox-static \
               and starts dockerd), or as root `apt-get install -y docker.io busybox-static && dockerd &`";
    let d = bollard::Docker::connect_with_local_defaults().unwrap_or_else(|e| panic!("{how}: {e}"));
    let d = d.negotiate_version().await.unwrap_or_else(|e| panic!("{how}: {e}"));
    drover_runner_agent::executor::import::ensure_busybox_image(&d, IMAGE)
        .await
        .unwrap_or_else(|e| panic!("importing {IMAGE} from /bin/busybox: {e}"));
    d
}

/// A client of tenant `acme` through the cluster's first node.
pub fn tenant(c: &Cluster) -> clients::Tenant {
    c.tenant(c.ids()[0], "acme").expect("tenant client")
}

pub async fn create_tenant(c: &Cluster) {
    let mut admin = c.admin(c.ids()[0]).expect("admin client");
    admin.upsert_tenant(pa::UpsertTenantRequest { id: "acme".into(), ..Default::default() }).await.expect("tenant");
}

/// Code `name` that runs `script` with `sh -c` in the test image.
pub fn sh(name: &str, script: &str) -> pv::RegisterCodeRequest {
    pv::RegisterCodeRequest {
        name: name.into(),
        image: IMAGE.into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

pub async fn register(c: &Cluster, code: pv::RegisterCodeRequest) {
    tenant(c).register_code(code).await.expect("register code");
}

pub async fn queue(c: &Cluster, code: &str, payload: &[u8], n: usize) -> Vec<u64> {
    let tasks = (0..n).map(|_| pv::NewTask { code: code.into(), payload: payload.to_vec(), ..Default::default() });
    let r = tenant(c)
        .queue_tasks(pv::QueueTasksRequest { tasks: tasks.collect(), idempotency_key: String::new() })
        .await
        .expect("queue");
    r.into_inner().task_ids
}

pub async fn get(c: &Cluster, id: u64) -> pv::Task {
    tenant(c).get_task(pv::GetTaskRequest { id, include_payload: false }).await.expect("get task").into_inner()
}

/// The task, or None while the cluster cannot answer (an election under way).
pub async fn try_get(c: &Cluster, id: u64) -> Option<pv::Task> {
    try_get_of(c, "acme", id).await
}

/// [`try_get`] for any tenant's task.
pub async fn try_get_of(c: &Cluster, tenant: &str, id: u64) -> Option<pv::Task> {
    let mut t = c.tenant(c.ids()[0], tenant).ok()?;
    t.get_task(pv::GetTaskRequest { id, include_payload: false }).await.ok().map(|r| r.into_inner())
}

pub fn state(t: &pv::Task) -> pv::TaskState {
    pv::TaskState::try_from(t.state).expect("known state")
}

pub fn finished(t: &pv::Task) -> bool {
    !matches!(
        pv::TaskState::try_from(t.state),
        Ok(pv::TaskState::Queued | pv::TaskState::Delayed | pv::TaskState::Running)
    )
}

/// Waits for task `id` to end; on timeout, fails with the agents' log tails.
pub async fn wait_finished(c: &Cluster, id: u64, within: Duration, agents: &[&AgentProc]) -> pv::Task {
    wait_finished_of(c, "acme", id, within, agents).await
}

/// [`wait_finished`] for any tenant's task.
pub async fn wait_finished_of(c: &Cluster, tenant: &str, id: u64, within: Duration, agents: &[&AgentProc]) -> pv::Task {
    let r = eventually(within, &format!("task {id} to finish"), || async {
        let t = try_get_of(c, tenant, id).await?;
        finished(&t).then_some(t)
    })
    .await;
    match r {
        Ok(t) => t,
        Err(e) => {
            let logs: Vec<String> = agents.iter().map(|a| format!("--- {} ---\n{}", a.id, a.log_tail(30))).collect();
            panic!("{e}\n{}", logs.join("\n"))
        }
    }
}

/// A task's whole log: (stdout, stderr, system) bytes.
pub async fn log(c: &Cluster, id: u64) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    log_of(c, "acme", id).await
}

/// [`log`] for any tenant's task.
pub async fn log_of(c: &Cluster, tenant: &str, id: u64) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut s = c
        .tenant(c.ids()[0], tenant)
        .expect("tenant client")
        .get_task_log(pv::GetTaskLogRequest { id, from_index: 0, follow: false })
        .await
        .expect("get log")
        .into_inner();
    let (mut out, mut err, mut sys) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(batch) = s.message().await.expect("log stream") {
        for ch in batch.chunks {
            match pv::LogStream::try_from(ch.stream) {
                Ok(pv::LogStream::Stdout) => out.extend(ch.data),
                Ok(pv::LogStream::Stderr) => err.extend(ch.data),
                _ => sys.extend(ch.data),
            }
        }
    }
    (out, err, sys)
}

/// A task's stdout so far; None while the read fails (a cluster just started may not
/// have confirmed its quorum yet).
pub async fn try_stdout(c: &Cluster, id: u64) -> Option<Vec<u8>> {
    let mut s =
        tenant(c).get_task_log(pv::GetTaskLogRequest { id, from_index: 0, follow: false }).await.ok()?.into_inner();
    let mut out = Vec::new();
    while let Some(batch) = s.message().await.ok()? {
        for ch in batch.chunks {
            if ch.stream == pv::LogStream::Stdout as i32 {
                out.extend(ch.data);
            }
        }
    }
    Some(out)
}

pub async fn no_containers_left(a: &AgentProc) {
    eventually(Duration::from_secs(10), "the agent's containers to be removed", || async {
        a.containers().ok().filter(|c| c.is_empty())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", a.containers(), a.log_tail(30)));
}

/// `drover agent status` through the control socket, as an operator on the host runs it.
/// None while the agent's socket is not up yet.
pub fn agent_status(a: &AgentProc) -> Option<serde_json::Value> {
    let out = std::process::Command::new(super::bin())
        .args(["agent", "status", "--output", "json", "--socket"])
        .arg(&a.socket)
        .output()
        .expect("run drover agent status");
    if !out.status.success() {
        assert!(String::from_utf8_lossy(&out.stderr).contains("is an agent running"), "{out:?}");
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("status JSON"))
}

/// The agent's log without terminal colour codes (the agent writes them even to a file),
/// so that a span's fields read `epoch=7` and can be searched for.
pub fn plain_log(a: &AgentProc) -> String {
    let text = a.log();
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            // CSI: ESC '[' parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// The last `lines` lines of [`plain_log`].
pub fn plain_tail(a: &AgentProc, lines: usize) -> String {
    let text = plain_log(a);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What the agent's lease watchdog process logged (the containers it killed).
pub fn watchdog_log(a: &AgentProc) -> String {
    std::fs::read_to_string(a.data_dir.join("watchdog").join(".log")).unwrap_or_default()
}
