//! Changes to `pg2dns.rr` reach the primary: inserts, rdata and TTL updates,
//! deletes, transactions spanning the forward and the reverse zone, one
//! large transaction and a burst of small ones, on BIND and on Knot.
//!
//! Knot differs from BIND where it matters to these scenarios (see
//! docs/notes/dns-servers.md §3): it ignores re-adding an existing record
//! with another TTL (BIND retimes the RRset), and it merges the UPDATEs
//! queued for a zone into one transaction.

use anyhow::{ensure, Result};

use crate::harness::stack::{ZoneRecords, FORWARD, REVERSE};
use crate::harness::{Primary, Record, Stack, DNS_DEADLINE};

on_each_primary!(
    inserted_rows_appear_in_dns,
    an_rdata_update_replaces_the_record,
    a_deleted_row_leaves_dns,
    a_ttl_change_retimes_the_record,
    a_transaction_touching_the_forward_and_reverse_zones_updates_both,
    a_transaction_of_a_thousand_rows_arrives_whole,
    a_burst_of_small_transactions_arrives_whole,
);

async fn inserted_rows_appear_in_dns(primary: Primary) -> Result<()> {
    let stack = Stack::start("insert", primary).await?;
    let _pg2dns = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('www.example.test.', 300, 'A', '192.0.2.10'),
               ('WWW.example.test', 300, 'A', '192.0.2.11'),
               ('v6.example.test.', 600, 'AAAA', '2001:db8:0:0::1'),
               ('alias.example.test.', 300, 'CNAME', 'www.example.test.'),
               ('txt.example.test.', 300, 'TXT', '\"hello world\" \"two\"')",
        )
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;

    // The same, spelled by hand: guards against a normalisation that would
    // make both sides equal and wrong.
    let www = stack.query("www.example.test.", "A").await?;
    ensure!(
        www == vec![
            Record::new("www.example.test.", 300, "A", "192.0.2.10"),
            Record::new("www.example.test.", 300, "A", "192.0.2.11"),
        ],
        "dig www.example.test A answered {www:?}"
    );
    let v6 = stack.query("v6.example.test.", "AAAA").await?;
    ensure!(
        v6 == vec![Record::new("v6.example.test.", 600, "AAAA", "2001:db8::1")],
        "dig v6.example.test AAAA answered {v6:?}"
    );
    let txt = stack.query("txt.example.test.", "TXT").await?;
    ensure!(
        txt == vec![Record::new(
            "txt.example.test.",
            300,
            "TXT",
            "\"hello world\" \"two\""
        )],
        "dig txt.example.test TXT answered {txt:?}"
    );
    Ok(())
}

async fn an_rdata_update_replaces_the_record(primary: Primary) -> Result<()> {
    let stack = Stack::start("update-rdata", primary).await?;
    let _pg2dns = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('host.example.test.', 300, 'A', '192.0.2.20'),
               ('other.example.test.', 300, 'A', '192.0.2.21')",
        )
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;

    stack
        .exec("UPDATE pg2dns.rr SET rdata = '192.0.2.99' WHERE owner = 'host.example.test.'")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    let host = stack.query("host.example.test.", "A").await?;
    ensure!(
        host == vec![Record::new("host.example.test.", 300, "A", "192.0.2.99")],
        "the old address must be gone and the new one there: {host:?}"
    );
    Ok(())
}

async fn a_deleted_row_leaves_dns(primary: Primary) -> Result<()> {
    let stack = Stack::start("delete", primary).await?;
    let _pg2dns = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('gone.example.test.', 300, 'A', '192.0.2.30'),
               ('gone.example.test.', 300, 'A', '192.0.2.31'),
               ('alias.example.test.', 300, 'CNAME', 'gone.example.test.'),
               ('kept.example.test.', 300, 'TXT', '\"kept\"')",
        )
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;

    stack
        .exec("DELETE FROM pg2dns.rr WHERE rdata = '192.0.2.30'")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    let gone = stack.query("gone.example.test.", "A").await?;
    ensure!(
        gone == vec![Record::new("gone.example.test.", 300, "A", "192.0.2.31")],
        "only the deleted row's record leaves: {gone:?}"
    );

    stack
        .exec(
            "DELETE FROM pg2dns.rr WHERE owner = 'gone.example.test.';
             DELETE FROM pg2dns.rr WHERE owner = 'alias.example.test.';",
        )
        .await?;
    let dns = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(
        dns[FORWARD] == vec![Record::new("kept.example.test.", 300, "TXT", "\"kept\"")],
        "only the kept TXT remains: {dns:?}"
    );
    Ok(())
}

