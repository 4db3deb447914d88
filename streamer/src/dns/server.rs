//! One DNS server's UPDATE streams: a thin driver of
//! [`pg2dns_decoder::pool::ServerPool`] and of the active zones'
//! [`Session`]s.
//!
//! One task per server (per distinct `primary`) owns a few pipelined TCP
//! connections and every zone of that server: the pool decides which
//! connection a zone's next message goes on and how many may be in flight;
//! each zone's session decides what to send, what an answer means and when
//! to resend, as before. Work arrives from the pipeline as batches of
//! [`Dispatch`]es per zone, in commit order; acknowledgements, refusals and
//! halts go back as [`ZoneReport`]s, exactly as one task per zone sent them.
//!
//! ```text
//!  pipeline ─ServerInput─▶ sessions[lane].push ─▶ ready (round robin)
//!        ready ─▶ pool.assign → conn, pool.free_id → id ─▶ session.poll_transmit(id) ─▶ writer[conn]
//!  reader[conn] (a task per connection) ─frame─▶ pool.on_answer(id) → lane ─▶ session.handle_response
//!  pipeline ◀─ZoneReport─ session.poll_event
//!  status ─SoaAsk─▶ queries (sent when `ready` is empty) ─▶ pool.query_conn ─▶ writer[conn]
//!        reader[conn] ─frame─▶ pool.on_answer(id) → Query ─▶ SoaAsk.reply ─▶ status
//! ```
//!
//! Sessions exist only for zones with a message to send or in flight:
//! a zone given work while the server's in-flight cap is full keeps only
//! its dispatches ([`Waiting`]) until its turn to send comes, and its
//! session goes once everything is acknowledged. One transaction touching
//! 50,000 zones so makes about `max_in_flight` sessions at a time, not
//! 50,000 (memory follows what is in flight, not the zones touched). Connects run in their own tasks, so a server
//! that does not answer holds up none of its other connections. A timeout
//! drops the connection it happened on: every zone in flight there resends
//! from its first unacknowledged message, as a zone's own connection did.
//!
//! The status publisher's SOA queries come on their own channel
//! ([`SoaAsk`]) and go out on the same connections as low-priority work:
//! only when no zone is ready to send an UPDATE, on a connection already
//! up, at most half of `max_in_flight` at once (they count against it while
//! in flight; see [`pg2dns_decoder::pool`]). Queries alone open a
//! connection only when none is open, so pg2dns holds at most
//! `[[server]] connections` to a server, the status included. A query
//! unanswered after [`SOA_TIMEOUT`], or on a connection lost, is reported
//! failed (the publisher asks again at a later tick); a timed-out query
//! leaves the connection and its UPDATEs alone. Queries still queued when
//! the task stops are reported failed too.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use pg2dns_decoder::pool::{Answer, ConnId, LaneId, PoolLimits, QueryId, ServerPool};
use pg2dns_decoder::session::{
    Event, RetryReason, Session, SessionConfig, MAX_QUEUED_DISPATCHES, MAX_QUEUED_OPS,
};
use pg2dns_decoder::update::Budget;
use pg2dns_decoder::{HashMap, ZoneId, ZoneName};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, warn};

pub use crate::dns::sink::{Dispatch, LaneReport, ZoneReport};

use crate::config::{Limits, PrimaryAddr, ServerLimits, ZoneConfig};
use crate::dns::pipelined::AskError;
use crate::{failpoint, metrics};

/// How long a status SOA query may wait for its answer once sent.
pub const SOA_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Where a server task sends each SOA answer: the asker's index and the
/// answer (its first message) or why there is none.
pub type SoaReply = mpsc::UnboundedSender<(usize, Result<Vec<u8>, AskError>)>;

/// The status publisher's SOA queries for one server: each `(index, zone)`
/// is answered once on `reply`, in any order.
#[derive(Debug)]
pub struct SoaAsk {
    /// The zones to ask, with the asker's index of each.
    pub zones: Vec<(usize, ZoneName)>,
    /// Where the answers go.
    pub reply: SoaReply,
}

/// The SOA queries a server task holds: queued until no zone is ready to
/// send, then in flight until answered, timed out or lost.
#[derive(Default)]
struct Queries {
    queue: VecDeque<(usize, ZoneName, SoaReply)>,
    /// In flight by token: the asker's index, the reply, and where.
    sent: HashMap<u64, (usize, SoaReply, ConnId, u16)>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    next: u64,
}

impl Queries {
    fn answer(&mut self, token: u64, answer: Result<Vec<u8>, AskError>) {
        if let Some((index, reply, _, _)) = self.sent.remove(&token) {
            let _ = reply.send((index, answer));
        }
    }

    /// Every queued query fails with `error` (no connection for them).
    fn fail_queued(&mut self, error: &AskError) {
        for (index, _, reply) in self.queue.drain(..) {
            let _ = reply.send((index, Err(error.clone())));
        }
    }
}

impl Drop for Queries {
    /// The task stopped: whoever asks hears it, and asks again later.
    fn drop(&mut self) {
        let stopped = AskError::Stopped;
        self.fail_queued(&stopped);
        for (_, (index, reply, _, _)) in self.sent.drain() {
            let _ = reply.send((index, Err(stopped.clone())));
        }
    }
}

