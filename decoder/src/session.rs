//! The per-zone send session: one ordered stream of signed UPDATEs, sans-IO.
//!
//! # Why
//!
//! Each zone gets one [`Session`]; its messages in flight share one TCP
//! connection to its primary (other zones' messages may share it too: see
//! [`crate::pool`], which also hands out the message IDs). Work
//! arrives as [`Dispatch`]es (the net changes of one transaction, or of one
//! part of a large one) in commit order, and must be applied by the server in
//! that order. The session decides what to send, when to resend and when to
//! give up; a thin driver (the streamer) owns the socket and the clock and
//! feeds the session what happened, in the style of `quinn-proto`:
//! `handle_*`/`on_*` in, `poll_*` out, the time passed in as a parameter.
//!
//! When the server keeps up, every dispatch goes out at once, alone. When
//! dispatches queue up behind a full window, consecutive ones are coalesced
//! into one message up to the size budget (whole owner groups only, in
//! order), because the server pays its per-message cost (journal write,
//! serial bump) once.
//!
//! # What the RFCs say and what the servers do
//!
//! RFC 2136 §5.2: "Multiple UPDATE requests or responses in transit might be
//! delivered in any order [...] In some cases, it might be required that the
//! earlier update not be applied after the later update". pg2dns keeps order
//! with a small window of messages on one TCP connection: BIND and Knot answer
//! them in order (`docs/notes/dns-servers.md` §3). But a failure of message
//! k after k+1 was applied would reorder effects if only k were resent, and
//! Knot merges queued UPDATEs into one transaction, so one failure fails its
//! neighbours. So any failure (SERVFAIL, a timeout, a broken connection)
//! resends *every* unreleased message, in order, one at a time, until that
//! backlog is acknowledged again ("careful" mode). That is safe because every
//! operation is an idempotent add-RR / delete-RR (RFC 2136 §5.1: "An UPDATE
//! message or response might be delivered zero times, one time, or multiple
//! times"; see [`crate::update`]).
//!
//! RFC 2136 §3.4.2.1: on a system failure the server must "signal SERVFAIL to
//! the requestor and undo all updates applied to the zone during this
//! transaction", and §4.6 has the requestor try again on SERVFAIL or when "no
//! response is received within an implementation dependent timeout period".
//! Every other RCODE (§4.5: "the requestor returns an appropriate response to
//! its caller") is a policy or configuration matter that a retry cannot fix:
//! the session halts and says why.
//!
//! RFC 8945 §5.2.1: a BADKEY answer "MUST be unsigned as specified in Section
//! 5.3.2", and so is BADSIG; BADTIME answers are signed and carry the server's
//! clock (see [`crate::tsig`]). So an unsigned *error* answer is judged by its
//! RCODE, but an unsigned NOERROR is never taken as success: anyone on the
//! path could have forged it.
//!
//! # States
//!
//! ```text
//!                push, on_connected
//!   ┌──────┐ ─────────────────────▶ ┌─────────┐  poll_transmit packs and sends up to `window`
//!   │ idle │                        │ sending │  messages; NOERROR releases them in order
//!   └──────┘ ◀───────────────────── └─────────┘  and reports Acked{upto}
//!              all acknowledged       │     ▲
//!                                     │     │ the backlog is acknowledged again:
//!   SERVFAIL, timeout, disconnect     │     │ the window resumes
//!   with answers awaited: Retrying;   ▼     │
//!   the driver backs off,       ┌────────────────┐  every unreleased message again, in
//!   reconnects, on_connected    │ careful-resend │  order, one at a time, with new IDs
//!                               └────────────────┘  and signatures
//!
//!   from any state: another RCODE, a TSIG failure, an encoding failure
//!                               ┌────────┐
//!                         ────▶ │ halted │  emits nothing more
//!                               └────────┘
//! ```
//!
//! # Driving it
//!
//! ```text
//! loop {
//!     while let Some(event) = session.poll_event() { report it; on Retrying drop the
//!         connection and sleep `backoff`; on Halted stop }
//!     if session.wants_connection() { connect: Ok → on_connected(now), Err → on_connect_failed(now) }
//!     while let Some(msg) = session.poll_transmit(now, unix_time, free_id) { write len-prefixed msg }
//!     select {
//!         dispatch from the pipeline, if session.has_room() => session.push(dispatch),
//!         frame from the connection => session.handle_response(&frame, now, unix_time),
//!         connection closed or failed => session.on_disconnected(now),
//!         sleep_until(session.poll_timeout()) => session.handle_timeout(now),
//!     }
//! }
//! ```
//!
//! The session sends nothing until [`Session::on_connected`]; a server that
//! closes an idle connection (BIND's `tcp-idle-timeout`) is normal and costs
//! no backoff.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::lsn::Lsn;
use crate::rdata::RType;
use crate::records::{Owner, ZoneName};
use crate::tsig::{self, SignedRequest, TsigError, TsigKey};
use crate::update::{
    self, Budget, EncodeError, OwnerGroup, Packer, Prerequisite, PushError, UpdateOp,
};

/// Dispatches a session queues before [`Session::has_room`] turns false.
pub const MAX_QUEUED_DISPATCHES: usize = 4096;
/// Operations a session queues before [`Session::has_room`] turns false (a
/// few MiB).
pub const MAX_QUEUED_OPS: usize = 20_000;
/// The first retry waits this long.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Each further retry waits twice as long, up to this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The net changes of one transaction (or part of one) for one zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatch {
    /// Increasing per zone; acknowledged in order ([`Event::Acked`]).
    pub id: u64,
    /// The transaction's commit LSN, for messages.
    pub lsn: Lsn,
    /// Owner groups in commit order; each fits one message on its own (the
    /// planner guarantees it).
    pub groups: Vec<OwnerGroup>,
}

/// What a session needs to know about its zone and server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// The zone every UPDATE is for.
    pub zone: ZoneName,
    /// The key every UPDATE is signed with.
    pub key: TsigKey,
    /// The size limit of one signed message.
    pub budget: Budget,
    /// Messages in flight at most (at least 1).
    pub window: usize,
    /// How long to wait for an answer before giving up on the connection.
    pub timeout: Duration,
    /// The primary's address, for messages only.
    pub server: String,
}

pub use crate::rcode::{Rcode, RcodeClass};

/// Why the session asks the driver to reconnect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryReason {
    /// The server answered SERVFAIL (it undid that message; Knot also fails
    /// every UPDATE it had merged with it).
    ServFail,
    /// No answer came within the timeout.
    Timeout {
        /// The configured timeout.
        after: Duration,
    },
    /// The connection broke or was closed while answers were awaited.
    Disconnected,
    /// The driver could not connect ([`Session::on_connect_failed`]).
    Unreachable,
    /// The server sent a frame too short to be a DNS message.
    Malformed {
        /// Its length in bytes.
        len: usize,
    },
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryReason::ServFail => f.write_str("the server answered SERVFAIL"),
            RetryReason::Timeout { after } => write!(f, "no answer within {after:?}"),
            RetryReason::Disconnected => {
                f.write_str("the connection closed while answers were awaited")
            }
            RetryReason::Unreachable => f.write_str("cannot connect to the server"),
            RetryReason::Malformed { len } => {
                write!(
                    f,
                    "the server sent a {len}-byte answer, too short for a DNS message"
                )
            }
        }
    }
}

