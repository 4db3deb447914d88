//! The reference client for the W2 benchmark: how fast does the DNS server
//! ingest UPDATE messages packed as full as they can be?
//!
//! It builds N A records (`PREFIX-i.ZONE A 10.x.y.z`, the same names the W2
//! workload writes), packs them with pg2dns's own planner
//! (`update::Packer` under the 65 535-byte budget, TSIG record included),
//! encodes and signs every message *before* the clock starts, then sends them
//! one at a time over ONE TCP connection (pg2dns's own
//! `dns::Connection`), waiting for and verifying each answer. What it prints is the
//! server's full-message ingestion ceiling, with no PostgreSQL in the way.
//!
//! ```text
//! cargo run --release -p pg2dns --example blast -- \
//!     --server 127.0.0.1:PORT --key-file tsig.key --zone example.test. \
//!     --records 200000 [--per-message K] [--prefix w2]
//! ```
//!
//! Output (one line, `key=value`): records, messages, seconds, rr_per_s,
//! msgs_per_s, p50_ms, max_ms, encode_s.
//!
//! **Many zones** (issue #24's reference): with `--zones-file` (one zone name
//! a line) or `--zone-pattern` (`{i}` replaced by 1..=`--zone-count`), it
//! sends ONE UPDATE per zone adding one A record (`PREFIX.ZONE A 10.x.y.z`,
//! zone i → address i), all encoded and signed before the clock starts, over
//! `--connections` pipelined TCP connections with at most `--in-flight`
//! messages unanswered in all (BIND drops UPDATEs past its `update-quota`,
//! 100 by default). The connections take the next message from one queue, so
//! a slower connection takes fewer. The clock runs from the first send (the
//! connections are open) to the last answer; any answer but a signed NOERROR
//! stops it with an error naming the zone.
//!
//! ```text
//! cargo run --release -p pg2dns --example blast -- \
//!     --server 127.0.0.1:PORT --key-file tsig.key \
//!     --zones-file zones.txt [--connections 16] [--in-flight 64] [--prefix blast]
//! ```
//!
//! Output (one line): zones, messages, connections, in_flight, seconds,
//! msgs_per_s, p50_ms, p99_ms, max_ms, connect_s, encode_s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use pg2dns::dns::Connection;
use pg2dns_decoder::tsig::{self, SignedRequest, TsigKey};
use pg2dns_decoder::update::{self, Budget, Packer, PushError, UpdateOp};
use pg2dns_decoder::{Record, ZoneName};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Sends N A records to a primary in UPDATE messages packed full.
#[derive(Parser)]
struct Args {
    /// The primary, HOST:PORT.
    #[arg(long)]
    server: SocketAddr,
    /// The key file `tsig-keygen` wrote (its first key is used).
    #[arg(long)]
    key_file: PathBuf,
    /// The zone to update.
    #[arg(long, required_unless_present_any = ["zones_file", "zone_pattern"])]
    zone: Option<String>,
    /// How many A records to add.
    #[arg(long, required_unless_present_any = ["zones_file", "zone_pattern"])]
    records: Option<u32>,
    /// Many zones: one UPDATE of one record per zone named in this file (one
    /// zone a line; blank lines and `#` comments skipped).
    #[arg(long, conflicts_with_all = ["zone", "records", "zone_pattern"])]
    zones_file: Option<PathBuf>,
    /// Many zones: zone names from this pattern, `{i}` replaced by
    /// 1..=`--zone-count` (e.g. `z{i}.bench.`).
    #[arg(long, requires = "zone_count", conflicts_with_all = ["zone", "records"])]
    zone_pattern: Option<String>,
    /// How many zones `--zone-pattern` names.
    #[arg(long)]
    zone_count: Option<u32>,
    /// Many zones: how many TCP connections carry the UPDATEs.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Many zones: at most this many UPDATEs unanswered, over all connections.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// At most this many records per message (default: as many as fit).
    #[arg(long)]
    per_message: Option<usize>,
    /// Owner names are PREFIX-i.ZONE for i in 1..=records.
    #[arg(long, default_value = "blast")]
    prefix: String,
    /// The size budget of one message, TSIG record included.
    #[arg(long, default_value_t = 65_535)]
    max_message_bytes: usize,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.key_file)
        .with_context(|| format!("reading {}", args.key_file.display()))?;
    let key = TsigKey::parse_keygen_file(&text)
        .with_context(|| format!("parsing {}", args.key_file.display()))?
        .into_iter()
        .next()
        .context("the key file holds no key")?;
    if args.zones_file.is_some() || args.zone_pattern.is_some() {
        return many_zones(&args, key).await;
    }
    let (Some(zone_text), Some(records)) = (args.zone.as_deref(), args.records) else {
        bail!("--zone and --records are required without --zones-file or --zone-pattern");
    };
    let zone = ZoneName::parse(zone_text).context("zone name")?;
    let suffix = zone_text.trim_end_matches('.');

    let encode_started = Instant::now();
    let mut ops = Vec::with_capacity(records as usize);
    for i in 1..=records {
        let owner = format!("{}-{i}.{suffix}.", args.prefix);
        let rdata = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
        let record = Record::parse(&owner, 3600, "A", &rdata)
            .with_context(|| format!("record {owner} A {rdata}"))?;
        ops.push(UpdateOp::Add(record));
    }
    let budget = Budget {
        max_message_bytes: args.max_message_bytes,
        tsig_record_len: key.record_len(),
    };
    let mut packer = Packer::new(zone.clone(), budget);
    let mut messages: Vec<Vec<UpdateOp>> = Vec::new();
    let mut in_message = 0usize;
    let cap = args.per_message.unwrap_or(usize::MAX);
    for group in update::group_by_owner(ops) {
        if in_message >= cap {
            messages.push(packer.take());
            in_message = 0;
        }
        match packer.try_push(group) {
            Ok(()) => {}
            Err(PushError::Full(group)) => {
                messages.push(packer.take());
                in_message = 0;
                if packer.try_push(group).is_err() {
                    bail!("one owner's records do not fit an empty message");
                }
            }
            Err(e) => bail!("cannot pack: {e:?}"),
        }
        in_message += 1;
    }
    let last = packer.take();
    if !last.is_empty() {
        messages.push(last);
    }

    let now = unix_now();
    let mut signed: Vec<SignedRequest> = Vec::with_capacity(messages.len());
    for (n, msg) in messages.iter().enumerate() {
        let id = n as u16;
        let wire = update::encode(&zone, id, &[], msg).context("encoding")?;
        let request = tsig::sign(&wire, &key, now, tsig::DEFAULT_FUDGE).context("signing")?;
        if request.wire.len() > args.max_message_bytes {
            bail!(
                "message {n} is {} bytes signed, over the budget",
                request.wire.len()
            );
        }
        signed.push(request);
    }
    let encode_s = encode_started.elapsed().as_secs_f64();

    let mut conn = Connection::connect(args.server)
        .await
        .with_context(|| format!("connecting to {}", args.server))?;
    let mut per_message = Vec::with_capacity(signed.len());
    let started = Instant::now();
    for (n, request) in signed.iter().enumerate() {
        let sent = Instant::now();
        conn.send(&request.wire).await.context("sending")?;
        let answer = tokio::time::timeout(Duration::from_secs(60), conn.recv())
            .await
            .context("no answer within 60 s")?
            .context("the server closed the connection")?
            .context("reading the answer")?;
        per_message.push(sent.elapsed());
        let verified = tsig::verify_response(&answer, &key, request, unix_now())
            .with_context(|| format!("message {n}: answer failed TSIG verification"))?;
        if verified.rcode != 0 {
            bail!("message {n}: rcode {}", verified.rcode);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    per_message.sort();
    let p50 = per_message
        .get(per_message.len() / 2)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let max = per_message.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    println!(
        "records={} messages={} seconds={seconds:.3} rr_per_s={:.0} msgs_per_s={:.1} p50_ms={p50:.2} max_ms={max:.2} encode_s={encode_s:.3}",
        records,
        signed.len(),
        f64::from(records) / seconds,
        signed.len() as f64 / seconds,
    );
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One zone's UPDATE, signed before the clock starts.
struct ZoneUpdate {
    zone: String,
    request: SignedRequest,
}

/// What every connection shares: the messages, the next one to send, the
/// in-flight slots and the key.
struct Shared {
    updates: Vec<ZoneUpdate>,
    next: AtomicUsize,
    slots: Arc<Semaphore>,
    key: TsigKey,
}

/// How long one answer may take before the run fails.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// The many-zones mode: one one-record UPDATE per zone over K connections.
async fn many_zones(args: &Args, key: TsigKey) -> Result<()> {
    let zones = zone_names(args)?;
    if zones.is_empty() {
        bail!("no zones to update");
    }
    if args.connections == 0 || args.in_flight == 0 {
        bail!("--connections and --in-flight must be at least 1");
    }
    // The message ID tells the answers of one connection apart: more than
    // 65,536 unanswered would reuse one.
    if args.in_flight > usize::from(u16::MAX) {
        bail!("--in-flight is at most {}", u16::MAX);
    }

    let encode_started = Instant::now();
    let now = unix_now();
    let mut updates = Vec::with_capacity(zones.len());
    for (i, text) in zones.iter().enumerate() {
        let zone = ZoneName::parse(text).with_context(|| format!("zone name {text:?}"))?;
        let n = i + 1;
        let owner = format!("{}.{zone}", args.prefix);
        let rdata = format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255);
        let record = Record::parse(&owner, 3600, "A", &rdata)
            .with_context(|| format!("record {owner} A {rdata}"))?;
        // IDs wrap past 65,535: only unanswered messages must differ.
        let id = (i % 65_536) as u16;
        let wire = update::encode(&zone, id, &[], &[UpdateOp::Add(record)])
            .with_context(|| format!("encoding the update of {zone}"))?;
        let request = tsig::sign(&wire, &key, now, tsig::DEFAULT_FUDGE)
            .with_context(|| format!("signing the update of {zone}"))?;
        updates.push(ZoneUpdate {
            zone: zone.to_string(),
            request,
        });
    }
    let encode_s = encode_started.elapsed().as_secs_f64();

    let connect_started = Instant::now();
    let mut conns = Vec::with_capacity(args.connections);
    for n in 0..args.connections {
        conns.push(
            Connection::connect(args.server)
                .await
                .with_context(|| format!("connection {n} to {}", args.server))?,
        );
    }
    let connect_s = connect_started.elapsed().as_secs_f64();

    let shared = Arc::new(Shared {
        updates,
        next: AtomicUsize::new(0),
        slots: Arc::new(Semaphore::new(args.in_flight)),
        key,
    });
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (n, conn) in conns.into_iter().enumerate() {
        let shared = shared.clone();
        tasks.spawn(async move {
            drive(conn, &shared)
                .await
                .with_context(|| format!("connection {n}"))
        });
    }
    let mut latencies = Vec::with_capacity(shared.updates.len());
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined.context("a connection task panicked")??);
    }
    let seconds = started.elapsed().as_secs_f64();
    if latencies.len() != shared.updates.len() {
        bail!(
            "{} answers for {} updates",
            latencies.len(),
            shared.updates.len()
        );
    }
    latencies.sort();
    let ms = |q: f64| {
        let at = ((latencies.len() as f64 * q) as usize).min(latencies.len() - 1);
        latencies[at].as_secs_f64() * 1000.0
    };
    println!(
        "zones={} messages={} connections={} in_flight={} seconds={seconds:.3} msgs_per_s={:.1} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} connect_s={connect_s:.3} encode_s={encode_s:.3}",
        zones.len(),
        latencies.len(),
        args.connections,
        args.in_flight,
        latencies.len() as f64 / seconds,
        ms(0.5),
        ms(0.99),
        ms(1.0),
    );
    Ok(())
}

