//! Sorted runs: the external sort that lets reconcile compare zones of any
//! size in a bounded amount of memory.
//!
//! Why: a zone of ten million records does not fit in a few hundred MiB as
//! records (an owner and its data are two allocations each), but the
//! comparison only needs both sides in one order, owner by owner. Entries
//! (a key and a value, both bytes) are buffered in a [`RunBuffer`] up to a
//! byte budget, sorted by key and written out as a run; the runs are then
//! read back together through a k-way [`Merge`], which yields every entry
//! in key order while holding one entry per run. Keys compare as bytes
//! (`memcmp`); entries with equal keys come out in the order they were
//! pushed (the sort is stable and the merge takes the earlier run first).
//!
//! The encoding of an entry is `key length (u32 LE) | value length (u32 LE)
//! | key | value`. Nothing here touches a file: the streamer writes the runs
//! to a temporary directory and hands their readers to [`Merge`].

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, BufRead, Write};

/// One entry of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// What the run is sorted by (compared as bytes).
    pub key: Vec<u8>,
    /// The payload.
    pub value: Vec<u8>,
}

/// Bytes an entry takes in the buffer beside its key and value: its
/// header in the arena and its slot in the index.
const ENTRY_OVERHEAD: usize = 8 + 12;

/// Entries buffered for one run, in one arena (no allocation per entry).
#[derive(Debug)]
pub struct RunBuffer {
    arena: Vec<u8>,
    /// Per entry: its offset in the arena, key length, value length.
    index: Vec<(u32, u32, u32)>,
    limit: usize,
}

impl RunBuffer {
    /// A buffer that says it is full past about `limit_bytes` bytes.
    pub fn new(limit_bytes: usize) -> RunBuffer {
        RunBuffer {
            arena: Vec::new(),
            index: Vec::new(),
            // An arena offset is a u32.
            limit: limit_bytes.clamp(1, u32::MAX as usize / 2),
        }
    }

    /// Adds an entry (call [`RunBuffer::is_full`] after, and write the run
    /// out when it is).
    pub fn push(&mut self, key: &[u8], value: &[u8]) {
        // Grow by doubling, but not far past the budget: a full buffer's
        // allocation is about its budget, not twice it.
        let needed = self.arena.len() + key.len() + value.len();
        if needed > self.arena.capacity() {
            let grown = (self.arena.capacity() * 2).max(4096).min(self.limit);
            self.arena
                .reserve_exact(grown.max(needed) - self.arena.len());
        }
        if self.index.len() == self.index.capacity() {
            let grown = (self.index.capacity() * 2)
                .max(256)
                .min(self.limit / ENTRY_OVERHEAD + 1);
            self.index
                .reserve_exact(grown.max(self.index.len() + 1) - self.index.len());
        }
        let at = self.arena.len() as u32;
        self.arena.extend_from_slice(key);
        self.arena.extend_from_slice(value);
        self.index.push((at, key.len() as u32, value.len() as u32));
    }

    /// Whether the buffer reached its budget.
    pub fn is_full(&self) -> bool {
        self.bytes() >= self.limit
    }

    /// Bytes the buffer holds (its entries and their index).
    pub fn bytes(&self) -> usize {
        self.arena.len() + self.index.len() * ENTRY_OVERHEAD
    }

    /// Entries buffered.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no entry is buffered.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn key(&self, (at, k, _): (u32, u32, u32)) -> &[u8] {
        &self.arena[at as usize..(at + k) as usize]
    }

    /// Sorts the entries by key (stable) and writes them as one run; the
    /// buffer is empty after.
    pub fn write_sorted<W: Write>(&mut self, out: &mut W) -> io::Result<()> {
        let mut index = std::mem::take(&mut self.index);
        // Unstable but stable in effect: equal keys keep the order they
        // were pushed in (their arena offsets), without a merge sort's
        // buffer of half the index.
        index.sort_unstable_by(|a, b| self.key(*a).cmp(self.key(*b)).then(a.0.cmp(&b.0)));
        for (at, k, v) in index.drain(..) {
            out.write_all(&k.to_le_bytes())?;
            out.write_all(&v.to_le_bytes())?;
            out.write_all(&self.arena[at as usize..(at + k + v) as usize])?;
        }
        self.arena.clear();
        // Keep the index's allocation for the next run.
        self.index = index;
        Ok(())
    }
}

