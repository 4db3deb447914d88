use std::sync::Arc;

use super::*;
use crate::row::TextRow;

fn zones() -> Zones {
    Zones::new(
        [
            "example.test.",
            "sub.example.test.",
            "other.test.",
            "2.0.192.in-addr.arpa.",
            "192.in-addr.arpa.",
            "8.b.d.0.1.0.0.2.ip6.arpa.",
        ]
        .iter()
        .map(|z| ZoneName::parse(z).unwrap())
        .collect(),
    )
    .unwrap()
}

fn row(pairs: &[(&str, Option<&str>)]) -> TextRow {
    let columns: Arc<[String]> = pairs.iter().map(|(c, _)| c.to_string()).collect();
    TextRow::new(
        columns,
        pairs.iter().map(|(_, v)| v.map(String::from)).collect(),
    )
}

/// A row whose listed columns arrived as unchanged TOAST values.
struct Toasted<'a>(&'a TextRow, &'a [&'a str]);

impl RowView for Toasted<'_> {
    fn cell(&self, column: &str) -> Option<Cell<'_>> {
        if self.1.contains(&column) {
            Some(Cell::UnchangedToast)
        } else {
            self.0.cell(column)
        }
    }
}

fn hosts(ptr: bool) -> SourceMapping {
    SourceMapping::new(SourceSpec {
        table: "ipam.hosts".into(),
        key: vec!["id".into()],
        owner: Template::column("name"),
        names: Names::Absolute,
        zone: ZoneFrom::Owner,
        ttl: TtlFrom {
            column: None,
            default: 300,
        },
        data: Data::Address {
            column: "address".into(),
            ptr,
        },
        filters: vec![
            Filter::NonEmpty("name".into()),
            Filter::OneOf("status".into(), vec!["active".into()]),
        ],
    })
    .unwrap()
}

fn records_table() -> SourceMapping {
    SourceMapping::new(SourceSpec {
        table: "app.records".into(),
        key: vec!["id".into()],
        owner: Template::column("name"),
        names: Names::Relative,
        zone: ZoneFrom::Column("zone".into()),
        ttl: TtlFrom {
            column: Some("ttl".into()),
            default: 3600,
        },
        data: Data::Record {
            rtype: TypeFrom::Column("type".into()),
            rdata: Template::parse("{content}").unwrap(),
            by_type: Vec::new(),
        },
        filters: vec![Filter::IsFalse("disabled".into())],
    })
    .unwrap()
}

fn mx_table() -> SourceMapping {
    let mut spec = records_table().spec().clone();
    spec.data = Data::Record {
        rtype: TypeFrom::Column("type".into()),
        rdata: Template::parse("{prio} {content}").unwrap(),
        by_type: Vec::new(),
    };
    SourceMapping::new(spec).unwrap()
}

fn texts(wanted: &[Wanted], zones: &Zones) -> Vec<String> {
    wanted
        .iter()
        .map(|w| match w {
            Wanted::Record(d) => format!("{} @{}", d.record, zones.name(d.zone)),
            other => format!("{other:?}"),
        })
        .collect()
}

fn host(name: Option<&str>, address: Option<&str>, status: Option<&str>) -> TextRow {
    row(&[
        ("id", Some("1")),
        ("name", name),
        ("address", address),
        ("status", status),
        ("vrf", Some("red")),
    ])
}

#[test]
fn an_address_with_a_prefix_length_becomes_an_a_record_and_its_ptr() {
    let z = zones();
    let got = hosts(true)
        .records(
            &host(
                Some("web1.example.test"),
                Some("192.0.2.5/24"),
                Some("active"),
            ),
            &z,
        )
        .unwrap();
    assert_eq!(
        texts(&got, &z),
        [
            "web1.example.test. 300 IN A 192.0.2.5 @example.test.",
            "5.2.0.192.in-addr.arpa. 300 IN PTR web1.example.test. @2.0.192.in-addr.arpa.",
        ]
    );
}

#[test]
fn an_ipv6_address_becomes_aaaa_and_a_nibble_ptr() {
    let z = zones();
    let got = hosts(true)
        .records(
            &host(
                Some("v6.example.test."),
                Some("2001:db8::1/64"),
                Some("active"),
            ),
            &z,
        )
        .unwrap();
    assert_eq!(
        texts(&got, &z),
        [
            "v6.example.test. 300 IN AAAA 2001:db8::1 @example.test.",
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. 300 IN PTR v6.example.test. @8.b.d.0.1.0.0.2.ip6.arpa.",
        ]
    );
}

