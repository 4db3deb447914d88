//! PostgreSQL + a DNS server (BIND, Knot or both) + pg2dns wired together
//! for one scenario test.
//!
//! A [`Stack`] owns a temporary directory with a cluster (schema installed by
//! `pg2dns setup`), the [`Server`]s that are primary for [`FORWARD`] and
//! [`REVERSE`] (one [`Primary`] for both, or each zone on its own), and a
//! config file pointing pg2dns at them. Tests change `pg2dns.rr` with SQL,
//! start pg2dns runs, and wait until what the primaries answer to an AXFR
//! equals what the table says. The comparison ignores each zone's apex SOA and NS and
//! uses the canonical forms of [`super::records`].
//!
//! When the stack is dropped it prints the logs of every process it started;
//! cargo shows that output only when the test failed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pg2dns_decoder::{pgoutput, Lsn};

use super::bind::write_key_file;
use super::dns::{Primary, Server, KEY_NAME};
use super::postgres::TLS_PASSWORD;
use super::records::{canonical_name, zone_of, Record};
use super::wait::{wait_until, Check};
use super::{pg2dns, Pg2dns, PgOptions, Postgres, TempDir};

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
    /// The LSN of the transaction that changed the row.
    pub lsn: Lsn,
    /// The zone, when the owner is in one.
    pub zone: Option<String>,
    /// The owner name, as pg2dns saw it.
    pub owner: Option<String>,
    /// Why the row was not sent.
    pub reason: String,
}

/// One pending transaction in the replication slot, as
/// `pg_logical_slot_peek_binary_changes` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTransaction {
    /// The transaction id, as PostgreSQL prints it (`xmin::text`).
    pub xid: String,
    /// The LSN of its commit record (pgoutput's Begin `final_lsn`): the
    /// LSN pg2dns names for the transaction.
    pub final_lsn: Lsn,
    /// The LSN of its first change.
    pub first_change: Lsn,
}

/// PostgreSQL, a DNS server per [`Primary`] in use, and a pg2dns config
/// that sends each zone to its primary with that primary's key file.
pub struct Stack {
    /// A SQL connection to the cluster (superuser).
    pub db: tokio_postgres::Client,
    /// The database server.
    pub pg: Postgres,
    servers: Vec<(Primary, Server)>,
    zones: Vec<(String, Primary)>,
    config: PathBuf,
    database_url: Mutex<String>,
    runs: Runs,
    dir: TempDir,
}

impl Stack {
    /// Starts PostgreSQL and `primary` serving [`FORWARD`] and [`REVERSE`],
    /// writes the config and runs `pg2dns setup`.
    pub async fn start(label: &str, primary: Primary) -> Result<Stack> {
        let label = format!("{label}-{}", primary.label());
        Stack::start_split(&label, &[(FORWARD, primary), (REVERSE, primary)]).await
    }

    /// Starts PostgreSQL and, for each primary named, its server with the
    /// zones put on it; writes the config and runs `pg2dns setup`.
    pub async fn start_split(label: &str, zones: &[(&str, Primary)]) -> Result<Stack> {
        let dir = TempDir::new(label)?;
        let pg = Postgres::start(dir.path()).await?;
        Stack::start_on(pg, dir, zones).await
    }

    /// [`Stack::start`] on a cluster with TLS and a SCRAM role
    /// ([`PgOptions::tls`]); pg2dns connects as that role with
    /// `sslmode=verify-full` and the right CA, also for `pg2dns setup`.
    pub async fn start_tls(label: &str, primary: Primary) -> Result<Stack> {
        let label = format!("{label}-{}", primary.label());
        let dir = TempDir::new(&label)?;
        let pg = Postgres::start_with(dir.path(), PgOptions { tls: true }).await?;
        Stack::start_on(pg, dir, &[(FORWARD, primary), (REVERSE, primary)]).await
    }

    /// [`Stack::start`] with pg2dns in a database of its own, made with
    /// `CREATE DATABASE pg2dns {options}` (e.g. `ENCODING 'LATIN1' LC_COLLATE
    /// 'C' LC_CTYPE 'C' TEMPLATE template0`); [`Stack::db`] is connected to
    /// it.
    pub async fn start_in_database(label: &str, primary: Primary, options: &str) -> Result<Stack> {
        let label = format!("{label}-{}", primary.label());
        let dir = TempDir::new(&label)?;
        let pg = Postgres::start(dir.path()).await?;
        pg.connect()
            .await?
            .batch_execute(&format!("CREATE DATABASE pg2dns {options}"))
            .await
            .with_context(|| format!("CREATE DATABASE pg2dns {options}"))?;
        let zones = [(FORWARD, primary), (REVERSE, primary)];
        Stack::start_in(pg, dir, &zones, "pg2dns").await
    }

