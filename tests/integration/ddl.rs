//! DDL a DBA may run on a source table while pg2dns streams or is stopped:
//! each ends in correct publishing, or in a halt that names the DDL and the
//! LSN, after which nothing committed since is lost (see the README's "DDL
//! on source tables" table).

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::harness::stack::{ZoneRecords, FORWARD, REVERSE, SLOT};
use crate::harness::{wait_until, Check, Primary, Record, Stack, DNS_DEADLINE};

const HOSTS: &str = r#"
[[source]]
table = "app.hosts"
owner_column = "name"
address_column = "address"
ttl = 300
"#;

fn forward(names: &[(&str, &str)]) -> ZoneRecords {
    let mut records: Vec<Record> = names
        .iter()
        .map(|(n, a)| Record::new(&format!("{n}.example.test."), 300, "A", a))
        .collect();
    records.sort();
    let mut out = ZoneRecords::new();
    out.insert(FORWARD.to_string(), records);
    out.insert(REVERSE.to_string(), Vec::new());
    out
}

/// A stack with `app.hosts` as a source, set up, one host published.
async fn hosts_stack(label: &str) -> Result<Stack> {
    let stack = Stack::start(label, Primary::Bind).await?;
    stack
        .exec(
            "CREATE SCHEMA app;
             CREATE TABLE app.hosts (id serial PRIMARY KEY, name text NOT NULL, address inet NOT NULL);",
        )
        .await?;
    stack.append_config(HOSTS)?;
    stack.setup().await?;
    Ok(stack)
}

/// `pg2dns status --json`.
async fn status(stack: &Stack) -> Result<serde_json::Value> {
    let out = stack.admin(&["status", "--json"]).await?;
    serde_json::from_slice(&out.stdout).context("status --json")
}

/// Waits until pg2dns says it is halted, and returns (reason, hint).
async fn halted(stack: &Stack) -> Result<(String, String)> {
    halted_within(stack, DNS_DEADLINE).await
}

/// [`halted`], for a halt that a periodic check finds (every 15 s, on the
/// next frame: a keepalive comes at least every 30 s when idle).
async fn halted_within(stack: &Stack, deadline: Duration) -> Result<(String, String)> {
    wait_until(deadline, "pg2dns to say it is halted", || async {
        let s = status(stack).await?;
        Ok(if s["mode"] == "halted" {
            Check::Done((
                s["reason"].as_str().unwrap_or_default().to_owned(),
                s["hint"].as_str().unwrap_or_default().to_owned(),
            ))
        } else {
            Check::NotYet(s.to_string())
        })
    })
    .await
}

/// Waits until pg2dns says it streams.
async fn running(stack: &Stack) -> Result<()> {
    wait_until(DNS_DEADLINE, "pg2dns to say it is running", || async {
        let s = status(stack).await?;
        Ok(if s["mode"] == "running" {
            Check::Done(())
        } else {
            Check::NotYet(s.to_string())
        })
    })
    .await
}

