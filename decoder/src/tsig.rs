//! TSIG (RFC 8945): signing UPDATE requests and verifying the server's answer.
//!
//! # Why hand-written
//!
//! `hickory-proto` 0.26 has a TSIG signer, but pg2dns cannot use it: it turns
//! the unsigned BADKEY/BADSIG error answers into an opaque verification error
//! and loses the RCODE; it supports neither hmac-sha1 nor hmac-sha224, which
//! older peers still use; and for a message just under 65 535 bytes it can drop
//! the TSIG record and send the update unsigned and truncated. So pg2dns signs
//! the bytes that [`crate::update::encode`] produced and parses the answer's
//! TSIG record itself. It is sans-IO: the clock is the `now` parameter
//! (seconds since the Unix epoch).
//!
//! # What RFC 8945 says and what this module does
//!
//! Request (§5.1): "the client performs the keyed hash (Hashed Message
//! Authentication Code (HMAC)) computation, appends a TSIG record with the
//! calculated MAC to the additional section (incrementing the ARCOUNT to
//! reflect the additional RR) [...] This TSIG record MUST be the only TSIG RR
//! in the message and MUST be the last record in the additional data section."
//! The digest covers the request exactly as sent but without its TSIG record,
//! followed by the TSIG variables (§4.3.3):
//!
//! ```text
//!  key name (canonical: lower case, uncompressed) ‖ CLASS=ANY ‖ TTL=0
//!  ‖ algorithm name ‖ Time Signed (48 bits) ‖ Fudge ‖ Error ‖ Other Len ‖ Other Data
//! ```
//!
//! Response (§4.3.1, §5.4): the digest is `len(request MAC) ‖ request MAC ‖
//! response with ID := Original ID, ARCOUNT − 1 and the TSIG record removed ‖
//! TSIG variables`, where the variables now hold the response's Error and
//! Other Data. The MAC is compared in constant time, then the time:
//! |now − Time Signed| must be within the Fudge.
//!
//! Error answers (§5.2.1): "If a non-forwarding server does not recognize the
//! key or algorithm used by the client [...] the server MUST generate an error
//! response with RCODE 9 (NOTAUTH) and TSIG ERROR 17 (BADKEY). This response
//! MUST be unsigned as specified in Section 5.3.2." The same holds for a MAC
//! that does not verify (TSIG error 16, BADSIG): the answer carries a TSIG
//! record with an empty MAC. Those are reported as [`TsigError::BadKey`] and
//! [`TsigError::BadSig`] with the key's name, without verification — there is
//! nothing to verify. A BADTIME (18) answer is signed and carries the server's
//! clock in Other Data; it is verified, then reported as
//! [`TsigError::BadTime`] with both clocks.
//!
//! Measured against BIND 9.18 and Knot 3.2 (see `shared/notes/dns-servers.md`):
//! Knot answers NOTAUTH *without* any TSIG record for a zone it does not serve;
//! that is [`TsigError::Unsigned`], which keeps the RCODE.
//!
//! # Algorithms
//!
//! hmac-sha1, hmac-sha256, hmac-sha384 and hmac-sha512 use `ring`; hmac-sha224
//! uses the RustCrypto `hmac` and `sha2` crates because `ring` has no SHA-224
//! HMAC. hmac-md5 is not supported. Truncated MACs (§5.2.2.1) are neither sent
//! nor accepted: BIND and Knot send full-length MACs.

use std::fmt;
use std::str::FromStr;

use hickory_proto::rr::Name;
use hmac::Mac as _;
use ring::hmac as ring_hmac;

/// The fudge pg2dns puts in its requests: the ±5 minutes RFC 8945 §10
/// recommends ("a fudge value of 300 seconds is recommended").
pub const DEFAULT_FUDGE: u16 = 300;

/// RR type TSIG (RFC 8945 §4.2).
const TYPE_TSIG: u16 = 250;
/// RR type OPT (RFC 6891), whose TTL carries the upper RCODE bits.
const TYPE_OPT: u16 = 41;
/// CLASS ANY, the class of a TSIG record.
const CLASS_ANY: u16 = 255;
/// Largest DNS message over TCP: the frame length field has 16 bits.
const MAX_MESSAGE: usize = 65_535;
/// Time Signed is a 48-bit field.
const MAX_TIME: u64 = (1 << 48) - 1;

/// TSIG error codes (RFC 8945 §3, IANA "TSIG Error values").
const ERR_BADSIG: u16 = 16;
const ERR_BADKEY: u16 = 17;
const ERR_BADTIME: u16 = 18;

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
    fn wire_name(self) -> Vec<u8> {
        let name = self.as_str().as_bytes();
        let mut wire = Vec::with_capacity(name.len() + 2);
        wire.push(name.len() as u8);
        wire.extend_from_slice(name);
        wire.push(0);
        wire
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = TsigError;

    /// Accepts the names `tsig-keygen` writes, in any case, with or without a
    /// final dot.
    fn from_str(text: &str) -> Result<Algorithm, TsigError> {
        let lower = text.trim().to_ascii_lowercase();
        let bare = lower.strip_suffix('.').unwrap_or(&lower);
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == bare)
            .ok_or_else(|| TsigError::UnknownAlgorithm(text.to_owned()))
    }
}

