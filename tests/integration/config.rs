//! `pg2dns check-config` on the shipped example and on a typo (the file
//! alone, `--offline`), and against a database: missing tables and
//! columns, unusable types, a key outside the replica identity.

use anyhow::{ensure, Result};

use crate::harness::{bind, pg2dns, Primary, Stack, TempDir};

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
