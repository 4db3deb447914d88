use proptest::prelude::*;

use super::*;
use crate::Owner;

fn l(raw: u64) -> Lsn {
    Lsn::new(raw)
}

/// Batch `seq` with each zone's dispatch count (by index); zones at 0
/// were not touched and are left out, as the pipeline leaves them.
fn batch(seq: u64, end: Option<u64>, marks: &[u64]) -> SentBatch {
    SentBatch {
        seq: BatchSeq(seq),
        end: end.map(l),
        marks: marks
            .iter()
            .enumerate()
            .filter(|(_, m)| **m > 0)
            .map(|(z, m)| (ZoneId(z as u32), *m))
            .collect(),
    }
}

fn cp(seq: u64, end: u64) -> Checkpoint {
    Checkpoint {
        batch: BatchSeq(seq),
        end: l(end),
    }
}

fn refusal(zone: u32, lsn: u64) -> ServerRefusal {
    ServerRefusal {
        zone: ZoneId(zone),
        lsn: l(lsn),
        group: OwnerGroup {
            owner: Owner::parse("www.example.org.").expect("an owner"),
            ops: Vec::new(),
        },
        rcode: Rcode(5),
    }
}

#[test]
fn nothing_is_checkpointed_before_every_zone_a_batch_touched_acknowledged_it() {
    let mut ledger = Ledger::new(2, l(10));
    ledger.handle_received(l(100));
    ledger.handle_dispatched(batch(1, Some(100), &[1, 1]));
    assert_eq!(ledger.poll_checkpoint(), None);
    ledger.handle_acked(ZoneId(0), 1);
    assert_eq!(ledger.poll_checkpoint(), None, "zone 1 has not answered");
    ledger.handle_acked(ZoneId(1), 1);
    assert_eq!(ledger.poll_checkpoint(), Some(cp(1, 100)));
}

#[test]
fn a_batch_of_many_zones_resumes_its_scan_yet_waits_for_each_zone_in_any_order() {
    // Acknowledgements in an order that leaves a gap behind the scan's
    // resume point: the checkpoint waits for the gap, then the batch after.
    let mut ledger = Ledger::new(5, l(10));
    ledger.handle_received(l(100));
    ledger.handle_dispatched(batch(1, Some(100), &[1, 1, 1, 1, 1]));
    ledger.handle_received(l(200));
    ledger.handle_dispatched(batch(2, Some(200), &[0, 0, 0, 2, 0]));
    for zone in [0, 3, 4] {
        ledger.handle_acked(ZoneId(zone), 1);
        assert_eq!(
            ledger.poll_checkpoint(),
            None,
            "zones 1 and 2 have not answered"
        );
    }
    ledger.handle_acked(ZoneId(2), 1);
    assert_eq!(ledger.poll_checkpoint(), None, "zone 1 has not answered");
    ledger.handle_acked(ZoneId(1), 1);
    assert_eq!(ledger.poll_checkpoint(), Some(cp(1, 100)));
    ledger.handle_acked(ZoneId(3), 2);
    assert_eq!(ledger.poll_checkpoint(), Some(cp(2, 200)));
}

#[test]
fn a_zone_a_batch_never_touched_does_not_hold_its_checkpoint() {
    // Zone 1 had nothing dispatched (mark 0): its silence holds nothing.
    let mut ledger = Ledger::new(2, l(10));
    ledger.handle_received(l(100));
    ledger.handle_dispatched(batch(1, Some(100), &[1, 0]));
    ledger.handle_acked(ZoneId(0), 1);
    assert_eq!(ledger.poll_checkpoint(), Some(cp(1, 100)));
}

#[test]
fn a_batch_without_an_end_is_only_covered_with_the_one_that_ends_its_transaction() {
    let mut ledger = Ledger::new(1, l(10));
    ledger.handle_received(l(100));
    // Batch 1 ends at 100; batch 2 is the first part of a large
    // transaction, batch 3 its end.
    ledger.handle_dispatched(batch(1, Some(100), &[1]));
    ledger.handle_dispatched(batch(2, None, &[2]));
    ledger.handle_acked(ZoneId(0), 2);
    assert_eq!(
        ledger.poll_checkpoint(),
        Some(cp(1, 100)),
        "the progress cannot stop inside the large transaction"
    );
    ledger.handle_received(l(300));
    ledger.handle_dispatched(batch(3, Some(300), &[3]));
    assert_eq!(ledger.poll_checkpoint(), Some(cp(1, 100)));
    ledger.handle_acked(ZoneId(0), 3);
    assert_eq!(ledger.poll_checkpoint(), Some(cp(3, 300)));
}

