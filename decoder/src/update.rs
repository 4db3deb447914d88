//! RFC 2136 UPDATE packing and encoding.
//!
//! The plan ([`crate::plan`]) turns a transaction's record changes for one
//! zone into owner groups; this module packs groups into messages and writes
//! them. Each operation is idempotent (RFC 2136 §2.5.1: "Any duplicate RRs
//! will be silently ignored by the Primary Zone Server"; §2.5.4 deletes an RR
//! that may be missing), so a message may be replayed.
//!
//! ```text
//!  ops ─▶ group_by_owner ─▶ OwnerGroup… ─▶ Packer::try_push ─┬─ Ok: same message
//!                                                           ├─ Full(group): take(), encode, start a new one
//!                                                           └─ GroupTooLarge: refused, never split
//!  Packer::take ─▶ encode(zone, id, prerequisites, ops) ─▶ tsig::sign ─▶ wire
//! ```
//!
//! # Size
//!
//! A DNS message over TCP is at most 65 535 bytes (RFC 1035 §4.2.2: "The
//! message is prefixed with a two byte length field"). The packer keeps an
//! upper bound of the encoded size of the message it is filling and never lets
//! `bound + TSIG record` pass the budget, so `encode` + `tsig::sign` of a
//! packed message always fits.
//!
//! `encode` writes the whole message itself: record data is already in wire
//! form (parsed once from the row), and each RR's owner name is written as
//! the labels below the zone followed by a pointer to the zone name in the
//! zone section (RFC 1035 §4.1.4), or as a pointer to the same owner written
//! earlier in the message. (hickory-proto 0.26.3 compresses only the first
//! 120 names of a message and truncates an oversize message silently, setting
//! TC; it serves here only as an independent decoder in the tests.)
//!
//! The packer's bound models exactly that writer: per RR, the owner's labels
//! below the zone plus a 2-byte pointer (or just a pointer for a later RR of
//! the same owner group, when the first one starts before offset 0x4000, the
//! limit of a 14-bit pointer), 10 bytes of type, class, TTL and length, and
//! the record data.

use crate::name::Name;
use crate::rdata::RType;
use crate::records::{Owner, Rdata, Record, ZoneName};
use crate::{HashMap, HashSet};

/// Largest DNS message: the TCP length prefix has 16 bits.
pub const MAX_MESSAGE_BYTES: usize = 65_535;

/// DNS header size (RFC 1035 §4.1.1).
const HEADER_LEN: usize = 12;
/// Offset of the zone name in an UPDATE: right after the header.
const ZONE_POINTER: u16 = 0xC000 | HEADER_LEN as u16;
/// A compression pointer holds a 14-bit offset.
const MAX_POINTER_TARGET: usize = 0x3FFF;
/// TYPE, CLASS, TTL and RDLENGTH of a resource record.
const RR_FIXED_LEN: usize = 10;
/// Class IN.
const CLASS_IN: u16 = 1;
/// Class NONE (RFC 2136 §1.3).
const CLASS_NONE: u16 = 254;
/// Class ANY.
const CLASS_ANY: u16 = 255;
/// Type ANY.
const TYPE_ANY: u16 = 255;
/// OPCODE UPDATE (RFC 2136 §1.3), in the header's flag word.
const OPCODE_UPDATE_FLAGS: u16 = 5 << 11;

/// One operation of an UPDATE's update section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateOp {
    /// Delete exactly this RR (RFC 2136 §2.5.4: class NONE, TTL 0).
    Delete(Record),
    /// Add this RR (RFC 2136 §2.5.1: class IN).
    Add(Record),
    /// Delete the whole RRset (RFC 2136 §2.5.2: class ANY, TTL 0, no data).
    DeleteRrset {
        /// The owner.
        owner: Owner,
        /// The type.
        rtype: RType,
    },
}

impl UpdateOp {
    /// The owner name the operation is about.
    pub fn owner(&self) -> &Owner {
        match self {
            UpdateOp::Delete(r) | UpdateOp::Add(r) => &r.owner,
            UpdateOp::DeleteRrset { owner, .. } => owner,
        }
    }

    /// Whether it removes data.
    pub fn is_delete(&self) -> bool {
        !matches!(self, UpdateOp::Add(_))
    }

