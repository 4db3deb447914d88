//! Declarative sources: the tables an application already has (an IPAM's
//! hosts, a registry's records table), read as they are.
//!
//! A [`SourceSpec`] is pure data (the config's `[[source]]` table, checked);
//! [`SourceMapping`] applies it to a row. One row yields zero or more
//! records:
//!
//! ```text
//!  row ──filters──▶ owner (column or template, absolute or relative)
//!                     │
//!                     ├─ zone: longest configured suffix, or a zone column
//!                     ├─ type + rdata (fixed/column, column/template)   ─▶ one record
//!                     └─ or an inet column ─▶ A/AAAA (+ PTR in the reverse zone)
//! ```
//!
//! A row that does not pass the filters, or whose type column is NULL,
//! wants nothing: the planner then removes what it wanted before, so a row
//! that stops matching leaves DNS and one that starts matching enters.
//!
//! Under `REPLICA IDENTITY DEFAULT` an UPDATE that leaves a TOASTed column
//! alone sends it as "unchanged TOAST" ("the actual value is not sent",
//! pgoutput documentation). Only the single data column of a one-record
//! mapping can be taken from the row state ([`Wanted::FromState`]); any
//! other column the mapping needs is refused with
//! [`Refusal::ToastWithoutState`] naming it.

use std::fmt;
use std::net::IpAddr;

use crate::name::{Name, NameError};
use crate::plan::{Refusal, Refused};
use crate::rdata::RType;
use crate::records::{self, Owner, Rdata, Record, RecordError, ZoneId, ZoneName, Zones, MAX_TTL};
use crate::row::{Cell, RowView};

use super::{Desired, Mapping, RowKey, Wanted};

/// Why a source specification cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The table is not `schema.table`.
    #[error("table {0:?} must be schema-qualified, as schema.table")]
    Table(String),
    /// A template does not parse.
    #[error("template {template:?}: {what}")]
    Template {
        /// The template text.
        template: String,
        /// What is wrong.
        what: &'static str,
    },
    /// A setting contradicts another or is missing.
    #[error("{0}")]
    Invalid(String),
}

/// A text with `{column}` placeholders; `{{` and `}}` are literal braces.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(try_from = "String", into = "String")
)]
pub struct Template {
    text: String,
    pieces: Vec<Piece>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Column(String),
}

impl Template {
    /// Parses a template such as `{prio} {content}`.
    pub fn parse(text: &str) -> Result<Template, SpecError> {
        let bad = |what| SpecError::Template {
            template: text.to_owned(),
            what,
        };
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => return Err(bad("a '}' without its '{' (write '}}' for a brace)")),
                '{' => {
                    let mut column = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') | None => return Err(bad("a '{' without its '}'")),
                            Some(c) => column.push(c),
                        }
                    }
                    if column.is_empty() {
                        return Err(bad("an empty placeholder '{}'"));
                    }
                    if !lit.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Column(column));
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Text(lit));
        }
        if !pieces.iter().any(|p| matches!(p, Piece::Column(_))) {
            return Err(bad("it names no column ({column})"));
        }
        Ok(Template {
            text: text.to_owned(),
            pieces,
        })
    }

    /// The template that is just one column's value.
    pub fn column(column: &str) -> Template {
        Template {
            text: format!("{{{column}}}"),
            pieces: vec![Piece::Column(column.to_owned())],
        }
    }

    /// The columns it reads, in order.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Column(c) => Some(c.as_str()),
            Piece::Text(_) => None,
        })
    }

    /// The column, when the template is exactly one column's value.
    pub fn single_column(&self) -> Option<&str> {
        match self.pieces.as_slice() {
            [Piece::Column(c)] => Some(c),
            _ => None,
        }
    }

    /// Fills the placeholders from the row; a NULL, missing, non-text or
    /// unchanged-TOAST column is refused, naming it.
    fn render(&self, row: &dyn RowView) -> Result<String, Refusal> {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Column(c) => out.push_str(super::text(row, c)?),
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// How a name without a final dot is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Names {
    /// Fully qualified: `www.example.test` is `www.example.test.`.
    #[default]
    Absolute,
    /// Relative to the row's zone: `www` in `example.test.` is
    /// `www.example.test.`; `""` and `@` are the apex.
    Relative,
}

