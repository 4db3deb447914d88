//! The stream core under a fake clock, a fake store and fake DNS servers.
//!
//! The property tests drive [`Stream`] the way `streamer/src/pipeline.rs`
//! does, with a model of what the driver's I/O does: a store with a
//! committed and an uncommitted side (what a crash loses) that answers the
//! flushes' look-ups and loads (the core maps the rows with a real mapping
//! and plans them with the real planner), zones that
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
use crate::checks::CheckNames;
use crate::mapping::{Desired, RowKey, Wanted};
use crate::pgoutput::{
    Begin, ColumnInfo, Commit, Insert, Message, Relation, ReplicaIdentity, Value,
};
use crate::plan::{Loaded, NodeEntry, Outcome, Refusal, Refused, RowRef};
use crate::records::{Owner, Record, ZoneName};
use crate::session::Rcode;
use crate::txn::{Assembler, Event};
use crate::update::Budget;
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
    /// pg2dns dies in the next flush, after its dispatch and before its
    /// state write (each zone may have applied a prefix of what it holds).
    CrashBeforeWrite { applied: usize },
    /// The checkpoint's COMMIT under way answers.
    Committed,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => any::<bool>().prop_map(|more| Op::Frame { more }),
        6 => (0..ZONES).prop_map(|zone| Op::Answer { zone }),
        3 => prop_oneof![Just(1u64), Just(3), Just(150), Just(1_100)].prop_map(|ms| Op::Tick { ms }),
        1 => Just(Op::KeepAlive),
        1 => Just(Op::WalFlush),
        1 => (0usize..4).prop_map(|applied| Op::Crash { applied }),
        1 => (0usize..4).prop_map(|applied| Op::CrashBeforeWrite { applied }),
        3 => Just(Op::Committed),
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

/// The table `public.t(id, value)`: row `k` is the A record
/// `k<k>.z<zone>.test. 192.0.2.<value>` (a NULL value: no record).
struct TestTable;

impl Mapping for TestTable {
    fn source(&self) -> &str {
        "public.t"
    }

    fn matches(&self, namespace: &str, table: &str) -> bool {
        namespace == "public" && table == "t"
    }

    fn key(&self, row: &dyn RowView) -> Option<RowKey> {
        match row.cell("id")? {
            Cell::Text(t) => Some(RowKey(t.to_owned())),
            _ => None,
        }
    }

    fn records(&self, row: &dyn RowView, _zones: &Zones) -> Result<Vec<Wanted>, Refused> {
        let key: u8 = match row.cell("id") {
            Some(Cell::Text(t)) => t.parse().unwrap_or(0),
            _ => 0,
        };
        Ok(match row.cell("value") {
            Some(Cell::Text(v)) => vec![Wanted::Record(desired(key, v.parse().unwrap()))],
            _ => Vec::new(),
        })
    }
}

fn desired(key: u8, value: u8) -> Desired {
    Desired {
        zone: ZoneId(zone_of(key) as u32),
        record: record(key, value),
    }
}

fn planning() -> Planning {
    let names = (0..ZONES)
        .map(|z| ZoneName::parse(&format!("z{z}.test.")).unwrap())
        .collect();
    Planning {
        mappings: vec![Box::new(TestTable)],
        zones: Zones::new(names).unwrap(),
        limits: PlanLimits {
            max_records_per_rrset: 100,
            budgets: vec![
                Budget {
                    max_message_bytes: 65_535,
                    tsig_record_len: 81,
                };
                ZONES
            ],
            check_names: vec![CheckNames::Fail; ZONES],
            exclusions: Vec::new(),
            one_ptr: Vec::new(),
            apex_ns_sources: vec![false],
            held: crate::held::Held::default(),
        },
    }
}

/// What a store holding `state` (key → value) reads for a flush.
fn load(state: &BTreeMap<u8, u8>, read: &StateRead) -> Loaded {
    let mut loaded = Loaded::default();
    let mut owners: BTreeSet<(ZoneId, Owner)> = read.owners.iter().cloned().collect();
    for (source, key) in &read.rows {
        let k: u8 = key.0.parse().unwrap();
        if let Some(v) = state.get(&k) {
            loaded
                .rows
                .insert((*source, key.clone()), vec![desired(k, *v)]);
            owners.insert((ZoneId(zone_of(k) as u32), owner(k)));
        }
    }
    for (zone, o) in owners {
        let k = key_of(&o);
        if let Some(v) = state.get(&k) {
            let r = record(k, *v);
            loaded.nodes.insert(
                (zone, o),
                vec![NodeEntry {
                    rtype: r.rtype,
                    rdata: r.rdata,
                    ttl: r.ttl,
                }],
            );
        }
    }
    loaded
}

