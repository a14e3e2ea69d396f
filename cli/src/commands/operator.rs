//! `drover operator raft status|add-learner|promote|remove|snapshot`.

use clap::{Args, Subcommand};
use drover_proto::admin as pa;
use drover_proto::admin::admin_client::AdminClient;

use super::client::{Conn, with_leader};
use super::output::{Format, print_json};

#[derive(Args)]
pub struct OperatorArgs {
    #[command(flatten)]
    conn: Conn,
    /// Output format: aligned tables for people, or JSON for scripts.
    #[arg(long, short = 'o', value_enum, default_value = "table", global = true)]
    output: Format,
    #[command(subcommand)]
    cmd: OperatorCmd,
}

#[derive(Subcommand)]
enum OperatorCmd {
    /// Raft membership and replication.
    #[command(subcommand)]
    Raft(RaftCmd),
}

#[derive(Subcommand)]
enum RaftCmd {
    /// Show this node's view: term, leader, indexes, members.
    Status,
    /// Add a node as a non-voting learner; returns once it has caught up.
    AddLearner {
        /// The new node's id (its server certificate's identity).
        node_id: u64,
        /// Where the other nodes reach it, HOST:PORT.
        addr: String,
    },
    /// Make learners voters.
    Promote {
        /// Ids of learners to make voters.
        node_ids: Vec<u64>,
    },
    /// Remove a node from the cluster.
    Remove {
        /// The node to remove.
        node_id: u64,
    },
    /// Build a snapshot on the node and purge the log behind it.
    Snapshot,
}

pub async fn run(a: OperatorArgs) -> anyhow::Result<()> {
    let OperatorCmd::Raft(cmd) = a.cmd;
    let format = a.output;
    let conn = a.conn.resolve()?;
    match cmd {
        RaftCmd::Status => {
            let ch = super::client::connect(
                &conn,
                conn.addr.first().map(String::as_str).unwrap_or(super::client::DEFAULT_ADDR),
            )
            .await?;
            let s = AdminClient::new(ch).raft_status(pa::RaftStatusRequest {}).await?.into_inner();
            if format == Format::Json {
                print_json(&serde_json::json!({
                    "node_id": s.node_id,
                    "state": s.state,
                    "term": s.term,
                    "leader_id": s.has_leader.then_some(s.leader_id),
                    "last_log_index": s.last_log_index,
                    "last_applied_index": s.last_applied_index,
                    "snapshot_index": s.snapshot_index,
                    "purged_index": s.purged_index,
                    "nodes": nodes_json(&s.nodes),
                    "replication": s.replication.iter().map(|p| serde_json::json!({
                        "node_id": p.node_id, "matched_index": p.matched_index, "behind": p.behind,
                    })).collect::<Vec<_>>(),
                }));
                return Ok(());
            }
            outln!("node {}  state {}  term {}", s.node_id, s.state, s.term);
            outln!("leader {}", if s.has_leader { s.leader_id.to_string() } else { "none".into() });
            outln!(
                "log last {}  applied {}  snapshot {}  purged {}",
                s.last_log_index,
                s.last_applied_index,
                s.snapshot_index,
                s.purged_index
            );
            print_nodes(Format::Table, &s.nodes);
            if !s.replication.is_empty() {
                outln!("{:<6} {:<14} BEHIND", "ID", "MATCHED");
                for p in &s.replication {
                    outln!("{:<6} {:<14} {}", p.node_id, p.matched_index, p.behind);
                }
            }
        }
        RaftCmd::AddLearner { node_id, addr } => {
            let r = with_leader(&conn, |ch| {
                let addr = addr.clone();
                async move {
                    AdminClient::new(ch)
                        .add_learner(pa::AddLearnerRequest { node_id, addr })
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await?;
            print_nodes(format, &r.nodes);
        }
        RaftCmd::Promote { node_ids } => {
            let r =
                with_leader(&conn, |ch| {
                    let node_ids = node_ids.clone();
                    async move {
                        AdminClient::new(ch).promote(pa::PromoteRequest { node_ids }).await.map(|r| r.into_inner())
                    }
                })
                .await?;
            print_nodes(format, &r.nodes);
        }
        RaftCmd::Remove { node_id } => {
            let r = with_leader(&conn, |ch| async move {
                AdminClient::new(ch).remove_node(pa::RemoveNodeRequest { node_id }).await.map(|r| r.into_inner())
            })
            .await?;
            print_nodes(format, &r.nodes);
        }
        RaftCmd::Snapshot => {
            let ch = super::client::connect(
                &conn,
                conn.addr.first().map(String::as_str).unwrap_or(super::client::DEFAULT_ADDR),
            )
            .await?;
            let r = AdminClient::new(ch).snapshot(pa::SnapshotRequest {}).await?.into_inner();
            match format {
                Format::Json => print_json(&serde_json::json!({
                    "snapshot_index": r.snapshot_index,
                    "purged_index": r.purged_index,
                })),
                Format::Table => {
                    outln!("snapshot at index {}, log purged up to {}", r.snapshot_index, r.purged_index)
                }
            }
        }
    }
    Ok(())
}

fn nodes_json(nodes: &[pa::NodeInfo]) -> serde_json::Value {
    nodes.iter().map(|n| serde_json::json!({ "id": n.id, "addr": n.addr, "voter": n.voter })).collect()
}

fn print_nodes(format: Format, nodes: &[pa::NodeInfo]) {
    if format == Format::Json {
        print_json(&serde_json::json!({ "nodes": nodes_json(nodes) }));
        return;
    }
    outln!("{:<6} {:<24} ROLE", "ID", "ADDRESS");
    for n in nodes {
        outln!("{:<6} {:<24} {}", n.id, n.addr, if n.voter { "voter" } else { "learner" });
    }
}
