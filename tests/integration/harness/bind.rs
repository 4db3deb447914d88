//! BIND's `named` as a test primary.
//!
//! `allow-update` and `allow-transfer` name the one test key. named runs in
//! the foreground (`-g`, which also sends its log to stderr), listens only
//! on 127.0.0.1 at the server's port, and has no control channel.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::process::Command;

use super::dns::{DnsServer, ServerConfig, KEY_NAME};
use super::{run, tools};

/// BIND 9's `named`.
#[derive(Debug, Clone, Copy)]
pub struct Bind;

impl DnsServer for Bind {
    fn program(&self) -> &'static str {
        "named"
    }

    fn configure(&self, config: &ServerConfig<'_>) -> Result<std::process::Command> {
        let named = &tools()?.named;
        let dir = config.dir.display();
        // A second key BIND knows but lets update nothing: a valid signature
        // whose UPDATE the zone's policy refuses.
        let not_allowed = config.dir.join(NOT_ALLOWED_KEY_FILE);
        std::fs::write(
            &not_allowed,
            "key \"not-allowed\" {\n\talgorithm hmac-sha256;\n\tsecret \"bm90LWFsbG93ZWQtYnV0LWtub3duLXRvLWJpbmQtMzI=\";\n};\n",
        )?;
        let mut conf = format!(
            "include \"{key}\";\n\
             include \"{not_allowed}\";\n\
             options {{\n\
             \tdirectory \"{dir}\";\n\
             \tpid-file \"{dir}/named.pid\";\n\
             \tsession-keyfile \"{dir}/session.key\";\n\
             \tmanaged-keys-directory \"{dir}\";\n\
             \tlisten-on port {port} {{ 127.0.0.1; }};\n\
             \tlisten-on-v6 {{ none; }};\n\
             \trecursion no;\n\
             \tdnssec-validation no;\n\
             \tnotify no;\n\
             \tallow-transfer {{ {transfer} }};\n\
             }};\n\
             controls {{ }};\n",
            key = config.key_file.display(),
            not_allowed = not_allowed.display(),
            port = config.port,
            transfer = allow(config.access.transfer),
        );
        for (zone, file) in config.zones {
            conf.push_str(&format!(
                "zone \"{zone}\" {{\n\
                 \ttype primary;\n\
                 \tfile \"{file}\";\n\
                 \tallow-update {{ {update} }};\n\
                 }};\n",
                file = file.display(),
                update = allow(config.access.update),
            ));
        }
        let conf_path = config.dir.join("named.conf");
        std::fs::write(&conf_path, conf)?;
        let mut command = std::process::Command::new(named);
        command
            .arg("-g")
            .arg("-c")
            .arg(&conf_path)
            .args(["-n", "1"]);
        Ok(command)
    }
}

/// An address match list: the test key, or nobody.
fn allow(allowed: bool) -> String {
    if allowed {
        format!("key {KEY_NAME};")
    } else {
        "none;".to_owned()
    }
}

/// Writes a fresh key file with `tsig-keygen -a hmac-sha256 NAME`. Two calls
/// with the same name give the same key name with different secrets.
pub async fn write_key_file(path: &Path, name: &str) -> Result<()> {
    let output = run(
        Command::new(&tools()?.tsig_keygen).args(["-a", "hmac-sha256", name]),
        Duration::from_secs(30),
    )
    .await?;
    std::fs::write(path, &output.stdout).with_context(|| format!("writing {}", path.display()))
}

/// The file (in BIND's directory) of a key BIND knows but lets update
/// nothing.
pub const NOT_ALLOWED_KEY_FILE: &str = "not-allowed.key";
