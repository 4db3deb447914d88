//! The one place that decides what a failure means: retry with backoff, halt
//! and tell the operator what to do, or exit (a bug).
//!
//! | failure                                        | disposition                  |
//! |------------------------------------------------|------------------------------|
//! | PostgreSQL unreachable, connection lost         | retry (SQLSTATE class 08)    |
//! | server shutting down, out of resources          | retry (classes 57, 53, 40)   |
//! | replication slot busy (another consumer: seen   | standby: retry, quiet        |
//! | active, or 55006 when asking for it)            |                              |
//! | replication stream ended or broke               | retry                        |
//! | stream out of order (`Stream`, the assembler)   | retry                        |
//! | DNS server unreachable, SERVFAIL, timeout       | retried by the zone's stream |
//! | slot, publication or schema missing             | halt: run `pg2dns setup`     |
//! | slot of that name belongs to another database   | halt: name another slot      |
//! | slot made with another output plugin            | halt: plugin or new slot     |
//! | slot ahead of pg2dns's progress (a gap)         | halt: `setup --recreate-slot`|
//! | slot invalidated, wrong password, no privilege  | halt: fix the database side  |
//! | TLS: certificate not verified, TLS refused      | halt: fix sslmode/sslrootcert|
//! | a value PostgreSQL cannot send in UTF-8         | halt: correct the row        |
//! | BADKEY, BADSIG, BADTIME, REFUSED, NOTAUTH, …    | halt: fix the key or server  |
//! | a mass delete (a DELETE FROM, a TRUNCATE)       | halt until released          |
//! | undecodable stream, change without its key      | halt: report the LSN         |
//! | pg2dns_plugin of another version                | halt: install the same one   |
//! | a configured column dropped or retyped          | halt: name source and column |
//! | DDL on a source table (rename, re-create, …)    | halt: the relation's hint    |
//! | a source key that is not unique                 | halt: add the unique index   |
//! | a zone in both pg2dns.zones and the file        | halt: list it in one place   |
//! | more sources than ids                           | halt: fewer sources          |
//! | a broken internal invariant                     | exit                         |
//!
//! Not failures: a row of `pg2dns.control` this slot cannot read, and a
//! row refused by the planner or a server, are recorded in
//! `pg2dns.rejected` with their LSN, and the stream goes on.
//!
//! Decisions read SQLSTATE codes and typed errors, never message text (the
//! server's `lc_messages` may be anything). A halt does not exit: it leaves
//! the slot where it was and `pg2dns run` up, in mode halted, so nothing is
//! lost; once the cause is fixed, `pg2dns resume` goes on (`--exit-on-halt`
//! exits non-zero instead).

use pg2dns_decoder::mapping::MapError;
use pg2dns_decoder::Lsn;
use pgwire_replication::PgWireError;
use tokio_postgres::error::SqlState;

use crate::replication::ReplicationError;
use crate::store::StoreError;
use pg2dns_decoder::session::Halt;

