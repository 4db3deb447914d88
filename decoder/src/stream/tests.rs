//! The stream core under a fake clock, a fake store and fake DNS servers.
//!
//! The property tests drive [`Stream`] the way `streamer/src/pipeline.rs`
//! does, with a model of what the driver's I/O does: a store with a
//! committed and an uncommitted side (what a crash loses), zones that
//! apply dispatches in order when an interleaving says they answer (and
//! refuse the groups holding a value of 250 or more), a slot that resends
//! every transaction after its confirmed position. Any interleaving of
//! frames, acknowledgements, refusals, silences, pauses, guard holds and
//! crashes must keep the promise (nothing confirmed or checkpointed that a
//! zone has not acknowledged) and end with every zone equal to the table.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::pgoutput::{
    Begin, ColumnInfo, Commit, Insert, Message, Relation, ReplicaIdentity, Value,
};
use crate::plan::ZoneOps;
use crate::rdata::RType;
use crate::records::{Owner, Record};
use crate::session::Rcode;
use crate::txn::{Assembler, Event};
use crate::update::{OwnerGroup, UpdateOp};

const ZONES: usize = 3;
const KEYS: u8 = 12;
const TABLE_OID: u32 = 16_384;
const CONTROL_OID: u32 = 16_385;
const SLOT: &str = "pg2dns";
/// Values from here on are refused by the servers.
const REFUSED_FROM: u8 = 250;
/// Keys from here on hold only refused values. A server refuses an owner
/// group whole, its deletes too: were a key to go from a published value
/// to a refused one, and change again before the refusal came back, the
/// published value would stay in DNS (the later change deletes the refused
/// value the row state holds). Real refusals (a CNAME beside other data)
/// are of that kind too; `pg2dns reconcile` repairs such a zone.
const REFUSED_KEYS: u8 = 9;

fn relation(oid: u32, namespace: &str, name: &str, columns: &[&str]) -> Relation {
    Relation {
        oid,
        namespace: namespace.into(),
        name: name.into(),
        replica_identity: ReplicaIdentity::Default,
        columns: columns
            .iter()
            .map(|c| ColumnInfo {
                is_key: *c == "id",
                name: (*c).into(),
                type_oid: 25,
                type_modifier: -1,
            })
            .collect(),
    }
}

fn text(s: &str) -> Value {
    Value::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn base() -> Instant {
    Instant::now()
}

/// What one transaction does.
#[derive(Clone, Debug)]
enum Change {
    /// Sets row `key` to `value` (`None`: deletes it).
    Row(u8, Option<u8>),
    /// A row of `pg2dns.control`: a pause for this slot, one for another
    /// slot, or a row this slot cannot read.
    Control(ControlRow),
}

#[derive(Clone, Copy, Debug)]
enum ControlRow {
    Pause,
    OtherSlot,
    Malformed,
}

#[derive(Clone, Debug)]
struct Txn {
    changes: Vec<Change>,
    /// Sent long after it committed (a backlog).
    late: bool,
}

fn final_lsn(t: usize) -> Lsn {
    Lsn::new(1_000 * (t as u64 + 1))
}

fn end_lsn(t: usize) -> Lsn {
    Lsn::new(1_000 * (t as u64 + 1) + 500)
}

/// One step of an interleaving.
#[derive(Clone, Debug)]
enum Op {
    /// The next frame arrives; `more` says another is ready at once.
    Frame { more: bool },
    /// Zone `zone` answers its oldest outstanding dispatch.
    Answer { zone: usize },
    /// Time passes.
    Tick { ms: u64 },
    /// A keepalive.
    KeepAlive,
    /// The server's WAL flush catches up.
    WalFlush,
    /// pg2dns dies (each zone may have applied a prefix of what it holds).
    Crash { applied: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => any::<bool>().prop_map(|more| Op::Frame { more }),
        6 => (0..ZONES).prop_map(|zone| Op::Answer { zone }),
        3 => prop_oneof![Just(1u64), Just(3), Just(150), Just(1_100)].prop_map(|ms| Op::Tick { ms }),
        1 => Just(Op::KeepAlive),
        1 => Just(Op::WalFlush),
        1 => (0usize..4).prop_map(|applied| Op::Crash { applied }),
    ]
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        12 => (0..KEYS, prop::option::weighted(0.8, 0u8..200)).prop_map(|(k, v)| {
            // The keys from REFUSED_KEYS on only ever hold values the
            // servers refuse (see REFUSED_KEYS).
            let v = v.map(|v| if k >= REFUSED_KEYS { REFUSED_FROM + v % 6 } else { v });
            Change::Row(k, v)
        }),
        1 => prop_oneof![
            3 => Just(ControlRow::Pause),
            1 => Just(ControlRow::OtherSlot),
            1 => Just(ControlRow::Malformed),
        ]
        .prop_map(Change::Control),
    ]
}

