//! The batch comparison: the records the database wants in a zone against
//! the records a zone transfer returned, and the UPDATEs that repair the
//! difference.
//!
//! # What pg2dns owns
//!
//! A zone holds records pg2dns never publishes, and a comparison that
//! reported them would tell the operator to delete the zone's SOA or its
//! signatures. Like nsdiff, pg2dns compares only what it owns
//! ([`is_owned`]): never the apex SOA (it is not a type pg2dns publishes),
//! never DNSSEC records ([`RType::is_dnssec`]: the signer's business), never
//! a type pg2dns does not publish, and the apex NS RRset only when the
//! database lists apex NS records (most databases leave it to the zone
//! file). Names compare without case ("comparisons on name lookup for DNS
//! queries should be case insensitive", RFC 4343 §3): both sides hold
//! lower-cased wire names, and record data in the canonical wire form
//! [`crate::rdata::parse`] produces.
//!
//! The addresses of the zone's own name servers (A and AAAA at the target of
//! an apex NS record) go with the apex NS: owned only when the database
//! lists an address at that name. BIND refuses an update that leaves an
//! in-zone name server without an address ("post update name server sanity
//! check failed"), and a first load must not try to remove the zone file's
//! name server addresses because the database never heard of them.
//!
//! Names and types the zone's configuration excludes
//! ([`crate::exclude::Exclusions`]) are not owned either: they count with
//! [`ZoneDiff::not_owned`].
//!
//! # Rows waiting for an address
//!
//! BIND refuses an MX or SRV whose target in the zone has no address record
//! (its check-integrity); the stream keeps such a row aside until the target
//! gets one ([`crate::plan::Waiting`]). The comparison agrees: a wanted MX or
//! SRV that DNS lacks, whose target in the zone has no address among the
//! wanted records, is listed in [`ZoneDiff::waiting`], not as missing, and
//! the repair does not add it.
//!
//! # The repair
//!
//! Per owner, deletes before adds ([`update::group_by_owner`]); a TTL difference is
//! the RR deleted and added again with the wanted TTL (Knot ignores the re-add
//! of an existing RR with a new TTL). Owner groups are packed under the
//! zone's [`Budget`] with [`Packer`], and each message is guarded by the
//! apex SOA the transfer saw, as nsdiff does: RFC 2136 §2.4.2, "a set of RRs
//! with a specific NAME and TYPE ... must exist ... and must match exactly
//! the RRset of the zone", otherwise the server answers NXRRSET and applies
//! nothing (§3.2.5). A concurrent change bumps the SOA serial, so a repair
//! computed from a stale transfer is never applied.

use std::collections::BTreeMap;

use crate::exclude::Exclusions;
use crate::rdata::RType;
use crate::records::{Owner, Rdata, Record, ZoneName};
use crate::update::{
    self, Budget, EncodeError, OwnerGroup, Packer, Prerequisite, PushError, UpdateOp,
};

/// Whether pg2dns owns `record` of `zone`: a type it publishes (so never the
/// SOA, never signatures or NSEC records), inside the zone, and at the apex
/// an NS record only when `apex_ns_owned` (the database lists apex NS
/// records). A DNSKEY, CDS or CDNSKEY ([`RType::is_shared_with_signer`]) is
/// owned when the database wants it; one DNS holds beside them is the
/// signer's, and [`diff_excluding`] never reports it as extra.
pub fn is_owned(zone: &ZoneName, record: &Record, apex_ns_owned: bool) -> bool {
    let rtype = record.rtype;
    if !rtype.is_supported()
        || (rtype.is_dnssec() && !rtype.is_shared_with_signer())
        || !zone.contains(&record.owner)
    {
        return false;
    }
    if rtype == RType::NS && record.owner.name() == zone.name() {
        return apex_ns_owned;
    }
    true
}

/// An RR both sides hold with different TTLs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TtlDifference {
    /// The record as the database wants it (its TTL is the wanted one).
    pub wanted: Record,
    /// The TTL DNS has.
    pub actual_ttl: u32,
}

/// The differences at one owner name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnerDiff {
    /// Records the database wants that DNS lacks.
    pub missing: Vec<Record>,
    /// Records DNS has that the database does not want.
    pub extra: Vec<Record>,
    /// Records with the wrong TTL.
    pub ttl: Vec<TtlDifference>,
}

impl OwnerDiff {
    /// Whether this owner has no difference.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.ttl.is_empty()
    }

    /// The repair of this owner: deletes (the extra records, the old TTL of
    /// each TTL difference) before adds (the new TTL, the missing records).
    pub fn repair_group(&self, owner: &Owner) -> OwnerGroup {
        let mut ops =
            Vec::with_capacity(self.extra.len() + 2 * self.ttl.len() + self.missing.len());
        ops.extend(self.extra.iter().cloned().map(UpdateOp::Delete));
        for t in &self.ttl {
            let mut old = t.wanted.clone();
            old.ttl = t.actual_ttl;
            ops.push(UpdateOp::Delete(old));
        }
        ops.extend(self.ttl.iter().map(|t| UpdateOp::Add(t.wanted.clone())));
        ops.extend(self.missing.iter().cloned().map(UpdateOp::Add));
        OwnerGroup {
            owner: owner.clone(),
            ops,
        }
    }
}

/// The comparison of one zone.
///
/// The counts are of every difference; [`ZoneDiff::owners`] may hold only
/// the first owners (a sample, [`OwnerMerge::with_sample`]): a comparison
/// of a million differences does not keep them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneDiff {
    /// The zone.
    pub zone: ZoneName,
    /// Owners with differences, in name order (wire order of the lower-cased
    /// names): all of them, or the first [`OwnerMerge::with_sample`] kept.
    pub owners: BTreeMap<Owner, OwnerDiff>,
    /// Owners with differences, all of them (sampled or not).
    pub owners_differing: usize,
    /// Records missing from DNS, all of them.
    pub missing_count: usize,
    /// Records DNS has that the database does not want, all of them.
    pub extra_count: usize,
    /// Records with the wrong TTL, all of them.
    pub ttl_count: usize,
    /// Records the database wants in the zone.
    pub desired: usize,
    /// Records of the zone pg2dns owns, as DNS has them.
    pub owned_actual: usize,
    /// Records of the zone pg2dns does not own (SOA, DNSSEC, other types,
    /// apex NS when the database has none, excluded names and types): never
    /// reported nor touched.
    pub not_owned: usize,
    /// Wanted MX and SRV records DNS lacks whose target in the zone has no
    /// wanted address record: not differences (the stream holds them back
    /// too), published once the target has an address.
    pub waiting: Vec<Record>,
}

/// Compares the records the database wants in `zone` with those DNS holds
/// (`actual`: a zone transfer, everything included). Records of `desired`
/// outside the zone are ignored; when two desired records are the same RR,
/// the smaller TTL counts.
pub fn diff(zone: &ZoneName, desired: &[Record], actual: &[Record]) -> ZoneDiff {
    diff_excluding(zone, desired, actual, &Exclusions::default())
}