#[test]
fn the_ptr_goes_to_the_longest_reverse_zone_and_is_left_out_when_none_holds_it() {
    let z = zones();
    let got = hosts(true)
        .records(
            &host(Some("a.example.test"), Some("192.168.1.1"), Some("active")),
            &z,
        )
        .unwrap();
    assert_eq!(
        texts(&got, &z)[1],
        "1.1.168.192.in-addr.arpa. 300 IN PTR a.example.test. @192.in-addr.arpa."
    );
    let got = hosts(true)
        .records(
            &host(Some("a.example.test"), Some("10.0.0.1"), Some("active")),
            &z,
        )
        .unwrap();
    assert_eq!(
        texts(&got, &z),
        ["a.example.test. 300 IN A 10.0.0.1 @example.test."]
    );
    let got = hosts(false)
        .records(
            &host(Some("a.example.test"), Some("192.0.2.1"), Some("active")),
            &z,
        )
        .unwrap();
    assert_eq!(got.len(), 1, "no PTR unless configured");
}

#[test]
fn rows_failing_a_filter_want_nothing() {
    let z = zones();
    for (name, status) in [
        (Some(""), Some("active")),
        (Some("  "), Some("active")),
        (None, Some("active")),
        (Some("a.example.test"), Some("reserved")),
        (Some("a.example.test"), None),
    ] {
        let got = hosts(true)
            .records(&host(name, Some("192.0.2.1"), status), &z)
            .unwrap();
        assert!(got.is_empty(), "{name:?} {status:?}: {got:?}");
    }
}

#[test]
fn a_bad_address_is_refused_naming_the_column() {
    let z = zones();
    let err = hosts(true)
        .records(
            &host(Some("a.example.test"), Some("not-an-ip"), Some("active")),
            &z,
        )
        .unwrap_err();
    assert_eq!(
        *err.reason,
        Refusal::BadAddress {
            column: "address".into(),
            value: "not-an-ip".into()
        }
    );
    assert_eq!(
        host_address("10.1.2.3/24"),
        Some("10.1.2.3".parse().unwrap())
    );
    assert_eq!(host_address("10.1.2.3/"), None);
    assert_eq!(host_address("10.1.2.3/x"), None);
}

fn rec(
    name: &str,
    zone: &str,
    rtype: Option<&str>,
    content: &str,
    ttl: Option<&str>,
    disabled: &str,
) -> TextRow {
    row(&[
        ("id", Some("9")),
        ("zone", Some(zone)),
        ("name", Some(name)),
        ("type", rtype),
        ("content", Some(content)),
        ("ttl", ttl),
        ("prio", Some("10")),
        ("disabled", Some(disabled)),
    ])
}

#[test]
fn relative_names_join_their_zone_column_and_the_apex_is_empty_or_at() {
    let z = zones();
    let m = records_table();
    let one = |name: &str, zone: &str| {
        texts(
            &m.records(
                &rec(name, zone, Some("A"), "192.0.2.1", Some("60"), "f"),
                &z,
            )
            .unwrap(),
            &z,
        )
    };
    assert_eq!(
        one("www", "example.test"),
        ["www.example.test. 60 IN A 192.0.2.1 @example.test."]
    );
    assert_eq!(
        one("", "example.test."),
        ["example.test. 60 IN A 192.0.2.1 @example.test."]
    );
    assert_eq!(
        one("@", "example.test."),
        ["example.test. 60 IN A 192.0.2.1 @example.test."]
    );
    // The zone column decides, even where a longer configured zone matches.
    assert_eq!(
        one("a.sub", "example.test"),
        ["a.sub.example.test. 60 IN A 192.0.2.1 @example.test."]
    );
    assert_eq!(
        one("x.other.test.", "other.test"),
        ["x.other.test. 60 IN A 192.0.2.1 @other.test."]
    );
}

#[test]
fn a_zone_column_naming_no_configured_zone_or_an_owner_outside_it_is_refused() {
    let z = zones();
    let m = records_table();
    let err = m
        .records(
            &rec("www", "nowhere.test", Some("A"), "192.0.2.1", None, "f"),
            &z,
        )
        .unwrap_err();
    assert!(
        matches!(*err.reason, Refusal::ZoneNotConfigured { .. }),
        "{err:?}"
    );
    let err = m
        .records(
            &rec(
                "www.other.test.",
                "example.test",
                Some("A"),
                "192.0.2.1",
                None,
                "f",
            ),
            &z,
        )
        .unwrap_err();
    assert!(
        matches!(*err.reason, Refusal::OwnerNotInZone { .. }),
        "{err:?}"
    );
}

