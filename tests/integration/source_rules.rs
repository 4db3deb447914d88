//! Rules that hold for every source: a table whose configured column is
//! dropped or retyped halts the stream instead of publishing wrong data,
//! and apex NS records come only from a source allowed to manage them.

use anyhow::{ensure, Result};

use crate::harness::stack::{ZoneRecords, FORWARD, REVERSE};
use crate::harness::{wait_until, Check, Pg2dns, Primary, Record, Stack, DNS_DEADLINE};

fn forward_only(records: &[Record]) -> ZoneRecords {
    let mut out = ZoneRecords::new();
    let mut records = records.to_vec();
    records.sort();
    out.insert(FORWARD.to_string(), records);
    out.insert(REVERSE.to_string(), Vec::new());
    out
}

/// Waits for a pg2dns started with `--exit-on-halt` to halt, and returns
/// the log line that says why.
async fn halt_line(pg2dns: &mut Pg2dns) -> Result<String> {
    let status = pg2dns.wait_exit(DNS_DEADLINE).await?;
    ensure!(
        !status.success(),
        "pg2dns must halt, yet it exited {status}"
    );
    let log = pg2dns.log();
    Ok(log
        .lines()
        .find(|l| l.contains("halted"))
        .unwrap_or_default()
        .to_owned())
}

/// Whether `line` names an LSN as PostgreSQL prints it (`0/1A2B3C`) after
/// "at LSN ".
fn names_an_lsn(line: &str) -> bool {
    line.split("at LSN ").nth(1).is_some_and(|rest| {
        let lsn = rest
            .split(|c: char| !(c.is_ascii_hexdigit() || c == '/'))
            .next();
        lsn.is_some_and(|l| l.contains('/') && l.len() >= 3)
    })
}

