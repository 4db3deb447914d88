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
use crate::reconcile::Report;
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
    (8, include_str!("../../sql/008_health.sql")),
    (9, include_str!("../../sql/009_lease.sql")),
    (10, include_str!("../../sql/010_roles.sql")),
    (11, include_str!("../../sql/011_truncate_partition.sql")),
    (12, include_str!("../../sql/012_zones.sql")),
    (13, include_str!("../../sql/013_primary_status.sql")),
    (14, include_str!("../../sql/014_lease_reason.sql")),
];

/// What the operator asked `setup` for.
#[derive(Debug, Clone, Default)]
pub struct SetupOptions {
    /// A slot that starts after pg2dns's progress is accepted: the progress
    /// moves to the slot (the operator resynchronised the zones).
    pub accept_gap: bool,
    /// The first load may delete records pg2dns never published.
    pub force: bool,
    /// Replace a lost slot (`wal_status = lost`, or dropped while pg2dns has
    /// progress) with a new one and bring every zone in line at its snapshot.
    pub recreate_slot: bool,
}

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
    /// A lost slot was dropped and created again (its old confirmed LSN).
    pub slot_recreated: Option<Lsn>,
    /// Source tables added to the publication now.
    pub sources_added: Vec<String>,
    /// The slot starts after pg2dns's progress (progress, slot position):
    /// the changes in between were never streamed.
    pub gap: Option<(Lsn, Lsn)>,
    /// Whether the progress was moved to the slot to accept that gap.
    pub gap_accepted: bool,
    /// Rows loaded into DNS from the new slot's snapshot.
    pub loaded: Option<usize>,
    /// The first load, zone by zone (when one ran).
    pub load: Option<Report>,
    /// Why the first load did not complete.
    pub load_problem: Option<String>,
    /// A halted service was asked to resume (after `--recreate-slot`).
    pub resumed: bool,
    /// The SQL a table owner runs for each partition that could not get
    /// pg2dns's TRUNCATE trigger (this role does not own it).
    pub truncate_triggers_missing: Vec<String>,
}

impl SetupReport {
    /// 0 when done, 2 when set up but a zone is not in line with the tables
    /// (the first load did not complete).
    pub fn exit_code(&self) -> u8 {
        if self.load_problem.is_some() {
            2
        } else {
            0
        }
    }
}

/// A source table whose application writes would fail once published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityProblem {
    /// `schema.table`.
    pub table: String,
    /// Its replica identity as `pg_class.relreplident` says (`d`, `n`, `i`).
    pub identity: String,
}

impl std::fmt::Display for IdentityProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.identity.as_str() {
            "n" => "replica identity NOTHING",
            "i" => "replica identity USING INDEX, and that index is gone",
            _ => "no primary key and replica identity DEFAULT",
        };
        write!(
            f,
            "{}: {what}; once published, the application's UPDATE and DELETE on it fail. Run `ALTER TABLE {} REPLICA IDENTITY FULL` (or add a primary key, or `REPLICA IDENTITY USING INDEX` on a unique index of NOT NULL columns), then `pg2dns setup` again",
            self.table, self.table
        )
    }
}

