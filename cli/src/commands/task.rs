//! `drover task queue|get|list|cancel|retry|logs|wait` (tenant API).
//!
//! Exit codes scripts can rely on: 0 success; 1 an error (message on stderr); 2 bad usage.
//! `task wait` exits with the task's own exit code when it ran to an exit (0 for
//! `complete`), 124 when it ended `timeout`, 125 `cancelled`, 137 `killed` (or an error
//! with no exit code: 1), and 75 when `--timeout` passes before the task ends.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use drover_proto::v1 as pv;

use super::client::{Conn, TenantClient, explain, tenant};
use super::output::{Format, finished, parse_state, print_json, state_name, task_detail, task_json, task_table};
use super::task_flags::TaskFlags;

pub const EXIT_TIMEOUT: u8 = 124;
pub const EXIT_CANCELLED: u8 = 125;
pub const EXIT_KILLED: u8 = 137;
pub const EXIT_WAIT_EXPIRED: u8 = 75;

#[derive(Args)]
pub struct TaskArgs {
    #[command(flatten)]
    conn: Conn,
    /// Output format: aligned tables for people, or JSON for scripts.
    #[arg(long, short = 'o', value_enum, default_value = "table", global = true)]
    output: Format,
    #[command(subcommand)]
    cmd: TaskCmd,
}

#[derive(Subcommand)]
enum TaskCmd {
    /// Queue tasks of a code.
    Queue {
        /// The code to run.
        code: String,
        /// Run no earlier than this from now, for example 30s.
        #[arg(long, value_parser = humantime::parse_duration)]
        delay: Option<Duration>,
        /// Queue this many identical tasks.
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[command(flatten)]
        task: TaskFlags,
    },
    /// A task: state, retries, every attempt, and why it waits if it does.
    Get {
        /// The task's id.
        id: u64,
    },
    /// Tasks in id order, a page at a time (`--after` the last id shown), or all of them.
    List {
        /// Only tasks in this state: delayed, queued, running, complete, error, timeout,
        /// killed or cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Only tasks of this code.
        #[arg(long)]
        code: Option<String>,
        /// Tasks per page (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start after this task id (the `next page` hint of the previous page).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Every page, to the end.
        #[arg(long, conflicts_with = "after")]
        all: bool,
    },
    /// Cancel a queued, delayed or running task (a running container is stopped).
    Cancel {
        /// The task's id.
        id: u64,
    },
    /// Queue a new task with the same code, payload and priority as a finished one.
    Retry {
        /// The finished task's id.
        id: u64,
    },
    /// Print a task's output (stdout to stdout, stderr and Drover's notes to stderr).
    Logs {
        /// The task's id.
        id: u64,
        /// Keep streaming until the task ends.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Wait for a task to end; exit with its exit code (see `drover task --help`).
    Wait {
        /// The task's id.
        id: u64,
        /// Give up after this long (exit 75).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
}

pub(super) fn read_payload(payload: Option<String>, file: Option<PathBuf>, raw: bool) -> anyhow::Result<Vec<u8>> {
    let (bytes, what) = match (payload, file) {
        (Some(p), _) => (p.into_bytes(), "--payload".to_string()),
        (None, Some(f)) if f.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).context("reading the payload from standard input")?;
            (buf, "standard input".to_string())
        }
        (None, Some(f)) => {
            let b = std::fs::read(&f).with_context(|| format!("--payload-file {}", f.display()))?;
            (b, format!("--payload-file {}", f.display()))
        }
        (None, None) => return Ok(Vec::new()),
    };
    if !raw && let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        anyhow::bail!("{what}: not valid JSON ({e}); fix it, or pass --raw to send bytes as they are");
    }
    Ok(bytes)
}

/// An idempotency key for one queue call: retrying with it cannot queue twice.
fn idempotency_key(part: u32) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("cli-{}-{nanos}-{part}", std::process::id())
}

