//! The API from another language: `examples/python/client.py` (stubs
//! generated from `proto/` by grpcio-tools) and `examples/python/reflect.py`
//! (server reflection, v1alpha) against an in-process sidecar.
//! Needs `pip install -r examples/python/requirements.txt`; fails, naming
//! that command, when the packages are missing.

// Only with its test tiers (Cargo.toml [features]); plain `cargo test` runs none of it.
#![cfg(feature = "it-tools")]

use testkit::sidecars;

#[tokio::test]
async fn the_python_example_client_routes_through_the_sidecar() {
    let (_, sidecars) = sidecars::fleet(&sidecars::settings(), 1).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/client.py");
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .arg(sidecars[0].grpc_addr().to_string())
        .output()
        .await
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'grpc"),
        "grpcio is missing: pip install -r examples/python/requirements.txt\n{stderr}"
    );
    assert!(
        output.status.success(),
        "client.py failed:\n{}{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("5 messages routed, 4 delivered"));
}

#[tokio::test]
async fn reflection_answers_v1alpha_to_python_and_v1_with_the_imported_files() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };

    let (_, sidecars) = sidecars::fleet(&sidecars::settings(), 1).await;
    let addr = sidecars[0].grpc_addr();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/reflect.py");
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .arg(addr.to_string())
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named"),
        "pip install -r examples/python/requirements.txt\n{stderr}"
    );
    assert!(
        output.status.success(),
        "reflect.py failed:\n{stdout}{stderr}"
    );
    assert!(
        stdout
            .contains("whose envelope is switchyard.v1.Envelope from switchyard/v1/envelope.proto"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "files for switchyard.v1.Gateway: switchyard/v1/gateway.proto, switchyard/v1/envelope.proto"
        ),
        "{stdout}"
    );

    // v1, from Rust: the same answer.
    let mut client = ServerReflectionClient::new(sidecars::channel(addr).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "switchyard.v1.Gateway.Send".into(),
        )),
    };
    let mut answers = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().expect("an answer");
    let Some(MessageResponse::FileDescriptorResponse(files)) = answer.message_response else {
        panic!("{answer:?}");
    };
    let names: Vec<String> = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| {
            <prost_types::FileDescriptorProto as prost::Message>::decode(bytes.as_slice())
                .unwrap()
                .name()
                .to_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "switchyard/v1/gateway.proto",
            "switchyard/v1/envelope.proto"
        ]
    );
}
