//! PostgreSQL + BIND + pg2dns wired together for one scenario test.
//!
//! A [`Stack`] owns a temporary directory with a cluster (schema installed by
//! `pg2dns setup`), a `named` serving [`FORWARD`] and [`REVERSE`], and a
//! config file pointing pg2dns at both. Tests change `pg2dns.rr` with SQL,
//! start pg2dns runs, and wait until what BIND answers to an AXFR equals what
//! the table says. The comparison ignores each zone's apex SOA and NS and
//! uses the canonical forms of [`super::records`].
//!
//! When the stack is dropped it prints the logs of every process it started;
//! cargo shows that output only when the test failed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::records::{canonical_name, zone_of, Record};
use super::{bind, pg2dns, Bind, Pg2dns, Postgres, TempDir};

/// The forward zone every stack serves.
pub const FORWARD: &str = "example.test.";
/// The reverse zone every stack serves (192.0.2.0/24).
pub const REVERSE: &str = "2.0.192.in-addr.arpa.";
/// The replication slot and publication names in the config.
pub const SLOT: &str = "pg2dns";

/// Records per zone (every served zone present, possibly empty), sorted.
pub type ZoneRecords = BTreeMap<String, Vec<Record>>;

/// One row of `pg2dns.rr`.
#[derive(Debug, Clone)]
pub struct Row {
    /// The row's primary key.
    pub id: i64,
    /// The record the row describes, canonical.
    pub record: Record,
}

/// One row of `pg2dns.rejected`.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// The source row's key (the `pg2dns.rr` id as text).
    pub row_key: String,
    /// The LSN of the change, as PostgreSQL prints it.
    pub lsn: String,
    /// The zone, when the owner is in one.
    pub zone: Option<String>,
    /// The owner name, as pg2dns saw it.
    pub owner: Option<String>,
    /// Why the row was not sent.
    pub reason: String,
}

/// The servers, the config and a SQL connection for one test.
pub struct Stack {
    /// A SQL connection to the cluster (superuser).
    pub db: tokio_postgres::Client,
    /// The DNS server.
    pub bind: Bind,
    /// The database server.
    pub pg: Postgres,
    config: PathBuf,
    runs: Runs,
    dir: TempDir,
}

