//! The stream's own state machine: committed transactions in, flushes,
//! checkpoints and confirmations out, sans-IO.
//!
//! # Why
//!
//! The slot's confirmed LSN is the promise pg2dns cannot take back, and
//! *when* to flush, checkpoint and confirm is where it is kept or broken.
//! Those decisions used to live in the async driver, between SQL calls,
//! tested only end to end. Here they are a plain state machine in the style
//! of [`crate::session`] (and `quinn-proto`): the driver
//! (`streamer/src/pipeline.rs`) owns the replication connection, the SQL
//! store, the zones' streams and the clock, and tells the core what
//! happened (`handle_*`); the core says what to do next
//! ([`Stream::poll_action`]) and when it next needs the time
//! ([`Stream::poll_timeout`]). The time is a parameter (`now`), so the
//! property tests below drive it with a fake clock.
//!
//! It owns:
//! - the checkpoint [`Ledger`] (what was dispatched, acknowledged, refused);
//! - the batching policy: a live transaction is flushed as soon as nothing
//!   else is ready; a backlog (the server sent the commit more than
//!   [`BACKLOG_MICROS`] after it happened) is batched up to
//!   [`MAX_BATCH_ROWS`] rows and flushed on a [`BACKLOG_PAUSE`];
//! - when to checkpoint: after [`CHECKPOINT_GROUP`] with everything
//!   acknowledged, or every [`CHECKPOINT_EVERY`] while transactions keep
//!   coming (waiting [`BARRIER_WAIT`] at most for the last
//!   acknowledgements); the idle slot's move every [`IDLE_CONFIRM_EVERY`];
//!   the WAL flush poll every [`FLUSH_POLL`];
//! - the skip rule (a transaction committed before the durable progress was
//!   applied before), pauses (a row of `pg2dns.control` in the stream),
//!   a resume's `until` (stop right before the first transaction at or
//!   after it), and the cut before a change of `pg2dns.zones`;
//! - the reading of `pg2dns.control` rows: a row for this slot that does
//!   not parse is a [`ControlRowError`] naming the row and LSN, never
//!   dropped in silence;
//! - the mass-delete guard's carry and held parts (see [`crate::guard`]);
//! - the order of each flush: map, look up, read the row state, plan,
//!   guard, dispatch, write (see [`flush`]).
//!
//! # Driving it
//!
//! ```text
//!  frame  ──▶ handle_frame(now); keepalive: handle_keepalive(wal_end, …)
//!             message: handle_begin / handle_change / handle_control /
//!                      handle_truncate / handle_commit; then
//!                      handle_frame_done(more_ready)
//!  report ──▶ handle_acked(zone, upto) / handle_refused(refusal)
//!  timer  ──▶ handle_timeout(now)            (at poll_timeout())
//!
//!  loop { match poll_action(now) {
//!     Find(find)          → look up truncated rows, waiting rows, names below
//!                           DNAMEs; handle_found(found)
//!     LoadState(read)     → read the row state; handle_loaded(loaded)
//!     CountRecords(zones) → count their records; handle_counted(counts)
//!     AskRelease(lsn)     → did an operator release it; handle_release(lsn, ..)
//!     Dispatch(d)         → hand the segments to the zones; handle_dispatched
//!     WriteState(w)       → write the row state (uncommitted);
//!                           handle_flushed(sent batch), handle_written(..)
//!     Halt(why)           → end the session with the error
//!     FindProducers(f)    → a rejection of refused rows begins: which rows
//!                           produced the records, which targets have an
//!                           address; handle_producers (then LoadState,
//!                           Dispatch, WriteState as a flush; see [`reject`])
//!     Commit(cp, mode)    → COMMIT state + progress, beside the frames (the
//!                           core asks nothing of the store until then);
//!                           handle_committed(cp, durability, now)
//!     CommitIdle(end)     → COMMIT the progress alone; handle_idle_committed(end)
//!     PollFlush           → ask the WAL flush position; handle_wal_flushed(lsn, now)
//!     Confirm(end)        → tell the slot
//!     Wait(until)         → read only acknowledgements until then (or one arrives)
//!     Drained             → the drain asked for is done
//!  } }
//! ```
//!
//! The order of effects is the promise: a [`Action::Confirm`] follows only
//! the commit of a checkpoint (and its WAL flush), a checkpoint covers
//! only batches every zone acknowledged (see [`crate::checkpoint`]), and a
//! batch's operations are dispatched before its row state is written (a
//! crash between the two replays the same operations; see [`flush`]).

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::checkpoint::{self, BatchSeq, Checkpoint, Ledger, SentBatch, ServerRefusal};
use crate::guard::{Carry, DeleteGuard, Segment};
use crate::mapping::Mapping;
use crate::plan::PlanLimits;
use crate::plan::SourceId;
use crate::row::{Cell, RowView};
use crate::txn::{ChangeKind, RowChange};
use crate::{Lsn, ZoneId, Zones};

pub mod flush;
pub mod reject;

pub use flush::{Dispatch, Find, Found, Halt, Planning, StateRead, WriteState};
pub use reject::{FindProducers, Producers};

