//! The checks a `pg2dns.rr` row passes or fails on its own, before it is
//! committed: what the `pg2dns_plugin` PostgreSQL extension runs in the
//! writer's transaction.
//!
//! It is the stream's own mapping ([`RrTable`]) applied to the row, with one
//! zone, the root, that holds every name: so a refusal here is the refusal
//! the stream would write to `pg2dns.rejected`, word for word (through
//! [`crate::error_chain`]). What needs more than the row stays in the
//! stream: zone membership (the zones are in pg2dns's configuration, not in
//! the database), CNAME beside other data, RRset limits and sizes, the
//! host-name rule of the zone's `check_names`, and the UPDATE budget, which
//! depends on the TSIG key.

use std::sync::Arc;

use super::{Mapping, RrTable, Wanted};
use crate::plan::Refusal;
use crate::records::{Record, ZoneName, Zones};
use crate::row::TextRow;

/// The columns of a `pg2dns.rr` row as text, as the stream reads them; `None`
/// is NULL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RrColumns<'a> {
    /// `owner`.
    pub owner: Option<&'a str>,
    /// `ttl`, in its text form (`"-1"` for a negative integer).
    pub ttl: Option<&'a str>,
    /// `class`.
    pub class: Option<&'a str>,
    /// `type`.
    pub rtype: Option<&'a str>,
    /// `rdata`.
    pub rdata: Option<&'a str>,
}

/// The record a `pg2dns.rr` row makes, or the stream's reason to refuse it,
/// from the row alone (see the module documentation for what is not
/// checked).
pub fn rr_row(columns: RrColumns<'_>) -> Result<Record, Refusal> {
    let names: Arc<[String]> = ["id", "owner", "ttl", "class", "type", "rdata"]
        .map(String::from)
        .into();
    let values = [
        Some("0"),
        columns.owner,
        columns.ttl,
        columns.class,
        columns.rtype,
        columns.rdata,
    ]
    .map(|v| v.map(String::from))
    .to_vec();
    let row = TextRow::new(names, values);
    let root = ZoneName::parse(".").expect("the root is a zone name");
    let zones = Zones::new(vec![root]).expect("one zone is within every limit");
    match RrTable.records(&row, &zones) {
        Ok(wanted) => match wanted.into_iter().next() {
            Some(Wanted::Record(d)) => Ok(d.record),
            // A text row never carries an unchanged TOAST value, and the
            // mapping makes one record of every row it accepts.
            other => unreachable!("rr row mapped to {other:?}"),
        },
        Err(refused) => Err(*refused.reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_row_makes_its_record_and_a_bad_one_gives_the_streams_reason() {
        let row = RrColumns {
            owner: Some("WWW.example.test"),
            ttl: Some("300"),
            class: Some("IN"),
            rtype: Some("a"),
            rdata: Some("192.0.2.1"),
        };
        assert_eq!(
            rr_row(row).unwrap().to_string(),
            "www.example.test. 300 IN A 192.0.2.1"
        );
        let bad = rr_row(RrColumns {
            rdata: Some("192.0.2"),
            ..row
        })
        .unwrap_err();
        assert!(
            crate::error_chain(&bad).starts_with("record data \"192.0.2\" is not valid A"),
            "{}",
            crate::error_chain(&bad)
        );
        assert_eq!(
            crate::error_chain(&rr_row(RrColumns { rdata: None, ..row }).unwrap_err()),
            "column \"rdata\" is NULL"
        );
    }
}
