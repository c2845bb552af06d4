//! TLS for the sidecar: the gRPC server (gateways and peers connect to it)
//! and the direct links it opens to peers. With `client_auth`, both sides
//! present certificates signed by the fleet CA (mutual TLS).

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use super::SidecarError;
use crate::cause::Cause;

pub use crate::config::sidecar::TlsConfig;

/// Server and client (peer link) TLS built from one [`TlsConfig`].
pub struct Tls {
    /// For the gRPC server.
    pub server: ServerTlsConfig,
    /// For outgoing direct links.
    pub client: ClientTlsConfig,
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, SidecarError> {
    std::fs::read(path).map_err(|e| SidecarError::Tls {
        key: key.to_owned(),
        path: path.to_path_buf(),
        reason: Cause::new(e),
    })
}

impl Tls {
    /// Reads the PEM files.
    pub fn load(config: &TlsConfig) -> Result<Self, SidecarError> {
        let identity = Identity::from_pem(
            read("sidecar.tls.cert", &config.cert)?,
            read("sidecar.tls.key", &config.key)?,
        );
        let ca = Certificate::from_pem(read("sidecar.tls.ca", &config.ca)?);
        let mut server = ServerTlsConfig::new().identity(identity.clone());
        if config.client_auth {
            server = server.client_ca_root(ca.clone());
        }
        let client = ClientTlsConfig::new().ca_certificate(ca).identity(identity);
        Ok(Self { server, client })
    }
}
