//! Which table each source follows: by OID, not by name, so that DDL on a
//! source table never drops its changes in silence.
//!
//! # Why
//!
//! pgoutput names a table in its Relation message as the table was named
//! when the change was made (decoding reads the catalog as of that point of
//! the WAL), and with it the table's OID, which a rename keeps: "The
//! Relation message ... Relation ID (Int32): OID of the relation"
//! (PostgreSQL, "Logical Replication Message Formats"). Matching changes to
//! sources by name alone made `ALTER TABLE … RENAME` and `ALTER SCHEMA …
//! RENAME` stop a source's publication without a word.
//!
//! At the start of every session (and so after SIGHUP and after a resume),
//! each source table must exist and be in the publication; pg2dns notes its
//! OID. In the stream, a change whose table is not a source by name, or a
//! source's name under another OID, is resolved against the catalog as it
//! is *now*:
//!
//! | change's table                               | now in the catalog                         | pg2dns                     |
//! |----------------------------------------------|--------------------------------------------|----------------------------|
//! | a source's name and OID at the session start | —                                          | publishes                  |
//! | any name, OID of a source's table            | that table has the configured name          | publishes (renamed back, or changed under an older name) |
//! | a source's name, another OID                 | the name's table has this OID               | halts: dropped and created again since the session started |
//! | a source's name, another OID                 | the name's table has another OID or none    | publishes (an earlier table of that name) |
//! | another name, OID of a source's table at the start | the table has another name           | halts: renamed (table or schema) |
//! | a table no source maps                       | in the publication                         | halts: unmapped table      |
//! | a table no source maps                       | not in the publication (any more)          | ignored, with a warning    |
//!
//! Every halt happens before the change is batched, so nothing from its
//! transaction on is confirmed: after the fix, `pg2dns resume` replays it.
//!
//! `DROP TABLE` and `ALTER PUBLICATION … DROP TABLE` put nothing in the
//! stream (PostgreSQL just stops sending the table's changes), so a
//! streaming session also checks its tables every [`CHECK_EVERY`], when a
//! frame arrives (a keepalive at least every `wal_sender_timeout / 2`).

use tokio_postgres::Client;

use pg2dns_decoder::lsn::Lsn;

use crate::store::{sql, StoreError};

/// What is wrong with a source's table or the publication's tables.
#[derive(Debug, thiserror::Error)]
pub enum RelationProblem {
    /// A source's table does not exist.
    #[error("source {source_name}: its table does not exist{}", renamed_to(.unmapped))]
    Missing {
        /// The source (its configured table).
        source_name: String,
        /// Tables of the publication no source maps (a rename target?).
        unmapped: Vec<String>,
    },
    /// A source's table is not in the publication, so PostgreSQL does not
    /// send its changes.
    #[error("source {source_name}: its table is not in publication {publication} (ALTER PUBLICATION … DROP TABLE?), so its changes do not reach pg2dns")]
    NotPublished {
        /// The source.
        source_name: String,
        /// The publication.
        publication: String,
    },
    /// A source's table was renamed (table or schema) while pg2dns streamed.
    #[error("source {source_name}: its table was renamed to {now} (ALTER TABLE … RENAME or ALTER SCHEMA … RENAME) before the transaction at LSN {lsn}, which changes it")]
    Renamed {
        /// The source (the configured name).
        source_name: String,
        /// The table's name now.
        now: String,
        /// The commit LSN of the first change under the new name.
        lsn: Lsn,
    },
    /// A source's table was dropped and created again while pg2dns streamed.
    #[error("source {source_name}: its table was dropped and created again (OID {before} → {now}) before the transaction at LSN {lsn}; DROP TABLE sends no deletes, so the records of the dropped table's rows are still in DNS")]
    Recreated {
        /// The source.
        source_name: String,
        /// The OID at the session start.
        before: u32,
        /// The OID now.
        now: u32,
        /// The commit LSN of the first change of the new table.
        lsn: Lsn,
    },
    /// Partitions were attached to or detached from a source's table while
    /// pg2dns streamed: PostgreSQL sends no rows for that.
    #[error("source {source_name}: {changes} (ALTER TABLE … ATTACH or DETACH PARTITION); PostgreSQL sends no rows for that, so DNS does not show it")]
    Partitions {
        /// The source.
        source_name: String,
        /// What changed, e.g. `partition app.hosts_red detached`.
        changes: String,
    },
    /// A partition of a source's table was truncated: under
    /// `publish_via_partition_root` PostgreSQL publishes nothing for it;
    /// pg2dns's trigger on the partition said so in the stream.
    #[error("source {source_name}: its partition {partition} was truncated (TRUNCATE of one partition) in the transaction at LSN {lsn}; PostgreSQL publishes no deletes for that, so the records of its rows are still in DNS")]
    TruncatedPartition {
        /// The source.
        source_name: String,
        /// The partition, as the trigger named it.
        partition: String,
        /// The commit LSN of the truncating transaction.
        lsn: Lsn,
    },
    /// A source's table was dropped and created again while no pg2dns ran
    /// (the OID recorded when pg2dns last ran differs).
    #[error("source {source_name}: its table was dropped and created again while pg2dns was stopped (OID {before} → {now}); DROP TABLE sends no deletes, so the records of the dropped table's rows are still in DNS")]
    RecreatedWhileStopped {
        /// The source.
        source_name: String,
        /// The OID recorded when pg2dns last ran.
        before: u32,
        /// The OID now.
        now: u32,
    },
    /// Partitions were attached to or detached from a source's table while
    /// no pg2dns ran (the partitions recorded when pg2dns last ran differ).
    #[error("source {source_name}: {changes} while pg2dns was stopped (ALTER TABLE … ATTACH or DETACH PARTITION); PostgreSQL sends no rows for that, so DNS does not show it")]
    PartitionsWhileStopped {
        /// The source.
        source_name: String,
        /// What changed, e.g. `partition app.hosts_red detached`.
        changes: String,
    },
    /// A table of the publication that no source maps changed.
    #[error("table {table} is in the publication but no source maps it; its change in the transaction at LSN {lsn} would be lost")]
    Unmapped {
        /// The table, as the change names it.
        table: String,
        /// The commit LSN.
        lsn: Lsn,
    },
}

