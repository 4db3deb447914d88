//! Metrics and health over HTTP: `/metrics` (OpenMetrics text),
//! `/healthz` (the process is alive) and `/readyz` (changes reach every
//! primary).
//!
//! Built on `prometheus-client` (the Prometheus project's Rust client) and
//! `axum`, listening on loopback by default (`[metrics] listen`).
//!
//! `/metrics` speaks the format the scraper asks for, as Prometheus's own
//! clients do: OpenMetrics 1.0 when the `Accept` header names
//! `application/openmetrics-text` (Prometheus does), else the Prometheus
//! text format 0.0.4 (curl, `promtool check metrics`). Each answer's content
//! type says which: OpenMetrics sent as `text/plain` (as before) made
//! Prometheus parse it as the older format and lose every counter's type and
//! help.
//!
//! Ready means: this process holds the slot and streams ([`State::Running`])
//! and no zone's primary has left pending changes unanswered for longer than
//! `[limits] unreachable_after_s`. Every other state answers 503 naming it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::routing;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use tracing::{debug, info, warn};

/// The content type of what [`Metrics::render`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of what [`Metrics::render_text`] writes.
pub const TEXT_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What this process is doing, as `/readyz` and `pg2dns_mode` say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Connecting, or between sessions.
    Starting,
    /// Another instance streams from the slot; this one takes over when it
    /// is free.
    Standby,
    /// Streaming.
    Running,
    /// Paused by an operator.
    Paused,
    /// Halted until an operator acts.
    Halted,
    /// Halted: the mass-delete guard holds a transaction.
    Held,
    /// Stopped (SIGTERM, or `--exit-on-halt`).
    Stopped,
}

impl State {
    /// Every state, in the order of `pg2dns_mode`'s series.
    pub const ALL: [State; 7] = [
        State::Starting,
        State::Standby,
        State::Running,
        State::Paused,
        State::Halted,
        State::Held,
        State::Stopped,
    ];

    /// Its name in metrics and `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Standby => "standby",
            State::Running => "running",
            State::Paused => "paused",
            State::Halted => "halted",
            State::Held => "held",
            State::Stopped => "stopped",
        }
    }
}

/// The error kinds `pg2dns_errors_total` counts (each present from start).
pub const ERROR_KINDS: [&str; 3] = ["retry", "halt", "exit"];

/// The reasons `pg2dns_dns_retries_total` counts.
pub const RETRY_REASONS: [&str; 5] = [
    "servfail",
    "timeout",
    "disconnected",
    "unreachable",
    "malformed",
];

/// The label of a [`RetryReason`](pg2dns_decoder::session::RetryReason).
pub fn retry_reason(reason: &pg2dns_decoder::session::RetryReason) -> &'static str {
    use pg2dns_decoder::session::RetryReason;
    match reason {
        RetryReason::ServFail => "servfail",
        RetryReason::Timeout { .. } => "timeout",
        RetryReason::Disconnected => "disconnected",
        RetryReason::Unreachable => "unreachable",
        RetryReason::Malformed { .. } => "malformed",
    }
}

/// The `wal_status` values of `pg_replication_slots`.
pub const WAL_STATUSES: [&str; 4] = ["reserved", "extended", "unreserved", "lost"];

/// Labels naming a primary and, with `[metrics] per_zone = true`, a zone:
/// the series of the zone families (`pg2dns_update_*`, `pg2dns_ack_seconds`,
/// `pg2dns_zone_*`, `pg2dns_dns_retries_total`). Built by
/// [`Metrics::series`]; by default every zone of a primary shares its
/// series, so that a scrape does not grow with the zone count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeriesLabel {
    /// The zone apex, with `per_zone` only.
    pub zone: Option<String>,
    /// The primary's address.
    pub server: String,
}

impl EncodeLabelSet for SeriesLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        if let Some(zone) = &self.zone {
            ("zone", zone.as_str()).encode(encoder.encode_label())?;
        }
        ("server", self.server.as_str()).encode(encoder.encode_label())
    }
}

/// Labels naming a DNS server (a primary's address as configured).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    /// The primary's address.
    pub server: String,
}

/// Labels naming one primary of zones with several (`primaries`,
/// `server_group`) and, with `[metrics] per_zone = true`, the zone: the
/// `pg2dns_primary_*` families. Built by [`Metrics::primary_series`]; by
/// default each primary's series sums its zones, so that 50,000 zones with
/// two primaries are not 300,000 series.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct PrimaryLabel {
    /// The zone apex, with `per_zone` only.
    pub zone: Option<String>,
    /// The primary's `[[server]]` name.
    pub primary: String,
}

impl EncodeLabelSet for PrimaryLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        if let Some(zone) = &self.zone {
            ("zone", zone.as_str()).encode(encoder.encode_label())?;
        }
        ("primary", self.primary.as_str()).encode(encoder.encode_label())
    }
}

