//! The pool against a fake server that answers each zone in order per
//! connection but interleaves zones at random, fails messages, drops
//! connections and withholds answers, on a fake clock.

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
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (any::<u8>(), any::<u8>(), prop::bool::weighted(0.1))
            .prop_map(|(conn, pick, servfail)| Op::Answer { conn, pick, servfail }),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(conn, apply)| Op::Drop { conn, apply }),
        2 => Just(Op::ConnectOk),
        1 => Just(Op::ConnectFail),
        1 => (0u16..8000).prop_map(|ms| Op::Tick { ms }),
    ]
}

impl World {
    fn new(sizes: &[u32]) -> World {
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
        }
    }

    /// What a driver does after every event: close idle connections, open
    /// one if lanes wait, send what the pool and the windows allow, free
    /// the lanes that are done.
    fn drive(&mut self) {
        while let Some(c) = self.pool.poll_idle(self.now) {
            assert!(
                self.server[c.index()].is_empty(),
                "an idle connection held messages"
            );
        }
        let waiting = self
            .lanes
            .iter()
            .enumerate()
            .filter(|(i, l)| l.has_work() && self.pool.assigned(LaneId(*i as u32)).is_none())
            .count();
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
        assert_eq!(self.pool.in_flight(), live);
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
                    if apply {
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
        }
        self.drive();
    }

    /// The server behaves from now on until every lane is done.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            if self.lanes.iter().all(Lane::done) {
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
        ops in prop::collection::vec(op(), 0..200),
    ) {
        // The checks after every step: pool_never_has_more_than_max_in_flight_or_connections,
        // a_message_id_is_never_live_twice_on_one_connection (given-up ones included),
        // a_zone_in_flight_uses_one_connection_at_a_time, and that a lost
        // connection names exactly the lanes in flight on it.
        let mut w = World::new(&sizes);
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
