//! The fault suite's writer: a seeded, mixed stream of transactions on
//! `pg2dns.rr`, committed by a task with its own connection while the test
//! breaks things around pg2dns.
//!
//! The mix covers what a replay must get right: inserts, rdata and TTL
//! updates, deletes, transactions touching both the forward and the reverse
//! zone, TXT values of several kB in many character-strings, rolled-back
//! transactions, savepoints undone with `ROLLBACK TO`, and (when asked)
//! 5,000-row transactions. Every statement keeps the table publishable: all
//! owners of a type keep one TTL per RRset (only single-record A RRsets
//! change TTL), no CNAME, every name fully qualified, so DNS must end up
//! holding exactly the table.
//!
//! The RNG is seeded (`PG2DNS_FAULTS_SEED` replays a run); the seed is
//! printed so a failure can be reproduced.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tokio::task::JoinHandle;

use crate::harness::wait::wait_until_every;
use crate::harness::Check;

/// The environment variable that fixes the seed of a run.
pub const SEED_VAR: &str = "PG2DNS_FAULTS_SEED";

/// The seed for this test: `PG2DNS_FAULTS_SEED` if set, else the clock.
/// Printed, so that a failing run can be replayed.
pub fn seed(test: &str) -> Result<u64> {
    let seed = match std::env::var(SEED_VAR) {
        Ok(text) => text
            .parse()
            .with_context(|| format!("{SEED_VAR}={text:?} is not a number"))?,
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    eprintln!("{test}: seed {seed} (replay with {SEED_VAR}={seed})");
    Ok(seed)
}

/// SplitMix64: small, seedable, good enough to pick workloads and delays.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose whole sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    /// True once in `n` draws on average.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// Which kinds of transaction the workload may write.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Occasional 5,000-row inserts, updates and deletes.
    pub bulk: bool,
}

/// Rows of one bulk transaction.
pub const BULK_ROWS: u32 = 5_000;

/// The forward zone's suffix in owner names.
const FWD: &str = "example.test.";
/// The reverse zone's suffix in owner names.
const REV: &str = "2.0.192.in-addr.arpa.";

/// A generator of SQL transactions (each a complete `BEGIN … COMMIT` or
/// `… ROLLBACK` text).
#[derive(Debug)]
pub struct Workload {
    rng: Rng,
    mix: Mix,
    /// Forward owners `w0` … `w{next-1}` were handed out (some since deleted).
    next: u64,
    /// TXT owners `t0` … `t{txts-1}` exist (never deleted).
    txts: u64,
    /// Bulk batches inserted and not yet deleted, oldest first.
    bulk_live: VecDeque<u64>,
    bulk_next: u64,
    count: u64,
    bulk_count: u64,
}

impl Workload {
    /// A workload whose transactions are fixed by `seed`.
    pub fn new(seed: u64, mix: Mix) -> Workload {
        Workload {
            rng: Rng::new(seed),
            mix,
            next: 0,
            txts: 0,
            bulk_live: VecDeque::new(),
            bulk_next: 0,
            count: 0,
            bulk_count: 0,
        }
    }

    /// The next transaction's SQL.
    pub fn transaction(&mut self) -> String {
        self.count += 1;
        if self.count == 1 {
            // Every run holds both zones and a large TXT from the start.
            return format!(
                "BEGIN; {} {} {} COMMIT;",
                self.insert_host(),
                self.insert_host(),
                self.insert_txt()
            );
        }
        if self.mix.bulk && (self.count % 200 == 50 || self.rng.one_in(150)) {
            self.bulk_count += 1;
            return self.bulk();
        }
        let mut sql = String::from("BEGIN; ");
        let end = match self.rng.below(100) {
            0..=29 => {
                for _ in 0..self.rng.between(1, 3) {
                    sql.push_str(&self.insert_host());
                }
                "COMMIT;"
            }
            30..=44 => {
                sql.push_str(&self.update_host());
                if self.rng.one_in(2) {
                    sql.push_str(&self.insert_host());
                }
                "COMMIT;"
            }
            45..=59 => {
                sql.push_str(&self.delete_host());
                sql.push_str(&self.update_host());
                "COMMIT;"
            }
            60..=69 => {
                if self.txts > 0 && self.rng.one_in(2) {
                    sql.push_str(&self.update_txt());
                } else {
                    sql.push_str(&self.insert_txt());
                }
                sql.push_str(&self.insert_host());
                "COMMIT;"
            }
            70..=79 => {
                // Undone entirely: nothing of it may reach DNS.
                sql.push_str(&self.insert_host());
                sql.push_str(&self.delete_host());
                sql.push_str(&self.update_txt());
                "ROLLBACK;"
            }
            _ => {
                // Half kept, half undone with ROLLBACK TO.
                sql.push_str(&self.insert_host());
                sql.push_str("SAVEPOINT s1; ");
                sql.push_str(&self.insert_host());
                sql.push_str(&self.delete_host());
                sql.push_str(&self.update_txt());
                sql.push_str("ROLLBACK TO SAVEPOINT s1; ");
                sql.push_str(&self.update_host());
                "COMMIT;"
            }
        };
        sql.push_str(end);
        sql
    }

