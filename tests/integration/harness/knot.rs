//! A Knot DNS `knotd` for one test, serving TSIG-protected dynamic zones, and
//! [`KnotStack`]: PostgreSQL + pg2dns with each zone on Knot or on BIND.
//!
//! Knot gets the same kind of zones as [`super::Bind`]: only the apex SOA and
//! NS at first. Its `key:` section carries the secret of a key file written
//! by `tsig-keygen -a hmac-sha256` (the file pg2dns reads), and one `acl:`
//! allows `update` and `transfer` for that key. The journal keeps changes
//! only (`journal-content: changes`) and the zone file is never rewritten
//! (`zonefile-sync: -1`), so a restart loads the zone file and replays the
//! journal: the zone survives an outage as BIND's does.
//!
//! knotd runs in the foreground (its log goes to stderr, kept in a file),
//! listens only on 127.0.0.1 at a free port, keeps its control socket, pid
//! file and database in the test's directory, and is killed on drop. The
//! database directory must exist before the first UPDATE: Knot 3.2 starts
//! without it and answers every UPDATE with SERVFAIL ("DDNS, processing
//! failed (not exists)").

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::Command;

use super::bind::{write_key_file, KEY_NAME};
use super::records::{canonical_name, parse_dig_answer, Record};
use super::stack::{self, key_file_for, Row, Runs, ZoneRecords};
use super::{
    find_program, free_port, log_tail, run_unchecked, tools, Bind, Pg2dns, Postgres, TempDir,
};

const KNOT_INSTALL_HINT: &str =
    "install Knot DNS with `apt-get install -y knot knot-dnsutils` (or run scripts/test)";

/// `knotd`, or an error that says how to install it.
pub fn knotd() -> Result<PathBuf> {
    find_program("knotd").with_context(|| {
        format!("the Knot tests need a real knotd, and it was not found; {KNOT_INSTALL_HINT}")
    })
}

/// A running (or deliberately stopped) `knotd`; killed on drop.
#[derive(Debug)]
pub struct Knot {
    dir: PathBuf,
    port: u16,
    zones: Vec<String>,
    key_file: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Knot {
    /// Writes a key file, the zone files and knot.conf in `dir/knot`, starts
    /// knotd and waits until it answers an SOA query for every zone.
    pub async fn start(dir: &Path, zones: &[&str]) -> Result<Knot> {
        let knotd = knotd()?;
        let dir = dir.join("knot");
        std::fs::create_dir_all(dir.join("db"))?;
        let key_file = dir.join("tsig.key");
        write_key_file(&key_file, KEY_NAME).await?;
        let (algorithm, secret) = read_key_file(&key_file)?;
        let zones: Vec<String> = zones.iter().map(|z| canonical_name(z)).collect();
        let port = free_port()?;
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
             \x20   action: [update, transfer]\n\
             template:\n\
             \x20 - id: default\n\
             \x20   storage: \"{dir}\"\n\
             \x20   acl: pg2dns\n\
             \x20   journal-content: changes\n\
             \x20   zonefile-sync: -1\n\
             zone:\n",
            dir = dir.display(),
        );
        for zone in &zones {
            let file = dir.join(format!("{zone}zone"));
            std::fs::write(
                &file,
                "$TTL 3600\n\
                 @ IN SOA ns.pg2dns.invalid. hostmaster.pg2dns.invalid. 1 3600 600 86400 60\n\
                 @ IN NS ns.pg2dns.invalid.\n",
            )?;
            writeln!(conf, "  - domain: {zone}\n    file: \"{}\"", file.display())?;
        }
        let conf_path = dir.join("knot.conf");
        std::fs::write(&conf_path, conf)?;
        let mut knot = Knot {
            log: dir.join("knotd.log"),
            dir,
            port,
            zones,
            key_file,
            conf: conf_path,
            child: None,
        };
        knot.spawn(&knotd)?;
        knot.wait_ready().await?;
        Ok(knot)
    }

    /// `127.0.0.1:PORT`, the address pg2dns sends UPDATEs to.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The zones served, canonical (`example.test.`).
    pub fn zones(&self) -> &[String] {
        &self.zones
    }

