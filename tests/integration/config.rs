//! `pg2dns check-config` on the shipped example and on a typo.

use anyhow::{ensure, Result};

use crate::harness::{bind, pg2dns, TempDir};

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
    let output = pg2dns::command("check-config", &config).await?;
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
    let output = pg2dns::command("check-config", &config).await?;
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
    let output = pg2dns::command("check-config", &config).await?;
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    ensure!(
        output.status.success() && stderr.contains(warning) && stderr.contains("644"),
        "a 644 key file draws a warning:\n{stderr}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    let output = pg2dns::command("check-config", &config).await?;
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    ensure!(
        output.status.success() && !stderr.contains(warning),
        "a 600 key file draws no warning:\n{stderr}"
    );
    Ok(())
}