    /// A new forward owner with an A record and, every other time, its PTR
    /// in the reverse zone (a transaction touching both zones).
    fn insert_host(&mut self) -> String {
        let k = self.next;
        self.next += 1;
        let mut sql = format!(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('w{k}.{FWD}', 300, 'A', '10.{}.{}.{}');",
            (k >> 16) & 255,
            (k >> 8) & 255,
            k & 255
        );
        if k.is_multiple_of(2) {
            sql.push_str(&format!(
                " INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('{}.{REV}', 300, 'PTR', 'w{k}.{FWD}');",
                k % 256
            ));
        }
        sql.push(' ');
        sql
    }

    /// An rdata (and sometimes TTL) change of an earlier host's A record,
    /// and of its PTR's target case.
    fn update_host(&mut self) -> String {
        let k = self.rng.below(self.next.max(1));
        let ttl = if self.rng.one_in(3) {
            format!(", ttl = {}", self.rng.between(60, 900))
        } else {
            String::new()
        };
        format!(
            "UPDATE pg2dns.rr SET rdata = '172.16.{}.{}'{ttl} WHERE owner = 'w{k}.{FWD}' AND type = 'A'; ",
            self.rng.below(256),
            self.rng.below(256)
        )
    }

    /// Deletes an earlier host with its PTR (both zones).
    fn delete_host(&mut self) -> String {
        let k = self.rng.below(self.next.max(1));
        format!(
            "DELETE FROM pg2dns.rr WHERE owner = 'w{k}.{FWD}' OR (type = 'PTR' AND rdata = 'w{k}.{FWD}'); "
        )
    }

    fn insert_txt(&mut self) -> String {
        let k = self.txts;
        self.txts += 1;
        let value = self.big_txt(k);
        format!("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('t{k}.{FWD}', 300, 'TXT', '{value}'); ")
    }

    fn update_txt(&mut self) -> String {
        let k = self.rng.below(self.txts.max(1));
        let value = self.big_txt(k);
        format!(
            "UPDATE pg2dns.rr SET rdata = '{value}' WHERE owner = 't{k}.{FWD}' AND type = 'TXT'; "
        )
    }

