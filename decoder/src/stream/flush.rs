//! A flush, step by step: the decision order of one batch, sans-IO.
//!
//! # Why
//!
//! A batch becomes DNS operations and new row state in a fixed order, and
//! the order is what makes a crash harmless: the UPDATEs are dispatched
//! *before* the row state that planned them is written, so a crash between
//! the two leaves the old state, and the replay plans the very same
//! operations again. The order used to be written out in the driver,
//! between SQL calls; here the core walks it and the driver only does the
//! I/O each step names.
//!
//! ```text
//!  batch ─▶ map (decoder::mapping) ─▶ Find      ──▶ handle_found
//!           what to look up first:   (rows of truncated sources, rows
//!                                     waiting for an address, names below
//!                                     a DNAME)
//!        ─▶ LoadState  (rows, owners)           ──▶ handle_loaded
//!        ─▶ plan (decoder::plan), guard (decoder::guard):
//!              CountRecords (suspect zones)     ──▶ handle_counted
//!              AskRelease (a held transaction)  ──▶ handle_release
//!              Halt (a mass delete, a change without a key)
//!        ─▶ Dispatch (segments ready)           ──▶ handle_dispatched
//!        ─▶ WriteState (outcome, zone refs)     ──▶ handle_flushed
//! ```
//!
//! While a flush waits for an answer, [`Stream::poll_action`] asks nothing
//! else: a flush is never interleaved with a rejection or a checkpoint.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use super::reject::Rejecting;
use super::{Action, Batch, Item, Stream};
use crate::guard::{self, MassDelete, Segment, Verdict};
use crate::mapping::source::zones_table::RefEdit;
use crate::mapping::{self, MapError, Mapping, RowKey, RowUpdate};
use crate::plan::{Loaded, NodeKey, Outcome, PlanLimits, Planner, RowRef, SourceId, Waiting};
use crate::{Lsn, ZoneId, Zones};

/// What a flush plans with: each source's mapping (by [`SourceId`]), the
/// zones (whose references a zones table's changes move) and the plan's
/// limits.
pub struct Planning {
    /// The mappings, by [`SourceId`].
    pub mappings: Vec<Box<dyn Mapping>>,
    /// The zones.
    pub zones: Zones,
    /// The limits the plan enforces.
    pub limits: PlanLimits,
}

impl fmt::Debug for Planning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sources: Vec<&str> = self.mappings.iter().map(|m| m.source()).collect();
        f.debug_struct("Planning")
            .field("sources", &sources)
            .field("zones", &self.zones.len())
            .finish_non_exhaustive()
    }
}

/// What to look up before the row state can be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Find {
    /// Sources truncated in the batch: every row the row state holds of
    /// each leaves DNS ([`Found::truncated`]).
    pub truncated: Vec<SourceId>,
    /// Owners that may get an address in the batch: the rows waiting for
    /// one there ([`Found::waiting`]).
    pub targets: Vec<NodeKey>,
    /// Owners of DNAMEs the batch adds: the names the row state holds
    /// below them ([`Found::below`]).
    pub dnames: Vec<NodeKey>,
}

/// The answers to a [`Find`].
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// Every row the row state holds of each truncated source.
    pub truncated: Vec<(SourceId, Vec<RowKey>)>,
    /// The rows waiting for an address at the targets.
    pub waiting: Vec<Waiting>,
    /// The names below the DNAMEs.
    pub below: Vec<NodeKey>,
}

/// The row state to read: the rows the batch changes and every
/// contribution at the owners they touch (see [`Loaded`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateRead {
    /// The rows.
    pub rows: Vec<RowRef>,
    /// The owners.
    pub owners: Vec<NodeKey>,
}

/// Operations to hand the zones' streams, in order.
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// The segments ready to send (the guard keeps an unfinished deleting
    /// transaction's parts back).
    pub segments: Vec<Segment>,
    /// Transactions over the guard's threshold that an operator released
    /// (worth a line in the log).
    pub released: Vec<MassDelete>,
}

