//! Thousands of zones on one server share a few connections
//! (`docs/design-many-zones.md`): with one connection per zone, BIND's
//! `tcp-clients` quota (150 by default) left most zones waiting minutes.
//! Each test runs the server at its defaults and compares every zone's AXFR
//! with the table.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use pg2dns::config::Config;
use pg2dns_decoder::{RType, Record};

use crate::harness::{free_port, wait_until, Check, Primary, Stack};

/// The zones of each test.
const ZONES: usize = 2_000;
/// The pool the tests configure (pg2dns's default).
const CONNECTIONS: usize = 4;

pub(crate) fn zone_name(i: usize) -> String {
    format!("z{i:04}.many.test.")
}

/// A stack with `n` zones on `primary`, a metrics listener and the
/// server's limits written out; returns it with the metrics address.
async fn many_zones(label: &str, primary: Primary, n: usize) -> Result<(Stack, String)> {
    many_zones_over(label, primary, n, CONNECTIONS).await
}

/// [`many_zones`] with a pool of `connections`.
async fn many_zones_over(
    label: &str,
    primary: Primary,
    n: usize,
    connections: usize,
) -> Result<(Stack, String)> {
    let names: Vec<String> = (0..n).map(zone_name).collect();
    let zones: Vec<(&str, Primary)> = names.iter().map(|z| (z.as_str(), primary)).collect();
    let stack = Stack::start_split(&format!("{label}-{}", primary.label()), &zones).await?;
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let server = stack.server(primary)?.addr();
    stack.append_config(&format!(
        "[metrics]\nlisten = \"{metrics}\"\n\n\
         [[server]]\naddress = \"{server}\"\nconnections = {connections}\nmax_in_flight = 64\n"
    ))?;
    Ok((stack, metrics))
}

/// Waits until the slot confirmed everything written so far: every
/// transaction before is acknowledged by its zone's server.
async fn wait_until_confirmed(stack: &Stack, within: Duration) -> Result<()> {
    let target = stack.current_wal_lsn().await?;
    wait_until(within, &format!("the slot confirms {target}"), || async {
        let confirmed = stack.confirmed_flush_lsn().await?;
        Ok(if confirmed >= target {
            Check::Done(())
        } else {
            Check::NotYet(format!("confirmed {confirmed}"))
        })
    })
    .await
}

