//! Puts the git revision into `pg2dns --version` (`PG2DNS_GIT_REVISION`).
//!
//! `git rev-parse --short HEAD` when built from a git checkout; the
//! `PG2DNS_GIT_REVISION` environment variable when set (a container build,
//! whose context has no `.git`); "unknown" otherwise (`cargo install` from a
//! tarball). Cargo runs this again only when HEAD or the branch it names
//! moves, so an ordinary rebuild costs nothing.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn watch(path: &str) {
    if Path::new(path).exists() {
        println!("cargo:rerun-if-changed={path}");
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=PG2DNS_GIT_REVISION");
    let revision = match std::env::var("PG2DNS_GIT_REVISION") {
        Ok(r) if !r.trim().is_empty() => r.trim().to_owned(),
        _ => {
            // HEAD, the branch it points to and packed-refs (where a
            // branch's ref may live instead of its own file).
            for what in ["HEAD", "packed-refs"] {
                if let Some(path) = git(&["rev-parse", "--git-path", what]) {
                    watch(&path);
                }
            }
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                if let Some(path) = git(&["rev-parse", "--git-path", &branch]) {
                    watch(&path);
                }
            }
            git(&["rev-parse", "--short=10", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env=PG2DNS_GIT_REVISION={revision}");
}