fn renamed_to(unmapped: &[String]) -> String {
    if unmapped.is_empty() {
        " (renamed, or dropped?)".into()
    } else {
        format!(
            " (renamed? the publication holds {}, which no source maps)",
            unmapped.join(", ")
        )
    }
}

impl RelationProblem {
    /// What the operator does about it.
    pub fn hint(&self) -> String {
        match self {
            RelationProblem::Missing { source_name, .. } | RelationProblem::Renamed { source_name, .. } => format!(
                "rename the table back to {source_name} (ALTER TABLE … RENAME TO, or ALTER SCHEMA … RENAME TO), then `pg2dns resume`: the changes made under the other name are published, nothing is lost. Pointing the source's `table` at the new name instead makes it a new source whose row state starts empty (run `pg2dns reconcile --apply` after). If the table was dropped, remove the source and remove its records with `pg2dns reconcile --apply`"
            ),
            RelationProblem::NotPublished { source_name, publication } => format!(
                "add it back (`ALTER PUBLICATION \"{publication}\" ADD TABLE {source_name}`, or `pg2dns setup`), then `pg2dns resume` and `pg2dns reconcile --apply`: changes made while it was out of the publication were never sent by PostgreSQL"
            ),
            RelationProblem::Recreated { lsn, .. } => format!(
                "nothing from the transaction at {lsn} on was sent. `pg2dns resume` follows the new table from there; then `pg2dns reconcile --apply` removes the dropped rows' records"
            ),
            RelationProblem::TruncatedPartition { lsn, .. } => format!(
                "run `pg2dns reconcile --apply`, which removes the truncated rows' records (and sets the row state to match), then `pg2dns resume`: the transaction at {lsn} and everything after it are replayed, and this TRUNCATE passes"
            ),
            RelationProblem::RecreatedWhileStopped { .. } | RelationProblem::PartitionsWhileStopped { .. } => "run `pg2dns resume`, which records the tables as they are now and publishes what the slot still holds, then `pg2dns reconcile --apply`, which brings DNS in line with the tables (in this order: changes still in the slot from before the DDL, replayed after a reconcile, would bring back records the DDL removed)".to_owned(),
            RelationProblem::Partitions { .. } => "run `pg2dns reconcile --apply`, which publishes the rows of attached partitions and removes the records of detached ones (and sets the row state to match), then `pg2dns resume`".to_owned(),
            RelationProblem::Unmapped { table, .. } => format!(
                "configure a source for {table} (or, if it is a renamed source table, rename it back), or remove it from the publication (ALTER PUBLICATION … DROP TABLE {table}), then `pg2dns resume`"
            ),
        }
    }
}

