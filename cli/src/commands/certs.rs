//! `drover certs init|issue`: a CA and role certificates for mutual TLS.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use drover_identity::certs::{self, LeafSpec, Pem};
use drover_identity::{Role, SpiffeId};

#[derive(Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    cmd: CertsCmd,
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Create a CA: DIR/ca.pem and DIR/ca.key (mode 0600).
    Init {
        /// Directory to write ca.pem and ca.key to.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The CA certificate's common name.
        #[arg(long, default_value = "Drover CA")]
        name: String,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a role certificate signed by DIR/ca.pem: DIR/ROLE-ID.pem and DIR/ROLE-ID.key.
    Issue {
        /// Directory holding ca.pem and ca.key; the new pair is written there too.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// tenant, agent, server or operator.
        #[arg(long)]
        role: Role,
        /// The holder's id: tenant or agent name, server node id, operator name.
        #[arg(long)]
        id: String,
        /// DNS names the holder serves under (servers), repeatable.
        #[arg(long)]
        dns: Vec<String>,
        /// IP addresses the holder serves under (servers), repeatable.
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

pub fn run(a: CertsArgs) -> anyhow::Result<()> {
    match a.cmd {
        CertsCmd::Init { dir, name, days } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
            if key.exists() {
                anyhow::bail!("{} already exists; refusing to overwrite a CA key", key.display());
            }
            let ca = certs::new_ca(&name, days)?;
            certs::write_file(&key, &ca.key, true)?;
            certs::write_file(&cert, &ca.cert, false)?;
            outln!("wrote {} and {}", cert.display(), key.display());
        }
        CertsCmd::Issue { dir, role, id, dns, ip, days } => {
            let ca = Pem {
                cert: std::fs::read_to_string(dir.join("ca.pem"))
                    .context("reading ca.pem (run `drover certs init`)")?,
                key: std::fs::read_to_string(dir.join("ca.key")).context("reading ca.key")?,
            };
            let spec = LeafSpec { dns, ips: ip, ..LeafSpec::new(SpiffeId::new(role, &id)?, days) };
            let leaf = certs::issue(&ca, &spec)?;
            let base = format!("{}-{}", role.as_str(), id);
            let (cert, key) = (dir.join(format!("{base}.pem")), dir.join(format!("{base}.key")));
            certs::write_file(&key, &leaf.key, true)?;
            certs::write_file(&cert, &leaf.cert, false)?;
            outln!("wrote {} and {} for {}", cert.display(), key.display(), spec.id);
        }
    }
    Ok(())
}
