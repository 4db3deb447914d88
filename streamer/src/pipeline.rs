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
//! reject, commit, confirm, poll the WAL flush, wait for acknowledgements).
//! What a row means, what goes to DNS and what is refused are decided by
//! the decoder's mapping and planner; the order of a flush, when to flush,
//! checkpoint and confirm, which transactions are skipped, where a pause
//! stops and what the mass-delete guard holds are decided by the stream
//! core. The pipeline keeps the SQL (the store), the DNS streams
//! (`dns::lanes`), the replication connection and the clock.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pg2dns_decoder::checkpoint::{self, BatchSeq, Checkpoint, ServerRefusal};
use pg2dns_decoder::mapping::{Desired, Mapping, RowUpdate, RrTable};
use pg2dns_decoder::pgoutput::Message;
use pg2dns_decoder::plan::{Planner, Refusal, Refused, Rejection, RowRef, SourceId, Waiting};
use pg2dns_decoder::session::Rcode;
use pg2dns_decoder::stream::{
    Action, CommitMode, Committed, Dispatch, End, Find, Found, Halt, Planning, StateRead, Stream,
    StreamConfig, WriteState,
};
use pg2dns_decoder::txn::{Assembler, Event, RowChange};
use pg2dns_decoder::update::UpdateOp;
use pg2dns_decoder::{Lsn, Owner, RType, Record, ZoneId};
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

/// Rows per flush (see `pg2dns_decoder::stream::MAX_BATCH_ROWS`).
pub const MAX_BATCH_ROWS: usize = pg2dns_decoder::stream::MAX_BATCH_ROWS;

/// How often a standby tries the slot another instance holds.
const STANDBY_RETRY: Duration = Duration::from_secs(1);

/// How long a clean stop waits, at most, for its last checkpoint and the
/// WAL flush (the core's own limits are shorter; this bounds the SQL too).
const STOP_WAIT: Duration = Duration::from_secs(10);

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
}

/// When a flush started, and how far into it the row state was read and
/// the plan dispatched (for its debug line).
struct FlushClock {
    started: Instant,
    read: Duration,
    plan: Duration,
}