/// Reads the entries of one run.
#[derive(Debug)]
pub struct RunReader<R> {
    input: R,
}

impl<R: BufRead> RunReader<R> {
    /// A reader of the run `input` holds.
    pub fn new(input: R) -> RunReader<R> {
        RunReader { input }
    }

    /// The next entry, `None` at the end of the run.
    pub fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        if self.input.fill_buf()?.is_empty() {
            return Ok(None);
        }
        let mut header = [0u8; 8];
        self.input.read_exact(&mut header)?;
        let k = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let v = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let mut key = vec![0; k];
        self.input.read_exact(&mut key)?;
        let mut value = vec![0; v];
        self.input.read_exact(&mut value)?;
        Ok(Some(Entry { key, value }))
    }
}

impl<R: BufRead> Iterator for RunReader<R> {
    type Item = io::Result<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry().transpose()
    }
}

/// The k-way merge of sorted runs: every entry of every run, in key order
/// (equal keys: the earlier run first).
#[derive(Debug)]
pub struct Merge<R> {
    runs: Vec<RunReader<R>>,
    /// The head of each run not yet exhausted: (key, run, value).
    heads: BinaryHeap<Reverse<Head>>,
}

/// A run's next entry in the merge: its key, the run, its value.
type Head = (Vec<u8>, usize, Vec<u8>);

impl<R: BufRead> Merge<R> {
    /// Merges `runs`, each sorted by key.
    pub fn new(runs: Vec<R>) -> io::Result<Merge<R>> {
        let mut merge = Merge {
            runs: runs.into_iter().map(RunReader::new).collect(),
            heads: BinaryHeap::new(),
        };
        for i in 0..merge.runs.len() {
            merge.refill(i)?;
        }
        Ok(merge)
    }

    fn refill(&mut self, run: usize) -> io::Result<()> {
        if let Some(e) = self.runs[run].next_entry()? {
            self.heads.push(Reverse((e.key, run, e.value)));
        }
        Ok(())
    }

    /// The key of the next entry, without taking it.
    pub fn peek_key(&self) -> Option<&[u8]> {
        self.heads.peek().map(|Reverse((k, _, _))| k.as_slice())
    }

    /// The next entry in key order, `None` when every run is exhausted.
    pub fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        let Some(Reverse((key, run, value))) = self.heads.pop() else {
            return Ok(None);
        };
        self.refill(run)?;
        Ok(Some(Entry { key, value }))
    }
}

impl<R: BufRead> Iterator for Merge<R> {
    type Item = io::Result<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry().transpose()
    }
}

/// Writes one entry of a run (for a sequence already in key order, written
/// as it is produced).
pub fn write_entry<W: Write>(out: &mut W, key: &[u8], value: &[u8]) -> io::Result<()> {
    out.write_all(&(key.len() as u32).to_le_bytes())?;
    out.write_all(&(value.len() as u32).to_le_bytes())?;
    out.write_all(key)?;
    out.write_all(value)
}

/// Bytes [`write_entry`] writes for an entry.
pub fn entry_len(key: &[u8], value: &[u8]) -> u64 {
    8 + key.len() as u64 + value.len() as u64
}