/// Queues with retries on `Unavailable` (same idempotency key: never twice).
async fn queue_call(t: &mut TenantClient, req: pv::QueueTasksRequest) -> anyhow::Result<Vec<u64>> {
    let mut attempt = 0;
    loop {
        match t.queue_tasks(req.clone()).await {
            Ok(r) => return Ok(r.into_inner().task_ids),
            Err(s) if s.code() == tonic::Code::Unavailable && attempt < 4 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(250 * attempt)).await;
            }
            Err(s) => return Err(explain(&s)),
        }
    }
}

async fn get(t: &mut TenantClient, id: u64) -> anyhow::Result<pv::Task> {
    Ok(t.get_task(pv::GetTaskRequest { id, include_payload: false }).await.map_err(|s| explain(&s))?.into_inner())
}

/// The exit status `task wait` gives for a finished task.
pub fn exit_status(t: &pv::Task) -> u8 {
    let r = t.result.clone().unwrap_or_default();
    match pv::TaskState::try_from(t.state) {
        Ok(pv::TaskState::Complete) => 0,
        Ok(pv::TaskState::Timeout) => EXIT_TIMEOUT,
        Ok(pv::TaskState::Cancelled) => EXIT_CANCELLED,
        Ok(pv::TaskState::Killed) => EXIT_KILLED,
        _ => match r.exit_code {
            Some(c) if (1..=255).contains(&c) => c as u8,
            _ => 1,
        },
    }
}

/// How long `task logs -f` keeps trying to resume a follow that a node ended (it stopped,
/// or the connection dropped) before it gives up.
const FOLLOW_RESUME: Duration = Duration::from_secs(30);

