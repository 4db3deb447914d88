//! DNS says exactly what the database says.
//!
//! Record data reaches BIND byte for byte (BIND itself, fed the same text
//! through `nsupdate`, is the oracle); rows DNS would refuse or silently
//! ignore are refused with the real reason and never half-published; a
//! refused change still removes the record it replaced; `pg2dns.row_state`
//! agrees with what DNS holds; and the conditions that would let DNS drift
//! from the table (a re-created slot, a zone dropped from the
//! config) halt or warn instead of passing silently.
//!
//! These tests read BIND's answers as `dig` prints them (raw presentation
//! text, not the harness's canonical form), so a difference of one byte in
//! record data is a difference here.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::harness::stack::{FORWARD, REVERSE, SLOT};
use crate::harness::{
    pg2dns, run, run_unchecked, tools, wait_until, Check, Pg2dns, Primary, Stack, DNS_DEADLINE,
};

/// One record as `dig` prints it in an AXFR: the text exactly as printed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Printed {
    owner: String,
    ttl: u32,
    rtype: String,
    rdata: String,
}

impl std::fmt::Display for Printed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.owner, self.ttl, self.rtype, self.rdata
        )
    }
}

/// A signed AXFR of `zone` as `dig` prints it, without the apex SOA and NS
/// (which pg2dns does not manage). Owners keep their printed case.
async fn axfr(stack: &Stack, zone: &str) -> Result<Vec<Printed>> {
    let port = stack
        .server(Primary::Bind)?
        .addr()
        .rsplit_once(':')
        .map(|(_, p)| p.to_owned())
        .context("BIND's address has a port")?;
    let output = run(
        tokio::process::Command::new(&tools()?.dig)
            .arg("@127.0.0.1")
            .args(["-p", &port, "-k"])
            .arg(stack.server(Primary::Bind)?.key_file())
            .args([
                "+noall", "+answer", "+onesoa", "+time=5", "+tries=1", "AXFR",
            ])
            .arg(zone),
        Duration::from_secs(60),
    )
    .await?;
    let text = String::from_utf8(output.stdout).context("dig prints ASCII")?;
    let mut records = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
    {
        let record = parse_printed(line).with_context(|| format!("AXFR line {line:?}"))?;
        let apex = record.owner.eq_ignore_ascii_case(zone);
        if !(apex && (record.rtype == "SOA" || record.rtype == "NS")) {
            records.push(record);
        }
    }
    ensure!(
        text.contains("\tSOA\t"),
        "the AXFR of {zone} holds no SOA:\n{text}"
    );
    records.sort();
    Ok(records)
}

/// Splits `owner ttl class type rdata…` keeping the rdata exactly as printed.
fn parse_printed(line: &str) -> Result<Printed> {
    let mut rest = line;
    let mut fields = Vec::new();
    for _ in 0..4 {
        let trimmed = rest.trim_start();
        let end = trimmed
            .find(char::is_whitespace)
            .context("fewer than five fields")?;
        fields.push(&trimmed[..end]);
        rest = &trimmed[end..];
    }
    Ok(Printed {
        owner: fields[0].to_owned(),
        ttl: fields[1].parse()?,
        rtype: fields[3].to_owned(),
        rdata: rest.trim().to_owned(),
    })
}

/// The records of `zone` at `owner` (compared without case, RFC 4343).
async fn at(stack: &Stack, zone: &str, owner: &str) -> Result<Vec<Printed>> {
    Ok(axfr(stack, zone)
        .await?
        .into_iter()
        .filter(|r| r.owner.eq_ignore_ascii_case(owner))
        .collect())
}

/// [`wait_until`] for at most [`DNS_DEADLINE`], with a probe that answers
/// `Ok(value)` once the condition holds and `Err(what it saw)` until then.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Result<T, String>>>,
{
    wait_until(DNS_DEADLINE, what, || {
        let answer = probe();
        async move {
            Ok(match answer.await? {
                Ok(value) => Check::Done(value),
                Err(seen) => Check::NotYet(seen),
            })
        }
    })
    .await
}

/// Waits until BIND holds exactly `want` (as printed, owners lower-cased)
/// at `owner`.
async fn wait_for_rrs(stack: &Stack, zone: &str, owner: &str, want: &[&str]) -> Result<()> {
    let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    eventually(&format!("{owner} to hold exactly {want:?}"), || async {
        let mut have: Vec<String> = at(stack, zone, owner)
            .await?
            .iter()
            .map(|r| format!("{} {} {}", r.ttl, r.rtype, r.rdata))
            .collect();
        have.sort();
        Ok(if have == want {
            Ok(())
        } else {
            Err(format!("{have:?}"))
        })
    })
    .await
}

/// Inserts one row and returns its id.
async fn insert(stack: &Stack, owner: &str, ttl: i32, rtype: &str, rdata: &str) -> Result<i64> {
    Ok(stack
        .db
        .query_one(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ($1, $2, $3, $4) RETURNING id",
            &[&owner, &ttl, &rtype, &rdata],
        )
        .await
        .with_context(|| format!("inserting {owner} {rtype} {rdata:.60}"))?
        .get(0))
}

/// The reasons `pg2dns.rejected` gives for row `id` (any instance).
async fn rejections(stack: &Stack, id: i64) -> Result<Vec<String>> {
    Ok(stack
        .db
        .query(
            "SELECT reason FROM pg2dns.rejected WHERE row_key = $1 ORDER BY id",
            &[&id.to_string()],
        )
        .await
        .context("reading pg2dns.rejected")?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// Waits until row `id` is in `pg2dns.rejected` and returns its first reason.
async fn wait_for_rejection(stack: &Stack, id: i64) -> Result<String> {
    eventually(&format!("row {id} in pg2dns.rejected"), || async {
        let reasons = rejections(stack, id).await?;
        Ok(reasons
            .into_iter()
            .next()
            .ok_or_else(|| "no rejection".to_owned()))
    })
    .await
}

/// One row of `pg2dns.row_state`.
#[derive(Debug, Clone)]
struct StateRow {
    slot: String,
    row_key: String,
    zone: String,
    owner: Vec<u8>,
    rtype: i32,
    rdata: Vec<u8>,
}

async fn row_state(stack: &Stack) -> Result<Vec<StateRow>> {
    Ok(stack
        .db
        .query(
            "SELECT slot, row_key, zone, owner, rtype, rdata FROM pg2dns.row_state",
            &[],
        )
        .await
        .context("reading pg2dns.row_state")?
        .iter()
        .map(|row| StateRow {
            slot: row.get(0),
            row_key: row.get(1),
            zone: row.get(2),
            owner: row.get(3),
            rtype: row.get(4),
            rdata: row.get(5),
        })
        .collect())
}

/// A wire-form name as presentation text, lower-case, `\DDD` for bytes
/// outside letters, digits, `-` and `_`.
fn wire_name(wire: &[u8]) -> Result<String> {
    let mut out = String::new();
    let mut at = 0;
    loop {
        let len = usize::from(*wire.get(at).context("name runs past its bytes")?);
        if len == 0 {
            break;
        }
        let label = wire
            .get(at + 1..at + 1 + len)
            .context("label past the end")?;
        for &b in label {
            match b {
                b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => out.push(char::from(b)),
                b'A'..=b'Z' => out.push(char::from(b.to_ascii_lowercase())),
                _ => out.push_str(&format!("\\{b:03}")),
            }
        }
        out.push('.');
        at += 1 + len;
    }
    Ok(if out.is_empty() { ".".to_owned() } else { out })
}

/// The mnemonic of the types these tests store.
fn type_name(rtype: i32) -> String {
    match rtype {
        1 => "A".to_owned(),
        5 => "CNAME".to_owned(),
        16 => "TXT".to_owned(),
        28 => "AAAA".to_owned(),
        other => format!("TYPE{other}"),
    }
}

/// Writes a config for one instance: `slot` following `zones` on the
/// stack's servers (the same keys and layout as the stack's own config).
fn write_instance_config(stack: &Stack, name: &str, slot: &str, zones: &[&str]) -> Result<PathBuf> {
    let mut text = format!(
        "version = 1\n\n[database]\nurl = \"{}\"\nslot = \"{slot}\"\npublication = \"{SLOT}\"\n",
        stack.pg.url()
    );
    for zone in zones {
        text.push_str(&format!(
            "\n[[zone]]\nname = \"{zone}\"\nprimary = \"{}\"\ntsig_key_file = \"{}\"\n",
            stack.server(Primary::Bind)?.addr(),
            stack.server(Primary::Bind)?.key_file().display()
        ));
    }
    let path = stack.dir().join(format!("{name}.toml"));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `pg2dns setup -c config [extra…]`, whatever its exit status.
async fn setup_with(config: &Path, extra: &[&str]) -> Result<Output> {
    let mut command = tokio::process::Command::new(pg2dns::binary());
    command.arg("setup").args(extra).arg("-c").arg(config);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG2DNS_") {
            command.env_remove(key);
        }
    }
    run_unchecked(&mut command, Duration::from_secs(120)).await
}

/// `pg2dns setup`, which must succeed; returns what it printed.
async fn setup_ok(config: &Path, extra: &[&str]) -> Result<String> {
    let output = setup_with(config, extra).await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        output.status.success(),
        "pg2dns setup {extra:?} failed ({}):\n{text}",
        output.status
    );
    Ok(text)
}

