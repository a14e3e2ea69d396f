//! IP-whitelist and VPC tenants, end to end on real networking: real agents, real
//! containers, a "tenant firewall" in a network namespace of the test's own, and a
//! tenant's own Docker network. In the order an operator works: tenants, pool, modes,
//! registrations, then agents start idle, then tenants queue.
//! Needs a running Docker engine and root (network namespaces, iptables): `.ci/run`.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::agent_tasks::*;
use drover_chaos::{AgentOptions, AgentProc, Cluster, ClusterOptions, eventually};
use drover_proto::admin as pa;
use drover_proto::v1 as pv;

fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Best effort, for cleanup.
fn try_run(cmd: &[&str]) {
    let _ = Command::new(cmd[0]).args(&cmd[1..]).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// A tenant's firewall: a network namespace joined to the host by a veth pair on
/// 198.18.N.0/24 (host .1, firewall .2), with the pool's egress address (.10) also on the
/// host side. It serves HTTP on .2:8080, answering with the source address it saw, and
/// refuses (TCP reset) every connection not from .10. Removed on drop, with the egress
/// network and host rule the agent made.
struct Firewall {
    ns: String,
    net: String,
    egress: String,
    httpd: Child,
    _dir: tempfile::TempDir,
}

impl Firewall {
    fn up() -> Firewall {
        let pid = std::process::id();
        let n = 20 + pid % 200;
        let ns = format!("drv-fw-{pid}");
        let (host_if, ns_if) = (format!("dfwh{}", pid % 100_000), format!("dfwn{}", pid % 100_000));
        let net = format!("198.18.{n}");
        let egress = format!("{net}.10");
        run(&["ip", "netns", "add", &ns]);
        run(&["ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]);
        run(&["ip", "link", "set", &ns_if, "netns", &ns]);
        run(&["ip", "addr", "add", &format!("{net}.1/24"), "dev", &host_if]);
        run(&["ip", "addr", "add", &format!("{egress}/24"), "dev", &host_if]);
        run(&["ip", "link", "set", &host_if, "up"]);
        let in_ns = |cmd: &[&str]| run(&[&["ip", "netns", "exec", &ns][..], cmd].concat());
        in_ns(&["ip", "addr", "add", &format!("{net}.2/24"), "dev", &ns_if]);
        in_ns(&["ip", "link", "set", &ns_if, "up"]);
        in_ns(&["ip", "link", "set", "lo", "up"]);
        let port = "8080";
        in_ns(&[
            "iptables",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            port,
            "!",
            "-s",
            &egress,
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ]);
        let dir = tempfile::tempdir().expect("tempdir");
        let cgi = dir.path().join("cgi-bin");
        std::fs::create_dir_all(&cgi).expect("cgi-bin");
        let script = "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"firewall saw $REMOTE_ADDR\"\n";
        std::fs::write(cgi.join("ip"), script).expect("cgi script");
        run(&["chmod", "755", &cgi.join("ip").display().to_string()]);
        let httpd = Command::new("ip")
            .args(["netns", "exec", &ns, "busybox", "httpd", "-f", "-p", &format!("{net}.2:{port}")])
            .arg("-h")
            .arg(dir.path())
            .spawn()
            .expect("busybox httpd in the firewall namespace");
        Firewall { ns, net, egress, httpd, _dir: dir }
    }

    fn url(&self) -> String {
        format!("http://{}.2:8080/cgi-bin/ip", self.net)
    }

    /// Connections the firewall refused.
    fn refused(&self) -> u64 {
        let rules = run(&["ip", "netns", "exec", &self.ns, "iptables", "-L", "INPUT", "-v", "-x", "-n"]);
        rules
            .lines()
            .find(|l| l.contains("REJECT"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = self.httpd.kill();
        let _ = self.httpd.wait();
        // Deleting the namespace deletes the veth pair, and the host's addresses with it.
        try_run(&["ip", "netns", "del", &self.ns]);
        let ip: std::net::Ipv4Addr = self.egress.parse().expect("egress address");
        let (net, bridge) = drover_runner_agent::executor::network::egress_names(ip);
        try_run(&["iptables", "-w", "-D", "INPUT", "-i", &bridge, "-j", "DROP"]);
        try_run(&["docker", "network", "rm", &net]);
    }
}

fn attrs(extra: &str) -> AgentOptions {
    AgentOptions { slots: 4, extra_config: extra.to_string() }
}

async fn queue_for(c: &Cluster, tenant: &str, code: &str, n: usize) -> Vec<u64> {
    let mut t = c.tenant(c.ids()[0], tenant).expect("tenant client");
    let task = pv::NewTask { code: code.into(), ..Default::default() };
    let r = t.queue_tasks(pv::QueueTasksRequest { tasks: vec![task; n], idempotency_key: String::new() }).await;
    r.expect("queue").into_inner().task_ids
}

/// Waits for each task to finish and returns (agent it ran on, stdout) per task.
async fn outcomes(c: &Cluster, tenant: &str, ids: &[u64], agents: &[&AgentProc]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for id in ids {
        let t = wait_finished_of(c, tenant, *id, Duration::from_secs(120), agents).await;
        assert_eq!(t.attempt_log.len(), 1, "task {id} ran once: {t:?}");
        let (stdout, _, _) = log_of(c, tenant, *id).await;
        out.push((t.attempt_log[0].agent_id.clone(), String::from_utf8_lossy(&stdout).to_string()));
    }
    out
}

async fn set_mode(c: &Cluster, tenant: &str, mode: pa::TenantMode) {
    let mut admin = c.admin(c.ids()[0]).expect("admin");
    admin.set_tenant_mode(pa::SetTenantModeRequest { tenant: tenant.into(), mode: Some(mode) }).await.expect("mode");
}

async fn register_as(c: &Cluster, r: pa::AgentRegistration) {
    let mut admin = c.admin(c.ids()[0]).expect("admin");
    admin.register_agent(pa::RegisterAgentRequest { registration: Some(r) }).await.expect("register agent");
}

// Multi-threaded: the host listener's accept loop runs while the test waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitelist_tasks_leave_from_the_pool_address_and_others_are_refused_by_the_tenants_firewall() {
    let _d = docker().await;
    let fw = Firewall::up();
    // A listener on every host address: a pool task must not reach the host's ports.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.expect("bind");
    let host_port = listener.local_addr().expect("addr").port();
    let reached = Arc::new(AtomicU64::new(0));
    let counter = reached.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });

    let c = common::cluster(ClusterOptions { nodes: 1, tls: true, ..Default::default() }).await;
    let node = c.ids()[0];
    let mut admin = c.admin(node).expect("admin");
    let probe = format!(
        "timeout 10 wget -q -O - {url} || echo 'wget failed'; \
         gw=$(ip route | awk '/default/ {{print $3}}'); \
         if nc -w 2 $gw {host_port} </dev/null >/dev/null 2>&1; then echo \"OPEN host $gw:{host_port}\"; else echo \"closed host\"; fi",
        url = fw.url()
    );
    for t in ["wl", "plainco"] {
        admin.upsert_tenant(pa::UpsertTenantRequest { id: t.into(), ..Default::default() }).await.expect("tenant");
        c.tenant(node, t).expect("client").register_code(sh("probe", &probe)).await.expect("code");
    }
    let spare = format!("{}.11", fw.net);
    let pool = pa::CreatePoolRequest { name: "fw-pool".into(), addresses: vec![fw.egress.clone(), spare.clone()] };
    admin.create_pool(pool).await.expect("create pool");
    let whitelist =
        pa::TenantMode { kind: pa::TenantModeKind::IpWhitelist.into(), pool: "fw-pool".into(), ..Default::default() };
    set_mode(&c, "wl", whitelist).await;

    // The pool agent is registered with the pool and its address; an agent claiming the
    // pool without a registration is refused. The shared agent runs its tasks on Docker's
    // default bridge, masqueraded behind the host's primary address.
    let pid = std::process::id();
    let (pool_id, shared_id) = (format!("pool-a-{pid}"), format!("shared-a-{pid}"));
    let reg = pa::AgentRegistration {
        id: pool_id.clone(),
        ip_pool: "fw-pool".into(),
        egress_ip: fw.egress.clone(),
        ..Default::default()
    };
    register_as(&c, reg).await;
    let pool_cfg = format!("[attributes]\nip_pool = \"fw-pool\"\negress_ip = {:?}\n", fw.egress);
    let pool_agent = c.start_agent_as(&pool_id, attrs(&pool_cfg)).expect("pool agent");
    let shared_agent = c.start_agent_as(&shared_id, attrs("network_mode = \"bridge\"\n")).expect("shared agent");
    let agents = [&pool_agent, &shared_agent];

    // The tenant sees its pool's addresses, the spare one idle until an agent uses it.
    let wl = c.tenant(node, "wl").expect("wl");
    let ips = eventually(Duration::from_secs(30), "the pool agent to be live", || {
        let mut wl = wl.clone();
        async move {
            let r = wl.list_pool_ips(pv::ListPoolIpsRequest {}).await.ok()?.into_inner();
            r.addresses.iter().any(|a| a.live).then_some(r)
        }
    })
    .await
    .expect("pool ips");
    let live: Vec<(&str, bool)> = ips.addresses.iter().map(|a| (a.address.as_str(), a.live)).collect();
    assert_eq!(live, [(fw.egress.as_str(), true), (spare.as_str(), false)]);
    let e = c.tenant(node, "plainco").expect("plainco").list_pool_ips(pv::ListPoolIpsRequest {}).await;
    assert_eq!(e.expect_err("a shared tenant has no pool").code(), tonic::Code::FailedPrecondition);

    // Tasks of both tenants, queued while both agents idle.
    let wl_ids = queue_for(&c, "wl", "probe", 6).await;
    let plain_ids = queue_for(&c, "plainco", "probe", 6).await;
    let wl_out = outcomes(&c, "wl", &wl_ids, &agents).await;
    let plain_out = outcomes(&c, "plainco", &plain_ids, &agents).await;
    eprintln!("whitelist task said: {:?}\nshared task said: {:?}", wl_out[0], plain_out[0]);
    let want = format!("firewall saw {}", fw.egress);
    for (agent, out) in &wl_out {
        assert_eq!(agent, &pool_id, "a whitelist task ran on {agent}");
        assert!(out.lines().any(|l| l == want), "the firewall saw another address: {out}");
        assert!(out.contains("closed host"), "a pool task reached the host: {out}");
    }
    for (agent, out) in &plain_out {
        assert_eq!(agent, &shared_id, "a shared tenant's task ran on the pool agent");
        assert!(out.contains("wget failed") && !out.contains("firewall saw"), "the firewall let it in: {out}");
    }
    assert!(fw.refused() >= 6, "the firewall refused {} connections", fw.refused());
    // The control: tasks on Docker's default bridge do reach the host listener, so the
    // pool tasks' "closed host" is the egress network's host rule, not the probe's doing.
    let opened = plain_out.iter().filter(|(_, out)| out.contains("OPEN host")).count() as u64;
    assert_eq!(opened, 6, "{plain_out:?}");
    assert_eq!(reached.load(Ordering::SeqCst), opened, "the host listener saw a connection from a pool task");

    // The operator's view, and a pool in use cannot go.
    let pools = admin.list_pools(pa::ListPoolsRequest {}).await.expect("pools").into_inner();
    assert_eq!(pools.pools[0].tenant, "wl");
    assert_eq!(pools.pools[0].addresses[0].agents, std::slice::from_ref(&pool_id));
    let e = admin.delete_pool(pa::DeletePoolRequest { name: "fw-pool".into() }).await.expect_err("in use");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
}

#[tokio::test]
async fn vpc_tasks_reach_the_tenants_service_by_name_and_no_other_tenant_runs_there() {
    let _d = docker().await;
    let pid = std::process::id();
    let (vpc_net, svc) = (format!("drv-vpc-{pid}"), format!("vpc-svc-{pid}"));
    struct Cleanup(String, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            try_run(&["docker", "rm", "-f", &self.1]);
            try_run(&["docker", "network", "rm", &self.0]);
        }
    }
    let _cleanup = Cleanup(vpc_net.clone(), svc.clone());
    // The tenant's network and a service on it, only reachable inside.
    run(&["docker", "network", "create", &vpc_net]);
    let serve = "mkdir -p /www && echo vpc-secret > /www/index.html && exec httpd -f -p 8080 -h /www";
    run(&["docker", "run", "-d", "--name", &svc, "--network", &vpc_net, IMAGE, "sh", "-c", serve]);
    let svc_ip = run(&[
        "docker",
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks {vpc_net:?}).IPAddress}}}}"),
        &svc,
    ]);

    let c = common::cluster(ClusterOptions { nodes: 1, tls: true, ..Default::default() }).await;
    let node = c.ids()[0];
    let mut admin = c.admin(node).expect("admin");
    let probe =
        format!("for t in {svc} {svc_ip}; do timeout 3 wget -q -O - http://$t:8080/ || echo \"unreachable $t\"; done");
    for t in ["corp", "other"] {
        admin.upsert_tenant(pa::UpsertTenantRequest { id: t.into(), ..Default::default() }).await.expect("tenant");
        let mut client = c.tenant(node, t).expect("client");
        client.register_code(sh("probe", &probe)).await.expect("code");
        client.register_code(sh("work", "true")).await.expect("code");
    }
    let vpc = |fallback| pa::TenantMode {
        kind: pa::TenantModeKind::Vpc.into(),
        vpc: "corp-vpc".into(),
        fallback,
        ..Default::default()
    };
    set_mode(&c, "corp", vpc(false)).await;
    let vpc_id = format!("vpc-a-{pid}");
    register_as(&c, pa::AgentRegistration { id: vpc_id.clone(), vpc: "corp-vpc".into(), ..Default::default() }).await;

    // Only the shared agent (on Docker's default bridge) is up: corp's task waits, named
    // for its VPC, while other's runs there.
    let shared = c.start_agent("shared", attrs("network_mode = \"bridge\"\n")).expect("shared agent");
    let waiting = queue_for(&c, "corp", "probe", 1).await[0];
    let first = queue_for(&c, "other", "probe", 1).await;
    outcomes(&c, "other", &first, &[&shared]).await;
    let mut corp = c.tenant(node, "corp").expect("corp");
    let t = corp.get_task(pv::GetTaskRequest { id: waiting, include_payload: false }).await.expect("get").into_inner();
    assert_eq!(state(&t), pv::TaskState::Queued, "{t:?}");
    let why = format!("{:?}", t.waiting);
    assert!(why.contains("vpc=corp-vpc"), "{why}");

    // The VPC agent starts: the waiting task and a mixed batch run where they may.
    let vpc_cfg = format!("task_network = {vpc_net:?}\n[attributes]\nvpc = \"corp-vpc\"\n");
    let vpc_agent = c.start_agent_as(&vpc_id, attrs(&vpc_cfg)).expect("vpc agent");
    let agents = [&shared, &vpc_agent];
    let mut corp_ids = vec![waiting];
    corp_ids.extend(queue_for(&c, "corp", "probe", 3).await);
    let other_ids = queue_for(&c, "other", "probe", 4).await;
    let corp_bulk = queue_for(&c, "corp", "work", 30).await;
    let other_bulk = queue_for(&c, "other", "work", 50).await;
    let corp_out = outcomes(&c, "corp", &corp_ids, &agents).await;
    let other_out = outcomes(&c, "other", &other_ids, &agents).await;
    let corp_ran: BTreeSet<String> =
        outcomes(&c, "corp", &corp_bulk, &agents).await.into_iter().map(|(a, _)| a).collect();
    let other_ran: BTreeSet<String> =
        outcomes(&c, "other", &other_bulk, &agents).await.into_iter().map(|(a, _)| a).collect();
    assert_eq!(corp_ran, BTreeSet::from([vpc_id.clone()]), "a VPC tenant's task ran outside its VPC");
    assert_eq!(other_ran, BTreeSet::from([shared.id.clone()]), "another tenant's task ran on the VPC agent");
    eprintln!("corp task said: {:?}\nother task said: {:?}", corp_out[0], other_out[0]);
    for (agent, out) in &corp_out {
        assert_eq!(agent, &vpc_id);
        assert_eq!(out.matches("vpc-secret").count(), 2, "by name and by address: {out}");
    }
    let ran_on: BTreeSet<&str> = other_out.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(ran_on, BTreeSet::from([shared.id.as_str()]), "another tenant's task ran on the VPC agent");
    for (_, out) in &other_out {
        assert!(out.contains(&format!("unreachable {svc}")) && out.contains(&format!("unreachable {svc_ip}")), "{out}");
        assert!(!out.contains("vpc-secret"), "another tenant reached the VPC's service: {out}");
    }

    // With fallback, and the VPC agent gone, corp's tasks run on the shared fleet, outside
    // the VPC: isolated from its service like anyone's.
    drop(vpc_agent);
    set_mode(&c, "corp", vpc(true)).await;
    let fell_back = queue_for(&c, "corp", "probe", 2).await;
    for (agent, out) in outcomes(&c, "corp", &fell_back, &[&shared]).await {
        assert_eq!(agent, shared.id);
        assert!(!out.contains("vpc-secret"), "{out}");
    }
}
