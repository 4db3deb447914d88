//! pg2dns: PostgreSQL logical replication in, TSIG-signed RFC 2136 UPDATEs out.
//!
//! This crate owns every piece of I/O: the replication connection
//! ([`replication`]), the SQL connection and durable state ([`store`]),
//! set-up ([`setup`]), the DNS connections and zone transfers ([`dns`]),
//! the batch comparison ([`reconcile`]) and the loop that ties
//! them together ([`pipeline`]); [`error`] decides what every failure means.
//! What rows mean, what goes to DNS and what is refused is decided by the
//! sans-IO `pg2dns-decoder`.

pub mod admin;
pub mod check;
pub mod config;
pub mod control;
pub mod dns;
pub mod error;
pub mod failpoint;
pub mod guard;
pub mod metrics;
pub mod notify;
pub mod pgconn;
pub mod pipeline;
pub mod plugin_checks;
pub mod reconcile;
pub mod relations;
pub mod replication;
pub mod setup;
pub mod status;
pub mod store;
pub mod zone_set;

pub use config::Config;
pub use error::RunError;
