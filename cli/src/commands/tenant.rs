//! `drover tenant create|update|list` (operator, through `drover.admin.v1`).

use clap::{Args, Subcommand};
use drover_proto::admin as pa;
use drover_proto::admin::admin_client::AdminClient;

use super::client::{Conn, with_leader};
use super::output::{Format, print_json};

#[derive(Args)]
pub struct TenantArgs {
    #[command(flatten)]
    conn: Conn,
    /// Output format: aligned tables for people, or JSON for scripts.
    #[arg(long, short = 'o', value_enum, default_value = "table", global = true)]
    output: Format,
    #[command(subcommand)]
    cmd: TenantCmd,
}

#[derive(Subcommand)]
enum TenantCmd {
    /// Create a tenant, or update its limits.
    #[command(alias = "update")]
    Create {
        /// The tenant id (its certificates carry it).
        id: String,
        /// Most tasks queued or delayed at once (0: server default).
        #[arg(long, default_value_t = 0)]
        max_queued: u64,
        /// Most tasks running at once (0: unlimited).
        #[arg(long, default_value_t = 0)]
        max_concurrency: u32,
        /// Largest payload in bytes (0: server default).
        #[arg(long, default_value_t = 0)]
        max_payload_bytes: u64,
        /// Source networks API calls may come from (CIDR, repeatable); none = anywhere.
        #[arg(long = "allow-cidr")]
        allowed_cidrs: Vec<String>,
    },
    /// Tenants with their queued and running counts and limits.
    List,
}

pub async fn run(a: TenantArgs) -> anyhow::Result<()> {
    match a.cmd {
        TenantCmd::Create { id, max_queued, max_concurrency, max_payload_bytes, allowed_cidrs } => {
            let t = with_leader(&a.conn, |ch| {
                let id = id.clone();
                let allowed_cidrs = allowed_cidrs.clone();
                async move {
                    AdminClient::new(ch)
                        .upsert_tenant(pa::UpsertTenantRequest {
                            id,
                            limits: Some(pa::TenantLimits {
                                max_queued_tasks: max_queued,
                                max_concurrency,
                                max_payload_bytes,
                            }),
                            allowed_cidrs,
                        })
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await?;
            match a.output {
                Format::Json => print_json(&serde_json::json!({ "id": t.id, "saved": true })),
                Format::Table => outln!("tenant {} saved", t.id),
            }
        }
        TenantCmd::List => {
            let r = with_leader(&a.conn, |ch| async move {
                AdminClient::new(ch).list_tenants(pa::ListTenantsRequest {}).await.map(|r| r.into_inner())
            })
            .await?;
            if a.output == Format::Json {
                let tenants = r.tenants.iter().map(|t| {
                    let l = t.limits.unwrap_or_default();
                    serde_json::json!({
                        "id": t.id,
                        "queued_tasks": t.queued_tasks,
                        "running_tasks": t.running_tasks,
                        "max_queued_tasks": l.max_queued_tasks,
                        "max_concurrency": l.max_concurrency,
                        "max_payload_bytes": l.max_payload_bytes,
                        "allowed_cidrs": t.allowed_cidrs,
                    })
                });
                print_json(&serde_json::Value::Array(tenants.collect()));
                return Ok(());
            }
            outln!(
                "{:<24} {:>10} {:>10} {:>12} {:>14}",
                "TENANT",
                "QUEUED",
                "RUNNING",
                "MAX_QUEUED",
                "MAX_CONCURRENCY"
            );
            for t in r.tenants {
                let l = t.limits.unwrap_or_default();
                outln!(
                    "{:<24} {:>10} {:>10} {:>12} {:>14}",
                    t.id,
                    t.queued_tasks,
                    t.running_tasks,
                    l.max_queued_tasks,
                    l.max_concurrency
                );
            }
        }
    }
    Ok(())
}
