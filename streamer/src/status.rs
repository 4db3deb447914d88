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
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
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

/// One zone's live numbers.
#[derive(Debug)]
pub struct ZoneLive {
    name: ZoneName,
    primary: SocketAddr,
    dispatched: AtomicU64,
    acked: AtomicU64,
    /// Unix microseconds of the last acknowledgement (0: none yet).
    acked_at: AtomicI64,
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
    zones: Vec<ZoneLive>,
    /// The primaries of zones with several, zone by zone.
    primaries: Vec<PrimaryLive>,
    /// Where each zone of several primaries starts in `primaries`.
    first_primary: std::collections::HashMap<usize, usize>,
    received_lsn: AtomicU64,
    last_commit_micros: AtomicI64,
    last_server_micros: AtomicI64,
    pending: Mutex<Option<Pending>>,
    unreachable_after: Duration,
}

impl Live {
    /// Fresh numbers for `config`'s zones (in configuration order).
    pub fn new(config: &Config) -> Arc<Live> {
        for z in &config.zones {
            metrics::get().zone(&z.name.to_string(), &z.primary.to_string());
        }
        Arc::new(Live {
            zones: config
                .zones
                .iter()
                .map(|z| ZoneLive {
                    name: z.name.clone(),
                    primary: z.primary,
                    dispatched: AtomicU64::new(0),
                    acked: AtomicU64::new(0),
                    acked_at: AtomicI64::new(0),
                })
                .collect(),
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
        })
    }

    /// Zone `zone` has been handed `count` transactions in this session.
    pub fn dispatched(&self, zone: usize, count: u64) {
        if let Some(z) = self.zones.get(zone) {
            z.dispatched.store(count, Ordering::Relaxed);
        }
    }

