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
//! A service an operator paused at P is held paused, and the desired side
//! is its row state, which is DNS as of P (see `read_desired_paused`): the
//! tables hold what was committed since, which is not a difference.
//!
//! Why names and types can be excluded, and rows can wait: the stream and
//! reconcile must agree on what pg2dns owns. Excluded records are refused by
//! the planner (so never desired) and not owned by the comparison; an MX or
//! SRV whose target has no address yet is held back by both, and a repair
//! rewrites `pg2dns.waiting` with the row state.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pg2dns_decoder::diff::{self, ZoneDiff};
use pg2dns_decoder::mapping::RowKey;
use pg2dns_decoder::plan::SourceId;
use pg2dns_decoder::row::TextRow;
use pg2dns_decoder::session::{self, Rcode, RcodeClass};
use pg2dns_decoder::tsig;
use pg2dns_decoder::update::Budget;
use pg2dns_decoder::zonefile::{self, ZoneFileError};
use pg2dns_decoder::{Lsn, Owner, RType, Record, ZoneId, ZoneName};
use tracing::{info, warn};

use crate::config::{Config, ZoneConfig};
use crate::dns::axfr::{self, AxfrError};
use crate::dns::Connection;
use crate::store::{sql, Store, StoreError};

/// How many zones of one server reconcile and setup's first load transfer
/// and repair at once: below BIND's `transfers-out` (10 by default, past
/// which it answers SERVFAIL "quota reached") and Knot's and PowerDNS's
/// limits, and a bound on memory (at most this many transfers held at once
/// per server).
pub const TRANSFERS_PER_SERVER: usize = 4;

/// `[reconcile] memory_mib` when the configuration does not say: what the
/// sorted runs of reconcile, `--apply` and the first load buffer before
/// they spill to disk (the process's peak RSS stays within about twice it).
pub const DEFAULT_MEMORY_MIB: u64 = 96;

pub mod bounded;
pub mod spill;
pub mod zone_file;

/// Zones with at most this many owned records are never refused by the
/// safety threshold.
pub const MIN_RECORDS_FOR_THRESHOLD: usize = 10;
/// How many times a repair starts again from a fresh transfer without
/// progress before it gives up.
pub const MAX_GUARD_FAILURES: usize = 3;
/// How many times one repair UPDATE is sent when the server fails
/// transiently (SERVFAIL, no answer in time, a lost or refused connection)
/// before the zone ends. Between two attempts the repair waits the stream's
/// backoff ([`session::INITIAL_BACKOFF`], doubling up to
/// [`session::MAX_BACKOFF`]): about 21 s in all, enough for a server reload.
pub const REPAIR_ATTEMPTS: usize = 10;

/// Differences a report lists (the first owners' whole, up to this many
/// records in all the zones of a run; the counts count them all), and
/// likewise the records pg2dns never published a first load lists and the
/// three-way differences of `--zone-file`: a first load of a million
/// records, every one a difference, or of 50,000 zones, holds ten thousand.
pub const REPORT_SAMPLE: usize = 10_000;

/// The report's samples of one run, shared by all its zones (whatever
/// their number): what each list may still hold.
#[derive(Clone, Debug)]
struct Samples {
    /// Differences (missing, extra, TTL).
    diffs: Arc<std::sync::atomic::AtomicUsize>,
    /// Records a first load would delete that pg2dns never published.
    unowned: Arc<std::sync::atomic::AtomicUsize>,
    /// `--zone-file`'s three-way differences.
    files: Arc<std::sync::atomic::AtomicUsize>,
}

impl Samples {
    fn new() -> Samples {
        let one = || Arc::new(std::sync::atomic::AtomicUsize::new(REPORT_SAMPLE));
        Samples {
            diffs: one(),
            unowned: one(),
            files: one(),
        }
    }
}
/// Test hook: milliseconds to wait between the transfer and the first
/// repair message (lets a test change the zone meanwhile).
pub const PAUSE_BEFORE_REPAIR_ENV: &str = "PG2DNS_TEST_PAUSE_BEFORE_REPAIR_MS";
/// Test hook: milliseconds to wait, with the service held paused and the
/// zone file spilled, before a zone's `--zone-file` comparison (a point
/// for a test to interrupt the run at).
pub const PAUSE_BEFORE_ZONE_FILE_ENV: &str = "PG2DNS_TEST_PAUSE_BEFORE_ZONE_FILE_MS";

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
    /// A first load: refuse to delete, in a zone, records that pg2dns never
    /// published (none of this slot's row state holds them), unless `force`.
    pub protect_unowned: bool,
    /// Ends the run early (a signal): a paused service is resumed first,
    /// then [`ReconcileError::Interrupted`] is returned.
    pub interrupt: Option<tokio::sync::watch::Receiver<Option<Signal>>>,
    /// `--zone-file ZONE=PATH`: the legacy generator's master file of a
    /// zone, compared three ways (file, database, DNS). Read-only: main
    /// refuses it with `--apply`.
    pub zone_files: Vec<(String, std::path::PathBuf)>,
    /// The zone files read (into sorted runs): [`reconcile`] fills it from
    /// `zone_files` before anything else (leave it empty).
    pub read_files: Arc<BTreeMap<ZoneId, zone_file::ReadFile>>,
    /// `--primary NAME`: compare (and repair) only that primary of zones
    /// with several; `None`: each primary of each zone in turn.
    pub primary: Option<String>,
}

/// A signal that ends a reconcile early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl Signal {
    /// The shell's exit status for a process ended by this signal.
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        })
    }
}

