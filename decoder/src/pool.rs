//! The connections to one DNS server, shared by its zones, sans-IO.
//!
//! # Why
//!
//! An UPDATE names its zone (RFC 2136 §2.3, the Zone Section), so any TCP
//! connection to a server can carry any of its zones. One connection per
//! zone does not scale: BIND admits `tcp-clients` (150) connections, closes
//! idle ones after `tcp-idle-timeout` (30 s) and silently drops UPDATEs
//! beyond its `update-quota` (100 in progress), so a thousand zones on one
//! server took minutes for one transaction (`docs/design-many-zones.md`).
//! The [`ServerPool`] keeps a few pipelined connections per server (RFC 7766
//! §6.2.1.1: "clients [...] SHOULD pipeline"), caps the messages in flight
//! to the whole server, closes idle connections before the server does, and
//! backs off connects once per server rather than once per zone.
//!
//! Each zone keeps its own [`crate::session::Session`] (order, window,
//! careful resend). What keeps a zone's order safe is one rule: **a lane's
//! messages in flight are all on one connection** — the servers apply one
//! zone's UPDATEs in order on one connection, and nothing orders two
//! connections. A *lane* is what sends one zone's stream to one primary
//! ([`LaneId`]); with one primary per zone a lane is a zone. A lane is
//! *assigned* to a connection while it has messages there, answered or not
//! (including ones it gave up on: [`Pending::Dead`]), and only then may move.
//!
//! ```text
//!            poll_connect ─▶ Connecting ─ on_connected ─▶ Up ─ on_lost / poll_idle ─▶ Closed
//!                                  └─ on_connect_failed (one backoff per server) ─▶ Closed
//!
//!  per message:  assign(lane) → conn,  free_id(conn) → id,  session.poll_transmit(.., id),
//!                on_sent(conn, id, lane);  answer: on_answer(conn, id) → Live(lane) | Dead | Unknown
//!  per query:    (no lane ready) query_conn() → conn,  free_id(conn) → id,  on_query_sent(conn, id, q);
//!                answer: on_answer(conn, id) → Query(q);  no answer in time: expire_query;  lost: take_lost_queries
//! ```
//!
//! The same connections carry the status's SOA queries, as low-priority
//! work ([`QueryId`]): the driver sends one only when no lane is ready to
//! send, on a connection already up ([`ServerPool::query_conn`]). A query
//! in flight counts against [`PoolLimits::max_in_flight`] like an UPDATE,
//! and at most half of it ([`ServerPool::max_queries`]) may be queries, so
//! an UPDATE that comes meanwhile always finds room. A query belongs to no
//! lane, so a lane's order does not see it; its answer is matched by ID
//! like an UPDATE's ([`Answer::Query`]). One given up on
//! ([`ServerPool::expire_query`]) keeps its ID taken ([`Pending::Expired`])
//! until its late answer comes or the connection goes, and the connection
//! stays: the UPDATEs on it are not resent for a status query.
//!
//! Message IDs are unique per connection (RFC 1035 §4.1.1: the ID "is
//! copied [into] the corresponding reply and can be used by the requester
//! to match up replies to outstanding queries"); they count up from a start
//! the driver picks at random, skipping those still awaited.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, Instant};

use crate::HashMap;

/// The most connections a pool opens to one server.
pub const MAX_CONNECTIONS: usize = 16;
/// The first connect retry waits this long.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Each further connect retry waits twice as long, up to this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One zone's stream to one primary. With one primary per zone it is the
/// zone's index ([`crate::ZoneId::index`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LaneId(pub u32);

impl fmt::Display for LaneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lane #{}", self.0)
    }
}

/// A status query in flight, named by the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryId(pub u64);

/// A connection slot of a pool (below [`MAX_CONNECTIONS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u8);

impl ConnId {
    /// The slot's index.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// How much of one server a pool may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolLimits {
    /// Connections open (or opening) at most, 1 to [`MAX_CONNECTIONS`].
    pub connections: usize,
    /// UPDATEs awaiting an answer on all connections together, at least 1
    /// (below BIND's `update-quota` of 100).
    pub max_in_flight: usize,
    /// A connection without messages or lanes this long is closed (below
    /// BIND's `tcp-idle-timeout` of 30 s, so the server never closes first).
    pub idle_close: Duration,
    /// Connects under way at most.
    pub connects_at_once: usize,
}

