//! One row never stops the stream: what the DNS server refuses on its own
//! is narrowed down to its owner group, its row is rejected with the
//! server's answer, and everything else is published in order.
//!
//! On BIND: its primary-zone defaults refuse an MX whose in-zone target has
//! no address and an owner name with an underscore (`check-names`). Knot
//! makes neither check.

use anyhow::{ensure, Result};

use crate::harness::stack::{difference, FORWARD};
use crate::harness::{wait_until, Check, Primary, Stack, DNS_DEADLINE};

/// Waits until DNS holds the table minus the rejected rows, and returns the
/// rejected row ids.
async fn wait_until_dns_is_table_minus_rejected(stack: &Stack) -> Result<Vec<String>> {
    wait_until(
        DNS_DEADLINE,
        "DNS holds the table minus the rejected rows",
        || async {
            let rejected: Vec<String> = stack
                .rejected()
                .await?
                .into_iter()
                .map(|r| r.row_key)
                .collect();
            let rows: Vec<_> = stack
                .table()
                .await?
                .into_iter()
                .filter(|r| !rejected.contains(&r.id.to_string()))
                .collect();
            let expected = stack.expected(&rows);
            let dns = stack.dns().await?;
            Ok(if dns == expected {
                Check::Done(rejected)
            } else {
                Check::NotYet(format!(
                    "rejected {rejected:?}\n{}",
                    difference(&expected, &dns)
                ))
            })
        },
    )
    .await
}

async fn id_of(stack: &Stack, owner: &str, rtype: &str) -> Result<String> {
    let rows = stack.table().await?;
    let row = rows
        .iter()
        .find(|r| r.record.owner == owner && r.record.rtype == rtype)
        .ok_or_else(|| anyhow::anyhow!("no {rtype} row at {owner}"))?;
    Ok(row.id.to_string())
}

on_each_primary!(an_mx_committed_before_its_targets_address_ends_in_dns_without_touching_the_row,);

/// BIND refuses the MX while its in-zone target has no address (its
/// check-integrity); pg2dns keeps the row aside and publishes it right after
/// the address. Knot takes the MX at once. Either way DNS ends equal to the
/// table, and stays so when the address goes again.
async fn an_mx_committed_before_its_targets_address_ends_in_dns_without_touching_the_row(
    primary: Primary,
) -> Result<()> {
    let stack = Stack::start("mx-first", primary).await?;
    let pg2dns = stack.run()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('example.test.', 300, 'MX', '10 mail.example.test.')")
        .await?;
    if primary == Primary::Bind {
        // The MX goes alone (in one UPDATE with the address BIND would
        // accept both: it checks the message's end state) and is refused.
        let rejected = wait_until(
            DNS_DEADLINE,
            "the MX without an address is rejected",
            || async {
                let rejected = stack.rejected().await?;
                Ok(if rejected.is_empty() {
                    Check::NotYet("no rejected row".to_string())
                } else {
                    Check::Done(rejected)
                })
            },
        )
        .await?;
        let mx = id_of(&stack, "example.test.", "MX").await?;
        ensure!(
            rejected.len() == 1
                && rejected[0].row_key == mx
                && rejected[0].reason.contains("answered REFUSED")
                && rejected[0]
                    .reason
                    .contains("its target mail.example.test. has no address record"),
            "the MX row is rejected, waiting for its target: {rejected:?}"
        );
    } else {
        stack
            .wait_until_answers("example.test.", "MX", DNS_DEADLINE)
            .await?;
    }
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('mail.example.test.', 300, 'A', '192.0.2.25')")
        .await?;
    // Nobody touches the MX row: it is published after the address.
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    // The address goes: the server keeps the MX, as the database says.
    stack
        .exec("DELETE FROM pg2dns.rr WHERE owner = 'mail.example.test.'")
        .await?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('later.example.test.', 300, 'A', '192.0.2.26')")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    let log = pg2dns.log_tail(200);
    ensure!(
        log.contains("points at mail.example.test., which no longer has an address record"),
        "a warning names the dangling target; log:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refused_row_among_a_thousand_in_one_message_is_the_only_one_rejected() -> Result<()> {
    let stack = Stack::start("one-in-a-thousand", Primary::Bind).await?;
    // pg2dns leaves check-names to the server here, so that BIND refuses the
    // message and pg2dns must find the one row at fault.
    stack.set_zone_option(FORWARD, "check_names = \"ignore\"")?;
    let _pg2dns = stack.run()?;
    stack
        .exec(
            "BEGIN;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
               SELECT 'h' || g || '.example.test.', 300, 'A', '192.0.2.' || (g % 250 + 1)
               FROM generate_series(1, 500) AS g;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('bad_name.example.test.', 300, 'A', '192.0.2.99');
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
               SELECT 'k' || g || '.example.test.', 300, 'A', '192.0.2.' || (g % 250 + 1)
               FROM generate_series(1, 500) AS g;
             COMMIT;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('after.example.test.', 300, 'A', '192.0.2.100');",
        )
        .await?;
    let rejected = wait_until_dns_is_table_minus_rejected(&stack).await?;
    let bad = id_of(&stack, "bad_name.example.test.", "A").await?;
    ensure!(
        rejected == [bad],
        "only the underscore owner is rejected: {rejected:?}"
    );
    let dns = stack.dns().await?;
    let published: usize = dns.values().map(Vec::len).sum();
    ensure!(
        published == 1_001,
        "1,000 rows and the later one are in DNS, not {published}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_check_names_refuses_is_rejected_before_sending() -> Result<()> {
    let stack = Stack::start("check-names", Primary::Bind).await?;
    let _pg2dns = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('under_score.example.test.', 300, 'A', '192.0.2.7'),
               ('_dmarc.example.test.', 300, 'TXT', '\"v=DMARC1; p=none\"'),
               ('7.2.0.192.in-addr.arpa.', 300, 'PTR', 'host.example.test.')",
        )
        .await?;
    let rejected = wait_until_dns_is_table_minus_rejected(&stack).await?;
    let bad = id_of(&stack, "under_score.example.test.", "A").await?;
    ensure!(
        rejected == [bad],
        "only the A owner with an underscore: {rejected:?}"
    );
    let reason = &stack.rejected().await?[0].reason;
    ensure!(
        reason.contains("owner under_score.example.test.") && reason.contains("check-names"),
        "{reason}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_zone_does_not_allow_is_still_a_halt_with_the_policy_hint() -> Result<()> {
    let stack = Stack::start("not-allowed", Primary::Bind).await?;
    let key = stack
        .server(Primary::Bind)?
        .dir()
        .join(crate::harness::bind::NOT_ALLOWED_KEY_FILE);
    stack.write_config(&[(FORWARD, &key)])?;
    let mut pg2dns = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('a.example.test.', 300, 'A', '192.0.2.1'),
               ('b.example.test.', 300, 'A', '192.0.2.2')",
        )
        .await?;
    // Narrowed down to one group, then the probe is refused too: policy.
    let status = pg2dns.wait_exit(DNS_DEADLINE).await?;
    ensure!(!status.success(), "pg2dns exited with {status}");
    let log = pg2dns.log();
    ensure!(
        log.contains("answered REFUSED") && log.contains("allow-update/update-policy"),
        "the halt names the refusal and the policy to check; log:\n{log}"
    );
    ensure!(
        stack.rejected().await?.is_empty(),
        "no row is blamed for the key's policy"
    );
    Ok(())
}
