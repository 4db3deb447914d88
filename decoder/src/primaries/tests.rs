//! The combining of several primaries' answers, on a fake clock, against
//! primaries that answer in any interleaving, stop answering, and refuse.

use proptest::prelude::*;

use super::*;
use crate::records::Owner;
use crate::ZoneName;

const Z: ZoneId = ZoneId(0);

fn lsn(n: u64) -> Lsn {
    Lsn::new(n * 100)
}

fn spec(n: usize, policy: Policy) -> ZoneSpec {
    ZoneSpec {
        name: ZoneName::parse("example.test").unwrap(),
        primaries: (0..n).map(|i| format!("ns{}", i + 1)).collect(),
        policy,
    }
}

fn refusal(n: u64, owner: &str) -> Refusal {
    Refusal {
        lsn: lsn(n),
        group: OwnerGroup {
            owner: Owner::parse(owner).unwrap(),
            ops: Vec::new(),
        },
        rcode: Rcode::REFUSED,
    }
}

fn events(p: &mut Primaries) -> Vec<Event> {
    std::iter::from_fn(|| p.poll_event()).collect()
}

fn acked(events: &[Event]) -> Option<u64> {
    events.iter().rev().find_map(|e| match e {
        Event::Acked { upto, .. } => Some(*upto),
        _ => None,
    })
}

#[test]
fn one_primary_is_acknowledged_as_it_answers() {
    let t = Instant::now();
    let mut p = Primaries::new(vec![(Z, spec(1, Policy::Hold))], Duration::from_secs(5));
    p.handle_dispatched(Z, 1, lsn(1), t);
    p.handle_acked(Z, 0, 1, t);
    assert_eq!(events(&mut p), vec![Event::Acked { zone: Z, upto: 1 }]);
}

#[test]
fn the_zone_ack_is_the_min_over_non_degraded_primaries() {
    let t = Instant::now();
    let after = Duration::from_secs(60);
    let mut p = Primaries::new(
        vec![(Z, spec(2, Policy::DegradeAfter(after)))],
        Duration::from_secs(5),
    );
    for id in 1..=3 {
        p.handle_dispatched(Z, id, lsn(id), t);
    }
    p.handle_acked(Z, 0, 3, t);
    assert_eq!(acked(&events(&mut p)), None, "ns2 has acknowledged nothing");
    p.handle_acked(Z, 1, 1, t);
    assert_eq!(acked(&events(&mut p)), Some(1));
    // ns2 makes no progress: after degrade_after it no longer counts.
    assert_eq!(p.poll_timeout(), Some(t + after));
    p.handle_timeout(t + after - Duration::from_millis(1));
    assert_eq!(events(&mut p), vec![]);
    p.handle_timeout(t + after);
    assert_eq!(
        events(&mut p),
        vec![
            Event::Degraded { zone: Z, lane: 1 },
            Event::Acked { zone: Z, upto: 3 }
        ]
    );
    assert!(p.is_degraded(Z, 1));
    assert_eq!(p.acked(Z, 1), 1, "its own progress is kept");
    // It answers again and catches up: it counts again.
    p.handle_dispatched(Z, 4, lsn(4), t + after);
    p.handle_acked(Z, 1, 3, t + after);
    assert_eq!(events(&mut p), vec![Event::Rejoined { zone: Z, lane: 1 }]);
    p.handle_acked(Z, 0, 4, t + after);
    assert_eq!(events(&mut p), vec![], "ns2 holds the zone again");
    p.handle_acked(Z, 1, 4, t + after);
    assert_eq!(acked(&events(&mut p)), Some(4));
}

#[test]
fn under_hold_a_silent_primary_holds_the_zone_forever() {
    let t = Instant::now();
    let mut p = Primaries::new(vec![(Z, spec(2, Policy::Hold))], Duration::from_secs(5));
    p.handle_dispatched(Z, 1, lsn(1), t);
    p.handle_acked(Z, 0, 1, t);
    assert_eq!(p.poll_timeout(), None);
    p.handle_timeout(t + Duration::from_secs(86_400));
    assert_eq!(events(&mut p), vec![]);
    assert_eq!(p.zone_acked(Z), 0);
}