/// [`diff`] for a zone whose configuration excludes names or types: records
/// they match, on either side, are not owned.
///
/// Both sides in memory; reconcile streams them instead through
/// [`OwnerMerge`], which this is written on (one implementation).
pub fn diff_excluding(
    zone: &ZoneName,
    desired: &[Record],
    actual: &[Record],
    excluded: &Exclusions,
) -> ZoneDiff {
    let mut facts = ZoneFacts::default();
    for r in desired {
        facts.desired(zone, r);
    }
    for r in actual {
        facts.actual(zone, r);
    }
    fn by_owner(records: &[Record]) -> Vec<&Record> {
        let mut refs: Vec<&Record> = records.iter().collect();
        refs.sort_by(|a, b| a.owner.cmp(&b.owner));
        refs
    }
    let (want, have) = (by_owner(desired), by_owner(actual));
    let mut merge = OwnerMerge::new(zone, facts, excluded);
    let (mut w, mut h) = (0, 0);
    let (mut wg, mut hg): (Vec<Record>, Vec<Record>) = (Vec::new(), Vec::new());
    while w < want.len() || h < have.len() {
        let owner = match (want.get(w), have.get(h)) {
            (Some(a), Some(b)) => std::cmp::min(&a.owner, &b.owner),
            (Some(a), None) => &a.owner,
            (None, Some(b)) => &b.owner,
            (None, None) => break,
        }
        .clone();
        wg.clear();
        hg.clear();
        while let Some(r) = want.get(w).filter(|r| r.owner == owner) {
            wg.push((*r).clone());
            w += 1;
        }
        while let Some(r) = have.get(h).filter(|r| r.owner == owner) {
            hg.push((*r).clone());
            h += 1;
        }
        merge.owner(&wg, &hg);
    }
    let addressed: std::collections::BTreeSet<Owner> = merge
        .waiting_targets()
        .into_iter()
        .filter(|t| {
            want.iter()
                .any(|r| &r.owner == t && merge.is_owned_address(r))
        })
        .collect();
    merge.finish(&addressed)
}

/// What the comparison of one owner needs to know of the others: whether
/// the database lists apex NS records, and the zone's name servers (the
/// targets of the apex NS records on either side). Both are at the apex,
/// a few records, noted while the sides are read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZoneFacts {
    /// The database wants apex NS records.
    pub apex_ns_owned: bool,
    /// The targets of the apex NS records, on either side.
    pub name_servers: std::collections::BTreeSet<Owner>,
}

impl ZoneFacts {
    fn apex_ns_target(zone: &ZoneName, r: &Record) -> Option<Owner> {
        (r.rtype == RType::NS && r.owner.name() == zone.name())
            .then(|| crate::rdata::target(r.rtype, r.rdata.as_wire()))
            .flatten()
            .map(Owner::from_name)
    }

    /// Notes a record of the desired side.
    pub fn desired(&mut self, zone: &ZoneName, r: &Record) {
        if r.rtype == RType::NS && r.owner.name() == zone.name() {
            self.apex_ns_owned = true;
        }
        if let Some(t) = Self::apex_ns_target(zone, r) {
            self.name_servers.insert(t);
        }
    }

    /// Notes a record of the transfer.
    pub fn actual(&mut self, zone: &ZoneName, r: &Record) {
        if let Some(t) = Self::apex_ns_target(zone, r) {
            self.name_servers.insert(t);
        }
    }
}

/// The comparison fed owner by owner, in any order of owners: each owner's
/// records on both sides are compared as [`diff_excluding`] compares them,
/// and only the differences are kept. A wanted MX or SRV that DNS lacks and
/// whose target in the zone may have no address is kept aside until
/// [`OwnerMerge::finish`] is told which of those targets the database gives
/// an address ([`OwnerMerge::waiting_targets`]).
#[derive(Debug)]
pub struct OwnerMerge<'a> {
    zone: &'a ZoneName,
    facts: ZoneFacts,
    excluded: &'a Exclusions,
    owners: BTreeMap<Owner, OwnerDiff>,
    desired: usize,
    owned_actual: usize,
    not_owned: usize,
    /// Missing MX and SRV records whose target is in the zone.
    candidates: Vec<Record>,
    /// Whether the owner being compared has a wanted address (a name
    /// server's addresses are owned only then).
    db_addressed: bool,
    /// Differences (records) the sample in `owners` may hold: owners are
    /// kept whole while fewer are kept.
    sample: usize,
    /// Differences kept in `owners`.
    kept: usize,
    owners_differing: usize,
    missing_count: usize,
    extra_count: usize,
    ttl_count: usize,
    /// Whether each candidate's owner had another difference.
    candidate_owner_differs: Vec<bool>,
    /// Differences the whole run may still keep, shared by the zones
    /// compared in it (see [`OwnerMerge::with_shared_sample`]).
    shared: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
}

