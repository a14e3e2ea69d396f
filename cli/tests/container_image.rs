//! `deploy/container/`: the image builds with `build.sh` from the binary under test, runs
//! `drover --version` as its unprivileged user, serves a one-node control plane (its data
//! in the image's volume) that becomes ready, and stops cleanly on `docker stop`.
//!
//! Nothing can be pulled here, so the base is made from the host's own C libraries (the
//! ones `ldd` names for the binary), imported as an image; `build.sh --base` takes it.
//! Needs a running Docker engine and the `docker` CLI (Debian's `docker.io`).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use drover_chaos::{clients, eventually, ports};

/// Runs a command; its stdout on success, a panic with its output otherwise.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes the container and images when the test ends, passed or not.
struct Cleanup {
    container: String,
    images: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.container]).output();
        for image in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", image]).output();
        }
    }
}

/// A base image holding only the shared libraries the binary links (dereferenced, at
/// their paths), like a distroless glibc base.
fn import_glibc_base(binary: &std::path::Path, name: &str) {
    let ldd = run(Command::new("ldd").arg(binary));
    let libs: Vec<String> = ldd
        .lines()
        .filter_map(|l| {
            l.split_whitespace().find(|w| w.starts_with('/')).map(|p| p.trim_start_matches('/').to_string())
        })
        .collect();
    assert!(libs.iter().any(|l| l.contains("libc.so")), "ldd named no libc: {ldd}");
    let script = format!("tar -ch -C / {} | docker import - {name}", libs.join(" "));
    run(Command::new("sh").args(["-c", &script]));
}

#[tokio::test]
async fn the_image_builds_serves_a_control_plane_and_stops_cleanly() {
    let _docker = common::agent_tasks::docker().await;
    let binary = common::bin();
    let pid = std::process::id();
    let base = format!("drover-test/glibc-base:{pid}");
    let tag = format!("drover-test/drover-{pid}");
    let cleanup = Cleanup {
        container: format!("drover-test-image-{pid}"),
        images: vec![base.clone(), format!("{tag}:latest"), format!("{tag}:{}", env!("CARGO_PKG_VERSION"))],
    };
    import_glibc_base(binary, &base);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/container/build.sh");
    let built = run(Command::new("bash").args([script, "--binary"]).arg(binary).args(["--base", &base, "--tag", &tag]));
    assert_eq!(built, format!("{tag}:{}", env!("CARGO_PKG_VERSION")));

    let version = run(Command::new("docker").args(["run", "--rm", &built, "--version"]));
    assert_eq!(version, format!("drover {}", env!("CARGO_PKG_VERSION")));
    let user = run(Command::new("docker").args(["image", "inspect", "--format", "{{.Config.User}}", &built]));
    assert_eq!(user, "65532:65532", "the image runs unprivileged");

    // A one-node control plane in the container, on the host's loopback (dev mode is
    // refused off loopback), its data in the image's volume owned by the server's user.
    let (grpc, http) = (ports::reserve().expect("port"), ports::reserve().expect("port"));
    let members = format!("1=127.0.0.1:{grpc}");
    run(Command::new("docker").args(["run", "-d", "--network", "host", "--name", &cleanup.container, &built]).args([
        "server",
        "--node-id",
        "1",
        "--listen",
        &format!("127.0.0.1:{grpc}"),
        "--http",
        &format!("127.0.0.1:{http}"),
        "--data-dir",
        "/var/lib/drover/node-1",
        "--initial-members",
        &members,
        "--dev-insecure",
    ]));
    let http_addr = format!("127.0.0.1:{http}");
    let ready = eventually(Duration::from_secs(30), "the containerized server to be ready", || async {
        let (code, text) = clients::plain_http_get(&http_addr, "/readyz").await.ok()?;
        (code == 200).then_some(text)
    })
    .await
    .unwrap_or_else(|e| {
        let logs = Command::new("docker").args(["logs", &cleanup.container]).output();
        panic!("{e}: {logs:?}")
    });
    assert!(ready.contains("ready: leader 1"), "{ready}");

    // `docker stop` sends SIGTERM and kills after 10 s: a clean stop exits 0 well before.
    let stopping = Instant::now();
    run(Command::new("docker").args(["stop", "--time", "10", &cleanup.container]));
    let took = stopping.elapsed();
    let code = run(Command::new("docker").args(["inspect", "--format", "{{.State.ExitCode}}", &cleanup.container]));
    assert_eq!(code, "0", "the server exits 0 on SIGTERM");
    assert!(took < Duration::from_secs(9), "stopping took {took:?}");
    let logs = Command::new("docker").args(["logs", &cleanup.container]).output().expect("docker logs");
    let logs = String::from_utf8_lossy(&logs.stderr);
    assert!(logs.contains("raft stopped"), "{logs}");
    drop(cleanup);
}