/// The row state a dispatched batch leaves, to write (uncommitted until
/// its checkpoint).
#[derive(Debug, Clone)]
pub struct WriteState {
    /// The new row state, refusals and what else the plan found.
    pub outcome: Outcome,
    /// The edits of the zones tables' references.
    pub ref_edits: Vec<RefEdit>,
    /// The end of the last transaction the batch completes (`None`: it
    /// ends inside a transaction).
    pub end: Option<Lsn>,
    /// How many changes and truncates the batch held.
    pub rows: usize,
    /// Records the row state should have held and did not (see
    /// [`Planner::inconsistencies`]).
    pub inconsistencies: usize,
    /// Rows that wait for an MX or SRV target's address (a rejection's):
    /// recorded after the row state is written, which discards what they
    /// waited for before.
    pub waiting: Vec<Waiting>,
}

/// Why the stream stops at a flush, before anything of its batch is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Halt {
    /// A transaction deletes too much of a zone (and no operator released
    /// it).
    MassDelete(MassDelete),
    /// A change cannot be mapped at all.
    Unmappable(MapError),
}

/// One step of a flush, in stream order.
#[derive(Debug)]
pub(super) enum Step {
    Row(SourceId, RowUpdate),
    Truncate(SourceId, Lsn),
    Commit(Lsn),
}

impl Step {
    fn update(&self) -> Option<&RowUpdate> {
        match self {
            Step::Row(_, u) => Some(u),
            _ => None,
        }
    }
}

/// What the flush waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Awaiting {
    Found,
    /// A rejection's look-up (see [`super::reject`]).
    Producers,
    Loaded,
    Counted,
    Release(Lsn),
    Dispatched,
    Flushed,
}

/// The flush in progress (owned by the [`Stream`]).
#[derive(Debug)]
pub(super) struct Flush {
    /// The next action, until polled.
    pub(super) next: Option<Action>,
    pub(super) awaiting: Awaiting,
    pub(super) steps: Vec<Step>,
    ref_edits: Vec<RefEdit>,
    pub(super) rows: usize,
    /// The open transaction's commit LSN, when the batch ends inside it.
    open_lsn: Option<Lsn>,
    waiting: Vec<Waiting>,
    // After planning.
    segments: Vec<Segment>,
    open: bool,
    end: Option<Lsn>,
    outcome: Option<Outcome>,
    inconsistencies: usize,
    counts: BTreeMap<ZoneId, usize>,
    /// The transaction the guard holds, while asking for its release.
    held: Option<MassDelete>,
    /// A rejection of refused rows rather than a batch's flush: not judged
    /// by the guard, and ending at [`Stream::rejection_end`].
    pub(super) rejecting: Option<Rejecting>,
}

impl Flush {
    fn new(steps: Vec<Step>, ref_edits: Vec<RefEdit>, rows: usize, open_lsn: Option<Lsn>) -> Flush {
        Flush {
            next: None,
            awaiting: Awaiting::Found,
            steps,
            ref_edits,
            rows,
            open_lsn,
            waiting: Vec::new(),
            segments: Vec::new(),
            open: false,
            end: None,
            outcome: None,
            inconsistencies: 0,
            counts: BTreeMap::new(),
            held: None,
            rejecting: None,
        }
    }

    /// A rejection (see [`super::reject`]), awaiting `awaiting` first.
    pub(super) fn rejecting(rejecting: Rejecting, awaiting: Awaiting) -> Flush {
        Flush {
            awaiting,
            rejecting: Some(rejecting),
            ..Flush::new(Vec::new(), Vec::new(), 0, None)
        }
    }

    fn updates(&self) -> impl Iterator<Item = &RowUpdate> {
        self.steps.iter().filter_map(Step::update)
    }

    pub(super) fn expect(&self, awaiting: Awaiting) {
        debug_assert_eq!(
            self.awaiting, awaiting,
            "the driver answered a flush step it was not asked"
        );
    }
}

/// Maps a batch's changes to row updates (what each row wants now); a
/// zones table's changes move the zones' references, which later rows
/// resolve against.
fn map(planning: &mut Planning, items: Vec<Item>) -> Result<(Vec<Step>, Vec<RefEdit>), MapError> {
    let mut steps = Vec::with_capacity(items.len());
    let mut ref_edits = Vec::new();
    for item in items {
        match item {
            Item::Commit(end) => steps.push(Step::Commit(end)),
            Item::Truncate(source, lsn) => steps.push(Step::Truncate(source, lsn)),
            Item::Change(source, change) => {
                let Some(mapping) = planning.mappings.get(source.index()) else {
                    // A source the driver resolved is one of these.
                    debug_assert!(false, "no mapping for {source:?}");
                    continue;
                };
                for u in mapping::row_updates(mapping.as_ref(), &change, &planning.zones)? {
                    steps.push(Step::Row(source, u));
                }
                if let Some(table) = mapping.zones_table() {
                    ref_edits.extend(table.follow(&change, planning.zones.refs_mut()));
                }
            }
        }
    }
    Ok((steps, ref_edits))
}

