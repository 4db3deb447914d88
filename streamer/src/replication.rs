//! The replication connection, behind a small trait so the transport can be
//! replaced (one implementation today, used directly by the pipeline).
//!
//! Why `pgwire-replication`: its background worker answers the server's
//! keepalives and keeps sending status updates even while pg2dns waits for a
//! DNS server, so a slow zone never trips `wal_sender_timeout`; and it
//! confirms exactly the LSN it is handed, never the position it received.
//! Its known gaps are handled here and in the pipeline: an idle slot is moved
//! by confirming a keepalive's `wal_end` when nothing is in flight, and since
//! it sends no final status on shutdown, [`PgReplication::shutdown`] waits one
//! status interval after the last confirmation.
//!
//! The crate decodes Begin, Commit and logical Message payloads itself and
//! hands out only their fields; they are turned back into the decoder's
//! [`pgoutput::Message`] here, the one place that knows both. (Commit's flag
//! byte is "currently unused" per the protocol documentation: always 0.)
//! Every other payload reaches the decoder's own parser as raw bytes.
//!
//! With `[database] plugin = "pg2dns"` the slot's plugin is pg2dns_plugin,
//! which accepts the same `START_REPLICATION` options and writes each message
//! as one protobuf `Event` (proto/pg2dns.proto); [`wire::decode`] turns it
//! into the same [`pgoutput::Message`], so nothing after this module knows
//! which plugin the slot has. An `Event` never starts with pgoutput's `B`,
//! `C` or `M`, so the transport hands every one of them over as raw bytes.
//!
//! Protocol version 1 with `streaming` off: PostgreSQL sends a transaction
//! only after it committed, so nothing pg2dns receives can later abort.

use std::time::Duration;

use pg2dns_decoder::pgoutput::{self, Begin, Commit, LogicalMessage, Message, PgOutputError};
use pg2dns_decoder::wire::{self, WireError};
use pg2dns_decoder::Lsn;
use pgwire_replication::{PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent};

use crate::config::{DatabaseConfig, OutputPlugin};

/// How often confirmed positions reach PostgreSQL.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// One item of the replication stream.
#[derive(Debug)]
pub enum Frame {
    /// A pgoutput message.
    Message {
        /// The message.
        message: Message,
        /// When the server sent it, microseconds since 2000-01-01 (server clock).
        server_time_micros: Option<i64>,
    },
    /// The server is alive; everything before `wal_end` was sent.
    KeepAlive {
        /// The server's sent position.
        wal_end: Lsn,
        /// When the server sent it, microseconds since 2000-01-01 (server clock).
        server_time_micros: i64,
    },
}

/// A failure of the replication stream.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The connection or the server failed.
    #[error("replication connection")]
    Transport(#[from] PgWireError),
    /// A payload does not decode.
    #[error("cannot decode the pgoutput message at LSN {lsn}")]
    Decode {
        /// The WAL position of the message.
        lsn: Lsn,
        /// The parser's error.
        #[source]
        source: PgOutputError,
    },
    /// A payload of pg2dns_plugin's protobuf format does not decode.
    #[error("cannot decode the pg2dns_plugin protobuf message at LSN {lsn}")]
    DecodeProtobuf {
        /// The WAL position of the message.
        lsn: Lsn,
        /// The decoder's error.
        #[source]
        source: WireError,
    },
}

impl ReplicationError {
    /// The SQLSTATE the server reported, if this is a server error.
    ///
    /// `pgwire-replication` keeps only the error's text, to which it appends
    /// the SQLSTATE field as `(SQLSTATE XXXXX)`: the code comes from the
    /// protocol's `C` field, not from the localised message, so reading it
    /// back is safe whatever `lc_messages` is.
    pub fn sqlstate(&self) -> Option<&str> {
        let ReplicationError::Transport(PgWireError::Server(text)) = self else {
            return None;
        };
        let start = text.rfind("(SQLSTATE ")? + "(SQLSTATE ".len();
        let code = text.get(start..start + 5)?;
        code.bytes()
            .all(|b| b.is_ascii_alphanumeric())
            .then_some(code)
    }
}

/// Where committed transactions come from.
#[allow(async_fn_in_trait)]
pub trait Replication {
    /// The next frame; `Ok(None)` when the stream ended cleanly.
    async fn recv(&mut self) -> Result<Option<Frame>, ReplicationError>;
    /// Whether a frame is ready without waiting (it is kept for `recv`).
    async fn has_ready(&mut self) -> Result<bool, ReplicationError>;
    /// Confirms that everything up to `lsn` is durable downstream.
    fn confirm(&self, lsn: Lsn);
}