/// One zone's part of a gauge that may sum several zones (a
/// `pg2dns_primary_*` series without `per_zone`): the zone sets its own
/// value, and the gauge moves by the difference. Dropped (the session
/// ends), it takes its part back out, so the next session's part for the
/// same zone is not counted twice.
#[derive(Debug)]
pub struct GaugeShare {
    gauge: Gauge,
    /// This zone's value in `gauge`.
    part: AtomicI64,
}

impl GaugeShare {
    /// A share of `gauge`, holding 0.
    pub fn of(gauge: Gauge) -> GaugeShare {
        GaugeShare {
            gauge,
            part: AtomicI64::new(0),
        }
    }

    /// This zone's value is now `value`.
    pub fn set(&self, value: i64) {
        let before = self.part.swap(value, Ordering::Relaxed);
        self.gauge.inc_by(value.wrapping_sub(before));
    }

    /// This zone's value grows by one.
    pub fn inc(&self) {
        self.part.fetch_add(1, Ordering::Relaxed);
        self.gauge.inc();
    }

    /// This zone's value.
    pub fn get(&self) -> i64 {
        self.part.load(Ordering::Relaxed)
    }
}

impl Drop for GaugeShare {
    fn drop(&mut self) {
        self.gauge.dec_by(*self.part.get_mut());
    }
}

/// Labels naming why an UPDATE is resent.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// One of [`RETRY_REASONS`].
    pub reason: String,
}

/// Labels naming an error kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// What failed (`retry`, `halt`, `dns_retry`, …).
    pub kind: String,
}

/// Labels naming a mode.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    /// One of [`State::as_str`].
    pub mode: String,
}

/// Labels naming a slot's `wal_status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WalStatusLabel {
    /// One of [`WAL_STATUSES`].
    pub status: String,
}

/// Labels of `pg2dns_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: String,
    revision: String,
}

/// Every metric pg2dns exports.
pub struct Metrics {
    registry: Registry,
    /// Committed transactions applied.
    pub transactions: Counter,
    /// Row changes read from the stream.
    pub rows: Counter,
    /// Rows refused (pg2dns.rejected).
    pub rejected: Counter,
    /// UPDATE operations handed to each primary (or zone).
    pub operations: Family<SeriesLabel, Counter>,
    /// UPDATE messages written to each primary (or zone).
    pub messages: Family<SeriesLabel, Counter>,
    /// Bytes of those messages.
    pub bytes: Family<SeriesLabel, Counter>,
    /// Failures by kind.
    pub errors: Family<KindLabel, Counter>,
    /// The LSN confirmed to the slot.
    pub confirmed_lsn: Gauge,
    /// The newest WAL position the server reported.
    pub server_lsn: Gauge,
    /// Server position minus confirmed position, in bytes.
    pub lag_bytes: Gauge,
    /// 1 for the current mode, 0 for the others.
    pub mode: Family<ModeLabel, Gauge>,
    /// Seconds from handing a transaction to a zone to its acknowledgement.
    pub ack_seconds: Family<SeriesLabel, Histogram>,
    /// Age of the oldest received transaction not yet in DNS (0: none).
    pub lag_seconds: Gauge<f64, AtomicU64>,
    /// Each zone's SOA serial, as its primary answered after an
    /// acknowledgement (with `per_zone` only: see [`Metrics::soa_serial`]).
    pub zone_soa_serial: Family<SeriesLabel, Gauge>,
    /// Transactions handed to the zones of each primary (or to each zone)
    /// and not yet acknowledged.
    pub zone_in_flight: Family<SeriesLabel, Gauge>,
    /// UPDATE messages resent (and connections retried) by primary (or
    /// zone) and reason.
    pub dns_retries: Family<(SeriesLabel, ReasonLabel), Counter>,
    /// 1 while a primary has left pending changes of a zone (of this zone,
    /// with `per_zone`) unanswered longer than `unreachable_after_s`.
    pub zone_unreachable: Family<SeriesLabel, Gauge>,
    /// 1 when `/readyz` answers 200.
    pub ready: Gauge,
    /// WAL the slot keeps from removal (`pg_current_wal_lsn() - restart_lsn`).
    pub slot_retained_wal_bytes: Gauge,
    /// WAL that can still be written before the slot is lost
    /// (`safe_wal_size`; -1 without `max_slot_wal_keep_size`).
    pub slot_safe_wal_bytes: Gauge,
    /// 1 for the slot's current `wal_status`.
    pub slot_wal_status: Family<WalStatusLabel, Gauge>,
    /// TCP connections open (or opening) to each server for UPDATEs.
    pub server_connections: Family<ServerLabel, Gauge>,
    /// The most connections open at once to each server since start.
    pub server_connections_max: Family<ServerLabel, Gauge>,
    /// The most zones of each server with an UPDATE session at once since
    /// start (a zone has one from its turn to send until acknowledged).
    pub server_sessions_max: Family<ServerLabel, Gauge>,
    /// UPDATEs awaiting an answer from each server, all zones together.
    pub server_in_flight: Family<ServerLabel, Gauge>,
    /// `pg2dns_primary_acked`: the dispatches each primary of zones with
    /// several acknowledged (per zone with `per_zone`).
    pub primary_acked: Family<PrimaryLabel, Gauge>,
    /// `pg2dns_primary_in_flight`: dispatched to it, not yet acknowledged.
    pub primary_in_flight: Family<PrimaryLabel, Gauge>,
    /// `pg2dns_primary_degraded`: the zones going on without it (1 per
    /// zone with `per_zone`).
    pub primary_degraded: Family<PrimaryLabel, Gauge>,
    state: AtomicU8,
    /// `[metrics] per_zone`: a `zone` label on the zone families.
    per_zone: AtomicBool,
    unreachable: Mutex<Unreachable>,
}

