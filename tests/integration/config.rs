//! `pg2dns check-config` on the shipped example and on a typo (the file
//! alone, `--offline`), against a database (missing tables and columns,
//! unusable types, a key outside the replica identity or not unique,
//! `wal_level`, a role that may not replicate) and against the zones'
//! primaries (a key they do not know, a wrong secret or algorithm, a zone
//! not served, not updatable or not transferable by the key).

use std::time::Duration;

use anyhow::{ensure, Result};

use crate::harness::dns::{Access, KEY_NAME};
use crate::harness::stack::{FORWARD, REVERSE, SLOT};
use crate::harness::{bind, pg2dns, wait_until, Check, Primary, Server, Stack, TempDir};

/// `pg2dns check-config --offline`: the file and its key files only.
async fn offline_check(config: &std::path::Path) -> Result<std::process::Output> {
    pg2dns::command_with(&["check-config", "--offline"], config, &[]).await
}

/// The annotated example, with its key file path replaced by a real one.
async fn example_in(dir: &TempDir) -> Result<std::path::PathBuf> {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/pg2dns.toml"
    ))?;
    let key = dir.path().join("pg2dns.key");
    bind::write_key_file(&key, "pg2dns-key").await?;
    let config = dir.path().join("pg2dns.toml");
    std::fs::write(
        &config,
        example.replace("/etc/bind/pg2dns.key", &key.display().to_string()),
    )?;
    Ok(config)
}

#[tokio::test]
async fn the_annotated_example_config_passes_check_config() -> Result<()> {
    let dir = TempDir::new("example-config")?;
    let config = example_in(&dir).await?;
    let output = offline_check(&config).await?;
    ensure!(
        output.status.success(),
        "check-config refused examples/pg2dns.toml:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // What each source publishes.
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in [
        "source ipam.hosts: A/AAAA from address, PTR in 2.0.192.in-addr.arpa.",
        "source app.records: type from type with data {content}, MX data {prio} {content}",
    ] {
        ensure!(
            stdout.contains(line),
            "check-config printed no {line:?}:\n{stdout}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn check_config_refuses_a_misspelt_key_and_names_it() -> Result<()> {
    let dir = TempDir::new("typo-config")?;
    let config = example_in(&dir).await?;
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(&config, text.replace("\nslot = ", "\nslott = "))?;
    let output = offline_check(&config).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success() && stderr.contains("slott"),
        "check-config must refuse the unknown key `slott` and name it; it exited {} with:\n{stderr}",
        output.status
    );
    Ok(())
}

#[tokio::test]
async fn a_key_file_readable_by_other_users_is_warned_about_and_a_private_one_is_not() -> Result<()>
{
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("key-mode")?;
    let config = example_in(&dir).await?;
    let key = dir.path().join("pg2dns.key");
    let warning = "the TSIG key file is readable by other users";
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))?;
    let output = offline_check(&config).await?;
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    ensure!(
        output.status.success() && stderr.contains(warning) && stderr.contains("644"),
        "a 644 key file draws a warning:\n{stderr}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    let output = offline_check(&config).await?;
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    ensure!(
        output.status.success() && !stderr.contains(warning),
        "a 600 key file draws no warning:\n{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn a_key_file_shared_by_many_zones_is_warned_about_once_per_file() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("key-mode-shared")?;
    let config = example_in(&dir).await?;
    let shared = dir.path().join("pg2dns.key");
    let other = dir.path().join("other.key");
    bind::write_key_file(&other, "other-key").await?;
    for key in [&shared, &other] {
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o644))?;
    }
    // The example's two zones already share pg2dns.key; 500 more share it
    // too, and 100 share other.key.
    let mut text = std::fs::read_to_string(&config)?;
    for i in 0..600 {
        let key = if i < 500 { &shared } else { &other };
        text.push_str(&format!(
            "\n[[zone]]\nname = \"z{i}.many.test.\"\nprimary = \"192.0.2.53:53\"\ntsig_key_file = \"{}\"\n",
            key.display()
        ));
    }
    std::fs::write(&config, text)?;
    let output = offline_check(&config).await?;
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let warning = "the TSIG key file is readable by other users";
    let warned = |key: &std::path::Path| {
        stderr
            .lines()
            .filter(|l| l.contains(warning) && l.contains(&*key.display().to_string()))
            .count()
    };
    ensure!(
        output.status.success() && warned(&shared) == 1 && warned(&other) == 1,
        "each shared 644 key file draws exactly one warning (pg2dns.key: {}, other.key: {}):\n{stderr}",
        warned(&shared),
        warned(&other)
    );
    Ok(())
}

