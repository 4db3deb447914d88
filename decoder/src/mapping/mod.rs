//! Mappings: how a row of a source table becomes zero or more records.
//!
//! A mapping reads a row only through [`RowView`], so the stream and the
//! batch comparison (rows read with SQL from a snapshot) map rows alike. It
//! decides the row's key (what the row state is indexed by) and the records
//! the row wants, or refuses the row with a reason. It never sees the row
//! state: an unchanged TOAST value is answered with [`Wanted::FromState`],
//! which [`crate::plan`] resolves from the records the row had before.
//!
//! Under `REPLICA IDENTITY DEFAULT` a DELETE carries only the key columns and
//! an UPDATE no old row ("the old tuple is only sent if … the replica
//! identity columns changed", pgoutput documentation), so the key is all a
//! mapping may rely on for the old side of a change.

pub mod row_check;
pub mod source;

use std::fmt;

use crate::lsn::Lsn;
use crate::plan::{Refusal, Refused};
use crate::rdata::RType;
use crate::records::{self, Owner, Record, RecordError, ZoneId, Zones, MAX_TTL};
use crate::row::{Cell, RowView};
use crate::txn::{ChangeKind, RowChange};

/// A source row's identity: the text of its key columns.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey(pub String);

impl fmt::Display for RowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A record a row wants in a zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// The zone it goes to.
    pub zone: ZoneId,
    /// The record.
    pub record: Record,
}

/// What a row wants: a record, or the record of this type the row had
/// before with a new owner and TTL (its data column was an unchanged TOAST
/// value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// A complete record.
    Record(Desired),
    /// Take the data from the row state.
    FromState {
        /// The zone.
        zone: ZoneId,
        /// The owner.
        owner: Owner,
        /// The type.
        rtype: RType,
        /// The TTL.
        ttl: u32,
    },
}

/// A row's new image after a change: what it wants, or why it is refused.
/// A deleted row wants nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowUpdate {
    /// The row.
    pub key: RowKey,
    /// The commit LSN of its transaction.
    pub lsn: Lsn,
    /// The records it wants now, or why it cannot have any.
    pub image: Result<Vec<Wanted>, Refused>,
}

/// A change that cannot be mapped at all: the stream must stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// A change arrived without the key columns (a DELETE under `REPLICA
    /// IDENTITY NOTHING`, or a key column that is NULL).
    #[error("a {kind:?} of {table} at LSN {lsn} carries no key: the table needs REPLICA IDENTITY DEFAULT with a primary key, or FULL")]
    NoKey {
        /// The source table.
        table: String,
        /// The change.
        kind: ChangeKind,
        /// The transaction's commit LSN.
        lsn: Lsn,
    },
}

/// How rows of one table become records.
pub trait Mapping: Send + Sync {
    /// The source's name in row state and rejections (`pg2dns.rr`).
    fn source(&self) -> &str;
    /// Whether changes of `namespace.table` belong to this mapping.
    fn matches(&self, namespace: &str, table: &str) -> bool;
    /// The row's key, `None` if its key columns are missing or NULL.
    fn key(&self, row: &dyn RowView) -> Option<RowKey>;
    /// The records the row wants.
    fn records(&self, row: &dyn RowView, zones: &Zones) -> Result<Vec<Wanted>, Refused>;
    /// The zones table this mapping follows, if it is one: its changes
    /// also update [`Zones::refs`] (see [`source::zones_table`]).
    fn zones_table(&self) -> Option<&source::zones_table::ZonesTable> {
        None
    }
}

/// The row updates one change makes: a changed key is the old row leaving
/// and a new one arriving.
pub fn row_updates(
    mapping: &dyn Mapping,
    change: &RowChange,
    zones: &Zones,
) -> Result<Vec<RowUpdate>, MapError> {
    let lsn = change.final_lsn;
    let no_key = || MapError::NoKey {
        table: change.relation.qualified_name(),
        kind: change.kind,
        lsn,
    };
    let old_key = change.old.as_ref().map(|r| mapping.key(r));
    let mut out = Vec::with_capacity(1);
    match (change.kind, &change.new) {
        (ChangeKind::Delete, _) | (_, None) => {
            let key = old_key.flatten().ok_or_else(no_key)?;
            out.push(RowUpdate {
                key,
                lsn,
                image: Ok(Vec::new()),
            });
        }
        (_, Some(row)) => {
            let key = mapping.key(row).ok_or_else(no_key)?;
            if let Some(old) = old_key {
                let old = old.ok_or_else(no_key)?;
                if old != key {
                    out.push(RowUpdate {
                        key: old,
                        lsn,
                        image: Ok(Vec::new()),
                    });
                }
            }
            out.push(RowUpdate {
                key,
                lsn,
                image: mapping.records(row, zones),
            });
        }
    }
    Ok(out)
}

/// Reads a text column: NULL, a missing column and a non-text value are
/// refusals naming the column.
pub fn text<'r>(row: &'r dyn RowView, column: &str) -> Result<&'r str, Refusal> {
    match row.cell(column) {
        Some(Cell::Text(t)) => Ok(t),
        Some(Cell::Null) => Err(Refusal::Record(RecordError::Null(column.to_owned()))),
        Some(Cell::NotText) => Err(Refusal::NotText(column.to_owned())),
        Some(Cell::UnchangedToast) => Err(Refusal::ToastWithoutState {
            column: column.to_owned(),
        }),
        None => Err(Refusal::NoColumn(column.to_owned())),
    }
}

