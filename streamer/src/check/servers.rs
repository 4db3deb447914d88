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
//!
//! At thousands of zones these are thousands of requests to one server:
//! each probe is pipelined over a few connections per server
//! ([`crate::dns::pipelined`]), UPDATEs at most 64 open (below BIND's
//! `update-quota` of 100) and transfers at most 4 (below its
//! `transfers-out` of 10), so that a server at its defaults answers them
//! all rather than reporting false problems.

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
use crate::dns::pipelined::{self, Bounds};
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
    Io(NoAnswer),
}

/// Why a signed request got no answer to judge.
#[derive(Debug, thiserror::Error)]
enum NoAnswer {
    /// The request could not be encoded.
    #[error("cannot encode the request")]
    Encode(#[source] update::EncodeError),
    /// The exchange with the server failed.
    #[error(transparent)]
    Ask(#[from] pipelined::AskError),
    /// No request was made for this zone (a bug).
    #[error("no request was made")]
    NotMade,
}

/// A query for `zone`'s apex of type `qtype`, with a fresh ID.
fn query(zone: &ZoneName, qtype: u16) -> Vec<u8> {
    crate::dns::axfr::query(zone, qtype, crate::dns::axfr::fresh_id())
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

/// A signed request to a zone's primary.
#[derive(Clone, Copy)]
enum Probe {
    /// An SOA query for the apex.
    Soa,
    /// An UPDATE whose only content is "the apex SOA RRset exists".
    Update,
    /// A zone transfer (only its first message is read).
    Transfer,
}

impl Probe {
    /// The request for `zone` with message ID `id`, unsigned.
    fn message(self, zone: &ZoneName, id: u16) -> Result<Vec<u8>, update::EncodeError> {
        match self {
            Probe::Soa => Ok(crate::dns::axfr::query(zone, TYPE_SOA, id)),
            Probe::Transfer => Ok(crate::dns::axfr::query(zone, TYPE_AXFR, id)),
            Probe::Update => {
                let probe = Prerequisite::RrsetExists {
                    owner: Owner::from_name(zone.name().clone()),
                    rtype: RType::SOA,
                };
                update::encode(zone, id, &[probe], &[])
            }
        }
    }

    /// How many of these may be asked of one server at once.
    fn bounds(self) -> Bounds {
        match self {
            // Queries cost the server little.
            Probe::Soa => Bounds {
                connections: 4,
                in_flight: 64,
                timeout: TIMEOUT,
            },
            // 64 in all: below BIND's update-quota of 100, over which it
            // drops UPDATEs silently.
            Probe::Update => Bounds {
                connections: 4,
                in_flight: 16,
                timeout: TIMEOUT,
            },
            // One per connection: below BIND's `transfers-out` of 10, over
            // which it answers SERVFAIL ("quota reached"), a false problem.
            Probe::Transfer => Bounds {
                connections: TRANSFERS_AT_ONCE,
                in_flight: 1,
                timeout: TIMEOUT,
            },
        }
    }
}

/// Asks `probe` of each of `zones` (all on `server`), signed with each
/// zone's key, pipelined within the probe's bounds; the answers in order.
async fn ask_each(server: SocketAddr, zones: &[&ZoneConfig], probe: Probe) -> Vec<Answer> {
    let signed: std::sync::Mutex<Vec<Option<Result<tsig::SignedRequest, Answer>>>> =
        std::sync::Mutex::new((0..zones.len()).map(|_| None).collect());
    let frames = pipelined::ask_all(server, zones.len(), probe.bounds(), |i, id| {
        let zone = zones[i];
        let request = probe
            .message(&zone.name, id)
            .map_err(|e| Answer::Io(NoAnswer::Encode(e)))
            .and_then(|m| {
                tsig::sign(&m, &zone.key, unix_now(), tsig::DEFAULT_FUDGE).map_err(Answer::Tsig)
            });
        // A request that cannot be made is still sent as a bare header
        // with its ID (its answer is not read): what is wrong is said.
        let wire = match &request {
            Ok(r) => r.wire.clone(),
            Err(_) => crate::dns::axfr::query(&zone.name, TYPE_SOA, id),
        };
        if let Some(slot) = signed.lock().unwrap_or_else(|e| e.into_inner()).get_mut(i) {
            *slot = Some(request);
        }
        wire
    })
    .await;
    let signed = signed.into_inner().unwrap_or_else(|e| e.into_inner());
    zones
        .iter()
        .zip(signed)
        .zip(frames)
        .map(|((zone, request), frame)| match (request, frame) {
            (Some(Err(made)), _) => made,
            (None, Err(e)) | (Some(Ok(_)), Err(e)) => Answer::Io(NoAnswer::Ask(e)),
            (None, Ok(_)) => Answer::Io(NoAnswer::NotMade),
            (Some(Ok(request)), Ok(frame)) => {
                match StreamVerifier::new(&request, &zone.key).verify(&frame, unix_now()) {
                    Ok(v) => Answer::Signed(Rcode(v.rcode), frame),
                    Err(e) => Answer::Tsig(e),
                }
            }
        })
        .collect()
}

/// What the SOA query says of a zone: `None` when the key and the zone
/// are fine, else the problem (the other probes would only repeat it).
async fn judge_soa(zone: &ZoneConfig, answer: Answer) -> Option<String> {
    let (name, server, key) = (&zone.name, zone.primary, &zone.key);
    let k = key_name(key);
    let at = format!("zone {name}: the primary {server}");
    match answer {
        Answer::Io(e) => Some(format!("{at} cannot be asked for the SOA: {}", crate::error::chain(&e))),
        Answer::Tsig(TsigError::BadKey { .. }) => Some(format!(
            "{at} does not know key {k} with algorithm {} (TSIG BADKEY): add the key file to the server's configuration (`include` it in named.conf; in knot.conf, a `key:` entry with the same id, algorithm and secret; for PowerDNS, `pdnsutil import-tsig-key`)",
            key.algorithm
        )),
        Answer::Tsig(TsigError::BadSig { .. }) => Some(format!(
            "{at} rejects the signature of key {k} (TSIG BADSIG): its secret differs from the server's; give both the same key file"
        )),
        Answer::Tsig(TsigError::Unsigned { rcode }) => {
            // PowerDNS answers a signature it cannot check (a key it does
            // not know, another secret or algorithm) with a plain NOTAUTH,
            // as if it did not serve the zone: an unsigned query tells the
            // two apart.
            let served = ask_unsigned(server, &query(name, TYPE_SOA))
                .await
                .is_some_and(|frame| holds_soa(&frame, name));
            Some(if served {
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
            })
        }
        Answer::Tsig(e) => Some(format!("{at} answered a signed SOA query: {e}")),
        Answer::Signed(rcode, frame) => (rcode != Rcode::NOERROR || !holds_soa(&frame, name)).then(|| format!(
            "{at} does not serve the zone as primary (its answer to an SOA query is {rcode} with no authoritative SOA): add the zone to its configuration, or point `primary` at the server that does"
        )),
    }
}

/// What the UPDATE probe says of a zone whose SOA query was fine.
fn judge_update(zone: &ZoneConfig, answer: Answer) -> Option<String> {
    let (name, server, key) = (&zone.name, zone.primary, &zone.key);
    let k = key_name(key);
    let at = format!("zone {name}: the primary {server}");
    let denied = || {
        format!(
        "{at} does not let key {k} update the zone: add `allow-update {{ key {k}; }};` to the zone in named.conf (in knot.conf, an `acl` with `key: {k}` and `action: update` on the zone; for PowerDNS, `dnsupdate=yes`, pg2dns's address in `allow-dnsupdate-from` and `pdnsutil set-meta {name} TSIG-ALLOW-DNSUPDATE {k}`), or, if this server is a secondary, point `primary` at the zone's primary"
    )
    };
    match answer {
        Answer::Signed(Rcode::NOERROR, _) => None,
        Answer::Signed(Rcode::REFUSED, _) | Answer::Tsig(TsigError::BadKey { .. }) => Some(denied()),
        Answer::Signed(Rcode::NOTAUTH, _) => Some(format!(
            "{at} is not the zone's primary (NOTAUTH to an UPDATE): point `primary` at the server that holds the zone as primary"
        )),
        Answer::Signed(rcode, _) => Some(format!(
            "{at} answers {rcode} to an UPDATE whose only prerequisite is the apex SOA: the stream would halt on it"
        )),
        Answer::Tsig(e) => Some(format!("{at} answered the UPDATE probe: {e}")),
        Answer::Io(e) => Some(format!("{at} did not answer the UPDATE probe: {}", crate::error::chain(&e))),
    }
}

/// What the first message of a zone transfer says of a zone.
fn judge_transfer(zone: &ZoneConfig, answer: Answer) -> Option<String> {
    let (name, server, key) = (&zone.name, zone.primary, &zone.key);
    let k = key_name(key);
    let at = format!("zone {name}: the primary {server}");
    match answer {
        Answer::Signed(Rcode::NOERROR, _) => None,
        Answer::Signed(Rcode::REFUSED | Rcode::NOTAUTH, _)
        | Answer::Tsig(TsigError::BadKey { .. } | TsigError::Unsigned { .. }) => Some(format!(
            "{at} does not let key {k} transfer the zone, which `pg2dns reconcile` and the first load need: add `allow-transfer {{ key {k}; }};` to the zone in named.conf (in knot.conf, `action: transfer` in the key's `acl`; for PowerDNS, pg2dns's address in `allow-axfr-ips` and `pdnsutil set-meta {name} TSIG-ALLOW-AXFR {k}`)"
        )),
        Answer::Signed(rcode, _) => Some(format!("{at} answers {rcode} to a zone transfer")),
        Answer::Tsig(e) => Some(format!("{at} answered the zone transfer: {e}")),
        Answer::Io(e) => Some(format!("{at} did not answer the zone transfer: {}", crate::error::chain(&e))),
    }
}

/// Up to this many zones on one server, every zone is asked every probe;
/// above it, the signed probes (key, update and transfer rights) go to a
/// sample of [`SAMPLE`] zones and the first zone of each key, and every
/// zone is asked for its SOA unsigned (does the server serve it?). A BIND
/// answers about 10,000 signed requests a second on this project's test
/// machine: three per zone made `check-config` take 17 s at 50,000 zones.
pub const EVERY_ZONE_UP_TO: usize = 1_000;

/// Zones of one server given the signed probes when there are more than
/// [`EVERY_ZONE_UP_TO`] (besides the first zone of each key).
pub const SAMPLE: usize = 256;

/// What was asked of one primary's zones, and what was found.
pub struct ServerCheck {
    /// Per zone, in the order given: its problems, each a sentence with the
    /// fix.
    pub problems: Vec<Vec<String>>,
    /// How many zones got the signed probes (all of them unless sampled).
    pub signed: usize,
}

/// The problems of the zones of one primary: each probe asked of every
/// zone the previous one found fine (of a sample when there are many,
/// unless `every_zone`, see [`EVERY_ZONE_UP_TO`]), pipelined over a few
/// connections.
pub async fn check_server(
    server: SocketAddr,
    zones: &[&ZoneConfig],
    every_zone: bool,
) -> ServerCheck {
    let n = zones.len();
    let mut problems: Vec<Vec<String>> = vec![Vec::new(); n];
    let sample: std::collections::BTreeSet<usize> = if every_zone || n <= EVERY_ZONE_UP_TO {
        (0..n).collect()
    } else {
        let mut keys = std::collections::HashSet::new();
        (0..SAMPLE)
            .map(|k| k * n / SAMPLE)
            .chain((0..n).filter(|&i| keys.insert(&zones[i].key.name)))
            .collect()
    };
    let signed: Vec<usize> = sample.iter().copied().collect();
    let others: Vec<usize> = (0..n).filter(|i| !sample.contains(i)).collect();
    // 1. The key and the zone.
    let asked: Vec<&ZoneConfig> = signed.iter().map(|&i| zones[i]).collect();
    let mut fine: Vec<usize> = Vec::new();
    for (&i, answer) in signed
        .iter()
        .zip(ask_each(server, &asked, Probe::Soa).await)
    {
        match judge_soa(zones[i], answer).await {
            Some(p) => problems[i].push(p),
            None => fine.push(i),
        }
    }
    let asked: Vec<&ZoneConfig> = fine.iter().map(|&i| zones[i]).collect();
    // 2. The UPDATE: the apex SOA exists, and nothing else.
    let updates = ask_each(server, &asked, Probe::Update).await;
    // 3. The transfer: only its first message.
    let transfers = ask_each(server, &asked, Probe::Transfer).await;
    for ((&i, update), transfer) in fine.iter().zip(updates).zip(transfers) {
        problems[i].extend(judge_update(zones[i], update));
        problems[i].extend(judge_transfer(zones[i], transfer));
    }
    // The zones outside the sample: does the server serve them?
    let answers = pipelined::ask_all(server, others.len(), Probe::Soa.bounds(), |k, id| {
        crate::dns::axfr::query(&zones[others[k]].name, TYPE_SOA, id)
    })
    .await;
    for (&i, answer) in others.iter().zip(answers) {
        let zone = zones[i];
        let at = format!("zone {}: the primary {}", zone.name, zone.primary);
        match answer {
            Ok(frame) if holds_soa(&frame, &zone.name) => {}
            Ok(_) => problems[i].push(format!(
                "{at} does not serve the zone as primary (its answer to an SOA query has no authoritative SOA): add the zone to its configuration, or point `primary` at the server that does"
            )),
            Err(e) => problems[i].push(format!(
                "{at} cannot be asked for the SOA: {}",
                crate::error::chain(&e)
            )),
        }
    }
    ServerCheck {
        problems,
        signed: signed.len(),
    }
}

/// The problems of one zone's primary, each a sentence with the fix.
pub async fn check_zone(zone: &ZoneConfig) -> Vec<String> {
    check_server(zone.primary, &[zone], true)
        .await
        .problems
        .into_iter()
        .flatten()
        .collect()
}

/// Zone transfers at once per server: reconcile's bound, below BIND's
/// `transfers-out` (10), over which it answers SERVFAIL ("quota reached"),
/// a false problem.
const TRANSFERS_AT_ONCE: usize = crate::reconcile::TRANSFERS_PER_SERVER;

/// What [`check_servers`] found.
pub struct ServersCheck {
    /// The problems, in the configuration's order of zones.
    pub problems: Vec<String>,
    /// Per server whose zones were sampled: (server, zones, zones given the
    /// signed probes).
    pub sampled: Vec<(SocketAddr, usize, usize)>,
}

/// Checks every zone's primary, the zones of one server pipelined over a
/// few connections ([`check_server`]; sampled when many unless
/// `every_zone`), the servers in parallel; problems in the configuration's
/// order.
pub async fn check_servers(config: &Config, every_zone: bool) -> ServersCheck {
    check_zones(&config.zones.into_iter().collect::<Vec<_>>(), every_zone).await
}

/// [`check_servers`] for the zones given. A zone of several primaries
/// (`primaries`, `server_group`) is checked on each, every primary with its
/// own key, and its problems name the primary.
pub async fn check_zones(given: &[&ZoneConfig], every_zone: bool) -> ServersCheck {
    // Each zone of several primaries as one zone per primary.
    let mut per_primary: Vec<ZoneConfig> = Vec::new();
    let mut names: Vec<Option<String>> = Vec::new();
    for zone in given {
        if !zone.more_primaries.is_empty() {
            for p in zone.primaries() {
                names.push(Some(p.name.clone()));
                per_primary.push(zone.for_primary(&p));
            }
        }
    }
    let mut expanded = per_primary.iter();
    let mut zones: Vec<&ZoneConfig> = Vec::with_capacity(given.len());
    let mut named: Vec<Option<String>> = Vec::with_capacity(given.len());
    let mut names = names.into_iter();
    for zone in given {
        if zone.more_primaries.is_empty() {
            zones.push(zone);
            named.push(None);
        } else {
            for _ in 0..=zone.more_primaries.len() {
                if let (Some(z), Some(n)) = (expanded.next(), names.next()) {
                    zones.push(z);
                    named.push(n);
                }
            }
        }
    }
    let zones = &zones[..];
    let named = &named[..];
    let mut by_server: std::collections::HashMap<SocketAddr, Vec<usize>> =
        std::collections::HashMap::new();
    for (i, zone) in zones.iter().enumerate() {
        by_server.entry(zone.primary).or_default().push(i);
    }
    let servers = by_server.into_iter().map(|(server, indexes)| async move {
        let of_server: Vec<&ZoneConfig> = indexes.iter().map(|&i| zones[i]).collect();
        let mut checked = check_server(server, &of_server, every_zone).await;
        // A zone's problem on one of its several primaries names it.
        for (&i, problems) in indexes.iter().zip(&mut checked.problems) {
            if let Some(name) = named[i]
                .as_ref()
                .filter(|n| **n != zones[i].primary.to_string())
            {
                let zone = zones[i];
                let at = format!("zone {}: the primary {}", zone.name, zone.primary);
                let named = format!("zone {}: the primary {name} ({})", zone.name, zone.primary);
                for p in problems.iter_mut() {
                    *p = p.replacen(&at, &named, 1);
                }
            }
        }
        let sampled =
            (checked.signed < indexes.len()).then_some((server, indexes.len(), checked.signed));
        (
            indexes
                .into_iter()
                .zip(checked.problems)
                .collect::<Vec<_>>(),
            sampled,
        )
    });
    let mut found: Vec<(usize, Vec<String>)> = Vec::new();
    let mut sampled = Vec::new();
    for (problems, s) in futures_util::future::join_all(servers).await {
        found.extend(problems);
        sampled.extend(s);
    }
    found.sort_by_key(|(i, _)| *i);
    sampled.sort();
    ServersCheck {
        problems: found.into_iter().flat_map(|(_, p)| p).collect(),
        sampled,
    }
}
