//! Resource records as pg2dns sees them, and the mapping from source rows to them.
//!
//! Names are kept fully qualified and lower-cased, so that two rows naming the
//! same owner in different case contribute the same record: RFC 4343 §3 says
//! "comparisons on name lookup for DNS queries should be case insensitive".
//! Record data is parsed with `hickory-proto` and kept in the presentation
//! form hickory prints, so the text stored in the row state is canonical.

use std::fmt;

use hickory_proto::rr::{Name, RData, RecordType};

/// A DNS zone apex, fully qualified and lower-case (`example.test.`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ZoneName(Name);

/// The owner name of a record, fully qualified and lower-case.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner(Name);

/// Why a name, a type or record data was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// The owner or zone name is not a valid domain name.
    #[error("invalid domain name {name:?}: {reason}")]
    BadName {
        /// The text given.
        name: String,
        /// What the parser said.
        reason: String,
    },
    /// The record type is unknown or not supported.
    #[error("unsupported record type {0:?}")]
    BadType(String),
    /// Only class IN is published.
    #[error("unsupported record class {0:?} (only IN is published)")]
    BadClass(String),
    /// The TTL is not a number in 0..=2147483647 (RFC 2181 §8).
    #[error("invalid TTL {0:?}: must be an integer from 0 to 2147483647")]
    BadTtl(String),
    /// The record data does not parse for its type.
    #[error("record data {rdata:?} does not parse as {rtype}: {reason}")]
    BadRdata {
        /// The record type.
        rtype: String,
        /// The text given.
        rdata: String,
        /// What the parser said.
        reason: String,
    },
    /// A required column was NULL.
    #[error("column {0:?} is NULL")]
    Null(&'static str),
}

fn parse_fqdn(text: &str) -> Result<Name, RecordError> {
    let bad = |reason: String| RecordError::BadName {
        name: text.to_owned(),
        reason,
    };
    if text.is_empty() {
        return Err(bad("empty name".into()));
    }
    let mut name = Name::from_ascii(text).map_err(|e| bad(e.to_string()))?;
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

impl ZoneName {
    /// Parses a zone name; a missing final dot is added.
    pub fn parse(text: &str) -> Result<ZoneName, RecordError> {
        parse_fqdn(text).map(ZoneName)
    }

    /// The name as a hickory [`Name`].
    pub fn name(&self) -> &Name {
        &self.0
    }

    /// Whether `owner` is at or below this zone's apex.
    pub fn contains(&self, owner: &Owner) -> bool {
        self.0.zone_of(&owner.0)
    }
}

impl Owner {
    /// Parses an owner name; a missing final dot is added.
    pub fn parse(text: &str) -> Result<Owner, RecordError> {
        parse_fqdn(text).map(Owner)
    }

    /// The name as a hickory [`Name`].
    pub fn name(&self) -> &Name {
        &self.0
    }
}

impl fmt::Display for ZoneName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One resource record of class IN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Owner name.
    pub owner: Owner,
    /// Time to live in seconds.
    pub ttl: u32,
    /// Parsed record data; its type is the record's type.
    pub rdata: RData,
}

/// A record's identity for DNS: owner, type and data. RFC 2136 §1.1.1 leaves the
/// TTL out of RR equality, and so does this.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId {
    /// Owner name.
    pub owner: Owner,
    /// Record type mnemonic (`A`, `AAAA`, `TXT`…).
    pub rtype: String,
    /// Canonical presentation form of the data.
    pub rdata: String,
}

impl Record {
    /// The record's type.
    pub fn rtype(&self) -> RecordType {
        self.rdata.record_type()
    }

    /// The canonical presentation form of the data; [`Record::parse`]
    /// reads it back to the same record.
    pub fn rdata_text(&self) -> String {
        // hickory prints TXT and HINFO character-strings without quotes, so
        // `"a b" "c"` would come back as three strings: quote them here.
        match &self.rdata {
            RData::TXT(t) => t
                .txt_data
                .iter()
                .map(|s| quote(s))
                .collect::<Vec<_>>()
                .join(" "),
            RData::HINFO(h) => format!("{} {}", quote(&h.cpu), quote(&h.os)),
            other => other.to_string(),
        }
    }

    /// The record's identity (owner, type, data).
    pub fn id(&self) -> RecordId {
        RecordId {
            owner: self.owner.clone(),
            rtype: self.rtype().to_string(),
            rdata: self.rdata_text(),
        }
    }

