//! What a shared-fleet task can reach, checked from inside one (issue: "isolation
//! defaults, each checked, not assumed"). A real agent runs a probe task in the default
//! task network; the probe tries the host's ports through the Docker bridge gateway, the
//! control plane's ports, the Docker socket and the agent's control socket, lists its
//! network interfaces, and reports. A listener of the test's own on every host address
//! counts the connections it receives, so a probe that got through cannot go unseen; and
//! the same probe in a container on Docker's default bridge network does get through,
//! which shows the probe can tell (the test can fail).
//! Needs a running Docker engine: `.ci/run` installs and starts one.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::agent_tasks::*;
use drover_chaos::{AgentOptions, ClusterOptions};
use drover_proto::v1 as pv;

/// The Docker bridge's gateway address: the host, as seen from a bridged container.
fn bridge_gateway() -> String {
    let out = Command::new("docker")
        .args(["network", "inspect", "bridge", "--format", "{{(index .IPAM.Config 0).Gateway}}"])
        .output()
        .expect("docker network inspect");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

// Multi-threaded: the accept loop must run while the test blocks on `docker run`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_fleet_task_reaches_nothing_on_the_host_nor_other_containers() {
    let _d = docker().await;
    let gw = bridge_gateway();
    // A listener on every host address; it counts who gets through.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let reached = Arc::new(AtomicU64::new(0));
    let counter = reached.clone();
    let accept = tokio::spawn(async move {
        while let Ok((_s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });

    let c = common::cluster(ClusterOptions { nodes: 1, ..Default::default() }).await;
    create_tenant(&c).await;
    let node = c.ids()[0];
    let grpc_port = c.addr(node).rsplit(':').next().expect("port").to_string();
    let agent = c.start_agent("isolated", AgentOptions::default()).expect("agent");
    let agent_socket = agent.socket.display().to_string();

    // Each check prints one line; "OPEN" marks a failure of isolation.
    let probe = format!(
        "for t in {gw}:{port} {gw}:{grpc_port} 127.0.0.1:{grpc_port}; do \
           if nc -w 2 ${{t%:*}} ${{t#*:}} </dev/null >/dev/null 2>&1; then echo \"OPEN tcp $t\"; else echo \"closed tcp $t\"; fi; \
         done; \
         for f in /var/run/docker.sock /run/docker.sock {agent_socket}; do \
           if [ -e \"$f\" ]; then echo \"OPEN file $f\"; else echo \"closed file $f\"; fi; \
         done; \
         echo \"interfaces: $(ls /sys/class/net | tr '\\n' ' ')\""
    );
    register(&c, sh("probe", &probe)).await;
    let id = queue(&c, "probe", b"{}", 1).await[0];
    let t = wait_finished(&c, id, Duration::from_secs(60), &[&agent]).await;
    assert_eq!(state(&t), pv::TaskState::Complete, "{t:?}");
    let (out, err, _) = log(&c, id).await;
    let out = String::from_utf8_lossy(&out).to_string();
    eprintln!("probe said:\n{out}{}", String::from_utf8_lossy(&err));
    assert_eq!(out.lines().filter(|l| l.starts_with("closed ")).count(), 6, "{out}");
    assert!(!out.contains("OPEN"), "a shared-fleet task reached something:\n{out}");
    // Only loopback: no interface through which any other container could be addressed.
    assert!(out.lines().any(|l| l.trim_end() == "interfaces: lo"), "{out}");
    assert_eq!(reached.load(Ordering::SeqCst), 0, "the host listener saw a connection from the task");

    // The control: the same probe from a container on Docker's default bridge reaches the
    // host listener, so "closed" above is the task network's doing, not the probe's.
    let bridged = Command::new("timeout")
        .args(["60", "docker", "run", "--rm", "--network", "bridge", IMAGE, "nc", "-w", "2", &gw, &port.to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("docker run");
    assert!(bridged.status.success(), "the bridged control could not reach the host: {bridged:?}");
    drover_chaos::eventually(Duration::from_secs(10), "the bridged control's connection", || async {
        (reached.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await
    .expect("the host listener saw the bridged container");
    accept.abort();
}
