//! `pg2dns_plugin`: pg2dns inside PostgreSQL.
//!
//! A record that cannot be published is otherwise found only after its
//! transaction committed, when the stream refuses it into
//! `pg2dns.rejected`, where the application that wrote it never looks. This
//! extension links the core crate (`pg2dns-decoder`) and runs the stream's
//! own mapping of a `pg2dns.rr` row
//! ([`pg2dns_decoder::mapping::row_check::rr_row`]) in the writer's
//! transaction: no second parser, and the error's message is the reason
//! `pg2dns.rejected` would hold, word for word.
//!
//! Only what a row shows on its own is checked here: names, type, class,
//! TTL and record data. Zone membership (the zones are in pg2dns's
//! configuration), CNAME beside other data, RRset limits and sizes, the
//! zone's `check_names` rule and the UPDATE budget stay in the stream.
//!
//! The functions live in schema `pg2dns_plugin` (the control file's
//! `schema`), which `CREATE EXTENSION` creates; `sql/check_rr.sql` adds
//! wrappers in schema `pg2dns` and the trigger on `pg2dns.rr`.

pub mod decoding;

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use pg2dns_decoder::mapping::row_check::{rr_row, RrColumns};
use pg2dns_decoder::plan::Refusal;
use pg2dns_decoder::records::{Record, RecordError};

::pgrx::pg_module_magic!(name, version);

/// The stream's verdict on a row given as SQL values.
fn verdict(
    owner: Option<&str>,
    rtype: Option<&str>,
    ttl: Option<i32>,
    rdata: Option<&str>,
    class: Option<&str>,
) -> Result<Record, Refusal> {
    // The stream reads an integer column as its text form, so a negative
    // TTL is refused as the text PostgreSQL sends ("-1").
    let ttl = ttl.map(|t| t.to_string());
    rr_row(RrColumns {
        owner,
        ttl: ttl.as_deref(),
        class,
        rtype,
        rdata,
    })
}

/// Checks one `pg2dns.rr` row: returns the record as pg2dns publishes it
/// (presentation form, names lower-cased and fully qualified), or raises
/// an error whose message is the reason the stream would give, SQLSTATE
/// 22004 (null_value_not_allowed) for a NULL column and 22023
/// (invalid_parameter_value) for a malformed value.
#[pg_extern(immutable, parallel_safe)]
fn check_record(
    owner: Option<&str>,
    rtype: Option<&str>,
    ttl: Option<i32>,
    rdata: Option<&str>,
    class: default!(Option<&str>, "'IN'"),
) -> String {
    match verdict(owner, rtype, ttl, rdata, class) {
        Ok(record) => record.to_string(),
        Err(refusal) => {
            let code = match refusal {
                Refusal::Record(RecordError::Null(_)) => {
                    PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED
                }
                _ => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            };
            ErrorReport::new(
                code,
                pg2dns_decoder::error_chain(&refusal),
                "pg2dns_plugin.check_record",
            )
            .set_hint("pg2dns would refuse this row into pg2dns.rejected and publish nothing for it; fix the value")
            .report(PgLogLevel::ERROR);
            unreachable!("an ERROR report does not return")
        }
    }
}

/// Whether one `pg2dns.rr` row passes the checks of [`check_record`]:
/// usable in a CHECK constraint. Never raises.
#[pg_extern(immutable, parallel_safe)]
fn record_is_valid(
    owner: Option<&str>,
    rtype: Option<&str>,
    ttl: Option<i32>,
    rdata: Option<&str>,
    class: default!(Option<&str>, "'IN'"),
) -> bool {
    verdict(owner, rtype, ttl, rdata, class).is_ok()
}

// The functions are pure (they read nothing but their arguments), so every
// role may call them: a writer's INSERT runs the trigger of
// `sql/check_rr.sql` with the writer's rights.
extension_sql!(
    r#"GRANT USAGE ON SCHEMA pg2dns_plugin TO PUBLIC;"#,
    name = "grant_usage",
    finalize
);
