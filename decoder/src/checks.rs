//! Rules a DNS server applies to record content that pg2dns can apply
//! before sending, so that the server never refuses a whole UPDATE for one
//! record.
//!
//! BIND's `check-names` (default `fail` on a primary, ARM: "check-names …
//! restricts the character set and syntax of certain domain names in master
//! files and/or DNS responses received from the network") checks host names:
//! the owner of A, AAAA and MX records, and the names NS, MX and SRV records
//! point at, and the target of a PTR in a reverse zone. A host name is made
//! of labels of letters, digits and hyphens that begin and end with a letter
//! or digit (RFC 952, as relaxed by RFC 1123 §2.1); the owner of an address
//! or MX record may start with a wildcard label. Knot makes no such check,
//! so the rule is configurable per zone.

use crate::name::Name;
use crate::rdata::{self, RType};
use crate::records::Record;

/// What to do with a record whose names break the host-name rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CheckNames {
    /// Refuse the row (BIND's default on a primary).
    #[default]
    Fail,
    /// Publish it and warn.
    Warn,
    /// Publish it.
    Ignore,
}

/// Which name of a record broke the rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadHostName {
    /// The name.
    pub name: Name,
    /// `owner` or the field it is in (`target`, `exchange`).
    pub role: &'static str,
}

/// Whether `name` is a host name: LDH labels beginning and ending with a
/// letter or digit; with `wildcard`, the first label may be `*`.
pub fn is_host_name(name: &Name, wildcard: bool) -> bool {
    name.labels().enumerate().all(|(i, label)| {
        if wildcard && i == 0 && label == b"*" {
            return true;
        }
        let border = |c: &u8| c.is_ascii_alphanumeric();
        match (label.first(), label.last()) {
            (Some(first), Some(last)) => {
                border(first)
                    && border(last)
                    && label
                        .iter()
                        .all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            }
            _ => false,
        }
    })
}

/// The first name of `record` that BIND's `check-names` refuses, if any.
pub fn check_host_names(record: &Record) -> Option<BadHostName> {
    let owner = record.owner.name();
    let rtype = record.rtype;
    if matches!(rtype, RType::A | RType::AAAA | RType::MX) {
        // BIND lets Active Directory's gc._msdcs.<forest> own addresses.
        let checked = if rtype == RType::A && owner.label_count() > 2 && {
            let mut labels = owner.labels();
            labels.next() == Some(b"gc".as_slice()) && labels.next() == Some(b"_msdcs".as_slice())
        } {
            None
        } else {
            Some(owner)
        };
        if let Some(name) = checked {
            if !is_host_name(name, true) {
                return Some(BadHostName {
                    name: name.clone(),
                    role: "owner",
                });
            }
        }
    }
    let role = match rtype {
        RType::NS | RType::SRV => "target",
        RType::MX => "exchange",
        RType::PTR if is_reverse(owner) => "target",
        _ => return None,
    };
    let target = rdata::target(rtype, record.rdata.as_wire())?;
    (!is_host_name(&target, false)).then_some(BadHostName { name: target, role })
}

fn is_reverse(name: &Name) -> bool {
    let labels: Vec<&[u8]> = name.labels().collect();
    matches!(
        labels.as_slice(),
        [.., b"in-addr", b"arpa"] | [.., b"ip6", b"arpa"]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(owner: &str, rtype: &str, data: &str) -> Option<String> {
        check_host_names(&Record::parse(owner, 300, rtype, data).unwrap())
            .map(|b| format!("{} {}", b.role, b.name))
    }

    #[test]
    fn host_names_are_letters_digits_and_inner_hyphens() {
        for ok in ["a.example.", "a-1.b2.example.", "3com.example.", "x."] {
            assert!(is_host_name(&Name::parse_fqdn(ok).unwrap(), false), "{ok}");
        }
        for no in [
            "bad_name.example.",
            "-a.example.",
            "a-.example.",
            "*.example.",
        ] {
            assert!(!is_host_name(&Name::parse_fqdn(no).unwrap(), false), "{no}");
        }
        assert!(is_host_name(&Name::parse_fqdn("*.example.").unwrap(), true));
    }

    #[test]
    fn bind_checks_address_and_mx_owners_and_ns_mx_srv_and_reverse_ptr_targets() {
        assert_eq!(
            bad("bad_name.example.test.", "A", "192.0.2.1"),
            Some("owner bad_name.example.test.".into())
        );
        assert_eq!(bad("*.example.test.", "AAAA", "2001:db8::1"), None);
        assert_eq!(bad("gc._msdcs.corp.example.test.", "A", "192.0.2.1"), None);
        assert_eq!(
            bad("example.test.", "MX", "10 mail_1.example.test."),
            Some("exchange mail_1.example.test.".into())
        );
        assert_eq!(
            bad(
                "_sip._udp.example.test.",
                "SRV",
                "0 5 5060 sip.example.test."
            ),
            None
        );
        assert_eq!(
            bad(
                "_sip._udp.example.test.",
                "SRV",
                "0 5 5060 s_p.example.test."
            ),
            Some("target s_p.example.test.".into())
        );
        assert_eq!(
            bad(
                "1.2.0.192.in-addr.arpa.",
                "PTR",
                "under_score.example.test."
            ),
            Some("target under_score.example.test.".into())
        );
        assert_eq!(
            bad("x.example.test.", "PTR", "under_score.example.test."),
            None
        );
        assert_eq!(bad("_dmarc.example.test.", "TXT", "\"v=DMARC1\""), None);
        assert_eq!(bad("_a.example.test.", "CNAME", "b.example.test."), None);
    }
}