/// What the pipeline hands a server task.
#[derive(Debug)]
pub enum ServerInput {
    /// The dispatches of one flush, per zone, each zone's in order.
    Dispatch(Vec<(ZoneId, Vec<Dispatch>)>),
    /// A zone to serve from now on (zones defined at run time).
    AddZone(ZoneId, std::sync::Arc<ZoneConfig>),
    /// A zone to stop serving; what it still had queued is dropped.
    RemoveZone(ZoneId),
    /// A new session of the pipeline (the task outlives sessions, see
    /// `dns::kept`): its reports go to `reports` from now on, and
    /// `zones` are this server's zones under the session's ids. A zone
    /// served before under the same settings keeps its lane (it is only
    /// renamed to its new id, so late answers still find it); the others
    /// are removed or added. The pipeline hands a task over only when
    /// every zone was idle, so nothing queued is lost.
    Session {
        /// Where the session reads reports.
        reports: mpsc::UnboundedSender<LaneReport>,
        /// This task's index in the session (its reports carry it).
        server: usize,
        /// The session's zones of this server.
        zones: Vec<(ZoneId, std::sync::Arc<ZoneConfig>)>,
        /// The session's message limits.
        limits: Limits,
    },
}

/// A zone of this server, active or not. Small: a server may have 50,000
/// of them; the session settings are made when the zone has work.
struct Lane {
    zone: ZoneId,
    config: std::sync::Arc<ZoneConfig>,
    messages: Counter,
    bytes: Counter,
    ack_seconds: Histogram,
    retries: metrics::SeriesLabel,
}

/// A zone with work: its session and what the driver keeps for it.
struct Active {
    session: Session,
    /// When each dispatch was handed over, for the acknowledgement latency.
    pushed: VecDeque<(u64, Instant)>,
    /// No resend before this (the session's backoff after a failure).
    retry_at: Option<Instant>,
    /// It was told once that the server cannot be reached (one
    /// `Unreachable` per zone and outage, not one per connect attempt).
    told_unreachable: bool,
}

/// A zone with work but no session yet: what was pushed, in order, until
/// the zone's turn to send (see [`ServerTask::activate`]).
#[derive(Default)]
struct Waiting {
    dispatches: Vec<(Dispatch, Instant)>,
    /// Operations in `dispatches` (the session's queue bound, kept here too).
    ops: usize,
}

/// A connection slot's I/O.
enum Io {
    Connecting(u64),
    Up {
        generation: u64,
        writer: OwnedWriteHalf,
        reader: tokio::task::JoinHandle<()>,
    },
}

impl Io {
    fn generation(&self) -> u64 {
        match self {
            Io::Connecting(g) | Io::Up { generation: g, .. } => *g,
        }
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        if let Io::Up { reader, .. } = self {
            reader.abort();
        }
    }
}

/// What the connect and reader tasks report.
enum ConnEvent {
    Connected(OwnedWriteHalf, tokio::net::tcp::OwnedReadHalf, SocketAddr),
    ConnectFailed(std::io::Error),
    Frame(Vec<u8>),
    Closed(Option<std::io::Error>),
}

/// The task of one DNS server. Runs until its input closes and every zone
/// is idle, or until the pipeline drops it.
pub struct ServerTask {
    /// The server as configured (for logs).
    name: String,
    primary: PrimaryAddr,
    limits: ServerLimits,
    zone_limits: Limits,
    pool: ServerPool,
    lanes: HashMap<LaneId, Lane>,
    /// The lane of each zone, by the current session's id. Lanes are
    /// numbered by the task and never reused, so an answer to a zone
    /// removed in between reaches no other zone.
    by_zone: HashMap<ZoneId, LaneId>,
    next_lane: u32,
    active: HashMap<LaneId, Active>,
    /// Zones with work and no session yet (never also in `active`).
    waiting: HashMap<LaneId, Waiting>,
    halted: HashSet<LaneId>,
    /// Lanes that may have something to send, served round robin.
    ready: VecDeque<LaneId>,
    queued: HashSet<LaneId>,
    /// Active lanes whose session has no room for more dispatches.
    full: HashSet<LaneId>,
    /// Answer deadlines and resend times (lazy: stale entries are skipped).
    timers: BinaryHeap<Reverse<(Instant, LaneId)>>,
    io: Vec<Option<Io>>,
    generation: u64,
    events_tx: mpsc::UnboundedSender<(ConnId, u64, ConnEvent)>,
    events: mpsc::UnboundedReceiver<(ConnId, u64, ConnEvent)>,
    reports: mpsc::UnboundedSender<LaneReport>,
    /// This task's index in the current session.
    index: usize,
    connections: Gauge,
    connections_max: Gauge,
    in_flight: Gauge,
    /// The most sessions at once (`pg2dns_server_sessions_max`).
    sessions_max: Gauge,
    sessions_high: usize,
    /// The status's SOA queries.
    queries: Queries,
}