/// The (zone, server) pairs unreachable, and how many per server (the
/// server's gauge without a scan of 50,000 zones per change).
#[derive(Debug, Default)]
struct Unreachable {
    zones: BTreeSet<(String, String)>,
    per_server: std::collections::HashMap<String, usize>,
}

/// Zones `/readyz` names at most; the others are counted. A server down
/// behind 50,000 zones would otherwise answer with megabytes naming each.
pub const READYZ_ZONES: usize = 8;

/// Why not ready: the first [`READYZ_ZONES`] unreachable zones (in name
/// order), then how many more.
fn unreachable_reason(set: &BTreeSet<(String, String)>) -> String {
    let mut why = set
        .iter()
        .take(READYZ_ZONES)
        .map(|(zone, server)| format!("zone {zone}: primary {server} unreachable"))
        .collect::<Vec<_>>()
        .join("; ");
    let more = set.len().saturating_sub(READYZ_ZONES);
    if more > 0 {
        why.push_str(&format!(
            "; and {more} more zones whose primary is unreachable (`pg2dns status` lists them)"
        ));
    }
    why
}

fn lsn_gauge(lsn: pg2dns_decoder::Lsn) -> i64 {
    i64::try_from(lsn.raw()).unwrap_or(i64::MAX)
}

impl Metrics {
    fn new() -> Metrics {
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("pg2dns");
        let m = Metrics {
            transactions: Counter::default(),
            rows: Counter::default(),
            rejected: Counter::default(),
            operations: Family::default(),
            messages: Family::default(),
            bytes: Family::default(),
            errors: Family::default(),
            confirmed_lsn: Gauge::default(),
            server_lsn: Gauge::default(),
            lag_bytes: Gauge::default(),
            mode: Family::default(),
            ack_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            lag_seconds: Gauge::default(),
            zone_soa_serial: Family::default(),
            zone_in_flight: Family::default(),
            dns_retries: Family::default(),
            zone_unreachable: Family::default(),
            ready: Gauge::default(),
            slot_retained_wal_bytes: Gauge::default(),
            slot_safe_wal_bytes: Gauge::default(),
            slot_wal_status: Family::default(),
            server_connections: Family::default(),
            server_connections_max: Family::default(),
            server_sessions_max: Family::default(),
            server_in_flight: Family::default(),
            primary_acked: Family::default(),
            primary_in_flight: Family::default(),
            primary_degraded: Family::default(),
            state: AtomicU8::new(0),
            per_zone: AtomicBool::new(false),
            unreachable: Mutex::new(Unreachable::default()),
            registry: Registry::default(),
        };
        registry.register(
            "transactions",
            "Committed transactions applied",
            m.transactions.clone(),
        );
        registry.register(
            "rows",
            "Row changes read from the replication stream",
            m.rows.clone(),
        );
        registry.register(
            "rejected_rows",
            "Rows refused and recorded in pg2dns.rejected",
            m.rejected.clone(),
        );
        registry.register(
            "update_operations",
            "UPDATE operations handed to the zones of each primary (each zone with [metrics] per_zone)",
            m.operations.clone(),
        );
        registry.register(
            "update_messages",
            "UPDATE messages written to each primary (by zone with [metrics] per_zone)",
            m.messages.clone(),
        );
        registry.register(
            "update_bytes",
            "Bytes of UPDATE messages written",
            m.bytes.clone(),
        );
        registry.register("errors", "Failures by kind", m.errors.clone());
        registry.register(
            "confirmed_lsn",
            "The LSN confirmed to the replication slot",
            m.confirmed_lsn.clone(),
        );
        registry.register(
            "server_lsn",
            "The newest WAL position the server reported",
            m.server_lsn.clone(),
        );
        registry.register(
            "lag_bytes",
            "Server WAL position minus the confirmed position",
            m.lag_bytes.clone(),
        );
        registry.register(
            "mode",
            "1 for this process's state: starting, standby, running, paused, halted, held (by the mass-delete guard) or stopped",
            m.mode.clone(),
        );
        registry.register(
            "ack_seconds",
            "Seconds from handing a transaction to a zone to the server's acknowledgement",
            m.ack_seconds.clone(),
        );
        registry.register(
            "lag_seconds",
            "Age in seconds of the oldest received transaction not yet acknowledged by every zone (0 when all is in DNS)",
            m.lag_seconds.clone(),
        );
        registry.register(
            "zone_soa_serial",
            "Each zone's SOA serial as its primary answered after the last acknowledgement (only with [metrics] per_zone = true)",
            m.zone_soa_serial.clone(),
        );
        registry.register(
            "zone_in_flight",
            "Transactions handed to the zones of each primary (each zone with [metrics] per_zone) and not yet acknowledged",
            m.zone_in_flight.clone(),
        );
        registry.register(
            "dns_retries",
            "UPDATE messages resent and connections retried, by primary (and zone with [metrics] per_zone) and reason (servfail, timeout, disconnected, unreachable: connection refused or failed, malformed)",
            m.dns_retries.clone(),
        );
        registry.register(
            "zone_unreachable",
            "1 while the primary has left pending changes of one of its zones (of this zone with [metrics] per_zone) unanswered for longer than [limits] unreachable_after_s",
            m.zone_unreachable.clone(),
        );
        registry.register(
            "ready",
            "1 while /readyz answers 200: streaming, and every primary answers",
            m.ready.clone(),
        );
        registry.register_with_unit(
            "slot_retained_wal",
            "WAL the replication slot keeps from removal (pg_current_wal_lsn() - restart_lsn)",
            Unit::Bytes,
            m.slot_retained_wal_bytes.clone(),
        );
        registry.register_with_unit(
            "slot_safe_wal",
            "WAL that can still be written before the slot is lost (pg_replication_slots.safe_wal_size; -1 when max_slot_wal_keep_size is unlimited)",
            Unit::Bytes,
            m.slot_safe_wal_bytes.clone(),
        );
        registry.register(
            "slot_wal_status",
            "1 for the replication slot's wal_status (reserved, extended, unreserved, lost)",
            m.slot_wal_status.clone(),
        );
        registry.register(
            "server_connections",
            "TCP connections open or opening to each server for UPDATEs, shared by its zones (at most its [[server]] connections)",
            m.server_connections.clone(),
        );
        registry.register(
            "server_connections_max",
            "The most TCP connections open at once to each server for UPDATEs since start",
            m.server_connections_max.clone(),
        );
        registry.register(
            "server_sessions_max",
            "The most zones of the server with an UPDATE session at once since start: a zone has one from its turn to send until its changes are acknowledged, so about [[server]] max_in_flight at most however many zones a transaction touches",
            m.server_sessions_max.clone(),
        );
        registry.register(
            "server_in_flight",
            "UPDATE messages awaiting an answer from each server, all its zones together (at most its [[server]] max_in_flight)",
            m.server_in_flight.clone(),
        );
        registry.register(
            "primary_acked",
            "Transactions (dispatches) each primary of zones with several primaries acknowledged in this session, summed over its zones (each zone with [metrics] per_zone)",
            m.primary_acked.clone(),
        );
        registry.register(
            "primary_in_flight",
            "Transactions handed to each primary of zones with several primaries and not yet acknowledged by it, summed over its zones (each zone with [metrics] per_zone)",
            m.primary_in_flight.clone(),
        );
        registry.register(
            "primary_degraded",
            "Zones with several primaries that go on without this primary (it made no progress for its degrade_after); with [metrics] per_zone, 1 per zone while it does",
            m.primary_degraded.clone(),
        );
        registry.register(
            "build",
            "The pg2dns version and the revision it was built from",
            Info::new(BuildLabel {
                version: env!("CARGO_PKG_VERSION").into(),
                revision: option_env!("PG2DNS_REVISION").unwrap_or("unknown").into(),
            }),
        );
        // Every series that would otherwise appear only with its first
        // event exists from start, at 0.
        for kind in ERROR_KINDS {
            drop(m.errors.get_or_create(&KindLabel { kind: kind.into() }));
        }
        for status in WAL_STATUSES {
            drop(m.slot_wal_status.get_or_create(&WalStatusLabel {
                status: status.into(),
            }));
        }
        let _ = registry;
        Metrics {
            registry: root,
            ..m
        }
    }

