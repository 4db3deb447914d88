//! `pg2dns check-config` against the database: `wal_level = logical`, a
//! role that may replicate, the `[roles]` exist, every source table and
//! zones table exists, every column a source reads is there with a type it
//! can use, the key is unique, the replica identity carries the key
//! columns, and the role may read each table and add it to the publication.
//! The zones' primaries are checked in [`servers`].
//!
//! Why the replica identity matters: "DELETE … contains the old values of
//! the columns of the replica identity" and an UPDATE carries the old key
//! only when it changed (pgoutput documentation, and `REPLICA IDENTITY` in
//! `ALTER TABLE`). A key column outside it arrives NULL in a DELETE, so
//! pg2dns cannot tell which row went: the stream would halt on the first
//! one. Saying so before the first DELETE is the point of this check.

mod servers;

pub use servers::{check_servers, check_zone, check_zones};

use pg2dns_decoder::mapping::source::{SourceMapping, ZoneFrom};
use pg2dns_decoder::mapping::Mapping;
use pg2dns_decoder::schema::{self, ColumnKind};
use tokio_postgres::Client;

use crate::config::Config;
use crate::store::{sql, Store, StoreError};

/// A column as the catalog describes it.
struct Column {
    name: String,
    /// `format_type` of its type (`inet`, `integer`, `text`…).
    type_name: String,
    /// `pg_type.typcategory`: B boolean, N numeric, S string, I network…
    category: String,
    /// A generated column (`GENERATED ALWAYS AS … STORED`).
    generated: bool,
}

/// A table as the catalog describes it.
struct Table {
    columns: Vec<Column>,
    /// `relreplident`: d default, n nothing, f full, i index.
    identity: String,
    /// The columns of the replica identity's index (primary key under
    /// default), empty when there is none.
    identity_columns: Vec<String>,
}

/// What one column is used for, so its type can be judged.
#[derive(Clone, Copy, PartialEq)]
enum Use {
    Text,
    Address,
    Boolean,
    Ttl,
}

