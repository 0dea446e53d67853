//! Compiles `proto/meta.proto` with Debian's `protoc`. The server half of
//! the generated code is only emitted with the `server` feature, so a
//! client-only build (the engine's) carries none of it.

fn main() {
    println!("cargo:rerun-if-changed=proto/meta.proto");
    let server = std::env::var_os("CARGO_FEATURE_SERVER").is_some();
    let client = std::env::var_os("CARGO_FEATURE_CLIENT").is_some();
    if !client && !server {
        // Neither half was asked for: nothing to generate, nothing compiled.
        return;
    }
    if let Err(e) = tonic_prost_build::configure()
        .build_server(server)
        .build_client(true)
        .compile_protos(&["proto/meta.proto"], &["proto"])
    {
        // protoc missing is the common cause; say how to get it.
        panic!(
            "ferrite-meta: compiling proto/meta.proto failed: {e} \
             (protoc comes from Debian's protobuf-compiler: scripts/install-deps.sh)"
        );
    }
}
