//! What only Knot DNS shows: zones on BIND and on Knot flow independently,
//! and a zone Knot does not serve halts pg2dns with an error naming it.
//! (Every behaviour both servers share runs on Knot too: see the
//! `on_knot` tests of the other modules.)
//!
//! Knot answers NOTAUTH without a TSIG record for a zone it does not serve,
//! and BADSIG/BADKEY unsigned (see docs/notes/dns-servers.md §3).

use anyhow::{ensure, Result};

use crate::harness::stack::{FORWARD, REVERSE};
use crate::harness::{wait_until, Check, Primary, Stack, DNS_DEADLINE, RECOVERY_DEADLINE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_on_two_servers_do_not_wait_for_each_other() -> Result<()> {
    let mut stack = Stack::start_split(
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
    stack.server_mut(Primary::Bind)?.stop().await?;
    // The forward zone's changes queue up behind the outage; committed
    // first, so the reverse zone's changes after them must overtake them.
    let outage_start = stack.current_wal_lsn().await?;
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
    let confirmed = stack.confirmed_flush_lsn().await?;
    ensure!(
        confirmed <= outage_start,
        "confirmed_flush_lsn {confirmed} passed {outage_start}, before the forward \
         zone's first unacknowledged transaction"
    );

    // More reverse-zone changes while the forward zone is still stuck: once
    // the status shows its transactions handed to BIND and unacknowledged.
    wait_until(
        DNS_DEADLINE,
        "status shows the forward zone's transactions in flight",
        || async {
            let s = crate::admin::status(&stack).await?;
            let in_flight = s["zones"]
                .as_array()
                .and_then(|zones| zones.iter().find(|z| z["zone"] == FORWARD))
                .and_then(|z| z["in_flight"].as_i64())
                .unwrap_or(0);
            Ok(if in_flight > 0 {
                Check::Done(())
            } else {
                Check::NotYet(s.to_string())
            })
        },
    )
    .await?;
    stack
        .exec("DELETE FROM pg2dns.rr WHERE owner = '2.2.0.192.in-addr.arpa.'")
        .await?;
    stack
        .wait_until_zones_match_table(&reverse, DNS_DEADLINE)
        .await?;
    pg2dns.assert_running()?;

    stack.server_mut(Primary::Bind)?.start_again().await?;
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
async fn a_zone_knot_does_not_serve_halts_naming_the_zone() -> Result<()> {
    // Knot serves only the reverse zone, yet the config sends the forward
    // zone to it too: Knot answers NOTAUTH, without a TSIG record.
    let stack = Stack::start_split("knot-notauth", &[(REVERSE, Primary::Knot)]).await?;
    let knot = stack.server(Primary::Knot)?;
    stack.append_config(&format!(
        "[[zone]]\nname = \"{FORWARD}\"\nprimary = \"{}\"\ntsig_key_file = \"{}\"\n",
        knot.addr(),
        knot.key_file().display()
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
    let halt = format!("zone {FORWARD}: the primary {}", knot.addr());
    ensure!(
        log.lines()
            .any(|line| line.contains(&halt) && line.to_ascii_uppercase().contains("NOTAUTH")),
        "the error must name the zone {FORWARD}, Knot's address and NOTAUTH \
         (a line with {halt:?}); pg2dns wrote:\n{log}"
    );
    Ok(())
}