/// Why setup failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A statement failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A source's key does not name one row (see `check::key_problems`).
    #[error("{}", .0.join("; "))]
    KeyNotUnique(Vec<String>),
    /// The role may not add a source table to the publication.
    #[error("cannot add {table} to publication {publication}: only a superuser, or the owner of both the table and the publication, may; as a superuser run `ALTER PUBLICATION \"{publication}\" ADD TABLE {table}` (the publication stays this role's), then run setup again (README, \"Roles and grants\")")]
    NotOwner {
        /// The table, `schema.table`.
        table: String,
        /// The publication.
        publication: String,
        /// PostgreSQL's refusal.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A `[roles]` grant failed.
    #[error("cannot grant {what} to role {role} of [roles] (does the role exist, and does this role own the pg2dns schema?)")]
    Grant {
        /// The role.
        role: String,
        /// What was granted.
        what: &'static str,
        /// PostgreSQL's refusal.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The replication slot could not be created.
    #[error(
        "cannot create the replication slot (is wal_level = logical, and may the role replicate?)"
    )]
    Slot(#[source] Box<crate::replication::ReplicationError>),
    /// The slot exists with another output plugin than `[database] plugin`.
    #[error("replication slot {slot:?} decodes with output plugin {slot_plugin:?}, but [database] plugin = {configured:?} needs {wanted:?}; {}", crate::error::slot_plugin_hint(slot, slot_plugin))]
    SlotPlugin {
        /// The slot name.
        slot: String,
        /// `pg_replication_slots.plugin`.
        slot_plugin: String,
        /// The configured value of `[database] plugin`.
        configured: &'static str,
        /// The library that value needs.
        wanted: &'static str,
    },
    /// Source tables the publication cannot take (nothing was changed).
    #[error("refused: {} source table(s) cannot be published without breaking the application's writes; nothing was changed:\n  {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    NoReplicaIdentity(Vec<IdentityProblem>),
    /// The first load would delete records pg2dns does not own, or a zone
    /// cannot be loaded (nothing was changed).
    #[error("refused: {why}; nothing was changed")]
    LoadRefused {
        /// Why.
        why: String,
        /// The preview, zone by zone.
        preview: Box<Report>,
    },
    /// The preview of the first load could not be computed.
    #[error("cannot compute the first load's plan")]
    Preview(#[source] Box<crate::reconcile::ReconcileError>),
    /// The slot is invalidated.
    #[error("replication slot {0} is lost (wal_status = lost: PostgreSQL removed WAL it still needed, e.g. past max_slot_wal_keep_size): run `pg2dns setup --recreate-slot` to replace it and bring every zone in line with the tables")]
    SlotLost(String),
    /// `--recreate-slot` on a slot that can still be used.
    #[error(
        "replication slot {slot} can still be used (wal_status = {status}): nothing to recreate"
    )]
    SlotUsable {
        /// The slot.
        slot: String,
        /// Its wal_status.
        status: String,
    },
    /// `--recreate-slot` before any first setup.
    #[error("--recreate-slot replaces the slot of an instance that streamed before; this one never did: run `pg2dns setup`")]
    NothingToRecreate,
}

/// What the slot is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    /// No such slot.
    Missing,
    /// There, with its `wal_status` (`reserved`, `extended`, `unreserved`).
    Usable(String),
    /// Invalidated: `wal_status = lost`.
    Lost,
}

async fn slot_state(store: &Store, slot: &str) -> Result<SlotState, StoreError> {
    let row = store
        .client()
        .query_opt(
            "SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(sql("cannot read pg_replication_slots"))?;
    Ok(match row.map(|r| r.get::<_, String>(0)) {
        None => SlotState::Missing,
        Some(s) if s == "lost" => SlotState::Lost,
        Some(s) => SlotState::Usable(s),
    })
}

/// Whether `slot` is one a setup made and never finished loading: it is in
/// this database while pg2dns's schema is there without progress for it.
///
/// Setup creates the slot after the schema and writes the progress only
/// once the first load is done, so such a slot belongs to a setup that
/// ended in between (SIGTERM, kill -9, a lost connection). Nothing streamed
/// from it, and the snapshot of its consistent point ended with that setup:
/// kept, the next setup would skip the load and the rows the tables held
/// before would never reach DNS. Setup makes it again and loads at the new
/// slot's point.
async fn unloaded_slot(
    store: &Store,
    slot: &str,
    state: &SlotState,
    progress_before: bool,
) -> Result<bool, StoreError> {
    if progress_before
        || *state == SlotState::Missing
        || !crate::reconcile::has_schema(store).await?
    {
        return Ok(false);
    }
    Ok(store
        .client()
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()",
            &[&slot],
        )
        .await
        .map_err(sql("cannot read pg_replication_slots"))?
        .is_some())
}

/// Whether this slot has progress (false before the schema exists).
async fn has_progress(store: &Store) -> Result<bool, StoreError> {
    if !crate::reconcile::has_schema(store).await? {
        return Ok(false);
    }
    store.has_progress().await
}

