//! The DNS side: one connection type (TCP framing) used by every zone's
//! UPDATE stream, and later by zone transfers and the bench client.

pub mod axfr;
pub mod conn;
pub mod kept;
pub mod lanes;
pub mod pipelined;
pub mod server;
pub mod sink;

pub use conn::Connection;
