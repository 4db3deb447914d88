use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn zone() -> ZoneName {
    ZoneName::parse("example.test.").unwrap()
}

/// A loader over a fixed set of files.
fn files(set: &[(&str, &str)]) -> impl FnMut(&str, &str) -> Result<Loaded, String> {
    let map: BTreeMap<String, String> = set
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |path, _from| {
        map.get(path)
            .map(|text| Loaded {
                name: path.to_owned(),
                text: text.clone(),
            })
            .ok_or_else(|| "no such file".to_owned())
    }
}

fn no_files() -> impl FnMut(&str, &str) -> Result<Loaded, String> {
    files(&[])
}

fn read(text: &str) -> Result<ZoneFile, ZoneFileError> {
    parse(&zone(), "db.test", text, &mut no_files())
}

fn sorted(mut records: Vec<Record>) -> Vec<Record> {
    records.sort_by(|a, b| {
        (&a.owner, a.rtype, &a.rdata, a.ttl).cmp(&(&b.owner, b.rtype, &b.rdata, b.ttl))
    });
    records
}

const GENERATOR: &str = include_str!("testdata/db.example.test");
const HOSTS: &str = include_str!("testdata/hosts.inc");
const REVERSE: &str = include_str!("testdata/reverse.inc");
/// `named-compilezone -q -i none -o canonical.db example.test db.example.test`
/// (BIND 9.18) of the three files above.
const CANONICAL: &str = include_str!("testdata/canonical.db");

#[test]
fn a_generator_style_file_reads_as_named_compilezone_reads_it() {
    let mut load = files(&[("hosts.inc", HOSTS), ("reverse.inc", REVERSE)]);
    let ours = parse(&zone(), "db.example.test", GENERATOR, &mut load).unwrap();
    let bind = parse(&zone(), "canonical.db", CANONICAL, &mut no_files()).unwrap();
    assert_eq!(sorted(ours.records.clone()), sorted(bind.records.clone()));
    // Not an empty agreement: 26 records in BIND's output, the DS (a type
    // pg2dns publishes since #23) among them, its digest split by BIND.
    assert_eq!(bind.records.len(), 26);
    assert!(ours.skipped.is_empty() && bind.skipped.is_empty());
    assert_eq!(
        ours.records
            .iter()
            .filter(|r| r.rtype == RType::DS)
            .map(|r| format!("{} {}", r.owner, r.rdata_text()))
            .collect::<Vec<_>>(),
        vec!["sec.example.test. 12345 13 2 1f987cc6583e92df0890718c42b2b6a09d10e7c9e8b9b7d7ba95aa80c81d3ab1"]
    );
    let soa = ours.soa().unwrap();
    assert_eq!(soa.ttl, 3600);
    assert_eq!(
        write(&zone(), std::slice::from_ref(soa)).lines().nth(1),
        Some("example.test. 3600 IN SOA ns1.example.test. hostmaster.example.test. 2026120701 10800 900 604800 300")
    );
}

#[test]
fn a_generator_style_file_gives_the_hand_checked_records() {
    let mut load = files(&[("hosts.inc", HOSTS), ("reverse.inc", REVERSE)]);
    let ours = parse(&zone(), "db.example.test", GENERATOR, &mut load).unwrap();
    let text: Vec<String> = ours.records.iter().map(ToString::to_string).collect();
    for expected in [
        "example.test. 3600 IN MX 10 mail.example.test.",
        "mail.example.test. 600 IN AAAA 2001:db8::25",
        "web.example.test. 3600 IN A 192.0.2.81",
        "web2.example.test. 300 IN A 192.0.2.82",
        "txt.example.test. 3600 IN TXT \"semi;colon in quotes\" \"quote\\\"inside\" \"back\\\\slash\"",
        "txt.example.test. 3600 IN TXT \"spans\" \"two lines\"",
        "esc\\.dot.example.test. 3600 IN TXT \"an escaped dot in the owner\"",
        "_sip._tcp.example.test. 3600 IN SRV 10 60 5060 sip.example.test.",
        "h2.example.test. 300 IN A 192.0.2.12",
        "h2.example.test. 3600 IN HINFO \"PC Intel\" \"Linux 6\"",
        "sub.example.test. 3600 IN NS ns1.example.test.",
        "host.sub.example.test. 3600 IN A 192.0.2.200",
        "after.example.test. 3600 IN A 192.0.2.99",
    ] {
        assert!(text.contains(&expected.to_owned()), "{expected} not in {text:#?}");
    }
    // `\195\169` and a literal é are the same two bytes.
    let cafe: Vec<&Record> = ours
        .records
        .iter()
        .filter(|r| r.owner.to_string() == "txt.example.test." && r.rdata_text().contains("caf"))
        .collect();
    assert_eq!(cafe.len(), 1);
    assert_eq!(cafe[0].rdata.as_wire(), b"\x0fcaf\xc3\xa9 and caf\xc3\xa9");
}