fn txns() -> impl Strategy<Value = Vec<Txn>> {
    prop::collection::vec(
        (prop::collection::vec(change(), 1..7), any::<bool>())
            .prop_map(|(changes, late)| Txn { changes, late }),
        1..14,
    )
}

/// The frames of transaction `t`.
fn txn_frames(t: usize, txn: &Txn) -> Vec<(Message, i64)> {
    let commit_time = 1_000_000 * t as i64;
    let sent = if txn.late {
        commit_time + 10 * BACKLOG_MICROS
    } else {
        commit_time
    };
    let mut out = vec![(
        Message::Begin(Begin {
            final_lsn: final_lsn(t),
            commit_time_micros: commit_time,
            xid: t as u32,
        }),
        sent,
    )];
    for (i, c) in txn.changes.iter().enumerate() {
        let message = match c {
            Change::Row(k, v) => Message::Insert(Insert {
                relation_oid: TABLE_OID,
                new: vec![
                    text(&k.to_string()),
                    match v {
                        Some(v) => text(&v.to_string()),
                        None => Value::Null,
                    },
                ],
            }),
            Change::Control(row) => {
                let (slot, id) = match row {
                    ControlRow::Pause => (SLOT, format!("{}", t * 10 + i)),
                    ControlRow::OtherSlot => ("elsewhere", format!("{}", t * 10 + i)),
                    ControlRow::Malformed => (SLOT, "not-a-number".to_owned()),
                };
                Message::Insert(Insert {
                    relation_oid: CONTROL_OID,
                    new: vec![
                        text(&id),
                        text(slot),
                        text("pause"),
                        text("tester"),
                        text("proptest"),
                        Value::Null,
                    ],
                })
            }
        };
        out.push((message, sent));
    }
    out.push((
        Message::Commit(Commit {
            flags: 0,
            commit_lsn: final_lsn(t),
            end_lsn: end_lsn(t),
            commit_time_micros: commit_time,
        }),
        sent,
    ));
    out
}

fn zone_of(key: u8) -> usize {
    usize::from(key) % ZONES
}

fn record(key: u8, value: u8) -> Record {
    Record::parse(
        &format!("k{key}.z{}.test.", zone_of(key)),
        300,
        "A",
        &format!("192.0.2.{value}"),
    )
    .unwrap()
}

fn owner(key: u8) -> Owner {
    Owner::parse(&format!("k{key}.z{}.test.", zone_of(key))).unwrap()
}

fn key_of(owner: &Owner) -> u8 {
    let text = owner.to_string();
    text[1..text.find('.').unwrap()].parse().unwrap()
}

/// A dispatch held by a zone's server.
#[derive(Clone, Debug)]
struct Sent {
    id: u64,
    lsn: Lsn,
    groups: Vec<OwnerGroup>,
}

/// One zone's server: what it holds and what it applied.
#[derive(Clone, Debug, Default)]
struct Server {
    queue: Vec<Sent>,
    records: BTreeMap<u8, u8>,
}

impl Server {
    /// Applies a dispatch; returns the groups it refused.
    fn apply(&mut self, sent: &Sent) -> Vec<OwnerGroup> {
        let mut refused = Vec::new();
        for g in &sent.groups {
            let bad = g.ops.iter().any(|op| match op {
                UpdateOp::Add(r) => value_of(r) >= REFUSED_FROM,
                _ => false,
            });
            if bad {
                refused.push(g.clone());
                continue;
            }
            for op in &g.ops {
                match op {
                    UpdateOp::Delete(r) => {
                        let key = key_of(&r.owner);
                        if self.records.get(&key) == Some(&value_of(r)) {
                            self.records.remove(&key);
                        }
                    }
                    UpdateOp::Add(r) => {
                        self.records.insert(key_of(&r.owner), value_of(r));
                    }
                    UpdateOp::DeleteRrset { owner, .. } => {
                        self.records.remove(&key_of(owner));
                    }
                }
            }
        }
        refused
    }
}

fn value_of(r: &Record) -> u8 {
    let text = r.to_string();
    text.rsplit('.').next().unwrap().trim().parse().unwrap()
}

/// What ends a session.
#[derive(Debug)]
enum SessionOver {
    Crashed,
    Paused { until: Option<Lsn> },
    Held(Lsn),
}

/// The world: the table's transactions, PostgreSQL (slot, store), the
/// servers, and the running session's core and driver state.
struct World {
    txns: Vec<Txn>,
    now: Instant,
    // PostgreSQL.
    slot_confirmed: Lsn,
    committed_state: BTreeMap<u8, u8>,
    committed_progress: Lsn,
    wal: Lsn,
    wal_flushed: Lsn,
    released: BTreeSet<Lsn>,
    // The servers (they outlive sessions).
    servers: Vec<Server>,
    // The session.
    core: Stream,
    assembler: Assembler,
    frames: Vec<(Message, i64)>,
    next_frame: usize,
    /// Uncommitted writes, by batch.
    writes: Vec<(BatchSeq, u8, Option<u8>)>,
    batch: u64,
    written: Option<BatchSeq>,
    dispatched: Vec<u64>,
    acked: Vec<u64>,
    marks: BTreeMap<ZoneId, u64>,
    /// Every dispatch of this session: zone, id, the end of the
    /// transaction it carries.
    sent: Vec<(usize, u64, Lsn)>,
    /// Refusals heard and not yet rejected, by the commit LSN they are of.
    unrejected: Vec<Lsn>,
    waiting: bool,
    draining: Option<End>,
    over: Option<SessionOver>,
    /// Malformed control rows reported.
    control_errors: usize,
    /// The end of the last transaction sent in this session.
    fed_end: Lsn,
}

