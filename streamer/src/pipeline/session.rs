//! A session's set-up: the pause a restart waits out, the slot and the
//! progress checked, the zones of `pg2dns.zones` joined, the sources'
//! tables checked and followed by OID, the zones' streams started and the
//! stream core built; then the session streams (`Pipeline::stream`) and
//! records how it ended.

use std::time::Instant;

use pg2dns_decoder::stream::{Planning, Stream, StreamConfig};
use pg2dns_decoder::txn::Assembler;
use pg2dns_decoder::Lsn;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    mappings, reload_asked, AbortOnDrop, FlushClock, Pipeline, SessionEnd, MAX_BATCH_ROWS,
};
use crate::config::Config;
use crate::control::{Control, ControlRequest, Mode};
use crate::dns::kept::Kept;
use crate::dns::lanes::Lanes;
use crate::error::{Disposition, RunError};
use crate::replication::PgReplication;
use crate::store::Store;
use crate::{metrics, status};
use pg2dns_decoder::checkpoint::BatchSeq;

/// A store error, or the schema missing when the table is undefined.
pub(super) fn schema_or_store(e: crate::store::StoreError) -> RunError {
    if e.sqlstate() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
        RunError::SchemaMissing
    } else {
        e.into()
    }
}

/// One session: set up (see the module documentation), stream until it
/// ends, and record how it ended (a stop, a pause).
pub(super) async fn session(
    config: &Config,
    shutdown: &mut watch::Receiver<bool>,
    reload: &mut Option<watch::Receiver<u64>>,
    kept: &mut Kept,
) -> Result<SessionEnd, RunError> {
    let mut control = Control::connect(&config.database)
        .await
        .map_err(schema_or_store)?;
    // A pause survives restarts: wait for the resume before streaming.
    let stop_at = match wait_out_pause(&mut control, shutdown, reload).await? {
        Ok(stop_at) => stop_at,
        Err(end) => return Ok(end),
    };
    let mut store = Store::connect(&config.database).await?;
    let progress = check_slot(&mut store, &control, config).await?;
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
    let (oids, partitions) = check_sources(&store, config).await?;
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
        xid: 0,
        begin_commit_micros: 0,
        committing: None,
    };
    let result = p.stream(&mut replication, shutdown, reload).await;
    if let Ok(
        SessionEnd::Reload | SessionEnd::ZonesChanged | SessionEnd::Paused | SessionEnd::CatchUp,
    ) = result
    {
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

/// Waits out a pause that an earlier session recorded: `Ok(stop_at)` once
/// resumed (with the resume's `until`, if any), `Err(end)` when the session
/// ends still paused (a stop, a reload).
async fn wait_out_pause(
    control: &mut Control,
    shutdown: &mut watch::Receiver<bool>,
    reload: &mut Option<watch::Receiver<u64>>,
) -> Result<Result<Option<(Lsn, ControlRequest)>, SessionEnd>, RunError> {
    let mut stop_at: Option<(Lsn, ControlRequest)> = None;
    match control.mode().await.map_err(schema_or_store)? {
        Mode::Paused { lsn, request } => {
            metrics::get().set_state(metrics::State::Paused);
            info!(%lsn, by = %request.requested_by, reason = %request.reason, "paused: waiting for `pg2dns resume`");
            crate::notify::ready(&format!("paused at {lsn}: waiting for `pg2dns resume`"));
            let waited = tokio::select! {
                r = control.wait_for_resume_or_lease_end(&request, shutdown) => r?,
                // Still paused: the next session reads the new configuration.
                _ = reload_asked(reload) => return Ok(Err(SessionEnd::Reload)),
            };
            let Some(resume) = waited else {
                return Ok(Err(SessionEnd::Stopped));
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
    Ok(Ok(stop_at))
}

/// The slot is there, in this database, of the configured plugin, not held
/// by another instance (then this one stands by), and not ahead of the
/// durable progress: the progress the session starts from.
async fn check_slot(
    store: &mut Store,
    control: &Control,
    config: &Config,
) -> Result<Lsn, RunError> {
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
    Ok(progress)
}

/// Every source's table exists and is published, and is followed by OID
/// (with its partitions); DDL made while no pg2dns ran for this slot halts
/// here.
async fn check_sources(
    store: &Store,
    config: &Config,
) -> Result<(Vec<u32>, Vec<std::collections::BTreeSet<(u32, String)>>), RunError> {
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
    Ok((oids, partitions))
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
pub(super) async fn check_zone_set(store: &Store, config: &Config) -> Result<(), RunError> {
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
