//! The pipeline: committed transactions in, acknowledged UPDATEs out, and the
//! confirmed LSN moved only behind them.
//!
//! ```text
//!  source ─▶ Assembler ─▶ batch ─▶ flush: read row state (one query), compute
//!                                   the net operations of each transaction,
//!                                   dispatch them to the zones' streams, write
//!                                   the new row state (uncommitted)
//!                                          │
//!  at a transaction boundary, once every dispatch was acknowledged:
//!     COMMIT row state + progress ─▶ confirm the last transaction's end_lsn
//! ```
//!
//! The confirmed LSN is the commit `end_lsn` of the newest transaction such
//! that it and every earlier one were fully acknowledged and their state
//! committed: confirming happens only after the checkpoint commit, which
//! happens only after every dispatch was acknowledged.
//!
//! Batching: a live transaction (sent by the server right after it
//! committed) is flushed as soon as nothing else is ready, with no timer.
//! A backlog (the server's send time well after the commit time) is batched
//! up to [`MAX_BATCH_ROWS`] rows and flushed on a 2 ms pause; the zones then
//! coalesce the dispatches into full messages.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use pg2dns_decoder::pgoutput::{self, Begin, Commit, LogicalMessage, Message};
use pg2dns_decoder::records::{self, RecordError};
use pg2dns_decoder::txn::{Assembler, ChangeKind, Event, Row, RowChange};
use pg2dns_decoder::update::UpdateOp;
use pg2dns_decoder::{Lsn, Record, ZoneName};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::checkpoint::{RecordKey, Rejection, RrsetKey, Store, StoredRecord};
use crate::config::Config;
use crate::error::RunError;
use crate::failpoint;
use crate::sink::{Dispatch, ZoneReport, ZoneSink};
use crate::source::{PgSource, ReplicationSource, SourceEvent};

/// The canonical records table, the one source of this version.
pub const RR_SOURCE: &str = "pg2dns.rr";

/// Rows per flush: bounds memory and the size of one state round trip.
pub const MAX_BATCH_ROWS: usize = 2_000;
/// A commit sent this long after it happened means a backlog.
const BACKLOG_MICROS: i64 = 20_000;
/// While working through a backlog, how long a pause in the stream flushes
/// the batch (never used for a live stream, where a commit goes out at once).
const BACKLOG_PAUSE: Duration = Duration::from_millis(2);
/// Longest time between checkpoints while transactions keep arriving.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// How long a checkpoint waits for the last acknowledgements before the
/// stream goes on without it.
const BARRIER_WAIT: Duration = Duration::from_millis(100);

/// A change or a commit, in stream order.
enum Item {
    Change(RowChange),
    Commit { final_lsn: Lsn },
}

/// Per-zone dispatch bookkeeping.
struct ZoneLane {
    tx: mpsc::Sender<Vec<Dispatch>>,
    dispatched: u64,
    acked: u64,
}

/// Runs one session: connections, streaming, until shutdown or an error.
pub struct Pipeline<'c> {
    config: &'c Config,
    zones: Vec<ZoneName>,
    /// The zone names as stored in the row state, by zone index.
    zone_texts: Vec<String>,
    store: Store,
    assembler: Assembler,
    /// Durable progress: transactions with a commit LSN before it are done.
    progress: Lsn,
    /// The transaction being received, when it is not being skipped.
    current: Option<Lsn>,
    skipping: bool,
    batch: Vec<Item>,
    batch_rows: usize,
    lanes: Vec<ZoneLane>,
    reports: mpsc::UnboundedReceiver<ZoneReport>,
    /// End LSN of the newest committed transaction not yet checkpointed.
    pending_end: Option<Lsn>,
    pending_txns: usize,
    /// When a checkpoint was last committed or forced.
    last_checkpoint: Instant,
    /// Whether anything was confirmed to the slot in this session.
    confirmed: Option<Lsn>,
    /// The server's clock at its last message.
    server_time_micros: i64,
    /// Whether the last commit arrived well after it happened.
    backlog: bool,
    /// Dispatches of the current flush, sent per zone at its end.
    outbox: Vec<Vec<Dispatch>>,
}