impl Stack {
    /// Starts PostgreSQL and BIND, writes the config and runs `pg2dns setup`.
    pub async fn start(label: &str) -> Result<Stack> {
        let dir = TempDir::new(label)?;
        let pg = Postgres::start(dir.path()).await?;
        let bind = Bind::start(dir.path(), &[FORWARD, REVERSE]).await?;
        let db = pg.connect().await?;
        let stack = Stack {
            db,
            bind,
            pg,
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

    /// (Re)writes the config; `key_files` replaces the TSIG key file of the
    /// named zones (every other zone uses the key BIND trusts).
    pub fn write_config(&self, key_files: &[(&str, &Path)]) -> Result<()> {
        let zones: Vec<(String, String, PathBuf)> = self
            .bind
            .zones()
            .iter()
            .map(|zone| {
                let key = key_file_for(zone, key_files, self.bind.key_file());
                (zone.clone(), self.bind.addr(), key)
            })
            .collect();
        write_config(&self.config, &self.pg.url(), &zones)
    }

    /// Appends TOML to the config, e.g. a `[limits]` table.
    pub fn append_config(&self, toml: &str) -> Result<()> {
        append_config(&self.config, toml)
    }

    /// Waits until BIND answers `name` `rtype` with at least one record.
    pub async fn wait_until_answers(
        &self,
        name: &str,
        rtype: &str,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.bind.query(name, rtype).await?.is_empty() {
            if tokio::time::Instant::now() > deadline {
                bail!("BIND did not answer {name} {rtype} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// The SOA serial BIND serves for `zone`: it grows by one per applied UPDATE.
    pub async fn serial(&self, zone: &str) -> Result<u64> {
        let soa = self.bind.query(zone, "SOA").await?;
        let rdata = soa
            .first()
            .map(|r| r.rdata.clone())
            .with_context(|| format!("no SOA for {zone}"))?;
        rdata
            .split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no serial in the SOA {rdata:?}"))
    }

    /// Writes a key file with the trusted key's name but another secret.
    pub async fn write_wrong_key_file(&self) -> Result<PathBuf> {
        let path = self.dir().join("wrong-secret.key");
        bind::write_key_file(&path, bind::KEY_NAME).await?;
        Ok(path)
    }

    /// `pg2dns setup`; fails with pg2dns's output if it exits non-zero.
    pub async fn setup(&self) -> Result<()> {
        setup(&self.config).await
    }

    /// Starts `pg2dns run` with the stack's config.
    pub fn run(&self) -> Result<Pg2dns> {
        self.run_with(&[])
    }

    /// Starts `pg2dns run` with extra environment variables, e.g.
    /// `[("PG2DNS_FAILPOINT", "after-dns-ack")]`.
    pub fn run_with(&self, env: &[(&str, &str)]) -> Result<Pg2dns> {
        self.runs.spawn(&self.config, env)
    }

    /// Runs SQL statements (one implicit transaction per statement unless
    /// the text says BEGIN … COMMIT).
    pub async fn exec(&self, sql: &str) -> Result<()> {
        exec(&self.db, sql).await
    }

    /// Every row of `pg2dns.rr`, by id.
    pub async fn table(&self) -> Result<Vec<Row>> {
        table(&self.db).await
    }

    /// What DNS should hold for these rows: each record in the zone with the
    /// longest matching suffix; rows in no zone are left out.
    pub fn expected(&self, rows: &[Row]) -> ZoneRecords {
        expected(rows, self.bind.zones(), self.bind.zones())
    }

    /// What BIND holds now: an AXFR of every zone, apex SOA/NS left out.
    pub async fn dns(&self) -> Result<ZoneRecords> {
        let mut dns = ZoneRecords::new();
        for zone in self.bind.zones() {
            dns.insert(zone.clone(), self.bind.axfr(zone).await?);
        }
        Ok(dns)
    }

    /// Waits until every zone's AXFR equals what `pg2dns.rr` says (read
    /// again on every attempt), at most `timeout`; on timeout the error shows
    /// the difference.
    pub async fn wait_until_dns_matches_table(&self, timeout: Duration) -> Result<ZoneRecords> {
        self.wait_for_dns(timeout, None).await
    }

    /// Waits until every zone's AXFR equals `expected`, at most `timeout`.
    pub async fn wait_until_dns_equals(
        &self,
        expected: &ZoneRecords,
        timeout: Duration,
    ) -> Result<ZoneRecords> {
        self.wait_for_dns(timeout, Some(expected)).await
    }

    async fn wait_for_dns(
        &self,
        timeout: Duration,
        fixed: Option<&ZoneRecords>,
    ) -> Result<ZoneRecords> {
        let what = if fixed.is_some() {
            "the test"
        } else {
            "pg2dns.rr"
        };
        wait_for_match(timeout, what, || async {
            let expected = match fixed {
                Some(expected) => expected.clone(),
                None => self.expected(&self.table().await?),
            };
            Ok((expected, self.dns().await))
        })
        .await
    }

    /// Restarts PostgreSQL (`pg_ctl restart -m fast`, cutting every
    /// connection, pg2dns's included) and reconnects [`Stack::db`].
    pub async fn restart_postgres(&mut self) -> Result<()> {
        self.pg.restart().await?;
        self.db = self.pg.connect().await?;
        Ok(())
    }

    /// The changes the slot would deliver next (read without consuming
    /// them, with `pg_logical_slot_peek_binary_changes`), as (LSN, xid) pairs.
    /// The slot must be idle: pg2dns not running.
    pub async fn peek_slot(&self) -> Result<Vec<(u64, String)>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let result = self
                .db
                .query(
                    "SELECT lsn::text, xid::text FROM pg_logical_slot_peek_binary_changes(
                         $1, NULL, NULL, 'proto_version', '1', 'publication_names', $2)",
                    &[&SLOT, &SLOT],
                )
                .await;
            match result {
                Ok(rows) => {
                    return rows
                        .iter()
                        .map(|row| Ok((parse_lsn(row.get(0))?, row.get(1))))
                        .collect()
                }
                // The walsender may hold the slot a moment after pg2dns died.
                Err(e) if Instant::now() < deadline && format!("{e:?}").contains("is active") => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).context("peeking at the slot"),
            }
        }
    }

    /// The replication slot's `confirmed_flush_lsn`, as PostgreSQL prints it.
    pub async fn confirmed_flush_lsn(&self) -> Result<String> {
        let row = self
            .db
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&SLOT],
            )
            .await
            .context("reading the slot's confirmed_flush_lsn")?;
        row.get::<_, Option<String>>(0)
            .context("the slot has no confirmed_flush_lsn")
    }

