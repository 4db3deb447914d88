//! `pg2dns check-config` against each zone's primary: does it know the key,
//! serve the zone, and let the key update and transfer it? Each of these
//! otherwise halts the stream at the first change (or reconcile at its first
//! transfer), so they are asked now, with three signed requests that change
//! nothing:
//!
//! 1. an SOA query for the apex. An unsigned BADKEY or BADSIG answer (RFC
//!    8945 §5.2: "the server MUST generate an error response with RCODE 9
//!    (NOTAUTH) and TSIG ERROR 17 (BADKEY)", 16 for a MAC that does not
//!    verify) says the server does not know the key or its secret; an answer
//!    without the zone's SOA, or REFUSED/NOTAUTH, that it does not serve it,
//!    unless the same query unsigned finds the SOA: then the server rejects
//!    the key without saying why (PowerDNS's plain NOTAUTH).
//! 2. an UPDATE whose only content is the prerequisite "the apex SOA RRset
//!    exists" (RFC 2136 §2.4.1): the stream's own probe. A primary that lets
//!    the key update answers NOERROR and changes nothing; BIND answers
//!    REFUSED when `allow-update` does not name the key, Knot NOTAUTH with
//!    BADKEY when no `acl` lets it update (shared/notes/dns-servers.md §1.3).
//! 3. an AXFR, of which only the first message is read: its RCODE says
//!    whether the key may transfer the zone (reconcile needs it).
//!
//! The key is judged on the SOA query, which needs no permission: a BADKEY
//! there is a key the server does not have, a BADKEY only on the UPDATE a
//! key it has but does not let update.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use pg2dns_decoder::session::Rcode;
use pg2dns_decoder::tsig::{self, StreamVerifier, TsigError, TsigKey};
use pg2dns_decoder::update::{self, Prerequisite};
use pg2dns_decoder::{Owner, RType, ZoneName};

use crate::config::{Config, ZoneConfig};
use crate::dns::axfr::unix_now;
use crate::dns::Connection;

/// How long each request may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// QTYPE SOA and AXFR.
const TYPE_SOA: u16 = 6;
const TYPE_AXFR: u16 = 252;

/// What one signed request got back.
enum Answer {
    /// A verified answer with this RCODE, and the message.
    Signed(Rcode, Vec<u8>),
    /// An answer the key could not vouch for.
    Tsig(TsigError),
    /// No answer: the server could not be reached, or said nothing.
    Io(String),
}

/// A query for `zone`'s apex of type `qtype`, with a fresh ID.
fn query(zone: &ZoneName, qtype: u16) -> Vec<u8> {
    crate::dns::axfr::query(zone, qtype, crate::dns::axfr::fresh_id())
}

/// Sends `message` signed with `key` to `server` and verifies the first
/// message of the answer (the only one of a query or an UPDATE; the first
/// of a transfer, through a stream verifier as a transfer's must be).
async fn ask(server: SocketAddr, key: &TsigKey, message: &[u8]) -> Answer {
    let request = match tsig::sign(message, key, unix_now(), tsig::DEFAULT_FUDGE) {
        Ok(r) => r,
        Err(e) => return Answer::Tsig(e),
    };
    let exchange = async {
        let mut conn = Connection::connect(server).await?;
        conn.send(&request.wire).await?;
        conn.recv().await.unwrap_or_else(|| {
            Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection without answering",
            ))
        })
    };
    let frame = match tokio::time::timeout(TIMEOUT, exchange).await {
        Err(_) => return Answer::Io(format!("no answer in {} s", TIMEOUT.as_secs())),
        Ok(Err(e)) => return Answer::Io(e.to_string()),
        Ok(Ok(frame)) => frame,
    };
    match StreamVerifier::new(&request, key).verify(&frame, unix_now()) {
        Ok(v) => Answer::Signed(Rcode(v.rcode), frame),
        Err(e) => Answer::Tsig(e),
    }
}

/// Sends `message` unsigned and returns the first message of the answer.
async fn ask_unsigned(server: SocketAddr, message: &[u8]) -> Option<Vec<u8>> {
    let exchange = async {
        let mut conn = Connection::connect(server).await?;
        conn.send(message).await?;
        conn.recv().await.unwrap_or_else(|| {
            Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection without answering",
            ))
        })
    };
    tokio::time::timeout(TIMEOUT, exchange).await.ok()?.ok()
}