/// An awaited message ID on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// Its lane awaits the answer.
    Live(LaneId),
    /// Its lane gave up on it (it resends); the server may still apply it,
    /// so the lane stays on this connection until a later message of its
    /// own is answered there.
    Dead(LaneId),
    /// A status query awaits the answer.
    Query(QueryId),
    /// A status query given up on: its ID stays taken until its late
    /// answer comes or the connection goes.
    Expired,
}

/// What an answer's ID meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Hand the answer to this lane's session.
    Live(LaneId),
    /// The answer to this status query.
    Query(QueryId),
    /// A late answer to a message its lane (or the status) gave up on:
    /// ignore it.
    Dead,
    /// No message with this ID is awaited on this connection: ignore it.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed,
    Connecting,
    Up,
}

#[derive(Debug)]
struct Slot {
    state: State,
    ids: HashMap<u16, Pending>,
    next_id: u16,
    /// Lanes assigned here.
    lanes: HashSet<LaneId>,
    /// `Live` and `Query` entries of `ids`.
    live: usize,
    /// `Expired` entries of `ids` (no work: they do not keep it open).
    expired: usize,
    /// When the slot last had work (for the idle close).
    last_used: Instant,
}

/// The connections to one server. See the module documentation.
#[derive(Debug)]
pub struct ServerPool {
    limits: PoolLimits,
    slots: Vec<Slot>,
    /// The connection of each lane with messages there (or sending).
    assigned: HashMap<LaneId, ConnId>,
    /// Each assigned lane's entries (`Live` and `Dead`) on its connection.
    outstanding: HashMap<LaneId, usize>,
    in_flight: usize,
    /// Of `in_flight`, the status queries.
    queries: usize,
    /// Queries that were in flight on a connection lost since the driver
    /// last took them ([`ServerPool::take_lost_queries`]).
    lost_queries: Vec<QueryId>,
    backoff: Duration,
    retry_at: Option<Instant>,
    high_water: usize,
}

impl ServerPool {
    /// A pool with every connection closed. Each connection's IDs start at
    /// `first_id` plus a spread (pick it at random).
    pub fn new(limits: PoolLimits, first_id: u16, now: Instant) -> ServerPool {
        let limits = PoolLimits {
            connections: limits.connections.clamp(1, MAX_CONNECTIONS),
            max_in_flight: limits.max_in_flight.max(1),
            connects_at_once: limits.connects_at_once.max(1),
            idle_close: limits.idle_close,
        };
        let slots = (0..limits.connections)
            .map(|i| Slot {
                state: State::Closed,
                ids: HashMap::default(),
                next_id: first_id.wrapping_add((i as u16).wrapping_mul(4099)),
                lanes: HashSet::new(),
                live: 0,
                expired: 0,
                last_used: now,
            })
            .collect();
        ServerPool {
            limits,
            slots,
            assigned: HashMap::default(),
            outstanding: HashMap::default(),
            in_flight: 0,
            queries: 0,
            lost_queries: Vec::new(),
            backoff: INITIAL_BACKOFF,
            retry_at: None,
            high_water: 0,
        }
    }

    /// The limits in force (clamped).
    pub fn limits(&self) -> PoolLimits {
        self.limits
    }

    /// The connection `lane` is assigned to, if any.
    pub fn assigned(&self, lane: LaneId) -> Option<ConnId> {
        self.assigned.get(&lane).copied()
    }

    /// The connection `lane` must send on: its own if it has one, else the
    /// `Up` connection with the fewest messages in flight (now assigned to
    /// it). `None` when no connection is up.
    pub fn assign(&mut self, lane: LaneId) -> Option<ConnId> {
        if let Some(c) = self.assigned(lane) {
            return Some(c);
        }
        let (i, slot) = self
            .slots
            .iter_mut()
            .enumerate()
            .filter(|(_, s)| s.state == State::Up)
            .min_by_key(|(_, s)| (s.live, s.lanes.len()))?;
        slot.lanes.insert(lane);
        let conn = ConnId(i as u8);
        self.assigned.insert(lane, conn);
        Some(conn)
    }

