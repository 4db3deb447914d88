//! A full zone transfer (AXFR, RFC 5936) over one [`Connection`], signed and
//! verified with TSIG: what the batch comparison reads DNS with.
//!
//! RFC 5936 §2.2: "the first message MUST begin with the SOA resource record
//! of the zone, and the last message MUST conclude with the same SOA
//! resource record", and a transfer may span many messages. The transfer is
//! therefore complete when a second SOA arrives; a connection closed before
//! that is an error, never a shorter zone. Every message goes through
//! [`StreamVerifier`] (RFC 8945 §5.3.1: unsigned messages may sit between
//! signed ones, the last must be signed) and [`StreamVerifier::finish`] must
//! accept the stream before its records are used.
//!
//! Records are converted to pg2dns's [`Record`] through its own formatter and
//! parser (`rdata::format` of the uncompressed data hickory re-emits, then
//! [`Record::parse_data`]), so the transferred side is in exactly the
//! canonical form the database side is parsed into (names lower-case).
//! Records of types pg2dns does not publish keep their raw data: the
//! comparison ignores them, but the SOA is the repair's guard.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::Message;
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};
use pg2dns_decoder::session::{Rcode, RcodeClass};
use pg2dns_decoder::tsig::{self, StreamVerifier, TsigError, TsigKey};
use pg2dns_decoder::{rdata, Name, Owner, RType, Rdata, Record, ZoneName};

use crate::dns::Connection;

/// QTYPE AXFR (RFC 5936 §2.1).
const TYPE_AXFR: u16 = 252;
/// Class IN.
const CLASS_IN: u16 = 1;

/// A completed, verified zone transfer.
#[derive(Clone, Debug)]
pub struct Transfer {
    /// The apex SOA record (data in wire form, as the server sent it).
    pub soa: Record,
    /// Every record of the zone, the SOA once, in the order received.
    pub records: Vec<Record>,
    /// How many messages the transfer took.
    pub messages: usize,
}

/// Why a zone transfer failed. Every variant names the zone and the server.
#[derive(Debug, thiserror::Error)]
pub enum AxfrError {
    /// The TCP connection or a read or write failed.
    #[error("zone {zone}: transfer from {server} failed")]
    Io {
        /// The zone.
        zone: ZoneName,
        /// The server.
        server: SocketAddr,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The server closed the connection before the closing SOA.
    #[error("zone {zone}: {server} closed the connection before the transfer ended (after {records} records)")]
    Truncated {
        /// The zone.
        zone: ZoneName,
        /// The server.
        server: SocketAddr,
        /// Records received.
        records: usize,
    },
    /// No message arrived in time.
    #[error("zone {zone}: {server} sent nothing for {seconds} s during the transfer")]
    Timeout {
        /// The zone.
        zone: ZoneName,
        /// The server.
        server: SocketAddr,
        /// The timeout.
        seconds: u64,
    },
    /// Signing the request or verifying an answer failed.
    #[error("zone {zone}: TSIG of the transfer from {server}")]
    Tsig {
        /// The zone.
        zone: ZoneName,
        /// The server.
        server: SocketAddr,
        /// What TSIG said.
        #[source]
        source: TsigError,
    },
    /// The server refused the transfer.
    #[error("zone {zone}: {server} answered the transfer with {rcode}{hint}")]
    Refused {
        /// The zone.
        zone: ZoneName,
        /// The server.
        server: SocketAddr,
        /// Its answer.
        rcode: Rcode,
        /// What to check.
        hint: &'static str,
    },
    /// The records could not be spilled to disk as they arrived.
    #[error(
        "zone {zone}: cannot spill the transfer from {server} to disk ([reconcile] spill_dir)"
    )]
    Spill {
        /// The zone.
        zone: ZoneName,
        /// The server.
        server: SocketAddr,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A message or record does not make sense as a transfer of this zone.
    #[error("zone {zone}: malformed transfer from {server}")]
    Malformed {
        /// The zone.
        zone: ZoneName,
        /// The server.
        server: SocketAddr,
        /// What is wrong.
        #[source]
        source: Malformed,
    },
}

