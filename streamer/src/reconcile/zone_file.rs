//! `reconcile --zone-file` in bounded memory: the legacy zone file, the
//! database's desired records and the zone's transfer compared three ways
//! by one merge of sorted runs, owner by owner.
//!
//! ```text
//!  zone file ─▶ parse_each ─▶ sorted runs (owner) ─┐
//!  desired side's published records (owner) ───────┼─▶ per owner: file vs database,
//!  the transfer's runs (owner) ────────────────────┘    database vs DNS ─▶ three_way_owner
//! ```
//!
//! Why: a legacy generator's file holds the whole zone; held as records (and
//! every difference with it) it made memory grow with the zone. The records
//! are spilled as they are read ([`pg2dns_decoder::zonefile::parse_each`])
//! into runs keyed as the transfer's are (the owner's wire form), so the
//! three sides come out in one order and each owner is compared by the
//! ownership rules of [`OwnerMerge`] (one implementation) on both pairs,
//! then combined by [`pg2dns_decoder::zonefile::three_way_owner`]. The
//! report counts every difference and keeps the run's shared sample.
//!
//! What crosses owners: whether an MX or SRV target has a wanted address
//! (a missing MX or SRV whose target has none waits, and is no difference).
//! The targets are collected in a first read of the desired side (the
//! distinct in-zone targets: a zone's mail and service hosts), and those
//! with a wanted address found in a second, before the merge.
//!
//! Memory: the sorter's buffer while the file is read (its text is read
//! whole, then dropped once its records are in runs), one owner per side,
//! the MX/SRV targets, and the sample.

use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pg2dns_decoder::diff::{OwnerDiff, OwnerMerge, ZoneFacts};
use pg2dns_decoder::runs::Entry;
use pg2dns_decoder::zonefile::{self, Read, ThreeWayRecord, ZoneFileError};
use pg2dns_decoder::{Owner, RType, Record, ZoneId, ZoneName};

use super::bounded::{decode_record, owner_of, record_value, BoundedDesired, BoundedError};
use super::spill::{Sorted, Sorter, SpillDir};
use crate::config::ZoneConfig;

/// A zone file read into sorted runs.
#[derive(Clone, Debug)]
pub struct ReadFile {
    /// The file given.
    pub path: PathBuf,
    /// Records read (SOA included, skipped types not).
    pub records: usize,
    /// Records of types pg2dns does not publish, skipped.
    pub skipped: usize,
    /// The records, keyed by owner (wire form), as a transfer's runs.
    pub sorted: Sorted,
    /// The file's apex NS targets.
    pub facts: ZoneFacts,
}

