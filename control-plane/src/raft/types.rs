//! The openraft type configuration: entry data is the state machine's versioned
//! [`Request`], responses its [`Response`], snapshots are files on disk.

use crate::state::{Request, Response};

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Request,
        R = Response,
        SnapshotData = tokio::fs::File,
);

pub type NodeId = u64;
pub type Node = openraft::BasicNode;
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type Snapshot = openraft::storage::Snapshot<TypeConfig>;
pub type RaftStorageError = openraft::StorageError<NodeId>;
