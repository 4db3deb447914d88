//! The table layout a source needs, checked against each Relation message.
//!
//! pgoutput describes a table's columns (name and type OID) in a Relation
//! message before the first change that uses a layout, and again after the
//! layout changed: "Every DML message contains a relation OID, identifying
//! the publisher's relation that was acted on. Before the first DML message
//! for a given relation OID, a Relation message will be sent, describing
//! the schema of that relation. Subsequently, a new Relation message will be
//! sent if the relation's definition has changed since the last Relation
//! message was sent for it" (PostgreSQL, "Logical Streaming Replication
//! Protocol"). Columns are found by name, so added columns and a new order
//! change nothing; but a configured column that disappeared, or whose type
//! can no longer mean what the configuration says (an address column that
//! became an integer), would make every later row publish wrong data or
//! nothing. That is the operator's to decide: the stream halts, naming the
//! source, the column and the LSN.

use crate::mapping::source::{Data, Filter, SourceSpec, Template, TypeFrom, ZoneFrom};
use crate::pgoutput::Relation;

/// What a configured column must be able to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnKind {
    /// Any type: only its text is used (key columns, template pieces).
    Any,
    /// Text: a name, a type mnemonic, record data.
    Text,
    /// A number (a TTL), or text holding one.
    Integer,
    /// An IP address (`inet`, `cidr`), or text holding one.
    Address,
    /// A boolean (a filter), or text holding one.
    Boolean,
}

impl std::fmt::Display for ColumnKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ColumnKind::Any => "any type",
            ColumnKind::Text => "text",
            ColumnKind::Integer => "an integer or text",
            ColumnKind::Address => "inet, cidr or text",
            ColumnKind::Boolean => "boolean or text",
        })
    }
}

// Built-in type OIDs (pg_type.dat), stable across PostgreSQL versions.
const BOOL: u32 = 16;
const NAME: u32 = 19;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const TEXT: u32 = 25;
const CIDR: u32 = 650;
const INET: u32 = 869;
const BPCHAR: u32 = 1042;
const VARCHAR: u32 = 1043;
const NUMERIC: u32 = 1700;
/// The first OID of objects users create (`FirstNormalObjectId`): domains
/// and extension types such as `citext` are not judged.
const FIRST_USER_OID: u32 = 16_384;

impl ColumnKind {
    /// Whether a column of type `oid` can hold it.
    pub fn accepts(self, oid: u32) -> bool {
        let text = matches!(oid, TEXT | VARCHAR | BPCHAR | NAME);
        oid >= FIRST_USER_OID
            || match self {
                ColumnKind::Any => true,
                ColumnKind::Text => text,
                ColumnKind::Integer => text || matches!(oid, INT2 | INT4 | INT8 | NUMERIC),
                ColumnKind::Address => text || matches!(oid, INET | CIDR),
                ColumnKind::Boolean => text || oid == BOOL,
            }
    }
}

/// A column a source reads, and what it must hold.
pub type Needed = (String, ColumnKind);

/// What `pg2dns.rr` reads.
pub fn rr_columns() -> Vec<Needed> {
    [
        ("id", ColumnKind::Any),
        ("owner", ColumnKind::Text),
        ("ttl", ColumnKind::Integer),
        ("class", ColumnKind::Text),
        ("type", ColumnKind::Text),
        ("rdata", ColumnKind::Text),
    ]
    .into_iter()
    .map(|(c, k)| (c.to_owned(), k))
    .collect()
}

/// What a zones table (`[source.zones_table]`) is read for: its key, and
/// the zone's name.
pub fn zones_table_columns(table: &crate::mapping::source::zones_table::ZonesTable) -> Vec<Needed> {
    vec![
        (table.key.clone(), ColumnKind::Any),
        (table.name.clone(), ColumnKind::Text),
    ]
}