impl FlushClock {
    fn start() -> FlushClock {
        FlushClock {
            started: Instant::now(),
            read: Duration::ZERO,
            plan: Duration::ZERO,
        }
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
        Err(e) => {
            let e = RunError::from(e);
            // Another instance took the slot since it was looked at (the
            // one table, `RunError::disposition`, says so).
            if e.disposition() == Disposition::Standby {
                control.standing_by().await;
            }
            return Err(e);
        }
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
    let sources: Vec<String> = mappings.iter().map(|m| m.source().to_owned()).collect();
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
    let lanes = Lanes::start(config, live.clone(), kept).await;
    let mut core = Stream::new(
        StreamConfig {
            slot: config.database.slot.clone(),
            zones: config.zones.len(),
            guards: config.zones.iter().map(|z| z.guard).collect(),
            progress,
            stop_at,
            max_batch_rows: MAX_BATCH_ROWS,
            planning: Planning {
                limits: pg2dns_decoder::plan::PlanLimits {
                    held: held_outside(config).await,
                    ..config.plan_limits()
                },
                mappings,
                zones,
            },
        },
        Instant::now(),
    );
    // Everything an earlier session's streams were handed was acknowledged.
    for (zone, acked) in lanes.acked_counts() {
        if acked > 0 {
            core.handle_acked(zone, acked);
        }
    }
    let mut p = Pipeline {
        config,
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
        checked: vec![None; sources.len()],
        oids,
        resolved: std::collections::HashMap::new(),
        relations_checked: Instant::now(),
        partitions,
        sources,
        store,
        assembler: Assembler::new(),
        core,
        lanes,
        lag_pending: false,
        paused: None,
        table_rows: zone_set.rows.clone(),
        flush_batch: BatchSeq(0),
        flush_clock: FlushClock::start(),
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
    if result.is_ok() && p.core.confirmed().is_some() {
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
                    continue;
                }
                // A frame that is already there goes first: the grouped
                // checkpoint can wait, a live transaction should not.
                frame = replication.recv() => frame?,
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
            if let Some(end) = self.core.poll_end() {
                // Everything up to the end, and nothing after.
                tokio::select! {
                    r = self.drain(replication) => r?,
                    _ = shutdown.changed() => {
                        info!("stopping before the pause or the zones' reload was reached; it will be on the next start");
                        return Ok(SessionEnd::Stopped);
                    }
                }
                return Ok(match end {
                    End::ZonesChanged => SessionEnd::ZonesChanged,
                    End::Paused { lsn, request } => {
                        self.paused = Some((lsn, request));
                        SessionEnd::Paused
                    }
                });
            }
        }
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
            }
        }
    }

    /// Does what the core asks, in order, until it asks nothing more (or
    /// says a drain is done).
    async fn act(&mut self, replication: &mut PgReplication) -> Result<(), RunError> {
        loop {
            self.sync_written();
            let Some(action) = self.core.poll_action(Instant::now()) else {
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
                Action::Reject(refused) => {
                    self.reject_refused(refused).await?;
                    self.hear();
                }
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

    /// Commits the state and progress of a checkpoint the core chose.
    async fn commit(&mut self, cp: Checkpoint, mode: CommitMode) -> Result<(), RunError> {
        let durability = match mode {
            CommitMode::Later => Durability::Later,
            CommitMode::Flushed => Durability::Flushed,
        };
        let started = Instant::now();
        failpoint::hit("after-dns-ack");
        let unflushed = self.store.commit(cp.end, durability, cp.batch.0).await?;
        failpoint::hit("after-state-commit");
        debug!(lsn = %cp.end, transactions = self.core.pending_transactions(), total_ms = started.elapsed().as_millis() as u64, ?durability, "checkpoint");
        let committed = match unflushed {
            None => checkpoint::Durability::Flushed,
            Some(u) => checkpoint::Durability::Unflushed {
                wal: u.wal,
                flushed: u.flushed,
            },
        };
        self.core.handle_committed(cp, committed, Instant::now());
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
            self.relations_checked = Instant::now();
            let tables: Vec<&str> = self.core.mappings().iter().map(|m| m.source()).collect();
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
            Event::Begin { final_lsn, .. } => {
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
                    self.core.handle_change(SourceId::new(i)?, change);
                    metrics::get().rows.inc();
                }
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
        if self.core.has_truncate(SourceId::new(i)?, lsn) {
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
    /// drops what the batch holds of it (the core decides, see
    /// `Stream::settle_before_halt`), so that the halt is exact and a
    /// `pg2dns reconcile --apply` while halted is not undone by replaying
    /// earlier transactions after the resume. When the open transaction was
    /// already partly sent (a huge one), or DNS does not answer within
    /// [`HALT_SETTLE`], the earlier transactions are replayed instead.
    async fn settle_before_halt(&mut self, replication: &mut PgReplication) {
        if !self.core.settle_before_halt() {
            warn!("the halted transaction was partly sent already: the transactions before it are replayed after the resume");
            return;
        }
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
        let by_name = self
            .core
            .mappings()
            .iter()
            .position(|m| m.matches(ns, name));
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
        for (i, m) in self.core.mappings().iter().enumerate() {
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

    /// The first step of a flush: a new batch of the store, and the
    /// look-ups the core asks for before it reads the row state.
    async fn find(&mut self, find: Find) -> Result<(), RunError> {
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
    async fn load_state(&mut self, read: StateRead) -> Result<(), RunError> {
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
    async fn dispatch(&mut self, dispatch: Dispatch) -> Result<(), RunError> {
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
    async fn write_state(&mut self, write: WriteState) -> Result<(), RunError> {
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
    fn halted(&self, halt: Halt) -> RunError {
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

    /// Rejects the rows whose records a server refused for their content
    /// (the session narrowed the refusal down to their owner group and
    /// checked that the key and zone are fine): their records leave the row
    /// state, and whatever else they contributed leaves DNS, as for any
    /// refused row. Runs before the checkpoint that covers them.
    async fn reject_refused(&mut self, refused: Vec<ServerRefusal>) -> Result<(), RunError> {
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
                .producers(&sources, self.core.zones(), &records)
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
        let (loaded, _) = self
            .store
            .load(&sources, &rows, &[], self.core.zones())
            .await?;
        let mut planner = Planner::new(self.core.zones(), self.core.limits(), loaded);
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
            .write(&sources, self.core.zones(), &mut outcome)
            .await?;
        // After the write, which discards what the rows waited for before.
        self.store
            .add_waiting(&sources, self.core.zones(), &waiting)
            .await?;
        let end = self.core.rejection_end();
        let sent = self.lanes.mark_batch(batch, end);
        self.core.handle_flushed(sent);
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
        if self.core.zones().zone_for(&target) != Some(zone) {
            return Ok(None);
        }
        let has = self
            .store
            .has_address(self.core.zones(), zone, &target)
            .await?;
        Ok((!has).then_some(target))
    }

    fn log_rejection(&self, r: &Rejection) {
        let zone = r
            .zone
            .map(|z| self.core.zones().name(z).to_string())
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

    /// Whether `pg2dns.zones` now holds other rows than this session's
    /// zones were built from. The table as it is now, not the change the
    /// stream carries, decides: a transaction replayed after the table
    /// changed again must not end every session that replays it.
    async fn zones_table_changed(&mut self) -> Result<bool, RunError> {
        Ok(self.store.table_zones().await? != self.table_rows)
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
