//! The per-zone send session: one ordered stream of signed UPDATEs, sans-IO.
//!
//! # Why
//!
//! Each zone gets one TCP connection to its primary and one [`Session`]. Work
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
//! them in order (`shared/notes/dns-servers.md` §3). But a failure of message
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
//!                push()                    poll_transmit(): window full
//!   ┌──────┐ ─────────────▶ ┌──────────┐ ◀──────────────────────────┐
//!   │ idle │                │ sending  │ ───────────────────────────┘
//!   └──────┘ ◀───────────── └──────────┘   NOERROR: release in order, Acked{upto}
//!       ▲    all acknowledged   │    ▲
//!       │                       │    │ backlog acknowledged again
//!       │  SERVFAIL / timeout / │    │ (window resumes)
//!       │  disconnect while     ▼    │
//!       │  awaiting: Retrying ┌────────────────┐ on_connected(): resend the
//!       │  (driver backs off, │ careful-resend │ unreleased messages in order,
//!       │   reconnects)       └────────────────┘ one at a time, new IDs
//!       │                             │
//!       │    any other RCODE, TSIG    │
//!       │    failure, encode failure  ▼
//!       │                        ┌────────┐
//!       └─ (never leaves) ─────  │ halted │  emits nothing more
//!                                └────────┘
//! ```
//!
//! The session sends nothing until [`Session::on_connected`]; a server that
//! closes an idle connection (BIND's `tcp-idle-timeout`) is normal and costs
//! no backoff.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::lsn::Lsn;
use crate::records::ZoneName;
use crate::tsig::{self, SignedRequest, TsigError, TsigKey};
use crate::update::{self, Budget, EncodeError, OwnerGroup, Packer, PushError, UpdateOp};

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
#[derive(Clone, Debug)]
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

/// A DNS RCODE (RFC 1035 §4.1.1, RFC 2136 §2.2, extended by RFC 6891).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rcode(pub u16);

impl Rcode {
    /// No error.
    pub const NOERROR: Rcode = Rcode(0);
    /// The server could not interpret the request.
    pub const FORMERR: Rcode = Rcode(1);
    /// The server failed; the update was undone (RFC 2136 §3.4.2.1).
    pub const SERVFAIL: Rcode = Rcode(2);
    /// Prerequisite: a name that should exist does not.
    pub const NXDOMAIN: Rcode = Rcode(3);
    /// The server does not implement UPDATE.
    pub const NOTIMP: Rcode = Rcode(4);
    /// The server's policy refuses the update.
    pub const REFUSED: Rcode = Rcode(5);
    /// Prerequisite: a name that should not exist does.
    pub const YXDOMAIN: Rcode = Rcode(6);
    /// Prerequisite: an RRset that should not exist does.
    pub const YXRRSET: Rcode = Rcode(7);
    /// Prerequisite: an RRset that should exist does not.
    pub const NXRRSET: Rcode = Rcode(8);
    /// The server is not authoritative for the zone (or refused the key).
    pub const NOTAUTH: Rcode = Rcode(9);
    /// A name is outside the zone.
    pub const NOTZONE: Rcode = Rcode(10);

    /// The IANA mnemonic, if this is a known RCODE.
    pub fn mnemonic(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "NOERROR",
            1 => "FORMERR",
            2 => "SERVFAIL",
            3 => "NXDOMAIN",
            4 => "NOTIMP",
            5 => "REFUSED",
            6 => "YXDOMAIN",
            7 => "YXRRSET",
            8 => "NXRRSET",
            9 => "NOTAUTH",
            10 => "NOTZONE",
            11 => "DSOTYPENI",
            16 => "BADVERS",
            _ => return None,
        })
    }

    /// What the operator should do when the server answers this.
    pub fn hint(self) -> &'static str {
        match self.0 {
            0 => "nothing",
            1 => "the server could not parse the UPDATE; report this as a pg2dns bug",
            2 => "the server failed; pg2dns retries",
            3 | 6..=8 => "a prerequisite failed; check that nothing else edits the zone",
            4 => "the server does not implement dynamic UPDATE",
            5 => "the server's policy refuses this update: check allow-update/update-policy for this key and zone, and check-names",
            9 => "the server is not authoritative for this zone or did not accept the key: check the zone name and primary address",
            10 => "a record is outside the zone: check the zone configuration",
            _ => "see the server's log",
        }
    }
}

impl fmt::Display for Rcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mnemonic() {
            Some(name) => f.write_str(name),
            None => write!(f, "RCODE {}", self.0),
        }
    }
}

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
                write!(f, "the server sent a {len}-byte answer, too short for a DNS message")
            }
        }
    }
}

/// Why a session stopped for good: the operator must act.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Halt {
    /// BADKEY, BADSIG, BADTIME (with the server's time), an unsigned NOERROR or
    /// an answer whose signature does not verify.
    #[error("zone {zone}: the primary {server} and pg2dns do not agree on TSIG (LSN {lsn})")]
    Tsig {
        /// The zone.
        zone: ZoneName,
        /// The primary.
        server: String,
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
    /// The session stopped; nothing follows.
    Halted(Halt),
}