/// Rows per flush: bounds memory and the size of one state round trip.
pub const MAX_BATCH_ROWS: usize = 2_000;
/// A commit sent this long (microseconds) after it happened means a backlog.
pub const BACKLOG_MICROS: i64 = 20_000;
/// While working through a backlog, how long a pause in the stream flushes
/// the batch (never used for a live stream, where a commit goes out at once).
pub const BACKLOG_PAUSE: Duration = Duration::from_millis(2);
/// How long an acknowledged transaction waits for others to share its
/// checkpoint. The DNS already has the change: only the slot's
/// confirmation and the row state's commit wait (the state is held in
/// memory meanwhile). A checkpoint is a round trip, a COMMIT and WAL on the
/// server, and a confirmation that the walsender answers; grouping them a
/// second apart keeps their cost small (BENCHMARKS.md), and what a crash
/// replays grows to one second of transactions, which replay exactly.
pub const CHECKPOINT_GROUP: Duration = Duration::from_secs(1);
/// Longest time between checkpoints while transactions keep arriving.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// How often the server is asked how far its WAL is flushed while a
/// checkpoint committed without waiting for it is not confirmed yet. The
/// WAL writer flushes at least every `wal_writer_delay` (200 ms by default),
/// and the walsender's next keepalive usually tells first.
pub const FLUSH_POLL: Duration = Duration::from_millis(300);
/// How long a checkpoint forced by [`CHECKPOINT_EVERY`] waits for the last
/// acknowledgements before the stream goes on without it.
pub const BARRIER_WAIT: Duration = Duration::from_millis(100);
/// How often an idle slot is moved. Each move writes the progress row,
/// which itself writes WAL that the next keepalive reports: without a pause
/// the two would chase each other.
pub const IDLE_CONFIRM_EVERY: Duration = Duration::from_secs(10);
/// How long each checkpoint of a drain waits for acknowledgements (a drain
/// then tries again, however long DNS takes; a stop gives up).
pub const DRAIN_WAIT: Duration = Duration::from_secs(5);
/// How long the end of a drain waits for the WAL flush of the checkpoints
/// committed without it (leaving one unconfirmed is safe: its progress
/// makes the next run skip what it covered).
pub const FLUSH_WAIT: Duration = Duration::from_secs(1);
/// How often the end of a drain asks for the WAL flush position.
pub const FLUSH_RETRY: Duration = Duration::from_millis(10);

/// A request of `pg2dns.pause()` or `pg2dns.resume()`: a row of
/// `pg2dns.control`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlRequest {
    /// Its id (increasing).
    pub id: i64,
    /// `pause` or `resume`.
    pub action: String,
    /// Who asked.
    pub requested_by: String,
    /// Why.
    pub reason: String,
    /// For a resume: pause again before the first transaction committing
    /// at or after this LSN.
    pub until: Option<Lsn>,
}

/// A row of `pg2dns.control` for this slot that cannot be read as a
/// request. Only `pg2dns.pause()` and `pg2dns.resume()` write that table,
/// so such a row was written by hand (or the table was changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlRowError {
    /// A column is missing, NULL or not in the form the functions write.
    #[error(
        "row {row} of pg2dns.control inserted at LSN {lsn} has no readable {column} ({value})"
    )]
    Unreadable {
        /// The row's id as the stream carries it (`?` when unreadable).
        row: String,
        /// The commit LSN of the transaction that inserted it.
        lsn: Lsn,
        /// The column.
        column: &'static str,
        /// What it holds.
        value: String,
    },
    /// An action that neither function writes.
    #[error("row {row} of pg2dns.control inserted at LSN {lsn} asks for action {action:?}, which is neither pause nor resume")]
    UnknownAction {
        /// The row's id.
        row: String,
        /// The commit LSN of the transaction that inserted it.
        lsn: Lsn,
        /// The action it names.
        action: String,
    },
}

impl ControlRowError {
    /// The row's id as the stream carries it (`?` when unreadable).
    pub fn row(&self) -> &str {
        match self {
            ControlRowError::Unreadable { row, .. }
            | ControlRowError::UnknownAction { row, .. } => row,
        }
    }

    /// The commit LSN of the transaction that inserted the row.
    pub fn lsn(&self) -> Lsn {
        match self {
            ControlRowError::Unreadable { lsn, .. }
            | ControlRowError::UnknownAction { lsn, .. } => *lsn,
        }
    }
}

