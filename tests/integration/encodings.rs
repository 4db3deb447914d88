//! Databases whose server encoding is not UTF-8.
//!
//! pg2dns asks for `client_encoding = UTF8` on every connection (SQL and
//! replication), so PostgreSQL converts text from the server encoding on the
//! way out: pgoutput's tuple values as well as `SELECT` results. What reaches
//! DNS is therefore the UTF-8 bytes of the text, whatever the database's
//! encoding. `SQL_ASCII` is the exception PostgreSQL documents: "the server
//! interprets byte values 0-127 according to the ASCII standard, while byte
//! values 128-255 are taken as uninterpreted characters" and no conversion
//! is done. PostgreSQL still checks what it sends a UTF-8 client: valid
//! UTF-8 bytes are published as they are, and a value that is not UTF-8
//! stops the stream there (SQLSTATE 22021), which pg2dns reports as a halt
//! with the way out; nothing is approximated.

use std::collections::BTreeMap;

use anyhow::{ensure, Result};

use crate::harness::stack::{ZoneRecords, FORWARD, REVERSE};
use crate::harness::{Primary, Record, Stack, DNS_DEADLINE};

/// The options of `CREATE DATABASE` for a database in `encoding`.
fn database_in(encoding: &str) -> String {
    format!("ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
}

/// The forward zone holding exactly `records`, the reverse zone empty.
fn forward_zone(records: &[Record]) -> ZoneRecords {
    let mut forward = records.to_vec();
    forward.sort();
    BTreeMap::from([
        (FORWARD.to_string(), forward),
        (REVERSE.to_string(), vec![]),
    ])
}

/// `pg2dns reconcile` reads every row with SQL and finds DNS equal to it.
async fn reconcile_finds_no_difference(stack: &Stack) -> Result<()> {
    let output = stack.reconcile(&[], &[]).await?;
    ensure!(
        output.status.code() == Some(0),
        "reconcile found differences:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latin1_database_is_set_up_and_its_accented_text_reaches_dns_as_utf8() -> Result<()> {
    let stack =
        Stack::start_in_database("enc-latin1", Primary::Bind, &database_in("LATIN1")).await?;
    let encoding: String = stack
        .db
        .query_one("SHOW server_encoding", &[])
        .await?
        .get(0);
    ensure!(encoding == "LATIN1", "the database is in {encoding}");
    let mut pg2dns = stack.run()?;

    // Stored as LATIN1 (é is one byte, 0xE9, in the table) ...
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES \
             ('cafe.example.test.', 300, 'TXT', '\"café\" \"über\"'), \
             ('münchen.example.test.', 300, 'TXT', '\"ß\"')",
        )
        .await?;
    let stored: i32 = stack
        .db
        .query_one(
            "SELECT octet_length(rdata) FROM pg2dns.rr WHERE owner = 'cafe.example.test.'",
            &[],
        )
        .await?
        .get(0);
    ensure!(stored == 13, "the LATIN1 text takes {stored} bytes, not 13");
    // ... and published as UTF-8 (é = 195 169, ü = 195 188, ß = 195 159),
    // in owner names too: a label's characters become their UTF-8 bytes (not
    // IDNA's xn--), as `\DDD` in presentation form.
    let expected = forward_zone(&[
        Record::new(
            "cafe.example.test.",
            300,
            "TXT",
            r#""caf\195\169" "\195\188ber""#,
        ),
        Record::new(r"m\195\188nchen.example.test.", 300, "TXT", r#""\195\159""#),
    ]);
    stack.wait_until_dns_equals(&expected, DNS_DEADLINE).await?;
    reconcile_finds_no_difference(&stack).await?;
    pg2dns.assert_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_euc_jp_database_sends_japanese_text_as_utf8() -> Result<()> {
    let stack =
        Stack::start_in_database("enc-eucjp", Primary::Bind, &database_in("EUC_JP")).await?;
    let mut pg2dns = stack.run()?;

    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES \
             ('jp.example.test.', 300, 'TXT', '\"日本語\"')",
        )
        .await?;
    let stored: i32 = stack
        .db
        .query_one(
            "SELECT octet_length(rdata) FROM pg2dns.rr WHERE owner = 'jp.example.test.'",
            &[],
        )
        .await?
        .get(0);
    ensure!(stored == 8, "the EUC_JP text takes {stored} bytes, not 8");
    // 日本語 in UTF-8: E6 97 A5, E6 9C AC, E8 AA 9E.
    let expected = forward_zone(&[Record::new(
        "jp.example.test.",
        300,
        "TXT",
        r#""\230\151\165\230\156\172\232\170\158""#,
    )]);
    stack.wait_until_dns_equals(&expected, DNS_DEADLINE).await?;
    reconcile_finds_no_difference(&stack).await?;
    pg2dns.assert_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_ascii_database_passes_utf8_bytes_and_halts_before_bytes_that_are_not_utf8_until_the_row_is_corrected(
) -> Result<()> {
    let stack =
        Stack::start_in_database("enc-sqlascii", Primary::Bind, &database_in("SQL_ASCII")).await?;
    let mut pg2dns = stack.run()?;

    // Bytes as the client sent them: é as UTF-8 (C3 A9) ...
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES \
             ('utf8.example.test.', 300, 'TXT', '\"café\"')",
        )
        .await?;
    let expected = forward_zone(&[Record::new(
        "utf8.example.test.",
        300,
        "TXT",
        r#""caf\195\169""#,
    )]);
    stack.wait_until_dns_equals(&expected, DNS_DEADLINE).await?;

    // ... then a lone LATIN1 é (E9), which is not UTF-8: PostgreSQL will not
    // send it to a UTF-8 client, so pg2dns halts there, and publishes
    // neither it nor what follows.
    let before = stack.current_wal_lsn().await?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES \
             ('latin1.example.test.', 300, 'TXT', E'\"caf\\xe9\"')",
        )
        .await?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES \
             ('after.example.test.', 300, 'TXT', '\"next\"')",
        )
        .await?;
    let status = pg2dns.wait_exit(DNS_DEADLINE).await?;
    ensure!(
        !status.success(),
        "pg2dns must halt, yet exited with {status}"
    );
    let log = pg2dns.log();
    ensure!(
        log.contains("is not valid in UTF-8") && log.contains("pg_replication_slot_advance"),
        "the halt must say a value is not UTF-8 and how to go on; pg2dns wrote:\n{log}"
    );
    let dns = stack.dns().await?;
    ensure!(dns == expected, "DNS changed after the halt: {dns:?}");
    // The slot keeps the transaction: its confirmed position is before it.
    let confirmed = stack.confirmed_flush_lsn().await?;
    ensure!(
        confirmed <= before,
        "confirmed_flush_lsn {confirmed} moved past the unsent transaction after {before}"
    );

    // The way out the hint gives: correct the row, advance the slot past
    // the old transaction, accept the gap, reconcile; then the stream goes
    // on.
    stack
        .exec(
            "UPDATE pg2dns.rr SET rdata = '\"café\"' WHERE owner = 'latin1.example.test.'; \
             SELECT pg_replication_slot_advance('pg2dns', pg_current_wal_lsn());",
        )
        .await?;
    stack.admin(&["setup", "--accept-gap"]).await?;
    let output = stack.reconcile(&["--apply"], &[]).await?;
    ensure!(
        output.status.code() != Some(2),
        "reconcile --apply failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let _pg2dns = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES \
             ('later.example.test.', 300, 'TXT', '\"ü\"')",
        )
        .await?;
    let expected = forward_zone(&[
        Record::new("utf8.example.test.", 300, "TXT", r#""caf\195\169""#),
        Record::new("latin1.example.test.", 300, "TXT", r#""caf\195\169""#),
        Record::new("after.example.test.", 300, "TXT", r#""next""#),
        Record::new("later.example.test.", 300, "TXT", r#""\195\188""#),
    ]);
    stack.wait_until_dns_equals(&expected, DNS_DEADLINE).await?;
    reconcile_finds_no_difference(&stack).await?;
    Ok(())
}
