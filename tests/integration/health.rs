//! Health, status and metrics say what the service does, not what it would
//! like to: ready only while changes reach every primary; a standby, a halt,
//! a held mass delete, an unreachable primary, a stop and a lost slot each
//! show as their own state in `pg2dns status`, `/readyz` and `/metrics`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::admin::{status, wait_for_status};
use crate::harness::stack::{FORWARD, SLOT};
use crate::harness::{wait_until, Check, Pg2dns, Primary, Stack, DNS_DEADLINE, RECOVERY_DEADLINE};

/// GET `path` from a metrics listener: (status code, headers and body).
pub(crate) async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    http_get_with(addr, path, "").await
}

/// [`http_get`] with extra header lines (each ending in CRLF).
async fn http_get_with(addr: &str, path: &str, headers: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).await?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("an HTTP status line")?;
    Ok((code, text))
}

/// Polls `path` until `ok(code, text)` holds (a refused connection is "not
/// yet").
async fn wait_for_http(
    addr: &str,
    path: &str,
    what: &str,
    within: Duration,
    ok: impl Fn(u16, &str) -> bool,
) -> Result<String> {
    wait_until(within, what, || async {
        Ok(match http_get(addr, path).await {
            Ok((code, text)) if ok(code, &text) => Check::Done(text),
            Ok((code, text)) => Check::NotYet(format!("{code}: {text}")),
            Err(e) => Check::NotYet(e.to_string()),
        })
    })
    .await
}

/// The value of the metric sample `name` (labels included, exactly).
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A free loopback address for a metrics listener.
fn metrics_addr() -> Result<String> {
    Ok(format!("127.0.0.1:{}", crate::harness::free_port()?))
}

/// A copy of the stack's config with another metrics listener, for a second
/// instance on the same host.
fn config_listening_on(stack: &Stack, addr: &str) -> Result<PathBuf> {
    let text = std::fs::read_to_string(stack.config_path())?;
    let start = text
        .find("[metrics]")
        .context("the config has a [metrics] table")?;
    let path = stack.dir().join("second.toml");
    std::fs::write(
        &path,
        format!("{}[metrics]\nlisten = \"{addr}\"\n", &text[..start]),
    )?;
    Ok(path)
}

const INSERT: &str = "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES";