#[test]
fn an_unacknowledged_batch_holds_every_later_one() {
    let mut ledger = Ledger::new(2, l(10));
    ledger.handle_dispatched(batch(1, Some(100), &[1, 0]));
    ledger.handle_dispatched(batch(2, Some(200), &[1, 1]));
    // Zone 1 acknowledged batch 2, zone 0 has not acknowledged batch 1.
    ledger.handle_acked(ZoneId(1), 1);
    assert_eq!(ledger.poll_checkpoint(), None);
    ledger.handle_acked(ZoneId(0), 1);
    assert_eq!(ledger.poll_checkpoint(), Some(cp(2, 200)));
}

#[test]
fn a_refusal_blocks_every_checkpoint_until_its_rejections_are_written() {
    let mut ledger = Ledger::new(1, l(10));
    ledger.handle_received(l(100));
    ledger.handle_dispatched(batch(1, Some(100), &[1]));
    ledger.handle_refused(refusal(0, 90));
    ledger.handle_acked(ZoneId(0), 1);
    assert_eq!(ledger.poll_checkpoint(), None, "the refusal waits");
    let taken = ledger.take_refused();
    assert_eq!(taken, vec![refusal(0, 90)]);
    assert!(!ledger.refusals_pending());
    // The rejections' batch: the same end, its state written at once.
    assert_eq!(ledger.rejection_end(), Some(l(100)));
    ledger.handle_written(Some(BatchSeq(2)));
    assert_eq!(
        ledger.poll_checkpoint(),
        None,
        "batch 1 alone would commit without the rejections"
    );
    ledger.handle_dispatched(batch(2, Some(100), &[2]));
    assert_eq!(ledger.poll_checkpoint(), None);
    ledger.handle_acked(ZoneId(0), 2);
    assert_eq!(ledger.poll_checkpoint(), Some(cp(2, 100)));
}

#[test]
fn rejections_with_every_batch_checkpointed_take_the_progress_as_their_end() {
    let mut ledger = Ledger::new(1, l(10));
    ledger.handle_received(l(100));
    ledger.handle_dispatched(batch(1, Some(100), &[1]));
    ledger.handle_acked(ZoneId(0), 1);
    assert_eq!(
        ledger.handle_committed(cp(1, 100), Durability::Flushed),
        Some(l(100))
    );
    assert_eq!(ledger.rejection_end(), Some(l(100)));
}

#[test]
fn a_write_of_a_later_batch_in_the_open_transaction_holds_the_checkpoint() {
    let mut ledger = Ledger::new(1, l(10));
    ledger.handle_dispatched(batch(1, Some(100), &[1]));
    ledger.handle_dispatched(batch(2, Some(200), &[2]));
    ledger.handle_acked(ZoneId(0), 1);
    ledger.handle_written(Some(BatchSeq(2)));
    assert_eq!(ledger.poll_checkpoint(), None);
    ledger.handle_written(Some(BatchSeq(1)));
    assert_eq!(ledger.poll_checkpoint(), Some(cp(1, 100)));
}

#[test]
fn a_commit_covers_its_batches_and_clears_the_pending_end_it_reached() {
    let mut ledger = Ledger::new(1, l(10));
    assert!(ledger.handle_received(l(100)), "the first pending");
    ledger.handle_dispatched(batch(1, Some(100), &[1]));
    assert!(!ledger.handle_received(l(200)));
    ledger.handle_dispatched(batch(2, Some(200), &[2]));
    assert_eq!(ledger.pending_transactions(), 2);
    ledger.handle_acked(ZoneId(0), 1);
    let unflushed = Durability::Unflushed {
        wal: l(500),
        flushed: l(400),
    };
    assert_eq!(ledger.handle_committed(cp(1, 100), unflushed), None);
    assert_eq!(ledger.progress(), l(100));
    assert_eq!(ledger.pending(), Some(l(200)), "200 is not covered yet");
    assert!(ledger.awaiting_flush());
    assert_eq!(ledger.handle_wal_flushed(l(500)), Some(l(100)));
    ledger.handle_acked(ZoneId(0), 2);
    assert_eq!(
        ledger.handle_committed(cp(2, 200), Durability::Flushed),
        Some(l(200))
    );
    assert_eq!(ledger.pending(), None);
    assert!(ledger.is_idle());
    assert_eq!(ledger.handle_idle_committed(l(900)), l(900));
    assert_eq!(ledger.progress(), l(900));
}

