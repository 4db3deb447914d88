//! The pipeline: committed transactions in, acknowledged UPDATEs out, and the
//! confirmed LSN moved only behind them.
//!
//! ```text
//!  replication ─▶ Assembler ─▶ batch ─▶ flush: map rows (decoder::mapping),
//!                                        read their row state (one query),
//!                                        plan (decoder::plan: net operations,
//!                                        every refusal), dispatch to the zones'
//!                                        streams, write the new state (uncommitted)
//!                                              │
//!  at a transaction boundary, once every dispatch was acknowledged:
//!     COMMIT row state + progress ─▶ confirm the last transaction's end_lsn
//! ```
//!
//! The pipeline is a driver: what a row means, what goes to DNS and what is
//! refused are decided by the sans-IO decoder. It owns the order of things:
//! the confirmed LSN is the commit `end_lsn` of the newest transaction such
//! that it and every earlier one were fully acknowledged and their state
//! committed, because confirming happens only after the checkpoint commit,
//! which happens only after every dispatch was acknowledged. Which
//! checkpoint is safe is decided by the sans-IO ledger
//! (`pg2dns_decoder::checkpoint::Ledger`); the pipeline feeds it and keeps
//! the clock.
//!
//! Batching: a live transaction (sent by the server right after it
//! committed) is flushed as soon as nothing else is ready, with no timer.
//! A backlog (the server's send time well after the commit time) is batched
//! up to [`MAX_BATCH_ROWS`] rows and flushed on a 2 ms pause; the zones then
//! coalesce the dispatches into full messages.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pg2dns_decoder::checkpoint::{self, BatchSeq};
use pg2dns_decoder::mapping::{self, Desired, Mapping, RowUpdate, RrTable};
use pg2dns_decoder::pgoutput::Message;
use pg2dns_decoder::plan::{
    PlanLimits, Planner, Refusal, Refused, Rejection, RowRef, SourceId, Waiting, ZoneOps,
};
use pg2dns_decoder::session::Rcode;
use pg2dns_decoder::txn::{Assembler, Event, RowChange};
use pg2dns_decoder::update::UpdateOp;
use pg2dns_decoder::{Lsn, Owner, RType, Record, ZoneId, Zones};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::control::{Control, ControlRequest, Mode};
use crate::dns::kept::Kept;
use crate::dns::lanes::Lanes;
use crate::error::{Disposition, RunError};
use crate::replication::{Frame, PgReplication, Replication};
use crate::store::{Durability, Store};
use crate::{failpoint, metrics, status};

/// Rows per flush: bounds memory and the size of one state round trip.
pub const MAX_BATCH_ROWS: usize = 2_000;
/// A commit sent this long after it happened means a backlog.
const BACKLOG_MICROS: i64 = 20_000;
/// While working through a backlog, how long a pause in the stream flushes
/// the batch (never used for a live stream, where a commit goes out at once).
const BACKLOG_PAUSE: Duration = Duration::from_millis(2);
/// How long an acknowledged transaction waits for others to share its
/// checkpoint. The DNS already has the change: only the slot's
/// confirmation and the row state's commit wait (the state is held in
/// memory meanwhile, see `Store::write`). A checkpoint is a round trip, a
/// COMMIT and WAL on the server, and a confirmation that the walsender
/// answers: at 20 one-row transactions a second, checkpoints 100 ms apart
/// were 85 % of the SQL backend's CPU and a third of pg2dns's, 1 s apart
/// they are a twentieth. What a crash replays grows to one second of
/// transactions, which replay exactly.
const CHECKPOINT_GROUP: Duration = Duration::from_secs(1);
/// Longest time between checkpoints while transactions keep arriving.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// How often the server is asked how far its WAL is flushed while a
/// checkpoint committed without waiting for it is not confirmed yet. The
/// WAL writer flushes at least every `wal_writer_delay` (200 ms by default;
/// any other commit on the server flushes it sooner), and the walsender's
/// next keepalive usually tells first (see `on_frame`).
const FLUSH_POLL: Duration = Duration::from_millis(300);
/// How long a checkpoint waits for the last acknowledgements before the
/// stream goes on without it.
const BARRIER_WAIT: Duration = Duration::from_millis(100);

/// How often a standby tries the slot another instance holds.
const STANDBY_RETRY: Duration = Duration::from_secs(1);

/// How often an idle slot is moved. Each move writes the progress row,
/// which itself writes WAL that the next keepalive reports: without a pause
/// the two would chase each other.
const IDLE_CONFIRM_EVERY: Duration = Duration::from_secs(10);

/// A change or a commit, in stream order.
enum Item {
    Change(SourceId, RowChange),
    /// A TRUNCATE of a source's table, at the commit LSN of its transaction.
    Truncate(SourceId, Lsn),
    /// A transaction's commit, with its end LSN.
    Commit(Lsn),
}

/// One step of a flush, in stream order.
enum Step {
    Row(SourceId, RowUpdate),
    Truncate(SourceId, Lsn),
    Commit(Lsn),
}

impl Step {
    fn update(&self) -> Option<(SourceId, &RowUpdate)> {
        match self {
            Step::Row(s, u) => Some((*s, u)),
            _ => None,
        }
    }
}

/// The sources this configuration streams: the built-in `pg2dns.rr` first
/// (its index, 0, is what row state written by earlier versions used), then
/// each `[[source]]` in configuration order, then the zones tables they
/// reference (which publish nothing themselves).
pub fn mappings(config: &Config) -> Vec<Box<dyn Mapping>> {
    let mut out: Vec<Box<dyn Mapping>> = vec![Box::new(RrTable)];
    out.extend(
        config
            .sources
            .iter()
            .map(|s| Box::new(s.clone()) as Box<dyn Mapping>),
    );
    out.extend(
        config
            .zones_tables()
            .into_iter()
            .map(|t| Box::new(t) as Box<dyn Mapping>),
    );
    out
}

/// How long a halt on DDL waits for DNS to acknowledge the transactions
/// before it (see `Pipeline::settle_before_halt`).
const HALT_SETTLE: Duration = Duration::from_secs(30);

