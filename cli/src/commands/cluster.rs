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
    #[arg(long, short = 'o', value_enum, default_value = "table", global = true)]
    output: Format,
    #[command(subcommand)]
    cmd: ClusterCmd,
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Create a cluster, or change its guaranteed slots.
    Create {
        name: String,
        /// The tenant it is dedicated to (default: a shared cluster any tenant may use).
        #[arg(long)]
        owner: Option<String>,
        /// Slots promised to the owner (compared with the connected agents' slots in `list`).
        #[arg(long, default_value_t = 0)]
        guaranteed_slots: u32,
    },
    List,
    /// Delete a cluster that no agent is registered to.
    Delete {
        name: String,
    },
}

fn cluster_json(c: &pa::ClusterInfo) -> serde_json::Value {
    serde_json::json!({
        "name": c.name, "owner": c.owner, "guaranteed_slots": c.guaranteed_slots, "created_ms": c.created_ms,
        "registered_agents": c.registered_agents, "connected_slots": c.connected_slots,
    })
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
                Format::Json => print_json(&serde_json::Value::Array(r.clusters.iter().map(cluster_json).collect())),
                Format::Table => {
                    outln!("{:<24} {:<20} {:>10} {:>10} {:>10}", "CLUSTER", "OWNER", "AGENTS", "SLOTS", "GUARANTEED");
                    for c in r.clusters {
                        outln!(
                            "{:<24} {:<20} {:>10} {:>10} {:>10}",
                            c.name,
                            if c.owner.is_empty() { "(shared)" } else { c.owner.as_str() },
                            c.registered_agents,
                            c.connected_slots,
                            c.guaranteed_slots
                        );
                    }
                }
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
