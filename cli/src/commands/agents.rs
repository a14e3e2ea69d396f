//! `drover agents list` (operator): the agents the cluster knows and what they run.

use clap::{Args, Subcommand};
use drover_proto::admin as pa;
use drover_proto::admin::admin_client::AdminClient;

use super::client::{Conn, with_leader};
use super::output::{Format, print_json};

#[derive(Args)]
pub struct AgentsArgs {
    #[command(flatten)]
    conn: Conn,
    #[arg(long, short = 'o', value_enum, default_value = "table", global = true)]
    output: Format,
    #[command(subcommand)]
    cmd: AgentsCmd,
}

#[derive(Subcommand)]
enum AgentsCmd {
    List,
}

pub async fn run(a: AgentsArgs) -> anyhow::Result<()> {
    let AgentsCmd::List = a.cmd;
    let r = with_leader(&a.conn, |ch| async move {
        AdminClient::new(ch).list_agents(pa::ListAgentsRequest {}).await.map(|r| r.into_inner())
    })
    .await?;
    match a.output {
        Format::Json => print_json(&serde_json::Value::Array(
            r.agents
                .iter()
                .map(|g| {
                    serde_json::json!({
                        "id": g.id, "region": g.region, "cluster": g.cluster, "vpc": g.vpc, "ip_pool": g.ip_pool,
                        "egress_ip": g.egress_ip, "labels": g.labels, "slots": g.slots,
                        "running_tasks": g.running_tasks, "first_seen_ms": g.first_seen_ms, "updated_ms": g.updated_ms,
                        "connected": g.connected, "gone_since_ms": g.gone_since_ms,
                    })
                })
                .collect(),
        )),
        Format::Table => {
            outln!(
                "{:<24} {:<10} {:<12} {:<12} {:>6} {:>8}  LABELS",
                "AGENT",
                "STATUS",
                "REGION",
                "CLUSTER",
                "SLOTS",
                "RUNNING"
            );
            for g in r.agents {
                let mut labels: Vec<String> = g.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                labels.sort();
                outln!(
                    "{:<24} {:<10} {:<12} {:<12} {:>6} {:>8}  {}",
                    g.id,
                    if g.connected { "connected" } else { "gone" },
                    g.region,
                    g.cluster,
                    g.slots,
                    g.running_tasks,
                    labels.join(",")
                );
            }
        }
    }
    Ok(())
}