    /// Frees `lane` from its connection when nothing of it is awaited
    /// there; returns whether it is free now. Call it when the lane is idle.
    pub fn unassign(&mut self, lane: LaneId, now: Instant) -> bool {
        let Some(conn) = self.assigned(lane) else {
            return true;
        };
        if self.outstanding.get(&lane).copied().unwrap_or(0) > 0 {
            return false;
        }
        self.assigned.remove(&lane);
        self.outstanding.remove(&lane);
        let slot = &mut self.slots[conn.index()];
        slot.lanes.remove(&lane);
        slot.last_used = now;
        true
    }

    /// `lane` stops for good (it halted): whatever it awaits is forgotten
    /// (late answers become [`Answer::Unknown`]) and it leaves its
    /// connection, which stays up for the others.
    pub fn forget(&mut self, lane: LaneId, now: Instant) {
        if let Some(conn) = self.assigned(lane) {
            let slot = &mut self.slots[conn.index()];
            let mut live = 0;
            slot.ids.retain(|_, p| match p {
                Pending::Live(l) if *l == lane => {
                    live += 1;
                    false
                }
                Pending::Dead(l) => *l != lane,
                Pending::Live(_) | Pending::Query(_) | Pending::Expired => true,
            });
            slot.live -= live;
            self.in_flight -= live;
            self.outstanding.insert(lane, 0);
            self.unassign(lane, now);
        }
    }

    /// `lane` gave up on the messages it has in flight (it will resend them,
    /// as a session does after SERVFAIL): they become [`Pending::Dead`] and
    /// stop counting against [`PoolLimits::max_in_flight`]; the lane stays
    /// on its connection.
    pub fn release(&mut self, lane: LaneId) {
        let Some(conn) = self.assigned(lane) else {
            return;
        };
        let slot = &mut self.slots[conn.index()];
        let mut live = 0;
        for p in slot.ids.values_mut() {
            if *p == Pending::Live(lane) {
                *p = Pending::Dead(lane);
                live += 1;
            }
        }
        slot.live -= live;
        self.in_flight -= live;
    }

    /// A connection to open now, marked `Connecting`, when `waiting` lanes
    /// want to send and none is up with room: no connection is up, or every
    /// one carries its share of [`PoolLimits::max_in_flight`]. `None` while
    /// backing off, while [`PoolLimits::connects_at_once`] connects are
    /// under way, or when all are open.
    pub fn poll_connect(&mut self, now: Instant, waiting: usize) -> Option<ConnId> {
        if waiting == 0 || self.retry_at.is_some_and(|t| t > now) {
            return None;
        }
        let connecting = self.count(State::Connecting);
        if connecting >= self.limits.connects_at_once {
            return None;
        }
        let share = (self.limits.max_in_flight / self.limits.connections).max(1);
        let up: Vec<&Slot> = self.slots.iter().filter(|s| s.state == State::Up).collect();
        if !up.is_empty() && (connecting > 0 || up.iter().any(|s| s.live < share)) {
            return None;
        }
        let i = self.slots.iter().position(|s| s.state == State::Closed)?;
        self.slots[i].state = State::Connecting;
        self.retry_at = None;
        self.note_open();
        Some(ConnId(i as u8))
    }

    /// The connect of `conn` succeeded.
    pub fn on_connected(&mut self, conn: ConnId, now: Instant) {
        let slot = &mut self.slots[conn.index()];
        slot.state = State::Up;
        slot.last_used = now;
        self.backoff = INITIAL_BACKOFF;
    }

    /// The connect of `conn` failed: the whole server backs off (one wait
    /// for all its lanes), and the wait is returned.
    pub fn on_connect_failed(&mut self, conn: ConnId, now: Instant) -> Duration {
        self.slots[conn.index()].state = State::Closed;
        let wait = self.backoff;
        self.retry_at = Some(now + wait);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        wait
    }