fn guards() -> Vec<DeleteGuard> {
    let off = DeleteGuard {
        max_delete_records: None,
        max_delete_share: 1.0,
        min_zone_records: 10,
    };
    let mut out = vec![off; ZONES];
    // Zone 0 holds a transaction deleting more than one of its records.
    out[0] = DeleteGuard {
        max_delete_records: Some(1),
        ..off
    };
    out
}

fn new_core(progress: Lsn, stop_at: Option<Lsn>, now: Instant) -> Stream {
    let request = |until| ControlRequest {
        id: 1,
        action: "resume".into(),
        requested_by: "tester".into(),
        reason: String::new(),
        until: Some(until),
    };
    Stream::new(
        StreamConfig {
            slot: SLOT.into(),
            zones: ZONES,
            guards: guards(),
            progress,
            stop_at: stop_at.map(|u| (u, request(u))),
            max_batch_rows: 4,
        },
        now,
    )
}

impl World {
    fn new(txns: Vec<Txn>) -> World {
        let now = base();
        let mut w = World {
            txns,
            now,
            slot_confirmed: Lsn::new(1),
            committed_state: BTreeMap::new(),
            committed_progress: Lsn::new(1),
            wal: Lsn::new(1),
            wal_flushed: Lsn::new(1),
            released: BTreeSet::new(),
            servers: vec![Server::default(); ZONES],
            core: new_core(Lsn::new(1), None, now),
            assembler: Assembler::new(),
            frames: Vec::new(),
            next_frame: 0,
            writes: Vec::new(),
            batch: 0,
            written: None,
            dispatched: vec![0; ZONES],
            acked: vec![0; ZONES],
            marks: BTreeMap::new(),
            sent: Vec::new(),
            unrejected: Vec::new(),
            waiting: false,
            draining: None,
            over: None,
            control_errors: 0,
            fed_end: Lsn::new(1),
        };
        w.start_session(None);
        w
    }

    /// A new session: a new core from the committed progress, the slot
    /// resending every transaction after its confirmed position. The
    /// servers' queues were emptied by whoever ended the last one.
    fn start_session(&mut self, stop_at: Option<Lsn>) {
        self.core = new_core(self.committed_progress, stop_at, self.now);
        self.assembler = Assembler::new();
        let mut frames = vec![
            (
                Message::Relation(relation(TABLE_OID, "public", "t", &["id", "value"])),
                0,
            ),
            (
                Message::Relation(relation(
                    CONTROL_OID,
                    "pg2dns",
                    "control",
                    &[
                        "id",
                        "slot",
                        "action",
                        "requested_by",
                        "reason",
                        "until_lsn",
                    ],
                )),
                0,
            ),
        ];
        for (t, txn) in self.txns.iter().enumerate() {
            if end_lsn(t) > self.slot_confirmed {
                frames.extend(txn_frames(t, txn));
            }
        }
        self.frames = frames;
        self.next_frame = 0;
        self.writes.clear();
        self.batch = 0;
        self.written = None;
        // Each server's dispatch ids start again with the session (the
        // lanes' counts are the session's).
        self.dispatched = vec![0; ZONES];
        self.acked = vec![0; ZONES];
        self.marks.clear();
        self.sent.clear();
        self.unrejected.clear();
        self.waiting = false;
        self.draining = None;
        self.over = None;
        self.fed_end = self.slot_confirmed;
    }

    fn state(&self) -> BTreeMap<u8, u8> {
        let mut state = self.committed_state.clone();
        for (_, k, v) in &self.writes {
            match v {
                Some(v) => state.insert(*k, *v),
                None => state.remove(k),
            };
        }
        state
    }

    /// Every dispatch of a transaction ending at or before `bound` was
    /// acknowledged, and no refusal of one waits to be rejected.
    fn check_covered(&self, bound: Lsn, what: &str) -> Result<(), TestCaseError> {
        for (zone, id, end) in &self.sent {
            prop_assert!(
                *end > bound || self.acked[*zone] >= *id,
                "{what} {bound} passes dispatch {id} of zone {zone} (transaction ending {end}), acknowledged only to {}",
                self.acked[*zone]
            );
        }
        for lsn in &self.unrejected {
            prop_assert!(
                self.end_of(*lsn) > bound,
                "{what} {bound} passes a refusal at {lsn} not yet rejected"
            );
        }
        Ok(())
    }