/// Reads a change of `pg2dns.control`: a request inserted for `slot`
/// (`Ok(None)` for another slot's rows and for updates and deletes, which
/// the functions never make on the stream's behalf).
pub fn control_request(
    change: &RowChange,
    slot: &str,
) -> Result<Option<ControlRequest>, ControlRowError> {
    if change.kind != ChangeKind::Insert {
        return Ok(None);
    }
    let Some(row) = change.new.as_ref() else {
        return Ok(None);
    };
    let shown = |column: &str| match row.cell(column) {
        None => "no such column".to_owned(),
        Some(Cell::Null) => "NULL".to_owned(),
        Some(Cell::Text(t)) => format!("{t:?}"),
        Some(Cell::UnchangedToast) => "an unchanged TOASTed value".to_owned(),
        Some(_) => "a value that is not text".to_owned(),
    };
    let text = |column: &str| match row.cell(column) {
        Some(Cell::Text(t)) => Some(t.to_owned()),
        _ => None,
    };
    let lsn = change.final_lsn;
    let id_text = text("id");
    let row_name = id_text.clone().unwrap_or_else(|| "?".to_owned());
    let unreadable = |column: &'static str| ControlRowError::Unreadable {
        row: row_name.clone(),
        lsn,
        column,
        value: shown(column),
    };
    let Some(for_slot) = text("slot") else {
        return Err(unreadable("slot"));
    };
    if for_slot != slot {
        return Ok(None);
    }
    let id: i64 = id_text
        .as_deref()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| unreadable("id"))?;
    let action = text("action").ok_or_else(|| unreadable("action"))?;
    if action != "pause" && action != "resume" {
        return Err(ControlRowError::UnknownAction {
            row: row_name.clone(),
            lsn,
            action,
        });
    }
    let until = match text("until_lsn") {
        None => None,
        Some(t) => Some(t.parse().map_err(|_| unreadable("until_lsn"))?),
    };
    Ok(Some(ControlRequest {
        id,
        action,
        requested_by: text("requested_by").unwrap_or_default(),
        reason: text("reason").unwrap_or_default(),
        until,
    }))
}

/// A change or a commit, in stream order.
#[derive(Debug, Clone)]
pub enum Item {
    /// A change of a source's table.
    Change(SourceId, RowChange),
    /// A TRUNCATE of a source's table, at the commit LSN of its transaction.
    Truncate(SourceId, Lsn),
    /// A transaction's commit, with its end LSN.
    Commit(Lsn),
}

/// What a flush plans, dispatches and writes.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The changes and commits, in stream order.
    pub items: Vec<Item>,
    /// How many changes and truncates it holds.
    pub rows: usize,
    /// The open transaction's commit LSN, when the batch ends inside it.
    pub open: Option<Lsn>,
}

/// How a checkpoint's COMMIT goes to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitMode {
    /// Without waiting for the WAL flush (the slot's confirmation waits
    /// for it instead).
    Later,
    /// Waiting for the WAL flush (a drain: the slot confirms at once).
    Flushed,
}

/// What the driver does next.
#[derive(Debug, Clone)]
pub enum Action {
    /// A flush begins (its batch is mapped): look these up, then
    /// [`Stream::handle_found`].
    Find(Find),
    /// Read this row state, then [`Stream::handle_loaded`].
    LoadState(StateRead),
    /// Count the records the row state holds of these zones (the
    /// mass-delete guard's suspects), then [`Stream::handle_counted`].
    CountRecords(Vec<ZoneId>),
    /// The guard holds the transaction committed at this LSN: ask whether
    /// an operator released it, then [`Stream::handle_release`].
    AskRelease(Lsn),
    /// Hand these operations to the zones' streams, then
    /// [`Stream::handle_dispatched`].
    Dispatch(Dispatch),
    /// Write this row state (uncommitted), then [`Stream::handle_flushed`].
    WriteState(WriteState),
    /// The session ends here, before anything of the batch is sent.
    Halt(Halt),
    /// Servers refused owner groups for their content: a rejection (see
    /// [`reject`]) begins. Look up which rows produced these records and
    /// which targets have an address, then [`Stream::handle_producers`];
    /// its next steps are a flush's (LoadState, Dispatch, WriteState).
    FindProducers(FindProducers),
    /// Commit the row state and progress of this checkpoint, then
    /// [`Stream::handle_committed`]. Frames may be handled meanwhile (the
    /// COMMIT runs beside them): until then the core asks only for
    /// confirmations of earlier checkpoints, nothing of the store.
    Commit(Checkpoint, CommitMode),
    /// Nothing is in flight: commit the progress at this WAL end (flushed),
    /// then [`Stream::handle_idle_committed`].
    CommitIdle(Lsn),
    /// Ask how far the server's WAL is flushed, then
    /// [`Stream::handle_wal_flushed`].
    PollFlush,
    /// Confirm this LSN to the slot.
    Confirm(Lsn),
    /// Read only acknowledgements until this time (`None`: until one
    /// arrives), then poll again.
    Wait(Option<Instant>),
    /// The drain asked for ([`Stream::drain`]) is done.
    Drained,
}

/// How a transaction's commit went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Applied: in the batch, pending a checkpoint.
    Applied,
    /// Committed before the progress (or at a resume's `until`): skipped.
    Skipped,
    /// It changed `pg2dns.zones`: the stream stops right before it (its
    /// changes left the batch); the next session reads the zones again.
    CutBeforeZones,
    /// It changed `pg2dns.zones` but part of it was flushed already (a very
    /// large transaction): applied, then the zones are read again.
    AppliedBeforeZones,
}