/// Where a row's zone comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ZoneFrom {
    /// The configured zone with the longest suffix matching the owner.
    #[default]
    Owner,
    /// A column holding the zone's name (with or without final dot).
    Column(String),
    /// A column holding the key of a zones-table row, which holds the
    /// zone's name (`records.domain_id` → `domains(id, name)`).
    Table {
        /// This source's column holding the key.
        column: String,
        /// The zones table it references.
        table: zones_table::ZonesTable,
    },
}

/// Where a record's type comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum TypeFrom {
    /// Every row has this type.
    Fixed(#[cfg_attr(feature = "serde", serde(with = "rtype_text"))] RType),
    /// A column holding the mnemonic (`MX`); a NULL type skips the row.
    Column(String),
}

/// Where a record's TTL comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TtlFrom {
    /// A column holding the TTL, if any.
    pub column: Option<String>,
    /// The TTL when there is no column or it is NULL.
    pub default: u32,
}

/// What a row publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Data {
    /// One record of a type and data given by the row.
    Record {
        /// The type.
        rtype: TypeFrom,
        /// The data in presentation form, e.g. `{content}`.
        rdata: Template,
        /// The data of some types in another form, e.g. MX as
        /// `{prio} {content}` where only MX and SRV rows fill `prio`.
        #[cfg_attr(feature = "serde", serde(with = "by_type_text"))]
        by_type: Vec<(RType, Template)>,
    },
    /// An `inet` column: an A or AAAA record by address family (the host
    /// part, any prefix length ignored), and optionally a PTR.
    Address {
        /// The column.
        column: String,
        /// Also publish a PTR in the longest configured reverse zone that
        /// holds the address's reverse name (none when no zone does).
        ptr: bool,
    },
}

/// A condition a row must meet to publish anything.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Filter {
    /// A boolean column is true (SQL `IS TRUE`: NULL fails).
    IsTrue(String),
    /// A boolean column is false (SQL `IS FALSE`: NULL fails).
    IsFalse(String),
    /// A column is neither NULL nor the empty string (nor only spaces).
    NonEmpty(String),
    /// A column's text equals one of these values (NULL fails).
    OneOf(String, Vec<String>),
}

impl Filter {
    /// The column it reads.
    pub fn column(&self) -> &str {
        match self {
            Filter::IsTrue(c) | Filter::IsFalse(c) | Filter::NonEmpty(c) | Filter::OneOf(c, _) => c,
        }
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::IsTrue(c) => write!(f, "{c} is true"),
            Filter::IsFalse(c) => write!(f, "{c} is false"),
            Filter::NonEmpty(c) => write!(f, "{c} is not empty"),
            Filter::OneOf(c, values) => write!(f, "{c} is one of {}", values.join(", ")),
        }
    }
}

/// A declarative source, as configured: pure data.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SourceSpec {
    /// The table, `schema.table`.
    pub table: String,
    /// The key columns (the primary key, or the replica identity's columns).
    pub key: Vec<String>,
    /// The owner name.
    pub owner: Template,
    /// How owner names without a final dot are read.
    pub names: Names,
    /// Where the zone comes from.
    pub zone: ZoneFrom,
    /// The TTL.
    pub ttl: TtlFrom,
    /// What each row publishes.
    pub data: Data,
    /// Conditions a row must meet; all must hold.
    pub filters: Vec<Filter>,
}

/// A compiled declarative source: implements [`Mapping`] for its table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceMapping {
    spec: SourceSpec,
    schema: String,
    name: String,
}

impl SourceMapping {
    /// Checks a spec: a schema-qualified table, at least one key column, and
    /// names relative to a zone only with a zone column.
    pub fn new(spec: SourceSpec) -> Result<SourceMapping, SpecError> {
        let (schema, name) = spec
            .table
            .split_once('.')
            .filter(|(s, t)| !s.is_empty() && !t.is_empty() && !t.contains('.'))
            .ok_or_else(|| SpecError::Table(spec.table.clone()))?;
        let (schema, name) = (schema.to_owned(), name.to_owned());
        if spec.key.is_empty() || spec.key.iter().any(String::is_empty) {
            return Err(SpecError::Invalid(format!(
                "source {}: key needs at least one column",
                spec.table
            )));
        }
        if spec.names == Names::Relative && spec.zone == ZoneFrom::Owner {
            return Err(SpecError::Invalid(format!(
                "source {}: names = \"relative\" needs zone_column or [source.zones_table] (relative to which zone?)",
                spec.table
            )));
        }
        if spec.ttl.default > MAX_TTL {
            return Err(SpecError::Invalid(format!(
                "source {}: ttl {} is over {MAX_TTL}",
                spec.table, spec.ttl.default
            )));
        }
        Ok(SourceMapping { spec, schema, name })
    }

