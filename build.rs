//! Compiles `proto/` with protox (pure Rust), so no system `protoc` is needed.
//! Also writes the encoded file descriptor set that the sidecar's gRPC
//! reflection service serves.

use protox::prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/switchyard/v1/envelope.proto",
        "proto/switchyard/v1/gateway.proto",
        "proto/switchyard/v1/admin.proto",
        "proto/switchyard/v1/peer.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("switchyard_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    // Without the sidecar (feature `grpc`) only the messages are generated:
    // the envelope's wire type, and no gRPC service or client.
    let services = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_server(services)
        .build_client(services)
        .codec_path("crate::proto::codec::StrictCodec")
        .bytes(".switchyard.v1.Envelope.payload")
        .bytes(".switchyard.v1.PeerBatch.envelopes")
        // Written by hand (src/proto/delivery.rs): the sidecar sends each
        // envelope as the envelope codec encoded it.
        .extern_path(
            ".switchyard.v1.Delivery",
            "crate::proto::delivery::Delivery",
        )
        .compile_fds(descriptors)?;
    Ok(())
}
