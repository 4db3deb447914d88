//! What the running service says about its zones and its lag, for
//! `pg2dns status`, the `pg2dns.status` view and the metrics.
//!
//! The pipeline only stores numbers in [`Live`] (atomics, and a lock taken
//! once per checkpoint): no I/O on the per-transaction path. A background
//! task ([`publish`]) reads them about once a second, asks each zone's
//! primary for its SOA serial after new acknowledgements (an UPDATE's answer
//! does not carry it), updates the metrics and upserts `pg2dns.stream_status`
//! and `pg2dns.zone_status` when something changed.
//!
//! Lag in seconds is the age of the oldest transaction received (or being
//! received: from its first change, a large one streams for a while before
//! its Commit) but not yet acknowledged by every zone (0 when all is in
//! DNS), from pgoutput's commit timestamps. Both clocks it reads are the server's: the view computes
//! `now() - oldest_unacked_commit` in PostgreSQL, and the metric adds the
//! local time elapsed since receipt to how old the transaction already was
//! by the server's send timestamp, so a skew between hosts does not show.
//! `pg_stat_replication.replay_lag` is not used: it exists only while the
//! replication connection is up, goes NULL when idle, and measures when
//! confirmations reached the server, not when DNS acknowledged.
//!
//! A zone's primary is *unreachable* when the zone has had changes in flight
//! for longer than `[limits] unreachable_after_s` without any being
//! acknowledged (connections refused, timeouts, SERVFAIL: the sink retries
//! them all the same). The service is then not ready, the metric
//! `pg2dns_zone_unreachable` is 1 and `zone_status.unreachable_since` says
//! since when; the first acknowledgement clears it.
//!
//! [`watch_slot`] runs for the whole process, whatever the mode: it reads
//! the slot's retained WAL and `wal_status` every few seconds (a paused
//! service keeps WAL too, and that is when `max_slot_wal_keep_size` can
//! lose the slot), and makes the lag of a transaction the mass-delete guard
//! holds grow while it is held.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pg2dns_decoder::{Lsn, ZoneName};
use tokio_postgres::types::ToSql;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::metrics;

/// How often the status is published (at most).
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// How often a change of the server's WAL end alone is published. Each
/// publication writes WAL, which moves the WAL end the next keepalive
/// reports: published every second, an idle service would write forever.
const WAL_END_EVERY: Duration = Duration::from_secs(10);
/// Zones named one by one when many become unreachable (or answer again)
/// at once; the rest are counted in one line. A server down behind 50,000
/// zones otherwise logged 50,000 warnings at once.
const ZONES_LOGGED_PER_TICK: usize = 8;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// One zone's live numbers (its name and primary are its configuration's,
/// [`Live::config`]).
#[derive(Debug, Default)]
pub struct ZoneLive {
    dispatched: AtomicU64,
    acked: AtomicU64,
    /// Unix microseconds of the last acknowledgement (0: none yet).
    acked_at: AtomicI64,
    /// In [`Live::changed`] (set by the pipeline, cleared by the publisher
    /// before it reads the numbers).
    changed: AtomicBool,
}

/// One primary's live numbers, of a zone with several.
#[derive(Debug)]
pub struct PrimaryLive {
    /// Its zone's index.
    zone: usize,
    name: String,
    address: String,
    /// The zone's dispatches it acknowledged.
    acked: AtomicU64,
    /// The transaction of the newest of them (0: not known).
    acked_lsn: AtomicU64,
    /// Unix microseconds of its last acknowledgement (0: none yet).
    acked_at: AtomicI64,
}

/// The oldest transaction received and not yet acknowledged.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Its commit time, microseconds since 2000-01-01 (server clock).
    commit_micros: i64,
    /// How old it was by the server's clock when the server sent it.
    age_at_receipt: Duration,
    /// When it was received (local monotonic clock).
    received: Instant,
}

/// What the pipeline records for the status; shared with [`publish`].
#[derive(Debug)]
pub struct Live {
    /// The session's zones, whose names and primaries the rows carry.
    config: crate::config::ZoneList,
    zones: Vec<ZoneLive>,
    /// The zones whose numbers changed since the publisher last took them
    /// (each once: see [`ZoneLive::changed`]), so that it looks at those
    /// and the zones it still watches, not at every zone every second.
    changed: Mutex<Vec<usize>>,
    /// The primaries of zones with several, zone by zone.
    primaries: Vec<PrimaryLive>,
    /// Where each zone of several primaries starts in `primaries`.
    first_primary: std::collections::HashMap<usize, usize>,
    received_lsn: AtomicU64,
    last_commit_micros: AtomicI64,
    last_server_micros: AtomicI64,
    pending: Mutex<Option<Pending>>,
    unreachable_after: Duration,
    /// Each primary's server task, which sends the SOA queries on its
    /// pooled connections (set when the session's lanes start).
    soa_servers: Mutex<std::collections::HashMap<SocketAddr, SoaSender>>,
}

/// Where the SOA queries to one primary go: its server task.
type SoaSender = tokio::sync::mpsc::UnboundedSender<crate::dns::server::SoaAsk>;

