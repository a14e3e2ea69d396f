//! The `drover` binary driven as a user drives it: `drover dev --demo` in the background
//! (control plane, certificates, an in-process agent, the demo), then the client commands
//! with the environment it prints, asserting on output and exit codes; and the errors a
//! user meets, each one actionable line on stderr with a non-zero exit.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Dev {
    child: Child,
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    drover_chaos::ports::reserve().expect("port")
}

fn read_env(path: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| *k != "PATH")
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Starts `drover dev --demo` in a temp dir and waits until the demo has run.
fn start_dev() -> Dev {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::fs::File::create(dir.path().join("dev.out")).expect("out file");
    let err = std::fs::File::create(dir.path().join("dev.err")).expect("err file");
    let child = Command::new(common::bin())
        .args(["dev", "--demo", "--port", &free_port().to_string(), "--http-port", &free_port().to_string()])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start drover dev");
    let mut dev = Dev { child, dir, env: HashMap::new() };
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let out = std::fs::read_to_string(dev.dir.path().join("dev.out")).unwrap_or_default();
        if out.contains("demo done") {
            assert_eq!(out.matches("payload: {\"n\": ").count(), 5, "the demo shows five tasks' output:\n{out}");
            assert_eq!(out.matches(" complete ").count(), 5, "{out}");
            break;
        }
        if Instant::now() > until || dev.child.try_wait().ok().flatten().is_some() {
            let err = std::fs::read_to_string(dev.dir.path().join("dev.err")).unwrap_or_default();
            panic!("drover dev --demo did not finish its demo:\n{out}\n{err}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    dev.env = read_env(&dev.dir.path().join(".drover/env"));
    assert!(dev.env.contains_key("DROVER_ADDR") && dev.env.contains_key("DROVER_CERT"), "{:?}", dev.env);
    dev
}

fn drover(dev: &Dev, args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(common::bin());
    cmd.args(args).current_dir(dev.dir.path()).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in &dev.env {
        cmd.env(k, v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run drover");
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(input).expect("write stdin");
    }
    finish(child, args)
}

/// No client command a user types may wait without end: each must exit within this.
const COMMAND_DEADLINE: Duration = Duration::from_secs(90);

/// Waits for a command's output; past [`COMMAND_DEADLINE`] it kills the command and
/// fails naming it, with what it printed so far.
fn finish(child: Child, args: &[&str]) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(COMMAND_DEADLINE) {
        Ok(out) => out.expect("drover output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            let partial = rx.recv_timeout(Duration::from_secs(10)).ok().and_then(Result::ok);
            let (out, err) = partial
                .map(|o| {
                    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
                })
                .unwrap_or_default();
            panic!(
                "`drover {}` did not exit within {COMMAND_DEADLINE:?}; killed it.\nstdout:\n{out}\nstderr:\n{err}",
                args.join(" ")
            );
        }
    }
}

/// Runs a command whose stdout reader has gone before it writes (`drover ... | head -0`).
fn drover_closed_stdout(dev: &Dev, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(common::bin());
    cmd.args(args).current_dir(dev.dir.path()).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in dev.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(env.iter().copied()) {
        cmd.env(k, v);
    }
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run drover");
    // The command connects to the control plane first: its output comes long after this.
    drop(child.stdout.take());
    finish(child, args)
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "exit {:?}\nstdout: {}\nstderr: {}", o.status, text(&o.stdout), text(&o.stderr));
    text(&o.stdout)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A failed command: non-zero exit, exactly one line on stderr starting `error:`, no panic.
fn one_line_error(o: &Output) -> String {
    let err = text(&o.stderr);
    assert!(!o.status.success(), "expected failure, got success: {}", text(&o.stdout));
    assert_eq!(err.trim_end().lines().count(), 1, "one line on stderr, got:\n{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{err}");
    err
}

#[test]
fn a_user_session_against_drover_dev() {
    let dev = start_dev();
    // Register a code and run a task with a payload; wait returns the task's exit code.
    ok(&drover(
        &dev,
        &[
            "code",
            "register",
            "greet",
            "--image",
            "drover-demo/busybox:1",
            "--memory",
            "64MiB",
            "--cpus",
            "0.5",
            "--timeout",
            "1m",
            "--cmd",
            "echo got $(cat $PAYLOAD_FILE); exit 7",
        ],
        &[],
        None,
    ));
    let listed = ok(&drover(&dev, &["code", "list"], &[], None));
    assert!(listed.contains("greet") && listed.contains("64.0 MiB"), "{listed}");
    let id = ok(&drover(&dev, &["task", "queue", "greet", "--payload", "{\"name\": \"ada\"}"], &[], None))
        .trim()
        .to_string();
    let wait = drover(&dev, &["task", "wait", &id, "--timeout", "60s"], &[], None);
    assert_eq!(wait.status.code(), Some(7), "task wait exits with the task's exit code: {}", text(&wait.stderr));
    assert!(wait.stderr.is_empty(), "no progress output when not on a terminal: {}", text(&wait.stderr));
    assert_eq!(ok(&drover(&dev, &["task", "logs", &id], &[], None)), "got {\"name\": \"ada\"}\n");

    // A payload from standard input, a clean exit.
    ok(&drover(
        &dev,
        &["code", "register", "cat", "--image", "drover-demo/busybox:1", "--", "cat", "/drover/payload"],
        &[],
        None,
    ));
    let id2 =
        ok(&drover(&dev, &["task", "queue", "cat", "--payload-file", "-"], &[], Some(b"[1, 2, 3]"))).trim().to_string();
    let wait = drover(&dev, &["task", "wait", &id2, "--timeout", "60s"], &[], None);
    assert_eq!(wait.status.code(), Some(0));
    assert_eq!(ok(&drover(&dev, &["task", "logs", &id2], &[], None)), "[1, 2, 3]");

    // JSON listing for scripts.
    let json: serde_json::Value =
        serde_json::from_str(&ok(&drover(&dev, &["task", "list", "--code", "greet", "--output", "json"], &[], None)))
            .expect("JSON");
    let tasks = json.as_array().expect("array");
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["id"].to_string(), id);
    assert_eq!((tasks[0]["state"].as_str(), tasks[0]["result"]["exit_code"].as_i64()), (Some("error"), Some(7)));

    // A schedule: twice, a second apart, the same payload; both runs complete.
    let created = ok(&drover(
        &dev,
        &["schedule", "create", "cat", "--every", "1s", "--run-times", "2", "--payload", "{\"s\": 1}"],
        &[],
        None,
    ));
    let sid = created.split_whitespace().nth(1).expect("schedule <id> created").to_string();
    assert!(created.starts_with(&format!("schedule {sid} created; first run ")), "{created}");
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let s: serde_json::Value =
            serde_json::from_str(&ok(&drover(&dev, &["schedule", "get", &sid, "-o", "json"], &[], None)))
                .expect("JSON");
        if s["fired"] == 2 && s["last_task_state"] == "complete" {
            assert_eq!(s["next_ticks_ms"].as_array().map(Vec::len), Some(0), "run_times 2 ends the schedule: {s}");
            break;
        }
        assert!(Instant::now() < until, "the schedule did not run twice: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let shown = ok(&drover(&dev, &["schedule", "get", &sid], &[], None));
    assert!(shown.contains("ended: no more ticks") && shown.contains("2 fired, 0 missed"), "{shown}");
    let listed = ok(&drover(&dev, &["schedule", "list"], &[], None));
    assert!(listed.contains("every 1s") && listed.contains("ended"), "{listed}");
    ok(&drover(&dev, &["schedule", "delete", &sid], &[], None));

    // Cancel a long task while it runs; wait then exits 125.
    ok(&drover(
        &dev,
        &["code", "register", "long", "--image", "drover-demo/busybox:1", "--cmd", "echo started; sleep 60"],
        &[],
        None,
    ));
    let id3 = ok(&drover(&dev, &["task", "queue", "long"], &[], None)).trim().to_string();
    let until = Instant::now() + Duration::from_secs(60);
    while !ok(&drover(&dev, &["task", "logs", &id3], &[], None)).contains("started") {
        assert!(Instant::now() < until, "the long task never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(ok(&drover(&dev, &["task", "cancel", &id3], &[], None)).contains("cancelled"));
    let wait = drover(&dev, &["task", "wait", &id3, "--timeout", "30s"], &[], None);
    assert_eq!(wait.status.code(), Some(125));
    let status = ok(&drover(&dev, &["agent", "status", "--output", "json"], &[], None));
    let until = Instant::now() + Duration::from_secs(30);
    let mut status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    while status["busy"] != 0 {
        assert!(Instant::now() < until, "the cancelled task's container is still running: {status}");
        std::thread::sleep(Duration::from_millis(200));
        status = serde_json::from_str(&ok(&drover(&dev, &["agent", "status", "--output", "json"], &[], None)))
            .expect("status JSON");
    }

    // The operator's view of the fleet.
    let ops =
        [("DROVER_CERT", e_ops(&dev, "DROVER_CERT").as_str()), ("DROVER_KEY", e_ops(&dev, "DROVER_KEY").as_str())]
            .map(|(k, v)| (k, v.to_string()));
    let ops: Vec<(&str, &str)> = ops.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let agents = ok(&drover(&dev, &["agents", "list"], &ops, None));
    assert!(agents.lines().any(|l| l.starts_with("dev-agent ") && l.contains(" 4 ")), "{agents}");
    // Tables for people, JSON for scripts, on every listing and status.
    let tenants: serde_json::Value =
        serde_json::from_str(&ok(&drover(&dev, &["tenant", "list", "-o", "json"], &ops, None))).expect("JSON");
    assert!(tenants.as_array().is_some_and(|a| a.iter().any(|t| t["id"] == "dev")), "{tenants}");
    let raft: serde_json::Value =
        serde_json::from_str(&ok(&drover(&dev, &["operator", "raft", "status", "-o", "json"], &ops, None)))
            .expect("JSON");
    assert_eq!((raft["state"].as_str(), raft["nodes"].as_array().map(Vec::len)), (Some("Leader"), Some(1)), "{raft}");
    // `| head`: a reader that goes away ends the command quietly, with no panic.
    let tenant: &[(&str, &str)] = &[];
    for (args, env) in [
        (&["operator", "raft", "status"][..], &ops[..]),
        (&["tenant", "list"], &ops),
        (&["agents", "list"], &ops),
        (&["task", "list"], tenant),
    ] {
        let o = drover_closed_stdout(&dev, args, env);
        assert!(o.status.success(), "{args:?}: exit {:?}, stderr {}", o.status, text(&o.stderr));
        assert!(o.stderr.is_empty(), "{args:?}: {}", text(&o.stderr));
    }

    // Named contexts in ~/.config/drover/config.toml; flags and DROVER_* win over them.
    let home = dev.dir.path().join("home");
    std::fs::create_dir_all(home.join(".config/drover")).expect("mkdir");
    let e = |k: &str| dev.env[k].clone();
    let cfg = format!(
        "current = \"local\"\n[contexts.local]\naddr = [{:?}]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        e("DROVER_ADDR"),
        e("DROVER_CA"),
        e("DROVER_CERT"),
        e("DROVER_KEY")
    );
    std::fs::write(home.join(".config/drover/config.toml"), cfg).expect("write config");
    let ctx_only = |args: &[&str], extra: &[(&str, &str)]| {
        let mut cmd = Command::new(common::bin());
        cmd.args(args).env_clear().env("HOME", &home).env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run drover");
        finish(child, args)
    };
    assert!(ok(&ctx_only(&["task", "get", &id], &[])).contains("greet"), "the context alone connects");
    let dead = format!("127.0.0.1:{}", free_port());
    one_line_error(&ctx_only(&["task", "get", &id], &[("DROVER_ADDR", &dead)]));
    one_line_error(&ctx_only(&["task", "get", &id, "--addr", &dead], &[]));
    one_line_error(&ctx_only(&["task", "get", &id, "--context", "nosuch"], &[]));

    // Errors a user meets: one actionable line, non-zero exit.
    std::fs::write(dev.dir.path().join("bad.json"), "{\"unterminated\": ").expect("write");
    let e = one_line_error(&drover(&dev, &["task", "queue", "greet", "--payload-file", "bad.json"], &[], None));
    assert!(e.contains("bad.json") && e.contains("not valid JSON"), "{e}");
    let e = one_line_error(&drover(&dev, &["task", "queue", "nosuch", "--payload", "{}"], &[], None));
    assert!(e.contains("code \"nosuch\" not found"), "{e}");
    let dead = format!("127.0.0.1:{}", free_port());
    let e =
        one_line_error(&drover(&dev, &["task", "queue", "greet", "--payload", "{}"], &[("DROVER_ADDR", &dead)], None));
    assert!(e.contains("cannot reach the control plane") && e.contains(&dead), "{e}");
    // Credentials from another CA.
    let other = dev.dir.path().join("other");
    let certs = |args: &[&str]| ok(&drover(&dev, &[&["certs"], args].concat(), &[], None));
    certs(&["init", "--dir", other.to_str().expect("utf-8")]);
    certs(&["issue", "--dir", other.to_str().expect("utf-8"), "--role", "tenant", "--id", "dev"]);
    let p = |f: &str| other.join(f).display().to_string();
    let (ca, cert, key) = (p("ca.pem"), p("tenant-dev.pem"), p("tenant-dev.key"));
    let e = one_line_error(&drover(
        &dev,
        &["task", "list"],
        &[("DROVER_CA", &ca), ("DROVER_CERT", &cert), ("DROVER_KEY", &key)],
        None,
    ));
    assert!(e.contains("DROVER_CA"), "names what to check: {e}");
    let e = one_line_error(&drover(&dev, &["task", "list"], &[("DROVER_CERT", &cert), ("DROVER_KEY", &key)], None));
    assert!(e.contains("certificate") || e.contains("CA"), "{e}");
}

/// The operator certificate paths `drover dev` prints as a comment in its env file.
fn e_ops(dev: &Dev, key: &str) -> String {
    let env = std::fs::read_to_string(dev.dir.path().join(".drover/env")).expect("env file");
    let line = env.lines().find(|l| l.starts_with("#   DROVER_CERT=")).expect("operator line");
    let part = line.trim_start_matches("#   ").split(' ').find(|p| p.starts_with(&format!("{key}="))).expect("key");
    part.split_once('=').map(|(_, v)| v.to_string()).expect("value")
}