/// Starts `pg2dns run -c config`, logging to `stack.dir()/name.log`.
fn run_instance(stack: &Stack, config: &Path, name: &str) -> Result<Pg2dns> {
    Pg2dns::spawn(config, &stack.dir().join(format!("{name}.log")), &[])
}

/// Printable-ASCII text of `len` bytes that does not compress (so that the
/// index limit of pg2dns.rr is met by real bytes), from a fixed seed.
fn incompressible(len: usize, seed: u64) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/=";
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            char::from(ALPHABET[usize::try_from(state >> 58).unwrap_or(0)])
        })
        .collect()
}

// ---------------------------------------------------------------------------
// 1. Exact bytes, with BIND as the oracle.

/// One value to publish twice: through pg2dns under `PREFIX.pg.example.test.`
/// and through nsupdate under `PREFIX.ns.example.test.`.
struct Case {
    prefix: String,
    /// The prefix as dig prints it, lower-cased (differs when it holds an
    /// escape of a printable byte).
    printed: String,
    rtype: &'static str,
    rdata: String,
}

fn case(prefix: &str, rtype: &'static str, rdata: &str) -> Case {
    Case {
        prefix: prefix.to_owned(),
        printed: prefix.to_ascii_lowercase(),
        rtype,
        rdata: rdata.to_owned(),
    }
}

/// Tricky values for every supported type. None holds `;`, which nsupdate
/// treats as a comment on purpose.
fn exact_byte_cases() -> Vec<Case> {
    let quoted = |s: &str| format!("\"{s}\"");
    let many_250: Vec<String> = (0..8).map(|i| quoted(&incompressible(250, i))).collect();
    let hex64 = "0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789ABCDEF";
    let mut cases = vec![
        case("a", "A", "192.0.2.1"),
        case("a-generic", "A", "\\# 4 C0000263"),
        case("aaaa-long", "AAAA", "2001:db8:0:0:0:0:0:1"),
        case("aaaa-upper", "AAAA", "2001:DB8::A"),
        case("aaaa-mapped", "AAAA", "::ffff:192.0.2.1"),
        case("cname", "CNAME", "target.example.net."),
        case("cname-escape", "CNAME", "\\097lias.example.net."),
        case("cname-root", "CNAME", "."),
        case("mx", "MX", "10 mail.example.net."),
        case("mx-null", "MX", "0 ."),
        case("ns", "NS", "ns1.example.net."),
        case("ptr", "PTR", "host.example.net."),
        case("srv", "SRV", "0 5 5060 sip.example.net."),
        case("srv-max", "SRV", "65535 65535 65535 ."),
        case("txt-utf8", "TXT", "\"grüße\""),
        case("txt-decimal", "TXT", "\"a\\065b\""),
        case("txt-bytes", "TXT", "\"\\255\\000x\""),
        case("txt-multi", "TXT", "\"a b\" \"c\""),
        case("txt-255", "TXT", &quoted(&"z".repeat(255))),
        case("txt-255-escaped", "TXT", &quoted(&"\\255".repeat(255))),
        case("txt-multi-kb", "TXT", &many_250.join(" ")),
        case("txt-quote-backslash", "TXT", "\"x\\\"y\" \"back\\\\slash\""),
        case("txt-plain", "TXT", "plain"),
        case("txt-bare-equals", "TXT", "v=spf1"),
        case("txt-empty", "TXT", "\"\""),
        case("txt-generic", "TXT", "\\# 4 03616263"),
        case("txt-spaces", "TXT", "\"  two  spaces  \""),
        case("caa", "CAA", "0 issue \"ca.example.net\""),
        case("caa-decimal", "CAA", "0 issue \"ca\\046example.net\""),
        case("caa-critical", "CAA", "128 tbs \"x\\255y\""),
        case(
            "caa-iodef",
            "CAA",
            "0 iodef \"mailto:security@example.net\"",
        ),
        case(
            "sshfp",
            "SSHFP",
            "1 1 0123456789abcdef0123456789ABCDEF01234567",
        ),
        case("sshfp-sha256", "SSHFP", &format!("4 2 {hex64}")),
        case("tlsa", "TLSA", &format!("3 1 1 {hex64}")),
        case(
            "tlsa-spaced",
            "TLSA",
            "2 0 1 0123456789ABCDEF 0123456789abcdef 0123456789ABCDEF 0123456789abcdef",
        ),
        case("tlsa-full", "TLSA", "3 1 0 ABCD ef01 2345"),
        case(
            "naptr",
            "NAPTR",
            "100 10 \"U\" \"E2U+sip\" \"!^.*$!sip:info@example.net!\" .",
        ),
        case(
            "naptr-escapes",
            "NAPTR",
            "100 50 \"u\" \"E2U+sip\" \"!^\\\\+1(.*)$!sip:\\\\1@example.net!\" .",
        ),
        case(
            "naptr-replacement",
            "NAPTR",
            "10 20 \"s\" \"SIP+D2U\" \"\" _sip._udp.example.net.",
        ),
        case("hinfo", "HINFO", "\"PC-Intel-700mhz\" \"Linux\""),
        case("hinfo-utf8", "HINFO", "\"Çpu\" \"ösé\""),
        case(
            "svcb",
            "SVCB",
            "1 svc.example.net. mandatory=alpn,port alpn=h2,h3 port=8443 \
             ipv4hint=192.0.2.1,192.0.2.2 ipv6hint=2001:db8::1,2001:db8::2",
        ),
        case("svcb-alias", "SVCB", "0 svc.example.net."),
        case("svcb-dot", "SVCB", "1 . port=53"),
        case("https", "HTTPS", "1 . alpn=h3,h2 ipv4hint=192.0.2.3"),
        case("https-quoted", "HTTPS", "1 . alpn=\"h2,h3\" port=\"443\""),
        case("https-alias", "HTTPS", "0 www.example.net."),
        case(
            "https-no-default",
            "HTTPS",
            "2 cdn.example.net. alpn=h2 no-default-alpn",
        ),
    ];
    // The registry and multi-signer types (#23). A DS needs a delegation,
    // so it is checked by `registry_and_multi_signer_types_…` instead.
    cases.extend(
        registry_type_cases()
            .into_iter()
            .filter(|c| c.rtype != "DS"),
    );
    // Owner names: escapes, mixed case, a 63-byte label, a 255-byte name
    // (3 × 64 + 46 + 17 octets with the suffix `.pg.example.test.`).
    cases.push(Case {
        printed: "abc".to_owned(),
        ..case("\\065bc", "A", "192.0.2.11")
    });
    cases.push(case("MiXeD-Case", "A", "192.0.2.12"));
    // Not a host name, so TXT (BIND's check-names refuses A there).
    cases.push(case("dot\\.inside", "TXT", "\"dot\""));
    cases.push(case(&"l".repeat(63), "A", "192.0.2.14"));
    let long = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(45)
    );
    cases.push(case(&long, "TXT", "\"at the 255-byte name limit\""));
    cases
}