/// Why a zone file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A line cannot be read.
    #[error(transparent)]
    Parse(#[from] ZoneFileError),
    /// The runs could not be written.
    #[error(
        "cannot spill the zone file's records to {dir} ([reconcile] spill_dir; free disk space?)"
    )]
    Spill {
        /// The spill directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Reads the master file `text` of `zone` (named `name`) into sorted runs
/// in `dir`, at most `budget` bytes buffered; `load` fetches `$INCLUDE`s.
pub fn read(
    zone: &ZoneName,
    path: PathBuf,
    name: &str,
    text: &str,
    load: &mut dyn FnMut(&str, &str) -> Result<zonefile::Loaded, String>,
    dir: &Arc<SpillDir>,
    budget: usize,
) -> Result<ReadFile, ReadError> {
    let mut sorter = Sorter::new(Arc::clone(dir), "zonefile", budget);
    let mut facts = ZoneFacts::default();
    let (mut records, mut skipped) = (0usize, 0usize);
    let mut failed: Option<io::Error> = None;
    zonefile::parse_each(zone, name, text, load, &mut |read| match read {
        Read::Record(r) => {
            records += 1;
            facts.actual(zone, &r);
            if failed.is_none() {
                if let Err(e) = sorter.push(r.owner.name().as_wire(), &record_value(&r)) {
                    failed = Some(e);
                }
            }
        }
        Read::Skipped(..) => skipped += 1,
    })?;
    let spill = |source| ReadError::Spill {
        dir: dir.path().to_path_buf(),
        source,
    };
    if let Some(e) = failed {
        return Err(spill(e));
    }
    Ok(ReadFile {
        path,
        records,
        skipped,
        sorted: sorter.finish().map_err(spill)?,
        facts,
    })
}

/// The zone file compared with the database and DNS: counts of every
/// difference, and the first ones (the run's shared sample).
#[derive(Debug, Default)]
pub struct FileCompared {
    /// Records the database wants that the file lacks.
    pub file_lacks: usize,
    /// Records the file holds that the database does not want.
    pub file_extra: usize,
    /// Records both hold with another TTL.
    pub file_ttl_differences: usize,
    /// Records some side disagrees on, all of them.
    pub differences: usize,
    /// The first of those, in owner order (whole owners).
    pub records: Vec<ThreeWayRecord>,
}

impl FileCompared {
    /// Whether the three sides agree.
    pub fn agrees(&self) -> bool {
        self.differences == 0
    }

    /// Whether [`FileCompared::records`] lists only the first differences.
    pub fn is_sampled(&self) -> bool {
        self.records.len() < self.differences
    }
}

/// One side of the merge: its next entry and how many bytes of the key
/// come before the owner (the desired side's zone id).
struct Side<'s> {
    next: Option<Entry>,
    skip: usize,
    read: Box<dyn FnMut() -> io::Result<Option<Entry>> + 's>,
}

impl Side<'_> {
    fn owner(&self) -> Result<Option<&[u8]>, BoundedError> {
        match &self.next {
            None => Ok(None),
            Some(e) => Ok(Some(
                e.key
                    .get(self.skip..)
                    .ok_or(pg2dns_decoder::runs::Damaged)?,
            )),
        }
    }

    /// Moves the records at `wire` into `out`.
    fn take(
        &mut self,
        wire: &[u8],
        owner: &Owner,
        out: &mut Vec<Record>,
    ) -> Result<(), BoundedError> {
        out.clear();
        while self.owner()? == Some(wire) {
            let e = self.next.take().expect("just seen");
            out.push(decode_record(owner, &e.value)?);
            self.next = (self.read)().map_err(io_err)?;
        }
        Ok(())
    }
}

fn io_err(source: io::Error) -> BoundedError {
    BoundedError::Spill {
        dir: PathBuf::new(),
        source,
    }
}

/// Takes `n` from the run's shared sample (whether there was room).
fn take_sample(left: &AtomicUsize, n: usize) -> bool {
    left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
        (l > 0).then(|| l.saturating_sub(n))
    })
    .is_ok()
}

