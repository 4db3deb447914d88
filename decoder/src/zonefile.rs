//! RFC 1035 master files ("zone files"): text in, records out.
//!
//! `pg2dns reconcile --zone-file` compares the zone file the legacy batch
//! job generates with the database and DNS, and the verifier
//! (`[[zone]] verify`) is handed the zone as a master file; this module
//! reads the one ([`parse`]) and writes the other ([`write()`]).
//!
//! Why by hand: hickory-proto's reader (`serialize::txt::Parser`, behind its
//! `txt` feature, used by hickory-server) builds hickory's own `Name` and
//! `RData` with its own per-type rdata parsers: a second presentation-format
//! parser beside [`crate::rdata`], which the project forbids (the two would
//! disagree on escapes, UTF-8 and relative names, the bugs `rdata` was
//! written to end). Here the master-file syntax (directives, owners, TTL,
//! class, parentheses, comments) is read and every record's data goes
//! through [`crate::records::Record::parse_data`], with the names inside it
//! completed from `$ORIGIN` first.
//!
//! What is read (RFC 1035 §5.1, RFC 2308 §4 for `$TTL`):
//!
//! - `$ORIGIN name`, `$TTL ttl`, `$INCLUDE file [origin]` (the file is
//!   fetched through the caller's loader: this crate does no I/O). §5.1: "a
//!   $INCLUDE entry never changes the relative origin of the parent file,
//!   regardless of changes to the relative origin made within the included
//!   file". `$GENERATE` (BIND's) is refused.
//! - `@` for the origin, relative names completed with it; §5.1: "If an RR
//!   begins with a blank, then the RR is assumed to be owned by the last
//!   stated owner".
//! - TTL and class, each optional, in either order; TTLs with BIND's units
//!   (`1h30m`). A record without a TTL takes `$TTL`, else the previous
//!   record's TTL, else (an SOA) its minimum field.
//! - Parentheses spanning lines, `;` comments outside quotes, quoted
//!   strings with `\X` and `\DDD` escapes, UTF-8 text.
//! - Class IN only; another class is an error.
//! - Every type pg2dns publishes, and the SOA (read, never owned: the
//!   comparison leaves it to the server as it does in a transfer). Other
//!   types (RRSIG, NSEC, NSEC3…) are counted and skipped: pg2dns owns none
//!   of them.
//!
//! Any line that cannot be read is a [`ZoneFileError`] naming the file and
//! line. Nothing here panics on any input (a property test feeds it random
//! bytes).

use std::fmt::Write as _;

use std::collections::BTreeMap;

use crate::diff::{diff_excluding, OwnerDiff, ZoneDiff};
use crate::exclude::Exclusions;
use crate::name::Name;
use crate::rdata::{self, RType};
use crate::records::{Owner, Rdata, Record, RecordError, ZoneName, MAX_TTL};

/// How deep `$INCLUDE` may nest (a file including itself ends here).
pub const MAX_INCLUDE_DEPTH: usize = 16;

/// A master file read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZoneFile {
    /// Every record of a type pg2dns publishes, and the SOA, in file order.
    pub records: Vec<Record>,
    /// Records of other types (RRSIG, NSEC…), skipped: `(owner, type)`.
    pub skipped: Vec<(Owner, RType)>,
}

impl ZoneFile {
    /// The SOA record, if the file has one at the apex.
    pub fn soa(&self) -> Option<&Record> {
        self.records.iter().find(|r| r.rtype == RType::SOA)
    }
}

/// A line of a master file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file} line {line}")]
pub struct ZoneFileError {
    /// The file, as the caller or the `$INCLUDE` named it.
    pub file: String,
    /// The line (from 1) where the entry starts.
    pub line: usize,
    /// What is wrong.
    #[source]
    pub kind: Box<ErrorKind>,
}

