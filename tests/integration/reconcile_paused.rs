//! `pg2dns reconcile` while an operator has paused the service (`pg2dns
//! pause`): DNS is compared with pg2dns's row state as of the pause, so rows
//! committed during the pause are not differences; `--apply` repairs DNS to
//! that state, leaves the row state alone and the service paused; `pg2dns
//! resume` then delivers what was committed meanwhile.

use anyhow::{ensure, Context, Result};

use crate::harness::stack::{ZoneRecords, FORWARD, REVERSE};
use crate::harness::wait::{wait_until, Check};
use crate::harness::{Primary, Stack, DNS_DEADLINE};
use crate::reconcile::{lines, report, zone};

on_each_primary!(
    reconcile_during_an_operators_pause_compares_as_of_the_pause_and_apply_keeps_it_paused,
);

/// What DNS should hold for the table now: `multi.example.test.`'s A RRset
/// has rows of TTL 300 and 600, published at the smaller.
async fn expected(stack: &Stack) -> Result<ZoneRecords> {
    let mut expected = stack.expected(&stack.table().await?);
    for records in expected.values_mut() {
        for r in records.iter_mut() {
            if r.owner == "multi.example.test." {
                r.ttl = 300;
            }
        }
        records.sort();
        records.dedup();
    }
    Ok(expected)
}

