//! `drover`: one binary for every role. This file only parses arguments and dispatches
//! to the command modules; the logic lives in the libraries.

/// `println!` for command output: a closed pipe (`drover ... | head`) ends the command
/// quietly, as Unix tools do, instead of a panic.
macro_rules! outln {
    () => { $crate::commands::output::emit(format_args!(""), true) };
    ($($t:tt)*) => { $crate::commands::output::emit(format_args!($($t)*), true) };
}

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// sled and openraft allocate and free many short-lived buffers per write; glibc's
/// allocator spent a fifth of the server's CPU on that under load (perf), mimalloc far less.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "drover", version, about = "Run other people's code in containers, on demand and on schedule")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a control-plane node.
    Server(commands::server::ServerArgs),
    /// Operator commands (cluster membership and status).
    Operator(commands::operator::OperatorArgs),
    /// Manage tenants (operator).
    Tenant(commands::tenant::TenantArgs),
    /// A whole fleet on this machine: control plane, certificates and an agent.
    Dev(commands::dev::DevArgs),
    /// List, register and deregister the fleet's agents (operator).
    Agents(commands::agents::AgentsArgs),
    /// Runner clusters, shared or dedicated to a tenant (operator).
    Cluster(commands::cluster::ClusterArgs),
    /// IP pools: egress addresses for ip_whitelist tenants (operator; `ips`: tenant).
    Pool(commands::pool::PoolArgs),
    /// Logins for private images on a registry (tenant).
    Registry(commands::registry::RegistryArgs),
    /// Register and manage codes (tenant).
    Code(commands::code::CodeArgs),
    /// Queue, inspect, follow and wait for tasks (tenant).
    Task(commands::task::TaskArgs),
    /// Queue tasks on a cron expression or a fixed period (tenant).
    Schedule(commands::schedule::ScheduleArgs),
    /// Run a runner agent, or inspect and drain one on this host.
    Agent(commands::agent::AgentArgs),
    /// Create a CA and issue role certificates.
    Certs(commands::certs::CertsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DROVER_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn,h2=warn,tower=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Commands answer an exit code; `task wait` passes the task's own through.
    let result: anyhow::Result<u8> = runtime.block_on(async {
        let done = match cli.command {
            Command::Server(a) => commands::server::run(a).await,
            Command::Operator(a) => commands::operator::run(a).await,
            Command::Tenant(a) => commands::tenant::run(a).await,
            Command::Certs(a) => commands::certs::run(a),
            Command::Agent(a) => commands::agent::run(a).await,
            Command::Code(a) => commands::code::run(a).await,
            Command::Agents(a) => commands::agents::run(a).await,
            Command::Cluster(a) => commands::cluster::run(a).await,
            Command::Pool(a) => commands::pool::run(a).await,
            Command::Registry(a) => commands::registry::run(a).await,
            Command::Schedule(a) => commands::schedule::run(a).await,
            Command::Dev(a) => commands::dev::run(a).await,
            Command::Task(a) => return commands::task::run(a).await,
        };
        done.map(|()| 0)
    });
    match result {
        Ok(code) => ExitCode::from(code),
        // The reader went away (`| head`): not an error worth a word.
        Err(e) if commands::output::broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand and every flag or argument a user can type says what it is for in
    /// `--help` (clap's own `--help`/`--version` aside). Lists every gap, not the first.
    #[test]
    fn every_command_and_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, gaps: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") || arg.is_hide_set() {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    gaps.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() == "help" || sub.is_hide_set() {
                    continue;
                }
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    gaps.push(format!("{sub_path} (the command)"));
                }
                walk(sub, &sub_path, gaps);
            }
        }
        let mut gaps = Vec::new();
        walk(&super::Cli::command(), "drover", &mut gaps);
        assert!(gaps.is_empty(), "without help text:\n{}", gaps.join("\n"));
    }
}
