//! Property tests of request validation, one per request type the API turns into a
//! command (10,000 cases each): random field values (empty, huge, control characters,
//! any Unicode, boundary integers such as `u64::MAX`) never panic, neither in the edge
//! checks nor in `apply`; a request the edge check refuses is refused by `apply` too; and
//! a refused command leaves the tables and the indexes byte-identical.
//!
//! Each case starts from a small seeded state (tenant `acme`, code `echo`, three queued
//! tasks, one of them leased to agent `a1`) so commands can also hit real rows.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::command::{CodeSpec, Completion, LeaseRef, LeaseRequest, NewTask, Outcome};
use super::indexes::Canonical;
use super::logs::{self, LogAppend, LogStream};
use super::model::{AgentAttrs, CodeLimits, Placement, RetryOn, TenantLimits};
use super::retry::{MAX_BACKOFF_MAX_MS, MAX_RETRY_DELAY_MS, RetryOverride};
use super::{Command, MemKv, Proposal, Request, Response, StateMachine, Txn};
use super::{image_ref, invariants, validate};

const CASES: u32 = 10_000;

struct World {
    sm: StateMachine,
    kv: MemKv,
    index: u64,
    /// The lease of the seeded running task.
    lease: LeaseRef,
}

impl World {
    fn apply(&mut self, cmd: Command) -> Response {
        self.index += 1;
        let req = Request::V1(Proposal { stamp_ms: 1_000 + self.index, cmd });
        let mut txn = Txn::new(&self.kv);
        let resp = self.sm.apply(&mut txn, &req, self.index, 1).expect("MemKv never fails");
        self.kv.commit(txn.into_writes());
        if let Err(e) = invariants::check(&self.sm, &self.kv) {
            panic!("invariants broken after {req:?}:\n{e}");
        }
        resp
    }

    /// The seeded state, built once and reloaded from its tables for each case (cheaper
    /// than applying the seed commands 10,000 times).
    fn seeded() -> Self {
        static SEED: std::sync::OnceLock<(MemKv, u64, LeaseRef)> = std::sync::OnceLock::new();
        let (kv, index, lease) = SEED.get_or_init(|| {
            let w = World::build_seed();
            (w.kv, w.index, w.lease)
        });
        let sm = StateMachine::load(kv).expect("MemKv never fails");
        World { sm, kv: kv.clone(), index: *index, lease: *lease }
    }

    fn build_seed() -> Self {
        let mut w = World {
            sm: StateMachine::default(),
            kv: MemKv::default(),
            index: 0,
            lease: LeaseRef { task_id: 0, epoch: 0 },
        };
        w.apply(Command::UpsertTenant {
            id: "acme".into(),
            limits: validate::DEFAULT_TENANT_LIMITS,
            allowed_cidrs: vec![],
        });
        let spec = CodeSpec {
            name: "echo".into(),
            image: "drover-test/busybox:1".into(),
            command: vec![],
            env: BTreeMap::new(),
            limits: CodeLimits { timeout_ms: 60_000, ..Default::default() },
            max_concurrency: 0,
            default_retries: 1,
            retry: Default::default(),
            placement: Placement::default(),
        };
        w.apply(Command::RegisterCode { tenant: "acme".into(), spec });
        let task = NewTask {
            code: "echo".into(),
            payload: b"hi".to_vec(),
            priority: 0,
            delay_ms: 0,
            timeout_ms: 0,
            retries: None,
            retry: Default::default(),
            placement: None,
        };
        w.apply(Command::QueueTasks {
            tenant: "acme".into(),
            idempotency_key: None,
            idempotency_ttl_ms: 1_000,
            tasks: vec![task; 3],
        });
        let req = LeaseRequest { agent_id: "a1".into(), attrs: AgentAttrs::default(), slots: 1, max_tasks: 1 };
        match w.apply(Command::Lease { term: 1, requests: vec![req] }) {
            Response::Leased { grants } if grants.len() == 1 => {
                w.lease = LeaseRef { task_id: grants[0].task_id, epoch: grants[0].epoch };
            }
            other => panic!("seed lease: {other:?}"),
        }
        w
    }

    fn state(&self) -> (BTreeMap<Vec<u8>, Vec<u8>>, Canonical) {
        (self.kv.map.clone(), self.sm.indexes().canonical())
    }

    /// Applies `cmd`; asserts that a command the edge refused (`edge`) is refused by
    /// `apply` as well, and that a refused command changed nothing.
    fn check(&mut self, edge: Result<(), super::StateError>, cmd: Command) -> Result<(), TestCaseError> {
        let before = self.state();
        let resp = self.apply(cmd);
        if let Err(e) = &edge {
            prop_assert!(matches!(resp, Response::Rejected(_)), "edge refused ({e}) but apply answered {resp:?}");
        }
        if matches!(resp, Response::Rejected(_)) {
            prop_assert!(self.state() == before, "refused command changed the state: {resp:?}");
        }
        Ok(())
    }
}