    fn end_of(&self, final_lsn: Lsn) -> Lsn {
        Lsn::new(final_lsn.raw() + 500)
    }

    /// Dispatches segments to the servers (the lanes' part).
    fn dispatch(&mut self, segments: Vec<Segment>) {
        for (lsn, ops) in segments {
            for z in ops {
                if z.groups.is_empty() {
                    continue;
                }
                let zone = z.zone.index();
                self.dispatched[zone] += 1;
                let id = self.dispatched[zone];
                self.marks.insert(z.zone, id);
                self.sent.push((zone, id, self.end_of(lsn)));
                self.servers[zone].queue.push(Sent {
                    id,
                    lsn,
                    groups: z.groups,
                });
            }
        }
    }

    fn sent_batch(&mut self, seq: BatchSeq, end: Option<Lsn>) -> SentBatch {
        SentBatch {
            seq,
            end,
            marks: std::mem::take(&mut self.marks).into_iter().collect(),
        }
    }

    /// The driver's flush: plan the rows against the state, judge, dispatch
    /// and write (uncommitted).
    fn flush(&mut self, batch: Batch) -> Result<(), SessionOver> {
        self.batch += 1;
        let seq = BatchSeq(self.batch);
        let mut state = self.state();
        let mut segments: Vec<Segment> = Vec::new();
        // Each owner's value before the segment (the planner nets a
        // transaction's changes per owner).
        let mut before: BTreeMap<u8, Option<u8>> = BTreeMap::new();
        let mut writes = Vec::new();
        let mut lsn = batch.open.unwrap_or_default();
        let mut open = false;
        let mut last_end = None;
        let net = |before: &mut BTreeMap<u8, Option<u8>>, state: &BTreeMap<u8, u8>| {
            let mut ops: BTreeMap<usize, Vec<OwnerGroup>> = BTreeMap::new();
            for (key, old) in std::mem::take(before) {
                let new = state.get(&key).copied();
                if old == new {
                    continue;
                }
                let mut group = Vec::new();
                if let Some(old) = old {
                    group.push(UpdateOp::Delete(record(key, old)));
                }
                if let Some(v) = new {
                    group.push(UpdateOp::Add(record(key, v)));
                }
                ops.entry(zone_of(key)).or_default().push(OwnerGroup {
                    owner: owner(key),
                    ops: group,
                });
            }
            ops.into_iter()
                .map(|(z, groups)| ZoneOps {
                    zone: ZoneId(z as u32),
                    groups,
                })
                .collect::<Vec<_>>()
        };
        for item in batch.items {
            match item {
                Item::Change(_, change) => {
                    let row = change.new.as_ref().unwrap();
                    let key: u8 = match row.cell("id") {
                        Some(Cell::Text(t)) => t.parse().unwrap(),
                        other => panic!("{other:?}"),
                    };
                    let value: Option<u8> = match row.cell("value") {
                        Some(Cell::Text(t)) => Some(t.parse().unwrap()),
                        _ => None,
                    };
                    lsn = change.final_lsn;
                    open = true;
                    before
                        .entry(key)
                        .or_insert_with(|| state.get(&key).copied());
                    match value {
                        Some(v) => state.insert(key, v),
                        None => state.remove(&key),
                    };
                    writes.push((seq, key, value));
                }
                Item::Truncate(..) => unreachable!("no truncates in this model"),
                Item::Commit(end) => {
                    last_end = Some(end);
                    segments.push((lsn, net(&mut before, &state)));
                    open = false;
                }
            }
        }
        if open {
            segments.push((lsn, net(&mut before, &state)));
        }
        // The mass-delete guard, as the driver asks it (its record counts
        // do not matter to a guard by number).
        let records = BTreeMap::new();
        loop {
            match self.core.guard_judge(&segments, open, &records) {
                Ok(_) => break,
                Err(held) if self.released.contains(&held.lsn) => self.core.guard_release(held.lsn),
                Err(held) => return Err(SessionOver::Held(held.lsn)),
            }
        }
        let ready = self.core.guard_ready(segments, open);
        self.dispatch(ready);
        self.writes.extend(writes);
        // Some writes go into the open transaction at once.
        if self.batch.is_multiple_of(2) {
            self.written = Some(seq);
        }
        let sent = self.sent_batch(seq, if open { None } else { last_end });
        self.core.handle_flushed(sent);
        Ok(())
    }

