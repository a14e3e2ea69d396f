//! The recorded history of a run: every client operation (invoke, then `ok`, `fail`, or
//! `info` when the outcome is unknown) and every fault the nemesis injects, as JSON
//! lines with milliseconds since the run started.
//!
//! A `fail` means the operation certainly did not take effect (the server refused it
//! before proposing); `info` means it may or may not have (a timeout, a lost
//! connection). Checkers must treat `info` operations as possibly applied.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// What was done. Completions repeat the invocation's fields, so each line stands alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// QueueTasks of one task with an idempotency key; `task` is the id acknowledged.
    Queue {
        key: String,
        payload_id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<u64>,
    },
    /// GetTask: what a client saw.
    Get {
        task: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seen: Option<TaskView>,
    },
    /// A call replayed for a replaced lease (see `zombie`); `accepted` when answered.
    Stale {
        task: u64,
        epoch: u64,
        agent: String,
        call: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        accepted: Option<bool>,
    },
    /// A fault injected (or healed) by the nemesis. `cut_off`: servers that cannot reach
    /// a quorum from now until the next nemesis event (the heal). A fault names its kind
    /// ([`crate::scenario::FaultKind::name`]) and target; it lasts until the next nemesis
    /// event, which heals it.
    Nemesis {
        action: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        cut_off: Vec<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fault: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
    },
    /// CancelTask of a task the client queued; `seen` is the task the answer carried.
    /// Refusals are `fail` with the status code first in `error` ([`Event::status`]):
    /// `FailedPrecondition` when the task had already finished.
    Cancel {
        task: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seen: Option<TaskView>,
    },
    /// One page of ListTasks as `as_tenant`: tasks after `after_id`, at most `limit`;
    /// `page` what it held, `next_after_id` where the next page starts (0: none).
    List {
        as_tenant: String,
        after_id: u64,
        limit: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        page: Option<Vec<Listed>>,
        #[serde(default, skip_serializing_if = "is_zero")]
        next_after_id: u64,
    },
    /// A task queued by another tenant than the workload's (delayed past the run, so it
    /// never runs): none of the workload tenant's reads may show it.
    ForeignQueue {
        as_tenant: String,
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<u64>,
    },
    /// GetTask of another tenant's task, as tenant `as_tenant`: must not be found.
    ForeignGet {
        task: u64,
        as_tenant: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seen: Option<bool>,
    },
    /// A probe of a server's lease authority: an empty heartbeat, which only a leader
    /// that may grant and renew leases answers.
    Authority {
        node: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        granted: Option<bool>,
    },
}

/// The parts of a task the checkers compare.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    pub state: String,
    pub exit_code: i32,
    pub attempts: u32,
    pub lost_leases: u32,
    pub payload_id: Option<u64>,
    /// Leader-stamped creation time.
    #[serde(default)]
    pub created_ms: u64,
}

impl TaskView {
    pub fn terminal(&self) -> bool {
        !matches!(self.state.as_str(), "queued" | "delayed" | "running")
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A task as a listing showed it (listings carry no payload: `payload_id` is None).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub id: u64,
    pub tenant: String,
    #[serde(flatten)]
    pub view: TaskView,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub t_ms: u64,
    pub process: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    #[serde(flatten)]
    pub op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Event {
    /// The gRPC status code of a refused or failed call (`NotFound`, `FailedPrecondition`,
    /// ...): the workload records errors as `"<code>: <message>"`.
    pub fn status(&self) -> Option<&str> {
        self.error.as_deref().and_then(|e| e.split_once(':')).map(|(code, _)| code)
    }
}

/// A status as the workload records it in [`Event::error`].
pub fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Appends events to memory and to a JSON-lines file.
#[derive(Clone)]
pub struct History {
    start: Instant,
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    events: Vec<Event>,
    file: std::io::BufWriter<std::fs::File>,
}

impl History {
    pub fn create(path: &Path, start: Instant) -> std::io::Result<Self> {
        let file = std::io::BufWriter::new(std::fs::File::create(path)?);
        Ok(History { start, inner: Arc::new(Mutex::new(Inner { events: Vec::new(), file })) })
    }

    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn record(&self, process: &str, kind: Kind, op: Op, error: Option<String>) -> Event {
        let e = Event { t_ms: self.now_ms(), process: process.to_string(), kind, op, error };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(line) = serde_json::to_string(&e) {
            let _ = writeln!(inner.file, "{line}");
        }
        inner.events.push(e.clone());
        e
    }

    /// A nemesis event that is not a fault (a heal, a setup step, a skipped cycle).
    pub fn nemesis(&self, action: impl Into<String>) {
        let op = Op::Nemesis { action: action.into(), cut_off: Vec::new(), fault: None, target: None };
        self.record("nemesis", Kind::Info, op, None);
    }

    /// A fault: its kind, target and description, and the servers that cannot reach a
    /// quorum until the next nemesis event (the heal).
    pub fn fault(&self, kind: &str, target: &str, action: impl Into<String>, cut_off: Vec<u64>) {
        let op = Op::Nemesis {
            action: action.into(),
            cut_off,
            fault: Some(kind.to_string()),
            target: Some(target.to_string()),
        };
        self.record("nemesis", Kind::Info, op, None);
    }

    /// The last event `process` recorded.
    pub fn last_of(&self, process: &str) -> Option<Event> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.events.iter().rev().find(|e| e.process == process).cloned()
    }

    pub fn events(&self) -> Vec<Event> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let _ = inner.file.flush();
        inner.events.clone()
    }

    /// Reads a history file back (for `drover-chaos check`).
    pub fn read(path: &Path) -> anyhow::Result<Vec<Event>> {
        let text = std::fs::read_to_string(path)?;
        text.lines().filter(|l| !l.trim().is_empty()).map(|l| Ok(serde_json::from_str(l)?)).collect()
    }
}

/// How many faults of each kind the history records.
pub fn faults_by_kind(events: &[Event]) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for e in events {
        if let Op::Nemesis { fault: Some(kind), .. } = &e.op {
            *out.entry(kind.clone()).or_insert(0) += 1;
        }
    }
    out
}
