//! A throwaway PostgreSQL cluster for one test.
//!
//! `initdb` into a temporary directory, then `pg_ctl start` with settings for
//! logical replication (`wal_level = logical`, enough slots and WAL senders),
//! listening only on 127.0.0.1 at a free port, trust authentication for
//! loopback (initdb's `--auth=trust`). PostgreSQL refuses to run as root, so
//! when the tests run as root the cluster belongs to the `postgres` user and
//! every server command goes through `runuser -u postgres --`.
//!
//! With [`PgOptions::tls`] the cluster also has `ssl = on` with a server
//! certificate of a throwaway CA ([`TestCa`]) and a role [`TLS_ROLE`] with a
//! SCRAM-SHA-256 password that `pg_hba.conf` admits only over TLS (`hostssl
//! ... scram-sha-256`, for replication too; plain TCP is rejected). The
//! superuser keeps trust over plain TCP, for the tests' own connections.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::Command;

use super::tls::TestCa;
use super::wait::{wait_until, Check};
use super::{free_port, log_tail, run, run_unchecked, tools};

/// The role a TLS cluster admits only over TLS with a SCRAM password.
pub const TLS_ROLE: &str = "pg2dns";
/// Its password.
pub const TLS_PASSWORD: &str = "scram-only-secret";

/// How a cluster differs from the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct PgOptions {
    /// `ssl = on` and the [`TLS_ROLE`] role, admitted only over TLS.
    pub tls: bool,
}

/// A running PostgreSQL cluster; stopped (`-m immediate`) on drop.
#[derive(Debug)]
pub struct Postgres {
    data: PathBuf,
    log: PathBuf,
    port: u16,
    ca: Option<TestCa>,
}

impl Postgres {
    /// Creates and starts a cluster in `dir/pg` and waits until
    /// `pg_isready` says it accepts connections.
    pub async fn start(dir: &Path) -> Result<Postgres> {
        Postgres::start_with(dir, PgOptions::default()).await
    }

