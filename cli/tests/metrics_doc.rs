//! `docs/operations.md`, the Grafana dashboards and the alert rules against a live fleet:
//! a real 3-server cluster with mutual TLS (so there are followers to lag and certificates
//! to expire) and a real agent that runs a task in Docker, so that the labelled series
//! exist. Every metric family the servers or the agent export is in the doc's table for
//! that process, with the same type and label names, and every family in a table is
//! exported; every metric a dashboard panel, a dashboard variable or an alert rule names
//! is exported. Needs a running Docker engine.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::agent_tasks::*;
use drover_chaos::{AgentOptions, Cluster, ClusterOptions, eventually};
use drover_proto::admin as pa;
use drover_proto::v1 as pv;

/// One metric family: its type and the label names its series carry (`le` of histogram
/// buckets left out).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Family {
    kind: String,
    labels: BTreeSet<String>,
}

/// One sample line of the text exposition: series name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Splits `{a="x",b="y\"z"}` (without the braces) into label pairs.
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, ch)) = chars.next() {
            match ch {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => break,
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                other => value.push(other),
            }
        }
        out.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {l:?}"));
            let value = value.parse().unwrap_or_else(|e| panic!("value of {l:?}: {e}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, parse_labels(labels.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            Sample { name: name.to_string(), labels, value }
        })
        .collect()
}

/// The families of an exposition, from its `# TYPE` lines and its samples.
fn families(text: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap_or_else(|| panic!("bad TYPE line {l:?}"));
            (name.to_string(), Family { kind: kind.to_string(), labels: BTreeSet::new() })
        })
        .collect();
    for s in samples(text) {
        let family = family_of(&s.name, |n| out.contains_key(n)).unwrap_or_else(|| panic!("no TYPE for {}", s.name));
        let f = out.get_mut(&family).unwrap_or_else(|| panic!("family {family}"));
        f.labels.extend(s.labels.into_keys().filter(|k| k != "le"));
    }
    out
}

/// The family a series belongs to: itself, or a histogram's `_bucket`/`_sum`/`_count`.
fn family_of(series: &str, known: impl Fn(&str) -> bool) -> Option<String> {
    if known(series) {
        return Some(series.to_string());
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| series.strip_suffix(suffix))
        .find(|base| known(base))
        .map(str::to_string)
}

/// Every family of every text, label names merged (nodes differ in which series exist).
fn merge(into: &mut BTreeMap<String, Family>, text: &str) {
    for (name, f) in families(text) {
        match into.get_mut(&name) {
            Some(have) => {
                assert_eq!(have.kind, f.kind, "{name} has two types");
                have.labels.extend(f.labels);
            }
            None => {
                into.insert(name, f);
            }
        }
    }
}

/// The table under `## {heading}` in the doc: metric → (type, label names).
fn doc_table(doc: &str, heading: &str) -> BTreeMap<String, Family> {
    let start = doc.find(&format!("\n## {heading}\n")).unwrap_or_else(|| panic!("no '## {heading}' in the doc"));
    let section = &doc[start + 1..];
    let section = &section[..section[3..].find("\n## ").map(|i| i + 3).unwrap_or(section.len())];
    let mut out = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with("| `drover_")) {
        let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
        assert_eq!(cells.len(), 4, "a row is | metric | type | labels | meaning |: {row}");
        let name = cells[0].trim_matches('`').to_string();
        let labels = match cells[2] {
            "—" | "" => BTreeSet::new(),
            l => l.split(',').map(|x| x.trim().trim_matches('`').to_string()).collect(),
        };
        let dup = out.insert(name.clone(), Family { kind: cells[1].to_string(), labels });
        assert!(dup.is_none(), "{name} is listed twice under {heading}");
    }
    assert!(!out.is_empty(), "no metric rows under '## {heading}'");
    out
}

/// A file of the repository, by its path from the root.
fn repo_file(path: &str) -> String {
    let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// The `drover_*` metric names in a query (a name is letters, digits, `_` and `:`; the
/// names of alerts and jobs are not, being capitalised or hyphenated).
fn metric_names(query: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = query;
    while let Some(i) = rest.find("drover_") {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i..];
        let len = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(tail[..len].to_string());
        }
        rest = &tail[len..];
    }
    out
}

/// Every query string of a dashboard: panel targets' `expr`, and template variables'
/// `query` (a string, or an object holding one) and `definition`.
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(q)) => out.push(q.clone()),
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

