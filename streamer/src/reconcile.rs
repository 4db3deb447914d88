//! `pg2dns reconcile`: prove that DNS says what the database says, and
//! repair it when something else changed the zones.
//!
//! ```text
//!  SELECT * FROM pg2dns.rr and each source table
//!        ─▶ mappings + plan (as the stream) ─▶ desired records ──────────────────┐
//!                                                                                ├─▶ diff ─▶ report
//!  AXFR (TSIG-verified) of each zone ─▶ actual records ──────────────────────────┘     │
//!                                                                        --apply ─▶ repair UPDATEs
//!                                                     (SOA-guarded; NXRRSET ─▶ fresh AXFR, retry)
//!                                                                                      │
//!                                                          row state of the zone := the desired rows
//! ```
//!
//! Why the plan: the desired side must be what the stream would publish,
//! so each row goes through the stream's mapping and planner (one row per
//! segment, in `id` order, as if each had been inserted on its own). A row
//! the stream refuses (a CNAME beside other data, past the RRset limit, a
//! host name `check_names` refuses) is not desired, and an RRset takes the
//! smallest TTL its rows give.
//!
//! Why a fresh transfer on NXRRSET or YXRRSET: each repair UPDATE carries the
//! apex SOA it expects (RFC 2136 §2.4.2); the server refuses it as a whole
//! when the zone changed since the transfer, and the difference must then be
//! computed again. After a message is applied the next one expects the
//! serial one higher (BIND's and Knot's default); a server with another
//! serial policy fails that guard too, which costs one transfer.
//!
//! Why it is exact while writers commit: a running service is paused at the
//! consistent point of an exported snapshot, the tables are read at that
//! snapshot and the zones transferred while it waits (see [`reconcile`]).
//!
//! Why names and types can be excluded, and rows can wait: the stream and
//! reconcile must agree on what pg2dns owns. Excluded records are refused by
//! the planner (so never desired) and not owned by the comparison; an MX or
//! SRV whose target has no address yet is held back by both, and a repair
//! rewrites `pg2dns.waiting` with the row state.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::TryStreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pg2dns_decoder::diff::{self, ZoneDiff};
use pg2dns_decoder::mapping::{RowKey, RowUpdate};
use pg2dns_decoder::plan::{Loaded, Planner, SourceId};
use pg2dns_decoder::row::TextRow;
use pg2dns_decoder::session::Rcode;
use pg2dns_decoder::tsig::{self, TsigError};
use pg2dns_decoder::update::Budget;
use pg2dns_decoder::{Lsn, Owner, RType, Record, ZoneId, ZoneName};
use tracing::{info, warn};

use crate::config::{Config, ZoneConfig};
use crate::dns::axfr::{self, AxfrError, Transfer};
use crate::dns::Connection;
use crate::store::{sql, Store, StoreError};

/// Zones with at most this many owned records are never refused by the
/// safety threshold.
pub const MIN_RECORDS_FOR_THRESHOLD: usize = 10;
/// How many times a repair starts again from a fresh transfer without
/// progress before it gives up.
pub const MAX_GUARD_FAILURES: usize = 3;
/// Test hook: milliseconds to wait between the transfer and the first
/// repair message (lets a test change the zone meanwhile).
pub const PAUSE_BEFORE_REPAIR_ENV: &str = "PG2DNS_TEST_PAUSE_BEFORE_REPAIR_MS";

/// What the operator asked for.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Zones to reconcile (all configured zones when empty).
    pub zones: Vec<String>,
    /// Send the repair.
    pub apply: bool,
    /// Apply even a repair past the safety threshold.
    pub force: bool,
    /// Send the repair without the SOA prerequisite (for servers that check
    /// prerequisites against another SOA than they serve, such as BIND
    /// with inline signing); only safe while nothing else updates the zone.
    pub unguarded: bool,
    /// Show a progress bar on stderr (drawn only when it is a terminal).
    pub progress: bool,
}

/// Why reconciling failed as a whole (per-zone failures are in the report).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A `--zone` names no configured zone.
    #[error("zone {0} is not configured")]
    UnknownZone(String),
    /// The database could not be read or the row state written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The snapshot to compare at could not be exported.
    #[error("cannot export a snapshot to compare at")]
    Snapshot(#[from] crate::replication::ReplicationError),
    /// The running service did not reach the comparison point in time.
    #[error("the running pg2dns did not pause at {what} within {waited:?}; is it halted? (`pg2dns status`)")]
    NoPause {
        /// Which pause.
        what: String,
        /// How long reconcile waited.
        waited: std::time::Duration,
    },
}