impl ServerTask {
    /// The task of the server at `primary`, with no zones yet.
    pub fn new(
        primary: PrimaryAddr,
        name: String,
        limits: ServerLimits,
        zone_limits: &Limits,
        reports: mpsc::UnboundedSender<LaneReport>,
    ) -> ServerTask {
        // Message IDs start somewhere unpredictable (RFC 5452 §9.2 asks it of
        // queries; here it only keeps restarts from reusing IDs).
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let pool = ServerPool::new(
            PoolLimits {
                connections: limits.connections,
                max_in_flight: limits.max_in_flight,
                idle_close: limits.idle_close,
                connects_at_once: 1,
            },
            (seed & 0xffff) as u16,
            Instant::now(),
        );
        let (events_tx, events) = mpsc::unbounded_channel();
        let m = metrics::get();
        let label = metrics::ServerLabel {
            server: name.clone(),
        };
        ServerTask {
            io: (0..pool.limits().connections).map(|_| None).collect(),
            pool,
            primary,
            limits,
            zone_limits: zone_limits.clone(),
            lanes: HashMap::default(),
            by_zone: HashMap::default(),
            next_lane: 0,
            active: HashMap::default(),
            waiting: HashMap::default(),
            halted: HashSet::new(),
            ready: VecDeque::new(),
            queued: HashSet::new(),
            full: HashSet::new(),
            timers: BinaryHeap::new(),
            generation: 0,
            events_tx,
            events,
            reports,
            index: 0,
            connections: m.server_connections.get_or_create(&label).clone(),
            connections_max: m.server_connections_max.get_or_create(&label).clone(),
            in_flight: m.server_in_flight.get_or_create(&label).clone(),
            sessions_max: m.server_sessions_max.get_or_create(&label).clone(),
            sessions_high: 0,
            queries: Queries::default(),
            name,
        }
    }

    /// The session settings of `config` under the zone limits `limits`.
    fn session_config(limits: &Limits, config: &ZoneConfig) -> SessionConfig {
        SessionConfig {
            zone: config.name.clone(),
            key: config.key.clone(),
            budget: Budget {
                max_message_bytes: limits.max_message_bytes,
                tsig_record_len: config.key.record_len(),
            },
            window: limits.window,
            timeout: limits.dns_timeout,
            server: config.primary.to_string(),
        }
    }

    /// Serves `zone` (whose primary is this server) from now on.
    pub fn add_zone(&mut self, zone: ZoneId, config: &std::sync::Arc<ZoneConfig>) {
        if let Some(old) = self.by_zone.get(&zone).copied() {
            self.remove_lane(old);
        }
        let m = metrics::get();
        let label = m.series(&config.name.to_string(), &config.primary.to_string());
        let lane = Lane {
            zone,
            config: config.clone(),
            messages: m.messages.get_or_create(&label).clone(),
            bytes: m.bytes.get_or_create(&label).clone(),
            ack_seconds: m.ack_seconds.get_or_create(&label).clone(),
            retries: label,
        };
        let id = LaneId(self.next_lane);
        self.next_lane = self.next_lane.wrapping_add(1);
        self.lanes.insert(id, lane);
        self.by_zone.insert(zone, id);
    }

    /// Stops serving `zone`: its session and what it had queued go.
    pub fn remove_zone(&mut self, zone: ZoneId) {
        if let Some(lane) = self.by_zone.remove(&zone) {
            self.remove_lane(lane);
        }
    }

    fn remove_lane(&mut self, lane: LaneId) {
        self.pool.forget(lane, Instant::now());
        self.active.remove(&lane);
        self.waiting.remove(&lane);
        self.full.remove(&lane);
        self.halted.remove(&lane);
        if let Some(l) = self.lanes.remove(&lane) {
            if self.by_zone.get(&l.zone) == Some(&lane) {
                self.by_zone.remove(&l.zone);
            }
        }
    }

    /// A new session's zones of this server (see [`ServerInput::Session`]).
    fn start_session(
        &mut self,
        reports: mpsc::UnboundedSender<LaneReport>,
        server: usize,
        zones: Vec<(ZoneId, std::sync::Arc<ZoneConfig>)>,
        limits: Limits,
    ) {
        self.reports = reports;
        self.index = server;
        let before = std::mem::replace(&mut self.zone_limits, limits);
        let mut by_name: HashMap<pg2dns_decoder::ZoneName, LaneId> = self
            .lanes
            .iter()
            .map(|(id, l)| (l.config.name.clone(), *id))
            .collect();
        self.by_zone.clear();
        // Room for every zone at once: no table rehashed (twice its size)
        // zone by zone.
        self.by_zone.reserve(zones.len());
        self.lanes
            .reserve(zones.len().saturating_sub(self.lanes.len()));
        let mut added = Vec::new();
        let mut kept = 0usize;
        for (zone, config) in zones {
            let settings = Self::session_config(&self.zone_limits, &config);
            match by_name.remove(&config.name) {
                Some(lane)
                    if !self.halted.contains(&lane)
                        && self.lanes.get(&lane).is_some_and(|l| {
                            Self::session_config(&before, &l.config) == settings
                        }) =>
                {
                    if let Some(l) = self.lanes.get_mut(&lane) {
                        l.zone = zone;
                    }
                    self.by_zone.insert(zone, lane);
                    kept += 1;
                }
                Some(lane) => {
                    self.remove_lane(lane);
                    added.push((zone, config));
                }
                None => added.push((zone, config)),
            }
        }
        let removed = by_name.len();
        for (_, lane) in by_name {
            self.remove_lane(lane);
        }
        let new = added.len();
        for (zone, config) in added {
            self.add_zone(zone, &config);
        }
        debug!(server = %self.name, kept, added = new, removed, "a new session's zones");
    }

