//! Names and types a zone's configuration leaves to others (`exclude_names`,
//! `exclude_types`): pg2dns never publishes, reports nor touches them.
//!
//! Why both directions: a zone often holds records another tool manages at
//! names pg2dns could also write (an ACME client's `_acme-challenge` TXT, a
//! DHCP server's dynamic names). Reconcile must not report or delete them,
//! and the stream must then not publish a row there either, or the two
//! would disagree: the stream refuses such a row with a recorded reason
//! (see [`crate::plan::Refusal::Excluded`]) and reconcile ignores the name
//! on both sides ([`crate::diff::diff_excluding`]).
//!
//! # Name patterns
//!
//! ```text
//!  dyn.example.com.     exactly that name (a name without a final dot is relative to the zone)
//!  *.dyn                every name below dyn.<zone>, at any depth (not dyn.<zone> itself)
//!  _acme-challenge.*    every name whose leftmost label is _acme-challenge, anywhere in the zone
//! ```
//!
//! `*` stands for one or more whole labels and may only be the first or the
//! last label of a pattern. Comparisons ignore case (RFC 4343 §3).

use crate::name::Name;
use crate::rdata::RType;
use crate::records::{Record, ZoneName};

/// A pattern of `exclude_names`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum NamePattern {
    /// That name.
    Exact(Name),
    /// Names strictly below it.
    Below(Name),
    /// Names starting with these labels (lower-cased), with at least one
    /// more label.
    Prefix(Vec<Vec<u8>>),
}

/// Why a pattern or a type of the configuration is not usable.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ExcludeError {
    /// A name pattern is malformed.
    #[error("exclude_names entry {pattern:?}: {why}")]
    Name {
        /// The pattern as written.
        pattern: String,
        /// What is wrong.
        why: String,
    },
    /// A type is unknown.
    #[error("exclude_types entry {0:?} is not a record type")]
    Type(String),
}

/// The exclusions of one zone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exclusions {
    names: Vec<(String, NamePattern)>,
    types: Vec<RType>,
}

impl Exclusions {
    /// Parses a zone's `exclude_names` and `exclude_types`.
    pub fn parse(
        zone: &ZoneName,
        names: &[String],
        types: &[String],
    ) -> Result<Self, ExcludeError> {
        let mut out = Exclusions::default();
        for text in names {
            out.names.push((text.clone(), parse_pattern(zone, text)?));
        }
        for text in types {
            let rtype = RType::parse(text).map_err(|_| ExcludeError::Type(text.clone()))?;
            out.types.push(rtype);
        }
        Ok(out)
    }

    /// Whether nothing is excluded.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.types.is_empty()
    }

    /// The rule (as configured) that excludes `record`, if any.
    pub fn rule_for(&self, record: &Record) -> Option<String> {
        if self.types.contains(&record.rtype) {
            return Some(format!("exclude_types {}", record.rtype));
        }
        let name = record.owner.name();
        self.names
            .iter()
            .find(|(_, p)| matches(p, name))
            .map(|(text, _)| format!("exclude_names {text:?}"))
    }

    /// Whether `record` is excluded.
    pub fn excludes(&self, record: &Record) -> bool {
        self.rule_for(record).is_some()
    }
}

fn matches(pattern: &NamePattern, name: &Name) -> bool {
    match pattern {
        NamePattern::Exact(p) => lower(name) == lower(p),
        NamePattern::Below(p) => name.label_count() > p.label_count() && below(name, p),
        NamePattern::Prefix(labels) => {
            let mine: Vec<&[u8]> = name.labels().collect();
            mine.len() > labels.len()
                && mine
                    .iter()
                    .zip(labels)
                    .all(|(a, b)| a.eq_ignore_ascii_case(b))
        }
    }
}

fn lower(name: &Name) -> Vec<u8> {
    name.as_wire().to_ascii_lowercase()
}

fn below(name: &Name, suffix: &Name) -> bool {
    let mine: Vec<&[u8]> = name.labels().collect();
    let theirs: Vec<&[u8]> = suffix.labels().collect();
    theirs.len() <= mine.len()
        && mine[mine.len() - theirs.len()..]
            .iter()
            .zip(&theirs)
            .all(|(a, b)| a.eq_ignore_ascii_case(b))
}

