//! The zones' streams as the pipeline sees them: one task per server (see
//! [`crate::dns::server::ServerTask`]), each zone's dispatch count, and
//! what the zones acknowledged or refused, fed to the checkpoint ledger.

use std::sync::Arc;

use pg2dns_decoder::checkpoint::{BatchSeq, Ledger, SentBatch, ServerRefusal};
use pg2dns_decoder::plan::ZoneOps;
use pg2dns_decoder::{Lsn, ZoneId};
use tokio::sync::mpsc;
use tracing::info;

use crate::config::Config;
use crate::dns::kept::{Kept, ServerKey, ServerStream};
use crate::dns::server::ServerInput;
use crate::dns::sink::{Dispatch, ZoneReport};
use crate::error::RunError;
use crate::{metrics, status};

/// Per-zone dispatch bookkeeping.
pub(crate) struct ZoneLane {
    /// The zone's `pg2dns_update_operations_total` series.
    operations: prometheus_client::metrics::counter::Counter,
    /// The zone (its dispatch count is kept across sessions by name).
    name: pg2dns_decoder::ZoneName,
    /// Its server's task (an index into `Lanes::servers`).
    server: usize,
    dispatched: u64,
    /// Dispatches of the current flush, handed over at its end.
    outbox: Vec<Dispatch>,
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
    pub(crate) reports: mpsc::UnboundedReceiver<ZoneReport>,
    /// Keeps `reports` open with no zone at all (every zone in an empty
    /// `pg2dns.zones`).
    _reporting: mpsc::UnboundedSender<ZoneReport>,
    /// What was dispatched and acknowledged or refused, and which
    /// checkpoint that allows.
    pub(crate) ledger: Ledger,
    /// What the status publisher reads (numbers only, no I/O).
    pub(crate) live: Arc<status::Live>,
}

impl Lanes {
    /// The zones' streams, one task per server: the tasks `kept` from the
    /// last session with the same address and limits go on, with their
    /// connections (and their zones' dispatch ids); the others start.
    pub(crate) async fn start(
        config: &Config,
        live: Arc<status::Live>,
        progress: Lsn,
        kept: &mut Kept,
    ) -> Lanes {
        let (report_tx, reports) = mpsc::unbounded_channel();
        let mut lanes = Vec::new();
        let mut ledger = Ledger::new(config.zones.len(), progress);
        // One task per server: zones naming the same primary share it.
        let mut keys: Vec<ServerKey> = Vec::new();
        let mut zones_of: Vec<Vec<(ZoneId, Arc<crate::config::ZoneConfig>)>> = Vec::new();
        let ids = config.zones();
        for ((id, _), z) in ids.iter().zip(config.zones.iter()) {
            let key = ServerKey {
                primary_addr: z.primary_addr.clone(),
                primary: z.primary,
                limits: config.server_limits(&z.primary_addr),
            };
            let server = match keys.iter().position(|k| *k == key) {
                Some(i) => i,
                None => {
                    keys.push(key);
                    zones_of.push(Vec::new());
                    keys.len() - 1
                }
            };
            zones_of[server].push((id, z.clone()));
            // Everything it was handed in earlier sessions was acknowledged.
            let dispatched = kept.dispatched(&z.name);
            if dispatched > 0 {
                ledger.handle_acked(id, dispatched);
                live.dispatched(id.index(), dispatched);
                live.acked(id.index(), dispatched);
            }
            let m = metrics::get();
            lanes.push(ZoneLane {
                operations: m
                    .operations
                    .get_or_create(&m.series(&z.name.to_string(), &z.primary.to_string()))
                    .clone(),
                name: z.name.clone(),
                server,
                dispatched,
                outbox: Vec::new(),
            });
        }
        let mut servers = Vec::new();
        let mut streams = Vec::new();
        let mut reused = 0usize;
        for (key, zones) in keys.into_iter().zip(zones_of) {
            let mut stream = match kept.take_server(&key) {
                Some(stream) => {
                    reused += 1;
                    stream
                }
                None => ServerStream::start(key.clone(), &config.limits, report_tx.clone()),
            };
            let session = |zones| ServerInput::Session {
                reports: report_tx.clone(),
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
        if reused > 0 || kept.servers() > 0 {
            info!(
                kept = reused,
                started = streams.len() - reused,
                dropped = kept.servers(),
                "server connections: unchanged servers keep theirs"
            );
        }
        // Tasks of servers gone or changed stop here.
        *kept = Kept::default();
        Lanes {
            lanes,
            servers,
            streams,
            touched: Vec::new(),
            marks: pg2dns_decoder::HashMap::default(),
            unacked: 0,
            reports,
            _reporting: report_tx,
            ledger,
            live,
        }
    }

    /// Batch `seq` was flushed: the ledger learns it, with the marks of
    /// the zones dispatched to since the previous batch (their dispatch
    /// counts now), not of every zone.
    pub(crate) fn mark_batch(&mut self, seq: BatchSeq, end: Option<Lsn>) {
        let marks = self.marks.drain().collect();
        self.ledger.handle_dispatched(SentBatch { seq, end, marks });
    }

    /// At a clean end of the session: the server tasks, for the next
    /// session to reuse, when every dispatch was acknowledged (none
    /// otherwise: what is unacknowledged is replayed by new tasks, and the
    /// old ones stop, so that no old copy follows a newer change).
    pub(crate) fn keep(&mut self) -> Kept {
        if !self.all_acked() {
            return Kept::default();
        }
        Kept::new(
            std::mem::take(&mut self.streams),
            self.lanes.iter().map(|l| (l.name.clone(), l.dispatched)),
        )
    }

    /// Whether every zone acknowledged everything dispatched to it.
    pub(crate) fn all_acked(&self) -> bool {
        self.unacked == 0
    }

    pub(crate) fn on_report(&mut self, report: Option<ZoneReport>) -> Result<(), RunError> {
        match report {
            None => Err(RunError::Internal("every zone stream ended".into())),
            Some(ZoneReport::Acked { zone, upto }) => {
                let before = self.ledger.acked(zone);
                let acked = self.ledger.handle_acked(zone, upto);
                if let Some(lane) = self.lanes.get(zone.index()) {
                    if before < lane.dispatched && acked >= lane.dispatched {
                        self.unacked -= 1;
                    }
                }
                self.live.acked(zone.index(), acked);
                Ok(())
            }
            Some(ZoneReport::Refused {
                zone,
                lsn,
                group,
                rcode,
            }) => {
                self.ledger.handle_refused(ServerRefusal {
                    zone,
                    lsn,
                    group,
                    rcode,
                });
                Ok(())
            }
            Some(ZoneReport::Halted { error, .. }) => Err(RunError::Sink(Box::new(error))),
        }
    }

    pub(crate) fn dispatch(&mut self, lsn: Lsn, ops: Vec<ZoneOps>) {
        for z in ops {
            if z.groups.is_empty() {
                continue;
            }
            let acked = self.ledger.acked(z.zone);
            let lane = &mut self.lanes[z.zone.index()];
            let ops: usize = z.groups.iter().map(|g| g.ops.len()).sum();
            lane.operations.inc_by(ops as u64);
            if acked >= lane.dispatched {
                self.unacked += 1;
            }
            lane.dispatched += 1;
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
        let mut per_server: Vec<Vec<(ZoneId, Vec<Dispatch>)>> =
            (0..self.servers.len()).map(|_| Vec::new()).collect();
        for zone in std::mem::take(&mut self.touched) {
            let lane = &mut self.lanes[zone.index()];
            per_server[lane.server].push((zone, std::mem::take(&mut lane.outbox)));
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
