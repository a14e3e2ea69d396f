//! `drover code register|list|get|delete|webhook` (tenant API).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use drover_proto::v1 as pv;

use super::client::{Conn, explain, tenant};
use super::output::{Format, code_json, print_json, retry_on_arg};

#[derive(Args)]
pub struct CodeArgs {
    #[command(flatten)]
    conn: Conn,
    /// Output format: aligned tables for people, or JSON for scripts.
    #[arg(long, short = 'o', value_enum, default_value = "table", global = true)]
    output: Format,
    #[command(subcommand)]
    cmd: CodeCmd,
}

/// `drover code register`.
#[derive(Args)]
struct RegisterArgs {
    /// The code's name (1..=128 of A-Za-z0-9._-); registering it again updates it.
    name: String,
    /// Image reference, for example registry.example.com/team/worker:1.4
    #[arg(long)]
    image: String,
    /// A shell command line, run as `sh -c CMD` (the image needs a shell).
    #[arg(long = "cmd", conflicts_with = "args")]
    cmd: Option<String>,
    /// The command and its arguments exactly, after `--` (default: the image's own).
    #[arg(last = true)]
    args: Vec<String>,
    /// Memory limit, for example 128MiB (default: the agent's).
    #[arg(long)]
    memory: Option<bytesize::ByteSize>,
    /// CPUs, for example 0.5.
    #[arg(long)]
    cpus: Option<f64>,
    /// Most processes a run may have (default: the agent's).
    #[arg(long)]
    pids: Option<u32>,
    /// Timeout per run, for example 10m (default: 1h).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Most tasks of this code running at once (0: unlimited).
    #[arg(long, default_value_t = 0)]
    max_concurrency: u32,
    /// Retries after a failed run (max_retries).
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Wait before the first retry, for example 2s; doubles per retry (default: 1s, at most 1h).
    #[arg(long, value_parser = humantime::parse_duration)]
    retry_delay: Option<Duration>,
    /// Cap on the retry wait, for example 5m (default: 5m, or the delay if larger; at most 24h).
    #[arg(long, value_parser = humantime::parse_duration)]
    retry_backoff_max: Option<Duration>,
    /// Which failures are retried: exit_code, oom, timeout, image_pull, runner_lost,
    /// infrastructure, cancelled (comma-separated or repeated; default: all but cancelled).
    #[arg(long)]
    retry_on: Vec<String>,
    /// Environment for the container, KEY=VALUE (repeatable).
    #[arg(long = "env")]
    env: Vec<String>,
    #[command(flatten)]
    placement: super::placement::PlacementArgs,
}

#[derive(Subcommand)]
enum CodeCmd {
    /// Register a code (a container image and how to run it), or update it.
    Register(Box<RegisterArgs>),
    /// Your codes.
    List,
    /// A code: image, command, limits, retry policy, placement, webhook.
    Get {
        /// The code's name.
        name: String,
    },
    /// Delete a code (its queued tasks stay queued until it is registered again or they are cancelled).
    Delete {
        /// The code's name.
        name: String,
    },
    /// A code's webhook: POST /v1/webhooks/<tenant>/<code> on the servers' webhook
    /// listener queues a task whose payload is the request body.
    Webhook {
        #[command(subcommand)]
        cmd: WebhookCmd,
    },
}

#[derive(Subcommand)]
enum WebhookCmd {
    /// Give the code a webhook and print its URL and secret. The secret is shown this
    /// once (the servers keep only its hash); enabling again makes a new one and the old
    /// one stops working.
    Enable {
        /// The code's name.
        name: String,
    },
    /// Remove the code's webhook.
    Disable {
        /// The code's name.
        name: String,
    },
}

fn print_codes(codes: &[pv::Code]) {
    outln!("{:<24} {:<40} {:>10} {:>6} {:>9} {:>7}", "NAME", "IMAGE", "MEMORY", "CPUS", "TIMEOUT", "WEBHOOK");
    for c in codes {
        let l = c.limits.unwrap_or_default();
        let mem = if l.memory_bytes > 0 { bytesize::ByteSize(l.memory_bytes).to_string() } else { "-".into() };
        let cpus = if l.cpu_millis > 0 { format!("{}", l.cpu_millis as f64 / 1000.0) } else { "-".into() };
        let timeout = if l.timeout_ms > 0 {
            humantime::format_duration(Duration::from_millis(l.timeout_ms)).to_string()
        } else {
            "-".into()
        };
        let hook = if c.webhook_enabled { "on" } else { "-" };
        outln!("{:<24} {:<40} {:>10} {:>6} {:>9} {:>7}", c.name, c.image, mem, cpus, timeout, hook);
    }
}

