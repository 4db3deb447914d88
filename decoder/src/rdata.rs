//! Record data: presentation form (one zone-file line's RDATA) to wire form and back.
//!
//! Why our own: the parser we used before mis-decoded UTF-8 and `\DDD`
//! escapes in character-strings, let character-strings over 255 bytes
//! through, turned relative names in SVCB targets and NAPTR replacements
//! into root names, ignored trailing tokens and cut unquoted TXT at `;`.
//! Here bytes round-trip exactly: `parse(t, &format(t, w)?)? == w`.
//!
//! The rules we rely on:
//!
//! - RFC 1035 §5.1: "`\X` where X is any character other than a digit (0-9),
//!   is used to quote that character so that its special meaning does not
//!   apply", and "`\DDD` where each D is a digit is the octet corresponding to
//!   the decimal number described by DDD". Text outside escapes contributes
//!   its UTF-8 bytes.
//! - RFC 1035 §3.3: "`<character-string>` is a single length octet followed by
//!   that number of characters", so at most 255 bytes each.
//! - RFC 3597 §5: "The RDATA section of a RR of unknown type is represented …
//!   `\# <length> <hex…>`"; we accept it for every supported type and check
//!   the bytes by formatting and re-parsing them.
//! - RFC 9460 §2.1: SvcParams are `key=value` pairs, "SvcParamKeys SHALL appear
//!   in increasing numeric order" on the wire, and "In AliasMode, records
//!   SHOULD NOT include any SvcParams" (we refuse them).
//! - RFC 8659 §4.1: the CAA value is "the remainder of the RDATA", with no
//!   length octet.
//!
//! - RFC 4034 §2.2 and §5.3 (DNSKEY, DS; CDNSKEY and CDS by RFC 7344): the
//!   key in base64 and the digest in hex, "whitespace is allowed within"
//!   them; a digest's length must match its type (SHA-1 20 bytes, SHA-256
//!   and GOST 32, SHA-384 48), except type 0 for CDS "0 0 0 00" (RFC 8078).
//! - RFC 7477 §2.1 (CSYNC) and RFC 4034 §4.1.2: the type bit map, one block
//!   per 256 types, "Trailing zero octets in the bitmap MUST be omitted".
//! - RFC 1876 (LOC): sizes as one digit times a power of ten centimetres;
//!   values the wire cannot hold exactly are refused, not rounded as BIND
//!   and dnspython round them.
//! - RFC 7553 §4.5 (URI): the target is a quoted string, the rest of the
//!   record data.
//!
//! Every type is encoded here, none by hickory-proto: its presentation
//! parser is wrong for character-strings and relative names (above), and
//! its CSYNC decoder fails on reserved flags, so it serves as no reference.
//! Each type is checked byte for byte against dnspython
//! (`tests/presentation_oracle.rs`) and BIND (`faithfulness::`).
//!
//! A row's record data is one line: there are no comments (`;` is data, and
//! unquoted TXT containing it is refused with the quoted form to write
//! instead), no parentheses and no line breaks. Names inside record data must
//! be fully qualified (there is no `$ORIGIN` to complete them) and are
//! lower-cased, since BIND treats `CNAME Target.` and `CNAME target.` as one
//! record.

use std::fmt;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use base64::Engine as _;

use crate::name::{Name, NameError};

/// A record type (RFC 1035 §3.2.2 TYPE value).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct RType(pub u16);

/// Known mnemonics and their numbers.
const MNEMONICS: &[(&str, RType)] = &[
    ("A", RType::A),
    ("NS", RType::NS),
    ("CNAME", RType::CNAME),
    ("SOA", RType::SOA),
    ("PTR", RType::PTR),
    ("HINFO", RType::HINFO),
    ("MX", RType::MX),
    ("TXT", RType::TXT),
    ("RP", RType::RP),
    ("AFSDB", RType::AFSDB),
    ("AAAA", RType::AAAA),
    ("LOC", RType::LOC),
    ("SRV", RType::SRV),
    ("NAPTR", RType::NAPTR),
    ("CERT", RType::CERT),
    ("DNAME", RType::DNAME),
    ("DS", RType::DS),
    ("SSHFP", RType::SSHFP),
    ("RRSIG", RType::RRSIG),
    ("NSEC", RType::NSEC),
    ("DNSKEY", RType::DNSKEY),
    ("NSEC3", RType::NSEC3),
    ("NSEC3PARAM", RType::NSEC3PARAM),
    ("TLSA", RType::TLSA),
    ("SMIMEA", RType::SMIMEA),
    ("CDS", RType::CDS),
    ("CDNSKEY", RType::CDNSKEY),
    ("OPENPGPKEY", RType::OPENPGPKEY),
    ("CSYNC", RType::CSYNC),
    ("SVCB", RType::SVCB),
    ("HTTPS", RType::HTTPS),
    ("URI", RType::URI),
    ("CAA", RType::CAA),
];

impl RType {
    /// IPv4 address (RFC 1035).
    pub const A: RType = RType(1);
    /// Name server (RFC 1035).
    pub const NS: RType = RType(2);
    /// Canonical name (RFC 1035).
    pub const CNAME: RType = RType(5);
    /// Start of authority (RFC 1035).
    pub const SOA: RType = RType(6);
    /// Domain name pointer (RFC 1035).
    pub const PTR: RType = RType(12);
    /// Host information (RFC 1035, RFC 8482).
    pub const HINFO: RType = RType(13);
    /// Mail exchange (RFC 1035).
    pub const MX: RType = RType(15);
    /// Text strings (RFC 1035).
    pub const TXT: RType = RType(16);
    /// Responsible person (RFC 1183).
    pub const RP: RType = RType(17);
    /// AFS database location (RFC 1183).
    pub const AFSDB: RType = RType(18);
    /// IPv6 address (RFC 3596).
    pub const AAAA: RType = RType(28);
    /// Location (RFC 1876).
    pub const LOC: RType = RType(29);
    /// Service location (RFC 2782).
    pub const SRV: RType = RType(33);
    /// Naming authority pointer (RFC 3403).
    pub const NAPTR: RType = RType(35);
    /// Certificate (RFC 4398).
    pub const CERT: RType = RType(37);
    /// Redirection of a subtree (RFC 6672).
    pub const DNAME: RType = RType(39);
    /// Delegation signer (RFC 4034).
    pub const DS: RType = RType(43);
    /// SSH key fingerprint (RFC 4255).
    pub const SSHFP: RType = RType(44);
    /// DNSSEC signature (RFC 4034).
    pub const RRSIG: RType = RType(46);
    /// Next secure (RFC 4034).
    pub const NSEC: RType = RType(47);
    /// DNSSEC key (RFC 4034).
    pub const DNSKEY: RType = RType(48);
    /// Hashed next secure (RFC 5155).
    pub const NSEC3: RType = RType(50);
    /// NSEC3 parameters (RFC 5155).
    pub const NSEC3PARAM: RType = RType(51);
    /// TLS certificate association (RFC 6698).
    pub const TLSA: RType = RType(52);
    /// S/MIME certificate association (RFC 8162).
    pub const SMIMEA: RType = RType(53);
    /// Child DS (RFC 7344).
    pub const CDS: RType = RType(59);
    /// Child DNSKEY (RFC 7344).
    pub const CDNSKEY: RType = RType(60);
    /// OpenPGP public key (RFC 7929).
    pub const OPENPGPKEY: RType = RType(61);
    /// Child-to-parent synchronisation (RFC 7477).
    pub const CSYNC: RType = RType(62);
    /// Service binding (RFC 9460).
    pub const SVCB: RType = RType(64);
    /// HTTPS service binding (RFC 9460).
    pub const HTTPS: RType = RType(65);
    /// Uniform resource identifier (RFC 7553).
    pub const URI: RType = RType(256);
    /// Certification authority authorization (RFC 8659).
    pub const CAA: RType = RType(257);