impl Live {
    /// Fresh numbers for `config`'s zones (in configuration order).
    pub fn new(config: &Config) -> Arc<Live> {
        for z in &config.zones {
            metrics::get().zone(&z.name.to_string(), &z.primary.to_string());
        }
        Arc::new(Live {
            config: config.zones.clone(),
            zones: config.zones.iter().map(|_| ZoneLive::default()).collect(),
            changed: Mutex::new(Vec::new()),
            primaries: config
                .zones
                .iter()
                .enumerate()
                .filter(|(_, z)| !z.more_primaries.is_empty())
                .flat_map(|(i, z)| {
                    z.primaries().into_iter().map(move |p| PrimaryLive {
                        zone: i,
                        name: p.name,
                        address: p.primary.to_string(),
                        acked: AtomicU64::new(0),
                        acked_lsn: AtomicU64::new(0),
                        acked_at: AtomicI64::new(0),
                    })
                })
                .collect(),
            first_primary: {
                let mut first = std::collections::HashMap::new();
                let mut at = 0;
                for (i, z) in config.zones.iter().enumerate() {
                    if !z.more_primaries.is_empty() {
                        first.insert(i, at);
                        at += 1 + z.more_primaries.len();
                    }
                }
                first
            },
            received_lsn: AtomicU64::new(0),
            last_commit_micros: AtomicI64::new(0),
            last_server_micros: AtomicI64::new(0),
            pending: Mutex::new(None),
            unreachable_after: config.limits.unreachable_after,
            soa_servers: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The server tasks that answer the SOA queries, by primary address
    /// (the session's, as its lanes start).
    pub fn set_soa_servers(&self, servers: impl IntoIterator<Item = (SocketAddr, SoaSender)>) {
        let mut map = self.soa_servers.lock().unwrap_or_else(|e| e.into_inner());
        map.clear();
        for (primary, tx) in servers {
            map.entry(primary).or_insert(tx);
        }
    }

    /// Hands `asks` to their primaries' server tasks, answers to `reply`;
    /// returns the indexes handed over. A primary without a task (before
    /// the session's lanes start, or its task gone) is skipped: its zones
    /// are asked again at a later tick. No connection is opened here, so
    /// the queries stay within each server's `connections`.
    fn ask_soas(
        &self,
        asks: Vec<(usize, ZoneName, SocketAddr)>,
        reply: &crate::dns::server::SoaReply,
    ) -> Vec<usize> {
        let mut per_server: std::collections::HashMap<SocketAddr, Vec<(usize, ZoneName)>> =
            std::collections::HashMap::new();
        for (i, zone, server) in asks {
            per_server.entry(server).or_default().push((i, zone));
        }
        let servers = self.soa_servers.lock().unwrap_or_else(|e| e.into_inner());
        let mut asked = Vec::new();
        for (server, zones) in per_server {
            let Some(tx) = servers.get(&server) else {
                debug!(primary = %server, zones = zones.len(), "no server task for the SOA queries yet; asking later");
                continue;
            };
            let indexes: Vec<usize> = zones.iter().map(|(i, _)| *i).collect();
            let ask = crate::dns::server::SoaAsk {
                zones,
                reply: reply.clone(),
            };
            if tx.send(ask).is_ok() {
                asked.extend(indexes);
            } else {
                debug!(primary = %server, "the server task stopped; asking the SOAs later");
            }
        }
        asked
    }

    /// Zone `zone`'s numbers changed: the publisher looks at it next time.
    fn touch(&self, zone: usize) {
        if let Some(z) = self.zones.get(zone) {
            if !z.changed.swap(true, Ordering::AcqRel) {
                self.changed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(zone);
            }
        }
    }

    /// The zones changed since the last call, into `into` (each once). A
    /// zone's mark is cleared before its numbers are read, so a change made
    /// meanwhile is either read now or marks the zone again.
    fn take_changed(&self, into: &mut Vec<usize>) {
        into.clear();
        std::mem::swap(
            &mut *self.changed.lock().unwrap_or_else(|e| e.into_inner()),
            into,
        );
        for &i in into.iter() {
            if let Some(z) = self.zones.get(i) {
                // A read-modify-write: it reads the pipeline's last mark,
                // so the numbers stored before that mark are seen after.
                z.changed.swap(false, Ordering::AcqRel);
            }
        }
    }

    /// Zone `zone` has been handed `count` transactions in this session.
    pub fn dispatched(&self, zone: usize, count: u64) {
        if let Some(z) = self.zones.get(zone) {
            if z.dispatched.swap(count, Ordering::AcqRel) != count {
                self.touch(zone);
            }
        }
    }

    /// Zone `zone` acknowledged everything up to dispatch `upto`.
    pub fn acked(&self, zone: usize, upto: u64) {
        if let Some(z) = self.zones.get(zone) {
            if z.acked.fetch_max(upto, Ordering::AcqRel) < upto {
                z.acked_at
                    .store(unix_micros(SystemTime::now()), Ordering::Release);
                self.touch(zone);
            }
        }
    }

    /// Primary `lane` of zone `zone` (of several) acknowledged the zone's
    /// dispatches up to `upto`, the newest of transaction `lsn`.
    pub fn primary_acked(&self, zone: usize, lane: usize, upto: u64, lsn: Option<Lsn>) {
        let Some(p) = self
            .first_primary
            .get(&zone)
            .and_then(|first| self.primaries.get(first + lane))
            .filter(|p| p.zone == zone)
        else {
            return;
        };
        let mut moved = false;
        if let Some(lsn) = lsn {
            moved |= p.acked_lsn.fetch_max(lsn.raw(), Ordering::AcqRel) < lsn.raw();
        }
        if p.acked.fetch_max(upto, Ordering::AcqRel) < upto {
            p.acked_at
                .store(unix_micros(SystemTime::now()), Ordering::Release);
            moved = true;
        }
        if moved {
            self.touch(zone);
        }
    }

    /// A Commit arrived (whether or not the transaction is applied).
    pub fn commit_received(&self, end_lsn: Lsn, commit_micros: i64, server_micros: i64) {
        self.received_lsn
            .fetch_max(end_lsn.raw(), Ordering::Relaxed);
        self.last_commit_micros
            .store(commit_micros, Ordering::Relaxed);
        self.last_server_micros
            .store(server_micros, Ordering::Relaxed);
    }

    /// The transaction whose Commit arrived last is the oldest one not yet
    /// acknowledged (nothing was pending before it).
    pub fn pending_starts(&self) {
        self.pending_since(
            self.last_commit_micros.load(Ordering::Relaxed),
            self.last_server_micros.load(Ordering::Relaxed),
        );
    }

    /// The transaction committed at `commit_micros`, being received (its
    /// Commit has not arrived yet), is the oldest one not yet acknowledged;
    /// `server_micros` is the server's clock as last heard.
    pub fn pending_since(&self, commit_micros: i64, server_micros: i64) {
        let age = u64::try_from(server_micros - commit_micros).unwrap_or(0);
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(Pending {
            commit_micros,
            age_at_receipt: Duration::from_micros(age),
            received: Instant::now(),
        });
    }

    /// Everything received was acknowledged.
    pub fn all_acknowledged(&self) {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn pending(&self) -> Option<Pending> {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn unix_micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A zone's published state.
#[derive(Debug, Clone, Default, PartialEq)]
struct ZoneRow {
    in_flight: i64,
    acked_at_micros: i64,
    soa_serial: Option<u32>,
    soa_at_micros: i64,
    /// Unix microseconds since the primary counts as unreachable (0: it
    /// answers).
    unreachable_since_micros: i64,
}

/// Asks each `(index, zone, primary)` of `asks` for the zone's SOA serial
/// over connections of its own, the queries to one primary pipelined
/// within `bounds`, the primaries in parallel; the answers come back with
/// their index. The rejoin probe of a dropped primary uses it (that
/// primary has no UPDATE traffic); the status publisher asks through the
/// server tasks instead ([`Live::set_soa_servers`]), on their pooled
/// connections.
pub async fn soa_serials(
    asks: Vec<(usize, ZoneName, SocketAddr)>,
    bounds: crate::dns::pipelined::Bounds,
) -> Vec<(usize, Result<u32, SoaError>)> {
    let mut per_server: std::collections::HashMap<SocketAddr, Vec<(usize, ZoneName)>> =
        std::collections::HashMap::new();
    for (i, zone, server) in asks {
        per_server.entry(server).or_default().push((i, zone));
    }
    let servers = per_server.into_iter().map(|(server, zones)| async move {
        let answers = crate::dns::pipelined::ask_all(server, zones.len(), bounds, |i, id| {
            crate::dns::axfr::query(&zones[i].1, 6, id)
        })
        .await;
        zones
            .iter()
            .zip(answers)
            .map(|((i, _), answer)| {
                (
                    *i,
                    answer
                        .map_err(SoaError::Ask)
                        .and_then(|frame| serial_of(&frame)),
                )
            })
            .collect::<Vec<_>>()
    });
    futures_util::future::join_all(servers)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Why an SOA query gave no serial.
#[derive(Debug, thiserror::Error)]
pub enum SoaError {
    /// The query got no answer.
    #[error(transparent)]
    Ask(crate::dns::pipelined::AskError),
    /// The answer is not a DNS message.
    #[error("malformed answer")]
    Malformed(#[source] hickory_proto::serialize::binary::DecodeError),
    /// The answer holds no SOA record.
    #[error("no SOA in the answer")]
    NoSoa,
}

/// The SOA serial in an answer to an SOA query.
fn serial_of(frame: &[u8]) -> Result<u32, SoaError> {
    use hickory_proto::op::Message;
    use hickory_proto::rr::RData;
    let answer = Message::from_vec(frame).map_err(SoaError::Malformed)?;
    answer
        .answers
        .iter()
        .find_map(|rr| match &rr.data {
            RData::SOA(soa) => Some(soa.serial),
            _ => None,
        })
        .ok_or(SoaError::NoSoa)
}

/// Per zone in [`Board::flags`]: in [`Board::watch`].
const WATCHED: u8 = 1;
/// Per zone in [`Board::flags`]: in this tick's list.
const VISITING: u8 = 2;
/// Per zone in [`Board::flags`]: its row changed since the last write.
const UNPUBLISHED: u8 = 4;
/// Per zone in [`Board::flags`]: its SOA query is out (not asked again
/// until it is answered or failed).
const ASKING: u8 = 8;

/// What the publisher knows of each zone's row and which rows it has yet
/// to write: [`publish`]'s bookkeeping, without its I/O. Each tick looks
/// only at the zones the pipeline marked changed ([`Live::take_changed`])
/// and at those it still watches (changes in flight, whose unreachable
/// clock runs, or an SOA serial still to ask), and writes only the rows
/// that changed: at 50,000 zones, copying and comparing every row every
/// second was most of what the service did under a light load.
struct Board {
    rows: Vec<ZoneRow>,
    /// Per zone: since when changes wait for an answer with none coming.
    waiting_since: Vec<Option<Instant>>,
    /// Per zone: the acknowledgement count last seen.
    acked_seen: Vec<u64>,
    /// Per zone: the acknowledgement count its SOA serial was asked after.
    asked_at_ack: Vec<u64>,
    /// Per zone: the acknowledgement count when its query out was sent.
    asking_at_ack: Vec<u64>,
    /// Per zone: [`WATCHED`], [`VISITING`], [`UNPUBLISHED`].
    flags: Vec<u8>,
    /// Zones looked at every tick until they settle.
    watch: Vec<usize>,
    /// Zones whose row changed since the last write.
    unpublished: Vec<usize>,
    /// Every row is to be written, and the zones no longer configured
    /// forgotten: until the first write succeeds.
    all: bool,
    /// The primaries' rows (zones of several), in `Live::primaries`' order.
    primary_rows: Vec<PrimaryRow>,
    /// The primaries whose row changed since the last write (indexes).
    primaries_unpublished: Vec<usize>,
    primary_flags: Vec<bool>,
    /// Every primary's row is to be written: until the first write.
    primaries_all: bool,
    /// The in-flight metric's series (per primary unless `per_zone`), each
    /// zone's series, their sums, and those to set at the next tick.
    series: Vec<metrics::SeriesLabel>,
    series_of: Vec<usize>,
    sums: Vec<i64>,
    series_changed: Vec<bool>,
    /// This tick's zones (kept to reuse its allocation).
    visit: Vec<usize>,
}

/// What one tick of [`Board::look`] found.
#[derive(Debug, Default, PartialEq)]
struct Looked {
    /// Zones whose primary became unreachable, and that answer again.
    lost: usize,
    back: usize,
    /// The SOA serials to ask: (zone index, zone, primary).
    asks: Vec<(usize, ZoneName, SocketAddr)>,
}

impl Board {
    fn new(live: &Live, m: &metrics::Metrics) -> Board {
        let n = live.zones.len();
        let mut series: Vec<metrics::SeriesLabel> = Vec::new();
        let mut series_of: Vec<usize> = Vec::with_capacity(n);
        let mut index: std::collections::HashMap<metrics::SeriesLabel, usize> =
            std::collections::HashMap::new();
        for z in live.config.iter() {
            let label = m.series(&z.name.to_string(), &z.primary.to_string());
            let k = *index.entry(label.clone()).or_insert_with(|| {
                series.push(label);
                series.len() - 1
            });
            series_of.push(k);
        }
        let primaries = live.primaries.len();
        Board {
            rows: vec![ZoneRow::default(); n],
            waiting_since: vec![None; n],
            acked_seen: vec![0; n],
            asked_at_ack: vec![0; n],
            asking_at_ack: vec![0; n],
            flags: vec![0; n],
            watch: Vec::new(),
            unpublished: Vec::new(),
            all: true,
            primary_rows: vec![PrimaryRow::default(); primaries],
            primaries_unpublished: Vec::new(),
            primary_flags: vec![false; primaries],
            primaries_all: true,
            sums: vec![0; series.len()],
            // Set every series once: a new session starts from zero.
            series_changed: vec![true; series.len()],
            series,
            series_of,
            visit: Vec::new(),
        }
    }

    /// Looks at the zones changed since the last tick and at the watched
    /// ones: their rows, the unreachable clocks (`now`), the SOA serials to
    /// ask.
    fn look(&mut self, live: &Live, m: &metrics::Metrics, now: Instant) -> Looked {
        let mut looked = Looked::default();
        let mut visit = std::mem::take(&mut self.visit);
        live.take_changed(&mut visit);
        visit.retain(|&i| i < self.flags.len());
        for &i in &visit {
            self.flags[i] |= VISITING;
        }
        for i in std::mem::take(&mut self.watch) {
            if self.flags[i] & VISITING == 0 {
                self.flags[i] |= VISITING;
                visit.push(i);
            }
        }
        for &i in &visit {
            self.flags[i] &= !(VISITING | WATCHED);
            let (Some(z), Some(c)) = (live.zones.get(i), live.config.get(i)) else {
                continue;
            };
            let acked = z.acked.load(Ordering::Acquire);
            let in_flight = z.dispatched.load(Ordering::Acquire).saturating_sub(acked);
            let mut row = self.rows[i].clone();
            row.in_flight = i64::try_from(in_flight).unwrap_or(i64::MAX);
            row.acked_at_micros = z.acked_at.load(Ordering::Acquire);
            // An acknowledgement, or nothing to send, restarts the clock.
            if in_flight == 0 || acked > self.acked_seen[i] {
                self.waiting_since[i] = None;
            }
            self.acked_seen[i] = acked;
            if in_flight > 0 && self.waiting_since[i].is_none() {
                self.waiting_since[i] = Some(now);
            }
            let unreachable = self.waiting_since[i]
                .is_some_and(|t| now.saturating_duration_since(t) > live.unreachable_after);
            if unreachable != (row.unreachable_since_micros != 0) {
                let (zone, server) = (c.name.to_string(), c.primary.to_string());
                if unreachable {
                    let since = SystemTime::now()
                        - self.waiting_since[i]
                            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
                    row.unreachable_since_micros = unix_micros(since);
                    looked.lost += 1;
                    if looked.lost <= ZONES_LOGGED_PER_TICK {
                        warn!(%zone, %server, in_flight, "the primary has answered none of the pending changes for longer than unreachable_after_s: not ready");
                    }
                } else {
                    row.unreachable_since_micros = 0;
                    looked.back += 1;
                    if looked.back <= ZONES_LOGGED_PER_TICK {
                        info!(%zone, %server, "the primary answers again");
                    }
                }
                m.set_unreachable(&zone, &server, unreachable);
            }
            if acked > self.asked_at_ack[i] && self.flags[i] & ASKING == 0 {
                looked.asks.push((i, c.name.clone(), c.primary));
            }
            self.set_row(i, row);
            self.look_primaries(live, i);
            if in_flight > 0 || acked > self.asked_at_ack[i] {
                self.flags[i] |= WATCHED;
                self.watch.push(i);
            }
        }
        visit.clear();
        self.visit = visit;
        looked
    }

    /// The rows of zone `zone`'s primaries, if it has several.
    fn look_primaries(&mut self, live: &Live, zone: usize) {
        let Some(&first) = live.first_primary.get(&zone) else {
            return;
        };
        let dispatched = live
            .zones
            .get(zone)
            .map_or(0, |z| z.dispatched.load(Ordering::Acquire));
        for (j, p) in live
            .primaries
            .iter()
            .enumerate()
            .skip(first)
            .take_while(|(_, p)| p.zone == zone)
        {
            let lsn = p.acked_lsn.load(Ordering::Acquire);
            let row = PrimaryRow {
                in_flight: i64::try_from(
                    dispatched.saturating_sub(p.acked.load(Ordering::Acquire)),
                )
                .unwrap_or(i64::MAX),
                acked_lsn: (lsn != 0).then(|| Lsn::new(lsn)),
                acked_at_micros: p.acked_at.load(Ordering::Acquire),
            };
            if self.primary_rows[j] != row {
                self.primary_rows[j] = row;
                if !self.primary_flags[j] {
                    self.primary_flags[j] = true;
                    self.primaries_unpublished.push(j);
                }
            }
        }
    }

    /// Zone `i`'s row is now `row`.
    fn set_row(&mut self, i: usize, row: ZoneRow) {
        if self.rows[i] == row {
            return;
        }
        let k = self.series_of[i];
        self.sums[k] = self.sums[k]
            .saturating_add(row.in_flight)
            .saturating_sub(self.rows[i].in_flight);
        self.series_changed[k] |= row.in_flight != self.rows[i].in_flight;
        self.rows[i] = row;
        if self.flags[i] & UNPUBLISHED == 0 {
            self.flags[i] |= UNPUBLISHED;
            self.unpublished.push(i);
        }
    }

    /// Zone `i`'s SOA query went out (after the acknowledgements seen).
    fn soa_asked(&mut self, i: usize) {
        if let Some(f) = self.flags.get_mut(i) {
            *f |= ASKING;
            self.asking_at_ack[i] = self.acked_seen[i];
        }
    }

    /// Zone `i`'s SOA query failed: it is asked again at a later tick.
    fn soa_failed(&mut self, i: usize) {
        if let Some(f) = self.flags.get_mut(i) {
            *f &= !ASKING;
        }
    }

    /// Zone `i`'s SOA serial as its primary answered (to the query sent
    /// after the acknowledgements then seen: a later one asks again).
    fn soa_answered(&mut self, i: usize, serial: u32) {
        let Some(row) = self.rows.get(i) else { return };
        self.asked_at_ack[i] = if self.flags[i] & ASKING != 0 {
            self.asking_at_ack[i]
        } else {
            self.acked_seen[i]
        };
        self.flags[i] &= !ASKING;
        let row = ZoneRow {
            soa_serial: Some(serial),
            soa_at_micros: unix_micros(SystemTime::now()),
            ..row.clone()
        };
        self.set_row(i, row);
    }

    /// Sets the in-flight gauges whose sum changed.
    fn set_in_flight(&mut self, m: &metrics::Metrics) {
        for (k, changed) in self.series_changed.iter_mut().enumerate() {
            if std::mem::take(changed) {
                m.zone_in_flight
                    .get_or_create(&self.series[k])
                    .set(self.sums[k]);
            }
        }
    }

    /// The zones whose row to write: every zone (`None`) until the first
    /// write, then those changed since.
    fn to_write(&self) -> Option<&[usize]> {
        (!self.all).then_some(self.unpublished.as_slice())
    }

    /// The zones' rows were written.
    fn written(&mut self) {
        for &i in &self.unpublished {
            self.flags[i] &= !UNPUBLISHED;
        }
        self.unpublished.clear();
        self.all = false;
    }

    /// The primaries whose row to write (every one until the first write).
    fn primaries_to_write(&self) -> Option<&[usize]> {
        (!self.primaries_all).then_some(self.primaries_unpublished.as_slice())
    }

    /// The primaries' rows were written.
    fn primaries_written(&mut self) {
        for &j in &self.primaries_unpublished {
            self.primary_flags[j] = false;
        }
        self.primaries_unpublished.clear();
        self.primaries_all = false;
    }

    /// Whether any primary's row is to be written.
    fn primaries_changed(&self) -> bool {
        !self.primary_rows.is_empty()
            && (self.primaries_all || !self.primaries_unpublished.is_empty())
    }

    /// Whether any zone's row is to be written.
    fn zones_changed(&self) -> bool {
        self.all || !self.unpublished.is_empty()
    }
}

/// Publishes `live` for `config`'s slot until aborted: metrics every
/// [`PUBLISH_EVERY`], SOA queries after new acknowledgements (at most one
/// per zone out at a time, sent by the primary's server task on its pooled
/// connections when it has no UPDATE to send, answered at a later tick),
/// and the status rows that changed.
pub async fn publish(live: Arc<Live>, config: Config) {
    let slot = config.database.slot.clone();
    let m = metrics::get();
    let mut db: Option<StatusDb> = None;
    let mut board = Board::new(&live, m);
    // What the last publication said of the stream (the newest of the
    // last Commit and the WAL end, the oldest unacknowledged commit), of
    // the last Commit received, and when.
    let mut published: Option<(u64, Option<i64>)> = None;
    let mut published_commit = 0u64;
    let mut published_at = Instant::now();
    let mut warned = false;
    let mut primaries_missing = false;
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (soa_tx, mut soa_rx): (crate::dns::server::SoaReply, _) =
        tokio::sync::mpsc::unbounded_channel();
    loop {
        tick.tick().await;
        // The SOAs answered since the last tick.
        while let Ok((i, answer)) = soa_rx.try_recv() {
            let Some(c) = live.config.get(i) else {
                continue;
            };
            match answer
                .map_err(SoaError::Ask)
                .and_then(|frame| serial_of(&frame))
            {
                Ok(serial) => {
                    board.soa_answered(i, serial);
                    m.soa_serial(&c.name.to_string(), &c.primary.to_string(), serial);
                }
                Err(e) => {
                    board.soa_failed(i);
                    debug!(zone = %c.name, primary = %c.primary, error = %crate::error::chain(&e), "SOA query failed; asking again later")
                }
            }
        }
        let looked = board.look(&live, m, Instant::now());
        if looked.lost > ZONES_LOGGED_PER_TICK {
            warn!(
                zones = looked.lost - ZONES_LOGGED_PER_TICK,
                "and more zones whose primary has answered none of the pending changes for longer than unreachable_after_s (`pg2dns status` lists them)"
            );
        }
        if looked.back > ZONES_LOGGED_PER_TICK {
            info!(
                zones = looked.back - ZONES_LOGGED_PER_TICK,
                "and more zones whose primary answers again"
            );
        }
        // The SOAs of the zones acknowledged since, through their
        // primaries' server tasks.
        for i in live.ask_soas(looked.asks, &soa_tx) {
            board.soa_asked(i);
        }
        board.set_in_flight(m);
        let pending = live.pending();
        let lag = pending.map_or(Duration::ZERO, |p| p.age_at_receipt + p.received.elapsed());
        m.lag_seconds.set(lag.as_secs_f64());
        // The newest of the last Commit and the last keepalive's WAL end.
        let commit = live.received_lsn.load(Ordering::Relaxed);
        let received = commit.max(u64::try_from(m.server_lsn.get()).unwrap_or(0));
        let stream = (received, pending.map(|p| p.commit_micros));
        let unchanged = !board.zones_changed()
            && match published {
                None => false,
                Some(p) if p == stream => true,
                // Only the WAL end moved (pg2dns's own writes among it).
                Some((_, oldest)) => {
                    oldest == stream.1
                        && commit == published_commit
                        && published_at.elapsed() < WAL_END_EVERY
                }
            };
        let primaries_changed = !primaries_missing && board.primaries_changed();
        if unchanged && !primaries_changed {
            continue;
        }
        if db.is_none() {
            match StatusDb::connect(&config).await {
                Ok(c) => db = Some(c),
                Err(e) => {
                    if !warned {
                        warn!(error = %crate::error::chain(&e), "cannot publish the status to PostgreSQL; trying again");
                        warned = true;
                    }
                    continue;
                }
            }
        }
        let Some(status_db) = &db else { continue };
        match status_db
            .write(&slot, &live, &board.rows, stream, board.to_write())
            .await
        {
            Ok(()) => {
                board.written();
                published = Some(stream);
                published_commit = commit;
                published_at = Instant::now();
                warned = false;
                if primaries_changed {
                    match status_db
                        .write_primaries(
                            &slot,
                            &live,
                            &board.primary_rows,
                            board.primaries_to_write(),
                        )
                        .await
                    {
                        Ok(()) => board.primaries_written(),
                        Err(e) if crate::store::primary_status::is_missing(&e) => {
                            warn!("pg2dns.primary_status is missing: `pg2dns status` does not list the zones' primaries (run `pg2dns setup` for schema version 13)");
                            primaries_missing = true;
                        }
                        Err(e) => {
                            debug!(error = %e, "cannot publish the primaries' status; trying again")
                        }
                    }
                }
            }
            Err(e) => {
                if !warned {
                    warn!(error = %e, "cannot publish the status to PostgreSQL; trying again");
                    warned = true;
                }
                if let Some(d) = db.take() {
                    d.task.abort();
                }
            }
        }
    }
}

/// A primary's published state (of a zone with several).
#[derive(Debug, Clone, Default, PartialEq)]
struct PrimaryRow {
    in_flight: i64,
    acked_lsn: Option<Lsn>,
    acked_at_micros: i64,
}

/// The status connection and its statements, prepared once.
struct StatusDb {
    client: tokio_postgres::Client,
    task: tokio::task::JoinHandle<()>,
    forget_zones: tokio_postgres::Statement,
    stream: tokio_postgres::Statement,
    zones: tokio_postgres::Statement,
}

impl StatusDb {
    async fn connect(config: &Config) -> Result<StatusDb, crate::store::StoreError> {
        let (client, task) = crate::pgconn::connect(&config.database, "pg2dns status").await?;
        let prepared = async {
            // The status is a report, not state: its commits need not wait
            // for a WAL flush.
            client.batch_execute("SET synchronous_commit = off").await?;
            let forget_zones = client
                .prepare(
                    "DELETE FROM pg2dns.zone_status WHERE slot = $1 AND zone <> ALL($2::text[])",
                )
                .await?;
            let stream = client
                .prepare(
                    "INSERT INTO pg2dns.stream_status AS s (slot, received_lsn, oldest_unacked_commit, updated)
                     VALUES ($1, $2::text::pg_lsn, to_timestamp($3), now())
                     ON CONFLICT (slot) DO UPDATE SET
                         received_lsn = coalesce(EXCLUDED.received_lsn, s.received_lsn),
                         oldest_unacked_commit = EXCLUDED.oldest_unacked_commit,
                         updated = now()",
                )
                .await?;
            let zones = client
                .prepare(
                    "INSERT INTO pg2dns.zone_status AS z
                         (slot, zone, primary_addr, in_flight, acked_at, soa_serial, soa_at, unreachable_since, updated)
                     SELECT $1, zone, primary_addr, in_flight, to_timestamp(acked_at), soa_serial, to_timestamp(soa_at), to_timestamp(unreachable_since), now()
                       FROM unnest($2::text[], $3::text[], $4::int8[], $5::float8[], $6::int8[], $7::float8[], $8::float8[])
                            AS u(zone, primary_addr, in_flight, acked_at, soa_serial, soa_at, unreachable_since)
                     ON CONFLICT (slot, zone) DO UPDATE SET
                         primary_addr = EXCLUDED.primary_addr,
                         in_flight = EXCLUDED.in_flight,
                         acked_at = coalesce(EXCLUDED.acked_at, z.acked_at),
                         soa_serial = coalesce(EXCLUDED.soa_serial, z.soa_serial),
                         soa_at = coalesce(EXCLUDED.soa_at, z.soa_at),
                         unreachable_since = EXCLUDED.unreachable_since,
                         updated = now()",
                )
                .await?;
            Ok::<_, tokio_postgres::Error>((forget_zones, stream, zones))
        };
        match prepared.await {
            Ok((forget_zones, stream, zones)) => Ok(StatusDb {
                client,
                task,
                forget_zones,
                stream,
                zones,
            }),
            Err(e) => {
                task.abort();
                Err(crate::store::sql("cannot prepare the status statements")(e))
            }
        }
    }

    /// Writes the status in one transaction: the stream's row, and the
    /// rows of the zones in `changed` (every zone when `None`, which also
    /// forgets zones no longer configured), [`ZONE_ROWS_PER_STATEMENT`] at a
    /// time so that 50,000 zones are not one 20 MB statement.
    async fn write(
        &self,
        slot: &str,
        live: &Live,
        all_rows: &[ZoneRow],
        (received, oldest): (u64, Option<i64>),
        changed: Option<&[usize]>,
    ) -> Result<(), tokio_postgres::Error> {
        let c = &self.client;
        let written = async {
            c.batch_execute("BEGIN").await?;
            if changed.is_none() {
                let every_zone: Vec<String> =
                    live.config.iter().map(|z| z.name.to_string()).collect();
                c.execute(&self.forget_zones, &[&slot, &every_zone]).await?;
            }
            let received = (received != 0).then(|| Lsn::new(received).to_string());
            let oldest = oldest.map(|c| (c + PG_EPOCH_MICROS) as f64 / 1e6);
            c.execute(&self.stream, &[&slot, &received, &oldest])
                .await?;
            let every: Vec<usize>;
            let picked = match changed {
                Some(c) => c,
                None => {
                    every = (0..all_rows.len()).collect();
                    &every
                }
            };
            for chunk in picked.chunks(ZONE_ROWS_PER_STATEMENT) {
                self.write_zones(slot, live, all_rows, chunk).await?;
            }
            c.batch_execute("COMMIT").await
        }
        .await;
        if written.is_err() {
            let _ = c.batch_execute("ROLLBACK").await;
        }
        written
    }

    /// Upserts the rows of the primaries in `changed` (indexes into
    /// `live.primaries`; `pg2dns.primary_status`'s published columns; the
    /// degraded state is the stream's, see `store::primary_status`); when
    /// `None`, every primary's, and forgets the primaries no longer
    /// configured.
    async fn write_primaries(
        &self,
        slot: &str,
        live: &Live,
        rows: &[PrimaryRow],
        changed: Option<&[usize]>,
    ) -> Result<(), tokio_postgres::Error> {
        let every: Vec<usize>;
        let picked = match changed {
            Some(c) => c,
            None => {
                every = (0..live.primaries.len()).collect();
                &every
            }
        };
        let both: Vec<(&PrimaryLive, &PrimaryRow)> = picked
            .iter()
            .filter_map(|&j| Some((live.primaries.get(j)?, rows.get(j)?)))
            .collect();
        let zones: Vec<String> = both
            .iter()
            .map(|(p, _)| {
                live.config
                    .get(p.zone)
                    .map_or_else(String::new, |z| z.name.to_string())
            })
            .collect();
        let names: Vec<&str> = both.iter().map(|(p, _)| p.name.as_str()).collect();
        let addresses: Vec<&str> = both.iter().map(|(p, _)| p.address.as_str()).collect();
        let in_flight: Vec<i64> = both.iter().map(|(_, r)| r.in_flight).collect();
        let lsns: Vec<Option<String>> = both
            .iter()
            .map(|(_, r)| r.acked_lsn.map(|l| l.to_string()))
            .collect();
        let acked_at: Vec<Option<f64>> = both
            .iter()
            .map(|(_, r)| (r.acked_at_micros != 0).then(|| r.acked_at_micros as f64 / 1e6))
            .collect();
        let c = &self.client;
        if changed.is_none() {
            c.execute(
                "DELETE FROM pg2dns.primary_status ps WHERE slot = $1 AND NOT EXISTS (
                     SELECT 1 FROM unnest($2::text[], $3::text[]) AS u(zone, name)
                      WHERE u.zone = ps.zone AND u.name = ps.primary_name)",
                &[&slot, &zones, &names],
            )
            .await?;
        }
        c.execute(
            "INSERT INTO pg2dns.primary_status AS ps
                 (slot, zone, primary_name, primary_addr, in_flight, acked_lsn, acked_at, updated)
             SELECT $1, zone, name, address, in_flight, lsn::pg_lsn, to_timestamp(acked_at), now()
               FROM unnest($2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::float8[])
                    AS u(zone, name, address, in_flight, lsn, acked_at)
             ON CONFLICT (slot, zone, primary_name) DO UPDATE SET
                 primary_addr = EXCLUDED.primary_addr,
                 in_flight = EXCLUDED.in_flight,
                 acked_lsn = coalesce(EXCLUDED.acked_lsn, ps.acked_lsn),
                 acked_at = coalesce(EXCLUDED.acked_at, ps.acked_at),
                 updated = now()",
            &[
                &slot, &zones, &names, &addresses, &in_flight, &lsns, &acked_at,
            ],
        )
        .await
        .map(drop)
    }

    /// Upserts the rows of the zones `picked`.
    async fn write_zones(
        &self,
        slot: &str,
        live: &Live,
        all_rows: &[ZoneRow],
        picked: &[usize],
    ) -> Result<u64, tokio_postgres::Error> {
        let seconds = |micros: i64| (micros != 0).then(|| micros as f64 / 1e6);
        let both: Vec<(&crate::config::ZoneConfig, &ZoneRow)> = picked
            .iter()
            .filter_map(|&i| Some((&**live.config.get(i)?, all_rows.get(i)?)))
            .collect();
        let zones: Vec<String> = both.iter().map(|(z, _)| z.name.to_string()).collect();
        let primaries: Vec<String> = both.iter().map(|(z, _)| z.primary.to_string()).collect();
        let in_flight: Vec<i64> = both.iter().map(|(_, r)| r.in_flight).collect();
        let acked_at: Vec<Option<f64>> = both
            .iter()
            .map(|(_, r)| seconds(r.acked_at_micros))
            .collect();
        let serial: Vec<Option<i64>> = both
            .iter()
            .map(|(_, r)| r.soa_serial.map(i64::from))
            .collect();
        let soa_at: Vec<Option<f64>> = both.iter().map(|(_, r)| seconds(r.soa_at_micros)).collect();
        let unreachable: Vec<Option<f64>> = both
            .iter()
            .map(|(_, r)| seconds(r.unreachable_since_micros))
            .collect();
        let params: [&(dyn ToSql + Sync); 8] = [
            &slot,
            &zones,
            &primaries,
            &in_flight,
            &acked_at,
            &serial,
            &soa_at,
            &unreachable,
        ];
        self.client.execute(&self.zones, &params).await
    }
}

/// Zone rows written by one statement of the status publisher.
const ZONE_ROWS_PER_STATEMENT: usize = 5_000;

/// How often [`watch_slot`] reads `pg_replication_slots`.
const SLOT_EVERY: Duration = Duration::from_secs(5);

/// For the whole process: the slot's retained WAL and `wal_status` in the
/// metrics (with a warning when it nears `max_slot_wal_keep_size` or is
/// lost), and the lag of a held transaction growing while it is held.
pub async fn watch_slot(config: Config) {
    let m = metrics::get();
    let slot = config.database.slot.clone();
    let mut client: Option<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> = None;
    let mut warned_status = String::from("reserved");
    let mut warned_near = false;
    // Since when a transaction is held, and its lag then.
    let mut held: Option<(Instant, f64)> = None;
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_read: Option<Instant> = None;
    loop {
        tick.tick().await;
        if m.state() == metrics::State::Held {
            let (since, base) = *held.get_or_insert((Instant::now(), m.lag_seconds.get()));
            m.lag_seconds.set(base + since.elapsed().as_secs_f64());
        } else {
            held = None;
        }
        if last_read.is_some_and(|t| t.elapsed() < SLOT_EVERY) {
            continue;
        }
        last_read = Some(Instant::now());
        if client.is_none() {
            match crate::pgconn::connect(&config.database, "pg2dns slot watch").await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    debug!(error = %crate::error::chain(&e), "cannot read the slot's WAL yet");
                    continue;
                }
            }
        }
        let Some((c, _)) = &client else { continue };
        let asked = Instant::now();
        let row = c
            .query_opt(
                "SELECT coalesce(wal_status, ''), \
                        coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::int8, \
                        safe_wal_size \
                 FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()",
                &[&slot],
            )
            .await;
        let r = match row {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                debug!(error = %e, "cannot read the slot's WAL");
                if let Some((_, task)) = client.take() {
                    task.abort();
                }
                continue;
            }
        };
        let (status, retained, safe): (String, i64, Option<i64>) = (r.get(0), r.get(1), r.get(2));
        debug!(
            wal_status = %status,
            retained_wal_bytes = retained,
            ms = asked.elapsed().as_millis() as u64,
            "read the slot's WAL"
        );
        m.slot_wal(&status, retained, safe);
        if status != warned_status && (status == "unreserved" || status == "lost") {
            warn!(%slot, wal_status = %status, retained_wal_bytes = retained, "{}", slot_warning(&status, retained, safe).unwrap_or_default());
        }
        warned_status = status.clone();
        let near = wal_near_limit(retained, safe);
        if near && !warned_near && status != "lost" {
            warn!(%slot, retained_wal_bytes = retained, safe_wal_bytes = safe.unwrap_or(-1), "{}", slot_warning(&status, retained, safe).unwrap_or_default());
        }
        warned_near = near;
    }
}

/// Whether the slot has used more than three quarters of
/// `max_slot_wal_keep_size` (`safe` is NULL when that is unlimited).
pub fn wal_near_limit(retained: i64, safe: Option<i64>) -> bool {
    safe.is_some_and(|safe| safe.saturating_mul(4) < retained.saturating_add(safe))
}

/// What an operator should know about the slot's WAL, if anything.
pub fn slot_warning(wal_status: &str, retained: i64, safe: Option<i64>) -> Option<String> {
    match wal_status {
        "lost" => Some("the slot is lost (wal_status lost): WAL it needed was removed past max_slot_wal_keep_size, and the changes in it can no longer be streamed; recreate the slot with `pg2dns setup` and resynchronise the zones".into()),
        "unreserved" => Some(format!("the slot's WAL is past max_slot_wal_keep_size (wal_status unreserved, {retained} bytes retained): it will be lost at the next checkpoint unless the service streams again now")),
        _ if wal_near_limit(retained, safe) => Some(format!(
            "the slot retains {retained} bytes of WAL and will be lost after {} more bytes (max_slot_wal_keep_size): resume or start the service",
            safe.unwrap_or(0)
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_warns_past_three_quarters_of_its_limit_and_when_lost() {
        const MB: i64 = 1 << 20;
        // No max_slot_wal_keep_size: never near.
        assert!(!wal_near_limit(100 * MB, None));
        assert_eq!(slot_warning("reserved", 100 * MB, None), None);
        // 70 MB of 100 used: not yet; 80 of 100: warn.
        assert!(!wal_near_limit(70 * MB, Some(30 * MB)));
        assert!(wal_near_limit(80 * MB, Some(20 * MB)));
        let w = slot_warning("reserved", 80 * MB, Some(20 * MB)).unwrap_or_default();
        assert!(w.contains("lost after 20971520 more bytes"), "{w}");
        assert!(slot_warning("unreserved", 120 * MB, Some(0))
            .unwrap_or_default()
            .contains("unreserved"));
        assert!(slot_warning("lost", 0, None)
            .unwrap_or_default()
            .contains("slot is lost"));
    }

    /// A configuration of `zones` zones `zI.status.test.` on `primary`
    /// (a port of the test's own, so that its metric series are its own).
    fn config_of(zones: usize, primary: &str) -> Config {
        let dir = std::env::temp_dir().join(format!(
            "pg2dns-status-{}-{}",
            std::process::id(),
            primary.replace([':', '.'], "-")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("k.key"),
            "key \"k1\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=\";\n};\n",
        )
        .unwrap();
        let mut body = String::from(
            "version = 1\n[database]\nurl = \"postgresql://postgres:pw@127.0.0.1:5433/app\"\n",
        );
        for i in 0..zones {
            body.push_str(&format!(
                "[[zone]]\nname = \"z{i}.status.test\"\nprimary = \"{primary}\"\ntsig_key_file = \"k.key\"\n"
            ));
        }
        let config = Config::from_toml(&dir.join("pg2dns.toml"), &body, |_| None).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        config
    }

    #[test]
    fn a_tick_looks_only_at_zones_changed_since_and_writes_only_their_rows() {
        let config = config_of(1000, "127.0.0.1:5391");
        let live = Live::new(&config);
        let m = metrics::get();
        let mut board = Board::new(&live, m);
        let start = Instant::now();
        // The first write is every zone's row (and forgets the others).
        let looked = board.look(&live, m, start);
        assert_eq!(looked, Looked::default());
        assert_eq!(board.to_write(), None);
        board.written();
        // Nothing changed: nothing to write, nothing looked at.
        board.look(&live, m, start);
        assert!(!board.zones_changed());
        assert_eq!(board.to_write(), Some(&[][..]));
        // Zone 7 is handed a transaction: its row, and only its row.
        live.dispatched(7, 1);
        board.look(&live, m, start);
        assert_eq!(board.to_write(), Some(&[7][..]));
        assert_eq!(board.rows[7].in_flight, 1);
        board.set_in_flight(m);
        let series = m.series("z7.status.test.", "127.0.0.1:5391");
        assert_eq!(m.zone_in_flight.get_or_create(&series).get(), 1);
        board.written();
        // Still in flight, watched, but its row did not change.
        board.look(&live, m, start + Duration::from_secs(1));
        assert!(!board.zones_changed(), "{:?}", board.to_write());
        // Acknowledged: its row changes and its SOA is asked once.
        live.acked(7, 1);
        let looked = board.look(&live, m, start + Duration::from_secs(2));
        assert_eq!(board.to_write(), Some(&[7][..]));
        assert_eq!(board.rows[7].in_flight, 0);
        assert_ne!(board.rows[7].acked_at_micros, 0);
        let asked: Vec<(usize, String)> = looked
            .asks
            .iter()
            .map(|(i, z, _)| (*i, z.to_string()))
            .collect();
        assert_eq!(asked, [(7, "z7.status.test.".to_string())]);
        board.set_in_flight(m);
        assert_eq!(m.zone_in_flight.get_or_create(&series).get(), 0);
        board.written();
        // Its serial is a change of its row too.
        board.soa_answered(7, 2026120701);
        assert_eq!(board.to_write(), Some(&[7][..]));
        assert_eq!(board.rows[7].soa_serial, Some(2026120701));
        board.written();
        // Settled: no SOA asked again, nothing written, nothing watched.
        let looked = board.look(&live, m, start + Duration::from_secs(3));
        assert!(looked.asks.is_empty(), "{:?}", looked.asks);
        assert!(!board.zones_changed());
        assert!(board.watch.is_empty(), "{:?}", board.watch);
        // Two zones at once, each once however often it changed.
        for n in 1..=3 {
            live.dispatched(999, n);
            live.dispatched(0, n);
        }
        board.look(&live, m, start + Duration::from_secs(4));
        let mut picked = board.to_write().unwrap_or_default().to_vec();
        picked.sort_unstable();
        assert_eq!(picked, [0, 999]);
        assert_eq!((board.rows[0].in_flight, board.rows[999].in_flight), (3, 3));
    }

    #[test]
    fn a_zone_waiting_past_unreachable_after_is_published_unreachable_and_answering_again() {
        let config = config_of(3, "127.0.0.1:5392");
        let live = Live::new(&config);
        let m = metrics::get();
        let mut board = Board::new(&live, m);
        let start = Instant::now();
        board.look(&live, m, start);
        board.written();
        live.dispatched(1, 1);
        board.look(&live, m, start);
        board.written();
        // Nothing changes in the pipeline; the clock alone makes it
        // unreachable, so the watched zone is looked at without a mark.
        let later = start + live.unreachable_after + Duration::from_secs(1);
        let looked = board.look(&live, m, later);
        assert_eq!((looked.lost, looked.back), (1, 0));
        assert_eq!(board.to_write(), Some(&[1][..]));
        assert_ne!(board.rows[1].unreachable_since_micros, 0);
        board.written();
        live.acked(1, 1);
        let looked = board.look(&live, m, later);
        assert_eq!((looked.lost, looked.back), (0, 1));
        assert_eq!(board.to_write(), Some(&[1][..]));
        assert_eq!(board.rows[1].unreachable_since_micros, 0);
    }

    #[test]
    fn a_zone_s_soa_is_asked_once_while_its_query_is_out_and_again_after_newer_acks() {
        let config = config_of(4, "127.0.0.1:5393");
        let live = Live::new(&config);
        let m = metrics::get();
        let mut board = Board::new(&live, m);
        let start = Instant::now();
        let asked = |looked: &Looked| looked.asks.iter().map(|(i, _, _)| *i).collect::<Vec<_>>();
        board.look(&live, m, start);
        board.written();
        live.dispatched(2, 1);
        live.acked(2, 1);
        let looked = board.look(&live, m, start);
        assert_eq!(asked(&looked), [2]);
        board.soa_asked(2);
        // Out: not asked again however many ticks go by.
        for s in 1..4 {
            let looked = board.look(&live, m, start + Duration::from_secs(s));
            assert!(looked.asks.is_empty(), "{:?}", looked.asks);
        }
        // Failed: asked again at the next tick.
        board.soa_failed(2);
        let looked = board.look(&live, m, start + Duration::from_secs(5));
        assert_eq!(asked(&looked), [2]);
        board.soa_asked(2);
        // A newer acknowledgement while the query is out: the answer is to
        // the older one, so the zone is asked again after it.
        live.dispatched(2, 2);
        live.acked(2, 2);
        let looked = board.look(&live, m, start + Duration::from_secs(6));
        assert!(looked.asks.is_empty(), "still out: {:?}", looked.asks);
        board.soa_answered(2, 5);
        assert_eq!(board.rows[2].soa_serial, Some(5));
        let looked = board.look(&live, m, start + Duration::from_secs(7));
        assert_eq!(asked(&looked), [2]);
        board.soa_asked(2);
        board.soa_answered(2, 6);
        let looked = board.look(&live, m, start + Duration::from_secs(8));
        assert!(looked.asks.is_empty(), "settled: {:?}", looked.asks);
        assert!(board.watch.is_empty(), "{:?}", board.watch);
    }

    #[tokio::test]
    async fn soa_asks_go_to_their_primary_s_task_and_a_primary_without_one_is_asked_later() {
        let config = config_of(3, "127.0.0.1:5394");
        let live = Live::new(&config);
        let (reply, _answers) = tokio::sync::mpsc::unbounded_channel();
        let zone = |i: usize| ZoneName::parse(&format!("z{i}.status.test.")).unwrap();
        let here: SocketAddr = "127.0.0.1:5394".parse().unwrap();
        let elsewhere: SocketAddr = "127.0.0.1:5395".parse().unwrap();
        // Before the lanes start: nothing handed over.
        let asks = vec![(0, zone(0), here), (1, zone(1), here)];
        assert!(live.ask_soas(asks.clone(), &reply).is_empty());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        live.set_soa_servers([(here, tx)]);
        let mut all = asks.clone();
        all.push((2, zone(2), elsewhere));
        let mut handed = live.ask_soas(all, &reply);
        handed.sort_unstable();
        assert_eq!(handed, [0, 1], "the primary without a task is skipped");
        let ask = rx.try_recv().expect("one ask for the primary");
        let zones: Vec<(usize, String)> =
            ask.zones.iter().map(|(i, z)| (*i, z.to_string())).collect();
        assert_eq!(
            zones,
            [(0, "z0.status.test.".into()), (1, "z1.status.test.".into())]
        );
        assert!(rx.try_recv().is_err(), "one ask per primary and tick");
        // Its task gone: nothing handed over.
        drop(rx);
        assert!(live.ask_soas(asks, &reply).is_empty());
    }

    /// A DNS server on loopback that holds SOA queries until `batch` are
    /// open, then takes any more that arrive in the next moment, then
    /// answers all it holds (serial 7, each on its own connection); it
    /// records the most queries it ever held and the connections opened. A
    /// client that keeps `batch` open makes progress and is seen with
    /// exactly `batch` (the moment only delays it: a slow machine cannot
    /// make it fail); one that opens more is seen with more; one that opens
    /// fewer never gets an answer.
    async fn batching_server(batch: usize) -> (SocketAddr, Arc<Mutex<(usize, usize)>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        type Reply = tokio::sync::mpsc::UnboundedSender<Vec<u8>>;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let most = Arc::new(Mutex::new((0usize, 0usize)));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Vec<u8>, Reply)>();
        let seen = most.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(q) = rx.recv().await {
                held.push(q);
                if held.len() >= batch {
                    while let Ok(Some(q)) =
                        tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
                    {
                        held.push(q);
                    }
                }
                let mut m = seen.lock().unwrap();
                m.0 = m.0.max(held.len());
                drop(m);
                if held.len() >= batch {
                    for (query, reply) in held.drain(..) {
                        // Header (QR, one question, one answer), the
                        // question, then the SOA with a pointer to it.
                        let mut a = query[..2].to_vec();
                        a.extend_from_slice(&[0x84, 0, 0, 1, 0, 1, 0, 0, 0, 0]);
                        a.extend_from_slice(&query[12..]);
                        a.extend_from_slice(&[0xc0, 12, 0, 6, 0, 1, 0, 0, 0, 60, 0, 22, 0, 0]);
                        for v in [7u32, 1, 1, 1, 1] {
                            a.extend_from_slice(&v.to_be_bytes());
                        }
                        let _ = reply.send(a);
                    }
                }
            }
        });
        let opened = most.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                opened.lock().unwrap().1 += 1;
                let tx = tx.clone();
                let (mut read, mut write) = tcp.into_split();
                let (reply, mut answers) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
                tokio::spawn(async move {
                    while let Some(a) = answers.recv().await {
                        let _ = write.write_u16(a.len() as u16).await;
                        let _ = write.write_all(&a).await;
                    }
                });
                tokio::spawn(async move {
                    loop {
                        let Ok(len) = read.read_u16().await else {
                            return;
                        };
                        let mut query = vec![0; usize::from(len)];
                        if read.read_exact(&mut query).await.is_err() {
                            return;
                        }
                        let _ = tx.send((query, reply.clone()));
                    }
                });
            }
        });
        (addr, most)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn soa_queries_keep_their_bound_open_over_few_connections_per_primary() {
        let bounds = crate::dns::pipelined::Bounds {
            connections: 2,
            in_flight: 4,
            timeout: Duration::from_secs(60),
        };
        let open = bounds.connections * bounds.in_flight;
        let (server, most) = batching_server(open).await;
        let asks: Vec<(usize, ZoneName, SocketAddr)> = (0..10 * open)
            .map(|i| (i, ZoneName::parse(&format!("z{i}.test.")).unwrap(), server))
            .collect();
        // Generous: an answer comes as soon as eight are open.
        let answers = soa_serials(asks, bounds).await;
        assert_eq!(answers.len(), 10 * open);
        let mut indexes: Vec<usize> = answers.iter().map(|(i, _)| *i).collect();
        indexes.sort_unstable();
        assert_eq!(indexes, (0..10 * open).collect::<Vec<_>>());
        for (i, a) in &answers {
            assert!(matches!(a, Ok(7)), "zone {i}: {a:?}");
        }
        let (held, connections) = *most.lock().unwrap();
        assert_eq!(held, open, "queries open at once");
        assert_eq!(connections, bounds.connections, "connections opened");
    }
}
