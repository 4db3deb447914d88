//! Conditions pg2dns must not work around: it halts with an error that says
//! what is wrong, and neither DNS nor the replication slot moves past the
//! change it could not apply.

use anyhow::{ensure, Result};

use crate::harness::bind::KEY_NAME;
use crate::harness::stack::{parse_lsn, FORWARD};
use crate::harness::{Stack, DNS_DEADLINE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_tsig_secret_halts_with_an_error_naming_the_key_and_zone_and_keeps_the_change_in_the_slot(
) -> Result<()> {
    let stack = Stack::start("wrong-key").await?;
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
    let log = pg2dns.log();
    let lower = log.to_ascii_lowercase();
    ensure!(
        log.contains(KEY_NAME)
            && lower.contains("example.test")
            && (lower.contains("badsig") || lower.contains("badkey")),
        "the error must name the key {KEY_NAME}, the zone {FORWARD} and BADSIG/BADKEY; pg2dns wrote:\n{log}"
    );

    let zone = stack.bind.axfr(FORWARD).await?;
    ensure!(
        zone.is_empty(),
        "BIND refused the UPDATE, yet holds {zone:?}"
    );

    // The slot will deliver the transaction again: its confirmed position is
    // not past the transaction's first change.
    let confirmed = parse_lsn(&stack.confirmed_flush_lsn().await?)?;
    let pending = stack.peek_slot().await?;
    let ours: Vec<u64> = pending
        .iter()
        .filter(|(_, x)| *x == xid)
        .map(|(lsn, _)| *lsn)
        .collect();
    ensure!(
        !ours.is_empty(),
        "the slot no longer holds transaction {xid}; pending changes: {pending:?}"
    );
    let first = ours.iter().min().copied().unwrap_or_default();
    ensure!(
        confirmed <= first,
        "confirmed_flush_lsn {confirmed:X} moved past the unapplied change at {first:X}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_halts_with_an_error_and_leaves_dns_alone() -> Result<()> {
    let stack = Stack::start("truncate").await?;
    let mut pg2dns = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('www.example.test.', 300, 'A', '192.0.2.10'),
               ('10.2.0.192.in-addr.arpa.', 300, 'PTR', 'www.example.test.')",
        )
        .await?;
    let before = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;

    stack.exec("TRUNCATE pg2dns.rr").await?;
    let status = pg2dns.wait_exit(DNS_DEADLINE).await?;
    ensure!(
        !status.success(),
        "TRUNCATE must halt pg2dns, yet it exited with {status}"
    );
    let log = pg2dns.log();
    ensure!(
        log.to_ascii_lowercase().contains("truncate"),
        "the error must mention TRUNCATE; pg2dns wrote:\n{log}"
    );
    let after = stack.dns().await?;
    ensure!(
        after == before,
        "DNS must keep its records after a TRUNCATE:\n{}",
        crate::harness::stack::difference(&before, &after)
    );
    Ok(())
}