/// Why one zone could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// The transfer failed.
    #[error(transparent)]
    Axfr(#[from] AxfrError),
    /// A repair could not be planned.
    #[error("zone {zone}: cannot plan the repair")]
    Plan {
        /// The zone.
        zone: ZoneName,
        /// Why.
        #[source]
        source: diff::RepairError,
    },
    /// A repair UPDATE failed.
    #[error("zone {zone}: repair UPDATE to {server} failed: {detail}")]
    Update {
        /// The zone.
        zone: ZoneName,
        /// The server.
        server: SocketAddr,
        /// What happened.
        detail: String,
    },
    /// The server refused a repair UPDATE.
    #[error("zone {zone}: {server} answered a repair UPDATE with {rcode}: {hint}")]
    Refused {
        /// The zone.
        zone: ZoneName,
        /// The server.
        server: SocketAddr,
        /// The answer.
        rcode: Rcode,
        /// What it usually means.
        hint: &'static str,
    },
    /// The SOA guard kept failing: someone keeps changing the zone.
    #[error("zone {zone}: the zone changed during the repair {attempts} times in a row (SOA prerequisite failed); stop whatever else updates it and run again")]
    KeepsChanging {
        /// The zone.
        zone: ZoneName,
        /// Failures without progress.
        attempts: usize,
    },
    /// The SOA guard failed although the zone's SOA did not change: the
    /// server checks prerequisites against another SOA than it serves.
    #[error("zone {zone}: {server} refuses the SOA prerequisite although the SOA it serves did not change; it checks UPDATE prerequisites against another SOA (BIND with inline-signing does: its unsigned zone has its own serial). Repair with --unguarded while nothing else updates the zone")]
    GuardUnusable {
        /// The zone.
        zone: ZoneName,
        /// The server.
        server: SocketAddr,
    },
    /// The row state could not be written.
    #[error("zone {zone}: cannot bring pg2dns.row_state in line")]
    State {
        /// The zone.
        zone: ZoneName,
        /// Why.
        #[source]
        source: StoreError,
    },
}

/// What was done to one zone.
#[derive(Debug)]
pub struct ZoneOutcome {
    /// The zone.
    pub zone: ZoneName,
    /// The comparison before any repair (`None` if it failed).
    pub diff: Option<ZoneDiff>,
    /// Records in the first transfer (all of them, SOA included).
    pub transferred: usize,
    /// Time the first transfer took.
    pub axfr_time: Duration,
    /// Time the first comparison took.
    pub diff_time: Duration,
    /// Time the repair took, its transfers included.
    pub repair_time: Duration,
    /// After a repair that left the zone in sync: the wanted MX and SRV
    /// records still waiting for their target's address.
    pub waiting_after: Vec<Record>,
    /// The repair was refused by the safety threshold.
    pub refused_by_threshold: bool,
    /// Repair messages the server accepted.
    pub messages_applied: usize,
    /// Times the repair started again from a fresh transfer.
    pub retries: usize,
    /// After `--apply`: whether a final transfer showed the zone in sync.
    pub in_sync_after: Option<bool>,
    /// The error that stopped this zone.
    pub error: Option<ZoneError>,
}

/// The whole run.
#[derive(Debug)]
pub struct Report {
    /// Rows read from the table.
    pub rows: usize,
    /// Rows the stream would refuse (not desired).
    pub refused_rows: usize,
    /// Time reading the table took.
    pub read_time: Duration,
    /// Time the whole run took.
    pub total_time: Duration,
    /// How long a running service was held paused (`None`: none ran).
    pub paused_time: Option<Duration>,
    /// Per zone, in configuration order.
    pub zones: Vec<ZoneOutcome>,
    /// Whether the repair was sent.
    pub applied: bool,
}

impl Report {
    /// 0 when every zone is in sync (after the repair, with `--apply`), 1
    /// when there are differences left, 2 when a zone failed.
    pub fn exit_code(&self) -> u8 {
        if self.zones.iter().any(|z| z.error.is_some()) {
            return 2;
        }
        let in_sync = |z: &ZoneOutcome| match z.in_sync_after {
            Some(after) => after,
            None => z.diff.as_ref().is_some_and(ZoneDiff::is_in_sync),
        };
        if self.zones.iter().all(in_sync) {
            0
        } else {
            1
        }
    }

