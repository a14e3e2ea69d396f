//! Unit and property tests of the pure state machine.
//!
//! A [`Harness`] applies commands the way the storage layer does (one [`Txn`] per entry,
//! committed into a [`MemKv`]) and runs [`invariants::check`] after every entry. The unit
//! tests cover queue validation (a refused command leaves the tables byte-identical), task
//! ids, idempotency keys and their purge, the queued-task quota, delayed tasks, placement
//! (priority, FIFO, per-code concurrency, tenant round-robin, constraints), lease fencing
//! (stale epochs change nothing but `m/clock`), term fencing of leader timer commands (an
//! older term's are refused and change nothing), retries, lost leases and hand-backs,
//! cancellation, retention purge, the clock clamp, and reloading from the tables
//! ([`retries`]: backoff, `retry_on`, the failure taxonomy and the attempt log). The
//! property test drives random command sequences over two tenants, three codes, three
//! agents and a series of terms, checks the invariants after every step, and replays the
//! log to check determinism.

mod fleet;
mod lease_waits;
mod modes;
mod presence;
mod schedules;
mod why_waiting;

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::command::{CodeSpec, Completion, ExpireReason, Grant, LeaseRef, LeaseRequest, NewTask, Outcome};
use super::indexes::Canonical;
use super::leases::MAX_LOST_LEASES;
use super::logs::{self, LogAppend, LogStream};
use super::model::{AgentAttrs, CodeLimits, Placement, Task, TaskState, TenantLimits};
use super::model::{FailureReason, RetryOn};
use super::presence::SeenAgent;
use super::retry::{self, RetryOverride};
use super::{Command, MemKv, Proposal, Request, Response, StateError, StateMachine, Txn};
use super::{invariants, keys, placement, validate, views};

mod retries;
mod webhooks;

const CLOCK: &[u8] = b"m/clock";

type Snapshot = (BTreeMap<Vec<u8>, Vec<u8>>, Canonical);

struct Harness {
    sm: StateMachine,
    kv: MemKv,
    index: u64,
    /// The Raft term of the next entries (as if one leader appended them).
    term: u64,
    now_ms: u64,
    /// Every entry applied, with its term.
    log: Vec<(Request, u64)>,
}

impl Harness {
    fn new() -> Self {
        Harness { sm: StateMachine::default(), kv: MemKv::default(), index: 0, term: 1, now_ms: 1_000, log: Vec::new() }
    }

    /// Applies one command at the next log index in `term`, stamped `now_ms`, then checks
    /// invariants.
    fn apply(&mut self, cmd: Command) -> Response {
        self.apply_request(Request::V1(Proposal { stamp_ms: self.now_ms, cmd }))
    }

    fn apply_request(&mut self, req: Request) -> Response {
        self.index += 1;
        let mut txn = Txn::new(&self.kv);
        let resp = self.sm.apply(&mut txn, &req, self.index, self.term).expect("MemKv never fails");
        let writes = txn.into_writes();
        self.kv.commit(writes);
        if let Err(e) = invariants::check(&self.sm, &self.kv) {
            panic!("invariants broken after entry {} (term {}) {req:?}:\n{e}", self.index, self.term);
        }
        self.log.push((req, self.term));
        resp
    }

    /// The leader's timer commands, proposed in the current term.
    fn expire_cmd(&self, leases: Vec<LeaseRef>, reason: ExpireReason) -> Command {
        Command::ExpireLeases { term: self.term, leases, reason }
    }

    fn promote_cmd(&self, max_tasks: u32) -> Command {
        Command::PromoteDelayed { term: self.term, max_tasks }
    }

    fn purge_cmd(&self, finished_before_ms: u64, max_tasks: u32) -> Command {
        Command::Purge { term: self.term, finished_before_ms, max_tasks }
    }

    /// The tables and the indexes, to compare before/after a command.
    fn snapshot(&self) -> Snapshot {
        (self.kv.map.clone(), self.sm.indexes().canonical())
    }

    /// A refused command leaves the tables byte-identical; a stale completion or expiry
    /// (answered, not refused) may advance only `m/clock`.
    fn assert_unchanged(&self, mut before: Snapshot, resp: &Response) {
        let mut after = self.snapshot();
        if !matches!(resp, Response::Rejected(_)) {
            before.0.remove(CLOCK);
            after.0.remove(CLOCK);
        }
        assert!(after == before, "{resp:?} changed the state");
    }

    /// Applies `cmd` at a later stamp and asserts it changed nothing (but the clock).
    fn apply_unchanged(&mut self, cmd: Command) -> Response {
        let before = self.snapshot();
        self.now_ms += 1;
        let resp = self.apply(cmd);
        self.assert_unchanged(before, &resp);
        resp
    }

    /// Creates cluster `name` (shared when `owner` is None) and registers `agents` to it
    /// with their attributes.
    fn cluster(&mut self, name: &str, owner: Option<&str>, agents: &[(&str, &AgentAttrs)]) {
        let cmd = Command::CreateCluster { name: name.into(), owner: owner.map(String::from), guaranteed_slots: 0 };
        assert!(matches!(self.apply(cmd), Response::Cluster(_)));
        for (id, a) in agents {
            let registration = super::fleet::AgentRegistration {
                id: id.to_string(),
                cluster: a.cluster.clone(),
                region: a.region.clone(),
                vpc: a.vpc.clone(),
                ip_pool: a.ip_pool.clone(),
                egress_ip: a.egress_ip.clone(),
                labels: Default::default(),
                registered_ms: 0,
            };
            assert!(matches!(self.apply(Command::RegisterAgent { registration }), Response::Registration(_)));
        }
    }

    /// Creates a tenant and registers its codes.
    fn tenant(&mut self, id: &str, limits: TenantLimits, codes: &[CodeSpec]) {
        assert!(matches!(
            self.apply(Command::UpsertTenant { id: id.into(), limits, allowed_cidrs: vec![] }),
            Response::Tenant(_)
        ));
        for spec in codes {
            let resp = self.apply(Command::RegisterCode { tenant: id.into(), spec: spec.clone() });
            assert!(matches!(resp, Response::Code(_)), "{resp:?}");
        }
    }

    fn queue_cmd(tenant: &str, key: Option<&str>, tasks: Vec<NewTask>) -> Command {
        let idempotency_key = key.map(String::from);
        Command::QueueTasks { tenant: tenant.into(), idempotency_key, idempotency_ttl_ms: 1_000, tasks }
    }

    fn queue(&mut self, tenant: &str, tasks: Vec<NewTask>) -> Vec<u64> {
        match self.apply(Self::queue_cmd(tenant, None, tasks)) {
            Response::Queued { task_ids, deduplicated: false } => task_ids,
            other => panic!("queue failed: {other:?}"),
        }
    }

    fn lease(&mut self, agent_id: &str, attrs: &AgentAttrs, max_tasks: u32) -> Vec<Grant> {
        let req = LeaseRequest { agent_id: agent_id.into(), attrs: attrs.clone(), slots: max_tasks, max_tasks };
        match self.apply(Command::Lease { term: self.term, requests: vec![req] }) {
            Response::Leased { grants } => grants,
            other => panic!("lease failed: {other:?}"),
        }
    }

    fn complete(&mut self, agent: &str, task_id: u64, epoch: u64, outcome: Outcome) -> Result<(), StateError> {
        let c = completion(agent, task_id, epoch, outcome, "");
        match self.apply(Command::Complete { completions: vec![c] }) {
            Response::Completed { mut results } if results.len() == 1 => results.remove(0),
            other => panic!("complete failed: {other:?}"),
        }
    }

    fn expire(&mut self, task_id: u64, epoch: u64, reason: ExpireReason) -> Vec<u64> {
        match self.apply(self.expire_cmd(vec![LeaseRef { task_id, epoch }], reason)) {
            Response::Expired { task_ids } => task_ids,
            other => panic!("expire failed: {other:?}"),
        }
    }

    fn hand_back(&mut self, agent_id: &str, task_id: u64, epoch: u64) -> Vec<u64> {
        match self.apply(Command::HandBack { agent_id: agent_id.into(), leases: vec![LeaseRef { task_id, epoch }] }) {
            Response::HandedBack { task_ids } => task_ids,
            other => panic!("hand back failed: {other:?}"),
        }
    }

    fn task(&self, id: u64) -> Task {
        views::get_task(&self.kv, None, id).expect("read").unwrap_or_else(|| panic!("task {id} missing"))
    }

    /// One listing page, as the API builds it.
    fn list(&self, tenant: &str, filter: &views::TaskFilter, after_id: u64, limit: usize) -> (Vec<Task>, Option<u64>) {
        let candidates = self.sm.indexes().tenant_task_ids(tenant, after_id, views::list_window(limit));
        views::list_tasks(&self.kv, tenant, &candidates, filter, limit).expect("list")
    }
}

fn limits(max_queued_tasks: u64, max_concurrency: u32) -> TenantLimits {
    TenantLimits { max_queued_tasks, max_concurrency, max_payload_bytes: 1024 }
}

fn spec(name: &str, max_concurrency: u32, default_retries: u32) -> CodeSpec {
    CodeSpec {
        name: name.into(),
        image: format!("registry.example/app@sha256:{}", "0".repeat(64)),
        command: vec!["run".into()],
        env: BTreeMap::new(),
        limits: CodeLimits { timeout_ms: 60_000, ..Default::default() },
        max_concurrency,
        default_retries,
        retry: Default::default(),
        placement: Placement::default(),
    }
}

fn task(code: &str) -> NewTask {
    NewTask {
        code: code.into(),
        payload: b"{}".to_vec(),
        priority: 0,
        delay_ms: 0,
        timeout_ms: 0,
        retries: None,
        retry: Default::default(),
        placement: None,
    }
}

/// Retries re-queued at once (a zero `retry_delay`).
fn no_delay() -> RetryOverride {
    RetryOverride { retry_delay_ms: Some(0), ..Default::default() }
}

fn prio(code: &str, priority: u8) -> NewTask {
    NewTask { priority, ..task(code) }
}

