//! Rows pg2dns cannot send are recorded in `pg2dns.rejected`, and the stream
//! goes on past them.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};

use crate::harness::stack::{parse_lsn, FORWARD};
use crate::harness::{Stack, DNS_DEADLINE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_rdata_and_rows_outside_every_zone_are_rejected_and_the_stream_goes_on(
) -> Result<()> {
    let stack = Stack::start("rejected").await?;
    let mut pg2dns = stack.run()?;
    let bad_ids: Vec<i64> = {
        let bad_rdata = stack
            .db
            .query_one(
                "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
                 VALUES ('bad.example.test.', 300, 'A', 'not-an-ip') RETURNING id",
                &[],
            )
            .await?
            .get(0);
        let outside = stack
            .db
            .query_one(
                "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
                 VALUES ('host.elsewhere.test.', 300, 'A', '192.0.2.77') RETURNING id",
                &[],
            )
            .await?
            .get(0);
        vec![bad_rdata, outside]
    };
    // Committed after the bad rows, in a transaction of its own and in one
    // shared with a good row.
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('after.example.test.', 300, 'A', '192.0.2.78');
             BEGIN;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('mixed.example.test.', 300, 'A', '192.0.2.79');
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('mixed.example.test.', 300, 'AAAA', 'also-not-an-ip');
             COMMIT;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('last.example.test.', 300, 'A', '192.0.2.80');",
        )
        .await?;
    let mixed_bad: i64 = stack
        .db
        .query_one(
            "SELECT id FROM pg2dns.rr WHERE rdata = 'also-not-an-ip'",
            &[],
        )
        .await?
        .get(0);
    let bad_ids = [bad_ids, vec![mixed_bad]].concat();

    let good: Vec<_> = stack
        .table()
        .await?
        .into_iter()
        .filter(|row| !bad_ids.contains(&row.id))
        .collect();
    let expected = stack.expected(&good);
    ensure!(
        expected[FORWARD].len() == 3,
        "three good rows: {expected:?}"
    );
    stack.wait_until_dns_equals(&expected, DNS_DEADLINE).await?;

    // Every bad row is in pg2dns.rejected with its key, an LSN and a reason.
    let deadline = Instant::now() + DNS_DEADLINE;
    let rejected = loop {
        let rejected = stack.rejected().await?;
        let all_there = bad_ids
            .iter()
            .all(|id| rejected.iter().any(|r| r.row_key == id.to_string()));
        if all_there {
            break rejected;
        }
        if Instant::now() > deadline {
            bail!("rows {bad_ids:?} should all be in pg2dns.rejected, which holds {rejected:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for id in &bad_ids {
        let row = rejected
            .iter()
            .find(|r| r.row_key == id.to_string())
            .expect("checked above");
        ensure!(
            !row.reason.trim().is_empty(),
            "rejected row {id} has a reason: {row:?}"
        );
        ensure!(
            parse_lsn(&row.lsn)? > 0,
            "rejected row {id} has an LSN: {row:?}"
        );
    }
    let outside = rejected
        .iter()
        .find(|r| r.row_key == bad_ids[1].to_string())
        .expect("checked above");
    ensure!(
        outside
            .owner
            .as_deref()
            .is_some_and(|o| o.to_ascii_lowercase().contains("elsewhere.test")),
        "the rejection names the owner: {outside:?}"
    );
    let bad = rejected
        .iter()
        .find(|r| r.row_key == bad_ids[0].to_string())
        .expect("checked above");
    ensure!(
        bad.zone
            .as_deref()
            .is_some_and(|z| z.trim_end_matches('.') == FORWARD.trim_end_matches('.')),
        "the rejection of a row inside a zone names the zone: {bad:?}"
    );
    pg2dns.assert_running()?;
    Ok(())
}
