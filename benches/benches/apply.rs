//! Criterion benchmarks of the pure state machine's `apply` for batched queue, lease and
//! complete commands, over the in-memory key-value store (so they measure the state
//! machine, not the disk).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use drover_control_plane::state::command::{CodeSpec, Command, Completion, LeaseRef, LeaseRequest, NewTask, Outcome};
use drover_control_plane::state::model::{AgentAttrs, CodeLimits, Placement};
use drover_control_plane::state::validate::DEFAULT_TENANT_LIMITS;
use drover_control_plane::state::{MemKv, Proposal, Request, Response, StateMachine, Txn};

struct Bench {
    sm: StateMachine,
    kv: MemKv,
    index: u64,
}

impl Bench {
    fn apply(&mut self, cmd: Command) -> Response {
        self.index += 1;
        let req = Request::V1(Proposal { stamp_ms: 1_000 + self.index, cmd });
        let mut txn = Txn::new(&self.kv);
        let r = self.sm.apply(&mut txn, &req, self.index, 1).expect("in-memory apply");
        let writes = txn.into_writes();
        self.kv.commit(writes);
        r
    }

    fn new() -> Self {
        let mut b = Bench { sm: StateMachine::default(), kv: MemKv::default(), index: 0 };
        let limits = drover_control_plane::state::model::TenantLimits { max_queued_tasks: 0, ..DEFAULT_TENANT_LIMITS };
        b.apply(Command::UpsertTenant { id: "acme".into(), limits, allowed_cidrs: vec![] });
        b.apply(Command::RegisterCode {
            tenant: "acme".into(),
            spec: CodeSpec {
                name: "echo".into(),
                image: "drover-test/busybox:1".into(),
                command: vec![],
                env: Default::default(),
                limits: CodeLimits::default(),
                max_concurrency: 0,
                default_retries: 0,
                retry: Default::default(),
                placement: Placement::default(),
            },
        });
        b
    }
}

fn queue_cmd(n: usize) -> Command {
    Command::QueueTasks {
        tenant: "acme".into(),
        idempotency_key: None,
        idempotency_ttl_ms: 0,
        tasks: (0..n)
            .map(|_| NewTask {
                code: "echo".into(),
                payload: vec![7; 1024],
                priority: 1,
                delay_ms: 0,
                timeout_ms: 0,
                retries: None,
                retry: Default::default(),
                placement: None,
            })
            .collect(),
    }
}

fn lease_cmd(agents: usize, per_agent: u32) -> Command {
    Command::Lease {
        term: 1,
        requests: (0..agents)
            .map(|i| LeaseRequest {
                agent_id: format!("agent-{i}"),
                attrs: AgentAttrs::default(),
                slots: per_agent,
                max_tasks: per_agent,
            })
            .collect(),
    }
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(100));
    g.bench_function("queue_batch_100x1KiB", |bch| {
        bch.iter_batched(
            || (Bench::new(), queue_cmd(100)),
            |(mut b, cmd)| black_box(b.apply(cmd)),
            BatchSize::SmallInput,
        )
    });
    // The same 100 tasks as 100 single-task calls the proposal batcher put in one entry.
    g.bench_function("queue_100_single_calls_x1KiB", |bch| {
        bch.iter_batched(
            || (Bench::new(), Command::Batch((0..100).map(|_| queue_cmd(1)).collect())),
            |(mut b, cmd)| black_box(b.apply(cmd)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("lease_10_agents_x10", |bch| {
        bch.iter_batched(
            || {
                let mut b = Bench::new();
                b.apply(queue_cmd(100));
                (b, lease_cmd(10, 10))
            },
            |(mut b, cmd)| black_box(b.apply(cmd)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("complete_100", |bch| {
        bch.iter_batched(
            || {
                let mut b = Bench::new();
                b.apply(queue_cmd(100));
                let Response::Leased { grants } = b.apply(lease_cmd(10, 10)) else { panic!("lease failed") };
                let completions = grants
                    .into_iter()
                    .map(|g| Completion {
                        agent_id: g.agent_id,
                        lease: LeaseRef { task_id: g.task_id, epoch: g.epoch },
                        outcome: Outcome::Success,
                        exit_code: Some(0),
                        oom_killed: false,
                        error: String::new(),
                        started_ms: 0,
                        peak_memory_bytes: 0,
                    })
                    .collect();
                (b, Command::Complete { completions })
            },
            |(mut b, cmd)| black_box(b.apply(cmd)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(apply, benches);
criterion_main!(apply);
