//! The `pg2dns_plugin` PostgreSQL extension (`pg_plugin/`, docs/plugin.md):
//! the stream's record checks in the writer's transaction.
//!
//! The extension must be installed into the PostgreSQL the harness runs
//! (`scripts/test` builds and installs it with cargo-pgrx; see
//! `pg2dns_install_plugin` in `scripts/lib/install.sh`). A missing extension
//! is a failure that says how to install it, never a skip.

use anyhow::{ensure, Context, Result};
use pg2dns_decoder::mapping::row_check::{rr_row, RrColumns};

use crate::harness::stack::FORWARD;
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
    let insert = "INSERT INTO pg2dns.rr (owner, type, ttl, rdata) VALUES ($1, $2, $3, $4)";
    for (owner, rtype, ttl, rdata, reason) in bad_rows() {
        let e = stack
            .db
            .execute(insert, &[&owner, &rtype, &ttl, &rdata])
            .await
            .expect_err("the trigger refuses the row");
        let (code, message) = db_error(&e)?;
        ensure!(
            message == reason && code == "22023",
            "INSERT of {owner} {rtype} {rdata}: want 22023 {reason:?}, got {code} {message:?}"
        );
    }
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
