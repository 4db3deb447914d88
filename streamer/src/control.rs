//! The control plane: pause, resume and status, through PostgreSQL.
//!
//! Why in the database (docs/design.md §5): admin commands then need only an SQL
//! login, and PostgreSQL roles decide who may pause or resume
//! (`pg2dns.pause()` and `pg2dns.resume()` are SECURITY DEFINER functions
//! whose EXECUTE right the DBA grants). A pause is a row of
//! `pg2dns.control`, a table in pg2dns's publication: the running service
//! reads it from the replication stream in commit order, so it stops right
//! after the transaction that paused it — every transaction committed before
//! is in DNS, none committed after. A resume cannot travel that way (a
//! paused service reads no stream): the service LISTENs on `pg2dns_control`
//! and also polls, in case a notification is lost.
//!
//! ```text
//!            pause row in the stream                 resume (NOTIFY or poll)
//!  running ───────────────────────────▶ paused ─────────────────────────────▶ running
//!     │        (flush, all acknowledged,                                      ▲
//!     │         checkpoint at its end LSN)                                    │
//!     └──── a halt (bad key, TRUNCATE, gap…) ──▶ halted ── resume ────────────┘
//!
//!  running or halted ── SIGTERM, --exit-on-halt ──▶ stopped ── pg2dns run ──▶ running
//! ```
//!
//! `pg2dns.mode` holds what the service says of itself; it survives
//! restarts, so a paused service that restarts stays paused (a stop does not
//! overwrite a pause). Only the instance that holds the slot writes it: a
//! standby says what it does in its own metrics and `/readyz`.

use std::time::Duration;

use futures_util::StreamExt;
use pg2dns_decoder::Lsn;
use tokio::sync::{mpsc, watch};
use tokio_postgres::AsyncMessage;
use tracing::{info, warn};

use crate::config::DatabaseConfig;
use crate::store::{sql, StoreError};

/// The NOTIFY channel the control functions signal on.
pub const CHANNEL: &str = "pg2dns_control";
/// How often a paused or halted service looks for a resume without a
/// notification.
pub const POLL: Duration = Duration::from_secs(2);

/// The `application_name` of a paused service's control connection while
/// it waits for `pg2dns resume` (PostgreSQL keeps its first 63 bytes; slot
/// names are ASCII): `pg2dns status` reports `"stream": "paused"` while
/// `pg_stat_activity` shows it.
pub fn waiting_application_name(slot: &str) -> String {
    let mut name = format!("pg2dns paused {slot}");
    name.truncate(63);
    name
}

/// What the service is doing, as `pg2dns.mode` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Streaming.
    Running,
    /// Stopped at `lsn` by an operator's pause.
    Paused {
        /// Every transaction up to here is in DNS, none after.
        lsn: Lsn,
        /// The pause request.
        request: ControlRequest,
    },
    /// Stopped until an operator acts.
    Halted {
        /// What went wrong.
        reason: String,
        /// What to do.
        hint: String,
        /// The newest control request when the halt began: a resume must
        /// come after it.
        after: i64,
        /// The commit LSN of the transaction the mass-delete guard holds,
        /// when that is the halt's cause.
        mass_delete: Option<Lsn>,
    },
    /// The process ended (a signal, `--exit-on-halt`, a bug); the next
    /// `pg2dns run` streams again.
    Stopped {
        /// Why.
        reason: String,
        /// What to do, if anything.
        hint: String,
    },
}

/// A row of `pg2dns.control` (read from the stream by the core, see
/// `pg2dns_decoder::stream::control_request`).
pub use pg2dns_decoder::stream::ControlRequest;

/// Where the service paused in answer to control request `request` (or a
/// later one), if it has: the LSN `pg2dns.mode` gives.
pub async fn paused_for(
    client: &tokio_postgres::Client,
    slot: &str,
    request: i64,
) -> Result<Option<String>, StoreError> {
    Ok(client
        .query_opt(
            // Through the SECURITY DEFINER function, so that an operator
            // who may only pause can wait for it (`pause --wait`).
            "SELECT coalesce(lsn::text, '') FROM pg2dns.mode_of($1) \
             WHERE mode = 'paused' AND control_id >= $2",
            &[&slot, &request],
        )
        .await
        .map_err(sql("cannot call pg2dns.mode_of()"))?
        .map(|r| r.get(0)))
}

