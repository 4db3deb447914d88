//! The plan: row changes in, per-zone UPDATE operations out, and every
//! refusal decided here, before anything is written or sent.
//!
//! # Why the row state
//!
//! Under `REPLICA IDENTITY DEFAULT` a DELETE carries only the row's key, so
//! what the row had put in DNS must be remembered: the row state maps each
//! source row to the records it contributes (docs/design.md §4). Two rows may
//! contribute the same record; the record leaves DNS only when the last of
//! them goes, so every record keeps the TTLs of all its producers (a
//! multiset) and is present while that multiset is not empty.
//!
//! # One TTL per RRset
//!
//! "the TTLs of all RRs in an RRSet must be the same" (RFC 2181 §5.2). When
//! producers disagree, the RRset takes the smallest TTL among all producers of
//! all its records, and DNS is kept there as producers come and go: a TTL
//! change rewrites the RRset (delete and add each record in one owner group,
//! because Knot ignores the re-add of an existing RR with a new TTL).
//!
//! # Segments
//!
//! The [`Planner`] is fed the row updates of a batch in commit order and
//! told where each transaction (or the batch's part of a large one) ends. At
//! that point it compares each touched owner's records with what they were
//! when the segment began and emits the net operations, grouped by owner,
//! deletes before adds. Then it checks what DNS servers would refuse or
//! silently ignore on the desired state of the segment's end:
//!
//! | check                          | why                                                            |
//! |--------------------------------|----------------------------------------------------------------|
//! | owner group fits one message   | an owner's changes are never split; a larger group cannot go   |
//! | records per RRset ≤ the limit   | BIND ≥ 9.18.28 answers SERVFAIL past `max-records-per-type`     |
//! | CNAME alone at its name        | RFC 2136 §3.4.2.2: the server ignores the CNAME or the data, NOERROR |
//! | one CNAME per name             | a second CNAME silently replaces the first                     |
//! | one DNAME per name; none at the apex | BIND replaces the first, PowerDNS keeps both, Knot 3.2 crashes; BIND and Knot refuse an apex DNAME |
//! | nothing below a DNAME          | BIND and PowerDNS keep the data unanswered (occluded), Knot refuses the UPDATE; the DNAME is refused if names below hold records, a record below an existing DNAME otherwise |
//! | DS only at a delegation, never at the apex | BIND ignores it elsewhere, NOERROR                     |
//! | host names (per zone: fail, warn, ignore) | BIND's `check-names` refuses the whole UPDATE     |
//! | MX, SRV, NS not pointing at a CNAME | RFC 2181 §10.3; checked where the target is in a configured zone |
//!
//! A failing check refuses the rows that *added* the offending records in
//! this segment: their new records are withdrawn, their old ones stay
//! removed, and the refusal names the row. The checks run again until none
//! fails (each round refuses at least one row, so this ends). Deletes are
//! never refused: an owner group of deletes only that exceeds one message is
//! split into several messages, deletes still before the adds of later
//! segments.

use std::collections::BTreeMap;

use crate::checks::{self, CheckNames};
use crate::lsn::Lsn;
use crate::mapping::{Desired, RowKey, RowUpdate, Wanted};
use crate::rdata::RType;
use crate::records::{Owner, Rdata, Record, RecordError, ZoneId, Zones};
use crate::update::{Budget, OwnerGroup, UpdateOp};
use crate::{HashMap, HashSet};

/// The largest DNS message (RFC 1035 §4.2.2: a two-byte length over TCP).
const MAX_MESSAGE: usize = 65_535;

/// Why a row's records were not published. The row's earlier records still
/// leave DNS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A column does not hold a valid value.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The table has no such column.
    #[error("the table has no column {0:?}")]
    NoColumn(String),
    /// A column's value is not valid UTF-8 text.
    #[error("column {0:?} is not valid UTF-8 text")]
    NotText(String),
    /// A zone reference through a zones table cannot be followed.
    #[error(transparent)]
    Reference(#[from] crate::mapping::source::zones_table::ReferenceError),
    /// The owner is in none of the configured zones.
    #[error("owner {owner} is in no configured zone")]
    OutsideZones {
        /// The owner.
        owner: Owner,
    },
    /// A zone column names a zone that is not configured.
    #[error("column {column:?} names zone {zone:?}, which is not a configured zone")]
    ZoneNotConfigured {
        /// The zone column.
        column: String,
        /// Its value.
        zone: String,
    },
    /// The owner is not at or below the zone its row names.
    #[error("owner {owner} is not in zone {zone}, the zone its row names")]
    OwnerNotInZone {
        /// The owner.
        owner: Owner,
        /// The zone the row names.
        zone: crate::records::ZoneName,
    },
    /// An address column does not hold an IP address.
    #[error("column {column:?} holds {value:?}, which is not an IP address")]
    BadAddress {
        /// The column.
        column: String,
        /// Its value.
        value: String,
    },
    /// A filter column is not a boolean.
    #[error("column {column:?} holds {value:?}, which is not a boolean")]
    NotBoolean {
        /// The column.
        column: String,
        /// Its value.
        value: String,
    },
    /// A column arrived as an unchanged TOAST value and the row state holds
    /// no earlier value to take it from.
    #[error("column {column:?} arrived as an unchanged TOAST value and pg2dns holds no earlier value for this row; set REPLICA IDENTITY FULL on the table or touch the column")]
    ToastWithoutState {
        /// The column.
        column: String,
    },
    /// One record alone does not fit in an UPDATE.
    #[error("the record {owner} {rtype} needs {bytes} bytes in an UPDATE, more than the {budget}-byte budget (TSIG record included)")]
    RecordTooLarge {
        /// The owner.
        owner: Owner,
        /// The type.
        rtype: RType,
        /// Bytes of a message holding it alone, signed.
        bytes: usize,
        /// The limit.
        budget: usize,
    },
    /// The changes of one owner in one transaction do not fit in one UPDATE.
    #[error("the changes of {owner} in this transaction need {bytes} bytes, more than one UPDATE can hold ({budget} bytes with the TSIG record)")]
    OwnerGroupTooLarge {
        /// The owner.
        owner: Owner,
        /// Bytes of a message holding the group alone, signed.
        bytes: usize,
        /// The limit.
        budget: usize,
    },
    /// The RRset would hold more records than the configured limit.
    #[error("the {rtype} RRset of {owner} would hold {count} records, more than the limit of {limit} (limits.max_records_per_rrset; BIND's max-records-per-type)")]
    RrsetLimit {
        /// The owner.
        owner: Owner,
        /// The type.
        rtype: RType,
        /// Records it would hold.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The RRset would not fit in one DNS message, so no server could
    /// answer for it (BIND answers the UPDATE with SERVFAIL, "ran out of
    /// space", and a resend would fail forever).
    #[error("the {rtype} RRset of {owner} would need {bytes} bytes in an answer, more than the {limit} a DNS message can hold")]
    RrsetTooLarge {
        /// The owner.
        owner: Owner,
        /// The type.
        rtype: RType,
        /// Bytes of a message answering with the whole RRset.
        bytes: usize,
        /// The limit (65,535).
        limit: usize,
    },
    /// A CNAME and other data at one name (RFC 1034 §3.6.2; servers ignore
    /// the update and answer NOERROR).
    #[error("{owner} would have a CNAME and other data ({other}); a CNAME must be alone at its name, and the server would silently ignore this change")]
    CnameAndOtherData {
        /// The owner.
        owner: Owner,
        /// The other types.
        other: String,
    },
    /// The primary refused the record on its own (and accepted an UPDATE
    /// any allowed key may send), e.g. BIND's check-names or its check for
    /// an MX or SRV target without address records.
    #[error("the primary answered {rcode} to the UPDATE adding {record}, while it accepts this key's other updates; see the server's log for its reason")]
    ServerRefused {
        /// The server's answer.
        rcode: crate::session::Rcode,
        /// The record, in presentation form.
        record: String,
    },
    /// A name BIND's `check-names` refuses (see [`crate::checks`]).
    #[error("the {role} {name} of this {rtype} record is not a host name (letters, digits and inner hyphens only), which the primary's check-names refuses; set check_names = \"ignore\" for the zone if its server accepts such names")]
    HostName {
        /// The type.
        rtype: RType,
        /// Which name.
        role: &'static str,
        /// The name.
        name: crate::name::Name,
    },
    /// The primary refused an MX or SRV whose target in the zone has no
    /// address yet; it is published as soon as the target has one.
    #[error("the primary answered {rcode} to the UPDATE adding {record}: its target {target} has no address record in the zone yet; pg2dns publishes it as soon as the target has one")]
    WaitingForAddress {
        /// The server's answer.
        rcode: crate::session::Rcode,
        /// The record, in presentation form.
        record: String,
        /// The target.
        target: Owner,
    },
    /// A record at a name or of a type the zone's configuration excludes
    /// (left to another tool; reconcile ignores it too).
    #[error("the {rtype} record at {owner} is excluded by the zone's {rule}: pg2dns leaves that name or type to others and neither publishes nor reconciles it")]
    Excluded {
        /// The owner.
        owner: Owner,
        /// The type.
        rtype: RType,
        /// The rule, as configured.
        rule: String,
    },
    /// An MX, SRV or NS pointing at a name that is an alias.
    #[error("the {rtype} record of {owner} points at {target}, which is a CNAME; RFC 2181 section 10.3 says such a target must not be an alias (BIND warns or refuses, resolvers may ignore it)")]
    TargetIsAlias {
        /// The owner.
        owner: Owner,
        /// The type.
        rtype: RType,
        /// The target.
        target: String,
    },
    /// A CNAME at a zone's apex, which always holds the zone's SOA and NS
    /// records (RFC 1912 §2.4; servers ignore the CNAME and answer NOERROR).
    #[error("a CNAME cannot be at the zone apex ({owner} holds the zone's SOA and NS records); the server would silently ignore it")]
    CnameAtApex {
        /// The owner (the apex).
        owner: Owner,
    },
    /// A CNAME where the zone holds other data pg2dns does not own, or
    /// other data where it holds a CNAME pg2dns does not own (names and
    /// types the zone's configuration leaves to other tools).
    #[error("{owner} holds {held} in the zone, left to another tool (exclude_names, exclude_types); a CNAME must be alone at its name, and the server would silently ignore this {rtype}")]
    BesideHeld {
        /// The owner.
        owner: Owner,
        /// The type of the refused record.
        rtype: RType,
        /// The types held outside pg2dns.
        held: String,
    },
    /// Two different CNAMEs at one name.
    #[error("{owner} would have two CNAME records; a name has at most one, and the server would silently replace the first")]
    TwoCnames {
        /// The owner.
        owner: Owner,
    },
    /// A DNAME at a zone's apex: BIND 9.18 and Knot 3.2 answer REFUSED
    /// (measured 2026-12-07; PowerDNS 4.7 takes it).
    #[error("a DNAME cannot be at the zone apex ({owner}): BIND and Knot refuse it; redirect the zone from its parent instead")]
    DnameAtApex {
        /// The owner (the apex).
        owner: Owner,
    },
    /// Two different DNAMEs at one name (RFC 6672 §2.4: "There MUST NOT
    /// be more than one DNAME RR per owner name").
    #[error("{owner} would have two DNAME records; a name has at most one (RFC 6672), and the server would silently replace the first (BIND), keep both (PowerDNS) or crash (Knot 3.2)")]
    TwoDnames {
        /// The owner.
        owner: Owner,
    },
    /// A record at a name below a DNAME (RFC 6672 §2.3: a DNAME "MUST
    /// NOT" have data below it; measured 2026-12-07: BIND and PowerDNS
    /// keep it unanswered, Knot 3.2 refuses the UPDATE).
    #[error("{owner} is below the DNAME at {dname}, which redirects every name under it: BIND and PowerDNS would keep this record without ever answering it and Knot refuses it; delete the DNAME row first or give the record another name")]
    BelowDname {
        /// The owner of the refused record.
        owner: Owner,
        /// The owner of the DNAME above it.
        dname: Owner,
    },
    /// A DNAME above names that hold records (same measurements as
    /// [`Refusal::BelowDname`]).
    #[error("a DNAME at {owner} would redirect the names below it, and {below} holds records: BIND and PowerDNS would stop answering them and Knot refuses the DNAME; delete the rows below {owner} first")]
    DnameAboveNames {
        /// The owner of the refused DNAME.
        owner: Owner,
        /// A name below it that holds records.
        below: Owner,
    },
    /// A DS at a zone's apex: it belongs in the parent zone, and BIND
    /// ignores it while answering NOERROR.
    #[error("a DS record cannot be at the zone apex ({owner}): it belongs in the parent zone, and BIND would silently ignore it")]
    DsAtApex {
        /// The owner (the apex).
        owner: Owner,
    },
    /// A DS at a name without NS records, which is no delegation (RFC 4034
    /// §5: "The DS resource record refers to a DNSKEY RR ... of a delegated
    /// zone"); BIND ignores it while answering NOERROR.
    #[error("{owner} has no NS records among the rows, so it is no delegation and a DS record there would be silently ignored (BIND); publish the delegation's NS records with it")]
    DsWithoutDelegation {
        /// The owner.
        owner: Owner,
    },
    /// An NS record at a zone's apex from a source not configured to manage
    /// the apex NS RRset (the zone's delegation).
    #[error("{owner} NS is at the apex of zone {owner}: this source may not change the zone's apex NS records; set manage_apex_ns = true for the source that owns them")]
    ApexNs {
        /// The owner (the apex).
        owner: Owner,
    },
}

/// A refusal with where it happened, when the row got that far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The zone of the record that was refused.
    pub zone: Option<ZoneId>,
    /// Its owner.
    pub owner: Option<Owner>,
    /// Why (boxed: refusals are rare, and results stay small).
    pub reason: Box<Refusal>,
}

impl<E: Into<Refusal>> From<E> for Refused {
    fn from(e: E) -> Refused {
        Refused {
            zone: None,
            owner: None,
            reason: Box::new(e.into()),
        }
    }
}

