//! One chaos run: a TLS cluster whose every link goes through a fault proxy, real agents
//! running real containers that report to the witness, the client workload, the
//! scenario's nemesis, then heal, settle and check.
//!
//! Every process is stopped when the run ends, also when it fails or is dropped
//! (Ctrl-C): the [`Cluster`] and [`AgentProc`] values own them. A failing or invalid run
//! keeps its folder (history, witness log, every node's and agent's log and data dir)
//! and its report prints the command that replays its fault schedule.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use drover_proto::admin as pa;
use drover_proto::v1 as pv;
use rand::{SeedableRng, rngs::StdRng};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::check::{self, Finding, Inputs, settle::Settled};
use crate::history::{self, Event, History, Kind, Op};
use crate::nemesis::Nemesis;
use crate::scenario::Scenario;
use crate::witness::{self, Witness};
use crate::workload::{self, WorkloadConfig};
use crate::{AgentOptions, Cluster, ClusterOptions, eventually};
use crate::{wan, zombie};

/// The image the witness code runs in (imported from the static busybox; nothing pulled).
pub const IMAGE: &str = "drover-test/busybox:1";
/// Acknowledged queue calls needed before the first fault for a run to count.
const LOAD_FLOOR: usize = 5;
/// After heal, how long the work may go without a task ending before the run counts as
/// stuck; while tasks keep ending, the wait goes on (a fault held for minutes leaves a
/// backlog that takes a while to drain at the fleet's capacity), up to [`SETTLE_MAX`].
const SETTLE: Duration = Duration::from_secs(60);
const SETTLE_MAX: Duration = Duration::from_secs(600);
const LEASE_TTL: Duration = Duration::from_secs(3);
const STOP_GRACE: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub scenario: Scenario,
    pub seed: u64,
    pub duration: Duration,
    pub servers: u64,
    pub agents: usize,
    /// The `drover` binary.
    pub drover: PathBuf,
    /// Where run folders are made.
    pub out: PathBuf,
    /// Keep the folder of a passing run too.
    pub keep: bool,
    /// Deliberate defects the servers run with (debug builds; see [`BREAKS`]).
    pub breaks: Vec<String>,
}

/// Deliberate defects a debug `drover server` accepts (`[test_breaks]`), each with the
/// invariant that must catch it and the scenario that exposes it.
pub const BREAKS: [(&str, &str, Scenario); 4] = [
    ("accept-stale-epochs", "no stale-epoch call accepted", Scenario::AgentsCut),
    ("ack-before-commit", "no acknowledged task lost", Scenario::LeaderKill),
    ("renew-without-quorum", "no lease authority without a quorum", Scenario::LeaderIsolated),
    ("cancel-before-commit", "an acknowledged cancel ends the task cancelled", Scenario::Mixed),
];

impl RunOptions {
    /// The command that replays this run's fault schedule.
    pub fn replay_command(&self) -> String {
        let breaks: String = self.breaks.iter().map(|b| format!(" --break {b}")).collect();
        format!(
            "drover-chaos run --scenario {} --seed {} --duration {} --servers {} --agents {}{breaks}",
            self.scenario.name(),
            self.seed,
            humantime::format_duration(self.duration),
            self.servers,
            self.agents
        )
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    pub operations: usize,
    pub queued_ok: usize,
    pub queued_unknown: usize,
    pub reads_ok: usize,
    /// Cancels acknowledged, and cancels refused because the task had already finished.
    pub cancels_ok: usize,
    pub cancels_refused: usize,
    /// Listing pages answered.
    pub pages_ok: usize,
    pub faults: usize,
    /// Faults by kind, as the history records them.
    pub faults_by_kind: BTreeMap<String, usize>,
    pub executions: usize,
    pub tasks: usize,
    pub leader_changes: u64,
    /// Per leader kill: milliseconds until the first write invoked after it succeeded.
    pub write_recovery_ms: Vec<u64>,
    /// Milliseconds from heal until every task had ended and every member reported the
    /// same state digest.
    pub converge_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub seed: u64,
    pub duration_s: u64,
    /// Why the run does not count (its faults did not happen, or too little load).
    pub invalid: Option<String>,
    /// Why the run was not carried out here (it needs what this machine does not allow).
    pub skipped: Option<String>,
    pub findings: Vec<Finding>,
    pub stats: Stats,
    pub wall_s: f64,
    pub replay: String,
    /// The kept folder (failing, invalid or `--keep` runs).
    pub kept: Option<PathBuf>,
}

impl Report {
    pub fn violations(&self) -> usize {
        self.findings.iter().map(|f| f.violations).sum()
    }

