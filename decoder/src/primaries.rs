//! Several primaries per zone, sans-IO: what the zone acknowledged, which
//! refusals all its primaries agree on, when a primary diverges or is
//! degraded.
//!
//! # Why
//!
//! Multi-provider and multi-signer set-ups (RFC 8901) serve one zone from
//! two operators' primaries, each with its own key, and each must receive
//! the same changes in the same order. pg2dns sends every dispatch of a
//! zone to each of its primaries on a *lane* of its own (own session,
//! window, backoff; see `docs/design-many-zones.md` §8). The checkpoint
//! ledger must still see one zone: the slot's confirmed LSN may pass a
//! transaction only once every primary that is not *degraded* acknowledged
//! it. So the zone's acknowledgement is the minimum over its non-degraded
//! lanes, and this module is the only place that computes it:
//!
//! ```text
//!  handle_dispatched(zone, id, lsn, now) ─┐
//!  handle_acked(zone, lane, upto, now) ───┼─▶ Primaries ─▶ poll_event() → Acked{zone, upto}
//!  handle_refused(zone, lane, refusal) ───┤                               Refused{zone, ..} (agreed)
//!  handle_halted(zone, lane, lsn, why) ───┤                               Degraded / Rejoined{zone, lane}
//!  handle_timeout(now) ───────────────────┘                               Halt(Divergence | lane's halt)
//! ```
//!
//! - **Refusals.** A server refusing one owner group for its content is a
//!   row's fault only if every primary refuses it. A refusal is kept, per
//!   dispatch id, until every non-degraded lane passed that id: then it is
//!   either agreed (one `Refused` for the ledger, before the `Acked` that
//!   passes it) or a *divergence* (one primary took what another refused):
//!   a halt naming the zone, LSN, owner, both primaries and the answer.
//!   Never publish to one and skip the other silently.
//! - **Halts.** A lane that halts (a wrong key, NOTAUTH…) in a zone of
//!   several primaries waits up to `settle` for the others to answer the
//!   same dispatch, so the halt can say whether they took it (divergence)
//!   or refused it too.
//! - **Policy.** [`Policy::Hold`] (the default): a primary that does not
//!   answer holds the zone (nothing is lost; the stream waits).
//!   [`Policy::DegradeAfter`]: a lane that made no progress for that long
//!   while it had work, and lags another lane, is *degraded*: the zone's
//!   acknowledgement ignores it, its own progress is kept, and it rejoins
//!   once it caught up with the others. At least one lane is never
//!   degraded.
//! - **A bounded queue.** A degraded lane's dispatches wait in its server's
//!   queue. Past [`Primaries::with_queue_bound`] dispatches behind, the
//!   lane is *dropped* ([`Event::Dropped`]): detached for the rest of the
//!   session, its queue discarded by the driver, and brought in line from
//!   the row state (a catch-up reconcile) before it rejoins. The driver
//!   probes such a lane; once it answers ([`Primaries::handle_answering`])
//!   the lanes ask for the catch-up ([`Event::CatchUp`]): the session ends
//!   at a transaction boundary with everything checkpointed, and the next
//!   one, in the same process, catches the primary up at that progress and
//!   streams to it again.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::session::Rcode;
use crate::update::OwnerGroup;
use crate::{Lsn, ZoneId, ZoneName};

/// What a zone does when one of its primaries stops answering.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// The zone waits for every primary (`policy = "hold"`, the default).
    #[default]
    Hold,
    /// A primary without progress for this long is left behind; the others
    /// go on (`degrade_after = "60s"`).
    DegradeAfter(Duration),
}

/// A zone's primaries as this module knows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneSpec {
    /// The zone's name, for messages.
    pub name: ZoneName,
    /// The primaries' names, for messages (at least one).
    pub primaries: Vec<String>,
    /// The zone's policy.
    pub policy: Policy,
}

