//! Compiles `proto/` (vecrec's service and the vendored `onnx.proto`) with
//! the pure-Rust `protox` compiler, so no system `protoc` is needed.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/vecrec/v1/vecrec.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // Reflection serves this descriptor set; keep source info so comments reach clients.
    std::fs::write(out.join("vecrec_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    // The official ONNX schema (vendored from the onnx 1.17.0 wheel, Apache
    // 2.0): the messages of the models vecrec exports, exact by construction.
    let onnx = "proto/onnx/onnx.proto";
    println!("cargo:rerun-if-changed={onnx}");
    let onnx_fds = protox::compile([onnx], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(onnx_fds)?;
    Ok(())
}