    /// Runs until `input` closes and every zone is idle (a clean stop).
    /// The status's SOA queries come on `soa`.
    pub async fn run(
        mut self,
        mut input: mpsc::Receiver<ServerInput>,
        mut soa: mpsc::UnboundedReceiver<SoaAsk>,
    ) {
        let mut input_open = true;
        let mut soa_open = true;
        loop {
            let now = Instant::now();
            while let Some(conn) = self.pool.poll_idle(now) {
                debug!(server = %self.name, conn = conn.0, "closing an idle connection");
                self.io[conn.index()] = None;
            }
            self.fail_lost_queries();
            if !input_open && self.active.is_empty() && self.waiting.is_empty() {
                return;
            }
            self.connect(now);
            self.send(now).await;
            self.send_queries(now).await;
            self.publish();
            let deadline = self.next_deadline();
            tokio::select! {
                batch = input.recv(), if input_open && self.full.is_empty() => match batch {
                    Some(first) => {
                        self.take(first);
                        // Take what else is already waiting, so it can be coalesced.
                        while self.full.is_empty() {
                            match input.try_recv() {
                                Ok(more) => self.take(more),
                                Err(_) => break,
                            }
                        }
                    }
                    None => input_open = false,
                },
                Some((conn, generation, event)) = self.events.recv() => {
                    self.on_conn_event(conn, generation, event);
                    // Answers come in bursts: take those already there.
                    while let Ok((conn, generation, event)) = self.events.try_recv() {
                        self.on_conn_event(conn, generation, event);
                    }
                }
                ask = soa.recv(), if soa_open => match ask {
                    Some(ask) => {
                        self.take_soa(ask);
                        while let Ok(more) = soa.try_recv() {
                            self.take_soa(more);
                        }
                    }
                    None => soa_open = false,
                },
                _ = sleep_until(deadline) => self.on_timers(Instant::now()),
            }
        }
    }

    fn take_soa(&mut self, ask: SoaAsk) {
        for (index, zone) in ask.zones {
            self.queries
                .queue
                .push_back((index, zone, ask.reply.clone()));
        }
    }

