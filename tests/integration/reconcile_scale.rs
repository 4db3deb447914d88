//! `pg2dns reconcile` at scale under a memory cap: a 200,000-record zone
//! is loaded, drifted with nsupdate, reported exactly under
//! [`REPORT_CAP_MIB`] of data memory and repaired under [`REPAIR_CAP_MIB`];
//! and a small zone spilled in dozens of sorted runs is compared exactly.
//!
//! Why `prlimit --data` (`ulimit -d`) rather than `--as` (`ulimit -v`):
//! the address-space limit counts what the process reserves, not what it
//! uses (each of glibc's malloc arenas reserves 64 MiB, each thread its
//! stack), so it says little about memory; the data limit counts the heap
//! and the anonymous mappings it may write to (so also a vector's
//! capacity not yet touched: it sits above the RSS). Before the planner
//! kept owners in vectors sized to their entries and the comparison merged
//! sorted vectors, a report of this zone needed about 280 MiB of RSS
//! (debug build), so more data; then 98 MiB; with sorted runs on disk
//! (bounded by `[reconcile] memory_mib`) about 55 MiB, and its cap is below
//! what the design before the runs needed.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::harness::stack::FORWARD;
use crate::harness::{Primary, Stack};
use crate::reconcile::{lines, record_lines, report, zone};

/// Records in the zone.
const RECORDS: u32 = 200_000;
/// The data memory (heap and written anonymous mappings) a report may use,
/// in MiB: the binary of the design before sorted runs (`4a049e4`, 89 MiB
/// of RSS for this report) fails under it ("memory allocation … failed"),
/// and under [`REPAIR_CAP_MIB`] its repair does; this one needs about
/// 70 MiB of RSS (debug build, the binary's text included).
const REPORT_CAP_MIB: u64 = 64;
/// The same for a repair (the differences, and the row state's runs).
const REPAIR_CAP_MIB: u64 = 128;
/// The same for the load, where every record is missing: the report keeps
/// counts and the first 10,000 differences, and the repair is sent owner by
/// owner as the merge produces it. The binary before (`41a1dd0`, which
/// held every difference, about 800 bytes per missing record) needed
/// 768 MiB here.
const LOAD_CAP_MIB: u64 = REPAIR_CAP_MIB;
/// Differences a report lists (`reconcile::REPORT_SAMPLE`).
const REPORT_SAMPLE: usize = 10_000;
/// Drifted records of each kind (deleted, added, retimed).
const DRIFT: u32 = 300;

/// The address `pg2dns.rr` gives `h<i>.example.test.` (as the SQL below).
fn address(i: u32) -> String {
    format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)
}

/// `pg2dns reconcile ARGS` under a cap of `cap_mib` (none: no cap).
async fn capped(
    stack: &Stack,
    args: &[&str],
    cap_mib: Option<u64>,
) -> Result<std::process::Output> {
    capped_with(stack, args, cap_mib, &[]).await
}

/// [`capped`] with `env` added to pg2dns's environment.
async fn capped_with(
    stack: &Stack,
    args: &[&str],
    cap_mib: Option<u64>,
    env: &[(&str, &str)],
) -> Result<std::process::Output> {
    let mut command = tokio::process::Command::new("prlimit");
    match cap_mib {
        Some(cap) => command.arg(format!("--data={}", cap << 20)),
        None => command.arg("--data=unlimited"),
    };
    command
        .arg("--")
        .arg(crate::harness::pg2dns::binary())
        .arg("reconcile")
        .args(args)
        .arg("-c")
        .arg(stack.config_path())
        .env("RUST_LOG", "warn");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG2DNS_") {
            command.env_remove(key);
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    crate::harness::run_unchecked(&mut command, Duration::from_secs(900)).await
}

