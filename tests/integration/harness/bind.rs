//! A BIND `named` for one test, serving TSIG-protected dynamic zones.
//!
//! Each zone starts with only its apex SOA and NS (the NS target lies outside
//! every test zone, so BIND needs no glue). `allow-update` and
//! `allow-transfer` name one key, made by `tsig-keygen -a hmac-sha256` — the
//! same file pg2dns reads. named runs in the foreground (`-g`, which also
//! sends its log to stderr, kept in a file), listens only on 127.0.0.1 at a
//! free port, and has no control channel. It can be stopped and started
//! again on the same port with the same zone files and journals, to play an
//! outage.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::Command;

use super::records::{canonical_name, parse_dig_answer, Record};
use super::{free_port, log_tail, run, run_unchecked, tools};

/// The name of the TSIG key the test servers trust.
pub const KEY_NAME: &str = "pg2dns-test-key";

/// A running (or deliberately stopped) `named`; killed on drop.
#[derive(Debug)]
pub struct Bind {
    dir: PathBuf,
    port: u16,
    zones: Vec<String>,
    key_file: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Bind {
    /// Writes the key, the zone files and named.conf in `dir/bind`, starts
    /// named and waits until it answers an SOA query for every zone.
    pub async fn start(dir: &Path, zones: &[&str]) -> Result<Bind> {
        let dir = dir.join("bind");
        std::fs::create_dir_all(&dir)?;
        let key_file = dir.join("tsig.key");
        write_key_file(&key_file, KEY_NAME).await?;
        let zones: Vec<String> = zones.iter().map(|z| canonical_name(z)).collect();
        let port = free_port()?;
        let mut conf = format!(
            "include \"{key}\";\n\
             options {{\n\
             \tdirectory \"{dir}\";\n\
             \tpid-file \"{dir}/named.pid\";\n\
             \tsession-keyfile \"{dir}/session.key\";\n\
             \tmanaged-keys-directory \"{dir}\";\n\
             \tlisten-on port {port} {{ 127.0.0.1; }};\n\
             \tlisten-on-v6 {{ none; }};\n\
             \trecursion no;\n\
             \tdnssec-validation no;\n\
             \tnotify no;\n\
             \tallow-transfer {{ key {KEY_NAME}; }};\n\
             }};\n\
             controls {{ }};\n",
            key = key_file.display(),
            dir = dir.display(),
        );
        for zone in &zones {
            let file = dir.join(format!("{zone}zone"));
            std::fs::write(
                &file,
                "$TTL 3600\n\
                 @ IN SOA ns.pg2dns.invalid. hostmaster.pg2dns.invalid. 1 3600 600 86400 60\n\
                 @ IN NS ns.pg2dns.invalid.\n",
            )?;
            conf.push_str(&format!(
                "zone \"{zone}\" {{\n\
                 \ttype primary;\n\
                 \tfile \"{file}\";\n\
                 \tallow-update {{ key {KEY_NAME}; }};\n\
                 }};\n",
                file = file.display()
            ));
        }
        let conf_path = dir.join("named.conf");
        std::fs::write(&conf_path, conf)?;
        let mut bind = Bind {
            log: dir.join("named.log"),
            dir,
            port,
            zones,
            key_file,
            conf: conf_path,
            child: None,
        };
        bind.start_again().await?;
        Ok(bind)
    }

    /// `127.0.0.1:PORT`, the address pg2dns sends UPDATEs to.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The zones served, canonical (`example.test.`).
    pub fn zones(&self) -> &[String] {
        &self.zones
    }

    /// The key file (tsig-keygen's format) that BIND trusts.
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// The directory holding named's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops named with SIGTERM and waits for it to exit (it writes its
    /// journals first).
    pub async fn stop(&mut self) -> Result<()> {
        let Some(child) = self.child.take() else {
            bail!("named is not running");
        };
        super::terminate(child, "named").await
    }

    /// Starts named (again) on the same port with the same files, and waits
    /// until it answers an SOA query for every zone.
    pub async fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("named is already running");
        }
        let tools = tools()?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = std::process::Command::new(&tools.named)
            .arg("-g")
            .arg("-c")
            .arg(&self.conf)
            .args(["-n", "1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", tools.named.display()))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        for zone in self.zones.clone() {
            loop {
                if let Some(child) = self.child.as_mut() {
                    if let Some(status) = child.try_wait()? {
                        self.child = None;
                        bail!(
                            "named exited ({status}) while starting; its log:\n{}",
                            self.log_tail(60)
                        );
                    }
                }
                let output = run_unchecked(
                    self.dig()
                        .args(["+norec", "+short", "+time=1", "+tries=1", "SOA"])
                        .arg(&zone),
                    Duration::from_secs(10),
                )
                .await?;
                let answer = String::from_utf8_lossy(&output.stdout);
                if output.status.success()
                    && answer
                        .lines()
                        .any(|l| l.contains("hostmaster.pg2dns.invalid."))
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "named on port {} does not answer SOA {zone} after 30 s ({}); its log:\n{}",
                        self.port,
                        answer.trim(),
                        self.log_tail(60)
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// The zone's records as a TSIG-signed AXFR returns them, without the
    /// apex SOA and NS (which pg2dns does not manage), sorted.
    pub async fn axfr(&self, zone: &str) -> Result<Vec<Record>> {
        let zone = canonical_name(zone);
        let output = run(
            self.dig()
                .arg("-k")
                .arg(&self.key_file)
                .args(["+noall", "+answer", "+time=5", "+tries=1", "AXFR"])
                .arg(&zone),
            Duration::from_secs(60),
        )
        .await?;
        let text = String::from_utf8_lossy(&output.stdout);
        let records = parse_dig_answer(&text).with_context(|| format!("AXFR of {zone}"))?;
        if !records.iter().any(|r| r.owner == zone && r.rtype == "SOA") {
            bail!("AXFR of {zone} returned no SOA:\n{text}");
        }
        let mut records: Vec<Record> = records
            .into_iter()
            .filter(|r| !r.is_apex_soa_or_ns(&zone))
            .collect();
        records.sort();
        records.dedup();
        Ok(records)
    }

    /// The answer to an ordinary query (`dig NAME TYPE`), sorted.
    pub async fn query(&self, name: &str, rtype: &str) -> Result<Vec<Record>> {
        let output = run(
            self.dig()
                .args(["+norec", "+noall", "+answer", "+time=2", "+tries=1"])
                .arg(name)
                .arg(rtype),
            Duration::from_secs(30),
        )
        .await?;
        let mut records = parse_dig_answer(&String::from_utf8_lossy(&output.stdout))?;
        records.sort();
        Ok(records)
    }

    /// Sends `update …` lines through `nsupdate -k`, as an operator would.
    pub async fn nsupdate(&self, updates: &str) -> Result<()> {
        let script = format!("server 127.0.0.1 {}\n{updates}\nsend\n", self.port);
        let path = self.dir.join("nsupdate.txt");
        std::fs::write(&path, script)?;
        run(
            Command::new(&tools()?.nsupdate)
                .arg("-v")
                .arg("-k")
                .arg(&self.key_file)
                .arg(&path),
            Duration::from_secs(30),
        )
        .await?;
        Ok(())
    }

    /// named's log, last lines.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    fn dig(&self) -> Command {
        let mut command = Command::new(&tools().expect("tools found at start").dig);
        command
            .arg("@127.0.0.1")
            .args(["-p", &self.port.to_string()]);
        command
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes a fresh key file with `tsig-keygen -a hmac-sha256 NAME`. Two calls
/// with the same name give the same key name with different secrets.
pub async fn write_key_file(path: &Path, name: &str) -> Result<()> {
    let output = run(
        Command::new(&tools()?.tsig_keygen).args(["-a", "hmac-sha256", name]),
        Duration::from_secs(30),
    )
    .await?;
    std::fs::write(path, &output.stdout).with_context(|| format!("writing {}", path.display()))
}