/// An error of the start check: a problem, or the catalog unreadable.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A source's table is wrong.
    #[error(transparent)]
    Problem(#[from] RelationProblem),
    /// The catalog could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How often a streaming session checks its source tables.
pub const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// What a change's table is, for [`resolve`].
#[derive(Debug, Clone)]
pub struct Seen<'a> {
    /// The table's OID, as the Relation message gives it.
    pub oid: u32,
    /// Its name as the Relation message gives it (`schema.table`).
    pub name: &'a str,
    /// The source whose configured table has that name, if any.
    pub by_name: Option<usize>,
}

/// What the catalog says now, for [`resolve`].
#[derive(Debug, Clone, Default)]
pub struct Now {
    /// The source whose configured name is now the table with this OID.
    pub named: Option<usize>,
    /// The table's name now, and whether the publication holds it.
    pub table: Option<(String, bool)>,
}

/// Which source a change belongs to, decided by the table of the module
/// documentation: `Ok(None)` to ignore it (logged by the caller).
/// `start` holds each source's OID at the session start, `sources` their
/// names.
pub fn resolve(
    seen: &Seen<'_>,
    start: &[u32],
    now: Now,
    sources: &[String],
    lsn: Lsn,
) -> Result<Option<usize>, RelationProblem> {
    let name = |i: usize| sources.get(i).cloned().unwrap_or_default();
    match (now.named, seen.by_name) {
        (Some(i), Some(j)) if i == j => Err(RelationProblem::Recreated {
            source_name: name(i),
            before: start.get(i).copied().unwrap_or_default(),
            now: seen.oid,
            lsn,
        }),
        // The table has its configured name again (or the change was made
        // under an earlier name).
        (Some(i), _) => Ok(Some(i)),
        // An earlier table of that name, dropped since.
        (None, Some(j)) => Ok(Some(j)),
        (None, None) => {
            if let Some(i) = start.iter().position(|o| *o == seen.oid) {
                return Err(RelationProblem::Renamed {
                    source_name: name(i),
                    now: now.table.map_or_else(|| seen.name.to_owned(), |(n, _)| n),
                    lsn,
                });
            }
            if now.table.is_some_and(|(_, published)| published) {
                return Err(RelationProblem::Unmapped {
                    table: seen.name.to_owned(),
                    lsn,
                });
            }
            Ok(None)
        }
    }
}

impl From<CheckError> for crate::RunError {
    fn from(e: CheckError) -> crate::RunError {
        match e {
            CheckError::Problem(p) => crate::RunError::Relation(p),
            CheckError::Store(e) => e.into(),
        }
    }
}

/// `schema.table` split at its first dot (`pg2dns.rr`, `app.hosts`).
fn split(qualified: &str) -> (&str, &str) {
    qualified.split_once('.').unwrap_or(("public", qualified))
}

/// The OID of the table called `qualified` now, if there is one.
pub async fn oid_of(client: &Client, qualified: &str) -> Result<Option<u32>, StoreError> {
    let (schema, table) = split(qualified);
    Ok(client
        .query_opt(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &table],
        )
        .await
        .map_err(sql("cannot read pg_class"))?
        .map(|r| r.get(0)))
}

/// The name of the table with this OID now, and whether the publication
/// holds it (or its partitioned root), if it exists.
pub async fn table_now(
    client: &Client,
    publication: &str,
    oid: u32,
) -> Result<Option<(String, bool)>, StoreError> {
    Ok(client
        .query_opt(
            "SELECT n.nspname || '.' || c.relname, \
                    EXISTS (SELECT 1 FROM pg_publication_tables p \
                             WHERE p.pubname = $1 AND p.schemaname = n.nspname AND p.tablename = c.relname) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $2",
            &[&publication, &oid],
        )
        .await
        .map_err(sql("cannot read pg_class"))?
        .map(|r| (r.get(0), r.get(1))))
}

/// The partitions (at every level) of each table in `oids`, by its index:
/// OID and name.
pub async fn partitions(client: &Client, oids: &[u32]) -> Result<Vec<PartitionSet>, StoreError> {
    let mut out = vec![std::collections::BTreeSet::new(); oids.len()];
    let rows = client
        .query(
            "SELECT (s.i - 1)::int4, p.relid::oid, p.relid::regclass::text \
             FROM unnest($1::oid[]) WITH ORDINALITY AS s(oid, i), pg_partition_tree(s.oid) AS p \
             WHERE p.relid <> s.oid",
            &[&oids],
        )
        .await
        .map_err(sql("cannot read pg_partition_tree"))?;
    for r in rows {
        let i: i32 = r.get(0);
        if let Some(set) = out.get_mut(i as usize) {
            set.insert((r.get(1), r.get(2)));
        }
    }
    Ok(out)
}