/// The dashboards' structure: a title and a uid unique across files; panels with unique
/// ids that fit the 24-column grid; every panel but a row has a datasource and at least
/// one target, and every target an `expr`. Returns (file, query) for every query.
fn dashboards() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/dashboards");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "fleet, control plane, agents and tenant-queue dashboards: {files:?}");
    let mut uids = BTreeSet::new();
    let mut out = Vec::new();
    for path in files {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let d: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
        assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "{name}: no title");
        let uid = d["uid"].as_str().unwrap_or_else(|| panic!("{name}: no uid"));
        assert!(uids.insert(uid.to_string()), "{name}: uid {uid} used twice");
        let panels = d["panels"].as_array().unwrap_or_else(|| panic!("{name}: no panels"));
        let mut ids = BTreeSet::new();
        for p in panels {
            let title = p["title"].as_str().unwrap_or_else(|| panic!("{name}: a panel without a title"));
            let id = p["id"].as_u64().unwrap_or_else(|| panic!("{name}/{title}: no id"));
            assert!(ids.insert(id), "{name}/{title}: panel id {id} used twice");
            let (x, w) = (p["gridPos"]["x"].as_u64(), p["gridPos"]["w"].as_u64());
            assert!(x.zip(w).is_some_and(|(x, w)| w > 0 && x + w <= 24), "{name}/{title}: gridPos {}", p["gridPos"]);
            if p["type"] == "row" {
                continue;
            }
            assert!(p["datasource"].is_object(), "{name}/{title}: no datasource");
            let targets = p["targets"].as_array().filter(|t| !t.is_empty());
            let targets = targets.unwrap_or_else(|| panic!("{name}/{title}: no targets"));
            for t in targets {
                assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()), "{name}/{title}: a target without expr");
            }
        }
        let mut queries = Vec::new();
        dashboard_queries(&d, &mut queries);
        out.extend(queries.into_iter().map(|q| (name.clone(), q)));
    }
    out
}

/// Every `drover_*` name a dashboard or an alert rule uses is a family a live process
/// exports (a histogram's series by its family).
fn assert_queries_use_exported_metrics(exported: &BTreeSet<String>) {
    let mut used = Vec::new();
    for (file, query) in dashboards() {
        used.extend(metric_names(&query).into_iter().map(|n| (format!("deploy/grafana/dashboards/{file}"), n)));
    }
    let alerts = repo_file("deploy/prometheus/alerts.yml");
    let alert_names = metric_names(&alerts);
    assert!(alert_names.len() >= 8, "too few metrics found in alerts.yml: {alert_names:?}");
    used.extend(alert_names.into_iter().map(|n| ("deploy/prometheus/alerts.yml".to_string(), n)));
    let unknown: Vec<_> = used.iter().filter(|(_, n)| family_of(n, |f| exported.contains(f)).is_none()).collect();
    assert!(unknown.is_empty(), "names no live process exports: {unknown:?}");
}

/// Each documented family against the exported ones, both ways.
fn assert_matches_doc(what: &str, exported: &BTreeMap<String, Family>, documented: &BTreeMap<String, Family>) {
    let undocumented: Vec<_> = exported.keys().filter(|n| !documented.contains_key(*n)).collect();
    assert!(undocumented.is_empty(), "{what} exports {undocumented:?}, missing from docs/operations.md");
    let missing: Vec<_> = documented.keys().filter(|n| !exported.contains_key(*n)).collect();
    assert!(missing.is_empty(), "docs/operations.md lists {missing:?} for the {what}, which it does not export");
    for (name, doc) in documented {
        assert_eq!(&exported[name], doc, "{what}: {name} as exported (left) and as documented (right)");
    }
}

async fn scrape_servers(c: &Cluster) -> Option<String> {
    let mut all = String::new();
    for id in c.ids() {
        let (code, body) = c.http_get(id, "/metrics").await.ok()?;
        if code != 200 {
            return None;
        }
        all.push_str(&body);
    }
    Some(all)
}

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text)
        .into_iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
}

