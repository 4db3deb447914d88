//! Operators' trials: what an operator does by hand, following the docs
//! (Ctrl-C in the middle of a repair, the least-privilege operator role,
//! several primaries on a LATIN1 database, output piped into `head`,
//! signals at awkward moments, Prometheus scraping), each turned into a
//! test of the behaviour the docs promise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tokio::io::AsyncBufReadExt;

use crate::harness::dns::Access;
use crate::harness::stack::{ZoneRecords, FORWARD, REVERSE, SLOT};
use crate::harness::{pg2dns, wait_until, Check, Primary, Record, Server, Stack, DNS_DEADLINE};

/// A LATIN1 database, `first` and `second` both primary for both zones
/// (`ns1`, `ns2`), and an operator role `dns_ops` that `setup` granted.
struct Trial {
    stack: Stack,
    first: Primary,
    second: Server,
}

impl Trial {
    async fn start(label: &str, first: Primary, second: Primary) -> Result<Trial> {
        let stack = Stack::start_in_database(
            label,
            first,
            "ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
        )
        .await?;
        let second =
            Server::start_with_access(second, stack.dir(), &[FORWARD, REVERSE], Access::default())
                .await?;
        let trial = Trial {
            stack,
            first,
            second,
        };
        trial.write_config(first, "")?;
        trial.stack.exec("CREATE ROLE dns_ops LOGIN").await?;
        trial
            .stack
            .append_config("[roles]\noperators = [\"dns_ops\"]\n")?;
        trial.stack.setup().await?;
        Ok(trial)
    }

    /// The config: the stack's `[database]`, `ns1` and `ns2`, both zones on
    /// both, `zone_lines` added to each `[[zone]]`.
    fn write_config(&self, first: Primary, zone_lines: &str) -> Result<()> {
        let text = std::fs::read_to_string(self.stack.config_path())?;
        let head = &text[..text.find("\n[[").context("the config has tables")?];
        let ns1 = self.stack.server(first)?;
        let mut out = format!(
            "{head}\n\n[[server]]\nname = \"ns1\"\naddress = \"{}\"\ntsig_key_file = \"{}\"\n\n\
             [[server]]\nname = \"ns2\"\naddress = \"{}\"\ntsig_key_file = \"{}\"\n",
            ns1.addr(),
            ns1.key_file().display(),
            self.second.addr(),
            self.second.key_file().display()
        );
        for zone in [FORWARD, REVERSE] {
            out.push_str(&format!(
                "\n[[zone]]\nname = \"{zone}\"\nprimaries = [\"ns1\", \"ns2\"]\n{zone_lines}\n"
            ));
        }
        std::fs::write(self.stack.config_path(), out)?;
        Ok(())
    }

    /// Waits until each primary (`ns1`, then `ns2`) holds `want`.
    async fn wait_both_hold(&self, want: &ZoneRecords) -> Result<()> {
        for (who, server) in [
            ("ns1", self.stack.server(self.first)?),
            ("ns2", &self.second),
        ] {
            wait_until(DNS_DEADLINE, &format!("{who} holds the rows"), || async {
                let dns = zones_on(server).await?;
                Ok(if dns == *want {
                    Check::Done(())
                } else {
                    Check::NotYet(crate::harness::stack::difference(want, &dns))
                })
            })
            .await?;
        }
        Ok(())
    }

    /// A copy of the config that logs in as `role`.
    fn config_as(&self, role: &str) -> Result<PathBuf> {
        let text = std::fs::read_to_string(self.stack.config_path())?;
        let path = self.stack.dir().join(format!("pg2dns-{role}.toml"));
        std::fs::write(&path, text.replace("postgres@", &format!("{role}@")))?;
        Ok(path)
    }
}

/// A primary's two zones, as AXFR shows them.
async fn zones_on(server: &Server) -> Result<ZoneRecords> {
    let mut dns = ZoneRecords::new();
    for zone in [FORWARD, REVERSE] {
        dns.insert(zone.to_string(), server.axfr(zone).await?);
    }
    Ok(dns)
}