/// What is wrong with a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    /// The master-file syntax itself.
    #[error("{0}")]
    Syntax(String),
    /// A name, TTL or record data that does not parse.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A class other than IN.
    #[error("class {0} is not supported (only IN)")]
    Class(String),
    /// A record outside the zone.
    #[error("{owner} is outside zone {zone}")]
    OutOfZone {
        /// The record's owner.
        owner: String,
        /// The zone.
        zone: String,
    },
    /// `$INCLUDE` failed.
    #[error("cannot include {path:?}: {reason}")]
    Include {
        /// The path as written.
        path: String,
        /// Why (the loader's words, or nesting too deep).
        reason: String,
    },
}

/// A file `$INCLUDE` asked for, as the loader returns it.
pub struct Loaded {
    /// The name to give it in errors (its path, say).
    pub name: String,
    /// Its text.
    pub text: String,
}

/// Reads the master file `text` (named `file` in errors) of `zone`.
/// `$INCLUDE path` calls `load(path, including_file)`, which returns the
/// file or why not.
pub fn parse(
    zone: &ZoneName,
    file: &str,
    text: &str,
    load: &mut dyn FnMut(&str, &str) -> Result<Loaded, String>,
) -> Result<ZoneFile, ZoneFileError> {
    let mut out = ZoneFile::default();
    parse_each(zone, file, text, load, &mut |read| match read {
        Read::Record(r) => out.records.push(r),
        Read::Skipped(owner, rtype) => out.skipped.push((owner, rtype)),
    })?;
    Ok(out)
}

/// One thing [`parse_each`] read: a record (of a type pg2dns publishes, or
/// the SOA), or the owner and type of a record it skips.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    /// A record, in file order.
    Record(Record),
    /// A record of a type pg2dns does not publish (RRSIG, NSEC…).
    Skipped(Owner, RType),
}

/// [`parse`] that hands each record to `each` as it is read instead of
/// collecting them: what reads a zone file of any size without holding its
/// records (reconcile spills them to sorted runs). On an error, `each` has
/// seen the records before the line.
pub fn parse_each(
    zone: &ZoneName,
    file: &str,
    text: &str,
    load: &mut dyn FnMut(&str, &str) -> Result<Loaded, String>,
    each: &mut dyn FnMut(Read),
) -> Result<(), ZoneFileError> {
    let mut state = State {
        zone: zone.clone(),
        ttl: None,
        last_ttl: None,
        each,
    };
    state.read(file, text, zone.name().clone(), load, 0)
}

struct State<'e> {
    zone: ZoneName,
    /// `$TTL`.
    ttl: Option<u32>,
    /// The previous record's TTL.
    last_ttl: Option<u32>,
    each: &'e mut dyn FnMut(Read),
}

/// One token of an entry: its raw text (quotes and escapes kept, since the
/// record data parser reads them), whether it was quoted.
struct Token<'a> {
    raw: &'a str,
    quoted: bool,
}

/// One entry: a line, or lines joined by parentheses.
struct Entry<'a> {
    line: usize,
    /// The line starts with a blank: the previous owner.
    blank_owner: bool,
    tokens: Vec<Token<'a>>,
}

