//! The packaging: the container files (Docker cannot run here, so they are
//! parsed and their pieces checked with the real tools), the systemd unit and
//! its readiness protocol, the log formats, the monitoring rules against
//! what `/metrics` exports, and the generated completions, man page and
//! version.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::harness::{pg2dns, wait_until, Check, Primary, Stack, TempDir};

const DEADLINE: Duration = Duration::from_secs(60);

/// The repository's top directory.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("streamer/ has a parent")
        .to_path_buf()
}

fn read(relative: &str) -> Result<String> {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// A YAML file as JSON values.
fn yaml(relative: &str) -> Result<Value> {
    serde_yaml_ng::from_str(&read(relative)?).with_context(|| format!("parsing {relative}"))
}

/// The `[[zone]] name`s of a pg2dns config.
fn config_zones(text: &str) -> Result<BTreeSet<String>> {
    let toml: toml::Value = text.parse().context("parsing a pg2dns config")?;
    Ok(toml
        .get("zone")
        .and_then(|z| z.as_array())
        .context("the config has [[zone]] tables")?
        .iter()
        .filter_map(|z| Some(z.get("name")?.as_str()?.trim_end_matches('.').to_owned()))
        .collect())
}

fn service<'a>(compose: &'a Value, name: &str) -> Result<&'a Value> {
    compose
        .pointer(&format!("/services/{name}"))
        .with_context(|| format!("docker-compose.yml has no service {name}"))
}

/// A list of strings (a command, a health check test, ports, volumes).
fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The `host:container[:mode]` volumes of a service that mount files of this
/// repository, as (host path, container path).
fn file_mounts(service: &Value) -> Vec<(PathBuf, String)> {
    strings(service.get("volumes"))
        .iter()
        .filter_map(|v| {
            let mut parts = v.split(':');
            let host = parts.next()?;
            let container = parts.next()?;
            host.starts_with("./")
                .then(|| (repo().join(host), container.to_owned()))
        })
        .collect()
}

#[test]
fn the_compose_file_runs_postgres_with_logical_wal_bind_and_pg2dns_checked_on_readyz() -> Result<()>
{
    let compose = yaml("docker-compose.yml")?;
    let postgres = service(&compose, "postgres")?;
    let command = strings(postgres.get("command")).join(" ");
    ensure!(
        command.contains("wal_level=logical"),
        "postgres runs {command:?}, without wal_level=logical"
    );
    ensure!(
        strings(postgres.pointer("/healthcheck/test")).contains(&"pg_isready".to_owned()),
        "postgres has no pg_isready health check"
    );
    let bind = service(&compose, "bind")?;
    ensure!(
        strings(bind.pointer("/healthcheck/test")).contains(&"dig".to_owned()),
        "bind has no dig health check"
    );
    let setup = service(&compose, "pg2dns-setup")?;
    ensure!(
        strings(setup.get("command")) == ["setup"],
        "pg2dns-setup runs {:?}",
        setup.get("command")
    );
    for dependency in ["postgres", "bind"] {
        let condition = setup.pointer(&format!("/depends_on/{dependency}/condition"));
        ensure!(
            condition == Some(&Value::from("service_healthy")),
            "pg2dns-setup waits for {dependency} with {condition:?}"
        );
    }
    let run = service(&compose, "pg2dns")?;
    ensure!(
        strings(run.get("command")) == ["run"],
        "pg2dns runs {:?}",
        run.get("command")
    );
    ensure!(
        run.pointer("/depends_on/pg2dns-setup/condition")
            == Some(&Value::from("service_completed_successfully")),
        "pg2dns does not wait for pg2dns-setup to complete"
    );
    let health = strings(run.pointer("/healthcheck/test")).join(" ");
    ensure!(
        health.contains("/readyz") && health.contains("9153"),
        "pg2dns's health check {health:?} does not ask /readyz on 9153"
    );
    ensure!(
        strings(run.get("ports"))
            .iter()
            .any(|p| p.ends_with(":9153:9153")),
        "pg2dns does not publish the metrics port"
    );
    // Every mounted file is in the repository.
    for name in ["bind", "pg2dns-setup", "pg2dns"] {
        for (host, container) in file_mounts(service(&compose, name)?) {
            ensure!(
                host.exists(),
                "{name} mounts {} at {container}, which does not exist",
                host.display()
            );
        }
    }
    // pg2dns sends to BIND's fixed address on the compose network.
    let bind_ip = bind
        .pointer("/networks/pg2dns/ipv4_address")
        .and_then(Value::as_str)
        .context("bind has no fixed address on the pg2dns network")?;
    let config: toml::Value = read("packaging/docker/pg2dns.toml")?.parse()?;
    for zone in config
        .get("zone")
        .and_then(|z| z.as_array())
        .context("zones")?
    {
        let primary = zone.get("primary").and_then(|p| p.as_str()).unwrap_or("");
        ensure!(
            primary == format!("{bind_ip}:53"),
            "zone {:?} goes to {primary}, not to bind at {bind_ip}:53",
            zone.get("name")
        );
    }
    let listen = config
        .get("metrics")
        .and_then(|m| m.get("listen"))
        .and_then(|l| l.as_str());
    ensure!(
        listen == Some("0.0.0.0:9153"),
        "the container's metrics listen on {listen:?}, not reachable from outside"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_mounted_into_the_pg2dns_container_passes_check_config_offline() -> Result<()> {
    let compose = yaml("docker-compose.yml")?;
    let run = service(&compose, "pg2dns")?;
    let mounts = file_mounts(run);
    let config_in_container = run
        .pointer("/environment/PG2DNS_CONFIG")
        .and_then(Value::as_str)
        .context("pg2dns's environment sets no PG2DNS_CONFIG")?;
    // The container's file system, as far as the mounts make it: every
    // container path the config names is replaced by its copy here.
    let root = TempDir::new("docker-config")?;
    let (config_host, _) = mounts
        .iter()
        .find(|(_, container)| container == config_in_container)
        .with_context(|| format!("nothing is mounted at {config_in_container}"))?;
    let mut text = std::fs::read_to_string(config_host)?;
    for (host, container) in &mounts {
        let copy = root.path().join(container.trim_start_matches('/'));
        std::fs::create_dir_all(copy.parent().context("a parent")?)?;
        std::fs::copy(host, &copy)?;
        text = text.replace(
            &format!("\"{container}\""),
            &format!("\"{}\"", copy.display()),
        );
    }
    ensure!(
        !text.contains("\"/etc/"),
        "the config names a file that is not mounted:\n{text}"
    );
    let config = root.path().join("pg2dns-checked.toml");
    std::fs::write(&config, &text)?;
    let output = pg2dns::command_with(&["check-config", "--offline"], &config, &[]).await?;
    let printed = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "check-config --offline refuses the container's config:\n{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // In step with the demo (scripts/demo) and with BIND's configuration.
    let zones = config_zones(&text)?;
    let demo: BTreeSet<String> = read("scripts/demo")?
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name = \""))
        .filter_map(|l| Some(l.split('"').next()?.trim_end_matches('.').to_owned()))
        .collect();
    ensure!(
        zones == demo,
        "the container's zones {zones:?} are not the demo's {demo:?}"
    );
    let named: BTreeSet<String> = read("packaging/docker/bind/named.conf")?
        .lines()
        .filter_map(|l| l.trim().strip_prefix("zone \""))
        .filter_map(|l| Some(l.split('"').next()?.to_owned()))
        .collect();
    ensure!(
        zones == named,
        "pg2dns's zones {zones:?} are not BIND's {named:?}"
    );
    Ok(())
}