    /// Parses a mnemonic case-insensitively, or TYPEnnn (RFC 3597). Any known type or TYPEnnn parses.
    pub fn parse(text: &str) -> Result<RType, RdataError> {
        if let Some(&(_, rtype)) = MNEMONICS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text))
        {
            return Ok(rtype);
        }
        let unknown = || RdataError::UnknownType {
            text: text.to_owned(),
        };
        let digits = text
            .get(..4)
            .filter(|prefix| prefix.eq_ignore_ascii_case("TYPE"))
            .and_then(|_| text.get(4..))
            .ok_or_else(unknown)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(unknown());
        }
        digits.parse::<u16>().map(RType).map_err(|_| unknown())
    }

    /// Whether pg2dns publishes this type: A AAAA CNAME MX NS PTR SRV TXT CAA SSHFP TLSA NAPTR HINFO SVCB HTTPS, and for registries and multi-signer set-ups DS CDS CDNSKEY DNSKEY CSYNC DNAME URI LOC OPENPGPKEY SMIMEA CERT RP AFSDB.
    pub fn is_supported(self) -> bool {
        RType::SUPPORTED.contains(&self)
    }

    /// Every type pg2dns publishes.
    pub const SUPPORTED: [RType; 28] = [
        RType::A,
        RType::AAAA,
        RType::CNAME,
        RType::MX,
        RType::NS,
        RType::PTR,
        RType::SRV,
        RType::TXT,
        RType::CAA,
        RType::SSHFP,
        RType::TLSA,
        RType::NAPTR,
        RType::HINFO,
        RType::SVCB,
        RType::HTTPS,
        RType::DS,
        RType::CDS,
        RType::CDNSKEY,
        RType::DNSKEY,
        RType::CSYNC,
        RType::DNAME,
        RType::URI,
        RType::LOC,
        RType::OPENPGPKEY,
        RType::SMIMEA,
        RType::CERT,
        RType::RP,
        RType::AFSDB,
    ];

    /// Types a DNSSEC signer writes too: DNSKEY CDS CDNSKEY. pg2dns publishes
    /// the rows' records of these types (a multi-signer set-up adds the other
    /// signer's keys, RFC 8901 §2.1.2), but a zone's own signer keeps its
    /// keys beside them, so a comparison never counts one that no row gives
    /// as extra (see [`crate::diff`]).
    pub fn is_shared_with_signer(self) -> bool {
        matches!(self, RType::DNSKEY | RType::CDS | RType::CDNSKEY)
    }

    /// DNSSEC and signer types: RRSIG NSEC NSEC3 NSEC3PARAM DNSKEY CDS CDNSKEY (plus the type 65534 private type BIND's signer uses). pg2dns never owns the first four; of DNSKEY CDS CDNSKEY it owns only what rows give ([`RType::is_shared_with_signer`]).
    pub fn is_dnssec(self) -> bool {
        matches!(
            self,
            RType::RRSIG
                | RType::NSEC
                | RType::NSEC3
                | RType::NSEC3PARAM
                | RType::DNSKEY
                | RType::CDS
                | RType::CDNSKEY
                | RType(65534)
        )
    }
}

impl fmt::Display for RType {
    /// The mnemonic, or `TYPEnnn` (RFC 3597 §5) for a type without one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match MNEMONICS.iter().find(|(_, rtype)| rtype == self) {
            Some((name, _)) => f.write_str(name),
            None => write!(f, "TYPE{}", self.0),
        }
    }
}

/// Why record data was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RdataError {
    /// The text is neither a known mnemonic nor `TYPEnnn`.
    #[error("unknown record type {text:?}")]
    UnknownType {
        /// The text given.
        text: String,
    },
    /// pg2dns does not publish this type.
    #[error("record type {rtype} is not supported")]
    UnsupportedType {
        /// The type, as printed.
        rtype: String,
    },
    /// The text does not tokenize or has the wrong shape.
    #[error("invalid {rtype} record data: {reason}")]
    Syntax {
        /// The record type.
        rtype: RType,
        /// What is wrong.
        reason: String,
    },
    /// A character-string over 255 bytes.
    #[error("a character-string holds at most 255 bytes, this one has {len}")]
    StringTooLong {
        /// The string's length in bytes.
        len: usize,
    },
    /// A token left after the type's fields.
    #[error("unexpected {token:?} after the {rtype} record data")]
    TrailingData {
        /// The record type.
        rtype: RType,
        /// The first extra token.
        token: String,
    },
    /// The text ended before a required field.
    #[error("{rtype} record data is missing its {field}")]
    MissingField {
        /// The record type.
        rtype: RType,
        /// The field's name.
        field: &'static str,
    },
    /// A field that does not parse.
    #[error("invalid {field} {value:?} in {rtype} record data: {reason}")]
    BadField {
        /// The record type.
        rtype: RType,
        /// The field's name.
        field: &'static str,
        /// The text given.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A relative name inside record data.
    #[error(
        "name {name:?} is relative; names in record data must be fully qualified (end with a dot)"
    )]
    RelativeName {
        /// The text given.
        name: String,
    },
    /// A name inside record data that does not parse.
    #[error("invalid domain name in record data")]
    Name(#[from] NameError),
    /// Unquoted text that a zone file would split or cut.
    #[error("text with spaces or ';' must be quoted: write {quoted}")]
    UnquotedText {
        /// The quoted form to write instead.
        quoted: String,
    },
    /// Record data over 65535 bytes in wire form.
    #[error("record data holds at most 65535 bytes, this has {len}")]
    TooLong {
        /// The wire length.
        len: usize,
    },
    /// Wire data that does not decode as the type.
    #[error("malformed {rtype} wire data at offset {offset}")]
    BadWire {
        /// The record type.
        rtype: RType,
        /// The byte offset where the problem was found.
        offset: usize,
    },
}

