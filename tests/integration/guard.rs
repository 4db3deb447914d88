//! The mass-delete guard: a transaction deleting most of a zone (a
//! `DELETE FROM` without `WHERE`, a `TRUNCATE`) halts pg2dns before anything
//! of it reaches DNS, stays held across a restart, and is applied once an
//! operator releases that one transaction with `pg2dns resume
//! --allow-mass-delete`.

use anyhow::{ensure, Context, Result};

use crate::harness::stack::{difference, FORWARD};
use crate::harness::{wait_until, Check, Primary, Stack, DNS_DEADLINE};

/// `pg2dns status --json` as a JSON value.
async fn status(stack: &Stack) -> Result<serde_json::Value> {
    let out = stack.admin(&["status", "--json"]).await?;
    serde_json::from_slice(&out.stdout).context("status --json")
}

/// Waits until `status` says halted by the mass-delete guard with a reason
/// other than `not`, and returns the status.
async fn wait_for_held(stack: &Stack, not: &str) -> Result<serde_json::Value> {
    wait_until(
        DNS_DEADLINE,
        "status to say a mass delete is held",
        || async {
            let s = status(stack).await?;
            let reason = s["reason"].as_str().unwrap_or_default();
            Ok(
                if s["mode"] == "halted" && reason.contains("mass delete held") && reason != not {
                    Check::Done(s)
                } else {
                    Check::NotYet(s.to_string())
                },
            )
        },
    )
    .await
}

/// Inserts `n` A rows `{prefix}{i}.example.test.` in one transaction.
async fn insert_hosts(stack: &Stack, prefix: &str, n: i32) -> Result<()> {
    stack
        .db
        .execute(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             SELECT $1 || g || '.example.test.', 300, 'A', '192.0.2.' || g
             FROM generate_series(1, $2) AS g",
            &[&prefix, &n],
        )
        .await?;
    Ok(())
}