    /// Sets `[metrics] per_zone`: read once, before the first zone's series
    /// are created.
    pub fn set_per_zone(&self, per_zone: bool) {
        self.per_zone.store(per_zone, Ordering::Relaxed);
    }

    /// Whether the zone families are labelled by zone.
    pub fn per_zone(&self) -> bool {
        self.per_zone.load(Ordering::Relaxed)
    }

    /// The series of `zone` on its primary `server`: labelled by the server
    /// alone unless `per_zone`.
    pub fn series(&self, zone: &str, server: &str) -> SeriesLabel {
        SeriesLabel {
            zone: self.per_zone().then(|| zone.to_owned()),
            server: server.to_owned(),
        }
    }

    /// Creates the series of a zone (at 0) so that they exist from start.
    pub fn zone(&self, zone: &str, server: &str) {
        let label = self.series(zone, server);
        drop(self.operations.get_or_create(&label));
        drop(self.messages.get_or_create(&label));
        drop(self.bytes.get_or_create(&label));
        drop(self.zone_in_flight.get_or_create(&label));
        for reason in RETRY_REASONS {
            drop(self.dns_retries.get_or_create(&(
                label.clone(),
                ReasonLabel {
                    reason: reason.into(),
                },
            )));
        }
        drop(self.zone_unreachable.get_or_create(&label));
    }