/// Reads a table from the catalog; `None` if there is no such table.
async fn describe(client: &Client, schema: &str, name: &str) -> Result<Option<Table>, StoreError> {
    let Some(row) = client
        .query_opt(
            "SELECT c.oid, c.relreplident::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &name],
        )
        .await
        .map_err(sql("cannot read pg_class"))?
    else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let identity: String = row.get(1);
    let columns = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typcategory::text, \
                    a.attgenerated <> '' \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(sql("cannot read pg_attribute"))?
        .iter()
        .map(|r| Column {
            name: r.get(0),
            type_name: r.get(1),
            category: r.get(2),
            generated: r.get(3),
        })
        .collect();
    let identity_columns = client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
             WHERE i.indrelid = $1 AND CASE $2 WHEN 'd' THEN i.indisprimary WHEN 'i' THEN i.indisreplident ELSE false END",
            &[&oid, &identity],
        )
        .await
        .map_err(sql("cannot read pg_index"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(Some(Table {
        columns,
        identity,
        identity_columns,
    }))
}

/// The problems of one table: missing columns, unusable types, key columns
/// outside the replica identity.
fn judge(
    qualified: &str,
    table: Option<&Table>,
    uses: &[(&str, Use)],
    key: &[String],
) -> Vec<String> {
    let Some(table) = table else {
        return vec![format!("table {qualified} does not exist")];
    };
    let mut out = Vec::new();
    for (name, usage) in uses {
        let Some(c) = table.columns.iter().find(|c| c.name == *name) else {
            out.push(format!("{qualified} has no column {name:?}"));
            continue;
        };
        // pgoutput leaves generated columns out of its relations and rows
        // (PostgreSQL 12 to 17): the stream would halt at the first change,
        // saying the column is gone.
        if c.generated {
            out.push(format!(
                "{qualified}.{name} is a generated column, which logical replication does not send: \
                 read the columns it is computed from instead (a template such as \"{{host}}.{{domain}}\")"
            ));
            continue;
        }
        let ok = match usage {
            // Every type has a text form, but bytea's is hex, not a name.
            Use::Text => c.type_name != "bytea",
            Use::Address => {
                matches!(c.type_name.as_str(), "inet" | "cidr" | "text") || c.category == "S"
            }
            Use::Boolean => c.category == "B",
            Use::Ttl => {
                matches!(c.type_name.as_str(), "smallint" | "integer" | "bigint")
                    || c.category == "S"
            }
        };
        if !ok {
            let wanted = match usage {
                Use::Text => "a type with a text form (not bytea)",
                Use::Address => "inet (or text holding an address)",
                Use::Boolean => "boolean",
                Use::Ttl => "an integer",
            };
            out.push(format!(
                "{qualified}.{name} is {}, but it needs {wanted}",
                c.type_name
            ));
        }
    }
    let identity_ok = |k: &String| table.identity == "f" || table.identity_columns.contains(k);
    let outside: Vec<&String> = key.iter().filter(|k| !identity_ok(k)).collect();
    if !outside.is_empty() {
        let what = match (table.identity.as_str(), table.identity_columns.is_empty()) {
            ("n", _) => "its replica identity is NOTHING".to_owned(),
            ("d", true) => "it has no primary key (REPLICA IDENTITY DEFAULT)".to_owned(),
            _ => format!(
                "its replica identity holds ({})",
                table.identity_columns.join(", ")
            ),
        };
        let keys: Vec<&str> = outside.iter().map(|k| k.as_str()).collect();
        out.push(format!(
            "{qualified}: key column(s) {} are not in the replica identity ({what}), so a DELETE cannot say which row went; set `key` to the primary key's columns, or run `ALTER TABLE {qualified} REPLICA IDENTITY FULL`",
            keys.join(", ")
        ));
    }
    out
}

/// Each column a source reads, with what it is used for: the stream's own
/// list ([`schema::source_columns`]), judged here on the catalog's type
/// names rather than on type OIDs.
fn uses(source: &SourceMapping) -> Vec<(String, Use)> {
    schema::source_columns(source.spec())
        .into_iter()
        .map(|(c, kind)| {
            let usage = match kind {
                ColumnKind::Any | ColumnKind::Text => Use::Text,
                ColumnKind::Integer => Use::Ttl,
                ColumnKind::Address => Use::Address,
                ColumnKind::Boolean => Use::Boolean,
            };
            (c, usage)
        })
        .collect()
}

/// Checks the cluster's settings, the role, and every source table and
/// zones table; the problems found, each a sentence naming the table and
/// column (or the setting) and the fix.
pub async fn check_database(config: &Config) -> Result<Vec<String>, StoreError> {
    let store = Store::connect(&config.database).await?;
    let client = store.client();
    let mut problems = cluster_problems(client).await?;
    problems.extend(missing_roles(client, config).await?);
    problems.extend(access_problems(client, config).await?);
    for source in &config.sources {
        let table = describe(client, source.schema(), source.table()).await?;
        let used = uses(source);
        let used: Vec<(&str, Use)> = used.iter().map(|(c, u)| (c.as_str(), *u)).collect();
        problems.extend(judge(
            source.source(),
            table.as_ref(),
            &used,
            &source.spec().key,
        ));
        if let ZoneFrom::Table { table: zt, .. } = &source.spec().zone {
            let referenced = describe(client, zt.schema(), zt.table_name()).await?;
            problems.extend(judge(
                &zt.table,
                referenced.as_ref(),
                &[(zt.key.as_str(), Use::Text), (zt.name.as_str(), Use::Text)],
                std::slice::from_ref(&zt.key),
            ));
        }
    }
    problems.extend(key_problems(client, config).await?);
    problems.extend(truncate_trigger_problems(client, config).await?);
    let configured = config.database.plugin == crate::config::OutputPlugin::Pg2dns;
    problems.extend(output_plugin_problems(client, configured).await?);
    problems.dedup();
    Ok(problems)
}

/// The configuration with the zones of `pg2dns.zones` as a session would
/// follow them (so that their primaries are checked too), and a problem
/// for each row a session would refuse, or for the whole table when a
/// session would halt on it. Before `setup` there is no table: no zones.
/// A table the role may not read is a problem too (its zones go unchecked).
pub async fn with_table_zones(config: &Config) -> Result<(Config, Vec<String>), StoreError> {
    let mut store = Store::connect(&config.database).await?;
    let rows = match store.table_zones().await {
        Ok(rows) => rows,
        Err(e) => {
            return Ok((
                config.clone(),
                vec![format!(
                    "pg2dns.zones cannot be read, so the zones it lists are not checked: {}",
                    crate::error::chain(&e)
                )],
            ))
        }
    };
    if rows.is_empty() {
        return Ok((config.clone(), Vec::new()));
    }
    Ok(
        match config.with_table_zones(&rows, pg2dns_decoder::records::MAX_ZONES) {
            Ok((with, refused)) => {
                let problems = refused
                    .iter()
                    .map(|r| {
                        format!(
                            "pg2dns.zones: the row of zone {:?} (server {:?}) would not be followed: {}",
                            r.row.name, r.row.server, r.reason
                        )
                    })
                    .collect();
                (with, problems)
            }
            Err(e) => (
                config.clone(),
                vec![format!(
                    "pg2dns.zones: {}: the stream would halt on it",
                    crate::error::chain(&e)
                )],
            ),
        },
    )
}

/// Partitions of a source table without pg2dns's TRUNCATE trigger: a
/// TRUNCATE of one of them alone would publish nothing. Before `setup`
/// (no `pg2dns.truncate_partition()` yet, or the table not in the
/// publication yet), setup is what puts them there.
async fn truncate_trigger_problems(
    client: &Client,
    config: &Config,
) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let set_up: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'pg2dns' AND p.proname = 'truncate_partition')",
            &[],
        )
        .await
        .map_err(sql("cannot read pg_proc"))?
        .get(0);
    if !set_up {
        return Ok(out);
    }
    for mapping in crate::pipeline::mappings(config) {
        let table = mapping.source();
        let Some(oid) = crate::relations::oid_of(client, table).await? else {
            continue;
        };
        // A table setup has not added to the publication yet gets its
        // triggers with it.
        let publication = &config.database.publication;
        if !crate::relations::table_now(client, publication, oid)
            .await?
            .is_some_and(|(_, published)| published)
        {
            continue;
        }
        for partition in crate::relations::partitions_without_trigger(client, &[oid]).await? {
            out.push(format!(
                "source {table}: partition {partition} has no pg2dns TRUNCATE trigger, so a TRUNCATE of it alone would not reach pg2dns (PostgreSQL publishes nothing for it); run `pg2dns setup`, or as the partition's owner: {};",
                crate::relations::truncate_trigger_sql(&partition)
            ));
        }
    }
    Ok(out)
}