impl State<'_> {
    fn read(
        &mut self,
        file: &str,
        text: &str,
        mut origin: Name,
        load: &mut dyn FnMut(&str, &str) -> Result<Loaded, String>,
        depth: usize,
    ) -> Result<(), ZoneFileError> {
        let mut owner: Option<Owner> = None;
        let mut at = 0usize;
        let mut line = 1usize;
        while let Some(entry) =
            next_entry(text, &mut at, &mut line).map_err(|(line, e)| ZoneFileError {
                file: file.to_owned(),
                line,
                kind: Box::new(ErrorKind::Syntax(e)),
            })?
        {
            let err = |kind: ErrorKind| ZoneFileError {
                file: file.to_owned(),
                line: entry.line,
                kind: Box::new(kind),
            };
            let syntax = |s: &str| err(ErrorKind::Syntax(s.to_owned()));
            let Some(first) = entry.tokens.first() else {
                continue;
            };
            if !entry.blank_owner && !first.quoted && first.raw.starts_with('$') {
                let args = entry.tokens.get(1..).unwrap_or_default();
                let arg = |i: usize| args.get(i).map(|t| t.raw);
                match first.raw.to_ascii_uppercase().as_str() {
                    "$ORIGIN" => {
                        let (Some(name), None) = (arg(0), arg(1)) else {
                            return Err(syntax("$ORIGIN takes one name"));
                        };
                        origin = absolute(name, &origin).map_err(err)?;
                    }
                    "$TTL" => {
                        let (Some(ttl), None) = (arg(0), arg(1)) else {
                            return Err(syntax("$TTL takes one TTL"));
                        };
                        self.ttl = Some(parse_ttl(ttl).map_err(err)?);
                    }
                    "$INCLUDE" => {
                        let Some(path) = arg(0) else {
                            return Err(syntax("$INCLUDE takes a file name"));
                        };
                        if arg(2).is_some() {
                            return Err(syntax("$INCLUDE takes a file name and an origin"));
                        }
                        let path = unquote(path);
                        let inner_origin = match arg(1) {
                            Some(o) => absolute(o, &origin).map_err(err)?,
                            None => origin.clone(),
                        };
                        if depth + 1 >= MAX_INCLUDE_DEPTH {
                            return Err(err(ErrorKind::Include {
                                path: path.to_owned(),
                                reason: format!("includes nest deeper than {MAX_INCLUDE_DEPTH} (does a file include itself?)"),
                            }));
                        }
                        let loaded = load(path, file).map_err(|reason| {
                            err(ErrorKind::Include {
                                path: path.to_owned(),
                                reason,
                            })
                        })?;
                        self.read(&loaded.name, &loaded.text, inner_origin, load, depth + 1)?;
                    }
                    "$GENERATE" => {
                        return Err(syntax(
                            "$GENERATE is not supported; expand it (named-compilezone -o - does)",
                        ))
                    }
                    other => return Err(syntax(&format!("unknown directive {other}"))),
                }
                continue;
            }
            let mut tokens = entry.tokens.iter().peekable();
            let this_owner = if entry.blank_owner {
                owner
                    .clone()
                    .ok_or_else(|| syntax("a record without an owner and none before it"))?
            } else {
                let t = tokens.next().map(|t| t.raw).unwrap_or_default();
                Owner::from_name(absolute(t, &origin).map_err(err)?)
            };
            owner = Some(this_owner.clone());
            if !self.zone.contains(&this_owner) {
                return Err(err(ErrorKind::OutOfZone {
                    owner: this_owner.to_string(),
                    zone: self.zone.to_string(),
                }));
            }
            // TTL and class, each optional, in either order.
            let mut ttl = None;
            let mut class_seen = false;
            let rtype = loop {
                let Some(t) = tokens.next() else {
                    return Err(syntax("the record has no type"));
                };
                let upper = t.raw.to_ascii_uppercase();
                if !class_seen && is_class(&upper) {
                    if upper != "IN" {
                        return Err(err(ErrorKind::Class(t.raw.to_owned())));
                    }
                    class_seen = true;
                    continue;
                }
                if ttl.is_none() && t.raw.starts_with(|c: char| c.is_ascii_digit()) {
                    ttl = Some(parse_ttl(t.raw).map_err(err)?);
                    continue;
                }
                break RType::parse(t.raw).map_err(|_| {
                    err(ErrorKind::Syntax(format!(
                        "{:?} is not a record type",
                        t.raw
                    )))
                })?;
            };
            let data: Vec<&Token> = tokens.collect();
            if rtype == RType::SOA {
                let (wire, minimum) = parse_soa(&data, &origin).map_err(err)?;
                let ttl = ttl.or(self.ttl).or(self.last_ttl).unwrap_or(minimum);
                self.last_ttl = Some(ttl);
                (self.each)(Read::Record(Record {
                    owner: this_owner,
                    rtype,
                    ttl,
                    rdata: Rdata::from_wire(&wire),
                }));
                continue;
            }
            let ttl = ttl.or(self.ttl).or(self.last_ttl).ok_or_else(|| {
                syntax("the record has no TTL, and no $TTL or earlier record gives one")
            })?;
            self.last_ttl = Some(ttl);
            if !rtype.is_supported() {
                (self.each)(Read::Skipped(this_owner, rtype));
                continue;
            }
            let text = rdata_text(rtype, &data, &origin);
            let record = Record::parse_data(this_owner, ttl, rtype, &text)
                .map_err(|e| err(ErrorKind::Record(e)))?;
            (self.each)(Read::Record(record));
        }
        Ok(())
    }
}

