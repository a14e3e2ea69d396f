//! `drover agents list|register|deregister` (operator): the agents the cluster knows, what
//! each runs, and what each may serve. A registration is the source of an agent's
//! cluster, region, VPC, IP pool and egress address; the agent's own claims must match it.

use clap::{Args, Subcommand};
use drover_proto::admin as pa;
use drover_proto::admin::admin_client::AdminClient;

use super::client::{Conn, with_leader};
use super::output::{Format, print_json};

#[derive(Args)]
pub struct AgentsArgs {
    #[command(flatten)]
    conn: Conn,
    /// Output format: aligned tables for people, or JSON for scripts.
    #[arg(long, short = 'o', value_enum, default_value = "table", global = true)]
    output: Format,
    #[command(subcommand)]
    cmd: AgentsCmd,
}

#[derive(Subcommand)]
enum AgentsCmd {
    /// Every agent seen or registered, connected or gone, with what it runs.
    List,
    /// Say what agent ID may serve (registering again replaces it).
    Register(Box<RegisterArgs>),
    /// Remove an agent's registration (it then serves the shared fleet, if unregistered
    /// agents are allowed).
    Deregister {
        /// The agent's id.
        id: String,
    },
}

#[derive(Args)]
struct RegisterArgs {
    /// The agent's id (its certificate's identity).
    id: String,
    /// The dedicated or shared cluster it serves (default: the shared fleet).
    #[arg(long, default_value = "")]
    cluster: String,
    /// The region it runs in.
    #[arg(long, default_value = "")]
    region: String,
    /// The tenant VPC it runs in.
    #[arg(long, default_value = "")]
    vpc: String,
    /// The IP-whitelist pool it serves.
    #[arg(long, default_value = "")]
    ip_pool: String,
    /// The address its tasks' connections leave from.
    #[arg(long, default_value = "")]
    egress_ip: String,
    /// Labels, KEY=VALUE (repeat for several; none: the agent's own labels are used).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = super::placement::label)]
    labels: Vec<(String, String)>,
}

fn registration_json(r: &pa::AgentRegistration) -> serde_json::Value {
    serde_json::json!({
        "id": r.id, "cluster": r.cluster, "region": r.region, "vpc": r.vpc, "ip_pool": r.ip_pool,
        "egress_ip": r.egress_ip, "labels": r.labels, "registered_ms": r.registered_ms,
    })
}

pub async fn run(a: AgentsArgs) -> anyhow::Result<()> {
    match a.cmd {
        AgentsCmd::List => list(&a.conn, a.output).await,
        AgentsCmd::Register(r) => {
            let reg = pa::AgentRegistration {
                id: r.id,
                cluster: r.cluster,
                region: r.region,
                vpc: r.vpc,
                ip_pool: r.ip_pool,
                egress_ip: r.egress_ip,
                labels: r.labels.into_iter().collect(),
                registered_ms: 0,
            };
            let out = with_leader(&a.conn, |ch| {
                let req = pa::RegisterAgentRequest { registration: Some(reg.clone()) };
                async move { AdminClient::new(ch).register_agent(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            match a.output {
                Format::Json => print_json(&registration_json(&out)),
                Format::Table => outln!(
                    "agent {} registered: cluster {:?}, region {:?}, vpc {:?}, ip pool {:?}, egress {:?}",
                    out.id,
                    out.cluster,
                    out.region,
                    out.vpc,
                    out.ip_pool,
                    out.egress_ip
                ),
            }
            Ok(())
        }
        AgentsCmd::Deregister { id } => {
            with_leader(&a.conn, |ch| {
                let req = pa::DeregisterAgentRequest { id: id.clone() };
                async move { AdminClient::new(ch).deregister_agent(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            outln!("agent {id} deregistered");
            Ok(())
        }
    }
}

async fn list(conn: &Conn, output: Format) -> anyhow::Result<()> {
    let r = with_leader(conn, |ch| async move {
        AdminClient::new(ch).list_agents(pa::ListAgentsRequest {}).await.map(|r| r.into_inner())
    })
    .await?;
    match output {
        Format::Json => print_json(&serde_json::Value::Array(
            r.agents
                .iter()
                .map(|g| {
                    serde_json::json!({
                        "id": g.id, "region": g.region, "cluster": g.cluster, "vpc": g.vpc, "ip_pool": g.ip_pool,
                        "egress_ip": g.egress_ip, "labels": g.labels, "slots": g.slots,
                        "running_tasks": g.running_tasks, "first_seen_ms": g.first_seen_ms, "updated_ms": g.updated_ms,
                        "connected": g.connected, "gone_since_ms": g.gone_since_ms,
                        "registration": g.registration.as_ref().map(registration_json),
                    })
                })
                .collect(),
        )),
        Format::Table => {
            outln!(
                "{:<24} {:<10} {:<10} {:<12} {:<12} {:>6} {:>8}  LABELS",
                "AGENT",
                "STATUS",
                "REGISTERED",
                "REGION",
                "CLUSTER",
                "SLOTS",
                "RUNNING"
            );
            for g in r.agents {
                let mut labels: Vec<String> = g.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                labels.sort();
                let status = match (g.connected, g.first_seen_ms) {
                    (true, _) => "connected",
                    (false, 0) => "never",
                    (false, _) => "gone",
                };
                let (region, cluster) = match &g.registration {
                    Some(r) if g.first_seen_ms == 0 => (r.region.clone(), r.cluster.clone()),
                    _ => (g.region.clone(), g.cluster.clone()),
                };
                outln!(
                    "{:<24} {:<10} {:<10} {:<12} {:<12} {:>6} {:>8}  {}",
                    g.id,
                    status,
                    if g.registration.is_some() { "yes" } else { "no" },
                    region,
                    cluster,
                    g.slots,
                    g.running_tasks,
                    labels.join(",")
                );
            }
        }
    }
    Ok(())
}