    /// Whether another message may be sent: fewer than
    /// [`PoolLimits::max_in_flight`] are awaited.
    pub fn has_room(&self) -> bool {
        self.in_flight < self.limits.max_in_flight
    }

    /// An ID not awaited on `conn` (`Dead` ones included), for the next
    /// message; [`ServerPool::on_sent`] takes it.
    pub fn free_id(&self, conn: ConnId) -> u16 {
        let slot = &self.slots[conn.index()];
        let mut id = slot.next_id;
        // At most max_in_flight live IDs and the dead ones of lanes still
        // there: far fewer than 65,536.
        while slot.ids.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        id
    }

    /// Message `id` of `lane` was written on `conn`.
    pub fn on_sent(&mut self, conn: ConnId, id: u16, lane: LaneId, now: Instant) {
        debug_assert_eq!(self.assigned(lane), Some(conn));
        let slot = &mut self.slots[conn.index()];
        let old = slot.ids.insert(id, Pending::Live(lane));
        debug_assert!(old.is_none(), "id {id} reused on {conn:?}");
        slot.next_id = id.wrapping_add(1);
        slot.live += 1;
        slot.last_used = now;
        self.in_flight += 1;
        *self.outstanding.entry(lane).or_insert(0) += 1;
    }

    /// An answer with `id` arrived on `conn`: whose it is. A lane's answer
    /// also clears the messages it gave up on there, which were sent before
    /// and so were handled before it.
    pub fn on_answer(&mut self, conn: ConnId, id: u16, now: Instant) -> Answer {
        let slot = &mut self.slots[conn.index()];
        slot.last_used = now;
        match slot.ids.remove(&id) {
            Some(Pending::Live(lane)) => {
                slot.live -= 1;
                self.in_flight -= 1;
                let before = slot.ids.len();
                slot.ids.retain(|_, p| *p != Pending::Dead(lane));
                let cleared = 1 + before - slot.ids.len();
                if let Some(n) = self.outstanding.get_mut(&lane) {
                    *n = n.saturating_sub(cleared);
                }
                Answer::Live(lane)
            }
            Some(Pending::Dead(lane)) => {
                if let Some(n) = self.outstanding.get_mut(&lane) {
                    *n = n.saturating_sub(1);
                }
                Answer::Dead
            }
            Some(Pending::Query(query)) => {
                slot.live -= 1;
                self.in_flight -= 1;
                self.queries -= 1;
                Answer::Query(query)
            }
            Some(Pending::Expired) => {
                slot.expired -= 1;
                Answer::Dead
            }
            None => Answer::Unknown,
        }
    }

    /// `conn` broke, was closed by the server or by us: every lane assigned
    /// to it is returned (each once, in no particular order) and is free to
    /// move; the driver tells each session it was disconnected.
    pub fn on_lost(&mut self, conn: ConnId, now: Instant) -> Vec<LaneId> {
        let slot = &mut self.slots[conn.index()];
        let was = slot.state;
        slot.state = State::Closed;
        self.in_flight -= slot.live;
        slot.live = 0;
        slot.expired = 0;
        for p in slot.ids.values() {
            if let Pending::Query(q) = p {
                self.queries -= 1;
                self.lost_queries.push(*q);
            }
        }
        slot.ids.clear();
        slot.last_used = now;
        let lanes: Vec<LaneId> = slot.lanes.drain().collect();
        for lane in &lanes {
            self.assigned.remove(lane);
            self.outstanding.remove(lane);
        }
        if was == State::Connecting {
            // Treated as a failed connect by the caller; nothing to free.
            debug_assert!(lanes.is_empty());
        }
        lanes
    }

    /// An `Up` connection idle for [`PoolLimits::idle_close`] (no lane, no
    /// message): marked closed and returned, for the driver to drop.
    pub fn poll_idle(&mut self, now: Instant) -> Option<ConnId> {
        let idle = self.limits.idle_close;
        let i = self.slots.iter().position(|s| {
            s.state == State::Up
                && s.lanes.is_empty()
                && s.ids.len() == s.expired
                && s.last_used + idle <= now
        })?;
        self.on_lost(ConnId(i as u8), now);
        Some(ConnId(i as u8))
    }