/// A shared TSIG key. `Debug` never shows the secret.
#[derive(Clone)]
pub struct TsigKey {
    /// The key's name, lower-case and fully qualified (`ddns-key.`).
    pub name: Name,
    /// The MAC algorithm.
    pub algorithm: Algorithm,
    secret: Vec<u8>,
}

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
    pub fn new(name: &str, algorithm: Algorithm, secret: Vec<u8>) -> Result<TsigKey, TsigError> {
        let bad = |reason: String| TsigError::BadKeyName {
            name: name.to_owned(),
            reason,
        };
        if name.trim().is_empty() {
            return Err(bad("empty name".into()));
        }
        let mut parsed = Name::from_ascii(name.trim()).map_err(|e| bad(e.to_string()))?;
        parsed.set_fqdn(true);
        let parsed = parsed.to_lowercase();
        if secret.is_empty() {
            return Err(TsigError::EmptySecret {
                key: parsed.to_string(),
            });
        }
        Ok(TsigKey {
            name: parsed,
            algorithm,
            secret,
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
    pub fn parse_keygen_file(text: &str) -> Result<Vec<TsigKey>, TsigError> {
        keyfile::parse(text)
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

    fn mac(&self, data: &[u8]) -> Vec<u8> {
        match ring_algorithm(self.algorithm) {
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
    fn verify(&self, data: &[u8], mac: &[u8]) -> bool {
        match ring_algorithm(self.algorithm) {
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

/// The `ring` algorithm, or `None` for hmac-sha224, which `ring` lacks.
fn ring_algorithm(algorithm: Algorithm) -> Option<ring_hmac::Algorithm> {
    match algorithm {
        Algorithm::HmacSha1 => Some(ring_hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY),
        Algorithm::HmacSha224 => None,
        Algorithm::HmacSha256 => Some(ring_hmac::HMAC_SHA256),
        Algorithm::HmacSha384 => Some(ring_hmac::HMAC_SHA384),
        Algorithm::HmacSha512 => Some(ring_hmac::HMAC_SHA512),
    }
}

/// A name in canonical wire form: lower case, uncompressed.
fn wire_name(name: &Name) -> Vec<u8> {
    let mut wire = Vec::with_capacity(name.len() + 1);
    for label in name.iter() {
        wire.push(label.len() as u8);
        wire.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    wire.push(0);
    wire
}

/// A request with its TSIG record, and what verifying the answer needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedRequest {
    /// The message to send: the request, its ARCOUNT one higher, the TSIG
    /// record last.
    pub wire: Vec<u8>,
    /// The request's MAC; the answer's MAC covers it.
    pub mac: Vec<u8>,
    /// The message ID (also the TSIG Original ID).
    pub id: u16,
    /// Time Signed, seconds since the Unix epoch.
    pub time_signed: u64,
}

/// A correctly signed answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifiedResponse {
    /// The answer's message ID.
    pub id: u16,
    /// The RCODE: the header's four bits, extended by an OPT record's upper
    /// eight bits when the answer has one (RFC 6891 §6.1.3).
    pub rcode: u16,
}

/// Why a key could not be loaded, a message not signed, or an answer not
/// trusted.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TsigError {
    /// The server does not know the key or its algorithm (TSIG error 17, in an
    /// unsigned answer).
    #[error("server does not know key {key} or its algorithm (TSIG error BADKEY): check the key name and algorithm in the server's configuration")]
    BadKey {
        /// Our key's name.
        key: String,
    },
    /// The server computed a different MAC (TSIG error 16, in an unsigned
    /// answer): the secrets differ.
    #[error("server rejected the signature of key {key} (TSIG error BADSIG): the secret differs from the server's")]
    BadSig {
        /// Our key's name.
        key: String,
    },
    /// The server's clock and ours differ by more than the fudge (TSIG error
    /// 18, in a signed answer).
    #[error("server rejected the time of our signature with key {key} (TSIG error BADTIME): server time {server_time}, our time {our_time}; synchronise the clocks")]
    BadTime {
        /// Our key's name.
        key: String,
        /// The server's clock (the answer's Other Data), seconds since the epoch.
        server_time: u64,
        /// Our clock when we checked the answer.
        our_time: u64,
    },
    /// Another TSIG error code in a verified answer.
    #[error("server reported TSIG error {error} for key {key} (rcode {rcode})")]
    ServerError {
        /// Our key's name.
        key: String,
        /// The TSIG Error field.
        error: u16,
        /// The answer's RCODE.
        rcode: u16,
    },
    /// The answer has no TSIG record although the request was signed.
    #[error("answer is not signed (rcode {rcode}): the server may not serve the zone or may not know the key")]
    Unsigned {
        /// The answer's RCODE.
        rcode: u16,
    },
    /// The answer's MAC does not verify: altered in transit, or not from the
    /// holder of the key.
    #[error("answer's TSIG MAC for key {key} does not verify")]
    BadMac {
        /// Our key's name.
        key: String,
    },
    /// The answer's MAC is shorter than the algorithm's output; pg2dns does not
    /// accept truncated MACs.
    #[error("answer's TSIG MAC for key {key} has {len} bytes, {expected} expected (truncated MACs are not accepted)")]
    TruncatedMac {
        /// Our key's name.
        key: String,
        /// The MAC size received.
        len: usize,
        /// The algorithm's full MAC size.
        expected: usize,
    },
    /// The answer is signed with another key or algorithm than the request.
    #[error("answer is signed with key {got} ({got_algorithm}), expected {expected} ({expected_algorithm})")]
    WrongKey {
        /// Our key's name.
        expected: String,
        /// Our key's algorithm.
        expected_algorithm: Algorithm,
        /// The key name in the answer.
        got: String,
        /// The algorithm name in the answer.
        got_algorithm: String,
    },
    /// The answer's ID (header or TSIG Original ID) is not the request's.
    #[error("answer has id {got}, the request had id {expected}")]
    IdMismatch {
        /// The request's ID.
        expected: u16,
        /// The ID in the answer.
        got: u16,
    },
    /// The answer verifies but was signed too far from our clock.
    #[error("answer signed with key {key} at {time_signed} is outside the fudge of {fudge} s around our time {now}")]
    TimeOutsideFudge {
        /// Our key's name.
        key: String,
        /// The answer's Time Signed.
        time_signed: u64,
        /// The answer's Fudge.
        fudge: u16,
        /// Our clock.
        now: u64,
    },
    /// The message does not parse.
    #[error("malformed DNS message at byte {offset}: {reason}")]
    Malformed {
        /// Where parsing stopped.
        offset: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// The key file does not parse.
    #[error("key file line {line}: {reason}")]
    KeyFile {
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
    /// A key name is not a valid domain name.
    #[error("invalid key name {name:?}: {reason}")]
    BadKeyName {
        /// The text given.
        name: String,
        /// What the parser said.
        reason: String,
    },
    /// A key has an empty secret.
    #[error("key {key} has an empty secret")]
    EmptySecret {
        /// The key's name.
        key: String,
    },
    /// The algorithm name is not one of the supported ones.
    #[error("unsupported TSIG algorithm {0:?} (supported: hmac-sha1, hmac-sha224, hmac-sha256, hmac-sha384, hmac-sha512)")]
    UnknownAlgorithm(String),
    /// `now` does not fit the 48-bit Time Signed field.
    #[error("time {now} does not fit the 48-bit TSIG time field")]
    TimeOutOfRange {
        /// The time given.
        now: u64,
    },
    /// The signed message would exceed 65 535 bytes.
    #[error("signed message would be {len} bytes, more than 65535")]
    TooLarge {
        /// The signed length.
        len: usize,
    },
}

/// The TSIG variables of RFC 8945 §4.3.3, which the digest covers after the
/// message.
struct Variables<'a> {
    key: &'a [u8],
    class: u16,
    ttl: u32,
    algorithm: &'a [u8],
    time_signed: u64,
    fudge: u16,
    error: u16,
    other: &'a [u8],
}

impl Variables<'_> {
    /// Appends the variables in digest order.
    fn push_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.key);
        out.extend_from_slice(&self.class.to_be_bytes());
        out.extend_from_slice(&self.ttl.to_be_bytes());
        out.extend_from_slice(self.algorithm);
        out.extend_from_slice(&self.time_signed.to_be_bytes()[2..]);
        out.extend_from_slice(&self.fudge.to_be_bytes());
        out.extend_from_slice(&self.error.to_be_bytes());
        out.extend_from_slice(&(self.other.len() as u16).to_be_bytes());
        out.extend_from_slice(self.other);
    }
}

/// Signs `message` (a complete DNS message without TSIG) with `key` at time
/// `now`: appends the TSIG record and increments ARCOUNT. The Original ID is
/// the message's ID.
pub fn sign(
    message: &[u8],
    key: &TsigKey,
    now: u64,
    fudge: u16,
) -> Result<SignedRequest, TsigError> {
    if message.len() < 12 {
        return Err(TsigError::Malformed {
            offset: message.len(),
            reason: "message shorter than a DNS header",
        });
    }
    if now > MAX_TIME {
        return Err(TsigError::TimeOutOfRange { now });
    }
    let id = u16::from_be_bytes([message[0], message[1]]);
    let arcount = u16::from_be_bytes([message[10], message[11]]);
    let arcount = arcount.checked_add(1).ok_or(TsigError::Malformed {
        offset: 10,
        reason: "ARCOUNT is already 65535",
    })?;
    let key_wire = wire_name(&key.name);
    let alg_wire = key.algorithm.wire_name();

    let mut digest = Vec::with_capacity(message.len() + 64);
    digest.extend_from_slice(message);
    Variables {
        key: &key_wire,
        class: CLASS_ANY,
        ttl: 0,
        algorithm: &alg_wire,
        time_signed: now,
        fudge,
        error: 0,
        other: &[],
    }
    .push_to(&mut digest);
    let mac = key.mac(&digest);

    let mut wire = digest;
    wire.truncate(message.len());
    wire[10..12].copy_from_slice(&arcount.to_be_bytes());
    let rdata_len = alg_wire.len() + 16 + mac.len();
    wire.extend_from_slice(&key_wire);
    wire.extend_from_slice(&TYPE_TSIG.to_be_bytes());
    wire.extend_from_slice(&CLASS_ANY.to_be_bytes());
    wire.extend_from_slice(&0u32.to_be_bytes());
    wire.extend_from_slice(&(rdata_len as u16).to_be_bytes());
    wire.extend_from_slice(&alg_wire);
    wire.extend_from_slice(&now.to_be_bytes()[2..]);
    wire.extend_from_slice(&fudge.to_be_bytes());
    wire.extend_from_slice(&(mac.len() as u16).to_be_bytes());
    wire.extend_from_slice(&mac);
    wire.extend_from_slice(&id.to_be_bytes());
    wire.extend_from_slice(&0u16.to_be_bytes()); // Error
    wire.extend_from_slice(&0u16.to_be_bytes()); // Other Len
    if wire.len() > MAX_MESSAGE {
        return Err(TsigError::TooLarge { len: wire.len() });
    }
    Ok(SignedRequest {
        wire,
        mac,
        id,
        time_signed: now,
    })
}

/// Checks the answer to `request`: it must carry a TSIG record made with
/// `key` over this answer and the request's MAC, signed within its fudge of
/// `now`. Returns the answer's ID and RCODE; a signed NOERROR is not the only
/// success — the RCODE (REFUSED, NOTZONE…) is the caller's to judge.
pub fn verify_response(
    response: &[u8],
    key: &TsigKey,
    request: &SignedRequest,
    now: u64,
) -> Result<VerifiedResponse, TsigError> {
    let parsed = wire::scan(response)?;
    let rcode = parsed.rcode;
    let Some(tsig) = parsed.tsig else {
        return Err(TsigError::Unsigned { rcode });
    };
    let rr = wire::tsig_record(response, tsig)?;
    let key_wire = wire_name(&key.name);
    let alg_wire = key.algorithm.wire_name();

    // Unsigned error answers (§5.3.2): nothing to verify.
    if rr.mac.is_empty() {
        return Err(match rr.error {
            ERR_BADKEY => TsigError::BadKey {
                key: key.name.to_string(),
            },
            ERR_BADSIG => TsigError::BadSig {
                key: key.name.to_string(),
            },
            0 => TsigError::BadMac {
                key: key.name.to_string(),
            },
            error => TsigError::ServerError {
                key: key.name.to_string(),
                error,
                rcode,
            },
        });
    }
    if rr.owner != key_wire || rr.algorithm != alg_wire {
        return Err(TsigError::WrongKey {
            expected: key.name.to_string(),
            expected_algorithm: key.algorithm,
            got: wire::display_name(&rr.owner).to_string(),
            got_algorithm: wire::display_name(&rr.algorithm).to_string(),
        });
    }
    if rr.mac.len() != key.algorithm.mac_len() {
        return Err(TsigError::TruncatedMac {
            key: key.name.to_string(),
            len: rr.mac.len(),
            expected: key.algorithm.mac_len(),
        });
    }
    if parsed.id != request.id {
        return Err(TsigError::IdMismatch {
            expected: request.id,
            got: parsed.id,
        });
    }
    if rr.original_id != request.id {
        return Err(TsigError::IdMismatch {
            expected: request.id,
            got: rr.original_id,
        });
    }

    let mut digest = Vec::with_capacity(request.mac.len() + tsig + 128);
    digest.extend_from_slice(&(request.mac.len() as u16).to_be_bytes());
    digest.extend_from_slice(&request.mac);
    let body_start = digest.len();
    digest.extend_from_slice(&response[..tsig]);
    digest[body_start..body_start + 2].copy_from_slice(&rr.original_id.to_be_bytes());
    // `scan` found the TSIG record in the additional section: ARCOUNT ≥ 1.
    let arcount = parsed.arcount.saturating_sub(1);
    digest[body_start + 10..body_start + 12].copy_from_slice(&arcount.to_be_bytes());
    Variables {
        key: &rr.owner,
        class: rr.class,
        ttl: rr.ttl,
        algorithm: &rr.algorithm,
        time_signed: rr.time_signed,
        fudge: rr.fudge,
        error: rr.error,
        other: rr.other,
    }
    .push_to(&mut digest);
    if !key.verify(&digest, rr.mac) {
        return Err(TsigError::BadMac {
            key: key.name.to_string(),
        });
    }

    match rr.error {
        0 => {}
        ERR_BADTIME => {
            let server_time = match rr.other {
                [a, b, c, d, e, f] => u64::from_be_bytes([0, 0, *a, *b, *c, *d, *e, *f]),
                _ => rr.time_signed,
            };
            return Err(TsigError::BadTime {
                key: key.name.to_string(),
                server_time,
                our_time: now,
            });
        }
        ERR_BADKEY => {
            return Err(TsigError::BadKey {
                key: key.name.to_string(),
            })
        }
        ERR_BADSIG => {
            return Err(TsigError::BadSig {
                key: key.name.to_string(),
            })
        }
        error => {
            return Err(TsigError::ServerError {
                key: key.name.to_string(),
                error,
                rcode,
            })
        }
    }
    if now.abs_diff(rr.time_signed) > u64::from(rr.fudge) {
        return Err(TsigError::TimeOutsideFudge {
            key: key.name.to_string(),
            time_signed: rr.time_signed,
            fudge: rr.fudge,
            now,
        });
    }
    Ok(VerifiedResponse {
        id: parsed.id,
        rcode,
    })
}

/// A bounds-checked walk over a DNS message, just deep enough to find the
/// TSIG record.
mod wire {
    use super::{TsigError, TYPE_OPT, TYPE_TSIG};
    use hickory_proto::rr::Name;

    fn malformed(offset: usize, reason: &'static str) -> TsigError {
        TsigError::Malformed { offset, reason }
    }

    fn u16_at(buf: &[u8], at: usize) -> Result<u16, TsigError> {
        match buf.get(at..at + 2) {
            Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
            _ => Err(malformed(at, "message ends inside a 16-bit field")),
        }
    }

    fn u32_at(buf: &[u8], at: usize) -> Result<u32, TsigError> {
        match buf.get(at..at + 4) {
            Some(&[a, b, c, d]) => Ok(u32::from_be_bytes([a, b, c, d])),
            _ => Err(malformed(at, "message ends inside a 32-bit field")),
        }
    }

    /// What `scan` learnt.
    pub(super) struct Scan {
        pub id: u16,
        pub arcount: u16,
        pub rcode: u16,
        /// Offset of the TSIG record, which is the last record.
        pub tsig: Option<usize>,
    }

    /// Reads the name at `at`; returns it in canonical wire form (lower
    /// case, pointers followed) and the offset just after it in place.
    pub(super) fn read_name(buf: &[u8], at: usize) -> Result<(Vec<u8>, usize), TsigError> {
        let mut out = Vec::new();
        let mut pos = at;
        let mut end = None;
        let mut hops = 0;
        loop {
            let len = *buf
                .get(pos)
                .ok_or_else(|| malformed(pos, "message ends inside a name"))?;
            match len {
                0 => {
                    out.push(0);
                    if out.len() > 255 {
                        return Err(malformed(at, "name longer than 255 bytes"));
                    }
                    return Ok((out, end.unwrap_or(pos + 1)));
                }
                1..=63 => {
                    let label = buf
                        .get(pos + 1..pos + 1 + usize::from(len))
                        .ok_or_else(|| malformed(pos, "message ends inside a label"))?;
                    out.push(len);
                    out.extend(label.iter().map(u8::to_ascii_lowercase));
                    if out.len() > 255 {
                        return Err(malformed(at, "name longer than 255 bytes"));
                    }
                    pos += 1 + usize::from(len);
                }
                0xC0..=0xFF => {
                    let low = *buf
                        .get(pos + 1)
                        .ok_or_else(|| malformed(pos, "message ends inside a pointer"))?;
                    let target = usize::from(u16::from_be_bytes([len & 0x3F, low]));
                    if end.is_none() {
                        end = Some(pos + 2);
                    }
                    hops += 1;
                    // A pointer must point backwards; the hop limit also stops loops.
                    if target >= pos || hops > 127 {
                        return Err(malformed(
                            pos,
                            "compression pointer does not point backwards",
                        ));
                    }
                    pos = target;
                }
                _ => return Err(malformed(pos, "unknown label type")),
            }
        }
    }

    /// Finds the answer's ID, RCODE and TSIG record, checking that every
    /// record lies inside the message and that a TSIG record is the last one.
    pub(super) fn scan(buf: &[u8]) -> Result<Scan, TsigError> {
        if buf.len() < 12 {
            return Err(malformed(buf.len(), "message shorter than a DNS header"));
        }
        let id = u16_at(buf, 0)?;
        let flags = u16_at(buf, 2)?;
        let qdcount = u16_at(buf, 4)?;
        let ancount = usize::from(u16_at(buf, 6)?);
        let nscount = usize::from(u16_at(buf, 8)?);
        let arcount = u16_at(buf, 10)?;
        let total = ancount + nscount + usize::from(arcount);
        let mut pos = 12;
        for _ in 0..qdcount {
            pos = read_name(buf, pos)?.1 + 4;
            if pos > buf.len() {
                return Err(malformed(buf.len(), "message ends inside a question"));
            }
        }
        let mut tsig = None;
        let mut extended = 0u16;
        for index in 0..total {
            let start = pos;
            pos = read_name(buf, pos)?.1;
            let rtype = u16_at(buf, pos)?;
            let ttl = u32_at(buf, pos + 4)?;
            let rdlen = usize::from(u16_at(buf, pos + 8)?);
            pos += 10 + rdlen;
            if pos > buf.len() {
                return Err(malformed(
                    start,
                    "record data runs past the end of the message",
                ));
            }
            let additional = index >= ancount + nscount;
            if rtype == TYPE_TSIG {
                if !additional || index + 1 != total {
                    return Err(malformed(
                        start,
                        "TSIG record is not the last additional record",
                    ));
                }
                tsig = Some(start);
            } else if rtype == TYPE_OPT && additional {
                extended = (ttl >> 24) as u16;
            }
        }
        if pos != buf.len() {
            return Err(malformed(pos, "bytes after the last record"));
        }
        Ok(Scan {
            id,
            arcount,
            rcode: (extended << 4) | (flags & 0x000F),
            tsig,
        })
    }

    /// The fields of a TSIG record.
    pub(super) struct TsigRecord<'a> {
        pub owner: Vec<u8>,
        pub class: u16,
        pub ttl: u32,
        pub algorithm: Vec<u8>,
        pub time_signed: u64,
        pub fudge: u16,
        pub mac: &'a [u8],
        pub original_id: u16,
        pub error: u16,
        pub other: &'a [u8],
    }

    /// Parses the TSIG record at `at` (found by `scan`).
    pub(super) fn tsig_record(buf: &[u8], at: usize) -> Result<TsigRecord<'_>, TsigError> {
        let (owner, pos) = read_name(buf, at)?;
        let class = u16_at(buf, pos + 2)?;
        let ttl = u32_at(buf, pos + 4)?;
        let rdlen = usize::from(u16_at(buf, pos + 8)?);
        let rdata_start = pos + 10;
        let rdata_end = rdata_start + rdlen;
        let (algorithm, pos) = read_name(buf, rdata_start)?;
        let time = buf
            .get(pos..pos + 6)
            .ok_or_else(|| malformed(pos, "message ends inside the TSIG time"))?;
        let time_signed = time.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        let fudge = u16_at(buf, pos + 6)?;
        let mac_len = usize::from(u16_at(buf, pos + 8)?);
        let mac_start = pos + 10;
        let mac = buf
            .get(mac_start..mac_start + mac_len)
            .ok_or_else(|| malformed(mac_start, "message ends inside the TSIG MAC"))?;
        let pos = mac_start + mac_len;
        let original_id = u16_at(buf, pos)?;
        let error = u16_at(buf, pos + 2)?;
        let other_len = usize::from(u16_at(buf, pos + 4)?);
        let other_start = pos + 6;
        let other = buf
            .get(other_start..other_start + other_len)
            .ok_or_else(|| malformed(other_start, "message ends inside the TSIG other data"))?;
        if other_start + other_len != rdata_end {
            return Err(malformed(
                rdata_start,
                "TSIG record data length does not match its fields",
            ));
        }
        Ok(TsigRecord {
            owner,
            class,
            ttl,
            algorithm,
            time_signed,
            fudge,
            mac,
            original_id,
            error,
            other,
        })
    }

    /// A wire name from `read_name` as a hickory [`Name`] (for error messages).
    pub(super) fn display_name(wire: &[u8]) -> Name {
        let mut labels = Vec::new();
        let mut pos = 0;
        while let Some(&len) = wire.get(pos) {
            if len == 0 {
                break;
            }
            if let Some(label) = wire.get(pos + 1..pos + 1 + usize::from(len)) {
                labels.push(label.to_vec());
            }
            pos += 1 + usize::from(len);
        }
        Name::from_labels(labels).unwrap_or_else(|_| Name::root())
    }
}

/// The `tsig-keygen` file format: a tiny subset of `named.conf`.
mod keyfile {
    use super::{Algorithm, TsigError, TsigKey};

    #[derive(Debug, PartialEq)]
    enum Token {
        Word(String),
        Quoted(String),
        Open,
        Close,
        Semi,
    }

    fn err(line: usize, reason: impl Into<String>) -> TsigError {
        TsigError::KeyFile {
            line,
            reason: reason.into(),
        }
    }

    fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, TsigError> {
        let mut tokens = Vec::new();
        let mut chars = text.chars().peekable();
        let mut line = 1;
        while let Some(c) = chars.next() {
            match c {
                '\n' => line += 1,
                c if c.is_whitespace() => {}
                '#' => {
                    for c in chars.by_ref() {
                        if c == '\n' {
                            line += 1;
                            break;
                        }
                    }
                }
                '/' if chars.peek() == Some(&'/') => {
                    for c in chars.by_ref() {
                        if c == '\n' {
                            line += 1;
                            break;
                        }
                    }
                }
                '/' if chars.peek() == Some(&'*') => {
                    let start = line;
                    chars.next();
                    let mut prev = ' ';
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '\n' {
                            line += 1;
                        }
                        if prev == '*' && c == '/' {
                            closed = true;
                            break;
                        }
                        prev = c;
                    }
                    if !closed {
                        return Err(err(start, "unterminated /* comment"));
                    }
                }
                '"' => {
                    let start = line;
                    let mut s = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        match c {
                            '"' => {
                                closed = true;
                                break;
                            }
                            '\n' => {
                                line += 1;
                                s.push(c);
                            }
                            c => s.push(c),
                        }
                    }
                    if !closed {
                        return Err(err(start, "unterminated quoted string"));
                    }
                    tokens.push((start, Token::Quoted(s)));
                }
                '{' => tokens.push((line, Token::Open)),
                '}' => tokens.push((line, Token::Close)),
                ';' => tokens.push((line, Token::Semi)),
                c => {
                    let mut s = String::from(c);
                    while let Some(&n) = chars.peek() {
                        if n.is_whitespace() || matches!(n, '{' | '}' | ';' | '"' | '#') {
                            break;
                        }
                        s.push(n);
                        chars.next();
                    }
                    tokens.push((line, Token::Word(s)));
                }
            }
        }
        Ok(tokens)
    }

    pub(super) fn parse(text: &str) -> Result<Vec<TsigKey>, TsigError> {
        let tokens = tokenize(text)?;
        let last_line = text.lines().count().max(1);
        let mut it = tokens.into_iter().peekable();
        let mut keys: Vec<TsigKey> = Vec::new();
        let mut next = |what: &str| -> Result<(usize, Token), TsigError> {
            it.next()
                .ok_or_else(|| err(last_line, format!("file ends, {what} expected")))
        };
        while let Ok((line, token)) = next("") {
            match token {
                Token::Word(w) if w.eq_ignore_ascii_case("key") => {}
                other => {
                    return Err(err(
                        line,
                        format!("expected `key`, found {}", describe(&other)),
                    ))
                }
            }
            let (name_line, name) = match next("a key name")? {
                (l, Token::Word(n) | Token::Quoted(n)) => (l, n),
                (l, other) => {
                    return Err(err(
                        l,
                        format!("expected a key name, found {}", describe(&other)),
                    ))
                }
            };
            match next("`{`")? {
                (_, Token::Open) => {}
                (l, other) => {
                    return Err(err(l, format!("expected `{{`, found {}", describe(&other))))
                }
            }
            let mut algorithm = None;
            let mut secret = None;
            loop {
                let (l, token) = next("`}`")?;
                let field = match token {
                    Token::Close => break,
                    Token::Word(w) => w.to_ascii_lowercase(),
                    other => {
                        return Err(err(
                            l,
                            format!(
                                "expected `algorithm`, `secret` or `}}`, found {}",
                                describe(&other)
                            ),
                        ))
                    }
                };
                let value = match next("a value")? {
                    (_, Token::Word(v) | Token::Quoted(v)) => v,
                    (l, other) => {
                        return Err(err(
                            l,
                            format!("expected a value for `{field}`, found {}", describe(&other)),
                        ))
                    }
                };
                match next("`;`")? {
                    (_, Token::Semi) => {}
                    (l, other) => {
                        return Err(err(l, format!("expected `;`, found {}", describe(&other))))
                    }
                }
                match field.as_str() {
                    "algorithm" => {
                        let alg: Algorithm = value
                            .parse()
                            .map_err(|e: TsigError| err(l, e.to_string()))?;
                        algorithm = Some(alg);
                    }
                    "secret" => {
                        let bytes = super::base64_decode(&value).ok_or_else(|| {
                            err(l, format!("secret of key {name:?} is not valid base64"))
                        })?;
                        secret = Some(bytes);
                    }
                    other => return Err(err(l, format!("unknown key statement `{other}`"))),
                }
            }
            match next("`;`")? {
                (_, Token::Semi) => {}
                (l, other) => {
                    return Err(err(
                        l,
                        format!("expected `;` after `}}`, found {}", describe(&other)),
                    ))
                }
            }
            let algorithm = algorithm
                .ok_or_else(|| err(name_line, format!("key {name:?} has no `algorithm`")))?;
            let secret =
                secret.ok_or_else(|| err(name_line, format!("key {name:?} has no `secret`")))?;
            let key = TsigKey::new(&name, algorithm, secret)
                .map_err(|e| err(name_line, e.to_string()))?;
            if keys.iter().any(|k| k.name == key.name) {
                return Err(err(name_line, format!("key {} is defined twice", key.name)));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(err(last_line, "no key found"));
        }
        Ok(keys)
    }

    fn describe(token: &Token) -> String {
        match token {
            Token::Word(w) => format!("`{w}`"),
            Token::Quoted(q) => format!("\"{q}\""),
            Token::Open => "`{`".into(),
            Token::Close => "`}`".into(),
            Token::Semi => "`;`".into(),
        }
    }
}

/// Decodes standard base64 with padding; ASCII whitespace is skipped, as BIND
/// does. `None` if the text is not base64.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    let mut padding = 0;
    let mut symbols = 0usize;
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padding += 1;
                symbols += 1;
                continue;
            }
            _ => return None,
        };
        if padding > 0 {
            return None; // data after padding
        }
        symbols += 1;
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Whole quanta only, at most two padding characters, no stray bits.
    if !symbols.is_multiple_of(4) || padding > 2 || acc != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The request and response of a capture in `tests/fixtures/tsig/`.
    fn capture(text: &str) -> (Vec<u8>, Vec<u8>) {
        let field = |label: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(label))
                .map(|h| hex(h.trim()))
                .unwrap()
        };
        (field("request "), field("response "))
    }

    const KEYS: &str = include_str!("../tests/fixtures/tsig/keys.conf");

    fn key(name: &str) -> TsigKey {
        TsigKey::parse_keygen_file(KEYS)
            .unwrap()
            .into_iter()
            .find(|k| k.name.to_string() == name)
            .unwrap()
    }

    /// Splits a signed request into the unsigned message and its TSIG time,
    /// then signs it again with `key` at that time.
    fn resign(request: &[u8], key: &TsigKey) -> SignedRequest {
        let scan = wire::scan(request).unwrap();
        let at = scan.tsig.unwrap();
        let rr = wire::tsig_record(request, at).unwrap();
        let mut message = request[..at].to_vec();
        message[10..12].copy_from_slice(&(scan.arcount - 1).to_be_bytes());
        sign(&message, key, rr.time_signed, rr.fudge).unwrap()
    }

    /// Signs `response` (no TSIG yet) the way a server answers `request`.
    fn server_sign(
        response: &[u8],
        key: &TsigKey,
        request: &SignedRequest,
        time: u64,
        error: u16,
        other: &[u8],
    ) -> Vec<u8> {
        let key_wire = wire_name(&key.name);
        let alg_wire = key.algorithm.wire_name();
        let mut digest = (request.mac.len() as u16).to_be_bytes().to_vec();
        digest.extend_from_slice(&request.mac);
        digest.extend_from_slice(response);
        Variables {
            key: &key_wire,
            class: CLASS_ANY,
            ttl: 0,
            algorithm: &alg_wire,
            time_signed: time,
            fudge: DEFAULT_FUDGE,
            error,
            other,
        }
        .push_to(&mut digest);
        let mac = key.mac(&digest);
        let mut wire = response.to_vec();
        let arcount = u16::from_be_bytes([wire[10], wire[11]]) + 1;
        wire[10..12].copy_from_slice(&arcount.to_be_bytes());
        wire.extend_from_slice(&key_wire);
        wire.extend_from_slice(&TYPE_TSIG.to_be_bytes());
        wire.extend_from_slice(&CLASS_ANY.to_be_bytes());
        wire.extend_from_slice(&0u32.to_be_bytes());
        wire.extend_from_slice(
            &((alg_wire.len() + 16 + mac.len() + other.len()) as u16).to_be_bytes(),
        );
        wire.extend_from_slice(&alg_wire);
        wire.extend_from_slice(&time.to_be_bytes()[2..]);
        wire.extend_from_slice(&DEFAULT_FUDGE.to_be_bytes());
        wire.extend_from_slice(&(mac.len() as u16).to_be_bytes());
        wire.extend_from_slice(&mac);
        wire.extend_from_slice(&request.id.to_be_bytes());
        wire.extend_from_slice(&error.to_be_bytes());
        wire.extend_from_slice(&(other.len() as u16).to_be_bytes());
        wire.extend_from_slice(other);
        wire
    }

    /// An UPDATE for example.test. with one A record, id 0x1234.
    fn update_message() -> Vec<u8> {
        hex("123428000001000000010000076578616d706c6504746573740000060001026831c00c000100010000012c0004c0000201")
    }

    /// The answer to `update_message`: header with QR set, the zone section.
    fn answer(rcode: u8) -> Vec<u8> {
        let mut a = hex("1234a8000001000000000000076578616d706c650474657374000006000100");
        a.truncate(a.len() - 1);
        a[3] |= rcode;
        a
    }

    const NOW: u64 = 1_795_419_587;

    #[test]
    fn the_keygen_file_with_several_keys_and_comments_parses() {
        let keys = TsigKey::parse_keygen_file(KEYS).unwrap();
        let summary: Vec<String> = keys
            .iter()
            .map(|k| format!("{} {}", k.name, k.algorithm))
            .collect();
        assert_eq!(
            summary,
            [
                "k-sha1. hmac-sha1",
                "k-sha224. hmac-sha224",
                "k-sha256. hmac-sha256",
                "k-sha384. hmac-sha384",
                "k-sha512. hmac-sha512"
            ]
        );
        assert_eq!(keys[2].secret.len(), 32);
        assert_eq!(keys[4].secret.len(), 64);
    }

    #[test]
    fn requests_signed_by_nsupdate_are_reproduced_byte_for_byte_and_named_answers_verify() {
        let cases = [
            (
                "k-sha1.",
                include_str!("../tests/fixtures/tsig/noerror-hmac-sha1.txt"),
            ),
            (
                "k-sha224.",
                include_str!("../tests/fixtures/tsig/noerror-hmac-sha224.txt"),
            ),
            (
                "k-sha256.",
                include_str!("../tests/fixtures/tsig/noerror-hmac-sha256.txt"),
            ),
            (
                "k-sha384.",
                include_str!("../tests/fixtures/tsig/noerror-hmac-sha384.txt"),
            ),
            (
                "k-sha512.",
                include_str!("../tests/fixtures/tsig/noerror-hmac-sha512.txt"),
            ),
        ];
        for (name, text) in cases {
            let key = key(name);
            let (request, response) = capture(text);
            let signed = resign(&request, &key);
            assert_eq!(
                signed.wire, request,
                "{name}: our signature differs from nsupdate's"
            );
            assert_eq!(
                signed.wire.len() - (request.len() - key.record_len()),
                key.record_len()
            );
            let verified =
                verify_response(&response, &key, &signed, signed.time_signed + 1).unwrap();
            assert_eq!(
                verified,
                VerifiedResponse {
                    id: signed.id,
                    rcode: 0
                },
                "{name}"
            );
        }
    }

    #[test]
    fn the_unsigned_badsig_answer_of_named_is_reported_as_bad_sig() {
        let (request, response) = capture(include_str!("../tests/fixtures/tsig/badsig.txt"));
        let wrong = TsigKey::new("k-sha256", Algorithm::HmacSha256, vec![0; 32]).unwrap();
        let signed = resign(&request, &wrong);
        assert_eq!(signed.wire, request);
        let err = verify_response(&response, &wrong, &signed, signed.time_signed).unwrap_err();
        assert_eq!(
            err,
            TsigError::BadSig {
                key: wrong.name.to_string()
            }
        );
        assert!(err.to_string().contains("secret differs"), "{err}");
    }

    #[test]
    fn the_unsigned_badkey_answer_of_named_is_reported_as_bad_key() {
        let (request, response) = capture(include_str!("../tests/fixtures/tsig/badkey.txt"));
        let real = key("k-sha256.");
        let unknown =
            TsigKey::new("k-unknown", Algorithm::HmacSha256, real.secret.clone()).unwrap();
        let signed = resign(&request, &unknown);
        assert_eq!(signed.wire, request);
        let err = verify_response(&response, &unknown, &signed, signed.time_signed).unwrap_err();
        assert_eq!(
            err,
            TsigError::BadKey {
                key: unknown.name.to_string()
            }
        );
    }

    #[test]
    fn the_signed_badtime_answer_of_named_reports_both_clocks() {
        let (request, response) = capture(include_str!("../tests/fixtures/tsig/badtime.txt"));
        let key = key("k-sha256.");
        let signed = resign(&request, &key);
        assert_eq!(
            signed.wire, request,
            "dnspython's signature differs from ours"
        );
        let err = verify_response(&response, &key, &signed, signed.time_signed).unwrap_err();
        assert_eq!(
            err,
            TsigError::BadTime {
                key: key.name.to_string(),
                server_time: 0x6b03_edc3,
                our_time: 0x6b03_e9db,
            }
        );
    }

    #[test]
    fn a_signed_notauth_answer_verifies_and_keeps_its_rcode() {
        let (request, response) =
            capture(include_str!("../tests/fixtures/tsig/notauth-signed.txt"));
        let key = key("k-sha256.");
        let signed = resign(&request, &key);
        let verified = verify_response(&response, &key, &signed, signed.time_signed).unwrap();
        assert_eq!(verified.rcode, 9);
    }

    #[test]
    fn a_tampered_answer_fails_with_bad_mac() {
        let (request, mut response) = capture(include_str!(
            "../tests/fixtures/tsig/noerror-hmac-sha256.txt"
        ));
        let key = key("k-sha256.");
        let signed = resign(&request, &key);
        response[3] |= 0x05; // NOERROR becomes REFUSED
        let err = verify_response(&response, &key, &signed, signed.time_signed).unwrap_err();
        assert_eq!(
            err,
            TsigError::BadMac {
                key: key.name.to_string()
            }
        );
    }

    #[test]
    fn an_answer_to_another_request_fails_with_bad_mac() {
        let (request, response) = capture(include_str!(
            "../tests/fixtures/tsig/noerror-hmac-sha256.txt"
        ));
        let key = key("k-sha256.");
        let mut signed = resign(&request, &key);
        signed.mac[0] ^= 1;
        let err = verify_response(&response, &key, &signed, signed.time_signed).unwrap_err();
        assert_eq!(
            err,
            TsigError::BadMac {
                key: key.name.to_string()
            }
        );
    }

    #[test]
    fn an_answer_signed_outside_the_fudge_is_refused() {
        let (request, response) = capture(include_str!(
            "../tests/fixtures/tsig/noerror-hmac-sha256.txt"
        ));
        let key = key("k-sha256.");
        let signed = resign(&request, &key);
        let late = signed.time_signed + 301;
        let err = verify_response(&response, &key, &signed, late).unwrap_err();
        assert_eq!(
            err,
            TsigError::TimeOutsideFudge {
                key: key.name.to_string(),
                time_signed: signed.time_signed,
                fudge: 300,
                now: late,
            }
        );
        assert!(verify_response(&response, &key, &signed, signed.time_signed + 300).is_ok());
    }

    #[test]
    fn a_signed_round_trip_verifies_with_every_algorithm() {
        for algorithm in Algorithm::ALL {
            let key = TsigKey::new("Round.Trip.", algorithm, b"0123456789abcdef".to_vec()).unwrap();
            let signed = sign(&update_message(), &key, NOW, DEFAULT_FUDGE).unwrap();
            assert_eq!(
                signed.wire.len(),
                update_message().len() + key.record_len(),
                "{algorithm}"
            );
            assert_eq!(&signed.wire[10..12], &[0, 1]);
            assert_eq!(signed.mac.len(), algorithm.mac_len());
            let response = server_sign(&answer(0), &key, &signed, NOW + 2, 0, &[]);
            let verified = verify_response(&response, &key, &signed, NOW + 5).unwrap();
            assert_eq!(
                verified,
                VerifiedResponse {
                    id: 0x1234,
                    rcode: 0
                }
            );
            let refused = server_sign(&answer(5), &key, &signed, NOW, 0, &[]);
            assert_eq!(
                verify_response(&refused, &key, &signed, NOW).unwrap().rcode,
                5
            );
        }
    }

    #[test]
    fn an_answer_without_tsig_is_unsigned_and_keeps_its_rcode() {
        let key = TsigKey::new("k", Algorithm::HmacSha256, vec![1; 32]).unwrap();
        let signed = sign(&update_message(), &key, NOW, DEFAULT_FUDGE).unwrap();
        let err = verify_response(&answer(9), &key, &signed, NOW).unwrap_err();
        assert_eq!(err, TsigError::Unsigned { rcode: 9 });
    }

    #[test]
    fn an_answer_signed_with_another_key_is_refused() {
        let ours = TsigKey::new("ours", Algorithm::HmacSha256, vec![1; 32]).unwrap();
        let theirs = TsigKey::new("theirs", Algorithm::HmacSha512, vec![1; 32]).unwrap();
        let signed = sign(&update_message(), &ours, NOW, DEFAULT_FUDGE).unwrap();
        let response = server_sign(&answer(0), &theirs, &signed, NOW, 0, &[]);
        let err = verify_response(&response, &ours, &signed, NOW).unwrap_err();
        assert!(
            matches!(&err, TsigError::WrongKey { got, got_algorithm, .. }
            if got == "theirs." && got_algorithm == "hmac-sha512."),
            "{err:?}"
        );
    }

    #[test]
    fn an_answer_with_another_id_is_refused() {
        let key = TsigKey::new("k", Algorithm::HmacSha256, vec![1; 32]).unwrap();
        let signed = sign(&update_message(), &key, NOW, DEFAULT_FUDGE).unwrap();
        let mut other = answer(0);
        other[0] = 0x99;
        let response = server_sign(&other, &key, &signed, NOW, 0, &[]);
        let err = verify_response(&response, &key, &signed, NOW).unwrap_err();
        assert_eq!(
            err,
            TsigError::IdMismatch {
                expected: 0x1234,
                got: 0x9934
            }
        );
    }

    #[test]
    fn a_signed_answer_with_another_tsig_error_is_reported_with_it() {
        let key = TsigKey::new("k", Algorithm::HmacSha256, vec![1; 32]).unwrap();
        let signed = sign(&update_message(), &key, NOW, DEFAULT_FUDGE).unwrap();
        let response = server_sign(&answer(9), &key, &signed, NOW, 22, &[]);
        let err = verify_response(&response, &key, &signed, NOW).unwrap_err();
        assert_eq!(
            err,
            TsigError::ServerError {
                key: key.name.to_string(),
                error: 22,
                rcode: 9
            }
        );
    }

    #[test]
    fn a_tsig_record_that_is_not_last_is_malformed() {
        let key = TsigKey::new("k", Algorithm::HmacSha256, vec![1; 32]).unwrap();
        let signed = sign(&update_message(), &key, NOW, DEFAULT_FUDGE).unwrap();
        let mut response = server_sign(&answer(0), &key, &signed, NOW, 0, &[]);
        // Append an A record after the TSIG.
        response.extend_from_slice(&hex("c00c000100010000012c0004c0000201"));
        response[11] += 1;
        let err = verify_response(&response, &key, &signed, NOW).unwrap_err();
        assert!(
            matches!(err, TsigError::Malformed { reason, .. } if reason.contains("not the last")),
            "{err:?}"
        );
    }

    #[test]
    fn record_len_is_what_signing_adds() {
        for algorithm in Algorithm::ALL {
            for name in ["k", "ddns-key", "a.much.longer.key.name.example"] {
                let key = TsigKey::new(name, algorithm, vec![7; 16]).unwrap();
                let signed = sign(&update_message(), &key, NOW, DEFAULT_FUDGE).unwrap();
                assert_eq!(signed.wire.len() - update_message().len(), key.record_len());
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
        assert_eq!(
            "hmac-md5".parse::<Algorithm>().unwrap_err(),
            TsigError::UnknownAlgorithm("hmac-md5".into())
        );
    }

    #[test]
    fn key_file_mistakes_are_reported_with_their_line() {
        let cases = [
            ("key \"a\" {\n algorithm hmac-sha256;\n};\n", 1, "no `secret`"),
            ("key \"a\" {\n algorithm hmac-md5;\n secret \"AAAA\";\n};", 2, "unsupported TSIG algorithm"),
            ("# c\nkey a {\n algorithm hmac-sha1;\n secret \"AA!A\";\n};", 4, "not valid base64"),
            ("key a {\n algorithm hmac-sha1\n secret \"AAAA\";\n};", 3, "expected `;`"),
            ("/* open\n\nkey a {};", 1, "unterminated"),
            ("options { };", 1, "expected `key`"),
            ("", 1, "no key found"),
            ("key a { algorithm hmac-sha1; secret \"AAAA\"; };\nkey A { algorithm hmac-sha1; secret \"AAAA\"; };", 2, "defined twice"),
            ("key a { algorithm hmac-sha1; secret \"AAAA\"; }", 1, "file ends"),
        ];
        for (text, line, reason) in cases {
            match TsigKey::parse_keygen_file(text) {
                Err(TsigError::KeyFile { line: l, reason: r }) => {
                    assert_eq!(l, line, "{text:?}: {r}");
                    assert!(r.contains(reason), "{text:?}: {r}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn signing_needs_a_header_and_a_48_bit_time() {
        let key = TsigKey::new("k", Algorithm::HmacSha256, vec![1; 32]).unwrap();
        assert!(matches!(
            sign(&[0; 11], &key, NOW, 300),
            Err(TsigError::Malformed { offset: 11, .. })
        ));
        assert_eq!(
            sign(&update_message(), &key, 1 << 48, 300),
            Err(TsigError::TimeOutOfRange { now: 1 << 48 })
        );
        let mut full = update_message();
        full[10] = 0xFF;
        full[11] = 0xFF;
        assert!(matches!(
            sign(&full, &key, NOW, 300),
            Err(TsigError::Malformed { offset: 10, .. })
        ));
    }

    proptest! {
        #[test]
        fn verify_response_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let key = TsigKey::new("k", Algorithm::HmacSha256, vec![1; 32]).unwrap();
            let signed = sign(&update_message(), &key, NOW, DEFAULT_FUDGE).unwrap();
            let _ = verify_response(&bytes, &key, &signed, NOW);
        }

        #[test]
        fn verify_response_never_panics_on_a_damaged_answer(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cut in any::<usize>(),
        ) {
            let (request, mut response) = capture(include_str!("../tests/fixtures/tsig/badtime.txt"));
            let key = key("k-sha256.");
            let signed = resign(&request, &key);
            for (at, byte) in flips {
                let at = at % response.len();
                response[at] = byte;
            }
            response.truncate(cut % (response.len() + 1));
            let _ = verify_response(&response, &key, &signed, NOW);
        }

        #[test]
        fn sign_never_panics_and_adds_exactly_record_len(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let key = TsigKey::new("k", Algorithm::HmacSha1, vec![1; 20]).unwrap();
            if let Ok(signed) = sign(&bytes, &key, NOW, DEFAULT_FUDGE) {
                prop_assert_eq!(signed.wire.len(), bytes.len() + key.record_len());
            }
        }

        #[test]
        fn the_key_file_parser_never_panics(text in "\\PC{0,200}") {
            let _ = TsigKey::parse_keygen_file(&text);
        }

        #[test]
        fn base64_decoding_agrees_with_the_base64_crate(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            use base64::Engine as _;
            let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
            prop_assert_eq!(base64_decode(&text), Some(bytes));
        }
    }
}
