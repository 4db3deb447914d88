//! The zones a session publishes: the configuration's `[[zone]]`s, then the
//! rows of `pg2dns.zones` (zones as data, sql/012_zones.sql).
//!
//! Why at a session start: a zone added through the table needs a first
//! load (its records may be in the tables already, and the stream never
//! sent them: rows outside every zone are refused), and a first load is
//! exact only while nothing streams. So the stream does not add zones on
//! the fly: the pipeline watches `pg2dns.zones` in the stream (see
//! `pipeline::Pipeline::on_frame`), and when a committed transaction
//! changed what the table holds, it stops right before that transaction
//! with everything earlier acknowledged and checkpointed, and a new session
//! starts here. This module reads the table as it is now (the stream only
//! says when to look, so a transaction replayed after the table changed
//! again never restarts a session twice), loads each zone that is new to
//! this instance, and the stream then replays from before the transaction:
//! what it replays of a loaded zone is there already and is applied again
//! idempotently.
//!
//! A row that cannot be followed (a server that is not declared, a bad
//! name, a zone whose load failed) is refused with its reason in
//! `pg2dns.rejected` and the log, and the other zones go on: one wrong row
//! must not stop every zone. A zone both in the file and in the table, or
//! more zones than pg2dns can tell apart, halts (the operator must choose).

use pg2dns_decoder::ZoneId;
use tracing::{info, warn};

use crate::config::{Config, TableZone, TableZoneRefusal};
use crate::error::RunError;
use crate::store::Store;

/// The zones of one session.
pub struct ZoneSet {
    /// The configuration with the zones of `pg2dns.zones` that are followed.
    pub config: Config,
    /// The rows of `pg2dns.zones` as read (followed or not): a transaction
    /// of the stream that leaves the table different ends the session.
    pub rows: Vec<TableZone>,
}

/// Reads `pg2dns.zones`, refuses the rows that cannot be followed, loads
/// the zones new to this instance, and records the zones it now streams.
pub async fn for_session(config: &Config, store: &mut Store) -> Result<ZoneSet, RunError> {
    let rows = store.table_zones().await?;
    if !rows.is_empty()
        && !store
            .zones_table_published(&config.database.publication)
            .await?
    {
        warn!(publication = %config.database.publication, "pg2dns.zones is not in the publication: its changes are seen only at the next start or SIGHUP; run `pg2dns setup` to add it");
    }
    let (mut session, mut refused) =
        config.with_table_zones(&rows, pg2dns_decoder::records::MAX_ZONES)?;
    // A set, not a scan per zone: 50,000 zones from the table against
    // 50,000 known ones were 2.5 billion comparisons.
    let before: Option<std::collections::HashSet<String>> = store
        .instance_zones()
        .await?
        .map(|b| b.into_iter().collect());
    let known = |name: &str| before.as_ref().is_some_and(|b| b.contains(name));
    let added: Vec<ZoneId> = session
        .zones()
        .iter()
        .filter(|(id, name)| session.zones[id.index()].from_table && !known(&name.to_string()))
        .map(|(id, _)| id)
        .collect();
    if !added.is_empty() {
        let names: Vec<String> = added
            .iter()
            .map(|id| session.zones[id.index()].name.to_string())
            .collect();
        info!(zones = %names.join(" "), "zones added to pg2dns.zones: loading their records (compare with a zone transfer, repair SOA-guarded)");
        let report = match crate::reconcile::load_added_zones(&session, store, &added).await {
            Ok(r) => r,
            // The tables or the row state could not be read: the session
            // fails and is retried.
            Err(crate::reconcile::ReconcileError::Store(e)) => return Err(e.into()),
            Err(e) => {
                return Err(RunError::Internal(format!(
                    "cannot load the zones added to pg2dns.zones: {}",
                    crate::error::chain(&e)
                )))
            }
        };
        let mut failed: Vec<TableZoneRefusal> = Vec::new();
        for outcome in &report.zones {
            let reason = if let Some(e) = &outcome.error {
                Some(format!(
                    "its first load failed: {}; fix it, then send SIGHUP (the zone is loaded again)",
                    crate::error::chain(e)
                ))
            } else if outcome.refused_unowned {
                Some(format!(
                    "its first load would delete {} records pg2dns never published (e.g. {}): delete them from the zone, or load it with `pg2dns reconcile --zone {} --apply --force`, then send SIGHUP",
                    outcome.unowned_count,
                    outcome
                        .unowned_deletes
                        .first()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    outcome.zone
                ))
            } else if outcome.in_sync_after != Some(true) {
                Some("its first load did not leave it equal to the tables; send SIGHUP to load it again".into())
            } else {
                info!(zone = %outcome.zone, messages = outcome.messages_applied, "zone added: its records are loaded, and it is followed from now on");
                None
            };
            if let Some(reason) = reason {
                let Some(row) = rows.iter().find(|r| {
                    pg2dns_decoder::ZoneName::parse(&r.name).is_ok_and(|n| n == outcome.zone)
                }) else {
                    continue;
                };
                failed.push(TableZoneRefusal {
                    row: row.clone(),
                    reason,
                });
            }
        }
        if !failed.is_empty() {
            let keep: Vec<TableZone> = rows
                .iter()
                .filter(|r| !failed.iter().any(|f| f.row == **r))
                .cloned()
                .collect();
            session = config
                .with_table_zones(&keep, pg2dns_decoder::records::MAX_ZONES)?
                .0;
            refused.extend(failed);
        }
    }
    for r in &refused {
        warn!(zone = %r.row.name, server = %r.row.server, reason = %r.reason, "a row of pg2dns.zones is not followed (recorded in pg2dns.rejected)");
    }
    store.reject_table_zones(&refused).await?;
    Ok(ZoneSet {
        config: session,
        rows,
    })
}
