//! Reconcile in bounded memory: both sides of the comparison in one order,
//! owner by owner, through sorted runs on disk.
//!
//! ```text
//!  rows ─▶ mapping ─▶ one part per (zone, owner) of each row ─▶ sorted runs
//!                                                                   │ merge
//!        planner fed owner by owner (each owner forgotten after) ◀──┘
//!                 │ published records, in owner order
//!                 ▼
//!   desired file ─┬─▶ OwnerMerge (per owner: diff) ─▶ differences only
//!   AXFR ─▶ runs ─┘
//! ```
//!
//! Why parts: the planner's rules are per owner (CNAME exclusivity, one
//! TTL per RRset, RRset and message limits, one PTR), so feeding it every
//! row's records at one owner, in the rows' order, then taking what the
//! owner publishes and forgetting it gives what the stream would publish
//! while holding one owner. What crosses owners:
//! - a row refused at one owner is refused at all its owners: a refusal at
//!   an owner after the row's first one in the merge order means its
//!   earlier part was already published, so the pass runs again with that
//!   row excluded from the start (rare: a row with records at several
//!   owners that the stream refuses);
//! - an MX, SRV or NS must not point at an alias: the owners rows want a
//!   CNAME at are collected while reading (with each row's position), and
//!   the planner asks them about owners it does not hold; a CNAME row that
//!   is refused after being counted so makes the pass run again without it;
//! - the zone's name servers (apex NS targets, few) are noted while the
//!   sides are read, and whether an MX or SRV target has a wanted address is
//!   answered by a second read of the desired side for those targets only
//!   (see [`pg2dns_decoder::diff::OwnerMerge`]);
//! - nothing below a DNAME: the owners rows want a DNAME at are collected
//!   while reading (few), then, when there are any, one more read of the
//!   parts collects the names below them (few in a database the stream
//!   agrees with: their rows are refused); the planner asks about owners it
//!   does not hold, a row counting when it comes before the asking row in
//!   the tables' order (as the CNAME rule's rows do), and a counted row
//!   refused in the pass makes it run again without it.
//!
//! Memory: the sorters' buffers (`[reconcile] memory_mib`), one owner's
//! records, the owners that hold a CNAME, and the differences.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use pg2dns_decoder::diff::{OwnerDiff, OwnerMerge, ZoneDiff, ZoneFacts};
use pg2dns_decoder::exclude::Exclusions;
use pg2dns_decoder::mapping::{Desired, RowKey, RowUpdate, Wanted};
use pg2dns_decoder::name::Name;
use pg2dns_decoder::plan::{DnameOracle, Loaded, NodeKey, Planner, Rejection, SourceId};
use pg2dns_decoder::runs::{self, Damaged, Fields, RunReader};
use pg2dns_decoder::{Lsn, Owner, RType, Rdata, Record, ZoneId, ZoneName};

use super::spill::{self, Sorted, Sorter, SpillDir};
use super::{each_row, plan_context, source_queries};
use crate::config::{Config, ZoneConfig};
use crate::dns::axfr;
use crate::store::{Store, StoreError};

/// The most passes over the parts before reconcile gives up on refusals
/// that keep moving (each pass excludes the rows the last one found).
const MAX_PASSES: usize = 4;

/// Why the bounded desired side could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BoundedError {
    /// The database could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A run could not be written or read.
    #[error("cannot spill sorted runs to {dir} ([reconcile] spill_dir; free disk space?)")]
    Spill {
        /// The spill directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Refusals kept moving between passes.
    #[error("the rows refused at several owners kept changing after {MAX_PASSES} passes over the tables' runs (a pg2dns bug: report it with the log)")]
    Unsettled,
}

