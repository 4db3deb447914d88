//! The check trigger of a `[[source]]` table: the stream's own mapping of
//! the source ([`SourceMapping`]) run on NEW, in the writer's transaction.
//!
//! `pg2dns setup --with-plugin` creates, on each source table whose zone
//! does not come from a zones table, a `BEFORE INSERT OR UPDATE` trigger
//! whose one argument is the source's mapping as JSON (the configuration's
//! `SourceSpec`), so the extension maps the row exactly as the stream
//! does: a row the stream would refuse fails the INSERT or UPDATE with the
//! reason `pg2dns.rejected` would hold.
//!
//! As for `pg2dns.rr`, only what the row shows is checked: the zones are
//! pg2dns's configuration, so a row's owner is read in the root zone, or
//! in the zone its zone column names; whether that zone is configured
//! stays in the stream. A source whose zone comes from a zones table needs
//! that table's rows as the stream saw them, and gets no trigger.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use pg2dns_decoder::mapping::source::{SourceMapping, SourceSpec, ZoneFrom};
use pg2dns_decoder::mapping::Mapping;
use pg2dns_decoder::records::{ZoneName, Zones};
use pg2dns_decoder::row::{Cell, RowView};

use crate::decoding::{column_names, heap_tuple};

fn raise(code: PgSqlErrorCode, message: String, hint: &str) -> ! {
    ErrorReport::new(code, message, "pg2dns_plugin.source_check")
        .set_hint(hint)
        .report(PgLogLevel::ERROR);
    unreachable!("an ERROR report does not return")
}

/// The zones a row is read in: the root, and the zone its zone column
/// names (when the source has one and it is a name).
fn zones_for(mapping: &SourceMapping, row: &dyn RowView) -> Zones {
    let mut names = vec![ZoneName::parse(".").expect("the root is a zone name")];
    if let ZoneFrom::Column(column) = &mapping.spec().zone {
        if let Some(Cell::Text(text)) = row.cell(column) {
            if let Ok(zone) = ZoneName::parse(text) {
                if !names.contains(&zone) {
                    names.push(zone);
                }
            }
        }
    }
    Zones::new(names).expect("two zones are within every limit")
}

/// The trigger: refuses NEW with the stream's reason (SQLSTATE 22023).
#[pg_trigger]
fn source_check<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
    let args = trigger.extra_args()?;
    let spec: SourceSpec = match args.first().map(|a| serde_json::from_str(a)) {
        Some(Ok(spec)) => spec,
        other => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("pg2dns_plugin.source_check needs the source's mapping as JSON in its argument: {other:?}"),
            "run `pg2dns setup --with-plugin` again: it writes the trigger",
        ),
    };
    let mapping = match SourceMapping::new(spec) {
        Ok(m) => m,
        Err(e) => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "pg2dns_plugin.source_check: the mapping in its argument is not valid: {}",
                pg2dns_decoder::error_chain(&e)
            ),
            "run `pg2dns setup --with-plugin` again: it writes the trigger",
        ),
    };
    let data = trigger.trigger_data();
    let update = matches!(trigger.op()?, PgTriggerOperation::Update);
    let tuple = if update {
        data.tg_newtuple
    } else {
        data.tg_trigtuple
    };
    // SAFETY: PostgreSQL hands a row trigger its relation and row.
    let row = unsafe {
        let desc = (*data.tg_relation).rd_att;
        heap_tuple(desc, &column_names(desc), tuple, true)
    };
    let zones = zones_for(&mapping, &row);
    if let Err(refused) = mapping.records(&row, &zones) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            pg2dns_decoder::error_chain(&*refused.reason),
            "pg2dns would refuse this row into pg2dns.rejected and publish nothing for it; fix the value",
        );
    }
    Ok(trigger.new())
}