pub async fn run(a: CodeArgs) -> anyhow::Result<()> {
    let mut t = tenant(&a.conn).await?;
    match a.cmd {
        CodeCmd::Register(r) => {
            let RegisterArgs {
                name,
                image,
                cmd,
                args,
                memory,
                cpus,
                pids,
                timeout,
                max_concurrency,
                retries,
                retry_delay,
                retry_backoff_max,
                retry_on,
                env,
                placement,
            } = *r;
            let mut envs = HashMap::new();
            for kv in env {
                let (k, v) = kv.split_once('=').with_context(|| format!("--env {kv:?}: expected KEY=VALUE"))?;
                envs.insert(k.to_string(), v.to_string());
            }
            let cpu_millis = match cpus {
                Some(c) if !(0.001..=1024.0).contains(&c) => anyhow::bail!("--cpus {c}: expected 0.001 to 1024"),
                Some(c) => (c * 1000.0).round() as u32,
                None => 0,
            };
            let command = match cmd {
                Some(line) => vec!["sh".to_string(), "-c".to_string(), line],
                None => args,
            };
            let req = pv::RegisterCodeRequest {
                name,
                image,
                command,
                env: envs,
                limits: Some(pv::CodeLimits {
                    memory_bytes: memory.map(|m| m.as_u64()).unwrap_or(0),
                    cpu_millis,
                    pids: pids.unwrap_or(0),
                    timeout_ms: timeout.map(|d| d.as_millis() as u64).unwrap_or(0),
                }),
                max_concurrency,
                default_retries: retries,
                placement: placement.to_proto(),
                retry_delay_ms: retry_delay.map(|d| d.as_millis() as u64),
                retry_backoff_max_ms: retry_backoff_max.map(|d| d.as_millis() as u64),
                retry_on: retry_on_arg(&retry_on)?,
            };
            let c = t.register_code(req).await.map_err(|s| explain(&s))?.into_inner();
            match a.output {
                Format::Json => print_json(&code_json(&c)),
                Format::Table => outln!("code {} registered ({})", c.name, c.image),
            }
        }
        CodeCmd::List => {
            let r = t.list_codes(pv::ListCodesRequest {}).await.map_err(|s| explain(&s))?.into_inner();
            match a.output {
                Format::Json => print_json(&serde_json::Value::Array(r.codes.iter().map(code_json).collect())),
                Format::Table => print_codes(&r.codes),
            }
        }
        CodeCmd::Get { name } => {
            let c = t.get_code(pv::GetCodeRequest { name }).await.map_err(|s| explain(&s))?.into_inner();
            match a.output {
                Format::Json => print_json(&code_json(&c)),
                Format::Table => print_codes(&[c]),
            }
        }
        CodeCmd::Delete { name } => {
            t.delete_code(pv::DeleteCodeRequest { name: name.clone() }).await.map_err(|s| explain(&s))?;
            if a.output == Format::Table {
                outln!("code {name} deleted");
            }
        }
        CodeCmd::Webhook { cmd: WebhookCmd::Enable { name } } => {
            let r = t.enable_webhook(pv::EnableWebhookRequest { name }).await.map_err(|s| explain(&s))?.into_inner();
            match a.output {
                Format::Json => print_json(&serde_json::json!({ "url": r.url, "path": r.path, "secret": r.secret })),
                Format::Table => {
                    let url = if r.url.is_empty() {
                        format!("https://<a server's webhook_listen>{}", r.path)
                    } else {
                        r.url.clone()
                    };
                    outln!("url:    {url}");
                    outln!("secret: {}", r.secret);
                    outln!();
                    outln!("The secret is shown only now; `drover code webhook enable` again makes a new one.");
                    outln!(
                        "curl --cacert ca.pem -H 'Authorization: Bearer {}' --data-binary @payload.json {url}",
                        r.secret
                    );
                }
            }
        }
        CodeCmd::Webhook { cmd: WebhookCmd::Disable { name } } => {
            t.disable_webhook(pv::DisableWebhookRequest { name: name.clone() }).await.map_err(|s| explain(&s))?;
            if a.output == Format::Table {
                outln!("webhook of code {name} disabled");
            }
        }
    }
    Ok(())
}