/// Parses the record data of a supported type from presentation form into wire form (uncompressed names, lower-cased).
pub fn parse(rtype: RType, text: &str) -> Result<Vec<u8>, RdataError> {
    if !rtype.is_supported() {
        return Err(RdataError::UnsupportedType {
            rtype: rtype.to_string(),
        });
    }
    let tokens = tokenize(rtype, text)?;
    if tokens.first().map(|t| t.raw) == Some("\\#") {
        return parse_generic(rtype, text, tokens.get(1..).unwrap_or_default());
    }
    let mut fields = Fields {
        rtype,
        text,
        tokens: &tokens,
        at: 0,
    };
    let mut out = Vec::new();
    match rtype {
        RType::A => {
            let tok = fields.next("address")?;
            let addr: Ipv4Addr = fields
                .bare(tok, "address")?
                .parse()
                .map_err(|_| fields.bad(tok, "address", "not a dotted-quad IPv4 address".into()))?;
            out.extend(addr.octets());
        }
        RType::AAAA => {
            let tok = fields.next("address")?;
            let addr: Ipv6Addr = fields
                .bare(tok, "address")?
                .parse()
                .map_err(|_| fields.bad(tok, "address", "not an IPv6 address".into()))?;
            out.extend(addr.octets());
        }
        RType::CNAME | RType::NS | RType::PTR => {
            out.extend(fields.name("name")?.as_wire());
        }
        RType::MX => {
            out.extend(fields.u16("preference")?.to_be_bytes());
            out.extend(fields.name("exchange")?.as_wire());
        }
        RType::SRV => {
            out.extend(fields.u16("priority")?.to_be_bytes());
            out.extend(fields.u16("weight")?.to_be_bytes());
            out.extend(fields.u16("port")?.to_be_bytes());
            out.extend(fields.name("target")?.as_wire());
        }
        RType::TXT => parse_txt(&mut fields, &mut out)?,
        RType::HINFO => {
            for field in ["cpu", "os"] {
                let s = fields.char_string(field)?;
                push_string(&mut out, &s)?;
            }
        }
        RType::NAPTR => {
            out.extend(fields.u16("order")?.to_be_bytes());
            out.extend(fields.u16("preference")?.to_be_bytes());
            for field in ["flags", "services", "regexp"] {
                let s = fields.char_string(field)?;
                push_string(&mut out, &s)?;
            }
            out.extend(fields.name("replacement")?.as_wire());
        }
        RType::CAA => {
            out.push(fields.u8("flags")?);
            let tok = fields.next("tag")?;
            let tag = fields.bare(tok, "tag")?;
            if tag.is_empty() || tag.len() > 15 || !tag.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(fields.bad(tok, "tag", "must be 1 to 15 letters or digits".into()));
            }
            out.push(tag.len() as u8);
            out.extend(tag.bytes());
            let value = fields.text_value("value")?;
            out.extend(value);
        }
        RType::SSHFP => {
            out.push(fields.u8("algorithm")?);
            let fp_type = fields.u8("fingerprint type")?;
            out.push(fp_type);
            // RFC 4255 §3.1.2 (SHA-1), RFC 6594 (SHA-256).
            let digest_len = [(1, 20), (2, 32)];
            out.extend(fields.digest("fingerprint", fp_type, &digest_len)?);
        }
        RType::TLSA => {
            out.push(fields.u8("certificate usage")?);
            out.push(fields.u8("selector")?);
            let matching = fields.u8("matching type")?;
            out.push(matching);
            // RFC 6698 §2.1.3: 1 is SHA-256, 2 is SHA-512.
            let digest_len = [(1, 32), (2, 64)];
            out.extend(fields.digest("certificate association data", matching, &digest_len)?);
        }
        RType::SVCB | RType::HTTPS => parse_svcb(&mut fields, &mut out)?,
        RType::DNAME => {
            out.extend(fields.name("target")?.as_wire());
        }
        RType::RP => {
            out.extend(fields.name("mailbox")?.as_wire());
            out.extend(fields.name("text name")?.as_wire());
        }
        RType::AFSDB => {
            out.extend(fields.u16("subtype")?.to_be_bytes());
            out.extend(fields.name("hostname")?.as_wire());
        }
        RType::DS | RType::CDS => {
            // RFC 4034 §5.3: key tag, algorithm, digest type, digest in hex.
            out.extend(fields.u16("key tag")?.to_be_bytes());
            out.push(fields.algorithm()?);
            let digest_type = fields.u8("digest type")?;
            out.push(digest_type);
            // SHA-1 (RFC 4034), SHA-256 (RFC 4509), GOST (RFC 5933),
            // SHA-384 (RFC 6605). CDS "0 0 0 00" asks the parent to delete
            // the DS (RFC 8078 §4): digest type 0 takes any length.
            let digest_len = [(1, 20), (2, 32), (3, 32), (4, 48)];
            out.extend(fields.digest("digest", digest_type, &digest_len)?);
        }
        RType::DNSKEY | RType::CDNSKEY => {
            // RFC 4034 §2.2: flags, protocol, algorithm, key in base64.
            out.extend(fields.u16("flags")?.to_be_bytes());
            out.push(fields.u8("protocol")?);
            out.push(fields.algorithm()?);
            out.extend(fields.base64_rest("public key")?);
        }
        RType::CSYNC => {
            // RFC 7477 §2.1: SOA serial, flags, type bit map.
            out.extend(fields.u32("serial")?.to_be_bytes());
            // RFC 7477 §2.1.1.2: "The remaining flags are reserved for use
            // by future specifications. Undefined flags MUST be set to 0".
            // hickory-proto 0.26.3, which reads pg2dns's zone transfers,
            // fails the whole transfer on a CSYNC with one set (measured).
            let tok = fields.tokens.get(fields.at);
            let flags = fields.u16("flags")?;
            if flags & !CSYNC_DEFINED_FLAGS != 0 {
                let value = tok.map(|t| t.raw).unwrap_or_default().to_owned();
                return Err(RdataError::BadField {
                    rtype,
                    field: "flags",
                    value,
                    reason: "only 1 (immediate) and 2 (soaminimum) are defined; RFC 7477 says the others must be 0".into(),
                });
            }
            out.extend(flags.to_be_bytes());
            let mut types = Vec::new();
            while !fields.is_empty() {
                let tok = fields.next("type")?;
                let text = fields.bare(tok, "type")?;
                let rtype = RType::parse(text).map_err(|_| {
                    fields.bad(
                        tok,
                        "type",
                        "not a record type (a mnemonic or TYPEnnn)".into(),
                    )
                })?;
                types.push(rtype.0);
            }
            push_type_bitmap(&mut out, &types);
        }
        RType::URI => {
            // RFC 7553 §4.5: "The Target field ... as a quoted string".
            out.extend(fields.u16("priority")?.to_be_bytes());
            out.extend(fields.u16("weight")?.to_be_bytes());
            let tok = fields.next("target")?;
            if tok.quoting != Quoting::Quoted {
                return Err(fields.bad(tok, "target", "must be a quoted string".into()));
            }
            if tok.bytes.is_empty() {
                return Err(fields.bad(tok, "target", "must not be empty".into()));
            }
            out.extend(&tok.bytes);
        }
        RType::LOC => parse_loc(&mut fields, &mut out)?,
        RType::OPENPGPKEY => out.extend(fields.base64_rest("public key")?),
        RType::SMIMEA => {
            // RFC 8162 §2: the TLSA fields.
            out.push(fields.u8("certificate usage")?);
            out.push(fields.u8("selector")?);
            let matching = fields.u8("matching type")?;
            out.push(matching);
            let digest_len = [(1, 32), (2, 64)];
            out.extend(fields.digest("certificate association data", matching, &digest_len)?);
        }
        RType::CERT => {
            // RFC 4398 §2.2: type (a mnemonic or a number), key tag,
            // algorithm, certificate in base64.
            let tok = fields.next("certificate type")?;
            let text = fields.bare(tok, "certificate type")?;
            let cert_type = match CERT_TYPES.iter().find(|(n, _)| n.eq_ignore_ascii_case(text)) {
                Some(&(_, n)) => n,
                None => decimal_u16(text).ok_or_else(|| {
                    fields.bad(
                        tok,
                        "certificate type",
                        "must be PKIX, SPKI, PGP, IPKIX, ISPKI, IPGP, ACPKIX, IACPKIX, URI, OID or a number from 0 to 65535".into(),
                    )
                })?,
            };
            out.extend(cert_type.to_be_bytes());
            out.extend(fields.u16("key tag")?.to_be_bytes());
            out.push(fields.algorithm()?);
            out.extend(fields.base64_rest("certificate")?);
        }
        _ => {
            return Err(RdataError::UnsupportedType {
                rtype: rtype.to_string(),
            })
        }
    }
    fields.finish()?;
    if out.len() > usize::from(u16::MAX) {
        return Err(RdataError::TooLong { len: out.len() });
    }
    Ok(out)
}

/// Canonical presentation form of wire record data: `parse(t, &format(t, w)?)? == w` for every w that parse produced.
pub fn format(rtype: RType, wire: &[u8]) -> Result<String, RdataError> {
    if !rtype.is_supported() {
        return Err(RdataError::UnsupportedType {
            rtype: rtype.to_string(),
        });
    }
    let mut r = Reader { rtype, wire, at: 0 };
    let mut out = String::new();
    match rtype {
        RType::A => {
            let b = r.take(4)?;
            let octets: [u8; 4] = b.try_into().map_err(|_| r.bad())?;
            write!(out, "{}", Ipv4Addr::from(octets)).ok();
        }
        RType::AAAA => {
            let b = r.take(16)?;
            let octets: [u8; 16] = b.try_into().map_err(|_| r.bad())?;
            write!(out, "{}", Ipv6Addr::from(octets)).ok();
        }
        RType::CNAME | RType::NS | RType::PTR => {
            write!(out, "{}", r.name()?).ok();
        }
        RType::MX => {
            let pref = r.u16()?;
            write!(out, "{pref} {}", r.name()?).ok();
        }
        RType::SRV => {
            let (priority, weight, port) = (r.u16()?, r.u16()?, r.u16()?);
            write!(out, "{priority} {weight} {port} {}", r.name()?).ok();
        }
        RType::TXT => {
            if r.done() {
                return Err(r.bad());
            }
            while !r.done() {
                if !out.is_empty() {
                    out.push(' ');
                }
                let s = r.string()?;
                quote_into(&mut out, s);
            }
        }
        RType::HINFO => {
            let cpu = r.string()?;
            let os = r.string()?;
            quote_into(&mut out, cpu);
            out.push(' ');
            quote_into(&mut out, os);
        }
        RType::NAPTR => {
            let (order, pref) = (r.u16()?, r.u16()?);
            write!(out, "{order} {pref}").ok();
            for _ in 0..3 {
                out.push(' ');
                let s = r.string()?;
                quote_into(&mut out, s);
            }
            write!(out, " {}", r.name()?).ok();
        }
        RType::CAA => {
            let flags = r.u8()?;
            let tag_at = r.at;
            let len = r.u8()?;
            let tag = r.take(usize::from(len))?;
            if tag.is_empty() || tag.len() > 15 || !tag.iter().all(u8::is_ascii_alphanumeric) {
                return Err(RdataError::BadWire {
                    rtype,
                    offset: tag_at,
                });
            }
            let value = r.rest();
            write!(out, "{flags} {} ", String::from_utf8_lossy(tag)).ok();
            quote_into(&mut out, value);
        }
        RType::SSHFP => {
            let (alg, fp) = (r.u8()?, r.u8()?);
            let data = r.rest_nonempty()?;
            write!(out, "{alg} {fp} {}", hex(data)).ok();
        }
        RType::TLSA => {
            let (usage, selector, matching) = (r.u8()?, r.u8()?, r.u8()?);
            let data = r.rest_nonempty()?;
            write!(out, "{usage} {selector} {matching} {}", hex(data)).ok();
        }
        RType::SVCB | RType::HTTPS => format_svcb(&mut r, &mut out)?,
        RType::DNAME => {
            write!(out, "{}", r.name()?).ok();
        }
        RType::RP => {
            let mailbox = r.name()?;
            write!(out, "{mailbox} {}", r.name()?).ok();
        }
        RType::AFSDB => {
            let subtype = r.u16()?;
            write!(out, "{subtype} {}", r.name()?).ok();
        }
        RType::DS | RType::CDS => {
            let (tag, alg, digest_type) = (r.u16()?, r.u8()?, r.u8()?);
            let digest = r.rest_nonempty()?;
            write!(out, "{tag} {alg} {digest_type} {}", hex(digest)).ok();
        }
        RType::DNSKEY | RType::CDNSKEY => {
            let (flags, protocol, alg) = (r.u16()?, r.u8()?, r.u8()?);
            let key = r.rest_nonempty()?;
            write!(out, "{flags} {protocol} {alg} {}", base64(key)).ok();
        }
        RType::CSYNC => {
            let serial = u32::from_be_bytes(r.array::<4>()?);
            let flags = r.u16()?;
            write!(out, "{serial} {flags}").ok();
            for t in read_type_bitmap(&mut r)? {
                write!(out, " {t}").ok();
            }
        }
        RType::URI => {
            let (priority, weight) = (r.u16()?, r.u16()?);
            let target = r.rest_nonempty()?;
            write!(out, "{priority} {weight} ").ok();
            quote_into(&mut out, target);
        }
        RType::LOC => format_loc(&mut r, &mut out)?,
        RType::OPENPGPKEY => out.push_str(&base64(r.rest_nonempty()?)),
        RType::SMIMEA => {
            let (usage, selector, matching) = (r.u8()?, r.u8()?, r.u8()?);
            let data = r.rest_nonempty()?;
            write!(out, "{usage} {selector} {matching} {}", hex(data)).ok();
        }
        RType::CERT => {
            let (cert_type, tag, alg) = (r.u16()?, r.u16()?, r.u8()?);
            let cert = r.rest_nonempty()?;
            write!(out, "{cert_type} {tag} {alg} {}", base64(cert)).ok();
        }
        _ => {
            return Err(RdataError::UnsupportedType {
                rtype: rtype.to_string(),
            })
        }
    }
    if !r.done() {
        return Err(r.bad());
    }
    Ok(out)
}

