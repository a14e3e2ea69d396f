//! `drover registry login|logout|list` (tenant): logins for private images. The password
//! is read from standard input (`--password-stdin`), never from the command line; the
//! servers keep it sealed and send it only to an agent pulling one of your images.

use std::io::Read;

use anyhow::Context;
use clap::{Args, Subcommand};
use drover_proto::v1 as pv;

use super::client::{Conn, explain, tenant};
use super::output::{Format, print_json};

#[derive(Args)]
pub struct RegistryArgs {
    #[command(flatten)]
    conn: Conn,
    /// Output format: aligned tables for people, or JSON for scripts.
    #[arg(long, short = 'o', value_enum, default_value = "table", global = true)]
    output: Format,
    #[command(subcommand)]
    cmd: RegistryCmd,
}

#[derive(Subcommand)]
enum RegistryCmd {
    /// Save your login for a registry (replaces an earlier one): your tasks whose image is
    /// on it are pulled with it.
    Login {
        /// The registry, host[:port] as your image references name it (docker.io for Docker Hub).
        registry: String,
        /// The registry username.
        #[arg(long, short = 'u')]
        username: String,
        /// Read the password (or token) from standard input; required, so it never appears
        /// in the process list or shell history.
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Remove your login for a registry.
    Logout {
        /// The registry.
        registry: String,
    },
    /// The registries you have logins for, and their usernames.
    List,
}

pub async fn run(a: RegistryArgs) -> anyhow::Result<()> {
    let mut t = tenant(&a.conn).await?;
    match a.cmd {
        RegistryCmd::Login { registry, username, password_stdin: _ } => {
            let mut password = String::new();
            std::io::stdin().read_to_string(&mut password).context("reading the password from standard input")?;
            let password = password.trim_end_matches(['\n', '\r']).to_string();
            let req = pv::RegistryLoginRequest { registry, username, password };
            let r = t.registry_login(req).await.map_err(|s| explain(&s))?.into_inner();
            match a.output {
                Format::Json => print_json(&serde_json::json!({ "registry": r.registry, "saved": r.saved })),
                Format::Table => outln!("login for {} saved", r.registry),
            }
        }
        RegistryCmd::Logout { registry } => {
            let r = t.registry_logout(pv::RegistryLogoutRequest { registry }).await.map_err(|s| explain(&s))?;
            outln!("login for {} removed", r.into_inner().registry);
        }
        RegistryCmd::List => {
            let r =
                t.list_registry_logins(pv::ListRegistryLoginsRequest {}).await.map_err(|s| explain(&s))?.into_inner();
            match a.output {
                Format::Json => {
                    let logins: Vec<_> = r
                        .logins
                        .iter()
                        .map(|l| serde_json::json!({ "registry": l.registry, "username": l.username, "updated_ms": l.updated_ms }))
                        .collect();
                    print_json(&serde_json::Value::Array(logins));
                }
                Format::Table => {
                    outln!("{:<40} USERNAME", "REGISTRY");
                    for l in &r.logins {
                        outln!("{:<40} {}", l.registry, l.username);
                    }
                }
            }
        }
    }
    Ok(())
}