    /// (type, class, TTL, data) as written on the wire.
    fn fields(&self) -> (RType, u16, u32, &[u8]) {
        match self {
            UpdateOp::Delete(r) => (r.rtype, CLASS_NONE, 0, r.rdata.as_wire()),
            UpdateOp::Add(r) => (r.rtype, CLASS_IN, r.ttl, r.rdata.as_wire()),
            UpdateOp::DeleteRrset { rtype, .. } => (*rtype, CLASS_ANY, 0, &[]),
        }
    }

    /// Bytes of this RR after its owner name.
    fn tail_len(&self) -> usize {
        RR_FIXED_LEN + self.fields().3.len()
    }
}

/// A condition the server checks before applying an UPDATE (RFC 2136 §2.4);
/// if one fails, nothing is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prerequisite {
    /// The RRset exists with exactly these data (§2.4.2, "value dependent"):
    /// how a repair is guarded by the SOA it expects.
    RrsetEquals {
        /// The owner.
        owner: Owner,
        /// The type.
        rtype: RType,
        /// Every record of the RRset.
        rdatas: Vec<Rdata>,
    },
    /// The RRset exists, whatever its data (§2.4.1).
    RrsetExists {
        /// The owner.
        owner: Owner,
        /// The type.
        rtype: RType,
    },
    /// The RRset does not exist (§2.4.3).
    RrsetAbsent {
        /// The owner.
        owner: Owner,
        /// The type.
        rtype: RType,
    },
    /// The name owns at least one RR (§2.4.4).
    NameInUse(Owner),
    /// The name owns no RR (§2.4.5).
    NameNotInUse(Owner),
}

impl Prerequisite {
    /// Each RR this prerequisite writes: owner, type, class, data.
    fn rrs(&self) -> Vec<(&Owner, u16, u16, &[u8])> {
        match self {
            Prerequisite::RrsetEquals {
                owner,
                rtype,
                rdatas,
            } => rdatas
                .iter()
                .map(|d| (owner, rtype.0, CLASS_IN, d.as_wire()))
                .collect(),
            Prerequisite::RrsetExists { owner, rtype } => vec![(owner, rtype.0, CLASS_ANY, &[])],
            Prerequisite::RrsetAbsent { owner, rtype } => vec![(owner, rtype.0, CLASS_NONE, &[])],
            Prerequisite::NameInUse(owner) => vec![(owner, TYPE_ANY, CLASS_ANY, &[])],
            Prerequisite::NameNotInUse(owner) => vec![(owner, TYPE_ANY, CLASS_NONE, &[])],
        }
    }
}

/// All operations on one owner name, deletes first. The unit the packer never
/// splits across messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerGroup {
    /// The owner name every op has.
    pub owner: Owner,
    /// The operations, deletes before adds.
    pub ops: Vec<UpdateOp>,
}

/// Groups operations by owner: groups in the order of each owner's first
/// appearance; within a group all deletes (in their order), then all adds (in
/// their order).
///
/// Contract: `ops` are *net* per record — the caller never passes an add and
/// a later delete of the same RR. Under that contract moving deletes before
/// adds does not change the outcome, and it is what makes a replace (delete
/// old RR, add new RR) safe for RRsets that admit one record only (CNAME): the
/// server never sees two at once.
pub fn group_by_owner(ops: Vec<UpdateOp>) -> Vec<OwnerGroup> {
    let mut index: HashMap<Owner, usize> = HashMap::default();
    let mut groups: Vec<(Owner, Vec<UpdateOp>, Vec<UpdateOp>)> = Vec::new();
    for op in ops {
        let owner = op.owner();
        let at = match index.get(owner) {
            Some(&at) => at,
            None => {
                index.insert(owner.clone(), groups.len());
                groups.push((owner.clone(), Vec::new(), Vec::new()));
                groups.len() - 1
            }
        };
        if op.is_delete() {
            groups[at].1.push(op);
        } else {
            groups[at].2.push(op);
        }
    }
    groups
        .into_iter()
        .map(|(owner, mut deletes, adds)| {
            deletes.extend(adds);
            OwnerGroup {
                owner,
                ops: deletes,
            }
        })
        .collect()
}

/// How large one message may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Cap on the signed message, TSIG record included; values above 65 535
    /// count as 65 535.
    pub max_message_bytes: usize,
    /// What signing adds: [`crate::tsig::TsigKey::record_len`] (0 if unsigned).
    pub tsig_record_len: usize,
}

impl Budget {
    /// The largest unsigned message that still fits once signed.
    pub fn limit(&self) -> usize {
        self.max_message_bytes.min(MAX_MESSAGE_BYTES)
    }