/// Why the session ends once drained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// `pg2dns.zones` changed.
    ZonesChanged,
    /// A primary the session streams without answers again (see
    /// [`Stream::handle_catch_up`]): the next session brings it in line
    /// from the row state, at the progress this one drains to.
    CatchUp,
    /// Paused by a request, every transaction through `lsn` applied.
    Paused {
        /// Where.
        lsn: Lsn,
        /// The pause request (or the resume whose `until` was reached).
        request: ControlRequest,
    },
}

/// How far a drain is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// Flush, then checkpoint until nothing is pending (`once`: one try).
    Checkpoint { once: bool, tried: bool },
    /// Wait for the WAL flush until `until`; `poll` says ask next.
    Flush { until: Instant, poll: bool },
}

/// What to check for a checkpoint when next polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Check {
    None,
    /// An acknowledgement or the group timer: commit when ready.
    Ready,
    /// After a frame or flush: also force one every [`CHECKPOINT_EVERY`].
    Full,
}

/// A checkpoint waiting for acknowledgements.
#[derive(Debug, Clone, Copy)]
struct Barrier {
    deadline: Instant,
    mode: CommitMode,
    /// Whether it may wait at all (a postponed one restarts the clock).
    waits: bool,
}

/// Settings of one session's stream.
#[derive(Debug)]
pub struct StreamConfig {
    /// The replication slot (whose `pg2dns.control` rows are ours).
    pub slot: String,
    /// How many zones the session streams to.
    pub zones: usize,
    /// The mass-delete guard of each zone, by [`ZoneId`].
    pub guards: Vec<DeleteGuard>,
    /// The durable progress the session starts from.
    pub progress: Lsn,
    /// A resume's `until`: pause before the first transaction committing
    /// at or after it.
    pub stop_at: Option<(Lsn, ControlRequest)>,
    /// Rows per flush ([`MAX_BATCH_ROWS`]; tests make it small).
    pub max_batch_rows: usize,
    /// What flushes map and plan with.
    pub planning: Planning,
}

/// The stream of one session (see the module documentation).
#[derive(Debug)]
pub struct Stream {
    slot: String,
    ledger: Ledger,
    guards: Vec<DeleteGuard>,
    max_batch_rows: usize,
    // The open transaction.
    /// Its commit LSN, from Begin to Commit.
    open: Option<Lsn>,
    /// Whether it was applied before (or is past `stop_at`): skipped.
    skipping: bool,
    /// Where its items start in the batch (and the row count then);
    /// `None` once part of it was flushed.
    txn_start: Option<(usize, usize)>,
    /// It changed a row of `pg2dns.zones`.
    zones_touched: bool,
    /// A pause request seen in it.
    pause_request: Option<ControlRequest>,
    // The batch.
    batch: Vec<Item>,
    batch_rows: usize,
    backlog: bool,
    server_time_micros: i64,
    flush_due: bool,
    // Checkpoints.
    check: Check,
    barrier: Option<Barrier>,
    last_checkpoint: Instant,
    flush_poll: Instant,
    last_frame: Instant,
    last_idle_confirm: Option<Instant>,
    confirmed: Option<Lsn>,
    /// A checkpoint's COMMIT is under way (from its [`Action::Commit`] to
    /// [`Stream::handle_committed`]).
    committing: bool,
    actions: VecDeque<Action>,
    // Pauses and ends.
    pause_at: Option<(Lsn, ControlRequest)>,
    stop_at: Option<(Lsn, ControlRequest)>,
    stopping: bool,
    zones_changed: bool,
    /// A primary left behind answers again: end between transactions.
    catch_up: bool,
    drain: Option<Drain>,
    // The mass-delete guard.
    carry: Carry,
    held: Vec<Segment>,
    released: BTreeSet<Lsn>,
    // Flushes.
    planning: Planning,
    flush: Option<flush::Flush>,
}

impl Stream {
    /// A session's stream, starting at `now`.
    pub fn new(config: StreamConfig, now: Instant) -> Stream {
        Stream {
            slot: config.slot,
            ledger: Ledger::new(config.zones, config.progress),
            guards: config.guards,
            max_batch_rows: config.max_batch_rows.max(1),
            open: None,
            skipping: false,
            txn_start: None,
            zones_touched: false,
            pause_request: None,
            batch: Vec::new(),
            batch_rows: 0,
            backlog: false,
            server_time_micros: 0,
            flush_due: false,
            check: Check::None,
            barrier: None,
            last_checkpoint: now,
            flush_poll: now,
            last_frame: now,
            last_idle_confirm: None,
            confirmed: None,
            committing: false,
            actions: VecDeque::new(),
            pause_at: None,
            stop_at: config.stop_at,
            stopping: false,
            zones_changed: false,
            catch_up: false,
            drain: None,
            carry: None,
            held: Vec::new(),
            released: BTreeSet::new(),
            planning: config.planning,
            flush: None,
        }
    }

    // ---- frames ----

    /// A frame arrived (any: keepalive or message).
    pub fn handle_frame(&mut self, now: Instant) {
        self.last_frame = now;
    }

    /// The server's clock at its last message, when it says.
    pub fn handle_server_time(&mut self, server_time_micros: i64) {
        self.server_time_micros = server_time_micros;
    }

