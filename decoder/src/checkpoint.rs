//! The checkpoint ledger: which transaction end the stream may checkpoint,
//! and then confirm to the slot, sans-IO.
//!
//! # Why
//!
//! The slot's confirmed LSN is the one promise pg2dns cannot take back:
//! PostgreSQL never sends again what it was told is done. So a position is
//! confirmed only behind a *checkpoint* (row state and progress committed in
//! one transaction), and a checkpoint covers a transaction only when every
//! zone it touched acknowledged it. The stream core ([`crate::stream`],
//! driven by `streamer/src/pipeline.rs`) flushes transactions in *batches*, each dispatched to the zones that it
//! touches and numbered by the store; the zones answer in order, each
//! independently. This ledger keeps what was dispatched and what came back,
//! and decides the newest checkpoint that is safe:
//!
//! ```text
//!  handle_received(end) ──┐   a committed transaction to cover
//!  handle_dispatched(b) ──┤   a flushed batch: its number, end, marks of the zones it touched
//!  handle_acked(z, upto) ─┼─▶ Ledger ─▶ poll_checkpoint() → (batch, end)
//!  handle_refused(r) ─────┤                │  the driver commits it, then
//!  handle_written(seq) ───┘                ▼
//!                            handle_committed(cp, durability) → LSN to confirm
//!                            handle_wal_flushed(lsn)          → LSN to confirm
//! ```
//!
//! A checkpoint may cover batch *b* (and set the progress to its end) when:
//! - *b* and every earlier batch were acknowledged by every zone as far as
//!   each dispatched at the time (the batch's *marks*);
//! - *b* ends at a transaction boundary (a batch cut inside a large
//!   transaction has no end: the progress cannot stop half-way);
//! - no refusal of a server waits to be turned into rejections (the refused
//!   rows must leave the row state in the same checkpoint);
//! - the store's open transaction holds no write of a later batch (the
//!   COMMIT would make that batch's state durable before DNS has it).
//!
//! What the checkpoint then lets the slot confirm waits for the WAL flush of
//! its commit (see [`crate::confirm`]). The clock (how long a checkpoint may
//! wait for others to share it) is the stream core's.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};

use crate::confirm::Confirmations;
use crate::session::Rcode;
use crate::update::OwnerGroup;
use crate::{Lsn, ZoneId};

/// The number of a flushed batch, as the store numbers them (upwards, from
/// 1 in each session).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchSeq(pub u64);

impl fmt::Display for BatchSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A flushed batch, not yet checkpointed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentBatch {
    /// Its number.
    pub seq: BatchSeq,
    /// The end LSN of its last transaction, when it ends at a transaction
    /// boundary: a checkpoint through it may set the progress there.
    pub end: Option<Lsn>,
    /// The dispatch count of each zone it dispatched to, once it was
    /// dispatched: it is acknowledged when each of those zones acknowledged
    /// that far. Zones it did not touch are left out (a batch costs what it
    /// touched, not the zone count); the earlier batches, acknowledged
    /// first, cover them.
    pub marks: Vec<(ZoneId, u64)>,
}

/// What a checkpoint may cover now: the batches up to `batch`, with the
/// progress set to `end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The newest batch it covers.
    pub batch: BatchSeq,
    /// The transaction end it sets the progress to.
    pub end: Lsn,
}

/// An owner group a server refused for its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerRefusal {
    /// The zone whose server refused it.
    pub zone: ZoneId,
    /// The commit LSN of the transaction it came from.
    pub lsn: Lsn,
    /// The refused operations.
    pub group: OwnerGroup,
    /// The server's answer.
    pub rcode: Rcode,
}

/// How a checkpoint's COMMIT went to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The COMMIT waited for its WAL flush.
    Flushed,
    /// The COMMIT did not wait: its commit record ends at or before `wal`,
    /// and the server's WAL was flushed up to `flushed` at that moment.
    Unflushed {
        /// At or past the end of the commit record.
        wal: Lsn,
        /// The server's flush position then.
        flushed: Lsn,
    },
}