/// The configured source and zones tables not yet in the publication:
/// (schema, table, source name).
async fn unpublished_tables(
    client: &tokio_postgres::Client,
    config: &Config,
) -> Result<Vec<(String, String, String)>, StoreError> {
    let publication = &config.database.publication;
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
    let mut out = Vec::new();
    for (schema, table, source) in tables {
        let published = client
            .query_opt(
                "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                &[publication, &schema, &table],
            )
            .await
            .map_err(sql("cannot read pg_publication_tables"))?
            .is_some();
        if !published && !out.iter().any(|(s, t, _)| s == schema && t == table) {
            out.push((schema.to_owned(), table.to_owned(), source.to_owned()));
        }
    }
    Ok(out)
}

/// The tables among `tables` whose UPDATE and DELETE would fail once
/// published: no replica identity ("cannot update table … because it does
/// not have a replica identity and publishes updates"). A table that does
/// not exist is left to the publication step, which names it.
pub async fn identity_problems(
    client: &tokio_postgres::Client,
    tables: &[(String, String, String)],
) -> Result<Vec<IdentityProblem>, StoreError> {
    let mut out = Vec::new();
    for (schema, table, _) in tables {
        let row = client
            .query_opt(
                "SELECT c.relreplident::text, \
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[schema, table],
            )
            .await
            .map_err(sql("cannot read a source table's replica identity"))?;
        let Some(row) = row else { continue };
        let (identity, primary, index): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
        let usable = match identity.as_str() {
            "f" => true,
            "d" => primary,
            "i" => index,
            _ => false,
        };
        if !usable {
            out.push(IdentityProblem {
                table: format!("{}.{}", quote_ident(schema), quote_ident(table)),
                identity,
            });
        }
    }
    Ok(out)
}

/// What `setup --dry-run` found: what setup would do, changing nothing.
#[derive(Debug)]
pub struct DryRun {
    /// Tables setup would refuse.
    pub identity: Vec<IdentityProblem>,
    /// Schema versions setup would apply.
    pub schema_to_apply: Vec<i32>,
    /// Whether the publication exists.
    pub publication_exists: bool,
    /// Tables setup would add to the publication.
    pub tables_to_add: Vec<String>,
    /// The slot now.
    pub slot: SlotState,
    /// Whether pg2dns has progress for the slot.
    pub has_progress: bool,
    /// The first load's plan, when setup would run one.
    pub load: Option<Report>,
    /// Why setup (with the same flags) would stop, if it would.
    pub refusal: Option<String>,
}

impl DryRun {
    /// 0 when setup with the same flags would go through, 2 when it would
    /// refuse or a zone cannot be loaded.
    pub fn exit_code(&self) -> u8 {
        if self.refusal.is_some() {
            2
        } else {
            0
        }
    }

    /// The report for people.
    pub fn human(&self, slot: &str) -> String {
        let mut out = String::from("setup --dry-run: nothing is changed\n");
        for p in &self.identity {
            out.push_str(&format!("would refuse: {p}\n"));
        }
        if !self.schema_to_apply.is_empty() {
            out.push_str(&format!(
                "would install schema versions {:?}\n",
                self.schema_to_apply
            ));
        }
        if !self.publication_exists {
            out.push_str("would create the publication\n");
        }
        for t in &self.tables_to_add {
            out.push_str(&format!("would add {t} to the publication\n"));
        }
        out.push_str(&match &self.slot {
            SlotState::Missing if self.has_progress => format!("slot {slot} is missing but pg2dns streamed from it before: `pg2dns setup --recreate-slot` replaces it\n"),
            SlotState::Missing => format!("would create slot {slot} and load the tables into DNS at its consistent point\n"),
            SlotState::Lost => format!("slot {slot} is lost: `pg2dns setup --recreate-slot` replaces it and loads every zone at the new slot's point\n"),
            SlotState::Usable(s) => format!("slot {slot} is there (wal_status {s}): no first load\n"),
        });
        if let Some(load) = &self.load {
            out.push_str(&format!(
                "the first load (tables read now, {} rows; the real load reads them at the new slot's point):\n",
                load.rows
            ));
            out.push_str(&load.human());
        }
        if let Some(why) = &self.refusal {
            out.push_str(&format!("setup would refuse: {why}\n"));
        }
        out
    }
}

