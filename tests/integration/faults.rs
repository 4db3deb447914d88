//! The fault suite: pg2dns crashed at every failpoint, SIGKILLed at random
//! moments, its DNS server stopped, its walsender terminated, PostgreSQL
//! restarted, all while a writer commits a mixed workload
//! ([`workload`]). Each scenario ends the same way: after the last restart,
//! an AXFR of every zone equals `pg2dns.rr`. This is the README's promise
//! ("you can stop it, kill it or restart it, or take the DNS server or
//! PostgreSQL down, and it resumes exactly where it left off") checked
//! under load rather than on a hand-picked transaction.
//!
//! The last test checks the other promise a crash tends to break: no TSIG
//! secret in anything pg2dns prints, even at `RUST_LOG=trace`.

pub(crate) mod workload;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::harness::stack::{ZoneRecords, FORWARD, REVERSE};
use crate::harness::wait::wait_until_every;
use crate::harness::{wait_until, Check, Primary, Stack, DNS_DEADLINE, RECOVERY_DEADLINE};
use workload::{Mix, Report, Rng, Workload, Writer};

const FAILPOINT: &str = "PG2DNS_FAILPOINT";

/// Transactions the writer commits after the restart that follows a fault,
/// so that the replay and new changes interleave.
const AFTER_RESTART: u64 = 40;

