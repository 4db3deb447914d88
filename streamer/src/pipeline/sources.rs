//! Which source a change's table is, and the DDL that halts: a table
//! re-created or renamed since the session started (resolved against the
//! catalog by OID, see `crate::relations`), a partition truncated alone, and
//! a change of `pg2dns.zones` that ends the session.

use pg2dns_decoder::mapping::{Mapping, RrTable};
use pg2dns_decoder::plan::SourceId;
use pg2dns_decoder::txn::RowChange;
use pg2dns_decoder::Lsn;
use std::time::Instant;
use tracing::{debug, info, warn};

use super::{Pipeline, HALT_SETTLE};
use crate::config::Config;
use crate::error::RunError;
use crate::metrics;
use crate::replication::PgReplication;

impl Pipeline<'_> {
    /// Every [`crate::relations::CHECK_EVERY`]: are the sources' tables
    /// still the ones the session started with, and their partitions too?
    /// A partition attached or detached halts (after applying what came
    /// before); a re-created table is the stream's to name (see
    /// `source_of`).
    pub(super) async fn check_relations(
        &mut self,
        replication: &mut PgReplication,
    ) -> Result<(), RunError> {
        self.relations_checked = Instant::now();
        let tables: Vec<&str> = self.core.mappings().iter().map(|m| m.source()).collect();
        let publication = &self.config.database.publication;
        let client = self.store.settled_client().await?;
        let oids = crate::relations::check_tables(client, publication, &tables, false).await?;
        if oids != self.oids {
            return Ok(());
        }
        let now = crate::relations::partitions(client, &oids).await?;
        for (i, (before, now)) in self.partitions.iter().zip(&now).enumerate() {
            if let Some(p) = crate::relations::partitions_changed(&self.sources[i], before, now) {
                self.record_pending(i, oids[i]).await;
                self.settle_before_halt(replication).await;
                return Err(p.into());
            }
        }
        Ok(())
    }

    /// A change of some table: to the core if it is a source's (whose
    /// table layout, once per Relation message, must still hold what the
    /// source reads).
    pub(super) async fn on_change(&mut self, change: RowChange) -> Result<(), RunError> {
        let Some(i) = self.source_of(&change.relation, change.final_lsn).await? else {
            return Ok(());
        };
        let known = self.checked[i]
            .as_ref()
            .is_some_and(|r| std::sync::Arc::ptr_eq(r, &change.relation));
        if !known {
            pg2dns_decoder::schema::check(&self.needed[i], &change.relation).map_err(
                |problem| RunError::Schema {
                    source_name: self.sources[i].clone(),
                    problem,
                    lsn: change.final_lsn,
                },
            )?;
            self.checked[i] = Some(change.relation.clone());
        }
        self.core.handle_change(SourceId::new(i)?, change);
        metrics::get().rows.inc();
        Ok(())
    }

    /// pg2dns's trigger says a partition was truncated in the transaction
    /// committing at `lsn`: PostgreSQL published nothing for it, so this
    /// halts before the transaction, unless the partitioned table itself
    /// was truncated in it (its TRUNCATE carries the partition's rows), or
    /// a `pg2dns resume` came after the halt on this very TRUNCATE (the
    /// operator ran `pg2dns reconcile --apply`). A message for a table that
    /// was no partition of a source at the session start is ignored.
    pub(super) async fn on_truncated_partition(
        &mut self,
        lsn: Lsn,
        oid: Option<u32>,
        partition: &str,
    ) -> Result<(), RunError> {
        let Some(i) = self.partitions.iter().position(|set| {
            set.iter()
                .any(|(o, n)| oid.map_or(n == partition, |oid| *o == oid))
        }) else {
            warn!(%partition, %lsn, "a TRUNCATE message for a table that is no partition of a source: ignored");
            return Ok(());
        };
        if self.core.has_truncate(SourceId::new(i)?, lsn) {
            return Ok(());
        }
        let (client, _task) = crate::pgconn::connect(&self.config.database, "pg2dns").await?;
        if crate::relations::truncate_passes(&client, &self.config.database.slot, lsn, partition)
            .await?
        {
            info!(source = %self.sources[i], %partition, %lsn, "TRUNCATE of one partition, halted on before and resumed since: passed");
            return Ok(());
        }
        Err(crate::relations::RelationProblem::TruncatedPartition {
            source_name: self.sources[i].clone(),
            partition: partition.to_owned(),
            lsn,
        }
        .into())
    }

    /// Before a halt at the open transaction (DDL that put nothing in the
    /// stream): applies and checkpoints every transaction before it and
    /// drops what the batch holds of it (the core decides, see
    /// `Stream::settle_before_halt`), so that the halt is exact and a
    /// `pg2dns reconcile --apply` while halted is not undone by replaying
    /// earlier transactions after the resume. When the open transaction was
    /// already partly sent (a huge one), or DNS does not answer within
    /// [`HALT_SETTLE`], the earlier transactions are replayed instead.
    pub(super) async fn settle_before_halt(&mut self, replication: &mut PgReplication) {
        if !self.core.settle_before_halt() {
            warn!("the halted transaction was partly sent already: the transactions before it are replayed after the resume");
            return;
        }
        match tokio::time::timeout(HALT_SETTLE, self.drain(replication)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %crate::error::chain(&e), "cannot apply the transactions before the halt: they are replayed after the resume")
            }
            Err(_) => {
                warn!("DNS did not acknowledge the transactions before the halt in time: they are replayed after the resume")
            }
        }
    }

    /// Records the state of source `i`'s table now (`oid`, its partitions)
    /// as the one a halt named, which the next `pg2dns resume` accepts (see
    /// `relations::settle_recorded`). On its own connection: the store's
    /// open transaction is rolled back by the halt.
    pub(super) async fn record_pending(&self, i: usize, oid: u32) {
        let attempt = async {
            let (client, _task) = crate::pgconn::connect(&self.config.database, "pg2dns").await?;
            let parts = crate::relations::partitions(&client, &[oid]).await?;
            crate::relations::record_pending(
                &client,
                &self.config.database.slot,
                &self.sources[i],
                oid,
                &parts.into_iter().next().unwrap_or_default(),
            )
            .await
        };
        if let Err(e) = attempt.await {
            warn!(error = %crate::error::chain(&e), "cannot record the new state of the source's table: the next start halts on it again");
        }
    }

    /// The source a change's table belongs to, by OID (see `relations`):
    /// `None` for a table to ignore, an error for DDL that must halt.
    pub(super) async fn source_of(
        &mut self,
        relation: &std::sync::Arc<pg2dns_decoder::pgoutput::Relation>,
        lsn: Lsn,
    ) -> Result<Option<usize>, RunError> {
        use crate::relations::{oid_of, table_now};
        let (ns, name) = (relation.namespace.as_str(), relation.name.as_str());
        let by_name = self
            .core
            .mappings()
            .iter()
            .position(|m| m.matches(ns, name));
        if let Some(i) = by_name {
            if self.oids.get(i) == Some(&relation.oid) {
                return Ok(Some(i));
            }
        }
        if let Some((known, source)) = self.resolved.get(&relation.oid) {
            if std::sync::Arc::ptr_eq(known, relation) {
                return Ok(*source);
            }
        }
        // Rare: a Relation message that does not match the session's
        // start; ask the catalog what the table is now, once the catalog
        // shows the transaction that changed it.
        let client = self.store.settled_client().await?;
        // Not visible after the wait: the catalog is read as it is (what
        // it says then is judged by `relations::resolve`).
        wait_visible(client, self.xid).await?;
        let mut now = crate::relations::Now::default();
        for (i, m) in self.core.mappings().iter().enumerate() {
            if oid_of(client, m.source()).await? == Some(relation.oid) {
                now.named = Some(i);
                break;
            }
        }
        let publication = &self.config.database.publication;
        now.table = table_now(client, publication, relation.oid).await?;
        let table = relation.qualified_name();
        let seen = crate::relations::Seen {
            oid: relation.oid,
            name: &table,
            by_name,
        };
        let source = match crate::relations::resolve(&seen, &self.oids, now, &self.sources, lsn) {
            Ok(source) => source,
            Err(p) => {
                if let crate::relations::RelationProblem::Recreated { .. } = &p {
                    if let Some(i) = by_name {
                        self.record_pending(i, relation.oid).await;
                    }
                }
                return Err(p.into());
            }
        };
        match source {
            Some(i) if by_name != Some(i) => {
                info!(source = %self.sources[i], %table, %lsn, "changes of the source's table made while it was named {table}")
            }
            Some(_) => {}
            None => {
                warn!(%table, %lsn, "change of a table that no source maps and that is no longer in the publication: ignored")
            }
        }
        self.resolved
            .insert(relation.oid, (relation.clone(), source));
        Ok(source)
    }

    /// Whether `pg2dns.zones` now holds other rows than this session's
    /// zones were built from. The table as it is now, not the change the
    /// stream carries, decides: a transaction replayed after the table
    /// changed again must not end every session that replays it.
    ///
    /// The transaction being committed (`self.xid`) touched the table, and
    /// PostgreSQL may show it to new snapshots a moment after the stream
    /// delivered it: read too early, the table looks unchanged and the
    /// zone added in it would be missed for good (seen under CI load: a
    /// zone row and its records in one transaction, every record refused
    /// as in no configured zone). So the read waits until the transaction
    /// is visible; if it never becomes so, the table counts as changed:
    /// the session ends, the next one reads the zones again and replays
    /// the transaction, which is then judged again.
    pub(super) async fn zones_table_changed(&mut self) -> Result<bool, RunError> {
        let client = self.store.settled_client().await?;
        if !wait_visible(client, self.xid).await? {
            warn!(xid = self.xid, "the transaction that changed pg2dns.zones is not visible yet: reading the zones again in a new session");
            return Ok(true);
        }
        Ok(self.store.table_zones().await? != self.table_rows)
    }
}

