//! The one place that decides what a failure means: retry with backoff, or
//! halt and tell the operator what to do.
//!
//! | failure                                   | what happens                        |
//! |-------------------------------------------|-------------------------------------|
//! | PostgreSQL unreachable, connection lost   | retry the session with backoff      |
//! | replication stream ended or broke         | retry the session with backoff      |
//! | DNS server unreachable, SERVFAIL, timeout | the zone's stream retries (sink.rs) |
//! | slot or schema missing                    | halt: run `pg2dns setup`            |
//! | wrong password, permission denied         | halt: fix the role                  |
//! | BADKEY, BADSIG, BADTIME, REFUSED, NOTAUTH | halt: fix the key or the server     |
//! | TRUNCATE of a mapped table                | halt: DNS is not wiped              |
//! | undecodable stream                        | halt: report the LSN                |
//!
//! A halt exits with a non-zero status and leaves the slot where it was, so
//! nothing is lost: once the cause is fixed, `pg2dns run` resumes.

use pg2dns_decoder::Lsn;
use pgwire_replication::PgWireError;

use crate::checkpoint::StoreError;
use crate::sink::SinkError;

/// Why a run stopped or a session failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A PostgreSQL statement or connection failed.
    #[error("PostgreSQL: {0}")]
    Store(#[from] StoreError),
    /// The replication connection failed.
    #[error("replication connection")]
    Replication(#[from] PgWireError),
    /// The replication stream ended without being asked to.
    #[error("the replication stream ended")]
    StreamEnded,
    /// A zone's DNS stream needs the operator.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The replication slot does not exist.
    #[error("replication slot {slot:?} does not exist: run `pg2dns setup -c <config>` to create it (pg2dns never creates a slot while running: a new slot would silently skip every change made since the old one was lost)")]
    SlotMissing {
        /// The slot name.
        slot: String,
    },
    /// The `pg2dns` schema is not installed in the database.
    #[error("the pg2dns schema is not installed in this database: run `pg2dns setup -c <config>`")]
    SchemaMissing,
    /// A mapped table was truncated.
    #[error("TRUNCATE of {table} in the transaction committed at LSN {lsn}: pg2dns does not wipe DNS on TRUNCATE. If the records must go, restore the rows and DELETE them; to skip this TRUNCATE, run SELECT pg_replication_slot_advance('{slot}', '<end LSN of that transaction>') and restart")]
    Truncate {
        /// The table.
        table: String,
        /// The transaction's commit LSN.
        lsn: Lsn,
        /// The slot, for the hint.
        slot: String,
    },
    /// The stream could not be decoded.
    #[error("cannot decode the replication stream at LSN {lsn}: {reason}")]
    Decode {
        /// Where.
        lsn: Lsn,
        /// What the decoder said.
        reason: String,
    },
    /// A bug: an internal invariant broke.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RunError {
    /// Whether retrying the session can fix it.
    pub fn is_transient(&self) -> bool {
        use tokio_postgres::error::SqlState;
        match self {
            RunError::Store(e) => {
                if e.is_connection() {
                    return true;
                }
                let Some(code) = e.sqlstate() else {
                    return true;
                };
                // Connection exceptions, operator intervention (shutdown,
                // restart), insufficient resources: the server will be back.
                let class = &code.code()[..2];
                matches!(class, "08" | "57" | "53" | "40") || *code == SqlState::CANNOT_CONNECT_NOW
            }
            RunError::Replication(e) => match e {
                PgWireError::Io(_) | PgWireError::Task(_) | PgWireError::Protocol(_) => true,
                PgWireError::Server(msg) => {
                    // A missing slot or publication, or a permission problem,
                    // needs the operator; anything else (shutdown, recovery,
                    // slot busy with another consumer) is retried.
                    !(msg.contains("does not exist")
                        || msg.contains("permission denied")
                        || msg.contains("must be superuser")
                        || msg.contains("password authentication failed"))
                }
                _ => false,
            },
            RunError::StreamEnded => true,
            RunError::Sink(_)
            | RunError::SlotMissing { .. }
            | RunError::SchemaMissing
            | RunError::Truncate { .. }
            | RunError::Decode { .. }
            | RunError::Internal(_) => false,
        }
    }
}

/// The error and its sources, joined with ": ", for one-line logs.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}