    /// Zone `zone` acknowledged everything up to dispatch `upto`.
    pub fn acked(&self, zone: usize, upto: u64) {
        if let Some(z) = self.zones.get(zone) {
            if z.acked.fetch_max(upto, Ordering::Relaxed) < upto {
                z.acked_at
                    .store(unix_micros(SystemTime::now()), Ordering::Relaxed);
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
        if let Some(lsn) = lsn {
            p.acked_lsn.fetch_max(lsn.raw(), Ordering::Relaxed);
        }
        if p.acked.fetch_max(upto, Ordering::Relaxed) < upto {
            p.acked_at
                .store(unix_micros(SystemTime::now()), Ordering::Relaxed);
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
#[derive(Debug, Clone, PartialEq)]
struct ZoneRow {
    in_flight: i64,
    acked_at_micros: i64,
    soa_serial: Option<u32>,
    soa_at_micros: i64,
    /// Unix microseconds since the primary counts as unreachable (0: it
    /// answers).
    unreachable_since_micros: i64,
}

/// How the status publisher asks the primaries for SOA serials (issue #24:
/// after one transaction touching every zone, each zone's SOA is asked):
/// over two pipelined connections per primary, 32 queries open on each, so
/// that 50,000 zones are 50,000 queries on two sockets rather than 50,000
/// connections crowding out the UPDATEs (BIND admits 150 TCP clients).
pub const SOA_QUERIES: crate::dns::pipelined::Bounds = crate::dns::pipelined::Bounds {
    connections: 2,
    in_flight: 32,
    timeout: Duration::from_secs(2),
};

/// Asks each `(index, zone, primary)` of `asks` for the zone's SOA serial,
/// the queries to one primary pipelined within `bounds`, the primaries in
/// parallel; the answers come back with their index.
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

/// Publishes `live` for `config`'s slot until aborted: metrics every
/// [`PUBLISH_EVERY`], SOA queries after new acknowledgements (at most once
/// per zone and period), and the status rows when they changed.
pub async fn publish(live: Arc<Live>, config: Config) {
    let slot = config.database.slot.clone();
    let m = metrics::get();
    let mut db: Option<StatusDb> = None;
    let mut asked_at_ack: Vec<u64> = vec![0; live.zones.len()];
    let mut rows: Vec<ZoneRow> = vec![
        ZoneRow {
            in_flight: 0,
            acked_at_micros: 0,
            soa_serial: None,
            soa_at_micros: 0,
            unreachable_since_micros: 0,
        };
        live.zones.len()
    ];
    // Per zone: since when changes wait for an answer with none coming, and
    // the acknowledgement count last seen.
    let mut waiting_since: Vec<Option<Instant>> = vec![None; live.zones.len()];
    let mut acked_seen: Vec<u64> = vec![0; live.zones.len()];
    let mut asks: Vec<(usize, ZoneName, SocketAddr)> = Vec::new();
    let mut published: Option<(Vec<ZoneRow>, u64, Option<i64>)> = None;
    let mut series: Vec<metrics::SeriesLabel> = Vec::new();
    let mut series_of: Vec<usize> = Vec::with_capacity(live.zones.len());
    {
        let mut index: std::collections::HashMap<metrics::SeriesLabel, usize> =
            std::collections::HashMap::new();
        for z in &live.zones {
            let label = m.series(&z.name.to_string(), &z.primary.to_string());
            let k = *index.entry(label.clone()).or_insert_with(|| {
                series.push(label);
                series.len() - 1
            });
            series_of.push(k);
        }
    }
    // What the last publication said of the last Commit received, and when.
    let mut published_commit = 0u64;
    let mut published_at = Instant::now();
    let mut warned = false;
    let mut published_primaries: Option<Vec<PrimaryRow>> = None;
    let mut primaries_missing = false;
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Zones that became unreachable, or answer again, this tick.
        let (mut lost, mut back) = (0usize, 0usize);
        for (i, z) in live.zones.iter().enumerate() {
            let acked = z.acked.load(Ordering::Relaxed);
            let in_flight = z.dispatched.load(Ordering::Relaxed).saturating_sub(acked);
            rows[i].in_flight = i64::try_from(in_flight).unwrap_or(i64::MAX);
            rows[i].acked_at_micros = z.acked_at.load(Ordering::Relaxed);
            // An acknowledgement, or nothing to send, restarts the clock.
            if in_flight == 0 || acked > acked_seen[i] {
                waiting_since[i] = None;
            }
            acked_seen[i] = acked;
            if in_flight > 0 && waiting_since[i].is_none() {
                waiting_since[i] = Some(Instant::now());
            }
            let unreachable =
                waiting_since[i].is_some_and(|t| t.elapsed() > live.unreachable_after);
            if unreachable != (rows[i].unreachable_since_micros != 0) {
                let (zone, server) = (z.name.to_string(), z.primary.to_string());
                if unreachable {
                    let since = SystemTime::now()
                        - waiting_since[i].map_or(Duration::ZERO, |t| t.elapsed());
                    rows[i].unreachable_since_micros = unix_micros(since);
                    lost += 1;
                    if lost <= ZONES_LOGGED_PER_TICK {
                        warn!(%zone, %server, in_flight, "the primary has answered none of the pending changes for longer than unreachable_after_s: not ready");
                    }
                } else {
                    rows[i].unreachable_since_micros = 0;
                    back += 1;
                    if back <= ZONES_LOGGED_PER_TICK {
                        info!(%zone, %server, "the primary answers again");
                    }
                }
                m.set_unreachable(&zone, &server, unreachable);
            }
            if acked > asked_at_ack[i] {
                asks.push((i, z.name.clone(), z.primary));
            }
        }
        if lost > ZONES_LOGGED_PER_TICK {
            warn!(
                zones = lost - ZONES_LOGGED_PER_TICK,
                "and more zones whose primary has answered none of the pending changes for longer than unreachable_after_s (`pg2dns status` lists them)"
            );
        }
        if back > ZONES_LOGGED_PER_TICK {
            info!(
                zones = back - ZONES_LOGGED_PER_TICK,
                "and more zones whose primary answers again"
            );
        }
        // The SOAs of the zones acknowledged since, a few at once per
        // primary.
        let asked = std::mem::take(&mut asks);
        for (i, answer) in soa_serials(asked, SOA_QUERIES).await {
            let z = &live.zones[i];
            match answer {
                Ok(serial) => {
                    asked_at_ack[i] = acked_seen[i];
                    rows[i].soa_serial = Some(serial);
                    rows[i].soa_at_micros = unix_micros(SystemTime::now());
                    m.soa_serial(&z.name.to_string(), &z.primary.to_string(), serial);
                }
                Err(e) => {
                    debug!(zone = %z.name, primary = %z.primary, error = %crate::error::chain(&e), "SOA query failed; asking again later")
                }
            }
        }
        // Summed per series (per primary unless `per_zone`), each zone's
        // series found once rather than named again every second.
        let mut sums = vec![0i64; series.len()];
        for (row, k) in rows.iter().zip(&series_of) {
            sums[*k] = sums[*k].saturating_add(row.in_flight);
        }
        for (label, sum) in series.iter().zip(sums) {
            m.zone_in_flight.get_or_create(label).set(sum);
        }
        let primary_rows = primary_rows(&live);
        let pending = live.pending();
        let lag = pending.map_or(Duration::ZERO, |p| p.age_at_receipt + p.received.elapsed());
        m.lag_seconds.set(lag.as_secs_f64());
        // The newest of the last Commit and the last keepalive's WAL end.
        let commit = live.received_lsn.load(Ordering::Relaxed);
        let received = commit.max(u64::try_from(m.server_lsn.get()).unwrap_or(0));
        let state = (rows.clone(), received, pending.map(|p| p.commit_micros));
        let unchanged = match &published {
            None => false,
            Some(p) if p == &state => true,
            // Only the WAL end moved (pg2dns's own writes among it).
            Some((r, _, o)) => {
                (r, o) == (&state.0, &state.2)
                    && commit == published_commit
                    && published_at.elapsed() < WAL_END_EVERY
            }
        };
        let primaries_changed =
            !primaries_missing && published_primaries.as_ref() != Some(&primary_rows);
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
        // Only the zones whose row changed (all of them the first time,
        // which also forgets zones no longer configured): at 50,000 zones
        // the whole table every second would load the database while the
        // zones work.
        let changed: Option<Vec<usize>> = published.as_ref().map(|(before, _, _)| {
            (0..state.0.len())
                .filter(|&i| before.get(i) != state.0.get(i))
                .collect()
        });
        match status_db
            .write(&slot, &live, &state, changed.as_deref())
            .await
        {
            Ok(()) => {
                published = Some(state);
                published_commit = commit;
                published_at = Instant::now();
                warned = false;
                if primaries_changed {
                    let first = published_primaries.is_none();
                    match status_db
                        .write_primaries(&slot, &live, &primary_rows, first)
                        .await
                    {
                        Ok(()) => published_primaries = Some(primary_rows),
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
#[derive(Debug, Clone, PartialEq)]
struct PrimaryRow {
    in_flight: i64,
    acked_lsn: Option<Lsn>,
    acked_at_micros: i64,
}

/// The primaries' rows now, in `live.primaries`'s order.
fn primary_rows(live: &Live) -> Vec<PrimaryRow> {
    live.primaries
        .iter()
        .map(|p| {
            let dispatched = live
                .zones
                .get(p.zone)
                .map_or(0, |z| z.dispatched.load(Ordering::Relaxed));
            let lsn = p.acked_lsn.load(Ordering::Relaxed);
            PrimaryRow {
                in_flight: i64::try_from(
                    dispatched.saturating_sub(p.acked.load(Ordering::Relaxed)),
                )
                .unwrap_or(i64::MAX),
                acked_lsn: (lsn != 0).then(|| Lsn::new(lsn)),
                acked_at_micros: p.acked_at.load(Ordering::Relaxed),
            }
        })
        .collect()
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
        (all_rows, received, oldest): &(Vec<ZoneRow>, u64, Option<i64>),
        changed: Option<&[usize]>,
    ) -> Result<(), tokio_postgres::Error> {
        let c = &self.client;
        let written = async {
            c.batch_execute("BEGIN").await?;
            if changed.is_none() {
                let every_zone: Vec<String> =
                    live.zones.iter().map(|z| z.name.to_string()).collect();
                c.execute(&self.forget_zones, &[&slot, &every_zone]).await?;
            }
            let received = (*received != 0).then(|| Lsn::new(*received).to_string());
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

    /// Upserts the primaries' rows (`pg2dns.primary_status`'s published
    /// columns; the degraded state is the stream's, see
    /// `store::primary_status`); the `first` time, forgets the primaries no
    /// longer configured.
    async fn write_primaries(
        &self,
        slot: &str,
        live: &Live,
        rows: &[PrimaryRow],
        first: bool,
    ) -> Result<(), tokio_postgres::Error> {
        let zones: Vec<String> = live
            .primaries
            .iter()
            .map(|p| {
                live.zones
                    .get(p.zone)
                    .map_or_else(String::new, |z| z.name.to_string())
            })
            .collect();
        let names: Vec<&str> = live.primaries.iter().map(|p| p.name.as_str()).collect();
        let addresses: Vec<&str> = live.primaries.iter().map(|p| p.address.as_str()).collect();
        let in_flight: Vec<i64> = rows.iter().map(|r| r.in_flight).collect();
        let lsns: Vec<Option<String>> = rows
            .iter()
            .map(|r| r.acked_lsn.map(|l| l.to_string()))
            .collect();
        let acked_at: Vec<Option<f64>> = rows
            .iter()
            .map(|r| (r.acked_at_micros != 0).then(|| r.acked_at_micros as f64 / 1e6))
            .collect();
        let c = &self.client;
        if first {
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
        let both: Vec<(&ZoneLive, &ZoneRow)> = picked
            .iter()
            .filter_map(|&i| Some((live.zones.get(i)?, all_rows.get(i)?)))
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
