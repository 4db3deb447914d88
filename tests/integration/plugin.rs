//! The `pg2dns_plugin` PostgreSQL extension (`pg_plugin/`, docs/plugin.md):
//! the stream's record checks in the writer's transaction.
//!
//! The extension must be installed into the PostgreSQL the harness runs
//! (`scripts/test` builds and installs it with cargo-pgrx; see
//! `pg2dns_install_plugin` in `scripts/lib/install.sh`). A missing extension
//! is a failure that says how to install it, never a skip.

use anyhow::{ensure, Context, Result};
use pg2dns_decoder::mapping::row_check::{rr_row, RrColumns};

use crate::harness::stack::{FORWARD, REVERSE};
use crate::harness::wait::{wait_until, Check};
use crate::harness::{Postgres, Primary, Stack, DNS_DEADLINE};

include!("../../decoder/tests/cases/record_cases.rs");

/// The opt-in script that puts the check on `pg2dns.rr`.
const CHECK_RR_SQL: &str = include_str!("../../pg_plugin/sql/check_rr.sql");

/// `CREATE EXTENSION pg2dns_plugin`, failing with how to install it.
async fn create_extension(db: &tokio_postgres::Client) -> Result<()> {
    db.batch_execute("CREATE EXTENSION pg2dns_plugin")
        .await
        .context(
            "CREATE EXTENSION pg2dns_plugin failed: build and install the extension into this \
             PostgreSQL first (scripts/test does; by hand: `source scripts/lib/install.sh && \
             pg2dns_install_plugin`)",
        )
}

/// The core's verdict on a case: the record as published or the reason
/// pg2dns.rejected would hold.
fn core_verdict(case: &RecordCase) -> Result<String, String> {
    let ttl = case.ttl.to_string();
    rr_row(RrColumns {
        owner: case.owner.as_deref(),
        ttl: Some(&ttl),
        class: Some("IN"),
        rtype: Some(case.rtype),
        rdata: case.rdata.as_deref(),
    })
    .map(|record| record.to_string())
    .map_err(|refusal| pg2dns_decoder::error_chain(&refusal))
}