    /// A TXT value of 3–6 kB in 12–24 character-strings of 250 bytes. The
    /// filler repeats, so PostgreSQL compresses it below the btree limit of
    /// the unique index.
    fn big_txt(&mut self, k: u64) -> String {
        let strings = self.rng.between(12, 24);
        let version = self.rng.next_u64() % 1_000_000;
        let filler = "abcdefghijklmnopqrstuvwxyz0123456789";
        (0..strings)
            .map(|j| {
                let head = format!("t{k}-v{version}-s{j}-");
                let body: String = filler.chars().cycle().take(250 - head.len()).collect();
                format!("\"{head}{body}\"")
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A 5,000-row transaction: a new batch of hosts, an rdata change of
    /// every row of a live batch, or the deletion of the oldest batch.
    fn bulk(&mut self) -> String {
        let choice = self.rng.below(3);
        if self.bulk_live.len() >= 2 || (choice == 0 && !self.bulk_live.is_empty()) {
            let n = self.bulk_live.pop_front().unwrap_or_default();
            return format!("BEGIN; DELETE FROM pg2dns.rr WHERE owner LIKE 'b{n}-%'; COMMIT;");
        }
        if choice == 1 {
            if let Some(&n) = self.bulk_live.back() {
                let octet = self.rng.below(256);
                return format!(
                    "BEGIN; UPDATE pg2dns.rr SET rdata = '10.{octet}.' || ((id / 256) % 256) || '.' || (id % 256)
                     WHERE owner LIKE 'b{n}-%'; COMMIT;"
                );
            }
        }
        let n = self.bulk_next;
        self.bulk_next += 1;
        self.bulk_live.push_back(n);
        format!(
            "BEGIN; INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             SELECT 'b{n}-' || g || '.{FWD}', 300, 'A', '10.250.' || (g / 256) || '.' || (g % 256)
             FROM generate_series(1, {BULK_ROWS}) g; COMMIT;"
        )
    }
}

/// What the writer did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Report {
    /// Transactions sent (committed or rolled back on purpose).
    pub transactions: u64,
    /// Of those, 5,000-row transactions.
    pub bulk: u64,
    /// Times the connection was lost and made again.
    pub reconnects: u64,
}

/// A task committing a [`Workload`] until stopped.
pub struct Writer {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    task: JoinHandle<Result<Report>>,
}

impl Writer {
    /// Starts writing to the database at `url`, 2–20 ms between
    /// transactions. With `reconnect`, a lost connection (PostgreSQL
    /// restarting) is made again; otherwise any error ends the writer.
    pub fn spawn(url: String, mut workload: Workload, reconnect: bool) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (stop2, done2) = (stop.clone(), done.clone());
        let task = tokio::spawn(async move {
            let mut report = Report::default();
            let mut db = connect(&url).await?;
            let mut pause = Rng::new(workload.rng.next_u64());
            while !stop2.load(Ordering::Relaxed) {
                let sql = workload.transaction();
                match db.batch_execute(&sql).await {
                    Ok(()) => {
                        report.transactions += 1;
                        done2.store(report.transactions, Ordering::Relaxed);
                    }
                    Err(e)
                        if reconnect && (db.is_closed() || e.code().is_some_and(is_shutdown)) =>
                    {
                        report.reconnects += 1;
                        db = reconnect_until(&url, &stop2).await?;
                    }
                    Err(e) => return Err(e).with_context(|| format!("the writer's SQL: {sql}")),
                }
                tokio::time::sleep(Duration::from_millis(pause.between(2, 20))).await;
            }
            report.bulk = workload.bulk_count;
            Ok(report)
        });
        Writer { stop, done, task }
    }

    /// Starts committing `sql(1)`, `sql(2)`, … in order on one connection
    /// to `url` (each call's SQL is one implicit transaction), `pause`
    /// between them (none if zero), until stopped. Any error ends the writer.
    pub fn sequence(
        url: String,
        pause: Duration,
        mut sql: impl FnMut(u64) -> String + Send + 'static,
    ) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (stop2, done2) = (stop.clone(), done.clone());
        let task = tokio::spawn(async move {
            let mut report = Report::default();
            let db = connect(&url).await?;
            while !stop2.load(Ordering::Relaxed) {
                let sql = sql(report.transactions + 1);
                db.batch_execute(&sql)
                    .await
                    .with_context(|| format!("the writer's SQL: {sql}"))?;
                report.transactions += 1;
                done2.store(report.transactions, Ordering::Relaxed);
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            Ok(report)
        });
        Writer { stop, done, task }
    }

    /// Transactions sent so far.
    pub fn transactions(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits until the writer has sent `n` transactions in all.
    pub async fn wait_for(&self, n: u64, timeout: Duration) -> Result<()> {
        let what = format!("the writer has sent {n} transactions");
        wait_until_every(Duration::from_millis(20), timeout, &what, || async {
            let sent = self.transactions();
            if sent >= n {
                return Ok(Check::Done(()));
            }
            if self.task.is_finished() {
                bail!("the writer stopped after {sent} transactions");
            }
            Ok(Check::NotYet(format!("{sent} transactions")))
        })
        .await
    }

    /// Stops after the transaction in progress and returns the report.
    pub async fn stop(self) -> Result<Report> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.context("the writer task")?
    }
}

fn is_shutdown(code: &tokio_postgres::error::SqlState) -> bool {
    use tokio_postgres::error::SqlState;
    [
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
    ]
    .contains(code)
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn reconnect_until(url: &str, stop: &AtomicBool) -> Result<tokio_postgres::Client> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match connect(url).await {
            Ok(db) => return Ok(db),
            Err(e) if Instant::now() > deadline || stop.load(Ordering::Relaxed) => {
                return Err(e).context("the writer could not reconnect within 60 s")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