/// Appends `bytes` with its length (u32 BE) to `out`.
pub fn put_bytes32(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Appends `bytes` with its length (u16 BE) to `out`.
pub fn put_bytes16(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Reads values written by the `put_` functions, in order.
#[derive(Debug)]
pub struct Fields<'a> {
    rest: &'a [u8],
}

/// A value that does not hold the fields expected (a bug or a damaged file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a spilled entry ends early or is damaged")]
pub struct Damaged;

impl<'a> Fields<'a> {
    /// Fields of `value`.
    pub fn new(value: &'a [u8]) -> Fields<'a> {
        Fields { rest: value }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Damaged> {
        if self.rest.len() < n {
            return Err(Damaged);
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    /// A u16 (BE).
    pub fn u16(&mut self) -> Result<u16, Damaged> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A u32 (BE).
    pub fn u32(&mut self) -> Result<u32, Damaged> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A u64 (BE).
    pub fn u64(&mut self) -> Result<u64, Damaged> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// Bytes written by [`put_bytes16`].
    pub fn bytes16(&mut self) -> Result<&'a [u8], Damaged> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    /// Bytes written by [`put_bytes32`].
    pub fn bytes32(&mut self) -> Result<&'a [u8], Damaged> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// Whether every field was read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn runs_of(entries: &[(Vec<u8>, Vec<u8>)], limit: usize) -> Vec<Vec<u8>> {
        let mut buffer = RunBuffer::new(limit);
        let mut runs = Vec::new();
        for (k, v) in entries {
            buffer.push(k, v);
            if buffer.is_full() {
                let mut run = Vec::new();
                buffer.write_sorted(&mut run).unwrap();
                runs.push(run);
            }
        }
        if !buffer.is_empty() {
            let mut run = Vec::new();
            buffer.write_sorted(&mut run).unwrap();
            runs.push(run);
        }
        runs
    }

    #[test]
    fn a_full_buffer_writes_one_sorted_run_and_empties() {
        let mut buffer = RunBuffer::new(60);
        buffer.push(b"b", b"2");
        assert!(!buffer.is_full());
        buffer.push(b"a", b"1");
        buffer.push(b"c", b"");
        assert!(buffer.is_full());
        let mut run = Vec::new();
        buffer.write_sorted(&mut run).unwrap();
        assert!(buffer.is_empty());
        assert_eq!(buffer.bytes(), 0);
        let read: Vec<Entry> = RunReader::new(&run[..]).map(Result::unwrap).collect();
        let keys: Vec<&[u8]> = read.iter().map(|e| e.key.as_slice()).collect();
        assert_eq!(keys, [&b"a"[..], b"b", b"c"]);
        assert_eq!(read[0].value, b"1");
        assert_eq!(read[2].value, b"");
    }

    #[test]
    fn a_run_cut_short_is_an_error_not_an_end() {
        let mut buffer = RunBuffer::new(1 << 20);
        buffer.push(b"key", b"value");
        let mut run = Vec::new();
        buffer.write_sorted(&mut run).unwrap();
        run.truncate(run.len() - 2);
        let mut reader = RunReader::new(&run[..]);
        assert_eq!(
            reader.next_entry().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn equal_keys_come_out_in_the_order_they_were_pushed_across_runs() {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..50u8).map(|i| (vec![i % 3], vec![i])).collect();
        // A budget of about two entries: 25 runs.
        let runs = runs_of(&entries, 2 * (ENTRY_OVERHEAD + 2));
        assert!(runs.len() > 10);
        let merged: Vec<Entry> = Merge::new(runs.iter().map(|r| &r[..]).collect())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut expected = entries.clone();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        let got: Vec<(Vec<u8>, Vec<u8>)> = merged.into_iter().map(|e| (e.key, e.value)).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn fields_read_back_what_was_put_and_refuse_a_short_value() {
        let mut v = Vec::new();
        v.extend_from_slice(&7u16.to_be_bytes());
        v.extend_from_slice(&300u32.to_be_bytes());
        v.extend_from_slice(&u64::MAX.to_be_bytes());
        put_bytes16(&mut v, "é\u{1F600}".as_bytes());
        let mut f = Fields::new(&v);
        assert_eq!(f.u16(), Ok(7));
        assert_eq!(f.u32(), Ok(300));
        assert_eq!(f.u64(), Ok(u64::MAX));
        assert_eq!(f.bytes16(), Ok("é\u{1F600}".as_bytes()));
        assert!(f.is_empty());
        assert_eq!(f.u16(), Err(Damaged));
    }

    proptest! {
        #[test]
        fn the_merge_of_the_runs_is_the_stable_sort_of_the_input(
            entries in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..6), proptest::collection::vec(any::<u8>(), 0..6)),
                0..200),
            limit in 1usize..400,
        ) {
            let runs = runs_of(&entries, limit);
            let merged: Vec<(Vec<u8>, Vec<u8>)> = Merge::new(runs.iter().map(|r| &r[..]).collect())
                .unwrap()
                .map(|e| e.map(|e| (e.key, e.value)))
                .collect::<io::Result<_>>()
                .unwrap();
            let mut expected = entries.clone();
            expected.sort_by(|a, b| a.0.cmp(&b.0));
            prop_assert_eq!(merged, expected);
        }
    }
}
