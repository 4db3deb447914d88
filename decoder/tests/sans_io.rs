//! The decoder is sans-IO by construction: this test fails if anything in its
//! normal dependency tree brings an async runtime or a socket library.

use std::process::Command;

#[test]
fn the_decoder_depends_on_no_async_runtime_or_socket_crate() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            "pg2dns-decoder",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("hickory-proto"), "unexpected tree:\n{tree}");
    for forbidden in [
        "tokio ",
        "mio ",
        "socket2 ",
        "async-std ",
        "tokio-postgres ",
    ] {
        assert!(
            !tree.lines().any(|l| l.starts_with(forbidden)),
            "the decoder must stay sans-IO, but it depends on {forbidden}:\n{tree}"
        );
    }
}
