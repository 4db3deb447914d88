//! A zone's UPDATE stream that outlives a session, so that a SIGHUP (or a
//! change of `pg2dns.zones`) rebuilds only the zones whose stream settings
//! changed: the others keep their task, their session's message IDs and
//! their open connection (issue #24: with 5,000 zones, SIGHUP rebuilt every
//! zone in 1.5 s).
//!
//! A [`ZoneSink`] reports under the [`ZoneId`] it was built with, to the
//! channel it was built with; both belong to one session. So the sink
//! reports to a relay of its own, which rewrites the id and forwards to
//! whatever session the stream is bound to now ([`ZoneStream::rebind`]).
//! A stream is kept only from a session that ended cleanly with every
//! dispatch acknowledged (see `pipeline::Lanes::keep`), and its dispatch
//! ids go on from where they were, so the sink sees them grow as always.
//!
//! ```text
//!  session n   ─Vec<Dispatch>─▶ ZoneSink ─▶ relay ─(ZoneId of n)──▶ reports of n
//!  session n+1 ─Vec<Dispatch>─▶   (same)  ─▶ relay ─(ZoneId of n+1)─▶ reports of n+1
//! ```

use std::collections::HashMap;
use std::time::Duration;

use pg2dns_decoder::tsig::TsigKey;
use pg2dns_decoder::{ZoneId, ZoneName};
use tokio::sync::{mpsc, watch};

use super::sink::{Dispatch, ZoneReport, ZoneSink};
use crate::config::{Limits, PrimaryAddr, ZoneConfig};

/// Everything a zone's sink is built from: a stream is reused only when
/// these are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    name: ZoneName,
    primary: std::net::SocketAddr,
    primary_addr: PrimaryAddr,
    key: TsigKey,
    max_message_bytes: usize,
    window: usize,
    dns_timeout: Duration,
}

impl StreamSettings {
    /// The settings of `zone`'s stream under `limits`.
    pub fn of(zone: &ZoneConfig, limits: &Limits) -> StreamSettings {
        StreamSettings {
            name: zone.name.clone(),
            primary: zone.primary,
            primary_addr: zone.primary_addr.clone(),
            key: zone.key.clone(),
            max_message_bytes: limits.max_message_bytes,
            window: limits.window,
            dns_timeout: limits.dns_timeout,
        }
    }
}

/// Where a stream's reports go now.
type Binding = (ZoneId, mpsc::UnboundedSender<ZoneReport>);

/// A zone's sink task and its relay; both are aborted when it is dropped.
pub struct ZoneStream {
    settings: StreamSettings,
    /// The sink's input.
    pub tx: mpsc::Sender<Vec<Dispatch>>,
    binding: watch::Sender<Binding>,
    sink: tokio::task::JoinHandle<()>,
    relay: tokio::task::JoinHandle<()>,
}

impl ZoneStream {
    /// Starts `zone`'s sink, reporting as `id` to `reports`.
    pub fn start(
        id: ZoneId,
        zone: &ZoneConfig,
        limits: &Limits,
        reports: mpsc::UnboundedSender<ZoneReport>,
    ) -> ZoneStream {
        let (tx, rx) = mpsc::channel(4);
        let (to_relay, from_sink) = mpsc::unbounded_channel();
        let sink = ZoneSink::new(id, zone, limits, to_relay);
        let (binding, bound) = watch::channel((id, reports));
        ZoneStream {
            settings: StreamSettings::of(zone, limits),
            tx,
            binding,
            sink: tokio::spawn(sink.run(rx)),
            relay: tokio::spawn(relay(from_sink, bound)),
        }
    }

    /// Reports go to `reports` as zone `id` from now on.
    pub fn rebind(&self, id: ZoneId, reports: mpsc::UnboundedSender<ZoneReport>) {
        self.binding.send_replace((id, reports));
    }
}

impl Drop for ZoneStream {
    fn drop(&mut self) {
        self.sink.abort();
        self.relay.abort();
    }
}

async fn relay(mut from: mpsc::UnboundedReceiver<ZoneReport>, bound: watch::Receiver<Binding>) {
    while let Some(mut report) = from.recv().await {
        let (id, to) = bound.borrow().clone();
        match &mut report {
            ZoneReport::Acked { zone, .. }
            | ZoneReport::Refused { zone, .. }
            | ZoneReport::Halted { zone, .. } => *zone = id,
        }
        // A session that ended no longer listens: nothing was pending.
        let _ = to.send(report);
    }
}

/// Streams kept from a session that ended with everything acknowledged,
/// each with the dispatch id it reached.
#[derive(Default)]
pub struct Kept {
    streams: HashMap<ZoneName, (ZoneStream, u64)>,
}

impl Kept {
    /// Keeps `stream`, which reached dispatch id `dispatched`.
    pub fn keep(&mut self, stream: ZoneStream, dispatched: u64) {
        // A sink that stopped (it halted) is not worth keeping.
        if !stream.sink.is_finished() {
            self.streams
                .insert(stream.settings.name.clone(), (stream, dispatched));
        }
    }

    /// The kept stream of `zone` if it was built from the same settings
    /// (one built from others is dropped: its zone changed).
    pub fn take(&mut self, zone: &ZoneConfig, limits: &Limits) -> Option<(ZoneStream, u64)> {
        let (stream, dispatched) = self.streams.remove(&zone.name)?;
        (stream.settings == StreamSettings::of(zone, limits) && !stream.sink.is_finished())
            .then_some((stream, dispatched))
    }

    /// How many streams are kept.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}
