//! The sans-IO core of pg2dns: bytes in, values out.
//!
//! This crate never touches sockets, clocks, files or the environment. The
//! streamer feeds it pgoutput bytes, rows read with SQL, server answers and
//! the current time, and gets back committed transactions, record changes,
//! planned RFC 2136 UPDATE messages and TSIG signatures.
//!
//! ```text
//!  pgoutput bytes ─▶ pgoutput::parse ─▶ txn::Assembler ─▶ row ─▶ mapping (row → records)
//!                                                                   │
//!            state (row contributions, refcounts, net changes) ◀────┘
//!                     │
//!                     ▼
//!            plan (per-zone owner groups; every refusal decided here)
//!                     │
//!                     ▼
//!            session (per zone: window, coalescing, resend) ─▶ update::encode ─▶ tsig::sign
//! ```

pub mod checks;
pub mod confirm;
pub mod diff;
pub mod exclude;
pub mod guard;
pub mod lsn;
pub mod mapping;
pub mod name;
pub mod pgoutput;
pub mod plan;
pub mod rdata;
pub mod records;
pub mod row;
pub mod schema;
pub mod session;
pub mod tsig;
pub mod txn;
pub mod update;

pub use lsn::Lsn;
pub use name::Name;
pub use rdata::RType;
pub use records::{Owner, Rdata, Record, ZoneId, ZoneName, Zones};

/// An error and its sources joined with ": ", for one-line reasons and logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
