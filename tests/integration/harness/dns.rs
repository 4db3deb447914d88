//! A DNS server for one test, serving TSIG-protected dynamic zones: what
//! BIND and Knot have in common, written once.
//!
//! [`DnsServer`] is what differs between the two programs: how to find the
//! binary, how to write its configuration. [`Server`] is everything else:
//! a free loopback port, one zone file per zone holding only the apex SOA
//! and NS (the NS target lies outside every test zone, so no glue is
//! needed), one key made by `tsig-keygen -a hmac-sha256` (the same file
//! pg2dns reads) allowed to update and transfer every zone, readiness asked
//! of the server with an SOA query, AXFR and queries with `dig`, `nsupdate`
//! as an operator would use it, stop and start again on the same port with
//! the same files (to play an outage), and a kill on drop. The server runs
//! in the foreground with its log in a file, which [`super::Stack`] prints
//! when a test fails.

use std::fmt;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::Command;

use super::records::{canonical_name, parse_dig_answer, Record};
use super::wait::{wait_until, Check};
use super::{bind, free_port, log_tail, run, run_unchecked, tools, Bind, Knot, PowerDns};

/// The name of the TSIG key the test servers trust.
pub const KEY_NAME: &str = "pg2dns-test-key";

/// What a test server needs to be configured.
#[derive(Debug)]
pub struct ServerConfig<'a> {
    /// The server's own directory (config, zone files, journals, runtime).
    pub dir: &'a Path,
    /// The loopback port to listen on (UDP and TCP).
    pub port: u16,
    /// Each zone (canonical) and its zone file, already written.
    pub zones: &'a [(String, PathBuf)],
    /// The key file (tsig-keygen's format) of the key [`KEY_NAME`].
    pub key_file: &'a Path,
    /// What the key may do (both, unless a test needs a misconfigured
    /// server).
    pub access: Access,
}

/// What the test key may do with every zone of a server.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// UPDATE (BIND's `allow-update`, Knot's acl `action: update`).
    pub update: bool,
    /// AXFR (BIND's `allow-transfer`, Knot's acl `action: transfer`).
    pub transfer: bool,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            update: true,
            transfer: true,
        }
    }
}

/// One DNS server program: BIND's `named`, Knot's `knotd` or PowerDNS's
/// `pdns_server`.
pub trait DnsServer: fmt::Debug + Send + Sync {
    /// The program, as messages and logs name it (`named`).
    fn program(&self) -> &'static str;

    /// Writes the configuration in `config.dir` and returns the command that
    /// runs the server in the foreground, logging to stderr. Fails with
    /// install instructions when the program is missing.
    fn configure(&self, config: &ServerConfig<'_>) -> Result<std::process::Command>;
}

/// The servers a zone can be on; scenarios that apply to all take one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primary {
    /// BIND 9 (`named`).
    Bind,
    /// Knot DNS 3 (`knotd`).
    Knot,
    /// PowerDNS Authoritative 4 (`pdns_server`).
    PowerDns,
}

impl Primary {
    /// The program that serves zones for this primary.
    pub fn program(self) -> Box<dyn DnsServer> {
        match self {
            Primary::Bind => Box::new(Bind),
            Primary::Knot => Box::new(Knot),
            Primary::PowerDns => Box::new(PowerDns),
        }
    }

    /// A short lower-case name, for test directory labels.
    pub fn label(self) -> &'static str {
        match self {
            Primary::Bind => "bind",
            Primary::Knot => "knot",
            Primary::PowerDns => "powerdns",
        }
    }
}