/// A row that was refused, with what an operator needs to find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The source (index into the mappings).
    pub source: SourceId,
    /// The row's key.
    pub key: RowKey,
    /// The commit LSN of its transaction.
    pub lsn: Lsn,
    /// The zone, when known.
    pub zone: Option<ZoneId>,
    /// The owner, when known.
    pub owner: Option<Owner>,
    /// Why.
    pub reason: Refusal,
}

/// Which source a row belongs to (index into the configured mappings:
/// the `[[source]]` tables, then the zones tables they reference).
///
/// Built by [`SourceId::new`], checked: with `as` casts the 65,537th
/// source was given the first source's id and its rows were taken for that
/// table's (issue #24). The configuration refuses more than
/// [`MAX_SOURCES`], so the check never fails in a running pg2dns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u16);

/// The most sources one configuration may hold: one per [`SourceId`].
pub const MAX_SOURCES: usize = u16::MAX as usize + 1;

/// Why a source was given no id.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SourcesError {
    /// More sources than there are [`SourceId`]s.
    #[error("{count} sources are configured (pg2dns.rr, the [[source]] tables and the zones tables they reference), more than the {limit} pg2dns can tell apart")]
    TooMany {
        /// How many sources were given (at least).
        count: usize,
        /// The most allowed.
        limit: usize,
    },
}

impl SourceId {
    /// The id of the source at `index` among the configured mappings;
    /// refused past [`MAX_SOURCES`], never wrapped.
    pub fn new(index: usize) -> Result<SourceId, SourcesError> {
        u16::try_from(index)
            .map(SourceId)
            .map_err(|_| SourcesError::TooMany {
                count: index.saturating_add(1),
                limit: MAX_SOURCES,
            })
    }

    /// Refuses `count` sources if they are more than [`MAX_SOURCES`].
    pub fn check_count(count: usize) -> Result<(), SourcesError> {
        if count > MAX_SOURCES {
            return Err(SourcesError::TooMany {
                count,
                limit: MAX_SOURCES,
            });
        }
        Ok(())
    }

    /// The source's position among the configured mappings.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A source row: its source and key.
pub type RowRef = (SourceId, RowKey);

/// An owner name in a zone: the unit the plan checks and groups.
pub type NodeKey = (ZoneId, Owner);

/// One contribution at an owner, as the row state holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    /// The type.
    pub rtype: RType,
    /// The data.
    pub rdata: Rdata,
    /// The TTL the producing row gives.
    pub ttl: u32,
}

/// What the store read for a batch: the row state of the rows it changes,
/// and every contribution at every owner those rows had or want.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// The records each row contributes now (absent rows contribute none).
    pub rows: HashMap<RowRef, Vec<Desired>>,
    /// Every contribution (one per producing row and record) at each owner.
    pub nodes: HashMap<NodeKey, Vec<NodeEntry>>,
}

/// The limits the plan enforces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanLimits {
    /// Records one RRset may hold.
    pub max_records_per_rrset: usize,
    /// Message budget of each zone, by [`ZoneId`].
    pub budgets: Vec<Budget>,
    /// The host-name rule of each zone, by [`ZoneId`] (missing: fail).
    pub check_names: Vec<CheckNames>,
    /// Names and types each zone leaves to others, by [`ZoneId`] (missing:
    /// none): a row with a record there is refused.
    pub exclusions: Vec<crate::exclude::Exclusions>,
    /// Whether each source may add NS records at a zone's apex, by
    /// [`SourceId`] (missing: it may not).
    pub apex_ns_sources: Vec<bool>,
    /// Zones that publish one PTR per name, by [`ZoneId`] (missing: every
    /// PTR the rows give): see [`published`].
    pub one_ptr: Vec<bool>,
    /// What the zones hold that pg2dns does not own (see [`crate::held`]).
    pub held: crate::held::Held,
}

/// The records of one RRset that a zone publishes, from everything its rows
/// give (`wanted`, in any order): all of them, except that a zone with
/// `one_ptr` publishes a PTR RRset as its single smallest record (the
/// record whose wire form sorts first: the byte order of the lower-case
/// target names, label lengths included). The rule
/// depends on the set alone, not on which row came first, so the stream,
/// a replay and reconcile agree.
pub fn published<'a>(
    one_ptr: bool,
    rtype: RType,
    wanted: impl Iterator<Item = &'a Rdata>,
) -> Vec<&'a Rdata> {
    let mut all: Vec<&Rdata> = wanted.collect();
    all.sort();
    all.dedup();
    if one_ptr && rtype == RType::PTR {
        all.truncate(1);
    }
    all
}

/// The records the zones publish, by zone: every owner's RRsets, each at
/// the smallest TTL its producers give and with the records [`published`]
/// keeps. The planner's own projection of its owners (the one its update
/// groups are made of), so that what reconcile expects and what the stream
/// publishes agree by construction.
fn project(nodes: &HashMap<NodeKey, Node>, one_ptr: &[bool]) -> BTreeMap<ZoneId, Vec<Record>> {
    let mut out: BTreeMap<ZoneId, Vec<Record>> = BTreeMap::new();
    for ((zone, owner), node) in nodes {
        let one_ptr = one_ptr.get(zone.index()).copied().unwrap_or(false);
        out.entry(*zone)
            .or_default()
            .extend(node.published_records(owner, one_ptr));
    }
    out
}

/// What the zones publish when their rows contribute `contributions` (each
/// row's records at the row's own TTL, such as the row state holds them):
/// the projection the planner publishes its state by (see
/// [`Planner::published`]).
pub fn publish(
    contributions: impl IntoIterator<Item = Desired>,
    one_ptr: &[bool],
) -> BTreeMap<ZoneId, Vec<Record>> {
    let mut nodes: HashMap<NodeKey, Node> = HashMap::default();
    for d in contributions {
        nodes.entry((d.zone, d.record.owner)).or_default().add(
            d.record.rtype,
            d.record.rdata,
            d.record.ttl,
        );
    }
    project(&nodes, one_ptr)
}

/// The operations of one segment for one zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneOps {
    /// The zone.
    pub zone: ZoneId,
    /// Owner groups in order; each fits one message alone.
    pub groups: Vec<OwnerGroup>,
}

/// What a batch leaves to write: the new row state of every row whose
/// records changed, and the refusals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Rows and their new records (empty: the row contributes nothing now).
    pub rows: Vec<(RowRef, Vec<Desired>)>,
    /// Those of `rows` that held records before: their stored records are
    /// to be deleted first (rows new to the state have none to delete).
    pub replaced: Vec<RowRef>,
    /// Refused rows.
    pub rejections: Vec<Rejection>,
    /// Rows published although a rule set to warn would refuse them.
    pub warnings: Vec<Rejection>,
    /// Rows that waited for an address and were published.
    pub promoted: Vec<RowRef>,
    /// Every row a change was applied to: whatever it waited for is moot.
    pub touched: Vec<RowRef>,
    /// Owners that lost their last address record: an MX or SRV may point
    /// at them (the server keeps it, as the database says).
    pub lost_address: Vec<NodeKey>,
}

/// A row whose records the server refused because the MX or SRV target in
/// its zone has no address yet (BIND's check-integrity). Its records are
/// kept aside and published, without anyone touching the row again, as
/// soon as the target gets an address in the same zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// The row.
    pub row: RowRef,
    /// The commit LSN it was refused at.
    pub lsn: Lsn,
    /// The records it wants.
    pub records: Vec<Desired>,
    /// Where it waits for an address.
    pub target: NodeKey,
}

/// A small map kept as a vector sorted by key.
///
/// Why not a `BTreeMap` or a `HashMap`: the planner keeps one node per
/// owner of every zone it plans (a million for reconcile's desired side of
/// a million-record zone), and almost every node holds one type with one
/// record from one producer. An ordered map's first leaf or a hash table's
/// first buckets cost hundreds of bytes for that one entry, a vector of one
/// entry its size (BENCHMARKS.md "Reconcile at scale"). Lookups are binary
/// searches; the rare large RRset (bounded by `max_records_per_rrset`)
/// pays a shift per insert.
#[derive(Clone, Debug, PartialEq, Eq)]
struct VecMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap(Vec::new())
    }
}

impl<K: Ord, V> VecMap<K, V> {
    fn find<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.0.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    fn get_mut<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.find(key).ok().map(|i| &mut self.0[i].1)
    }

    fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
    {
        self.find(key).is_ok()
    }

    fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
    {
        let i = self.find(key).ok()?;
        let (_, v) = self.0.remove(i);
        if self.0.is_empty() {
            // An emptied node gives its memory back.
            self.0 = Vec::new();
        }
        Some(v)
    }

    /// The value at `key`, inserted as the default when absent.
    fn or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        let i = match self.find(&key) {
            Ok(i) => i,
            Err(i) => {
                if self.0.capacity() == 0 {
                    // Most maps hold one entry: room for one, not four.
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, (key, V::default()));
                i
            }
        };
        &mut self.0[i].1
    }

    fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(k, _)| k)
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a, K, V> IntoIterator for &'a VecMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

/// TTL multiset of one record's producers (ascending TTLs).
type Producers = VecMap<u32, u32>;

/// The records at one owner: per type, per data, the producers' TTLs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Node {
    rrsets: VecMap<RType, VecMap<Rdata, Producers>>,
}

impl Node {
    fn add(&mut self, rtype: RType, rdata: Rdata, ttl: u32) {
        *self
            .rrsets
            .or_default(rtype)
            .or_default(rdata)
            .or_default(ttl) += 1;
    }

    /// Removes one producer; false if there was none (the state was wrong).
    fn remove(&mut self, rtype: RType, rdata: &Rdata, ttl: u32) -> bool {
        let Some(set) = self.rrsets.get_mut(&rtype) else {
            return false;
        };
        let Some(producers) = set.get_mut(rdata) else {
            return false;
        };
        let Some(n) = producers.get_mut(&ttl) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            producers.remove(&ttl);
        }
        if producers.is_empty() {
            set.remove(rdata);
        }
        if set.is_empty() {
            self.rrsets.remove(&rtype);
        }
        true
    }

    /// The RRset's TTL: the smallest among all its producers.
    fn ttl(&self, rtype: RType) -> Option<u32> {
        self.rrsets
            .get(&rtype)?
            .values()
            .filter_map(|p| p.keys().next().copied())
            .min()
    }

    /// What the zone publishes of the RRset of `rtype` here: its TTL (the
    /// smallest its producers give) and its records ([`published`]).
    fn shown(&self, rtype: RType, one_ptr: bool) -> Option<(u32, Vec<&Rdata>)> {
        let set = self.rrsets.get(&rtype)?;
        Some((self.ttl(rtype)?, published(one_ptr, rtype, set.keys())))
    }

    /// Every record the zone publishes at this owner.
    fn published_records<'a>(
        &'a self,
        owner: &'a Owner,
        one_ptr: bool,
    ) -> impl Iterator<Item = Record> + 'a {
        self.rrsets.keys().flat_map(move |&rtype| {
            let (ttl, data) = self.shown(rtype, one_ptr).unwrap_or_default();
            data.into_iter().map(move |rdata| Record {
                owner: owner.clone(),
                rtype,
                ttl,
                rdata: rdata.clone(),
            })
        })
    }

    fn has(&self, rtype: RType, rdata: &Rdata) -> bool {
        self.rrsets
            .get(&rtype)
            .is_some_and(|set| set.contains_key(rdata))
    }
}

/// The node an MX, SRV or NS record points at, when it is in a configured
/// zone (so the database says whether it is an alias).
fn alias_checked_target(zones: &Zones, record: &Record) -> Option<NodeKey> {
    if !matches!(record.rtype, RType::MX | RType::SRV | RType::NS) {
        return None;
    }
    let target = Owner::from_name(crate::rdata::target(record.rtype, record.rdata.as_wire())?);
    Some((zones.zone_for(&target)?, target))
}

/// Whether a node holds an address record.
fn has_address(node: &Node) -> bool {
    node.rrsets.contains_key(&RType::A) || node.rrsets.contains_key(&RType::AAAA)
}

/// Per-segment bookkeeping.
#[derive(Default)]
struct Segment {
    /// Touched owners in first-touch order, with their records at the start.
    order: Vec<NodeKey>,
    before: HashMap<NodeKey, Node>,
    /// Rows that added records at each owner in this segment, in order.
    adders: HashMap<NodeKey, Vec<(RowRef, Lsn)>>,
    /// Rows refused in this segment (never adders again).
    refused: HashSet<RowRef>,
}

/// Applies row updates to the row state and plans the operations.
pub struct Planner<'z> {
    zones: &'z Zones,
    limits: &'z PlanLimits,
    loaded_rows: HashMap<RowRef, Vec<Desired>>,
    rows: HashMap<RowRef, Vec<Desired>>,
    nodes: HashMap<NodeKey, Node>,
    segment: Segment,
    rejections: Vec<Rejection>,
    warnings: Vec<Rejection>,
    /// Rows applied in this batch: what they waited for no longer holds.
    updated_rows: HashSet<RowRef>,
    /// Rows waiting for an address, by the owner they wait at.
    waiting: HashMap<NodeKey, Vec<Waiting>>,
    /// Owners that gained their first address record in the last segment.
    gained_address: Vec<NodeKey>,
    /// Owners that lost their last address record.
    lost_address: Vec<NodeKey>,
    /// Waiting rows published.
    promoted: Vec<RowRef>,
    /// Contributions the state should have held but did not (a bug or an
    /// edited state table); reported, never fatal.
    inconsistencies: usize,
    /// Drop each row's state when its segment ends (see
    /// [`Planner::forgetting_rows`]).
    forget_rows: bool,
    /// Whether an owner the planner does not hold is an alias (see
    /// [`Planner::with_aliases`]).
    aliases: Option<AliasOracle<'z>>,
    /// The DNAMEs and the names below them that a planner fed owner by
    /// owner does not hold (see [`Planner::with_dnames`]).
    dnames: Option<DnameOracle<'z>>,
}