/// The stream's checkpoint bookkeeping for one session.
#[derive(Debug)]
pub struct Ledger {
    /// Each zone's acknowledged dispatch count (by `ZoneId`).
    acked: Vec<u64>,
    /// The flushed batches not yet checkpointed, oldest first.
    sent: VecDeque<SentBatch>,
    /// Refusals whose rows are still to be rejected.
    refused: Vec<ServerRefusal>,
    /// The newest batch whose writes are in the store's open transaction.
    written: Option<BatchSeq>,
    /// The end of the newest transaction received and not checkpointed,
    /// and how many such transactions there are.
    pending: Option<(Lsn, usize)>,
    /// The end of the last checkpoint: transactions that commit before it
    /// are done.
    progress: Lsn,
    /// Checkpoints committed but not known to be flushed.
    confirmations: Confirmations,
    /// Where [`Ledger::poll_checkpoint`] stopped: the first batch not known
    /// acknowledged, and how many of its marks are (every batch before it
    /// is). Acknowledgements only grow, so the next call resumes there:
    /// scanning a batch that touched 50,000 zones from its start at every
    /// acknowledgement made one such transaction quadratic.
    scan: (AtomicU64, AtomicUsize),
}

impl Ledger {
    /// A session over `zones` zones, starting from the durable `progress`.
    pub fn new(zones: usize, progress: Lsn) -> Ledger {
        Ledger {
            acked: vec![0; zones],
            sent: VecDeque::new(),
            refused: Vec::new(),
            written: None,
            pending: None,
            progress,
            confirmations: Confirmations::default(),
            scan: (AtomicU64::new(0), AtomicUsize::new(0)),
        }
    }

    /// A transaction that ends at `end` was received to be applied: a
    /// checkpoint is pending until one covers it. Returns whether it is the
    /// first one pending (the driver's checkpoint clock starts with it).
    pub fn handle_received(&mut self, end: Lsn) -> bool {
        let first = self.pending.is_none();
        let count = self.pending.map_or(0, |(_, n)| n);
        self.pending = Some((end, count + 1));
        first
    }

    /// A batch was flushed: its dispatches handed to the zones and its row
    /// state written or held back. Batches come in the order of their
    /// numbers.
    pub fn handle_dispatched(&mut self, batch: SentBatch) {
        debug_assert!(self.sent.back().is_none_or(|b| b.seq < batch.seq));
        debug_assert!(batch
            .marks
            .iter()
            .all(|(z, _)| z.index() < self.acked.len()));
        self.sent.push_back(batch);
    }

    /// A zone acknowledged its dispatches up to `upto` (counts only grow).
    /// Returns the zone's acknowledged count now. A zone outside the
    /// session's (a driver bug) holds nothing: it has no batch to hold.
    pub fn handle_acked(&mut self, zone: ZoneId, upto: u64) -> u64 {
        debug_assert!(zone.index() < self.acked.len(), "unknown zone {zone:?}");
        match self.acked.get_mut(zone.index()) {
            Some(acked) => {
                *acked = (*acked).max(upto);
                *acked
            }
            None => 0,
        }
    }

    /// A server refused an owner group for its content: no checkpoint until
    /// the driver took it (see [`Ledger::take_refused`]).
    pub fn handle_refused(&mut self, refusal: ServerRefusal) {
        self.refused.push(refusal);
    }

    /// The refusals waiting to be turned into rejections, handed to the
    /// driver, which rejects their rows in a batch of their own. That batch
    /// takes [`Ledger::rejection_end`] as its end and writes its state at
    /// once (see [`Ledger::handle_written`]), so that no checkpoint covers
    /// the refused transactions without it.
    pub fn take_refused(&mut self) -> Vec<ServerRefusal> {
        std::mem::take(&mut self.refused)
    }

    /// Whether refusals wait to be taken.
    pub fn refusals_pending(&self) -> bool {
        !self.refused.is_empty()
    }

    /// The end a batch of rejections takes: that of the newest batch (a
    /// checkpoint through it covers the same transactions), or the progress
    /// when every batch is checkpointed.
    pub fn rejection_end(&self) -> Option<Lsn> {
        self.sent.back().map_or(Some(self.progress), |b| b.end)
    }

    /// The store's open transaction holds the writes of the batches up to
    /// `written` (`None`: nothing since the last checkpoint).
    pub fn handle_written(&mut self, written: Option<BatchSeq>) {
        self.written = written;
    }

