//! The mass-delete guard: a transaction that would delete more than a set
//! number or share of a zone's records is held before anything of it is
//! sent, until an operator releases that one transaction.
//!
//! # Why
//!
//! A mistaken `DELETE FROM hosts` (a missing `WHERE`) or a `TRUNCATE` is a
//! valid transaction: streamed faithfully, it empties the zone within
//! milliseconds, everywhere. The database keeps its WAL, but DNS has no undo.
//! Like reconcile's threshold (octoDNS's safety idea), the stream refuses to
//! apply such a transaction on its own: it halts, says which zone would lose
//! how many of how many records at which LSN, and goes on only when told to
//! (`pg2dns resume --allow-mass-delete`), for that transaction alone.
//!
//! # What counts
//!
//! A record *deleted* is one the transaction's net operations remove from
//! the zone and do not add back (a TTL change deletes and adds the same RR:
//! not counted). The share is of the records the zone held, as pg2dns's row
//! state says, before the transaction. A zone of `min_zone_records` records
//! or fewer is judged by the number alone (so a small zone can be emptied);
//! with the default settings a transaction deleting 3 records or fewer of a
//! zone is never held, so the zone's size is read only for larger ones.

use std::collections::BTreeMap;

use crate::plan::ZoneOps;
use crate::rdata::RType;
use crate::records::{Rdata, ZoneId};
use crate::update::UpdateOp;
use crate::HashSet;
use crate::Lsn;

/// The thresholds of one zone.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeleteGuard {
    /// Hold a transaction deleting more than this many records of the zone
    /// (`None`: no limit by number).
    pub max_delete_records: Option<usize>,
    /// Hold a transaction deleting more than this share (0 to 1) of the
    /// zone's records, when the zone holds more than `min_zone_records`
    /// (1: no limit by share).
    pub max_delete_share: f64,
    /// Zones of at most this many records are judged by number only.
    pub min_zone_records: usize,
}

impl Default for DeleteGuard {
    /// More than 30 % of a zone of more than 10 records, as reconcile's
    /// threshold; no limit by number.
    fn default() -> Self {
        DeleteGuard {
            max_delete_records: None,
            max_delete_share: 0.3,
            min_zone_records: 10,
        }
    }
}

impl DeleteGuard {
    /// Whether the number alone holds a transaction deleting `deleted`
    /// records.
    pub fn exceeds_number(&self, deleted: usize) -> bool {
        self.max_delete_records.is_some_and(|max| deleted > max)
    }

    /// Whether `deleted` records could be too large a share of some zone:
    /// only then is the zone's size needed.
    pub fn needs_zone_size(&self, deleted: usize) -> bool {
        // The smallest zone that could hold `deleted` and is judged by share.
        let smallest = deleted.max(self.min_zone_records + 1);
        self.share_exceeded(deleted, smallest)
    }

    /// Whether deleting `deleted` of a zone's `records` records is held.
    pub fn exceeded(&self, deleted: usize, records: usize) -> bool {
        self.exceeds_number(deleted)
            || (records > self.min_zone_records && self.share_exceeded(deleted, records))
    }

    /// Whether no transaction can ever be held (no number, a share of 1).
    pub fn is_off(&self) -> bool {
        self.max_delete_records.is_none() && self.max_delete_share >= 1.0
    }

    fn share_exceeded(&self, deleted: usize, records: usize) -> bool {
        deleted > 0 && deleted as f64 > self.max_delete_share * records as f64
    }
}

/// What one transaction (or the part of it seen so far) does to a zone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZoneChange {
    /// Records it removes and does not add back.
    pub deleted: usize,
    /// Records it adds that were not there.
    pub added: usize,
}

/// The net records each zone loses and gains through these operations
/// (one transaction's, or one part of it).
pub fn zone_changes(ops: &[ZoneOps]) -> BTreeMap<ZoneId, ZoneChange> {
    let mut out: BTreeMap<ZoneId, ZoneChange> = BTreeMap::new();
    for zone_ops in ops {
        let change = out.entry(zone_ops.zone).or_default();
        for group in &zone_ops.groups {
            let c = if group.ops.len() <= PAIRWISE_UP_TO {
                group_change_pairwise(&group.ops)
            } else {
                group_change_sets(&group.ops)
            };
            change.deleted += c.deleted;
            change.added += c.added;
        }
    }
    out
}

