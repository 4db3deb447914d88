//! The replication connection, behind a small trait so the transport can be
//! replaced.
//!
//! Why `pgwire-replication`: its background worker answers the server's
//! keepalives and keeps sending status updates even while pg2dns waits for a
//! DNS server, so a slow zone never trips `wal_sender_timeout`; and it
//! confirms exactly the LSN it is handed, never the position it received.
//! Its known gaps are handled here and in the pipeline: an idle slot is moved
//! by confirming a keepalive's `wal_end` when nothing is in flight, and since
//! it sends no final status on shutdown, [`PgSource::shutdown`] waits one
//! status interval after the last confirmation.
//!
//! Protocol version 1 with `streaming` off: PostgreSQL sends a transaction
//! only after it committed, so nothing pg2dns receives can later abort.

use std::time::Duration;

use bytes::Bytes;
use pg2dns_decoder::Lsn;
use pgwire_replication::{PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent};

use crate::config::DatabaseConfig;

/// How often confirmed positions reach PostgreSQL.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// One event of the replication stream.
#[derive(Debug)]
pub enum SourceEvent {
    /// A transaction begins.
    Begin {
        /// The LSN of its commit record.
        final_lsn: Lsn,
        /// Its transaction id.
        xid: u32,
        /// Commit time, microseconds since 2000-01-01.
        commit_time_micros: i64,
    },
    /// A pgoutput message other than Begin, Commit and logical messages.
    Data {
        /// The message.
        data: Bytes,
        /// When the server sent it, microseconds since 2000-01-01 (server clock).
        server_time_micros: i64,
    },
    /// The transaction commits.
    Commit {
        /// The commit record's LSN.
        commit_lsn: Lsn,
        /// The end of the commit record: what to confirm.
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01.
        commit_time_micros: i64,
    },
    /// A `pg_logical_emit_message` message.
    Message {
        /// Emitted inside a transaction.
        transactional: bool,
        /// Its LSN.
        lsn: Lsn,
        /// Its prefix.
        prefix: String,
        /// Its content.
        content: Bytes,
    },
    /// The server is alive; everything before `wal_end` was sent.
    KeepAlive {
        /// The server's sent position.
        wal_end: Lsn,
        /// When the server sent it, microseconds since 2000-01-01 (server clock).
        server_time_micros: i64,
    },
}

/// Where committed transactions come from.
#[allow(async_fn_in_trait)]
pub trait ReplicationSource {
    /// The next event; `Ok(None)` when the stream ended cleanly.
    async fn recv(&mut self) -> Result<Option<SourceEvent>, PgWireError>;
    /// The next event if one is ready now, without waiting.
    async fn try_recv(&mut self) -> Result<Option<SourceEvent>, PgWireError>;
    /// Confirms that everything up to `lsn` is durable downstream.
    fn confirm(&self, lsn: Lsn);
}

/// The pgwire-replication implementation.
pub struct PgSource {
    client: ReplicationClient,
    peeked: Option<SourceEvent>,
}

fn convert(ev: ReplicationEvent) -> Option<SourceEvent> {
    let lsn = |l: pgwire_replication::Lsn| Lsn::new(l.as_u64());
    Some(match ev {
        ReplicationEvent::KeepAlive {
            wal_end,
            server_time_micros,
            ..
        } => SourceEvent::KeepAlive {
            wal_end: lsn(wal_end),
            server_time_micros,
        },
        ReplicationEvent::Begin {
            final_lsn,
            xid,
            commit_time_micros,
        } => SourceEvent::Begin {
            final_lsn: lsn(final_lsn),
            xid,
            commit_time_micros,
        },
        ReplicationEvent::XLogData {
            data,
            server_time_micros,
            ..
        } => SourceEvent::Data {
            data,
            server_time_micros,
        },
        ReplicationEvent::Commit {
            lsn: commit_lsn,
            end_lsn,
            commit_time_micros,
        } => SourceEvent::Commit {
            commit_lsn: lsn(commit_lsn),
            end_lsn: lsn(end_lsn),
            commit_time_micros,
        },
        ReplicationEvent::Message {
            transactional,
            lsn: at,
            prefix,
            content,
        } => SourceEvent::Message {
            transactional,
            lsn: lsn(at),
            prefix,
            content,
        },
        ReplicationEvent::StoppedAt { .. } => return None,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

impl PgSource {
    /// Connects and starts streaming the slot from `start` (the server
    /// starts at the slot's confirmed position if that is later).
    pub async fn connect(db: &DatabaseConfig, start: Lsn) -> Result<PgSource, PgWireError> {
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
        cfg.tls = pgwire_replication::TlsConfig::disabled();
        let client = ReplicationClient::connect(cfg).await?;
        Ok(PgSource {
            client,
            peeked: None,
        })
    }

    /// Stops the stream after giving the last confirmation time to reach
    /// the server (the worker sends no final status of its own).
    pub async fn shutdown(mut self) {
        tokio::time::sleep(STATUS_INTERVAL + Duration::from_millis(200)).await;
        let _ = self.client.shutdown().await;
    }
}

impl ReplicationSource for PgSource {
    async fn recv(&mut self) -> Result<Option<SourceEvent>, PgWireError> {
        if let Some(ev) = self.peeked.take() {
            return Ok(Some(ev));
        }
        loop {
            match self.client.recv().await? {
                None => return Ok(None),
                Some(ev) => {
                    if let Some(ev) = convert(ev) {
                        return Ok(Some(ev));
                    }
                }
            }
        }
    }

    async fn try_recv(&mut self) -> Result<Option<SourceEvent>, PgWireError> {
        if let Some(ev) = self.peeked.take() {
            return Ok(Some(ev));
        }
        // `Timeout` polls the receive once before looking at the clock, so a
        // ready event is always taken; the channel receive is cancel-safe.
        match tokio::time::timeout(Duration::ZERO, self.client.recv()).await {
            Ok(Ok(Some(ev))) => Ok(convert(ev)),
            Ok(Ok(None)) => Ok(None),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(None),
        }
    }

    fn confirm(&self, lsn: Lsn) {
        self.client
            .update_applied_lsn(pgwire_replication::Lsn::from_u64(lsn.raw()));
    }
}

impl PgSource {
    /// Whether an event is ready without waiting (it is kept for `recv`).
    pub async fn has_ready(&mut self) -> Result<bool, PgWireError> {
        if self.peeked.is_some() {
            return Ok(true);
        }
        let ev = self.try_recv().await?;
        let ready = ev.is_some();
        self.peeked = ev;
        Ok(ready)
    }
}