/// Strings that hit every kind of limit: names, any Unicode, printable runs, control
/// characters, and long ones (up to 6,000 bytes, past every per-string limit).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9][a-z0-9._-]{0,10}",
        // Any Unicode scalar (proptest's `any::<char>()` favours edge cases); a regex `.`
        // class was the slowest part of a case in a debug build.
        2 => proptest::collection::vec(any::<char>(), 0..16).prop_map(String::from_iter),
        2 => "[ -~]{0,40}",
        1 => "[\\x00-\\x1f=/:@A-Z]{0,8}",
        1 => prop_oneof![Just(64usize), Just(129), Just(257), Just(4_097), Just(6_000)].prop_map(|n| "x".repeat(n)),
        1 => Just(String::new()),
        1 => Just("DROVER_X".to_string()),
        1 => Just("TASK_ID".to_string()),
    ]
}

fn image() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9._/:@-]{0,40}",
        1 => text(),
        1 => Just("busybox:1".to_string()),
        1 => Just("../../x".to_string()),
        1 => Just("--privileged".to_string()),
    ]
}

fn string_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop_oneof![
        3 => proptest::collection::btree_map(text(), text(), 0..4),
        1 => proptest::collection::btree_map("[a-z]{1,6}", prop_oneof![Just("v".repeat(250)), Just(String::new())], 0..40),
    ]
}

fn placement() -> impl Strategy<Value = Placement> {
    (text(), text(), string_map()).prop_map(|(cluster, region, labels)| Placement { cluster, region, labels })
}

fn attrs() -> impl Strategy<Value = AgentAttrs> {
    (text(), text(), text(), text(), text(), string_map()).prop_map(
        |(region, cluster, vpc, ip_pool, egress_ip, labels)| AgentAttrs {
            region,
            cluster,
            vpc,
            ip_pool,
            egress_ip,
            labels,
        },
    )
}

fn big_u64() -> impl Strategy<Value = u64> {
    prop_oneof![any::<u64>(), Just(0), Just(u64::MAX), Just(u64::MAX - 1), Just(i64::MAX as u64), 0..10u64]
}

fn new_task() -> impl Strategy<Value = NewTask> {
    (
        prop_oneof![Just("echo".to_string()), text()],
        (0..2_000usize).prop_map(|n| vec![7u8; n]),
        any::<u8>(),
        big_u64(),
        big_u64(),
        proptest::option::of(any::<u32>()),
        proptest::option::of(placement()),
        retry_override(),
    )
        .prop_map(|(code, payload, priority, delay_ms, timeout_ms, retries, placement, retry)| NewTask {
            code,
            payload,
            priority,
            delay_ms,
            timeout_ms,
            retries,
            retry,
            placement,
        })
}

/// Retry settings around their bounds, and `retry_on` with any bits (a decoded entry
/// could carry bits outside the taxonomy).
fn retry_override() -> impl Strategy<Value = RetryOverride> {
    let delay = prop_oneof![big_u64(), Just(MAX_RETRY_DELAY_MS), Just(MAX_RETRY_DELAY_MS + 1), 0..5_000u64];
    let cap = prop_oneof![big_u64(), Just(MAX_BACKOFF_MAX_MS), Just(MAX_BACKOFF_MAX_MS + 1), 0..5_000u64];
    (proptest::option::of(delay), proptest::option::of(cap), proptest::option::of(any::<u8>())).prop_map(
        |(retry_delay_ms, backoff_max_ms, on)| RetryOverride {
            retry_delay_ms,
            backoff_max_ms,
            retry_on: on.map(RetryOn::from_bits),
        },
    )
}

/// A lease reference: the seeded running one, one near it, or anything.
fn lease_ref(w: &World) -> impl Strategy<Value = LeaseRef> + use<> {
    let real = w.lease;
    prop_oneof![
        Just(real),
        big_u64().prop_map(move |epoch| LeaseRef { task_id: real.task_id, epoch }),
        (big_u64(), big_u64()).prop_map(|(task_id, epoch)| LeaseRef { task_id, epoch }),
    ]
}

fn agent() -> impl Strategy<Value = String> {
    prop_oneof![Just("a1".to_string()), text()]
}

