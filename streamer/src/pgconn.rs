//! How pg2dns reaches PostgreSQL: the one place that opens SQL connections
//! ([`connect`]) and that turns the URL's TLS settings into the replication
//! connection's ([`replication_tls`]), so both kinds of connection honour the
//! same `sslmode` and CA file.
//!
//! `tokio_postgres::Config` parses `sslmode` only up to `require` and rejects
//! `sslrootcert`, so [`split_url`] takes the TLS keys out of the URL before it
//! is parsed: honoured are `sslmode` (`disable`, `prefer`, `require`,
//! `verify-ca`, `verify-full`) and `sslrootcert` (a PEM file of trusted CA
//! certificates). `sslmode=allow` and the client-certificate keys (`sslcert`,
//! `sslkey`, ...) are refused with an error naming them rather than ignored.
//! As in libpq, the default is `prefer` and `require` with an explicit
//! `sslrootcert` verifies the chain like `verify-ca`; unlike libpq, the
//! verifying modes need `sslrootcert` (there is no `~/.postgresql/root.crt`
//! lookup and no implicit system store).
//!
//! TLS is rustls with the `ring` provider on both connections:
//! `tokio-postgres-rustls` (the well-kept adapter, which also gives SCRAM its
//! channel binding) for SQL, pgwire-replication's own `tls-rustls` for
//! replication. Passwords (SCRAM-SHA-256; MD5 is not offered by the
//! replication crate) come from the URL or, when it has none, from `PGPASSWORD`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::DatabaseConfig;
use crate::store::{sql, StoreError};

/// libpq's `sslmode`, the values pg2dns honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS if the server offers it, without verifying the certificate.
    #[default]
    Prefer,
    /// TLS or nothing; the certificate is verified only when `sslrootcert`
    /// is given (then as `verify-ca`).
    Require,
    /// TLS, the chain verified against `sslrootcert`, any host name.
    VerifyCa,
    /// TLS, the chain verified and the host name (or IP address) matched.
    VerifyFull,
}

/// The URL's TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// The mode asked for.
    pub mode: SslMode,
    /// The trusted CA certificates (PEM), if given.
    pub root_cert: Option<PathBuf>,
}

impl TlsSettings {
    /// The mode in force: `require` with a CA file verifies like `verify-ca`.
    pub fn effective_mode(&self) -> SslMode {
        match (self.mode, &self.root_cert) {
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (mode, _) => mode,
        }
    }
}

/// Keys of libpq's that pg2dns does not implement: refused by name.
const UNSUPPORTED: &[&str] = &[
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslcompression",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "requirepeer",
    "passfile",
];

/// Takes the TLS keys out of a libpq URL (`postgresql://...?sslmode=...`)
/// or key/value string (`host=... sslmode=...`), returning what is left for
/// `tokio_postgres::Config` and the settings. Written by hand: no crate
/// parses libpq's full connection-string syntax, and only these few keys
/// need taking out. (Quoted values in the key/value form are left alone.)
pub fn split_url(url: &str) -> Result<(String, TlsSettings), String> {
    let mut tls = TlsSettings::default();
    let mut take = |key: &str, value: &str| -> Result<bool, String> {
        match key {
            "sslmode" => {
                tls.mode = match value {
                    "disable" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode={other} is not supported: use disable, prefer, require, verify-ca or verify-full"
                        ))
                    }
                };
                Ok(true)
            }
            "sslrootcert" => {
                if value == "system" {
                    return Err(
                        "sslrootcert=system is not supported: name a PEM file of CA certificates"
                            .into(),
                    );
                }
                tls.root_cert = Some(PathBuf::from(value));
                Ok(true)
            }
            k if UNSUPPORTED.contains(&k) => Err(format!(
                "{k} is not supported by pg2dns (honoured TLS keys: sslmode, sslrootcert)"
            )),
            _ => Ok(false),
        }
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(key, &percent_decode(value))? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            let taken = match word.split_once('=') {
                Some((key, value)) => take(key.trim(), value)?,
                None => false,
            };
            if !taken {
                kept.push(word);
            }
        }
        kept.join(" ")
    };
    if matches!(tls.mode, SslMode::VerifyCa | SslMode::VerifyFull) && tls.root_cert.is_none() {
        return Err(
            "sslmode=verify-ca and verify-full need sslrootcert=FILE (a PEM file of CA certificates)"
                .into(),
        );
    }
    Ok((rest, tls))
}

/// `%XX` escapes of a URL query value (a CA path may carry `%2F`).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(b) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens an SQL connection named `application_name`, with the URL's TLS
/// settings; its connection task is spawned (ending it with a warning).
pub async fn connect(
    db: &DatabaseConfig,
    application_name: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), StoreError> {
    let (client, connection) = connect_raw(db, application_name).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok((client, task))
}

/// The SQL connection and its driver, for callers that poll the driver
/// themselves (LISTEN).
pub type Connection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