/// Runs one session: connections, streaming, until shutdown or an error.
pub struct Pipeline<'c> {
    config: &'c Config,
    zones: Zones,
    limits: PlanLimits,
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
    /// The mass-delete guard of each zone, by `ZoneId`.
    guards: Vec<pg2dns_decoder::guard::DeleteGuard>,
    mappings: Vec<Box<dyn Mapping>>,
    sources: Vec<String>,
    store: Store,
    assembler: Assembler,
    /// Whether the open transaction was applied before and is skipped.
    skipping: bool,
    batch: Vec<Item>,
    batch_rows: usize,
    lanes: Lanes,
    /// A transaction received is not acknowledged yet: the status's lag
    /// counts from the oldest such one.
    lag_pending: bool,
    /// When a checkpoint was last committed or forced.
    last_checkpoint: Instant,
    /// What was last confirmed to the slot in this session.
    confirmed: Option<Lsn>,
    /// When the server is next asked how far its WAL is flushed.
    flush_poll: Instant,
    /// When the last frame arrived.
    last_frame: Instant,
    /// The server's clock at its last message.
    server_time_micros: i64,
    /// Whether the last commit arrived well after it happened.
    backlog: bool,
    /// What a transaction continuing past the last flush deleted so far
    /// (the mass-delete guard judges a transaction as a whole).
    guard_carry: crate::guard::Carry,
    /// The parts of that transaction not sent yet (see `guard::ready_parts`).
    guard_held: Vec<(Lsn, Vec<ZoneOps>)>,
    /// When an idle slot was last moved.
    last_idle_confirm: Instant,
    /// A pause request seen in the open transaction.
    pause_request: Option<ControlRequest>,
    /// A committed pause: stop after the transaction that ends here.
    pause_at: Option<(Lsn, ControlRequest)>,
    /// Where the session paused.
    paused: Option<(Lsn, ControlRequest)>,
    /// A resume that pauses again before the first transaction committing
    /// at or after this LSN.
    stop_at: Option<(Lsn, ControlRequest)>,
    /// That transaction began: drain what came before it, then pause.
    stopping: bool,
    /// The rows of `pg2dns.zones` this session's zones were built from.
    table_rows: Vec<crate::config::TableZone>,
    /// The open transaction changed a row of `pg2dns.zones`.
    zones_touched: bool,
    /// Where the open transaction's items start in the batch (and the row
    /// count then); `None` once part of it was flushed.
    txn_start: Option<(usize, usize)>,
    /// A transaction changed what `pg2dns.zones` holds: the session drains
    /// what came before it and ends.
    zones_changed: bool,
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
            let after = control.newest_request().await?;
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

/// A store error, or the schema missing when the table is undefined.
fn schema_or_store(e: crate::store::StoreError) -> RunError {
    if e.sqlstate() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
        RunError::SchemaMissing
    } else {
        e.into()
    }
}

async fn session(
    config: &Config,
    shutdown: &mut watch::Receiver<bool>,
    reload: &mut Option<watch::Receiver<u64>>,
    kept: &mut Kept,
) -> Result<SessionEnd, RunError> {
    let mut control = Control::connect(&config.database)
        .await
        .map_err(schema_or_store)?;
    // A pause survives restarts: wait for the resume before streaming.
    let mut stop_at: Option<(Lsn, ControlRequest)> = None;
    match control.mode().await.map_err(schema_or_store)? {
        Mode::Paused { lsn, request } => {
            metrics::get().set_state(metrics::State::Paused);
            info!(%lsn, by = %request.requested_by, reason = %request.reason, "paused: waiting for `pg2dns resume`");
            crate::notify::ready(&format!("paused at {lsn}: waiting for `pg2dns resume`"));
            let waited = tokio::select! {
                r = control.wait_for_resume_or_lease_end(&request, shutdown) => r?,
                // Still paused: the next session reads the new configuration.
                _ = reload_asked(reload) => return Ok(SessionEnd::Reload),
            };
            let Some(resume) = waited else {
                return Ok(SessionEnd::Stopped);
            };
            info!(%lsn, "resumed: streaming continues after {lsn}");
            if let Some(until) = resume.until {
                info!(%until, "pausing again before the first transaction committed at or after {until}");
                stop_at = Some((until, resume));
            }
        }
        // A restart is the operator's answer to a halt: try again.
        Mode::Halted { .. } | Mode::Running | Mode::Stopped { .. } => {}
    }
    let mut store = Store::connect(&config.database).await?;
    let Some(slot) = store.slot_info().await? else {
        return Err(RunError::SlotMissing {
            slot: config.database.slot.clone(),
        });
    };
    if !slot.ours {
        return Err(RunError::SlotElsewhere {
            slot: config.database.slot.clone(),
            database: slot.database,
        });
    }
    if slot.plugin != config.database.plugin.library() {
        return Err(RunError::SlotPlugin {
            slot: config.database.slot.clone(),
            slot_plugin: slot.plugin,
            configured: config.database.plugin.config_name(),
            wanted: config.database.plugin.library(),
        });
    }
    // Another instance streams: stand by without asking for the slot (the
    // server would log an error for each try).
    if let Some(pid) = slot.active_pid {
        control.standing_by().await;
        return Err(RunError::SlotBusy {
            slot: config.database.slot.clone(),
            pid,
        });
    }
    let slot_at = slot.confirmed;
    let progress = store.progress().await.map_err(schema_or_store)?;
    // pg2dns confirms only what its progress holds, so a slot ahead of the
    // progress was not the one pg2dns streamed from: a gap.
    if store.has_progress().await? && slot_at > progress {
        return Err(RunError::SlotGap {
            slot: config.database.slot.clone(),
            progress,
            slot_at,
        });
    }
    // The zones of pg2dns.zones join the configuration's (zones added
    // since the last session are loaded here).
    let zone_set = crate::zone_set::for_session(config, &mut store).await?;
    let config = &zone_set.config;
    check_zone_set(&store, config).await?;
    // A key that stopped being unique (an index dropped) halts here; a
    // Relation message does not carry indexes, so the stream cannot see it.
    let problems = crate::check::key_problems(store.client(), config).await?;
    if !problems.is_empty() {
        return Err(RunError::KeyNotUnique { problems });
    }
    store.track_presence().await?;
    let mut replication = match PgReplication::connect(&config.database, progress).await {
        Ok(r) => r,
        // Another instance took the slot since it was looked at.
        Err(e) if e.sqlstate() == Some(tokio_postgres::error::SqlState::OBJECT_IN_USE.code()) => {
            control.standing_by().await;
            let slot = store.slot_info().await.ok().flatten();
            return Err(RunError::SlotBusy {
                slot: config.database.slot.clone(),
                pid: slot.and_then(|s| s.active_pid).unwrap_or(0),
            });
        }
        Err(e) => return Err(e.into()),
    };
    // Every source's table exists and is published, and is followed by OID.
    let tables: Vec<String> = mappings(config)
        .iter()
        .map(|m| m.source().to_owned())
        .collect();
    let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
    let publication = &config.database.publication;
    let oids = crate::relations::check_tables(store.client(), publication, &tables, true).await?;
    let partitions = crate::relations::partitions(store.client(), &oids).await?;
    // DDL made while no pg2dns ran for this slot halts here.
    crate::relations::settle_recorded(
        store.client(),
        &config.database.slot,
        &tables,
        &oids,
        &partitions,
    )
    .await?;
    // Partitions attached since setup get the TRUNCATE trigger when this
    // role may put it there (a warning with the SQL otherwise).
    crate::relations::install_truncate_triggers(store.client(), &oids).await?;
    // Only the instance that holds the slot speaks for it (a standby fails
    // above, with the slot busy).
    control.took_over().await;
    control.set_mode(&Mode::Running).await?;
    metrics::get().set_state(metrics::State::Running);
    info!(slot = %config.database.slot, progress = %progress, "streaming");
    crate::notify::ready(&format!(
        "streaming from slot {} at {progress}",
        config.database.slot
    ));
    let mappings = mappings(config);
    let mut zones = config.zones();
    for table in store
        .load_zone_refs(&config.zones_tables(), zones.refs_mut())
        .await?
    {
        info!(%table, "no rows of this zones table are known yet: read as it is now (`pg2dns reconcile --apply` makes them exact)");
    }
    let live = status::Live::new(config);
    let publisher = tokio::spawn(status::publish(live.clone(), config.clone()));
    let _publisher = AbortOnDrop(publisher);
    // Primaries the last session left degraded are brought in line first.
    Lanes::catch_up(config, &mut store, progress, kept).await;
    let lanes = Lanes::start(config, live.clone(), progress, kept).await;
    let mut p = Pipeline {
        config,
        zones,
        limits: pg2dns_decoder::plan::PlanLimits {
            held: held_outside(config).await,
            ..config.plan_limits()
        },
        guards: config.zones.iter().map(|z| z.guard).collect(),
        needed: std::iter::once(pg2dns_decoder::schema::rr_columns())
            .chain(
                config
                    .sources
                    .iter()
                    .map(|s| pg2dns_decoder::schema::source_columns(s.spec())),
            )
            .chain(
                config
                    .zones_tables()
                    .iter()
                    .map(pg2dns_decoder::schema::zones_table_columns),
            )
            .collect(),
        checked: vec![None; mappings.len()],
        oids,
        resolved: std::collections::HashMap::new(),
        relations_checked: Instant::now(),
        partitions,
        sources: mappings.iter().map(|m| m.source().to_owned()).collect(),
        mappings,
        store,
        assembler: Assembler::new(),
        skipping: false,
        batch: Vec::new(),
        batch_rows: 0,
        lanes,
        lag_pending: false,
        last_checkpoint: Instant::now(),
        confirmed: None,
        flush_poll: Instant::now(),
        last_frame: Instant::now(),
        server_time_micros: 0,
        backlog: false,
        guard_carry: None,
        guard_held: Vec::new(),
        last_idle_confirm: Instant::now() - IDLE_CONFIRM_EVERY,
        pause_request: None,
        pause_at: None,
        paused: None,
        stop_at,
        stopping: false,
        table_rows: zone_set.rows.clone(),
        zones_touched: false,
        txn_start: None,
        zones_changed: false,
    };
    let result = p.stream(&mut replication, shutdown, reload).await;
    if let Ok(SessionEnd::Reload | SessionEnd::ZonesChanged | SessionEnd::Paused) = result {
        *kept = p.lanes.keep();
    } else {
        kept.note_behind(p.lanes.behind());
    }
    if let Ok(SessionEnd::Stopped) = result {
        // Said while this instance still holds the slot, so that it cannot
        // overwrite the mode of a standby that takes over.
        if let Err(e) = control
            .set_mode(&Mode::Stopped {
                reason: "stopped by a signal".into(),
                hint: String::new(),
            })
            .await
        {
            warn!(error = %crate::error::chain(&e), "cannot record the stop in pg2dns.mode");
        } else {
            metrics::get().set_state(metrics::State::Stopped);
        }
    }
    metrics::get().clear_unreachable();
    if result.is_ok() && p.confirmed.is_some() {
        replication.shutdown().await;
    }
    if let Ok(SessionEnd::Paused) = result {
        if let Some((lsn, request)) = p.paused.take() {
            control.set_mode(&Mode::Paused { lsn, request }).await?;
            metrics::get().set_state(metrics::State::Paused);
            info!(%lsn, "paused: every transaction committed before the pause is in DNS");
        }
    }
    result
}