fn is_class(upper: &str) -> bool {
    matches!(upper, "IN" | "CH" | "CS" | "HS" | "ANY" | "NONE")
        || upper
            .strip_prefix("CLASS")
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Strips the quotes of a quoted file name.
fn unquote(raw: &str) -> &str {
    raw.strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(raw)
}

/// Whether a name's text ends with an unescaped dot.
fn is_absolute(text: &str) -> bool {
    if !text.ends_with('.') {
        return false;
    }
    let backslashes = text
        .get(..text.len() - 1)
        .unwrap_or_default()
        .bytes()
        .rev()
        .take_while(|&b| b == b'\\')
        .count();
    backslashes % 2 == 0
}

/// The text of `name` completed with `origin` (`@` is the origin).
fn qualify(name: &str, origin: &Name) -> String {
    if name == "@" {
        origin.to_string()
    } else if is_absolute(name) {
        name.to_owned()
    } else if origin.as_wire() == [0] {
        format!("{name}.")
    } else {
        format!("{name}.{origin}")
    }
}

fn absolute(name: &str, origin: &Name) -> Result<Name, ErrorKind> {
    let text = qualify(name, origin);
    Name::parse_absolute(&text).map_err(|source| {
        ErrorKind::Record(RecordError::BadName {
            name: name.to_owned(),
            source,
        })
    })
}

/// The position among the data's tokens of the names to complete.
fn name_fields(rtype: RType) -> &'static [usize] {
    match rtype {
        RType::NS | RType::CNAME | RType::PTR | RType::DNAME => &[0],
        RType::RP => &[0, 1],
        RType::MX | RType::SVCB | RType::HTTPS | RType::AFSDB => &[1],
        RType::SRV => &[3],
        RType::NAPTR => &[5],
        _ => &[],
    }
}

/// The record data as one line, names completed from the origin.
fn rdata_text(rtype: RType, data: &[&Token], origin: &Name) -> String {
    let generic = data.first().is_some_and(|t| t.raw == "\\#");
    let names = if generic { &[][..] } else { name_fields(rtype) };
    let mut out = String::new();
    for (i, t) in data.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if names.contains(&i) && !t.quoted {
            out.push_str(&qualify(t.raw, origin));
        } else {
            out.push_str(t.raw);
        }
    }
    out
}

/// The SOA's wire form and its minimum field.
fn parse_soa(data: &[&Token], origin: &Name) -> Result<(Vec<u8>, u32), ErrorKind> {
    let syntax = |s: &str| ErrorKind::Syntax(s.to_owned());
    if data.len() != 7 {
        return Err(syntax(
            "SOA data is mname rname serial refresh retry expire minimum",
        ));
    }
    let mut wire = Vec::new();
    for t in data.iter().take(2) {
        wire.extend(absolute(t.raw, origin)?.as_wire());
    }
    let serial: u32 = data
        .get(2)
        .and_then(|t| t.raw.parse().ok())
        .ok_or_else(|| syntax("the SOA serial is not a number from 0 to 4294967295"))?;
    wire.extend(serial.to_be_bytes());
    let mut minimum = 0;
    for t in data.iter().skip(3) {
        minimum = parse_ttl(t.raw)?;
        wire.extend(minimum.to_be_bytes());
    }
    Ok((wire, minimum))
}

