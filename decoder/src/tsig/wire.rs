//! The DNS wire format, as far as TSIG needs it: a bounds-checked walk over a
//! message that finds the TSIG record, the record's fields, and the digest
//! variables of RFC 8945 §4.3.3. Nothing here panics on malformed input.

use hickory_proto::rr::Name;

use super::TsigError;

/// RR type TSIG (RFC 8945 §4.2).
pub(super) const TYPE_TSIG: u16 = 250;
/// RR type OPT (RFC 6891), whose TTL carries the upper RCODE bits.
const TYPE_OPT: u16 = 41;
/// CLASS ANY, the class of a TSIG record.
pub(super) const CLASS_ANY: u16 = 255;
/// Largest DNS message over TCP: the frame length field has 16 bits.
pub(super) const MAX_MESSAGE: usize = 65_535;
/// Time Signed is a 48-bit field.
pub(super) const MAX_TIME: u64 = (1 << 48) - 1;

/// TSIG error code BADSIG (RFC 8945 §3, IANA "TSIG Error values").
pub(super) const ERR_BADSIG: u16 = 16;
/// TSIG error code BADKEY.
pub(super) const ERR_BADKEY: u16 = 17;
/// TSIG error code BADTIME.
pub(super) const ERR_BADTIME: u16 = 18;

/// A name in canonical wire form: lower case, uncompressed.
pub(super) fn wire_name(name: &Name) -> Vec<u8> {
    let mut wire = Vec::with_capacity(name.len() + 1);
    for label in name.iter() {
        wire.push(label.len() as u8);
        wire.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    wire.push(0);
    wire
}

/// The TSIG variables of RFC 8945 §4.3.3, which the digest covers after the
/// message.
pub(super) struct Variables<'a> {
    pub key: &'a [u8],
    pub class: u16,
    pub ttl: u32,
    pub algorithm: &'a [u8],
    pub time_signed: u64,
    pub fudge: u16,
    pub error: u16,
    pub other: &'a [u8],
}

impl Variables<'_> {
    /// Appends the variables in digest order.
    pub(super) fn push_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.key);
        out.extend_from_slice(&self.class.to_be_bytes());
        out.extend_from_slice(&self.ttl.to_be_bytes());
        out.extend_from_slice(self.algorithm);
        out.extend_from_slice(&self.time_signed.to_be_bytes()[2..]);
        out.extend_from_slice(&self.fudge.to_be_bytes());
        out.extend_from_slice(&self.error.to_be_bytes());
        out.extend_from_slice(&(self.other.len() as u16).to_be_bytes());
        out.extend_from_slice(self.other);
    }

    /// Appends only the TSIG timers, Time Signed and Fudge: what the digest
    /// of a later message of a stream covers instead of all the variables
    /// (RFC 8945 §5.3.1).
    pub(super) fn push_timers_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.time_signed.to_be_bytes()[2..]);
        out.extend_from_slice(&self.fudge.to_be_bytes());
    }

    /// Appends the TSIG record these variables describe, with `mac` and
    /// `original_id`. The caller increments ARCOUNT.
    pub(super) fn push_record(&self, out: &mut Vec<u8>, mac: &[u8], original_id: u16) {
        let rdata_len = self.algorithm.len() + 16 + mac.len() + self.other.len();
        out.extend_from_slice(self.key);
        out.extend_from_slice(&TYPE_TSIG.to_be_bytes());
        out.extend_from_slice(&self.class.to_be_bytes());
        out.extend_from_slice(&self.ttl.to_be_bytes());
        out.extend_from_slice(&(rdata_len as u16).to_be_bytes());
        out.extend_from_slice(self.algorithm);
        out.extend_from_slice(&self.time_signed.to_be_bytes()[2..]);
        out.extend_from_slice(&self.fudge.to_be_bytes());
        out.extend_from_slice(&(mac.len() as u16).to_be_bytes());
        out.extend_from_slice(mac);
        out.extend_from_slice(&original_id.to_be_bytes());
        out.extend_from_slice(&self.error.to_be_bytes());
        out.extend_from_slice(&(self.other.len() as u16).to_be_bytes());
        out.extend_from_slice(self.other);
    }
}

