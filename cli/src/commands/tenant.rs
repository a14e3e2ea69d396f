//! `drover tenant create|update|list|mode` (operator, through `drover.admin.v1`).

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
    /// Tenants with their queued and running counts, limits and mode.
    List,
    /// Where a tenant's tasks may run: `shared` (the shared fleet), `ip-whitelist` (only
    /// on agents of its IP pool, so its traffic leaves from the pool's addresses) or `vpc`
    /// (only on agents registered with its VPC; with --fallback, the shared fleet too).
    Mode {
        /// The tenant.
        id: String,
        /// The mode.
        #[arg(value_enum)]
        mode: ModeArg,
        /// ip-whitelist: the tenant's pool (drover pool create).
        #[arg(long, required_if_eq("mode", "ip-whitelist"))]
        pool: Option<String>,
        /// vpc: the VPC name its agents are registered with (drover agents register --vpc).
        #[arg(long, required_if_eq("mode", "vpc"))]
        vpc: Option<String>,
        /// vpc: let shared-fleet agents run its tasks too (they run isolated, outside the VPC).
        #[arg(long)]
        fallback: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    Shared,
    IpWhitelist,
    Vpc,
}

/// A mode for people: `shared`, `ip_whitelist(pool)`, `vpc(name)` or `vpc(name)+fallback`.
fn mode_text(m: Option<&pa::TenantMode>) -> String {
    let m = m.cloned().unwrap_or_default();
    match pa::TenantModeKind::try_from(m.kind) {
        Ok(pa::TenantModeKind::IpWhitelist) => format!("ip_whitelist({})", m.pool),
        Ok(pa::TenantModeKind::Vpc) if m.fallback => format!("vpc({})+fallback", m.vpc),
        Ok(pa::TenantModeKind::Vpc) => format!("vpc({})", m.vpc),
        _ => "shared".to_string(),
    }
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
        TenantCmd::Mode { id, mode, pool, vpc, fallback } => {
            let kind = match mode {
                ModeArg::Shared => pa::TenantModeKind::Shared,
                ModeArg::IpWhitelist => pa::TenantModeKind::IpWhitelist,
                ModeArg::Vpc => pa::TenantModeKind::Vpc,
            };
            let req = pa::SetTenantModeRequest {
                tenant: id.clone(),
                mode: Some(pa::TenantMode {
                    kind: kind.into(),
                    pool: pool.unwrap_or_default(),
                    vpc: vpc.unwrap_or_default(),
                    fallback,
                }),
            };
            let m = with_leader(&a.conn, |ch| {
                let req = req.clone();
                async move { AdminClient::new(ch).set_tenant_mode(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            match a.output {
                Format::Json => print_json(&serde_json::json!({ "id": id, "mode": mode_text(Some(&m)) })),
                Format::Table => outln!("tenant {id} mode {}", mode_text(Some(&m))),
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
                        "mode": mode_text(t.mode.as_ref()),
                    })
                });
                print_json(&serde_json::Value::Array(tenants.collect()));
                return Ok(());
            }
            outln!(
                "{:<24} {:>10} {:>10} {:>12} {:>14}  MODE",
                "TENANT",
                "QUEUED",
                "RUNNING",
                "MAX_QUEUED",
                "MAX_CONCURRENCY"
            );
            for t in r.tenants {
                let l = t.limits.unwrap_or_default();
                outln!(
                    "{:<24} {:>10} {:>10} {:>12} {:>14}  {}",
                    t.id,
                    t.queued_tasks,
                    t.running_tasks,
                    l.max_queued_tasks,
                    l.max_concurrency,
                    mode_text(t.mode.as_ref())
                );
            }
        }
    }
    Ok(())
}