/// What makes a transfer malformed (the cause of [`AxfrError::Malformed`],
/// which names the zone and the server).
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    /// A message is not a DNS message.
    #[error(transparent)]
    Message(hickory_proto::serialize::binary::DecodeError),
    /// A record's owner name cannot be read.
    #[error("owner {owner}")]
    Owner {
        /// The name as the decoder read it.
        owner: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A record's data cannot be encoded again.
    #[error("data of {owner}")]
    Data {
        /// The record's owner.
        owner: Owner,
        /// Why.
        #[source]
        source: hickory_proto::ProtoError,
    },
    /// Records follow the closing SOA.
    #[error("records after the closing SOA")]
    AfterClosingSoa,
    /// An SOA record below the apex.
    #[error("an SOA at {0}")]
    SoaBelowApex(Owner),
    /// The closing SOA is not the opening one.
    #[error("the closing SOA differs from the opening one (the zone changed during the transfer: try again)")]
    ClosingSoaDiffers,
    /// The transfer does not start with the zone's SOA.
    #[error("the first record is {owner} {rtype}, not the zone's SOA")]
    FirstNotSoa {
        /// The first record's owner.
        owner: Owner,
        /// Its type.
        rtype: RType,
    },
    /// The transfer ended without an SOA.
    #[error("no SOA")]
    NoSoa,
}

/// Seconds since the epoch: the `now` the core's TSIG functions take.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A message ID that differs between requests.
pub(crate) fn fresh_id() -> u16 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ (nanos >> 16)) as u16
}

/// A query for `zone`'s apex of type `qtype` (class IN), unsigned.
pub(crate) fn query(zone: &ZoneName, qtype: u16, id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(32);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    q.extend_from_slice(zone.name().as_wire());
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    q
}

/// Transfers `zone` from `server`, signing with `key`; `timeout` bounds the
/// wait for each message.
pub async fn transfer(
    zone: &ZoneName,
    server: SocketAddr,
    key: &TsigKey,
    timeout: Duration,
) -> Result<Transfer, AxfrError> {
    let mut records: Vec<Record> = Vec::new();
    let (soa, messages) = transfer_each(zone, server, key, timeout, |r| {
        records.push(r);
        Ok(())
    })
    .await?;
    Ok(Transfer {
        soa,
        records,
        messages,
    })
}

