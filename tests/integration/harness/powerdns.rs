//! PowerDNS Authoritative's `pdns_server` as a test primary.
//!
//! The zones live in an SQLite database (the `gsqlite3` backend) made from
//! the schema Debian's `pdns-backend-sqlite3` ships, in the server's
//! directory; the server's configuration directory is that directory too
//! (`--config-dir`), so nothing of /etc/powerdns is read. Set-up is what an
//! operator does for RFC 2136 with TSIG on PowerDNS (`dnsupdate=yes`,
//! `allow-dnsupdate-from`), then with `pdnsutil`: load each zone file,
//! import the test key, and per zone the metadata `TSIG-ALLOW-DNSUPDATE`
//! and `TSIG-ALLOW-AXFR` naming that key and `SOA-EDIT-DNSUPDATE INCREASE`
//! (without it an UPDATE leaves the SOA serial as it was).
//!
//! pdns_server runs in the foreground (`daemon=no`, `guardian=no`) with its
//! log on stderr (`disable-syslog=yes`), listens only on 127.0.0.1 at the
//! server's port, and has no web server or API. The database survives a
//! stop, so a restart serves the zones as they were.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::dns::{DnsServer, ServerConfig, KEY_NAME};
use super::find_program;
use super::knot::read_key_file;

const POWERDNS_INSTALL_HINT: &str = "install PowerDNS with `apt-get install -y pdns-server \
     pdns-backend-sqlite3 sqlite3` (or run scripts/test)";

/// Where Debian's `pdns-backend-sqlite3` puts the database schema.
const SCHEMA_PATHS: [&str; 2] = [
    "/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql",
    "/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql",
];

/// PowerDNS Authoritative 4 (`pdns_server`, gsqlite3 backend).
#[derive(Debug, Clone, Copy)]
pub struct PowerDns;

impl DnsServer for PowerDns {
    fn program(&self) -> &'static str {
        "pdns_server"
    }

    fn configure(&self, config: &ServerConfig<'_>) -> Result<std::process::Command> {
        let missing = |name: &str| {
            format!("the PowerDNS tests need {name}, and it was not found; {POWERDNS_INSTALL_HINT}")
        };
        let pdns_server = find_program("pdns_server").with_context(|| missing("pdns_server"))?;
        let pdnsutil = find_program("pdnsutil").with_context(|| missing("pdnsutil"))?;
        let sqlite3 = find_program("sqlite3").with_context(|| missing("sqlite3"))?;
        let schema = SCHEMA_PATHS
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .with_context(|| missing("the gsqlite3 schema (pdns-backend-sqlite3)"))?;

        let dir = config.dir;
        let database = dir.join("pdns.sqlite3");
        run_sync(
            std::process::Command::new(&sqlite3)
                .arg(&database)
                .arg(format!(".read {}", schema.display())),
        )?;
        let conf = format!(
            "# written by the pg2dns integration tests\n\
             launch=gsqlite3\n\
             gsqlite3-database={database}\n\
             local-address=127.0.0.1\n\
             local-port={port}\n\
             socket-dir={dir}\n\
             daemon=no\n\
             guardian=no\n\
             disable-syslog=yes\n\
             loglevel=6\n\
             webserver=no\n\
             api=no\n\
             dnsupdate=yes\n\
             allow-dnsupdate-from={update_from}\n\
             primary=yes\n\
             disable-axfr=no\n\
             allow-axfr-ips={axfr_from}\n",
            database = database.display(),
            port = config.port,
            dir = dir.display(),
            // A right withheld (a misconfigured server, for check-config's
            // tests) is withheld from loopback as well as from the key.
            update_from = if config.access.update {
                "127.0.0.0/8"
            } else {
                "192.0.2.1/32"
            },
            axfr_from = if config.access.transfer {
                "127.0.0.0/8"
            } else {
                "192.0.2.1/32"
            },
        );
        std::fs::write(dir.join("pdns.conf"), conf)?;

        let config_dir = format!("--config-dir={}", dir.display());
        let pdnsutil = |args: &[&str]| {
            run_sync(
                std::process::Command::new(&pdnsutil)
                    .arg(&config_dir)
                    .args(args),
            )
        };
        let (algorithm, secret) = read_key_file(config.key_file)?;
        pdnsutil(&["import-tsig-key", KEY_NAME, &algorithm, &secret])?;
        for (zone, file) in config.zones {
            let file = file
                .to_str()
                .context("a zone file path that is not UTF-8")?;
            pdnsutil(&["load-zone", zone, file])?;
            if config.access.update {
                pdnsutil(&["set-meta", zone, "TSIG-ALLOW-DNSUPDATE", KEY_NAME])?;
            }
            if config.access.transfer {
                pdnsutil(&["set-meta", zone, "TSIG-ALLOW-AXFR", KEY_NAME])?;
            }
            pdnsutil(&["set-meta", zone, "SOA-EDIT-DNSUPDATE", "INCREASE"])?;
        }

        let mut command = std::process::Command::new(pdns_server);
        command.arg(&config_dir);
        Ok(command)
    }
}

/// Runs a set-up command to completion; fails with its output if it exits
/// non-zero.
fn run_sync(command: &mut std::process::Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