    /// [`Stack::start`] without `pg2dns setup`: for a test that sets up
    /// as some other role than the superuser.
    pub async fn start_before_setup(label: &str, primary: Primary) -> Result<Stack> {
        let label = format!("{label}-{}", primary.label());
        let dir = TempDir::new(&label)?;
        let pg = Postgres::start(dir.path()).await?;
        let zones = [(FORWARD, primary), (REVERSE, primary)];
        Stack::start_unset(pg, dir, &zones, "postgres").await
    }

    /// Zones as data: `primary` serves [`FORWARD`], [`REVERSE`] and
    /// `table_zones`, but the config lists only the first two as `[[zone]]`s
    /// and declares `primary` once, as `[[server]] name = "primary"`; the
    /// others are added through `pg2dns.zones`. Runs `pg2dns setup`.
    pub async fn start_zones_as_data(
        label: &str,
        primary: Primary,
        table_zones: &[&str],
    ) -> Result<Stack> {
        let label = format!("{label}-{}", primary.label());
        let dir = TempDir::new(&label)?;
        let pg = Postgres::start(dir.path()).await?;
        let mut zones = vec![(FORWARD, primary), (REVERSE, primary)];
        zones.extend(table_zones.iter().map(|z| (*z, primary)));
        let stack = Stack::start_unset(pg, dir, &zones, "postgres").await?;
        let server = stack.server(primary)?;
        let mut text = format!(
            "# written by the pg2dns integration tests: zones as data\n\
             version = 1\n\n\
             [database]\n\
             url = \"{}\"\n\
             slot = \"{SLOT}\"\n\
             publication = \"{SLOT}\"\n\n\
             [[server]]\n\
             name = \"primary\"\n\
             address = \"{}\"\n\
             tsig_key_file = \"{}\"\n",
            stack.database_url.lock().unwrap(),
            server.addr(),
            server.key_file().display()
        );
        for zone in [FORWARD, REVERSE] {
            write!(
                text,
                "\n[[zone]]\nname = \"{zone}\"\nserver = \"primary\"\n"
            )?;
        }
        std::fs::write(&stack.config, text).context("writing the pg2dns config")?;
        stack.setup().await?;
        Ok(stack)
    }

    async fn start_on(pg: Postgres, dir: TempDir, zones: &[(&str, Primary)]) -> Result<Stack> {
        Stack::start_in(pg, dir, zones, "postgres").await
    }

    async fn start_in(
        pg: Postgres,
        dir: TempDir,
        zones: &[(&str, Primary)],
        dbname: &str,
    ) -> Result<Stack> {
        let stack = Stack::start_unset(pg, dir, zones, dbname).await?;
        stack.setup().await?;
        Ok(stack)
    }

    async fn start_unset(
        pg: Postgres,
        dir: TempDir,
        zones: &[(&str, Primary)],
        dbname: &str,
    ) -> Result<Stack> {
        let mut servers = Vec::new();
        for primary in [Primary::Bind, Primary::Knot, Primary::PowerDns] {
            let on: Vec<&str> = zones
                .iter()
                .filter(|(_, p)| *p == primary)
                .map(|(z, _)| *z)
                .collect();
            if !on.is_empty() {
                servers.push((primary, Server::start(primary, dir.path(), &on).await?));
            }
        }
        let db = pg.connect_to(dbname).await?;
        let database_url = Mutex::new(match pg.ca() {
            Some(ca) => pg.tls_url("localhost", TLS_PASSWORD, "verify-full", &ca.ca_cert),
            None => pg.url_for(dbname),
        });
        let stack = Stack {
            db,
            pg,
            servers,
            zones: zones.iter().map(|(z, p)| (canonical_name(z), *p)).collect(),
            config: dir.path().join("pg2dns.toml"),
            database_url,
            runs: Runs::new(dir.path()),
            dir,
        };
        stack.write_config(&[])?;
        Ok(stack)
    }

    /// The stack's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The zones, canonical, in the order given at the start.
    pub fn zones(&self) -> Vec<String> {
        self.zones.iter().map(|(z, _)| z.clone()).collect()
    }