impl<'a> OwnerMerge<'a> {
    /// A comparison of `zone`, knowing its [`ZoneFacts`].
    pub fn new(zone: &'a ZoneName, facts: ZoneFacts, excluded: &'a Exclusions) -> OwnerMerge<'a> {
        OwnerMerge {
            zone,
            facts,
            excluded,
            owners: BTreeMap::new(),
            desired: 0,
            owned_actual: 0,
            not_owned: 0,
            candidates: Vec::new(),
            db_addressed: false,
            sample: usize::MAX,
            kept: 0,
            owners_differing: 0,
            missing_count: 0,
            extra_count: 0,
            ttl_count: 0,
            candidate_owner_differs: Vec::new(),
            shared: None,
        }
    }

    /// Keeps an owner's differences only while `left` (shared by every
    /// zone of a run, whatever their number) has room, and takes them from
    /// it: the report's sample is bounded per run, not per zone. Owners
    /// are kept whole, so the run may keep one owner's more than `left`.
    pub fn with_shared_sample(
        mut self,
        left: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) -> OwnerMerge<'a> {
        self.shared = Some(left);
        self
    }

    /// Takes `n` differences from the run's shared sample (always room
    /// without one).
    fn take_shared(&self, n: usize) -> bool {
        use std::sync::atomic::Ordering;
        self.shared.as_ref().is_none_or(|left| {
            left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                (l > 0).then(|| l.saturating_sub(n))
            })
            .is_ok()
        })
    }

    /// Keeps in [`ZoneDiff::owners`] only the first owners with
    /// differences (in the order they are fed), whole, while fewer than
    /// `differences` records are kept; the counts count them all.
    pub fn with_sample(mut self, differences: usize) -> OwnerMerge<'a> {
        self.sample = differences;
        self
    }

    /// Counts one owner's differences and keeps them if the sample has
    /// room.
    fn note(&mut self, owner: &Owner, d: &OwnerDiff, new_owner: bool) {
        if new_owner {
            self.owners_differing += 1;
        }
        self.missing_count += d.missing.len();
        self.extra_count += d.extra.len();
        self.ttl_count += d.ttl.len();
        let n = d.missing.len() + d.extra.len() + d.ttl.len();
        if let Some(kept) = self.owners.get_mut(owner) {
            kept.missing.extend(d.missing.iter().cloned());
            kept.extra.extend(d.extra.iter().cloned());
            kept.ttl.extend(d.ttl.iter().cloned());
            self.kept += n;
        } else if self.kept < self.sample && self.take_shared(n) {
            self.owners.insert(owner.clone(), d.clone());
            self.kept += n;
        }
    }

    fn owned(&self, r: &Record) -> bool {
        let is_address = r.rtype == RType::A || r.rtype == RType::AAAA;
        is_owned(self.zone, r, self.facts.apex_ns_owned)
            && !self.excluded.excludes(r)
            && !(is_address && self.facts.name_servers.contains(&r.owner) && !self.db_addressed)
    }

    /// Whether a wanted record is an owned address record (what makes an MX
    /// or SRV target addressed).
    pub fn is_owned_address(&self, r: &Record) -> bool {
        (r.rtype == RType::A || r.rtype == RType::AAAA)
            && is_owned(self.zone, r, self.facts.apex_ns_owned)
            && !self.excluded.excludes(r)
    }

    /// Compares one owner: `desired` and `actual` hold every record of that
    /// owner on their side (either may be empty), in any order. Returns the
    /// owner's differences (a missing MX or SRV that may wait for its
    /// target's address is not among them: see [`OwnerMerge::finish`] and
    /// [`OwnerMerge::addressed_missing`]).
    pub fn owner(&mut self, desired: &[Record], actual: &[Record]) -> Option<OwnerDiff> {
        let mut d = OwnerDiff::default();
        let is_address = |r: &Record| r.rtype == RType::A || r.rtype == RType::AAAA;
        self.db_addressed = desired
            .iter()
            .any(|r| is_address(r) && self.facts.name_servers.contains(&r.owner));
        fn rr(r: &Record) -> (&Owner, RType, &Rdata) {
            (&r.owner, r.rtype, &r.rdata)
        }
        fn rr_ttl(r: &Record) -> (&Owner, RType, &Rdata, u32) {
            (&r.owner, r.rtype, &r.rdata, r.ttl)
        }
        let mut want: Vec<&Record> = desired.iter().filter(|r| self.owned(r)).collect();
        want.sort_unstable_by(|a, b| rr_ttl(a).cmp(&rr_ttl(b)));
        // The same RR twice: the smaller TTL counts (sorted first).
        want.dedup_by(|later, first| rr(later) == rr(first));
        let mut have: Vec<&Record> = Vec::with_capacity(actual.len());
        for r in actual {
            // A signer's own DNSKEY, CDS or CDNSKEY is not pg2dns's to remove.
            let signers = r.rtype.is_shared_with_signer()
                && want.binary_search_by(|w| rr(w).cmp(&rr(r))).is_err();
            if self.owned(r) && !signers {
                have.push(r);
            } else {
                self.not_owned += 1;
            }
        }
        have.sort_unstable_by(|a, b| rr_ttl(a).cmp(&rr_ttl(b)));
        have.dedup_by(|later, first| rr(later) == rr(first));
        self.desired += want.len();
        self.owned_actual += have.len();
        let zone = self.zone;
        let may_wait = |r: &Record| {
            matches!(r.rtype, RType::MX | RType::SRV)
                && crate::rdata::target(r.rtype, r.rdata.as_wire())
                    .is_some_and(|t| zone.contains(&Owner::from_name(t)))
        };
        let (mut w, mut h) = (want.iter().peekable(), have.iter().peekable());
        loop {
            let order = match (w.peek(), h.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(a), Some(b)) => rr(a).cmp(&rr(b)),
            };
            match order {
                std::cmp::Ordering::Less => {
                    let r = w.next().expect("peeked");
                    if may_wait(r) {
                        self.candidates.push((*r).clone());
                    } else {
                        d.missing.push((*r).clone());
                    }
                }
                std::cmp::Ordering::Greater => {
                    let r = h.next().expect("peeked");
                    d.extra.push((*r).clone());
                }
                std::cmp::Ordering::Equal => {
                    let r = w.next().expect("peeked");
                    let actual_ttl = h.next().expect("peeked").ttl;
                    if actual_ttl != r.ttl {
                        d.ttl.push(TtlDifference {
                            wanted: (*r).clone(),
                            actual_ttl,
                        });
                    }
                }
            }
        }
        let differs = !d.is_empty();
        self.candidate_owner_differs
            .resize(self.candidates.len(), differs);
        if !differs {
            return None;
        }
        let owner = desired
            .first()
            .or(actual.first())
            .map(|r| r.owner.clone())
            .expect("an owner with differences has records");
        self.note(&owner, &d, true);
        Some(d)
    }

    /// Takes the missing MX and SRV records whose target the database gives
    /// an address (they are differences after all), grouped by owner; the
    /// others stay waiting. For a pass that streams the differences (the
    /// repair, the verifier's file): call it once, after the last owner.
    pub fn addressed_missing(
        &mut self,
        addressed: &std::collections::BTreeSet<Owner>,
    ) -> Vec<(Owner, OwnerDiff)> {
        self.split_candidates(addressed)
            .into_iter()
            .map(|(owner, d, _)| (owner, d))
            .collect()
    }

    /// Splits the candidates: those addressed, grouped by owner (with
    /// whether that owner had other differences), are removed.
    fn split_candidates(
        &mut self,
        addressed: &std::collections::BTreeSet<Owner>,
    ) -> Vec<(Owner, OwnerDiff, bool)> {
        let mut out: Vec<(Owner, OwnerDiff, bool)> = Vec::new();
        let mut kept = Vec::new();
        let mut kept_differs = Vec::new();
        let candidates = std::mem::take(&mut self.candidates);
        let differs = std::mem::take(&mut self.candidate_owner_differs);
        for (r, owner_differs) in candidates.into_iter().zip(differs) {
            let has = crate::rdata::target(r.rtype, r.rdata.as_wire())
                .is_some_and(|t| addressed.contains(&Owner::from_name(t)));
            if !has {
                kept.push(r);
                kept_differs.push(owner_differs);
                continue;
            }
            match out.last_mut() {
                Some((owner, d, _)) if *owner == r.owner => d.missing.push(r),
                _ => out.push((
                    r.owner.clone(),
                    OwnerDiff {
                        missing: vec![r],
                        ..OwnerDiff::default()
                    },
                    owner_differs,
                )),
            }
        }
        self.candidates = kept;
        self.candidate_owner_differs = kept_differs;
        out
    }

    /// The targets whose wanted address decides whether a missing MX or SRV
    /// waits ([`ZoneDiff::waiting`]) or is missing: look each up among the
    /// wanted records ([`OwnerMerge::is_owned_address`]).
    pub fn waiting_targets(&self) -> std::collections::BTreeSet<Owner> {
        self.candidates
            .iter()
            .filter_map(|r| crate::rdata::target(r.rtype, r.rdata.as_wire()))
            .map(Owner::from_name)
            .collect()
    }

    /// The comparison, given which of [`OwnerMerge::waiting_targets`] the
    /// database gives an address.
    pub fn finish(mut self, addressed: &std::collections::BTreeSet<Owner>) -> ZoneDiff {
        let mut resorted = std::collections::BTreeSet::new();
        for (owner, d, owner_differs) in self.split_candidates(addressed) {
            resorted.insert(owner.clone());
            self.note(&owner, &d, !owner_differs);
        }
        for owner in resorted {
            if let Some(o) = self.owners.get_mut(&owner) {
                o.missing
                    .sort_by(|a, b| (a.rtype, &a.rdata, a.ttl).cmp(&(b.rtype, &b.rdata, b.ttl)));
            }
        }
        let mut waiting = std::mem::take(&mut self.candidates);
        waiting.sort_by(|a, b| {
            (&a.owner, a.rtype, &a.rdata, a.ttl).cmp(&(&b.owner, b.rtype, &b.rdata, b.ttl))
        });
        ZoneDiff {
            zone: self.zone.clone(),
            owners: self.owners,
            owners_differing: self.owners_differing,
            missing_count: self.missing_count,
            extra_count: self.extra_count,
            ttl_count: self.ttl_count,
            desired: self.desired,
            owned_actual: self.owned_actual,
            not_owned: self.not_owned,
            waiting,
        }
    }
}