impl From<Damaged> for BoundedError {
    fn from(e: Damaged) -> Self {
        BoundedError::Spill {
            dir: PathBuf::new(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

/// The desired side of every zone, published records in owner order.
pub(super) struct BoundedDesired {
    /// Rows read.
    pub rows: usize,
    /// Rows refused.
    pub refused: usize,
    /// Per zone, the refused rows (`source row_key: reason`).
    pub refusals: BTreeMap<ZoneId, Vec<String>>,
    /// The published records, all zones, one run in key order.
    published: PathBuf,
    /// Per zone: its byte range in `published`, and its record count.
    ranges: ZoneRanges,
    /// Per zone: the apex NS the database publishes.
    pub facts: HashMap<ZoneId, ZoneFacts>,
    /// Passes over the parts (1 unless refusals crossed owners).
    pub passes: usize,
    /// The sources' names, by index.
    pub sources: Vec<String>,
    /// The rows of the referenced zones tables, as read.
    pub refs: pg2dns_decoder::mapping::source::zones_table::ZoneRefs,
    /// With `keep_rows`: what each row contributes, by zone, source and
    /// row (see [`StateRows`]).
    pub contributions: Option<Sorted>,
    /// The spill directory (kept while the desired side is used).
    pub dir: Arc<SpillDir>,
}

/// The key of a part: zone, owner (wire), the row's position.
fn part_key(zone: ZoneId, owner: &Owner, seq: u64) -> Vec<u8> {
    let wire = owner.name().as_wire();
    let mut key = Vec::with_capacity(4 + wire.len() + 8);
    key.extend_from_slice(&zone.0.to_be_bytes());
    key.extend_from_slice(wire);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The key of a published record: zone, owner (wire).
fn owner_key(zone: ZoneId, owner: &Owner) -> Vec<u8> {
    let wire = owner.name().as_wire();
    let mut key = Vec::with_capacity(4 + wire.len());
    key.extend_from_slice(&zone.0.to_be_bytes());
    key.extend_from_slice(wire);
    key
}

/// A record's type, TTL and data.
pub(super) fn record_value(r: &Record) -> Vec<u8> {
    let data = r.rdata.as_wire();
    let mut v = Vec::with_capacity(8 + data.len());
    v.extend_from_slice(&r.rtype.0.to_be_bytes());
    v.extend_from_slice(&r.ttl.to_be_bytes());
    runs::put_bytes16(&mut v, data);
    v
}

/// The record [`record_value`] wrote, at `owner`.
pub(super) fn decode_record(owner: &Owner, value: &[u8]) -> Result<Record, Damaged> {
    let mut f = Fields::new(value);
    let rtype = RType(f.u16()?);
    let ttl = f.u32()?;
    let rdata = Rdata::from_wire(f.bytes16()?);
    Ok(Record {
        owner: owner.clone(),
        rtype,
        ttl,
        rdata,
    })
}

/// The owner whose wire form `wire` is.
pub(super) fn owner_of(wire: &[u8]) -> Result<Owner, Damaged> {
    let (name, _) = Name::from_wire(wire).map_err(|_| Damaged)?;
    Ok(Owner::from_name(name))
}

/// A part's value: source, whether it is the row's first part in the merge
/// order, the row's key and its wanted records at the owner.
fn part_value(source: SourceId, lead: bool, key: &RowKey, wanted: &[&Wanted]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + key.0.len() + wanted.len() * 16);
    v.extend_from_slice(&source.0.to_be_bytes());
    v.push(u8::from(lead));
    runs::put_bytes32(&mut v, key.0.as_bytes());
    v.extend_from_slice(&(wanted.len() as u32).to_be_bytes());
    for w in wanted {
        match w {
            Wanted::Record(d) => {
                v.push(0);
                v.extend_from_slice(&d.record.rtype.0.to_be_bytes());
                v.extend_from_slice(&d.record.ttl.to_be_bytes());
                runs::put_bytes16(&mut v, d.record.rdata.as_wire());
            }
            Wanted::FromState { rtype, ttl, .. } => {
                v.push(1);
                v.extend_from_slice(&rtype.0.to_be_bytes());
                v.extend_from_slice(&ttl.to_be_bytes());
            }
        }
    }
    v
}

/// A part read back.
struct Part {
    source: SourceId,
    lead: bool,
    key: RowKey,
    wanted: Vec<Wanted>,
}

fn decode_part(zone: ZoneId, owner: &Owner, value: &[u8]) -> Result<Part, Damaged> {
    let mut f = Fields::new(value);
    let source = SourceId(f.u16()?);
    let lead = f.take(1)?[0] == 1;
    let key = RowKey(String::from_utf8(f.bytes32()?.to_vec()).map_err(|_| Damaged)?);
    let n = f.u32()?;
    let mut wanted = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let kind = f.take(1)?[0];
        let rtype = RType(f.u16()?);
        let ttl = f.u32()?;
        wanted.push(if kind == 0 {
            Wanted::Record(Desired {
                zone,
                record: Record {
                    owner: owner.clone(),
                    rtype,
                    ttl,
                    rdata: Rdata::from_wire(f.bytes16()?),
                },
            })
        } else {
            Wanted::FromState {
                zone,
                owner: owner.clone(),
                rtype,
                ttl,
            }
        });
    }
    Ok(Part {
        source,
        lead,
        key,
        wanted,
    })
}

fn wanted_at(w: &Wanted) -> (ZoneId, &Owner, RType) {
    match w {
        Wanted::Record(d) => (d.zone, &d.record.owner, d.record.rtype),
        Wanted::FromState {
            zone, owner, rtype, ..
        } => (*zone, owner, *rtype),
    }
}

/// Reads every source table (in the connection's current transaction) and
/// produces the published records of every zone in owner order, holding at
/// most the sorter's budget, one owner, and the owners rows want a CNAME at.
pub(super) async fn read_desired(
    store: &Store,
    config: &Config,
    bar: &ProgressBar,
    with_rr: bool,
    keep_rows: bool,
    dir: Arc<SpillDir>,
) -> Result<BoundedDesired, BoundedError> {
    let spill_err = |source| BoundedError::Spill {
        dir: dir.path().to_path_buf(),
        source,
    };
    let (zones, limits) = plan_context(store, config).await?;
    let mappings = crate::pipeline::mappings(config);
    let queries = source_queries(config, with_rr);
    let budget = spill::budget(config.reconcile.memory_mib, 0.5);
    let mut parts = Sorter::new(Arc::clone(&dir), "parts", budget);
    // Rows refused by the mapping alone (a bad column): refused at once.
    let mut early = Planner::new(&zones, &limits, Loaded::default()).forgetting_rows();
    // Per owner, the positions of the rows that want a CNAME there.
    let mut cnames: HashMap<NodeKey, Vec<u64>> = HashMap::new();
    // Per owner, the positions of the rows that want a DNAME there.
    let mut dnames: HashMap<NodeKey, Vec<u64>> = HashMap::new();
    let mut rows = 0usize;
    let mut seq = 0u64;
    for (i, (mapping, query)) in mappings.iter().zip(&queries).enumerate() {
        let source = SourceId::new(i).map_err(StoreError::from)?;
        each_row(store, query, |row| {
            let Some(key) = mapping.key(&row) else {
                return Ok(());
            };
            rows += 1;
            seq += 1;
            if rows.is_multiple_of(4096) {
                bar.set_position(rows as u64);
            }
            match mapping.records(&row, &zones) {
                Err(refused) => {
                    early.apply(
                        source,
                        RowUpdate {
                            key,
                            lsn: Lsn::ZERO,
                            image: Err(refused),
                        },
                    );
                    early.end_segment();
                }
                Ok(wanted) => {
                    // One part per (zone, owner), records in the row's order.
                    let mut by_owner: BTreeMap<(ZoneId, &Owner), Vec<&Wanted>> = BTreeMap::new();
                    for w in &wanted {
                        let (zone, owner, rtype) = wanted_at(w);
                        let seen = match rtype {
                            RType::CNAME => Some(&mut cnames),
                            RType::DNAME => Some(&mut dnames),
                            _ => None,
                        };
                        if let Some(seen) = seen {
                            let at = seen.entry((zone, owner.clone())).or_default();
                            if at.last() != Some(&seq) {
                                at.push(seq);
                            }
                        }
                        by_owner.entry((zone, owner)).or_default().push(w);
                    }
                    // The first part in the merge order leads: a refusal
                    // at another part comes after it was published.
                    let keys: Vec<Vec<u8>> = by_owner
                        .keys()
                        .map(|(zone, owner)| part_key(*zone, owner, seq))
                        .collect();
                    let lead = keys.iter().min().cloned();
                    for (k, ((_, _), ws)) in keys.iter().zip(&by_owner) {
                        let v = part_value(source, Some(k) == lead.as_ref(), &key, ws);
                        parts.push(k, &v).map_err(spill_err)?;
                    }
                }
            }
            Ok::<(), BoundedError>(())
        })
        .await?;
    }
    bar.set_position(rows as u64);
    let early_rejections: Vec<Rejection> = early.finish().rejections;
    let parts = parts.finish().map_err(spill_err)?;
    let below = names_below(&zones, &parts, &dnames).map_err(|e| match e {
        BoundedError::Spill { source, .. } => spill_err(source),
        other => other,
    })?;
    let crossing = Crossing {
        cnames,
        dnames,
        below,
    };
    bar.set_message(format!(
        "planning {} parts ({} runs on disk)",
        parts.len(),
        dir.runs_written()
    ));
    // Rows excluded from the start of a pass (refused in an earlier one at
    // a part after their first), with their refusal.
    let mut excluded: HashMap<u64, Rejection> = HashMap::new();
    let mut passes = 0;
    let published = dir.file("published");
    loop {
        passes += 1;
        let contributions = keep_rows.then(|| Sorter::new(Arc::clone(&dir), "state", budget));
        let pass = plan_pass(
            &zones,
            &limits,
            &parts,
            &crossing,
            &excluded,
            &published,
            contributions,
        )
        .map_err(|e| match e {
            BoundedError::Spill { source, .. } => spill_err(source),
            other => other,
        })?;
        if pass.culprits.is_empty() {
            let mut rejections = early_rejections;
            rejections.extend(excluded.into_values());
            rejections.extend(pass.rejections);
            let mut refusals: BTreeMap<ZoneId, Vec<String>> = BTreeMap::new();
            for r in &rejections {
                if let Some(zone) = r.zone {
                    let source = mappings
                        .get(usize::from(r.source.0))
                        .map_or("", |m| m.source());
                    refusals.entry(zone).or_default().push(format!(
                        "{source} {}: {}",
                        r.key,
                        pg2dns_decoder::error_chain(&r.reason)
                    ));
                }
            }
            return Ok(BoundedDesired {
                rows,
                refused: rejections.len(),
                refusals,
                published,
                ranges: pass.ranges,
                facts: pass.facts,
                passes,
                contributions: pass.contributions,
                sources: mappings.iter().map(|m| m.source().to_owned()).collect(),
                refs: zones.refs().clone(),
                dir,
            });
        }
        if passes >= MAX_PASSES {
            return Err(BoundedError::Unsettled);
        }
        tracing::info!(
            rows = pass.culprits.len(),
            pass = passes,
            "rows refused at an owner after their first: planning again without them"
        );
        excluded.extend(pass.culprits);
    }
}

/// What rows want that crosses owners, with the rows' positions.
struct Crossing {
    /// Per owner, the positions of the rows that want a CNAME there.
    cnames: HashMap<NodeKey, Vec<u64>>,
    /// Per owner, the positions of the rows that want a DNAME there.
    dnames: HashMap<NodeKey, Vec<u64>>,
    /// Per DNAME owner, the names strictly below it that rows want records
    /// at, with the rows' positions.
    below: HashMap<NodeKey, Vec<(Owner, u64)>>,
}

/// The names strictly below the owners in `dnames` that rows want records
/// at: one more read of the parts, only when some row wants a DNAME.
fn names_below(
    zones: &pg2dns_decoder::Zones,
    parts: &Sorted,
    dnames: &HashMap<NodeKey, Vec<u64>>,
) -> Result<HashMap<NodeKey, Vec<(Owner, u64)>>, BoundedError> {
    let io_err = |source| BoundedError::Spill {
        dir: PathBuf::new(),
        source,
    };
    let mut below: HashMap<NodeKey, Vec<(Owner, u64)>> = HashMap::new();
    if dnames.is_empty() {
        return Ok(below);
    }
    let mut merge = parts.merge().map_err(io_err)?;
    // The DNAMEs above the owner of the last group read.
    let mut group: Option<(Vec<u8>, Owner, Vec<NodeKey>)> = None;
    while let Some(e) = merge.next_entry().map_err(io_err)? {
        if e.key.len() < 12 {
            return Err(Damaged.into());
        }
        let (head, tail) = e.key.split_at(e.key.len() - 8);
        if group.as_ref().is_none_or(|(g, _, _)| g[..] != *head) {
            let zone = ZoneId(u32::from_be_bytes([head[0], head[1], head[2], head[3]]));
            let owner = owner_of(&head[4..])?;
            let apex = zones.name(zone).name();
            let mut above = Vec::new();
            let mut at = owner.name().parent();
            while let Some(name) = at {
                if !name.is_at_or_below(apex) {
                    break;
                }
                let key = (zone, Owner::from_name(name));
                if dnames.contains_key(&key) {
                    above.push(key.clone());
                }
                at = key.1.name().parent();
            }
            group = Some((head.to_vec(), owner, above));
        }
        let (_, owner, above) = group.as_ref().expect("just set");
        let seq = u64::from_be_bytes(tail.try_into().map_err(|_| Damaged)?);
        for key in above {
            below
                .entry(key.clone())
                .or_default()
                .push((owner.clone(), seq));
        }
    }
    Ok(below)
}

/// What one pass over the parts gave.
struct Pass {
    ranges: ZoneRanges,
    facts: HashMap<ZoneId, ZoneFacts>,
    /// Rows refused in this pass (not excluded ones).
    rejections: Vec<Rejection>,
    /// Rows whose refusal came too late for this pass, with it.
    culprits: HashMap<u64, Rejection>,
    /// What each row contributes (when asked for).
    contributions: Option<Sorted>,
}

/// Feeds the parts owner by owner to a planner, writes what each owner
/// publishes to `out`, and finds the rows whose refusal needs another pass.
fn plan_pass(
    zones: &pg2dns_decoder::Zones,
    limits: &pg2dns_decoder::plan::PlanLimits,
    parts: &Sorted,
    crossing: &Crossing,
    excluded: &HashMap<u64, Rejection>,
    out: &std::path::Path,
    mut contributions: Option<Sorter>,
) -> Result<Pass, BoundedError> {
    let io_err = |source| BoundedError::Spill {
        dir: PathBuf::new(),
        source,
    };
    let cnames = &crossing.cnames;
    let current = AtomicU64::new(0);
    let asked: Mutex<HashSet<NodeKey>> = Mutex::new(HashSet::new());
    let is_alias = |t: &NodeKey| {
        let now = current.load(Ordering::Relaxed);
        let alias = cnames
            .get(t)
            .is_some_and(|at| at.iter().any(|s| *s < now && !excluded.contains_key(s)));
        if alias {
            asked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(t.clone());
        }
        alias
    };
    // The rows a DNAME answer counted.
    let relied: Mutex<HashSet<u64>> = Mutex::new(HashSet::new());
    let earlier = |s: u64| s < current.load(Ordering::Relaxed) && !excluded.contains_key(&s);
    let rely = |seqs: &mut dyn Iterator<Item = u64>| {
        relied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(seqs);
    };
    let is_dname = |t: &NodeKey| {
        let seqs: Vec<u64> = crossing
            .dnames
            .get(t)
            .map(|at| at.iter().copied().filter(|s| earlier(*s)).collect())
            .unwrap_or_default();
        rely(&mut seqs.iter().copied());
        !seqs.is_empty()
    };
    let occupied_below = |t: &NodeKey| {
        let names: Vec<&(Owner, u64)> = crossing
            .below
            .get(t)
            .map(|b| b.iter().filter(|(_, s)| earlier(*s)).collect())
            .unwrap_or_default();
        rely(&mut names.iter().map(|(_, s)| *s));
        names.into_iter().map(|(o, _)| o).min().cloned()
    };
    let mut planner = Planner::new(zones, limits, Loaded::default())
        .forgetting_rows()
        .with_aliases(is_alias)
        .with_dnames(DnameOracle {
            is_dname: Box::new(is_dname),
            occupied_below: Box::new(occupied_below),
        });
    let mut file = PublishedFile::create(out).map_err(io_err)?;
    // Rows refused in this pass (their later parts are skipped): whether
    // at their first part, and why.
    let mut refused: HashMap<u64, (bool, Vec<Rejection>)> = HashMap::new();
    let mut merge = parts.merge().map_err(io_err)?;
    let mut entry = merge.next_entry().map_err(io_err)?;
    while let Some(first) = entry.take() {
        let group: Vec<u8> = first.key[..first.key.len() - 8].to_vec();
        let zone = ZoneId(u32::from_be_bytes([group[0], group[1], group[2], group[3]]));
        let owner = owner_of(&group[4..])?;
        let mut next = Some(first);
        while let Some(e) = next.take() {
            if e.key.len() < 12 || e.key[..e.key.len() - 8] != group[..] {
                entry = Some(e);
                break;
            }
            let seq = u64::from_be_bytes(e.key[e.key.len() - 8..].try_into().map_err(|_| Damaged)?);
            if !excluded.contains_key(&seq) && !refused.contains_key(&seq) {
                let part = decode_part(zone, &owner, &e.value)?;
                let lead = part.lead;
                current.store(seq, Ordering::Relaxed);
                let before = planner.rejections().len();
                planner.apply(
                    part.source,
                    RowUpdate {
                        key: part.key,
                        lsn: Lsn::ZERO,
                        image: Ok(part.wanted),
                    },
                );
                if let Some(sorter) = contributions.as_mut() {
                    let (_, rows) = planner.end_segment_taking_rows();
                    for ((source, key), records) in rows {
                        if !records.is_empty() {
                            let (k, v) = state_entry(zone, source, seq, &key, &records);
                            sorter.push(&k, &v).map_err(io_err)?;
                        }
                    }
                } else {
                    planner.end_segment();
                }
                if planner.rejections().len() > before {
                    refused.insert(seq, (lead, planner.rejections()[before..].to_vec()));
                }
            }
            next = merge.next_entry().map_err(io_err)?;
        }
        // The owner is complete: publish it and forget it.
        for (zone, records) in planner.take_published() {
            file.append(zones.name(zone), zone, records)
                .map_err(io_err)?;
        }
    }
    let (ranges, facts) = file.finish().map_err(io_err)?;
    drop(planner);
    let asked = asked.into_inner().unwrap_or_else(|e| e.into_inner());
    // Rows that want a CNAME at an owner the planner was told is an alias,
    // and rows a DNAME answer counted.
    let mut counted: HashSet<u64> = asked
        .iter()
        .filter_map(|t| cnames.get(t))
        .flatten()
        .copied()
        .collect();
    counted.extend(relied.into_inner().unwrap_or_else(|e| e.into_inner()));
    let mut rejections = Vec::new();
    let mut culprits = HashMap::new();
    for (seq, (lead, why)) in refused {
        // Refused after its first part was published, or a CNAME another
        // row was refused for pointing at, or a row a DNAME answer counted.
        if !lead || counted.contains(&seq) {
            if let Some(first) = why.into_iter().next() {
                culprits.insert(seq, first);
            }
        } else {
            rejections.extend(why);
        }
    }
    Ok(Pass {
        ranges,
        facts,
        rejections,
        culprits,
        contributions: contributions
            .map(Sorter::finish)
            .transpose()
            .map_err(io_err)?,
    })
}

/// A zone's published records read back, in owner order.
type ZoneRun = RunReader<BufReader<io::Take<std::fs::File>>>;

impl BoundedDesired {
    /// The records the database wants in `zone`, in owner order.
    pub(super) fn zone_run(&self, zone: ZoneId) -> io::Result<ZoneRun> {
        let (start, end, _) = self.ranges.get(&zone).copied().unwrap_or((0, 0, 0));
        let mut file = std::fs::File::open(&self.published)?;
        file.seek(SeekFrom::Start(start))?;
        Ok(RunReader::new(BufReader::with_capacity(
            64 << 10,
            file.take(end - start),
        )))
    }
}

/// One zone compared in bounded memory.
pub(super) struct ZoneCompared {
    /// The apex SOA the transfer saw.
    pub soa: Record,
    /// Records transferred (SOA included).
    pub transferred: usize,
    /// The comparison (differences only).
    pub diff: ZoneDiff,
    /// Time the transfer took (spilling included).
    pub axfr_time: Duration,
    /// Time the merge took.
    pub diff_time: Duration,
    /// The transfer, in runs (merged again by the verifier's and the
    /// repair's passes).
    pub actual: Sorted,
    /// What the merge knew of the zone.
    pub facts: ZoneFacts,
}

/// Why comparing one zone in bounded memory failed.
#[derive(Debug, thiserror::Error)]
pub enum ZoneCompareError {
    /// The transfer failed.
    #[error(transparent)]
    Axfr(Box<axfr::AxfrError>),
    /// The runs could not be written or read.
    #[error(transparent)]
    Spill(#[from] BoundedError),
}

impl From<axfr::AxfrError> for ZoneCompareError {
    fn from(e: axfr::AxfrError) -> Self {
        ZoneCompareError::Axfr(Box::new(e))
    }
}

/// A zone transferred into sorted runs, not compared yet.
pub(super) struct Transferred {
    soa: Record,
    transferred: usize,
    actual: Sorted,
    /// The apex NS targets the transfer holds.
    facts: ZoneFacts,
    axfr_time: Duration,
}

/// Transfers the zone, spilled in sorted runs as it arrives (this needs
/// nothing of the desired side: it may run while the tables are read).
pub(super) async fn transfer_zone(
    dir: &Arc<SpillDir>,
    zc: &ZoneConfig,
    timeout: Duration,
    budget: usize,
) -> Result<Transferred, ZoneCompareError> {
    let zone = &zc.name;
    let started = Instant::now();
    let mut facts = ZoneFacts::default();
    let mut sorter = Sorter::new(Arc::clone(dir), "axfr", budget);
    let (soa, _messages) = axfr::transfer_each(zone, zc.primary, &zc.key, timeout, |r| {
        facts.actual(zone, &r);
        sorter.push(r.owner.name().as_wire(), &record_value(&r))
    })
    .await?;
    let transferred = sorter.len();
    let actual = sorter.finish().map_err(|source| BoundedError::Spill {
        dir: dir.path().to_path_buf(),
        source,
    })?;
    Ok(Transferred {
        soa,
        transferred,
        actual,
        facts,
        axfr_time: started.elapsed(),
    })
}

/// Merges a transferred zone with the database's published records, owner
/// by owner: the differences are counted, the first owners' kept while the
/// run's shared `sample` has room (none without one), and each is shown to
/// `each` (as the merge produces it).
pub(super) fn compare_transferred(
    desired: &BoundedDesired,
    id: ZoneId,
    zc: &ZoneConfig,
    t: Transferred,
    sample: Option<&Arc<std::sync::atomic::AtomicUsize>>,
    each: &mut dyn FnMut(&OwnerDiff),
) -> Result<ZoneCompared, ZoneCompareError> {
    let started = Instant::now();
    let mut facts = desired.facts.get(&id).cloned().unwrap_or_default();
    facts.name_servers.extend(t.facts.name_servers);
    let mut m = ZoneMerge::new(
        desired,
        id,
        &zc.name,
        facts.clone(),
        &zc.exclusions,
        &t.actual,
    )?;
    m.merge = match sample {
        Some(left) => m.merge.with_shared_sample(Arc::clone(left)),
        None => m.merge.with_sample(0),
    };
    while let Some((_, d)) = m.next_owner()? {
        if let Some(d) = d {
            each(&d);
        }
    }
    let addressed = m.addressed()?;
    let diff = m.merge.finish(&addressed);
    Ok(ZoneCompared {
        soa: t.soa,
        transferred: t.transferred,
        diff,
        axfr_time: t.axfr_time,
        diff_time: started.elapsed(),
        actual: t.actual,
        facts,
    })
}

/// Transfers the zone (spilled in sorted runs as it arrives) and merges it
/// with the database's published records, owner by owner (see
/// [`compare_transferred`]).
pub(super) async fn compare_zone(
    desired: &BoundedDesired,
    id: ZoneId,
    zc: &ZoneConfig,
    timeout: Duration,
    budget: usize,
    sample: Option<&Arc<std::sync::atomic::AtomicUsize>>,
    each: &mut (dyn FnMut(&OwnerDiff) + Send),
) -> Result<ZoneCompared, ZoneCompareError> {
    let t = transfer_zone(&desired.dir, zc, timeout, budget).await?;
    compare_transferred(desired, id, zc, t, sample, each)
}

/// The database's records of a zone merged with a transfer's runs, owner by
/// owner, as a cursor: [`ZoneMerge::next_owner`] gives each owner's
/// differences as the merge reaches it, so a pass that sends (the repair)
/// or writes (the verifier's file) them holds one owner at a time.
pub(super) struct ZoneMerge<'a> {
    desired: &'a BoundedDesired,
    id: ZoneId,
    want: ZoneRun,
    have: pg2dns_decoder::runs::Merge<spill::RunInput>,
    w: Option<pg2dns_decoder::runs::Entry>,
    h: Option<pg2dns_decoder::runs::Entry>,
    /// The comparison (counts, sample, the MX/SRV that may wait).
    pub merge: OwnerMerge<'a>,
    wg: Vec<Record>,
    hg: Vec<Record>,
}

impl<'a> ZoneMerge<'a> {
    /// A merge of `desired`'s records of `id` with `actual` from the start.
    pub fn new(
        desired: &'a BoundedDesired,
        id: ZoneId,
        zone: &'a ZoneName,
        facts: ZoneFacts,
        exclusions: &'a Exclusions,
        actual: &Sorted,
    ) -> Result<ZoneMerge<'a>, BoundedError> {
        let spill_err = |source| BoundedError::Spill {
            dir: desired.dir.path().to_path_buf(),
            source,
        };
        let mut want = desired.zone_run(id).map_err(spill_err)?;
        let mut have = actual.merge().map_err(spill_err)?;
        let w = want.next_entry().map_err(spill_err)?;
        let h = have.next_entry().map_err(spill_err)?;
        Ok(ZoneMerge {
            desired,
            id,
            want,
            have,
            w,
            h,
            merge: OwnerMerge::new(zone, facts, exclusions),
            wg: Vec::new(),
            hg: Vec::new(),
        })
    }

    fn spill_err(&self, source: io::Error) -> BoundedError {
        BoundedError::Spill {
            dir: self.desired.dir.path().to_path_buf(),
            source,
        }
    }

    /// The next owner: `None` after the last, else the owner and its
    /// differences (`None` when it has none). Its records in DNS are
    /// [`ZoneMerge::actual`].
    pub fn next_owner(&mut self) -> Result<Option<(Owner, Option<OwnerDiff>)>, BoundedError> {
        let wire: Vec<u8> = match (&self.w, &self.h) {
            (Some(a), Some(b)) => {
                std::cmp::min(a.key.get(4..).ok_or(Damaged)?, &b.key[..]).to_vec()
            }
            (Some(a), None) => a.key.get(4..).ok_or(Damaged)?.to_vec(),
            (None, Some(b)) => b.key.clone(),
            (None, None) => return Ok(None),
        };
        let owner = owner_of(&wire)?;
        self.wg.clear();
        self.hg.clear();
        while let Some(e) = self
            .w
            .as_ref()
            .filter(|e| e.key.get(4..) == Some(&wire[..]))
        {
            self.wg.push(decode_record(&owner, &e.value)?);
            self.w = self.want.next_entry().map_err(|e| self.spill_err(e))?;
        }
        while let Some(e) = self.h.as_ref().filter(|e| e.key == wire) {
            self.hg.push(decode_record(&owner, &e.value)?);
            self.h = self.have.next_entry().map_err(|e| self.spill_err(e))?;
        }
        let d = self.merge.owner(&self.wg, &self.hg);
        Ok(Some((owner, d)))
    }

    /// The records DNS holds at the owner [`ZoneMerge::next_owner`] gave
    /// last (SOA, signatures and other records pg2dns does not own
    /// included).
    pub fn actual(&self) -> &[Record] {
        &self.hg
    }

    /// After the last owner: whether the targets of missing MX and SRV
    /// records have a wanted address (a second read of the desired side,
    /// for those names only).
    pub fn addressed(&self) -> Result<BTreeSet<Owner>, BoundedError> {
        let targets = self.merge.waiting_targets();
        let mut addressed = BTreeSet::new();
        if targets.is_empty() {
            return Ok(addressed);
        }
        let wires: HashSet<Vec<u8>> = targets
            .iter()
            .map(|t| t.name().as_wire().to_vec())
            .collect();
        let mut want = self
            .desired
            .zone_run(self.id)
            .map_err(|e| self.spill_err(e))?;
        while let Some(e) = want.next_entry().map_err(|e| self.spill_err(e))? {
            let wire = e.key.get(4..).ok_or(Damaged)?;
            if wires.contains(wire) {
                let r = decode_record(&owner_of(wire)?, &e.value)?;
                if self.merge.is_owned_address(&r) {
                    addressed.insert(r.owner);
                }
            }
        }
        Ok(addressed)
    }
}

/// What a row contributes to a zone, as an entry of the state runs: key
/// zone, source, row position; value the row's key and its records.
fn state_entry(
    zone: ZoneId,
    source: SourceId,
    seq: u64,
    key: &RowKey,
    records: &[Desired],
) -> (Vec<u8>, Vec<u8>) {
    let mut k = Vec::with_capacity(14);
    k.extend_from_slice(&zone.0.to_be_bytes());
    k.extend_from_slice(&source.0.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    let mut v = Vec::new();
    runs::put_bytes32(&mut v, key.0.as_bytes());
    v.extend_from_slice(&(records.len() as u32).to_be_bytes());
    for d in records {
        runs::put_bytes16(&mut v, d.record.owner.name().as_wire());
        v.extend_from_slice(&record_value(&d.record));
    }
    (k, v)
}

/// The state runs read back zone by zone, source by source, in batches of
/// rows (a row split over several owners comes back whole).
pub(super) struct StateRows {
    merge: pg2dns_decoder::runs::Merge<spill::RunInput>,
    next: Option<pg2dns_decoder::runs::Entry>,
}

/// Rows per batch written to the row state.
const STATE_BATCH_ROWS: usize = 10_000;

impl StateRows {
    /// Reads `sorted` (the desired side's contributions) from the start.
    pub fn new(sorted: &Sorted) -> io::Result<StateRows> {
        let mut merge = sorted.merge()?;
        let next = merge.next_entry()?;
        Ok(StateRows { merge, next })
    }

    /// The next batch of the rows of `source` in `zone` (`None` when there
    /// are no more); rows of earlier zones or sources are skipped. Zones
    /// and sources must be asked for in increasing order.
    pub fn batch(
        &mut self,
        zone: ZoneId,
        source: SourceId,
    ) -> Result<Option<super::Contributions>, BoundedError> {
        let io_err = |source| BoundedError::Spill {
            dir: PathBuf::new(),
            source,
        };
        let mut want = Vec::with_capacity(6);
        want.extend_from_slice(&zone.0.to_be_bytes());
        want.extend_from_slice(&source.0.to_be_bytes());
        // Skip what comes before.
        while self
            .next
            .as_ref()
            .is_some_and(|e| e.key.get(..6).is_none_or(|k| k < &want[..]))
        {
            self.next = self.merge.next_entry().map_err(io_err)?;
        }
        let mut rows: super::Contributions = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        while let Some(e) = self
            .next
            .as_ref()
            .filter(|e| e.key.get(..6) == Some(&want[..]))
        {
            let same_row = last.as_deref() == Some(&e.key[..]);
            if !same_row && rows.len() >= STATE_BATCH_ROWS {
                break;
            }
            let mut f = Fields::new(&e.value);
            let key = RowKey(String::from_utf8(f.bytes32()?.to_vec()).map_err(|_| Damaged)?);
            let n = f.u32()?;
            let mut records = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let owner = owner_of(f.bytes16()?)?;
                let rtype = RType(f.u16()?);
                let ttl = f.u32()?;
                let rdata = Rdata::from_wire(f.bytes16()?);
                records.push(Record {
                    owner,
                    rtype,
                    ttl,
                    rdata,
                });
            }
            match rows.last_mut() {
                Some((_, recs)) if same_row => recs.extend(records),
                _ => rows.push((key, records)),
            }
            last = Some(e.key.clone());
            self.next = self.merge.next_entry().map_err(io_err)?;
        }
        Ok((!rows.is_empty()).then_some(rows))
    }
}

/// The desired side of a service an operator paused: this slot's row state
/// of the `selected` zones (what DNS held after every transaction before
/// the pause), streamed into sorted runs by (zone, owner) and published
/// owner by owner as the planner publishes its state (`plan::publish`: one
/// TTL per RRset, `one_ptr`), into the same file of published records the
/// tables' read writes: then compared by the same merge.
pub(super) async fn read_paused(
    store: &Store,
    config: &Config,
    selected: &[ZoneId],
    dir: Arc<SpillDir>,
) -> Result<BoundedDesired, BoundedError> {
    use futures_util::TryStreamExt;
    let spill_err = |source| BoundedError::Spill {
        dir: dir.path().to_path_buf(),
        source,
    };
    let read = crate::store::sql("cannot read pg2dns.row_state");
    let corrupt = |value: crate::store::Corrupt| {
        BoundedError::Store(StoreError::Corrupt {
            table: "row_state",
            value,
        })
    };
    let zones = config.zones();
    let names: Vec<String> = selected
        .iter()
        .map(|&id| config.zones[id.index()].name.to_string())
        .collect();
    let slot = store.slot().to_owned();
    let rows: i64 = store
        .client()
        .query_one(
            "SELECT count(*) FROM (SELECT DISTINCT source, row_key FROM pg2dns.row_state \
             WHERE slot = $1 AND zone = ANY($2)) AS r",
            &[&slot, &names],
        )
        .await
        .map_err(crate::store::sql("cannot read pg2dns.row_state"))?
        .get(0);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&slot, &names];
    let stream = store
        .client()
        .query_raw(
            "SELECT zone, owner, rtype, rdata, min(ttl) FROM pg2dns.row_state \
             WHERE slot = $1 AND zone = ANY($2) GROUP BY zone, owner, rtype, rdata",
            params,
        )
        .await
        .map_err(read)?;
    futures_util::pin_mut!(stream);
    let budget = spill::budget(config.reconcile.memory_mib, 0.5);
    let mut state = Sorter::new(Arc::clone(&dir), "paused", budget);
    let mut ids: HashMap<String, ZoneId> = HashMap::new();
    while let Some(r) = stream
        .try_next()
        .await
        .map_err(crate::store::sql("cannot read pg2dns.row_state"))?
    {
        let zone: String = r.get(0);
        let id = match ids.get(&zone) {
            Some(id) => *id,
            None => {
                // The state was read for the selected zones only: a record
                // of another zone left out would be deleted from DNS.
                let id = ZoneName::parse(&zone)
                    .ok()
                    .and_then(|z| zones.id_of(&z))
                    .ok_or_else(|| corrupt(crate::store::Corrupt::Zone(zone.clone())))?;
                ids.insert(zone, id);
                id
            }
        };
        let owner: Vec<u8> = r.get(1);
        let rtype: i32 = r.get(2);
        let rtype =
            u16::try_from(rtype).map_err(|_| corrupt(crate::store::Corrupt::RType(rtype)))?;
        let ttl: i32 = r.get(4);
        let ttl = u32::try_from(ttl).map_err(|_| corrupt(crate::store::Corrupt::Ttl(ttl)))?;
        let rdata: Vec<u8> = r.get(3);
        let owner =
            owner_of(&owner).map_err(|_| corrupt(crate::store::Corrupt::Owner(owner.clone())))?;
        let record = Record {
            owner,
            rtype: RType(rtype),
            ttl,
            rdata: Rdata::from_wire(&rdata),
        };
        state
            .push(&owner_key(id, &record.owner), &record_value(&record))
            .map_err(spill_err)?;
    }
    let sorted = state.finish().map_err(spill_err)?;
    let one_ptr = config.plan_limits().one_ptr;
    let published = dir.file("published-paused");
    let mut file = PublishedFile::create(&published).map_err(spill_err)?;
    let mut merge = sorted.merge().map_err(spill_err)?;
    let mut next = merge.next_entry().map_err(spill_err)?;
    let mut group: Vec<Desired> = Vec::new();
    while let Some(first) = next.take() {
        let key = first.key.clone();
        let zone = ZoneId(u32::from_be_bytes(
            key.get(..4)
                .and_then(|k| k.try_into().ok())
                .ok_or(Damaged)?,
        ));
        let owner = owner_of(key.get(4..).ok_or(Damaged)?)?;
        group.clear();
        group.push(Desired {
            zone,
            record: decode_record(&owner, &first.value)?,
        });
        next = merge.next_entry().map_err(spill_err)?;
        while let Some(e) = next.as_ref().filter(|e| e.key == key) {
            group.push(Desired {
                zone,
                record: decode_record(&owner, &e.value)?,
            });
            next = merge.next_entry().map_err(spill_err)?;
        }
        for (zone, records) in pg2dns_decoder::plan::publish(group.drain(..), &one_ptr) {
            file.append(zones.name(zone), zone, records)
                .map_err(spill_err)?;
        }
    }
    let (ranges, facts) = file.finish().map_err(spill_err)?;
    Ok(BoundedDesired {
        // A count is never negative.
        rows: usize::try_from(rows).unwrap_or(0),
        refused: 0,
        refusals: BTreeMap::new(),
        published,
        ranges,
        facts,
        passes: 1,
        sources: Vec::new(),
        refs: Default::default(),
        contributions: None,
        dir,
    })
}

/// Each zone's range in a file of published records: start, end, count.
type ZoneRanges = HashMap<ZoneId, (u64, u64, usize)>;

/// The desired side's file of published records, written owner by owner
/// in merge order: each zone's records are one range of it (start, end,
/// count), and the zone's facts are gathered on the way.
struct PublishedFile {
    writer: BufWriter<std::fs::File>,
    offset: u64,
    ranges: ZoneRanges,
    facts: HashMap<ZoneId, ZoneFacts>,
}

impl PublishedFile {
    fn create(path: &std::path::Path) -> io::Result<Self> {
        Ok(Self {
            writer: BufWriter::with_capacity(1 << 16, std::fs::File::create(path)?),
            offset: 0,
            ranges: HashMap::new(),
            facts: HashMap::new(),
        })
    }

    /// Appends one owner's published records of `zone`.
    fn append(
        &mut self,
        zone_name: &ZoneName,
        zone: ZoneId,
        records: impl IntoIterator<Item = Record>,
    ) -> io::Result<()> {
        let f = self.facts.entry(zone).or_default();
        let range = self
            .ranges
            .entry(zone)
            .or_insert((self.offset, self.offset, 0));
        for r in records {
            f.desired(zone_name, &r);
            let key = owner_key(zone, &r.owner);
            let value = record_value(&r);
            runs::write_entry(&mut self.writer, &key, &value)?;
            self.offset += runs::entry_len(&key, &value);
            range.1 = self.offset;
            range.2 += 1;
        }
        Ok(())
    }

    /// Flushes the file: the zones' ranges and facts.
    fn finish(mut self) -> io::Result<(ZoneRanges, HashMap<ZoneId, ZoneFacts>)> {
        self.writer.flush()?;
        Ok((self.ranges, self.facts))
    }
}
