//! Knot DNS's `knotd` as a test primary.
//!
//! Its `key:` section carries the secret of the test key file (written by
//! `tsig-keygen`, the file pg2dns reads), and one `acl:` allows `update` and
//! `transfer` for that key. The journal keeps changes only
//! (`journal-content: changes`) and the zone file is never rewritten
//! (`zonefile-sync: -1`), so a restart loads the zone file and replays the
//! journal: the zone survives an outage as BIND's does.
//!
//! knotd runs in the foreground (its log goes to stderr), listens only on
//! 127.0.0.1 at the server's port, and keeps its control socket, pid file
//! and database in the server's directory. The database directory must
//! exist before the first UPDATE: Knot 3.2 starts without it and answers
//! every UPDATE with SERVFAIL ("DDNS, processing failed (not exists)").

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::dns::{DnsServer, ServerConfig, KEY_NAME};
use super::find_program;

const KNOT_INSTALL_HINT: &str =
    "install Knot DNS with `apt-get install -y knot knot-dnsutils` (or run scripts/test)";

/// Knot DNS 3's `knotd`.
#[derive(Debug, Clone, Copy)]
pub struct Knot;

impl DnsServer for Knot {
    fn program(&self) -> &'static str {
        "knotd"
    }

    fn configure(&self, config: &ServerConfig<'_>) -> Result<std::process::Command> {
        let knotd = find_program("knotd").with_context(|| {
            format!("the Knot tests need a real knotd, and it was not found; {KNOT_INSTALL_HINT}")
        })?;
        std::fs::create_dir_all(config.dir.join("db"))?;
        let (algorithm, secret) = read_key_file(config.key_file)?;
        let mut conf = format!(
            "# written by the pg2dns integration tests\n\
             server:\n\
             \x20   rundir: \"{dir}\"\n\
             \x20   listen: 127.0.0.1@{port}\n\
             log:\n\
             \x20 - target: stderr\n\
             \x20   any: info\n\
             database:\n\
             \x20   storage: \"{dir}/db\"\n\
             key:\n\
             \x20 - id: {KEY_NAME}\n\
             \x20   algorithm: {algorithm}\n\
             \x20   secret: {secret}\n\
             acl:\n\
             \x20 - id: pg2dns\n\
             \x20   key: {KEY_NAME}\n\
             \x20   action: [{actions}]\n\
             template:\n\
             \x20 - id: default\n\
             \x20   storage: \"{dir}\"\n\
             \x20   acl: pg2dns\n\
             \x20   journal-content: changes\n\
             \x20   zonefile-sync: -1\n\
             zone:\n",
            dir = config.dir.display(),
            port = config.port,
            actions = [
                (config.access.update, "update"),
                (config.access.transfer, "transfer")
            ]
            .iter()
            .filter(|(allowed, _)| *allowed)
            .map(|(_, action)| *action)
            .collect::<Vec<_>>()
            .join(", "),
        );
        for (zone, file) in config.zones {
            writeln!(conf, "  - domain: {zone}\n    file: \"{}\"", file.display())?;
        }
        let conf_path = config.dir.join("knot.conf");
        std::fs::write(&conf_path, conf)?;
        let mut command = std::process::Command::new(knotd);
        command.arg("-c").arg(&conf_path);
        Ok(command)
    }
}

/// The algorithm and base64 secret of a key file in tsig-keygen's format:
/// `key "NAME" { algorithm hmac-sha256; secret "…"; };`.
pub fn read_key_file(path: &Path) -> Result<(String, String)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value = |field: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|line| line.strip_prefix(field))
            .map(|rest| rest.trim().trim_end_matches(';').trim().trim_matches('"'))
            .map(str::to_string)
            .with_context(|| format!("no `{field}` in the key file {}", path.display()))
    };
    Ok((value("algorithm ")?, value("secret ")?))
}
