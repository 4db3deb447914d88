//! The whole life cycle with the three least-privilege roles of README's
//! "Roles and grants", none a superuser: the service role (LOGIN
//! REPLICATION, CREATE on the database) sets up and runs pg2dns and
//! reconciles; the operator role pauses, waits, reads the status and
//! resumes; the writer role writes `pg2dns.rr`. The source table belongs
//! to the application's own role, as it would in production.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::harness::stack::SLOT;
use crate::harness::{pg2dns, wait_until, Check, Primary, Stack};

const WAIT: Duration = Duration::from_secs(60);

/// A URL for `role` (trust authentication, as the test cluster has).
fn url_as(stack: &Stack, role: &str) -> String {
    stack.pg.url().replacen("postgres@", &format!("{role}@"), 1)
}

/// A SQL connection as `role`.
async fn connect_as(stack: &Stack, role: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(&url_as(stack, role), tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting as {role}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A copy of the stack's config (the service's) that logs in as `role`.
fn config_as(stack: &Stack, role: &str) -> Result<PathBuf> {
    let text = std::fs::read_to_string(stack.config_path())?;
    let path = stack.dir().join(format!("pg2dns-{role}.toml"));
    std::fs::write(
        &path,
        text.replace(&url_as(stack, "pg2dns_svc"), &url_as(stack, role)),
    )?;
    Ok(path)
}

/// `pg2dns ARGS -c CONFIG`: exit code and output.
async fn pg2dns_with(args: &[&str], config: &Path) -> Result<(Option<i32>, String)> {
    let output = pg2dns::command_with(args, config, &[]).await?;
    Ok((
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    ))
}

/// Waits until the primary answers `name` A with exactly `address`.
async fn wait_for_address(stack: &Stack, name: &str, address: &str) -> Result<()> {
    let records = stack.wait_until_answers(name, "A", WAIT).await?;
    ensure!(
        records.len() == 1 && records[0].rdata == address,
        "{name} A must be {address}: {records:?}"
    );
    Ok(())
}

/// The DBA's and the application's part, as README's "Roles and grants"
/// has it: the three roles and an application-owned source table holding
/// one row, readable by the service; the config logs in as the service and
/// names the operators and writers. Returns the application's connection.
async fn prepare(stack: &Stack) -> Result<tokio_postgres::Client> {
    stack
        .exec(
            "CREATE ROLE app_owner LOGIN;
             CREATE ROLE pg2dns_svc LOGIN REPLICATION;
             CREATE ROLE dns_ops LOGIN;
             CREATE ROLE dns_writer LOGIN;
             GRANT CREATE ON DATABASE postgres TO pg2dns_svc;
             CREATE SCHEMA app AUTHORIZATION app_owner;",
        )
        .await?;
    let app = connect_as(stack, "app_owner").await?;
    app.batch_execute(
        "CREATE TABLE app.hosts (id serial PRIMARY KEY, name text NOT NULL, address inet NOT NULL);
         INSERT INTO app.hosts (name, address) VALUES ('before.example.test.', '192.0.2.1');
         GRANT USAGE ON SCHEMA app TO pg2dns_svc;
         GRANT SELECT ON app.hosts TO pg2dns_svc;",
    )
    .await?;
    stack.set_database_url(&url_as(stack, "pg2dns_svc"))?;
    stack.append_config(
        r#"
[roles]
operators = ["dns_ops"]
writers = ["dns_writer"]

[[source]]
table = "app.hosts"
owner_column = "name"
address_column = "address"
"#,
    )?;
    Ok(app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_life_cycle_runs_with_non_superuser_service_operator_and_writer_roles(
) -> Result<()> {
    let stack = Stack::start_before_setup("roles", Primary::Bind).await?;
    let app = prepare(&stack).await?;

    // check-config as the service says so before setup.
    let (code, text) = pg2dns_with(&["check-config"], stack.config_path()).await?;
    ensure!(
        code == Some(1)
            && text.contains("problem: setup will stop at app.hosts: role \"pg2dns_svc\" does not own it")
            && text.matches("problem:").count() == 1,
        "check-config as the service must name the table setup cannot publish, and nothing else; it exited {code:?} with:\n{text}"
    );
    // Setup as the service: it may not add a table it does not own to the
    // publication, and says what to run instead.
    let (code, text) = pg2dns_with(&["setup"], stack.config_path()).await?;
    ensure!(
        code != Some(0)
            && text.contains("cannot add app.hosts to publication pg2dns")
            && text.contains("as a superuser run `ALTER PUBLICATION \"pg2dns\" ADD TABLE app.hosts`"),
        "setup as the service must fail naming the ALTER PUBLICATION to run; it exited {code:?} with:\n{text}"
    );
    stack
        .exec(&format!("ALTER PUBLICATION {SLOT} ADD TABLE app.hosts"))
        .await?;
    stack.setup().await?;
    let owner: String = stack
        .db
        .query_one(
            "SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = 'pg2dns'",
            &[],
        )
        .await?
        .get(0);
    ensure!(
        owner == "pg2dns_svc",
        "the service owns the pg2dns schema, not {owner}"
    );
    // The first load, as the service, from the application's table.
    wait_for_address(&stack, "before.example.test.", "192.0.2.1").await?;
    let (code, text) = pg2dns_with(&["check-config"], stack.config_path()).await?;
    ensure!(
        code == Some(0),
        "check-config as the service passes once set up; it exited {code:?} with:\n{text}"
    );
    stack
        .exec("REVOKE SELECT ON app.hosts FROM pg2dns_svc")
        .await?;
    let (code, text) = pg2dns_with(&["check-config"], stack.config_path()).await?;
    ensure!(
        code == Some(1)
            && text.contains("problem: role \"pg2dns_svc\" may not read app.hosts, which the first load and reconcile read: run `GRANT SELECT ON app.hosts TO \"pg2dns_svc\"`"),
        "check-config names a source table the service may not read; it exited {code:?} with:\n{text}"
    );
    stack
        .exec("GRANT SELECT ON app.hosts TO pg2dns_svc")
        .await?;

    // Run as the service; the writer and the application write.
    let mut service = stack.run_as_service()?;
    let writer = connect_as(&stack, "dns_writer").await?;
    writer
        .batch_execute(
            "INSERT INTO pg2dns.rr (owner, type, rdata) VALUES ('w.example.test.', 'A', '192.0.2.10');
             UPDATE pg2dns.rr SET rdata = '192.0.2.11' WHERE owner = 'w.example.test.';",
        )
        .await
        .context("the writer writes pg2dns.rr")?;
    app.batch_execute(
        "INSERT INTO app.hosts (name, address) VALUES ('app.example.test.', '192.0.2.2')",
    )
    .await?;
    wait_for_address(&stack, "w.example.test.", "192.0.2.11").await?;
    wait_for_address(&stack, "app.example.test.", "192.0.2.2").await?;
    // The writer may write pg2dns.rr and nothing else of pg2dns's.
    let denied = writer
        .batch_execute("DELETE FROM pg2dns.row_state")
        .await
        .err()
        .and_then(|e| e.code().cloned());
    ensure!(
        denied == Some(tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "the writer must not touch pg2dns.row_state: {denied:?}"
    );

    // The operator: status, pause --wait, status, resume. No table of
    // pg2dns's is readable to it.
    let ops = config_as(&stack, "dns_ops")?;
    let (code, text) = pg2dns_with(&["status"], &ops).await?;
    ensure!(
        code == Some(0) && text.contains(&format!("slot {SLOT}: running")),
        "status as the operator: {code:?}\n{text}"
    );
    let (code, text) = pg2dns_with(&["pause", "--reason", "maintenance", "--wait"], &ops).await?;
    ensure!(
        code == Some(0) && text.contains("paused at "),
        "pause --wait as the operator: {code:?}\n{text}"
    );
    let (code, text) = pg2dns_with(&["status"], &ops).await?;
    ensure!(
        code == Some(0)
            && text.contains(": paused since ")
            && text.contains("by dns_ops (maintenance)"),
        "status shows the operator's pause: {code:?}\n{text}"
    );
    writer
        .batch_execute(
            "INSERT INTO pg2dns.rr (owner, type, rdata) VALUES ('paused.example.test.', 'A', '192.0.2.20')",
        )
        .await?;
    let (code, text) = pg2dns_with(&["resume"], &ops).await?;
    ensure!(
        code == Some(0) && text.contains("streaming continues after "),
        "resume as the operator must say where streaming continues: {code:?}\n{text}"
    );
    wait_for_address(&stack, "paused.example.test.", "192.0.2.20").await?;
    // A mass delete by the writer is held; the operator releases it.
    writer
        .batch_execute(
            "INSERT INTO pg2dns.rr (owner, type, rdata)
             SELECT 'm' || g || '.example.test.', 'A', '192.0.2.' || (100 + g) FROM generate_series(1, 20) AS g",
        )
        .await?;
    wait_for_address(&stack, "m20.example.test.", "192.0.2.120").await?;
    writer
        .batch_execute("DELETE FROM pg2dns.rr WHERE owner LIKE 'm%'")
        .await?;
    wait_until(
        WAIT,
        "the operator's status says a mass delete is held",
        || async {
            let (code, text) = pg2dns_with(&["status", "--json"], &ops).await?;
            let status: serde_json::Value = serde_json::from_str(text.lines().next().unwrap_or(""))
                .with_context(|| format!("status --json as the operator ({code:?}): {text}"))?;
            Ok(
                if status["mode"] == "halted"
                    && status["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("mass delete held"))
                {
                    Check::Done(())
                } else {
                    Check::NotYet(status.to_string())
                },
            )
        },
    )
    .await?;
    let (code, text) = pg2dns_with(&["resume", "--allow-mass-delete"], &ops).await?;
    ensure!(
        code == Some(0) && text.contains("mass delete released"),
        "resume --allow-mass-delete as the operator: {code:?}\n{text}"
    );
    wait_until(WAIT, "the mass delete reaches DNS", || async {
        let left = stack.query("m20.example.test.", "A").await?;
        Ok(if left.is_empty() {
            Check::Done(())
        } else {
            Check::NotYet(format!("{left:?}"))
        })
    })
    .await?;

    let operator = connect_as(&stack, "dns_ops").await?;
    for statement in [
        "SELECT 1 FROM pg2dns.mode",
        "INSERT INTO pg2dns.control (slot, action) VALUES ('pg2dns', 'pause')",
    ] {
        let denied = operator
            .batch_execute(statement)
            .await
            .err()
            .and_then(|e| e.code().cloned());
        ensure!(
            denied == Some(tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "the operator must not run {statement:?}: {denied:?}"
        );
    }

    // Reconcile, as the service, finds DNS in line with both tables.
    let output = stack.reconcile(&[], &[]).await?;
    ensure!(
        output.status.code() == Some(0),
        "reconcile as the service finds no difference; it exited {:?}:\n{}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    service.assert_running()?;
    service.terminate().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_as_the_service_completes_a_publication_a_superuser_created_for_the_application_tables(
) -> Result<()> {
    let stack = Stack::start_before_setup("roles-publication", Primary::Bind).await?;
    let app = prepare(&stack).await?;
    stack
        .exec(&format!(
            "CREATE PUBLICATION {SLOT} FOR TABLE app.hosts WITH (publish_via_partition_root = true);
             ALTER PUBLICATION {SLOT} OWNER TO pg2dns_svc;"
        ))
        .await?;
    stack.setup().await?;
    let published: Vec<String> = stack
        .db
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1",
            &[&SLOT],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    ensure!(
        published == ["app.hosts", "pg2dns.control", "pg2dns.rr", "pg2dns.zones"],
        "setup adds pg2dns's own tables to the DBA's publication: {published:?}"
    );
    wait_for_address(&stack, "before.example.test.", "192.0.2.1").await?;
    let mut service = stack.run()?;
    connect_as(&stack, "dns_writer")
        .await?
        .batch_execute(
            "INSERT INTO pg2dns.rr (owner, type, rdata) VALUES ('w.example.test.', 'A', '192.0.2.10')",
        )
        .await?;
    app.batch_execute(
        "INSERT INTO app.hosts (name, address) VALUES ('app.example.test.', '192.0.2.2')",
    )
    .await?;
    wait_for_address(&stack, "w.example.test.", "192.0.2.10").await?;
    wait_for_address(&stack, "app.example.test.", "192.0.2.2").await?;
    service.assert_running()?;
    service.terminate().await?;
    Ok(())
}
