//! The core's verdict on the shared table of `pg2dns.rr` cases
//! (`cases/record_cases.rs`). The integration test `plugin` runs the same
//! table through the `pg2dns_plugin` PostgreSQL extension, so a change of
//! verdict or reason here is a change the database sees too.

use pg2dns_decoder::mapping::row_check::{rr_row, RrColumns};

include!("cases/record_cases.rs");

/// The core's verdict on one case, as the table writes it.
fn core_verdict(case: &RecordCase) -> Result<String, String> {
    let ttl = case.ttl.to_string();
    rr_row(RrColumns {
        owner: case.owner.as_deref(),
        ttl: Some(&ttl),
        class: Some("IN"),
        rtype: Some(case.rtype),
        rdata: case.rdata.as_deref(),
    })
    .map(|record| record.to_string())
    .map_err(|refusal| pg2dns_decoder::error_chain(&refusal))
}

#[test]
fn every_case_of_the_shared_table_gets_the_cores_verdict() {
    let cases = record_cases();
    let mut wrong = Vec::new();
    for case in &cases {
        let got = core_verdict(case);
        if got != case.verdict {
            wrong.push(format!("{case:?}\n    core says {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_shared_table_covers_every_supported_type_with_a_good_and_a_bad_value() {
    let cases = record_cases();
    for rtype in pg2dns_decoder::RType::SUPPORTED {
        let name = rtype.to_string();
        let of_type = |ok: bool| {
            cases
                .iter()
                .any(|c| c.rtype.eq_ignore_ascii_case(&name) && c.verdict.is_ok() == ok)
        };
        assert!(of_type(true), "no good {name} value in the table");
        assert!(of_type(false), "no bad {name} value in the table");
    }
}
