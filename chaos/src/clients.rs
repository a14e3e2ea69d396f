//! gRPC clients for tests and benchmarks, carrying the caller's identity in metadata
//! (development mode; see `drover_control_plane::api::caller`).

use drover_proto::admin::admin_client::AdminClient;
use drover_proto::agent::agent_client::AgentClient;
use drover_proto::v1::tenant_client::TenantClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

#[derive(Clone)]
pub struct Identity {
    key: &'static str,
    value: MetadataValue<Ascii>,
}

impl tonic::service::Interceptor for Identity {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert(self.key, self.value.clone());
        Ok(req)
    }
}

pub type Tenant = TenantClient<InterceptedService<Channel, Identity>>;
pub type Agent = AgentClient<InterceptedService<Channel, Identity>>;
pub type Admin = AdminClient<Channel>;

pub fn channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .tcp_nodelay(true)
        .timeout(std::time::Duration::from_secs(30))
        .connect_lazy())
}

fn identity(key: &'static str, id: &str) -> anyhow::Result<Identity> {
    Ok(Identity { key, value: id.parse()? })
}

pub fn tenant(addr: &str, tenant: &str) -> anyhow::Result<Tenant> {
    Ok(TenantClient::with_interceptor(channel(addr)?, identity("x-drover-tenant", tenant)?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

pub fn agent(addr: &str, agent: &str) -> anyhow::Result<Agent> {
    Ok(AgentClient::with_interceptor(channel(addr)?, identity("x-drover-agent", agent)?)
        .max_decoding_message_size(64 << 20))
}

pub fn admin(addr: &str) -> anyhow::Result<Admin> {
    Ok(AdminClient::new(channel(addr)?))
}