/// The key's name as a server's configuration writes it (no final dot).
fn key_name(key: &TsigKey) -> String {
    key.name.to_string().trim_end_matches('.').to_owned()
}

/// Whether `frame` is an authoritative answer holding `zone`'s SOA.
fn holds_soa(frame: &[u8], zone: &ZoneName) -> bool {
    let Ok(message) = Message::from_vec(frame) else {
        return false;
    };
    message.metadata.authoritative
        && message.answers.iter().any(|rr| {
            rr.record_type() == RecordType::SOA
                && rr.name.to_string().eq_ignore_ascii_case(&zone.to_string())
        })
}

/// The problems of one zone's primary, each a sentence with the fix.
/// `transfers` bounds the server's zone transfers at once.
pub async fn check_zone(zone: &ZoneConfig, transfers: &tokio::sync::Semaphore) -> Vec<String> {
    let (name, server, key) = (&zone.name, zone.primary, &zone.key);
    let k = key_name(key);
    let at = format!("zone {name}: the primary {server}");
    // 1. The key and the zone.
    match ask(server, key, &query(name, TYPE_SOA)).await {
        Answer::Io(e) => return vec![format!("{at} cannot be asked for the SOA: {e}")],
        Answer::Tsig(TsigError::BadKey { .. }) => {
            return vec![format!(
                "{at} does not know key {k} with algorithm {} (TSIG BADKEY): add the key file to the server's configuration (`include` it in named.conf; in knot.conf, a `key:` entry with the same id, algorithm and secret; for PowerDNS, `pdnsutil import-tsig-key`)",
                key.algorithm
            )]
        }
        Answer::Tsig(TsigError::BadSig { .. }) => {
            return vec![format!(
                "{at} rejects the signature of key {k} (TSIG BADSIG): its secret differs from the server's; give both the same key file"
            )]
        }
        Answer::Tsig(TsigError::Unsigned { rcode }) => {
            // PowerDNS answers a signature it cannot check (a key it does
            // not know, another secret or algorithm) with a plain NOTAUTH,
            // as if it did not serve the zone: an unsigned query tells the
            // two apart.
            let served = ask_unsigned(server, &query(name, TYPE_SOA))
                .await
                .is_some_and(|frame| holds_soa(&frame, name));
            return vec![if served {
                format!(
                    "{at} serves the zone but rejects key {k} with algorithm {} (it answered the signed query {} unsigned, as PowerDNS does for a key it does not know or whose secret differs): give the server the same key file (for PowerDNS, `pdnsutil import-tsig-key {k} {} <secret>`)",
                    key.algorithm,
                    Rcode(rcode),
                    key.algorithm
                )
            } else {
                format!(
                    "{at} does not serve the zone as primary (it answered {} unsigned): add the zone to its configuration, or point `primary` at the server that does",
                    Rcode(rcode)
                )
            }];
        }
        Answer::Tsig(e) => return vec![format!("{at} answered a signed SOA query: {e}")],
        Answer::Signed(rcode, frame) => {
            if rcode != Rcode::NOERROR || !holds_soa(&frame, name) {
                return vec![format!(
                    "{at} does not serve the zone as primary (its answer to an SOA query is {rcode} with no authoritative SOA): add the zone to its configuration, or point `primary` at the server that does"
                )];
            }
        }
    }
    let mut out = Vec::new();
    // 2. The UPDATE: the apex SOA exists, and nothing else.
    let apex = Owner::from_name(name.name().clone());
    let probe = Prerequisite::RrsetExists {
        owner: apex,
        rtype: RType::SOA,
    };
    let denied = format!(
        "{at} does not let key {k} update the zone: add `allow-update {{ key {k}; }};` to the zone in named.conf (in knot.conf, an `acl` with `key: {k}` and `action: update` on the zone; for PowerDNS, `dnsupdate=yes`, pg2dns's address in `allow-dnsupdate-from` and `pdnsutil set-meta {name} TSIG-ALLOW-DNSUPDATE {k}`), or, if this server is a secondary, point `primary` at the zone's primary"
    );
    match update::encode(name, crate::dns::axfr::fresh_id(), &[probe], &[]) {
        Err(e) => out.push(format!("zone {name}: cannot encode an UPDATE: {e}")),
        Ok(message) => match ask(server, key, &message).await {
            Answer::Signed(Rcode::NOERROR, _) => {}
            Answer::Signed(Rcode::REFUSED, _) | Answer::Tsig(TsigError::BadKey { .. }) => {
                out.push(denied)
            }
            Answer::Signed(Rcode::NOTAUTH, _) => out.push(format!(
                "{at} is not the zone's primary (NOTAUTH to an UPDATE): point `primary` at the server that holds the zone as primary"
            )),
            Answer::Signed(rcode, _) => out.push(format!(
                "{at} answers {rcode} to an UPDATE whose only prerequisite is the apex SOA: the stream would halt on it"
            )),
            Answer::Tsig(e) => out.push(format!("{at} answered the UPDATE probe: {e}")),
            Answer::Io(e) => out.push(format!("{at} did not answer the UPDATE probe: {e}")),
        },
    }
    // 3. The transfer: only its first message.
    let turn = transfers.acquire().await.ok();
    let transfer = ask(server, key, &query(name, TYPE_AXFR)).await;
    drop(turn);
    match transfer {
        Answer::Signed(Rcode::NOERROR, _) => {}
        Answer::Signed(Rcode::REFUSED | Rcode::NOTAUTH, _)
        | Answer::Tsig(TsigError::BadKey { .. } | TsigError::Unsigned { .. }) => out.push(format!(
            "{at} does not let key {k} transfer the zone, which `pg2dns reconcile` and the first load need: add `allow-transfer {{ key {k}; }};` to the zone in named.conf (in knot.conf, `action: transfer` in the key's `acl`; for PowerDNS, pg2dns's address in `allow-axfr-ips` and `pdnsutil set-meta {name} TSIG-ALLOW-AXFR {k}`)"
        )),
        Answer::Signed(rcode, _) => out.push(format!("{at} answers {rcode} to a zone transfer")),
        Answer::Tsig(e) => out.push(format!("{at} answered the zone transfer: {e}")),
        Answer::Io(e) => out.push(format!("{at} did not answer the zone transfer: {e}")),
    }
    out
}

