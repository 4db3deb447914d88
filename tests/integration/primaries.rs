//! How a zone's `primary` may be written: a host name (resolved when pg2dns
//! starts and again on every reconnect) and a port.

use anyhow::{ensure, Result};

use crate::harness::{Primary, Stack, DNS_DEADLINE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_given_as_a_host_name_is_checked_offline_and_receives_the_updates() -> Result<()>
{
    let stack = Stack::start("primary-name", Primary::Bind).await?;
    let addr = stack.server(Primary::Bind)?.addr();
    let port = addr.rsplit_once(':').map(|(_, p)| p).unwrap_or_default();
    let config = std::fs::read_to_string(stack.config_path())?;
    ensure!(config.contains(&addr), "the config names {addr}");
    std::fs::write(
        stack.config_path(),
        config.replace(&addr, &format!("localhost:{port}")),
    )?;

    let output = stack.admin(&["check-config", "--offline"]).await?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(
        text.contains(&format!("→ localhost:{port} (")),
        "check-config --offline must show the name and what it resolved to:\n{text}"
    );

    let _pg2dns = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES \
             ('named.example.test.', 300, 'A', '192.0.2.77')",
        )
        .await?;
    let dns = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(!dns.values().all(Vec::is_empty), "DNS stayed empty");
    Ok(())
}

// ---------------------------------------------------------------------------
// Several primaries per zone (`primaries = [..]`, `[[server_group]]`): every
// change reaches each, the slot confirms only what every non-degraded one
// acknowledged, and a primary that refuses what another took halts.

use std::time::Duration;

use anyhow::Context;

use crate::harness::stack::{difference, ZoneRecords, FORWARD, REVERSE};
use crate::harness::wait::{wait_until, Check};
use crate::harness::{signal, Server, RECOVERY_DEADLINE};

/// A stack whose zones have two primaries: the stack's own server (`ns1`)
/// and `second` (`ns2`), each with its own key.
struct Two {
    stack: Stack,
    second: Server,
}

impl Two {
    /// Starts `first` (through the stack) and `second` serving both zones,
    /// and writes a config listing both as the zones' primaries, with
    /// `zone_lines` added to each `[[zone]]`.
    async fn start(label: &str, first: Primary, second: Primary, zone_lines: &str) -> Result<Two> {
        let stack = Stack::start(label, first).await?;
        let second = Server::start_with_access(
            second,
            stack.dir(),
            &[FORWARD, REVERSE],
            crate::harness::dns::Access::default(),
        )
        .await?;
        let two = Two { stack, second };
        two.write_config(two.second.key_file(), zone_lines)?;
        Ok(two)
    }

    /// The config: the stack's `[database]`, `ns1` and `ns2` (signing with
    /// `second_key`), and both zones naming them.
    fn write_config(&self, second_key: &std::path::Path, zone_lines: &str) -> Result<()> {
        let text = std::fs::read_to_string(self.stack.config_path())?;
        let head = &text[..text.find("\n[[").context("the config has tables")?];
        let head = head.split("\n[[server]]").next().unwrap_or(head);
        let first = self.stack.server(self.first_primary())?;
        let mut out = format!(
            "{head}\n\n[[server]]\nname = \"ns1\"\naddress = \"{}\"\ntsig_key_file = \"{}\"\n\n\
             [[server]]\nname = \"ns2\"\naddress = \"{}\"\ntsig_key_file = \"{}\"\n",
            first.addr(),
            first.key_file().display(),
            self.second.addr(),
            second_key.display()
        );
        for zone in [FORWARD, REVERSE] {
            out.push_str(&format!(
                "\n[[zone]]\nname = \"{zone}\"\nprimaries = [\"ns1\", \"ns2\"]\n{zone_lines}\n"
            ));
        }
        std::fs::write(self.stack.config_path(), out)?;
        Ok(())
    }

    fn first_primary(&self) -> Primary {
        [Primary::Bind, Primary::Knot, Primary::PowerDns]
            .into_iter()
            .find(|p| self.stack.server(*p).is_ok())
            .unwrap_or(Primary::Bind)
    }

    /// What `server` holds in both zones.
    async fn dns_of(&self, server: &Server) -> Result<ZoneRecords> {
        let mut dns = ZoneRecords::new();
        for zone in self.stack.zones() {
            dns.insert(zone.clone(), server.axfr(&zone).await?);
        }
        Ok(dns)
    }