/// Not a test: a LATIN1 database with two primaries, left up for trials by
/// hand until the file `stop` appears in its directory
/// (`cargo test … -- trials::sandbox --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a sandbox for trials by hand"]
async fn sandbox() -> Result<()> {
    let trial = Trial::start("trial-sandbox", Primary::Bind, Primary::Knot).await?;
    let operator = trial.config_as("dns_ops")?;
    println!(
        "config {}\noperator config {}\npsql: {}\nns1 {} ns2 {}",
        trial.stack.config_path().display(),
        operator.display(),
        trial.stack.pg.url_for("pg2dns"),
        trial.stack.server(Primary::Bind)?.addr(),
        trial.second.addr()
    );
    let stop: &Path = &trial.stack.dir().join("stop");
    while !stop.exists() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// `pg2dns ARGS -c CONFIG` with extra environment: exit code, stdout, stderr.
async fn pg2dns_out(
    args: &[&str],
    config: &Path,
    env: &[(&str, &str)],
) -> Result<(Option<i32>, String, String)> {
    let output = pg2dns::command_with(args, config, env).await?;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// The value of the `/metrics` line that starts with `series` (name and
/// labels as printed).
fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

// ------------------------------------------------- the operator's commands

/// docs/operations.md: the admin commands each need "only an SQL login".
/// The operator's copy of the configuration has the service's `[[zone]]`s
/// but not its TSIG key file (mode 600, the service's secret): `status`,
/// `pause --wait` and `resume` work with it as the least-privilege
/// operator role, while the service's own commands still refuse a key file
/// they cannot read, naming it, and `reconcile` run as the operator says
/// which role runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_role_pauses_resumes_and_reads_status_without_the_tsig_key_file() -> Result<()>
{
    let stack = Stack::start("trial-operator", Primary::Bind).await?;
    stack.exec("CREATE ROLE dns_ops LOGIN").await?;
    stack.append_config("[roles]\noperators = [\"dns_ops\"]\n")?;
    stack.setup().await?;
    let missing = stack.dir().join("not-on-this-host/tsig.key");
    let operator = stack.dir().join("operator.toml");
    std::fs::write(
        &operator,
        format!(
            "version = 1\n\n[database]\nurl = \"{}\"\nslot = \"{SLOT}\"\npublication = \"{SLOT}\"\n\n\
             [[zone]]\nname = \"{FORWARD}\"\nprimary = \"{}\"\ntsig_key_file = \"{}\"\n",
            stack.pg.url().replacen("postgres@", "dns_ops@", 1),
            stack.server(Primary::Bind)?.addr(),
            missing.display()
        ),
    )?;
    let mut service = stack.run()?;

    let running = wait_until(DNS_DEADLINE, "status as dns_ops says running", || async {
        let (code, out, err) = pg2dns_out(&["status", "--json"], &operator, &[]).await?;
        ensure!(
            code == Some(0),
            "status as dns_ops exited {code:?}: {out}{err}"
        );
        let s: serde_json::Value = serde_json::from_str(&out).context("status --json")?;
        Ok(if s["state"] == "running" {
            Check::Done(s)
        } else {
            Check::NotYet(s.to_string())
        })
    })
    .await?;
    ensure!(running["mode"] == "running", "{running}");

    let (code, out, err) =
        pg2dns_out(&["pause", "--wait", "--reason", "trial"], &operator, &[]).await?;
    ensure!(
        code == Some(0),
        "pause --wait as dns_ops exited {code:?}: {out}{err}"
    );
    let (_, out, _) = pg2dns_out(&["status", "--json"], &operator, &[]).await?;
    let paused: serde_json::Value = serde_json::from_str(&out).context("status --json")?;
    ensure!(
        paused["mode"] == "paused" && paused["requested_by"] == "dns_ops",
        "status after pause --wait: {paused}"
    );
    let (code, out, err) = pg2dns_out(&["resume"], &operator, &[]).await?;
    ensure!(
        code == Some(0),
        "resume as dns_ops exited {code:?}: {out}{err}"
    );
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('after.example.test.', 300, 'A', '192.0.2.8')")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    service.assert_running()?;

    // The commands that sign with the key still need it, and say which.
    let (code, out, err) = pg2dns_out(&["check-config", "--offline"], &operator, &[]).await?;
    ensure!(
        code == Some(1) && err.contains(&missing.display().to_string()),
        "check-config without the key file exited {code:?}: {out}{err}"
    );
    // Reconcile is the service's (docs/setup.md): as the operator role,
    // even with the key, it fails naming the table and the role to use.
    let with_key = stack.dir().join("operator-with-key.toml");
    std::fs::write(
        &with_key,
        std::fs::read_to_string(&operator)?.replace(
            &missing.display().to_string(),
            &stack
                .server(Primary::Bind)?
                .key_file()
                .display()
                .to_string(),
        ),
    )?;
    let (code, out, err) = pg2dns_out(&["reconcile"], &with_key, &[]).await?;
    ensure!(
        code == Some(2)
            && err.contains("permission denied")
            && err.contains("run it with the service's configuration and role"),
        "reconcile as dns_ops exited {code:?}: {out}{err}"
    );
    Ok(())
}

// ------------------------------------------------ check-config | head

/// `pg2dns ARGS -c CONFIG` whose reader stopped once a line matched (as
/// `| head` does): its exit code and stderr.
async fn read_until_closed(
    args: &[&str],
    config: &Path,
    close_after: impl Fn(usize, &str) -> bool,
) -> Result<(Option<i32>, String)> {
    let mut child = tokio::process::Command::new(pg2dns::binary())
        .args(args)
        .arg("-c")
        .arg(config)
        .env_remove("PG2DNS_FAILPOINT")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting pg2dns {args:?}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut n = 0;
    while let Some(line) = lines.next_line().await? {
        n += 1;
        if close_after(n, &line) {
            break;
        }
    }
    drop(lines);
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .with_context(|| format!("pg2dns {args:?} did not end"))??;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// `check-config | head -3` at 2,000 zones, and a reader that goes away
/// after the zone list, before the problems: the output ends there, the
/// checks go on and give the exit code they give with the whole output;
/// neither a panic ("failed printing to stdout") nor an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_into_a_pipe_closed_early_ends_its_output_quietly_and_keeps_its_exit_code(
) -> Result<()> {
    let stack = Stack::start("trial-check-head", Primary::Bind).await?;
    let bind = stack.server(Primary::Bind)?;
    let mut text = std::fs::read_to_string(stack.config_path())?;
    for i in 0..2000 {
        text.push_str(&format!(
            "\n[[zone]]\nname = \"z{i}.example.net.\"\nprimary = \"{}\"\ntsig_key_file = \"{}\"\n",
            bind.addr(),
            bind.key_file().display()
        ));
    }
    let config = stack.dir().join("many.toml");
    std::fs::write(&config, text)?;

    let (full, out, err) = pg2dns_out(&["check-config"], &config, &[("RUST_LOG", "warn")]).await?;
    ensure!(
        full == Some(1) && out.contains("problem: zone z1999.example.net.: the primary"),
        "the whole check-config exited {full:?}:\n{}\n{err}",
        out.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
    let quiet = |err: &str| !err.contains("panicked") && !err.contains("pg2dns: error");

    // head -3: the zone list (one write, larger than a pipe) is cut short.
    let (code, err) = read_until_closed(&["check-config"], &config, |n, _| n == 3).await?;
    ensure!(
        code == full && quiet(&err),
        "check-config | head -3 exited {code:?} (the whole run: {full:?}):\n{err}"
    );
    // The reader leaves after the zone list, before the problems.
    let (code, err) = read_until_closed(&["check-config"], &config, |_, line| {
        line.starts_with("  source pg2dns.rr")
    })
    .await?;
    ensure!(
        code == full && quiet(&err),
        "check-config closed after the zone list exited {code:?} (the whole run: {full:?}):\n{err}"
    );
    Ok(())
}

// ------------------------------------------- setup ended during its load

/// A setup ended (SIGTERM, kill -9) after it created the slot and before
/// its first load finished leaves a slot and no progress. The next `pg2dns
/// setup` makes the slot again and loads the tables at its point: the rows
/// the database held before pg2dns reach DNS, and the stream goes on from
/// there. (Before, it kept the slot, skipped the load and said "setup
/// done": those rows never reached DNS.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setup_ended_before_its_first_load_finished_loads_the_tables_when_run_again() -> Result<()>
{
    let stack = Stack::start_before_setup("trial-setup-ended", Primary::Bind).await?;
    stack
        .exec(
            "CREATE TABLE public.hosts (id serial PRIMARY KEY, name text NOT NULL, address inet NOT NULL);
             INSERT INTO public.hosts (name, address)
               SELECT 'h' || i || '.example.test.', ('192.0.2.' || (i % 250 + 1))::inet
               FROM generate_series(1, 300) i;",
        )
        .await?;
    stack.append_config(
        "[[source]]\ntable = \"public.hosts\"\nowner_column = \"name\"\naddress_column = \"address\"\n",
    )?;
    let (code, out, err) = pg2dns_out(
        &["setup"],
        stack.config_path(),
        &[("PG2DNS_FAILPOINT", "setup-after-slot")],
    )
    .await?;
    ensure!(
        code != Some(0) && err.contains("failpoint setup-after-slot reached"),
        "setup should have ended at the failpoint, exited {code:?}: {out}{err}"
    );
    let slots: i64 = stack
        .db
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&SLOT],
        )
        .await?
        .get(0);
    let progress: i64 = stack
        .db
        .query_one("SELECT count(*) FROM pg2dns.progress", &[])
        .await?
        .get(0);
    ensure!(
        slots == 1 && progress == 0,
        "the ended setup left {slots} slot(s) and {progress} progress row(s)"
    );

    let (code, out, err) = pg2dns_out(&["setup"], stack.config_path(), &[]).await?;
    ensure!(
        code == Some(0) && out.contains("first load: the 300 rows"),
        "setup run again exited {code:?}: {out}{err}"
    );
    ensure!(
        err.contains("the slot has no progress"),
        "setup should say why it made the slot again: {err}"
    );
    let hosts = |n: u32| -> Vec<Record> {
        (1..=n)
            .map(|i| {
                Record::new(
                    &format!("h{i}.example.test."),
                    3600,
                    "A",
                    &format!("192.0.2.{}", i % 250 + 1),
                )
            })
            .collect()
    };
    let expected = |n: u32| -> ZoneRecords {
        let mut forward = hosts(n);
        forward.sort();
        BTreeMap::from([
            (FORWARD.to_string(), forward),
            (REVERSE.to_string(), vec![]),
        ])
    };
    stack
        .wait_until_dns_equals(&expected(300), DNS_DEADLINE)
        .await?;

    let mut service = stack.run()?;
    stack
        .exec(
            "INSERT INTO public.hosts (name, address) VALUES ('h301.example.test.', '192.0.2.52')",
        )
        .await?;
    stack
        .wait_until_dns_equals(&expected(301), DNS_DEADLINE)
        .await?;
    service.assert_running()?;
    Ok(())
}

// ------------------------------- LATIN1, two primaries, metrics per primary

/// A LATIN1 database and a zone on two primaries (BIND and Knot): rows with
/// é/ü/ß in TXT and in names reach both as the same UTF-8 bytes, an A
/// record whose owner is not a host name is refused on both (row and
/// reason in `pg2dns.rejected`), and `pg2dns_update_operations_total`
/// counts what went to each primary, not only to the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latin1_zone_on_two_primaries_ends_equal_on_both_and_each_primary_counts_its_operations(
) -> Result<()> {
    let trial = Trial::start("trial-latin1-two", Primary::Bind, Primary::Knot).await?;
    let stack = &trial.stack;
    let addr = format!("127.0.0.1:{}", crate::harness::free_port()?);
    stack.append_config(&format!("[metrics]\nlisten = \"{addr}\"\n"))?;
    let mut service = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES \
             ('café.example.test.', 300, 'TXT', '\"crème brûlée\" \"über\"'), \
             ('München.Example.Test', 300, 'TXT', '\"ß\"'), \
             ('esc\\233.example.test.', 300, 'TXT', '\"a\\233b\"'), \
             ('Grüße.example.test.', 300, 'A', '192.0.2.7')",
        )
        .await?;
    let mut forward = vec![
        Record::new(
            r"caf\195\169.example.test.",
            300,
            "TXT",
            r#""cr\195\168me br\195\187l\195\169e" "\195\188ber""#,
        ),
        Record::new(r"m\195\188nchen.example.test.", 300, "TXT", r#""\195\159""#),
        Record::new(r"esc\233.example.test.", 300, "TXT", r#""a\233b""#),
    ];
    forward.sort();
    let expected = BTreeMap::from([
        (FORWARD.to_string(), forward),
        (REVERSE.to_string(), vec![]),
    ]);
    trial.wait_both_hold(&expected).await?;
    let rejected = stack.rejected_at_least(1, DNS_DEADLINE).await?;
    ensure!(
        rejected.len() == 1
            && rejected[0].owner.as_deref() == Some(r"gr\195\188\195\159e.example.test.")
            && rejected[0].reason.contains("not a host name"),
        "{rejected:?}"
    );

    let ns1 = stack.server(Primary::Bind)?.addr().to_string();
    let ns2 = trial.second.addr().to_string();
    let body = wait_until(
        DNS_DEADLINE,
        "both primaries' operations are counted",
        || async {
            let (_, body) = crate::health::http_get(&addr, "/metrics").await?;
            let of = |s: &str| {
                metric(
                    &body,
                    &format!("pg2dns_update_operations_total{{server=\"{s}\"}}"),
                )
            };
            Ok(match (of(&ns1), of(&ns2)) {
                (Some(a), Some(b)) if a >= 3.0 && a == b => Check::Done(body),
                seen => Check::NotYet(format!("{seen:?} in\n{body}")),
            })
        },
    )
    .await?;
    // Without `per_zone` no series names a zone, the pg2dns_primary_* of
    // zones with several primaries included (each primary's sums them).
    for line in body.lines().filter(|l| l.contains("zone=\"")) {
        ensure!(false, "a per-zone series without per_zone: {line}");
    }
    let acked: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("pg2dns_primary_acked{primary=\"") && !l.ends_with(" 0"))
        .collect();
    ensure!(
        acked.len() == 2,
        "each primary's pg2dns_primary_acked, summed over its zones:\n{body}"
    );
    service.assert_running()?;
    Ok(())
}

