//! Test fixtures: the captures in `tests/fixtures/tsig/`, and the server's
//! side of TSIG, so that tests can sign answers and streams themselves.

use super::wire::{self, wire_name, Variables, CLASS_ANY};
use super::{sign, SignedRequest, TsigKey, DEFAULT_FUDGE};

/// The keys of the captures, as `tsig-keygen` wrote them.
pub(super) const KEYS: &str = include_str!("../../tests/fixtures/tsig/keys.conf");

/// A time (seconds since the epoch) for tests that sign their own messages.
pub(super) const NOW: u64 = 1_795_419_587;

/// Bytes from hexadecimal text.
pub(super) fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// The request and every response of a capture, in order.
pub(super) fn capture_all(text: &str) -> (Vec<u8>, Vec<Vec<u8>>) {
    let field = |label: &str| -> Vec<Vec<u8>> {
        text.lines()
            .filter_map(|l| l.strip_prefix(label))
            .map(|h| hex(h.trim()))
            .collect()
    };
    let mut requests = field("request ");
    assert_eq!(requests.len(), 1, "a capture has one request");
    (requests.remove(0), field("response "))
}

/// The request and the (first) response of a capture.
pub(super) fn capture(text: &str) -> (Vec<u8>, Vec<u8>) {
    let (request, mut responses) = capture_all(text);
    (request, responses.remove(0))
}

/// The key of `KEYS` named `name` (fully qualified).
pub(super) fn key(name: &str) -> TsigKey {
    TsigKey::parse_keygen_file(KEYS)
        .unwrap()
        .into_iter()
        .find(|k| k.name.to_string() == name)
        .unwrap()
}

/// Splits a signed request into the unsigned message and its TSIG time,
/// then signs it again with `key` at that time.
pub(super) fn resign(request: &[u8], key: &TsigKey) -> SignedRequest {
    let scan = wire::scan(request).unwrap();
    let at = scan.tsig.unwrap();
    let rr = wire::tsig_record(request, at).unwrap();
    let mut message = request[..at].to_vec();
    message[10..12].copy_from_slice(&(scan.arcount - 1).to_be_bytes());
    sign(&message, key, rr.time_signed, rr.fudge).unwrap()
}

/// What the digest covers after the message.
enum Covers<'a> {
    /// All the TSIG variables, with this Error and Other Data: a single
    /// answer, or the first of a stream.
    All { error: u16, other: &'a [u8] },
    /// Only the timers: a later message of a stream.
    Timers,
}

/// Appends a TSIG record to `message` (no TSIG yet) whose MAC covers
/// `prefix ‖ message ‖ variables`; returns the signed message and its MAC.
fn append_tsig(
    message: &[u8],
    key: &TsigKey,
    original_id: u16,
    prefix: &[u8],
    time: u64,
    covers: Covers<'_>,
) -> (Vec<u8>, Vec<u8>) {
    let (error, other) = match covers {
        Covers::All { error, other } => (error, other),
        Covers::Timers => (0, &[][..]),
    };
    let key_wire = wire_name(&key.name);
    let alg_wire = key.algorithm.wire_name();
    let variables = Variables {
        key: &key_wire,
        class: CLASS_ANY,
        ttl: 0,
        algorithm: &alg_wire,
        time_signed: time,
        fudge: DEFAULT_FUDGE,
        error,
        other,
    };
    let mut digest = prefix.to_vec();
    digest.extend_from_slice(message);
    match covers {
        Covers::All { .. } => variables.push_to(&mut digest),
        Covers::Timers => variables.push_timers_to(&mut digest),
    }
    let mac = key.mac(&digest);
    let mut wire = message.to_vec();
    let arcount = u16::from_be_bytes([wire[10], wire[11]]) + 1;
    wire[10..12].copy_from_slice(&arcount.to_be_bytes());
    variables.push_record(&mut wire, &mac, original_id);
    (wire, mac)
}

/// `len(mac) ‖ mac`: how a MAC enters the next digest.
fn mac_prefix(mac: &[u8]) -> Vec<u8> {
    let mut prefix = (mac.len() as u16).to_be_bytes().to_vec();
    prefix.extend_from_slice(mac);
    prefix
}

/// Signs `response` (no TSIG yet) the way a server answers `request`.
pub(super) fn server_sign(
    response: &[u8],
    key: &TsigKey,
    request: &SignedRequest,
    time: u64,
    error: u16,
    other: &[u8],
) -> Vec<u8> {
    let prefix = mac_prefix(&request.mac);
    let covers = Covers::All { error, other };
    append_tsig(response, key, request.id, &prefix, time, covers).0
}

/// Signs a stream of answers to `request` the way a server sends a zone
/// transfer (RFC 8945 §5.3.1): the messages whose `signed` flag is set get a
/// TSIG record chained to the previous MAC; the others are sent as they are.
pub(super) fn server_sign_stream(
    messages: &[(Vec<u8>, bool)],
    key: &TsigKey,
    request: &SignedRequest,
    time: u64,
) -> Vec<Vec<u8>> {
    let mut prefix = mac_prefix(&request.mac);
    let mut first = true;
    let mut out = Vec::new();
    for (message, signed) in messages {
        if !signed {
            prefix.extend_from_slice(message);
            out.push(message.clone());
            continue;
        }
        let covers = if first {
            Covers::All {
                error: 0,
                other: &[],
            }
        } else {
            Covers::Timers
        };
        let (wire, mac) = append_tsig(message, key, request.id, &prefix, time, covers);
        first = false;
        prefix = mac_prefix(&mac);
        out.push(wire);
    }
    out
}

/// An UPDATE for example.test. with one A record, id 0x1234.
pub(super) fn update_message() -> Vec<u8> {
    hex("123428000001000000010000076578616d706c6504746573740000060001026831c00c000100010000012c0004c0000201")
}

/// The answer to `update_message`: header with QR set, the zone section.
pub(super) fn answer(rcode: u8) -> Vec<u8> {
    let mut a = hex("1234a8000001000000000000076578616d706c650474657374000006000100");
    a.truncate(a.len() - 1);
    a[3] |= rcode;
    a
}
