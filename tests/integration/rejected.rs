//! Rows pg2dns cannot send are recorded in `pg2dns.rejected`, and the stream
//! goes on past them.

use anyhow::{ensure, Context, Result};
use pg2dns_decoder::Lsn;

use crate::harness::stack::{Rejected, FORWARD};
use crate::harness::{wait_until, Check, Primary, Stack, DNS_DEADLINE};

/// A row inserted in a transaction of its own: its id, and the WAL
/// positions before and after the transaction (its commit LSN lies between).
struct Inserted {
    id: i64,
    after: Lsn,
    before: Lsn,
}

async fn insert(stack: &Stack, values: &str) -> Result<Inserted> {
    let before = stack.current_wal_lsn().await?;
    let id = stack
        .db
        .query_one(
            &format!(
                "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES {values} RETURNING id"
            ),
            &[],
        )
        .await?
        .get(0);
    let after = stack.current_wal_lsn().await?;
    Ok(Inserted { id, after, before })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_rdata_and_rows_outside_every_zone_are_rejected_and_the_stream_goes_on(
) -> Result<()> {
    let stack = Stack::start("rejected", Primary::Bind).await?;
    let mut pg2dns = stack.run()?;
    let bad_rdata = insert(&stack, "('bad.example.test.', 300, 'A', 'not-an-ip')").await?;
    let outside = insert(&stack, "('host.elsewhere.test.', 300, 'A', '192.0.2.77')").await?;
    // Committed after the bad rows, in a transaction of its own and in one
    // shared with a good row.
    let mixed_before = stack.current_wal_lsn().await?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('after.example.test.', 300, 'A', '192.0.2.78');
             BEGIN;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('mixed.example.test.', 300, 'A', '192.0.2.79');
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('mixed.example.test.', 300, 'AAAA', 'also-not-an-ip');
             COMMIT;",
        )
        .await?;
    let mixed_after = stack.current_wal_lsn().await?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('last.example.test.', 300, 'A', '192.0.2.80')")
        .await?;
    let mixed_bad: i64 = stack
        .db
        .query_one(
            "SELECT id FROM pg2dns.rr WHERE rdata = 'also-not-an-ip'",
            &[],
        )
        .await?
        .get(0);
    let bad_ids = [bad_rdata.id, outside.id, mixed_bad];

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

    // Exactly the three bad rows are in pg2dns.rejected, each once.
    let rejected = wait_until(DNS_DEADLINE, "pg2dns.rejected holds three rows", || async {
        let rejected = stack.rejected().await?;
        Ok(if rejected.len() >= 3 {
            Check::Done(rejected)
        } else {
            Check::NotYet(format!("{rejected:?}"))
        })
    })
    .await?;
    let mut keys: Vec<&str> = rejected.iter().map(|r| r.row_key.as_str()).collect();
    keys.sort_unstable();
    let mut want: Vec<String> = bad_ids.iter().map(i64::to_string).collect();
    want.sort_unstable();
    ensure!(
        keys == want,
        "pg2dns.rejected must hold rows {want:?}, once each: {rejected:?}"
    );
    let find = |id: i64| -> Result<&Rejected> {
        rejected
            .iter()
            .find(|r| r.row_key == id.to_string())
            .with_context(|| format!("row {id} is not in pg2dns.rejected"))
    };

    let bad = find(bad_rdata.id)?;
    ensure!(
        bad.zone.as_deref() == Some(FORWARD)
            && bad.owner.as_deref() == Some("bad.example.test.")
            && bad
                .reason
                .contains("record data \"not-an-ip\" is not valid A"),
        "the rejection of unparsable rdata names the zone, the owner and the data: {bad:?}"
    );
    ensure!(
        bad_rdata.before < bad.lsn && bad.lsn <= bad_rdata.after,
        "the rejection's LSN {} is not its transaction's (between {} and {})",
        bad.lsn,
        bad_rdata.before,
        bad_rdata.after
    );

    let elsewhere = find(outside.id)?;
    ensure!(
        elsewhere.zone.is_none()
            && elsewhere.owner.as_deref() == Some("host.elsewhere.test.")
            && elsewhere
                .reason
                .contains("owner host.elsewhere.test. is in no configured zone"),
        "the rejection of a row outside every zone names the owner and says so: {elsewhere:?}"
    );
    ensure!(
        outside.before < elsewhere.lsn && elsewhere.lsn <= outside.after,
        "the rejection's LSN {} is not its transaction's (between {} and {})",
        elsewhere.lsn,
        outside.before,
        outside.after
    );

    let mixed = find(mixed_bad)?;
    ensure!(
        mixed.zone.as_deref() == Some(FORWARD)
            && mixed.owner.as_deref() == Some("mixed.example.test.")
            && mixed
                .reason
                .contains("record data \"also-not-an-ip\" is not valid AAAA"),
        "the rejection in a mixed transaction names the zone, the owner and the data: {mixed:?}"
    );
    ensure!(
        mixed_before < mixed.lsn && mixed.lsn <= mixed_after,
        "the rejection's LSN {} is not its transaction's (between {mixed_before} and {mixed_after})",
        mixed.lsn
    );
    pg2dns.assert_running()?;
    Ok(())
}

/// BIND answers an UPDATE that would make an RRset larger than any answer
/// can hold with SERVFAIL ("ran out of space"): sent, it would be resent
/// forever. The row that would make it so is refused instead, and the stream
/// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rrset_too_large_for_any_answer_is_refused_and_the_stream_goes_on() -> Result<()> {
    let stack = Stack::start("rrset-too-large", Primary::Bind).await?;
    let _pg2dns = stack.run()?;
    // About 40 kB each (157 strings of 255 bytes): one fits, two do not.
    let txt = |c: char| vec![format!("\"{}\"", c.to_string().repeat(255)); 157].join(" ");
    insert(
        &stack,
        &format!("('big.example.test.', 300, 'TXT', '{}')", txt('a')),
    )
    .await?;
    let second = insert(
        &stack,
        &format!("('big.example.test.', 300, 'TXT', '{}')", txt('b')),
    )
    .await?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('after.example.test.', 300, 'A', '192.0.2.81')")
        .await?;
    let good: Vec<_> = stack
        .table()
        .await?
        .into_iter()
        .filter(|row| row.id != second.id)
        .collect();
    stack
        .wait_until_dns_equals(&stack.expected(&good), DNS_DEADLINE)
        .await?;
    let rejected = stack.rejected_at_least(1, DNS_DEADLINE).await?;
    ensure!(
        rejected.len() == 1
            && rejected[0].row_key == second.id.to_string()
            && rejected[0]
                .reason
                .contains("more than the 65535 a DNS message can hold"),
        "the second TXT row is refused, naming the limit: {rejected:?}"
    );
    ensure!(
        second.before < rejected[0].lsn && rejected[0].lsn <= second.after,
        "the rejection's LSN is its transaction's"
    );
    Ok(())
}