    /// A keepalive: the server's WAL ends at `wal_end` (flushed: logical
    /// decoding reads only flushed WAL). `store_idle` says the store has
    /// no open transaction. Confirms a checkpoint the flush passed, and
    /// moves an idle slot (or it pins WAL).
    pub fn handle_keepalive(
        &mut self,
        wal_end: Lsn,
        server_time_micros: i64,
        store_idle: bool,
        now: Instant,
    ) {
        self.server_time_micros = server_time_micros;
        if self.ledger.awaiting_flush() {
            self.handle_wal_flushed(wal_end, now);
        }
        // The progress moves first (CommitIdle, then Confirm), so that the
        // slot never gets ahead of it.
        if self.open.is_none()
            && self.batch.is_empty()
            && self.ledger.is_idle()
            && store_idle
            && wal_end > self.confirmed.unwrap_or(self.ledger.progress())
            && self
                .last_idle_confirm
                .is_none_or(|t| now.saturating_duration_since(t) >= IDLE_CONFIRM_EVERY)
        {
            self.last_idle_confirm = Some(now);
            self.actions.push_back(Action::CommitIdle(wal_end));
        }
    }

    /// A Commit message before the assembler took it: a commit sent well
    /// after it happened means a backlog, which is batched.
    pub fn handle_commit_time(&mut self, commit_time_micros: i64) {
        self.backlog = self.server_time_micros - commit_time_micros > BACKLOG_MICROS;
    }

    /// A transaction begins. Returns whether it is applied (`false`: it was
    /// applied and checkpointed before, or it is where a resume's `until`
    /// stops the stream).
    pub fn handle_begin(&mut self, final_lsn: Lsn) -> bool {
        self.open = Some(final_lsn);
        self.txn_start = Some((self.batch.len(), self.batch_rows));
        self.zones_touched = false;
        self.pause_request = None;
        self.skipping = final_lsn < self.ledger.progress();
        if self
            .stop_at
            .as_ref()
            .is_some_and(|(until, _)| final_lsn >= *until)
        {
            // Not applied: the stream stops right before it.
            self.skipping = true;
            self.stopping = true;
        }
        !self.skipping
    }

    /// Whether the open transaction is skipped.
    pub fn skipping(&self) -> bool {
        self.skipping
    }

    /// A change of a source's table in the open transaction.
    pub fn handle_change(&mut self, source: SourceId, change: RowChange) {
        if self.skipping {
            return;
        }
        self.batch.push(Item::Change(source, change));
        self.batch_rows += 1;
    }

    /// A TRUNCATE of a source's table in the open transaction.
    pub fn handle_truncate(&mut self, source: SourceId, lsn: Lsn) {
        if self.skipping {
            return;
        }
        self.batch.push(Item::Truncate(source, lsn));
        self.batch_rows += 1;
    }

    /// Whether the batch holds a TRUNCATE of `source` at `lsn`.
    pub fn has_truncate(&self, source: SourceId, lsn: Lsn) -> bool {
        self.batch
            .iter()
            .any(|item| matches!(item, Item::Truncate(s, l) if *s == source && *l == lsn))
    }

    /// A change of `pg2dns.control` in the open transaction: a pause takes
    /// effect after its commit. A row for this slot that cannot be read is
    /// the error (the driver reports it; the stream goes on).
    pub fn handle_control(
        &mut self,
        change: &RowChange,
    ) -> Result<Option<ControlRequest>, ControlRowError> {
        if self.skipping {
            return Ok(None);
        }
        let request = control_request(change, &self.slot)?;
        if let Some(r) = request.as_ref().filter(|r| r.action == "pause") {
            self.pause_request = Some(r.clone());
        }
        Ok(request)
    }

    /// A row of `pg2dns.zones` changed in the open transaction.
    pub fn handle_zones_touched(&mut self) {
        if !self.skipping {
            self.zones_touched = true;
        }
    }

    /// Whether the open transaction changed `pg2dns.zones` (and is
    /// applied): the driver then asks whether the table now differs from
    /// the session's zones, for [`Stream::handle_commit`].
    pub fn zones_touched(&self) -> bool {
        !self.skipping && self.zones_touched
    }

    /// The open transaction committed, ending at `end`; `zones_changed`
    /// says `pg2dns.zones` now differs from the session's zones.
    pub fn handle_commit(&mut self, end: Lsn, zones_changed: bool, now: Instant) -> Committed {
        self.open = None;
        let mut outcome = Committed::Applied;
        if !self.skipping && self.zones_touched && zones_changed {
            self.zones_changed = true;
            if let Some((len, rows)) = self.txn_start {
                // Stop right before it: the next session adds or removes
                // the zones, then streams it.
                self.batch.truncate(len);
                self.batch_rows = rows;
                self.pause_request = None;
                self.skipping = false;
                return Committed::CutBeforeZones;
            }
            outcome = Committed::AppliedBeforeZones;
        }
        if self.skipping {
            outcome = Committed::Skipped;
        } else {
            self.batch.push(Item::Commit(end));
            if self.ledger.handle_received(end) {
                // The checkpoint clock starts with the oldest transaction
                // it will cover.
                self.last_checkpoint = now;
            }
            if let Some(request) = self.pause_request.take() {
                self.pause_at = Some((end, request));
            }
        }
        self.pause_request = None;
        self.skipping = false;
        outcome
    }