/// [`transfer`] that hands each record (the SOA once, first) to `each` as
/// it arrives instead of holding them: reconcile spills them to disk. An
/// error of `each` ends the transfer ([`AxfrError::Spill`]). Returns the
/// apex SOA and how many messages the transfer took.
pub async fn transfer_each(
    zone: &ZoneName,
    server: SocketAddr,
    key: &TsigKey,
    timeout: Duration,
    mut each: impl FnMut(Record) -> io::Result<()>,
) -> Result<(Record, usize), AxfrError> {
    let spill_err = |source| AxfrError::Spill {
        zone: zone.clone(),
        server,
        source,
    };
    let mut count = 0usize;
    let io_err = |source| AxfrError::Io {
        zone: zone.clone(),
        server,
        source,
    };
    let tsig_err = |source| AxfrError::Tsig {
        zone: zone.clone(),
        server,
        source,
    };
    let malformed = |source: Malformed| AxfrError::Malformed {
        zone: zone.clone(),
        server,
        source,
    };
    let request = tsig::sign(
        &query(zone, TYPE_AXFR, fresh_id()),
        key,
        unix_now(),
        tsig::DEFAULT_FUDGE,
    )
    .map_err(tsig_err)?;
    let mut conn = Connection::connect(server).await.map_err(io_err)?;
    conn.send(&request.wire).await.map_err(io_err)?;
    let mut verifier = StreamVerifier::new(&request, key);
    let mut soa: Option<Record> = None;
    let mut messages = 0;
    loop {
        let frame = match tokio::time::timeout(timeout, conn.recv()).await {
            Err(_) => {
                return Err(AxfrError::Timeout {
                    zone: zone.clone(),
                    server,
                    seconds: timeout.as_secs(),
                })
            }
            Ok(None) => {
                return Err(AxfrError::Truncated {
                    zone: zone.clone(),
                    server,
                    records: count,
                })
            }
            Ok(Some(frame)) => frame.map_err(io_err)?,
        };
        messages += 1;
        let rcode = match tsig::judged_rcode(verifier.verify(&frame, unix_now()).map(|v| v.rcode)) {
            Ok(rcode) => rcode,
            Err(e) => return Err(tsig_err(e)),
        };
        if rcode != 0 {
            let rcode = Rcode(rcode);
            return Err(AxfrError::Refused {
                zone: zone.clone(),
                server,
                rcode,
                hint: transfer_hint(rcode),
            });
        }
        let message = Message::from_vec(&frame).map_err(|e| malformed(Malformed::Message(e)))?;
        let mut done = false;
        for rr in &message.answers {
            if done {
                return Err(malformed(Malformed::AfterClosingSoa));
            }
            let record = convert(rr).map_err(&malformed)?;
            if record.rtype == RType::SOA {
                if record.owner.name() != zone.name() {
                    return Err(malformed(Malformed::SoaBelowApex(record.owner)));
                }
                match &soa {
                    None => {
                        soa = Some(record.clone());
                        count += 1;
                        each(record).map_err(spill_err)?;
                    }
                    Some(first) if first.rdata == record.rdata => done = true,
                    Some(_) => return Err(malformed(Malformed::ClosingSoaDiffers)),
                }
                continue;
            }
            if soa.is_none() {
                return Err(malformed(Malformed::FirstNotSoa {
                    owner: record.owner,
                    rtype: record.rtype,
                }));
            }
            count += 1;
            each(record).map_err(spill_err)?;
        }
        if done {
            break;
        }
    }
    verifier.finish().map_err(tsig_err)?;
    let soa = soa.ok_or_else(|| malformed(Malformed::NoSoa))?;
    Ok((soa, messages))
}

/// What to check when a transfer is answered with `rcode`, judged by the
/// one RCODE policy ([`Rcode::class`]). A transfer is not sent again by
/// itself: it changes nothing, so a failed one ends its zone's reconcile
/// with this error and running reconcile again is safe (a repair's applied
/// messages stay applied, and the next run starts from what DNS holds).
fn transfer_hint(rcode: Rcode) -> &'static str {
    match rcode.class() {
        RcodeClass::Transient => {
            " (the server failed: BIND answers SERVFAIL while the zone loads or past transfers-out; see the server's log, then run again)"
        }
        _ if rcode == Rcode::REFUSED || rcode == Rcode::NOTAUTH => {
            " (allow-transfer in named.conf, or acl in knot.conf, must let this key transfer the zone)"
        }
        _ if rcode == Rcode::NXDOMAIN || rcode == Rcode::NOTZONE => {
            " (the server does not serve this zone: check the zone name and primary address)"
        }
        _ => "",
    }
}

