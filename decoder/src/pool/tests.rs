//! The pool against a fake server that answers each zone in order per
//! connection but interleaves zones at random, fails messages, drops
//! connections and withholds answers, on a fake clock; status queries
//! ride along when no lane has work.

use std::collections::{HashMap, HashSet, VecDeque};

use proptest::prelude::*;

use super::*;

const LIMITS: PoolLimits = PoolLimits {
    connections: 3,
    max_in_flight: 7,
    idle_close: Duration::from_secs(5),
    connects_at_once: 1,
};

/// One lane as a session drives it: messages 0..total in order, a window,
/// and a resend from the first unacknowledged one after any failure.
#[derive(Debug)]
struct Lane {
    total: u32,
    /// Messages acknowledged, in order.
    acked: u32,
    /// The next message to send.
    next: u32,
    /// Sent and awaited: (connection, id, message).
    inflight: VecDeque<(ConnId, u16, u32)>,
}

const WINDOW: usize = 2;

/// The server's entries for status queries carry this lane (and the
/// query's token as the message).
const QUERY: LaneId = LaneId(u32::MAX);

impl Lane {
    fn has_work(&self) -> bool {
        self.next < self.total && self.inflight.len() < WINDOW
    }
    fn done(&self) -> bool {
        self.acked == self.total
    }
    fn resend(&mut self) {
        self.inflight.clear();
        self.next = self.acked;
    }
}

/// The world: the pool, the lanes, and what the server holds and applied.
struct World {
    now: Instant,
    pool: ServerPool,
    lanes: Vec<Lane>,
    /// Per connection slot, the messages the server received and has not
    /// answered, in arrival order: (id, lane, message).
    server: Vec<VecDeque<(u16, LaneId, u32)>>,
    /// Connects under way, oldest first.
    connecting: VecDeque<ConnId>,
    /// Per lane, the messages the server applied, in the order it did.
    applied: Vec<Vec<u32>>,
    connects: usize,
    /// Status queries to send (numbers), in order.
    query_todo: VecDeque<u32>,
    /// Queries in flight by token: (query, connection, id).
    query_sent: HashMap<u64, (u32, ConnId, u16)>,
    next_token: u64,
    /// Queries answered (each at least once).
    query_answered: HashSet<u32>,
}

#[derive(Clone, Debug)]
enum Op {
    /// The server answers the oldest message of one zone on one connection.
    Answer {
        conn: u8,
        pick: u8,
        servfail: bool,
    },
    /// A connection breaks; what the server still held is applied or lost.
    Drop {
        conn: u8,
        apply: bool,
    },
    ConnectOk,
    ConnectFail,
    Tick {
        ms: u16,
    },
    /// The status gives up on a query in flight (asked again later).
    Expire {
        pick: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (any::<u8>(), any::<u8>(), prop::bool::weighted(0.1))
            .prop_map(|(conn, pick, servfail)| Op::Answer { conn, pick, servfail }),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(conn, apply)| Op::Drop { conn, apply }),
        2 => Just(Op::ConnectOk),
        1 => Just(Op::ConnectFail),
        1 => (0u16..8000).prop_map(|ms| Op::Tick { ms }),
        1 => any::<u8>().prop_map(|pick| Op::Expire { pick }),
    ]
}

impl World {
    fn new(sizes: &[u32]) -> World {
        World::with_queries(sizes, 0)
    }

    fn with_queries(sizes: &[u32], queries: u32) -> World {
        let now = Instant::now();
        World {
            now,
            pool: ServerPool::new(LIMITS, 0xfff0, now),
            lanes: sizes
                .iter()
                .map(|&total| Lane {
                    total,
                    acked: 0,
                    next: 0,
                    inflight: VecDeque::new(),
                })
                .collect(),
            server: (0..LIMITS.connections).map(|_| VecDeque::new()).collect(),
            connecting: VecDeque::new(),
            applied: vec![Vec::new(); sizes.len()],
            connects: 0,
            query_todo: (0..queries).collect(),
            query_sent: HashMap::new(),
            next_token: 0,
            query_answered: HashSet::new(),
        }
    }