// ---------------------------------------------------------------- failpoints

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_before_a_dns_send_under_a_mixed_workload_loses_nothing() -> Result<()> {
    abort_at_failpoint_under_a_mixed_workload("before-dns-send").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_after_a_dns_send_before_its_answer_under_a_mixed_workload_loses_nothing(
) -> Result<()> {
    abort_at_failpoint_under_a_mixed_workload("after-dns-send").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_after_the_dns_acknowledgement_before_the_checkpoint_under_a_mixed_workload_loses_nothing(
) -> Result<()> {
    abort_at_failpoint_under_a_mixed_workload("after-dns-ack").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_after_the_checkpoint_before_the_slot_confirmation_under_a_mixed_workload_loses_nothing(
) -> Result<()> {
    abort_at_failpoint_under_a_mixed_workload("after-state-commit").await
}

/// Starts pg2dns with `point` armed while the writer commits, checks that it
/// aborted there, restarts it unarmed, lets the writer go on, then compares
/// every zone with the table.
async fn abort_at_failpoint_under_a_mixed_workload(point: &str) -> Result<()> {
    let seed = workload::seed(point)?;
    let stack = Stack::start(&format!("faults-{point}"), Primary::Bind).await?;
    let writer = Writer::spawn(
        stack.pg.url(),
        Workload::new(seed, Mix { bulk: false }),
        false,
    );
    writer.wait_for(5, DNS_DEADLINE).await?;

    let mut crashing = stack.run_with(&[(FAILPOINT, point)])?;
    let status = crashing.wait_exit(DNS_DEADLINE).await?;
    ensure!(
        !status.success(),
        "the failpoint {point} aborts pg2dns, yet it exited with {status}"
    );
    let log = crashing.log();
    ensure!(
        log.contains(&format!("failpoint {point} reached")),
        "pg2dns exited ({status}) but not at the failpoint {point}; it wrote:\n{log}"
    );

    let mut pg2dns = stack.run()?;
    writer
        .wait_for(writer.transactions() + AFTER_RESTART, DNS_DEADLINE)
        .await?;
    let report = writer.stop().await?;
    let dns = stack
        .wait_until_dns_matches_table(RECOVERY_DEADLINE)
        .await?;
    ensure_substantial(&dns, &report)?;
    pg2dns.assert_running()
}

// ---------------------------------------------------------------- SIGKILL

/// SIGKILLs of pg2dns in the random-kill test.
const KILLS: u32 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_sigkills_at_random_moments_under_a_mixed_workload_lose_nothing() -> Result<()> {
    let started = Instant::now();
    let seed = workload::seed("random kills")?;
    let stack = Stack::start("faults-kills", Primary::Bind).await?;
    // The bulk deletes empty whole batches of hosts on purpose: no mass
    // delete is held here (guard::* tests the guard).
    stack.append_config("[guard]\nmax_delete_share = 1.0\n")?;
    let writer = Writer::spawn(
        stack.pg.url(),
        Workload::new(seed, Mix { bulk: true }),
        false,
    );
    let mut moments = Rng::new(seed.rotate_left(17));
    let mut pg2dns = stack.run()?;
    for kill in 1..=KILLS {
        // The random delay is the point: a kill lands anywhere in startup,
        // streaming, a 5,000-row transaction or a checkpoint.
        tokio::time::sleep(Duration::from_millis(moments.between(100, 600))).await;
        pg2dns
            .assert_running()
            .with_context(|| format!("before kill {kill}"))?;
        pg2dns.kill()?;
        pg2dns = stack.run()?;
    }
    pg2dns.kill()?;
    let report = writer.stop().await?;
    ensure!(
        report.bulk >= 1,
        "no 5,000-row transaction in this run: {report:?}"
    );

    // The killed runs made progress between kills, or this test would prove
    // only that one clean run catches up.
    let partial = stack.dns().await?;
    ensure!(
        !partial[FORWARD].is_empty(),
        "after {KILLS} kills DNS holds nothing: no run got anywhere"
    );

    let mut last = stack.run()?;
    let dns = stack
        .wait_until_dns_matches_table(RECOVERY_DEADLINE)
        .await?;
    ensure_substantial(&dns, &report)?;
    eprintln!(
        "random kills: seed {seed}, {KILLS} kills, {} transactions ({} of 5,000 rows), {} records in DNS before the last run, {} after, {:?}",
        report.transactions,
        report.bulk,
        partial.values().map(Vec::len).sum::<usize>(),
        dns.values().map(Vec::len).sum::<usize>(),
        started.elapsed()
    );
    last.assert_running()
}

// ---------------------------------------------------------------- the other side

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_stopped_during_a_large_transaction_and_started_again_loses_nothing() -> Result<()> {
    let seed = workload::seed("bind stop")?;
    let mut stack = Stack::start("faults-bind", Primary::Bind).await?;
    let writer = Writer::spawn(
        stack.pg.url(),
        Workload::new(seed, Mix { bulk: false }),
        false,
    );
    let mut pg2dns = stack.run()?;
    writer.wait_for(20, DNS_DEADLINE).await?;

    // 5,000 TXT rows, sent as several UPDATEs: stop BIND as soon as the
    // first of them shows, while the rest are in flight or queued.
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             SELECT 'm' || g || '.example.test.', 300, 'TXT',
                    '\"large-transaction-row-' || g || '-' || repeat('x', 120) || '\"'
             FROM generate_series(1, 5000) g",
        )
        .await?;
    wait_until_every(
        Duration::from_millis(10),
        DNS_DEADLINE,
        "a row of the large transaction reaches DNS",
        || async {
            Ok(match large_rows(&stack.dns().await?) {
                0 => Check::NotYet("none of its rows".to_string()),
                _ => Check::Done(()),
            })
        },
    )
    .await?;
    stack.server_mut(Primary::Bind)?.stop().await?;

    // Writes go on while BIND is down; pg2dns retries and must not halt.
    writer
        .wait_for(writer.transactions() + AFTER_RESTART, DNS_DEADLINE)
        .await?;
    pg2dns.assert_running()?;
    stack.server_mut(Primary::Bind)?.start_again().await?;
    let at_restart = large_rows(&stack.dns().await?);
    eprintln!(
        "bind stop: {at_restart} of 5000 rows of the large transaction in DNS when BIND came back"
    );

    writer
        .wait_for(writer.transactions() + AFTER_RESTART, DNS_DEADLINE)
        .await?;
    let report = writer.stop().await?;
    let dns = stack
        .wait_until_dns_matches_table(RECOVERY_DEADLINE)
        .await?;
    ensure_substantial(&dns, &report)?;
    ensure!(
        large_rows(&dns) == 5000,
        "the large transaction is in DNS whole"
    );
    pg2dns.assert_running()
}

/// Rows of the large transaction (`m<N>.example.test.`) in `dns`.
fn large_rows(dns: &ZoneRecords) -> usize {
    dns[FORWARD]
        .iter()
        .filter(|r| r.owner.starts_with('m') && r.rtype == "TXT")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_the_walsender_while_writes_flow_loses_nothing() -> Result<()> {
    let seed = workload::seed("walsender")?;
    let stack = Stack::start("faults-walsender", Primary::Bind).await?;
    let writer = Writer::spawn(
        stack.pg.url(),
        Workload::new(seed, Mix { bulk: false }),
        false,
    );
    let mut pg2dns = stack.run()?;
    for round in 1..=5 {
        writer
            .wait_for(writer.transactions() + 20, DNS_DEADLINE)
            .await?;
        // pg2dns reconnects after each termination: wait for its walsender.
        wait_until(
            RECOVERY_DEADLINE,
            &format!("round {round}: pg2dns has a walsender to terminate"),
            || async {
                let terminated: i64 = stack
                    .db
                    .query_one(
                        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) AS done
                         FROM pg_stat_replication WHERE application_name = 'pg2dns') t WHERE done",
                        &[],
                    )
                    .await?
                    .get(0);
                Ok(if terminated > 0 {
                    Check::Done(())
                } else {
                    Check::NotYet("no walsender of pg2dns".to_string())
                })
            },
        )
        .await?;
    }
    writer
        .wait_for(writer.transactions() + AFTER_RESTART, DNS_DEADLINE)
        .await?;
    let report = writer.stop().await?;
    let dns = stack
        .wait_until_dns_matches_table(RECOVERY_DEADLINE)
        .await?;
    ensure_substantial(&dns, &report)?;
    pg2dns.assert_running()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_fast_restarts_while_writes_flow_lose_nothing() -> Result<()> {
    let seed = workload::seed("postgres restart")?;
    let mut stack = Stack::start("faults-pg-restart", Primary::Bind).await?;
    let writer = Writer::spawn(
        stack.pg.url(),
        Workload::new(seed, Mix { bulk: false }),
        true,
    );
    let mut pg2dns = stack.run()?;
    for _ in 0..2 {
        writer
            .wait_for(writer.transactions() + 30, RECOVERY_DEADLINE)
            .await?;
        stack.restart_postgres().await?;
    }
    writer
        .wait_for(writer.transactions() + AFTER_RESTART, RECOVERY_DEADLINE)
        .await?;
    let report = writer.stop().await?;
    ensure!(
        report.reconnects >= 1,
        "the restarts never cut the writer's connection: {report:?}"
    );
    let dns = stack
        .wait_until_dns_matches_table(RECOVERY_DEADLINE)
        .await?;
    ensure_substantial(&dns, &report)?;
    pg2dns.assert_running()
}

/// pg2dns commits its checkpoints without waiting for their WAL flush and
/// confirms the slot only once the flush has passed them. PostgreSQL
/// crashed (`-m immediate`) at random moments within the checkpoint's group
/// time and the WAL writer's delay after each change reached DNS, with
/// nothing else committing meanwhile: every restart recovers, pg2dns never
/// halts on a slot ahead of its progress, and DNS ends equal to the table.
/// Each round updates, inserts and deletes. (An immediate stop keeps the WAL
/// the server already wrote, so it rarely loses a checkpoint; the rule that
/// the slot confirms only behind a flushed checkpoint is proven by
/// `pg2dns_decoder::confirm`'s tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_crashes_right_after_checkpoints_lose_nothing() -> Result<()> {
    let seed = workload::seed("postgres crash")?;
    let mut rng = Rng::new(seed);
    let mut stack = Stack::start("faults-pg-crash", Primary::Bind).await?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('moving.example.test.', 300, 'A', '192.0.2.1'),
               ('moving.example.test.', 300, 'TXT', '\"round 0\"')",
        )
        .await?;
    let mut pg2dns = stack.run()?;
    for round in 1..=6u64 {
        stack
            .exec(&format!(
                "BEGIN;
                 UPDATE pg2dns.rr SET rdata = '192.0.2.{}' WHERE owner = 'moving.example.test.' AND type = 'A';
                 UPDATE pg2dns.rr SET rdata = '\"round {round}\"' WHERE owner = 'moving.example.test.' AND type = 'TXT';
                 INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('r{round}.example.test.', 300, 'AAAA', '2001:db8::{round}');
                 DELETE FROM pg2dns.rr WHERE owner = 'r{}.example.test.';
                 COMMIT;",
                round + 1,
                round.saturating_sub(2)
            ))
            .await?;
        stack
            .wait_until_dns_matches_table(RECOVERY_DEADLINE)
            .await
            .with_context(|| format!("round {round}, before the crash"))?;
        let delay = rng.below(350);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        stack
            .crash_postgres()
            .await
            .with_context(|| format!("round {round}: crashing {delay} ms after DNS had it"))?;
    }
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('after.example.test.', 300, 'A', '192.0.2.200')",
        )
        .await?;
    let dns = stack
        .wait_until_dns_matches_table(RECOVERY_DEADLINE)
        .await?;
    ensure!(
        dns[FORWARD]
            .iter()
            .any(|r| r.owner == "after.example.test."),
        "the change after the last crash is in DNS: {dns:?}"
    );
    // Every restart after a crash passed the check of the slot against the
    // durable progress: still running, not halted on a gap.
    pg2dns.assert_running()
}

