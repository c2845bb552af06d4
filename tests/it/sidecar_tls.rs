//! Mutual TLS: gateways and peer sidecars must present a certificate signed
//! by the fleet CA; direct links between sidecars run over TLS too.

use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use sidecars::*;
use switchyard::proto::gateway_client::GatewayClient;
use switchyard::proto::HeartbeatRequest;
use switchyard::sidecar::tls::TlsConfig;
use switchyard::Settings;
use testkit::sidecars;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

struct Pki {
    ca: String,
    /// (cert, key) for a sidecar (SAN 127.0.0.1) and for a gateway.
    sidecar: (String, String),
    gateway: (String, String),
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca: ca.pem(),
        sidecar: leaf(vec!["127.0.0.1".into(), "localhost".into()]),
        gateway: leaf(vec!["gw-a".into()]),
    }
}

fn tls_settings(base: Settings, pki: &Pki, dir: &Path) -> Settings {
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let mut settings = base;
    settings.sidecar.tls = Some(TlsConfig {
        cert: write("sidecar.pem", &pki.sidecar.0),
        key: write("sidecar.key", &pki.sidecar.1),
        ca: write("ca.pem", &pki.ca),
        client_auth: true,
    });
    settings
}

async fn tls_client(
    addr: std::net::SocketAddr,
    pki: &Pki,
    with_identity: bool,
) -> Result<GatewayClient<tonic::transport::Channel>, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca));
    if with_identity {
        tls = tls.identity(Identity::from_pem(&pki.gateway.0, &pki.gateway.1));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(GatewayClient::new(channel))
}

#[tokio::test]
async fn a_gateway_without_a_client_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let (_, sidecars) = fleet(&tls_settings(settings(), &pki, dir.path()), 1).await;
    let addr = sidecars[0].grpc_addr();

    let mut good = tls_client(addr, &pki, true).await.unwrap();
    let _stream = attach(&mut good, "gw-a", "eu").await;
    good.heartbeat(HeartbeatRequest {
        gateway_id: "gw-a".into(),
    })
    .await
    .unwrap();

    let refused = match tls_client(addr, &pki, false).await {
        Err(_) => true,
        Ok(mut client) => client
            .heartbeat(HeartbeatRequest {
                gateway_id: "gw-a".into(),
            })
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate got through");

    // Plaintext against a TLS server fails too.
    let plain = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let result = GatewayClient::new(channel)
            .heartbeat(HeartbeatRequest {
                gateway_id: "gw-a".into(),
            })
            .await;
        assert!(result.is_err(), "plaintext got through");
    }
}

#[tokio::test]
async fn direct_links_between_sidecars_run_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let base = with_direct_links(1.0, 0.5, Duration::from_secs(1));
    let (_, sidecars) = fleet(&tls_settings(base, &pki, dir.path()), 2).await;
    let mut a = tls_client(sidecars[0].grpc_addr(), &pki, true)
        .await
        .unwrap();
    let mut b = tls_client(sidecars[1].grpc_addr(), &pki, true)
        .await
        .unwrap();
    let _a_stream = attach(&mut a, "gw-a", "eu").await;
    let mut b_stream = attach(&mut b, "gw-b", "eu").await;
    online(&mut a, "gw-a", "alice").await;
    online(&mut b, "gw-b", "bob").await;

    let outcome = send(&mut a, "gw-a", message("alice", "bob", "over tls")).await;
    let target = &routed(&outcome).targets[0];
    assert_eq!(
        (target.delivered, target.via.as_str()),
        (true, "grpc"),
        "{target:?}"
    );
    let delivery = next(&mut b_stream).await;
    assert_eq!(delivery.via, "grpc");
    assert_eq!(delivery.envelope.unwrap().payload.as_ref(), b"over tls");
}