/// A primary took what another refused: the zone cannot go on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("zone {zone}: the primaries diverge at LSN {lsn}{}: {accepted_by} accepted the change, {refused_by} answered {answer}", .owner.as_ref().map(|o| format!(", owner {o}")).unwrap_or_default())]
pub struct Divergence {
    /// The zone.
    pub zone: ZoneName,
    /// The transaction.
    pub lsn: Lsn,
    /// The owner name refused (none for a halt, which concerns a whole
    /// message).
    pub owner: Option<String>,
    /// A primary that acknowledged it.
    pub accepted_by: String,
    /// The primary that refused it.
    pub refused_by: String,
    /// What the refusing primary answered.
    pub answer: String,
}

/// A refusal the zone's primaries agree on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The transaction of the group.
    pub lsn: Lsn,
    /// The refused additions.
    pub group: OwnerGroup,
    /// The answer.
    pub rcode: Rcode,
}

/// What the combining tells the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The zone acknowledged every dispatch up to `upto` (the minimum over
    /// its non-degraded lanes).
    Acked {
        /// The zone.
        zone: ZoneId,
        /// Highest dispatch id.
        upto: u64,
    },
    /// Every non-degraded primary refused this group.
    Refused {
        /// The zone.
        zone: ZoneId,
        /// The refusal.
        refusal: Refusal,
    },
    /// `lane` made no progress for `degrade_after`: the zone goes on
    /// without it.
    Degraded {
        /// The zone.
        zone: ZoneId,
        /// The lane (index into the zone's primaries).
        lane: usize,
    },
    /// `lane`, degraded, fell more than the queue bound behind: it
    /// receives nothing more this session (the driver drops its queue) and
    /// needs a catch-up before it rejoins.
    Dropped {
        /// The zone.
        zone: ZoneId,
        /// The lane.
        lane: usize,
    },
    /// `lane`, detached (dropped, or left out at the session's start),
    /// answers again: the session should end at a transaction boundary,
    /// once what it holds is checkpointed, so that the next one brings the
    /// primary in line with the row state (SOA-guarded) before it streams
    /// to it again. Asked once per lane and session.
    CatchUp {
        /// The zone.
        zone: ZoneId,
        /// The lane.
        lane: usize,
    },
    /// `lane` caught up with the others and counts again.
    Rejoined {
        /// The zone.
        zone: ZoneId,
        /// The lane.
        lane: usize,
    },
    /// The primaries disagree: halt.
    Divergent(Box<Divergence>),
    /// `lane` halted; the others did not take what it refused (or there
    /// is no other): halt with the lane's own reason.
    Halted {
        /// The zone.
        zone: ZoneId,
        /// The lane.
        lane: usize,
    },
}

#[derive(Clone, Debug)]
struct Lane {
    acked: u64,
    /// The transaction of the newest dispatch it acknowledged in this
    /// session.
    acked_lsn: Option<Lsn>,
    degraded: bool,
    /// Receives nothing this session: degraded until it ends.
    detached: bool,
    /// Detached, it answered again and its catch-up was asked for.
    catch_up_asked: bool,
    /// Since when it has had work without progress.
    waiting_since: Option<Instant>,
}

#[derive(Clone, Debug)]
struct Kept {
    /// The (last) dispatch id of its transaction.
    id: u64,
    refusal: Refusal,
    refused_by: Vec<usize>,
    /// Reported as agreed.
    agreed: bool,
}

#[derive(Clone, Debug)]
struct PendingHalt {
    lane: usize,
    id: u64,
    lsn: Lsn,
    answer: String,
    until: Instant,
}

#[derive(Clone, Debug)]
struct Zone {
    spec: ZoneSpec,
    lanes: Vec<Lane>,
    dispatched: u64,
    /// Dispatch ids and their transactions not yet passed by every lane.
    lsns: VecDeque<(u64, Lsn)>,
    refusals: Vec<Kept>,
    reported: u64,
    halt: Option<PendingHalt>,
    /// When it needs [`Primaries::handle_timeout`] (its entry in
    /// `Primaries::deadlines`).
    deadline: Option<Instant>,
}

