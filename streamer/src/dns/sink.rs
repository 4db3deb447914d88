//! What a zone's UPDATE stream tells the pipeline: [`ZoneReport`]s, sent by
//! its server's task ([`crate::dns::server`]), which drives the zone's
//! [`pg2dns_decoder::session`] on the server's shared connections.

use pg2dns_decoder::session::Halt;
use pg2dns_decoder::ZoneId;

pub use pg2dns_decoder::session::Dispatch;

/// What a zone's stream tells the pipeline.
#[derive(Debug)]
pub enum ZoneReport {
    /// Every dispatch with id ≤ `upto` was acknowledged by the server.
    Acked {
        /// The zone.
        zone: ZoneId,
        /// Highest dispatch id fully acknowledged.
        upto: u64,
    },
    /// The server refused one owner group's additions for their content;
    /// the rest went on. The rows that wanted them must be rejected.
    Refused {
        /// The zone.
        zone: ZoneId,
        /// The transaction of the group.
        lsn: pg2dns_decoder::Lsn,
        /// The refused additions.
        group: pg2dns_decoder::update::OwnerGroup,
        /// The server's answer.
        rcode: pg2dns_decoder::session::Rcode,
    },
    /// The zone cannot go on until the operator acts.
    Halted {
        /// The zone.
        zone: ZoneId,
        /// Why.
        error: Halt,
    },
}

/// What the server tasks tell the pipeline's [`crate::dns::lanes::Lanes`]:
/// a zone's report, tagged with the server (of this session) whose lane
/// made it, so that a zone of several primaries knows which one answered.
#[derive(Debug)]
pub enum LaneReport {
    /// A lane's report.
    Zone {
        /// The server task's index in this session.
        server: usize,
        /// What the zone's lane on that server said.
        report: ZoneReport,
    },
    /// Time passed for the zones' primaries (their halts settle and their
    /// lanes degrade on time), or a primary's degraded state was written:
    /// made by `Lanes`' `Reports::recv` when `Primaries::poll_timeout`
    /// comes, never sent by a task.
    Tick,
    /// A primary the session streams without answered an SOA query again
    /// (sent by its probe in `Lanes`).
    Answering {
        /// The zone.
        zone: pg2dns_decoder::ZoneId,
        /// The primary (index into the zone's primaries).
        lane: usize,
    },
}
