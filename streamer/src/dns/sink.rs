//! One zone's UPDATE stream: a thin driver of [`pg2dns_decoder::session`].
//!
//! The session decides what to send, what an answer means, when to resend
//! and when to stop; this task owns the socket and the clock and feeds the
//! session what happened. Work arrives from the pipeline as batches of
//! [`Dispatch`]es in commit order; acknowledgements and halts go back as
//! [`ZoneReport`]s.
//!
//! ```text
//!  pipeline ─Vec<Dispatch>─▶ session.push ─▶ poll_transmit ─▶ Connection::send
//!                                 ▲                                │
//!  pipeline ◀─ZoneReport─ poll_event ◀─ handle_response ◀─ Connection::recv
//! ```

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use pg2dns_decoder::session::{Event, Halt, Session, SessionConfig};
use pg2dns_decoder::update::Budget;
use pg2dns_decoder::ZoneId;
use tokio::sync::mpsc;
use tracing::{debug, warn};

pub use pg2dns_decoder::session::Dispatch;

use crate::config::{Limits, ZoneConfig};
use crate::dns::Connection;
use crate::{failpoint, metrics};

/// What a zone's stream tells the pipeline.
#[derive(Debug)]
pub enum ZoneReport {
    /// Every dispatch with id ≤ `upto` was acknowledged by the server.
    Acked {
        /// The zone.
        zone: ZoneId,
        /// Highest dispatch id fully acknowledged.
        upto: u64,
    },
    /// The server refused one owner group's additions for their content;
    /// the rest went on. The rows that wanted them must be rejected.
    Refused {
        /// The zone.
        zone: ZoneId,
        /// The transaction of the group.
        lsn: pg2dns_decoder::Lsn,
        /// The refused additions.
        group: pg2dns_decoder::update::OwnerGroup,
        /// The server's answer.
        rcode: pg2dns_decoder::session::Rcode,
    },
    /// The zone cannot go on until the operator acts.
    Halted {
        /// The zone.
        zone: ZoneId,
        /// Why.
        error: Halt,
    },
}

/// The per-zone sender. Runs until its input closes or it halts.
pub struct ZoneSink {
    zone: ZoneId,
    /// The address last connected to (for logs).
    server: std::net::SocketAddr,
    /// The primary as configured, resolved on every connect.
    primary: crate::config::PrimaryAddr,
    session: Session,
    reports: mpsc::UnboundedSender<ZoneReport>,
    /// The next message ID on this zone's own connection.
    next_id: u16,
}

impl ZoneSink {
    /// Prepares the sender of zone `zone`.
    pub fn new(
        zone: ZoneId,
        config: &ZoneConfig,
        limits: &Limits,
        reports: mpsc::UnboundedSender<ZoneReport>,
    ) -> ZoneSink {
        let budget = Budget {
            max_message_bytes: limits.max_message_bytes,
            tsig_record_len: config.key.record_len(),
        };
        // Message IDs start somewhere unpredictable (RFC 5452 §9.2 asks it of
        // queries; here it only keeps restarts from reusing IDs).
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let session = Session::new(SessionConfig {
            zone: config.name.clone(),
            key: config.key.clone(),
            budget,
            window: limits.window,
            timeout: limits.dns_timeout,
            server: config.primary.to_string(),
        });
        ZoneSink {
            zone,
            server: config.primary,
            primary: config.primary_addr.clone(),
            session,
            reports,
            next_id: (seed & 0xffff) as u16,
        }
    }

