//! The DNS side: one ordered stream of signed UPDATEs per zone.
//!
//! Each zone has its own task and one TCP connection to its primary. Work
//! arrives as [`Dispatch`]es (the net record changes of one transaction, or
//! of one part of a large transaction), in commit order. The task packs them
//! into UPDATE messages: when the server keeps up, every dispatch goes out at
//! once; when dispatches queue up behind a full window, consecutive ones are
//! coalesced into one message up to the size budget, because the server pays
//! its per-message cost (journal write, serial bump) once.
//!
//! Order is kept with a small window of messages in flight on the one
//! connection. A server answers them in order, but a failure of message k
//! after k+1 was applied would reorder effects if only k were resent, so any
//! failure resends *everything* from k on, in order, one at a time (Knot
//! applies queued UPDATEs as one transaction, so one failure fails its
//! neighbours). Every operation is an idempotent add-RR / delete-RR, so the
//! replay converges.
//!
//! ```text
//!   Dispatch ─▶ queue ─▶ Packer ─▶ in flight (≤ window) ─▶ NOERROR ─▶ Acked{upto}
//!                                       │ SERVFAIL / timeout / disconnect
//!                                       └─▶ back off, reconnect, resend from the oldest
//!                                       │ REFUSED / NOTAUTH / BADKEY / BADSIG …
//!                                       └─▶ Halted (the operator must act)
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pg2dns_decoder::tsig::{self, SignedRequest, TsigError, TsigKey};
use pg2dns_decoder::update::{self, Budget, OwnerGroup, Packer, PushError, UpdateOp};
use pg2dns_decoder::{Lsn, ZoneId, ZoneName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::{Limits, ZoneConfig};
use crate::failpoint;

/// The net record changes of one transaction (or part of one) for one zone.
#[derive(Debug)]
pub struct Dispatch {
    /// Increasing per zone; acknowledged in order.
    pub id: u64,
    /// The commit LSN of the transaction, for messages.
    pub lsn: Lsn,
    /// Owner groups in commit order; each fits one message alone.
    pub groups: Vec<OwnerGroup>,
}

/// What a zone task tells the pipeline.
#[derive(Debug)]
pub enum ZoneReport {
    /// Every dispatch with id ≤ `upto` was acknowledged by the server.
    Acked {
        /// The zone.
        zone: ZoneId,
        /// Highest dispatch id fully acknowledged.
        upto: u64,
    },
    /// The zone cannot go on until the operator acts.
    Halted {
        /// The zone.
        zone: ZoneId,
        /// Why.
        error: SinkError,
    },
}

/// A DNS failure that needs the operator.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The server refused our TSIG key or signature.
    #[error("zone {zone}: the primary {server} rejected TSIG key {key} (LSN {lsn}); check that the key file holds the key the server allows to update this zone (BIND: allow-update or update-policy; Knot: acl)")]
    Tsig {
        /// The zone.
        zone: ZoneName,
        /// The server.
        server: std::net::SocketAddr,
        /// The key name.
        key: String,
        /// The first transaction of the refused message.
        lsn: Lsn,
        /// BADKEY, BADSIG, BADTIME or a bad response signature.
        #[source]
        source: TsigError,
    },
    /// The server answered with an error code that retrying cannot fix.
    #[error("zone {zone}: the primary {server} answered {rcode} to an UPDATE signed with key {key} (LSN {lsn}): {hint}")]
    Refused {
        /// The zone.
        zone: ZoneName,
        /// The server.
        server: std::net::SocketAddr,
        /// The key name.
        key: String,
        /// The first transaction of the refused message.
        lsn: Lsn,
        /// The RCODE mnemonic.
        rcode: &'static str,
        /// What to do.
        hint: &'static str,
    },
    /// The message could not be encoded or signed (a bug: the plan
    /// guarantees every group fits).
    #[error("zone {zone}: cannot build the UPDATE at LSN {lsn}: {reason}")]
    Encode {
        /// The zone.
        zone: ZoneName,
        /// The first transaction of the message.
        lsn: Lsn,
        /// What failed.
        reason: String,
    },
}

