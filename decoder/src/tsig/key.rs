//! TSIG algorithms and keys, and why a key cannot be made or read.

use std::fmt;
use std::str::FromStr;

use hickory_proto::rr::Name;
use hmac::Mac as _;
use ring::hmac as ring_hmac;

use super::wire::wire_name;

/// A TSIG MAC algorithm (RFC 8945 §6, Table 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `hmac-sha1`, for older peers.
    HmacSha1,
    /// `hmac-sha224`.
    HmacSha224,
    /// `hmac-sha256`, the default of `tsig-keygen`.
    HmacSha256,
    /// `hmac-sha384`.
    HmacSha384,
    /// `hmac-sha512`.
    HmacSha512,
}

impl Algorithm {
    /// Every supported algorithm.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::HmacSha1,
        Algorithm::HmacSha224,
        Algorithm::HmacSha256,
        Algorithm::HmacSha384,
        Algorithm::HmacSha512,
    ];

    /// The algorithm's name, as `tsig-keygen` writes it and as it appears
    /// (with a final dot) in the TSIG record.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::HmacSha1 => "hmac-sha1",
            Algorithm::HmacSha224 => "hmac-sha224",
            Algorithm::HmacSha256 => "hmac-sha256",
            Algorithm::HmacSha384 => "hmac-sha384",
            Algorithm::HmacSha512 => "hmac-sha512",
        }
    }

    /// The length of a full MAC in bytes.
    pub fn mac_len(self) -> usize {
        match self {
            Algorithm::HmacSha1 => 20,
            Algorithm::HmacSha224 => 28,
            Algorithm::HmacSha256 => 32,
            Algorithm::HmacSha384 => 48,
            Algorithm::HmacSha512 => 64,
        }
    }

    /// The algorithm name in wire format: one label and the root.
    pub(super) fn wire_name(self) -> Vec<u8> {
        let name = self.as_str().as_bytes();
        let mut wire = Vec::with_capacity(name.len() + 2);
        wire.push(name.len() as u8);
        wire.extend_from_slice(name);
        wire.push(0);
        wire
    }

    /// The `ring` algorithm, or `None` for hmac-sha224, which `ring` lacks.
    fn ring(self) -> Option<ring_hmac::Algorithm> {
        match self {
            Algorithm::HmacSha1 => Some(ring_hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY),
            Algorithm::HmacSha224 => None,
            Algorithm::HmacSha256 => Some(ring_hmac::HMAC_SHA256),
            Algorithm::HmacSha384 => Some(ring_hmac::HMAC_SHA384),
            Algorithm::HmacSha512 => Some(ring_hmac::HMAC_SHA512),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = KeyError;

    /// Accepts the names `tsig-keygen` writes, in any case, with or without a
    /// final dot.
    fn from_str(text: &str) -> Result<Algorithm, KeyError> {
        let lower = text.trim().to_ascii_lowercase();
        let bare = lower.strip_suffix('.').unwrap_or(&lower);
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == bare)
            .ok_or_else(|| KeyError::UnknownAlgorithm {
                name: text.to_owned(),
            })
    }
}

/// A shared TSIG key. `Debug` never shows the secret.
///
/// A clone shares the secret: every zone holds its key, and thousands of
/// zones usually share one.
#[derive(Clone)]
pub struct TsigKey {
    /// The key's name, lower-case and fully qualified (`ddns-key.`).
    pub name: Name,
    /// The MAC algorithm.
    pub algorithm: Algorithm,
    secret: std::sync::Arc<[u8]>,
}

/// Two keys are equal when name, algorithm and secret are (used to tell
/// whether a zone's stream must be rebuilt after a configuration reload).
impl PartialEq for TsigKey {
    fn eq(&self, other: &TsigKey) -> bool {
        self.name == other.name && self.algorithm == other.algorithm && self.secret == other.secret
    }
}

