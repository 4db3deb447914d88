//! Durable state in PostgreSQL: row state, rejected rows and the progress LSN.
//!
//! Why one long transaction: the row state of DESIGN §4 (the records each
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

use std::collections::HashMap;

use pg2dns_decoder::Lsn;
use tokio_postgres::{Client, NoTls};
use tracing::warn;

use crate::config::DatabaseConfig;

/// One record a source row contributes, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoredRecord {
    /// The zone it was sent to.
    pub zone: String,
    /// Owner name (canonical).
    pub owner: String,
    /// Type mnemonic.
    pub rtype: String,
    /// Canonical record data.
    pub rdata: String,
    /// TTL.
    pub ttl: i32,
}

impl StoredRecord {
    /// The record's identity in DNS (the TTL is not part of it).
    pub fn key(&self) -> RecordKey {
        RecordKey {
            zone: self.zone.clone(),
            owner: self.owner.clone(),
            rtype: self.rtype.clone(),
            rdata: self.rdata.clone(),
        }
    }
}

/// A record's identity: zone, owner, type and data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey {
    /// Zone.
    pub zone: String,
    /// Owner.
    pub owner: String,
    /// Type.
    pub rtype: String,
    /// Data.
    pub rdata: String,
}

/// An RRset: zone, owner and type.
pub type RrsetKey = (String, String, String);

/// A row that was not sent to DNS.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// The source table.
    pub source: String,
    /// The row's key.
    pub row_key: String,
    /// The commit LSN of its transaction.
    pub lsn: Lsn,
    /// The zone, when known.
    pub zone: Option<String>,
    /// The owner, when known.
    pub owner: Option<String>,
    /// Why.
    pub reason: String,
}

/// Errors of the state store. All come from PostgreSQL.
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
}

impl StoreError {
    /// The SQLSTATE, when the server sent one.
    pub fn sqlstate(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            StoreError::Sql { source, .. } => source.code(),
        }
    }

    /// Whether the connection itself is gone (retry), rather than a statement failing.
    pub fn is_connection(&self) -> bool {
        match self {
            StoreError::Sql { source, .. } => source.is_closed() || source.code().is_none(),
        }
    }
}

fn sql(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |source| StoreError::Sql { what, source }
}

/// The SQL connection and the open checkpoint transaction.
pub struct Store {
    client: Client,
    connection: tokio::task::JoinHandle<()>,
    slot: String,
    in_transaction: bool,
}

impl Drop for Store {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Store {
    /// Connects to PostgreSQL.
    pub async fn connect(db: &DatabaseConfig) -> Result<Store, StoreError> {
        let mut pg = db.pg.clone();
        pg.application_name("pg2dns");
        let (client, connection) = pg
            .connect(NoTls)
            .await
            .map_err(sql("cannot connect to PostgreSQL"))?;
        let connection = tokio::spawn(async move {
            if let Err(e) = connection.await {
                warn!(error = %e, "PostgreSQL connection ended");
            }
        });
        // Every state statement is an index lookup by design: keys come in
        // as arrays, and each is looked up through a LATERAL subquery fenced
        // with OFFSET 0, so the planner cannot flatten it into a join that
        // scans the table (with the stale statistics of a table that grows
        // inside one transaction or between analyses it did: a scan of the
        // whole table per batch, quadratic over a large transaction or a
        // long backlog). Inside the
        // long checkpoint transaction the planner's statistics do not count
        // the rows written so far, so a large transaction would turn the
        // lookups into sequential scans of everything it wrote: quadratic.
        client
            .batch_execute("SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off; SET jit = off")
            .await
            .map_err(sql("cannot set the session's planner options"))?;
        Ok(Store {
            client,
            connection,
            slot: db.slot.clone(),
            in_transaction: false,
        })
    }