/// Whether setup (not a dry run) runs a first load: a new slot for an
/// instance without progress, or `--recreate-slot`.
fn loads(slot: &SlotState, has_progress: bool, options: &SetupOptions) -> bool {
    (*slot == SlotState::Missing && !has_progress)
        || (options.recreate_slot && (*slot == SlotState::Lost || *slot == SlotState::Missing))
}

/// Why a first load with this preview must not go ahead (without `--force`
/// for records pg2dns does not own).
fn load_refusal(preview: &Report) -> Option<String> {
    let mut why = Vec::new();
    for z in &preview.zones {
        if let Some(e) = &z.error {
            why.push(format!(
                "zone {} cannot be loaded ({}); fix it, then run `pg2dns setup` again",
                z.zone,
                crate::error::chain(e)
            ));
        } else if z.refused_unowned {
            why.push(format!("zone {} holds {} record(s) that no row holds and pg2dns never published, which the load would delete (listed above); keep them by adding rows for them or excluding their names in the zone's config, or delete them with `pg2dns setup --force`", z.zone, z.unowned_count));
        } else if z.refused_by_threshold {
            why.push(format!("zone {} would lose or change more than reconcile.max_change_share of its records; check the tables, then `pg2dns setup --force`", z.zone));
        }
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// `setup --dry-run`: what setup would do, changing nothing (no schema, no
/// publication, no slot, no DNS update).
pub async fn dry_run(config: &Config, options: &SetupOptions) -> Result<DryRun, SetupError> {
    let store = Store::connect(&config.database).await?;
    let client = store.client();
    let installed = installed_versions(client).await?;
    let unpublished = unpublished_tables(client, config).await?;
    let identity = identity_problems(client, &unpublished).await?;
    let keys = crate::check::key_problems(client, config).await?;
    let publication_exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&config.database.publication],
        )
        .await
        .map_err(sql("cannot read pg_publication"))?
        .is_some();
    let mut slot = slot_state(&store, &config.database.slot).await?;
    let progress = has_progress(&store).await?;
    if unloaded_slot(&store, &config.database.slot, &slot, progress).await? {
        slot = SlotState::Missing;
    }
    let mut dry = DryRun {
        schema_to_apply: SCHEMA
            .iter()
            .map(|(v, _)| *v)
            .filter(|v| !installed.contains(v))
            .collect(),
        publication_exists,
        tables_to_add: unpublished.into_iter().map(|(_, _, s)| s).collect(),
        refusal: if !identity.is_empty() {
            Some(format!(
                "{} table(s) without a usable replica identity",
                identity.len()
            ))
        } else if !keys.is_empty() {
            Some(format!("a source key is not unique: {}", keys.join("; ")))
        } else {
            None
        },
        identity,
        slot,
        has_progress: progress,
        load: None,
    };
    if loads(&dry.slot, dry.has_progress, options) {
        let preview = crate::reconcile::preview_load(config, options.force)
            .await
            .map_err(|e| SetupError::Preview(Box::new(e)))?;
        if dry.refusal.is_none() {
            dry.refusal = load_refusal(&preview);
        }
        dry.load = Some(preview);
    } else if dry.slot == SlotState::Lost {
        dry.refusal = Some(format!(
            "slot {} is lost; run `pg2dns setup --recreate-slot`",
            config.database.slot
        ));
    }
    Ok(dry)
}

async fn installed_versions(client: &tokio_postgres::Client) -> Result<Vec<i32>, StoreError> {
    match client
        .query("SELECT version FROM pg2dns.schema_version", &[])
        .await
    {
        Ok(rows) => Ok(rows.iter().map(|r| r.get(0)).collect()),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(Vec::new()),
        Err(e) if e.code() == Some(&SqlState::INVALID_SCHEMA_NAME) => Ok(Vec::new()),
        Err(e) => Err(sql("cannot read pg2dns.schema_version")(e)),
    }
}