/// Every zone's records, as a TSIG-signed AXFR from its primary gives them
/// (apex SOA and NS left out), compared with what `pg2dns.rr` says; the
/// transfers run a few at a time. Returns the zones that differ, with both
/// sides.
pub(crate) async fn zones_differing_from_table(stack: &Stack) -> Result<Vec<String>> {
    let config = Config::load(stack.config_path())?;
    let mut expected: std::collections::BTreeMap<String, Vec<String>> = config
        .zones
        .iter()
        .map(|z| (z.name.to_string(), Vec::new()))
        .collect();
    // The rows as written, parsed as pg2dns parses them.
    let rows = stack
        .db
        .query("SELECT id, owner, ttl, type, rdata FROM pg2dns.rr", &[])
        .await?;
    for row in rows {
        let (id, owner, ttl, rtype, rdata): (i64, String, i32, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let record = Record::parse(&owner, u32::try_from(ttl)?, &rtype, &rdata)
            .with_context(|| format!("row {id}"))?;
        let zone = record
            .owner
            .to_string()
            .split_once('.')
            .map(|(_, z)| z.to_owned());
        let list = zone
            .and_then(|z| expected.get_mut(&z))
            .with_context(|| format!("row {id} is in none of the zones"))?;
        list.push(record.to_string());
    }
    let transfers: Vec<(String, Vec<String>)> = stream::iter(config.zones.iter())
        .map(|z| async move {
            let t =
                pg2dns::dns::axfr::transfer(&z.name, z.primary, &z.key, Duration::from_secs(10))
                    .await
                    .with_context(|| format!("AXFR of {}", z.name))?;
            let apex = z.name.to_string();
            let mut records: Vec<String> = t
                .records
                .into_iter()
                .filter(|r| {
                    !(r.owner.to_string() == apex && matches!(r.rtype, RType::SOA | RType::NS))
                })
                .map(|r| r.to_string())
                .collect();
            records.sort();
            records.dedup();
            anyhow::Ok((apex, records))
        })
        .buffer_unordered(8)
        .try_collect()
        .await?;
    let mut differing = Vec::new();
    for (zone, dns) in transfers {
        let mut want = expected.remove(&zone).unwrap_or_default();
        want.sort();
        want.dedup();
        if want != dns {
            differing.push(format!("{zone}: table {want:?}, DNS {dns:?}"));
        }
    }
    Ok(differing)
}

/// The value of the metric sample `name{labels}` in a scrape.
/// Fails naming (a few of) the zones whose AXFR differs from the table.
pub(crate) async fn every_zone_equals_the_table(stack: &Stack) -> Result<()> {
    let differing = zones_differing_from_table(stack).await?;
    ensure!(
        differing.is_empty(),
        "{} zones differ from the table, e.g. {:?}",
        differing.len(),
        &differing[..differing.len().min(3)]
    );
    Ok(())
}

fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// One transaction adding a record to each of the first `n` zones.
fn one_record_in_each_zone(n: usize) -> String {
    format!(
        "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) \
         SELECT 'h.z' || lpad(i::text, 4, '0') || '.many.test.', 300, 'A', '192.0.2.' || (i % 250 + 1) \
         FROM generate_series(0, {}) AS i",
        n - 1
    )
}

/// The sum of the samples of `name` whose labels contain `label`.
fn sum_of(body: &str, name: &str, label: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A pseudo-random sequence (an LCG) that a failing run can repeat.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

async fn two_thousand_zones_over_a_few_connections_match_the_table(primary: Primary) -> Result<()> {
    let (stack, metrics) = many_zones("many-zones", primary, ZONES).await?;
    let server = stack.server(primary)?.addr();
    let mut run = stack.run()?;
    // One transaction touching every zone.
    let started = std::time::Instant::now();
    stack.exec(&one_record_in_each_zone(ZONES)).await?;
    wait_until_confirmed(&stack, Duration::from_secs(180)).await?;
    // For the figures in the report, not a limit.
    eprintln!(
        "one transaction touching {ZONES} zones on {}: confirmed after {:?}",
        primary.label(),
        started.elapsed()
    );
    run.assert_running()?;
    // Then transactions in random zones: additions, replacements, deletions,
    // some touching several zones.
    let mut rng = Lcg(0x5eed_0024);
    for t in 0..200 {
        let mut sql = String::from("BEGIN;\n");
        for _ in 0..1 + rng.below(3) {
            let z = rng.below(ZONES);
            let owner = format!("h.z{z:04}.many.test.");
            match rng.below(4) {
                0 => sql.push_str(&format!(
                    "DELETE FROM pg2dns.rr WHERE owner = '{owner}' AND type = 'A';\n"
                )),
                1 => sql.push_str(&format!(
                    "UPDATE pg2dns.rr SET rdata = '198.51.100.{}' WHERE owner = '{owner}' AND type = 'A';\n",
                    rng.below(250) + 1
                )),
                _ => sql.push_str(&format!(
                    "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('t{t}.z{z:04}.many.test.', 60, 'TXT', '\"load {t} \\\"q\\\" é\"');\n"
                )),
            }
        }
        sql.push_str("COMMIT;\n");
        stack.exec(&sql).await?;
    }
    wait_until_confirmed(&stack, Duration::from_secs(120)).await?;
    run.assert_running()?;
    every_zone_equals_the_table(&stack).await?;
    let rejected = stack.rejected().await?;
    ensure!(rejected.is_empty(), "rows rejected: {rejected:?}");
    // A few zones through dig too, as every other test compares them.
    for z in [0, 1, ZONES / 2, ZONES - 1] {
        let zone = zone_name(z);
        let table = stack.expected_in(&stack.table().await?, std::slice::from_ref(&zone));
        let dns = stack.dns_in(std::slice::from_ref(&zone)).await?;
        ensure!(table == dns, "{zone}: table {table:?}, dig {dns:?}");
    }
    let (_, body) = crate::health::http_get(&metrics, "/metrics").await?;
    let label = format!("{{server=\"{server}\"}}");
    let max = sample(&body, &format!("pg2dns_server_connections_max{label}"))
        .with_context(|| format!("no pg2dns_server_connections_max{label} in:\n{body}"))?;
    ensure!(
        (1.0..=CONNECTIONS as f64).contains(&max),
        "pg2dns held {max} connections to {server} at once; the pool is {CONNECTIONS}"
    );
    eprintln!("pg2dns held at most {max} connections to {server}");
    // A zone's session is made when its turn to send comes, not when the
    // transaction touching all 2,000 zones is dispatched: about
    // max_in_flight (64) at once, not one per zone.
    let sessions = sample(&body, &format!("pg2dns_server_sessions_max{label}"))
        .with_context(|| format!("no pg2dns_server_sessions_max{label} in:\n{body}"))?;
    ensure!(
        (1.0..=128.0).contains(&sessions),
        "{sessions} zones of {server} had a session at once; max_in_flight is 64"
    );
    eprintln!("at most {sessions} zone sessions at once");
    let in_flight = sample(&body, &format!("pg2dns_server_in_flight{label}"));
    ensure!(
        in_flight == Some(0.0),
        "in flight after the load: {in_flight:?}"
    );
    let s = stack.server(primary)?;
    let log = std::fs::read_to_string(s.dir().join(format!("{}.log", s.program())))?;
    ensure!(
        !log.to_lowercase().contains("quota"),
        "the server logged a quota:{}",
        s.report()
    );
    Ok(())
}

/// At 2,000 zones on one BIND at its defaults, `check-config` asks every
/// zone for its SOA but the key and the update and transfer rights of a
/// sample only, says so, and still names a zone outside the sample that
/// the server does not serve (the last one, which no sample index reaches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_at_two_thousand_zones_samples_the_signed_probes_and_names_an_unserved_zone(
) -> Result<()> {
    let (stack, _metrics) = many_zones("many-zones-check", Primary::Bind, ZONES).await?;
    let server = stack.server(Primary::Bind)?;
    stack.append_config(&format!(
        "\n[[zone]]\nname = \"Unserved.Many.Test.\"\nprimary = \"{}\"\ntsig_key_file = \"{}\"\n",
        server.addr(),
        server.key_file().display()
    ))?;
    let output = crate::harness::pg2dns::command("check-config", stack.config_path()).await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let problems: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("problem: "))
        .collect();
    let sampled = format!(
        "dns: {} zones on {}: each asked for its SOA; the key and the update and transfer rights asked of 256 of them",
        ZONES + 1,
        server.addr()
    );
    ensure!(
        output.status.code() == Some(1)
            && problems.len() == 1
            && problems[0].contains("zone unserved.many.test.: the primary")
            && problems[0].contains("does not serve the zone as primary")
            && text.contains(&sampled),
        "check-config must sample the signed probes, say so ({sampled:?}) and name only the unserved zone:\n{}",
        text.lines()
            .filter(|l| !l.starts_with("  zone "))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

/// BIND stops answering (SIGSTOP) while a transaction touching 1,000 zones
/// is in flight on the pool's connections, past `dns_timeout_ms`: the
/// connection is dropped, and every zone that had messages on it resends
/// from its first unacknowledged one once BIND answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_with_many_zones_in_flight_loses_nothing() -> Result<()> {
    const N: usize = 1_000;
    let (stack, metrics) = many_zones("many-zones-drop", Primary::Bind, N).await?;
    stack.append_config("\n[limits]\ndns_timeout_ms = 1000\n")?;
    let server = stack.server(Primary::Bind)?;
    let pid = server.pid().context("named runs")?;
    let mut run = stack.run()?;
    // Connected and idle first, so that the stop catches UPDATEs in flight.
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('first.z0000.many.test.', 300, 'A', '192.0.2.9')")
        .await?;
    wait_until_confirmed(&stack, Duration::from_secs(60)).await?;
    crate::harness::signal(pid, "STOP")?;
    let resumed = async {
        stack.exec(&one_record_in_each_zone(N)).await?;
        let label = format!("server=\"{}\"", server.addr());
        wait_until(
            Duration::from_secs(60),
            "pg2dns times out on the stopped BIND",
            || async {
                let (_, body) = crate::health::http_get(&metrics, "/metrics").await?;
                let timeouts = sum_of(&body, "pg2dns_dns_retries_total", "reason=\"timeout\"");
                let in_flight =
                    sample(&body, &format!("pg2dns_server_in_flight{{{label}}}")).unwrap_or(0.0);
                Ok(if timeouts > 0.0 {
                    Check::Done(())
                } else {
                    Check::NotYet(format!("{timeouts} timeouts, {in_flight} in flight"))
                })
            },
        )
        .await
    }
    .await;
    crate::harness::signal(pid, "CONT")?;
    resumed?;
    wait_until_confirmed(&stack, Duration::from_secs(180)).await?;
    run.assert_running()?;
    every_zone_equals_the_table(&stack).await?;
    let (_, body) = crate::health::http_get(&metrics, "/metrics").await?;
    let label = format!("{{server=\"{}\"}}", server.addr());
    let max = sample(&body, &format!("pg2dns_server_connections_max{label}"))
        .context("the high-water gauge")?;
    ensure!(max <= CONNECTIONS as f64, "{max} connections at once");
    Ok(())
}

/// The status publisher looks only at the zones whose numbers changed (a
/// dirty set, not every zone every second): after every zone settled, a
/// change in one zone is still published (its serial and acknowledgement
/// in `status --json`), and its row is the only one rewritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_publishes_a_change_in_one_of_many_zones_and_rewrites_only_its_row() -> Result<()> {
    const N: usize = 300;
    let (stack, _metrics) = many_zones("status-one", Primary::Bind, N).await?;
    let mut run = stack.run()?;
    stack.exec(&one_record_in_each_zone(N)).await?;
    wait_until_confirmed(&stack, Duration::from_secs(120)).await?;
    let entries = |s: &serde_json::Value| s["zones"].as_array().cloned().unwrap_or_default();
    let settled = crate::admin::wait_for_status(
        &stack,
        "every zone's serial, nothing in flight",
        Duration::from_secs(60),
        |s| {
            let zones = entries(s);
            zones.len() == N
                && zones
                    .iter()
                    .all(|z| z["soa_serial"].is_i64() && z["in_flight"] == 0)
        },
    )
    .await?;
    let zone = zone_name(123);
    let before = entries(&settled)
        .into_iter()
        .find(|z| z["zone"] == zone.as_str())
        .context("zone 123's entry")?;
    let serial = before["soa_serial"].as_i64().context("its serial")?;
    let published: String = stack
        .db
        .query_one("SELECT max(updated)::text FROM pg2dns.zone_status", &[])
        .await?
        .get(0);
    stack
        .exec(&format!(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('late.{zone}', 300, 'TXT', '\"É \\\\ \\\"q\\\"\"')"
        ))
        .await?;
    let after = crate::admin::wait_for_status(
        &stack,
        &format!("a serial after {serial} for {zone}"),
        Duration::from_secs(60),
        |s| {
            entries(s).iter().any(|z| {
                z["zone"] == zone.as_str()
                    && z["in_flight"] == 0
                    && z["soa_serial"].as_i64().is_some_and(|v| v > serial)
            })
        },
    )
    .await?;
    let entry = entries(&after)
        .into_iter()
        .find(|z| z["zone"] == zone.as_str())
        .context("zone 123's entry")?;
    ensure!(
        entry["acked_at"] != before["acked_at"],
        "the new acknowledgement's time is published: {before} then {entry}"
    );
    let rewritten: Vec<String> = stack
        .db
        .query(
            "SELECT zone FROM pg2dns.zone_status WHERE updated > $1::text::timestamptz ORDER BY zone",
            &[&published],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    ensure!(
        rewritten == [zone.clone()],
        "rows rewritten after the zones settled: {rewritten:?}"
    );
    ensure!(
        zones_differing_from_table(&stack).await?.is_empty(),
        "DNS equals the table"
    );
    run.assert_running()?;
    Ok(())
}

/// `[limits] max_unacked_zones` bounds the read ahead: with it at 1 and
/// BIND stopped (SIGSTOP) while one zone's change waits, a second
/// transaction in another zone is sent by PostgreSQL but not taken: no
/// second UPDATE is planned, so what waits in memory stays bounded however
/// many zones a burst touches. Once BIND answers, both are applied, and
/// a transaction touching every zone then goes through zone by zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_ahead_stops_at_max_unacked_zones_and_resumes_on_acknowledgements() -> Result<()> {
    const N: usize = 50;
    let (stack, metrics) = many_zones("many-zones-bound", Primary::Bind, N).await?;
    stack.append_config("\n[limits]\nmax_unacked_zones = 1\n")?;
    let server = stack.server(Primary::Bind)?;
    let pid = server.pid().context("named runs")?;
    let in_flight_series = format!("pg2dns_zone_in_flight{{server=\"{}\"}}", server.addr());
    let mut run = stack.run()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('first.z0000.many.test.', 300, 'A', '192.0.2.1')")
        .await?;
    wait_until_confirmed(&stack, Duration::from_secs(60)).await?;
    crate::harness::signal(pid, "STOP")?;
    let held = async {
        stack
            .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('a.z0001.many.test.', 300, 'A', '192.0.2.2')")
            .await?;
        let in_flight = || async {
            let (_, body) = crate::health::http_get(&metrics, "/metrics").await?;
            Ok::<_, anyhow::Error>(sample(&body, &in_flight_series).unwrap_or(0.0))
        };
        wait_until(Duration::from_secs(30), "zone 1's change is dispatched", || async {
            let n = in_flight().await?;
            Ok(if n >= 1.0 { Check::Done(()) } else { Check::NotYet(format!("{n} in flight")) })
        })
        .await?;
        stack
            .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('b.z0002.many.test.', 300, 'TXT', '\"second é\"')")
            .await?;
        let second = stack.current_wal_lsn().await?;
        // PostgreSQL has sent the second transaction to pg2dns...
        wait_until(Duration::from_secs(30), "the walsender sends the second transaction", || async {
            let row = stack
                .db
                .query_one("SELECT coalesce(max(sent_lsn), '0/0')::text FROM pg_stat_replication", &[])
                .await?;
            let sent: pg2dns_decoder::Lsn = row.get::<_, &str>(0).parse()?;
            Ok(if sent >= second { Check::Done(()) } else { Check::NotYet(format!("sent {sent}")) })
        })
        .await?;
        // ...and for two seconds pg2dns plans nothing of it (without the
        // bound it is dispatched within milliseconds of arriving).
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < until {
            let n = in_flight().await?;
            ensure!(n <= 1.0, "{n} changes in flight with max_unacked_zones = 1 and BIND stopped");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    crate::harness::signal(pid, "CONT")?;
    held?;
    wait_until_confirmed(&stack, Duration::from_secs(60)).await?;
    stack.exec(&one_record_in_each_zone(N)).await?;
    wait_until_confirmed(&stack, Duration::from_secs(120)).await?;
    run.assert_running()?;
    every_zone_equals_the_table(&stack).await?;
    Ok(())
}

/// Connections established to `port` on loopback, as the kernel has
/// them (`/proc/net/tcp`): a connection whose client closed it is in
/// CLOSE_WAIT there at once, however late the proxy's task sees it.
fn established_to(port: u16) -> Result<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let local = format!(":{port:04X}");
    Ok(table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let (Some(addr), Some(_remote), Some(state)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return false;
            };
            addr.ends_with(&local) && state == "01"
        })
        .count())
}