/// The slot still holds the transaction that inserted the row named
/// `name` into `table`: its confirmed position is not past its first change.
async fn slot_holds(stack: &Stack, table: &str, name: &str) -> Result<()> {
    let xid: String = stack
        .db
        .query_one(
            &format!("SELECT xmin::text FROM {table} WHERE name = $1"),
            &[&name],
        )
        .await?
        .get(0);
    let confirmed = stack.confirmed_flush_lsn().await?;
    let pending = stack.pending_transactions().await?;
    let ours = pending
        .iter()
        .find(|t| t.xid == xid)
        .with_context(|| format!("the slot no longer holds {name}'s transaction {xid}"))?;
    ensure!(
        confirmed <= ours.first_change,
        "confirmed_flush_lsn {confirmed} moved past the unapplied change at {}",
        ours.first_change
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_table_rename_of_a_source_table_halts_naming_it_and_loses_nothing_once_renamed_back(
) -> Result<()> {
    let (ddl, renamed, back) = (
        "ALTER TABLE app.hosts RENAME TO hosts_renamed",
        "app.hosts_renamed",
        "ALTER TABLE app.hosts_renamed RENAME TO hosts",
    );
    let stack = hosts_stack("ddl-rename-table").await?;
    let mut pg2dns = stack.run_as_service()?;
    stack
        .exec("INSERT INTO app.hosts (name, address) VALUES ('a.example.test', '192.0.2.1')")
        .await?;
    stack
        .wait_until_dns_equals(&forward(&[("a", "192.0.2.1")]), DNS_DEADLINE)
        .await?;

    stack.exec(ddl).await?;
    stack
        .exec(&format!(
            "INSERT INTO {renamed} (name, address) VALUES ('b.example.test', '192.0.2.2')"
        ))
        .await?;
    let (reason, hint) = halted(&stack).await?;
    ensure!(
        reason.contains("source app.hosts")
            && reason.contains(&format!("renamed to {renamed}"))
            && reason.contains("RENAME")
            && reason.contains("at LSN "),
        "the halt must name the source, its new name, the DDL and the LSN: {reason}"
    );
    ensure!(
        hint.contains("rename the table back") && hint.contains("pg2dns resume"),
        "the hint must say how to go on: {hint}"
    );
    slot_holds(&stack, renamed, "b.example.test").await?;
    ensure!(
        stack.dns().await? == forward(&[("a", "192.0.2.1")]),
        "nothing after the rename may be published while halted"
    );

    // Renamed back: the change made under the other name, and one made
    // after, are both published.
    stack.exec(back).await?;
    stack
        .exec("INSERT INTO app.hosts (name, address) VALUES ('c.example.test', '192.0.2.3')")
        .await?;
    let out = stack.admin(&["resume"]).await?;
    ensure!(out.status.success(), "resume: {out:?}");
    stack
        .wait_until_dns_equals(
            &forward(&[("a", "192.0.2.1"), ("b", "192.0.2.2"), ("c", "192.0.2.3")]),
            DNS_DEADLINE,
        )
        .await?;
    running(&stack).await?;
    pg2dns.assert_running()?;
    Ok(())
}

/// PostgreSQL sends a table's new schema name only in a new session (a
/// schema rename does not invalidate the Relation message it sent): the
/// change is published as the table's, and the next start halts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_schema_rename_of_a_source_schema_is_followed_then_halts_at_the_next_start_and_loses_nothing(
) -> Result<()> {
    let stack = hosts_stack("ddl-rename-schema").await?;
    let mut pg2dns = stack.run_as_service()?;
    stack
        .exec("INSERT INTO app.hosts (name, address) VALUES ('a.example.test', '192.0.2.1')")
        .await?;
    stack
        .wait_until_dns_equals(&forward(&[("a", "192.0.2.1")]), DNS_DEADLINE)
        .await?;
    stack
        .exec(
            "ALTER SCHEMA app RENAME TO app2;
             INSERT INTO app2.hosts (name, address) VALUES ('b.example.test', '192.0.2.2');",
        )
        .await?;
    stack
        .wait_until_dns_equals(
            &forward(&[("a", "192.0.2.1"), ("b", "192.0.2.2")]),
            DNS_DEADLINE,
        )
        .await?;
    pg2dns.kill()?;
    stack
        .exec("INSERT INTO app2.hosts (name, address) VALUES ('c.example.test', '192.0.2.3')")
        .await?;
    let mut pg2dns = stack.run_as_service()?;
    let (reason, hint) = halted(&stack).await?;
    ensure!(
        reason.contains("source app.hosts: its table does not exist")
            && reason.contains("app2.hosts"),
        "the halt must name the source and the table under its new name: {reason}"
    );
    ensure!(hint.contains("ALTER SCHEMA"), "{hint}");
    slot_holds(&stack, "app2.hosts", "c.example.test").await?;
    stack.exec("ALTER SCHEMA app2 RENAME TO app").await?;
    stack.admin(&["resume"]).await?;
    stack
        .wait_until_dns_equals(
            &forward(&[("a", "192.0.2.1"), ("b", "192.0.2.2"), ("c", "192.0.2.3")]),
            DNS_DEADLINE,
        )
        .await?;
    running(&stack).await?;
    pg2dns.assert_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_table_renamed_while_pg2dns_is_stopped_halts_at_start_naming_the_new_name(
) -> Result<()> {
    let stack = hosts_stack("ddl-rename-stopped").await?;
    stack
        .exec(
            "ALTER TABLE app.hosts RENAME TO hosts_renamed;
             INSERT INTO app.hosts_renamed (name, address) VALUES ('b.example.test', '192.0.2.2');",
        )
        .await?;
    let mut pg2dns = stack.run_as_service()?;
    let (reason, hint) = halted(&stack).await?;
    ensure!(
        reason.contains("source app.hosts: its table does not exist")
            && reason.contains("app.hosts_renamed"),
        "the halt must name the source and the unmapped table of the publication: {reason}"
    );
    ensure!(hint.contains("rename the table back"), "{hint}");
    stack
        .exec("ALTER TABLE app.hosts_renamed RENAME TO hosts")
        .await?;
    stack.admin(&["resume"]).await?;
    stack
        .wait_until_dns_equals(&forward(&[("b", "192.0.2.2")]), DNS_DEADLINE)
        .await?;
    pg2dns.assert_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_publication_drop_table_of_a_source_halts_at_the_next_start_naming_the_publication(
) -> Result<()> {
    let stack = hosts_stack("ddl-publication-drop").await?;
    stack
        .exec(&format!(
            "ALTER PUBLICATION \"{SLOT}\" DROP TABLE app.hosts"
        ))
        .await?;
    let mut pg2dns = stack.run_as_service()?;
    let (reason, hint) = halted(&stack).await?;
    ensure!(
        reason.contains("source app.hosts")
            && reason.contains(&format!("not in publication {SLOT}")),
        "the halt must name the source and the publication: {reason}"
    );
    ensure!(
        hint.contains("ALTER PUBLICATION") && hint.contains("reconcile --apply"),
        "{hint}"
    );
    stack
        .exec(&format!("ALTER PUBLICATION \"{SLOT}\" ADD TABLE app.hosts"))
        .await?;
    stack.admin(&["resume"]).await?;
    running(&stack).await?;
    stack
        .exec("INSERT INTO app.hosts (name, address) VALUES ('a.example.test', '192.0.2.1')")
        .await?;
    stack
        .wait_until_dns_equals(&forward(&[("a", "192.0.2.1")]), DNS_DEADLINE)
        .await?;
    pg2dns.assert_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_to_a_published_table_no_source_maps_halts_until_it_leaves_the_publication(
) -> Result<()> {
    let stack = hosts_stack("ddl-unmapped").await?;
    let mut pg2dns = stack.run_as_service()?;
    running(&stack).await?;
    stack
        .exec(&format!(
            "CREATE TABLE app.other (id serial PRIMARY KEY, name text);
             ALTER PUBLICATION \"{SLOT}\" ADD TABLE app.other;
             INSERT INTO app.other (name) VALUES ('x');"
        ))
        .await?;
    let (reason, _) = halted(&stack).await?;
    ensure!(
        reason.contains("table app.other is in the publication but no source maps it")
            && reason.contains("at LSN "),
        "{reason}"
    );
    // Taken out of the publication: its past change is passed over, and
    // the stream goes on.
    stack
        .exec(&format!(
            "ALTER PUBLICATION \"{SLOT}\" DROP TABLE app.other;
             INSERT INTO app.hosts (name, address) VALUES ('a.example.test', '192.0.2.1');"
        ))
        .await?;
    stack.admin(&["resume"]).await?;
    stack
        .wait_until_dns_equals(&forward(&[("a", "192.0.2.1")]), DNS_DEADLINE)
        .await?;
    pg2dns.assert_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_table_dropped_and_created_again_halts_then_follows_the_new_table() -> Result<()> {
    let stack = hosts_stack("ddl-recreate").await?;
    let mut pg2dns = stack.run_as_service()?;
    stack
        .exec("INSERT INTO app.hosts (name, address) VALUES ('a.example.test', '192.0.2.1')")
        .await?;
    stack
        .wait_until_dns_equals(&forward(&[("a", "192.0.2.1")]), DNS_DEADLINE)
        .await?;
    stack
        .exec(&format!(
            "DROP TABLE app.hosts;
             CREATE TABLE app.hosts (id serial PRIMARY KEY, name text NOT NULL, address inet NOT NULL);
             ALTER PUBLICATION \"{SLOT}\" ADD TABLE app.hosts;
             INSERT INTO app.hosts (id, name, address) VALUES (2, 'b.example.test', '192.0.2.2');"
        ))
        .await?;
    let (reason, hint) = halted(&stack).await?;
    ensure!(
        reason.contains("source app.hosts: its table was dropped and created again")
            && reason.contains("at LSN "),
        "{reason}"
    );
    ensure!(hint.contains("reconcile --apply"), "{hint}");
    slot_holds(&stack, "app.hosts", "b.example.test").await?;
    stack.admin(&["resume"]).await?;
    stack
        .wait_until_dns_equals(
            &forward(&[("a", "192.0.2.1"), ("b", "192.0.2.2")]),
            DNS_DEADLINE,
        )
        .await?;
    // The dropped row's record goes with a repair.
    let out = stack.reconcile(&["--apply"], &[]).await?;
    ensure!(out.status.success(), "reconcile --apply: {out:?}");
    stack
        .wait_until_dns_equals(&forward(&[("b", "192.0.2.2")]), DNS_DEADLINE)
        .await?;
    pg2dns.assert_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_column_the_source_reads_halts_naming_the_column() -> Result<()> {
    let stack = hosts_stack("ddl-rename-column").await?;
    let _pg2dns = stack.run_as_service()?;
    stack
        .exec(
            "ALTER TABLE app.hosts RENAME COLUMN address TO addr;
             INSERT INTO app.hosts (name, addr) VALUES ('b.example.test', '192.0.2.2');",
        )
        .await?;
    let (reason, _) = halted(&stack).await?;
    ensure!(
        reason.contains("source app.hosts") && reason.contains("\"address\""),
        "the halt must name the source and the column: {reason}"
    );
    slot_holds(&stack, "app.hosts", "b.example.test").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identity_full_and_back_keep_publishing() -> Result<()> {
    let stack = hosts_stack("ddl-identity").await?;
    let mut pg2dns = stack.run_as_service()?;
    stack
        .exec(
            "ALTER TABLE app.hosts REPLICA IDENTITY FULL;
             INSERT INTO app.hosts (name, address) VALUES ('a.example.test', '192.0.2.1'), ('b.example.test', '192.0.2.2');
             UPDATE app.hosts SET address = '192.0.2.9' WHERE name = 'a.example.test';
             ALTER TABLE app.hosts REPLICA IDENTITY DEFAULT;
             DELETE FROM app.hosts WHERE name = 'b.example.test';",
        )
        .await?;
    stack
        .wait_until_dns_equals(&forward(&[("a", "192.0.2.9")]), DNS_DEADLINE)
        .await?;
    pg2dns.assert_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_publication_drop_table_while_streaming_halts_naming_the_publication() -> Result<()> {
    let stack = hosts_stack("ddl-publication-drop-live").await?;
    let _pg2dns = stack.run_as_service()?;
    running(&stack).await?;
    stack
        .exec(&format!(
            "ALTER PUBLICATION \"{SLOT}\" DROP TABLE app.hosts;
             INSERT INTO app.hosts (name, address) VALUES ('a.example.test', '192.0.2.1');"
        ))
        .await?;
    let (reason, hint) = halted_within(&stack, Duration::from_secs(90)).await?;
    ensure!(
        reason.contains("source app.hosts")
            && reason.contains(&format!("not in publication {SLOT}")),
        "{reason}"
    );
    ensure!(hint.contains("reconcile --apply"), "{hint}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_table_of_a_source_while_streaming_halts_naming_it() -> Result<()> {
    let stack = hosts_stack("ddl-drop-table").await?;
    let _pg2dns = stack.run_as_service()?;
    stack
        .exec("INSERT INTO app.hosts (name, address) VALUES ('a.example.test', '192.0.2.1')")
        .await?;
    stack
        .wait_until_dns_equals(&forward(&[("a", "192.0.2.1")]), DNS_DEADLINE)
        .await?;
    stack.exec("DROP TABLE app.hosts").await?;
    let (reason, hint) = halted_within(&stack, Duration::from_secs(90)).await?;
    ensure!(
        reason.contains("source app.hosts: its table does not exist"),
        "{reason}"
    );
    ensure!(hint.contains("remove the source"), "{hint}");
    Ok(())
}

/// `reconcile --apply` exits 0.
async fn reconcile_apply(stack: &Stack) -> Result<()> {
    let out = stack.reconcile(&["--apply"], &[]).await?;
    ensure!(
        out.status.code() == Some(0),
        "reconcile --apply:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// PostgreSQL publishes nothing for a TRUNCATE of one partition (under
/// `publish_via_partition_root`), nor for ATTACH or DETACH PARTITION. The
/// TRUNCATE reaches pg2dns through the trigger `setup` put on the
/// partition, and halts before its transaction naming the partition; an
/// ATTACH or DETACH halts naming the partition (found by the periodic
/// check). In each case `reconcile --apply` then `resume` make DNS equal
/// to the table, the stream going on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_partition_and_attach_or_detach_partition_halt_naming_the_partition(
) -> Result<()> {
    let stack = Stack::start("ddl-partitions", Primary::Bind).await?;
    stack
        .exec(
            "CREATE SCHEMA app;
             CREATE TABLE app.hosts (id int, name text NOT NULL, address inet NOT NULL, vrf text NOT NULL,
                                     PRIMARY KEY (id, vrf)) PARTITION BY LIST (vrf);
             CREATE TABLE app.hosts_red PARTITION OF app.hosts FOR VALUES IN ('red');
             CREATE TABLE app.hosts_blue PARTITION OF app.hosts FOR VALUES IN ('blue');",
        )
        .await?;
    stack.append_config(&HOSTS.replace("ttl = 300\n", "ttl = 300\nkey = [\"id\", \"vrf\"]\n"))?;
    stack.setup().await?;
    let mut pg2dns = stack.run_as_service()?;
    let insert = |id: i32, name: &str, last: u8, vrf: &str| {
        format!(
            "INSERT INTO app.hosts VALUES ({id}, '{name}.example.test', '192.0.2.{last}', '{vrf}')"
        )
    };
    stack
        .exec(&format!(
            "{}; {}",
            insert(1, "a", 1, "red"),
            insert(2, "b", 2, "blue")
        ))
        .await?;
    stack
        .wait_until_dns_equals(
            &forward(&[("a", "192.0.2.1"), ("b", "192.0.2.2")]),
            DNS_DEADLINE,
        )
        .await?;

    // TRUNCATE of one partition: PostgreSQL publishes no change, pg2dns's
    // trigger a message: the stream halts before the transaction, naming
    // the partition; nothing after it is published.
    stack.exec("TRUNCATE app.hosts_blue").await?;
    stack.exec(&insert(3, "c", 3, "red")).await?;
    let (reason, hint) = halted(&stack).await?;
    ensure!(
        reason.contains("source app.hosts: its partition app.hosts_blue was truncated")
            && reason.contains("at LSN "),
        "the halt must name the source, the partition and the LSN: {reason}"
    );
    ensure!(
        hint.contains("reconcile --apply") && hint.contains("pg2dns resume"),
        "{hint}"
    );
    slot_holds(&stack, "app.hosts", "c.example.test").await?;
    ensure!(
        stack.dns().await? == forward(&[("a", "192.0.2.1"), ("b", "192.0.2.2")]),
        "nothing from the TRUNCATE on may be published while halted"
    );
    // The repair, then the resume: the replayed TRUNCATE passes and the
    // stream goes on.
    reconcile_apply(&stack).await?;
    stack
        .wait_until_dns_equals(
            &forward(&[("a", "192.0.2.1"), ("c", "192.0.2.3")]),
            DNS_DEADLINE,
        )
        .await?;
    stack.admin(&["resume"]).await?;
    running(&stack).await?;
    stack.exec(&insert(6, "f", 6, "blue")).await?;
    stack
        .wait_until_dns_equals(
            &forward(&[("a", "192.0.2.1"), ("c", "192.0.2.3"), ("f", "192.0.2.6")]),
            DNS_DEADLINE,
        )
        .await?;
    stack.exec("DELETE FROM app.hosts WHERE id = 6").await?;
    stack
        .wait_until_dns_equals(
            &forward(&[("a", "192.0.2.1"), ("c", "192.0.2.3")]),
            DNS_DEADLINE,
        )
        .await?;

    // DETACH: its rows leave the table without a DELETE: a halt names it.
    stack
        .exec("ALTER TABLE app.hosts DETACH PARTITION app.hosts_red")
        .await?;
    let (reason, hint) = halted_within(&stack, Duration::from_secs(90)).await?;
    ensure!(
        reason.contains("source app.hosts: partition app.hosts_red detached"),
        "{reason}"
    );
    ensure!(hint.contains("reconcile --apply"), "{hint}");
    reconcile_apply(&stack).await?;
    stack.admin(&["resume"]).await?;
    running(&stack).await?;
    stack.exec(&insert(4, "d", 4, "blue")).await?;
    stack
        .wait_until_dns_equals(&forward(&[("d", "192.0.2.4")]), DNS_DEADLINE)
        .await?;

    // ATTACH: its rows come in without an INSERT.
    stack
        .exec("ALTER TABLE app.hosts ATTACH PARTITION app.hosts_red FOR VALUES IN ('red')")
        .await?;
    let (reason, _) = halted_within(&stack, Duration::from_secs(90)).await?;
    ensure!(
        reason.contains("partition app.hosts_red attached"),
        "{reason}"
    );
    reconcile_apply(&stack).await?;
    stack.admin(&["resume"]).await?;
    running(&stack).await?;
    stack.exec(&insert(5, "e", 5, "blue")).await?;
    let all = forward(&[
        ("a", "192.0.2.1"),
        ("c", "192.0.2.3"),
        ("d", "192.0.2.4"),
        ("e", "192.0.2.5"),
    ]);
    stack.wait_until_dns_equals(&all, DNS_DEADLINE).await?;
    // The stream goes on from the repaired state: a row of the attached
    // partition deleted now leaves DNS.
    stack.exec("DELETE FROM app.hosts WHERE id = 1").await?;
    stack
        .wait_until_dns_equals(
            &forward(&[("c", "192.0.2.3"), ("d", "192.0.2.4"), ("e", "192.0.2.5")]),
            DNS_DEADLINE,
        )
        .await?;
    // A TRUNCATE of the partitioned table itself is published (its
    // partitions' trigger messages follow it and do not halt).
    stack.exec("TRUNCATE app.hosts").await?;
    stack
        .wait_until_dns_equals(&forward(&[]), DNS_DEADLINE)
        .await?;
    stack.exec(&insert(7, "g", 7, "red")).await?;
    stack
        .wait_until_dns_equals(&forward(&[("g", "192.0.2.7")]), DNS_DEADLINE)
        .await?;
    running(&stack).await?;
    pg2dns.assert_running()?;
    Ok(())
}

/// A partitioned `app.hosts` (red and blue), its source configured and set
/// up.
async fn partitioned_stack(label: &str) -> Result<Stack> {
    let stack = Stack::start(label, Primary::Bind).await?;
    stack
        .exec(
            "CREATE SCHEMA app;
             CREATE TABLE app.hosts (id int, name text NOT NULL, address inet NOT NULL, vrf text NOT NULL,
                                     PRIMARY KEY (id, vrf)) PARTITION BY LIST (vrf);
             CREATE TABLE app.hosts_red PARTITION OF app.hosts FOR VALUES IN ('red');
             CREATE TABLE app.hosts_blue PARTITION OF app.hosts FOR VALUES IN ('blue');",
        )
        .await?;
    stack.append_config(&HOSTS.replace("ttl = 300\n", "ttl = 300\nkey = [\"id\", \"vrf\"]\n"))?;
    stack.setup().await?;
    Ok(stack)
}

/// `pg2dns check-config`'s standard output.
async fn check_config(stack: &Stack) -> Result<String> {
    let out = crate::harness::pg2dns::command("check-config", stack.config_path()).await?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// `setup` puts the TRUNCATE trigger on every partition; `check-config`
/// names a partition that lacks it, with the SQL, and the next session
/// start puts it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_names_a_partition_without_the_truncate_trigger() -> Result<()> {
    let stack = partitioned_stack("ddl-truncate-trigger").await?;
    let out = check_config(&stack).await?;
    ensure!(
        !out.contains("TRUNCATE trigger"),
        "after setup every partition has the trigger:\n{out}"
    );
    stack
        .exec("DROP TRIGGER pg2dns_truncate_partition ON app.hosts_blue")
        .await?;
    let out = check_config(&stack).await?;
    ensure!(
        out.contains("source app.hosts: partition app.hosts_blue has no pg2dns TRUNCATE trigger")
            && out.contains(
                "CREATE TRIGGER pg2dns_truncate_partition AFTER TRUNCATE ON app.hosts_blue"
            )
            && !out.contains("partition app.hosts_red has no"),
        "check-config must name the partition and give the SQL:\n{out}"
    );
    let _pg2dns = stack.run_as_service()?;
    running(&stack).await?;
    let out = check_config(&stack).await?;
    ensure!(
        !out.contains("TRUNCATE trigger"),
        "a session start puts the trigger back:\n{out}"
    );
    Ok(())
}

/// Stops pg2dns with SIGTERM, as a service manager does.
async fn stop(pg2dns: &mut crate::harness::Pg2dns) -> Result<()> {
    let status = pg2dns.terminate().await?;
    ensure!(status.success(), "pg2dns run exited with {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_table_dropped_and_created_again_while_pg2dns_is_stopped_halts_at_start_naming_both_oids(
) -> Result<()> {
    let stack = hosts_stack("ddl-recreate-stopped").await?;
    let mut pg2dns = stack.run_as_service()?;
    stack
        .exec("INSERT INTO app.hosts (name, address) VALUES ('a.example.test', '192.0.2.1')")
        .await?;
    stack
        .wait_until_dns_equals(&forward(&[("a", "192.0.2.1")]), DNS_DEADLINE)
        .await?;
    let before: u32 = stack
        .db
        .query_one("SELECT 'app.hosts'::regclass::oid", &[])
        .await?
        .get(0);
    stop(&mut pg2dns).await?;
    stack
        .exec(&format!(
            "DROP TABLE app.hosts;
             CREATE TABLE app.hosts (id serial PRIMARY KEY, name text NOT NULL, address inet NOT NULL);
             ALTER PUBLICATION \"{SLOT}\" ADD TABLE app.hosts;
             INSERT INTO app.hosts (id, name, address) VALUES (100, 'b.example.test', '192.0.2.2');"
        ))
        .await?;
    let now: u32 = stack
        .db
        .query_one("SELECT 'app.hosts'::regclass::oid", &[])
        .await?
        .get(0);
    let mut pg2dns = stack.run_as_service()?;
    let (reason, hint) = halted(&stack).await?;
    ensure!(
        reason.contains(
            "source app.hosts: its table was dropped and created again while pg2dns was stopped"
        ) && reason.contains(&format!("(OID {before} → {now})")),
        "the halt must name the source and both OIDs: {reason}"
    );
    ensure!(
        hint.contains("pg2dns resume") && hint.contains("reconcile --apply"),
        "{hint}"
    );
    ensure!(
        stack.dns().await? == forward(&[("a", "192.0.2.1")]),
        "nothing may be published while halted"
    );
    // Killed and started again without a resume: still halted.
    pg2dns.kill()?;
    let mut pg2dns = stack.run_as_service()?;
    let (again, _) = halted(&stack).await?;
    ensure!(again == reason, "{again}");
    // Resume records the new table; the repair removes the dropped row's
    // record.
    stack.admin(&["resume"]).await?;
    running(&stack).await?;
    stack
        .wait_until_dns_equals(
            &forward(&[("a", "192.0.2.1"), ("b", "192.0.2.2")]),
            DNS_DEADLINE,
        )
        .await?;
    reconcile_apply(&stack).await?;
    stack
        .wait_until_dns_equals(&forward(&[("b", "192.0.2.2")]), DNS_DEADLINE)
        .await?;
    stack
        .exec("INSERT INTO app.hosts (name, address) VALUES ('c.example.test', '192.0.2.3')")
        .await?;
    stack
        .wait_until_dns_equals(
            &forward(&[("b", "192.0.2.2"), ("c", "192.0.2.3")]),
            DNS_DEADLINE,
        )
        .await?;
    // A later start finds what it recorded: no halt.
    stop(&mut pg2dns).await?;
    let mut pg2dns = stack.run_as_service()?;
    running(&stack).await?;
    stack
        .exec("INSERT INTO app.hosts (name, address) VALUES ('d.example.test', '192.0.2.4')")
        .await?;
    stack
        .wait_until_dns_equals(
            &forward(&[("b", "192.0.2.2"), ("c", "192.0.2.3"), ("d", "192.0.2.4")]),
            DNS_DEADLINE,
        )
        .await?;
    pg2dns.assert_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_detached_or_attached_while_pg2dns_is_stopped_halts_at_start_naming_it(
) -> Result<()> {
    let stack = partitioned_stack("ddl-partitions-stopped").await?;
    let mut pg2dns = stack.run_as_service()?;
    stack
        .exec(
            "INSERT INTO app.hosts VALUES (1, 'a.example.test', '192.0.2.1', 'red'),
                                          (2, 'b.example.test', '192.0.2.2', 'blue')",
        )
        .await?;
    stack
        .wait_until_dns_equals(
            &forward(&[("a", "192.0.2.1"), ("b", "192.0.2.2")]),
            DNS_DEADLINE,
        )
        .await?;
    stop(&mut pg2dns).await?;

    // DETACH while stopped: the start halts naming the partition.
    stack
        .exec("ALTER TABLE app.hosts DETACH PARTITION app.hosts_red")
        .await?;
    let mut pg2dns = stack.run_as_service()?;
    let (reason, hint) = halted(&stack).await?;
    ensure!(
        reason.contains(
            "source app.hosts: partition app.hosts_red detached while pg2dns was stopped"
        ),
        "{reason}"
    );
    ensure!(
        hint.contains("pg2dns resume") && hint.contains("reconcile --apply"),
        "{hint}"
    );
    stack.admin(&["resume"]).await?;
    running(&stack).await?;
    reconcile_apply(&stack).await?;
    stack
        .wait_until_dns_equals(&forward(&[("b", "192.0.2.2")]), DNS_DEADLINE)
        .await?;
    stop(&mut pg2dns).await?;

    // ATTACH while stopped: the same, and its rows reach DNS by the repair.
    stack
        .exec("ALTER TABLE app.hosts ATTACH PARTITION app.hosts_red FOR VALUES IN ('red')")
        .await?;
    let mut pg2dns = stack.run_as_service()?;
    let (reason, _) = halted(&stack).await?;
    ensure!(
        reason.contains("partition app.hosts_red attached while pg2dns was stopped"),
        "{reason}"
    );
    stack.admin(&["resume"]).await?;
    running(&stack).await?;
    reconcile_apply(&stack).await?;
    stack
        .wait_until_dns_equals(
            &forward(&[("a", "192.0.2.1"), ("b", "192.0.2.2")]),
            DNS_DEADLINE,
        )
        .await?;
    // The stream goes on: a row of the re-attached partition deleted now
    // leaves DNS.
    stack.exec("DELETE FROM app.hosts WHERE id = 1").await?;
    stack
        .wait_until_dns_equals(&forward(&[("b", "192.0.2.2")]), DNS_DEADLINE)
        .await?;
    pg2dns.assert_running()?;
    Ok(())
}

/// A zones table is followed by OID like a source table: renamed while
/// streaming, its next change halts naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_table_rename_of_a_zones_table_halts_naming_it() -> Result<()> {
    let stack = Stack::start("ddl-rename-zones-table", Primary::Bind).await?;
    stack
        .exec(
            "CREATE SCHEMA pdns;
             CREATE TABLE pdns.domains (id int PRIMARY KEY, name text NOT NULL UNIQUE);
             CREATE TABLE pdns.records (id bigserial PRIMARY KEY, domain_id int,
                 name text, type text, content text);",
        )
        .await?;
    stack.append_config(
        r#"
[[source]]
table = "pdns.records"
owner_column = "name"
type_column = "type"
rdata_column = "content"
ttl = 300
[source.zones_table]
table = "pdns.domains"
column = "domain_id"
"#,
    )?;
    stack.setup().await?;
    let _pg2dns = stack.run_as_service()?;
    stack
        .exec(
            "INSERT INTO pdns.domains VALUES (1, 'example.test');
             INSERT INTO pdns.records (domain_id, name, type, content) VALUES (1, 'a.example.test', 'A', '192.0.2.1');",
        )
        .await?;
    stack
        .wait_until_dns_equals(&forward(&[("a", "192.0.2.1")]), DNS_DEADLINE)
        .await?;
    stack
        .exec(
            "ALTER TABLE pdns.domains RENAME TO zones;
             INSERT INTO pdns.zones VALUES (2, 'other.test');",
        )
        .await?;
    let (reason, _) = halted(&stack).await?;
    ensure!(
        reason.contains("source pdns.domains") && reason.contains("renamed to pdns.zones"),
        "{reason}"
    );
    Ok(())
}

/// A SQL connection to the stack's database as `role` (trust
/// authentication, as the test cluster has).
async fn connect_as(stack: &Stack, role: &str) -> Result<tokio_postgres::Client> {
    let url = stack.pg.url().replacen("postgres@", &format!("{role}@"), 1);
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting as {role}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A service role that does not own the partitions cannot put the TRUNCATE
/// trigger on them: `setup` says so and prints the SQL for their owner,
/// `check-config` names each partition; once the owner ran it, a TRUNCATE
/// of one partition by the application halts naming it; the repair and the
/// resume make DNS equal to the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_as_a_role_that_does_not_own_the_partitions_prints_the_trigger_sql_for_their_owner(
) -> Result<()> {
    let stack = Stack::start_before_setup("ddl-truncate-trigger-owner", Primary::Bind).await?;
    stack
        .exec(
            "CREATE ROLE app_owner LOGIN;
             CREATE ROLE pg2dns_svc LOGIN REPLICATION;
             GRANT CREATE ON DATABASE postgres TO pg2dns_svc;
             CREATE SCHEMA app AUTHORIZATION app_owner;",
        )
        .await?;
    let app = connect_as(&stack, "app_owner").await?;
    app.batch_execute(
        "CREATE TABLE app.hosts (id int, name text NOT NULL, address inet NOT NULL, vrf text NOT NULL,
                                 PRIMARY KEY (id, vrf)) PARTITION BY LIST (vrf);
         CREATE TABLE app.hosts_red PARTITION OF app.hosts FOR VALUES IN ('red');
         CREATE TABLE app.hosts_blue PARTITION OF app.hosts FOR VALUES IN ('blue');
         INSERT INTO app.hosts VALUES (1, 'a.example.test', '192.0.2.1', 'red'),
                                      (2, 'b.example.test', '192.0.2.2', 'blue');
         GRANT USAGE ON SCHEMA app TO pg2dns_svc;
         GRANT SELECT ON app.hosts TO pg2dns_svc;",
    )
    .await?;
    // The DBA's publication, given to the service (only a table's owner
    // may add it to one).
    stack
        .exec(&format!(
            "CREATE PUBLICATION {SLOT} FOR TABLE app.hosts WITH (publish_via_partition_root = true);
             ALTER PUBLICATION {SLOT} OWNER TO pg2dns_svc;"
        ))
        .await?;
    stack.set_database_url(&stack.pg.url().replacen("postgres@", "pg2dns_svc@", 1))?;
    stack.append_config(&HOSTS.replace("ttl = 300\n", "ttl = 300\nkey = [\"id\", \"vrf\"]\n"))?;
    let out = crate::harness::pg2dns::command("setup", stack.config_path()).await?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "setup failed:\n{said}");
    let statements: Vec<&str> = said
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("CREATE TRIGGER pg2dns_truncate_partition"))
        .collect();
    ensure!(
        said.contains("this role does not own these partitions")
            && statements.len() == 2
            && statements.iter().any(|s| s.contains("ON app.hosts_blue"))
            && statements.iter().any(|s| s.contains("ON app.hosts_red")),
        "setup must print the SQL for each partition's owner:\n{said}"
    );
    let check = check_config(&stack).await?;
    ensure!(
        check.contains("partition app.hosts_blue has no pg2dns TRUNCATE trigger")
            && check.contains("partition app.hosts_red has no pg2dns TRUNCATE trigger"),
        "{check}"
    );
    // The owner runs what setup printed.
    for statement in &statements {
        app.batch_execute(statement).await?;
    }
    let check = check_config(&stack).await?;
    ensure!(!check.contains("TRUNCATE trigger"), "{check}");

    let mut pg2dns = stack.run_as_service()?;
    stack
        .wait_until_dns_equals(
            &forward(&[("a", "192.0.2.1"), ("b", "192.0.2.2")]),
            DNS_DEADLINE,
        )
        .await?;
    running(&stack).await?;
    // Messages that are not pg2dns's TRUNCATE messages change nothing: other
    // prefixes, a non-transactional one, one naming no partition of a source.
    app.batch_execute(
        "SELECT pg_logical_emit_message(true, 'other', '{\"truncate_partition\": \"app.hosts_blue\"}');
         SELECT pg_logical_emit_message(false, 'pg2dns', '{\"truncate_partition\": \"app.hosts_blue\"}');
         SELECT pg_logical_emit_message(true, 'pg2dns', '{\"truncate_partition\": \"app.nothing\"}');
         INSERT INTO app.hosts VALUES (3, 'c.example.test', '192.0.2.3', 'red');",
    )
    .await?;
    stack
        .wait_until_dns_equals(
            &forward(&[("a", "192.0.2.1"), ("b", "192.0.2.2"), ("c", "192.0.2.3")]),
            DNS_DEADLINE,
        )
        .await?;
    running(&stack).await?;

    app.batch_execute("TRUNCATE app.hosts_blue").await?;
    let (reason, _) = halted(&stack).await?;
    ensure!(
        reason.contains("its partition app.hosts_blue was truncated"),
        "{reason}"
    );
    reconcile_apply(&stack).await?;
    stack.admin(&["resume"]).await?;
    running(&stack).await?;
    app.batch_execute("INSERT INTO app.hosts VALUES (4, 'd.example.test', '192.0.2.4', 'blue')")
        .await?;
    stack
        .wait_until_dns_equals(
            &forward(&[("a", "192.0.2.1"), ("c", "192.0.2.3"), ("d", "192.0.2.4")]),
            DNS_DEADLINE,
        )
        .await?;
    pg2dns.assert_running()?;
    Ok(())
}