#[test]
fn a_primary_refusing_what_another_accepted_halts_naming_both() {
    let t = Instant::now();
    let mut p = Primaries::new(vec![(Z, spec(2, Policy::Hold))], Duration::from_secs(5));
    p.handle_dispatched(Z, 1, lsn(7), t);
    p.handle_refused(Z, 1, refusal(7, "www.example.test."), t);
    p.handle_acked(Z, 1, 1, t);
    assert_eq!(events(&mut p), vec![], "ns1 has not answered yet");
    p.handle_acked(Z, 0, 1, t);
    let e = events(&mut p);
    let Some(Event::Divergent(d)) = e.first() else {
        panic!("expected a divergence, got {e:?}");
    };
    assert_eq!(
        (d.accepted_by.as_str(), d.refused_by.as_str(), d.lsn),
        ("ns1", "ns2", lsn(7))
    );
    let text = d.to_string();
    for part in [
        "ns1",
        "ns2",
        "www.example.test",
        "REFUSED",
        &lsn(7).to_string(),
    ] {
        assert!(text.contains(part), "{text:?} names {part}");
    }
    assert!(
        acked(&e).is_none(),
        "nothing past the divergence is acknowledged: {e:?}"
    );
}

#[test]
fn a_refusal_every_primary_makes_is_reported_once_before_the_ack_passing_it() {
    let t = Instant::now();
    let mut p = Primaries::new(vec![(Z, spec(2, Policy::Hold))], Duration::from_secs(5));
    p.handle_dispatched(Z, 1, lsn(1), t);
    p.handle_dispatched(Z, 2, lsn(2), t);
    p.handle_refused(Z, 0, refusal(2, "a.example.test."), t);
    p.handle_acked(Z, 0, 2, t);
    p.handle_refused(Z, 1, refusal(2, "a.example.test."), t);
    p.handle_acked(Z, 1, 2, t);
    let e = events(&mut p);
    assert_eq!(
        e,
        vec![
            Event::Refused {
                zone: Z,
                refusal: refusal(2, "a.example.test.")
            },
            Event::Acked { zone: Z, upto: 2 }
        ]
    );
}

#[test]
fn a_halted_primary_whose_peer_took_the_message_is_a_divergence() {
    let t = Instant::now();
    let mut p = Primaries::new(vec![(Z, spec(2, Policy::Hold))], Duration::from_secs(5));
    p.handle_dispatched(Z, 1, lsn(1), t);
    p.handle_halted(Z, 1, lsn(1), "NOTAUTH".into(), t);
    assert_eq!(events(&mut p), vec![], "waits for ns1's answer");
    p.handle_acked(Z, 0, 1, t);
    let e = events(&mut p);
    assert!(
        matches!(e.first(), Some(Event::Divergent(d)) if d.accepted_by == "ns1" && d.refused_by == "ns2"),
        "{e:?}"
    );
}

#[test]
fn a_halted_primary_alone_halts_after_the_settle_time() {
    let t = Instant::now();
    let settle = Duration::from_secs(5);
    let mut p = Primaries::new(vec![(Z, spec(2, Policy::Hold))], settle);
    p.handle_dispatched(Z, 1, lsn(1), t);
    p.handle_halted(Z, 0, lsn(1), "NOTAUTH".into(), t);
    assert_eq!(p.poll_timeout(), Some(t + settle));
    p.handle_timeout(t + settle);
    assert_eq!(events(&mut p), vec![Event::Halted { zone: Z, lane: 0 }]);
}

/// What a fake primary does next.
#[derive(Clone, Debug)]
enum Step {
    /// A new transaction dispatched to every lane.
    Dispatch,
    /// Lane `n % lanes` acknowledges one more dispatch, if it has any.
    Ack(usize),
    /// Time passes.
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => Just(Step::Dispatch),
        4 => (0usize..3).prop_map(Step::Ack),
        1 => (1u64..40).prop_map(Step::Wait),
    ]
}

