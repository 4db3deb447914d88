//! Connection security: TLS to PostgreSQL with a CA file and SCRAM-SHA-256
//! passwords, on the SQL and the replication connection alike, against a
//! cluster that admits pg2dns's role only over TLS with its SCRAM password
//! ([`crate::harness::PgOptions::tls`]).

use anyhow::{ensure, Context, Result};

use crate::harness::postgres::{TLS_PASSWORD, TLS_ROLE};
use crate::harness::stack::FORWARD;
use crate::harness::{pg2dns, Primary, Stack, DNS_DEADLINE};

async fn insert_row(stack: &Stack, owner: &str) -> Result<String> {
    let xid: String = stack
        .db
        .query_one(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
             VALUES ($1, 300, 'A', '192.0.2.10') RETURNING xmin::text",
            &[&owner],
        )
        .await?
        .get(0);
    Ok(xid)
}

/// Runs pg2dns (exiting on a halt) with the stack's current URL, expects it
/// to stop with an error, and checks that nothing reached DNS and the slot
/// still holds transaction `xid`. Returns the run's log.
async fn run_fails_without_streaming(stack: &Stack, xid: &str) -> Result<String> {
    let mut run = stack.run()?;
    let status = run.wait_exit(DNS_DEADLINE).await?;
    let log = run.log();
    ensure!(
        !status.success(),
        "pg2dns run must fail, yet exited with {status}:\n{log}"
    );
    let zone = stack.axfr(FORWARD).await?;
    ensure!(
        zone.is_empty(),
        "nothing may reach DNS, yet it holds {zone:?}"
    );
    let pending = stack.pending_transactions().await?;
    ensure!(
        pending.iter().any(|t| t.xid == xid),
        "the slot must still hold transaction {xid}: {pending:?}"
    );
    Ok(log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_right_ca_and_a_scram_password_streams_over_tls_on_both_connections(
) -> Result<()> {
    // `pg2dns setup` already ran as the TLS-only role, with verify-full.
    let stack = Stack::start_tls("tls-ok", Primary::Bind).await?;
    let stored: String = stack
        .db
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&TLS_ROLE],
        )
        .await?
        .get(0);
    ensure!(
        stored.starts_with("SCRAM-SHA-256$"),
        "the role's password is a SCRAM verifier"
    );
    let _pg2dns = stack.run()?;
    insert_row(&stack, "tls.example.test.").await?;
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(
        !stack.axfr(FORWARD).await?.is_empty(),
        "the row reached DNS"
    );
    // Both kinds of connection are TLS: the walsender and the SQL sessions.
    let rows = stack
        .db
        .query(
            "SELECT a.backend_type, s.ssl
               FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.usename = $1",
            &[&TLS_ROLE],
        )
        .await?;
    let sessions: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    ensure!(
        sessions.iter().any(|(kind, _)| kind == "walsender")
            && sessions.iter().any(|(kind, _)| kind == "client backend"),
        "pg2dns holds a replication and an SQL session: {sessions:?}"
    );
    ensure!(
        sessions.iter().all(|(_, ssl)| *ssl),
        "every pg2dns session is TLS: {sessions:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_fails_clearly_naming_the_certificate_problem_and_streams_nothing() -> Result<()>
{
    let stack = Stack::start_tls("tls-wrong-ca", Primary::Bind).await?;
    let ca = stack.pg.ca().context("a TLS cluster")?.clone();
    stack.set_database_url(&stack.pg.tls_url(
        "localhost",
        TLS_PASSWORD,
        "verify-full",
        &ca.other_ca_cert,
    ))?;
    let setup = pg2dns::command("setup", stack.config_path()).await?;
    let stderr = String::from_utf8_lossy(&setup.stderr);
    ensure!(!setup.status.success(), "setup must fail with the wrong CA");
    ensure!(
        stderr.contains("invalid peer certificate") && stderr.contains("UnknownIssuer"),
        "setup names the certificate problem: {stderr}"
    );

    let xid = insert_row(&stack, "never.example.test.").await?;
    let log = run_fails_without_streaming(&stack, &xid).await?;
    ensure!(
        log.contains("UnknownIssuer") && log.contains("sslrootcert"),
        "the run names the certificate problem and what to check:\n{log}"
    );
    // verify-ca checks the chain too, whatever the host name.
    stack.set_database_url(&stack.pg.tls_url(
        "127.0.0.1",
        TLS_PASSWORD,
        "verify-ca",
        &ca.other_ca_cert,
    ))?;
    let log = run_fails_without_streaming(&stack, &xid).await?;
    ensure!(
        log.contains("UnknownIssuer"),
        "verify-ca refuses the wrong CA:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_clearly_and_streams_nothing() -> Result<()> {
    let stack = Stack::start_tls("tls-wrong-password", Primary::Bind).await?;
    let ca = stack.pg.ca().context("a TLS cluster")?.clone();
    stack.set_database_url(&stack.pg.tls_url(
        "localhost",
        "not-the-password",
        "verify-full",
        &ca.ca_cert,
    ))?;
    let xid = insert_row(&stack, "never.example.test.").await?;
    let log = run_fails_without_streaming(&stack, &xid).await?;
    ensure!(
        log.contains("password authentication failed")
            && log.contains("check the user and password"),
        "the run says the password was refused and what to check:\n{log}"
    );
    Ok(())
}