    /// Waits until `server` holds what `pg2dns.rr` says.
    async fn wait_matches(&self, server: &Server, who: &str, timeout: Duration) -> Result<()> {
        let what = format!("{who} holds what pg2dns.rr says");
        wait_until(timeout, &what, || async {
            let expected = self.stack.expected(&self.stack.table().await?);
            Ok(match self.dns_of(server).await {
                Ok(dns) if dns == expected => Check::Done(()),
                Ok(dns) => Check::NotYet(format!("\n{}", difference(&expected, &dns))),
                Err(e) => Check::NotYet(format!("the last AXFR failed: {e:#}")),
            })
        })
        .await
    }

    /// Waits until both primaries hold what `pg2dns.rr` says.
    async fn wait_both_match(&self, timeout: Duration) -> Result<()> {
        let first = self.stack.server(self.first_primary())?;
        self.wait_matches(first, "ns1", timeout).await?;
        self.wait_matches(&self.second, "ns2", timeout).await
    }

    /// Waits until the slot confirmed `lsn` or later.
    async fn wait_confirmed(&self, lsn: pg2dns_decoder::Lsn) -> Result<()> {
        wait_until(
            RECOVERY_DEADLINE,
            "the slot confirms the transaction",
            || async {
                let confirmed = self.stack.confirmed_flush_lsn().await?;
                Ok(if confirmed >= lsn {
                    Check::Done(())
                } else {
                    Check::NotYet(format!("confirmed {confirmed}, waiting for {lsn}"))
                })
            },
        )
        .await
    }
}

/// A small deterministic generator (the seed is printed, so a failing run
/// can be replayed).
struct Xorshift(u64);