/// The comparison proves something only if the table is not trivial: both
/// zones hold records, including a TXT of several kB, after a workload of
/// some length.
fn ensure_substantial(dns: &ZoneRecords, report: &Report) -> Result<()> {
    ensure!(
        report.transactions >= 40,
        "the writer sent only {} transactions",
        report.transactions
    );
    ensure!(
        dns[FORWARD].len() >= 20 && !dns[REVERSE].is_empty(),
        "too little data to prove anything: {} forward and {} reverse records",
        dns[FORWARD].len(),
        dns[REVERSE].len()
    );
    ensure!(
        dns[FORWARD]
            .iter()
            .any(|r| r.rtype == "TXT" && r.rdata.len() > 3000),
        "no TXT of several kB in the forward zone"
    );
    Ok(())
}

// ---------------------------------------------------------------- secrets

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tsig_secret_appears_in_anything_pg2dns_prints_even_at_trace_level() -> Result<()> {
    let trace = [("RUST_LOG", "trace")];
    let stack = Stack::start("faults-secrets", Primary::Bind).await?;

    // A halt: the key BIND trusts by name, with another secret.
    let wrong = stack.write_wrong_key_file().await?;
    stack.write_config(&[(FORWARD, &wrong)])?;
    let mut halted = stack.run_with(&trace)?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('www.example.test.', 300, 'A', '192.0.2.10')")
        .await?;
    let status = halted.wait_exit(DNS_DEADLINE).await?;
    ensure!(
        !status.success(),
        "a wrong secret halts pg2dns, yet it exited with {status}"
    );
    let halt_log = halted.log();
    let lower = halt_log.to_ascii_lowercase();
    ensure!(
        lower.contains("badsig") || lower.contains("badkey"),
        "the halt is the TSIG failure being tested; pg2dns wrote:\n{halt_log}"
    );

    // A normal run with the right key, until DNS equals the table.
    stack.write_config(&[])?;
    let mut normal = stack.run_with(&trace)?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('1.2.0.192.in-addr.arpa.', 300, 'PTR', 'www.example.test.'),
               ('t.example.test.', 300, 'TXT', '\"hello\" \"world\"')",
        )
        .await?;
    let dns = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(dns[FORWARD].len() == 2, "the run published: {dns:?}");
    normal.terminate().await?;
    let normal_log = normal.log();
    ensure!(
        normal_log.lines().count() > 20,
        "a trace-level run prints more than this:\n{normal_log}"
    );

    let printed = format!("{halt_log}\n{normal_log}");
    for key_file in [stack.server(Primary::Bind)?.key_file(), wrong.as_path()] {
        let text = std::fs::read_to_string(key_file)?;
        let secret = key_secret(&text)
            .with_context(|| format!("no secret in {}:\n{text}", key_file.display()))?;
        let bytes = decode_base64(secret)?;
        ensure!(bytes.len() == 32, "an hmac-sha256 key has 32 bytes");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let forms = [
            ("the base64 secret", secret.to_string()),
            ("the secret's bytes in hex", hex.clone()),
            (
                "the secret's bytes in upper-case hex",
                hex.to_ascii_uppercase(),
            ),
            ("the secret's bytes as a Debug list", format!("{bytes:?}")),
        ];
        for (what, form) in forms {
            ensure!(
                !printed.contains(&form),
                "{what} of {} appears in pg2dns's output",
                key_file.display()
            );
        }
        ensure!(
            !printed.as_bytes().windows(bytes.len()).any(|w| w == bytes),
            "the raw secret bytes of {} appear in pg2dns's output",
            key_file.display()
        );
    }
    Ok(())
}

/// The `secret "…";` of a tsig-keygen key file.
fn key_secret(text: &str) -> Option<&str> {
    let start = text.find("secret \"")? + "secret \"".len();
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

/// Standard base64 (with padding) to bytes.
fn decode_base64(text: &str) -> Result<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|&c| c != b'=') {
        let value = ALPHABET
            .iter()
            .position(|&a| a == c)
            .with_context(|| format!("{:?} is not base64", c as char))?;
        acc = (acc << 6) | value as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}