    /// The server of `primary`.
    pub fn server(&self, primary: Primary) -> Result<&Server> {
        self.servers
            .iter()
            .find(|(p, _)| *p == primary)
            .map(|(_, server)| server)
            .with_context(|| format!("this stack runs no {primary:?} server"))
    }

    /// The server of `primary`, to stop and start it again.
    pub fn server_mut(&mut self, primary: Primary) -> Result<&mut Server> {
        self.servers
            .iter_mut()
            .find(|(p, _)| *p == primary)
            .map(|(_, server)| server)
            .with_context(|| format!("this stack runs no {primary:?} server"))
    }

    /// The server of the zone `name` is in.
    fn server_for(&self, name: &str) -> Result<&Server> {
        let zones = self.zones();
        let zone = zone_of(&canonical_name(name), &zones)
            .with_context(|| format!("{name} is in none of the stack's zones"))?;
        let primary = self
            .zones
            .iter()
            .find(|(z, _)| z == zone)
            .map(|(_, p)| *p)
            .with_context(|| format!("{zone} has no primary"))?;
        self.server(primary)
    }

    /// (Re)writes the config; `key_files` replaces the TSIG key file of the
    /// named zones (every other zone uses the key its primary trusts).
    pub fn write_config(&self, key_files: &[(&str, &Path)]) -> Result<()> {
        let mut text = format!(
            "# written by the pg2dns integration tests\n\
             version = 1\n\n\
             [database]\n\
             url = \"{}\"\n\
             slot = \"{SLOT}\"\n\
             publication = \"{SLOT}\"\n",
            self.database_url.lock().unwrap()
        );
        for (zone, primary) in &self.zones {
            let server = self.server(*primary)?;
            let key = key_files
                .iter()
                .find(|(z, _)| canonical_name(z) == *zone)
                .map_or(server.key_file(), |(_, path)| *path);
            write!(
                text,
                "\n[[zone]]\nname = \"{zone}\"\nprimary = \"{}\"\ntsig_key_file = \"{}\"\n",
                server.addr(),
                key.display()
            )?;
        }
        std::fs::write(&self.config, text).context("writing the pg2dns config")
    }

    /// Sets `[database] url` and rewrites the config (other edits made
    /// with [`Stack::append_config`] or [`Stack::set_zone_option`] are lost).
    pub fn set_database_url(&self, url: &str) -> Result<()> {
        *self.database_url.lock().unwrap() = url.to_owned();
        self.write_config(&[])
    }

    /// Adds a `key = value` line to one zone's table of the pg2dns config.
    pub fn set_zone_option(&self, zone: &str, line: &str) -> Result<()> {
        let text = std::fs::read_to_string(&self.config).context("reading the pg2dns config")?;
        let anchor = format!("name = \"{zone}\"\n");
        anyhow::ensure!(text.contains(&anchor), "the config has no zone {zone}");
        let text = text.replacen(&anchor, &format!("{anchor}{line}\n"), 1);
        std::fs::write(&self.config, text).context("writing the pg2dns config")
    }

    /// Appends TOML to the pg2dns config.
    pub fn append_config(&self, toml: &str) -> Result<()> {
        let mut text =
            std::fs::read_to_string(&self.config).context("reading the pg2dns config")?;
        text.push('\n');
        text.push_str(toml);
        std::fs::write(&self.config, text).context("writing the pg2dns config")
    }

    /// Writes a key file with the trusted key's name but another secret.
    pub async fn write_wrong_key_file(&self) -> Result<PathBuf> {
        let path = self.dir().join("wrong-secret.key");
        write_key_file(&path, KEY_NAME).await?;
        Ok(path)
    }

