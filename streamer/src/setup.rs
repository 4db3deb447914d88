//! Set-up: the `pg2dns` schema, the publication and the replication slot.
//!
//! Every step is idempotent, so `pg2dns setup` can be run again after an
//! upgrade or by a configuration-management tool. The schema files in `sql/`
//! are applied in order and record their version in `pg2dns.schema_version`.
//! Version 2 moved the row state from text (`pg2dns.row_records`) to wire
//! form (`pg2dns.row_state`); its rows are converted here, by the same parser
//! the stream uses.

use pg2dns_decoder::mapping::{Mapping, RrTable};
use pg2dns_decoder::{Lsn, RType, Record, ZoneName};
use tokio_postgres::error::SqlState;
use tracing::{info, warn};

use crate::config::Config;
use crate::store::{sql, Store, StoreError};

/// The schema files, in order.
const SCHEMA: &[(i32, &str)] = &[
    (1, include_str!("../../sql/001_schema.sql")),
    (2, include_str!("../../sql/002_row_state.sql")),
    (3, include_str!("../../sql/003_control.sql")),
    (4, include_str!("../../sql/004_status.sql")),
    (5, include_str!("../../sql/005_rr_unique.sql")),
    (6, include_str!("../../sql/006_zone_ref.sql")),
    (7, include_str!("../../sql/007_row_state_indexes.sql")),
];

/// What `setup` did.
#[derive(Debug, Default)]
pub struct SetupReport {
    /// Schema versions applied now.
    pub applied: Vec<i32>,
    /// Row state records converted from schema version 1.
    pub converted: u64,
    /// Whether the publication was created now.
    pub publication_created: bool,
    /// Whether the slot was created now.
    pub slot_created: bool,
    /// Source tables added to the publication now.
    pub sources_added: Vec<String>,
    /// The slot starts after pg2dns's progress (progress, slot position):
    /// the changes in between were never streamed.
    pub gap: Option<(Lsn, Lsn)>,
    /// Whether the progress was moved to the slot to accept that gap.
    pub gap_accepted: bool,
    /// Rows loaded into DNS from the new slot's snapshot.
    pub loaded: Option<usize>,
    /// Why the first load did not complete.
    pub load_problem: Option<String>,
}

/// Why setup failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A statement failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The replication slot could not be created.
    #[error(
        "cannot create the replication slot (is wal_level = logical, and may the role replicate?)"
    )]
    Slot(#[source] Box<crate::replication::ReplicationError>),
}

/// Installs the schema, creates the publication and the slot. With
/// `accept_gap`, a slot that starts after pg2dns's progress is accepted: the
/// progress moves to the slot (the operator resynchronised the zones).
pub async fn setup(config: &Config, accept_gap: bool) -> Result<SetupReport, SetupError> {
    let mut store = Store::connect(&config.database).await?;
    let client = store.client();
    let mut report = SetupReport::default();
    let installed: Vec<i32> = match client
        .query("SELECT version FROM pg2dns.schema_version", &[])
        .await
    {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Vec::new(),
        Err(e) if e.code() == Some(&SqlState::INVALID_SCHEMA_NAME) => Vec::new(),
        Err(e) => return Err(sql("cannot read pg2dns.schema_version")(e).into()),
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
    report.converted = convert_v1_state(&store, config).await?;
    let publication = &config.database.publication;
    // Whether it exists, and whether it publishes partitions as their table.
    let via_root: Option<bool> = client
        .query_opt(
            "SELECT pubviaroot FROM pg_publication WHERE pubname = $1",
            &[publication],
        )
        .await
        .map_err(sql("cannot read pg_publication"))?
        .map(|row| row.get(0));
    // A partitioned source table's changes are published under its own
    // name, not its partitions' (which pg2dns does not know and would skip):
    // `publish_via_partition_root`. It changes nothing for other tables.
    if via_root.is_none() {
        // Identifiers were checked to be [a-z0-9_] by the config loader.
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION \"{publication}\" FOR TABLE pg2dns.rr, pg2dns.control \
                 WITH (publish_via_partition_root = true)"
            ))
            .await
            .map_err(sql("cannot create the publication"))?;
        report.publication_created = true;
        info!(%publication, "publication created");
    } else if via_root == Some(false) {
        // Publications made by earlier versions lack it.
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION \"{publication}\" SET (publish_via_partition_root = true)"
            ))
            .await
            .map_err(sql(
                "cannot set publish_via_partition_root on the publication",
            ))?;
        info!(%publication, "publication set to publish partitions' changes as their partitioned table's");
    }
    // The control table travels in the stream: that is how a pause is
    // exact (publications made by earlier versions lack it).
    let has_control = client
        .query_opt(
            "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = 'pg2dns' AND tablename = 'control'",
            &[publication],
        )
        .await
        .map_err(sql("cannot read pg_publication_tables"))?
        .is_some();
    if !has_control {
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION \"{publication}\" ADD TABLE pg2dns.control"
            ))
            .await
            .map_err(sql("cannot add pg2dns.control to the publication"))?;
        info!(%publication, "pg2dns.control added to the publication");
    }
    // Each configured source's table travels in the stream too, and so do
    // the zones tables they reference.
    let zones_tables = config.zones_tables();
    let tables = config
        .sources
        .iter()
        .map(|s| (s.schema(), s.table(), s.source()))
        .chain(
            zones_tables
                .iter()
                .map(|t| (t.schema(), t.table_name(), t.table.as_str())),
        );
    for (schema, table, source) in tables {
        let published = client
            .query_opt(
                "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                &[publication, &schema, &table],
            )
            .await
            .map_err(sql("cannot read pg_publication_tables"))?
            .is_some();
        if !published {
            client
                .batch_execute(&format!(
                    "ALTER PUBLICATION \"{publication}\" ADD TABLE {}.{}",
                    quote_ident(schema),
                    quote_ident(table)
                ))
                .await
                .map_err(sql(
                    "cannot add a source table to the publication (does it exist?)",
                ))?;
            report.sources_added.push(source.to_owned());
            info!(%publication, table = %source, "source table added to the publication");
        }
    }
    let slot = &config.database.slot;
    let mut exported = None;
    if store.slot_confirmed().await?.is_none() {
        // Over the replication protocol, to export the snapshot of the
        // slot's consistent point: what a first deployment loads.
        let snapshot = crate::replication::create_slot_exporting(&config.database, slot, false)
            .await
            .map_err(|e| SetupError::Slot(Box::new(e)))?;
        report.slot_created = true;
        info!(%slot, lsn = %snapshot.lsn, "replication slot created");
        exported = Some(snapshot);
    }
    let slot_at = store.slot_confirmed().await?.unwrap_or(Lsn::ZERO);
    if !store.has_progress().await? {
        // A new instance. What the tables hold at the slot's consistent
        // point is loaded into DNS and the row state now; the stream takes
        // over from there. Its progress starts where its slot does, so that
        // a slot dropped and re-created later is noticed.
        if let Some(snapshot) = &exported {
            match crate::reconcile::load_at(config, &mut store, &snapshot.name).await {
                Ok(load) if load.exit_code() == 0 => {
                    info!(rows = load.rows, "the tables as of the new slot are in DNS");
                    report.loaded = Some(load.rows);
                }
                Ok(load) => {
                    warn!(summary = %anstream::adapter::strip_str(&load.human()), "the first load did not bring every zone in line; run `pg2dns reconcile --apply` (with --force if a zone must lose most of its records)");
                    report.load_problem = Some(load.human());
                }
                Err(e) => {
                    let e = crate::error::chain(&e);
                    warn!(error = %e, "the first load failed; run `pg2dns reconcile --apply`");
                    report.load_problem = Some(e);
                }
            }
        }
        store.set_progress(slot_at).await?;
    } else {
        let progress = store.progress().await?;
        if slot_at > progress {
            report.gap = Some((progress, slot_at));
            if accept_gap {
                store.set_progress(slot_at).await?;
                report.gap_accepted = true;
                warn!(%slot, %progress, %slot_at, "gap accepted: pg2dns streams from the slot's position");
            } else {
                warn!(%slot, %progress, %slot_at, "the slot starts after pg2dns's progress: the changes in between were never streamed; resynchronise the zones, then run setup --accept-gap");
            }
        }
    }
    Ok(report)
}

