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

/// The index of a configured zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ZoneId(pub u16);

/// The configured zones, and which one holds a name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Zones {
    names: Vec<ZoneName>,
    /// The rows of the zones tables sources reference (see
    /// [`crate::mapping::source::zones_table`]).
    refs: crate::mapping::source::zones_table::ZoneRefs,
}

impl Zones {
    /// The zones, in configuration order (their [`ZoneId`]s).
    pub fn new(names: Vec<ZoneName>) -> Zones {
        Zones {
            names,
            refs: Default::default(),
        }
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
        self.names
            .iter()
            .enumerate()
            .filter(|(_, z)| z.contains(owner))
            .max_by_key(|(_, z)| z.name().label_count())
            .map(|(i, _)| ZoneId(i as u16))
    }

    /// The zone of an id.
    pub fn name(&self, id: ZoneId) -> &ZoneName {
        &self.names[usize::from(id.0)]
    }

    /// The id of a zone given by name.
    pub fn id_of(&self, name: &ZoneName) -> Option<ZoneId> {
        self.names
            .iter()
            .position(|z| z == name)
            .map(|i| ZoneId(i as u16))
    }

    /// Every zone with its id.
    pub fn iter(&self) -> impl Iterator<Item = (ZoneId, &ZoneName)> {
        self.names
            .iter()
            .enumerate()
            .map(|(i, z)| (ZoneId(i as u16), z))
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
        ]);
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