    /// A short summary for people, with ANSI colour (print it through
    /// `anstream`, which strips the colour when it is not wanted).
    pub fn human(&self) -> String {
        use anstyle::{AnsiColor, Style};
        let paint = |colour: AnsiColor, text: &str| {
            let style = Style::new().fg_color(Some(colour.into()));
            format!("{style}{text}{style:#}")
        };
        let (green, red, yellow, bold) = (
            |t: &str| paint(AnsiColor::Green, t),
            |t: &str| paint(AnsiColor::Red, t),
            |t: &str| paint(AnsiColor::Yellow, t),
            |t: &str| {
                let style = Style::new().bold();
                format!("{style}{t}{style:#}")
            },
        );
        let mut out = String::new();
        for z in &self.zones {
            let line = match (&z.diff, &z.error) {
                (None, Some(e)) => red(&format!("error: {}", crate::error::chain(e))),
                (Some(d), _) if d.is_in_sync() => {
                    green(&format!("in sync ({} records owned)", d.owned_actual))
                }
                (Some(d), _) => format!(
                    "{} ({} owned records in DNS, {} wanted)",
                    yellow(&format!(
                        "{} missing, {} extra, {} TTL differences",
                        d.missing(),
                        d.extra(),
                        d.ttl_differences()
                    )),
                    d.owned_actual,
                    d.desired
                ),
                (None, None) => "not compared".into(),
            };
            out.push_str(&format!("{}: {line}\n", bold(&z.zone.to_string())));
            if let Some(d) = &z.diff {
                if !d.waiting.is_empty() {
                    out.push_str(&format!(
                        "  {} MX/SRV record(s) wait for their target's address, as the stream holds them back (--json lists them)\n",
                        d.waiting.len()
                    ));
                }
                for (owner, o) in d.owners.iter().take(20) {
                    for r in &o.missing {
                        out.push_str(&format!("  {}\n", green(&format!("+ {r}"))));
                    }
                    for r in &o.extra {
                        out.push_str(&format!("  {}\n", red(&format!("- {r}"))));
                    }
                    for t in &o.ttl {
                        out.push_str(&format!(
                            "  ~ {owner} {} {} TTL {} → {}\n",
                            t.wanted.rtype,
                            t.wanted.rdata_text(),
                            t.actual_ttl,
                            t.wanted.ttl
                        ));
                    }
                }
                if d.owners.len() > 20 {
                    out.push_str(&format!(
                        "  … and {} more owners (--json lists all)\n",
                        d.owners.len() - 20
                    ));
                }
            }
            if z.refused_by_threshold {
                out.push_str(&format!(
                    "  repair refused: it would delete or change {:.0}% of the zone's records; check the database, then use --force\n",
                    z.diff.as_ref().map_or(0.0, ZoneDiff::change_share) * 100.0
                ));
            }
            if self.applied && z.messages_applied > 0 {
                out.push_str(&format!(
                    "  repaired with {} UPDATE(s){}\n",
                    z.messages_applied,
                    if z.retries > 0 {
                        format!(", {} retried from a fresh transfer", z.retries)
                    } else {
                        String::new()
                    }
                ));
            }
            if let Some(after) = z.in_sync_after {
                out.push_str(&if after {
                    format!("  {}\n", green("now in sync"))
                } else {
                    format!("  {}\n", red("still differs after the repair"))
                });
            }
            if let (Some(e), Some(_)) = (&z.error, &z.diff) {
                out.push_str(&format!(
                    "  {}\n",
                    red(&format!("error: {}", crate::error::chain(e)))
                ));
            }
        }
        out
    }

    /// Everything, as JSON.
    pub fn json(&self) -> serde_json::Value {
        use serde_json::json;
        let rec = |r: &Record| json!({"owner": r.owner.to_string(), "type": r.rtype.to_string(), "ttl": r.ttl, "rdata": r.rdata_text()});
        let zones: Vec<serde_json::Value> = self
            .zones
            .iter()
            .map(|z| {
                let mut v = json!({
                    "zone": z.zone.to_string(),
                    "axfr_ms": z.axfr_time.as_millis() as u64,
                    "diff_ms": z.diff_time.as_millis() as u64,
                    "repair_ms": z.repair_time.as_millis() as u64,
                    "transferred": z.transferred,
                    "refused_by_threshold": z.refused_by_threshold,
                    "messages_applied": z.messages_applied,
                    "retries": z.retries,
                    "in_sync_after": z.in_sync_after,
                    "error": z.error.as_ref().map(|e| crate::error::chain(e)),
                });
                if let Some(d) = &z.diff {
                    let all = |f: &dyn Fn(&diff::OwnerDiff) -> Vec<serde_json::Value>| {
                        d.owners.values().flat_map(f).collect::<Vec<_>>()
                    };
                    v["in_sync"] = json!(d.is_in_sync());
                    v["desired"] = json!(d.desired);
                    v["owned"] = json!(d.owned_actual);
                    v["not_owned"] = json!(d.not_owned);
                    v["change_share"] = json!(d.change_share());
                    v["waiting"] = json!(d.waiting.iter().map(rec).collect::<Vec<_>>());
                    v["missing"] = json!(all(&|o| o.missing.iter().map(rec).collect()));
                    v["extra"] = json!(all(&|o| o.extra.iter().map(rec).collect()));
                    v["ttl"] = json!(all(&|o| o
                        .ttl
                        .iter()
                        .map(|t| {
                            let mut v = rec(&t.wanted);
                            v["actual_ttl"] = json!(t.actual_ttl);
                            v
                        })
                        .collect()));
                }
                v
            })
            .collect();
        json!({
            "rows": self.rows,
            "refused_rows": self.refused_rows,
            "read_ms": self.read_time.as_millis() as u64,
            "total_ms": self.total_time.as_millis() as u64,
            "paused_ms": self.paused_time.map(|d| d.as_millis() as u64),
            "peak_rss_kib": peak_rss_kib(),
            "applied": self.applied,
            "exit_code": self.exit_code(),
            "zones": zones,
        })
    }
}