fn malformed(offset: usize, reason: &'static str) -> TsigError {
    TsigError::Malformed { offset, reason }
}

fn u16_at(buf: &[u8], at: usize) -> Result<u16, TsigError> {
    match buf.get(at..at + 2) {
        Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
        _ => Err(malformed(at, "message ends inside a 16-bit field")),
    }
}

fn u32_at(buf: &[u8], at: usize) -> Result<u32, TsigError> {
    match buf.get(at..at + 4) {
        Some(&[a, b, c, d]) => Ok(u32::from_be_bytes([a, b, c, d])),
        _ => Err(malformed(at, "message ends inside a 32-bit field")),
    }
}

/// What `scan` learnt.
pub(super) struct Scan {
    pub id: u16,
    pub arcount: u16,
    pub rcode: u16,
    /// Offset of the TSIG record, which is the last record.
    pub tsig: Option<usize>,
}

/// Reads the name at `at`; returns it in canonical wire form (lower
/// case, pointers followed) and the offset just after it in place.
pub(super) fn read_name(buf: &[u8], at: usize) -> Result<(Vec<u8>, usize), TsigError> {
    let mut out = Vec::new();
    let mut pos = at;
    let mut end = None;
    let mut hops = 0;
    loop {
        let len = *buf
            .get(pos)
            .ok_or_else(|| malformed(pos, "message ends inside a name"))?;
        match len {
            0 => {
                out.push(0);
                if out.len() > 255 {
                    return Err(malformed(at, "name longer than 255 bytes"));
                }
                return Ok((out, end.unwrap_or(pos + 1)));
            }
            1..=63 => {
                let label = buf
                    .get(pos + 1..pos + 1 + usize::from(len))
                    .ok_or_else(|| malformed(pos, "message ends inside a label"))?;
                out.push(len);
                out.extend(label.iter().map(u8::to_ascii_lowercase));
                if out.len() > 255 {
                    return Err(malformed(at, "name longer than 255 bytes"));
                }
                pos += 1 + usize::from(len);
            }
            0xC0..=0xFF => {
                let low = *buf
                    .get(pos + 1)
                    .ok_or_else(|| malformed(pos, "message ends inside a pointer"))?;
                let target = usize::from(u16::from_be_bytes([len & 0x3F, low]));
                if end.is_none() {
                    end = Some(pos + 2);
                }
                hops += 1;
                // A pointer must point backwards; the hop limit also stops loops.
                if target >= pos || hops > 127 {
                    return Err(malformed(
                        pos,
                        "compression pointer does not point backwards",
                    ));
                }
                pos = target;
            }
            _ => return Err(malformed(pos, "unknown label type")),
        }
    }
}