/// An owner's operations up to this many are compared pair by pair rather
/// than through two hash sets: nearly every group has one to four, and the
/// sets' allocations were most of the guard's cost in a 200,000-row
/// transaction (BENCHMARKS.md, issue #23's `big`).
const PAIRWISE_UP_TO: usize = 16;

/// The RR an Add or a Delete names (type and data: a delete and an add of
/// the same RR in one group is a TTL change, not a loss).
fn rr_of(op: &UpdateOp) -> Option<(bool, RType, &Rdata)> {
    match op {
        UpdateOp::Add(r) => Some((true, r.rtype, &r.rdata)),
        UpdateOp::Delete(r) => Some((false, r.rtype, &r.rdata)),
        UpdateOp::DeleteRrset { .. } => None,
    }
}

/// One owner's net deletes and adds, through sets of the deleted and added
/// RRs.
fn group_change_sets(ops: &[UpdateOp]) -> ZoneChange {
    let (mut added, mut deleted) = (HashSet::default(), HashSet::default());
    for (add, rtype, rdata) in ops.iter().filter_map(rr_of) {
        if add {
            added.insert((rtype, rdata));
        } else {
            deleted.insert((rtype, rdata));
        }
    }
    ZoneChange {
        deleted: deleted.difference(&added).count(),
        added: added.difference(&deleted).count(),
    }
}

/// The same count as [`group_change_sets`] without allocating: each
/// distinct RR counted once (at its first operation of its kind), unless
/// the other kind names it too.
fn group_change_pairwise(ops: &[UpdateOp]) -> ZoneChange {
    let mut change = ZoneChange::default();
    for (i, op) in ops.iter().enumerate() {
        let Some(rr) = rr_of(op) else { continue };
        let (add, rtype, rdata) = rr;
        if ops[..i].iter().filter_map(rr_of).any(|o| o == rr) {
            continue;
        }
        if ops
            .iter()
            .filter_map(rr_of)
            .any(|o| o == (!add, rtype, rdata))
        {
            continue;
        }
        if add {
            change.added += 1;
        } else {
            change.deleted += 1;
        }
    }
    change
}

/// A transaction the guard holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MassDelete {
    /// The zone.
    pub zone: ZoneId,
    /// Records the transaction deletes from it.
    pub deleted: usize,
    /// Records the zone held before the transaction.
    pub records: usize,
    /// The transaction's commit LSN: what a release names.
    pub lsn: Lsn,
}

/// What a transaction does to each zone it touches.
pub type Changes = BTreeMap<ZoneId, ZoneChange>;

/// A transaction continuing past a batch: its commit LSN and what its
/// parts so far did to each zone.
pub type Carry = Option<(Lsn, Changes)>;

/// One segment of a batch: a transaction (or the batch's part of one),
/// with its commit LSN and its net operations per zone.
pub type Segment = (Lsn, Vec<ZoneOps>);

/// What each segment's whole transaction does, as far as seen: a carried
/// transaction's earlier parts are added to the first segment's when it is
/// the same transaction. Returns the totals and the carried changes used.
fn totals(segments: &[Segment], carry: &Carry) -> (Vec<(Lsn, Changes)>, Option<Changes>) {
    let mut totals = Vec::with_capacity(segments.len());
    let mut carried = None;
    for (i, (lsn, ops)) in segments.iter().enumerate() {
        let mut total = zone_changes(ops);
        if i == 0 {
            if let Some((_, before)) = carry.as_ref().filter(|(at, _)| at == lsn) {
                for (zone, c) in before {
                    let t = total.entry(*zone).or_default();
                    t.deleted += c.deleted;
                    t.added += c.added;
                }
                carried = Some(before.clone());
            }
        }
        totals.push((*lsn, total));
    }
    (totals, carried)
}

/// The zones whose size the judgement of these segments needs: those a
/// transaction deletes enough of to be held at all (usually none, so the
/// driver reads no zone size).
pub fn suspects(guards: &[DeleteGuard], segments: &[Segment], carry: &Carry) -> Vec<ZoneId> {
    suspects_of(guards, &totals(segments, carry).0)
}

/// [`suspects`] of totals already summed.
fn suspects_of(guards: &[DeleteGuard], totals: &[(Lsn, Changes)]) -> Vec<ZoneId> {
    let guard_of = |z: ZoneId| guards.get(z.index()).copied().unwrap_or_default();
    let mut out: Vec<ZoneId> = totals
        .iter()
        .flat_map(|(_, t)| t.iter())
        .filter(|(z, c)| {
            let g = guard_of(**z);
            g.exceeds_number(c.deleted) || g.needs_zone_size(c.deleted)
        })
        .map(|(z, _)| *z)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The guard's verdict on a batch that may go on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdict {
    /// What the batch leaves for its open transaction's next part (see
    /// [`judge`]).
    pub carry: Carry,
    /// Transactions over the threshold that an operator released: applied,
    /// and worth a line in the log.
    pub released: Vec<MassDelete>,
}