    /// The client, for set-up and control statements.
    pub fn client(&self) -> &Client {
        &self.client
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
        Ok(row
            .and_then(|r| r.get::<_, String>(0).parse().ok())
            .unwrap_or(Lsn::ZERO))
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
        Ok(row.and_then(|r| r.get::<_, String>(0).parse().ok()))
    }

    async fn begin(&mut self) -> Result<(), StoreError> {
        if !self.in_transaction {
            self.client
                .batch_execute("BEGIN")
                .await
                .map_err(sql("cannot begin the checkpoint transaction"))?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// Reads, in one round trip, what a batch needs: the stored records of
    /// the given rows, and every record (with how many rows contribute it
    /// and the TTL they give) of every RRset those rows held or `new_rrsets`
    /// names. A record absent from the second map has no contributor.
    pub async fn load_state(
        &mut self,
        source: &str,
        keys: &[String],
        new_rrsets: &[RrsetKey],
    ) -> Result<
        (
            HashMap<String, Vec<StoredRecord>>,
            HashMap<RecordKey, (i64, i32)>,
        ),
        StoreError,
    > {
        self.begin().await?;
        let zones: Vec<&str> = new_rrsets.iter().map(|k| k.0.as_str()).collect();
        let owners: Vec<&str> = new_rrsets.iter().map(|k| k.1.as_str()).collect();
        let rtypes: Vec<&str> = new_rrsets.iter().map(|k| k.2.as_str()).collect();
        let result = self
            .client
            .query(
                "WITH old AS ( \
                   SELECT r.row_key, r.zone, r.owner, r.rtype, r.rdata, r.ttl \
                   FROM unnest($2::text[]) AS k(row_key) \
                   CROSS JOIN LATERAL ( \
                     SELECT * FROM pg2dns.row_records x \
                     WHERE x.source = $1 AND x.row_key = k.row_key OFFSET 0) r), \
                 sets AS ( \
                   SELECT zone, owner, rtype FROM old \
                   UNION SELECT * FROM unnest($3::text[], $4::text[], $5::text[])) \
                 SELECT true, row_key, zone, owner, rtype, rdata, ttl, 0::bigint FROM old \
                 UNION ALL \
                 SELECT false, NULL, r.zone, r.owner, r.rtype, r.rdata, max(r.ttl), count(*) \
                 FROM sets s \
                 CROSS JOIN LATERAL ( \
                   SELECT * FROM pg2dns.row_records x \
                   WHERE x.zone = s.zone AND x.owner = s.owner AND x.rtype = s.rtype OFFSET 0) r \
                 GROUP BY r.zone, r.owner, r.rtype, r.rdata",
                &[&source, &keys, &zones, &owners, &rtypes],
            )
            .await
            .map_err(sql("cannot read pg2dns.row_records"))?;
        let mut rows: HashMap<String, Vec<StoredRecord>> = HashMap::new();
        let mut records = HashMap::new();
        for r in result {
            let record = StoredRecord {
                zone: r.get(2),
                owner: r.get(3),
                rtype: r.get(4),
                rdata: r.get(5),
                ttl: r.get(6),
            };
            if r.get::<_, bool>(0) {
                rows.entry(r.get(1)).or_default().push(record);
            } else {
                records.insert(record.key(), (r.get::<_, i64>(7), record.ttl));
            }
        }
        Ok((rows, records))
    }

    /// Replaces the stored records of the given rows.
    ///
    /// `before` is what [`Store::load_state`] returned for them: rows whose
    /// records did not change are left alone, and only rows that had
    /// records are deleted first.
    pub async fn write_rows(
        &mut self,
        source: &str,
        rows: &HashMap<String, Vec<StoredRecord>>,
        before: &HashMap<String, Vec<StoredRecord>>,
    ) -> Result<(), StoreError> {
        let unchanged = |key: &String, records: &Vec<StoredRecord>| {
            before.get(key).map_or(records.is_empty(), |b| b == records)
        };
        let rows: Vec<(&String, &Vec<StoredRecord>)> =
            rows.iter().filter(|(k, r)| !unchanged(k, r)).collect();
        if rows.is_empty() {
            return Ok(());
        }
        self.begin().await?;
        let keys: Vec<&str> = rows
            .iter()
            .filter(|(k, _)| before.get(*k).is_some_and(|b| !b.is_empty()))
            .map(|(k, _)| k.as_str())
            .collect();
        let mut row_keys = Vec::new();
        let mut zones = Vec::new();
        let mut owners = Vec::new();
        let mut rtypes = Vec::new();
        let mut rdatas = Vec::new();
        let mut ttls = Vec::new();
        for (key, records) in &rows {
            for r in records.iter() {
                row_keys.push(key.as_str());
                zones.push(r.zone.as_str());
                owners.push(r.owner.as_str());
                rtypes.push(r.rtype.as_str());
                rdatas.push(r.rdata.as_str());
                ttls.push(r.ttl);
            }
        }
        // One statement: the DELETE in the WITH clause and the INSERT see the
        // same snapshot, so the DELETE removes exactly the old rows. (Two
        // pipelined statements could run in either order.)
        self.client
            .execute(
                "WITH old AS ( \
                   DELETE FROM pg2dns.row_records WHERE ctid = ANY(ARRAY( \
                     SELECT r.ctid FROM unnest($2::text[]) AS k(row_key) \
                     CROSS JOIN LATERAL ( \
                       SELECT ctid FROM pg2dns.row_records x \
                       WHERE x.source = $1 AND x.row_key = k.row_key OFFSET 0) r))) \
                 INSERT INTO pg2dns.row_records (source, row_key, zone, owner, rtype, rdata, ttl) \
                 SELECT $1, * FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int[])",
                &[&source, &keys, &row_keys, &zones, &owners, &rtypes, &rdatas, &ttls],
            )
            .await
            .map_err(sql("cannot update pg2dns.row_records"))?;
        Ok(())
    }

    /// Records rows that were not sent.
    pub async fn reject(&mut self, rejections: &[Rejection]) -> Result<(), StoreError> {
        if rejections.is_empty() {
            return Ok(());
        }
        self.begin().await?;
        let sources: Vec<&str> = rejections.iter().map(|r| r.source.as_str()).collect();
        let keys: Vec<&str> = rejections.iter().map(|r| r.row_key.as_str()).collect();
        let lsns: Vec<String> = rejections.iter().map(|r| r.lsn.to_string()).collect();
        let zones: Vec<Option<&str>> = rejections.iter().map(|r| r.zone.as_deref()).collect();
        let owners: Vec<Option<&str>> = rejections.iter().map(|r| r.owner.as_deref()).collect();
        let reasons: Vec<&str> = rejections.iter().map(|r| r.reason.as_str()).collect();
        self.client
            .execute(
                "INSERT INTO pg2dns.rejected (source, row_key, lsn, zone, owner, reason) \
                 SELECT s, k, l::pg_lsn, z, o, r FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
                 AS t(s, k, l, z, o, r)",
                &[&sources, &keys, &lsns, &zones, &owners, &reasons],
            )
            .await
            .map_err(sql("cannot record rejected rows in pg2dns.rejected"))?;
        Ok(())
    }

    /// Whether a checkpoint transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    /// Commits the open transaction with the new progress LSN.
    pub async fn commit(&mut self, lsn: Lsn) -> Result<(), StoreError> {
        self.begin().await?;
        self.client
            .execute(
                "INSERT INTO pg2dns.progress (slot, lsn, updated) VALUES ($1, $2::text::pg_lsn, now()) \
                 ON CONFLICT (slot) DO UPDATE SET lsn = excluded.lsn, updated = excluded.updated",
                &[&self.slot, &lsn.to_string()],
            )
            .await
            .map_err(sql("cannot write pg2dns.progress"))?;
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(sql("cannot commit the checkpoint"))?;
        self.in_transaction = false;
        Ok(())
    }
}
