//! Layouts written before retry policies existed, kept so that Raft log entries and table
//! rows from older drovers still decode (postcard is not self-describing: a struct with a
//! field added reads old bytes wrongly or not at all).
//!
//! * Commands: [`Command::RegisterCodeV1`] and [`Command::QueueTasksV1`] hold the old
//!   [`CodeSpecV1`] and [`NewTaskV1`] at the old variants' positions; today's
//!   `RegisterCode` and `QueueTasks` are appended at the end of the enum. An old spec or
//!   task takes the retry defaults of [`super::retry`].
//! * Rows: a task or code row with value version 1 is a [`TaskV1`] or [`CodeV1`]; it is
//!   read into today's type and written back in version 2 the next time it changes. An
//!   old task's `max_retries` is its `retries_left` (what it started with is not known),
//!   its policy re-queues at once as before, and a finished one gets the reason its end
//!   implies.
//!
//! [`Command::RegisterCodeV1`]: super::command::Command::RegisterCodeV1
//! [`Command::QueueTasksV1`]: super::command::Command::QueueTasksV1

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::command::{CodeSpec, NewTask};
use super::model::{
    Code, CodeLimits, FailureReason, Lease, Placement, RetryOn, RetryPolicy, Task, TaskResult, TaskState,
};
use super::retry::RetryOverride;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CodeSpecV1 {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub limits: CodeLimits,
    pub max_concurrency: u32,
    pub default_retries: u32,
    pub placement: Placement,
}

