//! The zones' streams as the pipeline sees them: one task per server (see
//! [`crate::dns::server::ServerTask`]), each zone's dispatch count, and
//! what the zones acknowledged or refused, handed to the stream's core
//! (`pg2dns_decoder::stream`, which keeps the checkpoint ledger) as
//! zone-level [`Heard`] news.
//!
//!
//! A zone with several primaries (`primaries`, `server_group`) has one lane
//! per primary, on that primary's server task: every dispatch goes to each
//! (each with its own session, window and backoff). The lanes' answers are
//! combined by [`pg2dns_decoder::primaries`] before the core hears them,
//! so the core still sees one zone: acknowledged as far as every
//! non-degraded primary is, a refusal only when all agree, and a halt when
//! they diverge.
//!
//! A primary's degraded state is durable (`store::primary_status`): when
//! one is degraded, what the zone acknowledged past it is held back from
//! the core until that is written, so the slot never confirms a change a
//! degraded primary lacks without a record saying it must be brought in
//! line. [`Lanes::catch_up`] reads that record at the next session's start
//! (after a restart too). A degraded primary more than `[limits]
//! degraded_queue` transactions behind is dropped: its server forgets the
//! zone's queue and the catch-up repairs it from the row state instead.
//!
//! Time for the primaries (degrading, settling halts) is
//! [`Primaries::poll_timeout`]: [`Reports::recv`] wakes then, with a
//! [`LaneReport::Tick`], and no task ticks meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pg2dns_decoder::checkpoint::{BatchSeq, SentBatch, ServerRefusal};
use pg2dns_decoder::plan::ZoneOps;
use pg2dns_decoder::primaries::{Event as PrimaryEvent, Primaries, Refusal, ZoneSpec};
use pg2dns_decoder::{Lsn, ZoneId};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::Config;
use crate::dns::kept::{Kept, ServerKey, ServerStream};
use crate::dns::server::ServerInput;
use crate::dns::sink::{Dispatch, LaneReport, ZoneReport};
use crate::error::RunError;
use crate::store::primary_status;
use crate::{metrics, status};

/// What a zone said, zone-level (the core's [`pg2dns_decoder::stream::Stream`]
/// takes it as `handle_acked` / `handle_refused`).
#[derive(Debug)]
pub(crate) enum Heard {
    /// The zone acknowledged its dispatches up to `upto`.
    Acked {
        /// The zone.
        zone: ZoneId,
        /// Its acknowledged dispatch count.
        upto: u64,
    },
    /// A server refused an owner group for its content.
    Refused(ServerRefusal),
    /// A primary of this zone that the session streams without answers
    /// again: the session should end so that the next one brings it in
    /// line (the core's `handle_catch_up`).
    CatchUp {
        /// The zone.
        zone: ZoneId,
    },
}

/// How often a primary the session streams without is asked for its
/// zone's SOA, to learn that it answers again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The longest wait before the first probe of a primary that could not be
/// brought in line at the session's start (the wait doubles with each
/// session that tried and failed, so that a primary that answers but
/// whose repair is refused does not restart the session every second).
const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Asks `primary` for `zone`'s SOA every [`PROBE_EVERY`] (after `first`)
/// until it answers, then says so on `reports` ([`LaneReport::Answering`]).
/// Aborted with the session's lanes.
async fn probe(
    zone: pg2dns_decoder::ZoneName,
    id: ZoneId,
    lane: usize,
    primary: std::net::SocketAddr,
    timeout: Duration,
    first: Duration,
    reports: mpsc::UnboundedSender<LaneReport>,
) {
    let bounds = crate::dns::pipelined::Bounds {
        connections: 1,
        in_flight: 1,
        timeout,
    };
    let mut wait = first;
    loop {
        tokio::time::sleep(wait).await;
        wait = PROBE_EVERY;
        let answers = status::soa_serials(vec![(0, zone.clone(), primary)], bounds).await;
        if answers.iter().any(|(_, serial)| serial.is_ok()) {
            let _ = reports.send(LaneReport::Answering { zone: id, lane });
            return;
        }
    }
}

/// A probe task, aborted when dropped (with the session's lanes).
struct Probe(tokio::task::JoinHandle<()>);