/// One transferred RR as pg2dns's record: names lower-case, data of the
/// types pg2dns publishes in the canonical form its parser gives.
fn convert(rr: &hickory_proto::rr::Record) -> Result<Record, Malformed> {
    let mut name = Vec::new();
    let mut encoder = BinEncoder::new(&mut name);
    encoder.set_name_encoding(NameEncoding::Uncompressed);
    let bad_owner = |source: Box<dyn std::error::Error + Send + Sync>| Malformed::Owner {
        owner: rr.name.to_string(),
        source,
    };
    rr.name
        .emit(&mut encoder)
        .map_err(|e| bad_owner(Box::new(e)))?;
    let (owner, _) = Name::from_wire(&name).map_err(|e| bad_owner(Box::new(e)))?;
    let owner = Owner::from_name(owner);
    let mut wire = Vec::new();
    let mut encoder = BinEncoder::new(&mut wire);
    encoder.set_name_encoding(NameEncoding::Uncompressed);
    rr.data
        .emit(&mut encoder)
        .map_err(|source| Malformed::Data {
            owner: owner.clone(),
            source,
        })?;
    let rtype = RType(u16::from(rr.record_type()));
    // An address is canonical as sent (any 4 or 16 bytes are one, and the
    // text round trip below gives them back unchanged): most records of a
    // large zone skip it.
    if (rtype == RType::A && wire.len() == 4) || (rtype == RType::AAAA && wire.len() == 16) {
        return Ok(Record {
            owner,
            rtype,
            ttl: rr.ttl,
            rdata: Rdata::from_wire(&wire),
        });
    }
    if rtype.is_supported() {
        let canonical = rdata::format(rtype, &wire)
            .ok()
            .and_then(|text| Record::parse_data(owner.clone(), rr.ttl, rtype, &text).ok());
        if let Some(record) = canonical {
            return Ok(record);
        }
    }
    // Not a type pg2dns publishes (or data its parser would not write):
    // kept as sent.
    Ok(Record {
        owner,
        rtype,
        ttl: rr.ttl,
        rdata: Rdata::from_wire(&wire),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_converts_as_its_text_round_trip_would() {
        use hickory_proto::rr::{rdata as hrdata, RData};
        let name = hickory_proto::rr::Name::from_ascii("Host-1.Example.Test.").unwrap();
        let records = [
            RData::A(hrdata::A::new(10, 0, 255, 1)),
            RData::A(hrdata::A::new(0, 0, 0, 0)),
            RData::AAAA(hrdata::AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x1)),
            RData::AAAA(hrdata::AAAA::new(
                0xfe80, 0, 0, 0, 0x0200, 0x5eff, 0xfe00, 0x5301,
            )),
        ];
        for (i, data) in records.into_iter().enumerate() {
            // A TTL past 2^31 - 1 too: kept as sent by either path.
            let ttl = if i == 0 { u32::MAX } else { 3600 };
            let rr = hickory_proto::rr::Record::from_rdata(name.clone(), ttl, data);
            let got = convert(&rr).unwrap();
            let rtype = RType(u16::from(rr.record_type()));
            let text = got.rdata_text();
            let by_text = Record::parse_data(got.owner.clone(), ttl, rtype, &text)
                .unwrap_or_else(|_| got.clone());
            assert_eq!(got, by_text, "{text}");
            assert_eq!(got.owner.to_string(), "host-1.example.test.");
        }
    }

    #[test]
    fn the_query_asks_for_an_axfr_of_the_zone() {
        let zone = ZoneName::parse("Example.Test").unwrap();
        let q = query(&zone, TYPE_AXFR, 0x1234);
        let m = Message::from_vec(&q).unwrap();
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.queries[0].name().to_string(), "example.test.");
        assert_eq!(u16::from(m.queries[0].query_type()), TYPE_AXFR);
    }

    #[test]
    fn a_malformed_transfer_names_zone_server_and_the_typed_cause() {
        let zone = ZoneName::parse("Example.Test").unwrap();
        let server: SocketAddr = "192.0.2.53:5353".parse().unwrap();
        let err = |source| AxfrError::Malformed {
            zone: zone.clone(),
            server,
            source,
        };
        let first = err(Malformed::FirstNotSoa {
            owner: Owner::parse("WWW.example.test.").unwrap(),
            rtype: RType::A,
        });
        assert_eq!(
            crate::error::chain(&first),
            "zone example.test.: malformed transfer from 192.0.2.53:5353: the first record is www.example.test. A, not the zone's SOA"
        );
        // A frame too short for a DNS header: the decoder's error is the
        // source, not text.
        let short = Message::from_vec(&[0x12]).unwrap_err();
        let e = err(Malformed::Message(short));
        assert!(matches!(
            &e,
            AxfrError::Malformed {
                source: Malformed::Message(_),
                ..
            }
        ));
        let text = crate::error::chain(&e);
        assert!(
            text.starts_with("zone example.test.: malformed transfer from 192.0.2.53:5353: ")
                && text.len()
                    > "zone example.test.: malformed transfer from 192.0.2.53:5353: ".len(),
            "{text}"
        );
    }
}