/// The partitions of a table: OID and name.
pub type PartitionSet = std::collections::BTreeSet<(u32, String)>;

/// What changed between two partition sets of a source, if anything. A
/// partition is the same partition under another name (compared by OID).
pub fn partitions_changed(
    source_name: &str,
    before: &PartitionSet,
    now: &PartitionSet,
) -> Option<RelationProblem> {
    let has = |set: &PartitionSet, oid: u32| set.iter().any(|(o, _)| *o == oid);
    let mut changes: Vec<String> = now
        .iter()
        .filter(|(o, _)| !has(before, *o))
        .map(|(_, n)| format!("partition {n} attached"))
        .collect();
    changes.extend(
        before
            .iter()
            .filter(|(o, _)| !has(now, *o))
            .map(|(_, n)| format!("partition {n} detached")),
    );
    (!changes.is_empty()).then(|| RelationProblem::Partitions {
        source_name: source_name.to_owned(),
        changes: changes.join(", "),
    })
}

/// The trigger `pg2dns setup` puts on each partition of a partitioned
/// source table (`sql/011_truncate_partition.sql`).
pub const TRUNCATE_TRIGGER: &str = "pg2dns_truncate_partition";

/// The prefix of pg2dns's logical messages.
pub const MESSAGE_PREFIX: &str = "pg2dns";

/// The partition a pg2dns logical message says was truncated (its OID, if
/// given, and its name); `None` for any other message.
pub fn truncated_partition(prefix: &str, content: &[u8]) -> Option<(Option<u32>, String)> {
    if prefix != MESSAGE_PREFIX {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(content).ok()?;
    let name = v.get("truncate_partition")?.as_str()?.to_owned();
    let oid = v
        .get("oid")
        .and_then(serde_json::Value::as_u64)
        .and_then(|o| u32::try_from(o).ok());
    Some((oid, name))
}

/// The `CREATE TRIGGER` that makes a TRUNCATE of `partition` (quoted,
/// qualified) reach pg2dns.
pub fn truncate_trigger_sql(partition: &str) -> String {
    format!(
        "CREATE TRIGGER {TRUNCATE_TRIGGER} AFTER TRUNCATE ON {partition} \
         FOR EACH STATEMENT EXECUTE FUNCTION pg2dns.truncate_partition()"
    )
}

/// The partitions of the tables in `oids` (at every level) that lack
/// pg2dns's TRUNCATE trigger, as quoted qualified names.
pub async fn partitions_without_trigger(
    client: &Client,
    oids: &[u32],
) -> Result<Vec<String>, StoreError> {
    Ok(without_trigger(client, oids)
        .await?
        .into_iter()
        .map(|(p, _)| p)
        .collect())
}

/// [`partitions_without_trigger`], each with its owner (quoted).
async fn without_trigger(
    client: &Client,
    oids: &[u32],
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(client
        .query(
            "SELECT DISTINCT quote_ident(n.nspname) || '.' || quote_ident(c.relname), \
                    quote_ident(pg_get_userbyid(c.relowner)) \
             FROM unnest($1::oid[]) AS s(oid), pg_partition_tree(s.oid) AS p \
             JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE p.relid <> s.oid AND NOT EXISTS \
                 (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = p.relid AND t.tgname = $2) \
             ORDER BY 1",
            &[&oids, &TRUNCATE_TRIGGER],
        )
        .await
        .map_err(sql("cannot read pg_trigger"))?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// A partition this role could not put pg2dns's TRUNCATE trigger on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerRefused {
    /// The partition's owner (quoted).
    pub owner: String,
    /// The `CREATE TRIGGER` its owner runs.
    pub statement: String,
}

/// Puts pg2dns's TRUNCATE trigger on every partition of the tables in
/// `oids` that lacks it. Returns each one it could not (the role does not
/// own it), with the SQL its owner runs.
pub async fn install_truncate_triggers(
    client: &Client,
    oids: &[u32],
) -> Result<Vec<TriggerRefused>, StoreError> {
    let has_function = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'pg2dns' AND p.proname = 'truncate_partition')",
            &[],
        )
        .await
        .map_err(sql("cannot read pg_proc"))?
        .get::<_, bool>(0);
    if !has_function {
        return Ok(Vec::new());
    }
    let mut refused = Vec::new();
    for (partition, owner) in without_trigger(client, oids).await? {
        let statement = truncate_trigger_sql(&partition);
        match client.batch_execute(&statement).await {
            Ok(()) => {
                tracing::info!(%partition, "TRUNCATE trigger installed on the partition")
            }
            Err(e) => {
                tracing::warn!(%partition, %owner, error = %e, sql = %statement, "cannot put pg2dns's TRUNCATE trigger on the partition (a TRUNCATE of it alone would not reach pg2dns): its owner must run the SQL (`pg2dns setup` prints it)");
                refused.push(TriggerRefused {
                    owner,
                    statement: format!("{statement};"),
                });
            }
        }
    }
    Ok(refused)
}