/// The domain name a record points at, for types that have one: CNAME, NS, PTR, DNAME (the name), MX (exchange), SRV (target), NAPTR (replacement), SVCB/HTTPS (target), AFSDB (hostname). None otherwise.
pub fn target(rtype: RType, wire: &[u8]) -> Option<Name> {
    let mut r = Reader { rtype, wire, at: 0 };
    match rtype {
        RType::CNAME | RType::NS | RType::PTR | RType::DNAME => {}
        RType::MX | RType::SVCB | RType::HTTPS | RType::AFSDB => {
            r.take(2).ok()?;
        }
        RType::SRV => {
            r.take(6).ok()?;
        }
        RType::NAPTR => {
            r.take(4).ok()?;
            for _ in 0..3 {
                r.string().ok()?;
            }
        }
        _ => return None,
    }
    r.name().ok()
}

// ---------------------------------------------------------------------------
// Tokens

/// How a token was written.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Quoting {
    /// No quotes at all.
    Bare,
    /// One quoted string and nothing else.
    Quoted,
    /// Bare and quoted pieces run together (`alpn="h2,h3"`).
    Mixed,
}

/// One whitespace-separated token, escapes decoded.
#[derive(Debug)]
struct Token<'a> {
    /// The source text of the token, escapes and quotes included.
    raw: &'a str,
    /// Where `raw` starts in the record data text.
    start: usize,
    /// The decoded bytes.
    bytes: Vec<u8>,
    /// How it was written.
    quoting: Quoting,
    /// Whether an unescaped `;` appears outside quotes.
    bare_semicolon: bool,
}

/// Splits one line of record data into tokens (RFC 1035 §5.1 escapes, quotes).
fn tokenize(rtype: RType, text: &str) -> Result<Vec<Token<'_>>, RdataError> {
    let syntax = |reason: &str| RdataError::Syntax {
        rtype,
        reason: reason.to_owned(),
    };
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    loop {
        while chars.next_if(|&(_, c)| c == ' ' || c == '\t').is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut bytes = Vec::new();
        let (mut bare, mut quoted_pieces, mut in_quote) = (false, 0usize, false);
        let mut bare_semicolon = false;
        let mut end = text.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\n' | '\r' => return Err(syntax("record data is one line; write a line break as \\010")),
                '"' => {
                    if !in_quote {
                        quoted_pieces += 1;
                    }
                    in_quote = !in_quote;
                }
                '\\' => {
                    if !in_quote {
                        bare = true;
                    }
                    let (_, next) = chars
                        .next()
                        .ok_or_else(|| syntax("a backslash at the end of the text escapes nothing"))?;
                    if let Some(d0) = next.to_digit(10) {
                        let d1 = chars.next().and_then(|(_, c)| c.to_digit(10));
                        let d2 = chars.next().and_then(|(_, c)| c.to_digit(10));
                        let (Some(d1), Some(d2)) = (d1, d2) else {
                            return Err(syntax("a decimal escape is \\DDD with exactly three digits"));
                        };
                        let byte = u8::try_from(d0 * 100 + d1 * 10 + d2)
                            .map_err(|_| syntax("a decimal escape \\DDD is at most \\255"))?;
                        bytes.push(byte);
                    } else {
                        push_char(&mut bytes, next);
                    }
                }
                c if in_quote => push_char(&mut bytes, c),
                ' ' | '\t' => {
                    end = i;
                    break;
                }
                '(' | ')' => {
                    return Err(syntax(
                        "parentheses are not supported (record data is one line); escape them as \\( and \\)",
                    ))
                }
                c => {
                    bare = true;
                    if c == ';' {
                        bare_semicolon = true;
                    }
                    push_char(&mut bytes, c);
                }
            }
        }
        if in_quote {
            return Err(syntax("a quoted string is not closed"));
        }
        let quoting = match (bare, quoted_pieces) {
            (_, 0) => Quoting::Bare,
            (false, 1) => Quoting::Quoted,
            _ => Quoting::Mixed,
        };
        tokens.push(Token {
            raw: text.get(start..end).unwrap_or_default(),
            start,
            bytes,
            quoting,
            bare_semicolon,
        });
    }
    Ok(tokens)
}

/// Appends the UTF-8 bytes of `c`.
fn push_char(bytes: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

/// A cursor over the tokens of one record's data.
struct Fields<'t, 'a> {
    rtype: RType,
    text: &'a str,
    tokens: &'t [Token<'a>],
    at: usize,
}

impl<'t, 'a> Fields<'t, 'a> {
    /// The next token, or MissingField.
    fn next(&mut self, field: &'static str) -> Result<&'t Token<'a>, RdataError> {
        let tok = self.tokens.get(self.at).ok_or(RdataError::MissingField {
            rtype: self.rtype,
            field,
        })?;
        self.at += 1;
        Ok(tok)
    }

    /// Whether all tokens were used.
    fn is_empty(&self) -> bool {
        self.at >= self.tokens.len()
    }

    /// Fails with TrailingData if tokens are left.
    fn finish(&self) -> Result<(), RdataError> {
        match self.tokens.get(self.at) {
            Some(tok) => Err(RdataError::TrailingData {
                rtype: self.rtype,
                token: tok.raw.to_owned(),
            }),
            None => Ok(()),
        }
    }

    fn bad(&self, tok: &Token<'_>, field: &'static str, reason: String) -> RdataError {
        RdataError::BadField {
            rtype: self.rtype,
            field,
            value: tok.raw.to_owned(),
            reason,
        }
    }

