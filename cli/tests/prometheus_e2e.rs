//! A real Prometheus server (Debian's `prometheus` package) scraping a real fleet with
//! the shipped configuration: three TLS servers scraped over HTTPS with an operator
//! certificate, two agents on their loopback `metrics_listen`, `deploy/prometheus/`'s
//! scrape jobs and alert rules as shipped except the scrape and evaluation intervals
//! (1 s) and each rule's `for` (shortened to 2 s, so the test waits seconds, not minutes;
//! the rules' own timing is what `promtool test rules` checks). Tasks run in Docker; then
//! Prometheus's HTTP API must show the task outcomes, queue depth and Raft series, and
//! `DroverNoLeader` must fire once two of the three servers are stopped.
//!
//! Needs a running Docker engine and `/usr/bin/prometheus` (`.ci/run` installs the package
//! through `deploy/prometheus/check.sh`); fails, never skips, without them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::agent_tasks::*;
use drover_chaos::{AgentOptions, Cluster, ClusterOptions, clients, eventually, ports};
use drover_identity::certs::{self, LeafSpec};
use drover_identity::{Role, SpiffeId};
use drover_proto::v1 as pv;

/// The Prometheus server, stopped and waited for when dropped.
struct Prometheus {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// `GET path` on Prometheus's HTTP API; the body parsed as JSON, `data` taken out of
    /// a `success` answer. None while it is not answering.
    async fn api(&self, path: &str) -> Option<serde_json::Value> {
        let got = tokio::time::timeout(Duration::from_secs(5), clients::plain_http_get(&self.addr, path)).await;
        let (_, text) = got.ok()?.ok()?;
        let (_, body) = text.split_once("\r\n\r\n")?;
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    /// An instant query's samples: (labels, value).
    async fn query(&self, promql: &str) -> Option<Vec<(serde_json::Value, f64)>> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(promql))).await?;
        let out = data["result"]
            .as_array()?
            .iter()
            .filter_map(|r| Some((r["metric"].clone(), r["value"][1].as_str()?.parse().ok()?)))
            .collect();
        Some(out)
    }

    /// The one value of a query that yields a single sample.
    async fn scalar(&self, promql: &str) -> Option<f64> {
        match self.query(promql).await?.as_slice() {
            [(_, v)] => Some(*v),
            _ => None,
        }
    }

    /// Whether alert `name` is firing; None while Prometheus does not answer.
    async fn firing(&self, name: &str) -> Option<bool> {
        let alerts = self.api("/api/v1/alerts").await?;
        Some(alerts["alerts"].as_array()?.iter().any(|a| a["labels"]["alertname"] == name && a["state"] == "firing"))
    }

    /// Waits up to 60 s for alert `name` to be firing (or, with `firing` false, not to be);
    /// panics with the alerts and Prometheus's log otherwise.
    async fn wait_alert(&self, name: &str, firing: bool, what: &str) {
        let waited =
            eventually(Duration::from_secs(60), what, || async { (self.firing(name).await? == firing).then_some(()) })
                .await;
        if let Err(e) = waited {
            panic!("{e}\nalerts: {:?}\nprometheus log:\n{}", self.api("/api/v1/alerts").await, self.log());
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Percent-encodes a query string value (everything but unreserved characters).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn prometheus_binary() -> PathBuf {
    let bin = PathBuf::from("/usr/bin/prometheus");
    assert!(
        bin.exists(),
        "this test needs Debian's Prometheus server: `apt-get install -y prometheus` (bash .ci/run installs it)"
    );
    bin
}

/// `deploy/prometheus/` copied into `dir` with the test's targets, certificate files,
/// 1 s intervals and 2 s `for` clauses.
fn write_config(dir: &Path, c: &Cluster, agent_metrics: &[String]) {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus");
    let config = std::fs::read_to_string(format!("{repo}/prometheus.yml")).expect("prometheus.yml");
    let config = config
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
    assert!(config.contains("scrape_interval: 1s") && config.contains("evaluation_interval: 1s"), "{config}");
    std::fs::write(dir.join("prometheus.yml"), config).expect("write config");

    let rules = std::fs::read_to_string(format!("{repo}/alerts.yml")).expect("alerts.yml");
    let mut shortened = 0;
    let rules: Vec<String> = rules
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for: ") {
            Some(_) => {
                shortened += 1;
                format!("{}for: 2s", &l[..l.len() - l.trim_start().len()])
            }
            None => l.to_string(),
        })
        .collect();
    assert!(shortened >= 5, "expected the shipped rules to have `for` clauses");
    std::fs::write(dir.join("alerts.yml"), rules.join("\n") + "\n").expect("write rules");

    std::fs::create_dir_all(dir.join("targets")).expect("targets dir");
    let list = |addrs: Vec<String>| {
        format!("- targets: [{}]\n", addrs.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", "))
    };
    let servers = c.ids().into_iter().map(|id| c.http(id).to_string()).collect();
    std::fs::write(dir.join("targets/servers.yml"), list(servers)).expect("servers targets");
    std::fs::write(dir.join("targets/agents.yml"), list(agent_metrics.to_vec())).expect("agents targets");

    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).expect("pki dir");
    let ca = c.ca().expect("a TLS cluster");
    let id = SpiffeId::new(Role::Operator, "prometheus").expect("identity");
    let leaf = certs::issue(ca, &LeafSpec::new(id, 30)).expect("operator certificate");
    certs::write_file(&pki.join("ca.pem"), &ca.cert, false).expect("ca");
    certs::write_file(&pki.join("operator-prometheus.pem"), &leaf.cert, false).expect("cert");
    certs::write_file(&pki.join("operator-prometheus.key"), &leaf.key, true).expect("key");
}