/// A database error's SQLSTATE and message, or the error itself when it is
/// not one.
fn db_error(e: &tokio_postgres::Error) -> Result<(String, String)> {
    let db = e
        .as_db_error()
        .with_context(|| format!("not an error from the server: {e:?}"))?;
    Ok((db.code().code().to_owned(), db.message().to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extension_gives_every_case_of_the_shared_table_the_cores_verdict_and_reason(
) -> Result<()> {
    let dir = crate::harness::TempDir::new("plugin-cases")?;
    let pg = Postgres::start(dir.path()).await?;
    let db = pg.connect().await?;
    create_extension(&db).await?;
    let check = db
        .prepare("SELECT pg2dns_plugin.check_record($1, $2, $3, $4)")
        .await?;
    let valid = db
        .prepare("SELECT pg2dns_plugin.record_is_valid($1, $2, $3, $4)")
        .await?;
    let cases = record_cases();
    let mut wrong = Vec::new();
    for case in &cases {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&case.owner, &case.rtype, &case.ttl, &case.rdata];
        let in_database = match db.query_one(&check, &params).await {
            Ok(row) => Ok(row.get::<_, String>(0)),
            Err(e) => {
                let (code, message) = db_error(&e)?;
                if !code.starts_with("22") {
                    wrong.push(format!("{case:?}\n    SQLSTATE {code} is not of class 22"));
                }
                Err(message)
            }
        };
        let is_valid: bool = db.query_one(&valid, &params).await?.get(0);
        let core = core_verdict(case);
        if in_database != case.verdict || core != case.verdict || is_valid != case.verdict.is_ok() {
            wrong.push(format!(
                "{case:?}\n    check_record: {in_database:?}\n    record_is_valid: {is_valid}\n    core: {core:?}"
            ));
        }
    }
    ensure!(
        wrong.is_empty(),
        "{} of {} cases differ:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    // NULL and the class are the stream's verdicts too.
    let null = db
        .query_one(
            "SELECT pg2dns_plugin.check_record('h.example.test.', 'A', 300, NULL)",
            &[],
        )
        .await
        .expect_err("a NULL rdata is refused");
    ensure!(
        db_error(&null)? == ("22004".into(), "column \"rdata\" is NULL".into()),
        "{null:?}"
    );
    let chaos = db
        .query_one(
            "SELECT pg2dns_plugin.check_record('h.example.test.', 'A', 300, '192.0.2.1', 'CH')",
            &[],
        )
        .await
        .expect_err("class CH is refused");
    ensure!(
        db_error(&chaos)?.1 == "unsupported record class \"CH\" (only IN is published)",
        "{chaos:?}"
    );
    Ok(())
}

/// Inserts each of [`bad_rows`] into `pg2dns.rr` and checks the check
/// refuses it with SQLSTATE 22023 and the stream's reason.
async fn every_bad_row_is_refused_with_the_streams_reason(
    db: &tokio_postgres::Client,
) -> Result<()> {
    let insert = "INSERT INTO pg2dns.rr (owner, type, ttl, rdata) VALUES ($1, $2, $3, $4)";
    for (owner, rtype, ttl, rdata, reason) in bad_rows() {
        let e = db
            .execute(insert, &[&owner, &rtype, &ttl, &rdata])
            .await
            .expect_err("the trigger refuses the row");
        let (code, message) = db_error(&e)?;
        ensure!(
            message == reason && code == "22023",
            "INSERT of {owner} {rtype} {rdata}: want 22023 {reason:?}, got {code} {message:?}"
        );
    }
    Ok(())
}

/// The rows a test inserts: a valid one and bad ones, with the reason the
/// stream gives each bad one.
fn bad_rows() -> Vec<(&'static str, &'static str, i32, &'static str, String)> {
    [
        ("bad.example.test.", "A", 300, "not-an-ip"),
        ("spf.example.test.", "TXT", 300, "v=spf1 -all"),
        ("alias.example.test.", "CNAME", 300, "target"),
        ("neg.example.test.", "A", -1, "192.0.2.9"),
    ]
    .into_iter()
    .map(|(owner, rtype, ttl, rdata)| {
        let ttl_text = ttl.to_string();
        let reason = rr_row(RrColumns {
            owner: Some(owner),
            ttl: Some(&ttl_text),
            class: Some("IN"),
            rtype: Some(rtype),
            rdata: Some(rdata),
        })
        .map(|r| r.to_string())
        .expect_err("a bad row");
        (
            owner,
            rtype,
            ttl,
            rdata,
            pg2dns_decoder::error_chain(&reason),
        )
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_check_installed_a_writers_bad_row_fails_with_the_streams_reason_and_good_rows_are_published(
) -> Result<()> {
    let stack = Stack::start("plugin-check-rr", Primary::Bind).await?;
    create_extension(&stack.db).await?;
    stack.exec(CHECK_RR_SQL).await?;
    // Twice: the script is idempotent.
    stack.exec(CHECK_RR_SQL).await?;
    // A writer that is not a superuser: the trigger runs with its rights.
    stack
        .exec(
            "CREATE ROLE app;
             GRANT USAGE ON SCHEMA pg2dns TO app;
             GRANT SELECT, INSERT, UPDATE ON pg2dns.rr TO app;
             GRANT USAGE ON SEQUENCE pg2dns.rr_id_seq TO app;
             SET ROLE app;",
        )
        .await?;
    let mut pg2dns = stack.run()?;
    every_bad_row_is_refused_with_the_streams_reason(&stack.db).await?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, type, ttl, rdata) VALUES
                 ('www.example.test.', 'A', 300, '192.0.2.10'),
                 ('txt.example.test.', 'TXT', 300, '\"v=spf1 -all\"')",
        )
        .await?;
    // An UPDATE to a bad value is refused as well, and the row keeps its value.
    let e = stack
        .db
        .execute(
            "UPDATE pg2dns.rr SET rdata = '192.0.2' WHERE owner = 'www.example.test.'",
            &[],
        )
        .await
        .expect_err("the trigger refuses the update");
    ensure!(
        db_error(&e)?.1
            == "record data \"192.0.2\" is not valid A: invalid address \"192.0.2\" in A record data: not a dotted-quad IPv4 address",
        "{e:?}"
    );
    // The wrappers in schema pg2dns, as an application calls them.
    let row = stack
        .db
        .query_one(
            "SELECT pg2dns.check_record('WWW.Example.Test', 'a', 300, '192.0.2.1'),
                    pg2dns.record_is_valid('h.example.test.', 'MX', 300, '10 mail'),
                    pg2dns.record_is_valid(owner => 'h.example.test.', type => 'MX', ttl => 300, rdata => '10 mail.example.test.')",
            &[],
        )
        .await?;
    let (text, bad, good): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
    ensure!(
        text == "www.example.test. 300 IN A 192.0.2.1" && !bad && good,
        "pg2dns.check_record and pg2dns.record_is_valid: {text:?} {bad} {good}"
    );
    stack.exec("RESET ROLE").await?;
    let rows = stack.table().await?;
    ensure!(rows.len() == 2, "only the good rows are stored: {rows:?}");
    let expected = stack.expected(&rows);
    stack.wait_until_dns_equals(&expected, DNS_DEADLINE).await?;
    ensure!(
        expected[FORWARD].len() == 2,
        "both good rows are in {FORWARD}: {expected:?}"
    );
    ensure!(
        stack.rejected().await?.is_empty(),
        "nothing reaches pg2dns.rejected"
    );
    pg2dns.assert_running()?;
    // docs/plugin.md's removal leaves pg2dns.rr as it was before.
    stack
        .exec(
            "DROP TRIGGER rr_check ON pg2dns.rr;
             DROP FUNCTION pg2dns.rr_check();
             DROP EXTENSION pg2dns_plugin CASCADE;",
        )
        .await?;
    let left: i64 = stack
        .db
        .query_one(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname IN ('pg2dns', 'pg2dns_plugin')
                AND p.proname IN ('check_record', 'record_is_valid', 'rr_check')",
            &[],
        )
        .await?
        .get(0);
    ensure!(
        left == 0,
        "{left} functions of the check are left after removal"
    );
    stack
        .exec("INSERT INTO pg2dns.rr (owner, type, ttl, rdata) VALUES ('bad.example.test.', 'A', 300, 'not-an-ip')")
        .await
        .context("after removal a bad row is stored again, for the stream to reject")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_extension_the_stream_rejects_the_same_rows_with_the_same_reasons() -> Result<()>
{
    let stack = Stack::start("plugin-absent", Primary::Bind).await?;
    let mut pg2dns = stack.run()?;
    // pg2dns.rr's own CHECK (ttl >= 0) refuses a negative TTL before the
    // stream sees it: the other bad rows are stored and reach the stream.
    let bad: Vec<_> = bad_rows().into_iter().filter(|row| row.2 >= 0).collect();
    for (owner, rtype, ttl, rdata, _) in &bad {
        stack
            .db
            .execute(
                "INSERT INTO pg2dns.rr (owner, type, ttl, rdata) VALUES ($1, $2, $3, $4)",
                &[owner, rtype, ttl, rdata],
            )
            .await
            .with_context(|| format!("without the check, {owner} {rtype} is stored"))?;
    }
    let rejected = stack.rejected_at_least(bad.len(), DNS_DEADLINE).await?;
    let mut got: Vec<&str> = rejected.iter().map(|r| r.reason.as_str()).collect();
    got.sort_unstable();
    let mut want: Vec<&str> = bad.iter().map(|row| row.4.as_str()).collect();
    want.sort_unstable();
    ensure!(
        got == want,
        "pg2dns.rejected holds the reasons the extension gives: want {want:?}, got {got:?}"
    );
    pg2dns.assert_running()?;
    Ok(())
}

/// The decoding plugin's library, as `output_plugin_libraries` and
/// `pg_recvlogical -P` name it.
const PLUGIN: &str = "pg2dns_plugin";

/// Lets every role use the plugin (PostgreSQL 15.20+ from Debian: "only
/// let roles use output plugins listed in output_plugin_libraries",
/// superusers too) the way docs/plugin.md says: the list form of ALTER
/// SYSTEM, a reload, and a wait until the server has read it.
async fn allow_plugin(db: &tokio_postgres::Client) -> Result<()> {
    // Two statements: ALTER SYSTEM cannot run in a transaction block.
    db.batch_execute(&format!(
        "ALTER SYSTEM SET output_plugin_libraries = pgoutput, test_decoding, {PLUGIN}"
    ))
    .await
    .context("allowing the plugin in output_plugin_libraries")?;
    db.batch_execute("SELECT pg_reload_conf()").await?;
    wait_until(DNS_DEADLINE, "the server allows the plugin", || async {
        let row = db.query_one("SHOW output_plugin_libraries", &[]).await?;
        let value: String = row.get(0);
        Ok(if value.split(',').any(|l| l.trim() == PLUGIN) {
            Check::Done(())
        } else {
            Check::NotYet(value)
        })
    })
    .await
}

/// `pg_recvlogical … -P pg2dns_plugin -o format=nsupdate … | nsupdate -v
/// -k key`, as docs/plugin.md's recipe writes it; everything pg_recvlogical
/// prints is also kept in a file, to check what the plugin wrote.
struct NsupdatePipe {
    recv: std::process::Child,
    nsupdate: std::process::Child,
    copier: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    output: std::path::PathBuf,
    nsupdate_log: std::path::PathBuf,
    recv_log: std::path::PathBuf,
}

impl NsupdatePipe {
    fn start(stack: &Stack, slot: &str, extra: &[&str]) -> Result<NsupdatePipe> {
        use std::process::{Command, Stdio};
        let tools = crate::harness::tools()?;
        let server = stack.server(Primary::Bind)?;
        let (host, port) = server
            .addr()
            .rsplit_once(':')
            .map(|(h, p)| (h.to_owned(), p.to_owned()))
            .context("server address")?;
        let dir = stack.dir();
        let output = dir.join("nsupdate-input.txt");
        let nsupdate_log = dir.join("nsupdate.log");
        let recv_log = dir.join("pg_recvlogical.log");
        let zones = format!("zones={FORWARD},{REVERSE}");
        let server_option = format!("server={host} {port}");
        let mut recv = Command::new(tools.pg_bin.join("pg_recvlogical"))
            .args(["-d", &stack.pg.url(), "--slot", slot, "--start", "-f", "-"])
            .args(["-P", PLUGIN, "-o", "format=nsupdate", "-o", &zones])
            .args(["-o", &server_option])
            .args(extra.iter().flat_map(|o| ["-o", o]))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&recv_log)?)
            .spawn()
            .context("starting pg_recvlogical")?;
        // -v: TCP for every message, as docs/plugin.md's recipe says (over
        // UDP nsupdate gives up on an update after a few short retries).
        let mut nsupdate = Command::new(&tools.nsupdate)
            .arg("-v")
            .arg("-k")
            .arg(server.key_file())
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&nsupdate_log)?)
            .stderr(std::fs::File::options().append(true).open(&nsupdate_log)?)
            .spawn()
            .context("starting nsupdate")?;
        let mut from = recv.stdout.take().context("pg_recvlogical's stdout")?;
        let mut to = nsupdate.stdin.take().context("nsupdate's stdin")?;
        let mut copy = std::fs::File::create(&output)?;
        let copier = std::thread::spawn(move || -> std::io::Result<()> {
            use std::io::{Read, Write};
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = from.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                copy.write_all(&buf[..n])?;
                to.write_all(&buf[..n])?;
                to.flush()?;
            }
        });
        Ok(NsupdatePipe {
            recv,
            nsupdate,
            copier: Some(copier),
            output,
            nsupdate_log,
            recv_log,
        })
    }

    /// What pg_recvlogical printed so far.
    fn output(&self) -> Result<String> {
        std::fs::read_to_string(&self.output).context("reading the plugin's output")
    }

    /// Both programs' messages, for a failure report.
    fn logs(&self) -> String {
        format!(
            "pg_recvlogical: {}\nnsupdate: {}",
            std::fs::read_to_string(&self.recv_log).unwrap_or_default(),
            std::fs::read_to_string(&self.nsupdate_log).unwrap_or_default()
        )
    }

    /// Fails if either program has exited.
    fn assert_running(&mut self) -> Result<()> {
        let recv = self.recv.try_wait()?;
        let nsupdate = self.nsupdate.try_wait()?;
        ensure!(
            recv.is_none() && nsupdate.is_none(),
            "the pipe stopped (pg_recvlogical {recv:?}, nsupdate {nsupdate:?}):\n{}",
            self.logs()
        );
        Ok(())
    }
}