fn parse_pattern(zone: &ZoneName, text: &str) -> Result<NamePattern, ExcludeError> {
    let bad = |why: &str| ExcludeError::Name {
        pattern: text.to_owned(),
        why: why.to_owned(),
    };
    let absolute = |t: &str| -> Result<Name, ExcludeError> {
        let full = if t.ends_with('.') {
            t.to_owned()
        } else {
            format!("{t}.{}", zone.name())
        };
        let name = Name::parse_fqdn(&full).map_err(|e| bad(&e.to_string()))?;
        if !below(&name, zone.name()) {
            return Err(bad(&format!("{name} is not in zone {}", zone.name())));
        }
        Ok(name)
    };
    if let Some(rest) = text.strip_prefix("*.") {
        if rest.contains('*') {
            return Err(bad("* may only be the first or the last label"));
        }
        return Ok(NamePattern::Below(absolute(rest)?));
    }
    if let Some(rest) = text.strip_suffix(".*") {
        if rest.contains('*') || rest.is_empty() {
            return Err(bad("* may only be the first or the last label"));
        }
        let name = Name::parse_fqdn(&format!("{rest}.")).map_err(|e| bad(&e.to_string()))?;
        return Ok(NamePattern::Prefix(
            name.labels().map(<[u8]>::to_ascii_lowercase).collect(),
        ));
    }
    if text.contains('*') {
        return Err(bad("* may only be the first or the last label"));
    }
    Ok(NamePattern::Exact(absolute(text)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> ZoneName {
        ZoneName::parse("example.test.").unwrap()
    }

    fn rec(owner: &str, rtype: &str) -> Record {
        let rdata = match rtype {
            "TXT" => "\"x\"",
            _ => "192.0.2.1",
        };
        Record::parse(owner, 300, rtype, rdata).unwrap()
    }

    fn ex(names: &[&str], types: &[&str]) -> Exclusions {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Exclusions::parse(&zone(), &s(names), &s(types)).unwrap()
    }

    #[test]
    fn an_exact_name_relative_or_absolute_matches_only_itself_without_case() {
        let e = ex(&["dyn", "Other.Example.Test."], &[]);
        assert!(e.excludes(&rec("dyn.example.test.", "A")));
        assert!(e.excludes(&rec("DYN.example.test.", "A")));
        assert!(e.excludes(&rec("other.example.test.", "A")));
        assert!(!e.excludes(&rec("a.dyn.example.test.", "A")));
        assert!(!e.excludes(&rec("example.test.", "A")));
    }

    #[test]
    fn a_leading_star_matches_every_name_below_but_not_the_name_itself() {
        let e = ex(&["*.dyn"], &[]);
        assert!(e.excludes(&rec("a.dyn.example.test.", "A")));
        assert!(e.excludes(&rec("b.a.dyn.example.test.", "A")));
        assert!(!e.excludes(&rec("dyn.example.test.", "A")));
        assert!(!e.excludes(&rec("xdyn.example.test.", "A")));
    }

    #[test]
    fn a_trailing_star_matches_names_starting_with_the_labels_anywhere() {
        let e = ex(&["_acme-challenge.*"], &[]);
        assert!(e.excludes(&rec("_acme-challenge.example.test.", "TXT")));
        assert!(e.excludes(&rec("_acme-challenge.www.example.test.", "TXT")));
        assert!(!e.excludes(&rec("www._acme-challenge.example.test.", "TXT")));
        assert!(!e.excludes(&rec("_acme.example.test.", "TXT")));
    }

    #[test]
    fn an_excluded_type_matches_at_every_name_and_names_the_rule() {
        let e = ex(&[], &["txt"]);
        assert_eq!(
            e.rule_for(&rec("www.example.test.", "TXT")).as_deref(),
            Some("exclude_types TXT")
        );
        assert!(!e.excludes(&rec("www.example.test.", "A")));
    }

    #[test]
    fn malformed_patterns_and_types_are_refused() {
        let z = zone();
        let s = |t: &str| vec![t.to_string()];
        for bad in ["a.*.b", "*", "**.x", "*.x.*", "www.other.test."] {
            assert!(
                Exclusions::parse(&z, &s(bad), &[]).is_err(),
                "{bad} must be refused"
            );
        }
        assert!(Exclusions::parse(&z, &[], &s("NOTATYPE")).is_err());
    }
}