/// A TTL: seconds, or BIND's units (`1w2d3h4m5s`, any case).
pub fn parse_ttl(text: &str) -> Result<u32, ErrorKind> {
    let bad = || ErrorKind::Record(RecordError::BadTtl(text.to_owned()));
    if text.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.chars() {
        if let Some(d) = c.to_digit(10) {
            number = Some(
                number
                    .unwrap_or(0)
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(d)))
                    .filter(|&n| n <= u64::from(u32::MAX))
                    .ok_or_else(bad)?,
            );
            continue;
        }
        let unit = match c.to_ascii_lowercase() {
            'w' => 604_800,
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        total = total
            .checked_add(number.take().ok_or_else(bad)? * unit)
            .ok_or_else(bad)?;
    }
    total = total.checked_add(number.unwrap_or(0)).ok_or_else(bad)?;
    u32::try_from(total)
        .ok()
        .filter(|&t| t <= MAX_TTL)
        .ok_or_else(bad)
}

/// Reads the next entry from `text` at byte `at` (line `line`), or `None`
/// at the end. Errors carry their line.
fn next_entry<'a>(
    text: &'a str,
    at: &mut usize,
    line: &mut usize,
) -> Result<Option<Entry<'a>>, (usize, String)> {
    let bytes = text.as_bytes();
    loop {
        if *at >= bytes.len() {
            return Ok(None);
        }
        let start_line = *line;
        let blank_owner = matches!(bytes.get(*at), Some(b' ' | b'\t'));
        let mut tokens = Vec::new();
        let mut depth = 0usize;
        let mut paren_line = start_line;
        loop {
            let Some(&b) = bytes.get(*at) else {
                if depth > 0 {
                    return Err((paren_line, "a '(' is never closed".into()));
                }
                break;
            };
            match b {
                b' ' | b'\t' | b'\r' => *at += 1,
                b'\n' => {
                    *at += 1;
                    *line += 1;
                    if depth == 0 {
                        break;
                    }
                }
                b';' => {
                    while bytes.get(*at).is_some_and(|&c| c != b'\n') {
                        *at += 1;
                    }
                }
                b'(' => {
                    if depth == 0 {
                        paren_line = *line;
                    }
                    depth += 1;
                    *at += 1;
                }
                b')' => {
                    depth = depth
                        .checked_sub(1)
                        .ok_or((*line, "a ')' without its '('".to_owned()))?;
                    *at += 1;
                }
                _ => {
                    let begin = *at;
                    let mut quoted = false;
                    let mut in_quote = false;
                    while let Some(&c) = bytes.get(*at) {
                        if in_quote {
                            match c {
                                b'\\' => *at += 2,
                                b'"' => {
                                    in_quote = false;
                                    *at += 1;
                                }
                                b'\n' => {
                                    return Err((*line, "a quoted string is never closed on its line (write a line break as \\010)".into()))
                                }
                                _ => *at += 1,
                            }
                            continue;
                        }
                        match c {
                            b' ' | b'\t' | b'\r' | b'\n' | b';' | b'(' | b')' => break,
                            b'\\' => {
                                if matches!(bytes.get(*at + 1), Some(b'\n') | None) {
                                    return Err((
                                        *line,
                                        "a backslash at the end of a line escapes nothing".into(),
                                    ));
                                }
                                *at += 2;
                            }
                            b'"' => {
                                quoted = true;
                                in_quote = true;
                                *at += 1;
                            }
                            _ => *at += 1,
                        }
                    }
                    if in_quote {
                        return Err((*line, "a quoted string is never closed".into()));
                    }
                    // An escape before a multi-byte character: step onto
                    // the character's boundary.
                    while *at < bytes.len() && !text.is_char_boundary(*at) {
                        *at += 1;
                    }
                    let end = (*at).min(bytes.len());
                    let raw = text.get(begin..end).ok_or((*line, "bad text".to_owned()))?;
                    tokens.push(Token { raw, quoted });
                }
            }
        }
        if !tokens.is_empty() {
            return Ok(Some(Entry {
                line: start_line,
                blank_owner,
                tokens,
            }));
        }
    }
}