    /// The newest checkpoint that may be committed now, if any (see the
    /// module documentation). It stays until [`Ledger::handle_committed`].
    pub fn poll_checkpoint(&self) -> Option<Checkpoint> {
        if !self.refused.is_empty() {
            return None;
        }
        let mut newest = None;
        let scan_seq = BatchSeq(self.scan.0.load(Relaxed));
        let scan_at = self.scan.1.load(Relaxed);
        for b in &self.sent {
            let from = match b.seq.cmp(&scan_seq) {
                std::cmp::Ordering::Less => b.marks.len(),
                std::cmp::Ordering::Equal => scan_at.min(b.marks.len()),
                std::cmp::Ordering::Greater => 0,
            };
            if let Some(waiting) = b.marks[from..]
                .iter()
                .position(|(z, m)| self.acked(*z) < *m)
            {
                self.scan.0.store(b.seq.0, Relaxed);
                self.scan.1.store(from + waiting, Relaxed);
                break;
            }
            self.scan.0.store(b.seq.0, Relaxed);
            self.scan.1.store(b.marks.len(), Relaxed);
            if let Some(end) = b.end {
                newest = Some(Checkpoint { batch: b.seq, end });
            }
        }
        newest.filter(|cp| self.written.is_none_or(|w| w <= cp.batch))
    }

    /// The checkpoint `cp` (from [`Ledger::poll_checkpoint`]) committed:
    /// its batches leave the ledger, the progress moves to its end, and the
    /// store's transaction is empty. Returns the LSN the slot may confirm
    /// now, if any (a commit that did not wait for its flush waits here).
    pub fn handle_committed(&mut self, cp: Checkpoint, durability: Durability) -> Option<Lsn> {
        debug_assert!(cp.end >= self.progress, "the progress never goes back");
        while self.sent.front().is_some_and(|b| b.seq <= cp.batch) {
            self.sent.pop_front();
        }
        self.written = None;
        self.progress = cp.end;
        if self.pending.is_some_and(|(end, _)| end == cp.end) {
            self.pending = None;
        }
        self.confirm_after(cp.end, durability)
    }

    /// Nothing is pending or in flight and the idle slot's progress moved
    /// to `end` with a flushed commit: returns `end`, to confirm.
    pub fn handle_idle_committed(&mut self, end: Lsn) -> Lsn {
        debug_assert!(self.is_idle());
        self.progress = end;
        self.written = None;
        self.confirmations.flushed_checkpoint(end)
    }

    /// The server's WAL is flushed up to `flushed`: the newest checkpoint
    /// end that may now be confirmed, if one waited.
    pub fn handle_wal_flushed(&mut self, flushed: Lsn) -> Option<Lsn> {
        self.confirmations.flushed(flushed)
    }

    /// Whether a committed checkpoint waits for its WAL flush.
    pub fn awaiting_flush(&self) -> bool {
        self.confirmations.waiting()
    }

    /// The end of the newest transaction received and not checkpointed.
    pub fn pending(&self) -> Option<Lsn> {
        self.pending.map(|(end, _)| end)
    }

    /// How many transactions the pending checkpoint covers.
    pub fn pending_transactions(&self) -> usize {
        self.pending.map_or(0, |(_, n)| n)
    }

    /// The end of the last checkpoint.
    pub fn progress(&self) -> Lsn {
        self.progress
    }

    /// The newest flushed batch not checkpointed.
    pub fn newest_batch(&self) -> Option<BatchSeq> {
        self.sent.back().map(|b| b.seq)
    }

    /// Whether nothing is pending, flushed and not checkpointed, or refused.
    pub fn is_idle(&self) -> bool {
        self.pending.is_none() && self.sent.is_empty() && self.refused.is_empty()
    }

    /// A zone's acknowledged dispatch count.
    pub fn acked(&self, zone: ZoneId) -> u64 {
        self.acked.get(zone.index()).copied().unwrap_or(0)
    }

    /// Whether each zone of `marks` acknowledged as far as its mark.
    pub fn acked_through(&self, marks: &[(ZoneId, u64)]) -> bool {
        marks.iter().all(|(z, m)| self.acked(*z) >= *m)
    }

    fn confirm_after(&mut self, end: Lsn, durability: Durability) -> Option<Lsn> {
        match durability {
            Durability::Flushed => Some(self.confirmations.flushed_checkpoint(end)),
            Durability::Unflushed { wal, flushed } => {
                self.confirmations.unflushed_checkpoint(wal, end, flushed)
            }
        }
    }
}

#[cfg(test)]
mod tests;
