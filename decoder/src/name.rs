//! Domain names: presentation form (zone-file text) to uncompressed wire form and back.
//!
//! Why our own: the parser we used before decoded `\DDD` escapes of `\010` and
//! above wrongly (`a\065b.` became `a5b.`). This one follows RFC 1035 §5.1 to
//! the letter: "`\X` where X is any character other than a digit (0-9), is
//! used to quote that character so that its special meaning does not apply",
//! and "`\DDD` where each D is a digit is the octet corresponding to the
//! decimal number described by DDD".
//!
//! Names are kept in wire form (RFC 1035 §3.1: "a domain name represented as a
//! sequence of labels, where each label consists of a length octet followed by
//! that number of octets"), with ASCII letters lower-cased, because RFC 4343
//! §3 says "comparisons on name lookup for DNS queries should be case
//! insensitive": two spellings of one name must be one [`Name`].
//!
//! Limits (RFC 1035 §2.3.4): "labels 63 octets or less", "names 255 octets
//! or less" (wire length, root byte included).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The longest label, in bytes (RFC 1035 §2.3.4).
const MAX_LABEL: usize = 63;
/// The longest name in wire form, in bytes (RFC 1035 §2.3.4).
const MAX_WIRE: usize = 255;

/// A fully qualified domain name in uncompressed wire form (RFC 1035 §3.1), ASCII letters lower-cased
/// (RFC 4343: names compare case-insensitively, so two spellings are one name).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name {
    /// Wire bytes including the final root 0 byte; always valid. Shared:
    /// the planner keys several maps by each owner, and a clone is then a
    /// reference count rather than an allocation and a copy.
    wire: Arc<[u8]>,
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The text is empty.
    #[error("a domain name cannot be empty")]
    Empty,
    /// Two dots in a row, or a leading dot.
    #[error("domain name {name:?} has an empty label")]
    EmptyLabel {
        /// The text given.
        name: String,
    },
    /// A label over 63 bytes.
    #[error("a label holds at most 63 bytes, this one has {label_len}")]
    LabelTooLong {
        /// The label's length in bytes.
        label_len: usize,
    },
    /// A name over 255 bytes in wire form.
    #[error("a domain name holds at most 255 bytes in wire form, this one has {wire_len}")]
    NameTooLong {
        /// The wire length the name would have.
        wire_len: usize,
    },
    /// A backslash not followed by a character, or `\DDD` not three digits up to 255.
    #[error("domain name {name:?} has a bad escape (use \\X or \\DDD with DDD at most 255)")]
    BadEscape {
        /// The text given.
        name: String,
    },
    /// Unescaped whitespace inside a name.
    #[error("domain name {name:?} contains whitespace (escape it as \\032)")]
    Whitespace {
        /// The text given.
        name: String,
    },
    /// A relative name where a fully qualified one is needed.
    #[error("domain name {name:?} is relative; names in record data must be fully qualified (end with a dot)")]
    Relative {
        /// The text given.
        name: String,
    },
    /// Malformed wire form.
    #[error("malformed wire domain name at offset {offset}")]
    BadWire {
        /// The byte offset where the problem was found.
        offset: usize,
    },
}

impl Name {
    /// The root name `.`.
    pub fn root() -> Name {
        Name {
            wire: Arc::from(&[0u8][..]),
        }
    }

    /// Parses presentation form; a missing final dot is added (used for owners and zone names from config/rows).
    pub fn parse_fqdn(text: &str) -> Result<Name, NameError> {
        parse_text(text).map(|(name, _)| name)
    }

    /// Parses presentation form that must be absolute (end with an unescaped '.'); a relative name is NameError::Relative.
    /// Used for names inside record data. "." alone is the root.
    pub fn parse_absolute(text: &str) -> Result<Name, NameError> {
        match parse_text(text)? {
            (name, true) => Ok(name),
            (_, false) => Err(NameError::Relative {
                name: text.to_owned(),
            }),
        }
    }