/// How often a standby says again that it waits.
const STANDBY_SEEN_EVERY: Duration = Duration::from_secs(10);

/// When this process last said that it stands by (`None`: it does not).
static STANDBY_SAID: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);

/// This process as `pg2dns.standby` names it: `host:pid`.
fn instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!("{host}:{}", std::process::id())
}

/// A connection for control statements, with notifications.
pub struct Control {
    client: tokio_postgres::Client,
    notifications: mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
    slot: String,
}

impl Drop for Control {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Control {
    /// Connects and LISTENs on [`CHANNEL`].
    pub async fn connect(db: &DatabaseConfig) -> Result<Control, StoreError> {
        let (client, mut connection) = crate::pgconn::connect_raw(db, "pg2dns control").await?;
        let (tx, notifications) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => {
                        let _ = tx.send(());
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(error = %e, "control connection ended");
                        return;
                    }
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(sql("cannot LISTEN for control requests"))?;
        Ok(Control {
            client,
            notifications,
            task,
            slot: db.slot.clone(),
        })
    }

    /// What `pg2dns.mode` says of this slot (`Running` when nothing).
    pub async fn mode(&self) -> Result<Mode, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT m.mode, coalesce(m.lsn::text, '0/0'), m.reason, m.hint, m.control_id, \
                        coalesce(c.action, ''), coalesce(c.requested_by, ''), coalesce(c.reason, '') \
                 FROM pg2dns.mode m LEFT JOIN pg2dns.control c ON c.id = m.control_id \
                 WHERE m.slot = $1",
                &[&self.slot],
            )
            .await
            .map_err(sql("cannot read pg2dns.mode"))?;
        let Some(r) = row else {
            return Ok(Mode::Running);
        };
        let mode: String = r.get(0);
        let lsn_text: String = r.get(1);
        Ok(match mode.as_str() {
            "paused" => Mode::Paused {
                lsn: lsn_text.parse().map_err(|_| StoreError::Corrupt {
                    table: "mode",
                    value: crate::store::Corrupt::Lsn {
                        text: lsn_text.clone(),
                        of: None,
                    },
                })?,
                request: ControlRequest {
                    id: r.get(4),
                    action: r.get(5),
                    requested_by: r.get(6),
                    reason: r.get(7),
                    until: None,
                },
            },
            "halted" => Mode::Halted {
                reason: r.get(2),
                hint: r.get(3),
                after: r.get(4),
                mass_delete: None,
            },
            "stopped" => Mode::Stopped {
                reason: r.get(2),
                hint: r.get(3),
            },
            _ => Mode::Running,
        })
    }

    /// Records the mode (and this process as its writer).
    pub async fn set_mode(&self, mode: &Mode) -> Result<(), StoreError> {
        let (name, lsn, reason, hint, by, control_id) = match mode {
            Mode::Running => ("running", None, String::new(), String::new(), None, 0),
            Mode::Paused { lsn, request } => (
                "paused",
                Some(lsn.to_string()),
                request.reason.clone(),
                String::new(),
                Some(request.requested_by.clone()),
                request.id,
            ),
            Mode::Halted {
                reason,
                hint,
                after,
                mass_delete,
            } => (
                "halted",
                mass_delete.map(|l| l.to_string()),
                reason.clone(),
                hint.clone(),
                None,
                *after,
            ),
            Mode::Stopped { reason, hint } => {
                ("stopped", None, reason.clone(), hint.clone(), None, 0)
            }
        };
        // A stop never overwrites a pause (it survives restarts) nor the
        // mode another instance wrote since.
        let only_when = if matches!(mode, Mode::Stopped { .. }) {
            " WHERE pg2dns.mode.mode IN ('running', 'halted', 'stopped')"
        } else {
            ""
        };
        // A mass-delete halt also says which transaction `pg2dns resume
        // --allow-mass-delete` releases (schema version 5), in the same
        // statement, so that no reader sees the halt without it.
        let held = matches!(
            mode,
            Mode::Halted {
                mass_delete: Some(_),
                ..
            }
        );
        let (extra_column, extra_value, extra_set) = if held {
            (
                ", mass_delete_lsn",
                ", $3::text::pg_lsn",
                ", mass_delete_lsn = excluded.mass_delete_lsn",
            )
        } else {
            ("", "", "")
        };
        self.client
            .execute(
                &format!(
                    "INSERT INTO pg2dns.mode (slot, mode, since, lsn, reason, hint, requested_by, control_id, pid, updated{extra_column}) \
                     VALUES ($1, $2, now(), $3::text::pg_lsn, $4, $5, $6, $7, pg_backend_pid(), now(){extra_value}) \
                     ON CONFLICT (slot) DO UPDATE SET \
                       since = CASE WHEN pg2dns.mode.mode = excluded.mode THEN pg2dns.mode.since ELSE now() END, \
                       mode = excluded.mode, lsn = excluded.lsn, reason = excluded.reason, hint = excluded.hint, \
                       requested_by = excluded.requested_by, control_id = excluded.control_id, \
                       pid = excluded.pid, updated = now(){extra_set}{only_when}"
                ),
                &[&self.slot, &name, &lsn, &reason, &hint, &by, &control_id],
            )
            .await
            .map_err(sql(if held {
                "cannot write pg2dns.mode (run `pg2dns setup` for schema version 5)"
            } else {
                "cannot write pg2dns.mode"
            }))?;
        Ok(())
    }

    /// Says in `pg2dns.standby` that this process waits for the slot (at
    /// most every [`STANDBY_SEEN_EVERY`]). Best effort: a standby that
    /// cannot say so still waits.
    pub async fn standing_by(&self) {
        let due = {
            let said = STANDBY_SAID.lock().unwrap_or_else(|e| e.into_inner());
            said.is_none_or(|t| t.elapsed() >= STANDBY_SEEN_EVERY)
        };
        if !due {
            return;
        }
        let written = self
            .client
            .execute(
                "INSERT INTO pg2dns.standby (slot, instance) VALUES ($1, $2) \
                 ON CONFLICT (slot, instance) DO UPDATE SET seen = now()",
                &[&self.slot, &instance()],
            )
            .await;
        match written {
            Ok(_) => {
                *STANDBY_SAID.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(std::time::Instant::now())
            }
            Err(e) => tracing::debug!(error = %e, "cannot record the standby in pg2dns.standby"),
        }
    }

    /// This process holds the slot now: it no longer stands by.
    pub async fn took_over(&self) {
        if STANDBY_SAID
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_none()
        {
            return;
        }
        if let Err(e) = self
            .client
            .execute(
                "DELETE FROM pg2dns.standby WHERE slot = $1 AND instance = $2",
                &[&self.slot, &instance()],
            )
            .await
        {
            tracing::debug!(error = %e, "cannot remove the standby from pg2dns.standby");
        }
    }

    /// The newest control request's id for this slot (0 when none).
    pub async fn newest_request(&self) -> Result<i64, StoreError> {
        let row = self
            .client
            .query_one(
                "SELECT coalesce(max(id), 0) FROM pg2dns.control WHERE slot = $1",
                &[&self.slot],
            )
            .await
            .map_err(sql("cannot read pg2dns.control"))?;
        Ok(row.get(0))
    }

    /// The first resume request after `after`, if there is one.
    async fn resume_after(&self, after: i64) -> Result<Option<ControlRequest>, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT id, action, requested_by, reason, until_lsn::text FROM pg2dns.control \
                 WHERE slot = $1 AND id > $2 AND action = 'resume' ORDER BY id LIMIT 1",
                &[&self.slot, &after],
            )
            .await
            .map_err(sql("cannot read pg2dns.control"))?;
        let Some(r) = row else { return Ok(None) };
        // A resume's `until` that does not read as an LSN is an error, never
        // a resume without its stop.
        let until = match r.get::<_, Option<String>>(4) {
            None => None,
            Some(t) => Some(t.parse().map_err(|_| StoreError::NotAnLsn {
                what: "pg2dns.control.until_lsn",
                value: t,
            })?),
        };
        Ok(Some(ControlRequest {
            id: r.get(0),
            action: r.get(1),
            requested_by: r.get(2),
            reason: r.get(3),
            until,
        }))
    }

    /// Waits for a resume request newer than `after` (a notification or a
    /// poll every [`POLL`]); `Ok(None)` when asked to stop meanwhile.
    pub async fn wait_for_resume(
        &mut self,
        after: i64,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<ControlRequest>, StoreError> {
        loop {
            if let Some(request) = self.resume_after(after).await? {
                info!(by = %request.requested_by, "resume requested");
                return Ok(Some(request));
            }
            tokio::select! {
                _ = self.notifications.recv() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => return Ok(None),
            }
        }
    }
}