impl Stream {
    /// Starts the flush of `batch`: maps it and asks for its first
    /// look-ups (or halts on a change that cannot be mapped).
    pub(super) fn start_flush(&mut self, batch: Batch) -> Action {
        let (steps, ref_edits) = match map(&mut self.planning, batch.items) {
            Ok(mapped) => mapped,
            Err(e) => return Action::Halt(Halt::Unmappable(e)),
        };
        let mut flush = Flush::new(steps, ref_edits, batch.rows, batch.open);
        let mut truncated = Vec::new();
        for step in &flush.steps {
            if let Step::Truncate(source, _) = step {
                if !truncated.contains(source) {
                    truncated.push(*source);
                }
            }
        }
        let find = Find {
            truncated,
            targets: Planner::address_owners(flush.updates()),
            dnames: Planner::dname_owners(flush.updates()),
        };
        flush.awaiting = Awaiting::Found;
        self.flush = Some(flush);
        Action::Find(find)
    }

    /// The flush's next action, if it has one to give (`Some(None)`: it
    /// waits for the driver's answer; `None`: no flush in progress).
    pub(super) fn poll_flush(&mut self) -> Option<Option<Action>> {
        let flush = self.flush.as_mut()?;
        let next = flush.next.take();
        if matches!(next, Some(Action::Halt(_))) {
            self.flush = None;
        }
        Some(next)
    }

