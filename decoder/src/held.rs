//! What a zone holds that pg2dns does not own, so that the plan can refuse
//! what the server would ignore beside it.
//!
//! RFC 2136 §3.4.2.2: "In the case of a CNAME Update RR and a non-CNAME
//! Zone RRset or vice versa, ignore the CNAME Update RR". The server
//! answers NOERROR and changes nothing, so the plan must know every RRset a
//! name holds, not only those rows give. Besides the rows, a zone holds:
//!
//! - the apex SOA and NS, always (the server keeps them; pg2dns never owns
//!   the SOA): certain without asking, see [`crate::plan::Refusal::CnameAtApex`];
//! - names and types the configuration leaves to other tools
//!   (`exclude_names`, `exclude_types`): only the zone knows them, so the
//!   streamer learns them by a zone transfer at the start of each session;
//! - DNSSEC records (RRSIG, NSEC…), which may sit beside a CNAME (RFC 4035
//!   §2.5) and are therefore not held here.

use std::collections::BTreeSet;

use crate::exclude::Exclusions;
use crate::rdata::RType;
use crate::records::{Owner, Record, ZoneId};
use crate::HashMap;

/// The RRsets (by type) each owner of each zone holds outside pg2dns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    nodes: HashMap<(ZoneId, Owner), BTreeSet<RType>>,
}

impl Held {
    /// Notes that `owner` in `zone` holds an RRset of `rtype` that pg2dns
    /// does not own (DNSSEC types are ignored).
    pub fn insert(&mut self, zone: ZoneId, owner: Owner, rtype: RType) {
        if !rtype.is_dnssec() {
            self.nodes.entry((zone, owner)).or_default().insert(rtype);
        }
    }

    /// The records of a zone transfer that `exclusions` leave to others.
    pub fn learn(&mut self, zone: ZoneId, exclusions: &Exclusions, records: &[Record]) {
        for r in records {
            if r.rtype != RType::SOA && exclusions.excludes(r) {
                self.insert(zone, r.owner.clone(), r.rtype);
            }
        }
    }

    /// Forgets what was learnt of `zone`.
    pub fn clear_zone(&mut self, zone: ZoneId) {
        self.nodes.retain(|(z, _), _| *z != zone);
    }

    /// The types `owner` in `zone` holds outside pg2dns (none: `None`).
    pub fn at(&self, zone: ZoneId, owner: &Owner) -> Option<&BTreeSet<RType>> {
        self.nodes
            .get(&(zone, owner.clone()))
            .filter(|s| !s.is_empty())
    }

    /// The names strictly below `owner` in `zone` that hold something
    /// outside pg2dns (a scan: only the excluded names are held).
    pub fn below<'a>(&'a self, zone: ZoneId, owner: &'a Owner) -> impl Iterator<Item = &'a Owner> {
        self.nodes
            .iter()
            .filter(move |((z, o), types)| {
                *z == zone
                    && o != owner
                    && o.name().is_at_or_below(owner.name())
                    && !types.is_empty()
            })
            .map(|((_, o), _)| o)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::ZoneName;

    #[test]
    fn a_transfer_teaches_the_excluded_rrsets_but_not_dnssec_or_the_soa() {
        let zone = ZoneName::parse("example.test.").unwrap();
        let ex = Exclusions::parse(&zone, &["_acme-challenge.*".into()], &["TXT".into()]).unwrap();
        let records = [
            Record::parse("_acme-challenge.www.example.test.", 60, "TXT", "\"x\"").unwrap(),
            Record::parse("www.example.test.", 60, "A", "192.0.2.1").unwrap(),
        ];
        let mut held = Held::default();
        held.learn(ZoneId(0), &ex, &records);
        let owner = records[0].owner.clone();
        assert_eq!(
            held.at(ZoneId(0), &owner)
                .map(|s| s.iter().copied().collect::<Vec<_>>()),
            Some(vec![RType::TXT])
        );
        assert!(held.at(ZoneId(0), &records[1].owner).is_none());
        held.insert(ZoneId(0), records[1].owner.clone(), RType::RRSIG);
        assert!(held.at(ZoneId(0), &records[1].owner).is_none());
        held.clear_zone(ZoneId(0));
        assert!(held.is_empty());
    }
}
