//! Presentation-format text (names and record data of every published type)
//! through pg2dns's own parser, and wire data through its formatter. Neither
//! may panic; what the parser accepts must print and parse back to the same
//! bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pg2dns_decoder::rdata::{self, RType};
use pg2dns_decoder::Name;

const TYPES: [RType; 28] = RType::SUPPORTED;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let rtype = TYPES[usize::from(selector) % TYPES.len()];
    if let Ok(text) = std::str::from_utf8(rest) {
        let _ = Name::parse_fqdn(text);
        if let Ok(wire) = rdata::parse(rtype, text) {
            let printed = rdata::format(rtype, &wire).expect("parsed data prints");
            assert_eq!(rdata::parse(rtype, &printed).as_ref(), Ok(&wire));
        }
    }
    let _ = rdata::format(rtype, rest);
    let _ = Name::from_wire(rest);
});