    /// When to call [`ServerPool::poll_idle`] or [`ServerPool::poll_connect`]
    /// next: the earliest idle close or the end of the connect backoff.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let idle = self.limits.idle_close;
        self.slots
            .iter()
            .filter(|s| s.state == State::Up && s.lanes.is_empty() && s.ids.len() == s.expired)
            .map(|s| s.last_used + idle)
            .chain(self.retry_at)
            .min()
    }

    /// The most status queries in flight at once: half of
    /// [`PoolLimits::max_in_flight`] (at least 1), so UPDATEs always find
    /// room.
    pub fn max_queries(&self) -> usize {
        (self.limits.max_in_flight / 2).max(1)
    }

    /// The connection to send a status query on now: the `Up` one with
    /// the fewest messages in flight, when the pool has room and fewer
    /// than [`ServerPool::max_queries`] queries are in flight. `None` when
    /// no connection is up: a query does not ask for one by itself (the
    /// driver decides, see [`ServerPool::poll_connect`]). Call it only
    /// when no lane is ready to send: UPDATEs go first.
    pub fn query_conn(&self) -> Option<ConnId> {
        if !self.has_room() || self.queries >= self.max_queries() {
            return None;
        }
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state == State::Up)
            .min_by_key(|(_, s)| s.live)
            .map(|(i, _)| ConnId(i as u8))
    }

    /// Status query `query` went out on `conn` with `id` (from
    /// [`ServerPool::free_id`]).
    pub fn on_query_sent(&mut self, conn: ConnId, id: u16, query: QueryId, now: Instant) {
        let slot = &mut self.slots[conn.index()];
        let old = slot.ids.insert(id, Pending::Query(query));
        debug_assert!(old.is_none(), "id {id} reused on {conn:?}");
        slot.next_id = id.wrapping_add(1);
        slot.live += 1;
        slot.last_used = now;
        self.in_flight += 1;
        self.queries += 1;
    }

    /// The status gave up on query `id` on `conn` (no answer in time): it
    /// stops counting against the limits, its ID stays taken until its
    /// late answer ([`Answer::Dead`]) or the connection goes. Whether it
    /// was still awaited.
    pub fn expire_query(&mut self, conn: ConnId, id: u16) -> bool {
        let Some(slot) = self.slots.get_mut(conn.index()) else {
            return false;
        };
        match slot.ids.get_mut(&id) {
            Some(p @ Pending::Query(_)) => {
                *p = Pending::Expired;
                slot.live -= 1;
                slot.expired += 1;
                self.in_flight -= 1;
                self.queries -= 1;
                true
            }
            _ => false,
        }
    }

    /// The queries that were in flight on connections lost since the last
    /// call: they get no answer.
    pub fn take_lost_queries(&mut self) -> Vec<QueryId> {
        std::mem::take(&mut self.lost_queries)
    }

    /// Status queries awaited now.
    pub fn queries_in_flight(&self) -> usize {
        self.queries
    }

    /// Messages awaited now (`Live` and `Query` ones).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Connections open or opening now.
    pub fn open(&self) -> usize {
        self.slots.len() - self.count(State::Closed)
    }

    /// The most connections open or opening at once so far.
    pub fn high_water(&self) -> usize {
        self.high_water
    }

    /// Whether `conn` is up.
    pub fn is_up(&self, conn: ConnId) -> bool {
        self.slots
            .get(conn.index())
            .is_some_and(|s| s.state == State::Up)
    }

    /// The lanes assigned to `conn`.
    pub fn lanes_on(&self, conn: ConnId) -> impl Iterator<Item = LaneId> + '_ {
        self.slots
            .get(conn.index())
            .into_iter()
            .flat_map(|s| s.lanes.iter().copied())
    }

    fn count(&self, state: State) -> usize {
        self.slots.iter().filter(|s| s.state == state).count()
    }

    fn note_open(&mut self) {
        self.high_water = self.high_water.max(self.open());
    }
}

#[cfg(test)]
mod tests;