    /// The `pg2dns_primary_*` series of `primary` for `zone`: the
    /// primary's alone unless `per_zone`.
    pub fn primary_series(&self, zone: &str, primary: &str) -> PrimaryLabel {
        PrimaryLabel {
            zone: self.per_zone().then(|| zone.to_owned()),
            primary: primary.to_owned(),
        }
    }

    /// Records `zone`'s SOA serial as its primary `server` answered; a
    /// serial is a zone's own, so without `per_zone` it is not exported
    /// (`pg2dns status` shows each zone's).
    pub fn soa_serial(&self, zone: &str, server: &str, serial: u32) {
        if self.per_zone() {
            self.zone_soa_serial
                .get_or_create(&self.series(zone, server))
                .set(i64::from(serial));
        }
    }

    /// Sets the in-flight gauges: `in_flight` holds (zone, server, count)
    /// of every zone; without `per_zone` each primary's zones are summed.
    pub fn in_flight<'a>(&self, in_flight: impl IntoIterator<Item = (&'a str, &'a str, i64)>) {
        let mut sums: std::collections::BTreeMap<SeriesLabel, i64> =
            std::collections::BTreeMap::new();
        for (zone, server, count) in in_flight {
            *sums.entry(self.series(zone, server)).or_insert(0) += count;
        }
        for (label, sum) in sums {
            self.zone_in_flight.get_or_create(&label).set(sum);
        }
    }

    /// Records the state (and readiness).
    pub fn set_state(&self, state: State) {
        for s in State::ALL {
            self.mode
                .get_or_create(&ModeLabel {
                    mode: s.as_str().into(),
                })
                .set(i64::from(s == state));
        }
        let index = State::ALL.iter().position(|s| *s == state).unwrap_or(0);
        self.state
            .store(u8::try_from(index).unwrap_or(0), Ordering::Relaxed);
        self.update_ready();
    }

    /// The state last recorded.
    pub fn state(&self) -> State {
        State::ALL
            .get(usize::from(self.state.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or(State::Starting)
    }

    /// Records whether `zone`'s primary `server` is unreachable. Without
    /// `per_zone` the server's gauge is 1 while any of its zones is.
    pub fn set_unreachable(&self, zone: &str, server: &str, unreachable: bool) {
        let value = {
            let mut set = self.unreachable.lock().unwrap_or_else(|e| e.into_inner());
            let key = (zone.to_owned(), server.to_owned());
            if unreachable {
                if set.zones.insert(key) {
                    *set.per_server.entry(server.to_owned()).or_default() += 1;
                }
            } else if set.zones.remove(&key) {
                if let Some(n) = set.per_server.get_mut(server) {
                    *n -= 1;
                    if *n == 0 {
                        set.per_server.remove(server);
                    }
                }
            }
            if self.per_zone() {
                unreachable
            } else {
                set.per_server.contains_key(server)
            }
        };
        self.zone_unreachable
            .get_or_create(&self.series(zone, server))
            .set(i64::from(value));
        self.update_ready();
    }

    /// Forgets every zone's unreachability (a session ended).
    pub fn clear_unreachable(&self) {
        let zones: Vec<(String, String)> = self
            .unreachable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .zones
            .iter()
            .cloned()
            .collect();
        for (zone, server) in zones {
            self.set_unreachable(&zone, &server, false);
        }
    }

    /// Records the slot's `wal_status`, retained WAL and `safe_wal_size`.
    pub fn slot_wal(&self, status: &str, retained: i64, safe: Option<i64>) {
        for s in WAL_STATUSES {
            self.slot_wal_status
                .get_or_create(&WalStatusLabel { status: s.into() })
                .set(i64::from(s == status));
        }
        self.slot_retained_wal_bytes.set(retained);
        self.slot_safe_wal_bytes.set(safe.unwrap_or(-1));
    }

    fn update_ready(&self) {
        // Not `readiness()`, which formats its message: called for each of
        // 50,000 zones turning unreachable, that was quadratic (when it
        // named every zone) and stalled the service for minutes.
        let ready = self.state() == State::Running
            && self
                .unreachable
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .zones
                .is_empty();
        self.ready.set(i64::from(ready));
    }

    /// `Ok` when ready, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        let state = self.state();
        if state != State::Running {
            return Err(match state {
                State::Standby => "standby: another instance streams from the slot".into(),
                State::Held => "held: the mass-delete guard holds a transaction".into(),
                other => other.as_str().to_owned(),
            });
        }
        let set = self.unreachable.lock().unwrap_or_else(|e| e.into_inner());
        if set.zones.is_empty() {
            return Ok(());
        }
        Err(unreachable_reason(&set.zones))
    }

    /// Records a confirmation to the slot.
    pub fn confirmed(&self, lsn: pg2dns_decoder::Lsn) {
        self.confirmed_lsn.set(lsn_gauge(lsn));
        self.update_lag();
    }

    /// Records the server's WAL position.
    pub fn server_at(&self, lsn: pg2dns_decoder::Lsn) {
        self.server_lsn.set(lsn_gauge(lsn));
        self.update_lag();
    }

    fn update_lag(&self) {
        let lag = self.server_lsn.get() - self.confirmed_lsn.get();
        self.lag_bytes.set(lag.max(0));
    }

    /// Counts a failure.
    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// The metrics in OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The metrics in the Prometheus text format 0.0.4
    /// ([`TEXT_CONTENT_TYPE`]).
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = Metrics::new();
        m.set_state(State::Starting);
        m
    })
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` in the background.
/// A port that cannot be bound (another instance on this host holds it, as
/// with a standby) is tried again every [`BIND_RETRY`], so that the instance
/// that takes over the slot also takes over the health checks; it is a
/// warning, never a failure: the stream matters more than its dashboard.
pub async fn serve(addr: SocketAddr) {
    let metrics: &'static Metrics = get();
    let app = Router::new()
        .route(
            "/metrics",
            routing::get(move |headers: axum::http::HeaderMap| async move {
                let openmetrics = headers
                    .get_all(header::ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| v.contains("application/openmetrics-text"));
                if openmetrics {
                    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render())
                } else {
                    (
                        [(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)],
                        metrics.render_text(),
                    )
                }
            }),
        )
        .route("/healthz", routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            routing::get(move || async move {
                match metrics.readiness() {
                    Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                    Err(why) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {why}\n"),
                    ),
                }
            }),
        );
    let mut warned = false;
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if !warned => {
                warn!(%addr, error = %e, "cannot listen for metrics and health; trying again every {BIND_RETRY:?}");
                warned = true;
            }
            Err(e) => debug!(%addr, error = %e, "cannot listen for metrics and health yet"),
        }
        tokio::time::sleep(BIND_RETRY).await;
    };
    info!(%addr, "metrics and health on http://{addr}/metrics, /healthz, /readyz");
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "the metrics listener stopped");
    }
}

/// How often a metrics port that is taken is tried again.
pub const BIND_RETRY: Duration = Duration::from_secs(2);

/// The standard `process_*` metrics, read from `/proc/self` at each scrape.
///
/// Why by hand: `prometheus-client` has no process collector (the older
/// `prometheus` crate has one, but pulling a second metrics library in for
/// four numbers is not worth it). Linux only, as pg2dns is; on another
/// system, or if `/proc` is unreadable, the series are left out.
#[derive(Debug)]
struct ProcessCollector;

/// Clock ticks per second of `/proc/self/stat` (`sysconf(_SC_CLK_TCK)`,
/// 100 on every Linux architecture pg2dns builds for).
const CLOCK_TICKS: f64 = 100.0;

impl ProcessCollector {
    /// (CPU seconds, start time in Unix seconds, resident bytes).
    fn stat() -> Option<(f64, f64, i64)> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) may hold spaces: fields after it are
        // counted from its closing parenthesis.
        let rest = stat.get(stat.rfind(')')? + 2..)?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Field n of proc(5) is fields[n - 3].
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        let cpu = (field(14)? + field(15)?) / CLOCK_TICKS;
        let start_ticks = field(22)?;
        let rss_pages = field(24)?;
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs_f64();
        let start = now - uptime + start_ticks / CLOCK_TICKS;
        // Pages of 4 KiB on x86_64 and aarch64 as configured by default.
        Some((cpu, start, (rss_pages * 4096.0) as i64))
    }

    fn open_fds() -> Option<i64> {
        Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as i64)
    }
}

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        if let Some((cpu, start, rss)) = Self::stat() {
            let c = ConstCounter::new(cpu);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?)?;
            let g = ConstGauge::new(start);
            g.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                None,
                g.metric_type(),
            )?)?;
            let g = ConstGauge::new(rss);
            g.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                g.metric_type(),
            )?)?;
        }
        if let Some(fds) = Self::open_fds() {
            let g = ConstGauge::new(fds);
            g.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family has HELP and TYPE, the counters' samples end in
    /// `_total`, and the exposition ends with `# EOF` (OpenMetrics).
    #[test]
    fn every_family_has_help_and_type_and_counters_exist_from_start() {
        let m = Metrics::new();
        m.set_per_zone(true);
        m.zone("example.com.", "127.0.0.1:53");
        m.set_state(State::Standby);
        let text = m.render();
        assert!(text.ends_with("# EOF\n"), "{text}");
        let mut helped = BTreeSet::new();
        let mut typed = std::collections::BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.insert(rest.split(' ').next().unwrap_or("").to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let name = it.next().unwrap_or("").to_owned();
                typed.insert(name, it.next().unwrap_or("").to_owned());
            }
        }
        assert_eq!(helped, typed.keys().cloned().collect::<BTreeSet<_>>());
        for family in [
            "pg2dns_errors",
            "pg2dns_dns_retries",
            "pg2dns_zone_unreachable",
            "pg2dns_ready",
            "pg2dns_slot_retained_wal_bytes",
            "pg2dns_slot_wal_status",
            "pg2dns_build",
            "process_cpu_seconds",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(typed.contains_key(family), "{family} missing in\n{text}");
        }
        assert_eq!(typed["pg2dns_errors"], "counter");
        assert!(
            text.contains("pg2dns_errors_total{kind=\"retry\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("pg2dns_dns_retries_total{zone=\"example.com.\",server=\"127.0.0.1:53\",reason=\"timeout\"} 0"),
            "{text}"
        );
        assert!(text.contains("pg2dns_build_info{version=\""), "{text}");
        assert!(text.contains("pg2dns_mode{mode=\"standby\"} 1"), "{text}");
        assert!(text.contains("pg2dns_ready 0"), "{text}");
    }

    #[test]
    fn ready_only_while_running_and_every_primary_answers() {
        let m = Metrics::new();
        m.zone("example.com.", "127.0.0.1:53");
        m.set_state(State::Standby);
        assert!(m.readiness().unwrap_err().starts_with("standby"));
        m.set_state(State::Running);
        assert_eq!(m.readiness(), Ok(()));
        m.set_unreachable("example.com.", "127.0.0.1:53", true);
        assert_eq!(
            m.readiness(),
            Err("zone example.com.: primary 127.0.0.1:53 unreachable".into())
        );
        assert_eq!(m.ready.get(), 0);
        m.set_unreachable("example.com.", "127.0.0.1:53", false);
        assert_eq!(m.ready.get(), 1);
    }

    #[test]
    fn readyz_names_the_first_zones_and_counts_the_rest() {
        let m = Metrics::new();
        m.set_state(State::Running);
        for i in 0..50_000 {
            m.set_unreachable(&format!("z{i:05}.example."), "127.0.0.1:53", true);
        }
        let why = m.readiness().unwrap_err();
        assert!(
            why.starts_with(
                "zone z00000.example.: primary 127.0.0.1:53 unreachable; zone z00001.example.:"
            ),
            "{why}"
        );
        assert_eq!(why.matches("zone z").count(), READYZ_ZONES, "{why}");
        assert!(
            why.ends_with(
                "; and 49992 more zones whose primary is unreachable (`pg2dns status` lists them)"
            ),
            "{why}"
        );
        assert!(why.len() < 1024, "{} bytes", why.len());
        assert_eq!(m.ready.get(), 0);
        for i in 0..50_000 {
            m.set_unreachable(&format!("z{i:05}.example."), "127.0.0.1:53", false);
        }
        assert_eq!(m.readiness(), Ok(()));
        assert_eq!(m.ready.get(), 1);
    }

    /// Every zone of a primary fed the way the pipeline and the status
    /// publisher do: its series created, an operation, a message, an
    /// acknowledgement, a retry, its in-flight count, an unreachable spell
    /// and its SOA serial.
    fn feed(m: &Metrics, zones: usize, server: &str) -> String {
        let names: Vec<String> = (0..zones).map(|i| format!("z{i}.example.")).collect();
        for zone in &names {
            m.zone(zone, server);
            let label = m.series(zone, server);
            m.operations.get_or_create(&label).inc_by(3);
            m.messages.get_or_create(&label).inc();
            m.bytes.get_or_create(&label).inc_by(120);
            m.ack_seconds.get_or_create(&label).observe(0.004);
            m.dns_retries
                .get_or_create(&(
                    label,
                    ReasonLabel {
                        reason: "timeout".into(),
                    },
                ))
                .inc();
            m.soa_serial(zone, server, 7);
        }
        m.in_flight(names.iter().map(|z| (z.as_str(), server, 1)));
        m.set_unreachable(&names[0], server, true);
        // Without the process_* lines, whose numbers vary between renders.
        m.render()
            .lines()
            .filter(|l| !l.contains("process_"))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn by_default_a_thousand_zones_on_one_primary_scrape_as_one_zone_does() {
        let one = feed(&Metrics::new(), 1, "192.0.2.53:53");
        let thousand = feed(&Metrics::new(), 1000, "192.0.2.53:53");
        // The same series; only the counts (3 vs 3000 operations …) differ.
        assert!(
            thousand.len() <= one.len() + 200,
            "1 zone: {} bytes, 1000 zones: {} bytes\n{thousand}",
            one.len(),
            thousand.len()
        );
        assert!(!thousand.contains("zone=\""), "{thousand}");
        assert!(!thousand.contains("pg2dns_zone_soa_serial{"), "{thousand}");
        for sample in [
            "pg2dns_update_operations_total{server=\"192.0.2.53:53\"} 3000",
            "pg2dns_update_messages_total{server=\"192.0.2.53:53\"} 1000",
            "pg2dns_ack_seconds_count{server=\"192.0.2.53:53\"} 1000",
            "pg2dns_dns_retries_total{server=\"192.0.2.53:53\",reason=\"timeout\"} 1000",
            "pg2dns_zone_in_flight{server=\"192.0.2.53:53\"} 1000",
            "pg2dns_zone_unreachable{server=\"192.0.2.53:53\"} 1",
        ] {
            assert!(thousand.contains(sample), "{sample} missing in\n{thousand}");
        }
        // per_zone: every zone its own series, and its serial.
        let m = Metrics::new();
        m.set_per_zone(true);
        let per_zone = feed(&m, 1000, "192.0.2.53:53");
        assert!(
            per_zone.len() > 100 * one.len(),
            "per_zone: {} bytes",
            per_zone.len()
        );
        for sample in [
            "pg2dns_update_operations_total{zone=\"z999.example.\",server=\"192.0.2.53:53\"} 3",
            "pg2dns_zone_soa_serial{zone=\"z5.example.\",server=\"192.0.2.53:53\"} 7",
            "pg2dns_zone_in_flight{zone=\"z5.example.\",server=\"192.0.2.53:53\"} 1",
            "pg2dns_zone_unreachable{zone=\"z0.example.\",server=\"192.0.2.53:53\"} 1",
            "pg2dns_zone_unreachable{zone=\"z1.example.\",server=\"192.0.2.53:53\"} 0",
        ] {
            assert!(per_zone.contains(sample), "{sample} missing");
        }
    }

    /// The `pg2dns_primary_*` parts of `zones` zones with primaries ns1 and
    /// ns2: ns1 acknowledged 4 of 5 dispatches of each, ns2 none, and ns2
    /// is degraded in every zone but the first; the scrape's primary lines.
    fn feed_primaries(m: &Metrics, zones: usize) -> (Vec<[GaugeShare; 3]>, String) {
        let mut shares = Vec::new();
        for i in 0..zones {
            let zone = format!("z{i}.example.");
            for (primary, acked, degraded) in [("ns1", 4, false), ("ns2", 0, i > 0)] {
                let label = m.primary_series(&zone, primary);
                let share = [
                    GaugeShare::of(m.primary_acked.get_or_create(&label).clone()),
                    GaugeShare::of(m.primary_in_flight.get_or_create(&label).clone()),
                    GaugeShare::of(m.primary_degraded.get_or_create(&label).clone()),
                ];
                for _ in 0..5 {
                    share[1].inc();
                }
                share[0].set(acked);
                share[1].set(5 - acked);
                share[2].set(i64::from(degraded));
                shares.push(share);
            }
        }
        let lines = m
            .render()
            .lines()
            .filter(|l| l.starts_with("pg2dns_primary_"))
            .map(|l| format!("{l}\n"))
            .collect();
        (shares, lines)
    }

    #[test]
    fn by_default_the_primary_series_sum_each_primarys_zones_and_per_zone_names_each() {
        let m = Metrics::new();
        let (shares, scrape) = feed_primaries(&m, 1000);
        // Two primaries × three families, whatever the zone count.
        assert_eq!(scrape.lines().count(), 6, "{scrape}");
        assert!(!scrape.contains("zone=\""), "{scrape}");
        for sample in [
            "pg2dns_primary_acked{primary=\"ns1\"} 4000",
            "pg2dns_primary_acked{primary=\"ns2\"} 0",
            "pg2dns_primary_in_flight{primary=\"ns1\"} 1000",
            "pg2dns_primary_in_flight{primary=\"ns2\"} 5000",
            "pg2dns_primary_degraded{primary=\"ns1\"} 0",
            "pg2dns_primary_degraded{primary=\"ns2\"} 999",
        ] {
            assert!(scrape.contains(sample), "{sample} missing in\n{scrape}");
        }
        // A session ending takes its zones' parts out: the next session's
        // parts are not counted on top of them.
        drop(shares);
        let (_shares, again) = feed_primaries(&m, 1000);
        assert_eq!(again, scrape);
        // per_zone: a series per zone and primary, each its own value.
        let m = Metrics::new();
        m.set_per_zone(true);
        let (_shares, per_zone) = feed_primaries(&m, 1000);
        assert_eq!(per_zone.lines().count(), 6000);
        for sample in [
            "pg2dns_primary_acked{zone=\"z7.example.\",primary=\"ns1\"} 4",
            "pg2dns_primary_in_flight{zone=\"z7.example.\",primary=\"ns2\"} 5",
            "pg2dns_primary_degraded{zone=\"z0.example.\",primary=\"ns2\"} 0",
            "pg2dns_primary_degraded{zone=\"z7.example.\",primary=\"ns2\"} 1",
        ] {
            assert!(per_zone.contains(sample), "{sample} missing");
        }
    }

    #[test]
    fn a_primary_is_unreachable_while_any_of_its_zones_is() {
        let m = Metrics::new();
        let gauge = |m: &Metrics| {
            m.zone_unreachable
                .get_or_create(&m.series("a.test.", "192.0.2.1:53"))
                .get()
        };
        m.zone("a.test.", "192.0.2.1:53");
        m.zone("b.test.", "192.0.2.1:53");
        m.set_unreachable("a.test.", "192.0.2.1:53", true);
        m.set_unreachable("b.test.", "192.0.2.1:53", true);
        m.set_unreachable("a.test.", "192.0.2.1:53", false);
        assert_eq!(gauge(&m), 1, "b.test. still waits");
        m.set_unreachable("b.test.", "192.0.2.1:53", false);
        assert_eq!(gauge(&m), 0);
    }
}
