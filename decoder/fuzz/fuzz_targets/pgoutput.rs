//! One pgoutput message: `parse` must return, never panic, and both entry
//! points must agree.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pg2dns_decoder::pgoutput;

fuzz_target!(|data: &[u8]| {
    let copied = pgoutput::parse(data);
    let shared = pgoutput::parse_bytes(&Bytes::copy_from_slice(data));
    assert_eq!(copied, shared);
});
