//! Arbitrary bytes as DNS answers to a zone's send session: whatever the
//! server (or something on the path) sends, the session may halt or retry,
//! never panic.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pg2dns_decoder::session::{Dispatch, Session, SessionConfig};
use pg2dns_decoder::tsig::{Algorithm, TsigKey};
use pg2dns_decoder::update::{group_by_owner, Budget, UpdateOp};
use pg2dns_decoder::{Lsn, Record, ZoneName};

fuzz_target!(|data: &[u8]| {
    let key = TsigKey::new("k", Algorithm::HmacSha256, vec![7; 32]).expect("a valid key");
    let config = SessionConfig {
        zone: ZoneName::parse("example.test.").expect("a zone"),
        budget: Budget {
            max_message_bytes: 65_535,
            tsig_record_len: key.record_len(),
        },
        key,
        window: 4,
        timeout: Duration::from_secs(1),
        server: "fuzz".into(),
    };
    let mut session = Session::new(config);
    let now = Instant::now();
    session.on_connected(now);
    for id in 1..=3u64 {
        let record = Record::parse(&format!("h{id}.example.test."), 300, "A", "192.0.2.1")
            .expect("a record");
        session.push(Dispatch {
            id,
            lsn: Lsn::new(id),
            groups: group_by_owner(vec![UpdateOp::Add(record)]),
        });
    }
    let mut next_id = 0u16;
    while session.poll_transmit(now, 1_800_000_000, next_id).is_some() {
        next_id = next_id.wrapping_add(1);
    }
    let mut rest = data;
    while let [hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (frame, tail) = tail.split_at(len);
        rest = tail;
        // Answers to whichever IDs are in flight: the first two bytes are
        // the fuzzer's.
        session.handle_response(frame, now, 1_800_000_000);
        while session.poll_event().is_some() {}
        while session.poll_transmit(now, 1_800_000_000, next_id).is_some() {
            next_id = next_id.wrapping_add(1);
        }
    }
});