    /// Upper bound of a signed message for `zone` holding only `group`.
    pub fn group_alone(&self, zone: &ZoneName, group: &OwnerGroup) -> usize {
        let base = base_size(zone);
        base.saturating_add(group_size(zone, group, base))
            .saturating_add(self.tsig_record_len)
    }

    /// Whether `group` fits in a message of its own.
    pub fn fits_alone(&self, zone: &ZoneName, group: &OwnerGroup) -> bool {
        self.group_alone(zone, group) <= self.limit()
    }
}

/// Header and zone section of an UPDATE for `zone`.
fn base_size(zone: &ZoneName) -> usize {
    HEADER_LEN + zone.name().wire_len() + 4
}

/// Upper bound of the bytes `group` adds when its first RR starts at `offset`.
fn group_size(zone: &ZoneName, group: &OwnerGroup, offset: usize) -> usize {
    let full_owner = owner_bound(zone, &group.owner);
    // encode points later RRs of the owner at its first one when that one
    // starts at a valid pointer target (it starts at or before `offset`).
    let later_owner = if offset <= MAX_POINTER_TARGET {
        2
    } else {
        full_owner
    };
    group
        .ops
        .iter()
        .enumerate()
        .map(|(i, op)| {
            let owner = if i == 0 { full_owner } else { later_owner };
            owner + op.tail_len()
        })
        .fold(0usize, usize::saturating_add)
}

/// Why [`Packer::try_push`] refused a group.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PushError {
    /// The current message is not empty and the group does not fit in it:
    /// take the message, then push the group (given back) again.
    #[error("message full: the group for {} does not fit", .0.owner)]
    Full(OwnerGroup),
    /// Even alone in a message the group would exceed the budget. It is
    /// refused, never split or truncated. (The plan never produces one.)
    #[error("changes to {owner} need {bytes} bytes in one message, more than the budget of {budget} bytes")]
    GroupTooLarge {
        /// The group's owner.
        owner: Owner,
        /// Upper bound of a signed message holding only this group.
        bytes: usize,
        /// The budget's limit.
        budget: usize,
    },
}

/// Fills one UPDATE message for one zone with whole owner groups, keeping an
/// upper bound of its encoded size.
///
/// A message never holds a delete at an owner after an add at that owner
/// (two groups of one owner, from two coalesced transactions): such a group
/// starts the next message instead ([`PushError::Full`]). RFC 2136 §3.4.2
/// has the server apply the Update section in order, but PowerDNS 4 applies
/// every delete of a message first, then the adds (`rfc2136handler.cc`), so
/// "add X" then "delete X" in one message leaves X in its zone, and a CNAME
/// and another type both added at one name are refused with FORMERR.
/// Within one group deletes already come first ([`group_by_owner`]).
#[derive(Clone, Debug)]
pub struct Packer {
    zone: ZoneName,
    budget: Budget,
    groups: Vec<OwnerGroup>,
    /// The owners the current message adds records at.
    added: HashSet<Owner>,
    ops: usize,
    /// Upper bound of the encoded, unsigned message.
    size: usize,
}

impl Packer {
    /// An empty packer for `zone`.
    pub fn new(zone: ZoneName, budget: Budget) -> Packer {
        let size = base_size(&zone);
        Packer {
            zone,
            budget,
            groups: Vec::new(),
            added: HashSet::default(),
            ops: 0,
            size,
        }
    }

    /// Adds `group` to the current message if it fits in the budget.
    pub fn try_push(&mut self, group: OwnerGroup) -> Result<(), PushError> {
        if group.ops.is_empty() {
            return Ok(());
        }
        let limit = self.budget.limit();
        let alone = self.budget.group_alone(&self.zone, &group);
        if alone > limit {
            return Err(PushError::GroupTooLarge {
                owner: group.owner,
                bytes: alone,
                budget: limit,
            });
        }
        let deletes_after_add =
            self.added.contains(&group.owner) && group.ops.iter().any(UpdateOp::is_delete);
        let added = group_size(&self.zone, &group, self.size);
        if deletes_after_add
            || self
                .size
                .saturating_add(added)
                .saturating_add(self.budget.tsig_record_len)
                > limit
        {
            return Err(PushError::Full(group));
        }
        self.size += added;
        self.ops += group.ops.len();
        if group.ops.iter().any(|op| !op.is_delete()) {
            self.added.insert(group.owner.clone());
        }
        self.groups.push(group);
        Ok(())
    }