/// Aborts the status publisher when the session ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the zones with exclusions hold at names and types left to other
/// tools, by a zone transfer (see `pg2dns_decoder::held`): the plan then
/// refuses a CNAME beside them, or data beside such a CNAME. The apex needs
/// no transfer. A failed transfer is logged and leaves that zone unknown.
pub(crate) async fn held_outside(config: &Config) -> pg2dns_decoder::held::Held {
    let mut held = pg2dns_decoder::held::Held::default();
    let ids = config.zones();
    for ((id, _), zc) in ids.iter().zip(&config.zones) {
        if zc.exclusions.is_empty() {
            continue;
        }
        let transfer =
            crate::dns::axfr::transfer(&zc.name, zc.primary, &zc.key, config.limits.dns_timeout);
        match transfer.await {
            Ok(t) => held.learn(id, &zc.exclusions, &t.records),
            Err(e) => {
                warn!(zone = %zc.name, error = %crate::error::chain(&e), "cannot read what the zone holds at its excluded names and types: a CNAME there beside a row's records (or the reverse) is not refused before sending")
            }
        }
    }
    held
}

/// Says which zones were added or removed since this instance last ran:
/// their contents need a resync (rows once refused as outside every zone are
/// not replayed; a zone no longer followed keeps its records).
async fn check_zone_set(store: &Store, config: &Config) -> Result<(), RunError> {
    let now: Vec<String> = config.zones.iter().map(|z| z.name.to_string()).collect();
    if let Some(before) = store.instance_zones().await? {
        // Zones of pg2dns.zones were loaded when they were added (`zone_set`).
        let from_file = |z: &&String| {
            config
                .zones
                .iter()
                .any(|c| !c.from_table && c.name.to_string() == **z)
        };
        for added in now.iter().filter(|z| !before.contains(z)).filter(from_file) {
            warn!(zone = %added, "zone added since the last run: rows committed before now that belong to it were not published; resynchronise it");
        }
        for removed in before.iter().filter(|z| !now.contains(z)) {
            warn!(zone = %removed, "zone removed since the last run: pg2dns no longer follows it, and the records it published there stay until removed by hand");
        }
    }
    store.set_instance_zones(&now).await?;
    Ok(())
}