    /// What a driver does after every event: close idle connections, open
    /// one if lanes wait, send what the pool and the windows allow, free
    /// the lanes that are done.
    fn drive(&mut self) {
        while let Some(c) = self.pool.poll_idle(self.now) {
            // Only queries given up on may still be held there.
            let held = std::mem::take(&mut self.server[c.index()]);
            assert!(
                held.iter().all(|(_, lane, token)| *lane == QUERY
                    && !self.query_sent.contains_key(&u64::from(*token))),
                "an idle connection held messages: {held:?}"
            );
        }
        self.requeue_lost_queries();
        // A query asks for a connection only when none is open.
        let queries_wait = !self.query_todo.is_empty() && self.pool.open() == 0;
        let waiting = self
            .lanes
            .iter()
            .enumerate()
            .filter(|(i, l)| l.has_work() && self.pool.assigned(LaneId(*i as u32)).is_none())
            .count()
            + usize::from(queries_wait);
        if let Some(c) = self.pool.poll_connect(self.now, waiting) {
            self.connecting.push_back(c);
            self.connects += 1;
        }
        loop {
            let mut progress = false;
            for i in 0..self.lanes.len() {
                let lane = LaneId(i as u32);
                if !self.lanes[i].has_work() || !self.pool.has_room() {
                    continue;
                }
                let Some(conn) = self.pool.assign(lane) else {
                    continue;
                };
                let id = self.pool.free_id(conn);
                let seq = self.lanes[i].next;
                self.pool.on_sent(conn, id, lane, self.now);
                self.server[conn.index()].push_back((id, lane, seq));
                self.lanes[i].inflight.push_back((conn, id, seq));
                self.lanes[i].next += 1;
                progress = true;
            }
            if !progress {
                break;
            }
        }
        // Queries when no lane is ready to send: UPDATEs first.
        while !self.lanes.iter().any(Lane::has_work) && !self.query_todo.is_empty() {
            let Some(conn) = self.pool.query_conn() else {
                break;
            };
            let q = self.query_todo.pop_front().expect("a query");
            let id = self.pool.free_id(conn);
            let token = self.next_token;
            self.next_token += 1;
            self.pool.on_query_sent(conn, id, QueryId(token), self.now);
            self.server[conn.index()].push_back((id, QUERY, token as u32));
            self.query_sent.insert(token, (q, conn, id));
        }
        for i in 0..self.lanes.len() {
            if self.lanes[i].inflight.is_empty() && !self.lanes[i].has_work() {
                self.pool.unassign(LaneId(i as u32), self.now);
            }
        }
        self.check();
    }

    fn check(&self) {
        let limits = self.pool.limits();
        assert!(self.pool.in_flight() <= limits.max_in_flight);
        assert!(self.pool.open() <= limits.connections);
        assert!(self.pool.high_water() <= limits.connections);
        let live: usize = self.lanes.iter().map(|l| l.inflight.len()).sum();
        assert_eq!(self.pool.in_flight(), live + self.query_sent.len());
        assert_eq!(self.pool.queries_in_flight(), self.query_sent.len());
        assert!(self.pool.queries_in_flight() <= self.pool.max_queries());
        // Queries alone never fill the pool: an UPDATE finds room.
        if live == 0 {
            assert!(self.pool.has_room(), "queries filled the pool");
        }
        // One connection per lane in flight, and IDs unique per connection
        // among everything the server still holds (given-up ones included).
        for (i, l) in self.lanes.iter().enumerate() {
            let conns: HashSet<ConnId> = l.inflight.iter().map(|(c, _, _)| *c).collect();
            assert!(conns.len() <= 1, "lane {i} in flight on {conns:?}");
            let held: HashSet<usize> = (0..self.server.len())
                .filter(|&c| {
                    self.server[c]
                        .iter()
                        .any(|(_, lane, _)| lane.0 as usize == i)
                })
                .collect();
            assert!(
                held.len() <= 1,
                "lane {i} has messages on connections {held:?}"
            );
            if let (Some(c), Some(h)) = (conns.iter().next(), held.iter().next()) {
                assert_eq!(c.index(), *h);
            }
        }
        for (c, q) in self.server.iter().enumerate() {
            let ids: HashSet<u16> = q.iter().map(|(id, _, _)| *id).collect();
            assert_eq!(ids.len(), q.len(), "an ID twice on connection {c}");
        }
    }