impl ZoneDiff {
    /// Whether DNS holds exactly what the database wants.
    pub fn is_in_sync(&self) -> bool {
        self.owners_differing == 0
    }

    /// Whether [`ZoneDiff::owners`] holds only the first of the owners with
    /// differences.
    pub fn is_sampled(&self) -> bool {
        self.owners.len() < self.owners_differing
    }

    /// Records missing from DNS.
    pub fn missing(&self) -> usize {
        self.missing_count
    }

    /// Records DNS has that the database does not want.
    pub fn extra(&self) -> usize {
        self.extra_count
    }

    /// Records with the wrong TTL.
    pub fn ttl_differences(&self) -> usize {
        self.ttl_count
    }

    /// The share of the owned records DNS holds that a repair deletes or
    /// changes (0 when DNS holds none).
    pub fn change_share(&self) -> f64 {
        if self.owned_actual == 0 {
            return 0.0;
        }
        (self.extra() + self.ttl_differences()) as f64 / self.owned_actual as f64
    }

    /// Whether the repair needs `--force`: it deletes or changes more than
    /// `max_share` of a zone holding more than `min_records` owned records.
    pub fn exceeds(&self, max_share: f64, min_records: usize) -> bool {
        self.owned_actual > min_records && self.change_share() > max_share
    }

    /// The repair's operations per owner, deletes before adds; a TTL
    /// difference is a delete and an add of the same RR.
    ///
    /// Of a sampled comparison ([`ZoneDiff::is_sampled`]) only the sample's:
    /// a repair of every difference streams them ([`RepairStream`]).
    pub fn repair_groups(&self) -> Vec<OwnerGroup> {
        self.owners
            .iter()
            .map(|(owner, o)| o.repair_group(owner))
            .filter(|g| !g.ops.is_empty())
            .collect()
    }
}

/// Why a repair cannot be planned or written.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RepairError {
    /// One record does not fit a message of the budget, even alone.
    #[error("a repair of {owner} in zone {zone} needs {bytes} bytes for one record, more than the budget of {budget} bytes")]
    RecordTooLarge {
        /// The zone.
        zone: ZoneName,
        /// The owner.
        owner: Owner,
        /// Bytes needed.
        bytes: usize,
        /// The budget's limit.
        budget: usize,
    },
    /// Encoding failed.
    #[error("cannot encode a repair UPDATE for zone {zone}")]
    Encode {
        /// The zone.
        zone: ZoneName,
        /// Why.
        #[source]
        source: EncodeError,
    },
}

/// The prerequisite that guards a repair: the apex SOA RRset exactly as the
/// transfer saw it (RFC 2136 §2.4.2).
pub fn soa_guard(zone: &ZoneName, soa: &Rdata) -> Prerequisite {
    Prerequisite::RrsetEquals {
        owner: Owner::from_name(zone.name().clone()),
        rtype: RType::SOA,
        rdatas: vec![soa.clone()],
    }
}

/// The SOA data with its serial one higher (RFC 1982 arithmetic): what BIND
/// and Knot (`serial-policy: increment`) hold after applying an UPDATE.
/// `None` if `soa` is too short to be SOA data.
pub fn next_serial(soa: &Rdata) -> Option<Rdata> {
    let wire = soa.as_wire();
    let at = wire.len().checked_sub(20)?;
    let serial = u32::from_be_bytes(wire.get(at..at + 4)?.try_into().ok()?);
    let mut next = wire.to_vec();
    next[at..at + 4].copy_from_slice(&serial.wrapping_add(1).to_be_bytes());
    Some(Rdata::from_wire(&next))
}

/// Encodes one repair message: the SOA guard (none when `soa` is `None`:
/// the operator chose to repair unguarded), then the operations.
pub fn encode_repair(
    zone: &ZoneName,
    id: u16,
    soa: Option<&Rdata>,
    ops: &[UpdateOp],
) -> Result<Vec<u8>, RepairError> {
    let guard: Vec<Prerequisite> = soa.map(|soa| soa_guard(zone, soa)).into_iter().collect();
    update::encode(zone, id, &guard, ops).map_err(|source| RepairError::Encode {
        zone: zone.clone(),
        source,
    })
}

/// Bytes the SOA guard adds to a message: a pointer to the zone name, the
/// fixed RR fields and the data.
fn guard_len(soa_len: usize) -> usize {
    2 + 10 + soa_len
}

/// Packs the repair of `diff` into messages that, with a SOA guard of
/// `soa_len` bytes of data and the TSIG record, stay within `budget`. An
/// owner group larger than one message is split in order (its deletes
/// still before its adds).
pub fn repair_messages(
    diff: &ZoneDiff,
    soa_len: usize,
    budget: Budget,
) -> Result<Vec<Vec<UpdateOp>>, RepairError> {
    let mut stream = RepairStream::new(&diff.zone, soa_len, budget);
    for (owner, o) in &diff.owners {
        stream.push(owner, o)?;
    }
    stream.finish()?;
    Ok(stream.take_ready())
}

/// [`repair_messages`] fed owner by owner: the messages filled so far are
/// taken as the owners come ([`RepairStream::take_ready`]), so a repair of
/// a million records never holds more than a message or two.
#[derive(Debug)]
pub struct RepairStream {
    zone: ZoneName,
    soa_len: usize,
    budget: Budget,
    inner: Budget,
    packer: Packer,
    ready: Vec<Vec<UpdateOp>>,
}