/// The writes of a flush's outcome: each row's new value (`None`: none).
fn writes_of(outcome: &Outcome) -> Vec<(u8, Option<u8>)> {
    outcome
        .rows
        .iter()
        .map(|((_, key), records)| {
            (
                key.0.parse().unwrap(),
                records.first().map(|d| value_of(&d.record)),
            )
        })
        .collect()
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
    /// The rejection in progress covers the first this many of
    /// `unrejected` (`None`: the flush in progress is a batch's).
    rejecting: Option<usize>,
    waiting: bool,
    draining: Option<End>,
    over: Option<SessionOver>,
    /// Malformed control rows reported.
    control_errors: usize,
    /// The end of the last transaction sent in this session.
    fed_end: Lsn,
    /// The store's batch of the flush in progress.
    flush_seq: BatchSeq,
    /// Die at the next flush's state write, each zone applying at most
    /// this many of its dispatches.
    crash_before_write: Option<usize>,
    /// A checkpoint's COMMIT sent and not answered yet (frames go on).
    committing: Option<(Checkpoint, CommitMode)>,
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
            planning: planning(),
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
            rejecting: None,
            waiting: false,
            draining: None,
            over: None,
            control_errors: 0,
            fed_end: Lsn::new(1),
            flush_seq: BatchSeq(0),
            crash_before_write: None,
            committing: None,
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
        self.rejecting = None;
        self.waiting = false;
        self.draining = None;
        self.over = None;
        self.committing = None;
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

    /// The driver's part of a flush's [`Action::WriteState`]: the rows'
    /// new values go into the store's open transaction (some at once; a
    /// rejection's at once).
    fn write_state(&mut self, write: WriteState) {
        let seq = self.flush_seq;
        self.writes.extend(
            writes_of(&write.outcome)
                .into_iter()
                .map(|(k, v)| (seq, k, v)),
        );
        if let Some(n) = self.rejecting.take() {
            self.unrejected.drain(..n);
            self.written = Some(seq);
        } else if seq.0.is_multiple_of(2) {
            self.written = Some(seq);
        }
        let sent = self.sent_batch(seq, write.end);
        self.core.handle_flushed(sent);
    }

    /// The driver's look-up for a rejection the core begins: the rows
    /// whose state holds a refused record (no MX or SRV here: no target).
    fn find_producers(&mut self, find: FindProducers) -> Result<(), TestCaseError> {
        prop_assert!(find.targets.is_empty());
        self.batch += 1;
        self.flush_seq = BatchSeq(self.batch);
        self.rejecting = Some(self.unrejected.len());
        let state = self.state();
        let rows = find
            .records
            .iter()
            .enumerate()
            .filter_map(|(i, (_, rec))| {
                let key = key_of(&rec.owner);
                (state.get(&key) == Some(&value_of(rec)))
                    .then(|| ((SourceId(0), RowKey(key.to_string())), i))
            })
            .collect();
        self.core.handle_producers(Producers {
            rows,
            addressed: Vec::new(),
        });
        Ok(())
    }

    /// The driver sends a checkpoint's COMMIT; it is answered later (the
    /// frames go on meanwhile), at [`Op::Committed`] or when a drain
    /// waits for it.
    fn start_commit(&mut self, cp: Checkpoint, mode: CommitMode) -> Result<(), TestCaseError> {
        self.check_covered(cp.end, "checkpoint")?;
        prop_assert!(self.written.is_none_or(|w| w <= cp.batch));
        prop_assert!(self.committing.is_none(), "two COMMITs at once");
        // What the store sends from now on is in a transaction of its own.
        self.written = None;
        self.committing = Some((cp, mode));
        Ok(())
    }

    /// The COMMIT under way answers (or, at a crash, took effect).
    fn finish_commit(&mut self) -> Result<(), TestCaseError> {
        let Some((cp, mode)) = self.committing.take() else {
            return Ok(());
        };
        self.commit(cp, mode)
    }

    fn commit(&mut self, cp: Checkpoint, mode: CommitMode) -> Result<(), TestCaseError> {
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
        if self.over.is_none() {
            self.core.handle_committed(cp, durability, self.now);
        }
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
                if self.core.draining() && self.committing.is_some() {
                    // A drain waits for the COMMIT under way.
                    self.finish_commit()?;
                    continue;
                }
                return Ok(());
            };
            match action {
                Action::Find(find) => {
                    prop_assert!(find.truncated.is_empty() && find.dnames.is_empty());
                    self.batch += 1;
                    self.flush_seq = BatchSeq(self.batch);
                    self.core.handle_found(Found::default());
                }
                Action::LoadState(read) => {
                    let loaded = load(&self.state(), &read);
                    self.core.handle_loaded(loaded);
                }
                Action::CountRecords(zones) => {
                    let state = self.state();
                    let counts = zones
                        .iter()
                        .map(|z| {
                            let n = state.keys().filter(|k| zone_of(**k) == z.index()).count();
                            (*z, n)
                        })
                        .collect();
                    self.core.handle_counted(counts);
                }
                Action::AskRelease(lsn) => {
                    let released = self.released.contains(&lsn);
                    self.core.handle_release(lsn, released);
                }
                Action::Halt(Halt::MassDelete(held)) => {
                    prop_assert!(
                        !self.released.contains(&held.lsn),
                        "a released transaction held"
                    );
                    self.over = Some(SessionOver::Held(held.lsn));
                }
                Action::Halt(other) => panic!("{other:?}"),
                Action::Dispatch(dispatch) => {
                    self.dispatch(dispatch.segments);
                    self.core.handle_dispatched();
                }
                Action::WriteState(write) => {
                    if let Some(applied) = self.crash_before_write.take() {
                        // Dispatched, not written: the replay plans the
                        // same operations from the same state.
                        self.over = Some(SessionOver::Crashed);
                        self.crash(applied);
                        return Ok(());
                    }
                    self.write_state(write);
                }
                Action::FindProducers(find) => self.find_producers(find)?,
                Action::Commit(cp, mode) => self.start_commit(cp, mode)?,
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
                // A COMMIT under way may have reached the server or not;
                // either way nothing it covers was confirmed.
                if applied % 2 == 1 {
                    self.finish_commit()?;
                }
                self.crash(*applied);
                Ok(())
            }
            Op::CrashBeforeWrite { applied } => {
                self.crash_before_write = Some(*applied);
                Ok(())
            }
            Op::Committed => {
                self.finish_commit()?;
                self.act()
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
            if self.committing.is_some() {
                self.finish_commit()?;
                self.act()?;
                continue;
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
    let (_, write) = run_flush(&mut core, now, &BTreeMap::new());
    assert_eq!(write.rows, 1);
    core.handle_flushed(SentBatch {
        seq: BatchSeq(1),
        end: write.end,
        marks: Vec::new(),
    });
    // A backlog: batched until the stream pauses for BACKLOG_PAUSE.
    core.handle_server_time(10_000_000);
    core.handle_begin(Lsn::new(3_000));
    core.handle_change(SourceId(0), change);
    core.handle_commit_time(1_000);
    core.handle_commit(Lsn::new(3_500), false, now);
    assert!(!core.wants_ready_probe());
    core.handle_frame(now);
    core.handle_frame_done(true);
    assert!(!matches!(core.poll_action(now), Some(Action::Find(_))));
    let due = core.poll_timeout().unwrap();
    assert_eq!(due, now + BACKLOG_PAUSE);
    core.handle_timeout(due);
    let (_, write) = run_flush(&mut core, due, &BTreeMap::new());
    assert_eq!(write.rows, 1);
}

#[test]
fn a_checkpoint_waits_for_every_zone_and_its_group_time_then_confirms_after_the_flush() {
    let now = base();
    let mut core = new_core(Lsn::new(1), None, now);
    core.handle_begin(Lsn::new(2_000));
    core.handle_change(SourceId(0), control_change("1", "elsewhere", "pause", None));
    core.handle_commit(Lsn::new(2_500), false, now);
    core.handle_frame_done(false);
    run_flush(&mut core, now, &BTreeMap::new());
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

/// Drives the flush the core starts now against a store holding `state`
/// (key → value), answering each step in order and checking that nothing
/// else is asked meanwhile: the segments dispatched and the state to
/// write (not reported written: the caller says [`Stream::handle_flushed`]).
fn run_flush(
    core: &mut Stream,
    now: Instant,
    state: &BTreeMap<u8, u8>,
) -> (Vec<Segment>, WriteState) {
    let mut steps = Vec::new();
    let mut dispatched = None;
    loop {
        let action = core.poll_action(now);
        match action {
            Some(Action::Find(find)) => {
                steps.push("find");
                assert!(find.truncated.is_empty());
                core.handle_found(Found::default());
            }
            Some(Action::LoadState(read)) => {
                steps.push("load");
                core.handle_loaded(load(state, &read));
            }
            Some(Action::CountRecords(zones)) => {
                steps.push("count");
                let counts = zones
                    .iter()
                    .map(|z| {
                        (
                            *z,
                            state.keys().filter(|k| zone_of(**k) == z.index()).count(),
                        )
                    })
                    .collect();
                core.handle_counted(counts);
            }
            Some(Action::Dispatch(d)) => {
                steps.push("dispatch");
                dispatched = Some(d.segments);
                assert!(
                    core.poll_action(now).is_none(),
                    "asked something before the dispatch was done"
                );
                core.handle_dispatched();
            }
            Some(Action::WriteState(w)) => {
                steps.push("write");
                assert!(
                    core.poll_action(now).is_none(),
                    "asked something before the write was done"
                );
                assert_eq!(steps.first(), Some(&"find"), "{steps:?}");
                assert_eq!(
                    &steps[steps.len() - 3..],
                    &["load", "dispatch", "write"][..],
                    "{steps:?}"
                );
                return (dispatched.expect("written before dispatched"), w);
            }
            other => panic!("{other:?} in a flush ({steps:?})"),
        }
    }
}

/// Feeds one transaction of rows `(key, value)` (`None`: NULL) to the core,
/// ending at `end`, committed live.
fn feed(core: &mut Stream, final_lsn: Lsn, end: Lsn, rows: &[(u8, Option<u8>)], now: Instant) {
    core.handle_server_time(1_000);
    assert!(core.handle_begin(final_lsn));
    for (k, v) in rows {
        let value = v.map_or(Value::Null, |v| text(&v.to_string()));
        core.handle_change(
            SourceId(0),
            table_change(final_lsn, text(&k.to_string()), value),
        );
    }
    core.handle_commit_time(1_000);
    core.handle_commit(end, false, now);
    core.handle_frame_done(false);
}

fn ops_of(segments: &[Segment]) -> Vec<(Lsn, ZoneId, Vec<UpdateOp>)> {
    segments
        .iter()
        .flat_map(|(lsn, zones)| {
            zones.iter().map(move |z| {
                (
                    *lsn,
                    z.zone,
                    z.groups.iter().flat_map(|g| g.ops.clone()).collect(),
                )
            })
        })
        .collect()
}

#[test]
fn a_flush_looks_up_then_loads_then_dispatches_then_writes_and_asks_nothing_else_meanwhile() {
    let now = base();
    let mut core = new_core(Lsn::new(1), None, now);
    let state = BTreeMap::from([(1, 10)]);
    feed(
        &mut core,
        Lsn::new(2_000),
        Lsn::new(2_500),
        &[(1, Some(11)), (2, Some(20))],
        now,
    );
    // The flush begins with what it must look up, naming the address
    // owners its rows give (where rows may wait for an address).
    let Some(Action::Find(find)) = core.poll_action(now) else {
        panic!("the flush did not begin with its look-ups")
    };
    assert!(find.targets.contains(&(ZoneId(1), owner(1))), "{find:?}");
    assert!(core.flushing());
    // A refusal heard meanwhile waits for the flush to end.
    core.handle_refused(ServerRefusal {
        zone: ZoneId(0),
        lsn: Lsn::new(1_500),
        group: crate::update::OwnerGroup {
            owner: owner(0),
            ops: Vec::new(),
        },
        rcode: Rcode(5),
    });
    assert!(
        core.poll_action(now).is_none(),
        "asked something before the look-ups came back"
    );
    core.handle_found(Found::default());
    let Some(Action::LoadState(read)) = core.poll_action(now) else {
        panic!("no state read")
    };
    // The rows it changes and the owners they want.
    assert!(read.rows.contains(&(SourceId(0), RowKey("1".into()))));
    assert!(read.rows.contains(&(SourceId(0), RowKey("2".into()))));
    assert!(read.owners.contains(&(ZoneId(2), owner(2))));
    core.handle_loaded(load(&state, &read));
    let Some(Action::Dispatch(d)) = core.poll_action(now) else {
        panic!("no dispatch")
    };
    let ops = ops_of(&d.segments);
    assert!(
        ops.contains(&(
            Lsn::new(2_000),
            ZoneId(1),
            vec![
                UpdateOp::Delete(record(1, 10)),
                UpdateOp::Add(record(1, 11))
            ]
        )),
        "{ops:?}"
    );
    assert!(
        ops.contains(&(
            Lsn::new(2_000),
            ZoneId(2),
            vec![UpdateOp::Add(record(2, 20))]
        )),
        "{ops:?}"
    );
    core.handle_dispatched();
    let Some(Action::WriteState(w)) = core.poll_action(now) else {
        panic!("no state write")
    };
    assert_eq!(w.end, Some(Lsn::new(2_500)));
    assert_eq!(writes_of(&w.outcome), vec![(1, Some(11)), (2, Some(20))]);
    core.handle_flushed(SentBatch {
        seq: BatchSeq(1),
        end: w.end,
        marks: vec![(ZoneId(1), 1), (ZoneId(2), 1)],
    });
    // Only now the refusal's rows are rejected.
    assert!(matches!(
        core.poll_action(now),
        Some(Action::FindProducers(_))
    ));
}

#[test]
fn a_crash_between_dispatch_and_state_write_replays_the_same_operations() {
    let now = base();
    let state = BTreeMap::from([(1, 10), (4, 40)]);
    let txn: &[(u8, Option<u8>)] = &[(1, Some(11)), (4, None), (5, Some(50))];
    let mut core = new_core(Lsn::new(1), None, now);
    feed(&mut core, Lsn::new(2_000), Lsn::new(2_500), txn, now);
    let (first, _) = run_flush(&mut core, now, &state);
    assert!(!first.is_empty());
    // The process dies here: the state was not written, the slot resends.
    let mut core = new_core(Lsn::new(1), None, now);
    feed(&mut core, Lsn::new(2_000), Lsn::new(2_500), txn, now);
    let (replayed, write) = run_flush(&mut core, now, &state);
    assert_eq!(ops_of(&replayed), ops_of(&first));
    assert_eq!(
        writes_of(&write.outcome),
        vec![(1, Some(11)), (4, None), (5, Some(50))]
    );
}

/// A core whose flush holds a transaction deleting two of zone 0's three
/// records (zone 0: keys 0, 3, 6, 9), looked up and loaded: the guard's
/// questions come next.
fn a_mass_delete_loaded(now: Instant) -> Stream {
    let state = BTreeMap::from([(0, 1), (3, 3), (6, 6)]);
    let mut core = new_core(Lsn::new(1), None, now);
    feed(
        &mut core,
        Lsn::new(2_000),
        Lsn::new(2_500),
        &[(0, None), (3, None)],
        now,
    );
    assert!(matches!(core.poll_action(now), Some(Action::Find(_))));
    core.handle_found(Found::default());
    let Some(Action::LoadState(read)) = core.poll_action(now) else {
        panic!("no state read")
    };
    core.handle_loaded(load(&state, &read));
    core
}

#[test]
fn a_mass_delete_is_counted_then_asked_about_and_halts_before_anything_is_dispatched() {
    let now = base();
    let mut core = a_mass_delete_loaded(now);
    let Some(Action::CountRecords(zones)) = core.poll_action(now) else {
        panic!("the guard did not ask for the zone's size")
    };
    assert_eq!(zones, vec![ZoneId(0)]);
    core.handle_counted(BTreeMap::from([(ZoneId(0), 3)]));
    let Some(Action::AskRelease(lsn)) = core.poll_action(now) else {
        panic!("the guard did not ask for a release")
    };
    assert_eq!(lsn, Lsn::new(2_000));
    core.handle_release(lsn, false);
    match core.poll_action(now) {
        Some(Action::Halt(Halt::MassDelete(m))) => {
            assert_eq!(
                (m.zone, m.deleted, m.records, m.lsn),
                (ZoneId(0), 2, 3, Lsn::new(2_000))
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!core.flushing());
    assert!(
        core.poll_action(now).is_none(),
        "something dispatched after the halt"
    );
}

#[test]
fn a_released_mass_delete_is_dispatched_and_named() {
    let now = base();
    let mut core = a_mass_delete_loaded(now);
    assert!(matches!(
        core.poll_action(now),
        Some(Action::CountRecords(_))
    ));
    core.handle_counted(BTreeMap::from([(ZoneId(0), 3)]));
    let Some(Action::AskRelease(lsn)) = core.poll_action(now) else {
        panic!("no release asked")
    };
    core.handle_release(lsn, true);
    let Some(Action::Dispatch(d)) = core.poll_action(now) else {
        panic!("a released transaction was not dispatched")
    };
    assert_eq!(d.released.len(), 1);
    assert_eq!(d.released[0].lsn, Lsn::new(2_000));
    let ops = ops_of(&d.segments);
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(ops[0].2.len(), 2, "both deletes go out: {ops:?}");
}

#[test]
fn a_row_without_its_key_halts_the_flush_naming_the_table_and_lsn() {
    let now = base();
    let mut core = new_core(Lsn::new(1), None, now);
    assert!(core.handle_begin(Lsn::new(0x16_B374_D848)));
    core.handle_change(
        SourceId(0),
        table_change(Lsn::new(0x16_B374_D848), Value::Null, text("1")),
    );
    core.handle_commit(Lsn::new(0x16_B374_D900), false, now);
    core.handle_frame_done(false);
    match core.poll_action(now) {
        Some(Action::Halt(Halt::Unmappable(e))) => {
            let text = e.to_string();
            assert!(
                text.contains("public.t") && text.contains("16/B374D848"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!core.flushing());
}

#[test]
fn a_truncate_asks_for_every_row_of_its_source_and_deletes_them() {
    let now = base();
    let state = BTreeMap::from([(1, 10), (2, 20)]);
    let mut core = new_core(Lsn::new(1), None, now);
    assert!(core.handle_begin(Lsn::new(2_000)));
    core.handle_truncate(SourceId(0), Lsn::new(2_000));
    core.handle_commit(Lsn::new(2_500), false, now);
    core.handle_frame_done(false);
    let Some(Action::Find(find)) = core.poll_action(now) else {
        panic!("no look-ups")
    };
    assert_eq!(find.truncated, vec![SourceId(0)]);
    core.handle_found(Found {
        truncated: vec![(SourceId(0), vec![RowKey("1".into()), RowKey("2".into())])],
        ..Found::default()
    });
    let Some(Action::LoadState(read)) = core.poll_action(now) else {
        panic!("no state read")
    };
    assert_eq!(read.rows.len(), 2, "{read:?}");
    core.handle_loaded(load(&state, &read));
    let Some(Action::Dispatch(d)) = core.poll_action(now) else {
        panic!("no dispatch")
    };
    let ops = ops_of(&d.segments);
    assert!(
        ops.iter()
            .any(|(_, z, o)| *z == ZoneId(1) && o.contains(&UpdateOp::Delete(record(1, 10)))),
        "{ops:?}"
    );
    assert!(
        ops.iter()
            .any(|(_, z, o)| *z == ZoneId(2) && o.contains(&UpdateOp::Delete(record(2, 20)))),
        "{ops:?}"
    );
}

/// An insert into `public.t` in the transaction committing at `final_lsn`.
fn table_change(final_lsn: Lsn, id: Value, value: Value) -> RowChange {
    let mut asm = Assembler::new();
    asm.push(Message::Relation(relation(
        TABLE_OID,
        "public",
        "t",
        &["id", "value"],
    )))
    .unwrap();
    asm.push(Message::Begin(Begin {
        final_lsn,
        commit_time_micros: 0,
        xid: 1,
    }))
    .unwrap();
    match asm.push(Message::Insert(Insert {
        relation_oid: TABLE_OID,
        new: vec![id, value],
    })) {
        Ok(Some(Event::Change(change))) => change,
        other => panic!("{other:?}"),
    }
}

// ---- rejections (see `reject`) ----

fn refusal(zone: u32, lsn: u64, records: &[Record]) -> ServerRefusal {
    ServerRefusal {
        zone: ZoneId(zone),
        lsn: Lsn::new(lsn),
        group: OwnerGroup {
            owner: records[0].owner.clone(),
            ops: records.iter().cloned().map(UpdateOp::Add).collect(),
        },
        rcode: Rcode(5),
    }
}

fn row(key: u8) -> RowRef {
    (SourceId(0), RowKey(key.to_string()))
}

/// Drives a rejection the core begins now from its look-up on: `answer`
/// gives the producers; the rest is answered from `state`. Returns the
/// look-up, the state read, the segments dispatched and the write.
fn run_reject(
    core: &mut Stream,
    now: Instant,
    state: &BTreeMap<u8, u8>,
    answer: impl FnOnce(&FindProducers) -> Producers,
) -> (FindProducers, StateRead, Vec<Segment>, WriteState) {
    let Some(Action::FindProducers(find)) = core.poll_action(now) else {
        panic!("the rejection did not begin with its look-up")
    };
    assert!(core.flushing());
    assert!(core.poll_action(now).is_none(), "asked something meanwhile");
    core.handle_producers(answer(&find));
    let Some(Action::LoadState(read)) = core.poll_action(now) else {
        panic!("no state read")
    };
    core.handle_loaded(load(state, &read));
    let Some(Action::Dispatch(d)) = core.poll_action(now) else {
        panic!("no dispatch (the guard is not asked about refused rows)")
    };
    assert!(d.released.is_empty());
    assert!(core.poll_action(now).is_none(), "asked something meanwhile");
    core.handle_dispatched();
    let Some(Action::WriteState(w)) = core.poll_action(now) else {
        panic!("no state write")
    };
    (find, read, d.segments, w)
}

#[test]
fn a_refused_group_rejects_the_rows_holding_its_records_naming_row_zone_owner_lsn_and_answer() {
    let now = base();
    let mut core = new_core(Lsn::new(1), None, now);
    // Row 1 holds the refused record; row 4 (same zone) is not involved.
    let state = BTreeMap::from([(1, 250), (4, 40)]);
    core.handle_refused(refusal(1, 2_000, &[record(1, 250)]));
    let (find, read, segments, w) = run_reject(&mut core, now, &state, |find| Producers {
        rows: vec![(row(1), 0)],
        addressed: find.targets.clone(),
    });
    assert_eq!(find.records, vec![(ZoneId(1), record(1, 250))]);
    assert!(find.targets.is_empty(), "an A record has no target");
    // Only the producer's row is read.
    assert_eq!(read.rows, vec![row(1)]);
    assert!(read.owners.is_empty());
    // What it held leaves DNS (the server refused the addition; a delete
    // of it is harmless and a replay's order stays right).
    assert_eq!(
        ops_of(&segments),
        vec![(
            Lsn::new(2_000),
            ZoneId(1),
            vec![UpdateOp::Delete(record(1, 250))]
        )]
    );
    // The row leaves the row state, named with its key, zone, owner, LSN
    // and the server's answer.
    assert_eq!(writes_of(&w.outcome), vec![(1, None)]);
    let [r] = &w.outcome.rejections[..] else {
        panic!("{:?}", w.outcome.rejections)
    };
    assert_eq!(
        (r.source, &r.key, r.lsn, r.zone, r.owner.as_ref()),
        (
            SourceId(0),
            &RowKey("1".into()),
            Lsn::new(2_000),
            Some(ZoneId(1)),
            Some(&owner(1))
        )
    );
    assert_eq!(
        r.reason,
        Refusal::ServerRefused {
            rcode: Rcode(5),
            record: record(1, 250).to_string(),
        }
    );
    assert!(w.waiting.is_empty());
    // Nothing was sent before: the rejection ends at the progress.
    assert_eq!(w.end, Some(Lsn::new(1)));
}

#[test]
fn a_row_behind_several_refused_records_is_rejected_once_for_the_first() {
    let now = base();
    let mut core = new_core(Lsn::new(1), None, now);
    let state = BTreeMap::from([(1, 251)]);
    core.handle_refused(refusal(1, 2_000, &[record(1, 251)]));
    core.handle_refused(refusal(1, 3_000, &[record(1, 252)]));
    let (find, read, _, w) = run_reject(&mut core, now, &state, |_| Producers {
        rows: vec![(row(1), 1), (row(1), 0)],
        addressed: Vec::new(),
    });
    assert_eq!(find.records.len(), 2);
    assert_eq!(read.rows, vec![row(1)]);
    let [r] = &w.outcome.rejections[..] else {
        panic!("{:?}", w.outcome.rejections)
    };
    assert_eq!(r.lsn, Lsn::new(2_000));
    assert_eq!(
        r.reason,
        Refusal::ServerRefused {
            rcode: Rcode(5),
            record: record(1, 251).to_string(),
        }
    );
}

#[test]
fn a_refused_mx_whose_in_zone_target_has_no_address_waits_for_it_and_one_with_an_address_is_refused(
) {
    let now = base();
    let mut core = new_core(Lsn::new(1), None, now);
    let mx = |key: u8, target: &str| {
        Record::parse(
            &format!("k{key}.z1.test."),
            300,
            "MX",
            &format!("10 {target}"),
        )
        .unwrap()
    };
    let lacking = mx(1, "Mail.z1.test.");
    let addressed = mx(4, "mx2.z1.test.");
    let outside = mx(7, "mail.example.");
    let state = BTreeMap::from([(1, 10), (4, 40), (7, 70)]);
    core.handle_refused(refusal(1, 2_000, std::slice::from_ref(&lacking)));
    core.handle_refused(refusal(1, 2_000, std::slice::from_ref(&addressed)));
    core.handle_refused(refusal(1, 3_000, std::slice::from_ref(&outside)));
    let target = |name: &str| (ZoneId(1), Owner::parse(name).unwrap());
    let (find, _, _, w) = run_reject(&mut core, now, &state, |_| Producers {
        rows: vec![(row(1), 0), (row(4), 1), (row(7), 2)],
        addressed: vec![target("mx2.z1.test.")],
    });
    // Only the in-zone targets are asked about (names compare without
    // case, as DNS does).
    assert_eq!(
        find.targets,
        vec![target("mail.z1.test."), target("mx2.z1.test.")]
    );
    let reasons: BTreeMap<String, Refusal> = w
        .outcome
        .rejections
        .iter()
        .map(|r| (r.key.0.clone(), r.reason.clone()))
        .collect();
    assert_eq!(
        reasons["1"],
        Refusal::WaitingForAddress {
            rcode: Rcode(5),
            record: lacking.to_string(),
            target: Owner::parse("mail.z1.test.").unwrap(),
        }
    );
    assert_eq!(
        reasons["4"],
        Refusal::ServerRefused {
            rcode: Rcode(5),
            record: addressed.to_string(),
        }
    );
    assert_eq!(
        reasons["7"],
        Refusal::ServerRefused {
            rcode: Rcode(5),
            record: outside.to_string(),
        }
    );
    // The row that waits is recorded with the record it wants, so that an
    // address for its target publishes it.
    let [waiting] = &w.waiting[..] else {
        panic!("{:?}", w.waiting)
    };
    assert_eq!(waiting.row, row(1));
    assert_eq!(waiting.lsn, Lsn::new(2_000));
    assert_eq!(waiting.target, target("mail.z1.test."));
    assert_eq!(
        waiting.records,
        vec![Desired {
            zone: ZoneId(1),
            record: lacking.clone()
        }]
    );
}

#[test]
fn a_rejection_runs_before_any_checkpoint_and_the_checkpoint_after_covers_it() {
    let now = base();
    let mut core = new_core(Lsn::new(1), None, now);
    let state = BTreeMap::from([(4, 40)]);
    feed(
        &mut core,
        Lsn::new(2_000),
        Lsn::new(2_500),
        &[(1, Some(250))],
        now,
    );
    let (_, w) = run_flush(&mut core, now, &state);
    core.handle_flushed(SentBatch {
        seq: BatchSeq(1),
        end: w.end,
        marks: vec![(ZoneId(1), 1)],
    });
    let mut state = state;
    state.insert(1, 250);
    // The zone refused the addition and acknowledged the message; the
    // group time passed.
    core.handle_refused(refusal(1, 2_000, &[record(1, 250)]));
    core.handle_acked(ZoneId(1), 1);
    let later = now + CHECKPOINT_GROUP;
    core.handle_timeout(later);
    // The rejection first, not the checkpoint.
    let (_, _, segments, w) = run_reject(&mut core, later, &state, |_| Producers {
        rows: vec![(row(1), 0)],
        addressed: Vec::new(),
    });
    assert_eq!(segments.len(), 1);
    // It ends with the batch it follows: the checkpoint through it covers
    // the refused transaction.
    assert_eq!(w.end, Some(Lsn::new(2_500)));
    core.handle_flushed(SentBatch {
        seq: BatchSeq(2),
        end: w.end,
        marks: vec![(ZoneId(1), 2)],
    });
    // Its state write is in the store's open transaction.
    core.handle_written(Some(BatchSeq(2)));
    // Its delete is not acknowledged: no checkpoint yet.
    assert!(!matches!(core.poll_action(later), Some(Action::Commit(..))));
    core.handle_acked(ZoneId(1), 2);
    let Some(Action::Commit(cp, _)) = core.poll_action(later) else {
        panic!("no checkpoint once everything was acknowledged")
    };
    assert_eq!(cp.batch, BatchSeq(2));
    assert_eq!(cp.end, Lsn::new(2_500));
}

#[test]
fn a_primary_answering_again_ends_the_session_between_transactions_and_the_drain_checkpoints_all() {
    let now = base();
    let mut core = new_core(Lsn::new(1), None, now);
    core.handle_server_time(1_000);
    assert!(core.handle_begin(Lsn::new(2_000)));
    core.handle_change(
        SourceId(0),
        table_change(Lsn::new(2_000), text("1"), text("11")),
    );
    // Asked inside a transaction: not before its commit.
    core.handle_catch_up();
    assert_eq!(core.poll_end(), None, "not inside a transaction");
    core.handle_commit_time(1_000);
    core.handle_commit(Lsn::new(2_500), false, now);
    assert_eq!(core.poll_end(), Some(End::CatchUp));
    assert_eq!(core.poll_end(), None, "once");
    // The drain flushes and checkpoints everything received, waiting for
    // every zone's acknowledgement, before the session ends.
    core.drain();
    let (_, w) = run_flush(&mut core, now, &BTreeMap::new());
    core.handle_flushed(SentBatch {
        seq: BatchSeq(1),
        end: w.end,
        marks: vec![(ZoneId(1), 1)],
    });
    core.handle_written(Some(BatchSeq(1)));
    assert!(
        matches!(core.poll_action(now), Some(Action::Wait(_))),
        "the drain waits for the zone"
    );
    core.handle_acked(ZoneId(1), 1);
    let Some(Action::Commit(cp, CommitMode::Flushed)) = core.poll_action(now) else {
        panic!("no flushed checkpoint")
    };
    assert_eq!(cp.end, Lsn::new(2_500));
    core.handle_committed(cp, checkpoint::Durability::Flushed, now);
    assert_eq!(
        core.poll_action(now).map(|a| format!("{a:?}")),
        Some(format!("{:?}", Action::Confirm(Lsn::new(2_500))))
    );
    assert!(matches!(core.poll_action(now), Some(Action::Drained)));
}

#[test]
fn frames_go_on_while_a_checkpoint_commits_and_nothing_is_asked_of_the_store_until_it_answers() {
    let now = base();
    let mut core = new_core(Lsn::new(1), None, now);
    feed(
        &mut core,
        Lsn::new(2_000),
        Lsn::new(2_500),
        &[(1, Some(11))],
        now,
    );
    let (_, w) = run_flush(&mut core, now, &BTreeMap::new());
    core.handle_flushed(SentBatch {
        seq: BatchSeq(1),
        end: w.end,
        marks: vec![(ZoneId(1), 1)],
    });
    core.handle_written(Some(BatchSeq(1)));
    core.handle_acked(ZoneId(1), 1);
    let later = now + CHECKPOINT_GROUP;
    core.handle_timeout(later);
    let Some(Action::Commit(cp, CommitMode::Later)) = core.poll_action(later) else {
        panic!("no checkpoint")
    };
    assert!(core.committing());
    // The next transaction arrives meanwhile: the core takes it, but asks
    // for no flush (nor another checkpoint, nor the WAL flush) until the
    // COMMIT answered; and it confirms nothing of it yet.
    feed(
        &mut core,
        Lsn::new(3_000),
        Lsn::new(3_500),
        &[(2, Some(20))],
        later,
    );
    core.handle_timeout(later + FLUSH_POLL);
    assert!(core.poll_action(later).is_none());
    assert_eq!(core.confirmed(), None);
    core.handle_committed(
        cp,
        checkpoint::Durability::Unflushed {
            wal: Lsn::new(9_000),
            flushed: Lsn::new(1),
        },
        later,
    );
    assert!(!core.committing());
    // Not flushed yet: no confirmation; the batch's flush goes first.
    assert!(matches!(core.poll_action(later), Some(Action::Find(_))));
    assert_eq!(core.confirmed(), None);
}