/// Installs the schema, creates the publication and the slot, and loads the
/// tables into DNS at a new slot's consistent point.
///
/// Before changing anything it refuses source tables without a usable
/// replica identity, and, when a first load is due, previews it: a zone
/// that cannot be transferred, or whose load would delete records pg2dns
/// never published (without `force`), stops setup with nothing changed.
pub async fn setup(config: &Config, options: &SetupOptions) -> Result<SetupReport, SetupError> {
    let mut store = Store::connect(&config.database).await?;
    let slot = config.database.slot.clone();
    // Checks first: nothing is changed unless all pass.
    let unpublished = unpublished_tables(store.client(), config).await?;
    let problems = identity_problems(store.client(), &unpublished).await?;
    if !problems.is_empty() {
        return Err(SetupError::NoReplicaIdentity(problems));
    }
    refuse_keys_not_unique(store.client(), config).await?;
    let mut state = slot_state(&store, &slot).await?;
    if let Some(info) = store.slot_info().await? {
        let plugin = config.database.plugin;
        if info.plugin != plugin.library() && state != SlotState::Lost {
            return Err(SetupError::SlotPlugin {
                slot,
                slot_plugin: info.plugin,
                configured: plugin.config_name(),
                wanted: plugin.library(),
            });
        }
    }
    let progress_before = has_progress(&store).await?;
    let unloaded = unloaded_slot(&store, &slot, &state, progress_before).await?;
    if unloaded {
        state = SlotState::Missing;
    }
    // A slot ahead of pg2dns's progress (dropped and made again) is as
    // good as lost to pg2dns: --recreate-slot replaces it too.
    if options.recreate_slot && progress_before && matches!(state, SlotState::Usable(_)) {
        let slot_at = store.slot_confirmed().await?.unwrap_or(Lsn::ZERO);
        if slot_at > store.progress().await? {
            state = SlotState::Lost;
        }
    }
    match &state {
        SlotState::Lost if !options.recreate_slot => return Err(SetupError::SlotLost(slot)),
        SlotState::Usable(status) if options.recreate_slot && progress_before => {
            return Err(SetupError::SlotUsable {
                slot,
                status: status.clone(),
            })
        }
        SlotState::Missing if options.recreate_slot && !progress_before => {
            return Err(SetupError::NothingToRecreate)
        }
        _ => {}
    }
    if loads(&state, progress_before, options) {
        let preview = crate::reconcile::preview_load(config, options.force)
            .await
            .map_err(|e| SetupError::Preview(Box::new(e)))?;
        if let Some(why) = load_refusal(&preview) {
            return Err(SetupError::LoadRefused {
                why,
                preview: Box::new(preview),
            });
        }
    }
    let client = store.client();
    let mut report = SetupReport::default();
    let installed = installed_versions(client).await?;
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
    let client = store.client();
    grant_roles(client, &config.roles).await?;
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
    // pg2dns's own tables travel in the stream: pg2dns.rr, and the control
    // table, which is how a pause is exact (publications made by earlier
    // versions lack it, and one a DBA created for the sources lacks both).
    // And the zones table (zones as data, followed like the control table).
    for table in ["rr", "control", "zones"] {
        let published = client
            .query_opt(
                "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = 'pg2dns' AND tablename = $2",
                &[publication, &table],
            )
            .await
            .map_err(sql("cannot read pg_publication_tables"))?
            .is_some();
        if !published {
            client
                .batch_execute(&format!(
                    "ALTER PUBLICATION \"{publication}\" ADD TABLE pg2dns.{table}"
                ))
                .await
                .map_err(sql("cannot add pg2dns's own tables to the publication"))?;
            info!(%publication, table, "pg2dns table added to the publication");
        }
    }
    // Each configured source's table travels in the stream too, and so do
    // the zones tables they reference (checked above).
    for (schema, table, source) in unpublished {
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION \"{publication}\" ADD TABLE {}.{}",
                quote_ident(&schema),
                quote_ident(&table)
            ))
            .await
            .map_err(|e| add_table_error(e, &source, publication))?;
        info!(%publication, table = %source, "source table added to the publication");
        report.sources_added.push(source);
    }
    report.truncate_triggers_missing = truncate_triggers(store.client(), config).await?;
    let recreate = options.recreate_slot && progress_before;
    if recreate && state == SlotState::Lost {
        // Its changes since pg2dns's progress are gone from the WAL (or
        // were never in the slot): a new slot and a load at its snapshot
        // replace them exactly.
        let old = store.slot_confirmed().await?;
        store
            .client()
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .map_err(sql(
                "cannot drop the lost slot (is a pg2dns run still attached to it?)",
            ))?;
        warn!(%slot, "lost replication slot dropped");
        report.slot_recreated = old.or(Some(Lsn::ZERO));
    } else if recreate {
        report.slot_recreated = Some(store.progress().await?);
    }
    if unloaded {
        store
            .client()
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .map_err(sql(
                "cannot drop the slot of a setup that did not finish its first load (is a pg2dns run attached to it?)",
            ))?;
        warn!(%slot, "the slot has no progress: a setup ended before its first load was done; the slot is made again and the tables are loaded at its point");
    }
    let mut exported = None;
    if store.slot_confirmed().await?.is_none() {
        // Over the replication protocol, to export the snapshot of the
        // slot's consistent point: what a first deployment loads.
        let snapshot = crate::replication::create_slot_exporting(
            &config.database,
            &slot,
            false,
            config.database.plugin,
        )
        .await
        .map_err(|e| SetupError::Slot(Box::new(e)))?;
        report.slot_created = true;
        info!(%slot, lsn = %snapshot.lsn, "replication slot created");
        // A setup ended here (SIGTERM, kill -9) leaves a slot without a
        // load: the next setup makes it again (see `unloaded_slot`).
        crate::failpoint::hit("setup-after-slot");
        exported = Some(snapshot);
    }
    let slot_at = store.slot_confirmed().await?.unwrap_or(Lsn::ZERO);
    if !store.has_progress().await? || recreate {
        // A new instance (or one whose slot was lost). What the tables hold
        // at the slot's consistent point is loaded into DNS and the row
        // state now; the stream takes over from there. Its progress starts
        // where its slot does, so that a slot dropped and re-created later
        // is noticed.
        if let Some(snapshot) = &exported {
            match crate::reconcile::load_at(config, &mut store, &snapshot.name, options.force).await
            {
                Ok(load) if load.exit_code() == 0 => {
                    info!(rows = load.rows, "the tables as of the new slot are in DNS");
                    report.loaded = Some(load.rows);
                    report.load = Some(load);
                }
                Ok(load) => {
                    warn!(summary = %anstream::adapter::strip_str(&load.human()), "the first load did not bring every zone in line");
                    report.load_problem = Some(finish_hint(&load));
                    report.load = Some(load);
                }
                Err(e) => {
                    let e = crate::error::chain(&e);
                    warn!(error = %e, "the first load failed; run `pg2dns reconcile --apply`");
                    report.load_problem = Some(format!(
                        "{e}; finish with `pg2dns reconcile --apply` (it pauses a running service)"
                    ));
                }
            }
        }
        store.set_progress(slot_at).await?;
        if recreate {
            // A service halted by the lost slot goes on from the new one.
            let halted = store
                .client()
                .query_opt(
                    "SELECT 1 FROM pg2dns.mode WHERE slot = $1 AND mode = 'halted'",
                    &[&slot],
                )
                .await
                .map_err(sql("cannot read pg2dns.mode"))?
                .is_some();
            if halted {
                store
                    .client()
                    .query_one("SELECT pg2dns.resume($1)", &[&slot])
                    .await
                    .map_err(sql("cannot call pg2dns.resume()"))?;
                report.resumed = true;
            }
        }
    } else {
        let progress = store.progress().await?;
        if slot_at > progress {
            report.gap = Some((progress, slot_at));
            if options.accept_gap {
                store.set_progress(slot_at).await?;
                report.gap_accepted = true;
                warn!(%slot, %progress, %slot_at, "gap accepted: pg2dns streams from the slot's position");
            } else {
                warn!(%slot, %progress, %slot_at, "the slot starts after pg2dns's progress: the changes in between were never streamed; run setup --recreate-slot (or resynchronise the zones, then setup --accept-gap)");
            }
        }
    }
    Ok(report)
}