    /// Queries on a lost connection go back to the queue (the status asks
    /// again); the pool names exactly those that were in flight there.
    fn requeue_lost_queries(&mut self) {
        for QueryId(token) in self.pool.take_lost_queries() {
            let (q, _, _) = self
                .query_sent
                .remove(&token)
                .expect("a lost query was in flight");
            self.query_todo.push_back(q);
        }
    }

    fn up_with_messages(&self) -> Vec<usize> {
        (0..self.server.len())
            .filter(|&c| !self.server[c].is_empty())
            .collect()
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Answer {
                conn,
                pick,
                servfail,
            } => {
                let busy = self.up_with_messages();
                if busy.is_empty() {
                    return;
                }
                let c = busy[usize::from(conn) % busy.len()];
                // Zones interleave: any zone's oldest message may be next.
                let zones: Vec<LaneId> = {
                    let mut seen = Vec::new();
                    for (_, l, _) in &self.server[c] {
                        if !seen.contains(l) {
                            seen.push(*l);
                        }
                    }
                    seen
                };
                let lane = zones[usize::from(pick) % zones.len()];
                let at = self.server[c]
                    .iter()
                    .position(|(_, l, _)| *l == lane)
                    .expect("the zone's oldest message");
                let (id, lane, seq) = self.server[c].remove(at).expect("present");
                if lane == QUERY {
                    let token = u64::from(seq);
                    match self.pool.on_answer(ConnId(c as u8), id, self.now) {
                        Answer::Query(QueryId(t)) => {
                            assert_eq!(t, token, "a query's answer reaches that query");
                            let (q, conn, qid) =
                                self.query_sent.remove(&t).expect("an awaited query");
                            assert_eq!((conn.index(), qid), (c, id));
                            self.query_answered.insert(q);
                        }
                        Answer::Dead => {
                            assert!(!self.query_sent.contains_key(&token), "an awaited query");
                        }
                        other => panic!("a query's answer went to {other:?}"),
                    }
                    self.drive();
                    return;
                }
                if !servfail {
                    self.applied[lane.0 as usize].push(seq);
                }
                match self.pool.on_answer(ConnId(c as u8), id, self.now) {
                    Answer::Live(l) => {
                        assert_eq!(l, lane);
                        let model = &mut self.lanes[l.0 as usize];
                        let (_, front_id, front_seq) = model
                            .inflight
                            .pop_front()
                            .expect("an answer the lane awaits");
                        assert_eq!(
                            (front_id, front_seq),
                            (id, seq),
                            "answers in order per zone"
                        );
                        if servfail {
                            // The session resends everything unacknowledged.
                            self.pool.release(l);
                            model.resend();
                        } else {
                            assert_eq!(seq, model.acked, "acknowledged in dispatch order");
                            model.acked += 1;
                        }
                    }
                    Answer::Query(q) => panic!("an UPDATE's answer went to {q:?}"),
                    Answer::Dead | Answer::Unknown => {}
                }
            }
            Op::Drop { conn, apply } => {
                let up: Vec<usize> = (0..self.server.len())
                    .filter(|&c| self.pool.is_up(ConnId(c as u8)))
                    .collect();
                if up.is_empty() {
                    return;
                }
                let c = up[usize::from(conn) % up.len()];
                for (_, lane, seq) in std::mem::take(&mut self.server[c]) {
                    if apply && lane != QUERY {
                        self.applied[lane.0 as usize].push(seq);
                    }
                }
                let lost: HashSet<LaneId> = self
                    .pool
                    .on_lost(ConnId(c as u8), self.now)
                    .into_iter()
                    .collect();
                for (i, l) in self.lanes.iter_mut().enumerate() {
                    let on_it = l.inflight.iter().any(|(x, _, _)| x.index() == c);
                    if on_it {
                        assert!(
                            lost.contains(&LaneId(i as u32)),
                            "lane {i} lost but not told"
                        );
                        l.resend();
                    }
                }
            }
            Op::ConnectOk => {
                if let Some(c) = self.connecting.pop_front() {
                    self.pool.on_connected(c, self.now);
                }
            }
            Op::ConnectFail => {
                if let Some(c) = self.connecting.pop_front() {
                    self.pool.on_connect_failed(c, self.now);
                }
            }
            Op::Tick { ms } => self.now += Duration::from_millis(u64::from(ms)),
            Op::Expire { pick } => {
                let mut sent: Vec<u64> = self.query_sent.keys().copied().collect();
                if sent.is_empty() {
                    return;
                }
                sent.sort_unstable();
                let token = sent[usize::from(pick) % sent.len()];
                let (q, conn, id) = self.query_sent.remove(&token).expect("in flight");
                assert!(self.pool.expire_query(conn, id), "it was awaited");
                assert!(!self.pool.expire_query(conn, id), "only once");
                self.query_todo.push_back(q);
            }
        }
        self.drive();
    }

    /// The server behaves from now on until every lane is done.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            if self.lanes.iter().all(Lane::done)
                && self.query_todo.is_empty()
                && self.query_sent.is_empty()
            {
                return;
            }
            if !self.connecting.is_empty() {
                self.apply(Op::ConnectOk);
            } else if !self.up_with_messages().is_empty() {
                self.apply(Op::Answer {
                    conn: 0,
                    pick: 0,
                    servfail: false,
                });
            } else {
                self.apply(Op::Tick { ms: 1000 });
            }
        }
        panic!("the lanes never finished: {:?}", self.lanes);
    }
}

