//! `format 'nsupdate'`: the lines `nsupdate -k key` reads, for the
//! built-in table `pg2dns.rr`.
//!
//! ```text
//! pg_recvlogical -d DB --slot S --start -f - -P pg2dns_plugin \
//!     -o format=nsupdate -o zones=example.test.,2.0.192.in-addr.arpa. \
//!     -o server='192.0.2.53 53' | nsupdate -k /etc/bind/pg2dns.key
//! ```
//!
//! Per committed transaction, one block per zone:
//!
//! ```text
//! ; pg2dns_plugin: transaction 771 committed at 0/1A2B3C8, example.test. message 1 of 1
//! server 192.0.2.53 53
//! zone example.test.
//! update delete old.example.test. IN A 192.0.2.1
//! update add new.example.test. 300 IN A 192.0.2.2
//! send
//! ```
//!
//! A row becomes its record through the stream's own mapping
//! ([`RrTable`]: no second parser). The operations are packed with the
//! core's packer ([`Packer`]): whole owner groups, deletes first, each
//! block under the 65,535-byte message limit (`max_message_bytes` lower)
//! with room for any TSIG record, so a large transaction is several
//! blocks and an owner's changes are never split between two. A row the
//! stream would refuse, or whose owner is in none of the zones, is a
//! `;` comment line with the stream's reason (nsupdate ignores comments).
//!
//! The plugin has no state across transactions: it writes what a
//! transaction changed, as deletes of the old rows' records and adds of
//! the new ones. So it needs the old row of every UPDATE and DELETE,
//! which PostgreSQL writes to the WAL only under `REPLICA IDENTITY FULL`
//! (`pg2dns setup` leaves `pg2dns.rr` at DEFAULT, where a DELETE carries
//! only `id`, because the stream keeps the records of each row in
//! `pg2dns.row_records`). A change of `pg2dns.rr` decoded under another
//! identity is an error naming the statement to run, never a guess; so is
//! a TRUNCATE, whose records the plugin cannot know.

use pg2dns_decoder::mapping::{Mapping, RrTable, Wanted};
use pg2dns_decoder::rdata::RType;
use pg2dns_decoder::records::{Owner, Rdata, Record, ZoneId, ZoneName, Zones};
use pg2dns_decoder::update::{
    group_by_owner, Budget, Packer, PushError, UpdateOp, MAX_MESSAGE_BYTES,
};
use pgrx::PgSqlErrorCode;

use super::{Change, DecodingError, Format, Options, Relation, ReplicaIdentity, Tuple, Txn, Value};
use std::collections::HashMap;

/// Room for the TSIG record nsupdate adds to every message, whatever the
/// key: a 255-byte key name, hmac-sha512 (the decoder's
/// `TsigKey::record_len` for the largest key).
const TSIG_ALLOWANCE: usize = 255 + 10 + 13 + 16 + 64;

/// The options this format takes.
const OPTIONS: [&str; 4] = ["format", "zones", "server", "max_message_bytes"];

/// What a transaction leaves of one RR: present with this record (and
/// TTL), or absent.
#[derive(Clone, Debug)]
struct Net {
    zone: ZoneId,
    record: Record,
    present: bool,
}

/// The nsupdate format's state: the options, and the current transaction's
/// net changes.
pub struct Nsupdate {
    zones: Zones,
    server: Option<String>,
    budget: Budget,
    /// The RRs the transaction touched, in the order first touched.
    net: Vec<Net>,
    at: HashMap<(ZoneId, Owner, RType, Rdata), usize>,
    /// `;` lines: rows the stream would refuse.
    notes: Vec<String>,
}

/// `LSN` as PostgreSQL prints it.
fn lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// A comment line's text on one line.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

