//! Private images per tenant, end to end: a real registry requiring a login (Debian's
//! `docker-registry`, htpasswd auth, on loopback), tenants' logins sealed by the servers,
//! a real agent pulling with them. Tenant A's task pulls A's private image with A's login;
//! tenant B, registering a code with the same reference, cannot run it although the image
//! is cached on the agent's host, not without a login and not with a wrong one.
//! Needs a running Docker engine, `docker-registry` and `htpasswd` (apache2-utils):
//! `.ci/run` installs them.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::agent_tasks::*;
use drover_chaos::{AgentOptions, Cluster, ClusterOptions, eventually, ports};
use drover_proto::admin as pa;
use drover_proto::v1 as pv;

const PASSWORD_A: &str = "s3cret-of-tenant-a";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A registry on a loopback port of its own, admitting user `alice` only.
struct Registry {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
    /// Removed from the engine on drop (the agent pulled it).
    image: String,
}

impl Registry {
    async fn start() -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = ports::reserve().expect("port");
        let addr = format!("127.0.0.1:{port}");
        let htpasswd = run(Command::new("htpasswd").args(["-Bbn", "alice", PASSWORD_A]));
        std::fs::write(dir.path().join("htpasswd"), format!("{htpasswd}\n")).expect("htpasswd");
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\n\
             http:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: drover-test\n    path: {pw}\n",
            root = dir.path().join("data").display(),
            pw = dir.path().join("htpasswd").display()
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).expect("config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        eventually(Duration::from_secs(30), "the registry to answer", || async {
            drover_chaos::clients::plain_http_get(&addr, "/v2/").await.ok()
        })
        .await
        .expect("registry up");
        let image = format!("{addr}/private/app:1");
        Registry { child, addr, dir, image }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", &self.image]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
                found.push(p.display().to_string());
            }
        }
    }
    found
}

async fn run_task(c: &Cluster, tenant: &str, agent: &drover_chaos::AgentProc) -> (pv::Task, String) {
    let mut t = c.tenant(c.ids()[0], tenant).expect("tenant");
    let task = pv::NewTask { code: "private".into(), ..Default::default() };
    let r = t.queue_tasks(pv::QueueTasksRequest { tasks: vec![task], idempotency_key: String::new() }).await;
    let id = r.expect("queue").into_inner().task_ids[0];
    let done = wait_finished_of(c, tenant, id, Duration::from_secs(120), &[agent]).await;
    let (out, _, _) = log_of(c, tenant, id).await;
    (done, String::from_utf8_lossy(&out).to_string())
}

#[tokio::test]
async fn a_private_image_runs_only_for_the_tenant_whose_login_pulls_it() {
    let _d = docker().await;
    let registry = Registry::start().await;
    // The private image: the test image pushed under the registry's name with alice's
    // login (a Docker CLI config of the test's own), then untagged locally, so the agent's
    // first use really pulls it.
    let image = registry.image.clone();
    let docker_config = registry.dir.path().join("docker-cli");
    let docker = |args: &[&str]| {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_CONFIG", &docker_config).args(args);
        cmd
    };
    run(&mut docker(&["tag", IMAGE, &image]));
    let mut login = docker(&["login", &registry.addr, "-u", "alice", "--password-stdin"]);
    login.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = login.spawn().expect("docker login");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(PASSWORD_A.as_bytes()).expect("password");
    }
    assert!(child.wait().expect("docker login").success(), "docker login to the test registry failed");
    run(&mut docker(&["push", &image]));
    run(&mut docker(&["rmi", &image]));

    let key_dir = tempfile::tempdir().expect("tempdir");
    let key_file = key_dir.path().join("registry.key");
    std::fs::write(&key_file, "ab".repeat(32)).expect("key");
    let opts = ClusterOptions {
        nodes: 1,
        tls: true,
        extra_config: format!("registry_key_file = {:?}\n", key_file.display().to_string()),
        ..Default::default()
    };
    let c = common::cluster(opts).await;
    let node = c.ids()[0];
    let mut admin = c.admin(node).expect("admin");
    let code = pv::RegisterCodeRequest {
        name: "private".into(),
        image: image.clone(),
        command: vec!["sh".into(), "-c".into(), "echo private-ok".into()],
        ..Default::default()
    };
    for t in ["tenant-a", "tenant-b"] {
        admin.upsert_tenant(pa::UpsertTenantRequest { id: t.into(), ..Default::default() }).await.expect("tenant");
        c.tenant(node, t).expect("client").register_code(code.clone()).await.expect("code");
    }
    let mut a = c.tenant(node, "tenant-a").expect("a");
    let login = pv::RegistryLoginRequest {
        registry: registry.addr.clone(),
        username: "alice".into(),
        password: PASSWORD_A.into(),
    };
    a.registry_login(login).await.expect("tenant A's login");
    let logins = a.list_registry_logins(pv::ListRegistryLoginsRequest {}).await.expect("list").into_inner();
    assert_eq!(logins.logins.len(), 1);
    assert_eq!(
        (logins.logins[0].registry.as_str(), logins.logins[0].username.as_str()),
        (registry.addr.as_str(), "alice")
    );

    let agent = c.start_agent("private", AgentOptions::default()).expect("agent");
    // Tenant B first, with no login: the registry refuses it; nothing is cached yet.
    let (t, _) = run_task(&c, "tenant-b", &agent).await;
    assert_eq!(state(&t), pv::TaskState::Error, "{t:?}");
    // A: pulled with A's login, runs.
    let (t, out) = run_task(&c, "tenant-a", &agent).await;
    assert_eq!(state(&t), pv::TaskState::Complete, "{t:?}\n{}", agent.log_tail(30));
    assert_eq!(out.trim(), "private-ok");
    // B again: the image is on the host now, but not B's to use; no login, then a wrong one.
    let (t, out) = run_task(&c, "tenant-b", &agent).await;
    assert_eq!(state(&t), pv::TaskState::Error, "cached for A, it ran for B: {t:?} {out}");
    let error = t.attempt_log.last().map(|x| x.error.clone()).unwrap_or_default();
    assert!(error.contains("cached for another tenant"), "{error}");
    let mut b = c.tenant(node, "tenant-b").expect("b");
    let wrong = pv::RegistryLoginRequest {
        registry: registry.addr.clone(),
        username: "alice".into(),
        password: "guess".into(),
    };
    b.registry_login(wrong).await.expect("tenant B's (wrong) login");
    let (t, _) = run_task(&c, "tenant-b", &agent).await;
    assert_eq!(state(&t), pv::TaskState::Error, "{t:?}");
    // And A still runs it from the cache.
    let (t, _) = run_task(&c, "tenant-a", &agent).await;
    assert_eq!(state(&t), pv::TaskState::Complete, "{t:?}");

    // Sealed at rest and never logged: the password is in no file of the cluster's (data
    // directories, Raft log, snapshots, server and agent logs).
    let leaks = files_containing(c.dir(), PASSWORD_A.as_bytes());
    assert!(leaks.is_empty(), "the password is in the clear in {leaks:?}");
    // Bad input: a registry that is not one, and an empty password.
    let e = a
        .registry_login(pv::RegistryLoginRequest {
            registry: "not a host".into(),
            username: "u".into(),
            password: "p".into(),
        })
        .await
        .expect_err("bad registry");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
}
