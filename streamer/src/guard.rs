//! The mass-delete guard's SQL: what the pure judgement
//! (`pg2dns_decoder::guard`, driven by the stream core
//! `pg2dns_decoder::stream`) needs from the database, asked for only when a
//! transaction deletes enough records of a zone to be held at all.
//!
//! A transaction held here ends the session with [`RunError::MassDelete`]
//! before any of its batch is dispatched: the pipeline halts (a state, see
//! `pg2dns status`), nothing is confirmed past it, and after a restart the
//! transaction is held again. `pg2dns resume --allow-mass-delete` records a
//! release for that commit LSN in `pg2dns.control`; the guard then lets
//! exactly that transaction through, now or after any restart.

use std::collections::BTreeMap;

use pg2dns_decoder::mapping::RowKey;
use pg2dns_decoder::{Lsn, ZoneId, Zones};
use tracing::info;

use crate::store::{sql, Store, StoreError};

/// The records each of these zones holds, as the row state says (distinct
/// records: two rows producing one record count once).
pub async fn zone_records(
    store: &mut Store,
    zones: &Zones,
    wanted: &[ZoneId],
) -> Result<BTreeMap<ZoneId, usize>, StoreError> {
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
    let mut out = BTreeMap::new();
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
pub async fn released(store: &mut Store, lsn: Lsn) -> Result<bool, StoreError> {
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