impl Zone {
    /// When time alone changes something: a lane that lags another (while
    /// another counts) is degraded, a pending halt reported. The rest is
    /// decided when an answer comes; a time `handle_timeout` would not act
    /// on would wake the driver in a loop.
    fn next_deadline(&self) -> Option<Instant> {
        let best = self.lanes.iter().map(|l| l.acked).max().unwrap_or(0);
        let live = self.lanes.iter().filter(|l| !l.degraded).count();
        let degrade = match self.spec.policy {
            Policy::DegradeAfter(after) if live > 1 => self
                .lanes
                .iter()
                .filter(|l| !l.degraded && l.acked < best)
                .filter_map(|l| l.waiting_since.map(|t| t + after))
                .min(),
            _ => None,
        };
        [degrade, self.halt.as_ref().map(|h| h.until)]
            .into_iter()
            .flatten()
            .min()
    }

    fn ack(&self) -> u64 {
        self.lanes
            .iter()
            .filter(|l| !l.degraded)
            .map(|l| l.acked)
            .min()
            .unwrap_or(self.dispatched)
    }

    /// The least any lane that receives dispatches acknowledged.
    fn slowest(&self) -> u64 {
        self.lanes
            .iter()
            .filter(|l| !l.detached)
            .map(|l| l.acked)
            .min()
            .unwrap_or(0)
    }

    /// The last dispatch id of transaction `lsn` (the newest dispatch when
    /// it is not known: deciding later is the safe side).
    fn id_of(&self, lsn: Lsn) -> u64 {
        self.lsns
            .iter()
            .rev()
            .find(|(_, l)| *l == lsn)
            .map_or(self.dispatched, |(id, _)| *id)
    }

    fn name(&self, lane: usize) -> String {
        self.spec
            .primaries
            .get(lane)
            .cloned()
            .unwrap_or_else(|| format!("primary #{lane}"))
    }
}

/// The zones' primaries (see the module documentation).
///
/// Only zones of several primaries are kept: a zone of one primary passes
/// its lane's answers through as they come (no memory per such zone, so
/// 50,000 zones of one primary cost nothing here).
#[derive(Debug)]
pub struct Primaries {
    zones: crate::HashMap<ZoneId, Zone>,
    events: VecDeque<Event>,
    settle: Duration,
    /// Dispatches a degraded lane may lag before it is dropped.
    queue_bound: u64,
    /// Each zone's next deadline, soonest first: `poll_timeout` and
    /// `handle_timeout` cost a zone due, not every zone of several
    /// primaries (there may be thousands).
    deadlines: std::collections::BTreeSet<(Instant, ZoneId)>,
}

impl Primaries {
    /// The zones of several primaries (the others need not be given); a
    /// lane's halt waits up to `settle` for the zone's other primaries to
    /// answer.
    pub fn new(zones: impl IntoIterator<Item = (ZoneId, ZoneSpec)>, settle: Duration) -> Primaries {
        Primaries {
            zones: zones
                .into_iter()
                .filter(|(_, spec)| spec.primaries.len() > 1)
                .map(|(id, spec)| {
                    (
                        id,
                        Zone {
                            lanes: vec![
                                Lane {
                                    acked: 0,
                                    acked_lsn: None,
                                    degraded: false,
                                    detached: false,
                                    catch_up_asked: false,
                                    waiting_since: None,
                                };
                                spec.primaries.len().max(1)
                            ],
                            spec,
                            dispatched: 0,
                            lsns: VecDeque::new(),
                            refusals: Vec::new(),
                            reported: 0,
                            halt: None,
                            deadline: None,
                        },
                    )
                })
                .collect(),
            events: VecDeque::new(),
            settle,
            queue_bound: u64::MAX,
            deadlines: std::collections::BTreeSet::new(),
        }
    }

    /// A degraded lane more than `bound` dispatches behind its zone is
    /// dropped ([`Event::Dropped`]); unbounded unless set.
    #[must_use]
    pub fn with_queue_bound(mut self, bound: u64) -> Primaries {
        self.queue_bound = bound.max(1);
        self
    }

