//! `drover-chaos`: runs fault-injection scenarios against real `drover` processes on
//! loopback and checks the recorded history for violations of Drover's invariants.
//!
//! ```text
//! drover-chaos list
//! drover-chaos run --scenario leader-kill [--seed N] [--duration 30s] [--servers 3] [--agents 2]
//! drover-chaos suite ci|long [--seed N]
//! ```
//! Exit status: 0 when every run passed, 1 when any found a violation or was invalid,
//! 2 when a run could not be carried out.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use drover_chaos::run::{self, Report, RunOptions};
use drover_chaos::scenario::{self, Scenario};

#[derive(Parser)]
#[command(
    name = "drover-chaos",
    version,
    about = "Fault injection against real drover processes, with a history checker"
)]
struct Cli {
    /// The `drover` binary to run (default: next to this one).
    #[arg(long, global = true)]
    drover: Option<PathBuf>,
    /// Where run folders go (kept for failing runs).
    #[arg(long, global = true, default_value = "target/chaos")]
    out: PathBuf,
    /// Keep the folders of passing runs too.
    #[arg(long, global = true)]
    keep: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The scenarios and the faults each injects.
    List,
    /// One scenario.
    Run {
        #[arg(long)]
        scenario: String,
        /// Seeds the fault schedule, the proxies' jitter and the workload.
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 3)]
        servers: u64,
        #[arg(long, default_value_t = 2)]
        agents: usize,
        /// Run the servers with a deliberate defect (debug builds), to see the checker
        /// catch it: accept-stale-epochs, ack-before-commit, renew-without-quorum,
        /// cancel-before-commit.
        #[arg(long = "break")]
        breaks: Vec<String>,
    },
    /// A set of scenarios: `ci` (every scenario but wan once, 20 s each, mixed 30 s) or
    /// `long` (90 s each, three seeds, one with five servers).
    Suite {
        which: Suite,
        #[arg(long)]
        seed: Option<u64>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Suite {
    Ci,
    Long,
}

/// How long `suite ci` runs a scenario's faults: 20 s, and 30 s for `mixed`, whose
/// validity needs distinct kinds of fault (see `Scenario::min_kinds`) and whose menu is
/// seven kinds long.
fn ci_duration(s: Scenario) -> Duration {
    Duration::from_secs(if s == Scenario::Mixed { 30 } else { 20 })
}

fn fresh_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
}

fn drover_bin(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let me = std::env::current_exe()?;
    let p = me.with_file_name("drover");
    anyhow::ensure!(p.exists(), "no drover binary at {} (build it, or pass --drover)", p.display());
    Ok(p)
}

async fn run_all(runs: Vec<RunOptions>) -> ExitCode {
    let mut reports: Vec<Report> = Vec::new();
    let mut broken = false;
    for opts in &runs {
        eprintln!(
            "== {} seed {} for {} ==",
            opts.scenario.name(),
            opts.seed,
            humantime::format_duration(opts.duration)
        );
        let r = tokio::select! {
            r = run::run(opts) => r,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("interrupted: every process is being stopped");
                return ExitCode::from(2);
            }
        };
        match r {
            Ok(r) => {
                print!("{}", r.human());
                reports.push(r);
            }
            Err(e) => {
                println!("{} seed {}: ERROR {e:#}", opts.scenario.name(), opts.seed);
                broken = true;
            }
        }
    }
    if runs.len() > 1 {
        println!(
            "\n{:<20} {:>6} {:>9} {:>6} {:>6} {:>10} {:>14} {:>12}",
            "scenario", "result", "ops", "tasks", "faults", "violations", "recovery p50/max ms", "settled ms"
        );
        for r in &reports {
            let mut rec = r.stats.write_recovery_ms.clone();
            rec.sort_unstable();
            let rec =
                if rec.is_empty() { "-".to_string() } else { format!("{}/{}", rec[rec.len() / 2], rec[rec.len() - 1]) };
            println!(
                "{:<20} {:>6} {:>9} {:>6} {:>6} {:>10} {:>14} {:>12}",
                r.scenario,
                if r.passed() {
                    "pass"
                } else if r.invalid.is_some() {
                    "invalid"
                } else {
                    "FAIL"
                },
                r.stats.operations,
                r.stats.tasks,
                r.stats.faults,
                r.violations(),
                rec,
                r.stats.converge_ms.map_or("-".to_string(), |m| m.to_string())
            );
        }
    }
    if broken {
        ExitCode::from(2)
    } else if reports.iter().all(|r| r.passed() || r.skipped.is_some()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let base = |scenario, seed, duration, servers, agents| -> anyhow::Result<RunOptions> {
        Ok(RunOptions {
            breaks: Vec::new(),
            scenario,
            seed,
            duration,
            servers,
            agents,
            drover: drover_bin(cli.drover.clone())?,
            out: cli.out.clone(),
            keep: cli.keep,
        })
    };
    let runs: anyhow::Result<Vec<RunOptions>> = match &cli.cmd {
        Cmd::List => {
            for s in scenario::ALL {
                println!("{:<20} {}", s.name(), s.about());
            }
            return ExitCode::SUCCESS;
        }
        Cmd::Run { scenario, seed, duration, servers, agents, breaks } => match Scenario::parse(scenario) {
            None => {
                eprintln!("error: unknown scenario {scenario:?}; `drover-chaos list` shows them");
                return ExitCode::from(2);
            }
            Some(s) => base(s, seed.unwrap_or_else(fresh_seed), *duration, *servers, *agents)
                .map(|r| vec![RunOptions { breaks: breaks.clone(), ..r }]),
        },
        Cmd::Suite { which, seed } => {
            let seed = seed.unwrap_or_else(fresh_seed);
            match which {
                Suite::Ci => scenario::ALL
                    .into_iter()
                    .filter(|s| s.in_ci())
                    .enumerate()
                    .map(|(i, s)| base(s, seed.wrapping_add(i as u64), ci_duration(s), 3, 2))
                    .collect(),
                Suite::Long => scenario::ALL
                    .into_iter()
                    .flat_map(|s| (0..3u64).map(move |k| (s, k)))
                    .map(|(s, k)| {
                        base(s, seed.wrapping_add(k * 101), Duration::from_secs(90), if k == 2 { 5 } else { 3 }, 3)
                    })
                    .collect(),
            }
        }
    };
    match runs {
        Ok(runs) => run_all(runs).await,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