    /// Reads an uncompressed wire name at the start of `bytes`, returning it (lower-cased) and its length. No pointers.
    pub fn from_wire(bytes: &[u8]) -> Result<(Name, usize), NameError> {
        let mut wire = Vec::new();
        let mut at = 0;
        loop {
            let len = *bytes.get(at).ok_or(NameError::BadWire { offset: at })? as usize;
            if len > MAX_LABEL {
                // Compression pointers (0xC0) and the reserved 0x40/0x80 forms land here.
                return Err(NameError::BadWire { offset: at });
            }
            let label = bytes
                .get(at + 1..at + 1 + len)
                .ok_or(NameError::BadWire { offset: at })?;
            if wire.len() + 1 + len > MAX_WIRE {
                return Err(NameError::NameTooLong {
                    wire_len: wire.len() + 1 + len,
                });
            }
            wire.push(len as u8);
            wire.extend(label.iter().map(u8::to_ascii_lowercase));
            at += 1 + len;
            if len == 0 {
                return Ok((Name { wire: wire.into() }, at));
            }
        }
    }

    /// The wire form, final root byte included.
    pub fn as_wire(&self) -> &[u8] {
        &self.wire
    }

    /// The length of the wire form in bytes.
    pub fn wire_len(&self) -> usize {
        self.wire.len()
    }

    /// Number of labels, the root not counted (`example.test.` → 2).
    pub fn label_count(&self) -> usize {
        self.labels().count()
    }

    /// Labels from the leftmost, root excluded.
    pub fn labels(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest: &[u8] = &self.wire;
        std::iter::from_fn(move || {
            let (&len, tail) = rest.split_first()?;
            if len == 0 {
                return None;
            }
            let label = tail.get(..len as usize)?;
            rest = tail.get(len as usize..).unwrap_or_default();
            Some(label)
        })
    }

    /// The name one label up (`www.example.test.` → `example.test.`); the
    /// root has none.
    pub fn parent(&self) -> Option<Name> {
        let (&len, tail) = self.wire.split_first()?;
        if len == 0 {
            return None;
        }
        let rest = tail.get(usize::from(len)..)?;
        Some(Name {
            wire: Arc::from(rest),
        })
    }

    /// Whether self is `other` or below it.
    pub fn is_at_or_below(&self, other: &Name) -> bool {
        // Both are valid wire names, so `other`'s labels end `self` exactly
        // when `self`'s wire form, from one of its label boundaries on, is
        // `other`'s wire form.
        let theirs: &[u8] = &other.wire;
        let mut rest: &[u8] = &self.wire;
        loop {
            if rest.len() <= theirs.len() {
                return rest == theirs;
            }
            match rest.split_first() {
                Some((&len, tail)) if len > 0 => {
                    rest = tail.get(len as usize..).unwrap_or_default();
                }
                _ => return false,
            }
        }
    }
}

/// Parses presentation text, returning the name and whether it was absolute.
fn parse_text(text: &str) -> Result<(Name, bool), NameError> {
    if text.is_empty() {
        return Err(NameError::Empty);
    }
    if text == "." {
        return Ok((Name::root(), true));
    }
    let bad_escape = || NameError::BadEscape {
        name: text.to_owned(),
    };
    let mut wire: Vec<u8> = Vec::with_capacity(text.len() + 2);
    let mut label: Vec<u8> = Vec::new();
    // Whether the last thing seen was an unescaped dot that closed a label.
    let mut absolute = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        absolute = false;
        match c {
            '.' => {
                if label.is_empty() {
                    return Err(NameError::EmptyLabel {
                        name: text.to_owned(),
                    });
                }
                push_label(&mut wire, &label)?;
                label.clear();
                absolute = true;
            }
            '\\' => {
                let next = chars.next().ok_or_else(bad_escape)?;
                if let Some(d0) = next.to_digit(10) {
                    let d1 = chars.next().and_then(|c| c.to_digit(10));
                    let d2 = chars.next().and_then(|c| c.to_digit(10));
                    let (Some(d1), Some(d2)) = (d1, d2) else {
                        return Err(bad_escape());
                    };
                    let value = d0 * 100 + d1 * 10 + d2;
                    let byte = u8::try_from(value).map_err(|_| bad_escape())?;
                    label.push(byte.to_ascii_lowercase());
                } else {
                    push_char(&mut label, next);
                }
            }
            c if c.is_whitespace() => {
                return Err(NameError::Whitespace {
                    name: text.to_owned(),
                })
            }
            c => push_char(&mut label, c),
        }
        if label.len() > MAX_LABEL {
            return Err(NameError::LabelTooLong {
                label_len: label.len(),
            });
        }
    }
    if !label.is_empty() {
        push_label(&mut wire, &label)?;
    }
    push_label(&mut wire, &[])?;
    Ok((Name { wire: wire.into() }, absolute))
}

