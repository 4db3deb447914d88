//! Set-up: the `pg2dns` schema, the publication and the replication slot.
//!
//! Every step is idempotent, so `pg2dns setup` can be run again after an
//! upgrade or by a configuration-management tool. The schema files in `sql/`
//! are applied in order and record their version in `pg2dns.schema_version`.

use tracing::info;

use crate::checkpoint::{Store, StoreError};
use crate::config::Config;

/// The schema files, in order.
const SCHEMA: &[(i32, &str)] = &[(1, include_str!("../../sql/001_schema.sql"))];

/// What `setup` did.
#[derive(Debug, Default)]
pub struct SetupReport {
    /// Schema versions applied now.
    pub applied: Vec<i32>,
    /// Whether the publication was created now.
    pub publication_created: bool,
    /// Whether the slot was created now.
    pub slot_created: bool,
}

fn sql(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |source| StoreError::Sql { what, source }
}

/// Installs the schema, creates the publication and the slot.
pub async fn setup(config: &Config) -> Result<SetupReport, StoreError> {
    let store = Store::connect(&config.database).await?;
    let client = store.client();
    let mut report = SetupReport::default();
    let installed: Vec<i32> = match client
        .query("SELECT version FROM pg2dns.schema_version", &[])
        .await
    {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(_) => Vec::new(),
    };
    for (version, text) in SCHEMA {
        if !installed.contains(version) {
            client
                .batch_execute(text)
                .await
                .map_err(sql("cannot install the pg2dns schema"))?;
            report.applied.push(*version);
            info!(version, "schema installed");
        }
    }
    let publication = &config.database.publication;
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[publication],
        )
        .await
        .map_err(sql("cannot read pg_publication"))?
        .is_some();
    if !exists {
        // Identifiers were checked to be [a-z0-9_] by the config loader.
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION \"{publication}\" FOR TABLE pg2dns.rr"
            ))
            .await
            .map_err(sql("cannot create the publication"))?;
        report.publication_created = true;
        info!(%publication, "publication created");
    }
    let slot = &config.database.slot;
    if store.slot_confirmed().await?.is_none() {
        client
            .query(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[slot],
            )
            .await
            .map_err(sql(
                "cannot create the replication slot (is wal_level = logical?)",
            ))?;
        report.slot_created = true;
        info!(%slot, "replication slot created");
    }
    Ok(report)
}