/// The library of the `pg2dns_plugin` extension, as `pg_recvlogical -P`,
/// a slot's plugin and `output_plugin_libraries` name it (docs/plugin.md).
pub const PLUGIN_LIBRARY: &str = "pg2dns_plugin";

/// Whether PostgreSQL lets roles decode with the extension's output plugin.
/// Debian's PostgreSQL 15.20+, 16.15+ and 17.11+ only load output plugins
/// listed in `output_plugin_libraries`, superusers included ("library … may
/// not be used as an output plugin"). It matters when the plugin is
/// `configured` for `pg2dns run`, or in use: a replication slot of the
/// plugin exists. A PostgreSQL without the setting allows every plugin.
/// Only superusers and members of `pg_read_all_settings` may read the
/// setting; for another role, that is the problem reported.
pub async fn output_plugin_problems(
    client: &Client,
    configured: bool,
) -> Result<Vec<String>, StoreError> {
    // The setting is readable only by superusers and pg_read_all_settings
    // (GUC_SUPERUSER_ONLY): read it only when it matters.
    let row = client
        .query_one(
            "SELECT (SELECT string_agg(slot_name::text, ', ' ORDER BY slot_name) \
                       FROM pg_replication_slots WHERE plugin = $1), \
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
                    OR pg_has_role(current_user, 'pg_read_all_settings', 'USAGE'), \
                    current_user::text",
            &[&PLUGIN_LIBRARY],
        )
        .await
        .map_err(sql("cannot read pg_replication_slots"))?;
    let (slots, may_read, role): (Option<String>, bool, String) =
        (row.get(0), row.get(1), row.get(2));
    if !configured && slots.is_none() {
        return Ok(Vec::new());
    }
    let why = match (configured, &slots) {
        (true, _) => "[database] plugin names the pg2dns_plugin output plugin".to_owned(),
        (false, Some(slots)) => format!("replication slot {slots} decodes with pg2dns_plugin"),
        (false, None) => unreachable!("returned above"),
    };
    if !may_read {
        return Ok(vec![format!(
            "{why}, and this role may not read output_plugin_libraries (superusers and pg_read_all_settings may) to check that PostgreSQL allows it: run `SHOW output_plugin_libraries` as a superuser, or `GRANT pg_read_all_settings TO {}`; docs/plugin.md",
            crate::setup::quote_ident(&role)
        )]);
    }
    let allowed: Option<String> = client
        .query_one(
            "SELECT current_setting('output_plugin_libraries', true)",
            &[],
        )
        .await
        .map_err(sql("cannot read output_plugin_libraries"))?
        .get(0);
    let Some(allowed) = allowed else {
        return Ok(Vec::new());
    };
    let listed: Vec<&str> = allowed
        .split(',')
        .map(|l| l.trim().trim_matches('"'))
        .filter(|l| !l.is_empty())
        .collect();
    if listed.contains(&PLUGIN_LIBRARY) {
        return Ok(Vec::new());
    }
    let mut wanted = listed.clone();
    wanted.push(PLUGIN_LIBRARY);
    Ok(vec![format!(
        "{why}, but output_plugin_libraries ({allowed:?}) does not allow it, so PostgreSQL refuses to decode with it: as a superuser run `ALTER SYSTEM SET output_plugin_libraries = {}` and `SELECT pg_reload_conf()` (or set `output_plugin_libraries = '{}'` in postgresql.conf and reload); docs/plugin.md",
        wanted.join(", "),
        wanted.join(", ")
    )])
}

