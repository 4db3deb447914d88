//! Durable state in PostgreSQL: row state, rejected rows and the progress LSN.
//!
//! Why one long transaction: the row state of docs/design.md §4 (the records each
//! source row contributed) must change in the same transaction as the
//! progress LSN, or a crash between the two would make a replay compute the
//! wrong deletes. pg2dns therefore keeps one transaction open on its SQL
//! connection while it works: each batch of changes reads the state (seeing
//! its own earlier, uncommitted writes) and writes the new state at once, and
//! the transaction commits — with the progress LSN — only once the DNS
//! servers acknowledged every UPDATE it covers. A crash rolls it back, and the
//! replication slot, which was not confirmed either, replays the same
//! transactions onto the same state: the same operations go out again, and
//! they are idempotent.
//!
//! ```text
//!   BEGIN ─▶ (load state, write state, send UPDATEs)* ─▶ all acknowledged ─▶ progress := end_lsn; COMMIT ─▶ confirm end_lsn to the slot
//! ```
//!
//! Every row of `pg2dns.row_state`, `pg2dns.progress` and `pg2dns.rejected`
//! belongs to one instance, named by its slot.

use std::collections::HashMap;
use std::hash::BuildHasher;

use pg2dns_decoder::filter::HashFilter;
use pg2dns_decoder::mapping::{Desired, RowKey};
use pg2dns_decoder::plan::{
    Loaded, NodeEntry, NodeKey, Outcome, Rejection, RowRef, SourceId, Waiting,
};
use pg2dns_decoder::{Lsn, Name, Owner, RType, Rdata, Record, ZoneName, Zones};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, Statement};

use crate::config::DatabaseConfig;

mod control_rows;
pub mod primary_status;
pub mod zone_ref;
pub mod zones;

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A query or the connection failed.
    #[error("{what}")]
    Sql {
        /// What pg2dns was doing.
        what: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A stored value cannot be read back.
    #[error("pg2dns.{table} holds a value pg2dns cannot read")]
    Corrupt {
        /// The table, in schema `pg2dns`.
        table: &'static str,
        /// What is wrong, naming the value.
        #[source]
        value: Corrupt,
    },
    /// PostgreSQL answered a position that is no LSN.
    #[error("PostgreSQL gave {what} as {value:?}, which is not an LSN")]
    NotAnLsn {
        /// What was asked (`pg_replication_slots.confirmed_flush_lsn`).
        what: &'static str,
        /// The text it answered.
        value: String,
    },
    /// More sources than ids (the configuration refuses them first).
    #[error(transparent)]
    Sources(#[from] pg2dns_decoder::plan::SourcesError),
}

/// What is wrong with a value pg2dns reads back from one of its tables.
#[derive(Debug, thiserror::Error)]
pub enum Corrupt {
    /// A record type outside 0..=65535.
    #[error("record type {0} is out of range")]
    RType(i32),
    /// A TTL outside 0..=2^32-1.
    #[error("TTL {0} is out of range")]
    Ttl(i32),
    /// An LSN that does not parse, and whose it is (a slot, a row).
    #[error("LSN {text:?}{}", of.as_ref().map(|o| format!(" of {o}")).unwrap_or_default())]
    Lsn {
        /// The text stored.
        text: String,
        /// Whose LSN, when it matters.
        of: Option<String>,
    },
    /// A name that is no wire-format name.
    #[error("{what} name")]
    Name {
        /// Which name (`owner`, `target`).
        what: &'static str,
        /// Why it does not parse.
        #[source]
        source: pg2dns_decoder::name::NameError,
    },
    /// A zone the configuration does not list, where only its zones were
    /// read.
    #[error("zone {0:?} is not configured")]
    Zone(String),
    /// A name that does not decode as an owner.
    #[error("owner name {0:?} is not a name")]
    Owner(Vec<u8>),
    /// A read of some sources' rows answered a row of another.
    #[error("a read of the rows of {asked:?} answered a row of source {got:?}")]
    Source {
        /// The sources asked for.
        asked: Vec<String>,
        /// The source of the row answered.
        got: String,
    },
    /// A lookup below DNAMEs answered for a DNAME it was not asked about.
    #[error("a lookup of the names below a DNAME answered for no DNAME")]
    NoSuchDname,
}

impl StoreError {
    /// The SQLSTATE, when the server sent one.
    pub fn sqlstate(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            StoreError::Sql { source, .. } => source.code(),
            StoreError::Corrupt { .. } | StoreError::NotAnLsn { .. } | StoreError::Sources(_) => {
                None
            }
        }
    }

    /// Whether the server's TLS certificate was refused (a typed rustls
    /// error in the driver's error chain): retrying cannot fix that.
    pub fn is_certificate(&self) -> bool {
        let StoreError::Sql { source, .. } = self else {
            return false;
        };
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(source);
        while let Some(e) = next {
            // std's io::Error hides its payload from `source()`.
            let inner = e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|inner| inner as &(dyn std::error::Error + 'static));
            for candidate in [Some(e), inner].into_iter().flatten() {
                if let Some(rustls::Error::InvalidCertificate(_)) =
                    candidate.downcast_ref::<rustls::Error>()
                {
                    return true;
                }
            }
            next = e.source();
        }
        false
    }

    /// Whether the connection itself is gone, rather than a statement failing.
    pub fn is_connection(&self) -> bool {
        match self {
            StoreError::Sql { source, .. } => source.is_closed() || source.code().is_none(),
            StoreError::Corrupt { .. } | StoreError::NotAnLsn { .. } | StoreError::Sources(_) => {
                false
            }
        }
    }
}

/// A stored record's type and TTL (`int` columns), or what is wrong with
/// them: a value out of range is a corrupt table, never a type 0 or a TTL 0.
fn type_and_ttl(table: &'static str, rtype: i32, ttl: i32) -> Result<(RType, u32), StoreError> {
    let rtype = u16::try_from(rtype).map_err(|_| StoreError::Corrupt {
        table,
        value: Corrupt::RType(rtype),
    })?;
    let ttl = u32::try_from(ttl).map_err(|_| StoreError::Corrupt {
        table,
        value: Corrupt::Ttl(ttl),
    })?;
    Ok((RType(rtype), ttl))
}

/// A TTL as the `int` columns store it. A [`Record`]'s TTL is at most
/// [`pg2dns_decoder::records::MAX_TTL`] (2^31 − 1, RFC 2181 §8), which
/// `int` holds, so the bound is never reached.
fn ttl_column(ttl: u32) -> i32 {
    i32::try_from(ttl).unwrap_or(i32::MAX)
}

/// Rows as the two arrays a query unnests: source names and keys.
fn row_columns<'a>(sources: &[&'a str], rows: &'a [RowRef]) -> (Vec<&'a str>, Vec<&'a str>) {
    rows.iter()
        .map(|(s, k)| (source_name(sources, *s), k.0.as_str()))
        .unzip()
}

/// Owners in zones as the two arrays a query unnests: zone names and wire
/// owner names.
fn node_columns<'a>(zones: &Zones, nodes: &'a [NodeKey]) -> (Vec<String>, Vec<&'a [u8]>) {
    nodes
        .iter()
        .map(|(z, o)| (zones.name(*z).to_string(), o.name().as_wire()))
        .unzip()
}

/// The arrays [`WRITE_ROWS`] unnests: the rows whose old records go, and
/// one entry per new record.
struct RowArrays<'a> {
    del_sources: Vec<&'a str>,
    del_keys: Vec<&'a str>,
    sources: Vec<&'a str>,
    keys: Vec<&'a str>,
    zones: Vec<&'a str>,
    owners: Vec<&'a [u8]>,
    rtypes: Vec<i32>,
    rdatas: Vec<&'a [u8]>,
    ttls: Vec<i32>,
    targets: Vec<Option<Vec<u8>>>,
}

impl<'a> RowArrays<'a> {
    fn new(
        sources: &[&'a str],
        zone_names: &'a [String],
        rows: &'a [(RowRef, Vec<Desired>)],
        replaced: &'a [RowRef],
    ) -> RowArrays<'a> {
        // Only rows that held records have any to delete.
        let (del_sources, del_keys) = row_columns(sources, replaced);
        let n = rows.iter().map(|(_, r)| r.len()).sum();
        let mut a = RowArrays {
            del_sources,
            del_keys,
            sources: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            zones: Vec::with_capacity(n),
            owners: Vec::with_capacity(n),
            rtypes: Vec::with_capacity(n),
            rdatas: Vec::with_capacity(n),
            ttls: Vec::with_capacity(n),
            targets: Vec::with_capacity(n),
        };
        for ((s, k), records) in rows {
            for d in records {
                a.sources.push(source_name(sources, *s));
                a.keys.push(k.0.as_str());
                a.zones
                    .push(zone_names.get(d.zone.index()).map_or("", String::as_str));
                a.owners.push(d.record.owner.name().as_wire());
                a.rtypes.push(i32::from(d.record.rtype.0));
                a.rdatas.push(d.record.rdata.as_wire());
                // The plan never holds a TTL above 2^31 - 1 (RFC 2181 §8).
                a.ttls.push(ttl_column(d.record.ttl));
                a.targets.push(pointed_at(&d.record));
            }
        }
        a
    }