    /// Whether the driver should ask the replication connection if another
    /// frame is ready (only then does its answer change what is flushed).
    pub fn wants_ready_probe(&self) -> bool {
        self.open.is_none() && !self.backlog && !self.batch.is_empty()
    }

    /// The frame was handled; `more_ready` says another is ready at once
    /// (see [`Stream::wants_ready_probe`]). Flushes when the stream has
    /// nothing more ready now (a lone commit goes out at once, a backlog is
    /// batched) or the batch is full. A transaction is never cut because
    /// its rest is late (PostgreSQL sends it whole, after its commit): an
    /// owner's changes stay in one segment unless the transaction outgrows
    /// two batches.
    pub fn handle_frame_done(&mut self, more_ready: bool) {
        let in_txn = self.open.is_some();
        let idle = !in_txn && !self.backlog && !more_ready;
        let full = (self.batch_rows >= self.max_batch_rows && !in_txn)
            || self.batch_rows >= 2 * self.max_batch_rows;
        if full || (idle && !self.batch.is_empty()) {
            if in_txn {
                // Part of the open transaction goes out now.
                self.txn_start = None;
            }
            self.flush_due = true;
        }
        self.check = self.check.max(Check::Full);
    }

    /// Why the session ends, once known (after a frame or a report): the
    /// driver then drains ([`Stream::drain`]) and ends it. Never inside a
    /// transaction, except a resume's `until` (which skips it whole).
    pub fn poll_end(&mut self) -> Option<End> {
        if self.zones_changed {
            self.zones_changed = false;
            return Some(End::ZonesChanged);
        }
        if self.catch_up && self.open.is_none() {
            self.catch_up = false;
            return Some(End::CatchUp);
        }
        if self.stopping {
            if let Some((lsn, request)) = self.stop_at.take() {
                return Some(End::Paused { lsn, request });
            }
        }
        self.pause_at
            .take()
            .map(|(lsn, request)| End::Paused { lsn, request })
    }

    /// A primary the session streams without (dropped past `[limits]
    /// degraded_queue`, or left out at the start) answers again: the
    /// session ends at the next transaction boundary ([`End::CatchUp`]),
    /// drained like a pause, so that the next one brings it in line with
    /// the row state as of a known progress. Nothing the other primaries
    /// did not acknowledge is confirmed meanwhile: the drain waits for
    /// them as any checkpoint does.
    pub fn handle_catch_up(&mut self) {
        self.catch_up = true;
    }

    // ---- acknowledgements ----

    /// A zone acknowledged its dispatches up to `upto`.
    pub fn handle_acked(&mut self, zone: ZoneId, upto: u64) {
        self.ledger.handle_acked(zone, upto);
        self.check = self.check.max(Check::Ready);
    }

    /// A server refused an owner group for its content.
    pub fn handle_refused(&mut self, refusal: ServerRefusal) {
        self.ledger.handle_refused(refusal);
        self.check = self.check.max(Check::Ready);
    }

    // ---- results of actions ----

    /// A batch (of a flush's or a rejection's [`Action::WriteState`]) was
    /// dispatched and its state written or held back.
    pub fn handle_flushed(&mut self, batch: SentBatch) {
        self.flush = None;
        self.ledger.handle_dispatched(batch);
    }

    /// The store's open transaction holds the writes of the batches up to
    /// `written` (`None`: nothing since the last checkpoint).
    pub fn handle_written(&mut self, written: Option<BatchSeq>) {
        self.ledger.handle_written(written);
    }

    /// The checkpoint of an [`Action::Commit`] committed.
    pub fn handle_committed(
        &mut self,
        cp: Checkpoint,
        durability: checkpoint::Durability,
        now: Instant,
    ) {
        if matches!(durability, checkpoint::Durability::Unflushed { .. })
            && !self.ledger.awaiting_flush()
        {
            self.flush_poll = now + FLUSH_POLL;
        }
        self.committing = false;
        if let Some(end) = self.ledger.handle_committed(cp, durability) {
            self.confirm(end);
        }
        self.last_checkpoint = now;
    }

    /// The progress of an [`Action::CommitIdle`] committed (flushed).
    pub fn handle_idle_committed(&mut self, end: Lsn) {
        let end = self.ledger.handle_idle_committed(end);
        self.confirm(end);
    }

    /// The server's WAL is flushed up to `flushed`.
    pub fn handle_wal_flushed(&mut self, flushed: Lsn, now: Instant) {
        if let Some(end) = self.ledger.handle_wal_flushed(flushed) {
            self.confirm(end);
        }
        self.flush_poll = now + FLUSH_POLL;
    }

    fn confirm(&mut self, end: Lsn) {
        self.confirmed = Some(end);
        self.actions.push_back(Action::Confirm(end));
    }

    // ---- time ----