#[test]
fn ttl_and_class_come_in_either_order_and_default_from_ttl_then_the_previous_record() {
    let z = read(
        "$ORIGIN example.test.\n\
         a 60 IN A 192.0.2.1\n\
         b IN 70 A 192.0.2.2\n\
         c A 192.0.2.3\n\
         $TTL 2m\n\
         d A 192.0.2.4\n\
         e 1h30m A 192.0.2.5\n",
    )
    .unwrap();
    let ttls: Vec<u32> = z.records.iter().map(|r| r.ttl).collect();
    assert_eq!(ttls, [60, 70, 70, 120, 5400]);
}

#[test]
fn a_reverse_zone_with_numeric_owners_and_relative_targets_reads() {
    let zone = ZoneName::parse("2.0.192.in-addr.arpa.").unwrap();
    let text = "$TTL 300\r\n@ SOA ns1.example.net. hm.example.net. 1 2 3 4 5\r\n\
                10 PTR www.example.test.\r\n\
                11 600 PTR host\r\n\
                $ORIGIN 1.2.0.192.in-addr.arpa.\n";
    let z = parse(&zone, "rev", text, &mut no_files()).unwrap();
    let text: Vec<String> = z.records.iter().skip(1).map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "10.2.0.192.in-addr.arpa. 300 IN PTR www.example.test.",
            "11.2.0.192.in-addr.arpa. 600 IN PTR host.2.0.192.in-addr.arpa.",
        ]
    );
}

#[test]
fn an_unreadable_line_names_the_file_and_line() {
    let err =
        read("$TTL 300\n@ SOA ns1 hm 1 2 3 4 5\nok A 192.0.2.1\nbad A 192.0.2.300\n").unwrap_err();
    assert_eq!((err.file.as_str(), err.line), ("db.test", 4));
    let text = crate::error_chain(&err);
    assert!(text.starts_with("db.test line 4: "), "{text}");
    assert!(text.contains("192.0.2.300"), "{text}");

    // Inside an included file: that file's name and line.
    let mut load = files(&[("inc", "ok A 192.0.2.1\n\n  A nope\n")]);
    let err = parse(&zone(), "db.test", "$TTL 1\n$INCLUDE inc\n", &mut load).unwrap_err();
    assert_eq!((err.file.as_str(), err.line), ("inc", 3));

    // An entry spanning lines is named by the line it starts on.
    let err = read("$TTL 1\n\nx TXT ( \"a\"\n \"b\" \n").unwrap_err();
    assert_eq!(err.line, 3, "{err}");
    assert!(crate::error_chain(&err).contains("never closed"), "{err}");
}

#[test]
fn what_the_reader_refuses() {
    for (text, line, words) in [
        ("$TTL 1\nx CH A 192.0.2.1\n", 2, "class CH"),
        (
            "$TTL 1\nx A 192.0.2.1\nother.invalid. A 192.0.2.1\n",
            3,
            "outside zone",
        ),
        ("$GENERATE 1-3 h$ A 192.0.2.$\n", 1, "$GENERATE"),
        ("$INCLUDE missing.inc\n", 1, "no such file"),
        ("$BOGUS x\n", 1, "unknown directive"),
        ("x A 192.0.2.1\n", 1, "no TTL"),
        ("$TTL 1\n  A 192.0.2.1\n", 2, "without an owner"),
        ("$TTL 1\nx BOGUS 1\n", 2, "not a record type"),
        ("$TTL 1\nx TXT \"open\n", 2, "never closed"),
        ("$TTL 1\nx A 192.0.2.1 )\n", 2, "without its '('"),
        ("$TTL 99999999999\n", 1, "invalid TTL"),
        ("$TTL 1\n@ SOA ns1 hm 1 2 3\n", 2, "SOA data"),
        ("$TTL 1\nx MX 10\n", 2, "exchange"),
    ] {
        let err = read(text).unwrap_err();
        let msg = crate::error_chain(&err);
        assert_eq!(err.line, line, "{text:?}: {msg}");
        assert!(msg.contains(words), "{text:?}: {msg}");
    }
}

#[test]
fn an_include_that_includes_itself_ends_with_an_error() {
    let mut load = files(&[("loop.inc", "$INCLUDE loop.inc\n")]);
    let err = parse(&zone(), "db", "$INCLUDE loop.inc\n", &mut load).unwrap_err();
    assert!(crate::error_chain(&err).contains("nest deeper"), "{err}");
}

#[test]
fn the_written_zone_reads_back_the_same() {
    let mut load = files(&[("hosts.inc", HOSTS), ("reverse.inc", REVERSE)]);
    let first = parse(&zone(), "db.example.test", GENERATOR, &mut load).unwrap();
    let mut records = first.records.clone();
    // A type with no presentation form here goes out in generic form.
    records.push(Record {
        owner: Owner::parse("k.example.test.").unwrap(),
        rtype: RType(65280),
        ttl: 60,
        rdata: Rdata::from_wire(&[1, 0, 3, 13, 0xab]),
    });
    let text = write(&zone(), &records);
    assert!(
        text.contains("k.example.test. 60 IN TYPE65280 \\# 5 0100030dab"),
        "{text}"
    );
    let again = read(&text).unwrap();
    assert_eq!(sorted(again.records), sorted(first.records));
    assert_eq!(again.skipped.len(), 1);
}

