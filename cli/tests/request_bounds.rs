//! Inputs a client written apart from the project can send over real mTLS, refused at
//! the edge with the field and the limit named, and changing nothing: oversize and
//! ill-formed agent labels, image references outside the registry grammar, junk and
//! reserved env names, a log `seq` of `u64::MAX`, a body that is not protobuf, and more
//! follow streams of a task log than a tenant may hold.

mod common;

use std::time::Duration;

use bytes::{Buf, BufMut};
use drover_chaos::{Cluster, ClusterOptions};
use drover_identity::Role;
use drover_proto::admin as pa;
use drover_proto::agent as pg;
use drover_proto::v1 as pv;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

/// Sends and receives raw bytes, to put a body on the wire that is not protobuf.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

fn assert_invalid(e: &Status, needles: &[&str]) {
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    for n in needles {
        assert!(e.message().contains(n), "{n:?} not in {:?}", e.message());
    }
}

async fn digest(c: &Cluster, node: u64) -> String {
    let applied = c.status(node).await.expect("status").last_applied_index;
    c.inspect_all(applied).await.expect("inspect")[0].state_digest.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unbounded_and_ill_formed_inputs_are_refused_and_change_nothing() {
    let c = Cluster::start(common::bin(), ClusterOptions { nodes: 1, tls: true, ..Default::default() })
        .await
        .expect("start a TLS node");
    let node = c.wait_leader(Duration::from_secs(30)).await.expect("leader");
    c.admin(node)
        .expect("admin")
        .upsert_tenant(pa::UpsertTenantRequest { id: "acme".into(), ..Default::default() })
        .await
        .expect("tenant");
    let mut t = c.tenant(node, "acme").expect("tenant client");
    let code = |image: &str, env: &[(&str, &str)]| pv::RegisterCodeRequest {
        name: "echo".into(),
        image: image.into(),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    };
    t.register_code(code("drover-test/busybox:1", &[("MINE", "a=b")])).await.expect("a good code");
    let task_id = t.queue_tasks(common::batch(1, 8, "")).await.expect("queue").into_inner().task_ids[0];
    let before = digest(&c, node).await;

    // A 5 MB label value (it used to be stored, replicated, and then broke `agents list`).
    let mut agent = c.agent(node, "a1").expect("agent client");
    let attributes = pg::AgentAttributes {
        labels: [("big".to_string(), "x".repeat(5 << 20))].into_iter().collect(),
        ..Default::default()
    };
    let lease = pg::LeaseRequest {
        agent_id: "a1".into(),
        slots: 1,
        max_tasks: 1,
        attributes: Some(attributes),
        ..Default::default()
    };
    let e = agent.lease(lease).await.expect_err("5 MB label value");
    assert_invalid(&e, &["attributes.labels[big]", "256 bytes"]);
    let attributes = pg::AgentAttributes {
        labels: [("bad key\n".to_string(), "1".to_string())].into_iter().collect(),
        ..Default::default()
    };
    let lease = pg::LeaseRequest {
        agent_id: "a1".into(),
        slots: 1,
        max_tasks: 1,
        attributes: Some(attributes),
        ..Default::default()
    };
    let e = agent.lease(lease).await.expect_err("label key with a space and a newline");
    assert_invalid(&e, &["attributes.labels", "label key"]);

    // Image references outside the registry grammar.
    for image in ["../../x", "Busybox:1", "--privileged", "app@sha256:00"] {
        let e = t.register_code(code(image, &[])).await.expect_err(image);
        assert_invalid(&e, &["invalid image"]);
    }
    // Env names with '=', NUL, reserved names; values with NUL.
    for (k, v, why) in [
        ("A=B", "x", "'='"),
        ("A\0", "x", "NUL"),
        ("", "x", "empty"),
        ("TASK_ID", "x", "reserved"),
        ("DROVER_TOKEN", "x", "reserved"),
        ("OK", "a\0b", "NUL"),
    ] {
        let e = t.register_code(code("drover-test/busybox:1", &[(k, v)])).await.expect_err(k);
        assert_invalid(&e, &["invalid env", why]);
    }

    // seq = u64::MAX (seq + 1 overflowed inside apply).
    let chunk = pg::LogChunk {
        lease: Some(pg::LeaseRef { task_id, lease_epoch: 1 }),
        seq: u64::MAX,
        stream: pg::LogStream::Stdout as i32,
        data: b"x".to_vec(),
    };
    let e = agent
        .append_logs(pg::AppendLogsRequest { agent_id: "a1".into(), chunks: vec![chunk] })
        .await
        .expect_err("seq u64::MAX");
    assert_invalid(&e, &["chunks[0].seq", &(i64::MAX as u64).to_string()]);

    // A body that is not protobuf: InvalidArgument, not Internal.
    let ch = drover_chaos::clients::channel_with(c.addr(node), &c.creds(Role::Tenant, "acme").expect("creds"))
        .expect("channel");
    let mut raw = tonic::client::Grpc::new(ch);
    raw.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_static("/drover.v1.Tenant/QueueTasks");
    let e = raw.unary(tonic::Request::new(vec![0x0a, 0xff, 0xff, 0xff]), path, Raw).await.expect_err("garbage body");
    assert_invalid(&e, &["invalid request message", "failed to decode Protobuf message"]);

    assert_eq!(digest(&c, node).await, before, "a refused request changed the state");

    // Follow streams of one tenant are bounded (16 per node); closing one frees its place.
    let follow = || pv::GetTaskLogRequest { id: task_id, from_index: 0, follow: true };
    let mut open = Vec::new();
    for _ in 0..16 {
        open.push(t.get_task_log(follow()).await.expect("a follow stream within the limit"));
    }
    let e = t.get_task_log(follow()).await.expect_err("a 17th follow stream");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("the limit is 16"), "{}", e.message());
    t.get_task_log(pv::GetTaskLogRequest { follow: false, ..follow() }).await.expect("a plain read is not bounded");
    drop(open.pop());
    drover_chaos::eventually(Duration::from_secs(10), "a follow slot to be given back", || {
        let mut t = t.clone();
        async move { t.get_task_log(follow()).await.ok() }
    })
    .await
    .expect("a follow stream after one was closed");
}