    /// When the stream next needs [`Stream::handle_timeout`], if at all.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let group = (self.ledger.pending().is_some() && self.ledger.poll_checkpoint().is_some())
            .then_some(self.last_checkpoint + CHECKPOINT_GROUP);
        let flush = self.ledger.awaiting_flush().then_some(self.flush_poll);
        // Measured from the last frame, so that nothing else happening
        // meanwhile can put it off.
        let pause = (!self.batch.is_empty() && self.open.is_none())
            .then_some(self.last_frame + BACKLOG_PAUSE);
        [group, flush, pause].into_iter().flatten().min()
    }

    /// Time passed: a group checkpoint is due, the WAL flush is to be
    /// asked, or a backlog paused long enough to flush.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ledger.pending().is_some()
            && now >= self.last_checkpoint + CHECKPOINT_GROUP
            && self.ledger.poll_checkpoint().is_some()
        {
            self.check = self.check.max(Check::Ready);
        }
        if self.ledger.awaiting_flush()
            && now >= self.flush_poll
            && !self.actions.iter().any(|a| matches!(a, Action::PollFlush))
        {
            self.actions.push_back(Action::PollFlush);
        }
        if !self.batch.is_empty() && self.open.is_none() && now >= self.last_frame + BACKLOG_PAUSE {
            self.flush_due = true;
            self.check = self.check.max(Check::Full);
        }
    }

    // ---- drains ----

    /// Flush and checkpoint everything received, waiting for DNS however
    /// long it takes, then for the WAL flush (a little): the exact stop of
    /// a pause. [`Action::Drained`] says it is done.
    pub fn drain(&mut self) {
        self.drain = Some(Drain::Checkpoint {
            once: false,
            tried: false,
        });
    }

    /// A clean stop: finish what is complete (one checkpoint, waiting
    /// [`DRAIN_WAIT`] at most), leave the rest to the next run.
    pub fn stop(&mut self) {
        if self.open.is_some() {
            // Nothing of the open transaction can be checkpointed.
            self.drain = Some(Drain::Checkpoint {
                once: true,
                tried: true,
            });
        } else {
            self.drain = Some(Drain::Checkpoint {
                once: true,
                tried: false,
            });
        }
    }

    /// Before a halt at the open transaction (DDL that put nothing in the
    /// stream): drops what the batch holds of it so that a drain applies
    /// exactly the transactions before it. `false` when part of it was
    /// sent already (a huge one): the earlier transactions are replayed
    /// after the resume instead.
    pub fn settle_before_halt(&mut self) -> bool {
        if self.open.is_some()
            && self
                .carry
                .as_ref()
                .is_some_and(|(lsn, _)| Some(*lsn) == self.open)
        {
            return false;
        }
        let keep = self
            .batch
            .iter()
            .rposition(|item| matches!(item, Item::Commit(_)))
            .map_or(0, |p| p + 1);
        self.batch.truncate(keep);
        self.batch_rows = self
            .batch
            .iter()
            .filter(|item| !matches!(item, Item::Commit(_)))
            .count();
        true
    }

    // ---- the guard ----

    /// Whether parts of an open transaction are held back by the guard.
    pub fn guard_holds(&self) -> bool {
        !self.held.is_empty()
    }

    // ---- actions ----

    /// What to do next (see the module documentation). The driver does it
    /// and reports its result before polling again.
    pub fn poll_action(&mut self, now: Instant) -> Option<Action> {
        loop {
            // A flush in progress goes first, and nothing else meanwhile.
            if let Some(next) = self.poll_flush() {
                return next;
            }
            if self.committing {
                // The COMMIT runs beside the frames (they go on filling
                // the batch): nothing that needs the store until it is
                // done. Confirmations of earlier checkpoints need none.
                let confirm = self
                    .actions
                    .iter()
                    .position(|a| matches!(a, Action::Confirm(_)));
                return confirm.and_then(|i| self.actions.remove(i));
            }
            if let Some(a) = self.actions.pop_front() {
                return Some(a);
            }
            // A refused group's rows must leave the state before any
            // checkpoint covers them.
            if self.ledger.refusals_pending() {
                let refused = self.ledger.take_refused();
                return Some(self.start_reject(refused));
            }
            if self.flush_due {
                self.flush_due = false;
                if !self.batch.is_empty() {
                    let batch = self.take_batch();
                    return Some(self.start_flush(batch));
                }
            }
            if let Some(b) = self.barrier {
                let covers = self.ledger.poll_checkpoint().map(|cp| cp.batch);
                let everything = self.ledger.newest_batch();
                if now < b.deadline && b.waits && !(covers.is_some() && covers == everything) {
                    return Some(Action::Wait(Some(b.deadline)));
                }
                self.barrier = None;
                match self.ledger.poll_checkpoint() {
                    Some(cp) => {
                        self.committing = true;
                        return Some(Action::Commit(cp, b.mode));
                    }
                    None if b.waits => {
                        // Postponed: tried again at the next
                        // acknowledgement or batch.
                        self.last_checkpoint = now;
                    }
                    None => {}
                }
                continue;
            }
            match std::mem::replace(&mut self.check, Check::None) {
                // A drain checkpoints on its own terms (flushed, waiting).
                Check::None => {}
                _ if self.drain.is_some() => {}
                check => {
                    if self.checkpoint_ready(now) {
                        self.start_barrier(now, Duration::ZERO, CommitMode::Later);
                    } else if check == Check::Full
                        && self.at_boundary()
                        && self.ledger.poll_checkpoint().is_none()
                        && now.saturating_duration_since(self.last_checkpoint) >= CHECKPOINT_EVERY
                    {
                        // The open transaction holds writes of batches
                        // still in flight: only their acknowledgements let
                        // a checkpoint happen.
                        self.start_barrier(now, BARRIER_WAIT, CommitMode::Later);
                    }
                    continue;
                }
            }
            return self.poll_drain(now);
        }
    }

    fn poll_drain(&mut self, now: Instant) -> Option<Action> {
        loop {
            match self.drain? {
                Drain::Checkpoint { once, tried } => {
                    if !tried && !self.batch.is_empty() {
                        let batch = self.take_batch();
                        return Some(self.start_flush(batch));
                    }
                    if self.ledger.pending().is_some() && !(once && tried) {
                        self.drain = Some(Drain::Checkpoint { once, tried: true });
                        self.start_barrier(now, DRAIN_WAIT, CommitMode::Flushed);
                        // The barrier's actions come first.
                        return self.poll_action(now);
                    }
                    self.drain = Some(Drain::Flush {
                        until: now + FLUSH_WAIT,
                        poll: true,
                    });
                }
                Drain::Flush { until, poll } => {
                    if !self.ledger.awaiting_flush() || now >= until {
                        self.drain = None;
                        return Some(Action::Drained);
                    }
                    self.drain = Some(Drain::Flush { until, poll: !poll });
                    return Some(if poll {
                        Action::PollFlush
                    } else {
                        Action::Wait(Some(now + FLUSH_RETRY))
                    });
                }
            }
        }
    }

    fn take_batch(&mut self) -> Batch {
        let rows = std::mem::take(&mut self.batch_rows);
        Batch {
            items: std::mem::take(&mut self.batch),
            rows,
            open: self.open,
        }
    }

    fn start_barrier(&mut self, now: Instant, wait: Duration, mode: CommitMode) {
        if self.ledger.pending().is_none() {
            return;
        }
        self.barrier = Some(Barrier {
            deadline: now + wait,
            mode,
            waits: !wait.is_zero(),
        });
    }

    /// Acknowledged batches to checkpoint, and the oldest transaction
    /// waited its group time.
    fn checkpoint_ready(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_checkpoint) >= CHECKPOINT_GROUP
            && self.ledger.poll_checkpoint().is_some()
    }

    /// Between transactions, with everything flushed and something to
    /// checkpoint.
    fn at_boundary(&self) -> bool {
        self.open.is_none() && self.batch.is_empty() && self.ledger.pending().is_some()
    }

    // ---- what the driver reads ----

    /// The zones flushes plan for (with the zones tables' references as
    /// the stream moved them).
    pub fn zones(&self) -> &Zones {
        &self.planning.zones
    }

    /// The sources' mappings, by [`SourceId`].
    pub fn mappings(&self) -> &[Box<dyn Mapping>] {
        &self.planning.mappings
    }

    /// The limits flushes plan with.
    pub fn limits(&self) -> &PlanLimits {
        &self.planning.limits
    }

    /// Whether a flush waits for the driver's answer.
    pub fn flushing(&self) -> bool {
        self.flush.is_some()
    }

    /// Whether a checkpoint's COMMIT is under way: the driver reads frames
    /// meanwhile, and reports it with [`Stream::handle_committed`].
    pub fn committing(&self) -> bool {
        self.committing
    }

    /// Whether a drain ([`Stream::drain`], [`Stream::stop`]) is under way.
    pub fn draining(&self) -> bool {
        self.drain.is_some()
    }

    /// The end a batch of rejections takes (see
    /// [`Ledger::rejection_end`]).
    pub fn rejection_end(&self) -> Option<Lsn> {
        self.ledger.rejection_end()
    }

    /// The end of the newest transaction received and not checkpointed.
    pub fn pending(&self) -> Option<Lsn> {
        self.ledger.pending()
    }

    /// How many transactions the pending checkpoint covers.
    pub fn pending_transactions(&self) -> usize {
        self.ledger.pending_transactions()
    }

    /// The durable progress: transactions committing before it are done.
    pub fn progress(&self) -> Lsn {
        self.ledger.progress()
    }

    /// What was last confirmed to the slot in this session.
    pub fn confirmed(&self) -> Option<Lsn> {
        self.confirmed
    }

    /// Whether the batch holds nothing.
    pub fn batch_is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Whether a transaction is open (between its Begin and Commit).
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// The server's clock at its last message (microseconds since
    /// 2000-01-01).
    pub fn server_time_micros(&self) -> i64 {
        self.server_time_micros
    }

    /// Whether the stream works through a backlog.
    pub fn backlog(&self) -> bool {
        self.backlog
    }
}

#[cfg(test)]
mod tests;
