//! `pg2dns.zones` (sql/012_zones.sql): the zones an instance publishes
//! besides its `[[zone]]`s, each naming a `[[server]]`. Read at each session
//! start, and again when a transaction of the stream changed a row of it.

use crate::config::{TableZone, TableZoneRefusal};

use super::{sql, Store, StoreError};

/// The source name the rows of `pg2dns.zones` are rejected under.
pub const ZONES_TABLE: &str = "pg2dns.zones";

impl Store {
    /// This slot's rows of `pg2dns.zones`, in name order (none when the
    /// schema predates the table: run `pg2dns setup` to add it).
    pub async fn table_zones(&mut self) -> Result<Vec<TableZone>, StoreError> {
        let client = self.settled_client().await?;
        let exists: bool = client
            .query_one("SELECT to_regclass('pg2dns.zones') IS NOT NULL", &[])
            .await
            .map_err(sql("cannot look for pg2dns.zones"))?
            .get(0);
        if !exists {
            return Ok(Vec::new());
        }
        let slot = self.slot().to_owned();
        let rows = self
            .settled_client()
            .await?
            .query(
                "SELECT name, server FROM pg2dns.zones WHERE slot = $1 ORDER BY name",
                &[&slot],
            )
            .await
            .map_err(sql("cannot read pg2dns.zones"))?;
        Ok(rows
            .iter()
            .map(|r| TableZone {
                name: r.get(0),
                server: r.get(1),
            })
            .collect())
    }

    /// Whether `pg2dns.zones` is in `publication` (setup adds it; a schema
    /// upgraded without running setup again lacks it).
    pub async fn zones_table_published(&mut self, publication: &str) -> Result<bool, StoreError> {
        Ok(self
            .settled_client()
            .await?
            .query_opt(
                "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = 'pg2dns' AND tablename = 'zones'",
                &[&publication],
            )
            .await
            .map_err(sql("cannot read pg_publication_tables"))?
            .is_some())
    }

    /// Records rows of `pg2dns.zones` that are not followed, in a
    /// transaction of their own; a row refused for the same reason by its
    /// newest rejection is not recorded again (each session start reads the
    /// table).
    pub async fn reject_table_zones(
        &mut self,
        refused: &[TableZoneRefusal],
    ) -> Result<(), StoreError> {
        let slot = self.slot().to_owned();
        let client = self.settled_client().await?;
        for r in refused {
            client
                .execute(
                    "INSERT INTO pg2dns.rejected (slot, source, row_key, lsn, zone, reason) \
                     SELECT $1, $2, $3, pg_current_wal_lsn(), $3, $4 \
                     WHERE NOT EXISTS (SELECT 1 FROM (SELECT reason FROM pg2dns.rejected \
                         WHERE slot = $1 AND source = $2 AND row_key = $3 ORDER BY id DESC LIMIT 1) last \
                         WHERE last.reason = $4)",
                    &[&slot, &ZONES_TABLE, &r.row.name, &r.reason],
                )
                .await
                .map_err(sql("cannot record a refused row of pg2dns.zones in pg2dns.rejected"))?;
        }
        Ok(())
    }
}
