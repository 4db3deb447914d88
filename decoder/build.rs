//! Generates the `wire` feature's protobuf types from proto/pg2dns.proto.
//!
//! protox compiles the .proto in Rust (no `protoc` on the machine) and
//! prost-build writes the Rust types into OUT_DIR.

fn main() {
    #[cfg(feature = "wire")]
    wire();
}

#[cfg(feature = "wire")]
fn wire() {
    let manifest = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.join("../proto");
    let file = root.join("pg2dns.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])
        .unwrap_or_else(|e| panic!("cannot compile {}: {e}", file.display()));
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("cannot generate code for {}: {e}", file.display()));
}