    /// The queries on connections lost since: failed (asked again later).
    fn fail_lost_queries(&mut self) {
        for QueryId(token) in self.pool.take_lost_queries() {
            let closed = std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the connection was lost",
            );
            self.queries.answer(
                token,
                Err(AskError::Connection(std::sync::Arc::new(closed))),
            );
        }
    }

    /// Sends queued SOA queries while no zone is ready to send an UPDATE
    /// and the pool has room for a query on a connection already up.
    async fn send_queries(&mut self, now: Instant) {
        while self.ready.is_empty() && !self.queries.queue.is_empty() {
            let Some(conn) = self.pool.query_conn() else {
                break;
            };
            let Some((index, zone, reply)) = self.queries.queue.pop_front() else {
                break;
            };
            if reply.is_closed() {
                // Its asker is gone (a session that ended): not worth asking.
                continue;
            }
            let id = self.pool.free_id(conn);
            let message = super::axfr::query(&zone, 6, id);
            let token = self.queries.next;
            self.queries.next += 1;
            self.pool.on_query_sent(conn, id, QueryId(token), now);
            self.queries.sent.insert(token, (index, reply, conn, id));
            self.queries
                .deadlines
                .push(Reverse((now + SOA_TIMEOUT, token)));
            let written = match self.io[conn.index()].as_mut() {
                Some(Io::Up { writer, .. }) => write_frame(writer, &message).await,
                _ => Err(std::io::Error::other("the connection is not up")),
            };
            if let Err(e) = written {
                debug!(server = %self.name, conn = conn.0, error = %e, "write failed");
                self.lost(conn, now);
                self.fail_lost_queries();
            }
        }
    }

    fn take(&mut self, input: ServerInput) {
        match input {
            ServerInput::Dispatch(batch) => {
                let now = Instant::now();
                for (zone, dispatches) in batch {
                    let Some(lane) = self.by_zone.get(&zone).copied() else {
                        debug_assert!(false, "a dispatch for {zone:?}, not a zone of this server");
                        continue;
                    };
                    self.push(lane, dispatches, now);
                }
            }
            ServerInput::AddZone(zone, config) => self.add_zone(zone, &config),
            ServerInput::RemoveZone(zone) => self.remove_zone(zone),
            ServerInput::Session {
                reports,
                server,
                zones,
                limits,
            } => self.start_session(reports, server, zones, limits),
        }
    }

    fn push(&mut self, lane: LaneId, dispatches: Vec<Dispatch>, now: Instant) {
        if self.halted.contains(&lane) {
            return;
        }
        if !self.lanes.contains_key(&lane) {
            debug_assert!(false, "a dispatch for {lane}, not a zone of this server");
            return;
        }
        let Some(a) = self.active.get_mut(&lane) else {
            // No session yet: the dispatches wait for the zone's turn.
            let w = self.waiting.entry(lane).or_default();
            for d in dispatches {
                w.ops += d.groups.iter().map(|g| g.ops.len()).sum::<usize>();
                w.dispatches.push((d, now));
            }
            if w.dispatches.len() >= MAX_QUEUED_DISPATCHES || w.ops >= MAX_QUEUED_OPS {
                // As much as a session holds: it takes them (and says it is
                // full, which stops the input until it has room again).
                self.activate(lane, now);
            }
            self.make_ready(lane);
            return;
        };
        for d in dispatches {
            a.pushed.push_back((d.id, now));
            a.session.push(d);
        }
        if !a.session.has_room() {
            self.full.insert(lane);
        }
        self.events_of(lane, now);
        self.make_ready(lane);
    }

    /// Makes the session of a waiting zone (its turn to send came) and
    /// hands it what waited. Whether the zone still has work: dispatches
    /// without operations are acknowledged at once, and the session goes.
    fn activate(&mut self, lane: LaneId, now: Instant) -> bool {
        let Some(w) = self.waiting.remove(&lane) else {
            return self.active.contains_key(&lane);
        };
        let Some(l) = self.lanes.get(&lane) else {
            return false;
        };
        let mut a = Active {
            session: Session::new(Self::session_config(&self.zone_limits, &l.config)),
            pushed: VecDeque::with_capacity(w.dispatches.len()),
            retry_at: None,
            told_unreachable: false,
        };
        for (d, at) in w.dispatches {
            a.pushed.push_back((d.id, at));
            a.session.push(d);
        }
        if !a.session.has_room() {
            self.full.insert(lane);
        }
        self.active.insert(lane, a);
        self.sessions_high = self.sessions_high.max(self.active.len());
        self.events_of(lane, now);
        self.active.contains_key(&lane)
    }

    fn make_ready(&mut self, lane: LaneId) {
        if (self.active.contains_key(&lane) || self.waiting.contains_key(&lane))
            && self.queued.insert(lane)
        {
            self.ready.push_back(lane);
        }
    }

    /// Opens a connection when zones wait for one.
    fn connect(&mut self, now: Instant) {
        let waiting = self
            .ready
            .iter()
            .filter(|l| self.pool.assigned(**l).is_none())
            .take(1)
            .count()
            // Queries alone ask for a connection only when none is open.
            + usize::from(!self.queries.queue.is_empty() && self.pool.open() == 0);
        let Some(conn) = self.pool.poll_connect(now, waiting) else {
            return;
        };
        self.generation += 1;
        let generation = self.generation;
        self.io[conn.index()] = Some(Io::Connecting(generation));
        let primary = self.primary.clone();
        let timeout = self.limits.connect_timeout;
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            let event = match open(&primary, timeout).await {
                Ok((stream, addr)) => {
                    let (read, write) = stream.into_split();
                    ConnEvent::Connected(write, read, addr)
                }
                Err(e) => ConnEvent::ConnectFailed(e),
            };
            let _ = tx.send((conn, generation, event));
        });
    }

    /// Sends what the pool's cap and the zones' windows allow, one message
    /// per ready zone in turn.
    async fn send(&mut self, now: Instant) {
        let unix = super::axfr::unix_now();
        while self.pool.has_room() {
            let Some(lane) = self.ready.pop_front() else {
                break;
            };
            if self.waiting.contains_key(&lane) && !self.activate(lane, now) {
                self.queued.remove(&lane);
                continue;
            }
            let Some(a) = self.active.get_mut(&lane) else {
                self.queued.remove(&lane);
                continue;
            };
            if a.retry_at.is_some_and(|t| t > now) || a.session.is_idle() {
                // Its timer makes it ready again.
                self.queued.remove(&lane);
                continue;
            }
            let Some(conn) = self.pool.assign(lane) else {
                // No connection is up (a lost one takes its lanes with it,
                // so no other lane can send either): wait for one.
                self.ready.push_front(lane);
                break;
            };
            if a.session.wants_connection() {
                a.told_unreachable = false;
                a.session.on_connected(now);
            }
            let id = self.pool.free_id(conn);
            let Some(message) = a.session.poll_transmit(now, unix, id) else {
                // Window full or nothing packed: an answer makes it ready.
                self.queued.remove(&lane);
                if a.session.has_room() {
                    self.full.remove(&lane);
                }
                self.events_of(lane, now);
                continue;
            };
            if a.session.has_room() {
                self.full.remove(&lane);
            }
            if let Some(deadline) = a.session.poll_timeout() {
                self.timers.push(Reverse((deadline, lane)));
            }
            self.pool.on_sent(conn, id, lane, now);
            if let Some(l) = self.lanes.get(&lane) {
                l.messages.inc();
                l.bytes.inc_by(message.len() as u64);
            }
            failpoint::hit("before-dns-send");
            let written = match self.io[conn.index()].as_mut() {
                Some(Io::Up { writer, .. }) => write_frame(writer, &message).await,
                _ => Err(std::io::Error::other("the connection is not up")),
            };
            match written {
                Ok(()) => failpoint::hit("after-dns-send"),
                Err(e) => {
                    debug!(server = %self.name, conn = conn.0, error = %e, "write failed");
                    self.lost(conn, now);
                }
            }
            self.ready.push_back(lane);
        }
    }

    fn on_conn_event(&mut self, conn: ConnId, generation: u64, event: ConnEvent) {
        let current = self.io[conn.index()]
            .as_ref()
            .is_some_and(|io| io.generation() == generation);
        if !current {
            return;
        }
        let now = Instant::now();
        match event {
            ConnEvent::Connected(writer, read, addr) => {
                debug!(server = %self.name, %addr, conn = conn.0, "connected");
                let tx = self.events_tx.clone();
                let reader = tokio::spawn(read_frames(read, conn, generation, tx));
                self.io[conn.index()] = Some(Io::Up {
                    generation,
                    writer,
                    reader,
                });
                self.pool.on_connected(conn, now);
            }
            ConnEvent::ConnectFailed(e) => {
                self.io[conn.index()] = None;
                let wait = self.pool.on_connect_failed(conn, now);
                if self.pool.open() == 0 {
                    // No connection for the queued queries: they fail
                    // now, and the status asks again later.
                    let error = AskError::Connect(std::sync::Arc::new(std::io::Error::new(
                        e.kind(),
                        e.to_string(),
                    )));
                    self.queries.fail_queued(&error);
                }
                let waiting: Vec<LaneId> = self
                    .ready
                    .iter()
                    .copied()
                    .filter(|l| self.pool.assigned(*l).is_none())
                    .collect();
                warn!(server = %self.name, error = %e, zones_waiting = waiting.len(), retry_in = ?wait, "cannot connect to the server; changes wait");
                // One connection retried: counted once per series (per
                // server, or per zone with [metrics] per_zone).
                let series: HashSet<&metrics::SeriesLabel> = waiting
                    .iter()
                    .filter_map(|l| self.lanes.get(l).map(|l| &l.retries))
                    .collect();
                let m = metrics::get();
                for label in series {
                    m.dns_retries
                        .get_or_create(&(
                            label.clone(),
                            metrics::ReasonLabel {
                                reason: "unreachable".into(),
                            },
                        ))
                        .inc();
                }
                // Each waiting zone hears it once per outage.
                for lane in waiting {
                    if let Some(a) = self.active.get_mut(&lane) {
                        if !a.told_unreachable {
                            a.told_unreachable = true;
                            a.session.on_connect_failed(now);
                            self.events_of(lane, now);
                        }
                    }
                }
            }
            ConnEvent::Frame(frame) => {
                let Some(id) = frame.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
                    // Too short to carry an ID: whose it is is unknown, so
                    // the connection is not to be trusted.
                    debug!(server = %self.name, len = frame.len(), "an answer too short for a DNS message");
                    self.lost(conn, now);
                    return;
                };
                match self.pool.on_answer(conn, id, now) {
                    Answer::Live(lane) => {
                        if let Some(a) = self.active.get_mut(&lane) {
                            a.session
                                .handle_response(&frame, now, super::axfr::unix_now());
                        }
                        self.events_of(lane, now);
                        self.make_ready(lane);
                    }
                    Answer::Query(QueryId(token)) => self.queries.answer(token, Ok(frame)),
                    Answer::Dead | Answer::Unknown => {}
                }
            }
            ConnEvent::Closed(error) => {
                debug!(server = %self.name, conn = conn.0, error = ?error, "connection closed");
                self.lost(conn, now);
            }
        }
    }

    /// `conn` is gone: every zone on it is told, and resends if it awaited
    /// answers there.
    fn lost(&mut self, conn: ConnId, now: Instant) {
        self.io[conn.index()] = None;
        for lane in self.pool.on_lost(conn, now) {
            if let Some(a) = self.active.get_mut(&lane) {
                a.session.on_disconnected(now);
            }
            self.events_of(lane, now);
            self.make_ready(lane);
        }
    }

    fn on_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, token))) = self.queries.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.queries.deadlines.pop();
            // Answered ones are stale entries, skipped.
            if let Some(&(_, _, conn, id)) = self.queries.sent.get(&token) {
                self.pool.expire_query(conn, id);
                self.queries
                    .answer(token, Err(AskError::Timeout(SOA_TIMEOUT)));
            }
        }
        while let Some(Reverse((at, lane))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(a) = self.active.get_mut(&lane) else {
                continue;
            };
            if a.retry_at.is_some_and(|t| t <= now) {
                a.retry_at = None;
            }
            a.session.handle_timeout(now);
            self.events_of(lane, now);
            self.make_ready(lane);
        }
    }

    /// Reports what `lane`'s session said, and drops the session once idle.
    fn events_of(&mut self, lane: LaneId, now: Instant) {
        let (reports, index) = (self.reports.clone(), self.index);
        let mut work = vec![lane];
        while let Some(lane) = work.pop() {
            // Zones of a connection dropped for this one's timeout.
            let mut dropped: Vec<LaneId> = Vec::new();
            let (Some(a), Some(l)) = (self.active.get_mut(&lane), self.lanes.get(&lane)) else {
                continue;
            };
            while let Some(event) = a.session.poll_event() {
                match event {
                    Event::Acked { upto } => {
                        while a.pushed.front().is_some_and(|(id, _)| *id <= upto) {
                            if let Some((_, at)) = a.pushed.pop_front() {
                                l.ack_seconds.observe(at.elapsed().as_secs_f64());
                            }
                        }
                        let _ = report(&reports, index, ZoneReport::Acked { zone: l.zone, upto });
                    }
                    Event::Retrying {
                        lsn,
                        reason,
                        backoff,
                    } => {
                        if reason == RetryReason::Unreachable {
                            // Counted per connect attempt (above); said
                            // once for the server; the pool backs off.
                            debug!(zone = %l.config.name, server = %self.name, %lsn, "waiting for a connection");
                            continue;
                        }
                        metrics::get()
                            .dns_retries
                            .get_or_create(&(
                                l.retries.clone(),
                                metrics::ReasonLabel {
                                    reason: metrics::retry_reason(&reason).into(),
                                },
                            ))
                            .inc();
                        warn!(zone = %l.config.name, server = %self.name, %lsn, %reason, retry_in = ?backoff, "UPDATE not acknowledged; will resend in order");
                        a.retry_at = Some(now + backoff);
                        self.timers.push(Reverse((now + backoff, lane)));
                        if let Some(conn) = self.pool.assigned(lane) {
                            if matches!(reason, RetryReason::Timeout { .. }) {
                                // Its late copies may still be applied: the
                                // connection goes, and every zone on it resends.
                                self.io[conn.index()] = None;
                                dropped.extend(
                                    self.pool
                                        .on_lost(conn, now)
                                        .into_iter()
                                        .filter(|o| *o != lane),
                                );
                            } else {
                                // SERVFAIL or a malformed answer concern
                                // this zone: it resends on the same
                                // connection, behind its given-up copies.
                                self.pool.release(lane);
                            }
                        }
                    }
                    Event::Refused { lsn, group, rcode } => {
                        warn!(zone = %l.config.name, %lsn, owner = %group.owner, %rcode, "the primary refused an owner group on its own; its rows are rejected and the stream goes on");
                        let _ = report(
                            &reports,
                            index,
                            ZoneReport::Refused {
                                zone: l.zone,
                                lsn,
                                group,
                                rcode,
                            },
                        );
                    }
                    Event::Halted(error) => {
                        let _ = report(
                            &reports,
                            index,
                            ZoneReport::Halted {
                                zone: l.zone,
                                error,
                            },
                        );
                        self.halted.insert(lane);
                        break;
                    }
                }
            }
            for other in dropped {
                if let Some(o) = self.active.get_mut(&other) {
                    o.session.on_disconnected(now);
                }
                work.push(other);
                self.make_ready(other);
            }
            let Some(a) = self.active.get(&lane) else {
                continue;
            };
            if self.halted.contains(&lane) {
                self.pool.forget(lane, now);
                self.active.remove(&lane);
                self.full.remove(&lane);
            } else if a.session.is_idle() && self.pool.unassign(lane, now) {
                self.active.remove(&lane);
                self.full.remove(&lane);
            }
        }
        self.shrink_when_idle();
    }

    /// Gives back the tables a burst touching thousands of zones grew (a
    /// hash map never shrinks by itself; at 50,000 zones `active` alone is
    /// tens of MiB), once no zone has work.
    fn shrink_when_idle(&mut self) {
        const KEEP: usize = 1024;
        if self.active.is_empty()
            && self.waiting.is_empty()
            && (self.active.capacity() > KEEP || self.waiting.capacity() > KEEP)
        {
            self.active = HashMap::default();
            self.waiting = HashMap::default();
            self.full = HashSet::new();
            self.queued = HashSet::new();
            self.ready = VecDeque::new();
            self.timers = BinaryHeap::new();
        }
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        // Stale entries (zones gone or idle) are dropped here, lazily.
        while let Some(Reverse((_, lane))) = self.timers.peek() {
            if self.active.contains_key(lane) {
                break;
            }
            self.timers.pop();
        }
        let lanes = self.timers.peek().map(|Reverse((at, _))| *at);
        while let Some(Reverse((_, token))) = self.queries.deadlines.peek() {
            if self.queries.sent.contains_key(token) {
                break;
            }
            self.queries.deadlines.pop();
        }
        let queries = self.queries.deadlines.peek().map(|Reverse((at, _))| *at);
        [lanes, queries, self.pool.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    fn publish(&self) {
        self.connections.set(self.pool.open() as i64);
        self.connections_max.set(self.pool.high_water() as i64);
        // UPDATEs only: the status's SOA queries are not counted here.
        let updates = self.pool.in_flight() - self.pool.queries_in_flight();
        self.in_flight.set(updates as i64);
        self.sessions_max
            .set(i64::try_from(self.sessions_high).unwrap_or(i64::MAX));
    }
}

/// Resolves `primary` (a host name again each time: the server may have
/// moved) and connects to its addresses in turn.
async fn open(
    primary: &PrimaryAddr,
    timeout: std::time::Duration,
) -> std::io::Result<(TcpStream, SocketAddr)> {
    let mut last = std::io::Error::other("no address tried");
    for addr in primary.resolve().await? {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                stream.set_nodelay(true)?;
                return Ok((stream, addr));
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        }
    }
    Err(last)
}