/// What a declarative source reads: a column standing alone for a name or
/// data must be text; the pieces of a longer template may be anything.
pub fn source_columns(spec: &SourceSpec) -> Vec<Needed> {
    let mut out: Vec<Needed> = Vec::new();
    let mut push = |c: &str, k: ColumnKind| {
        match out.iter_mut().find(|(name, _)| name == c) {
            // The stricter need wins (Any is the loosest).
            Some((_, kind)) if *kind == ColumnKind::Any => *kind = k,
            Some(_) => {}
            None => out.push((c.to_owned(), k)),
        }
    };
    let template = |t: &Template, push: &mut dyn FnMut(&str, ColumnKind)| match t.single_column() {
        Some(c) => push(c, ColumnKind::Text),
        None => t.columns().for_each(|c| push(c, ColumnKind::Any)),
    };
    for k in &spec.key {
        push(k, ColumnKind::Any);
    }
    template(&spec.owner, &mut push);
    match &spec.zone {
        ZoneFrom::Column(c) => push(c, ColumnKind::Text),
        ZoneFrom::Table { column, .. } => push(column, ColumnKind::Any),
        ZoneFrom::Owner => {}
    }
    if let Some(c) = &spec.ttl.column {
        push(c, ColumnKind::Integer);
    }
    match &spec.data {
        Data::Record {
            rtype,
            rdata,
            by_type,
        } => {
            if let TypeFrom::Column(c) = rtype {
                push(c, ColumnKind::Text);
            }
            template(rdata, &mut push);
            for (_, t) in by_type {
                template(t, &mut push);
            }
        }
        Data::Address { column, .. } => push(column, ColumnKind::Address),
    }
    for f in &spec.filters {
        match f {
            Filter::IsTrue(c) | Filter::IsFalse(c) => push(c, ColumnKind::Boolean),
            Filter::NonEmpty(c) | Filter::OneOf(c, _) => push(c, ColumnKind::Any),
        }
    }
    out
}

/// Why a table's layout no longer fits its source.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchemaProblem {
    /// A configured column is gone.
    #[error("column {column:?} is no longer in the table")]
    Missing {
        /// The column.
        column: String,
    },
    /// A configured column's type changed to one it cannot be read as.
    #[error("column {column:?} now has type OID {type_oid}, which cannot be read as {wanted}")]
    Retyped {
        /// The column.
        column: String,
        /// Its type now (`pg_type.oid`).
        type_oid: u32,
        /// What the source needs.
        wanted: ColumnKind,
    },
}

/// The first configured column the relation lacks or cannot hold.
pub fn check(needed: &[Needed], relation: &Relation) -> Result<(), SchemaProblem> {
    for (column, kind) in needed {
        let Some(info) = relation.columns.iter().find(|c| &c.name == column) else {
            return Err(SchemaProblem::Missing {
                column: column.clone(),
            });
        };
        if !kind.accepts(info.type_oid) {
            return Err(SchemaProblem::Retyped {
                column: column.clone(),
                type_oid: info.type_oid,
                wanted: *kind,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::{ColumnInfo, ReplicaIdentity};

    fn relation(columns: &[(&str, u32)]) -> Relation {
        Relation {
            oid: 1,
            namespace: "pg2dns".into(),
            name: "rr".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: columns
                .iter()
                .map(|(name, type_oid)| ColumnInfo {
                    is_key: *name == "id",
                    name: (*name).into(),
                    type_oid: *type_oid,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    const RR: &[(&str, u32)] = &[
        ("id", INT8),
        ("owner", TEXT),
        ("ttl", INT4),
        ("class", TEXT),
        ("type", TEXT),
        ("rdata", TEXT),
    ];

    #[test]
    fn an_added_column_or_a_new_order_is_fine() {
        let mut columns = RR.to_vec();
        columns.reverse();
        columns.push(("note", 1_114));
        assert_eq!(check(&rr_columns(), &relation(&columns)), Ok(()));
    }

    #[test]
    fn a_dropped_or_incompatibly_retyped_column_is_named() {
        let dropped: Vec<_> = RR.iter().copied().filter(|(c, _)| *c != "rdata").collect();
        assert_eq!(
            check(&rr_columns(), &relation(&dropped)),
            Err(SchemaProblem::Missing {
                column: "rdata".into()
            })
        );
        let retyped: Vec<_> = RR
            .iter()
            .map(|&(c, t)| if c == "ttl" { (c, BOOL) } else { (c, t) })
            .collect();
        assert!(matches!(
            check(&rr_columns(), &relation(&retyped)),
            Err(SchemaProblem::Retyped { column, type_oid: BOOL, .. }) if column == "ttl"
        ));
        // A TTL held as text, or an owner of a domain type, still reads.
        let loose: Vec<_> = RR
            .iter()
            .map(|&(c, t)| match c {
                "ttl" => (c, VARCHAR),
                "owner" => (c, 70_000),
                _ => (c, t),
            })
            .collect();
        assert_eq!(check(&rr_columns(), &relation(&loose)), Ok(()));
    }
}