/// What the database wants: per zone, the desired records, and per row the
/// records it contributes (for the row state).
struct Desired {
    rows: usize,
    refused: usize,
    records: BTreeMap<ZoneId, Vec<Record>>,
    /// Per zone and source (index as the stream numbers them); only kept
    /// for `--apply`, which rewrites the row state.
    contributions: BTreeMap<ZoneId, BTreeMap<u16, Contributions>>,
    /// The sources' names, by index.
    sources: Vec<String>,
    /// The rows of the referenced zones tables, as read.
    refs: pg2dns_decoder::mapping::source::zones_table::ZoneRefs,
}

/// Rows of one source in one zone, each with the records it contributes.
type Contributions = Vec<(RowKey, Vec<Record>)>;

/// Reads `pg2dns.rr` and every `[[source]]` table now and plans their rows
/// together as the stream would (source ids as the stream numbers them).
async fn read_desired(
    store: &Store,
    config: &Config,
    snapshot: Option<&str>,
    bar: &ProgressBar,
    keep_rows: bool,
) -> Result<Desired, StoreError> {
    if let Some(name) = snapshot {
        // Snapshot names are generated by PostgreSQL (hex digits and dashes).
        let name: String = name
            .chars()
            .filter(|c| c.is_ascii_hexdigit() || *c == '-')
            .collect();
        store
            .client()
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{name}'"
            ))
            .await
            .map_err(sql("cannot read at the exported snapshot"))?;
    }
    let desired = read_desired_now(store, config, bar, keep_rows).await;
    if snapshot.is_some() {
        store
            .client()
            .batch_execute("COMMIT")
            .await
            .map_err(sql("cannot end the snapshot's transaction"))?;
    }
    desired
}