/// Runs a task command; `Ok(code)` is the process exit code.
pub async fn run(a: TaskArgs) -> anyhow::Result<u8> {
    let mut t = tenant(&a.conn).await?;
    match a.cmd {
        TaskCmd::Queue { code, delay, count, task } => {
            if count == 0 {
                anyhow::bail!("--count 0: nothing to queue");
            }
            let task = task.new_task(code, delay)?;
            let mut ids = Vec::new();
            let mut left = count;
            let mut part = 0;
            while left > 0 {
                let n = left.min(1000);
                let req = pv::QueueTasksRequest {
                    tasks: vec![task.clone(); n as usize],
                    idempotency_key: idempotency_key(part),
                };
                ids.extend(queue_call(&mut t, req).await?);
                left -= n;
                part += 1;
            }
            match a.output {
                Format::Json => print_json(&serde_json::json!({ "task_ids": ids })),
                Format::Table => ids.iter().for_each(|id| outln!("{id}")),
            }
        }
        TaskCmd::Get { id } => {
            let task = get(&mut t, id).await?;
            match a.output {
                Format::Json => print_json(&task_json(&task)),
                Format::Table => task_detail(&task),
            }
        }
        TaskCmd::List { state, code, limit, after, all } => {
            let state = match state {
                Some(s) => parse_state(&s)? as i32,
                None => 0,
            };
            let mut req = pv::ListTasksRequest { state, code: code.unwrap_or_default(), after_id: after, limit };
            let mut tasks = Vec::new();
            let next = loop {
                let r = t.list_tasks(req.clone()).await.map_err(|s| explain(&s))?.into_inner();
                tasks.extend(r.tasks);
                if !all || r.next_after_id == 0 {
                    break r.next_after_id;
                }
                req.after_id = r.next_after_id;
            };
            match a.output {
                Format::Json => print_json(&serde_json::Value::Array(tasks.iter().map(task_json).collect())),
                Format::Table => task_table(&tasks),
            }
            // On stderr, so a script's JSON stays whole.
            if next != 0 {
                eprintln!("next page: --after {next} (or --all)");
            }
        }
        TaskCmd::Cancel { id } => {
            let task = t.cancel_task(pv::CancelTaskRequest { id }).await.map_err(|s| explain(&s))?.into_inner();
            match a.output {
                Format::Json => print_json(&task_json(&task)),
                Format::Table => outln!("task {id} cancelled"),
            }
        }
        TaskCmd::Retry { id } => {
            let old = t
                .get_task(pv::GetTaskRequest { id, include_payload: true })
                .await
                .map_err(|s| explain(&s))?
                .into_inner();
            if !finished(old.state) {
                anyhow::bail!("task {id} is {}; only a finished task can be retried", state_name(old.state));
            }
            let task = pv::NewTask {
                code: old.code.clone(),
                payload: old.payload.clone(),
                priority: old.priority,
                placement: old.placement.clone(),
                ..Default::default()
            };
            let ids =
                queue_call(&mut t, pv::QueueTasksRequest { tasks: vec![task], idempotency_key: idempotency_key(0) })
                    .await?;
            match a.output {
                Format::Json => print_json(&serde_json::json!({ "task_ids": ids })),
                Format::Table => ids.iter().for_each(|id| outln!("{id}")),
            }
        }
        TaskCmd::Logs { id, follow } => {
            let show = follow && std::io::stderr().is_terminal();
            if show {
                let task = get(&mut t, id).await?;
                eprintln!("task {id}: {} — following its output (Ctrl-C to stop)", state_name(task.state));
            }
            // A follow outlives the node serving it: when that node stops (it ends the
            // stream `Unavailable`) or the connection drops, the follow resumes from the
            // next chunk on whichever node answers, for up to FOLLOW_RESUME without output.
            let mut from = 0;
            let mut resume_until: Option<Instant> = None;
            let mut out = std::io::stdout().lock();
            loop {
                let streamed: anyhow::Result<()> = async {
                    let mut s =
                        t.get_task_log(pv::GetTaskLogRequest { id, from_index: from, follow }).await?.into_inner();
                    while let Some(batch) = s.message().await? {
                        resume_until = None;
                        for c in batch.chunks {
                            from = c.index + 1;
                            if c.stream == pv::LogStream::Stdout as i32 {
                                out.write_all(&c.data)?;
                            } else {
                                out.flush()?;
                                std::io::stderr().write_all(&c.data)?;
                            }
                        }
                        out.flush()?;
                    }
                    Ok(())
                }
                .await;
                let Err(e) = streamed else { break };
                let Some(s) = e.downcast_ref::<tonic::Status>() else { return Err(e) };
                if !(follow && s.code() == tonic::Code::Unavailable) {
                    return Err(explain(s));
                }
                let until = *resume_until.get_or_insert_with(|| Instant::now() + FOLLOW_RESUME);
                if Instant::now() >= until {
                    return Err(explain(s));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Ok(again) = tenant(&a.conn).await {
                    t = again;
                }
            }
            if show {
                let task = get(&mut t, id).await?;
                let exit =
                    task.result.as_ref().and_then(|r| r.exit_code).map(|c| format!(", exit {c}")).unwrap_or_default();
                eprintln!("task {id}: {}{exit}", state_name(task.state));
            }
        }
        TaskCmd::Wait { id, timeout } => {
            let started = Instant::now();
            let show = std::io::stderr().is_terminal();
            let mut last_state = -1;
            loop {
                let task = get(&mut t, id).await?;
                if show && task.state != last_state {
                    eprintln!("task {id}: {} ({}s)", state_name(task.state), started.elapsed().as_secs());
                    last_state = task.state;
                }
                if finished(task.state) {
                    if a.output == Format::Json {
                        print_json(&task_json(&task));
                    }
                    return Ok(exit_status(&task));
                }
                if timeout.is_some_and(|d| started.elapsed() >= d) {
                    eprintln!("task {id} is still {} after {:?}", state_name(task.state), started.elapsed());
                    return Ok(EXIT_WAIT_EXPIRED);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(0)
}