    /// Whether the current message has no operation.
    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    /// The number of operations in the current message.
    pub fn len(&self) -> usize {
        self.ops
    }

    /// An upper bound of `encode(zone, id, &[], ops).len()` for the current
    /// message (without TSIG).
    pub fn estimated_size(&self) -> usize {
        self.size
    }

    /// The zone this packer fills messages for.
    pub fn zone(&self) -> &ZoneName {
        &self.zone
    }

    /// Hands out the current message's operations and starts a new message.
    pub fn take(&mut self) -> Vec<UpdateOp> {
        self.take_groups().into_iter().flat_map(|g| g.ops).collect()
    }

    /// Hands out the current message's owner groups, in order, and starts a
    /// new message.
    pub fn take_groups(&mut self) -> Vec<OwnerGroup> {
        self.size = base_size(&self.zone);
        self.ops = 0;
        self.added.clear();
        std::mem::take(&mut self.groups)
    }
}

/// The labels of `name` below `zone`, or `None` if `name` is not in `zone`.
fn labels_below<'a>(zone: &ZoneName, name: &'a Name) -> Option<Vec<&'a [u8]>> {
    if !name.is_at_or_below(zone.name()) {
        return None;
    }
    let labels: Vec<&[u8]> = name.labels().collect();
    let zone_labels = zone.name().label_count();
    Some(labels[..labels.len() - zone_labels].to_vec())
}

/// Upper bound of an owner name written by `encode` the first time: its labels
/// below the zone and a pointer; the whole name if it is outside the zone.
fn owner_bound(zone: &ZoneName, owner: &Owner) -> usize {
    let (name, apex) = (owner.name(), zone.name());
    if name.is_at_or_below(apex) {
        // Its labels below the zone, each with its length byte, and the
        // pointer: the wire form less the zone's.
        name.wire_len() - apex.wire_len() + 2
    } else {
        name.wire_len()
    }
}

/// Why an UPDATE could not be encoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A record's owner is not in the zone; the server would answer NOTZONE
    /// (RFC 2136 §3.4.1.1).
    #[error("owner {owner} is not in zone {zone}")]
    OutsideZone {
        /// The zone.
        zone: ZoneName,
        /// The record's owner.
        owner: Owner,
    },
    /// More records than a header count can hold.
    #[error("{count} records exceed the 65535 a DNS header section can count")]
    TooManyRecords {
        /// Records asked for.
        count: usize,
    },
    /// A record's data is longer than RDLENGTH can say.
    #[error("the data of a record of {owner} is {len} bytes, more than 65535")]
    RdataTooLong {
        /// The owner.
        owner: Owner,
        /// Its length.
        len: usize,
    },
    /// The encoded message is longer than 65 535 bytes.
    #[error("encoded message is {len} bytes, more than 65535")]
    Oversize {
        /// The encoded length.
        len: usize,
    },
}

/// Writes owner names compressed against the zone (in the zone section at
/// offset 12) and against owners written earlier in the message.
struct Writer<'a> {
    zone: &'a ZoneName,
    buf: Vec<u8>,
    written: HashMap<&'a Owner, u16>,
}

impl<'a> Writer<'a> {
    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn owner(&mut self, owner: &'a Owner) {
        let start = self.buf.len();
        if let Some(&at) = self.written.get(owner) {
            self.u16(0xC000 | at);
            return;
        }
        // encode checked that every owner is in the zone.
        for label in labels_below(self.zone, owner.name()).unwrap_or_default() {
            self.buf.push(label.len() as u8);
            self.buf.extend_from_slice(label);
        }
        if self.zone.name().label_count() == 0 {
            self.buf.push(0);
        } else {
            self.u16(ZONE_POINTER);
        }
        if start <= MAX_POINTER_TARGET {
            self.written.insert(owner, start as u16);
        }
    }

    fn rr(&mut self, owner: &'a Owner, rtype: u16, class: u16, ttl: u32, data: &[u8]) {
        self.owner(owner);
        self.u16(rtype);
        self.u16(class);
        self.buf.extend_from_slice(&ttl.to_be_bytes());
        self.u16(data.len() as u16);
        self.buf.extend_from_slice(data);
    }
}