/// The zone names of `--zones-file` or `--zone-pattern`, as written.
fn zone_names(args: &Args) -> Result<Vec<String>> {
    if let Some(path) = &args.zones_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect());
    }
    let (Some(pattern), Some(count)) = (&args.zone_pattern, args.zone_count) else {
        bail!("--zone-pattern needs --zone-count");
    };
    if !pattern.contains("{i}") {
        bail!("--zone-pattern {pattern:?} has no {{i}}");
    }
    Ok((1..=count)
        .map(|i| pattern.replace("{i}", &i.to_string()))
        .collect())
}

/// Sends the next unsent UPDATE while a slot is free and reads answers,
/// until every UPDATE is sent and this connection's are answered; returns
/// each one's time from send to answer.
async fn drive(mut conn: Connection, shared: &Shared) -> Result<Vec<Duration>> {
    let mut pending: HashMap<u16, (usize, Instant, OwnedSemaphorePermit)> = HashMap::new();
    let mut latencies = Vec::new();
    let mut exhausted = false;
    loop {
        while !exhausted {
            let permit = if pending.is_empty() {
                shared
                    .slots
                    .clone()
                    .acquire_owned()
                    .await
                    .context("the slots closed")?
            } else {
                match shared.slots.clone().try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) => break,
                }
            };
            let i = shared.next.fetch_add(1, Ordering::Relaxed);
            let Some(update) = shared.updates.get(i) else {
                exhausted = true;
                break;
            };
            if pending.contains_key(&update.request.id) {
                bail!("message ID {} is still unanswered", update.request.id);
            }
            conn.send(&update.request.wire)
                .await
                .with_context(|| format!("sending the update of {}", update.zone))?;
            pending.insert(update.request.id, (i, Instant::now(), permit));
        }
        if pending.is_empty() {
            return Ok(latencies);
        }
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, conn.recv())
            .await
            .map_err(|_| {
                let zones: Vec<&str> = pending
                    .values()
                    .take(3)
                    .map(|(i, ..)| shared.updates[*i].zone.as_str())
                    .collect();
                anyhow::anyhow!(
                    "no answer within {} s to {} updates (e.g. {zones:?})",
                    ANSWER_TIMEOUT.as_secs(),
                    pending.len()
                )
            })?
            .context("the server closed the connection")?
            .context("reading an answer")?;
        let Some(id) = answer.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
            bail!("an answer of {} bytes", answer.len());
        };
        let Some((i, sent, _permit)) = pending.remove(&id) else {
            bail!("an answer with ID {id}, which no unanswered update has");
        };
        let update = &shared.updates[i];
        let verified = tsig::verify_response(&answer, &shared.key, &update.request, unix_now())
            .with_context(|| format!("the answer for {} failed TSIG verification", update.zone))?;
        if verified.rcode != 0 {
            bail!(
                "the update of {} was answered {} (rcode {})",
                update.zone,
                pg2dns_decoder::session::Rcode(verified.rcode),
                verified.rcode
            );
        }
        latencies.push(sent.elapsed());
    }
}