/// Judges each segment of a batch (in order) before anything of it is
/// sent. `carry` holds the changes of a transaction begun in an earlier
/// batch; `open` says the last segment continues past this batch (the
/// verdict carries its changes on). `records` is what the row state holds
/// of each of [`suspects`]'s zones before the batch; `released` the commit
/// LSNs an operator released. The first transaction held is the error.
///
/// The records a zone holds before each segment: the stored count, moved
/// by this batch's earlier segments (not written yet), and before the
/// parts of a carried transaction already written.
pub fn judge(
    guards: &[DeleteGuard],
    segments: &[Segment],
    carry: &Carry,
    open: bool,
    records: &BTreeMap<ZoneId, usize>,
    released: &std::collections::BTreeSet<Lsn>,
) -> Result<Verdict, MassDelete> {
    let guard_of = |z: ZoneId| guards.get(z.index()).copied().unwrap_or_default();
    let (mut totals, carried) = totals(segments, carry);
    let mut verdict = Verdict::default();
    if !suspects_of(guards, &totals).is_empty() {
        let mut moved: BTreeMap<ZoneId, i64> = BTreeMap::new();
        for (i, (lsn, total)) in totals.iter().enumerate() {
            for (zone, change) in total {
                let stored = records.get(zone).copied().unwrap_or(0) as i64;
                let undone = match (i, &carried) {
                    (0, Some(before)) => before
                        .get(zone)
                        .map_or(0, |c| c.deleted as i64 - c.added as i64),
                    _ => 0,
                };
                let held = (stored + moved.get(zone).copied().unwrap_or(0) + undone).max(0);
                let held = usize::try_from(held).unwrap_or(0);
                if guard_of(*zone).exceeded(change.deleted, held) {
                    let mass = MassDelete {
                        zone: *zone,
                        deleted: change.deleted,
                        records: held,
                        lsn: *lsn,
                    };
                    if released.contains(lsn) {
                        verdict.released.push(mass);
                        continue;
                    }
                    return Err(mass);
                }
            }
            if let Some((_, ops)) = segments.get(i) {
                for (zone, c) in zone_changes(ops) {
                    *moved.entry(zone).or_default() += c.added as i64 - c.deleted as i64;
                }
            }
        }
    }
    if open {
        verdict.carry = totals.pop();
    }
    Ok(verdict)
}