    /// The spec it was built from.
    pub fn spec(&self) -> &SourceSpec {
        &self.spec
    }

    /// The table's schema.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The table's name within its schema.
    pub fn table(&self) -> &str {
        &self.name
    }

    /// Every column the mapping reads (key, owner, zone, type, TTL, data,
    /// filters), once each, for checks and documentation: the list the
    /// stream's schema check uses ([`crate::schema::source_columns`]).
    pub fn columns(&self) -> Vec<String> {
        crate::schema::source_columns(&self.spec)
            .into_iter()
            .map(|(c, _)| c)
            .collect()
    }

    /// What the source publishes, in one line for `pg2dns check-config`,
    /// e.g. `ipam.hosts: A/AAAA from address, PTR in 2.0.192.in-addr.arpa.`.
    pub fn describe(&self, zones: &Zones) -> String {
        let s = &self.spec;
        let mut out = format!("{}: ", s.table);
        match &s.data {
            Data::Record {
                rtype,
                rdata,
                by_type,
            } => {
                match rtype {
                    TypeFrom::Fixed(t) => out.push_str(&t.to_string()),
                    TypeFrom::Column(c) => out.push_str(&format!("type from {c}")),
                }
                out.push_str(&format!(" with data {rdata}"));
                for (t, template) in by_type {
                    out.push_str(&format!(", {t} data {template}"));
                }
            }
            Data::Address { column, ptr } => {
                out.push_str(&format!("A/AAAA from {column}"));
                if *ptr {
                    let reverse: Vec<String> = zones
                        .iter()
                        .map(|(_, z)| z.to_string())
                        .filter(|z| z.ends_with(".in-addr.arpa.") || z.ends_with(".ip6.arpa."))
                        .collect();
                    if reverse.is_empty() {
                        out.push_str(", PTR in no zone (no reverse zone is configured)");
                    } else {
                        out.push_str(&format!(", PTR in {}", reverse.join(", ")));
                    }
                }
            }
        }
        out.push_str(&format!(
            "; owner {} ({})",
            s.owner,
            match s.names {
                Names::Absolute => "absolute",
                Names::Relative => "relative to the zone",
            }
        ));
        match &s.zone {
            ZoneFrom::Owner => out.push_str(", zone by longest suffix"),
            ZoneFrom::Column(c) => out.push_str(&format!(", zone from {c}")),
            ZoneFrom::Table { column, table } => out.push_str(&format!(
                ", zone from {}.{} where {} = {column}",
                table.table, table.name, table.key
            )),
        }
        match &s.ttl.column {
            Some(c) => out.push_str(&format!(", TTL from {c} (default {})", s.ttl.default)),
            None => out.push_str(&format!(", TTL {}", s.ttl.default)),
        }
        out.push_str(&format!(", key ({})", s.key.join(", ")));
        if !s.filters.is_empty() {
            let f: Vec<String> = s.filters.iter().map(ToString::to_string).collect();
            out.push_str(&format!("; only rows where {}", f.join(" and ")));
        }
        out
    }