/// The pgwire-replication implementation.
pub struct PgReplication {
    client: ReplicationClient,
    peeked: Option<Frame>,
    plugin: OutputPlugin,
}

fn convert(ev: ReplicationEvent, plugin: OutputPlugin) -> Result<Option<Frame>, ReplicationError> {
    let lsn = |l: pgwire_replication::Lsn| Lsn::new(l.as_u64());
    let message = |message| Frame::Message {
        message,
        server_time_micros: None,
    };
    Ok(Some(match ev {
        ReplicationEvent::KeepAlive {
            wal_end,
            server_time_micros,
            ..
        } => Frame::KeepAlive {
            wal_end: lsn(wal_end),
            server_time_micros,
        },
        ReplicationEvent::Begin {
            final_lsn,
            xid,
            commit_time_micros,
        } => message(Message::Begin(Begin {
            final_lsn: lsn(final_lsn),
            commit_time_micros,
            xid,
        })),
        ReplicationEvent::Commit {
            lsn: commit_lsn,
            end_lsn,
            commit_time_micros,
        } => message(Message::Commit(Commit {
            flags: 0,
            commit_lsn: lsn(commit_lsn),
            end_lsn: lsn(end_lsn),
            commit_time_micros,
        })),
        ReplicationEvent::Message {
            transactional,
            lsn: at,
            prefix,
            content,
        } => message(Message::Message(LogicalMessage {
            transactional,
            lsn: lsn(at),
            prefix,
            content,
        })),
        ReplicationEvent::XLogData {
            data,
            server_time_micros,
            wal_start,
            ..
        } => Frame::Message {
            message: match plugin {
                OutputPlugin::Pgoutput => {
                    pgoutput::parse_bytes(&data).map_err(|source| ReplicationError::Decode {
                        lsn: lsn(wal_start),
                        source,
                    })?
                }
                OutputPlugin::Pg2dns => {
                    wire::decode(&data).map_err(|source| ReplicationError::DecodeProtobuf {
                        lsn: lsn(wal_start),
                        source,
                    })?
                }
            },
            server_time_micros: Some(server_time_micros),
        },
        ReplicationEvent::StoppedAt { .. } => return Ok(None),
        #[allow(unreachable_patterns)]
        _ => return Ok(None),
    }))
}

/// The replication session's settings for `db`, streaming from `start`.
fn replication_config(db: &DatabaseConfig, start: Lsn) -> ReplicationConfig {
    let mut cfg = ReplicationConfig::new(
        db.host(),
        db.user(),
        db.password(),
        db.dbname(),
        db.slot.clone(),
        db.publication.clone(),
    )
    .with_port(db.port())
    .with_start_lsn(pgwire_replication::Lsn::from_u64(start.raw()))
    .with_status_interval(STATUS_INTERVAL)
    .with_wakeup_interval(STATUS_INTERVAL)
    .with_buffer_size(4096)
    .with_application_name("pg2dns")
    // Text values must decode the same way every time.
    .with_options("-c DateStyle=ISO -c TimeZone=UTC -c extra_float_digits=3");
    cfg.tls = crate::pgconn::replication_tls(db);
    cfg
}

/// A snapshot exported by a temporary logical slot: the database exactly as
/// of `lsn` ("a transaction is visible in the snapshot iff its Begin
/// final_lsn < L", docs/design.md §4). Usable with `SET TRANSACTION SNAPSHOT` while
/// this value lives and sends nothing else on its session; dropping it ends
/// the session and the temporary slot with it.
pub struct ExportedSnapshot {
    /// The slot's consistent point.
    pub lsn: Lsn,
    /// The snapshot's name, for `SET TRANSACTION SNAPSHOT`.
    pub name: String,
    _session: ReplicationClient,
}

/// Creates a temporary logical slot with an exported snapshot, over the
/// replication protocol (the SQL function cannot export one).
pub async fn export_snapshot(db: &DatabaseConfig) -> Result<ExportedSnapshot, ReplicationError> {
    let slot = format!("pg2dns_snapshot_{}", std::process::id());
    create_slot_exporting(db, &slot, true, OutputPlugin::Pgoutput).await
}

