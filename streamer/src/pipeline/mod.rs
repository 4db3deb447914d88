//! The pipeline: committed transactions in, acknowledged UPDATEs out, and the
//! confirmed LSN moved only behind them.
//!
//! ```text
//!  replication ─▶ Assembler ─▶ stream core ─▶ Find / LoadState: the row state
//!                  (txn)       (decoder::     the core asks for (SQL) ─▶ the core
//!                               stream)       maps, plans and guards ─▶ Dispatch to
//!                                             the zones' streams ─▶ WriteState
//!                                             (uncommitted)
//!  zones' acks ─▶ stream core ─▶ Commit: row state + progress ─▶ Confirm end_lsn
//! ```
//!
//! The pipeline is a driver, a select loop around the sans-IO stream core
//! (`pg2dns_decoder::stream::Stream`), as `dns/server.rs` drives the zones'
//! `Session`s: each branch is "I/O happened → `core.handle_*`", then the
//! core's actions are done in order (`act`: look up and load row state,
//! count a zone's records, ask for a release, dispatch, write state,
//! look up the rows behind a server's refusal, commit, confirm, poll the WAL flush, wait for acknowledgements).
//! What a row means, what goes to DNS and what is refused are decided by
//! the decoder's mapping and planner; the order of a flush, when to flush,
//! checkpoint and confirm, which transactions are skipped, where a pause
//! stops and what the mass-delete guard holds are decided by the stream
//! core. The pipeline keeps the SQL (the store), the DNS streams
//! (`dns::lanes`), the replication connection and the clock.

mod flush;
mod reject;
mod session;
mod sources;

use std::time::{Duration, Instant};

use pg2dns_decoder::checkpoint::{self, BatchSeq, Checkpoint};
use pg2dns_decoder::pgoutput::Message;
use pg2dns_decoder::plan::SourceId;
use pg2dns_decoder::stream::{Action, CommitMode, Committed, End, Stream};
use pg2dns_decoder::txn::{Assembler, Event};
use pg2dns_decoder::Lsn;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::control::{Control, ControlRequest, Mode};
use crate::dns::kept::Kept;
use crate::dns::lanes::{Heard, Lanes};
use crate::dns::sink::LaneReport;
use crate::error::{Disposition, RunError};
use crate::replication::{Frame, PgReplication, Replication};
use crate::store::{Durability, Store};
use crate::{failpoint, metrics, status};
use flush::FlushClock;
pub(crate) use session::held_outside;
use session::session;
pub use sources::mappings;
use sources::{is_control, is_zones_table};

/// Rows per flush (see `pg2dns_decoder::stream::MAX_BATCH_ROWS`).
pub const MAX_BATCH_ROWS: usize = pg2dns_decoder::stream::MAX_BATCH_ROWS;

/// How often a standby tries the slot another instance holds.
const STANDBY_RETRY: Duration = Duration::from_secs(1);

/// How long a clean stop waits, at most, for its last checkpoint and the
/// WAL flush (the core's own limits are shorter; this bounds the SQL too).
const STOP_WAIT: Duration = Duration::from_secs(10);

/// How long a halt on DDL waits for DNS to acknowledge the transactions
/// before it (see `Pipeline::settle_before_halt`).
const HALT_SETTLE: Duration = Duration::from_secs(30);

