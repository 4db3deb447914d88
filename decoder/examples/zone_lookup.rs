//! How long finding an owner's zone takes, per lookup, as the number of
//! configured zones grows (issue #24: the lookup runs once per source row).
//!
//! ```text
//! cargo run --release -p pg2dns-decoder --example zone_lookup -- 1000 50000
//! ```
//!
//! For each zone count N given (default 1,000 and 50,000) it configures N
//! forward zones `zN.hosting.test.` plus one parent zone `hosting.test.` (so
//! the nested-zone rule is exercised), then looks up owners spread evenly over
//! the zones (`www.a.zI.hosting.test.`, 5 labels), and owners in no zone, and
//! prints nanoseconds per lookup. bench/zones runs it.

use std::hint::black_box;
use std::time::Instant;

use pg2dns_decoder::{Owner, ZoneName, Zones};

fn main() {
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("zone counts are positive integers"))
        .collect();
    let counts = if counts.is_empty() {
        vec![1_000, 50_000]
    } else {
        counts
    };
    println!("zones\tlookups\tns/lookup (in a zone)\tns/lookup (no zone)\tbuild ms");
    for n in counts {
        let names: Vec<ZoneName> = std::iter::once("hosting.test.".to_owned())
            .chain((0..n).map(|i| format!("z{i}.hosting.test.")))
            .map(|z| ZoneName::parse(&z).expect("valid zone"))
            .collect();
        let built = Instant::now();
        let zones = build(names);
        let build_ms = built.elapsed().as_secs_f64() * 1e3;
        // A fixed sample of owners, so large N does not mean long runs:
        // every lookup still faces all N zones.
        let sample = 2_000usize;
        let owners: Vec<Owner> = (0..sample)
            .map(|k| {
                let i = k * n.max(1) / sample;
                Owner::parse(&format!("www.a.z{i}.hosting.test.")).expect("valid owner")
            })
            .collect();
        let strays: Vec<Owner> = (0..sample)
            .map(|k| Owner::parse(&format!("www.a.z{k}.elsewhere.test.")).expect("valid owner"))
            .collect();
        // Enough rounds for about 2e5 lookups, at least one round.
        let rounds = (200_000 / sample).max(1);
        let in_zone = time(&zones, &owners, rounds, true);
        let no_zone = time(&zones, &strays, rounds, false);
        println!(
            "{n}\t{}\t{in_zone:.0}\t{no_zone:.0}\t{build_ms:.1}",
            rounds * sample
        );
    }
}

fn build(names: Vec<ZoneName>) -> Zones {
    Zones::new(names).expect("within the zone limit")
}

/// Nanoseconds per lookup, checking each answer.
fn time(zones: &Zones, owners: &[Owner], rounds: usize, expect_zone: bool) -> f64 {
    let start = Instant::now();
    for _ in 0..rounds {
        for o in owners {
            let z = black_box(zones).zone_for(black_box(o));
            assert_eq!(z.is_some(), expect_zone, "{o}");
        }
    }
    start.elapsed().as_nanos() as f64 / (rounds * owners.len()) as f64
}