fn placed(code: &str, cluster: &str, region: &str) -> NewTask {
    let p = Placement { cluster: cluster.into(), region: region.into(), ..Default::default() };
    NewTask { placement: Some(p), ..task(code) }
}

fn agent(cluster: &str, region: &str) -> AgentAttrs {
    AgentAttrs { cluster: cluster.into(), region: region.into(), ..Default::default() }
}

fn completion(agent: &str, task_id: u64, epoch: u64, outcome: Outcome, error: &str) -> Completion {
    Completion {
        agent_id: agent.into(),
        lease: LeaseRef { task_id, epoch },
        outcome,
        exit_code: Some(if outcome == Outcome::Success { 0 } else { 1 }),
        oom_killed: false,
        error: error.into(),
        started_ms: 0,
        peak_memory_bytes: 0,
    }
}

/// Tenant "acme" (100 queued, no concurrency limit) with codes "work" (unlimited, no
/// retries) and "pair" (at most 2 running).
fn acme() -> Harness {
    let mut h = Harness::new();
    h.tenant("acme", limits(100, 0), &[spec("work", 0, 0), spec("pair", 2, 0)]);
    h
}

fn invalid_field(resp: &Response) -> &str {
    match resp {
        Response::Rejected(StateError::Invalid { field, .. }) => field,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn bad_queue_calls_are_rejected_and_change_nothing() {
    let mut h = acme();
    h.queue("acme", vec![task("work")]);
    let r = h.apply_unchanged(Harness::queue_cmd("nobody", None, vec![task("work")]));
    assert_eq!(r, Response::Rejected(StateError::UnknownTenant("nobody".into())));
    let r = h.apply_unchanged(Harness::queue_cmd("acme", None, vec![task("work"), task("nope")]));
    assert_eq!(r, Response::Rejected(StateError::CodeNotFound("nope".into())));
    let r = h.apply_unchanged(Harness::queue_cmd("acme", Some("k"), vec![task("work"), prio("work", 7)]));
    assert_eq!(invalid_field(&r), "tasks[1].priority");
    let r = h.apply_unchanged(Harness::queue_cmd("acme", None, vec![]));
    assert_eq!(invalid_field(&r), "tasks");
    let big = NewTask { payload: vec![7; 1025], ..task("work") };
    let r = h.apply_unchanged(Harness::queue_cmd("acme", None, vec![big]));
    assert_eq!(invalid_field(&r), "tasks[0].payload");
    // The limit itself is allowed.
    h.queue("acme", vec![NewTask { payload: vec![7; 1024], ..task("work") }]);
}

#[test]
fn task_ids_come_from_the_log_index_and_position() {
    let mut h = acme();
    let ids = h.queue("acme", vec![task("work"), task("pair"), task("work")]);
    let i = h.index;
    assert_eq!(ids, vec![i << 20, (i << 20) | 1, (i << 20) | 2]);
    for id in &ids {
        let t = h.task(*id);
        assert_eq!((t.state, t.tenant.as_str(), t.timeout_ms), (TaskState::Queued, "acme", 60_000));
        let (t, payload) = views::get_task_with_payload(&h.kv, Some("acme"), *id).expect("read").expect("present");
        assert_eq!((t.id, payload), (*id, b"{}".to_vec()));
        assert_eq!(views::get_task_with_payload(&h.kv, Some("other"), *id).expect("read"), None);
    }
    let (listed, _) = h.list("acme", &Default::default(), 0, 10);
    assert_eq!(listed.iter().map(|t| t.id).collect::<Vec<_>>(), ids);
}

#[test]
fn batched_commands_apply_in_order_with_distinct_ids() {
    let mut h = acme();
    let bad = NewTask { priority: 7, ..task("work") };
    let resp = h.apply(Command::Batch(vec![
        Harness::queue_cmd("acme", None, vec![task("work"), task("work")]),
        Harness::queue_cmd("acme", None, vec![bad]),
        Harness::queue_cmd("acme", Some("k"), vec![task("pair")]),
        Harness::queue_cmd("acme", Some("k"), vec![task("pair")]),
        Command::Batch(vec![]),
    ]));
    let i = h.index;
    let Response::Batch(rs) = resp else { panic!("{resp:?}") };
    assert_eq!(rs[0], Response::Queued { task_ids: vec![i << 20, (i << 20) | 1], deduplicated: false });
    assert!(matches!(&rs[1], Response::Rejected(StateError::Invalid { field, .. }) if field == "tasks[0].priority"));
    assert_eq!(rs[2], Response::Queued { task_ids: vec![(i << 20) | 2], deduplicated: false });
    // The same key later in the same entry sees the first use.
    assert_eq!(rs[3], Response::Queued { task_ids: vec![(i << 20) | 2], deduplicated: true });
    assert!(matches!(&rs[4], Response::Rejected(StateError::Invalid { .. })), "batches do not nest");
    assert_eq!(views::task_count(&h.kv).expect("count"), 3);

    // A batch whose every command is refused leaves the tables byte-identical.
    let all_bad = Command::Batch(vec![Harness::queue_cmd("nobody", None, vec![task("work")])]);
    let before = h.snapshot();
    h.now_ms += 5;
    let resp = h.apply(all_bad);
    h.assert_unchanged(before, &Response::Rejected(StateError::UnknownTenant("nobody".into())));
    assert!(matches!(resp, Response::Batch(ref rs) if matches!(rs[0], Response::Rejected(_))), "{resp:?}");
}

#[test]
fn idempotency_key_dedups_until_ttl_and_purge() {
    let mut h = acme();
    let first = match h.apply(Harness::queue_cmd("acme", Some("k"), vec![task("work"), task("work")])) {
        Response::Queued { task_ids, deduplicated: false } => task_ids,
        other => panic!("{other:?}"),
    };
    let again = h.apply_unchanged(Harness::queue_cmd("acme", Some("k"), vec![task("work")]));
    assert_eq!(again, Response::Queued { task_ids: first.clone(), deduplicated: true });
    assert_eq!(views::task_count(&h.kv).expect("count"), 2);
    // Another tenant's key of the same name is a different key.
    h.tenant("beta", limits(10, 0), &[spec("work", 0, 0)]);
    let r = h.apply(Harness::queue_cmd("beta", Some("k"), vec![task("work")]));
    assert!(matches!(r, Response::Queued { deduplicated: false, .. }), "{r:?}");

    // The TTL (1000 ms) passes; a purge drops both keys.
    h.now_ms += 1_000;
    let r = h.apply(h.purge_cmd(0, 100));
    assert_eq!(r, Response::Purged { tasks: 0, idempotency_keys: 2 });
    assert!(!h.kv.map.contains_key(&keys::idem("acme", "k")));
    assert!(h.sm.indexes().idem_expiry.is_empty());
    let r = h.apply(Harness::queue_cmd("acme", Some("k"), vec![task("work")]));
    let Response::Queued { task_ids, deduplicated: false } = r else { panic!("{r:?}") };
    assert_eq!(task_ids, vec![h.index << 20]);
    assert!(!first.contains(&task_ids[0]));
}

#[test]
fn expired_key_is_reused_without_a_purge() {
    let mut h = acme();
    let first = h.apply(Harness::queue_cmd("acme", Some("k"), vec![task("work")]));
    h.now_ms += 999;
    let again = h.apply(Harness::queue_cmd("acme", Some("k"), vec![task("work")]));
    assert!(matches!(again, Response::Queued { deduplicated: true, .. }));
    h.now_ms += 1; // Exactly the TTL: expired.
    let second = h.apply(Harness::queue_cmd("acme", Some("k"), vec![task("work")]));
    assert!(matches!(second, Response::Queued { deduplicated: false, .. }));
    assert_ne!(first, second);
    assert_eq!(h.sm.indexes().idem_expiry.len(), 1, "the stale expiry entry is replaced");
}

#[test]
fn queued_task_quota() {
    let mut h = Harness::new();
    h.tenant("small", limits(5, 0), &[spec("work", 0, 0)]);
    h.queue("small", vec![task("work"); 3]);
    h.queue("small", vec![NewTask { delay_ms: 500, ..task("work") }, task("work")]);
    let r = h.apply_unchanged(Harness::queue_cmd("small", None, vec![task("work")]));
    let quota = StateError::QuotaExceeded { tenant: "small".into(), queued: 5, adding: 1, limit: 5 };
    assert_eq!(r, Response::Rejected(quota));
    // A running task no longer counts against the queued quota.
    assert_eq!(h.lease("a1", &agent("", ""), 1).len(), 1);
    h.queue("small", vec![task("work")]);
}

#[test]
fn delayed_tasks_wait_for_promotion() {
    let mut h = acme();
    let ids = h.queue("acme", vec![NewTask { delay_ms: 500, ..task("work") }]);
    assert_eq!(h.task(ids[0]).state, TaskState::Delayed);
    assert!(h.lease("a1", &agent("", ""), 5).is_empty());
    h.now_ms += 499;
    assert_eq!(h.apply(h.promote_cmd(10)), Response::Promoted { count: 0 });
    assert!(h.lease("a1", &agent("", ""), 5).is_empty());
    h.now_ms += 1;
    assert_eq!(h.apply(h.promote_cmd(10)), Response::Promoted { count: 1 });
    let grants = h.lease("a1", &agent("", ""), 5);
    assert_eq!(grants.iter().map(|g| g.task_id).collect::<Vec<_>>(), ids);
}

#[test]
fn priority_first_then_fifo_within_a_tenant() {
    let mut h = acme();
    let low = h.queue("acme", vec![prio("work", 0), prio("work", 0)]);
    let mixed = h.queue("acme", vec![prio("work", 2), prio("work", 1), prio("work", 2)]);
    let order: Vec<u64> = (0..5).map(|_| h.lease("a1", &agent("", ""), 1)[0].task_id).collect();
    assert_eq!(order, vec![mixed[0], mixed[2], mixed[1], low[0], low[1]]);
}

#[test]
fn code_max_concurrency_does_not_block_other_codes() {
    let mut h = acme();
    let pair = h.queue("acme", vec![task("pair"); 4]);
    let work = h.queue("acme", vec![task("work"); 3]);
    let grants = h.lease("a1", &agent("", ""), 5);
    let got: Vec<u64> = grants.iter().map(|g| g.task_id).collect();
    assert_eq!(got, vec![pair[0], pair[1], work[0], work[1], work[2]]);
    assert_eq!(h.sm.indexes().running_for_code("acme", "pair"), 2);
    assert!(h.lease("a2", &agent("", ""), 5).is_empty(), "pair is at its limit");
    h.complete("a1", pair[0], grants[0].epoch, Outcome::Success).expect("current lease");
    let more = h.lease("a2", &agent("", ""), 5);
    assert_eq!(more.iter().map(|g| g.task_id).collect::<Vec<_>>(), vec![pair[2]]);
}

#[test]
fn tenants_are_served_round_robin() {
    let mut h = acme();
    h.tenant("beta", limits(100, 0), &[spec("work", 0, 0)]);
    h.queue("acme", vec![task("work"); 6]);
    h.queue("beta", vec![task("work"); 6]);
    let mut one_at_a_time = Vec::new();
    for _ in 0..4 {
        let id = h.lease("a1", &agent("", ""), 1)[0].task_id;
        one_at_a_time.push(h.task(id).tenant);
    }
    assert_eq!(one_at_a_time, ["acme", "beta", "acme", "beta"]);
    let batch: Vec<String> = h.lease("a1", &agent("", ""), 4).iter().map(|g| h.task(g.task_id).tenant).collect();
    assert_eq!(batch, ["acme", "beta", "acme", "beta"]);
}

#[test]
fn placement_constraints_are_respected() {
    let mut h = acme();
    h.cluster("acme", Some("acme"), &[("acme-1", &agent("acme", "eu"))]);
    let eu = h.queue("acme", vec![placed("work", "", "eu"), placed("work", "", "eu")]);
    let dedicated = h.queue("acme", vec![placed("work", "acme", ""), placed("work", "acme", "")]);
    let any = h.queue("acme", vec![task("work"), task("work")]);
    let leased = |h: &mut Harness, name: &str, a: AgentAttrs| -> Vec<u64> {
        h.lease(name, &a, 10).iter().map(|g| g.task_id).collect()
    };
    assert_eq!(leased(&mut h, "us", agent("", "us")), any, "no eu or dedicated tasks in us");
    assert!(leased(&mut h, "other", agent("other", "eu")).is_empty(), "another cluster gets nothing");
    assert_eq!(leased(&mut h, "acme-1", agent("acme", "eu")), dedicated);
    assert_eq!(leased(&mut h, "eu", agent("", "eu")), eu);
}

#[test]
fn stale_epochs_are_fenced() {
    let mut h = acme();
    let id = h.queue("acme", vec![task("work")])[0];
    let e1 = h.lease("a1", &agent("", ""), 1)[0].epoch;
    assert_eq!(e1, h.index, "the epoch is the log index of the grant");
    let stale = |epoch| Response::Completed { results: vec![Err(StateError::StaleEpoch { task_id: id, epoch })] };
    let wrong_epoch = Command::Complete { completions: vec![completion("a1", id, e1 + 1, Outcome::Success, "")] };
    assert_eq!(h.apply_unchanged(wrong_epoch), stale(e1 + 1));
    let wrong_agent = Command::Complete { completions: vec![completion("a2", id, e1, Outcome::Success, "")] };
    assert_eq!(h.apply_unchanged(wrong_agent), stale(e1));

    assert_eq!(h.expire(id, e1, ExpireReason::LeaseLost), vec![id]);
    assert_eq!(h.task(id).state, TaskState::Queued);
    let e2 = h.lease("a2", &agent("", ""), 1)[0].epoch;
    let zombie = Command::Complete { completions: vec![completion("a1", id, e1, Outcome::Success, "first")] };
    assert_eq!(h.apply_unchanged(zombie), stale(e1));
    let done = Command::Complete { completions: vec![completion("a2", id, e2, Outcome::Success, "second")] };
    assert_eq!(h.apply(done), Response::Completed { results: vec![Ok(())] });
    let t = h.task(id);
    assert_eq!((t.state, t.attempts, t.lost_leases), (TaskState::Complete, 2, 1));
    assert_eq!(t.result.expect("result").error, "second");
    // Completing twice is refused too.
    let twice = Command::Complete { completions: vec![completion("a2", id, e2, Outcome::Success, "")] };
    assert_eq!(h.apply_unchanged(twice), stale(e2));
}

#[test]
fn timer_commands_from_an_older_term_are_refused_and_change_nothing() {
    let mut h = acme();
    let ids = h.queue("acme", vec![task("work"), NewTask { delay_ms: 10, ..task("work") }, task("work")]);
    let g = h.lease("a1", &agent("", ""), 2);
    assert_eq!(g.iter().map(|g| g.task_id).collect::<Vec<_>>(), [ids[0], ids[2]]);
    h.complete("a1", ids[2], g[1].epoch, Outcome::Success).expect("current");
    h.now_ms += 100;
    // The leader of term 2 was deposed; its ticks reach the log in term 3.
    h.term = 3;
    let stale = Response::Rejected(StateError::StaleTerm { proposed: 2, entry: 3 });
    let running = vec![LeaseRef { task_id: ids[0], epoch: g[0].epoch }];
    for cmd in [
        Command::ExpireLeases { term: 2, leases: running.clone(), reason: ExpireReason::LeaseLost },
        Command::ExpireLeases { term: 2, leases: running.clone(), reason: ExpireReason::TimedOut },
        Command::PromoteDelayed { term: 2, max_tasks: 10 },
        Command::Purge { term: 2, finished_before_ms: h.now_ms, max_tasks: 10 },
    ] {
        assert_eq!(h.apply_unchanged(cmd), stale);
    }
    // Inside a batch too.
    let before = h.snapshot();
    let r = h.apply(Command::Batch(vec![Command::PromoteDelayed { term: 1, max_tasks: 10 }]));
    let refused = Response::Rejected(StateError::StaleTerm { proposed: 1, entry: 3 });
    assert_eq!(r, Response::Batch(vec![refused.clone()]));
    h.assert_unchanged(before, &refused);
    let msg = StateError::StaleTerm { proposed: 2, entry: 3 }.to_string();
    assert_eq!(msg, "stale leader command: proposed by the leader of term 2, committed in term 3");

    // The current leader's ticks apply.
    assert_eq!(h.apply(h.promote_cmd(10)), Response::Promoted { count: 1 });
    assert_eq!(h.expire(ids[0], g[0].epoch, ExpireReason::LeaseLost), vec![ids[0]]);
    let bound = h.now_ms;
    assert_eq!(h.apply(h.purge_cmd(bound, 10)), Response::Purged { tasks: 1, idempotency_keys: 0 });
}

#[test]
fn errors_are_retried_then_fail() {
    let mut h = acme();
    let id = h.queue("acme", vec![NewTask { retries: Some(1), retry: no_delay(), ..task("work") }])[0];
    let e1 = h.lease("a1", &agent("", ""), 1)[0].epoch;
    h.complete("a1", id, e1, Outcome::Error).expect("current");
    let t = h.task(id);
    assert_eq!((t.state, t.retries_left), (TaskState::Queued, 0));
    let e2 = h.lease("a1", &agent("", ""), 1)[0].epoch;
    h.complete("a1", id, e2, Outcome::Error).expect("current");
    let t = h.task(id);
    assert_eq!((t.state, t.attempts), (TaskState::Error, 2));
    assert!(h.lease("a1", &agent("", ""), 1).is_empty());
}

#[test]
fn lost_leases_are_bounded_and_timeouts_finish() {
    let mut h = acme();
    let id = h.queue("acme", vec![task("work")])[0];
    assert_eq!(MAX_LOST_LEASES, 5, "docs/tasks.md says five");
    for n in 1..=MAX_LOST_LEASES {
        let e = h.lease("a1", &agent("", ""), 1)[0].epoch;
        assert_eq!(h.expire(id, e, ExpireReason::LeaseLost), vec![id]);
        let t = h.task(id);
        assert_eq!((t.lost_leases, t.retries_left), (n, 0));
        let want = if n == MAX_LOST_LEASES { TaskState::Error } else { TaskState::Queued };
        assert_eq!(t.state, want, "after {n} lost leases");
    }
    assert_eq!(h.task(id).result.expect("result").error, "lease lost 5 times");
    assert!(h.lease("a1", &agent("", ""), 1).is_empty(), "an errored task is never leased");
    let id = h.queue("acme", vec![task("work")])[0];
    let e = h.lease("a1", &agent("", ""), 1)[0].epoch;
    assert_eq!(h.expire(id, e, ExpireReason::TimedOut), vec![id]);
    assert_eq!(h.task(id).state, TaskState::Timeout);
    assert!(h.expire(id, e, ExpireReason::TimedOut).is_empty(), "a second expiry is a no-op");
}

#[test]
fn handed_back_tasks_keep_their_lost_leases_and_retries() {
    let mut h = acme();
    let id = h.queue("acme", vec![NewTask { retries: Some(2), retry: no_delay(), ..task("work") }])[0];
    for n in 1..=2 * MAX_LOST_LEASES {
        let e = h.lease("a1", &agent("", ""), 1)[0].epoch;
        assert_eq!(h.hand_back("a1", id, e), vec![id]);
        let t = h.task(id);
        assert_eq!((t.state, t.lease, t.lost_leases, t.retries_left), (TaskState::Queued, None, 0, 2), "after {n}");
        assert_eq!(t.attempts, n, "every grant is an attempt");
        // The handed-back lease is dead: its holder can no longer complete it.
        assert_eq!(h.complete("a1", id, e, Outcome::Success), Err(StateError::StaleEpoch { task_id: id, epoch: e }));
    }
    // Failures still count against the retries.
    let e = h.lease("a2", &agent("", ""), 1)[0].epoch;
    h.complete("a2", id, e, Outcome::Error).expect("current");
    let t = h.task(id);
    assert_eq!((t.state, t.lost_leases, t.retries_left), (TaskState::Queued, 0, 1));
}

#[test]
fn hand_back_of_anything_but_the_holders_current_lease_changes_nothing() {
    let mut h = acme();
    let ids = h.queue("acme", vec![task("work"), task("work")]);
    let e = h.lease("a1", &agent("", ""), 1)[0].epoch;
    let none = Response::HandedBack { task_ids: vec![] };
    let hand_back = |agent_id: &str, leases: Vec<LeaseRef>| Command::HandBack { agent_id: agent_id.into(), leases };
    let lease = |task_id, epoch| LeaseRef { task_id, epoch };
    assert_eq!(h.apply_unchanged(hand_back("a2", vec![lease(ids[0], e)])), none, "another agent");
    assert_eq!(h.apply_unchanged(hand_back("a1", vec![lease(ids[0], e + 1)])), none, "a stale epoch");
    assert_eq!(h.apply_unchanged(hand_back("a1", vec![lease(ids[1], e)])), none, "a queued task");
    assert_eq!(h.apply_unchanged(hand_back("a1", vec![lease(12345, e)])), none, "no such task");
    let too_many = vec![lease(ids[0], e); validate::MAX_COMPLETIONS + 1];
    let r = h.apply_unchanged(hand_back("a1", too_many));
    let limit = format!("{} entries is over the limit of {}", validate::MAX_COMPLETIONS + 1, validate::MAX_COMPLETIONS);
    assert_eq!(r, Response::Rejected(StateError::invalid("leases", limit)));
    assert_eq!(h.task(ids[0]).state, TaskState::Running);

    // Named twice in one command: handed back once, the second is skipped.
    let r = h.apply(hand_back("a1", vec![lease(ids[0], e), lease(ids[0], e)]));
    assert_eq!(r, Response::HandedBack { task_ids: vec![ids[0]] });
    // Finished: a late hand-back changes nothing.
    let e2 = h.lease("a1", &agent("", ""), 1)[0].epoch;
    h.complete("a1", ids[0], e2, Outcome::Success).expect("current");
    assert_eq!(h.apply_unchanged(hand_back("a1", vec![lease(ids[0], e2)])), none, "a finished task");
}

#[test]
fn cancel_rules() {
    let mut h = acme();
    h.tenant("beta", limits(100, 0), &[]);
    let ids = h.queue("acme", vec![task("work"), task("work")]);
    let r = h.apply_unchanged(Command::Cancel { tenant: "beta".into(), task_id: ids[0] });
    assert_eq!(r, Response::Rejected(StateError::TaskNotFound(ids[0])));
    let r = h.apply_unchanged(Command::Cancel { tenant: "acme".into(), task_id: 12345 });
    assert_eq!(r, Response::Rejected(StateError::TaskNotFound(12345)));
    let r = h.apply(Command::Cancel { tenant: "acme".into(), task_id: ids[0] });
    assert!(matches!(&r, Response::Cancelled(t) if t.state == TaskState::Cancelled), "{r:?}");
    assert_eq!(h.task(ids[0]).state, TaskState::Cancelled);
    let r = h.apply_unchanged(Command::Cancel { tenant: "acme".into(), task_id: ids[0] });
    assert_eq!(r, Response::Rejected(StateError::AlreadyFinished(ids[0])));

    let g = h.lease("a1", &agent("", ""), 5);
    assert_eq!(g.len(), 1, "a cancelled task is never leased");
    h.apply(Command::Cancel { tenant: "acme".into(), task_id: ids[1] });
    let t = h.task(ids[1]);
    assert_eq!((t.state, t.lease), (TaskState::Cancelled, None));
    assert!(h.sm.indexes().running.is_empty());
    let late = h.complete("a1", ids[1], g[0].epoch, Outcome::Success);
    assert_eq!(late, Err(StateError::StaleEpoch { task_id: ids[1], epoch: g[0].epoch }));
    assert!(h.expire(ids[1], g[0].epoch, ExpireReason::LeaseLost).is_empty());
}

fn chunk(task_id: u64, epoch: u64, seq: u64, data: &[u8]) -> LogAppend {
    LogAppend { lease: LeaseRef { task_id, epoch }, seq, stream: LogStream::Stdout, data: data.to_vec() }
}

fn append(agent: &str, cap: u64, chunks: Vec<LogAppend>) -> Command {
    Command::AppendLogs { agent_id: agent.into(), max_task_log_bytes: cap, chunks }
}

/// The stored log of a task as (epoch, stream, data) tuples.
fn log_of(h: &Harness, id: u64) -> Vec<(u64, LogStream, Vec<u8>)> {
    let chunks = logs::read_log(&h.kv, id, 0, usize::MAX).expect("read");
    chunks.into_iter().map(|(_, c)| (c.epoch, c.stream, c.data)).collect()
}

#[test]
fn logs_are_fenced_deduplicated_and_capped() {
    let mut h = acme();
    let id = h.queue("acme", vec![task("work")])[0];
    let e1 = h.lease("a1", &agent("", ""), 1)[0].epoch;
    let ok = |n| Response::LogsAppended { results: vec![Ok(()); n] };
    assert_eq!(h.apply(append("a1", 10, vec![chunk(id, e1, 0, b"hello"), chunk(id, e1, 1, b" ")])), ok(2));
    // A retried chunk is acknowledged and ignored; a gap in seq is fine.
    assert_eq!(h.apply(append("a1", 10, vec![chunk(id, e1, 1, b" "), chunk(id, e1, 5, b"wor")])), ok(2));
    assert_eq!(log_of(&h, id).iter().map(|c| c.2.clone()).collect::<Vec<_>>(), [&b"hello"[..], b" ", b"wor"]);
    // Another agent, or a wrong epoch: refused, nothing written.
    let stale = |epoch| Response::LogsAppended { results: vec![Err(StateError::StaleEpoch { task_id: id, epoch })] };
    assert_eq!(h.apply_unchanged(append("a2", 10, vec![chunk(id, e1, 9, b"x")])), stale(e1));
    assert_eq!(h.apply_unchanged(append("a1", 10, vec![chunk(id, e1 + 1, 9, b"x")])), stale(e1 + 1));
    // Crossing the cap cuts the chunk and adds one marker; later output is dropped.
    assert_eq!(h.apply(append("a1", 10, vec![chunk(id, e1, 6, b"ld!!!"), chunk(id, e1, 7, b"more")])), ok(2));
    let log = log_of(&h, id);
    assert_eq!(log[3], (e1, LogStream::Stdout, b"l".to_vec()), "cut at 10 bytes");
    assert_eq!(log[4], (e1, LogStream::System, logs::truncation_marker(10)));
    assert_eq!(log.len(), 5);
    let meta = logs::log_meta(&h.kv, id).expect("meta");
    assert_eq!((meta.bytes, meta.chunks, meta.truncated), (10, 5, true));
    // Reading resumes at an index, bounded in bytes.
    let page = logs::read_log(&h.kv, id, 1, 2).expect("read");
    assert_eq!(page.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 2]);
    // Finished: late output is stale; purge removes the log with the task.
    h.complete("a1", id, e1, Outcome::Success).expect("current");
    assert_eq!(h.apply_unchanged(append("a1", 10, vec![chunk(id, e1, 8, b"late")])), stale(e1));
    h.now_ms += 10;
    h.apply(h.purge_cmd(h.now_ms, 10));
    assert!(log_of(&h, id).is_empty());
    assert!(!h.kv.map.keys().any(|k| k.starts_with(logs::META) || k.starts_with(logs::CHUNK)));
}

#[test]
fn oversize_log_chunks_are_refused() {
    let mut h = acme();
    let id = h.queue("acme", vec![task("work")])[0];
    let e = h.lease("a1", &agent("", ""), 1)[0].epoch;
    let big = vec![0u8; logs::MAX_CHUNK_BYTES + 1];
    let r = h.apply_unchanged(append("a1", u64::MAX, vec![chunk(id, e, 0, b"ok"), chunk(id, e, 1, &big)]));
    assert_eq!(invalid_field(&r), "chunks[1].data");
}

#[test]
fn listing_pages_through_one_tenants_tasks_with_filters() {
    let mut h = acme();
    h.tenant("other", limits(100, 0), &[spec("work", 0, 0)]);
    let mine = h.queue("acme", vec![task("work"); 30]);
    let theirs = h.queue("other", vec![task("work"); 5]);
    let g = h.lease("a1", &agent("", ""), 7);
    // Round-robin across tenants: some of each tenant's tasks run.
    let mut running: Vec<u64> = g.iter().map(|g| g.task_id).filter(|id| mine.contains(id)).collect();
    running.sort_unstable();
    assert!(!running.is_empty() && running.len() < 7, "{running:?}");
    let walk = |h: &Harness, filter: &views::TaskFilter, limit: usize| {
        let (mut seen, mut after, mut pages) = (Vec::new(), 0, 0);
        loop {
            let (page, next) = h.list("acme", filter, after, limit);
            assert!(page.len() <= limit);
            seen.extend(page.iter().map(|t| t.id));
            pages += 1;
            match next {
                Some(n) => after = n,
                None => break,
            }
            assert!(pages < 100, "listing does not end");
        }
        seen
    };
    assert_eq!(walk(&h, &Default::default(), 4), mine);
    assert_eq!(walk(&h, &Default::default(), 1000), mine);
    let only_running = views::TaskFilter { state: Some(TaskState::Running), code: None };
    assert_eq!(walk(&h, &only_running, 2), running);
    let queued = views::TaskFilter { state: Some(TaskState::Queued), code: None };
    assert_eq!(walk(&h, &queued, 3), mine.iter().copied().filter(|id| !running.contains(id)).collect::<Vec<_>>());
    assert!(walk(&h, &views::TaskFilter { state: None, code: Some("pair".into()) }, 5).is_empty());
    let (page, next) = h.list("other", &Default::default(), 0, 10);
    assert_eq!((page.iter().map(|t| t.id).collect::<Vec<_>>(), next), (theirs, None));
    assert_eq!(h.list("nobody", &Default::default(), 0, 10), (vec![], None));
    assert_eq!(h.list("acme", &Default::default(), u64::MAX, 10), (vec![], None));
}

/// A bounded purge deletes at most `max_keys` keys per entry, cutting a large log from its
/// last chunk down (the harness checks after every entry that the chunks left are
/// `0..meta.chunks`), and the purges that follow finish the job: the tables end as one
/// unbounded purge leaves them.
#[test]
fn a_bounded_purge_deletes_at_most_max_keys_per_entry_and_the_next_ones_finish() {
    const MAX_KEYS: u64 = 7;
    let run = |bounded: bool| {
        let mut h = acme();
        h.queue("acme", vec![task("work"); 3]);
        let grants = h.lease("a1", &agent("", ""), 3);
        assert_eq!(grants.len(), 3);
        for (n, g) in grants.iter().enumerate() {
            let chunks = (0..10 + 15 * n as u64).map(|seq| chunk(g.task_id, g.epoch, seq, b"out")).collect();
            h.apply(append("a1", u64::MAX, chunks));
            h.complete("a1", g.task_id, g.epoch, Outcome::Success).expect("current");
        }
        h.now_ms += 10;
        let before = h.now_ms;
        let mut entries = 0;
        while !h.sm.indexes().finished.is_empty() {
            let keys_before = h.kv.map.len();
            let term = h.term;
            let cmd = if bounded {
                Command::PurgeBounded { term, finished_before_ms: before, max_tasks: 100, max_keys: MAX_KEYS }
            } else {
                h.purge_cmd(before, 100)
            };
            assert!(matches!(h.apply(cmd), Response::Purged { .. }));
            let deleted = keys_before.saturating_sub(h.kv.map.len()) as u64;
            assert!(!bounded || deleted <= MAX_KEYS, "entry {entries} deleted {deleted} keys");
            entries += 1;
            assert!(entries < 100, "the purge does not end");
        }
        let mut tables = h.kv.map.clone();
        tables.remove(CLOCK);
        (tables, entries)
    };
    let (unbounded, one) = run(false);
    let (bounded, many) = run(true);
    assert_eq!(one, 1);
    // 75 chunks, 3 log metas and 3 task rows: at least 12 entries of 7 keys.
    assert!(many >= 12, "{many} entries");
    assert!(bounded == unbounded, "the bounded purges end in other tables than one unbounded purge");
}

/// Tenant acme with code "work", room for 100 queued tasks of up to 4 KiB.
fn acme_for_kib_payloads() -> Harness {
    let mut h = Harness::new();
    h.tenant(
        "acme",
        TenantLimits { max_queued_tasks: 100, max_concurrency: 0, max_payload_bytes: 4096 },
        &[spec("work", 0, 0)],
    );
    h
}

/// The `i`-th task's payload: ~1 KiB, its length and bytes its own.
fn kib_payload(i: usize) -> Vec<u8> {
    vec![i as u8; 1000 + i]
}

/// A command larger than one group is cut into several (see `groups`): every task reads
/// back with its own payload, from its group or its row, before and after it changes,
/// through the committed tables and after a reload; a group goes when its last task does.
#[test]
fn a_command_spanning_several_groups_reads_back_every_task() {
    let (mut h, payload) = (acme_for_kib_payloads(), kib_payload);
    let ids = h.queue("acme", (0..30).map(|i| NewTask { payload: payload(i), ..task("work") }).collect());
    let groups = h.sm.indexes().groups.len();
    assert!(groups >= 4, "30 tasks of ~1 KiB in {groups} groups");
    let check = |h: &Harness| {
        for (i, id) in ids.iter().enumerate() {
            let (t, p) = views::get_task_with_payload(&h.kv, Some("acme"), *id).expect("read").expect("present");
            assert_eq!((t.id, p), (*id, payload(i)));
        }
    };
    check(&h);
    let g = h.lease("a1", &agent("", ""), 11);
    check(&h);
    // A listing reads consecutive tasks through the group it read last.
    let (listed, _) = h.list("acme", &Default::default(), 0, 30);
    let want: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, if i < 11 { TaskState::Running } else { TaskState::Queued }))
        .collect();
    assert_eq!(listed.iter().map(|t| (t.id, t.state)).collect::<Vec<_>>(), want);
    for g in &g {
        h.complete("a1", g.task_id, g.epoch, Outcome::Success).expect("current");
    }
    h.sm = StateMachine::load(&h.kv).expect("load");
    invariants::check(&h.sm, &h.kv).expect("invariants");
    check(&h);
    h.now_ms += 10;
    let cmd = h.purge_cmd(h.now_ms, 100);
    assert_eq!(h.apply(cmd), Response::Purged { tasks: 11, idempotency_keys: 0 });
    for (i, id) in ids.iter().enumerate() {
        let found = views::get_task(&h.kv, None, *id).expect("read").is_some();
        assert_eq!(found, i >= 11, "task {i}");
    }
    assert!(h.sm.indexes().groups.len() < groups, "the groups wholly purged are gone");
}