    /// The driver's rejection of refused rows: those whose state still
    /// holds the refused value leave the state and the zone.
    fn reject(&mut self, refused: Vec<ServerRefusal>) {
        self.batch += 1;
        let seq = BatchSeq(self.batch);
        let state = self.state();
        let mut segments = Vec::new();
        for r in &refused {
            self.unrejected.retain(|l| *l != r.lsn);
            for op in &r.group.ops {
                let UpdateOp::Add(rec) = op else { continue };
                let key = key_of(&rec.owner);
                if state.get(&key) == Some(&value_of(rec)) {
                    self.writes.push((seq, key, None));
                    segments.push((
                        r.lsn,
                        vec![ZoneOps {
                            zone: r.zone,
                            groups: vec![OwnerGroup {
                                owner: rec.owner.clone(),
                                ops: vec![UpdateOp::DeleteRrset {
                                    owner: rec.owner.clone(),
                                    rtype: RType::A,
                                }],
                            }],
                        }],
                    ));
                }
            }
        }
        self.dispatch(segments);
        // The rejections' state is written at once.
        self.written = Some(seq);
        let end = self.core.rejection_end();
        let sent = self.sent_batch(seq, end);
        self.core.handle_flushed(sent);
    }

    fn commit(&mut self, cp: Checkpoint, mode: CommitMode) -> Result<(), TestCaseError> {
        self.check_covered(cp.end, "checkpoint")?;
        prop_assert!(self.written.is_none_or(|w| w <= cp.batch));
        let (done, kept): (Vec<_>, Vec<_>) =
            self.writes.iter().partition(|(b, _, _)| *b <= cp.batch);
        for (_, k, v) in done {
            match v {
                Some(v) => self.committed_state.insert(k, v),
                None => self.committed_state.remove(&k),
            };
        }
        self.writes = kept;
        prop_assert!(cp.end >= self.committed_progress);
        self.committed_progress = cp.end;
        self.written = None;
        self.wal = Lsn::new(self.wal.max(self.fed_end).raw() + 1);
        let durability = match mode {
            CommitMode::Flushed => {
                self.wal_flushed = self.wal;
                checkpoint::Durability::Flushed
            }
            CommitMode::Later => checkpoint::Durability::Unflushed {
                wal: self.wal,
                flushed: self.wal_flushed,
            },
        };
        self.core.handle_committed(cp, durability, self.now);
        Ok(())
    }

    fn confirm(&mut self, lsn: Lsn) -> Result<(), TestCaseError> {
        self.check_covered(lsn, "confirmation")?;
        prop_assert!(
            lsn <= self.committed_progress,
            "confirmed {lsn} past the durable progress {}",
            self.committed_progress
        );
        prop_assert!(lsn >= self.slot_confirmed, "the slot went back");
        self.slot_confirmed = lsn;
        Ok(())
    }

    /// Does what the core asks until it asks nothing, waits or is drained.
    fn act(&mut self) -> Result<(), TestCaseError> {
        self.waiting = false;
        while self.over.is_none() {
            self.core.handle_written(self.written);
            let Some(action) = self.core.poll_action(self.now) else {
                return Ok(());
            };
            match action {
                Action::Flush(batch) => {
                    if let Err(over) = self.flush(batch) {
                        self.over = Some(over);
                    }
                }
                Action::Reject(refused) => self.reject(refused),
                Action::Commit(cp, mode) => self.commit(cp, mode)?,
                Action::CommitIdle(end) => {
                    prop_assert!(self.writes.is_empty() && self.written.is_none());
                    prop_assert!(end >= self.committed_progress);
                    self.committed_progress = end;
                    self.wal = Lsn::new(self.wal.max(end).raw() + 1);
                    self.wal_flushed = self.wal;
                    self.core.handle_idle_committed(end);
                }
                Action::PollFlush => self.core.handle_wal_flushed(self.wal_flushed, self.now),
                Action::Confirm(lsn) => self.confirm(lsn)?,
                Action::Wait(_) => {
                    self.waiting = true;
                    return Ok(());
                }
                Action::Drained => {
                    let end = self.draining.take();
                    self.over = Some(match end {
                        Some(End::Paused { lsn, request }) => {
                            prop_assert!(
                                self.core.pending().is_none(),
                                "a pause at {lsn} left transactions pending"
                            );
                            // The resume of a pause (not of a resume's
                            // stop) sometimes stops again two
                            // transactions on.
                            let t = (lsn.raw() / 1_000) as usize;
                            let until = (request.action == "pause" && t.is_multiple_of(2))
                                .then(|| final_lsn(t + 1));
                            SessionOver::Paused { until }
                        }
                        other => panic!("drained for {other:?}"),
                    });
                }
            }
        }
        Ok(())
    }