/// The cluster-wide settings the stream needs: `wal_level = logical` and a
/// role that may replicate. Both make `setup` or the first `run` fail.
async fn cluster_problems(client: &Client) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let wal_level: String = client
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
        .map_err(sql("cannot read wal_level"))?
        .get(0);
    if wal_level != "logical" {
        out.push(format!(
            "wal_level is {wal_level}, but logical decoding needs logical: set `wal_level = logical` in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL"
        ));
    }
    let row = client
        .query_one(
            "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(sql("cannot read pg_roles"))?;
    let (role, replicates): (String, bool) = (row.get(0), row.get(1));
    if !replicates {
        out.push(format!(
            "role {role} may not replicate: run `ALTER ROLE {} REPLICATION` as a superuser (README, \"Roles and grants\")",
            crate::setup::quote_ident(&role)
        ));
    }
    Ok(out)
}

/// The `[roles]` that do not exist: `setup` would fail granting to them.
async fn missing_roles(client: &Client, config: &Config) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let named = (config.roles.operators.iter().map(|r| (r, "operators")))
        .chain(config.roles.writers.iter().map(|r| (r, "writers")));
    for (role, list) in named {
        let exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[role])
            .await
            .map_err(sql("cannot read pg_roles"))?
            .is_some();
        if !exists {
            out.push(format!(
                "role {role} of [roles] {list} does not exist, and setup grants to it: create it (`CREATE ROLE {}`) or remove it",
                crate::setup::quote_ident(role)
            ));
        }
    }
    Ok(out)
}

/// What the role may not do with the source and zones tables that setup,
/// run or reconcile will ask of it: read them, and (before they are in the
/// publication) add them to it, which PostgreSQL allows only a superuser or
/// the owner of the table (and of the publication).
async fn access_problems(client: &Client, config: &Config) -> Result<Vec<String>, StoreError> {
    let publication = &config.database.publication;
    let mut out = Vec::new();
    for (schema, table, qualified, _) in keyed_tables(config) {
        let Some(row) = client
            .query_opt(
                "SELECT current_user::text, has_table_privilege(c.oid, 'SELECT'), \
                        pg_has_role(c.relowner, 'USAGE') \
                            OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
                        EXISTS (SELECT 1 FROM pg_publication_tables p \
                                WHERE p.pubname = $3 AND p.schemaname = $1 AND p.tablename = $2) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&schema, &table, publication],
            )
            .await
            .map_err(sql("cannot read the privileges on a source table"))?
        else {
            continue;
        };
        let (role, reads, owns, published): (String, bool, bool, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let role = crate::setup::quote_ident(&role);
        if !reads {
            out.push(format!(
                "role {role} may not read {qualified}, which the first load and reconcile read: run `GRANT SELECT ON {qualified} TO {role}` (and USAGE on its schema) as its owner"
            ));
        }
        if !owns && !published {
            out.push(format!(
                "setup will stop at {qualified}: role {role} does not own it, so it may not add it to publication {publication}; once setup has created the publication, run `ALTER PUBLICATION \"{publication}\" ADD TABLE {qualified}` as a superuser and setup again (or have a superuser create the publication beforehand; README, \"Roles and grants\")"
            ));
        }
    }
    out.dedup();
    Ok(out)
}