/// Single-task calls the proposal batcher put in one entry share groups (their ids are
/// consecutive across the entry's commands): 40 tasks of ~1 KiB cost a handful of keys,
/// not 40, and read back as if each call had its own entry. A refused call in between
/// takes no id and does not split them.
#[test]
fn single_task_calls_in_one_entry_share_groups() {
    let (mut h, payload) = (acme_for_kib_payloads(), kib_payload);
    let mut calls: Vec<Command> = (0..40)
        .map(|i| Harness::queue_cmd("acme", None, vec![NewTask { payload: payload(i), ..task("work") }]))
        .collect();
    calls.insert(20, Harness::queue_cmd("nobody", None, vec![task("work")]));
    let keys_before = h.kv.map.len();
    let Response::Batch(rs) = h.apply(Command::Batch(calls)) else { panic!("not a batch response") };
    let mut ids = Vec::new();
    for (i, r) in rs.into_iter().enumerate() {
        match r {
            Response::Queued { task_ids, deduplicated: false } => ids.extend(task_ids),
            Response::Rejected(StateError::UnknownTenant(_)) => assert_eq!(i, 20),
            other => panic!("call {i}: {other:?}"),
        }
    }
    assert_eq!(ids.len(), 40);
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "ids are consecutive: {ids:?}");
    let groups = h.sm.indexes().groups.len();
    // ~41 KiB in groups of up to 6 KiB.
    assert!((7..=10).contains(&groups), "40 single-task calls in {groups} groups");
    // The groups and nothing else (the clock's key was there before): no key per task.
    assert_eq!(h.kv.map.len() - keys_before, groups);
    for (i, id) in ids.iter().enumerate() {
        let (t, p) = views::get_task_with_payload(&h.kv, Some("acme"), *id).expect("read").expect("present");
        assert_eq!((t.id, t.state, p), (*id, TaskState::Queued, payload(i)));
    }
    let g = h.lease("a1", &agent("", ""), 40);
    assert_eq!(g.iter().map(|g| g.task_id).collect::<Vec<_>>(), ids);
}