/// Writes `records` (SOA first) as a master file of `zone`, with absolute
/// names: what the verifier reads. Types without a presentation form here
/// are written in RFC 3597 generic form (`\# len hex`).
pub fn write(zone: &ZoneName, records: &[Record]) -> String {
    let mut out = format!("$ORIGIN {zone}\n");
    let soa_first = records
        .iter()
        .filter(|r| r.rtype == RType::SOA)
        .chain(records.iter().filter(|r| r.rtype != RType::SOA));
    for r in soa_first {
        write_record(&mut out, r);
    }
    out
}

/// Appends one record of [`write`]'s master file to `out`, as a line (a
/// file written record by record: `$ORIGIN` first, the SOA before the
/// others).
pub fn write_record(out: &mut String, r: &Record) {
    let _ = write!(out, "{} {} IN {} ", r.owner, r.ttl, r.rtype);
    match (r.rtype, rdata::format(r.rtype, r.rdata.as_wire())) {
        (RType::SOA, _) => out.push_str(&format_soa(r.rdata.as_wire())),
        (_, Ok(text)) => out.push_str(&text),
        (_, Err(_)) => out.push_str(&generic(r.rdata.as_wire())),
    }
    out.push('\n');
}

fn generic(wire: &[u8]) -> String {
    let mut out = format!("\\# {}", wire.len());
    if !wire.is_empty() {
        out.push(' ');
        for b in wire {
            let _ = write!(out, "{b:02x}");
        }
    }
    out
}

fn format_soa(wire: &[u8]) -> String {
    let parsed = (|| {
        let (mname, a) = Name::from_wire(wire).ok()?;
        let (rname, b) = Name::from_wire(wire.get(a..)?).ok()?;
        let rest = wire.get(a + b..)?;
        if rest.len() != 20 {
            return None;
        }
        let n: Vec<u32> = rest
            .chunks(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Some(format!(
            "{mname} {rname} {} {} {} {} {}",
            n[0], n[1], n[2], n[3], n[4]
        ))
    })();
    parsed.unwrap_or_else(|| generic(wire))
}

/// Where one record stands on the three sides: its TTL on each side that
/// holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreeWayRecord {
    /// The record (TTL: the database's, else the file's, else DNS's).
    pub record: Record,
    /// Its TTL in the zone file, if the file holds it.
    pub file: Option<u32>,
    /// Its TTL as the database wants it, if it does.
    pub database: Option<u32>,
    /// Its TTL in DNS, if DNS holds it (`None` outside: DNS not compared).
    pub dns: Option<Option<u32>>,
}

/// The zone file against the database's desired records and, when DNS was
/// compared, against DNS: only the records some side disagrees on, under
/// the ownership rules of [`crate::diff`] (what pg2dns does not own, such as
/// the SOA, is never a difference).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreeWay {
    /// The zone file compared with the database (the file as the "actual"
    /// side).
    pub file_vs_database: ZoneDiff,
    /// Every record some side disagrees on, in owner order.
    pub records: Vec<ThreeWayRecord>,
}

impl ThreeWay {
    /// Whether the three sides (two without DNS) agree.
    pub fn agrees(&self) -> bool {
        self.records.is_empty()
    }
}