/// The LSN a held mass delete names (`… committed at LSN X would …`).
fn held_lsn(status: &serde_json::Value) -> Result<String> {
    let reason = status["reason"].as_str().unwrap_or_default();
    reason
        .split("at LSN ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .with_context(|| format!("no LSN in the reason {reason:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_from_of_most_of_a_zone_is_held_across_a_restart_until_released_and_then_applied(
) -> Result<()> {
    let stack = Stack::start("guard-delete", Primary::Bind).await?;
    let mut pg2dns = stack.run_as_service()?;
    insert_hosts(&stack, "w", 20).await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;

    // A delete of 4 of 20 records (20 %) is no mass delete.
    stack
        .exec("DELETE FROM pg2dns.rr WHERE owner IN ('w1.example.test.', 'w2.example.test.', 'w3.example.test.', 'w4.example.test.')")
        .await?;
    let before = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(before[FORWARD].len() == 16, "{:?}", before[FORWARD]);

    // DELETE FROM of every host: 16 of the zone's 16 records.
    stack
        .exec("DELETE FROM pg2dns.rr WHERE owner LIKE 'w%'")
        .await?;
    // A later transaction waits behind it.
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('later.example.test.', 300, 'A', '192.0.2.99')")
        .await?;
    let held = wait_for_held(&stack, "").await?;
    let reason = held["reason"].as_str().unwrap_or_default();
    let hint = held["hint"].as_str().unwrap_or_default();
    ensure!(
        reason.contains("16 of the 16 records of zone example.test."),
        "the reason must name the zone and the counts: {reason}"
    );
    ensure!(
        hint.contains("pg2dns resume --allow-mass-delete"),
        "the hint must say how to release it: {hint}"
    );
    let lsn = held_lsn(&held)?;
    ensure!(
        held["mode_lsn"] == lsn.as_str(),
        "status must give the held transaction's LSN: {held}"
    );
    let dns = stack.dns().await?;
    ensure!(
        dns == before,
        "nothing of a held mass delete may reach DNS:\n{}",
        difference(&before, &dns)
    );

    // A restart while halted stays halted: the transaction is held again.
    pg2dns.kill()?;
    let mut pg2dns = stack.run_as_service()?;
    wait_until(
        DNS_DEADLINE,
        "the restarted pg2dns holds the mass delete again",
        || {
            let log = pg2dns.log();
            async move {
                Ok(if log.contains("mass delete held") {
                    Check::Done(())
                } else {
                    Check::NotYet(log.lines().last().unwrap_or_default().to_owned())
                })
            }
        },
    )
    .await?;
    let again = wait_for_held(&stack, "").await?;
    ensure!(held_lsn(&again)? == lsn, "{again}");
    let dns = stack.dns().await?;
    ensure!(dns == before, "{}", difference(&before, &dns));

    // The release applies the deletes, then what came after.
    let out = stack.admin(&["resume", "--allow-mass-delete"]).await?;
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        printed.contains("mass delete released") && printed.contains(&lsn),
        "resume --allow-mass-delete printed {printed:?}"
    );
    let after = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(after[FORWARD].len() == 1, "{:?}", after[FORWARD]);
    pg2dns.assert_running()?;

    // The release was for that transaction only: the next mass delete is
    // held too.
    insert_hosts(&stack, "v", 12).await?;
    let full = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    stack
        .exec("DELETE FROM pg2dns.rr WHERE owner LIKE 'v%'")
        .await?;
    let next = wait_for_held(&stack, reason).await?;
    ensure!(
        next["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("12 of the 13 records of zone example.test."),
        "{next}"
    );
    ensure!(held_lsn(&next)? != lsn);
    let dns = stack.dns().await?;
    ensure!(dns == full, "{}", difference(&full, &dns));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_of_a_large_table_is_held_until_released_and_then_empties_its_records(
) -> Result<()> {
    let stack = Stack::start("guard-truncate", Primary::Bind).await?;
    let mut pg2dns = stack.run_as_service()?;
    insert_hosts(&stack, "t", 20).await?;
    let before = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(before[FORWARD].len() == 20, "{:?}", before[FORWARD]);

    stack.exec("TRUNCATE pg2dns.rr").await?;
    let held = wait_for_held(&stack, "").await?;
    ensure!(
        held["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("20 of the 20 records of zone example.test."),
        "{held}"
    );
    let dns = stack.dns().await?;
    ensure!(
        dns == before,
        "a held TRUNCATE must leave DNS alone:\n{}",
        difference(&before, &dns)
    );

    stack.admin(&["resume", "--allow-mass-delete"]).await?;
    // Empty zones, not "whatever the table says": all 20 must go.
    stack
        .wait_until_dns_equals(&stack.expected(&[]), DNS_DEADLINE)
        .await
        .context("the released TRUNCATE must remove every record")?;
    stack
        .row_state_when(|s| s.is_empty(), DNS_DEADLINE)
        .await
        .context("the row state must be empty too")?;
    // The stream goes on.
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('next.example.test.', 300, 'A', '192.0.2.1')")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    pg2dns.assert_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_delete_larger_than_one_batch_is_held_before_any_part_of_it_is_sent() -> Result<()> {
    // 6,000 row changes: pg2dns plans such a transaction in parts (4,000
    // changes, then the rest). With a limit of 5,000 deletes, the first part
    // alone is under it: only the whole transaction is over.
    let stack = Stack::start("guard-large", Primary::Bind).await?;
    stack.append_config("[guard]\nmax_delete_share = 1.0\nmax_delete_records = 5000\n")?;
    let mut pg2dns = stack.run_as_service()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             SELECT 'h' || g || '.example.test.', 300, 'A', '192.0.2.1'
             FROM generate_series(1, 6000) AS g",
        )
        .await?;
    let before = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(before[FORWARD].len() == 6000, "{}", before[FORWARD].len());

    stack.exec("DELETE FROM pg2dns.rr").await?;
    let held = wait_for_held(&stack, "").await?;
    ensure!(
        held["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("6000 of the 6000 records of zone example.test."),
        "{held}"
    );
    let dns = stack.dns().await?;
    ensure!(
        dns == before,
        "no part of a held transaction may reach DNS: {} records left of 6000",
        dns[FORWARD].len()
    );

    stack.admin(&["resume", "--allow-mass-delete"]).await?;
    stack
        .wait_until_dns_equals(&stack.expected(&[]), DNS_DEADLINE)
        .await
        .context("the released mass delete must remove all 6,000 records")?;
    pg2dns.assert_running()?;
    Ok(())
}