/// The BIND container's paths under `root`, laid out as the compose mounts
/// and the entrypoint (zones copied to /var/lib/bind) do; returns its
/// named.conf, whose paths point under `root`.
fn lay_out_bind_container(root: &Path) -> Result<PathBuf> {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let docker = repo().join("packaging/docker");
    for dir in ["/etc/bind", "/var/lib/bind", "/var/cache/bind"] {
        std::fs::create_dir_all(at(dir))?;
    }
    std::fs::copy(docker.join("tsig.key"), at("/etc/bind/tsig.key"))?;
    for zone in std::fs::read_dir(docker.join("bind/zones"))? {
        let zone = zone?.path();
        std::fs::copy(
            &zone,
            at("/var/lib/bind").join(zone.file_name().context("a name")?),
        )?;
    }
    let mut conf = std::fs::read_to_string(docker.join("bind/named.conf"))?;
    for dir in ["/etc/bind", "/var/lib/bind", "/var/cache/bind"] {
        conf = conf.replace(&format!("\"{dir}"), &format!("\"{}", at(dir).display()));
    }
    let conf_path = at("/etc/bind/named.conf");
    std::fs::write(&conf_path, conf)?;
    Ok(conf_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_containers_bind_configuration_and_zones_load_in_named_checkconf() -> Result<()> {
    let root = TempDir::new("docker-bind")?;
    let conf_path = lay_out_bind_container(root.path())?;
    let docker = repo().join("packaging/docker");
    let mut command = tokio::process::Command::new("named-checkconf");
    command.arg("-z").arg(&conf_path);
    let output = crate::harness::run_unchecked(&mut command, DEADLINE)
        .await
        .context("named-checkconf (Debian: apt-get install bind9-utils)")?;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        output.status.success(),
        "named-checkconf -z refuses the container's BIND configuration:\n{printed}"
    );
    for zone in ["example.test", "2.0.192.in-addr.arpa"] {
        ensure!(
            printed.contains(&format!("zone {zone}/IN: loaded serial")),
            "named-checkconf did not load {zone}:\n{printed}"
        );
    }
    // The entrypoint that copies the zones and starts named parses.
    let mut command = tokio::process::Command::new("sh");
    command.arg("-n").arg(docker.join("bind/entrypoint.sh"));
    crate::harness::run(&mut command, DEADLINE).await?;
    Ok(())
}

/// A server process, killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `text` with `from` replaced by `to`; fails when `from` is not there.
fn replaced(text: &str, from: &str, to: &str) -> Result<String> {
    ensure!(text.contains(from), "no {from:?} in:\n{text}");
    Ok(text.replace(from, to))
}

/// What `dig +short NAME TYPE` answers from the server on `port`.
async fn dig(port: u16, name: &str, rtype: &str) -> Result<String> {
    let mut command = tokio::process::Command::new(&crate::harness::tools()?.dig);
    command.args([
        "+short",
        "+norec",
        "+time=1",
        "+tries=1",
        "-p",
        &port.to_string(),
        "@127.0.0.1",
        name,
        rtype,
    ]);
    let output = crate::harness::run_unchecked(&mut command, DEADLINE).await?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The closest to `docker compose up` without Docker: the BIND container's
/// named.conf, zones and key, and the pg2dns container's config, on
/// loopback (addresses and ports rewritten, the harness's PostgreSQL for
/// the compose one): a row written reaches the zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_containers_bind_and_pg2dns_configurations_stream_a_row_together() -> Result<()> {
    let root = TempDir::new("docker-demo")?;
    let conf_path = lay_out_bind_container(root.path())?;
    let dns_port = crate::harness::free_port()?;
    let conf = replaced(
        &std::fs::read_to_string(&conf_path)?,
        "listen-on port 53 { any; };",
        &format!("listen-on port {dns_port} {{ 127.0.0.1; }};"),
    )?;
    std::fs::write(&conf_path, conf)?;
    let named_log = root.path().join("named.log");
    let log_file = std::fs::File::create(&named_log)?;
    let _named = Killed(
        std::process::Command::new(&crate::harness::tools()?.named)
            .args(["-g", "-n", "1", "-c"])
            .arg(&conf_path)
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting named")?,
    );
    let named_tail = || crate::harness::log_tail(&named_log, 30);
    for zone in ["example.test", "2.0.192.in-addr.arpa"] {
        wait_until(DEADLINE, &format!("named serves {zone}"), || async {
            let soa = dig(dns_port, zone, "SOA").await?;
            Ok(if soa.contains("hostmaster") {
                Check::Done(())
            } else {
                Check::NotYet(format!("SOA {soa:?}; named's log:\n{}", named_tail()))
            })
        })
        .await?;
    }
    let pg = crate::harness::Postgres::start(root.path()).await?;
    let mut config = read("packaging/docker/pg2dns.toml")?;
    for (from, to) in [
        ("postgresql://pg2dns@postgres:5432/dns".to_owned(), pg.url()),
        (
            "172.28.53.53:53".to_owned(),
            format!("127.0.0.1:{dns_port}"),
        ),
        (
            "/etc/pg2dns/tsig.key".to_owned(),
            root.path().join("etc/bind/tsig.key").display().to_string(),
        ),
        (
            "0.0.0.0:9153".to_owned(),
            format!("127.0.0.1:{}", crate::harness::free_port()?),
        ),
    ] {
        config = replaced(&config, &from, &to)?;
    }
    let config_path = root.path().join("pg2dns.toml");
    std::fs::write(&config_path, config)?;
    let setup = pg2dns::command("setup", &config_path).await?;
    ensure!(
        setup.status.success(),
        "setup:\n{}{}",
        String::from_utf8_lossy(&setup.stdout),
        String::from_utf8_lossy(&setup.stderr)
    );
    let run =
        crate::harness::Pg2dns::spawn_run(&config_path, &root.path().join("pg2dns.log"), &[], &[])?;
    pg.connect()
        .await?
        .batch_execute(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES
               ('www.example.test.', 300, 'A', '192.0.2.10'),
               ('10.2.0.192.in-addr.arpa.', 300, 'PTR', 'www.example.test.')",
        )
        .await?;
    for (name, rtype, wanted) in [
        ("www.example.test", "A", "192.0.2.10"),
        ("10.2.0.192.in-addr.arpa", "PTR", "www.example.test."),
    ] {
        wait_until(DEADLINE, &format!("{name} {rtype} is {wanted}"), || async {
            let answer = dig(dns_port, name, rtype).await?;
            Ok(if answer == wanted {
                Check::Done(())
            } else {
                Check::NotYet(format!(
                    "{answer:?}; pg2dns's log:\n{}named's log:\n{}",
                    run.log_tail(20),
                    named_tail()
                ))
            })
        })
        .await?;
    }
    Ok(())
}

#[test]
fn the_dockerfile_builds_in_stages_and_runs_as_a_non_root_user_exposing_the_metrics_port(
) -> Result<()> {
    let dockerfile = read("Dockerfile")?;
    // Instructions, with continuation lines joined and comments dropped.
    let joined = dockerfile.replace("\\\n", " ");
    let instructions: Vec<(String, String)> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (word, rest) = l.split_once(char::is_whitespace)?;
            Some((word.to_uppercase(), rest.trim().to_owned()))
        })
        .collect();
    let stages: Vec<&String> = instructions
        .iter()
        .filter(|(w, _)| w == "FROM")
        .map(|(_, rest)| rest)
        .collect();
    ensure!(stages.len() >= 2, "the Dockerfile has stages {stages:?}");
    // The builder's Rust is at least the workspace's rust-version.
    let builder = stages[0];
    let rust = builder
        .strip_prefix("rust:")
        .and_then(|r| r.split('-').next())
        .with_context(|| format!("the builder is {builder:?}, not a rust: image"))?;
    ensure!(
        builder.contains("-slim-bookworm") && builder.ends_with(" AS build"),
        "the builder stage is {builder:?}"
    );
    let workspace: toml::Value = read("Cargo.toml")?.parse()?;
    let wanted = workspace
        .get("workspace")
        .and_then(|w| w.get("package"))
        .and_then(|p| p.get("rust-version"))
        .and_then(|v| v.as_str())
        .context("the workspace's rust-version")?;
    let version = |v: &str| -> Vec<u32> { v.split('.').filter_map(|n| n.parse().ok()).collect() };
    ensure!(
        version(rust) >= version(wanted),
        "the builder's Rust {rust} is older than rust-version {wanted}"
    );
    ensure!(
        stages.last().map(|s| s.as_str()) == Some("debian:bookworm-slim"),
        "the runtime stage is {:?}",
        stages.last()
    );
    let after_last_from = instructions
        .iter()
        .rposition(|(w, _)| w == "FROM")
        .context("a FROM")?;
    let runtime = &instructions[after_last_from..];
    ensure!(
        runtime
            .iter()
            .any(|(w, rest)| w == "COPY" && rest.starts_with("--from=build")),
        "the runtime stage copies nothing from the build stage"
    );
    let user = runtime
        .iter()
        .filter(|(w, _)| w == "USER")
        .map(|(_, rest)| rest.as_str())
        .next_back()
        .context("the runtime stage sets no USER")?;
    let user_name = user.split(':').next().unwrap_or(user);
    ensure!(
        !["root", "0"].contains(&user_name),
        "the image runs as {user}"
    );
    ensure!(
        runtime
            .iter()
            .any(|(w, rest)| w == "EXPOSE" && rest.split_whitespace().any(|p| p == "9153")),
        "the image does not EXPOSE the metrics port 9153"
    );
    ensure!(
        runtime
            .iter()
            .any(|(w, rest)| w == "HEALTHCHECK" && rest.contains("/readyz")),
        "the image has no HEALTHCHECK on /readyz"
    );
    // The build context keeps what cargo needs (the integration test's
    // path is part of the manifest) and leaves out the build output.
    let ignored: Vec<String> = read(".dockerignore")?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    for needed in ["target", ".git"] {
        ensure!(
            ignored.iter().any(|i| i == needed),
            ".dockerignore does not leave out {needed}"
        );
    }
    for kept in ["tests", "decoder", "streamer", "sql", "Cargo.lock"] {
        ensure!(
            !ignored.iter().any(|i| i == kept),
            ".dockerignore leaves out {kept}, which the build needs"
        );
    }
    Ok(())
}