/// A TCP proxy in front of `upstream` that records the most connections
/// established through it at once (counted by the kernel at each accept).
async fn counting_proxy(
    upstream: std::net::SocketAddr,
) -> Result<(
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<usize>>,
)> {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let most = std::sync::Arc::new(std::sync::Mutex::new(0usize));
    let seen = most.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            if let Ok(n) = established_to(addr.port()) {
                let mut m = seen.lock().unwrap();
                *m = (*m).max(n);
            }
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let back = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                });
                let _ = tokio::io::copy(&mut cr, &mut sw).await;
                let _ = sw.shutdown().await;
                back.abort();
            });
        }
    });
    Ok((addr, most))
}

/// The status's SOA queries ride the server's pooled UPDATE connections:
/// with `connections = 2`, pg2dns never holds more than two TCP
/// connections to BIND (counted by a proxy in front of it, the status
/// included) while one transaction touches 600 zones and a second every
/// third of them, and `status --json` still shows every zone's SOA serial,
/// each the serial BIND serves for that zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_soa_serials_ride_the_update_connections_within_the_pool() -> Result<()> {
    const N: usize = 600;
    const POOL: usize = 2;
    let (stack, metrics) = many_zones_over("soa-pool", Primary::Bind, N, POOL).await?;
    let bind = stack.server(Primary::Bind)?.addr();
    let (proxy, counts) = counting_proxy(bind.parse()?).await?;
    // Every address of BIND in the config (the zones' primary and the
    // [[server]]) goes through the proxy.
    let text = std::fs::read_to_string(stack.config_path())?;
    ensure!(text.contains(&format!("\"{bind}\"")), "{text}");
    std::fs::write(
        stack.config_path(),
        text.replace(&format!("\"{bind}\""), &format!("\"{proxy}\"")),
    )?;
    let mut run = stack.run()?;
    stack.exec(&one_record_in_each_zone(N)).await?;
    // Every third zone a second UPDATE, so that serials differ between
    // neighbours and an answer routed to the wrong zone shows.
    let mut sql = String::from("BEGIN;\n");
    for z in (0..N).step_by(3) {
        sql.push_str(&format!(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('second.z{z:04}.many.test.', 60, 'TXT', '\"twice é \\\\ \\\"q\\\"\"');\n"
        ));
    }
    sql.push_str("COMMIT;\n");
    stack.exec(&sql).await?;
    wait_until_confirmed(&stack, Duration::from_secs(180)).await?;
    let entries = |s: &serde_json::Value| s["zones"].as_array().cloned().unwrap_or_default();
    let status = crate::admin::wait_for_status(
        &stack,
        "every zone's serial, nothing in flight",
        Duration::from_secs(120),
        |s| {
            let zones = entries(s);
            zones.len() == N
                && zones
                    .iter()
                    .all(|z| z["soa_serial"].is_i64() && z["in_flight"] == 0)
        },
    )
    .await?;
    let most = *counts.lock().unwrap();
    eprintln!("pg2dns held at most {most} connections to BIND");
    ensure!(
        (1..=POOL).contains(&most),
        "pg2dns held {most} connections to BIND at once; connections = {POOL}"
    );
    // Each published serial is the zone's own, as BIND serves it now (the
    // serials were asked after the last acknowledgement).
    let published = entries(&status);
    for z in [0, 1, 2, 3, 299, 300, 301, N - 2, N - 1] {
        let zone = zone_name(z);
        let entry = published
            .iter()
            .find(|e| e["zone"] == zone.as_str())
            .with_context(|| format!("{zone}'s entry"))?;
        let serial = stack.serial(&zone).await?;
        ensure!(
            entry["soa_serial"].as_i64() == i64::try_from(serial).ok(),
            "{zone}: published {entry}, BIND serves serial {serial}"
        );
    }
    let (_, body) = crate::health::http_get(&metrics, "/metrics").await?;
    let label = format!("{{server=\"{proxy}\"}}");
    let max = sample(&body, &format!("pg2dns_server_connections_max{label}"))
        .with_context(|| format!("no pg2dns_server_connections_max{label} in:\n{body}"))?;
    ensure!(max <= POOL as f64, "{max} pool connections at once");
    run.assert_running()?;
    ensure!(
        zones_differing_from_table(&stack).await?.is_empty(),
        "DNS equals the table"
    );
    Ok(())
}

/// Run on BIND and Knot at their defaults (PowerDNS serves zones from its
/// database: nothing per zone to share).
mod on_bind {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_thousand_zones_over_a_few_connections_match_the_table() -> anyhow::Result<()> {
        super::two_thousand_zones_over_a_few_connections_match_the_table(
            crate::harness::Primary::Bind,
        )
        .await
    }
}

mod on_knot {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_thousand_zones_over_a_few_connections_match_the_table() -> anyhow::Result<()> {
        super::two_thousand_zones_over_a_few_connections_match_the_table(
            crate::harness::Primary::Knot,
        )
        .await
    }
}
