//! `deploy/local-cluster.sh` as an operator runs it: `up` brings three TLS servers and two
//! agents up, the `env` file it writes is all the CLI needs to run a task in a real
//! container, `status` sees every process, and `down` stops them all.
//! Needs a running Docker engine: `.ci/run` installs and starts one.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::agent_tasks::{IMAGE, docker};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local-cluster.sh")
}

fn local(cmd: &str, dir: &Path, ports: &str) -> Output {
    Command::new("bash")
        .arg(script())
        .args([cmd, dir.to_str().expect("UTF-8 path")])
        .env("DROVER_BIN", common::bin())
        .env("DROVER_LOCAL_PORTS", ports)
        .output()
        .expect("run local-cluster.sh")
}

/// The `export K=V` lines of an env file the script wrote.
fn env_file(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).expect("env file");
    text.lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn drover(env: &[(String, String)], args: &[&str]) -> Output {
    let mut c = Command::new(common::bin());
    c.args(args).env_remove("DROVER_CONTEXT");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run drover")
}

/// Stops the fleet whatever happens to the test.
struct Down<'a>(&'a Path, &'a str);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = local("down", self.0, self.1);
    }
}

#[tokio::test]
async fn local_cluster_up_runs_a_task_with_its_env_file_and_down_stops_everything() {
    let _d = docker().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ports: Vec<String> = (0..6).map(|_| drover_chaos::ports::reserve().expect("port").to_string()).collect();
    let ports = ports.join(",");
    let _down = Down(dir.path(), &ports);

    let up = local("up", dir.path(), &ports);
    let logs = || {
        ["server-1", "agent-1"]
            .iter()
            .map(|n| std::fs::read_to_string(dir.path().join(format!("{n}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    assert!(up.status.success(), "up: {up:?}\n{}", logs());

    // The tenant's env file is all the CLI needs.
    let env = env_file(&dir.path().join("env"));
    let reg = drover(&env, &["code", "register", "hello", "--image", IMAGE, "--cmd", "echo hello from $TASK_ID"]);
    assert!(reg.status.success(), "{reg:?}");
    let q = drover(&env, &["task", "queue", "hello", "--payload", "{}"]);
    assert!(q.status.success(), "{q:?}");
    let id = String::from_utf8_lossy(&q.stdout).trim().to_string();
    let w = drover(&env, &["task", "wait", &id, "--timeout", "120s"]);
    assert!(w.status.success(), "task wait: {w:?}\n{}", logs());
    let log = drover(&env, &["task", "logs", &id]);
    assert!(String::from_utf8_lossy(&log.stdout).contains("hello from"), "{log:?}");

    // The operator's env file: both agents are known and connected.
    let ops = env_file(&dir.path().join("env.operator"));
    let agents = drover(&ops, &["agents", "list"]);
    let text = String::from_utf8_lossy(&agents.stdout);
    assert_eq!(text.lines().filter(|l| l.starts_with("local-") && l.contains(" connected ")).count(), 2, "{text}");

    let status = local("status", dir.path(), &ports);
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(text.lines().filter(|l| l.ends_with(')') && l.contains(" running (pid ")).count(), 5, "{text}");

    let pids: Vec<i32> = ["server-1", "server-2", "server-3", "agent-1", "agent-2"]
        .iter()
        .map(|n| std::fs::read_to_string(dir.path().join(format!("{n}.pid"))).expect("pid file"))
        .map(|p| p.trim().parse().expect("pid"))
        .collect();
    let down = local("down", dir.path(), &ports);
    assert!(down.status.success(), "{down:?}");
    for pid in pids {
        // Reaped by `down`'s wait, or at least no longer running.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit(')').next().and_then(|s| s.split_whitespace().next()).unwrap_or("gone");
        assert!(matches!(state, "gone" | "Z" | "X"), "pid {pid} still {state} after down");
    }
}
