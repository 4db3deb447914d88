//! Resource records in one canonical form, so that what the database holds and
//! what BIND answers can be compared as sets.
//!
//! Two sides, two spellings of the same data:
//! - `pg2dns.rr` rows are typed by people: names with or without the final dot,
//!   any case, `2001:db8:0:0::1`, TXT as zone-file character-strings;
//! - `dig` prints presentation format: owner names as stored (case kept), AAAA
//!   compressed (RFC 5952), TXT as quoted strings with `\"`, `\\` and `\DDD`
//!   escapes.
//!
//! Both are mapped to one canonical form: names lower-case and fully
//! qualified, addresses re-printed by the standard library, TXT re-quoted with
//! one escaping rule. Types the tests do not use are compared with their
//! whitespace collapsed and nothing else changed.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Context, Result};

/// One resource record (class IN) in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Record {
    /// Owner name: lower-case, ends with a dot.
    pub owner: String,
    /// Time to live in seconds.
    pub ttl: u32,
    /// Type mnemonic, upper-case (`A`, `PTR`…).
    pub rtype: String,
    /// Record data in canonical presentation form (see the module docs).
    pub rdata: String,
}

impl Record {
    /// Builds a record from loosely written parts, normalising each of them.
    pub fn new(owner: &str, ttl: u32, rtype: &str, rdata: &str) -> Record {
        let rtype = rtype.trim().to_ascii_uppercase();
        let rdata = canonical_rdata(&rtype, rdata);
        Record {
            owner: canonical_name(owner),
            ttl,
            rtype,
            rdata,
        }
    }

    /// Whether this record is the zone's own apex SOA or NS, which pg2dns does
    /// not manage and comparisons ignore.
    pub fn is_apex_soa_or_ns(&self, zone: &str) -> bool {
        self.owner == canonical_name(zone) && (self.rtype == "SOA" || self.rtype == "NS")
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} IN {} {}",
            self.owner, self.ttl, self.rtype, self.rdata
        )
    }
}

/// A domain name lower-cased and fully qualified (`WWW.Example.test` →
/// `www.example.test.`).
pub fn canonical_name(name: &str) -> String {
    let name = name.trim().to_ascii_lowercase();
    if name.ends_with('.') {
        name
    } else {
        format!("{name}.")
    }
}

/// Whether `owner` is `zone` itself or a name below it (both canonical).
pub fn is_in_zone(owner: &str, zone: &str) -> bool {
    owner == zone || owner.ends_with(&format!(".{zone}")) || zone == "."
}

/// The zone, among `zones`, with the longest suffix matching `owner`.
pub fn zone_of<'z>(owner: &str, zones: &'z [String]) -> Option<&'z str> {
    zones
        .iter()
        .filter(|zone| is_in_zone(owner, zone))
        .max_by_key(|zone| zone.len())
        .map(String::as_str)
}

/// Record data in canonical form for its type. Data that does not parse for
/// its type is kept (whitespace collapsed), so it can never equal a record
/// BIND would print.
pub fn canonical_rdata(rtype: &str, rdata: &str) -> String {
    let rdata = rdata.trim();
    let collapsed = || rdata.split_whitespace().collect::<Vec<_>>().join(" ");
    match rtype {
        "A" => rdata
            .parse::<Ipv4Addr>()
            .map(|ip| ip.to_string())
            .unwrap_or_else(|_| collapsed()),
        "AAAA" => rdata
            .parse::<Ipv6Addr>()
            .map(|ip| ip.to_string())
            .unwrap_or_else(|_| collapsed()),
        "CNAME" | "PTR" | "NS" | "DNAME" => canonical_name(rdata),
        "MX" => match rdata.split_whitespace().collect::<Vec<_>>().as_slice() {
            [preference, exchange] => format!("{preference} {}", canonical_name(exchange)),
            _ => collapsed(),
        },
        "TXT" | "SPF" => canonical_txt(rdata).unwrap_or_else(|_| collapsed()),
        _ => collapsed(),
    }
}

/// TXT data as a sequence of character-strings, each quoted, with `"` and `\`
/// escaped by a backslash and bytes outside printable ASCII as `\DDD` — the
/// form `dig` prints.
pub fn canonical_txt(rdata: &str) -> Result<String> {
    let strings = parse_character_strings(rdata)?;
    Ok(strings
        .iter()
        .map(|s| quote_character_string(s))
        .collect::<Vec<_>>()
        .join(" "))
}