/// Runs one session: connections, streaming, until shutdown or an error.
pub struct Pipeline<'c> {
    config: &'c Config,
    /// The columns each source reads (by `SourceId`), and the table layout
    /// last found to hold them.
    needed: Vec<Vec<pg2dns_decoder::schema::Needed>>,
    checked: Vec<Option<std::sync::Arc<pg2dns_decoder::pgoutput::Relation>>>,
    /// Each source table's OID at the session start (see `relations`).
    oids: Vec<u32>,
    /// The source each table (by OID) resolved to, for its last Relation
    /// message (`None`: ignored).
    resolved: std::collections::HashMap<
        u32,
        (
            std::sync::Arc<pg2dns_decoder::pgoutput::Relation>,
            Option<usize>,
        ),
    >,
    /// When the source tables were last checked (see `relations`).
    relations_checked: Instant,
    /// The partitions of each source's table at the session start.
    partitions: Vec<std::collections::BTreeSet<(u32, String)>>,
    sources: Vec<String>,
    store: Store,
    assembler: Assembler,
    /// The stream's decisions: batching, checkpoints, confirmations,
    /// skips, pauses, the mass-delete guard's carry.
    core: Stream,
    lanes: Lanes,
    /// A transaction received is not acknowledged yet: the status's lag
    /// counts from the oldest such one.
    lag_pending: bool,
    /// Where the session paused.
    paused: Option<(Lsn, ControlRequest)>,
    /// The rows of `pg2dns.zones` this session's zones were built from.
    table_rows: Vec<crate::config::TableZone>,
    /// The store's batch of the flush in progress.
    flush_batch: BatchSeq,
    /// How long the flush in progress took to read and to plan.
    flush_clock: FlushClock,
    /// The transaction id of the transaction being received.
    xid: u32,
    /// The commit time of the transaction being received (from its Begin).
    begin_commit_micros: i64,
    /// The checkpoint whose COMMIT is under way, beside the frames.
    committing: Option<InFlight>,
}

/// A checkpoint's COMMIT under way. It used to block the frame loop for
/// its round trip (0–18 ms about once a second, BENCHMARKS.md); now the
/// loop keeps reading frames meanwhile (the core batches them, and asks
/// nothing of the store until the answer). Its requests are on the store's
/// connection before anything sent later, and the slot confirms nothing
/// it covers before the answer: the confirmed LSN still never passes a
/// change not acknowledged and committed.
struct InFlight {
    cp: Checkpoint,
    durability: Durability,
    started: Instant,
    /// How many transactions it covers (for its log line).
    transactions: usize,
    committing: crate::store::Committing,
}

/// The answer to the COMMIT under way (never, without one). Cancel-safe.
async fn commit_answered(
    committing: &mut Option<InFlight>,
) -> Result<Option<crate::store::Unflushed>, crate::store::StoreError> {
    match committing {
        Some(f) => (&mut f.committing).await,
        None => std::future::pending().await,
    }
}