/// Compares a zone file with the desired records of `zone` and with the
/// comparison of those with DNS (`dns`, from [`crate::diff::diff_excluding`]
/// with the same `excluded`), when there is one.
pub fn three_way(
    zone: &ZoneName,
    file: &ZoneFile,
    desired: &[Record],
    dns: Option<&ZoneDiff>,
    excluded: &Exclusions,
) -> ThreeWay {
    let file_vs_database = diff_excluding(zone, desired, &file.records, excluded);
    let mut owners: std::collections::BTreeSet<&Owner> = file_vs_database.owners.keys().collect();
    if let Some(d) = dns {
        owners.extend(d.owners.keys());
    }
    let mut records = Vec::new();
    for owner in owners {
        records.extend(three_way_owner(
            file_vs_database.owners.get(owner),
            dns.map(|d| d.owners.get(owner)),
        ));
    }
    ThreeWay {
        file_vs_database,
        records,
    }
}

/// Where a record stands in one comparison of the database (wanted) with
/// another side: absent means the two agree on it.
#[derive(Clone, Copy)]
enum Stand {
    Missing(u32),
    Extra(u32),
    Ttl { wanted: u32, actual: u32 },
}

type StandKey = (Owner, RType, Rdata);

fn stands(o: &OwnerDiff) -> BTreeMap<StandKey, (Record, Stand)> {
    let mut out = BTreeMap::new();
    let key = |r: &Record| (r.owner.clone(), r.rtype, r.rdata.clone());
    for r in &o.missing {
        out.insert(key(r), (r.clone(), Stand::Missing(r.ttl)));
    }
    for r in &o.extra {
        out.insert(key(r), (r.clone(), Stand::Extra(r.ttl)));
    }
    for t in &o.ttl {
        let stand = Stand::Ttl {
            wanted: t.wanted.ttl,
            actual: t.actual_ttl,
        };
        out.insert(key(&t.wanted), (t.wanted.clone(), stand));
    }
    out
}

/// The three-way records of one owner, from its differences between the
/// database and the file (`file`: `None` when they agree) and between the
/// database and DNS (`dns`: `None` when DNS was not compared, `Some(None)`
/// when they agree): what [`three_way`] gives for that owner, in
/// (type, data) order. Reconcile calls it owner by owner as its merge of
/// the three sides reaches each, holding one owner.
pub fn three_way_owner(
    file: Option<&OwnerDiff>,
    dns: Option<Option<&OwnerDiff>>,
) -> Vec<ThreeWayRecord> {
    let by_file = file.map(stands).unwrap_or_default();
    let by_dns = dns.map(|d| d.map(stands).unwrap_or_default());
    let mut keys: std::collections::BTreeSet<&StandKey> = by_file.keys().collect();
    if let Some(d) = &by_dns {
        keys.extend(d.keys());
    }
    let mut records = Vec::new();
    for key in keys {
        let f = by_file.get(key);
        let n = by_dns.as_ref().map(|d| d.get(key));
        let stand_list = [f.map(|s| s.1), n.flatten().map(|s| s.1)];
        // The database holds it unless a side has it as extra.
        let database = if stand_list
            .iter()
            .flatten()
            .any(|s| matches!(s, Stand::Extra(_)))
        {
            None
        } else {
            stand_list.iter().flatten().find_map(|s| match *s {
                Stand::Missing(t) => Some(t),
                Stand::Ttl { wanted, .. } => Some(wanted),
                Stand::Extra(_) => None,
            })
        };
        let side = |s: Option<Stand>| match s {
            None => database,
            Some(Stand::Missing(_)) => None,
            Some(Stand::Extra(t)) => Some(t),
            Some(Stand::Ttl { actual, .. }) => Some(actual),
        };
        let file_ttl = side(f.map(|s| s.1));
        let dns_ttl = n.map(|s| side(s.map(|s| s.1)));
        let Some(mut record) = f.or(n.flatten()).map(|s| s.0.clone()) else {
            continue;
        };
        record.ttl = database
            .or(file_ttl)
            .or(dns_ttl.flatten())
            .unwrap_or(record.ttl);
        records.push(ThreeWayRecord {
            record,
            file: file_ttl,
            database,
            dns: dns_ttl,
        });
    }
    records
}

#[cfg(test)]
mod tests;
