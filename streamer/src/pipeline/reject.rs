//! The I/O of a rejection the stream core walks (see
//! `pg2dns_decoder::stream::reject`): which rows of the row state produced
//! the records a server refused, and which MX/SRV targets have an address.
//! Which rows are refused, why, what leaves DNS and what is written are
//! the core's; its next steps are a flush's (`flush.rs`).

use pg2dns_decoder::checkpoint::BatchSeq;
use pg2dns_decoder::plan::Rejection;
use pg2dns_decoder::stream::{FindProducers, Producers};
use tracing::warn;

use super::flush::FlushClock;
use super::Pipeline;
use crate::error::RunError;

impl Pipeline<'_> {
    /// The first step of a rejection: a batch of its own in the store
    /// (which the checkpoint covering the refused transactions covers
    /// too), and the look-ups the core asks for.
    pub(super) async fn find_producers(&mut self, find: FindProducers) -> Result<(), RunError> {
        self.flush_clock = FlushClock::start();
        self.flush_batch = BatchSeq(self.store.start_batch());
        let sources: Vec<&str> = self.sources.iter().map(String::as_str).collect();
        let rows = self
            .store
            .producers(&sources, self.core.zones(), &find.records)
            .await?;
        let mut addressed = Vec::new();
        for (zone, target) in find.targets {
            if self
                .store
                .has_address(self.core.zones(), zone, &target)
                .await?
            {
                addressed.push((zone, target));
            }
        }
        self.core.handle_producers(Producers { rows, addressed });
        Ok(())
    }

    pub(super) fn log_rejection(&self, r: &Rejection) {
        let zone = r
            .zone
            .map(|z| self.core.zones().name(z).to_string())
            .unwrap_or_else(|| "-".into());
        let owner = r
            .owner
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "-".into());
        warn!(
            source = %self.sources[usize::from(r.source.0)],
            row = %r.key,
            lsn = %r.lsn,
            %zone,
            %owner,
            reason = %pg2dns_decoder::error_chain(&r.reason),
            "row not sent to DNS"
        );
    }
}
