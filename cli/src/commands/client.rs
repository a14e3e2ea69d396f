//! Connection settings shared by the client commands: the server address list (flags or
//! `DROVER_ADDR`), tried in order, following the leader hint in `x-drover-leader`.

use clap::Args;
use tonic::transport::{Channel, Endpoint};

#[derive(Args, Clone)]
pub struct Conn {
    /// Control-plane gRPC addresses (HOST:PORT, comma-separated); any node works.
    #[arg(long, env = "DROVER_ADDR", value_delimiter = ',', default_value = "127.0.0.1:7400", global = true)]
    pub addr: Vec<String>,
}

pub async fn connect(addr: &str) -> anyhow::Result<Channel> {
    let ep = Endpoint::from_shared(format!("http://{addr}"))?.connect_timeout(std::time::Duration::from_secs(3));
    ep.connect().await.map_err(|e| anyhow::anyhow!("cannot reach the control plane at {addr}: {e}"))
}

/// The leader's address from a status, if the server sent one.
pub fn leader_hint(status: &tonic::Status) -> Option<String> {
    status.metadata().get("x-drover-leader").and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// Calls `f` against the first reachable address, then once more against the leader if
/// the node answered that it is not the leader.
pub async fn with_leader<T, F, Fut>(conn: &Conn, mut f: F) -> anyhow::Result<T>
where
    F: FnMut(Channel) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let mut last = None;
    for addr in &conn.addr {
        let ch = match connect(addr).await {
            Ok(c) => c,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        match f(ch).await {
            Ok(v) => return Ok(v),
            Err(s) => match leader_hint(&s) {
                Some(leader) => {
                    let ch = connect(&leader).await?;
                    return f(ch).await.map_err(|s| anyhow::anyhow!("{}", s.message()));
                }
                None => return Err(anyhow::anyhow!("{} ({:?})", s.message(), s.code())),
            },
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no control-plane address given")))
}