/// Finds the answer's ID, RCODE and TSIG record, checking that every
/// record lies inside the message and that a TSIG record is the last one.
pub(super) fn scan(buf: &[u8]) -> Result<Scan, TsigError> {
    if buf.len() < 12 {
        return Err(malformed(buf.len(), "message shorter than a DNS header"));
    }
    let id = u16_at(buf, 0)?;
    let flags = u16_at(buf, 2)?;
    let qdcount = u16_at(buf, 4)?;
    let ancount = usize::from(u16_at(buf, 6)?);
    let nscount = usize::from(u16_at(buf, 8)?);
    let arcount = u16_at(buf, 10)?;
    let total = ancount + nscount + usize::from(arcount);
    let mut pos = 12;
    for _ in 0..qdcount {
        pos = read_name(buf, pos)?.1 + 4;
        if pos > buf.len() {
            return Err(malformed(buf.len(), "message ends inside a question"));
        }
    }
    let mut tsig = None;
    let mut extended = 0u16;
    for index in 0..total {
        let start = pos;
        pos = read_name(buf, pos)?.1;
        let rtype = u16_at(buf, pos)?;
        let ttl = u32_at(buf, pos + 4)?;
        let rdlen = usize::from(u16_at(buf, pos + 8)?);
        pos += 10 + rdlen;
        if pos > buf.len() {
            return Err(malformed(
                start,
                "record data runs past the end of the message",
            ));
        }
        let additional = index >= ancount + nscount;
        if rtype == TYPE_TSIG {
            if !additional || index + 1 != total {
                return Err(malformed(
                    start,
                    "TSIG record is not the last additional record",
                ));
            }
            tsig = Some(start);
        } else if rtype == TYPE_OPT && additional {
            extended = (ttl >> 24) as u16;
        }
    }
    if pos != buf.len() {
        return Err(malformed(pos, "bytes after the last record"));
    }
    Ok(Scan {
        id,
        arcount,
        rcode: (extended << 4) | (flags & 0x000F),
        tsig,
    })
}

/// The fields of a TSIG record.
pub(super) struct TsigRecord<'a> {
    pub owner: Vec<u8>,
    pub class: u16,
    pub ttl: u32,
    pub algorithm: Vec<u8>,
    pub time_signed: u64,
    pub fudge: u16,
    pub mac: &'a [u8],
    pub original_id: u16,
    pub error: u16,
    pub other: &'a [u8],
}

/// Parses the TSIG record at `at` (found by `scan`).
pub(super) fn tsig_record(buf: &[u8], at: usize) -> Result<TsigRecord<'_>, TsigError> {
    let (owner, pos) = read_name(buf, at)?;
    let class = u16_at(buf, pos + 2)?;
    let ttl = u32_at(buf, pos + 4)?;
    let rdlen = usize::from(u16_at(buf, pos + 8)?);
    let rdata_start = pos + 10;
    let rdata_end = rdata_start + rdlen;
    let (algorithm, pos) = read_name(buf, rdata_start)?;
    let time = buf
        .get(pos..pos + 6)
        .ok_or_else(|| malformed(pos, "message ends inside the TSIG time"))?;
    let time_signed = time.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let fudge = u16_at(buf, pos + 6)?;
    let mac_len = usize::from(u16_at(buf, pos + 8)?);
    let mac_start = pos + 10;
    let mac = buf
        .get(mac_start..mac_start + mac_len)
        .ok_or_else(|| malformed(mac_start, "message ends inside the TSIG MAC"))?;
    let pos = mac_start + mac_len;
    let original_id = u16_at(buf, pos)?;
    let error = u16_at(buf, pos + 2)?;
    let other_len = usize::from(u16_at(buf, pos + 4)?);
    let other_start = pos + 6;
    let other = buf
        .get(other_start..other_start + other_len)
        .ok_or_else(|| malformed(other_start, "message ends inside the TSIG other data"))?;
    if other_start + other_len != rdata_end {
        return Err(malformed(
            rdata_start,
            "TSIG record data length does not match its fields",
        ));
    }
    Ok(TsigRecord {
        owner,
        class,
        ttl,
        algorithm,
        time_signed,
        fudge,
        mac,
        original_id,
        error,
        other,
    })
}

/// A wire name from `read_name` as a hickory [`Name`] (for error messages).
pub(super) fn display_name(wire: &[u8]) -> Name {
    let mut labels = Vec::new();
    let mut pos = 0;
    while let Some(&len) = wire.get(pos) {
        if len == 0 {
            break;
        }
        if let Some(label) = wire.get(pos + 1..pos + 1 + usize::from(len)) {
            labels.push(label.to_vec());
        }
        pos += 1 + usize::from(len);
    }
    Name::from_labels(labels).unwrap_or_else(|_| Name::root())
}