    fn frame(&mut self, more: bool) -> Result<(), TestCaseError> {
        let Some((message, sent)) = self.frames.get(self.next_frame).cloned() else {
            return Ok(());
        };
        self.next_frame += 1;
        self.core.handle_frame(self.now);
        self.core.handle_server_time(sent);
        if let Message::Commit(c) = &message {
            self.core.handle_commit_time(c.commit_time_micros);
            self.fed_end = c.end_lsn;
        }
        let event = self.assembler.push(message).unwrap();
        match event {
            None => {}
            Some(Event::Begin { final_lsn, .. }) => {
                self.core.handle_begin(final_lsn);
            }
            Some(Event::Change(_)) if self.core.skipping() => {}
            Some(Event::Change(change)) if change.relation.name == "control" => {
                match self.core.handle_control(&change) {
                    Ok(_) => {}
                    Err(e) => {
                        prop_assert!(
                            e.to_string().contains(&change.final_lsn.to_string()),
                            "{e} does not name the LSN"
                        );
                        prop_assert!(e.to_string().contains("not-a-number"), "{e}");
                        self.control_errors += 1;
                    }
                }
            }
            Some(Event::Change(change)) => self.core.handle_change(SourceId(0), change),
            Some(Event::Commit { end_lsn, .. }) => {
                self.core.handle_commit(end_lsn, false, self.now);
            }
            Some(other) => panic!("{other:?}"),
        }
        let more = more && self.next_frame < self.frames.len();
        let probe = self.core.wants_ready_probe();
        self.core.handle_frame_done(!probe || more);
        self.act()?;
        if let Some(end) = self.core.poll_end() {
            self.draining = Some(end);
            self.core.drain();
            self.act()?;
        }
        Ok(())
    }

    fn answer(&mut self, zone: usize) -> Result<(), TestCaseError> {
        if self.servers[zone].queue.is_empty() {
            return Ok(());
        }
        let sent = self.servers[zone].queue.remove(0);
        let refused = self.servers[zone].apply(&sent);
        for group in refused {
            self.unrejected.push(sent.lsn);
            self.core.handle_refused(ServerRefusal {
                zone: ZoneId(zone as u32),
                lsn: sent.lsn,
                group,
                rcode: Rcode(5),
            });
        }
        self.acked[zone] = sent.id;
        self.core.handle_acked(ZoneId(zone as u32), sent.id);
        self.act()
    }

    fn tick(&mut self, ms: u64) -> Result<(), TestCaseError> {
        self.now += Duration::from_millis(ms);
        if self.core.poll_timeout().is_some_and(|t| t <= self.now) {
            self.core.handle_timeout(self.now);
        }
        self.act()
    }

    fn keepalive(&mut self) -> Result<(), TestCaseError> {
        // The walsender's sent position: past the last transaction sent in
        // this session, before the next one (and flushed, since logical
        // decoding reads only flushed WAL).
        let wal_end = Lsn::new(self.fed_end.raw() + 10);
        self.wal_flushed = self.wal_flushed.max(wal_end);
        self.core.handle_frame(self.now);
        let idle = self.writes.is_empty() && self.written.is_none();
        self.core.handle_keepalive(wal_end, 0, idle, self.now);
        let probe = self.core.wants_ready_probe();
        self.core.handle_frame_done(!probe);
        self.act()
    }

    /// A crash: the session's uncommitted work is lost; each server applied
    /// `applied` of what it held (at most), and forgets the rest.
    fn crash(&mut self, applied: usize) {
        for server in &mut self.servers {
            let queue = std::mem::take(&mut server.queue);
            for sent in queue.iter().take(applied) {
                server.apply(sent);
            }
        }
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        if let Some(over) = self.over.take() {
            self.restart(over);
        }
        match op {
            // A checkpoint waiting for acknowledgements reads no frames.
            Op::Frame { more } if !self.waiting && self.draining.is_none() => self.frame(*more),
            Op::Frame { .. } => self.tick(1),
            Op::Answer { zone } => self.answer(*zone),
            Op::Tick { ms } => self.tick(*ms),
            Op::KeepAlive if !self.waiting && self.draining.is_none() => self.keepalive(),
            Op::KeepAlive => Ok(()),
            Op::WalFlush => {
                self.wal_flushed = self.wal;
                Ok(())
            }
            Op::Crash { applied } => {
                self.over = Some(SessionOver::Crashed);
                self.crash(*applied);
                Ok(())
            }
        }
    }

    fn restart(&mut self, over: SessionOver) {
        let stop_at = match over {
            SessionOver::Crashed => None,
            SessionOver::Held(lsn) => {
                // The operator releases the transaction, then resumes.
                self.released.insert(lsn);
                self.crash(0);
                None
            }
            SessionOver::Paused { until } => {
                // A pause drained everything: nothing is left in flight. A
                // resume may stop again before a later transaction.
                assert_nothing_outstanding(&self.servers);
                until
            }
        };
        self.start_session(stop_at);
    }

    /// Lets everything arrive and be answered, until the stream is idle.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..10_000 {
            if let Some(over) = self.over.take() {
                self.restart(over);
            }
            let busy = self.next_frame < self.frames.len()
                || self.servers.iter().any(|s| !s.queue.is_empty())
                || self.core.pending().is_some()
                || !self.core.batch_is_empty();
            if !busy {
                return Ok(());
            }
            if let Some(zone) = (0..ZONES).find(|z| !self.servers[*z].queue.is_empty()) {
                self.answer(zone)?;
            } else if self.next_frame < self.frames.len()
                && !self.waiting
                && self.draining.is_none()
            {
                self.frame(false)?;
            } else {
                self.wal_flushed = self.wal;
                self.tick(1_100)?;
            }
        }
        prop_assert!(false, "the stream never settled");
        Ok(())
    }
}