#[tokio::test]
async fn docs_dashboards_and_alerts_match_what_a_live_fleet_exports() {
    let _docker = docker().await;
    let c = common::cluster(ClusterOptions { nodes: 3, lease_ttl: Some("5s".into()), tls: true, ..Default::default() })
        .await;
    create_tenant(&c).await;
    register(&c, sh("echo", "echo hello")).await;
    let id = queue(&c, "echo", b"", 1).await[0];

    // Before any agent: the task waits, so its queue has a depth and a head; the leader
    // has heard from both followers.
    let waiting = eventually(Duration::from_secs(30), "the waiting task's queue and the followers' lag", || async {
        let text = scrape_servers(&c).await?;
        let age = value(&text, "drover_queue_oldest_age_seconds", &[("tenant", "acme"), ("priority", "0")])?;
        let lags = samples(&text).iter().filter(|s| s.name == "drover_raft_follower_lag_entries").count();
        (age >= 0.0 && lags == 2).then_some(text)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(value(&waiting, "drover_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
    let expiry = value(&waiting, "drover_tls_cert_expiry_seconds", &[]).expect("servers report their expiry");
    let now = unix_now();
    assert!(expiry > now && expiry < now + 31.0 * 86_400.0, "certificates are issued for 30 days: {expiry}");
    assert_eq!(
        samples(&waiting).iter().filter(|s| s.name == "drover_raft_is_leader" && s.value == 1.0).count(),
        1,
        "one leader"
    );

    let a = c.start_agent("metrics", AgentOptions::default()).expect("start agent");
    let t = wait_finished(&c, id, Duration::from_secs(60), &[&a]).await;
    assert_eq!(state(&t), pv::TaskState::Complete, "{t:?}");
    let agent = eventually(Duration::from_secs(10), "the agent's metrics", || async {
        let (code, text) =
            drover_runner_agent::socket::request(&a.socket, hyper::Method::GET, "/metrics").await.ok()?;
        code.is_success().then_some(text)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(value(&agent, "drover_agent_tasks_total", &[("outcome", "success")]), Some(1.0));
    assert_eq!(value(&agent, "drover_agent_tasks_total", &[("outcome", "timeout")]), Some(0.0), "starts at 0");
    assert!(value(&agent, "drover_agent_image_cache_bytes", &[]).is_some_and(|b| b > 0.0), "{agent}");
    assert_eq!(value(&agent, "drover_agent_image_cache_budget_bytes", &[]), Some(10.0 * 1024.0 * 1024.0 * 1024.0));
    assert!(value(&agent, "drover_tls_cert_expiry_seconds", &[]).is_some_and(|e| e > now), "{agent}");
    let finished = scrape_servers(&c).await.expect("scrape after the task");

    let mut servers = BTreeMap::new();
    merge(&mut servers, &waiting);
    merge(&mut servers, &finished);
    let mut agents = BTreeMap::new();
    merge(&mut agents, &agent);
    let doc = repo_file("docs/operations.md");
    assert_matches_doc("server", &servers, &doc_table(&doc, "Server metrics"));
    assert_matches_doc("agent", &agents, &doc_table(&doc, "Agent metrics"));
    let exported: BTreeSet<String> = servers.into_keys().chain(agents.into_keys()).collect();
    assert_queries_use_exported_metrics(&exported);
}

/// One scrape of every running node: node id → exposition.
async fn scrape_each(c: &Cluster) -> Option<BTreeMap<u64, String>> {
    let mut out = BTreeMap::new();
    for id in c.running_ids() {
        let (code, body) = c.http_get(id, "/metrics").await.ok()?;
        (code == 200).then_some(())?;
        out.insert(id, body);
    }
    Some(out)
}

fn leader_of(scrapes: &BTreeMap<u64, String>) -> Option<u64> {
    scrapes.iter().find(|(_, t)| value(t, "drover_raft_is_leader", &[]) == Some(1.0)).map(|(id, _)| *id)
}

#[tokio::test]
async fn a_leader_kill_is_counted_its_lag_grows_and_a_waiting_queue_head_ages() {
    let mut c = common::cluster(ClusterOptions { nodes: 3, ..Default::default() }).await;
    let first = eventually(Duration::from_secs(20), "a leader whose followers have caught up", || async {
        let s = scrape_each(&c).await?;
        let leader = leader_of(&s)?;
        let lags: Vec<f64> = samples(&s[&leader])
            .into_iter()
            .filter(|x| x.name == "drover_raft_follower_lag_entries")
            .map(|x| x.value)
            .collect();
        (lags == [0.0, 0.0]).then_some((leader, s))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let (old_leader, before) = first;
    let changes = |t: &str| value(t, "drover_raft_leader_changes_total", &[]).unwrap_or(0.0);
    for (id, text) in &before {
        assert!(changes(text) >= 1.0, "node {id} has seen the first leader:\n{text}");
        let lags = samples(text).iter().filter(|x| x.name == "drover_raft_follower_lag_entries").count();
        assert_eq!(lags, if *id == old_leader { 2 } else { 0 }, "only the leader reports follower lag");
    }

    c.kill(old_leader).expect("kill the leader");
    let new_leader =
        eventually(Duration::from_secs(20), "a new leader", || async { leader_of(&scrape_each(&c).await?) })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    // A leader elected a moment ago may still answer Unavailable; these writes are
    // idempotent, so they are simply asked again.
    eventually(Duration::from_secs(10), "tenant, code and tasks written", || async {
        let mut admin = c.admin(new_leader).ok()?;
        admin.upsert_tenant(pa::UpsertTenantRequest { id: "acme".into(), ..Default::default() }).await.ok()?;
        let mut t = c.tenant(new_leader, "acme").ok()?;
        t.register_code(sh("echo", "echo hello")).await.ok()?;
        t.queue_tasks(common::batch(3, 16, "metrics-doc")).await.ok()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // The new leader counts the change, and the dead node falls behind by what was
    // written since (the tenant, the code, the tasks); with no agent the queue's head ages.
    let dead = old_leader.to_string();
    let after = eventually(Duration::from_secs(20), "the change counted, the lag and the age grown", || async {
        let s = scrape_each(&c).await?;
        let leader = leader_of(&s)?;
        let lag = value(&s[&leader], "drover_raft_follower_lag_entries", &[("follower", &dead)])?;
        let age = value(&s[&leader], "drover_queue_oldest_age_seconds", &[("tenant", "acme"), ("priority", "0")])?;
        (lag >= 3.0 && age >= 1.0).then_some(s)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    for (id, text) in &after {
        assert!(changes(text) > changes(&before[id]), "node {id} counted the new leader:\n{text}");
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64()
}

#[tokio::test]
async fn a_certificate_reloaded_on_sighup_reports_its_new_expiry() {
    let c = common::cluster(ClusterOptions { nodes: 1, tls: true, ..Default::default() }).await;
    let id = c.ids()[0];
    let expiry = || async { value(&scrape_each(&c).await?[&id], "drover_tls_cert_expiry_seconds", &[]) };
    let before = eventually(Duration::from_secs(10), "the node's certificate expiry", expiry)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Test certificates run 30 days from an hour before their issue, to the second: wait
    // for the clock to pass the second so the new certificate expires later.
    let issued = before - 30.0 * 86_400.0 + 3_600.0;
    eventually(Duration::from_secs(5), "a second after the first issue", || async {
        (unix_now() >= issued + 1.0).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    c.write_node_cert(id).expect("new certificate");
    c.hangup(id).expect("SIGHUP");
    let after = eventually(Duration::from_secs(10), "the reloaded certificate's expiry", || async {
        expiry().await.filter(|e| *e > before)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(id, 20)));
    assert!(after <= unix_now() + 30.0 * 86_400.0, "{after}");
}

#[test]
fn metric_names_are_found_in_queries_and_nothing_else_is() {
    let q = "histogram_quantile(0.99, sum by (le) (rate(drover_apply_seconds_bucket{job=\"drover-servers\"}[5m]))) \
             / drover_x:y - time() # DroverNoLeader not_drover_z";
    let names: Vec<String> = metric_names(q).into_iter().collect();
    assert_eq!(names, ["drover_apply_seconds_bucket", "drover_x:y"]);
    assert_eq!(
        family_of("drover_apply_seconds_bucket", |f| f == "drover_apply_seconds").as_deref(),
        Some("drover_apply_seconds")
    );
}

#[test]
fn the_exposition_parser_reads_labels_histograms_and_escapes() {
    let text = "# HELP x_seconds h\n# TYPE x_seconds histogram\nx_seconds_bucket{le=\"0.1\"} 1\n\
                x_seconds_sum 0.05\nx_seconds_count 1\n# TYPE y gauge\ny{a=\"q\\\"uo,te\",b=\"2\"} 3\n";
    let f = families(text);
    assert_eq!(f["x_seconds"], Family { kind: "histogram".into(), labels: BTreeSet::new() });
    assert_eq!(f["y"].labels, BTreeSet::from(["a".to_string(), "b".to_string()]));
    assert_eq!(value(text, "y", &[("a", "q\"uo,te"), ("b", "2")]), Some(3.0));
}
