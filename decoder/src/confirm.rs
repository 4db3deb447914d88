//! When the replication slot may confirm a transaction: only behind a
//! checkpoint (row state and progress committed) whose WAL is flushed.
//!
//! A checkpoint committed with `synchronous_commit = off` is visible at once
//! but may still be lost by a PostgreSQL crash until the server flushes its
//! WAL. Confirming the slot past it before then could leave, after such a
//! crash, a slot ahead of the durable progress: the transactions in between
//! would never be replayed, and their row state would be missing. So each
//! such checkpoint waits here with the WAL position its commit reached, and
//! the slot confirms the newest transaction end whose checkpoint the flush
//! has passed. A checkpoint committed synchronously flushes every earlier
//! one with it.

use std::collections::VecDeque;

use crate::Lsn;

/// The checkpoints committed but not known to be flushed, oldest first.
#[derive(Debug, Default)]
pub struct Confirmations {
    /// The WAL position at or past each checkpoint's commit record, and the
    /// transaction end it covers.
    unflushed: VecDeque<(Lsn, Lsn)>,
}

impl Confirmations {
    /// A checkpoint covering transactions up to `end` committed and flushed:
    /// it and every earlier one may be confirmed. Returns `end`.
    pub fn flushed_checkpoint(&mut self, end: Lsn) -> Lsn {
        self.unflushed.clear();
        end
    }

    /// A checkpoint covering transactions up to `end` committed without
    /// waiting for its flush; its commit record ends at or before `wal`, and
    /// the WAL was flushed up to `flushed` at that moment. Returns what may
    /// be confirmed now, if anything.
    pub fn unflushed_checkpoint(&mut self, wal: Lsn, end: Lsn, flushed: Lsn) -> Option<Lsn> {
        self.unflushed.push_back((wal, end));
        self.flushed(flushed)
    }

    /// The server's WAL is flushed up to `flushed`: the newest transaction
    /// end whose checkpoint that covers, if one was waiting.
    pub fn flushed(&mut self, flushed: Lsn) -> Option<Lsn> {
        let mut newest = None;
        while let Some(&(wal, end)) = self.unflushed.front() {
            if wal > flushed {
                break;
            }
            newest = Some(end);
            self.unflushed.pop_front();
        }
        newest
    }

    /// Whether a checkpoint waits for the flush.
    pub fn waiting(&self) -> bool {
        !self.unflushed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(raw: u64) -> Lsn {
        Lsn::new(raw)
    }

    #[test]
    fn nothing_is_confirmed_before_the_flush_passes_the_commit() {
        let mut c = Confirmations::default();
        // The flush is behind the commit record: nothing yet.
        assert_eq!(c.unflushed_checkpoint(l(500), l(100), l(499)), None);
        assert!(c.waiting());
        assert_eq!(c.flushed(l(499)), None);
        // Exactly at the end of the commit record: confirmed.
        assert_eq!(c.flushed(l(500)), Some(l(100)));
        assert!(!c.waiting());
        assert_eq!(c.flushed(l(10_000)), None, "confirmed once");
    }

    #[test]
    fn the_newest_end_behind_the_flush_is_confirmed_and_later_ones_wait() {
        let mut c = Confirmations::default();
        assert_eq!(c.unflushed_checkpoint(l(500), l(100), l(0)), None);
        assert_eq!(c.unflushed_checkpoint(l(700), l(300), l(0)), None);
        assert_eq!(c.unflushed_checkpoint(l(900), l(600), l(0)), None);
        assert_eq!(c.flushed(l(800)), Some(l(300)));
        assert_eq!(c.flushed(l(899)), None);
        assert_eq!(c.flushed(l(900)), Some(l(600)));
    }

    #[test]
    fn a_checkpoint_whose_commit_found_the_flush_past_it_is_confirmed_at_once() {
        // Another session's synchronous commit flushed it meanwhile.
        let mut c = Confirmations::default();
        assert_eq!(c.unflushed_checkpoint(l(500), l(100), l(520)), Some(l(100)));
        assert!(!c.waiting());
    }

    #[test]
    fn a_flushed_checkpoint_covers_every_earlier_one() {
        let mut c = Confirmations::default();
        assert_eq!(c.unflushed_checkpoint(l(500), l(100), l(0)), None);
        assert_eq!(c.flushed_checkpoint(l(300)), l(300));
        assert!(!c.waiting());
        assert_eq!(c.flushed(l(10_000)), None);
    }
}
