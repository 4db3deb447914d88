//! The mass-delete guard's driver: what the pure judgement
//! (`pg2dns_decoder::guard`) needs from the database, asked for only when a
//! transaction deletes enough records of a zone to be held at all.
//!
//! A transaction held here ends the session with [`RunError::MassDelete`]
//! before any of its batch is dispatched: the pipeline halts (a state, see
//! `pg2dns status`), nothing is confirmed past it, and after a restart the
//! transaction is held again. `pg2dns resume --allow-mass-delete` records a
//! release for that commit LSN in `pg2dns.control`; the guard then lets
//! exactly that transaction through, now or after any restart.

use std::collections::{BTreeMap, HashMap};

use pg2dns_decoder::guard::{self, DeleteGuard, ZoneChange};
use pg2dns_decoder::mapping::RowKey;
use pg2dns_decoder::plan::ZoneOps;
use pg2dns_decoder::{Lsn, ZoneId, Zones};
use tracing::{info, warn};

use crate::error::RunError;
use crate::store::{sql, Store, StoreError};

/// A transaction continuing past a batch: its commit LSN and what its
/// parts so far did to each zone.
pub type Carry = Option<(Lsn, BTreeMap<ZoneId, ZoneChange>)>;

/// Judges each segment (a transaction, or the batch's part of one) of a
/// batch before anything of it is sent. `carry` holds the changes of a
/// transaction begun in an earlier batch, and receives those of one that
/// continues past this batch (`open`).
pub async fn check(
    store: &mut Store,
    zones: &Zones,
    guards: &[DeleteGuard],
    segments: &[(Lsn, Vec<ZoneOps>)],
    carry: &mut Carry,
    open: bool,
) -> Result<(), RunError> {
    let guard_of = |z: ZoneId| guards.get(z.index()).copied().unwrap_or_default();
    // What each segment's whole transaction does, as far as seen.
    let mut totals: Vec<(Lsn, BTreeMap<ZoneId, ZoneChange>)> = Vec::new();
    let mut carried = None;
    for (i, (lsn, ops)) in segments.iter().enumerate() {
        let mut total = guard::zone_changes(ops);
        if i == 0 {
            if let Some((at, before)) = carry.take().filter(|(at, _)| at == lsn) {
                debug_assert_eq!(at, *lsn);
                for (zone, c) in &before {
                    let t = total.entry(*zone).or_default();
                    t.deleted += c.deleted;
                    t.added += c.added;
                }
                carried = Some(before);
            }
        }
        totals.push((*lsn, total));
    }
    let suspect: Vec<ZoneId> = totals
        .iter()
        .flat_map(|(_, t)| t.iter())
        .filter(|(z, c)| {
            let g = guard_of(**z);
            g.exceeds_number(c.deleted) || g.needs_zone_size(c.deleted)
        })
        .map(|(z, _)| *z)
        .collect();
    if !suspect.is_empty() {
        let counts = zone_records(store, zones, &suspect).await?;
        // Records each zone holds before each segment: the stored state,
        // moved by this batch's earlier segments (not written yet), and
        // before the parts of a carried transaction already written.
        let mut moved: HashMap<ZoneId, i64> = HashMap::new();
        for (i, (lsn, total)) in totals.iter().enumerate() {
            for (zone, change) in total {
                let stored = counts.get(zone).copied().unwrap_or(0) as i64;
                let undone = match (i, &carried) {
                    (0, Some(before)) => before
                        .get(zone)
                        .map_or(0, |c| c.deleted as i64 - c.added as i64),
                    _ => 0,
                };
                let records = (stored + moved.get(zone).copied().unwrap_or(0) + undone).max(0);
                let records = usize::try_from(records).unwrap_or(0);
                if guard_of(*zone).exceeded(change.deleted, records) {
                    let zone_name = zones.name(*zone).to_string();
                    if released(store, *lsn).await? {
                        warn!(zone = %zone_name, deleted = change.deleted, records, %lsn, "mass delete released by an operator: applying it");
                        continue;
                    }
                    return Err(RunError::MassDelete {
                        zone: zone_name,
                        deleted: change.deleted,
                        records,
                        lsn: *lsn,
                    });
                }
            }
            let seg = guard::zone_changes(&segments[i].1);
            for (zone, c) in seg {
                *moved.entry(zone).or_default() += c.added as i64 - c.deleted as i64;
            }
        }
    }
    if open {
        if let Some(last) = totals.pop() {
            *carry = Some(last);
        }
    }
    Ok(())
}

