//! gRPC clients for tests and benchmarks, carrying the caller's identity in metadata
//! (development mode; see `drover_control_plane::api::caller`).

use drover_proto::admin::admin_client::AdminClient;
use drover_proto::agent::agent_client::AgentClient;
use drover_proto::v1::tenant_client::TenantClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

/// How a test client proves who it is: development-mode metadata, or a client
/// certificate (mutual TLS).
#[derive(Clone)]
pub enum Creds {
    Dev,
    Tls(ClientTlsConfig),
}

/// Adds the development-mode identity header; with TLS it adds nothing (the certificate
/// is the identity).
#[derive(Clone)]
pub struct Identity {
    header: Option<(&'static str, MetadataValue<Ascii>)>,
}

impl tonic::service::Interceptor for Identity {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some((key, value)) = &self.header {
            req.metadata_mut().insert(*key, value.clone());
        }
        Ok(req)
    }
}

pub type Tenant = TenantClient<InterceptedService<Channel, Identity>>;
pub type Agent = AgentClient<InterceptedService<Channel, Identity>>;
pub type Admin = AdminClient<Channel>;

pub fn channel(addr: &str) -> anyhow::Result<Channel> {
    channel_with(addr, &Creds::Dev)
}

pub fn channel_with(addr: &str, creds: &Creds) -> anyhow::Result<Channel> {
    let scheme = if matches!(creds, Creds::Tls(_)) { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .tcp_nodelay(true)
        .timeout(std::time::Duration::from_secs(30));
    if let Creds::Tls(tls) = creds {
        ep = ep.tls_config(tls.clone())?;
    }
    Ok(ep.connect_lazy())
}

fn identity(creds: &Creds, key: &'static str, id: &str) -> anyhow::Result<Identity> {
    Ok(Identity {
        header: match creds {
            Creds::Dev => Some((key, id.parse()?)),
            Creds::Tls(_) => None,
        },
    })
}

pub fn tenant(addr: &str, tenant: &str) -> anyhow::Result<Tenant> {
    tenant_with(addr, &Creds::Dev, tenant)
}

pub fn tenant_with(addr: &str, creds: &Creds, tenant: &str) -> anyhow::Result<Tenant> {
    Ok(TenantClient::with_interceptor(channel_with(addr, creds)?, identity(creds, "x-drover-tenant", tenant)?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

pub fn agent(addr: &str, agent: &str) -> anyhow::Result<Agent> {
    agent_with(addr, &Creds::Dev, agent)
}

pub fn agent_with(addr: &str, creds: &Creds, agent: &str) -> anyhow::Result<Agent> {
    Ok(AgentClient::with_interceptor(channel_with(addr, creds)?, identity(creds, "x-drover-agent", agent)?)
        .max_decoding_message_size(64 << 20))
}

pub fn admin(addr: &str) -> anyhow::Result<Admin> {
    admin_with(addr, &Creds::Dev)
}

pub fn admin_with(addr: &str, creds: &Creds) -> anyhow::Result<Admin> {
    Ok(AdminClient::new(channel_with(addr, creds)?))
}

/// TLS client credentials from PEM strings.
pub fn tls_creds(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Creds {
    use tonic::transport::{Certificate, Identity as TlsIdentity};
    Creds::Tls(
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .identity(TlsIdentity::from_pem(cert_pem, key_pem)),
    )
}

/// A plaintext HTTP/1.0 GET (to check that a TLS listener refuses it).
pub async fn plain_http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, text))
}