/// Why a session stopped for good: the operator must act.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Halt {
    /// BADKEY, BADSIG, BADTIME (with the server's time), an unsigned NOERROR or
    /// an answer whose signature does not verify.
    #[error("zone {zone}: the primary {server} and pg2dns disagree on TSIG key {key} (LSN {lsn})")]
    Tsig {
        /// The zone.
        zone: ZoneName,
        /// The primary.
        server: String,
        /// The key's name.
        key: String,
        /// The first transaction of the message.
        lsn: Lsn,
        /// What was wrong.
        #[source]
        source: TsigError,
    },
    /// An RCODE a retry cannot fix: REFUSED, NOTAUTH, NOTZONE, FORMERR,
    /// NOTIMP, YXDOMAIN…
    #[error("zone {zone}: the primary {server} answered {rcode} to an UPDATE signed with key {key} (LSN {lsn}): {hint}", hint = .rcode.hint())]
    Rcode {
        /// The zone.
        zone: ZoneName,
        /// The primary.
        server: String,
        /// The key's name.
        key: String,
        /// The first transaction of the message.
        lsn: Lsn,
        /// The answer's RCODE.
        rcode: Rcode,
    },
    /// The message could not be encoded.
    #[error("zone {zone}: cannot encode an UPDATE (LSN {lsn})")]
    Encode {
        /// The zone.
        zone: ZoneName,
        /// The first transaction of the message.
        lsn: Lsn,
        /// The encoder's complaint.
        #[source]
        source: EncodeError,
    },
    /// The message could not be signed (clock out of range, too large).
    #[error("zone {zone}: cannot sign an UPDATE (LSN {lsn})")]
    Sign {
        /// The zone.
        zone: ZoneName,
        /// The first transaction of the message.
        lsn: Lsn,
        /// The signer's complaint.
        #[source]
        source: TsigError,
    },
    /// An owner group does not fit one message: the planner should have
    /// refused it; a pg2dns bug.
    #[error("zone {zone}: an owner group does not fit one UPDATE (LSN {lsn}); report this as a pg2dns bug")]
    GroupTooLarge {
        /// The zone.
        zone: ZoneName,
        /// The transaction of the group.
        lsn: Lsn,
        /// The packer's complaint.
        #[source]
        source: PushError,
    },
    /// The signed message is larger than the budget: a pg2dns bug.
    #[error("zone {zone}: the signed UPDATE is {len} bytes, over the budget of {budget} bytes (LSN {lsn}); report this as a pg2dns bug")]
    OverBudget {
        /// The zone.
        zone: ZoneName,
        /// The first transaction of the message.
        lsn: Lsn,
        /// The signed length.
        len: usize,
        /// The budget's limit.
        budget: usize,
    },
}

impl Halt {
    /// The commit LSN of the first transaction of the message that failed.
    pub fn lsn(&self) -> Lsn {
        match self {
            Halt::Tsig { lsn, .. }
            | Halt::Rcode { lsn, .. }
            | Halt::Encode { lsn, .. }
            | Halt::Sign { lsn, .. }
            | Halt::GroupTooLarge { lsn, .. }
            | Halt::OverBudget { lsn, .. } => *lsn,
        }
    }
}

/// What the session tells its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Every dispatch with id ≤ `upto` is fully acknowledged.
    Acked {
        /// The highest dispatch id acknowledged.
        upto: u64,
    },
    /// Drop the connection, wait `backoff`, reconnect and call
    /// [`Session::on_connected`]; everything unacknowledged is resent.
    Retrying {
        /// The first transaction of the message that failed.
        lsn: Lsn,
        /// Why.
        reason: RetryReason,
        /// How long to wait before reconnecting.
        backoff: Duration,
    },
    /// The server refused this owner group's additions on their own while
    /// it accepted an UPDATE it must accept (the probe): the content is at
    /// fault, not the key or the zone. The group is skipped (its deletions
    /// went in a message of their own); the pipeline rejects the rows that
    /// wanted these records.
    Refused {
        /// The transaction the group belongs to.
        lsn: Lsn,
        /// The refused additions.
        group: OwnerGroup,
        /// The server's answer.
        rcode: Rcode,
    },
    /// The session stopped; nothing follows.
    Halted(Halt),
}

/// One packed UPDATE message, from packing until released in order.
#[derive(Debug)]
struct Message {
    /// Owner groups, each with the commit LSN of its transaction. Empty for
    /// a probe.
    parts: Vec<(Lsn, OwnerGroup)>,
    /// A prerequisite-only UPDATE that any allowed key may send: it tells a
    /// refused content from a refused key or zone.
    probe: bool,
    /// The dispatch this message completes, if it holds its last group.
    completes: Option<u64>,
    /// The commit LSN of the first transaction in the message.
    lsn: Lsn,
    state: State,
}

impl Message {
    fn has_ops(&self) -> bool {
        self.probe || self.parts.iter().any(|(_, g)| !g.ops.is_empty())
    }
}

#[derive(Debug)]
enum State {
    /// Packed, not sent on the current connection.
    Unsent,
    /// Sent; the answer is awaited.
    Sent {
        /// What verifying the answer needs (its `wire` is left empty).
        request: SignedRequest,
        deadline: Instant,
    },
    /// Answered NOERROR (or holds no operation).
    Acked,
    /// Refused on its own (one group of additions); a probe goes first to
    /// tell content from policy.
    Suspect {
        /// The server's answer.
        rcode: Rcode,
    },
}

/// A dispatch waiting to be packed.
#[derive(Debug)]
struct Queued {
    id: u64,
    lsn: Lsn,
    groups: VecDeque<OwnerGroup>,
}

/// The send state machine of one zone. See the module documentation.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    packer: Packer,
    queue: VecDeque<Queued>,
    /// Operations in `queue`: bounds memory while the server is slow.
    queued_ops: usize,
    /// Packed messages not yet released, in order.
    messages: VecDeque<Message>,
    /// Messages still to be released one at a time after a reconnect.
    careful: usize,
    connected: bool,
    halted: bool,
    backoff: Duration,
    events: VecDeque<Event>,
}

impl Session {
    /// A session with nothing queued and no connection. Message IDs come
    /// from the driver ([`Session::poll_transmit`]): they must be unique per
    /// connection, and several zones may share one.
    pub fn new(config: SessionConfig) -> Session {
        let packer = Packer::new(config.zone.clone(), config.budget);
        Session {
            config,
            packer,
            queue: VecDeque::new(),
            queued_ops: 0,
            messages: VecDeque::new(),
            careful: 0,
            connected: false,
            halted: false,
            backoff: INITIAL_BACKOFF,
            events: VecDeque::new(),
        }
    }

    /// The session's configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Queues a dispatch behind the others. Its id must be larger than every
    /// id pushed before. A dispatch without operations is acknowledged as
    /// soon as everything before it is.
    pub fn push(&mut self, dispatch: Dispatch) {
        if self.halted {
            return;
        }
        let groups: VecDeque<OwnerGroup> = dispatch
            .groups
            .into_iter()
            .filter(|g| !g.ops.is_empty())
            .collect();
        if groups.is_empty() && self.queue.is_empty() {
            match self.messages.back_mut() {
                // Released when that message is, which implies all before it.
                Some(last) => last.completes = Some(dispatch.id),
                None => self.events.push_back(Event::Acked { upto: dispatch.id }),
            }
            return;
        }
        self.queued_ops += groups.iter().map(|g| g.ops.len()).sum::<usize>();
        self.queue.push_back(Queued {
            id: dispatch.id,
            lsn: dispatch.lsn,
            groups,
        });
    }

    /// Whether more dispatches may be pushed: the queue holds fewer than
    /// [`MAX_QUEUED_DISPATCHES`] dispatches and [`MAX_QUEUED_OPS`] operations.
    pub fn has_room(&self) -> bool {
        self.queue.len() < MAX_QUEUED_DISPATCHES && self.queued_ops < MAX_QUEUED_OPS
    }

