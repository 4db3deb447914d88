//! `pg2dns check-config` against the database: every source table and
//! zones table exists, every column a source reads is there with a type it
//! can use, and the replica identity carries the key columns.
//!
//! Why the replica identity matters: "DELETE … contains the old values of
//! the columns of the replica identity" and an UPDATE carries the old key
//! only when it changed (pgoutput documentation, and `REPLICA IDENTITY` in
//! `ALTER TABLE`). A key column outside it arrives NULL in a DELETE, so
//! pg2dns cannot tell which row went: the stream would halt on the first
//! one. Saying so before the first DELETE is the point of this check.

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

/// Checks every source table and zones table; the problems found, each a
/// sentence naming the table and column.
pub async fn check_database(config: &Config) -> Result<Vec<String>, StoreError> {
    let store = Store::connect(&config.database).await?;
    let client = store.client();
    let mut problems = Vec::new();
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
    problems.dedup();
    Ok(problems)
}