impl Xorshift {
    fn seeded() -> Xorshift {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            | 1;
        println!("workload seed {seed}");
        Xorshift(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// One random transaction: inserts (UTF-8 TXT, escapes, mixed case, PTRs),
/// rdata updates and deletes of rows of earlier ones.
fn random_transaction(rng: &mut Xorshift, i: u64) -> String {
    let mut sql = String::from("BEGIN;");
    for j in 0..1 + rng.below(6) {
        let n = i * 10 + j;
        match rng.below(6) {
            0 => sql.push_str(&format!(
                "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('Host{n}.Example.TEST.', 300, 'A', '10.9.{}.{}');",
                n / 256 % 256,
                n % 256
            )),
            1 => sql.push_str(&format!(
                r#"INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('t{n}.example.test.', 300, 'TXT', '"café \"quoted\" \0{:02} #{n}" "two"');"#,
                n % 100 + 10
            )),
            2 => sql.push_str(&format!(
                "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('{}.2.0.192.in-addr.arpa.', 300, 'PTR', 'host{n}.example.test.');",
                n % 250 + 1
            )),
            3 => sql.push_str(
                "UPDATE pg2dns.rr SET rdata = '10.8.' || (id % 256) || '.' || (id / 256 % 256) \
                 WHERE id = (SELECT id FROM pg2dns.rr WHERE type = 'A' ORDER BY random() LIMIT 1);",
            ),
            4 => sql.push_str(
                "DELETE FROM pg2dns.rr WHERE id = (SELECT id FROM pg2dns.rr ORDER BY random() LIMIT 1);",
            ),
            _ => sql.push_str(&format!(
                "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('mx{n}.example.test.', 300, 'MX', '{} mail{n}.example.net.');",
                rng.below(50)
            )),
        }
    }
    sql.push_str("COMMIT;");
    sql
}

/// `rows` A records in one transaction.
fn big_transaction(prefix: &str, rows: usize) -> String {
    format!(
        "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) \
         SELECT '{prefix}' || g || '.example.test.', 300, 'A', \
                '10.' || (g / 65536) || '.' || (g / 256 % 256) || '.' || (g % 256) \
         FROM generate_series(1, {rows}) g"
    )
}

async fn two_primaries_of_one_zone_end_equal_to_the_table_after_a_random_workload(
    first: Primary,
    second: Primary,
) -> Result<()> {
    let two = Two::start("two-random", first, second, "").await?;
    // The random deletes may take more than 30 % of a small zone in one
    // transaction: no mass delete is held here (guard::* tests the guard).
    two.stack
        .append_config("[guard]\nmax_delete_share = 1.0\n")?;
    let checked = two.stack.admin(&["check-config", "--offline"]).await?;
    let text = String::from_utf8_lossy(&checked.stdout);
    ensure!(
        checked.status.success() && text.contains(&format!("and → ns2 {}", two.second.addr())),
        "check-config lists the second primary:\n{text}{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let mut pg2dns = two.stack.run()?;
    let mut rng = Xorshift::seeded();
    for i in 0..120 {
        two.stack.exec(&random_transaction(&mut rng, i)).await?;
    }
    two.wait_both_match(RECOVERY_DEADLINE).await?;
    let end = two.stack.current_wal_lsn().await?;
    two.wait_confirmed(end).await?;
    ensure!(
        !two.dns_of(&two.second).await?[FORWARD].is_empty(),
        "the workload left records"
    );
    pg2dns.assert_running()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bind_primaries_of_one_zone_end_equal_to_the_table_after_a_random_workload(
) -> Result<()> {
    two_primaries_of_one_zone_end_equal_to_the_table_after_a_random_workload(
        Primary::Bind,
        Primary::Bind,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_and_knot_primaries_of_one_zone_end_equal_to_the_table_after_a_random_workload(
) -> Result<()> {
    two_primaries_of_one_zone_end_equal_to_the_table_after_a_random_workload(
        Primary::Bind,
        Primary::Knot,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_hold_a_stopped_primary_holds_the_slot_and_both_end_equal_after_it_returns(
) -> Result<()> {
    let two = Two::start("two-hold", Primary::Bind, Primary::Bind, "").await?;
    let mut pg2dns = two.stack.run()?;
    two.stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('before.example.test.', 300, 'A', '192.0.2.1')")
        .await?;
    two.wait_both_match(DNS_DEADLINE).await?;
    let before = two.stack.current_wal_lsn().await?;
    two.wait_confirmed(before).await?;

    let pid = two.second.pid().context("ns2 runs")?;
    signal(pid, "STOP")?;
    two.stack.exec(&big_transaction("held", 5_000)).await?;
    let end = two.stack.current_wal_lsn().await?;
    // ns1 takes the transaction; the slot does not confirm it while ns2
    // has not.
    let first = two.stack.server(Primary::Bind)?;
    two.wait_matches(first, "ns1", RECOVERY_DEADLINE).await?;
    let confirmed = two.stack.confirmed_flush_lsn().await?;
    let resumed = signal(pid, "CONT");
    ensure!(
        confirmed < end,
        "the slot confirmed {confirmed}, past the transaction ending at {end} that the stopped ns2 has not acknowledged"
    );
    resumed?;
    two.wait_both_match(RECOVERY_DEADLINE).await?;
    two.wait_confirmed(end).await?;
    pg2dns.assert_running()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_degrade_after_the_other_primary_goes_on_and_the_stopped_one_catches_up() -> Result<()>
{
    let two = Two::start(
        "two-degrade",
        Primary::Bind,
        Primary::Bind,
        "degrade_after = \"2s\"",
    )
    .await?;
    let metrics = format!("127.0.0.1:{}", crate::harness::free_port()?);
    two.stack
        .append_config(&format!("[metrics]\nlisten = \"{metrics}\"\n"))?;
    let mut pg2dns = two.stack.run()?;
    two.stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('before.example.test.', 300, 'A', '192.0.2.1')")
        .await?;
    two.wait_both_match(DNS_DEADLINE).await?;

    let pid = two.second.pid().context("ns2 runs")?;
    signal(pid, "STOP")?;
    let outcome = async {
        two.stack.exec(&big_transaction("degraded", 5_000)).await?;
        let end = two.stack.current_wal_lsn().await?;
        let first = two.stack.server(Primary::Bind)?;
        two.wait_matches(first, "ns1", RECOVERY_DEADLINE).await?;
        // ns2 is left behind: the slot confirms what ns1 took.
        two.wait_confirmed(end).await?;
        let (_, body) = crate::health::http_get(&metrics, "/metrics").await?;
        ensure!(
            body.lines()
                .any(|l| l.starts_with("pg2dns_primary_degraded{")
                    && l.contains("primary=\"ns2\"")
                    && l.ends_with(" 1")),
            "/metrics says ns2 is degraded:\n{}",
            body.lines()
                .filter(|l| l.starts_with("pg2dns_primary"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        anyhow::Ok(end)
    }
    .await;
    signal(pid, "CONT")?;
    outcome?;
    // Back, it catches up and equals the table.
    two.wait_both_match(RECOVERY_DEADLINE).await?;
    pg2dns.assert_running()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_with_a_wrong_key_that_refuses_what_the_other_accepted_halts_naming_both(
) -> Result<()> {
    let two = Two::start("two-wrong-key", Primary::Bind, Primary::Bind, "").await?;
    let wrong = two.stack.write_wrong_key_file().await?;
    two.write_config(&wrong, "")?;
    let mut pg2dns = two.stack.run()?;
    two.stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('both.example.test.', 300, 'A', '192.0.2.9')")
        .await?;
    let status = pg2dns.wait_exit(RECOVERY_DEADLINE).await?;
    ensure!(!status.success(), "pg2dns exits on the halt");
    let log = pg2dns.log();
    ensure!(
        log.contains("diverge")
            && log.contains("ns1 accepted the change")
            && log.contains("ns2 answered"),
        "the halt names both primaries:\n{}",
        pg2dns.log_tail(30)
    );
    ensure!(
        two.stack.confirmed_flush_lsn().await? < two.stack.current_wal_lsn().await?,
        "nothing of the refused transaction is confirmed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_with_two_primaries_loses_nothing_on_either() -> Result<()> {
    let two = Two::start("two-sigkill", Primary::Bind, Primary::Bind, "").await?;
    // The random deletes may take more than 30 % of a small zone in one
    // transaction: no mass delete is held here (guard::* tests the guard).
    two.stack
        .append_config("[guard]\nmax_delete_share = 1.0\n")?;
    let mut rng = Xorshift::seeded();
    let writer_db = two.stack.pg.connect().await?;
    let mut seed = Xorshift(rng.below(u64::MAX) | 1);
    let writer = tokio::spawn(async move {
        for i in 0..200 {
            writer_db
                .batch_execute(&random_transaction(&mut seed, i))
                .await?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        anyhow::Ok(())
    });
    for _ in 0..3 {
        let mut run = two.stack.run()?;
        // A random moment: once it has sent something, after 0 to 400 ms.
        let first = two.stack.server(Primary::Bind)?;
        wait_until(DNS_DEADLINE, "pg2dns sends to ns1", || async {
            Ok(if first.axfr(FORWARD).await?.is_empty() {
                Check::NotYet("nothing yet".into())
            } else {
                Check::Done(())
            })
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
        run.kill()?;
    }
    writer.await.context("the writer task")??;
    let mut last = two.stack.run()?;
    two.wait_both_match(RECOVERY_DEADLINE).await?;
    last.assert_running()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_compares_and_repairs_each_primary_or_only_the_one_named() -> Result<()> {
    let two = Two::start("two-reconcile", Primary::Bind, Primary::Bind, "").await?;
    let mut pg2dns = two.stack.run()?;
    two.stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('kept.example.test.', 300, 'A', '192.0.2.10'), ('Gone.Example.TEST.', 300, 'TXT', '\"caf\u{e9}\"')")
        .await?;
    two.wait_both_match(DNS_DEADLINE).await?;
    pg2dns.terminate().await?;
    // Someone changes ns2 behind pg2dns's back.
    two.second
        .nsupdate(
            "update delete gone.example.test. TXT\nupdate add stray.example.test. 300 A 192.0.2.99",
        )
        .await?;

    let json = |out: &std::process::Output| -> Result<(i32, serde_json::Value)> {
        Ok((
            out.status.code().unwrap_or(-1),
            serde_json::from_slice(&out.stdout)
                .with_context(|| String::from_utf8_lossy(&out.stderr).into_owned())?,
        ))
    };
    let zones_of = |v: &serde_json::Value| -> Vec<(String, String, bool)> {
        v["zones"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|z| {
                (
                    z["zone"].as_str().unwrap_or("").to_owned(),
                    z["primary"].as_str().unwrap_or("").to_owned(),
                    z["in_sync"].as_bool().unwrap_or(false),
                )
            })
            .collect()
    };
    // Every primary by default: ns2's zone differs, ns1's does not.
    let (code, all) = json(&two.stack.reconcile(&["--json"], &[]).await?)?;
    ensure!(code == 1, "differences exit 1, got {code}: {all}");
    let zones = zones_of(&all);
    ensure!(
        zones.contains(&(FORWARD.into(), "ns1".into(), true))
            && zones.contains(&(FORWARD.into(), "ns2".into(), false))
            && zones.len() == 4,
        "each zone is compared on each primary: {zones:?}"
    );
    let (code, one) = json(
        &two.stack
            .reconcile(&["--json", "--primary", "ns1"], &[])
            .await?,
    )?;
    ensure!(code == 0, "ns1 alone is in sync, got {code}: {one}");
    ensure!(
        zones_of(&one).iter().all(|(_, p, _)| p == "ns1"),
        "--primary ns1 compares ns1 only: {one}"
    );
    let (code, repaired) = json(
        &two.stack
            .reconcile(&["--json", "--primary", "ns2", "--apply"], &[])
            .await?,
    )?;
    ensure!(
        code == 0,
        "the repair of ns2 leaves it in sync, got {code}: {repaired}"
    );
    two.wait_both_match(DNS_DEADLINE).await?;
    let unknown = two.stack.reconcile(&["--primary", "ns9"], &[]).await?;
    ensure!(
        unknown.status.code() == Some(2)
            && String::from_utf8_lossy(&unknown.stderr).contains("--primary ns9"),
        "an unknown primary is an error naming it: {}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_degraded_when_the_session_ends_is_brought_in_line_by_a_reconcile_once_it_answers(
) -> Result<()> {
    let two = Two::start(
        "two-catch-up",
        Primary::Bind,
        Primary::Bind,
        "degrade_after = \"2s\"",
    )
    .await?;
    let mut pg2dns = two.stack.run()?;
    let first = two.stack.server(Primary::Bind)?;
    two.stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('before.example.test.', 300, 'A', '192.0.2.1')")
        .await?;
    two.wait_both_match(DNS_DEADLINE).await?;
    let log_has = |what: &'static str, n: usize| {
        let pg2dns = &pg2dns;
        async move {
            wait_until(RECOVERY_DEADLINE, what, || async {
                let count = pg2dns.log().matches(what).count();
                Ok(if count >= n {
                    Check::Done(())
                } else {
                    Check::NotYet(format!("{count} times"))
                })
            })
            .await
        }
    };

    let pid = two.second.pid().context("ns2 runs")?;
    signal(pid, "STOP")?;
    let outcome = async {
        two.stack.exec(&big_transaction("left", 500)).await?;
        two.wait_matches(first, "ns1", RECOVERY_DEADLINE).await?;
        log_has("made no progress for its degrade_after", 1).await?;
        // The session ends with ns2 degraded (its queue goes with it); the
        // next one cannot reach ns2 and streams without it.
        signal(pg2dns.pid(), "HUP")?;
        log_has("this session streams without the primary", 1).await?;
        two.stack
            .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('during.example.test.', 300, 'A', '192.0.2.2'); DELETE FROM pg2dns.rr WHERE owner = 'left7.example.test.'")
            .await?;
        two.wait_matches(first, "ns1", RECOVERY_DEADLINE).await
    }
    .await;
    signal(pid, "CONT")?;
    outcome?;
    // Once ns2 answers, the next session brings it in line, then streams
    // to it again.
    signal(pg2dns.pid(), "HUP")?;
    log_has("was brought in line with the row state", 1).await?;
    two.stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('after.example.test.', 300, 'A', '192.0.2.3')")
        .await?;
    two.wait_both_match(RECOVERY_DEADLINE).await?;
    pg2dns.assert_running()
}

// ---------------------------------------------------------------------------
// Each primary seen in `status`, its degraded state kept across restarts,
// and a degraded primary's queue bounded.

/// The primary `name` of `zone` in `status --json`'s `primaries`.
fn primary_in(status: &serde_json::Value, zone: &str, name: &str) -> Option<serde_json::Value> {
    status["primaries"]
        .as_array()?
        .iter()
        .find(|p| p["zone"] == zone && p["primary"] == name)
        .cloned()
}

/// Waits until `status --json` lists `name` of `zone` and `check` holds
/// for it.
async fn wait_primary_status(
    stack: &Stack,
    zone: &str,
    name: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    wait_until(RECOVERY_DEADLINE, what, || async {
        let status = crate::admin::status(stack).await?;
        Ok(match primary_in(&status, zone, name) {
            Some(p) if check(&p) => Check::Done(status),
            Some(p) => Check::NotYet(p.to_string()),
            None => Check::NotYet(format!("no {name} of {zone}: {}", status["primaries"])),
        })
    })
    .await
}

/// Waits until `pg2dns`'s log says `what` at least `n` times.
async fn log_says(pg2dns: &crate::harness::Pg2dns, what: &str, n: usize) -> Result<()> {
    wait_until(RECOVERY_DEADLINE, what, || async {
        let count = pg2dns.log().matches(what).count();
        Ok(if count >= n {
            Check::Done(())
        } else {
            Check::NotYet(format!("{count} times"))
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_degraded_before_a_kill_9_stays_degraded_while_down_and_is_caught_up_once_back(
) -> Result<()> {
    let two = Two::start(
        "two-durable",
        Primary::Bind,
        Primary::Bind,
        "degrade_after = \"2s\"",
    )
    .await?;
    two.stack
        .append_config("[limits]\ndns_timeout_ms = 2000\n")?;
    let zone = FORWARD;
    let mut pg2dns = two.stack.run()?;
    two.stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('before.example.test.', 300, 'A', '192.0.2.1')")
        .await?;
    two.wait_both_match(DNS_DEADLINE).await?;
    // Status lists both primaries of the zone, in line, with the LSN each
    // acknowledged.
    let before = two.stack.current_wal_lsn().await?;
    for name in ["ns1", "ns2"] {
        wait_primary_status(
            &two.stack,
            zone,
            name,
            "status lists the primary in line with an acknowledged LSN",
            |p| {
                p["degraded_since"].is_null()
                    && p["in_flight"] == 0
                    && p["acked_lsn"]
                        .as_str()
                        .and_then(|l| l.parse::<pg2dns_decoder::Lsn>().ok())
                        .is_some_and(|l| l <= before && l.raw() > 0)
            },
        )
        .await?;
    }

    let pid = two.second.pid().context("ns2 runs")?;
    signal(pid, "STOP")?;
    let outcome = async {
        two.stack.exec(&big_transaction("durable", 500)).await?;
        let end = two.stack.current_wal_lsn().await?;
        let first = two.stack.server(Primary::Bind)?;
        two.wait_matches(first, "ns1", RECOVERY_DEADLINE).await?;
        two.wait_confirmed(end).await?;
        // The slot confirmed past ns2: its degraded state is on record.
        wait_primary_status(&two.stack, zone, "ns2", "status says ns2 is degraded", |p| {
            !p["degraded_since"].is_null()
                && p["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("degrade_after"))
        })
        .await?;
        // A crash, and a start while ns2 is still down: ns2 stays degraded
        // and does not hold the zone.
        pg2dns.kill()?;
        pg2dns = two.stack.run()?;
        log_says(&pg2dns, "this session streams without the primary", 1).await?;
        two.stack
            .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('while-down.example.test.', 300, 'A', '192.0.2.2')")
            .await?;
        let end = two.stack.current_wal_lsn().await?;
        two.wait_matches(first, "ns1", RECOVERY_DEADLINE).await?;
        two.wait_confirmed(end).await?;
        let status = wait_primary_status(
            &two.stack,
            zone,
            "ns2",
            "status says ns2 stays degraded, and why it could not be brought in line",
            |p| {
                !p["degraded_since"].is_null()
                    && p["last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains("cannot be brought in line"))
            },
        )
        .await?;
        let text = two.stack.admin(&["status"]).await?;
        let text = String::from_utf8_lossy(&text.stdout);
        ensure!(
            text.contains(&format!("degraded: zone {zone} primary ns2 since")),
            "the status text names the degraded primary:\n{text}"
        );
        ensure!(
            primary_in(&status, zone, "ns1").is_some_and(|p| p["degraded_since"].is_null()),
            "ns1 is in line: {}",
            status["primaries"]
        );
        anyhow::Ok(())
    }
    .await;
    signal(pid, "CONT")?;
    outcome?;
    // Another crash, ns2 back: the start brings it in line (from the row
    // state), it rejoins and ends equal to the table.
    pg2dns.kill()?;
    let mut pg2dns = two.stack.run()?;
    log_says(&pg2dns, "was brought in line with the row state", 1).await?;
    two.stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('after.example.test.', 300, 'A', '192.0.2.3')")
        .await?;
    two.wait_both_match(RECOVERY_DEADLINE).await?;
    wait_primary_status(
        &two.stack,
        zone,
        "ns2",
        "status says ns2 is in line again",
        |p| p["degraded_since"].is_null(),
    )
    .await?;
    pg2dns.assert_running()
}

/// Two BIND primaries (`degrade_after = "2s"`, `[limits] degraded_queue =
/// bound`) streaming and in line; then ns2 stopped (SIGSTOP) while a first
/// change and then `writes`, one transaction each, commit: ns2 is
/// degraded, then dropped past the bound, while ns1 takes everything, the
/// slot confirms it and `status` says ns2 needs a catch-up. ns2 answers
/// again (SIGCONT) before this returns the running service.
async fn ns2_dropped_past_the_queue_bound(
    label: &str,
    bound: u64,
    extra_config: &str,
    writes: &[String],
) -> Result<(Two, crate::harness::Pg2dns)> {
    let two = Two::start(
        label,
        Primary::Bind,
        Primary::Bind,
        "degrade_after = \"2s\"",
    )
    .await?;
    two.stack.append_config(&format!(
        "[limits]\ndns_timeout_ms = 2000\ndegraded_queue = {bound}\n"
    ))?;
    two.stack.append_config(extra_config)?;
    let pg2dns = two.stack.run()?;
    let first = two.stack.server(Primary::Bind)?;
    two.stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('before.example.test.', 300, 'A', '192.0.2.1')")
        .await?;
    two.wait_both_match(DNS_DEADLINE).await?;

    let pid = two.second.pid().context("ns2 runs")?;
    signal(pid, "STOP")?;
    let outcome = async {
        two.stack
            .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('first.example.test.', 300, 'A', '192.0.2.2')")
            .await?;
        log_says(&pg2dns, "made no progress for its degrade_after", 1).await?;
        for sql in writes {
            two.stack.exec(sql).await?;
        }
        log_says(&pg2dns, "its queue is dropped", 1).await?;
        two.wait_matches(first, "ns1", RECOVERY_DEADLINE).await?;
        let end = two.stack.current_wal_lsn().await?;
        two.wait_confirmed(end).await?;
        let said = format!("degraded_queue = {bound}");
        wait_primary_status(
            &two.stack,
            FORWARD,
            "ns2",
            "status says ns2 needs a catch-up",
            |p| {
                !p["degraded_since"].is_null()
                    && p["last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains(&said))
            },
        )
        .await?;
        anyhow::Ok(())
    }
    .await;
    signal(pid, "CONT")?;
    outcome?;
    Ok((two, pg2dns))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_primary_past_the_queue_bound_is_dropped_and_brought_in_line_at_the_next_session(
) -> Result<()> {
    // Ten more transactions, one by one: ns2 falls past the bound.
    let writes: Vec<String> = (0..10)
        .map(|i| format!("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('q{i}.example.test.', 300, 'AAAA', '2001:db8::{i:x}')"))
        .collect();
    let (two, mut pg2dns) = ns2_dropped_past_the_queue_bound("two-bounded", 5, "", &writes).await?;
    // Its queue is gone: the next session brings it in line from the row
    // state, and it ends equal to the table.
    signal(pg2dns.pid(), "HUP")?;
    log_says(&pg2dns, "was brought in line with the row state", 1).await?;
    two.stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('after.example.test.', 300, 'A', '192.0.2.3')")
        .await?;
    two.wait_both_match(RECOVERY_DEADLINE).await?;
    pg2dns.assert_running()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_dropped_past_the_queue_bound_rejoins_within_the_session_once_it_answers_again(
) -> Result<()> {
    dropped_primary_rejoins_within_the_session("two-rejoin", "").await
}

/// The scenario of the test above, with `extra_config` appended to the
/// config (e.g. a `[metrics]` listener for a trial that scrapes it).
pub(crate) async fn dropped_primary_rejoins_within_the_session(
    label: &str,
    extra_config: &str,
) -> Result<()> {
    // Transactions one by one, with what users write (mixed case, an
    // escaped byte, UTF-8 in TXT): ns2 falls past the bound.
    let mut writes: Vec<String> = (0..8)
        .map(|i| format!("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('Q{i}.Example.test.', 300, 'AAAA', '2001:db8::{i:x}'), ('t{i}.example.test.', 300, 'TXT', '\"caf\\233 {i} ünïcødé\"')"))
        .collect();
    writes.push("DELETE FROM pg2dns.rr WHERE owner = 'first.example.test.'".to_owned());
    let (two, mut pg2dns) =
        ns2_dropped_past_the_queue_bound(label, 3, extra_config, &writes).await?;
    // No signal, no restart: once ns2 answers, the service brings it in
    // line from the row state and streams to it again.
    log_says(&pg2dns, "a primary left behind answers again", 1).await?;
    log_says(&pg2dns, "was brought in line with the row state", 1).await?;
    two.stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('after.example.test.', 300, 'A', '192.0.2.3')")
        .await?;
    two.wait_both_match(RECOVERY_DEADLINE).await?;
    wait_primary_status(
        &two.stack,
        FORWARD,
        "ns2",
        "status says ns2 is in line again",
        |p| p["degraded_since"].is_null(),
    )
    .await?;
    ensure!(
        !pg2dns.log().contains("SIGHUP"),
        "the rejoin needed no reload:\n{}",
        pg2dns.log()
    );
    pg2dns.assert_running()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_over_a_schema_12_database_adds_the_per_primary_status_and_runs_again_unchanged(
) -> Result<()> {
    let two = Two::start("two-schema-13", Primary::Bind, Primary::Bind, "").await?;
    // The database as schema version 12 left it: no primary_status, the
    // status view of version 8.
    two.stack
        .exec(&format!(
            "DROP TABLE pg2dns.primary_status CASCADE; {} DELETE FROM pg2dns.schema_version WHERE version = 13",
            include_str!("../../sql/008_health.sql")
        ))
        .await?;
    // The service runs on it (no per-primary status yet), and says so.
    let pg2dns = two.stack.run()?;
    two.stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('old.example.test.', 300, 'A', '192.0.2.1')")
        .await?;
    two.wait_both_match(DNS_DEADLINE).await?;
    let status = crate::admin::status(&two.stack).await?;
    ensure!(
        status["primaries"] == serde_json::json!([]),
        "no primaries before version 13: {status}"
    );
    drop(pg2dns);
    two.stack.setup().await?;
    two.stack.setup().await?;
    let pg2dns = two.stack.run()?;
    two.stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('new.example.test.', 300, 'A', '192.0.2.2')")
        .await?;
    two.wait_both_match(DNS_DEADLINE).await?;
    for name in ["ns1", "ns2"] {
        wait_primary_status(
            &two.stack,
            FORWARD,
            name,
            "status lists the primary after the upgrade",
            |p| p["acked_lsn"].is_string() && p["degraded_since"].is_null(),
        )
        .await?;
    }
    let mut pg2dns = pg2dns;
    pg2dns.assert_running()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_probes_every_primary_of_a_zone_and_names_the_one_at_fault() -> Result<()> {
    let two = Two::start("two-check", Primary::Bind, Primary::Bind, "").await?;
    let wrong = two.stack.write_wrong_key_file().await?;
    two.write_config(&wrong, "")?;
    let config = two.stack.config_path();
    let output = crate::harness::pg2dns::command("check-config", config).await?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.code() == Some(1),
        "check-config fails ({}):\n{text}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    for zone in [FORWARD, REVERSE] {
        let at = format!(
            "problem: zone {zone}: the primary ns2 ({}) rejects the signature",
            two.second.addr()
        );
        ensure!(
            text.contains(&at),
            "check-config names ns2 of {zone}:\n{text}"
        );
    }
    ensure!(
        !text.contains("the primary ns1"),
        "ns1 signs with the right key and has no problem:\n{text}"
    );
    // With the right key on both, both are fine.
    two.write_config(two.second.key_file(), "")?;
    let output = crate::harness::pg2dns::command("check-config", config).await?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "check-config passes:\n{text}");
    Ok(())
}