proptest! {
    /// Under any interleaving: the zone's acknowledgement only grows,
    /// never passes what a non-degraded lane acknowledged, and under
    /// `hold` never passes any lane.
    #[test]
    fn the_zone_ack_never_passes_a_non_degraded_primary(
        lanes in 1usize..4,
        degrade in proptest::option::of(1u64..30),
        steps in proptest::collection::vec(step(), 0..200),
    ) {
        let policy = degrade.map_or(Policy::Hold, |s| Policy::DegradeAfter(Duration::from_secs(s)));
        let mut p = Primaries::new(vec![(Z, spec(lanes, policy))], Duration::from_secs(5));
        let start = Instant::now();
        let mut now = start;
        let mut dispatched = 0u64;
        let mut lane_acked = vec![0u64; lanes];
        let mut reported = 0u64;
        for s in steps {
            match s {
                Step::Dispatch => {
                    dispatched += 1;
                    p.handle_dispatched(Z, dispatched, lsn(dispatched), now);
                }
                Step::Ack(n) => {
                    let l = n % lanes;
                    if lane_acked[l] < dispatched {
                        lane_acked[l] += 1;
                        p.handle_acked(Z, l, lane_acked[l], now);
                    }
                }
                Step::Wait(s) => {
                    now += Duration::from_secs(s);
                    p.handle_timeout(now);
                    // The driver sleeps until poll_timeout: a time already
                    // past that handle_timeout does not act on would spin.
                    if let Some(next) = p.poll_timeout() {
                        prop_assert!(next > now, "poll_timeout {:?} after handle_timeout", next - start);
                    }
                }
            }
            for e in events(&mut p) {
                if let Event::Acked { upto, .. } = e {
                    prop_assert!(upto > reported, "the zone ack only grows");
                    reported = upto;
                }
            }
            for (l, a) in lane_acked.iter().enumerate() {
                if !p.is_degraded(Z, l) {
                    prop_assert!(reported <= *a, "lane {l} acked {a}, zone {reported}");
                }
            }
            if policy == Policy::Hold {
                prop_assert_eq!(reported, lane_acked.iter().copied().min().unwrap_or(0));
            }
            prop_assert!((0..lanes).any(|l| !p.is_degraded(Z, l)), "one lane always counts");
        }
    }
}

#[test]
fn a_detached_primary_never_holds_the_zone_and_the_last_one_counting_stays() {
    let t = Instant::now();
    let mut p = Primaries::new(
        vec![(Z, spec(2, Policy::DegradeAfter(Duration::from_secs(60))))],
        Duration::from_secs(5),
    );
    p.handle_detached(Z, 1);
    p.handle_detached(Z, 0);
    assert!(p.is_degraded(Z, 1));
    assert!(!p.is_degraded(Z, 0), "one primary always counts");
    p.handle_dispatched(Z, 1, lsn(1), t);
    p.handle_acked(Z, 0, 1, t);
    assert_eq!(acked(&events(&mut p)), Some(1));
    p.handle_acked(Z, 1, 1, t);
    assert_eq!(
        events(&mut p),
        vec![],
        "a detached primary does not rejoin this session"
    );
}

proptest! {
    /// Primaries that refuse the same groups, answering in any
    /// interleaving: never a divergence, each refusal reported once and
    /// before the acknowledgement that passes its dispatch. A group one
    /// primary refuses and another takes is always a divergence.
    #[test]
    fn agreed_refusals_come_once_before_their_ack_and_a_disagreement_always_halts(
        refused in proptest::collection::vec(any::<bool>(), 1..20),
        order in proptest::collection::vec(0usize..2, 0..80),
        disagree in proptest::option::of(0usize..20),
    ) {
        let t = Instant::now();
        let mut p = Primaries::new(vec![(Z, spec(2, Policy::Hold))], Duration::from_secs(5));
        let n = refused.len() as u64;
        for id in 1..=n {
            p.handle_dispatched(Z, id, lsn(id), t);
        }
        // The one group lane 1 takes although lane 0 refuses it.
        let disagree = disagree.filter(|d| refused[*d % refused.len()]).map(|d| d % refused.len());
        let mut next = [1u64, 1u64];
        let mut steps: Vec<usize> = order;
        steps.extend(std::iter::repeat_n(0, refused.len()));
        steps.extend(std::iter::repeat_n(1, refused.len()));
        let mut reported: Vec<u64> = Vec::new();
        let mut acked = 0u64;
        let mut diverged = false;
        for lane in steps {
            let id = next[lane];
            if id > n {
                continue;
            }
            let i = (id - 1) as usize;
            let refuses = refused[i] && !(lane == 1 && disagree == Some(i));
            if refuses {
                p.handle_refused(Z, lane, refusal(id, &format!("g{id}.example.test.")), t);
            }
            p.handle_acked(Z, lane, id, t);
            next[lane] += 1;
            for e in events(&mut p) {
                match e {
                    Event::Refused { refusal: r, .. } => {
                        let rid = r.lsn.raw() / 100;
                        prop_assert!(rid > acked, "refusal of {rid} after the ack {acked} passed it");
                        prop_assert!(!reported.contains(&rid), "refusal of {rid} twice");
                        reported.push(rid);
                    }
                    Event::Acked { upto, .. } => acked = upto,
                    Event::Divergent(d) => {
                        prop_assert_eq!(Some(d.lsn), disagree.map(|d| lsn(d as u64 + 1)));
                        diverged = true;
                    }
                    other => prop_assert!(false, "unexpected {other:?}"),
                }
            }
            if diverged {
                break;
            }
        }
        prop_assert_eq!(diverged, disagree.is_some(), "a disagreement halts, agreement never");
        if !diverged {
            let want: Vec<u64> = (1..=n).filter(|id| refused[(*id - 1) as usize]).collect();
            prop_assert_eq!(reported, want);
            prop_assert_eq!(acked, n);
        }
    }
}