    /// Whether the row passes every filter; a filter column that is not
    /// there (unchanged TOAST, not text) is refused.
    fn passes(&self, row: &dyn RowView) -> Result<bool, Refusal> {
        for f in &self.spec.filters {
            let column = f.column();
            let value = match row.cell(column) {
                Some(Cell::Null) => None,
                Some(Cell::Text(t)) => Some(t),
                Some(Cell::NotText) => return Err(Refusal::NotText(column.to_owned())),
                Some(Cell::UnchangedToast) => {
                    return Err(Refusal::ToastWithoutState {
                        column: column.to_owned(),
                    })
                }
                None => return Err(Refusal::NoColumn(column.to_owned())),
            };
            let ok = match f {
                Filter::IsTrue(_) => value.map(|v| boolean(column, v)).transpose()? == Some(true),
                Filter::IsFalse(_) => value.map(|v| boolean(column, v)).transpose()? == Some(false),
                Filter::NonEmpty(_) => value.is_some_and(|v| !v.trim().is_empty()),
                Filter::OneOf(_, values) => value.is_some_and(|v| values.iter().any(|x| x == v)),
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The zone named by the zone column.
    fn zone_of_column(
        &self,
        row: &dyn RowView,
        column: &str,
        zones: &Zones,
    ) -> Result<ZoneId, Refusal> {
        let text = super::text(row, column)?;
        let name = ZoneName::parse(text)?;
        zones
            .id_of(&name)
            .ok_or_else(|| Refusal::ZoneNotConfigured {
                column: column.to_owned(),
                zone: text.to_owned(),
            })
    }

    /// The zone named by the zones-table row the column references.
    fn zone_of_reference(
        &self,
        row: &dyn RowView,
        column: &str,
        table: &zones_table::ZonesTable,
        zones: &Zones,
    ) -> Result<ZoneId, Refusal> {
        let key = super::text(row, column)?;
        let text = zones.refs().get(&table.table, key).ok_or_else(|| {
            zones_table::ReferenceError::NoZoneRow {
                column: column.to_owned(),
                value: key.to_owned(),
                table: table.table.clone(),
            }
        })?;
        let name = ZoneName::parse(text)?;
        zones
            .id_of(&name)
            .ok_or_else(|| Refusal::ZoneNotConfigured {
                column: format!("{}.{} (through {column})", table.table, table.name),
                zone: text.to_owned(),
            })
    }

    /// Reads the owner text against the zone (when names are relative).
    fn owner(&self, text: &str, zone: Option<&ZoneName>) -> Result<Owner, RecordError> {
        match (self.spec.names, zone) {
            (Names::Relative, Some(zone)) => match Name::parse_absolute(text) {
                Ok(name) => Ok(Owner::from_name(name)),
                Err(NameError::Relative { .. }) | Err(NameError::Empty) => {
                    if text.is_empty() || text == "@" {
                        Ok(Owner::from_name(zone.name().clone()))
                    } else {
                        Owner::parse(&format!("{text}.{zone}")).map_err(|e| match e {
                            RecordError::BadName { source, .. } => RecordError::BadName {
                                name: text.to_owned(),
                                source,
                            },
                            e => e,
                        })
                    }
                }
                Err(source) => Err(RecordError::BadName {
                    name: text.to_owned(),
                    source,
                }),
            },
            _ => Owner::parse(text),
        }
    }

    fn ttl(&self, row: &dyn RowView) -> Result<u32, Refusal> {
        let Some(column) = &self.spec.ttl.column else {
            return Ok(self.spec.ttl.default);
        };
        match row.cell(column) {
            Some(Cell::Null) => Ok(self.spec.ttl.default),
            _ => {
                let text = super::text(row, column)?;
                text.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|t| *t <= MAX_TTL)
                    .ok_or_else(|| RecordError::BadTtl(text.to_owned()).into())
            }
        }
    }

    /// The records of a row that passed the filters, once owner and zone
    /// are known.
    fn records_in(
        &self,
        row: &dyn RowView,
        zone: ZoneId,
        owner: &Owner,
        zones: &Zones,
    ) -> Result<Vec<Wanted>, Refusal> {
        let ttl = self.ttl(row)?;
        match &self.spec.data {
            Data::Record {
                rtype,
                rdata,
                by_type,
            } => {
                let rtype = match rtype {
                    TypeFrom::Fixed(t) => *t,
                    TypeFrom::Column(c) => match row.cell(c) {
                        Some(Cell::Null) => return Ok(Vec::new()),
                        _ => records::parse_type(super::text(row, c)?.trim())?,
                    },
                };
                let rdata = by_type
                    .iter()
                    .find(|(t, _)| *t == rtype)
                    .map_or(rdata, |(_, t)| t);
                if let Some(column) = rdata.single_column() {
                    if row.cell(column) == Some(Cell::UnchangedToast) {
                        return Ok(vec![Wanted::FromState {
                            zone,
                            owner: owner.clone(),
                            rtype,
                            ttl,
                        }]);
                    }
                }
                let text = rdata.render(row)?;
                let text = qualify_targets(rtype, &text, self.spec.names, zones.name(zone));
                let record = Record::parse_data(owner.clone(), ttl, rtype, &text)?;
                Ok(vec![Wanted::Record(Desired { zone, record })])
            }
            Data::Address { column, ptr } => {
                let text = super::text(row, column)?;
                let address = host_address(text).ok_or_else(|| Refusal::BadAddress {
                    column: column.clone(),
                    value: text.to_owned(),
                })?;
                let (rtype, wire) = match address {
                    IpAddr::V4(a) => (RType::A, a.octets().to_vec()),
                    IpAddr::V6(a) => (RType::AAAA, a.octets().to_vec()),
                };
                let mut out = vec![Wanted::Record(Desired {
                    zone,
                    record: Record {
                        owner: owner.clone(),
                        rtype,
                        ttl,
                        rdata: Rdata::from_wire(&wire),
                    },
                })];
                if *ptr {
                    let reverse = Owner::from_name(reverse_name(address));
                    if let Some(rzone) = zones.zone_for(&reverse) {
                        out.push(Wanted::Record(Desired {
                            zone: rzone,
                            record: Record {
                                owner: reverse,
                                rtype: RType::PTR,
                                ttl,
                                rdata: Rdata::from_wire(owner.name().as_wire()),
                            },
                        }));
                    }
                }
                Ok(out)
            }
        }
    }
}

/// Gives the name inside the data of CNAME, NS, PTR, MX and SRV its
/// final dot when it has none: `mail.example.test` is
/// `mail.example.test.` ([`Names::Absolute`], as PowerDNS stores content),
/// `mail` is `mail.<zone>` and `@` the zone ([`Names::Relative`]). Any
/// other type, and any text that does not have the type's field count, is
/// left to the record parser, which refuses with the real reason.
pub fn qualify_targets(rtype: RType, text: &str, names: Names, zone: &ZoneName) -> String {
    // Which whitespace-separated field is the name, and how many there are.
    let (index, fields) = match rtype {
        RType::CNAME | RType::NS | RType::PTR => (0, 1),
        RType::MX => (1, 2),
        RType::SRV => (3, 4),
        _ => return text.to_owned(),
    };
    let tokens: Vec<&str> = text.split_ascii_whitespace().collect();
    if tokens.len() != fields {
        return text.to_owned();
    }
    let name = tokens[index];
    // A final dot is one not escaped by a backslash (`a\.` is a label
    // ending in a dot, still relative).
    let trailing_backslashes = name
        .strip_suffix('.')
        .map(|n| n.bytes().rev().take_while(|b| *b == b'\\').count());
    let absolute = matches!(trailing_backslashes, Some(n) if n % 2 == 0);
    if absolute || name.starts_with('"') {
        return text.to_owned();
    }
    let qualified = match names {
        Names::Absolute => format!("{name}."),
        Names::Relative if name == "@" => zone.to_string(),
        Names::Relative => format!("{name}.{zone}"),
    };
    let mut out: Vec<&str> = tokens;
    out[index] = &qualified;
    out.join(" ")
}

/// Reads a boolean column's text form (`t`/`f` as PostgreSQL prints it).
fn boolean(column: &str, text: &str) -> Result<bool, Refusal> {
    match text.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "yes" | "on" | "1" => Ok(true),
        "f" | "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(Refusal::NotBoolean {
            column: column.to_owned(),
            value: text.to_owned(),
        }),
    }
}

