//! The network task containers join, chosen once at start from the agent's attributes:
//!
//! * A plain (shared-fleet) agent: `network_mode` from its config, `none` by default (no
//!   network at all: the isolation the shared fleet promises).
//! * An IP-pool agent: a bridge network the agent owns, `drover-egress-<egress_ip>`, whose
//!   outbound traffic the engine source-NATs to the egress address
//!   (`com.docker.network.host_ipv4`) instead of masquerading it behind the host's primary
//!   address, so every connection a task makes comes from the pool's address. The host
//!   must hold that address on the interface the traffic leaves by. Containers on it
//!   cannot reach each other (`enable_icc=false`), and an `INPUT` rule the agent installs
//!   (`iptables -I INPUT -i <bridge> -j DROP`) keeps them from the host's own ports (the
//!   agent's metrics, a control plane on the same host). The rule stays with the bridge's
//!   name; it is inserted once, whatever the number of restarts.
//! * A VPC agent: `task_network` from its config, the tenant's own Docker network, which
//!   must exist: task containers join it and reach the tenant's services by name.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use bollard::Docker;
use bollard::models::NetworkCreateRequest;

use super::ExecError;
use crate::config::AgentConfig;

const HOST_IPV4: &str = "com.docker.network.host_ipv4";
const BRIDGE_NAME: &str = "com.docker.network.bridge.name";
const ICC: &str = "com.docker.network.bridge.enable_icc";

/// The egress network's name and its bridge interface's (at most 15 bytes).
pub fn egress_names(ip: Ipv4Addr) -> (String, String) {
    let dashed = ip.to_string().replace('.', "-");
    (format!("drover-egress-{dashed}"), format!("drv-eg-{:08x}", u32::from(ip)))
}

/// The network mode task containers get on this agent (see the module doc); makes the
/// egress network and its host rule for an IP-pool agent.
pub async fn task_network(docker: &Docker, cfg: &AgentConfig) -> Result<String, ExecError> {
    let a = &cfg.attributes;
    if a.vpc.is_empty() && a.ip_pool.is_empty() {
        return Ok(cfg.network_mode.clone());
    }
    let docker = docker.clone().negotiate_version().await?;
    if !a.vpc.is_empty() {
        let name = cfg.task_network.clone().unwrap_or_default();
        return match docker.inspect_network(&name, None).await {
            Ok(_) => Ok(name),
            Err(e) => Err(ExecError::Network(format!(
                "task_network {name:?} (the VPC's Docker network) cannot be used: {e}; create it first"
            ))),
        };
    }
    let ip: Ipv4Addr = a
        .egress_ip
        .parse()
        .map_err(|_| ExecError::Network(format!("attributes.egress_ip {:?} is not an IPv4 address", a.egress_ip)))?;
    let (name, bridge) = egress_names(ip);
    match docker.inspect_network(&name, None).await {
        Ok(n) => {
            let opts = n.options.unwrap_or_default();
            if opts.get(HOST_IPV4).map(String::as_str) != Some(a.egress_ip.as_str()) {
                return Err(ExecError::Network(format!(
                    "network {name} exists without {HOST_IPV4}={}; remove it and start the agent again",
                    a.egress_ip
                )));
            }
        }
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
            let options = HashMap::from([
                (HOST_IPV4.to_string(), a.egress_ip.clone()),
                (BRIDGE_NAME.to_string(), bridge.clone()),
                (ICC.to_string(), "false".to_string()),
            ]);
            let req = NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                options: Some(options),
                labels: Some(HashMap::from([("drover.egress".to_string(), a.ip_pool.clone())])),
                ..Default::default()
            };
            docker.create_network(req).await?;
            tracing::info!(network = %name, egress = %a.egress_ip, "created the egress network");
        }
        Err(e) => return Err(e.into()),
    }
    guard_host(&bridge).await?;
    Ok(name)
}

/// Drops what containers on `bridge` send to the host itself (idempotent).
async fn guard_host(bridge: &str) -> Result<(), ExecError> {
    let rule = ["INPUT", "-i", bridge, "-j", "DROP"];
    let run = |op: &'static str| async move {
        tokio::process::Command::new("iptables").arg("-w").arg(op).args(rule).output().await
    };
    let io = |e: std::io::Error| ExecError::Network(format!("running iptables: {e}"));
    if run("-C").await.map_err(io)?.status.success() {
        return Ok(());
    }
    let out = run("-I").await.map_err(io)?;
    if !out.status.success() {
        return Err(ExecError::Network(format!(
            "iptables -I INPUT -i {bridge} -j DROP failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    tracing::info!(bridge, "tasks on the egress network cannot reach this host's ports");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_names_fit_the_kernel_limit() {
        let (net, bridge) = egress_names(Ipv4Addr::new(203, 0, 113, 255));
        assert_eq!(net, "drover-egress-203-0-113-255");
        assert_eq!(bridge, "drv-eg-cb0071ff");
        assert!(bridge.len() <= 15);
    }
}