// --------------------------------------- Ctrl-C in the middle of a repair

/// Ctrl-C (SIGINT) while a spilling `reconcile --apply` holds the running
/// service paused before its repair: it exits 130 saying it was
/// interrupted, its spill directory is gone, the service runs again (not
/// left paused), and a second `reconcile --apply` finishes the repair: DNS
/// equals the table and the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_a_spilling_repair_resumes_the_service_removes_the_spill_and_a_second_apply_finishes(
) -> Result<()> {
    let (stack, spill, mut service) = spilling_service("trial-ctrl-c", 800).await?;
    // Drift behind pg2dns's back: 200 records gone, 50 strays.
    let mut drift = String::new();
    for i in 1..=200 {
        drift.push_str(&format!("update delete h{i}.example.test. A\n"));
    }
    for i in 1..=50 {
        drift.push_str(&format!(
            "update add stray{i}.example.test. 300 A 192.0.2.99\n"
        ));
    }
    stack.server(Primary::Bind)?.nsupdate(&drift).await?;

    let mut reconcile = crate::reconcile::spawn_reconcile(
        &stack,
        &["--apply"],
        &[
            ("PG2DNS_TEST_SPILL_BYTES", "2048"),
            ("PG2DNS_TEST_PAUSE_BEFORE_REPAIR_MS", "600000"),
        ],
    )?;
    let seen = crate::reconcile::read_until(&mut reconcile, "before the repair").await?;
    let spilled: Vec<_> = std::fs::read_dir(&spill)?.collect::<Result<_, _>>()?;
    ensure!(
        spilled.len() == 1,
        "the reconcile spills into one directory of {}: {spilled:?}\n{seen}",
        spill.display()
    );
    interrupt_and_see_the_service_resume(&stack, reconcile, &spill, "reconcile", &seen).await?;

    let (code, out, err) = pg2dns_out(
        &["reconcile", "--apply"],
        stack.config_path(),
        &[("PG2DNS_TEST_SPILL_BYTES", "2048")],
    )
    .await?;
    ensure!(
        code == Some(0),
        "the second reconcile --apply exited {code:?}: {out}{err}"
    );
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('after.example.test.', 300, 'A', '192.0.2.8')")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    service.assert_running()?;
    let left: Vec<_> = std::fs::read_dir(&spill)?.collect::<Result<_, _>>()?;
    ensure!(
        left.is_empty(),
        "the second reconcile left its spill directory: {left:?}"
    );
    Ok(())
}

