//! Outages of either server delay changes but lose none: pg2dns keeps
//! retrying and catches up when the server is back.

use std::time::Duration;

use anyhow::Result;

use crate::harness::{Primary, Stack, DNS_DEADLINE, RECOVERY_DEADLINE};

on_each_primary!(changes_made_while_the_primary_is_down_arrive_when_it_returns);

async fn changes_made_while_the_primary_is_down_arrive_when_it_returns(
    primary: Primary,
) -> Result<()> {
    let mut stack = Stack::start("outage", primary).await?;
    let mut pg2dns = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('before.example.test.', 300, 'A', '192.0.2.1'),
               ('doomed.example.test.', 300, 'A', '192.0.2.2')",
        )
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;

    stack.server_mut(primary)?.stop().await?;
    for i in 1..=15 {
        stack
            .exec(&format!(
                "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
                   ('during{i}.example.test.', 300, 'A', '192.0.2.{}'),
                   ('{}.2.0.192.in-addr.arpa.', 300, 'PTR', 'during{i}.example.test.')",
                100 + i,
                100 + i
            ))
            .await?;
        if i == 5 {
            stack
                .exec(
                    "UPDATE pg2dns.rr SET rdata = '192.0.2.99', ttl = 60 WHERE owner = 'before.example.test.';
                     DELETE FROM pg2dns.rr WHERE owner = 'doomed.example.test.';",
                )
                .await?;
        }
        // Pacing, not a wait: the writes spread over the outage, so pg2dns
        // retries while changes keep coming.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    pg2dns.assert_running()?;

    // Same port, same zone files and journals.
    stack.server_mut(primary)?.start_again().await?;
    stack
        .wait_until_dns_matches_table(RECOVERY_DEADLINE)
        .await?;
    pg2dns.assert_running()?;

    // And the stream goes on as usual afterwards.
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('after.example.test.', 300, 'A', '192.0.2.200')")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_resumes_after_postgresql_restarts() -> Result<()> {
    let mut stack = Stack::start("pg-restart", Primary::Bind).await?;
    let mut pg2dns = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('before.example.test.', 300, 'A', '192.0.2.1'),
               ('1.2.0.192.in-addr.arpa.', 300, 'PTR', 'before.example.test.')",
        )
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;

    stack.restart_postgres().await?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('after.example.test.', 300, 'A', '192.0.2.2');
             UPDATE pg2dns.rr SET rdata = '192.0.2.3' WHERE owner = 'before.example.test.';
             DELETE FROM pg2dns.rr WHERE type = 'PTR';",
        )
        .await?;
    stack
        .wait_until_dns_matches_table(RECOVERY_DEADLINE)
        .await?;
    pg2dns.assert_running()?;
    Ok(())
}
