//! Resource records as pg2dns carries them: parsed once, from the row, and
//! kept in wire form through row state, plan and encoding.
//!
//! Names are fully qualified and ASCII lower-cased, so two rows naming the
//! same owner in different case contribute the same record: RFC 4343 §3 says
//! "comparisons on name lookup for DNS queries should be case insensitive",
//! and the servers compare names inside record data the same way. Record data
//! is the exact wire form [`crate::rdata::parse`] produced from the row's
//! text; its presentation form is recomputed only for people (logs, reports).

use std::fmt;
use std::sync::Arc;

use crate::name::{Name, NameError};
use crate::rdata::{self, RType, RdataError};

/// A DNS zone apex, fully qualified and lower-case (`example.test.`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ZoneName(Name);

/// The owner name of a record, fully qualified and lower-case.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner(Name);

/// Record data in wire form (uncompressed names), shared cheaply.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rdata(Arc<[u8]>);

/// Why a name, a type, a TTL or record data was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// The owner or zone name is not a valid domain name.
    #[error("invalid domain name {name:?}")]
    BadName {
        /// The text given.
        name: String,
        /// What the parser said.
        #[source]
        source: NameError,
    },
    /// The record type is unknown or not published by pg2dns.
    #[error("unsupported record type {0:?}")]
    BadType(String),
    /// Only class IN is published.
    #[error("unsupported record class {0:?} (only IN is published)")]
    BadClass(String),
    /// The TTL is not a number in 0..=2147483647 (RFC 2181 §8).
    #[error("invalid TTL {0:?}: must be an integer from 0 to 2147483647")]
    BadTtl(String),
    /// The record data does not parse for its type.
    #[error("record data {rdata:?} is not valid {rtype}")]
    BadRdata {
        /// The record type.
        rtype: RType,
        /// The text given.
        rdata: String,
        /// What the parser said.
        #[source]
        source: RdataError,
    },
    /// A required column was NULL.
    #[error("column {0:?} is NULL")]
    Null(String),
}

impl ZoneName {
    /// Parses a zone name; a missing final dot is added.
    pub fn parse(text: &str) -> Result<ZoneName, RecordError> {
        parse_name(text).map(ZoneName)
    }

    /// The name.
    pub fn name(&self) -> &Name {
        &self.0
    }

    /// Whether `owner` is at or below this zone's apex.
    pub fn contains(&self, owner: &Owner) -> bool {
        owner.0.is_at_or_below(&self.0)
    }
}

impl Owner {
    /// Parses an owner name; a missing final dot is added.
    pub fn parse(text: &str) -> Result<Owner, RecordError> {
        parse_name(text).map(Owner)
    }

    /// An owner from a name already parsed.
    pub fn from_name(name: Name) -> Owner {
        Owner(name)
    }

    /// The name.
    pub fn name(&self) -> &Name {
        &self.0
    }
}

fn parse_name(text: &str) -> Result<Name, RecordError> {
    Name::parse_fqdn(text).map_err(|source| RecordError::BadName {
        name: text.to_owned(),
        source,
    })
}

impl fmt::Display for ZoneName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for ZoneName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ZoneName({})", self.0)
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Owner({})", self.0)
    }
}

impl Rdata {
    /// Wraps wire-form record data.
    pub fn from_wire(bytes: &[u8]) -> Rdata {
        Rdata(Arc::from(bytes))
    }

    /// The wire form.
    pub fn as_wire(&self) -> &[u8] {
        &self.0
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Rdata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rdata({} bytes)", self.0.len())
    }
}

/// One resource record of class IN.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Record {
    /// Owner name.
    pub owner: Owner,
    /// Type.
    pub rtype: RType,
    /// Time to live in seconds.
    pub ttl: u32,
    /// Data in wire form.
    pub rdata: Rdata,
}

/// The largest TTL (RFC 2181 §8).
pub const MAX_TTL: u32 = 2_147_483_647;

impl Record {
    /// Builds a record from its presentation parts, as a source row holds
    /// them. Names inside the data must be fully qualified.
    pub fn parse(owner: &str, ttl: u32, rtype: &str, rdata: &str) -> Result<Record, RecordError> {
        let owner = Owner::parse(owner)?;
        let rtype = parse_type(rtype)?;
        Record::parse_data(owner, ttl, rtype, rdata)
    }

