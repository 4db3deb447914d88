//! Server tasks that outlive a session, so that a SIGHUP (or a change of
//! `pg2dns.zones`) rebuilds only what changed: a server whose address and
//! limits stay keeps its [`ServerTask`] and its open connections, and its
//! zones whose settings stay keep their lanes (issue #24: with 5,000 zones,
//! rebuilding every stream on SIGHUP took 1.5 s).
//!
//! A task reports under the session's [`ZoneId`]s, to the session's
//! channel; both belong to one session. So each session starts by telling
//! every task its zones under the new ids and where to report
//! ([`ServerInput::Session`]): the task renames the lanes of unchanged
//! zones, removes those gone or changed, adds the new ones. Tasks are kept
//! only from a session that ended cleanly with every dispatch acknowledged
//! (see `pipeline::Lanes::keep`), so no zone has work queued or in flight
//! across the boundary; a zone's dispatch ids go on from where they were.
//!
//! ```text
//!  session n   ─Dispatch(ZoneId of n)───▶ ServerTask ─ZoneReport(ZoneId of n)───▶ reports of n
//!  session n+1 ─Session{reports, zones}─▶  (same task, same connections)
//!              ─Dispatch(ZoneId of n+1)─▶  ─ZoneReport(ZoneId of n+1)─▶ reports of n+1
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;

use pg2dns_decoder::ZoneName;
use tokio::sync::mpsc;

use super::server::{ServerInput, ServerTask, SoaAsk};
use super::sink::LaneReport;
use crate::config::{Limits, PrimaryAddr, ServerLimits};

/// What a server task is built from: a task is reused only when these are
/// equal. (Keys and message limits are per zone: a change re-adds the
/// zone's lane, the task and its connections stay.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerKey {
    /// The address as configured (resolved again at each connect).
    pub primary_addr: PrimaryAddr,
    /// The address resolved, which names the server in logs and metrics.
    pub primary: SocketAddr,
    /// Its `[[server]]` limits.
    pub limits: ServerLimits,
}

/// A running server task; it is aborted when dropped.
pub struct ServerStream {
    /// What it was built from.
    pub key: ServerKey,
    /// Its input.
    pub tx: mpsc::Sender<ServerInput>,
    /// The status's SOA queries to it (sent on its connections).
    pub soa: mpsc::UnboundedSender<SoaAsk>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerStream {
    /// Starts the task of the server `key`, with no zones yet (the
    /// session's [`ServerInput::Session`] gives them).
    pub fn start(
        key: ServerKey,
        zone_limits: &Limits,
        reports: mpsc::UnboundedSender<LaneReport>,
    ) -> ServerStream {
        let task = ServerTask::new(
            key.primary_addr.clone(),
            key.primary.to_string(),
            key.limits,
            zone_limits,
            reports,
        );
        let (tx, rx) = mpsc::channel(4);
        let (soa, soa_rx) = mpsc::unbounded_channel();
        ServerStream {
            key,
            tx,
            soa,
            task: tokio::spawn(task.run(rx, soa_rx)),
        }
    }
}

impl Drop for ServerStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Server tasks kept from a session that ended with everything
/// acknowledged, and the dispatch id each zone reached.
#[derive(Default)]
pub struct Kept {
    servers: Vec<ServerStream>,
    dispatched: HashMap<ZoneName, u64>,
    /// Primaries (zone, `[[server]]` name) that were degraded when the
    /// session ended: their queue is gone, so the next session brings them
    /// in line (see `Lanes::catch_up`) before it streams.
    behind: Vec<(ZoneName, String)>,
    /// Of those, the ones that could not be brought in line: the session
    /// streams without them (see `Lanes::start`).
    detached: Vec<(ZoneName, String)>,
    /// Sessions in a row whose start could not bring every primary left
    /// behind in line (the probes of those wait longer each time).
    failed_catch_ups: u32,
}

impl Kept {
    /// Keeps `servers`, whose zones reached the dispatch ids `dispatched`.
    pub fn new(
        servers: Vec<ServerStream>,
        dispatched: impl IntoIterator<Item = (ZoneName, u64)>,
    ) -> Kept {
        Kept {
            // A task that stopped is not worth keeping.
            servers: servers
                .into_iter()
                .filter(|s| !s.task.is_finished())
                .collect(),
            dispatched: dispatched.into_iter().collect(),
            ..Kept::default()
        }
    }

    /// The kept task of the server `key`, if any.
    pub fn take_server(&mut self, key: &ServerKey) -> Option<ServerStream> {
        let i = self
            .servers
            .iter()
            .position(|s| s.key == *key && !s.task.is_finished())?;
        Some(self.servers.swap_remove(i))
    }

    /// The dispatch id `zone` reached, everything up to it acknowledged
    /// (0 for a zone that was not streamed).
    pub fn dispatched(&mut self, zone: &ZoneName) -> u64 {
        self.dispatched.remove(zone).unwrap_or(0)
    }

    /// How many server tasks are kept.
    pub fn servers(&self) -> usize {
        self.servers.len()
    }

    /// Notes primaries left behind by the session that ends.
    pub fn note_behind(&mut self, behind: Vec<(ZoneName, String)>) {
        self.behind = behind;
    }

    /// The primaries left behind by the last session.
    pub fn take_behind(&mut self) -> Vec<(ZoneName, String)> {
        std::mem::take(&mut self.behind)
    }

    /// Primaries the next session streams without.
    pub fn set_detached(&mut self, detached: Vec<(ZoneName, String)>) {
        self.detached = detached;
    }

    /// Sessions in a row whose start could not bring a primary in line.
    pub fn failed_catch_ups(&self) -> u32 {
        self.failed_catch_ups
    }

    /// Sets [`Kept::failed_catch_ups`].
    pub fn set_failed_catch_ups(&mut self, n: u32) {
        self.failed_catch_ups = n;
    }

    /// Whether the session streams without `primary` of `zone`.
    pub fn is_detached(&self, zone: &ZoneName, primary: &str) -> bool {
        self.detached.iter().any(|(z, p)| z == zone && p == primary)
    }
}
