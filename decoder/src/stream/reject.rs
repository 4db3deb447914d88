//! A rejection, step by step: the rows whose records a server refused for
//! their content leave the row state (or wait for an MX or SRV target's
//! address), sans-IO.
//!
//! # Why
//!
//! A server refuses an owner group (a CNAME beside other data, an MX whose
//! target has no address under BIND's `check-integrity`…) after pg2dns
//! sent it, so the planner could not refuse it before. Promise 8 still
//! holds: the rows that produced the refused records are rejected naming
//! their real key, zone, owner, LSN and the server's answer; whatever else
//! they contributed leaves DNS, as for any refused row; and nothing is
//! recorded as sent that was not. Which rows, why, what is dispatched and
//! what is written are decided here; the driver only looks up and writes.
//!
//! ```text
//!  refusals heard ─▶ FindProducers (refused records, in-zone MX/SRV
//!                    targets)                     ──▶ handle_producers
//!                 ─▶ LoadState (the producers' rows) ──▶ handle_loaded
//!                 ─▶ plan: each row refused (ServerRefused, or
//!                    WaitingForAddress when its target has no address)
//!                 ─▶ Dispatch (what else the rows held leaves DNS)
//!                 ─▶ WriteState (end: Stream::rejection_end; the rows
//!                    that wait for an address)        ──▶ handle_flushed
//! ```
//!
//! It runs as a flush of its own (a batch of the store that the checkpoint
//! covering the refused transactions covers too), before any checkpoint:
//! the ledger commits nothing while a refusal waits to be rejected.

use std::collections::{BTreeMap, HashSet};

use super::flush::{Awaiting, Flush, StateRead, Step};
use super::{Action, Stream};
use crate::checkpoint::ServerRefusal;
use crate::mapping::{Desired, RowUpdate};
use crate::plan::{NodeKey, Refusal, Refused, RowRef, Waiting};
use crate::rdata::RType;
use crate::session::Rcode;
use crate::update::UpdateOp;
use crate::{Lsn, Owner, Record, ZoneId};

/// What to look up for a rejection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FindProducers {
    /// The refused records (each an addition of a refused group), by
    /// index: [`Producers::rows`] names them so.
    pub records: Vec<(ZoneId, Record)>,
    /// The in-zone targets of refused MX and SRV records: which of them
    /// the row state gives an address ([`Producers::addressed`]).
    pub targets: Vec<NodeKey>,
}

/// The answers to a [`FindProducers`].
#[derive(Debug, Clone, Default)]
pub struct Producers {
    /// Each row of the row state that contributes a refused record, with
    /// the index of that record in [`FindProducers::records`].
    pub rows: Vec<(RowRef, usize)>,
    /// The targets that have an address record in the row state.
    pub addressed: Vec<NodeKey>,
}

/// The rejection's own part of a [`Flush`].
#[derive(Debug, Default)]
pub(super) struct Rejecting {
    /// The refused records, with the transaction and answer of each.
    records: Vec<(ZoneId, Record, Lsn, Rcode)>,
    /// Each record's in-zone MX/SRV target (see [`missing_target`]).
    targets: Vec<Option<NodeKey>>,
    /// The rows that wait for an address once rejected.
    pub(super) waiting: Vec<Waiting>,
}

/// For an MX or SRV record whose target is in its own zone: that target
/// (BIND's `check-integrity` refuses the record when the target has no
/// address record).
fn in_zone_target(zones: &crate::Zones, zone: ZoneId, record: &Record) -> Option<Owner> {
    if !matches!(record.rtype, RType::MX | RType::SRV) {
        return None;
    }
    let target = Owner::from_name(crate::rdata::target(record.rtype, record.rdata.as_wire())?);
    (zones.zone_for(&target) == Some(zone)).then_some(target)
}