/// `pg2dns.mode`'s mode and LSN for the stack's slot.
async fn mode(stack: &Stack) -> Result<(String, String)> {
    let row = stack
        .db
        .query_one(
            "SELECT mode, coalesce(lsn::text, '') FROM pg2dns.mode WHERE slot = 'pg2dns'",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

async fn reconcile_during_an_operators_pause_compares_as_of_the_pause_and_apply_keeps_it_paused(
    primary: Primary,
) -> Result<()> {
    let stack = Stack::start("reconcile-paused", primary).await?;
    let _pg2dns = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('www.example.test.', 300, 'A', '192.0.2.10'),
               ('gone.example.test.', 300, 'A', '192.0.2.30'),
               ('multi.example.test.', 600, 'A', '192.0.2.42'),
               ('multi.example.test.', 300, 'A', '192.0.2.41'),
               ('10.2.0.192.in-addr.arpa.', 300, 'PTR', 'www.example.test.')",
        )
        .await?;
    stack
        .wait_until_dns_equals(&expected(&stack).await?, DNS_DEADLINE)
        .await?;

    let out = stack
        .admin(&["pause", "--wait", "--reason", "maintenance"])
        .await?;
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    let pause_lsn = printed
        .strip_prefix("paused at ")
        .and_then(|rest| rest.split(':').next())
        .with_context(|| format!("pause --wait printed {printed:?}"))?
        .to_owned();
    let state_at_pause = stack.row_state().await?;

    // Committed during the pause: neither reaches DNS while paused.
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('paused.example.test.', 300, 'A', '192.0.2.50');
             DELETE FROM pg2dns.rr WHERE owner = 'gone.example.test.'",
        )
        .await?;

    // In sync as of the pause: the two changes are not differences.
    let output = stack.reconcile(&[], &[]).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.code() == Some(0),
        "a reconcile during the pause must find DNS in sync as of the pause (exit {:?}):\n{stdout}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        stdout.contains(&format!(
            "compared as of the pause at {pause_lsn} (pg2dns's row state)"
        )),
        "the report names the pause's LSN: {stdout}"
    );
    ensure!(
        stdout.contains(&format!("{FORWARD}: in sync"))
            && stdout.contains(&format!("{REVERSE}: in sync")),
        "both zones in sync: {stdout}"
    );

    // A change behind pg2dns's back during the pause is exactly the drift.
    stack
        .server(primary)?
        .nsupdate(
            "update add rogue.example.test. 300 A 192.0.2.99\n\
             update delete www.example.test. A 192.0.2.10",
        )
        .await?;
    let (code, json) = report(&stack.reconcile(&["--json"], &[]).await?)?;
    ensure!(code == 1, "the drift must exit 1, got {code}: {json:#}");
    ensure!(
        json["as_of_pause"]["lsn"] == pause_lsn.as_str(),
        "the JSON report names the pause at {pause_lsn}: {json:#}"
    );
    let forward = zone(&json, FORWARD)?;
    ensure!(
        lines(&forward["missing"]) == vec!["www.example.test. 300 A 192.0.2.10"],
        "missing: {:?}",
        lines(&forward["missing"])
    );
    ensure!(
        lines(&forward["extra"]) == vec!["rogue.example.test. 300 A 192.0.2.99"],
        "extra: {:?}",
        lines(&forward["extra"])
    );
    ensure!(
        lines(&forward["ttl"]).is_empty(),
        "no TTL difference (multi's RRset is at its smallest TTL): {:?}",
        lines(&forward["ttl"])
    );
    ensure!(zone(&json, REVERSE)?["in_sync"] == true, "{json:#}");

    // --apply repairs the drift only, and the service stays paused.
    let (code, json) = report(&stack.reconcile(&["--json", "--apply"], &[]).await?)?;
    ensure!(code == 0, "--apply must leave the zones in sync: {json:#}");
    ensure!(zone(&json, FORWARD)?["in_sync_after"] == true, "{json:#}");
    ensure!(
        stack.query("www.example.test.", "A").await?.len() == 1
            && stack.query("rogue.example.test.", "A").await?.is_empty(),
        "the drift is repaired"
    );
    ensure!(
        stack.query("paused.example.test.", "A").await?.is_empty(),
        "the row inserted during the pause was published by the repair"
    );
    ensure!(
        stack.query("gone.example.test.", "A").await?.len() == 1,
        "the row deleted during the pause left DNS with the repair"
    );
    ensure!(
        mode(&stack).await? == ("paused".to_owned(), pause_lsn.clone()),
        "the service must stay paused at {pause_lsn}: {:?}",
        mode(&stack).await?
    );
    ensure!(
        stack.row_state().await? == state_at_pause,
        "the repair must not rewrite the row state (it is the desired side)"
    );

    // Resume: the paused insert arrives, the paused delete leaves.
    stack.admin(&["resume"]).await?;
    stack
        .wait_until_dns_equals(&expected(&stack).await?, DNS_DEADLINE)
        .await?;
    wait_until(DNS_DEADLINE, "pg2dns.mode says running", || async {
        let (mode, lsn) = mode(&stack).await?;
        Ok(if mode == "running" {
            Check::Done(())
        } else {
            Check::NotYet(format!("{mode} at {lsn}"))
        })
    })
    .await?;
    let (code, json) = report(&stack.reconcile(&["--json"], &[]).await?)?;
    ensure!(
        code == 0 && json["as_of_pause"].is_null(),
        "after the resume a reconcile compares the tables and finds them in sync: {json:#}"
    );
    Ok(())
}

/// A paused service (paused by an operator, with a row committed during the
/// pause) and a record added behind its back, so that `reconcile --apply`
/// has a repair to wait before (the test hook), holding the pause.
async fn paused_service_with_a_stray_record(
    label: &str,
) -> Result<(Stack, crate::harness::Pg2dns, tokio::process::Child)> {
    let stack = Stack::start(label, Primary::Bind).await?;
    let run = stack.run()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('www.example.test.', 300, 'A', '192.0.2.10')")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    stack.admin(&["pause", "--wait"]).await?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('paused.example.test.', 300, 'A', '192.0.2.50')")
        .await?;
    stack
        .server(Primary::Bind)?
        .nsupdate("update add stray.example.test. 300 A 192.0.2.99")
        .await?;
    let mut reconcile = crate::reconcile::spawn_reconcile(
        &stack,
        &["--apply"],
        &[("PG2DNS_TEST_PAUSE_BEFORE_REPAIR_MS", "600000")],
    )?;
    crate::reconcile::read_until(&mut reconcile, "before the repair").await?;
    Ok((stack, run, reconcile))
}