impl Drop for NsupdatePipe {
    fn drop(&mut self) {
        let _ = self.recv.kill();
        let _ = self.recv.wait();
        if let Some(copier) = self.copier.take() {
            let _ = copier.join();
        }
        let _ = self.nsupdate.kill();
        let _ = self.nsupdate.wait();
    }
}

/// A stack whose `pg2dns.rr` has REPLICA IDENTITY FULL (what format
/// nsupdate needs), the plugin allowed, and a slot `slot` of the plugin.
async fn plugin_stack(label: &str, slot: &str) -> Result<Stack> {
    let stack = Stack::start(label, Primary::Bind).await?;
    allow_plugin(&stack.db).await?;
    // Separate statements: a slot cannot be created in a transaction
    // that has written.
    stack
        .exec("ALTER TABLE pg2dns.rr REPLICA IDENTITY FULL")
        .await?;
    stack
        .exec(&format!(
            "SELECT pg_create_logical_replication_slot('{slot}', '{PLUGIN}')"
        ))
        .await
        .context("creating the plugin's slot")?;
    Ok(stack)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_recvlogical_with_format_nsupdate_piped_into_nsupdate_makes_bind_hold_the_table_after_a_random_workload_with_5000_row_transactions(
) -> Result<()> {
    use crate::faults::workload::{seed, Mix, Workload, BULK_ROWS};
    let stack = plugin_stack("plugin-nsupdate", "nsupdate").await?;
    let mut pipe = NsupdatePipe::start(&stack, "nsupdate", &[])?;
    // What users write: mixed case, no final dot, escapes, UTF-8 text, a
    // TXT too large and too random for PostgreSQL to keep it inline (its
    // TTL change leaves the value an unchanged TOAST pointer in the WAL),
    // a CNAME replacing an A, and a bad row the stream would refuse until
    // it is fixed.
    stack
        .exec(
            r#"INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
                 ('Mixed.Case.Example.Test', 300, 'a', '192.0.2.77'),
                 ('M\195\188nchen\032Platz.example.test.', 300, 'TXT', '"caf\195\169 ☕ \"quoted\""'),
                 ('mail.example.test.', 300, 'MX', '10 Mixed.Case.Example.Test.'),
                 ('alias.example.test.', 300, 'A', '192.0.2.78'),
                 ('77.2.0.192.in-addr.arpa.', 300, 'PTR', 'Mixed.Case.example.test.'),
                 ('broken.example.test.', 300, 'A', 'not-an-ip');
               INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
               SELECT 'toast.example.test.', 300, 'TXT',
                      string_agg('"' || md5(g::text) || md5((g * 7)::text) || '"', ' ')
               FROM generate_series(1, 120) g;"#,
        )
        .await?;
    stack
        .exec(
            "BEGIN;
             DELETE FROM pg2dns.rr WHERE owner = 'alias.example.test.';
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('alias.example.test.', 300, 'CNAME', 'mail.example.test.');
             COMMIT;
             UPDATE pg2dns.rr SET ttl = 900 WHERE owner = 'toast.example.test.';
             UPDATE pg2dns.rr SET rdata = '192.0.2.79' WHERE owner = 'broken.example.test.';",
        )
        .await?;
    // The fault suite's seeded mix: inserts, updates, deletes, both
    // zones, rolled-back transactions and savepoints, and 5,000-row
    // inserts, updates or deletes (the 50th transaction and at random).
    let seed = seed("plugin nsupdate")?;
    let mut workload = Workload::new(seed, Mix { bulk: true });
    for _ in 0..120 {
        let sql = workload.transaction();
        stack
            .exec(&sql)
            .await
            .with_context(|| format!("seed {seed}: {sql}"))?;
    }
    // Whatever the seed's random bulk transactions did: a 5,000-row
    // INSERT and a 5,000-row UPDATE of the same rows, each larger than one
    // message (a DELETE of them follows below).
    stack
        .exec(&format!(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             SELECT 'p' || g || '.{FORWARD}', 300, 'A', '10.251.' || (g / 256) || '.' || (g % 256)
             FROM generate_series(1, {BULK_ROWS}) g"
        ))
        .await?;
    stack
        .exec(
            "UPDATE pg2dns.rr SET rdata = '10.252.' || ((id / 256) % 256) || '.' || (id % 256)
              WHERE owner LIKE 'p%'",
        )
        .await?;
    let expected = stack.expected(&stack.table().await?);
    let waited = stack
        .wait_until_dns_equals(&expected, DNS_DEADLINE * 6)
        .await;
    if let Err(e) = waited {
        pipe.assert_running()?;
        return Err(e.context(format!("seed {seed}:\n{}", pipe.logs())));
    }
    ensure!(
        expected[FORWARD].len() > BULK_ROWS as usize,
        "the batch is in DNS"
    );
    stack
        .exec("DELETE FROM pg2dns.rr WHERE owner LIKE 'p%' OR owner LIKE 'b%-%'")
        .await?;
    let expected = stack.expected(&stack.table().await?);
    stack
        .wait_until_dns_equals(&expected, DNS_DEADLINE * 6)
        .await
        .with_context(|| format!("seed {seed}:\n{}", pipe.logs()))?;
    pipe.assert_running()?;
    // What the plugin wrote: the refused row as a comment with the
    // stream's reason, large transactions in several messages, owner
    // names never split between two.
    let output = pipe.output()?;
    let reason = rr_row(RrColumns {
        owner: Some("broken.example.test."),
        ttl: Some("300"),
        class: Some("IN"),
        rtype: Some("A"),
        rdata: Some("not-an-ip"),
    })
    .map(|r| r.to_string())
    .expect_err("a bad row");
    let reason = pg2dns_decoder::error_chain(&reason);
    ensure!(
        output
            .lines()
            .any(|l| l.starts_with(';') && l.contains(&reason)),
        "the refused row is a comment with the stream's reason {reason:?}"
    );
    let split: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("; pg2dns_plugin: transaction") && l.contains(" message 2 of "))
        .collect();
    ensure!(
        split.len() >= 3,
        "the 5,000-row insert, update and delete each take several messages: {split:?}"
    );
    let mut owners_seen: std::collections::HashMap<String, usize> = Default::default();
    for (block, text) in output.split("\nsend").enumerate() {
        let header = text
            .lines()
            .find(|l| l.contains("; pg2dns_plugin: transaction"));
        let Some(header) = header else { continue };
        let txn = header
            .split(" committed")
            .next()
            .unwrap_or_default()
            .to_owned();
        for owner in text
            .lines()
            .filter_map(|l| l.strip_prefix("update "))
            .filter_map(|l| l.split_whitespace().nth(1))
        {
            let at = owners_seen.entry(format!("{txn} {owner}")).or_insert(block);
            ensure!(
                *at == block,
                "{txn}: the changes of {owner} are split between two messages"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_nsupdate_refuses_a_delete_written_under_replica_identity_default_naming_the_fix(
) -> Result<()> {
    let stack = Stack::start("plugin-identity", Primary::Bind).await?;
    allow_plugin(&stack.db).await?;
    stack
        .exec(&format!(
            "SELECT pg_create_logical_replication_slot('nsupdate', '{PLUGIN}')"
        ))
        .await?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('h.example.test.', 300, 'A', '192.0.2.1');
             DELETE FROM pg2dns.rr WHERE owner = 'h.example.test.';",
        )
        .await?;
    let peek = format!(
        "SELECT data FROM pg_logical_slot_peek_changes('nsupdate', NULL, NULL,
             'format', 'nsupdate', 'zones', '{FORWARD},{REVERSE}')"
    );
    let e = stack
        .db
        .query(&peek, &[])
        .await
        .expect_err("a DELETE without the old row is refused");
    let db = e.as_db_error().context("an error from the server")?;
    ensure!(
        db.message()
            .contains("needs the old row of every UPDATE and DELETE of pg2dns.rr")
            && db.message().contains("REPLICA IDENTITY DEFAULT")
            && db
                .hint()
                .is_some_and(|h| h.contains("ALTER TABLE pg2dns.rr REPLICA IDENTITY FULL")),
        "{db:?}"
    );
    // Nothing was consumed: after the fix, a new slot decodes every change.
    stack
        .exec("ALTER TABLE pg2dns.rr REPLICA IDENTITY FULL")
        .await?;
    stack
        .exec(&format!(
            "SELECT pg_create_logical_replication_slot('nsupdate2', '{PLUGIN}')"
        ))
        .await?;
    // Two transactions (one simple query would be one transaction, whose
    // net effect is the delete alone).
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('h.example.test.', 300, 'A', '192.0.2.1')")
        .await?;
    stack
        .exec("DELETE FROM pg2dns.rr WHERE owner = 'h.example.test.'")
        .await?;
    let rows = stack
        .db
        .query(&peek.replace("'nsupdate', NULL", "'nsupdate2', NULL"), &[])
        .await?;
    let text: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let text = text.join("\n");
    ensure!(
        text.contains("update add h.example.test. 300 IN A 192.0.2.1")
            && text.contains("update delete h.example.test. IN A 192.0.2.1"),
        "{text}"
    );
    // A bad option is an error naming the options.
    let e = stack
        .db
        .query(
            "SELECT data FROM pg_logical_slot_peek_changes('nsupdate2', NULL, NULL, 'format', 'nsupdate', 'zone', 'example.test.')",
            &[],
        )
        .await
        .expect_err("a misspelt option is refused");
    ensure!(
        e.as_db_error()
            .is_some_and(|d| d.message().contains("unknown option \"zone\"")),
        "{e:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_says_how_to_allow_the_plugin_when_a_slot_of_it_exists_but_output_plugin_libraries_leaves_it_out(
) -> Result<()> {
    let stack = Stack::start("plugin-allowed", Primary::Bind).await?;
    let check = || async {
        let output = crate::harness::pg2dns::command("check-config", stack.config_path()).await?;
        anyhow::Ok((
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ))
    };
    // No slot of the plugin: nothing to say, whatever the setting.
    let (ok, text) = check().await?;
    ensure!(ok && !text.contains("output_plugin_libraries"), "{text}");
    allow_plugin(&stack.db).await?;
    stack
        .exec(&format!(
            "SELECT pg_create_logical_replication_slot('dns_feed', '{PLUGIN}')"
        ))
        .await?;
    let (ok, text) = check().await?;
    ensure!(ok, "allowed and in use is fine: {text}");
    // As after a minor upgrade that brought the setting: the slot exists,
    // the library is not listed.
    stack
        .exec("ALTER SYSTEM SET output_plugin_libraries = pgoutput, test_decoding")
        .await?;
    stack.exec("SELECT pg_reload_conf()").await?;
    wait_until(DNS_DEADLINE, "the server reloaded", || async {
        let value: String = stack
            .db
            .query_one("SHOW output_plugin_libraries", &[])
            .await?
            .get(0);
        Ok(if value.contains(PLUGIN) {
            Check::NotYet(value)
        } else {
            Check::Done(())
        })
    })
    .await?;
    let (ok, text) = check().await?;
    ensure!(
        !ok && text.contains(
            "problem: replication slot dns_feed decodes with pg2dns_plugin, but output_plugin_libraries (\"pgoutput, test_decoding\") does not allow it"
        ) && text.contains(
            "`ALTER SYSTEM SET output_plugin_libraries = pgoutput, test_decoding, pg2dns_plugin`"
        ),
        "{text}"
    );
    // The setting it names is the fix.
    allow_plugin(&stack.db).await?;
    let (ok, text) = check().await?;
    ensure!(ok, "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_with_plugin_installs_the_check_so_a_writers_bad_row_fails_with_the_streams_reason(
) -> Result<()> {
    let stack = Stack::start("plugin-setup", Primary::Bind).await?;
    for run in ["first", "second"] {
        let output = crate::harness::pg2dns::command_with(
            &["setup", "--with-plugin"],
            stack.config_path(),
            &[],
        )
        .await?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        ensure!(
            output.status.success() && stdout.contains("record checks: pg2dns_plugin"),
            "{run} setup --with-plugin: {}\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    every_bad_row_is_refused_with_the_streams_reason(&stack.db).await?;
    let mut pg2dns = stack.run()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, type, ttl, rdata) VALUES ('Good.Example.Test', 'a', 300, '192.0.2.10')")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(stack.rejected().await?.is_empty(), "nothing is rejected");
    pg2dns.assert_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_with_plugin_checks_a_source_tables_rows_with_the_sources_own_mapping_and_the_streams_reasons(
) -> Result<()> {
    let stack = Stack::start_before_setup("plugin-source", Primary::Bind).await?;
    crate::sources::with_records_table(&stack).await?;
    let mut pg2dns = stack.run()?;
    // What users write wrong, each refused by the stream first (no check
    // installed yet): the reasons pg2dns.rejected holds.
    let bad = [
        ("example.test", "bad", "A", "not-an-ip", None::<i32>),
        ("example.test", "spf", "TXT", "v=spf1 -all", None),
        ("Example.Test.", "mx", "MX", "mail.example.test.", None),
    ];
    let long_label = "l".repeat(64);
    let bad: Vec<_> = bad
        .into_iter()
        .chain([("example.test", long_label.as_str(), "A", "192.0.2.5", None)])
        .collect();
    let insert = "INSERT INTO app.records (zone, name, type, content, ttl, prio) VALUES ($1, $2, $3, $4, 300, $5)";
    for (zone, name, rtype, content, prio) in &bad {
        stack
            .db
            .execute(insert, &[zone, name, rtype, content, prio])
            .await?;
    }
    let rejected = stack.rejected_at_least(bad.len(), DNS_DEADLINE).await?;
    let mut want: Vec<String> = rejected.iter().map(|r| r.reason.clone()).collect();
    want.sort();
    stack
        .exec("DELETE FROM app.records; DELETE FROM pg2dns.rejected")
        .await?;
    for run in ["first", "second"] {
        let output = crate::harness::pg2dns::command_with(
            &["setup", "--with-plugin"],
            stack.config_path(),
            &[],
        )
        .await?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        ensure!(
            output.status.success()
                && stdout.contains("record checks: trigger pg2dns_source_check on app.records"),
            "{run} setup --with-plugin: {}\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut got = Vec::new();
    for (zone, name, rtype, content, prio) in &bad {
        let e = stack
            .db
            .execute(insert, &[zone, name, rtype, content, prio])
            .await
            .expect_err("the source's check refuses the row");
        let (code, message) = db_error(&e)?;
        ensure!(code == "22023", "{name}: SQLSTATE {code}");
        got.push(message);
    }
    got.sort();
    ensure!(
        got == want,
        "the check's reasons are pg2dns.rejected's: want {want:?}, got {got:?}"
    );
    // A row the filter leaves out publishes nothing, so nothing refuses it;
    // good rows pass and reach BIND; an UPDATE to a bad value fails.
    stack
        .exec(
            "INSERT INTO app.records (zone, name, type, content, ttl, prio, disabled) VALUES
               ('example.test', 'off', 'A', 'not-an-ip', 300, NULL, true),
               ('Example.Test', 'Good', 'A', '192.0.2.10', 300, NULL, false),
               ('example.test', '', 'MX', 'good', 300, 10, false)",
        )
        .await
        .context("good rows and a filtered-out row pass the check")?;
    let e = stack
        .db
        .execute(
            "UPDATE app.records SET content = '192.0.2' WHERE name = 'Good'",
            &[],
        )
        .await
        .expect_err("an UPDATE to a bad value is refused");
    ensure!(
        db_error(&e)?
            .1
            .starts_with("record data \"192.0.2\" is not valid A"),
        "{e:?}"
    );
    stack
        .wait_until_answers("good.example.test.", "A", DNS_DEADLINE)
        .await?;
    stack
        .wait_until_answers("example.test.", "MX", DNS_DEADLINE)
        .await?;
    ensure!(
        stack.rejected().await?.is_empty(),
        "nothing reaches pg2dns.rejected"
    );
    pg2dns.assert_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_nsupdate_reads_a_latin1_databases_text_as_the_stream_does() -> Result<()> {
    let stack = Stack::start_in_database(
        "plugin-latin1",
        Primary::Bind,
        "ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
    )
    .await?;
    allow_plugin(&stack.db).await?;
    stack
        .exec("ALTER TABLE pg2dns.rr REPLICA IDENTITY FULL")
        .await?;
    stack
        .exec(&format!(
            "SELECT pg_create_logical_replication_slot('nsupdate', '{PLUGIN}')"
        ))
        .await?;
    // The client speaks UTF-8; the database stores LATIN1 (é is one byte).
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('latin.example.test.', 300, 'TXT', '\"café\"')")
        .await?;
    let rows = stack
        .db
        .query(
            &format!(
                "SELECT data FROM pg_logical_slot_peek_changes('nsupdate', NULL, NULL,
                     'format', 'nsupdate', 'zones', '{FORWARD}')"
            ),
            &[],
        )
        .await?;
    let text: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let text = text.join("\n");
    ensure!(
        text.contains(r#"update add latin.example.test. 300 IN TXT "caf\195\169""#),
        "é is the two UTF-8 bytes the stream publishes:\n{text}"
    );
    Ok(())
}