fn rec(text: &str) -> Record {
    let mut parts = text.splitn(4, ' ');
    let (o, t, ty, d) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    Record::parse(o, t.parse().unwrap(), ty, d).unwrap()
}

#[test]
fn the_three_way_comparison_names_the_sides_that_hold_each_record() {
    let file = read(
        "$ORIGIN example.test.\n$TTL 300\n\
         @ SOA ns1 hm 1 2 3 4 5\n\
         @ NS ns1\n\
         ns1 A 192.0.2.1\n\
         same A 192.0.2.10\n\
         fileonly A 192.0.2.20\n\
         ttl 600 A 192.0.2.30\n\
         notindns A 192.0.2.40\n",
    )
    .unwrap();
    let desired = [
        rec("same.example.test. 300 A 192.0.2.10"),
        rec("ttl.example.test. 300 A 192.0.2.30"),
        rec("notindns.example.test. 300 A 192.0.2.40"),
        rec("dbonly.example.test. 300 A 192.0.2.50"),
    ];
    let mut actual = file.records.clone();
    actual.retain(|r| !r.owner.to_string().starts_with("notindns"));
    actual.push(rec("dnsonly.example.test. 300 A 192.0.2.60"));
    actual.push(rec("dbonly.example.test. 300 A 192.0.2.50"));
    let dns = crate::diff::diff(&zone(), &desired, &actual);
    let t = three_way(&zone(), &file, &desired, Some(&dns), &Exclusions::default());
    type Sides = (String, Option<u32>, Option<u32>, Option<Option<u32>>);
    let got: Vec<Sides> = t
        .records
        .iter()
        .map(|r| (r.record.owner.to_string(), r.file, r.database, r.dns))
        .collect();
    // Hand-checked: the SOA, the apex NS and its address are not owned (the
    // database lists no apex NS); `same` agrees everywhere. Owners come in
    // wire order (a shorter first label first).
    assert_eq!(
        got,
        [
            (
                "ttl.example.test.".into(),
                Some(600),
                Some(300),
                Some(Some(600))
            ),
            (
                "dbonly.example.test.".into(),
                None,
                Some(300),
                Some(Some(300))
            ),
            ("dnsonly.example.test.".into(), None, None, Some(Some(300))),
            (
                "fileonly.example.test.".into(),
                Some(300),
                None,
                Some(Some(300))
            ),
            (
                "notindns.example.test.".into(),
                Some(300),
                Some(300),
                Some(None)
            ),
        ]
    );
    assert!(!t.agrees());
    assert_eq!(t.file_vs_database.missing(), 1);
    assert_eq!(t.file_vs_database.extra(), 1);
    assert_eq!(t.file_vs_database.ttl_differences(), 1);
    // Without DNS: two sides.
    let t = three_way(&zone(), &file, &desired, None, &Exclusions::default());
    assert_eq!(t.records.len(), 3);
    assert!(t.records.iter().all(|r| r.dns.is_none()));
    // All agree.
    let wanted: Vec<Record> = file
        .records
        .iter()
        .filter(|r| r.rtype == RType::A && r.owner.to_string() != "ns1.example.test.")
        .cloned()
        .collect();
    let dns = crate::diff::diff(&zone(), &wanted, &file.records);
    assert!(three_way(&zone(), &file, &wanted, Some(&dns), &Exclusions::default()).agrees());
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = read(&text);
    }

    #[test]
    fn random_zone_like_text_never_panics(text in "[ \t\n();\"\\\\$@a-zA-Z0-9.é]{0,300}") {
        let _ = read(&text);
        let _ = read(&format!("$TTL 1\n{text}"));
    }
}

#[test]
fn relative_names_in_dname_rp_and_afsdb_are_completed_from_the_origin() {
    let text = "$ORIGIN example.test.\n$TTL 300\n\
                old DNAME new\n\
                @ RP admin info.other.test.\n\
                afs AFSDB 1 db1\n\
                loc LOC 52 22 23 N 4 53 32 E -2m\n";
    let zone = read(text).unwrap();
    let got: Vec<String> = zone.records.iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [
            "old.example.test. 300 IN DNAME new.example.test.",
            "example.test. 300 IN RP admin.example.test. info.other.test.",
            "afs.example.test. 300 IN AFSDB 1 db1.example.test.",
            "loc.example.test. 300 IN LOC 52 22 23.000 N 4 53 32.000 E -2.00m 1.00m 10000.00m 10.00m",
        ]
    );
    assert!(zone.skipped.is_empty());
}