impl Drop for Probe {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Per-zone dispatch bookkeeping.
pub(crate) struct ZoneLane {
    /// The zone's `pg2dns_update_operations_total` series.
    operations: prometheus_client::metrics::counter::Counter,
    /// The zone (its dispatch count is kept across sessions by name).
    name: pg2dns_decoder::ZoneName,
    /// Its primaries' server tasks (indexes into `Lanes::servers`), the
    /// first primary first.
    servers: Vec<usize>,
    /// The `pg2dns_primary_*` series of each primary, for a zone of
    /// several.
    series: Vec<PrimarySeries>,
    dispatched: u64,
    /// What the zone acknowledged (its dispatch count so far).
    acked: u64,
    /// Dispatches of the current flush, handed over at its end.
    outbox: Vec<Dispatch>,
}

/// The server of a primary the session streams without (see
/// [`Kept::is_detached`]).
const DETACHED: usize = usize::MAX;

/// One primary's series of a zone with several.
struct PrimarySeries {
    /// Its `pg2dns_update_operations_total{server}`: each primary receives
    /// every operation of the zone.
    operations: prometheus_client::metrics::counter::Counter,
    /// Its zone's part of the `pg2dns_primary_*` gauges (the primary's
    /// sums unless `[metrics] per_zone`).
    acked: metrics::GaugeShare,
    in_flight: metrics::GaugeShare,
    degraded: metrics::GaugeShare,
    name: String,
    /// Its address (what a probe asks).
    address: std::net::SocketAddr,
}

impl PrimarySeries {
    /// The `pg2dns_primary_*` series of `primary` (at `address`) for `zone`.
    fn of(
        m: &metrics::Metrics,
        zone: &pg2dns_decoder::ZoneName,
        primary: &str,
        address: std::net::SocketAddr,
    ) -> PrimarySeries {
        let label = m.primary_series(&zone.to_string(), primary);
        PrimarySeries {
            operations: m
                .operations
                .get_or_create(&m.series(&zone.to_string(), &address.to_string()))
                .clone(),
            acked: metrics::GaugeShare::of(m.primary_acked.get_or_create(&label).clone()),
            in_flight: metrics::GaugeShare::of(m.primary_in_flight.get_or_create(&label).clone()),
            degraded: metrics::GaugeShare::of(m.primary_degraded.get_or_create(&label).clone()),
            name: primary.to_string(),
            address,
        }
    }
}

/// The zones' streams (one task per server, see
/// [`crate::dns::server::ServerTask`]) and what they acknowledged.
pub(crate) struct Lanes {
    lanes: Vec<ZoneLane>,
    /// Each server task's input.
    servers: Vec<mpsc::Sender<ServerInput>>,
    /// The server tasks (kept across sessions while their settings stay).
    streams: Vec<ServerStream>,
    /// Zones with dispatches in their outbox, in first-dispatch order.
    touched: Vec<ZoneId>,
    /// Zones dispatched to since the last batch was marked, with their
    /// dispatch count (see [`Lanes::mark_batch`]).
    marks: pg2dns_decoder::HashMap<ZoneId, u64>,
    /// Zones that have dispatches not yet acknowledged.
    unacked: usize,
    pub(crate) reports: Reports,
    /// Keeps `reports` open with no zone at all (every zone in an empty
    /// `pg2dns.zones`).
    _reporting: mpsc::UnboundedSender<LaneReport>,
    /// What the zones said and the stream's core has not heard yet.
    heard: Vec<Heard>,
    /// The zones' primaries' answers combined (one lane per zone unless
    /// it has several primaries).
    primaries: Primaries,
    /// Halts of lanes of zones with several primaries, until the others
    /// answered the same dispatch.
    halts: pg2dns_decoder::HashMap<(ZoneId, usize), pg2dns_decoder::session::Halt>,
    /// The primaries' events not handled yet: an acknowledgement (or
    /// refusal) waits here, in order, while a degraded state is written.
    events: std::collections::VecDeque<PrimaryEvent>,
    /// Writes the primaries' degraded state (zones of several only).
    durable: Option<mpsc::UnboundedSender<DurableWrite>>,
    /// Writes handed to `durable`.
    durable_sent: u64,
    /// Lanes dropped this session (zone, server): their late answers are
    /// ignored.
    dropped: std::collections::HashSet<(ZoneId, usize)>,
    /// Servers to tell to forget a dropped lane's zone (and its queue).
    removals: Vec<(usize, ZoneId)>,
    /// `[limits] degraded_queue`, for messages.
    degraded_queue: u64,
    /// `[limits] max_unacked_zones`.
    max_unacked_zones: usize,
    /// The probes of primaries the session streams without.
    probes: Vec<Probe>,
    /// How long a probe waits for its answer.
    dns_timeout: Duration,
    /// Sessions in a row whose start could not bring a primary in line.
    failed_catch_ups: u32,
    /// What the status publisher reads (numbers only, no I/O).
    pub(crate) live: Arc<status::Live>,
}

/// The servers' reports, and time passed for the zones' primaries: what
/// the pipeline waits on.
pub(crate) struct Reports {
    rx: mpsc::UnboundedReceiver<LaneReport>,
    /// When the primaries need [`Primaries::handle_timeout`].
    deadline: Option<Instant>,
    /// One `()` per durable write done.
    written_rx: mpsc::UnboundedReceiver<()>,
    written: u64,
}

impl Reports {
    /// The next report; a [`LaneReport::Tick`] when the primaries' time
    /// came or a degraded state was written. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Option<LaneReport> {
        let deadline = self.deadline.map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            report = self.rx.recv() => report,
            Some(()) = self.written_rx.recv() => {
                self.written += 1;
                Some(LaneReport::Tick)
            }
            _ = async { if let Some(d) = deadline { tokio::time::sleep_until(d).await } }, if deadline.is_some() => {
                self.deadline = None;
                Some(LaneReport::Tick)
            }
        }
    }
}