/// A source table's state as pg2dns last accepted it (see
/// [`settle_recorded`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Recorded {
    oid: u32,
    partitions: PartitionSet,
}

fn partition_set(oids: Vec<u32>, names: Vec<String>) -> PartitionSet {
    oids.into_iter().zip(names).collect()
}

fn partition_columns(set: &PartitionSet) -> (Vec<u32>, Vec<String>) {
    set.iter().cloned().unzip()
}

/// Whether schema version 11 (`pg2dns.source_tables`) is installed.
async fn has_recorded_state(client: &Client) -> Result<bool, StoreError> {
    Ok(client
        .query_one(
            "SELECT count(*) = 2 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'pg2dns' AND c.relname IN ('source_tables', 'truncate_halts')",
            &[],
        )
        .await
        .map_err(sql("cannot read pg_class"))?
        .get(0))
}

/// Records, for setup, the state of each source table that has none
/// recorded yet (a state recorded before is left for the next session
/// start to compare).
pub async fn record_new(
    client: &Client,
    slot: &str,
    tables: &[&str],
    oids: &[u32],
) -> Result<(), StoreError> {
    if !has_recorded_state(client).await? {
        return Ok(());
    }
    let parts = partitions(client, oids).await?;
    for ((table, oid), set) in tables.iter().zip(oids).zip(&parts) {
        let (p_oids, p_names) = partition_columns(set);
        client
            .execute(
                "INSERT INTO pg2dns.source_tables (slot, source, table_oid, partition_oids, partition_names) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[&slot, table, oid, &p_oids, &p_names],
            )
            .await
            .map_err(sql("cannot write pg2dns.source_tables"))?;
    }
    Ok(())
}

/// Records `now` as the new state of `source` that a halt named: the first
/// `pg2dns resume` after this accepts it (see [`settle_recorded`]).
pub async fn record_pending(
    client: &Client,
    slot: &str,
    source: &str,
    oid: u32,
    now: &PartitionSet,
) -> Result<(), StoreError> {
    if !has_recorded_state(client).await? {
        return Ok(());
    }
    let (p_oids, p_names) = partition_columns(now);
    client
        .execute(
            "UPDATE pg2dns.source_tables SET pending_oid = $3, pending_partition_oids = $4, \
                    pending_partition_names = $5, \
                    pending_since = (SELECT coalesce(max(id), 0) FROM pg2dns.control WHERE slot = $1) \
             WHERE slot = $1 AND source = $2",
            &[&slot, &source, &oid, &p_oids, &p_names],
        )
        .await
        .map_err(sql("cannot write pg2dns.source_tables"))?;
    Ok(())
}