    /// How many primaries `zone` has (1 for a zone not given).
    pub fn lanes(&self, zone: ZoneId) -> usize {
        self.zones.get(&zone).map_or(1, |z| z.lanes.len())
    }

    /// Whether `lane` of `zone` is degraded.
    pub fn is_degraded(&self, zone: ZoneId, lane: usize) -> bool {
        self.lane(zone, lane).is_some_and(|l| l.degraded)
    }

    /// Whether `lane` of `zone` receives nothing this session.
    pub fn is_detached(&self, zone: ZoneId, lane: usize) -> bool {
        self.lane(zone, lane).is_some_and(|l| l.detached)
    }

    /// The transaction of the newest dispatch `lane` of `zone`
    /// acknowledged in this session, if known.
    pub fn acked_lsn(&self, zone: ZoneId, lane: usize) -> Option<Lsn> {
        self.lane(zone, lane).and_then(|l| l.acked_lsn)
    }

    /// What `lane` of `zone` acknowledged.
    pub fn acked(&self, zone: ZoneId, lane: usize) -> u64 {
        self.lane(zone, lane).map_or(0, |l| l.acked)
    }

    /// What `zone` acknowledged (the minimum over its non-degraded lanes;
    /// 0 for a zone of one primary, whose answers pass through).
    pub fn zone_acked(&self, zone: ZoneId) -> u64 {
        self.zones.get(&zone).map_or(0, Zone::ack)
    }

    fn lane(&self, zone: ZoneId, lane: usize) -> Option<&Lane> {
        self.zones.get(&zone)?.lanes.get(lane)
    }

    /// Everything up to `id` was acknowledged by every lane in an earlier
    /// session (the ids go on from there).
    pub fn handle_restored(&mut self, zone: ZoneId, id: u64) {
        if let Some(z) = self.zones.get_mut(&zone) {
            z.dispatched = z.dispatched.max(id);
            z.reported = z.reported.max(id);
            for l in &mut z.lanes {
                l.acked = l.acked.max(id);
            }
        }
        self.refresh(zone);
    }

    /// `lane` of `zone` receives nothing this session (it could not be
    /// brought in line when the session started): it is degraded, and
    /// stays so; the zone goes on with its other primaries. One lane of a
    /// zone always counts: the last one not detached stays.
    pub fn handle_detached(&mut self, zone: ZoneId, lane: usize) {
        if let Some(l) = self
            .zones
            .get_mut(&zone)
            .filter(|z| {
                z.lanes
                    .iter()
                    .enumerate()
                    .any(|(i, l)| i != lane && !l.detached)
            })
            .and_then(|z| z.lanes.get_mut(lane))
        {
            l.degraded = true;
            l.detached = true;
        }
        self.refresh(zone);
    }

    /// `lane` of `zone` answered the driver's probe: when it receives
    /// nothing this session, [`Event::CatchUp`] (once). A lane that still
    /// receives dispatches catches up on its own ([`Event::Rejoined`]).
    pub fn handle_answering(&mut self, zone: ZoneId, lane: usize) {
        let Some(l) = self
            .zones
            .get_mut(&zone)
            .and_then(|z| z.lanes.get_mut(lane))
        else {
            return;
        };
        if l.detached && !l.catch_up_asked {
            l.catch_up_asked = true;
            self.events.push_back(Event::CatchUp { zone, lane });
        }
    }

    /// Dispatch `id` (transaction `lsn`) went to every lane of `zone`.
    pub fn handle_dispatched(&mut self, zone: ZoneId, id: u64, lsn: Lsn, now: Instant) {
        let Some(z) = self.zones.get_mut(&zone) else {
            return;
        };
        for l in &mut z.lanes {
            if l.acked >= z.dispatched && l.waiting_since.is_none() {
                l.waiting_since = Some(now);
            }
        }
        z.dispatched = z.dispatched.max(id);
        if z.lanes.len() > 1 {
            z.lsns.push_back((id, lsn));
        }
        // A degraded lane too far behind: dropped (the last lane that
        // receives dispatches never is).
        for i in 0..z.lanes.len() {
            let l = &z.lanes[i];
            if l.degraded
                && !l.detached
                && z.dispatched.saturating_sub(l.acked) > self.queue_bound
                && z.lanes
                    .iter()
                    .enumerate()
                    .any(|(j, o)| j != i && !o.detached)
            {
                z.lanes[i].detached = true;
                self.events.push_back(Event::Dropped { zone, lane: i });
            }
        }
        self.refresh(zone);
    }

