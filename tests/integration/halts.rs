//! Conditions pg2dns must not work around: it halts with an error that says
//! what is wrong, and neither DNS nor the replication slot moves past the
//! change it could not apply.

use anyhow::{ensure, Context, Result};

use crate::harness::dns::KEY_NAME;
use crate::harness::stack::FORWARD;
use crate::harness::{Primary, Stack, DNS_DEADLINE};

on_each_primary!(
    a_wrong_tsig_secret_halts_with_an_error_naming_the_key_zone_and_lsn_and_keeps_the_change_in_the_slot,
);

async fn a_wrong_tsig_secret_halts_with_an_error_naming_the_key_zone_and_lsn_and_keeps_the_change_in_the_slot(
    primary: Primary,
) -> Result<()> {
    let stack = Stack::start("wrong-key", primary).await?;
    let wrong = stack.write_wrong_key_file().await?;
    stack.write_config(&[(FORWARD, &wrong)])?;
    let mut pg2dns = stack.run()?;

    let id: i64 = stack
        .db
        .query_one(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             VALUES ('www.example.test.', 300, 'A', '192.0.2.10') RETURNING id",
            &[],
        )
        .await?
        .get(0);
    let xid: String = stack
        .db
        .query_one("SELECT xmin::text FROM pg2dns.rr WHERE id = $1", &[&id])
        .await?
        .get(0);

    let status = pg2dns.wait_exit(DNS_DEADLINE).await?;
    ensure!(
        !status.success(),
        "pg2dns must fail, yet exited with {status}"
    );

    let zone = stack.axfr(FORWARD).await?;
    ensure!(
        zone.is_empty(),
        "{primary:?} refused the UPDATE, yet holds {zone:?}"
    );

    // The slot will deliver the transaction again: its confirmed position is
    // not past the transaction's first change.
    let confirmed = stack.confirmed_flush_lsn().await?;
    let pending = stack.pending_transactions().await?;
    let ours = pending.iter().find(|t| t.xid == xid).with_context(|| {
        format!("the slot no longer holds transaction {xid}; pending: {pending:?}")
    })?;
    ensure!(
        confirmed <= ours.first_change,
        "confirmed_flush_lsn {confirmed} moved past the unapplied change at {}",
        ours.first_change
    );

    // The halt names the zone, the server, the key, and the LSN of the very
    // transaction refused (its commit record, as pgoutput's Begin gives it),
    // and says the server's verdict.
    let log = pg2dns.log();
    let addr = stack.server(primary)?.addr();
    if primary == Primary::PowerDns {
        // PowerDNS answers a bad signature with REFUSED, not NOTAUTH with a
        // TSIG error (RFC 8945 §5.2): the halt says so in its hint.
        let halt = format!(
            "zone {FORWARD}: the primary {addr} answered REFUSED to an UPDATE signed with key {KEY_NAME}"
        );
        let line = log
            .lines()
            .find(|line| line.contains(&halt))
            .with_context(|| format!("no line says {halt:?}; pg2dns wrote:\n{log}"))?;
        let lsn = format!("(LSN {})", ours.final_lsn);
        ensure!(
            line.contains(&lsn),
            "the halt must name the refused transaction {lsn}: {line}"
        );
        ensure!(
            line.contains("it answers a bad signature with REFUSED"),
            "the halt must say the secret may differ: {line}"
        );
        return Ok(());
    }
    let halt =
        format!("zone {FORWARD}: the primary {addr} and pg2dns disagree on TSIG key {KEY_NAME}");
    let line = log
        .lines()
        .find(|line| line.contains(&halt))
        .with_context(|| format!("no line says {halt:?}; pg2dns wrote:\n{log}"))?;
    let lsn = format!("(LSN {})", ours.final_lsn);
    ensure!(
        line.contains(&lsn),
        "the halt must name the refused transaction {lsn}: {line}"
    );
    ensure!(
        line.contains("BADSIG") || line.contains("BADKEY"),
        "the halt must say BADSIG or BADKEY: {line}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_of_a_small_table_removes_its_records_and_the_stream_goes_on() -> Result<()> {
    // Two records, a zone of 10 or fewer: under the mass-delete guard's
    // threshold (a large TRUNCATE is held: see guard.rs).
    let stack = Stack::start("truncate", Primary::Bind).await?;
    let mut pg2dns = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('www.example.test.', 300, 'A', '192.0.2.10'),
               ('10.2.0.192.in-addr.arpa.', 300, 'PTR', 'www.example.test.')",
        )
        .await?;
    let before = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(
        before.values().map(Vec::len).sum::<usize>() == 2,
        "{before:?}"
    );

    stack.exec("TRUNCATE pg2dns.rr").await?;
    // Empty zones, not "whatever the table says": both records must go.
    stack
        .wait_until_dns_equals(&stack.expected(&[]), DNS_DEADLINE)
        .await
        .context("a TRUNCATE must remove every record of the table")?;
    stack
        .row_state_when(|s| s.is_empty(), DNS_DEADLINE)
        .await
        .context("the row state must be empty after the TRUNCATE")?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('next.example.test.', 300, 'A', '192.0.2.11')")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    pg2dns.assert_running()?;
    Ok(())
}

/// A value in pg2dns's own tables that pg2dns never writes (here a record
/// type out of range in the row state, edited by hand) halts the stream
/// naming the table and the value, with a hint; it is never read as type 0
/// nor retried forever, and the change that needed it is not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_state_value_pg2dns_cannot_read_halts_naming_the_table_and_the_value() -> Result<()> {
    let stack = Stack::start("corrupt-state", Primary::Bind).await?;
    let mut pg2dns = stack.run()?;
    let id: i64 = stack
        .db
        .query_one(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             VALUES ('www.example.test.', 300, 'A', '192.0.2.10') RETURNING id",
            &[],
        )
        .await?
        .get(0);
    let key = id.to_string();
    stack
        .row_state_when(|s| s.contains_key(&key), DNS_DEADLINE)
        .await?;
    stack
        .db
        .execute(
            "UPDATE pg2dns.row_state SET rtype = 70000 WHERE row_key = $1",
            &[&key],
        )
        .await?;
    stack
        .db
        .execute(
            "UPDATE pg2dns.rr SET rdata = '192.0.2.11' WHERE id = $1",
            &[&id],
        )
        .await?;
    // The harness runs pg2dns with --exit-on-halt.
    let status = pg2dns.wait_exit(DNS_DEADLINE).await?;
    ensure!(
        !status.success(),
        "pg2dns must halt, yet exited with {status}"
    );
    let out = stack.admin(&["status", "--json"]).await?;
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).context("status --json")?;
    let (reason, hint) = (
        s["reason"].as_str().unwrap_or_default(),
        s["hint"].as_str().unwrap_or_default(),
    );
    ensure!(
        reason.contains(
            "pg2dns.row_state holds a value pg2dns cannot read: record type 70000 is out of range"
        ),
        "{reason}"
    );
    ensure!(
        hint.starts_with("pg2dns.row_state was changed outside pg2dns"),
        "{hint}"
    );
    let www: Vec<String> = stack
        .axfr(FORWARD)
        .await?
        .iter()
        .filter(|r| r.owner == "www.example.test.")
        .map(|r| r.rdata.clone())
        .collect();
    ensure!(www == ["192.0.2.10"], "the change went out: {www:?}");
    Ok(())
}