impl RepairStream {
    /// A repair of `zone` guarded by a SOA of `soa_len` bytes of data.
    pub fn new(zone: &ZoneName, soa_len: usize, budget: Budget) -> RepairStream {
        // The packer does not count prerequisites; its bound also assumes
        // owners start where it thinks they do, so leave room for the guard
        // twice over (its bytes, and the offsets it shifts past the 14-bit
        // pointer limit are checked when a message is full).
        let inner = Budget {
            max_message_bytes: budget.limit().saturating_sub(guard_len(soa_len)),
            tsig_record_len: budget.tsig_record_len,
        };
        RepairStream {
            zone: zone.clone(),
            soa_len,
            budget,
            inner,
            packer: Packer::new(zone.clone(), inner),
            ready: Vec::new(),
        }
    }

    /// Adds the repair of one owner (owners in any order, each once).
    pub fn push(&mut self, owner: &Owner, d: &OwnerDiff) -> Result<(), RepairError> {
        let group = d.repair_group(owner);
        if group.ops.is_empty() {
            return Ok(());
        }
        let zone = &self.zone.clone();
        let inner = self.inner;
        if inner.fits_alone(zone, &group) {
            return self.pack(group);
        }
        let mut part = OwnerGroup {
            owner: group.owner.clone(),
            ops: Vec::new(),
        };
        for op in group.ops {
            part.ops.push(op);
            if !inner.fits_alone(zone, &part) {
                let op = part.ops.pop().expect("just pushed");
                if part.ops.is_empty() {
                    let alone = OwnerGroup {
                        owner: group.owner.clone(),
                        ops: vec![op],
                    };
                    return Err(RepairError::RecordTooLarge {
                        zone: zone.clone(),
                        owner: group.owner.clone(),
                        bytes: inner.group_alone(zone, &alone) + guard_len(self.soa_len),
                        budget: self.budget.limit(),
                    });
                }
                let full = std::mem::replace(
                    &mut part,
                    OwnerGroup {
                        owner: group.owner.clone(),
                        ops: vec![op],
                    },
                );
                self.pack(full)?;
            }
        }
        if !part.ops.is_empty() {
            self.pack(part)?;
        }
        Ok(())
    }

    fn pack(&mut self, group: OwnerGroup) -> Result<(), RepairError> {
        match self.packer.try_push(group) {
            Ok(()) => Ok(()),
            Err(PushError::Full(group)) => {
                let full = self.packer.take();
                self.seal(full)?;
                self.packer
                    .try_push(group)
                    .map_err(|e| too_large(&self.zone, e, self.budget))
            }
            Err(e) => Err(too_large(&self.zone, e, self.budget)),
        }
    }

    /// The guard shifts every owner by its length: check the real size, and
    /// halve a message that (rarely) outgrew the budget.
    fn seal(&mut self, ops: Vec<UpdateOp>) -> Result<(), RepairError> {
        let soa = Rdata::from_wire(&vec![0; self.soa_len]);
        let mut stack: Vec<Vec<UpdateOp>> = vec![ops];
        while let Some(ops) = stack.pop() {
            let len = encode_repair(&self.zone, 0, Some(&soa), &ops)?.len();
            if len + self.budget.tsig_record_len <= self.budget.limit() || ops.len() < 2 {
                self.ready.push(ops);
            } else {
                let mut first = ops;
                let second = first.split_off(first.len() / 2);
                stack.push(second);
                stack.push(first);
            }
        }
        Ok(())
    }

    /// Closes the last message (after the last owner).
    pub fn finish(&mut self) -> Result<(), RepairError> {
        if !self.packer.is_empty() {
            let last = self.packer.take();
            self.seal(last)?;
        }
        Ok(())
    }

    /// The messages filled so far, in order.
    pub fn take_ready(&mut self) -> Vec<Vec<UpdateOp>> {
        std::mem::take(&mut self.ready)
    }
}