    /// The text of an unquoted token without escapes (numbers, addresses, tags).
    fn bare<'b>(&self, tok: &'b Token<'_>, field: &'static str) -> Result<&'b str, RdataError> {
        if tok.quoting != Quoting::Bare || tok.raw.contains('\\') {
            return Err(self.bad(
                tok,
                field,
                "must be written without quotes or escapes".into(),
            ));
        }
        Ok(tok.raw)
    }

    /// A decimal number of at most `max`.
    fn number(&mut self, field: &'static str, max: u16) -> Result<u16, RdataError> {
        let tok = self.next(field)?;
        let text = self.bare(tok, field)?;
        let reason = || format!("must be a decimal number from 0 to {max}");
        if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.bad(tok, field, reason()));
        }
        match text.parse::<u32>() {
            Ok(n) if n <= u32::from(max) => Ok(n as u16),
            _ => Err(self.bad(tok, field, reason())),
        }
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, RdataError> {
        self.number(field, u16::MAX)
    }

    /// A decimal number from 0 to 4294967295.
    fn u32(&mut self, field: &'static str) -> Result<u32, RdataError> {
        let tok = self.next(field)?;
        let text = self.bare(tok, field)?;
        let ok = !text.is_empty() && text.len() <= 10 && text.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| text.parse::<u32>().ok())
            .flatten()
            .ok_or_else(|| {
                self.bad(
                    tok,
                    field,
                    "must be a decimal number from 0 to 4294967295".into(),
                )
            })
    }

    /// A DNSSEC algorithm: a number from 0 to 255 or its mnemonic (RFC 4034
    /// Appendix A.1, as the IANA registry names them).
    fn algorithm(&mut self) -> Result<u8, RdataError> {
        let field = "algorithm";
        let tok = self.next(field)?;
        let text = self.bare(tok, field)?;
        if let Some(&(_, n)) = ALGORITHMS
            .iter()
            .find(|(m, _)| m.eq_ignore_ascii_case(text))
        {
            return Ok(n);
        }
        decimal_u16(text)
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(|| {
                self.bad(
                    tok,
                    field,
                    "must be a number from 0 to 255 or a mnemonic such as ECDSAP256SHA256".into(),
                )
            })
    }

    /// One or more base64 tokens, concatenated (RFC 4034 §2.2: "The Public
    /// Key field is represented as a Base64 encoding ... whitespace is
    /// allowed within the Base64 text"). Padding is required, as BIND and
    /// dnspython require it.
    fn base64_rest(&mut self, field: &'static str) -> Result<Vec<u8>, RdataError> {
        let first = self.next(field)?;
        let mut text = String::from(self.bare(first, field)?);
        while !self.is_empty() {
            let tok = self.next(field)?;
            text.push_str(self.bare(tok, field)?);
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&text)
            .map_err(|e| RdataError::BadField {
                rtype: self.rtype,
                field,
                value: text.clone(),
                reason: format!("must be base64 ({e})"),
            })?;
        if bytes.is_empty() {
            return Err(RdataError::MissingField {
                rtype: self.rtype,
                field,
            });
        }
        Ok(bytes)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, RdataError> {
        self.number(field, u16::from(u8::MAX)).map(|n| n as u8)
    }

    /// A fully qualified name.
    fn name(&mut self, field: &'static str) -> Result<Name, RdataError> {
        let tok = self.next(field)?;
        if tok.quoting != Quoting::Bare {
            return Err(self.bad(tok, field, "a domain name is written without quotes".into()));
        }
        absolute_name(tok.raw)
    }

    /// A token's bytes as text-like data (quoted or a bare token without `;`).
    fn text_value(&mut self, field: &'static str) -> Result<Vec<u8>, RdataError> {
        let tok = self.next(field)?;
        match tok.quoting {
            Quoting::Mixed => Err(RdataError::Syntax {
                rtype: self.rtype,
                reason: format!(
                    "{field} {:?}: quote a whole string (and separate strings with a space), not part of it",
                    tok.raw
                ),
            }),
            Quoting::Bare if tok.bare_semicolon => Err(RdataError::UnquotedText {
                quoted: format!("\"{}\"", tok.raw),
            }),
            _ => Ok(tok.bytes.clone()),
        }
    }

    /// One character-string (at most 255 bytes).
    fn char_string(&mut self, field: &'static str) -> Result<Vec<u8>, RdataError> {
        let bytes = self.text_value(field)?;
        if bytes.len() > 255 {
            return Err(RdataError::StringTooLong { len: bytes.len() });
        }
        Ok(bytes)
    }

    /// Hex data whose length must match a known digest type.
    fn digest(
        &mut self,
        field: &'static str,
        kind: u8,
        lengths: &[(u8, usize)],
    ) -> Result<Vec<u8>, RdataError> {
        let data = self.hex_rest(field)?;
        match lengths.iter().find(|(k, _)| *k == kind) {
            Some(&(_, len)) if data.len() != len => Err(RdataError::BadField {
                rtype: self.rtype,
                field,
                value: hex(&data),
                reason: format!(
                    "type {kind} is a {len}-byte digest, this has {} bytes",
                    data.len()
                ),
            }),
            _ => Ok(data),
        }
    }

    /// One or more hex tokens, concatenated.
    fn hex_rest(&mut self, field: &'static str) -> Result<Vec<u8>, RdataError> {
        let first = self.next(field)?;
        let mut text = String::from(self.bare(first, field)?);
        while !self.is_empty() {
            let tok = self.next(field)?;
            text.push_str(self.bare(tok, field)?);
        }
        unhex(&text).ok_or_else(|| RdataError::BadField {
            rtype: self.rtype,
            field,
            value: text.clone(),
            reason: "must be an even number of hexadecimal digits".into(),
        })
    }
}

/// Parses a name that must be fully qualified.
fn absolute_name(text: &str) -> Result<Name, RdataError> {
    Name::parse_absolute(text).map_err(|e| match e {
        NameError::Relative { name } => RdataError::RelativeName { name },
        e => RdataError::Name(e),
    })
}

/// Appends a length-prefixed character-string.
fn push_string(out: &mut Vec<u8>, s: &[u8]) -> Result<(), RdataError> {
    let len = u8::try_from(s.len()).map_err(|_| RdataError::StringTooLong { len: s.len() })?;
    out.push(len);
    out.extend_from_slice(s);
    Ok(())
}