/// Whether a change is of `pg2dns.zones` (zones as data, see `zone_set`).
pub(super) fn is_zones_table(change: &RowChange) -> bool {
    change.relation.namespace == "pg2dns" && change.relation.name == "zones"
}

/// Whether a change is of pg2dns's control table.
pub(super) fn is_control(change: &RowChange) -> bool {
    change.relation.namespace == "pg2dns" && change.relation.name == "control"
}

/// The sources this configuration streams: the built-in `pg2dns.rr` first
/// (its index, 0, is what row state written by earlier versions used), then
/// each `[[source]]` in configuration order, then the zones tables they
/// reference (which publish nothing themselves).
pub fn mappings(config: &Config) -> Vec<Box<dyn Mapping>> {
    let mut out: Vec<Box<dyn Mapping>> = vec![Box::new(RrTable)];
    out.extend(
        config
            .sources
            .iter()
            .map(|s| Box::new(s.clone()) as Box<dyn Mapping>),
    );
    out.extend(
        config
            .zones_tables()
            .into_iter()
            .map(|t| Box::new(t) as Box<dyn Mapping>),
    );
    out
}

/// How often, and how many times, [`wait_visible`] looks.
const VISIBLE_POLL: std::time::Duration = std::time::Duration::from_millis(5);
const VISIBLE_TRIES: u32 = 400;