/// The unique keys of a table: the key columns of each unique index that
/// is not partial, has no expression and whose columns are all NOT NULL
/// (the primary key among them). A NULL never equals another NULL, so a
/// unique index over a nullable column admits two rows with the same key.
async fn unique_keys(client: &Client, oid: u32) -> Result<Vec<Vec<String>>, StoreError> {
    Ok(client
        .query(
            "SELECT array_agg(a.attname::text ORDER BY k.n) FROM pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL \
               AND k.n <= i.indnkeyatts \
             GROUP BY i.indexrelid HAVING bool_and(a.attnotnull)",
            &[&oid],
        )
        .await
        .map_err(sql("cannot read pg_index"))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Why `key` does not name one row of `qualified`, if it does not: no
/// unique key of the table lies within it. Two rows with one key would
/// share one row state: the second would replace the first's records, and
/// deleting either would remove the other's.
fn not_unique(qualified: &str, key: &[String], unique: &[Vec<String>]) -> Option<String> {
    if unique
        .iter()
        .any(|index| index.iter().all(|c| key.contains(c)))
    {
        return None;
    }
    let key = key.join(", ");
    Some(format!(
        "key ({key}) of {qualified} is not unique: add a UNIQUE index on ({key}) over NOT NULL columns, or set `key` to the primary key's columns (two rows with one key would replace and delete each other's records)"
    ))
}

/// The tables whose key is not unique (sources and the zones tables they
/// reference), one sentence each; a table that does not exist is left to
/// the other checks. `setup` refuses to start on these, and so does `run`.
pub async fn key_problems(client: &Client, config: &Config) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    for (schema, table, qualified, key) in keyed_tables(config) {
        let Some(row) = client
            .query_opt(
                "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&schema, &table],
            )
            .await
            .map_err(sql("cannot read pg_class"))?
        else {
            continue;
        };
        let unique = unique_keys(client, row.get(0)).await?;
        out.extend(not_unique(&qualified, &key, &unique));
    }
    out.dedup();
    Ok(out)
}

/// Each source table and referenced zones table with its key columns.
fn keyed_tables(config: &Config) -> Vec<(String, String, String, Vec<String>)> {
    let mut out = Vec::new();
    for source in &config.sources {
        out.push((
            source.schema().to_owned(),
            source.table().to_owned(),
            source.source().to_owned(),
            source.spec().key.clone(),
        ));
        if let ZoneFrom::Table { table: zt, .. } = &source.spec().zone {
            out.push((
                zt.schema().to_owned(),
                zt.table_name().to_owned(),
                zt.table.clone(),
                vec![zt.key.clone()],
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::not_unique;

    fn cols(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_key_is_unique_when_a_unique_key_lies_within_it() {
        let pk = vec![cols(&["id"])];
        assert_eq!(not_unique("app.hosts", &cols(&["id"]), &pk), None);
        // A superset of a unique key is unique too.
        assert_eq!(not_unique("app.hosts", &cols(&["id", "vrf"]), &pk), None);
        let two = vec![cols(&["host", "vrf"])];
        assert_eq!(not_unique("app.hosts", &cols(&["vrf", "host"]), &two), None);
    }

    #[test]
    fn a_key_narrower_than_every_unique_key_is_named_with_the_fix() {
        let problem = not_unique("app.hosts", &cols(&["host"]), &[cols(&["host", "vrf"])]);
        let problem = problem.expect("host alone is not unique");
        assert!(
            problem
                .starts_with("key (host) of app.hosts is not unique: add a UNIQUE index on (host)"),
            "{problem}"
        );
        assert!(not_unique("app.hosts", &cols(&["host"]), &[]).is_some());
    }
}