#[tokio::test]
async fn check_config_finds_missing_columns_bad_types_and_a_key_outside_the_replica_identity(
) -> Result<()> {
    let stack = Stack::start("check-config", Primary::Bind).await?;
    stack
        .exec(
            "CREATE SCHEMA pdns;
             CREATE TABLE pdns.domains (id int PRIMARY KEY, name text NOT NULL);
             CREATE TABLE pdns.records (id bigserial PRIMARY KEY, domain_id int, name text, type text,
                 content text, ttl int, prio int, disabled bool NOT NULL DEFAULT false);
             CREATE SCHEMA ipam;
             CREATE TABLE ipam.hosts (id int PRIMARY KEY, name text, address inet, status text);",
        )
        .await?;
    stack.append_config(
        r#"
[[source]]
table = "pdns.records"
owner_column = "name"
type_column = "type"
rdata_column = "content"
rdata_by_type = { MX = "{prio} {content}" }
ttl_column = "ttl"
[source.zones_table]
table = "pdns.domains"
column = "domain_id"
[source.filter]
is_false = ["disabled"]

[[source]]
table = "ipam.hosts"
owner_column = "name"
address_column = "address"
ptr = true
[source.filter]
one_of = { status = ["active"] }
"#,
    )?;
    let check = || pg2dns::command("check-config", stack.config_path());
    let output = check().await?;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    ensure!(
        output.status.success()
            && stdout
                .contains("source ipam.hosts: A/AAAA from address, PTR in 2.0.192.in-addr.arpa.")
            && stdout.contains("zone from pdns.domains.name where id = domain_id")
            && !stdout.contains("problem:"),
        "a sound database passes, and each source says what it publishes:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // A dropped column, a retyped one, a key outside the replica identity,
    // a missing zones table and a generated column (which the stream never
    // carries): each named, with the fix for the identity.
    stack
        .exec(
            "ALTER TABLE pdns.records DROP COLUMN prio;
             ALTER TABLE pdns.records ALTER COLUMN disabled TYPE text;
             ALTER TABLE ipam.hosts DROP CONSTRAINT hosts_pkey;
             ALTER TABLE ipam.hosts DROP COLUMN name;
             ALTER TABLE ipam.hosts ADD COLUMN name text GENERATED ALWAYS AS ('h' || id || '.example.test') STORED;
             DROP TABLE pdns.domains;",
        )
        .await?;
    let output = check().await?;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    for needle in [
        "problem: pdns.records has no column \"prio\"",
        "problem: pdns.records.disabled is text, but it needs boolean",
        "problem: table pdns.domains does not exist",
        "problem: ipam.hosts: key column(s) id are not in the replica identity (it has no primary key (REPLICA IDENTITY DEFAULT))",
        "ALTER TABLE ipam.hosts REPLICA IDENTITY FULL",
        "problem: ipam.hosts.name is a generated column, which logical replication does not send",
    ] {
        ensure!(
            output.status.code() == Some(1) && stdout.contains(needle),
            "check-config must exit 1 and say {needle:?}; it exited {} with:\n{stdout}",
            output.status
        );
    }
    // REPLICA IDENTITY FULL carries every column: the key problem goes.
    stack
        .exec("ALTER TABLE ipam.hosts REPLICA IDENTITY FULL")
        .await?;
    let stdout = String::from_utf8_lossy(&check().await?.stdout).to_string();
    ensure!(
        !stdout.contains("ipam.hosts: key"),
        "REPLICA IDENTITY FULL suffices:\n{stdout}"
    );
    Ok(())
}

/// `pg2dns check-config` with `config`: its exit code and its stdout (and
/// stderr, for messages).
async fn check_config(config: &std::path::Path) -> Result<(Option<i32>, String)> {
    let output = pg2dns::command("check-config", config).await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.code(), text))
}