    /// The rows of `pg2dns.rejected`, oldest first.
    pub async fn rejected(&self) -> Result<Vec<Rejected>> {
        let rows = self
            .db
            .query(
                "SELECT row_key, lsn::text, zone, owner, reason FROM pg2dns.rejected ORDER BY id",
                &[],
            )
            .await
            .context("reading pg2dns.rejected")?;
        Ok(rows
            .iter()
            .map(|row| Rejected {
                row_key: row.get(0),
                lsn: row.get(1),
                zone: row.get(2),
                owner: row.get(3),
                reason: row.get(4),
            })
            .collect())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Captured by the test harness: visible only when the test fails.
        let mut report = self.runs.report();
        let _ = write!(
            report,
            "\n===== named ({}) =====\n{}\n===== postgres =====\n{}",
            self.bind.dir().display(),
            self.bind.log_tail(80),
            self.pg.log_tail(60)
        );
        eprintln!("{report}");
    }
}

/// A readable account of how `dns` differs from `expected`.
pub fn difference(expected: &ZoneRecords, dns: &ZoneRecords) -> String {
    let mut out = String::new();
    let empty = Vec::new();
    for (zone, want) in expected {
        let have = dns.get(zone).unwrap_or(&empty);
        let missing: Vec<_> = want.iter().filter(|r| !have.contains(r)).collect();
        let extra: Vec<_> = have.iter().filter(|r| !want.contains(r)).collect();
        let _ = writeln!(
            out,
            "zone {zone}: {} expected, {} in DNS, {} missing, {} unexpected",
            want.len(),
            have.len(),
            missing.len(),
            extra.len()
        );
        for record in missing.iter().take(15) {
            let _ = writeln!(out, "  missing:    {record}");
        }
        for record in extra.iter().take(15) {
            let _ = writeln!(out, "  unexpected: {record}");
        }
    }
    out
}

/// An LSN (`16/B374D848`) as a number, for comparisons.
pub fn parse_lsn(lsn: &str) -> Result<u64> {
    let (high, low) = lsn
        .split_once('/')
        .with_context(|| format!("not an LSN: {lsn:?}"))?;
    Ok((u64::from_str_radix(high, 16)? << 32) | u64::from_str_radix(low, 16)?)
}

/// The `pg2dns run` processes of one stack, each logging to its own file.
pub struct Runs {
    dir: PathBuf,
    logs: Mutex<Vec<PathBuf>>,
}

impl Runs {
    /// Runs whose logs go to `dir/pg2dns-run-N.log`.
    pub fn new(dir: &Path) -> Runs {
        Runs {
            dir: dir.to_owned(),
            logs: Mutex::new(Vec::new()),
        }
    }

    /// Starts `pg2dns run -c config` with extra environment variables.
    pub fn spawn(&self, config: &Path, env: &[(&str, &str)]) -> Result<Pg2dns> {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let log = self.dir.join(format!("pg2dns-run-{}.log", logs.len() + 1));
        logs.push(log.clone());
        Pg2dns::spawn(config, &log, env)
    }

    /// The tail of every run's log, for a failing test's output.
    pub fn report(&self) -> String {
        let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let mut report = String::new();
        for (i, log) in logs.iter().enumerate() {
            let _ = write!(
                report,
                "\n===== pg2dns run {} ({}) =====\n{}",
                i + 1,
                log.display(),
                super::log_tail(log, 200)
            );
        }
        report
    }
}

