//! pg2dns: PostgreSQL logical replication in, TSIG-signed RFC 2136 UPDATEs out.
//!
//! This crate owns every piece of I/O: the replication connection
//! ([`source`]), the SQL connection and durable state ([`checkpoint`]), the
//! DNS connections ([`sink`]) and the loop that ties them together
//! ([`pipeline`]). The protocol logic lives in the sans-IO `pg2dns-decoder`.

pub mod checkpoint;
pub mod config;
pub mod control;
pub mod error;
pub mod failpoint;
pub mod pipeline;
pub mod sink;
pub mod source;

pub use config::Config;
pub use error::RunError;
