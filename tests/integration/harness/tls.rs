//! A throwaway certificate authority for TLS tests: a self-signed CA, a
//! server certificate it signed for `localhost` and `127.0.0.1`, and a second,
//! unrelated CA (the "wrong" one), made with the `openssl` command.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::run;

/// The files of a test CA, in one directory.
#[derive(Debug, Clone)]
pub struct TestCa {
    /// The CA certificate that signed the server's (PEM).
    pub ca_cert: PathBuf,
    /// A CA certificate that signed nothing the server has (PEM).
    pub other_ca_cert: PathBuf,
    /// The server certificate (PEM), for `localhost` and `127.0.0.1`.
    pub server_cert: PathBuf,
    /// The server's private key (PEM).
    pub server_key: PathBuf,
}

async fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let mut command = tokio::process::Command::new("openssl");
    command.current_dir(dir).args(args);
    run(&mut command, Duration::from_secs(60))
        .await
        .map(drop)
        .context("openssl (install the openssl package)")
}

async fn self_signed_ca(dir: &Path, name: &str) -> Result<()> {
    let (key, cert) = (format!("{name}.key"), format!("{name}.crt"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "2",
            "-subj",
            &format!("/CN=pg2dns test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )
    .await
}

impl TestCa {
    /// Generates the CAs and the server certificate into `dir`.
    pub async fn generate(dir: &Path) -> Result<TestCa> {
        std::fs::create_dir_all(dir)?;
        self_signed_ca(dir, "ca").await?;
        self_signed_ca(dir, "other-ca").await?;
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName = DNS:localhost, IP:127.0.0.1\n\
             basicConstraints = CA:FALSE\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = serverAuth\n",
        )?;
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        )
        .await?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                "2",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.crt",
            ],
        )
        .await?;
        Ok(TestCa {
            ca_cert: dir.join("ca.crt"),
            other_ca_cert: dir.join("other-ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        })
    }
}