/// Appends the UTF-8 bytes of `c`, ASCII letters lower-cased.
fn push_char(label: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    label.extend(
        c.encode_utf8(&mut buf)
            .bytes()
            .map(|b| b.to_ascii_lowercase()),
    );
}

/// Appends one length-prefixed label, checking the name length.
fn push_label(wire: &mut Vec<u8>, label: &[u8]) -> Result<(), NameError> {
    let wire_len = wire.len() + 1 + label.len();
    // The root byte still has to follow a non-empty label.
    let needed = if label.is_empty() {
        wire_len
    } else {
        wire_len + 1
    };
    if needed > MAX_WIRE {
        return Err(NameError::NameTooLong { wire_len: needed });
    }
    wire.push(label.len() as u8);
    wire.extend_from_slice(label);
    Ok(())
}

impl fmt::Display for Name {
    /// Presentation form with the final dot; the root prints as `.`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut any = false;
        for label in self.labels() {
            any = true;
            for &b in label {
                match b {
                    b'.' | b'\\' | b'"' | b'(' | b')' | b';' | b'@' | b'$' => {
                        write!(f, "\\{}", b as char)?
                    }
                    0x21..=0x7e => write!(f, "{}", b as char)?,
                    _ => write!(f, "\\{b:03}")?,
                }
            }
            f.write_str(".")?;
        }
        if !any {
            f.write_str(".")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name(\"{self}\")")
    }
}

impl FromStr for Name {
    type Err = NameError;

