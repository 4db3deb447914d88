//! Integration tests for pg2dns: real PostgreSQL, BIND and pg2dns processes.
//!
//! One test binary (built as part of the `pg2dns` package, so cargo builds
//! the binary under test first) with one module per scenario group. Every
//! test starts its own servers on free loopback ports in its own temporary
//! directory, so tests run in parallel. PostgreSQL 15 (or newer), BIND 9 and
//! Knot 3 must be installed: `scripts/test` installs them on Debian. A missing
//! server is a failure, never a skip.
//!
//! Every assertion is about what the servers answer: an AXFR of each zone
//! compared with `pg2dns.rr`, rows of `pg2dns.rejected`, the replication
//! slot's `confirmed_flush_lsn`.

mod harness;

mod config;
mod crash;
mod faults;
mod halts;
mod harness_selftest;
mod knot;
mod outages;
mod rejected;
mod replication;
mod streaming;
mod throughput;
