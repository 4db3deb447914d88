//! Sorted runs on disk: the I/O half of [`pg2dns_decoder::runs`].
//!
//! A [`Sorter`] buffers entries up to its budget, then writes the buffer
//! sorted as a run file in a private temporary directory ([`SpillDir`],
//! mode 0700, removed with everything in it when the last user drops it);
//! [`Sorted::merge`] reads the runs back through the k-way merge. A sorter
//! whose entries never filled its buffer writes nothing: its one run stays
//! in memory.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pg2dns_decoder::runs::{Merge, RunBuffer};

/// Test hook: the budget of every sorter, in bytes, instead of the
/// configuration's (lets a test force many runs on a small zone).
pub const SPILL_BYTES_ENV: &str = "PG2DNS_TEST_SPILL_BYTES";

/// A private temporary directory for runs, removed when dropped.
#[derive(Debug)]
pub struct SpillDir {
    path: PathBuf,
    next: AtomicUsize,
    runs: AtomicUsize,
}

impl SpillDir {
    /// Creates `pg2dns-reconcile-<pid>-<n>` under `parent` (the system's
    /// temporary directory when `None`), readable by this user only.
    pub fn create(parent: Option<&Path>) -> io::Result<Arc<SpillDir>> {
        use std::os::unix::fs::DirBuilderExt;
        static DIRS: AtomicUsize = AtomicUsize::new(0);
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        remove_stale(&parent);
        let path = parent.join(format!(
            "pg2dns-reconcile-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Arc::new(SpillDir {
            path,
            next: AtomicUsize::new(0),
            runs: AtomicUsize::new(0),
        }))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new file name in the directory.
    pub fn file(&self, what: &str) -> PathBuf {
        self.path.join(format!(
            "{what}-{}",
            self.next.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Runs written to disk so far (for the report and the tests).
    pub fn runs_written(&self) -> usize {
        self.runs.load(Ordering::Relaxed)
    }
}

/// Removes the spill directories of runs that can no longer remove their
/// own (a reconcile killed with SIGKILL, or by the OOM killer): those named
/// `pg2dns-reconcile-<pid>-<n>`, owned by this user, whose process is gone.
fn remove_stale(parent: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    // This user: the owner of this process's /proc entry.
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix("pg2dns-reconcile-"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let ours = entry
            .metadata()
            .is_ok_and(|m| m.is_dir() && Some(m.uid()) == me);
        let gone = !Path::new(&format!("/proc/{pid}")).exists();
        if ours && gone && pid != std::process::id() {
            tracing::info!(dir = %entry.path().display(), "removing the spill directory of a reconcile that ended without removing it");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for SpillDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The budget of one sorter: `share` of `[reconcile] memory_mib`, or the
/// test hook's bytes.
pub fn budget(memory_mib: u64, share: f64) -> usize {
    if let Some(bytes) = std::env::var(SPILL_BYTES_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        return bytes.max(1);
    }
    ((memory_mib as f64 * share) * 1024.0 * 1024.0) as usize
}

/// Buffers entries and spills them in sorted runs.
///
/// A full buffer is sorted and written by its own thread while the caller
/// fills the other one: the thread that feeds the sorter (reading the
/// tables, or a transfer, on the runtime's one thread) is never held by a
/// sort. A DNS server cuts a transfer whose reader stalls (Knot's
/// `tcp-io-timeout`, 500 ms by default), and a run's sort took longer
/// than that on a loaded machine. The two buffers share the budget, so the
/// memory is what it was with one.
#[derive(Debug)]
pub struct Sorter {
    dir: Arc<SpillDir>,
    what: &'static str,
    buffer: RunBuffer,
    /// The run being sorted and written, which gives its buffer back.
    writing: Option<std::thread::JoinHandle<io::Result<RunBuffer>>>,
    /// Half the budget: what each of the two buffers holds.
    half: usize,
    runs: Vec<PathBuf>,
    entries: usize,
}

impl Sorter {
    /// A sorter of `budget` bytes spilling into `dir` (files named `what-N`).
    pub fn new(dir: Arc<SpillDir>, what: &'static str, budget: usize) -> Sorter {
        let half = (budget / 2).max(1);
        Sorter {
            dir,
            what,
            buffer: RunBuffer::new(half),
            writing: None,
            half,
            runs: Vec::new(),
            entries: 0,
        }
    }

    /// Adds an entry; hands the buffer to the sort thread when it is full.
    pub fn push(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.buffer.push(key, value);
        self.entries += 1;
        if self.buffer.is_full() {
            self.spill()?;
        }
        Ok(())
    }

    /// Waits for the run being written, and takes its buffer back.
    fn written(&mut self) -> io::Result<Option<RunBuffer>> {
        match self.writing.take() {
            None => Ok(None),
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the sort thread panicked")))
                .map(Some),
        }
    }

    /// Sorts and writes the buffer as a run on the sort thread; the caller
    /// goes on filling the other buffer (waiting only if the run before is
    /// still being written).
    fn spill(&mut self) -> io::Result<()> {
        let spare = match self.written()? {
            Some(buffer) => buffer,
            None => RunBuffer::new(self.half),
        };
        let mut full = std::mem::replace(&mut self.buffer, spare);
        let path = self.dir.file(self.what);
        self.runs.push(path.clone());
        self.dir.runs.fetch_add(1, Ordering::Relaxed);
        // The thread keeps the directory alive until its run is written.
        let dir = Arc::clone(&self.dir);
        let thread = std::thread::Builder::new()
            .name("pg2dns-sort".into())
            .spawn(move || {
                let _dir = dir;
                let mut out = BufWriter::with_capacity(1 << 16, File::create(&path)?);
                full.write_sorted(&mut out)?;
                out.flush()?;
                Ok(full)
            })?;
        self.writing = Some(thread);
        Ok(())
    }

    /// Entries pushed.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Every entry, ready to be merged.
    pub fn finish(mut self) -> io::Result<Sorted> {
        let memory = if self.runs.is_empty() {
            let mut run = Vec::new();
            self.buffer.write_sorted(&mut run)?;
            Some(Arc::new(run))
        } else {
            if !self.buffer.is_empty() {
                self.spill()?;
            }
            self.written()?;
            None
        };
        Ok(Sorted {
            _dir: Arc::clone(&self.dir),
            runs: std::mem::take(&mut self.runs),
            memory,
            entries: self.entries,
        })
    }
}

impl Drop for Sorter {
    fn drop(&mut self) {
        // A sorter given up on (an error) waits for its run, so that no
        // thread writes into the directory after the caller moved on.
        let _ = self.written();
    }
}

/// Entries sorted in runs, to be read back in key order (as often as
/// needed).
#[derive(Debug, Clone)]
pub struct Sorted {
    _dir: Arc<SpillDir>,
    runs: Vec<PathBuf>,
    memory: Option<Arc<Vec<u8>>>,
    entries: usize,
}

/// A run read back: from its file or from memory.
pub type RunInput = Box<dyn BufRead + Send>;

impl Sorted {
    /// Every entry in key order.
    pub fn merge(&self) -> io::Result<Merge<RunInput>> {
        let mut inputs: Vec<RunInput> = Vec::new();
        if let Some(run) = &self.memory {
            inputs.push(Box::new(io::Cursor::new(SharedBytes(Arc::clone(run)))));
        }
        for path in &self.runs {
            // Small buffers: one per run is held at once.
            inputs.push(Box::new(BufReader::with_capacity(
                32 << 10,
                File::open(path)?,
            )));
        }
        Merge::new(inputs)
    }

    /// Entries in all runs.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

/// A shared in-memory run (a cursor needs `AsRef<[u8]>`).
#[derive(Debug)]
struct SharedBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sorter_past_its_budget_spills_runs_that_merge_back_in_order_and_go_with_the_dir() {
        let dir = SpillDir::create(None).unwrap();
        let path = dir.path().to_path_buf();
        let mut sorter = Sorter::new(Arc::clone(&dir), "t", 200);
        for i in (0..1000u32).rev() {
            sorter
                .push(&i.to_be_bytes(), format!("v{i}").as_bytes())
                .unwrap();
        }
        let sorted = sorter.finish().unwrap();
        assert!(dir.runs_written() > 10, "{} runs", dir.runs_written());
        let keys: Vec<u32> = sorted
            .merge()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                u32::from_be_bytes(e.key.try_into().unwrap())
            })
            .collect();
        assert_eq!(keys, (0..1000).collect::<Vec<_>>());
        // Read twice: the runs stay until the last user is gone.
        assert_eq!(sorted.merge().unwrap().count(), 1000);
        drop(dir);
        assert!(path.exists());
        drop(sorted);
        assert!(!path.exists(), "the spill directory is removed");
    }

    #[test]
    fn a_dead_runs_spill_directory_is_removed_and_a_live_ones_kept() {
        let parent = std::env::temp_dir().join(format!("pg2dns-spill-test-{}", std::process::id()));
        std::fs::create_dir_all(&parent).unwrap();
        // PID 2^22 + 1 is above Linux's pid_max: never a live process.
        let dead = parent.join("pg2dns-reconcile-4194305-0");
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::write(dead.join("parts-0"), b"x").unwrap();
        let other = parent.join("not-ours");
        std::fs::create_dir_all(&other).unwrap();
        let live = SpillDir::create(Some(&parent)).unwrap();
        assert!(!dead.exists(), "the dead run's directory is removed");
        assert!(other.exists(), "other directories are left alone");
        let again = SpillDir::create(Some(&parent)).unwrap();
        assert!(live.path().exists(), "a live run's directory is kept");
        drop((live, again));
        std::fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn a_run_its_thread_cannot_write_is_an_error_not_a_missing_run() {
        let dir = SpillDir::create(None).unwrap();
        let mut sorter = Sorter::new(Arc::clone(&dir), "t", 200);
        // The directory goes: the sort thread cannot create its run file.
        std::fs::remove_dir_all(dir.path()).unwrap();
        let pushed: io::Result<()> =
            (0..1000u32).try_for_each(|i| sorter.push(&i.to_be_bytes(), b"value"));
        let err = pushed
            .and_then(|()| sorter.finish().map(|_| ()))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }

    #[test]
    fn a_sorter_within_its_budget_writes_no_file() {
        let dir = SpillDir::create(None).unwrap();
        let mut sorter = Sorter::new(Arc::clone(&dir), "t", 1 << 20);
        sorter.push(b"b", b"").unwrap();
        sorter.push(b"a", b"").unwrap();
        let sorted = sorter.finish().unwrap();
        assert_eq!(dir.runs_written(), 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let keys: Vec<Vec<u8>> = sorted.merge().unwrap().map(|e| e.unwrap().key).collect();
        assert_eq!(keys, [b"a".to_vec(), b"b".to_vec()]);
    }
}