    /// [`Postgres::start`] with options.
    pub async fn start_with(dir: &Path, options: PgOptions) -> Result<Postgres> {
        let tools = tools()?;
        let home = dir.join("pg");
        std::fs::create_dir_all(&home)?;
        if tools.root {
            let status = std::process::Command::new("chown")
                .arg("postgres:postgres")
                .arg(&home)
                .status()
                .context("running chown")?;
            if !status.success() {
                bail!(
                    "chown postgres {} failed: the tests run as root and need the `postgres` \
                     user that the postgresql package creates",
                    home.display()
                );
            }
        }
        let mut pg = Postgres {
            data: home.join("data"),
            log: home.join("postgres.log"),
            port: free_port()?,
            ca: None,
        };
        run(
            pg.command("initdb").arg("-D").arg(&pg.data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]),
            Duration::from_secs(120),
        )
        .await
        .context("initdb")?;
        let settings = format!(
            "\n# pg2dns integration tests\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{home}'\n\
             wal_level = logical\n\
             max_replication_slots = 10\n\
             max_wal_senders = 10\n\
             max_connections = 30\n\
             shared_buffers = 16MB\n\
             fsync = off\n\
             full_page_writes = off\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n",
            port = pg.port,
            home = home.display(),
        );
        let conf = pg.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).context("reading postgresql.conf")?;
        text.push_str(&settings);
        if options.tls {
            let ca = TestCa::generate(&home.join("tls")).await?;
            if tools.root {
                let status = std::process::Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(home.join("tls"))
                    .status()
                    .context("running chown")?;
                anyhow::ensure!(status.success(), "chown of the TLS files failed");
            }
            super::set_mode(&ca.server_key, 0o600)?;
            text.push_str(&format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\npassword_encryption = 'scram-sha-256'\n",
                ca.server_cert.display(),
                ca.server_key.display()
            ));
            // First match wins: the role only over TLS with its password,
            // everyone else as initdb set it up.
            let hba = pg.data.join("pg_hba.conf");
            let rest = std::fs::read_to_string(&hba).context("reading pg_hba.conf")?;
            std::fs::write(
                &hba,
                format!(
                    "hostssl all {TLS_ROLE} 127.0.0.1/32 scram-sha-256\n\
                     hostssl replication {TLS_ROLE} 127.0.0.1/32 scram-sha-256\n\
                     host all {TLS_ROLE} 0.0.0.0/0 reject\n\
                     host replication {TLS_ROLE} 0.0.0.0/0 reject\n\
                     {rest}"
                ),
            )
            .context("writing pg_hba.conf")?;
            pg.ca = Some(ca);
        }
        std::fs::write(&conf, text).context("writing postgresql.conf")?;
        // The port was free when `free_port` looked, but another process
        // (another test binary, another developer's cluster) may take it
        // before the postmaster binds it: then the postmaster exits, and a
        // server answering on that port is not ours. Try a few ports.
        let mut attempts = 0;
        loop {
            pg.pg_ctl(&["-W", "start"]).await?;
            match pg.wait_ready().await {
                Ok(()) => break,
                Err(e) if attempts < 3 && pg.lost_its_port() => {
                    attempts += 1;
                    // Keep the failed attempt's log beside, out of the checks' way.
                    let _ = std::fs::rename(&pg.log, home.join(format!("postgres.log.{attempts}")));
                    pg.port = free_port()?;
                    let mut text =
                        std::fs::read_to_string(&conf).context("reading postgresql.conf")?;
                    text.push_str(&format!("port = {}\n", pg.port));
                    std::fs::write(&conf, text).context("writing postgresql.conf")?;
                    eprintln!(
                        "postgres: port taken before it bound it ({e:#}); retrying on {}",
                        pg.port
                    );
                }
                Err(e) => return Err(e),
            }
        }
        if options.tls {
            // The role creates pg2dns's schema, tables, publication and slot
            // itself (`pg2dns setup`), as the least-privilege role of docs/setup.md does.
            pg.connect()
                .await?
                .batch_execute(&format!(
                    "CREATE ROLE {TLS_ROLE} LOGIN REPLICATION PASSWORD '{TLS_PASSWORD}';\
                     GRANT CREATE ON DATABASE postgres TO {TLS_ROLE};"
                ))
                .await
                .context("creating the TLS role")?;
        }
        Ok(pg)
    }

    /// A connection URL for the superuser `postgres`, database `postgres`.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The test CA, for a cluster started with [`PgOptions::tls`].
    pub fn ca(&self) -> Option<&TestCa> {
        self.ca.as_ref()
    }

    /// A URL for [`TLS_ROLE`] with `password`, over TLS with `sslmode` and
    /// the CA file `root_cert`, to host `host` (`localhost` or `127.0.0.1`).
    pub fn tls_url(&self, host: &str, password: &str, sslmode: &str, root_cert: &Path) -> String {
        format!(
            "postgresql://{TLS_ROLE}:{password}@{host}:{}/postgres?sslmode={sslmode}&sslrootcert={}",
            self.port,
            root_cert.display()
        )
    }

    /// [`Postgres::url`] for database `dbname`.
    pub fn url_for(&self, dbname: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{dbname}", self.port)
    }

    /// A new SQL connection (its connection task runs on the current runtime).
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        self.connect_to("postgres").await
    }

    /// [`Postgres::connect`] to database `dbname`.
    pub async fn connect_to(&self, dbname: &str) -> Result<tokio_postgres::Client> {
        let url = self.url_for(dbname);
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// `pg_ctl restart -m fast`, then waits until the server is ready again.
    /// Open connections (pg2dns's among them) are cut.
    pub async fn restart(&self) -> Result<()> {
        self.pg_ctl(&["-m", "fast", "-W", "restart"]).await?;
        self.wait_ready().await
    }

    /// A crash: `pg_ctl restart -m immediate` (every server process quits at
    /// once; WAL not yet written is lost, recovery runs at the start), then
    /// waits until the server is ready again.
    pub async fn crash_restart(&self) -> Result<()> {
        self.pg_ctl(&["-m", "immediate", "-W", "restart"]).await?;
        self.wait_ready().await
    }

    /// The server log's last lines.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    async fn pg_ctl(&self, args: &[&str]) -> Result<()> {
        let result = run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log)
                .args(args),
            Duration::from_secs(120),
        )
        .await;
        result.map(drop).with_context(|| {
            format!(
                "pg_ctl {}; server log:\n{}",
                args.join(" "),
                self.log_tail(40)
            )
        })
    }

    /// Whether the server log says the postmaster could not bind its port.
    fn lost_its_port(&self) -> bool {
        let log = self.log_tail(40);
        log.contains("could not bind") || log.contains("could not create any TCP/IP sockets")
    }

    /// Polls `pg_isready` until the server accepts connections. It asks
    /// through the cluster's own Unix socket directory, so a server of
    /// someone else's that took the port cannot pass for this one (a
    /// postmaster that cannot bind its TCP port does not start at all).
    async fn wait_ready(&self) -> Result<()> {
        let what = format!("PostgreSQL on port {} accepts connections", self.port);
        let socket_dir = self
            .data
            .parent()
            .unwrap_or(&self.data)
            .display()
            .to_string();
        wait_until(Duration::from_secs(60), &what, || async {
            if self.lost_its_port() {
                bail!(
                    "the postmaster could not bind port {}; server log:\n{}",
                    self.port,
                    self.log_tail(40)
                );
            }
            let output = run_unchecked(
                self.command("pg_isready").args([
                    "-h",
                    &socket_dir,
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-t",
                    "1",
                ]),
                Duration::from_secs(10),
            )
            .await?;
            if output.status.success() {
                return Ok(Check::Done(()));
            }
            Ok(Check::NotYet(format!(
                "{}; server log:\n{}",
                String::from_utf8_lossy(&output.stdout).trim(),
                self.log_tail(40)
            )))
        })
        .await
    }

    /// A command for one of PostgreSQL's programs, run as `postgres` when the
    /// tests run as root.
    fn command(&self, program: &str) -> Command {
        let tools = tools().expect("tools were found before a cluster was created");
        let path = tools.pg_bin.join(program);
        if tools.root {
            let mut command = Command::new(&tools.runuser);
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let tools = match tools() {
            Ok(tools) => tools,
            Err(_) => return,
        };
        let pg_ctl = tools.pg_bin.join("pg_ctl");
        let mut command = if tools.root {
            let mut command = std::process::Command::new(&tools.runuser);
            command.args(["-u", "postgres", "--"]).arg(pg_ctl);
            command
        } else {
            std::process::Command::new(pg_ctl)
        };
        let _ = command
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}