impl Eq for TsigKey {}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name.to_string())
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl TsigKey {
    /// Makes a key from its name, algorithm and (decoded) secret.
    pub fn new(name: &str, algorithm: Algorithm, secret: Vec<u8>) -> Result<TsigKey, KeyError> {
        if name.trim().is_empty() {
            return Err(KeyError::EmptyName);
        }
        let mut parsed = Name::from_ascii(name.trim()).map_err(|source| KeyError::BadName {
            name: name.to_owned(),
            source,
        })?;
        parsed.set_fqdn(true);
        let parsed = parsed.to_lowercase();
        if secret.is_empty() {
            return Err(KeyError::EmptySecret {
                key: parsed.to_string(),
            });
        }
        Ok(TsigKey {
            name: parsed,
            algorithm,
            secret: secret.into(),
        })
    }

    /// Reads the keys of a file in the format `tsig-keygen` writes (and
    /// `named.conf` includes):
    ///
    /// ```text
    /// key "ddns-key" {
    ///         algorithm hmac-sha256;
    ///         secret "base64…";
    /// };
    /// ```
    ///
    /// Several keys may follow each other; `#`, `//` and `/* */` comments are
    /// skipped. Anything else is refused with its line number.
    pub fn parse_keygen_file(text: &str) -> Result<Vec<TsigKey>, KeyError> {
        super::keyfile::parse(text)
    }

    /// The exact number of bytes the TSIG record adds to a request signed
    /// with this key: owner name and algorithm name uncompressed, a full MAC,
    /// empty Other Data.
    pub fn record_len(&self) -> usize {
        // NAME + TYPE, CLASS, TTL, RDLENGTH (10)
        // + RDATA: algorithm + Time Signed (6), Fudge (2), MAC Size (2), MAC,
        //   Original ID (2), Error (2), Other Len (2)
        wire_name(&self.name).len()
            + 10
            + self.algorithm.wire_name().len()
            + 16
            + self.algorithm.mac_len()
    }

    /// The decoded secret, for the tests of this module.
    #[cfg(test)]
    pub(super) fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// The MAC of `data`.
    pub(super) fn mac(&self, data: &[u8]) -> Vec<u8> {
        match self.algorithm.ring() {
            Some(alg) => ring_hmac::sign(&ring_hmac::Key::new(alg, &self.secret), data)
                .as_ref()
                .to_vec(),
            None => {
                // ring has no HMAC-SHA-224: RustCrypto does it. Any key length
                // is valid for HMAC, so `new_from_slice` cannot fail.
                let mut mac = hmac::Hmac::<sha2::Sha224>::new_from_slice(&self.secret)
                    .expect("HMAC accepts keys of any length");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    /// Constant-time comparison of `mac` with the MAC of `data`.
    pub(super) fn verify(&self, data: &[u8], mac: &[u8]) -> bool {
        match self.algorithm.ring() {
            Some(alg) => {
                ring_hmac::verify(&ring_hmac::Key::new(alg, &self.secret), data, mac).is_ok()
            }
            None => match hmac::Hmac::<sha2::Sha224>::new_from_slice(&self.secret) {
                Ok(mut m) => {
                    m.update(data);
                    m.verify_slice(mac).is_ok()
                }
                Err(_) => false,
            },
        }
    }
}

/// Why a key could not be made, or a key file not read.
#[derive(Debug, thiserror::Error, Clone)]
pub enum KeyError {
    /// The key name is empty.
    #[error("key name is empty")]
    EmptyName,
    /// The key name is not a valid domain name.
    #[error("invalid key name {name:?}")]
    BadName {
        /// The text given.
        name: String,
        /// What the name parser said.
        #[source]
        source: hickory_proto::ProtoError,
    },
    /// A key has an empty secret.
    #[error("key {key} has an empty secret")]
    EmptySecret {
        /// The key's name.
        key: String,
    },
    /// The algorithm name is not one of the supported ones.
    #[error("unsupported TSIG algorithm {name:?} (supported: hmac-sha1, hmac-sha224, hmac-sha256, hmac-sha384, hmac-sha512)")]
    UnknownAlgorithm {
        /// The name given.
        name: String,
    },
    /// The key file is not in the format `tsig-keygen` writes.
    #[error("key file line {line}: {reason}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What was expected and found.
        reason: String,
    },
    /// A key's `secret` is not base64.
    #[error("key file line {line}: secret of key {key:?} is not valid base64")]
    SecretNotBase64 {
        /// 1-based line number of the `secret` statement.
        line: usize,
        /// The key's name as written.
        key: String,
        /// What the decoder said.
        #[source]
        source: base64::DecodeError,
    },
    /// A key block lacks `algorithm` or `secret`.
    #[error("key file line {line}: key {key:?} has no `{statement}`")]
    MissingStatement {
        /// 1-based line number of the key's name.
        line: usize,
        /// The key's name as written.
        key: String,
        /// The missing statement.
        statement: &'static str,
    },
    /// A statement or key in the file is invalid: bad algorithm, name or secret.
    #[error("key file line {line}: invalid key")]
    InvalidKey {
        /// 1-based line number.
        line: usize,
        /// What was wrong with it.
        #[source]
        source: Box<KeyError>,
    },
    /// Two keys have the same name.
    #[error("key file line {line}: key {key} is defined twice")]
    Duplicate {
        /// 1-based line number of the second definition.
        line: usize,
        /// The key's name.
        key: String,
    },
    /// The file defines no key.
    #[error("key file line {line}: no key found")]
    NoKey {
        /// The file's last line.
        line: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsig::{fixtures, sign, DEFAULT_FUDGE};

    #[test]
    fn record_len_is_what_signing_adds() {
        let message = fixtures::update_message();
        for algorithm in Algorithm::ALL {
            for name in ["k", "ddns-key", "a.much.longer.key.name.example"] {
                let key = TsigKey::new(name, algorithm, vec![7; 16]).unwrap();
                let signed = sign(&message, &key, fixtures::NOW, DEFAULT_FUDGE).unwrap();
                assert_eq!(signed.wire.len() - message.len(), key.record_len());
            }
        }
        let key = TsigKey::new("ddns-key", Algorithm::HmacSha256, vec![7; 32]).unwrap();
        assert_eq!(
            key.record_len(),
            81,
            "the 81 bytes measured in the DNS notes"
        );
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let key = TsigKey::new("k", Algorithm::HmacSha256, b"supersecretvalue".to_vec()).unwrap();
        let debug = format!("{key:?}");
        assert!(
            !debug.contains("supersecret") && !debug.contains("115, 117"),
            "{debug}"
        );
        assert!(debug.contains("redacted"), "{debug}");
    }

    #[test]
    fn algorithm_names_parse_in_any_case_with_an_optional_dot() {
        for algorithm in Algorithm::ALL {
            assert_eq!(
                algorithm.to_string().parse::<Algorithm>().unwrap(),
                algorithm
            );
        }
        assert_eq!(
            "HMAC-SHA256.".parse::<Algorithm>().unwrap(),
            Algorithm::HmacSha256
        );
        assert!(matches!(
            "hmac-md5".parse::<Algorithm>().unwrap_err(),
            KeyError::UnknownAlgorithm { name } if name == "hmac-md5"
        ));
    }

    #[test]
    fn bad_key_names_and_empty_secrets_are_refused() {
        assert!(matches!(
            TsigKey::new(" ", Algorithm::HmacSha256, vec![1]),
            Err(KeyError::EmptyName)
        ));
        let err = TsigKey::new("a..b", Algorithm::HmacSha256, vec![1]).unwrap_err();
        assert!(matches!(&err, KeyError::BadName { name, .. } if name == "a..b"));
        assert!(std::error::Error::source(&err).is_some(), "{err:?}");
        assert!(matches!(
            TsigKey::new("K", Algorithm::HmacSha256, vec![]),
            Err(KeyError::EmptySecret { key }) if key == "k."
        ));
    }
}
