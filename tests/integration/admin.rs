//! Admin commands: an exact pause and resume, a pause that survives a crash,
//! a halt that is a state an operator clears with `pg2dns resume`, and a
//! pause no unprivileged role can forge.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::faults::workload::Writer;
use crate::harness::stack::FORWARD;
use crate::harness::{wait_until, Check, Primary, Stack, DNS_DEADLINE, RECOVERY_DEADLINE};
use crate::health::http_get;

/// The `w<i>` owners present in the forward zone.
async fn writer_rows_in_dns(stack: &Stack) -> Result<BTreeSet<u64>> {
    let dns = stack.dns().await?;
    Ok(dns
        .get(FORWARD)
        .map(|records| {
            records
                .iter()
                .filter_map(|r| r.owner.strip_prefix('w')?.split('.').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default())
}

/// `pg2dns status --json` as a JSON value.
pub(crate) async fn status(stack: &Stack) -> Result<serde_json::Value> {
    let out = stack.admin(&["status", "--json"]).await?;
    serde_json::from_slice(&out.stdout).context("status --json")
}

async fn wait_for_mode(stack: &Stack, mode: &str) -> Result<serde_json::Value> {
    wait_until(DNS_DEADLINE, &format!("status says {mode}"), || async {
        let s = status(stack).await?;
        Ok(if s["mode"] == mode {
            Check::Done(s)
        } else {
            Check::NotYet(s.to_string())
        })
    })
    .await
}

/// Waits until `pg2dns status --json` says `"stream": want`: `"paused"`
/// once a paused service waits for `pg2dns resume` and no process streams
/// from the slot (from then on nothing can reach DNS before a resume, so a
/// test may look at DNS and expect it unchanged without guessing how long
/// to wait), `"closed"` once no service streams or waits.
async fn wait_for_stream(stack: &Stack, want: &str) -> Result<serde_json::Value> {
    wait_until(
        DNS_DEADLINE,
        &format!("status says the stream is {want}"),
        || async {
            let s = status(stack).await?;
            Ok(if s["stream"] == want {
                Check::Done(s)
            } else {
                Check::NotYet(s.to_string())
            })
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_stops_exactly_at_a_transaction_boundary_while_writers_go_on_and_resume_delivers_the_rest(
) -> Result<()> {
    let stack = Stack::start("pause", Primary::Bind).await?;
    let _pg2dns = stack.run()?;
    // One writer commits one row per transaction, in order, 5 ms apart.
    let writer = Writer::sequence(stack.pg.url(), Duration::from_millis(5), |i| {
        format!(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('w{i}.example.test.', 300, 'A', '192.0.2.1')"
        )
    });
    // Pause while pg2dns is visibly applying the writer's rows.
    wait_until(
        DNS_DEADLINE,
        "DNS holds more than 10 of the writer's rows",
        || async {
            let seen = writer_rows_in_dns(&stack).await?.len();
            Ok(if seen > 10 {
                Check::Done(())
            } else {
                Check::NotYet(format!("{seen} rows"))
            })
        },
    )
    .await?;
    let out = stack
        .admin(&["pause", "--wait", "--reason", "test"])
        .await?;
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        printed.starts_with("paused at "),
        "pause --wait printed {printed:?}"
    );
    let first = writer_rows_in_dns(&stack).await?;
    // More than 10: the wait above saw them, and this writer only inserts.
    let k = first.len() as u64;
    ensure!(
        first == (1..=k).collect(),
        "DNS holds exactly the rows committed before the pause, a prefix of the writer's: {first:?}"
    );
    // Writers go on; DNS does not move. Once pg2dns waits for the resume
    // without streaming, 20 more transactions are committed, then DNS must
    // still hold the same prefix.
    wait_for_stream(&stack, "paused").await?;
    writer
        .wait_for(writer.transactions() + 20, DNS_DEADLINE)
        .await?;
    ensure!(
        writer_rows_in_dns(&stack).await? == first,
        "DNS changed while paused"
    );
    let s = status(&stack).await?;
    ensure!(
        s["mode"] == "paused" && s["requested_by"] != "" && s["reason"] == "test",
        "status says who paused and why: {s}"
    );
    let lsn = printed
        .trim_start_matches("paused at ")
        .split(':')
        .next()
        .unwrap_or("");
    ensure!(
        s["confirmed_flush_lsn"] == lsn && s["progress_lsn"] == lsn,
        "the slot confirms nothing past the pause point {lsn}: {s}"
    );
    let out = stack.admin(&["resume"]).await?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("continues after {lsn}")),
        "resume says where it continues: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let written = writer.stop().await?.transactions;
    ensure!(written > k, "the writer went on past the pause");
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    wait_for_mode(&stack, "running").await?;
    wait_for_stream(&stack, "open").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_service_stays_paused_across_a_kill_and_a_restart() -> Result<()> {
    let stack = Stack::start("pause-kill", Primary::Bind).await?;
    let mut pg2dns = stack.run()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('before.example.test.', 300, 'A', '192.0.2.1')")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    stack.admin(&["pause", "--wait"]).await?;
    pg2dns.kill()?;
    // The killed run's control connection (which said it waits) is gone.
    wait_for_stream(&stack, "closed").await?;
    let paused_at = stack.confirmed_flush_lsn().await?;
    let _again = stack.run()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('after.example.test.', 300, 'A', '192.0.2.2')")
        .await?;
    // The row is committed; once the restarted service says it waits for the
    // resume (it reads its mode before streaming), the row must not be in DNS.
    wait_for_stream(&stack, "paused").await?;
    ensure!(
        stack.query("after.example.test.", "A").await?.is_empty(),
        "a restarted paused service published a row committed after the pause"
    );
    let confirmed = stack.confirmed_flush_lsn().await?;
    ensure!(
        confirmed == paused_at,
        "a restarted paused service moved the slot from {paused_at} to {confirmed}"
    );
    wait_for_mode(&stack, "paused").await?;
    stack.admin(&["resume"]).await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_is_a_state_that_resume_clears_once_the_key_is_fixed() -> Result<()> {
    let stack = Stack::start("halt-state", Primary::Bind).await?;
    let wrong = stack.write_wrong_key_file().await?;
    stack.write_config(&[(FORWARD, &wrong)])?;
    stack.setup().await?;
    let mut pg2dns = stack.run_as_service()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('www.example.test.', 300, 'A', '192.0.2.10')")
        .await?;
    let s = wait_for_mode(&stack, "halted").await?;
    let reason = s["reason"].as_str().unwrap_or("");
    ensure!(
        reason.contains("disagree on TSIG key") && reason.contains("example.test."),
        "status gives the reason: {s}"
    );
    ensure!(
        s["hint"].as_str().unwrap_or("").contains("key file"),
        "status gives the hint: {s}"
    );
    pg2dns.assert_running()?;
    // The operator fixes the key file, then resumes.
    stack.write_config(&[])?;
    stack.admin(&["resume"]).await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    wait_for_mode(&stack, "running").await?;
    pg2dns.assert_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_forged_by_a_role_without_the_grant_is_refused_or_ignored() -> Result<()> {
    let stack = Stack::start("pause-forged", Primary::Bind).await?;
    let _pg2dns = stack.run()?;
    stack
        .exec("CREATE ROLE intruder LOGIN; GRANT USAGE ON SCHEMA pg2dns TO intruder;")
        .await?;
    // The functions and the table are out of its reach...
    for sql in [
        "SELECT pg2dns.pause('forged')",
        "INSERT INTO pg2dns.control (slot, action) VALUES ('pg2dns', 'pause')",
    ] {
        let e = stack
            .exec(&format!("SET ROLE intruder; {sql}; RESET ROLE"))
            .await
            .expect_err("an unprivileged role paused pg2dns");
        ensure!(
            format!("{e:#}").contains("permission denied"),
            "{sql}: {e:#}"
        );
        stack.exec("RESET ROLE").await?;
    }
    // ...and a logical message, which any role may emit, is not a pause.
    stack
        .exec("SET ROLE intruder; SELECT pg_logical_emit_message(true, 'pg2dns', 'pause'); RESET ROLE")
        .await?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('still.example.test.', 300, 'A', '192.0.2.3')")
        .await?;
    stack
        .wait_until_answers("still.example.test.", "A", DNS_DEADLINE)
        .await?;
    ensure!(status(&stack).await?["mode"] == "running");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_on_the_same_slot_takes_over_when_the_active_instance_dies() -> Result<()> {
    let stack = Stack::start("standby", Primary::Bind).await?;
    // The takeover deletes 111 of 201 hosts on purpose: no mass delete is
    // held here (guard::* tests the guard).
    stack.append_config("[guard]\nmax_delete_share = 1.0\n")?;
    let mut first = stack.run()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('one.example.test.', 300, 'A', '192.0.2.1')")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    // The slot admits one consumer: the second waits.
    let mut standby = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
               SELECT 'w' || g || '.example.test.', 300, 'A', '192.0.2.2' FROM generate_series(1, 200) AS g",
        )
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    standby.assert_running()?;
    first.kill()?;
    let started = Instant::now();
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
               SELECT 'k' || g || '.example.test.', 300, 'A', '192.0.2.3' FROM generate_series(1, 200) AS g;
             DELETE FROM pg2dns.rr WHERE owner LIKE 'w1%';",
        )
        .await?;
    // Within DNS_DEADLINE: a takeover time is measured, not asserted here.
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    eprintln!("the standby took over in {:?}", started.elapsed());
    standby.assert_running()?;
    Ok(())
}

/// The value of a metric line starting with `name` (labels included).
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_work_and_the_health_endpoints_answer() -> Result<()> {
    let stack = Stack::start("metrics", Primary::Bind).await?;
    let addr = format!("127.0.0.1:{}", crate::harness::free_port()?);
    stack.append_config(&format!("[metrics]\nlisten = \"{addr}\"\n"))?;
    let _pg2dns = stack.run()?;
    // By default the zone series name the primary ([metrics] per_zone).
    let server = stack.server(Primary::Bind)?.addr().to_string();
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('m.example.test.', 300, 'A', '192.0.2.9'), ('n.example.test.', 300, 'A', 'bad')")
        .await?;
    stack
        .wait_until_answers("m.example.test.", "A", DNS_DEADLINE)
        .await?;
    let body = wait_until(DNS_DEADLINE, "the metrics show a confirmed LSN", || async {
        let (code, body) = http_get(&addr, "/metrics").await?;
        ensure!(code == 200, "/metrics answered {code}");
        Ok(
            if metric(&body, "pg2dns_confirmed_lsn").unwrap_or(0.0) > 0.0 {
                Check::Done(body)
            } else {
                Check::NotYet(format!("\n{body}"))
            },
        )
    })
    .await?;
    for (name, at_least) in [
        ("pg2dns_transactions_total", 1.0),
        ("pg2dns_rows_total", 2.0),
        ("pg2dns_rejected_rows_total", 1.0),
        (
            &format!("pg2dns_update_messages_total{{server=\"{server}\"}}"),
            1.0,
        ),
        (
            &format!("pg2dns_update_operations_total{{server=\"{server}\"}}"),
            1.0,
        ),
        ("pg2dns_mode{mode=\"running\"}", 1.0),
        (
            &format!("pg2dns_ack_seconds_count{{server=\"{server}\"}}"),
            1.0,
        ),
    ] {
        let v = metric(&body, name).with_context(|| format!("no {name} in\n{body}"))?;
        ensure!(v >= at_least, "{name} = {v}, expected at least {at_least}");
    }
    ensure!(http_get(&addr, "/healthz").await?.0 == 200);
    ensure!(http_get(&addr, "/readyz").await?.0 == 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_unready_while_halted() -> Result<()> {
    let stack = Stack::start("metrics-halt", Primary::Bind).await?;
    let wrong = stack.write_wrong_key_file().await?;
    stack.write_config(&[(FORWARD, &wrong)])?;
    let addr = format!("127.0.0.1:{}", crate::harness::free_port()?);
    stack.append_config(&format!("[metrics]\nlisten = \"{addr}\"\n"))?;
    stack.setup().await?;
    let _pg2dns = stack.run_as_service()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('www.example.test.', 300, 'A', '192.0.2.10')")
        .await?;
    wait_for_mode(&stack, "halted").await?;
    let (code, body) = http_get(&addr, "/readyz").await?;
    ensure!(code == 503, "/readyz answered {code} while halted: {body}");
    let (_, metrics) = http_get(&addr, "/metrics").await?;
    ensure!(
        metric(&metrics, "pg2dns_mode{mode=\"halted\"}") == Some(1.0),
        "{metrics}"
    );
    ensure!(http_get(&addr, "/healthz").await?.0 == 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reads_the_fixed_configuration_and_clears_a_halt() -> Result<()> {
    let stack = Stack::start("sighup", Primary::Bind).await?;
    let wrong = stack.write_wrong_key_file().await?;
    stack.write_config(&[(FORWARD, &wrong)])?;
    stack.setup().await?;
    let mut pg2dns = stack.run_as_service()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('hup.example.test.', 300, 'A', '192.0.2.11')")
        .await?;
    wait_for_mode(&stack, "halted").await?;
    stack.write_config(&[])?;
    crate::harness::signal(pg2dns.pid(), "HUP")?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    wait_for_mode(&stack, "running").await?;
    pg2dns.assert_running()?;
    Ok(())
}

/// The forward zone's SOA serial, as its primary answers it now.
async fn primary_serial(stack: &Stack) -> Result<i64> {
    let soa = stack.query(FORWARD, "SOA").await?;
    let rdata = &soa.first().context("the primary answers an SOA")?.rdata;
    rdata
        .split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no serial in SOA {rdata}"))
}

/// The status entry of `zone`.
fn zone_entry<'a>(s: &'a serde_json::Value, zone: &str) -> Option<&'a serde_json::Value> {
    s["zones"].as_array()?.iter().find(|z| z["zone"] == zone)
}

/// Polls `pg2dns status --json` until `ok` holds (failing after `within`).
pub(crate) async fn wait_for_status(
    stack: &Stack,
    what: &str,
    within: Duration,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    wait_until(within, &format!("status shows {what}"), || async {
        let s = status(stack).await?;
        Ok(if ok(&s) {
            Check::Done(s)
        } else {
            Check::NotYet(s.to_string())
        })
    })
    .await
}

/// Polls `/metrics` until every `(line prefix, test)` holds.
async fn wait_for_metrics(
    addr: &str,
    what: &str,
    checks: &[(&str, &dyn Fn(f64) -> bool)],
) -> Result<()> {
    wait_until(
        DNS_DEADLINE,
        &format!("the metrics show {what}"),
        || async {
            let (_, body) = http_get(addr, "/metrics").await?;
            Ok(
                if checks
                    .iter()
                    .all(|(name, ok)| metric(&body, name).is_some_and(ok))
                {
                    Check::Done(())
                } else {
                    Check::NotYet(body)
                },
            )
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_each_zones_serial_and_in_flight_and_lag_grows_while_bind_is_stopped_and_returns_to_zero(
) -> Result<()> {
    let mut stack = Stack::start("status-lag", Primary::Bind).await?;
    let addr = format!("127.0.0.1:{}", crate::harness::free_port()?);
    // The zone's own series and serial: per_zone.
    stack.append_config(&format!(
        "[metrics]\nlisten = \"{addr}\"\nper_zone = true\n"
    ))?;
    let _pg2dns = stack.run()?;
    let server = stack.server(Primary::Bind)?.addr().to_string();
    let insert = |owner: &str| {
        format!("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('{owner}', 300, 'A', '192.0.2.7')")
    };
    let serial_label = format!("pg2dns_zone_soa_serial{{zone=\"{FORWARD}\",server=\"{server}\"}}");
    let in_flight_label =
        format!("pg2dns_zone_in_flight{{zone=\"{FORWARD}\",server=\"{server}\"}}");

    // Each acknowledged change shows the serial the primary then has.
    let mut serials = Vec::new();
    for owner in ["s1.example.test.", "s2.example.test."] {
        stack.exec(&insert(owner)).await?;
        stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
        let serial = primary_serial(&stack).await?;
        let s = wait_for_status(
            &stack,
            &format!("serial {serial} of {FORWARD} with nothing in flight"),
            DNS_DEADLINE,
            |s| {
                zone_entry(s, FORWARD)
                    .is_some_and(|z| z["soa_serial"] == serial && z["in_flight"] == 0)
            },
        )
        .await?;
        let z = zone_entry(&s, FORWARD).context("the zone's entry")?;
        ensure!(
            z["acked_at"].is_string(),
            "the last acknowledgement has a time: {z}"
        );
        wait_for_metrics(
            &addr,
            "the zone's serial and nothing in flight",
            &[
                (&serial_label, &|v| v == serial as f64),
                (&in_flight_label, &|v| v == 0.0),
                ("pg2dns_lag_seconds", &|v| v == 0.0),
            ],
        )
        .await?;
        serials.push(serial);
    }
    ensure!(
        serials[1] > serials[0],
        "the serial advanced with the change: {serials:?}"
    );

    // BIND stops: what is received waits, and the lag grows.
    stack.server_mut(Primary::Bind)?.stop().await?;
    stack.exec(&insert("s3.example.test.")).await?;
    let in_flight = |s: &serde_json::Value| {
        zone_entry(s, FORWARD)
            .and_then(|z| z["in_flight"].as_i64())
            .unwrap_or(0)
    };
    let lag = |s: &serde_json::Value| s["lag_seconds"].as_f64().unwrap_or(0.0);
    let bytes = |s: &serde_json::Value| s["lag_bytes"].as_i64().unwrap_or(0);
    let first = wait_for_status(&stack, "a lag while BIND is stopped", DNS_DEADLINE, |s| {
        lag(s) >= 1.0 && bytes(s) > 0 && in_flight(s) >= 1
    })
    .await?;
    stack.exec(&insert("s4.example.test.")).await?;
    let after_s4: String = stack
        .db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let after_s4: pg2dns_decoder::Lsn = after_s4.parse()?;
    wait_for_status(&stack, "the lag growing", DNS_DEADLINE, |s| {
        lag(s) >= lag(&first) + 1.0 && bytes(s) > bytes(&first)
    })
    .await?;
    wait_for_metrics(
        &addr,
        "the lag and the change in flight",
        &[
            ("pg2dns_lag_seconds", &|v| v >= 1.0),
            (&in_flight_label, &|v| v >= 1.0),
        ],
    )
    .await?;

    // BIND is back: everything arrives, the lag in seconds returns to zero
    // and the slot confirms every change. (The bytes between the slot and
    // the server's WAL end settle at the size of pg2dns's own last
    // bookkeeping commit, which the server reports only in its next
    // keepalive: docs/operations.md, "Status".)
    let confirmed = |s: &serde_json::Value| {
        s["confirmed_flush_lsn"]
            .as_str()
            .and_then(|l| l.parse::<pg2dns_decoder::Lsn>().ok())
            .unwrap_or_default()
    };
    stack.server_mut(Primary::Bind)?.start_again().await?;
    stack
        .wait_until_dns_matches_table(RECOVERY_DEADLINE)
        .await?;
    let serial = primary_serial(&stack).await?;
    ensure!(serial > serials[1], "the serial advanced again");
    wait_for_status(
        &stack,
        "no lag and the new serial",
        RECOVERY_DEADLINE,
        |s| {
            lag(s) == 0.0
                && confirmed(s) >= after_s4
                && bytes(s) < bytes(&first)
                && s["zones"]
                    .as_array()
                    .is_some_and(|zs| zs.iter().all(|z| z["in_flight"] == 0))
                && zone_entry(s, FORWARD).is_some_and(|z| z["soa_serial"] == serial)
        },
    )
    .await?;
    wait_for_metrics(
        &addr,
        "no lag",
        &[
            ("pg2dns_lag_seconds", &|v| v == 0.0),
            (&in_flight_label, &|v| v == 0.0),
            (&serial_label, &|v| v == serial as f64),
        ],
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_row_pg2dns_cannot_read_is_rejected_naming_its_row_and_lsn_and_the_stream_goes_on(
) -> Result<()> {
    let stack = Stack::start("control-row", Primary::Bind).await?;
    let _pg2dns = stack.run()?;
    // Only pg2dns.pause() and pg2dns.resume() write pg2dns.control; a table
    // changed by hand lets a row through that neither would write.
    stack
        .exec("ALTER TABLE pg2dns.control DROP CONSTRAINT control_action_check")
        .await?;
    let row = stack
        .db
        .query_one(
            "WITH c AS (INSERT INTO pg2dns.control (slot, action, requested_by, reason) \
               VALUES ($1, 'Pause', 'tester', 'written by hand') RETURNING id) \
             SELECT id::text FROM c",
            &[&crate::harness::stack::SLOT],
        )
        .await?;
    let id: String = row.get(0);
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('after-control.example.test.', 300, 'A', '192.0.2.77')")
        .await?;
    // Not a pause: the stream goes on past it.
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(
        stack
            .query("after-control.example.test.", "A")
            .await?
            .iter()
            .any(|r| r.rdata == "192.0.2.77"),
        "the row after the control row reached DNS"
    );
    let (lsn, reason) = wait_until(
        DNS_DEADLINE,
        "the control row is recorded in pg2dns.rejected",
        || async {
            let rows = stack
                .db
                .query(
                    "SELECT lsn::text, reason FROM pg2dns.rejected \
                     WHERE source = 'pg2dns.control' AND row_key = $1",
                    &[&id],
                )
                .await?;
            Ok(match rows.first() {
                Some(r) => Check::Done((r.get::<_, String>(0), r.get::<_, String>(1))),
                None => Check::NotYet("no rejection".into()),
            })
        },
    )
    .await?;
    ensure!(
        reason.contains(&format!("row {id} of pg2dns.control"))
            && reason.contains(&format!("at LSN {lsn}"))
            && reason.contains("\"Pause\""),
        "the rejection names the row, its LSN and the action: {reason}"
    );
    let s = status(&stack).await?;
    ensure!(s["mode"] == "running", "the service did not pause: {s}");
    Ok(())
}

/// The definition of `pg2dns.resume` and the installed schema versions:
/// what a `setup` that changes nothing leaves as it was.
async fn schema_fingerprint(stack: &Stack) -> Result<(String, Vec<i32>)> {
    let resume: String = stack
        .db
        .query_one(
            "SELECT md5(string_agg(pg_get_functiondef(oid), '' ORDER BY oid)) \
             FROM pg_proc WHERE proname = 'resume' \
               AND pronamespace = 'pg2dns'::regnamespace",
            &[],
        )
        .await?
        .get(0);
    let versions = stack
        .db
        .query(
            "SELECT version FROM pg2dns.schema_version ORDER BY version",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok((resume, versions))
}

/// Starts `pg2dns reconcile --apply` that holds the service paused at its
/// snapshot (a test hook makes it wait before the repair); returns it with
/// `status --json` read while it holds the pause.
async fn status_during_a_reconciles_pause(
    stack: &Stack,
) -> Result<(tokio::process::Child, serde_json::Value)> {
    let mut reconcile = crate::reconcile::spawn_reconcile(
        stack,
        &["--apply"],
        &[("PG2DNS_TEST_PAUSE_BEFORE_REPAIR_MS", "600000")],
    )?;
    crate::reconcile::read_until(&mut reconcile, "before the repair").await?;
    let s = status(stack).await?;
    ensure!(s["state"] == "paused", "the reconcile holds the pause: {s}");
    Ok((reconcile, s))
}

/// Ends a reconcile with SIGTERM (it resumes the service, exits 143) and
/// waits until the service runs again.
async fn end_reconcile(stack: &Stack, mut reconcile: tokio::process::Child) -> Result<()> {
    crate::harness::signal(reconcile.id().context("no pid")?, "TERM")?;
    let exit = tokio::time::timeout(Duration::from_secs(60), reconcile.wait()).await??;
    ensure!(exit.code() == Some(143), "reconcile exits 143: {exit}");
    wait_for_mode(stack, "running").await?;
    Ok(())
}

/// A reconcile pauses the running service at its snapshot's point (a
/// `pg2dns.resume(slot, until)` by the lease holder). From schema version
/// 14 that pause keeps the reconcile's reason, so `status` names it: the
/// reconcile, its role and its process. A schema-13 database shows no
/// reason; `setup` migrates it, and a second `setup` changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_the_reconcile_holding_the_service_paused_after_setup_migrates_schema_13(
) -> Result<()> {
    let (stack, run) = crate::reconcile::service_with_a_stray_record("pause-reason").await?;
    // The database as schema version 13 left it: version 9's resume().
    stack
        .exec(&format!(
            "{} DELETE FROM pg2dns.schema_version WHERE version = 14",
            include_str!("../../sql/009_lease.sql")
        ))
        .await?;
    let (reconcile, s) = status_during_a_reconciles_pause(&stack).await?;
    ensure!(
        s["reason"] == "",
        "before version 14 the pause at the snapshot has no reason: {s}"
    );
    end_reconcile(&stack, reconcile).await?;

    drop(run);
    stack.setup().await?;
    let migrated = schema_fingerprint(&stack).await?;
    ensure!(migrated.1.last() == Some(&14), "{migrated:?}");
    stack.setup().await?;
    ensure!(
        schema_fingerprint(&stack).await? == migrated,
        "a second setup changed the schema"
    );
    let _run = stack.run()?;
    wait_for_stream(&stack, "open").await?;

    let (reconcile, s) = status_during_a_reconciles_pause(&stack).await?;
    let role = s["requested_by"].as_str().unwrap_or_default();
    let want = format!(
        "reconcile by {role} pid {}",
        reconcile.id().context("no pid")?
    );
    ensure!(
        !role.is_empty() && s["reason"] == want.as_str(),
        "status --json names the reconcile ({want}): {s}"
    );
    let text = stack.admin(&["status"]).await?;
    let text = String::from_utf8_lossy(&text.stdout);
    ensure!(
        text.contains(&format!("({want})")),
        "status names the reconcile ({want}):\n{text}"
    );
    end_reconcile(&stack, reconcile).await
}
