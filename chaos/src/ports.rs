//! Loopback ports for nodes started by tests, reserved so nothing else on the machine takes
//! them between the pick and the node's own bind, nor while a node is down for a restart.
//!
//! A port learned by binding port 0 and closing the socket comes from the kernel's
//! ephemeral range, so any outgoing connection (a test's client, a proxy's upstream, the
//! Docker client) may be given it as its local port before the node binds it. That race
//! was seen: `binding 127.0.0.1:45847: Address already in use`. So ports here come from
//! *below* the ephemeral range (`net.ipv4.ip_local_port_range`), which the kernel never
//! hands out by itself, and concurrent test processes keep out of each other's way with an
//! advisory lock on `<tmp>/drover-test-ports/<port>.lock`, held for the life of the process
//! (the kernel drops it when the process exits, however it exits).
//!
//! Invariants: a port is handed out at most once per process; a port whose lock another
//! process holds, or which something already has bound, is never handed out.

use std::fs::File;
use std::net::TcpListener;
use std::sync::Mutex;

use anyhow::{Context, bail};
use rand::Rng;

/// How many ports below the ephemeral range are eligible.
const SPAN: u16 = 12_000;

/// The lock files of ports this process reserved; never released before exit.
static HELD: Mutex<Vec<(u16, File)>> = Mutex::new(Vec::new());

/// The eligible range: the `SPAN` ports just below the ephemeral range, or the ports above
/// it when there is no room below.
fn eligible() -> (u16, u16) {
    let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999));
    if lo >= 1_024 + SPAN { (lo - SPAN, lo) } else { (hi.saturating_add(1).max(1_024), u16::MAX) }
}

/// A loopback port reserved for this process until it exits.
pub fn reserve() -> anyhow::Result<u16> {
    let dir = std::env::temp_dir().join("drover-test-ports");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (lo, hi) = eligible();
    if lo >= hi {
        bail!("no port range outside the ephemeral range");
    }
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    let mut rng = rand::rng();
    for _ in 0..500 {
        let port = rng.random_range(lo..hi);
        if held.iter().any(|(p, _)| *p == port) {
            continue;
        }
        let path = dir.join(format!("{port}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if file.try_lock().is_err() {
            continue; // another test process has it
        }
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue; // something outside the tests has it; the lock drops with `file`
        }
        held.push((port, file));
        return Ok(port);
    }
    bail!("no free loopback port in {lo}..{hi} after 500 tries")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_distinct_outside_the_ephemeral_range_and_locked() {
        let (lo, hi) = eligible();
        let ports: Vec<u16> = (0..20).map(|_| reserve().expect("port")).collect();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ports.len(), "a port was handed out twice: {ports:?}");
        for p in &ports {
            assert!((lo..hi).contains(p), "{p} outside {lo}..{hi}");
            let path = std::env::temp_dir().join("drover-test-ports").join(format!("{p}.lock"));
            let other = File::options().write(true).open(&path).expect("lock file");
            assert!(other.try_lock().is_err(), "port {p} is not locked");
        }
    }
}