#[test]
fn a_degraded_primary_past_the_queue_bound_is_dropped_and_never_rejoins_this_session() {
    let t = Instant::now();
    let after = Duration::from_secs(60);
    let mut p = Primaries::new(
        vec![(Z, spec(2, Policy::DegradeAfter(after)))],
        Duration::from_secs(5),
    )
    .with_queue_bound(3);
    p.handle_dispatched(Z, 1, lsn(1), t);
    p.handle_acked(Z, 0, 1, t);
    p.handle_timeout(t + after);
    assert!(p.is_degraded(Z, 1));
    let _ = events(&mut p);
    // Three behind: still queued for it.
    for id in 2..=3 {
        p.handle_dispatched(Z, id, lsn(id), t + after);
    }
    assert!(!p.is_detached(Z, 1));
    assert_eq!(events(&mut p), vec![]);
    // Four behind: dropped, once.
    p.handle_dispatched(Z, 4, lsn(4), t + after);
    assert_eq!(events(&mut p), vec![Event::Dropped { zone: Z, lane: 1 }]);
    assert!(p.is_detached(Z, 1) && p.is_degraded(Z, 1));
    p.handle_dispatched(Z, 5, lsn(5), t + after);
    assert_eq!(events(&mut p), vec![]);
    // Late answers of what it still had do not make it count again.
    p.handle_acked(Z, 0, 5, t + after);
    p.handle_acked(Z, 1, 5, t + after);
    assert_eq!(acked(&events(&mut p)), Some(5));
    assert!(p.is_degraded(Z, 1), "it needs a catch-up first");
}

#[test]
fn a_non_degraded_primary_is_never_dropped_however_far_behind() {
    let t = Instant::now();
    let mut p = Primaries::new(vec![(Z, spec(2, Policy::Hold))], Duration::from_secs(5))
        .with_queue_bound(1);
    for id in 1..=10 {
        p.handle_dispatched(Z, id, lsn(id), t);
    }
    p.handle_acked(Z, 0, 10, t);
    assert!(events(&mut p)
        .iter()
        .all(|e| !matches!(e, Event::Dropped { .. })));
    assert!(!p.is_detached(Z, 1));
}

#[test]
fn each_primary_knows_the_transaction_it_acknowledged_last() {
    let t = Instant::now();
    let mut p = Primaries::new(vec![(Z, spec(2, Policy::Hold))], Duration::from_secs(5));
    for id in 1..=3 {
        p.handle_dispatched(Z, id, lsn(id), t);
    }
    assert_eq!(p.acked_lsn(Z, 0), None);
    p.handle_acked(Z, 0, 2, t);
    p.handle_acked(Z, 1, 1, t);
    assert_eq!(p.acked_lsn(Z, 0), Some(lsn(2)));
    assert_eq!(p.acked_lsn(Z, 1), Some(lsn(1)));
    p.handle_acked(Z, 1, 3, t);
    p.handle_acked(Z, 0, 3, t);
    assert_eq!(p.acked_lsn(Z, 0), Some(lsn(3)));
    assert_eq!(p.acked_lsn(Z, 1), Some(lsn(3)));
}