/// TXT: quoted strings, or a single bare token without `;`.
fn parse_txt(fields: &mut Fields<'_, '_>, out: &mut Vec<u8>) -> Result<(), RdataError> {
    let tokens = fields.tokens;
    if tokens.is_empty() {
        return Err(RdataError::MissingField {
            rtype: fields.rtype,
            field: "text",
        });
    }
    let any_bare = tokens.iter().any(|t| t.quoting == Quoting::Bare);
    let lone_safe = tokens.len() == 1 && !tokens.iter().any(|t| t.bare_semicolon);
    if any_bare && !lone_safe {
        let quoted = if tokens.iter().all(|t| t.quoting == Quoting::Bare) {
            // All bare: the writer almost surely meant one string, spaces included.
            let start = tokens.first().map_or(0, |t| t.start);
            let end = tokens.last().map_or(0, |t| t.start + t.raw.len());
            let joined = fields.text.get(start..end).unwrap_or_default();
            format!("\"{joined}\"")
        } else {
            tokens
                .iter()
                .map(|t| match t.quoting {
                    Quoting::Bare => format!("\"{}\"", t.raw),
                    _ => t.raw.to_owned(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        return Err(RdataError::UnquotedText { quoted });
    }
    while !fields.is_empty() {
        let s = fields.char_string("text")?;
        push_string(out, &s)?;
    }
    Ok(())
}

/// RFC 3597 `\# <length> <hex>…`, validated by formatting and re-parsing.
fn parse_generic(rtype: RType, text: &str, tokens: &[Token<'_>]) -> Result<Vec<u8>, RdataError> {
    let mut fields = Fields {
        rtype,
        text,
        tokens,
        at: 0,
    };
    let len = fields.u16("length")?;
    let wire = if fields.is_empty() {
        Vec::new()
    } else {
        fields.hex_rest("data")?
    };
    if wire.len() != usize::from(len) {
        return Err(RdataError::BadField {
            rtype,
            field: "length",
            value: len.to_string(),
            reason: format!("the data has {} bytes", wire.len()),
        });
    }
    // Formatting checks the layout; re-parsing lower-cases names.
    parse(rtype, &format(rtype, &wire)?)
}

// ---------------------------------------------------------------------------
// SVCB and HTTPS (RFC 9460)

const KEY_MANDATORY: u16 = 0;
const KEY_ALPN: u16 = 1;
const KEY_NO_DEFAULT_ALPN: u16 = 2;
const KEY_PORT: u16 = 3;
const KEY_IPV4HINT: u16 = 4;
const KEY_ECH: u16 = 5;
const KEY_IPV6HINT: u16 = 6;
/// "Invalid key" (RFC 9460 §14.3.2).
const KEY_INVALID: u16 = 65535;

const KEY_NAMES: &[(&str, u16)] = &[
    ("mandatory", KEY_MANDATORY),
    ("alpn", KEY_ALPN),
    ("no-default-alpn", KEY_NO_DEFAULT_ALPN),
    ("port", KEY_PORT),
    ("ipv4hint", KEY_IPV4HINT),
    ("ech", KEY_ECH),
    ("ipv6hint", KEY_IPV6HINT),
];

/// A SvcParamKey from its presentation name or `keyNNNNN`.
fn svc_key(text: &[u8]) -> Option<u16> {
    if let Some(&(_, key)) = KEY_NAMES.iter().find(|(n, _)| n.as_bytes() == text) {
        return Some(key);
    }
    let digits = text.strip_prefix(b"key")?;
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u32 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    u16::try_from(n).ok().filter(|&k| k != KEY_INVALID)
}

/// The presentation name of a SvcParamKey.
fn svc_key_name(key: u16) -> String {
    match KEY_NAMES.iter().find(|(_, k)| *k == key) {
        Some((name, _)) => (*name).to_owned(),
        None => format!("key{key}"),
    }
}

fn parse_svcb(fields: &mut Fields<'_, '_>, out: &mut Vec<u8>) -> Result<(), RdataError> {
    let rtype = fields.rtype;
    let priority = fields.u16("priority")?;
    out.extend(priority.to_be_bytes());
    out.extend(fields.name("target")?.as_wire());
    let mut params: Vec<(u16, Vec<u8>)> = Vec::new();
    while !fields.is_empty() {
        let tok = fields.next("parameter")?;
        let (key_text, value) = match tok.bytes.iter().position(|&b| b == b'=') {
            Some(eq) => (
                tok.bytes.get(..eq).unwrap_or_default(),
                Some(tok.bytes.get(eq + 1..).unwrap_or_default()),
            ),
            None => (&tok.bytes[..], None),
        };
        let bad = |reason: String| RdataError::BadField {
            rtype,
            field: "parameter",
            value: tok.raw.to_owned(),
            reason,
        };
        let key = svc_key(key_text).ok_or_else(|| {
            bad("unknown key (use mandatory, alpn, no-default-alpn, port, ipv4hint, ech, ipv6hint or keyNNNNN)".into())
        })?;
        if params.iter().any(|(k, _)| *k == key) {
            return Err(bad("the key appears more than once".into()));
        }
        let wire = svc_value(key, value).map_err(bad)?;
        if wire.len() > usize::from(u16::MAX) {
            return Err(RdataError::TooLong { len: wire.len() });
        }
        params.push((key, wire));
    }
    params.sort_by_key(|(k, _)| *k);
    check_params(rtype, priority, &params)?;
    for (key, value) in params {
        out.extend(key.to_be_bytes());
        out.extend((value.len() as u16).to_be_bytes());
        out.extend(value);
    }
    Ok(())
}

/// Consistency rules that need all the parameters (RFC 9460 §2.4.3, §7, §8).
fn check_params(rtype: RType, priority: u16, params: &[(u16, Vec<u8>)]) -> Result<(), RdataError> {
    let syntax = |reason: String| RdataError::Syntax { rtype, reason };
    if priority == 0 && !params.is_empty() {
        return Err(syntax("priority 0 (AliasMode) takes no parameters".into()));
    }
    let has = |key: u16| params.iter().any(|(k, _)| *k == key);
    if has(KEY_NO_DEFAULT_ALPN) && !has(KEY_ALPN) {
        return Err(syntax("no-default-alpn needs alpn too".into()));
    }
    if let Some((_, list)) = params.iter().find(|(k, _)| *k == KEY_MANDATORY) {
        for pair in list.chunks(2) {
            let key = u16::from_be_bytes([
                pair.first().copied().unwrap_or(0),
                pair.get(1).copied().unwrap_or(0),
            ]);
            if !has(key) {
                return Err(syntax(format!(
                    "mandatory lists {} but the record does not have it",
                    svc_key_name(key)
                )));
            }
        }
    }
    Ok(())
}

/// The wire value of one SvcParam from its decoded presentation value.
fn svc_value(key: u16, value: Option<&[u8]>) -> Result<Vec<u8>, String> {
    let needs = || format!("{} needs a value", svc_key_name(key));
    let text = || -> Result<&str, String> {
        let v = value.ok_or_else(needs)?;
        let s = std::str::from_utf8(v).map_err(|_| "the value is not text".to_owned())?;
        if s.is_empty() {
            return Err(needs());
        }
        Ok(s)
    };
    let mut out = Vec::new();
    match key {
        KEY_MANDATORY => {
            let mut keys = Vec::new();
            for item in text()?.split(',') {
                let k = svc_key(item.as_bytes())
                    .ok_or_else(|| format!("unknown key {item:?} in mandatory"))?;
                if k == KEY_MANDATORY {
                    return Err("mandatory cannot list itself".into());
                }
                if keys.contains(&k) {
                    return Err(format!("{item} appears twice in mandatory"));
                }
                keys.push(k);
            }
            keys.sort_unstable();
            for k in keys {
                out.extend(k.to_be_bytes());
            }
        }
        KEY_ALPN => {
            let v = value.filter(|v| !v.is_empty()).ok_or_else(needs)?;
            for id in split_value_list(v)? {
                if id.is_empty() || id.len() > 255 {
                    return Err("each alpn protocol is 1 to 255 bytes".into());
                }
                out.push(id.len() as u8);
                out.extend(id);
            }
        }
        KEY_NO_DEFAULT_ALPN => {
            if value.is_some_and(|v| !v.is_empty()) {
                return Err("no-default-alpn takes no value".into());
            }
        }
        KEY_PORT => {
            let t = text()?;
            let port = (t.len() <= 5 && t.bytes().all(|b| b.is_ascii_digit()))
                .then(|| t.parse::<u16>().ok())
                .flatten()
                .ok_or("port must be a decimal number from 0 to 65535")?;
            out.extend(port.to_be_bytes());
        }
        KEY_IPV4HINT => {
            for item in text()?.split(',') {
                let addr: Ipv4Addr = item
                    .parse()
                    .map_err(|_| format!("{item:?} is not an IPv4 address"))?;
                out.extend(addr.octets());
            }
        }
        KEY_IPV6HINT => {
            for item in text()?.split(',') {
                let addr: Ipv6Addr = item
                    .parse()
                    .map_err(|_| format!("{item:?} is not an IPv6 address"))?;
                out.extend(addr.octets());
            }
        }
        KEY_ECH => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text()?)
                .map_err(|_| "ech must be base64".to_owned())?;
            if !is_ech_config_list(&bytes) {
                return Err("ech must be an ECHConfigList (a 2-byte length, then that many bytes, at least 4)".into());
            }
            out = bytes;
        }
        _ => out = value.unwrap_or_default().to_vec(),
    }
    Ok(out)
}

/// Whether `bytes` is shaped as an ECHConfigList: "a length prefix and 4 or more octets".
fn is_ech_config_list(bytes: &[u8]) -> bool {
    match bytes {
        [hi, lo, rest @ ..] => {
            rest.len() >= 4 && usize::from(u16::from_be_bytes([*hi, *lo])) == rest.len()
        }
        _ => false,
    }
}

/// Splits a decoded value-list on commas; `\,` and `\\` escape (RFC 9460 Appendix A.1).
fn split_value_list(value: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut items = vec![Vec::new()];
    let mut bytes = value.iter();
    while let Some(&b) = bytes.next() {
        let current = items.last_mut().ok_or("empty list")?;
        match b {
            b'\\' => current.push(
                *bytes
                    .next()
                    .ok_or("a backslash at the end of the list escapes nothing")?,
            ),
            b',' => items.push(Vec::new()),
            b => current.push(b),
        }
    }
    Ok(items)
}

fn format_svcb(r: &mut Reader<'_>, out: &mut String) -> Result<(), RdataError> {
    let rtype = r.rtype;
    let priority = r.u16()?;
    write!(out, "{priority} {}", r.name()?).ok();
    let mut params: Vec<(u16, Vec<u8>)> = Vec::new();
    while !r.done() {
        let key_at = r.at;
        let key = r.u16()?;
        let len = r.u16()?;
        let value_at = r.at;
        let value = r.take(usize::from(len))?;
        if params.last().is_some_and(|(k, _)| *k >= key) || key == KEY_INVALID {
            return Err(RdataError::BadWire {
                rtype,
                offset: key_at,
            });
        }
        let bad = || RdataError::BadWire {
            rtype,
            offset: value_at,
        };
        out.push(' ');
        let name = svc_key_name(key);
        match key {
            KEY_MANDATORY => {
                if value.is_empty() || !value.len().is_multiple_of(2) {
                    return Err(bad());
                }
                let keys: Vec<u16> = value
                    .chunks_exact(2)
                    .map(|p| u16::from_be_bytes([p[0], p[1]]))
                    .collect();
                if keys.windows(2).any(|w| w[0] >= w[1])
                    || keys.contains(&KEY_MANDATORY)
                    || keys.contains(&KEY_INVALID)
                {
                    return Err(bad());
                }
                let names: Vec<String> = keys.into_iter().map(svc_key_name).collect();
                write!(out, "{name}={}", names.join(",")).ok();
            }
            KEY_ALPN => {
                let mut list = Vec::new();
                let mut inner = Reader {
                    rtype,
                    wire: value,
                    at: 0,
                };
                if inner.done() {
                    return Err(bad());
                }
                while !inner.done() {
                    let id = inner.string().map_err(|_| bad())?;
                    if id.is_empty() {
                        return Err(bad());
                    }
                    if !list.is_empty() {
                        list.push(b',');
                    }
                    for &b in id {
                        if b == b',' || b == b'\\' {
                            list.push(b'\\');
                        }
                        list.push(b);
                    }
                }
                write!(out, "{name}=").ok();
                quote_into(out, &list);
            }
            KEY_NO_DEFAULT_ALPN => {
                if !value.is_empty() {
                    return Err(bad());
                }
                out.push_str(&name);
            }
            KEY_PORT => {
                let port: [u8; 2] = value.try_into().map_err(|_| bad())?;
                write!(out, "{name}={}", u16::from_be_bytes(port)).ok();
            }
            KEY_IPV4HINT => {
                if value.is_empty() || !value.len().is_multiple_of(4) {
                    return Err(bad());
                }
                let addrs: Vec<String> = value
                    .chunks_exact(4)
                    .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]).to_string())
                    .collect();
                write!(out, "{name}={}", addrs.join(",")).ok();
            }
            KEY_IPV6HINT => {
                if value.is_empty() || !value.len().is_multiple_of(16) {
                    return Err(bad());
                }
                let mut addrs = Vec::new();
                for c in value.chunks_exact(16) {
                    let octets: [u8; 16] = c.try_into().map_err(|_| bad())?;
                    addrs.push(Ipv6Addr::from(octets).to_string());
                }
                write!(out, "{name}={}", addrs.join(",")).ok();
            }
            KEY_ECH => {
                if !is_ech_config_list(value) {
                    return Err(bad());
                }
                let b64 = base64::engine::general_purpose::STANDARD.encode(value);
                write!(out, "{name}=\"{b64}\"").ok();
            }
            _ => {
                if value.is_empty() {
                    out.push_str(&name);
                } else {
                    write!(out, "{name}=").ok();
                    quote_into(out, value);
                }
            }
        }
        params.push((key, value.to_vec()));
    }
    check_params(rtype, priority, &params).map_err(|_| RdataError::BadWire { rtype, offset: 2 })
}