async fn a_ttl_change_retimes_the_record(primary: Primary) -> Result<()> {
    let stack = Stack::start("ttl", primary).await?;
    let _pg2dns = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('ttl.example.test.', 300, 'A', '192.0.2.40')",
        )
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;

    stack
        .exec("UPDATE pg2dns.rr SET ttl = 7200 WHERE owner = 'ttl.example.test.'")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    let answer = stack.axfr(FORWARD).await?;
    ensure!(
        answer == vec![Record::new("ttl.example.test.", 7200, "A", "192.0.2.40")],
        "the record now has TTL 7200: {answer:?}"
    );
    let served = stack.query("ttl.example.test.", "A").await?;
    ensure!(
        served == answer,
        "a query is answered with TTL 7200 too: {served:?}"
    );
    Ok(())
}

async fn a_transaction_touching_the_forward_and_reverse_zones_updates_both(
    primary: Primary,
) -> Result<()> {
    let stack = Stack::start("forward-reverse", primary).await?;
    let _pg2dns = stack.run()?;
    stack
        .exec(
            "BEGIN;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('mail.example.test.', 300, 'A', '192.0.2.10'),
               ('10.2.0.192.in-addr.arpa.', 300, 'PTR', 'mail.example.test.');
             COMMIT;",
        )
        .await?;
    // mail.example.test at 192.0.2.N, and the PTR for it.
    let mail_at = |n: u8| -> ZoneRecords {
        ZoneRecords::from([
            (
                FORWARD.to_string(),
                vec![Record::new(
                    "mail.example.test",
                    300,
                    "A",
                    &format!("192.0.2.{n}"),
                )],
            ),
            (
                REVERSE.to_string(),
                vec![Record::new(
                    &format!("{n}.2.0.192.in-addr.arpa"),
                    300,
                    "PTR",
                    "mail.example.test",
                )],
            ),
        ])
    };
    let dns = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(dns == mail_at(10), "each zone got its record: {dns:?}");

    stack
        .exec(
            "BEGIN;
             UPDATE pg2dns.rr SET rdata = '192.0.2.11' WHERE owner = 'mail.example.test.';
             DELETE FROM pg2dns.rr WHERE owner = '10.2.0.192.in-addr.arpa.';
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('11.2.0.192.in-addr.arpa.', 300, 'PTR', 'mail.example.test.');
             COMMIT;",
        )
        .await?;
    let dns = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(
        dns == mail_at(11),
        "both zones moved to the new address: {dns:?}"
    );
    Ok(())
}

async fn a_transaction_of_a_thousand_rows_arrives_whole(primary: Primary) -> Result<()> {
    let stack = Stack::start("thousand", primary).await?;
    let _pg2dns = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             SELECT 'h' || i || '.example.test.', 300, 'A', '10.0.' || (i / 256) || '.' || (i % 256)
             FROM generate_series(1, 1000) AS i",
        )
        .await?;
    let dns = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(
        dns[FORWARD].len() == 1000,
        "{} records in the zone",
        dns[FORWARD].len()
    );
    Ok(())
}

async fn a_burst_of_small_transactions_arrives_whole(primary: Primary) -> Result<()> {
    // pg2dns pipelines and coalesces the UPDATEs of many small transactions
    // (and Knot applies those queued for a zone as one transaction): every
    // row and every delete must land.
    let stack = Stack::start("burst", primary).await?;
    let _pg2dns = stack.run()?;
    stack
        .exec(
            "DO $$
             BEGIN
               FOR i IN 1..300 LOOP
                 INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
                   ('b' || i || '.example.test.', 300, 'A', '192.0.2.' || (i % 250 + 1)),
                   ((i % 250 + 1) || '.2.0.192.in-addr.arpa.', 300, 'PTR',
                    'b' || i || '.example.test.');
                 IF i % 3 = 0 THEN
                   DELETE FROM pg2dns.rr WHERE owner = 'b' || (i - 1) || '.example.test.';
                 END IF;
                 COMMIT;
               END LOOP;
             END $$;",
        )
        .await?;
    let dns = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(
        dns[FORWARD].len() == 200 && dns[REVERSE].len() == 300,
        "{} forward and {} reverse records",
        dns[FORWARD].len(),
        dns[REVERSE].len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_pg2dns_with_exit_status_zero() -> Result<()> {
    let stack = Stack::start("sigterm", Primary::Bind).await?;
    let mut pg2dns = stack.run()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('t.example.test.', 300, 'A', '192.0.2.50')")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    let status = pg2dns.terminate().await?;
    ensure!(status.success(), "pg2dns exited with {status} on SIGTERM");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_setup_keeps_the_slot_and_loses_no_change() -> Result<()> {
    let stack = Stack::start("setup-twice", Primary::Bind).await?;
    // Committed after the first setup created the slot, before any run.
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('s.example.test.', 300, 'A', '192.0.2.60')")
        .await?;
    stack.setup().await?;
    let rows = stack.table().await?;
    ensure!(rows.len() == 1, "setup kept the table's rows: {rows:?}");
    let _pg2dns = stack.run()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('s2.example.test.', 300, 'A', '192.0.2.61')")
        .await?;
    let dns = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(dns[FORWARD].len() == 2, "both rows in DNS: {dns:?}");
    Ok(())
}