/// At a session start, once the checks passed: compares each source
/// table's OID and partitions (`oids`, `parts`) with those recorded when
/// pg2dns last ran for `slot`. DDL made while no pg2dns ran (`DROP TABLE`
/// and `CREATE TABLE` again, `ATTACH` or `DETACH PARTITION`) halts naming
/// it; the new state is recorded as pending, and the first `pg2dns resume`
/// after the halt accepts it. Without a difference, the state now is
/// recorded.
pub async fn settle_recorded(
    client: &Client,
    slot: &str,
    tables: &[&str],
    oids: &[u32],
    parts: &[PartitionSet],
) -> Result<(), CheckError> {
    if !has_recorded_state(client).await? {
        tracing::warn!("pg2dns.source_tables is missing: DDL on source tables while pg2dns is stopped goes unnoticed (run `pg2dns setup` for schema version 11)");
        return Ok(());
    }
    let mut first = None;
    for ((table, oid), set) in tables.iter().zip(oids).zip(parts) {
        let now = Recorded {
            oid: *oid,
            partitions: set.clone(),
        };
        let row = client
            .query_opt(
                "SELECT table_oid, partition_oids, partition_names, pending_oid, \
                        pending_partition_oids, pending_partition_names, \
                        EXISTS (SELECT 1 FROM pg2dns.control c WHERE c.slot = $1 \
                                 AND c.action = 'resume' AND c.id > pending_since) \
                 FROM pg2dns.source_tables WHERE slot = $1 AND source = $2",
                &[&slot, table],
            )
            .await
            .map_err(sql("cannot read pg2dns.source_tables"))?;
        let problem = row.as_ref().and_then(|r| {
            let before = Recorded {
                oid: r.get(0),
                partitions: partition_set(r.get(1), r.get(2)),
            };
            if before.oid != now.oid {
                Some(RelationProblem::RecreatedWhileStopped {
                    source_name: (*table).to_owned(),
                    before: before.oid,
                    now: now.oid,
                })
            } else {
                partitions_changed(table, &before.partitions, &now.partitions).map(|p| match p {
                    RelationProblem::Partitions {
                        source_name,
                        changes,
                    } => RelationProblem::PartitionsWhileStopped {
                        source_name,
                        changes,
                    },
                    other => other,
                })
            }
        });
        let accepted = match (&row, &problem) {
            (_, None) => true,
            (Some(r), Some(_)) => {
                let pending = r.get::<_, Option<u32>>(3).map(|oid| Recorded {
                    oid,
                    partitions: partition_set(
                        r.get::<_, Option<Vec<u32>>>(4).unwrap_or_default(),
                        r.get::<_, Option<Vec<String>>>(5).unwrap_or_default(),
                    ),
                });
                let resumed: bool = r.get(6);
                let same = |a: &Recorded, b: &Recorded| {
                    a.oid == b.oid
                        && a.partitions
                            .iter()
                            .map(|(o, _)| o)
                            .eq(b.partitions.iter().map(|(o, _)| o))
                };
                let named = pending.as_ref().is_some_and(|p| same(p, &now));
                if !named {
                    record_pending(client, slot, table, now.oid, &now.partitions).await?;
                }
                named && resumed
            }
            (None, Some(_)) => true,
        };
        if accepted {
            if let Some(p) = &problem {
                tracing::info!(problem = %p, "accepted after `pg2dns resume`");
            }
            let (p_oids, p_names) = partition_columns(&now.partitions);
            client
                .execute(
                    "INSERT INTO pg2dns.source_tables (slot, source, table_oid, partition_oids, partition_names) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (slot, source) DO UPDATE SET \
                         table_oid = EXCLUDED.table_oid, partition_oids = EXCLUDED.partition_oids, \
                         partition_names = EXCLUDED.partition_names, pending_oid = NULL, \
                         pending_partition_oids = NULL, pending_partition_names = NULL, \
                         pending_since = NULL, recorded = now()",
                    &[&slot, table, oid, &p_oids, &p_names],
                )
                .await
                .map_err(sql("cannot write pg2dns.source_tables"))?;
        } else if first.is_none() {
            first = problem;
        }
    }
    if let Some(p) = first {
        return Err(p.into());
    }
    let tables: Vec<String> = tables.iter().map(|t| (*t).to_owned()).collect();
    client
        .execute(
            "DELETE FROM pg2dns.source_tables WHERE slot = $1 AND NOT (source = ANY($2))",
            &[&slot, &tables],
        )
        .await
        .map_err(sql("cannot write pg2dns.source_tables"))?;
    Ok(())
}

/// Whether pg2dns halted on the TRUNCATE of `partition` in the transaction
/// at `lsn` before and `pg2dns resume` was asked for since: then the
/// replayed transaction passes. Otherwise records the halt (the first
/// resume after it lets the transaction pass) and returns false.
pub async fn truncate_passes(
    client: &Client,
    slot: &str,
    lsn: Lsn,
    partition: &str,
) -> Result<bool, StoreError> {
    if !has_recorded_state(client).await? {
        return Ok(false);
    }
    let lsn = lsn.to_string();
    let resumed = client
        .query_opt(
            "SELECT EXISTS (SELECT 1 FROM pg2dns.control c WHERE c.slot = h.slot \
                     AND c.action = 'resume' AND c.id > h.since) \
             FROM pg2dns.truncate_halts h \
             WHERE h.slot = $1 AND h.lsn = $2::text::pg_lsn AND h.partition = $3",
            &[&slot, &lsn, &partition],
        )
        .await
        .map_err(sql("cannot read pg2dns.truncate_halts"))?
        .map(|r| r.get::<_, bool>(0));
    match resumed {
        Some(true) => Ok(true),
        Some(false) => Ok(false),
        None => {
            client
                .execute(
                    "INSERT INTO pg2dns.truncate_halts (slot, lsn, partition, since) \
                     VALUES ($1, $2::text::pg_lsn, $3, \
                             (SELECT coalesce(max(id), 0) FROM pg2dns.control WHERE slot = $1)) \
                     ON CONFLICT DO NOTHING",
                    &[&slot, &lsn, &partition],
                )
                .await
                .map_err(sql("cannot write pg2dns.truncate_halts"))?;
            Ok(false)
        }
    }
}