/// One step of the stream, as the property test drives it.
#[derive(Clone, Debug)]
enum Op {
    /// Flush a batch: up to `txns` whole transactions, then, when `open`,
    /// the first part of the next one; `write` writes its state at once.
    Dispatch {
        txns: usize,
        open: bool,
        write: bool,
    },
    /// A zone acknowledges up to `n` more of its dispatches.
    Ack { zone: usize, n: u64 },
    /// A zone's server refuses a group of its newest dispatch.
    Refuse { zone: usize },
    /// The driver turns the refusals into rejections (a batch of its own).
    Reject,
    /// A read or write of the store puts the held-back batches into the
    /// open transaction.
    Write,
    /// Commit what `poll_checkpoint` allows, waiting for the WAL flush or
    /// not.
    Checkpoint { flushed: bool },
    /// The server's WAL is flushed this far past the last commit.
    Flush,
    /// The process dies: a new ledger from the durable progress.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..3, any::<bool>(), any::<bool>())
            .prop_map(|(txns, open, write)| Op::Dispatch { txns, open, write }),
        4 => (0usize..ZONES, 1u64..4).prop_map(|(zone, n)| Op::Ack { zone, n }),
        1 => (0usize..ZONES).prop_map(|zone| Op::Refuse { zone }),
        1 => Just(Op::Reject),
        1 => Just(Op::Write),
        2 => any::<bool>().prop_map(|flushed| Op::Checkpoint { flushed }),
        1 => Just(Op::Flush),
        1 => Just(Op::Crash),
    ]
}

const ZONES: usize = 3;
/// A dispatch count no zone reaches: a refusal not yet rejected.
const UNREJECTED: u64 = u64::MAX;

/// The stream, the zones and the store around a ledger, with what DNS
/// acknowledged kept apart from the ledger's own counts.
struct Model {
    /// Each transaction's end LSN and the zones it touches, in stream order.
    txns: Vec<(Lsn, Vec<bool>)>,
    ledger: Ledger,
    /// The next transaction to flush (an index into `txns`), and whether
    /// its first part was flushed already.
    next: usize,
    open: bool,
    /// Each zone's dispatches in this session: dispatched and acknowledged.
    dispatched: Vec<u64>,
    /// `dispatched` at the previous batch.
    marked: Vec<u64>,
    acked: Vec<u64>,
    /// For each transaction sent in this session, every (zone, dispatch
    /// count) that must be acknowledged before it is in DNS.
    needs: Vec<Vec<(usize, u64)>>,
    /// The store: its batch numbers, the newest batch written into its
    /// open transaction, its durable progress.
    batch: u64,
    written: Option<BatchSeq>,
    durable: Lsn,
    /// WAL positions: each commit's record ends one past the last.
    wal: Lsn,
    /// What the slot was told it may confirm.
    confirmed: Lsn,
    refusals: usize,
}

impl Model {
    fn new(txns: Vec<(Lsn, Vec<bool>)>) -> Model {
        let mut m = Model {
            needs: vec![Vec::new(); txns.len()],
            txns,
            ledger: Ledger::new(ZONES, Lsn::ZERO),
            next: 0,
            open: false,
            dispatched: vec![0; ZONES],
            marked: vec![0; ZONES],
            acked: vec![0; ZONES],
            batch: 0,
            written: None,
            durable: Lsn::ZERO,
            wal: Lsn::new(1 << 40),
            confirmed: Lsn::ZERO,
            refusals: 0,
        };
        m.restart();
        m
    }