impl Nsupdate {
    /// Reads the options: `zones` (required: the zones to write, comma
    /// separated), `server` (`host [port]`, written as nsupdate's `server`
    /// line; without it nsupdate asks the zone's primary from its SOA),
    /// `max_message_bytes` (default 65535).
    pub fn new(options: &Options) -> Result<Nsupdate, DecodingError> {
        options.only(&OPTIONS)?;
        let zones_text = options.value("zones")?.ok_or_else(|| {
            DecodingError::option(
                "format nsupdate needs option zones: -o zones=example.test.,2.0.192.in-addr.arpa."
                    .into(),
            )
        })?;
        let mut names = Vec::new();
        for name in zones_text
            .split([',', ' '])
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            let zone = ZoneName::parse(name).map_err(|e| {
                DecodingError::option(format!(
                    "option zones: {name:?} is not a zone name: {}",
                    pg2dns_decoder::error_chain(&e)
                ))
            })?;
            names.push(zone);
        }
        if names.is_empty() {
            return Err(DecodingError::option("option zones names no zone".into()));
        }
        let zones = Zones::new(names).map_err(|e| {
            DecodingError::option(format!("option zones: {}", pg2dns_decoder::error_chain(&e)))
        })?;
        let server = match options.value("server")? {
            Some(s) if s.trim().is_empty() || s.contains(['\n', '\r', ';']) => {
                return Err(DecodingError::option(format!(
                    "option server {s:?} is not `host [port]`"
                )))
            }
            Some(s) => Some(s.trim().to_owned()),
            None => None,
        };
        let max_message_bytes = match options.value("max_message_bytes")? {
            None => MAX_MESSAGE_BYTES,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1024..=MAX_MESSAGE_BYTES).contains(n))
                .ok_or_else(|| {
                    DecodingError::option(format!(
                        "option max_message_bytes {text:?} is not a number of bytes from 1024 to {MAX_MESSAGE_BYTES}"
                    ))
                })?,
        };
        Ok(Nsupdate {
            zones,
            server,
            budget: Budget {
                max_message_bytes,
                tsig_record_len: TSIG_ALLOWANCE,
            },
            net: Vec::new(),
            at: HashMap::new(),
            notes: Vec::new(),
        })
    }

    /// Notes what the transaction does to one RR; the last word wins.
    fn touch(&mut self, zone: ZoneId, record: Record, present: bool) {
        let key = (
            zone,
            record.owner.clone(),
            record.rtype,
            record.rdata.clone(),
        );
        match self.at.get(&key) {
            Some(&i) => {
                self.net[i] = Net {
                    zone,
                    record,
                    present,
                }
            }
            None => {
                self.at.insert(key, self.net.len());
                self.net.push(Net {
                    zone,
                    record,
                    present,
                });
            }
        }
    }

    /// The record a row image makes, or `None` after noting why the stream
    /// would refuse it.
    fn record_of(&mut self, lsn_at: u64, what: &str, row: &Tuple) -> Option<(ZoneId, Record)> {
        let id = match row.values.get(row.columns.iter().position(|c| c == "id")?) {
            Some(Value::Text(id)) => id.clone(),
            _ => "?".into(),
        };
        match RrTable.records(row, &self.zones) {
            Ok(wanted) => match wanted.into_iter().next() {
                Some(Wanted::Record(d)) => Some((d.zone, d.record)),
                // The framework fills an unchanged TOAST value from the
                // old row (REPLICA IDENTITY FULL), so this does not occur.
                _ => {
                    self.notes.push(format!(
                        "; pg2dns_plugin: {what} row id={id} at {}: its rdata is an unchanged TOAST value the WAL does not carry",
                        lsn(lsn_at)
                    ));
                    None
                }
            },
            Err(refused) => {
                self.notes.push(format!(
                    "; pg2dns_plugin: {what} row id={id} at {} is refused, as the stream refuses it: {}",
                    lsn(lsn_at),
                    one_line(&pg2dns_decoder::error_chain(&*refused.reason))
                ));
                None
            }
        }
    }

    /// One message's lines.
    fn block(&self, header: String, zone: &ZoneName, ops: &[UpdateOp]) -> String {
        let mut out = header;
        if let Some(server) = &self.server {
            out.push_str("\nserver ");
            out.push_str(server);
        }
        out.push_str("\nzone ");
        out.push_str(&zone.to_string());
        for op in ops {
            out.push('\n');
            match op {
                UpdateOp::Add(r) => out.push_str(&format!("update add {r}")),
                UpdateOp::Delete(r) => out.push_str(&format!(
                    "update delete {} IN {} {}",
                    r.owner,
                    r.rtype,
                    r.rdata_text()
                )),
                UpdateOp::DeleteRrset { owner, rtype } => {
                    out.push_str(&format!("update delete {owner} IN {rtype}"))
                }
            }
        }
        out.push_str("\nsend");
        out
    }
}

/// Under anything but REPLICA IDENTITY FULL the old row of an UPDATE or
/// DELETE is missing or only its key.
fn needs_full(relation: &Relation, change_lsn: u64) -> DecodingError {
    DecodingError {
        code: PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        message: format!(
            "format nsupdate needs the old row of every UPDATE and DELETE of {}, and the change at {} was written under REPLICA IDENTITY {:?}, which leaves it out",
            relation.qualified_name(),
            lsn(change_lsn),
            relation.identity
        ),
        hint: Some(format!(
            "run ALTER TABLE {} REPLICA IDENTITY FULL; changes written before it cannot be decoded by this format: create the slot after it, or advance this one past them (pg_replication_slot_advance)",
            relation.qualified_name()
        )),
    }
}

impl Format for Nsupdate {
    fn binary(&self) -> bool {
        false
    }

    fn wants(&self, relation: &Relation) -> bool {
        RrTable.matches(&relation.namespace, &relation.name)
    }

    fn begin(&mut self, _txn: &Txn) -> Result<(), DecodingError> {
        self.net.clear();
        self.at.clear();
        self.notes.clear();
        Ok(())
    }

