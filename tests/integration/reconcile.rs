//! `pg2dns reconcile`: records changed behind pg2dns's back are reported
//! exactly, `--apply` repairs them and the stream goes on from the repaired
//! state; the safety threshold; a zone changed between the transfer and the
//! repair makes the SOA prerequisite fail and the repair start again;
//! excluded names and types; rows waiting for an address; DNSSEC records;
//! exact under writers; the first deployment.
//!
//! Most scenarios stop `pg2dns run` before reconciling, to compare a state
//! they know; `reconcile_while_writers_commit_finds_no_false_difference`
//! covers the exact pause of a running service.

use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::faults::workload::Writer;
use crate::harness::stack::{FORWARD, REVERSE};
use crate::harness::{Primary, Stack, DNS_DEADLINE};

on_each_primary!(
    records_changed_behind_pg2dns_are_reported_repaired_and_the_stream_goes_on,
    thousands_of_unpublished_rows_are_loaded_in_several_guarded_messages,
);

/// The exit code and the JSON report of a `reconcile --json` run.
pub(crate) fn report(output: &Output) -> Result<(i32, Value)> {
    let code = output.status.code().context("reconcile was killed")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json: Value = serde_json::from_str(&stdout).with_context(|| {
        format!(
            "reconcile printed no JSON (exit {code}):\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    Ok((code, json))
}

/// A zone's part of a reconcile report.
pub(crate) fn zone<'v>(report: &'v Value, name: &str) -> Result<&'v Value> {
    report["zones"]
        .as_array()
        .context("no zones in the report")?
        .iter()
        .find(|z| z["zone"] == name)
        .with_context(|| format!("zone {name} is not in the report: {report}"))
}

/// The records of a report list, as `owner ttl type rdata` lines, sorted
/// (with ` (DNS: ttl)` where the report gives the TTL DNS holds).
pub(crate) fn lines(list: &Value) -> Vec<String> {
    record_lines(list, true)
}

/// The records of a report list, as `owner ttl type` lines (with ` rdata`
/// if `rdata`), sorted (with ` (DNS: ttl)` where the report gives the TTL
/// DNS holds).
pub(crate) fn record_lines(list: &Value, rdata: bool) -> Vec<String> {
    let mut out: Vec<String> = list
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    let mut line = format!(
                        "{} {} {}",
                        r["owner"].as_str().unwrap_or("?"),
                        r["ttl"],
                        r["type"].as_str().unwrap_or("?"),
                    );
                    if rdata {
                        line.push_str(&format!(" {}", r["rdata"].as_str().unwrap_or("?")));
                    }
                    if let Some(actual) = r.get("actual_ttl") {
                        line.push_str(&format!(" (DNS: {actual})"));
                    }
                    line
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// A stack whose forward and reverse zones hold `rows` (SQL `VALUES`
/// tuples of `pg2dns.rr`'s owner, ttl, type and rdata), streamed by
/// `pg2dns run` until DNS matches the table, then stopped: the known state
/// most scenarios reconcile against.
pub(crate) async fn stack_with_rows(label: &str, primary: Primary, rows: &str) -> Result<Stack> {
    let stack = Stack::start(label, primary).await?;
    let mut pg2dns = stack.run()?;
    stack
        .exec(&format!(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES {rows}"
        ))
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    pg2dns.terminate().await?;
    Ok(stack)
}

async fn records_changed_behind_pg2dns_are_reported_repaired_and_the_stream_goes_on(
    primary: Primary,
) -> Result<()> {
    let stack = stack_with_rows(
        "reconcile",
        primary,
        "('www.example.test.', 300, 'A', '192.0.2.10'),
         ('gone.example.test.', 300, 'A', '192.0.2.30'),
         ('retimed.example.test.', 300, 'A', '192.0.2.40'),
         ('txt.example.test.', 300, 'TXT', '\"hello\"'),
         ('10.2.0.192.in-addr.arpa.', 300, 'PTR', 'www.example.test.')",
    )
    .await?;

    // In sync before anyone touches DNS.
    let (code, json) = report(&stack.reconcile(&["--json"], &[]).await?)?;
    ensure!(
        code == 0,
        "a zone pg2dns just wrote is reported out of sync: {json:#}"
    );

    stack
        .server(primary)?
        .nsupdate(
            "update add rogue.example.test. 300 A 192.0.2.99\n\
             update delete gone.example.test. A 192.0.2.30\n\
             update delete retimed.example.test. A 192.0.2.40\n\
             update add retimed.example.test. 900 A 192.0.2.40",
        )
        .await?;

    let (code, json) = report(&stack.reconcile(&["--json"], &[]).await?)?;
    ensure!(code == 1, "differences must exit 1, got {code}: {json:#}");
    let forward = zone(&json, FORWARD)?;
    ensure!(
        lines(&forward["missing"]) == vec!["gone.example.test. 300 A 192.0.2.30"],
        "missing: {:?}",
        lines(&forward["missing"])
    );
    ensure!(
        lines(&forward["extra"]) == vec!["rogue.example.test. 300 A 192.0.2.99"],
        "extra: {:?}",
        lines(&forward["extra"])
    );
    ensure!(
        lines(&forward["ttl"]) == vec!["retimed.example.test. 300 A 192.0.2.40 (DNS: 900)"],
        "ttl: {:?}",
        lines(&forward["ttl"])
    );
    ensure!(
        zone(&json, REVERSE)?["in_sync"] == true,
        "the reverse zone was not touched: {json:#}"
    );

    let (code, json) = report(&stack.reconcile(&["--json", "--apply"], &[]).await?)?;
    ensure!(code == 0, "--apply must leave the zones in sync: {json:#}");
    ensure!(zone(&json, FORWARD)?["in_sync_after"] == true, "{json:#}");
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    let output = stack.reconcile(&[], &[]).await?;
    ensure!(
        output.status.code() == Some(0),
        "a second run must report in sync: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    ensure!(
        String::from_utf8_lossy(&output.stdout).contains("example.test.: in sync"),
        "the human summary says: {}",
        String::from_utf8_lossy(&output.stdout)
    );

    // The row state agrees with the table: one entry per row.
    let state = stack.row_state().await?;
    let table = stack.table().await?;
    ensure!(
        state.len() == table.len(),
        "row state holds {} rows, the table {}: {state:?}",
        state.len(),
        table.len()
    );

    // The stream goes on from the repaired state.
    let _pg2dns = stack.run()?;
    stack
        .exec(
            "DELETE FROM pg2dns.rr WHERE owner = 'gone.example.test.';
             UPDATE pg2dns.rr SET ttl = 600 WHERE owner = 'retimed.example.test.';
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('after.example.test.', 300, 'A', '192.0.2.50')",
        )
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    Ok(())
}

/// Rows committed while pg2dns never ran: reconcile publishes them in more
/// than one message (each guarded by the serial the previous one left), and
/// the stream that then replays the same inserts finds the row state in
/// line and changes nothing.
async fn thousands_of_unpublished_rows_are_loaded_in_several_guarded_messages(
    primary: Primary,
) -> Result<()> {
    let stack = Stack::start("reconcile-load", primary).await?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             SELECT 'n' || i || '.example.test.', 300, 'A',
                    '10.0.' || (i / 256) || '.' || (i % 256)
             FROM generate_series(1, 4000) AS i",
        )
        .await?;
    let (code, json) = report(&stack.reconcile(&["--json"], &[]).await?)?;
    ensure!(code == 1, "{json:#}");
    ensure!(
        zone(&json, FORWARD)?["missing"].as_array().map(Vec::len) == Some(4000),
        "4000 records must be missing"
    );
    let (code, json) = report(&stack.reconcile(&["--json", "--apply"], &[]).await?)?;
    ensure!(code == 0, "{json:#}");
    let forward = zone(&json, FORWARD)?;
    ensure!(
        forward["messages_applied"].as_u64() >= Some(2),
        "4000 A records need two messages: {forward:#}"
    );
    ensure!(
        forward["retries"] == 0,
        "the predicted serial held: {forward:#}"
    );
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;

    let _pg2dns = stack.run()?;
    stack
        .exec(
            "DELETE FROM pg2dns.rr WHERE owner = 'n1.example.test.';
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('after.example.test.', 300, 'A', '192.0.2.50')",
        )
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_safety_threshold_refuses_a_plan_deleting_most_of_a_zone() -> Result<()> {
    let values: Vec<String> = (1..=20)
        .map(|i| format!("('h{i}.example.test.', 300, 'A', '192.0.2.{i}')"))
        .collect();
    let stack = stack_with_rows("reconcile-threshold", Primary::Bind, &values.join(", ")).await?;
    // A database that lost most of its rows while pg2dns was stopped (say,
    // a wrong restore): reconcile must not empty the zone on its own.
    stack
        .exec("DELETE FROM pg2dns.rr WHERE owner <> 'h1.example.test.'")
        .await?;
    let before = stack.axfr(FORWARD).await?;

    let (code, json) = report(&stack.reconcile(&["--json", "--apply"], &[]).await?)?;
    ensure!(
        code == 1,
        "a refused repair leaves differences (exit 1): {json:#}"
    );
    let forward = zone(&json, FORWARD)?;
    ensure!(forward["refused_by_threshold"] == true, "{json:#}");
    ensure!(forward["messages_applied"] == 0, "{json:#}");
    ensure!(
        stack.axfr(FORWARD).await? == before,
        "a refused repair changed the zone"
    );
    let output = stack.reconcile(&["--apply"], &[]).await?;
    ensure!(
        String::from_utf8_lossy(&output.stdout).contains("--force"),
        "the summary must name --force: {}",
        String::from_utf8_lossy(&output.stdout)
    );

    let (code, json) = report(
        &stack
            .reconcile(&["--json", "--apply", "--force"], &[])
            .await?,
    )?;
    ensure!(code == 0, "--force applies the repair: {json:#}");
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_changed_between_transfer_and_repair_is_transferred_again() -> Result<()> {
    let stack = stack_with_rows(
        "reconcile-race",
        Primary::Bind,
        "('www.example.test.', 300, 'A', '192.0.2.10')",
    )
    .await?;
    let server = stack.server(Primary::Bind)?;
    server
        .nsupdate("update add rogue1.example.test. 300 A 192.0.2.98")
        .await?;

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pg2dns"))
        .args(["reconcile", "--apply", "--json", "-c"])
        .arg(stack.config_path())
        .env("PG2DNS_TEST_PAUSE_BEFORE_REPAIR_MS", "4000")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting pg2dns reconcile")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut log = String::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("reconcile never reached its pause")??;
        let Some(line) = line else {
            bail!("reconcile ended before its pause:\n{log}");
        };
        log.push_str(&line);
        log.push('\n');
        if line.contains("pausing") {
            break;
        }
    }
    // While reconcile waits with its transfer in hand, someone else
    // changes the zone: the repair's SOA prerequisite must fail.
    server
        .nsupdate("update add rogue2.example.test. 300 A 192.0.2.97")
        .await?;
    let drain = tokio::spawn(async move {
        let mut rest = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    });
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .context("reconcile did not finish")??;
    log.push_str(&drain.await?);
    let (code, json) = report(&output).with_context(|| log.clone())?;
    ensure!(
        code == 0,
        "the retried repair must succeed: {json:#}\n{log}"
    );
    let forward = zone(&json, FORWARD)?;
    ensure!(
        forward["retries"].as_u64() >= Some(1),
        "the SOA prerequisite should have failed once: {json:#}\n{log}"
    );
    // The fresh transfer saw the concurrent record too, and removed it.
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    Ok(())
}

/// A zone BIND signs itself (`dnssec-policy` with inline signing): its
/// DNSKEY, RRSIG, NSEC and private-type records are never reported nor
/// deleted. BIND checks UPDATE prerequisites against the unsigned zone,
/// whose SOA serial is not the one it serves: the guarded repair stops with
/// an error that says so, and `--unguarded` repairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnssec_records_of_a_signed_zone_are_ignored_and_never_deleted() -> Result<()> {
    let mut stack = Stack::start("reconcile-dnssec", Primary::Bind).await?;
    let conf = stack.dir().join("bind").join("named.conf");
    let text = std::fs::read_to_string(&conf)?;
    let allow = format!(
        "\tallow-update {{ key {}; }};\n",
        crate::harness::dns::KEY_NAME
    );
    ensure!(text.contains(&allow), "unexpected named.conf:\n{text}");
    std::fs::write(
        &conf,
        text.replace(
            &allow,
            &format!("{allow}\tdnssec-policy default;\n\tinline-signing yes;\n"),
        ),
    )?;
    {
        let server = stack.server_mut(Primary::Bind)?;
        server.stop().await?;
        server.start_again().await?;
    }
    let is_dnssec = |rtype: &str| {
        matches!(
            rtype,
            "RRSIG" | "NSEC" | "NSEC3" | "DNSKEY" | "NSEC3PARAM" | "CDS" | "CDNSKEY"
        ) || rtype.starts_with("TYPE65534")
    };
    crate::harness::wait_until(
        Duration::from_secs(30),
        "BIND has signed example.test.",
        || async {
            let records = stack.axfr(FORWARD).await?;
            Ok(if records.iter().any(|r| r.rtype == "DNSKEY") {
                crate::harness::Check::Done(())
            } else {
                crate::harness::Check::NotYet(format!("{records:?}"))
            })
        },
    )
    .await?;

    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('www.example.test.', 300, 'A', '192.0.2.10'),
               ('mail.example.test.', 300, 'MX', '10 www.example.test.')",
        )
        .await?;
    stack
        .server(Primary::Bind)?
        .nsupdate("update add rogue.example.test. 300 A 192.0.2.99")
        .await?;
    let (code, json) = report(&stack.reconcile(&["--json"], &[]).await?)?;
    ensure!(code == 1, "{json:#}");
    let forward = zone(&json, FORWARD)?;
    ensure!(
        lines(&forward["extra"]) == vec!["rogue.example.test. 300 A 192.0.2.99"],
        "only the rogue record is extra: {forward:#}"
    );
    ensure!(
        lines(&forward["missing"]).len() == 2,
        "the two rows are missing: {forward:#}"
    );
    ensure!(
        forward["not_owned"].as_u64() > Some(3),
        "the signatures count as not owned: {forward:#}"
    );

    // With inline signing, BIND checks prerequisites against the unsigned
    // zone, whose serial differs from the one it serves: the SOA guard can
    // never hold, and reconcile says so instead of retrying blindly.
    let (code, json) = report(&stack.reconcile(&["--json", "--apply"], &[]).await?)?;
    ensure!(code == 2, "{json:#}");
    let error = zone(&json, FORWARD)?["error"].as_str().unwrap_or_default();
    ensure!(
        error.contains("inline-signing") && error.contains("--unguarded"),
        "the error must name the cause and the way out: {json:#}"
    );
    ensure!(zone(&json, FORWARD)?["retries"] == 1, "{json:#}");
    let (code, json) = report(
        &stack
            .reconcile(&["--json", "--apply", "--unguarded"], &[])
            .await?,
    )?;
    ensure!(code == 0, "{json:#}");
    let records = stack.axfr(FORWARD).await?;
    ensure!(
        records.iter().any(|r| r.rtype == "DNSKEY") && records.iter().any(|r| r.rtype == "RRSIG"),
        "the zone's DNSSEC records must stay: {records:?}"
    );
    let mut owned: Vec<String> = records
        .iter()
        .filter(|r| !is_dnssec(&r.rtype))
        .map(|r| format!("{} {} {}", r.owner, r.rtype, r.rdata))
        .collect();
    owned.sort();
    ensure!(
        owned
            == vec![
                "mail.example.test. MX 10 www.example.test.".to_string(),
                "www.example.test. A 192.0.2.10".to_string(),
            ],
        "{owned:?}"
    );
    let (code, json) = report(&stack.reconcile(&["--json"], &[]).await?)?;
    ensure!(code == 0, "{json:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_while_writers_commit_finds_no_false_difference() -> Result<()> {
    let stack = Stack::start("reconcile-live", Primary::Bind).await?;
    let _pg2dns = stack.run()?;
    // Writers: inserts, updates and deletes, one row each, at up to about
    // 200 transactions a second. Unpaced, one connection outran the service
    // on a loaded two-core machine, and a backlog that only grows never
    // lets the service reach a later snapshot point, whatever reconcile does.
    let writer = Writer::sequence(stack.pg.url(), Duration::from_millis(5), |i| {
        match i % 3 {
        0 => format!("DELETE FROM pg2dns.rr WHERE owner = 'h{}.example.test.'", i - 2),
        1 => format!("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('h{i}.example.test.', 300, 'A', '192.0.2.{}')", i % 250 + 1),
        _ => format!("UPDATE pg2dns.rr SET rdata = '198.51.100.{}' WHERE owner = 'h{}.example.test.'", i % 250 + 1, i - 1),
    }
    });
    // Reconcile while the writers are under way.
    writer.wait_for(50, DNS_DEADLINE).await?;
    for round in 0..10 {
        let output = stack.reconcile(&["--json"], &[]).await?;
        let (code, json) = report(&output)?;
        ensure!(
            code == 0,
            "round {round}: reconcile found differences while writers committed (exit {code}): {json}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        ensure!(
            String::from_utf8_lossy(&output.stderr).contains("paused at the snapshot"),
            "round {round}: the running service was held at the snapshot:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let written = writer.stop().await?.transactions;
    ensure!(
        written > 100,
        "the writers committed {written} transactions"
    );
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_deployment_publishes_the_rows_the_database_already_holds_and_misses_no_write_during_the_load(
) -> Result<()> {
    let stack = Stack::start("first-load", Primary::Bind).await?;
    // Rows that exist before the new instance's slot.
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
               SELECT 'old' || g || '.example.test.', 300, 'A', '192.0.2.' || (g % 250 + 1)
               FROM generate_series(1, 3000) AS g;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('1.2.0.192.in-addr.arpa.', 300, 'PTR', 'old1.example.test.')",
        )
        .await?;
    // A new instance (its own slot) while a writer keeps committing.
    let fresh = stack.dir().join("fresh.toml");
    let text = std::fs::read_to_string(stack.config_path())?;
    std::fs::write(
        &fresh,
        text.replacen("slot = \"pg2dns\"", "slot = \"pg2dns_fresh\"", 1),
    )?;
    let writer = Writer::sequence(stack.pg.url(), Duration::ZERO, |i| {
        format!(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('new{i}.example.test.', 300, 'A', '198.51.100.{}');
             DELETE FROM pg2dns.rr WHERE owner = 'old{i}.example.test.'",
            i % 250 + 1
        )
    });
    let before_setup = writer.transactions();
    let setup = crate::harness::pg2dns::command("setup", &fresh).await?;
    let printed = String::from_utf8_lossy(&setup.stdout).to_string();
    ensure!(
        setup.status.success() && printed.contains("first load"),
        "setup of the new instance:\n{printed}{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let log = stack.dir().join("fresh-run.log");
    let during_setup = writer.transactions() - before_setup;
    let mut run = crate::harness::Pg2dns::spawn(&fresh, &log, &[])?;
    // And 20 more while the new instance starts streaming.
    writer
        .wait_for(writer.transactions() + 20, DNS_DEADLINE)
        .await?;
    let written = writer.stop().await?.transactions;
    ensure!(
        during_setup > 0,
        "the writer committed no transaction while setup loaded ({written} in all)"
    );
    stack
        .wait_until_dns_matches_table(DNS_DEADLINE)
        .await
        .with_context(|| run.log_tail(40))?;
    run.assert_running()?;
    Ok(())
}

/// An MX whose target has no address yet waits, in the stream as in
/// reconcile: it is listed as waiting, not missing; `--apply` repairs the
/// rest without sending it (BIND would refuse it) and keeps the row waiting,
/// so that the stream publishes it as soon as the target gets an address;
/// afterwards the row state agrees with the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mx_waiting_for_its_targets_address_stays_waiting_through_a_repair_and_the_stream_publishes_it(
) -> Result<()> {
    let stack = Stack::start("reconcile-waiting", Primary::Bind).await?;
    let mut pg2dns = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('www.example.test.', 300, 'A', '192.0.2.10'),
               ('example.test.', 300, 'MX', '10 mail.example.test.')",
        )
        .await?;
    crate::harness::wait_until(DNS_DEADLINE, "the MX row waits for its target", || async {
        let rejected = stack.rejected().await?;
        Ok(
            if rejected
                .iter()
                .any(|r| r.reason.contains("has no address record in the zone yet"))
            {
                crate::harness::Check::Done(())
            } else {
                crate::harness::Check::NotYet(format!("{rejected:?}"))
            },
        )
    })
    .await?;
    stack
        .wait_until_answers("www.example.test.", "A", DNS_DEADLINE)
        .await?;
    pg2dns.terminate().await?;

    let (code, json) = report(&stack.reconcile(&["--json"], &[]).await?)?;
    let forward = zone(&json, FORWARD)?;
    ensure!(code == 0, "a waiting MX is not a difference: {json:#}");
    ensure!(
        lines(&forward["waiting"]) == vec!["example.test. 300 MX 10 mail.example.test."],
        "the MX is listed as waiting: {forward:#}"
    );

    // Something to repair besides: the MX must not be sent with it.
    stack
        .server(Primary::Bind)?
        .nsupdate("update add rogue.example.test. 300 A 192.0.2.99")
        .await?;
    let (code, json) = report(&stack.reconcile(&["--json", "--apply"], &[]).await?)?;
    ensure!(code == 0, "the repair leaves the zone in sync: {json:#}");
    ensure!(
        lines(&zone(&json, FORWARD)?["extra"]) == vec!["rogue.example.test. 300 A 192.0.2.99"],
        "{json:#}"
    );
    ensure!(
        stack.query("rogue.example.test.", "A").await?.is_empty(),
        "the rogue record is deleted"
    );

    // The stream goes on: the address arrives, and the waiting MX follows
    // without anyone touching its row.
    let mut pg2dns = stack.run()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('mail.example.test.', 300, 'A', '192.0.2.25')")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    pg2dns.terminate().await?;
    let (code, json) = report(&stack.reconcile(&["--json", "--apply"], &[]).await?)?;
    ensure!(
        code == 0 && zone(&json, FORWARD)?["waiting"] == serde_json::json!([]),
        "{json:#}"
    );
    let state = stack.row_state().await?;
    let table = stack.table().await?;
    ensure!(
        state.len() == table.len(),
        "row state holds {} rows, the table {}: {state:?}",
        state.len(),
        table.len()
    );
    Ok(())
}

/// Names and types the zone's configuration excludes: the stream refuses
/// rows there with a recorded reason, and reconcile neither reports nor
/// deletes what another tool put there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_names_and_types_are_refused_by_the_stream_and_ignored_by_reconcile() -> Result<()>
{
    let stack = Stack::start("reconcile-excluded", Primary::Bind).await?;
    stack.set_zone_option(
        FORWARD,
        "exclude_names = [\"_acme-challenge.*\", \"*.dyn\"]",
    )?;
    stack.set_zone_option(FORWARD, "exclude_types = [\"TXT\"]")?;
    let mut pg2dns = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('www.example.test.', 300, 'A', '192.0.2.10'),
               ('_acme-challenge.www.example.test.', 300, 'CNAME', 'www.acme.test.'),
               ('host.dyn.example.test.', 300, 'A', '192.0.2.11'),
               ('txt.example.test.', 300, 'TXT', '\"hello\"');
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('after.example.test.', 300, 'A', '192.0.2.12')",
        )
        .await?;
    stack
        .wait_until_answers("after.example.test.", "A", DNS_DEADLINE)
        .await?;
    // Rejections commit with the checkpoint, up to about 100 ms after DNS.
    let rejected = stack.rejected_at_least(3, DNS_DEADLINE).await?;
    let mut refused: Vec<String> = rejected
        .iter()
        .filter(|r| r.reason.contains("is excluded by the zone's"))
        .filter_map(|r| r.owner.clone())
        .collect();
    refused.sort();
    ensure!(
        refused
            == vec![
                "_acme-challenge.www.example.test.".to_string(),
                "host.dyn.example.test.".to_string(),
                "txt.example.test.".to_string(),
            ],
        "the three excluded rows are refused with the rule named: {rejected:?}"
    );
    let dns = stack.axfr(FORWARD).await?;
    ensure!(
        !dns.iter()
            .any(|r| r.owner.starts_with("_acme") || r.owner.contains("dyn.") || r.rtype == "TXT"),
        "nothing excluded is published: {dns:?}"
    );
    pg2dns.terminate().await?;

    // Another tool writes at the excluded names; someone adds a rogue record.
    stack
        .server(Primary::Bind)?
        .nsupdate(
            "update add _acme-challenge.example.test. 60 TXT \"token\"\n\
             update add laptop.dyn.example.test. 60 A 192.0.2.77\n\
             update add www.example.test. 300 TXT \"theirs\"\n\
             update add rogue.example.test. 300 A 192.0.2.99",
        )
        .await?;
    let (code, json) = report(&stack.reconcile(&["--json"], &[]).await?)?;
    let forward = zone(&json, FORWARD)?;
    ensure!(code == 1, "{json:#}");
    ensure!(
        lines(&forward["extra"]) == vec!["rogue.example.test. 300 A 192.0.2.99"]
            && lines(&forward["missing"]).is_empty(),
        "only the rogue record differs: {forward:#}"
    );
    let (code, json) = report(&stack.reconcile(&["--json", "--apply"], &[]).await?)?;
    ensure!(code == 0, "{json:#}");
    let mut kept: Vec<String> = stack
        .axfr(FORWARD)
        .await?
        .iter()
        .map(|r| format!("{} {} {}", r.owner, r.rtype, r.rdata))
        .collect();
    kept.sort();
    ensure!(
        kept == vec![
            "_acme-challenge.example.test. TXT \"token\"".to_string(),
            "after.example.test. A 192.0.2.12".to_string(),
            "laptop.dyn.example.test. A 192.0.2.77".to_string(),
            "www.example.test. A 192.0.2.10".to_string(),
            "www.example.test. TXT \"theirs\"".to_string(),
        ],
        "the other tool's records stay, the rogue one goes: {kept:?}"
    );
    Ok(())
}

/// `pg2dns reconcile ARGS… -c CONFIG` as a child process, stderr piped (the
/// test reads it to know where the reconcile is); killed on drop.
pub(crate) fn spawn_reconcile(
    stack: &Stack,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<tokio::process::Child> {
    let mut command = tokio::process::Command::new(crate::harness::pg2dns::binary());
    command
        .arg("reconcile")
        .args(args)
        .arg("-c")
        .arg(stack.config_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG2DNS_") {
            command.env_remove(&key);
        }
    }
    command.env("RUST_LOG", "info");
    for (key, value) in env {
        command.env(key, value);
    }
    Ok(command.spawn()?)
}

/// Reads the child's stderr until a line contains `needle`; returns what it
/// read.
pub(crate) async fn read_until(child: &mut tokio::process::Child, needle: &str) -> Result<String> {
    let stderr = child.stderr.as_mut().context("stderr is not piped")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await? {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(needle) {
                return anyhow::Ok(true);
            }
        }
        anyhow::Ok(false)
    })
    .await;
    match found {
        Ok(Ok(true)) => Ok(seen),
        _ => bail!("reconcile never printed {needle:?}:\n{seen}"),
    }
}