fn start_prometheus(dir: &Path) -> Prometheus {
    let addr = format!("127.0.0.1:{}", ports::reserve().expect("port"));
    let log = dir.join("prometheus.log");
    let out = std::fs::File::create(&log).expect("log file");
    let err = out.try_clone().expect("log file");
    let child = Command::new(prometheus_binary())
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start prometheus");
    Prometheus { child, addr, log }
}

#[tokio::test]
async fn prometheus_scrapes_the_fleet_and_the_no_leader_alert_fires() {
    let _docker = docker().await;
    let mut c =
        common::cluster(ClusterOptions { nodes: 3, lease_ttl: Some("5s".into()), tls: true, ..Default::default() })
            .await;
    create_tenant(&c).await;
    let mut agents = Vec::new();
    let mut agent_metrics = Vec::new();
    for name in ["prom-a", "prom-b"] {
        let addr = format!("127.0.0.1:{}", ports::reserve().expect("port"));
        let opts = AgentOptions { slots: 2, extra_config: format!("metrics_listen = {addr:?}") };
        agents.push(c.start_agent(name, opts).expect("start agent"));
        agent_metrics.push(addr);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    write_config(dir.path(), &c, &agent_metrics);
    let prom = start_prometheus(dir.path());

    // Every target up: the servers over HTTPS with the operator certificate.
    let up = |job: &'static str| {
        let prom = &prom;
        async move { prom.scalar(&format!("sum(up{{job={job:?}}})")).await }
    };
    eventually(Duration::from_secs(60), "3 servers and 2 agents up in Prometheus", || async {
        (up("drover-servers").await? == 3.0 && up("drover-agents").await? == 2.0).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nprometheus log:\n{}", prom.log()));

    // Tasks that run (five succeed, one fails), and three that no agent can take.
    register(&c, sh("ok", "echo fine")).await;
    register(&c, sh("bad", "exit 3")).await;
    let mut ids = queue(&c, "ok", b"", 5).await;
    ids.extend(queue(&c, "bad", b"", 1).await);
    let gpu =
        pv::Placement { labels: [("gpu".to_string(), "1".to_string())].into_iter().collect(), ..Default::default() };
    let stuck = (0..3).map(|_| pv::NewTask { code: "ok".into(), placement: Some(gpu.clone()), ..Default::default() });
    tenant(&c)
        .queue_tasks(pv::QueueTasksRequest { tasks: stuck.collect(), idempotency_key: String::new() })
        .await
        .expect("queue unplaceable tasks");
    let refs: Vec<_> = agents.iter().collect();
    for id in &ids {
        let t = wait_finished(&c, *id, Duration::from_secs(90), &refs).await;
        assert!(finished(&t), "{t:?}");
    }

    // What arrived in Prometheus: outcomes from the agents and the servers, the queue that
    // waits, Raft's view.
    let checks: &[(&str, f64)] = &[
        (r#"sum(drover_agent_tasks_total{outcome="success"})"#, 5.0),
        (r#"sum(drover_agent_tasks_total{outcome="error"})"#, 1.0),
        (r#"max(drover_tasks{state="complete"})"#, 5.0),
        (r#"max(drover_tasks{state="error"})"#, 1.0),
        (r#"sum(drover_task_attempts_total{outcome="success"})"#, 5.0),
        (r#"sum(drover_task_attempts_total{outcome="exit_code"})"#, 1.0),
        ("sum(drover_task_run_seconds_count)", 6.0),
        (r#"max(drover_queue_depth{tenant="acme",priority="0"})"#, 3.0),
        ("max(drover_tasks_unplaceable)", 3.0),
        (r#"sum(drover_raft_is_leader{job="drover-servers"})"#, 1.0),
        ("count(drover_raft_follower_lag_entries)", 2.0),
        (r#"max(sum by (instance) (drover_agents{state="connected"}))"#, 2.0),
    ];
    let last = std::sync::Mutex::new(Vec::new());
    let seen = eventually(Duration::from_secs(60), "every expected series in Prometheus", || async {
        let mut got = Vec::new();
        for (q, want) in checks {
            got.push((*q, prom.scalar(q).await, *want));
        }
        *last.lock().expect("lock") = got.clone();
        got.iter().all(|(_, v, want)| *v == Some(*want)).then_some(())
    })
    .await;
    if let Err(e) = seen {
        let lines: Vec<String> =
            last.lock().expect("lock").iter().map(|(q, v, w)| format!("  {q} = {v:?} (want {w})")).collect();
        panic!("{e}\n{}\nprometheus log:\n{}", lines.join("\n"), prom.log());
    }
    assert!(prom.scalar("max(drover_raft_applied_index)").await.is_some_and(|v| v > 0.0));
    assert!(prom.scalar("sum(drover_queue_oldest_age_seconds)").await.is_some_and(|v| v >= 0.0));
    assert_eq!(prom.firing("DroverNoLeader").await, Some(false), "no alert while a leader serves");

    // Two of three servers stopped, the leader among them: the one left cannot elect
    // itself, so no scraped server is the leader and the alert fires.
    let leader = c.wait_leader(Duration::from_secs(10)).await.expect("leader");
    let follower = c.ids().into_iter().find(|id| *id != leader).expect("a follower");
    c.stop(leader).expect("stop the leader");
    c.stop(follower).expect("stop a follower");
    prom.wait_alert("DroverNoLeader", true, "DroverNoLeader firing").await;

    // Both back: a leader again, and the alert resolves. Then the leader is left alone
    // (its two followers stopped): a leader that cannot reach a quorum is not a leader
    // anyone can use, so it must not count as one and the alert fires again.
    c.restart(leader).expect("restart");
    c.restart(follower).expect("restart");
    prom.wait_alert("DroverNoLeader", false, "DroverNoLeader resolved").await;
    let leader = c.wait_leader(Duration::from_secs(20)).await.expect("leader");
    for id in c.ids().into_iter().filter(|id| *id != leader) {
        c.stop(id).expect("stop a follower");
    }
    prom.wait_alert("DroverNoLeader", true, "DroverNoLeader firing with the leader alone").await;
    drop(prom);
    drop(agents);
}
