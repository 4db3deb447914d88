//! `pg2dns run` on pg2dns_plugin's protobuf format (`[database] plugin =
//! "pg2dns"`, docs/plugin.md) keeps pgoutput's promises: the same random
//! workload, with pg2dns killed twice while it streams, ends with the same
//! DNS on both plugins, equal to the table; a slot of the other plugin is
//! refused by name, and switching plugins is a slot re-created by setup.
//!
//! Needs the extension installed into the PostgreSQL the harness runs
//! (`pg2dns_install_plugin` in scripts/lib/install.sh), like `plugin::`.

use anyhow::{ensure, Context, Result};

use crate::harness::pg2dns;
use crate::harness::stack::{ZoneRecords, FORWARD, SLOT};
use crate::harness::{wait_until, Check, Primary, Stack, DNS_DEADLINE, RECOVERY_DEADLINE};

/// The decoding plugin's library.
const PLUGIN: &str = "pg2dns_plugin";

/// Lets roles use the plugin (Debian's PostgreSQL 15.20+ only lets them use
/// the output plugins listed in `output_plugin_libraries`, superusers too),
/// as docs/plugin.md says, and waits until the server has read it.
async fn allow_plugin(stack: &Stack) -> Result<()> {
    stack
        .exec(&format!(
            "ALTER SYSTEM SET output_plugin_libraries = pgoutput, test_decoding, {PLUGIN}"
        ))
        .await?;
    stack.exec("SELECT pg_reload_conf()").await?;
    wait_until(DNS_DEADLINE, "the server allows the plugin", || async {
        let value: String = stack
            .db
            .query_one("SHOW output_plugin_libraries", &[])
            .await?
            .get(0);
        Ok(if value.split(',').any(|l| l.trim() == PLUGIN) {
            Check::Done(())
        } else {
            Check::NotYet(value)
        })
    })
    .await
}

/// Puts `plugin = "…"` into the config's `[database]` table.
fn set_plugin(stack: &Stack, plugin: &str) -> Result<()> {
    let path = stack.config_path();
    let text = std::fs::read_to_string(path).context("reading the pg2dns config")?;
    let anchor = format!("publication = \"{SLOT}\"\n");
    ensure!(text.contains(&anchor), "the config has no publication line");
    let text = text.replacen(&anchor, &format!("{anchor}plugin = \"{plugin}\"\n"), 1);
    std::fs::write(path, text).context("writing the pg2dns config")
}

/// `pg_replication_slots.plugin` of pg2dns's slot.
async fn slot_plugin(stack: &Stack) -> Result<String> {
    Ok(stack
        .db
        .query_one(
            "SELECT plugin::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&SLOT],
        )
        .await
        .context("reading the slot's plugin")?
        .get(0))
}

/// A stack whose slot is created by `pg2dns setup` with `plugin` (the
/// `[database] plugin` value).
async fn stack_on(label: &str, plugin: &str) -> Result<Stack> {
    let stack = Stack::start_before_setup(label, Primary::Bind).await?;
    if plugin != "pgoutput" {
        allow_plugin(&stack).await?;
        set_plugin(&stack, plugin)?;
    }
    stack.setup().await?;
    let want = if plugin == "pgoutput" {
        "pgoutput"
    } else {
        PLUGIN
    };
    let got = slot_plugin(&stack).await?;
    ensure!(got == want, "setup created the slot with {got}, not {want}");
    Ok(stack)
}

/// A small deterministic generator (the same workload on both plugins).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// The workload's transactions: inserts, rdata and TTL updates, deletes,
/// PTRs, TXT with `\DDD` escapes (also in owners) and UTF-8 bytes, owners
/// in mixed case, and one 2,000-row transaction in the middle.
fn workload(seed: u64) -> Vec<String> {
    let mut rng = Lcg(seed);
    let mut txns = Vec::new();
    for t in 0..160u64 {
        let mut sql = String::from("BEGIN;");
        if t == 80 {
            sql.push_str(
                "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) \
                 SELECT 'bulk' || g || '.Example.Test.', 600, 'AAAA', '2001:db8::' || to_hex(g) \
                 FROM generate_series(1, 2000) g;",
            );
        }
        for k in 0..=rng.next(5) {
            let n = rng.next(60);
            let host = if n.is_multiple_of(2) {
                format!("h{n}.example.test.")
            } else {
                format!("Mixed{n}.EXAMPLE.test.")
            };
            match rng.next(7) {
                // An RRset's TTL is its rows' smallest: a new row takes
                // the one its RRset has, so that the table says one TTL.
                0 | 1 => sql.push_str(&format!(
                    "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) SELECT '{host}', \
                     coalesce((SELECT min(ttl) FROM pg2dns.rr WHERE lower(owner) = lower('{host}') AND type = 'A'), {}), \
                     'A', '10.{n}.{}.{k}';",
                    300 + rng.next(3) * 60,
                    t % 256,
                )),
                2 => sql.push_str(&format!(
                    "UPDATE pg2dns.rr SET rdata = '172.' || (16 + id % 16) || '.' || (id / 16 % 256) || '.{}' \
                     WHERE lower(owner) = lower('{host}') AND type = 'A';",
                    t % 256
                )),
                3 => sql.push_str(&format!(
                    "UPDATE pg2dns.rr SET ttl = {} WHERE lower(owner) = lower('{host}');",
                    60 + rng.next(10) * 30
                )),
                4 => sql.push_str(&format!(
                    "DELETE FROM pg2dns.rr WHERE lower(owner) IN (lower('{host}'), 'sp\\032ace{n}.example.test.');"
                )),
                5 => sql.push_str(&format!(
                    "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('{}.2.0.192.in-addr.arpa.', 300, 'PTR', '{host}');",
                    rng.next(256)
                )),
                _ => sql.push_str(&format!(
                    "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('sp\\032ace{n}.example.test.', 300, 'TXT', '\"caf\\195\\169 {t}.{k}\" \"semi\\;colon\" \"Ünï\"');"
                )),
            }
        }
        sql.push_str("COMMIT;");
        txns.push(sql);
    }
    txns
}