/// `pg2dns.mode`'s mode and requested_by for the stack's slot.
async fn mode(stack: &Stack) -> Result<(String, String)> {
    let row = stack
        .db
        .query_one(
            "SELECT mode, coalesce(requested_by, '') FROM pg2dns.mode WHERE slot = 'pg2dns'",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Waits until the service says it runs, then checks that a new row
/// reaches DNS (it streams again).
async fn streams_again(stack: &Stack, owner: &str) -> Result<()> {
    crate::harness::wait::wait_until(DNS_DEADLINE, "pg2dns.mode says running", || async {
        let (mode, by) = mode(stack).await?;
        Ok(if mode == "running" {
            crate::harness::wait::Check::Done(())
        } else {
            crate::harness::wait::Check::NotYet(format!("{mode} (by {by})"))
        })
    })
    .await?;
    stack
        .exec(&format!(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('{owner}', 300, 'A', '192.0.2.200')"
        ))
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    Ok(())
}

/// The newest control request is the reconcile's own resume (not the
/// lease's end): the service streams again (`owner` reaches DNS once the
/// stray record is gone) and never resumed by itself.
async fn resumed_by_the_reconcile(
    stack: &Stack,
    run: &crate::harness::Pg2dns,
    owner: &str,
) -> Result<()> {
    let newest: String = stack
        .db
        .query_one(
            "SELECT action FROM pg2dns.control WHERE slot = 'pg2dns' ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?
        .get(0);
    ensure!(newest == "resume", "the newest control request is {newest}");
    stack
        .server(Primary::Bind)?
        .nsupdate("update delete stray.example.test. A")
        .await?;
    streams_again(stack, owner).await?;
    ensure!(
        !run.log().contains("resuming by itself"),
        "the reconcile's end was taken for its lease's: the service resumed by itself:\n{}",
        run.log_tail(30)
    );
    Ok(())
}

/// A running service with one row in DNS and one record added behind its
/// back (so that `reconcile --apply` has a repair to hold the pause for).
pub(crate) async fn service_with_a_stray_record(
    label: &str,
) -> Result<(Stack, crate::harness::Pg2dns)> {
    let stack = Stack::start(label, Primary::Bind).await?;
    let run = stack.run()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('www.example.test.', 300, 'A', '192.0.2.10')")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    stack
        .server(Primary::Bind)?
        .nsupdate("update add stray.example.test. 300 A 192.0.2.99")
        .await?;
    Ok((stack, run))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_killed_while_it_holds_the_service_paused_is_resumed_by_the_service(
) -> Result<()> {
    let (stack, run) = service_with_a_stray_record("lease-kill").await?;
    // The repair waits (a test hook) with the service paused at the
    // snapshot's point: long enough to be killed there.
    let mut reconcile = spawn_reconcile(
        &stack,
        &["--apply"],
        &[("PG2DNS_TEST_PAUSE_BEFORE_REPAIR_MS", "600000")],
    )?;
    read_until(&mut reconcile, "before the repair").await?;
    let (held, by) = mode(&stack).await?;
    ensure!(
        held == "paused",
        "the reconcile holds the service paused: {held} by {by}"
    );
    reconcile.start_kill()?;
    let status = reconcile.wait().await?;
    ensure!(
        status.code().is_none(),
        "reconcile was killed by SIGKILL: {status}"
    );
    // Nothing resumed it but the lease's end.
    stack
        .server(Primary::Bind)?
        .nsupdate("update delete stray.example.test. A")
        .await?;
    streams_again(&stack, "after-kill.example.test.").await?;
    ensure!(
        run.log().contains("resuming by itself"),
        "the service says why it resumed:\n{}",
        run.log_tail(30)
    );
    // An operator's pause is no lease: it stays.
    let paused = stack.admin(&["pause", "--wait"]).await?;
    ensure!(paused.status.success(), "{paused:?}");
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('while-paused.example.test.', 300, 'A', '192.0.2.201')")
        .await?;
    let resumed = stack.admin(&["resume"]).await?;
    ensure!(resumed.status.success(), "{resumed:?}");
    let polls = run.log().matches("resuming by itself").count();
    ensure!(
        polls == 1,
        "an operator's pause was taken for a lease:\n{}",
        run.log_tail(30)
    );
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_aborted_right_after_asking_for_the_pause_leaves_the_service_running(
) -> Result<()> {
    let (stack, run) = service_with_a_stray_record("lease-abort").await?;
    let output = stack
        .reconcile(
            &["--apply"],
            &[("PG2DNS_FAILPOINT", "reconcile-after-pause")],
        )
        .await?;
    ensure!(
        output.status.code().is_none(),
        "reconcile aborted at the failpoint: {output:?}"
    );
    // The service pauses when the pause reaches it in the stream, after
    // its holder is gone, and goes on by itself.
    crate::harness::wait::wait_until(DNS_DEADLINE, "the service resumes by itself", || async {
        Ok(if run.log().contains("resuming by itself") {
            crate::harness::wait::Check::Done(())
        } else {
            crate::harness::wait::Check::NotYet(run.log_tail(5))
        })
    })
    .await?;
    stack
        .server(Primary::Bind)?
        .nsupdate("update delete stray.example.test. A")
        .await?;
    streams_again(&stack, "after-abort.example.test.").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_ended_by_sigterm_resumes_the_service_and_exits_143() -> Result<()> {
    let (stack, run) = service_with_a_stray_record("lease-term").await?;
    let mut reconcile = spawn_reconcile(
        &stack,
        &["--apply"],
        &[("PG2DNS_TEST_PAUSE_BEFORE_REPAIR_MS", "600000")],
    )?;
    read_until(&mut reconcile, "before the repair").await?;
    let (held, by) = mode(&stack).await?;
    ensure!(
        held == "paused",
        "the reconcile holds the service paused: {held} by {by}"
    );
    let pid = reconcile.id().context("no pid")?;
    crate::harness::signal(pid, "TERM")?;
    let status = tokio::time::timeout(Duration::from_secs(60), reconcile.wait()).await??;
    let mut rest = String::new();
    if let Some(mut stderr) = reconcile.stderr.take() {
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut rest).await?;
    }
    ensure!(
        status.code() == Some(143),
        "reconcile exits 143 after SIGTERM: {status}\n{rest}"
    );
    ensure!(
        rest.contains("interrupted by SIGTERM")
            && rest.contains("paused at the snapshot for the comparison; resumed"),
        "it says it resumed the service:\n{rest}"
    );
    // The reconcile's own resume, not the lease's end.
    resumed_by_the_reconcile(&stack, &run, "after-term.example.test.").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_piped_into_head_ends_without_a_panic_and_leaves_the_service_running(
) -> Result<()> {
    let (stack, _run) = service_with_a_stray_record("lease-head").await?;
    // A report far larger than a pipe's buffer: 3000 records nobody asked for.
    for batch in 0..2 {
        let lines: String = (0..1500)
            .map(|i| format!("update add extra{batch}-{i}.example.test. 300 A 192.0.2.1\n"))
            .collect();
        stack.server(Primary::Bind)?.nsupdate(&lines).await?;
    }
    let mut command = tokio::process::Command::new("bash");
    command
        .arg("-c")
        .arg("\"$0\" reconcile --json -c \"$1\" | head -c 100 >/dev/null; exit ${PIPESTATUS[0]}")
        .arg(crate::harness::pg2dns::binary())
        .arg(stack.config_path())
        .env("RUST_LOG", "info");
    let output = crate::harness::run_unchecked(&mut command, Duration::from_secs(120)).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(1) && !stderr.contains("panicked"),
        "reconcile | head: exit 1 (differences), no panic: {}\n{stderr}",
        output.status
    );
    ensure!(
        stderr.contains("paused at the snapshot"),
        "the service was paused:\n{stderr}"
    );
    for batch in 0..2 {
        let mut deletes = String::from("update delete stray.example.test. A\n");
        for i in 0..1500 {
            deletes.push_str(&format!("update delete extra{batch}-{i}.example.test. A\n"));
        }
        stack.server(Primary::Bind)?.nsupdate(&deletes).await?;
    }
    streams_again(&stack, "after-head.example.test.").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_that_panics_while_it_holds_the_service_paused_resumes_it_first() -> Result<()>
{
    let (stack, run) = service_with_a_stray_record("lease-panic").await?;
    let output = stack
        .reconcile(&["--apply"], &[("PG2DNS_FAILPOINT", "reconcile-panic")])
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(2)
            && stderr.contains("failpoint reconcile-panic reached")
            && stderr.contains("paused at the snapshot for the comparison; resumed"),
        "reconcile panics, resumes the service and exits 2: {}\n{stderr}",
        output.status
    );
    resumed_by_the_reconcile(&stack, &run, "after-panic.example.test.").await
}

/// A TCP relay to `to` on a free loopback port: its first connection is cut
/// after `keep` bytes of the server's answer (a transfer a server closed
/// halfway, as Knot does when its reader stalls past `tcp-io-timeout`), the
/// others are relayed whole.
async fn relay_cutting_the_first_connection(
    to: std::net::SocketAddr,
    keep: usize,
) -> Result<std::net::SocketAddr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut client, _)) = listener.accept().await {
            let cut = std::mem::replace(&mut first, false);
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                if !cut {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    return;
                }
                let (mut from_server, mut to_server) = server.into_split();
                let (mut from_client, mut to_client) = client.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
                });
                let mut head = vec![0u8; keep];
                if from_server.read_exact(&mut head).await.is_ok() {
                    let _ = to_client.write_all(&head).await;
                }
                up.abort();
            });
        }
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_cut_while_the_tables_are_read_is_made_again_and_the_zone_compared() -> Result<()>
{
    let values: Vec<String> = (1..=50)
        .map(|i| format!("('h{i}.example.test.', 300, 'TXT', '\"Grüße {i}\" \"zwei\"')"))
        .collect();
    let stack =
        stack_with_rows("reconcile-cut-transfer", Primary::Bind, &values.join(", ")).await?;
    // The forward zone's primary reached through the relay: reconcile's
    // first transfer of it (made while the tables are read) is cut inside
    // its first message.
    let bind = stack.server(Primary::Bind)?.addr();
    let relay = relay_cutting_the_first_connection(bind.parse()?, 10).await?;
    let config = std::fs::read_to_string(stack.config_path())?;
    let from = format!("name = \"{FORWARD}\"\nprimary = \"{bind}\"");
    ensure!(
        config.contains(&from),
        "the config lists {FORWARD} as expected:\n{config}"
    );
    std::fs::write(
        stack.config_path(),
        config.replace(
            &from,
            &format!("name = \"{FORWARD}\"\nprimary = \"{relay}\""),
        ),
    )?;
    let output = stack.reconcile(&["--json"], &[]).await?;
    let (code, json) = report(&output)?;
    let forward = zone(&json, FORWARD)?;
    ensure!(
        code == 0 && forward["in_sync"] == true,
        "the zone is transferred again and found in sync (exit {code}): {json:#}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        String::from_utf8_lossy(&output.stderr).contains("transferring the zone again"),
        "the cut transfer is said: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