/// Names an RCODE and says whether a retry can fix it.
fn classify_rcode(rcode: u16) -> (&'static str, Option<&'static str>) {
    match rcode {
        2 => ("SERVFAIL", None),
        1 => ("FORMERR", Some("the server could not parse the UPDATE; report this as a pg2dns bug")),
        3 => ("NXDOMAIN", Some("a prerequisite failed")),
        4 => ("NOTIMP", Some("the server does not implement dynamic UPDATE")),
        5 => ("REFUSED", Some("the server's policy refuses this update: check allow-update/update-policy for this key and zone, and check-names")),
        6 => ("YXDOMAIN", Some("a prerequisite failed")),
        7 => ("YXRRSET", Some("a prerequisite failed")),
        8 => ("NXRRSET", Some("a prerequisite failed")),
        9 => ("NOTAUTH", Some("the server is not authoritative for this zone or did not accept the key: check the zone name and primary address")),
        10 => ("NOTZONE", Some("a record is outside the zone: check the zone configuration")),
        _ => ("an unknown RCODE", Some("see the server's log")),
    }
}

/// Dispatches a zone queues before it stops taking more.
const MAX_QUEUED_DISPATCHES: usize = 4096;
/// Operations a zone queues before it stops taking more (a few MiB).
const MAX_QUEUED_OPS: usize = 20_000;

/// One UPDATE message on its way.
struct InFlight {
    ops: Vec<UpdateOp>,
    /// The dispatch this message completes, if it holds its last owner group.
    completes: Option<u64>,
    /// The commit LSN of the first transaction in the message.
    lsn: Lsn,
    request: Option<SignedRequest>,
    sent_at: Instant,
    acked: bool,
}

/// A dispatch waiting to be packed, split into owner groups.
struct Queued {
    id: u64,
    lsn: Lsn,
    groups: VecDeque<OwnerGroup>,
}

