//! Verifying the server's answer (RFC 8945 §5.3, §5.4), or the stream of
//! answers of a zone transfer (§5.3.1).

use super::wire::{self, wire_name, Scan, Variables, ERR_BADKEY, ERR_BADSIG, ERR_BADTIME};
use super::{SignedRequest, TsigError, TsigKey};

/// RFC 8945 §5.3.1: "up to 99 intermediary messages without a TSIG".
const MAX_UNSIGNED_IN_A_ROW: usize = 99;

/// A correctly signed answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifiedResponse {
    /// The answer's message ID.
    pub id: u16,
    /// The RCODE: the header's four bits, extended by an OPT record's upper
    /// eight bits when the answer has one (RFC 6891 §6.1.3).
    pub rcode: u16,
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
    let scan = wire::scan(response)?;
    let Some(at) = scan.tsig else {
        return Err(TsigError::Unsigned { rcode: scan.rcode });
    };
    let prefix = mac_prefix(&request.mac);
    let chain = Chain {
        key,
        id: request.id,
        prefix: &prefix,
        covers: Covers::All,
    };
    verify_signed(response, &scan, at, &chain, now)?;
    Ok(VerifiedResponse {
        id: scan.id,
        rcode: scan.rcode,
    })
}

/// One message of a stream that [`StreamVerifier::verify`] accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifiedMessage {
    /// The message ID.
    pub id: u16,
    /// The RCODE, as in [`VerifiedResponse::rcode`].
    pub rcode: u16,
    /// How many messages this message's MAC vouches for: itself and the
    /// unsigned messages received since the previous signed one. 0 for an
    /// unsigned message, which nothing vouches for until a later signed
    /// message verifies; do not act on its content before.
    pub authenticated: usize,
}

/// Verifies the answers to one request that arrive as several messages on a
/// TCP connection, as a zone transfer does (RFC 8945 §5.3.1).
///
/// Feed every message to [`verify`](StreamVerifier::verify) in the order
/// received, then call [`finish`](StreamVerifier::finish) at the end of the
/// transfer. The first message must be signed and is checked like
/// [`verify_response`] checks a single answer; up to 99 unsigned messages
/// may follow one another, each signed message vouching for those before
/// it; the last must be signed. Once a message fails, every later call
/// returns the same error: "If a client TSIG verification fails, the client
/// MUST close the connection."
///
/// The unsigned messages are kept until the next signed one (at most 99 of
/// 65 535 bytes).
#[derive(Clone, Debug)]
pub struct StreamVerifier {
    key: TsigKey,
    id: u16,
    /// What the next signed message's digest starts with: the previous MAC
    /// (with its length), then the unsigned messages received since.
    prefix: Vec<u8>,
    /// Whether a signed message has been verified yet.
    started: bool,
    /// Unsigned messages since the last signed one.
    unsigned: usize,
    /// Messages seen.
    messages: usize,
    /// The error that ended the stream.
    failed: Option<TsigError>,
}

impl StreamVerifier {
    /// Starts verifying the answers to `request`, which was signed with `key`.
    pub fn new(request: &SignedRequest, key: &TsigKey) -> StreamVerifier {
        StreamVerifier {
            key: key.clone(),
            id: request.id,
            prefix: mac_prefix(&request.mac),
            started: false,
            unsigned: 0,
            messages: 0,
            failed: None,
        }
    }