/// Puts pg2dns's TRUNCATE trigger on each partition of a partitioned
/// source table (a TRUNCATE of one partition alone publishes nothing:
/// docs/sources.md, "DDL on source tables"), and records each source
/// table's OID and partitions for the next session start to compare when
/// none is recorded yet. Returns the SQL a table owner runs for each
/// partition this role could not put the trigger on.
async fn truncate_triggers(
    client: &tokio_postgres::Client,
    config: &Config,
) -> Result<Vec<String>, StoreError> {
    let tables: Vec<String> = crate::pipeline::mappings(config)
        .iter()
        .map(|m| m.source().to_owned())
        .collect();
    let mut found = Vec::new();
    let mut oids = Vec::new();
    for table in &tables {
        if let Some(oid) = crate::relations::oid_of(client, table).await? {
            found.push(table.as_str());
            oids.push(oid);
        }
    }
    let refused = crate::relations::install_truncate_triggers(client, &oids).await?;
    // The owner's CREATE TRIGGER names pg2dns.truncate_partition(): it
    // needs to look the function up (nothing of pg2dns's tables is granted
    // with it).
    let mut owners: Vec<&str> = refused.iter().map(|r| r.owner.as_str()).collect();
    owners.sort_unstable();
    owners.dedup();
    for owner in owners {
        if let Err(e) = client
            .batch_execute(&format!("GRANT USAGE ON SCHEMA pg2dns TO {owner}"))
            .await
        {
            warn!(%owner, error = %e, "cannot grant USAGE on schema pg2dns to the partition's owner, which its CREATE TRIGGER needs: a superuser runs it");
        }
    }
    crate::relations::record_new(client, &config.database.slot, &found, &oids).await?;
    Ok(refused.into_iter().map(|r| r.statement).collect())
}