    /// The answers to an [`Action::Find`]: the flush then asks for the row
    /// state ([`Action::LoadState`]).
    pub fn handle_found(&mut self, found: Found) {
        let Some(flush) = self.flush.as_mut() else {
            debug_assert!(false, "a flush step answered with no flush in progress");
            return;
        };
        flush.expect(Awaiting::Found);
        // The rows the batch changes, then every row a TRUNCATE removes,
        // then the rows waiting for an address the batch may give.
        let mut seen = HashSet::new();
        let mut rows: Vec<RowRef> = flush
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Row(source, u) => Some((*source, u.key.clone())),
                _ => None,
            })
            .filter(|r| seen.insert(r.clone()))
            .collect();
        for (source, keys) in found.truncated {
            for key in keys {
                if seen.insert((source, key.clone())) {
                    rows.push((source, key));
                }
            }
        }
        let mut owners = Planner::wanted_nodes(&self.planning.zones, flush.updates());
        for w in &found.waiting {
            rows.push(w.row.clone());
            owners.extend(w.records.iter().map(|d| (d.zone, d.record.owner.clone())));
        }
        owners.extend(found.below);
        flush.waiting = found.waiting;
        flush.awaiting = Awaiting::Loaded;
        flush.next = Some(Action::LoadState(StateRead { rows, owners }));
    }

    /// The row state of an [`Action::LoadState`]: the flush plans the batch
    /// (net operations per transaction and zone, and refusals), then the
    /// guard judges it.
    pub fn handle_loaded(&mut self, loaded: Loaded) {
        let Some(flush) = self.flush.as_mut() else {
            debug_assert!(false, "a flush step answered with no flush in progress");
            return;
        };
        flush.expect(Awaiting::Loaded);
        let mut planner = Planner::new(&self.planning.zones, &self.planning.limits, loaded);
        planner.add_waiting(std::mem::take(&mut flush.waiting));
        let mut lsn = flush.open_lsn.unwrap_or_default();
        let mut open = false;
        let mut end = None;
        let mut segments: Vec<Segment> = Vec::new();
        for step in std::mem::take(&mut flush.steps) {
            match step {
                Step::Row(source, update) => {
                    lsn = update.lsn;
                    open = true;
                    planner.apply(source, update);
                }
                Step::Truncate(source, at) => {
                    lsn = at;
                    open = true;
                    planner.truncate(source, at);
                }
                Step::Commit(e) => {
                    end = Some(e);
                    segments.push((lsn, planner.end_segment()));
                    open = false;
                }
            }
        }
        if open {
            // A transaction continuing past this batch.
            segments.push((lsn, planner.end_segment()));
        }
        flush.inconsistencies = planner.inconsistencies();
        flush.outcome = Some(planner.finish());
        flush.segments = segments;
        flush.open = open;
        flush.end = end;
        if flush.rejecting.is_some() {
            // What refused rows held leaves DNS whatever its size: the
            // guard judges transactions, and these were judged already.
            flush.awaiting = Awaiting::Dispatched;
            flush.next = Some(Action::Dispatch(Dispatch {
                segments: std::mem::take(&mut flush.segments),
                released: Vec::new(),
            }));
            return;
        }
        let suspects = guard::suspects(&self.guards, &flush.segments, &self.carry);
        if suspects.is_empty() {
            self.judge();
        } else {
            flush.awaiting = Awaiting::Counted;
            flush.next = Some(Action::CountRecords(suspects));
        }
    }

    /// How many records the row state holds of each zone an
    /// [`Action::CountRecords`] named.
    pub fn handle_counted(&mut self, records: BTreeMap<ZoneId, usize>) {
        let Some(flush) = self.flush.as_mut() else {
            debug_assert!(false, "a flush step answered with no flush in progress");
            return;
        };
        flush.expect(Awaiting::Counted);
        flush.counts = records;
        self.judge();
    }

    /// Whether an operator released the transaction of an
    /// [`Action::AskRelease`]: it is then judged again, or the flush halts.
    pub fn handle_release(&mut self, lsn: Lsn, released: bool) {
        let Some(flush) = self.flush.as_mut() else {
            debug_assert!(false, "a flush step answered with no flush in progress");
            return;
        };
        flush.expect(Awaiting::Release(lsn));
        if released {
            self.released.insert(lsn);
            self.judge();
        } else if let Some(held) = flush.held.take() {
            flush.next = Some(Action::Halt(Halt::MassDelete(held)));
        }
    }

    /// The mass-delete guard's judgement: the parts ready go to
    /// [`Action::Dispatch`]; a held transaction is asked about, once.
    fn judge(&mut self) {
        let Some(flush) = self.flush.as_mut() else {
            debug_assert!(false, "a flush step answered with no flush in progress");
            return;
        };
        match guard::judge(
            &self.guards,
            &flush.segments,
            &self.carry,
            flush.open,
            &flush.counts,
            &self.released,
        ) {
            Ok(Verdict { carry, released }) => {
                self.carry = carry;
                let segments = std::mem::take(&mut flush.segments);
                let ready = guard::ready_parts(
                    &mut self.held,
                    segments,
                    flush.open,
                    &self.carry,
                    &self.guards,
                );
                flush.awaiting = Awaiting::Dispatched;
                flush.next = Some(Action::Dispatch(Dispatch {
                    segments: ready,
                    released,
                }));
            }
            Err(held) => {
                flush.awaiting = Awaiting::Release(held.lsn);
                flush.next = Some(Action::AskRelease(held.lsn));
                flush.held = Some(held);
            }
        }
    }

    /// The segments of an [`Action::Dispatch`] are with the zones' streams
    /// (sent or queued): the flush asks to write the row state.
    pub fn handle_dispatched(&mut self) {
        let Some(flush) = self.flush.as_mut() else {
            debug_assert!(false, "a flush step answered with no flush in progress");
            return;
        };
        flush.expect(Awaiting::Dispatched);
        flush.awaiting = Awaiting::Flushed;
        let (end, waiting) = match flush.rejecting.as_mut() {
            // A batch of its own, which the checkpoint covering the
            // refused transactions covers too.
            Some(r) => (self.ledger.rejection_end(), std::mem::take(&mut r.waiting)),
            None => (if flush.open { None } else { flush.end }, Vec::new()),
        };
        flush.next = Some(Action::WriteState(WriteState {
            outcome: flush.outcome.take().unwrap_or_default(),
            ref_edits: std::mem::take(&mut flush.ref_edits),
            end,
            rows: flush.rows,
            inconsistencies: flush.inconsistencies,
            waiting,
        }));
    }
}