/// Reads the source tables in the connection's current transaction.
async fn read_desired_now(
    store: &Store,
    config: &Config,
    bar: &ProgressBar,
    keep_rows: bool,
) -> Result<Desired, StoreError> {
    let mut zones = config.zones();
    // The zones tables first: the record rows resolve their zone through them.
    for t in config.zones_tables() {
        let rows = crate::store::zone_ref::read_zones_table(store.client(), &t).await?;
        zones.refs_mut().replace(&t.table, rows);
    }
    let limits = config.plan_limits();
    let mappings = crate::pipeline::mappings(config);
    let mut queries = vec!["SELECT * FROM pg2dns.rr ORDER BY id".to_owned()];
    for source in &config.sources {
        let order: Vec<String> = source
            .spec()
            .key
            .iter()
            .map(|k| crate::setup::quote_ident(k))
            .collect();
        queries.push(format!(
            "SELECT * FROM {}.{} ORDER BY {}",
            crate::setup::quote_ident(source.schema()),
            crate::setup::quote_ident(source.table()),
            order.join(", ")
        ));
    }
    let mut planner = Planner::new(&zones, &limits, Loaded::default());
    let mut rows = 0;
    for (i, (mapping, query)) in mappings.iter().zip(&queries).enumerate() {
        // Streamed: a table of a million rows is never held as text.
        let messages = store
            .client()
            .simple_query_raw(query)
            .await
            .map_err(sql("cannot read a source table"))?;
        futures_util::pin_mut!(messages);
        let mut columns: Option<Arc<[String]>> = None;
        while let Some(m) = messages
            .try_next()
            .await
            .map_err(sql("cannot read a source table"))?
        {
            let tokio_postgres::SimpleQueryMessage::Row(row) = m else {
                continue;
            };
            let cols = columns
                .get_or_insert_with(|| {
                    row.columns()
                        .iter()
                        .map(|c| c.name().to_owned())
                        .collect::<Vec<_>>()
                        .into()
                })
                .clone();
            let values = (0..cols.len())
                .map(|i| row.get(i).map(str::to_owned))
                .collect();
            let row = TextRow::new(cols, values);
            let Some(key) = mapping.key(&row) else {
                continue;
            };
            rows += 1;
            if rows % 4096 == 0 {
                bar.set_position(rows as u64);
            }
            let image = mapping.records(&row, &zones);
            planner.apply(
                SourceId(i as u16),
                RowUpdate {
                    key,
                    lsn: Lsn::ZERO,
                    image,
                },
            );
            planner.end_segment();
        }
    }
    bar.set_position(rows as u64);
    let outcome = planner.finish();
    // One TTL per RRset: the smallest its rows give (as the stream publishes).
    let mut rrset_ttl: BTreeMap<(ZoneId, Owner, RType), u32> = BTreeMap::new();
    for (_, records) in &outcome.rows {
        for d in records {
            let ttl = rrset_ttl
                .entry((d.zone, d.record.owner.clone(), d.record.rtype))
                .or_insert(d.record.ttl);
            *ttl = (*ttl).min(d.record.ttl);
        }
    }
    let mut records: BTreeMap<ZoneId, Vec<Record>> = BTreeMap::new();
    let mut contributions: BTreeMap<ZoneId, BTreeMap<u16, Contributions>> = BTreeMap::new();
    for ((source, key), desired) in outcome.rows {
        let mut per_zone: BTreeMap<ZoneId, Vec<Record>> = BTreeMap::new();
        for d in desired {
            let mut published = d.record.clone();
            published.ttl = rrset_ttl[&(d.zone, d.record.owner.clone(), d.record.rtype)];
            records.entry(d.zone).or_default().push(published);
            per_zone.entry(d.zone).or_default().push(d.record);
        }
        if !keep_rows {
            continue;
        }
        for (zone, recs) in per_zone {
            contributions
                .entry(zone)
                .or_default()
                .entry(source.0)
                .or_default()
                .push((key.clone(), recs));
        }
    }
    // A zone with one_ptr publishes one PTR per name, as the stream does
    // (`plan::published`).
    for (zone, recs) in records.iter_mut() {
        if !limits.one_ptr.get(zone.index()).copied().unwrap_or(false) {
            continue;
        }
        let mut ptrs: BTreeMap<Owner, Vec<pg2dns_decoder::Rdata>> = BTreeMap::new();
        for r in recs.iter().filter(|r| r.rtype == RType::PTR) {
            ptrs.entry(r.owner.clone())
                .or_default()
                .push(r.rdata.clone());
        }
        let keep: BTreeMap<&Owner, Vec<&pg2dns_decoder::Rdata>> = ptrs
            .iter()
            .map(|(o, ds)| {
                (
                    o,
                    pg2dns_decoder::plan::published(true, RType::PTR, ds.iter()),
                )
            })
            .collect();
        recs.retain(|r| {
            r.rtype != RType::PTR || keep.get(&r.owner).is_some_and(|k| k.contains(&&r.rdata))
        });
    }
    Ok(Desired {
        rows,
        refused: outcome.rejections.len(),
        records,
        contributions,
        sources: mappings.iter().map(|m| m.source().to_owned()).collect(),
        refs: zones.refs().clone(),
    })
}

/// Compares (and with `--apply` repairs) the selected zones.
pub async fn reconcile(config: &Config, options: &Options) -> Result<Report, ReconcileError> {
    let zones = config.zones();
    let mut selected: Vec<ZoneId> = Vec::new();
    for name in &options.zones {
        let id = ZoneName::parse(name)
            .ok()
            .and_then(|z| zones.id_of(&z))
            .ok_or_else(|| ReconcileError::UnknownZone(name.clone()))?;
        selected.push(id);
    }
    if selected.is_empty() {
        selected = zones.iter().map(|(id, _)| id).collect();
    }
    let mut store = Store::connect(&config.database).await?;
    // A running service is brought to the snapshot's exact point and held
    // there while the zones are transferred (docs/design.md §4).
    let frozen = freeze(&store, config).await?;
    let snapshot = frozen.as_ref().map(|f| f.snapshot.name.as_str());
    let mut result = compare(config, options, &mut store, &selected, snapshot).await;
    if let (Some(f), Ok(report)) = (&frozen, &mut result) {
        report.paused_time = Some(f.started.elapsed());
    }
    if let Some(f) = &frozen {
        let resumed = store
            .client()
            .query_one("SELECT pg2dns.resume($1)", &[&config.database.slot])
            .await;
        info!(
            lsn = %f.snapshot.lsn,
            paused_ms = f.started.elapsed().as_millis() as u64,
            "the service was paused at the snapshot for the comparison; resumed"
        );
        resumed.map_err(sql("cannot call pg2dns.resume()"))?;
    }
    result
}

/// The first deployment's load: every zone brought in line with the tables
/// as the exported snapshot sees them (a new slot's consistent point), and
/// the row state written, so that streaming from the slot misses nothing and
/// applies nothing twice.
pub async fn load_at(
    config: &Config,
    store: &mut Store,
    snapshot: &str,
) -> Result<Report, ReconcileError> {
    let options = Options {
        apply: true,
        ..Options::default()
    };
    let selected: Vec<ZoneId> = config.zones().iter().map(|(id, _)| id).collect();
    compare(config, &options, store, &selected, Some(snapshot)).await
}