/// A running (or deliberately stopped) DNS server; killed on drop.
#[derive(Debug)]
pub struct Server {
    program: Box<dyn DnsServer>,
    dir: PathBuf,
    port: u16,
    zones: Vec<String>,
    key_file: PathBuf,
    command: std::process::Command,
    log: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Server {
    /// Starts `primary`'s program for `zones` in `dir/<label>` (see
    /// [`Server::start_program`]).
    pub async fn start(primary: Primary, dir: &Path, zones: &[&str]) -> Result<Server> {
        Server::start_program(primary.program(), &dir.join(primary.label()), zones).await
    }

    /// [`Server::start`] with a key that may do only what `access` allows,
    /// in `dir/<label>-<label of zones[0]>` (so several fit in one test).
    pub async fn start_with_access(
        primary: Primary,
        dir: &Path,
        zones: &[&str],
        access: Access,
    ) -> Result<Server> {
        let dir = dir.join(format!(
            "{}-{}",
            primary.label(),
            zones.first().copied().unwrap_or("none")
        ));
        Server::start_program_with(primary.program(), &dir, zones, access).await
    }

    /// Writes the key, the zone files and the configuration in `dir`, starts
    /// the server and waits until it answers an SOA query for every zone.
    pub async fn start_program(
        program: Box<dyn DnsServer>,
        dir: &Path,
        zones: &[&str],
    ) -> Result<Server> {
        Server::start_program_with(program, dir, zones, Access::default()).await
    }

    /// [`Server::start_program`] with a key that may do only what `access`
    /// allows.
    async fn start_program_with(
        program: Box<dyn DnsServer>,
        dir: &Path,
        zones: &[&str],
        access: Access,
    ) -> Result<Server> {
        std::fs::create_dir_all(dir)?;
        let key_file = dir.join("tsig.key");
        bind::write_key_file(&key_file, KEY_NAME).await?;
        let zones: Vec<String> = zones.iter().map(|z| canonical_name(z)).collect();
        let mut zone_files = Vec::new();
        for zone in &zones {
            let file = dir.join(format!("{zone}zone"));
            std::fs::write(
                &file,
                "$TTL 3600\n\
                 @ IN SOA ns.pg2dns.invalid. hostmaster.pg2dns.invalid. 1 3600 600 86400 60\n\
                 @ IN NS ns.pg2dns.invalid.\n",
            )?;
            zone_files.push((zone.clone(), file));
        }
        let port = free_port()?;
        let command = program.configure(&ServerConfig {
            dir,
            port,
            zones: &zone_files,
            key_file: &key_file,
            access,
        })?;
        let mut server = Server {
            log: dir.join(format!("{}.log", program.program())),
            program,
            dir: dir.to_owned(),
            port,
            zones,
            key_file,
            command,
            child: Mutex::new(None),
        };
        server.start_again().await?;
        Ok(server)
    }

    /// The program's name (`named`, `knotd`).
    pub fn program(&self) -> &'static str {
        self.program.program()
    }

    /// `127.0.0.1:PORT`, the address pg2dns sends UPDATEs to.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The zones served, canonical (`example.test.`).
    pub fn zones(&self) -> &[String] {
        &self.zones
    }

    /// The key file (tsig-keygen's format) the server trusts.
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// The server's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the server with SIGTERM and waits for it to exit (it writes its
    /// journals first).
    pub async fn stop(&mut self) -> Result<()> {
        let Some(child) = self.child().take() else {
            bail!("{} is not running", self.program());
        };
        super::terminate(child, self.program()).await
    }