// ---------------------------------------------------------------------------
// LOC (RFC 1876)

/// The CSYNC flags RFC 7477 §2.1.1.2 defines: immediate (1), soaminimum (2).
const CSYNC_DEFINED_FLAGS: u16 = 0b11;

/// The largest LOC size or precision pg2dns writes, in centimetres:
/// 40,000,000 m. The format reaches 90,000,000 m, but PowerDNS 4.7 keeps
/// these in 32 bits of centimetres and answers 50,000,000 m as 7,000,000 m
/// (measured 2026-12-07); the Earth's circumference is about 40,000 km.
const LOC_MAX_SIZE: i64 = 4_000_000_000;

/// 2^31: the equator and the prime meridian (RFC 1876 §2).
const LOC_ZERO: u32 = 1 << 31;
/// 100,000 m below the WGS 84 spheroid, in centimetres: altitude 0 on the wire.
const LOC_ALT_BASE: i64 = 10_000_000;
/// The default size (1 m), horizontal (10,000 m) and vertical (10 m)
/// precision, in centimetres (RFC 1876 §3).
const LOC_DEFAULTS: [i64; 3] = [100, 1_000_000, 1_000];

/// Parses `d1 [m1 [s1]] {N|S} d2 [m2 [s2]] {E|W} alt[m] [siz[m] [hp[m]
/// [vp[m]]]]` (RFC 1876 §3). Values the wire cannot hold exactly are
/// refused rather than rounded (BIND and dnspython write `1.5m` as 1 m and
/// `1.234m` as 1.23 m): a size or precision is one digit times a power of
/// ten centimetres, an altitude has at most two decimals, seconds three.
fn parse_loc(fields: &mut Fields<'_, '_>, out: &mut Vec<u8>) -> Result<(), RdataError> {
    let lat = loc_coordinate(fields, "latitude", 90, ["N", "S"])?;
    let lon = loc_coordinate(fields, "longitude", 180, ["E", "W"])?;
    let tok = fields.next("altitude")?;
    let alt = loc_metres(fields.bare(tok, "altitude")?, true)
        .filter(|cm| (-LOC_ALT_BASE..=i64::from(u32::MAX) - LOC_ALT_BASE).contains(cm))
        .ok_or_else(|| {
            fields.bad(
                tok,
                "altitude",
                "must be metres from -100000.00 to 42849672.95 with at most two decimals".into(),
            )
        })?;
    let mut sizes = [0u8; 3];
    for (i, field) in ["size", "horizontal precision", "vertical precision"]
        .into_iter()
        .enumerate()
    {
        let byte = if fields.is_empty() {
            LOC_DEFAULTS
                .get(i)
                .copied()
                .and_then(loc_size_byte)
                .unwrap_or(0)
        } else {
            let tok = fields.next(field)?;
            let cm = loc_metres(fields.bare(tok, field)?, false).ok_or_else(|| {
                fields.bad(
                    tok,
                    field,
                    "must be metres with at most two decimals".into(),
                )
            })?;
            if cm > LOC_MAX_SIZE {
                return Err(fields.bad(
                    tok,
                    field,
                    "at most 40000000m (PowerDNS 4.7 cannot hold more)".into(),
                ));
            }
            loc_size_byte(cm).ok_or_else(|| {
                fields.bad(tok, field, "a LOC size or precision is one digit times a power of ten centimetres (0.01m, 0.3m, 1m, 20m … 90000000m), so the record cannot hold this value".into())
            })?
        };
        if let Some(slot) = sizes.get_mut(i) {
            *slot = byte;
        }
    }
    out.push(0);
    out.extend(sizes);
    out.extend(lat.to_be_bytes());
    out.extend(lon.to_be_bytes());
    out.extend(((alt + LOC_ALT_BASE) as u32).to_be_bytes());
    Ok(())
}

/// Degrees, optional minutes and seconds, then the hemisphere letter:
/// the wire value (2^31 ± thousandths of a second of arc).
fn loc_coordinate(
    fields: &mut Fields<'_, '_>,
    field: &'static str,
    max_degrees: u32,
    [plus, minus]: [&str; 2],
) -> Result<u32, RdataError> {
    let mut parts: Vec<&str> = Vec::new();
    loop {
        let tok = fields.next(field)?;
        let text = fields.bare(tok, field)?;
        let sign = if text == plus {
            1
        } else if text == minus {
            -1
        } else if parts.len() < 3 {
            parts.push(text);
            continue;
        } else {
            return Err(fields.bad(
                tok,
                field,
                format!("expected the hemisphere, {plus} or {minus}"),
            ));
        };
        let whole = |t: &str, max: u32| -> Option<u32> {
            (!t.is_empty() && t.len() <= 3 && t.bytes().all(|b| b.is_ascii_digit()))
                .then(|| t.parse::<u32>().ok())
                .flatten()
                .filter(|n| *n <= max)
        };
        let millis_of_second = |t: &str| -> Option<u32> {
            let (int, frac) = t.split_once('.').unwrap_or((t, ""));
            let secs = whole(int, 59)?;
            if frac.len() > 3
                || !frac.bytes().all(|b| b.is_ascii_digit())
                || (t.contains('.') && frac.is_empty())
            {
                return None;
            }
            let frac_ms = format!("{frac:0<3}").parse::<u32>().ok()?;
            Some(secs * 1000 + frac_ms)
        };
        let reason = format!(
            "must be degrees (0 to {max_degrees}), then optionally minutes (0 to 59) and seconds (0 to 59.999), then {plus} or {minus}, at most {max_degrees} degrees in all"
        );
        let value = parts.join(" ");
        let bad = || RdataError::BadField {
            rtype: fields.rtype,
            field,
            value: format!("{value} {text}"),
            reason: reason.clone(),
        };
        let degrees = parts
            .first()
            .and_then(|t| whole(t, max_degrees))
            .ok_or_else(bad)?;
        let minutes = match parts.get(1) {
            Some(t) => whole(t, 59).ok_or_else(bad)?,
            None => 0,
        };
        let millis = match parts.get(2) {
            Some(t) => millis_of_second(t).ok_or_else(bad)?,
            None => 0,
        };
        let total = (degrees * 60 + minutes) * 60_000 + millis;
        if total > max_degrees * 3_600_000 {
            return Err(bad());
        }
        return Ok(if sign > 0 {
            LOC_ZERO + total
        } else {
            LOC_ZERO - total
        });
    }
}

/// Metres with at most two decimals and an optional `m`, in centimetres.
fn loc_metres(text: &str, signed: bool) -> Option<i64> {
    let text = text.strip_suffix('m').unwrap_or(text);
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) if signed => (true, rest),
        Some(_) => return None,
        None => (false, text),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty()
        || int.len() > 10
        || !all_digits(int)
        || frac.len() > 2
        || !all_digits(frac)
        || (digits.contains('.') && frac.is_empty())
    {
        return None;
    }
    let cm = int.parse::<i64>().ok()? * 100 + format!("{frac:0<2}").parse::<i64>().ok()?;
    Some(if negative { -cm } else { cm })
}

