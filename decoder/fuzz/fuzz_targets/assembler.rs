//! A stream of pgoutput messages, each framed as a big-endian u16 length and
//! that many bytes, fed through `parse` into one `Assembler`. Neither may
//! panic, and every row handed out must match its relation's column count.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pg2dns_decoder::pgoutput;
use pg2dns_decoder::txn::{Assembler, Event};

fuzz_target!(|data: &[u8]| {
    let mut asm = Assembler::new();
    let mut rest = data;
    while let [hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (msg, tail) = tail.split_at(len);
        rest = tail;
        let Ok(msg) = pgoutput::parse(msg) else {
            continue;
        };
        if let Ok(Some(Event::Change(change))) = asm.push(msg) {
            for row in change.old.iter().chain(change.new.iter()) {
                assert_eq!(row.values().len(), row.relation().columns.len());
            }
        }
    }
});
