//! `setup`'s first load and `reconcile` transfer and repair several zones of
//! a server at once (`reconcile::TRANSFERS_PER_SERVER`), below BIND's
//! `transfers-out` quota (10): with hundreds of zones on BIND at its
//! defaults, the load and the report are exact, and nothing is refused.

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};

use crate::harness::{Primary, Stack};
use crate::many_zones::{every_zone_equals_the_table, zone_name};
use crate::reconcile::{lines, report, zone};

/// The zones of the test.
const ZONES: usize = 300;

/// Runs `pg2dns ARGS… -c CONFIG` and returns its exit code and output.
async fn pg2dns(stack: &Stack, args: &[&str]) -> Result<(i32, String)> {
    let output = stack.admin(args).await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.code().context("pg2dns was killed")?, text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_zones_are_loaded_and_reconciled_exactly_with_transfers_in_parallel(
) -> Result<()> {
    let names: Vec<String> = (0..ZONES).map(zone_name).collect();
    let zones: Vec<(&str, Primary)> = names.iter().map(|z| (z.as_str(), Primary::Bind)).collect();
    let stack = Stack::start_split("reconcile-many-zones", &zones).await?;
    let server = stack.server(Primary::Bind)?;

    // Rows in every zone, committed while no slot exists: only setup's
    // first load can publish them. Two records per zone, one with a
    // quoted, escaped UTF-8 TXT.
    stack
        .exec(&format!(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) \
             SELECT 'h.z' || lpad(i::text, 4, '0') || '.many.test.', 300, 'A', '192.0.2.' || (i % 250 + 1) \
             FROM generate_series(0, {last}) AS i;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) \
             SELECT 'Txt.z' || lpad(i::text, 4, '0') || '.many.test.', 600, 'TXT', '\"zone ' || i || ' \\\"é\\\" \\\\ ok\"' \
             FROM generate_series(0, {last}) AS i",
            last = ZONES - 1
        ))
        .await?;
    stack
        .exec("SELECT pg_drop_replication_slot('pg2dns')")
        .await?;
    let (code, text) = pg2dns(&stack, &["setup", "--recreate-slot"]).await?;
    ensure!(code == 0, "setup --recreate-slot failed ({code}):\n{text}");
    every_zone_equals_the_table(&stack)
        .await
        .context("after setup's first load")?;

    // In sync right after the load.
    let (code, json) = report(&stack.reconcile(&["--json"], &[]).await?)?;
    ensure!(code == 0, "zones out of sync after the load: {json:#}");

    // Drift behind pg2dns in every third zone: a stray record added in
    // one, a published record deleted in the next, a TTL changed in the
    // third.
    let mut script = String::new();
    let mut drifted = BTreeSet::new();
    for i in (0..ZONES).step_by(3) {
        let z = zone_name(i);
        let change = match (i / 3) % 3 {
            0 => format!("update add stray.{z} 300 A 198.51.100.{}", i % 250 + 1),
            1 => format!("update delete h.{z} A 192.0.2.{}", i % 250 + 1),
            _ => format!(
                "update delete h.{z} A 192.0.2.{n}\nupdate add h.{z} 900 A 192.0.2.{n}",
                n = i % 250 + 1
            ),
        };
        script.push_str(&format!("zone {z}\n{change}\nsend\n"));
        drifted.insert(i);
    }
    server.nsupdate(&script).await?;

    let (code, json) = report(&stack.reconcile(&["--json"], &[]).await?)?;
    ensure!(code == 1, "drift must exit 1, got {code}: {json:#}");
    let reported: Vec<&str> = json["zones"]
        .as_array()
        .context("no zones in the report")?
        .iter()
        .filter_map(|z| z["zone"].as_str())
        .collect();
    ensure!(
        reported == names.iter().map(String::as_str).collect::<Vec<_>>(),
        "the report does not list the zones in configuration order: {reported:?}"
    );
    for (i, z) in names.iter().enumerate() {
        let part = zone(&json, z)?;
        ensure!(part["error"].is_null(), "{z}: {part:#}");
        let n = i % 250 + 1;
        let (missing, extra, ttl): (Vec<String>, Vec<String>, Vec<String>) =
            if !drifted.contains(&i) {
                (vec![], vec![], vec![])
            } else {
                match (i / 3) % 3 {
                    0 => (
                        vec![],
                        vec![format!("stray.{z} 300 A 198.51.100.{n}")],
                        vec![],
                    ),
                    1 => (vec![format!("h.{z} 300 A 192.0.2.{n}")], vec![], vec![]),
                    _ => (
                        vec![],
                        vec![],
                        vec![format!("h.{z} 300 A 192.0.2.{n} (DNS: 900)")],
                    ),
                }
            };
        ensure!(
            lines(&part["missing"]) == missing
                && lines(&part["extra"]) == extra
                && lines(&part["ttl"]) == ttl,
            "{z}: expected missing {missing:?}, extra {extra:?}, ttl {ttl:?}; reported {part:#}"
        );
        ensure!(
            part["in_sync"] == !drifted.contains(&i),
            "{z}: in_sync is wrong: {part:#}"
        );
    }

    let (code, json) = report(&stack.reconcile(&["--json", "--apply"], &[]).await?)?;
    ensure!(code == 0, "--apply must leave every zone in sync: {json:#}");
    for z in &names {
        let part = zone(&json, z)?;
        ensure!(
            part["in_sync_after"] == true && part["error"].is_null(),
            "{z}: {part:#}"
        );
    }
    every_zone_equals_the_table(&stack)
        .await
        .context("after reconcile --apply")?;
    let (code, json) = report(&stack.reconcile(&["--json"], &[]).await?)?;
    ensure!(
        code == 0,
        "a second run must find every zone in sync: {json:#}"
    );

    // The stream goes on from the state the load and the repair wrote.
    let mut run = stack.run()?;
    stack
        .exec(&format!(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('later.{}', 300, 'A', '192.0.2.77')",
            zone_name(ZONES - 1)
        ))
        .await?;
    let zone = zone_name(ZONES - 1);
    crate::harness::wait_until(
        crate::harness::DNS_DEADLINE,
        "the stream publishes the later row",
        || async {
            let table = stack.expected_in(&stack.table().await?, std::slice::from_ref(&zone));
            let dns = stack.dns_in(std::slice::from_ref(&zone)).await?;
            Ok(if table == dns {
                crate::harness::Check::Done(())
            } else {
                crate::harness::Check::NotYet(format!("table {table:?}, DNS {dns:?}"))
            })
        },
    )
    .await?;
    run.assert_running()?;

    // BIND refused no transfer (its transfers-out quota is 10).
    let log = std::fs::read_to_string(server.dir().join(format!("{}.log", server.program())))?;
    ensure!(
        !log.to_lowercase().contains("quota"),
        "BIND logged a quota:{}",
        server.report()
    );
    Ok(())
}