/// Per zone the load left out of line: why, and the command that finishes.
fn finish_hint(load: &Report) -> String {
    let mut lines = Vec::new();
    for z in &load.zones {
        let zone = &z.zone;
        if let Some(e) = &z.error {
            lines.push(format!("zone {zone}: {}; fix it, then finish with `pg2dns reconcile --apply --zone {zone}`", crate::error::chain(e)));
        } else if let Some(v) = &z.verify_refused {
            lines.push(format!("zone {zone}: not loaded: its verifier `{}` {} on the zone as loaded; fix the rows or the verifier, then finish with `pg2dns reconcile --apply --zone {zone}`", v.command, v.reason));
        } else if z.refused_unowned {
            lines.push(format!("zone {zone}: not loaded: it holds {} record(s) pg2dns never published that the load would delete; review with `pg2dns reconcile --zone {zone}`, then finish with `pg2dns reconcile --apply --zone {zone}`", z.unowned_count));
        } else if z.refused_by_threshold {
            lines.push(format!("zone {zone}: not loaded: past the safety threshold; finish with `pg2dns reconcile --apply --force --zone {zone}`"));
        } else if z.in_sync_after == Some(false) {
            lines.push(format!("zone {zone}: still differs after the load; finish with `pg2dns reconcile --apply --zone {zone}`"));
        }
    }
    lines.join("\n")
}

/// Refuses sources whose key is not unique: two rows with one key would
/// replace and delete each other's records.
async fn refuse_keys_not_unique(
    client: &tokio_postgres::Client,
    config: &Config,
) -> Result<(), SetupError> {
    let problems = crate::check::key_problems(client, config).await?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SetupError::KeyNotUnique(problems))
    }
}