/// Whatever the server applied more than once, the last application of each
/// message is in order: the zone ends as if applied once, in order (the
/// operations are idempotent add/delete-RR).
fn last_applications_in_order(applied: &[u32]) -> bool {
    let mut last: HashMap<u32, usize> = HashMap::new();
    for (at, seq) in applied.iter().enumerate() {
        last.insert(*seq, at);
    }
    let mut seqs: Vec<(u32, usize)> = last.into_iter().collect();
    seqs.sort();
    seqs.windows(2).all(|w| w[0].1 < w[1].1)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_zone_is_acknowledged_in_dispatch_order_under_any_interleaving(
        sizes in prop::collection::vec(1u32..6, 1..12),
        queries in 0u32..20,
        ops in prop::collection::vec(op(), 0..200),
    ) {
        // The checks after every step: pool_never_has_more_than_max_in_flight_or_connections,
        // a_message_id_is_never_live_twice_on_one_connection (given-up ones included),
        // a_zone_in_flight_uses_one_connection_at_a_time, and that a lost
        // connection names exactly the lanes in flight on it.
        // Status queries ride along: every one is answered in the end (asked
        // again after a loss or a give-up), never to a lane.
        let mut w = World::with_queries(&sizes, queries);
        w.drive();
        for op in ops {
            w.apply(op);
        }
        w.settle();
        for (i, l) in w.lanes.iter().enumerate() {
            prop_assert_eq!(l.acked, sizes[i]);
            let applied = &w.applied[i];
            prop_assert!(last_applications_in_order(applied), "zone {} applied {:?}", i, applied);
            for seq in 0..sizes[i] {
                prop_assert!(applied.contains(&seq), "zone {} never got {}", i, seq);
            }
        }
        prop_assert_eq!(w.pool.in_flight(), 0);
        prop_assert_eq!(w.query_answered.len(), queries as usize);
        // Then everything idles out.
        w.apply(Op::Tick { ms: 5000 });
        w.apply(Op::Tick { ms: 1 });
        prop_assert_eq!(w.pool.open() - w.connecting.len(), 0);
    }
}

