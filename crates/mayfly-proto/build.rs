//! Generates the protocol's Rust types and the tonic client/server from `proto/agent.proto`
//! (needs `protoc`). `StartVm` carries the JIT config, so its derived Debug is skipped and a
//! redacting one is written by hand in `src/lib.rs`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/agent.proto");
    tonic_build::configure()
        .skip_debug("mayfly.agent.v1.StartVm")
        .skip_debug("mayfly.agent.v1.AssignVm")
        .compile_protos(&["proto/agent.proto"], &["proto"])?;
    Ok(())
}