/// Creates the logical slot `slot` (kept, unless `temporary`) with the
/// output plugin `plugin` and exports the snapshot of its consistent point.
pub async fn create_slot_exporting(
    db: &DatabaseConfig,
    slot: &str,
    temporary: bool,
    plugin: OutputPlugin,
) -> Result<ExportedSnapshot, ReplicationError> {
    let mut session = ReplicationClient::connect_gated(replication_config(db, Lsn::ZERO)).await?;
    let slot = slot.replace('"', "\"\"");
    let kind = if temporary { "TEMPORARY " } else { "" };
    let rows = session
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT \"{slot}\" {kind}LOGICAL {} (SNAPSHOT 'export')",
            plugin.library()
        ))
        .await?;
    let field = |i: usize| {
        rows.first()
            .and_then(|r| r.get(i))
            .and_then(|v| v.as_ref())
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_owned)
    };
    let bad = || {
        ReplicationError::Transport(PgWireError::Protocol(
            "CREATE_REPLICATION_SLOT answered without a consistent point and snapshot".into(),
        ))
    };
    let lsn = field(1).and_then(|t| t.parse().ok()).ok_or_else(bad)?;
    let name = field(2).ok_or_else(bad)?;
    Ok(ExportedSnapshot {
        lsn,
        name,
        _session: session,
    })
}

impl PgReplication {
    /// Connects and starts streaming the slot from `start` (the server
    /// starts at the slot's confirmed position if that is later). Returns
    /// once the server accepted START_REPLICATION, so that only the instance
    /// that holds the slot goes on to speak for it.
    pub async fn connect(
        db: &DatabaseConfig,
        start: Lsn,
    ) -> Result<PgReplication, ReplicationError> {
        let mut client = ReplicationClient::connect(replication_config(db, start)).await?;
        client.wait_started().await?;
        Ok(PgReplication {
            client,
            peeked: None,
            plugin: db.plugin,
        })
    }

    /// Stops the stream after giving the last confirmation time to reach
    /// the server (the worker sends no final status of its own).
    pub async fn shutdown(mut self) {
        tokio::time::sleep(STATUS_INTERVAL + Duration::from_millis(200)).await;
        let _ = self.client.shutdown().await;
    }

    /// The next frame if one is ready now, without waiting.
    async fn try_recv(&mut self) -> Result<Option<Frame>, ReplicationError> {
        use futures_util::FutureExt;
        loop {
            // One poll, no timer: a zero `timeout` would wait for the timer
            // wheel's next tick (up to a millisecond) whenever nothing is
            // ready, which is every live commit. The channel receive is
            // cancel-safe, so dropping it unfinished loses nothing.
            match self.client.recv().now_or_never() {
                Some(Ok(Some(ev))) => {
                    if let Some(frame) = convert(ev, self.plugin)? {
                        return Ok(Some(frame));
                    }
                }
                Some(Ok(None)) | None => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }
}

impl Replication for PgReplication {
    async fn recv(&mut self) -> Result<Option<Frame>, ReplicationError> {
        if let Some(frame) = self.peeked.take() {
            return Ok(Some(frame));
        }
        loop {
            match self.client.recv().await? {
                None => return Ok(None),
                Some(ev) => {
                    if let Some(frame) = convert(ev, self.plugin)? {
                        return Ok(Some(frame));
                    }
                }
            }
        }
    }

    async fn has_ready(&mut self) -> Result<bool, ReplicationError> {
        if self.peeked.is_some() {
            return Ok(true);
        }
        self.peeked = self.try_recv().await?;
        Ok(self.peeked.is_some())
    }

    fn confirm(&self, lsn: Lsn) {
        self.client
            .update_applied_lsn(pgwire_replication::Lsn::from_u64(lsn.raw()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sqlstate_is_read_from_the_protocol_field_not_the_message() {
        let e = ReplicationError::Transport(PgWireError::Server(
            "la publication « p » n'existe pas (SQLSTATE 42704)".into(),
        ));
        assert_eq!(e.sqlstate(), Some("42704"));
        let e = ReplicationError::Transport(PgWireError::Server("no code here".into()));
        assert_eq!(e.sqlstate(), None);
        let e = ReplicationError::Transport(PgWireError::Protocol("(SQLSTATE 42704)".into()));
        assert_eq!(e.sqlstate(), None);
    }
}