    /// `pg2dns setup`; fails with pg2dns's output if it exits non-zero.
    pub async fn setup(&self) -> Result<()> {
        let output = pg2dns::command("setup", &self.config).await?;
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

    /// Starts `pg2dns run` with the stack's config.
    pub fn run(&self) -> Result<Pg2dns> {
        self.run_with(&[])
    }

    /// Starts `pg2dns run` with extra environment variables, e.g.
    /// `[("PG2DNS_FAILPOINT", "after-dns-ack")]`.
    pub fn run_with(&self, env: &[(&str, &str)]) -> Result<Pg2dns> {
        self.runs.spawn(&self.config, env)
    }

    /// Starts `pg2dns run` as a service runs it: a halt leaves it up,
    /// halted, until `pg2dns resume`.
    pub fn run_as_service(&self) -> Result<Pg2dns> {
        self.runs.spawn_args(&self.config, &[], &[])
    }

    /// Runs `pg2dns ARGS… -c CONFIG` to completion and returns its output.
    pub async fn admin(&self, args: &[&str]) -> Result<std::process::Output> {
        let mut command = tokio::process::Command::new(super::pg2dns::binary());
        command.args(args).arg("-c").arg(&self.config);
        super::run(&mut command, std::time::Duration::from_secs(60)).await
    }

    /// Runs `pg2dns reconcile ARGS…` with the stack's config and extra
    /// environment variables, to completion.
    pub async fn reconcile(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<std::process::Output> {
        let mut all = vec!["reconcile"];
        all.extend_from_slice(args);
        pg2dns::command_with(&all, &self.config, env).await
    }

    /// The path of the pg2dns config.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Runs SQL statements (one implicit transaction per statement unless
    /// the text says BEGIN … COMMIT).
    pub async fn exec(&self, sql: &str) -> Result<()> {
        self.db
            .batch_execute(sql)
            .await
            .with_context(|| format!("executing {sql}"))
    }

    /// Every row of `pg2dns.rr`, by id.
    pub async fn table(&self) -> Result<Vec<Row>> {
        let rows = self
            .db
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

    /// What DNS should hold in every zone for these rows.
    pub fn expected(&self, rows: &[Row]) -> ZoneRecords {
        self.expected_in(rows, &self.zones())
    }

    /// What DNS should hold in `wanted` for these rows: each record in the
    /// zone (of all the stack's zones) with the longest matching suffix;
    /// rows in no zone, or in a zone not wanted, are left out.
    pub fn expected_in(&self, rows: &[Row], wanted: &[String]) -> ZoneRecords {
        let all = self.zones();
        let mut expected: ZoneRecords = wanted.iter().map(|z| (z.clone(), Vec::new())).collect();
        for row in rows {
            if let Some(records) =
                zone_of(&row.record.owner, &all).and_then(|z| expected.get_mut(z))
            {
                records.push(row.record.clone());
            }
        }
        for records in expected.values_mut() {
            records.sort();
            records.dedup();
        }
        expected
    }

    /// An AXFR of `zone` from its primary, apex SOA/NS left out.
    pub async fn axfr(&self, zone: &str) -> Result<Vec<Record>> {
        self.server_for(zone)?.axfr(zone).await
    }

    /// The answer of the primary of `name`'s zone to `dig NAME TYPE`.
    pub async fn query(&self, name: &str, rtype: &str) -> Result<Vec<Record>> {
        self.server_for(name)?.query(name, rtype).await
    }

    /// What the primaries hold now: an AXFR of every zone.
    pub async fn dns(&self) -> Result<ZoneRecords> {
        self.dns_in(&self.zones()).await
    }

    /// An AXFR of each of `zones`.
    pub async fn dns_in(&self, zones: &[String]) -> Result<ZoneRecords> {
        let mut dns = ZoneRecords::new();
        for zone in zones {
            dns.insert(zone.clone(), self.axfr(zone).await?);
        }
        Ok(dns)
    }

    /// Waits until every zone's AXFR equals what `pg2dns.rr` says.
    pub async fn wait_until_dns_matches_table(&self, timeout: Duration) -> Result<ZoneRecords> {
        self.wait_until_zones_match_table(&self.zones(), timeout)
            .await
    }

    /// Waits until the AXFR of each of `zones` equals what `pg2dns.rr` says
    /// (read again on every attempt), at most `timeout`; on timeout the
    /// error shows the difference. Other zones are not asked, so their
    /// server may be down.
    pub async fn wait_until_zones_match_table(
        &self,
        zones: &[String],
        timeout: Duration,
    ) -> Result<ZoneRecords> {
        self.wait_for_dns(zones, None, "DNS holds what pg2dns.rr says", timeout)
            .await
    }

    /// Waits until every zone's AXFR equals `expected`, at most `timeout`.
    pub async fn wait_until_dns_equals(
        &self,
        expected: &ZoneRecords,
        timeout: Duration,
    ) -> Result<ZoneRecords> {
        let zones: Vec<String> = expected.keys().cloned().collect();
        self.wait_for_dns(
            &zones,
            Some(expected),
            "DNS holds what the test expects",
            timeout,
        )
        .await
    }

    async fn wait_for_dns(
        &self,
        zones: &[String],
        fixed: Option<&ZoneRecords>,
        what: &str,
        timeout: Duration,
    ) -> Result<ZoneRecords> {
        wait_until(timeout, what, || async {
            let expected = match fixed {
                Some(expected) => expected.clone(),
                None => self.expected_in(&self.table().await?, zones),
            };
            Ok(match self.dns_in(zones).await {
                Ok(dns) if dns == expected => Check::Done(dns),
                Ok(dns) => Check::NotYet(format!("\n{}", difference(&expected, &dns))),
                Err(e) => Check::NotYet(format!("the last AXFR failed: {e:#}")),
            })
        })
        .await
    }

    /// Waits until the primary answers `name` `rtype` with at least one
    /// record.
    pub async fn wait_until_answers(
        &self,
        name: &str,
        rtype: &str,
        timeout: Duration,
    ) -> Result<Vec<Record>> {
        let what = format!("the primary answers {name} {rtype}");
        wait_until(timeout, &what, || async {
            let answer = self.query(name, rtype).await?;
            Ok(if answer.is_empty() {
                Check::NotYet("an empty answer".to_string())
            } else {
                Check::Done(answer)
            })
        })
        .await
    }

    /// The SOA serial the primary serves for `zone`: BIND bumps it once per
    /// applied UPDATE.
    pub async fn serial(&self, zone: &str) -> Result<u64> {
        let soa = self.query(zone, "SOA").await?;
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

    /// Restarts PostgreSQL (`pg_ctl restart -m fast`, cutting every
    /// connection, pg2dns's included) and reconnects [`Stack::db`].
    pub async fn restart_postgres(&mut self) -> Result<()> {
        self.pg.restart().await?;
        self.db = self.pg.connect().await?;
        Ok(())
    }

    /// Crashes PostgreSQL ([`Postgres::crash_restart`]) and reconnects
    /// [`Stack::db`].
    pub async fn crash_postgres(&mut self) -> Result<()> {
        self.pg.crash_restart().await?;
        self.db = self.pg.connect().await?;
        Ok(())
    }

    /// The transactions the slot would deliver next (read without consuming
    /// them, with `pg_logical_slot_peek_binary_changes`). The slot must be
    /// idle: pg2dns not running (the walsender may hold it a moment after
    /// pg2dns died, so "is active" is waited out).
    pub async fn pending_transactions(&self) -> Result<Vec<PendingTransaction>> {
        let rows = wait_until(
            Duration::from_secs(10),
            "the slot is free to peek at",
            || async {
                let result = self
                .db
                .query(
                    "SELECT lsn::text, xid::text, data FROM pg_logical_slot_peek_binary_changes(
                         $1, NULL, NULL, 'proto_version', '1', 'publication_names', $2)",
                    &[&SLOT, &SLOT],
                )
                .await;
                match result {
                    Ok(rows) => Ok(Check::Done(rows)),
                    Err(e) if format!("{e:?}").contains("is active") => {
                        Ok(Check::NotYet(e.to_string()))
                    }
                    Err(e) => Err(e).context("peeking at the slot"),
                }
            },
        )
        .await?;
        let mut pending: Vec<PendingTransaction> = Vec::new();
        for row in &rows {
            let lsn: Lsn = row.get::<_, &str>(0).parse()?;
            let xid: String = row.get(1);
            let message = pgoutput::parse(row.get::<_, &[u8]>(2))?;
            match message {
                pgoutput::Message::Begin(begin) => pending.push(PendingTransaction {
                    xid,
                    final_lsn: begin.final_lsn,
                    first_change: Lsn::ZERO,
                }),
                pgoutput::Message::Insert(_)
                | pgoutput::Message::Update(_)
                | pgoutput::Message::Delete(_)
                | pgoutput::Message::Truncate(_) => {
                    if let Some(txn) = pending.last_mut().filter(|t| t.first_change == Lsn::ZERO) {
                        txn.first_change = lsn;
                    }
                }
                _ => {}
            }
        }
        Ok(pending)
    }

    /// The replication slot's `confirmed_flush_lsn`.
    pub async fn confirmed_flush_lsn(&self) -> Result<Lsn> {
        let row = self
            .db
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&SLOT],
            )
            .await
            .context("reading the slot's confirmed_flush_lsn")?;
        let lsn = row
            .get::<_, Option<String>>(0)
            .context("the slot has no confirmed_flush_lsn")?;
        Ok(lsn.parse()?)
    }

    /// `pg_current_wal_lsn()`: where PostgreSQL writes WAL now.
    pub async fn current_wal_lsn(&self) -> Result<Lsn> {
        let row = self
            .db
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .context("reading pg_current_wal_lsn()")?;
        Ok(row.get::<_, &str>(0).parse()?)
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
        rows.iter()
            .map(|row| {
                Ok(Rejected {
                    row_key: row.get(0),
                    lsn: row.get::<_, &str>(1).parse()?,
                    zone: row.get(2),
                    owner: row.get(3),
                    reason: row.get(4),
                })
            })
            .collect()
    }

    /// `pg2dns.rejected` once it holds at least `n` rows (waiting up to
    /// `deadline`): rejections are recorded with pg2dns's checkpoint, which
    /// may come a moment after the DNS answers. An error on timeout.
    pub async fn rejected_at_least(&self, n: usize, deadline: Duration) -> Result<Vec<Rejected>> {
        let what = format!("pg2dns.rejected holds {n} rows");
        wait_until(deadline, &what, || async {
            let rejected = self.rejected().await?;
            Ok(if rejected.len() >= n {
                Check::Done(rejected)
            } else {
                Check::NotYet(format!("{rejected:?}"))
            })
        })
        .await
    }

    /// pg2dns's row state: the records it holds as sent for each row key of
    /// `pg2dns.rr`, canonical and sorted.
    ///
    /// The only place the tests read pg2dns's internal tables (their shape
    /// belongs to the service and changes with it); everything else is
    /// asserted on what the DNS servers serve and on `pg2dns.rejected`.
    pub async fn row_state(&self) -> Result<BTreeMap<String, Vec<Record>>> {
        self.read_row_state().await
    }

    /// [`Stack::row_state`] once `settled` holds of it, waiting up to
    /// `deadline`: pg2dns commits its row state with the checkpoint, up to
    /// about 100 ms after the DNS answered. An error on timeout.
    pub async fn row_state_when(
        &self,
        settled: impl Fn(&BTreeMap<String, Vec<Record>>) -> bool,
        deadline: Duration,
    ) -> Result<BTreeMap<String, Vec<Record>>> {
        wait_until(deadline, "the row state to settle", || async {
            let state = self.read_row_state().await?;
            Ok(if settled(&state) {
                Check::Done(state)
            } else {
                Check::NotYet(format!("{state:?}"))
            })
        })
        .await
    }

    async fn read_row_state(&self) -> Result<BTreeMap<String, Vec<Record>>> {
        let rows = self
            .db
            .query(
                "SELECT row_key, owner, ttl, rtype, rdata FROM pg2dns.row_state",
                &[],
            )
            .await
            .context("reading pg2dns.row_state")?;
        let mut state: BTreeMap<String, Vec<Record>> = BTreeMap::new();
        for row in &rows {
            // The state holds names and data in wire form: print them with
            // pg2dns's own formatter (checked against dnspython).
            let owner_wire: Vec<u8> = row.get(1);
            let (owner, _) = pg2dns_decoder::Name::from_wire(&owner_wire)?;
            let ttl: i32 = row.get(2);
            let rtype = pg2dns_decoder::RType(u16::try_from(row.get::<_, i32>(3))?);
            let rdata = pg2dns_decoder::rdata::format(rtype, &row.get::<_, Vec<u8>>(4))?;
            state.entry(row.get(0)).or_default().push(Record::new(
                &owner.to_string(),
                u32::try_from(ttl)?,
                &rtype.to_string(),
                &rdata,
            ));
        }
        for records in state.values_mut() {
            records.sort();
        }
        Ok(state)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Captured by the test harness: visible only when the test fails.
        let mut report = self.runs.report();
        for (_, server) in &self.servers {
            report.push_str(&server.report());
        }
        let _ = write!(report, "\n===== postgres =====\n{}", self.pg.log_tail(60));
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
        self.spawn_args(config, env, &["--exit-on-halt"])
    }

    /// Starts `pg2dns run` with these arguments after `-c CONFIG`.
    pub fn spawn_args(&self, config: &Path, env: &[(&str, &str)], args: &[&str]) -> Result<Pg2dns> {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let log = self.dir.join(format!("pg2dns-run-{}.log", logs.len() + 1));
        logs.push(log.clone());
        Pg2dns::spawn_run(config, &log, env, args)
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