#[test]
fn the_ttl_column_falls_back_to_the_default_and_a_bad_ttl_is_refused() {
    let z = zones();
    let m = records_table();
    let got = m
        .records(
            &rec("www", "example.test", Some("A"), "192.0.2.1", None, "f"),
            &z,
        )
        .unwrap();
    assert_eq!(
        texts(&got, &z),
        ["www.example.test. 3600 IN A 192.0.2.1 @example.test."]
    );
    let err = m
        .records(
            &rec(
                "www",
                "example.test",
                Some("A"),
                "192.0.2.1",
                Some("-5"),
                "f",
            ),
            &z,
        )
        .unwrap_err();
    assert_eq!(
        *err.reason,
        Refusal::Record(RecordError::BadTtl("-5".into()))
    );
}

#[test]
fn a_null_type_or_a_disabled_row_wants_nothing_and_a_bad_type_is_refused() {
    let z = zones();
    let m = records_table();
    assert!(m
        .records(
            &rec("www", "example.test", None, "192.0.2.1", None, "f"),
            &z
        )
        .unwrap()
        .is_empty());
    assert!(m
        .records(
            &rec("www", "example.test", Some("A"), "192.0.2.1", None, "t"),
            &z
        )
        .unwrap()
        .is_empty());
    let err = m
        .records(&rec("www", "example.test", Some("SOA"), "x", None, "f"), &z)
        .unwrap_err();
    assert_eq!(
        *err.reason,
        Refusal::Record(RecordError::BadType("SOA".into()))
    );
    let err = m
        .records(
            &rec("www", "example.test", Some("A"), "192.0.2.1", None, "maybe"),
            &z,
        )
        .unwrap_err();
    assert!(matches!(*err.reason, Refusal::NotBoolean { .. }), "{err:?}");
}

#[test]
fn a_template_joins_priority_and_content_into_mx_and_srv_data() {
    let z = zones();
    let m = mx_table();
    let got = m
        .records(
            &rec(
                "@",
                "example.test",
                Some("MX"),
                "mail.example.test.",
                None,
                "f",
            ),
            &z,
        )
        .unwrap();
    assert_eq!(
        texts(&got, &z),
        ["example.test. 3600 IN MX 10 mail.example.test. @example.test."]
    );
    let got = m
        .records(
            &rec(
                "_sip._tcp",
                "example.test",
                Some("SRV"),
                "5 5060 sip.example.test.",
                None,
                "f",
            ),
            &z,
        )
        .unwrap();
    assert_eq!(
        texts(&got, &z),
        ["_sip._tcp.example.test. 3600 IN SRV 10 5 5060 sip.example.test. @example.test."]
    );
}

#[test]
fn a_fixed_type_and_ttl_with_an_owner_template() {
    let z = zones();
    let m = SourceMapping::new(SourceSpec {
        table: "app.aliases".into(),
        key: vec!["id".into()],
        owner: Template::parse("{alias}.example.test.").unwrap(),
        names: Names::Absolute,
        zone: ZoneFrom::Owner,
        ttl: TtlFrom {
            column: None,
            default: 120,
        },
        data: Data::Record {
            rtype: TypeFrom::Fixed(RType::CNAME),
            rdata: Template::parse("{target}.").unwrap(),
            by_type: Vec::new(),
        },
        filters: vec![Filter::IsTrue("enabled".into())],
    })
    .unwrap();
    let r = row(&[
        ("id", Some("3")),
        ("alias", Some("shop")),
        ("target", Some("www.example.test")),
        ("enabled", Some("t")),
    ]);
    assert_eq!(
        texts(&m.records(&r, &z).unwrap(), &z),
        ["shop.example.test. 120 IN CNAME www.example.test. @example.test."]
    );
    let r = row(&[
        ("id", Some("3")),
        ("alias", Some("shop")),
        ("target", Some("www.example.test")),
        ("enabled", None),
    ]);
    assert!(m.records(&r, &z).unwrap().is_empty(), "NULL is not true");
}

