//! How a zone's `primary` may be written: a host name (resolved when pg2dns
//! starts and again on every reconnect) and a port.

use anyhow::{ensure, Result};

use crate::harness::{Primary, Stack, DNS_DEADLINE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_given_as_a_host_name_is_checked_offline_and_receives_the_updates() -> Result<()>
{
    let stack = Stack::start("primary-name", Primary::Bind).await?;
    let addr = stack.server(Primary::Bind)?.addr();
    let port = addr.rsplit_once(':').map(|(_, p)| p).unwrap_or_default();
    let config = std::fs::read_to_string(stack.config_path())?;
    ensure!(config.contains(&addr), "the config names {addr}");
    std::fs::write(
        stack.config_path(),
        config.replace(&addr, &format!("localhost:{port}")),
    )?;

    let output = stack.admin(&["check-config", "--offline"]).await?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(
        text.contains(&format!("→ localhost:{port} (")),
        "check-config --offline must show the name and what it resolved to:\n{text}"
    );

    let _pg2dns = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES \
             ('named.example.test.', 300, 'A', '192.0.2.77')",
        )
        .await?;
    let dns = stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    ensure!(!dns.values().all(Vec::is_empty), "DNS stayed empty");
    Ok(())
}