    /// Same as [`Name::parse_fqdn`].
    fn from_str(text: &str) -> Result<Name, NameError> {
        Name::parse_fqdn(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn wire(name: &str) -> Vec<u8> {
        Name::parse_fqdn(name).unwrap().as_wire().to_vec()
    }

    #[test]
    fn a_missing_final_dot_is_added_and_letters_are_lower_cased() {
        assert_eq!(wire("WWW.Example.test"), b"\x03www\x07example\x04test\x00");
        assert_eq!(wire("www.example.test."), wire("www.example.test"));
    }

    #[test]
    fn decimal_escapes_are_decimal_bytes() {
        assert_eq!(wire("a\\065b."), b"\x03aab\x00");
        assert_eq!(wire("a\\010b."), b"\x03a\x0ab\x00");
        assert_eq!(wire("\\255\\000."), b"\x02\xff\x00\x00");
        assert_eq!(wire("a\\.b.c."), b"\x03a.b\x01c\x00");
    }

    #[test]
    fn bad_escapes_are_refused() {
        for text in ["a\\256.", "a\\25.", "a\\2", "a\\"] {
            assert!(
                matches!(Name::parse_fqdn(text), Err(NameError::BadEscape { .. })),
                "{text}"
            );
        }
    }

    #[test]
    fn non_ascii_characters_contribute_their_utf8_bytes() {
        assert_eq!(wire("grüße."), b"\x07gr\xc3\xbc\xc3\x9fe\x00");
        assert_eq!(
            Name::parse_fqdn("grüße").unwrap().to_string(),
            "gr\\195\\188\\195\\159e."
        );
    }

    #[test]
    fn limits_on_labels_and_names_are_enforced() {
        let label63 = "a".repeat(63);
        assert!(Name::parse_fqdn(&label63).is_ok());
        assert_eq!(
            Name::parse_fqdn(&"a".repeat(64)),
            Err(NameError::LabelTooLong { label_len: 64 })
        );
        // 4 labels of 63 = 256 bytes + root: too long; 3×63 + 61 fits exactly.
        let long = [label63.as_str(); 4].join(".");
        assert!(matches!(
            Name::parse_fqdn(&long),
            Err(NameError::NameTooLong { .. })
        ));
        let fits = format!("{0}.{0}.{0}.{1}", label63, "a".repeat(61));
        assert_eq!(Name::parse_fqdn(&fits).unwrap().wire_len(), 255);
        let over = format!("{0}.{0}.{0}.{1}", label63, "a".repeat(62));
        assert!(matches!(
            Name::parse_fqdn(&over),
            Err(NameError::NameTooLong { wire_len: 256 })
        ));
    }

    #[test]
    fn empty_labels_and_whitespace_are_refused() {
        assert_eq!(Name::parse_fqdn(""), Err(NameError::Empty));
        assert!(matches!(
            Name::parse_fqdn("a..b"),
            Err(NameError::EmptyLabel { .. })
        ));
        assert!(matches!(
            Name::parse_fqdn(".a"),
            Err(NameError::EmptyLabel { .. })
        ));
        assert!(matches!(
            Name::parse_fqdn("a b."),
            Err(NameError::Whitespace { .. })
        ));
        assert_eq!(wire("a\\032b."), b"\x03a b\x00");
    }

    #[test]
    fn absolute_parsing_refuses_relative_names() {
        assert!(matches!(
            Name::parse_absolute("svc"),
            Err(NameError::Relative { .. })
        ));
        assert!(matches!(
            Name::parse_absolute("a\\."),
            Err(NameError::Relative { .. })
        ));
        assert_eq!(Name::parse_absolute(".").unwrap(), Name::root());
        assert!(Name::parse_absolute("svc.example.").is_ok());
    }

    #[test]
    fn display_escapes_special_and_unprintable_bytes() {
        let name = Name::parse_fqdn("a\\.b\\\"c\\;\\@\\$\\(\\)\\\\.\\000\\032\\127.").unwrap();
        assert_eq!(
            name.to_string(),
            "a\\.b\\\"c\\;\\@\\$\\(\\)\\\\.\\000\\032\\127."
        );
        assert_eq!(Name::root().to_string(), ".");
        assert_eq!(
            format!("{:?}", Name::parse_fqdn("A.example").unwrap()),
            "Name(\"a.example.\")"
        );
    }

    #[test]
    fn wire_names_are_read_lower_cased_and_pointers_refused() {
        let (name, len) = Name::from_wire(b"\x01A\x04test\x00rest").unwrap();
        assert_eq!(len, 8);
        assert_eq!(name.to_string(), "a.test.");
        assert_eq!(
            Name::from_wire(b"\x01a\xc0\x0c"),
            Err(NameError::BadWire { offset: 2 })
        );
        assert_eq!(
            Name::from_wire(b"\x05ab"),
            Err(NameError::BadWire { offset: 0 })
        );
        assert_eq!(Name::from_wire(b""), Err(NameError::BadWire { offset: 0 }));
    }

    #[test]
    fn labels_and_ancestry_are_reported() {
        let name = Name::parse_fqdn("www.example.test").unwrap();
        let zone = Name::parse_fqdn("EXAMPLE.test").unwrap();
        assert_eq!(name.label_count(), 3);
        assert_eq!(Name::root().label_count(), 0);
        assert_eq!(
            name.labels().collect::<Vec<_>>(),
            [&b"www"[..], b"example", b"test"]
        );
        assert!(name.is_at_or_below(&zone));
        assert!(zone.is_at_or_below(&zone));
        assert!(name.is_at_or_below(&Name::root()));
        assert!(!zone.is_at_or_below(&name));
        assert!(!Name::parse_fqdn("badexample.test")
            .unwrap()
            .is_at_or_below(&zone));
        // The zone's wire form inside one label is no label boundary.
        assert!(!Name::parse_fqdn("a\\007example\\004test")
            .unwrap()
            .is_at_or_below(&zone));
        assert_eq!(name.parent(), Some(zone.clone()));
        assert_eq!(
            Name::parse_fqdn("a\\.b.example.test").unwrap().parent(),
            Some(zone.clone())
        );
        assert_eq!(
            Name::parse_fqdn("test").unwrap().parent(),
            Some(Name::root())
        );
        assert_eq!(Name::root().parent(), None);
        assert_eq!(
            "a.b".parse::<Name>().unwrap(),
            Name::parse_fqdn("A.B.").unwrap()
        );
    }

    proptest! {
        #[test]
        fn any_wire_name_survives_display_and_parse(labels in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..20), 0..6)) {
            let mut wire = Vec::new();
            for label in &labels {
                wire.push(label.len() as u8);
                wire.extend(label);
            }
            wire.push(0);
            let (name, len) = Name::from_wire(&wire).unwrap();
            prop_assert_eq!(len, wire.len());
            prop_assert_eq!(Name::parse_fqdn(&name.to_string()).unwrap(), name.clone());
            prop_assert_eq!(Name::parse_absolute(&name.to_string()).unwrap(), name);
        }

        #[test]
        fn parsing_arbitrary_text_or_bytes_never_panics(text in ".*", bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Name::parse_fqdn(&text);
            let _ = Name::parse_absolute(&text);
            let _ = Name::from_wire(&bytes);
        }
    }
}