#[test]
fn the_next_timeout_is_the_soonest_over_every_zone_and_only_zones_due_are_settled() {
    const Y: ZoneId = ZoneId(1);
    let t = Instant::now();
    let after = Duration::from_secs(10);
    let mut p = Primaries::new(
        vec![
            (Z, spec(2, Policy::DegradeAfter(after))),
            (Y, spec(2, Policy::DegradeAfter(after))),
        ],
        Duration::from_secs(5),
    );
    assert_eq!(p.poll_timeout(), None, "nothing waits");
    p.handle_dispatched(Z, 1, lsn(1), t);
    p.handle_dispatched(Y, 1, lsn(1), t + Duration::from_secs(3));
    assert_eq!(p.poll_timeout(), None, "no lane lags another yet");
    p.handle_acked(Y, 0, 1, t + Duration::from_secs(3));
    p.handle_acked(Z, 0, 1, t + Duration::from_secs(4));
    assert_eq!(
        p.poll_timeout(),
        Some(t + after),
        "zone Z's ns2 waits since t"
    );
    let _ = events(&mut p);
    p.handle_timeout(t + after);
    assert_eq!(
        events(&mut p),
        vec![
            Event::Degraded { zone: Z, lane: 1 },
            Event::Acked { zone: Z, upto: 1 }
        ]
    );
    assert!(!p.is_degraded(Y, 1));
    assert_eq!(p.poll_timeout(), Some(t + Duration::from_secs(3) + after));
    p.handle_timeout(t + Duration::from_secs(3) + after);
    assert!(p.is_degraded(Y, 1));
    assert_eq!(p.poll_timeout(), None);
}

#[test]
fn a_dropped_primary_that_answers_again_asks_for_its_catch_up_once_and_a_counting_one_does_not() {
    let t = Instant::now();
    let after = Duration::from_secs(60);
    let mut p = Primaries::new(
        vec![(Z, spec(3, Policy::DegradeAfter(after)))],
        Duration::from_secs(5),
    )
    .with_queue_bound(1);
    p.handle_dispatched(Z, 1, lsn(1), t);
    p.handle_acked(Z, 0, 1, t);
    p.handle_acked(Z, 2, 1, t);
    // A primary that receives dispatches answering is no news.
    p.handle_answering(Z, 0);
    assert!(events(&mut p)
        .iter()
        .all(|e| !matches!(e, Event::CatchUp { .. })));
    p.handle_timeout(t + after);
    assert!(p.is_degraded(Z, 1));
    // Degraded but still queued for: it catches up by itself.
    p.handle_answering(Z, 1);
    assert!(events(&mut p)
        .iter()
        .all(|e| !matches!(e, Event::CatchUp { .. })));
    for id in 2..=3 {
        p.handle_dispatched(Z, id, lsn(id), t + after);
    }
    assert!(events(&mut p).contains(&Event::Dropped { zone: Z, lane: 1 }));
    // Dropped: answering again asks for the catch-up, once.
    p.handle_answering(Z, 1);
    p.handle_answering(Z, 1);
    assert_eq!(events(&mut p), vec![Event::CatchUp { zone: Z, lane: 1 }]);
    // It still does not count until the next session brought it in line.
    p.handle_acked(Z, 0, 3, t + after);
    p.handle_acked(Z, 2, 3, t + after);
    assert_eq!(acked(&events(&mut p)), Some(3));
    assert!(p.is_degraded(Z, 1));
}

#[test]
fn a_primary_left_out_at_the_start_asks_for_its_catch_up_when_it_answers() {
    let mut p = Primaries::new(vec![(Z, spec(2, Policy::Hold))], Duration::from_secs(5));
    p.handle_detached(Z, 1);
    p.handle_answering(Z, 1);
    assert_eq!(events(&mut p), vec![Event::CatchUp { zone: Z, lane: 1 }]);
    // A zone of one primary has nothing to catch up.
    let mut one = Primaries::new(vec![(Z, spec(1, Policy::Hold))], Duration::from_secs(5));
    one.handle_answering(Z, 0);
    assert_eq!(events(&mut one), vec![]);
}
