//! Domain names in wire form. (Temporary stand-in; the real parser lands
//! from the presentation work.)

use std::fmt;

/// A fully qualified domain name in uncompressed wire form, ASCII lower-cased.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name {
    wire: Box<[u8]>,
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty text.
    #[error("empty name")]
    Empty,
    /// Two dots in a row.
    #[error("empty label in {name:?}")]
    EmptyLabel {
        /// The text.
        name: String,
    },
    /// A label over 63 bytes.
    #[error("a label holds at most 63 bytes, this one has {label_len}")]
    LabelTooLong {
        /// Its length.
        label_len: usize,
    },
    /// A name over 255 bytes.
    #[error("a name holds at most 255 bytes in wire form, this one has {wire_len}")]
    NameTooLong {
        /// Its length.
        wire_len: usize,
    },
    /// A bad escape.
    #[error("bad escape in {name:?}")]
    BadEscape {
        /// The text.
        name: String,
    },
    /// Not absolute.
    #[error("relative name {name:?}: names in record data must be fully qualified (end with '.')")]
    Relative {
        /// The text.
        name: String,
    },
    /// Bad wire data.
    #[error("malformed wire name at offset {offset}")]
    BadWire {
        /// Where.
        offset: usize,
    },
}

impl Name {
    /// The root name.
    pub fn root() -> Name {
        Name {
            wire: Box::new([0]),
        }
    }

    /// Parses presentation form; a missing final dot is added.
    pub fn parse_fqdn(text: &str) -> Result<Name, NameError> {
        if text.is_empty() {
            return Err(NameError::Empty);
        }
        if text == "." {
            return Ok(Name::root());
        }
        let body = text.strip_suffix('.').unwrap_or(text);
        let mut wire = Vec::new();
        for label in body.split('.') {
            if label.is_empty() {
                return Err(NameError::EmptyLabel { name: text.into() });
            }
            if label.len() > 63 {
                return Err(NameError::LabelTooLong {
                    label_len: label.len(),
                });
            }
            wire.push(label.len() as u8);
            wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
        wire.push(0);
        if wire.len() > 255 {
            return Err(NameError::NameTooLong {
                wire_len: wire.len(),
            });
        }
        Ok(Name { wire: wire.into() })
    }

    /// Parses presentation form that must end with a dot.
    pub fn parse_absolute(text: &str) -> Result<Name, NameError> {
        if !text.ends_with('.') {
            return Err(NameError::Relative { name: text.into() });
        }
        Name::parse_fqdn(text)
    }

    /// Reads an uncompressed wire name at the start of `bytes`.
    pub fn from_wire(bytes: &[u8]) -> Result<(Name, usize), NameError> {
        let mut at = 0;
        loop {
            let len = usize::from(*bytes.get(at).ok_or(NameError::BadWire { offset: at })?);
            if len > 63 {
                return Err(NameError::BadWire { offset: at });
            }
            if bytes.len() < at + 1 + len {
                return Err(NameError::BadWire { offset: at });
            }
            at += 1 + len;
            if len == 0 {
                break;
            }
            if at > 255 {
                return Err(NameError::NameTooLong { wire_len: at });
            }
        }
        let wire: Vec<u8> = bytes[..at].iter().map(u8::to_ascii_lowercase).collect();
        Ok((Name { wire: wire.into() }, at))
    }

    /// The wire form.
    pub fn as_wire(&self) -> &[u8] {
        &self.wire
    }

    /// Length of the wire form.
    pub fn wire_len(&self) -> usize {
        self.wire.len()
    }

    /// Labels, the root not counted.
    pub fn label_count(&self) -> usize {
        self.labels().count()
    }

    /// Labels from the leftmost, root excluded.
    pub fn labels(&self) -> impl Iterator<Item = &[u8]> {
        let mut at = 0;
        std::iter::from_fn(move || {
            let len = usize::from(*self.wire.get(at)?);
            if len == 0 {
                return None;
            }
            let label = self.wire.get(at + 1..at + 1 + len)?;
            at += 1 + len;
            Some(label)
        })
    }

    /// Whether self is `other` or below it.
    pub fn is_at_or_below(&self, other: &Name) -> bool {
        self.wire.len() >= other.wire.len() && self.wire.ends_with(&other.wire) && {
            let mine: Vec<&[u8]> = self.labels().collect();
            let theirs = other.label_count();
            mine.len() >= theirs
                && mine[mine.len() - theirs..]
                    .iter()
                    .copied()
                    .eq(other.labels())
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wire.len() == 1 {
            return f.write_str(".");
        }
        for label in self.labels() {
            for &b in label {
                match b {
                    b'.' | b'\\' | b'"' | b'(' | b')' | b';' | b'@' | b'$' => {
                        write!(f, "\\{}", char::from(b))?
                    }
                    0x21..=0x7e => write!(f, "{}", char::from(b))?,
                    _ => write!(f, "\\{b:03}")?,
                }
            }
            f.write_str(".")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({self})")
    }
}

impl std::str::FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Name, NameError> {
        Name::parse_fqdn(s)
    }
}