/// The host part of an `inet` value's text (`10.1.2.3/24` is `10.1.2.3`).
pub fn host_address(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    let host = match text.split_once('/') {
        Some((host, len)) if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) => host,
        Some(_) => return None,
        None => text,
    };
    host.parse().ok()
}

/// The reverse-mapping name of an address: `3.2.1.10.in-addr.arpa.`, or 32
/// nibbles under `ip6.arpa.` (RFC 3596 §2.5).
pub fn reverse_name(address: IpAddr) -> Name {
    let text = match address {
        IpAddr::V4(a) => {
            let [x, y, z, w] = a.octets();
            format!("{w}.{z}.{y}.{x}.in-addr.arpa.")
        }
        IpAddr::V6(a) => {
            let mut s = String::with_capacity(72);
            for byte in a.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            s.push_str("ip6.arpa.");
            s
        }
    };
    // Digits, hex letters and dots only: always a valid name.
    Name::parse_fqdn(&text).unwrap_or_else(|_| Name::root())
}

/// Joins key values unambiguously: one column's text as is, several as a
/// JSON array of strings (`["a","b"]`).
fn join_key(values: &[&str]) -> String {
    match values {
        [one] => (*one).to_owned(),
        many => {
            let mut out = String::from("[");
            for (i, v) in many.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('"');
                for c in v.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        '\t' => out.push_str("\\t"),
                        c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            out.push(']');
            out
        }
    }
}