    fn params<'b>(&'b self, slot: &'b String) -> [&'b (dyn ToSql + Sync); 11] {
        [
            slot,
            &self.del_sources,
            &self.del_keys,
            &self.sources,
            &self.keys,
            &self.zones,
            &self.owners,
            &self.rtypes,
            &self.rdatas,
            &self.ttls,
            &self.targets,
        ]
    }
}

/// Rows of one source in one zone for [`Store::replace_zone_state_batched`]:
/// each row with the records it contributes, and rows kept aside waiting for
/// an address (with the owner they wait at).
#[derive(Debug, Default)]
pub struct ZoneStateBatch {
    /// Rows and their records.
    pub rows: Vec<(RowKey, Vec<Record>)>,
    /// Rows waiting, with their target and records.
    pub waiting: Vec<(RowKey, Owner, Vec<Record>)>,
}

/// The name an MX or SRV record points at, in wire form.
fn pointed_at(record: &Record) -> Option<Vec<u8>> {
    matches!(record.rtype, RType::MX | RType::SRV)
        .then(|| pg2dns_decoder::rdata::target(record.rtype, record.rdata.as_wire()))
        .flatten()
        .map(|t| t.as_wire().to_vec())
}

/// The condition that finds a row's state `x` for the key `k` (source,
/// row_key) of an unnested array: equalities only. `pg2dns.row_state`
/// finds the key through its hash index on `row_key`, `pg2dns.waiting`
/// through its btree over the key's 64-bit hash (the key itself is
/// rechecked).
macro_rules! by_row {
    () => {
        "x.slot = $1 AND x.source = k.source \
         AND hashtextextended(x.row_key, 0) = hashtextextended(k.row_key, 0) \
         AND x.row_key = k.row_key"
    };
}

/// A DELETE of the rows of `pg2dns.$table` whose keys (source, row_key)
/// are the unnested `$2` and `$3` of the slot `$1`.
macro_rules! delete_by_row {
    ($table:literal) => {
        concat!(
            "DELETE FROM pg2dns.",
            $table,
            " WHERE ctid = ANY(ARRAY( \
               SELECT r.ctid FROM unnest($2::text[], $3::text[]) AS k(source, row_key) \
               CROSS JOIN LATERAL ( \
                 SELECT ctid FROM pg2dns.",
            $table,
            " x WHERE ",
            by_row!(),
            " OFFSET 0) r))"
        )
    };
}

/// One statement replaces rows' records: the DELETE in the WITH clause and
/// the INSERT see the same snapshot, so the DELETE removes exactly the old
/// rows.
const WRITE_ROWS: &str = concat!(
    "WITH old AS (",
    delete_by_row!("row_state"),
    ") INSERT INTO pg2dns.row_state (slot, source, row_key, zone, owner, rtype, rdata, ttl, target) \
     SELECT $1, * FROM unnest($4::text[], $5::text[], $6::text[], $7::bytea[], $8::int[], $9::bytea[], $10::int[], $11::bytea[])"
);

/// The source name of a source id (as row state and rejections store it).
fn source_name<'a>(sources: &[&'a str], id: SourceId) -> &'a str {
    // Ids are made from the same list (`SourceId::new` over the mappings),
    // so every id has a name; an empty one would match no row.
    sources.get(usize::from(id.0)).copied().unwrap_or("")
}

/// Wraps a driver error with what pg2dns was doing.
pub fn sql(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |source| StoreError::Sql { what, source }
}

/// A checkpoint's COMMIT under way (see [`Store::start_commit`]): resolves
/// to what [`Store::commit`] returns. Its round trip runs as a task of its
/// own, so that its answers are always read: the connection hands each
/// request's answers over in order and would wait on an unread one, and
/// with it every statement sent after. Cancel-safe when polled by
/// reference (`&mut committing`).
pub struct Committing {
    task: tokio::task::JoinHandle<Result<Option<Unflushed>, StoreError>>,
}