impl Pipeline<'_> {
    async fn stream(
        &mut self,
        replication: &mut PgReplication,
        shutdown: &mut watch::Receiver<bool>,
        reload: &mut Option<watch::Receiver<u64>>,
    ) -> Result<SessionEnd, RunError> {
        loop {
            let group_due = self.group_due();
            let flush_poll = tokio::time::Instant::from_std(self.flush_poll);
            let group_waiting =
                self.lanes.ledger.pending().is_some() && self.committable().is_some();
            // Measured from the last frame, so that no other branch firing
            // meanwhile can put it off.
            let pause_over = tokio::time::Instant::from_std(self.last_frame + BACKLOG_PAUSE);
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
                    self.lanes.on_report(report)?;
                    // The lag is what DNS has not answered yet, not what the
                    // slot has not confirmed.
                    if self.lag_pending
                        && self.batch.is_empty()
                        && self.guard_held.is_empty()
                        && self.lanes.all_acked()
                    {
                        self.lag_pending = false;
                        self.lanes.live.all_acknowledged();
                    }
                    self.reject_refused().await?;
                    // The last acknowledgement of an idle stream completes
                    // the pending checkpoint, once its group time is over.
                    if self.checkpoint_ready() {
                        self.checkpoint(replication, Duration::ZERO, Durability::Later).await?;
                    }
                    continue;
                }
                // A frame that is already there goes first: the grouped
                // checkpoint can wait, a live transaction should not.
                frame = replication.recv() => frame?,
                _ = tokio::time::sleep_until(group_due), if group_waiting => {
                    self.checkpoint(replication, Duration::ZERO, Durability::Later).await?;
                    continue;
                }
                _ = tokio::time::sleep_until(flush_poll), if self.lanes.ledger.awaiting_flush() => {
                    let flushed = self.store.wal_flushed().await?;
                    self.confirm_flushed(replication, flushed);
                    continue;
                }
                _ = tokio::time::sleep_until(pause_over), if !self.batch.is_empty() && !self.assembler.in_transaction() => {
                    self.flush().await?;
                    self.maybe_checkpoint(replication).await?;
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
            if self.zones_changed {
                tokio::select! {
                    r = self.drain(replication) => r?,
                    _ = shutdown.changed() => return Ok(SessionEnd::Stopped),
                }
                return Ok(SessionEnd::ZonesChanged);
            }
            if self.stopping {
                if let Some((until, request)) = self.stop_at.take() {
                    tokio::select! {
                        r = self.drain(replication) => r?,
                        _ = shutdown.changed() => return Ok(SessionEnd::Stopped),
                    }
                    self.paused = Some((until, request));
                    return Ok(SessionEnd::Paused);
                }
            }
            if let Some((lsn, request)) = self.pause_at.take() {
                // Everything up to the pausing transaction, and nothing after.
                tokio::select! {
                    r = self.drain(replication) => r?,
                    _ = shutdown.changed() => {
                        info!("stopping before the pause was reached; it will be on the next start");
                        return Ok(SessionEnd::Stopped);
                    }
                }
                self.paused = Some((lsn, request));
                return Ok(SessionEnd::Paused);
            }
        }
    }

    async fn process(
        &mut self,
        replication: &mut PgReplication,
        frame: Frame,
    ) -> Result<(), RunError> {
        self.on_frame(replication, frame).await?;
        // Flush and checkpoint when the stream has nothing more ready now:
        // a lone commit goes out at once, a backlog is batched. A
        // transaction is never cut because its rest is late (PostgreSQL
        // sends it whole, after its commit): an owner's changes stay in one
        // segment unless the transaction outgrows two batches.
        let in_txn = self.assembler.in_transaction();
        let idle = !in_txn && !self.backlog && !replication.has_ready().await?;
        // A full batch is flushed at a transaction boundary, so that a
        // checkpoint can follow; a huge transaction is flushed in parts.
        let full =
            (self.batch_rows >= MAX_BATCH_ROWS && !in_txn) || self.batch_rows >= 2 * MAX_BATCH_ROWS;
        if full || (idle && !self.batch.is_empty()) {
            if in_txn {
                // Part of the open transaction goes out now.
                self.txn_start = None;
            }
            self.flush().await?;
        }
        self.maybe_checkpoint(replication).await
    }

    /// At a transaction boundary: commits when everything is acknowledged
    /// and the oldest transaction waited [`CHECKPOINT_GROUP`]; otherwise
    /// leaves it to the last acknowledgement or the group timer (see
    /// `stream`), except that while transactions keep coming a checkpoint is
    /// forced every [`CHECKPOINT_EVERY`], waiting at most [`BARRIER_WAIT`].
    /// Never waiting on the way of a live transaction keeps a slow answer
    /// from delaying the next one.
    async fn maybe_checkpoint(&mut self, replication: &mut PgReplication) -> Result<(), RunError> {
        if self.checkpoint_ready() {
            self.checkpoint(replication, Duration::ZERO, Durability::Later)
                .await
        } else if self.at_boundary()
            && self.committable().is_none()
            && self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY
        {
            // The open transaction holds writes of batches still in flight
            // (a batch read the row state, or wrote more than it holds
            // back): only their acknowledgements let a checkpoint happen.
            self.checkpoint(replication, BARRIER_WAIT, Durability::Later)
                .await
        } else {
            Ok(())
        }
    }

    /// Acknowledged batches to checkpoint, and the oldest transaction
    /// waited its group time.
    fn checkpoint_ready(&mut self) -> bool {
        self.last_checkpoint.elapsed() >= CHECKPOINT_GROUP && self.committable().is_some()
    }

    /// The newest flushed batch a checkpoint may cover now, and the
    /// progress it sets (see `checkpoint::Ledger::poll_checkpoint`), told
    /// first which batches the store's open transaction holds.
    fn committable(&mut self) -> Option<checkpoint::Checkpoint> {
        let written = self.store.written().map(BatchSeq);
        self.lanes.ledger.handle_written(written);
        self.lanes.ledger.poll_checkpoint()
    }

    /// When the pending checkpoint's group time is over.
    fn group_due(&self) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.last_checkpoint + CHECKPOINT_GROUP)
    }

    /// Between transactions, with everything flushed and something to checkpoint.
    fn at_boundary(&self) -> bool {
        !self.assembler.in_transaction()
            && self.batch.is_empty()
            && self.lanes.ledger.pending().is_some()
    }

    /// Flushes and waits until everything received is acknowledged and
    /// checkpointed (however long DNS takes): the exact stop of a pause.
    async fn drain(&mut self, replication: &mut PgReplication) -> Result<(), RunError> {
        if !self.batch.is_empty() {
            self.flush().await?;
        }
        while self.lanes.ledger.pending().is_some() {
            self.checkpoint(replication, Duration::from_secs(5), Durability::Flushed)
                .await?;
        }
        self.await_flush(replication).await
    }

    /// Clean stop: finish what is complete, leave the rest to the next run.
    async fn stop(&mut self, replication: &mut PgReplication) -> Result<(), RunError> {
        info!("stopping");
        if !self.assembler.in_transaction() {
            if !self.batch.is_empty() {
                self.flush().await?;
            }
            if self.lanes.ledger.pending().is_some() {
                let wait = tokio::time::timeout(
                    Duration::from_secs(5),
                    self.checkpoint(replication, Duration::from_secs(5), Durability::Flushed),
                );
                match wait.await {
                    Ok(r) => r?,
                    Err(_) => warn!("DNS acknowledgements did not arrive in time; the unconfirmed transactions will be replayed on the next start"),
                }
            }
        }
        self.await_flush(replication).await
    }

    async fn on_frame(
        &mut self,
        replication: &mut PgReplication,
        frame: Frame,
    ) -> Result<(), RunError> {
        self.last_frame = Instant::now();
        if self.relations_checked.elapsed() >= crate::relations::CHECK_EVERY {
            self.relations_checked = Instant::now();
            let tables: Vec<&str> = self.mappings.iter().map(|m| m.source()).collect();
            let publication = &self.config.database.publication;
            let client = self.store.settled_client().await?;
            let oids = crate::relations::check_tables(client, publication, &tables, false).await?;
            // A re-created table is the stream's to name (see `source_of`).
            if oids == self.oids {
                let now = crate::relations::partitions(client, &oids).await?;
                for (i, (before, now)) in self.partitions.iter().zip(&now).enumerate() {
                    if let Some(p) =
                        crate::relations::partitions_changed(&self.sources[i], before, now)
                    {
                        self.record_pending(i, oids[i]).await;
                        self.settle_before_halt(replication).await;
                        return Err(p.into());
                    }
                }
            }
        }
        let message = match frame {
            Frame::KeepAlive {
                wal_end,
                server_time_micros,
            } => {
                self.server_time_micros = server_time_micros;
                metrics::get().server_at(wal_end);
                // Logical decoding reads only WAL the server has flushed (the
                // walsender waits for the flush pointer before it decodes),
                // so the WAL end a keepalive reports is flushed: no need to
                // ask for the flush position.
                if self.lanes.ledger.awaiting_flush() {
                    self.confirm_flushed(replication, wal_end);
                }
                // Nothing in flight: let an idle slot move, or it pins WAL.
                // The progress moves first, so that the slot never gets
                // ahead of it (which is how a re-created slot is noticed).
                if !self.assembler.in_transaction()
                    && self.batch.is_empty()
                    && self.lanes.ledger.is_idle()
                    && !self.store.in_transaction()
                    && wal_end > self.confirmed.unwrap_or(self.lanes.ledger.progress())
                    && self.last_idle_confirm.elapsed() >= IDLE_CONFIRM_EVERY
                {
                    self.last_idle_confirm = Instant::now();
                    // A flushed commit flushes every earlier one too. Every
                    // batch is checkpointed: nothing is held back (`u64::MAX`
                    // is "up to the newest batch").
                    self.store
                        .commit(wal_end, Durability::Flushed, u64::MAX)
                        .await?;
                    let end = self.lanes.ledger.handle_idle_committed(wal_end);
                    self.confirm(replication, end);
                }
                return Ok(());
            }
            Frame::Message {
                message,
                server_time_micros,
            } => {
                if let Some(t) = server_time_micros {
                    self.server_time_micros = t;
                }
                message
            }
        };
        if let Message::Commit(c) = &message {
            // The server sent this commit long after it happened: the stream
            // is working through a backlog, so batch it.
            self.backlog = self.server_time_micros - c.commit_time_micros > BACKLOG_MICROS;
            self.lanes.live.commit_received(
                c.end_lsn,
                c.commit_time_micros,
                self.server_time_micros,
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
        match event {
            Event::Begin { final_lsn, .. } => {
                self.txn_start = Some((self.batch.len(), self.batch_rows));
                self.zones_touched = false;
                // A transaction whose commit precedes the durable progress was
                // applied and checkpointed before: skip it outright.
                self.skipping = final_lsn < self.lanes.ledger.progress();
                if self
                    .stop_at
                    .as_ref()
                    .is_some_and(|(until, _)| final_lsn >= *until)
                {
                    // Not applied: the stream stops right before it.
                    self.skipping = true;
                    self.stopping = true;
                }
                if self.skipping {
                    debug!(lsn = %final_lsn, "skipping a transaction applied before");
                }
            }
            Event::Change(change) if !self.skipping && is_zones_table(&change) => {
                debug!(lsn = %change.final_lsn, "a row of pg2dns.zones changed");
                self.zones_touched = true;
            }
            Event::Change(change) if !self.skipping && is_control(&change) => {
                if let Some(request) = control_request(&change, &self.config.database.slot) {
                    if request.action == "pause" {
                        info!(by = %request.requested_by, reason = %request.reason, lsn = %change.final_lsn, "pause requested");
                        self.pause_request = Some(request);
                    }
                }
            }
            Event::Change(change) if !self.skipping => {
                if let Some(i) = self.source_of(&change.relation, change.final_lsn).await? {
                    // A new table layout: does it still hold what the
                    // source reads? (Once per Relation message.)
                    let known = self.checked[i]
                        .as_ref()
                        .is_some_and(|r| std::sync::Arc::ptr_eq(r, &change.relation));
                    if !known {
                        pg2dns_decoder::schema::check(&self.needed[i], &change.relation).map_err(
                            |problem| RunError::Schema {
                                source_name: self.sources[i].clone(),
                                problem,
                                lsn: change.final_lsn,
                            },
                        )?;
                        self.checked[i] = Some(change.relation.clone());
                    }
                    self.batch.push(Item::Change(SourceId::new(i)?, change));
                    self.batch_rows += 1;
                    metrics::get().rows.inc();
                }
            }
            Event::Change(_) => {}
            Event::Truncate {
                final_lsn,
                relations,
                ..
            } if !self.skipping => {
                // Every row of the table leaves DNS, as a DELETE of each
                // would; the mass-delete guard holds it if that is too much.
                for r in &relations {
                    if let Some(i) = self.source_of(r, final_lsn).await? {
                        info!(table = %r.qualified_name(), lsn = %final_lsn, "TRUNCATE");
                        self.batch
                            .push(Item::Truncate(SourceId::new(i)?, final_lsn));
                        self.batch_rows += 1;
                    }
                }
            }
            Event::Truncate { .. } => {}
            Event::Message {
                final_lsn: Some(lsn),
                message,
            } if !self.skipping && message.transactional => {
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
                if !self.skipping && self.zones_touched && self.zones_table_changed().await? {
                    self.zones_changed = true;
                    if let Some((len, rows)) = self.txn_start {
                        // Stop right before it: the next session adds or
                        // removes the zones, then streams it.
                        info!(lsn = %end_lsn, "pg2dns.zones changed: applying what came before this transaction, then reading the zones again");
                        self.batch.truncate(len);
                        self.batch_rows = rows;
                        self.pause_request = None;
                        self.skipping = false;
                        return Ok(());
                    }
                    // Part of it went out already (a very large
                    // transaction): apply it, then read the zones again.
                    info!(lsn = %end_lsn, "pg2dns.zones changed: applying this transaction, then reading the zones again (its rows of added zones are loaded then)");
                }
                if !self.skipping {
                    metrics::get().transactions.inc();
                    self.batch.push(Item::Commit(end_lsn));
                    if self.lanes.ledger.handle_received(end_lsn) {
                        // The checkpoint clock starts with the oldest
                        // transaction it will cover.
                        self.last_checkpoint = Instant::now();
                    }
                    if !self.lag_pending {
                        self.lag_pending = true;
                        self.lanes.live.pending_starts();
                    }
                    if let Some(request) = self.pause_request.take() {
                        self.pause_at = Some((end_lsn, request));
                    }
                }
                self.pause_request = None;
                self.skipping = false;
            }
        }
        Ok(())
    }

    /// pg2dns's trigger says a partition was truncated in the transaction
    /// committing at `lsn`: PostgreSQL published nothing for it, so this
    /// halts before the transaction, unless the partitioned table itself
    /// was truncated in it (its TRUNCATE carries the partition's rows), or
    /// a `pg2dns resume` came after the halt on this very TRUNCATE (the
    /// operator ran `pg2dns reconcile --apply`). A message for a table that
    /// was no partition of a source at the session start is ignored.
    async fn on_truncated_partition(
        &mut self,
        lsn: Lsn,
        oid: Option<u32>,
        partition: &str,
    ) -> Result<(), RunError> {
        let Some(i) = self.partitions.iter().position(|set| {
            set.iter()
                .any(|(o, n)| oid.map_or(n == partition, |oid| *o == oid))
        }) else {
            warn!(%partition, %lsn, "a TRUNCATE message for a table that is no partition of a source: ignored");
            return Ok(());
        };
        let covered = self
            .batch
            .iter()
            .any(|item| matches!(item, Item::Truncate(s, l) if usize::from(s.0) == i && *l == lsn));
        if covered {
            return Ok(());
        }
        let (client, _task) = crate::pgconn::connect(&self.config.database, "pg2dns").await?;
        if crate::relations::truncate_passes(&client, &self.config.database.slot, lsn, partition)
            .await?
        {
            info!(source = %self.sources[i], %partition, %lsn, "TRUNCATE of one partition, halted on before and resumed since: passed");
            return Ok(());
        }
        Err(crate::relations::RelationProblem::TruncatedPartition {
            source_name: self.sources[i].clone(),
            partition: partition.to_owned(),
            lsn,
        }
        .into())
    }

    /// Before a halt at the open transaction (DDL that put nothing in the
    /// stream): applies and checkpoints every transaction before it and
    /// drops what the batch holds of it, so that the halt is exact and a
    /// `pg2dns reconcile --apply` while halted is not undone by replaying
    /// earlier transactions after the resume. When the open transaction was
    /// already partly sent (a huge one), or DNS does not answer within
    /// [`HALT_SETTLE`], the earlier transactions are replayed instead.
    async fn settle_before_halt(&mut self, replication: &mut PgReplication) {
        let open = self.assembler.current();
        if open.is_some()
            && self
                .guard_carry
                .as_ref()
                .is_some_and(|(lsn, _)| Some(*lsn) == open)
        {
            warn!("the halted transaction was partly sent already: the transactions before it are replayed after the resume");
            return;
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
        match tokio::time::timeout(HALT_SETTLE, self.drain(replication)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %crate::error::chain(&e), "cannot apply the transactions before the halt: they are replayed after the resume")
            }
            Err(_) => {
                warn!("DNS did not acknowledge the transactions before the halt in time: they are replayed after the resume")
            }
        }
    }

    /// Records the state of source `i`'s table now (`oid`, its partitions)
    /// as the one a halt named, which the next `pg2dns resume` accepts (see
    /// `relations::settle_recorded`). On its own connection: the store's
    /// open transaction is rolled back by the halt.
    async fn record_pending(&self, i: usize, oid: u32) {
        let attempt = async {
            let (client, _task) = crate::pgconn::connect(&self.config.database, "pg2dns").await?;
            let parts = crate::relations::partitions(&client, &[oid]).await?;
            crate::relations::record_pending(
                &client,
                &self.config.database.slot,
                &self.sources[i],
                oid,
                &parts.into_iter().next().unwrap_or_default(),
            )
            .await
        };
        if let Err(e) = attempt.await {
            warn!(error = %crate::error::chain(&e), "cannot record the new state of the source's table: the next start halts on it again");
        }
    }

    /// The source a change's table belongs to, by OID (see `relations`):
    /// `None` for a table to ignore, an error for DDL that must halt.
    async fn source_of(
        &mut self,
        relation: &std::sync::Arc<pg2dns_decoder::pgoutput::Relation>,
        lsn: Lsn,
    ) -> Result<Option<usize>, RunError> {
        use crate::relations::{oid_of, table_now};
        let (ns, name) = (relation.namespace.as_str(), relation.name.as_str());
        let by_name = self.mappings.iter().position(|m| m.matches(ns, name));
        if let Some(i) = by_name {
            if self.oids.get(i) == Some(&relation.oid) {
                return Ok(Some(i));
            }
        }
        if let Some((known, source)) = self.resolved.get(&relation.oid) {
            if std::sync::Arc::ptr_eq(known, relation) {
                return Ok(*source);
            }
        }
        // Rare: a Relation message that does not match the session's
        // start; ask the catalog what the table is now.
        let client = self.store.settled_client().await?;
        let mut now = crate::relations::Now::default();
        for (i, m) in self.mappings.iter().enumerate() {
            if oid_of(client, m.source()).await? == Some(relation.oid) {
                now.named = Some(i);
                break;
            }
        }
        let publication = &self.config.database.publication;
        now.table = table_now(client, publication, relation.oid).await?;
        let table = relation.qualified_name();
        let seen = crate::relations::Seen {
            oid: relation.oid,
            name: &table,
            by_name,
        };
        let source = match crate::relations::resolve(&seen, &self.oids, now, &self.sources, lsn) {
            Ok(source) => source,
            Err(p) => {
                if let crate::relations::RelationProblem::Recreated { .. } = &p {
                    if let Some(i) = by_name {
                        self.record_pending(i, relation.oid).await;
                    }
                }
                return Err(p.into());
            }
        };
        match source {
            Some(i) if by_name != Some(i) => {
                info!(source = %self.sources[i], %table, %lsn, "changes of the source's table made while it was named {table}")
            }
            Some(_) => {}
            None => {
                warn!(%table, %lsn, "change of a table that no source maps and that is no longer in the publication: ignored")
            }
        }
        self.resolved
            .insert(relation.oid, (relation.clone(), source));
        Ok(source)
    }

    /// Plans the batch, dispatches its operations and writes its row state.
    async fn flush(&mut self) -> Result<(), RunError> {
        let started = Instant::now();
        let rows_in_batch = self.batch_rows;
        let items = std::mem::take(&mut self.batch);
        self.batch_rows = 0;
        let batch = BatchSeq(self.store.start_batch());
        // 1. Map every change to row updates (what each row wants now).
        let mut steps = Vec::with_capacity(items.len());
        let mut ref_edits = Vec::new();
        for item in items {
            match item {
                Item::Commit(end) => steps.push(Step::Commit(end)),
                Item::Truncate(source, lsn) => steps.push(Step::Truncate(source, lsn)),
                Item::Change(source, change) => {
                    let mapping = &self.mappings[usize::from(source.0)];
                    for u in mapping::row_updates(mapping.as_ref(), &change, &self.zones)? {
                        steps.push(Step::Row(source, u));
                    }
                    // A zones table: later rows resolve against its new rows.
                    if let Some(table) = mapping.zones_table() {
                        ref_edits.extend(table.follow(&change, self.zones.refs_mut()));
                    }
                }
            }
        }
        // 2. Read the row state of those rows and of the owners they touch.
        let mut seen = HashSet::new();
        let mut rows: Vec<RowRef> = steps
            .iter()
            .filter_map(Step::update)
            .map(|(s, u)| (s, u.key.clone()))
            .filter(|r| seen.insert(r.clone()))
            .collect();
        // A TRUNCATE removes every row of its source: load them all.
        for step in &steps {
            if let Step::Truncate(source, _) = step {
                let name = &self.sources[usize::from(source.0)];
                for key in crate::guard::source_rows(&mut self.store, name).await? {
                    if seen.insert((*source, key.clone())) {
                        rows.push((*source, key));
                    }
                }
            }
        }
        let mut owners = Planner::wanted_nodes(
            &self.zones,
            steps.iter().filter_map(Step::update).map(|(_, u)| u),
        );
        let sources: Vec<&str> = self.sources.iter().map(String::as_str).collect();
        // Rows waiting for an address that this batch may give.
        let targets =
            Planner::address_owners(steps.iter().filter_map(Step::update).map(|(_, u)| u));
        let waiting = self
            .store
            .waiting_for(&sources, &self.zones, &targets)
            .await?;
        for w in &waiting {
            rows.push(w.row.clone());
            owners.extend(w.records.iter().map(|d| (d.zone, d.record.owner.clone())));
        }
        let (loaded, orphans) = self
            .store
            .load(&sources, &rows, &owners, &self.zones)
            .await?;
        if orphans.records > 0 {
            warn!(records = orphans.records, "the row state holds records of zones no longer configured; they are not sent (resync those zones)");
        }
        let t_read = started.elapsed();
        // 3. Plan: net operations per transaction and zone, and refusals.
        let mut planner = Planner::new(&self.zones, &self.limits, loaded);
        planner.add_waiting(waiting);
        let mut lsn = self.assembler.current().unwrap_or_default();
        let mut open = false;
        let mut last_end = None;
        let mut segments: Vec<(Lsn, Vec<ZoneOps>)> = Vec::new();
        for step in steps {
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
                Step::Commit(end) => {
                    last_end = Some(end);
                    segments.push((lsn, planner.end_segment()));
                    open = false;
                }
            }
        }
        if open {
            // A transaction continuing past this batch.
            segments.push((lsn, planner.end_segment()));
        }
        // The mass-delete guard: a transaction deleting too much of a zone
        // halts the session here, before anything of this batch is sent.
        crate::guard::check(
            &mut self.store,
            &self.zones,
            &self.guards,
            &segments,
            &mut self.guard_carry,
            open,
        )
        .await?;
        let ready = crate::guard::ready_parts(
            &mut self.guard_held,
            segments,
            open,
            &self.guard_carry,
            &self.guards,
        );
        for (lsn, ops) in ready {
            self.lanes.dispatch(lsn, ops);
        }
        if planner.inconsistencies() > 0 {
            warn!(
                missing = planner.inconsistencies(),
                "the row state lacked records it should hold; DNS may keep records the database no longer has (resync the zones)"
            );
        }
        let mut outcome = planner.finish();
        // 4. Dispatch first: the UPDATEs need only what was read, and a
        //    crash before the state write replays the same operations.
        let t_plan = started.elapsed();
        self.lanes.send_outbox().await?;
        for r in &outcome.rejections {
            self.log_rejection(r);
        }
        metrics::get()
            .rejected
            .inc_by(outcome.rejections.len() as u64);
        for row in &outcome.promoted {
            info!(source = %self.sources[usize::from(row.0 .0)], row = %row.1, "a row that waited for its target's address is published");
        }
        if !outcome.lost_address.is_empty() {
            for (row, owner, rtype, target) in self
                .store
                .pointing_at(&self.zones, &outcome.lost_address)
                .await?
            {
                warn!(%row, %owner, %rtype, %target, "{owner} {rtype} points at {target}, which no longer has an address record (the server keeps it, as the database says)");
            }
        }
        for w in &outcome.warnings {
            warn!(
                source = %self.sources[usize::from(w.source.0)],
                row = %w.key,
                lsn = %w.lsn,
                reason = %pg2dns_decoder::error_chain(&w.reason),
                "row published although the zone's check_names would refuse it (check_names = \"warn\")"
            );
        }
        // 5. Write the new state (uncommitted until the checkpoint, maybe
        //    held back until then).
        self.store
            .write(&sources, &self.zones, &mut outcome)
            .await?;
        self.store.write_zone_refs(&ref_edits).await?;
        self.lanes
            .mark_batch(batch, if open { None } else { last_end });
        let ms = |d: Duration| d.as_millis() as u64;
        debug!(
            rows = rows_in_batch,
            read_ms = ms(t_read),
            plan_ms = ms(t_plan - t_read),
            write_ms = ms(started.elapsed() - t_plan),
            backlog = self.backlog,
            "flushed"
        );
        Ok(())
    }

    /// Rejects the rows whose records a server refused for their content
    /// (the session narrowed the refusal down to their owner group and
    /// checked that the key and zone are fine): their records leave the row
    /// state, and whatever else they contributed leaves DNS, as for any
    /// refused row. Runs before the checkpoint that covers them.
    async fn reject_refused(&mut self) -> Result<(), RunError> {
        if !self.lanes.ledger.refusals_pending() {
            return Ok(());
        }
        let refused = self.lanes.ledger.take_refused();
        let mut records: Vec<(ZoneId, Record)> = Vec::new();
        let mut origin: Vec<(Lsn, Rcode)> = Vec::new();
        for r in &refused {
            for op in &r.group.ops {
                if let UpdateOp::Add(record) = op {
                    records.push((r.zone, record.clone()));
                    origin.push((r.lsn, r.rcode));
                }
            }
        }
        let producers = {
            let sources: Vec<&str> = self.sources.iter().map(String::as_str).collect();
            self.store
                .producers(&sources, &self.zones, &records)
                .await?
        };
        let mut seen = HashSet::new();
        let mut updates = Vec::new();
        let mut waiting = Vec::new();
        for ((source, key), i) in producers {
            if !seen.insert((source, key.clone())) {
                continue;
            }
            let (zone, record) = &records[i];
            let (lsn, rcode) = origin[i];
            let reason = match self.missing_address(*zone, record).await? {
                Some(target) => {
                    waiting.push(Waiting {
                        row: (source, key.clone()),
                        lsn,
                        records: vec![Desired {
                            zone: *zone,
                            record: record.clone(),
                        }],
                        target: (*zone, target.clone()),
                    });
                    Refusal::WaitingForAddress {
                        rcode,
                        record: record.to_string(),
                        target,
                    }
                }
                None => Refusal::ServerRefused {
                    rcode,
                    record: record.to_string(),
                },
            };
            updates.push((
                source,
                RowUpdate {
                    key,
                    lsn,
                    image: Err(Refused {
                        zone: Some(*zone),
                        owner: Some(record.owner.clone()),
                        reason: Box::new(reason),
                    }),
                },
            ));
        }
        let rows: Vec<RowRef> = updates.iter().map(|(s, u)| (*s, u.key.clone())).collect();
        let sources: Vec<&str> = self.sources.iter().map(String::as_str).collect();
        // A batch of its own, which the checkpoint covering the refused
        // transactions covers too.
        let batch = BatchSeq(self.store.start_batch());
        let (loaded, _) = self.store.load(&sources, &rows, &[], &self.zones).await?;
        let mut planner = Planner::new(&self.zones, &self.limits, loaded);
        let lsn = updates.last().map(|(_, u)| u.lsn).unwrap_or_default();
        for (source, update) in updates {
            planner.apply(source, update);
        }
        let ops = planner.end_segment();
        self.lanes.dispatch(lsn, ops);
        let mut outcome = planner.finish();
        for r in &outcome.rejections {
            self.log_rejection(r);
        }
        self.lanes.send_outbox().await?;
        self.store
            .write(&sources, &self.zones, &mut outcome)
            .await?;
        // After the write, which discards what the rows waited for before.
        self.store
            .add_waiting(&sources, &self.zones, &waiting)
            .await?;
        let end = self.lanes.ledger.rejection_end();
        self.lanes.mark_batch(batch, end);
        Ok(())
    }

    /// For an MX or SRV record whose target is in its own zone and has no
    /// address record in the row state: that target (what BIND's
    /// check-integrity refuses the record for).
    async fn missing_address(
        &mut self,
        zone: ZoneId,
        record: &Record,
    ) -> Result<Option<Owner>, RunError> {
        if !matches!(record.rtype, RType::MX | RType::SRV) {
            return Ok(None);
        }
        let Some(target) = pg2dns_decoder::rdata::target(record.rtype, record.rdata.as_wire())
        else {
            return Ok(None);
        };
        let target = Owner::from_name(target);
        if self.zones.zone_for(&target) != Some(zone) {
            return Ok(None);
        }
        let has = self.store.has_address(&self.zones, zone, &target).await?;
        Ok((!has).then_some(target))
    }

    fn log_rejection(&self, r: &Rejection) {
        let zone = r
            .zone
            .map(|z| self.zones.name(z).to_string())
            .unwrap_or_else(|| "-".into());
        let owner = r
            .owner
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "-".into());
        warn!(
            source = %self.sources[usize::from(r.source.0)],
            row = %r.key,
            lsn = %r.lsn,
            %zone,
            %owner,
            reason = %pg2dns_decoder::error_chain(&r.reason),
            "row not sent to DNS"
        );
    }

    /// Commits the state and progress of the acknowledged batches (see
    /// [`Pipeline::committable`]); with a `wait`, first waits that long at
    /// most for every flushed batch to be acknowledged, so that the
    /// checkpoint covers them all. When nothing can be committed, the
    /// checkpoint stays pending and the stream goes on: it is tried again at
    /// the next acknowledgement or batch.
    async fn checkpoint(
        &mut self,
        replication: &mut PgReplication,
        wait: Duration,
        durability: Durability,
    ) -> Result<(), RunError> {
        if self.lanes.ledger.pending().is_none() {
            return Ok(());
        }
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // A refused group's rows must leave the state before it commits.
            if self.lanes.ledger.refusals_pending() {
                self.reject_refused().await?;
                continue;
            }
            let everything = self.lanes.ledger.newest_batch();
            let covers = self.committable().map(|cp| cp.batch);
            if wait.is_zero() || (covers.is_some() && covers == everything) {
                break;
            }
            match tokio::time::timeout_at(deadline, self.lanes.reports.recv()).await {
                Ok(report) => self.lanes.on_report(report)?,
                Err(_) => break,
            }
        }
        let Some(cp) = self.committable() else {
            if !wait.is_zero() {
                debug!(
                    waited_ms = started.elapsed().as_millis() as u64,
                    "checkpoint postponed: acknowledgements pending"
                );
                self.last_checkpoint = Instant::now();
            }
            return Ok(());
        };
        failpoint::hit("after-dns-ack");
        let unflushed = self.store.commit(cp.end, durability, cp.batch.0).await?;
        failpoint::hit("after-state-commit");
        debug!(lsn = %cp.end, transactions = self.lanes.ledger.pending_transactions(), total_ms = started.elapsed().as_millis() as u64, ?durability, "checkpoint");
        let committed = match unflushed {
            None => checkpoint::Durability::Flushed,
            Some(u) => {
                if !self.lanes.ledger.awaiting_flush() {
                    self.flush_poll = Instant::now() + FLUSH_POLL;
                }
                checkpoint::Durability::Unflushed {
                    wal: u.wal,
                    flushed: u.flushed,
                }
            }
        };
        if let Some(end) = self.lanes.ledger.handle_committed(cp, committed) {
            self.confirm(replication, end);
        }
        self.last_checkpoint = Instant::now();
        if self.lanes.ledger.pending().is_none() {
            self.lag_pending = false;
            self.lanes.live.all_acknowledged();
        } else if self.lag_pending {
            // The lag counts from the newest transaction received, which
            // is no older than the oldest one still pending.
            self.lanes.live.pending_starts();
        }
        Ok(())
    }

    /// Whether `pg2dns.zones` now holds other rows than this session's
    /// zones were built from. The table as it is now, not the change the
    /// stream carries, decides: a transaction replayed after the table
    /// changed again must not end every session that replays it.
    async fn zones_table_changed(&mut self) -> Result<bool, RunError> {
        Ok(self.store.table_zones().await? != self.table_rows)
    }

    /// Confirms the newest transaction end whose checkpoint the WAL flush
    /// (at `flushed`) has passed.
    fn confirm_flushed(&mut self, replication: &mut PgReplication, flushed: Lsn) {
        if let Some(end) = self.lanes.ledger.handle_wal_flushed(flushed) {
            self.confirm(replication, end);
        }
        self.flush_poll = Instant::now() + FLUSH_POLL;
    }

    fn confirm(&mut self, replication: &mut PgReplication, end: Lsn) {
        replication.confirm(end);
        metrics::get().confirmed(end);
        self.confirmed = Some(end);
    }

    /// Before the session ends: waits (a little) for the flush of the
    /// checkpoints committed without it, so that the slot confirms them.
    /// Leaving one unconfirmed is safe: its progress makes the next run
    /// skip what it covered.
    async fn await_flush(&mut self, replication: &mut PgReplication) -> Result<(), RunError> {
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.lanes.ledger.awaiting_flush() && Instant::now() < deadline {
            let flushed = self.store.wal_flushed().await?;
            self.confirm_flushed(replication, flushed);
            if self.lanes.ledger.awaiting_flush() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }
}

