//! Stopping and starting the host's Docker engine, for the engine-restart scenario.
//!
//! Only used where the harness owns the engine (`DROVER_CHAOS_OWN_ENGINE=1`): stopping
//! it stops every container on the host. Stop sends SIGTERM to the pid in
//! `/var/run/docker.pid` and waits for the process to exit; start runs
//! `deploy/docker-up.sh` (or the script `DROVER_CHAOS_ENGINE_UP` names), which starts
//! dockerd detached and waits until it answers.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const PID_FILE: &str = "/var/run/docker.pid";
const STOP_WITHIN: Duration = Duration::from_secs(40);

#[allow(unsafe_code)]
fn kill(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Stops the engine; returns how long it took to exit.
pub fn stop() -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let pid: i32 = std::fs::read_to_string(PID_FILE)
        .with_context(|| format!("reading {PID_FILE} (is dockerd running here?)"))?
        .trim()
        .parse()
        .context("parsing the dockerd pid")?;
    if !kill(pid, libc::SIGTERM) {
        bail!("SIGTERM to dockerd (pid {pid}): {}", std::io::Error::last_os_error());
    }
    while kill(pid, 0) {
        if t0.elapsed() > STOP_WITHIN {
            bail!("dockerd (pid {pid}) still running {} s after SIGTERM", STOP_WITHIN.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(t0.elapsed())
}

/// Starts the engine and waits until it answers; returns how long that took.
pub fn start() -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let script = std::env::var("DROVER_CHAOS_ENGINE_UP").unwrap_or_else(|_| "deploy/docker-up.sh".into());
    let status = std::process::Command::new("bash")
        .arg(&script)
        .stdin(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {script}"))?;
    if !status.success() {
        bail!("{script} failed: {status}");
    }
    Ok(t0.elapsed())
}