    /// Runs the zone until `input` closes and everything is acknowledged
    /// (clean stop), or until it halts.
    pub async fn run(mut self, mut input: mpsc::Receiver<Vec<Dispatch>>) {
        let mut conn: Option<Connection> = None;
        let mut input_open = true;
        let m = metrics::get();
        let label = m.series(
            &self.session.config().zone.to_string(),
            &self.server.to_string(),
        );
        let messages = m.messages.get_or_create(&label).clone();
        let bytes = m.bytes.get_or_create(&label).clone();
        let ack_seconds = m.ack_seconds.get_or_create(&label).clone();
        // When each dispatch was handed over, for the acknowledgement latency.
        let mut pushed: std::collections::VecDeque<(u64, Instant)> =
            std::collections::VecDeque::new();
        // When a connection may be tried again after a failure.
        let mut retry_at: Option<Instant> = None;
        loop {
            while let Some(event) = self.session.poll_event() {
                match event {
                    Event::Acked { upto } => {
                        while pushed.front().is_some_and(|(id, _)| *id <= upto) {
                            if let Some((_, at)) = pushed.pop_front() {
                                ack_seconds.observe(at.elapsed().as_secs_f64());
                            }
                        }
                        let _ = self.reports.send(ZoneReport::Acked {
                            zone: self.zone,
                            upto,
                        });
                    }
                    Event::Retrying {
                        lsn,
                        reason,
                        backoff,
                    } => {
                        warn!(zone = %self.session.config().zone, server = %self.server, %lsn, %reason, retry_in = ?backoff, "UPDATE not acknowledged; will resend in order");
                        m.dns_retries
                            .get_or_create(&(
                                label.clone(),
                                metrics::ReasonLabel {
                                    reason: metrics::retry_reason(&reason).into(),
                                },
                            ))
                            .inc();
                        conn = None;
                        // Waited in the select below, which keeps taking
                        // dispatches meanwhile: a zone whose server is down
                        // must not fill its queue and so hold up the others.
                        retry_at = Some(Instant::now() + backoff);
                    }
                    Event::Refused { lsn, group, rcode } => {
                        warn!(zone = %self.session.config().zone, %lsn, owner = %group.owner, %rcode, "the primary refused an owner group on its own; its rows are rejected and the stream goes on");
                        let _ = self.reports.send(ZoneReport::Refused {
                            zone: self.zone,
                            lsn,
                            group,
                            rcode,
                        });
                    }
                    Event::Halted(error) => {
                        let _ = self.reports.send(ZoneReport::Halted {
                            zone: self.zone,
                            error,
                        });
                        return;
                    }
                }
            }
            if !input_open && self.session.is_idle() {
                return;
            }
            let backing_off = retry_at.is_some_and(|t| t > Instant::now());
            if conn.is_none() && self.session.wants_connection() && !backing_off {
                retry_at = None;
                // A host name is resolved again (the server may have moved);
                // its addresses are tried in turn.
                let mut connected = Err(std::io::Error::other("no address tried"));
                match self.primary.resolve().await {
                    Ok(addrs) => {
                        for addr in addrs {
                            self.server = addr;
                            connected = Connection::connect(addr).await;
                            if connected.is_ok() {
                                break;
                            }
                        }
                    }
                    Err(e) => connected = Err(e),
                }
                match connected {
                    Ok(c) => {
                        conn = Some(c);
                        self.session.on_connected(Instant::now());
                    }
                    Err(e) => {
                        debug!(zone = %self.session.config().zone, server = %self.server, error = %e, "cannot connect");
                        self.session.on_connect_failed(Instant::now());
                    }
                }
                continue;
            }
            if let Some(c) = conn.as_mut() {
                while let Some(message) = self.session.poll_transmit(
                    Instant::now(),
                    super::axfr::unix_now(),
                    self.next_id,
                ) {
                    self.next_id = self.next_id.wrapping_add(1);
                    failpoint::hit("before-dns-send");
                    messages.inc();
                    bytes.inc_by(message.len() as u64);
                    if let Err(e) = c.send(&message).await {
                        debug!(zone = %self.session.config().zone, error = %e, "write failed");
                        self.session.on_disconnected(Instant::now());
                        conn = None;
                        break;
                    }
                    failpoint::hit("after-dns-send");
                }
            }
            let deadline = self.session.poll_timeout();
            tokio::select! {
                batch = input.recv(), if input_open && self.session.has_room() => match batch {
                    Some(batch) => {
                        let now = Instant::now();
                        for d in batch {
                            pushed.push_back((d.id, now));
                            self.session.push(d);
                        }
                        // Take what else is already waiting, so it can be coalesced.
                        while self.session.has_room() {
                            match input.try_recv() {
                                Ok(batch) => batch.into_iter().for_each(|d| {
                                    pushed.push_back((d.id, now));
                                    self.session.push(d)
                                }),
                                Err(_) => break,
                            }
                        }
                    }
                    None => input_open = false,
                },
                frame = recv(&mut conn) => match frame {
                    Some(Ok(frame)) => self.session.handle_response(&frame, Instant::now(), super::axfr::unix_now()),
                    _ => {
                        // Servers close idle connections (BIND after its
                        // tcp-idle-timeout); the session tells a loss that
                        // matters from one that does not.
                        self.session.on_disconnected(Instant::now());
                        conn = None;
                    }
                },
                _ = sleep_until(deadline) => self.session.handle_timeout(Instant::now()),
                _ = sleep_until(retry_at) => retry_at = None,
            }
        }
    }
}

async fn recv(conn: &mut Option<Connection>) -> Option<std::io::Result<Vec<u8>>> {
    match conn {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
