//! Declarative sources: an application's own tables, read as they are under
//! their default replica identity, reach BIND. Each step's expected zones
//! are written by hand, and every step ends with an AXFR of both zones equal
//! to exactly that.

use anyhow::{ensure, Result};

use crate::harness::stack::{ZoneRecords, FORWARD, REVERSE};
use crate::harness::{wait_until, Check, Primary, Record, Stack, DNS_DEADLINE};

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

/// `pg2dns reconcile` (read-only) exits 0: the zones equal what the tables
/// give.
async fn reconcile_finds_no_difference(stack: &Stack) -> Result<()> {
    let output = stack.reconcile(&[], &[]).await?;
    ensure!(
        output.status.code() == Some(0),
        "reconcile found differences:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
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
    reconcile_finds_no_difference(&stack).await?;
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

/// A generic records table with a zone column and relative names (also
/// `plugin::`'s source).
pub(crate) const RECORDS: &str = r#"
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

/// Creates `app.records` (the table [`RECORDS`] follows), adds the source
/// to the config and runs setup.
pub(crate) async fn with_records_table(stack: &Stack) -> Result<()> {
    stack
        .exec(
            "CREATE SCHEMA app;
             CREATE TABLE app.records (id serial PRIMARY KEY, zone text, name text, type text,
                                       content text, ttl int, prio int, disabled bool NOT NULL DEFAULT false);",
        )
        .await?;
    stack.append_config(RECORDS)?;
    stack.setup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generic_records_table_with_a_zone_column_publishes_every_type_and_follows_disabled(
) -> Result<()> {
    let stack = Stack::start("sources-records", Primary::Bind).await?;
    with_records_table(&stack).await?;
    let _pg2dns = stack.run()?;

    stack
        .exec(
            "INSERT INTO app.records (zone, name, type, content, ttl, prio, disabled) VALUES
               ('example.test', 'www', 'A', '192.0.2.10', 300, NULL, false),
               ('example.test', 'www', 'AAAA', '2001:db8::10', 300, NULL, false),
               ('example.test', 'alias', 'CNAME', 'www.example.test.', 300, NULL, false),
               ('example.test', 'alias2', 'CNAME', 'www', 300, NULL, false),
               ('example.test', 'apex-alias', 'CNAME', '@', 300, NULL, false),
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
        // Relative names inside record data, as the owner's (names = "relative").
        Record::new("alias2.example.test.", 300, "CNAME", "www.example.test."),
        Record::new("apex-alias.example.test.", 300, "CNAME", "example.test."),
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
    let rejected = stack.rejected_at_least(1, DNS_DEADLINE).await?;
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
    let rejected = stack.rejected_at_least(1, DNS_DEADLINE).await?;
    ensure!(rejected.len() == 1, "rows were rejected: {rejected:?}");

    reconcile_finds_no_difference(&stack).await?;
    Ok(())
}

/// A PowerDNS-style generic records table: names without final dot, the
/// zone by reference to a zones table, priority in its own column.
const POWERDNS: &str = r#"
[[source]]
table = "pdns.records"
owner_column = "name"
type_column = "type"
rdata_column = "content"
rdata_by_type = { MX = "{prio} {content}", SRV = "{prio} {content}" }
ttl_column = "ttl"
ttl = 3600
[source.zones_table]
table = "pdns.domains"
column = "domain_id"
[source.filter]
is_false = ["disabled"]
"#;

const OTHER: &str = "other.test.";

/// A TXT value of three strings, 700 bytes in all.
fn long_txt() -> String {
    ["a", "b", "c"]
        .iter()
        .map(|c| format!("\"{}\"", c.repeat(230)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn three_zones(forward: &[Record], other: &[Record], reverse: &[Record]) -> ZoneRecords {
    let mut out = ZoneRecords::new();
    for (zone, records) in [(FORWARD, forward), (OTHER, other), (REVERSE, reverse)] {
        let mut records = records.to_vec();
        records.sort();
        out.insert(zone.to_string(), records);
    }
    out
}

/// Records of many types reach the primary from a records table whose rows
/// name their zone by `domain_id`; `disabled` toggles, a record moves to
/// another zone, a row of an unconfigured zone and a renamed zone are
/// recorded as rejections while the stream goes on, and after a restart the
/// zones table's rows are still known.
async fn a_powerdns_records_table_with_a_zones_table_publishes_every_type_and_follows_moves(
    primary: Primary,
) -> Result<()> {
    let label = format!("sources-pdns-{}", primary.label());
    let stack = Stack::start_split(
        &label,
        &[(FORWARD, primary), (OTHER, primary), (REVERSE, primary)],
    )
    .await?;
    stack
        .exec(
            "CREATE SCHEMA pdns;
             CREATE TABLE pdns.domains (id int PRIMARY KEY, name text NOT NULL UNIQUE, type text NOT NULL DEFAULT 'NATIVE');
             CREATE TABLE pdns.records (id bigserial PRIMARY KEY,
                 domain_id int REFERENCES pdns.domains(id) ON DELETE CASCADE,
                 name text, type text, content text, ttl int, prio int,
                 disabled bool NOT NULL DEFAULT false);",
        )
        .await?;
    stack.append_config(POWERDNS)?;
    stack.setup().await?;
    let mut pg2dns = stack.run()?;

    let txt = long_txt();
    stack
        .exec(&format!(
            "INSERT INTO pdns.domains (id, name) VALUES
               (1, 'example.test'), (2, 'other.test'), (3, 'nowhere.test'), (4, '2.0.192.in-addr.arpa');
             INSERT INTO pdns.records (domain_id, name, type, content, ttl, prio, disabled) VALUES
               (1, 'www.example.test', 'A', '192.0.2.10', 300, NULL, false),
               (1, 'www.example.test', 'AAAA', '2001:db8::10', 300, NULL, false),
               (1, 'alias.example.test', 'CNAME', 'www.example.test', 300, NULL, false),
               (1, 'mail.example.test', 'A', '192.0.2.25', 300, NULL, false),
               (1, 'example.test', 'MX', 'mail.example.test', 600, 10, false),
               (1, 'sip.example.test', 'A', '192.0.2.30', 300, NULL, false),
               (1, '_sip._tcp.example.test', 'SRV', '5 5060 sip.example.test', 300, 20, false),
               (1, 'txt.example.test', 'TXT', '{txt}', NULL, NULL, false),
               (1, 'example.test', 'CAA', '0 issue \"letsencrypt.org\"', 300, NULL, false),
               (1, 'sub.example.test', 'NS', 'ns1.sub.example.test', 300, NULL, false),
               (1, 'sub.example.test', 'NS', 'ns2.other.test.', 300, NULL, false),
               (1, 'ns1.sub.example.test', 'A', '192.0.2.53', 300, NULL, false),
               (1, 'off.example.test', 'A', '192.0.2.99', 300, NULL, true),
               (2, 'host.other.test', 'A', '192.0.2.40', 300, NULL, false),
               (4, '10.2.0.192.in-addr.arpa', 'PTR', 'www.example.test', 300, NULL, false),
               (3, 'x.nowhere.test', 'A', '192.0.2.1', 300, NULL, false);"
        ))
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
        Record::new("txt.example.test.", 3600, "TXT", &txt),
        Record::new("example.test.", 300, "CAA", "0 issue \"letsencrypt.org\""),
        Record::new("sub.example.test.", 300, "NS", "ns1.sub.example.test."),
        Record::new("sub.example.test.", 300, "NS", "ns2.other.test."),
        Record::new("ns1.sub.example.test.", 300, "A", "192.0.2.53"),
    ];
    let mut other = vec![Record::new("host.other.test.", 300, "A", "192.0.2.40")];
    let reverse = vec![Record::new(
        "10.2.0.192.in-addr.arpa.",
        300,
        "PTR",
        "www.example.test.",
    )];
    stack
        .wait_until_dns_equals(&three_zones(&forward, &other, &reverse), DNS_DEADLINE)
        .await?;
    let rejected = stack.rejected_at_least(1, DNS_DEADLINE).await?;
    ensure!(
        rejected.len() == 1
            && rejected[0].reason.contains("nowhere.test")
            && rejected[0].reason.contains("not a configured zone"),
        "expected one rejection naming the unconfigured zone, got {rejected:?}"
    );

    // Toggling disabled both ways; a record moving to another zone (its
    // domain_id and name change) leaves the first and appears in the other.
    stack
        .exec(
            "UPDATE pdns.records SET disabled = false WHERE name = 'off.example.test';
             UPDATE pdns.records SET disabled = true WHERE name = 'www.example.test' AND type = 'AAAA';
             UPDATE pdns.records SET domain_id = 2, name = 'mail.other.test' WHERE name = 'mail.example.test';
             UPDATE pdns.records SET content = 'mail.other.test' WHERE type = 'MX';",
        )
        .await?;
    forward.retain(|r| !(r.rtype == "AAAA" || r.owner == "mail.example.test." || r.rtype == "MX"));
    forward.push(Record::new("off.example.test.", 300, "A", "192.0.2.99"));
    forward.push(Record::new(
        "example.test.",
        600,
        "MX",
        "10 mail.other.test.",
    ));
    other.push(Record::new("mail.other.test.", 300, "A", "192.0.2.25"));
    stack
        .wait_until_dns_equals(&three_zones(&forward, &other, &reverse), DNS_DEADLINE)
        .await?;

    // The batch comparison resolves zones through the zones table too.
    reconcile_finds_no_difference(&stack).await?;

    // A restart keeps the zones table's rows (pg2dns.zone_ref): a zone
    // added while pg2dns is down is followed as well.
    pg2dns.kill()?;
    stack
        .exec(
            "INSERT INTO pdns.domains (id, name) VALUES (5, 'late.test');
             UPDATE pdns.records SET domain_id = 5, name = 'host.late.test' WHERE name = 'host.other.test';
             INSERT INTO pdns.records (domain_id, name, type, content, ttl) VALUES
               (1, 'after.example.test', 'A', '192.0.2.77', 300);",
        )
        .await?;
    let _pg2dns = stack.run()?;
    other.retain(|r| r.owner != "host.other.test.");
    forward.push(Record::new("after.example.test.", 300, "A", "192.0.2.77"));
    stack
        .wait_until_dns_equals(&three_zones(&forward, &other, &reverse), DNS_DEADLINE)
        .await?;
    // Rejections are recorded with the checkpoint, which may follow the
    // DNS answer by a moment.
    wait_until(
        DNS_DEADLINE,
        "the moved row refused for its unconfigured zone",
        || async {
            let rejected = stack.rejected().await?;
            Ok(
                if rejected.len() == 2 && rejected[1].reason.contains("late.test") {
                    Check::Done(())
                } else {
                    Check::NotYet(format!("{rejected:?}"))
                },
            )
        },
    )
    .await?;

    // A zones row renamed: recorded, naming both names; what its rows
    // published stays until they change, and rows changed later go to the
    // new name.
    stack
        .exec("UPDATE pdns.domains SET name = 'renamed.test' WHERE id = 2")
        .await?;
    wait_until(DNS_DEADLINE, "the rename to be recorded", || async {
        let rejected = stack.rejected().await?;
        Ok(
            match rejected.iter().find(|r| r.reason.contains("renamed")) {
                Some(r) if r.reason.contains("other.test") && r.reason.contains("renamed.test") => {
                    Check::Done(())
                }
                _ => Check::NotYet(format!("{rejected:?}")),
            },
        )
    })
    .await?;
    ensure!(
        stack.dns().await? == three_zones(&forward, &other, &reverse),
        "a rename changed DNS: {:?}",
        stack.dns().await?
    );
    Ok(())
}

on_each_primary!(
    a_powerdns_records_table_with_a_zones_table_publishes_every_type_and_follows_moves
);

/// A new deployment loads the records table through its zones table from
/// the slot's snapshot and keeps the zones table's rows as of that moment:
/// a rename committed after the snapshot but before `pg2dns run` is seen
/// as a rename when it streams (read as the table is now, it would not be).
/// A zones row deleted later leaves its rows unresolvable: refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_deployment_loads_through_the_zones_table_and_keeps_its_rows_as_of_the_snapshot(
) -> Result<()> {
    let stack = Stack::start("sources-pdns-first-load", Primary::Bind).await?;
    stack
        .exec(
            "CREATE SCHEMA pdns;
             CREATE TABLE pdns.domains (id int PRIMARY KEY, name text NOT NULL UNIQUE);
             CREATE TABLE pdns.records (id bigserial PRIMARY KEY, domain_id int, name text, type text,
                 content text, ttl int, prio int, disabled bool NOT NULL DEFAULT false);
             INSERT INTO pdns.domains (id, name) VALUES
               (1, 'example.test'), (2, '2.0.192.in-addr.arpa.'), (3, 'nowhere.test');
             INSERT INTO pdns.records (domain_id, name, type, content, ttl, prio) VALUES
               (1, 'www.example.test', 'A', '192.0.2.10', 300, NULL),
               (1, 'example.test', 'MX', 'www.example.test', 300, 5),
               (2, '10.2.0.192.in-addr.arpa', 'PTR', 'www.example.test', 300, NULL),
               (3, 'x.nowhere.test', 'A', '192.0.2.1', 300, NULL);",
        )
        .await?;
    // A new instance with its own slot: setup creates it and loads.
    let fresh = stack.dir().join("fresh.toml");
    let text = std::fs::read_to_string(stack.config_path())?;
    std::fs::write(
        &fresh,
        format!(
            "{}\n{POWERDNS}",
            text.replacen("slot = \"pg2dns\"", "slot = \"pg2dns_fresh\"", 1)
        ),
    )?;
    let setup = crate::harness::pg2dns::command("setup", &fresh).await?;
    ensure!(
        setup.status.success(),
        "setup failed:\n{}{}",
        String::from_utf8_lossy(&setup.stdout),
        String::from_utf8_lossy(&setup.stderr)
    );
    let mut forward = vec![
        Record::new("www.example.test.", 300, "A", "192.0.2.10"),
        Record::new("example.test.", 300, "MX", "5 www.example.test."),
    ];
    let reverse = vec![Record::new(
        "10.2.0.192.in-addr.arpa.",
        300,
        "PTR",
        "www.example.test.",
    )];
    ensure!(
        stack.dns().await? == zones(&forward, &reverse),
        "the first load published {:?}",
        stack.dns().await?
    );
    let kept: i64 = stack
        .db
        .query_one(
            "SELECT count(*) FROM pg2dns.zone_ref WHERE slot = 'pg2dns_fresh' AND source = 'pdns.domains'",
            &[],
        )
        .await?
        .get(0);
    ensure!(kept == 3, "pg2dns.zone_ref holds {kept} rows, not 3");

    stack
        .exec(
            "UPDATE pdns.domains SET name = 'renamed.test' WHERE id = 3;
             INSERT INTO pdns.records (domain_id, name, type, content, ttl) VALUES
               (1, 'late.example.test', 'A', '192.0.2.77', 300);",
        )
        .await?;
    let _pg2dns = crate::harness::Pg2dns::spawn(&fresh, &stack.dir().join("fresh.log"), &[])?;
    forward.push(Record::new("late.example.test.", 300, "A", "192.0.2.77"));
    stack
        .wait_until_dns_equals(&zones(&forward, &reverse), DNS_DEADLINE)
        .await?;
    wait_until(DNS_DEADLINE, "the rename to be recorded", || async {
        let rejected = stack.rejected().await?;
        Ok(
            match rejected.iter().find(|r| r.reason.contains("renamed zone")) {
                Some(r)
                    if r.reason.contains("\"nowhere.test\"")
                        && r.reason.contains("\"renamed.test\"") =>
                {
                    Check::Done(())
                }
                _ => Check::NotYet(format!("{rejected:?}")),
            },
        )
    })
    .await?;

    // A deleted zones row is forgotten: a row still referencing it is
    // refused when it changes, and its record leaves DNS.
    stack
        .exec(
            "DELETE FROM pdns.domains WHERE id = 2;
             UPDATE pdns.records SET ttl = 600 WHERE type = 'PTR';",
        )
        .await?;
    stack
        .wait_until_dns_equals(&zones(&forward, &[]), DNS_DEADLINE)
        .await?;
    wait_until(
        DNS_DEADLINE,
        "the PTR row refused for its deleted zone",
        || async {
            let rejected = stack.rejected().await?;
            Ok(
                if rejected.iter().any(|r| {
                    r.reason
                        .contains("\"2\", which is the key of no row of pdns.domains")
                }) {
                    Check::Done(())
                } else {
                    Check::NotYet(format!("{rejected:?}"))
                },
            )
        },
    )
    .await?;
    Ok(())
}

/// A partitioned source table (large IPAM tables often are): PostgreSQL
/// publishes a partition's changes under the partition's own name unless
/// the publication says otherwise, and a change of a table pg2dns does not
/// know is skipped. Every step here would leave DNS empty that way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_source_table_publishes_the_rows_of_every_partition() -> Result<()> {
    let stack = Stack::start("sources-partitioned", Primary::Bind).await?;
    // Partitioned by VRF, one partition itself partitioned by id; the key
    // includes the partition key, as PostgreSQL requires.
    stack
        .exec(
            "CREATE SCHEMA ipam;
             CREATE TABLE ipam.hosts (id int, name text, address inet, status text, vrf text NOT NULL,
                                      PRIMARY KEY (id, vrf)) PARTITION BY LIST (vrf);
             CREATE TABLE ipam.hosts_red PARTITION OF ipam.hosts FOR VALUES IN ('red');
             CREATE TABLE ipam.hosts_other PARTITION OF ipam.hosts DEFAULT PARTITION BY RANGE (id);
             CREATE TABLE ipam.hosts_other_low PARTITION OF ipam.hosts_other FOR VALUES FROM (MINVALUE) TO (100);
             CREATE TABLE ipam.hosts_other_high PARTITION OF ipam.hosts_other FOR VALUES FROM (100) TO (MAXVALUE);",
        )
        .await?;
    stack.append_config(&HOSTS.replace("ttl = 300\n", "ttl = 300\nkey = [\"id\", \"vrf\"]\n"))?;
    // The key is the partitioned table's primary key: its replica identity.
    let check = crate::harness::pg2dns::command("check-config", stack.config_path()).await?;
    ensure!(
        check.status.success(),
        "check-config refused the partitioned table:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    stack.setup().await?;
    // A second setup finds the table in the publication.
    stack.setup().await?;
    let _pg2dns = stack.run()?;

    stack
        .exec(
            "INSERT INTO ipam.hosts (id, name, address, status, vrf) VALUES
               (1, 'web1.example.test', '192.0.2.5/24', 'active', 'red'),
               (2, 'web2.example.test', '192.0.2.6/24', 'active', 'blue'),
               (200, 'web3.example.test', '192.0.2.7/24', 'active', 'green')",
        )
        .await?;
    let mut forward = vec![
        a("web1.example.test.", "192.0.2.5"),
        a("web2.example.test.", "192.0.2.6"),
        a("web3.example.test.", "192.0.2.7"),
    ];
    let mut reverse = vec![
        ptr(5, "web1.example.test."),
        ptr(6, "web2.example.test."),
        ptr(7, "web3.example.test."),
    ];
    stack
        .wait_until_dns_equals(&zones(&forward, &reverse), DNS_DEADLINE)
        .await?;

    // A row moved to another partition (PostgreSQL sends a delete and an
    // insert) under a new name; a row of a sub-partition deleted; a row
    // changed in place.
    stack
        .exec(
            "UPDATE ipam.hosts SET vrf = 'red', name = 'moved.example.test' WHERE id = 2;
             DELETE FROM ipam.hosts WHERE id = 200;
             UPDATE ipam.hosts SET address = '192.0.2.8/24' WHERE id = 1;",
        )
        .await?;
    forward = vec![
        a("web1.example.test.", "192.0.2.8"),
        a("moved.example.test.", "192.0.2.6"),
    ];
    reverse = vec![ptr(8, "web1.example.test."), ptr(6, "moved.example.test.")];
    stack
        .wait_until_dns_equals(&zones(&forward, &reverse), DNS_DEADLINE)
        .await?;
    let rejected = stack.rejected().await?;
    ensure!(rejected.is_empty(), "rows were rejected: {rejected:?}");

    // A TRUNCATE of the partitioned table empties every partition, and
    // comes as the table's own (a TRUNCATE of one partition alone is not
    // published at all: see docs/sources.md).
    stack.exec("TRUNCATE ipam.hosts").await?;
    stack
        .exec("INSERT INTO ipam.hosts (id, name, address, status, vrf) VALUES (300, 'probe.example.test', '192.0.2.9/24', 'active', 'blue')")
        .await?;
    forward = vec![a("probe.example.test.", "192.0.2.9")];
    reverse = vec![ptr(9, "probe.example.test.")];
    stack
        .wait_until_dns_equals(&zones(&forward, &reverse), DNS_DEADLINE)
        .await?;

    // The batch comparison reads the partitioned table whole.
    reconcile_finds_no_difference(&stack).await?;
    Ok(())
}
