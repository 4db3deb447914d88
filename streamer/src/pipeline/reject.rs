//! Rows whose records a server refused for their content: their records
//! leave the row state (or wait for an MX or SRV target's address), in a
//! batch of their own that the checkpoint covering them covers too.

use std::collections::HashSet;

use pg2dns_decoder::checkpoint::{BatchSeq, ServerRefusal};
use pg2dns_decoder::mapping::{Desired, RowUpdate};
use pg2dns_decoder::plan::{Planner, Refusal, Refused, Rejection, RowRef, Waiting};
use pg2dns_decoder::session::Rcode;
use pg2dns_decoder::update::UpdateOp;
use pg2dns_decoder::{Lsn, Owner, RType, Record, ZoneId};
use tracing::warn;

use super::Pipeline;
use crate::error::RunError;

impl Pipeline<'_> {
    /// Rejects the rows whose records a server refused for their content
    /// (the session narrowed the refusal down to their owner group and
    /// checked that the key and zone are fine): their records leave the row
    /// state, and whatever else they contributed leaves DNS, as for any
    /// refused row. Runs before the checkpoint that covers them.
    pub(super) async fn reject_refused(
        &mut self,
        refused: Vec<ServerRefusal>,
    ) -> Result<(), RunError> {
        let mut records: Vec<(ZoneId, Record)> = Vec::new();
        let mut origin: Vec<(Lsn, Rcode)> = Vec::new();
        for r in &refused {
            for op in &r.group.ops {
                if let UpdateOp::Add(record) = op {
                    records.push((r.zone, record.clone()));
                    origin.push((r.lsn, r.rcode));
                }
            }
        }
        let producers = {
            let sources: Vec<&str> = self.sources.iter().map(String::as_str).collect();
            self.store
                .producers(&sources, self.core.zones(), &records)
                .await?
        };
        let mut seen = HashSet::new();
        let mut updates = Vec::new();
        let mut waiting = Vec::new();
        for ((source, key), i) in producers {
            if !seen.insert((source, key.clone())) {
                continue;
            }
            let (zone, record) = &records[i];
            let (lsn, rcode) = origin[i];
            let reason = match self.missing_address(*zone, record).await? {
                Some(target) => {
                    waiting.push(Waiting {
                        row: (source, key.clone()),
                        lsn,
                        records: vec![Desired {
                            zone: *zone,
                            record: record.clone(),
                        }],
                        target: (*zone, target.clone()),
                    });
                    Refusal::WaitingForAddress {
                        rcode,
                        record: record.to_string(),
                        target,
                    }
                }
                None => Refusal::ServerRefused {
                    rcode,
                    record: record.to_string(),
                },
            };
            updates.push((
                source,
                RowUpdate {
                    key,
                    lsn,
                    image: Err(Refused {
                        zone: Some(*zone),
                        owner: Some(record.owner.clone()),
                        reason: Box::new(reason),
                    }),
                },
            ));
        }
        let rows: Vec<RowRef> = updates.iter().map(|(s, u)| (*s, u.key.clone())).collect();
        let sources: Vec<&str> = self.sources.iter().map(String::as_str).collect();
        // A batch of its own, which the checkpoint covering the refused
        // transactions covers too.
        let batch = BatchSeq(self.store.start_batch());
        let (loaded, _) = self
            .store
            .load(&sources, &rows, &[], self.core.zones())
            .await?;
        let mut planner = Planner::new(self.core.zones(), self.core.limits(), loaded);
        let lsn = updates.last().map(|(_, u)| u.lsn).unwrap_or_default();
        for (source, update) in updates {
            planner.apply(source, update);
        }
        let ops = planner.end_segment();
        self.lanes.dispatch(lsn, ops);
        let mut outcome = planner.finish();
        for r in &outcome.rejections {
            self.log_rejection(r);
        }
        self.lanes.send_outbox().await?;
        self.store
            .write(&sources, self.core.zones(), &mut outcome)
            .await?;
        // After the write, which discards what the rows waited for before.
        self.store
            .add_waiting(&sources, self.core.zones(), &waiting)
            .await?;
        let end = self.core.rejection_end();
        let sent = self.lanes.mark_batch(batch, end);
        self.core.handle_flushed(sent);
        Ok(())
    }

    /// For an MX or SRV record whose target is in its own zone and has no
    /// address record in the row state: that target (what BIND's
    /// check-integrity refuses the record for).
    pub(super) async fn missing_address(
        &mut self,
        zone: ZoneId,
        record: &Record,
    ) -> Result<Option<Owner>, RunError> {
        if !matches!(record.rtype, RType::MX | RType::SRV) {
            return Ok(None);
        }
        let Some(target) = pg2dns_decoder::rdata::target(record.rtype, record.rdata.as_wire())
        else {
            return Ok(None);
        };
        let target = Owner::from_name(target);
        if self.core.zones().zone_for(&target) != Some(zone) {
            return Ok(None);
        }
        let has = self
            .store
            .has_address(self.core.zones(), zone, &target)
            .await?;
        Ok((!has).then_some(target))
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
