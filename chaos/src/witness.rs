//! The witness: a loopback listener that task containers report to, so executions are
//! observed independently of what the control plane believes.
//!
//! The chaos code (see [`SCRIPT`]) opens one connection per execution and sends
//! `start <task> <epoch> <payload id>`, then `alive <task> <epoch>` every 100 ms while it
//! works, then `end <task> <epoch>`. The witness stamps every line with its own clock
//! on arrival. An execution whose connection closes without `end` was stopped (killed by
//! its agent or the watchdog); its last sign of life is the close.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The task script: payload `"<payload id> <ticks>"`, runs `ticks` × 100 ms and reports to
/// the witness at `WITNESS` (host networking, loopback).
pub const SCRIPT: &str = r#"set -- $(cat "$PAYLOAD_FILE"); id=$1; n=$2
( echo "start $TASK_ID $LEASE_EPOCH $id"; i=0
  while [ $i -lt $n ]; do echo "alive $TASK_ID $LEASE_EPOCH"; sleep 0.1; i=$((i+1)); done
  echo "end $TASK_ID $LEASE_EPOCH" ) | nc 127.0.0.1 "$WITNESS_PORT"
echo "payload $id ran $n ticks as epoch $LEASE_EPOCH""#;

/// One execution of a task, as the witness saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    pub task: u64,
    pub epoch: u64,
    pub payload_id: u64,
    pub start_ms: u64,
    /// The last line or the close, whichever came last.
    pub last_ms: u64,
    /// `end` arrived: the work ran to completion.
    pub finished: bool,
}

#[derive(Default)]
struct Book {
    open: BTreeMap<u64, Execution>,
    done: Vec<Execution>,
    next: u64,
}

#[derive(Clone)]
pub struct Witness {
    pub port: u16,
    start: Instant,
    book: Arc<Mutex<Book>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Witness {
    pub async fn start(start: Instant) -> std::io::Result<Witness> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let w = Witness {
            port: listener.local_addr()?.port(),
            start,
            book: Arc::default(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        let me = w.clone();
        w.tasks.spawn(async move {
            loop {
                let conn = tokio::select! {
                    _ = me.cancel.cancelled() => return,
                    c = listener.accept() => c,
                };
                let Ok((stream, _)) = conn else { continue };
                let me2 = me.clone();
                me.tasks.spawn(async move { me2.serve(stream).await });
            }
        });
        Ok(w)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn serve(&self, stream: tokio::net::TcpStream) {
        let mut lines = tokio::io::BufReader::new(stream).lines();
        let mut key = None;
        loop {
            let line = tokio::select! {
                _ = self.cancel.cancelled() => break,
                l = lines.next_line() => l,
            };
            let Ok(Some(line)) = line else { break };
            let now = self.now_ms();
            let f: Vec<&str> = line.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            let mut book = self.lock();
            match (f.first().copied(), key) {
                (Some("start"), None) => {
                    let (Some(task), Some(epoch), Some(payload_id)) = (num(1), num(2), num(3)) else { break };
                    let k = book.next;
                    book.next += 1;
                    book.open
                        .insert(k, Execution { task, epoch, payload_id, start_ms: now, last_ms: now, finished: false });
                    key = Some(k);
                }
                (Some("alive"), Some(k)) => {
                    if let Some(e) = book.open.get_mut(&k) {
                        e.last_ms = now;
                    }
                }
                (Some("end"), Some(k)) => {
                    if let Some(mut e) = book.open.remove(&k) {
                        e.last_ms = now;
                        e.finished = true;
                        book.done.push(e);
                    }
                    return;
                }
                _ => break,
            }
        }
        if let Some(k) = key {
            let now = self.now_ms();
            let mut book = self.lock();
            if let Some(mut e) = book.open.remove(&k) {
                e.last_ms = now;
                book.done.push(e);
            }
        }
    }

    /// Executions seen so far, finished or stopped; `still_open` ones are those whose
    /// container still runs.
    pub fn executions(&self) -> (Vec<Execution>, Vec<Execution>) {
        let book = self.lock();
        (book.done.clone(), book.open.values().cloned().collect())
    }

    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}