/// A value of each type added for registries and multi-signer set-ups
/// (DS, CDS, CDNSKEY, DNSKEY, CSYNC, DNAME, URI, LOC, OPENPGPKEY, SMIMEA,
/// CERT, RP, AFSDB): digests and keys split over several tokens, mnemonics,
/// UTF-8 and escapes, values at their limits. None is at a zone's apex.
fn registry_type_cases() -> Vec<Case> {
    let hex64 = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
    let key =
        "5zVy3oaNG65m9tD29O7+0RwbPImN2M4V4Jrm1CMn5x/VLsgiFg+OwPSi Kni2b2NllJ06SlLzQFYvuIdSDs/R9w==";
    vec![
        case(
            "ds",
            "DS",
            &format!("60485 ECDSAP256SHA256 2 {} {}", &hex64[..32], &hex64[32..]),
        ),
        case(
            "ds-sha1",
            "DS",
            "60485 5 1 2BB183AF5F22588179A53B0A98631FAD1A292118",
        ),
        case("cds", "CDS", &format!("2371 13 2 {hex64}")),
        case("cds-delete", "CDS", "0 0 0 00"),
        case("dnskey", "DNSKEY", &format!("257 3 13 {key}")),
        case(
            "dnskey-zsk",
            "DNSKEY",
            "256 3 15 l02Woi0iS8Aa25FQkUd9RMzZHJpBoRQwAQEX1SxZJA4=",
        ),
        case("cdnskey", "CDNSKEY", &format!("257 3 13 {key}")),
        case("cdnskey-delete", "CDNSKEY", "0 3 0 AA=="),
        case("csync", "CSYNC", "66 3 A NS AAAA"),
        case("csync-max", "CSYNC", "4294967295 3 CAA TYPE65535 URI"),
        case("dname", "DNAME", "new.example.net."),
        case("dname-escape", "DNAME", "a\\032b.example.net."),
        case("uri", "URI", "10 1 \"ftp://ftp1.example.net/public\""),
        case(
            "uri-utf8",
            "URI",
            "65535 65535 \"https://gr\\195\\188\\195\\159e.example/\\034q\\034\"",
        ),
        case(
            "loc",
            "LOC",
            "52 22 23.500 N 4 53 32.000 E -2.00m 1m 10000m 10m",
        ),
        case("loc-short", "LOC", "42 21 54 N 71 6 18 W -24m 30m"),
        case(
            "loc-max",
            "LOC",
            "90 0 0 S 180 0 0 W 42849672.95m 40000000m 0.01m 0m",
        ),
        case(
            "openpgpkey",
            "OPENPGPKEY",
            "mQENBFVHm5sBCADZ mQENBFVHm5sBCADZ",
        ),
        case("smimea", "SMIMEA", &format!("3 1 1 {hex64}")),
        case(
            "smimea-full",
            "SMIMEA",
            "0 0 0 30820122300d06092a864886f70d01010105000382010f00",
        ),
        case("cert", "CERT", "PGP 0 0 mQENBFVHm5sBCADZ"),
        case("cert-numbers", "CERT", "65535 65535 255 AAAA"),
        case("rp", "RP", "admin\\.root.example.net. info.example.net."),
        case("rp-root", "RP", "admin.example.net. ."),
        case("afsdb", "AFSDB", "1 afs.example.net."),
    ]
}

/// How names inside record data compare with what nsupdate sent.
#[derive(Clone, Copy)]
enum NameCase {
    /// Byte for byte.
    AsSent,
    /// pg2dns publishes names lower-case (docs/sources.md says so: DNS compares
    /// names without case, and BIND treats both spellings as one record, so
    /// two rows differing only in case must be one record to pg2dns too).
    Lower,
}