/// Runs sessions until shutdown; transient failures are retried with
/// backoff, everything else ends the run with the error.
pub async fn run(config: Config, mut shutdown: watch::Receiver<bool>) -> Result<(), RunError> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let started = Instant::now();
        match session(&config, &mut shutdown).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() => {
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(200);
                }
                warn!(error = %crate::error::chain(&e), retry_in = ?backoff, "session failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}

async fn session(config: &Config, shutdown: &mut watch::Receiver<bool>) -> Result<(), RunError> {
    let store = Store::connect(&config.database).await?;
    if store.slot_confirmed().await?.is_none() {
        return Err(RunError::SlotMissing {
            slot: config.database.slot.clone(),
        });
    }
    let progress = store.progress().await.map_err(|e| {
        if e.sqlstate() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
            RunError::SchemaMissing
        } else {
            e.into()
        }
    })?;
    let mut source = PgSource::connect(&config.database, progress).await?;
    info!(slot = %config.database.slot, progress = %progress, "streaming");

    let (report_tx, reports) = mpsc::unbounded_channel();
    let mut lanes = Vec::new();
    let mut tasks = Vec::new();
    for (i, z) in config.zones.iter().enumerate() {
        let (tx, rx) = mpsc::channel(4);
        let sink = ZoneSink::new(i, z, &config.limits, report_tx.clone());
        tasks.push(tokio::spawn(sink.run(rx)));
        lanes.push(ZoneLane {
            tx,
            dispatched: 0,
            acked: 0,
        });
    }
    drop(report_tx);
    let mut p = Pipeline {
        config,
        zones: config.zone_names(),
        zone_texts: config
            .zone_names()
            .iter()
            .map(ToString::to_string)
            .collect(),
        store,
        assembler: Assembler::new(),
        progress,
        current: None,
        skipping: false,
        batch: Vec::new(),
        batch_rows: 0,
        lanes,
        reports,
        pending_end: None,
        pending_txns: 0,
        last_checkpoint: Instant::now(),
        confirmed: None,
        server_time_micros: 0,
        backlog: false,
        outbox: config.zones.iter().map(|_| Vec::new()).collect(),
    };
    let result = p.stream(&mut source, shutdown).await;
    for t in &tasks {
        t.abort();
    }
    if result.is_ok() && p.confirmed.is_some() {
        source.shutdown().await;
    }
    result
}