    /// Nothing queued, nothing unacknowledged.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.messages.is_empty()
    }

    /// Whether the session halted; it emits nothing more.
    pub fn is_halted(&self) -> bool {
        self.halted
    }

    /// Whether the driver should open a connection now: there is work and no
    /// connection (connect when there is work, not before).
    pub fn wants_connection(&self) -> bool {
        !self.halted && !self.connected && !self.is_idle()
    }

    /// A fresh connection is up. Every unacknowledged message will be resent
    /// in order, one at a time, until those are acknowledged again; then the
    /// window resumes.
    pub fn on_connected(&mut self, _now: Instant) {
        if self.halted {
            return;
        }
        self.connected = true;
        self.reset_for_resend();
    }

    /// The connection broke or was closed. With answers awaited this is a
    /// [`RetryReason::Disconnected`] retry; when idle it is normal (servers
    /// close idle connections) and costs no backoff.
    pub fn on_disconnected(&mut self, _now: Instant) {
        if self.halted || !self.connected {
            return;
        }
        match self.first_awaiting() {
            Some(lsn) => self.retry(lsn, RetryReason::Disconnected),
            None => {
                self.connected = false;
                self.reset_for_resend();
            }
        }
    }

    /// The driver could not connect: a [`RetryReason::Unreachable`] retry
    /// with the current backoff.
    pub fn on_connect_failed(&mut self, _now: Instant) {
        if self.halted {
            return;
        }
        let lsn = self
            .messages
            .front()
            .map(|m| m.lsn)
            .or(self.queue.front().map(|q| q.lsn))
            .unwrap_or_default();
        self.retry(lsn, RetryReason::Unreachable);
    }

    /// The next signed message to write (the driver adds the TCP length
    /// prefix), with message ID `id`, or `None` when the window is full,
    /// nothing is queued, the session is not connected or it halted. Packs
    /// queued dispatches into messages as the window opens. Call it until it
    /// returns `None`, with an ID not in flight on the connection each time.
    ///
    /// The driver picks the ID because IDs must be unique per connection,
    /// not per zone, and the TSIG MAC covers the message with its ID (RFC
    /// 8945 §4.3), so it cannot be rewritten after signing. `None` did not
    /// use `id`.
    pub fn poll_transmit(&mut self, now: Instant, unix_time: u64, id: u16) -> Option<Vec<u8>> {
        if self.halted || !self.connected {
            return None;
        }
        let limit = self.limit();
        loop {
            let awaiting = self
                .messages
                .iter()
                .filter(|m| matches!(m.state, State::Sent { .. }))
                .count();
            if awaiting >= limit {
                return None;
            }
            if let Some(i) = self
                .messages
                .iter()
                .position(|m| matches!(m.state, State::Unsent))
            {
                return self.transmit(i, now, unix_time, id);
            }
            if self.messages.len() >= limit {
                return None;
            }
            let message = self.pack_next()?;
            self.messages.push_back(message);
            // A message without operations is acknowledged already.
            self.release_acked();
        }
    }

    /// Handles one answer (a whole DNS message, without the TCP length
    /// prefix). Answers to no message awaiting one are ignored.
    pub fn handle_response(&mut self, message: &[u8], _now: Instant, unix_time: u64) {
        if self.halted || !self.connected {
            return;
        }
        if message.len() < 12 {
            if let Some(lsn) = self.first_awaiting() {
                let len = message.len();
                self.retry(lsn, RetryReason::Malformed { len });
            }
            return;
        }
        let id = u16::from_be_bytes([message[0], message[1]]);
        let Some(i) = self
            .messages
            .iter()
            .position(|m| matches!(&m.state, State::Sent { request, .. } if request.id == id))
        else {
            return;
        };
        let lsn = self.messages[i].lsn;
        let State::Sent { request, .. } = &self.messages[i].state else {
            return;
        };
        let verified = tsig::verify_response(message, &self.config.key, request, unix_time);
        let rcode = match tsig::judged_rcode(verified.map(|v| v.rcode)) {
            Ok(rcode) => Rcode(rcode),
            Err(source) => {
                let zone = self.config.zone.clone();
                let server = self.config.server.clone();
                let key = self.config.key.name.to_string();
                self.halt(Halt::Tsig {
                    zone,
                    server,
                    key,
                    lsn,
                    source,
                });
                return;
            }
        };
        // The one RCODE policy (crate::rcode). A refusal may concern one
        // record rather than the key or the zone (FORMERR and NOTZONE: one
        // record malformed or out of zone; NOTAUTH, which the probe then
        // tells from a zone the server does not serve): narrowed down
        // before it halts. The stream sends no prerequisite, so one failing
        // is as fatal as the rest.
        match rcode.class() {
            RcodeClass::Accepted => {
                self.messages[i].state = State::Acked;
                self.backoff = INITIAL_BACKOFF;
                if self.messages[i].probe {
                    self.resolve_suspect(i + 1);
                }
                self.release_acked();
            }
            RcodeClass::Transient => self.retry(lsn, RetryReason::ServFail),
            RcodeClass::Refused => self.isolate(i, rcode),
            RcodeClass::Prerequisite | RcodeClass::Fatal => self.halt_rcode(lsn, rcode),
        }
    }

    fn halt_rcode(&mut self, lsn: Lsn, rcode: Rcode) {
        let halt = Halt::Rcode {
            zone: self.config.zone.clone(),
            server: self.config.server.clone(),
            key: self.config.key.name.to_string(),
            lsn,
            rcode,
        };
        self.halt(halt);
    }

    /// Narrows a refusal of message `i` down to the owner group at fault:
    ///
    /// ```text
    ///  several groups ───────────▶ one message per group, resent in order one at a time
    ///  one group, deletes + adds ▶ its deletes, then its adds, as two messages
    ///  one group of adds ────────▶ a probe first: accepted → the group is refused (Event::Refused),
    ///                                             refused → the key or zone is at fault (halt)
    ///  one group of deletes, or the probe itself ─▶ halt
    /// ```
    ///
    /// Everything after message `i` is resent too, in order, one at a time:
    /// the server may have applied some of it, and order must hold.
    fn isolate(&mut self, i: usize, rcode: Rcode) {
        let lsn = self.messages[i].lsn;
        let m = &self.messages[i];
        if m.probe {
            // The server refuses even an UPDATE it must accept.
            let refused_lsn = self.messages.get(i + 1).map(|m| m.lsn).unwrap_or(lsn);
            self.halt_rcode(refused_lsn, rcode);
            return;
        }
        let split: Option<Vec<Message>> = if m.parts.len() > 1 {
            let n = m.parts.len();
            let completes = m.completes;
            let parts = std::mem::take(&mut self.messages[i].parts);
            Some(
                parts
                    .into_iter()
                    .enumerate()
                    .map(|(k, (lsn, group))| Message {
                        parts: vec![(lsn, group)],
                        probe: false,
                        completes: if k + 1 == n { completes } else { None },
                        lsn,
                        state: State::Unsent,
                    })
                    .collect(),
            )
        } else {
            let Some((part_lsn, group)) = m.parts.first() else {
                self.halt_rcode(lsn, rcode);
                return;
            };
            let deletes: Vec<UpdateOp> = group
                .ops
                .iter()
                .filter(|op| op.is_delete())
                .cloned()
                .collect();
            let adds: Vec<UpdateOp> = group
                .ops
                .iter()
                .filter(|op| !op.is_delete())
                .cloned()
                .collect();
            match (deletes.is_empty(), adds.is_empty()) {
                (false, false) => {
                    let (part_lsn, owner) = (*part_lsn, group.owner.clone());
                    let completes = m.completes;
                    let part = |ops| Message {
                        parts: vec![(
                            part_lsn,
                            OwnerGroup {
                                owner: owner.clone(),
                                ops,
                            },
                        )],
                        probe: false,
                        completes: None,
                        lsn: part_lsn,
                        state: State::Unsent,
                    };
                    let mut adds = part(adds);
                    adds.completes = completes;
                    Some(vec![part(deletes), adds])
                }
                (true, false) => {
                    // Adds alone: probe whether the key and zone are fine.
                    self.messages[i].state = State::Suspect { rcode };
                    self.messages.insert(
                        i,
                        Message {
                            parts: Vec::new(),
                            probe: true,
                            completes: None,
                            lsn,
                            state: State::Unsent,
                        },
                    );
                    None
                }
                _ => {
                    self.halt_rcode(lsn, rcode);
                    return;
                }
            }
        };
        if let Some(replacement) = split {
            self.messages.remove(i);
            for (k, m) in replacement.into_iter().enumerate() {
                self.messages.insert(i + k, m);
            }
        }
        // Resend from the refused message on, one at a time; answers still
        // due for the old IDs are ignored.
        for m in self.messages.iter_mut().skip(i) {
            if m.has_ops() && !matches!(m.state, State::Suspect { .. }) {
                m.state = State::Unsent;
            }
        }
        self.careful = self.messages.len();
    }

    /// The probe before message `i` was accepted: its group is refused for
    /// its content; report it and move on.
    fn resolve_suspect(&mut self, i: usize) {
        let Some(m) = self.messages.get_mut(i) else {
            return;
        };
        let State::Suspect { rcode } = m.state else {
            return;
        };
        m.state = State::Acked;
        for (lsn, group) in std::mem::take(&mut m.parts) {
            self.events.push_back(Event::Refused { lsn, group, rcode });
        }
    }

    /// The earliest answer deadline of a message in flight: call
    /// [`Session::handle_timeout`] when it passes.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.halted || !self.connected {
            return None;
        }
        self.messages
            .iter()
            .filter_map(|m| match m.state {
                State::Sent { deadline, .. } => Some(deadline),
                _ => None,
            })
            .min()
    }

    /// Checks the deadlines against `now`: one that passed is a
    /// [`RetryReason::Timeout`] retry.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.halted || !self.connected {
            return;
        }
        let expired = self
            .messages
            .iter()
            .filter_map(|m| match m.state {
                State::Sent { deadline, .. } if deadline <= now => Some((deadline, m.lsn)),
                _ => None,
            })
            .min_by_key(|(deadline, _)| *deadline);
        if let Some((_, lsn)) = expired {
            let after = self.config.timeout;
            self.retry(lsn, RetryReason::Timeout { after });
        }
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Messages in flight at most now: one while a backlog is resent.
    fn limit(&self) -> usize {
        if self.careful > 0 {
            1
        } else {
            self.config.window.max(1)
        }
    }

    /// The LSN of the first message whose answer is awaited.
    fn first_awaiting(&self) -> Option<Lsn> {
        self.messages
            .iter()
            .find(|m| matches!(m.state, State::Sent { .. }))
            .map(|m| m.lsn)
    }

    /// Marks every unreleased message for resending, in order, one at a
    /// time. Acknowledged ones too: they follow an unacknowledged one, and
    /// applying that one again after them would reorder effects.
    fn reset_for_resend(&mut self) {
        for m in &mut self.messages {
            if m.has_ops() && !matches!(m.state, State::Suspect { .. }) {
                m.state = State::Unsent;
            }
        }
        self.careful = self.messages.len();
    }

    fn retry(&mut self, lsn: Lsn, reason: RetryReason) {
        self.connected = false;
        self.reset_for_resend();
        self.events.push_back(Event::Retrying {
            lsn,
            reason,
            backoff: self.backoff,
        });
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn halt(&mut self, halt: Halt) {
        self.halted = true;
        self.connected = false;
        self.events.push_back(Event::Halted(halt));
    }

    /// Packs the next message from the queue, coalescing dispatches; `None`
    /// when the queue is empty or the session halted.
    fn pack_next(&mut self) -> Option<Message> {
        let mut completes = None;
        let mut first_lsn = None;
        let mut lsns = Vec::new();
        while let Some(front) = self.queue.front_mut() {
            if let Some(group) = front.groups.pop_front() {
                let ops = group.ops.len();
                match self.packer.try_push(group) {
                    Ok(()) => {
                        self.queued_ops = self.queued_ops.saturating_sub(ops);
                        first_lsn.get_or_insert(front.lsn);
                        lsns.push(front.lsn);
                    }
                    Err(PushError::Full(group)) => {
                        front.groups.push_front(group);
                        break;
                    }
                    Err(source) => {
                        let halt = Halt::GroupTooLarge {
                            zone: self.config.zone.clone(),
                            lsn: front.lsn,
                            source,
                        };
                        self.halt(halt);
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
        let parts: Vec<(Lsn, OwnerGroup)> =
            lsns.into_iter().zip(self.packer.take_groups()).collect();
        if parts.is_empty() && completes.is_none() {
            return None;
        }
        let state = if parts.is_empty() {
            State::Acked
        } else {
            State::Unsent
        };
        Some(Message {
            parts,
            probe: false,
            completes,
            lsn: first_lsn.unwrap_or_default(),
            state,
        })
    }

    /// Encodes and signs message `i` with ID `id`.
    fn transmit(&mut self, i: usize, now: Instant, unix_time: u64, id: u16) -> Option<Vec<u8>> {
        let zone = self.config.zone.clone();
        let lsn = self.messages[i].lsn;
        let message = &self.messages[i];
        let encoded = if message.probe {
            let apex = Owner::from_name(zone.name().clone());
            let soa = Prerequisite::RrsetExists {
                owner: apex,
                rtype: RType::SOA,
            };
            update::encode(&zone, id, &[soa], &[])
        } else {
            let ops: Vec<UpdateOp> = message
                .parts
                .iter()
                .flat_map(|(_, g)| g.ops.iter().cloned())
                .collect();
            update::encode(&zone, id, &[], &ops)
        };
        let wire = match encoded {
            Ok(wire) => wire,
            Err(source) => {
                self.halt(Halt::Encode { zone, lsn, source });
                return None;
            }
        };
        let mut request = match tsig::sign(&wire, &self.config.key, unix_time, tsig::DEFAULT_FUDGE)
        {
            Ok(request) => request,
            Err(source) => {
                self.halt(Halt::Sign { zone, lsn, source });
                return None;
            }
        };
        let budget = self.config.budget.limit();
        if request.wire.len() > budget {
            let len = request.wire.len();
            self.halt(Halt::OverBudget {
                zone,
                lsn,
                len,
                budget,
            });
            return None;
        }
        let wire = std::mem::take(&mut request.wire);
        self.messages[i].state = State::Sent {
            request,
            deadline: now + self.config.timeout,
        };
        Some(wire)
    }

    /// Releases acknowledged messages off the front, in order, and reports
    /// the highest dispatch they complete.
    fn release_acked(&mut self) {
        let mut upto = None;
        while self
            .messages
            .front()
            .is_some_and(|m| matches!(m.state, State::Acked))
        {
            if let Some(m) = self.messages.pop_front() {
                upto = m.completes.or(upto);
            }
            self.careful = self.careful.saturating_sub(1);
        }
        if let Some(upto) = upto {
            self.events.push_back(Event::Acked { upto });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Record;
    use crate::tsig::Algorithm;
    use crate::update::group_by_owner;

    /// Our clock in seconds since the epoch, and the fake server's.
    const NOW: u64 = 1_795_419_587;
    const SECRET: [u8; 32] = [0x5a; 32];
    const TIMEOUT: Duration = Duration::from_secs(2);

    fn zone() -> ZoneName {
        ZoneName::parse("example.test.").unwrap()
    }

    fn key() -> TsigKey {
        TsigKey::new("k-sha256", Algorithm::HmacSha256, SECRET.to_vec()).unwrap()
    }

    /// An owner group adding `n` A records at `label`.example.test.
    fn group_of(label: &str, n: usize) -> OwnerGroup {
        let ops = (1..=n)
            .map(|i| {
                let owner = format!("{label}.example.test.");
                UpdateOp::Add(Record::parse(&owner, 300, "A", &format!("192.0.2.{i}")).unwrap())
            })
            .collect();
        group_by_owner(ops).remove(0)
    }

    fn lsn_of(id: u64) -> Lsn {
        Lsn::new(0x16_0000_0000 + 0x100 * id)
    }

    /// Dispatch `id` with one single-record group per label.
    fn dispatch(id: u64, labels: &[&str]) -> Dispatch {
        Dispatch {
            id,
            lsn: lsn_of(id),
            groups: labels.iter().map(|l| group_of(l, 1)).collect(),
        }
    }

    /// Dispatch `id` with one record at `d<id>` (two-character labels for
    /// ids below 10).
    fn one(id: u64) -> Dispatch {
        dispatch(id, &[&format!("d{id}")])
    }

    /// A budget that holds exactly `n` single-record groups with
    /// two-character labels, TSIG included.
    fn budget_for(n: usize) -> Budget {
        let tsig_record_len = key().record_len();
        let mut packer = Packer::new(
            zone(),
            Budget {
                max_message_bytes: 65_535,
                tsig_record_len,
            },
        );
        for i in 0..n {
            packer.try_push(group_of(&format!("x{i}"), 1)).unwrap();
        }
        Budget {
            max_message_bytes: packer.estimated_size() + tsig_record_len,
            tsig_record_len,
        }
    }

    fn session(window: usize, budget: Budget) -> Session {
        let config = SessionConfig {
            zone: zone(),
            key: key(),
            budget,
            window,
            timeout: TIMEOUT,
            server: "192.0.2.53:53".into(),
        };
        // Close to the end of the ID space: IDs wrap.
        NEXT_ID.with(|n| n.set(0xfffe));
        Session::new(config)
    }

    thread_local! {
        /// The fake driver's next message ID (one connection per test).
        static NEXT_ID: std::cell::Cell<u16> = const { std::cell::Cell::new(0) };
    }

    /// What a driver does: offers the next ID, and moves on only when the
    /// session used it.
    fn poll(s: &mut Session, now: Instant) -> Option<Vec<u8>> {
        let id = NEXT_ID.with(|n| n.get());
        let wire = s.poll_transmit(now, NOW, id)?;
        NEXT_ID.with(|n| n.set(id.wrapping_add(1)));
        Some(wire)
    }

    fn events(s: &mut Session) -> Vec<Event> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    /// Everything `poll_transmit` gives now, as the fake server reads it.
    fn transmit_all(s: &mut Session, now: Instant) -> Vec<Request> {
        std::iter::from_fn(|| poll(s, now))
            .map(|wire| Request::parse(&wire))
            .collect()
    }

    /// An UPDATE as the fake server sees it.
    #[derive(Clone, Debug)]
    struct Request {
        id: u16,
        mac: Vec<u8>,
        /// The first label of each update RR's owner, in order.
        owners: Vec<String>,
        /// Whether each update RR deletes (class NONE).
        deletes: Vec<bool>,
        /// Prerequisite RRs.
        prereqs: usize,
        len: usize,
    }

    impl Request {
        /// Splits off the TSIG record (last, with a 32-byte MAC and empty
        /// Other Data) and reads the rest with hickory.
        fn parse(wire: &[u8]) -> Request {
            let at = wire.len() - key().record_len();
            let mut unsigned = wire[..at].to_vec();
            assert_eq!(&unsigned[10..12], &[0, 1], "one additional RR: the TSIG");
            unsigned[10..12].copy_from_slice(&[0, 0]);
            let message = hickory_proto::op::Message::from_vec(&unsigned).unwrap();
            let owners = message
                .authorities
                .iter()
                .map(|r| r.name.to_string().split('.').next().unwrap().to_owned())
                .collect();
            let deletes = message
                .authorities
                .iter()
                .map(|r| u16::from(r.dns_class) == 254)
                .collect();
            Request {
                id: u16::from_be_bytes([wire[0], wire[1]]),
                mac: wire[wire.len() - 6 - 32..wire.len() - 6].to_vec(),
                owners,
                deletes,
                prereqs: message.answers.len(),
                len: wire.len(),
            }
        }
    }

    /// A response header (QR, opcode UPDATE, `rcode`) and the zone section.
    fn unsigned(request: &Request, rcode: u16) -> Vec<u8> {
        let mut b = request.id.to_be_bytes().to_vec();
        b.extend_from_slice(&(0xA800 | rcode).to_be_bytes());
        b.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        b.extend_from_slice(zone().name().as_wire());
        b.extend_from_slice(&[0, 6, 0, 1]);
        b
    }

    /// The response a server holding `SECRET` signs (RFC 8945 §4.3.3: request
    /// MAC length and MAC ‖ response without TSIG ‖ TSIG variables).
    fn signed(request: &Request, rcode: u16, error: u16, other: &[u8]) -> Vec<u8> {
        let key_name = b"\x08k-sha256\x00";
        let algorithm = b"\x0bhmac-sha256\x00";
        let body = unsigned(request, rcode);
        let mut variables = key_name.to_vec();
        variables.extend_from_slice(&[0, 255, 0, 0, 0, 0]); // CLASS ANY, TTL 0
        variables.extend_from_slice(algorithm);
        variables.extend_from_slice(&NOW.to_be_bytes()[2..]);
        variables.extend_from_slice(&tsig::DEFAULT_FUDGE.to_be_bytes());
        let mut tail = error.to_be_bytes().to_vec();
        tail.extend_from_slice(&(other.len() as u16).to_be_bytes());
        tail.extend_from_slice(other);

        let mut digest = (request.mac.len() as u16).to_be_bytes().to_vec();
        digest.extend_from_slice(&request.mac);
        digest.extend_from_slice(&body);
        digest.extend_from_slice(&variables);
        digest.extend_from_slice(&tail);
        let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &SECRET);
        let mac = ring::hmac::sign(&hmac_key, &digest);

        let mut wire = body;
        wire[10..12].copy_from_slice(&[0, 1]);
        wire.extend_from_slice(key_name);
        wire.extend_from_slice(&[0, 250, 0, 255, 0, 0, 0, 0]); // TSIG ANY, TTL 0
        let rdlength = algorithm.len() + 16 + mac.as_ref().len() + other.len();
        wire.extend_from_slice(&(rdlength as u16).to_be_bytes());
        wire.extend_from_slice(algorithm);
        wire.extend_from_slice(&NOW.to_be_bytes()[2..]);
        wire.extend_from_slice(&tsig::DEFAULT_FUDGE.to_be_bytes());
        wire.extend_from_slice(&(mac.as_ref().len() as u16).to_be_bytes());
        wire.extend_from_slice(mac.as_ref());
        wire.extend_from_slice(&request.id.to_be_bytes());
        wire.extend_from_slice(&tail);
        wire
    }

    fn noerror(request: &Request) -> Vec<u8> {
        signed(request, 0, 0, &[])
    }

    /// BIND's BADKEY answer captured in `tests/fixtures/tsig/badkey.txt`,
    /// its header ID and TSIG Original ID set to `request`'s.
    fn captured_badkey(request: &Request) -> Vec<u8> {
        let text = include_str!("../tests/fixtures/tsig/badkey.txt");
        let hex = text
            .lines()
            .find_map(|l| l.strip_prefix("response "))
            .unwrap()
            .trim();
        let mut wire: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let len = wire.len();
        wire[0..2].copy_from_slice(&request.id.to_be_bytes());
        wire[len - 6..len - 4].copy_from_slice(&request.id.to_be_bytes());
        wire
    }

    fn halt_of(events: &[Event]) -> &Halt {
        match events {
            [Event::Halted(halt)] => halt,
            other => panic!("expected one Halted event, got {other:?}"),
        }
    }

    #[test]
    fn nothing_is_sent_before_a_connection_is_up() {
        let t0 = Instant::now();
        let mut s = session(4, budget_for(3));
        assert!(!s.wants_connection());
        s.push(one(1));
        assert!(s.wants_connection());
        assert!(poll(&mut s, t0).is_none());
        assert_eq!(s.poll_timeout(), None);
        s.on_connected(t0);
        assert!(!s.wants_connection());
        assert_eq!(transmit_all(&mut s, t0).len(), 1);
    }

    #[test]
    fn a_lone_dispatch_goes_out_at_once_and_is_acked() {
        let t0 = Instant::now();
        let mut s = session(4, budget_for(3));
        s.on_connected(t0);
        s.push(one(1));
        let sent = transmit_all(&mut s, t0);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].owners, ["d1"]);
        assert_eq!(sent[0].id, 0xfffe);
        assert_eq!(s.poll_timeout(), Some(t0 + TIMEOUT));
        assert!(events(&mut s).is_empty());
        s.handle_response(&noerror(&sent[0]), t0, NOW);
        assert_eq!(events(&mut s), [Event::Acked { upto: 1 }]);
        assert!(s.is_idle());
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn queued_dispatches_coalesce_into_one_message_up_to_the_budget_and_never_split_a_group() {
        let t0 = Instant::now();
        let budget = budget_for(3);
        let mut s = session(1, budget);
        s.on_connected(t0);
        s.push(dispatch(1, &["a1", "a2"]));
        s.push(Dispatch {
            id: 2,
            lsn: lsn_of(2),
            groups: vec![group_of("b1", 2)],
        });
        s.push(dispatch(3, &["c1"]));
        s.push(dispatch(4, &["e1", "e2", "e3", "e4"]));

        // b1's two records take more room than a third single record: the
        // group waits for the next message rather than being split.
        let first = transmit_all(&mut s, t0);
        assert_eq!(first.len(), 1, "window of one");
        assert_eq!(first[0].owners, ["a1", "a2"]);
        s.handle_response(&noerror(&first[0]), t0, NOW);
        assert_eq!(events(&mut s), [Event::Acked { upto: 1 }]);

        let second = transmit_all(&mut s, t0);
        assert_eq!(second[0].owners, ["b1", "b1", "c1"]);
        s.handle_response(&noerror(&second[0]), t0, NOW);
        assert_eq!(events(&mut s), [Event::Acked { upto: 3 }]);

        // A dispatch larger than one message spans two; it is acknowledged
        // with the message holding its last group.
        let third = transmit_all(&mut s, t0);
        assert_eq!(third[0].owners, ["e1", "e2", "e3"]);
        s.handle_response(&noerror(&third[0]), t0, NOW);
        assert!(events(&mut s).is_empty());
        let fourth = transmit_all(&mut s, t0);
        assert_eq!(fourth[0].owners, ["e4"]);
        s.handle_response(&noerror(&fourth[0]), t0, NOW);
        assert_eq!(events(&mut s), [Event::Acked { upto: 4 }]);

        for r in [&first[0], &second[0], &third[0], &fourth[0]] {
            assert!(r.len <= budget.max_message_bytes, "{} bytes", r.len);
        }
    }

    #[test]
    fn the_window_limits_messages_in_flight() {
        let t0 = Instant::now();
        let mut s = session(2, budget_for(1));
        s.on_connected(t0);
        for id in 1..=4 {
            s.push(one(id));
        }
        let sent = transmit_all(&mut s, t0);
        assert_eq!(sent.len(), 2);
        assert_eq!([sent[0].id, sent[1].id], [0xfffe, 0xffff]);
        s.handle_response(&noerror(&sent[0]), t0, NOW);
        assert_eq!(events(&mut s), [Event::Acked { upto: 1 }]);
        let third = transmit_all(&mut s, t0);
        assert_eq!(third.len(), 1);
        assert_eq!(third[0].owners, ["d3"]);
        assert_eq!(third[0].id, 0, "IDs wrap");
        s.handle_response(&noerror(&sent[1]), t0, NOW);
        s.handle_response(&noerror(&third[0]), t0, NOW);
        assert_eq!(
            events(&mut s),
            [Event::Acked { upto: 2 }, Event::Acked { upto: 3 }]
        );
        assert_eq!(transmit_all(&mut s, t0)[0].owners, ["d4"]);
    }

    #[test]
    fn servfail_on_message_k_resends_k_and_everything_after_it_in_order_one_at_a_time_then_resumes_the_window(
    ) {
        let t0 = Instant::now();
        let mut s = session(3, budget_for(1));
        s.on_connected(t0);
        for id in 1..=3 {
            s.push(one(id));
        }
        let sent = transmit_all(&mut s, t0);
        assert_eq!(sent.len(), 3);
        s.handle_response(&noerror(&sent[0]), t0, NOW);
        // Message 3 was applied before message 2 failed: resending only 2
        // would apply it after 3.
        s.handle_response(&noerror(&sent[2]), t0, NOW);
        s.handle_response(&signed(&sent[1], 2, 0, &[]), t0, NOW);
        assert_eq!(
            events(&mut s),
            [
                Event::Acked { upto: 1 },
                Event::Retrying {
                    lsn: lsn_of(2),
                    reason: RetryReason::ServFail,
                    backoff: INITIAL_BACKOFF,
                }
            ]
        );
        assert!(poll(&mut s, t0).is_none(), "the driver reconnects first");
        assert!(s.wants_connection());

        let t1 = t0 + INITIAL_BACKOFF;
        s.on_connected(t1);
        let resent = transmit_all(&mut s, t1);
        assert_eq!(resent.len(), 1, "one at a time");
        assert_eq!(resent[0].owners, ["d2"]);
        assert_ne!(resent[0].id, sent[1].id, "a resend gets a new ID");
        assert_ne!(resent[0].mac, sent[1].mac, "and a new signature");
        // The old ID means nothing any more.
        s.handle_response(&noerror(&sent[1]), t1, NOW);
        assert!(events(&mut s).is_empty());
        s.handle_response(&noerror(&resent[0]), t1, NOW);
        assert_eq!(events(&mut s), [Event::Acked { upto: 2 }]);

        let resent = transmit_all(&mut s, t1);
        assert_eq!(resent.len(), 1);
        assert_eq!(resent[0].owners, ["d3"]);
        s.handle_response(&noerror(&resent[0]), t1, NOW);
        assert_eq!(events(&mut s), [Event::Acked { upto: 3 }]);

        for id in 4..=7 {
            s.push(one(id));
        }
        let sent = transmit_all(&mut s, t1);
        let owners: Vec<_> = sent.iter().map(|r| r.owners.concat()).collect();
        assert_eq!(owners, ["d4", "d5", "d6"], "the window is back");
    }

    #[test]
    fn a_timeout_is_retried_with_a_growing_backoff_that_resets_after_an_answer() {
        let t0 = Instant::now();
        let mut s = session(1, budget_for(1));
        s.on_connected(t0);
        s.push(one(1));
        let mut sent = transmit_all(&mut s, t0);
        assert_eq!(s.poll_timeout(), Some(t0 + TIMEOUT));
        s.handle_timeout(t0 + TIMEOUT / 2);
        assert!(events(&mut s).is_empty());

        let mut now = t0;
        let mut backoffs = Vec::new();
        for _ in 0..8 {
            now += TIMEOUT;
            s.handle_timeout(now);
            match events(&mut s).as_slice() {
                [Event::Retrying {
                    lsn,
                    reason,
                    backoff,
                }] => {
                    assert_eq!(*lsn, lsn_of(1));
                    assert_eq!(*reason, RetryReason::Timeout { after: TIMEOUT });
                    backoffs.push(backoff.as_millis());
                }
                other => panic!("expected a retry, got {other:?}"),
            }
            assert_eq!(s.poll_timeout(), None);
            s.on_connected(now);
            sent = transmit_all(&mut s, now);
            assert_eq!(sent.len(), 1);
        }
        assert_eq!(backoffs, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);

        s.handle_response(&noerror(&sent[0]), now, NOW);
        assert_eq!(events(&mut s), [Event::Acked { upto: 1 }]);
        s.push(one(2));
        transmit_all(&mut s, now);
        s.handle_timeout(now + TIMEOUT);
        assert!(matches!(
            events(&mut s).as_slice(),
            [Event::Retrying { backoff, .. }] if *backoff == INITIAL_BACKOFF
        ));
    }

    #[test]
    fn a_disconnect_while_idle_is_no_retry() {
        let t0 = Instant::now();
        let mut s = session(2, budget_for(1));
        s.on_connected(t0);
        s.push(one(1));
        let sent = transmit_all(&mut s, t0);
        s.handle_response(&noerror(&sent[0]), t0, NOW);
        s.on_disconnected(t0);
        assert_eq!(events(&mut s), [Event::Acked { upto: 1 }]);
        assert!(!s.wants_connection());

        s.push(one(2));
        assert!(s.wants_connection());
        s.on_connected(t0);
        assert_eq!(transmit_all(&mut s, t0)[0].owners, ["d2"]);
    }

    #[test]
    fn a_disconnect_with_answers_awaited_is_retried() {
        let t0 = Instant::now();
        let mut s = session(2, budget_for(1));
        s.on_connected(t0);
        s.push(one(1));
        s.push(one(2));
        let sent = transmit_all(&mut s, t0);
        s.handle_response(&noerror(&sent[0]), t0, NOW);
        s.on_disconnected(t0);
        // The driver drops the connection after a retry; a second notice
        // changes nothing.
        s.on_disconnected(t0);
        assert_eq!(
            events(&mut s),
            [
                Event::Acked { upto: 1 },
                Event::Retrying {
                    lsn: lsn_of(2),
                    reason: RetryReason::Disconnected,
                    backoff: INITIAL_BACKOFF,
                }
            ]
        );
    }

    #[test]
    fn a_failed_connect_is_retried_with_backoff() {
        let t0 = Instant::now();
        let mut s = session(2, budget_for(1));
        s.push(one(1));
        s.on_connect_failed(t0);
        s.on_connect_failed(t0);
        let backoffs: Vec<_> = events(&mut s)
            .into_iter()
            .map(|e| match e {
                Event::Retrying {
                    lsn,
                    reason: RetryReason::Unreachable,
                    backoff,
                } if lsn == lsn_of(1) => backoff,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(backoffs, [INITIAL_BACKOFF, INITIAL_BACKOFF * 2]);
    }

    #[test]
    fn an_unsigned_noerror_is_not_success() {
        let t0 = Instant::now();
        let mut s = session(2, budget_for(1));
        s.on_connected(t0);
        s.push(one(1));
        let sent = transmit_all(&mut s, t0);
        s.handle_response(&unsigned(&sent[0], 0), t0, NOW);
        let events = events(&mut s);
        assert_eq!(
            halt_of(&events),
            &Halt::Tsig {
                zone: zone(),
                server: "192.0.2.53:53".into(),
                key: "k-sha256.".into(),
                lsn: lsn_of(1),
                source: TsigError::Unsigned { rcode: 0 },
            }
        );
        assert!(s.is_halted());
    }

    #[test]
    fn an_unsigned_badkey_answer_halts_with_the_tsig_error() {
        let t0 = Instant::now();
        let mut s = session(2, budget_for(1));
        s.on_connected(t0);
        s.push(one(1));
        let sent = transmit_all(&mut s, t0);
        s.handle_response(&captured_badkey(&sent[0]), t0, NOW);
        let events = events(&mut s);
        let halt = halt_of(&events);
        assert!(matches!(
            halt,
            Halt::Tsig { source: TsigError::BadKey { key }, lsn, .. }
                if key == "k-sha256." && *lsn == lsn_of(1)
        ));
        assert_eq!(
            crate::error_chain(halt),
            "zone example.test.: the primary 192.0.2.53:53 and pg2dns disagree on TSIG key k-sha256. (LSN 16/100): \
             server does not know key k-sha256. or its algorithm (TSIG error BADKEY): check the key name and algorithm in the server's configuration"
        );
    }

    #[test]
    fn an_unsigned_notauth_is_judged_by_its_rcode_after_a_probe() {
        let t0 = Instant::now();
        let mut s = session(2, budget_for(1));
        s.on_connected(t0);
        s.push(one(1));
        let sent = transmit_all(&mut s, t0);
        // Knot, for a zone it does not serve: NOTAUTH without any TSIG. One
        // group of additions: a probe tells content from policy.
        s.handle_response(&unsigned(&sent[0], 9), t0, NOW);
        assert!(events(&mut s).is_empty());
        let probe = transmit_all(&mut s, t0);
        assert_eq!(probe.len(), 1);
        assert_eq!((probe[0].prereqs, probe[0].owners.len()), (1, 0));
        s.handle_response(&unsigned(&probe[0], 9), t0, NOW);
        let events = events(&mut s);
        assert!(matches!(
            halt_of(&events),
            Halt::Rcode {
                rcode: Rcode::NOTAUTH,
                lsn,
                ..
            } if *lsn == lsn_of(1)
        ));
    }

    #[test]
    fn a_signed_badtime_answer_halts_with_the_server_time() {
        let t0 = Instant::now();
        let mut s = session(2, budget_for(1));
        s.on_connected(t0);
        s.push(one(1));
        let sent = transmit_all(&mut s, t0);
        let server_time = NOW + 1000;
        let answer = signed(&sent[0], 9, 18, &server_time.to_be_bytes()[2..]);
        s.handle_response(&answer, t0, NOW);
        let events = events(&mut s);
        assert!(matches!(
            halt_of(&events),
            Halt::Tsig { source: TsigError::BadTime { server_time: t, our_time, .. }, .. }
                if *t == server_time && *our_time == NOW
        ));
    }

    #[test]
    fn an_answer_with_a_bad_signature_halts() {
        let t0 = Instant::now();
        let mut s = session(2, budget_for(1));
        s.on_connected(t0);
        s.push(one(1));
        let sent = transmit_all(&mut s, t0);
        let mut answer = noerror(&sent[0]);
        let at = answer.len() - 10;
        answer[at] ^= 1; // inside the MAC
        s.handle_response(&answer, t0, NOW);
        let events = events(&mut s);
        assert!(matches!(
            halt_of(&events),
            Halt::Tsig {
                source: TsigError::BadMac { .. },
                ..
            }
        ));
    }

    #[test]
    fn refused_even_for_the_probe_halts_with_the_lsn_of_the_refused_transaction() {
        let t0 = Instant::now();
        let mut s = session(1, budget_for(3));
        s.on_connected(t0);
        s.push(one(1));
        let first = transmit_all(&mut s, t0);
        s.push(one(2));
        s.push(one(3));
        s.handle_response(&noerror(&first[0]), t0, NOW);
        let second = transmit_all(&mut s, t0);
        assert_eq!(second[0].owners, ["d2", "d3"]);
        // Refused as a whole: the groups go one at a time.
        s.handle_response(&signed(&second[0], 5, 0, &[]), t0, NOW);
        assert_eq!(events(&mut s), [Event::Acked { upto: 1 }]);
        let alone = transmit_all(&mut s, t0);
        assert_eq!(alone.len(), 1, "one at a time");
        assert_eq!(alone[0].owners, ["d2"]);
        s.handle_response(&signed(&alone[0], 5, 0, &[]), t0, NOW);
        let probe = transmit_all(&mut s, t0);
        assert_eq!((probe[0].prereqs, probe[0].owners.len()), (1, 0));
        // A key that may not update the zone, or a frozen zone, refuses
        // the probe too: policy, not content.
        s.handle_response(&signed(&probe[0], 5, 0, &[]), t0, NOW);
        let events = events(&mut s);
        let halt = halt_of(&events);
        assert_eq!(
            halt,
            &Halt::Rcode {
                zone: zone(),
                server: "192.0.2.53:53".into(),
                key: "k-sha256.".into(),
                lsn: lsn_of(2),
                rcode: Rcode::REFUSED,
            }
        );
        assert!(
            halt.to_string().contains("whether the zone is frozen"),
            "{halt}"
        );
    }

    #[test]
    fn a_refused_group_among_others_is_isolated_and_everything_else_is_published() {
        let t0 = Instant::now();
        let mut s = session(4, budget_for(3));
        s.on_connected(t0);
        s.push(dispatch(1, &["d1", "d2", "d3"]));
        let sent = transmit_all(&mut s, t0);
        assert_eq!(sent[0].owners, ["d1", "d2", "d3"]);
        s.handle_response(&signed(&sent[0], 5, 0, &[]), t0, NOW);
        let mut published = Vec::new();
        let mut refused = Vec::new();
        let mut acked = Vec::new();
        for _ in 0..10 {
            let out = transmit_all(&mut s, t0);
            assert!(out.len() <= 1, "one at a time while isolating");
            let Some(m) = out.first() else { break };
            // The server refuses any message holding d2's addition.
            let rcode = if m.owners.iter().any(|o| o == "d2") {
                5
            } else {
                0
            };
            if rcode == 0 {
                published.extend(m.owners.clone());
            }
            s.handle_response(&signed(m, rcode, 0, &[]), t0, NOW);
            for e in events(&mut s) {
                match e {
                    Event::Refused { group, rcode, lsn } => {
                        assert_eq!((rcode, lsn), (Rcode::REFUSED, lsn_of(1)));
                        refused.push(group.owner.to_string());
                    }
                    Event::Acked { upto } => acked.push(upto),
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(published, ["d1", "d3"]);
        assert_eq!(refused, ["d2.example.test."]);
        assert_eq!(acked, [1]);
        assert!(s.is_idle());
        // The window is back.
        s.push(one(2));
        s.push(one(3));
        assert_eq!(transmit_all(&mut s, t0).len(), 1, "coalesced again");
    }

    #[test]
    fn a_refused_replacement_sends_its_deletes_alone_before_its_additions() {
        let t0 = Instant::now();
        let mut s = session(2, budget_for(3));
        s.on_connected(t0);
        let owner = "r.example.test.";
        let ops = vec![
            UpdateOp::Delete(Record::parse(owner, 300, "A", "192.0.2.1").unwrap()),
            UpdateOp::Add(Record::parse(owner, 300, "A", "192.0.2.2").unwrap()),
        ];
        s.push(Dispatch {
            id: 1,
            lsn: lsn_of(1),
            groups: group_by_owner(ops),
        });
        let sent = transmit_all(&mut s, t0);
        assert_eq!(sent[0].deletes, [true, false]);
        s.handle_response(&signed(&sent[0], 5, 0, &[]), t0, NOW);
        let deletes = transmit_all(&mut s, t0);
        assert_eq!(deletes[0].deletes, [true]);
        s.handle_response(&noerror(&deletes[0]), t0, NOW);
        let adds = transmit_all(&mut s, t0);
        assert_eq!(adds[0].deletes, [false]);
        s.handle_response(&signed(&adds[0], 5, 0, &[]), t0, NOW);
        let probe = transmit_all(&mut s, t0);
        assert_eq!(probe[0].prereqs, 1);
        s.handle_response(&noerror(&probe[0]), t0, NOW);
        let events = events(&mut s);
        assert!(
            matches!(&events[..], [Event::Refused { group, .. }, Event::Acked { upto: 1 }] if group.ops.len() == 1 && !group.ops[0].is_delete()),
            "{events:?}"
        );
    }

    #[test]
    fn after_a_halt_the_session_emits_nothing_more() {
        let t0 = Instant::now();
        let mut s = session(2, budget_for(1));
        s.on_connected(t0);
        s.push(one(1));
        s.push(one(2));
        let sent = transmit_all(&mut s, t0);
        // NOTIMP: no narrowing down can help.
        s.handle_response(&signed(&sent[0], 4, 0, &[]), t0, NOW);
        assert_eq!(events(&mut s).len(), 1);
        s.handle_response(&noerror(&sent[1]), t0, NOW);
        s.push(one(3));
        s.on_connected(t0);
        s.handle_timeout(t0 + TIMEOUT * 10);
        s.on_disconnected(t0);
        s.on_connect_failed(t0);
        assert!(poll(&mut s, t0).is_none());
        assert_eq!(s.poll_timeout(), None);
        assert!(!s.wants_connection());
        assert!(events(&mut s).is_empty());
    }

    #[test]
    fn an_answer_to_an_unknown_id_is_ignored() {
        let t0 = Instant::now();
        let mut s = session(2, budget_for(1));
        s.on_connected(t0);
        s.push(one(1));
        let sent = transmit_all(&mut s, t0);
        let stranger = Request {
            id: sent[0].id.wrapping_add(7),
            ..sent[0].clone()
        };
        s.handle_response(&noerror(&stranger), t0, NOW);
        s.handle_response(&signed(&stranger, 5, 0, &[]), t0, NOW);
        assert!(events(&mut s).is_empty());
        assert_eq!(s.poll_timeout(), Some(t0 + TIMEOUT));
        s.handle_response(&noerror(&sent[0]), t0, NOW);
        assert_eq!(events(&mut s), [Event::Acked { upto: 1 }]);
    }

    #[test]
    fn a_frame_too_short_for_a_dns_message_is_retried() {
        let t0 = Instant::now();
        let mut s = session(2, budget_for(1));
        s.on_connected(t0);
        s.push(one(1));
        transmit_all(&mut s, t0);
        s.handle_response(&[0x12], t0, NOW);
        assert_eq!(
            events(&mut s),
            [Event::Retrying {
                lsn: lsn_of(1),
                reason: RetryReason::Malformed { len: 1 },
                backoff: INITIAL_BACKOFF,
            }]
        );
    }

    #[test]
    fn acks_are_released_in_order_even_when_answers_for_later_messages_arrive_first() {
        let t0 = Instant::now();
        let mut s = session(3, budget_for(1));
        s.on_connected(t0);
        for id in 1..=3 {
            s.push(one(id));
        }
        let sent = transmit_all(&mut s, t0);
        s.handle_response(&noerror(&sent[2]), t0, NOW);
        s.handle_response(&noerror(&sent[1]), t0, NOW);
        assert!(events(&mut s).is_empty());
        assert_eq!(
            s.poll_timeout(),
            Some(t0 + TIMEOUT),
            "message 1 still awaited"
        );
        s.handle_response(&noerror(&sent[0]), t0, NOW);
        assert_eq!(events(&mut s), [Event::Acked { upto: 3 }]);
        assert!(s.is_idle());
    }

    #[test]
    fn a_dispatch_without_operations_is_acked_once_everything_before_it_is() {
        let t0 = Instant::now();
        let mut s = session(2, budget_for(1));
        let empty = |id| Dispatch {
            id,
            lsn: lsn_of(id),
            groups: Vec::new(),
        };
        s.push(empty(1));
        assert_eq!(events(&mut s), [Event::Acked { upto: 1 }]);
        s.on_connected(t0);
        s.push(one(2));
        let sent = transmit_all(&mut s, t0);
        s.push(empty(3));
        assert!(events(&mut s).is_empty());
        s.push(one(4));
        s.push(empty(5));
        let more = transmit_all(&mut s, t0);
        assert_eq!(more[0].owners, ["d4"]);
        s.handle_response(&noerror(&sent[0]), t0, NOW);
        assert_eq!(events(&mut s), [Event::Acked { upto: 3 }]);
        s.handle_response(&noerror(&more[0]), t0, NOW);
        assert_eq!(events(&mut s), [Event::Acked { upto: 5 }]);
        assert!(s.is_idle());
    }

    #[test]
    fn has_room_turns_false_past_the_queue_bounds() {
        let t0 = Instant::now();
        let mut s = session(2, budget_for(1));
        for id in 1..MAX_QUEUED_DISPATCHES as u64 {
            s.push(one(id % 10));
        }
        assert!(s.has_room());
        s.push(one(1));
        assert!(!s.has_room());

        let mut s = session(1, budget_for(1_000));
        let many: Vec<OwnerGroup> = (0..MAX_QUEUED_OPS)
            .map(|i| group_of(&format!("o{i}"), 1))
            .collect();
        s.push(Dispatch {
            id: 1,
            lsn: lsn_of(1),
            groups: many,
        });
        assert!(!s.has_room());
        s.on_connected(t0);
        assert_eq!(transmit_all(&mut s, t0).len(), 1);
        assert!(s.has_room(), "packing frees room");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// The short run CI makes of the `response` fuzz target: whatever
        /// arrives as an answer, the session halts, retries or ignores it,
        /// and never panics.
        #[test]
        fn arbitrary_answers_never_panic(
            frames in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120), 0..8),
            keep_id in proptest::prelude::any::<bool>(),
        ) {
            let t0 = Instant::now();
            let mut s = session(2, budget_for(3));
            s.on_connected(t0);
            s.push(one(1));
            s.push(one(2));
            let sent = transmit_all(&mut s, t0);
            for mut frame in frames {
                if keep_id && frame.len() >= 2 {
                    if let Some(r) = sent.first() {
                        frame[..2].copy_from_slice(&r.id.to_be_bytes());
                    }
                }
                s.handle_response(&frame, t0, NOW);
                let _ = events(&mut s);
                let _ = transmit_all(&mut s, t0);
            }
        }
    }
}
