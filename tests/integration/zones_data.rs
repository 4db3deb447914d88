//! Zones as data (issue #24): zones listed in `pg2dns.zones`, each naming a
//! `[[server]]` of the configuration, are added and removed by a row while
//! the service streams or is paused; a row naming no declared server is
//! refused with the reason in `pg2dns.rejected`, and the others go on.

use anyhow::{ensure, Context, Result};

use crate::harness::stack::{FORWARD, REVERSE};
use crate::harness::{wait_until, Check, Primary, Record, Stack, DNS_DEADLINE};

/// The zone the tests add through the table (served by the primary from the
/// start, empty, but not in the configuration file).
const ADDED: &str = "added.test.";

on_each_primary!(
    a_zone_added_and_removed_through_the_table_while_streaming_is_loaded_then_left_as_is
);

fn file_zones() -> Vec<String> {
    vec![FORWARD.to_owned(), REVERSE.to_owned()]
}

/// The rows of `pg2dns.rejected` refusing rows of `pg2dns.zones`, as
/// (row_key, reason).
async fn zone_rejections(stack: &Stack) -> Result<Vec<(String, String)>> {
    Ok(stack
        .db
        .query(
            "SELECT row_key, reason FROM pg2dns.rejected WHERE source = 'pg2dns.zones' ORDER BY id",
            &[],
        )
        .await
        .context("reading pg2dns.rejected")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

async fn a_zone_added_and_removed_through_the_table_while_streaming_is_loaded_then_left_as_is(
    primary: Primary,
) -> Result<()> {
    let stack = Stack::start_zones_as_data("zones-stream", primary, &[ADDED]).await?;
    let _pg2dns = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('www.example.test.', 300, 'A', '192.0.2.10');
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('early.added.test.', 300, 'A', '192.0.2.20')",
        )
        .await?;
    stack
        .wait_until_zones_match_table(&file_zones(), DNS_DEADLINE)
        .await?;
    // Committed before the zone was followed: outside every zone, so not
    // sent then; the zone's first load publishes it.
    ensure!(
        stack.axfr(ADDED).await?.is_empty(),
        "the zone is not followed yet"
    );
    // The zone row, spelled as users do, and a record of it, in one
    // transaction; then a change of the zone streamed after it.
    stack
        .exec(
            "BEGIN;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('Mail.Added.Test', 600, 'A', '192.0.2.21');
             INSERT INTO pg2dns.zones (name, server) VALUES ('Added.TEST', 'primary');
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('added.test.', 300, 'TXT', '\"zone row and records in one transaction\"');
             COMMIT;
             UPDATE pg2dns.rr SET rdata = '192.0.2.22' WHERE owner = 'early.added.test.';
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('www2.example.test.', 300, 'A', '192.0.2.11')",
        )
        .await?;
    let dns = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    let added = dns.get(ADDED).cloned().unwrap_or_default();
    ensure!(
        added.contains(&Record::new("mail.added.test.", 600, "A", "192.0.2.21"))
            && added.contains(&Record::new("early.added.test.", 300, "A", "192.0.2.22"))
            && !added.contains(&Record::new("early.added.test.", 300, "A", "192.0.2.20")),
        "the added zone holds its rows as they are now: {added:?}"
    );
    // Followed from now on, like any zone.
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('later.added.test.', 300, 'AAAA', '2001:db8::7')")
        .await?;
    let before_removal = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(
        zone_rejections(&stack).await?.is_empty(),
        "no row of pg2dns.zones was refused"
    );

    // Removed: pg2dns stops publishing to it and leaves its records as
    // they are. A row of it committed after the removal is outside every
    // zone; the forward zone goes on.
    stack
        .exec(
            "DELETE FROM pg2dns.zones WHERE name = 'Added.TEST';
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('gone.added.test.', 300, 'A', '192.0.2.23');
             DELETE FROM pg2dns.rr WHERE owner = 'mail.added.test.';
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('after.example.test.', 300, 'A', '192.0.2.12')",
        )
        .await?;
    stack
        .wait_until_zones_match_table(&file_zones(), DNS_DEADLINE)
        .await?;
    let rejected = stack.rejected_at_least(1, DNS_DEADLINE).await?;
    ensure!(
        rejected
            .iter()
            .any(|r| r.owner.as_deref() == Some("gone.added.test.")
                && r.reason.contains("in no configured zone")),
        "a row of the removed zone is refused as outside every zone: {rejected:?}"
    );
    ensure!(
        stack.axfr(ADDED).await? == before_removal[ADDED],
        "the removed zone keeps the records pg2dns published, and gets no more"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_added_while_paused_is_loaded_at_resume() -> Result<()> {
    let stack = Stack::start_zones_as_data("zones-paused", Primary::Bind, &[ADDED]).await?;
    let _pg2dns = stack.run()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('www.example.test.', 300, 'A', '192.0.2.10')")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    let out = stack
        .admin(&["pause", "--wait", "--reason", "zones"])
        .await?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).starts_with("paused at "),
        "pause --wait: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stack
        .exec(
            "INSERT INTO pg2dns.zones (name, server) VALUES ('added.test', 'primary');
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('www.added.test.', 300, 'A', '192.0.2.30')",
        )
        .await?;
    // While paused nothing is sent: the zone (already served, empty) stays
    // empty; the status shows the service paused.
    let s = crate::admin::status(&stack).await?;
    ensure!(s["mode"] == "paused", "still paused: {s}");
    ensure!(
        stack.axfr(ADDED).await?.is_empty(),
        "nothing is loaded while paused"
    );
    stack.admin(&["resume"]).await?;
    let dns = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(
        dns[ADDED] == vec![Record::new("www.added.test.", 300, "A", "192.0.2.30")],
        "the zone added while paused is loaded at resume: {dns:?}"
    );
    // `pg2dns reconcile` knows the zones of the table too.
    let out = stack.reconcile(&["--zone", "ADDED.test"], &[]).await?;
    let printed = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.code() == Some(0) && printed.contains("added.test."),
        "reconcile --zone of a zone of pg2dns.zones finds it in sync:\n{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_checks_the_zones_of_pg2dns_zones_as_the_files() -> Result<()> {
    let stack = Stack::start_zones_as_data("zones-check", Primary::Bind, &[ADDED]).await?;
    // A zone the server serves, one it does not, and one naming no
    // declared server (with a name in mixed case, as users write it).
    stack
        .exec(
            "INSERT INTO pg2dns.zones (name, server) VALUES
                 ('added.test.', 'primary'),
                 ('Unserved.Test.', 'primary'),
                 ('elsewhere.test.', 'ns-nowhere')",
        )
        .await?;
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
    let naming = |needle: &str| problems.iter().filter(|p| p.contains(needle)).count();
    ensure!(
        output.status.code() == Some(1)
            && problems.len() == 2
            && naming("zone unserved.test.: the primary") == 1
            && naming("does not serve the zone as primary") == 1
            && naming("pg2dns.zones: the row of zone \"elsewhere.test.\" (server \"ns-nowhere\") would not be followed") == 1
            && naming("added.test.") == 0,
        "check-config must name the unserved table zone and the row with an unknown server, and nothing about the sound ones:\n{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_row_naming_an_unknown_server_is_refused_with_the_reason_and_the_others_go_on(
) -> Result<()> {
    let stack = Stack::start_zones_as_data("zones-unknown", Primary::Bind, &[ADDED]).await?;
    let _pg2dns = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.zones (name, server) VALUES ('added.test.', 'ns-nowhere');
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('www.added.test.', 300, 'A', '192.0.2.40');
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('www.example.test.', 300, 'A', '192.0.2.10')",
        )
        .await?;
    let rejections = wait_until(DNS_DEADLINE, "pg2dns.zones's row is refused", || async {
        let r = zone_rejections(&stack).await?;
        Ok(if r.is_empty() {
            Check::NotYet("no rejection yet".into())
        } else {
            Check::Done(r)
        })
    })
    .await?;
    ensure!(
        rejections.len() == 1
            && rejections[0].0 == "added.test."
            && rejections[0]
                .1
                .contains("server \"ns-nowhere\" is not a declared [[server]]")
            && rejections[0].1.contains("declared: \"primary\""),
        "the refusal names the row, the server and the declared ones: {rejections:?}"
    );
    // The other zones go on.
    stack
        .wait_until_zones_match_table(&file_zones(), DNS_DEADLINE)
        .await?;
    ensure!(
        stack.axfr(ADDED).await?.is_empty(),
        "the refused zone is not published"
    );
    // Corrected, it is added and loaded.
    stack
        .exec("UPDATE pg2dns.zones SET server = 'primary' WHERE name = 'added.test.'")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(
        zone_rejections(&stack).await?.len() == 1,
        "the refusal is recorded once, not at every session start"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_both_in_the_file_and_in_the_table_halts_naming_it() -> Result<()> {
    let stack = Stack::start_zones_as_data("zones-both", Primary::Bind, &[]).await?;
    stack
        .exec("INSERT INTO pg2dns.zones (name, server) VALUES ('EXAMPLE.test', 'primary')")
        .await?;
    let _pg2dns = stack.run()?;
    // The harness runs with --exit-on-halt: the status says it halted.
    let s = wait_until(DNS_DEADLINE, "the service halts", || async {
        let s = crate::admin::status(&stack).await?;
        let reason = s["reason"].as_str().unwrap_or_default();
        Ok(if s["mode"] == "halted" || reason.starts_with("halted") {
            Check::Done(s)
        } else {
            Check::NotYet(s.to_string())
        })
    })
    .await?;
    let reason = s["reason"].as_str().unwrap_or_default();
    let hint = s["hint"].as_str().unwrap_or_default();
    ensure!(
        reason.contains("zone example.test. is both a [[zone]] of")
            && hint.contains("pg2dns.zones"),
        "the halt names the zone and says how to fix it: {s}"
    );
    Ok(())
}

/// The local ports of `pid`'s established TCP connections to `port`
/// (read from /proc: which socket inodes the process holds, and where
/// each goes).
fn connections_to(pid: u32, port: u16) -> Result<std::collections::BTreeSet<u16>> {
    let mut inodes = std::collections::HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).context("listing pg2dns's fds")? {
        if let Ok(target) = std::fs::read_link(fd?.path()) {
            if let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
            {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let port_of = |a: &str| {
        a.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    let mut out = std::collections::BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st ... inode (10th field)
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "01" || !inodes.contains(f[9]) {
                continue;
            }
            if port_of(f[2]) == Some(port) {
                out.extend(port_of(f[1]));
            }
        }
    }
    Ok(out)
}

/// A `[[server]]` entry for `address` with one connection, never closed for
/// idleness during a test: the same local port later is the same connection.
fn one_connection_server(address: &str) -> String {
    format!("\n[[server]]\naddress = \"{address}\"\nconnections = 1\nidle_close_ms = 3600000\n")
}

/// Runs pg2dns with one connection to the server at `addr` (`port`), streams
/// a record into each zone, and returns the service with that connection's
/// local port once it is the only one.
async fn streaming_over_one_connection(
    stack: &Stack,
    addr: &str,
    port: u16,
) -> Result<(crate::harness::Pg2dns, std::collections::BTreeSet<u16>)> {
    let config = std::fs::read_to_string(stack.config_path())?;
    std::fs::write(
        stack.config_path(),
        format!("{config}{}", one_connection_server(addr)),
    )?;
    let run = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('www.example.test.', 300, 'A', '192.0.2.10');
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('10.2.0.192.in-addr.arpa.', 300, 'PTR', 'www.example.test.')",
        )
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    let pid = run.pid();
    let before = wait_until(DNS_DEADLINE, "the server's one connection", || async {
        let c = connections_to(pid, port)?;
        Ok(if c.len() == 1 {
            Check::Done(c)
        } else {
            Check::NotYet(format!("{c:?}"))
        })
    })
    .await?;
    Ok((run, before))
}

/// The BIND server's address (`host:port`) as the config writes it, and
/// its port.
fn bind_address_and_port(stack: &Stack) -> Result<(String, u16)> {
    let addr = stack.server(Primary::Bind)?.addr();
    let port: u16 = addr
        .rsplit(':')
        .next()
        .context("the server's address has a port")?
        .parse()?;
    Ok((addr, port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_moving_one_zone_keeps_its_servers_connection_and_the_other_zone_streaming(
) -> Result<()> {
    let stack = Stack::start("sighup-kept", Primary::Bind).await?;
    let (addr, port) = bind_address_and_port(&stack)?;
    // One connection to the server, never closed for idleness during the
    // test: the same local port after the SIGHUP is the same connection.
    let (run, before) = streaming_over_one_connection(&stack, &addr, port).await?;
    let pid = run.pid();
    // The reverse zone's primary written another way (the same BIND, but
    // another server to pg2dns): it moves to a new server task and its
    // connection; the forward zone stays on the kept one.
    let config = std::fs::read_to_string(stack.config_path())?;
    let from = format!("name = \"{REVERSE}\"\nprimary = \"{addr}\"");
    ensure!(
        config.contains(&from),
        "the config lists {REVERSE} as expected:\n{config}"
    );
    let moved = format!("localhost:{port}");
    std::fs::write(
        stack.config_path(),
        format!(
            "{}{}",
            config.replace(
                &from,
                &format!("name = \"{REVERSE}\"\nprimary = \"{moved}\""),
            ),
            one_connection_server(&moved)
        ),
    )?;
    crate::harness::signal(pid, "HUP")?;
    // The reloaded session first: a change streamed before it would still
    // go to the old server task, over the kept connection.
    wait_until(DNS_DEADLINE, "the reloaded session", || async {
        Ok(if run.log().contains("kept=1 started=1 dropped=0") {
            Check::Done(())
        } else {
            Check::NotYet(run.log_tail(5))
        })
    })
    .await?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('www2.example.test.', 300, 'A', '192.0.2.11');
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('11.2.0.192.in-addr.arpa.', 300, 'PTR', 'www2.example.test.')",
        )
        .await?;
    // The forward zone's new record went over the kept connection (its
    // server has only that one).
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    wait_until(
        DNS_DEADLINE,
        "the server's connection kept, the moved zone's server's new",
        || async {
            let c = connections_to(pid, port)?;
            Ok(if c.len() == 2 && before.is_subset(&c) {
                Check::Done(c)
            } else {
                Check::NotYet(format!("before {before:?}, now {c:?}"))
            })
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_renumbering_the_zones_keeps_the_connection_and_acknowledges_under_the_new_numbers(
) -> Result<()> {
    let stack = Stack::start("sighup-renumbered", Primary::Bind).await?;
    let (addr, port) = bind_address_and_port(&stack)?;
    // The configuration as the stack wrote it, before the server entry.
    let config = std::fs::read_to_string(stack.config_path())?;
    let (run, before) = streaming_over_one_connection(&stack, &addr, port).await?;
    let pid = run.pid();
    // The same zones in the other order: each is numbered differently in
    // the next session, on the same server task.
    let parts: Vec<&str> = config.split("\n[[zone]]\n").collect();
    ensure!(
        parts.len() == 3 && parts[1].contains(FORWARD) && parts[2].contains(REVERSE),
        "the config lists {FORWARD} then {REVERSE}:\n{config}"
    );
    std::fs::write(
        stack.config_path(),
        format!(
            "{}\n[[zone]]\n{}\n[[zone]]\n{}{}",
            parts[0],
            parts[2].trim_end(),
            parts[1],
            one_connection_server(&addr)
        ),
    )?;
    crate::harness::signal(pid, "HUP")?;
    wait_until(DNS_DEADLINE, "the reloaded session", || async {
        Ok(if run.log().contains("kept=1 started=0 dropped=0") {
            Check::Done(())
        } else {
            Check::NotYet(run.log_tail(5))
        })
    })
    .await?;
    // A change in one zone only (once second, now first): were its
    // acknowledgement reported under its old number, the slot would never
    // confirm it.
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('11.2.0.192.in-addr.arpa.', 300, 'PTR', 'www2.example.test.')",
        )
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    let target = stack.current_wal_lsn().await?;
    wait_until(
        DNS_DEADLINE,
        &format!("the slot confirms {target}"),
        || async {
            let confirmed = stack.confirmed_flush_lsn().await?;
            Ok(if confirmed >= target {
                Check::Done(())
            } else {
                Check::NotYet(format!("confirmed {confirmed}"))
            })
        },
    )
    .await?;
    let after = connections_to(pid, port)?;
    ensure!(
        after == before,
        "the server's connection is the same after the SIGHUP: before {before:?}, after {after:?}"
    );
    Ok(())
}
