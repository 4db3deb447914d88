//! The admin commands: `pg2dns pause`, `resume` and `status`. They need only
//! an SQL login allowed to run `pg2dns.pause()`, `pg2dns.resume()` and
//! `pg2dns.mode_of()` and read `pg2dns.status` (the operator role of docs/setup.md,
//! "Roles and grants"): they read no table.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::config::DatabaseConfig;
use crate::store::{sql, StoreError};

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A PostgreSQL statement or connection failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `pause --wait` with no service streaming: nothing would ever pause.
    #[error("no pg2dns run is streaming slot {slot} (status: {state}); the pause is recorded (request {request}) and takes effect when the service streams again")]
    NotStreaming {
        /// The slot.
        slot: String,
        /// What `pg2dns.status` says.
        state: String,
        /// The pause request.
        request: i64,
    },
}

/// How long `pause --wait` waits for a service to stream from the slot
/// before it says that none does.
const NOT_STREAMING_AFTER: Duration = Duration::from_secs(3);

/// `println!` through [`print`].
macro_rules! say {
    ($($arg:tt)*) => {
        print(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes `text` to stdout. A reader that went away (`pg2dns status | head`)
/// is not an error: the output is simply not wanted any more.
fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

async fn connect(database: &DatabaseConfig) -> Result<tokio_postgres::Client, StoreError> {
    let (client, _connection) = crate::pgconn::connect(database, "pg2dns admin").await?;
    Ok(client)
}

/// Asks the service to pause; with `wait`, returns once it has and prints
/// the LSN it stopped at.
pub async fn pause(database: &DatabaseConfig, reason: &str, wait: bool) -> Result<(), AdminError> {
    let client = connect(database).await?;
    let slot = &database.slot;
    let id: i64 = client
        .query_one("SELECT pg2dns.pause($1, $2)", &[&reason, slot])
        .await
        .map_err(sql("cannot call pg2dns.pause()"))?
        .get(0);
    if !wait {
        print(&format!(
            "pause requested (request {id}); `pg2dns status` shows when it is reached\n"
        ));
        return Ok(());
    }
    // Since when no process has streamed from the slot.
    let mut idle_since: Option<Instant> = None;
    loop {
        if let Some(lsn) = crate::control::paused_for(&client, slot, id).await? {
            print(&format!(
                "paused at {lsn}: every transaction committed before it is in DNS, none after\n"
            ));
            return Ok(());
        }
        let active: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_replication_slots \
                  WHERE slot_name = $1 AND database = current_database() AND active)",
                &[slot],
            )
            .await
            .map_err(sql("cannot read pg_replication_slots"))?
            .get(0);
        if active {
            idle_since = None;
        } else if idle_since.get_or_insert_with(Instant::now).elapsed() > NOT_STREAMING_AFTER {
            let state = client
                .query_opt("SELECT state FROM pg2dns.status WHERE slot = $1", &[slot])
                .await
                .ok()
                .flatten()
                .map_or_else(|| "never started".to_owned(), |r| r.get(0));
            return Err(AdminError::NotStreaming {
                slot: slot.clone(),
                state,
                request: id,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asks a paused or halted service to go on, and says from where.
pub async fn resume(database: &DatabaseConfig) -> Result<(), StoreError> {
    let client = connect(database).await?;
    let slot = &database.slot;
    let row = client
        .query_opt(
            // Through the SECURITY DEFINER function: an operator may not
            // read pg2dns.mode itself (README, "Roles and grants").
            "SELECT mode, coalesce(lsn::text, '') FROM pg2dns.mode_of($1)",
            &[slot],
        )
        .await
        .map_err(sql("cannot call pg2dns.mode_of()"))?;
    let id: i64 = client
        .query_one("SELECT pg2dns.resume($1)", &[slot])
        .await
        .map_err(sql("cannot call pg2dns.resume()"))?
        .get(0);
    match row {
        Some(r) if r.get::<_, String>(0) == "paused" => say!(
            "resume requested (request {id}): streaming continues after {}",
            r.get::<_, String>(1)
        ),
        Some(r) if r.get::<_, String>(0) == "halted" => {
            say!("resume requested (request {id}): the halted service tries again")
        }
        _ => say!("resume requested (request {id}); the service was not paused"),
    }
    Ok(())
}

/// Releases the transaction the mass-delete guard holds (or the one
/// committed at `lsn`, when not empty) and resumes the service.
pub async fn allow_mass_delete(database: &DatabaseConfig, lsn: &str) -> Result<(), StoreError> {
    let client = connect(database).await?;
    let slot = &database.slot;
    let lsn = (!lsn.trim().is_empty()).then(|| lsn.trim().to_owned());
    let released: String = client
        .query_one(
            "SELECT pg2dns.allow_mass_delete($1, $2::text::pg_lsn)::text",
            &[slot, &lsn],
        )
        .await
        .map_err(sql("cannot call pg2dns.allow_mass_delete()"))?
        .get(0);
    say!("mass delete released: the transaction committed at {released} is applied, and streaming goes on");
    Ok(())
}

/// Prints `pg2dns.status` for this slot.
pub async fn status(database: &DatabaseConfig, json: bool) -> Result<(), StoreError> {
    let client = connect(database).await?;
    let slot = &database.slot;
    let row = client
        .query_opt(
            "SELECT mode, since::text, coalesce(mode_lsn::text, ''), reason, hint, \
                    coalesce(requested_by, ''), coalesce(progress_lsn::text, ''), \
                    coalesce(confirmed_flush_lsn::text, ''), coalesce(slot_active, false), \
                    coalesce(lag_bytes, 0), coalesce(retained_wal_bytes, 0), rejected_last_hour, \
                    updated::text, coalesce(received_lsn::text, ''), lag_seconds, \
                    coalesce(status_updated::text, ''), zones::text, \
                    state, coalesce(wal_status, ''), safe_wal_size, slot_active_pid, standbys::text, \
                    EXISTS (SELECT 1 FROM pg_stat_activity \
                             WHERE application_name = $2 AND datname = current_database()) \
             FROM pg2dns.status WHERE slot = $1",
            &[slot, &crate::control::waiting_application_name(slot)],
        )
        .await
        .map_err(sql(
            "cannot read pg2dns.status (run `pg2dns setup` for schema version 8)",
        ))?;
    let Some(r) = row else {
        if json {
            say!(
                "{}",
                serde_json::json!({ "slot": slot, "mode": "never started", "state": "never started", "stream": "closed" })
            );
        } else {
            say!("slot {slot}: no pg2dns instance has run yet");
        }
        return Ok(());
    };
    let text = |i: usize| r.get::<_, String>(i);
    let (state, wal_status): (String, String) = (r.get(17), r.get(18));
    let (retained, safe): (i64, Option<i64>) = (r.get(10), r.get(19));
    let warning = crate::status::slot_warning(&wal_status, retained, safe);
    let mut zones = serde_json::from_str::<serde_json::Value>(&text(16)).unwrap_or_default();
    let primaries = primaries_of(&client, slot).await;
    // Each zone of several primaries lists them.
    for z in zones.as_array_mut().into_iter().flatten() {
        let of: Vec<serde_json::Value> = primaries
            .iter()
            .filter(|p| p["zone"] == z["zone"])
            .cloned()
            .collect();
        if !of.is_empty() {
            z["primaries"] = serde_json::Value::Array(of);
        }
    }
    let standbys = serde_json::from_str::<serde_json::Value>(&text(21)).unwrap_or_default();
    // Whether changes can reach DNS: a stream is open from the slot, or a
    // service waits for `pg2dns resume` with none open, or neither.
    let stream = match (r.get::<_, bool>(8), r.get::<_, bool>(22)) {
        (true, _) => "open",
        (false, true) => "paused",
        (false, false) => "closed",
    };
    let fields = serde_json::json!({
        "slot": slot,
        "state": state,
        "stream": stream,
        "mode": text(0),
        "since": text(1),
        "mode_lsn": text(2),
        "reason": text(3),
        "hint": text(4),
        "requested_by": text(5),
        "progress_lsn": text(6),
        "confirmed_flush_lsn": text(7),
        "slot_active": r.get::<_, bool>(8),
        "slot_active_pid": r.get::<_, Option<i32>>(20),
        "lag_bytes": r.get::<_, i64>(9),
        "wal_status": wal_status,
        "retained_wal_bytes": retained,
        "safe_wal_bytes": safe,
        "warning": warning,
        "rejected_last_hour": r.get::<_, i64>(11),
        "updated": text(12),
        "received_lsn": text(13),
        "lag_seconds": r.get::<_, f64>(14),
        "status_updated": text(15),
        "zones": zones,
        "primaries": primaries,
        "standbys": standbys,
    });
    if json {
        say!("{fields}");
        return Ok(());
    }
    let mut out = format!("slot {slot}: {state} since {}", text(1));
    match state.as_str() {
        "paused" => out.push_str(&format!(
            " at {} by {}{}",
            text(2),
            text(5),
            match text(3) {
                reason if reason.is_empty() => String::new(),
                reason => format!(" ({reason})"),
            }
        )),
        "held" => out.push_str(&format!(
            "\n  the mass-delete guard holds the transaction committed at {}",
            text(2)
        )),
        "inactive" => out.push_str(
            "\n  no pg2dns run streams from the slot (killed, crashed, or reconnecting); start `pg2dns run`",
        ),
        _ => {}
    }
    if matches!(state.as_str(), "halted" | "held" | "stopped") {
        if !text(3).is_empty() {
            out.push_str(&format!("\n  reason: {}", text(3)));
        }
        if !text(4).is_empty() {
            out.push_str(&format!("\n  hint:   {}", text(4)));
        }
    }
    let value = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let zones = zones.as_array().cloned().unwrap_or_default();
    for z in zones.iter().filter(|z| !z["unreachable_since"].is_null()) {
        out.push_str(&format!(
            "\n  unreachable: zone {} primary {} has answered none of {} pending transaction(s) since {}",
            value(&z["zone"]),
            value(&z["primary"]),
            value(&z["in_flight"]),
            value(&z["unreachable_since"])
        ));
    }
    for p in primaries.iter().filter(|p| !p["degraded_since"].is_null()) {
        out.push_str(&format!(
            "\n  degraded: zone {} primary {} since {} (acknowledged up to {}): {}",
            value(&p["zone"]),
            value(&p["primary"]),
            value(&p["degraded_since"]),
            value(&p["degraded_lsn"]),
            value(&p["last_error"])
        ));
    }
    for b in standbys.as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n  standby: {} waits to take over (since {})",
            value(&b["instance"]),
            value(&b["since"])
        ));
    }
    say!("{out}");
    let active = match r.get::<_, Option<i32>>(20) {
        Some(pid) => format!("active, PID {pid}"),
        None => "inactive".to_string(),
    };
    say!(
        "  progress {}, slot confirmed {} ({active}), lag {} bytes",
        text(6),
        text(7),
        r.get::<_, i64>(9)
    );
    say!(
        "  slot WAL: {}, retained {retained} bytes, {}",
        if wal_status.is_empty() {
            "no slot"
        } else {
            &wal_status
        },
        match safe {
            Some(bytes) => format!("{bytes} bytes more before max_slot_wal_keep_size"),
            None => "no max_slot_wal_keep_size limit".to_string(),
        }
    );
    if let Some(w) = &warning {
        say!("  warning: {w}");
    }
    say!(
        "  received {}, lag {:.1} s (status of {})",
        text(13),
        r.get::<_, f64>(14),
        text(15)
    );
    say!("  rejected rows in the last hour: {}", r.get::<_, i64>(11));
    if !zones.is_empty() {
        say!(
            "  {:<30} {:>12} {:<32} {:>9}",
            "zone",
            "SOA serial",
            "last acknowledged",
            "in flight"
        );
        for z in &zones {
            say!(
                "  {:<30} {:>12} {:<32} {:>9}",
                value(&z["zone"]),
                value(&z["soa_serial"]),
                value(&z["acked_at"]),
                value(&z["in_flight"])
            );
        }
    }
    if !primaries.is_empty() {
        say!(
            "  {:<30} {:<16} {:>14} {:>9}  {}",
            "zone",
            "primary",
            "acked LSN",
            "in flight",
            "state"
        );
        for p in &primaries {
            let state = if p["degraded_since"].is_null() {
                "in line".to_string()
            } else {
                format!("degraded since {}", value(&p["degraded_since"]))
            };
            say!(
                "  {:<30} {:<16} {:>14} {:>9}  {}{}",
                value(&p["zone"]),
                value(&p["primary"]),
                value(&p["acked_lsn"]),
                value(&p["in_flight"]),
                state,
                match &p["last_error"] {
                    serde_json::Value::String(e) => format!(" (last error: {e})"),
                    _ => String::new(),
                }
            );
        }
    }
    Ok(())
}

/// The primaries of the zones with several (`pg2dns.status`'s
/// `primaries`, schema version 13; none before it).
async fn primaries_of(client: &tokio_postgres::Client, slot: &str) -> Vec<serde_json::Value> {
    let text: Option<String> = match client
        .query_opt(
            "SELECT primaries::text FROM pg2dns.status WHERE slot = $1",
            &[&slot],
        )
        .await
    {
        Ok(row) => row.map(|r| r.get(0)),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_COLUMN) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the zones' primaries from pg2dns.status");
            None
        }
    };
    text.and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}