/// The parts of a batch to send now, in order. A transaction larger than a
/// batch is planned in parts; once such a transaction deletes anything in a
/// guarded zone, its parts are kept in `held` (not sent) until the batch
/// holding its commit, so that [`judge`] judges it whole before any part of
/// it reaches DNS. `carry` is what [`judge`] left for the open transaction.
pub fn ready_parts(
    held: &mut Vec<Segment>,
    mut segments: Vec<Segment>,
    open: bool,
    carry: &Carry,
    guards: &[DeleteGuard],
) -> Vec<Segment> {
    let mut held_now = std::mem::take(held);
    let last = if open { segments.pop() } else { None };
    let mut out = Vec::with_capacity(segments.len() + held_now.len() + 1);
    if !segments.is_empty() {
        // The held transaction (if any) committed in this batch: its parts
        // go first, right before its last one.
        out.append(&mut held_now);
    }
    out.extend(segments);
    if let Some(part) = last {
        let deleting = carry.as_ref().is_some_and(|(_, changes)| {
            changes.iter().any(|(z, c)| {
                c.deleted > 0 && !guards.get(z.index()).copied().unwrap_or_default().is_off()
            })
        });
        if deleting || !held_now.is_empty() {
            held_now.push(part);
            *held = held_now;
        } else {
            out.push(part);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Owner, Record};
    use crate::update::OwnerGroup;

    #[test]
    fn the_default_holds_more_than_30_percent_of_a_zone_of_more_than_10_records() {
        let g = DeleteGuard::default();
        assert!(!g.exceeded(3, 11));
        assert!(g.exceeded(4, 11));
        assert!(!g.exceeded(30, 100));
        assert!(g.exceeded(31, 100));
        // A zone of 10 records or fewer may be emptied.
        assert!(!g.exceeded(10, 10));
        // Three deletes can never be held, so no zone size is read.
        assert!(!g.needs_zone_size(3));
        assert!(g.needs_zone_size(4));
        assert!(g.needs_zone_size(1_000));
    }

    #[test]
    fn a_number_limit_holds_whatever_the_zone_size() {
        let g = DeleteGuard {
            max_delete_records: Some(5),
            max_delete_share: 1.0,
            min_zone_records: 10,
        };
        assert!(!g.exceeded(5, 1_000_000));
        assert!(g.exceeded(6, 1_000_000));
        assert!(g.exceeds_number(6));
        assert!(
            !g.needs_zone_size(1_000),
            "a share of 1 never needs the size"
        );
    }

    #[test]
    fn the_pairwise_count_of_an_owners_operations_equals_the_count_through_sets() {
        // Every sequence of up to 4 operations over three addresses (each
        // added or deleted, with TTLs that differ: a TTL change is no
        // delete), repeats included, and an RRset delete among them.
        let owner = "a.example.test.";
        let mut alphabet: Vec<UpdateOp> = Vec::new();
        for (i, data) in ["192.0.2.1", "192.0.2.2", "2001:db8::1"].iter().enumerate() {
            let rtype = if data.contains(':') { "AAAA" } else { "A" };
            let rec = |ttl| Record::parse(owner, ttl, rtype, data).unwrap();
            alphabet.push(UpdateOp::Add(rec(300 + i as u32)));
            alphabet.push(UpdateOp::Delete(rec(600)));
        }
        alphabet.push(UpdateOp::DeleteRrset {
            owner: Owner::parse(owner).unwrap(),
            rtype: RType(1),
        });
        let mut groups: Vec<Vec<UpdateOp>> = vec![Vec::new()];
        let mut last = groups.clone();
        for _ in 0..4 {
            last = last
                .iter()
                .flat_map(|g| {
                    alphabet.iter().map(move |op| {
                        let mut g = g.clone();
                        g.push(op.clone());
                        g
                    })
                })
                .collect();
            groups.extend(last.iter().cloned());
        }
        assert_eq!(groups.len(), 1 + 7 + 49 + 343 + 2401);
        let mut seen_both = false;
        for g in &groups {
            let (a, b) = (group_change_pairwise(g), group_change_sets(g));
            assert_eq!(a, b, "{g:?}");
            seen_both |= a.added > 0 && a.deleted > 0;
        }
        assert!(seen_both);
        // A group longer than PAIRWISE_UP_TO goes through the sets, and
        // counts the same: 20 distinct adds, 3 of them also deleted.
        let many: Vec<UpdateOp> = (0..20)
            .map(|i| {
                UpdateOp::Add(Record::parse(owner, 300, "A", &format!("192.0.2.{i}")).unwrap())
            })
            .chain((0..3).map(|i| {
                UpdateOp::Delete(Record::parse(owner, 300, "A", &format!("192.0.2.{i}")).unwrap())
            }))
            .collect();
        let ops = vec![ZoneOps {
            zone: ZoneId(0),
            groups: vec![OwnerGroup {
                owner: Owner::parse(owner).unwrap(),
                ops: many.clone(),
            }],
        }];
        let want = ZoneChange {
            deleted: 0,
            added: 17,
        };
        assert_eq!(zone_changes(&ops)[&ZoneId(0)], want);
        assert_eq!(group_change_pairwise(&many), want);
    }

    #[test]
    fn a_ttl_change_is_no_delete_and_a_replaced_address_is_one_delete_and_one_add() {
        let rec = |owner: &str, ttl, data: &str| Record::parse(owner, ttl, "A", data).unwrap();
        let owner = Owner::parse("a.example.test.").unwrap();
        let ops = vec![ZoneOps {
            zone: ZoneId(0),
            groups: vec![OwnerGroup {
                owner,
                ops: vec![
                    UpdateOp::Delete(rec("a.example.test.", 300, "192.0.2.1")),
                    UpdateOp::Delete(rec("a.example.test.", 300, "192.0.2.2")),
                    UpdateOp::Add(rec("a.example.test.", 600, "192.0.2.1")),
                    UpdateOp::Add(rec("a.example.test.", 600, "192.0.2.3")),
                ],
            }],
        }];
        assert_eq!(
            zone_changes(&ops)[&ZoneId(0)],
            ZoneChange {
                deleted: 1,
                added: 1
            }
        );
    }
}