/// XorShift instead of the default ChaCha: in a debug build ChaCha's unoptimised SIMD
/// was the largest cost of a case (perf: about a fifth of the time).
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn image_references_never_panic(s in prop_oneof![image(), proptest::collection::vec(any::<char>(), 0..300).prop_map(String::from_iter)]) {
        let _ = image_ref::check(&s);
    }

    #[test]
    fn upsert_tenant(id in text(), q in big_u64(), c in any::<u32>(), p in big_u64(),
                     cidrs in proptest::collection::vec(prop_oneof![text(), Just("10.0.0.0/8".to_string())], 0..3)) {
        let mut w = World::seeded();
        let limits = TenantLimits { max_queued_tasks: q, max_concurrency: c, max_payload_bytes: p };
        let edge = validate::name("id", &id)
            .and_then(|_| validate::tenant_limits(&limits))
            .and_then(|_| validate::cidrs("allowed_cidrs", &cidrs));
        w.check(edge, Command::UpsertTenant { id, limits, allowed_cidrs: cidrs })?;
    }

    #[test]
    fn register_code(tenant in prop_oneof![Just("acme".to_string()), text()], name in text(), image in image(),
                     command in proptest::collection::vec(text(), 0..3), env in string_map(),
                     mem in big_u64(), timeout_ms in big_u64(), max_concurrency in any::<u32>(),
                     default_retries in any::<u32>(), placement in placement(), retry in retry_override()) {
        let mut w = World::seeded();
        let spec = CodeSpec {
            name, image, command, env,
            limits: CodeLimits { memory_bytes: mem, cpu_millis: 0, pids: 0, timeout_ms },
            max_concurrency, default_retries, retry, placement,
        };
        let edge = validate::code_spec(&spec);
        w.check(edge, Command::RegisterCode { tenant, spec })?;
    }

    #[test]
    fn queue_tasks(tasks in proptest::collection::vec(new_task(), 0..4), key in proptest::option::of(text()),
                   ttl in big_u64()) {
        let mut w = World::seeded();
        let edge = validate::queue_batch(&tasks, key.as_deref(), &validate::DEFAULT_TENANT_LIMITS);
        let cmd = Command::QueueTasks { tenant: "acme".into(), idempotency_key: key, idempotency_ttl_ms: ttl, tasks };
        w.check(edge, cmd)?;
    }

    #[test]
    fn lease(requests in proptest::collection::vec((agent(), attrs(), any::<u32>(), any::<u32>()), 0..3)) {
        let mut w = World::seeded();
        let requests: Vec<LeaseRequest> = requests
            .into_iter()
            .map(|(agent_id, attrs, slots, max_tasks)| LeaseRequest { agent_id, attrs, slots, max_tasks })
            .collect();
        let edge = requests.iter().try_for_each(|r| validate::agent_attrs("attributes", &r.attrs));
        w.check(edge, Command::Lease { term: 1, requests })?;
    }

    #[test]
    fn complete(picks in proptest::collection::vec(
        (agent(), lease_ref(&World::seeded()), 0..6u8, proptest::option::of(any::<i32>()), text(), big_u64(), big_u64()),
        0..3)) {
        let mut w = World::seeded();
        let completions = picks
            .into_iter()
            .map(|(agent_id, lease, o, exit_code, error, started_ms, peak_memory_bytes)| Completion {
                agent_id, lease,
                outcome: [
                    Outcome::Success,
                    Outcome::Error,
                    Outcome::Timeout,
                    Outcome::Killed,
                    Outcome::ImagePull,
                    Outcome::Infrastructure,
                ][o as usize],
                exit_code, oom_killed: false, error, started_ms, peak_memory_bytes,
            })
            .collect();
        w.check(Ok(()), Command::Complete { completions })?;
    }

    #[test]
    fn hand_back(agent_id in agent(), leases in proptest::collection::vec(lease_ref(&World::seeded()), 0..3)) {
        let mut w = World::seeded();
        w.check(Ok(()), Command::HandBack { agent_id, leases })?;
    }

    #[test]
    fn append_logs(agent_id in agent(), cap in big_u64(), chunks in proptest::collection::vec(
        (lease_ref(&World::seeded()), big_u64(), 0..2u8, prop_oneof![
            (0..300usize).prop_map(|n| vec![b'o'; n]),
            Just(vec![0u8; logs::MAX_CHUNK_BYTES + 1]),
        ]), 0..3)) {
        let mut w = World::seeded();
        let chunks: Vec<LogAppend> = chunks
            .into_iter()
            .map(|(lease, seq, s, data)| LogAppend {
                lease, seq, stream: if s == 0 { LogStream::Stdout } else { LogStream::Stderr }, data,
            })
            .collect();
        let edge = logs::check_chunks(&chunks);
        // The same chunks twice: the second round exercises `seq` bookkeeping at the top.
        w.check(edge.clone(), Command::AppendLogs { agent_id: agent_id.clone(), max_task_log_bytes: cap, chunks: chunks.clone() })?;
        w.check(edge, Command::AppendLogs { agent_id, max_task_log_bytes: cap, chunks })?;
    }

    #[test]
    fn cancel_and_delete_code(tenant in prop_oneof![Just("acme".to_string()), text()], task_id in big_u64(),
                              name in text()) {
        let mut w = World::seeded();
        w.check(Ok(()), Command::Cancel { tenant: tenant.clone(), task_id })?;
        w.check(Ok(()), Command::DeleteCode { tenant, name })?;
    }
}
