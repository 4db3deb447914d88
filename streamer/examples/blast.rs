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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use pg2dns::dns::Connection;
use pg2dns_decoder::tsig::{self, SignedRequest, TsigKey};
use pg2dns_decoder::update::{self, Budget, Packer, PushError, UpdateOp};
use pg2dns_decoder::{Record, ZoneName};

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
    #[arg(long)]
    zone: String,
    /// How many A records to add.
    #[arg(long)]
    records: u32,
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
    let zone = ZoneName::parse(&args.zone).context("zone name")?;
    let suffix = args.zone.trim_end_matches('.');

    let encode_started = Instant::now();
    let mut ops = Vec::with_capacity(args.records as usize);
    for i in 1..=args.records {
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
        args.records,
        signed.len(),
        f64::from(args.records) / seconds,
        signed.len() as f64 / seconds,
    );
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