    fn change(
        &mut self,
        lsn_at: u64,
        relation: &Relation,
        change: Change,
    ) -> Result<(), DecodingError> {
        let (old, new) = match change {
            Change::Insert { new } => (None, Some(new)),
            Change::Update { old, new } => {
                if relation.identity != ReplicaIdentity::Full {
                    return Err(needs_full(relation, lsn_at));
                }
                let old = old.ok_or_else(|| needs_full(relation, lsn_at))?;
                // An unchanged TOAST value is in the old row (FULL writes
                // it whole).
                let mut new = new;
                for (i, v) in new.values.iter_mut().enumerate() {
                    if *v == Value::UnchangedToast {
                        if let Some(was) = old.values.get(i) {
                            *v = was.clone();
                        }
                    }
                }
                (Some(old), Some(new))
            }
            Change::Delete { old } => {
                if relation.identity != ReplicaIdentity::Full {
                    return Err(needs_full(relation, lsn_at));
                }
                (Some(old.ok_or_else(|| needs_full(relation, lsn_at))?), None)
            }
        };
        if let Some(old) = old {
            if let Some((zone, record)) = self.record_of(lsn_at, "old", &old) {
                self.touch(zone, record, false);
            }
        }
        if let Some(new) = new {
            if let Some((zone, record)) = self.record_of(lsn_at, "new", &new) {
                self.touch(zone, record, true);
            }
        }
        Ok(())
    }

    fn truncate(&mut self, lsn_at: u64, relations: &[Relation]) -> Result<(), DecodingError> {
        let names: Vec<String> = relations.iter().map(Relation::qualified_name).collect();
        Err(DecodingError::unsupported(
            format!(
                "format nsupdate cannot write the TRUNCATE of {} at {}: the plugin does not know the records the table held",
                names.join(", "),
                lsn(lsn_at)
            ),
            "delete the zones' records with nsupdate (or let pg2dns reconcile them), then advance the slot past this transaction with pg_replication_slot_advance".into(),
        ))
    }

    fn commit(&mut self, txn: &Txn, _slot: &str) -> Result<Vec<Vec<u8>>, DecodingError> {
        let mut messages: Vec<String> = Vec::new();
        let mut notes = std::mem::take(&mut self.notes);
        // Per zone, in zone order: the RRs' final states as operations.
        let mut by_zone: Vec<Vec<UpdateOp>> = vec![Vec::new(); self.zones.len()];
        for net in self.net.drain(..) {
            by_zone[net.zone.index()].push(if net.present {
                UpdateOp::Add(net.record)
            } else {
                UpdateOp::Delete(net.record)
            });
        }
        self.at.clear();
        let mut blocks: Vec<(ZoneName, Vec<UpdateOp>)> = Vec::new();
        let zones: Vec<(ZoneId, ZoneName)> =
            self.zones.iter().map(|(id, z)| (id, z.clone())).collect();
        for (id, zone) in zones {
            let ops = std::mem::take(&mut by_zone[id.index()]);
            if ops.is_empty() {
                continue;
            }
            let mut packer = Packer::new(zone.clone(), self.budget);
            for group in group_by_owner(ops) {
                let group = match packer.try_push(group) {
                    Ok(()) => continue,
                    Err(PushError::Full(group)) => {
                        blocks.push((zone.clone(), packer.take()));
                        group
                    }
                    Err(e @ PushError::GroupTooLarge { .. }) => {
                        notes.push(format!(
                            "; pg2dns_plugin: {} at {} is refused, as the stream refuses it: {}",
                            zone,
                            lsn(txn.commit_lsn),
                            one_line(&e.to_string())
                        ));
                        continue;
                    }
                };
                if let Err(e) = packer.try_push(group) {
                    notes.push(format!(
                        "; pg2dns_plugin: {} at {} is refused, as the stream refuses it: {}",
                        zone,
                        lsn(txn.commit_lsn),
                        one_line(&e.to_string())
                    ));
                }
            }
            if !packer.is_empty() {
                blocks.push((zone.clone(), packer.take()));
            }
        }
        if !notes.is_empty() {
            messages.push(notes.join("\n"));
        }
        let mut count: HashMap<ZoneName, usize> = HashMap::new();
        for (zone, _) in &blocks {
            *count.entry(zone.clone()).or_default() += 1;
        }
        let mut seen: HashMap<ZoneName, usize> = HashMap::new();
        for (zone, ops) in &blocks {
            let n = seen.entry(zone.clone()).or_default();
            *n += 1;
            let header = format!(
                "; pg2dns_plugin: transaction {} committed at {}, {} message {} of {}",
                txn.xid,
                lsn(txn.commit_lsn),
                zone,
                n,
                count[zone]
            );
            messages.push(self.block(header, zone, ops));
        }
        Ok(messages.into_iter().map(String::into_bytes).collect())
    }
}