impl Stream {
    /// Starts the rejection of the rows behind `refused`: asks which rows
    /// produced the refused records, and which MX/SRV targets have an
    /// address.
    pub(super) fn start_reject(&mut self, refused: Vec<ServerRefusal>) -> Action {
        let mut rejecting = Rejecting::default();
        let mut targets: Vec<NodeKey> = Vec::new();
        for r in refused {
            for op in r.group.ops {
                if let UpdateOp::Add(record) = op {
                    let target =
                        in_zone_target(&self.planning.zones, r.zone, &record).map(|t| (r.zone, t));
                    if let Some(t) = &target {
                        if !targets.contains(t) {
                            targets.push(t.clone());
                        }
                    }
                    rejecting.targets.push(target);
                    rejecting.records.push((r.zone, record, r.lsn, r.rcode));
                }
            }
        }
        let find = FindProducers {
            records: rejecting
                .records
                .iter()
                .map(|(zone, record, _, _)| (*zone, record.clone()))
                .collect(),
            targets,
        };
        self.flush = Some(Flush::rejecting(rejecting, Awaiting::Producers));
        Action::FindProducers(find)
    }

    /// The answers to an [`Action::FindProducers`]: each producing row is
    /// refused once (for the first refused record it produced), waiting
    /// for an address when the record is an MX or SRV whose in-zone target
    /// has none; the rejection then asks for those rows' state.
    pub fn handle_producers(&mut self, producers: Producers) {
        let Some(flush) = self.flush.as_mut() else {
            debug_assert!(
                false,
                "a rejection step answered with no rejection in progress"
            );
            return;
        };
        flush.expect(Awaiting::Producers);
        let Some(rejecting) = flush.rejecting.as_mut() else {
            debug_assert!(false, "a flush answered as a rejection");
            return;
        };
        let addressed: HashSet<NodeKey> = producers.addressed.into_iter().collect();
        let mut seen = HashSet::new();
        let mut rows: Vec<RowRef> = Vec::new();
        // Sorted by the record's index, so that the rows go in the order
        // of their refusals (and the segment takes the newest LSN last).
        let mut by_record: BTreeMap<usize, Vec<RowRef>> = BTreeMap::new();
        for (row, i) in producers.rows {
            by_record.entry(i).or_default().push(row);
        }
        for (i, refs) in by_record {
            let Some((zone, record, lsn, rcode)) = rejecting.records.get(i) else {
                debug_assert!(false, "a producer of record #{i}, which was not asked");
                continue;
            };
            let target = rejecting
                .targets
                .get(i)
                .cloned()
                .flatten()
                .filter(|t| !addressed.contains(t));
            for row in refs {
                if !seen.insert(row.clone()) {
                    continue;
                }
                let reason = match &target {
                    Some((_, owner)) => {
                        rejecting.waiting.push(Waiting {
                            row: row.clone(),
                            lsn: *lsn,
                            records: vec![Desired {
                                zone: *zone,
                                record: record.clone(),
                            }],
                            target: (*zone, owner.clone()),
                        });
                        Refusal::WaitingForAddress {
                            rcode: *rcode,
                            record: record.to_string(),
                            target: owner.clone(),
                        }
                    }
                    None => Refusal::ServerRefused {
                        rcode: *rcode,
                        record: record.to_string(),
                    },
                };
                rows.push(row.clone());
                flush.steps.push(Step::Row(
                    row.0,
                    RowUpdate {
                        key: row.1,
                        lsn: *lsn,
                        image: Err(Refused {
                            zone: Some(*zone),
                            owner: Some(record.owner.clone()),
                            reason: Box::new(reason),
                        }),
                    },
                ));
            }
        }
        flush.rows = flush.steps.len();
        flush.awaiting = Awaiting::Loaded;
        // Only the rows: what else they held at their owners is theirs
        // alone to delete (the planner counts the producers it read).
        flush.next = Some(Action::LoadState(StateRead {
            rows,
            owners: Vec::new(),
        }));
    }
}