/// `key=value` lines of a systemd unit, by key (several values kept).
fn unit_settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut settings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            settings
                .entry(key.trim().to_owned())
                .or_default()
                .push(value.trim().to_owned());
        }
    }
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systemd_unit_is_type_notify_restarts_on_failure_reloads_with_sighup_and_is_hardened(
) -> Result<()> {
    let text = read("packaging/systemd/pg2dns.service")?;
    let settings = unit_settings(&text);
    let one = |key: &str| -> Option<&str> {
        settings.get(key).and_then(|v| v.last()).map(String::as_str)
    };
    for (key, value) in [
        ("Type", "notify"),
        ("Restart", "on-failure"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("DynamicUser", "yes"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        ensure!(
            one(key) == Some(value),
            "the unit has {key}={:?}, not {value}",
            one(key)
        );
    }
    ensure!(
        one("ExecStart").is_some_and(|s| s.contains(" run ")),
        "ExecStart is {:?}",
        one("ExecStart")
    );
    // systemd-analyze verify, when there is one (it needs no running
    // systemd): the unit parses without a warning. ExecStart must exist,
    // so the copy runs the binary under test.
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
    else {
        eprintln!("systemd-analyze is not installed: `systemd-analyze verify` of the unit skipped");
        return Ok(());
    };
    let dir = TempDir::new("systemd-unit")?;
    let unit = dir.path().join("pg2dns.service");
    std::fs::write(
        &unit,
        text.replace(
            "/usr/local/bin/pg2dns",
            &pg2dns::binary().display().to_string(),
        ),
    )?;
    let mut command = tokio::process::Command::new(analyze);
    command.arg("verify").arg("--man=no").arg(&unit);
    let output = crate::harness::run_unchecked(&mut command, DEADLINE).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify ({}):\n{stderr}",
        output.status
    );
    Ok(())
}

/// The notifications received on `socket` so far, appended to `seen`.
fn receive(socket: &UnixDatagram, seen: &mut Vec<String>) -> Result<()> {
    let mut buffer = [0u8; 4096];
    loop {
        match socket.recv(&mut buffer) {
            Ok(n) => seen.push(String::from_utf8_lossy(&buffer[..n]).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until a notification holding `wanted` arrives; returns it.
async fn wait_for_notification(
    socket: &UnixDatagram,
    seen: &mut Vec<String>,
    wanted: &str,
    run: &crate::harness::Pg2dns,
) -> Result<String> {
    let from = seen.len();
    wait_until(DEADLINE, &format!("pg2dns notifies {wanted:?}"), || {
        let got = receive(socket, seen).map(|()| {
            match seen[from..].iter().find(|m| m.lines().any(|l| l == wanted)) {
                Some(m) => Check::Done(m.clone()),
                None => Check::NotYet(format!(
                    "notifications {:?}; the log:\n{}",
                    &seen[from..],
                    run.log_tail(20)
                )),
            }
        });
        std::future::ready(got)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_tells_systemd_it_is_ready_once_streaming_reloading_on_sighup_and_stopping_on_sigterm(
) -> Result<()> {
    let stack = Stack::start("notify", Primary::Bind).await?;
    let path = stack.dir().join("notify.sock");
    let socket = UnixDatagram::bind(&path)?;
    socket.set_nonblocking(true)?;
    let mut run = stack.run_with(&[("NOTIFY_SOCKET", &path.display().to_string())])?;
    let mut seen = Vec::new();
    let ready = wait_for_notification(&socket, &mut seen, "READY=1", &run).await?;
    ensure!(
        ready.contains("STATUS=streaming from slot pg2dns"),
        "READY=1 came with {ready:?}"
    );
    // Ready means streaming: a row written now reaches DNS.
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('ready.example.test.', 300, 'A', '192.0.2.7')")
        .await?;
    stack
        .wait_until_answers("ready.example.test.", "A", DEADLINE)
        .await?;
    crate::harness::signal(run.pid(), "HUP")?;
    wait_for_notification(&socket, &mut seen, "RELOADING=1", &run).await?;
    let again = wait_for_notification(&socket, &mut seen, "READY=1", &run).await?;
    ensure!(
        again.contains("STATUS=streaming"),
        "READY=1 after the reload came with {again:?}"
    );
    let status = run.terminate().await?;
    ensure!(status.success(), "pg2dns exited with {status}");
    wait_for_notification(&socket, &mut seen, "STOPPING=1", &run).await?;
    ensure!(
        seen.iter().all(|m| !m.contains('\u{1b}')),
        "a notification carries colour: {seen:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_service_tells_systemd_it_is_ready_and_why() -> Result<()> {
    let stack = Stack::start("notify-halt", Primary::Bind).await?;
    let wrong = stack.write_wrong_key_file().await?;
    stack.write_config(&[(crate::harness::stack::FORWARD, &wrong)])?;
    let path = stack.dir().join("notify.sock");
    let socket = UnixDatagram::bind(&path)?;
    socket.set_nonblocking(true)?;
    // As a service runs it: a halt leaves the process up.
    let run = crate::harness::Pg2dns::spawn_run(
        stack.config_path(),
        &stack.dir().join("notify-halt.log"),
        &[("NOTIFY_SOCKET", &path.display().to_string())],
        &[],
    )?;
    let mut seen = Vec::new();
    wait_for_notification(&socket, &mut seen, "READY=1", &run).await?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('halt.example.test.', 300, 'A', '192.0.2.5')")
        .await?;
    let halted = wait_for_notification(&socket, &mut seen, "READY=1", &run).await?;
    ensure!(
        halted.contains("STATUS=halted: ") && halted.contains("hint: "),
        "the halt was notified as {halted:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_a_file_carry_no_colour_and_json_logs_are_one_object_a_line() -> Result<()> {
    let stack = Stack::start("logs", Primary::Bind).await?;
    // Text, as a service writes it: stderr into a file, NO_COLOR unset.
    let mut text = stack.run_with(&[("NO_COLOR", "")])?;
    wait_until(DEADLINE, "pg2dns logs that it streams", || {
        let log = text.log();
        std::future::ready(Ok(if log.contains("streaming") {
            Check::Done(())
        } else {
            Check::NotYet(log)
        }))
    })
    .await?;
    text.terminate().await?;
    let log = text.log();
    ensure!(
        !log.contains('\u{1b}'),
        "the text log carries ANSI codes:\n{log:?}"
    );
    // JSON: every line an object with a level and a message.
    let mut json = stack.run_with(&[("PG2DNS_LOG_FORMAT", "json")])?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('json.example.test.', 300, 'A', '192.0.2.8')")
        .await?;
    stack
        .wait_until_answers("json.example.test.", "A", DEADLINE)
        .await?;
    json.terminate().await?;
    let all = json.log();
    let lines: Vec<&str> = all.lines().collect();
    ensure!(!lines.is_empty(), "the JSON run logged nothing");
    let mut messages = Vec::new();
    for line in &lines {
        let object: Value = serde_json::from_str(line)
            .with_context(|| format!("a JSON log line is not JSON: {line:?}"))?;
        let level = object.get("level").and_then(Value::as_str);
        let message = object.pointer("/fields/message").and_then(Value::as_str);
        match (level, message) {
            (Some(_), Some(m)) => messages.push(m.to_owned()),
            _ => bail!("a JSON log line without level or message: {line}"),
        }
    }
    ensure!(
        messages.iter().any(|m| m == "streaming"),
        "the JSON log never says it streams: {messages:?}"
    );
    let streaming = lines
        .iter()
        .find(|l| l.contains("\"streaming\""))
        .context("the streaming line")?;
    let object: Value = serde_json::from_str(streaming)?;
    ensure!(
        object.pointer("/fields/slot") == Some(&Value::from("pg2dns")),
        "the streaming line's fields are not structured: {streaming}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setups_refusal_of_a_first_load_carries_no_colour_off_a_terminal() -> Result<()> {
    let stack = Stack::start("first-load-colour", Primary::Bind).await?;
    // Records in DNS that a new instance's first load would have to delete,
    // more than reconcile.max_change_share allows without --force.
    let mut run = stack.run()?;
    stack
        .exec(
            "INSERT INTO pg2dns.rr (owner, ttl, type, rdata)
               SELECT 'h' || g || '.example.test.', 300, 'A', '192.0.2.' || g
               FROM generate_series(1, 20) AS g",
        )
        .await?;
    stack.wait_until_dns_matches_table(DEADLINE).await?;
    run.terminate().await?;
    stack.exec("DELETE FROM pg2dns.rr").await?;
    let fresh = stack.dir().join("fresh.toml");
    let text = std::fs::read_to_string(stack.config_path())?;
    std::fs::write(
        &fresh,
        text.replacen("slot = \"pg2dns\"", "slot = \"pg2dns_fresh\"", 1),
    )?;
    let setup = pg2dns::command_with(&["setup"], &fresh, &[("NO_COLOR", "")]).await?;
    let stdout = String::from_utf8_lossy(&setup.stdout);
    let stderr = String::from_utf8_lossy(&setup.stderr);
    // The first load would delete records pg2dns does not own: setup
    // refuses and shows its plan (reconcile's coloured summary).
    ensure!(
        setup.status.code() == Some(1)
            && stdout.contains("refused to delete")
            && stderr.contains("setup refused"),
        "setup did not refuse the first load with its plan:\n{stdout}{stderr}"
    );
    ensure!(
        !stdout.contains('\u{1b}') && !stderr.contains('\u{1b}'),
        "setup's output carries ANSI codes:\n{stdout:?}\n{stderr:?}"
    );
    Ok(())
}

/// The `pg2dns_*` names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("pg2dns_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The series names `/metrics` declares, from its `# TYPE` lines
/// (a counter `x` is sampled as `x_total`, a histogram as `x_bucket`,
/// `x_sum` and `x_count`; the text format 0.0.4 names a counter's family
/// `x_total` already, OpenMetrics `x`).
fn exported(body: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in body.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#") || words.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" if name.ends_with("_total") => &[""],
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        for suffix in suffixes {
            names.insert(format!("{name}{suffix}"));
        }
    }
    names
}

async fn http_get(addr: &str, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).await?;
    Ok(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerting_rules_and_the_dashboard_use_is_exported() -> Result<()> {
    let rules = yaml("packaging/prometheus/pg2dns.rules.yml")?;
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let groups = rules
        .get("groups")
        .and_then(Value::as_array)
        .context("the rules file has groups")?;
    for rule in groups
        .iter()
        .filter_map(|g| g.get("rules")?.as_array())
        .flatten()
    {
        let name = rule
            .get("alert")
            .and_then(Value::as_str)
            .context("a rule without alert")?;
        let expr = rule
            .get("expr")
            .and_then(Value::as_str)
            .with_context(|| format!("alert {name} has no expr"))?;
        ensure!(
            rule.pointer("/labels/severity").is_some()
                && rule.pointer("/annotations/summary").is_some(),
            "alert {name} has no severity or summary"
        );
        used.insert(format!("alert {name}"), metric_names(expr));
    }
    for wanted in [
        "Pg2dnsHalted",
        "Pg2dnsLagging",
        "Pg2dnsHeldByGuard",
        "Pg2dnsWalRetained",
        "Pg2dnsSlotLost",
        "Pg2dnsPrimaryUnreachable",
        "Pg2dnsRejectionsRising",
    ] {
        ensure!(
            used.contains_key(&format!("alert {wanted}")),
            "no alert {wanted}"
        );
    }
    let dashboard: Value = serde_json::from_str(&read("packaging/grafana/pg2dns.json")?)?;
    let panels = dashboard
        .get("panels")
        .and_then(Value::as_array)
        .context("the dashboard has panels")?;
    ensure!(
        panels.len() >= 6,
        "the dashboard has {} panels",
        panels.len()
    );
    for panel in panels {
        let title = panel.get("title").and_then(Value::as_str).unwrap_or("?");
        for target in panel
            .get("targets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let expr = target.get("expr").and_then(Value::as_str).unwrap_or("");
            used.entry(format!("panel {title:?}"))
                .or_default()
                .extend(metric_names(expr));
        }
    }
    for variable in dashboard
        .pointer("/templating/list")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(query) = variable.get("query").and_then(Value::as_str) {
            used.entry("dashboard variables".into())
                .or_default()
                .extend(metric_names(query));
        }
    }
    // What a running pg2dns exports, after it applied a transaction.
    let stack = Stack::start("monitoring", Primary::Bind).await?;
    let addr = format!("127.0.0.1:{}", crate::harness::free_port()?);
    stack.append_config(&format!("[metrics]\nlisten = \"{addr}\"\n"))?;
    let mut run = stack.run()?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('seen.example.test.', 300, 'A', '192.0.2.6')")
        .await?;
    stack
        .wait_until_answers("seen.example.test.", "A", DEADLINE)
        .await?;
    // The error counter has a series once something failed: end the
    // replication connection (pg2dns retries).
    let terminated: i64 = stack
        .db
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) AS done
             FROM pg_stat_replication WHERE application_name = 'pg2dns') t WHERE done",
            &[],
        )
        .await?
        .get(0);
    ensure!(terminated == 1, "pg2dns had {terminated} walsenders");
    // Default: every metric used but the per-zone ones; then, restarted with
    // [metrics] per_zone = true, every one.
    wait_until_exported(&addr, &used, &PER_ZONE_ONLY, &run).await?;
    run.terminate().await?;
    let text = std::fs::read_to_string(stack.config_path())?;
    let start = text.find("[metrics]").context("the [metrics] table")?;
    let per_zone_addr = format!("127.0.0.1:{}", crate::harness::free_port()?);
    let config = stack.dir().join("per-zone.toml");
    std::fs::write(
        &config,
        format!(
            "{}[metrics]\nlisten = \"{per_zone_addr}\"\nper_zone = true\n",
            &text[..start]
        ),
    )?;
    let per_zone = crate::harness::Pg2dns::spawn(&config, &stack.dir().join("per-zone.log"), &[])?;
    stack
        .exec("INSERT INTO pg2dns.rr (owner, ttl, type, rdata) VALUES ('again.example.test.', 300, 'A', '192.0.2.7')")
        .await?;
    wait_until_exported(&per_zone_addr, &used, &[], &per_zone).await?;
    ensure!(
        used.values().map(BTreeSet::len).sum::<usize>() > 10,
        "the rules and the dashboard name almost no metric: {used:?}"
    );
    // promtool, when installed, checks the rules' syntax and runs their
    // unit tests (packaging/prometheus/pg2dns.rules.test.yml).
    for args in [
        ["check", "rules", "pg2dns.rules.yml"],
        ["test", "rules", "pg2dns.rules.test.yml"],
    ] {
        let Ok(output) = std::process::Command::new("promtool")
            .args(args)
            .current_dir(repo().join("packaging/prometheus"))
            .output()
        else {
            eprintln!(
                "promtool is not installed: `promtool {}` skipped",
                args.join(" ")
            );
            continue;
        };
        ensure!(
            output.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Families exported only with `[metrics] per_zone = true` (a zone's SOA
/// serial is its own; by default the zone families name the primary).
const PER_ZONE_ONLY: [&str; 1] = ["pg2dns_zone_soa_serial"];

/// Waits until `/metrics` on `addr` declares every metric of `used` not in
/// `except`.
async fn wait_until_exported(
    addr: &str,
    used: &BTreeMap<String, BTreeSet<String>>,
    except: &[&str],
    run: &crate::harness::Pg2dns,
) -> Result<()> {
    wait_until(DEADLINE, "/metrics exports every metric used", || async {
        Ok(match http_get(addr, "/metrics").await {
            Ok(body) => {
                let exported = exported(&body);
                let missing: Vec<String> = used
                    .iter()
                    .flat_map(|(user, names)| {
                        names
                            .iter()
                            .filter(|n| !exported.contains(*n) && !except.contains(&n.as_str()))
                            .map(move |n| format!("{user}: {n}"))
                    })
                    .collect();
                if missing.is_empty() {
                    Check::Done(())
                } else {
                    Check::NotYet(format!(
                        "used but not exported:\n{}\n/metrics:\n{body}",
                        missing.join("\n")
                    ))
                }
            }
            Err(e) => Check::NotYet(format!("{e}; the log:\n{}", run.log_tail(20))),
        })
    })
    .await
}

/// The container's health check, as docker-compose.yml runs it in the
/// pg2dns service (the Dockerfile's HEALTHCHECK is the same command).
fn health_check_command() -> Result<Vec<String>> {
    let compose = yaml("docker-compose.yml")?;
    let test = strings(service(&compose, "pg2dns")?.pointer("/healthcheck/test"));
    ensure!(
        test.first().map(String::as_str) == Some("CMD"),
        "the health check is {test:?}"
    );
    let dockerfile = read("Dockerfile")?.replace("\\\n", " ");
    let in_image = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("HEALTHCHECK"))
        .and_then(|l| l.split_once("CMD "))
        .context("the Dockerfile has no HEALTHCHECK … CMD")?
        .1;
    let in_image: Vec<String> = serde_json::from_str(in_image.trim())
        .with_context(|| format!("the HEALTHCHECK's CMD {in_image:?} is not a JSON array"))?;
    ensure!(
        in_image == test[1..],
        "the Dockerfile checks {in_image:?}, docker-compose.yml {:?}",
        &test[1..]
    );
    Ok(test[1..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_containers_health_check_passes_while_streaming_and_fails_while_paused() -> Result<()> {
    let check = health_check_command()?;
    let stack = Stack::start("health-check", Primary::Bind).await?;
    let port = crate::harness::free_port()?;
    stack.append_config(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"))?;
    let run = stack.run()?;
    // The same command, on this test's port.
    let healthy = || async {
        let mut command = tokio::process::Command::new(&check[0]);
        command.args(
            check[1..]
                .iter()
                .map(|a| a.replace("9153", &port.to_string())),
        );
        let output = crate::harness::run_unchecked(&mut command, DEADLINE).await?;
        anyhow::Ok(output.status.success())
    };
    wait_until(DEADLINE, "the health check passes", || async {
        Ok(if healthy().await? {
            Check::Done(())
        } else {
            Check::NotYet(run.log_tail(20))
        })
    })
    .await?;
    stack.admin(&["pause", "--wait"]).await?;
    wait_until(DEADLINE, "the health check fails while paused", || async {
        Ok(if healthy().await? {
            Check::NotYet(run.log_tail(20))
        } else {
            Check::Done(())
        })
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_the_man_page_are_generated_from_the_command_line() -> Result<()> {
    let dir = TempDir::new("completions")?;
    let unused = dir.path().join("none.toml");
    for (args, wanted) in [
        (&["completions", "bash"][..], "reconcile"),
        (&["completions", "zsh"][..], "check-config"),
        (&["completions", "fish"][..], "allow-mass-delete"),
        (&["man"][..], ".TH pg2dns 1"),
    ] {
        let output = pg2dns::command_with(args, &unused, &[]).await?;
        let printed = String::from_utf8_lossy(&output.stdout);
        ensure!(
            output.status.success() && printed.contains(wanted),
            "pg2dns {args:?} ({}) printed no {wanted:?}:\n{printed}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Hidden from the help: they are for packagers.
    let output = pg2dns::command_with(&["--help"], &unused, &[]).await?;
    let help = String::from_utf8_lossy(&output.stdout);
    ensure!(
        !help.contains("completions") && help.contains("--log-format"),
        "--help:\n{help}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_names_the_git_revision_it_was_built_from() -> Result<()> {
    let revision = std::process::Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .current_dir(repo())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let mut command = tokio::process::Command::new(pg2dns::binary());
    command.arg("--version");
    let output = crate::harness::run(&mut command, DEADLINE).await?;
    let printed = String::from_utf8_lossy(&output.stdout);
    let wanted = format!("pg2dns {} ({revision})", env!("CARGO_PKG_VERSION"));
    ensure!(
        printed.trim() == wanted,
        "--version printed {printed:?}, not {wanted:?}"
    );
    Ok(())
}
