//! Metrics and health over HTTP: `/metrics` (Prometheus text format),
//! `/healthz` (the process is alive) and `/readyz` (streaming, not paused or
//! halted).
//!
//! Built on `prometheus-client` (the Prometheus project's Rust client) and
//! `axum`, listening on loopback by default (`[metrics] listen`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

use axum::http::StatusCode;
use axum::routing;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tracing::{info, warn};

/// Labels naming a zone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneLabel {
    /// The zone apex.
    pub zone: String,
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
    /// `running`, `paused`, `halted` or `starting`.
    pub mode: String,
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
    /// UPDATE operations handed to each zone.
    pub operations: Family<ZoneLabel, Counter>,
    /// UPDATE messages written to each zone's primary.
    pub messages: Family<ZoneLabel, Counter>,
    /// Bytes of those messages.
    pub bytes: Family<ZoneLabel, Counter>,
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
    pub ack_seconds: Family<ZoneLabel, Histogram>,
    /// Age of the oldest received transaction not yet in DNS (0: none).
    pub lag_seconds: Gauge<f64, AtomicU64>,
    /// Each zone's SOA serial, as its primary answered after an
    /// acknowledgement.
    pub zone_soa_serial: Family<ZoneLabel, Gauge>,
    /// Transactions handed to each zone and not yet acknowledged.
    pub zone_in_flight: Family<ZoneLabel, Gauge>,
    ready: AtomicU8,
}

fn lsn_gauge(lsn: pg2dns_decoder::Lsn) -> i64 {
    i64::try_from(lsn.raw()).unwrap_or(i64::MAX)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pg2dns");
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
            ready: AtomicU8::new(0),
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
            "UPDATE operations handed to each zone",
            m.operations.clone(),
        );
        registry.register(
            "update_messages",
            "UPDATE messages written to each zone's primary",
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
        registry.register("mode", "1 for the current mode", m.mode.clone());
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
            "Each zone's SOA serial as its primary answered after the last acknowledgement",
            m.zone_soa_serial.clone(),
        );
        registry.register(
            "zone_in_flight",
            "Transactions handed to each zone and not yet acknowledged",
            m.zone_in_flight.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Records the mode (and readiness: only `running` is ready).
    pub fn set_mode(&self, mode: &str) {
        for m in ["starting", "running", "paused", "halted"] {
            self.mode
                .get_or_create(&ModeLabel { mode: m.into() })
                .set(i64::from(m == mode));
        }
        self.ready
            .store(u8::from(mode == "running"), Ordering::Relaxed);
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

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) == 1
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = Metrics::new();
        m.set_mode("starting");
        m
    })
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` in the background.
/// A listener that cannot bind is a warning, not a failure: the stream
/// matters more than its dashboard.
pub async fn serve(addr: SocketAddr) {
    let metrics: &'static Metrics = get();
    let app = Router::new()
        .route(
            "/metrics",
            routing::get(move || async move { metrics.render() }),
        )
        .route("/healthz", routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            routing::get(move || async move {
                if metrics.is_ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not streaming (paused, halted or starting)\n",
                    )
                }
            }),
        );
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(%addr, error = %e, "cannot listen for metrics; continuing without them");
            return;
        }
    };
    info!(%addr, "metrics and health on http://{addr}/metrics, /healthz, /readyz");
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "the metrics listener stopped");
    }
}
