//! Declarative sources: an application's own tables, read as they are under
//! their default replica identity, reach BIND. Each step's expected zones
//! are written by hand, and every step ends with an AXFR of both zones equal
//! to exactly that.

use anyhow::{ensure, Result};

use crate::harness::stack::{ZoneRecords, FORWARD, REVERSE};
use crate::harness::{Primary, Record, Stack, DNS_DEADLINE};

fn zones(forward: &[Record], reverse: &[Record]) -> ZoneRecords {
    let mut out = ZoneRecords::new();
    for (zone, records) in [(FORWARD, forward), (REVERSE, reverse)] {
        let mut records = records.to_vec();
        records.sort();
        out.insert(zone.to_string(), records);
    }
    out
}

fn a(owner: &str, address: &str) -> Record {
    Record::new(owner, 300, "A", address)
}

fn ptr(last: u8, target: &str) -> Record {
    Record::new(&format!("{last}.{REVERSE}"), 300, "PTR", target)
}

const HOSTS: &str = r#"
[[source]]
table = "ipam.hosts"
owner_column = "name"
address_column = "address"
ptr = true
ttl = 300
[source.filter]
non_empty = ["name"]
one_of = { status = ["active"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipam_hosts_table_publishes_addresses_and_ptrs_as_rows_come_move_and_go() -> Result<()> {
    let stack = Stack::start("sources-ipam", Primary::Bind).await?;
    stack
        .exec(
            "CREATE SCHEMA ipam;
             CREATE TABLE ipam.hosts (id serial PRIMARY KEY, name text, address inet, status text, vrf text);",
        )
        .await?;
    stack.append_config(HOSTS)?;
    stack.setup().await?;
    let _pg2dns = stack.run()?;

    // Empty and NULL names and a reserved host are filtered out; the same
    // address in two VRFs is one A and one PTR; no ip6.arpa zone is
    // configured, so the IPv6 host has no PTR.
    stack
        .exec(
            "INSERT INTO ipam.hosts (name, address, status, vrf) VALUES
               ('web1.example.test', '192.0.2.5/24', 'active', 'red'),
               ('gw.example.test.', '192.0.2.1/24', 'active', 'red'),
               ('gw.example.test', '192.0.2.1/24', 'active', 'blue'),
               ('', '192.0.2.9', 'active', 'red'),
               (NULL, '192.0.2.10', 'active', 'red'),
               ('spare.example.test', '192.0.2.20/25', 'reserved', 'red'),
               ('v6.example.test', '2001:db8::5/64', 'active', 'red')",
        )
        .await?;
    let mut forward = vec![
        a("web1.example.test.", "192.0.2.5"),
        a("gw.example.test.", "192.0.2.1"),
        Record::new("v6.example.test.", 300, "AAAA", "2001:db8::5"),
    ];
    let mut reverse = vec![ptr(5, "web1.example.test."), ptr(1, "gw.example.test.")];
    stack
        .wait_until_dns_equals(&zones(&forward, &reverse), DNS_DEADLINE)
        .await?;

    // Deleting the blue copy (REPLICA IDENTITY DEFAULT: the key only) keeps
    // the records the red copy still produces; a status change publishes.
    stack
        .exec(
            "DELETE FROM ipam.hosts WHERE vrf = 'blue';
             UPDATE ipam.hosts SET status = 'active' WHERE name = 'spare.example.test';",
        )
        .await?;
    forward.push(a("spare.example.test.", "192.0.2.20"));
    reverse.push(ptr(20, "spare.example.test."));
    stack
        .wait_until_dns_equals(&zones(&forward, &reverse), DNS_DEADLINE)
        .await?;

    // A host moves to another address; another is renamed; an empty name
    // gets one.
    stack
        .exec(
            "UPDATE ipam.hosts SET address = '192.0.2.6/24' WHERE name = 'web1.example.test';
             UPDATE ipam.hosts SET name = 'gateway.example.test' WHERE name = 'gw.example.test.';
             UPDATE ipam.hosts SET name = 'named.example.test' WHERE address = '192.0.2.9';",
        )
        .await?;
    let mut forward = vec![
        a("web1.example.test.", "192.0.2.6"),
        a("gateway.example.test.", "192.0.2.1"),
        a("named.example.test.", "192.0.2.9"),
        a("spare.example.test.", "192.0.2.20"),
        Record::new("v6.example.test.", 300, "AAAA", "2001:db8::5"),
    ];
    let mut reverse = vec![
        ptr(6, "web1.example.test."),
        ptr(1, "gateway.example.test."),
        ptr(9, "named.example.test."),
        ptr(20, "spare.example.test."),
    ];
    stack
        .wait_until_dns_equals(&zones(&forward, &reverse), DNS_DEADLINE)
        .await?;

    // Two names claiming one address: a two-record PTR RRset.
    stack
        .exec("INSERT INTO ipam.hosts (name, address, status, vrf) VALUES ('alias.example.test', '192.0.2.6', 'active', 'red')")
        .await?;
    forward.push(a("alias.example.test.", "192.0.2.6"));
    reverse.push(ptr(6, "alias.example.test."));
    stack
        .wait_until_dns_equals(&zones(&forward, &reverse), DNS_DEADLINE)
        .await?;

    // A host retired, a name emptied, a row deleted: their records leave,
    // the other claimant of 192.0.2.6 keeps its PTR.
    stack
        .exec(
            "UPDATE ipam.hosts SET status = 'retired' WHERE name = 'spare.example.test';
             UPDATE ipam.hosts SET name = '' WHERE name = 'v6.example.test';
             DELETE FROM ipam.hosts WHERE name = 'web1.example.test';",
        )
        .await?;
    let forward = vec![
        a("gateway.example.test.", "192.0.2.1"),
        a("named.example.test.", "192.0.2.9"),
        a("alias.example.test.", "192.0.2.6"),
    ];
    let reverse = vec![
        ptr(1, "gateway.example.test."),
        ptr(9, "named.example.test."),
        ptr(6, "alias.example.test."),
    ];
    stack
        .wait_until_dns_equals(&zones(&forward, &reverse), DNS_DEADLINE)
        .await?;
    let rejected = stack.rejected().await?;
    ensure!(rejected.is_empty(), "rows were rejected: {rejected:?}");

    // The batch comparison reads the source table too: in sync, and a
    // record deleted behind pg2dns's back is put back (never are the
    // source's records taken for extras).
    let output = stack.reconcile(&[], &[]).await?;
    ensure!(
        output.status.code() == Some(0),
        "reconcile found differences:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    stack
        .server(Primary::Bind)?
        .nsupdate("update delete gateway.example.test. A")
        .await?;
    let output = stack.reconcile(&["--apply"], &[]).await?;
    ensure!(
        output.status.code() == Some(0),
        "reconcile --apply failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        stack.dns().await? == zones(&forward, &reverse),
        "after reconcile --apply DNS holds {:?}",
        stack.dns().await?
    );
    Ok(())
}

const RECORDS: &str = r#"
[[source]]
table = "app.records"
owner_column = "name"
names = "relative"
zone_column = "zone"
type_column = "type"
rdata_column = "content"
rdata_by_type = { MX = "{prio} {content}", SRV = "{prio} {content}" }
ttl_column = "ttl"
[source.filter]
is_false = ["disabled"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generic_records_table_with_a_zone_column_publishes_every_type_and_follows_disabled(
) -> Result<()> {
    let stack = Stack::start("sources-records", Primary::Bind).await?;
    stack
        .exec(
            "CREATE SCHEMA app;
             CREATE TABLE app.records (id serial PRIMARY KEY, zone text, name text, type text,
                                       content text, ttl int, prio int, disabled bool NOT NULL DEFAULT false);",
        )
        .await?;
    stack.append_config(RECORDS)?;
    stack.setup().await?;
    let _pg2dns = stack.run()?;

    stack
        .exec(
            "INSERT INTO app.records (zone, name, type, content, ttl, prio, disabled) VALUES
               ('example.test', 'www', 'A', '192.0.2.10', 300, NULL, false),
               ('example.test', 'www', 'AAAA', '2001:db8::10', 300, NULL, false),
               ('example.test', 'alias', 'CNAME', 'www.example.test.', 300, NULL, false),
               ('example.test', 'mail', 'A', '192.0.2.25', 300, NULL, false),
               ('example.test.', '', 'MX', 'mail.example.test.', 600, 10, false),
               ('example.test', 'sip', 'A', '192.0.2.30', 300, NULL, false),
               ('example.test', '_sip._tcp', 'SRV', '5 5060 sip.example.test.', 300, 20, false),
               ('example.test', 'txt', 'TXT', '\"v=spf1 -all\" \"second string\"', NULL, NULL, false),
               ('example.test', 'off', 'A', '192.0.2.99', 300, NULL, true),
               ('example.test', 'untyped', NULL, '192.0.2.98', 300, NULL, false),
               ('2.0.192.in-addr.arpa', '10', 'PTR', 'www.example.test.', 300, NULL, false);
             INSERT INTO app.records (zone, name, type, content, ttl) VALUES
               ('nowhere.test', 'x', 'A', '192.0.2.1', 300);",
        )
        .await?;
    let mut forward = vec![
        Record::new("www.example.test.", 300, "A", "192.0.2.10"),
        Record::new("www.example.test.", 300, "AAAA", "2001:db8::10"),
        Record::new("alias.example.test.", 300, "CNAME", "www.example.test."),
        Record::new("mail.example.test.", 300, "A", "192.0.2.25"),
        Record::new("example.test.", 600, "MX", "10 mail.example.test."),
        Record::new("sip.example.test.", 300, "A", "192.0.2.30"),
        Record::new(
            "_sip._tcp.example.test.",
            300,
            "SRV",
            "20 5 5060 sip.example.test.",
        ),
        Record::new(
            "txt.example.test.",
            3600,
            "TXT",
            "\"v=spf1 -all\" \"second string\"",
        ),
    ];
    let reverse = vec![Record::new(
        "10.2.0.192.in-addr.arpa.",
        300,
        "PTR",
        "www.example.test.",
    )];
    stack
        .wait_until_dns_equals(&zones(&forward, &reverse), DNS_DEADLINE)
        .await?;
    let rejected = stack.rejected().await?;
    ensure!(
        rejected.len() == 1 && rejected[0].reason.contains("nowhere.test"),
        "expected one rejection naming the unconfigured zone, got {rejected:?}"
    );

    // Toggling disabled both ways, a content change, a deleted row.
    stack
        .exec(
            "UPDATE app.records SET disabled = false WHERE name = 'off';
             UPDATE app.records SET disabled = true WHERE name = 'www' AND type = 'AAAA';
             UPDATE app.records SET content = '\"v=spf1 mx -all\"' WHERE name = 'txt';
             DELETE FROM app.records WHERE name = 'alias';",
        )
        .await?;
    forward
        .retain(|r| !(r.rtype == "AAAA" || r.owner == "alias.example.test." || r.rtype == "TXT"));
    forward.push(Record::new("off.example.test.", 300, "A", "192.0.2.99"));
    forward.push(Record::new(
        "txt.example.test.",
        3600,
        "TXT",
        "\"v=spf1 mx -all\"",
    ));
    stack
        .wait_until_dns_equals(&zones(&forward, &reverse), DNS_DEADLINE)
        .await?;

    // A 10 kB TXT stored out of line: an UPDATE of its TTL alone sends the
    // content as an unchanged TOAST value, taken from the row state.
    let big: Vec<String> = (0..40u8)
        .map(|i| format!("\"{}\"", char::from(b'a' + i % 26).to_string().repeat(250)))
        .collect();
    let big = big.join(" ");
    stack
        .exec(&format!(
            "ALTER TABLE app.records ALTER COLUMN content SET STORAGE EXTERNAL;
             INSERT INTO app.records (zone, name, type, content, ttl) VALUES
               ('example.test', 'big', 'TXT', '{big}', 300);
             UPDATE app.records SET ttl = 120 WHERE name = 'big';"
        ))
        .await?;
    forward.push(Record::new("big.example.test.", 120, "TXT", &big));
    stack
        .wait_until_dns_equals(&zones(&forward, &reverse), DNS_DEADLINE)
        .await?;
    let rejected = stack.rejected().await?;
    ensure!(rejected.len() == 1, "rows were rejected: {rejected:?}");

    let output = stack.reconcile(&[], &[]).await?;
    ensure!(
        output.status.code() == Some(0),
        "reconcile found differences:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