// ------------------------------- Ctrl-C of `pg2dns run` with work in flight

/// SIGINT to `pg2dns run` while a 500-row transaction waits for a stopped
/// BIND: the service stops (exit 0, state *stopped*, its log says the
/// unacknowledged transactions will be replayed), the slot has not confirmed
/// the transaction, and the next run delivers it: DNS equals the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_of_run_with_a_transaction_in_flight_stops_and_the_next_run_delivers_it(
) -> Result<()> {
    let mut stack = Stack::start("trial-run-ctrl-c", Primary::Bind).await?;
    let mut run = stack.run()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('before.example.test.', 300, 'A', '192.0.2.1')")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    stack.server_mut(Primary::Bind)?.stop().await?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             SELECT 'f' || i || '.example.test.', 300, 'A', '192.0.2.' || (i % 250 + 1)
             FROM generate_series(1, 500) i",
        )
        .await?;
    wait_until(
        DNS_DEADLINE,
        "status shows the transaction in flight",
        || async {
            let (_, out, _) = pg2dns_out(&["status", "--json"], stack.config_path(), &[]).await?;
            let s: serde_json::Value = serde_json::from_str(&out).context("status --json")?;
            let in_flight: u64 = s["zones"]
                .as_array()
                .map(|zones| zones.iter().filter_map(|z| z["in_flight"].as_u64()).sum())
                .unwrap_or(0);
            Ok(if in_flight > 0 {
                Check::Done(())
            } else {
                Check::NotYet(s.to_string())
            })
        },
    )
    .await?;
    crate::harness::signal(run.pid(), "INT")?;
    let status = run.wait_exit(Duration::from_secs(30)).await?;
    ensure!(
        status.success() && run.log().contains("will be replayed"),
        "pg2dns run after SIGINT: {status}\n{}",
        run.log_tail(20)
    );
    let (_, out, _) = pg2dns_out(&["status", "--json"], stack.config_path(), &[]).await?;
    let s: serde_json::Value = serde_json::from_str(&out).context("status --json")?;
    ensure!(s["state"] == "stopped", "status after SIGINT: {s}");
    let pending = stack.pending_transactions().await?;
    ensure!(
        !pending.is_empty(),
        "the slot confirmed a transaction BIND never acknowledged"
    );

    stack.server_mut(Primary::Bind)?.start_again().await?;
    let mut again = stack.run()?;
    let dns = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(dns[FORWARD].len() == 501, "{} records", dns[FORWARD].len());
    again.assert_running()?;
    Ok(())
}

// ------------------------------------------ the lag of a large transaction

