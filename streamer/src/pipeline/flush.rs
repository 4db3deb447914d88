//! The I/O of each step of a flush the stream core walks (see
//! `pg2dns_decoder::stream::flush`): the look-ups and the row state it
//! reads, the operations it dispatches to the zones' streams, and the row
//! state it writes. The order is the core's; nothing here decides.

use std::time::{Duration, Instant};

use pg2dns_decoder::checkpoint::BatchSeq;
use pg2dns_decoder::stream::{Dispatch, Find, Found, Halt, StateRead, WriteState};
use tracing::{debug, info, warn};

use super::Pipeline;
use crate::error::RunError;
use crate::metrics;

/// When a flush started, and how far into it the row state was read and
/// the plan dispatched (for its debug line).
pub(super) struct FlushClock {
    started: Instant,
    read: Duration,
    plan: Duration,
}

impl FlushClock {
    pub(super) fn start() -> FlushClock {
        FlushClock {
            started: Instant::now(),
            read: Duration::ZERO,
            plan: Duration::ZERO,
        }
    }
}

impl Pipeline<'_> {
    /// The first step of a flush: a new batch of the store, and the
    /// look-ups the core asks for before it reads the row state.
    pub(super) async fn find(&mut self, find: Find) -> Result<(), RunError> {
        self.flush_clock = FlushClock::start();
        self.flush_batch = BatchSeq(self.store.start_batch());
        let mut found = Found::default();
        // A TRUNCATE removes every row of its source: load them all.
        for source in find.truncated {
            let name = &self.sources[source.index()];
            let keys = crate::guard::source_rows(&mut self.store, name).await?;
            found.truncated.push((source, keys));
        }
        let sources: Vec<&str> = self.sources.iter().map(String::as_str).collect();
        // Rows waiting for an address that this batch may give.
        found.waiting = self
            .store
            .waiting_for(&sources, self.core.zones(), &find.targets)
            .await?;
        // The names below a DNAME this batch adds (rare): see `names_below`.
        found.below = self
            .store
            .names_below(self.core.zones(), &find.dnames)
            .await?;
        self.core.handle_found(found);
        Ok(())
    }

    /// Reads the row state the core plans the batch against.
    pub(super) async fn load_state(&mut self, read: StateRead) -> Result<(), RunError> {
        let sources: Vec<&str> = self.sources.iter().map(String::as_str).collect();
        let (loaded, orphans) = self
            .store
            .load(&sources, &read.rows, &read.owners, self.core.zones())
            .await?;
        if orphans.records > 0 {
            warn!(records = orphans.records, "the row state holds records of zones no longer configured; they are not sent (resync those zones)");
        }
        self.flush_clock.read = self.flush_clock.started.elapsed();
        self.core.handle_loaded(loaded);
        Ok(())
    }

    /// Hands a planned and judged batch's operations to the zones'
    /// streams. First: the UPDATEs need only what was read, and a crash
    /// before the state write replays the same operations.
    pub(super) async fn dispatch(&mut self, dispatch: Dispatch) -> Result<(), RunError> {
        for m in dispatch.released {
            warn!(zone = %self.core.zones().name(m.zone), deleted = m.deleted, records = m.records, lsn = %m.lsn, "mass delete released by an operator: applying it");
        }
        for (lsn, ops) in dispatch.segments {
            self.lanes.dispatch(lsn, ops);
        }
        self.flush_clock.plan = self.flush_clock.started.elapsed();
        self.lanes.send_outbox().await?;
        self.core.handle_dispatched();
        Ok(())
    }

    /// Writes a dispatched batch's row state (uncommitted until the
    /// checkpoint, maybe held back until then) and says what the plan
    /// refused or noticed.
    pub(super) async fn write_state(&mut self, write: WriteState) -> Result<(), RunError> {
        if write.inconsistencies > 0 {
            warn!(
                missing = write.inconsistencies,
                "the row state lacked records it should hold; DNS may keep records the database no longer has (resync the zones)"
            );
        }
        let mut outcome = write.outcome;
        for r in &outcome.rejections {
            self.log_rejection(r);
        }
        metrics::get()
            .rejected
            .inc_by(outcome.rejections.len() as u64);
        for row in &outcome.promoted {
            info!(source = %self.sources[row.0.index()], row = %row.1, "a row that waited for its target's address is published");
        }
        if !outcome.lost_address.is_empty() {
            for (row, owner, rtype, target) in self
                .store
                .pointing_at(self.core.zones(), &outcome.lost_address)
                .await?
            {
                warn!(%row, %owner, %rtype, %target, "{owner} {rtype} points at {target}, which no longer has an address record (the server keeps it, as the database says)");
            }
        }
        for w in &outcome.warnings {
            warn!(
                source = %self.sources[w.source.index()],
                row = %w.key,
                lsn = %w.lsn,
                reason = %pg2dns_decoder::error_chain(&w.reason),
                "row published although the zone's check_names would refuse it (check_names = \"warn\")"
            );
        }
        let sources: Vec<&str> = self.sources.iter().map(String::as_str).collect();
        self.store
            .write(&sources, self.core.zones(), &mut outcome)
            .await?;
        // After the write, which discards what the rows waited for before.
        self.store
            .add_waiting(&sources, self.core.zones(), &write.waiting)
            .await?;
        self.store.write_zone_refs(&write.ref_edits).await?;
        let sent = self.lanes.mark_batch(self.flush_batch, write.end);
        self.core.handle_flushed(sent);
        let ms = |d: Duration| d.as_millis() as u64;
        let clock = &self.flush_clock;
        debug!(
            rows = write.rows,
            read_ms = ms(clock.read),
            plan_ms = ms(clock.plan.saturating_sub(clock.read)),
            write_ms = ms(clock.started.elapsed().saturating_sub(clock.plan)),
            backlog = self.core.backlog(),
            "flushed"
        );
        Ok(())
    }

    /// The error a flush halts with.
    pub(super) fn halted(&self, halt: Halt) -> RunError {
        match halt {
            Halt::MassDelete(held) => RunError::MassDelete {
                zone: self.core.zones().name(held.zone).to_string(),
                deleted: held.deleted,
                records: held.records,
                lsn: held.lsn,
            },
            Halt::Unmappable(e) => e.into(),
        }
    }
}
