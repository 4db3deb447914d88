//! The sans-IO core of pg2dns: bytes in, values out.
//!
//! This crate never touches sockets, clocks, files or the environment. The
//! streamer feeds it pgoutput bytes and the current time, and gets back
//! committed transactions, record changes, planned RFC 2136 UPDATE messages
//! and TSIG signatures.
//!
//! ```text
//!  pgoutput bytes ─▶ pgoutput::parse ─▶ txn::Assembler ─▶ records (row → RRs)
//!                                                         │
//!                       tsig::sign ◀── update::encode ◀── update::Packer
//! ```

pub mod lsn;
pub mod name;
pub mod pgoutput;
pub mod rdata;
pub mod records;
pub mod tsig;
pub mod txn;
pub mod update;

pub use lsn::Lsn;
pub use name::Name;
pub use rdata::RType;
pub use records::{Owner, Record, RecordId, ZoneName};