/// SIGTERM to the reconcile and its exit status and the rest of its stderr.
async fn terminate(reconcile: &mut tokio::process::Child) -> Result<(Option<i32>, String)> {
    let pid = reconcile.id().context("no pid")?;
    crate::harness::signal(pid, "TERM")?;
    let status =
        tokio::time::timeout(std::time::Duration::from_secs(60), reconcile.wait()).await??;
    let mut rest = String::new();
    if let Some(mut stderr) = reconcile.stderr.take() {
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut rest).await?;
    }
    Ok((status.code(), rest))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_interrupted_during_an_operators_pause_leaves_the_service_paused() -> Result<()>
{
    let (stack, _run, mut reconcile) = paused_service_with_a_stray_record("paused-term").await?;
    let (_, lsn) = mode(&stack).await?;
    let (code, rest) = terminate(&mut reconcile).await?;
    ensure!(
        code == Some(143),
        "reconcile exits 143 after SIGTERM: {code:?}\n{rest}"
    );
    ensure!(
        !rest.contains("resumed"),
        "a reconcile that found the service paused must not resume it:\n{rest}"
    );
    ensure!(
        mode(&stack).await? == ("paused".to_owned(), lsn.clone()),
        "still paused at {lsn}: {:?}",
        mode(&stack).await?
    );
    let newest: String = stack
        .db
        .query_one(
            "SELECT action FROM pg2dns.control WHERE slot = 'pg2dns' ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?
        .get(0);
    ensure!(
        newest == "pause",
        "reconcile made no control request (the operator's pause is the newest): {newest}"
    );
    ensure!(
        stack.query("paused.example.test.", "A").await?.is_empty(),
        "the row committed during the pause reached DNS"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_asked_while_reconcile_holds_an_operators_pause_takes_effect_when_it_ends(
) -> Result<()> {
    let (stack, _run, mut reconcile) = paused_service_with_a_stray_record("paused-resume").await?;
    stack.admin(&["resume"]).await?;
    // The resumed service's first write (its mode: running) waits for the
    // reconcile's lock on the pg2dns.mode row.
    wait_until(
        DNS_DEADLINE,
        "the resumed service to wait for the reconcile's lock on pg2dns.mode",
        || async {
            let waiting: i64 = stack
                .db
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity a \
                     WHERE a.wait_event_type = 'Lock' AND a.query LIKE '%pg2dns.mode%'",
                    &[],
                )
                .await?
                .get(0);
            Ok(if waiting > 0 {
                Check::Done(())
            } else {
                Check::NotYet(format!("mode {:?}", mode(&stack).await?))
            })
        },
    )
    .await?;
    ensure!(
        mode(&stack).await?.0 == "paused",
        "the service ran while reconcile held the pause: {:?}",
        mode(&stack).await?
    );
    ensure!(
        stack.query("paused.example.test.", "A").await?.is_empty(),
        "the row committed during the pause reached DNS while reconcile held the pause"
    );
    let (code, rest) = terminate(&mut reconcile).await?;
    ensure!(
        code == Some(143),
        "reconcile exits 143 after SIGTERM: {code:?}\n{rest}"
    );
    // Once the reconcile is gone, the resume takes effect.
    stack
        .wait_until_answers("paused.example.test.", "A", DNS_DEADLINE)
        .await?;
    wait_until(DNS_DEADLINE, "pg2dns.mode says running", || async {
        let (mode, lsn) = mode(&stack).await?;
        Ok(if mode == "running" {
            Check::Done(())
        } else {
            Check::NotYet(format!("{mode} at {lsn}"))
        })
    })
    .await?;
    Ok(())
}