/// Aborts a spawned task (the status publisher, the slot watch) when
/// dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs sessions until shutdown; transient failures are retried with
/// backoff; a halt leaves the service up, halted, until `pg2dns resume` (or
/// exits with the error under `--exit-on-halt`).
pub async fn run(
    mut config: Config,
    mut shutdown: watch::Receiver<bool>,
    options: RunOptions,
) -> Result<(), RunError> {
    let mut backoff = Duration::from_millis(200);
    let mut reload = options.reload.clone();
    // Zone streams a clean session end leaves to the next one.
    let mut kept = Kept::default();
    // A standby says so once at INFO, then only at debug while it waits.
    let mut standing_by = false;
    let _slot_watch = AbortOnDrop(tokio::spawn(status::watch_slot(config.clone())));
    // Every zone's series exist from start, a standby's too.
    for z in &config.zones {
        metrics::get().zone(&z.name.to_string(), &z.primary.to_string());
    }
    loop {
        let started = Instant::now();
        let e = match session(&config, &mut shutdown, &mut reload, &mut kept).await {
            Ok(SessionEnd::Stopped) => return Ok(()),
            // The next session waits for the resume.
            Ok(SessionEnd::Paused) => continue,
            Ok(SessionEnd::Reload) => {
                reload_config(&mut config, options.config_path.as_deref());
                continue;
            }
            Ok(SessionEnd::ZonesChanged) => continue,
            // The next session brings the primary in line, then streams.
            Ok(SessionEnd::CatchUp) => continue,
            Err(e) => e,
        };
        let disposition = e.disposition();
        match &disposition {
            // Waiting for the slot is not a failure.
            Disposition::Standby => {}
            Disposition::Retry => metrics::get().error("retry"),
            Disposition::Halt { .. } => metrics::get().error("halt"),
            Disposition::Exit => metrics::get().error("exit"),
        }
        if disposition != Disposition::Standby {
            standing_by = false;
        }
        match disposition {
            Disposition::Standby => {
                // Try the slot again soon, quietly.
                metrics::get().set_state(metrics::State::Standby);
                if standing_by {
                    debug!(error = %e, "still standing by");
                } else {
                    info!("standing by: {e}; taking over when it is free");
                    standing_by = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(STANDBY_RETRY) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
            }
            Disposition::Retry => {
                metrics::get().set_state(metrics::State::Starting);
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(200);
                }
                warn!(error = %crate::error::chain(&e), retry_in = ?backoff, "session failed; retrying");
                crate::notify::status(&format!("retrying: {}", crate::error::chain(&e)));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Disposition::Halt { hint } => {
                let reason = crate::error::chain(&e);
                error!(error = %reason, %hint, "halted");
                if options.exit_on_halt {
                    record_stopped(
                        &config,
                        format!("halted, and exited (--exit-on-halt): {reason}"),
                        hint,
                    )
                    .await;
                    return Err(e);
                }
                let held = e.mass_delete_lsn();
                let halted =
                    wait_while_halted(&config, reason.clone(), hint.clone(), held, &mut shutdown);
                let resumed = tokio::select! {
                    r = halted => r,
                    _ = reload_asked(&mut reload) => {
                        info!("SIGHUP: trying again after the halt");
                        Some(())
                    }
                };
                match resumed {
                    Some(()) => {
                        reload_config(&mut config, options.config_path.as_deref());
                        info!("resuming after the halt");
                        backoff = Duration::from_millis(200);
                    }
                    None => {
                        record_stopped(&config, format!("stopped while halted: {reason}"), hint)
                            .await;
                        return Err(e);
                    }
                }
            }
            Disposition::Exit => {
                record_stopped(
                    &config,
                    crate::error::chain(&e),
                    "report this as a pg2dns bug, with the log".into(),
                )
                .await;
                return Err(e);
            }
        }
    }
}

/// Says in `pg2dns.mode` that the service stopped, when it was running or
/// halted (a pause stays: it survives restarts), on its own connection and
/// with a bounded wait: the process is exiting.
async fn record_stopped(config: &Config, reason: String, hint: String) {
    let write = async {
        let control = Control::connect(&config.database).await?;
        control.set_mode(&Mode::Stopped { reason, hint }).await
    };
    match tokio::time::timeout(Duration::from_secs(5), write).await {
        Ok(Ok(())) => metrics::get().set_state(metrics::State::Stopped),
        Ok(Err(e)) => {
            warn!(error = %crate::error::chain(&e), "cannot record the stop in pg2dns.mode")
        }
        Err(_) => warn!("cannot record the stop in pg2dns.mode: PostgreSQL did not answer in time"),
    }
}

/// How `pg2dns run` behaves.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Exit on a halt (with the error) instead of staying up, halted, until
    /// `pg2dns resume`.
    pub exit_on_halt: bool,
    /// Where the configuration came from: read again (with its key files)
    /// when a halted service resumes, since the fix is often there, and on
    /// SIGHUP.
    pub config_path: Option<std::path::PathBuf>,
    /// Ticks on SIGHUP: read the configuration and key files again (and
    /// try again after a halt).
    pub reload: Option<watch::Receiver<u64>>,
}