/// Answers, for a planner that does not hold every owner, the DNAME facts
/// that cross owners (see [`Planner::with_dnames`]).
pub struct DnameOracle<'z> {
    /// Whether an owner holds a DNAME that stays.
    pub is_dname: Box<dyn Fn(&NodeKey) -> bool + Send + Sync + 'z>,
    /// The smallest name strictly below an owner that holds records that
    /// stay, if any.
    pub occupied_below: OwnerFinder<'z>,
}

/// Finds an owner related to the one asked about (see [`DnameOracle`]).
pub type OwnerFinder<'z> = Box<dyn Fn(&NodeKey) -> Option<Owner> + Send + Sync + 'z>;

/// Answers whether an owner holds a CNAME, for a planner that does not hold
/// every owner.
pub type AliasOracle<'z> = Box<dyn Fn(&NodeKey) -> bool + Send + Sync + 'z>;

impl<'z> Planner<'z> {
    /// A planner over what the store loaded.
    pub fn new(zones: &'z Zones, limits: &'z PlanLimits, loaded: Loaded) -> Planner<'z> {
        let mut nodes: HashMap<NodeKey, Node> = HashMap::default();
        for (key, entries) in loaded.nodes {
            let node = nodes.entry(key).or_default();
            for e in entries {
                node.add(e.rtype, e.rdata, e.ttl);
            }
        }
        Planner {
            zones,
            limits,
            rows: loaded.rows.clone(),
            loaded_rows: loaded.rows,
            nodes,
            segment: Segment::default(),
            rejections: Vec::new(),
            warnings: Vec::new(),
            updated_rows: HashSet::default(),
            waiting: HashMap::default(),
            gained_address: Vec::new(),
            lost_address: Vec::new(),
            promoted: Vec::new(),
            inconsistencies: 0,
            forget_rows: false,
            aliases: None,
            dnames: None,
        }
    }

    /// A planner for a pass that applies every row once, one segment each,
    /// and wants only what the zones publish ([`Planner::published`]), as
    /// reconcile's comparison does: each row's state is dropped when its
    /// segment ends, so memory holds the owners, not the rows too.
    /// [`Planner::finish`] then returns no rows.
    pub fn forgetting_rows(mut self) -> Self {
        self.forget_rows = true;
        self
    }

    /// For a planner fed owner by owner (reconcile's bounded pass, which
    /// forgets each owner with [`Planner::take_published`]): `is_alias`
    /// says whether an owner it does not hold has a CNAME, for the rule that
    /// an MX, SRV or NS must not point at an alias.
    pub fn with_aliases(mut self, is_alias: impl Fn(&NodeKey) -> bool + Send + Sync + 'z) -> Self {
        self.aliases = Some(Box::new(is_alias));
        self
    }

    /// For a planner fed owner by owner: the DNAME rule's facts about owners
    /// it does not hold, whether a name above holds a DNAME and which name
    /// below a new DNAME holds records (see [`Refusal::BelowDname`] and
    /// [`Refusal::DnameAboveNames`]). The oracle decides which rows came
    /// first, as the stream's order does.
    pub fn with_dnames(mut self, oracle: DnameOracle<'z>) -> Self {
        self.dnames = Some(oracle);
        self
    }

    /// What the owners the planner holds publish (as [`Planner::published`]),
    /// and forgets them: a pass that feeds every row of an owner, then takes
    /// it, holds one owner at a time.
    pub fn take_published(&mut self) -> BTreeMap<ZoneId, Vec<Record>> {
        let out = project(&self.nodes, &self.limits.one_ptr);
        self.nodes.clear();
        out
    }

    /// The rows refused so far.
    pub fn rejections(&self) -> &[Rejection] {
        &self.rejections
    }

    /// [`Planner::end_segment`] for a planner [`Planner::forgetting_rows`]
    /// that still wants each row's part: the rows of the segment with the
    /// records each contributes now (none when refused).
    pub fn end_segment_taking_rows(&mut self) -> (Vec<ZoneOps>, Vec<(RowRef, Vec<Desired>)>) {
        let forget = std::mem::replace(&mut self.forget_rows, false);
        let ops = self.end_segment();
        self.forget_rows = forget;
        let rows = self.rows.drain().collect();
        self.updated_rows.clear();
        (ops, rows)
    }

    /// What the zones publish now, by zone: every record of the planner's
    /// owners, one TTL per RRset (the smallest), one PTR per name in a zone
    /// with `one_ptr`. Reconcile's desired side.
    pub fn published(&self) -> BTreeMap<ZoneId, Vec<Record>> {
        project(&self.nodes, &self.limits.one_ptr)
    }

    /// How many contributions the loaded state lacked (0 when consistent).
    pub fn inconsistencies(&self) -> usize {
        self.inconsistencies
    }

    fn touch(&mut self, key: &NodeKey) {
        if !self.segment.before.contains_key(key) {
            let now = self.nodes.get(key).cloned().unwrap_or_default();
            self.segment.before.insert(key.clone(), now);
            self.segment.order.push(key.clone());
        }
    }

    fn withdraw(&mut self, records: &[Desired]) {
        for d in records {
            let key = (d.zone, d.record.owner.clone());
            self.touch(&key);
            let removed = self
                .nodes
                .get_mut(&key)
                .is_some_and(|n| n.remove(d.record.rtype, &d.record.rdata, d.record.ttl));
            if !removed {
                self.inconsistencies += 1;
            }
        }
    }

    fn refuse(&mut self, row: &RowRef, lsn: Lsn, hint: Option<NodeKey>, reason: Refusal) {
        let (zone, owner) = match (hint, &reason) {
            (Some((z, o)), _) => (Some(z), Some(o)),
            (None, Refusal::OutsideZones { owner }) => (None, Some(owner.clone())),
            (None, _) => (None, None),
        };
        self.rejections.push(Rejection {
            source: row.0,
            key: row.1.clone(),
            lsn,
            zone,
            owner,
            reason,
        });
    }

    /// Applies one row's new image. Refusals decided from the row alone
    /// (unparsable columns, a record too large for any message) are made
    /// here; the others at [`Planner::end_segment`].
    pub fn apply(&mut self, source: SourceId, update: RowUpdate) {
        let row: RowRef = (source, update.key);
        self.updated_rows.insert(row.clone());
        let old = self.rows.remove(&row).unwrap_or_default();
        let wanted = match update.image {
            Ok(w) => w,
            Err(refused) => {
                let hint = match (refused.zone, refused.owner) {
                    (Some(z), Some(o)) => Some((z, o)),
                    _ => old.first().map(|d| (d.zone, d.record.owner.clone())),
                };
                let reason = *refused.reason;
                self.withdraw(&old);
                self.refuse(&row, update.lsn, hint, reason);
                self.rows.insert(row, Vec::new());
                return;
            }
        };
        let mut new: Vec<Desired> = Vec::with_capacity(wanted.len());
        let mut refusal = None;
        for w in wanted {
            let d = match w {
                Wanted::Record(d) => d,
                Wanted::FromState {
                    zone,
                    owner,
                    rtype,
                    ttl,
                } => match old.iter().find(|d| d.record.rtype == rtype) {
                    Some(prev) => Desired {
                        zone,
                        record: Record {
                            owner,
                            rtype,
                            ttl,
                            rdata: prev.record.rdata.clone(),
                        },
                    },
                    None => {
                        refusal = Some((
                            Some((zone, owner)),
                            Refusal::ToastWithoutState {
                                column: "rdata".into(),
                            },
                        ));
                        break;
                    }
                },
            };
            if let Some(r) = self.too_large(&d) {
                refusal = Some((Some((d.zone, d.record.owner.clone())), r));
                break;
            }
            if let Some(rule) = self.excluded(&d) {
                let reason = Refusal::Excluded {
                    owner: d.record.owner.clone(),
                    rtype: d.record.rtype,
                    rule,
                };
                refusal = Some((Some((d.zone, d.record.owner.clone())), reason));
                break;
            }
            if let Some(bad) = self.host_name_rule(&d) {
                let at = Some((d.zone, d.record.owner.clone()));
                match self.check_names(d.zone) {
                    CheckNames::Fail => {
                        refusal = Some((at, bad));
                        break;
                    }
                    CheckNames::Warn => self.warnings.push(Rejection {
                        source,
                        key: row.1.clone(),
                        lsn: update.lsn,
                        zone: Some(d.zone),
                        owner: Some(d.record.owner.clone()),
                        reason: bad,
                    }),
                    CheckNames::Ignore => {}
                }
            }
            if d.record.rtype == RType::NS
                && d.record.owner.name() == self.zones.name(d.zone).name()
                && !self.manages_apex_ns(source)
            {
                let at = Some((d.zone, d.record.owner.clone()));
                let owner = d.record.owner.clone();
                refusal = Some((at, Refusal::ApexNs { owner }));
                break;
            }
            if d.record.owner.name() == self.zones.name(d.zone).name() {
                let owner = d.record.owner.clone();
                let at_apex = match d.record.rtype {
                    RType::CNAME => Some(Refusal::CnameAtApex { owner }),
                    RType::DNAME => Some(Refusal::DnameAtApex { owner }),
                    RType::DS => Some(Refusal::DsAtApex { owner }),
                    _ => None,
                };
                if let Some(reason) = at_apex {
                    refusal = Some((Some((d.zone, d.record.owner.clone())), reason));
                    break;
                }
            }
            if !new
                .iter()
                .any(|n| n.zone == d.zone && n.record.same_rr(&d.record))
            {
                new.push(d);
            }
        }
        self.withdraw(&old);
        if let Some((hint, reason)) = refusal {
            self.refuse(&row, update.lsn, hint, reason);
            self.rows.insert(row, Vec::new());
            return;
        }
        for d in &new {
            let key = (d.zone, d.record.owner.clone());
            self.touch(&key);
            self.nodes.entry(key.clone()).or_default().add(
                d.record.rtype,
                d.record.rdata.clone(),
                d.record.ttl,
            );
            let adders = self.segment.adders.entry(key).or_default();
            if !adders.iter().any(|(r, _)| *r == row) {
                adders.push((row.clone(), update.lsn));
            }
        }
        self.rows.insert(row, new);
    }

    fn manages_apex_ns(&self, source: SourceId) -> bool {
        self.limits
            .apex_ns_sources
            .get(usize::from(source.0))
            .copied()
            .unwrap_or(false)
    }

    /// A TRUNCATE of a source's table: every row of that source the planner
    /// knows (what the store loaded for it, and rows of this batch) leaves,
    /// as if deleted one by one. The store must have loaded every row the
    /// row state holds for the source.
    pub fn truncate(&mut self, source: SourceId, lsn: Lsn) {
        let mut keys: Vec<RowKey> = self
            .rows
            .keys()
            .filter(|(s, _)| *s == source)
            .map(|(_, k)| k.clone())
            .collect();
        keys.sort();
        for key in keys {
            self.apply(
                source,
                RowUpdate {
                    key,
                    lsn,
                    image: Ok(Vec::new()),
                },
            );
        }
    }

    fn budget(&self, zone: ZoneId) -> Budget {
        self.limits
            .budgets
            .get(zone.index())
            .copied()
            .unwrap_or(Budget {
                max_message_bytes: crate::update::MAX_MESSAGE_BYTES,
                tsig_record_len: 0,
            })
    }

    fn check_names(&self, zone: ZoneId) -> CheckNames {
        self.limits
            .check_names
            .get(zone.index())
            .copied()
            .unwrap_or_default()
    }

    fn excluded(&self, d: &Desired) -> Option<String> {
        self.limits
            .exclusions
            .get(d.zone.index())
            .and_then(|e| e.rule_for(&d.record))
    }

    fn host_name_rule(&self, d: &Desired) -> Option<Refusal> {
        if self.check_names(d.zone) == CheckNames::Ignore {
            return None;
        }
        checks::check_host_names(&d.record).map(|bad| Refusal::HostName {
            rtype: d.record.rtype,
            role: bad.role,
            name: bad.name,
        })
    }

    fn too_large(&self, d: &Desired) -> Option<Refusal> {
        let budget = self.budget(d.zone);
        let group = OwnerGroup {
            owner: d.record.owner.clone(),
            ops: vec![UpdateOp::Add(d.record.clone())],
        };
        let bytes = budget.group_alone(self.zones.name(d.zone), &group);
        (bytes > budget.limit()).then(|| Refusal::RecordTooLarge {
            owner: d.record.owner.clone(),
            rtype: d.record.rtype,
            bytes,
            budget: budget.limit(),
        })
    }

    /// Withdraws every record of a row refused at the end of a segment.
    fn refuse_late(&mut self, row: &RowRef, lsn: Lsn, at: NodeKey, reason: Refusal) {
        let records = self
            .rows
            .insert(row.clone(), Vec::new())
            .unwrap_or_default();
        self.withdraw(&records);
        for adders in self.segment.adders.values_mut() {
            adders.retain(|(r, _)| r != row);
        }
        self.segment.refused.insert(row.clone());
        self.refuse(row, lsn, Some(at), reason);
    }

    /// The group of net operations of one touched owner.
    fn group(&self, key: &NodeKey) -> OwnerGroup {
        let empty = Node::default();
        let before = self.segment.before.get(key).unwrap_or(&empty);
        let after = self.nodes.get(key).unwrap_or(&empty);
        let mut deletes = Vec::new();
        let mut adds = Vec::new();
        let types: std::collections::BTreeSet<RType> = before
            .rrsets
            .keys()
            .chain(after.rrsets.keys())
            .copied()
            .collect();
        let record = |rtype, rdata: &Rdata, ttl| Record {
            owner: key.1.clone(),
            rtype,
            ttl,
            rdata: rdata.clone(),
        };
        let one_ptr = self
            .limits
            .one_ptr
            .get(key.0.index())
            .copied()
            .unwrap_or(false);
        for rtype in types {
            let tb = before.ttl(rtype);
            let ta = after.ttl(rtype);
            let retimed = matches!((tb, ta), (Some(b), Some(a)) if a != b);
            let shown = |node: &'_ Node| -> Vec<Rdata> {
                node.shown(rtype, one_ptr)
                    .map(|(_, data)| data.into_iter().cloned().collect())
                    .unwrap_or_default()
            };
            let (was, is) = (shown(before), shown(after));
            let gone: Vec<&Rdata> = was.iter().filter(|d| retimed || !is.contains(d)).collect();
            let new: Vec<&Rdata> = is.iter().filter(|d| retimed || !was.contains(d)).collect();
            deletes.extend(
                gone.into_iter()
                    .map(|d| UpdateOp::Delete(record(rtype, d, tb.unwrap_or(0)))),
            );
            adds.extend(
                new.into_iter()
                    .map(|d| UpdateOp::Add(record(rtype, d, ta.unwrap_or(0)))),
            );
        }
        deletes.extend(adds);
        OwnerGroup {
            owner: key.1.clone(),
            ops: deletes,
        }
    }

    /// The nearest name above `key` (up to its zone's apex) holding a DNAME
    /// that is older than this segment: a row's (loaded through
    /// [`Planner::wanted_nodes`]) or another tool's. A DNAME new in this
    /// segment is left to its own check, which refuses it instead.
    fn dname_above(&self, key: &NodeKey) -> Option<Owner> {
        let apex = self.zones.name(key.0).name();
        // Rows never hold a DNAME at the apex (refused there), so a name
        // one label below it, most names, has nothing above it to look up
        // unless another tool holds names.
        let depth = key
            .1
            .name()
            .label_count()
            .saturating_sub(apex.label_count());
        if depth < 2 && self.limits.held.is_empty() {
            return None;
        }
        let mut at = key.1.name().parent();
        while let Some(name) = at {
            if !name.is_at_or_below(apex) {
                break;
            }
            let above = (key.0, Owner::from_name(name));
            let held = self
                .limits
                .held
                .at(above.0, &above.1)
                .is_some_and(|h| h.contains(&RType::DNAME));
            let row = self
                .nodes
                .get(&above)
                .is_some_and(|n| n.rrsets.contains_key(&RType::DNAME));
            let new = self
                .segment
                .before
                .get(&above)
                .is_some_and(|b| !b.rrsets.contains_key(&RType::DNAME));
            // An owner a planner fed owner by owner does not hold.
            let told = !self.nodes.contains_key(&above)
                && self.dnames.as_ref().is_some_and(|o| (o.is_dname)(&above));
            if held || (row && !new) || told {
                return Some(above.1);
            }
            at = above.1.name().parent();
        }
        None
    }

    /// A name strictly below `key` that holds records (the smallest such
    /// name, so that the reason is the same on a replay): among the
    /// planner's owners (the store loads those below a DNAME a batch adds,
    /// see [`Planner::dname_owners`]) and what other tools hold.
    ///
    /// A scan of the owners the planner holds: in the stream, those of one
    /// batch; in reconcile's pass over every row, all of them, once per
    /// DNAME added (DNAMEs are few).
    fn occupied_below(&self, key: &NodeKey) -> Option<Owner> {
        let top = key.1.name();
        let rows = self
            .nodes
            .iter()
            .filter(|((z, o), n)| {
                *z == key.0 && o != &key.1 && o.name().is_at_or_below(top) && !n.rrsets.is_empty()
            })
            .map(|((_, o), _)| o);
        let held = self.limits.held.below(key.0, &key.1);
        // Names a planner fed owner by owner does not hold.
        let told = self.dnames.as_ref().and_then(|o| (o.occupied_below)(key));
        rows.chain(held).chain(told.as_ref()).min().cloned()
    }

    /// The first check that fails at a touched owner: the rows to refuse.
    ///
    /// The owner group it builds for the size check is left in `group`:
    /// while a pass of checks refuses nothing the state does not change, so
    /// that group is the one [`Planner::settle`] returns.
    fn check(&self, key: &NodeKey, group: &mut Option<OwnerGroup>) -> Vec<(RowRef, Lsn, Refusal)> {
        let adders = match self.segment.adders.get(key) {
            Some(adders) if !adders.is_empty() => adders,
            _ => return Vec::new(),
        };
        let empty = Node::default();
        let before = self.segment.before.get(key).unwrap_or(&empty);
        let after = self.nodes.get(key).unwrap_or(&empty);
        let owner = key.1.clone();
        // Rows that added records of `rtype` that were not there before.
        let adders_of = |rtype: RType| -> Vec<(RowRef, Lsn)> {
            adders
                .iter()
                .filter(|(row, _)| {
                    self.rows.get(row).is_some_and(|recs| {
                        recs.iter().any(|d| {
                            (d.zone, &d.record.owner) == (key.0, &key.1)
                                && d.record.rtype == rtype
                                && !before.has(rtype, &d.record.rdata)
                        })
                    })
                })
                .cloned()
                .collect()
        };
        // Beside what the zone holds outside pg2dns: a CNAME must still be
        // alone at its name.
        if let Some(held) = self.limits.held.at(key.0, &key.1) {
            let refused: Vec<RType> = if held.contains(&RType::CNAME) {
                after
                    .rrsets
                    .keys()
                    .copied()
                    .filter(|t| !t.is_dnssec())
                    .collect()
            } else if after.rrsets.contains_key(&RType::CNAME) {
                vec![RType::CNAME]
            } else {
                Vec::new()
            };
            let held = held
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            let rows: Vec<(RowRef, Lsn, Refusal)> = refused
                .into_iter()
                .flat_map(|rtype| {
                    let reason = Refusal::BesideHeld {
                        owner: owner.clone(),
                        rtype,
                        held: held.clone(),
                    };
                    adders_of(rtype)
                        .into_iter()
                        .map(move |(r, l)| (r, l, reason.clone()))
                })
                .collect();
            if !rows.is_empty() {
                return rows;
            }
        }
        // One CNAME per name.
        if let Some(cnames) = after.rrsets.get(&RType::CNAME) {
            if cnames.len() > 1 {
                let mut rows = adders_of(RType::CNAME);
                // Keep the CNAME that was there, or else the first added.
                if before
                    .rrsets
                    .get(&RType::CNAME)
                    .is_none_or(|s| s.is_empty())
                    && !rows.is_empty()
                {
                    rows.remove(0);
                }
                return rows
                    .into_iter()
                    .map(|(r, l)| {
                        (
                            r,
                            l,
                            Refusal::TwoCnames {
                                owner: owner.clone(),
                            },
                        )
                    })
                    .collect();
            }
            // CNAME and other data.
            let others: Vec<RType> = after
                .rrsets
                .keys()
                .copied()
                .filter(|t| *t != RType::CNAME)
                .collect();
            if !others.is_empty() {
                let other = others
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                let cname_new = !before.rrsets.contains_key(&RType::CNAME);
                let rows = if cname_new {
                    adders_of(RType::CNAME)
                } else {
                    others.iter().flat_map(|t| adders_of(*t)).collect()
                };
                let reason = Refusal::CnameAndOtherData {
                    owner: owner.clone(),
                    other,
                };
                return rows
                    .into_iter()
                    .map(|(r, l)| (r, l, reason.clone()))
                    .collect();
            }
        }
        // One DNAME per name (RFC 6672 §2.4). Knot 3.2.6 crashes on an
        // UPDATE adding a second one; BIND replaces the first, PowerDNS
        // keeps both.
        if after.rrsets.get(&RType::DNAME).is_some_and(|s| s.len() > 1) {
            let mut rows = adders_of(RType::DNAME);
            if before
                .rrsets
                .get(&RType::DNAME)
                .is_none_or(|s| s.is_empty())
                && !rows.is_empty()
            {
                rows.remove(0);
            }
            let reason = Refusal::TwoDnames {
                owner: owner.clone(),
            };
            return rows
                .into_iter()
                .map(|(r, l)| (r, l, reason.clone()))
                .collect();
        }
        // Nothing below a DNAME (RFC 6672 §2.3). Like the CNAME rule, what
        // was there first stays: a DNAME new in this segment is refused
        // while names below it hold records; else the records new below an
        // older DNAME are. Checked on the segment's end state, so a
        // transaction that deletes the one and adds the other goes out.
        if after.rrsets.contains_key(&RType::DNAME) && !before.rrsets.contains_key(&RType::DNAME) {
            if let Some(below) = self.occupied_below(key) {
                let reason = Refusal::DnameAboveNames {
                    owner: owner.clone(),
                    below,
                };
                let rows = adders_of(RType::DNAME);
                if !rows.is_empty() {
                    return rows
                        .into_iter()
                        .map(|(r, l)| (r, l, reason.clone()))
                        .collect();
                }
            }
        }
        if let Some(dname) = self.dname_above(key) {
            let reason = Refusal::BelowDname {
                owner: owner.clone(),
                dname,
            };
            let rows: Vec<(RowRef, Lsn, Refusal)> = adders
                .iter()
                .filter(|(row, _)| {
                    self.rows.get(row).is_some_and(|recs| {
                        recs.iter().any(|d| {
                            (d.zone, &d.record.owner) == (key.0, &key.1)
                                && !before.has(d.record.rtype, &d.record.rdata)
                        })
                    })
                })
                .map(|(r, l)| (r.clone(), *l, reason.clone()))
                .collect();
            if !rows.is_empty() {
                return rows;
            }
        }
        // A DS only at a delegation (BIND ignores one elsewhere).
        let held_ns = self
            .limits
            .held
            .at(key.0, &key.1)
            .is_some_and(|h| h.contains(&RType::NS));
        if after.rrsets.contains_key(&RType::DS)
            && !after.rrsets.contains_key(&RType::NS)
            && !held_ns
        {
            let reason = Refusal::DsWithoutDelegation {
                owner: owner.clone(),
            };
            let rows = adders_of(RType::DS);
            if !rows.is_empty() {
                return rows
                    .into_iter()
                    .map(|(r, l)| (r, l, reason.clone()))
                    .collect();
            }
        }
        // MX, SRV and NS must not point at an alias (RFC 2181 §10.3: "the
        // domain name … MUST NOT be an alias"), as far as the database says.
        for rtype in [RType::MX, RType::SRV, RType::NS] {
            let aliased: Vec<Rdata> = after
                .rrsets
                .get(&rtype)
                .into_iter()
                .flat_map(|set| set.keys())
                .filter(|d| !before.has(rtype, d))
                .filter(|d| {
                    let record = Record {
                        owner: owner.clone(),
                        rtype,
                        ttl: 0,
                        rdata: (*d).clone(),
                    };
                    alias_checked_target(self.zones, &record).is_some_and(|t| {
                        match self.nodes.get(&t) {
                            Some(n) => n.rrsets.contains_key(&RType::CNAME),
                            // An owner a planner fed owner by owner does not hold.
                            None => self.aliases.as_ref().is_some_and(|is_alias| is_alias(&t)),
                        }
                    })
                })
                .cloned()
                .collect();
            if let Some(first) = aliased.first() {
                let target = crate::rdata::target(rtype, first.as_wire())
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                let reason = Refusal::TargetIsAlias {
                    owner: owner.clone(),
                    rtype,
                    target,
                };
                let rows: Vec<(RowRef, Lsn)> = adders
                    .iter()
                    .filter(|(row, _)| {
                        self.rows.get(row).is_some_and(|recs| {
                            recs.iter().any(|d| {
                                (d.zone, &d.record.owner) == (key.0, &key.1)
                                    && d.record.rtype == rtype
                                    && aliased.contains(&d.record.rdata)
                            })
                        })
                    })
                    .cloned()
                    .collect();
                if !rows.is_empty() {
                    return rows
                        .into_iter()
                        .map(|(r, l)| (r, l, reason.clone()))
                        .collect();
                }
            }
        }
        // Records per RRset.
        let limit = self.limits.max_records_per_rrset;
        for (rtype, set) in &after.rrsets {
            if set.len() > limit {
                let reason = Refusal::RrsetLimit {
                    owner: owner.clone(),
                    rtype: *rtype,
                    count: set.len(),
                    limit,
                };
                // Refuse the latest adders first.
                let rows = adders_of(*rtype);
                if let Some((r, l)) = rows.last().cloned() {
                    return vec![(r, l, reason)];
                }
            }
        }
        // The owner group fits one message.
        let budget = self.budget(key.0);
        let group: &OwnerGroup = group.insert(self.group(key));
        let bytes = budget.group_alone(self.zones.name(key.0), group);
        if bytes > budget.limit() && group.ops.iter().any(|op| !op.is_delete()) {
            let reason = Refusal::OwnerGroupTooLarge {
                owner: owner.clone(),
                bytes,
                budget: budget.limit(),
            };
            return adders
                .iter()
                .map(|(r, l)| (r.clone(), *l, reason.clone()))
                .collect();
        }
        // Each RRset fits one answer: header, question, then every record
        // with its owner compressed to a pointer (RFC 1035 §4.1).
        for (rtype, set) in &after.rrsets {
            let question = 12 + owner.name().wire_len() + 4;
            let bytes = question
                + set
                    .keys()
                    .map(|d| 2 + 10 + d.as_wire().len())
                    .sum::<usize>();
            if bytes > MAX_MESSAGE {
                let reason = Refusal::RrsetTooLarge {
                    owner: owner.clone(),
                    rtype: *rtype,
                    bytes,
                    limit: MAX_MESSAGE,
                };
                let rows = adders_of(*rtype);
                if let Some((r, l)) = rows.last().cloned() {
                    return vec![(r, l, reason)];
                }
            }
        }
        Vec::new()
    }

    /// Ends a segment (a transaction, or the batch's part of a large one):
    /// runs the checks, refuses what fails them, and returns each zone's
    /// owner groups. Each group fits one message alone.
    pub fn end_segment(&mut self) -> Vec<ZoneOps> {
        let mut groups = self.settle();
        // Rows that waited for an address at an owner that has one now.
        let gained = std::mem::take(&mut self.gained_address);
        let ready: Vec<Waiting> = gained
            .iter()
            .filter_map(|k| self.waiting.remove(k))
            .flatten()
            .filter(|w| !self.updated_rows.contains(&w.row))
            .collect();
        if !ready.is_empty() {
            for w in ready {
                self.promoted.push(w.row.clone());
                let image = Ok(w.records.into_iter().map(Wanted::Record).collect());
                self.apply(
                    w.row.0,
                    RowUpdate {
                        key: w.row.1,
                        lsn: w.lsn,
                        image,
                    },
                );
            }
            groups.extend(self.settle());
            self.gained_address.clear();
        }
        let mut per_zone: BTreeMap<ZoneId, Vec<OwnerGroup>> = BTreeMap::new();
        for (key, group) in groups {
            if group.ops.is_empty() {
                continue;
            }
            let budget = self.budget(key.0);
            let zone = self.zones.name(key.0);
            let groups = per_zone.entry(key.0).or_default();
            if budget.fits_alone(zone, &group) {
                groups.push(group);
            } else {
                // Deletes only (the checks refused any adds): split them.
                let mut part = OwnerGroup {
                    owner: group.owner.clone(),
                    ops: Vec::new(),
                };
                for op in group.ops {
                    part.ops.push(op);
                    if !budget.fits_alone(zone, &part) {
                        let op = part.ops.pop().expect("just pushed");
                        let full = std::mem::replace(
                            &mut part,
                            OwnerGroup {
                                owner: group.owner.clone(),
                                ops: vec![op],
                            },
                        );
                        groups.push(full);
                    }
                }
                if !part.ops.is_empty() {
                    groups.push(part);
                }
            }
        }
        let ops = per_zone
            .into_iter()
            .map(|(zone, groups)| ZoneOps { zone, groups })
            .collect();
        if self.forget_rows {
            // Rows only change within their segment (refusals included).
            self.rows.clear();
            self.updated_rows.clear();
        }
        ops
    }

    /// Runs the checks until none fails, then turns the touched owners into
    /// owner groups and starts a new segment.
    fn settle(&mut self) -> Vec<(NodeKey, OwnerGroup)> {
        let mut checked: Vec<Option<OwnerGroup>>;
        loop {
            let mut refused = false;
            let order = self.segment.order.clone();
            checked = Vec::with_capacity(order.len());
            for key in &order {
                let mut group = None;
                let offenders = self.check(key, &mut group);
                for (row, lsn, reason) in offenders {
                    if !self.segment.refused.contains(&row) {
                        self.refuse_late(&row, lsn, key.clone(), reason);
                        refused = true;
                    }
                }
                checked.push(group);
            }
            if !refused {
                break;
            }
        }
        let empty = Node::default();
        for key in &self.segment.order {
            let had = has_address(self.segment.before.get(key).unwrap_or(&empty));
            let has = has_address(self.nodes.get(key).unwrap_or(&empty));
            if has && !had {
                self.gained_address.push(key.clone());
            } else if had && !has {
                self.lost_address.push(key.clone());
            }
        }
        // The last pass refused nothing: the order is the one it checked,
        // and the groups it built are current.
        let mut checked = checked.into_iter();
        let groups: Vec<(NodeKey, OwnerGroup)> = self
            .segment
            .order
            .iter()
            .map(|key| {
                let group = checked.next().flatten();
                (key.clone(), group.unwrap_or_else(|| self.group(key)))
            })
            .collect();
        self.segment = Segment::default();
        groups
    }

    /// Rows whose MX or SRV the server refused for want of an address at its
    /// target: published as soon as the target has one (see [`Waiting`]).
    pub fn add_waiting(&mut self, waiting: Vec<Waiting>) {
        for w in waiting {
            self.waiting.entry(w.target.clone()).or_default().push(w);
        }
    }

    /// The owners the given updates want address records at: where rows
    /// waiting for an address may become publishable.
    pub fn address_owners<'u>(updates: impl IntoIterator<Item = &'u RowUpdate>) -> Vec<NodeKey> {
        let mut out = Vec::new();
        let mut seen = HashSet::default();
        for u in updates {
            let Ok(wanted) = &u.image else { continue };
            for w in wanted {
                let (zone, owner, rtype) = match w {
                    Wanted::Record(d) => (d.zone, &d.record.owner, d.record.rtype),
                    Wanted::FromState {
                        zone, owner, rtype, ..
                    } => (*zone, owner, *rtype),
                };
                if matches!(rtype, RType::A | RType::AAAA) && seen.insert((zone, owner.clone())) {
                    out.push((zone, owner.clone()));
                }
            }
        }
        out
    }

    /// The refusals made so far (drained).
    pub fn take_rejections(&mut self) -> Vec<Rejection> {
        std::mem::take(&mut self.rejections)
    }

    /// Ends the batch: the rows whose records changed, and the refusals.
    pub fn finish(mut self) -> Outcome {
        let mut rows: Vec<(RowRef, Vec<Desired>)> = self
            .rows
            .into_iter()
            .filter(|(row, records)| match self.loaded_rows.get(row) {
                Some(before) => before != records,
                None => !records.is_empty(),
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let replaced = rows
            .iter()
            .filter(|(row, _)| self.loaded_rows.get(row).is_some_and(|b| !b.is_empty()))
            .map(|(row, _)| row.clone())
            .collect();
        Outcome {
            rows,
            replaced,
            rejections: std::mem::take(&mut self.rejections),
            warnings: std::mem::take(&mut self.warnings),
            promoted: std::mem::take(&mut self.promoted),
            touched: {
                let mut touched: Vec<RowRef> = self.updated_rows.drain().collect();
                touched.sort();
                touched
            },
            lost_address: std::mem::take(&mut self.lost_address),
        }
    }

    /// The owners the given updates want records at (besides the owners of
    /// the rows' current records, which the store finds itself): what
    /// [`Loaded::nodes`] must cover.
    pub fn wanted_nodes<'u>(
        zones: &Zones,
        updates: impl IntoIterator<Item = &'u RowUpdate>,
    ) -> Vec<NodeKey> {
        let mut out: Vec<NodeKey> = Vec::new();
        let mut seen = HashSet::default();
        let mut push = |key: NodeKey| {
            if seen.insert(key.clone()) {
                out.push(key);
            }
        };
        for u in updates {
            let Ok(wanted) = &u.image else { continue };
            for w in wanted {
                let (zone, owner) = match w {
                    Wanted::Record(d) => {
                        // Where an MX, SRV or NS points, to check it is no alias.
                        if let Some(target) = alias_checked_target(zones, &d.record) {
                            push(target);
                        }
                        (d.zone, &d.record.owner)
                    }
                    Wanted::FromState { zone, owner, .. } => (*zone, owner),
                };
                push((zone, owner.clone()));
                // The names between it and the apex, which may hold a DNAME
                // (none at the apex: refused there). Most owners are one
                // label below their apex and have none.
                let apex = zones.name(zone).name();
                if owner.name().label_count() < apex.label_count() + 2 {
                    continue;
                }
                let mut at = owner.name().parent();
                while let Some(name) = at.filter(|n| n != apex && n.is_at_or_below(apex)) {
                    at = name.parent();
                    push((zone, Owner::from_name(name)));
                }
            }
        }
        out
    }

    /// The owners where the given updates want a DNAME: the store loads
    /// the names below each (which hold records), so that a DNAME above
    /// them is refused (see [`Refusal::DnameAboveNames`]). Usually none.
    pub fn dname_owners<'u>(updates: impl IntoIterator<Item = &'u RowUpdate>) -> Vec<NodeKey> {
        let mut out: Vec<NodeKey> = Vec::new();
        for u in updates {
            let Ok(wanted) = &u.image else { continue };
            for w in wanted {
                let (zone, owner, rtype) = match w {
                    Wanted::Record(d) => (d.zone, &d.record.owner, d.record.rtype),
                    Wanted::FromState {
                        zone, owner, rtype, ..
                    } => (*zone, owner, *rtype),
                };
                if rtype == RType::DNAME && !out.iter().any(|(z, o)| *z == zone && o == owner) {
                    out.push((zone, owner.clone()));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::records::ZoneName;

    /// The row state as the store keeps it, in memory: what `Loaded` a batch
    /// gets, and where its `Outcome` goes.
    #[derive(Default, Clone)]
    struct MemStore {
        rows: HashMap<RowRef, Vec<Desired>>,
    }

    impl MemStore {
        fn load(&self, updates: &[RowUpdate]) -> Loaded {
            let mut loaded = Loaded::default();
            let mut owners: HashSet<NodeKey> = Planner::wanted_nodes(&zones(), updates)
                .into_iter()
                .collect();
            // The names below a DNAME the updates add, as the store's
            // `names_below` finds them.
            for (zone, top) in Planner::dname_owners(updates) {
                owners.extend(
                    self.rows
                        .values()
                        .flatten()
                        .filter(|d| d.zone == zone && d.record.owner != top)
                        .filter(|d| d.record.owner.name().is_at_or_below(top.name()))
                        .map(|d| (d.zone, d.record.owner.clone())),
                );
            }
            for u in updates {
                let row = (SourceId(0), u.key.clone());
                if let Some(records) = self.rows.get(&row) {
                    owners.extend(records.iter().map(|d| (d.zone, d.record.owner.clone())));
                    loaded.rows.insert(row, records.clone());
                }
            }
            for records in self.rows.values() {
                for d in records {
                    let key = (d.zone, d.record.owner.clone());
                    if owners.contains(&key) {
                        loaded.nodes.entry(key).or_default().push(NodeEntry {
                            rtype: d.record.rtype,
                            rdata: d.record.rdata.clone(),
                            ttl: d.record.ttl,
                        });
                    }
                }
            }
            loaded
        }

        fn commit(&mut self, outcome: &Outcome) {
            for (row, records) in &outcome.rows {
                if records.is_empty() {
                    self.rows.remove(row);
                } else {
                    self.rows.insert(row.clone(), records.clone());
                }
            }
        }

        /// What DNS must hold: every contributed record, each RRset at the
        /// smallest TTL of its producers.
        fn expected(&self) -> Dns {
            let mut ttl: HashMap<(Owner, RType), u32> = HashMap::default();
            let mut sets: BTreeMap<(Owner, RType), BTreeSet<Rdata>> = BTreeMap::new();
            for d in self.rows.values().flatten() {
                let k = (d.record.owner.clone(), d.record.rtype);
                sets.entry(k.clone())
                    .or_default()
                    .insert(d.record.rdata.clone());
                let t = ttl.entry(k).or_insert(d.record.ttl);
                *t = (*t).min(d.record.ttl);
            }
            sets.into_iter()
                .map(|(k, s)| (k.clone(), (ttl[&k], s)))
                .collect()
        }
    }

    /// A zone as a server holds it.
    type Dns = BTreeMap<(Owner, RType), (u32, BTreeSet<Rdata>)>;

    /// Records as a zone: every RRset must have one TTL.
    fn as_dns(records: &[Record]) -> Dns {
        let mut dns = Dns::new();
        for r in records {
            let e = dns
                .entry((r.owner.clone(), r.rtype))
                .or_insert((r.ttl, BTreeSet::new()));
            assert_eq!(e.0, r.ttl, "{} {} has two TTLs", r.owner, r.rtype);
            assert!(e.1.insert(r.rdata.clone()), "{r} twice");
        }
        dns
    }

    #[test]
    fn what_the_planner_publishes_is_what_its_operations_built() {
        // Rows planned one segment each, as reconcile plans the tables: an
        // RRset whose rows give two TTLs, a PTR name two rows give, a CNAME
        // beside an address (refused), a row refused from its columns.
        let zones = zones();
        for one_ptr in [false, true] {
            let mut l = limits(65_535, 100);
            l.one_ptr = vec![one_ptr];
            let mut planner = Planner::new(&zones, &l, Loaded::default());
            let rows = [
                ("1", want("www.example.test.", 3600, "A", "192.0.2.1")),
                ("2", want("www.example.test.", 300, "A", "192.0.2.2")),
                (
                    "3",
                    want("1.2.0.192.example.test.", 600, "PTR", "zz.example.test."),
                ),
                (
                    "4",
                    want("1.2.0.192.example.test.", 900, "PTR", "aa.example.test."),
                ),
                (
                    "5",
                    want("www.example.test.", 300, "CNAME", "other.example.test."),
                ),
                (
                    "6",
                    want("MiXeD.Example.TEST.", 60, "TXT", "\"caf\u{e9} \\\"q\\\"\""),
                ),
            ];
            let mut dns = Dns::new();
            for (key, w) in rows.clone() {
                planner.apply(SourceId(0), update(key, Ok(vec![w])));
                for z in planner.end_segment() {
                    apply_ops(&mut dns, &z.groups);
                }
            }
            planner.apply(
                SourceId(0),
                update("7", Err(Refusal::NotText("rdata".into()))),
            );
            planner.end_segment();
            let published = planner.published();
            let zone = published.get(&ZoneId(0)).map_or(&[][..], Vec::as_slice);
            assert_eq!(as_dns(zone), dns, "one_ptr {one_ptr}");
            let www = Owner::parse("www.example.test.").unwrap();
            assert_eq!(dns[&(www, RType::A)].0, 300, "the smallest TTL");
            let ptr = Owner::parse("1.2.0.192.example.test.").unwrap();
            assert_eq!(dns[&(ptr, RType::PTR)].1.len(), if one_ptr { 1 } else { 2 });
            // A planner that forgets each row after its segment publishes
            // the same and refuses the same rows.
            let mut forgetting = Planner::new(&zones, &l, Loaded::default()).forgetting_rows();
            for (key, w) in rows.clone() {
                forgetting.apply(SourceId(0), update(key, Ok(vec![w])));
                forgetting.end_segment();
            }
            forgetting.apply(
                SourceId(0),
                update("7", Err(Refusal::NotText("rdata".into()))),
            );
            forgetting.end_segment();
            let mut a = forgetting
                .published()
                .remove(&ZoneId(0))
                .unwrap_or_default();
            let mut b = published.get(&ZoneId(0)).cloned().unwrap_or_default();
            a.sort_by(|x, y| (&x.owner, x.rtype, &x.rdata).cmp(&(&y.owner, y.rtype, &y.rdata)));
            b.sort_by(|x, y| (&x.owner, x.rtype, &x.rdata).cmp(&(&y.owner, y.rtype, &y.rdata)));
            assert_eq!(a, b);
            let forgot = forgetting.finish();
            assert!(forgot.rows.is_empty());
            // The same rows as row state give the same zone.
            let outcome = planner.finish();
            assert_eq!(forgot.rejections, outcome.rejections);
            assert_eq!(outcome.rejections.len(), 2);
            let state = outcome.rows.into_iter().flat_map(|(_, d)| d);
            let again = publish(state, &l.one_ptr);
            assert_eq!(
                as_dns(again.get(&ZoneId(0)).map_or(&[][..], Vec::as_slice)),
                dns
            );
        }
    }

    /// Applies operations with BIND's TTL rule: any add retimes the whole
    /// RRset, even the re-add of an RR it holds. (Knot ignores such a re-add,
    /// so after a crash a replayed add can leave a newer TTL in place until
    /// the RRset next changes; the plan itself always retimes with a delete
    /// and an add, which both servers apply.)
    fn apply_ops(dns: &mut Dns, groups: &[OwnerGroup]) {
        for op in groups.iter().flat_map(|g| &g.ops) {
            match op {
                UpdateOp::Add(r) => {
                    let e = dns
                        .entry((r.owner.clone(), r.rtype))
                        .or_insert((r.ttl, BTreeSet::new()));
                    e.1.insert(r.rdata.clone());
                    e.0 = r.ttl;
                }
                UpdateOp::Delete(r) => {
                    let k = (r.owner.clone(), r.rtype);
                    if let Some(e) = dns.get_mut(&k) {
                        e.1.remove(&r.rdata);
                        if e.1.is_empty() {
                            dns.remove(&k);
                        }
                    }
                }
                UpdateOp::DeleteRrset { owner, rtype } => {
                    dns.remove(&(owner.clone(), *rtype));
                }
            }
        }
    }

    fn zones() -> Zones {
        Zones::new(vec![ZoneName::parse("example.test.").unwrap()]).unwrap()
    }

    fn limits(max_message_bytes: usize, rrset: usize) -> PlanLimits {
        PlanLimits {
            max_records_per_rrset: rrset,
            budgets: vec![Budget {
                max_message_bytes,
                tsig_record_len: 81,
            }],
            check_names: vec![CheckNames::Fail],
            exclusions: Vec::new(),
            one_ptr: Vec::new(),
            apex_ns_sources: vec![false],
            held: crate::held::Held::default(),
        }
    }

    fn want(owner: &str, ttl: u32, rtype: &str, data: &str) -> Wanted {
        Wanted::Record(Desired {
            zone: ZoneId(0),
            record: Record::parse(owner, ttl, rtype, data).unwrap(),
        })
    }

    fn update(key: &str, image: Result<Vec<Wanted>, Refusal>) -> RowUpdate {
        RowUpdate {
            key: RowKey(key.into()),
            lsn: Lsn::new(0x100),
            image: image.map_err(Refused::from),
        }
    }

    /// A row that wants one record (TTL 300).
    fn row(key: &str, owner: &str, rtype: &str, data: &str) -> RowUpdate {
        update(key, Ok(vec![want(owner, 300, rtype, data)]))
    }

    /// A transaction of one row that wants one record (TTL 300).
    fn one(key: &str, owner: &str, rtype: &str, data: &str) -> Vec<RowUpdate> {
        vec![row(key, owner, rtype, data)]
    }

    /// A row that now wants no record.
    fn gone(key: &str) -> RowUpdate {
        update(key, Ok(vec![]))
    }

    /// Runs batches (each a list of transactions) through the planner and a
    /// store; returns the groups of every segment and the rejections.
    fn run(
        store: &mut MemStore,
        limits: &PlanLimits,
        txns: Vec<Vec<RowUpdate>>,
    ) -> (Vec<OwnerGroup>, Vec<Rejection>) {
        let zones = zones();
        let all: Vec<RowUpdate> = txns.iter().flatten().cloned().collect();
        let mut planner = Planner::new(&zones, limits, store.load(&all));
        let mut groups = Vec::new();
        for txn in txns {
            for u in txn {
                planner.apply(SourceId(0), u);
            }
            for z in planner.end_segment() {
                groups.extend(z.groups);
            }
        }
        assert_eq!(planner.inconsistencies(), 0);
        let outcome = planner.finish();
        store.commit(&outcome);
        (groups, outcome.rejections)
    }

    /// Each rejection as `key owner: reason`.
    fn reasons(rejected: &[Rejection]) -> Vec<String> {
        rejected
            .iter()
            .map(|r| {
                let owner = r.owner.as_ref().map_or("-".to_owned(), |o| o.to_string());
                format!("{} {owner}: {}", r.key.0, r.reason)
            })
            .collect()
    }

    /// The rejections are exactly `expect`, in order, each
    /// (`key owner`, the start of its reason).
    fn assert_refused(rejected: &[Rejection], expect: &[(&str, &str)]) {
        let why = reasons(rejected);
        assert_eq!(why.len(), expect.len(), "{why:#?}");
        for ((key, start), got) in expect.iter().zip(&why) {
            assert!(got.starts_with(&format!("{key}: {start}")), "{got}");
        }
    }

    /// Runs `txns` (see [`run`]) and asserts the operations sent and the
    /// rejections (see [`assert_refused`]); returns the rejections.
    fn assert_planned(
        store: &mut MemStore,
        limits: &PlanLimits,
        txns: Vec<Vec<RowUpdate>>,
        ops: &[&str],
        refused: &[(&str, &str)],
    ) -> Vec<Rejection> {
        let (g, rejected) = run(store, limits, txns);
        assert_eq!(ops_text(&g), ops);
        assert_refused(&rejected, refused);
        rejected
    }

    fn ops_text(groups: &[OwnerGroup]) -> Vec<String> {
        groups
            .iter()
            .flat_map(|g| &g.ops)
            .map(|op| match op {
                UpdateOp::Add(r) => format!("add {r}"),
                UpdateOp::Delete(r) => format!("del {} {} {}", r.owner, r.rtype, r.rdata_text()),
                UpdateOp::DeleteRrset { owner, rtype } => format!("delset {owner} {rtype}"),
            })
            .collect()
    }

    #[test]
    fn a_row_at_an_excluded_name_is_refused_with_the_rule_named() {
        let mut store = MemStore::default();
        let mut l = limits(65_535, 100);
        l.exclusions = vec![crate::exclude::Exclusions::parse(
            &ZoneName::parse("example.test.").unwrap(),
            &["_acme-challenge.*".to_string()],
            &[],
        )
        .unwrap()];
        let (g, rejected) = run(
            &mut store,
            &l,
            vec![vec![
                update(
                    "1",
                    Ok(vec![want(
                        "_acme-challenge.www.example.test.",
                        60,
                        "CNAME",
                        "x.acme.test.",
                    )]),
                ),
                update(
                    "2",
                    Ok(vec![want("www.example.test.", 300, "A", "192.0.2.1")]),
                ),
            ]],
        );
        assert_eq!(
            ops_text(&g),
            vec!["add www.example.test. 300 IN A 192.0.2.1"]
        );
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].key, RowKey("1".into()));
        assert!(
            pg2dns_error(&rejected[0]).contains("exclude_names \"_acme-challenge.*\""),
            "{rejected:?}"
        );
    }

    fn pg2dns_error(r: &Rejection) -> String {
        crate::error_chain(&r.reason)
    }

    #[test]
    fn a_record_leaves_dns_only_when_its_last_producer_goes() {
        let mut store = MemStore::default();
        let l = limits(65_535, 100);
        let a = || want("h.example.test.", 300, "A", "192.0.2.1");
        let (g, _) = run(
            &mut store,
            &l,
            vec![vec![update("1", Ok(vec![a()])), update("2", Ok(vec![a()]))]],
        );
        assert_eq!(ops_text(&g), ["add h.example.test. 300 IN A 192.0.2.1"]);
        let (g, _) = run(&mut store, &l, vec![vec![update("1", Ok(vec![]))]]);
        assert!(g.is_empty(), "{:?}", ops_text(&g));
        let (g, _) = run(&mut store, &l, vec![vec![update("2", Ok(vec![]))]]);
        assert_eq!(ops_text(&g), ["del h.example.test. A 192.0.2.1"]);
        assert!(store.rows.is_empty());
    }

    #[test]
    fn an_rrset_keeps_the_smallest_ttl_of_its_producers() {
        let mut store = MemStore::default();
        let l = limits(65_535, 100);
        run(
            &mut store,
            &l,
            vec![vec![
                update(
                    "1",
                    Ok(vec![want("h.example.test.", 600, "A", "192.0.2.1")]),
                ),
                update(
                    "2",
                    Ok(vec![want("h.example.test.", 300, "A", "192.0.2.1")]),
                ),
            ]],
        );
        let (g, _) = run(&mut store, &l, vec![vec![update("2", Ok(vec![]))]]);
        assert_eq!(
            ops_text(&g),
            [
                "del h.example.test. A 192.0.2.1",
                "add h.example.test. 600 IN A 192.0.2.1"
            ]
        );
    }

    #[test]
    fn a_refused_change_still_removes_the_old_record_and_names_the_row() {
        let mut store = MemStore::default();
        let l = limits(65_535, 100);
        run(
            &mut store,
            &l,
            vec![vec![update(
                "42",
                Ok(vec![want("t.example.test.", 300, "TXT", "\"v1\"")]),
            )]],
        );
        let (g, rejected) = run(
            &mut store,
            &l,
            vec![vec![update("42", Err(Refusal::NotText("rdata".into())))]],
        );
        assert_eq!(ops_text(&g), ["del t.example.test. TXT \"v1\""]);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].key, RowKey("42".into()));
        assert_eq!(
            rejected[0].owner,
            Some(Owner::parse("t.example.test.").unwrap())
        );
        assert!(store.rows.is_empty());
    }

    #[test]
    fn an_owner_group_larger_than_one_message_is_refused_before_anything_is_written() {
        let mut store = MemStore::default();
        let l = limits(1_000, 100);
        let txt = |i: usize| {
            want(
                "big.example.test.",
                300,
                "TXT",
                &format!("\"{i:03}{}\"", "x".repeat(200)),
            )
        };
        run(
            &mut store,
            &l,
            vec![vec![update(
                "old",
                Ok(vec![want("big.example.test.", 300, "A", "192.0.2.9")]),
            )]],
        );
        let (g, rejected) = run(
            &mut store,
            &l,
            vec![vec![
                update("old", Ok(vec![])),
                update("1", Ok(vec![txt(1)])),
                update("2", Ok(vec![txt(2)])),
                update("3", Ok(vec![txt(3)])),
                update("4", Ok(vec![txt(4)])),
                update("5", Ok(vec![txt(5)])),
            ]],
        );
        assert_eq!(ops_text(&g), ["del big.example.test. A 192.0.2.9"]);
        let keys: Vec<&str> = rejected.iter().map(|r| r.key.0.as_str()).collect();
        assert_eq!(keys, ["1", "2", "3", "4", "5"]);
        assert!(matches!(
            rejected[0].reason,
            Refusal::OwnerGroupTooLarge { .. }
        ));
        assert!(store.rows.is_empty(), "nothing recorded as sent");
    }

    #[test]
    fn apex_ns_records_are_refused_unless_the_source_manages_them() {
        let apex_ns = |key: &str, target: &str| {
            update(key, Ok(vec![want("example.test.", 300, "NS", target)]))
        };
        let delegation = update(
            "3",
            Ok(vec![want("sub.example.test.", 300, "NS", "ns.other.test.")]),
        );
        let mut store = MemStore::default();
        let refusing = limits(65_535, 100);
        let (groups, rejections) = run(
            &mut store,
            &refusing,
            vec![vec![apex_ns("1", "ns1.other.test."), delegation]],
        );
        assert_eq!(
            ops_text(&groups),
            vec!["add sub.example.test. 300 IN NS ns.other.test."]
        );
        assert_eq!(rejections.len(), 1);
        assert_eq!(rejections[0].key, RowKey("1".into()));
        assert!(matches!(rejections[0].reason, Refusal::ApexNs { .. }));
        let managing = PlanLimits {
            apex_ns_sources: vec![true],
            ..refusing
        };
        let (groups, rejections) = run(
            &mut store,
            &managing,
            vec![vec![apex_ns("2", "ns2.other.test.")]],
        );
        assert!(rejections.is_empty(), "{rejections:?}");
        assert_eq!(
            ops_text(&groups),
            vec!["add example.test. 300 IN NS ns2.other.test."]
        );
    }

    #[test]
    fn a_truncate_removes_every_row_of_its_source_including_rows_of_the_same_batch() {
        let mut store = MemStore::default();
        let l = limits(65_535, 100);
        run(
            &mut store,
            &l,
            vec![vec![
                update(
                    "1",
                    Ok(vec![want("a.example.test.", 300, "A", "192.0.2.1")]),
                ),
                update(
                    "2",
                    Ok(vec![want("b.example.test.", 300, "A", "192.0.2.2")]),
                ),
            ]],
        );
        let zones = zones();
        let added = update(
            "3",
            Ok(vec![want("c.example.test.", 300, "A", "192.0.2.3")]),
        );
        // The store loads every row of the truncated source.
        let mut loaded = store.load(&[
            update("1", Ok(Vec::new())),
            update("2", Ok(Vec::new())),
            added.clone(),
        ]);
        loaded.nodes.retain(|_, v| !v.is_empty());
        let mut planner = Planner::new(&zones, &l, loaded);
        planner.apply(SourceId(0), added);
        planner.truncate(SourceId(0), Lsn::new(0x200));
        let ops = planner.end_segment();
        let groups: Vec<OwnerGroup> = ops.into_iter().flat_map(|z| z.groups).collect();
        assert_eq!(
            ops_text(&groups),
            vec![
                "del a.example.test. A 192.0.2.1",
                "del b.example.test. A 192.0.2.2",
            ]
        );
        let outcome = planner.finish();
        store.commit(&outcome);
        assert!(store.rows.is_empty());
    }

    #[test]
    fn a_cname_at_the_apex_is_refused_and_claims_nothing() {
        let mut store = MemStore::default();
        let l = limits(65_535, 100);
        let (g, rejected) = run(
            &mut store,
            &l,
            vec![vec![update(
                "apex",
                Ok(vec![want("example.test.", 300, "CNAME", "other.test.")]),
            )]],
        );
        assert!(g.iter().all(|g| g.ops.is_empty()), "{g:?}");
        assert_eq!(rejected.len(), 1);
        assert!(
            matches!(&rejected[0].reason, Refusal::CnameAtApex { owner } if owner.to_string() == "example.test."),
            "{:?}",
            rejected[0].reason
        );
        assert!(rejected[0]
            .reason
            .to_string()
            .contains("holds the zone's SOA and NS"));
        assert!(store.rows.values().all(Vec::is_empty));
        // Other data at the apex is published.
        let (g, rejected) = run(
            &mut store,
            &l,
            vec![vec![update(
                "mx",
                Ok(vec![want(
                    "example.test.",
                    300,
                    "MX",
                    "10 mail.example.test.",
                )]),
            )]],
        );
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(ops_text(&g).len(), 1);
    }

    #[test]
    fn a_cname_beside_data_held_outside_pg2dns_is_refused_and_so_is_data_beside_a_held_cname() {
        let mut store = MemStore::default();
        let mut l = limits(65_535, 100);
        let acme = Owner::parse("_acme-challenge.www.example.test.").unwrap();
        let legacy = Owner::parse("legacy.example.test.").unwrap();
        l.held.insert(ZoneId(0), acme, RType::TXT);
        l.held.insert(ZoneId(0), legacy, RType::CNAME);
        let (g, rejected) = run(
            &mut store,
            &l,
            vec![vec![
                update(
                    "c",
                    Ok(vec![want(
                        "_acme-challenge.www.example.test.",
                        300,
                        "CNAME",
                        "x.example.test.",
                    )]),
                ),
                update(
                    "a",
                    Ok(vec![want("legacy.example.test.", 300, "A", "192.0.2.1")]),
                ),
                update(
                    "ok",
                    Ok(vec![want("www.example.test.", 300, "A", "192.0.2.2")]),
                ),
            ]],
        );
        assert_eq!(
            ops_text(&g),
            vec!["add www.example.test. 300 IN A 192.0.2.2"]
        );
        let mut reasons: Vec<String> = rejected
            .iter()
            .map(|r| format!("{}: {}", r.key.0, r.reason))
            .collect();
        reasons.sort();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(
            reasons[0].starts_with(
                "a: legacy.example.test. holds CNAME in the zone, left to another tool"
            ),
            "{reasons:?}"
        );
        assert!(
            reasons[1].starts_with("c: _acme-challenge.www.example.test. holds TXT"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].contains("silently ignore this CNAME"),
            "{reasons:?}"
        );
    }

    /// What BIND, Knot and PowerDNS refuse, ignore or crash on around a
    /// DNAME and a DS (docs/notes/dns-servers.md §1.5), refused before
    /// sending; what all three take goes out.
    #[test]
    fn dname_and_ds_rules_refuse_what_servers_refuse_ignore_or_crash_on() {
        let mut store = MemStore::default();
        let l = limits(65_535, 100);
        assert_planned(
            &mut store,
            &l,
            vec![
                // Taken by all three: a DNAME beside other data.
                one("txt", "old.example.test.", "TXT", "\"kept\""),
                one("d1", "Old.Example.Test.", "DNAME", "new.example.org."),
                // A second DNAME: Knot 3.2.6 crashes on it.
                one("d2", "old.example.test.", "DNAME", "other.example.org."),
                // CNAME and DNAME at one name: BIND and Knot ignore one.
                one("c", "old.example.test.", "CNAME", "x.example.org."),
                // At the apex: BIND and Knot refuse a DNAME, BIND ignores a DS.
                one("apex", "example.test.", "DNAME", "example.org."),
                one("apexds", "example.test.", "DS", "1 13 99 ab"),
                // A DS without NS is no delegation; with NS it is published.
                one("ds", "nodeleg.example.test.", "DS", "1 13 99 ab"),
                vec![
                    row("ns", "sub.example.test.", "NS", "ns.example.org."),
                    row("subds", "sub.example.test.", "DS", "1 13 99 ab"),
                ],
            ],
            &[
                "add old.example.test. 300 IN TXT \"kept\"",
                "add old.example.test. 300 IN DNAME new.example.org.",
                "add sub.example.test. 300 IN NS ns.example.org.",
                "add sub.example.test. 300 IN DS 1 13 99 ab",
            ],
            &[
                (
                    "d2 old.example.test.",
                    "old.example.test. would have two DNAME records",
                ),
                (
                    "c old.example.test.",
                    "old.example.test. would have a CNAME and other data (TXT, DNAME)",
                ),
                (
                    "apex example.test.",
                    "a DNAME cannot be at the zone apex (example.test.)",
                ),
                (
                    "apexds example.test.",
                    "a DS record cannot be at the zone apex (example.test.)",
                ),
                (
                    "ds nodeleg.example.test.",
                    "nodeleg.example.test. has no NS records among the rows",
                ),
            ],
        );
        // Replacing the DNAME (delete and add in one group) is no second one.
        assert_planned(
            &mut store,
            &l,
            vec![one(
                "d1",
                "old.example.test.",
                "DNAME",
                "newer.example.org.",
            )],
            &[
                "del old.example.test. DNAME new.example.org.",
                "add old.example.test. 300 IN DNAME newer.example.org.",
            ],
            &[],
        );
    }

    /// A planner fed owner by owner (reconcile's bounded pass) learns the
    /// DNAME rule's facts about owners it does not hold from its oracle,
    /// and refuses as the stream does, naming the same names.
    #[test]
    fn a_planner_fed_owner_by_owner_refuses_by_the_dname_facts_it_is_told() {
        let zones = zones();
        let l = limits(65_535, 100);
        let key = |o: &str| (ZoneId(0), Owner::parse(o).unwrap());
        let dname_at = key("Old.Example.Test.");
        let occupied = key("sub.example.test.");
        let below = Owner::parse("host.SUB.example.test.").unwrap();
        let told = below.clone();
        let mut planner = Planner::new(&zones, &l, Loaded::default())
            .forgetting_rows()
            .with_dnames(DnameOracle {
                is_dname: Box::new(move |t| *t == dname_at),
                occupied_below: Box::new(move |t| (*t == occupied).then(|| told.clone())),
            });
        let feed = |p: &mut Planner, k: &str, owner: &str, rtype: &str, data: &str| {
            let before = p.rejections().len();
            p.apply(SourceId(0), row(k, owner, rtype, data));
            p.end_segment();
            let published = p.take_published().remove(&ZoneId(0)).unwrap_or_default();
            (published, p.rejections()[before..].to_vec())
        };
        // One and two labels below the told DNAME: refused, naming it.
        for (k, owner) in [
            ("x", "x.old.example.test."),
            ("y", "Mail.Deep.OLD.example.test."),
        ] {
            let (published, refused) = feed(&mut planner, k, owner, "TXT", "\"grüße\"");
            assert!(published.is_empty(), "{published:?}");
            assert_eq!(refused.len(), 1, "{refused:?}");
            assert_eq!(
                refused[0].reason,
                Refusal::BelowDname {
                    owner: Owner::parse(owner).unwrap(),
                    dname: Owner::parse("old.example.test.").unwrap(),
                }
            );
        }
        // Beside the DNAME, and a name elsewhere: published.
        for owner in ["old.example.test.", "x.other.example.test."] {
            let (published, refused) = feed(&mut planner, "t", owner, "TXT", "\"beside\"");
            assert!(refused.is_empty(), "{refused:?}");
            assert_eq!(published.len(), 1);
        }
        // A DNAME above a name the oracle says holds records: refused,
        // naming that name; a DNAME above nothing: published.
        let (published, refused) = feed(
            &mut planner,
            "s",
            "sub.example.test.",
            "DNAME",
            "elsewhere.example.org.",
        );
        assert!(published.is_empty(), "{published:?}");
        assert_eq!(
            refused.iter().map(|r| r.reason.clone()).collect::<Vec<_>>(),
            [Refusal::DnameAboveNames {
                owner: Owner::parse("sub.example.test.").unwrap(),
                below,
            }]
        );
        let (published, refused) = feed(
            &mut planner,
            "n",
            "free.example.test.",
            "DNAME",
            "n.example.org.",
        );
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(published.len(), 1);
    }

    /// Nothing below a DNAME (docs/notes/dns-servers.md §3c: BIND and
    /// PowerDNS keep it unanswered, Knot refuses it), in both orders and
    /// across batches; a transaction that deletes one side lets the other
    /// through.
    #[test]
    fn names_below_a_dname_and_a_dname_above_names_are_refused_naming_the_dname() {
        let mut store = MemStore::default();
        let l = limits(65_535, 100);
        // The DNAME first, in a batch of its own, and a name below.
        let (g, rejected) = run(
            &mut store,
            &l,
            vec![
                one("d", "Old.Example.Test.", "DNAME", "new.example.org."),
                one("a", "a.sub.example.test.", "A", "192.0.2.1"),
            ],
        );
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(g.len(), 2);
        // Later batches: records below the DNAME (one and two labels down)
        // are refused, a record beside it is published; a DNAME above a
        // name with records is refused; in one transaction a new DNAME and
        // a new name below it: the DNAME is refused.
        let rejected = assert_planned(
            &mut store,
            &l,
            vec![
                one("x", "x.old.example.test.", "A", "192.0.2.7"),
                one("y", "Y.Z.old.example.test.", "TXT", "\"grüße\""),
                one("t", "old.example.test.", "TXT", "\"beside\""),
                one("s", "sub.example.test.", "DNAME", "elsewhere.example.org."),
                vec![
                    row("n", "n.example.test.", "DNAME", "n.example.org."),
                    row("h", "h.n.example.test.", "AAAA", "2001:db8::1"),
                ],
            ],
            &[
                "add old.example.test. 300 IN TXT \"beside\"",
                "add h.n.example.test. 300 IN AAAA 2001:db8::1",
            ],
            &[
                (
                    "x x.old.example.test.",
                    "x.old.example.test. is below the DNAME at old.example.test.",
                ),
                (
                    "y y.z.old.example.test.",
                    "y.z.old.example.test. is below the DNAME at old.example.test.",
                ),
                (
                    "s sub.example.test.",
                    "a DNAME at sub.example.test. would redirect the names below it, and a.sub.example.test. holds records",
                ),
                (
                    "n n.example.test.",
                    "a DNAME at n.example.test. would redirect the names below it, and h.n.example.test. holds records",
                ),
            ],
        );
        assert!(matches!(rejected[0].reason, Refusal::BelowDname { .. }));
        assert!(matches!(
            rejected[2].reason,
            Refusal::DnameAboveNames { .. }
        ));
        // Deleting the name below and adding the DNAME in one transaction,
        // and deleting a DNAME and adding a name below it in another: both
        // go out.
        assert_planned(
            &mut store,
            &l,
            vec![
                vec![
                    gone("a"),
                    row("s", "sub.example.test.", "DNAME", "elsewhere.example.org."),
                ],
                vec![gone("d"), row("x", "x.old.example.test.", "A", "192.0.2.7")],
            ],
            &[
                "del a.sub.example.test. A 192.0.2.1",
                "add sub.example.test. 300 IN DNAME elsewhere.example.org.",
                "del old.example.test. DNAME new.example.org.",
                "add x.old.example.test. 300 IN A 192.0.2.7",
            ],
            &[],
        );
        // Another tool's DNAME, and another tool's name below a row's DNAME.
        let mut l = limits(65_535, 100);
        l.held.insert(
            ZoneId(0),
            Owner::parse("legacy.example.test.").unwrap(),
            RType::DNAME,
        );
        l.held.insert(
            ZoneId(0),
            Owner::parse("_acme-challenge.t.example.test.").unwrap(),
            RType::TXT,
        );
        let (g, rejected) = run(
            &mut store,
            &l,
            vec![
                one("w", "w.legacy.example.test.", "A", "192.0.2.9"),
                one("td", "t.example.test.", "DNAME", "t.example.org."),
            ],
        );
        assert!(ops_text(&g).is_empty(), "{g:?}");
        let why = reasons(&rejected);
        assert_eq!(why.len(), 2, "{why:#?}");
        assert!(
            why[0].contains("is below the DNAME at legacy.example.test."),
            "{why:#?}"
        );
        assert!(
            why[1].contains("and _acme-challenge.t.example.test. holds records"),
            "{why:#?}"
        );
    }

    #[test]
    fn a_cname_beside_other_data_and_a_second_cname_are_refused() {
        let mut store = MemStore::default();
        let l = limits(65_535, 100);
        let (g, rejected) = run(
            &mut store,
            &l,
            vec![
                vec![update(
                    "a",
                    Ok(vec![want("w.example.test.", 300, "A", "192.0.2.1")]),
                )],
                vec![update(
                    "c",
                    Ok(vec![want(
                        "w.example.test.",
                        300,
                        "CNAME",
                        "x.example.test.",
                    )]),
                )],
                vec![update(
                    "c1",
                    Ok(vec![want(
                        "v.example.test.",
                        300,
                        "CNAME",
                        "x.example.test.",
                    )]),
                )],
                vec![update(
                    "c2",
                    Ok(vec![want(
                        "v.example.test.",
                        300,
                        "CNAME",
                        "y.example.test.",
                    )]),
                )],
            ],
        );
        assert_eq!(
            ops_text(&g),
            [
                "add w.example.test. 300 IN A 192.0.2.1",
                "add v.example.test. 300 IN CNAME x.example.test."
            ]
        );
        let why: Vec<(&str, bool)> = rejected
            .iter()
            .map(|r| {
                (
                    r.key.0.as_str(),
                    matches!(r.reason, Refusal::CnameAndOtherData { .. }),
                )
            })
            .collect();
        assert_eq!(why, [("c", true), ("c2", false)]);
        // Replacing the data by a CNAME in one transaction is fine.
        let (g, rejected) = run(
            &mut store,
            &l,
            vec![vec![
                update(
                    "c",
                    Ok(vec![want(
                        "w.example.test.",
                        300,
                        "CNAME",
                        "x.example.test.",
                    )]),
                ),
                update("a", Ok(vec![])),
            ]],
        );
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(
            ops_text(&g),
            [
                "del w.example.test. A 192.0.2.1",
                "add w.example.test. 300 IN CNAME x.example.test."
            ]
        );
    }

    #[test]
    fn an_mx_pointing_at_an_alias_is_refused() {
        let mut store = MemStore::default();
        let l = limits(65_535, 100);
        let (g, rejected) = run(
            &mut store,
            &l,
            vec![
                vec![update(
                    "c",
                    Ok(vec![want(
                        "mail.example.test.",
                        300,
                        "CNAME",
                        "real.example.test.",
                    )]),
                )],
                vec![update(
                    "mx",
                    Ok(vec![want(
                        "example.test.",
                        300,
                        "MX",
                        "10 mail.example.test.",
                    )]),
                )],
                vec![update(
                    "mx2",
                    Ok(vec![want(
                        "example.test.",
                        300,
                        "MX",
                        "20 real.example.test.",
                    )]),
                )],
            ],
        );
        assert_eq!(
            ops_text(&g),
            [
                "add mail.example.test. 300 IN CNAME real.example.test.",
                "add example.test. 300 IN MX 20 real.example.test."
            ]
        );
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].key, RowKey("mx".into()));
        assert!(matches!(rejected[0].reason, Refusal::TargetIsAlias { .. }));
    }

    #[test]
    fn an_rrset_past_the_limit_refuses_the_row_that_would_pass_it() {
        let mut store = MemStore::default();
        let l = limits(65_535, 2);
        let (g, rejected) = run(
            &mut store,
            &l,
            vec![vec![
                update(
                    "1",
                    Ok(vec![want("r.example.test.", 300, "A", "192.0.2.1")]),
                ),
                update(
                    "2",
                    Ok(vec![want("r.example.test.", 300, "A", "192.0.2.2")]),
                ),
                update(
                    "3",
                    Ok(vec![want("r.example.test.", 300, "A", "192.0.2.3")]),
                ),
            ]],
        );
        assert_eq!(g[0].ops.len(), 2);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].key, RowKey("3".into()));
    }

    #[test]
    fn an_rrset_too_large_for_any_answer_refuses_the_row_that_would_make_it_so() {
        let mut store = MemStore::default();
        let l = limits(65_535, 100);
        // About 40 kB each: either fits a message alone, both do not.
        let txt = |c: char| vec![format!("\"{}\"", c.to_string().repeat(255)); 157].join(" ");
        let (_, rejected) = run(
            &mut store,
            &l,
            vec![
                vec![update(
                    "1",
                    Ok(vec![want("t.example.test.", 300, "TXT", &txt('a'))]),
                )],
                vec![update(
                    "2",
                    Ok(vec![want("t.example.test.", 300, "TXT", &txt('b'))]),
                )],
            ],
        );
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(rejected[0].key, RowKey("2".into()));
        assert!(
            matches!(rejected[0].reason, Refusal::RrsetTooLarge { bytes, limit: 65_535, .. } if bytes > 80_000),
            "{:?}",
            rejected[0].reason
        );
    }

    #[test]
    fn a_zone_with_one_ptr_publishes_the_smallest_target_and_the_next_when_it_goes() {
        let mut store = MemStore::default();
        let mut l = limits(65_535, 100);
        l.one_ptr = vec![true];
        let ptr = |key: &str, target: &str| {
            update(key, Ok(vec![want("5.example.test.", 300, "PTR", target)]))
        };
        let (g, _) = run(&mut store, &l, vec![vec![ptr("1", "zz.example.test.")]]);
        assert_eq!(
            ops_text(&g),
            ["add 5.example.test. 300 IN PTR zz.example.test."]
        );
        // A second name for the same address: only one PTR, the smaller.
        let (g, _) = run(&mut store, &l, vec![vec![ptr("2", "aa.example.test.")]]);
        assert_eq!(
            ops_text(&g),
            [
                "del 5.example.test. PTR zz.example.test.",
                "add 5.example.test. 300 IN PTR aa.example.test."
            ]
        );
        // The same rows in the other order publish the same PTR.
        let mut other = MemStore::default();
        run(&mut other, &l, vec![vec![ptr("2", "aa.example.test.")]]);
        let (g, _) = run(&mut other, &l, vec![vec![ptr("1", "zz.example.test.")]]);
        assert!(ops_text(&g).is_empty(), "{:?}", ops_text(&g));
        // The published one goes: the other takes its place.
        let (g, _) = run(&mut store, &l, vec![vec![update("2", Ok(vec![]))]]);
        assert_eq!(
            ops_text(&g),
            [
                "del 5.example.test. PTR aa.example.test.",
                "add 5.example.test. 300 IN PTR zz.example.test."
            ]
        );
        // Without one_ptr both names are published.
        let mut both = MemStore::default();
        let l = limits(65_535, 100);
        let (g, _) = run(
            &mut both,
            &l,
            vec![vec![
                ptr("1", "zz.example.test."),
                ptr("2", "aa.example.test."),
            ]],
        );
        assert_eq!(ops_text(&g).len(), 2);
    }

    #[test]
    fn toast_takes_the_data_from_the_row_state_or_is_refused() {
        let mut store = MemStore::default();
        let l = limits(65_535, 100);
        let partial = || Wanted::FromState {
            zone: ZoneId(0),
            owner: Owner::parse("n.example.test.").unwrap(),
            rtype: RType::TXT,
            ttl: 60,
        };
        let (_, rejected) = run(&mut store, &l, vec![vec![update("9", Ok(vec![partial()]))]]);
        assert!(matches!(
            rejected[0].reason,
            Refusal::ToastWithoutState { .. }
        ));
        run(
            &mut store,
            &l,
            vec![vec![update(
                "9",
                Ok(vec![want("t.example.test.", 300, "TXT", "\"long\"")]),
            )]],
        );
        let (g, rejected) = run(&mut store, &l, vec![vec![update("9", Ok(vec![partial()]))]]);
        assert!(rejected.is_empty());
        assert_eq!(
            ops_text(&g),
            [
                "del t.example.test. TXT \"long\"",
                "add n.example.test. 60 IN TXT \"long\""
            ]
        );
    }

    #[test]
    fn a_row_waiting_for_its_targets_address_is_published_right_after_the_address() {
        let zones = zones();
        let l = limits(65_535, 100);
        let mx = Desired {
            zone: ZoneId(0),
            record: Record::parse("example.test.", 300, "MX", "10 mail.example.test.").unwrap(),
        };
        let waiting = |key: &str| Waiting {
            row: (SourceId(0), RowKey(key.into())),
            lsn: Lsn::new(0x50),
            records: vec![mx.clone()],
            target: (ZoneId(0), Owner::parse("mail.example.test.").unwrap()),
        };
        // The A arrives: the MX follows in the same segment, after it.
        let mut planner = Planner::new(&zones, &l, Loaded::default());
        planner.add_waiting(vec![waiting("mx")]);
        planner.apply(
            SourceId(0),
            update(
                "a",
                Ok(vec![want("mail.example.test.", 300, "A", "192.0.2.25")]),
            ),
        );
        let ops: Vec<OwnerGroup> = planner
            .end_segment()
            .into_iter()
            .flat_map(|z| z.groups)
            .collect();
        assert_eq!(
            ops_text(&ops),
            [
                "add mail.example.test. 300 IN A 192.0.2.25",
                "add example.test. 300 IN MX 10 mail.example.test."
            ]
        );
        let outcome = planner.finish();
        assert_eq!(outcome.promoted, [(SourceId(0), RowKey("mx".into()))]);
        assert_eq!(outcome.rows.len(), 2);
        // A row changed in the same batch no longer waits.
        let mut planner = Planner::new(&zones, &l, Loaded::default());
        planner.add_waiting(vec![waiting("mx")]);
        planner.apply(SourceId(0), update("mx", Ok(vec![])));
        planner.apply(
            SourceId(0),
            update(
                "a",
                Ok(vec![want("mail.example.test.", 300, "A", "192.0.2.25")]),
            ),
        );
        let ops: Vec<OwnerGroup> = planner
            .end_segment()
            .into_iter()
            .flat_map(|z| z.groups)
            .collect();
        assert_eq!(
            ops_text(&ops),
            ["add mail.example.test. 300 IN A 192.0.2.25"]
        );
    }

    /// A random workload step: (row, owner, type/data choice, ttl), or a
    /// delete when `data` is None.
    type Step = (u8, u8, Option<u8>, u16);

    fn step_update(&(row, owner, data, ttl): &Step) -> RowUpdate {
        let image = match data {
            None => Ok(vec![]),
            Some(d) => {
                // Half the names are below another: a DNAME there may
                // redirect them.
                let owner = match owner % 8 {
                    o @ 0..=3 => format!("o{o}.example.test."),
                    o => format!("x.o{}.example.test.", o % 4),
                };
                let w = match d % 7 {
                    6 => want(&owner, 300, "DNAME", &format!("t{}.example.org.", d % 2)),
                    0..=2 => want(
                        &owner,
                        u32::from(ttl % 3) * 100,
                        "A",
                        &format!("192.0.2.{}", d % 5),
                    ),
                    3 => want(&owner, 300, "CNAME", &format!("t{}.example.test.", d % 2)),
                    4 => want(
                        &owner,
                        300,
                        "TXT",
                        &format!("\"{}\"", "z".repeat(usize::from(d % 80) * 3)),
                    ),
                    _ => {
                        return RowUpdate {
                            key: RowKey(format!("r{}", row % 8)),
                            lsn: Lsn::new(1),
                            image: Err(Refusal::NotText("rdata".into()).into()),
                        }
                    }
                };
                Ok(vec![w])
            }
        };
        RowUpdate {
            key: RowKey(format!("r{}", row % 8)),
            lsn: Lsn::new(1),
            image,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// DNS, fed the planned operations, always equals what the row state
        /// says was published; replaying a batch that was not committed (a
        /// crash) converges to the same zone; refcounts never go wrong; and
        /// every group fits one message.
        #[test]
        fn dns_follows_the_row_state_and_replay_is_idempotent(
            batches in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::collection::vec((any::<u8>(), any::<u8>(), proptest::option::of(any::<u8>()), any::<u16>()), 1..6),
                    1..4),
                1..6),
            crash_after in proptest::collection::vec(any::<bool>(), 6),
            max in prop_oneof![Just(65_535usize), 400..1_200usize],
            rrset_limit in 1..4usize,
        ) {
            let l = limits(max, rrset_limit);
            let zones = zones();
            let mut store = MemStore::default();
            let mut dns = Dns::new();
            for (i, batch) in batches.iter().enumerate() {
                let txns: Vec<Vec<RowUpdate>> = batch.iter().map(|t| t.iter().map(step_update).collect()).collect();
                if crash_after[i % crash_after.len()] {
                    // Sent, then a crash before the state commit: the next
                    // run replays the same batch from the same state.
                    let before = store.clone();
                    let (g, _) = run(&mut store, &l, txns.clone());
                    apply_ops(&mut dns, &g);
                    store = before;
                }
                let (g, _) = run(&mut store, &l, txns);
                for group in &g {
                    prop_assert!(l.budgets[0].fits_alone(zones.name(ZoneId(0)), group));
                }
                apply_ops(&mut dns, &g);
                prop_assert_eq!(&dns, &store.expected());
                // Reconcile's desired side from the row state is that zone.
                let desired = publish(store.rows.values().flatten().cloned(), &l.one_ptr);
                prop_assert_eq!(&as_dns(desired.get(&ZoneId(0)).map_or(&[][..], Vec::as_slice)), &dns);
                for ((owner, rtype), (_, set)) in &dns {
                    prop_assert!(set.len() <= rrset_limit, "{} {} has {}", owner, rtype, set.len());
                    if *rtype == RType::CNAME {
                        prop_assert_eq!(set.len(), 1);
                        prop_assert!(!dns.keys().any(|(o, t)| o == owner && *t != RType::CNAME));
                    }
                    if *rtype == RType::DNAME {
                        prop_assert_eq!(set.len(), 1);
                        prop_assert!(
                            !dns.keys().any(|(o, _)| o != owner && o.name().is_at_or_below(owner.name())),
                            "a name below the DNAME at {}", owner
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_source_past_the_limit_is_refused_never_wrapped() {
        assert_eq!(SourceId::new(0), Ok(SourceId(0)));
        let last = SourceId::new(MAX_SOURCES - 1).unwrap();
        assert_eq!(last.index(), 65_535);
        // The 65,537th source: with `as u16` it became source 0.
        let err = SourceId::new(MAX_SOURCES).unwrap_err();
        assert_eq!(
            err,
            SourcesError::TooMany {
                count: 65_537,
                limit: 65_536
            }
        );
        assert_eq!(
            err.to_string(),
            "65537 sources are configured (pg2dns.rr, the [[source]] tables and the zones tables they reference), more than the 65536 pg2dns can tell apart"
        );
        assert!(SourceId::new(usize::MAX).is_err());
        assert_eq!(SourceId::check_count(MAX_SOURCES), Ok(()));
        assert_eq!(
            SourceId::check_count(MAX_SOURCES + 1),
            Err(SourcesError::TooMany {
                count: 65_537,
                limit: 65_536
            })
        );
    }
}