/// [`connect`] without spawning the connection's driver.
pub async fn connect_raw(
    db: &DatabaseConfig,
    application_name: &str,
) -> Result<(tokio_postgres::Client, Connection), StoreError> {
    let mut pg = db.pg.clone();
    pg.application_name(application_name);
    pg.ssl_mode(match db.tls.mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    pg.connect(MakeRustlsConnect::new((*db.tls_client).clone()))
        .await
        .map_err(sql("cannot connect to PostgreSQL"))
}

/// Why the TLS settings of `[database].url` give no client configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The CA file cannot be read or holds a bad PEM block.
    #[error("sslrootcert {}", path.display())]
    Pem {
        /// The CA file.
        path: PathBuf,
        /// What the PEM reader said.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate of the CA file is refused as a trust anchor.
    #[error("sslrootcert {}", path.display())]
    Anchor {
        /// The CA file.
        path: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// The CA file holds no certificate.
    #[error("sslrootcert {}: holds no PEM certificate", path.display())]
    Empty {
        /// The CA file.
        path: PathBuf,
    },
    /// The protocol versions cannot be set up.
    #[error("TLS set-up")]
    Setup(#[source] rustls::Error),
    /// The certificate verifier cannot be built.
    #[error("TLS set-up")]
    Verifier(#[source] rustls::client::VerifierBuilderError),
}

/// The rustls client configuration for `tls` (the CA file is read here,
/// when the configuration is loaded, so a missing one is a configuration
/// error).
pub fn rustls_config(tls: &TlsSettings) -> Result<rustls::ClientConfig, TlsConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(match &tls.root_cert {
        Some(path) => load_roots(path)?,
        None => RootCertStore::empty(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsConfigError::Setup)?;
    let verifier: Arc<dyn ServerCertVerifier> = match tls.effective_mode() {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(AnyCertificate(provider)),
        mode => {
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(TlsConfigError::Verifier)?;
            if mode == SslMode::VerifyFull {
                inner
            } else {
                Arc::new(ChainOnly(inner))
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsConfigError> {
    let pem = |source| TlsConfigError::Pem {
        path: path.to_owned(),
        source,
    };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(pem)?;
    for cert in certs {
        roots
            .add(cert.map_err(pem)?)
            .map_err(|source| TlsConfigError::Anchor {
                path: path.to_owned(),
                source,
            })?;
    }
    if roots.is_empty() {
        return Err(TlsConfigError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

/// `prefer` and `require` without a CA file: libpq does not verify the
/// certificate either (encryption against passive listeners only).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the CA file; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The replication connection's TLS settings, the same as the SQL ones.
pub fn replication_tls(db: &DatabaseConfig) -> pgwire_replication::TlsConfig {
    use pgwire_replication::SslMode as M;
    let host = db.host();
    let mode = match db.tls.effective_mode() {
        SslMode::Disable => M::Disable,
        SslMode::Prefer => M::Prefer,
        SslMode::Require => M::Require,
        SslMode::VerifyCa => M::VerifyCa,
        SslMode::VerifyFull => M::VerifyFull,
    };
    pgwire_replication::TlsConfig {
        mode,
        ca_pem_path: db.tls.root_cert.clone(),
        // The crate refuses verify-full towards an IP address unless the
        // name is given: given, rustls matches it against the certificate's
        // IP addresses, as libpq does.
        sni_hostname: Some(host),
        client_cert_pem_path: None,
        client_key_pem_path: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_keys_are_taken_out_of_both_url_forms() {
        let (rest, tls) = split_url(
            "postgresql://u:p@db:5432/x?sslmode=verify-full&application_name=a&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgresql://u:p@db:5432/x?application_name=a");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert, Some(PathBuf::from("/etc/ca.pem")));

        let (rest, tls) = split_url("host=db sslmode=require user=u").unwrap();
        assert_eq!(rest, "host=db user=u");
        assert_eq!(tls.mode, SslMode::Require);
        assert_eq!(tls.effective_mode(), SslMode::Require);

        let (rest, tls) = split_url("postgresql://db/x").unwrap();
        assert_eq!(rest, "postgresql://db/x");
        assert_eq!(tls, TlsSettings::default());
        assert_eq!(tls.mode, SslMode::Prefer);
    }

    #[test]
    fn require_with_a_ca_file_verifies_the_chain() {
        let (_, tls) = split_url("postgresql://db/x?sslmode=require&sslrootcert=ca.pem").unwrap();
        assert_eq!(tls.effective_mode(), SslMode::VerifyCa);
    }

    #[test]
    fn unsupported_keys_and_modes_are_refused_by_name() {
        let e = split_url("postgresql://db/x?sslmode=allow").unwrap_err();
        assert!(e.contains("sslmode=allow"), "{e}");
        let e = split_url("postgresql://db/x?sslcert=c.pem").unwrap_err();
        assert!(e.contains("sslcert"), "{e}");
        let e = split_url("postgresql://db/x?sslmode=verify-full").unwrap_err();
        assert!(e.contains("sslrootcert"), "{e}");
    }
}