/// Resolves when a reload is asked for (never without a reload channel).
async fn reload_asked(reload: &mut Option<watch::Receiver<u64>>) {
    match reload {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Reads the configuration again, keeping the one in use if it fails.
fn reload_config(config: &mut Config, path: Option<&std::path::Path>) {
    let Some(path) = path else { return };
    match Config::load(path) {
        Ok(fresh) => {
            info!(config = %path.display(), "configuration and key files read again");
            *config = fresh;
        }
        Err(e) => {
            warn!(error = %crate::error::chain(&e), "the configuration does not load; keeping the one in use")
        }
    }
}

/// How a session ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionEnd {
    /// Asked to stop.
    Stopped,
    /// Paused by an operator at an exact LSN.
    Paused,
    /// SIGHUP: read the configuration again and start a new session.
    Reload,
    /// `pg2dns.zones` changed: stopped right before the transaction that
    /// changed it; the next session reads the zones again.
    ZonesChanged,
    /// A primary the session streamed without answers again: everything
    /// received is checkpointed; the next session brings it in line.
    CatchUp,
}

/// Stays halted (and says so in `pg2dns.mode`) until `pg2dns resume`;
/// `None` when asked to stop meanwhile.
async fn wait_while_halted(
    config: &Config,
    reason: String,
    hint: String,
    mass_delete: Option<Lsn>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<()> {
    let mut backoff = Duration::from_millis(500);
    loop {
        let attempt = async {
            let mut control = Control::connect(&config.database).await?;
            // The same halt again (a restart that finds the same fault): a
            // resume the operator gave for it meanwhile still counts, so
            // the halt keeps its start; a new halt starts now.
            let after = match control.mode().await? {
                Mode::Halted {
                    reason: same,
                    after,
                    ..
                } if same == reason => after,
                _ => control.newest_request().await?,
            };
            control
                .set_mode(&Mode::Halted {
                    reason: reason.clone(),
                    hint: hint.clone(),
                    after,
                    mass_delete,
                })
                .await?;
            metrics::get().set_state(if mass_delete.is_some() {
                metrics::State::Held
            } else {
                metrics::State::Halted
            });
            info!("halted: waiting for `pg2dns resume`");
            crate::notify::ready(&format!("halted: {reason} (hint: {hint})"));
            control.wait_for_resume(after, shutdown).await
        };
        match attempt.await {
            Ok(Some(_)) => return Some(()),
            Ok(None) => return None,
            Err(e) => {
                // The database itself may be what is wrong: keep trying.
                warn!(error = %crate::error::chain(&e), "halted, and cannot reach PostgreSQL to say so; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return None,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

impl Pipeline<'_> {
    async fn stream(
        &mut self,
        replication: &mut PgReplication,
        shutdown: &mut watch::Receiver<bool>,
        reload: &mut Option<watch::Receiver<u64>>,
    ) -> Result<SessionEnd, RunError> {
        loop {
            self.sync_written();
            let timeout = self.core.poll_timeout();
            let wake = tokio::time::Instant::from_std(timeout.unwrap_or_else(Instant::now));
            let frame = tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    self.stop(replication).await?;
                    return Ok(SessionEnd::Stopped);
                }
                _ = reload_asked(reload) => {
                    info!("SIGHUP: finishing what is complete, then reading the configuration again");
                    self.stop(replication).await?;
                    return Ok(SessionEnd::Reload);
                }
                report = self.lanes.reports.recv() => {
                    self.on_report(report)?;
                    // The lag is what DNS has not answered yet, not what the
                    // slot has not confirmed.
                    if self.lag_pending
                        && self.core.batch_is_empty()
                        && !self.core.guard_holds()
                        && self.lanes.all_acked()
                    {
                        self.lag_pending = false;
                        self.lanes.live.all_acknowledged();
                    }
                    self.act(replication).await?;
                    if let Some(end) = self.end_if_due(replication, shutdown).await? {
                        return Ok(end);
                    }
                    continue;
                }
                // The checkpoint's COMMIT answered: the slot may confirm it.
                answer = commit_answered(&mut self.committing), if self.committing.is_some() => {
                    self.finish_commit(answer)?;
                    self.act(replication).await?;
                    if let Some(end) = self.end_if_due(replication, shutdown).await? {
                        return Ok(end);
                    }
                    continue;
                }
                // A frame that is already there goes first: the grouped
                // checkpoint can wait, a live transaction should not.
                // No more read ahead while too many zones wait on their
                // servers (`[limits] max_unacked_zones`).
                frame = replication.recv(), if !self.lanes.saturated() => frame?,
                _ = tokio::time::sleep_until(wake), if timeout.is_some() => {
                    self.core.handle_timeout(Instant::now());
                    self.act(replication).await?;
                    continue;
                }
            };
            let Some(frame) = frame else {
                return Err(RunError::StreamEnded);
            };
            // A stop request interrupts waiting on DNS: whatever was not
            // checkpointed is rolled back with the connection and replayed by
            // the next run.
            tokio::select! {
                r = self.process(replication, frame) => r?,
                _ = shutdown.changed() => {
                    info!("stopping before the pending transactions were acknowledged; they will be replayed");
                    return Ok(SessionEnd::Stopped);
                }
            }
            if let Some(end) = self.end_if_due(replication, shutdown).await? {
                return Ok(end);
            }
        }
    }

    /// When the core says the session ends (a pause, `pg2dns.zones`
    /// changed, a primary to bring in line): drains to exactly there, and
    /// says how it ended.
    async fn end_if_due(
        &mut self,
        replication: &mut PgReplication,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<SessionEnd>, RunError> {
        let Some(end) = self.core.poll_end() else {
            return Ok(None);
        };
        // Everything up to the end, and nothing after.
        tokio::select! {
            r = self.drain(replication) => r?,
            _ = shutdown.changed() => {
                info!("stopping before the pause or the zones' reload was reached; it will be on the next start");
                return Ok(Some(SessionEnd::Stopped));
            }
        }
        Ok(Some(match end {
            End::ZonesChanged => SessionEnd::ZonesChanged,
            End::CatchUp => SessionEnd::CatchUp,
            End::Paused { lsn, request } => {
                self.paused = Some((lsn, request));
                SessionEnd::Paused
            }
        }))
    }

    async fn process(
        &mut self,
        replication: &mut PgReplication,
        frame: Frame,
    ) -> Result<(), RunError> {
        self.on_frame(replication, frame).await?;
        let more_ready = if self.core.wants_ready_probe() {
            replication.has_ready().await?
        } else {
            true
        };
        self.core.handle_frame_done(more_ready);
        self.act(replication).await
    }

    /// Tells the core which batches the store's open transaction holds
    /// (what a checkpoint must cover).
    fn sync_written(&mut self) {
        let written = self.store.written().map(BatchSeq);
        self.core.handle_written(written);
    }

    /// A zone's report: the lanes count it, the core hears it.
    fn on_report(&mut self, report: Option<LaneReport>) -> Result<(), RunError> {
        self.lanes.on_report(report)?;
        self.hear();
        Ok(())
    }

    /// Hands the core what the zones said (also while a flush handed the
    /// servers their dispatches).
    fn hear(&mut self) {
        for heard in self.lanes.take_heard() {
            match heard {
                Heard::Acked { zone, upto } => self.core.handle_acked(zone, upto),
                Heard::Refused(refusal) => self.core.handle_refused(refusal),
                Heard::CatchUp { zone } => {
                    debug!(zone = %self.core.zones().name(zone), "the session ends at the next transaction boundary to bring a primary in line");
                    self.core.handle_catch_up();
                }
            }
        }
    }

    /// Does what the core asks, in order, until it asks nothing more (or
    /// says a drain is done).
    async fn act(&mut self, replication: &mut PgReplication) -> Result<(), RunError> {
        loop {
            self.sync_written();
            let Some(action) = self.core.poll_action(Instant::now()) else {
                if self.core.draining() && self.committing.is_some() {
                    // A drain waits for the COMMIT under way.
                    let answer = commit_answered(&mut self.committing).await;
                    self.finish_commit(answer)?;
                    continue;
                }
                return Ok(());
            };
            match action {
                Action::Find(find) => self.find(find).await?,
                Action::LoadState(read) => self.load_state(read).await?,
                Action::CountRecords(zones) => {
                    let records =
                        crate::guard::zone_records(&mut self.store, self.core.zones(), &zones)
                            .await?;
                    self.core.handle_counted(records);
                }
                Action::AskRelease(lsn) => {
                    let released = crate::guard::released(&mut self.store, lsn).await?;
                    self.core.handle_release(lsn, released);
                }
                // The mass-delete guard (or a change without a key) halts
                // the session here, before anything of the batch is sent.
                Action::Halt(halt) => return Err(self.halted(halt)),
                Action::Dispatch(dispatch) => self.dispatch(dispatch).await?,
                Action::WriteState(write) => {
                    self.write_state(write).await?;
                    self.hear();
                }
                Action::FindProducers(find) => self.find_producers(find).await?,
                Action::Commit(cp, mode) => self.commit(cp, mode).await?,
                Action::CommitIdle(end) => {
                    // A flushed commit flushes every earlier one too. Every
                    // batch is checkpointed: nothing is held back
                    // (`u64::MAX` is "up to the newest batch").
                    self.store
                        .commit(end, Durability::Flushed, u64::MAX)
                        .await?;
                    self.core.handle_idle_committed(end);
                }
                Action::PollFlush => {
                    let flushed = self.store.wal_flushed().await?;
                    self.core.handle_wal_flushed(flushed, Instant::now());
                }
                Action::Confirm(end) => {
                    replication.confirm(end);
                    metrics::get().confirmed(end);
                }
                Action::Wait(until) => {
                    let report = match until {
                        Some(t) => {
                            let t = tokio::time::Instant::from_std(t);
                            tokio::time::timeout_at(t, self.lanes.reports.recv())
                                .await
                                .ok()
                        }
                        None => Some(self.lanes.reports.recv().await),
                    };
                    if let Some(report) = report {
                        self.on_report(report)?;
                    }
                }
                Action::Drained => return Ok(()),
            }
        }
    }

    /// Sends the COMMIT of the state and progress of a checkpoint the core
    /// chose; it runs beside the frames (see `InFlight`) until its answer
    /// comes (`finish_commit`).
    async fn commit(&mut self, cp: Checkpoint, mode: CommitMode) -> Result<(), RunError> {
        let durability = match mode {
            CommitMode::Later => Durability::Later,
            CommitMode::Flushed => Durability::Flushed,
        };
        let started = Instant::now();
        failpoint::hit("after-dns-ack");
        let committing = self
            .store
            .start_commit(cp.end, durability, cp.batch.0)
            .await?;
        self.committing = Some(InFlight {
            cp,
            durability,
            started,
            transactions: self.core.pending_transactions(),
            committing,
        });
        Ok(())
    }

    /// The answer to the checkpoint's COMMIT: the core learns it is
    /// committed (and may then confirm it).
    fn finish_commit(
        &mut self,
        answer: Result<Option<crate::store::Unflushed>, crate::store::StoreError>,
    ) -> Result<(), RunError> {
        let Some(f) = self.committing.take() else {
            return Ok(());
        };
        let unflushed = answer?;
        failpoint::hit("after-state-commit");
        debug!(lsn = %f.cp.end, transactions = f.transactions, total_ms = f.started.elapsed().as_millis() as u64, durability = ?f.durability, "checkpoint");
        let committed = match unflushed {
            None => checkpoint::Durability::Flushed,
            Some(u) => checkpoint::Durability::Unflushed {
                wal: u.wal,
                flushed: u.flushed,
            },
        };
        self.core.handle_committed(f.cp, committed, Instant::now());
        if self.core.pending().is_none() {
            self.lag_pending = false;
            self.lanes.live.all_acknowledged();
        } else if self.lag_pending {
            // The lag counts from the newest transaction received, which
            // is no older than the oldest one still pending.
            self.lanes.live.pending_starts();
        }
        Ok(())
    }

    /// Flushes and waits until everything received is acknowledged and
    /// checkpointed (however long DNS takes): the exact stop of a pause.
    async fn drain(&mut self, replication: &mut PgReplication) -> Result<(), RunError> {
        self.core.drain();
        self.act(replication).await
    }

    /// Clean stop: finish what is complete, leave the rest to the next run.
    async fn stop(&mut self, replication: &mut PgReplication) -> Result<(), RunError> {
        info!("stopping");
        self.core.stop();
        match tokio::time::timeout(STOP_WAIT, self.act(replication)).await {
            Ok(r) => r?,
            Err(_) => warn!("PostgreSQL did not commit the last checkpoint in time; the unconfirmed transactions will be replayed on the next start"),
        }
        if self.core.pending().is_some() {
            warn!("DNS acknowledgements did not arrive in time; the unconfirmed transactions will be replayed on the next start");
        }
        Ok(())
    }

    async fn on_frame(
        &mut self,
        replication: &mut PgReplication,
        frame: Frame,
    ) -> Result<(), RunError> {
        let now = Instant::now();
        self.core.handle_frame(now);
        if self.relations_checked.elapsed() >= crate::relations::CHECK_EVERY {
            self.check_relations(replication).await?;
        }
        let message = match frame {
            Frame::KeepAlive {
                wal_end,
                server_time_micros,
            } => {
                metrics::get().server_at(wal_end);
                // Confirms what the WAL flush passed, and moves an idle slot.
                let store_idle = !self.store.in_transaction();
                self.core
                    .handle_keepalive(wal_end, server_time_micros, store_idle, now);
                return Ok(());
            }
            Frame::Message {
                message,
                server_time_micros,
            } => {
                if let Some(t) = server_time_micros {
                    self.core.handle_server_time(t);
                }
                message
            }
        };
        if let Message::Commit(c) = &message {
            self.core.handle_commit_time(c.commit_time_micros);
            self.lanes.live.commit_received(
                c.end_lsn,
                c.commit_time_micros,
                self.core.server_time_micros(),
            );
        }
        let lsn = self.assembler.current().unwrap_or_default();
        let event = self
            .assembler
            .push(message)
            .map_err(|source| RunError::Stream { lsn, source })?;
        let Some(event) = event else {
            return Ok(());
        };
        let skipping = self.core.skipping();
        match event {
            Event::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                self.xid = xid;
                self.begin_commit_micros = commit_time_micros;
                if !self.core.handle_begin(final_lsn) {
                    debug!(lsn = %final_lsn, "skipping a transaction applied before");
                }
            }
            Event::Change(_) if skipping => {}
            Event::Change(change) if is_zones_table(&change) => {
                debug!(lsn = %change.final_lsn, "a row of pg2dns.zones changed");
                self.core.handle_zones_touched();
            }
            Event::Change(change) if is_control(&change) => match self.core.handle_control(&change)
            {
                Ok(Some(request)) if request.action == "pause" => {
                    info!(by = %request.requested_by, reason = %request.reason, lsn = %change.final_lsn, "pause requested");
                }
                Ok(_) => {}
                Err(e) => {
                    // Only pg2dns.pause() and pg2dns.resume() write this
                    // table: a row they did not write is rejected (said and
                    // recorded), not dropped.
                    warn!(slot = %self.config.database.slot, row = %e.row(), lsn = %e.lsn(), error = %e, "control request not followed: use pg2dns.pause() and pg2dns.resume()");
                    self.store.reject_control_row(&e).await?;
                    metrics::get().rejected.inc();
                }
            },
            Event::Change(change) => {
                // A transaction being received is behind in DNS already: a
                // large one streams for a while before its Commit arrives,
                // and its lag counts from its commit time (in its Begin).
                if !self.lag_pending {
                    self.lag_pending = true;
                    self.lanes
                        .live
                        .pending_since(self.begin_commit_micros, self.core.server_time_micros());
                }
                self.on_change(change).await?
            }
            Event::Truncate {
                final_lsn,
                relations,
                ..
            } if !skipping => {
                // Every row of the table leaves DNS, as a DELETE of each
                // would; the mass-delete guard holds it if that is too much.
                for r in &relations {
                    if let Some(i) = self.source_of(r, final_lsn).await? {
                        info!(table = %r.qualified_name(), lsn = %final_lsn, "TRUNCATE");
                        self.core.handle_truncate(SourceId::new(i)?, final_lsn);
                    }
                }
            }
            Event::Truncate { .. } => {}
            Event::Message {
                final_lsn: Some(lsn),
                message,
            } if !skipping && message.transactional => {
                match crate::relations::truncated_partition(&message.prefix, &message.content) {
                    Some((oid, partition)) => {
                        if let Err(e) = self.on_truncated_partition(lsn, oid, &partition).await {
                            self.settle_before_halt(replication).await;
                            return Err(e);
                        }
                    }
                    None => {
                        debug!(prefix = %message.prefix, lsn = %message.lsn, "logical message ignored")
                    }
                }
            }
            Event::Message { final_lsn, message } => {
                debug!(prefix = %message.prefix, lsn = %message.lsn, in_transaction = final_lsn.is_some(), "logical message ignored");
            }
            Event::Commit { end_lsn, .. } => {
                let zones_changed = self.core.zones_touched() && self.zones_table_changed().await?;
                match self
                    .core
                    .handle_commit(end_lsn, zones_changed, Instant::now())
                {
                    Committed::Skipped => {}
                    Committed::CutBeforeZones => {
                        // The next session adds or removes the zones, then
                        // streams it.
                        info!(lsn = %end_lsn, "pg2dns.zones changed: applying what came before this transaction, then reading the zones again");
                    }
                    outcome @ (Committed::Applied | Committed::AppliedBeforeZones) => {
                        if outcome == Committed::AppliedBeforeZones {
                            // Part of it went out already (a very large
                            // transaction): apply it, then read the zones again.
                            info!(lsn = %end_lsn, "pg2dns.zones changed: applying this transaction, then reading the zones again (its rows of added zones are loaded then)");
                        }
                        metrics::get().transactions.inc();
                        if !self.lag_pending {
                            self.lag_pending = true;
                            self.lanes.live.pending_starts();
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