/// After a drained pause, no server holds anything.
fn assert_nothing_outstanding(servers: &[Server]) {
    assert!(
        servers.iter().all(|s| s.queue.is_empty()),
        "a pause drained with dispatches outstanding"
    );
}

/// The table after every transaction: what each zone must end up holding
/// (refused values leave no record).
fn expected(txns: &[Txn]) -> Vec<BTreeMap<u8, u8>> {
    let mut table = BTreeMap::new();
    for txn in txns {
        for c in &txn.changes {
            if let Change::Row(k, v) = c {
                match v {
                    Some(v) => table.insert(*k, *v),
                    None => table.remove(k),
                };
            }
        }
    }
    let mut zones = vec![BTreeMap::new(); ZONES];
    for (k, v) in table {
        if v < REFUSED_FROM {
            zones[zone_of(k)].insert(k, v);
        }
    }
    zones
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// The promise: under any interleaving, nothing is checkpointed or
    /// confirmed past a dispatch a zone has not acknowledged (or a refusal
    /// not yet rejected), the slot never passes the durable progress, and
    /// once everything is answered every zone holds exactly what the table
    /// says, however often the stream crashed, paused or was held.
    #[test]
    fn the_confirmed_lsn_never_passes_an_unacknowledged_change_and_replay_converges_to_the_table(
        txns in txns(),
        ops in prop::collection::vec(op(), 0..120),
    ) {
        let mut world = World::new(txns.clone());
        for op in &ops {
            world.step(op)?;
        }
        world.settle()?;
        let want = expected(&txns);
        for (zone, server) in world.servers.iter().enumerate() {
            prop_assert_eq!(&server.records, &want[zone], "zone {}", zone);
        }
        let last = end_lsn(txns.len() - 1);
        prop_assert!(
            world.committed_progress >= last,
            "progress {} short of the last transaction {}",
            world.committed_progress,
            last
        );
    }
}

