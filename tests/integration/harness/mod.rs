//! The test harness: real PostgreSQL, BIND and pg2dns processes on free
//! loopback ports, each in its own temporary directory.
//!
//! - [`Postgres`]: a throwaway cluster (`initdb`, `wal_level = logical`), run
//!   as the `postgres` user when the tests run as root; optionally with TLS
//!   and a SCRAM-authenticated `pg2dns` role ([`PgOptions`], [`tls::TestCa`]);
//! - [`Server`]: a DNS server serving TSIG-protected dynamic zones, run by
//!   one [`DnsServer`] program: [`Bind`], [`Knot`] or [`PowerDns`] (chosen by
//!   [`Primary`]);
//! - [`Pg2dns`]: one run of the `pg2dns` binary under test;
//! - [`Stack`]: the three wired together, with the helpers scenario tests
//!   use (SQL, AXFR-versus-table comparison);
//! - [`wait_until`]: the one way to wait for a condition, with a deadline.
//!
//! Readiness is always asked of the server (`pg_isready`, an SOA query),
//! never guessed with a sleep. Logs of every process are kept in files and
//! printed when a [`Stack`] is dropped: cargo shows that output only for
//! failing tests. A missing server binary is an error with install
//! instructions, never a skip.

pub mod bind;
pub mod dns;
pub mod knot;
pub mod pg2dns;
pub mod postgres;
pub mod powerdns;
pub mod records;
pub mod stack;
pub mod tls;
pub mod wait;

use std::collections::HashSet;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};

pub use bind::Bind;
pub use dns::{Primary, Server};
pub use knot::Knot;
pub use pg2dns::Pg2dns;
pub use postgres::{PgOptions, Postgres};
pub use powerdns::PowerDns;
pub use records::Record;
pub use stack::Stack;
pub use wait::{wait_until, Check};

/// How long a wait for DNS to reflect the database may take before the test
/// fails (pg2dns promises well under a second; this leaves room for a loaded
/// CI machine).
pub const DNS_DEADLINE: Duration = Duration::from_secs(20);

/// How long a wait may take after an outage, when pg2dns may be in a retry
/// back-off.
pub const RECOVERY_DEADLINE: Duration = Duration::from_secs(60);

const INSTALL_HINT: &str = "install the servers with `apt-get install -y postgresql bind9 \
     bind9-utils bind9-dnsutils` (or run scripts/test, which does it)";

/// Paths of the external programs the tests drive.
#[derive(Debug)]
pub struct Tools {
    /// PostgreSQL's server binaries (`initdb`, `pg_ctl`, `pg_isready`).
    pub pg_bin: PathBuf,
    /// BIND's `named`.
    pub named: PathBuf,
    /// `dig`, for SOA queries and AXFR.
    pub dig: PathBuf,
    /// `nsupdate`, for the harness self-test.
    pub nsupdate: PathBuf,
    /// `tsig-keygen`, which writes the key files BIND and pg2dns share.
    pub tsig_keygen: PathBuf,
    /// Whether the tests run as root (then PostgreSQL runs as `postgres`).
    pub root: bool,
    /// `runuser` (util-linux), which runs PostgreSQL as `postgres` for root.
    pub runuser: PathBuf,
}