async fn write_frame(writer: &mut OwnedWriteHalf, message: &[u8]) -> std::io::Result<()> {
    writer.write_all(&super::conn::frame(message)?).await
}

/// A connection's reader: every whole frame to the server task, then how
/// the connection ended.
async fn read_frames(
    mut read: tokio::net::tcp::OwnedReadHalf,
    conn: ConnId,
    generation: u64,
    tx: mpsc::UnboundedSender<(ConnId, u64, ConnEvent)>,
) {
    let mut buf = BytesMut::new();
    loop {
        while let Some(frame) = super::conn::take_frame(&mut buf) {
            if tx
                .send((conn, generation, ConnEvent::Frame(frame)))
                .is_err()
            {
                return;
            }
        }
        buf.reserve(64 * 1024);
        let end = match read.read_buf(&mut buf).await {
            Ok(0) if buf.is_empty() => None,
            Ok(0) => Some(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection inside a message",
            )),
            Ok(_) => continue,
            Err(e) => Some(e),
        };
        let _ = tx.send((conn, generation, ConnEvent::Closed(end)));
        return;
    }
}

/// Sends a lane's report, tagged with its server task's index.
fn report(
    reports: &mpsc::UnboundedSender<LaneReport>,
    server: usize,
    report: ZoneReport,
) -> Result<(), ()> {
    reports
        .send(LaneReport::Zone { server, report })
        .map_err(|_| ())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    fn zone_limits() -> Limits {
        Limits {
            max_message_bytes: 65_535,
            max_records_per_rrset: 100,
            window: 4,
            dns_timeout: Duration::from_secs(5),
            unreachable_after: Duration::from_secs(60),
            degraded_queue: 1000,
            max_unacked_zones: 4096,
        }
    }

    /// A task for the server at `addr` with a pool of `connections`, run
    /// in the background; its SOA channel.
    fn task(addr: SocketAddr, connections: usize) -> mpsc::UnboundedSender<SoaAsk> {
        let (reports, _) = mpsc::unbounded_channel();
        let limits = ServerLimits {
            connections,
            max_in_flight: 8,
            idle_close: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        };
        let primary = PrimaryAddr::parse(&addr.to_string()).unwrap();
        let t = ServerTask::new(primary, addr.to_string(), limits, &zone_limits(), reports);
        let (input_tx, input) = mpsc::channel(4);
        let (soa_tx, soa) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            // The input stays open while the test runs.
            let _input_tx = input_tx;
            t.run(input, soa).await;
        });
        soa_tx
    }

    /// A DNS server on loopback answering each SOA query with its own
    /// question (any order within a read), except for zones whose name
    /// starts with "silent"; it counts the connections it accepted.
    async fn soa_server() -> (SocketAddr, Arc<Mutex<usize>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(Mutex::new(0usize));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                *count.lock().unwrap() += 1;
                tokio::spawn(async move {
                    let mut buf = BytesMut::new();
                    loop {
                        let mut frames = Vec::new();
                        while let Some(f) = super::super::conn::take_frame(&mut buf) {
                            frames.push(f);
                        }
                        for q in frames.iter().rev() {
                            if q.get(13..19) == Some(b"silent") {
                                continue;
                            }
                            let mut a = q[..2].to_vec();
                            a.extend_from_slice(&[0x84, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
                            a.extend_from_slice(&q[12..]);
                            if s.write_all(&super::super::conn::frame(&a).unwrap())
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        match s.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// The wire form of `zone`'s question (name, type SOA, class IN).
    fn question(zone: &ZoneName) -> Vec<u8> {
        super::super::axfr::query(zone, 6, 0)[12..].to_vec()
    }

    async fn answers(
        rx: &mut mpsc::UnboundedReceiver<(usize, Result<Vec<u8>, AskError>)>,
        n: usize,
    ) -> HashMap<usize, Result<Vec<u8>, AskError>> {
        let mut got = HashMap::default();
        while got.len() < n {
            let (i, a) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .expect("every ask answered")
                .expect("the reply channel open");
            assert!(got.insert(i, a).is_none(), "ask {i} answered twice");
        }
        got
    }

    #[tokio::test]
    async fn soa_queries_go_over_one_pooled_connection_and_an_unanswered_one_times_out() {
        let (addr, accepted) = soa_server().await;
        let soa = task(addr, 4);
        let (reply, mut rx) = mpsc::unbounded_channel();
        let mut zones: Vec<(usize, ZoneName)> = (0..20)
            .map(|i| (i, ZoneName::parse(&format!("z{i}.Pool-Test.")).unwrap()))
            .collect();
        zones.push((99, ZoneName::parse("silent.pool-test.").unwrap()));
        soa.send(SoaAsk {
            zones: zones.clone(),
            reply,
        })
        .unwrap();
        let got = answers(&mut rx, zones.len()).await;
        for (i, zone) in &zones {
            match (&got[i], *i) {
                (Err(AskError::Timeout(t)), 99) => assert_eq!(*t, SOA_TIMEOUT),
                (Ok(frame), i) if i != 99 => {
                    assert_eq!(frame[12..], question(zone)[..], "ask {i}'s own answer")
                }
                (other, i) => panic!("ask {i}: {other:?}"),
            }
        }
        // Queries alone open one connection (none was open), and more than
        // a connection's share of them waits for room on it.
        assert_eq!(*accepted.lock().unwrap(), 1, "connections opened");
        // The connection stays for what comes next.
        let (reply, mut rx) = mpsc::unbounded_channel();
        soa.send(SoaAsk {
            zones: zones[..3].to_vec(),
            reply,
        })
        .unwrap();
        let got = answers(&mut rx, 3).await;
        assert!(got.values().all(Result::is_ok), "{got:?}");
        assert_eq!(*accepted.lock().unwrap(), 1, "connections opened");
    }

    #[tokio::test]
    async fn soa_queries_to_a_server_that_cannot_be_reached_fail_and_can_be_asked_again() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let soa = task(addr, 2);
        for _ in 0..2 {
            let (reply, mut rx) = mpsc::unbounded_channel();
            let zones: Vec<(usize, ZoneName)> = (0..5)
                .map(|i| (i, ZoneName::parse(&format!("z{i}.test.")).unwrap()))
                .collect();
            soa.send(SoaAsk { zones, reply }).unwrap();
            let got = answers(&mut rx, 5).await;
            assert!(
                got.values().all(|a| matches!(a, Err(AskError::Connect(_)))),
                "{got:?}"
            );
        }
    }

    #[tokio::test]
    async fn soa_queries_of_a_stopped_task_are_reported_stopped() {
        let (reply, mut rx) = mpsc::unbounded_channel();
        {
            let mut queries = Queries::default();
            queries
                .queue
                .push_back((3, ZoneName::parse("a.test.").unwrap(), reply.clone()));
            queries.sent.insert(0, (4, reply, ConnId(0), 17));
        }
        let got = answers(&mut rx, 2).await;
        assert!(matches!(got[&3], Err(AskError::Stopped)));
        assert!(matches!(got[&4], Err(AskError::Stopped)));
    }
}