/// Why a source table could not be added to the publication: a role that
/// does not own it (and the publication) gets the way out; anything else
/// is reported as it is.
fn add_table_error(e: tokio_postgres::Error, table: &str, publication: &str) -> SetupError {
    if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        SetupError::NotOwner {
            table: table.to_owned(),
            publication: publication.to_owned(),
            source: e,
        }
    } else {
        sql("cannot add a source table to the publication (does it exist?)")(e).into()
    }
}

/// Grants the `[roles]` what README's "Roles and grants" says each needs.
/// GRANT is idempotent, so this runs on every setup and covers objects a
/// newer schema version added.
async fn grant_roles(
    client: &tokio_postgres::Client,
    roles: &crate::config::Roles,
) -> Result<(), SetupError> {
    const OPERATOR: &str = "GRANT USAGE ON SCHEMA pg2dns TO {role}; \
         GRANT EXECUTE ON FUNCTION pg2dns.pause(text, text), pg2dns.resume(text, pg_lsn), \
             pg2dns.allow_mass_delete(text, pg_lsn), pg2dns.mode_of(text) TO {role}; \
         GRANT SELECT ON pg2dns.status TO {role}";
    const WRITER: &str = "GRANT USAGE ON SCHEMA pg2dns TO {role}; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON pg2dns.rr TO {role}; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON pg2dns.zones TO {role}; \
         GRANT USAGE ON SEQUENCE pg2dns.rr_id_seq TO {role}";
    let grants = roles
        .operators
        .iter()
        .map(|r| (r, OPERATOR, "the operator's rights"))
        .chain(
            roles
                .writers
                .iter()
                .map(|r| (r, WRITER, "the writer's rights on pg2dns.rr")),
        );
    for (role, statements, what) in grants {
        client
            .batch_execute(&statements.replace("{role}", &quote_ident(role)))
            .await
            .map_err(|source| SetupError::Grant {
                role: role.clone(),
                what,
                source,
            })?;
        info!(%role, what, "granted");
    }
    Ok(())
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
        // A negative TTL is as unreadable as a record that does not parse
        // (never TTL 0): left out with a warning.
        let stored_ttl: i32 = r.get(6);
        let Ok(ttl) = u32::try_from(stored_ttl) else {
            warn!(owner = %owner, rtype = %rtype, ttl = stored_ttl, "a version 1 row state record has a negative TTL; left out");
            continue;
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema files are sent as they are, in the client encoding UTF8,
    /// which PostgreSQL converts to the database's encoding: a character
    /// that encoding lacks (LATIN1 has no `…`) fails `setup`. ASCII converts
    /// to every server encoding.
    #[test]
    fn every_schema_file_is_pure_ascii() {
        for (version, text) in SCHEMA {
            if let Some((line, _)) = text.lines().enumerate().find(|(_, line)| !line.is_ascii()) {
                panic!(
                    "sql file of schema version {version} has a non-ASCII character on line {}",
                    line + 1
                );
            }
        }
    }

    #[test]
    fn a_first_load_runs_for_a_new_slot_without_progress_or_a_recreated_one() {
        let plain = SetupOptions::default();
        let recreate = SetupOptions {
            recreate_slot: true,
            ..SetupOptions::default()
        };
        assert!(loads(&SlotState::Missing, false, &plain));
        // A slot gone while pg2dns has progress is a gap, not a first load…
        assert!(!loads(&SlotState::Missing, true, &plain));
        // …unless the operator asks for a new slot and a load.
        assert!(loads(&SlotState::Missing, true, &recreate));
        assert!(loads(&SlotState::Lost, true, &recreate));
        assert!(!loads(&SlotState::Lost, true, &plain));
        assert!(!loads(&SlotState::Usable("reserved".into()), true, &plain));
    }

    #[test]
    fn an_identity_problem_names_the_alter_table_to_run() {
        let p = IdentityProblem {
            table: "\"public\".\"hosts\"".into(),
            identity: "n".into(),
        };
        let text = p.to_string();
        assert!(text.contains("replica identity NOTHING"), "{text}");
        assert!(
            text.contains("ALTER TABLE \"public\".\"hosts\" REPLICA IDENTITY FULL"),
            "{text}"
        );
    }
}