/// Leases: a reconcile's pause ends when the reconcile does.
///
/// `pg2dns reconcile` holds a session-level advisory lock for the slot while
/// it pauses the service, and `pg2dns.pause()` / `pg2dns.resume(until)`
/// record its backend PID on the request (schema version 9). A paused service
/// whose request is such a lease asks, at every poll, whether the holder's
/// session still holds the lock; PostgreSQL drops a session's advisory locks
/// when it ends, however the reconcile ended (signal, panic, lost
/// connection, kill -9). An operator's `pg2dns pause` holds no lock and
/// stays until `pg2dns resume`.
impl Control {
    /// Whether the session that made control request `request` a lease is
    /// gone. `false` for a request that is no lease, and before schema
    /// version 9 (no leases then).
    pub async fn lease_ended(&self, request: i64) -> Result<bool, StoreError> {
        match self
            .client
            .query_one("SELECT pg2dns.lease_alive($1)", &[&request])
            .await
        {
            Ok(row) => Ok(!row.get::<_, bool>(0)),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_FUNCTION) => {
                Ok(false)
            }
            Err(e) => Err(sql("cannot ask whether the pause's lease holder is there")(
                e,
            )),
        }
    }

    /// [`Control::wait_for_resume`] for a service paused by request
    /// `request`: also ends, with a resume of this service's own making,
    /// once that request's lease holder is gone.
    pub async fn wait_for_resume_or_lease_end(
        &mut self,
        request: &ControlRequest,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<ControlRequest>, StoreError> {
        // Said where `pg2dns status` looks (its `stream` field): the name
        // goes with this connection, so a killed service stops saying it.
        self.client
            .execute(
                "SELECT set_config('application_name', $1, false)",
                &[&waiting_application_name(&self.slot)],
            )
            .await
            .map_err(sql("cannot say that the service waits for a resume"))?;
        let waited = self.wait_paused(request, shutdown).await;
        if waited.is_ok() {
            self.client
                .batch_execute("SET application_name = 'pg2dns control'")
                .await
                .map_err(sql("cannot say that the service no longer waits"))?;
        }
        waited
    }

    async fn wait_paused(
        &mut self,
        request: &ControlRequest,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<ControlRequest>, StoreError> {
        loop {
            if let Some(resume) = self.resume_after(request.id).await? {
                info!(by = %resume.requested_by, "resume requested");
                return Ok(Some(resume));
            }
            if self.lease_ended(request.id).await? {
                // The holder may have resumed just before its session
                // ended (between the two reads above): its resume counts.
                if let Some(resume) = self.resume_after(request.id).await? {
                    info!(by = %resume.requested_by, "resume requested");
                    return Ok(Some(resume));
                }
                warn!(
                    request = request.id,
                    by = %request.requested_by,
                    reason = %request.reason,
                    "the session that paused the service (a lease: pg2dns reconcile) is gone without resuming it: resuming by itself"
                );
                return Ok(Some(ControlRequest {
                    id: request.id,
                    action: "resume".into(),
                    requested_by: "pg2dns (lease ended)".into(),
                    reason: String::new(),
                    until: None,
                }));
            }
            tokio::select! {
                _ = self.notifications.recv() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => return Ok(None),
            }
        }
    }
}