/// A large transaction streams for a while before its Commit reaches
/// pg2dns (its first chunks go to DNS meanwhile). Found in the trials:
/// `pg2dns_lag_seconds` (and `status`) said 0 all that time, with the
/// transaction committed in PostgreSQL and not in DNS. The lag now counts
/// from its commit time (in its Begin) once its first change arrives: it
/// shows while `pg2dns_transactions_total` has not yet counted the
/// transaction's Commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transaction_not_yet_in_dns_shows_its_lag_before_its_commit_arrives() -> Result<()>
{
    let stack = Stack::start("trial-lag-large", Primary::Bind).await?;
    let addr = format!("127.0.0.1:{}", crate::harness::free_port()?);
    stack.append_config(&format!("[metrics]\nlisten = \"{addr}\"\n"))?;
    let mut service = stack.run()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('first.example.test.', 300, 'A', '192.0.2.1')")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    let scrape = || async {
        let (_, body) = crate::health::http_get(&addr, "/metrics").await?;
        Ok::<_, anyhow::Error>((
            metric(&body, "pg2dns_lag_seconds").unwrap_or(0.0),
            metric(&body, "pg2dns_transactions_total").context("pg2dns_transactions_total")?,
        ))
    };
    let (_, applied) = wait_until(DNS_DEADLINE, "the first transaction counted", || async {
        let (lag, applied) = scrape().await?;
        Ok(if applied >= 1.0 && lag == 0.0 {
            Check::Done((lag, applied))
        } else {
            Check::NotYet(format!("lag {lag}, transactions {applied}"))
        })
    })
    .await?;
    // DNS stops answering: the transaction's first chunks stay in flight.
    let pid = stack.server(Primary::Bind)?.pid().context("BIND runs")?;
    crate::harness::signal(pid, "STOP")?;
    let inserted = stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) \
             SELECT 'h' || i || '.Example.Test.', 300, 'TXT', '\"Grüße ' || i || '\" \"zwei\"' \
             FROM generate_series(1, 100000) AS i",
        )
        .await;
    let seen = wait_until(
        crate::harness::RECOVERY_DEADLINE,
        "a lag while the transaction's Commit is not yet counted",
        || async {
            let (lag, now) = scrape().await?;
            ensure!(
                now <= applied,
                "the Commit was counted ({now} transactions) before any lag showed ({lag} s)"
            );
            Ok(if lag >= 0.5 {
                Check::Done(lag)
            } else {
                Check::NotYet(format!("lag {lag}, transactions {now}"))
            })
        },
    )
    .await;
    let resumed = crate::harness::signal(pid, "CONT");
    inserted?;
    seen?;
    resumed?;
    // 100,000 records, on a loaded machine.
    stack
        .wait_until_dns_matches_table(3 * crate::harness::RECOVERY_DEADLINE)
        .await?;
    service.assert_running()?;
    Ok(())
}

// ------------------------------ reconcile --primary as the operator role

/// docs/operations.md: a primary left behind is brought in line with
/// `pg2dns reconcile --primary NAME --apply`. Tried as the least-privilege
/// operator role, also granted read of the source table (`pg2dns.rr`),
/// with two primaries and a running service: reconcile reads pg2dns's own
/// tables (and exports a snapshot over a replication connection), so it is
/// refused before it pauses or changes anything, naming the table and the
/// role to run it as (docs/setup.md, roles and grants). Run as the
/// service, it repairs the record added behind pg2dns's back on `ns2` only,
/// `ns1` is left as it was, and the service runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_of_one_primary_as_the_operator_role_is_refused_untouched_and_the_services_role_repairs_it(
) -> Result<()> {
    let trial = Trial::start("trial-reconcile-primary", Primary::Bind, Primary::Knot).await?;
    let stack = &trial.stack;
    stack.exec("GRANT SELECT ON pg2dns.rr TO dns_ops").await?;
    let mut service = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES \
             ('www.example.test.', 300, 'A', '192.0.2.10'), \
             ('Grüße.Example.Test.', 300, 'TXT', '\"ä \\\"q\\\"\"')",
        )
        .await?;
    let mut forward = vec![
        Record::new("www.example.test.", 300, "A", "192.0.2.10"),
        Record::new(
            r"gr\195\188\195\159e.example.test.",
            300,
            "TXT",
            r#""\195\164 \"q\"""#,
        ),
    ];
    forward.sort();
    let want = BTreeMap::from([
        (FORWARD.to_string(), forward),
        (REVERSE.to_string(), vec![]),
    ]);
    let ns1 = stack.server(Primary::Bind)?;
    trial.wait_both_hold(&want).await?;
    trial
        .second
        .nsupdate("update add stray.example.test. 300 A 192.0.2.99")
        .await?;
    let on_ns2 = zones_on(&trial.second).await?;
    ensure!(on_ns2 != want, "the stray record is on ns2: {on_ns2:?}");

    let operator = trial.config_as("dns_ops")?;
    let (code, out, err) = pg2dns_out(
        &["reconcile", "--primary", "ns2", "--apply", "--json"],
        &operator,
        &[],
    )
    .await?;
    ensure!(
        code == Some(2)
            && err.contains("permission denied for table zones")
            && err.contains("run it with the service's configuration and role"),
        "reconcile --primary ns2 --apply as dns_ops exited {code:?}:\n{out}\n{err}"
    );
    let requests: i64 = stack
        .db
        .query_one(
            "SELECT count(*) FROM pg2dns.control WHERE requested_by = 'dns_ops'",
            &[],
        )
        .await?
        .get(0);
    ensure!(requests == 0, "the refused reconcile paused the service");
    ensure!(
        zones_on(&trial.second).await? == on_ns2 && zones_on(ns1).await? == want,
        "the refused reconcile changed a primary"
    );

    let (code, out, err) = pg2dns_out(
        &["reconcile", "--primary", "ns2", "--apply", "--json"],
        stack.config_path(),
        &[],
    )
    .await?;
    ensure!(
        code == Some(0),
        "reconcile --primary ns2 --apply as the service exited {code:?}:\n{out}\n{err}"
    );
    ensure!(
        zones_on(&trial.second).await? == want && zones_on(ns1).await? == want,
        "ns2 is repaired and ns1 left as it was"
    );
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('after.example.test.', 300, 'A', '192.0.2.11')")
        .await?;
    for server in [ns1, &trial.second] {
        wait_until(DNS_DEADLINE, "the stream goes on to both", || async {
            Ok(
                if server
                    .axfr(FORWARD)
                    .await?
                    .iter()
                    .any(|r| r.owner == "after.example.test.")
                {
                    Check::Done(())
                } else {
                    Check::NotYet(String::new())
                },
            )
        })
        .await?;
    }
    service.assert_running()?;
    Ok(())
}

// ------------------------------- Ctrl-C of a spilling `reconcile --zone-file`

/// A running service whose reconciles spill under a directory of their
/// own (`[reconcile] memory_mib = 16`), with `hosts` A records streamed to
/// BIND: the stack, the spill directory and the service.
async fn spilling_service(
    label: &str,
    hosts: usize,
) -> Result<(Stack, PathBuf, crate::harness::Pg2dns)> {
    let stack = Stack::start(label, Primary::Bind).await?;
    let spill = stack.dir().join("spill");
    std::fs::create_dir_all(&spill)?;
    stack.append_config(&format!(
        "[reconcile]\nmemory_mib = 16\nspill_dir = \"{}\"\n",
        spill.display()
    ))?;
    let service = stack.run()?;
    stack
        .exec(&format!(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             SELECT 'h' || i || '.example.test.', 300, 'A', '192.0.2.' || (i % 250 + 1)
             FROM generate_series(1, {hosts}) i"
        ))
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    Ok((stack, spill, service))
}