fn too_large(zone: &ZoneName, e: PushError, budget: Budget) -> RepairError {
    let (owner, bytes) = match e {
        PushError::GroupTooLarge { owner, bytes, .. } => (owner, bytes),
        PushError::Full(group) => (group.owner, budget.limit()),
    };
    RepairError::RecordTooLarge {
        zone: zone.clone(),
        owner,
        bytes,
        budget: budget.limit(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    type RrKey = (Owner, RType, Rdata);

    fn zone() -> ZoneName {
        ZoneName::parse("example.test.").unwrap()
    }

    fn rec(owner: &str, ttl: u32, rtype: &str, data: &str) -> Record {
        Record::parse(owner, ttl, rtype, data).unwrap()
    }

    /// A record of a type pg2dns does not parse, from raw wire data.
    fn raw(owner: &str, ttl: u32, rtype: RType, wire: &[u8]) -> Record {
        Record {
            owner: Owner::parse(owner).unwrap(),
            rtype,
            ttl,
            rdata: Rdata::from_wire(wire),
        }
    }

    fn soa_wire(serial: u32) -> Vec<u8> {
        let mut w = Vec::new();
        w.extend_from_slice(b"\x02ns\x07example\x04test\x00");
        w.extend_from_slice(b"\x05admin\x07example\x04test\x00");
        for v in [serial, 3600, 600, 86400, 300] {
            w.extend_from_slice(&v.to_be_bytes());
        }
        w
    }

    fn budget(max: usize) -> Budget {
        Budget {
            max_message_bytes: max,
            tsig_record_len: 81,
        }
    }

    #[test]
    fn zones_sharing_a_runs_sample_keep_it_in_all_and_count_every_difference() {
        // Two zones (two merges) share a sample of 5 differences; each has
        // 4 owners with one missing record and one with two (kept whole).
        let left = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(5));
        let excluded = Exclusions::default();
        let zone = zone();
        let mut kept = 0;
        for z in 0..2 {
            let mut m = OwnerMerge::new(&zone, ZoneFacts::default(), &excluded)
                .with_shared_sample(std::sync::Arc::clone(&left));
            for i in 0..4 {
                let owner = format!("h{z}-{i}.example.test.");
                m.owner(&[rec(&owner, 300, "A", "192.0.2.1")], &[]);
            }
            m.owner(
                &[
                    rec(r"Caf\195\169.example.test.", 300, "TXT", r#""caf\195\169""#),
                    rec(r"Caf\195\169.example.test.", 300, "A", "192.0.2.9"),
                ],
                &[],
            );
            let d = m.finish(&std::collections::BTreeSet::new());
            assert_eq!(d.missing_count, 6, "every difference is counted");
            assert_eq!(d.owners_differing, 5);
            kept += d.owners.values().map(|o| o.missing.len()).sum::<usize>();
            assert_eq!(d.is_sampled(), d.owners.len() < 5);
        }
        // The first zone keeps its 4 single owners and, with 1 left, its
        // pair whole (6 > 5); the second keeps nothing.
        assert_eq!(kept, 6, "the run's sample, one owner past it at most");
        assert_eq!(left.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[test]
    fn owners_fed_in_any_order_give_the_comparison_of_the_whole_zone() {
        let z = zone();
        let desired = vec![
            rec("example.test.", 3600, "NS", "ns1.example.test."),
            rec("ns1.example.test.", 3600, "A", "192.0.2.53"),
            rec("mail.example.test.", 300, "MX", "10 mx.example.test."),
            rec("mail2.example.test.", 300, "MX", "10 nowhere.example.test."),
            rec("mx.example.test.", 300, "A", "192.0.2.25"),
            rec("Www.Example.Test.", 60, "TXT", "\"caf\\195\\169\" \"two\""),
        ];
        let actual = vec![
            rec("example.test.", 3600, "NS", "ns2.example.test."),
            rec("ns2.example.test.", 3600, "A", "192.0.2.54"),
            rec("mx.example.test.", 300, "A", "192.0.2.25"),
            rec("www.example.test.", 300, "TXT", "\"caf\\195\\169\" \"two\""),
            rec("old.example.test.", 300, "A", "192.0.2.9"),
        ];
        let whole = diff(&z, &desired, &actual);
        // Owner by owner, in reverse order, as a caller holding one owner
        // at a time would.
        let mut facts = ZoneFacts::default();
        desired.iter().for_each(|r| facts.desired(&z, r));
        actual.iter().for_each(|r| facts.actual(&z, r));
        let excluded = Exclusions::default();
        let mut merge = OwnerMerge::new(&z, facts, &excluded);
        let mut owners: Vec<&Owner> = desired.iter().chain(&actual).map(|r| &r.owner).collect();
        owners.sort();
        owners.dedup();
        for owner in owners.into_iter().rev() {
            let at = |side: &[Record]| -> Vec<Record> {
                side.iter().filter(|r| &r.owner == owner).cloned().collect()
            };
            merge.owner(&at(&desired), &at(&actual));
        }
        let targets = merge.waiting_targets();
        let addressed = targets
            .iter()
            .filter(|t| {
                desired
                    .iter()
                    .any(|r| &r.owner == *t && merge.is_owned_address(r))
            })
            .cloned()
            .collect();
        let streamed = merge.finish(&addressed);
        assert_eq!(streamed, whole);
        // And the comparison says what it should: the MX whose target has
        // an address is missing, the other waits; the TTL, the stray.
        assert_eq!(whole.waiting.len(), 1, "{whole:?}");
        assert_eq!(
            (whole.missing(), whole.extra(), whole.ttl_differences()),
            (3, 2, 1),
            "{whole:?}"
        );
    }

    #[test]
    fn the_name_servers_addresses_go_with_the_apex_ns() {
        let z = zone();
        let actual = vec![
            rec("example.test.", 3600, "NS", "NS1.Example.Test."),
            rec("ns1.example.test.", 3600, "A", "192.0.2.53"),
            rec("ns1.example.test.", 3600, "AAAA", "2001:db8::53"),
            rec("stray.example.test.", 300, "A", "192.0.2.99"),
        ];
        // The database knows nothing of the name server: its addresses are
        // the zone file's, like the apex NS; the stray address is extra.
        let d = diff(&z, &[], &actual);
        assert_eq!((d.missing(), d.extra()), (0, 1), "{d:?}");
        assert_eq!(d.not_owned, 3);
        // Once the database lists an address there, it owns that name's
        // addresses: the one it lacks is extra.
        let desired = vec![rec("ns1.example.test.", 3600, "A", "192.0.2.53")];
        let d = diff(&z, &desired, &actual);
        assert_eq!((d.missing(), d.extra()), (0, 2), "{d:?}");
        let ns1 = Owner::parse("ns1.example.test.").unwrap();
        assert_eq!(
            d.owners[&ns1].extra,
            vec![rec("ns1.example.test.", 3600, "AAAA", "2001:db8::53")]
        );
    }

    #[test]
    fn excluded_names_and_types_are_neither_reported_nor_repaired() {
        let z = zone();
        let excluded =
            Exclusions::parse(&z, &["_acme-challenge.*".to_string()], &["TXT".to_string()])
                .unwrap();
        let desired = vec![
            rec("www.example.test.", 300, "A", "192.0.2.1"),
            rec("www.example.test.", 300, "TXT", "\"wanted\""),
        ];
        let actual = vec![
            rec("www.example.test.", 300, "A", "192.0.2.1"),
            rec(
                "_acme-challenge.www.example.test.",
                60,
                "CNAME",
                "x.acme.test.",
            ),
            rec("other.example.test.", 300, "TXT", "\"theirs\""),
        ];
        let d = diff_excluding(&z, &desired, &actual, &excluded);
        assert!(d.is_in_sync(), "{d:?}");
        assert_eq!(d.not_owned, 2);
        let plain = diff(&z, &desired, &actual);
        assert_eq!((plain.missing(), plain.extra()), (1, 2));
    }

    #[test]
    fn an_mx_whose_target_has_no_wanted_address_waits_instead_of_missing() {
        let z = zone();
        let mx = rec("example.test.", 300, "MX", "10 mail.example.test.");
        let srv = rec(
            "_sip._tcp.example.test.",
            300,
            "SRV",
            "0 0 5060 sip.example.test.",
        );
        let outside = rec("ext.example.test.", 300, "MX", "10 mx.other.test.");
        // The target has an address in DNS only: it is extra, and is deleted.
        let rogue = rec("mail.example.test.", 300, "A", "192.0.2.9");
        let d = diff(
            &z,
            &[mx.clone(), srv.clone(), outside.clone()],
            std::slice::from_ref(&rogue),
        );
        assert_eq!(d.waiting, vec![srv.clone(), mx.clone()]);
        assert_eq!((d.missing(), d.extra()), (1, 1), "{d:?}");
        // With its address wanted, the MX is missing like any record.
        let addr = rec("mail.example.test.", 300, "A", "192.0.2.25");
        let d = diff(&z, &[mx.clone(), addr], &[]);
        assert!(d.waiting.is_empty());
        assert_eq!(d.missing(), 2);
        // An MX DNS already holds is in sync, address or not.
        let d = diff(&z, std::slice::from_ref(&mx), std::slice::from_ref(&mx));
        assert!(d.is_in_sync() && d.waiting.is_empty(), "{d:?}");
    }

    #[test]
    fn the_soa_dnssec_and_unlisted_apex_ns_are_not_owned() {
        let z = zone();
        let soa = raw("example.test.", 300, RType::SOA, &soa_wire(1));
        let rrsig = raw("www.example.test.", 300, RType::RRSIG, &[0; 20]);
        let private = raw("example.test.", 0, RType(65534), &[1, 2, 3]);
        let apex_ns = rec("example.test.", 300, "NS", "ns.example.test.");
        let deleg = rec("sub.example.test.", 300, "NS", "ns.sub.example.test.");
        assert!(!is_owned(&z, &soa, true));
        assert!(!is_owned(&z, &rrsig, true));
        assert!(!is_owned(&z, &private, true));
        assert!(!is_owned(&z, &apex_ns, false));
        assert!(is_owned(&z, &apex_ns, true));
        assert!(is_owned(&z, &deleg, false));
        let outside = rec("www.other.test.", 300, "A", "192.0.2.1");
        assert!(!is_owned(&z, &outside, true));
    }

    #[test]
    fn a_rows_dnskey_is_repaired_and_the_signers_own_keys_are_never_extra() {
        let z = zone();
        let ours = rec("example.test.", 300, "DNSKEY", "257 3 13 AAAA");
        let signers = rec("example.test.", 300, "DNSKEY", "257 3 13 BBBB");
        let signers_cds = rec("example.test.", 300, "CDS", "1 13 99 ab");
        let ds = rec("sub.example.test.", 300, "DS", "1 13 99 ab");
        // Missing: ours and the DS are added, the signer's keys stay.
        let d = diff(
            &z,
            &[ours.clone(), ds.clone()],
            &[signers.clone(), signers_cds.clone()],
        );
        assert_eq!((d.missing(), d.extra(), d.not_owned), (2, 0, 2), "{d:?}");
        // Present with another TTL: retimed like any record.
        let retimed = Record {
            ttl: 60,
            ..ours.clone()
        };
        let d = diff(&z, std::slice::from_ref(&ours), &[retimed, signers.clone()]);
        assert_eq!((d.missing(), d.extra(), d.ttl_differences()), (0, 0, 1));
        // No row wants a DNSKEY: nothing of the signer's is touched, while a
        // DS no row wants is extra like any record.
        let d = diff(&z, &[], &[signers, signers_cds, ds]);
        assert_eq!((d.missing(), d.extra(), d.not_owned), (0, 1, 2), "{d:?}");
    }

    #[test]
    fn missing_extra_and_ttl_differences_are_reported_per_owner() {
        let desired = vec![
            rec("WWW.example.test.", 300, "A", "192.0.2.1"),
            rec("www.example.test.", 300, "A", "192.0.2.2"),
            rec("mail.example.test.", 600, "MX", "10 MX.example.test."),
        ];
        let actual = vec![
            raw("example.test.", 3600, RType::SOA, &soa_wire(7)),
            rec("example.test.", 3600, "NS", "ns.example.test."),
            rec("www.example.test.", 300, "A", "192.0.2.1"),
            rec("www.example.test.", 300, "A", "192.0.2.9"),
            rec("mail.example.test.", 60, "MX", "10 mx.example.test."),
        ];
        let d = diff(&zone(), &desired, &actual);
        assert_eq!((d.missing(), d.extra(), d.ttl_differences()), (1, 1, 1));
        assert_eq!((d.desired, d.owned_actual, d.not_owned), (3, 3, 2));
        let www = &d.owners[&Owner::parse("www.example.test.").unwrap()];
        assert_eq!(
            www.missing,
            vec![rec("www.example.test.", 300, "A", "192.0.2.2")]
        );
        assert_eq!(
            www.extra,
            vec![rec("www.example.test.", 300, "A", "192.0.2.9")]
        );
        let mail = &d.owners[&Owner::parse("mail.example.test.").unwrap()];
        assert_eq!(mail.ttl[0].actual_ttl, 60);
        assert_eq!(mail.ttl[0].wanted.ttl, 600);
        assert!(!d.is_in_sync());
        let groups = d.repair_groups();
        let mail_ops = &groups
            .iter()
            .find(|g| g.owner.to_string() == "mail.example.test.")
            .unwrap()
            .ops;
        assert!(matches!(&mail_ops[0], UpdateOp::Delete(r) if r.ttl == 60));
        assert!(matches!(&mail_ops[1], UpdateOp::Add(r) if r.ttl == 600));
    }

    #[test]
    fn apex_ns_is_compared_once_the_database_lists_it() {
        let actual = vec![
            rec("example.test.", 3600, "NS", "ns1.example.test."),
            rec("example.test.", 3600, "NS", "ns2.example.test."),
        ];
        let d = diff(&zone(), &[], &actual);
        assert!(d.is_in_sync());
        let desired = vec![rec("example.test.", 3600, "NS", "ns1.example.test.")];
        let d = diff(&zone(), &desired, &actual);
        assert_eq!(d.extra(), 1);
        assert_eq!(d.missing(), 0);
    }

    #[test]
    fn the_safety_share_counts_deletes_and_changes_of_what_dns_holds() {
        let actual: Vec<Record> = (0..20)
            .map(|i| rec(&format!("h{i}.example.test."), 300, "A", "192.0.2.1"))
            .collect();
        let d = diff(&zone(), &actual[..10], &actual);
        assert!((d.change_share() - 0.5).abs() < 1e-9);
        assert!(d.exceeds(0.3, 10));
        let d = diff(&zone(), &actual[..15], &actual);
        assert!(!d.exceeds(0.3, 10));
        let small = diff(&zone(), &[], &actual[..10]);
        assert!(
            !small.exceeds(0.3, 10),
            "a zone of 10 records is never refused"
        );
    }

    #[test]
    fn the_next_serial_wraps() {
        let soa = Rdata::from_wire(&soa_wire(u32::MAX));
        assert_eq!(next_serial(&soa).unwrap(), Rdata::from_wire(&soa_wire(0)));
        let soa = Rdata::from_wire(&soa_wire(41));
        assert_eq!(next_serial(&soa).unwrap(), Rdata::from_wire(&soa_wire(42)));
        assert_eq!(next_serial(&Rdata::from_wire(&[1, 2])), None);
    }

    #[test]
    fn every_repair_message_carries_the_soa_guard() {
        use hickory_proto::op::Message;
        let desired = vec![rec("a.example.test.", 300, "A", "192.0.2.1")];
        let d = diff(&zone(), &desired, &[]);
        let soa = Rdata::from_wire(&soa_wire(5));
        let messages = repair_messages(&d, soa.len(), budget(65_535)).unwrap();
        assert_eq!(messages.len(), 1);
        let wire = encode_repair(&zone(), 9, Some(&soa), &messages[0]).unwrap();
        let m = Message::from_vec(&wire).unwrap();
        assert_eq!(m.answers.len(), 1, "the prerequisite section");
        assert_eq!(u16::from(m.answers[0].record_type()), RType::SOA.0);
        assert_eq!(m.answers[0].ttl, 0);
        assert_eq!(m.authorities.len(), 1);
    }

    /// Applies repair operations to a zone as a server does (RR identity
    /// without TTL, RFC 2136 §1.1.1).
    fn apply(zone: &mut HashMap<RrKey, u32>, ops: &[UpdateOp]) {
        for op in ops {
            match op {
                UpdateOp::Delete(r) => {
                    zone.remove(&(r.owner.clone(), r.rtype, r.rdata.clone()));
                }
                UpdateOp::Add(r) => {
                    zone.entry((r.owner.clone(), r.rtype, r.rdata.clone()))
                        .or_insert(r.ttl);
                }
                UpdateOp::DeleteRrset { owner, rtype } => {
                    zone.retain(|k, _| !(k.0 == *owner && k.1 == *rtype))
                }
            }
        }
    }

    fn pool(i: u8, ttl: u32) -> Record {
        let owner = match i % 6 {
            0 => "example.test.".to_string(),
            1 => "WWW.example.test.".to_string(),
            n => format!("h{n}.{}.example.test.", "x".repeat(40)),
        };
        match i % 5 {
            0 => rec(&owner, ttl, "A", &format!("192.0.2.{i}")),
            1 => rec(
                &owner,
                ttl,
                "TXT",
                &format!("\"{}\"", "t".repeat(usize::from(i))),
            ),
            2 => rec(&owner, ttl, "MX", &format!("{i} mx.example.test.")),
            3 => rec(&owner, ttl, "AAAA", &format!("2001:db8::{i:x}")),
            _ if owner == "example.test." => {
                rec(&owner, ttl, "NS", &format!("ns{i}.example.test."))
            }
            _ => rec(&owner, ttl, "SRV", &format!("0 1 {i} t.example.test.")),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn the_repair_turns_what_dns_holds_into_what_the_database_wants(
            want in proptest::collection::vec((0..120u8, prop_oneof![Just(300u32), Just(60)]), 0..80),
            have in proptest::collection::vec((0..120u8, prop_oneof![Just(300u32), Just(60)]), 0..80),
            max in prop_oneof![512..1_500usize, 1_500..65_535usize],
        ) {
            let z = zone();
            let desired: Vec<Record> = want.iter().map(|&(i, t)| pool(i, t)).collect();
            let mut actual: Vec<Record> = Vec::new();
            for &(i, t) in &have {
                let r = pool(i, t);
                if !actual.iter().any(|a| a.same_rr(&r)) {
                    actual.push(r);
                }
            }
            let soa = Rdata::from_wire(&soa_wire(9));
            let foreign = vec![
                raw("example.test.", 300, RType::SOA, soa.as_wire()),
                raw("www.example.test.", 300, RType::RRSIG, &[7; 40]),
                raw("example.test.", 0, RType(65534), &[1, 2, 3]),
            ];
            actual.extend(foreign.iter().cloned());
            let d = diff(&z, &desired, &actual);
            let b = budget(max);
            let messages = repair_messages(&d, soa.len(), b).unwrap();
            let mut server: HashMap<RrKey, u32> = actual
                .iter()
                .map(|r| ((r.owner.clone(), r.rtype, r.rdata.clone()), r.ttl))
                .collect();
            for ops in &messages {
                prop_assert!(!ops.is_empty());
                let wire = encode_repair(&z, 1, Some(&soa), ops).unwrap();
                prop_assert!(wire.len() + b.tsig_record_len <= b.limit(), "{} > {}", wire.len(), b.limit());
                apply(&mut server, ops);
            }
            let after: Vec<Record> = server
                .into_iter()
                .map(|((owner, rtype, rdata), ttl)| Record { owner, rtype, ttl, rdata })
                .collect();
            for f in &foreign {
                prop_assert!(after.contains(f), "{f} was touched");
            }
            let again = diff(&z, &desired, &after);
            prop_assert!(again.is_in_sync(), "{:?}", again.owners);
        }

        #[test]
        fn a_sampled_comparison_counts_every_difference_and_the_streamed_repair_sends_them_all(
            want in proptest::collection::vec((0..120u8, prop_oneof![Just(300u32), Just(60)]), 0..80),
            have in proptest::collection::vec((0..120u8, prop_oneof![Just(300u32), Just(60)]), 0..80),
            sample in 0..6usize,
        ) {
            let z = zone();
            let desired: Vec<Record> = want.iter().map(|&(i, t)| pool(i, t)).collect();
            let mut actual: Vec<Record> = Vec::new();
            for &(i, t) in &have {
                let r = pool(i, t);
                if !actual.iter().any(|a| a.same_rr(&r)) {
                    actual.push(r);
                }
            }
            let whole = diff(&z, &desired, &actual);
            // The same comparison fed owner by owner, keeping `sample`
            // owners, each owner's differences streamed out as they come.
            let mut facts = ZoneFacts::default();
            desired.iter().for_each(|r| facts.desired(&z, r));
            actual.iter().for_each(|r| facts.actual(&z, r));
            let none = Exclusions::default();
            let mut owners: Vec<Owner> = desired.iter().chain(&actual).map(|r| r.owner.clone()).collect();
            owners.sort();
            owners.dedup();
            let budget = budget(1_200);
            let mut stream = RepairStream::new(&z, 40, budget);
            // Two passes, as reconcile makes them: the report's (sampled),
            // then the repair's (streamed).
            let mut merge = OwnerMerge::new(&z, facts.clone(), &none).with_sample(sample);
            let mut repair = OwnerMerge::new(&z, facts, &none).with_sample(0);
            for o in &owners {
                let wg: Vec<Record> = desired.iter().filter(|r| &r.owner == o).cloned().collect();
                let hg: Vec<Record> = actual.iter().filter(|r| &r.owner == o).cloned().collect();
                merge.owner(&wg, &hg);
                if let Some(d) = repair.owner(&wg, &hg) {
                    stream.push(o, &d).unwrap();
                }
            }
            let addressed: std::collections::BTreeSet<Owner> = merge
                .waiting_targets()
                .into_iter()
                .filter(|t| desired.iter().any(|r| &r.owner == t && merge.is_owned_address(r)))
                .collect();
            for (o, d) in repair.addressed_missing(&addressed) {
                stream.push(&o, &d).unwrap();
            }
            stream.finish().unwrap();
            let sampled = merge.finish(&addressed);
            prop_assert_eq!(sampled.missing(), whole.missing());
            prop_assert_eq!(sampled.extra(), whole.extra());
            prop_assert_eq!(sampled.ttl_differences(), whole.ttl_differences());
            prop_assert_eq!(sampled.owners_differing, whole.owners.len());
            prop_assert_eq!(sampled.is_in_sync(), whole.is_in_sync());
            prop_assert_eq!(&sampled.waiting, &whole.waiting);
            let kept: usize = sampled.owners.values().map(|o| o.missing.len() + o.extra.len() + o.ttl.len()).sum();
            prop_assert!(sampled.owners.len() <= sample || kept < sample + 8, "{kept} kept of a sample of {sample}");
            prop_assert_eq!(sampled.is_sampled(), sampled.owners.len() < whole.owners.len());
            for (o, d) in &sampled.owners {
                prop_assert_eq!(Some(d), whole.owners.get(o));
            }
            let mut streamed: Vec<String> = stream.take_ready().concat().iter().map(|op| format!("{op:?}")).collect();
            let mut at_once: Vec<String> = repair_messages(&whole, 40, budget).unwrap().concat().iter().map(|op| format!("{op:?}")).collect();
            streamed.sort();
            at_once.sort();
            prop_assert_eq!(streamed, at_once);
        }
    }
}