/// The external programs, found once per test process; an error names what
/// is missing and how to install it.
pub fn tools() -> Result<&'static Tools> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    TOOLS
        .get_or_init(|| find_tools().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn find_tools() -> Result<Tools> {
    let mut missing = Vec::new();
    let pg_bin = find_pg_bin();
    if pg_bin.is_none() {
        missing.push("PostgreSQL server binaries (initdb, pg_ctl)".to_string());
    }
    let mut program = |name: &str| {
        let found = find_program(name);
        if found.is_none() {
            missing.push(name.to_string());
        }
        found.unwrap_or_default()
    };
    let named = program("named");
    let dig = program("dig");
    let nsupdate = program("nsupdate");
    let tsig_keygen = program("tsig-keygen");
    if !missing.is_empty() {
        bail!(
            "the integration tests need real servers, and these programs were not found: {}; {INSTALL_HINT}",
            missing.join(", ")
        );
    }
    let named = escape_apparmor(named)?;
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .context("running `id -u`")?;
    let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
    let runuser = find_program("runuser").unwrap_or_else(|| PathBuf::from("runuser"));
    Ok(Tools {
        pg_bin: pg_bin.unwrap_or_default(),
        named,
        dig,
        nsupdate,
        tsig_keygen,
        root,
        runuser,
    })
}

/// Debian confines `/usr/sbin/named` with an AppArmor profile that lets it
/// read only /etc/bind, /var/lib/bind and the like, not a test's temporary
/// directory. The profile attaches by path, so where AppArmor is on, the
/// tests run a copy of named from cargo's temporary directory instead.
fn escape_apparmor(named: PathBuf) -> Result<PathBuf> {
    let enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|v| v.trim() == "Y");
    if !enabled {
        return Ok(named);
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(dir)?;
    let copy = dir.join("named-unconfined");
    let partial = dir.join(format!("named-unconfined.{}", std::process::id()));
    std::fs::copy(&named, &partial)
        .with_context(|| format!("copying {} out of AppArmor's reach", named.display()))?;
    set_mode(&partial, 0o755)?;
    std::fs::rename(&partial, &copy)?;
    Ok(copy)
}

/// PostgreSQL's bin directory: `$PG_BIN`, else the newest
/// /usr/lib/postgresql/N/bin, else the directory of `initdb` on the PATH.
fn find_pg_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").is_file().then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    find_program("initdb").and_then(|p| p.parent().map(Path::to_path_buf))
}

/// A program on the PATH or in the sbin directories (which a non-root PATH
/// often lacks).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A loopback port free for both TCP and UDP, never handed out twice by this
/// process (tests run in parallel).
pub fn free_port() -> Result<u16> {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    bail!("no free loopback port found")
}

/// A temporary directory, removed on drop unless the test panicked or
/// `PG2DNS_TEST_KEEP` is set (then its path is printed).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, world-traversable directory under the system's temp
    /// directory (world-traversable so that servers running as another user
    /// can reach their own subdirectories).
    pub fn new(label: &str) -> Result<TempDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!(
            "pg2dns-it-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        set_mode(&path, 0o755)?;
        Ok(TempDir { path })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("PG2DNS_TEST_KEEP").is_some() {
            eprintln!("kept test directory {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Sets a file's permission bits.
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Runs a command to completion within `timeout`, with its output captured.
/// Fails (showing stderr) when it cannot start, times out, or exits non-zero.
pub async fn run(command: &mut tokio::process::Command, timeout: Duration) -> Result<Output> {
    let output = run_unchecked(command, timeout).await?;
    if !output.status.success() {
        bail!(
            "{:?} failed ({}):\n{}{}",
            command.as_std(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// Like [`run`], but a non-zero exit is returned rather than an error.
pub async fn run_unchecked(
    command: &mut tokio::process::Command,
    timeout: Duration,
) -> Result<Output> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .with_context(|| format!("starting {:?}", command.as_std()))?;
    tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("{:?} did not finish within {timeout:?}", command.as_std()))?
        .with_context(|| format!("waiting for {:?}", command.as_std()))
}

/// Sends a signal (`TERM`, `KILL`…) to a process with `kill(1)`.
pub fn signal(pid: u32, signal: &str) -> Result<()> {
    // The shell's built-in kill: /usr/bin/kill (procps) is not always there.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{signal} {pid}"))
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed (process already gone?)");
    }
    Ok(())
}

/// The last `lines` lines of a log file (or a note that it is missing).
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            let mut out = String::new();
            if start > 0 {
                out.push_str(&format!("[… {start} earlier lines]\n"));
            }
            for line in &all[start..] {
                out.push_str(line);
                out.push('\n');
            }
            out
        }
        Err(e) => format!("[no log at {}: {e}]\n", path.display()),
    }
}

/// Stops a server with SIGTERM and waits for it to exit (servers write their
/// journals first); kills it if it is still there after 30 s.
pub async fn terminate(mut child: std::process::Child, name: &str) -> Result<()> {
    signal(child.id(), "TERM")?;
    let what = format!("{name} exits after SIGTERM");
    let exited = wait_until(Duration::from_secs(30), &what, || {
        std::future::ready(match child.try_wait() {
            Ok(Some(_)) => Ok(Check::Done(())),
            Ok(None) => Ok(Check::NotYet("still running".to_string())),
            Err(e) => Err(e.into()),
        })
    })
    .await;
    if let Err(e) = exited {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e.context(format!("{name} killed")));
    }
    Ok(())
}