impl Pipeline<'_> {
    async fn stream(
        &mut self,
        source: &mut PgSource,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), RunError> {
        loop {
            let event = tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    return self.stop(source).await;
                }
                report = self.reports.recv() => {
                    self.on_report(report).await?;
                    // The last acknowledgement of an idle stream completes
                    // the pending checkpoint.
                    if self.at_boundary() && self.all_acked() {
                        self.checkpoint(source, Duration::ZERO).await?;
                    }
                    continue;
                }
                event = source.recv() => event?,
                _ = tokio::time::sleep(BACKLOG_PAUSE), if !self.batch.is_empty() => {
                    self.flush().await?;
                    self.maybe_checkpoint(source).await?;
                    continue;
                }
            };
            let Some(event) = event else {
                return Err(RunError::StreamEnded);
            };
            // A stop request interrupts waiting on DNS: whatever was not
            // checkpointed is rolled back with the connection and replayed by
            // the next run.
            tokio::select! {
                r = self.process(source, event) => r?,
                _ = shutdown.changed() => {
                    info!("stopping before the pending transactions were acknowledged; they will be replayed");
                    return Ok(());
                }
            }
        }
    }

    async fn process(&mut self, source: &mut PgSource, event: SourceEvent) -> Result<(), RunError> {
        self.on_event(source, event).await?;
        // Flush and checkpoint when the stream has nothing more ready now:
        // a lone commit goes out at once, a backlog is batched.
        let idle = !source.has_ready().await? && !self.backlog;
        // A full batch is flushed at a transaction boundary, so that a
        // checkpoint can follow; a huge transaction is flushed in parts.
        let full = (self.batch_rows >= MAX_BATCH_ROWS && self.current.is_none())
            || self.batch_rows >= 2 * MAX_BATCH_ROWS;
        if full || (idle && !self.batch.is_empty()) {
            self.flush().await?;
        }
        self.maybe_checkpoint(source).await
    }

    /// At a transaction boundary: commits at once when everything is
    /// acknowledged; otherwise leaves it to the last acknowledgement (see
    /// `stream`), except that while transactions keep coming a checkpoint is
    /// forced every [`CHECKPOINT_EVERY`], waiting at most [`BARRIER_WAIT`].
    /// Never waiting on the way of a live transaction keeps a slow answer
    /// from delaying the next one.
    async fn maybe_checkpoint(&mut self, source: &mut PgSource) -> Result<(), RunError> {
        if !self.at_boundary() {
            return Ok(());
        }
        if self.all_acked() {
            self.checkpoint(source, Duration::ZERO).await
        } else if self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            self.checkpoint(source, BARRIER_WAIT).await
        } else {
            Ok(())
        }
    }

    /// Between transactions, with everything flushed and something to checkpoint.
    fn at_boundary(&self) -> bool {
        self.current.is_none() && self.batch.is_empty() && self.pending_end.is_some()
    }

    fn all_acked(&self) -> bool {
        self.lanes.iter().all(|l| l.acked >= l.dispatched)
    }

    /// Clean stop: finish what is complete, leave the rest to the next run.
    async fn stop(&mut self, source: &mut PgSource) -> Result<(), RunError> {
        info!("stopping");
        if self.current.is_none() {
            if !self.batch.is_empty() {
                self.flush().await?;
            }
            if self.pending_end.is_some() {
                let wait = tokio::time::timeout(
                    Duration::from_secs(5),
                    self.checkpoint(source, Duration::from_secs(5)),
                );
                match wait.await {
                    Ok(r) => r?,
                    Err(_) => warn!("DNS acknowledgements did not arrive in time; the unconfirmed transactions will be replayed on the next start"),
                }
            }
        }
        Ok(())
    }

    async fn on_report(&mut self, report: Option<ZoneReport>) -> Result<(), RunError> {
        match report {
            None => Err(RunError::Internal("every zone stream ended".into())),
            Some(ZoneReport::Acked { zone, upto }) => {
                let lane = &mut self.lanes[zone];
                lane.acked = lane.acked.max(upto);
                Ok(())
            }
            Some(ZoneReport::Rejected {
                zone,
                lsn,
                owner,
                reason,
            }) => {
                self.store
                    .reject(&[Rejection {
                        source: RR_SOURCE.into(),
                        row_key: String::new(),
                        lsn,
                        zone: Some(self.zone_texts[zone].clone()),
                        owner: Some(owner),
                        reason,
                    }])
                    .await?;
                Ok(())
            }
            Some(ZoneReport::Halted { error, .. }) => Err(RunError::Sink(error)),
        }
    }

    async fn on_event(
        &mut self,
        source: &mut PgSource,
        event: SourceEvent,
    ) -> Result<(), RunError> {
        let message = match event {
            SourceEvent::KeepAlive {
                wal_end,
                server_time_micros,
            } => {
                self.server_time_micros = server_time_micros;
                // Nothing in flight: let an idle slot move, or it pins WAL.
                if self.current.is_none()
                    && !self.assembler.in_transaction()
                    && self.batch.is_empty()
                    && self.pending_end.is_none()
                    && !self.store.in_transaction()
                    && wal_end > self.confirmed.unwrap_or(Lsn::ZERO)
                {
                    source.confirm(wal_end);
                    self.confirmed = Some(wal_end);
                }
                return Ok(());
            }
            SourceEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => Message::Begin(Begin {
                final_lsn,
                commit_time_micros,
                xid,
            }),
            SourceEvent::Commit {
                commit_lsn,
                end_lsn,
                commit_time_micros,
            } => {
                // The server sent this commit long after it happened: the
                // stream is working through a backlog, so batch it.
                self.backlog = self.server_time_micros - commit_time_micros > BACKLOG_MICROS;
                Message::Commit(Commit {
                    flags: 0,
                    commit_lsn,
                    end_lsn,
                    commit_time_micros,
                })
            }
            SourceEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => Message::Message(LogicalMessage {
                transactional,
                lsn,
                prefix,
                content,
            }),
            SourceEvent::Data {
                data: bytes,
                server_time_micros,
            } => {
                self.server_time_micros = server_time_micros;
                pgoutput::parse_bytes(&bytes).map_err(|source| RunError::Decode {
                    lsn: self.current.unwrap_or_default(),
                    reason: source.to_string(),
                })?
            }
        };
        let Some(event) = self.assembler.push(message).map_err(|e| RunError::Decode {
            lsn: self.current.unwrap_or_default(),
            reason: e.to_string(),
        })?
        else {
            return Ok(());
        };
        match event {
            Event::Begin { final_lsn, .. } => {
                // A transaction whose commit precedes the durable progress was
                // applied and checkpointed before: skip it outright.
                self.skipping = final_lsn < self.progress;
                if self.skipping {
                    debug!(lsn = %final_lsn, "skipping a transaction applied before");
                }
                self.current = Some(final_lsn);
            }
            Event::Change(change) => {
                if !self.skipping
                    && is_rr(change.relation.namespace.as_str(), &change.relation.name)
                {
                    self.batch.push(Item::Change(change));
                    self.batch_rows += 1;
                } else if !self.skipping {
                    debug!(relation = %change.relation.name, "change of an unmapped table ignored");
                }
            }
            Event::Truncate {
                final_lsn,
                relations,
                ..
            } => {
                if !self.skipping
                    && relations
                        .iter()
                        .any(|r| is_rr(r.namespace.as_str(), &r.name))
                {
                    return Err(RunError::Truncate {
                        table: RR_SOURCE.into(),
                        lsn: final_lsn,
                        slot: self.config.database.slot.clone(),
                    });
                }
            }
            Event::Message { .. } => {}
            Event::Commit {
                final_lsn, end_lsn, ..
            } => {
                if !self.skipping {
                    self.batch.push(Item::Commit { final_lsn });
                    if self.pending_end.is_none() {
                        // The checkpoint clock starts with the oldest
                        // transaction it will cover.
                        self.last_checkpoint = Instant::now();
                    }
                    self.pending_end = Some(end_lsn);
                    self.pending_txns += 1;
                }
                self.current = None;
                self.skipping = false;
            }
        }
        Ok(())
    }

    /// Turns the batch into state writes and dispatches.
    async fn flush(&mut self) -> Result<(), RunError> {
        let started = Instant::now();
        let rows_in_batch = self.batch_rows;
        let items = std::mem::take(&mut self.batch);
        self.batch_rows = 0;
        // 1. Map every change to (row key, new records or a rejection).
        let mut mapped = Vec::with_capacity(items.len());
        let mut keys: HashSet<String> = HashSet::new();
        for item in items {
            match item {
                Item::Commit { final_lsn } => mapped.push(Mapped::Commit { final_lsn }),
                Item::Change(change) => {
                    for m in map_change(&change, &self.zones) {
                        if let Mapped::Row { key, .. } = &m {
                            keys.insert(key.clone());
                        }
                        mapped.push(m);
                    }
                }
            }
        }
        let keys: Vec<String> = keys.into_iter().collect();
        // 2. Load the stored records of those rows, and the records of every
        //    RRset they or the new records belong to.
        let mut new_rrsets: Vec<RrsetKey> = mapped
            .iter()
            .flat_map(|m| match m {
                Mapped::Row {
                    new: Ok(NewRecords::Records(recs)),
                    ..
                } => recs.iter().map(rrset_of).collect(),
                Mapped::Row {
                    new: Ok(NewRecords::ToastFromState(p)),
                    ..
                } => vec![(p.zone.clone(), p.owner.clone(), p.rtype.clone())],
                _ => Vec::new(),
            })
            .collect();
        new_rrsets.sort_unstable();
        new_rrsets.dedup();
        let (loaded, mut counts) = self.store.load_state(RR_SOURCE, &keys, &new_rrsets).await?;
        let mut rows = loaded.clone();
        let t_read = started.elapsed();
        for k in &keys {
            rows.entry(k.clone()).or_default();
        }
        // 3. Resolve unchanged-TOAST rdata from the state.
        {
            let mut sim = rows.clone();
            for m in mapped.iter_mut() {
                let Mapped::Row { key, new, .. } = m else {
                    continue;
                };
                if let Ok(NewRecords::ToastFromState(partial)) = new {
                    let partial = partial.clone();
                    let old = sim.get(key.as_str()).cloned().unwrap_or_default();
                    *new = resolve_toast(&partial, &old);
                }
                let now = match new {
                    Ok(NewRecords::Records(recs)) => recs.clone(),
                    _ => Vec::new(),
                };
                sim.insert(key.clone(), now);
            }
        }
        let mut rrsets: HashMap<RrsetKey, i64> = HashMap::new();
        for (k, (count, _)) in &counts {
            if *count > 0 {
                *rrsets
                    .entry((k.zone.clone(), k.owner.clone(), k.rtype.clone()))
                    .or_insert(0) += 1;
            }
        }
        let limit = self.config.limits.max_records_per_rrset;
        // 4. Walk the changes in order; emit the net operations of each
        //    transaction (or of the batch's part of one) per zone.
        let mut rejections = Vec::new();
        let mut segment = Segment::default();
        let mut lsn = self.current.unwrap_or_default();
        let mut segments: Vec<(Lsn, Vec<NetChange>)> = Vec::new();
        for m in mapped {
            match m {
                Mapped::Commit { final_lsn } => {
                    segments.push((final_lsn, segment.finish()));
                }
                Mapped::Row {
                    key,
                    final_lsn,
                    new,
                    ..
                } => {
                    lsn = final_lsn;
                    let old = rows.get(&key).cloned().unwrap_or_default();
                    let mut reject = |r: Reject| {
                        warn!(source = RR_SOURCE, row = %key, lsn = %final_lsn, zone = r.zone.as_deref().unwrap_or("-"), owner = r.owner.as_deref().unwrap_or("-"), reason = %r.reason, "row not sent to DNS");
                        rejections.push(Rejection {
                            source: RR_SOURCE.into(),
                            row_key: key.clone(),
                            lsn: final_lsn,
                            zone: r.zone,
                            owner: r.owner,
                            reason: r.reason,
                        });
                    };
                    let mut new_records = match new {
                        Ok(NewRecords::Records(r)) => r,
                        Ok(NewRecords::ToastFromState(_)) => Vec::new(),
                        Err(r) => {
                            reject(r);
                            Vec::new()
                        }
                    };
                    for r in &old {
                        segment.change(&mut counts, &mut rrsets, r, -1);
                    }
                    // BIND refuses (SERVFAIL) an RRset over its
                    // max-records-per-type: refuse the row here instead,
                    // naming it, rather than stall the zone.
                    if let Some(r) = new_records.iter().find(|r| {
                        counts.get(&r.key()).is_none_or(|c| c.0 <= 0)
                            && rrsets.get(&rrset_of(r)).copied().unwrap_or(0) as usize >= limit
                    }) {
                        reject(Reject {
                            zone: Some(r.zone.clone()),
                            owner: Some(r.owner.clone()),
                            reason: format!(
                                "the {} RRset of {} already holds {limit} records, the limit (limits.max_records_per_rrset; BIND's max-records-per-type)",
                                r.rtype, r.owner
                            ),
                        });
                        new_records.clear();
                    }
                    for r in &new_records {
                        segment.change(&mut counts, &mut rrsets, r, 1);
                    }
                    rows.insert(key, new_records);
                }
            }
        }
        // A transaction continuing past this batch.
        let open_segment = segment.finish();
        // 5. Dispatch first: the UPDATEs need only what was read, and a
        //    crash before the state write replays the same operations.
        let t_walk = started.elapsed();
        for (final_lsn, ops) in segments {
            self.dispatch(final_lsn, ops);
        }
        if !open_segment.is_empty() {
            self.dispatch(lsn, open_segment);
        }
        self.send_outbox().await?;
        // 6. Write the new state (uncommitted until the checkpoint).
        self.store.write_rows(RR_SOURCE, &rows, &loaded).await?;
        self.store.reject(&rejections).await?;
        let stored = started.elapsed();
        let ms = |d: Duration| d.as_millis() as u64;
        debug!(
            rows = rows_in_batch,
            read_ms = ms(t_read),
            walk_ms = ms(t_walk - t_read),
            write_ms = ms(stored - t_walk),
            total_ms = ms(started.elapsed()),
            backlog = self.backlog,
            "flushed"
        );
        Ok(())
    }

    fn dispatch(&mut self, lsn: Lsn, changes: Vec<NetChange>) {
        let mut per_zone: HashMap<usize, Vec<UpdateOp>> = HashMap::new();
        for (key, before, after) in changes {
            let Some(zone) = self.zone_texts.iter().position(|z| *z == key.zone) else {
                warn!(zone = %key.zone, owner = %key.owner, "record of a zone no longer configured; not sent");
                continue;
            };
            let build =
                |ttl: i32| Record::parse(&key.owner, ttl.max(0) as u32, &key.rtype, &key.rdata);
            let ops = per_zone.entry(zone).or_default();
            match (before, after) {
                (Some(old_ttl), None) => {
                    if let Ok(r) = build(old_ttl) {
                        ops.push(UpdateOp::Delete(r));
                    }
                }
                (None, Some(new_ttl)) => {
                    if let Ok(r) = build(new_ttl) {
                        ops.push(UpdateOp::Add(r));
                    }
                }
                (Some(old_ttl), Some(new_ttl)) if old_ttl != new_ttl => {
                    if let (Ok(old), Ok(new)) = (build(old_ttl), build(new_ttl)) {
                        ops.push(UpdateOp::Delete(old));
                        ops.push(UpdateOp::Add(new));
                    }
                }
                _ => {}
            }
        }
        let mut zones: Vec<usize> = per_zone.keys().copied().collect();
        zones.sort_unstable();
        for zone in zones {
            let ops = per_zone.remove(&zone).unwrap_or_default();
            if ops.is_empty() {
                continue;
            }
            self.lanes[zone].dispatched += 1;
            self.outbox[zone].push(Dispatch {
                id: self.lanes[zone].dispatched,
                lsn,
                ops,
            });
        }
    }

    /// Hands each zone the dispatches of this flush at once, so that a zone
    /// working through a backlog can pack them into full messages.
    async fn send_outbox(&mut self) -> Result<(), RunError> {
        for zone in 0..self.outbox.len() {
            if self.outbox[zone].is_empty() {
                continue;
            }
            let batch = std::mem::take(&mut self.outbox[zone]);
            // Keep reading reports while a zone's queue is full, so that a
            // halt elsewhere is seen.
            let tx = self.lanes[zone].tx.clone();
            let mut send = std::pin::pin!(tx.send(batch));
            loop {
                tokio::select! {
                    r = &mut send => {
                        r.map_err(|_| RunError::Internal(format!("the stream of zone {} ended", self.zones[zone])))?;
                        break;
                    }
                    report = self.reports.recv() => self.on_report(report).await?,
                }
            }
        }
        Ok(())
    }

    /// Commits state and progress once every dispatch was acknowledged,
    /// waiting at most `wait` for the acknowledgements. A zone that does not
    /// answer in time keeps the checkpoint pending but does not stop the
    /// other zones: streaming goes on, and the checkpoint is tried again at
    /// the next transaction boundary or acknowledgement.
    async fn checkpoint(&mut self, source: &mut PgSource, wait: Duration) -> Result<(), RunError> {
        let Some(end) = self.pending_end else {
            return Ok(());
        };
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + wait;
        while !self.all_acked() {
            match tokio::time::timeout_at(deadline, self.reports.recv()).await {
                Ok(report) => self.on_report(report).await?,
                Err(_) => {
                    debug!(
                        waited_ms = started.elapsed().as_millis() as u64,
                        "checkpoint postponed: acknowledgements pending"
                    );
                    self.last_checkpoint = Instant::now();
                    return Ok(());
                }
            }
        }
        failpoint::hit("after-dns-ack");
        self.store.commit(end).await?;
        source.confirm(end);
        debug!(lsn = %end, transactions = self.pending_txns, total_ms = started.elapsed().as_millis() as u64, "checkpoint");
        self.confirmed = Some(end);
        self.progress = end;
        self.pending_end = None;
        self.pending_txns = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }
}

