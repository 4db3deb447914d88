//! Crashes lose nothing: pg2dns killed before a DNS acknowledgement, between
//! the acknowledgement and the checkpoint commit, or at any moment of a
//! stream of transactions. After a restart, every zone equals the table.
//!
//! The first two use pg2dns's failpoints (`PG2DNS_FAILPOINT`), which abort the
//! process (like `kill -9`) at an exact place; the third sends a real SIGKILL.

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::harness::stack::{difference, FORWARD, REVERSE};
use crate::harness::{wait_until, Check, Primary, Stack, DNS_DEADLINE, RECOVERY_DEADLINE};

const FAILPOINT: &str = "PG2DNS_FAILPOINT";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_just_before_the_dns_send_loses_nothing() -> Result<()> {
    let stack = Stack::start("crash-before-send", Primary::Bind).await?;
    let mut crashing = stack.run_with(&[(FAILPOINT, "before-dns-send")])?;
    stack
        .exec(
            "BEGIN;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('a.example.test.', 300, 'A', '192.0.2.1'),
               ('b.example.test.', 300, 'A', '192.0.2.2'),
               ('1.2.0.192.in-addr.arpa.', 300, 'PTR', 'a.example.test.');
             COMMIT;",
        )
        .await?;
    let status = crashing.wait_exit(DNS_DEADLINE).await?;
    ensure!(
        !status.success(),
        "the failpoint aborts pg2dns, yet it exited with {status}"
    );
    // Both zones answer the AXFR, and hold nothing but their apex.
    let nothing = stack.expected(&[]);
    ensure!(
        nothing.len() == 2 && nothing.contains_key(FORWARD) && nothing.contains_key(REVERSE),
        "the stack serves both zones: {nothing:?}"
    );
    let dns = stack.dns().await?;
    ensure!(
        dns == nothing,
        "nothing was sent before the crash, yet DNS holds:\n{}",
        difference(&nothing, &dns)
    );
    let state = stack.row_state().await?;
    ensure!(
        state.is_empty(),
        "no row was acknowledged, yet pg2dns holds state for {state:?}"
    );

    // More changes while pg2dns is down, touching the unsent rows.
    stack
        .exec(
            "UPDATE pg2dns.rr SET rdata = '192.0.2.3' WHERE owner = 'b.example.test.';
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('c.example.test.', 300, 'A', '192.0.2.4');",
        )
        .await?;
    let mut pg2dns = stack.run()?;
    stack
        .wait_until_dns_matches_table(RECOVERY_DEADLINE)
        .await?;
    pg2dns.assert_running()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_dns_acknowledgement_and_the_checkpoint_loses_nothing() -> Result<()> {
    let stack = Stack::start("crash-after-ack", Primary::Bind).await?;
    let mut crashing = stack.run_with(&[(FAILPOINT, "after-dns-ack")])?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('a.example.test.', 300, 'A', '192.0.2.1'),
               ('b.example.test.', 300, 'A', '192.0.2.2'),
               ('c.example.test.', 300, 'TXT', '\"c\"')",
        )
        .await?;
    let status = crashing.wait_exit(DNS_DEADLINE).await?;
    ensure!(
        !status.success(),
        "the failpoint aborts pg2dns, yet it exited with {status}"
    );
    // BIND acknowledged the UPDATE before the crash, so it holds the rows.
    let acknowledged = stack.expected(&stack.table().await?);
    let dns = stack.dns().await?;
    ensure!(
        dns == acknowledged,
        "the acknowledged transaction should be in DNS:\n{}",
        difference(&acknowledged, &dns)
    );
    ensure!(
        acknowledged[FORWARD].len() == 3,
        "the three rows are what was acknowledged: {acknowledged:?}"
    );

    // While pg2dns is down, change the rows of the unconfirmed transaction:
    // the replay of that transaction must not win over these.
    stack
        .exec(
            "BEGIN;
             UPDATE pg2dns.rr SET rdata = '192.0.2.9' WHERE owner = 'a.example.test.';
             DELETE FROM pg2dns.rr WHERE owner = 'b.example.test.';
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('3.2.0.192.in-addr.arpa.', 300, 'PTR', 'c.example.test.');
             COMMIT;",
        )
        .await?;
    let mut pg2dns = stack.run()?;
    let dns = stack
        .wait_until_dns_matches_table(RECOVERY_DEADLINE)
        .await?;
    ensure!(dns[FORWARD].len() == 2, "a and c remain: {dns:?}");
    // The replay did not count the acknowledged rows twice: pg2dns holds
    // exactly one record per row, the row's.
    let table = stack.table().await?;
    let rows: std::collections::BTreeMap<String, Vec<_>> = table
        .iter()
        .map(|row| (row.id.to_string(), vec![row.record.clone()]))
        .collect();
    // The wait is the assertion: on timeout it names the last state seen.
    stack
        .row_state_when(|s| *s == rows, DNS_DEADLINE)
        .await
        .with_context(|| format!("pg2dns's row state should equal the table {rows:?}"))?;
    pg2dns.assert_running()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_while_transactions_stream_in_loses_nothing() -> Result<()> {
    let stack = Stack::start("sigkill", Primary::Bind).await?;
    let mut first = stack.run()?;

    // A writer with its own connection: 150 small transactions of inserts,
    // rdata updates, deletes and PTRs, a few milliseconds apart.
    let writer_db = stack.pg.connect().await?;
    let writer = tokio::spawn(async move {
        for i in 1..=150u32 {
            let mut sql = format!(
                "BEGIN;
                 INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
                   ('w{i}.example.test.', 300, 'A', '10.1.{}.{}');",
                i / 256,
                i % 256
            );
            if i % 3 == 0 {
                sql.push_str(&format!(
                    "UPDATE pg2dns.rr SET rdata = '10.2.{}.{}' WHERE owner = 'w{}.example.test.';",
                    i / 256,
                    i % 256,
                    i - 1
                ));
            }
            if i % 5 == 0 {
                sql.push_str(&format!(
                    "DELETE FROM pg2dns.rr WHERE owner = 'w{}.example.test.';",
                    i - 2
                ));
            }
            if i % 4 == 0 {
                sql.push_str(&format!(
                    "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
                       ('{i}.2.0.192.in-addr.arpa.', 300, 'PTR', 'w{i}.example.test.');"
                ));
            }
            sql.push_str("COMMIT;");
            writer_db.batch_execute(&sql).await?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::Ok(())
    });

    // Kill pg2dns once it is visibly applying the stream.
    wait_until(DNS_DEADLINE, "pg2dns has applied 10 records", || async {
        let applied = stack.axfr(FORWARD).await?.len();
        Ok(if applied >= 10 {
            Check::Done(())
        } else {
            Check::NotYet(format!("{applied} records"))
        })
    })
    .await?;
    first.kill()?;
    writer.await.context("the writer task")??;

    let mut second = stack.run()?;
    let dns = stack
        .wait_until_dns_matches_table(RECOVERY_DEADLINE)
        .await?;
    ensure!(
        dns[FORWARD].len() > 100,
        "the stream's rows are in DNS: {dns:?}"
    );
    second.assert_running()
}