/// SIGINT to `reconcile` (`what` in messages; `seen`: what it printed so
/// far): it exits 130 saying it was interrupted, leaves `spill` empty, and
/// the service it held paused runs again.
async fn interrupt_and_see_the_service_resume(
    stack: &Stack,
    mut reconcile: tokio::process::Child,
    spill: &Path,
    what: &str,
    seen: &str,
) -> Result<()> {
    crate::harness::signal(reconcile.id().context("no pid")?, "INT")?;
    let status = tokio::time::timeout(Duration::from_secs(60), reconcile.wait()).await??;
    let mut rest = String::new();
    if let Some(mut stderr) = reconcile.stderr.take() {
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut rest).await?;
    }
    ensure!(
        status.code() == Some(130) && rest.contains("reconcile interrupted by SIGINT"),
        "{what} after SIGINT: {status}\n{seen}{rest}"
    );
    let left = entries_of(spill)?;
    ensure!(left.is_empty(), "the spill directory is left: {left:?}");
    wait_until(DNS_DEADLINE, "the service runs again", || async {
        let (_, out, _) = pg2dns_out(&["status", "--json"], stack.config_path(), &[]).await?;
        let s: serde_json::Value = serde_json::from_str(&out).context("status --json")?;
        Ok(if s["state"] == "running" {
            Check::Done(())
        } else {
            Check::NotYet(s.to_string())
        })
    })
    .await
}

/// The entries of a directory.
fn entries_of(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::read_dir(dir)?
        .map(|e| Ok(e?.path()))
        .collect::<Result<_>>()
}

/// The `zone_file` part of a `reconcile --json --zone-file` report for
/// [`FORWARD`], with the exit code.
fn zone_file_side(
    code: Option<i32>,
    out: &str,
    err: &str,
) -> Result<(Option<i32>, serde_json::Value)> {
    let json: serde_json::Value = serde_json::from_str(out)
        .with_context(|| format!("reconcile printed no JSON (exit {code:?}):\n{out}\n{err}"))?;
    let zone = json["zones"]
        .as_array()
        .and_then(|zones| zones.iter().find(|z| z["zone"] == FORWARD))
        .with_context(|| format!("no zone {FORWARD} in {json:#}"))?;
    Ok((code, zone["zone_file"].clone()))
}

/// A legacy zone file of 2,000 hosts (every hundredth with another TTL,
/// mixed case, an escaped byte) compared with a running service's table
/// of 1,500 of them, spilled in runs of 2 kB: SIGINT while the reconcile
/// holds the service paused at the comparison ends it with exit 130
/// saying it was interrupted; the spill directory is left empty, the
/// service runs again (not left paused) and streams on, and a second
/// `reconcile --zone-file` gives the answer an uninterrupted run gave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_a_spilling_zone_file_compare_resumes_the_service_removes_the_spill_and_the_next_run_answers_the_same(
) -> Result<()> {
    let (stack, spill, mut service) = spilling_service("trial-zonefile-ctrl-c", 1500).await?;
    let mut legacy = String::from(
        "; generated by dnsgen\n$TTL 300\n$ORIGIN example.test.\n\
         @ IN SOA ns1.example.net. hostmaster ( 2026120701 3h 15m 1w 300 )\n\
         \tIN NS ns1.example.net.\n",
    );
    for i in 1..=2000 {
        let ttl = if i % 100 == 0 { 600 } else { 300 };
        legacy.push_str(&format!("H{i}\t{ttl}\tIN\tA\t192.0.2.{}\n", i % 250 + 1));
    }
    legacy.push_str("txt\tTXT\t\"caf\\195\\169 ; not a comment\"\n");
    let file = stack.dir().join("db.example.test");
    std::fs::write(&file, legacy)?;
    let arg = format!("{FORWARD}={}", file.display());
    let spill_env = ("PG2DNS_TEST_SPILL_BYTES", "2048");

    let (code, out, err) = pg2dns_out(
        &["reconcile", "--json", "--zone-file", &arg],
        stack.config_path(),
        &[spill_env],
    )
    .await?;
    let uninterrupted = zone_file_side(code, &out, &err)?;
    ensure!(
        uninterrupted.0 == Some(1)
            && uninterrupted.1["file_extra"] == 501
            && uninterrupted.1["file_ttl_differences"] == 15,
        "the uninterrupted reconcile: {uninterrupted:?}\n{err}"
    );
    ensure!(
        entries_of(&spill)?.is_empty(),
        "the uninterrupted run left its spill"
    );

    let mut reconcile = crate::reconcile::spawn_reconcile(
        &stack,
        &["--json", "--zone-file", &arg],
        &[
            spill_env,
            ("PG2DNS_TEST_PAUSE_BEFORE_ZONE_FILE_MS", "600000"),
        ],
    )?;
    let seen =
        crate::reconcile::read_until(&mut reconcile, "before the zone-file comparison").await?;
    // The file's runs and the tables' runs, each in a directory of the
    // run's own.
    let spilled = entries_of(&spill)?;
    let mut runs = 0;
    for dir in &spilled {
        runs += entries_of(dir)?.len();
    }
    ensure!(
        !spilled.is_empty() && runs > 0,
        "the reconcile spills its runs under {}: {spilled:?}, {runs} run(s)\n{seen}",
        spill.display()
    );
    let (_, out, _) = pg2dns_out(&["status", "--json"], stack.config_path(), &[]).await?;
    let held: serde_json::Value = serde_json::from_str(&out).context("status --json")?;
    ensure!(
        held["state"] != "running" && held.to_string().contains("reconcile by"),
        "the service is not held by the reconcile at the compared point: {held}"
    );
    interrupt_and_see_the_service_resume(&stack, reconcile, &spill, "reconcile --zone-file", &seen)
        .await?;

    let (code, out, err) = pg2dns_out(
        &["reconcile", "--json", "--zone-file", &arg],
        stack.config_path(),
        &[spill_env],
    )
    .await?;
    let again = zone_file_side(code, &out, &err)?;
    ensure!(
        again == uninterrupted,
        "the run after the interrupted one answers otherwise: {again:?}\nthe uninterrupted run: {uninterrupted:?}"
    );
    ensure!(
        entries_of(&spill)?.is_empty(),
        "the second run left its spill"
    );
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('after.example.test.', 300, 'A', '192.0.2.8')")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    service.assert_running()?;
    Ok(())
}