#[test]
fn keys_of_several_columns_join_as_a_json_array_and_a_null_key_is_none() {
    let mut spec = hosts(false).spec().clone();
    spec.key = vec!["vrf".into(), "id".into()];
    let m = SourceMapping::new(spec).unwrap();
    let r = host(Some("a"), None, None);
    assert_eq!(m.key(&r), Some(RowKey("[\"red\",\"1\"]".into())));
    let r = row(&[("vrf", Some("a\",\"b")), ("id", Some("1"))]);
    assert_eq!(m.key(&r), Some(RowKey("[\"a\\\",\\\"b\",\"1\"]".into())));
    let r = row(&[("vrf", None), ("id", Some("1"))]);
    assert_eq!(m.key(&r), None);
    assert_eq!(
        hosts(false).key(&host(None, None, None)),
        Some(RowKey("1".into()))
    );
}

#[test]
fn an_unchanged_toast_data_column_is_taken_from_state_any_other_is_refused() {
    let z = zones();
    let m = records_table();
    let base = rec("txt", "example.test", Some("TXT"), "\"x\"", Some("60"), "f");
    let got = m.records(&Toasted(&base, &["content"]), &z).unwrap();
    assert_eq!(
        got,
        [Wanted::FromState {
            zone: ZoneId(0),
            owner: Owner::parse("txt.example.test.").unwrap(),
            rtype: RType::TXT,
            ttl: 60,
        }]
    );
    for column in ["name", "zone", "type", "disabled", "ttl"] {
        let err = m.records(&Toasted(&base, &[column]), &z).unwrap_err();
        assert_eq!(
            *err.reason,
            Refusal::ToastWithoutState {
                column: column.into()
            },
            "{column}"
        );
    }
    // The content column of a template is not the whole data: refused.
    let err = mx_table()
        .records(&Toasted(&base, &["content"]), &z)
        .unwrap_err();
    assert_eq!(
        *err.reason,
        Refusal::ToastWithoutState {
            column: "content".into()
        }
    );
    let err = hosts(true)
        .records(
            &Toasted(
                &host(Some("a.example.test"), Some("192.0.2.1"), Some("active")),
                &["address"],
            ),
            &z,
        )
        .unwrap_err();
    assert_eq!(
        *err.reason,
        Refusal::ToastWithoutState {
            column: "address".into()
        }
    );
}

