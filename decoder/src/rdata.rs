//! Record types and record data: presentation form ↔ wire form.
//! (Temporary stand-in over hickory; the real parser lands from the
//! presentation work.)

use std::fmt;

use hickory_proto::rr::{RData, RecordType};
use hickory_proto::serialize::binary::{BinDecoder, BinEncodable, BinEncoder, NameEncoding};

use crate::name::{Name, NameError};

/// A record type (RFC 1035 §3.2.2 TYPE value).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct RType(pub u16);

#[allow(missing_docs)]
impl RType {
    pub const A: RType = RType(1);
    pub const NS: RType = RType(2);
    pub const CNAME: RType = RType(5);
    pub const SOA: RType = RType(6);
    pub const PTR: RType = RType(12);
    pub const HINFO: RType = RType(13);
    pub const MX: RType = RType(15);
    pub const TXT: RType = RType(16);
    pub const AAAA: RType = RType(28);
    pub const SRV: RType = RType(33);
    pub const NAPTR: RType = RType(35);
    pub const DS: RType = RType(43);
    pub const SSHFP: RType = RType(44);
    pub const RRSIG: RType = RType(46);
    pub const NSEC: RType = RType(47);
    pub const DNSKEY: RType = RType(48);
    pub const NSEC3: RType = RType(50);
    pub const NSEC3PARAM: RType = RType(51);
    pub const TLSA: RType = RType(52);
    pub const CDS: RType = RType(59);
    pub const CDNSKEY: RType = RType(60);
    pub const SVCB: RType = RType(64);
    pub const HTTPS: RType = RType(65);
    pub const CAA: RType = RType(257);
}

impl RType {
    /// Parses a mnemonic case-insensitively, or TYPEnnn.
    pub fn parse(text: &str) -> Result<RType, RdataError> {
        let t: RecordType =
            text.trim()
                .to_ascii_uppercase()
                .parse()
                .map_err(|_| RdataError::UnsupportedType {
                    rtype: text.to_owned(),
                })?;
        Ok(RType(u16::from(t)))
    }

    /// Whether pg2dns publishes this type.
    pub fn is_supported(self) -> bool {
        [
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
        ]
        .contains(&self)
    }

    /// DNSSEC and signer types pg2dns never owns.
    pub fn is_dnssec(self) -> bool {
        [
            RType::RRSIG,
            RType::NSEC,
            RType::NSEC3,
            RType::NSEC3PARAM,
            RType::DNSKEY,
            RType::CDS,
            RType::CDNSKEY,
            RType(65534),
        ]
        .contains(&self)
    }
}

impl fmt::Display for RType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", RecordType::from(self.0))
    }
}

/// Why record data was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RdataError {
    /// Unknown or unsupported type.
    #[error("unsupported record type {rtype:?}")]
    UnsupportedType {
        /// The text.
        rtype: String,
    },
    /// Does not parse.
    #[error("{rtype} record data does not parse: {reason}")]
    Syntax {
        /// The type.
        rtype: RType,
        /// Why.
        reason: String,
    },
    /// A name inside.
    #[error(transparent)]
    Name(#[from] NameError),
    /// Bad wire data.
    #[error("malformed {rtype} wire data at offset {offset}")]
    BadWire {
        /// The type.
        rtype: RType,
        /// Where.
        offset: usize,
    },
}

fn to_wire(rdata: &RData) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let mut encoder = BinEncoder::new(&mut buf);
    encoder.set_name_encoding(NameEncoding::Uncompressed);
    rdata.emit(&mut encoder).map_err(|e| e.to_string())?;
    Ok(buf)
}

/// Parses record data from presentation form into wire form.
pub fn parse(rtype: RType, text: &str) -> Result<Vec<u8>, RdataError> {
    let t = RecordType::from(rtype.0);
    let syntax = |reason: String| RdataError::Syntax { rtype, reason };
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let name_token = match rtype {
        RType::CNAME | RType::NS | RType::PTR => tokens.first(),
        RType::MX => tokens.get(1),
        RType::SRV => tokens.get(3),
        _ => None,
    };
    if let Some(n) = name_token {
        Name::parse_absolute(n)?;
    }
    let rd = RData::try_from_str(t, text).map_err(|e| syntax(e.to_string()))?;
    let mut wire = to_wire(&rd).map_err(syntax)?;
    lower_names(rtype, &mut wire);
    Ok(wire)
}

fn name_offset(rtype: RType) -> Option<usize> {
    match rtype {
        RType::CNAME | RType::NS | RType::PTR => Some(0),
        RType::MX => Some(2),
        RType::SRV => Some(6),
        _ => None,
    }
}

fn lower_names(rtype: RType, wire: &mut [u8]) {
    if let Some(at) = name_offset(rtype) {
        if let Some(rest) = wire.get_mut(at..) {
            rest.make_ascii_lowercase();
        }
    }
}

/// Canonical presentation form of wire record data.
pub fn format(rtype: RType, wire: &[u8]) -> Result<String, RdataError> {
    let t = RecordType::from(rtype.0);
    let mut decoder = BinDecoder::new(wire);
    let len = hickory_proto::serialize::binary::Restrict::new(wire.len() as u16);
    let rd =
        RData::read(&mut decoder, t, len).map_err(|_| RdataError::BadWire { rtype, offset: 0 })?;
    Ok(match &rd {
        RData::TXT(txt) => txt
            .txt_data
            .iter()
            .map(|s| quote(s))
            .collect::<Vec<_>>()
            .join(" "),
        RData::HINFO(h) => format!("{} {}", quote(&h.cpu), quote(&h.os)),
        other => other.to_string(),
    })
}

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

/// The domain name a record points at, for types that have one.
pub fn target(rtype: RType, wire: &[u8]) -> Option<Name> {
    let at = name_offset(rtype)?;
    Name::from_wire(wire.get(at..)?).ok().map(|(n, _)| n)
}