/// The key file for `zone`: the one `key_files` names for it, else `trusted`.
pub fn key_file_for(zone: &str, key_files: &[(&str, &Path)], trusted: &Path) -> PathBuf {
    key_files
        .iter()
        .find(|(z, _)| canonical_name(z) == zone)
        .map_or(trusted, |(_, path)| *path)
        .to_owned()
}

/// Writes a pg2dns config: the database at `url` and each (zone, primary
/// address, key file).
pub fn write_config(path: &Path, url: &str, zones: &[(String, String, PathBuf)]) -> Result<()> {
    let mut text = format!(
        "# written by the pg2dns integration tests\n\
         version = 1\n\n\
         [database]\n\
         url = \"{url}\"\n\
         slot = \"{SLOT}\"\n\
         publication = \"{SLOT}\"\n"
    );
    for (zone, addr, key) in zones {
        write!(
            text,
            "\n[[zone]]\nname = \"{zone}\"\nprimary = \"{addr}\"\ntsig_key_file = \"{}\"\n",
            key.display()
        )?;
    }
    std::fs::write(path, text).context("writing the pg2dns config")
}

/// Appends TOML to a config file, e.g. a `[limits]` table.
pub fn append_config(path: &Path, toml: &str) -> Result<()> {
    let mut text = std::fs::read_to_string(path).context("reading the pg2dns config")?;
    text.push('\n');
    text.push_str(toml);
    std::fs::write(path, text).context("writing the pg2dns config")
}

/// `pg2dns setup`; fails with pg2dns's output if it exits non-zero.
pub async fn setup(config: &Path) -> Result<()> {
    let output = pg2dns::command("setup", config).await?;
    if !output.status.success() {
        bail!(
            "pg2dns setup failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Runs SQL statements (one implicit transaction per statement unless the
/// text says BEGIN … COMMIT).
pub async fn exec(db: &tokio_postgres::Client, sql: &str) -> Result<()> {
    db.batch_execute(sql)
        .await
        .with_context(|| format!("executing {sql}"))
}

/// Every row of `pg2dns.rr`, by id.
pub async fn table(db: &tokio_postgres::Client) -> Result<Vec<Row>> {
    let rows = db
        .query(
            "SELECT id, owner, ttl, type, rdata FROM pg2dns.rr ORDER BY id",
            &[],
        )
        .await
        .context("reading pg2dns.rr")?;
    rows.iter()
        .map(|row| {
            let ttl: i32 = row.get(2);
            Ok(Row {
                id: row.get(0),
                record: Record::new(row.get(1), u32::try_from(ttl)?, row.get(3), row.get(4)),
            })
        })
        .collect()
}

/// What DNS should hold in the `wanted` zones for these rows: each record in
/// the zone of `all` with the longest matching suffix; rows in no zone, or in
/// a zone not wanted, are left out.
pub fn expected(rows: &[Row], all: &[String], wanted: &[String]) -> ZoneRecords {
    let mut expected: ZoneRecords = wanted.iter().map(|z| (z.clone(), Vec::new())).collect();
    for row in rows {
        if let Some(records) = zone_of(&row.record.owner, all).and_then(|z| expected.get_mut(z)) {
            records.push(row.record.clone());
        }
    }
    for records in expected.values_mut() {
        records.sort();
        records.dedup();
    }
    expected
}

/// Polls `attempt` (what should be, what DNS holds) every 100 ms until the
/// two are equal, at most `timeout`; on timeout the error shows the
/// difference with what `what` says.
pub async fn wait_for_match<F, Fut>(
    timeout: Duration,
    what: &str,
    mut attempt: F,
) -> Result<ZoneRecords>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(ZoneRecords, Result<ZoneRecords>)>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let (expected, dns) = attempt().await?;
        if let Ok(dns) = &dns {
            if *dns == expected {
                return Ok(expected);
            }
        }
        if Instant::now() > deadline {
            let seen = match dns {
                Ok(dns) => difference(&expected, &dns),
                Err(e) => format!("the last AXFR failed: {e:#}"),
            };
            bail!("after {timeout:?}, DNS does not hold what {what} says:\n{seen}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