    pub fn passed(&self) -> bool {
        self.invalid.is_none() && self.violations() == 0
    }

    fn skip(opts: &RunOptions, why: String) -> Report {
        Report {
            scenario: opts.scenario.name(),
            seed: opts.seed,
            duration_s: opts.duration.as_secs(),
            invalid: None,
            skipped: Some(why),
            findings: Vec::new(),
            stats: Stats::default(),
            wall_s: 0.0,
            replay: opts.replay_command(),
            kept: None,
        }
    }

    pub fn human(&self) -> String {
        let mut s = format!(
            "{} seed {}: {} ({:.0} s; {} ops, {} tasks acknowledged, {} unknown, {} executions, {} faults, {} leader changes)\n",
            self.scenario,
            self.seed,
            if let Some(why) = &self.skipped {
                format!("SKIPPED: {why}")
            } else if self.passed() {
                "PASS".to_string()
            } else if let Some(why) = &self.invalid {
                format!("INVALID: {why}")
            } else {
                format!("FAIL: {} violations", self.violations())
            },
            self.wall_s,
            self.stats.operations,
            self.stats.queued_ok,
            self.stats.queued_unknown,
            self.stats.executions,
            self.stats.faults,
            self.stats.leader_changes,
        );
        for f in &self.findings {
            s.push_str(&format!("  {:<58} {}\n", f.invariant, f.violations));
            for e in &f.examples {
                s.push_str(&format!("      {e}\n"));
            }
        }
        if !self.stats.faults_by_kind.is_empty() {
            let kinds: Vec<String> = self.stats.faults_by_kind.iter().map(|(k, n)| format!("{n} × {k}")).collect();
            s.push_str(&format!("  faults: {}\n", kinds.join(", ")));
        }
        if self.skipped.is_none() {
            s.push_str(&format!(
                "  reads {}, cancels acknowledged {} (refused as finished {}), listing pages {}\n",
                self.stats.reads_ok, self.stats.cancels_ok, self.stats.cancels_refused, self.stats.pages_ok
            ));
        }
        if !self.stats.write_recovery_ms.is_empty() {
            s.push_str(&format!(
                "  writes accepted again after leader kill (ms): {:?}\n",
                self.stats.write_recovery_ms
            ));
        }
        if let Some(ms) = self.stats.converge_ms {
            s.push_str(&format!("  settled {ms} ms after heal (every task ended, members identical)\n"));
        }
        if let Some(dir) = &self.kept {
            s.push_str(&format!("  kept: {}\n", dir.display()));
        }
        if !self.passed() {
            s.push_str(&format!("  replay: {}\n", self.replay));
        }
        s
    }
}

pub async fn run(opts: &RunOptions) -> anyhow::Result<Report> {
    if opts.scenario == Scenario::EngineRestart && std::env::var("DROVER_CHAOS_OWN_ENGINE").as_deref() != Ok("1") {
        return Ok(Report::skip(
            opts,
            "restarting the Docker engine would disturb everything else using it; set DROVER_CHAOS_OWN_ENGINE=1 \
             where this run may stop and start dockerd (deploy/test.sh does)"
                .into(),
        ));
    }
    let began = Instant::now();
    std::fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let folder =
        tempfile::Builder::new().prefix(&format!("{}-{}-", opts.scenario.name(), opts.seed)).tempdir_in(&opts.out)?;
    let history = History::create(&folder.path().join("history.jsonl"), began)?;

    let docker = bollard::Docker::connect_with_local_defaults()
        .context("this run needs a Docker engine (bash deploy/docker-up.sh)")?
        .negotiate_version()
        .await
        .context("this run needs a running Docker engine (bash deploy/docker-up.sh)")?;
    drover_runner_agent::executor::import::ensure_busybox_image(&docker, IMAGE)
        .await
        .with_context(|| format!("importing {IMAGE} from /bin/busybox"))?;

    let mut extra = "max_lease_wait = \"2s\"\n".to_string();
    if opts.scenario == Scenario::Wan {
        // openraft bounds each replication RPC by the heartbeat interval: it must exceed
        // the round trip between regions (the same advice as for a real multi-region
        // deployment).
        extra.push_str("[raft]\nheartbeat_ms = 300\nelection_min_ms = 1500\nelection_max_ms = 3000\n");
    }
    if opts.scenario == Scenario::MemberReplace {
        // Snapshots every few hundred entries and a short log behind them, so a wiped
        // member catches up from a snapshot streamed while the leader keeps building more.
        extra.push_str("[raft]\nsnapshot_every_entries = 200\nkeep_entries_behind_snapshot = 20\n");
    }
    if !opts.breaks.is_empty() {
        extra.push_str("[test_breaks]\n");
        for b in &opts.breaks {
            anyhow::ensure!(BREAKS.iter().any(|(name, ..)| name == b), "unknown break {b:?}");
            extra.push_str(&format!("{} = true\n", b.replace('-', "_")));
        }
    }
    let witness = Witness::start(began).await?;
    let mut cluster = Cluster::start(
        &opts.drover,
        ClusterOptions {
            nodes: opts.servers,
            lease_ttl: Some(format!("{}ms", LEASE_TTL.as_millis())),
            extra_config: extra,
            tls: true,
            proxied: Some(opts.seed),
        },
    )
    .await?;
    let outcome = drive(opts, &history, &witness, &mut cluster, began).await;
    witness.shutdown().await;
    let (executions, still_running) = witness.executions();
    write_lines(&folder.path().join("witness.jsonl"), executions.iter().chain(&still_running))?;

    let (mut inputs, stats, invalid) = match outcome {
        Ok(x) => x,
        Err(e) => {
            let kept = keep(folder, &mut cluster)?;
            return Err(e.context(format!("run folder kept at {}; replay: {}", kept.display(), opts.replay_command())));
        }
    };
    inputs.events = history.events();
    inputs.executions = executions;
    inputs.still_running = still_running;
    inputs.lease_ttl_ms = ms(LEASE_TTL);
    inputs.overlap_allowance_ms = u64::try_from((STOP_GRACE + Duration::from_millis(700)).as_millis()).unwrap_or(0);
    let findings = check::check_all(&inputs);
    let mut stats = stats;
    stats.executions = inputs.executions.len() + inputs.still_running.len();
    stats.tasks = inputs.final_tasks.len();
    let mut report = Report {
        scenario: opts.scenario.name(),
        seed: opts.seed,
        duration_s: opts.duration.as_secs(),
        invalid,
        skipped: None,
        findings,
        stats,
        wall_s: began.elapsed().as_secs_f64(),
        replay: opts.replay_command(),
        kept: None,
    };
    std::fs::write(folder.path().join("summary.json"), serde_json::to_vec_pretty(&report)?)?;
    if !report.passed() || opts.keep {
        report.kept = Some(keep(folder, &mut cluster)?);
    }
    Ok(report)
}

/// Keeps the run folder and moves the cluster's folder (logs, data dirs) into it.
fn keep(folder: tempfile::TempDir, cluster: &mut Cluster) -> anyhow::Result<PathBuf> {
    let path = folder.keep();
    let cluster_dir = cluster.keep_dir();
    let _ = std::os::unix::fs::symlink(&cluster_dir, path.join("cluster"));
    Ok(path)
}

fn write_lines<T: Serialize>(path: &Path, items: impl Iterator<Item = T>) -> anyhow::Result<()> {
    let mut out = String::new();
    for i in items {
        out.push_str(&serde_json::to_string(&i)?);
        out.push('\n');
    }
    std::fs::write(path, out)?;
    Ok(())
}

async fn leader_term(cluster: &Cluster) -> anyhow::Result<(u64, u64)> {
    let leader = cluster.wait_leader(Duration::from_secs(30)).await?;
    Ok((leader, cluster.status(leader).await?.term))
}

/// Sets up the tenant, code and agents, runs workload and nemesis, heals, settles.
async fn drive(
    opts: &RunOptions,
    history: &History,
    witness: &Witness,
    cluster: &mut Cluster,
    began: Instant,
) -> anyhow::Result<(Inputs, Stats, Option<String>)> {
    let first = cluster.ids()[0];
    let mut admin = cluster.admin(first)?;
    admin.upsert_tenant(pa::UpsertTenantRequest { id: workload::TENANT.into(), ..Default::default() }).await?;
    admin.upsert_tenant(pa::UpsertTenantRequest { id: workload::INTRUDER.into(), ..Default::default() }).await?;
    // The intruder registers the same code, so it can hold tasks of its own (delayed past
    // the run) that the workload tenant's listings must never show.
    for tenant in [workload::TENANT, workload::INTRUDER] {
        cluster
            .tenant(first, tenant)?
            .register_code(pv::RegisterCodeRequest {
                name: workload::CODE.into(),
                image: IMAGE.into(),
                command: vec!["sh".into(), "-c".into(), witness::SCRIPT.into()],
                env: [("WITNESS_PORT".to_string(), witness.port.to_string())].into(),
                ..Default::default()
            })
            .await?;
    }
    workload::queue_foreign(history, &mut cluster.tenant(first, workload::INTRUDER)?).await?;
    let mut agents = Vec::new();
    for n in 0..opts.agents {
        let extra = format!("network_mode = \"host\"\nstop_grace = \"{}ms\"\n", STOP_GRACE.as_millis());
        agents.push(cluster.start_agent(&format!("chaos{n}"), AgentOptions { slots: 3, extra_config: extra })?);
    }

    let net = cluster.net().cloned().context("a chaos cluster is proxied")?;
    if opts.scenario == Scenario::Wan {
        let regions = wan::Regions::new(cluster.ids(), agents.iter().map(|a| a.id.clone()).collect());
        let n = regions.apply(&net, Duration::from_millis(50), Duration::from_millis(5));
        history.nemesis(format!("regions: {}; {n} links between regions delayed 50±5 ms each way", regions.describe()));
    }
    let creds = cluster.creds(drover_identity::Role::Tenant, workload::TENANT)?;
    let addrs: Vec<String> = cluster.ids().into_iter().map(|id| cluster.client_addr(id)).collect();
    let wl = WorkloadConfig {
        addrs: addrs.clone(),
        creds: creds.clone(),
        clients: 2,
        pace: Duration::from_millis(300),
        ticks: 2..=12,
        long_share: 0.1,
        long_ticks: 30..=80,
        seed: opts.seed,
        intruder: cluster.creds(drover_identity::Role::Tenant, workload::INTRUDER)?,
        cancel_share: 0.08,
        list_share: 0.08,
    };
    let stop = CancellationToken::new();
    let load = tokio::spawn(workload::run(wl, history.clone(), stop.clone()));
    // The zombie goes on through the settle phase, when re-leased tasks run.
    let zombie_stop = CancellationToken::new();
    let zombie_agents = agents
        .iter()
        .map(|a| Ok((a.id.clone(), cluster.creds(drover_identity::Role::Agent, &a.id)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let prober = tokio::spawn(zombie::probe_authority(
        cluster.ids().into_iter().map(|id| (id, cluster.client_addr(id))).collect(),
        zombie_agents[0].clone(),
        history.clone(),
        zombie_stop.clone(),
    ));
    let zombie = tokio::spawn(zombie::run(
        zombie::ZombieConfig {
            addrs: addrs.clone(),
            agents: zombie_agents,
            via: cluster.ids().into_iter().map(|id| (cluster.addr(id).to_string(), cluster.client_addr(id))).collect(),
        },
        witness.clone(),
        history.clone(),
        zombie_stop.clone(),
    ));

    // Quiet until the load floor is reached.
    let floor = eventually(Duration::from_secs(30), "the load floor before the first fault", || async {
        let acked = check::acknowledged(&history.events()).count();
        (acked >= LOAD_FLOOR).then_some(acked)
    })
    .await;
    let (_, term_before) = leader_term(cluster).await?;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let until = Instant::now() + opts.duration;
    let mut faults = 0usize;
    let mut kills = Vec::new();
    let mut nemesis = Nemesis::new(opts.scenario, cluster, &agents, &net);
    let cycles = async {
        while Instant::now() < until {
            tokio::time::sleep(opts.scenario.quiet(&mut rng)).await;
            if Instant::now() >= until {
                break;
            }
            let kind = nemesis.next_kind(&mut rng);
            let hold = opts.scenario.hold(kind, LEASE_TTL, &mut rng);
            let (leader, _) = match leader_term(nemesis.cluster).await {
                Ok(l) => l,
                Err(e) => {
                    history.nemesis(format!("no leader before a fault: {e}"));
                    continue;
                }
            };
            let Some(injected) = nemesis.inject(kind, leader, &mut rng).await? else {
                history.nemesis(format!("no {} fault possible now", kind.name()));
                continue;
            };
            faults += 1;
            if injected.leader_killed {
                kills.push(history.now_ms());
            }
            history.fault(injected.kind.name(), &injected.target, injected.action, injected.cut_off);
            tokio::time::sleep(hold).await;
            let healed = nemesis.heal().await?;
            history.nemesis(format!("heal: {healed}"));
        }
        anyhow::Ok(())
    };
    let nemesis_result = cycles.await;
    stop.cancel();
    let _ = load.await;
    let healed = nemesis.heal().await?;
    history.nemesis(format!("heal all: {healed}"));
    drop(nemesis);
    nemesis_result?;
    let heal_at = Instant::now();

    // Settle: a write is accepted, all acknowledged work ends, members converge.
    let mut settled = Settled::default();
    let mut probe = cluster.tenant(first, workload::TENANT)?;
    let probe_id = 1_000_000_000 + opts.seed % 1_000_000;
    let deadline = Instant::now() + Duration::from_secs(30);
    let accepted = loop {
        if workload::queue_one(history, "settle", &mut probe, "settle-probe", probe_id, 1).await == Kind::Ok {
            break Ok(());
        }
        if Instant::now() >= deadline {
            break Err("no write accepted within 30 s of heal".to_string());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    settled.write_after_heal = Some(accepted.map(|()| ms(heal_at.elapsed())));

    let final_tasks = settle_tasks(cluster, &mut settled).await;
    zombie_stop.cancel();
    let _ = zombie.await;
    let _ = prober.await;
    let final_tasks = final_tasks?;
    // Containers of stopped executions end within the stop grace; wait for them.
    let _ = eventually(Duration::from_secs(20), "no execution still open", || async {
        witness.executions().1.is_empty().then_some(())
    })
    .await;
    let converged = eventually(Duration::from_secs(30), "identical replicas", || async {
        cluster.identical_replicas().await.ok().map(|(applied, _)| applied)
    })
    .await;
    settled.converge_ms = converged.is_ok().then(|| ms(heal_at.elapsed()));
    settled.converged = Some(converged.map_err(|e| format!("{e:#}")));
    let (_, term_after) = leader_term(cluster).await?;

    let mut logs: Vec<(String, String)> =
        cluster.ids().into_iter().map(|id| (format!("server {id}"), cluster.log(id))).collect();
    logs.extend(agents.iter().map(|a| (format!("agent {}", a.id), a.log())));
    drop(agents);

    let events = history.events();
    let stats = Stats {
        operations: events.iter().filter(|e| e.kind == Kind::Invoke && e.process.starts_with("client")).count(),
        queued_ok: check::acknowledged(&events).count(),
        queued_unknown: events.iter().filter(|e| e.kind == Kind::Info && matches!(e.op, Op::Queue { .. })).count(),
        reads_ok: events.iter().filter(|e| e.kind == Kind::Ok && matches!(e.op, Op::Get { .. })).count(),
        cancels_ok: events.iter().filter(|e| e.kind == Kind::Ok && matches!(e.op, Op::Cancel { .. })).count(),
        cancels_refused: events
            .iter()
            .filter(|e| matches!(e.op, Op::Cancel { .. }) && e.status() == Some("FailedPrecondition"))
            .count(),
        pages_ok: events.iter().filter(|e| e.kind == Kind::Ok && matches!(e.op, Op::List { .. })).count(),
        faults,
        faults_by_kind: history::faults_by_kind(&events),
        executions: 0,
        tasks: 0,
        leader_changes: term_after.saturating_sub(term_before),
        write_recovery_ms: kills.iter().filter_map(|k| recovery_ms(&events, *k)).collect(),
        converge_ms: settled.converge_ms,
    };
    let kinds_needed = opts.scenario.min_kinds(opts.duration);
    let invalid = match floor {
        Err(e) => Some(format!("load floor not reached: {e:#}")),
        Ok(_) if faults == 0 => Some("no fault was injected".to_string()),
        Ok(_) if stats.faults_by_kind.len() < kinds_needed => Some(format!(
            "{} distinct kinds of fault happened ({}), a {} run of {} needs {kinds_needed}",
            stats.faults_by_kind.len(),
            stats.faults_by_kind.keys().cloned().collect::<Vec<_>>().join(", "),
            opts.scenario.name(),
            humantime::format_duration(opts.duration),
        )),
        Ok(_) if opts.scenario.needs_leader_change() && stats.leader_changes == 0 => {
            Some("the leader never changed".to_string())
        }
        Ok(_) => None,
    };
    let _ = began;
    let inputs = Inputs { final_tasks, logs, settle: settled, ..Default::default() };
    Ok((inputs, stats, invalid))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds from `kill_ms` until the first queue call invoked after it succeeded.
fn recovery_ms(events: &[Event], kill_ms: u64) -> Option<u64> {
    let mut invoked: BTreeMap<&str, u64> = BTreeMap::new();
    for e in events {
        match (e.kind, &e.op) {
            (Kind::Invoke, Op::Queue { .. }) => {
                invoked.insert(&e.process, e.t_ms);
            }
            (Kind::Ok, Op::Queue { .. }) if invoked.get(e.process.as_str()).is_some_and(|t| *t >= kill_ms) => {
                return Some(e.t_ms - kill_ms);
            }
            _ => {}
        }
    }
    None
}

/// Waits until every task of the workload's tenant has ended, or [`SETTLE`] has passed
/// with none ending (or [`SETTLE_MAX`] in all); returns each task's final view (with its
/// payload id).
async fn settle_tasks(
    cluster: &Cluster,
    settled: &mut Settled,
) -> anyhow::Result<BTreeMap<u64, crate::history::TaskView>> {
    let first = cluster.ids()[0];
    let start = Instant::now();
    let mut until = start + SETTLE;
    let mut fewest_open = usize::MAX;
    loop {
        let mut client = cluster.tenant(first, workload::TENANT)?;
        let tasks = list_all(&mut client).await;
        if let Ok(tasks) = &tasks {
            let open: Vec<u64> = tasks.iter().filter(|t| !workload::view(t).terminal()).map(|t| t.id).collect();
            if open.len() < fewest_open {
                fewest_open = open.len();
                until = (Instant::now() + SETTLE).min(start + SETTLE_MAX);
            }
            if open.is_empty() || Instant::now() >= until {
                settled.unfinished = open;
                let mut out = BTreeMap::new();
                for t in tasks {
                    // Reads may meet an election (retried until the deadline, plus grace).
                    let full = eventually(Duration::from_secs(15), "reading a task after heal", || {
                        let mut client = client.clone();
                        async move {
                            client.get_task(pv::GetTaskRequest { id: t.id, include_payload: true }).await.ok()
                        }
                    })
                    .await?;
                    out.insert(t.id, workload::view(&full.into_inner()));
                }
                return Ok(out);
            }
        } else if Instant::now() >= until {
            anyhow::bail!("listing tasks after heal: {:?}", tasks.err());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn list_all(client: &mut crate::clients::Tenant) -> Result<Vec<pv::Task>, tonic::Status> {
    let mut out = Vec::new();
    let mut after_id = 0;
    loop {
        let page =
            client.list_tasks(pv::ListTasksRequest { after_id, limit: 500, ..Default::default() }).await?.into_inner();
        out.extend(page.tasks);
        if page.next_after_id == 0 {
            return Ok(out);
        }
        after_id = page.next_after_id;
    }
}
