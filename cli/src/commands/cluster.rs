//! `drover cluster create|list|delete` (operator): runner clusters, shared or dedicated to
//! one tenant. A dedicated cluster's agents run only its owner's tasks, and only its owner
//! may place work on it.

use clap::{Args, Subcommand};
use drover_proto::admin as pa;
use drover_proto::admin::admin_client::AdminClient;

use super::client::{Conn, with_leader};
use super::output::{Format, print_json};

#[derive(Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    conn: Conn,
    /// Output format: aligned tables for people, or JSON for scripts.
    #[arg(long, short = 'o', value_enum, default_value = "table", global = true)]
    output: Format,
    #[command(subcommand)]
    cmd: ClusterCmd,
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Create a cluster, or change its guaranteed slots.
    Create {
        /// The cluster's name (1..=128 of A-Za-z0-9._-).
        name: String,
        /// The tenant it is dedicated to (default: a shared cluster any tenant may use).
        #[arg(long)]
        owner: Option<String>,
        /// Slots promised to the owner (compared with the connected agents' slots in `list`).
        #[arg(long, default_value_t = 0)]
        guaranteed_slots: u32,
    },
    /// Every cluster: owner, registered and connected agents, slots against the guarantee.
    List,
    /// Delete a cluster that no agent is registered to.
    Delete {
        /// The cluster to delete.
        name: String,
    },
    /// Set the most one task may ask for on a cluster, or on the shared fleet (`--shared`);
    /// a flag left out (or 0) means no ceiling on it. Codes already registered keep theirs.
    Ceilings {
        /// The cluster (omit with --shared).
        #[arg(required_unless_present = "shared", conflicts_with = "shared")]
        name: Option<String>,
        /// Set the shared fleet's ceilings instead of a cluster's.
        #[arg(long)]
        shared: bool,
        /// For example 8GiB.
        #[arg(long)]
        memory: Option<bytesize::ByteSize>,
        /// CPUs, for example 4 or 0.5.
        #[arg(long)]
        cpus: Option<f64>,
        /// Processes per task.
        #[arg(long)]
        pids: Option<u32>,
    },
}

fn ceilings_json(c: Option<&pa::Ceilings>) -> serde_json::Value {
    let c = c.copied().unwrap_or_default();
    serde_json::json!({ "max_memory_bytes": c.max_memory_bytes, "max_cpu_millis": c.max_cpu_millis, "max_pids": c.max_pids })
}

fn cluster_json(c: &pa::ClusterInfo) -> serde_json::Value {
    serde_json::json!({
        "name": c.name, "owner": c.owner, "guaranteed_slots": c.guaranteed_slots, "created_ms": c.created_ms,
        "registered_agents": c.registered_agents, "connected_slots": c.connected_slots,
        "ceilings": ceilings_json(c.ceilings.as_ref()),
    })
}

/// Ceilings for people: `64.0 GiB, 64 CPUs, 32768 pids` (`-` for no ceiling).
fn ceilings_text(c: Option<&pa::Ceilings>) -> String {
    let c = c.copied().unwrap_or_default();
    let or_none = |v: u64, f: &dyn Fn(u64) -> String| if v == 0 { "-".to_string() } else { f(v) };
    format!(
        "{} mem, {} CPUs, {} pids",
        or_none(c.max_memory_bytes, &|v| bytesize::ByteSize(v).to_string()),
        or_none(c.max_cpu_millis.into(), &|v| format!("{}", v as f64 / 1000.0)),
        or_none(c.max_pids.into(), &|v| v.to_string())
    )
}

pub async fn run(a: ClusterArgs) -> anyhow::Result<()> {
    match a.cmd {
        ClusterCmd::Create { name, owner, guaranteed_slots } => {
            let req = pa::CreateClusterRequest { name, owner: owner.unwrap_or_default(), guaranteed_slots };
            let c = with_leader(&a.conn, |ch| {
                let req = req.clone();
                async move { AdminClient::new(ch).create_cluster(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            match a.output {
                Format::Json => print_json(&cluster_json(&c)),
                Format::Table if c.owner.is_empty() => outln!("cluster {} (shared)", c.name),
                Format::Table => outln!("cluster {} dedicated to {}", c.name, c.owner),
            }
        }
        ClusterCmd::List => {
            let r = with_leader(&a.conn, |ch| async move {
                AdminClient::new(ch).list_clusters(pa::ListClustersRequest {}).await.map(|r| r.into_inner())
            })
            .await?;
            match a.output {
                Format::Json => print_json(&serde_json::json!({
                    "clusters": r.clusters.iter().map(cluster_json).collect::<Vec<_>>(),
                    "shared_ceilings": ceilings_json(r.shared_ceilings.as_ref()),
                })),
                Format::Table => {
                    outln!(
                        "{:<24} {:<20} {:>8} {:>8} {:>10}  CEILINGS",
                        "CLUSTER",
                        "OWNER",
                        "AGENTS",
                        "SLOTS",
                        "GUARANTEED"
                    );
                    for c in &r.clusters {
                        outln!(
                            "{:<24} {:<20} {:>8} {:>8} {:>10}  {}",
                            c.name,
                            if c.owner.is_empty() { "(shared)" } else { c.owner.as_str() },
                            c.registered_agents,
                            c.connected_slots,
                            c.guaranteed_slots,
                            ceilings_text(c.ceilings.as_ref())
                        );
                    }
                    outln!("shared fleet ceilings: {}", ceilings_text(r.shared_ceilings.as_ref()));
                }
            }
        }
        ClusterCmd::Ceilings { name, shared: _, memory, cpus, pids } => {
            let cpu_millis = match cpus {
                Some(c) if !(0.0..=1024.0).contains(&c) => anyhow::bail!("--cpus {c}: expected 0 to 1024"),
                Some(c) => (c * 1000.0).round() as u32,
                None => 0,
            };
            let ceilings = pa::Ceilings {
                max_memory_bytes: memory.map(|m| m.as_u64()).unwrap_or(0),
                max_cpu_millis: cpu_millis,
                max_pids: pids.unwrap_or(0),
            };
            let req = pa::SetCeilingsRequest { cluster: name.clone().unwrap_or_default(), ceilings: Some(ceilings) };
            let c = with_leader(&a.conn, |ch| {
                let req = req.clone();
                async move { AdminClient::new(ch).set_ceilings(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            match a.output {
                Format::Json => print_json(&ceilings_json(Some(&c))),
                Format::Table => outln!(
                    "{} ceilings: {}",
                    name.as_deref().map(|n| format!("cluster {n}")).unwrap_or_else(|| "shared fleet".into()),
                    ceilings_text(Some(&c))
                ),
            }
        }
        ClusterCmd::Delete { name } => {
            with_leader(&a.conn, |ch| {
                let req = pa::DeleteClusterRequest { name: name.clone() };
                async move { AdminClient::new(ch).delete_cluster(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            outln!("cluster {name} deleted");
        }
    }
    Ok(())
}