    /// Builds a record whose owner and type are already parsed.
    pub fn parse_data(
        owner: Owner,
        ttl: u32,
        rtype: RType,
        rdata: &str,
    ) -> Result<Record, RecordError> {
        if ttl > MAX_TTL {
            return Err(RecordError::BadTtl(ttl.to_string()));
        }
        let wire = rdata::parse(rtype, rdata).map_err(|source| RecordError::BadRdata {
            rtype,
            rdata: rdata.to_owned(),
            source,
        })?;
        Ok(Record {
            owner,
            rtype,
            ttl,
            rdata: Rdata(wire.into()),
        })
    }

    /// The presentation form of the data (for people: logs and reports).
    pub fn rdata_text(&self) -> String {
        rdata::format(self.rtype, self.rdata.as_wire())
            .unwrap_or_else(|_| format!("\\# {} (unprintable)", self.rdata.len()))
    }

    /// Whether `other` is the same RR (RFC 2136 §1.1.1: the TTL is not part
    /// of RR identity).
    pub fn same_rr(&self, other: &Record) -> bool {
        self.owner == other.owner && self.rtype == other.rtype && self.rdata == other.rdata
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} IN {} {}",
            self.owner,
            self.ttl,
            self.rtype,
            self.rdata_text()
        )
    }
}

/// Parses a type mnemonic, accepting only the types pg2dns publishes. DNSSEC
/// records and zone-structure records (SOA) are the DNS server's business.
pub fn parse_type(text: &str) -> Result<RType, RecordError> {
    match RType::parse(text) {
        Ok(t) if t.is_supported() => Ok(t),
        _ => Err(RecordError::BadType(text.to_owned())),
    }
}

/// The index of a configured zone: its position in [`Zones`].
///
/// Only [`Zones`] hands these out, so an id never wraps onto another zone
/// (issue #24: with `u16` ids built by `as` casts, the 65,537th zone was
/// given the first zone's id and its records went there). `u32` costs no
/// memory where ids are kept beside a name or record: those structures are
/// 8-byte aligned and had the padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ZoneId(pub u32);

impl ZoneId {
    /// The zone's position in [`Zones`], to index per-zone vectors.
    pub fn index(self) -> usize {
        // Lossless: pg2dns builds only for targets whose usize holds a u32.
        self.0 as usize
    }
}

/// The most zones one configuration may hold: one per [`ZoneId`].
pub const MAX_ZONES: usize = u32::MAX as usize;

/// Why a list of zones was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ZonesError {
    /// More zones than there are [`ZoneId`]s.
    #[error("{count} zones are configured, more than the {limit} pg2dns can tell apart")]
    TooMany {
        /// How many zones were given.
        count: usize,
        /// The most allowed.
        limit: usize,
    },
    /// The same zone twice (two spellings of one name are one zone).
    #[error("zone {0} is listed twice")]
    Duplicate(ZoneName),
}

/// The configured zones, and which one holds a name.
///
/// Finding an owner's zone runs once per source row, so it must not scan
/// the zones: an index from each zone's wire-form name to its id is probed
/// with the owner's suffixes, longest first (`www.a.example.test.`,
/// `a.example.test.`, `example.test.`, `test.`, `.`), so the first hit is
/// the longest (innermost) zone and a lookup costs one probe per label,
/// whatever the number of zones. Names are lower-cased when parsed
/// ([`crate::name`]), so the probe is case-insensitive as RFC 4343 asks.
#[derive(Clone, Default)]
pub struct Zones {
    names: Vec<ZoneName>,
    /// Wire form of each zone name → its id.
    by_wire: crate::HashMap<Box<[u8]>, ZoneId>,
    /// The rows of the zones tables sources reference (see
    /// [`crate::mapping::source::zones_table`]).
    refs: crate::mapping::source::zones_table::ZoneRefs,
}

impl PartialEq for Zones {
    fn eq(&self, other: &Zones) -> bool {
        // `by_wire` is derived from `names`.
        self.names == other.names && self.refs == other.refs
    }
}

impl Eq for Zones {}

impl fmt::Debug for Zones {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Zones")
            .field("names", &self.names)
            .field("refs", &self.refs)
            .finish()
    }
}

impl Zones {
    /// The zones, in configuration order (their [`ZoneId`]s); refused past
    /// [`MAX_ZONES`] or with a zone listed twice.
    pub fn new(names: Vec<ZoneName>) -> Result<Zones, ZonesError> {
        Zones::with_limit(names, MAX_ZONES)
    }

