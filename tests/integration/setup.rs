//! `pg2dns setup`: a first deployment that cannot surprise. `--dry-run`
//! shows the first load's plan and changes nothing (and `reconcile` works,
//! read-only, before setup); the first load deletes records pg2dns never
//! published only with `--force`; a zone that cannot be loaded stops setup
//! with nothing changed; a source table without replica identity is refused
//! before the publication is touched; a lost slot is replaced by
//! `setup --recreate-slot`, which brings DNS equal to the tables.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::harness::wait::{wait_until, Check};
use crate::harness::{Primary, Record, Stack, DNS_DEADLINE};

/// stdout and stderr of a run, for messages.
fn printed(output: &Output) -> String {
    format!(
        "{}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `pg2dns ARGS… -c CONFIG`, whatever its exit status.
async fn pg2dns(args: &[&str], config: &std::path::Path) -> Result<Output> {
    crate::harness::pg2dns::command_with(args, config, &[]).await
}

const HOSTS: &str = r#"
[[source]]
table = "public.hosts"
owner_column = "name"
address_column = "address"
ttl = 300
"#;

/// A database `fresh` of the stack's cluster that pg2dns never touched, with
/// a `hosts` table of two rows, and a config for an instance on it (slot
/// and publication `fresh`, the stack's zones, the hosts source).
async fn fresh_database(stack: &Stack) -> Result<(PathBuf, tokio_postgres::Client)> {
    stack.exec("CREATE DATABASE fresh").await?;
    let url = format!(
        "{}/fresh",
        stack
            .pg
            .url()
            .strip_suffix("/postgres")
            .context("the cluster's URL names database postgres")?
    );
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    db.batch_execute(
        "CREATE TABLE hosts (id serial PRIMARY KEY, name text, address inet);
         INSERT INTO hosts (name, address) VALUES
           ('host1.example.test', '192.0.2.31'), ('host2.example.test', '192.0.2.32');",
    )
    .await?;
    let text = std::fs::read_to_string(stack.config_path())?
        .replacen(&stack.pg.url(), &url, 1)
        .replace("\"pg2dns\"", "\"fresh\"");
    let path = stack.dir().join("fresh.toml");
    std::fs::write(&path, format!("{text}\n{HOSTS}"))?;
    Ok((path, db))
}

/// Whether the fresh database has the pg2dns schema, the publication, the
/// slot: nothing of it before setup.
async fn installed(stack: &Stack, db: &tokio_postgres::Client) -> Result<(bool, bool, bool)> {
    let schema: bool = db
        .query_one("SELECT to_regnamespace('pg2dns') IS NOT NULL", &[])
        .await?
        .get(0);
    let publication: bool = db
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'fresh')",
            &[],
        )
        .await?
        .get(0);
    let slot: bool = stack
        .db
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = 'fresh')",
            &[],
        )
        .await?
        .get(0);
    Ok((schema, publication, slot))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_setup_previews_its_plan_and_deletes_hand_made_records_only_with_force(
) -> Result<()> {
    let stack = Stack::start("setup-first", Primary::Bind).await?;
    let (config, db) = fresh_database(&stack).await?;
    // A record made by hand, which no row holds.
    stack
        .server(Primary::Bind)?
        .nsupdate("update add handmade.example.test. 300 A 192.0.2.77")
        .await?;
    let handmade = Record::new("handmade.example.test.", 300, "A", "192.0.2.77");
    let host1 = Record::new("host1.example.test.", 300, "A", "192.0.2.31");
    let host2 = Record::new("host2.example.test.", 300, "A", "192.0.2.32");
    let before = stack.axfr("example.test.").await?;
    ensure!(before == vec![handmade.clone()], "{before:?}");

    // reconcile before setup: a read-only report, and --apply says what to run.
    let report = pg2dns(&["reconcile", "--json"], &config).await?;
    let json: serde_json::Value =
        serde_json::from_slice(&report.stdout).with_context(|| printed(&report))?;
    ensure!(
        report.status.code() == Some(1),
        "differences: {}",
        printed(&report)
    );
    let forward = json["zones"]
        .as_array()
        .and_then(|z| z.iter().find(|z| z["zone"] == "example.test."))
        .context("no forward zone in the report")?;
    ensure!(
        forward["missing"].as_array().map(Vec::len) == Some(2)
            && forward["extra"].as_array().map(Vec::len) == Some(1),
        "{forward:#}"
    );
    let apply = pg2dns(&["reconcile", "--apply"], &config).await?;
    ensure!(
        apply.status.code() == Some(2) && printed(&apply).contains("run `pg2dns setup` first"),
        "{}",
        printed(&apply)
    );

    // The dry run: the plan per zone, nothing installed, DNS untouched.
    let dry = pg2dns(&["setup", "--dry-run"], &config).await?;
    let text = printed(&dry);
    for needle in [
        "+ host1.example.test. 300 IN A 192.0.2.31",
        "+ host2.example.test. 300 IN A 192.0.2.32",
        "- handmade.example.test. 300 IN A 192.0.2.77",
        "refused to delete 1 record(s)",
        "setup --force",
        "would create slot fresh",
    ] {
        ensure!(
            text.contains(needle),
            "the dry run shows {needle:?}:\n{text}"
        );
    }
    ensure!(dry.status.code() == Some(2), "setup would refuse: {text}");
    ensure!(
        installed(&stack, &db).await? == (false, false, false),
        "the dry run installed something"
    );
    ensure!(
        stack.axfr("example.test.").await? == before,
        "the dry run changed DNS"
    );

    // setup without --force refuses, changing nothing.
    let refused = pg2dns(&["setup"], &config).await?;
    let text = printed(&refused);
    ensure!(
        refused.status.code() == Some(1)
            && text.contains("handmade.example.test.")
            && text.contains("nothing was changed"),
        "{text}"
    );
    ensure!(
        installed(&stack, &db).await? == (false, false, false),
        "a refused setup installed something"
    );
    ensure!(
        stack.axfr("example.test.").await? == before,
        "a refused setup changed DNS"
    );

    // The dry run with --force would go through.
    let dry = pg2dns(&["setup", "--dry-run", "--force"], &config).await?;
    ensure!(dry.status.code() == Some(0), "{}", printed(&dry));

    // With --force: the tables are in DNS, the hand-made record is gone.
    let done = pg2dns(&["setup", "--force"], &config).await?;
    ensure!(done.status.code() == Some(0), "{}", printed(&done));
    ensure!(installed(&stack, &db).await? == (true, true, true));
    let after = stack.axfr("example.test.").await?;
    ensure!(after == vec![host1, host2], "{after:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_the_server_does_not_serve_stops_setup_naming_it_with_nothing_changed() -> Result<()>
{
    let stack = Stack::start("setup-unserved", Primary::Bind).await?;
    let (config, db) = fresh_database(&stack).await?;
    let server = stack.server(Primary::Bind)?;
    let mut text = std::fs::read_to_string(&config)?;
    text.push_str(&format!(
        "\n[[zone]]\nname = \"unserved.test.\"\nprimary = \"{}\"\ntsig_key_file = \"{}\"\n",
        server.addr(),
        server.key_file().display()
    ));
    // [[zone]] tables go before [[source]] ones only by convention: TOML
    // arrays of tables may come in any order.
    std::fs::write(&config, text)?;
    let output = pg2dns(&["setup"], &config).await?;
    let text = printed(&output);
    ensure!(
        output.status.code() == Some(1)
            && text.contains("zone unserved.test. cannot be loaded")
            && text.contains("nothing was changed"),
        "{text}"
    );
    ensure!(
        installed(&stack, &db).await? == (false, false, false),
        "setup installed something"
    );
    ensure!(
        stack.axfr("example.test.").await?.is_empty(),
        "setup changed DNS"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_refuses_a_source_table_without_replica_identity_before_touching_the_publication(
) -> Result<()> {
    let stack = Stack::start("setup-identity", Primary::Bind).await?;
    stack
        .exec(
            // A unique key (setup needs one) but no primary key: REPLICA
            // IDENTITY DEFAULT then identifies nothing.
            "CREATE TABLE nokey (name text NOT NULL UNIQUE, address inet);
             INSERT INTO nokey VALUES ('a.example.test', '192.0.2.41');",
        )
        .await?;
    stack.append_config(
        "[[source]]\ntable = \"public.nokey\"\nkey = [\"name\"]\nowner_column = \"name\"\naddress_column = \"address\"\nttl = 300\n",
    )?;
    let published = || async {
        let n: i64 = stack
            .db
            .query_one(
                "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'pg2dns'",
                &[],
            )
            .await?
            .get(0);
        anyhow::Ok(n)
    };
    let before = published().await?;
    let output = pg2dns(&["setup"], stack.config_path()).await?;
    let text = printed(&output);
    ensure!(
        output.status.code() == Some(1)
            && text.contains("\"public\".\"nokey\"")
            && text.contains("ALTER TABLE \"public\".\"nokey\" REPLICA IDENTITY FULL"),
        "{text}"
    );
    ensure!(published().await? == before, "the publication changed");
    // The application's writes still work.
    stack
        .exec("UPDATE nokey SET address = '192.0.2.42'; DELETE FROM nokey WHERE false")
        .await?;
    // Once the table has an identity, setup adds it.
    stack
        .exec("ALTER TABLE public.nokey REPLICA IDENTITY FULL")
        .await?;
    let output = pg2dns(&["setup"], stack.config_path()).await?;
    ensure!(output.status.success(), "{}", printed(&output));
    ensure!(published().await? == before + 1, "the table was not added");
    stack
        .exec("UPDATE nokey SET address = '192.0.2.43'")
        .await?;
    Ok(())
}

/// The slot's wal_status.
async fn wal_status(stack: &Stack) -> Result<String> {
    Ok(stack
        .db
        .query_one(
            "SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = 'pg2dns'",
            &[],
        )
        .await?
        .get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_is_replaced_by_setup_recreate_slot_and_dns_ends_equal_to_the_table(
) -> Result<()> {
    let stack = Stack::start("setup-lost-slot", Primary::Bind).await?;
    let mut run = stack.run_as_service()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('keep.example.test.', 300, 'A', '192.0.2.1'),
               ('gone.example.test.', 300, 'A', '192.0.2.2'),
               ('moved.example.test.', 300, 'A', '192.0.2.3')",
        )
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    run.terminate().await?;
    // While the service is stopped: changes, then the slot loses the WAL
    // they are in.
    stack
        .exec(
            "DELETE FROM pg2dns.rr WHERE owner = 'gone.example.test.';
             UPDATE pg2dns.rr SET rdata = '192.0.2.33' WHERE owner = 'moved.example.test.';
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('new.example.test.', 300, 'A', '192.0.2.4');
             CREATE TABLE filler (x text)",
        )
        .await?;
    stack
        .exec("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        .await?;
    stack.exec("SELECT pg_reload_conf()").await?;
    wait_until(Duration::from_secs(120), "the slot is lost", || async {
        stack
            .exec("INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 100); SELECT pg_switch_wal(); CHECKPOINT")
            .await?;
        let status = wal_status(&stack).await?;
        Ok(if status == "lost" {
            Check::Done(())
        } else {
            Check::NotYet(status)
        })
    })
    .await?;
    // A plain setup says what to run; the service halts naming it.
    let plain = pg2dns(&["setup"], stack.config_path()).await?;
    ensure!(
        plain.status.code() == Some(1) && printed(&plain).contains("--recreate-slot"),
        "{}",
        printed(&plain)
    );
    let run = stack.run_as_service()?;
    wait_until(
        DNS_DEADLINE,
        "the service halts naming --recreate-slot",
        || async {
            let row = stack
                .db
                .query_opt(
                    "SELECT mode, hint FROM pg2dns.mode WHERE slot = 'pg2dns'",
                    &[],
                )
                .await?;
            Ok(match row {
                Some(r)
                    if r.get::<_, String>(0) == "halted"
                        && r.get::<_, String>(1).contains("setup --recreate-slot") =>
                {
                    Check::Done(())
                }
                Some(r) => Check::NotYet(format!(
                    "{}: {}",
                    r.get::<_, String>(0),
                    r.get::<_, String>(1)
                )),
                None => Check::NotYet("no mode".into()),
            })
        },
    )
    .await
    .with_context(|| run.log_tail(20))?;
    // One command: a new slot, every zone in line at its point, the
    // halted service resumed.
    let recreated = pg2dns(&["setup", "--recreate-slot"], stack.config_path()).await?;
    let text = printed(&recreated);
    ensure!(
        recreated.status.code() == Some(0) && text.contains("replaced") && text.contains("resume"),
        "{text}"
    );
    ensure!(wal_status(&stack).await? != "lost");
    stack
        .wait_until_dns_matches_table(DNS_DEADLINE)
        .await
        .with_context(|| format!("{text}\n{}", run.log_tail(30)))?;
    // And it streams from the new slot.
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('later.example.test.', 300, 'A', '192.0.2.5')")
        .await?;
    stack
        .wait_until_dns_matches_table(DNS_DEADLINE)
        .await
        .with_context(|| run.log_tail(30))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_is_replaced_by_setup_recreate_slot_and_the_rows_changed_meanwhile_reach_dns(
) -> Result<()> {
    let stack = Stack::start("setup-dropped-slot", Primary::Bind).await?;
    let mut run = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('keep.example.test.', 300, 'A', '192.0.2.1'),
               ('gone.example.test.', 300, 'A', '192.0.2.2')",
        )
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    run.terminate().await?;
    wait_until(DNS_DEADLINE, "the slot is dropped", || async {
        match stack
            .db
            .execute("SELECT pg_drop_replication_slot('pg2dns')", &[])
            .await
        {
            Ok(_) => Ok(Check::Done(())),
            Err(e) if format!("{e:?}").contains("is active") => Ok(Check::NotYet(e.to_string())),
            Err(e) => Err(e).context("dropping the slot"),
        }
    })
    .await?;
    stack
        .exec(
            "DELETE FROM pg2dns.rr WHERE owner = 'gone.example.test.';
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('new.example.test.', 300, 'A', '192.0.2.4')",
        )
        .await?;
    // The preview shows what the load changes.
    let dry = pg2dns(
        &["setup", "--dry-run", "--recreate-slot"],
        stack.config_path(),
    )
    .await?;
    let text = printed(&dry);
    ensure!(
        dry.status.code() == Some(0)
            && text.contains("- gone.example.test.")
            && text.contains("+ new.example.test."),
        "{text}"
    );
    let recreated = pg2dns(&["setup", "--recreate-slot"], stack.config_path()).await?;
    ensure!(
        recreated.status.code() == Some(0),
        "{}",
        printed(&recreated)
    );
    // The load happened at setup, before any run.
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    // A usable slot of an instance in line is not replaced.
    let again = pg2dns(&["setup", "--recreate-slot"], stack.config_path()).await?;
    ensure!(
        again.status.code() == Some(1) && printed(&again).contains("can still be used"),
        "{}",
        printed(&again)
    );
    let run = stack.run()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('later.example.test.', 300, 'A', '192.0.2.5')")
        .await?;
    stack
        .wait_until_dns_matches_table(DNS_DEADLINE)
        .await
        .with_context(|| run.log_tail(30))?;
    Ok(())
}