impl From<CodeSpecV1> for CodeSpec {
    fn from(s: CodeSpecV1) -> CodeSpec {
        CodeSpec {
            name: s.name,
            image: s.image,
            command: s.command,
            env: s.env,
            limits: s.limits,
            max_concurrency: s.max_concurrency,
            default_retries: s.default_retries,
            retry: RetryOverride::default(),
            placement: s.placement,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NewTaskV1 {
    pub code: String,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub priority: u8,
    pub delay_ms: u64,
    pub timeout_ms: u64,
    pub retries: Option<u32>,
    pub placement: Option<Placement>,
}

impl From<NewTaskV1> for NewTask {
    fn from(t: NewTaskV1) -> NewTask {
        NewTask {
            code: t.code,
            payload: t.payload,
            priority: t.priority,
            delay_ms: t.delay_ms,
            timeout_ms: t.timeout_ms,
            retries: t.retries,
            retry: RetryOverride::default(),
            placement: t.placement,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CodeV1 {
    pub tenant: String,
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub limits: CodeLimits,
    pub max_concurrency: u32,
    pub default_retries: u32,
    pub placement: Placement,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl From<CodeV1> for Code {
    fn from(c: CodeV1) -> Code {
        Code {
            tenant: c.tenant,
            name: c.name,
            image: c.image,
            command: c.command,
            env: c.env,
            limits: c.limits,
            max_concurrency: c.max_concurrency,
            default_retries: c.default_retries,
            retry: RetryPolicy::default(),
            placement: c.placement,
            created_ms: c.created_ms,
            updated_ms: c.updated_ms,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TaskV1 {
    pub id: u64,
    pub tenant: String,
    pub code: String,
    pub priority: u8,
    pub state: TaskState,
    pub created_ms: u64,
    pub ready_at_ms: u64,
    pub timeout_ms: u64,
    pub retries_left: u32,
    pub attempts: u32,
    pub lost_leases: u32,
    pub placement: Placement,
    pub lease: Option<Lease>,
    pub result: Option<TaskResult>,
    pub payload_bytes: u64,
}

/// The reason an old finished task's state and result imply.
fn implied_reason(state: TaskState, result: Option<&TaskResult>) -> Option<FailureReason> {
    match state {
        TaskState::Delayed | TaskState::Queued | TaskState::Running | TaskState::Complete => None,
        TaskState::Timeout => Some(FailureReason::Timeout),
        TaskState::Killed | TaskState::Cancelled => Some(FailureReason::Cancelled),
        TaskState::Error => Some(match result {
            Some(r) if r.oom_killed => FailureReason::Oom,
            Some(r) if r.exit_code.is_some() => FailureReason::ExitCode,
            Some(r) if r.error.starts_with("lease lost") => FailureReason::RunnerLost,
            _ => FailureReason::Infrastructure,
        }),
    }
}

impl From<TaskV1> for Task {
    fn from(t: TaskV1) -> Task {
        Task {
            reason: implied_reason(t.state, t.result.as_ref()),
            id: t.id,
            tenant: t.tenant,
            code: t.code,
            priority: t.priority,
            state: t.state,
            created_ms: t.created_ms,
            ready_at_ms: t.ready_at_ms,
            timeout_ms: t.timeout_ms,
            retries_left: t.retries_left,
            max_retries: t.retries_left,
            retry: RetryPolicy { retry_delay_ms: 0, backoff_max_ms: 0, retry_on: RetryOn::DEFAULT },
            attempts: t.attempts,
            lost_leases: t.lost_leases,
            attempt_log: Vec::new(),
            placement: t.placement,
            lease: t.lease,
            result: t.result,
            payload_bytes: t.payload_bytes,
            schedule: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::command::{Command, Proposal, Request, Response};
    use crate::state::model::TenantLimits;
    use crate::state::{MemKv, StateMachine, Txn, keys};

    fn apply(sm: &mut StateMachine, kv: &mut MemKv, index: u64, cmd: Command) -> Response {
        // Through the wire form, as an entry read back from the log.
        let bytes = postcard::to_stdvec(&Request::V1(Proposal { stamp_ms: 1_000 + index, cmd })).expect("encode");
        let req: Request = postcard::from_bytes(&bytes).expect("decode");
        let mut txn = Txn::new(kv);
        let r = sm.apply(&mut txn, &req, index, 1).expect("MemKv never fails");
        kv.commit(txn.into_writes());
        r
    }

    #[test]
    fn old_commands_keep_their_tags_and_apply_with_the_retry_defaults() {
        let spec = CodeSpecV1 {
            name: "work".into(),
            image: "registry.example/app:1".into(),
            command: vec![],
            env: BTreeMap::new(),
            limits: CodeLimits::default(),
            max_concurrency: 0,
            default_retries: 2,
            placement: Placement::default(),
        };
        let old_register = Command::RegisterCodeV1 { tenant: "acme".into(), spec };
        let task = NewTaskV1 {
            code: "work".into(),
            payload: b"{}".to_vec(),
            priority: 1,
            delay_ms: 0,
            timeout_ms: 0,
            retries: None,
            placement: None,
        };
        let old_queue = Command::QueueTasksV1 {
            tenant: "acme".into(),
            idempotency_key: None,
            idempotency_ttl_ms: 0,
            tasks: vec![task],
        };
        // The tags the variants had before retry policies: their entries still decode as them.
        assert_eq!(postcard::to_stdvec(&old_register).expect("encode")[0], 1);
        assert_eq!(postcard::to_stdvec(&old_queue).expect("encode")[0], 3);

        let (mut sm, mut kv) = (StateMachine::default(), MemKv::default());
        let limits = TenantLimits { max_queued_tasks: 10, max_concurrency: 0, max_payload_bytes: 1024 };
        apply(&mut sm, &mut kv, 1, Command::UpsertTenant { id: "acme".into(), limits, allowed_cidrs: vec![] });
        assert!(
            matches!(apply(&mut sm, &mut kv, 2, old_register), Response::Code(c) if c.retry == RetryPolicy::default())
        );
        let Response::Queued { task_ids, .. } = apply(&mut sm, &mut kv, 3, old_queue) else { panic!("not queued") };
        let t = crate::state::views::get_task(&kv, None, task_ids[0]).expect("read").expect("task");
        assert_eq!((t.max_retries, t.retries_left, t.priority, t.retry), (2, 2, 1, RetryPolicy::default()));
    }

    #[test]
    fn old_rows_read_as_todays_types() {
        let old = TaskV1 {
            id: 7,
            tenant: "acme".into(),
            code: "work".into(),
            priority: 0,
            state: TaskState::Error,
            created_ms: 1,
            ready_at_ms: 1,
            timeout_ms: 1_000,
            retries_left: 1,
            attempts: 2,
            lost_leases: 0,
            placement: Placement::default(),
            lease: None,
            result: Some(TaskResult { exit_code: Some(3), ..Default::default() }),
            payload_bytes: 2,
        };
        let record = postcard::to_stdvec(&old).expect("encode");
        let mut row = vec![1u8];
        row.extend_from_slice(&(record.len() as u32).to_be_bytes());
        row.extend_from_slice(&record);
        row.extend_from_slice(b"{}");
        let r = keys::TaskRow::decode(row).expect("a version 1 row decodes").expect("not purged");
        assert_eq!(r.inline_payload(), Some(b"{}".as_slice()));
        let t = r.task.clone();
        assert_eq!(
            (t.id, t.state, t.reason, t.max_retries, t.attempts),
            (7, TaskState::Error, Some(FailureReason::ExitCode), 1, 2)
        );
        assert!(t.attempt_log.is_empty());
        // Written back, it is a version 2 row.
        assert_eq!(keys::encode_task(&t, b"{}")[0], 2);
        assert!(
            matches!(keys::decode_row(&keys::encode_task(&t, b"{}")).expect("decode"), keys::Row::Inline { task, .. } if task == t)
        );
        // A changed old task keeps its payload inline.
        assert_eq!(r.encode_next(&t), keys::encode_task(&t, b"{}"));

        let code = CodeV1 {
            tenant: "acme".into(),
            name: "work".into(),
            image: "x:1".into(),
            command: vec![],
            env: BTreeMap::new(),
            limits: CodeLimits::default(),
            max_concurrency: 3,
            default_retries: 1,
            placement: Placement::default(),
            created_ms: 5,
            updated_ms: 6,
        };
        let c = keys::decode_code(&keys::encode(&code)).expect("a version 1 code decodes");
        assert_eq!((c.max_concurrency, c.retry, c.updated_ms), (3, RetryPolicy::default(), 6));
        assert_eq!(keys::decode_code(&keys::encode_code(&c)).expect("decode"), c);
    }
}
