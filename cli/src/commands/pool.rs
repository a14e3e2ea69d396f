//! `drover pool create|list|delete` (operator) and `drover pool ips` (tenant): IP pools,
//! sets of egress addresses. An agent registered with a pool and one of its addresses
//! sends its tasks' traffic from that address; a tenant in ip_whitelist mode runs only on
//! its pool's agents, so its firewalls can admit the pool's addresses and nothing else.

use clap::{Args, Subcommand};
use drover_proto::admin as pa;
use drover_proto::admin::admin_client::AdminClient;
use drover_proto::v1 as pv;

use super::client::{self, Conn, explain, with_leader};
use super::output::{Format, print_json};

#[derive(Args)]
pub struct PoolArgs {
    #[command(flatten)]
    conn: Conn,
    /// Output format: aligned tables for people, or JSON for scripts.
    #[arg(long, short = 'o', value_enum, default_value = "table", global = true)]
    output: Format,
    #[command(subcommand)]
    cmd: PoolCmd,
}

#[derive(Subcommand)]
enum PoolCmd {
    /// Create a pool, or replace its addresses (operator).
    Create {
        /// The pool's name (1..=128 of A-Za-z0-9._-).
        name: String,
        /// An egress address (IPv4, repeatable; at most 256).
        #[arg(long = "ip", required = true)]
        ips: Vec<String>,
    },
    /// Every pool: its tenant, and per address the agents sending from it (operator).
    List,
    /// Delete a pool no tenant uses and no agent is registered with (operator).
    Delete {
        /// The pool to delete.
        name: String,
    },
    /// Your pool's egress addresses, to admit in your firewalls (tenant in ip_whitelist
    /// mode). An address marked "idle" has no connected agent sending from it now.
    Ips,
}

fn pool_json(p: &pa::PoolInfo) -> serde_json::Value {
    let addresses: Vec<_> = p
        .addresses
        .iter()
        .map(|a| serde_json::json!({ "address": a.address, "agents": a.agents, "live": a.live }))
        .collect();
    serde_json::json!({ "name": p.name, "tenant": p.tenant, "created_ms": p.created_ms, "addresses": addresses })
}

fn live_text(live: bool) -> &'static str {
    if live { "live" } else { "idle" }
}

pub async fn run(a: PoolArgs) -> anyhow::Result<()> {
    match a.cmd {
        PoolCmd::Create { name, ips } => {
            let req = pa::CreatePoolRequest { name, addresses: ips };
            let p = with_leader(&a.conn, |ch| {
                let req = req.clone();
                async move { AdminClient::new(ch).create_pool(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            match a.output {
                Format::Json => print_json(&pool_json(&p)),
                Format::Table => outln!("pool {} saved with {} addresses", p.name, p.addresses.len()),
            }
        }
        PoolCmd::List => {
            let r = with_leader(&a.conn, |ch| async move {
                AdminClient::new(ch).list_pools(pa::ListPoolsRequest {}).await.map(|r| r.into_inner())
            })
            .await?;
            match a.output {
                Format::Json => print_json(&serde_json::Value::Array(r.pools.iter().map(pool_json).collect())),
                Format::Table => {
                    outln!("{:<24} {:<20} {:<16} {:<5}  AGENTS", "POOL", "TENANT", "ADDRESS", "STATE");
                    for p in &r.pools {
                        let tenant = if p.tenant.is_empty() { "-" } else { p.tenant.as_str() };
                        for addr in &p.addresses {
                            let agents = if addr.agents.is_empty() { "-".to_string() } else { addr.agents.join(",") };
                            outln!(
                                "{:<24} {:<20} {:<16} {:<5}  {}",
                                p.name,
                                tenant,
                                addr.address,
                                live_text(addr.live),
                                agents
                            );
                        }
                    }
                }
            }
        }
        PoolCmd::Delete { name } => {
            with_leader(&a.conn, |ch| {
                let req = pa::DeletePoolRequest { name: name.clone() };
                async move { AdminClient::new(ch).delete_pool(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            outln!("pool {name} deleted");
        }
        PoolCmd::Ips => {
            let mut t = client::tenant(&a.conn).await?;
            let r = t.list_pool_ips(pv::ListPoolIpsRequest {}).await.map_err(|s| explain(&s))?.into_inner();
            match a.output {
                Format::Json => {
                    let addrs: Vec<_> = r
                        .addresses
                        .iter()
                        .map(|a| serde_json::json!({ "address": a.address, "live": a.live }))
                        .collect();
                    print_json(&serde_json::json!({ "pool": r.pool, "addresses": addrs }));
                }
                Format::Table => {
                    outln!("pool {}", r.pool);
                    for addr in &r.addresses {
                        outln!("{:<16} {}", addr.address, live_text(addr.live));
                    }
                }
            }
        }
    }
    Ok(())
}
