//! Mutual TLS for the gRPC listener, with certificates reloadable on SIGHUP.
//!
//! The listener terminates TLS itself (tokio-rustls, ring, TLS 1.3 only) instead of
//! leaving it to tonic, so that the server configuration can be swapped at run time:
//! [`NodeTls::reload`] re-reads the CA bundle, certificate and key, and every connection
//! accepted afterwards uses them (established connections keep theirs). Client
//! certificates are required and must chain to the CA bundle (which may hold several
//! CAs, for rotation). Each accepted stream carries a [`PeerInfo`] (peer address and
//! verified certificate chain) that the `authz` interceptor reads.
//!
//! Peers are dialled with tonic's client TLS and this node's own server certificate;
//! [`NodeTls::probe_identity`] checks what identity a prospective member presents.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use drover_identity::SpiffeId;
use drover_identity::certs::identity_from_der;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::config::TlsFiles;

/// Bound on dialling a peer and on its TLS handshake (outbound; inbound handshakes are
/// bounded by [`crate::accept::AcceptLimits`]).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} holds no {what}")]
    Empty { path: String, what: &'static str },
    #[error("tls configuration: {0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read =
        |e: rustls::pki_types::pem::Error| TlsError::Read { path: path.display().to_string(), reason: e.to_string() };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path).map_err(read)?.collect::<Result<_, _>>().map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::Empty { path: path.display().to_string(), what: "certificate" });
    }
    Ok(certs)
}

fn key(path: &std::path::Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError::Read { path: path.display().to_string(), reason: e.to_string() })
}

fn roots(path: &std::path::Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs(path)? {
        roots.add(c).map_err(|e| TlsError::Config(format!("CA in {}: {e}", path.display())))?;
    }
    Ok(Arc::new(roots))
}

/// The listener's rustls configuration; `alpn` names the one protocol it speaks.
fn server_config(files: &TlsFiles, alpn: &[u8]) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    c.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(c))
}

fn probe_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let c = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(c))
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read { path: path.display().to_string(), reason: e.to_string() })
}

/// The webhook listener's configuration: the same server certificate, no client
/// certificate asked for (webhook callers authenticate with the webhook's secret).
fn webhook_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

struct ServerConfigs {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
    webhook: Arc<ServerConfig>,
}

fn server_configs(files: &TlsFiles) -> Result<ServerConfigs, TlsError> {
    Ok(ServerConfigs {
        grpc: server_config(files, b"h2")?,
        http: server_config(files, b"http/1.1")?,
        webhook: webhook_config(files)?,
    })
}

pub struct NodeTls {
    files: TlsFiles,
    server: RwLock<ServerConfigs>,
    /// How this node dials peers (Raft, forwarding).
    pub client: ClientTlsConfig,
}

impl NodeTls {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let client = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&files.ca)?))
            .identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?));
        Ok(NodeTls { files: files.clone(), server: RwLock::new(server_configs(files)?), client })
    }

    /// Re-reads the files; connections accepted from now on use them. On error the
    /// current configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = server_configs(&self.files)?;
        *self.server.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    fn current(&self) -> Arc<ServerConfig> {
        self.server.read().unwrap_or_else(|p| p.into_inner()).grpc.clone()
    }

    /// An acceptor for the HTTP side listener (HTTP/1.1, same certificates and CA).
    pub fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server.read().unwrap_or_else(|p| p.into_inner()).http.clone())
    }

    /// An acceptor for the webhook listener (HTTP/1.1, same certificate, no client
    /// certificate).
    pub fn webhook_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server.read().unwrap_or_else(|p| p.into_inner()).webhook.clone())
    }

    /// Connects to `addr` and returns the identity its (verified) certificate carries.
    pub async fn probe_identity(&self, addr: &str) -> Result<SpiffeId, ProbeError> {
        let unreachable = |what: String| ProbeError::Unreachable(what);
        let sock: SocketAddr = addr.parse().map_err(|_| unreachable(format!("{addr:?} is not host:port")))?;
        let config = probe_config(&self.files).map_err(|e| unreachable(e.to_string()))?;
        let tcp = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(sock))
            .await
            .map_err(|_| unreachable(format!("connecting to {addr} timed out")))?
            .map_err(|e| unreachable(format!("connecting to {addr}: {e}")))?;
        let name = ServerName::IpAddress(sock.ip().into());
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsConnector::from(config).connect(name, tcp))
            .await
            .map_err(|_| unreachable(format!("TLS handshake with {addr} timed out")))?
            // The handshake ran and the certificate did not verify as a server's.
            .map_err(|e| ProbeError::NotAServer(format!("the node at {addr} is not a valid server: {e}")))?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| ProbeError::NotAServer("no peer certificate".into()))?;
        identity_from_der(leaf.as_ref()).map_err(|e| ProbeError::NotAServer(e.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    NotAServer(String),
}

pub use crate::accept::{PeerInfo, PeerStream};

/// The gRPC listener's connections: TCP accepted and TLS handshaken by
/// [`crate::accept`] (each handshake in its own task, bounded in time and number) with
/// the configuration current at accept time.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<NodeTls>,
    metrics: crate::accept::AcceptMetrics,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> impl tokio_stream::Stream<Item = Result<PeerStream, io::Error>> + use<> {
    use tokio_stream::StreamExt;
    let acceptor = move || TlsAcceptor::from(tls.current());
    let rx = crate::accept::spawn("grpc", listener, acceptor, crate::accept::GRPC_LIMITS, metrics, tracker, shutdown);
    ReceiverStream::new(rx).map(Ok)
}