/// Why a run stopped or a session failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A PostgreSQL statement or connection failed.
    #[error("PostgreSQL")]
    Store(#[from] StoreError),
    /// The replication stream failed.
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// The replication stream ended without being asked to.
    #[error("the replication stream ended")]
    StreamEnded,
    /// A zone's DNS stream needs the operator.
    #[error(transparent)]
    Sink(Box<Halt>),
    /// A zone's primaries disagree: one took what another refused.
    #[error(transparent)]
    Divergent(Box<pg2dns_decoder::primaries::Divergence>),
    /// A change could not be mapped at all.
    #[error(transparent)]
    Map(#[from] MapError),
    /// The replication slot does not exist.
    #[error("replication slot {slot:?} does not exist")]
    SlotMissing {
        /// The slot name.
        slot: String,
    },
    /// The slot starts after pg2dns's progress: what was committed in between
    /// was never streamed (the slot was dropped and re-created, or made by
    /// hand).
    #[error("replication slot {slot:?} starts at {slot_at} but pg2dns applied changes only up to {progress}: the transactions committed in between were never streamed")]
    SlotGap {
        /// The slot name.
        slot: String,
        /// pg2dns's durable progress.
        progress: Lsn,
        /// The slot's confirmed position.
        slot_at: Lsn,
    },
    /// Another process streams from the slot: this instance stands by.
    #[error("replication slot {slot:?} is active for PID {pid}")]
    SlotBusy {
        /// The slot name.
        slot: String,
        /// The server process streaming from it.
        pid: i32,
    },
    /// A slot of pg2dns's name exists, but for another database.
    #[error("replication slot {slot:?} belongs to database {database:?}, not to the one pg2dns is connected to")]
    SlotElsewhere {
        /// The slot name.
        slot: String,
        /// Its database.
        database: String,
    },
    /// The slot was created with another output plugin than `[database]
    /// plugin` names (a slot's plugin is fixed when it is created).
    #[error("replication slot {slot:?} decodes with output plugin {slot_plugin:?}, but [database] plugin = {configured:?} needs {wanted:?}")]
    SlotPlugin {
        /// The slot name.
        slot: String,
        /// `pg_replication_slots.plugin`.
        slot_plugin: String,
        /// The configured value of `[database] plugin`.
        configured: &'static str,
        /// The library that value needs.
        wanted: &'static str,
    },
    /// The `pg2dns` schema is not installed in the database.
    #[error("the pg2dns schema is not installed in this database")]
    SchemaMissing,
    /// A source's key does not name one row (no unique index or primary
    /// key lies within it): rows sharing a key would replace and delete
    /// each other's records. Checked when a session starts.
    #[error("{}", .problems.join("; "))]
    KeyNotUnique {
        /// One sentence per table (`check::key_problems`).
        problems: Vec<String>,
    },
    /// The zones of `pg2dns.zones` cannot be followed together with the
    /// configuration's (a zone in both, or more zones than pg2dns can tell
    /// apart). Checked when a session starts.
    #[error("pg2dns.zones")]
    TableZones(#[from] crate::config::TableZonesError),
    /// A transaction would delete more of a zone than the mass-delete
    /// guard allows (see `pg2dns_decoder::guard`); nothing of it was sent.
    #[error("mass delete held: the transaction committed at LSN {lsn} would delete {deleted} of the {records} records of zone {zone} (more than [guard] allows); nothing of it was sent")]
    MassDelete {
        /// The zone.
        zone: String,
        /// Records it would delete.
        deleted: usize,
        /// Records the zone holds.
        records: usize,
        /// The transaction's commit LSN: what a release names.
        lsn: Lsn,
    },
    /// A source's table no longer has a configured column, or has it with a
    /// type it cannot be read as.
    #[error("source {source_name}: the table's layout at LSN {lsn} no longer fits the configuration: {problem}")]
    Schema {
        /// The source (its table).
        source_name: String,
        /// What changed.
        problem: pg2dns_decoder::schema::SchemaProblem,
        /// The commit LSN of the first transaction with the new layout.
        lsn: Lsn,
    },
    /// DDL on a source table, or a table of the publication no source
    /// maps (see `crate::relations`).
    #[error(transparent)]
    Relation(#[from] crate::relations::RelationProblem),
    /// The stream broke its own structure (a decoder error).
    #[error("the replication stream is out of order at LSN {lsn}")]
    Stream {
        /// Where.
        lsn: Lsn,
        /// The assembler's error.
        #[source]
        source: pg2dns_decoder::txn::TxnError,
    },
    /// A bug: an internal invariant broke.
    #[error("internal error: {0}")]
    Internal(String),
    /// More sources than ids (the configuration refuses them first).
    #[error(transparent)]
    Sources(#[from] pg2dns_decoder::plan::SourcesError),
}

/// What happens after a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Transient: start a new session after a backoff.
    Retry,
    /// Another instance holds the slot: try again soon, quietly, and take
    /// over when it is free.
    Standby,
    /// The operator must act; the hint says how.
    Halt {
        /// What to do.
        hint: String,
    },
    /// A bug: stop.
    Exit,
}

impl RunError {
    /// The commit LSN of a held mass delete (what `pg2dns resume
    /// --allow-mass-delete` releases).
    pub fn mass_delete_lsn(&self) -> Option<Lsn> {
        match self {
            RunError::MassDelete { lsn, .. } => Some(*lsn),
            _ => None,
        }
    }

    /// The one classification of failures.
    pub fn disposition(&self) -> Disposition {
        let halt = |hint: &str| Disposition::Halt { hint: hint.into() };
        match self {
            RunError::Store(e) => {
                if e.is_certificate() {
                    return halt(TLS_HINT);
                }
                if matches!(e, StoreError::Sources(_)) {
                    return halt(&sources_hint());
                }
                // What pg2dns reads back is wrong: a retry reads the same.
                if let StoreError::Corrupt { table, .. } = e {
                    return Disposition::Halt {
                        hint: corrupt_hint(table),
                    };
                }
                if let StoreError::NotAnLsn { .. } = e {
                    return halt("report it as a pg2dns bug, with the PostgreSQL version");
                }
                if e.is_connection() {
                    return Disposition::Retry;
                }
                match e.sqlstate() {
                    None => Disposition::Retry,
                    Some(code) => sql_disposition(code.code()),
                }
            }
            RunError::SlotBusy { .. } => Disposition::Standby,
            RunError::SlotPlugin { slot, slot_plugin, .. } => Disposition::Halt {
                hint: slot_plugin_hint(slot, slot_plugin),
            },
            RunError::SlotElsewhere { database, .. } => Disposition::Halt {
                hint: format!("a logical slot decodes one database: set another [database].slot (or PG2DNS_SLOT) for this database and run `pg2dns setup`, or connect to {database:?} if that is the one meant"),
            },
            RunError::Replication(e) => match e {
                ReplicationError::Decode { .. } => halt("the stream cannot be decoded at that LSN; report it as a pg2dns bug with the PostgreSQL version"),
                ReplicationError::DecodeProtobuf { .. } => halt("the pg2dns_plugin installed in PostgreSQL writes a format this pg2dns does not read: install the pg2dns_plugin of the same pg2dns version (docs/plugin.md), then restart"),
                ReplicationError::Transport(t) => match t {
                    PgWireError::Io(_) | PgWireError::Task(_) | PgWireError::Protocol(_) => {
                        Disposition::Retry
                    }
                    PgWireError::Tls(_) => halt(TLS_HINT),
                    PgWireError::Auth(_) => halt("the database refused pg2dns's credentials: check the user and password in [database].url"),
                    PgWireError::Server(_) => match e.sqlstate() {
                        Some(code) => sql_disposition(code),
                        None => Disposition::Retry,
                    },
                    _ => halt("the replication connection failed; see the cause"),
                },
            },
            RunError::StreamEnded => Disposition::Retry,
            RunError::Sink(h) => match h.as_ref() {
                Halt::Tsig { .. } => halt("check that the key file holds the key the server allows to update this zone (BIND: allow-update or update-policy; Knot: acl), and that both clocks are right"),
                Halt::Rcode { rcode, .. } => halt(rcode.hint()),
                _ => halt("report this as a pg2dns bug, with the log"),
            },
            RunError::Divergent(d) => Disposition::Halt {
                hint: format!("the primaries of zone {} no longer hold the same data: find why {} refused (its key, update-policy or zone settings), fix it, then `pg2dns reconcile --primary {} --apply -c <config>` and `pg2dns resume`; nothing from LSN {} on was confirmed", d.zone, d.refused_by, d.refused_by, d.lsn),
            },
            RunError::Map(_) => halt("set REPLICA IDENTITY DEFAULT (with a primary key) or FULL on the table, then restart"),
            RunError::SlotMissing { .. } => halt("run `pg2dns setup --recreate-slot -c <config>`: it creates a new slot and brings every zone in line with the tables at its consistent point (pg2dns never creates a slot while running: a new slot would silently skip every change made since the old one was lost)"),
            RunError::SlotGap { .. } => halt("DNS lacks what changed in between: run `pg2dns setup --recreate-slot -c <config>` to replace the slot and bring every zone in line at its consistent point (or resynchronise the zones yourself, then `pg2dns setup --accept-gap -c <config>`)"),
            RunError::SchemaMissing => halt("run `pg2dns setup -c <config>`"),
            RunError::KeyNotUnique { .. } => halt("add a UNIQUE index over NOT NULL columns on the key (or set `key` to the primary key's columns), then `pg2dns resume`; `pg2dns check-config` lists every such table"),
            RunError::TableZones(crate::config::TableZonesError::InBoth { zone, .. }) => Disposition::Halt {
                hint: format!("list zone {zone} in one place: delete its row of pg2dns.zones, or remove its [[zone]] from the configuration; then `pg2dns resume` (which reads both again)"),
            },
            RunError::TableZones(crate::config::TableZonesError::Zones(_)) => halt("delete rows of pg2dns.zones (or [[zone]]s) until the count is within the limit, then `pg2dns resume`"),
            RunError::MassDelete { zone, lsn, .. } => Disposition::Halt {
                hint: format!("if these deletes are intended, run `pg2dns resume --allow-mass-delete` to apply them (it releases only the transaction at {lsn}; the threshold is [guard] or the zone's max_delete_share / max_delete_records). If they are a mistake, restore the rows of zone {zone} in the database first: the release then deletes the records and the restore adds them back. Until then nothing after this transaction is sent either"),
            },
            RunError::Schema { lsn, .. } => Disposition::Halt {
                hint: format!("nothing from the transaction at {lsn} on was sent. Transactions committed while the table had this layout keep it in the stream, even if the column comes back later: change the source's configuration to the new layout (or remove the source), then `pg2dns resume`, which reads the configuration again"),
            },
            RunError::Relation(problem) => Disposition::Halt {
                hint: problem.hint(),
            },
            RunError::Stream { .. } => Disposition::Retry,
            RunError::Internal(_) => Disposition::Exit,
            RunError::Sources(_) => halt(&sources_hint()),
        }
    }
}

/// What to do when the slot's output plugin is not the configured one.
pub fn slot_plugin_hint(slot: &str, slot_plugin: &str) -> String {
    let back = crate::config::OutputPlugin::from_library(slot_plugin)
        .map(|p| format!("set [database] plugin = \"{}\" back, or ", p.config_name()))
        .unwrap_or_default();
    format!("{back}stop pg2dns, drop the slot (`SELECT pg_drop_replication_slot('{slot}')`) and run `pg2dns setup --recreate-slot -c <config>`: it creates the slot with the configured plugin and brings every zone in line with the tables at its consistent point")
}

/// The hint when there are more sources than [`pg2dns_decoder::plan::SourceId`]s
/// (the configuration refuses them first).
fn sources_hint() -> String {
    format!("configure fewer sources: pg2dns.rr, the [[source]] tables and the zones tables they reference count together, at most {} (`pg2dns check-config` refuses more); then `pg2dns resume`", pg2dns_decoder::plan::MAX_SOURCES)
}

/// The hint when one of pg2dns's tables holds a value pg2dns never writes.
fn corrupt_hint(table: &str) -> String {
    format!("pg2dns.{table} was changed outside pg2dns (or by another pg2dns version): correct or delete the row the message names, then `pg2dns reconcile --apply -c <config>` brings the zones and pg2dns's state in line with the tables (`pg2dns setup --recreate-slot -c <config>` rebuilds all of it); then `pg2dns resume`")
}

/// The hint of a TLS failure that retrying cannot fix.
const TLS_HINT: &str = "the TLS connection to PostgreSQL failed: check sslmode and sslrootcert in [database].url (the CA file must hold the CA that signed the server's certificate; verify-full also needs the URL's host named in the certificate) and the server's ssl settings";

/// The hint when PostgreSQL cannot convert a value to UTF-8 for pg2dns
/// (which always asks for `client_encoding = UTF8`).
const ENCODING_HINT: &str = "a value in the database is not valid in UTF-8 (a SQL_ASCII database stores bytes unchecked) and PostgreSQL refuses to send it to pg2dns; nothing from that transaction on was sent. Correct the row to UTF-8, then skip the old transaction, which the slot still holds: SELECT pg_replication_slot_advance('<slot>', pg_current_wal_lsn()); then `pg2dns setup --accept-gap -c <config>` and `pg2dns reconcile --apply -c <config>`";

/// What a SQLSTATE means for pg2dns.
fn sql_disposition(code: &str) -> Disposition {
    let halt = |hint: &str| Disposition::Halt { hint: hint.into() };
    match code {
        c if c == SqlState::UNDEFINED_TABLE.code() => halt("the pg2dns schema is missing or old: run `pg2dns setup -c <config>`"),
        c if c == SqlState::UNDEFINED_OBJECT.code() => halt("the replication slot or the publication does not exist: run `pg2dns setup -c <config>`; if the publication was dropped and created again, the slot must be recreated too (its position predates the new publication)"),
        c if c == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE.code() => halt("the replication slot can no longer be used (invalidated, e.g. by max_slot_wal_keep_size): changes since its position are lost to the stream; run `pg2dns setup --recreate-slot -c <config>`, which replaces the slot and brings every zone in line with the tables at the new slot's point"),
        c if c == SqlState::OBJECT_IN_USE.code() => Disposition::Standby,
        c if c == SqlState::INSUFFICIENT_PRIVILEGE.code() => halt("grant the pg2dns role the REPLICATION attribute and access to the pg2dns schema and the source tables"),
        c if c.starts_with("28") => halt("the database refused pg2dns's credentials: check the user and password in [database].url"),
        c if c == SqlState::PROGRAM_LIMIT_EXCEEDED.code() => halt("a value exceeded a PostgreSQL limit in pg2dns's own tables; report it as a pg2dns bug with the row"),
        c if c == SqlState::CHARACTER_NOT_IN_REPERTOIRE.code() => halt(ENCODING_HINT),
        c if c == SqlState::UNTRANSLATABLE_CHARACTER.code() => halt("a character has no equivalent in the database's encoding or in UTF-8; pg2dns's own messages are ASCII, so if it was writing one (a rejection, the status), report it as a pg2dns bug with this message"),
        c if ["08", "57", "53", "40", "58"].contains(&c.get(..2).unwrap_or("")) => Disposition::Retry,
        c if c == SqlState::CANNOT_CONNECT_NOW.code() => Disposition::Retry,
        _ => halt("an unexpected database error; see the cause"),
    }
}

/// The error and its sources, joined with ": ", for one-line logs.
pub fn chain(e: &dyn std::error::Error) -> String {
    pg2dns_decoder::error_chain(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_decide_retry_or_halt() {
        assert_eq!(sql_disposition("08006"), Disposition::Retry);
        assert_eq!(sql_disposition("57P01"), Disposition::Retry);
        assert_eq!(sql_disposition("55006"), Disposition::Standby);
        for code in [
            "42P01", "42704", "55000", "42501", "28P01", "54000", "22P02", "22021", "22P05",
        ] {
            assert!(
                matches!(sql_disposition(code), Disposition::Halt { .. }),
                "{code}"
            );
        }
    }

    #[test]
    fn a_slot_taken_by_another_instance_is_a_standby_whichever_way_it_is_seen() {
        let seen_active = RunError::SlotBusy {
            slot: "pg2dns".into(),
            pid: 4242,
        };
        assert_eq!(seen_active.disposition(), Disposition::Standby);
        let refused = RunError::Replication(ReplicationError::Transport(PgWireError::Server(
            "replication slot \"pg2dns\" is active for PID 4242 (SQLSTATE 55006)".into(),
        )));
        assert_eq!(refused.disposition(), Disposition::Standby);
    }

    #[test]
    fn an_out_of_order_stream_is_retried() {
        let e = RunError::Stream {
            lsn: Lsn::new(0x16_B374_D848),
            source: pg2dns_decoder::txn::TxnError::CommitWithoutBegin {
                commit_lsn: Lsn::new(0x16_B374_D848),
            },
        };
        assert_eq!(e.disposition(), Disposition::Retry);
    }

    #[test]
    fn a_localised_server_error_is_classified_by_its_code() {
        let e = RunError::Replication(ReplicationError::Transport(PgWireError::Server(
            "le slot de réplication « s » n'existe pas (SQLSTATE 42704)".into(),
        )));
        assert!(matches!(e.disposition(), Disposition::Halt { .. }));
        let e = RunError::Replication(ReplicationError::Transport(PgWireError::Server(
            "le système de bases de données s'arrête (SQLSTATE 57P03)".into(),
        )));
        assert_eq!(e.disposition(), Disposition::Retry);
    }

    #[test]
    fn a_value_pg2dns_cannot_read_back_halts_naming_the_table_never_retries() {
        let corrupt = StoreError::Corrupt {
            table: "progress",
            value: crate::store::Corrupt::Lsn {
                text: "16/zz".into(),
                of: Some("slot pg2dns".into()),
            },
        };
        assert_eq!(
            chain(&corrupt),
            "pg2dns.progress holds a value pg2dns cannot read: LSN \"16/zz\" of slot pg2dns"
        );
        let e = RunError::Store(corrupt);
        match e.disposition() {
            Disposition::Halt { hint } => assert!(
                hint.starts_with("pg2dns.progress was changed outside pg2dns"),
                "{hint}"
            ),
            other => panic!("{other:?}"),
        }
        let e = RunError::Store(StoreError::NotAnLsn {
            what: "pg_current_wal_flush_lsn()",
            value: "x".into(),
        });
        assert!(matches!(e.disposition(), Disposition::Halt { .. }));
    }
}
