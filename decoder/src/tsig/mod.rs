//! TSIG (RFC 8945): signing UPDATE requests and verifying the server's
//! answers, one answer or a zone transfer's stream of them.
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
//! That is [`sign`].
//!
//! Response (§4.3.1, §5.4): the digest is `len(request MAC) ‖ request MAC ‖
//! response with ID := Original ID, ARCOUNT − 1 and the TSIG record removed ‖
//! TSIG variables`, where the variables now hold the response's Error and
//! Other Data. The MAC is compared in constant time, then the time:
//! |now − Time Signed| must be within the Fudge. That is [`verify_response`].
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
//! Measured against BIND 9.18 and Knot 3.2 (see `docs/notes/dns-servers.md` §3):
//! Knot answers NOTAUTH *without* any TSIG record for a zone it does not serve;
//! that is [`TsigError::Unsigned`], which keeps the RCODE.
//!
//! # Zone transfers: a stream of answers
//!
//! An AXFR answer spans several messages on one TCP connection (§5.3.1). A
//! client "MUST accept up to 99 intermediary messages without a TSIG and MUST
//! verify that both the first and last message contain a TSIG". The first
//! message is verified like a single answer; each later signed message's MAC
//! covers
//!
//! ```text
//!  len(previous MAC) ‖ previous MAC ‖ the unsigned messages since, as received
//!  ‖ this message (ID := Original ID, ARCOUNT − 1, TSIG record removed)
//!  ‖ Time Signed ‖ Fudge
//! ```
//!
//! so the chain of MACs authenticates every message and their order.
//! [`StreamVerifier`] keeps that chain; its `finish` refuses a stream whose
//! last message is unsigned.
//!
//! # Algorithms
//!
//! hmac-sha1, hmac-sha256, hmac-sha384 and hmac-sha512 use `ring`; hmac-sha224
//! uses the RustCrypto `hmac` and `sha2` crates because `ring` has no SHA-224
//! HMAC. hmac-md5 is not supported. Truncated MACs (§5.2.2.1) are neither sent
//! nor accepted: BIND and Knot send full-length MACs.
//!
//! # Layout
//!
//! `key`: algorithms, keys and [`KeyError`]; `keyfile`: the file
//! `tsig-keygen` writes; `wire`: the bounds-checked walk over a DNS message
//! and the TSIG record's layout; `sign` and `verify`: the two sides of the
//! MAC.

mod key;
mod keyfile;
mod sign;
mod verify;
mod wire;

#[cfg(test)]
mod fixtures;

pub use key::{Algorithm, KeyError, TsigKey};
pub use sign::{sign, SignedRequest};
pub use verify::{verify_response, StreamVerifier, VerifiedMessage, VerifiedResponse};

/// The RCODE an answer is judged by, the one rule of every exchange pg2dns
/// has with a server (the stream's UPDATEs, reconcile's repairs, transfers):
/// a verified answer's RCODE, or an *unsigned error* answer's (BADKEY and
/// BADSIG come unsigned, RFC 8945 §5.3.2; Knot's NOTAUTH for a zone it does
/// not serve and PowerDNS's for a key it does not know carry no TSIG). An
/// unsigned NOERROR is never success: it stays the error it is, as does
/// every other verification failure. `verified` is the verifier's result
/// reduced to its RCODE.
pub fn judged_rcode(verified: Result<u16, TsigError>) -> Result<u16, TsigError> {
    match verified {
        Err(TsigError::Unsigned { rcode }) if rcode != 0 => Ok(rcode),
        other => other,
    }
}

/// The fudge pg2dns puts in its requests: the ±5 minutes RFC 8945 §10
/// recommends ("a fudge value of 300 seconds is recommended").
pub const DEFAULT_FUDGE: u16 = 300;

/// Why a message could not be signed, or an answer not trusted.
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
    /// More unsigned messages in a row than RFC 8945 §5.3.1 lets a stream
    /// carry (99).
    #[error(
        "message {message} of the stream is the 100th in a row without a TSIG record for key {key}"
    )]
    TooManyUnsigned {
        /// Our key's name.
        key: String,
        /// The offending message's position in the stream, from 1.
        message: usize,
    },
    /// The stream ended on unsigned messages, which nothing authenticates.
    #[error("the last {unsigned} messages of the stream carry no TSIG record for key {key}: the stream is incomplete or was tampered with")]
    UnsignedEnd {
        /// Our key's name.
        key: String,
        /// How many messages at the end are unsigned.
        unsigned: usize,
    },
    /// The stream ended before its first message.
    #[error("the stream has no message")]
    EmptyStream,
    /// The message does not parse.
    #[error("malformed DNS message at byte {offset}: {reason}")]
    Malformed {
        /// Where parsing stopped.
        offset: usize,
        /// What was wrong.
        reason: &'static str,
    },
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

#[cfg(test)]
mod judged_rcode_tests {
    use super::{judged_rcode, TsigError};

    #[test]
    fn an_unsigned_error_answer_is_judged_by_its_rcode_and_an_unsigned_noerror_never_succeeds() {
        assert_eq!(judged_rcode(Ok(0)), Ok(0));
        assert_eq!(judged_rcode(Ok(5)), Ok(5));
        assert_eq!(judged_rcode(Err(TsigError::Unsigned { rcode: 9 })), Ok(9));
        assert_eq!(
            judged_rcode(Err(TsigError::Unsigned { rcode: 0 })),
            Err(TsigError::Unsigned { rcode: 0 })
        );
        let forged = TsigError::BadMac { key: "k.".into() };
        assert_eq!(judged_rcode(Err(forged.clone())), Err(forged));
    }
}