/// A control row for this slot.
fn control_change(id: &str, slot: &str, action: &str, until: Option<&str>) -> RowChange {
    let rel = Arc::new(relation(
        CONTROL_OID,
        "pg2dns",
        "control",
        &[
            "id",
            "slot",
            "action",
            "requested_by",
            "reason",
            "until_lsn",
        ],
    ));
    let mut asm = Assembler::new();
    asm.push(Message::Relation((*rel).clone())).unwrap();
    asm.push(Message::Begin(Begin {
        final_lsn: Lsn::new(0x16_B374_D848),
        commit_time_micros: 0,
        xid: 1,
    }))
    .unwrap();
    let event = asm
        .push(Message::Insert(Insert {
            relation_oid: CONTROL_OID,
            new: vec![
                text(id),
                text(slot),
                text(action),
                text("ops"),
                text("maintenance"),
                until.map_or(Value::Null, text),
            ],
        }))
        .unwrap();
    match event {
        Some(Event::Change(c)) => c,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_pause_row_for_this_slot_is_a_request_and_another_slots_row_is_not_ours() {
    let pause = control_request(&control_change("7", SLOT, "pause", None), SLOT).unwrap();
    assert_eq!(
        pause,
        Some(ControlRequest {
            id: 7,
            action: "pause".into(),
            requested_by: "ops".into(),
            reason: "maintenance".into(),
            until: None,
        })
    );
    let resume = control_request(
        &control_change("8", SLOT, "resume", Some("16/B374D848")),
        SLOT,
    )
    .unwrap()
    .unwrap();
    assert_eq!(resume.until, Some(Lsn::new(0x16_B374_D848)));
    assert_eq!(
        control_request(&control_change("9", "other", "pause", None), SLOT),
        Ok(None)
    );
}

#[test]
fn a_malformed_control_row_is_an_error_naming_the_row_the_column_and_the_lsn() {
    let e =
        control_request(&control_change("7", SLOT, "pause", Some("yesterday")), SLOT).unwrap_err();
    assert_eq!(
        e.to_string(),
        "row 7 of pg2dns.control inserted at LSN 16/B374D848 has no readable until_lsn (\"yesterday\")"
    );
    let e = control_request(&control_change("x1", SLOT, "pause", None), SLOT).unwrap_err();
    assert!(
        e.to_string().contains("row x1") && e.to_string().contains("readable id"),
        "{e}"
    );
    let e = control_request(&control_change("7", SLOT, "Pause", None), SLOT).unwrap_err();
    assert_eq!(
        e,
        ControlRowError::UnknownAction {
            row: "7".into(),
            lsn: Lsn::new(0x16_B374_D848),
            action: "Pause".into(),
        }
    );
}

#[test]
fn a_pause_row_stops_the_stream_right_after_its_transaction() {
    let now = base();
    let mut core = new_core(Lsn::new(1), None, now);
    assert!(core.handle_begin(Lsn::new(0x16_B374_D848)));
    let request = core
        .handle_control(&control_change("7", SLOT, "pause", None))
        .unwrap();
    assert_eq!(request.map(|r| r.id), Some(7));
    assert_eq!(core.poll_end(), None, "not before the commit");
    core.handle_commit(Lsn::new(0x16_B374_D900), false, now);
    match core.poll_end() {
        Some(End::Paused { lsn, request }) => {
            assert_eq!(lsn, Lsn::new(0x16_B374_D900));
            assert_eq!(request.id, 7);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_transaction_before_the_progress_is_skipped_and_one_at_a_resumes_until_stops_the_stream() {
    let now = base();
    let mut core = new_core(Lsn::new(5_000), Some(Lsn::new(9_000)), now);
    assert!(!core.handle_begin(Lsn::new(4_000)), "applied before");
    assert_eq!(
        core.handle_commit(Lsn::new(4_500), false, now),
        Committed::Skipped
    );
    assert!(core.handle_begin(Lsn::new(6_000)));
    assert_eq!(
        core.handle_commit(Lsn::new(6_500), false, now),
        Committed::Applied
    );
    assert_eq!(core.poll_end(), None);
    assert!(!core.handle_begin(Lsn::new(9_000)), "at the resume's until");
    assert!(matches!(
        core.poll_end(),
        Some(End::Paused { lsn, .. }) if lsn == Lsn::new(9_000)
    ));
}

#[test]
fn a_live_commit_is_flushed_at_once_and_a_backlog_waits_for_a_pause_in_the_stream() {
    let now = base();
    let mut core = new_core(Lsn::new(1), None, now);
    let change = control_change("1", "elsewhere", "pause", None);
    // Live: the commit goes out at once when nothing else is ready.
    core.handle_server_time(1_000);
    core.handle_begin(Lsn::new(2_000));
    core.handle_change(SourceId(0), change.clone());
    core.handle_commit_time(1_000);
    core.handle_commit(Lsn::new(2_500), false, now);
    assert!(core.wants_ready_probe());
    core.handle_frame_done(false);
    assert!(matches!(core.poll_action(now), Some(Action::Flush(b)) if b.rows == 1));
    // A backlog: batched until the stream pauses for BACKLOG_PAUSE.
    core.handle_server_time(10_000_000);
    core.handle_begin(Lsn::new(3_000));
    core.handle_change(SourceId(0), change);
    core.handle_commit_time(1_000);
    core.handle_commit(Lsn::new(3_500), false, now);
    assert!(!core.wants_ready_probe());
    core.handle_frame(now);
    core.handle_frame_done(true);
    assert!(!matches!(core.poll_action(now), Some(Action::Flush(_))));
    let due = core.poll_timeout().unwrap();
    assert_eq!(due, now + BACKLOG_PAUSE);
    core.handle_timeout(due);
    assert!(matches!(core.poll_action(due), Some(Action::Flush(b)) if b.rows == 1));
}

#[test]
fn a_checkpoint_waits_for_every_zone_and_its_group_time_then_confirms_after_the_flush() {
    let now = base();
    let mut core = new_core(Lsn::new(1), None, now);
    core.handle_begin(Lsn::new(2_000));
    core.handle_change(SourceId(0), control_change("1", "elsewhere", "pause", None));
    core.handle_commit(Lsn::new(2_500), false, now);
    core.handle_frame_done(false);
    assert!(matches!(core.poll_action(now), Some(Action::Flush(_))));
    core.handle_flushed(SentBatch {
        seq: BatchSeq(1),
        end: Some(Lsn::new(2_500)),
        marks: vec![(ZoneId(0), 1), (ZoneId(2), 1)],
    });
    let later = now + CHECKPOINT_GROUP;
    core.handle_acked(ZoneId(0), 1);
    // Transactions keep coming a second later: a checkpoint is forced,
    // waiting a little for the last acknowledgement.
    assert!(
        matches!(core.poll_action(later), Some(Action::Wait(Some(t))) if t == later + BARRIER_WAIT),
        "zone 2 has not answered"
    );
    core.handle_acked(ZoneId(2), 1);
    let Some(Action::Commit(cp, CommitMode::Later)) = core.poll_action(later) else {
        panic!("no checkpoint")
    };
    assert_eq!(cp.end, Lsn::new(2_500));
    core.handle_committed(
        cp,
        checkpoint::Durability::Unflushed {
            wal: Lsn::new(9_000),
            flushed: Lsn::new(8_000),
        },
        later,
    );
    assert!(core.poll_action(later).is_none(), "not flushed yet");
    let poll = core.poll_timeout().unwrap();
    assert_eq!(poll, later + FLUSH_POLL);
    core.handle_timeout(poll);
    assert!(matches!(core.poll_action(poll), Some(Action::PollFlush)));
    core.handle_wal_flushed(Lsn::new(9_000), poll);
    assert!(matches!(core.poll_action(poll), Some(Action::Confirm(l)) if l == Lsn::new(2_500)));
}