/// Runs the workload against `stack` while pg2dns streams, killing it
/// (SIGKILL) twice, then restarts it and waits until DNS equals the
/// table. Returns DNS and the table's records.
async fn run_workload_with_kills(stack: &Stack) -> Result<(ZoneRecords, ZoneRecords)> {
    let mut pg2dns = stack.run()?;
    let writer_db = stack.pg.connect().await?;
    let txns = workload(22);
    // A transaction the table refuses (a duplicate record) is rolled back
    // and the writer goes on: the same ones on both plugins.
    let writer = tokio::spawn(async move {
        let mut refused = Vec::new();
        for (i, sql) in txns.iter().enumerate() {
            if writer_db.batch_execute(sql).await.is_err() {
                writer_db.batch_execute("ROLLBACK").await?;
                refused.push(i);
            }
        }
        anyhow::Ok(refused)
    });
    for (kill, at_least) in [(1, 20usize), (2, 1000)] {
        wait_until(RECOVERY_DEADLINE, "pg2dns applies the stream", || async {
            let applied = stack.axfr(FORWARD).await?.len();
            Ok(if applied >= at_least {
                Check::Done(())
            } else {
                Check::NotYet(format!("{applied} records before kill {kill}"))
            })
        })
        .await?;
        pg2dns.kill()?;
        pg2dns = stack.run()?;
    }
    let refused = writer.await.context("the writer task")??;
    ensure!(
        refused.len() < 40,
        "most transactions commit: {refused:?} refused"
    );
    let dns = stack
        .wait_until_dns_matches_table(RECOVERY_DEADLINE)
        .await?;
    let table = stack.expected(&stack.table().await?);
    pg2dns.assert_running()?;
    Ok((dns, table))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_workload_with_kills_ends_with_the_same_dns_on_protobuf_and_pgoutput_equal_to_the_table(
) -> Result<()> {
    let pgoutput = stack_on("proto-same-pgoutput", "pgoutput").await?;
    let (dns_pgoutput, table_pgoutput) = run_workload_with_kills(&pgoutput).await?;
    drop(pgoutput);
    let protobuf = stack_on("proto-same-protobuf", "pg2dns").await?;
    let (dns_protobuf, table_protobuf) = run_workload_with_kills(&protobuf).await?;
    ensure!(
        table_protobuf == table_pgoutput,
        "the workload is deterministic: both tables hold the same records"
    );
    ensure!(
        dns_protobuf[FORWARD].len() > 2000,
        "the workload's records are in DNS: {} in {FORWARD}",
        dns_protobuf[FORWARD].len()
    );
    ensure!(
        dns_protobuf == dns_pgoutput,
        "protobuf and pgoutput publish the same DNS: {}",
        crate::harness::stack::difference(&dns_pgoutput, &dns_protobuf)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_of_the_other_plugin_is_refused_naming_it_and_setup_recreate_slot_switches(
) -> Result<()> {
    let stack = stack_on("proto-switch", "pgoutput").await?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('before.example.test.', 300, 'A', '192.0.2.1')")
        .await?;
    allow_plugin(&stack).await?;
    set_plugin(&stack, "pg2dns")?;

    // setup refuses, naming the slot, its plugin and the fix.
    let output = pg2dns::command_with(&["setup"], stack.config_path(), &[]).await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(!output.status.success(), "setup refused: {text}");
    for part in [
        "replication slot \"pg2dns\" decodes with output plugin \"pgoutput\"",
        "[database] plugin = \"pg2dns\" needs \"pg2dns_plugin\"",
        "pg_drop_replication_slot('pg2dns')",
        "pg2dns setup --recreate-slot",
    ] {
        ensure!(
            text.contains(part),
            "setup's refusal names {part:?}: {text}"
        );
    }
    // So does run, and it sends nothing.
    let mut run = stack.run()?;
    run.wait_exit(RECOVERY_DEADLINE).await?;
    let log = run.log();
    ensure!(
        log.contains("decodes with output plugin \\\"pgoutput\\\"")
            || log.contains("decodes with output plugin \"pgoutput\""),
        "run halts naming the slot's plugin: {log}"
    );

    // The documented switch: drop the slot, setup --recreate-slot.
    stack
        .exec(&format!("SELECT pg_drop_replication_slot('{SLOT}')"))
        .await?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('between.example.test.', 300, 'A', '192.0.2.2')")
        .await?;
    let output =
        pg2dns::command_with(&["setup", "--recreate-slot"], stack.config_path(), &[]).await?;
    ensure!(
        output.status.success(),
        "setup --recreate-slot: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        slot_plugin(&stack).await? == PLUGIN,
        "the new slot is the plugin's"
    );
    let mut pg2dns = stack.run()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('after.example.test.', 300, 'A', '192.0.2.3')")
        .await?;
    stack
        .exec("DELETE FROM pg2dns.rr WHERE owner = 'before.example.test.'")
        .await?;
    let dns = stack
        .wait_until_dns_matches_table(RECOVERY_DEADLINE)
        .await?;
    let owners: Vec<String> = dns[FORWARD].iter().map(|r| r.to_string()).collect();
    ensure!(
        owners.iter().any(|r| r.starts_with("between."))
            && owners.iter().any(|r| r.starts_with("after.")),
        "the first load and the stream on the new slot are in DNS: {owners:?}"
    );
    pg2dns.assert_running()
}