/// A task queued by one call of an entry can be changed, and even purged, by a later
/// call of the same entry, before its group is written: the later call reads it where
/// it waits, and the purge writes the groups first.
#[test]
fn a_task_queued_and_finished_in_the_same_entry() {
    let mut h = acme();
    let index = h.index + 1;
    let id = |seq: u64| (index << super::tasks::TASK_ID_SHIFT) | seq;
    let until = h.now_ms + 1;
    let r = h.apply(Command::Batch(vec![
        Harness::queue_cmd("acme", None, vec![task("work"); 3]),
        Command::Cancel { tenant: "acme".into(), task_id: id(1) },
        Command::Purge { term: h.term, finished_before_ms: until, max_tasks: 10 },
        Harness::queue_cmd("acme", None, vec![task("work")]),
        Command::Cancel { tenant: "acme".into(), task_id: id(3) },
    ]));
    let Response::Batch(rs) = r else { panic!("{r:?}") };
    assert_eq!(rs[0], Response::Queued { task_ids: vec![id(0), id(1), id(2)], deduplicated: false });
    assert!(matches!(&rs[1], Response::Cancelled(t) if t.id == id(1)), "{:?}", rs[1]);
    assert_eq!(rs[2], Response::Purged { tasks: 1, idempotency_keys: 0 });
    assert_eq!(rs[3], Response::Queued { task_ids: vec![id(3)], deduplicated: false });
    assert!(matches!(&rs[4], Response::Cancelled(t) if t.id == id(3)), "{:?}", rs[4]);
    assert_eq!(views::get_task(&h.kv, None, id(1)).expect("read"), None);
    for (seq, state) in [(0, TaskState::Queued), (2, TaskState::Queued), (3, TaskState::Cancelled)] {
        let (t, p) = views::get_task_with_payload(&h.kv, None, id(seq)).expect("read").expect("present");
        assert_eq!((t.state, p), (state, task("work").payload), "task {seq}");
    }
    h.sm = StateMachine::load(&h.kv).expect("load");
    invariants::check(&h.sm, &h.kv).expect("invariants after a reload");
}