/// Encodes an UPDATE for `zone` (zone section: `zone` SOA IN) with message ID
/// `id`, the prerequisites and the operations in order.
///
/// Written by hand: the record data is already in wire form, and the result is
/// exactly as large as [`Packer`] computed (hickory 0.26 truncates an oversize
/// message silently and compresses only the first names of a message).
pub fn encode(
    zone: &ZoneName,
    id: u16,
    prerequisites: &[Prerequisite],
    ops: &[UpdateOp],
) -> Result<Vec<u8>, EncodeError> {
    let prereq_rrs: Vec<_> = prerequisites.iter().flat_map(Prerequisite::rrs).collect();
    let owners = prereq_rrs
        .iter()
        .map(|(o, ..)| *o)
        .chain(ops.iter().map(UpdateOp::owner));
    for owner in owners {
        if !zone.contains(owner) {
            return Err(EncodeError::OutsideZone {
                zone: zone.clone(),
                owner: owner.clone(),
            });
        }
    }
    for count in [prereq_rrs.len(), ops.len()] {
        if count > usize::from(u16::MAX) {
            return Err(EncodeError::TooManyRecords { count });
        }
    }
    for op in ops {
        let len = op.fields().3.len();
        if len > usize::from(u16::MAX) {
            return Err(EncodeError::RdataTooLong {
                owner: op.owner().clone(),
                len,
            });
        }
    }
    let mut w = Writer {
        zone,
        buf: Vec::with_capacity(512),
        written: HashMap::default(),
    };
    w.u16(id);
    w.u16(OPCODE_UPDATE_FLAGS);
    w.u16(1);
    w.u16(prereq_rrs.len() as u16);
    w.u16(ops.len() as u16);
    w.u16(0);
    w.buf.extend_from_slice(zone.name().as_wire());
    w.u16(RType::SOA.0);
    w.u16(CLASS_IN);
    for (owner, rtype, class, data) in prereq_rrs {
        w.rr(owner, rtype, class, 0, data);
    }
    for op in ops {
        let (rtype, class, ttl, data) = op.fields();
        w.rr(op.owner(), rtype.0, class, ttl, data);
    }
    if w.buf.len() > MAX_MESSAGE_BYTES {
        return Err(EncodeError::Oversize { len: w.buf.len() });
    }
    Ok(w.buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsig::{self, Algorithm, TsigKey};
    use proptest::prelude::*;

    fn zone() -> ZoneName {
        ZoneName::parse("example.test.").unwrap()
    }

    fn add(owner: &str, rtype: &str, data: &str) -> UpdateOp {
        UpdateOp::Add(Record::parse(owner, 300, rtype, data).unwrap())
    }

    fn delete(owner: &str, rtype: &str, data: &str) -> UpdateOp {
        UpdateOp::Delete(Record::parse(owner, 300, rtype, data).unwrap())
    }

    fn a_record(i: usize) -> UpdateOp {
        add(
            &format!("i{i:07}.example.test."),
            "A",
            &format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255),
        )
    }

    /// What hickory decodes from `wire`, as (owner, class, ttl, type, data
    /// in wire form): an independent reading of our encoder's output.
    fn decoded(wire: &[u8]) -> Vec<(String, u16, u32, u16, Vec<u8>)> {
        use hickory_proto::op::{Message, OpCode};
        use hickory_proto::rr::RecordType;
        use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};
        let message = Message::from_vec(wire).unwrap();
        assert_eq!(message.metadata.op_code, OpCode::Update);
        assert_eq!(message.queries.len(), 1);
        assert_eq!(message.queries[0].name().to_string(), "example.test.");
        assert_eq!(message.queries[0].query_type(), RecordType::SOA);
        message
            .authorities
            .iter()
            .map(|r| {
                let mut data = Vec::new();
                let mut encoder = BinEncoder::new(&mut data);
                encoder.set_name_encoding(NameEncoding::Uncompressed);
                r.data.emit(&mut encoder).unwrap();
                (
                    r.name.to_string().to_ascii_lowercase(),
                    u16::from(r.dns_class),
                    r.ttl,
                    u16::from(r.record_type()),
                    data,
                )
            })
            .collect()
    }

    fn expected(ops: &[UpdateOp]) -> Vec<(String, u16, u32, u16, Vec<u8>)> {
        ops.iter()
            .map(|op| {
                let (rtype, class, ttl, data) = op.fields();
                (op.owner().to_string(), class, ttl, rtype.0, data.to_vec())
            })
            .collect()
    }

    fn sha256_key() -> TsigKey {
        TsigKey::new("ddns-key", Algorithm::HmacSha256, vec![7; 32]).unwrap()
    }

    #[test]
    fn groups_keep_first_appearance_order_with_deletes_before_adds() {
        let ops = vec![
            add("b.example.test.", "A", "192.0.2.2"),
            add("a.example.test.", "A", "192.0.2.1"),
            delete("b.example.test.", "A", "192.0.2.9"),
            add("b.example.test.", "TXT", "\"x\""),
            delete("a.example.test.", "A", "192.0.2.8"),
            delete("b.example.test.", "TXT", "\"y\""),
        ];
        let groups = group_by_owner(ops.clone());
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].owner.to_string(), "b.example.test.");
        assert_eq!(
            groups[0].ops,
            vec![
                ops[2].clone(),
                ops[5].clone(),
                ops[0].clone(),
                ops[3].clone()
            ]
        );
        assert_eq!(groups[1].owner.to_string(), "a.example.test.");
        assert_eq!(groups[1].ops, vec![ops[4].clone(), ops[1].clone()]);
    }

    #[test]
    fn encoded_updates_decode_to_the_ops_in_order() {
        let ops = vec![
            delete("example.test.", "MX", "10 mail.example.test."),
            add("example.test.", "MX", "20 mail.example.test."),
            delete("www.example.test.", "CNAME", "old.example.test."),
            add("www.example.test.", "CNAME", "web.other.test."),
            add(
                "_sip._udp.example.test.",
                "SRV",
                "0 5 5060 sip.example.test.",
            ),
            add("t.deep.sub.example.test.", "TXT", "\"hello world\""),
            add("www.example.test.", "AAAA", "2001:db8::1"),
            delete("www.example.test.", "AAAA", "2001:db8::2"),
        ];
        let wire = encode(&zone(), 0xBEEF, &[], &ops).unwrap();
        assert_eq!(&wire[..2], &[0xBE, 0xEF]);
        assert_eq!(wire[2] & 0x78, 5 << 3, "opcode UPDATE");
        assert_eq!(decoded(&wire), expected(&ops));
        assert!(wire.len() <= estimate(&ops));
    }

    /// The packer's bound for `ops`, grouped by owner (a packer takes no
    /// delete after an add at one owner, which `ops` may have).
    fn estimate(ops: &[UpdateOp]) -> usize {
        let mut packer = Packer::new(
            zone(),
            Budget {
                max_message_bytes: 65_535,
                tsig_record_len: 0,
            },
        );
        for group in group_by_owner(ops.to_vec()) {
            packer.try_push(group).unwrap();
        }
        packer.estimated_size()
    }

    #[test]
    fn short_a_records_pack_to_the_measured_maximum_of_2616() {
        let key = sha256_key();
        let budget = Budget {
            max_message_bytes: 65_535,
            tsig_record_len: key.record_len(),
        };
        let mut packer = Packer::new(zone(), budget);
        let mut i = 0;
        let rest = loop {
            match packer.try_push(OwnerGroup {
                owner: a_record(i).owner().clone(),
                ops: vec![a_record(i)],
            }) {
                Ok(()) => i += 1,
                Err(PushError::Full(group)) => break group,
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(packer.len(), 2616);
        assert_eq!(rest.ops, vec![a_record(2616)]);
        let ops = packer.take();
        let wire = encode(&zone(), 1, &[], &ops).unwrap();
        let signed = tsig::sign(&wire, &key, 1_795_419_587, tsig::DEFAULT_FUDGE).unwrap();
        assert_eq!(signed.wire.len(), 65_511);
        assert_eq!(decoded(&wire), expected(&ops));
        assert!(packer.is_empty());
        assert_eq!(packer.estimated_size(), 30);
    }

    #[test]
    fn a_group_larger_than_the_budget_is_rejected() {
        let budget = Budget {
            max_message_bytes: 1_000,
            tsig_record_len: 81,
        };
        let mut packer = Packer::new(zone(), budget);
        let ops: Vec<UpdateOp> = (0..100)
            .map(|i| add("big.example.test.", "A", &format!("192.0.2.{i}")))
            .collect();
        let group = OwnerGroup {
            owner: Owner::parse("big.example.test.").unwrap(),
            ops,
        };
        packer
            .try_push(group_by_owner(vec![a_record(1)]).remove(0))
            .unwrap();
        match packer.try_push(group) {
            Err(PushError::GroupTooLarge {
                owner,
                bytes,
                budget,
            }) => {
                assert_eq!(owner.to_string(), "big.example.test.");
                assert_eq!(budget, 1_000);
                // base 30 + first RR 6+10+4 + 99 × (2+10+4) + TSIG 81
                assert_eq!(bytes, 30 + 20 + 99 * 16 + 81);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(packer.len(), 1, "the message already packed is untouched");
    }

    #[test]
    fn a_full_message_gives_the_group_back() {
        let budget = Budget {
            max_message_bytes: 30 + 3 * 25 + 81,
            tsig_record_len: 81,
        };
        let mut packer = Packer::new(zone(), budget);
        for i in 0..3 {
            packer
                .try_push(group_by_owner(vec![a_record(i)]).remove(0))
                .unwrap();
        }
        let fourth = group_by_owner(vec![a_record(3)]).remove(0);
        assert_eq!(
            packer.try_push(fourth.clone()),
            Err(PushError::Full(fourth.clone()))
        );
        assert_eq!(packer.take().len(), 3);
        packer.try_push(fourth).unwrap();
        assert_eq!(packer.len(), 1);
    }

    #[test]
    fn a_delete_after_an_add_at_the_same_owner_starts_a_new_message() {
        let budget = Budget {
            max_message_bytes: 65_535,
            tsig_record_len: 81,
        };
        let mut packer = Packer::new(zone(), budget);
        let added = group_by_owner(vec![add("b2.example.test.", "A", "192.0.2.3")]).remove(0);
        packer.try_push(added).unwrap();
        // Adds elsewhere and more adds at the owner still fit.
        packer
            .try_push(group_by_owner(vec![add("b3.example.test.", "A", "192.0.2.4")]).remove(0))
            .unwrap();
        packer
            .try_push(group_by_owner(vec![add("b2.example.test.", "TXT", "\"x\"")]).remove(0))
            .unwrap();
        let deleted = group_by_owner(vec![delete("b2.example.test.", "A", "192.0.2.3")]).remove(0);
        assert_eq!(
            packer.try_push(deleted.clone()),
            Err(PushError::Full(deleted.clone())),
            "PowerDNS would apply the delete before the add"
        );
        assert_eq!(packer.take().len(), 3);
        packer.try_push(deleted).unwrap();
        // A message that only deleted at the owner may add there after.
        packer
            .try_push(group_by_owner(vec![add("b2.example.test.", "A", "192.0.2.5")]).remove(0))
            .unwrap();
        assert_eq!(packer.len(), 2);
    }

    #[test]
    fn an_owner_outside_the_zone_is_not_encoded() {
        let err = encode(&zone(), 1, &[], &[add("h.other.test.", "A", "192.0.2.1")]).unwrap_err();
        assert_eq!(
            err,
            EncodeError::OutsideZone {
                zone: zone(),
                owner: Owner::parse("h.other.test.").unwrap()
            }
        );
    }

    #[test]
    fn too_many_ops_for_one_message_are_an_error_not_a_truncation() {
        let ops: Vec<UpdateOp> = (0..3_000).map(a_record).collect();
        match encode(&zone(), 1, &[], &ops) {
            Err(EncodeError::Oversize { len }) => assert!(len > 65_535),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn owners_repeated_after_16k_are_written_in_full() {
        // Past offset 0x3FFF an owner cannot be a pointer target.
        let ops: Vec<UpdateOp> = (0..1_000)
            .map(|i| add(&format!("host-{}.example.test.", i % 700), "A", "192.0.2.1"))
            .collect();
        let wire = encode(&zone(), 1, &[], &ops).unwrap();
        assert_eq!(decoded(&wire), expected(&ops));
    }

    /// Raw material for a group: an owner index and (kind, value, add?, ttl)
    /// per op. Plain tuples shrink and generate much faster than nested
    /// strategies.
    type RawGroup = (usize, Vec<(u8, u32, bool, u32)>);

    fn raw_groups(max: usize) -> impl Strategy<Value = Vec<RawGroup>> {
        proptest::collection::vec(
            (
                0..56usize,
                proptest::collection::vec(
                    (0..7u8, any::<u32>(), any::<bool>(), 0..100_000u32),
                    1..12,
                ),
            ),
            1..max,
        )
    }

    fn build(raw: &[RawGroup]) -> Vec<OwnerGroup> {
        raw.iter()
            .map(|(owner, ops)| {
                let owner_text = match owner {
                    0 => "example.test.".to_string(),
                    1..=40 => format!("h{owner}.example.test."),
                    41..=50 => format!("a.b{owner}.sub.example.test."),
                    _ => format!("{}{owner}.example.test.", "x".repeat(60)),
                };
                let ops = ops
                    .iter()
                    .map(|&(kind, v, is_add, ttl)| {
                        let (rtype, data) = match kind {
                            0 => ("A", std::net::Ipv4Addr::from(v).to_string()),
                            1 => ("AAAA", format!("2001:db8::{:x}", v as u16)),
                            2 => ("TXT", format!("\"{}\"", "t".repeat(v as usize % 200))),
                            3 => ("CNAME", format!("t{}.example.test.", v % 50)),
                            4 => ("PTR", format!("t{}.other.test.", v % 50)),
                            5 => ("MX", format!("{} mail.example.test.", v as u16)),
                            _ => ("SRV", format!("0 5 {} sip.sub.example.test.", v as u16)),
                        };
                        let record = Record::parse(&owner_text, ttl, rtype, &data).unwrap();
                        if is_add {
                            UpdateOp::Add(record)
                        } else {
                            UpdateOp::Delete(record)
                        }
                    })
                    .collect();
                OwnerGroup {
                    owner: Owner::parse(&owner_text).unwrap(),
                    ops,
                }
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn packed_messages_stay_within_budget_keep_order_and_never_split_a_group(
            raw in raw_groups(200),
            max in prop_oneof![200..2_000usize, 2_000..70_000usize],
            tsig_len in prop_oneof![Just(0usize), Just(81), 0..200usize],
        ) {
            let budget = Budget { max_message_bytes: max, tsig_record_len: tsig_len };
            let limit = max.min(65_535);
            let mut packer = Packer::new(zone(), budget);
            let mut messages: Vec<(Vec<UpdateOp>, usize)> = Vec::new();
            let mut accepted: Vec<Vec<UpdateOp>> = Vec::new();
            let mut group_message: Vec<usize> = Vec::new();
            for group in build(&raw) {
                let ops = group.ops.clone();
                let result = match packer.try_push(group) {
                    Err(PushError::Full(group)) => {
                        prop_assert!(!packer.is_empty());
                        let estimate = packer.estimated_size();
                        messages.push((packer.take(), estimate));
                        packer.try_push(group)
                    }
                    other => other,
                };
                match result {
                    Ok(()) => {
                        accepted.push(ops);
                        group_message.push(messages.len());
                    }
                    Err(PushError::GroupTooLarge { bytes, budget, .. }) => {
                        prop_assert_eq!(budget, limit);
                        prop_assert!(bytes > limit);
                    }
                    Err(PushError::Full(_)) => prop_assert!(false, "full after take"),
                }
            }
            if !packer.is_empty() {
                let estimate = packer.estimated_size();
                messages.push((packer.take(), estimate));
            }
            // Order kept, nothing lost, each group whole in one message.
            let all: Vec<UpdateOp> = messages.iter().flat_map(|(ops, _)| ops.clone()).collect();
            prop_assert_eq!(&all, &accepted.concat());
            let mut next = 0;
            for (ops, message) in accepted.iter().zip(&group_message) {
                let (message_ops, _) = &messages[*message];
                let offset: usize = messages[..*message].iter().map(|(m, _)| m.len()).sum();
                prop_assert!(next >= offset && next + ops.len() <= offset + message_ops.len());
                next += ops.len();
            }
            for (ops, estimate) in &messages {
                let wire = encode(&zone(), 7, &[], ops).unwrap();
                prop_assert!(wire.len() <= *estimate, "{} > estimate {}", wire.len(), estimate);
                prop_assert!(wire.len() + tsig_len <= limit);
                prop_assert_eq!(decoded(&wire), expected(ops));
            }
        }

        #[test]
        fn the_estimate_is_an_upper_bound_of_the_encoded_size(
            raw in raw_groups(300),
        ) {
            let mut packer = Packer::new(zone(), Budget { max_message_bytes: 65_535, tsig_record_len: 0 });
            for group in build(&raw) {
                if packer.try_push(group).is_err() {
                    break;
                }
            }
            let estimate = packer.estimated_size();
            let ops = packer.take();
            let wire = encode(&zone(), 7, &[], &ops).unwrap();
            prop_assert!(wire.len() <= estimate);
        }
    }
}