    /// `lane` of `zone` acknowledged every dispatch up to `upto`.
    pub fn handle_acked(&mut self, zone: ZoneId, lane: usize, upto: u64, now: Instant) {
        let Some(z) = self.zones.get_mut(&zone) else {
            self.events.push_back(Event::Acked { zone, upto });
            return;
        };
        let Some(l) = z.lanes.get_mut(lane) else {
            return;
        };
        if upto > l.acked {
            l.acked = upto;
            l.waiting_since = (upto < z.dispatched).then_some(now);
            // The newest dispatch at or below `upto` (ids increase).
            let at = z.lsns.partition_point(|(id, _)| *id <= upto);
            if let Some((_, lsn)) = at.checked_sub(1).and_then(|i| z.lsns.get(i)) {
                l.acked_lsn = Some(*lsn);
            }
        }
        self.settle_zone(zone, now);
    }

    /// `lane` of `zone` refused an owner group for its content (and went
    /// on).
    pub fn handle_refused(&mut self, zone: ZoneId, lane: usize, refusal: Refusal, now: Instant) {
        let Some(z) = self.zones.get_mut(&zone) else {
            self.events.push_back(Event::Refused { zone, refusal });
            return;
        };
        let id = z.id_of(refusal.lsn);
        match z.refusals.iter_mut().find(|k| {
            k.id == id
                && k.refusal.lsn == refusal.lsn
                && k.refusal.group.owner == refusal.group.owner
        }) {
            Some(k) => {
                if !k.refused_by.contains(&lane) {
                    k.refused_by.push(lane);
                }
            }
            None => z.refusals.push(Kept {
                id,
                refusal,
                refused_by: vec![lane],
                agreed: false,
            }),
        }
        self.settle_zone(zone, now);
    }

    /// `lane` of `zone` halted at the message of transaction `lsn`,
    /// answering `answer`. With one primary the halt is
    /// reported at once; with several, once the others answered that
    /// dispatch or `settle` passed.
    pub fn handle_halted(
        &mut self,
        zone: ZoneId,
        lane: usize,
        lsn: Lsn,
        answer: String,
        now: Instant,
    ) {
        let settle = self.settle;
        let Some(z) = self.zones.get_mut(&zone) else {
            self.events.push_back(Event::Halted { zone, lane });
            return;
        };
        if z.halt.is_some() {
            return;
        }
        let id = z
            .id_of(lsn)
            .max(z.lanes.get(lane).map_or(0, |l| l.acked + 1));
        z.halt = Some(PendingHalt {
            lane,
            id,
            lsn,
            answer,
            until: now + settle,
        });
        self.settle_zone(zone, now);
    }