/// The parts of a batch to send now, in order. A transaction larger than a
/// batch is planned in parts; once such a transaction deletes anything in a
/// guarded zone, its parts are kept in `held` (not sent) until the batch
/// holding its commit, so that [`check`] judges it whole before any part of
/// it reaches DNS. `carry` is what [`check`] left for the open transaction.
pub fn ready_parts(
    held: &mut Vec<(Lsn, Vec<ZoneOps>)>,
    mut segments: Vec<(Lsn, Vec<ZoneOps>)>,
    open: bool,
    carry: &Carry,
    guards: &[DeleteGuard],
) -> Vec<(Lsn, Vec<ZoneOps>)> {
    let mut held_now = std::mem::take(held);
    let last = if open { segments.pop() } else { None };
    let mut out = Vec::with_capacity(segments.len() + held_now.len() + 1);
    if !segments.is_empty() {
        // The held transaction (if any) committed in this batch: its parts
        // go first, right before its last one.
        out.append(&mut held_now);
    }
    out.extend(segments);
    if let Some(part) = last {
        let deleting = carry.as_ref().is_some_and(|(_, changes)| {
            changes.iter().any(|(z, c)| {
                c.deleted > 0 && !guards.get(z.index()).copied().unwrap_or_default().is_off()
            })
        });
        if deleting || !held_now.is_empty() {
            held_now.push(part);
            *held = held_now;
        } else {
            out.push(part);
        }
    }
    out
}

/// The records each of these zones holds, as the row state says (distinct
/// records: two rows producing one record count once).
async fn zone_records(
    store: &mut Store,
    zones: &Zones,
    wanted: &[ZoneId],
) -> Result<HashMap<ZoneId, usize>, StoreError> {
    let names: Vec<String> = wanted.iter().map(|z| zones.name(*z).to_string()).collect();
    let slot = store.slot().to_owned();
    let rows = store
        .settled_client()
        .await?
        .query(
            "SELECT zone, count(*) FROM ( \
               SELECT DISTINCT zone, owner, rtype, rdata FROM pg2dns.row_state \
               WHERE slot = $1 AND zone = ANY($2)) d GROUP BY zone",
            &[&slot, &names],
        )
        .await
        .map_err(sql("cannot count a zone's records in pg2dns.row_state"))?;
    let mut out = HashMap::new();
    for r in rows {
        let name: String = r.get(0);
        let count: i64 = r.get(1);
        if let Some(z) = wanted.iter().find(|z| zones.name(**z).to_string() == name) {
            out.insert(*z, usize::try_from(count).unwrap_or(0));
        }
    }
    Ok(out)
}

/// Whether an operator released the transaction committed at `lsn`.
async fn released(store: &mut Store, lsn: Lsn) -> Result<bool, StoreError> {
    let slot = store.slot().to_owned();
    let row = store
        .settled_client()
        .await?
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg2dns.control \
               WHERE slot = $1 AND action = 'resume' AND allow_mass_delete = $2::text::pg_lsn)",
            &[&slot, &lsn.to_string()],
        )
        .await
        .map_err(sql(
            "cannot read pg2dns.control (run `pg2dns setup` for schema version 5)",
        ))?;
    Ok(row.get(0))
}

/// Every row of a source the row state holds: what a TRUNCATE of its table
/// removes.
pub async fn source_rows(store: &mut Store, source: &str) -> Result<Vec<RowKey>, StoreError> {
    let slot = store.slot().to_owned();
    let rows = store
        .settled_client()
        .await?
        .query(
            "SELECT DISTINCT row_key FROM pg2dns.row_state WHERE slot = $1 AND source = $2",
            &[&slot, &source],
        )
        .await
        .map_err(sql(
            "cannot read a truncated source's rows in pg2dns.row_state",
        ))?;
    info!(%source, rows = rows.len(), "TRUNCATE: every row of the source leaves DNS");
    Ok(rows.iter().map(|r| RowKey(r.get(0))).collect())
}