    /// Checks the next message of the stream at time `now`.
    pub fn verify(&mut self, message: &[u8], now: u64) -> Result<VerifiedMessage, TsigError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.next(message, now);
        if let Err(error) = &result {
            self.failed = Some(error.clone());
        }
        result
    }

    /// Ends the stream: an error if it failed, had no message, or ended on
    /// unsigned messages, which nothing authenticates.
    pub fn finish(&self) -> Result<(), TsigError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if self.messages == 0 {
            return Err(TsigError::EmptyStream);
        }
        if self.unsigned > 0 {
            return Err(TsigError::UnsignedEnd {
                key: self.key.name.to_string(),
                unsigned: self.unsigned,
            });
        }
        Ok(())
    }

    fn next(&mut self, message: &[u8], now: u64) -> Result<VerifiedMessage, TsigError> {
        let scan = wire::scan(message)?;
        self.messages += 1;
        let Some(at) = scan.tsig else {
            if !self.started {
                return Err(TsigError::Unsigned { rcode: scan.rcode });
            }
            if scan.id != self.id {
                return Err(TsigError::IdMismatch {
                    expected: self.id,
                    got: scan.id,
                });
            }
            if self.unsigned == MAX_UNSIGNED_IN_A_ROW {
                return Err(TsigError::TooManyUnsigned {
                    key: self.key.name.to_string(),
                    message: self.messages,
                });
            }
            self.unsigned += 1;
            self.prefix.extend_from_slice(message);
            return Ok(VerifiedMessage {
                id: scan.id,
                rcode: scan.rcode,
                authenticated: 0,
            });
        };
        let chain = Chain {
            key: &self.key,
            id: self.id,
            prefix: &self.prefix,
            covers: if self.started {
                Covers::Timers
            } else {
                Covers::All
            },
        };
        let mac = verify_signed(message, &scan, at, &chain, now)?;
        let authenticated = self.unsigned + 1;
        self.prefix = mac_prefix(mac);
        self.started = true;
        self.unsigned = 0;
        Ok(VerifiedMessage {
            id: scan.id,
            rcode: scan.rcode,
            authenticated,
        })
    }
}

/// `len(mac) ‖ mac`: how a MAC enters the digest of the answer to it.
fn mac_prefix(mac: &[u8]) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(mac.len() + 2);
    prefix.extend_from_slice(&(mac.len() as u16).to_be_bytes());
    prefix.extend_from_slice(mac);
    prefix
}

/// What the digest covers after the message.
#[derive(Clone, Copy)]
enum Covers {
    /// All the TSIG variables: a single answer, or the first of a stream.
    All,
    /// Only Time Signed and Fudge: a later message of a stream.
    Timers,
}

/// What a signed answer must match.
struct Chain<'a> {
    key: &'a TsigKey,
    /// The request's ID.
    id: u16,
    /// What the digest covers before the message.
    prefix: &'a [u8],
    covers: Covers,
}

