//! The sans-IO core of pg2dns: bytes in, values out.
//!
//! This crate never touches sockets, clocks, files or the environment. The
//! streamer feeds it pgoutput messages (as bytes; Begin, Commit and logical
//! Message rebuilt from the transport's fields), rows read with SQL, server answers and
//! the current time, and gets back committed transactions, record changes,
//! planned RFC 2136 UPDATE messages and TSIG signatures.
//!
//! With the `wire` feature, [`wire::decode`] turns pg2dns_plugin's protobuf
//! events (proto/pg2dns.proto) into the same pgoutput messages.
//!
//! ```text
//!  pgoutput bytes ─▶ pgoutput::parse ─▶ txn::Assembler ─▶ row ─▶ mapping (row → records)
//!                                                                   │
//!            plan (row state, refcounts, net changes per owner; ◀───┘
//!                  every refusal decided here, with checks and exclude)
//!                     │
//!                     ▼   guard (mass deletes, asked by the streamer)
//!            session (per zone: window, coalescing, resend) ─▶ update::encode ─▶ tsig::sign
//!
//!  stream: the stream's state machine around all of it (batching, checkpoint
//!          ledger, confirmations, skip/pause/until, control rows, the guard's
//!          carry): frames and acknowledgements in, actions out
//!
//!  reconcile: AXFR records + desired records ─▶ diff (report, SOA-guarded repair)
//! ```

pub mod checkpoint;
pub mod checks;
pub mod confirm;
pub mod diff;
pub mod exclude;
pub mod filter;
pub mod guard;
pub mod held;
pub mod lsn;
pub mod mapping;
pub mod name;
pub mod pgoutput;
pub mod plan;
pub mod pool;
pub mod primaries;
pub mod rcode;
pub mod rdata;
pub mod records;
pub mod row;
pub mod runs;
pub mod schema;
pub mod session;
pub mod stream;
pub mod tsig;
pub mod txn;
pub mod update;
#[cfg(feature = "wire")]
pub mod wire;
pub mod zonefile;

/// The hash map of the planner and the update packer. Their keys (owner
/// names, record data, row keys) come from database rows, so the hash must
/// be seeded: an unseeded one would let crafted rows collide on purpose.
/// std's SipHash is seeded but slow on short keys (about twenty hashes per
/// row, the top entry of a 200,000-row transaction's profile); foldhash is
/// seeded per process and per map and does the same work in a fraction of
/// the time. Its authors' stated limit, an attacker who recovers the seed
/// by timing a long-running process, costs at most a slower batch here.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// The hash set of the planner (see [`HashMap`]).
pub type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

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