/// Where a bounded purge stops depends on the tasks, not on how a replica stores them:
/// replicas that applied the same entries under releases before and after task groups
/// hold the same finished tasks inline and grouped, and must purge the same ones.
#[test]
fn a_bounded_purge_cuts_at_the_same_task_whatever_the_layout() {
    let mut grouped = acme();
    for _ in 0..3 {
        grouped.queue("acme", vec![task("work"); 4]);
    }
    for g in grouped.lease("a1", &agent("", ""), 12) {
        grouped.complete("a1", g.task_id, g.epoch, Outcome::Success).expect("current");
    }
    // The same tasks as an older release stored them: inline rows, no groups.
    let ids: Vec<u64> = grouped.sm.indexes().finished.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids.len(), 12);
    let mut kv = grouped.kv.clone();
    for id in &ids {
        let (t, p) = views::get_task_with_payload(&grouped.kv, None, *id).expect("read").expect("present");
        kv.map.insert(keys::task(*id), keys::encode_task(&t, &p));
    }
    kv.map.retain(|k, _| !k.starts_with(keys::GROUP));
    let sm = StateMachine::load(&kv).expect("load");
    assert!(sm.indexes().groups.is_empty());
    let (index, term, now_ms) = (grouped.index, grouped.term, grouped.now_ms + 10);
    let mut inline = Harness { sm, kv, index, term, now_ms, log: Vec::new() };
    grouped.now_ms = now_ms;
    let purge = |h: &Harness| Command::PurgeBounded { term, finished_before_ms: h.now_ms, max_tasks: 100, max_keys: 5 };
    for _ in 0..4 {
        let (a, b) = (grouped.apply(purge(&grouped)), inline.apply(purge(&inline)));
        assert_eq!(a, b);
        let left = |h: &Harness| h.sm.indexes().finished.iter().map(|(_, id)| *id).collect::<Vec<_>>();
        assert_eq!(left(&grouped), left(&inline));
    }
    assert!(grouped.sm.indexes().finished.is_empty() && grouped.sm.indexes().groups.is_empty());
}