/// Names inside record data spelt with upper case, which BIND keeps as sent
/// and pg2dns publishes lower-case. (Every other field of these cases is
/// lower-case already, so lower-casing nsupdate's whole text is fair.)
fn mixed_case_rdata_name_cases() -> Vec<Case> {
    vec![
        case("cname-case", "CNAME", "Target.Example.NET."),
        case("cname-escape", "CNAME", "\\065lias.example.net."),
        case("ns", "NS", "ns1.Example.net."),
        case("mx", "MX", "10 Mail.example.net."),
        case(
            "naptr-replacement",
            "NAPTR",
            "10 20 \"s\" \"sip+d2u\" \"\" _sip._udp.Example.net.",
        ),
        case("https-alias", "HTTPS", "0 www.Example.net."),
        case("srv", "SRV", "0 5 5060 SIP.example.net."),
        case("dname", "DNAME", "New.Example.NET."),
        case("rp", "RP", "Admin.Example.net. Info.example.NET."),
        case("afsdb", "AFSDB", "2 AFS.example.net."),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_supported_type_reaches_bind_byte_for_byte_as_nsupdate_would_send_it() -> Result<()> {
    publish_both_ways_and_compare("faith-bytes", &exact_byte_cases(), NameCase::AsSent).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_inside_record_data_are_published_lower_case_and_otherwise_as_nsupdate_sends_them(
) -> Result<()> {
    publish_both_ways_and_compare(
        "faith-rdata-case",
        &mixed_case_rdata_name_cases(),
        NameCase::Lower,
    )
    .await
}

/// Publishes each case through pg2dns under `PREFIX.pg.example.test.` and
/// through `nsupdate` under `PREFIX.ns.example.test.`, then fails unless
/// every pair prints the same in one AXFR.
async fn publish_both_ways_and_compare(label: &str, cases: &[Case], names: NameCase) -> Result<()> {
    let stack = Stack::start(label, Primary::Bind).await?;
    let _pg2dns = stack.run()?;

    let owners: Vec<String> = cases
        .iter()
        .map(|c| format!("{}.pg.example.test.", c.prefix))
        .collect();
    let ttls: Vec<i32> = cases.iter().map(|_| 300).collect();
    let types: Vec<&str> = cases.iter().map(|c| c.rtype).collect();
    let rdatas: Vec<&str> = cases.iter().map(|c| c.rdata.as_str()).collect();
    stack
        .db
        .execute(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[])",
            &[&owners, &ttls, &types, &rdatas],
        )
        .await
        .context("inserting the cases")?;
    let script: String = cases
        .iter()
        .map(|c| {
            format!(
                "update add {}.ns.example.test. 300 {} {}\n",
                c.prefix, c.rtype, c.rdata
            )
        })
        .collect();
    stack.server(Primary::Bind)?.nsupdate(&script).await?;

    // Each side's records by (owner prefix without case, type).
    type Side = BTreeMap<(String, String), Vec<String>>;
    let split = |records: &[Printed], suffix: &str| -> Side {
        let mut side = Side::new();
        for r in records {
            let lower = r.owner.to_ascii_lowercase();
            if let Some(prefix) = lower.strip_suffix(suffix) {
                side.entry((prefix.to_owned(), r.rtype.clone()))
                    .or_default()
                    .push(format!("{} {}", r.ttl, r.rdata));
            }
        }
        side
    };
    let (pg, ns) = eventually("pg2dns to publish every case", || async {
        let records = axfr(&stack, FORWARD).await?;
        let pg = split(&records, ".pg.example.test.");
        let ns = split(&records, ".ns.example.test.");
        let rejected: Vec<String> = stack
            .db
            .query("SELECT row_key || ': ' || reason FROM pg2dns.rejected", &[])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if !rejected.is_empty() {
            bail!("pg2dns refused values BIND accepts: {rejected:#?}");
        }
        Ok(if pg.len() == cases.len() && ns.len() == cases.len() {
            Ok((pg, ns))
        } else {
            Err(format!(
                "{} of {} published by pg2dns, {} by nsupdate",
                pg.len(),
                cases.len(),
                ns.len()
            ))
        })
    })
    .await?;

    let mut differences = Vec::new();
    for c in cases {
        let key = (c.printed.clone(), c.rtype.to_owned());
        let (mine, oracle) = (pg.get(&key).cloned(), ns.get(&key).cloned());
        let oracle = match names {
            NameCase::AsSent => oracle,
            NameCase::Lower => oracle.map(|o| o.iter().map(|r| r.to_ascii_lowercase()).collect()),
        };
        if mine != oracle || mine.is_none() {
            differences.push(format!(
                "{} {} {}\n    pg2dns:   {mine:?}\n    nsupdate: {oracle:?}",
                c.prefix, c.rtype, c.rdata
            ));
        }
    }
    ensure!(
        differences.is_empty(),
        "{} of {} values differ from what BIND made of the same text:\n{}",
        differences.len(),
        cases.len(),
        differences.join("\n")
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. Refused values.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_a_zone_file_would_misread_are_refused_with_the_real_reason_and_never_published(
) -> Result<()> {
    let stack = Stack::start("faith-refused", Primary::Bind).await?;
    let _pg2dns = stack.run()?;
    let long = format!("\"{}\"", "x".repeat(2000));
    let refused: Vec<(&str, &str, &str, Vec<&str>)> = vec![
        (
            "cname.example.test.",
            "CNAME",
            "www",
            vec!["fully qualified", "www"],
        ),
        (
            "srv.example.test.",
            "SRV",
            "0 5 5060 t. extra",
            vec!["extra"],
        ),
        (
            "https.example.test.",
            "HTTPS",
            "1 svc alpn=h2",
            vec!["fully qualified", "svc"],
        ),
        (
            "naptr.example.test.",
            "NAPTR",
            "100 10 \"S\" \"SIP+D2U\" \"\" _sip._udp",
            vec!["fully qualified", "_sip._udp"],
        ),
        (
            "dmarc.example.test.",
            "TXT",
            "v=DMARC1; p=reject",
            vec!["quoted", "\"v=DMARC1; p=reject\""],
        ),
        ("long.example.test.", "TXT", &long, vec!["255", "2000"]),
    ];
    let mut ids = Vec::new();
    for (owner, rtype, rdata, _) in &refused {
        ids.push(insert(&stack, owner, 300, rtype, rdata).await?);
    }
    // Committed after every refused row: once it is in DNS, pg2dns has
    // decided on all of them.
    insert(&stack, "after.example.test.", 300, "A", "192.0.2.99").await?;
    wait_for_rrs(
        &stack,
        FORWARD,
        "after.example.test.",
        &["300 A 192.0.2.99"],
    )
    .await?;

    for ((owner, rtype, rdata, needles), id) in refused.iter().zip(&ids) {
        let reason = wait_for_rejection(&stack, *id).await?;
        for needle in needles {
            ensure!(
                reason.contains(needle),
                "row {id} ({owner} {rtype} {rdata:.40}) was refused, but the reason does not say {needle:?}: {reason:?}"
            );
        }
        let published = at(&stack, FORWARD, owner).await?;
        ensure!(
            published.is_empty(),
            "row {id} ({owner} {rtype}) was refused, yet DNS holds {published:?}"
        );
    }
    let all = axfr(&stack, FORWARD).await?;
    ensure!(
        all.len() == 1,
        "only the good row is in the zone, which holds {all:#?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. A refused change still removes the old record.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_to_a_refused_value_removes_the_old_record_and_leaves_no_row_state() -> Result<()>
{
    let stack = Stack::start("faith-refused-update", Primary::Bind).await?;
    let _pg2dns = stack.run()?;
    let owner = "txt.example.test.";
    let id = insert(&stack, owner, 300, "TXT", "\"v1\"").await?;
    wait_for_rrs(&stack, FORWARD, owner, &["300 TXT \"v1\""]).await?;

    let long = format!("\"{}\"", "y".repeat(2000));
    stack
        .db
        .execute(
            "UPDATE pg2dns.rr SET rdata = $1 WHERE id = $2",
            &[&long, &id],
        )
        .await?;
    wait_for_rrs(&stack, FORWARD, owner, &[]).await?;
    let reason = wait_for_rejection(&stack, id).await?;
    ensure!(
        reason.contains("255"),
        "the refusal of row {id} names the 255-byte limit: {reason:?}"
    );

    stack
        .db
        .execute("DELETE FROM pg2dns.rr WHERE id = $1", &[&id])
        .await?;
    // Committed after the DELETE, so its arrival means the DELETE was handled.
    insert(&stack, "after.example.test.", 300, "A", "192.0.2.98").await?;
    wait_for_rrs(
        &stack,
        FORWARD,
        "after.example.test.",
        &["300 A 192.0.2.98"],
    )
    .await?;
    let left = at(&stack, FORWARD, owner).await?;
    ensure!(left.is_empty(), "{owner} still holds {left:?}");
    eventually(&format!("row_state to forget row {id}"), || async {
        let rows: Vec<StateRow> = row_state(&stack)
            .await?
            .into_iter()
            .filter(|r| r.row_key == id.to_string())
            .collect();
        Ok(if rows.is_empty() {
            Ok(())
        } else {
            Err(format!("{rows:?}"))
        })
    })
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. An owner group too large for one message.

/// The zone's records as `pg2dns.row_state` of `slot` claims them: counts
/// per (owner, type), distinct records only.
fn state_counts(rows: &[StateRow], slot: &str) -> Result<BTreeMap<(String, String), usize>> {
    let mut distinct = std::collections::BTreeSet::new();
    for r in rows.iter().filter(|r| r.slot == slot) {
        distinct.insert((wire_name(&r.owner)?, type_name(r.rtype), r.rdata.clone()));
    }
    let mut counts = BTreeMap::new();
    for (owner, rtype, _) in distinct {
        *counts.entry((owner, rtype)).or_insert(0) += 1;
    }
    Ok(counts)
}

fn dns_counts(records: &[Printed]) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for r in records {
        *counts
            .entry((r.owner.to_ascii_lowercase(), r.rtype.clone()))
            .or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_too_large_for_one_message_is_refused_row_by_row_and_row_state_agrees_with_dns(
) -> Result<()> {
    let stack = Stack::start("faith-big-owner", Primary::Bind).await?;
    stack.append_config("[limits]\nmax_records_per_rrset = 1000\n")?;
    let _pg2dns = stack.run()?;
    let big = "big.example.test.";
    let texts: Vec<String> = (0..300)
        .map(|i| format!("\"{}\"", incompressible(250, 1000 + i)))
        .collect();
    let owners: Vec<&str> = texts.iter().map(|_| big).collect();
    stack.exec("BEGIN").await?;
    let inserted = async {
        let ids: Vec<i64> = stack
            .db
            .query(
                "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
                 SELECT o, 300, 'TXT', r FROM unnest($1::text[], $2::text[]) AS u(o, r)
                 RETURNING id",
                &[&owners, &texts],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        stack
            .exec(
                "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
                   ('small.example.test.', 300, 'A', '192.0.2.20'),
                   ('small.example.test.', 300, 'TXT', '\"ok\"'),
                   ('v6.example.test.', 300, 'AAAA', '2001:db8::20')",
            )
            .await?;
        anyhow::Ok(ids)
    }
    .await;
    let ids = match inserted {
        Ok(ids) => {
            stack.exec("COMMIT").await?;
            ids
        }
        Err(e) => {
            stack.exec("ROLLBACK").await?;
            return Err(e);
        }
    };
    ensure!(ids.len() == 300, "300 rows inserted, got {}", ids.len());

    wait_for_rrs(
        &stack,
        FORWARD,
        "small.example.test.",
        &["300 A 192.0.2.20", "300 TXT \"ok\""],
    )
    .await?;
    wait_for_rrs(
        &stack,
        FORWARD,
        "v6.example.test.",
        &["300 AAAA 2001:db8::20"],
    )
    .await?;
    let at_big = at(&stack, FORWARD, big).await?;
    ensure!(
        at_big.is_empty(),
        "the refused owner has {} records in DNS",
        at_big.len()
    );

    let missing = eventually("a rejection for each of the 300 rows", || async {
        let keys: Vec<String> = stack
            .db
            .query("SELECT row_key FROM pg2dns.rejected", &[])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let missing: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !keys.contains(&id.to_string()))
            .collect();
        Ok(if missing.is_empty() {
            Ok(missing)
        } else {
            Err(format!(
                "{} rows without a rejection (e.g. {:?}); rejected keys: {:?}",
                missing.len(),
                &missing[..missing.len().min(5)],
                &keys[..keys.len().min(5)]
            ))
        })
    })
    .await?;
    ensure!(missing.is_empty());
    for id in &ids {
        let reasons = rejections(&stack, *id).await?;
        ensure!(
            reasons.len() == 1
                && reasons[0].contains("big.example.test")
                && reasons[0].contains("more than one UPDATE can hold"),
            "row {id} is refused once, naming the owner and the message limit: {reasons:?}"
        );
    }

    let dns = eventually("row_state to agree with the AXFR", || async {
        let dns = dns_counts(&axfr(&stack, FORWARD).await?);
        let state = state_counts(&row_state(&stack).await?, SLOT)?;
        Ok(if dns == state {
            Ok(dns)
        } else {
            Err(format!("AXFR {dns:?}, row_state {state:?}"))
        })
    })
    .await?;
    ensure!(
        !dns.contains_key(&(big.to_owned(), "TXT".to_owned())),
        "row_state and DNS agree, and neither has the big owner: {dns:?}"
    );
    ensure!(dns.len() == 3, "three RRsets published: {dns:?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. What servers silently ignore, pg2dns refuses.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cname_beside_other_data_and_a_second_cname_are_refused_but_a_swap_in_one_transaction_is_published(
) -> Result<()> {
    let stack = Stack::start("faith-cname", Primary::Bind).await?;
    let _pg2dns = stack.run()?;
    let cname_reason = |reason: &str| {
        let lower = reason.to_ascii_lowercase();
        lower.contains("cname") && lower.contains("other data")
    };

    // A CNAME where an A exists.
    insert(&stack, "host.example.test.", 300, "A", "192.0.2.30").await?;
    wait_for_rrs(&stack, FORWARD, "host.example.test.", &["300 A 192.0.2.30"]).await?;
    let id = insert(
        &stack,
        "host.example.test.",
        300,
        "CNAME",
        "target.example.net.",
    )
    .await?;
    let reason = wait_for_rejection(&stack, id).await?;
    ensure!(
        cname_reason(&reason),
        "a CNAME beside an A is refused naming CNAME and other data: {reason:?}"
    );

    // An A where a CNAME exists.
    insert(
        &stack,
        "alias.example.test.",
        300,
        "CNAME",
        "target.example.net.",
    )
    .await?;
    wait_for_rrs(
        &stack,
        FORWARD,
        "alias.example.test.",
        &["300 CNAME target.example.net."],
    )
    .await?;
    let id = insert(&stack, "alias.example.test.", 300, "A", "192.0.2.31").await?;
    let reason = wait_for_rejection(&stack, id).await?;
    ensure!(
        cname_reason(&reason),
        "an A beside a CNAME is refused naming CNAME and other data: {reason:?}"
    );

    // A second CNAME at the same name.
    let id = insert(
        &stack,
        "alias.example.test.",
        300,
        "CNAME",
        "other.example.net.",
    )
    .await?;
    let reason = wait_for_rejection(&stack, id).await?;
    ensure!(
        reason.to_ascii_lowercase().contains("cname"),
        "a second CNAME is refused naming CNAME: {reason:?}"
    );

    // Replacing an A by a CNAME in one transaction.
    insert(&stack, "swap.example.test.", 300, "A", "192.0.2.32").await?;
    wait_for_rrs(&stack, FORWARD, "swap.example.test.", &["300 A 192.0.2.32"]).await?;
    stack
        .exec(
            "BEGIN;
             DELETE FROM pg2dns.rr WHERE owner = 'swap.example.test.';
             INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
               VALUES ('swap.example.test.', 300, 'CNAME', 'target.example.net.');
             COMMIT;",
        )
        .await?;
    wait_for_rrs(
        &stack,
        FORWARD,
        "swap.example.test.",
        &["300 CNAME target.example.net."],
    )
    .await?;

    // The refused rows changed nothing: exactly the first of each stays.
    let all: Vec<String> = axfr(&stack, FORWARD)
        .await?
        .iter()
        .map(|r| format!("{} {} {}", r.owner.to_ascii_lowercase(), r.rtype, r.rdata))
        .collect();
    ensure!(
        all == [
            "alias.example.test. CNAME target.example.net.",
            "host.example.test. A 192.0.2.30",
            "swap.example.test. CNAME target.example.net.",
        ],
        "the zone holds {all:#?}"
    );
    let swap_id: i64 = stack
        .db
        .query_one(
            "SELECT id FROM pg2dns.rr WHERE owner = 'swap.example.test.' AND type = 'CNAME'",
            &[],
        )
        .await?
        .get(0);
    let swap = rejections(&stack, swap_id).await?;
    ensure!(swap.is_empty(), "the swap's CNAME was refused: {swap:?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// 6. One TTL per RRset.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rrset_takes_the_smallest_ttl_of_its_rows_and_follows_it_as_rows_go() -> Result<()> {
    let stack = Stack::start("faith-ttl", Primary::Bind).await?;
    let _pg2dns = stack.run()?;

    // Two rows for one record (the owner spelt two ways).
    let short = insert(&stack, "same.example.test.", 300, "A", "192.0.2.40").await?;
    insert(&stack, "SAME.example.test", 600, "A", "192.0.2.40").await?;
    wait_for_rrs(&stack, FORWARD, "same.example.test.", &["300 A 192.0.2.40"]).await?;
    stack
        .db
        .execute("DELETE FROM pg2dns.rr WHERE id = $1", &[&short])
        .await?;
    wait_for_rrs(&stack, FORWARD, "same.example.test.", &["600 A 192.0.2.40"]).await?;

    // Two records of one RRset.
    let first = insert(&stack, "set.example.test.", 100, "A", "192.0.2.41").await?;
    insert(&stack, "set.example.test.", 200, "A", "192.0.2.42").await?;
    wait_for_rrs(
        &stack,
        FORWARD,
        "set.example.test.",
        &["100 A 192.0.2.41", "100 A 192.0.2.42"],
    )
    .await?;
    stack
        .db
        .execute("DELETE FROM pg2dns.rr WHERE id = $1", &[&first])
        .await?;
    wait_for_rrs(&stack, FORWARD, "set.example.test.", &["200 A 192.0.2.42"]).await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 7. Two instances on one database.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_their_own_slots_and_zones_keep_separate_state_on_one_database(
) -> Result<()> {
    let stack = Stack::start("faith-two-instances", Primary::Bind).await?;
    let forward = write_instance_config(&stack, "forward", SLOT, &[FORWARD])?;
    let reverse_slot = "pg2dns_reverse";
    let reverse = write_instance_config(&stack, "reverse", reverse_slot, &[REVERSE])?;
    setup_ok(&forward, &[]).await?;
    setup_ok(&reverse, &[]).await?;
    let mut one = run_instance(&stack, &forward, "run-forward")?;
    let mut two = run_instance(&stack, &reverse, "run-reverse")?;

    let logs = |one: &Pg2dns, two: &Pg2dns| {
        format!(
            "forward instance:\n{}\nreverse instance:\n{}",
            one.log_tail(40),
            two.log_tail(40)
        )
    };
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('www.example.test.', 300, 'A', '192.0.2.10'),
               ('mail.example.test.', 300, 'A', '192.0.2.11'),
               ('10.2.0.192.in-addr.arpa.', 300, 'PTR', 'www.example.test.'),
               ('11.2.0.192.in-addr.arpa.', 300, 'PTR', 'mail.example.test.')",
        )
        .await?;
    stack
        .wait_until_dns_matches_table(DNS_DEADLINE)
        .await
        .with_context(|| logs(&one, &two))?;
    stack
        .exec(
            "DELETE FROM pg2dns.rr WHERE owner IN ('mail.example.test.', '11.2.0.192.in-addr.arpa.')",
        )
        .await?;
    stack
        .wait_until_dns_matches_table(DNS_DEADLINE)
        .await
        .with_context(|| logs(&one, &two))?;
    ensure!(
        at(&stack, FORWARD, "mail.example.test.").await?.is_empty()
            && at(&stack, REVERSE, "11.2.0.192.in-addr.arpa.")
                .await?
                .is_empty(),
        "both deletes reached DNS"
    );

    let by_slot = eventually("row_state split by slot", || async {
        let mut by_slot: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for r in row_state(&stack).await? {
            by_slot.entry(r.slot.clone()).or_default().push((
                r.zone.trim_end_matches('.').to_owned(),
                wire_name(&r.owner)?,
            ));
        }
        for rows in by_slot.values_mut() {
            rows.sort();
        }
        let want: BTreeMap<String, Vec<(String, String)>> = [
            (
                SLOT.to_owned(),
                vec![("example.test".to_owned(), "www.example.test.".to_owned())],
            ),
            (
                reverse_slot.to_owned(),
                vec![(
                    "2.0.192.in-addr.arpa".to_owned(),
                    "10.2.0.192.in-addr.arpa.".to_owned(),
                )],
            ),
        ]
        .into();
        Ok(if by_slot == want {
            Ok(by_slot)
        } else {
            Err(format!("{by_slot:?}"))
        })
    })
    .await
    .with_context(|| logs(&one, &two))?;
    ensure!(by_slot.len() == 2);
    one.assert_running()?;
    two.assert_running()?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 8. A re-created slot.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_and_recreated_slot_halts_naming_the_gap_until_setup_accepts_it() -> Result<()> {
    let stack = Stack::start("faith-slot-gap", Primary::Bind).await?;
    let config = write_instance_config(&stack, "gap", SLOT, &[FORWARD, REVERSE])?;
    let mut first = run_instance(&stack, &config, "run-before-gap")?;
    insert(&stack, "before.example.test.", 300, "A", "192.0.2.50").await?;
    wait_for_rrs(
        &stack,
        FORWARD,
        "before.example.test.",
        &["300 A 192.0.2.50"],
    )
    .await
    .with_context(|| first.log_tail(40))?;
    let status = first.terminate().await?;
    ensure!(status.success(), "SIGTERM stops pg2dns cleanly: {status}");
    let progress: String = stack
        .db
        .query_one(
            "SELECT lsn::text FROM pg2dns.progress WHERE slot = $1",
            &[&SLOT],
        )
        .await?
        .get(0);

    drop_slot(&stack).await?;
    insert(&stack, "gap.example.test.", 300, "A", "192.0.2.51").await?;
    let printed = setup_ok(&config, &[]).await?;
    ensure!(
        printed.contains("never streamed"),
        "setup warns about the gap; it printed:\n{printed}"
    );
    let slot_at: String = stack
        .db
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&SLOT],
        )
        .await?
        .get(0);

    let mut halted = run_instance(&stack, &config, "run-gap")?;
    let status = halted.wait_exit(DNS_DEADLINE).await?;
    let log = halted.log();
    ensure!(
        !status.success(),
        "pg2dns must halt on a gap, yet exited {status}; log:\n{log}"
    );
    for needle in [SLOT, progress.as_str(), slot_at.as_str(), "never streamed"] {
        ensure!(
            log.contains(needle),
            "the halt names {needle:?} (slot {SLOT}, progress {progress}, slot at {slot_at}); log:\n{log}"
        );
    }

    let printed = setup_ok(&config, &["--accept-gap"]).await?;
    let mut resumed = run_instance(&stack, &config, "run-after-gap")?;
    insert(&stack, "after.example.test.", 300, "A", "192.0.2.52").await?;
    wait_for_rrs(
        &stack,
        FORWARD,
        "after.example.test.",
        &["300 A 192.0.2.52"],
    )
    .await
    .with_context(|| {
        format!(
            "setup --accept-gap printed:\n{printed}\nrun:\n{}",
            resumed.log_tail(40)
        )
    })?;
    resumed.assert_running()?;
    Ok(())
}

/// Drops the stack's slot, waiting for the walsender of a run that just
/// exited to let go of it.
async fn drop_slot(stack: &Stack) -> Result<()> {
    eventually("the slot to be dropped", || async {
        match stack
            .db
            .execute("SELECT pg_drop_replication_slot($1)", &[&SLOT])
            .await
        {
            Ok(_) => Ok(Ok(())),
            Err(e) if format!("{e:?}").contains("is active") => Ok(Err(format!("{e}"))),
            Err(e) => Err(e).context("dropping the slot"),
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// 9. A record near the table's index limit.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txt_record_near_the_tables_index_limit_is_published_and_the_stream_goes_on() -> Result<()>
{
    let stack = Stack::start("faith-near-limit", Primary::Bind).await?;
    let _pg2dns = stack.run()?;
    let strings: Vec<String> = (0..10)
        .map(|i| format!("\"{}\"", incompressible(255, 77 + i)))
        .collect();
    let rdata = strings.join(" ");
    ensure!(
        (2_550..2_704).contains(&rdata.len()),
        "the rdata is close to the 2,704-byte limit: {} bytes",
        rdata.len()
    );
    let owner = "dkim.example.test.";
    insert(&stack, owner, 300, "TXT", &rdata).await?;
    insert(&stack, "later.example.test.", 300, "A", "192.0.2.60").await?;
    wait_for_rrs(
        &stack,
        FORWARD,
        "later.example.test.",
        &["300 A 192.0.2.60"],
    )
    .await?;
    let expected = format!("300 TXT {rdata}");
    wait_for_rrs(&stack, FORWARD, owner, &[&expected]).await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 10. A TRUNCATE is a mass delete: see guard.rs (held until released).

// ---------------------------------------------------------------------------
// 11. Zone set changes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_removed_from_the_config_is_named_in_a_warning_at_start() -> Result<()> {
    let stack = Stack::start("faith-zone-removed", Primary::Bind).await?;
    let config = write_instance_config(&stack, "zones", SLOT, &[FORWARD, REVERSE])?;
    let mut both = run_instance(&stack, &config, "run-two-zones")?;
    insert(&stack, "www.example.test.", 300, "A", "192.0.2.80").await?;
    wait_for_rrs(&stack, FORWARD, "www.example.test.", &["300 A 192.0.2.80"])
        .await
        .with_context(|| both.log_tail(40))?;
    let status = both.terminate().await?;
    ensure!(status.success(), "SIGTERM stops pg2dns cleanly: {status}");

    write_instance_config(&stack, "zones", SLOT, &[FORWARD])?;
    let mut one = run_instance(&stack, &config, "run-one-zone")?;
    let removed = REVERSE.trim_end_matches('.');
    eventually("a warning naming the removed zone", || async {
        let log = one.log();
        Ok(
            match log
                .lines()
                .find(|l| l.contains("WARN") && l.contains("removed") && l.contains(removed))
            {
                Some(_) => Ok(()),
                None => Err(log),
            },
        )
    })
    .await?;
    one.assert_running()?;
    Ok(())
}

on_each_primary!(
    registry_and_multi_signer_types_reach_the_server_byte_for_byte_and_reconcile_finds_them_in_sync,
    a_second_dname_an_apex_dname_and_a_ds_outside_a_delegation_are_refused_before_sending,
    a_cname_at_the_apex_is_refused_before_sending_and_reconcile_names_the_refusal,
    a_cname_beside_records_left_to_another_tool_is_refused_before_sending,
    a_delegation_with_glue_and_a_name_below_it_are_published_as_the_table_says,
    deleting_the_row_of_the_zones_last_apex_ns_leaves_it_and_reconcile_finds_the_zone_in_sync,
    a_name_below_another_tools_dname_is_refused_before_sending,
    records_below_a_dname_and_a_dname_above_records_are_refused_naming_the_dname,
);

/// Every registry and multi-signer type published through the stream and
/// read back by a transfer: the server's presentation of each record parses
/// to the bytes of the row's. A DS goes with its delegation's NS. PowerDNS
/// takes no DNSKEY, CDS or CDNSKEY by UPDATE (it answers NOERROR and keeps
/// none: it manages DNSSEC keys itself; measured 2026-12-07), so on
/// PowerDNS those are checked to be absent, and reconcile, which compares
/// them, is run on BIND and Knot only.
async fn registry_and_multi_signer_types_reach_the_server_byte_for_byte_and_reconcile_finds_them_in_sync(
    primary: Primary,
) -> Result<()> {
    use pg2dns_decoder::rdata::{self, RType};
    let stack = Stack::start("registry-types", primary).await?;
    let _pg2dns = stack.run()?;
    let mut rows: Vec<(String, &str, String)> = registry_type_cases()
        .into_iter()
        .map(|c| {
            let owner = if c.rtype == "DS" {
                format!("{}.deleg.example.test.", c.prefix)
            } else {
                format!("{}.types.example.test.", c.prefix)
            };
            (owner, c.rtype, c.rdata)
        })
        .collect();
    // The delegations first: a DS where the rows give no NS is refused.
    for prefix in ["ds", "ds-sha1"] {
        rows.insert(
            0,
            (
                format!("{prefix}.deleg.example.test."),
                "NS",
                "ns1.example.net.".into(),
            ),
        );
    }
    for (owner, rtype, rdata) in &rows {
        insert(&stack, owner, 300, rtype, rdata).await?;
    }
    let ignored_by_powerdns = |t: &str| matches!(t, "DNSKEY" | "CDS" | "CDNSKEY");
    let expected: Vec<&(String, &str, String)> = rows
        .iter()
        .filter(|(_, t, _)| primary != Primary::PowerDns || !ignored_by_powerdns(t))
        .collect();
    eventually("every record in a transfer, byte for byte", || async {
        let rejected = rejections_all(&stack).await?;
        if !rejected.is_empty() {
            bail!("pg2dns refused rows: {rejected:#?}");
        }
        let zone = stack.axfr(FORWARD).await?;
        let mut wrong = Vec::new();
        for (owner, rtype, rdata) in &expected {
            let t = RType::parse(rtype).map_err(|e| anyhow::anyhow!("{e}"))?;
            let want =
                rdata::parse(t, rdata).map_err(|e| anyhow::anyhow!("{rtype} {rdata}: {e}"))?;
            let got: Vec<&crate::harness::records::Record> = zone
                .iter()
                .filter(|r| r.owner == *owner && r.rtype == *rtype)
                .collect();
            let same = got.len() == 1
                && got
                    .iter()
                    .all(|r| rdata::parse(t, &r.rdata).as_ref() == Ok(&want));
            if !same {
                wrong.push(format!("{owner} {rtype} {rdata}: the server has {got:?}"));
            }
        }
        Ok(if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("\n"))
        })
    })
    .await?;
    if primary == Primary::PowerDns {
        let zone = stack.axfr(FORWARD).await?;
        let kept: Vec<_> = zone
            .iter()
            .filter(|r| ignored_by_powerdns(&r.rtype))
            .collect();
        ensure!(
            kept.is_empty(),
            "PowerDNS now keeps DNSKEY, CDS or CDNSKEY from an UPDATE: {kept:?}; update docs/sources.md and this test"
        );
    } else {
        let out = stack.reconcile(&[], &[]).await?;
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            out.status.code() == Some(0),
            "reconcile must find the zone in sync:\n{printed}"
        );
    }
    Ok(())
}

/// What the servers refuse, ignore or crash on around DNAME and DS
/// (docs/notes/dns-servers.md §3c) is refused before sending, with the
/// reason: a second DNAME at a name (Knot 3.2.6 crashes on it), a DNAME at
/// the apex, a DS at the apex or where the rows give no NS. The server
/// keeps serving, the first DNAME stays, and a DNAME replaced by a row
/// update is replaced.
async fn a_second_dname_an_apex_dname_and_a_ds_outside_a_delegation_are_refused_before_sending(
    primary: Primary,
) -> Result<()> {
    let (stack, mut pg2dns, first) = running_with_a_dname("dname-rules", primary).await?;
    insert(
        &stack,
        "old.example.test.",
        300,
        "TXT",
        "\"beside the DNAME\"",
    )
    .await?;
    let refused = [
        (
            insert(
                &stack,
                "old.example.test.",
                300,
                "DNAME",
                "other.example.net.",
            )
            .await?,
            "old.example.test. would have two DNAME records",
        ),
        (
            insert(&stack, "example.test.", 300, "DNAME", "example.net.").await?,
            "a DNAME cannot be at the zone apex (example.test.)",
        ),
        (
            insert(&stack, "example.test.", 300, "DS", "1 13 99 ab").await?,
            "a DS record cannot be at the zone apex (example.test.)",
        ),
        (
            insert(&stack, "nodeleg.example.test.", 300, "DS", "1 13 99 ab").await?,
            "nodeleg.example.test. has no NS records among the rows",
        ),
    ];
    refused_naming(&stack, &refused).await?;
    stack
        .db
        .execute(
            "UPDATE pg2dns.rr SET rdata = 'newer.example.net.' WHERE id = $1",
            &[&first],
        )
        .await?;
    answered_after(&stack, "after.example.test.", "192.0.2.1").await?;
    eventually("the replaced DNAME and the TXT beside it", || async {
        let zone = stack.axfr(FORWARD).await?;
        let mut at_old: Vec<String> = zone
            .iter()
            .filter(|r| r.owner == "old.example.test.")
            .map(|r| format!("{} {}", r.rtype, r.rdata))
            .collect();
        at_old.sort();
        let apex_bad = zone
            .iter()
            .any(|r| r.owner == "example.test." && (r.rtype == "DNAME" || r.rtype == "DS"));
        Ok(
            if at_old == ["DNAME newer.example.net.", "TXT \"beside the DNAME\""] && !apex_bad {
                Ok(())
            } else {
                Err(format!("{at_old:?}, apex DNAME or DS: {apex_bad}"))
            },
        )
    })
    .await?;
    pg2dns.assert_running()?;
    Ok(())
}

/// A stack with pg2dns running and a row's DNAME at `Old.Example.Test.`
/// (to `new.example.net.`), the DNS scenarios' common start; with the
/// row's id.
async fn running_with_a_dname(label: &str, primary: Primary) -> Result<(Stack, Pg2dns, i64)> {
    let stack = Stack::start(label, primary).await?;
    let pg2dns = stack.run()?;
    let id = insert(
        &stack,
        "Old.Example.Test.",
        300,
        "DNAME",
        "new.example.net.",
    )
    .await?;
    Ok((stack, pg2dns, id))
}

/// Waits for each row to be refused, with a reason starting with the
/// given text.
async fn refused_naming(stack: &Stack, refused: &[(i64, &str)]) -> Result<()> {
    for &(id, why) in refused {
        let reason = wait_for_rejection(stack, id).await?;
        ensure!(reason.starts_with(why), "row {id}: {reason}");
    }
    Ok(())
}

/// Inserts an A record at `owner` and waits until the server answers it:
/// committed after the rows before it, its arrival means those were
/// decided.
async fn answered_after(stack: &Stack, owner: &str, address: &str) -> Result<()> {
    insert(stack, owner, 300, "A", address).await?;
    stack.wait_until_answers(owner, "A", DNS_DEADLINE).await?;
    Ok(())
}

/// A stack whose forward zone leaves `excluded` records to another tool,
/// which has published one with `nsupdate` (`update add …`) before pg2dns
/// starts.
async fn with_another_tools_record(
    label: &str,
    primary: Primary,
    excluded: &str,
    update: &str,
) -> Result<Stack> {
    let stack = Stack::start(label, primary).await?;
    stack.set_zone_option(FORWARD, &format!("exclude_types = [\"{excluded}\"]"))?;
    stack.server(primary)?.nsupdate(update).await?;
    Ok(stack)
}

/// Every reason in `pg2dns.rejected`, with its row key.
async fn rejections_all(stack: &Stack) -> Result<Vec<String>> {
    Ok(stack
        .db
        .query("SELECT row_key || ': ' || reason FROM pg2dns.rejected", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// `pg2dns reconcile --apply` exits 0, and its report names `refusal`
/// among the rows it does not publish, never "still differs".
async fn reconcile_repairs_nothing_and_names(stack: &Stack, refusal: &str) -> Result<()> {
    let out = stack.reconcile(&["--apply"], &[]).await?;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.code() == Some(0) && !printed.contains("still differs"),
        "reconcile --apply must find the zone in sync:\n{printed}"
    );
    ensure!(
        printed.contains("refused and not published") && printed.contains(refusal),
        "reconcile must name the refused row's reason {refusal:?}:\n{printed}"
    );
    Ok(())
}

/// The apex always holds SOA and NS, so the server would ignore a CNAME
/// there (NOERROR): refused before sending, recorded, not claimed by the
/// row state, and explained by reconcile.
async fn a_cname_at_the_apex_is_refused_before_sending_and_reconcile_names_the_refusal(
    primary: Primary,
) -> Result<()> {
    let stack = Stack::start("apex-cname", primary).await?;
    let mut pg2dns = stack.run()?;
    let id = insert(&stack, "example.test.", 300, "CNAME", "other.test.").await?;
    let reason = wait_for_rejection(&stack, id).await?;
    let why =
        "a CNAME cannot be at the zone apex (example.test. holds the zone's SOA and NS records)";
    ensure!(reason.contains(why), "{reason}");
    answered_after(&stack, "after.example.test.", "192.0.2.1").await?;
    ensure!(
        stack.query("example.test.", "CNAME").await?.is_empty(),
        "{primary:?} must not hold the apex CNAME"
    );
    ensure!(
        !row_state(&stack)
            .await?
            .iter()
            .any(|r| r.row_key == id.to_string()),
        "the row state must not claim the refused CNAME"
    );
    reconcile_repairs_nothing_and_names(&stack, why).await?;
    pg2dns.assert_running()?;
    Ok(())
}

/// A zone that leaves TXT records to another tool (`exclude_types`) holds
/// one at a name where a row then wants a CNAME: the server would ignore
/// the CNAME, so pg2dns, which read the zone at start, refuses it.
async fn a_cname_beside_records_left_to_another_tool_is_refused_before_sending(
    primary: Primary,
) -> Result<()> {
    let stack = with_another_tools_record(
        "held-cname",
        primary,
        "TXT",
        "update add alias.example.test. 300 TXT \"owned by another tool\"",
    )
    .await?;
    let mut pg2dns = stack.run()?;
    let id = insert(
        &stack,
        "alias.example.test.",
        300,
        "CNAME",
        "www.example.test.",
    )
    .await?;
    let reason = wait_for_rejection(&stack, id).await?;
    let why = "alias.example.test. holds TXT in the zone, left to another tool";
    ensure!(
        reason.contains(why) && reason.contains("silently ignore this CNAME"),
        "{reason}"
    );
    answered_after(&stack, "after.example.test.", "192.0.2.1").await?;
    ensure!(
        stack
            .query("alias.example.test.", "CNAME")
            .await?
            .is_empty()
            && stack.query("alias.example.test.", "TXT").await?.len() == 1,
        "{primary:?} must keep the other tool's TXT and hold no CNAME"
    );
    reconcile_repairs_nothing_and_names(&stack, why).await?;
    pg2dns.assert_running()?;
    Ok(())
}

/// `pg2dns.rejected` describes what is unpublished now: the rejection of
/// an MX that waited for its target's address goes when the MX is
/// published, that of a row corrected later goes with the correction, and
/// any other stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_leaves_pg2dns_rejected_once_its_row_is_published() -> Result<()> {
    let stack = Stack::start("rejection-leaves", Primary::Bind).await?;
    let _pg2dns = stack.run()?;
    let mx = insert(&stack, "example.test.", 300, "MX", "10 mail.example.test.").await?;
    let bad = insert(&stack, "bad.example.test.", 300, "A", "not-an-address").await?;
    let other = insert(&stack, "other.example.test.", 300, "A", "nor-this").await?;
    let waiting = wait_for_rejection(&stack, mx).await?;
    ensure!(waiting.contains("has no address record"), "{waiting}");
    wait_for_rejection(&stack, bad).await?;
    wait_for_rejection(&stack, other).await?;

    insert(&stack, "mail.example.test.", 300, "A", "192.0.2.25").await?;
    stack
        .wait_until_answers("example.test.", "MX", DNS_DEADLINE)
        .await?;
    eventually("the published MX's rejection to leave", || async {
        let left = rejections(&stack, mx).await?;
        Ok(if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        })
    })
    .await?;

    stack
        .exec(&format!(
            "UPDATE pg2dns.rr SET rdata = '192.0.2.9' WHERE id = {bad}"
        ))
        .await?;
    stack
        .wait_until_answers("bad.example.test.", "A", DNS_DEADLINE)
        .await?;
    eventually("the corrected row's rejection to leave", || async {
        let left = rejections(&stack, bad).await?;
        Ok(if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        })
    })
    .await?;
    ensure!(
        rejections(&stack, other).await?.len() == 1,
        "the rejection of a row still unpublished stays"
    );
    Ok(())
}

/// Records below a delegation (the glue and an occluded name) are zone
/// data like any other to BIND and Knot: an UPDATE adds them, a transfer
/// shows them, and reconcile finds the zone in sync (resolvers are
/// referred to the child for them; pg2dns publishes what the rows say).
async fn a_delegation_with_glue_and_a_name_below_it_are_published_as_the_table_says(
    primary: Primary,
) -> Result<()> {
    let stack = Stack::start("delegation", primary).await?;
    let mut pg2dns = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('sub.example.test.', 300, 'NS', 'ns.sub.example.test.'),
               ('ns.sub.example.test.', 300, 'A', '192.0.2.53'),
               ('www.sub.example.test.', 300, 'A', '192.0.2.80')",
        )
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    let out = stack.reconcile(&[], &[]).await?;
    ensure!(
        out.status.code() == Some(0),
        "reconcile must find the zone in sync:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    stack
        .exec("DELETE FROM pg2dns.rr WHERE owner LIKE '%sub.example.test.'")
        .await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    pg2dns.assert_running()?;
    Ok(())
}

/// The zone's own apex NS (from its zone file) claimed by a row and then
/// deleted: servers ignore deleting the last apex NS (RFC 2136 §3.4.2.4),
/// and must, since a zone needs one. Harmless: the zone keeps its NS, and
/// reconcile, which leaves the apex NS of a zone it holds outside pg2dns
/// alone, finds it in sync instead of reporting a difference it cannot
/// repair.
async fn deleting_the_row_of_the_zones_last_apex_ns_leaves_it_and_reconcile_finds_the_zone_in_sync(
    primary: Primary,
) -> Result<()> {
    let stack = Stack::start("last-apex-ns", primary).await?;
    let mut pg2dns = stack.run()?;
    let id = insert(&stack, "example.test.", 300, "NS", "ns.pg2dns.invalid.").await?;
    answered_after(&stack, "after1.example.test.", "192.0.2.1").await?;
    stack
        .exec(&format!("DELETE FROM pg2dns.rr WHERE id = {id}"))
        .await?;
    answered_after(&stack, "after2.example.test.", "192.0.2.2").await?;
    let ns = stack.query("example.test.", "NS").await?;
    ensure!(
        ns.len() == 1 && ns[0].rdata == "ns.pg2dns.invalid.",
        "{primary:?} keeps the zone's last NS: {ns:?}"
    );
    let out = stack.reconcile(&["--apply"], &[]).await?;
    let printed = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.code() == Some(0) && !printed.contains("still differs"),
        "reconcile --apply must find the zone in sync:\n{printed}"
    );
    pg2dns.assert_running()?;
    Ok(())
}

/// A name below a DNAME that another tool keeps (measured 2026-12-07):
/// BIND and PowerDNS would keep it unanswered (occluded), Knot refuses the
/// UPDATE. pg2dns refuses the row before sending on every server, naming
/// the DNAME, and the stream goes on.
async fn a_name_below_another_tools_dname_is_refused_before_sending(
    primary: Primary,
) -> Result<()> {
    let stack = with_another_tools_record(
        "below-dname",
        primary,
        "TYPE39",
        "update add old.example.test. 300 DNAME new.example.test.",
    )
    .await?;
    let mut pg2dns = stack.run()?;
    let id = insert(&stack, "x.old.example.test.", 300, "A", "192.0.2.7").await?;
    let reason = wait_for_rejection(&stack, id).await?;
    ensure!(
        reason.starts_with("x.old.example.test. is below the DNAME at old.example.test."),
        "{reason}"
    );
    answered_after(&stack, "after.example.test.", "192.0.2.1").await?;
    let zone = stack.axfr(FORWARD).await?;
    ensure!(
        !zone.iter().any(|r| r.owner == "x.old.example.test."),
        "the refused name reached the zone: {zone:?}"
    );
    pg2dns.assert_running()?;
    Ok(())
}

/// Nothing below a DNAME, in both orders (docs/notes/dns-servers.md §3c:
/// BIND and PowerDNS keep such data unanswered, Knot refuses it): records
/// added below a row's DNAME, one and two labels down, are refused naming
/// the DNAME; a DNAME added above a name with records is refused naming
/// that name; a record beside the DNAME is published. A transaction that
/// deletes the name below and touches the refused DNAME publishes it. The
/// zone ends equal to the rows that were not refused, and reconcile agrees.
async fn records_below_a_dname_and_a_dname_above_records_are_refused_naming_the_dname(
    primary: Primary,
) -> Result<()> {
    let (stack, mut pg2dns, _) = running_with_a_dname("dname-subtree", primary).await?;
    let host = insert(&stack, "host.sub.example.test.", 300, "A", "192.0.2.1").await?;
    stack
        .wait_until_answers("host.sub.example.test.", "A", DNS_DEADLINE)
        .await?;
    let below = insert(&stack, "x.old.example.test.", 300, "A", "192.0.2.7").await?;
    let deeper = insert(
        &stack,
        "Mail.Deep.OLD.example.test.",
        300,
        "TXT",
        "\"grüße \\\"quoted\\\"\"",
    )
    .await?;
    let above = insert(
        &stack,
        "sub.example.test.",
        300,
        "DNAME",
        "elsewhere.example.net.",
    )
    .await?;
    insert(
        &stack,
        "old.example.test.",
        300,
        "TXT",
        "\"beside the DNAME\"",
    )
    .await?;
    refused_naming(
        &stack,
        &[
            (below, "x.old.example.test. is below the DNAME at old.example.test."),
            (
                deeper,
                "mail.deep.old.example.test. is below the DNAME at old.example.test.",
            ),
            (
                above,
                "a DNAME at sub.example.test. would redirect the names below it, and host.sub.example.test. holds records",
            ),
        ],
    )
    .await?;
    let rejected = stack.rejected().await?;
    let at = |id: i64| rejected.iter().find(|r| r.row_key == id.to_string());
    ensure!(
        at(above).is_some_and(|r| r.owner.as_deref() == Some("sub.example.test.")),
        "{rejected:?}"
    );
    // Deleting the name below and touching the DNAME row in one
    // transaction publishes the DNAME.
    stack
        .exec(&format!(
            "BEGIN; DELETE FROM pg2dns.rr WHERE id = {host}; \
             UPDATE pg2dns.rr SET ttl = 600 WHERE id = {above}; COMMIT"
        ))
        .await?;
    let accepted: Vec<_> = stack
        .table()
        .await?
        .into_iter()
        .filter(|r| r.id != below && r.id != deeper)
        .collect();
    stack
        .wait_until_dns_equals(&stack.expected(&accepted), DNS_DEADLINE)
        .await?;
    eventually("the published DNAME's rejection to be gone", || async {
        let left: Vec<String> = stack
            .rejected()
            .await?
            .into_iter()
            .map(|r| r.row_key)
            .collect();
        let mut want = vec![below.to_string(), deeper.to_string()];
        want.sort();
        let mut have = left.clone();
        have.sort();
        Ok(if have == want {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        })
    })
    .await?;
    // Reconcile plans the rows by the same rules and agrees.
    reconcile_repairs_nothing_and_names(
        &stack,
        "x.old.example.test. is below the DNAME at old.example.test.",
    )
    .await?;
    pg2dns.assert_running()?;
    Ok(())
}
