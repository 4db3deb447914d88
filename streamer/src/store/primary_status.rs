//! The durable part of a zone's primaries' state (`pg2dns.primary_status`,
//! schema version 13): which primary is *degraded* (the zone went on
//! without it, so it lacks changes the slot confirmed) and why.
//!
//! A restart must not forget it: the slot confirms past what a degraded
//! primary took, so a restarted service that counted it in line again
//! would stream on from the checkpoint and leave that primary without the
//! changes in between for good. So the stream writes `degraded_since`
//! before its zone's acknowledgement moves past that primary (see
//! `dns::lanes`), and the next session reads it back and brings the
//! primary in line (a SOA-guarded catch-up reconcile) before it rejoins.
//!
//! The status publisher owns the table's other columns (see `status`).

use pg2dns_decoder::{Lsn, ZoneName};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::{sql, Store, StoreError};

/// Whether `e` says that schema version 13 is not installed.
pub fn is_missing(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNDEFINED_TABLE)
}

/// Records that `primary` of `zone` is degraded (since now, unless it
/// already was: the first time is kept), having acknowledged up to `lsn`,
/// because of `reason`.
pub async fn mark_degraded(
    client: &Client,
    slot: &str,
    zone: &ZoneName,
    primary: &str,
    lsn: Option<Lsn>,
    reason: &str,
) -> Result<(), tokio_postgres::Error> {
    let lsn = lsn.map(|l| l.to_string());
    client
        .execute(
            "INSERT INTO pg2dns.primary_status AS ps
                 (slot, zone, primary_name, degraded_since, degraded_lsn, last_error, last_error_at, updated)
             VALUES ($1, $2, $3, now(), $4::text::pg_lsn, $5, now(), now())
             ON CONFLICT (slot, zone, primary_name) DO UPDATE SET
                 degraded_since = coalesce(ps.degraded_since, now()),
                 degraded_lsn = CASE WHEN ps.degraded_since IS NULL
                                     THEN EXCLUDED.degraded_lsn
                                     ELSE coalesce(ps.degraded_lsn, EXCLUDED.degraded_lsn) END,
                 last_error = EXCLUDED.last_error,
                 last_error_at = now(),
                 updated = now()",
            &[&slot, &zone.to_string(), &primary, &lsn, &reason],
        )
        .await
        .map(drop)
}

/// Records that `primary` of `zone` counts again (it caught up, or was
/// brought in line).
pub async fn clear_degraded(
    client: &Client,
    slot: &str,
    zone: &ZoneName,
    primary: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE pg2dns.primary_status SET degraded_since = NULL, degraded_lsn = NULL, updated = now()
              WHERE slot = $1 AND zone = $2 AND primary_name = $3",
            &[&slot, &zone.to_string(), &primary],
        )
        .await
        .map(drop)
}

impl Store {
    /// The primaries recorded degraded for this slot, as (zone, primary
    /// name); none when schema version 13 is not installed.
    pub async fn degraded_primaries(&self) -> Result<Vec<(ZoneName, String)>, StoreError> {
        let rows = match self
            .client()
            .query(
                "SELECT zone, primary_name FROM pg2dns.primary_status
                  WHERE slot = $1 AND degraded_since IS NOT NULL ORDER BY zone, primary_name",
                &[&self.slot()],
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) if is_missing(&e) => {
                tracing::warn!("pg2dns.primary_status is missing: a degraded primary is not remembered across restarts (run `pg2dns setup` for schema version 13)");
                return Ok(Vec::new());
            }
            Err(e) => return Err(sql("cannot read pg2dns.primary_status")(e)),
        };
        Ok(rows
            .iter()
            .filter_map(|r| {
                let zone: String = r.get(0);
                Some((ZoneName::parse(&zone).ok()?, r.get(1)))
            })
            .collect())
    }

    /// Records the outcome of bringing `primary` of `zone` in line:
    /// `Ok` clears its degraded state, `Err(why)` keeps it (or sets it)
    /// with `why` as its last error.
    pub async fn primary_caught_up(
        &self,
        zone: &ZoneName,
        primary: &str,
        outcome: Result<(), &str>,
    ) -> Result<(), StoreError> {
        let written = match outcome {
            Ok(()) => clear_degraded(self.client(), self.slot(), zone, primary).await,
            Err(why) => mark_degraded(self.client(), self.slot(), zone, primary, None, why).await,
        };
        match written {
            Err(e) if !is_missing(&e) => Err(sql("cannot write pg2dns.primary_status")(e)),
            _ => Ok(()),
        }
    }
}