impl std::future::Future for Committing {
    type Output = Result<Option<Unflushed>, StoreError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match std::future::Future::poll(std::pin::Pin::new(&mut self.task), cx) {
            std::task::Poll::Ready(Ok(answer)) => std::task::Poll::Ready(answer),
            std::task::Poll::Ready(Err(e)) if e.is_panic() => {
                std::panic::resume_unwind(e.into_panic())
            }
            // Cancelled: only when the runtime shuts down.
            std::task::Poll::Ready(Err(_)) | std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

/// What `pg_replication_slots` says of pg2dns's slot.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    /// Its confirmed position.
    pub confirmed: Lsn,
    /// The server process streaming from it, if one does.
    pub active_pid: Option<i32>,
    /// The database it belongs to (a logical slot decodes one database).
    pub database: String,
    /// Whether that is the database pg2dns is connected to.
    pub ours: bool,
    /// Its output plugin (`pgoutput`, `pg2dns_plugin`).
    pub plugin: String,
}

/// The SQL connection and the open checkpoint transaction.
pub struct Store {
    /// Shared with a checkpoint's COMMIT under way (see [`Committing`]).
    client: std::sync::Arc<Client>,
    connection: tokio::task::JoinHandle<()>,
    slot: String,
    in_transaction: bool,
    /// Whether `pg2dns.waiting` may hold rows of this slot: almost never,
    /// so the lookups it needs are skipped while it holds none.
    maybe_waiting: bool,
    /// Hashes of the rows `pg2dns.rejected` holds a rejection of (for this
    /// slot): a later change of such a row removes them, so that the table
    /// describes what is unpublished now.
    rejected_rows: std::collections::HashSet<u64>,
    /// The state statements, prepared once per connection: a statement
    /// sent as text is parsed, described and planned again every time,
    /// which costs a round trip and most of the backend's work.
    statements: HashMap<&'static str, Statement>,
    /// What the row state may hold, when tracked (see [`Presence`]).
    presence: Option<Presence>,
    /// Row-state writes of flushed batches held back (see [`Store::write`]),
    /// oldest first, by batch number.
    held: Vec<(u64, Held)>,
    /// The newest batch whose writes are in the open transaction.
    written: Option<u64>,
    /// The number of the batch being flushed (see [`Store::start_batch`]).
    batch: u64,
    /// The source and zone names the held rows refer to (by index).
    names: (Vec<String>, Vec<String>),
}

/// One batch's row-state write, held back: the rows' new records and the
/// rows whose old ones go.
#[derive(Debug, Default)]
struct Held {
    rows: Vec<(RowRef, Vec<Desired>)>,
    replaced: Vec<RowRef>,
}

impl Held {
    fn records(&self) -> usize {
        self.rows.iter().map(|(_, r)| r.len()).sum::<usize>() + self.replaced.len()
    }
}

/// Records held back at most before they are written at once (about a
/// batch): bounds memory, and a large write is better started early.
const HELD_MAX_RECORDS: usize = 2_000;

/// Which rows and owners the row state of this slot may hold, as 64-bit
/// hashes (in filters that may say "present" wrongly, never "absent"),
/// kept by the one session that writes it. A batch whose rows and
/// owners are all absent (a new name, the usual live change) needs no read
/// before its UPDATE goes out. A hash is only ever added, never removed:
/// a collision or a deleted row costs one read, never a wrong plan.
#[derive(Debug, Default)]
struct Presence {
    rows: HashFilter,
    nodes: HashFilter,
}

/// Records in one batch from which its row state is written with a binary
/// COPY rather than one INSERT of unnested arrays: COPY costs a round trip
/// more (the server's CopyInResponse) and a statement the server cannot
/// keep planned, which a live one-row transaction would feel. For W2's
/// 200,000-row transaction it cut the SQL backend's CPU by a quarter and
/// the walsender's (which decodes these writes too) by a tenth.
const COPY_FROM_RECORDS: usize = 256;

/// The column types of `pg2dns.row_state`, in table order.
const ROW_STATE_TYPES: &[Type] = &[
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::BYTEA,
    Type::INT4,
    Type::BYTEA,
    Type::INT4,
    Type::BYTEA,
];

/// The most records whose keys a session keeps in memory (about 4 bytes
/// each); beyond, every batch reads the state.
const PRESENCE_MAX_RECORDS: usize = 4_000_000;

fn row_hash(source: &str, key: &str) -> u64 {
    // A fixed seed: stable within the process, which is all this needs. A
    // crafted collision costs one read.
    foldhash::fast::FixedState::default().hash_one((source, key))
}

fn node_hash(zone: &str, owner: &[u8]) -> u64 {
    foldhash::fast::FixedState::default().hash_one((zone, owner))
}

impl Presence {
    /// The rows and owners that may have state: the others have none, so
    /// a read of these alone is complete. (A filter's rare wrong "present"
    /// costs only its key's lookup, where asking whether any key of a
    /// 2,000-row batch may be present would almost always say yes.)
    fn maybe_present(
        &self,
        sources: &[&str],
        rows: &[RowRef],
        owners: &[NodeKey],
        zones: &Zones,
    ) -> (Vec<RowRef>, Vec<NodeKey>) {
        let rows = rows
            .iter()
            .filter(|(s, k)| self.rows.contains(row_hash(source_name(sources, *s), &k.0)))
            .cloned()
            .collect();
        // Zone names as the row state writes them, each made once, and only
        // those of the owners asked about: a one-row transaction among
        // 50,000 zones formatted every zone's name here (half of pg2dns's
        // CPU at 20 txn/s, `perf` in BENCHMARKS.md).
        let mut names: pg2dns_decoder::HashMap<pg2dns_decoder::ZoneId, String> =
            pg2dns_decoder::HashMap::default();
        let owners = owners
            .iter()
            .filter(|(z, o)| {
                let zone = names
                    .entry(*z)
                    .or_insert_with(|| zones.name(*z).to_string());
                self.nodes.contains(node_hash(zone, o.name().as_wire()))
            })
            .cloned()
            .collect();
        (rows, owners)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// A slot's row state in some zones, as [`Store::zone_state`] reads it.
#[derive(Debug, Default)]
pub struct ZoneState {
    /// Rows (source and key) that contribute a record to those zones.
    pub rows: usize,
    /// Each distinct record with its zone (as written, `example.test.`),
    /// at the smallest TTL of the rows that contribute it.
    pub records: Vec<(String, Record)>,
}

/// Counts of what a load found that the configuration no longer explains.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Orphans {
    /// Stored records of zones no longer configured.
    pub records: usize,
}

impl Store {
    /// Connects to PostgreSQL.
    pub async fn connect(db: &DatabaseConfig) -> Result<Store, StoreError> {
        let (client, connection) = crate::pgconn::connect(db, "pg2dns").await?;
        // Every state statement is an index lookup by design: keys come in
        // as arrays, and each is looked up through a LATERAL subquery fenced
        // with OFFSET 0, so the planner cannot flatten it into a join that
        // scans the table. Inside the long checkpoint transaction the
        // planner's statistics do not count the rows written so far, so a
        // large transaction would otherwise turn the lookups into sequential
        // scans of everything it wrote: quadratic.
        // The statements are prepared once (see `prepared`) and planned once:
        // a custom plan per execution was most of the server's work for a
        // lone live transaction, and the generic plan is the same index
        // lookup.
        client
            .batch_execute("SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off; SET jit = off; SET plan_cache_mode = force_generic_plan")
            .await
            .map_err(sql("cannot set the session's planner options"))?;
        // Before the schema exists (setup) nothing waits and nothing was
        // rejected; once it does, a failed read is an error, never `false`.
        // A role that may not read them (check-config as a role without the
        // grants, which it then names) cannot stream either: it keeps the
        // conservative answers (maybe waiting) and nothing more.
        let schema = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                                 WHERE n.nspname = 'pg2dns' AND c.relname = 'waiting'), \
                        EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                                 WHERE n.nspname = 'pg2dns' AND c.relname = 'rejected')",
                &[],
            )
            .await
            .map_err(sql("cannot look up pg2dns's tables"))?;
        let (has_waiting, has_rejected): (bool, bool) = (schema.get(0), schema.get(1));
        let denied = |e: &tokio_postgres::Error| {
            e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
        };
        let maybe_waiting = if has_waiting {
            match client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg2dns.waiting WHERE slot = $1)",
                    &[&db.slot],
                )
                .await
            {
                Ok(row) => row.get::<_, bool>(0),
                Err(e) if denied(&e) => true,
                Err(e) => return Err(sql("cannot read pg2dns.waiting")(e)),
            }
        } else {
            false
        };
        let rejected_rows = if has_rejected {
            match client
                .query(
                    "SELECT DISTINCT source, row_key FROM pg2dns.rejected WHERE slot = $1",
                    &[&db.slot],
                )
                .await
            {
                Ok(rows) => rows.iter().map(|r| row_hash(r.get(0), r.get(1))).collect(),
                Err(e) if denied(&e) => std::collections::HashSet::new(),
                Err(e) => return Err(sql("cannot read pg2dns.rejected")(e)),
            }
        } else {
            std::collections::HashSet::new()
        };
        Ok(Store {
            client: std::sync::Arc::new(client),
            connection,
            slot: db.slot.clone(),
            in_transaction: false,
            maybe_waiting,
            rejected_rows,
            statements: HashMap::new(),
            presence: None,
            held: Vec::new(),
            written: None,
            batch: 0,
            names: (Vec::new(), Vec::new()),
        })
    }

    /// The client, for set-up and control statements (nothing may be held
    /// back then: see [`Store::settled_client`]).
    pub fn client(&self) -> &Client {
        debug_assert!(self.held.is_empty(), "row-state writes held back");
        &self.client
    }

    /// The client, once every held-back write is in the open transaction:
    /// for reads of the row state outside this module.
    pub async fn settled_client(&mut self) -> Result<&Client, StoreError> {
        self.write_held().await?;
        Ok(&*self.client)
    }

    /// A new batch starts: whatever the open transaction receives from now
    /// on is of it. Returns its number (batches are numbered upwards).
    pub fn start_batch(&mut self) -> u64 {
        self.batch += 1;
        self.batch
    }

    /// The newest batch whose writes are in the open (uncommitted)
    /// transaction: a checkpoint must cover it.
    pub fn written(&self) -> Option<u64> {
        self.written
    }

    /// Writes every held-back batch into the open transaction before a
    /// statement of the current batch, which may read what they hold; that
    /// transaction then holds the current batch's work (conservatively, for
    /// a read).
    async fn write_held(&mut self) -> Result<(), StoreError> {
        self.written = self.written.max(Some(self.batch));
        if self.held.is_empty() {
            return Ok(());
        }
        let (rows, replaced) = self.take_held(u64::MAX);
        self.write_rows(&rows, &replaced).await
    }

    /// Takes the held batches up to `upto`, as one write: no two held
    /// batches touch one row or owner (a batch that touches what an earlier
    /// one holds reads first, which writes the held ones), so their rows
    /// and deletions simply add up.
    fn take_held(&mut self, upto: u64) -> (Vec<(RowRef, Vec<Desired>)>, Vec<RowRef>) {
        let split = self.held.partition_point(|(b, _)| *b <= upto);
        let mut rows = Vec::new();
        let mut replaced = Vec::new();
        for (_, h) in self.held.drain(..split) {
            rows.extend(h.rows);
            replaced.extend(h.replaced);
        }
        (rows, replaced)
    }

    /// The slot whose state this store reads and writes.
    pub fn slot(&self) -> &str {
        &self.slot
    }

    /// The durable progress LSN of this slot ([`Lsn::ZERO`] if none yet).
    pub async fn progress(&self) -> Result<Lsn, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT lsn::text FROM pg2dns.progress WHERE slot = $1",
                &[&self.slot],
            )
            .await
            .map_err(sql("cannot read pg2dns.progress"))?;
        match row {
            None => Ok(Lsn::ZERO),
            Some(r) => {
                let text: String = r.get(0);
                text.parse().map_err(|_| StoreError::Corrupt {
                    table: "progress",
                    value: Corrupt::Lsn {
                        text,
                        of: Some(format!("slot {}", self.slot)),
                    },
                })
            }
        }
    }

    /// Sets the progress outside the checkpoint transaction (set-up only).
    pub async fn set_progress(&self, lsn: Lsn) -> Result<(), StoreError> {
        self.client
            .execute(
                "INSERT INTO pg2dns.progress (slot, lsn, updated) VALUES ($1, $2::text::pg_lsn, now()) \
                 ON CONFLICT (slot) DO UPDATE SET lsn = excluded.lsn, updated = excluded.updated",
                &[&self.slot, &lsn.to_string()],
            )
            .await
            .map_err(sql("cannot write pg2dns.progress"))?;
        Ok(())
    }

    /// Whether this slot has a progress row at all.
    pub async fn has_progress(&self) -> Result<bool, StoreError> {
        Ok(self
            .client
            .query_opt(
                "SELECT 1 FROM pg2dns.progress WHERE slot = $1",
                &[&self.slot],
            )
            .await
            .map_err(sql("cannot read pg2dns.progress"))?
            .is_some())
    }

    /// The zones this instance streamed last time, `None` on its first run.
    pub async fn instance_zones(&self) -> Result<Option<Vec<String>>, StoreError> {
        Ok(self
            .client
            .query_opt(
                "SELECT zones FROM pg2dns.instance WHERE slot = $1",
                &[&self.slot],
            )
            .await
            .map_err(sql("cannot read pg2dns.instance"))?
            .map(|r| r.get(0)))
    }

    /// Records the zones this instance streams.
    pub async fn set_instance_zones(&self, zones: &[String]) -> Result<(), StoreError> {
        self.client
            .execute(
                "INSERT INTO pg2dns.instance (slot, zones, updated) VALUES ($1, $2, now()) \
                 ON CONFLICT (slot) DO UPDATE SET zones = excluded.zones, updated = excluded.updated",
                &[&self.slot, &zones],
            )
            .await
            .map_err(sql("cannot write pg2dns.instance"))?;
        Ok(())
    }

    /// The slot's confirmed flush LSN, `None` when the slot does not exist.
    pub async fn slot_confirmed(&self) -> Result<Option<Lsn>, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT coalesce(confirmed_flush_lsn, '0/0')::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .map_err(sql("cannot read pg_replication_slots"))?;
        match row {
            None => Ok(None),
            Some(r) => {
                let text: String = r.get(0);
                text.parse().map(Some).map_err(|_| StoreError::NotAnLsn {
                    what: "pg_replication_slots.confirmed_flush_lsn",
                    value: text,
                })
            }
        }
    }

    /// The slot as `pg_replication_slots` shows it: its confirmed position,
    /// the PID of the process streaming from it (if any) and its database.
    pub async fn slot_info(&self) -> Result<Option<SlotInfo>, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT coalesce(confirmed_flush_lsn, '0/0')::text, active_pid, coalesce(database::text, ''), \
                        coalesce(database = current_database(), false), coalesce(plugin::text, '') \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .map_err(sql("cannot read pg_replication_slots"))?;
        let Some(r) = row else { return Ok(None) };
        let text: String = r.get(0);
        Ok(Some(SlotInfo {
            confirmed: text.parse().map_err(|_| StoreError::NotAnLsn {
                what: "pg_replication_slots.confirmed_flush_lsn",
                value: text.clone(),
            })?,
            active_pid: r.get(1),
            database: r.get(2),
            ours: r.get(3),
            plugin: r.get(4),
        }))
    }

    async fn begin(&mut self) -> Result<(), StoreError> {
        self.write_held().await?;
        self.raw_begin().await
    }

    async fn raw_begin(&mut self) -> Result<(), StoreError> {
        if !self.in_transaction {
            self.client
                .batch_execute("BEGIN")
                .await
                .map_err(sql("cannot begin the checkpoint transaction"))?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// The prepared statement for `text`, prepared on first use.
    async fn prepared(&mut self, text: &'static str) -> Result<Statement, StoreError> {
        if let Some(s) = self.statements.get(text) {
            return Ok(s.clone());
        }
        let s = self
            .client
            .prepare(text)
            .await
            .map_err(sql("cannot prepare a pg2dns state statement"))?;
        self.statements.insert(text, s.clone());
        Ok(s)
    }

    /// Runs a prepared query in the checkpoint transaction, sending the
    /// BEGIN that opens it in the same round trip (requests are pipelined).
    async fn txn_query(
        &mut self,
        text: &'static str,
        params: &[&(dyn ToSql + Sync)],
        what: &'static str,
    ) -> Result<Vec<Row>, StoreError> {
        self.write_held().await?;
        let statement = self.prepared(text).await?;
        if self.in_transaction {
            return self
                .client
                .query(&statement, params)
                .await
                .map_err(sql(what));
        }
        let (begun, rows) = tokio::join!(
            self.client.batch_execute("BEGIN"),
            self.client.query(&statement, params)
        );
        begun.map_err(sql("cannot begin the checkpoint transaction"))?;
        self.in_transaction = true;
        rows.map_err(sql(what))
    }

    /// [`Store::txn_query`] for a statement that returns no rows.
    async fn txn_execute(
        &mut self,
        text: &'static str,
        params: &[&(dyn ToSql + Sync)],
        what: &'static str,
    ) -> Result<u64, StoreError> {
        self.write_held().await?;
        self.raw_txn_execute(text, params, what).await
    }

    /// [`Store::txn_execute`] without writing the held-back batches first.
    async fn raw_txn_execute(
        &mut self,
        text: &'static str,
        params: &[&(dyn ToSql + Sync)],
        what: &'static str,
    ) -> Result<u64, StoreError> {
        let statement = self.prepared(text).await?;
        if self.in_transaction {
            return self
                .client
                .execute(&statement, params)
                .await
                .map_err(sql(what));
        }
        let (begun, n) = tokio::join!(
            self.client.batch_execute("BEGIN"),
            self.client.execute(&statement, params)
        );
        begun.map_err(sql("cannot begin the checkpoint transaction"))?;
        self.in_transaction = true;
        n.map_err(sql(what))
    }

    /// Reads the keys the row state of this slot holds, so that batches of
    /// new rows at new owners skip the read (see [`Presence`]). Call once,
    /// before the session writes anything; without it every batch reads.
    pub async fn track_presence(&mut self) -> Result<(), StoreError> {
        use futures_util::TryStreamExt;
        self.write_held().await?;
        self.presence = None;
        let slot: &(dyn ToSql + Sync) = &self.slot;
        let rows = self
            .client
            .query_raw(
                "SELECT source, row_key, zone, owner FROM pg2dns.row_state WHERE slot = $1",
                [slot],
            )
            .await
            .map_err(sql("cannot read pg2dns.row_state"))?;
        futures_util::pin_mut!(rows);
        let mut presence = Presence::default();
        let mut records = 0usize;
        while let Some(r) = rows
            .try_next()
            .await
            .map_err(sql("cannot read pg2dns.row_state"))?
        {
            records += 1;
            if records > PRESENCE_MAX_RECORDS {
                tracing::info!(
                    records = PRESENCE_MAX_RECORDS,
                    "the row state is too large to keep its keys in memory: every batch reads it"
                );
                return Ok(());
            }
            presence.rows.insert(row_hash(r.get(0), r.get(1)));
            presence.nodes.insert(node_hash(r.get(2), r.get(3)));
        }
        self.presence = Some(presence);
        Ok(())
    }

    /// Reads, in one round trip, what a batch needs: the stored records of
    /// the given rows, and every contribution at every owner those rows had
    /// or `owners` names.
    pub async fn load(
        &mut self,
        sources: &[&str],
        rows: &[RowRef],
        owners: &[NodeKey],
        zones: &Zones,
    ) -> Result<(Loaded, Orphans), StoreError> {
        let narrowed;
        let (rows, owners) = match &self.presence {
            Some(p) => {
                narrowed = p.maybe_present(sources, rows, owners, zones);
                if narrowed.0.is_empty() && narrowed.1.is_empty() {
                    return Ok((Loaded::default(), Orphans::default()));
                }
                (&narrowed.0[..], &narrowed.1[..])
            }
            None => (rows, owners),
        };
        let (row_sources, row_keys) = row_columns(sources, rows);
        let (owner_zones, owner_names) = node_columns(zones, owners);
        let slot = self.slot.clone();
        let result = self
            .txn_query(
                concat!(
                    "WITH old AS ( \
                   SELECT r.source, r.row_key, r.zone, r.owner, r.rtype, r.rdata, r.ttl \
                   FROM unnest($2::text[], $3::text[]) AS k(source, row_key) \
                   CROSS JOIN LATERAL ( \
                     SELECT * FROM pg2dns.row_state x \
                     WHERE ",
                    by_row!(),
                    " OFFSET 0) r), \
                 nodes AS ( \
                   SELECT zone, owner FROM old \
                   UNION SELECT * FROM unnest($4::text[], $5::bytea[])) \
                 SELECT true, source, row_key, zone, owner, rtype, rdata, ttl FROM old \
                 UNION ALL \
                 SELECT false, NULL, NULL, r.zone, r.owner, r.rtype, r.rdata, r.ttl \
                 FROM nodes n \
                 CROSS JOIN LATERAL ( \
                   SELECT * FROM pg2dns.row_state x \
                   WHERE x.slot = $1 AND x.zone = n.zone AND x.owner = n.owner OFFSET 0) r"
                ),
                &[&slot, &row_sources, &row_keys, &owner_zones, &owner_names],
                "cannot read pg2dns.row_state",
            )
            .await?;
        let mut loaded = Loaded::default();
        let mut orphans = Orphans::default();
        let mut zone_ids: HashMap<String, Option<pg2dns_decoder::ZoneId>> = HashMap::new();
        for r in result {
            let zone_text: String = r.get(3);
            let zone = *zone_ids.entry(zone_text.clone()).or_insert_with(|| {
                ZoneName::parse(&zone_text)
                    .ok()
                    .and_then(|z| zones.id_of(&z))
            });
            let Some(zone) = zone else {
                orphans.records += 1;
                continue;
            };
            let owner_wire: Vec<u8> = r.get(4);
            let owner = Name::from_wire(&owner_wire)
                .map(|(n, _)| Owner::from_name(n))
                .map_err(|source| StoreError::Corrupt {
                    table: "row_state",
                    value: Corrupt::Name {
                        what: "owner",
                        source,
                    },
                })?;
            let (rtype, ttl) = type_and_ttl("row_state", r.get(5), r.get(7))?;
            let rdata = Rdata::from_wire(&r.get::<_, Vec<u8>>(6));
            if r.get::<_, bool>(0) {
                let source: String = r.get(1);
                let Some(s) = sources.iter().position(|x| *x == source) else {
                    // The query matches `x.source` to the sources asked
                    // for, so this is a bug, never a row to skip.
                    return Err(StoreError::Corrupt {
                        table: "row_state",
                        value: Corrupt::Source {
                            asked: sources.iter().map(|s| s.to_string()).collect(),
                            got: source,
                        },
                    });
                };
                let row = (SourceId::new(s)?, RowKey(r.get(2)));
                loaded.rows.entry(row).or_default().push(Desired {
                    zone,
                    record: Record {
                        owner,
                        rtype,
                        ttl,
                        rdata,
                    },
                });
            } else {
                loaded
                    .nodes
                    .entry((zone, owner))
                    .or_default()
                    .push(NodeEntry { rtype, rdata, ttl });
            }
        }
        Ok((loaded, orphans))
    }

    /// The owners strictly below any of `tops` (in the same zone) where
    /// the row state holds records, in the open transaction's view: where
    /// a batch adds a DNAME ([`Planner::dname_owners`]), the names [`load`]
    /// must read too, so that the plan refuses a DNAME above them.
    ///
    /// No index serves a suffix of the owner's wire form: this reads the
    /// slot's row state (an index-only scan), once per batch that adds a
    /// DNAME, which few do. The suffix is checked again on label
    /// boundaries here (a label may hold the bytes of a name's wire form).
    ///
    /// [`Planner::dname_owners`]: pg2dns_decoder::plan::Planner::dname_owners
    /// [`load`]: Store::load
    pub async fn names_below(
        &mut self,
        zones: &Zones,
        tops: &[NodeKey],
    ) -> Result<Vec<NodeKey>, StoreError> {
        if tops.is_empty() {
            return Ok(Vec::new());
        }
        let (zone_texts, names) = node_columns(zones, tops);
        let slot = self.slot.clone();
        let rows = self
            .txn_query(
                "SELECT DISTINCT k.i, x.owner \
                 FROM unnest($2::text[], $3::bytea[]) WITH ORDINALITY AS k(zone, top, i) \
                 CROSS JOIN LATERAL ( \
                   SELECT owner FROM pg2dns.row_state x \
                   WHERE x.slot = $1 AND x.zone = k.zone AND length(x.owner) > length(k.top) \
                     AND substr(x.owner, length(x.owner) - length(k.top) + 1) = k.top OFFSET 0) x",
                &[&slot, &zone_texts, &names],
                "cannot read pg2dns.row_state",
            )
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let (zone, top) = usize::try_from(r.get::<_, i64>(0) - 1)
                .ok()
                .and_then(|i| tops.get(i))
                .ok_or(StoreError::Corrupt {
                    table: "row_state",
                    value: Corrupt::NoSuchDname,
                })?;
            let owner_wire: Vec<u8> = r.get(1);
            let (name, _) = Name::from_wire(&owner_wire).map_err(|source| StoreError::Corrupt {
                table: "row_state",
                value: Corrupt::Name {
                    what: "owner",
                    source,
                },
            })?;
            if name.is_at_or_below(top.name()) {
                out.push((*zone, Owner::from_name(name)));
            }
        }
        Ok(out)
    }

    /// The rows that contribute each of the given records (zone, owner,
    /// type, data), in the open transaction's view, with the index of the
    /// record they contribute.
    pub async fn producers(
        &mut self,
        sources: &[&str],
        zones: &Zones,
        records: &[(pg2dns_decoder::ZoneId, Record)],
    ) -> Result<Vec<(RowRef, usize)>, StoreError> {
        self.begin().await?;
        let zone_texts: Vec<String> = records
            .iter()
            .map(|(z, _)| zones.name(*z).to_string())
            .collect();
        let owners: Vec<&[u8]> = records
            .iter()
            .map(|(_, r)| r.owner.name().as_wire())
            .collect();
        let rtypes: Vec<i32> = records.iter().map(|(_, r)| i32::from(r.rtype.0)).collect();
        let rdatas: Vec<&[u8]> = records.iter().map(|(_, r)| r.rdata.as_wire()).collect();
        let rows = self
            .client
            .query(
                "SELECT r.source, r.row_key, k.i \
                 FROM unnest($2::text[], $3::bytea[], $4::int[], $5::bytea[]) WITH ORDINALITY AS k(zone, owner, rtype, rdata, i) \
                 CROSS JOIN LATERAL ( \
                   SELECT source, row_key FROM pg2dns.row_state x \
                   WHERE x.slot = $1 AND x.zone = k.zone AND x.owner = k.owner \
                     AND x.rtype = k.rtype AND x.rdata = k.rdata OFFSET 0) r",
                &[&self.slot, &zone_texts, &owners, &rtypes, &rdatas],
            )
            .await
            .map_err(sql("cannot read pg2dns.row_state"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let source: String = r.get(0);
            let Some(s) = sources.iter().position(|x| *x == source) else {
                // A row of a source no longer configured contributes the
                // record too; it is none of this configuration's rows.
                continue;
            };
            // WITH ORDINALITY counts from 1.
            let Ok(i) = usize::try_from(r.get::<_, i64>(2) - 1) else {
                continue;
            };
            out.push(((SourceId::new(s)?, RowKey(r.get(1))), i));
        }
        Ok(out)
    }

    /// Writes what the current batch decided: the new records of every
    /// changed row (replacing the old ones), and the rejections.
    ///
    /// The row-state part is held back when it is all the batch writes and
    /// small: the checkpoint that covers the batch writes it, in its own
    /// round trip, unless a statement of a later batch needs it first. A
    /// live transaction then costs no round trip of its own, and a
    /// checkpoint can cover the acknowledged batches while later ones are
    /// still in flight (their writes, held back, are not in it).
    pub async fn write(
        &mut self,
        sources: &[&str],
        zones: &Zones,
        outcome: &mut Outcome,
    ) -> Result<(), StoreError> {
        if self.names.0.len() != sources.len() || self.names.1.len() != zones.len() {
            self.names = (
                sources.iter().map(|s| (*s).to_owned()).collect(),
                zones.iter().map(|(_, z)| z.to_string()).collect(),
            );
        }
        let held = Held {
            rows: std::mem::take(&mut outcome.rows),
            replaced: std::mem::take(&mut outcome.replaced),
        };
        if !held.rows.is_empty() || !held.replaced.is_empty() {
            self.note_presence(&held.rows);
            self.held.push((self.batch, held));
        }
        let at_once = (self.maybe_waiting && !outcome.touched.is_empty())
            || !outcome.rejections.is_empty()
            || self.held.iter().map(|(_, h)| h.records()).sum::<usize>() > HELD_MAX_RECORDS;
        if at_once {
            self.write_held().await?;
        }
        if self
            .presence
            .as_ref()
            .is_some_and(|p| p.rows.len() + p.nodes.len() > 2 * PRESENCE_MAX_RECORDS)
        {
            // Hashes are only ever added, so a long session of new rows
            // outgrows what the state holds: read the keys again (this
            // connection sees its own uncommitted writes).
            self.track_presence().await?;
        }
        if self.maybe_waiting && !outcome.touched.is_empty() {
            self.forget_waiting(sources, &outcome.touched).await?;
        }
        self.forget_rejections(sources, &outcome.touched).await?;
        if !outcome.rejections.is_empty() {
            self.reject(sources, zones, &outcome.rejections).await?;
        }
        Ok(())
    }

    /// Removes the rejections of rows changed or published since (a
    /// waiting MX published once its target has an address, a refused row
    /// corrected): a rejection names what is unpublished now. Rows refused
    /// again in this batch get their new rejection after.
    async fn forget_rejections(
        &mut self,
        sources: &[&str],
        touched: &[RowRef],
    ) -> Result<(), StoreError> {
        if self.rejected_rows.is_empty() {
            return Ok(());
        }
        let rows: Vec<RowRef> = touched
            .iter()
            .filter(|(s, k)| {
                self.rejected_rows
                    .remove(&row_hash(source_name(sources, *s), &k.0))
            })
            .cloned()
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        let (srcs, keys) = row_columns(sources, &rows);
        let slot = self.slot.clone();
        self.txn_execute(
            "DELETE FROM pg2dns.rejected x USING unnest($2::text[], $3::text[]) AS k(source, row_key) \
             WHERE x.slot = $1 AND x.source = k.source AND x.row_key = k.row_key",
            &[&slot, &srcs, &keys],
            "cannot update pg2dns.rejected",
        )
        .await?;
        Ok(())
    }

    /// Writes rows' new records in place of their old ones, in the open
    /// transaction (the held-back batches are not written first: this is
    /// how they are written).
    async fn write_rows(
        &mut self,
        rows: &[(RowRef, Vec<Desired>)],
        replaced: &[RowRef],
    ) -> Result<(), StoreError> {
        let (sources, zone_names) = self.names.clone();
        let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
        let a = RowArrays::new(&sources, &zone_names, rows, replaced);
        let slot = self.slot.clone();
        let what = "cannot update pg2dns.row_state";
        if a.sources.len() < COPY_FROM_RECORDS {
            self.raw_txn_execute(WRITE_ROWS, &a.params(&slot), what)
                .await?;
            return Ok(());
        }
        // A large batch: the old rows go first, then the new ones come in
        // with a binary COPY (one WAL record per page of rows, none of the
        // arrays an INSERT … unnest would build and take apart).
        if !a.del_keys.is_empty() {
            self.raw_txn_execute(
                delete_by_row!("row_state"),
                &[&slot, &a.del_sources, &a.del_keys],
                what,
            )
            .await?;
        }
        self.raw_begin().await?;
        let statement = self
            .prepared(
                "COPY pg2dns.row_state (slot, source, row_key, zone, owner, rtype, rdata, ttl, target) \
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
        let sink = self
            .client
            .copy_in::<_, bytes::Bytes>(&statement)
            .await
            .map_err(sql(what))?;
        let writer = BinaryCopyInWriter::new(sink, ROW_STATE_TYPES);
        futures_util::pin_mut!(writer);
        for i in 0..a.sources.len() {
            writer
                .as_mut()
                .write(&[
                    &slot,
                    &a.sources[i],
                    &a.keys[i],
                    &a.zones[i],
                    &a.owners[i],
                    &a.rtypes[i],
                    &a.rdatas[i],
                    &a.ttls[i],
                    &a.targets[i],
                ])
                .await
                .map_err(sql(what))?;
        }
        writer.finish().await.map_err(sql(what))?;
        Ok(())
    }

    /// Adds the hashes of the rows and owners that now have records.
    fn note_presence(&mut self, rows: &[(RowRef, Vec<Desired>)]) {
        let Some(p) = &mut self.presence else {
            return;
        };
        let (sources, zones) = &self.names;
        fn name(names: &[String], i: usize) -> &str {
            names.get(i).map_or("", String::as_str)
        }
        for ((s, k), records) in rows {
            for d in records {
                p.rows
                    .insert(row_hash(name(sources, usize::from(s.0)), &k.0));
                p.nodes.insert(node_hash(
                    name(zones, d.zone.index()),
                    d.record.owner.name().as_wire(),
                ));
            }
        }
    }

    async fn reject(
        &mut self,
        sources: &[&str],
        zones: &Zones,
        rejections: &[Rejection],
    ) -> Result<(), StoreError> {
        let src: Vec<&str> = rejections
            .iter()
            .map(|r| source_name(sources, r.source))
            .collect();
        let keys: Vec<&str> = rejections.iter().map(|r| r.key.0.as_str()).collect();
        let lsns: Vec<String> = rejections.iter().map(|r| r.lsn.to_string()).collect();
        let zone_texts: Vec<Option<String>> = rejections
            .iter()
            .map(|r| r.zone.map(|z| zones.name(z).to_string()))
            .collect();
        let owners: Vec<Option<String>> = rejections
            .iter()
            .map(|r| r.owner.as_ref().map(ToString::to_string))
            .collect();
        let reasons: Vec<String> = rejections
            .iter()
            .map(|r| pg2dns_decoder::error_chain(&r.reason))
            .collect();
        for (s, k) in src.iter().zip(&keys) {
            self.rejected_rows.insert(row_hash(s, k));
        }
        let slot = self.slot.clone();
        self.txn_execute(
                "INSERT INTO pg2dns.rejected (slot, source, row_key, lsn, zone, owner, reason) \
                 SELECT $1, s, k, l::pg_lsn, z, o, r FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) \
                 AS t(s, k, l, z, o, r)",
                &[&slot, &src, &keys, &lsns, &zone_texts, &owners, &reasons],
                "cannot record rejected rows in pg2dns.rejected",
            )
            .await?;
        Ok(())
    }

    /// Discards what the given rows waited for (they changed, or were
    /// published).
    async fn forget_waiting(
        &mut self,
        sources: &[&str],
        rows: &[RowRef],
    ) -> Result<(), StoreError> {
        let (srcs, keys) = row_columns(sources, rows);
        let slot = self.slot.clone();
        self.txn_execute(
            delete_by_row!("waiting"),
            &[&slot, &srcs, &keys],
            "cannot update pg2dns.waiting",
        )
        .await?;
        Ok(())
    }

    /// Keeps rows aside until their target has an address.
    pub async fn add_waiting(
        &mut self,
        sources: &[&str],
        zones: &Zones,
        waiting: &[Waiting],
    ) -> Result<(), StoreError> {
        if waiting.is_empty() {
            return Ok(());
        }
        self.begin().await?;
        self.maybe_waiting = true;
        for w in waiting {
            let source = source_name(sources, w.row.0);
            for d in &w.records {
                self.client
                    .execute(
                        "INSERT INTO pg2dns.waiting (slot, source, row_key, lsn, target, zone, owner, rtype, rdata, ttl) \
                         VALUES ($1, $2, $3, $4::text::pg_lsn, $5, $6, $7, $8, $9, $10)",
                        &[
                            &self.slot,
                            &source,
                            &w.row.1 .0,
                            &w.lsn.to_string(),
                            &w.target.1.name().as_wire(),
                            &zones.name(d.zone).to_string(),
                            &d.record.owner.name().as_wire(),
                            &i32::from(d.record.rtype.0),
                            &d.record.rdata.as_wire(),
                            &ttl_column(d.record.ttl),
                        ],
                    )
                    .await
                    .map_err(sql("cannot write pg2dns.waiting"))?;
            }
        }
        Ok(())
    }

    /// The rows waiting for an address at any of `targets`.
    pub async fn waiting_for(
        &mut self,
        sources: &[&str],
        zones: &Zones,
        targets: &[NodeKey],
    ) -> Result<Vec<Waiting>, StoreError> {
        if targets.is_empty() || !self.maybe_waiting {
            return Ok(Vec::new());
        }
        let (zone_texts, names) = node_columns(zones, targets);
        let slot = self.slot.clone();
        let rows = self
            .txn_query(
                "SELECT w.source, w.row_key, w.lsn::text, w.zone, w.target, w.owner, w.rtype, w.rdata, w.ttl \
                 FROM unnest($2::text[], $3::bytea[]) AS k(zone, target) \
                 CROSS JOIN LATERAL ( \
                   SELECT * FROM pg2dns.waiting x \
                   WHERE x.slot = $1 AND x.zone = k.zone AND x.target = k.target OFFSET 0) w",
                &[&slot, &zone_texts, &names],
                "cannot read pg2dns.waiting",
            )
            .await?;
        let mut out: Vec<Waiting> = Vec::new();
        // Where each row's entry is in `out` (a scan per record was
        // quadratic in the rows waiting).
        let mut index: HashMap<(SourceId, RowKey), usize> = HashMap::new();
        for r in rows {
            // A row of a source or zone no longer configured waits for
            // nothing this configuration publishes: it stays until that
            // source's or zone's state is dropped (resync), as its row state.
            let source: String = r.get(0);
            let Some(s) = sources.iter().position(|x| *x == source) else {
                continue;
            };
            let zone_text: String = r.get(3);
            let Some(zone) = ZoneName::parse(&zone_text)
                .ok()
                .and_then(|z| zones.id_of(&z))
            else {
                continue;
            };
            let corrupt = |what| {
                move |source| StoreError::Corrupt {
                    table: "waiting",
                    value: Corrupt::Name { what, source },
                }
            };
            let (target, _) =
                Name::from_wire(&r.get::<_, Vec<u8>>(4)).map_err(corrupt("target"))?;
            let (owner, _) = Name::from_wire(&r.get::<_, Vec<u8>>(5)).map_err(corrupt("owner"))?;
            let row = (SourceId::new(s)?, RowKey(r.get(1)));
            let lsn_text: String = r.get(2);
            let lsn: Lsn = lsn_text.parse().map_err(|_| StoreError::Corrupt {
                table: "waiting",
                value: Corrupt::Lsn {
                    text: lsn_text.clone(),
                    of: Some(format!("row {}", r.get::<_, String>(1))),
                },
            })?;
            let (rtype, ttl) = type_and_ttl("waiting", r.get(6), r.get(8))?;
            let record = Desired {
                zone,
                record: Record {
                    owner: Owner::from_name(owner),
                    rtype,
                    rdata: Rdata::from_wire(&r.get::<_, Vec<u8>>(7)),
                    ttl,
                },
            };
            match index.get(&row) {
                Some(&i) => out[i].records.push(record),
                None => out.push({
                    index.insert(row.clone(), out.len());
                    Waiting {
                        row,
                        lsn,
                        records: vec![record],
                        target: (zone, Owner::from_name(target)),
                    }
                }),
            }
        }
        Ok(out)
    }

    /// Whether the row state holds an address record at `owner` in `zone`.
    pub async fn has_address(
        &mut self,
        zones: &Zones,
        zone: pg2dns_decoder::ZoneId,
        owner: &Owner,
    ) -> Result<bool, StoreError> {
        self.begin().await?;
        Ok(self
            .client
            .query_opt(
                "SELECT 1 FROM pg2dns.row_state WHERE slot = $1 AND zone = $2 AND owner = $3 AND rtype IN (1, 28) LIMIT 1",
                &[&self.slot, &zones.name(zone).to_string(), &owner.name().as_wire()],
            )
            .await
            .map_err(sql("cannot read pg2dns.row_state"))?
            .is_some())
    }

    /// The MX and SRV records of the row state that point at any of
    /// `targets`: (row key, owner, type, target).
    pub async fn pointing_at(
        &mut self,
        zones: &Zones,
        targets: &[NodeKey],
    ) -> Result<Vec<(String, Owner, RType, Owner)>, StoreError> {
        self.begin().await?;
        let (zone_texts, names) = node_columns(zones, targets);
        let rows = self
            .client
            .query(
                "SELECT r.row_key, r.owner, r.rtype, k.target FROM unnest($2::text[], $3::bytea[]) AS k(zone, target) \
                 CROSS JOIN LATERAL ( \
                   SELECT row_key, owner, rtype FROM pg2dns.row_state x \
                   WHERE x.slot = $1 AND x.zone = k.zone AND x.target = k.target OFFSET 0) r",
                &[&self.slot, &zone_texts, &names],
            )
            .await
            .map_err(sql("cannot read pg2dns.row_state"))?;
        // A name or type that cannot be read is a corrupt table, never an
        // MX left out of the warning about its dangling target.
        let name = |wire: Vec<u8>, what: &'static str| {
            Name::from_wire(&wire)
                .map(|(n, _)| Owner::from_name(n))
                .map_err(|source| StoreError::Corrupt {
                    table: "row_state",
                    value: Corrupt::Name { what, source },
                })
        };
        rows.iter()
            .map(|r| {
                let (rtype, _) = type_and_ttl("row_state", r.get(2), 0)?;
                Ok((
                    r.get(0),
                    name(r.get(1), "owner")?,
                    rtype,
                    name(r.get(3), "target")?,
                ))
            })
            .collect()
    }

    /// This slot's row state in `zones` (named as pg2dns writes them,
    /// `example.test.`), read in the connection's current transaction: each
    /// distinct record (zone, owner, type, data) with the smallest TTL among
    /// the rows that contribute it, and how many rows contribute to those
    /// zones. While an operator has paused the service this is exactly what
    /// it sent to DNS up to the pause (`pg2dns.waiting` holds what it kept
    /// back): what `pg2dns reconcile` compares DNS with then.
    pub async fn zone_state(&self, zones: &[String]) -> Result<ZoneState, StoreError> {
        let rows: i64 = self
            .client
            .query_one(
                "SELECT count(*) FROM (SELECT DISTINCT source, row_key FROM pg2dns.row_state \
                 WHERE slot = $1 AND zone = ANY($2)) AS r",
                &[&self.slot, &zones],
            )
            .await
            .map_err(sql("cannot read pg2dns.row_state"))?
            .get(0);
        let result = self
            .client
            .query(
                "SELECT zone, owner, rtype, rdata, min(ttl) FROM pg2dns.row_state \
                 WHERE slot = $1 AND zone = ANY($2) GROUP BY zone, owner, rtype, rdata",
                &[&self.slot, &zones],
            )
            .await
            .map_err(sql("cannot read pg2dns.row_state"))?;
        let mut records = Vec::with_capacity(result.len());
        for r in result {
            let (name, _) =
                Name::from_wire(&r.get::<_, Vec<u8>>(1)).map_err(|source| StoreError::Corrupt {
                    table: "row_state",
                    value: Corrupt::Name {
                        what: "owner",
                        source,
                    },
                })?;
            let (rtype, ttl) = type_and_ttl("row_state", r.get(2), r.get(4))?;
            records.push((
                r.get::<_, String>(0),
                Record {
                    owner: Owner::from_name(name),
                    rtype,
                    ttl,
                    rdata: Rdata::from_wire(&r.get::<_, Vec<u8>>(3)),
                },
            ));
        }
        Ok(ZoneState {
            // A count is never negative.
            rows: usize::try_from(rows).unwrap_or(0),
            records,
        })
    }

    /// Replaces, in one transaction of its own, this slot's row state of
    /// `source` in `zone` with `rows` (each row and the records it
    /// contributes): what `pg2dns reconcile --apply` does once the zone
    /// holds what the database wants. Refused while a checkpoint
    /// transaction is open on this connection.
    pub async fn replace_zone_state(
        &mut self,
        source: &str,
        zone: &ZoneName,
        rows: &[(RowKey, Vec<Record>)],
        waiting: &[(RowKey, Owner, Vec<Record>)],
    ) -> Result<(), StoreError> {
        let mut once = Some(ZoneStateBatch {
            rows: rows.to_vec(),
            waiting: waiting.to_vec(),
        });
        self.replace_zone_state_batched(source, zone, || Ok::<_, StoreError>(once.take()))
            .await
    }

    /// [`Store::replace_zone_state`] with the rows in batches, as `next`
    /// gives them until `None` (reconcile in bounded memory reads them back
    /// from disk): still one transaction.
    pub async fn replace_zone_state_batched<E: From<StoreError>>(
        &mut self,
        source: &str,
        zone: &ZoneName,
        mut next: impl FnMut() -> Result<Option<ZoneStateBatch>, E>,
    ) -> Result<(), E> {
        debug_assert!(!self.in_transaction, "a checkpoint transaction is open");
        let zone_text = zone.to_string();
        let mut any_waiting = false;
        self.begin().await?;
        let result = async {
            self.client
                .execute(
                    "DELETE FROM pg2dns.row_state WHERE slot = $1 AND source = $2 AND zone = $3",
                    &[&self.slot, &source, &zone_text],
                )
                .await
                .map_err(sql("cannot clear the zone's pg2dns.row_state"))?;
            // What the source's rows wait for in the zone, as the stream
            // keeps it: the rows the comparison found waiting, nothing else.
            self.client
                .execute(
                    "DELETE FROM pg2dns.waiting WHERE slot = $1 AND source = $2 AND zone = $3",
                    &[&self.slot, &source, &zone_text],
                )
                .await
                .map_err(sql("cannot clear the zone's pg2dns.waiting"))?;
            while let Some(batch) = next()? {
                let mut keys = Vec::new();
                let mut owners: Vec<&[u8]> = Vec::new();
                let mut rtypes = Vec::new();
                let mut rdatas: Vec<&[u8]> = Vec::new();
                let mut ttls = Vec::new();
                let mut targets: Vec<Option<Vec<u8>>> = Vec::new();
                for (key, records) in &batch.rows {
                    for r in records {
                        keys.push(key.0.as_str());
                        owners.push(r.owner.name().as_wire());
                        rtypes.push(i32::from(r.rtype.0));
                        rdatas.push(r.rdata.as_wire());
                        ttls.push(i32::try_from(r.ttl).unwrap_or(i32::MAX));
                        targets.push(pointed_at(r));
                    }
                }
                if !keys.is_empty() {
                    self.client
                        .execute(
                            "INSERT INTO pg2dns.row_state (slot, source, row_key, zone, owner, rtype, rdata, ttl, target) \
                             SELECT $1, $2, k, $3, o, t, d, l, g FROM unnest($4::text[], $5::bytea[], $6::int[], $7::bytea[], $8::int[], $9::bytea[]) \
                             AS x(k, o, t, d, l, g)",
                            &[&self.slot, &source, &zone_text, &keys, &owners, &rtypes, &rdatas, &ttls, &targets],
                        )
                        .await
                        .map_err(sql("cannot write the zone's pg2dns.row_state"))?;
                }
                any_waiting |= !batch.waiting.is_empty();
                for (key, target, records) in &batch.waiting {
                    for r in records {
                        self.client
                            .execute(
                                "INSERT INTO pg2dns.waiting (slot, source, row_key, lsn, target, zone, owner, rtype, rdata, ttl) \
                                 VALUES ($1, $2, $3, '0/0', $4, $5, $6, $7, $8, $9)",
                                &[
                                    &self.slot,
                                    &source,
                                    &key.0,
                                    &target.name().as_wire(),
                                    &zone_text,
                                    &r.owner.name().as_wire(),
                                    &i32::from(r.rtype.0),
                                    &r.rdata.as_wire(),
                                    &i32::try_from(r.ttl).unwrap_or(i32::MAX),
                                ],
                            )
                            .await
                            .map_err(sql("cannot write pg2dns.waiting"))?;
                    }
                }
            }
            self.client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| E::from(sql("cannot commit the zone's pg2dns.row_state")(e)))
        }
        .await;
        if result.is_err() {
            let _ = self.client.batch_execute("ROLLBACK").await;
        }
        self.in_transaction = false;
        if result.is_ok() && any_waiting {
            self.maybe_waiting = true;
        }
        result
    }

    /// Whether a checkpoint transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    /// Commits the open transaction with the held-back writes of the
    /// batches up to `upto` and the new progress LSN; later batches' writes
    /// stay held back. The transaction must hold nothing of a later batch
    /// (see [`Store::written`]).
    ///
    /// One round trip: the held-back write, the progress write and the
    /// COMMIT are pipelined (with [`Durability::Later`], so is the read of
    /// the WAL positions). With [`Durability::Later`] the COMMIT does not
    /// wait for its WAL flush and the answer says where the flush must reach
    /// before the slot may confirm anything this commit covers.
    pub async fn commit(
        &mut self,
        lsn: Lsn,
        durability: Durability,
        upto: u64,
    ) -> Result<Option<Unflushed>, StoreError> {
        self.start_commit(lsn, durability, upto).await?.await
    }

    /// [`Store::commit`], begun: every request of its round trip is sent
    /// (queued on the connection, in order) before this returns, so any
    /// statement the store sends afterwards runs after the COMMIT, in a
    /// transaction of its own; the [`Committing`] resolves once the server
    /// answered. The caller may read frames meanwhile (the checkpoint no
    /// longer blocks the stream), but must not let the slot confirm
    /// anything this commit covers before it resolved.
    pub async fn start_commit(
        &mut self,
        lsn: Lsn,
        durability: Durability,
        upto: u64,
    ) -> Result<Committing, StoreError> {
        debug_assert!(self.written.is_none_or(|w| w <= upto));
        let (mut rows, mut replaced) = self.take_held(upto);
        let records: usize = rows.iter().map(|(_, r)| r.len()).sum();
        if records >= COPY_FROM_RECORDS {
            // Too large to ride along: written first, with a COPY.
            self.write_rows(&rows, &replaced).await?;
            (rows, replaced) = (Vec::new(), Vec::new());
        }
        let progress = self
            .prepared(
                "INSERT INTO pg2dns.progress (slot, lsn, updated) VALUES ($1, $2::text::pg_lsn, now()) \
                 ON CONFLICT (slot) DO UPDATE SET lsn = excluded.lsn, updated = excluded.updated",
            )
            .await?;
        let positions = match durability {
            Durability::Flushed => None,
            Durability::Later => Some(self.prepared(WAL_POSITIONS).await?),
        };
        let write_rows = self.prepared(WRITE_ROWS).await?;
        let (sources, zone_names) = self.names.clone();
        let lsn = lsn.to_string();
        let slot = self.slot.clone();
        let open = self.in_transaction;
        let client = self.client.clone();
        self.in_transaction = false;
        self.written = None;
        let round_trip = async move {
            let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
            let arrays = (!rows.is_empty() || !replaced.is_empty())
                .then(|| RowArrays::new(&sources, &zone_names, &rows, &replaced));
            let params: [&(dyn ToSql + Sync); 2] = [&slot, &lsn];
            let client = &client;
            // Requests go out in the order the futures are first polled.
            let begin = async {
                match open {
                    true => Ok(()),
                    false => client.batch_execute("BEGIN").await,
                }
            };
            let write = async {
                match &arrays {
                    Some(a) => client
                        .execute(&write_rows, &a.params(&slot))
                        .await
                        .map(drop),
                    None => Ok(()),
                }
            };
            let commit = match durability {
                Durability::Flushed => "COMMIT",
                Durability::Later => "SET LOCAL synchronous_commit = off; COMMIT",
            };
            let read = async {
                match &positions {
                    Some(p) => client.query_one(p, &[]).await.map(Some),
                    None => Ok(None),
                }
            };
            let (begun, written, progressed, committed, read) = tokio::join!(
                begin,
                write,
                client.execute(&progress, &params),
                client.batch_execute(commit),
                read
            );
            begun.map_err(sql("cannot begin the checkpoint transaction"))?;
            written.map_err(sql("cannot update pg2dns.row_state"))?;
            progressed.map_err(sql("cannot write pg2dns.progress"))?;
            committed.map_err(sql("cannot commit the checkpoint"))?;
            match read.map_err(sql("cannot read the WAL positions"))? {
                None => Ok(None),
                Some(read) => Ok(Some(Unflushed {
                    wal: lsn_column(&read, 0)?,
                    flushed: lsn_column(&read, 1)?,
                })),
            }
        };
        // The first poll queues every request on the connection (each
        // client call sends before it first waits): from here on, what the
        // store sends comes after this COMMIT. Then a task reads the
        // answers.
        let mut round_trip = Box::pin(round_trip);
        let mut cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
        let task = match std::future::Future::poll(round_trip.as_mut(), &mut cx) {
            std::task::Poll::Ready(answer) => tokio::spawn(async move { answer }),
            std::task::Poll::Pending => tokio::spawn(round_trip),
        };
        Ok(Committing { task })
    }

    /// How far the server's WAL is flushed to disk.
    pub async fn wal_flushed(&mut self) -> Result<Lsn, StoreError> {
        let positions = self.prepared(WAL_POSITIONS).await?;
        let read = self
            .client
            .query_one(&positions, &[])
            .await
            .map_err(sql("cannot read the WAL positions"))?;
        lsn_column(&read, 1)
    }
}