fn is_rr(namespace: &str, name: &str) -> bool {
    namespace == "pg2dns" && name == "rr"
}

fn rrset_of(r: &StoredRecord) -> RrsetKey {
    (r.zone.clone(), r.owner.clone(), r.rtype.clone())
}

/// A record touched by a transaction: its key, its TTL before the
/// transaction if it was present, and its TTL after it if it is present.
type NetChange = (RecordKey, Option<i32>, Option<i32>);

/// Tracks, for one transaction, each touched record's state before it and
/// its current state, so that only net operations go out.
#[derive(Default)]
struct Segment {
    order: Vec<RecordKey>,
    before: HashMap<RecordKey, Option<i32>>,
    now: HashMap<RecordKey, Option<i32>>,
}

impl Segment {
    fn change(
        &mut self,
        counts: &mut HashMap<RecordKey, (i64, i32)>,
        rrsets: &mut HashMap<RrsetKey, i64>,
        record: &StoredRecord,
        delta: i64,
    ) {
        let key = record.key();
        let entry = counts.entry(key.clone()).or_insert((0, record.ttl));
        if !self.before.contains_key(&key) {
            let present = (entry.0 > 0).then_some(entry.1);
            self.before.insert(key.clone(), present);
            self.order.push(key.clone());
        }
        let was_present = entry.0 > 0;
        entry.0 += delta;
        if was_present != (entry.0 > 0) {
            *rrsets.entry(rrset_of(record)).or_insert(0) += if was_present { -1 } else { 1 };
        }
        if delta > 0 {
            // The newest contribution sets the TTL.
            entry.1 = record.ttl;
        }
        let present = (entry.0 > 0).then_some(entry.1);
        self.now.insert(key, present);
    }