impl Mapping for SourceMapping {
    fn source(&self) -> &str {
        &self.spec.table
    }

    fn matches(&self, namespace: &str, table: &str) -> bool {
        namespace == self.schema && table == self.name
    }

    fn key(&self, row: &dyn RowView) -> Option<RowKey> {
        let mut values = Vec::with_capacity(self.spec.key.len());
        for column in &self.spec.key {
            match row.cell(column)? {
                Cell::Text(t) => values.push(t),
                _ => return None,
            }
        }
        Some(RowKey(join_key(&values)))
    }

    fn records(&self, row: &dyn RowView, zones: &Zones) -> Result<Vec<Wanted>, Refused> {
        if !self.passes(row)? {
            return Ok(Vec::new());
        }
        if let Data::Record {
            rtype: TypeFrom::Column(c),
            ..
        } = &self.spec.data
        {
            if row.cell(c) == Some(Cell::Null) {
                return Ok(Vec::new());
            }
        }
        let column_zone = match &self.spec.zone {
            ZoneFrom::Owner => None,
            ZoneFrom::Column(c) => Some(self.zone_of_column(row, c, zones)?),
            ZoneFrom::Table { column, table } => {
                Some(self.zone_of_reference(row, column, table, zones)?)
            }
        };
        let owner_text = self.spec.owner.render(row)?;
        let owner = self.owner(&owner_text, column_zone.map(|z| zones.name(z)))?;
        let zone = match column_zone {
            Some(z) if zones.name(z).contains(&owner) => z,
            Some(z) => {
                return Err(Refused {
                    zone: Some(z),
                    owner: Some(owner.clone()),
                    reason: Box::new(Refusal::OwnerNotInZone {
                        owner,
                        zone: zones.name(z).clone(),
                    }),
                })
            }
            None => zones
                .zone_for(&owner)
                .ok_or_else(|| Refusal::OutsideZones {
                    owner: owner.clone(),
                })?,
        };
        self.records_in(row, zone, &owner, zones)
            .map_err(|reason| Refused {
                zone: Some(zone),
                owner: Some(owner.clone()),
                reason: Box::new(reason),
            })
    }
}

pub mod zones_table;

#[cfg(feature = "serde")]
impl TryFrom<String> for Template {
    type Error = SpecError;
    fn try_from(text: String) -> Result<Template, SpecError> {
        Template::parse(&text)
    }
}

#[cfg(feature = "serde")]
impl From<Template> for String {
    fn from(template: Template) -> String {
        template.text
    }
}

/// A type as its mnemonic in JSON.
#[cfg(feature = "serde")]
mod rtype_text {
    use super::RType;

    pub fn serialize<S: serde::Serializer>(rtype: &RType, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(rtype)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<RType, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        RType::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `Data::Record::by_type` as `[[mnemonic, template]…]` in JSON.
#[cfg(feature = "serde")]
mod by_type_text {
    use super::{RType, Template};

    pub fn serialize<S: serde::Serializer>(
        by_type: &[(RType, Template)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(by_type.len()))?;
        for (rtype, template) in by_type {
            seq.serialize_element(&(rtype.to_string(), String::from(template.clone())))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(RType, Template)>, D::Error> {
        let pairs = <Vec<(String, String)> as serde::Deserialize>::deserialize(d)?;
        pairs
            .into_iter()
            .map(|(rtype, template)| {
                Ok((
                    RType::parse(&rtype).map_err(serde::de::Error::custom)?,
                    Template::parse(&template).map_err(serde::de::Error::custom)?,
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