// ------------------------- Prometheus scrapes during a primary's rejoin

/// One sample line of the Prometheus text format: `name{labels} value`.
fn parse_sample(line: &str) -> Result<(String, String, f64)> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    ensure!(
        !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()),
        "no metric name"
    );
    let mut rest = &line[name_end..];
    let mut labels = String::new();
    if let Some(after) = rest.strip_prefix('{') {
        // label="value" pairs, the value with \\, \" and \n escapes.
        let mut chars = after.char_indices();
        let mut in_value = false;
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match (in_value, c) {
                (true, '\\') => {
                    let (_, e) = chars.next().context("a dangling escape")?;
                    ensure!(matches!(e, '\\' | '"' | 'n'), "the escape \\{e}");
                }
                (true, '"') => in_value = false,
                (false, '"') => in_value = true,
                (false, '}') => {
                    end = Some(i);
                    break;
                }
                (false, c) => ensure!(
                    c.is_ascii_alphanumeric() || matches!(c, '_' | '=' | ','),
                    "{c:?} in the labels"
                ),
                _ => {}
            }
        }
        let end = end.context("unclosed labels")?;
        labels = after[..end].to_owned();
        rest = &after[end + 1..];
    }
    let value = rest
        .strip_prefix(' ')
        .context("no space before the value")?;
    let value = value.split(' ').next().unwrap_or(value);
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse::<f64>()
            .with_context(|| format!("the value {v:?}"))?,
    };
    Ok((name.to_owned(), labels, value))
}

/// A scrape checked as the Prometheus text format: every sample's family
/// typed (`# TYPE`) before it, no family typed twice, no series twice.
/// Returns each series (`name{labels}`) with its value and type.
fn parse_scrape(body: &str) -> Result<BTreeMap<String, (f64, String)>> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut series = BTreeMap::new();
    for (n, line) in body.lines().enumerate() {
        let at = || format!("line {}: {line}", n + 1);
        if line.is_empty() || line.starts_with("# HELP ") || line == "# EOF" {
            continue;
        }
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').with_context(at)?;
            ensure!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "the family {name} is typed twice ({})",
                at()
            );
            continue;
        }
        ensure!(!line.starts_with('#'), "an unknown comment ({})", at());
        let (name, labels, value) = parse_sample(line).with_context(at)?;
        let family = [
            "", "_total", "_bucket", "_sum", "_count", "_created", "_info",
        ]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|f| types.contains_key(*f))
        .with_context(|| format!("a sample before its family's # TYPE ({})", at()))?;
        let kind = types[family].clone();
        let key = format!("{name}{{{labels}}}");
        ensure!(
            series.insert(key.clone(), (value, kind)).is_none(),
            "the series {key} twice in one scrape ({})",
            at()
        );
    }
    Ok(series)
}

/// Prometheus scraping `/metrics` every 50 ms through the in-session rejoin
/// of a primary dropped past its queue bound (the scenario of
/// `primaries::a_primary_dropped_past_the_queue_bound_rejoins_within_the_session_once_it_answers_again`):
/// every scrape parses as the Prometheus text format, the
/// `pg2dns_primary_*` series of both primaries are in every scrape after
/// the first acknowledgement, and no counter goes down from one scrape to
/// the next (`pg2dns_primary_acked` is a gauge of the session's
/// dispatches: the session the rejoin starts counts from 0 again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_during_a_dropped_primarys_rejoin_are_well_formed_name_both_primaries_and_never_go_back(
) -> Result<()> {
    let addr = format!("127.0.0.1:{}", crate::harness::free_port()?);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let scraper = tokio::spawn({
        let addr = addr.clone();
        async move {
            let mut scrapes = 0usize;
            let mut problems: Vec<String> = Vec::new();
            let mut acked = false;
            let mut last: BTreeMap<String, (f64, String)> = BTreeMap::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop_rx.changed() => break,
                }
                // Before the service listens, and once it ended, nothing
                // answers: those scrapes are no answers, not bad ones.
                let Ok((code, response)) = crate::health::http_get(&addr, "/metrics").await else {
                    continue;
                };
                let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
                scrapes += 1;
                let series = match (code, parse_scrape(body)) {
                    (200, Ok(series)) => series,
                    (code, Err(e)) => {
                        problems.push(format!("scrape {scrapes} (HTTP {code}): {e:#}"));
                        continue;
                    }
                    (code, Ok(_)) => {
                        problems.push(format!("scrape {scrapes}: HTTP {code}"));
                        continue;
                    }
                };
                let primary_series = |metric: &str, primary: &str| {
                    series.iter().find(|(k, _)| {
                        k.starts_with(&format!("{metric}{{"))
                            && k.contains(&format!("primary=\"{primary}\""))
                    })
                };
                acked = acked
                    || primary_series("pg2dns_primary_acked", "ns1")
                        .is_some_and(|(_, (v, _))| *v >= 1.0);
                if acked {
                    for metric in [
                        "pg2dns_primary_acked",
                        "pg2dns_primary_in_flight",
                        "pg2dns_primary_degraded",
                    ] {
                        for primary in ["ns1", "ns2"] {
                            if primary_series(metric, primary).is_none() {
                                problems
                                    .push(format!("scrape {scrapes}: no {metric} of {primary}"));
                            }
                        }
                    }
                }
                for (key, (value, kind)) in &series {
                    if let Some((before, _)) = last.get(key) {
                        if kind == "counter" && value < before {
                            problems.push(format!(
                                "scrape {scrapes}: {key} went from {before} down to {value}"
                            ));
                        }
                    }
                }
                last = series;
            }
            let primaries: Vec<String> = last
                .iter()
                .filter(|(k, _)| k.starts_with("pg2dns_primary_"))
                .map(|(k, (v, kind))| format!("{k} {v} ({kind})"))
                .collect();
            (scrapes, acked, problems, primaries)
        }
    });
    let scenario = crate::primaries::dropped_primary_rejoins_within_the_session(
        "trial-scrape-rejoin",
        &format!("[metrics]\nlisten = \"{addr}\"\n"),
    )
    .await;
    let _ = stop_tx.send(true);
    let (scrapes, acked, problems, primaries) = scraper.await?;
    scenario?;
    ensure!(
        problems.is_empty(),
        "{} of {scrapes} scrapes were wrong:\n{}",
        problems.len(),
        problems
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    ensure!(
        acked && scrapes >= 20,
        "{scrapes} scrape(s) answered, an acknowledgement seen: {acked}; the last scrape's primary series: {primaries:#?}"
    );
    Ok(())
}