/// A size or precision in centimetres as RFC 1876's byte: the digit in the
/// high nibble, the power of ten in the low one. `None` when not exact.
fn loc_size_byte(mut cm: i64) -> Option<u8> {
    if cm == 0 {
        return Some(0);
    }
    let mut exponent = 0u8;
    while cm % 10 == 0 {
        cm /= 10;
        exponent += 1;
    }
    (cm <= 9 && exponent <= 9).then_some(((cm as u8) << 4) | exponent)
}

fn format_loc(r: &mut Reader<'_>, out: &mut String) -> Result<(), RdataError> {
    let version_at = r.at;
    if r.u8()? != 0 {
        return Err(RdataError::BadWire {
            rtype: r.rtype,
            offset: version_at,
        });
    }
    let mut sizes = [0i64; 3];
    for size in &mut sizes {
        let at = r.at;
        let byte = r.u8()?;
        let (digit, exponent) = (byte >> 4, byte & 0x0f);
        // Zero has one spelling (0x00), so that printing and parsing again
        // gives the same bytes.
        if digit > 9 || exponent > 9 || (digit == 0 && exponent != 0) {
            return Err(RdataError::BadWire {
                rtype: r.rtype,
                offset: at,
            });
        }
        *size = i64::from(digit) * 10i64.pow(u32::from(exponent));
    }
    for (max_degrees, [plus, minus]) in [(90u32, ['N', 'S']), (180, ['E', 'W'])] {
        let at = r.at;
        let value = u32::from_be_bytes(r.array::<4>()?);
        let (total, hemisphere) = if value >= LOC_ZERO {
            (value - LOC_ZERO, plus)
        } else {
            (LOC_ZERO - value, minus)
        };
        if total > max_degrees * 3_600_000 {
            return Err(RdataError::BadWire {
                rtype: r.rtype,
                offset: at,
            });
        }
        let (degrees, minutes, millis) = (total / 3_600_000, total / 60_000 % 60, total % 60_000);
        write!(
            out,
            "{degrees} {minutes} {}.{:03} {hemisphere} ",
            millis / 1000,
            millis % 1000
        )
        .ok();
    }
    let alt = i64::from(u32::from_be_bytes(r.array::<4>()?)) - LOC_ALT_BASE;
    let sign = if alt < 0 { "-" } else { "" };
    write!(out, "{sign}{}.{:02}m", alt.abs() / 100, alt.abs() % 100).ok();
    for cm in sizes {
        write!(out, " {}.{:02}m", cm / 100, cm % 100).ok();
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Wire reading and text helpers

/// A cursor over wire record data that reports where it failed.
struct Reader<'w> {
    rtype: RType,
    wire: &'w [u8],
    at: usize,
}

impl<'w> Reader<'w> {
    fn bad(&self) -> RdataError {
        RdataError::BadWire {
            rtype: self.rtype,
            offset: self.at,
        }
    }

    fn done(&self) -> bool {
        self.at >= self.wire.len()
    }

    fn take(&mut self, n: usize) -> Result<&'w [u8], RdataError> {
        let bytes = self
            .at
            .checked_add(n)
            .and_then(|end| self.wire.get(self.at..end))
            .ok_or_else(|| self.bad())?;
        self.at += n;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, RdataError> {
        Ok(*self.take(1)?.first().ok_or_else(|| self.bad())?)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RdataError> {
        let at = self.at;
        self.take(N)?.try_into().map_err(|_| RdataError::BadWire {
            rtype: self.rtype,
            offset: at,
        })
    }

    fn u16(&mut self) -> Result<u16, RdataError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([
            *b.first().ok_or_else(|| self.bad())?,
            *b.get(1).ok_or_else(|| self.bad())?,
        ]))
    }

    fn string(&mut self) -> Result<&'w [u8], RdataError> {
        let len = self.u8()?;
        self.take(usize::from(len))
    }

    fn name(&mut self) -> Result<Name, RdataError> {
        let (name, len) = Name::from_wire(self.wire.get(self.at..).unwrap_or_default())
            .map_err(|_| self.bad())?;
        self.at += len;
        Ok(name)
    }

    fn rest(&mut self) -> &'w [u8] {
        let rest = self.wire.get(self.at..).unwrap_or_default();
        self.at = self.wire.len();
        rest
    }

    fn rest_nonempty(&mut self) -> Result<&'w [u8], RdataError> {
        if self.done() {
            return Err(self.bad());
        }
        Ok(self.rest())
    }
}

/// Appends `bytes` as a quoted string: `"` and `\` escaped, bytes outside 0x20..=0x7e as `\DDD`.
fn quote_into(out: &mut String, bytes: &[u8]) {
    out.push('"');
    for &b in bytes {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => {
                write!(out, "\\{b:03}").ok();
            }
        }
    }
    out.push('"');
}

/// Base64 with padding, in one token.
fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A decimal number from 0 to 65535 written without sign or spaces.
fn decimal_u16(text: &str) -> Option<u16> {
    let ok = !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| text.parse::<u16>().ok()).flatten()
}

/// DNSSEC algorithm mnemonics (IANA "DNS Security Algorithm Numbers") that
/// BIND, Knot and dnspython spell alike; 6, 7 and 12 are spelt differently
/// by each, so they are written as numbers.
const ALGORITHMS: &[(&str, u8)] = &[
    ("RSAMD5", 1),
    ("DH", 2),
    ("DSA", 3),
    ("RSASHA1", 5),
    ("RSASHA256", 8),
    ("RSASHA512", 10),
    ("ECDSAP256SHA256", 13),
    ("ECDSAP384SHA384", 14),
    ("ED25519", 15),
    ("ED448", 16),
    ("INDIRECT", 252),
    ("PRIVATEDNS", 253),
    ("PRIVATEOID", 254),
];

/// CERT type mnemonics (RFC 4398 §2.1).
const CERT_TYPES: &[(&str, u16)] = &[
    ("PKIX", 1),
    ("SPKI", 2),
    ("PGP", 3),
    ("IPKIX", 4),
    ("ISPKI", 5),
    ("IPGP", 6),
    ("ACPKIX", 7),
    ("IACPKIX", 8),
    ("URI", 253),
    ("OID", 254),
];

/// Appends an NSEC-style type bit map (RFC 4034 §4.1.2, used by CSYNC, RFC
/// 7477 §2.1.1): one block per 256 types present, in increasing order, each
/// "Window Block # | Bitmap Length | Bitmap" with trailing zero octets
/// omitted. A type listed twice is one bit.
fn push_type_bitmap(out: &mut Vec<u8>, types: &[u16]) {
    let mut windows: std::collections::BTreeMap<u8, [u8; 32]> = std::collections::BTreeMap::new();
    for &t in types {
        let [window, low] = t.to_be_bytes();
        let bits = windows.entry(window).or_insert([0; 32]);
        if let Some(byte) = bits.get_mut(usize::from(low / 8)) {
            *byte |= 0x80 >> (low % 8);
        }
    }
    for (window, bits) in windows {
        let len = bits.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        out.push(window);
        out.push(len as u8);
        out.extend(bits.get(..len).unwrap_or_default());
    }
}

/// Reads a type bit map to the end of the data: the types in increasing
/// order. Refuses what [`push_type_bitmap`] never writes (windows out of
/// order, empty or over 32 octets, trailing zero octets).
fn read_type_bitmap(r: &mut Reader<'_>) -> Result<Vec<RType>, RdataError> {
    let mut types = Vec::new();
    let mut last_window: Option<u8> = None;
    while !r.done() {
        let at = r.at;
        let window = r.u8()?;
        let len = r.u8()?;
        let bits = r.take(usize::from(len))?;
        let bad = RdataError::BadWire {
            rtype: r.rtype,
            offset: at,
        };
        if last_window.is_some_and(|w| w >= window)
            || bits.is_empty()
            || bits.len() > 32
            || bits.last() == Some(&0)
        {
            return Err(bad);
        }
        last_window = Some(window);
        for (i, &byte) in bits.iter().enumerate() {
            for bit in 0..8u16 {
                if byte & (0x80 >> bit) != 0 {
                    types.push(RType((u16::from(window) << 8) | ((i as u16) * 8 + bit)));
                }
            }
        }
    }
    Ok(types)
}

/// Lower-case hexadecimal.
fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        write!(s, "{b:02x}").ok();
    }
    s
}

/// Decodes hexadecimal (either case); `None` if odd or not hex.
fn unhex(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks_exact(2)
        .map(|pair| {
            let hi = (pair.first()?).to_ascii_lowercase();
            let lo = (pair.get(1)?).to_ascii_lowercase();
            let val = |d: u8| (d as char).to_digit(16);
            Some((val(hi)? * 16 + val(lo)?) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests;