/// Compares `file` with the records the database wants in zone `id` and
/// with the transfer `actual` (whose facts are `dns_facts`), owner by
/// owner; the first differences are kept while `sample` has room.
pub(super) fn compare(
    desired: &BoundedDesired,
    id: ZoneId,
    zc: &ZoneConfig,
    file: &ReadFile,
    actual: &Sorted,
    dns_facts: &ZoneFacts,
    sample: &AtomicUsize,
) -> Result<FileCompared, BoundedError> {
    let zone = &zc.name;
    let mut file_facts = desired.facts.get(&id).cloned().unwrap_or_default();
    file_facts
        .name_servers
        .extend(file.facts.name_servers.iter().cloned());
    let mut by_file = OwnerMerge::new(zone, file_facts, &zc.exclusions).with_sample(0);
    let mut by_dns = OwnerMerge::new(zone, dns_facts.clone(), &zc.exclusions).with_sample(0);
    let addressed = addressed_targets(desired, id, &by_file)?;

    let mut want_run = desired.zone_run(id).map_err(io_err)?;
    let mut file_merge = file.sorted.merge().map_err(io_err)?;
    let mut have_merge = actual.merge().map_err(io_err)?;
    let mut sides = [
        Side {
            next: want_run.next_entry().map_err(io_err)?,
            skip: 4,
            read: Box::new(move || want_run.next_entry()),
        },
        Side {
            next: file_merge.next_entry().map_err(io_err)?,
            skip: 0,
            read: Box::new(move || file_merge.next_entry()),
        },
        Side {
            next: have_merge.next_entry().map_err(io_err)?,
            skip: 0,
            read: Box::new(move || have_merge.next_entry()),
        },
    ];
    let mut out = FileCompared::default();
    let (mut wg, mut fg, mut hg) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        let mut least: Option<Vec<u8>> = None;
        for side in &sides {
            if let Some(o) = side.owner()? {
                if least.as_deref().is_none_or(|l| o < l) {
                    least = Some(o.to_vec());
                }
            }
        }
        let Some(wire) = least else { break };
        let owner = owner_of(&wire)?;
        let [w, f, h] = &mut sides;
        w.take(&wire, &owner, &mut wg)?;
        f.take(&wire, &owner, &mut fg)?;
        h.take(&wire, &owner, &mut hg)?;
        let mail = wg.iter().any(|r| matches!(r.rtype, RType::MX | RType::SRV));
        let file_diff = owner_diff(&mut by_file, &wg, &fg, mail, &addressed);
        let dns_diff = owner_diff(&mut by_dns, &wg, &hg, mail, &addressed);
        if let Some(d) = &file_diff {
            out.file_lacks += d.missing.len();
            out.file_extra += d.extra.len();
            out.file_ttl_differences += d.ttl.len();
        }
        let records = zonefile::three_way_owner(file_diff.as_ref(), Some(dns_diff.as_ref()));
        out.differences += records.len();
        if !records.is_empty() && take_sample(sample, records.len()) {
            out.records.extend(records);
        }
    }
    Ok(out)
}

/// One owner's differences under `merge`, with its missing MX and SRV
/// records whose target has a wanted address (those without one wait and
/// are no difference).
fn owner_diff(
    merge: &mut OwnerMerge<'_>,
    wanted: &[Record],
    other: &[Record],
    mail: bool,
    addressed: &BTreeSet<Owner>,
) -> Option<OwnerDiff> {
    let mut d = merge.owner(wanted, other).unwrap_or_default();
    if mail {
        for (_, late) in merge.addressed_missing(addressed) {
            d.missing.extend(late.missing);
        }
    }
    (!d.is_empty()).then_some(d)
}

/// The in-zone targets of the zone's wanted MX and SRV records that have a
/// wanted address: two reads of the desired side, holding the targets.
fn addressed_targets(
    desired: &BoundedDesired,
    id: ZoneId,
    merge: &OwnerMerge<'_>,
) -> Result<BTreeSet<Owner>, BoundedError> {
    // A target outside the zone has no record in the zone's run: it is
    // collected, and never found addressed.
    let mut targets: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut run = desired.zone_run(id).map_err(io_err)?;
    while let Some(e) = run.next_entry().map_err(io_err)? {
        let rtype = e.value.get(..2).map(|t| u16::from_be_bytes([t[0], t[1]]));
        if rtype == Some(RType::MX.0) || rtype == Some(RType::SRV.0) {
            let wire = e.key.get(4..).ok_or(pg2dns_decoder::runs::Damaged)?;
            let r = decode_record(&owner_of(wire)?, &e.value)?;
            if let Some(t) = pg2dns_decoder::rdata::target(r.rtype, r.rdata.as_wire()) {
                targets.insert(t.as_wire().to_vec());
            }
        }
    }
    let mut addressed = BTreeSet::new();
    if targets.is_empty() {
        return Ok(addressed);
    }
    let mut run = desired.zone_run(id).map_err(io_err)?;
    while let Some(e) = run.next_entry().map_err(io_err)? {
        let wire = e.key.get(4..).ok_or(pg2dns_decoder::runs::Damaged)?;
        if targets.contains(wire) {
            let r = decode_record(&owner_of(wire)?, &e.value)?;
            if merge.is_owned_address(&r) {
                addressed.insert(r.owner);
            }
        }
    }
    Ok(addressed)
}