// ------------------------------------------------- output into `head`

/// `pg2dns ARGS -c CONFIG` writing into a pipe nobody reads any more (its
/// reading end closed before the first write): exit code and stderr.
async fn into_a_closed_pipe(args: &[&str], config: &Path) -> Result<(Option<i32>, String)> {
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let output = tokio::process::Command::new(pg2dns::binary())
        .args(args)
        .arg("-c")
        .arg(config)
        .env_remove("PG2DNS_FAILPOINT")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Not `output()`: tokio's would capture stdout in a pipe of its own.
        .spawn()
        .with_context(|| format!("starting pg2dns {args:?}"))?
        .wait_with_output();
    let output = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .with_context(|| format!("pg2dns {args:?} did not end"))??;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// `status` (text and `--json`), `reconcile` (text and `--json`, a line
/// per zone), `completions` and `man` piped into `head -n 1`, and into a
/// pipe already closed, with 2,000 zones, one of them on two primaries:
/// each exits as its whole run does (0 for a service running and zones in
/// sync), with no panic, no "Broken pipe" and no error on stderr. Before,
/// `completions` panicked ("failed to write completion file") and `man`
/// said "error: Broken pipe" and exited 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_piped_into_head_exits_quietly_with_its_exit_code() -> Result<()> {
    const N: usize = 2_000;
    let names: Vec<String> = (0..N).map(crate::many_zones::zone_name).collect();
    let zones: Vec<(&str, Primary)> = names.iter().map(|z| (z.as_str(), Primary::Bind)).collect();
    let stack = Stack::start_split("trial-head", &zones).await?;
    let second = Server::start_with_access(
        Primary::Bind,
        stack.dir(),
        &[names[0].as_str()],
        Access::default(),
    )
    .await?;
    let text = std::fs::read_to_string(stack.config_path())?;
    let head = &text[..text.find("\n[[").context("the config has tables")?];
    let ns1 = stack.server(Primary::Bind)?;
    let mut config = format!(
        "{head}\n\n[[server]]\nname = \"ns1\"\naddress = \"{}\"\ntsig_key_file = \"{}\"\n\n\
         [[server]]\nname = \"ns2\"\naddress = \"{}\"\ntsig_key_file = \"{}\"\n",
        ns1.addr(),
        ns1.key_file().display(),
        second.addr(),
        second.key_file().display()
    );
    for (i, zone) in names.iter().enumerate() {
        let primaries = if i == 0 {
            "\"ns1\", \"ns2\""
        } else {
            "\"ns1\""
        };
        config.push_str(&format!(
            "\n[[zone]]\nname = \"{zone}\"\nprimaries = [{primaries}]\n"
        ));
    }
    std::fs::write(stack.config_path(), config)?;
    let mut service = stack.run()?;
    stack
        .exec(&format!(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES \
             ('Www.{}', 300, 'TXT', '\"caf\\195\\169 ünï\"'), ('www.{}', 300, 'A', '192.0.2.1')",
            names[0],
            names[N - 1]
        ))
        .await?;
    crate::admin::wait_for_status(
        &stack,
        "every zone published, nothing in flight",
        Duration::from_secs(120),
        |s| {
            let zones = s["zones"].as_array().cloned().unwrap_or_default();
            let acked = |zone: &str| {
                zones
                    .iter()
                    .any(|z| z["zone"] == zone && !z["acked_at"].is_null())
            };
            zones.len() == N
                && zones.iter().all(|z| z["in_flight"] == 0)
                && acked(&names[0])
                && acked(&names[N - 1])
                && s["primaries"]
                    .as_array()
                    .is_some_and(|p| p.len() == 2 && p.iter().all(|p| !p["acked_at"].is_null()))
        },
    )
    .await?;

    let quiet = |err: &str| {
        !err.contains("panicked")
            && !err.to_lowercase().contains("broken pipe")
            && !err.contains("pg2dns: error")
            && !err.contains("backtrace")
    };
    let config = stack.config_path();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["reconcile"],
        &["reconcile", "--json"],
        &["completions", "bash"],
        &["completions", "zsh"],
        &["man"],
    ] {
        let (full, out, err) = pg2dns_out(args, config, &[("RUST_LOG", "warn")]).await?;
        ensure!(
            full == Some(0) && quiet(&err) && !out.is_empty(),
            "the whole pg2dns {args:?} exited {full:?}:\n{}\n{err}",
            out.chars().take(2000).collect::<String>()
        );
        if matches!(args, ["status", "--json"] | ["reconcile", ..]) {
            ensure!(
                out.len() > 1 << 16,
                "pg2dns {args:?} printed {} bytes, within a pipe's buffer",
                out.len()
            );
        }
        let (code, err) = read_until_closed(args, config, |n, _| n == 1).await?;
        ensure!(
            code == full && quiet(&err),
            "pg2dns {args:?} | head -n 1 exited {code:?} (the whole run: {full:?}):\n{err}"
        );
        let (code, err) = into_a_closed_pipe(args, config).await?;
        ensure!(
            code == full && quiet(&err),
            "pg2dns {args:?} into a closed pipe exited {code:?} (the whole run: {full:?}):\n{err}"
        );
    }
    service.assert_running()?;
    Ok(())
}