/// The tables of the publication, as `schema.table`.
async fn published(client: &Client, publication: &str) -> Result<Vec<String>, StoreError> {
    Ok(client
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1",
            &[&publication],
        )
        .await
        .map_err(sql("cannot read pg_publication_tables"))?
        .into_iter()
        .map(|r| r.get(0))
        .collect())
}

/// Checks that every source's table (`tables`, by source index, qualified)
/// exists and is in the publication; returns their OIDs. At the start of a
/// session (`at_start`), tables of the publication that no source maps are
/// logged (a change to one halts the stream). While streaming, this runs
/// every [`CHECK_EVERY`]: `DROP TABLE` and `ALTER PUBLICATION … DROP TABLE`
/// put nothing in the stream.
pub async fn check_tables(
    client: &Client,
    publication: &str,
    tables: &[&str],
    at_start: bool,
) -> Result<Vec<u32>, CheckError> {
    let in_publication = published(client, publication).await?;
    let unmapped: Vec<String> = in_publication
        .iter()
        .filter(|t| {
            !matches!(t.as_str(), "pg2dns.control" | "pg2dns.zones")
                && !tables.contains(&t.as_str())
        })
        .cloned()
        .collect();
    let mut oids = Vec::with_capacity(tables.len());
    for table in tables {
        let Some(oid) = oid_of(client, table).await? else {
            return Err(RelationProblem::Missing {
                source_name: (*table).to_owned(),
                unmapped,
            }
            .into());
        };
        if !in_publication.iter().any(|t| t == table) {
            return Err(RelationProblem::NotPublished {
                source_name: (*table).to_owned(),
                publication: publication.to_owned(),
            }
            .into());
        }
        oids.push(oid);
    }
    for table in unmapped.iter().filter(|_| at_start) {
        tracing::warn!(%table, %publication, "a table of the publication that no source maps: a change to it halts the stream (configure a source for it, or drop it from the publication)");
    }
    Ok(oids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Vec<String> {
        vec!["pg2dns.rr".into(), "app.hosts".into()]
    }

    fn lsn() -> Lsn {
        "0/16B3748".parse().unwrap()
    }

    #[test]
    fn a_table_renamed_back_is_followed_under_its_old_name() {
        let seen = Seen {
            oid: 20,
            name: "app.hosts_renamed",
            by_name: None,
        };
        let now = Now {
            named: Some(1),
            table: None,
        };
        assert_eq!(
            resolve(&seen, &[10, 20], now, &sources(), lsn()).unwrap(),
            Some(1)
        );
    }

    #[test]
    fn a_table_renamed_since_the_start_halts_naming_its_new_name() {
        let seen = Seen {
            oid: 20,
            name: "app.hosts_renamed",
            by_name: None,
        };
        let now = Now {
            named: None,
            table: Some(("app.hosts_renamed".into(), true)),
        };
        let e = resolve(&seen, &[10, 20], now, &sources(), lsn()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "source app.hosts: its table was renamed to app.hosts_renamed (ALTER TABLE … RENAME or ALTER SCHEMA … RENAME) before the transaction at LSN 0/16B3748, which changes it"
        );
        assert!(e.hint().starts_with("rename the table back to app.hosts"));
    }

    #[test]
    fn a_table_created_again_under_the_name_halts_and_an_earlier_one_is_followed() {
        let seen = Seen {
            oid: 30,
            name: "app.hosts",
            by_name: Some(1),
        };
        let now = Now {
            named: Some(1),
            table: Some(("app.hosts".into(), true)),
        };
        let e = resolve(&seen, &[10, 20], now, &sources(), lsn()).unwrap_err();
        assert!(
            matches!(
                e,
                RelationProblem::Recreated {
                    before: 20,
                    now: 30,
                    ..
                }
            ),
            "{e}"
        );
        // After the resume the new table is the start's; the dropped one's
        // changes still replaying belong to the source.
        let old = Seen {
            oid: 20,
            name: "app.hosts",
            by_name: Some(1),
        };
        let now = Now {
            named: None,
            table: None,
        };
        assert_eq!(
            resolve(&old, &[10, 30], now, &sources(), lsn()).unwrap(),
            Some(1)
        );
    }

    #[test]
    fn attached_and_detached_partitions_are_named() {
        let set = |parts: &[(u32, &str)]| {
            parts
                .iter()
                .map(|(o, n)| (*o, (*n).to_owned()))
                .collect::<std::collections::BTreeSet<_>>()
        };
        let before = set(&[(1, "app.hosts_red"), (2, "app.hosts_blue")]);
        assert!(partitions_changed("app.hosts", &before, &before).is_none());
        let now = set(&[(2, "app.hosts_blue"), (3, "app.hosts_green")]);
        let e = partitions_changed("app.hosts", &before, &now).unwrap();
        assert_eq!(
            e.to_string(),
            "source app.hosts: partition app.hosts_green attached, partition app.hosts_red detached (ALTER TABLE … ATTACH or DETACH PARTITION); PostgreSQL sends no rows for that, so DNS does not show it"
        );
        assert!(e.hint().starts_with("run `pg2dns reconcile --apply`"));
    }

    #[test]
    fn only_pg2dns_truncate_messages_name_a_partition() {
        let body = br#"{"truncate_partition": "app.hosts_blue", "oid": 16410}"#;
        assert_eq!(
            truncated_partition("pg2dns", body),
            Some((Some(16410), "app.hosts_blue".to_owned()))
        );
        assert_eq!(
            truncated_partition("pg2dns", br#"{"truncate_partition": "app.x"}"#),
            Some((None, "app.x".to_owned()))
        );
        assert_eq!(truncated_partition("other", body), None);
        assert_eq!(truncated_partition("pg2dns", b"not json"), None);
        assert_eq!(truncated_partition("pg2dns", br#"{"pause": 1}"#), None);
        assert_eq!(
            truncated_partition("pg2dns", br#"{"truncate_partition": 5}"#),
            None
        );
    }

    #[test]
    fn a_renamed_partition_is_no_attach_or_detach() {
        let before: PartitionSet = [(1, "app.hosts_red".to_owned())].into_iter().collect();
        let now: PartitionSet = [(1, "app.hosts_rouge".to_owned())].into_iter().collect();
        assert!(partitions_changed("app.hosts", &before, &now).is_none());
    }

    #[test]
    fn halts_on_ddl_while_stopped_name_it_and_say_resume_before_reconcile() {
        let e = RelationProblem::RecreatedWhileStopped {
            source_name: "app.hosts".into(),
            before: 10,
            now: 30,
        };
        assert!(e
            .to_string()
            .starts_with("source app.hosts: its table was dropped and created again while pg2dns was stopped (OID 10 → 30)"));
        let hint = e.hint();
        assert!(
            hint.find("pg2dns resume").unwrap() < hint.find("reconcile --apply").unwrap(),
            "{hint}"
        );
        let e = RelationProblem::TruncatedPartition {
            source_name: "app.hosts".into(),
            partition: "app.hosts_blue".into(),
            lsn: lsn(),
        };
        assert!(e.to_string().contains(
            "its partition app.hosts_blue was truncated (TRUNCATE of one partition) in the transaction at LSN 0/16B3748"
        ));
        assert!(e.hint().starts_with("run `pg2dns reconcile --apply`"));
    }

    #[test]
    fn an_unmapped_table_halts_while_published_and_is_ignored_once_it_is_not() {
        let seen = Seen {
            oid: 40,
            name: "app.other",
            by_name: None,
        };
        let now = Now {
            named: None,
            table: Some(("app.other".into(), true)),
        };
        let e = resolve(&seen, &[10, 20], now, &sources(), lsn()).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("table app.other is in the publication but no source maps it"));
        let now = Now {
            named: None,
            table: Some(("app.other".into(), false)),
        };
        assert_eq!(
            resolve(&seen, &[10, 20], now, &sources(), lsn()).unwrap(),
            None
        );
        let dropped = Now::default();
        assert_eq!(
            resolve(&seen, &[10, 20], dropped, &sources(), lsn()).unwrap(),
            None
        );
    }
}
