//! `drover task logs -f` outlives the node serving it: a real task prints a line a second
//! while the CLI follows its log through a follower; that follower is stopped (SIGTERM)
//! mid-task, the server ends the stream `Unavailable` instead of holding its shutdown, and
//! the CLI resumes from the next chunk on another node. Every line arrives once, in order,
//! and the command exits 0 when the task ends. Needs a running Docker engine.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::agent_tasks::*;
use drover_chaos::{AgentOptions, ClusterOptions, eventually};

#[tokio::test]
async fn a_log_follow_resumes_on_another_node_when_its_node_stops() {
    let _docker = docker().await;
    let mut c = common::cluster(ClusterOptions { nodes: 3, ..Default::default() }).await;
    create_tenant(&c).await;
    register(&c, sh("ticker", "for i in 1 2 3 4 5 6 7 8; do echo line-$i; sleep 1; done")).await;
    let agent = c.start_agent("follow", AgentOptions::default()).expect("start agent");
    let id = queue(&c, "ticker", b"", 1).await[0];

    // Follow through a follower first; the other nodes after it in the address list.
    let leader = c.wait_leader(Duration::from_secs(10)).await.expect("leader");
    let follower = c.ids().into_iter().find(|n| *n != leader).expect("a follower");
    let mut addrs = vec![c.addr(follower).to_string()];
    addrs.extend(c.ids().into_iter().filter(|n| *n != follower).map(|n| c.addr(n).to_string()));
    let out_path = c.dir().join("follow.out");
    let err_path = c.dir().join("follow.err");
    let mut cli = Command::new(common::bin())
        .args(["task", "logs", "-f", &id.to_string(), "--addr", &addrs.join(","), "--dev-tenant", "acme"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("out file"))
        .stderr(std::fs::File::create(&err_path).expect("err file"))
        .spawn()
        .expect("run drover task logs -f");

    // Once the follow has shown output, the node serving it stops.
    eventually(Duration::from_secs(60), "followed output up to line-2", || async {
        std::fs::read_to_string(&out_path).ok()?.contains("line-2").then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", std::fs::read_to_string(&err_path)));
    c.stop(follower).expect("stop the node serving the follow");

    let status = eventually(Duration::from_secs(60), "the follow to end", || {
        let exited = cli.try_wait().expect("wait for the CLI");
        async move { exited }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", std::fs::read_to_string(&err_path)));
    let out = std::fs::read_to_string(&out_path).expect("output");
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(status.success(), "{status}: {err}");
    let want: Vec<String> = (1..=8).map(|i| format!("line-{i}")).collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "every line once, in order; stderr: {err}");
    drop(agent);
}
