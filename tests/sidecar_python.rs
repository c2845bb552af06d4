//! The API from another language: `examples/python/client.py` (stubs
//! generated from `proto/` by grpcio-tools) against an in-process sidecar.
//! Needs `pip install -r examples/python/requirements.txt`; fails, naming
//! that command, when the packages are missing.

mod common;

#[tokio::test]
async fn the_python_example_client_routes_through_the_sidecar() {
    let (_, sidecars) = common::fleet(&common::settings(), 1).await;
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