/// Checks the signed answer `message`, whose TSIG record `scan` found at
/// `at`, against `chain`; returns its MAC.
fn verify_signed<'m>(
    message: &'m [u8],
    scan: &Scan,
    at: usize,
    chain: &Chain<'_>,
    now: u64,
) -> Result<&'m [u8], TsigError> {
    let key = chain.key;
    let rr = wire::tsig_record(message, at)?;
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
                rcode: scan.rcode,
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
    if scan.id != chain.id {
        return Err(TsigError::IdMismatch {
            expected: chain.id,
            got: scan.id,
        });
    }
    if rr.original_id != chain.id {
        return Err(TsigError::IdMismatch {
            expected: chain.id,
            got: rr.original_id,
        });
    }

    let mut digest = Vec::with_capacity(chain.prefix.len() + at + 128);
    digest.extend_from_slice(chain.prefix);
    let body_start = digest.len();
    digest.extend_from_slice(&message[..at]);
    digest[body_start..body_start + 2].copy_from_slice(&rr.original_id.to_be_bytes());
    // `scan` found the TSIG record in the additional section: ARCOUNT ≥ 1.
    let arcount = scan.arcount.saturating_sub(1);
    digest[body_start + 10..body_start + 12].copy_from_slice(&arcount.to_be_bytes());
    let variables = Variables {
        key: &rr.owner,
        class: rr.class,
        ttl: rr.ttl,
        algorithm: &rr.algorithm,
        time_signed: rr.time_signed,
        fudge: rr.fudge,
        error: rr.error,
        other: rr.other,
    };
    match chain.covers {
        Covers::All => variables.push_to(&mut digest),
        Covers::Timers => variables.push_timers_to(&mut digest),
    }
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
                rcode: scan.rcode,
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
    Ok(rr.mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsig::fixtures::{
        answer, capture, capture_all, hex, key, resign, server_sign, server_sign_stream,
        update_message, NOW,
    };
    use crate::tsig::{sign, Algorithm, DEFAULT_FUDGE};
    use proptest::prelude::*;

    #[test]
    fn requests_signed_by_nsupdate_are_reproduced_byte_for_byte_and_named_answers_verify() {
        let cases = [
            (
                "k-sha1.",
                include_str!("../../tests/fixtures/tsig/noerror-hmac-sha1.txt"),
            ),
            (
                "k-sha224.",
                include_str!("../../tests/fixtures/tsig/noerror-hmac-sha224.txt"),
            ),
            (
                "k-sha256.",
                include_str!("../../tests/fixtures/tsig/noerror-hmac-sha256.txt"),
            ),
            (
                "k-sha384.",
                include_str!("../../tests/fixtures/tsig/noerror-hmac-sha384.txt"),
            ),
            (
                "k-sha512.",
                include_str!("../../tests/fixtures/tsig/noerror-hmac-sha512.txt"),
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
        let (request, response) = capture(include_str!("../../tests/fixtures/tsig/badsig.txt"));
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
        let (request, response) = capture(include_str!("../../tests/fixtures/tsig/badkey.txt"));
        let real = key("k-sha256.");
        let unknown =
            TsigKey::new("k-unknown", Algorithm::HmacSha256, real.secret().to_vec()).unwrap();
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
        let (request, response) = capture(include_str!("../../tests/fixtures/tsig/badtime.txt"));
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
            capture(include_str!("../../tests/fixtures/tsig/notauth-signed.txt"));
        let key = key("k-sha256.");
        let signed = resign(&request, &key);
        let verified = verify_response(&response, &key, &signed, signed.time_signed).unwrap();
        assert_eq!(verified.rcode, 9);
    }

    #[test]
    fn a_tampered_answer_fails_with_bad_mac() {
        let (request, mut response) = capture(include_str!(
            "../../tests/fixtures/tsig/noerror-hmac-sha256.txt"
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
            "../../tests/fixtures/tsig/noerror-hmac-sha256.txt"
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
            "../../tests/fixtures/tsig/noerror-hmac-sha256.txt"
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

    const AXFR: &str = include_str!("../../tests/fixtures/tsig/axfr-hmac-sha256.txt");

    /// The answer to an AXFR for example.test. with id 0x1234: `records`
    /// copies of an A record in the answer section.
    fn axfr_message(records: u16) -> Vec<u8> {
        let mut m = hex("123484000001000000000000076578616d706c6504746573740000fc0001");
        m[6..8].copy_from_slice(&records.to_be_bytes());
        for _ in 0..records {
            m.extend_from_slice(&hex("c00c000100010000012c0004c0000201"));
        }
        m
    }

    /// A request (any signed message with id 0x1234) and a stream of
    /// answers to it, signed where `pattern` has an `S`, unsigned where a `U`.
    fn stream(key: &TsigKey, pattern: &str) -> (SignedRequest, Vec<Vec<u8>>) {
        let request = sign(&update_message(), key, NOW, DEFAULT_FUDGE).unwrap();
        let messages: Vec<(Vec<u8>, bool)> = pattern
            .chars()
            .enumerate()
            .map(|(i, c)| (axfr_message(i as u16 % 3 + 1), c == 'S'))
            .collect();
        let signed = server_sign_stream(&messages, key, &request, NOW);
        (request, signed)
    }

    fn sha256_key() -> TsigKey {
        TsigKey::new("xfr-key", Algorithm::HmacSha256, vec![9; 32]).unwrap()
    }

    /// Verifies every message; returns each one's `authenticated` count or the
    /// first error, and what `finish` said.
    fn run(
        key: &TsigKey,
        request: &SignedRequest,
        messages: &[Vec<u8>],
    ) -> (Result<Vec<usize>, TsigError>, Result<(), TsigError>) {
        let mut verifier = StreamVerifier::new(request, key);
        let counts = messages
            .iter()
            .map(|m| verifier.verify(m, NOW).map(|v| v.authenticated))
            .collect();
        (counts, verifier.finish())
    }

    #[test]
    fn the_signed_axfr_of_named_verifies_message_by_message() {
        let (request, responses) = capture_all(AXFR);
        assert_eq!(responses.len(), 7);
        let key = key("k-sha256.");
        let signed = resign(&request, &key);
        assert_eq!(signed.wire, request, "dig's signature differs from ours");
        let mut verifier = StreamVerifier::new(&signed, &key);
        for response in &responses {
            let verified = verifier.verify(response, signed.time_signed).unwrap();
            assert_eq!(
                verified,
                VerifiedMessage {
                    id: signed.id,
                    rcode: 0,
                    authenticated: 1
                }
            );
        }
        verifier.finish().unwrap();
    }

    #[test]
    fn the_first_axfr_message_of_named_is_also_a_valid_single_answer() {
        let (request, responses) = capture_all(AXFR);
        let key = key("k-sha256.");
        let signed = resign(&request, &key);
        assert!(verify_response(&responses[0], &key, &signed, signed.time_signed).is_ok());
        // A later message is chained to the previous MAC, not to the request's.
        assert_eq!(
            verify_response(&responses[1], &key, &signed, signed.time_signed),
            Err(TsigError::BadMac {
                key: key.name.to_string()
            })
        );
    }

    #[test]
    fn named_axfr_messages_out_of_order_fail_with_bad_mac() {
        let (request, mut responses) = capture_all(AXFR);
        let key = key("k-sha256.");
        let signed = resign(&request, &key);
        responses.swap(2, 3);
        let mut verifier = StreamVerifier::new(&signed, &key);
        verifier.verify(&responses[0], signed.time_signed).unwrap();
        verifier.verify(&responses[1], signed.time_signed).unwrap();
        let bad_mac = TsigError::BadMac {
            key: key.name.to_string(),
        };
        assert_eq!(
            verifier.verify(&responses[2], signed.time_signed),
            Err(bad_mac.clone())
        );
        assert_eq!(
            verifier.verify(&responses[3], signed.time_signed),
            Err(bad_mac.clone()),
            "a failed stream stays failed"
        );
        assert_eq!(verifier.finish(), Err(bad_mac));
    }

    #[test]
    fn a_named_axfr_cut_short_still_finishes_on_a_signed_message() {
        // Each of named's messages is signed, so any prefix verifies; only
        // the caller, who sees the closing SOA, knows the transfer is whole.
        let (request, responses) = capture_all(AXFR);
        let key = key("k-sha256.");
        let signed = resign(&request, &key);
        let mut verifier = StreamVerifier::new(&signed, &key);
        for response in &responses[..3] {
            verifier.verify(response, signed.time_signed).unwrap();
        }
        assert_eq!(verifier.finish(), Ok(()));
    }

    #[test]
    fn unsigned_messages_are_authenticated_by_the_next_signed_one() {
        let key = sha256_key();
        let (request, messages) = stream(&key, "SUUSUSS");
        let (counts, finish) = run(&key, &request, &messages);
        assert_eq!(counts, Ok(vec![1, 0, 0, 3, 0, 2, 1]));
        assert_eq!(finish, Ok(()));
    }

    #[test]
    fn every_algorithm_chains_its_macs() {
        for algorithm in Algorithm::ALL {
            let key = TsigKey::new("xfr", algorithm, b"0123456789abcdef".to_vec()).unwrap();
            let (request, messages) = stream(&key, "SSUS");
            let (counts, finish) = run(&key, &request, &messages);
            assert_eq!(counts, Ok(vec![1, 1, 0, 2]), "{algorithm}");
            assert_eq!(finish, Ok(()), "{algorithm}");
        }
    }

    #[test]
    fn a_stream_that_ends_unsigned_does_not_finish() {
        let key = sha256_key();
        let (request, messages) = stream(&key, "SSUU");
        let (counts, finish) = run(&key, &request, &messages);
        assert_eq!(counts, Ok(vec![1, 1, 0, 0]));
        assert_eq!(
            finish,
            Err(TsigError::UnsignedEnd {
                key: "xfr-key.".into(),
                unsigned: 2
            })
        );
    }

    #[test]
    fn ninety_nine_unsigned_messages_in_a_row_pass_and_the_hundredth_fails() {
        let key = sha256_key();
        let ok = format!("S{}S", "U".repeat(99));
        let (request, messages) = stream(&key, &ok);
        let (counts, finish) = run(&key, &request, &messages);
        assert_eq!(counts.unwrap()[100], 100);
        assert_eq!(finish, Ok(()));

        let too_many = format!("S{}S", "U".repeat(100));
        let (request, messages) = stream(&key, &too_many);
        let (counts, finish) = run(&key, &request, &messages);
        let expected = TsigError::TooManyUnsigned {
            key: "xfr-key.".into(),
            message: 101,
        };
        assert_eq!(counts, Err(expected.clone()));
        assert_eq!(finish, Err(expected));
    }

    #[test]
    fn a_tampered_unsigned_message_fails_the_next_signed_one() {
        let key = sha256_key();
        let (request, mut messages) = stream(&key, "SUS");
        let last = messages[1].len() - 1;
        messages[1][last] ^= 1; // the last A record's address
        let mut verifier = StreamVerifier::new(&request, &key);
        verifier.verify(&messages[0], NOW).unwrap();
        assert_eq!(verifier.verify(&messages[1], NOW).unwrap().authenticated, 0);
        assert_eq!(
            verifier.verify(&messages[2], NOW),
            Err(TsigError::BadMac {
                key: "xfr-key.".into()
            })
        );
    }

    #[test]
    fn a_dropped_unsigned_message_fails_the_next_signed_one() {
        let key = sha256_key();
        let (request, mut messages) = stream(&key, "SUUS");
        messages.remove(2);
        let (counts, _) = run(&key, &request, &messages);
        assert_eq!(
            counts,
            Err(TsigError::BadMac {
                key: "xfr-key.".into()
            })
        );
    }

    #[test]
    fn a_stream_must_start_with_a_signed_message() {
        let key = sha256_key();
        let (request, messages) = stream(&key, "US");
        let (counts, finish) = run(&key, &request, &messages);
        assert_eq!(counts, Err(TsigError::Unsigned { rcode: 0 }));
        assert_eq!(finish, Err(TsigError::Unsigned { rcode: 0 }));
    }

    #[test]
    fn an_unsigned_message_with_another_id_is_refused() {
        let key = sha256_key();
        let (request, mut messages) = stream(&key, "SUS");
        messages[1][0] = 0x99;
        let (counts, _) = run(&key, &request, &messages);
        assert_eq!(
            counts,
            Err(TsigError::IdMismatch {
                expected: 0x1234,
                got: 0x9934
            })
        );
    }

    #[test]
    fn a_later_message_outside_the_fudge_is_refused() {
        let key = sha256_key();
        let (request, messages) = stream(&key, "SS");
        let mut verifier = StreamVerifier::new(&request, &key);
        verifier.verify(&messages[0], NOW).unwrap();
        assert_eq!(
            verifier.verify(&messages[1], NOW + 301),
            Err(TsigError::TimeOutsideFudge {
                key: "xfr-key.".into(),
                time_signed: NOW,
                fudge: DEFAULT_FUDGE,
                now: NOW + 301
            })
        );
    }

    #[test]
    fn an_empty_stream_does_not_finish() {
        let key = sha256_key();
        let request = sign(&update_message(), &key, NOW, DEFAULT_FUDGE).unwrap();
        assert_eq!(
            StreamVerifier::new(&request, &key).finish(),
            Err(TsigError::EmptyStream)
        );
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
            let (request, mut response) = capture(include_str!("../../tests/fixtures/tsig/badtime.txt"));
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
        fn the_first_message_of_a_stream_is_judged_like_a_single_answer(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
            now in NOW - 400..NOW + 400,
        ) {
            let key = key("k-sha256.");
            let (request, mut responses) = capture_all(AXFR);
            let signed = resign(&request, &key);
            let response = &mut responses[0];
            for (at, byte) in flips {
                let at = at % response.len();
                response[at] = byte;
            }
            let single = verify_response(response, &key, &signed, now);
            let streamed = StreamVerifier::new(&signed, &key).verify(response, now);
            prop_assert_eq!(
                single,
                streamed.map(|v| VerifiedResponse { id: v.id, rcode: v.rcode })
            );
        }

        #[test]
        fn stream_verification_never_panics_on_damaged_messages(
            flips in proptest::collection::vec((any::<usize>(), any::<usize>(), any::<u8>()), 1..4),
            cut in any::<usize>(),
        ) {
            let key = sha256_key();
            let (request, mut messages) = stream(&key, "SUSUS");
            for (which, at, byte) in flips {
                let message = &mut messages[which % 5];
                let at = at % message.len();
                message[at] = byte;
            }
            let which = cut % 5;
            let len = messages[which].len();
            messages[which].truncate(cut % (len + 1));
            let _ = run(&key, &request, &messages);
        }
    }
}
