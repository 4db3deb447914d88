//! Arbitrary bytes as the answer to a signed request, and as the messages of
//! a signed zone transfer: verification may fail, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pg2dns_decoder::tsig::{self, Algorithm, StreamVerifier, TsigKey};

fuzz_target!(|data: &[u8]| {
    let key = TsigKey::new("k", Algorithm::HmacSha256, vec![7; 32]).expect("a valid key");
    // A minimal UPDATE header, signed.
    let request = tsig::sign(&[0x12, 0x34, 0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0], &key, 1_800_000_000, 300)
        .expect("signing a header");
    let _ = tsig::verify_response(data, &key, &request, 1_800_000_000);
    let mut stream = StreamVerifier::new(&request, &key);
    for chunk in data.chunks(64) {
        let _ = stream.verify(chunk, 1_800_000_000);
    }
    let _ = stream.finish();
});