/// One packed UPDATE message, from packing until released in order.
#[derive(Debug)]
struct Message {
    ops: Vec<UpdateOp>,
    /// The dispatch this message completes, if it holds its last group.
    completes: Option<u64>,
    /// The commit LSN of the first transaction in the message.
    lsn: Lsn,
    state: State,
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
    next_id: u16,
    /// Messages still to be released one at a time after a reconnect.
    careful: usize,
    connected: bool,
    halted: bool,
    backoff: Duration,
    events: VecDeque<Event>,
}

impl Session {
    /// A session with nothing queued and no connection; message IDs start at
    /// `first_id` (pick it at random) and increase, wrapping.
    pub fn new(config: SessionConfig, first_id: u16) -> Session {
        let packer = Packer::new(config.zone.clone(), config.budget);
        Session {
            config,
            packer,
            queue: VecDeque::new(),
            queued_ops: 0,
            messages: VecDeque::new(),
            next_id: first_id,
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
    /// prefix), or `None` when the window is full, nothing is queued, the
    /// session is not connected or it halted. Packs queued dispatches into
    /// messages as the window opens. Call it until it returns `None`.
    pub fn poll_transmit(&mut self, now: Instant, unix_time: u64) -> Option<Vec<u8>> {
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
                return self.transmit(i, now, unix_time);
            }
            if self.messages.len() >= limit {
                return None;
            }
            match self.pack_next() {
                Ok(Some(message)) => {
                    self.messages.push_back(message);
                    // A message without operations is acknowledged already.
                    self.release_acked();
                }
                Ok(None) => return None,
                Err(halt) => {
                    self.halt(halt);
                    return None;
                }
            }
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
        let Some(i) = self.messages.iter().position(
            |m| matches!(&m.state, State::Sent { request, .. } if request.id == id),
        ) else {
            return;
        };
        let lsn = self.messages[i].lsn;
        let State::Sent { request, .. } = &self.messages[i].state else {
            return;
        };
        let rcode = match tsig::verify_response(message, &self.config.key, request, unix_time) {
            Ok(verified) => Rcode(verified.rcode),
            // An unsigned error answer (BADKEY/BADSIG come unsigned, Knot's
            // NOTAUTH for a zone it does not serve has no TSIG) is judged by
            // its RCODE; an unsigned NOERROR is never success.
            Err(TsigError::Unsigned { rcode }) if rcode != 0 => Rcode(rcode),
            Err(source) => {
                let zone = self.config.zone.clone();
                let server = self.config.server.clone();
                self.halt(Halt::Tsig {
                    zone,
                    server,
                    lsn,
                    source,
                });
                return;
            }
        };
        match rcode {
            Rcode::NOERROR => {
                self.messages[i].state = State::Acked;
                self.backoff = INITIAL_BACKOFF;
                self.release_acked();
            }
            Rcode::SERVFAIL => self.retry(lsn, RetryReason::ServFail),
            rcode => {
                let halt = Halt::Rcode {
                    zone: self.config.zone.clone(),
                    server: self.config.server.clone(),
                    key: self.config.key.name.to_string(),
                    lsn,
                    rcode,
                };
                self.halt(halt);
            }
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
            if !m.ops.is_empty() {
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

    /// Packs the next message from the queue, coalescing dispatches.
    fn pack_next(&mut self) -> Result<Option<Message>, Halt> {
        let mut completes = None;
        let mut first_lsn = None;
        while let Some(front) = self.queue.front_mut() {
            if let Some(group) = front.groups.pop_front() {
                let ops = group.ops.len();
                match self.packer.try_push(group) {
                    Ok(()) => {
                        self.queued_ops = self.queued_ops.saturating_sub(ops);
                        first_lsn.get_or_insert(front.lsn);
                    }
                    Err(PushError::Full(group)) => {
                        front.groups.push_front(group);
                        break;
                    }
                    Err(source) => {
                        return Err(Halt::GroupTooLarge {
                            zone: self.config.zone.clone(),
                            lsn: front.lsn,
                            source,
                        })
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
            return Ok(None);
        }
        let state = if ops.is_empty() {
            State::Acked
        } else {
            State::Unsent
        };
        Ok(Some(Message {
            ops,
            completes,
            lsn: first_lsn.unwrap_or_default(),
            state,
        }))
    }

    /// Encodes and signs message `i` with a new ID.
    fn transmit(&mut self, i: usize, now: Instant, unix_time: u64) -> Option<Vec<u8>> {
        let id = self.next_id;
        self.next_id = id.wrapping_add(1);
        let zone = &self.config.zone;
        let lsn = self.messages[i].lsn;
        let signed = update::encode(zone, id, &[], &self.messages[i].ops)
            .map_err(|source| Halt::Encode {
                zone: zone.clone(),
                lsn,
                source,
            })
            .and_then(|wire| {
                tsig::sign(&wire, &self.config.key, unix_time, tsig::DEFAULT_FUDGE).map_err(
                    |source| Halt::Sign {
                        zone: zone.clone(),
                        lsn,
                        source,
                    },
                )
            })
            .and_then(|signed| {
                let budget = self.config.budget.limit();
                if signed.wire.len() > budget {
                    Err(Halt::OverBudget {
                        zone: zone.clone(),
                        lsn,
                        len: signed.wire.len(),
                        budget,
                    })
                } else {
                    Ok(signed)
                }
            });
        let mut request = match signed {
            Ok(request) => request,
            Err(halt) => {
                self.halt(halt);
                return None;
            }
        };
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
