//! pg2dns against Knot DNS: rows reach a zone served by `knotd`, zones on
//! BIND and on Knot flow independently, and Knot's refusals halt pg2dns with
//! an error that names what to fix.
//!
//! Knot differs from BIND where it matters to pg2dns (see
//! shared/notes/dns-servers.md): it answers NOTAUTH without a TSIG record
//! for a zone it does not serve, BADSIG/BADKEY unsigned, and it merges the
//! UPDATEs queued for a zone into one transaction.

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::harness::bind::KEY_NAME;
use crate::harness::knot::{KnotStack, Primary};
use crate::harness::stack::{parse_lsn, FORWARD, REVERSE, SLOT};
use crate::harness::{Knot, Record, TempDir, DNS_DEADLINE, RECOVERY_DEADLINE};

/// The harness on its own: if Knot does not keep a signed update across a
/// restart, the scenarios below cannot be trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knot_applies_a_signed_nsupdate_and_keeps_it_across_a_restart() -> Result<()> {
    let dir = TempDir::new("knot-self")?;
    let mut knot = Knot::start(dir.path(), &[FORWARD, REVERSE]).await?;
    ensure!(
        knot.zones() == [FORWARD, REVERSE],
        "zones: {:?}",
        knot.zones()
    );
    ensure!(
        knot.axfr(FORWARD).await?.is_empty(),
        "a new zone holds only SOA and NS"
    );
    knot.nsupdate(
        "update add www.example.test. 300 A 192.0.2.10\n\
         update add t.example.test. 300 TXT \"hello world\"",
    )
    .await?;
    let expected = vec![
        Record::new("t.example.test", 300, "TXT", "\"hello world\""),
        Record::new("www.example.test", 300, "A", "192.0.2.10"),
    ];
    let axfr = knot.axfr(FORWARD).await?;
    ensure!(
        axfr == expected,
        "AXFR after nsupdate: {axfr:?}\n{}",
        knot.log_tail(20)
    );

    knot.stop().await?;
    knot.start_again().await?;
    let axfr = knot.axfr(FORWARD).await?;
    ensure!(
        axfr == expected,
        "AXFR after a restart: {axfr:?}\n{}",
        knot.log_tail(20)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_reach_a_zone_served_by_knot() -> Result<()> {
    let stack = KnotStack::start(
        "knot-rows",
        &[(FORWARD, Primary::Knot), (REVERSE, Primary::Knot)],
    )
    .await?;
    let _pg2dns = stack.run()?;

    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('www.example.test.', 300, 'A', '192.0.2.10'),
               ('WWW.example.test', 300, 'A', '192.0.2.11'),
               ('v6.example.test.', 600, 'AAAA', '2001:db8:0:0::1'),
               ('alias.example.test.', 300, 'CNAME', 'www.example.test.'),
               ('txt.example.test.', 300, 'TXT', '\"hello world\" \"two\"'),
               ('host.example.test.', 300, 'A', '192.0.2.20'),
               ('ttl.example.test.', 300, 'A', '192.0.2.40')",
        )
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    // Spelled by hand: guards against a normalisation that would make both
    // sides equal and wrong.
    let www = stack.knot.query("www.example.test.", "A").await?;
    ensure!(
        www == vec![
            Record::new("www.example.test.", 300, "A", "192.0.2.10"),
            Record::new("www.example.test.", 300, "A", "192.0.2.11"),
        ],
        "Knot answered www.example.test A with {www:?}"
    );

    stack
        .exec("UPDATE pg2dns.rr SET rdata = '192.0.2.99' WHERE owner = 'host.example.test.'")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    let host = stack.knot.query("host.example.test.", "A").await?;
    ensure!(
        host == vec![Record::new("host.example.test.", 300, "A", "192.0.2.99")],
        "the old address must be gone from Knot and the new one there: {host:?}"
    );

    stack
        .exec(
            "DELETE FROM pg2dns.rr WHERE rdata = '192.0.2.10';
             DELETE FROM pg2dns.rr WHERE owner = 'alias.example.test.';",
        )
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;

    // Knot ignores re-adding an existing record with another TTL (BIND
    // retimes the RRset): the new TTL must arrive all the same.
    stack
        .exec("UPDATE pg2dns.rr SET ttl = 7200 WHERE owner = 'ttl.example.test.'")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    let ttl = stack.knot.query("ttl.example.test.", "A").await?;
    ensure!(
        ttl == vec![Record::new("ttl.example.test.", 7200, "A", "192.0.2.40")],
        "Knot serves the record with TTL 7200: {ttl:?}"
    );

    stack
        .exec(
            "BEGIN;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('mail.example.test.', 300, 'A', '192.0.2.12'),
               ('12.2.0.192.in-addr.arpa.', 300, 'PTR', 'mail.example.test.');
             COMMIT;",
        )
        .await?;
    let dns = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(
        dns[REVERSE]
            == vec![Record::new(
                "12.2.0.192.in-addr.arpa.",
                300,
                "PTR",
                "mail.example.test."
            )],
        "the reverse zone got its PTR: {dns:?}"
    );

    stack
        .exec(
            "BEGIN;
             UPDATE pg2dns.rr SET rdata = '192.0.2.13' WHERE owner = 'mail.example.test.';
             DELETE FROM pg2dns.rr WHERE owner = '12.2.0.192.in-addr.arpa.';
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('13.2.0.192.in-addr.arpa.', 300, 'PTR', 'mail.example.test.');
             COMMIT;",
        )
        .await?;
    let dns = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(
        dns[FORWARD].len() == 6 && dns[REVERSE].len() == 1,
        "six forward records and one PTR: {dns:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_on_two_servers_do_not_wait_for_each_other() -> Result<()> {
    let mut stack = KnotStack::start(
        "knot-two",
        &[(FORWARD, Primary::Bind), (REVERSE, Primary::Knot)],
    )
    .await?;
    let mut pg2dns = stack.run()?;
    stack
        .exec(
            "BEGIN;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('before.example.test.', 300, 'A', '192.0.2.1'),
               ('1.2.0.192.in-addr.arpa.', 300, 'PTR', 'before.example.test.');
             COMMIT;",
        )
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;

    let reverse = vec![REVERSE.to_string()];
    stack
        .bind
        .as_mut()
        .context("the forward zone is on BIND")?
        .stop()
        .await?;
    // The forward zone's changes queue up behind the outage; committed
    // first, so the reverse zone's changes after them must overtake them.
    let outage_start = parse_lsn(
        &stack
            .db
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get::<_, String>(0),
    )?;
    for i in 2..=6 {
        stack
            .exec(&format!(
                "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
                   ('during{i}.example.test.', 300, 'A', '192.0.2.{i}')"
            ))
            .await?;
    }
    for i in 2..=6 {
        stack
            .exec(&format!(
                "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
                   ('{i}.2.0.192.in-addr.arpa.', 300, 'PTR', 'during{i}.example.test.')"
            ))
            .await?;
    }
    stack
        .exec(
            "BEGIN;
             UPDATE pg2dns.rr SET rdata = '192.0.2.7' WHERE owner = 'before.example.test.';
             DELETE FROM pg2dns.rr WHERE owner = '1.2.0.192.in-addr.arpa.';
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('7.2.0.192.in-addr.arpa.', 300, 'PTR', 'before.example.test.');
             COMMIT;",
        )
        .await?;
    // BIND is still down: the reverse zone on Knot is up to date anyway.
    let dns = stack
        .wait_until_zones_match_table(&reverse, DNS_DEADLINE)
        .await?;
    ensure!(
        dns[REVERSE].len() == 6,
        "six PTR records in Knot while BIND is down: {dns:?}"
    );
    pg2dns.assert_running()?;
    // Nothing lost: the slot still holds the forward zone's transactions.
    let confirmed = parse_lsn(
        &stack
            .db
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&SLOT],
            )
            .await?
            .get::<_, String>(0),
    )?;
    ensure!(
        confirmed <= outage_start,
        "confirmed_flush_lsn {confirmed:X} passed {outage_start:X}, before the forward \
         zone's first unacknowledged transaction"
    );

    // More reverse-zone changes while the forward zone is still stuck.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack
        .exec("DELETE FROM pg2dns.rr WHERE owner = '2.2.0.192.in-addr.arpa.'")
        .await?;
    stack
        .wait_until_zones_match_table(&reverse, DNS_DEADLINE)
        .await?;
    pg2dns.assert_running()?;

    stack
        .bind
        .as_mut()
        .context("the forward zone is on BIND")?
        .start_again()
        .await?;
    let dns = stack
        .wait_until_dns_matches_table(RECOVERY_DEADLINE)
        .await?;
    ensure!(
        dns[FORWARD].len() == 6 && dns[REVERSE].len() == 5,
        "every change made during the outage arrived: {dns:?}"
    );
    pg2dns.assert_running()?;

    stack
        .exec(
            "BEGIN;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('after.example.test.', 300, 'A', '192.0.2.200'),
               ('200.2.0.192.in-addr.arpa.', 300, 'PTR', 'after.example.test.');
             COMMIT;",
        )
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_on_knot_halts_naming_the_key_and_zone() -> Result<()> {
    let stack = KnotStack::start(
        "knot-key",
        &[(FORWARD, Primary::Knot), (REVERSE, Primary::Knot)],
    )
    .await?;
    let wrong = stack.write_wrong_key_file().await?;
    stack.write_config(&[(FORWARD, &wrong)])?;
    let mut pg2dns = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             VALUES ('www.example.test.', 300, 'A', '192.0.2.10')",
        )
        .await?;

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
    let zone = stack.axfr(FORWARD).await?;
    ensure!(
        zone.is_empty(),
        "Knot refused the UPDATE, yet holds {zone:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_knot_does_not_serve_halts_naming_the_zone() -> Result<()> {
    // Knot serves only the reverse zone, yet the config sends the forward
    // zone to it too: Knot answers NOTAUTH, without a TSIG record.
    let stack = KnotStack::start("knot-notauth", &[(REVERSE, Primary::Knot)]).await?;
    stack.append_config(&format!(
        "[[zone]]\nname = \"{FORWARD}\"\nprimary = \"{}\"\ntsig_key_file = \"{}\"\n",
        stack.knot.addr(),
        stack.knot.key_file().display()
    ))?;
    let mut pg2dns = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             VALUES ('www.example.test.', 300, 'A', '192.0.2.10')",
        )
        .await?;

    let status = pg2dns.wait_exit(DNS_DEADLINE).await?;
    ensure!(
        !status.success(),
        "pg2dns must fail, yet exited with {status}"
    );
    let log = pg2dns.log();
    ensure!(
        log.contains("example.test") && log.to_ascii_uppercase().contains("NOTAUTH"),
        "the error must name the zone {FORWARD} and NOTAUTH; pg2dns wrote:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_small_transactions_reaches_knot_whole() -> Result<()> {
    // Knot applies the UPDATEs queued for a zone as one transaction; pg2dns
    // pipelines and coalesces them. Every row and every delete must land.
    let stack = KnotStack::start(
        "knot-burst",
        &[(FORWARD, Primary::Knot), (REVERSE, Primary::Knot)],
    )
    .await?;
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