/// Committed reads see the live tables, not a snapshot: a task's row read just before a
/// purge deleted its group (and the row) answers "not found", not an internal error.
#[test]
fn a_read_racing_the_purge_of_its_group_finds_nothing() {
    let mut h = acme();
    let ids = h.queue("acme", vec![task("work")]);
    h.lease("a1", &agent("", ""), 1);
    // The row is there (leased); the group is gone, as between the read's two lookups.
    assert!(matches!(keys::decode_row(&h.kv.map[&keys::task(ids[0])]), Ok(keys::Row::Grouped(_))));
    h.kv.map.remove(&keys::group(ids[0]));
    assert_eq!(views::get_task_with_payload(&h.kv, None, ids[0]).expect("not an error"), None);
    // Without the payload the row alone answers.
    assert!(views::get_task(&h.kv, None, ids[0]).expect("read").is_some());
}

/// A data directory from before task groups: its tasks have inline rows (version 2) and
/// no group. They load, lease, finish and purge beside grouped tasks, keep their payload
/// inline when rewritten, and leave no key behind.
#[test]
fn tasks_queued_before_groups_keep_inline_rows_to_the_end() {
    let mut h = acme();
    let new_ids = h.queue("acme", vec![task("work")]);
    let mut old = h.task(new_ids[0]);
    old.id = 7;
    old.payload_bytes = 2;
    h.kv.map.insert(keys::task(7), keys::encode_task(&old, b"{}"));
    h.sm = StateMachine::load(&h.kv).expect("load");
    invariants::check(&h.sm, &h.kv).expect("invariants");
    assert_eq!(views::get_task_with_payload(&h.kv, None, 7).expect("read"), Some((old, b"{}".to_vec())));
    assert_eq!(views::task_count(&h.kv).expect("count"), 2);

    let g = h.lease("a1", &agent("", ""), 2);
    assert_eq!(g.iter().map(|g| g.task_id).collect::<Vec<_>>(), [7, new_ids[0]]);
    assert!(matches!(keys::decode_row(&h.kv.map[&keys::task(7)]), Ok(keys::Row::Inline { .. })));
    assert!(matches!(keys::decode_row(&h.kv.map[&keys::task(new_ids[0])]), Ok(keys::Row::Grouped(_))));
    assert_eq!(views::get_task_with_payload(&h.kv, None, 7).expect("read").map(|(_, p)| p), Some(b"{}".to_vec()));
    for g in &g {
        h.complete("a1", g.task_id, g.epoch, Outcome::Success).expect("current");
    }
    h.now_ms += 10;
    let cmd = h.purge_cmd(h.now_ms, 100);
    assert_eq!(h.apply(cmd), Response::Purged { tasks: 2, idempotency_keys: 0 });
    let left: Vec<_> = h.kv.map.keys().filter(|k| k.starts_with(keys::TASK) || k.starts_with(keys::GROUP)).collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn purge_removes_old_finished_tasks_and_their_keys() {
    let mut h = acme();
    let ids = h.queue("acme", vec![task("work"); 4]);
    let g = h.lease("a1", &agent("", ""), 3);
    h.now_ms = 2_000;
    h.complete("a1", ids[0], g[0].epoch, Outcome::Success).expect("current");
    h.now_ms = 3_000;
    h.complete("a1", ids[1], g[1].epoch, Outcome::Killed).expect("current");
    let term = h.term;
    let purge = |before| Command::Purge { term, finished_before_ms: before, max_tasks: 100 };
    assert_eq!(h.apply(purge(2_000)), Response::Purged { tasks: 0, idempotency_keys: 0 }, "the bound is strict");
    assert_eq!(h.apply(purge(2_500)), Response::Purged { tasks: 1, idempotency_keys: 0 });
    // The purged task's group still holds the others: its row is a tombstone.
    assert_eq!(views::get_task(&h.kv, None, ids[0]).expect("read"), None);
    assert_eq!(h.kv.map.get(&keys::task(ids[0])), Some(&keys::purged_row()));
    assert_eq!(views::get_task(&h.kv, None, ids[1]).expect("read").map(|t| t.state), Some(TaskState::Killed));
    h.now_ms = 100_000;
    assert_eq!(h.apply(purge(100_000)), Response::Purged { tasks: 1, idempotency_keys: 0 });
    // Running and queued tasks are never purged.
    let (listed, _) = h.list("acme", &Default::default(), 0, 10);
    assert_eq!(
        listed.iter().map(|t| (t.id, t.state)).collect::<Vec<_>>(),
        [(ids[2], TaskState::Running), (ids[3], TaskState::Queued)]
    );
    assert_eq!(views::task_count(&h.kv).expect("count"), 2);
    // The last of the group to go takes the group and every row of its tasks with it.
    h.complete("a1", ids[2], g[2].epoch, Outcome::Success).expect("current");
    h.apply(Command::Cancel { tenant: "acme".into(), task_id: ids[3] });
    h.now_ms = 200_000;
    assert_eq!(h.apply(purge(200_000)), Response::Purged { tasks: 2, idempotency_keys: 0 });
    assert_eq!(views::task_count(&h.kv).expect("count"), 0);
    let left: Vec<_> = h.kv.map.keys().filter(|k| k.starts_with(keys::TASK) || k.starts_with(keys::GROUP)).collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(h.sm.indexes().groups.is_empty());
}

#[test]
fn the_clock_never_runs_backwards() {
    let mut h = acme();
    h.now_ms = 5_000;
    h.queue("acme", vec![task("work")]);
    h.now_ms = 3_000; // A new leader with a slower clock.
    let id = h.queue("acme", vec![NewTask { delay_ms: 100, ..task("work") }])[0];
    let t = h.task(id);
    assert_eq!((t.created_ms, t.ready_at_ms, h.sm.clock_ms()), (5_000, 5_100, 5_000));
    h.now_ms = 9_000;
    h.apply_unchanged(Command::Cancel { tenant: "acme".into(), task_id: 1 }); // Refused: no tick.
    assert_eq!(StateMachine::load(&h.kv).expect("load").clock_ms(), 5_000);
}

#[test]
fn reload_rebuilds_the_same_state_and_behaviour() {
    let mut h = acme();
    h.tenant("beta", limits(100, 2), &[spec("work", 0, 1)]);
    let term = h.term;
    let lease = |agent_id: &str, a: AgentAttrs, max_tasks| Command::Lease {
        term,
        requests: vec![LeaseRequest { agent_id: agent_id.into(), attrs: a, slots: 4, max_tasks }],
    };
    h.queue("acme", vec![prio("pair", 1), placed("work", "", "eu"), task("pair"), task("work")]);
    h.queue("beta", vec![task("work"), NewTask { delay_ms: 300, ..task("work") }, task("work"), task("work")]);
    h.apply(Harness::queue_cmd("acme", Some("k"), vec![placed("work", "acme", ""), prio("work", 2)]));
    let g = h.lease("a1", &agent("", "us"), 3);
    h.complete("a1", g[0].task_id, g[0].epoch, Outcome::Error).expect("current");
    h.expire(g[1].task_id, g[1].epoch, ExpireReason::LeaseLost);
    h.now_ms += 400;
    h.apply(h.promote_cmd(10));
    let tenant = h.task(g[2].task_id).tenant;
    h.apply(Command::Cancel { tenant, task_id: g[2].task_id });

    let loaded = StateMachine::load(&h.kv).expect("load");
    assert_eq!(loaded.indexes().canonical(), h.sm.indexes().canonical());
    assert_eq!((loaded.tenants(), loaded.codes(), loaded.agents()), (h.sm.tenants(), h.sm.codes(), h.sm.agents()));
    assert_eq!((&loaded.rr_cursor, loaded.clock_ms()), (&h.sm.rr_cursor, h.sm.clock_ms()));

    let mut twin =
        Harness { sm: loaded, kv: h.kv.clone(), index: h.index, term: h.term, now_ms: h.now_ms, log: Vec::new() };
    let running: Vec<(u64, u64, String)> =
        h.sm.indexes().running.iter().map(|(id, r)| (*id, r.epoch, r.agent_id.clone())).collect();
    let mut next = vec![
        (10, lease("a2", agent("", "eu"), 3)),
        (10, lease("a3", agent("acme", "eu"), 2)),
        (0, Harness::queue_cmd("acme", Some("k"), vec![task("work")])),
        (500, Harness::queue_cmd("beta", None, vec![prio("work", 2); 2])),
        (10, lease("a1", agent("", "us"), 8)),
        (1_000, h.purge_cmd(10_000, 100)),
        (0, Harness::queue_cmd("acme", Some("k"), vec![task("pair")])),
    ];
    for (id, epoch, agent_id) in running {
        let c = completion(&agent_id, id, epoch, Outcome::Success, "");
        next.insert(2, (5, Command::Complete { completions: vec![c] }));
    }
    for (advance, cmd) in next {
        (h.now_ms, twin.now_ms) = (h.now_ms + advance, twin.now_ms + advance);
        assert_eq!(h.apply(cmd.clone()), twin.apply(cmd));
        assert!(h.kv == twin.kv, "the reloaded replica diverged");
    }
    assert_eq!(h.sm.indexes().canonical(), twin.sm.indexes().canonical());
}

// --- Property tests ---

const TENANTS: [&str; 2] = ["t0", "t1"];
const CODES: [&str; 3] = ["solo", "duo", "free"];

fn agents() -> [(&'static str, AgentAttrs); 3] {
    let gpu = AgentAttrs { labels: [("gpu".to_string(), "1".to_string())].into(), ..agent("", "eu") };
    [("a-us", agent("", "us")), ("a-eu", gpu), ("a-acme", agent("acme", "eu"))]
}

fn placements() -> [Option<Placement>; 4] {
    let gpu = Placement { labels: [("gpu".to_string(), "1".to_string())].into(), ..Default::default() };
    [None, placed("x", "", "eu").placement, placed("x", "acme", "").placement, Some(gpu)]
}

/// Two tenants (t1 limited to 3 running and 12 waiting), each with codes solo (max 1
/// running), duo (max 2) and free (unlimited), all with one retry: solo's re-queued at
/// once, duo's after the default backoff, free's after 0.5–2 s and only on `exit_code`
/// and `timeout`.
fn fleet() -> Harness {
    let mut h = Harness::new();
    let free_retry = RetryOverride {
        retry_delay_ms: Some(500),
        backoff_max_ms: Some(2_000),
        retry_on: Some(RetryOn::from_reasons([FailureReason::ExitCode, FailureReason::Timeout])),
    };
    let codes = [
        CodeSpec { retry: no_delay(), ..spec(CODES[0], 1, 1) },
        spec(CODES[1], 2, 1),
        CodeSpec { retry: free_retry, ..spec(CODES[2], 0, 1) },
    ];
    h.tenant("t0", limits(0, 0), &codes);
    h.tenant("t1", limits(12, 3), &codes);
    // Cluster "acme" is shared by both tenants; its agent is registered to it.
    let (id, attrs) = agents()[2].clone();
    h.cluster("acme", None, &[(id, &attrs)]);
    h
}

/// One random step. `Queue` tasks are (code, priority, delay, placement); `Complete` picks a
/// running task, or (if `stale`) any grant ever made; `Expire` picks any grant ever made.
/// The timer commands (`Expire`, `Promote`, `Purge`) name the current term, or (if
/// `old_term`) the one before it, as a deposed leader's tick would; `NewTerm` is an
/// election. `HandBack` picks any grant ever made.
#[derive(Clone, Debug)]
#[rustfmt::skip]
enum Op {
    Queue { tenant: usize, key: Option<u8>, tasks: Vec<(usize, u8, u64, usize)> },
    Lease { agent: usize, max: u32 },
    Complete { pick: usize, outcome: Outcome, stale: bool },
    Expire { pick: usize, lost: bool, old_term: bool },
    Cancel { tenant: usize, pick: usize },
    Promote { old_term: bool },
    Purge { age: u64, old_term: bool },
    Log { pick: usize, len: usize },
    NewTerm,
    HandBack { pick: usize, zombie: bool },
    Presence { gone: Vec<usize>, seen: Vec<usize>, old_term: bool },
    /// Tenant t1's mode: 0 shared, 1 vpc with fallback, 2 vpc without (its tasks then wait:
    /// every harness agent is plain).
    SetMode { mode: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    let outcome = prop_oneof![
        3 => Just(Outcome::Success),
        3 => Just(Outcome::Error),
        1 => Just(Outcome::Timeout),
        1 => Just(Outcome::Killed),
        1 => Just(Outcome::ImagePull),
        1 => Just(Outcome::Infrastructure),
    ];
    let delay = prop_oneof![3 => Just(0u64), 1 => 1..3_000u64];
    let new_task = (0..3usize, 0..=2u8, delay, 0..4usize);
    prop_oneof![
        4 => (0..2usize, proptest::option::of(0..3u8), proptest::collection::vec(new_task, 1..5))
            .prop_map(|(tenant, key, tasks)| Op::Queue { tenant, key, tasks }),
        4 => (0..3usize, 1..4u32).prop_map(|(agent, max)| Op::Lease { agent, max }),
        4 => (any::<usize>(), outcome, proptest::bool::weighted(0.3))
            .prop_map(|(pick, outcome, stale)| Op::Complete { pick, outcome, stale }),
        1 => (any::<usize>(), any::<bool>(), old_term())
            .prop_map(|(pick, lost, old_term)| Op::Expire { pick, lost, old_term }),
        1 => (0..2usize, any::<usize>()).prop_map(|(tenant, pick)| Op::Cancel { tenant, pick }),
        1 => old_term().prop_map(|old_term| Op::Promote { old_term }),
        1 => (0..5_000u64, old_term()).prop_map(|(age, old_term)| Op::Purge { age, old_term }),
        2 => (any::<usize>(), 0..40usize).prop_map(|(pick, len)| Op::Log { pick, len }),
        1 => Just(Op::NewTerm),
        1 => (any::<usize>(), proptest::bool::weighted(0.3)).prop_map(|(pick, zombie)| Op::HandBack { pick, zombie }),
        1 => (proptest::collection::vec(0..4usize, 0..3), proptest::collection::vec(0..3usize, 0..2), old_term())
            .prop_map(|(gone, seen, old_term)| Op::Presence { gone, seen, old_term }),
        1 => (0..3u8).prop_map(|mode| Op::SetMode { mode }),
    ]
}

fn old_term() -> impl Strategy<Value = bool> {
    proptest::bool::weighted(0.2)
}

/// The term a timer command names: the current one, or the one before it.
fn timer_term(h: &Harness, old_term: bool) -> u64 {
    if old_term { h.term - 1 } else { h.term }
}

/// Applies a timer command from an older term and asserts it was refused, naming both
/// terms, and changed nothing (not even the clock).
fn assert_stale_term_refused(h: &mut Harness, cmd: Command) {
    let before = h.snapshot();
    let r = h.apply(cmd);
    assert_eq!(r, Response::Rejected(StateError::StaleTerm { proposed: h.term - 1, entry: h.term }));
    h.assert_unchanged(before, &r);
}

/// The `pick`-th element (modulo the length), if any.
fn nth<T: Clone>(v: &[T], pick: usize) -> Option<T> {
    v.get(pick % v.len().max(1)).cloned()
}

/// Whether `g` is the current lease of its task.
fn is_current(h: &Harness, g: &Grant) -> bool {
    h.sm.indexes().running.get(&g.task_id).is_some_and(|r| r.epoch == g.epoch && r.agent_id == g.agent_id)
}

fn step(h: &mut Harness, grants: &mut Vec<Grant>, ids: &mut Vec<u64>, op: Op) {
    match op {
        Op::Queue { tenant, key, tasks } => {
            let tasks: Vec<NewTask> = tasks
                .into_iter()
                .map(|(c, priority, delay_ms, p)| NewTask {
                    priority,
                    delay_ms,
                    placement: placements()[p].clone(),
                    ..task(CODES[c])
                })
                .collect();
            let key = key.map(|k| format!("k{k}"));
            let before = h.snapshot();
            // Retries and lost leases may requeue past the quota; new tasks may not.
            let (adding, limit) = (tasks.len() as u64, h.sm.tenants()[TENANTS[tenant]].limits.max_queued_tasks);
            let fits = limit == 0 || h.sm.indexes().waiting(TENANTS[tenant]) + adding <= limit;
            match h.apply(Harness::queue_cmd(TENANTS[tenant], key.as_deref(), tasks)) {
                Response::Queued { task_ids, deduplicated: false } => {
                    assert!(fits, "queued over the quota");
                    ids.extend(task_ids);
                }
                r @ Response::Queued { deduplicated: true, .. } => h.assert_unchanged(before, &r),
                r @ Response::Rejected(StateError::QuotaExceeded { .. }) => {
                    assert!(!fits, "refused a batch that fits the quota");
                    h.assert_unchanged(before, &r);
                }
                other => panic!("queue: {other:?}"),
            }
        }
        Op::Lease { agent, max } => {
            let (name, attrs) = agents()[agent].clone();
            let new = h.lease(name, &attrs, max);
            assert!(new.len() <= max as usize);
            for g in &new {
                let t = h.task(g.task_id);
                assert_eq!((g.epoch, t.state), (h.index, TaskState::Running));
                assert!(placement::matches(&t.placement, &attrs), "{t:?} granted to {attrs:?}");
                let mode = h.sm.tenant_mode(&t.tenant);
                assert!(mode.admits(&attrs), "{t:?} of a tenant in mode {mode:?} granted to {attrs:?}");
            }
            grants.extend(new);
        }
        Op::Complete { pick, outcome, stale: false } if !h.sm.indexes().running.is_empty() => {
            let running = &h.sm.indexes().running;
            let (&id, r) = running.iter().nth(pick % running.len()).expect("non-empty");
            let (agent_id, epoch) = (r.agent_id.clone(), r.epoch);
            let was = h.task(id);
            h.complete(&agent_id, id, epoch, outcome).expect("current lease");
            // `completion` reports exit code 1 for every failure.
            let reason = match outcome {
                Outcome::Success => None,
                Outcome::Error => Some(FailureReason::ExitCode),
                Outcome::Timeout => Some(FailureReason::Timeout),
                Outcome::Killed => Some(FailureReason::Cancelled),
                Outcome::ImagePull => Some(FailureReason::ImagePull),
                Outcome::Infrastructure => Some(FailureReason::Infrastructure),
            };
            let want = match reason {
                None => TaskState::Complete,
                Some(r) if was.retries_left > 0 && was.retry.retry_on.contains(r) => {
                    let n = was.max_retries - was.retries_left + 1;
                    if retry::backoff_ms(&was.retry, id, n) > 0 { TaskState::Delayed } else { TaskState::Queued }
                }
                Some(FailureReason::Timeout) => TaskState::Timeout,
                Some(FailureReason::Cancelled) => TaskState::Killed,
                Some(_) => TaskState::Error,
            };
            let t = h.task(id);
            assert_eq!((t.state, t.reason), (want, reason));
            assert_eq!(
                t.attempt_log.last().map(|a| (a.number, a.epoch, a.reason)),
                Some((was.attempts, epoch, reason))
            );
        }
        Op::Complete { pick, outcome, .. } => {
            let Some(g) = nth(grants, pick) else { return };
            // A current lease is made stale by naming another agent.
            let agent_id = if is_current(h, &g) { "zombie".to_string() } else { g.agent_id };
            let before = h.snapshot();
            let c = completion(&agent_id, g.task_id, g.epoch, outcome, "");
            let r = h.apply(Command::Complete { completions: vec![c] });
            let Response::Completed { results } = &r else { panic!("{r:?}") };
            assert!(matches!(results[..], [Err(StateError::StaleEpoch { .. } | StateError::TaskNotFound(_))]), "{r:?}");
            h.assert_unchanged(before, &r);
        }
        Op::Expire { pick, lost, old_term } => {
            let Some(g) = nth(grants, pick) else { return };
            let current = is_current(h, &g);
            let reason = if lost { ExpireReason::LeaseLost } else { ExpireReason::TimedOut };
            let leases = vec![LeaseRef { task_id: g.task_id, epoch: g.epoch }];
            let cmd = Command::ExpireLeases { term: timer_term(h, old_term), leases, reason };
            if old_term {
                return assert_stale_term_refused(h, cmd);
            }
            let before = h.snapshot();
            let r = h.apply(cmd);
            if current {
                assert_eq!(r, Response::Expired { task_ids: vec![g.task_id] });
                assert_ne!(h.task(g.task_id).state, TaskState::Running);
            } else {
                assert_eq!(r, Response::Expired { task_ids: vec![] });
                h.assert_unchanged(before, &r);
            }
        }
        Op::Cancel { tenant, pick } => {
            let Some(id) = nth(ids, pick) else { return };
            let before = h.snapshot();
            match h.apply(Command::Cancel { tenant: TENANTS[tenant].into(), task_id: id }) {
                Response::Cancelled(t) => {
                    assert_eq!((t.state, h.task(id).state), (TaskState::Cancelled, TaskState::Cancelled))
                }
                r @ Response::Rejected(StateError::TaskNotFound(_) | StateError::AlreadyFinished(_)) => {
                    h.assert_unchanged(before, &r)
                }
                other => panic!("cancel: {other:?}"),
            }
        }
        Op::Log { pick, len } => {
            // Any grant ever made: current ones append (up to the 64-byte cap), stale
            // ones are refused and change nothing.
            let Some(g) = nth(grants, pick) else { return };
            let current = is_current(h, &g);
            let before = h.snapshot();
            let meta = logs::log_meta(&h.kv, g.task_id).expect("meta");
            let seq = if meta.epoch == g.epoch { meta.next_seq } else { 0 };
            let r = h.apply(append(&g.agent_id, 64, vec![chunk(g.task_id, g.epoch, seq, &vec![b'x'; len])]));
            let Response::LogsAppended { results } = &r else { panic!("{r:?}") };
            if current {
                assert_eq!(results[..], [Ok(())]);
                assert!(logs::log_meta(&h.kv, g.task_id).expect("meta").bytes <= 64);
            } else {
                assert!(matches!(results[..], [Err(StateError::StaleEpoch { .. })]), "{r:?}");
                h.assert_unchanged(before, &r);
            }
        }
        Op::Promote { old_term } => {
            let cmd = Command::PromoteDelayed { term: timer_term(h, old_term), max_tasks: 1_000 };
            if old_term {
                return assert_stale_term_refused(h, cmd);
            }
            h.apply(cmd);
            assert!(h.sm.indexes().delayed.first().is_none_or(|(at, _)| *at > h.sm.clock_ms()));
        }
        Op::Purge { age, old_term } => {
            let bound = h.sm.clock_ms().saturating_sub(age);
            let term = timer_term(h, old_term);
            // The leader's bounded purge on odd ages (a few keys per entry, repeated until
            // done, as the leader's ticks do), the unbounded one of older logs otherwise.
            let bounded = age % 2 == 1;
            let cmd = |max_keys| match bounded {
                true => Command::PurgeBounded { term, finished_before_ms: bound, max_tasks: 1_000, max_keys },
                false => Command::Purge { term, finished_before_ms: bound, max_tasks: 1_000 },
            };
            if old_term {
                return assert_stale_term_refused(h, cmd(3));
            }
            h.apply(cmd(3));
            let due = |h: &Harness| {
                let idx = h.sm.indexes();
                idx.finished.first().is_some_and(|(at, _)| *at < bound)
                    || idx.idem_expiry.first().is_some_and(|(at, _)| *at <= h.sm.clock_ms())
            };
            while bounded && due(h) {
                h.apply(cmd(3));
            }
            assert!(h.sm.indexes().finished.first().is_none_or(|(at, _)| *at >= bound));
            assert!(h.sm.indexes().idem_expiry.first().is_none_or(|(at, _)| *at > h.sm.clock_ms()));
        }
        Op::NewTerm => h.term += 1,
        Op::SetMode { mode } => {
            use super::modes::TenantMode;
            let mode = match mode {
                0 => TenantMode::Shared,
                m => TenantMode::Vpc { vpc: "t1-vpc".into(), fallback: m == 1 },
            };
            let r = h.apply(Command::SetTenantMode { tenant: "t1".into(), mode: mode.clone() });
            assert_eq!(r, Response::TenantMode(mode));
        }
        Op::Presence { gone, seen, old_term } => {
            // Agents 0..3 are the harness's (3 is one never heard of); a seen agent comes
            // back with its usual attributes.
            let name = |i: usize| agents().get(i).map(|(n, _)| n.to_string()).unwrap_or_else(|| "stranger".into());
            let gone: Vec<String> = gone.into_iter().map(name).collect();
            let seen: Vec<SeenAgent> = seen
                .into_iter()
                .map(|i| {
                    let (n, attrs) = agents()[i].clone();
                    SeenAgent { id: n.into(), attrs, slots: 4 }
                })
                .collect();
            let cmd = Command::AgentPresence { term: timer_term(h, old_term), gone: gone.clone(), seen: seen.clone() };
            if old_term {
                return assert_stale_term_refused(h, cmd);
            }
            let running_before = h.sm.indexes().running.clone();
            h.apply(cmd);
            assert_eq!(h.sm.indexes().running, running_before, "presence never touches leases");
            for a in &seen {
                assert!(h.sm.agents().contains_key(&a.id) && !h.sm.agents_gone().contains_key(&a.id));
            }
            for id in gone.iter().filter(|id| !seen.iter().any(|a| &a.id == *id)) {
                assert_eq!(h.sm.agents_gone().contains_key(id), h.sm.agents().contains_key(id), "{id}");
            }
        }
        Op::HandBack { pick, zombie } => {
            // Any grant ever made, handed back by its holder or (if `zombie`) another agent.
            let Some(g) = nth(grants, pick) else { return };
            let agent_id = if zombie { "zombie".to_string() } else { g.agent_id.clone() };
            let current = is_current(h, &g) && !zombie;
            let before = h.snapshot();
            // Read only when current: a stale grant's task may have been purged.
            let t0 = current.then(|| h.task(g.task_id));
            let r =
                h.apply(Command::HandBack { agent_id, leases: vec![LeaseRef { task_id: g.task_id, epoch: g.epoch }] });
            if let Some(t0) = t0 {
                assert_eq!(r, Response::HandedBack { task_ids: vec![g.task_id] });
                let t = h.task(g.task_id);
                assert_eq!(
                    (t.state, t.lost_leases, t.retries_left),
                    (TaskState::Queued, t0.lost_leases, t0.retries_left)
                );
            } else {
                assert_eq!(r, Response::HandedBack { task_ids: vec![] });
                h.assert_unchanged(before, &r);
            }
        }
    }
}

/// Properties that hold after every entry (beyond `invariants::check`, run by the harness).
fn check_properties(h: &Harness) {
    let idx = h.sm.indexes();
    let mut tasks = Vec::new();
    super::groups::for_each_task(&h.kv, &mut |t, _| tasks.push(t)).expect("scan");
    assert_eq!(idx.state_counts.iter().sum::<u64>(), tasks.len() as u64, "each task counted once");
    for t in &tasks {
        let indexed = idx.running.get(&t.id).map(|r| (r.agent_id.as_str(), r.epoch));
        let lease = t.lease.as_ref().map(|l| (l.agent_id.as_str(), l.epoch));
        if t.state == TaskState::Running {
            assert!(lease.is_some() && lease == indexed, "running task {} lease {lease:?} index {indexed:?}", t.id);
        } else {
            assert_eq!((lease, indexed), (None, None), "task {} is {:?}", t.id, t.state);
        }
    }
    let mut per_code: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    let mut per_tenant: BTreeMap<&str, u32> = BTreeMap::new();
    for r in idx.running.values() {
        *per_code.entry((r.tenant.as_str(), r.code.as_str())).or_default() += 1;
        *per_tenant.entry(r.tenant.as_str()).or_default() += 1;
    }
    for ((tenant, code), n) in per_code {
        let max = h.sm.codes()[&(tenant.to_string(), code.to_string())].max_concurrency;
        assert!(max == 0 || n <= max, "{tenant}/{code}: {n} running, max {max}");
    }
    for (tenant, n) in per_tenant {
        let max = h.sm.tenants()[tenant].limits.max_concurrency;
        assert!(max == 0 || n <= max, "{tenant}: {n} running, max {max}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_the_invariants(ops in proptest::collection::vec((op(), -300..1_500i64), 1..60)) {
        let mut h = fleet();
        let (mut grants, mut ids) = (Vec::new(), Vec::new());
        for (op, advance) in ops {
            h.now_ms = h.now_ms.saturating_add_signed(advance); // Sometimes backwards: clamped.
            step(&mut h, &mut grants, &mut ids, op);
            check_properties(&h);
        }

        // Replaying the log into a fresh replica gives byte-identical tables.
        let mut replica = Harness::new();
        for (req, term) in h.log.clone() {
            replica.term = term;
            replica.apply_request(req);
        }
        prop_assert!(replica.kv == h.kv, "replay diverged");
        prop_assert_eq!(views::digest(&replica.kv).expect("digest"), views::digest(&h.kv).expect("digest"));
        // And reloading the tables rebuilds the same indexes.
        let loaded = StateMachine::load(&h.kv).expect("load");
        prop_assert_eq!(loaded.indexes().canonical(), h.sm.indexes().canonical());
    }
}
