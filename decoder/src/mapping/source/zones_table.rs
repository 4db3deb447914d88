//! Zones through a referenced table: a source whose rows carry a zone's key
//! (`records.domain_id`) rather than its name, the name being in a row of
//! another table (`domains(id, name)`), as PowerDNS's SQL back-ends keep
//! them.
//!
//! pg2dns follows that zones table too. Its rows are remembered as
//! [`ZoneRefs`] (key → zone name), which the pipeline keeps durable beside
//! the row state and updates in commit order, so a record row is always
//! resolved against the zones table as of its own transaction.
//!
//! ```text
//!  domains ──change──▶ ZonesTable::follow ──▶ ZoneRefs (id → "example.test")
//!                                                  │
//!  records ──change──▶ SourceMapping::records ─────┘ zone of domain_id
//! ```
//!
//! What a change of the zones table does:
//! - insert: the zone can be referenced from then on;
//! - delete: it is forgotten; a record row changed later that still
//!   references it is refused ([`ReferenceError::NoZoneRow`]). Records
//!   already published stay until their own rows change or go (a
//!   `ON DELETE CASCADE` deletes them in the same transaction);
//! - a new name (not only a different case or final dot): the zones row is
//!   refused with [`ReferenceError::Renamed`], recorded and logged. Record
//!   rows changed from then on go to the new zone; records published before
//!   stay in the old zone until their row changes or `pg2dns reconcile
//!   --apply` moves them. Nothing is ever published into a zone other than
//!   the one the row's zones row names at its commit.

use std::collections::BTreeMap;

use crate::plan::{Refusal, Refused};
use crate::records::{ZoneName, Zones};
use crate::row::{Cell, RowView};
use crate::txn::{ChangeKind, RowChange};

use super::super::{Mapping, RowKey, Wanted};

/// Why a row's zone reference cannot be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The row references a zones-table row pg2dns does not know.
    #[error("column {column:?} holds {value:?}, which is the key of no row of {table} (the zones table it references)")]
    NoZoneRow {
        /// The referencing column.
        column: String,
        /// Its value.
        value: String,
        /// The zones table.
        table: String,
    },
    /// A zones-table row's name changed.
    #[error("row {key} of zones table {table} renamed zone {from:?} to {to:?}: records already published for rows that reference it stay in {from:?} until each such row changes (run `pg2dns reconcile --apply` to move them now); rows changed from now on go to {to:?}")]
    Renamed {
        /// The zones table.
        table: String,
        /// The row's key.
        key: String,
        /// The name before.
        from: String,
        /// The name now.
        to: String,
    },
}

/// The rows of the followed zones tables: per table, key → zone name (as
/// the table holds it, with or without final dot).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZoneRefs {
    tables: BTreeMap<String, BTreeMap<String, String>>,
}

impl ZoneRefs {
    /// The zone name of `key` in `table`.
    pub fn get(&self, table: &str, key: &str) -> Option<&str> {
        self.tables.get(table)?.get(key).map(String::as_str)
    }

    /// Sets (`Some`) or forgets (`None`) the name of a key.
    pub fn set(&mut self, table: &str, key: &str, name: Option<&str>) {
        match name {
            Some(n) => {
                self.tables
                    .entry(table.to_owned())
                    .or_default()
                    .insert(key.to_owned(), n.to_owned());
            }
            None => {
                if let Some(t) = self.tables.get_mut(table) {
                    t.remove(key);
                }
            }
        }
    }

    /// Replaces everything known of `table`.
    pub fn replace(&mut self, table: &str, rows: BTreeMap<String, String>) {
        self.tables.insert(table.to_owned(), rows);
    }

    /// How many rows of `table` are known.
    pub fn count(&self, table: &str) -> usize {
        self.tables.get(table).map_or(0, BTreeMap::len)
    }

    /// The rows of `table`, by key.
    pub fn rows(&self, table: &str) -> impl Iterator<Item = (&str, &str)> {
        self.tables
            .get(table)
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// One edit of the zone references: `name` is `None` when the row is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefEdit {
    /// The zones table.
    pub table: String,
    /// The row's key.
    pub key: String,
    /// Its zone name now.
    pub name: Option<String>,
}

/// A zones table that sources reference: `table(key, name)`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ZonesTable {
    /// The table, `schema.table`.
    pub table: String,
    /// Its key column (what the sources' column holds).
    pub key: String,
    /// Its column holding the zone's name.
    pub name: String,
}

impl ZonesTable {
    fn split(&self) -> (&str, &str) {
        self.table.split_once('.').unwrap_or(("", &self.table))
    }

    /// The table's schema.
    pub fn schema(&self) -> &str {
        self.split().0
    }

    /// The table's name within its schema.
    pub fn table_name(&self) -> &str {
        self.split().1
    }

    /// Updates `refs` with one change of the table, in commit order, and
    /// says what changed (for the durable copy).
    pub fn follow(&self, change: &RowChange, refs: &mut ZoneRefs) -> Vec<RefEdit> {
        let mut out = Vec::new();
        let mut edit = |key: String, name: Option<&str>| {
            refs.set(&self.table, &key, name);
            out.push(RefEdit {
                table: self.table.clone(),
                key,
                name: name.map(str::to_owned),
            });
        };
        let old_key = change.old.as_ref().and_then(|r| self.key(r));
        match (change.kind, &change.new) {
            (ChangeKind::Delete, _) | (_, None) => {
                if let Some(k) = old_key {
                    edit(k.0, None);
                }
            }
            (_, Some(row)) => {
                let Some(key) = self.key(row) else {
                    return out;
                };
                if let Some(old) = old_key.filter(|o| *o != key) {
                    edit(old.0, None);
                }
                match row.cell(&self.name) {
                    Some(Cell::Text(name)) => edit(key.0, Some(name)),
                    // An unchanged TOAST name (a name is never that long):
                    // keep what is known.
                    Some(Cell::UnchangedToast) => {}
                    _ => edit(key.0, None),
                }
            }
        }
        out
    }
}

/// Two spellings of one zone (case, final dot) are the same zone.
fn same_zone(a: &str, b: &str) -> bool {
    match (ZoneName::parse(a), ZoneName::parse(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

impl Mapping for ZonesTable {
    fn source(&self) -> &str {
        &self.table
    }

    fn matches(&self, namespace: &str, table: &str) -> bool {
        (namespace, table) == self.split()
    }

    fn key(&self, row: &dyn RowView) -> Option<RowKey> {
        match row.cell(&self.key)? {
            Cell::Text(t) => Some(RowKey(t.to_owned())),
            _ => None,
        }
    }

    /// A zones row publishes nothing itself; a rename is refused (and so
    /// recorded) against what `zones` knew before this change.
    fn records(&self, row: &dyn RowView, zones: &Zones) -> Result<Vec<Wanted>, Refused> {
        let (Some(key), Some(Cell::Text(to))) = (self.key(row), row.cell(&self.name)) else {
            return Ok(Vec::new());
        };
        match zones.refs().get(&self.table, &key.0) {
            Some(from) if !same_zone(from, to) => Err(Refused {
                zone: None,
                owner: None,
                reason: Box::new(Refusal::Reference(ReferenceError::Renamed {
                    table: self.table.clone(),
                    key: key.0,
                    from: from.to_owned(),
                    to: to.to_owned(),
                })),
            }),
            _ => Ok(Vec::new()),
        }
    }

    fn zones_table(&self) -> Option<&ZonesTable> {
        Some(self)
    }
}