/// A running service held at an exported snapshot's point.
struct Frozen {
    snapshot: crate::replication::ExportedSnapshot,
    started: Instant,
}

/// How long reconcile waits for the service to pause.
const PAUSE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// If a service streams this slot: pauses it, exports a snapshot (its
/// consistent point L), and lets the service run until exactly L, so that
/// DNS holds every transaction the snapshot sees and none it does not.
async fn freeze(store: &Store, config: &Config) -> Result<Option<Frozen>, ReconcileError> {
    let slot = &config.database.slot;
    let client = store.client();
    // A resume still on its way (an earlier reconcile's, say) is let
    // through first. The service is running when its mode says so and the
    // control connection that wrote it is still there.
    let settling = Instant::now();
    let running = loop {
        let row = client
            .query_one(
                "SELECT coalesce((SELECT m.mode = 'running' AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = m.pid) \
                                  FROM pg2dns.mode m WHERE m.slot = $1), false), \
                        coalesce((SELECT c.action = 'resume' AND c.id > m.control_id FROM pg2dns.control c \
                                    JOIN pg2dns.mode m ON m.slot = c.slot \
                                  WHERE c.slot = $1 AND m.mode = 'paused' ORDER BY c.id DESC LIMIT 1), false)",
                &[slot],
            )
            .await
            .map_err(sql("cannot read pg2dns.mode"))?;
        let (running, resuming): (bool, bool) = (row.get(0), row.get(1));
        if !resuming || settling.elapsed() > PAUSE_WAIT {
            break running;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    if !running {
        return Ok(None);
    }
    let started = Instant::now();
    let id: i64 = client
        .query_one("SELECT pg2dns.pause('reconcile', $1)", &[slot])
        .await
        .map_err(sql("cannot call pg2dns.pause()"))?
        .get(0);
    wait_paused(client, slot, id, "its current position").await?;
    let snapshot = crate::replication::export_snapshot(&config.database).await?;
    let id: i64 = client
        .query_one(
            "SELECT pg2dns.resume($1, $2::text::pg_lsn)",
            &[slot, &snapshot.lsn.to_string()],
        )
        .await
        .map_err(sql("cannot call pg2dns.resume()"))?
        .get(0);
    wait_paused(client, slot, id, &snapshot.lsn.to_string()).await?;
    info!(lsn = %snapshot.lsn, "the service stands at the snapshot's consistent point");
    Ok(Some(Frozen { snapshot, started }))
}

async fn wait_paused(
    client: &tokio_postgres::Client,
    slot: &str,
    request: i64,
    what: &str,
) -> Result<(), ReconcileError> {
    let started = Instant::now();
    loop {
        if crate::control::paused_for(client, slot, request)
            .await?
            .is_some()
        {
            return Ok(());
        }
        if started.elapsed() > PAUSE_WAIT {
            return Err(ReconcileError::NoPause {
                what: what.to_owned(),
                waited: PAUSE_WAIT,
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn compare(
    config: &Config,
    options: &Options,
    store: &mut Store,
    selected: &[ZoneId],
    snapshot: Option<&str>,
) -> Result<Report, ReconcileError> {
    let started = Instant::now();
    let bar = progress_bar(options.progress);
    bar.set_message("reading the tables");
    // What each row contributes is kept only to rewrite the row state.
    let desired = read_desired(store, config, snapshot, &bar, options.apply).await?;
    let read_time = started.elapsed();
    info!(
        rows = desired.rows,
        refused = desired.refused,
        ms = read_time.as_millis() as u64,
        "read pg2dns.rr and the source tables"
    );
    let mut outcomes = Vec::new();
    for &id in selected {
        let zc = &config.zones[id.index()];
        let wanted = desired.records.get(&id).map(Vec::as_slice).unwrap_or(&[]);
        bar.set_message(format!("zone {}", zc.name));
        let mut outcome = reconcile_zone(config, zc, wanted, options, &bar).await;
        if options.apply && outcome.error.is_none() && outcome.in_sync_after == Some(true) {
            // One transaction per source: every source's state of the
            // zone, emptied ones included, is rewritten; a row with a
            // record still waiting for its target's address is kept aside
            // as the stream keeps it (pg2dns.waiting, no row state).
            for (i, name) in desired.sources.iter().enumerate() {
                let rows = desired
                    .contributions
                    .get(&id)
                    .and_then(|by_source| by_source.get(&(i as u16)))
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                let (held, kept) = split_waiting(rows, &outcome.waiting_after);
                let published: Vec<(RowKey, Vec<Record>)>;
                let published = if held.is_empty() {
                    rows
                } else {
                    published = kept.into_iter().cloned().collect();
                    &published
                };
                if let Err(source) = store
                    .replace_zone_state(name, &zc.name, published, &held)
                    .await
                {
                    outcome.error = Some(ZoneError::State {
                        zone: zc.name.clone(),
                        source,
                    });
                    break;
                }
            }
        }
        outcomes.push(outcome);
    }
    bar.finish_and_clear();
    if options.apply {
        // The stream goes on from the moment the tables were read: it
        // resolves zone references as they were then.
        store
            .replace_zone_refs(&config.zones_tables(), &desired.refs)
            .await?;
    }
    Ok(Report {
        rows: desired.rows,
        refused_rows: desired.refused,
        read_time,
        total_time: started.elapsed(),
        paused_time: None,
        zones: outcomes,
        applied: options.apply,
    })
}

async fn reconcile_zone(
    config: &Config,
    zc: &ZoneConfig,
    wanted: &[Record],
    options: &Options,
    bar: &ProgressBar,
) -> ZoneOutcome {
    let mut outcome = ZoneOutcome {
        zone: zc.name.clone(),
        diff: None,
        transferred: 0,
        axfr_time: Duration::ZERO,
        diff_time: Duration::ZERO,
        repair_time: Duration::ZERO,
        waiting_after: Vec::new(),
        refused_by_threshold: false,
        messages_applied: 0,
        retries: 0,
        in_sync_after: None,
        error: None,
    };
    let timeout = config.limits.dns_timeout;
    let started = Instant::now();
    let transfer = match axfr::transfer(&zc.name, zc.primary, &zc.key, timeout).await {
        Ok(t) => t,
        Err(e) => {
            outcome.error = Some(e.into());
            return outcome;
        }
    };
    outcome.axfr_time = started.elapsed();
    outcome.transferred = transfer.records.len();
    bar.set_message(format!(
        "zone {}: comparing {} records with {} wanted",
        zc.name,
        transfer.records.len(),
        wanted.len()
    ));
    let started = Instant::now();
    let first = diff::diff_excluding(&zc.name, wanted, &transfer.records, &zc.exclusions);
    outcome.diff_time = started.elapsed();
    let needs_repair = !first.is_in_sync();
    outcome.refused_by_threshold = needs_repair
        && first.exceeds(config.reconcile.max_change_share, MIN_RECORDS_FOR_THRESHOLD)
        && !options.force;
    outcome.diff = Some(first.clone());
    if !options.apply || outcome.refused_by_threshold {
        return outcome;
    }
    bar.set_message(format!("zone {}: repairing", zc.name));
    let started = Instant::now();
    if let Err(e) = repair(config, zc, wanted, options, transfer, first, &mut outcome).await {
        outcome.error = Some(e);
    }
    outcome.repair_time = started.elapsed();
    outcome
}

/// Sends the repair, starting again from a fresh transfer when the SOA guard
/// fails; ends with a transfer that checks the zone is in sync.
async fn repair(
    config: &Config,
    zc: &ZoneConfig,
    wanted: &[Record],
    options: &Options,
    mut transfer: Transfer,
    mut current: ZoneDiff,
    outcome: &mut ZoneOutcome,
) -> Result<(), ZoneError> {
    let timeout = config.limits.dns_timeout;
    let zone = &zc.name;
    // The stream's budget for this zone (see `Config::plan_limits`).
    let budget = Budget {
        max_message_bytes: config.limits.max_message_bytes,
        tsig_record_len: zc.key.record_len(),
    };
    let mut failures = 0;
    let mut first_attempt = true;
    loop {
        if !current.is_in_sync() {
            let messages = diff::repair_messages(&current, transfer.soa.rdata.len(), budget)
                .map_err(|source| ZoneError::Plan {
                    zone: zone.clone(),
                    source,
                })?;
            if first_attempt {
                test_pause().await;
                first_attempt = false;
            }
            let mut soa = transfer.soa.rdata.clone();
            let mut conn = Connection::connect(zc.primary)
                .await
                .map_err(|e| update_err(zc, format!("cannot connect: {e}")))?;
            // The SOA a failed guard expected.
            let mut guard_failed = None;
            for ops in &messages {
                let id = axfr::fresh_id();
                let guard = (!options.unguarded).then_some(&soa);
                let wire = diff::encode_repair(zone, id, guard, ops).map_err(|source| {
                    ZoneError::Plan {
                        zone: zone.clone(),
                        source,
                    }
                })?;
                let rcode = send(&mut conn, zc, &wire, timeout).await?;
                if rcode == Rcode::NOERROR {
                    outcome.messages_applied += 1;
                    failures = 0;
                    soa = diff::next_serial(&soa).unwrap_or(soa);
                } else if (rcode == Rcode::NXRRSET || rcode == Rcode::YXRRSET) && !options.unguarded
                {
                    guard_failed = Some(soa.clone());
                    break;
                } else {
                    return Err(ZoneError::Refused {
                        zone: zone.clone(),
                        server: zc.primary,
                        rcode,
                        hint: rcode.hint(),
                    });
                }
            }
            if let Some(expected) = guard_failed {
                failures += 1;
                outcome.retries += 1;
                warn!(zone = %zone, failures, "the zone changed since the transfer (SOA prerequisite failed): transferring it again");
                if failures >= MAX_GUARD_FAILURES {
                    return Err(ZoneError::KeepsChanging {
                        zone: zone.clone(),
                        attempts: failures,
                    });
                }
                transfer = axfr::transfer(zone, zc.primary, &zc.key, timeout).await?;
                if transfer.soa.rdata == expected {
                    return Err(ZoneError::GuardUnusable {
                        zone: zone.clone(),
                        server: zc.primary,
                    });
                }
                current = diff::diff_excluding(zone, wanted, &transfer.records, &zc.exclusions);
                if current.exceeds(config.reconcile.max_change_share, MIN_RECORDS_FOR_THRESHOLD)
                    && !options.force
                {
                    outcome.refused_by_threshold = true;
                    outcome.in_sync_after = Some(false);
                    return Ok(());
                }
                continue;
            }
        }
        // Check: a fresh transfer must show the zone in sync.
        transfer = axfr::transfer(zone, zc.primary, &zc.key, timeout).await?;
        current = diff::diff_excluding(zone, wanted, &transfer.records, &zc.exclusions);
        outcome.in_sync_after = Some(current.is_in_sync());
        outcome.waiting_after = current.waiting;
        return Ok(());
    }
}

fn update_err(zc: &ZoneConfig, detail: String) -> ZoneError {
    ZoneError::Update {
        zone: zc.name.clone(),
        server: zc.primary,
        detail,
    }
}

/// Signs and sends one repair UPDATE, and returns the verified answer's RCODE.
async fn send(
    conn: &mut Connection,
    zc: &ZoneConfig,
    wire: &[u8],
    timeout: Duration,
) -> Result<Rcode, ZoneError> {
    let request = tsig::sign(wire, &zc.key, unix_now(), tsig::DEFAULT_FUDGE)
        .map_err(|e| update_err(zc, crate::error::chain(&e)))?;
    conn.send(&request.wire)
        .await
        .map_err(|e| update_err(zc, format!("cannot send: {e}")))?;
    loop {
        let answer = match tokio::time::timeout(timeout, conn.recv()).await {
            Err(_) => return Err(update_err(zc, "no answer in time".into())),
            Ok(None) => return Err(update_err(zc, "the server closed the connection".into())),
            Ok(Some(Err(e))) => return Err(update_err(zc, format!("cannot read: {e}"))),
            Ok(Some(Ok(a))) => a,
        };
        if answer.get(..2) != Some(&request.id.to_be_bytes()[..]) {
            continue;
        }
        return match tsig::verify_response(&answer, &zc.key, &request, unix_now()) {
            Ok(v) => Ok(Rcode(v.rcode)),
            Err(TsigError::Unsigned { rcode }) if rcode != 0 => Ok(Rcode(rcode)),
            Err(e) => Err(update_err(zc, crate::error::chain(&e))),
        };
    }
}

/// A spinner with a count and a message on stderr; hidden unless `shown`
/// and stderr is a terminal (indicatif checks).
fn progress_bar(shown: bool) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {elapsed:>4} {msg} ({human_pos} rows read)")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// A row kept aside: its key, the target it waits at, its records.
type HeldRow = (RowKey, Owner, Vec<Record>);

/// The rows of one source that contribute a record still waiting for its
/// target's address (with that target and all the row's records), and the
/// others.
fn split_waiting<'a>(
    rows: &'a [(RowKey, Vec<Record>)],
    waiting: &[Record],
) -> (Vec<HeldRow>, Vec<&'a (RowKey, Vec<Record>)>) {
    let mut held = Vec::new();
    let mut published = Vec::new();
    for row in rows {
        let target = row.1.iter().find_map(|r| {
            waiting
                .iter()
                .any(|w| w.same_rr(r))
                .then(|| pg2dns_decoder::rdata::target(r.rtype, r.rdata.as_wire()))
                .flatten()
        });
        match target {
            Some(t) => held.push((row.0.clone(), Owner::from_name(t), row.1.clone())),
            None => published.push(row),
        }
    }
    (held, published)
}

/// The process's peak resident set size in KiB (Linux: `VmHWM` of
/// /proc/self/status), for the benchmark and for operators sizing a host.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The test hook [`PAUSE_BEFORE_REPAIR_ENV`].
async fn test_pause() {
    if let Some(ms) = std::env::var(PAUSE_BEFORE_REPAIR_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        eprintln!("pg2dns: pausing {ms} ms before the repair ({PAUSE_BEFORE_REPAIR_ENV})");
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}