/// Zones checked at once per server. Each check opens a connection per
/// request: BIND admits 150 TCP clients by default (`tcp-clients`) and logs
/// nothing when full, so thousands of zones checked all at once turned into
/// false "cannot be asked" problems.
const ZONES_AT_ONCE: usize = 8;

/// Zone transfers at once per server: reconcile's bound, below BIND's
/// `transfers-out` (10), over which it answers SERVFAIL ("quota reached"),
/// a false problem.
const TRANSFERS_AT_ONCE: usize = crate::reconcile::TRANSFERS_PER_SERVER;

/// What bounds the checks of one server.
struct ServerBounds {
    zones: tokio::sync::Semaphore,
    transfers: tokio::sync::Semaphore,
}

/// Checks every zone's primary, the zones of one server a few at once
/// ([`ZONES_AT_ONCE`]), the servers in parallel; problems in the
/// configuration's order.
pub async fn check_servers(config: &Config) -> Vec<String> {
    let mut bounds: std::collections::HashMap<SocketAddr, std::sync::Arc<ServerBounds>> =
        std::collections::HashMap::new();
    let checks = config.zones.iter().map(|zone| {
        let bound = bounds
            .entry(zone.primary)
            .or_insert_with(|| {
                std::sync::Arc::new(ServerBounds {
                    zones: tokio::sync::Semaphore::new(ZONES_AT_ONCE),
                    transfers: tokio::sync::Semaphore::new(TRANSFERS_AT_ONCE),
                })
            })
            .clone();
        async move {
            // Never closed: acquire fails only on a closed semaphore.
            let _turn = bound.zones.acquire().await.ok();
            check_zone(zone, &bound.transfers).await
        }
    });
    futures_util::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect()
}