#[test]
fn a_lost_connection_resends_exactly_the_zones_in_flight_on_it() {
    let mut w = World::new(&[3, 3, 3, 3]);
    w.drive();
    w.apply(Op::ConnectOk);
    // max_in_flight 7, window 2: the first connection took 7 messages of
    // four lanes; a second connection opened for the rest.
    assert_eq!(w.pool.in_flight(), 7);
    w.apply(Op::ConnectOk);
    let on_first: HashSet<LaneId> = w.pool.lanes_on(ConnId(0)).collect();
    assert_eq!(on_first.len(), 4);
    // Answer one zone's first message, then break the connection.
    w.apply(Op::Answer {
        conn: 0,
        pick: 0,
        servfail: false,
    });
    let lost = w.pool.on_lost(ConnId(0), w.now);
    let lost: HashSet<LaneId> = lost.into_iter().collect();
    assert_eq!(lost, on_first);
    assert_eq!(w.pool.in_flight(), 0);
    assert!(w.pool.assigned(LaneId(0)).is_none());
}

#[test]
fn an_idle_connection_closes_after_idle_close() {
    let t0 = Instant::now();
    let mut pool = ServerPool::new(LIMITS, 1, t0);
    let c = pool.poll_connect(t0, 1).expect("a connect");
    pool.on_connected(c, t0);
    let lane = LaneId(9);
    assert_eq!(pool.assign(lane), Some(c));
    let id = pool.free_id(c);
    pool.on_sent(c, id, lane, t0);
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(pool.on_answer(c, id, t1), Answer::Live(lane));
    assert_eq!(
        pool.poll_idle(t1 + LIMITS.idle_close),
        None,
        "still assigned"
    );
    assert!(pool.unassign(lane, t1));
    assert_eq!(pool.poll_timeout(), Some(t1 + LIMITS.idle_close));
    assert_eq!(
        pool.poll_idle(t1 + LIMITS.idle_close - Duration::from_millis(1)),
        None
    );
    assert_eq!(pool.poll_idle(t1 + LIMITS.idle_close), Some(c));
    assert_eq!(pool.open(), 0);
    assert_eq!(pool.poll_timeout(), None);
}

#[test]
fn connect_failures_back_off_once_per_server() {
    let t0 = Instant::now();
    let mut pool = ServerPool::new(LIMITS, 1, t0);
    // A thousand lanes wait: one connect at a time, one wait for all.
    let c = pool.poll_connect(t0, 1000).expect("a connect");
    assert_eq!(pool.poll_connect(t0, 1000), None, "one connect at a time");
    assert_eq!(pool.on_connect_failed(c, t0), INITIAL_BACKOFF);
    assert_eq!(pool.poll_connect(t0, 1000), None, "backing off");
    assert_eq!(pool.poll_timeout(), Some(t0 + INITIAL_BACKOFF));
    let t1 = t0 + INITIAL_BACKOFF;
    let c = pool
        .poll_connect(t1, 1000)
        .expect("a connect after the wait");
    assert_eq!(pool.on_connect_failed(c, t1), INITIAL_BACKOFF * 2);
    let t2 = t1 + INITIAL_BACKOFF * 2;
    let c = pool.poll_connect(t2, 1000).expect("a connect");
    pool.on_connected(c, t2);
    let c2 = pool.poll_connect(t2, 1000);
    assert_eq!(
        c2, None,
        "an up connection with room takes the waiting lanes"
    );
    assert_eq!(pool.high_water(), 1);
}