    /// Time passed: degrade lanes without progress, report halts whose
    /// wait is over.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<ZoneId> = self
            .deadlines
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, zone)| *zone)
            .collect();
        for zone in due {
            self.settle_zone(zone, now);
        }
    }

    /// When [`Primaries::handle_timeout`] should be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    /// Files `zone`'s next deadline anew.
    fn refresh(&mut self, zone: ZoneId) {
        let Some(z) = self.zones.get_mut(&zone) else {
            return;
        };
        let next = z.next_deadline();
        if next != z.deadline {
            if let Some(old) = z.deadline {
                self.deadlines.remove(&(old, zone));
            }
            if let Some(new) = next {
                self.deadlines.insert((new, zone));
            }
            z.deadline = next;
        }
    }

    /// The next thing to tell the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn settle_zone(&mut self, zone: ZoneId, now: Instant) {
        self.settle_zone_now(zone, now);
        self.refresh(zone);
    }

    fn settle_zone_now(&mut self, zone: ZoneId, now: Instant) {
        let Some(z) = self.zones.get_mut(&zone) else {
            return;
        };
        // A halted lane: once the others answered its dispatch (or the
        // wait is over), say whether they took it.
        if let Some(h) = z.halt.clone() {
            let others: Vec<usize> = (0..z.lanes.len()).filter(|&i| i != h.lane).collect();
            let took = others.iter().copied().find(|&i| z.lanes[i].acked >= h.id);
            let all_answered = others.iter().all(|&i| z.lanes[i].acked >= h.id);
            if let Some(other) = took {
                self.events.push_back(Event::Divergent(Box::new(Divergence {
                    zone: z.spec.name.clone(),
                    lsn: h.lsn,
                    owner: None,
                    accepted_by: z.name(other),
                    refused_by: z.name(h.lane),
                    answer: h.answer.clone(),
                })));
                z.halt = None;
                return;
            }
            if all_answered || now >= h.until {
                self.events.push_back(Event::Halted { zone, lane: h.lane });
                z.halt = None;
                return;
            }
        }
        // Degrade lanes that lag and made no progress for too long.
        if let Policy::DegradeAfter(after) = z.spec.policy {
            let best = z.lanes.iter().map(|l| l.acked).max().unwrap_or(0);
            for i in 0..z.lanes.len() {
                let l = &z.lanes[i];
                let live = z.lanes.iter().filter(|l| !l.degraded).count();
                if !l.degraded
                    && live > 1
                    && l.acked < best
                    && l.waiting_since.is_some_and(|t| now >= t + after)
                {
                    z.lanes[i].degraded = true;
                    self.events.push_back(Event::Degraded { zone, lane: i });
                }
            }
        }
        // Degraded lanes that caught up rejoin.
        let ack = z.ack();
        for i in 0..z.lanes.len() {
            if z.lanes[i].degraded && !z.lanes[i].detached && z.lanes[i].acked >= ack {
                z.lanes[i].degraded = false;
                z.lanes[i].waiting_since = (z.lanes[i].acked < z.dispatched).then_some(now);
                self.events.push_back(Event::Rejoined { zone, lane: i });
            }
        }
        let ack = z.ack();
        // Refusals every non-degraded lane passed: agreed or divergent. A
        // lane that passed a refusal it did not make took the change.
        for k in &mut z.refusals {
            if k.id > ack && !k.agreed {
                continue;
            }
            let took = (0..z.lanes.len())
                .find(|&i| !k.refused_by.contains(&i) && z.lanes[i].acked >= k.id);
            if let Some(other) = took {
                let refused_by = k.refused_by[0];
                self.events.push_back(Event::Divergent(Box::new(Divergence {
                    zone: z.spec.name.clone(),
                    lsn: k.refusal.lsn,
                    owner: Some(k.refusal.group.owner.to_string()),
                    accepted_by: z.spec.primaries.get(other).cloned().unwrap_or_default(),
                    refused_by: z
                        .spec
                        .primaries
                        .get(refused_by)
                        .cloned()
                        .unwrap_or_default(),
                    answer: k.refusal.rcode.to_string(),
                })));
                z.refusals.clear();
                return;
            }
            if !k.agreed {
                k.agreed = true;
                self.events.push_back(Event::Refused {
                    zone,
                    refusal: k.refusal.clone(),
                });
            }
        }
        let slowest = z.slowest();
        z.refusals.retain(|k| !(k.agreed && k.id <= slowest));
        while z.lsns.front().is_some_and(|(id, _)| *id <= slowest) {
            z.lsns.pop_front();
        }
        if ack > z.reported {
            z.reported = ack;
            self.events.push_back(Event::Acked { zone, upto: ack });
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Hold => write!(f, "hold"),
            Policy::DegradeAfter(d) => write!(f, "degrade_after = {d:?}"),
        }
    }
}

#[cfg(test)]
mod tests;