    /// Builds a record from its presentation parts, as a source row holds them.
    ///
    /// Names inside the data must be fully qualified: relative names are
    /// refused rather than guessed, because hickory would read `CNAME www` as
    /// the root-level name `www.`.
    pub fn parse(owner: &str, ttl: u32, rtype: &str, rdata: &str) -> Result<Record, RecordError> {
        let owner = Owner::parse(owner)?;
        let rtype_parsed: RecordType = rtype
            .trim()
            .to_ascii_uppercase()
            .parse()
            .map_err(|_| RecordError::BadType(rtype.to_owned()))?;
        if !is_supported(rtype_parsed) {
            return Err(RecordError::BadType(rtype.to_owned()));
        }
        if ttl > 2_147_483_647 {
            return Err(RecordError::BadTtl(ttl.to_string()));
        }
        let bad = |reason: String| RecordError::BadRdata {
            rtype: rtype_parsed.to_string(),
            rdata: rdata.to_owned(),
            reason,
        };
        if has_relative_name(rtype_parsed, rdata) {
            return Err(bad(
                "names in record data must be fully qualified (end with '.')".into(),
            ));
        }
        let parsed = RData::try_from_str(rtype_parsed, rdata).map_err(|e| bad(e.to_string()))?;
        Ok(Record {
            owner,
            ttl,
            rdata: lower_names(parsed),
        })
    }
}

/// A character-string in presentation form (RFC 1035 §5.1): quoted, with
/// `"` and `\\` escaped and bytes outside printable ASCII as `\\DDD`.
fn quote(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for &b in bytes {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
    out.push('"');
    out
}

/// Types pg2dns publishes. DNSSEC records and zone-structure records (SOA) are
/// the DNS server's business, not the database's.
fn is_supported(rtype: RecordType) -> bool {
    use RecordType::*;
    matches!(
        rtype,
        A | AAAA
            | CNAME
            | MX
            | NS
            | PTR
            | SRV
            | TXT
            | CAA
            | SSHFP
            | TLSA
            | NAPTR
            | HINFO
            | SVCB
            | HTTPS
    )
}

/// Whether the data of a name-bearing type holds a relative name.
fn has_relative_name(rtype: RecordType, rdata: &str) -> bool {
    let tokens: Vec<&str> = rdata.split_whitespace().collect();
    let name_token = match rtype {
        RecordType::CNAME | RecordType::NS | RecordType::PTR => tokens.first(),
        RecordType::MX => tokens.get(1),
        RecordType::SRV => tokens.get(3),
        _ => None,
    };
    matches!(name_token, Some(t) if *t != "." && !t.ends_with('.'))
}

/// Lower-cases the names inside record data so that identities compare equal.
fn lower_names(rdata: RData) -> RData {
    use hickory_proto::rr::rdata::{CNAME, NS, PTR};
    match rdata {
        RData::CNAME(c) => RData::CNAME(CNAME(c.0.to_lowercase())),
        RData::NS(n) => RData::NS(NS(n.0.to_lowercase())),
        RData::PTR(p) => RData::PTR(PTR(p.0.to_lowercase())),
        RData::MX(mut m) => {
            m.exchange = m.exchange.to_lowercase();
            RData::MX(m)
        }
        RData::SRV(mut s) => {
            s.target = s.target.to_lowercase();
            RData::SRV(s)
        }
        other => other,
    }
}

/// The configured zone with the longest suffix matching `owner`, if any.
pub fn zone_for<'z>(owner: &Owner, zones: &'z [ZoneName]) -> Option<&'z ZoneName> {
    zones
        .iter()
        .filter(|z| z.contains(owner))
        .max_by_key(|z| z.name().num_labels())
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
        let zones = [
            ZoneName::parse("example.test.").unwrap(),
            ZoneName::parse("sub.example.test.").unwrap(),
            ZoneName::parse("2.0.192.in-addr.arpa.").unwrap(),
        ];
        let pick = |o: &str| zone_for(&Owner::parse(o).unwrap(), &zones).map(|z| z.to_string());
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
        assert_eq!(a.id(), b.id());
        assert_eq!(a.id().rdata, "target.example.test.");
    }

    #[test]
    fn bad_rdata_is_refused_with_the_reason() {
        let err = Record::parse("h.example.test.", 300, "A", "not-an-ip").unwrap_err();
        assert!(matches!(err, RecordError::BadRdata { .. }), "{err:?}");
        let err = Record::parse("h.example.test.", 300, "CNAME", "www").unwrap_err();
        assert!(err.to_string().contains("fully qualified"), "{err}");
        let err = Record::parse("h.example.test.", 300, "SOA", "x").unwrap_err();
        assert_eq!(err, RecordError::BadType("SOA".into()));
        let err = Record::parse("h.example.test.", 300, "BOGUS", "x").unwrap_err();
        assert_eq!(err, RecordError::BadType("BOGUS".into()));
    }

    #[test]
    fn character_strings_survive_the_stored_text() {
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

    #[test]
    fn typical_records_parse() {
        for (t, d) in [
            ("A", "192.0.2.1"),
            ("AAAA", "2001:db8::1"),
            ("MX", "10 mail.example.test."),
            ("TXT", "\"hello world\""),
            ("SRV", "0 5 5060 sip.example.test."),
            ("PTR", "h.example.test."),
        ] {
            let r = Record::parse("h.example.test.", 60, t, d).unwrap();
            assert_eq!(r.rtype().to_string(), t);
        }
    }
}