    /// The touched records as (key, TTL before if present, TTL now if present).
    fn finish(&mut self) -> Vec<NetChange> {
        let order = std::mem::take(&mut self.order);
        let mut before = std::mem::take(&mut self.before);
        let mut now = std::mem::take(&mut self.now);
        order
            .into_iter()
            .filter_map(|k| {
                let b = before.remove(&k).flatten();
                let n = now.remove(&k).flatten();
                (b != n).then_some((k, b, n))
            })
            .collect()
    }
}

/// A row's records, or the promise to take the data from the stored state.
#[derive(Debug, Clone)]
enum NewRecords {
    Records(Vec<StoredRecord>),
    /// The rdata column is an unchanged TOAST value: the record is the
    /// stored one with the other columns applied.
    ToastFromState(PartialRecord),
}

#[derive(Debug, Clone)]
struct PartialRecord {
    owner: String,
    ttl: u32,
    rtype: String,
    zone: String,
}

#[derive(Debug, Clone)]
struct Reject {
    zone: Option<String>,
    owner: Option<String>,
    reason: String,
}

enum Mapped {
    Row {
        key: String,
        final_lsn: Lsn,
        new: Result<NewRecords, Reject>,
    },
    Commit {
        final_lsn: Lsn,
    },
}

fn resolve_toast(partial: &PartialRecord, old: &[StoredRecord]) -> Result<NewRecords, Reject> {
    match old.iter().find(|r| r.rtype == partial.rtype) {
        Some(prev) => match Record::parse(&partial.owner, partial.ttl, &partial.rtype, &prev.rdata) {
            Ok(rec) => Ok(NewRecords::Records(vec![stored(&partial.zone, &rec)])),
            Err(e) => Err(Reject {
                zone: Some(partial.zone.clone()),
                owner: Some(partial.owner.clone()),
                reason: e.to_string(),
            }),
        },
        None => Err(Reject {
            zone: Some(partial.zone.clone()),
            owner: Some(partial.owner.clone()),
            reason: "rdata arrived as an unchanged TOAST value and pg2dns holds no earlier value for this row; set REPLICA IDENTITY FULL on the table or touch the rdata column".into(),
        }),
    }
}