/// Whether a change is of `pg2dns.zones` (zones as data, see `zone_set`).
fn is_zones_table(change: &RowChange) -> bool {
    change.relation.namespace == "pg2dns" && change.relation.name == "zones"
}

/// Whether a change is of pg2dns's control table.
fn is_control(change: &RowChange) -> bool {
    change.relation.namespace == "pg2dns" && change.relation.name == "control"
}

/// A control request inserted for this slot.
fn control_request(change: &RowChange, slot: &str) -> Option<ControlRequest> {
    use pg2dns_decoder::row::{Cell, RowView};
    if change.kind != pg2dns_decoder::txn::ChangeKind::Insert {
        return None;
    }
    let row = change.new.as_ref()?;
    let text = |column: &str| match row.cell(column) {
        Some(Cell::Text(t)) => Some(t.to_owned()),
        _ => None,
    };
    if text("slot")? != slot {
        return None;
    }
    let request = (|| {
        Some(ControlRequest {
            id: text("id")?.parse().ok()?,
            action: text("action")?,
            requested_by: text("requested_by").unwrap_or_default(),
            reason: text("reason").unwrap_or_default(),
            until: match text("until_lsn") {
                None => None,
                Some(t) => Some(t.parse().ok()?),
            },
        })
    })();
    if request.is_none() {
        // Only pg2dns.pause() and pg2dns.resume() write this table: a row
        // they did not write (or a changed table) is said, not dropped.
        warn!(
            slot,
            "a row of pg2dns.control for this slot without a readable id, action or until_lsn is ignored; use pg2dns.pause() and pg2dns.resume()"
        );
    }
    request
}
