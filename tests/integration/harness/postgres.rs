//! A throwaway PostgreSQL cluster for one test.
//!
//! `initdb` into a temporary directory, then `pg_ctl start` with settings for
//! logical replication (`wal_level = logical`, enough slots and WAL senders),
//! listening only on 127.0.0.1 at a free port, trust authentication for
//! loopback (initdb's `--auth=trust`). PostgreSQL refuses to run as root, so
//! when the tests run as root the cluster belongs to the `postgres` user and
//! every server command goes through `runuser -u postgres --`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::Command;

use super::wait::{wait_until, Check};
use super::{free_port, log_tail, run, run_unchecked, tools};

/// A running PostgreSQL cluster; stopped (`-m immediate`) on drop.
#[derive(Debug)]
pub struct Postgres {
    data: PathBuf,
    log: PathBuf,
    port: u16,
}

impl Postgres {
    /// Creates and starts a cluster in `dir/pg` and waits until
    /// `pg_isready` says it accepts connections.
    pub async fn start(dir: &Path) -> Result<Postgres> {
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
        let pg = Postgres {
            data: home.join("data"),
            log: home.join("postgres.log"),
            port: free_port()?,
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
        std::fs::write(&conf, text).context("writing postgresql.conf")?;
        pg.pg_ctl(&["-W", "start"]).await?;
        pg.wait_ready().await?;
        Ok(pg)
    }

    /// A connection URL for the superuser `postgres`, database `postgres`.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A new SQL connection (its connection task runs on the current runtime).
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to {}", self.url()))?;
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

    /// Polls `pg_isready` until the server accepts connections.
    async fn wait_ready(&self) -> Result<()> {
        let what = format!("PostgreSQL on port {} accepts connections", self.port);
        wait_until(Duration::from_secs(60), &what, || async {
            let output = run_unchecked(
                self.command("pg_isready").args([
                    "-h",
                    "127.0.0.1",
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
