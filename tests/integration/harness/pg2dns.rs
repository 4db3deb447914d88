//! Runs of the `pg2dns` binary under test (the one cargo built for this test
//! binary), with their stderr kept in a log file.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::wait::{wait_until, Check};
use super::{log_tail, run_unchecked, signal};

/// The binary under test.
///
/// `PG2DNS_IT_BINARY` names another one: developers who share one target
/// directory build into the same `debug/pg2dns`, so a test run can point at
/// its own copy.
pub fn binary() -> &'static Path {
    static BINARY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        std::env::var_os("PG2DNS_IT_BINARY")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_pg2dns").into())
    })
}

/// The environment a pg2dns child gets: the test process's, without any
/// `PG2DNS_*` variable (those configure pg2dns), plus `RUST_LOG` (the
/// caller's, or `info`) and the given extras.
fn hermetic<C: EnvCommand>(command: &mut C, extra: &[(&str, &str)]) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG2DNS_") {
            command.remove(&key.to_string_lossy());
        }
    }
    let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string());
    command.set("RUST_LOG", &log);
    for (key, value) in extra {
        command.set(key, value);
    }
}

trait EnvCommand {
    fn set(&mut self, key: &str, value: &str);
    fn remove(&mut self, key: &str);
}

impl EnvCommand for std::process::Command {
    fn set(&mut self, key: &str, value: &str) {
        self.env(key, value);
    }
    fn remove(&mut self, key: &str) {
        self.env_remove(key);
    }
}

impl EnvCommand for tokio::process::Command {
    fn set(&mut self, key: &str, value: &str) {
        self.env(key, value);
    }
    fn remove(&mut self, key: &str) {
        self.env_remove(key);
    }
}

/// Runs `pg2dns SUBCOMMAND -c CONFIG` to completion (2 minutes at most) and
/// returns its output, whatever its exit status.
pub async fn command(subcommand: &str, config: &Path) -> Result<Output> {
    let mut command = tokio::process::Command::new(binary());
    command.arg(subcommand).arg("-c").arg(config);
    hermetic(&mut command, &[]);
    run_unchecked(&mut command, Duration::from_secs(120)).await
}

/// Runs `pg2dns ARGS… -c CONFIG` with extra environment variables to
/// completion (2 minutes at most) and returns its output, whatever its exit
/// status.
pub async fn command_with(args: &[&str], config: &Path, env: &[(&str, &str)]) -> Result<Output> {
    let mut command = tokio::process::Command::new(binary());
    command.args(args).arg("-c").arg(config);
    hermetic(&mut command, env);
    run_unchecked(&mut command, Duration::from_secs(120)).await
}

/// One `pg2dns run` process; killed (SIGKILL) on drop if still running.
#[derive(Debug)]
pub struct Pg2dns {
    child: Child,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

impl Pg2dns {
    /// Starts `pg2dns run -c CONFIG --exit-on-halt` (the tests of halts wait
    /// for the exit) with extra environment variables (e.g.
    /// `PG2DNS_FAILPOINT`), its stdout and stderr appended to `log`.
    pub fn spawn(config: &Path, log: &Path, env: &[(&str, &str)]) -> Result<Pg2dns> {
        Pg2dns::spawn_run(config, log, env, &["--exit-on-halt"])
    }

    /// Starts `pg2dns run -c CONFIG ARGS…` (no `--exit-on-halt` unless in
    /// `args`: a halt then leaves the process up, halted).
    pub fn spawn_run(
        config: &Path,
        log: &Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Result<Pg2dns> {
        let file = OpenOptions::new().create(true).append(true).open(log)?;
        let mut command = std::process::Command::new(binary());
        command
            .arg("run")
            .arg("-c")
            .arg(config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        hermetic(&mut command, env);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary().display()))?;
        Ok(Pg2dns {
            child,
            log: log.to_path_buf(),
            exit: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has exited.
    pub fn exit_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait()?;
        }
        Ok(self.exit)
    }

    /// Fails (with the log) if the process has exited.
    pub fn assert_running(&mut self) -> Result<()> {
        if let Some(status) = self.exit_status()? {
            bail!(
                "pg2dns exited ({status}) but should still be running; its log:\n{}",
                self.log_tail(80)
            );
        }
        Ok(())
    }

    /// Waits for the process to exit on its own, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        wait_until(timeout, "pg2dns exits", || {
            std::future::ready(match self.exit_status() {
                Ok(Some(status)) => Ok(Check::Done(status)),
                Ok(None) => Ok(Check::NotYet(format!(
                    "still running; its log:\n{}",
                    self.log_tail(80)
                ))),
                Err(e) => Err(e),
            })
        })
        .await
    }

    /// Sends SIGTERM and waits (30 s at most) for the exit.
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        if self.exit_status()?.is_none() {
            signal(self.child.id(), "TERM")?;
        }
        self.wait_exit(Duration::from_secs(30)).await
    }

    /// SIGKILL, as a crash would, and reaps the process.
    pub fn kill(&mut self) -> Result<()> {
        if self.exit_status()?.is_none() {
            self.child.kill().context("SIGKILL to pg2dns")?;
            self.exit = Some(self.child.wait()?);
        }
        Ok(())
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The log's last lines.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

impl Drop for Pg2dns {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