/// An SQL identifier, quoted (`"` doubled), so any table name is safe.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Moves version 1's text row state into `pg2dns.row_state` (as this
/// instance's), then drops the old table. A record the parser refuses is left
/// out with a warning: it is what the stream would refuse today.
async fn convert_v1_state(store: &Store, config: &Config) -> Result<u64, StoreError> {
    let client = store.client();
    let exists = client
        .query_opt("SELECT to_regclass('pg2dns.row_records')::text", &[])
        .await
        .map_err(sql("cannot look for pg2dns.row_records"))?
        .and_then(|r| r.get::<_, Option<String>>(0))
        .is_some();
    if !exists {
        return Ok(0);
    }
    client
        .batch_execute("BEGIN")
        .await
        .map_err(sql("cannot begin the conversion of pg2dns.row_records"))?;
    let rows = client
        .query(
            "SELECT source, row_key, zone, owner, rtype, rdata, ttl FROM pg2dns.row_records",
            &[],
        )
        .await
        .map_err(sql("cannot read pg2dns.row_records"))?;
    let mut converted = 0;
    for r in &rows {
        let (zone, owner, rtype, rdata): (String, String, String, String) =
            (r.get(2), r.get(3), r.get(4), r.get(5));
        let ttl = u32::try_from(r.get::<_, i32>(6)).unwrap_or(0);
        let record = match Record::parse(&owner, ttl, &rtype, &rdata) {
            Ok(rec) => rec,
            Err(e) => {
                warn!(owner = %owner, rtype = %rtype, error = %pg2dns_decoder::error_chain(&e), "a version 1 row state record does not parse; left out");
                continue;
            }
        };
        let zone = ZoneName::parse(&zone)
            .map(|z| z.to_string())
            .unwrap_or(zone);
        let source: String = r.get(0);
        let source = if source.is_empty() {
            RrTable::SOURCE.to_string()
        } else {
            source
        };
        client
            .execute(
                "INSERT INTO pg2dns.row_state (slot, source, row_key, zone, owner, rtype, rdata, ttl, target) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &config.database.slot,
                    &source,
                    &r.get::<_, String>(1),
                    &zone,
                    &record.owner.name().as_wire(),
                    &i32::from(record.rtype.0),
                    &record.rdata.as_wire(),
                    &i32::try_from(record.ttl).unwrap_or(i32::MAX),
                    &matches!(record.rtype, RType::MX | RType::SRV)
                        .then(|| pg2dns_decoder::rdata::target(record.rtype, record.rdata.as_wire()))
                        .flatten()
                        .map(|t| t.as_wire().to_vec()),
                ],
            )
            .await
            .map_err(sql("cannot convert pg2dns.row_records"))?;
        converted += 1;
    }
    client
        .batch_execute("DROP TABLE pg2dns.row_records; COMMIT")
        .await
        .map_err(sql("cannot drop pg2dns.row_records"))?;
    info!(converted, "row state converted from schema version 1");
    Ok(converted)
}