    /// [`Zones::new`] with the limit given (the limit itself is never
    /// above [`MAX_ZONES`]), so the refusal can be tested without billions
    /// of zones.
    pub fn with_limit(names: Vec<ZoneName>, limit: usize) -> Result<Zones, ZonesError> {
        let limit = limit.min(MAX_ZONES);
        if names.len() > limit {
            return Err(ZonesError::TooMany {
                count: names.len(),
                limit,
            });
        }
        let mut by_wire: crate::HashMap<Box<[u8]>, ZoneId> = crate::HashMap::default();
        by_wire.reserve(names.len());
        for (i, z) in names.iter().enumerate() {
            // Cannot fail: `names.len() <= MAX_ZONES == u32::MAX`.
            let id = ZoneId(u32::try_from(i).map_err(|_| ZonesError::TooMany {
                count: names.len(),
                limit,
            })?);
            if by_wire.insert(z.name().as_wire().into(), id).is_some() {
                return Err(ZonesError::Duplicate(z.clone()));
            }
        }
        Ok(Zones {
            names,
            by_wire,
            refs: Default::default(),
        })
    }

    /// The known rows of referenced zones tables.
    pub fn refs(&self) -> &crate::mapping::source::zones_table::ZoneRefs {
        &self.refs
    }

    /// The known rows of referenced zones tables, to follow their changes.
    pub fn refs_mut(&mut self) -> &mut crate::mapping::source::zones_table::ZoneRefs {
        &mut self.refs
    }

    /// The configured zone with the longest suffix matching `owner`.
    pub fn zone_for(&self, owner: &Owner) -> Option<ZoneId> {
        // Each suffix of a valid wire name that starts at a label boundary
        // is itself a valid wire name (ending in the root's 0 byte).
        let mut rest: &[u8] = owner.name().as_wire();
        loop {
            if let Some(&id) = self.by_wire.get(rest) {
                return Some(id);
            }
            match rest.split_first() {
                Some((&len, tail)) if len > 0 => {
                    rest = tail.get(usize::from(len)..)?;
                }
                _ => return None,
            }
        }
    }

    /// The zone of an id.
    pub fn name(&self, id: ZoneId) -> &ZoneName {
        &self.names[id.index()]
    }

    /// The id of a zone given by name.
    pub fn id_of(&self, name: &ZoneName) -> Option<ZoneId> {
        self.by_wire.get(name.name().as_wire()).copied()
    }

    /// Every zone with its id.
    pub fn iter(&self) -> impl Iterator<Item = (ZoneId, &ZoneName)> {
        // Ids are the positions `new` checked to fit a u32.
        self.names.iter().zip(0u32..).map(|(z, i)| (ZoneId(i), z))
    }