fn stored(zone: &str, r: &Record) -> StoredRecord {
    StoredRecord {
        zone: zone.to_owned(),
        owner: r.owner.to_string(),
        rtype: r.rtype().to_string(),
        rdata: r.rdata_text(),
        ttl: r.ttl as i32,
    }
}

fn row_key(row: &Row) -> Option<String> {
    row.text("id").ok().flatten().map(str::to_owned)
}

/// Maps one change of `pg2dns.rr` to the rows it affects.
fn map_change(change: &RowChange, zones: &[ZoneName]) -> Vec<Mapped> {
    let lsn = change.final_lsn;
    let new_key = change.new.as_ref().and_then(row_key);
    let old_key = change.old.as_ref().and_then(row_key);
    let mut out = Vec::new();
    // A changed primary key: the old row leaves, a new one arrives.
    if let (Some(old), Some(new)) = (&old_key, &new_key) {
        if old != new {
            out.push(Mapped::Row {
                key: old.clone(),
                final_lsn: lsn,
                new: Ok(NewRecords::Records(Vec::new())),
            });
        }
    }
    match (change.kind, &change.new) {
        (ChangeKind::Delete, _) | (_, None) => {
            if let Some(key) = old_key {
                out.push(Mapped::Row {
                    key,
                    final_lsn: lsn,
                    new: Ok(NewRecords::Records(Vec::new())),
                });
            } else {
                warn!(lsn = %lsn, "a delete from pg2dns.rr without its id; ignored");
            }
        }
        (_, Some(row)) => {
            let Some(key) = new_key else {
                warn!(lsn = %lsn, "a row of pg2dns.rr without an id; ignored");
                return out;
            };
            out.push(Mapped::Row {
                key,
                final_lsn: lsn,
                new: map_row(row, zones),
            });
        }
    }
    out
}

