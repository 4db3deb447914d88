//! Integration tests for pg2dns: real PostgreSQL, BIND, Knot, PowerDNS and
//! pg2dns processes.
//!
//! One test binary (built as part of the `pg2dns` package, so cargo builds
//! the binary under test first) with one module per scenario group. Every
//! test starts its own servers on free loopback ports in its own temporary
//! directory, so tests run in parallel. PostgreSQL 15 (or newer), BIND 9,
//! Knot 3 and PowerDNS 4 (with its SQLite backend) must be installed: `scripts/test` installs them on Debian. A missing
//! server is a failure, never a skip.
//!
//! Every assertion is about what the servers answer: an AXFR of each zone
//! compared with `pg2dns.rr`, rows of `pg2dns.rejected`, the replication
//! slot's `confirmed_flush_lsn`. pg2dns's own state is read only through
//! `Stack::row_state`.
//!
//! A behaviour that does not depend on the DNS server is a scenario
//! function taking the [`harness::Primary`], run once per server by
//! [`on_each_primary!`]: `streaming::on_bind::a_deleted_row_leaves_dns` and
//! `streaming::on_knot::a_deleted_row_leaves_dns` (and `on_powerdns`) are
//! one scenario.

/// For each scenario `async fn NAME(primary: Primary) -> Result<()>` of the
/// calling module, a test `on_bind::NAME`, `on_knot::NAME` and
/// `on_powerdns::NAME`.
macro_rules! on_each_primary {
    ($($scenario:ident),+ $(,)?) => {
        on_each_primary!(@on on_bind, Bind, $($scenario),+);
        on_each_primary!(@on on_knot, Knot, $($scenario),+);
        on_each_primary!(@on on_powerdns, PowerDns, $($scenario),+);
    };
    (@on $module:ident, $primary:ident, $($scenario:ident),+) => {
        /// The module's scenarios with this primary.
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() -> anyhow::Result<()> {
                    super::$scenario(crate::harness::Primary::$primary).await
                }
            )+
        }
    };
}

mod harness;

mod admin;
mod config;
mod crash;
mod ddl;
mod encodings;
mod faithfulness;
mod faults;
mod guard;
mod halts;
mod harness_selftest;
mod health;
mod isolation;
mod knot;
mod many_zones;
mod outages;
mod packaging;
mod plugin;
mod primaries;
mod protobuf;
mod reconcile;
mod reconcile_many_zones;
mod reconcile_paused;
mod reconcile_resend;
mod reconcile_scale;
mod rejected;
mod replication;
mod roles;
mod setup;
mod source_rules;
mod sources;
mod streaming;
mod throughput;
mod tls;
mod trials;
mod zonefile;
mod zones_data;