/// A change of a primary's durable state.
struct DurableWrite {
    zone: pg2dns_decoder::ZoneName,
    primary: String,
    /// Degraded (having acknowledged up to this LSN, for this reason), or
    /// counting again.
    degraded: Option<(Option<Lsn>, String)>,
}

/// Writes `writes` to `pg2dns.primary_status` in order, each until it is
/// written (a missing schema version 13 counts as written, with a
/// warning), and says so on `done`.
async fn write_durable(
    config: Config,
    mut writes: mpsc::UnboundedReceiver<DurableWrite>,
    done: mpsc::UnboundedSender<()>,
) {
    let slot = config.database.slot.clone();
    let mut client: Option<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> = None;
    let mut warned_missing = false;
    while let Some(w) = writes.recv().await {
        let mut warned = false;
        loop {
            if client.is_none() {
                match crate::pgconn::connect(&config.database, "pg2dns primaries").await {
                    Ok(c) => client = Some(c),
                    Err(e) => {
                        if !warned {
                            warn!(zone = %w.zone, primary = %w.primary, error = %crate::error::chain(&e), "cannot record the primary's degraded state yet: the zone's acknowledgements past it wait; trying again");
                            warned = true;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let Some((c, _)) = &client else { continue };
            let written = match &w.degraded {
                Some((lsn, why)) => {
                    primary_status::mark_degraded(c, &slot, &w.zone, &w.primary, *lsn, why).await
                }
                None => primary_status::clear_degraded(c, &slot, &w.zone, &w.primary).await,
            };
            match written {
                Ok(()) => break,
                Err(e) if primary_status::is_missing(&e) => {
                    if !warned_missing {
                        warn!("pg2dns.primary_status is missing: a degraded primary is not remembered across restarts (run `pg2dns setup` for schema version 13)");
                        warned_missing = true;
                    }
                    break;
                }
                Err(e) => {
                    if !warned {
                        warn!(zone = %w.zone, primary = %w.primary, error = %e, "cannot record the primary's degraded state yet: the zone's acknowledgements past it wait; trying again");
                        warned = true;
                    }
                    if let Some((_, task)) = client.take() {
                        task.abort();
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        // Written even when the session ended meanwhile (the next one
        // reads it): go on until every write handed over is done.
        let _ = done.send(());
    }
}

/// The index of `key`'s server task among those of the session, added
/// (with no zone yet) when it is new.
fn server_of(
    keys: &mut Vec<ServerKey>,
    zones_of: &mut Vec<Vec<(ZoneId, Arc<crate::config::ZoneConfig>)>>,
    key: ServerKey,
) -> usize {
    match keys.iter().position(|k| *k == key) {
        Some(i) => i,
        None => {
            keys.push(key);
            zones_of.push(Vec::new());
            keys.len() - 1
        }
    }
}

impl Lanes {
    /// The zones' streams, one task per server: the tasks `kept` from the
    /// last session with the same address and limits go on, with their
    /// connections (and their zones' dispatch ids); the others start.
    pub(crate) async fn start(config: &Config, live: Arc<status::Live>, kept: &mut Kept) -> Lanes {
        let (report_tx, reports) = mpsc::unbounded_channel();
        let mut lanes = Vec::new();
        // One task per server: zones naming the same primary share it.
        let mut keys: Vec<ServerKey> = Vec::new();
        let mut zones_of: Vec<Vec<(ZoneId, Arc<crate::config::ZoneConfig>)>> = Vec::new();
        let ids = config.zones();
        let mut specs = Vec::with_capacity(config.zones.len());
        let mut several = false;
        let m = metrics::get();
        for ((id, _), z) in ids.iter().zip(config.zones.iter()) {
            let mut servers = Vec::with_capacity(1 + z.more_primaries.len());
            let mut series = Vec::new();
            // A zone of one primary (most): no copy of its primary.
            let primaries = if z.more_primaries.is_empty() {
                Vec::new()
            } else {
                z.primaries()
            };
            if primaries.is_empty() {
                let key = ServerKey {
                    primary_addr: z.primary_addr.clone(),
                    primary: z.primary,
                    limits: config.server_limits(&z.primary_addr),
                };
                let server = server_of(&mut keys, &mut zones_of, key);
                zones_of[server].push((id, z.clone()));
                servers.push(server);
            }
            for p in &primaries {
                let key = ServerKey {
                    primary_addr: p.primary_addr.clone(),
                    primary: p.primary,
                    limits: config.server_limits(&p.primary_addr),
                };
                let server = server_of(&mut keys, &mut zones_of, key);
                if kept.is_detached(&z.name, &p.name) {
                    warn!(zone = %z.name, primary = %p.name, "this session streams without the primary: it could not be brought in line; it is once it answers again (the session then ends and the next one brings it in line)");
                    servers.push(DETACHED);
                    series.push(PrimarySeries::of(m, &z.name, &p.name, p.primary));
                    continue;
                }
                series.push(PrimarySeries::of(m, &z.name, &p.name, p.primary));
                zones_of[server].push((id, Arc::new(z.for_primary(p))));
                servers.push(server);
            }
            several |= primaries.len() > 1;
            if primaries.len() > 1 {
                specs.push((
                    id,
                    ZoneSpec {
                        name: z.name.clone(),
                        primaries: primaries.into_iter().map(|p| p.name).collect(),
                        policy: z.policy,
                    },
                ));
            }
            // Everything it was handed in earlier sessions was acknowledged.
            let dispatched = kept.dispatched(&z.name);
            if dispatched > 0 {
                live.dispatched(id.index(), dispatched);
                live.acked(id.index(), dispatched);
            }
            // Its primaries' parts of the acked gauges, as `live`'s.
            for s in &series {
                s.acked.set(i64::try_from(dispatched).unwrap_or(i64::MAX));
            }
            lanes.push(ZoneLane {
                servers,
                series,
                operations: m
                    .operations
                    .get_or_create(&m.series(&z.name.to_string(), &z.primary.to_string()))
                    .clone(),
                name: z.name.clone(),
                dispatched,
                acked: dispatched,
                outbox: Vec::new(),
            });
        }
        let mut servers = Vec::new();
        let mut streams = Vec::new();
        let mut reused = 0usize;
        for (index, (key, zones)) in keys.into_iter().zip(zones_of).enumerate() {
            let mut stream = match kept.take_server(&key) {
                Some(stream) => {
                    reused += 1;
                    stream
                }
                None => ServerStream::start(key.clone(), &config.limits, report_tx.clone()),
            };
            let session = |zones| ServerInput::Session {
                reports: report_tx.clone(),
                server: index,
                zones,
                limits: config.limits.clone(),
            };
            if let Err(mpsc::error::SendError(ServerInput::Session { zones, .. })) =
                stream.tx.send(session(zones)).await
            {
                // It stopped in between: a new one.
                stream = ServerStream::start(key, &config.limits, report_tx.clone());
                let _ = stream.tx.send(session(zones)).await;
            }
            servers.push(stream.tx.clone());
            streams.push(stream);
        }
        // The status asks each server's SOAs through its task, on its
        // connections.
        live.set_soa_servers(streams.iter().map(|s| (s.key.primary, s.soa.clone())));
        if reused > 0 || kept.servers() > 0 {
            info!(
                kept = reused,
                started = streams.len() - reused,
                dropped = kept.servers(),
                "server connections: unchanged servers keep theirs"
            );
        }
        let detached: Vec<(usize, usize)> = lanes
            .iter()
            .enumerate()
            .flat_map(|(z, l)| {
                l.servers
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| **s == DETACHED)
                    .map(move |(p, _)| (z, p))
            })
            .collect();
        // Tasks of servers gone or changed stop here.
        let failed_catch_ups = kept.failed_catch_ups();
        *kept = Kept::default();
        kept.set_failed_catch_ups(failed_catch_ups);
        // A halt waits this long for the zone's other primaries to answer
        // the same message (they answer within their timeout, or retry).
        let settle = config.limits.dns_timeout + Duration::from_secs(1);
        let mut primaries = Primaries::new(specs, settle);
        for (i, lane) in lanes.iter().enumerate() {
            if lane.dispatched > 0 {
                if let Ok(z) = u32::try_from(i) {
                    primaries.handle_restored(ZoneId(z), lane.dispatched);
                }
                if lane.servers.len() > 1 {
                    for p in 0..lane.servers.len() {
                        live.primary_acked(i, p, lane.dispatched, None);
                    }
                }
            }
        }
        let mut detached_probes = Vec::new();
        for (z, p) in detached {
            if let Ok(z) = u32::try_from(z) {
                detached_probes.push((ZoneId(z), p));
                primaries.handle_detached(ZoneId(z), p);
                if let Some(s) = lanes[z as usize].series.get(p) {
                    s.degraded.set(1);
                }
            }
        }
        // The primaries' degraded state is written by a task of its own,
        // in order; it ends when the session drops its sender, after the
        // writes handed to it.
        let (written_tx, written_rx) = mpsc::unbounded_channel();
        let durable = several.then(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_durable(config.clone(), rx, written_tx));
            tx
        });
        let primaries = primaries.with_queue_bound(config.limits.degraded_queue);
        let mut lanes = Lanes {
            reports: Reports {
                rx: reports,
                deadline: primaries.poll_timeout(),
                written_rx,
                written: 0,
            },
            primaries,
            halts: pg2dns_decoder::HashMap::default(),
            events: std::collections::VecDeque::new(),
            durable,
            durable_sent: 0,
            dropped: std::collections::HashSet::new(),
            removals: Vec::new(),
            degraded_queue: config.limits.degraded_queue,
            max_unacked_zones: config.limits.max_unacked_zones,
            lanes,
            servers,
            streams,
            touched: Vec::new(),
            marks: pg2dns_decoder::HashMap::default(),
            unacked: 0,
            _reporting: report_tx,
            heard: Vec::new(),
            live,
            probes: Vec::new(),
            dns_timeout: config.limits.dns_timeout,
            failed_catch_ups,
        };
        // Those left out are probed until they answer, later for each
        // session that failed to bring them in line.
        let first = PROBE_EVERY
            .saturating_mul(1 << failed_catch_ups.min(6))
            .min(PROBE_BACKOFF_MAX);
        for (z, p) in detached_probes {
            lanes.probe(z, p, first);
        }
        lanes
    }

    /// Starts asking `lane` of `zone` for its SOA until it answers.
    fn probe(&mut self, zone: ZoneId, lane: usize, first: Duration) {
        let Some((l, s)) = self
            .lanes
            .get(zone.index())
            .and_then(|l| Some((l, l.series.get(lane)?)))
        else {
            return;
        };
        self.probes.push(Probe(tokio::spawn(probe(
            l.name.clone(),
            zone,
            lane,
            s.address,
            self.dns_timeout,
            first,
            self._reporting.clone(),
        ))));
    }

    /// Batch `seq` was flushed: what the stream's core learns of it, with
    /// the marks of the zones dispatched to since the previous batch (their
    /// dispatch counts now), not of every zone.
    pub(crate) fn mark_batch(&mut self, seq: BatchSeq, end: Option<Lsn>) -> SentBatch {
        let marks = self.marks.drain().collect();
        SentBatch { seq, end, marks }
    }

    /// Each zone's acknowledged dispatch count now (what an earlier
    /// session's streams already acknowledged, at the start).
    pub(crate) fn acked_counts(&self) -> impl Iterator<Item = (ZoneId, u64)> + '_ {
        self.lanes
            .iter()
            .enumerate()
            .map(|(i, l)| (ZoneId(i as u32), l.acked))
    }

    /// What the zones said since the last call, for the stream's core.
    pub(crate) fn take_heard(&mut self) -> Vec<Heard> {
        std::mem::take(&mut self.heard)
    }

    /// At a clean end of the session: the server tasks, for the next
    /// session to reuse, when every dispatch was acknowledged (none
    /// otherwise: what is unacknowledged is replayed by new tasks, and the
    /// old ones stop, so that no old copy follows a newer change).
    pub(crate) fn keep(&mut self) -> Kept {
        let mut kept = if !self.all_acked() || !self.every_primary_caught_up() {
            Kept::default()
        } else {
            Kept::new(
                std::mem::take(&mut self.streams),
                self.lanes.iter().map(|l| (l.name.clone(), l.dispatched)),
            )
        };
        kept.note_behind(self.behind());
        kept.set_failed_catch_ups(self.failed_catch_ups);
        kept
    }

    /// The primaries (zone, name) degraded now: if the session ends, their
    /// queue goes with it, and the next session must bring them in line.
    pub(crate) fn behind(&self) -> Vec<(pg2dns_decoder::ZoneName, String)> {
        let mut behind = Vec::new();
        for (i, l) in self.lanes.iter().enumerate() {
            let Ok(zone) = u32::try_from(i) else { continue };
            for (p, s) in l.series.iter().enumerate() {
                if self.primaries.is_degraded(ZoneId(zone), p) {
                    behind.push((l.name.clone(), s.name.clone()));
                }
            }
        }
        behind
    }

    /// Before a session streams from `progress`: brings each primary the
    /// last session left behind in line with the row state (which is DNS
    /// as of `progress`), with a SOA-guarded reconcile of that primary
    /// alone. Those that cannot be (still down, the repair refused) are
    /// streamed without in this session, and tried again at the next.
    /// Besides those the last session of this process left, the primaries
    /// `pg2dns.primary_status` records degraded (a restart, kill -9
    /// included) are brought in line too, and the record is cleared only
    /// once they are.
    pub(crate) async fn catch_up(
        config: &Config,
        store: &mut crate::store::Store,
        progress: Lsn,
        kept: &mut Kept,
    ) {
        let mut behind = kept.take_behind();
        let several = config.zones.iter().any(|z| !z.more_primaries.is_empty());
        if several {
            match store.degraded_primaries().await {
                Ok(recorded) => {
                    for r in recorded {
                        if !behind.contains(&r) {
                            behind.push(r);
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %crate::error::chain(&e), "cannot read which primaries were left degraded: only those this process knows of are brought in line");
                }
            }
        }
        if behind.is_empty() {
            kept.set_failed_catch_ups(0);
            return;
        }
        let ids = config.zones();
        let mut detached = Vec::new();
        for (zone, name) in behind {
            let found = ids.id_of(&zone).and_then(|id| {
                let p = config
                    .zones
                    .get(id.index())?
                    .primaries()
                    .into_iter()
                    .find(|p| p.name == name)?;
                Some((id, p))
            });
            let Some((id, primary)) = found else {
                continue;
            };
            match crate::reconcile::catch_up(config, store, id, &primary, progress).await {
                Ok(outcome) if outcome.error.is_none() && outcome.in_sync_after != Some(false) => {
                    info!(%zone, primary = %name, lsn = %progress, repaired = outcome.messages_applied, "a primary left behind was brought in line with the row state; it rejoins the stream");
                    if let Err(e) = store.primary_caught_up(&zone, &name, Ok(())).await {
                        warn!(%zone, primary = %name, error = %crate::error::chain(&e), "cannot record that the primary was brought in line: the next start brings it in line again");
                    }
                }
                Ok(outcome) => {
                    let why = outcome.error.as_ref().map_or_else(
                        || "the repair did not leave it in sync (or the safety threshold refused it)".to_owned(),
                        |e| crate::error::chain(e),
                    );
                    warn!(%zone, primary = %name, reason = %why, "a primary left behind cannot be brought in line yet: this session goes on without it (or run `pg2dns reconcile --primary NAME --apply`)");
                    Self::still_behind(store, &zone, &name, &why).await;
                    detached.push((zone, name));
                }
                Err(e) => {
                    let why = crate::error::chain(&e);
                    warn!(%zone, primary = %name, error = %why, "a primary left behind cannot be brought in line yet: this session goes on without it");
                    Self::still_behind(store, &zone, &name, &why).await;
                    detached.push((zone, name));
                }
            }
        }
        let failed = if detached.is_empty() {
            0
        } else {
            kept.failed_catch_ups().saturating_add(1)
        };
        kept.set_failed_catch_ups(failed);
        kept.set_detached(detached);
    }

    /// Records that `primary` of `zone` stays degraded, with why it could
    /// not be brought in line.
    async fn still_behind(
        store: &crate::store::Store,
        zone: &pg2dns_decoder::ZoneName,
        primary: &str,
        why: &str,
    ) {
        let why = format!("cannot be brought in line: {why}");
        if let Err(e) = store.primary_caught_up(zone, primary, Err(&why)).await {
            warn!(%zone, %primary, error = %crate::error::chain(&e), "cannot record that the primary stays degraded");
        }
    }

    /// Whether every primary of every zone (degraded ones included)
    /// acknowledged everything dispatched to it.
    fn every_primary_caught_up(&self) -> bool {
        self.lanes.iter().enumerate().all(|(i, l)| {
            l.servers.len() == 1
                || u32::try_from(i).is_ok_and(|i| {
                    (0..l.servers.len()).all(|p| self.primaries.acked(ZoneId(i), p) >= l.dispatched)
                })
        })
    }

    /// Whether every zone acknowledged everything dispatched to it.
    pub(crate) fn all_acked(&self) -> bool {
        self.unacked == 0
    }

    /// Whether as many zones as `[limits] max_unacked_zones` have
    /// dispatches not yet acknowledged (the pipeline reads no more frames
    /// until acknowledgements bring them under).
    pub(crate) fn saturated(&self) -> bool {
        self.unacked >= self.max_unacked_zones
    }

    pub(crate) fn on_report(&mut self, report: Option<LaneReport>) -> Result<(), RunError> {
        let result = self.report(report);
        self.reports.deadline = self.primaries.poll_timeout();
        result
    }

    fn report(&mut self, report: Option<LaneReport>) -> Result<(), RunError> {
        let now = Instant::now();
        // Reports that keep coming must not starve the primaries' time or
        // the writes done (`Reports::recv` prefers reports).
        while let Ok(()) = self.reports.written_rx.try_recv() {
            self.reports.written += 1;
        }
        if self.reports.deadline.is_some_and(|d| d <= now) {
            self.primaries.handle_timeout(now);
        }
        match report {
            None => return Err(RunError::Internal("every zone stream ended".into())),
            Some(LaneReport::Tick) => self.primaries.handle_timeout(now),
            Some(LaneReport::Answering { zone, lane }) => {
                self.primaries.handle_answering(zone, lane)
            }
            Some(LaneReport::Zone { server, report }) => {
                let zone = match &report {
                    ZoneReport::Acked { zone, .. }
                    | ZoneReport::Refused { zone, .. }
                    | ZoneReport::Halted { zone, .. } => *zone,
                };
                if self.dropped.contains(&(zone, server)) {
                    // A late answer of a lane dropped this session.
                    return self.primary_events();
                }
                let Some(lane) = self.lanes.get(zone.index()) else {
                    return Err(RunError::Internal(format!(
                        "a report of an unknown zone {zone:?}"
                    )));
                };
                let Some(p) = lane.servers.iter().position(|s| *s == server) else {
                    return Err(RunError::Internal(format!(
                        "a report of zone {} from a server not its primary",
                        lane.name
                    )));
                };
                match report {
                    ZoneReport::Acked { zone, upto } => {
                        if let Some(s) = lane.series.get(p) {
                            s.acked.set(i64::try_from(upto).unwrap_or(i64::MAX));
                            s.in_flight.set(
                                i64::try_from(lane.dispatched.saturating_sub(upto)).unwrap_or(0),
                            );
                        }
                        self.primaries.handle_acked(zone, p, upto, now);
                        if lane.servers.len() > 1 {
                            self.live.primary_acked(
                                zone.index(),
                                p,
                                upto,
                                self.primaries.acked_lsn(zone, p),
                            );
                        }
                    }
                    ZoneReport::Refused {
                        zone,
                        lsn,
                        group,
                        rcode,
                    } => {
                        self.primaries
                            .handle_refused(zone, p, Refusal { lsn, group, rcode }, now);
                    }
                    ZoneReport::Halted { zone, error } => {
                        if lane.servers.len() == 1 {
                            return Err(RunError::Sink(Box::new(error)));
                        }
                        let lsn = error.lsn();
                        let answer = crate::error::chain(&error);
                        self.halts.insert((zone, p), error);
                        self.primaries.handle_halted(zone, p, lsn, answer, now);
                    }
                }
            }
        }
        self.primary_events()
    }

    /// Whether a degraded state handed to the writer is not written yet.
    fn unwritten(&self) -> bool {
        self.reports.written < self.durable_sent
    }

    /// Hands `primary` of `zone` (degraded or not) to the durable writer.
    fn write_durable(&mut self, zone: ZoneId, lane: usize, degraded: Option<String>) {
        let Some(tx) = &self.durable else { return };
        let Some((l, s)) = self
            .lanes
            .get(zone.index())
            .and_then(|l| Some((l, l.series.get(lane)?)))
        else {
            return;
        };
        let write = DurableWrite {
            zone: l.name.clone(),
            primary: s.name.clone(),
            degraded: degraded.map(|why| (self.primaries.acked_lsn(zone, lane), why)),
        };
        if tx.send(write).is_ok() {
            self.durable_sent += 1;
        }
    }

    /// Hands the stream's core what the zones' primaries agree on, in
    /// order; an acknowledgement or refusal waits while a degraded state
    /// is being written (see the module documentation).
    fn primary_events(&mut self) -> Result<(), RunError> {
        while let Some(event) = self.primaries.poll_event() {
            self.events.push_back(event);
        }
        while let Some(event) = self.events.pop_front() {
            if self.unwritten()
                && matches!(
                    event,
                    PrimaryEvent::Acked { .. } | PrimaryEvent::Refused { .. }
                )
            {
                self.events.push_front(event);
                return Ok(());
            }
            match event {
                PrimaryEvent::Acked { zone, upto } => {
                    // A zone outside the session's (a driver bug) holds nothing.
                    debug_assert!(zone.index() < self.lanes.len(), "unknown zone {zone:?}");
                    let Some(lane) = self.lanes.get_mut(zone.index()) else {
                        continue;
                    };
                    let before = lane.acked;
                    lane.acked = lane.acked.max(upto);
                    let acked = lane.acked;
                    if before < lane.dispatched && acked >= lane.dispatched {
                        self.unacked -= 1;
                    }
                    self.live.acked(zone.index(), acked);
                    self.heard.push(Heard::Acked { zone, upto: acked });
                }
                PrimaryEvent::Refused { zone, refusal } => {
                    self.heard.push(Heard::Refused(ServerRefusal {
                        zone,
                        lsn: refusal.lsn,
                        group: refusal.group,
                        rcode: refusal.rcode,
                    }));
                }
                PrimaryEvent::Degraded { zone, lane } => {
                    if let Some((l, s)) = self
                        .lanes
                        .get(zone.index())
                        .and_then(|l| Some((l, l.series.get(lane)?)))
                    {
                        s.degraded.set(1);
                        warn!(zone = %l.name, primary = %s.name, acked = self.primaries.acked(zone, lane), dispatched = l.dispatched, "a primary made no progress for its degrade_after: the zone goes on without it; it catches up when it answers again");
                    }
                    self.write_durable(
                        zone,
                        lane,
                        Some(
                            "no progress for its degrade_after: the zone went on without it".into(),
                        ),
                    );
                }
                PrimaryEvent::Dropped { zone, lane } => {
                    let bound = self.degraded_queue;
                    if let Some(l) = self.lanes.get_mut(zone.index()) {
                        if let Some(server) = l.servers.get_mut(lane) {
                            if *server != DETACHED {
                                self.dropped.insert((zone, *server));
                                self.removals.push((*server, zone));
                                *server = DETACHED;
                            }
                        }
                        if let Some(s) = l.series.get(lane) {
                            s.in_flight.set(0);
                            warn!(zone = %l.name, primary = %s.name, behind = l.dispatched.saturating_sub(self.primaries.acked(zone, lane)), degraded_queue = bound, "a degraded primary fell more than [limits] degraded_queue transactions behind: its queue is dropped; once it answers again, the session ends and the next one brings it in line from the row state (a catch-up reconcile)");
                        }
                    }
                    self.probe(zone, lane, PROBE_EVERY);
                    self.write_durable(
                        zone,
                        lane,
                        Some(format!("its queue passed [limits] degraded_queue = {bound} transactions while it was degraded and was dropped: it needs a catch-up")),
                    );
                }
                PrimaryEvent::Rejoined { zone, lane } => {
                    if let Some((l, s)) = self
                        .lanes
                        .get(zone.index())
                        .and_then(|l| Some((l, l.series.get(lane)?)))
                    {
                        s.degraded.set(0);
                        info!(zone = %l.name, primary = %s.name, "a degraded primary caught up: the zone waits for it again");
                    }
                    self.write_durable(zone, lane, None);
                }
                PrimaryEvent::CatchUp { zone, lane } => {
                    if let Some((l, s)) = self
                        .lanes
                        .get(zone.index())
                        .and_then(|l| Some((l, l.series.get(lane)?)))
                    {
                        info!(zone = %l.name, primary = %s.name, "a primary left behind answers again: the session ends at the next transaction boundary, once everything received is checkpointed, and the next one brings it in line with the row state before streaming to it");
                    }
                    self.heard.push(Heard::CatchUp { zone });
                }
                PrimaryEvent::Divergent(d) => return Err(RunError::Divergent(d)),
                PrimaryEvent::Halted { zone, lane } => {
                    return match self.halts.remove(&(zone, lane)) {
                        Some(h) => Err(RunError::Sink(Box::new(h))),
                        None => Err(RunError::Internal(format!(
                            "a halt of zone #{} that was not kept",
                            zone.0
                        ))),
                    };
                }
            }
        }
        Ok(())
    }

    pub(crate) fn dispatch(&mut self, lsn: Lsn, ops: Vec<ZoneOps>) {
        for z in ops {
            if z.groups.is_empty() {
                continue;
            }
            let lane = &mut self.lanes[z.zone.index()];
            let acked = lane.acked;
            let ops: usize = z.groups.iter().map(|g| g.ops.len()).sum();
            if lane.series.is_empty() {
                lane.operations.inc_by(ops as u64);
            }
            for (s, server) in lane.series.iter().zip(&lane.servers) {
                if *server != DETACHED {
                    s.operations.inc_by(ops as u64);
                }
            }
            if acked >= lane.dispatched {
                self.unacked += 1;
            }
            lane.dispatched += 1;
            self.primaries
                .handle_dispatched(z.zone, lane.dispatched, lsn, Instant::now());
            for (s, server) in lane.series.iter().zip(&lane.servers) {
                if *server != DETACHED {
                    s.in_flight.inc();
                }
            }
            self.live.dispatched(z.zone.index(), lane.dispatched);
            self.marks.insert(z.zone, lane.dispatched);
            if lane.outbox.is_empty() {
                self.touched.push(z.zone);
            }
            lane.outbox.push(Dispatch {
                id: lane.dispatched,
                lsn,
                groups: z.groups,
            });
        }
    }

    /// Hands each server the dispatches of this flush at once, so that a
    /// zone working through a backlog can pack them into full messages.
    pub(crate) async fn send_outbox(&mut self) -> Result<(), RunError> {
        // Lanes dropped by these dispatches: their servers forget the zone
        // (and its queue) before anything more is sent.
        self.primary_events()?;
        self.reports.deadline = self.primaries.poll_timeout();
        for (server, zone) in std::mem::take(&mut self.removals) {
            self.servers[server]
                .send(ServerInput::RemoveZone(zone))
                .await
                .map_err(|_| RunError::Internal(format!("the stream of server #{server} ended")))?;
        }
        let mut per_server: Vec<Vec<(ZoneId, Vec<Dispatch>)>> =
            (0..self.servers.len()).map(|_| Vec::new()).collect();
        for zone in std::mem::take(&mut self.touched) {
            let lane = &mut self.lanes[zone.index()];
            let outbox = std::mem::take(&mut lane.outbox);
            let mut to = lane.servers.iter().filter(|s| **s != DETACHED).peekable();
            while let Some(server) = to.next() {
                if to.peek().is_some() {
                    per_server[*server].push((zone, outbox.clone()));
                } else {
                    per_server[*server].push((zone, outbox));
                    break;
                }
            }
        }
        for (server, batch) in per_server.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            // Keep reading reports while a server's queue is full, so that a
            // halt elsewhere is seen.
            let tx = self.servers[server].clone();
            let mut send = std::pin::pin!(tx.send(ServerInput::Dispatch(batch)));
            loop {
                tokio::select! {
                    r = &mut send => {
                        r.map_err(|_| RunError::Internal(format!("the stream of server #{server} ended")))?;
                        break;
                    }
                    report = self.reports.recv() => self.on_report(report)?,
                }
            }
        }
        Ok(())
    }
}