/// The built-in source: the canonical records table `pg2dns.rr`, one row one
/// record, in zone-file presentation form (`owner`, `ttl`, `class`, `type`,
/// `rdata`), keyed by `id`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RrTable;

impl RrTable {
    /// The table's name as a source.
    pub const SOURCE: &'static str = "pg2dns.rr";
}

impl Mapping for RrTable {
    fn source(&self) -> &str {
        RrTable::SOURCE
    }

    fn matches(&self, namespace: &str, table: &str) -> bool {
        namespace == "pg2dns" && table == "rr"
    }

    fn key(&self, row: &dyn RowView) -> Option<RowKey> {
        match row.cell("id")? {
            Cell::Text(t) => Some(RowKey(t.to_owned())),
            _ => None,
        }
    }

    fn records(&self, row: &dyn RowView, zones: &Zones) -> Result<Vec<Wanted>, Refused> {
        let owner = Owner::parse(text(row, "owner")?)?;
        let zone = zones
            .zone_for(&owner)
            .ok_or_else(|| Refusal::OutsideZones {
                owner: owner.clone(),
            })?;
        let at = |reason: Refusal| Refused {
            zone: Some(zone),
            owner: Some(owner.clone()),
            reason: Box::new(reason),
        };
        self.records_in(row, zone, owner.clone()).map_err(at)
    }
}

impl RrTable {
    /// The rest of a row, once its owner and zone are known.
    fn records_in(
        &self,
        row: &dyn RowView,
        zone: ZoneId,
        owner: Owner,
    ) -> Result<Vec<Wanted>, Refusal> {
        let class = text(row, "class")?;
        if !class.eq_ignore_ascii_case("IN") {
            return Err(RecordError::BadClass(class.to_owned()).into());
        }
        let ttl_text = text(row, "ttl")?;
        let ttl: u32 = ttl_text
            .parse()
            .ok()
            .filter(|t| *t <= MAX_TTL)
            .ok_or_else(|| RecordError::BadTtl(ttl_text.to_owned()))?;
        let rtype = records::parse_type(text(row, "type")?)?;
        if row.cell("rdata") == Some(Cell::UnchangedToast) {
            return Ok(vec![Wanted::FromState {
                zone,
                owner,
                rtype,
                ttl,
            }]);
        }
        let record = Record::parse_data(owner, ttl, rtype, text(row, "rdata")?)?;
        Ok(vec![Wanted::Record(Desired { zone, record })])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::records::ZoneName;
    use crate::row::TextRow;

    fn zones() -> Zones {
        Zones::new(vec![ZoneName::parse("example.test.").unwrap()]).unwrap()
    }

    fn rr(values: [Option<&str>; 6]) -> TextRow {
        let columns: Arc<[String]> = ["id", "owner", "ttl", "class", "type", "rdata"]
            .map(String::from)
            .into();
        TextRow::new(columns, values.map(|v| v.map(String::from)).to_vec())
    }

    #[test]
    fn an_rr_row_becomes_one_record_in_its_zone() {
        let row = rr([
            Some("7"),
            Some("WWW.example.test"),
            Some("300"),
            Some("in"),
            Some("a"),
            Some("192.0.2.1"),
        ]);
        assert_eq!(RrTable.key(&row), Some(RowKey("7".into())));
        let wanted = RrTable.records(&row, &zones()).unwrap();
        let [Wanted::Record(d)] = wanted.as_slice() else {
            panic!("{wanted:?}")
        };
        assert_eq!(d.zone, ZoneId(0));
        assert_eq!(d.record.to_string(), "www.example.test. 300 IN A 192.0.2.1");
    }

    #[test]
    fn an_rr_row_outside_every_zone_or_with_bad_columns_is_refused_with_the_reason() {
        let base = [
            Some("7"),
            Some("h.example.test."),
            Some("300"),
            Some("IN"),
            Some("A"),
            Some("192.0.2.1"),
        ];
        let refuse = |i: usize, v: Option<&str>| {
            let mut values = base;
            values[i] = v;
            *RrTable.records(&rr(values), &zones()).unwrap_err().reason
        };
        assert!(matches!(
            refuse(1, Some("h.other.test.")),
            Refusal::OutsideZones { .. }
        ));
        assert_eq!(
            refuse(3, Some("CH")),
            Refusal::Record(RecordError::BadClass("CH".into()))
        );
        assert_eq!(
            refuse(2, Some("-1")),
            Refusal::Record(RecordError::BadTtl("-1".into()))
        );
        assert_eq!(
            refuse(2, Some("2147483648")),
            Refusal::Record(RecordError::BadTtl("2147483648".into()))
        );
        assert_eq!(
            refuse(5, None),
            Refusal::Record(RecordError::Null("rdata".into()))
        );
        assert!(matches!(
            refuse(5, Some("not-an-address")),
            Refusal::Record(RecordError::BadRdata { .. })
        ));
    }
}
