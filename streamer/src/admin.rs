//! The admin commands: `pg2dns pause`, `resume` and `status`. They need only
//! an SQL login allowed to run `pg2dns.pause()`, `pg2dns.resume()` and
//! `pg2dns.mode_of()` and read `pg2dns.status` (the operator role of README,
//! "Roles and grants"): they read no table.

use std::time::Duration;

use crate::config::Config;
use crate::store::{sql, StoreError};

async fn connect(config: &Config) -> Result<tokio_postgres::Client, StoreError> {
    let (client, _connection) = crate::pgconn::connect(&config.database, "pg2dns admin").await?;
    Ok(client)
}

/// Asks the service to pause; with `wait`, returns once it has and prints
/// the LSN it stopped at.
pub async fn pause(config: &Config, reason: &str, wait: bool) -> Result<(), StoreError> {
    let client = connect(config).await?;
    let slot = &config.database.slot;
    let id: i64 = client
        .query_one("SELECT pg2dns.pause($1, $2)", &[&reason, slot])
        .await
        .map_err(sql("cannot call pg2dns.pause()"))?
        .get(0);
    if !wait {
        println!("pause requested (request {id}); `pg2dns status` shows when it is reached");
        return Ok(());
    }
    loop {
        if let Some(lsn) = crate::control::paused_for(&client, slot, id).await? {
            println!(
                "paused at {lsn}: every transaction committed before it is in DNS, none after"
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asks a paused or halted service to go on, and says from where.
pub async fn resume(config: &Config) -> Result<(), StoreError> {
    let client = connect(config).await?;
    let slot = &config.database.slot;
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
        Some(r) if r.get::<_, String>(0) == "paused" => println!(
            "resume requested (request {id}): streaming continues after {}",
            r.get::<_, String>(1)
        ),
        Some(r) if r.get::<_, String>(0) == "halted" => {
            println!("resume requested (request {id}): the halted service tries again")
        }
        _ => println!("resume requested (request {id}); the service was not paused"),
    }
    Ok(())
}

/// Releases the transaction the mass-delete guard holds (or the one
/// committed at `lsn`, when not empty) and resumes the service.
pub async fn allow_mass_delete(config: &Config, lsn: &str) -> Result<(), StoreError> {
    let client = connect(config).await?;
    let slot = &config.database.slot;
    let lsn = (!lsn.trim().is_empty()).then(|| lsn.trim().to_owned());
    let released: String = client
        .query_one(
            "SELECT pg2dns.allow_mass_delete($1, $2::text::pg_lsn)::text",
            &[slot, &lsn],
        )
        .await
        .map_err(sql("cannot call pg2dns.allow_mass_delete()"))?
        .get(0);
    println!("mass delete released: the transaction committed at {released} is applied, and streaming goes on");
    Ok(())
}

/// Prints `pg2dns.status` for this slot.
pub async fn status(config: &Config, json: bool) -> Result<(), StoreError> {
    let client = connect(config).await?;
    let slot = &config.database.slot;
    let row = client
        .query_opt(
            "SELECT mode, since::text, coalesce(mode_lsn::text, ''), reason, hint, \
                    coalesce(requested_by, ''), coalesce(progress_lsn::text, ''), \
                    coalesce(confirmed_flush_lsn::text, ''), coalesce(slot_active, false), \
                    coalesce(lag_bytes, 0), coalesce(retained_wal_bytes, 0), rejected_last_hour, \
                    updated::text, coalesce(received_lsn::text, ''), lag_seconds, \
                    coalesce(status_updated::text, ''), zones::text \
             FROM pg2dns.status WHERE slot = $1",
            &[slot],
        )
        .await
        .map_err(sql("cannot read pg2dns.status"))?;
    let Some(r) = row else {
        if json {
            println!(
                "{}",
                serde_json::json!({ "slot": slot, "mode": "never started" })
            );
        } else {
            println!("slot {slot}: no pg2dns instance has run yet");
        }
        return Ok(());
    };
    let fields = serde_json::json!({
        "slot": slot,
        "mode": r.get::<_, String>(0),
        "since": r.get::<_, String>(1),
        "mode_lsn": r.get::<_, String>(2),
        "reason": r.get::<_, String>(3),
        "hint": r.get::<_, String>(4),
        "requested_by": r.get::<_, String>(5),
        "progress_lsn": r.get::<_, String>(6),
        "confirmed_flush_lsn": r.get::<_, String>(7),
        "slot_active": r.get::<_, bool>(8),
        "lag_bytes": r.get::<_, i64>(9),
        "retained_wal_bytes": r.get::<_, i64>(10),
        "rejected_last_hour": r.get::<_, i64>(11),
        "updated": r.get::<_, String>(12),
        "received_lsn": r.get::<_, String>(13),
        "lag_seconds": r.get::<_, f64>(14),
        "status_updated": r.get::<_, String>(15),
        "zones": serde_json::from_str::<serde_json::Value>(&r.get::<_, String>(16))
            .unwrap_or_default(),
    });
    if json {
        println!("{fields}");
        return Ok(());
    }
    let mode: String = r.get(0);
    let mut line = format!("slot {slot}: {mode} since {}", r.get::<_, String>(1));
    match mode.as_str() {
        "paused" => line.push_str(&format!(
            " at {} by {}{}",
            r.get::<_, String>(2),
            r.get::<_, String>(5),
            match r.get::<_, String>(3) {
                reason if reason.is_empty() => String::new(),
                reason => format!(" ({reason})"),
            }
        )),
        "halted" => line.push_str(&format!(
            "\n  reason: {}\n  hint:   {}",
            r.get::<_, String>(3),
            r.get::<_, String>(4)
        )),
        _ => {}
    }
    println!("{line}");
    println!(
        "  progress {}, slot confirmed {} ({}), lag {} bytes, WAL retained {} bytes",
        r.get::<_, String>(6),
        r.get::<_, String>(7),
        if r.get::<_, bool>(8) {
            "active"
        } else {
            "inactive"
        },
        r.get::<_, i64>(9),
        r.get::<_, i64>(10)
    );
    println!(
        "  received {}, lag {:.1} s (status of {})",
        r.get::<_, String>(13),
        r.get::<_, f64>(14),
        r.get::<_, String>(15)
    );
    println!("  rejected rows in the last hour: {}", r.get::<_, i64>(11));
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if let Some(zones) = fields["zones"].as_array().filter(|z| !z.is_empty()) {
        println!(
            "  {:<30} {:>12} {:<32} {:>9}",
            "zone", "SOA serial", "last acknowledged", "in flight"
        );
        for z in zones {
            println!(
                "  {:<30} {:>12} {:<32} {:>9}",
                text(&z["zone"]),
                text(&z["soa_serial"]),
                text(&z["acked_at"]),
                text(&z["in_flight"])
            );
        }
    }
    Ok(())
}