/// Waits until transaction `xid` (being streamed, so committed) is visible
/// to new snapshots. PostgreSQL flushes a commit's WAL, which wakes the
/// walsender, before it marks the transaction done for other sessions: a
/// catalog read made right after the stream delivered a transaction that
/// created a table can miss that table. Gives up after [`VISIBLE_TRIES`],
/// returning whether the transaction became visible.
async fn wait_visible(client: &tokio_postgres::Client, xid: u32) -> Result<bool, RunError> {
    for tried in 0..VISIBLE_TRIES {
        // The 64-bit id of `xid`: the epoch of the snapshot's xmax, or the
        // one before when that would put it at or past xmax (an assigned
        // id is always below xmax).
        let visible: bool = client
            .query_one(
                "WITH s AS (SELECT pg_current_snapshot() AS snap),                       m AS (SELECT snap, pg_snapshot_xmax(snap)::text::numeric AS xmax FROM s),                       f AS (SELECT snap, xmax, trunc(xmax / 4294967296) * 4294967296 + $1::int8 AS id64 FROM m)                  SELECT pg_visible_in_snapshot(                           (CASE WHEN id64 >= xmax THEN id64 - 4294967296 ELSE id64 END)::text::xid8, snap)                  FROM f",
                &[&i64::from(xid)],
            )
            .await
            .map_err(crate::store::sql("cannot read the current snapshot"))?
            .get(0);
        if visible {
            if tried > 0 {
                debug!(
                    xid,
                    tried, "the streamed transaction became visible to the catalog read"
                );
            }
            return Ok(true);
        }
        tokio::time::sleep(VISIBLE_POLL).await;
    }
    Ok(false)
}