fn map_row(row: &Row, zones: &[ZoneName]) -> Result<NewRecords, Reject> {
    let reject = |owner: Option<String>, reason: String| Reject {
        zone: None,
        owner,
        reason,
    };
    let text = |col: &'static str| -> Result<String, Reject> {
        match row.text(col) {
            Ok(Some(v)) => Ok(v.to_owned()),
            Ok(None) => Err(reject(None, RecordError::Null(col).to_string())),
            Err(e) => Err(reject(None, e.to_string())),
        }
    };
    let owner_text = text("owner")?;
    let owner = records::Owner::parse(&owner_text)
        .map_err(|e| reject(Some(owner_text.clone()), e.to_string()))?;
    let Some(zone) = records::zone_for(&owner, zones) else {
        return Err(reject(
            Some(owner.to_string()),
            format!("owner {owner} is in no configured zone"),
        ));
    };
    let in_zone = |reason: String| Reject {
        zone: Some(zone.to_string()),
        owner: Some(owner.to_string()),
        reason,
    };
    let class = text("class").map_err(|r| in_zone(r.reason))?;
    if !class.eq_ignore_ascii_case("IN") {
        return Err(in_zone(RecordError::BadClass(class).to_string()));
    }
    let ttl_text = text("ttl").map_err(|r| in_zone(r.reason))?;
    let ttl: u32 = ttl_text
        .parse()
        .map_err(|_| in_zone(RecordError::BadTtl(ttl_text.clone()).to_string()))?;
    let rtype = text("type").map_err(|r| in_zone(r.reason))?;
    if row.is_unchanged_toast("rdata") {
        return Ok(NewRecords::ToastFromState(PartialRecord {
            owner: owner.to_string(),
            ttl,
            rtype: rtype.to_ascii_uppercase(),
            zone: zone.to_string(),
        }));
    }
    let rdata = text("rdata").map_err(|r| in_zone(r.reason))?;
    let record = Record::parse(&owner.to_string(), ttl, &rtype, &rdata)
        .map_err(|e| in_zone(e.to_string()))?;
    Ok(NewRecords::Records(vec![stored(
        &zone.to_string(),
        &record,
    )]))
}
