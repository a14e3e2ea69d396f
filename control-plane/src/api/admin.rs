//! `drover.admin.v1.Admin`: Raft membership and status, snapshots, node inspection and
//! tenants. Membership changes must run on the leader; a follower answers `Unavailable`
//! with the leader's address in metadata.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::admin as pa;
use drover_proto::admin::admin_server::Admin;
use openraft::ChangeMembers;
use tonic::{Request, Response};

use super::ApiCtx;
use super::convert;
use super::error::{ApiError, ApiResult};
use super::tenant::unexpected;
use crate::raft::types::Node;
use crate::state::command::Command;
use crate::state::{Response as SmResponse, validate, views};
use crate::tls::ProbeError;

pub struct AdminService {
    pub ctx: Arc<ApiCtx>,
}

const MAX_INSPECT_WAIT: Duration = Duration::from_secs(60);
/// A learner more entries than this behind the leader's log is not promoted: as a voter it
/// would count toward quorums it cannot yet help to form.
pub const MAX_PROMOTE_LAG_ENTRIES: u64 = 1_000;

impl AdminService {
    fn nodes(&self) -> Vec<pa::NodeInfo> {
        let m = self.ctx.node.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, n)| pa::NodeInfo { id: *id, addr: n.addr.clone(), voter: voters.contains(id) })
            .collect()
    }

    /// On the leader: each other member's matched log index and how far it is behind.
    fn replication(&self) -> Vec<pa::ReplicationProgress> {
        let m = self.ctx.node.metrics();
        let last = m.last_log_index.unwrap_or(0);
        m.replication
            .map(|r| {
                r.iter()
                    .filter(|(id, _)| **id != m.id)
                    .map(|(id, matched)| {
                        let matched_index = matched.map(|l| l.index).unwrap_or(0);
                        pa::ReplicationProgress {
                            node_id: *id,
                            matched_index,
                            behind: last.saturating_sub(matched_index),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn change(&self, changes: ChangeMembers<u64, Node>, retain: bool) -> ApiResult<pa::MembershipResponse> {
        self.ctx.require_leader()?;
        self.ctx
            .node
            .raft
            .change_membership(changes, retain)
            .await
            .map_err(|e| ApiError::FailedPrecondition(e.to_string()))?;
        Ok(Response::new(pa::MembershipResponse { nodes: self.nodes() }))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn raft_status(&self, _req: Request<pa::RaftStatusRequest>) -> ApiResult<pa::RaftStatusResponse> {
        let m = self.ctx.node.metrics();
        Ok(Response::new(pa::RaftStatusResponse {
            node_id: m.id,
            term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            has_leader: m.current_leader.is_some(),
            state: format!("{:?}", m.state),
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
            nodes: self.nodes(),
            replication: self.replication(),
        }))
    }

    async fn add_learner(&self, req: Request<pa::AddLearnerRequest>) -> ApiResult<pa::MembershipResponse> {
        self.ctx.require_leader()?;
        let r = req.into_inner();
        if r.node_id == 0 {
            return Err(ApiError::invalid("node_id", "must be positive").into());
        }
        if r.addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(ApiError::invalid("addr", format!("{:?} is not host:port", r.addr)).into());
        }
        // A member must present this node id's server identity: a tenant (or any other)
        // certificate cannot join the cluster.
        if let Some(tls) = &self.ctx.tls {
            let want = format!("spiffe://drover/server/{}", r.node_id);
            let got = tls.probe_identity(&r.addr).await.map_err(|e| match e {
                ProbeError::Unreachable(m) => ApiError::Unavailable(m),
                ProbeError::NotAServer(m) => ApiError::PermissionDenied(format!("{m}; it cannot join")),
            })?;
            if got.to_string() != want {
                return Err(ApiError::PermissionDenied(format!(
                    "the node at {} presents {got}, not {want}; it cannot join",
                    r.addr
                ))
                .into());
            }
        }
        // Returns once the learner is in the membership; it catches up in the background (from
        // a snapshot if the log was purged), which on a large state takes longer than any
        // call deadline. Progress: `raft status` (`replication`); `promote` refuses a
        // learner still far behind.
        self.ctx
            .node
            .raft
            .add_learner(r.node_id, Node { addr: r.addr }, false)
            .await
            .map_err(|e| ApiError::FailedPrecondition(e.to_string()))?;
        Ok(Response::new(pa::MembershipResponse { nodes: self.nodes() }))
    }

    async fn promote(&self, req: Request<pa::PromoteRequest>) -> ApiResult<pa::MembershipResponse> {
        let ids: BTreeSet<u64> = req.into_inner().node_ids.into_iter().collect();
        if ids.is_empty() {
            return Err(ApiError::invalid("node_ids", "must name at least one learner").into());
        }
        self.ctx.require_leader()?;
        let progress = self.replication();
        for id in &ids {
            if let Some(p) = progress.iter().find(|p| p.node_id == *id)
                && p.behind > MAX_PROMOTE_LAG_ENTRIES
            {
                return Err(ApiError::FailedPrecondition(format!(
                    "node {id} is still catching up: it matches the log to index {} and is {} entries behind \
                     (promote once it is within {MAX_PROMOTE_LAG_ENTRIES}; see `drover operator raft status`)",
                    p.matched_index, p.behind
                ))
                .into());
            }
        }
        self.change(ChangeMembers::AddVoterIds(ids), true).await
    }

    async fn remove_node(&self, req: Request<pa::RemoveNodeRequest>) -> ApiResult<pa::MembershipResponse> {
        let id = req.into_inner().node_id;
        let voters: BTreeSet<u64> = self.ctx.node.metrics().membership_config.membership().voter_ids().collect();
        if voters.contains(&id) {
            self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false).await
        } else {
            self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false).await
        }
    }

    async fn snapshot(&self, _req: Request<pa::SnapshotRequest>) -> ApiResult<pa::SnapshotResponse> {
        let raft = &self.ctx.node.raft;
        let applied = self.ctx.node.metrics().last_applied;
        raft.trigger().snapshot().await.map_err(|e| ApiError::Internal(e.to_string()))?;
        let target = applied.map(|l| l.index).unwrap_or(0);
        let m = raft
            .wait(Some(Duration::from_secs(60)))
            .metrics(|m| m.snapshot.map(|s| s.index).unwrap_or(0) >= target, "snapshot built")
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let snapshot_index = m.snapshot.map(|s| s.index).unwrap_or(0);
        raft.trigger().purge_log(snapshot_index).await.map_err(|e| ApiError::Internal(e.to_string()))?;
        let m = raft
            .wait(Some(Duration::from_secs(60)))
            .metrics(|m| m.purged.map(|p| p.index).unwrap_or(0) >= snapshot_index, "log purged")
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        Ok(Response::new(pa::SnapshotResponse { snapshot_index, purged_index: m.purged.map(|p| p.index).unwrap_or(0) }))
    }

    async fn inspect_node(&self, req: Request<pa::InspectNodeRequest>) -> ApiResult<pa::InspectNodeResponse> {
        let r = req.into_inner();
        if r.min_applied_index > 0 {
            let wait = Duration::from_millis(r.wait_ms).min(MAX_INSPECT_WAIT);
            self.ctx
                .node
                .raft
                .wait(Some(wait))
                .applied_index_at_least(Some(r.min_applied_index), "inspect")
                .await
                .map_err(|e| {
                    ApiError::Unavailable(format!("applied index {} not reached: {e}", r.min_applied_index))
                })?;
        }
        let sm = self.ctx.node.sm.clone();
        let out = tokio::task::spawn_blocking(move || -> Result<pa::InspectNodeResponse, ApiError> {
            // Holding the machine lock keeps apply out, so the digest is one consistent cut.
            let _guard = sm.machine()?;
            let kv = sm.kv();
            let (state_digest, key_count) = views::digest(&kv)?;
            let task_count = views::task_count(&kv)?;
            let applied_index = sm.applied_index().map_err(|e| ApiError::Internal(e.to_string()))?;
            Ok(pa::InspectNodeResponse { node_id: 0, applied_index, state_digest, task_count, key_count })
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
        Ok(Response::new(pa::InspectNodeResponse { node_id: self.ctx.node.id, ..out }))
    }

    async fn upsert_tenant(&self, req: Request<pa::UpsertTenantRequest>) -> ApiResult<pa::TenantInfo> {
        let r = req.into_inner();
        validate::name("id", &r.id).map_err(ApiError::from)?;
        let limits = convert::tenant_limits_in(r.limits);
        validate::tenant_limits(&limits).map_err(ApiError::from)?;
        validate::cidrs("allowed_cidrs", &r.allowed_cidrs).map_err(ApiError::from)?;
        match self.ctx.propose(Command::UpsertTenant { id: r.id, limits, allowed_cidrs: r.allowed_cidrs }).await? {
            SmResponse::Tenant(t) => Ok(Response::new(convert::tenant_out(&t, 0, 0))),
            other => Err(unexpected(other)),
        }
    }

    async fn list_tenants(&self, _req: Request<pa::ListTenantsRequest>) -> ApiResult<pa::ListTenantsResponse> {
        self.ctx.read_barrier().await?;
        let sm = self.ctx.node.sm.machine().map_err(ApiError::from)?;
        let idx = sm.indexes();
        let tenants = sm
            .tenants()
            .values()
            .map(|t| pa::TenantInfo {
                mode: Some(super::modes::mode_out(sm.tenant_mode(&t.id))),
                ..convert::tenant_out(t, idx.waiting(&t.id), idx.running_for_tenant(&t.id) as u64)
            })
            .collect();
        Ok(Response::new(pa::ListTenantsResponse { tenants }))
    }

    async fn list_agents(&self, _req: Request<pa::ListAgentsRequest>) -> ApiResult<pa::ListAgentsResponse> {
        Ok(Response::new(super::fleet::list_agents(&self.ctx).await?))
    }

    async fn register_agent(&self, req: Request<pa::RegisterAgentRequest>) -> ApiResult<pa::AgentRegistration> {
        Ok(Response::new(super::fleet::register_agent(&self.ctx, req.into_inner()).await?))
    }

    async fn deregister_agent(
        &self,
        req: Request<pa::DeregisterAgentRequest>,
    ) -> ApiResult<pa::DeregisterAgentResponse> {
        Ok(Response::new(super::fleet::deregister_agent(&self.ctx, req.into_inner().id).await?))
    }

    async fn create_cluster(&self, req: Request<pa::CreateClusterRequest>) -> ApiResult<pa::ClusterInfo> {
        Ok(Response::new(super::fleet::create_cluster(&self.ctx, req.into_inner()).await?))
    }

    async fn list_clusters(&self, _req: Request<pa::ListClustersRequest>) -> ApiResult<pa::ListClustersResponse> {
        Ok(Response::new(super::fleet::list_clusters(&self.ctx).await?))
    }

    async fn delete_cluster(&self, req: Request<pa::DeleteClusterRequest>) -> ApiResult<pa::DeleteClusterResponse> {
        Ok(Response::new(super::fleet::delete_cluster(&self.ctx, req.into_inner().name).await?))
    }

    async fn set_ceilings(&self, req: Request<pa::SetCeilingsRequest>) -> ApiResult<pa::Ceilings> {
        Ok(Response::new(super::fleet::set_ceilings(&self.ctx, req.into_inner()).await?))
    }

    async fn create_pool(&self, req: Request<pa::CreatePoolRequest>) -> ApiResult<pa::PoolInfo> {
        Ok(Response::new(super::modes::create_pool(&self.ctx, req.into_inner()).await?))
    }

    async fn list_pools(&self, _req: Request<pa::ListPoolsRequest>) -> ApiResult<pa::ListPoolsResponse> {
        Ok(Response::new(super::modes::list_pools(&self.ctx).await?))
    }

    async fn delete_pool(&self, req: Request<pa::DeletePoolRequest>) -> ApiResult<pa::DeletePoolResponse> {
        Ok(Response::new(super::modes::delete_pool(&self.ctx, req.into_inner().name).await?))
    }

    async fn set_tenant_mode(&self, req: Request<pa::SetTenantModeRequest>) -> ApiResult<pa::TenantMode> {
        Ok(Response::new(super::modes::set_tenant_mode(&self.ctx, req.into_inner()).await?))
    }

    async fn get_task(&self, req: Request<pa::TenantGetTaskRequest>) -> ApiResult<drover_proto::v1::Task> {
        let r = req.into_inner();
        Ok(Response::new(super::tenant::get_task(&self.ctx, &r.tenant, r.id, false).await?))
    }

    async fn list_tasks(
        &self,
        req: Request<pa::TenantListTasksRequest>,
    ) -> ApiResult<drover_proto::v1::ListTasksResponse> {
        let r = req.into_inner();
        Ok(Response::new(super::tenant::list_tasks(&self.ctx, &r.tenant, r.filter.unwrap_or_default()).await?))
    }

    type GetTaskLogStream = super::tenant::LogStreamOut;

    async fn get_task_log(&self, req: Request<pa::TenantGetTaskLogRequest>) -> ApiResult<Self::GetTaskLogStream> {
        let r = req.into_inner();
        let inner = r.request.unwrap_or_default();
        Ok(Response::new(super::tenant::task_log(self.ctx.clone(), r.tenant, inner).await?))
    }

    async fn list_codes(
        &self,
        req: Request<pa::TenantListCodesRequest>,
    ) -> ApiResult<drover_proto::v1::ListCodesResponse> {
        Ok(Response::new(super::tenant::list_codes(&self.ctx, &req.into_inner().tenant).await?))
    }
}