/// The server's WAL insert and flush positions, as text.
const WAL_POSITIONS: &str =
    "SELECT pg_current_wal_insert_lsn()::text, pg_current_wal_flush_lsn()::text";

fn lsn_column(row: &Row, i: usize) -> Result<Lsn, StoreError> {
    let text: &str = row.get(i);
    text.parse().map_err(|_| StoreError::NotAnLsn {
        what: if i == 0 {
            "pg_current_wal_insert_lsn()"
        } else {
            "pg_current_wal_flush_lsn()"
        },
        value: text.to_owned(),
    })
}

/// Whether a checkpoint's COMMIT waits for its WAL flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// It does: once it returns, the slot may confirm what it covers.
    Flushed,
    /// It does not (`synchronous_commit = off` for this transaction only):
    /// its fsync leaves the path of the next transaction, and the slot may
    /// confirm what it covers only once the flush passed [`Unflushed::wal`].
    /// Until then a PostgreSQL crash may lose the commit, state and progress
    /// together, and the slot, confirmed only behind flushed checkpoints,
    /// replays what it covered.
    Later,
}

/// Where the WAL stood right after an asynchronous COMMIT.
#[derive(Clone, Copy, Debug)]
pub struct Unflushed {
    /// At or past the end of the commit record.
    pub wal: Lsn,
    /// How far the WAL was flushed at that moment.
    pub flushed: Lsn,
}