#[test]
fn a_message_id_is_never_reused_while_a_given_up_copy_is_awaited() {
    let t0 = Instant::now();
    let mut pool = ServerPool::new(LIMITS, 0xffff, t0);
    let c = pool.poll_connect(t0, 1).unwrap();
    pool.on_connected(c, t0);
    let (a, b) = (LaneId(1), LaneId(2));
    pool.assign(a);
    let id_a = pool.free_id(c);
    assert_eq!(id_a, 0xffff);
    pool.on_sent(c, id_a, a, t0);
    pool.release(a);
    assert_eq!(pool.in_flight(), 0);
    assert!(
        !pool.unassign(a, t0),
        "its given-up copy may still be applied"
    );
    pool.assign(b);
    // As if the IDs had wrapped around onto the given-up one.
    pool.slots[c.index()].next_id = id_a;
    assert_ne!(pool.free_id(c), id_a);
    assert_eq!(pool.on_answer(c, id_a, t0), Answer::Dead);
    assert!(pool.unassign(a, t0));
}

#[test]
fn a_halted_lane_leaves_the_connection_to_the_others() {
    let t0 = Instant::now();
    let mut pool = ServerPool::new(LIMITS, 7, t0);
    let c = pool.poll_connect(t0, 2).unwrap();
    pool.on_connected(c, t0);
    let (a, b) = (LaneId(1), LaneId(2));
    pool.assign(a);
    pool.assign(b);
    let ia = pool.free_id(c);
    pool.on_sent(c, ia, a, t0);
    let ib = pool.free_id(c);
    pool.on_sent(c, ib, b, t0);
    pool.forget(a, t0);
    assert_eq!(pool.assigned(a), None);
    assert_eq!(pool.in_flight(), 1);
    assert!(pool.is_up(c));
    assert_eq!(pool.on_answer(c, ia, t0), Answer::Unknown);
    assert_eq!(pool.on_answer(c, ib, t0), Answer::Live(b));
}

/// A pool with one connection up.
fn one_up(limits: PoolLimits, first_id: u16) -> (ServerPool, ConnId, Instant) {
    let t0 = Instant::now();
    let mut pool = ServerPool::new(limits, first_id, t0);
    let c = pool.poll_connect(t0, 1).expect("a connect");
    pool.on_connected(c, t0);
    (pool, c, t0)
}

#[test]
fn queries_and_updates_share_a_connection_with_unique_ids_and_their_own_answers() {
    let (mut pool, c, t0) = one_up(LIMITS, 0xfffe);
    let lane = LaneId(4);
    assert_eq!(pool.assign(lane), Some(c));
    let u1 = pool.free_id(c);
    pool.on_sent(c, u1, lane, t0);
    let q1 = pool.free_id(c);
    assert_eq!(pool.query_conn(), Some(c));
    pool.on_query_sent(c, q1, QueryId(1), t0);
    let u2 = pool.free_id(c);
    pool.on_sent(c, u2, lane, t0);
    let q2 = pool.free_id(c);
    pool.on_query_sent(c, q2, QueryId(2), t0);
    // Across the wrap of the 16-bit IDs, each once.
    let ids: HashSet<u16> = [u1, q1, u2, q2].into_iter().collect();
    assert_eq!(ids.len(), 4, "{u1} {q1} {u2} {q2}");
    assert_eq!((pool.in_flight(), pool.queries_in_flight()), (4, 2));
    // Answers in any order reach their own: the queries do not touch the
    // lane's count, the lane's do not touch the queries.
    assert_eq!(pool.on_answer(c, q2, t0), Answer::Query(QueryId(2)));
    assert_eq!(pool.on_answer(c, u1, t0), Answer::Live(lane));
    assert!(!pool.unassign(lane, t0), "its second UPDATE is awaited");
    assert_eq!(pool.on_answer(c, q1, t0), Answer::Query(QueryId(1)));
    assert_eq!(pool.on_answer(c, q1, t0), Answer::Unknown, "answered once");
    assert_eq!(pool.on_answer(c, u2, t0), Answer::Live(lane));
    assert!(pool.unassign(lane, t0));
    assert_eq!((pool.in_flight(), pool.queries_in_flight()), (0, 0));
}

