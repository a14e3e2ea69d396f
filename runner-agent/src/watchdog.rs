//! The lease watchdog: a small process outside the agent that stops a container once its
//! lease deadline has passed, so that a frozen or dead agent cannot leave a task running
//! after the control plane has given it to someone else.
//!
//! Protocol (a directory, so it survives agent restarts):
//! * `<dir>/<container id>` holds the container's deadline in Unix milliseconds. The agent
//!   writes it (temp file + rename) at start and after every successful heartbeat, and
//!   deletes it when the container is gone.
//! * `<dir>/.agent` holds the pid of the agent using the directory.
//! * `<dir>/.lock` is locked by the one watchdog serving the directory; an agent that
//!   finds it locked reuses that watchdog instead of starting another.
//!
//! The watchdog checks every [`TICK`]: a passed deadline gets the container killed (the
//! file is removed once the engine confirms, or reports the container missing). It exits
//! when the agent named in `.agent` is gone and no deadline is left. Deadlines use the
//! wall clock, the only clock two processes share portably; a large clock step could fire
//! a deadline early (the task is then retried) or late (by the step).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;

pub const TICK: Duration = Duration::from_millis(100);
const LOCK: &str = ".lock";
const AGENT_PID: &str = ".agent";

#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error("watchdog directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("starting the watchdog process: {0}")]
    Spawn(std::io::Error),
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WatchdogError + '_ {
    move |source| WatchdogError::Io { path: path.to_path_buf(), source }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The agent's side: writes deadlines for the watchdog process.
#[derive(Clone, Debug)]
pub struct Deadlines {
    dir: PathBuf,
}

impl Deadlines {
    pub fn new(dir: PathBuf) -> Self {
        Deadlines { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sets (or pushes forward) a container's deadline.
    pub async fn arm(&self, container_id: &str, deadline: SystemTime) -> Result<(), WatchdogError> {
        let path = self.dir.join(container_id);
        let tmp = self.dir.join(format!(".{container_id}.tmp"));
        tokio::fs::write(&tmp, unix_ms(deadline).to_string()).await.map_err(io(&tmp))?;
        tokio::fs::rename(&tmp, &path).await.map_err(io(&path))
    }

    pub async fn disarm(&self, container_id: &str) -> Result<(), WatchdogError> {
        let path = self.dir.join(container_id);
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Container ids with a deadline on file.
    pub async fn armed(&self) -> Result<Vec<String>, WatchdogError> {
        let mut out = Vec::new();
        let mut rd = tokio::fs::read_dir(&self.dir).await.map_err(io(&self.dir))?;
        while let Some(e) = rd.next_entry().await.map_err(io(&self.dir))? {
            if let Some(name) = e.file_name().to_str()
                && !name.starts_with('.')
            {
                out.push(name.to_string());
            }
        }
        Ok(out)
    }
}

/// Makes sure a watchdog serves `dir` for the agent with pid `agent_pid`, starting
/// `exe agent watchdog --dir <dir>` in its own process group when none does. Returns the
/// child when one was started (the caller reaps it).
pub async fn ensure_running(
    dir: &Path,
    exe: &Path,
    agent_pid: u32,
) -> Result<Option<tokio::process::Child>, WatchdogError> {
    tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
    let pid_path = dir.join(AGENT_PID);
    tokio::fs::write(&pid_path, agent_pid.to_string()).await.map_err(io(&pid_path))?;
    let lock_path = dir.join(LOCK);
    let dir_owned = dir.to_path_buf();
    let free = tokio::task::spawn_blocking(move || -> Result<bool, WatchdogError> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match f.try_lock() {
            Ok(()) => {
                // Nobody serves the directory: release for the child to take.
                let _ = f.unlock();
                Ok(true)
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(io(&dir_owned)(e)),
        }
    })
    .await
    .map_err(|e| WatchdogError::Spawn(std::io::Error::other(e)))??;
    if !free {
        tracing::info!(dir = %dir.display(), "reusing the running watchdog");
        return Ok(None);
    }
    let log_path = dir.join(".log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(io(&log_path))?;
    let child = tokio::process::Command::new(exe)
        .args(["agent", "watchdog", "--dir"])
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        // Its own process group: signals meant for the agent's group do not reach it.
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(WatchdogError::Spawn)?;
    tracing::info!(dir = %dir.display(), pid = child.id(), "started the lease watchdog");
    Ok(Some(child))
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The watchdog process's main loop.
pub async fn run(dir: PathBuf) -> Result<(), WatchdogError> {
    let lock_path = dir.join(LOCK);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            eprintln!("drover watchdog: another watchdog serves {}; exiting", dir.display());
            return Ok(());
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
    }
    let docker = Docker::connect_with_local_defaults()?;
    let deadlines = Deadlines::new(dir.clone());
    eprintln!("drover watchdog: serving {}", dir.display());
    loop {
        let now = unix_ms(SystemTime::now());
        let armed = deadlines.armed().await?;
        for id in &armed {
            let path = dir.join(id);
            let Ok(text) = tokio::fs::read_to_string(&path).await else { continue };
            let Ok(deadline) = text.trim().parse::<u64>() else { continue };
            if now < deadline {
                continue;
            }
            match docker.kill_container(id, None::<bollard::query_parameters::KillContainerOptions>).await {
                Ok(()) => eprintln!("drover watchdog: lease deadline passed {} ms ago; killed {id}", now - deadline),
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404 | 409, .. }) => {}
                Err(e) => {
                    eprintln!("drover watchdog: killing {id}: {e}; will retry");
                    continue;
                }
            }
            let _ = tokio::fs::remove_file(&path).await;
        }
        if armed.is_empty() {
            let pid = tokio::fs::read_to_string(dir.join(AGENT_PID)).await.ok().and_then(|s| s.trim().parse().ok());
            if pid.is_none_or(|p| !pid_alive(p)) {
                eprintln!("drover watchdog: agent gone and nothing armed; exiting");
                return Ok(());
            }
        }
        tokio::time::sleep(TICK).await;
    }
}
