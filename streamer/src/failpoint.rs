//! Failpoints for crash tests: `PG2DNS_FAILPOINT=<name>` makes the process
//! abort (as `kill -9` would: no destructors, no final status to PostgreSQL)
//! the first time the named point is reached.
//!
//! Points: `before-dns-send` (an UPDATE is about to be written to the DNS
//! server), `after-dns-send` (it was written, its answer not yet read),
//! `after-dns-ack` (every UPDATE of the pending transactions was
//! acknowledged, the checkpoint is not yet committed), `after-state-commit`
//! (the checkpoint committed, the slot not yet confirmed),
//! `reconcile-after-pause` (`pg2dns reconcile` asked the running service to
//! pause, holding the pause lease). `reconcile-panic` panics instead (where
//! reconcile holds the service paused at the snapshot), to test that a panic
//! still resumes it.

use std::sync::OnceLock;

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            std::env::var("PG2DNS_FAILPOINT")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .as_deref()
}

/// Aborts the process if `name` is the armed failpoint.
pub fn hit(name: &str) {
    if armed() == Some(name) {
        eprintln!("pg2dns: failpoint {name} reached: aborting");
        std::process::abort();
    }
}

/// Panics if `name` is the armed failpoint.
pub fn panic_at(name: &str) {
    if armed() == Some(name) {
        panic!("failpoint {name} reached");
    }
}