#[test]
fn queries_take_at_most_half_the_in_flight_cap_and_open_no_connection() {
    let t0 = Instant::now();
    let mut pool = ServerPool::new(LIMITS, 100, t0);
    assert_eq!(pool.query_conn(), None, "no connection is up");
    assert_eq!(pool.open(), 0, "a query opens none by itself");
    let c = pool.poll_connect(t0, 1).expect("a connect");
    assert_eq!(pool.query_conn(), None, "still connecting");
    pool.on_connected(c, t0);
    assert_eq!(pool.max_queries(), LIMITS.max_in_flight / 2);
    for q in 0..pool.max_queries() {
        let conn = pool.query_conn().expect("room for a query");
        let id = pool.free_id(conn);
        pool.on_query_sent(conn, id, QueryId(q as u64), t0);
    }
    assert_eq!(pool.query_conn(), None, "half the cap is queries");
    // The UPDATEs have the rest.
    let mut sent = 0;
    while pool.has_room() {
        let lane = LaneId(sent);
        let conn = pool.assign(lane).expect("a connection");
        let id = pool.free_id(conn);
        pool.on_sent(conn, id, lane, t0);
        sent += 1;
    }
    assert_eq!(
        sent as usize,
        LIMITS.max_in_flight - LIMITS.max_in_flight / 2
    );
    assert_eq!(pool.query_conn(), None, "the cap is full");
}

#[test]
fn an_expired_query_keeps_its_id_until_its_late_answer_and_the_connection_stays() {
    let (mut pool, c, t0) = one_up(LIMITS, 0x8000);
    let id = pool.free_id(c);
    pool.on_query_sent(c, id, QueryId(7), t0);
    assert!(pool.expire_query(c, id));
    assert!(!pool.expire_query(c, id), "once");
    assert_eq!((pool.in_flight(), pool.queries_in_flight()), (0, 0));
    assert!(pool.is_up(c), "the UPDATEs on it are not disturbed");
    // As if the IDs had wrapped around onto it: it is not handed out.
    pool.slots[c.index()].next_id = id;
    assert_ne!(pool.free_id(c), id);
    // Its late answer is nobody's.
    assert_eq!(pool.on_answer(c, id, t0), Answer::Dead);
    assert_eq!(pool.free_id(c), id);
}

#[test]
fn an_expired_query_does_not_keep_a_connection_open() {
    let (mut pool, c, t0) = one_up(LIMITS, 1);
    let id = pool.free_id(c);
    pool.on_query_sent(c, id, QueryId(1), t0);
    assert_eq!(pool.poll_timeout(), None, "a query in flight is work");
    assert!(pool.expire_query(c, id));
    assert_eq!(pool.poll_timeout(), Some(t0 + LIMITS.idle_close));
    assert_eq!(pool.poll_idle(t0 + LIMITS.idle_close), Some(c));
}

#[test]
fn queries_on_a_lost_connection_are_named_once() {
    let (mut pool, c, t0) = one_up(LIMITS, 1);
    let lane = LaneId(1);
    pool.assign(lane);
    let u = pool.free_id(c);
    pool.on_sent(c, u, lane, t0);
    for q in 0..3 {
        let id = pool.free_id(c);
        pool.on_query_sent(c, id, QueryId(q), t0);
    }
    let expired = pool.free_id(c);
    pool.on_query_sent(c, expired, QueryId(9), t0);
    pool.expire_query(c, expired);
    assert_eq!(pool.on_lost(c, t0), vec![lane]);
    let mut lost = pool.take_lost_queries();
    lost.sort_unstable();
    assert_eq!(lost, [QueryId(0), QueryId(1), QueryId(2)]);
    assert!(pool.take_lost_queries().is_empty());
    assert_eq!((pool.in_flight(), pool.queries_in_flight()), (0, 0));
}
