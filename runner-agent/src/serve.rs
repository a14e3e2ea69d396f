//! Process wiring: the control socket, the optional metrics listener, signals (SIGTERM
//! and Ctrl-C drain), and the agent itself; everything stopped and joined before
//! [`serve`] returns.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent::{Agent, AgentError};
use crate::config::AgentConfig;

/// Runs an agent from its configuration until it has drained (SIGTERM, SIGINT or
/// `POST /drain` on the control socket): the control socket, the optional metrics
/// listener, the watchdog and the agent's loops, all stopped and joined before returning.
pub async fn serve(cfg: AgentConfig, exe: std::path::PathBuf) -> Result<(), AgentError> {
    let socket_path = cfg.control_socket();
    let metrics_listen = cfg.metrics_listen;
    let listener = crate::socket::bind(&socket_path).await?;
    let agent = Agent::new(cfg).await?;
    let stop = CancellationToken::new();
    let background = TaskTracker::new();
    background.spawn(crate::socket::serve(listener, socket_path.clone(), agent.clone(), stop.clone()));
    if let Some(addr) = metrics_listen {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Io { path: addr.to_string().into(), source })?;
        background.spawn(crate::socket::serve_metrics(tcp, agent.clone(), stop.clone()));
    }
    let drain = agent.draining().clone();
    let signals_stop = stop.clone();
    background.spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: draining"),
            _ = drain.cancelled() => return,
            _ = signals_stop.cancelled() => return,
        }
        drain.cancel();
    });
    tracing::info!(socket = %socket_path.display(), "control socket ready");
    let r = agent.run(&exe).await;
    stop.cancel();
    background.close();
    background.wait().await;
    r
}
