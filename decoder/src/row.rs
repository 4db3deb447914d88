//! One view of a row's columns, whether the row came from the replication
//! stream (pgoutput values) or from a `SELECT` over a snapshot (text).
//!
//! Mappings read rows only through [`RowView`], so the stream and the batch
//! comparison map a row the same way. pgoutput sends every value in its text
//! form (protocol 1 without `binary`), the same text a `SELECT` returns, so
//! the two agree byte for byte. A column can also be an *unchanged TOAST*
//! value: "`u` Identifies unchanged TOASTed value (the actual value is not
//! sent)" (PostgreSQL, Logical Replication Message Formats); only the stream
//! produces those.

use std::sync::Arc;

use crate::pgoutput::Value;
use crate::txn::Row;

/// One column's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell<'a> {
    /// SQL NULL.
    Null,
    /// The value's text form.
    Text(&'a str),
    /// An unchanged TOASTed value whose data was not sent.
    UnchangedToast,
    /// A value that is not valid UTF-8 text (or arrived in binary form).
    NotText,
}

/// Read access to a row's columns by name.
pub trait RowView {
    /// The value of `column`, or `None` if the table has no such column.
    fn cell(&self, column: &str) -> Option<Cell<'_>>;
}

impl RowView for Row {
    fn cell(&self, column: &str) -> Option<Cell<'_>> {
        Some(match self.get(column)? {
            Value::Null => Cell::Null,
            Value::UnchangedToast => Cell::UnchangedToast,
            Value::Text(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => Cell::Text(text),
                Err(_) => Cell::NotText,
            },
            Value::Binary(_) => Cell::NotText,
        })
    }
}

/// A row read with SQL: column names and their text values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextRow {
    columns: Arc<[String]>,
    values: Vec<Option<String>>,
}

impl TextRow {
    /// A row with the given column names (shared between rows of one query)
    /// and values; missing values count as NULL.
    pub fn new(columns: Arc<[String]>, values: Vec<Option<String>>) -> TextRow {
        TextRow { columns, values }
    }
}

impl RowView for TextRow {
    fn cell(&self, column: &str) -> Option<Cell<'_>> {
        let i = self.columns.iter().position(|c| c == column)?;
        Some(match self.values.get(i) {
            Some(Some(text)) => Cell::Text(text),
            _ => Cell::Null,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_row_names_its_columns_and_reads_null() {
        let columns: Arc<[String]> = vec!["id".to_string(), "owner".to_string()].into();
        let row = TextRow::new(columns, vec![Some("7".into()), None]);
        assert_eq!(row.cell("id"), Some(Cell::Text("7")));
        assert_eq!(row.cell("owner"), Some(Cell::Null));
        assert_eq!(row.cell("nope"), None);
    }
}