#[test]
fn templates_parse_placeholders_and_escaped_braces() {
    let t = Template::parse("{prio} {{x}} {content}").unwrap();
    assert_eq!(t.columns().collect::<Vec<_>>(), ["prio", "content"]);
    assert_eq!(
        t.render(&row(&[("prio", Some("1")), ("content", Some("c"))]))
            .unwrap(),
        "1 {x} c"
    );
    for bad in ["{", "}", "{}", "no column", "{a"] {
        assert!(Template::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(Template::column("name").single_column(), Some("name"));
    assert_eq!(Template::parse("{a}.x").unwrap().single_column(), None);
}

#[test]
fn a_spec_needs_a_qualified_table_a_key_and_a_zone_column_for_relative_names() {
    let mut spec = hosts(false).spec().clone();
    spec.table = "hosts".into();
    assert!(matches!(SourceMapping::new(spec), Err(SpecError::Table(_))));
    let mut spec = hosts(false).spec().clone();
    spec.key.clear();
    assert!(SourceMapping::new(spec).is_err());
    let mut spec = hosts(false).spec().clone();
    spec.names = Names::Relative;
    assert!(SourceMapping::new(spec).is_err());
    let m = hosts(true);
    assert!(m.matches("ipam", "hosts"));
    assert!(!m.matches("public", "hosts"));
    assert_eq!(m.source(), "ipam.hosts");
    assert_eq!(m.columns(), ["id", "name", "address", "status"]);
    let d = m.describe(&zones());
    assert!(
        d.starts_with("ipam.hosts: A/AAAA from address, PTR in 2.0.192.in-addr.arpa."),
        "{d}"
    );
}

#[test]
fn two_rows_claiming_one_address_want_the_same_ptr_and_two_names_give_two_ptrs() {
    // The planner counts producers per record: the same (owner, type,
    // rdata) from two rows is one record held twice.
    let z = zones();
    let m = hosts(true);
    let a = m
        .records(
            &host(Some("a.example.test"), Some("192.0.2.7"), Some("active")),
            &z,
        )
        .unwrap();
    let a2 = m
        .records(
            &host(
                Some("A.example.test."),
                Some("192.0.2.7/25"),
                Some("active"),
            ),
            &z,
        )
        .unwrap();
    assert_eq!(a, a2);
    let b = m
        .records(
            &host(Some("b.example.test"), Some("192.0.2.7"), Some("active")),
            &z,
        )
        .unwrap();
    assert_ne!(a[1], b[1]);
}

#[test]
fn a_per_type_template_applies_to_its_type_only() {
    let z = zones();
    let mut spec = records_table().spec().clone();
    spec.data = Data::Record {
        rtype: TypeFrom::Column("type".into()),
        rdata: Template::column("content"),
        by_type: vec![(RType::MX, Template::parse("{prio} {content}").unwrap())],
    };
    let m = SourceMapping::new(spec).unwrap();
    let got = m
        .records(
            &row(&[
                ("id", Some("1")),
                ("zone", Some("example.test")),
                ("name", Some("www")),
                ("type", Some("A")),
                ("content", Some("192.0.2.1")),
                ("ttl", None),
                ("prio", None),
                ("disabled", Some("f")),
            ]),
            &z,
        )
        .unwrap();
    assert_eq!(
        texts(&got, &z),
        ["www.example.test. 3600 IN A 192.0.2.1 @example.test."]
    );
    let got = m
        .records(
            &rec(
                "@",
                "example.test",
                Some("mx"),
                "mail.example.test.",
                None,
                "f",
            ),
            &z,
        )
        .unwrap();
    assert_eq!(
        texts(&got, &z),
        ["example.test. 3600 IN MX 10 mail.example.test. @example.test."]
    );
}

fn powerdns_records() -> (SourceMapping, zones_table::ZonesTable) {
    let domains = zones_table::ZonesTable {
        table: "pdns.domains".into(),
        key: "id".into(),
        name: "name".into(),
    };
    let mut spec = records_table().spec().clone();
    spec.table = "pdns.records".into();
    spec.names = Names::Absolute;
    spec.zone = ZoneFrom::Table {
        column: "domain_id".into(),
        table: domains.clone(),
    };
    spec.data = Data::Record {
        rtype: TypeFrom::Column("type".into()),
        rdata: Template::column("content"),
        by_type: vec![
            (RType::MX, Template::parse("{prio} {content}").unwrap()),
            (RType::SRV, Template::parse("{prio} {content}").unwrap()),
        ],
    };
    (SourceMapping::new(spec).unwrap(), domains)
}

fn pdns(domain_id: &str, name: &str, rtype: &str, content: &str) -> TextRow {
    row(&[
        ("id", Some("4")),
        ("domain_id", Some(domain_id)),
        ("name", Some(name)),
        ("type", Some(rtype)),
        ("content", Some(content)),
        ("ttl", None),
        ("prio", Some("10")),
        ("disabled", Some("f")),
    ])
}

#[test]
fn a_zone_id_resolves_through_the_zones_table_and_an_unknown_or_unconfigured_zone_is_refused() {
    let (m, domains) = powerdns_records();
    let mut z = zones();
    z.refs_mut().set(&domains.table, "1", Some("Example.TEST"));
    z.refs_mut().set(&domains.table, "2", Some("other.test."));
    z.refs_mut().set(&domains.table, "3", Some("nowhere.test"));
    let one = |row: &TextRow| m.records(row, &z).map(|w| texts(&w, &z));
    assert_eq!(
        one(&pdns("1", "www.example.test", "A", "192.0.2.1")).unwrap(),
        ["www.example.test. 3600 IN A 192.0.2.1 @example.test."]
    );
    // The referenced row decides, even where a longer zone holds the owner.
    assert_eq!(
        one(&pdns("1", "a.sub.example.test", "A", "192.0.2.1")).unwrap(),
        ["a.sub.example.test. 3600 IN A 192.0.2.1 @example.test."]
    );
    let reason = |row: &TextRow| *m.records(row, &z).unwrap_err().reason;
    assert_eq!(
        reason(&pdns("7", "www.example.test", "A", "192.0.2.1")),
        Refusal::Reference(zones_table::ReferenceError::NoZoneRow {
            column: "domain_id".into(),
            value: "7".into(),
            table: "pdns.domains".into(),
        })
    );
    assert!(matches!(
        reason(&pdns("3", "www.nowhere.test", "A", "192.0.2.1")),
        Refusal::ZoneNotConfigured { zone, .. } if zone == "nowhere.test"
    ));
    assert!(matches!(
        reason(&pdns("2", "www.example.test", "A", "192.0.2.1")),
        Refusal::OwnerNotInZone { .. }
    ));
}

#[test]
fn a_zones_row_renamed_is_refused_naming_both_names_but_a_new_spelling_is_not() {
    let (_, domains) = powerdns_records();
    let mut z = zones();
    z.refs_mut().set(&domains.table, "1", Some("example.test"));
    let zrow = |name: &str| row(&[("id", Some("1")), ("name", Some(name))]);
    assert_eq!(domains.records(&zrow("EXAMPLE.test."), &z), Ok(Vec::new()));
    let err = domains.records(&zrow("other.test"), &z).unwrap_err();
    assert_eq!(
        *err.reason,
        Refusal::Reference(zones_table::ReferenceError::Renamed {
            table: "pdns.domains".into(),
            key: "1".into(),
            from: "example.test".into(),
            to: "other.test".into(),
        })
    );
    // A row not known before is new, not renamed.
    let fresh = row(&[("id", Some("2")), ("name", Some("other.test"))]);
    assert_eq!(domains.records(&fresh, &z), Ok(Vec::new()));
    assert_eq!(Mapping::key(&domains, &fresh), Some(RowKey("2".into())));
}

#[test]
fn names_without_final_dot_inside_record_data_are_absolute_or_relative_as_configured() {
    let (m, domains) = powerdns_records();
    let mut z = zones();
    z.refs_mut().set(&domains.table, "1", Some("example.test"));
    let one = |rtype: &str, content: &str| {
        m.records(&pdns("1", "x.example.test", rtype, content), &z)
            .map(|w| texts(&w, &z))
    };
    assert_eq!(
        one("CNAME", "www.example.test").unwrap(),
        ["x.example.test. 3600 IN CNAME www.example.test. @example.test."]
    );
    assert_eq!(
        one("MX", "mail.example.test").unwrap(),
        ["x.example.test. 3600 IN MX 10 mail.example.test. @example.test."]
    );
    assert_eq!(
        one("SRV", "5 5060 sip.example.test").unwrap(),
        ["x.example.test. 3600 IN SRV 10 5 5060 sip.example.test. @example.test."]
    );
    assert_eq!(
        one("NS", "ns1.other.test.").unwrap(),
        ["x.example.test. 3600 IN NS ns1.other.test. @example.test."]
    );
    // Relative: to the row's zone, `@` the apex.
    let zone = ZoneName::parse("example.test.").unwrap();
    let rel = |t, text| qualify_targets(t, text, Names::Relative, &zone);
    assert_eq!(rel(RType::CNAME, "www"), "www.example.test.");
    assert_eq!(rel(RType::PTR, "@"), "example.test.");
    assert_eq!(rel(RType::MX, "10  mail"), "10 mail.example.test.");
    assert_eq!(
        rel(RType::SRV, "1 2 3 sip.other.test."),
        "1 2 3 sip.other.test."
    );
    // An escaped final dot is part of the last label: still relative.
    assert_eq!(rel(RType::CNAME, "a\\."), "a\\..example.test.");
    assert_eq!(rel(RType::CNAME, "a\\\\."), "a\\\\.");
    // Other types, and a wrong field count, are left to the parser.
    assert_eq!(rel(RType::TXT, "www"), "www");
    assert_eq!(rel(RType::MX, "mail"), "mail");
    assert!(one("MX", "mail extra").is_err());
}

/// `pg2dns setup --with-plugin` hands a source's spec to the extension's
/// trigger as JSON: it must come back the same, templates and types included.
#[cfg(feature = "serde")]
#[test]
fn a_spec_survives_json_with_its_templates_types_and_filters() {
    let mut records = records_table().spec().clone();
    records.data = Data::Record {
        rtype: TypeFrom::Fixed(RType::parse("MX").unwrap()),
        rdata: Template::parse("{prio} {content} {{literal}}").unwrap(),
        by_type: vec![(
            RType::parse("SRV").unwrap(),
            Template::parse("{prio} {content}").unwrap(),
        )],
    };
    for spec in [hosts(true).spec().clone(), records] {
        let json = serde_json::to_string(&spec).unwrap();
        let back: SourceSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec, "{json}");
    }
    let bad = r#"{"table":"a.b","key":["id"],"owner":"{name","names":"Absolute","zone":"Owner","ttl":{"column":null,"default":300},"data":{"Address":{"column":"a","ptr":false}},"filters":[]}"#;
    assert!(serde_json::from_str::<SourceSpec>(bad).is_err());
}