/// The `problem:` lines of check-config's output that name `zone`.
fn problems_of(text: &str, zone: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with("problem: ") && l.contains(&format!("zone {zone}:")))
        .map(str::to_owned)
        .collect()
}

on_each_primary!(
    check_config_names_an_unknown_key_a_wrong_secret_or_algorithm_and_an_unserved_zone,
    check_config_names_a_zone_the_key_may_not_update_or_transfer
);

async fn check_config_names_an_unknown_key_a_wrong_secret_or_algorithm_and_an_unserved_zone(
    primary: Primary,
) -> Result<()> {
    let stack = Stack::start("check-dns", primary).await?;
    let (code, text) = check_config(stack.config_path()).await?;
    ensure!(
        code == Some(0) && text.contains("dns: each zone's primary knows its key, serves the zone"),
        "a sound set-up passes against the live server:\n{text}"
    );
    let server = stack.server(primary)?;
    // Each mistake on the forward zone only: it is named with its fix, and
    // the reverse zone, which is fine, is not.
    let wrong_secret = stack.write_wrong_key_file().await?;
    let unknown = stack.dir().join("unknown.key");
    bind::write_key_file(&unknown, "not-the-servers-key").await?;
    let sha512 = stack.dir().join("sha512.key");
    std::fs::write(
        &sha512,
        std::fs::read_to_string(server.key_file())?.replace("hmac-sha256", "hmac-sha512"),
    )?;
    // PowerDNS answers each of these with a plain NOTAUTH, unsigned: it
    // cannot be told which, only that the zone is served and the key not
    // taken.
    let powerdns = primary == Primary::PowerDns;
    let rejected = |key: &str, algorithm: &str| {
        format!("serves the zone but rejects key {key} with algorithm {algorithm}")
    };
    for (key_file, needle) in [
        (
            &wrong_secret,
            if powerdns {
                rejected(KEY_NAME, "hmac-sha256")
            } else {
                format!("rejects the signature of key {KEY_NAME} (TSIG BADSIG): its secret differs from the server's")
            },
        ),
        (
            &unknown,
            if powerdns {
                rejected("not-the-servers-key", "hmac-sha256")
            } else {
                "does not know key not-the-servers-key with algorithm hmac-sha256 (TSIG BADKEY)"
                    .to_owned()
            },
        ),
        (
            &sha512,
            if powerdns {
                rejected(KEY_NAME, "hmac-sha512")
            } else {
                format!("does not know key {KEY_NAME} with algorithm hmac-sha512 (TSIG BADKEY)")
            },
        ),
    ] {
        stack.write_config(&[(FORWARD, key_file)])?;
        let (code, text) = check_config(stack.config_path()).await?;
        let forward = problems_of(&text, FORWARD);
        ensure!(
            code == Some(1)
                && forward.len() == 1
                && forward[0].contains(&needle)
                && problems_of(&text, REVERSE).is_empty(),
            "check-config must exit 1 with one problem for {FORWARD} saying {needle:?}, none for {REVERSE}; it exited {code:?} with:\n{text}"
        );
    }
    // A zone the server does not serve.
    stack.write_config(&[])?;
    stack.append_config(&format!(
        "[[zone]]\nname = \"unserved.test.\"\nprimary = \"{}\"\ntsig_key_file = \"{}\"\n",
        server.addr(),
        server.key_file().display()
    ))?;
    let (code, text) = check_config(stack.config_path()).await?;
    let unserved = problems_of(&text, "unserved.test.");
    ensure!(
        code == Some(1)
            && unserved.len() == 1
            && unserved[0].contains("does not serve the zone as primary")
            && problems_of(&text, FORWARD).is_empty(),
        "check-config must say the server does not serve unserved.test.; it exited {code:?} with:\n{text}"
    );
    Ok(())
}