    /// A new session: the stream resumes after the durable progress.
    fn restart(&mut self) {
        self.ledger = Ledger::new(ZONES, self.durable);
        self.next = self.txns.partition_point(|(end, _)| *end <= self.durable);
        self.open = false;
        self.dispatched = vec![0; ZONES];
        self.marked = vec![0; ZONES];
        self.acked = vec![0; ZONES];
        self.batch = 0;
        self.written = None;
        self.refusals = 0;
    }

    /// Dispatches one part of transaction `t` to the zones it touches.
    fn send_part(&mut self, t: usize) {
        for z in 0..ZONES {
            if self.txns[t].1[z] {
                self.dispatched[z] += 1;
                self.needs[t].push((z, self.dispatched[z]));
            }
        }
    }

    fn dispatch(&mut self, txns: usize, open: bool, write: bool) {
        if self.next >= self.txns.len() || (txns == 0 && !open && !self.open) {
            return;
        }
        self.batch += 1;
        let seq = BatchSeq(self.batch);
        let mut end = None;
        let mut left = txns;
        while self.next < self.txns.len() && (left > 0 || self.open) {
            let t = self.next;
            if !self.open {
                self.needs[t].clear();
            }
            self.send_part(t);
            // Its commit is received with its last part.
            self.ledger.handle_received(self.txns[t].0);
            end = Some(self.txns[t].0);
            self.open = false;
            self.next += 1;
            left = left.saturating_sub(1);
        }
        let cut = open && self.next < self.txns.len();
        if cut {
            let t = self.next;
            self.needs[t].clear();
            self.send_part(t);
            self.open = true;
        }
        if write {
            self.written = Some(seq);
        }
        let marks = self.sparse_marks();
        self.ledger.handle_dispatched(SentBatch {
            seq,
            end: if cut { None } else { end },
            marks,
        });
    }

    fn ack(&mut self, z: usize, n: u64) {
        self.acked[z] = (self.acked[z] + n).min(self.dispatched[z]);
        self.ledger.handle_acked(ZoneId(z as u32), self.acked[z]);
    }

    fn refuse(&mut self, z: usize) {
        if self.dispatched[z] == 0 {
            return;
        }
        self.refusals += 1;
        self.ledger.handle_refused(refusal(z as u32, 0));
        // Until its rejections are acknowledged, no transaction sent so
        // far may be checkpointed (the refused one is among them).
        for needs in &mut self.needs[..self.next] {
            if !needs.is_empty() {
                needs.push((z, UNREJECTED));
            }
        }
    }

    /// As the pipeline does: take the refusals, dispatch the rejections'
    /// deletes to the refusing zones, write their state at once.
    fn reject(&mut self) {
        let taken = self.ledger.take_refused();
        if taken.is_empty() {
            return;
        }
        assert_eq!(taken.len(), self.refusals);
        self.refusals = 0;
        self.batch += 1;
        let seq = BatchSeq(self.batch);
        for r in &taken {
            self.dispatched[r.zone.index()] += 1;
        }
        self.written = Some(seq);
        // The rejections repair the refused transactions: those the
        // refusals held need them acknowledged instead.
        let marks = self.dispatched.clone();
        for needs in &mut self.needs[..self.next] {
            if needs.iter().any(|&(_, d)| d == UNREJECTED) {
                needs.retain(|&(_, d)| d != UNREJECTED);
                for r in &taken {
                    let z = r.zone.index();
                    needs.push((z, marks[z]));
                }
            }
        }
        let marks = self.sparse_marks();
        self.ledger.handle_dispatched(SentBatch {
            seq,
            end: self.ledger.rejection_end(),
            marks,
        });
    }

    /// As the pipeline marks a batch: only the zones dispatched to since
    /// the previous batch, with their counts.
    fn sparse_marks(&mut self) -> Vec<(ZoneId, u64)> {
        let marks = (0..ZONES)
            .filter(|&z| self.dispatched[z] != self.marked[z])
            .map(|z| (ZoneId(z as u32), self.dispatched[z]))
            .collect();
        self.marked = self.dispatched.clone();
        marks
    }

    fn in_dns(&self, t: usize) -> bool {
        self.needs[t].iter().all(|&(z, d)| self.acked[z] >= d)
    }