/// `pg2dns reconcile ARGS --json` under its cap (a report's or a
/// repair's); its exit code and report.
async fn capped_reconcile(stack: &Stack, args: &[&str]) -> Result<(i32, Value)> {
    let cap = if args.contains(&"--apply") {
        REPAIR_CAP_MIB
    } else {
        REPORT_CAP_MIB
    };
    let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
    let output = capped(stack, &args, Some(cap)).await?;
    let (code, json) = report(&output).with_context(|| {
        format!(
            "reconcile {args:?} under a {cap} MiB data cap: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    eprintln!("reconcile {args:?}: peak RSS {} KiB", json["peak_rss_kib"]);
    Ok((code, json))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_in_a_200k_record_zone_is_reported_exactly_and_repaired_under_a_memory_cap(
) -> Result<()> {
    let stack = Stack::start("reconcile-scale", Primary::Bind).await?;
    // What users write: addresses, and TXT records with UTF-8, escaped
    // quotes and mixed-case owners.
    stack
        .exec(&format!(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             SELECT 'h' || g || '.example.test.', 3600, 'A',
                    '10.' || (g >> 16) || '.' || ((g >> 8) & 255) || '.' || (g & 255)
             FROM generate_series(1, {a}) AS g;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             SELECT 'Txt' || g || '.Example.TEST.', 300, 'TXT',
                    '\"caf\u{e9} \u{2615} \\\"n\u{ba} ' || g || '\\\"\"'
             FROM generate_series(1, 1000) AS g",
            a = RECORDS - 1000
        ))
        .await?;

    // The load under a cap too: every record is missing, then sent, and
    // the row state written back from the runs in batches.
    let output = capped(&stack, &["--apply", "--json"], Some(LOAD_CAP_MIB)).await?;
    let (code, json) = report(&output).with_context(|| {
        format!(
            "the load under a {LOAD_CAP_MIB} MiB data cap: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    eprintln!("the load: peak RSS {} KiB", json["peak_rss_kib"]);
    let forward = zone(&json, FORWARD)?;
    ensure!(
        code == 0
            && forward["in_sync_after"] == true
            && forward["missing_count"] == u64::from(RECORDS),
        "the load must add {RECORDS} records and leave the zone in sync (exit {code}): {}",
        forward["error"]
    );
    // The report lists the first differences, in owner order, and says so.
    let listed = forward["missing"].as_array().map(Vec::len).unwrap_or(0);
    ensure!(
        forward["sampled"] == true && (REPORT_SAMPLE..REPORT_SAMPLE + 10).contains(&listed),
        "the report must list the first {REPORT_SAMPLE} of {RECORDS} differences, not {listed}"
    );
    let (code, _) = capped_reconcile(&stack, &[]).await?;
    ensure!(code == 0, "after the load the zone must be in sync");

    // Drift behind pg2dns's back, spread over the zone.
    let (mut gone, mut rogue, mut retimed) = (Vec::new(), Vec::new(), Vec::new());
    let mut script = String::new();
    for i in 1..=DRIFT {
        let g = i * 600;
        script.push_str(&format!(
            "update delete h{g}.example.test. A {a}\n\
             update add rogue{i}.example.test. 300 A 192.0.2.{r}\n\
             update delete h{t}.example.test. A {b}\n\
             update add h{t}.example.test. 900 A {b}\n",
            a = address(g),
            r = i % 250 + 1,
            t = g + 1,
            b = address(g + 1),
        ));
        if i % 50 == 0 {
            script.push_str("send\n");
        }
        gone.push(format!("h{g}.example.test. 3600 A {}", address(g)));
        rogue.push(format!(
            "rogue{i}.example.test. 300 A 192.0.2.{}",
            i % 250 + 1
        ));
        retimed.push(format!(
            "h{}.example.test. 3600 A {} (DNS: 900)",
            g + 1,
            address(g + 1)
        ));
    }
    stack.server(Primary::Bind)?.nsupdate(&script).await?;
    for list in [&mut gone, &mut rogue, &mut retimed] {
        list.sort();
    }

    let (code, json) = capped_reconcile(&stack, &[]).await?;
    ensure!(code == 1, "differences must exit 1, got {code}");
    let forward = zone(&json, FORWARD)?;
    ensure!(
        lines(&forward["missing"]) == gone,
        "missing: {:?}",
        lines(&forward["missing"])
    );
    ensure!(
        lines(&forward["extra"]) == rogue,
        "extra: {:?}",
        lines(&forward["extra"])
    );
    ensure!(
        lines(&forward["ttl"]) == retimed,
        "ttl: {:?}",
        lines(&forward["ttl"])
    );
    ensure!(
        forward["owned"] == u64::from(RECORDS),
        "DNS holds {RECORDS} owned records (300 deleted, 300 added): {}",
        forward["owned"]
    );

    let (code, json) = capped_reconcile(&stack, &["--apply"]).await?;
    let forward = zone(&json, FORWARD)?;
    ensure!(
        code == 0 && forward["in_sync_after"] == true,
        "the repair must leave the zone in sync (exit {code}): error {}",
        forward["error"]
    );
    let (code, json) = capped_reconcile(&stack, &[]).await?;
    ensure!(
        code == 0,
        "a second run must find the zone in sync: {}",
        zone(&json, FORWARD)?["missing"]
    );
    // The row state is the table's: the stream goes on from the repair.
    let state = stack.row_state().await?;
    let rows: usize = state.values().map(Vec::len).sum();
    ensure!(
        rows == RECORDS as usize,
        "the row state holds {rows} records, the table {RECORDS}"
    );
    Ok(())
}

/// Bytes each sorted run may buffer in
/// [`a_spilled_reconcile_is_exact_for_drift_of_every_kind`]: a few dozen
/// rows, so a zone of 800 records spills dozens of runs.
const SMALL_RUNS: &str = "2048";

/// `pg2dns reconcile ARGS --json` with runs of [`SMALL_RUNS`] bytes (or the
/// configuration's budget when `small` is false): exit code and report.
async fn spilling(stack: &Stack, args: &[&str], small: bool) -> Result<(i32, Value)> {
    let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
    let env: &[(&str, &str)] = if small {
        &[("PG2DNS_TEST_SPILL_BYTES", SMALL_RUNS)]
    } else {
        &[]
    };
    let output = capped_with(stack, &args, None, env).await?;
    report(&output).with_context(|| {
        format!(
            "reconcile {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// `owner ttl type` of each record of a report list, sorted (with
/// ` (DNS: ttl)` where the report gives the TTL DNS holds).
fn owners(list: &Value) -> Vec<String> {
    record_lines(list, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spilled_reconcile_is_exact_for_drift_of_every_kind() -> Result<()> {
    let stack = Stack::start("reconcile-spill", Primary::Bind).await?;
    // What users write: mixed-case owners, UTF-8 and escaped quotes in
    // multi-string TXT records, an MX with its target's address.
    stack
        .exec(
            r#"INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
               SELECT 'h' || g || '.example.test.', 3600, 'A', '10.0.' || (g >> 8) || '.' || (g & 255)
               FROM generate_series(1, 600) AS g;
               INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
               SELECT 'Mixed' || g || '.Example.TEST.', 600, 'AAAA', '2001:db8::' || to_hex(g)
               FROM generate_series(1, 100) AS g;
               INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
               SELECT 'txt' || g || '.example.test.', 300, 'TXT',
                      '"café ☕ \"nº ' || g || '\"" "second string"'
               FROM generate_series(1, 100) AS g;
               INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
                 ('Mail.Example.TEST.', 3600, 'MX', '10 mx1.example.test.'),
                 ('mx1.example.test.', 3600, 'A', '192.0.2.25')"#,
        )
        .await?;
    let rows = 600 + 100 + 100 + 2;

    // The first load, spilled: every record missing, then sent.
    let (code, json) = spilling(&stack, &["--apply"], true).await?;
    let forward = zone(&json, FORWARD)?;
    ensure!(
        code == 0 && forward["in_sync_after"] == true,
        "the spilled load must leave the zone in sync (exit {code}): {}",
        forward["error"]
    );
    ensure!(
        forward["missing"].as_array().map(Vec::len) == Some(rows),
        "the load adds every row's record: {}",
        forward["missing"].as_array().map_or(0, Vec::len)
    );
    ensure!(
        json["spilled_runs"].as_u64().is_some_and(|n| n > 10),
        "runs of {SMALL_RUNS} bytes must spill: {} runs",
        json["spilled_runs"]
    );

    // Drift behind pg2dns's back, and in the table.
    stack
        .server(Primary::Bind)?
        .nsupdate(
            "update delete h10.example.test. A 10.0.0.10\n\
             update add rogue1.example.test. 300 A 192.0.2.1\n\
             update delete h20.example.test. A 10.0.0.20\n\
             update add h20.example.test. 900 A 10.0.0.20\n\
             update delete txt5.example.test. TXT\n\
             update add Rogue2.Example.TEST. 300 TXT \"caf\\195\\169\" \"two\"\n\
             send\n",
        )
        .await?;
    stack
        .exec(
            r#"UPDATE pg2dns.rr SET ttl = 60 WHERE owner = 'Mixed5.Example.TEST.';
               DELETE FROM pg2dns.rr WHERE owner = 'h30.example.test.';
               INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
               VALUES ('New.Example.TEST.', 120, 'TXT', '"über \"quoted\"" "☕"')"#,
        )
        .await?;

    let (code, spilled) = spilling(&stack, &[], true).await?;
    ensure!(code == 1, "differences must exit 1, got {code}");
    ensure!(
        spilled["spilled_runs"].as_u64().is_some_and(|n| n > 10),
        "the report must spill: {} runs",
        spilled["spilled_runs"]
    );
    let forward = zone(&spilled, FORWARD)?;
    ensure!(
        owners(&forward["missing"])
            == [
                "h10.example.test. 3600 A",
                "new.example.test. 120 TXT",
                "txt5.example.test. 300 TXT",
            ],
        "missing: {:?}",
        lines(&forward["missing"])
    );
    ensure!(
        owners(&forward["extra"])
            == [
                "h30.example.test. 3600 A",
                "rogue1.example.test. 300 A",
                "rogue2.example.test. 300 TXT",
            ],
        "extra: {:?}",
        lines(&forward["extra"])
    );
    ensure!(
        owners(&forward["ttl"])
            == [
                "h20.example.test. 3600 A (DNS: 900)",
                "mixed5.example.test. 60 AAAA (DNS: 600)",
            ],
        "ttl: {:?}",
        lines(&forward["ttl"])
    );
    // The data too: the spilled comparison says what the one held in
    // memory says, record for record.
    let (code, whole) = spilling(&stack, &[], false).await?;
    ensure!(
        code == 1 && whole["spilled_runs"] == 0,
        "without small runs nothing spills (exit {code}, {} runs)",
        whole["spilled_runs"]
    );
    let whole = zone(&whole, FORWARD)?;
    for list in ["missing", "extra", "ttl", "waiting"] {
        ensure!(
            lines(&forward[list]) == lines(&whole[list]),
            "{list} differs between spilled and in-memory runs: {:?} vs {:?}",
            lines(&forward[list]),
            lines(&whole[list])
        );
    }
    let txt5 = lines(&forward["missing"])
        .into_iter()
        .find(|l| l.starts_with("txt5."))
        .unwrap_or_default();
    ensure!(
        txt5.contains("second string") && txt5.contains(" 5"),
        "the multi-string TXT comes back whole: {txt5}"
    );

    // The repair, spilled, and the row state written back from the runs.
    let (code, json) = spilling(&stack, &["--apply"], true).await?;
    let forward = zone(&json, FORWARD)?;
    ensure!(
        code == 0 && forward["in_sync_after"] == true,
        "the spilled repair must leave the zone in sync (exit {code}): {}",
        forward["error"]
    );
    let (code, _) = spilling(&stack, &[], true).await?;
    ensure!(code == 0, "a second run must find the zone in sync");
    let state = stack.row_state().await?;
    let held: usize = state.values().map(Vec::len).sum();
    ensure!(
        held == rows,
        "the row state holds {held} records, the table {rows}"
    );
    Ok(())
}

/// A repair of more differences than the report lists goes through the
/// verifier whole: the zone as repaired is written to the verifier's file
/// from a merge of the runs (every record, not the report's sample), and a
/// refusal sends nothing; once the refused row is gone the same repair is
/// verified and sent owner by owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifier_refusing_a_repair_larger_than_the_report_sends_nothing() -> Result<()> {
    const ROWS: usize = REPORT_SAMPLE + 2_000;
    let stack = Stack::start("reconcile-verify-stream", Primary::Bind).await?;
    stack
        .exec(&format!(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             SELECT 'h' || g || '.Example.TEST.', 3600, 'A',
                    '10.' || (g >> 16) || '.' || ((g >> 8) & 255) || '.' || (g & 255)
             FROM generate_series(1, {ROWS}) AS g;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('forbidden.example.test.', 300, 'TXT', '\"caf\u{e9} \u{2615} refused\"')"
        ))
        .await?;
    let server = stack.server(Primary::Bind)?;
    let before = server.axfr(FORWARD).await?;
    // The site script counts the address records of the file (all of them
    // must be there) before it refuses the forbidden name.
    stack.set_zone_option(
        FORWARD,
        &format!(
            r#"verify = ["sh", "-c", "n=$(grep -c ' IN A ' \"$1\"); test \"$n\" -ge {ROWS} || {{ echo \"only $n address records\"; exit 4; }}; if grep -q '^forbidden\\.' \"$1\"; then echo \"forbidden would be published\"; exit 3; fi", "verifier", "{{file}}"]"#
        ),
    )?;
    let (code, json) = report(&stack.reconcile(&["--json", "--apply"], &[]).await?)?;
    let forward = zone(&json, FORWARD)?;
    ensure!(
        code == 1
            && forward["verify_refused"]["reason"] == "exited with status 3"
            && forward["missing_count"] == ROWS as u64 + 1
            && forward["sampled"] == true
            && forward["messages_applied"] == 0,
        "exit {code}: {:#}",
        forward["verify_refused"]
    );
    let now = server.axfr(FORWARD).await?;
    ensure!(now == before, "a refused repair changed the zone");

    stack
        .exec("DELETE FROM pg2dns.rr WHERE owner = 'forbidden.example.test.'")
        .await?;
    let (code, json) = report(&stack.reconcile(&["--json", "--apply"], &[]).await?)?;
    let forward = zone(&json, FORWARD)?;
    ensure!(
        code == 0
            && forward["verified"] == true
            && forward["in_sync_after"] == true
            && forward["messages_applied"].as_u64().is_some_and(|n| n > 1),
        "exit {code}: {forward:#}"
    );
    let (code, _) = report(&stack.reconcile(&["--json"], &[]).await?)?;
    ensure!(code == 0, "after the repair the zone must be in sync");
    Ok(())
}

/// What `reconcile --zone-file` lists of one record of
/// [`a_200k_record_zone_file_is_compared_three_ways_under_a_memory_cap`]:
/// `owner type rdata file/database/dns` (`-` where a side lacks it), from
/// its owner alone (the drift is made by rule).
fn expected_three_way(owner: &str, rtype: &str, rdata: &str) -> Option<String> {
    let side = |file: &str, db: &str| format!("{owner} {rtype} {rdata} {file}/{db}/-");
    if let Some(g) = owner
        .strip_prefix('h')
        .and_then(|o| o.strip_suffix(".example.test."))
        .and_then(|g| g.parse::<u32>().ok())
    {
        if rtype != "A" || rdata != address(g) {
            return None;
        }
        return Some(if g % 600 == 0 && g / 600 <= DRIFT {
            side("-", "3600")
        } else if g % 600 == 1 && g / 600 >= 1 && g / 600 <= DRIFT {
            side("900", "3600")
        } else {
            side("3600", "3600")
        });
    }
    if let Some(i) = owner
        .strip_prefix("legacy")
        .and_then(|o| o.strip_suffix(".example.test."))
        .and_then(|i| i.parse::<u32>().ok())
    {
        return (rdata == format!("192.0.2.{}", i % 250 + 1)).then(|| side("300", "-"));
    }
    let g = owner
        .strip_prefix("txt")
        .and_then(|o| o.strip_suffix(".example.test."))?;
    // The data ends `… {g}\""` however its UTF-8 is written.
    (rtype == "TXT" && rdata.ends_with(&format!(" {g}\\\"\""))).then(|| side("300", "300"))
}

/// The legacy generator's zone file of a 200,000-record zone, compared
/// three ways under the report's data cap: the file's records go to sorted
/// runs as they are read and the three sides are merged owner by owner, so
/// the cap holds whatever the file's size. The design before (file,
/// desired records and every difference in memory) needs several times
/// the cap here. DNS is the empty zone before the first load (step 2 of
/// the first deployment), so every wanted record is a difference: the
/// counts count them all, the list holds the run's sample.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200k_record_zone_file_is_compared_three_ways_under_a_memory_cap() -> Result<()> {
    let stack = Stack::start("zonefile-scale", Primary::Bind).await?;
    let addresses = RECORDS - 1000;
    stack
        .exec(&format!(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             SELECT 'h' || g || '.example.test.', 3600, 'A',
                    '10.' || (g >> 16) || '.' || ((g >> 8) & 255) || '.' || (g & 255)
             FROM generate_series(1, {addresses}) AS g;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             SELECT 'Txt' || g || '.Example.TEST.', 300, 'TXT',
                    '\"caf\u{e9} \u{2615} \\\"n\u{ba} ' || g || '\\\"\"'
             FROM generate_series(1, 1000) AS g",
        ))
        .await?;
    // As a generator writes it: $ORIGIN and $TTL, relative names, a
    // multi-line SOA, mixed case, UTF-8 and escaped quotes; drifted by
    // rule: h{600 i} left out, h{600 i + 1} with TTL 900, legacy{i} added.
    let mut text = String::from(
        "$ORIGIN example.test.\n$TTL 3600\n@ 86400 IN SOA ns1.example.net. hostmaster.example.net. (\n  2026120701 ; serial\n  7200 900 1209600 300 )\n",
    );
    for g in 1..=addresses {
        let i = g / 600;
        if g % 600 == 0 && i <= DRIFT {
            continue;
        }
        if g % 600 == 1 && (1..=DRIFT).contains(&i) {
            text.push_str(&format!("h{g} 900 IN A {}\n", address(g)));
        } else {
            text.push_str(&format!("h{g} A {}\n", address(g)));
        }
    }
    for g in 1..=1000 {
        text.push_str(&format!(
            "TXT{g} IN 300 TXT \"caf\u{e9} \u{2615} \\\"n\u{ba} {g}\\\"\"\n"
        ));
    }
    for i in 1..=DRIFT {
        text.push_str(&format!("legacy{i} 300 A 192.0.2.{}\n", i % 250 + 1));
    }
    let db = stack.dir().join("db.example.test");
    std::fs::write(&db, &text)?;
    let arg = format!("{FORWARD}={}", db.display());
    let (code, json) = capped_reconcile(&stack, &["--zone-file", &arg]).await?;
    ensure!(code == 1, "differences must exit 1, got {code}");
    let forward = zone(&json, FORWARD)?;
    let f = &forward["zone_file"];
    let drift = u64::from(DRIFT);
    let wanted = u64::from(RECORDS);
    ensure!(
        f["records"] == wanted + 1
            && f["file_lacks"] == drift
            && f["file_extra"] == drift
            && f["file_ttl_differences"] == drift
            && f["agrees"] == false,
        "the file's counts: {}",
        serde_json::json!({"records": f["records"], "file_lacks": f["file_lacks"], "file_extra": f["file_extra"], "file_ttl_differences": f["file_ttl_differences"]})
    );
    // Every wanted record is missing from DNS, and each record only the
    // file holds differs too.
    ensure!(
        f["differences_count"] == wanted + drift && forward["missing_count"] == wanted,
        "differences: {} (three-way), {} (missing from DNS)",
        f["differences_count"],
        forward["missing_count"]
    );
    let listed = f["differences"].as_array().map(Vec::len).unwrap_or(0);
    ensure!(
        f["sampled"] == true && (REPORT_SAMPLE..REPORT_SAMPLE + 10).contains(&listed),
        "the report must list the first {REPORT_SAMPLE} three-way differences, not {listed}"
    );
    // Each listed difference says what the rule made of its record.
    let ttl = |v: &Value| v.as_u64().map_or("-".to_owned(), |t| t.to_string());
    for r in f["differences"].as_array().into_iter().flatten() {
        let (owner, rtype, rdata) = (
            r["owner"].as_str().unwrap_or("?"),
            r["type"].as_str().unwrap_or("?"),
            r["rdata"].as_str().unwrap_or("?"),
        );
        let got = format!(
            "{owner} {rtype} {rdata} {}/{}/{}",
            ttl(&r["file_ttl"]),
            ttl(&r["database_ttl"]),
            ttl(&r["dns_ttl"])
        );
        ensure!(
            expected_three_way(owner, rtype, rdata).as_deref() == Some(got.as_str()),
            "listed {got}, expected {:?}",
            expected_three_way(owner, rtype, rdata)
        );
    }
    Ok(())
}

/// The report's lists are bounded per run, not per zone: two zones with
/// 6,000 differences each (12,000, where each zone alone is under the
/// sample) list 10,000 in all, and count every one per zone. Before, each
/// zone listed its own 10,000, so 50,000 small zones could list them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_lists_its_sample_across_all_zones_and_counts_each_zone_exactly() -> Result<()> {
    const EACH: u64 = 6_000;
    let stack = Stack::start("sample-per-run", Primary::Bind).await?;
    stack
        .exec(&format!(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             SELECT 'h' || g || '.example.test.', 3600, 'A',
                    '10.' || (g >> 16) || '.' || ((g >> 8) & 255) || '.' || (g & 255)
             FROM generate_series(1, {EACH}) AS g;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             SELECT 'T' || g || '.2.0.192.in-addr.arpa.', 300, 'TXT',
                    '\"r\u{e9}verse ' || g || '\"'
             FROM generate_series(1, {EACH}) AS g",
        ))
        .await?;
    let (code, json) = capped_reconcile(&stack, &[]).await?;
    ensure!(code == 1, "differences must exit 1, got {code}");
    let mut listed = 0;
    for name in [FORWARD, crate::harness::stack::REVERSE] {
        let z = zone(&json, name)?;
        ensure!(
            z["missing_count"] == EACH && z["owners_differing"] == EACH,
            "{name}: every difference is counted: {} missing",
            z["missing_count"]
        );
        let here = z["missing"].as_array().map(Vec::len).unwrap_or(0);
        ensure!(
            (z["sampled"] == true) == (here < EACH as usize),
            "{name}: `sampled` must say whether the list is whole ({here} listed)"
        );
        for r in z["missing"].as_array().into_iter().flatten() {
            let owner = r["owner"].as_str().unwrap_or("?");
            ensure!(
                owner.ends_with(name) && r["ttl"].as_u64().is_some(),
                "{name} lists {r}"
            );
        }
        listed += here;
    }
    ensure!(
        listed == REPORT_SAMPLE,
        "the run lists {listed} differences in all, not its sample of {REPORT_SAMPLE}"
    );
    Ok(())
}