/// Why reconciling failed as a whole (per-zone failures are in the report).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The zones of `pg2dns.zones` cannot join the configuration's.
    #[error("pg2dns.zones")]
    TableZones(#[from] crate::config::TableZonesError),
    /// A `--zone` names no configured zone.
    #[error("zone {0} is not configured")]
    UnknownZone(String),
    /// `--primary` names no primary of the zones selected.
    #[error("--primary {0}: no selected zone has a primary of that name (a [[server]] name listed in primaries or a server_group)")]
    UnknownPrimary(String),
    /// The database could not be read or the row state written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The snapshot to compare at could not be exported.
    #[error("cannot export a snapshot to compare at")]
    Snapshot(#[from] crate::replication::ReplicationError),
    /// A signal ended the run (a service it paused was resumed).
    #[error("interrupted by {0}")]
    Interrupted(Signal),
    /// The run panicked (a service it paused was resumed).
    #[error("reconcile failed unexpectedly (a panic; report it as a pg2dns bug with the log)")]
    Panicked,
    /// `--apply` before `pg2dns setup`.
    #[error("the pg2dns schema is not installed: run `pg2dns setup` first (it loads the zones from the tables; `pg2dns setup --dry-run` shows what it would change)")]
    NoSchema,
    /// Another reconcile of this slot holds the pause lease.
    #[error("another `pg2dns reconcile` of slot {0} is running; wait for it to end")]
    Busy(String),
    /// A `--zone-file` cannot be read.
    #[error("cannot read the zone file {path}")]
    ZoneFileRead {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A `--zone-file` holds a line pg2dns cannot read.
    #[error("zone {zone}: cannot read its zone file")]
    ZoneFile {
        /// The zone.
        zone: ZoneName,
        /// The file and line.
        #[source]
        source: ZoneFileError,
    },
    /// A `--zone-file` is not `ZONE=PATH` or its zone is not compared.
    #[error("--zone-file {0}")]
    ZoneFileArg(String),
    /// The sorted runs of the desired side could not be made.
    #[error(transparent)]
    Bounded(#[from] bounded::BoundedError),
    /// An operator's pause whose checkpoint is not in `pg2dns.progress`.
    #[error("the service says it paused at {lsn}, but pg2dns.progress is at {progress}: the row state is not committed through the pause, so reconcile cannot compare as of it; run `pg2dns resume`, then reconcile again (and report this as a pg2dns bug)")]
    PauseNotCheckpointed {
        /// Where the mode says it paused.
        lsn: Lsn,
        /// Where the progress stands.
        progress: Lsn,
    },
    /// The running service did not reach the comparison point in time.
    #[error("the running pg2dns did not pause at {what}: it received and confirmed nothing new for {waited:?}; is it halted? (`pg2dns status`)")]
    NoPause {
        /// Which pause.
        what: String,
        /// How long reconcile waited without progress.
        waited: std::time::Duration,
    },
}

/// Why one zone could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// The transfer failed.
    #[error(transparent)]
    Axfr(#[from] AxfrError),
    /// The runs of the comparison could not be written or read.
    #[error("zone {zone}: cannot compare")]
    Spill {
        /// The zone.
        zone: ZoneName,
        /// Why.
        #[source]
        source: bounded::BoundedError,
    },
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
    #[error("zone {zone}: repair UPDATE to {server} failed")]
    Update {
        /// The zone.
        zone: ZoneName,
        /// The server.
        server: SocketAddr,
        /// What happened.
        #[source]
        source: UpdateFailure,
    },
    /// A repair UPDATE failed transiently [`REPAIR_ATTEMPTS`] times in a row.
    #[error("zone {zone}: repair UPDATE to {server} failed {attempts} times in a row, each sent again after a backoff; check the server and its log, then run reconcile again (the messages applied so far stay applied)")]
    GaveUp {
        /// The zone.
        zone: ZoneName,
        /// The server.
        server: SocketAddr,
        /// Attempts made.
        attempts: usize,
        /// The last failure.
        #[source]
        source: UpdateFailure,
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

/// Why a repair UPDATE got no usable answer (the cause of
/// [`ZoneError::Update`], which names the zone and the server).
#[derive(Debug, thiserror::Error)]
pub enum UpdateFailure {
    /// No connection to the primary.
    #[error("cannot connect")]
    Connect(#[source] std::io::Error),
    /// The UPDATE could not be signed.
    #[error(transparent)]
    Sign(pg2dns_decoder::tsig::TsigError),
    /// The UPDATE could not be written.
    #[error("cannot send")]
    Send(#[source] std::io::Error),
    /// No answer within the timeout.
    #[error("no answer in time")]
    Timeout,
    /// The server closed the connection before answering.
    #[error("the server closed the connection")]
    Closed,
    /// The answer could not be read.
    #[error("cannot read")]
    Read(#[source] std::io::Error),
    /// The answer failed TSIG verification or is malformed.
    #[error(transparent)]
    Answer(pg2dns_decoder::tsig::TsigError),
    /// The server answered with an RCODE of [`RcodeClass::Transient`]
    /// (SERVFAIL: it failed and undid the message).
    #[error("the server answered {0}")]
    Transient(Rcode),
}

impl UpdateFailure {
    /// Whether the same message may succeed when sent again on a fresh
    /// connection after a backoff, as the stream resends it: a transient
    /// RCODE, no answer in time, a lost or refused connection. A message
    /// that cannot be signed, or an answer that fails TSIG, stays so.
    pub fn is_transient(&self) -> bool {
        match self {
            UpdateFailure::Connect(_)
            | UpdateFailure::Send(_)
            | UpdateFailure::Timeout
            | UpdateFailure::Closed
            | UpdateFailure::Read(_)
            | UpdateFailure::Transient(_) => true,
            UpdateFailure::Sign(_) | UpdateFailure::Answer(_) => false,
        }
    }
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
    /// A first load ([`Options::protect_unowned`]): the records the repair
    /// would delete that pg2dns never published (the first
    /// [`REPORT_SAMPLE`] of them).
    pub unowned_deletes: Vec<Record>,
    /// How many records those are, all of them.
    pub unowned_count: usize,
    /// The repair was refused because of those (no `--force`).
    pub refused_unowned: bool,
    /// Repair messages the server accepted.
    pub messages_applied: usize,
    /// Times the repair started again from a fresh transfer.
    pub retries: usize,
    /// Repair UPDATEs sent again after a transient failure (SERVFAIL, no
    /// answer in time, a lost or refused connection).
    pub resends: usize,
    /// After `--apply`: whether a final transfer showed the zone in sync.
    pub in_sync_after: Option<bool>,
    /// The error that stopped this zone.
    pub error: Option<ZoneError>,
    /// Rows with records in this zone that are not published, and why
    /// (`source row_key: reason`), as the stream refuses them.
    pub refusals: Vec<String>,
    /// `--zone-file`: the file compared with the database and DNS.
    pub zone_file: Option<FileSide>,
    /// The primary compared, for a zone with several (`None` for one).
    pub primary: Option<String>,
    /// The zone's verifier refused the repair (nothing was sent).
    pub verify_refused: Option<VerifyRefusal>,
    /// The zone's verifier accepted the repair.
    pub verified: bool,
}

/// A zone file compared with the database and DNS.
#[derive(Debug)]
pub struct FileSide {
    /// The file given.
    pub path: std::path::PathBuf,
    /// Records in the file (SOA included, skipped types not).
    pub records: usize,
    /// Records of types pg2dns does not read (DNSSEC, DNAME…).
    pub skipped: usize,
    /// The comparison (counts, and the run's first differences).
    pub three_way: zone_file::FileCompared,
}

/// Why a verifier refused a zone's repair.
#[derive(Debug, Clone)]
pub struct VerifyRefusal {
    /// The command as run (placeholders replaced).
    pub command: String,
    /// How it ended: an exit status, a timeout, or why it could not start.
    pub reason: String,
    /// Its stdout and stderr, truncated to [`VERIFY_OUTPUT_MAX`] bytes.
    pub output: String,
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
    /// Set when an operator had paused the service: DNS was compared with
    /// pg2dns's row state as of the pause, not with the tables.
    pub paused_at: Option<OperatorPause>,
    /// Sorted runs written to disk (0: everything fit `[reconcile]
    /// memory_mib`).
    pub spilled_runs: usize,
}

/// A pause an operator made (`pg2dns pause`), as reconcile found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorPause {
    /// Where the service stopped: every transaction committed before is in
    /// DNS and in the row state, none after.
    pub lsn: Lsn,
    /// The database's WAL position when the row state was read: what was
    /// committed between the two is not in DNS yet, and not a difference.
    pub wal: Lsn,
    /// Who paused.
    pub requested_by: String,
    /// Why.
    pub reason: String,
}

impl OperatorPause {
    /// What the comparison is, in a sentence.
    fn describe(&self) -> String {
        format!(
            "compared as of the pause at {} (pg2dns's row state): transactions committed since (the WAL is at {} now) are not in DNS yet and are not differences; `pg2dns resume` publishes them",
            self.lsn, self.wal
        )
    }
}

impl Report {
    /// 0 when every zone is in sync (after the repair, with `--apply`), 1
    /// when there are differences left, 2 when a zone failed.
    pub fn exit_code(&self) -> u8 {
        if self.zones.iter().any(|z| z.error.is_some()) {
            return 2;
        }
        if self
            .zones
            .iter()
            .any(|z| z.zone_file.as_ref().is_some_and(|f| !f.three_way.agrees()))
        {
            return 1;
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
        if let Some(p) = &self.paused_at {
            out.push_str(&format!("{}\n", p.describe()));
        }
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
            let zone = match &z.primary {
                Some(p) => format!("{} (primary {p})", z.zone),
                None => z.zone.to_string(),
            };
            out.push_str(&format!("{}: {line}\n", bold(&zone)));
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
                if d.owners_differing > 20 {
                    out.push_str(&format!(
                        "  … and {} more owners (--json lists {})\n",
                        d.owners_differing - 20,
                        if d.is_sampled() {
                            format!("the first {}", d.owners.len())
                        } else {
                            "all".to_string()
                        }
                    ));
                }
            }
            if !z.refusals.is_empty() {
                out.push_str(&format!(
                    "  {} row(s) refused and not published, as the stream refuses them (--json lists all):\n",
                    z.refusals.len()
                ));
                for r in z.refusals.iter().take(5) {
                    out.push_str(&format!("    {}\n", yellow(r)));
                }
            }
            if let Some(f) = &z.zone_file {
                out.push_str(&file_side_human(f, &green, &red));
            }
            if let Some(v) = &z.verify_refused {
                out.push_str(&format!(
                    "  {}\n",
                    red(&format!(
                        "repair refused by the verifier: `{}` {}; nothing was sent",
                        v.command, v.reason
                    ))
                ));
                for line in v.output.lines() {
                    out.push_str(&format!("    | {line}\n"));
                }
            } else if z.verified {
                out.push_str("  the verifier accepted the zone as repaired\n");
            }
            if z.refused_by_threshold {
                out.push_str(&format!(
                    "  repair refused: it would delete or change {:.0}% of the zone's records; check the database, then use --force\n",
                    z.diff.as_ref().map_or(0.0, ZoneDiff::change_share) * 100.0
                ));
            }
            if z.unowned_count > 0 {
                out.push_str(&format!(
                    "  {} {} record(s) that no row holds and pg2dns never published (made by hand or another tool):\n",
                    if z.refused_unowned { "refused to delete" } else { "deletes" },
                    z.unowned_count
                ));
                for r in z.unowned_deletes.iter().take(20) {
                    out.push_str(&format!("    {}\n", red(&format!("- {r}"))));
                }
                if z.unowned_count > 20 {
                    out.push_str(&format!("    … and {} more\n", z.unowned_count - 20));
                }
            }
            if self.applied && z.messages_applied > 0 {
                out.push_str(&format!(
                    "  repaired with {} UPDATE(s){}{}\n",
                    z.messages_applied,
                    if z.retries > 0 {
                        format!(", {} retried from a fresh transfer", z.retries)
                    } else {
                        String::new()
                    },
                    if z.resends > 0 {
                        format!(", {} sent again after a transient failure", z.resends)
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
                    "primary": z.primary,
                    "axfr_ms": z.axfr_time.as_millis() as u64,
                    "diff_ms": z.diff_time.as_millis() as u64,
                    "repair_ms": z.repair_time.as_millis() as u64,
                    "transferred": z.transferred,
                    "refused_by_threshold": z.refused_by_threshold,
                    "unowned_deletes": z.unowned_deletes.iter().map(rec).collect::<Vec<_>>(),
                    "unowned_count": z.unowned_count,
                    "refused_unowned": z.refused_unowned,
                    "messages_applied": z.messages_applied,
                    "retries": z.retries,
                    "resends": z.resends,
                    "in_sync_after": z.in_sync_after,
                    "refusals": z.refusals,
                    "error": z.error.as_ref().map(|e| crate::error::chain(e)),
                    "verified": z.verified,
                    "verify_refused": z.verify_refused.as_ref().map(|v| json!({
                        "command": v.command,
                        "reason": v.reason,
                        "output": v.output,
                    })),
                });
                if let Some(f) = &z.zone_file {
                    v["zone_file"] = file_side_json(f, &rec);
                }
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
                    v["missing_count"] = json!(d.missing());
                    v["extra_count"] = json!(d.extra());
                    v["ttl_count"] = json!(d.ttl_differences());
                    v["owners_differing"] = json!(d.owners_differing);
                    v["sampled"] = json!(d.is_sampled());
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
            "spilled_runs": self.spilled_runs,
            "applied": self.applied,
            "as_of_pause": self.paused_at.as_ref().map(|p| json!({
                "lsn": p.lsn.to_string(),
                "wal_lsn": p.wal.to_string(),
                "requested_by": p.requested_by,
                "reason": p.reason,
            })),
            "exit_code": self.exit_code(),
            "zones": zones,
        })
    }
}

/// Rows of one source in one zone, each with the records it contributes.
type Contributions = Vec<(RowKey, Vec<Record>)>;

/// Reads at the exported `snapshot` from now on (nothing when `None`).
async fn begin_snapshot(store: &Store, snapshot: Option<&str>) -> Result<(), StoreError> {
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
    Ok(())
}

/// Ends what [`begin_snapshot`] began.
async fn end_snapshot(store: &Store, snapshot: Option<&str>) -> Result<(), StoreError> {
    if snapshot.is_some() {
        store
            .client()
            .batch_execute("COMMIT")
            .await
            .map_err(sql("cannot end the snapshot's transaction"))?;
    }
    Ok(())
}

/// The zones (with the zones tables' rows, read in the current transaction)
/// and the planner's limits, as the stream has them.
async fn plan_context(
    store: &Store,
    config: &Config,
) -> Result<(pg2dns_decoder::Zones, pg2dns_decoder::plan::PlanLimits), StoreError> {
    let mut zones = config.zones();
    // The zones tables first: the record rows resolve their zone through them.
    for t in config.zones_tables() {
        let rows = crate::store::zone_ref::read_zones_table(store.client(), &t).await?;
        zones.refs_mut().replace(&t.table, rows);
    }
    // What the zones hold outside pg2dns: a row's CNAME beside it is
    // refused here as in the stream, not left as a difference.
    let limits = pg2dns_decoder::plan::PlanLimits {
        held: crate::pipeline::held_outside(config).await,
        ..config.plan_limits()
    };
    Ok((zones, limits))
}

/// The query that reads each source's rows, in the order of
/// `crate::pipeline::mappings` (empty for `pg2dns.rr` before setup).
fn source_queries(config: &Config, with_rr: bool) -> Vec<String> {
    // Before `pg2dns setup` there is no pg2dns.rr: it holds no rows.
    let mut queries = vec![if with_rr {
        "SELECT * FROM pg2dns.rr ORDER BY id".to_owned()
    } else {
        String::new()
    }];
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
    queries
}

/// Streams the rows `query` returns to `each` (none for an empty query): a
/// table of a million rows is never held as text.
async fn each_row<E: From<StoreError>>(
    store: &Store,
    query: &str,
    mut each: impl FnMut(TextRow) -> Result<(), E>,
) -> Result<(), E> {
    if query.is_empty() {
        return Ok(());
    }
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
        each(TextRow::new(cols, values))?;
    }
    Ok(())
}

/// Whether the pg2dns schema is installed (`pg2dns.rr` exists).
pub(crate) async fn has_schema(store: &Store) -> Result<bool, StoreError> {
    Ok(store
        .client()
        .query_one("SELECT to_regclass('pg2dns.rr') IS NOT NULL", &[])
        .await
        .map_err(sql("cannot look for the pg2dns schema"))?
        .get(0))
}

/// The zones `--zone` names, or every configured zone.
fn select_zones(config: &Config, options: &Options) -> Result<Vec<ZoneId>, ReconcileError> {
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
    Ok(selected)
}

/// What a reconcile knows of the pause it asked for.
#[derive(Default)]
struct Hold {
    /// When it asked the service to pause (`None`: it did not).
    since: std::sync::Mutex<Option<Instant>>,
    /// The snapshot's consistent point the service was brought to.
    lsn: std::sync::Mutex<Option<Lsn>>,
}

impl Hold {
    fn since(&self) -> Option<Instant> {
        *self.since.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn lsn(&self) -> Option<Lsn> {
        *self.lsn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How the work of a reconcile ended.
enum Ended {
    Done(Result<Report, ReconcileError>),
    Panicked,
    Signal(Signal),
}

/// Compares (and with `--apply` repairs) the selected zones.
///
/// A running service is paused for the comparison, and resumed on every
/// way out: the end, an error, a signal ([`Options::interrupt`]), a panic.
/// What no code can catch (kill -9, a lost connection) ends the pause as a
/// lease: see [`crate::control::Control::lease_ended`].
pub async fn reconcile(config: &Config, options: &Options) -> Result<Report, ReconcileError> {
    let mut store = Store::connect(&config.database).await?;
    // The zones of pg2dns.zones are reconciled as the file's are.
    let with_table = with_table_zones(config, &mut store).await?;
    let config = &with_table;
    let selected = select_zones(config, options)?;
    let passes = primary_passes(config, &selected, options.primary.as_deref())?;
    // The zone files are read before anything is paused: a line pg2dns
    // cannot read ends the run at once.
    let mut with_files;
    let options = if options.zone_files.is_empty() {
        options
    } else {
        with_files = options.clone();
        with_files.read_files = Arc::new(read_zone_files(config, options, &selected)?);
        &with_files
    };
    if !has_schema(&store).await? {
        // Before `pg2dns setup`: no service to pause, no row state; the
        // comparison shows what the first load would change.
        if options.apply {
            return Err(ReconcileError::NoSchema);
        }
        info!("the pg2dns schema is not installed: comparing read-only, as the first load of `pg2dns setup` would");
        return compare(config, options, &mut store, &selected, None, None, None).await;
    }
    let hold = Hold::default();
    let mut interrupt = options.interrupt.clone();
    let work = async {
        // A running service is brought to the snapshot's exact point and
        // held there while the zones are transferred (DESIGN §4).
        // A service an operator paused is held paused instead, and DNS is
        // compared with its row state as of the pause.
        let frozen = freeze(&store, config, &hold).await?;
        crate::failpoint::panic_at("reconcile-panic");
        let (snapshot, paused) = match &frozen {
            Some(Frozen::Snapshot(s)) => (Some(s.name.clone()), None),
            Some(Frozen::Paused(p)) => (None, Some(p.clone())),
            None => (None, None),
        };
        // One comparison per primary of zones with several (the same
        // snapshot for each).
        let mut result: Option<Result<Report, ReconcileError>> = None;
        for (pass, selected, several) in &passes {
            let r = compare(
                pass,
                options,
                &mut store,
                selected,
                snapshot.as_deref(),
                None,
                paused.as_ref(),
            )
            .await;
            result = Some(match (result, r) {
                (None, r) => r.map(|mut r| {
                    name_primaries(&mut r, pass, several);
                    r
                }),
                (Some(Ok(mut all)), Ok(mut r)) => {
                    name_primaries(&mut r, pass, several);
                    all.zones.append(&mut r.zones);
                    all.total_time += r.total_time;
                    Ok(all)
                }
                (Some(Err(e)), _) | (Some(Ok(_)), Err(e)) => Err(e),
            });
        }
        let result = result.unwrap_or_else(|| compare_nothing(options));
        if paused.is_some() {
            // Ends the transaction that held the operator's pause.
            store
                .client()
                .batch_execute("COMMIT")
                .await
                .map_err(sql("cannot end the transaction that held the pause"))?;
        }
        // The exported snapshot lives until here.
        drop(frozen);
        result
    };
    let ended = tokio::select! {
        r = std::panic::AssertUnwindSafe(work).catch_unwind() => match r {
            Ok(r) => Ended::Done(r),
            Err(_) => Ended::Panicked,
        },
        signal = interrupted(&mut interrupt) => Ended::Signal(signal),
    };
    if let Some(since) = hold.since() {
        // After a signal or a panic the connection may be inside the
        // snapshot's transaction: resume on a new one.
        let resumed = match &ended {
            Ended::Done(_) => resume(&store, config).await,
            _ => match Store::connect(&config.database).await {
                Ok(fresh) => resume(&fresh, config).await,
                Err(e) => Err(e),
            },
        };
        match resumed {
            Ok(()) => info!(
                lsn = %hold.lsn().map_or_else(|| "-".to_owned(), |l| l.to_string()),
                paused_ms = since.elapsed().as_millis() as u64,
                "the service was paused at the snapshot for the comparison; resumed"
            ),
            Err(e) => {
                warn!(error = %crate::error::chain(&e), "cannot resume the service; it resumes by itself once this reconcile's database session has ended (the pause is a lease)");
                if let Ended::Done(Ok(_)) = ended {
                    return Err(e.into());
                }
            }
        }
    }
    match ended {
        Ended::Done(mut result) => {
            if let (Some(since), Ok(report)) = (hold.since(), &mut result) {
                report.paused_time = Some(since.elapsed());
            }
            result
        }
        Ended::Panicked => Err(ReconcileError::Panicked),
        Ended::Signal(signal) => Err(ReconcileError::Interrupted(signal)),
    }
}

/// One comparison of [`primary_passes`]: the configuration seen through one
/// primary per zone, the zones to compare, and the zones of several
/// primaries (whose outcomes name the primary).
type PrimaryPass = (Config, Vec<ZoneId>, Vec<ZoneId>);

/// The comparisons a reconcile makes: the configuration as is when no
/// selected zone has several primaries; else one per primary position,
/// each zone seen through its k-th primary alone (zone ids unchanged),
/// with the zones that have one, filtered by `--primary`. The third item
/// lists the zones of several primaries (their outcomes name it).
fn primary_passes(
    config: &Config,
    selected: &[ZoneId],
    primary: Option<&str>,
) -> Result<Vec<PrimaryPass>, ReconcileError> {
    let several: Vec<ZoneId> = selected
        .iter()
        .copied()
        .filter(|id| !config.zones[id.index()].more_primaries.is_empty())
        .collect();
    if several.is_empty() && primary.is_none() {
        return Ok(vec![(config.clone(), selected.to_vec(), Vec::new())]);
    }
    let most = selected
        .iter()
        .map(|id| 1 + config.zones[id.index()].more_primaries.len())
        .max()
        .unwrap_or(1);
    let mut passes = Vec::new();
    for k in 0..most {
        let mut pass = config.clone();
        let mut chosen = Vec::new();
        for id in selected {
            let z = &config.zones[id.index()];
            let Some(p) = z.primaries().into_iter().nth(k) else {
                continue;
            };
            if primary.is_some_and(|name| name != p.name) {
                continue;
            }
            pass.zones.make_mut()[id.index()] = std::sync::Arc::new(z.for_primary(&p));
            chosen.push(*id);
        }
        if !chosen.is_empty() {
            passes.push((pass, chosen, several.clone()));
        }
    }
    match (passes.is_empty(), primary) {
        (true, Some(name)) => Err(ReconcileError::UnknownPrimary(name.to_owned())),
        _ => Ok(passes),
    }
}

/// Brings `primary` of `zone` in line with pg2dns's row state, which is
/// DNS as of `at`: the catch-up of a primary that was degraded when a
/// streaming session ended (its queue went with the session), run when the
/// next session starts, before anything is streamed from `at`. As any
/// repair: SOA-guarded, within the safety threshold, the row state left as
/// it is.
pub async fn catch_up(
    config: &Config,
    store: &mut Store,
    zone: ZoneId,
    primary: &crate::config::Primary,
    at: Lsn,
) -> Result<ZoneOutcome, ReconcileError> {
    let mut pass = config.clone();
    let Some(zc) = config.zones.get(zone.index()) else {
        return Err(ReconcileError::UnknownZone(format!("#{}", zone.0)));
    };
    pass.zones.make_mut()[zone.index()] = std::sync::Arc::new(zc.for_primary(primary));
    let as_of = OperatorPause {
        lsn: at,
        wal: at,
        requested_by: "pg2dns".into(),
        reason: format!("catching up primary {}", primary.name),
    };
    let options = Options {
        apply: true,
        ..Default::default()
    };
    let mut report = compare(&pass, &options, store, &[zone], None, None, Some(&as_of)).await?;
    report
        .zones
        .pop()
        .ok_or_else(|| ReconcileError::UnknownZone(zc.name.to_string()))
}

/// Names the primary in the outcomes of zones with several primaries.
fn name_primaries(report: &mut Report, pass: &Config, several: &[ZoneId]) {
    for z in &mut report.zones {
        if let Some(zc) = several
            .iter()
            .map(|id| &pass.zones[id.index()])
            .find(|zc| zc.name == z.zone)
        {
            z.primary = zc.server_name.clone();
        }
    }
}

/// The report of a reconcile that compared no zone.
fn compare_nothing(options: &Options) -> Result<Report, ReconcileError> {
    Ok(Report {
        rows: 0,
        refused_rows: 0,
        read_time: Duration::ZERO,
        total_time: Duration::ZERO,
        paused_time: None,
        zones: Vec::new(),
        applied: options.apply,
        paused_at: None,
        spilled_runs: 0,
    })
}

/// Resolves with the first signal sent on `interrupt` (never without one).
async fn interrupted(
    interrupt: &mut Option<tokio::sync::watch::Receiver<Option<Signal>>>,
) -> Signal {
    if let Some(rx) = interrupt {
        loop {
            if let Some(signal) = *rx.borrow_and_update() {
                return signal;
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
    }
    std::future::pending().await
}

async fn resume(store: &Store, config: &Config) -> Result<(), StoreError> {
    store
        .client()
        .query_one("SELECT pg2dns.resume($1)", &[&config.database.slot])
        .await
        .map_err(sql("cannot call pg2dns.resume()"))?;
    Ok(())
}

/// The first deployment's load: every zone brought in line with the tables
/// as the exported snapshot sees them (a new slot's consistent point), and
/// the row state written, so that streaming from the slot misses nothing and
/// applies nothing twice. Records pg2dns never published are not deleted
/// unless `force` (their zone is left as it was, and reported).
pub async fn load_at(
    config: &Config,
    store: &mut Store,
    snapshot: &str,
    force: bool,
) -> Result<Report, ReconcileError> {
    let options = Options {
        apply: true,
        force,
        protect_unowned: true,
        ..Options::default()
    };
    let with_table = with_table_zones(config, store).await?;
    let config = &with_table;
    let selected: Vec<ZoneId> = config.zones().iter().map(|(id, _)| id).collect();
    let owned = published_records(store, config).await?;
    compare(
        config,
        &options,
        store,
        &selected,
        Some(snapshot),
        Some(&owned),
        None,
    )
    .await
}

/// The first load of zones added while the service runs (rows of
/// `pg2dns.zones`), made by the service itself between two sessions: the
/// tables read now, each zone transferred, compared and repaired
/// (SOA-guarded), and its row state written. The stream then goes on from
/// before the transaction that added them: what it replays of those zones
/// is already there, and changes them to what they are now again. Records
/// pg2dns never published are not deleted (the zone's outcome says so).
pub async fn load_added_zones(
    config: &Config,
    store: &mut Store,
    zones: &[ZoneId],
) -> Result<Report, ReconcileError> {
    let options = Options {
        apply: true,
        protect_unowned: true,
        ..Options::default()
    };
    let owned = published_records(store, config).await?;
    compare(config, &options, store, zones, None, Some(&owned), None).await
}

/// `config` with the zones of `pg2dns.zones` (none before the schema has
/// the table); rows the service would not follow are left out, and said.
async fn with_table_zones(config: &Config, store: &mut Store) -> Result<Config, ReconcileError> {
    if !has_schema(store).await? {
        return Ok(config.clone());
    }
    let rows = store.table_zones().await?;
    if rows.is_empty() {
        return Ok(config.clone());
    }
    let (with_table, refused) =
        config.with_table_zones(&rows, pg2dns_decoder::records::MAX_ZONES)?;
    for r in refused {
        warn!(zone = %r.row.name, reason = %r.reason, "a row of pg2dns.zones is left out");
    }
    Ok(with_table)
}

/// What the first load would change, without changing anything: the tables
/// read in a plain REPEATABLE READ transaction (a preview, not an exact
/// point), each zone transferred and compared.
pub async fn preview_load(config: &Config, force: bool) -> Result<Report, ReconcileError> {
    let options = Options {
        force,
        protect_unowned: true,
        ..Options::default()
    };
    let selected: Vec<ZoneId> = config.zones().iter().map(|(id, _)| id).collect();
    let mut store = Store::connect(&config.database).await?;
    let owned = published_records(&store, config).await?;
    store
        .client()
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(sql("cannot begin the preview's transaction"))?;
    let report = compare(
        config,
        &options,
        &mut store,
        &selected,
        None,
        Some(&owned),
        None,
    )
    .await;
    // Nothing was written: the transaction only gave the read one snapshot.
    let _ = store.client().batch_execute("ROLLBACK").await;
    report
}

/// The records this slot's row state says pg2dns published (what a first
/// load may delete without `--force`), in one file sorted by zone, owner,
/// type and data, each zone a range of it: a zone's part is read in owner
/// order as its comparison reaches each owner ([`OwnedCursor`]), so that
/// `setup --recreate-slot` of a zone of millions of records holds one
/// owner's, not the zone's (none before the schema is installed).
struct Published {
    file: std::path::PathBuf,
    /// Per zone (as `pg2dns.row_state` names it): its bytes in `file`.
    ranges: std::collections::HashMap<String, (u64, u64)>,
    _dir: Arc<spill::SpillDir>,
}

impl Published {
    /// This zone's published records, read in owner order.
    fn zone(&self, zone: &ZoneName) -> std::io::Result<OwnedCursor> {
        use std::io::{Read, Seek};
        let Some(&(start, end)) = self.ranges.get(&zone.to_string()) else {
            return Ok(OwnedCursor::default());
        };
        let mut file = std::fs::File::open(&self.file)?;
        file.seek(std::io::SeekFrom::Start(start))?;
        let mut run = pg2dns_decoder::runs::RunReader::new(Box::new(
            std::io::BufReader::with_capacity(32 << 10, file.take(end - start)),
        ) as spill::RunInput);
        let next = run.next_entry()?;
        Ok(OwnedCursor {
            run: Some(run),
            next,
            ..OwnedCursor::default()
        })
    }
}

/// One zone's published records, read as the comparison's owners come (in
/// their order: the lower-cased wire form's bytes).
#[derive(Default)]
struct OwnedCursor {
    run: Option<pg2dns_decoder::runs::RunReader<spill::RunInput>>,
    next: Option<pg2dns_decoder::runs::Entry>,
    /// The owner last asked about, and its published (type, data).
    owner: Vec<u8>,
    here: std::collections::HashSet<(u16, Vec<u8>)>,
}

impl OwnedCursor {
    /// Whether pg2dns published `r`; owners must be asked about in
    /// increasing order (one asked out of order finds nothing: its record
    /// counts as never published, which refuses its deletion).
    fn contains(&mut self, r: &Record) -> Result<bool, std::io::Error> {
        let wire = r.owner.name().as_wire();
        if wire != self.owner.as_slice() {
            self.here.clear();
            self.owner = wire.to_vec();
            while let Some(e) = &self.next {
                let (owner, rtype, rdata) = published_fields(&e.value)?;
                match owner.cmp(wire) {
                    std::cmp::Ordering::Greater => break,
                    std::cmp::Ordering::Equal => {
                        self.here.insert((rtype, rdata.to_vec()));
                    }
                    std::cmp::Ordering::Less => {}
                }
                self.next = match self.run.as_mut() {
                    Some(run) => run.next_entry()?,
                    None => None,
                };
            }
        }
        Ok(self.here.contains(&(r.rtype.0, r.rdata.as_wire().to_vec())))
    }
}

/// A published record's owner (lower-cased wire), type and data.
fn published_fields(value: &[u8]) -> Result<(&[u8], u16, &[u8]), std::io::Error> {
    let damaged = |_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a spilled published record is damaged",
        )
    };
    let mut f = pg2dns_decoder::runs::Fields::new(value);
    let owner = f.bytes16().map_err(damaged)?;
    let rtype = f.u16().map_err(damaged)?;
    let rdata = f.bytes32().map_err(damaged)?;
    Ok((owner, rtype, rdata))
}

/// The run's spill directory under `[reconcile] spill_dir` (the system's
/// temporary directory by default); a failure names the parent it was
/// made in.
fn create_spill_dir(config: &Config) -> Result<Arc<spill::SpillDir>, bounded::BoundedError> {
    spill::SpillDir::create(config.reconcile.spill_dir.as_deref()).map_err(|source| {
        bounded::BoundedError::Spill {
            dir: config
                .reconcile
                .spill_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir),
            source,
        }
    })
}

/// Reads [`Published`] from this slot's row state, through sorted runs.
async fn published_records(store: &Store, config: &Config) -> Result<Published, ReconcileError> {
    let spill_err = |dir: &std::path::Path, source| bounded::BoundedError::Spill {
        dir: dir.to_path_buf(),
        source,
    };
    let dir = create_spill_dir(config)?;
    let file = dir.file("published-set");
    let mut ranges = std::collections::HashMap::new();
    if !has_schema(store).await? {
        return Ok(Published {
            file,
            ranges,
            _dir: dir,
        });
    }
    let read = sql("cannot read pg2dns.row_state");
    let slot = store.slot().to_owned();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&slot];
    let rows = store
        .client()
        .query_raw(
            "SELECT zone, owner, rtype, rdata FROM pg2dns.row_state WHERE slot = $1",
            params,
        )
        .await
        .map_err(read)?;
    futures_util::pin_mut!(rows);
    let mut sorter = spill::Sorter::new(
        Arc::clone(&dir),
        "published",
        spill::budget(config.reconcile.memory_mib, 0.5),
    );
    while let Some(r) = rows
        .try_next()
        .await
        .map_err(sql("cannot read pg2dns.row_state"))?
    {
        let zone: String = r.get(0);
        let rtype: i32 = r.get(2);
        // Type 0 would own no record: the repair would take a record pg2dns
        // sent for another tool's.
        let rtype = u16::try_from(rtype).map_err(|_| StoreError::Corrupt {
            table: "row_state",
            value: crate::store::Corrupt::RType(rtype),
        })?;
        let owner = r.get::<_, Vec<u8>>(1).to_ascii_lowercase();
        let rdata: Vec<u8> = r.get(3);
        // Sorted by zone (a zone's text holds no NUL), owner, type, data.
        let mut key = Vec::with_capacity(zone.len() + owner.len() + rdata.len() + 3);
        key.extend_from_slice(zone.as_bytes());
        key.push(0);
        key.extend_from_slice(&owner);
        key.extend_from_slice(&rtype.to_be_bytes());
        key.extend_from_slice(&rdata);
        let mut value = Vec::with_capacity(owner.len() + rdata.len() + 8);
        pg2dns_decoder::runs::put_bytes16(&mut value, &owner);
        value.extend_from_slice(&rtype.to_be_bytes());
        pg2dns_decoder::runs::put_bytes32(&mut value, &rdata);
        sorter
            .push(&key, &value)
            .map_err(|e| spill_err(dir.path(), e))?;
    }
    let sorted = sorter.finish().map_err(|e| spill_err(dir.path(), e))?;
    // One file, each zone's entries one range of it.
    let write = || -> std::io::Result<std::collections::HashMap<String, (u64, u64)>> {
        use std::io::Write;
        let mut out = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(&file)?);
        let mut offset = 0u64;
        let mut merge = sorted.merge()?;
        while let Some(e) = merge.next_entry()? {
            let zone_end = e.key.iter().position(|&b| b == 0).unwrap_or(e.key.len());
            let zone = String::from_utf8_lossy(&e.key[..zone_end]);
            let len = pg2dns_decoder::runs::entry_len(&e.key, &e.value);
            match ranges.get_mut(zone.as_ref()) {
                Some((_, end)) => *end = offset + len,
                None => {
                    ranges.insert(zone.into_owned(), (offset, offset + len));
                }
            }
            pg2dns_decoder::runs::write_entry(&mut out, &e.key, &e.value)?;
            offset += len;
        }
        out.flush()?;
        Ok(ranges)
    };
    let ranges = write().map_err(|e| spill_err(dir.path(), e))?;
    Ok(Published {
        file,
        ranges,
        _dir: dir,
    })
}

/// Where reconcile holds the service while it compares.
enum Frozen {
    /// A running service, held at an exported snapshot's point.
    Snapshot(crate::replication::ExportedSnapshot),
    /// A service an operator paused, held paused by the open transaction of
    /// the store's connection (see [`hold_operator_pause`]).
    Paused(OperatorPause),
}

/// How long reconcile waits for the service to pause while its slot confirms
/// nothing new (a service catching up a backlog keeps confirming).
const PAUSE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// If a service streams this slot: pauses it, exports a snapshot (its
/// consistent point L), and lets the service run until exactly L, so that
/// DNS holds every transaction the snapshot sees and none it does not.
/// If an operator paused it: holds it paused and reads where
/// ([`hold_operator_pause`]). `None`: no service streams nor is paused.
async fn freeze(
    store: &Store,
    config: &Config,
    hold: &Hold,
) -> Result<Option<Frozen>, ReconcileError> {
    let slot = &config.database.slot;
    let client = store.client();
    let mut attempts = 0;
    loop {
        // A resume still on its way (an earlier reconcile's, say) is let
        // through first, and so is a pause whose reconcile is gone (its
        // lease ended: the service resumes by itself). The service is
        // running when its mode says so and the control connection that
        // wrote it is still there.
        let settling = Instant::now();
        let (running, paused, leased) = loop {
            let row = client
                .query_one(
                    "SELECT coalesce((SELECT m.mode = 'running' AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = m.pid) \
                                      FROM pg2dns.mode m WHERE m.slot = $1), false), \
                            coalesce((SELECT c.action = 'resume' AND c.id > m.control_id FROM pg2dns.control c \
                                        JOIN pg2dns.mode m ON m.slot = c.slot \
                                      WHERE c.slot = $1 AND m.mode = 'paused' ORDER BY c.id DESC LIMIT 1), false), \
                            coalesce((SELECT m.mode = 'paused' FROM pg2dns.mode m WHERE m.slot = $1), false), \
                            coalesce((SELECT c.lease_pid IS NOT NULL FROM pg2dns.mode m JOIN pg2dns.control c ON c.id = m.control_id \
                                      WHERE m.slot = $1 AND m.mode = 'paused'), false), \
                            coalesce((SELECT pg2dns.lease_alive(m.control_id) FROM pg2dns.mode m \
                                      WHERE m.slot = $1 AND m.mode = 'paused'), false)",
                    &[slot],
                )
                .await
                .map_err(sql("cannot read pg2dns.mode"))?;
            let (running, resuming, paused, lease, alive): (bool, bool, bool, bool, bool) =
                (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
            let lease_ended = paused && lease && !alive;
            if !(resuming || lease_ended) || settling.elapsed() > PAUSE_WAIT {
                break (running, paused, paused && lease && alive);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        if running {
            break;
        }
        if leased {
            // Another reconcile paused it and will resume it.
            return Err(ReconcileError::Busy(slot.clone()));
        }
        if !paused {
            return Ok(None);
        }
        if let Some(pause) = hold_operator_pause(store, slot).await? {
            return Ok(Some(Frozen::Paused(pause)));
        }
        // Resumed meanwhile: look again.
        attempts += 1;
        if attempts >= MAX_HOLD_ATTEMPTS {
            return Err(ReconcileError::NoPause {
                what: "the operator's pause (it kept changing)".into(),
                waited: PAUSE_WAIT,
            });
        }
    }
    // The pause is a lease: this session's advisory lock (the key
    // sql/008_lease.sql gives) makes pg2dns.pause() record it, and the
    // service resumes by itself once the lock is gone with the session.
    let locked: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock(1885811300, hashtext('pg2dns lease ' || $1) & 2147483647)",
            &[slot],
        )
        .await
        .map_err(sql("cannot take the pause lease (an advisory lock)"))?
        .get(0);
    if !locked {
        return Err(ReconcileError::Busy(slot.clone()));
    }
    let started = Instant::now();
    *hold.since.lock().unwrap_or_else(|e| e.into_inner()) = Some(started);
    let id: i64 = client
        .query_one(
            "SELECT pg2dns.pause(format('reconcile by %s pid %s', session_user, $2::text), $1)",
            &[slot, &std::process::id().to_string()],
        )
        .await
        .map_err(sql("cannot call pg2dns.pause()"))?
        .get(0);
    crate::failpoint::hit("reconcile-after-pause");
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
    *hold.lsn.lock().unwrap_or_else(|e| e.into_inner()) = Some(snapshot.lsn);
    wait_paused(client, slot, id, &snapshot.lsn.to_string()).await?;
    info!(lsn = %snapshot.lsn, "the service stands at the snapshot's consistent point");
    Ok(Some(Frozen::Snapshot(snapshot)))
}

/// How many times reconcile tries to hold an operator's pause that changes
/// under it (resumed, paused again) before it gives up.
const MAX_HOLD_ATTEMPTS: usize = 3;

/// Holds a service an operator paused: opens a REPEATABLE READ transaction
/// on the store's connection and share-locks the slot's `pg2dns.mode` row,
/// so that a service resumed meanwhile cannot say it runs (its first write
/// waits for the lock) and so streams nothing until reconcile ends; the row
/// state is then read in the same transaction. `None` (transaction ended):
/// the service is no longer paused.
///
/// Why the row state is exact as of the pause's LSN: the pipeline drains
/// and commits its checkpoint (row state and progress together) before it
/// writes `paused` into `pg2dns.mode`, so a paused mode implies a row state
/// committed through the pause. A pause request's LSN is the end of the
/// pausing transaction and the progress equals it; a resume with `until`
/// stops before L with the progress at the last transaction before L.
async fn hold_operator_pause(
    store: &Store,
    slot: &str,
) -> Result<Option<OperatorPause>, ReconcileError> {
    let client = store.client();
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .map_err(sql("cannot begin the transaction that holds the pause"))?;
    let row = client
        .query_opt(
            "SELECT m.lsn::text, coalesce(c.action, ''), coalesce(m.requested_by, ''), coalesce(m.reason, ''), \
                    coalesce((SELECT p.lsn::text FROM pg2dns.progress p WHERE p.slot = m.slot), '0/0'), \
                    pg_current_wal_lsn()::text \
             FROM pg2dns.mode m LEFT JOIN pg2dns.control c ON c.id = m.control_id \
             WHERE m.slot = $1 AND m.mode = 'paused' AND m.lsn IS NOT NULL FOR SHARE OF m",
            &[&slot],
        )
        .await;
    let row = match row {
        Ok(Some(row)) => row,
        // Resumed since it was read (a serialization failure: the row
        // changed after this transaction's snapshot).
        Ok(None) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Ok(None);
        }
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Ok(None);
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(sql("cannot hold the operator's pause (SELECT … FOR SHARE on pg2dns.mode: the role needs UPDATE on it)")(e).into());
        }
    };
    let lsn = |i: usize| -> Result<Lsn, ReconcileError> {
        let text: String = row.get(i);
        text.parse().map_err(|_| {
            ReconcileError::Store(StoreError::Corrupt {
                table: "mode",
                value: crate::store::Corrupt::Lsn { text, of: None },
            })
        })
    };
    let pause = OperatorPause {
        lsn: lsn(0)?,
        requested_by: row.get(2),
        reason: row.get(3),
        wal: lsn(5)?,
    };
    let progress = lsn(4)?;
    let action: String = row.get(1);
    if action == "pause" && progress < pause.lsn {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(ReconcileError::PauseNotCheckpointed {
            lsn: pause.lsn,
            progress,
        });
    }
    info!(lsn = %pause.lsn, by = %pause.requested_by, reason = %pause.reason, "the service is paused by an operator: held paused while reconcile compares DNS with the row state");
    Ok(Some(pause))
}

async fn wait_paused(
    client: &tokio_postgres::Client,
    slot: &str,
    request: i64,
    what: &str,
) -> Result<(), ReconcileError> {
    // A service catching up a backlog on its way to the pause point may
    // take longer than any fixed time: it fails only when it stops moving,
    // neither receiving nor confirming anything new.
    let mut last_progress = Instant::now();
    let mut confirmed: Option<String> = None;
    loop {
        if crate::control::paused_for(client, slot, request)
            .await?
            .is_some()
        {
            return Ok(());
        }
        // What it received (published about once a second, even inside a
        // large transaction) and what its slot confirmed.
        let now_confirmed: Option<String> = client
            .query_opt(
                "SELECT concat_ws(' ', \
                    (SELECT confirmed_flush_lsn::text FROM pg_replication_slots \
                      WHERE slot_name = $1 AND database = current_database()), \
                    (SELECT received_lsn::text FROM pg2dns.stream_status WHERE slot = $1))",
                &[&slot],
            )
            .await
            .map_err(sql("cannot read the service's progress"))?
            .and_then(|r| r.get(0));
        if now_confirmed != confirmed {
            confirmed = now_confirmed;
            last_progress = Instant::now();
        }
        if last_progress.elapsed() > PAUSE_WAIT {
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
    owned: Option<&Published>,
    paused: Option<&OperatorPause>,
) -> Result<Report, ReconcileError> {
    compare_bounded(config, options, store, selected, snapshot, owned, paused).await
}

/// [`compare`] in bounded memory: the desired side (the tables, or the row
/// state of a service an operator paused) and each transfer go through
/// sorted runs on disk (see [`bounded`]), and `--apply` of the tables
/// writes the row state back from them in batches.
async fn compare_bounded(
    config: &Config,
    options: &Options,
    store: &mut Store,
    selected: &[ZoneId],
    snapshot: Option<&str>,
    owned: Option<&Published>,
    paused: Option<&OperatorPause>,
) -> Result<Report, ReconcileError> {
    let started = Instant::now();
    let bar = progress_bar(options.progress);
    bar.set_message("reading the tables");
    let dir = create_spill_dir(config)?;
    let mut per_server: std::collections::HashMap<SocketAddr, Arc<tokio::sync::Semaphore>> =
        std::collections::HashMap::new();
    for &id in selected {
        per_server
            .entry(config.zones[id.index()].primary)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(TRANSFERS_PER_SERVER)));
    }
    let window = TRANSFERS_PER_SERVER * per_server.len().max(1);
    // The transfers running at once share half the budget, the tables'
    // runs the other half.
    let budget = spill::budget(config.reconcile.memory_mib, 0.5 / window as f64);
    let timeout = config.limits.dns_timeout;
    let with_rr = has_schema(store).await?;
    // The first zones are transferred while the tables are read: the
    // database and the DNS server work at once (the transfer needs nothing
    // of the desired side until the merge).
    let read = async {
        if let Some(pause) = paused {
            // Paused by an operator: DNS as of the pause is the row state
            // (and stays so: the row state is not rewritten).
            bar.set_message("reading pg2dns's row state");
            let desired = bounded::read_paused(store, config, selected, Arc::clone(&dir)).await?;
            info!(lsn = %pause.lsn, wal = %pause.wal, rows = desired.rows, "{}", pause.describe());
            return Ok(desired);
        }
        begin_snapshot(store, snapshot).await?;
        let desired = bounded::read_desired(
            store,
            config,
            &bar,
            with_rr,
            options.apply,
            Arc::clone(&dir),
        )
        .await;
        end_snapshot(store, snapshot).await?;
        Ok::<_, ReconcileError>(desired?)
    };
    // The first transfers run on a thread of their own (the second core):
    // reading the tables, mapping and planning the rows keep this thread
    // busy for seconds at a time, and a DNS server cuts a transfer whose
    // reader stalls (Knot's `tcp-io-timeout`, 500 ms by default).
    let early: Vec<(ZoneId, Arc<ZoneConfig>, Arc<tokio::sync::Semaphore>)> = selected
        .iter()
        .take(window)
        .map(|&id| {
            let zc = Arc::clone(&config.zones[id.index()]);
            let server = Arc::clone(&per_server[&zc.primary]);
            (id, zc, server)
        })
        .collect();
    let prefetch_dir = Arc::clone(&dir);
    let prefetch =
        tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok::<_, std::io::Error>(runtime.block_on(futures_util::future::join_all(
                early.iter().map(|(id, zc, server)| {
                    let dir = &prefetch_dir;
                    async move {
                        let _permit = Arc::clone(server).acquire_owned().await;
                        (*id, bounded::transfer_zone(dir, zc, timeout, budget).await)
                    }
                }),
            )))
        });
    let (desired, prefetched) = tokio::join!(read, prefetch);
    let desired = desired?;
    // A transfer thread that could not start or panicked: each zone is
    // transferred again below, as after a transfer that failed.
    let prefetched = match prefetched {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            warn!(error = %e, "cannot start the transfers' thread; transferring after the tables are read");
            Vec::new()
        }
        Err(e) => {
            warn!(error = %e, "the transfers' thread failed; transferring after the tables are read");
            Vec::new()
        }
    };
    let prefetched: std::sync::Mutex<std::collections::HashMap<ZoneId, _>> =
        std::sync::Mutex::new(prefetched.into_iter().collect());
    info!(
        rows = desired.rows,
        refused = desired.refused,
        passes = desired.passes,
        runs = dir.runs_written(),
        ms = started.elapsed().as_millis() as u64,
        "read pg2dns.rr and the source tables"
    );
    let read_time = started.elapsed();
    let desired = &desired;
    // One sample for the whole run, however many zones it compares.
    let samples = &Samples::new();
    let mut zones = futures_util::stream::iter(selected.iter().copied().map(|id| {
        let zc = &config.zones[id.index()];
        let server = Arc::clone(&per_server[&zc.primary]);
        let bar = &bar;
        let prefetched = &prefetched;
        async move {
            // The semaphore is never closed: a permit always comes.
            let _permit = server.acquire_owned().await;
            bar.set_message(format!("zone {}", zc.name));
            let early = prefetched
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            let outcome = reconcile_zone_bounded(
                config, zc, id, desired, options, owned, budget, early, samples,
            )
            .await;
            (id, outcome)
        }
    }))
    .buffered(window);
    let mut outcomes = Vec::new();
    // The row state is written (one zone after the other, in order) while
    // the next zones' transfers go on; at most `window` outcomes wait.
    let (send, mut done) = tokio::sync::mpsc::channel(window);
    let produce = async move {
        while let Some(item) = zones.next().await {
            if send.send(item).await.is_err() {
                break;
            }
        }
    };
    let consume = async {
        let mut state = match &desired.contributions {
            Some(sorted) => Some(bounded::StateRows::new(sorted).map_err(|source| {
                bounded::BoundedError::Spill {
                    dir: dir.path().to_path_buf(),
                    source,
                }
            })?),
            None => None,
        };
        while let Some((id, mut outcome)) = done.recv().await {
            let zc = &config.zones[id.index()];
            if let (Some(state), true, None, Some(true)) = (
                state.as_mut(),
                options.apply,
                outcome.error.as_ref(),
                outcome.in_sync_after,
            ) {
                // One transaction per source: every source's state of the
                // zone, emptied ones included, is rewritten; a row with a
                // record still waiting for its target's address is kept
                // aside as the stream keeps it (pg2dns.waiting, no row state).
                for (i, name) in desired.sources.iter().enumerate() {
                    let source = SourceId::new(i).map_err(StoreError::from)?;
                    let waiting = &outcome.waiting_after;
                    let written = store
                        .replace_zone_state_batched(name, &zc.name, || {
                            let Some(rows) = state.batch(id, source)? else {
                                return Ok(None);
                            };
                            let (held, kept) = split_waiting(&rows, waiting);
                            let rows = if held.is_empty() {
                                rows
                            } else {
                                kept.into_iter().cloned().collect()
                            };
                            Ok(Some(crate::store::ZoneStateBatch {
                                rows,
                                waiting: held,
                            }))
                        })
                        .await;
                    if let Err(e) = written {
                        outcome.error = Some(match e {
                            bounded::BoundedError::Store(source) => ZoneError::State {
                                zone: zc.name.clone(),
                                source,
                            },
                            source => ZoneError::Spill {
                                zone: zc.name.clone(),
                                source,
                            },
                        });
                        break;
                    }
                }
            }
            outcomes.push(outcome);
        }
        Ok::<(), ReconcileError>(())
    };
    let ((), consumed) = tokio::join!(produce, consume);
    consumed?;
    bar.finish_and_clear();
    if options.apply && paused.is_none() {
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
        paused_at: paused.cloned(),
        spilled_runs: dir.runs_written(),
    })
}

/// The records a first load would delete that pg2dns never published,
/// counted as the merge finds them (the first [`REPORT_SAMPLE`] kept).
struct Unowned {
    owned: Option<OwnedCursor>,
    /// Why the published records could not be read (the zone's error).
    error: Option<std::io::Error>,
    count: usize,
    sample: Vec<Record>,
    /// What the run's list may still hold.
    left: Arc<std::sync::atomic::AtomicUsize>,
}

impl Unowned {
    fn new(owned: Option<&Published>, zone: &ZoneName, samples: &Samples) -> Unowned {
        let (owned, error) = match owned.map(|p| p.zone(zone)) {
            None => (None, None),
            Some(Ok(cursor)) => (Some(cursor), None),
            // Nothing counts as published: a deletion is refused, never made.
            Some(Err(e)) => (Some(OwnedCursor::default()), Some(e)),
        };
        Unowned {
            owned,
            error,
            count: 0,
            sample: Vec::new(),
            left: Arc::clone(&samples.unowned),
        }
    }

    fn note(&mut self, d: &diff::OwnerDiff) {
        let Some(owned) = self.owned.as_mut() else {
            return;
        };
        for r in &d.extra {
            let published = match owned.contains(r) {
                Ok(p) => p,
                Err(e) => {
                    // Counted as never published: its deletion is refused.
                    self.error.get_or_insert(e);
                    false
                }
            };
            if !published {
                self.count += 1;
                let room = self
                    .left
                    .fetch_update(
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                        |l| l.checked_sub(1),
                    )
                    .is_ok();
                if room {
                    self.sample.push(r.clone());
                }
            }
        }
    }

    /// Whether the repair is refused for them (a first load without
    /// `--force`); notes them in `outcome`. The published records that
    /// could not be read refuse it, as the zone's error.
    fn judge(self, options: &Options, outcome: &mut ZoneOutcome) -> bool {
        if self.owned.is_none() {
            return false;
        }
        if let Some(source) = self.error {
            outcome.error = Some(ZoneError::Spill {
                zone: outcome.zone.clone(),
                source: bounded::BoundedError::Spill {
                    dir: std::path::PathBuf::new(),
                    source,
                },
            });
            outcome.refused_unowned = true;
            return true;
        }
        outcome.unowned_count = self.count;
        outcome.unowned_deletes = self.sample;
        outcome.refused_unowned = outcome.unowned_count > 0 && !options.force;
        outcome.refused_unowned
    }
}

/// One zone compared (and with `--apply` repaired) in bounded memory: the
/// report keeps counts and the first [`REPORT_SAMPLE`] differences; the
/// verifier's file and the repair are made by merging the runs again, owner
/// by owner, as the merge produces them.
#[allow(clippy::too_many_arguments)]
async fn reconcile_zone_bounded(
    config: &Config,
    zc: &ZoneConfig,
    id: ZoneId,
    desired: &bounded::BoundedDesired,
    options: &Options,
    owned: Option<&Published>,
    budget: usize,
    early: Option<Result<bounded::Transferred, bounded::ZoneCompareError>>,
    samples: &Samples,
) -> ZoneOutcome {
    let mut outcome = empty_outcome(zc);
    outcome.refusals = desired.refusals.get(&id).cloned().unwrap_or_default();
    let timeout = config.limits.dns_timeout;
    let spill_error = |source| ZoneError::Spill {
        zone: zc.name.clone(),
        source,
    };
    let sample = Some(&samples.diffs);
    let mut unowned = Unowned::new(owned, &zc.name, samples);
    // A transfer made while the tables were read can be cut by the server
    // when this one thread was busy reading them (Knot closes a transfer
    // whose reader stalls past its `tcp-io-timeout`, 500 ms by default):
    // the zone is transferred again, now with nothing else to do. An error
    // the second transfer meets too is the zone's error.
    let early = match early {
        Some(Err(e)) => {
            warn!(zone = %zc.name, error = %crate::error::chain(&e), "the transfer made while the tables were read failed; transferring the zone again");
            None
        }
        other => other,
    };
    let compared_first = match early {
        Some(transferred) => transferred.and_then(|t| {
            bounded::compare_transferred(desired, id, zc, t, sample, &mut |d| unowned.note(d))
        }),
        None => {
            bounded::compare_zone(desired, id, zc, timeout, budget, sample, &mut |d| {
                unowned.note(d)
            })
            .await
        }
    };
    let mut first = match compared_first {
        Err(e) => {
            outcome.error = Some(compared(zc, e));
            return outcome;
        }
        Ok(c) => c,
    };
    outcome.axfr_time = first.axfr_time;
    outcome.diff_time = first.diff_time;
    outcome.transferred = first.transferred;
    let needs_repair = !first.diff.is_in_sync();
    outcome.refused_by_threshold = needs_repair
        && first
            .diff
            .exceeds(config.reconcile.max_change_share, MIN_RECORDS_FOR_THRESHOLD)
        && !options.force;
    unowned.judge(options, &mut outcome);
    let in_sync = first.diff.is_in_sync();
    let placeholder = diff::OwnerMerge::new(&zc.name, Default::default(), &zc.exclusions)
        .finish(&Default::default());
    let first_diff = std::mem::replace(&mut first.diff, placeholder);
    outcome.diff = Some(first_diff);
    if let Some(file) = options.read_files.get(&id) {
        test_pause(PAUSE_BEFORE_ZONE_FILE_ENV, "the zone-file comparison").await;
        // The file, the database and DNS merged once more, owner by owner.
        match zone_file::compare(
            desired,
            id,
            zc,
            file,
            &first.actual,
            &first.facts,
            &samples.files,
        ) {
            Ok(three_way) => {
                outcome.zone_file = Some(FileSide {
                    path: file.path.clone(),
                    records: file.records,
                    skipped: file.skipped,
                    three_way,
                })
            }
            Err(source) => {
                outcome.error = Some(spill_error(source));
                return outcome;
            }
        }
    }
    if !options.apply || outcome.refused_by_threshold || outcome.refused_unowned {
        return outcome;
    }
    if in_sync {
        // Nothing to send, nothing to verify: in sync as transferred.
        outcome.in_sync_after = Some(true);
        return outcome;
    }
    if let Some(verifier) = &zc.verify {
        // The zone as repaired is written to the verifier's file from one
        // more merge of the same runs, owner by owner.
        bar_less_verify_note(zc);
        let written = |path: &std::path::Path| write_repaired(path, desired, id, zc, &first);
        match verify(&zc.name, verifier, written).await {
            Ok(()) => outcome.verified = true,
            Err(refusal) => {
                warn!(zone = %zc.name, command = %refusal.command, reason = %refusal.reason, "the verifier refused the repair; nothing was sent");
                outcome.verify_refused = Some(refusal);
                return outcome;
            }
        }
    }
    let started = Instant::now();
    if let Err(e) = repair_streamed(
        config,
        zc,
        id,
        desired,
        options,
        owned,
        budget,
        first,
        &mut outcome,
        samples,
    )
    .await
    {
        outcome.error = Some(e);
    }
    outcome.repair_time = started.elapsed();
    outcome
}

/// A bounded comparison's failure as the zone's error.
fn compared(zc: &ZoneConfig, e: bounded::ZoneCompareError) -> ZoneError {
    match e {
        bounded::ZoneCompareError::Axfr(e) => ZoneError::from(*e),
        bounded::ZoneCompareError::Spill(source) => ZoneError::Spill {
            zone: zc.name.clone(),
            source,
        },
    }
}

/// Writes the zone as it will be after the repair to `path`: the transfer
/// (SOA and records pg2dns does not own included) with each owner's
/// differences applied, from a merge of the compared runs, owner by owner.
fn write_repaired(
    path: &std::path::Path,
    desired: &bounded::BoundedDesired,
    id: ZoneId,
    zc: &ZoneConfig,
    compared: &bounded::ZoneCompared,
) -> std::io::Result<()> {
    use std::io::Write;
    let other = |e: bounded::BoundedError| std::io::Error::other(crate::error::chain(&e));
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut line = format!("$ORIGIN {}\n", zc.name);
    zonefile::write_record(&mut line, &compared.soa);
    out.write_all(line.as_bytes())?;
    let mut m = bounded::ZoneMerge::new(
        desired,
        id,
        &zc.name,
        compared.facts.clone(),
        &zc.exclusions,
        &compared.actual,
    )
    .map_err(other)?;
    m.merge = m.merge.with_sample(0);
    let mut write = |records: &mut dyn Iterator<Item = &Record>| -> std::io::Result<()> {
        line.clear();
        for r in records.filter(|r| r.rtype != RType::SOA) {
            zonefile::write_record(&mut line, r);
        }
        out.write_all(line.as_bytes())
    };
    while let Some((_, d)) = m.next_owner().map_err(other)? {
        match d {
            None => write(&mut m.actual().iter())?,
            Some(d) => write(&mut after_repair_owner(m.actual(), &d).iter())?,
        }
    }
    let addressed = m.addressed().map_err(other)?;
    for (_, d) in m.merge.addressed_missing(&addressed) {
        write(&mut d.missing.iter())?;
    }
    out.flush()
}

/// One owner as it will be after the repair: what DNS holds at it, the
/// records deleted or changed taken out, the missing and changed put in.
fn after_repair_owner(actual: &[Record], d: &diff::OwnerDiff) -> Vec<Record> {
    let removed = |r: &Record| {
        d.extra
            .iter()
            .chain(d.ttl.iter().map(|t| &t.wanted))
            .any(|x| x.rtype == r.rtype && x.rdata == r.rdata)
    };
    let mut out: Vec<Record> = actual.iter().filter(|r| !removed(r)).cloned().collect();
    out.extend(d.missing.iter().cloned());
    out.extend(d.ttl.iter().map(|t| t.wanted.clone()));
    out
}

/// Sends the repair owner by owner as a merge of the compared runs
/// produces it (packed into guarded UPDATEs as the stream packs them); when
/// the SOA guard fails, transfers the zone again, judges the fresh
/// comparison as the first, and starts over from it; ends with a transfer
/// that checks the zone is in sync. Nothing but the message being filled
/// is held.
#[allow(clippy::too_many_arguments)]
async fn repair_streamed(
    config: &Config,
    zc: &ZoneConfig,
    id: ZoneId,
    desired: &bounded::BoundedDesired,
    options: &Options,
    owned: Option<&Published>,
    runs_budget: usize,
    mut current: bounded::ZoneCompared,
    outcome: &mut ZoneOutcome,
    samples: &Samples,
) -> Result<(), ZoneError> {
    let timeout = config.limits.dns_timeout;
    let zone = &zc.name;
    let spill = |source| ZoneError::Spill {
        zone: zone.clone(),
        source,
    };
    let plan = |source| ZoneError::Plan {
        zone: zone.clone(),
        source,
    };
    // The stream's budget for this zone (see `Config::plan_limits`).
    let budget = Budget {
        max_message_bytes: config.limits.max_message_bytes,
        tsig_record_len: zc.key.record_len(),
    };
    let mut failures = 0;
    let mut first_attempt = true;
    loop {
        let soa_seen = current.soa.rdata.clone();
        // The SOA a failed guard expected.
        let mut guard_failed = None;
        {
            let mut m = bounded::ZoneMerge::new(
                desired,
                id,
                zone,
                current.facts.clone(),
                &zc.exclusions,
                &current.actual,
            )
            .map_err(spill)?;
            m.merge = m.merge.with_sample(0);
            let mut stream = diff::RepairStream::new(zone, soa_seen.len(), budget);
            let mut conn: Option<Connection> = None;
            let mut soa = soa_seen.clone();
            let mut merged = false;
            'pass: while !merged {
                match m.next_owner().map_err(spill)? {
                    Some((owner, Some(d))) => stream.push(&owner, &d).map_err(plan)?,
                    Some((_, None)) => continue,
                    None => {
                        let addressed = m.addressed().map_err(spill)?;
                        for (owner, d) in m.merge.addressed_missing(&addressed) {
                            stream.push(&owner, &d).map_err(plan)?;
                        }
                        stream.finish().map_err(plan)?;
                        merged = true;
                    }
                }
                for ops in stream.take_ready() {
                    if first_attempt {
                        test_pause(PAUSE_BEFORE_REPAIR_ENV, "the repair").await;
                        first_attempt = false;
                    }
                    let msg_id = axfr::fresh_id();
                    let guard = (!options.unguarded).then_some(&soa);
                    let wire = diff::encode_repair(zone, msg_id, guard, &ops).map_err(plan)?;
                    let rcode =
                        send_retrying(&mut conn, zc, &wire, timeout, &mut outcome.resends).await?;
                    match rcode.class() {
                        RcodeClass::Accepted => {
                            outcome.messages_applied += 1;
                            failures = 0;
                            soa = diff::next_serial(&soa).unwrap_or(soa);
                        }
                        // A guarded message carries one prerequisite, the
                        // SOA: the zone changed since the transfer. This is
                        // also how a resent message whose first copy was in
                        // fact applied (its answer lost) ends: the serial
                        // it moved fails the guard, and the fresh transfer
                        // shows what it did.
                        RcodeClass::Prerequisite if !options.unguarded => {
                            guard_failed = Some(soa.clone());
                            break 'pass;
                        }
                        // Transient never comes back (send_retrying).
                        RcodeClass::Prerequisite
                        | RcodeClass::Refused
                        | RcodeClass::Fatal
                        | RcodeClass::Transient => {
                            return Err(ZoneError::Refused {
                                zone: zone.clone(),
                                server: zc.primary,
                                rcode,
                                hint: rcode.hint(),
                            });
                        }
                    }
                }
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
            // A first load refuses records that appeared meanwhile as it
            // refuses those it saw first.
            let mut unowned = Unowned::new(owned, &zc.name, samples);
            let again =
                bounded::compare_zone(desired, id, zc, timeout, runs_budget, None, &mut |d| {
                    unowned.note(d)
                })
                .await
                .map_err(|e| compared(zc, e))?;
            if again.soa.rdata == expected {
                return Err(ZoneError::GuardUnusable {
                    zone: zone.clone(),
                    server: zc.primary,
                });
            }
            if !options.force && unowned.judge(options, outcome) {
                outcome.in_sync_after = Some(false);
                return Ok(());
            }
            if again
                .diff
                .exceeds(config.reconcile.max_change_share, MIN_RECORDS_FOR_THRESHOLD)
                && !options.force
            {
                outcome.refused_by_threshold = true;
                outcome.in_sync_after = Some(false);
                return Ok(());
            }
            current = again;
            continue;
        }
        // Check: a fresh transfer must show the zone in sync.
        let last = bounded::compare_zone(desired, id, zc, timeout, runs_budget, None, &mut |_| {})
            .await
            .map_err(|e| compared(zc, e))?;
        outcome.in_sync_after = Some(last.diff.is_in_sync());
        outcome.waiting_after = last.diff.waiting;
        return Ok(());
    }
}

fn bar_less_verify_note(zc: &ZoneConfig) {
    info!(zone = %zc.name, "verifying the zone as repaired (written to the verifier's file owner by owner)");
}

/// A zone's outcome before anything was done.
fn empty_outcome(zc: &ZoneConfig) -> ZoneOutcome {
    ZoneOutcome {
        zone: zc.name.clone(),
        diff: None,
        transferred: 0,
        axfr_time: Duration::ZERO,
        diff_time: Duration::ZERO,
        repair_time: Duration::ZERO,
        waiting_after: Vec::new(),
        refused_by_threshold: false,
        unowned_deletes: Vec::new(),
        unowned_count: 0,
        refused_unowned: false,
        messages_applied: 0,
        retries: 0,
        resends: 0,
        in_sync_after: None,
        error: None,
        refusals: Vec::new(),
        zone_file: None,
        primary: None,
        verify_refused: None,
        verified: false,
    }
}

fn update_err(zc: &ZoneConfig, source: UpdateFailure) -> ZoneError {
    ZoneError::Update {
        zone: zc.name.clone(),
        server: zc.primary,
        source,
    }
}

/// Sends one repair UPDATE until the server gives an answer that is not
/// transient, as the stream does: a transient failure
/// ([`UpdateFailure::is_transient`]) drops the connection, waits the
/// stream's backoff and sends the same message again on a fresh one, at
/// most [`REPAIR_ATTEMPTS`] times in all; each resend is logged and counted
/// in `resends`.
///
/// Resending is safe. A guarded message whose first copy was applied after
/// all fails its SOA prerequisite, which the caller answers with a fresh
/// transfer; an unguarded one adds records that are there and deletes
/// records that are not, which leaves the zone as the first copy left it
/// (RFC 2136 §3.4.2.2-3: a duplicate replaces its copy, a delete of
/// nothing is no error).
async fn send_retrying(
    conn: &mut Option<Connection>,
    zc: &ZoneConfig,
    wire: &[u8],
    timeout: Duration,
    resends: &mut usize,
) -> Result<Rcode, ZoneError> {
    let mut backoff = session::INITIAL_BACKOFF;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let failure = match attempt(conn, zc, wire, timeout).await {
            Ok(rcode) if rcode.class() != RcodeClass::Transient => return Ok(rcode),
            Ok(rcode) => UpdateFailure::Transient(rcode),
            Err(failure) if failure.is_transient() => failure,
            Err(failure) => return Err(update_err(zc, failure)),
        };
        *conn = None;
        if attempts >= REPAIR_ATTEMPTS {
            return Err(ZoneError::GaveUp {
                zone: zc.name.clone(),
                server: zc.primary,
                attempts,
                source: failure,
            });
        }
        warn!(
            zone = %zc.name,
            server = %zc.primary,
            reason = %crate::error::chain(&failure),
            attempt = attempts,
            of = REPAIR_ATTEMPTS,
            backoff = ?backoff,
            "a repair UPDATE failed transiently; sending it again on a fresh connection after the backoff"
        );
        *resends += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(session::MAX_BACKOFF);
    }
}

/// One attempt at a repair UPDATE, on `conn` or a new connection.
async fn attempt(
    conn: &mut Option<Connection>,
    zc: &ZoneConfig,
    wire: &[u8],
    timeout: Duration,
) -> Result<Rcode, UpdateFailure> {
    let c = match conn {
        Some(c) => c,
        None => conn.insert(
            Connection::connect(zc.primary)
                .await
                .map_err(UpdateFailure::Connect)?,
        ),
    };
    send(c, zc, wire, timeout).await
}

/// Signs and sends one repair UPDATE, and returns the verified answer's RCODE.
async fn send(
    conn: &mut Connection,
    zc: &ZoneConfig,
    wire: &[u8],
    timeout: Duration,
) -> Result<Rcode, UpdateFailure> {
    let request = tsig::sign(wire, &zc.key, axfr::unix_now(), tsig::DEFAULT_FUDGE)
        .map_err(UpdateFailure::Sign)?;
    conn.send(&request.wire)
        .await
        .map_err(UpdateFailure::Send)?;
    loop {
        let answer = match tokio::time::timeout(timeout, conn.recv()).await {
            Err(_) => return Err(UpdateFailure::Timeout),
            Ok(None) => return Err(UpdateFailure::Closed),
            Ok(Some(Err(e))) => return Err(UpdateFailure::Read(e)),
            Ok(Some(Ok(a))) => a,
        };
        if answer.get(..2) != Some(&request.id.to_be_bytes()[..]) {
            continue;
        }
        let verified = tsig::verify_response(&answer, &zc.key, &request, axfr::unix_now());
        return tsig::judged_rcode(verified.map(|v| v.rcode))
            .map(Rcode)
            .map_err(UpdateFailure::Answer);
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

/// The test hooks [`PAUSE_BEFORE_REPAIR_ENV`] and
/// [`PAUSE_BEFORE_ZONE_FILE_ENV`]: waits the milliseconds `env` names
/// before `what`.
async fn test_pause(env: &str, what: &str) {
    if let Some(ms) = std::env::var(env).ok().and_then(|v| v.parse::<u64>().ok()) {
        eprintln!("pg2dns: pausing {ms} ms before {what} ({env})");
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Reads every `--zone-file ZONE=PATH` (an `$INCLUDE` relative to the file
/// that includes it) into sorted runs: the records are spilled as they are
/// read, not held (see [`zone_file`]).
fn read_zone_files(
    config: &Config,
    options: &Options,
    selected: &[ZoneId],
) -> Result<BTreeMap<ZoneId, zone_file::ReadFile>, ReconcileError> {
    let zones = config.zones();
    let mut out = BTreeMap::new();
    let mut dir = None;
    // The files are read one after the other, before the tables: the
    // tables' budget.
    let budget = spill::budget(config.reconcile.memory_mib, 0.5);
    for (zone, path) in &options.zone_files {
        let id = ZoneName::parse(zone)
            .ok()
            .and_then(|z| zones.id_of(&z))
            .ok_or_else(|| ReconcileError::UnknownZone(zone.clone()))?;
        if !selected.contains(&id) {
            return Err(ReconcileError::ZoneFileArg(format!(
                "{zone}={}: zone {zone} is not among the --zone given",
                path.display()
            )));
        }
        let name = zones.name(id).clone();
        let text =
            std::fs::read_to_string(path).map_err(|source| ReconcileError::ZoneFileRead {
                path: path.clone(),
                source,
            })?;
        let mut load = |inc: &str, from: &str| -> Result<zonefile::Loaded, String> {
            let inc_path = std::path::Path::new(from)
                .parent()
                .unwrap_or(std::path::Path::new(""))
                .join(inc);
            let text = std::fs::read_to_string(&inc_path).map_err(|e| e.to_string())?;
            Ok(zonefile::Loaded {
                name: inc_path.display().to_string(),
                text,
            })
        };
        let dir = match &dir {
            Some(d) => d,
            None => dir.insert(create_spill_dir(config)?),
        };
        let file = zone_file::read(
            &name,
            path.clone(),
            &path.display().to_string(),
            &text,
            &mut load,
            dir,
            budget,
        )
        .map_err(|e| match e {
            zone_file::ReadError::Parse(source) => ReconcileError::ZoneFile {
                zone: name.clone(),
                source,
            },
            zone_file::ReadError::Spill { dir, source } => {
                bounded::BoundedError::Spill { dir, source }.into()
            }
        })?;
        info!(zone = %name, file = %path.display(), records = file.records, skipped = file.skipped, "read the zone file");
        out.insert(id, file);
    }
    Ok(out)
}

/// A TTL on one side, or `—` where the side lacks the record.
fn side_ttl(ttl: Option<u32>) -> String {
    ttl.map_or_else(|| "—".to_owned(), |t| t.to_string())
}

fn file_side_human(
    f: &FileSide,
    green: &dyn Fn(&str) -> String,
    red: &dyn Fn(&str) -> String,
) -> String {
    let t = &f.three_way;
    let dns = t.records.first().is_some_and(|r| r.dns.is_some());
    let mut out = format!(
        "  zone file {} ({} records read, {} of types pg2dns does not own skipped): ",
        f.path.display(),
        f.records,
        f.skipped
    );
    if t.agrees() {
        out.push_str(&green("agrees with the database and DNS"));
        out.push('\n');
        return out;
    }
    out.push_str(&red(&format!(
        "{} record(s) differ; the file lacks {} the database wants, has {} it does not, {} with another TTL",
        t.differences,
        t.file_lacks,
        t.file_extra,
        t.file_ttl_differences
    )));
    out.push('\n');
    out.push_str(if dns {
        "    TTL in: file / database / DNS (— where the side lacks the record)\n"
    } else {
        "    TTL in: file / database (— where the side lacks the record)\n"
    });
    for r in t.records.iter().take(40) {
        let mut sides = format!("{} / {}", side_ttl(r.file), side_ttl(r.database));
        if let Some(d) = r.dns {
            sides.push_str(&format!(" / {}", side_ttl(d)));
        }
        out.push_str(&format!(
            "    {} {} {}   {sides}\n",
            r.record.owner,
            r.record.rtype,
            r.record.rdata_text()
        ));
    }
    if t.differences > 40 {
        out.push_str(&format!(
            "    … and {} more (--json lists {})\n",
            t.differences - 40,
            if t.is_sampled() {
                format!("the first {}", t.records.len())
            } else {
                "all".to_string()
            }
        ));
    }
    out
}

fn file_side_json(f: &FileSide, rec: &dyn Fn(&Record) -> serde_json::Value) -> serde_json::Value {
    use serde_json::json;
    let t = &f.three_way;
    json!({
        "path": f.path.display().to_string(),
        "records": f.records,
        "skipped": f.skipped,
        "agrees": t.agrees(),
        "file_lacks": t.file_lacks,
        "file_extra": t.file_extra,
        "file_ttl_differences": t.file_ttl_differences,
        "differences_count": t.differences,
        "sampled": t.is_sampled(),
        "differences": t.records.iter().map(|r| {
            let mut v = rec(&r.record);
            v["file_ttl"] = json!(r.file);
            v["database_ttl"] = json!(r.database);
            // Absent when DNS was not compared; null when DNS lacks it.
            if let Some(dns) = r.dns {
                v["dns_ttl"] = json!(dns);
            }
            v
        }).collect::<Vec<_>>(),
    })
}

/// The verifier's output kept in the report, in bytes.
pub const VERIFY_OUTPUT_MAX: usize = 4096;

/// Writes the zone as repaired (`write` writes it to the path given) as a
/// master file in a private temporary directory and runs the zone's
/// verifier on it (`{zone}` and `{file}` in its arguments,
/// `PG2DNS_ZONE` and `PG2DNS_ZONE_FILE` in its environment). A non-zero
/// exit, a signal, a timeout (the verifier's process group is killed) or a
/// verifier that cannot start refuse the repair.
async fn verify(
    zone: &ZoneName,
    verifier: &crate::config::Verifier,
    write: impl FnOnce(&std::path::Path) -> std::io::Result<()>,
) -> Result<(), VerifyRefusal> {
    use std::os::unix::fs::DirBuilderExt;
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pg2dns-verify-{}-{run}", std::process::id()));
    let zone_text = zone.to_string();
    let file = dir.join(format!("db.{}", zone_text.trim_end_matches('.')));
    let file_text = file.display().to_string();
    let args: Vec<String> = verifier
        .command
        .iter()
        .map(|a| {
            a.replace("{zone}", &zone_text)
                .replace("{file}", &file_text)
        })
        .collect();
    let shown = args.join(" ");
    let refuse = |reason: String, output: String| VerifyRefusal {
        command: shown.clone(),
        reason,
        output,
    };
    let written = std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .and_then(|()| write(&file));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(refuse(
            format!("could not run: cannot write {file_text}: {e}"),
            String::new(),
        ));
    }
    let result = run_verifier(&args, zone, &file_text, verifier.timeout).await;
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok((status, _)) if status.success() => {
            info!(zone = %zone, command = %shown, "the verifier accepted the repaired zone");
            Ok(())
        }
        Ok((status, output)) => Err(refuse(
            match status.code() {
                Some(code) => format!("exited with status {code}"),
                None => format!("ended by {status}"),
            },
            output,
        )),
        Err(reason) => Err(refuse(reason, String::new())),
    }
}

/// Runs the verifier; its status and output, or why it did not finish.
async fn run_verifier(
    args: &[String],
    zone: &ZoneName,
    file: &str,
    timeout: Duration,
) -> Result<(std::process::ExitStatus, String), String> {
    let (program, rest) = args.split_first().ok_or("the command is empty")?;
    let child = tokio::process::Command::new(program)
        .args(rest)
        .env("PG2DNS_ZONE", zone.to_string())
        .env("PG2DNS_ZONE_FILE", file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Its own process group, so that a timeout kills what it started.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("could not start {program:?}: {e}"))?;
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            if text.len() > VERIFY_OUTPUT_MAX {
                let mut cut = VERIFY_OUTPUT_MAX;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push_str("\n… (output truncated)");
            }
            Ok((out.status, text))
        }
        Ok(Err(e)) => Err(format!("failed while running: {e}")),
        Err(_) => {
            // The child was dropped (killed); its process group goes too.
            if let Some(pid) = pid {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
            }
            Err(format!(
                "did not finish within verify_timeout_s = {} s (killed)",
                timeout.as_secs()
            ))
        }
    }
}
