//! What the replication stream throws at pg2dns besides plain rows: an idle
//! slot, a schema change in mid-stream, and unchanged TOAST values.

use std::time::Duration;

use anyhow::{bail, ensure, Result};

use crate::harness::stack::FORWARD;
use crate::harness::{wait_until, Check, Pg2dns, Primary, Record, Stack, DNS_DEADLINE};

/// A stack with pg2dns running that has already sent one row,
/// a.example.test A 192.0.2.1.
async fn streaming_one_row(label: &str) -> Result<(Stack, Pg2dns)> {
    let stack = Stack::start(label, Primary::Bind).await?;
    let pg2dns = stack.run()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('a.example.test.', 300, 'A', '192.0.2.1')")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    Ok((stack, pg2dns))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_slot_moves_past_writes_to_unpublished_tables() -> Result<()> {
    let (stack, _pg2dns) = streaming_one_row("idle-slot").await?;
    // Writes pg2dns does not publish: PostgreSQL sends no transaction for
    // them, so only keepalives can tell pg2dns the slot may move on.
    stack
        .exec(
            "CREATE TABLE unrelated (id int);
             INSERT INTO unrelated SELECT generate_series(1, 10000);",
        )
        .await?;
    let written = stack.current_wal_lsn().await?;
    let what =
        format!("the slot's confirmed_flush_lsn reaches {written}: an idle slot must not pin WAL");
    wait_until(Duration::from_secs(30), &what, || async {
        let confirmed = stack.confirmed_flush_lsn().await?;
        if confirmed >= written {
            return Ok(Check::Done(()));
        }
        // Keep WAL moving so the server has something to report.
        stack.exec("SELECT pg_switch_wal()").await.ok();
        Ok(Check::NotYet(format!("the slot at {confirmed}")))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_to_the_records_table_mid_stream_changes_nothing() -> Result<()> {
    let (stack, _pg2dns) = streaming_one_row("add-column").await?;
    // A new Relation message arrives before the next change.
    stack
        .exec(
            "ALTER TABLE pg2dns.rr ADD COLUMN note text;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata, note) VALUES ('b.example.test.', 300, 'A', '192.0.2.2', 'new');
             UPDATE pg2dns.rr SET rdata = '192.0.2.3', note = 'moved' WHERE owner = 'a.example.test.';",
        )
        .await?;
    let dns = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(dns[FORWARD].len() == 2, "{:?}", dns[FORWARD]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_update_of_a_row_with_a_toasted_rdata_keeps_the_data() -> Result<()> {
    let stack = Stack::start("toast", Primary::Bind).await?;
    let _pg2dns = stack.run()?;
    // Nine 250-character strings: about 2.3 KB, stored uncompressed
    // (EXTERNAL), so over PostgreSQL's TOAST threshold of about 2 KB, yet
    // under the 2.7 KB a btree entry of the unique index may take.
    stack
        .exec(
            "ALTER TABLE pg2dns.rr ALTER COLUMN rdata SET STORAGE EXTERNAL;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             SELECT 'big.example.test.', 300, 'TXT',
                    string_agg('\"' || substr(repeat(md5(g::text), 8), 1, 250) || '\"', ' ')
             FROM generate_series(1, 9) AS g;",
        )
        .await?;
    let before = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(before[FORWARD].len() == 1, "{:?}", before[FORWARD]);
    let toasted = stack
        .db
        .query_one("SELECT octet_length(rdata) > 2100 FROM pg2dns.rr", &[])
        .await?;
    ensure!(
        toasted.get::<_, bool>(0),
        "the test row is too small to be TOASTed"
    );
    // pgoutput sends rdata as "unchanged TOAST": pg2dns takes it from its state.
    stack
        .exec("UPDATE pg2dns.rr SET ttl = 900 WHERE owner = 'big.example.test.'")
        .await?;
    let after = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    let Some(record) = after[FORWARD].first() else {
        bail!("the record left DNS");
    };
    ensure!(
        *record
            == Record {
                ttl: 900,
                ..before[FORWARD][0].clone()
            },
        "the TTL changed and the data stayed: {record:?}"
    );
    let rejected = stack.rejected().await?;
    ensure!(rejected.is_empty(), "{rejected:?}");
    Ok(())
}

/// `'"…" "…"'`: `strings` character-strings of 255 bytes each, distinct per
/// `seed`, in zone-file form.
fn long_txt(seed: &str, strings: usize) -> String {
    (0..strings)
        .map(|i| {
            let text: String = format!("{seed}-{i}-")
                .chars()
                .chain(std::iter::repeat('x'))
                .take(255)
                .collect();
            format!("\"{text}\"")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txt_records_of_10_and_60_kilobytes_are_stored_in_pg2dns_rr_and_published_and_a_duplicate_is_still_refused(
) -> Result<()> {
    let (stack, _pg2dns) = streaming_one_row("txt-size").await?;
    // 40 and 235 strings of 255 bytes: 10,240 and 60,160 bytes of rdata,
    // far past the 2,704 bytes a btree entry (schema version 1's unique
    // index) could hold.
    let ten = long_txt("ten", 40);
    let sixty = long_txt("sixty", 235);
    stack
        .db
        .execute(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('ten.example.test.', 300, 'TXT', $1), ('sixty.example.test.', 300, 'TXT', $2)",
            &[&ten, &sixty],
        )
        .await?;
    // An AXFR (over TCP) holds exactly what the table says.
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    // And a query (answered over TCP: the answers do not fit a UDP reply).
    for (owner, rdata) in [("ten.example.test.", &ten), ("sixty.example.test.", &sixty)] {
        let answer = stack.query(owner, "TXT").await?;
        ensure!(
            answer == vec![Record::new(owner, 300, "TXT", rdata)],
            "{owner} TXT answered {} records, not the row's",
            answer.len()
        );
    }
    // The same (owner, type, rdata) twice is still refused, however long.
    let duplicate = stack
        .db
        .execute(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('sixty.example.test.', 600, 'TXT', $1)",
            &[&sixty],
        )
        .await;
    let Err(e) = duplicate else {
        bail!("a second row with the same owner, type and rdata was accepted");
    };
    ensure!(
        e.code() == Some(&tokio_postgres::error::SqlState::EXCLUSION_VIOLATION),
        "the duplicate must be refused by the uniqueness constraint: {e}"
    );
    // A different rdata of the same length, owner and type is no duplicate.
    // (Not at `sixty`: BIND holds at most about 64 kB per RRset.)
    let other = long_txt("teo", 40);
    stack
        .db
        .execute(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('ten.example.test.', 300, 'TXT', $1)",
            &[&other],
        )
        .await?;
    let dns = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(dns[FORWARD].len() == 4, "{}", dns[FORWARD].len());
    ensure!(stack.rejected().await?.is_empty());
    Ok(())
}