fn quote_character_string(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for &b in bytes {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
    out.push('"');
    out
}

/// Splits zone-file character-strings: `"a b" c "d\"e"` → `[a b, c, d"e]`.
fn parse_character_strings(text: &str) -> Result<Vec<Vec<u8>>> {
    let bytes = text.as_bytes();
    let mut strings = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let quoted = bytes[i] == b'"';
        if quoted {
            i += 1;
        }
        let mut current = Vec::new();
        loop {
            let Some(&b) = bytes.get(i) else {
                if quoted {
                    bail!("unterminated quoted string in {text:?}");
                }
                break;
            };
            if quoted && b == b'"' {
                i += 1;
                break;
            }
            if !quoted && b.is_ascii_whitespace() {
                break;
            }
            if b == b'\\' {
                let digits = bytes.get(i + 1..i + 4);
                match digits {
                    Some(d) if d.iter().all(u8::is_ascii_digit) => {
                        let value: u16 = std::str::from_utf8(d)?.parse()?;
                        current.push(u8::try_from(value).context("\\DDD escape above 255")?);
                        i += 4;
                    }
                    _ => {
                        let escaped = bytes.get(i + 1).context("backslash at end of TXT")?;
                        current.push(*escaped);
                        i += 2;
                    }
                }
                continue;
            }
            current.push(b);
            i += 1;
        }
        strings.push(current);
    }
    Ok(strings)
}

/// Parses `dig +noall +answer` output (an AXFR or a query) into records.
/// Fails when dig reports a failed transfer or prints a line it cannot read.
pub fn parse_dig_answer(output: &str) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with(';') {
            if line.contains("failed") || line.contains("error") || line.contains("timed out") {
                bail!("dig reported: {line}");
            }
            continue;
        }
        let (owner, rest) = split_field(line)?;
        let (ttl, rest) = split_field(rest)?;
        let (class, rest) = split_field(rest)?;
        let (rtype, rdata) = split_field(rest)?;
        if class != "IN" {
            bail!("unexpected class {class} in dig line {line:?}");
        }
        let ttl: u32 = ttl
            .parse()
            .with_context(|| format!("bad TTL in dig line {line:?}"))?;
        records.push(Record::new(owner, ttl, rtype, rdata));
    }
    Ok(records)
}

fn split_field(text: &str) -> Result<(&str, &str)> {
    let text = text.trim_start();
    let end = text
        .find(char::is_whitespace)
        .with_context(|| format!("too few fields in {text:?}"))?;
    Ok((&text[..end], text[end..].trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_compared_lower_case_and_fully_qualified() {
        assert_eq!(
            Record::new("WWW.Example.test", 60, "cname", "Host.EXAMPLE.test"),
            Record::new("www.example.test.", 60, "CNAME", "host.example.test."),
        );
    }

    #[test]
    fn aaaa_is_compared_in_compressed_form() {
        assert_eq!(
            canonical_rdata("AAAA", "2001:0db8:0:0:0:0:0:0001"),
            "2001:db8::1"
        );
    }

    #[test]
    fn txt_from_the_table_matches_txt_as_dig_prints_it() {
        let dig = parse_dig_answer("t.example.test.\t300\tIN\tTXT\t\"hello world\" \"x\\\"y\"\n")
            .unwrap();
        assert_eq!(
            dig,
            vec![Record::new(
                "t.example.test",
                300,
                "TXT",
                r#""hello world"   "x\"y""#
            )]
        );
        assert_eq!(canonical_txt("plain").unwrap(), "\"plain\"");
        assert_eq!(canonical_txt(r#""\233""#).unwrap(), r#""\233""#);
    }

    #[test]
    fn unparsable_data_never_equals_a_real_record() {
        assert_ne!(
            Record::new("a.example.test", 60, "A", "not-an-ip"),
            Record::new("a.example.test", 60, "A", "0.0.0.0"),
        );
    }

    #[test]
    fn a_failed_transfer_is_an_error() {
        assert!(parse_dig_answer("; Transfer failed.\n").is_err());
    }

    #[test]
    fn the_longest_matching_zone_wins() {
        let zones = vec!["example.test.".to_string(), "sub.example.test.".to_string()];
        assert_eq!(
            zone_of("a.sub.example.test.", &zones),
            Some("sub.example.test.")
        );
        assert_eq!(zone_of("a.example.test.", &zones), Some("example.test."));
        assert_eq!(zone_of("example.test.", &zones), Some("example.test."));
        assert_eq!(zone_of("badexample.test.", &zones), None);
    }
}