    fn checkpoint(&mut self, flushed: bool) -> Result<(), TestCaseError> {
        self.ledger.handle_written(self.written);
        let Some(cp) = self.ledger.poll_checkpoint() else {
            return Ok(());
        };
        prop_assert!(cp.end >= self.durable, "the progress went back: {cp:?}");
        for (t, (end, _)) in self.txns.iter().enumerate() {
            if *end <= cp.end && *end > self.durable {
                prop_assert!(
                    self.in_dns(t),
                    "checkpoint {cp:?} passes transaction {end} before its zones acknowledged it"
                );
            }
        }
        if let Some(w) = self.written {
            prop_assert!(w <= cp.batch, "checkpoint {cp:?} stops before written {w}");
        }
        self.durable = cp.end;
        self.written = None;
        self.wal = Lsn::new(self.wal.raw() + 1);
        let durability = if flushed {
            Durability::Flushed
        } else {
            Durability::Unflushed {
                wal: self.wal,
                flushed: Lsn::new(self.wal.raw() - 1),
            }
        };
        let confirm = self.ledger.handle_committed(cp, durability);
        self.confirm(confirm)
    }

    fn confirm(&mut self, confirm: Option<Lsn>) -> Result<(), TestCaseError> {
        if let Some(c) = confirm {
            prop_assert!(
                c >= self.confirmed,
                "confirmed {c} after {}",
                self.confirmed
            );
            prop_assert!(c <= self.durable, "confirmed {c} past the progress");
            self.confirmed = c;
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Dispatch { txns, open, write } => self.dispatch(txns, open, write),
            Op::Ack { zone, n } => self.ack(zone, n),
            Op::Refuse { zone } => self.refuse(zone),
            Op::Reject => self.reject(),
            Op::Write => {
                if self.batch > 0 {
                    self.written = Some(BatchSeq(self.batch));
                }
            }
            Op::Checkpoint { flushed } => self.checkpoint(flushed)?,
            Op::Flush => {
                let confirm = self.ledger.handle_wal_flushed(self.wal);
                self.confirm(confirm)?;
            }
            Op::Crash => self.restart(),
        }
        Ok(())
    }
}

fn stream() -> impl Strategy<Value = Vec<(Lsn, Vec<bool>)>> {
    proptest::collection::vec(
        (1u64..50, proptest::collection::vec(any::<bool>(), ZONES)),
        1..12,
    )
    .prop_map(|txns| {
        let mut end = 100;
        txns.into_iter()
            .map(|(gap, zones)| {
                end += gap;
                (Lsn::new(end), zones)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Under any interleaving of batches (cut inside a transaction or
    /// not, touching any zones), acknowledgements, refusals, writes,
    /// checkpoints and crashes: no checkpoint passes a transaction some
    /// zone has not acknowledged (in the session that sent it), the
    /// progress and the confirmed LSN only move forward and never past
    /// each other, and once everything is sent, acknowledged and written,
    /// the checkpoint reaches the last transaction's end.
    #[test]
    fn the_checkpoint_never_passes_an_unacknowledged_transaction_and_reaches_the_end(
        txns in stream(),
        ops in proptest::collection::vec(op(), 0..60),
    ) {
        let mut m = Model::new(txns);
        for op in &ops {
            m.apply(op)?;
        }
        // Everything goes through: refusals rejected, every transaction
        // flushed (the last one whole), everything acknowledged.
        m.reject();
        while m.next < m.txns.len() || m.open {
            m.dispatch(3, false, false);
        }
        for z in 0..ZONES {
            let n = m.dispatched[z];
            m.ack(z, n);
        }
        m.written = (m.batch > 0).then_some(BatchSeq(m.batch));
        m.checkpoint(true)?;
        let last = m.txns.last().map(|(end, _)| *end).unwrap_or_default();
        prop_assert_eq!(m.durable, last);
        prop_assert_eq!(m.ledger.poll_checkpoint(), None);
        prop_assert_eq!(m.ledger.pending(), None);
        prop_assert!(m.ledger.is_idle());
        // A checkpoint that waited for its flush before a crash is
        // confirmed by the flush, or by the idle slot's move after it.
        let flushed = m.ledger.handle_wal_flushed(m.wal);
        m.confirm(flushed)?;
        if m.confirmed < m.durable {
            let idle = m.ledger.handle_idle_committed(m.durable);
            m.confirm(Some(idle))?;
        }
        prop_assert_eq!(m.confirmed, last);
    }
}