const HOSTS: &str = r#"
[[source]]
table = "app.hosts"
owner_column = "name"
address_column = "address"
ttl = 300
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_column_is_fine_and_a_retyped_address_column_halts_naming_source_column_and_lsn(
) -> Result<()> {
    let stack = Stack::start("schema-retype", Primary::Bind).await?;
    stack
        .exec("CREATE SCHEMA app; CREATE TABLE app.hosts (id serial PRIMARY KEY, name text, address inet);")
        .await?;
    stack.append_config(HOSTS)?;
    stack.setup().await?;
    let mut pg2dns = stack.run()?;
    stack
        .exec("INSERT INTO app.hosts (name, address) VALUES ('a.example.test', '192.0.2.1')")
        .await?;
    // A column the source does not read comes and is used: nothing changes.
    stack
        .exec(
            "ALTER TABLE app.hosts ADD COLUMN note text;
             INSERT INTO app.hosts (note, name, address) VALUES ('new', 'b.example.test', '192.0.2.2');",
        )
        .await?;
    let published = forward_only(&[
        Record::new("a.example.test.", 300, "A", "192.0.2.1"),
        Record::new("b.example.test.", 300, "A", "192.0.2.2"),
    ]);
    stack
        .wait_until_dns_equals(&published, DNS_DEADLINE)
        .await?;

    stack
        .exec(
            "ALTER TABLE app.hosts ALTER COLUMN address TYPE integer USING 7;
             INSERT INTO app.hosts (name, address) VALUES ('c.example.test', 3);",
        )
        .await?;
    let line = halt_line(&mut pg2dns).await?;
    ensure!(
        line.contains("source app.hosts") && line.contains("column \"address\""),
        "the halt must name the source and the column: {line}"
    );
    ensure!(names_an_lsn(&line), "the halt must name the LSN: {line}");
    ensure!(
        stack.dns().await? == published,
        "nothing may be published from the new layout"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_dropped_from_pg2dns_rr_halts_naming_it() -> Result<()> {
    let stack = Stack::start("schema-drop", Primary::Bind).await?;
    let mut pg2dns = stack.run()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('a.example.test.', 300, 'A', '192.0.2.1')")
        .await?;
    let before = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    stack
        .exec(
            "ALTER TABLE pg2dns.rr DROP COLUMN class;
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('b.example.test.', 300, 'A', '192.0.2.2');",
        )
        .await?;
    let line = halt_line(&mut pg2dns).await?;
    ensure!(
        line.contains("source pg2dns.rr") && line.contains("column \"class\""),
        "the halt must name the source and the column: {line}"
    );
    ensure!(names_an_lsn(&line), "the halt must name the LSN: {line}");
    ensure!(stack.dns().await? == before, "nothing may be published");
    Ok(())
}

const RECORDS: &str = r#"
[[source]]
table = "app.records"
owner_column = "name"
type_column = "type"
rdata_column = "content"
ttl = 300
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apex_ns_records_come_only_from_a_source_that_manages_them() -> Result<()> {
    let stack = Stack::start("apex-ns", Primary::Bind).await?;
    stack
        .exec("CREATE SCHEMA app; CREATE TABLE app.records (id serial PRIMARY KEY, name text, type text, content text);")
        .await?;
    stack.append_config(RECORDS)?;
    stack.setup().await?;
    let _pg2dns = stack.run()?;
    let apex_before = stack.query(FORWARD, "NS").await?;
    ensure!(!apex_before.is_empty(), "the test zone has apex NS records");

    // A source without manage_apex_ns: its apex NS row is refused with a
    // reason, a delegation below the apex and the rest are published.
    stack
        .exec(
            "INSERT INTO app.records (name, type, content) VALUES
               ('example.test.', 'NS', 'ns9.other.test.'),
               ('sub.example.test.', 'NS', 'ns.other.test.'),
               ('www.example.test.', 'A', '192.0.2.5')",
        )
        .await?;
    stack
        .wait_until_answers("www.example.test.", "A", DNS_DEADLINE)
        .await?;
    let rejected = wait_until(
        DNS_DEADLINE,
        "the apex NS row in pg2dns.rejected",
        || async {
            let rejected = stack.rejected().await?;
            Ok(if rejected.is_empty() {
                Check::NotYet("none yet".into())
            } else {
                Check::Done(rejected)
            })
        },
    )
    .await?;
    ensure!(
        rejected.len() == 1
            && rejected[0].row_key == "1"
            && rejected[0].reason.contains("manage_apex_ns"),
        "the apex NS row must be refused with its reason: {rejected:?}"
    );
    ensure!(
        stack.query(FORWARD, "NS").await? == apex_before,
        "the apex NS RRset must not change"
    );

    // pg2dns.rr manages apex NS by default ([rr] manage_apex_ns = true).
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('example.test.', 300, 'NS', 'ns8.other.test.')")
        .await?;
    let apex = wait_until(DNS_DEADLINE, "pg2dns.rr's apex NS", || async {
        let apex = stack.query(FORWARD, "NS").await?;
        Ok(if apex.iter().any(|r| r.rdata == "ns8.other.test.") {
            Check::Done(apex)
        } else {
            Check::NotYet(format!("{apex:?}"))
        })
    })
    .await?;
    ensure!(
        !apex.iter().any(|r| r.rdata == "ns9.other.test."),
        "{apex:?}"
    );
    ensure!(stack.rejected().await?.len() == 1);
    Ok(())
}

/// Waits until the primary answers exactly `targets` for the PTR of
/// 5.2.0.192.in-addr.arpa.
async fn ptrs(stack: &Stack, targets: &[&str]) -> Result<()> {
    wait_until(DNS_DEADLINE, "the PTR answer", || async {
        let mut got: Vec<String> = stack
            .query("5.2.0.192.in-addr.arpa.", "PTR")
            .await?
            .into_iter()
            .map(|r| r.rdata)
            .collect();
        got.sort();
        Ok(if got == targets {
            Check::Done(())
        } else {
            Check::NotYet(format!("{got:?}"))
        })
    })
    .await
}

/// A reverse zone with `one_ptr` publishes one PTR per address however many
/// rows claim it: the smallest target, whichever row came first; when its
/// row goes, the next takes its place; and reconcile agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reverse_zone_with_one_ptr_publishes_one_name_per_address() -> Result<()> {
    let stack = Stack::start("one-ptr", Primary::Bind).await?;
    stack.set_zone_option(REVERSE, "one_ptr = true")?;
    let _pg2dns = stack.run()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('5.2.0.192.in-addr.arpa.', 300, 'PTR', 'zz.example.test.')")
        .await?;
    ptrs(&stack, &["zz.example.test."]).await?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('5.2.0.192.in-addr.arpa.', 300, 'PTR', 'aa.example.test.')")
        .await?;
    ptrs(&stack, &["aa.example.test."]).await?;
    let in_sync = stack.reconcile(&[], &[]).await?;
    ensure!(
        in_sync.status.code() == Some(0),
        "reconcile agrees with the stream: {}",
        String::from_utf8_lossy(&in_sync.stdout)
    );
    stack
        .exec("DELETE FROM pg2dns.rr WHERE rdata = 'aa.example.test.'")
        .await?;
    ptrs(&stack, &["zz.example.test."]).await?;
    Ok(())
}