    /// The key file (tsig-keygen's format) whose secret Knot trusts.
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// The directory holding knotd's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops knotd with SIGTERM and waits for it to exit.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(child) = self.child.take() else {
            bail!("knotd is not running");
        };
        super::terminate(child, "knotd").await
    }

    /// Starts knotd (again) on the same port with the same files and
    /// journal, and waits until it answers an SOA query for every zone.
    pub async fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("knotd is already running");
        }
        self.spawn(&knotd()?)?;
        self.wait_ready().await
    }

    fn spawn(&mut self, knotd: &Path) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = std::process::Command::new(knotd)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", knotd.display()))?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        for zone in self.zones.clone() {
            loop {
                if let Some(child) = self.child.as_mut() {
                    if let Some(status) = child.try_wait()? {
                        self.child = None;
                        bail!(
                            "knotd exited ({status}) while starting; its log:\n{}",
                            self.log_tail(60)
                        );
                    }
                }
                let output = run_unchecked(
                    self.dig()?
                        .args(["+norec", "+short", "+time=1", "+tries=1", "SOA"])
                        .arg(&zone),
                    Duration::from_secs(10),
                )
                .await?;
                let answer = String::from_utf8_lossy(&output.stdout);
                if output.status.success()
                    && answer
                        .lines()
                        .any(|l| l.contains("hostmaster.pg2dns.invalid."))
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "knotd on port {} does not answer SOA {zone} after 30 s ({}); its log:\n{}",
                        self.port,
                        answer.trim(),
                        self.log_tail(60)
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// The zone's records as a TSIG-signed AXFR returns them, without the
    /// apex SOA and NS, sorted. A failed transfer is tried once more: Knot
    /// closes a TCP connection whose reader is slow (`tcp-idle-timeout`).
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
        let output = run_unchecked(
            self.dig()?
                .arg("-k")
                .arg(&self.key_file)
                .args(["+noall", "+answer", "+time=5", "+tries=1", "AXFR"])
                .arg(&zone),
            Duration::from_secs(60),
        )
        .await?;
        let text = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "dig AXFR {zone} from knotd failed ({}):\n{text}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let records = parse_dig_answer(&text).with_context(|| format!("AXFR of {zone}"))?;
        if !records.iter().any(|r| r.owner == zone && r.rtype == "SOA") {
            bail!("AXFR of {zone} from knotd returned no SOA:\n{text}");
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
        let output = super::run(
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
        super::run(
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

    /// knotd's log, last lines.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    fn dig(&self) -> Result<Command> {
        let mut command = Command::new(&tools()?.dig);
        command
            .arg("@127.0.0.1")
            .args(["-p", &self.port.to_string()]);
        Ok(command)
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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

/// The server that is primary for a zone in a [`KnotStack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primary {
    /// The stack's `knotd`.
    Knot,
    /// The stack's `named`.
    Bind,
}

/// PostgreSQL, a `knotd`, maybe a `named`, and a pg2dns config that sends
/// each zone to its own primary with that primary's key file.
///
/// Like [`super::Stack`], it prints the logs of every process it started
/// when dropped (cargo shows them only for failing tests).
pub struct KnotStack {
    /// A SQL connection to the cluster (superuser).
    pub db: tokio_postgres::Client,
    /// The Knot server.
    pub knot: Knot,
    /// The BIND server, when some zone is on BIND.
    pub bind: Option<Bind>,
    /// The database server.
    pub pg: Postgres,
    zones: Vec<(String, Primary)>,
    config: PathBuf,
    runs: Runs,
    dir: TempDir,
}

impl KnotStack {
    /// Starts PostgreSQL, knotd for the zones on [`Primary::Knot`] and named
    /// for those on [`Primary::Bind`] (if any), writes the config and runs
    /// `pg2dns setup`.
    pub async fn start(label: &str, zones: &[(&str, Primary)]) -> Result<KnotStack> {
        let on = |primary: Primary| -> Vec<&str> {
            zones
                .iter()
                .filter(|(_, p)| *p == primary)
                .map(|(z, _)| *z)
                .collect()
        };
        let dir = TempDir::new(label)?;
        let pg = Postgres::start(dir.path()).await?;
        let knot = Knot::start(dir.path(), &on(Primary::Knot)).await?;
        let bind_zones = on(Primary::Bind);
        let bind = if bind_zones.is_empty() {
            None
        } else {
            Some(Bind::start(dir.path(), &bind_zones).await?)
        };
        let db = pg.connect().await?;
        let stack = KnotStack {
            db,
            knot,
            bind,
            pg,
            zones: zones.iter().map(|(z, p)| (canonical_name(z), *p)).collect(),
            config: dir.path().join("pg2dns.toml"),
            runs: Runs::new(dir.path()),
            dir,
        };
        stack.write_config(&[])?;
        stack.setup().await?;
        Ok(stack)
    }

    /// The stack's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The zones, canonical, in the order given to [`KnotStack::start`].
    pub fn zones(&self) -> Vec<String> {
        self.zones.iter().map(|(z, _)| z.clone()).collect()
    }

    fn bind(&self) -> Result<&Bind> {
        self.bind.as_ref().context("this stack runs no named")
    }

    /// The address and key file of a zone's primary.
    fn primary_of(&self, primary: Primary) -> Result<(String, &Path)> {
        Ok(match primary {
            Primary::Knot => (self.knot.addr(), self.knot.key_file()),
            Primary::Bind => (self.bind()?.addr(), self.bind()?.key_file()),
        })
    }

    /// (Re)writes the config; `key_files` replaces the TSIG key file of the
    /// named zones (every other zone uses the key its primary trusts).
    pub fn write_config(&self, key_files: &[(&str, &Path)]) -> Result<()> {
        let mut zones = Vec::new();
        for (zone, primary) in &self.zones {
            let (addr, trusted) = self.primary_of(*primary)?;
            zones.push((zone.clone(), addr, key_file_for(zone, key_files, trusted)));
        }
        stack::write_config(&self.config, &self.pg.url(), &zones)
    }

    /// Appends TOML to the config, e.g. a `[[zone]]` entry.
    pub fn append_config(&self, toml: &str) -> Result<()> {
        stack::append_config(&self.config, toml)
    }

    /// Writes a key file with the trusted key's name but another secret.
    pub async fn write_wrong_key_file(&self) -> Result<PathBuf> {
        let path = self.dir().join("wrong-secret.key");
        write_key_file(&path, KEY_NAME).await?;
        Ok(path)
    }

    /// `pg2dns setup`; fails with pg2dns's output if it exits non-zero.
    pub async fn setup(&self) -> Result<()> {
        stack::setup(&self.config).await
    }

    /// Starts `pg2dns run` with the stack's config.
    pub fn run(&self) -> Result<Pg2dns> {
        self.runs.spawn(&self.config, &[])
    }

    /// Runs SQL statements (one implicit transaction per statement unless
    /// the text says BEGIN … COMMIT).
    pub async fn exec(&self, sql: &str) -> Result<()> {
        stack::exec(&self.db, sql).await
    }

    /// Every row of `pg2dns.rr`, by id.
    pub async fn table(&self) -> Result<Vec<Row>> {
        stack::table(&self.db).await
    }

    /// What DNS should hold for these rows in `zones`: each record in the
    /// zone (of all the stack's zones) with the longest matching suffix.
    pub fn expected(&self, rows: &[Row], zones: &[String]) -> ZoneRecords {
        stack::expected(rows, &self.zones(), zones)
    }

    /// An AXFR of `zone` from its primary, apex SOA/NS left out.
    pub async fn axfr(&self, zone: &str) -> Result<Vec<Record>> {
        let zone = canonical_name(zone);
        match self.zones.iter().find(|(z, _)| *z == zone) {
            Some((_, Primary::Knot)) => self.knot.axfr(&zone).await,
            Some((_, Primary::Bind)) => self.bind()?.axfr(&zone).await,
            None => bail!("{zone} is not one of the stack's zones"),
        }
    }

    /// Waits until every zone's AXFR equals what `pg2dns.rr` says.
    pub async fn wait_until_dns_matches_table(&self, timeout: Duration) -> Result<ZoneRecords> {
        self.wait_until_zones_match_table(&self.zones(), timeout)
            .await
    }

    /// Waits until the AXFR of each of `zones` equals what `pg2dns.rr` says
    /// (read again on every attempt), at most `timeout`; on timeout the error
    /// shows the difference. Other zones are not asked, so their server may
    /// be down.
    pub async fn wait_until_zones_match_table(
        &self,
        zones: &[String],
        timeout: Duration,
    ) -> Result<ZoneRecords> {
        stack::wait_for_match(timeout, "pg2dns.rr", || async {
            let expected = self.expected(&self.table().await?, zones);
            let mut dns = ZoneRecords::new();
            for zone in zones {
                match self.axfr(zone).await {
                    Ok(records) => dns.insert(zone.clone(), records),
                    Err(e) => return Ok((expected, Err(e))),
                };
            }
            Ok((expected, Ok(dns)))
        })
        .await
    }
}

impl Drop for KnotStack {
    fn drop(&mut self) {
        // Captured by the test harness: visible only when the test fails.
        let mut report = self.runs.report();
        let _ = write!(
            report,
            "\n===== knotd ({}) =====\n{}",
            self.knot.dir().display(),
            self.knot.log_tail(80)
        );
        if let Some(bind) = &self.bind {
            let _ = write!(
                report,
                "\n===== named ({}) =====\n{}",
                bind.dir().display(),
                bind.log_tail(80)
            );
        }
        let _ = write!(report, "\n===== postgres =====\n{}", self.pg.log_tail(60));
        eprintln!("{report}");
    }
}
