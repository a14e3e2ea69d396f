//! Loads the node's TLS material into tonic's server and client configurations. Client
//! certificates are required on the listener and must chain to the CA bundle; peers are
//! dialled with this node's own (server-role) certificate.

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::TlsFiles;

#[derive(Debug, thiserror::Error)]
#[error("reading {path}: {source}")]
pub struct TlsError {
    path: String,
    source: std::io::Error,
}

#[derive(Clone)]
pub struct NodeTls {
    pub server: ServerTlsConfig,
    pub client: ClientTlsConfig,
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError { path: path.display().to_string(), source })
}

pub fn load(files: &TlsFiles) -> Result<NodeTls, TlsError> {
    let ca = Certificate::from_pem(read(&files.ca)?);
    let identity = Identity::from_pem(read(&files.cert)?, read(&files.key)?);
    Ok(NodeTls {
        server: ServerTlsConfig::new().identity(identity.clone()).client_ca_root(ca.clone()),
        client: ClientTlsConfig::new().ca_certificate(ca).identity(identity),
    })
}