    /// How many zones.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_fully_qualified_and_lower_case() {
        let a = Owner::parse("WWW.Example.Test").unwrap();
        assert_eq!(a.to_string(), "www.example.test.");
        assert_eq!(a, Owner::parse("www.example.test.").unwrap());
    }

    #[test]
    fn longest_matching_zone_wins() {
        let zones = Zones::new(vec![
            ZoneName::parse("example.test.").unwrap(),
            ZoneName::parse("sub.example.test.").unwrap(),
            ZoneName::parse("2.0.192.in-addr.arpa.").unwrap(),
        ])
        .unwrap();
        let pick = |o: &str| {
            zones
                .zone_for(&Owner::parse(o).unwrap())
                .map(|z| zones.name(z).to_string())
        };
        assert_eq!(
            pick("a.sub.example.test."),
            Some("sub.example.test.".into())
        );
        assert_eq!(pick("sub.example.test."), Some("sub.example.test.".into()));
        assert_eq!(pick("b.example.test."), Some("example.test.".into()));
        assert_eq!(
            pick("10.2.0.192.in-addr.arpa."),
            Some("2.0.192.in-addr.arpa.".into())
        );
        assert_eq!(pick("notexample.test."), None);
        assert_eq!(pick("other.invalid."), None);
    }

    fn zones(names: &[&str]) -> Zones {
        Zones::new(names.iter().map(|z| ZoneName::parse(z).unwrap()).collect()).unwrap()
    }

    fn pick(zones: &Zones, owner: &str) -> Option<String> {
        zones
            .zone_for(&Owner::parse(owner).unwrap())
            .map(|z| zones.name(z).to_string())
    }

    #[test]
    fn a_nested_zone_takes_its_names_whatever_the_configuration_order() {
        // Inner zone listed after and before its parent: the lookup walks
        // the owner's suffixes longest first, so order cannot matter.
        for names in [
            ["example.test.", "a.example.test.", "b.a.example.test."],
            ["b.a.example.test.", "a.example.test.", "example.test."],
        ] {
            let z = zones(&names);
            assert_eq!(
                pick(&z, "x.b.a.example.test."),
                Some("b.a.example.test.".into())
            );
            assert_eq!(
                pick(&z, "b.a.example.test."),
                Some("b.a.example.test.".into())
            );
            assert_eq!(
                pick(&z, "c.a.example.test."),
                Some("a.example.test.".into())
            );
            assert_eq!(pick(&z, "a.example.test."), Some("a.example.test.".into()));
            assert_eq!(pick(&z, "ba.example.test."), Some("example.test.".into()));
            assert_eq!(pick(&z, "example.test."), Some("example.test.".into()));
            assert_eq!(pick(&z, "test."), None);
        }
    }

    #[test]
    fn zone_lookup_ignores_case_and_the_final_dot() {
        let z = zones(&["Example.TEST", "Sub.Example.Test."]);
        assert_eq!(
            pick(&z, "WWW.SUB.EXAMPLE.TEST"),
            Some("sub.example.test.".into())
        );
        assert_eq!(pick(&z, "www.Example.test."), Some("example.test.".into()));
        assert_eq!(
            z.id_of(&ZoneName::parse("SUB.example.test").unwrap()),
            Some(ZoneId(1))
        );
        assert_eq!(z.id_of(&ZoneName::parse("other.test.").unwrap()), None);
    }

    #[test]
    fn a_label_that_is_only_a_suffix_of_a_zone_label_does_not_match() {
        // Wire-form suffixes start at label boundaries: "xexample.test."
        // is not below "example.test.", and an escaped dot is inside a label.
        let z = zones(&["example.test."]);
        assert_eq!(pick(&z, "xexample.test."), None);
        assert_eq!(pick(&z, "a\\.example.test."), None);
        assert_eq!(
            pick(&z, "a\\.b.example.test."),
            Some("example.test.".into())
        );
    }

    #[test]
    fn the_root_zone_holds_every_name_not_in_a_deeper_zone() {
        let z = zones(&[".", "example.test."]);
        assert_eq!(pick(&z, "www.example.test."), Some("example.test.".into()));
        assert_eq!(pick(&z, "other.invalid."), Some(".".into()));
    }

    #[test]
    fn zone_ids_are_positions_and_lookup_agrees_with_a_scan_over_many_zones() {
        let names: Vec<String> = (0..3_000)
            .map(|i| match i % 3 {
                0 => format!("z{i}.hosting.test."),
                1 => format!("{}.{}.10.in-addr.arpa.", i % 256, i / 256),
                _ => format!("in.z{}.hosting.test.", i - 2),
            })
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let z = zones(&refs);
        assert_eq!(z.len(), 3_000);
        for (id, name) in z.iter() {
            assert_eq!(z.id_of(name), Some(id));
            assert_eq!(z.name(id), name);
        }
        for i in 0..3_000 {
            for owner in [
                format!("www.z{i}.hosting.test."),
                format!("a.in.z{i}.hosting.test."),
                format!("{}.{}.{}.10.in-addr.arpa.", i % 7, i % 256, i / 256),
            ] {
                let owner = Owner::parse(&owner).unwrap();
                // The old definition: the longest configured zone that holds it.
                let scan = z
                    .iter()
                    .filter(|(_, n)| n.contains(&owner))
                    .max_by_key(|(_, n)| n.name().label_count())
                    .map(|(id, _)| id);
                assert_eq!(z.zone_for(&owner), scan, "{owner}");
            }
        }
    }

    #[test]
    fn more_zones_than_the_limit_are_refused_never_wrapped() {
        let names = |n: usize| -> Vec<ZoneName> {
            (0..n)
                .map(|i| ZoneName::parse(&format!("z{i}.test.")).unwrap())
                .collect()
        };
        assert_eq!(Zones::with_limit(names(3), 3).unwrap().len(), 3);
        assert_eq!(
            Zones::with_limit(names(4), 3),
            Err(ZonesError::TooMany { count: 4, limit: 3 })
        );
        let err = Zones::with_limit(names(65_537), 65_536).unwrap_err();
        assert_eq!(
            err.to_string(),
            "65537 zones are configured, more than the 65536 pg2dns can tell apart"
        );
        // The bug of issue #24: zone 65,536 (the 65,537th) shared zone 0's
        // id. Ids are now wide enough that it has its own.
        let z = Zones::new(names(65_537)).unwrap();
        let last = ZoneName::parse("z65536.test.").unwrap();
        assert_eq!(z.id_of(&last), Some(ZoneId(65_536)));
        assert_eq!(
            z.zone_for(&Owner::parse("www.z65536.test.").unwrap()),
            Some(ZoneId(65_536))
        );
        assert_eq!(z.name(ZoneId(65_536)), &last);
        assert_eq!(
            z.zone_for(&Owner::parse("www.z0.test.").unwrap()),
            Some(ZoneId(0))
        );
        // A limit above what ids can tell apart is lowered to it.
        assert_eq!(
            Zones::with_limit(names(2), usize::MAX).map(|z| z.len()),
            Ok(2)
        );
    }

    #[test]
    fn a_zone_listed_twice_is_refused_even_in_another_spelling() {
        let names = ["example.test.", "other.test.", "EXAMPLE.test"]
            .iter()
            .map(|z| ZoneName::parse(z).unwrap())
            .collect();
        assert_eq!(
            Zones::new(names),
            Err(ZonesError::Duplicate(
                ZoneName::parse("example.test.").unwrap()
            ))
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]
        /// The lookup by hash gives what the definition says: the longest
        /// configured zone at or above the owner, or none.
        #[test]
        fn zone_lookup_is_the_longest_configured_suffix(
            zones in proptest::collection::btree_set(
                proptest::collection::vec("[aAbB]{1,2}", 1..4), 1..12),
            owners in proptest::collection::vec(
                proptest::collection::vec("[aAbB]{1,2}", 1..6), 1..24),
        ) {
            let names: Vec<ZoneName> = zones
                .iter()
                .map(|labels| ZoneName::parse(&labels.join(".")).unwrap())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let z = Zones::new(names).unwrap();
            for labels in &owners {
                let owner = Owner::parse(&labels.join(".")).unwrap();
                let scan = z
                    .iter()
                    .filter(|(_, n)| n.contains(&owner))
                    .max_by_key(|(_, n)| n.name().label_count())
                    .map(|(id, _)| id);
                proptest::prop_assert_eq!(z.zone_for(&owner), scan, "{}", owner);
            }
        }
    }

    #[test]
    fn record_identity_ignores_ttl_and_case() {
        let a = Record::parse("h.example.test", 300, "cname", "Target.Example.Test.").unwrap();
        let b = Record::parse("H.EXAMPLE.TEST.", 600, "CNAME", "target.example.test.").unwrap();
        assert!(a.same_rr(&b));
        assert_eq!(a.rdata_text(), "target.example.test.");
    }

    #[test]
    fn bad_rdata_is_refused_with_the_reason() {
        let err = Record::parse("h.example.test.", 300, "A", "not-an-ip").unwrap_err();
        assert!(matches!(err, RecordError::BadRdata { .. }), "{err:?}");
        let err = Record::parse("h.example.test.", 300, "CNAME", "www").unwrap_err();
        assert!(
            crate::error_chain(&err).contains("fully qualified"),
            "{}",
            crate::error_chain(&err)
        );
        let err = Record::parse("h.example.test.", 300, "SOA", "x").unwrap_err();
        assert_eq!(err, RecordError::BadType("SOA".into()));
        let err = Record::parse("h.example.test.", 300, "BOGUS", "x").unwrap_err();
        assert_eq!(err, RecordError::BadType("BOGUS".into()));
    }

    #[test]
    fn character_strings_survive_the_presentation_text() {
        for (t, d) in [
            ("TXT", "\"hello world\" \"two\""),
            ("TXT", "\"a\\\"b\" \"c\\\\d\""),
            ("TXT", "plain"),
            ("HINFO", "\"PC Intel\" \"Linux 6\""),
            ("CAA", "0 issue \"ca.example.net\""),
        ] {
            let r = Record::parse("t.example.test.", 1, t, d).unwrap();
            let again = Record::parse("t.example.test.", 1, t, &r.rdata_text()).unwrap();
            assert_eq!(again, r, "{t} {d} -> {}", r.rdata_text());
        }
        let r = Record::parse("t.example.test.", 1, "TXT", "\"hello world\" \"two\"").unwrap();
        assert_eq!(r.rdata_text(), "\"hello world\" \"two\"");
    }
}