    /// Starts the server (again) on the same port with the same files and
    /// journals, and waits until it answers an SOA query for every zone.
    pub async fn start_again(&mut self) -> Result<()> {
        if self.child().is_some() {
            bail!("{} is already running", self.program());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = self
            .command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {:?}", self.command))?;
        *self.child() = Some(child);
        for (i, zone) in self.zones.clone().into_iter().enumerate() {
            let what = format!(
                "{} on port {} answers SOA {zone}",
                self.program(),
                self.port
            );
            if i < MANY_ZONES {
                wait_until(Duration::from_secs(30), &what, || self.answers_soa(&zone)).await?;
            } else {
                // Thousands of zones: one dig each would take minutes.
                wait_until(Duration::from_secs(30), &what, || {
                    soa_over_udp(self.port, &zone)
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Whether the server answers the zone's SOA; an error if it exited.
    /// (The first [`MANY_ZONES`] zones are asked this way.)
    async fn answers_soa(&self, zone: &str) -> Result<Check<()>> {
        let exited = match self.child().as_mut() {
            Some(child) => child.try_wait()?,
            None => bail!("{} is not running", self.program()),
        };
        if let Some(status) = exited {
            *self.child() = None;
            bail!(
                "{} exited ({status}) while starting; its log:\n{}",
                self.program(),
                self.log_tail(60)
            );
        }
        let output = run_unchecked(
            self.dig()?
                .args(["+norec", "+short", "+time=1", "+tries=1", "SOA"])
                .arg(zone),
            Duration::from_secs(10),
        )
        .await?;
        let answer = String::from_utf8_lossy(&output.stdout);
        if output.status.success()
            && answer
                .lines()
                .any(|l| l.contains("hostmaster.pg2dns.invalid."))
        {
            return Ok(Check::Done(()));
        }
        Ok(Check::NotYet(format!(
            "it answered {:?}; its log:\n{}",
            answer.trim(),
            self.log_tail(60)
        )))
    }

    /// The zone's records as a TSIG-signed AXFR returns them, without the
    /// apex SOA and NS (which pg2dns does not manage), sorted. A failed
    /// transfer is tried once more: Knot closes a TCP connection whose
    /// reader is slow (`tcp-idle-timeout`).
    pub async fn axfr(&self, zone: &str) -> Result<Vec<Record>> {
        match self.axfr_once(zone).await {
            Ok(records) => Ok(records),
            Err(first) => self
                .axfr_once(zone)
                .await
                .with_context(|| format!("(tried twice; the first attempt: {first:#})")),
        }
    }

    async fn axfr_once(&self, zone: &str) -> Result<Vec<Record>> {
        let zone = canonical_name(zone);
        let output = run(
            self.dig()?
                .arg("-k")
                .arg(&self.key_file)
                .args(["+noall", "+answer", "+time=5", "+tries=1", "AXFR"])
                .arg(&zone),
            Duration::from_secs(60),
        )
        .await?;
        let text = String::from_utf8_lossy(&output.stdout);
        let records = parse_dig_answer(&text).with_context(|| format!("AXFR of {zone}"))?;
        if !records.iter().any(|r| r.owner == zone && r.rtype == "SOA") {
            bail!(
                "AXFR of {zone} from {} returned no SOA:\n{text}",
                self.program()
            );
        }
        let mut records: Vec<Record> = records
            .into_iter()
            .filter(|r| !r.is_apex_soa_or_ns(&zone))
            .collect();
        records.sort();
        records.dedup();
        Ok(records)
    }

    /// The answer to an ordinary query (`dig NAME TYPE`), sorted.
    pub async fn query(&self, name: &str, rtype: &str) -> Result<Vec<Record>> {
        let output = run(
            self.dig()?
                .args(["+norec", "+noall", "+answer", "+time=2", "+tries=1"])
                .arg(name)
                .arg(rtype),
            Duration::from_secs(30),
        )
        .await?;
        let mut records = parse_dig_answer(&String::from_utf8_lossy(&output.stdout))?;
        records.sort();
        Ok(records)
    }

    /// Sends `update …` lines through `nsupdate -k`, as an operator would.
    pub async fn nsupdate(&self, updates: &str) -> Result<()> {
        let script = format!("server 127.0.0.1 {}\n{updates}\nsend\n", self.port);
        let path = self.dir.join("nsupdate.txt");
        std::fs::write(&path, script)?;
        run(
            Command::new(&tools()?.nsupdate)
                .arg("-v")
                .arg("-k")
                .arg(&self.key_file)
                .arg(&path),
            Duration::from_secs(30),
        )
        .await?;
        Ok(())
    }

    /// The server's log, last lines.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// The server's log under a heading, for a failing test's output.
    pub fn report(&self) -> String {
        format!(
            "\n===== {} ({}) =====\n{}",
            self.program(),
            self.dir.display(),
            self.log_tail(80)
        )
    }

    /// The running server's process id (to `kill -STOP` it).
    pub fn pid(&self) -> Option<u32> {
        self.child().as_ref().map(Child::id)
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dig(&self) -> Result<Command> {
        let mut command = Command::new(&tools()?.dig);
        command
            .arg("@127.0.0.1")
            .args(["-p", &self.port.to_string()]);
        Ok(command)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Zones of a server asked with `dig` when it starts; the others are asked
/// with [`soa_over_udp`].
const MANY_ZONES: usize = 20;

/// Whether the server on `port` answers an SOA query for `zone`
/// authoritatively (AA set, NOERROR, an answer), over UDP from this
/// process: what `dig +norec SOA` checks, without a process per zone.
async fn soa_over_udp(port: u16, zone: &str) -> Result<Check<()>> {
    let mut query = vec![0x51, 0x7a, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in zone.trim_end_matches('.').split('.') {
        query.push(u8::try_from(label.len())?);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 6, 0, 1]);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    socket.send_to(&query, ("127.0.0.1", port)).await?;
    let mut answer = [0u8; 1500];
    let len = match tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut answer)).await {
        Ok(Ok(len)) => len,
        Ok(Err(e)) => return Ok(Check::NotYet(e.to_string())),
        Err(_) => return Ok(Check::NotYet("no answer within 1 s".into())),
    };
    let answer = &answer[..len];
    let ok = answer.len() >= 12
        && answer[..2] == query[..2]
        && answer[2] & 0x04 != 0
        && answer[3] & 0x0f == 0
        && u16::from_be_bytes([answer[6], answer[7]]) >= 1;
    Ok(if ok {
        Check::Done(())
    } else {
        Check::NotYet(format!("answer {:02x?}", &answer[..answer.len().min(12)]))
    })
}
