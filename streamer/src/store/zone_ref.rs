//! The durable copy of the referenced zones tables' rows
//! (`pg2dns.zone_ref`, see `decoder::mapping::source::zones_table`): written
//! in the checkpoint transaction with the row state, so that after a restart
//! a record row is resolved against the zones table as of its own
//! transaction, not as the table is now.

use std::collections::BTreeMap;

use pg2dns_decoder::mapping::source::zones_table::{RefEdit, ZoneRefs, ZonesTable};

use super::{sql, Store, StoreError};

impl Store {
    /// Reads this slot's known rows of `tables` into `refs`; a table with
    /// none stored yet (a source added since, or a schema without the
    /// table) is read as it is now, and that is said in the result.
    pub async fn load_zone_refs(
        &self,
        tables: &[ZonesTable],
        refs: &mut ZoneRefs,
    ) -> Result<Vec<String>, StoreError> {
        let mut read_live = Vec::new();
        for t in tables {
            let rows = self
                .client
                .query(
                    "SELECT row_key, name FROM pg2dns.zone_ref WHERE slot = $1 AND source = $2",
                    &[&self.slot, &t.table],
                )
                .await
                .map_err(sql("cannot read pg2dns.zone_ref"))?;
            let mut known: BTreeMap<String, String> =
                rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            if known.is_empty() {
                known = read_zones_table(&self.client, t).await?;
                read_live.push(t.table.clone());
            }
            refs.replace(&t.table, known);
        }
        Ok(read_live)
    }

    /// Writes edits in the open checkpoint transaction.
    pub async fn write_zone_refs(&mut self, edits: &[RefEdit]) -> Result<(), StoreError> {
        if edits.is_empty() {
            return Ok(());
        }
        self.begin().await?;
        for e in edits {
            match &e.name {
                Some(name) => self
                    .client
                    .execute(
                        "INSERT INTO pg2dns.zone_ref (slot, source, row_key, name) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (slot, source, row_key) DO UPDATE SET name = excluded.name",
                        &[&self.slot, &e.table, &e.key, name],
                    )
                    .await
                    .map_err(sql("cannot write pg2dns.zone_ref"))?,
                None => self
                    .client
                    .execute(
                        "DELETE FROM pg2dns.zone_ref WHERE slot = $1 AND source = $2 AND row_key = $3",
                        &[&self.slot, &e.table, &e.key],
                    )
                    .await
                    .map_err(sql("cannot write pg2dns.zone_ref"))?,
            };
        }
        Ok(())
    }

    /// Replaces, in one transaction of its own, this slot's rows of the
    /// zones tables in `refs`: what a first load or `reconcile --apply`
    /// does with the rows it read from its snapshot.
    pub async fn replace_zone_refs(
        &mut self,
        tables: &[ZonesTable],
        refs: &ZoneRefs,
    ) -> Result<(), StoreError> {
        if tables.is_empty() {
            return Ok(());
        }
        self.begin().await?;
        let result = async {
            for t in tables {
                let (keys, names): (Vec<&str>, Vec<&str>) = refs.rows(&t.table).unzip();
                self.client
                    .execute(
                        "DELETE FROM pg2dns.zone_ref WHERE slot = $1 AND source = $2",
                        &[&self.slot, &t.table],
                    )
                    .await
                    .map_err(sql("cannot clear pg2dns.zone_ref"))?;
                self.client
                    .execute(
                        "INSERT INTO pg2dns.zone_ref (slot, source, row_key, name) \
                         SELECT $1, $2, k, n FROM unnest($3::text[], $4::text[]) AS x(k, n)",
                        &[&self.slot, &t.table, &keys, &names],
                    )
                    .await
                    .map_err(sql("cannot write pg2dns.zone_ref"))?;
            }
            self.client
                .batch_execute("COMMIT")
                .await
                .map_err(sql("cannot commit pg2dns.zone_ref"))
        }
        .await;
        if result.is_err() {
            // The first failure is the one to report; if the ROLLBACK fails
            // too, the connection is gone and its next statement says so.
            let _ = self.client.batch_execute("ROLLBACK").await;
        }
        self.in_transaction = false;
        result
    }
}

/// The SQL that reads a zones table's (key, name) rows as text.
pub fn zones_table_query(t: &ZonesTable) -> String {
    let q = crate::setup::quote_ident;
    format!(
        "SELECT {key}::text, {name}::text FROM {schema}.{table} WHERE {key} IS NOT NULL AND {name} IS NOT NULL",
        key = q(&t.key),
        name = q(&t.name),
        schema = q(t.schema()),
        table = q(t.table_name())
    )
}

/// Reads a zones table's rows (in the caller's transaction and snapshot).
pub async fn read_zones_table(
    client: &tokio_postgres::Client,
    t: &ZonesTable,
) -> Result<BTreeMap<String, String>, StoreError> {
    let rows = client
        .query(zones_table_query(t).as_str(), &[])
        .await
        .map_err(sql("cannot read a zones table"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