struct Connection {
    writer: OwnedWriteHalf,
    frames: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn connect(server: std::net::SocketAddr) -> std::io::Result<Connection> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(server))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let (mut read, writer) = stream.into_split();
    let (tx, frames) = mpsc::channel(64);
    // Reading runs in its own task so that the zone loop can wait on a
    // channel, which is cancel-safe, instead of on a half-read TCP frame.
    let reader = tokio::spawn(async move {
        loop {
            let mut len = [0u8; 2];
            let frame = async {
                read.read_exact(&mut len).await?;
                let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                read.read_exact(&mut buf).await?;
                Ok(buf)
            }
            .await;
            let failed = frame.is_err();
            if tx.send(frame).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(Connection {
        writer,
        frames,
        reader,
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The per-zone sender. Runs until its input closes or it halts.
pub struct ZoneSink {
    index: ZoneId,
    zone: ZoneName,
    server: std::net::SocketAddr,
    key: TsigKey,
    budget: Budget,
    window: usize,
    timeout: Duration,
    queue: VecDeque<Queued>,
    /// Operations waiting in `queue`: bounds memory while the server is slow.
    queued_ops: usize,
    in_flight: VecDeque<InFlight>,
    packer: Packer,
    next_id: u16,
    /// After a failure: send one message at a time until the backlog that was
    /// in flight is acknowledged again.
    careful_until: usize,
    reports: mpsc::UnboundedSender<ZoneReport>,
    /// An internal failure found while packing.
    broken: Option<SinkError>,
}

impl ZoneSink {
    /// Prepares the sender of zone `index`.
    pub fn new(
        index: ZoneId,
        zone: &ZoneConfig,
        limits: &Limits,
        reports: mpsc::UnboundedSender<ZoneReport>,
    ) -> ZoneSink {
        let budget = Budget {
            max_message_bytes: limits.max_message_bytes,
            tsig_record_len: zone.key.record_len(),
        };
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        ZoneSink {
            index,
            zone: zone.name.clone(),
            server: zone.primary,
            key: zone.key.clone(),
            budget,
            window: limits.window,
            timeout: limits.dns_timeout,
            queue: VecDeque::new(),
            queued_ops: 0,
            in_flight: VecDeque::new(),
            packer: Packer::new(zone.name.clone(), budget),
            next_id: (seed & 0xffff) as u16,
            careful_until: 0,
            reports,
            broken: None,
        }
    }

    fn enqueue(&mut self, batch: Vec<Dispatch>) {
        for d in batch {
            self.enqueue_one(d);
        }
    }

    fn enqueue_one(&mut self, d: Dispatch) {
        self.queued_ops += d.groups.iter().map(|g| g.ops.len()).sum::<usize>();
        self.queue.push_back(Queued {
            id: d.id,
            lsn: d.lsn,
            groups: d.groups.into(),
        });
    }

    /// Packs the next message from the queue, coalescing dispatches.
    fn pack_next(&mut self) -> Option<InFlight> {
        let mut completes = None;
        let mut first_lsn = None;
        while let Some(front) = self.queue.front_mut() {
            if let Some(group) = front.groups.pop_front() {
                let ops = group.ops.len();
                self.queued_ops = self.queued_ops.saturating_sub(ops);
                match self.packer.try_push(group) {
                    Ok(()) => {
                        first_lsn.get_or_insert(front.lsn);
                    }
                    Err(PushError::Full(group)) => {
                        self.queued_ops += ops;
                        front.groups.push_front(group);
                        break;
                    }
                    Err(PushError::GroupTooLarge {
                        owner,
                        bytes,
                        budget,
                    }) => {
                        // The plan refuses such groups; reaching here is a bug.
                        self.queued_ops += ops;
                        self.broken = Some(SinkError::Encode {
                            zone: self.zone.clone(),
                            lsn: front.lsn,
                            reason: format!("the changes of {owner} need {bytes} bytes, over the {budget}-byte budget"),
                        });
                        return None;
                    }
                }
            }
            if front.groups.is_empty() {
                // The dispatch's last group is in this message (or it had none).
                completes = Some(front.id);
                first_lsn.get_or_insert(front.lsn);
                self.queue.pop_front();
            }
        }
        let ops = self.packer.take();
        if ops.is_empty() && completes.is_none() {
            return None;
        }
        Some(InFlight {
            ops,
            completes,
            lsn: first_lsn.unwrap_or_default(),
            request: None,
            sent_at: Instant::now(),
            acked: false,
        })
    }

    /// Whether more dispatches may be queued (memory stays bounded when the
    /// server is slower than the database).
    fn has_room(&self) -> bool {
        self.queue.len() < MAX_QUEUED_DISPATCHES && self.queued_ops < MAX_QUEUED_OPS
    }

    fn effective_window(&self) -> usize {
        if self.careful_until > 0 {
            1
        } else {
            self.window
        }
    }

    /// Sends message `i` of the in-flight list (signing it anew).
    async fn send(&mut self, conn: &mut Connection, i: usize) -> Result<(), SendFailure> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let zone = self.zone.clone();
        let msg = &mut self.in_flight[i];
        if msg.ops.is_empty() {
            msg.acked = true;
            return Ok(());
        }
        let wire = update::encode(&zone, id, &[], &msg.ops).map_err(|e| {
            SendFailure::Halt(Box::new(SinkError::Encode {
                zone: zone.clone(),
                lsn: msg.lsn,
                reason: e.to_string(),
            }))
        })?;
        let signed =
            tsig::sign(&wire, &self.key, unix_now(), tsig::DEFAULT_FUDGE).map_err(|e| {
                SendFailure::Halt(Box::new(SinkError::Encode {
                    zone: zone.clone(),
                    lsn: msg.lsn,
                    reason: e.to_string(),
                }))
            })?;
        if signed.wire.len() > self.budget.max_message_bytes {
            return Err(SendFailure::Halt(Box::new(SinkError::Encode {
                zone,
                lsn: msg.lsn,
                reason: format!(
                    "signed message is {} bytes, over the {}-byte budget",
                    signed.wire.len(),
                    self.budget.max_message_bytes
                ),
            })));
        }
        failpoint::hit("before-dns-send");
        let mut frame = Vec::with_capacity(signed.wire.len() + 2);
        frame.extend_from_slice(&(signed.wire.len() as u16).to_be_bytes());
        frame.extend_from_slice(&signed.wire);
        msg.request = Some(signed);
        msg.sent_at = Instant::now();
        msg.acked = false;
        conn.writer
            .write_all(&frame)
            .await
            .map_err(|e| SendFailure::Retry(format!("write to {}: {e}", self.server)))
    }

    /// Handles one response frame.
    fn on_response(&mut self, frame: &[u8]) -> Result<(), SendFailure> {
        let Some(id) = frame.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
            return Err(SendFailure::Retry("short response".into()));
        };
        let Some(pos) = self
            .in_flight
            .iter()
            .position(|m| m.request.as_ref().is_some_and(|r| r.id == id) && !m.acked)
        else {
            debug!(zone = %self.zone, id, "response to no message in flight; ignored");
            return Ok(());
        };
        let msg = &self.in_flight[pos];
        let request = msg
            .request
            .as_ref()
            .expect("position() checked the request");
        let lsn = msg.lsn;
        let tsig_halt = |source: TsigError| {
            SendFailure::Halt(Box::new(SinkError::Tsig {
                zone: self.zone.clone(),
                server: self.server,
                key: self.key.name.to_string(),
                lsn,
                source,
            }))
        };
        let rcode = match tsig::verify_response(frame, &self.key, request, unix_now()) {
            Ok(v) => v.rcode,
            // An unsigned error answer carries no TSIG error: judge it by
            // its RCODE. An unsigned NOERROR is never taken as success.
            Err(TsigError::Unsigned { rcode }) if rcode != 0 => rcode,
            Err(e) => return Err(tsig_halt(e)),
        };
        if rcode == 0 {
            self.in_flight[pos].acked = true;
            return Ok(());
        }
        let (name, hint) = classify_rcode(rcode);
        Err(match hint {
            None => SendFailure::Retry(format!("{name} for the UPDATE at LSN {lsn}")),
            Some(hint) => SendFailure::Halt(Box::new(SinkError::Refused {
                zone: self.zone.clone(),
                server: self.server,
                key: self.key.name.to_string(),
                lsn,
                rcode: name,
                hint,
            })),
        })
    }

    /// Pops acknowledged messages off the front and reports progress.
    fn release_acked(&mut self) {
        let mut upto = None;
        while self.in_flight.front().is_some_and(|m| m.acked) {
            let m = self.in_flight.pop_front().expect("front() was Some");
            if let Some(id) = m.completes {
                upto = Some(id);
            }
            self.careful_until = self.careful_until.saturating_sub(1);
        }
        if let Some(upto) = upto {
            let _ = self.reports.send(ZoneReport::Acked {
                zone: self.index,
                upto,
            });
        }
    }

    /// Runs the zone until `input` closes (clean stop) or a halt.
    pub async fn run(mut self, mut input: mpsc::Receiver<Vec<Dispatch>>) {
        let mut backoff = Duration::from_millis(100);
        let mut input_open = true;
        'connection: loop {
            if !input_open && self.queue.is_empty() && self.in_flight.is_empty() {
                return;
            }
            if input_open && self.queue.is_empty() && self.in_flight.is_empty() {
                // Connect when there is work to send, not before.
                match input.recv().await {
                    Some(d) => self.enqueue(d),
                    None => {
                        input_open = false;
                        continue;
                    }
                }
            }
            let mut conn = match connect(self.server).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(zone = %self.zone, server = %self.server, error = %e, retry_in = ?backoff, "cannot reach the primary; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            // Resend what was in flight when the last connection failed.
            if !self.in_flight.is_empty() {
                info!(zone = %self.zone, messages = self.in_flight.len(), "resending unacknowledged UPDATEs in order");
                self.careful_until = self.in_flight.len();
                for m in self.in_flight.iter_mut() {
                    m.acked = false;
                    m.request = None;
                }
            }
            loop {
                // Fill the window: first unsent messages, then new ones.
                let window = self.effective_window();
                let mut sent = 0;
                for i in 0..self.in_flight.len() {
                    if sent >= window {
                        break;
                    }
                    if self.in_flight[i].request.is_none() {
                        if let Err(f) = self.send(&mut conn, i).await {
                            if self.fail(f, &mut backoff).await {
                                return;
                            }
                            continue 'connection;
                        }
                    }
                    sent += 1;
                }
                self.release_acked();
                while self.in_flight.len() < self.effective_window() {
                    let Some(msg) = self.pack_next() else {
                        if let Some(error) = self.broken.take() {
                            let _ = self.reports.send(ZoneReport::Halted {
                                zone: self.index,
                                error,
                            });
                            return;
                        }
                        break;
                    };
                    self.in_flight.push_back(msg);
                    let i = self.in_flight.len() - 1;
                    if let Err(f) = self.send(&mut conn, i).await {
                        if self.fail(f, &mut backoff).await {
                            return;
                        }
                        continue 'connection;
                    }
                    self.release_acked();
                }
                if !input_open && self.queue.is_empty() && self.in_flight.is_empty() {
                    return;
                }
                let deadline = self
                    .in_flight
                    .iter()
                    .filter(|m| m.request.is_some() && !m.acked)
                    .map(|m| m.sent_at + self.timeout)
                    .min();
                tokio::select! {
                    d = input.recv(), if input_open && self.has_room() => {
                        match d {
                            Some(d) => {
                                self.enqueue(d);
                                // Take what else is already waiting, so it can be coalesced.
                                while self.has_room() {
                                    match input.try_recv() {
                                        Ok(d) => self.enqueue(d),
                                        Err(_) => break,
                                    }
                                }
                            }
                            None => input_open = false,
                        }
                    }
                    frame = conn.frames.recv() => {
                        let awaiting = self.in_flight.iter().any(|m| m.request.is_some() && !m.acked);
                        if !awaiting && !matches!(frame, Some(Ok(_))) {
                            // Servers close idle connections (BIND after its
                            // tcp-idle-timeout): reconnect when there is work.
                            debug!(zone = %self.zone, server = %self.server, "idle connection closed");
                            continue 'connection;
                        }
                        let result = match frame {
                            Some(Ok(frame)) => self.on_response(&frame),
                            Some(Err(e)) => Err(SendFailure::Retry(format!("read from {}: {e}", self.server))),
                            None => Err(SendFailure::Retry(format!("{} closed the connection", self.server))),
                        };
                        match result {
                            Ok(()) => {
                                backoff = Duration::from_millis(100);
                                self.release_acked();
                            }
                            Err(f) => {
                                if self.fail(f, &mut backoff).await {
                                    return;
                                }
                                continue 'connection;
                            }
                        }
                    }
                    _ = sleep_until(deadline) => {
                        let f = SendFailure::Retry(format!("no answer from {} within {:?}", self.server, self.timeout));
                        if self.fail(f, &mut backoff).await {
                            return;
                        }
                        continue 'connection;
                    }
                }
            }
        }
    }

    /// Handles a failure; returns true when the zone halted.
    async fn fail(&mut self, failure: SendFailure, backoff: &mut Duration) -> bool {
        match failure {
            SendFailure::Halt(error) => {
                let _ = self.reports.send(ZoneReport::Halted {
                    zone: self.index,
                    error: *error,
                });
                true
            }
            SendFailure::Retry(why) => {
                let lsn = self.in_flight.front().map(|m| m.lsn).unwrap_or_default();
                warn!(zone = %self.zone, server = %self.server, %lsn, reason = %why, retry_in = ?backoff, "UPDATE not acknowledged; will resend in order");
                tokio::time::sleep(*backoff).await;
                *backoff = (*backoff * 2).min(Duration::from_secs(5));
                false
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

enum SendFailure {
    Retry(String),
    Halt(Box<SinkError>),
}