/// The `pg2dns_*` samples of `body` whose family is one of the zone
/// families, as (series with labels, value).
fn zone_family_samples(body: &str) -> Vec<(String, f64)> {
    const FAMILIES: [&str; 8] = [
        "pg2dns_update_operations_total{",
        "pg2dns_update_messages_total{",
        "pg2dns_update_bytes_total{",
        "pg2dns_ack_seconds_count{",
        "pg2dns_zone_in_flight{",
        "pg2dns_zone_soa_serial{",
        "pg2dns_dns_retries_total{",
        "pg2dns_zone_unreachable{",
    ];
    body.lines()
        .filter(|l| FAMILIES.iter().any(|f| l.starts_with(f)))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zone_series_name_the_primary_by_default_and_each_zone_with_per_zone() -> Result<()> {
    let stack = Stack::start("health-per-zone", Primary::Bind).await?;
    let server = stack.server(Primary::Bind)?.addr().to_string();
    let addr = metrics_addr()?;
    stack.append_config(&format!("[metrics]\nlisten = \"{addr}\"\n"))?;
    let mut run = stack.run()?;
    stack
        .exec(&format!(
            "{INSERT} ('one.example.test.', 300, 'A', '192.0.2.1')"
        ))
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    // Default: one series per family for the one primary of both zones,
    // the acknowledgement counted, and no zone label anywhere.
    let messages = format!("pg2dns_update_messages_total{{server=\"{server}\"}}");
    let acks = format!("pg2dns_ack_seconds_count{{server=\"{server}\"}}");
    let body = wait_for_http(
        &addr,
        "/metrics",
        "the acknowledgement counted",
        DNS_DEADLINE,
        |_, t| metric(t, &acks).is_some_and(|v| v >= 1.0),
    )
    .await?;
    ensure!(metric(&body, &messages).is_some_and(|v| v >= 1.0), "{body}");
    ensure!(
        metric(
            &body,
            &format!("pg2dns_zone_in_flight{{server=\"{server}\"}}")
        )
        .is_some(),
        "{body}"
    );
    let samples = zone_family_samples(&body);
    ensure!(samples.len() >= 8, "too few zone-family samples:\n{body}");
    for (series, _) in &samples {
        ensure!(
            !series.contains("zone=\"") && series.contains(&format!("server=\"{server}\"")),
            "{series} is not labelled by the primary alone:\n{body}"
        );
    }
    ensure!(
        !body.contains("pg2dns_zone_soa_serial{"),
        "a serial without per_zone:\n{body}"
    );
    run.terminate().await?;

    // per_zone = true: each zone its own series (both exist from start),
    // with its primary, and its SOA serial once acknowledged.
    let per_zone_addr = metrics_addr()?;
    let text = std::fs::read_to_string(stack.config_path())?;
    let start = text.find("[metrics]").context("the [metrics] table")?;
    let config = stack.dir().join("per-zone.toml");
    std::fs::write(
        &config,
        format!(
            "{}[metrics]\nlisten = \"{per_zone_addr}\"\nper_zone = true\n",
            &text[..start]
        ),
    )?;
    let _per_zone = Pg2dns::spawn(&config, &stack.dir().join("per-zone.log"), &[])?;
    stack
        .exec(&format!(
            "{INSERT} ('two.example.test.', 300, 'A', '192.0.2.2')"
        ))
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    let serial = format!("pg2dns_zone_soa_serial{{zone=\"{FORWARD}\",server=\"{server}\"}}");
    let body = wait_for_http(
        &per_zone_addr,
        "/metrics",
        "the zone's serial",
        DNS_DEADLINE,
        |_, t| metric(t, &serial).is_some_and(|v| v >= 1.0),
    )
    .await?;
    for zone in stack.zones() {
        for family in ["pg2dns_update_messages_total", "pg2dns_zone_unreachable"] {
            let series = format!("{family}{{zone=\"{zone}\",server=\"{server}\"}}");
            ensure!(metric(&body, &series).is_some(), "no {series} in\n{body}");
        }
    }
    ensure!(
        metric(
            &body,
            &format!("pg2dns_update_messages_total{{zone=\"{FORWARD}\",server=\"{server}\"}}")
        )
        .is_some_and(|v| v >= 1.0),
        "{body}"
    );
    for (series, _) in zone_family_samples(&body) {
        ensure!(
            series.contains("zone=\"") && series.contains(&format!("server=\"{server}\"")),
            "{series} names no zone:\n{body}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_is_not_ready_logs_once_and_is_ready_after_taking_over() -> Result<()> {
    let stack = Stack::start("health-standby", Primary::Bind).await?;
    let active_addr = metrics_addr()?;
    stack.append_config(&format!("[metrics]\nlisten = \"{active_addr}\"\n"))?;
    let mut active = stack.run()?;
    wait_for_http(
        &active_addr,
        "/readyz",
        "the active instance ready",
        DNS_DEADLINE,
        |c, _| c == 200,
    )
    .await?;

    // A second instance, its health on its own port, its retries logged
    // at debug so that they can be counted.
    let standby_addr = metrics_addr()?;
    let config = config_listening_on(&stack, &standby_addr)?;
    let log = stack.dir().join("standby.log");
    let mut standby = Pg2dns::spawn_run(
        &config,
        &log,
        &[("RUST_LOG", "info,pg2dns::pipeline=debug")],
        &["--exit-on-halt"],
    )?;
    let body = wait_for_http(
        &standby_addr,
        "/readyz",
        "the standby not ready, saying why",
        DNS_DEADLINE,
        |c, t| c == 503 && t.contains("standby"),
    )
    .await?;
    ensure!(body.contains("not ready: standby"), "{body}");
    ensure!(
        http_get(&standby_addr, "/healthz").await?.0 == 200,
        "a standby is alive"
    );
    let metrics = http_get(&standby_addr, "/metrics").await?.1;
    ensure!(
        metric(&metrics, "pg2dns_mode{mode=\"standby\"}") == Some(1.0),
        "{metrics}"
    );
    ensure!(metric(&metrics, "pg2dns_ready") == Some(0.0), "{metrics}");
    // The active instance's state is not the standby's to overwrite; the
    // status lists the standby beside it.
    let me = format!(":{}", standby.pid());
    let s = wait_for_status(&stack, "the standby listed", DNS_DEADLINE, |s| {
        s["standbys"].as_array().is_some_and(|b| {
            b.len() == 1 && b[0]["instance"].as_str().is_some_and(|i| i.ends_with(&me))
        })
    })
    .await?;
    ensure!(s["state"] == "running", "{s}");
    let text = String::from_utf8(stack.admin(&["status"]).await?.stdout)?;
    ensure!(
        text.contains(&format!("slot {SLOT}: running since"))
            && text.contains("standby: ")
            && text.contains("waits to take over"),
        "{text}"
    );

    // Five more retries: one INFO line said it, the retries only at debug.
    let loud = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains(" INFO ") || l.contains(" WARN ") || l.contains(" ERROR "))
            .map(str::to_owned)
            .collect()
    };
    let retries = |text: &str| text.matches("still standing by").count();
    let (loud_before, retries_before) = {
        let text = standby.log();
        (loud(&text), retries(&text))
    };
    wait_until(RECOVERY_DEADLINE, "five more standby retries", || {
        let text = standby.log();
        async move {
            Ok(if retries(&text) >= retries_before + 5 {
                Check::Done(())
            } else {
                Check::NotYet(text)
            })
        }
    })
    .await?;
    let text = standby.log();
    let loud_after = loud(&text);
    ensure!(
        text.lines()
            .filter(|l| l.contains("standing by: replication slot"))
            .count()
            == 1,
        "one line says the instance stands by:\n{text}"
    );
    ensure!(
        !text.contains(" ERROR "),
        "a standby logs no error:\n{text}"
    );
    ensure!(
        !loud_after.iter().any(|l| l.contains("streaming")),
        "a standby does not say it streams:\n{text}"
    );
    ensure!(
        loud_after.len() <= loud_before.len() + 1,
        "a standby's retries are quiet above debug:\n{text}"
    );

    // The active instance dies: the standby takes over and is ready.
    active.kill()?;
    wait_for_http(
        &standby_addr,
        "/readyz",
        "the new active instance ready",
        RECOVERY_DEADLINE,
        |c, _| c == 200,
    )
    .await?;
    stack
        .exec(&format!(
            "{INSERT} ('after.example.test.', 300, 'A', '192.0.2.1')"
        ))
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    wait_for_status(&stack, "running, with no standby left", DNS_DEADLINE, |s| {
        s["state"] == "running" && s["standbys"].as_array().is_some_and(Vec::is_empty)
    })
    .await?;
    standby.assert_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_takeover_the_shared_metrics_port_answers_for_the_new_active_instance() -> Result<()>
{
    let stack = Stack::start("health-port", Primary::Bind).await?;
    let addr = metrics_addr()?;
    stack.append_config(&format!("[metrics]\nlisten = \"{addr}\"\n"))?;
    let mut first = stack.run()?;
    wait_for_http(
        &addr,
        "/readyz",
        "the first instance ready",
        DNS_DEADLINE,
        |c, _| c == 200,
    )
    .await?;
    // Same config, same host: the second cannot bind the port yet.
    let mut second = stack.run()?;
    wait_until(
        DNS_DEADLINE,
        "the second instance to find the port taken",
        || {
            let log = second.log();
            async move {
                Ok(
                    if log.contains("cannot listen for metrics") && log.contains("standing by") {
                        Check::Done(())
                    } else {
                        Check::NotYet(log)
                    },
                )
            }
        },
    )
    .await?;
    first.kill()?;
    // Only the second instance is left to answer on the port.
    wait_for_http(
        &addr,
        "/readyz",
        "the port answering ready again",
        RECOVERY_DEADLINE,
        |c, _| c == 200,
    )
    .await?;
    let metrics = http_get(&addr, "/metrics").await?.1;
    ensure!(
        metric(&metrics, "pg2dns_mode{mode=\"running\"}") == Some(1.0),
        "{metrics}"
    );
    second.assert_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_by_sigterm_or_by_exit_on_halt_is_recorded_as_stopped() -> Result<()> {
    let stack = Stack::start("health-stopped", Primary::Bind).await?;
    // --exit-on-halt: a wrong key halts, and the process exits saying so.
    let wrong = stack.write_wrong_key_file().await?;
    stack.write_config(&[(FORWARD, &wrong)])?;
    let mut pg2dns = stack.run()?;
    stack
        .exec(&format!(
            "{INSERT} ('bad.example.test.', 300, 'A', '192.0.2.2')"
        ))
        .await?;
    let exit = pg2dns.wait_exit(DNS_DEADLINE).await?;
    ensure!(
        !exit.success(),
        "a halt under --exit-on-halt exits non-zero"
    );
    let s = status(&stack).await?;
    ensure!(s["state"] == "stopped" && s["mode"] == "stopped", "{s}");
    let reason = s["reason"].as_str().unwrap_or_default();
    ensure!(
        reason.contains("halted, and exited (--exit-on-halt)") && reason.contains(FORWARD),
        "the reason names the halt: {s}"
    );
    ensure!(!s["hint"].as_str().unwrap_or_default().is_empty(), "{s}");

    // SIGTERM while streaming.
    stack.write_config(&[])?;
    let mut pg2dns = stack.run()?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    wait_for_status(&stack, "running", DNS_DEADLINE, |s| s["state"] == "running").await?;
    let exit = pg2dns.terminate().await?;
    ensure!(exit.success(), "SIGTERM exits 0: {exit}");
    let s = status(&stack).await?;
    ensure!(s["state"] == "stopped", "after SIGTERM: {s}");
    ensure!(!s["slot_active"].as_bool().unwrap_or(true), "{s}");

    // A stop does not overwrite a pause: it survives the restart.
    let mut pg2dns = stack.run()?;
    wait_for_status(&stack, "running again", DNS_DEADLINE, |s| {
        s["state"] == "running"
    })
    .await?;
    stack.admin(&["pause", "--wait"]).await?;
    let exit = pg2dns.terminate().await?;
    ensure!(exit.success(), "SIGTERM while paused exits 0: {exit}");
    let s = status(&stack).await?;
    ensure!(s["state"] == "paused", "a pause outlives SIGTERM: {s}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswering_primary_is_named_unready_and_counted_until_it_answers_again() -> Result<()>
{
    let mut stack = Stack::start("health-unreachable", Primary::Bind).await?;
    let addr = metrics_addr()?;
    stack.append_config(&format!(
        "[limits]\nunreachable_after_s = 2\n\n[metrics]\nlisten = \"{addr}\"\n"
    ))?;
    let _pg2dns = stack.run()?;
    wait_for_http(&addr, "/readyz", "ready", DNS_DEADLINE, |c, _| c == 200).await?;
    let server = stack.server(Primary::Bind)?.addr().to_string();
    // By default the series name the primary ([metrics] per_zone = false).
    let unreachable = format!("pg2dns_zone_unreachable{{server=\"{server}\"}}");
    let retries = |body: &str| -> f64 {
        body.lines()
            .filter(|l| l.starts_with(&format!("pg2dns_dns_retries_total{{server=\"{server}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // The counters exist from start, at 0.
    let before = http_get(&addr, "/metrics").await?.1;
    ensure!(
        metric(
            &before,
            &format!("pg2dns_dns_retries_total{{server=\"{server}\",reason=\"unreachable\"}}")
        ) == Some(0.0),
        "{before}"
    );
    ensure!(metric(&before, &unreachable) == Some(0.0), "{before}");
    ensure!(
        metric(&before, "pg2dns_errors_total{kind=\"retry\"}") == Some(0.0),
        "{before}"
    );

    stack.server_mut(Primary::Bind)?.stop().await?;
    stack
        .exec(&format!(
            "{INSERT} ('waits.example.test.', 300, 'A', '192.0.2.3')"
        ))
        .await?;
    let body = wait_for_http(
        &addr,
        "/readyz",
        "not ready, naming the zone",
        RECOVERY_DEADLINE,
        |c, t| c == 503 && t.contains("unreachable"),
    )
    .await?;
    ensure!(body.contains(FORWARD) && body.contains(&server), "{body}");
    let metrics = http_get(&addr, "/metrics").await?.1;
    ensure!(metric(&metrics, &unreachable) == Some(1.0), "{metrics}");
    ensure!(
        retries(&metrics) >= 1.0,
        "the retries are counted:\n{metrics}"
    );
    let s = wait_for_status(&stack, "unreachable", DNS_DEADLINE, |s| {
        s["state"] == "unreachable"
    })
    .await?;
    let zone = s["zones"]
        .as_array()
        .and_then(|z| z.iter().find(|z| z["zone"] == FORWARD))
        .context("the zone's entry")?;
    ensure!(zone["unreachable_since"].is_string(), "{s}");
    let text = String::from_utf8(stack.admin(&["status"]).await?.stdout)?;
    ensure!(
        text.contains(&format!("unreachable: zone {FORWARD} primary {server}")),
        "{text}"
    );

    // Back: the change arrives and everything says ready again.
    stack.server_mut(Primary::Bind)?.start_again().await?;
    stack
        .wait_until_dns_matches_table(RECOVERY_DEADLINE)
        .await?;
    wait_for_http(
        &addr,
        "/readyz",
        "ready again",
        RECOVERY_DEADLINE,
        |c, _| c == 200,
    )
    .await?;
    let metrics = http_get(&addr, "/metrics").await?.1;
    ensure!(metric(&metrics, &unreachable) == Some(0.0), "{metrics}");
    wait_for_status(&stack, "running again", DNS_DEADLINE, |s| {
        s["state"] == "running"
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_mass_delete_shows_held_and_its_lag_grows() -> Result<()> {
    let stack = Stack::start("health-held", Primary::Bind).await?;
    let addr = metrics_addr()?;
    stack.append_config(&format!("[metrics]\nlisten = \"{addr}\"\n"))?;
    let _pg2dns = stack.run_as_service()?;
    // 20 records (more than the guard's min_zone_records), all deleted.
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             SELECT 'h' || g || '.example.test.', 300, 'A', '192.0.2.' || g FROM generate_series(1, 20) AS g",
        )
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    stack
        .exec("DELETE FROM pg2dns.rr WHERE owner LIKE 'h%'")
        .await?;
    let lag = |s: &serde_json::Value| s["lag_seconds"].as_f64().unwrap_or(0.0);
    let first = wait_for_status(&stack, "held, with a lag", DNS_DEADLINE, |s| {
        s["state"] == "held" && lag(s) > 0.0
    })
    .await?;
    wait_for_status(&stack, "the held lag growing", DNS_DEADLINE, |s| {
        s["state"] == "held" && lag(s) >= lag(&first) + 1.0
    })
    .await?;
    let body = http_get(&addr, "/readyz").await?;
    ensure!(body.0 == 503 && body.1.contains("held"), "{body:?}");
    let lag_metric = |body: &str| metric(body, "pg2dns_lag_seconds").unwrap_or(0.0);
    let m1 = wait_for_http(
        &addr,
        "/metrics",
        "held in the metrics",
        DNS_DEADLINE,
        |_, t| metric(t, "pg2dns_mode{mode=\"held\"}") == Some(1.0) && lag_metric(t) > 0.0,
    )
    .await?;
    wait_for_http(
        &addr,
        "/metrics",
        "the lag metric growing",
        DNS_DEADLINE,
        |_, t| lag_metric(t) >= lag_metric(&m1) + 1.0,
    )
    .await?;
    let text = String::from_utf8(stack.admin(&["status"]).await?.stdout)?;
    ensure!(text.contains(&format!("slot {SLOT}: held since")), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_lost_while_paused_shows_in_status_and_metrics() -> Result<()> {
    let stack = Stack::start("health-lost", Primary::Bind).await?;
    let addr = metrics_addr()?;
    stack.append_config(&format!("[metrics]\nlisten = \"{addr}\"\n"))?;
    let _pg2dns = stack.run_as_service()?;
    wait_for_http(
        &addr,
        "/metrics",
        "the slot's WAL reserved",
        DNS_DEADLINE,
        |_, t| metric(t, "pg2dns_slot_wal_status{status=\"reserved\"}") == Some(1.0),
    )
    .await?;
    stack.admin(&["pause", "--wait"]).await?;
    stack
        .exec("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        .await?;
    stack.exec("SELECT pg_reload_conf()").await?;
    // WAL past the limit, then a checkpoint that removes it.
    wait_until(RECOVERY_DEADLINE, "the slot to be lost", || async {
        stack
            .exec(
                "CREATE TABLE IF NOT EXISTS filler (x text);
                 INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 2000);
                 SELECT pg_switch_wal();",
            )
            .await?;
        stack.exec("CHECKPOINT").await?;
        let row = stack
            .db
            .query_one(
                "SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1",
                &[&SLOT],
            )
            .await?;
        let wal_status: String = row.get(0);
        Ok(if wal_status == "lost" {
            Check::Done(())
        } else {
            Check::NotYet(wal_status)
        })
    })
    .await?;
    let s = status(&stack).await?;
    ensure!(s["state"] == "paused" && s["wal_status"] == "lost", "{s}");
    ensure!(
        s["warning"]
            .as_str()
            .unwrap_or_default()
            .contains("slot is lost"),
        "{s}"
    );
    let text = String::from_utf8(stack.admin(&["status"]).await?.stdout)?;
    ensure!(
        text.contains("slot WAL: lost") && text.contains("warning: the slot is lost"),
        "{text}"
    );
    wait_for_http(
        &addr,
        "/metrics",
        "the lost slot in the metrics",
        DNS_DEADLINE,
        |_, t| {
            metric(t, "pg2dns_slot_wal_status{status=\"lost\"}") == Some(1.0)
                && metric(t, "pg2dns_slot_wal_status{status=\"reserved\"}") == Some(0.0)
        },
    )
    .await?;
    Ok(())
}

/// The metric families of an exposition whose `# HELP` and `# TYPE` lines
/// agree, or why not.
fn families(body: &str) -> Result<std::collections::BTreeMap<String, String>> {
    let mut helped = std::collections::BTreeSet::new();
    let mut typed = std::collections::BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split(' ').next().unwrap_or("").to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split(' ');
            let name = words.next().unwrap_or("").to_owned();
            typed.insert(name, words.next().unwrap_or("").to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            // Every sample belongs to a declared family.
            let name = line.split(['{', ' ']).next().unwrap_or("");
            ensure!(
                typed.keys().any(|f| name.starts_with(f.as_str())),
                "sample {line:?} has no family declared before it"
            );
        }
    }
    ensure!(
        helped == typed.keys().cloned().collect(),
        "HELP {helped:?}\nTYPE {typed:?}"
    );
    Ok(typed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_speak_openmetrics_to_prometheus_and_text_to_others_with_help_for_every_family(
) -> Result<()> {
    let stack = Stack::start("health-openmetrics", Primary::Bind).await?;
    let addr = metrics_addr()?;
    stack.append_config(&format!("[metrics]\nlisten = \"{addr}\"\n"))?;
    let _pg2dns = stack.run()?;
    wait_for_http(&addr, "/readyz", "ready", DNS_DEADLINE, |c, _| c == 200).await?;

    // What Prometheus sends.
    let accept = "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n";
    let (code, text) = http_get_with(&addr, "/metrics", accept).await?;
    ensure!(code == 200, "{text}");
    let (head, body) = text.split_once("\r\n\r\n").context("headers and body")?;
    ensure!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    ensure!(body.trim_end().ends_with("# EOF"), "{body}");
    let typed = families(body)?;
    for (family, kind) in [
        ("pg2dns_build", "info"),
        ("pg2dns_errors", "counter"),
        ("pg2dns_dns_retries", "counter"),
        ("pg2dns_slot_retained_wal_bytes", "gauge"),
        ("pg2dns_ready", "gauge"),
        ("process_cpu_seconds", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        ensure!(
            typed.get(family).map(String::as_str) == Some(kind),
            "{family} is not a {kind} in\n{body}"
        );
    }
    ensure!(
        metric(body, "process_open_fds").is_some_and(|v| v > 0.0),
        "{body}"
    );
    ensure!(metric(body, "pg2dns_ready") == Some(1.0), "{body}");

    // Anyone else (curl, promtool check metrics): the text format 0.0.4,
    // where a counter's family carries its `_total` name.
    let (code, text) = http_get(&addr, "/metrics").await?;
    ensure!(code == 200, "{text}");
    let (head, body) = text.split_once("\r\n\r\n").context("headers and body")?;
    ensure!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    let typed = families(body)?;
    ensure!(
        typed.get("pg2dns_errors_total").map(String::as_str) == Some("counter"),
        "{body}"
    );
    ensure!(!body.contains("# EOF"), "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_into_a_closed_pipe_exits_without_a_panic() -> Result<()> {
    let stack = Stack::start("health-pipe", Primary::Bind).await?;
    let _pg2dns = stack.run()?;
    wait_for_status(&stack, "running", DNS_DEADLINE, |s| s["state"] == "running").await?;
    // A pipe whose reader is gone before pg2dns writes: `status | head -c1`
    // at its most certain.
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let output = tokio::process::Command::new(crate::harness::pg2dns::binary())
        .args(["status", "-c"])
        .arg(stack.config_path())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!stderr.contains("panicked"), "{stderr}");
    ensure!(output.status.success(), "{}: {stderr}", output.status);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_wait_without_a_running_service_says_so_and_fails() -> Result<()> {
    let stack = Stack::start("health-pause", Primary::Bind).await?;
    let output =
        crate::harness::pg2dns::command_with(&["pause", "--wait"], stack.config_path(), &[])
            .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "pause --wait must fail: {stderr}");
    ensure!(
        stderr.contains(&format!("no pg2dns run is streaming slot {SLOT}"))
            && stderr.contains("takes effect when the service streams again"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_of_the_same_name_in_another_database_halts_naming_it() -> Result<()> {
    let stack = Stack::start("health-otherdb", Primary::Bind).await?;
    stack
        .exec(&format!("SELECT pg_drop_replication_slot('{SLOT}')"))
        .await?;
    stack.exec("CREATE DATABASE other").await?;
    let url = stack.pg.url();
    let url = format!("{}/other", url.rsplit_once('/').context("a URL")?.0);
    let (other, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    other
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&SLOT],
        )
        .await?;
    let _pg2dns = stack.run_as_service()?;
    let s = wait_for_status(&stack, "halted", DNS_DEADLINE, |s| s["state"] == "halted").await?;
    let reason = s["reason"].as_str().unwrap_or_default();
    ensure!(reason.contains("belongs to database \"other\""), "{s}");
    ensure!(
        s["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("[database].slot"),
        "{s}"
    );
    ensure!(
        s["wal_status"] == "",
        "another database's slot is not shown as ours: {s}"
    );
    Ok(())
}
