//! `pg2dns setup --with-plugin`: the opt-in record checks of the
//! `pg2dns_plugin` extension in the writer's transaction (docs/plugin.md).
//!
//! pg2dns works without the extension (stock PostgreSQL, pgoutput only);
//! this step is for a DBA who installed it. It creates the extension if it
//! is missing and runs `pg_plugin/sql/check_rr.sql`, the same script a DBA
//! can run by hand: a `BEFORE INSERT OR UPDATE` trigger on `pg2dns.rr`
//! that refuses a row the stream would refuse, with the stream's reason.
//! On each `[[source]]` table whose zone does not come from a zones table
//! it creates the trigger `pg2dns_source_check`, which runs the source's
//! own mapping (handed to the extension as JSON) on NEW. Every step is
//! idempotent.

use crate::config::Config;
use crate::store::{Store, StoreError};

/// The extension, as `CREATE EXTENSION` names it.
pub const EXTENSION: &str = "pg2dns_plugin";

/// The opt-in script: wrappers in schema pg2dns and the trigger on
/// `pg2dns.rr`.
const CHECK_RR_SQL: &str = include_str!("../../pg_plugin/sql/check_rr.sql");

/// Why the checks could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum PluginChecksError {
    /// The PostgreSQL server does not have the extension's files.
    #[error("the pg2dns_plugin extension is not installed in this PostgreSQL (pg_available_extensions has no pg2dns_plugin): build and install it into the server (docs/plugin.md, Install), or run `pg2dns setup` without --with-plugin; pg2dns works without it")]
    NotAvailable,
    /// A statement failed (e.g. the role may not create the extension:
    /// it needs a superuser).
    #[error("installing the record checks failed ({what}): CREATE EXTENSION pg2dns_plugin needs a superuser, the trigger the owner of pg2dns.rr; run it as those, or by hand as docs/plugin.md says")]
    Sql {
        /// What was being done.
        what: &'static str,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A source's mapping could not be written as JSON.
    #[error("source {table}: its mapping cannot be written as JSON for the check trigger")]
    Encode {
        /// The source table.
        table: String,
    },
    /// The connection failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `install` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The extension was created now (it was not there).
    pub extension_created: bool,
    /// The extension's version.
    pub version: String,
    /// The `[[source]]` tables that got the check trigger.
    pub sources: Vec<String>,
    /// The `[[source]]` tables that did not, and why.
    pub skipped: Vec<(String, &'static str)>,
}

/// The trigger `install` puts on a `[[source]]` table.
pub const SOURCE_TRIGGER: &str = "pg2dns_source_check";

/// `CREATE OR REPLACE TRIGGER` of the check of one source: the extension's
/// `source_check` with the source's mapping as JSON in its argument.
pub fn source_trigger_sql(
    source: &pg2dns_decoder::mapping::source::SourceMapping,
) -> Result<String, serde_json::Error> {
    let json = serde_json::to_string(source.spec())?;
    // A dollar-quoted string constant, with a tag the JSON does not hold.
    let mut tag = String::from("$pg2dns$");
    while json.contains(&tag) {
        tag.insert(tag.len() - 1, '_');
    }
    Ok(format!(
        "CREATE OR REPLACE TRIGGER {SOURCE_TRIGGER} BEFORE INSERT OR UPDATE ON {}.{} \
         FOR EACH ROW EXECUTE FUNCTION pg2dns_plugin.source_check({tag}{json}{tag})",
        crate::setup::quote_ident(source.schema()),
        crate::setup::quote_ident(source.table())
    ))
}

/// Creates the extension if missing and puts the check on `pg2dns.rr`.
pub async fn install(config: &Config) -> Result<Installed, PluginChecksError> {
    let store = Store::connect(&config.database).await?;
    let client = store.client();
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = $1), \
                    (SELECT extversion FROM pg_extension WHERE extname = $1)",
            &[&EXTENSION],
        )
        .await
        .map_err(|source| PluginChecksError::Sql {
            what: "reading pg_available_extensions",
            source,
        })?;
    let (available, version): (bool, Option<String>) = (row.get(0), row.get(1));
    if !available {
        return Err(PluginChecksError::NotAvailable);
    }
    let extension_created = version.is_none();
    if extension_created {
        client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg2dns_plugin")
            .await
            .map_err(|source| PluginChecksError::Sql {
                what: "CREATE EXTENSION pg2dns_plugin",
                source,
            })?;
    }
    client
        .batch_execute(CHECK_RR_SQL)
        .await
        .map_err(|source| PluginChecksError::Sql {
            what: "pg_plugin/sql/check_rr.sql: the trigger on pg2dns.rr",
            source,
        })?;
    let mut sources = Vec::new();
    let mut skipped = Vec::new();
    for source in &config.sources {
        if matches!(
            source.spec().zone,
            pg2dns_decoder::mapping::source::ZoneFrom::Table { .. }
        ) {
            skipped.push((
                source.spec().table.clone(),
                "its zone comes from a zones table, which only the stream follows",
            ));
            continue;
        }
        let sql = source_trigger_sql(source).map_err(|_| PluginChecksError::Encode {
            table: source.spec().table.clone(),
        })?;
        client
            .batch_execute(&sql)
            .await
            .map_err(|source| PluginChecksError::Sql {
                what: "CREATE TRIGGER pg2dns_source_check on a [[source]] table",
                source,
            })?;
        sources.push(source.spec().table.clone());
    }
    let version: String = client
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = $1",
            &[&EXTENSION],
        )
        .await
        .map_err(|source| PluginChecksError::Sql {
            what: "reading pg_extension",
            source,
        })?
        .get(0);
    Ok(Installed {
        extension_created,
        version,
        sources,
        skipped,
    })
}
