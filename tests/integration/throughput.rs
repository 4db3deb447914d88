//! Large transactions are split into several UPDATEs, queued transactions are
//! coalesced into few, and what cannot be sent is refused and named — never
//! truncated. Every check is on what BIND serves: the zone's content, and its
//! SOA serial, which BIND bumps once per applied UPDATE message.

use anyhow::{ensure, Context, Result};

use crate::harness::stack::FORWARD;
use crate::harness::{Primary, Record, Stack, DNS_DEADLINE, RECOVERY_DEADLINE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_larger_than_one_update_is_split_and_arrives_whole() -> Result<()> {
    let stack = Stack::start("split", Primary::Bind).await?;
    let _pg2dns = stack.run()?;
    let before = stack.serial(FORWARD).await?;
    // 6,000 A records: a 65,535-byte message holds at most 2,616 of them.
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             SELECT 'i' || lpad(g::text, 7, '0') || '.example.test.', 300, 'A',
                    '10.' || (g / 65536) || '.' || (g / 256 % 256) || '.' || (g % 256)
             FROM generate_series(1, 6000) AS g",
        )
        .await?;
    let dns = stack
        .wait_until_dns_matches_table(RECOVERY_DEADLINE)
        .await?;
    ensure!(
        dns[FORWARD].len() == 6000,
        "{} records in DNS",
        dns[FORWARD].len()
    );
    let updates = stack.serial(FORWARD).await? - before;
    eprintln!("6,000 rows in one transaction took {updates} UPDATEs");
    ensure!(
        updates >= 3,
        "6,000 records cannot fit in {updates} UPDATE(s) of at most 65,535 bytes"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transaction_replacing_every_row_leaves_exactly_the_new_records_in_the_row_state(
) -> Result<()> {
    let stack = Stack::start("replace-large", Primary::Bind).await?;
    // Replacing every record of the zone is what this test does.
    stack.append_config("[guard]\nmax_delete_share = 1.0\n")?;
    let _pg2dns = stack.run()?;
    // Batches this large write their row state with COPY, after deleting
    // the replaced rows' old records.
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             SELECT 'r' || g || '.example.test.', 300, 'A', '10.1.' || (g / 256) || '.' || (g % 256)
             FROM generate_series(1, 1500) AS g",
        )
        .await?;
    stack
        .wait_until_dns_matches_table(RECOVERY_DEADLINE)
        .await?;
    stack
        .exec("UPDATE pg2dns.rr SET rdata = '10.2.' || (id % 256) || '.1', ttl = 600")
        .await?;
    let dns = stack
        .wait_until_dns_matches_table(RECOVERY_DEADLINE)
        .await?;
    ensure!(
        dns[FORWARD].len() == 1500,
        "{} records in DNS",
        dns[FORWARD].len()
    );
    let rows: std::collections::BTreeMap<String, Vec<_>> = stack
        .table()
        .await?
        .iter()
        .map(|row| (row.id.to_string(), vec![row.record.clone()]))
        .collect();
    // The wait is the assertion: on timeout it names the last state seen.
    stack
        .row_state_when(|s| *s == rows, DNS_DEADLINE)
        .await
        .with_context(|| {
            format!(
                "the row state should hold exactly the table's {} records",
                rows.len()
            )
        })?;
    stack.exec("DELETE FROM pg2dns.rr").await?;
    // An empty zone, not "whatever the table says": DNS must lose all 1,500.
    stack
        .wait_until_dns_equals(&stack.expected(&[]), RECOVERY_DEADLINE)
        .await
        .context("every record deleted from the table must leave DNS")?;
    stack
        .row_state_when(|s| s.is_empty(), DNS_DEADLINE)
        .await
        .context("the row state must be empty after deleting every row")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_queued_while_pg2dns_was_stopped_are_coalesced_into_few_updates() -> Result<()>
{
    let stack = Stack::start("coalesce", Primary::Bind).await?;
    let before = stack.serial(FORWARD).await?;
    // 300 single-row transactions committed while nothing consumes the slot.
    for i in 0..300 {
        stack
            .exec(&format!(
                "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('q{i}.example.test.', 300, 'A', '10.9.{}.{}')",
                i / 256,
                i % 256
            ))
            .await?;
    }
    stack
        .exec("UPDATE pg2dns.rr SET rdata = '10.8.0.1' WHERE owner = 'q7.example.test.'")
        .await?;
    stack
        .exec("DELETE FROM pg2dns.rr WHERE owner = 'q8.example.test.'")
        .await?;
    let _pg2dns = stack.run()?;
    stack
        .wait_until_dns_matches_table(RECOVERY_DEADLINE)
        .await?;
    let updates = stack.serial(FORWARD).await? - before;
    eprintln!("302 queued transactions took {updates} UPDATEs");
    ensure!(
        updates <= 60,
        "302 queued transactions took {updates} UPDATEs: they were not coalesced"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_would_overfill_an_rrset_is_rejected_and_named() -> Result<()> {
    let stack = Stack::start("rrset-limit", Primary::Bind).await?;
    stack.append_config("[limits]\nmax_records_per_rrset = 3\n")?;
    let _pg2dns = stack.run()?;
    for i in 1..=4 {
        stack
            .exec(&format!(
                "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('many.example.test.', 300, 'A', '192.0.2.{i}')"
            ))
            .await?;
    }
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('after.example.test.', 300, 'A', '192.0.2.50')")
        .await?;
    // The row committed after the refused one arrives: the stream went on.
    stack
        .wait_until_answers("after.example.test.", "A", DNS_DEADLINE)
        .await?;
    let many = stack.query("many.example.test.", "A").await?;
    let rdatas: Vec<&str> = many.iter().map(|r| r.rdata.as_str()).collect();
    ensure!(
        rdatas == ["192.0.2.1", "192.0.2.2", "192.0.2.3"],
        "the RRset holds {rdatas:?}"
    );
    let rejected = stack.rejected_at_least(1, DNS_DEADLINE).await?;
    ensure!(rejected.len() == 1, "rejected rows: {rejected:?}");
    let r = &rejected[0];
    ensure!(
        r.owner.as_deref() == Some("many.example.test.")
            && r.reason.contains("max_records_per_rrset"),
        "the rejection names the owner and the limit: {r:?}"
    );
    // Freeing a place lets a new record in.
    stack
        .exec("DELETE FROM pg2dns.rr WHERE owner = 'many.example.test.' AND rdata IN ('192.0.2.1', '192.0.2.4')")
        .await?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('many.example.test.', 300, 'A', '192.0.2.5')")
        .await?;
    let dns = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(dns[FORWARD].len() == 4, "{:?}", dns[FORWARD]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_too_large_for_one_update_is_refused_not_truncated() -> Result<()> {
    let stack = Stack::start("owner-too-large", Primary::Bind).await?;
    stack.append_config("[limits]\nmax_records_per_rrset = 1000\n")?;
    let _pg2dns = stack.run()?;
    // 300 TXT records of 250 characters on one owner: about 78 KB, more
    // than one message holds, and one owner's changes are never split.
    stack
        .exec(
            "BEGIN;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             SELECT 'big.example.test.', 300, 'TXT', '\"' || lpad(g::text, 250, 'x') || '\"'
             FROM generate_series(1, 300) AS g;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('small.example.test.', 300, 'A', '192.0.2.7');
             COMMIT;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('later.example.test.', 300, 'A', '192.0.2.8');",
        )
        .await?;
    stack
        .wait_until_answers("later.example.test.", "A", DNS_DEADLINE)
        .await?;
    ensure!(
        stack.query("big.example.test.", "TXT").await?.is_empty(),
        "part of an oversize owner was sent"
    );
    let small = stack.query("small.example.test.", "A").await?;
    ensure!(
        small == vec![Record::new("small.example.test.", 300, "A", "192.0.2.7")],
        "the rest of the transaction did not arrive: {small:?}"
    );
    let rejected = stack.rejected_at_least(1, DNS_DEADLINE).await?;
    ensure!(
        rejected
            .iter()
            .any(|r| r.owner.as_deref() == Some("big.example.test.") && r.reason.contains("bytes")),
        "the oversize owner is recorded as rejected: {rejected:?}"
    );
    Ok(())
}