async fn check_config_names_a_zone_the_key_may_not_update_or_transfer(
    primary: Primary,
) -> Result<()> {
    let stack = Stack::start("check-acl", primary).await?;
    let no_update = Server::start_with_access(
        primary,
        stack.dir(),
        &["noupdate.test."],
        Access {
            update: false,
            transfer: true,
        },
    )
    .await?;
    let no_transfer = Server::start_with_access(
        primary,
        stack.dir(),
        &["notransfer.test."],
        Access {
            update: true,
            transfer: false,
        },
    )
    .await?;
    for server in [&no_update, &no_transfer] {
        stack.append_config(&format!(
            "[[zone]]\nname = \"{}\"\nprimary = \"{}\"\ntsig_key_file = \"{}\"\n",
            server.zones()[0],
            server.addr(),
            server.key_file().display()
        ))?;
    }
    let (code, text) = check_config(stack.config_path()).await?;
    let update = problems_of(&text, "noupdate.test.");
    let transfer = problems_of(&text, "notransfer.test.");
    ensure!(
        code == Some(1)
            && update.len() == 1
            && update[0].contains(&format!(
                "does not let key {KEY_NAME} update the zone: add `allow-update {{ key {KEY_NAME}; }};`"
            ))
            && transfer.len() == 1
            && transfer[0].contains(&format!(
                "does not let key {KEY_NAME} transfer the zone, which `pg2dns reconcile` and the first load need: add `allow-transfer {{ key {KEY_NAME}; }};`"
            ))
            && problems_of(&text, FORWARD).is_empty(),
        "check-config must name the missing update right of noupdate.test. and the missing transfer right of notransfer.test., nothing else; it exited {code:?} with:\n{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_names_a_role_that_may_not_replicate_and_wal_level_replica() -> Result<()> {
    let mut stack = Stack::start("check-cluster", Primary::Bind).await?;
    stack.exec("CREATE ROLE norepl LOGIN").await?;
    let url = stack.pg.url().replace("postgres@", "norepl@");
    stack.set_database_url(&url)?;
    stack.append_config("[roles]\noperators = [\"norepl\", \"no_such_role\"]\n")?;
    let (code, text) = check_config(stack.config_path()).await?;
    ensure!(
        code == Some(1)
            && text.contains(
                "problem: role norepl may not replicate: run `ALTER ROLE \"norepl\" REPLICATION` as a superuser"
            )
            && text.contains("problem: role no_such_role of [roles] operators does not exist")
            && !text.contains("role norepl of [roles]")
            && !text.contains("wal_level"),
        "check-config must name the role without REPLICATION and the missing role; it exited {code:?} with:\n{text}"
    );
    stack.set_database_url(&stack.pg.url())?;
    // PostgreSQL does not start at wal_level replica while a logical slot
    // exists: the slot goes first.
    stack
        .exec(&format!("SELECT pg_drop_replication_slot('{SLOT}')"))
        .await?;
    // Alone: ALTER SYSTEM cannot run inside a transaction block.
    stack.exec("ALTER SYSTEM SET wal_level = replica").await?;
    stack.restart_postgres().await?;
    let (code, text) = check_config(stack.config_path()).await?;
    ensure!(
        code == Some(1)
            && text.contains("problem: wal_level is replica, but logical decoding needs logical: set `wal_level = logical`")
            && !text.contains("may not replicate"),
        "check-config must name wal_level; it exited {code:?} with:\n{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_not_unique_is_named_by_check_config_refused_by_setup_and_halts_run(
) -> Result<()> {
    let stack = Stack::start("check-unique", Primary::Bind).await?;
    stack
        .exec(
            "CREATE SCHEMA app;
             CREATE TABLE app.hosts (host text, address inet);
             ALTER TABLE app.hosts REPLICA IDENTITY FULL;",
        )
        .await?;
    stack.append_config(
        r#"
[[source]]
table = "app.hosts"
key = ["host"]
owner = "{host}.example.test."
address_column = "address"
"#,
    )?;
    let needle =
        "key (host) of app.hosts is not unique: add a UNIQUE index on (host) over NOT NULL columns";
    let refused = |what: &str, code: Option<i32>, text: &str| -> Result<()> {
        ensure!(
            code != Some(0) && text.contains(needle),
            "{what} must fail naming the non-unique key ({needle:?}); it exited {code:?} with:\n{text}"
        );
        Ok(())
    };
    let (code, text) = check_config(stack.config_path()).await?;
    refused("check-config", code, &text)?;
    let setup = pg2dns::command("setup", stack.config_path()).await?;
    let setup_text = format!(
        "{}{}",
        String::from_utf8_lossy(&setup.stdout),
        String::from_utf8_lossy(&setup.stderr)
    );
    refused("setup", setup.status.code(), &setup_text)?;
    let published: i64 = stack
        .db
        .query_one(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = $1 AND tablename = 'hosts'",
            &[&SLOT],
        )
        .await?
        .get(0);
    ensure!(published == 0, "a refused setup must not publish app.hosts");
    // A unique index over a nullable column admits two NULL keys: not yet.
    stack
        .exec("CREATE UNIQUE INDEX hosts_host ON app.hosts (host)")
        .await?;
    let (code, text) = check_config(stack.config_path()).await?;
    refused("check-config (nullable unique index)", code, &text)?;
    stack
        .exec("ALTER TABLE app.hosts ALTER COLUMN host SET NOT NULL")
        .await?;
    let (code, text) = check_config(stack.config_path()).await?;
    ensure!(
        code == Some(0) && !text.contains("not unique"),
        "a NOT NULL unique index makes the key unique:\n{text}"
    );
    stack.setup().await?;
    // The index dropped while pg2dns is stopped: the next run halts, naming
    // the key, and goes on once the index is back and it is resumed.
    stack.exec("DROP INDEX app.hosts_host").await?;
    let mut service = stack.run_as_service()?;
    let mode = |wanted: &'static str| {
        let stack = &stack;
        async move {
            wait_until(
                Duration::from_secs(60),
                &format!("pg2dns is {wanted}"),
                || async {
                    let row = stack
                        .db
                        .query_opt(
                            "SELECT mode, reason, hint FROM pg2dns.mode WHERE slot = $1",
                            &[&SLOT],
                        )
                        .await?;
                    Ok(match row {
                        Some(r) if r.get::<_, String>(0) == wanted => {
                            Check::Done((r.get::<_, String>(1), r.get::<_, String>(2)))
                        }
                        other => Check::NotYet(format!("{other:?}")),
                    })
                },
            )
            .await
        }
    };
    let (reason, hint) = mode("halted").await?;
    ensure!(
        reason.contains(needle) && hint.contains("add a UNIQUE index"),
        "the halt must name the key and the fix: {reason} / {hint}"
    );
    stack
        .exec("CREATE UNIQUE INDEX hosts_host ON app.hosts (host)")
        .await?;
    let resume = stack.admin(&["resume"]).await?;
    ensure!(resume.status.success(), "resume: {resume:?}");
    mode("running").await?;
    stack
        .exec("INSERT INTO app.hosts (host, address) VALUES ('after', '192.0.2.9')")
        .await?;
    stack
        .wait_until_answers("after.example.test.", "A", Duration::from_secs(60))
        .await?;
    service.terminate().await?;
    Ok(())
}
