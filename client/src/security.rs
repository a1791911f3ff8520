//! How a pifleet client logs in and checks whom it talks to: the MQTT user name and password, and
//! the TLS trust (a CA file, else the system's roots) for `mqtts://` and `wss://`.
//!
//! rumqttc is built without a crypto provider (ring is already in the tree; aws-lc-rs would add a
//! long C build), so it cannot make a TLS config by itself: [`transport`] builds the rustls
//! config here, once, for the agent, the CLI and the benchmark alike. Everything that can be
//! wrong with a CA or password file is found here, before any connection, as one sentence
//! naming the file.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::{TlsConfiguration, Transport};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;

use crate::broker_url::BrokerUrl;

/// An MQTT password. Its `Debug` prints only `(set)`, so the configs, options and errors that
/// carry one can be printed (`check-config`, logs, panics) without leaking it; the one way to
/// read it is [`Password::expose`], which is easy to find in a review.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Password(String);

impl Password {
    pub fn new(password: impl Into<String>) -> Self {
        Password(password.into())
    }

    /// The password itself, for the CONNECT packet and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reads a password file: the whole file, minus trailing line breaks (editors and
    /// `echo secret > file` add one that is not part of the password). An empty file is an
    /// error rather than an empty password, which would silently log in without one.
    pub fn from_file(path: &Path) -> Result<Password, SecurityError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecurityError::PasswordFile {
            path: path.to_path_buf(),
            source,
        })?;
        let password = text.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(SecurityError::PasswordFileEmpty(path.to_path_buf()));
        }
        Ok(Password(password.to_string()))
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(set)")
    }
}

/// Login and TLS trust for one client. The default is what pifleet did before authentication
/// existed: no login, and the system's roots if the URL asks for TLS.
///
/// `Debug` is safe to print: the password shows as `(set)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// The MQTT user name. A broker with authentication takes it as the client's identity, so
    /// it also decides which topics the client may use.
    pub username: Option<String>,
    /// Sent only with a user name: MQTT 3.1.1 has no password without one.
    pub password: Option<Password>,
    /// A PEM file with the certificate(s) of the CA that signed the broker's certificate, for a
    /// broker with a private CA (the usual case for a home fleet). Without it the system's
    /// trusted roots are used, which is right for a broker with a public certificate.
    pub ca_file: Option<PathBuf>,
}

impl Security {
    /// The user name, if one is set and not empty (an empty one means none: MQTT cannot send a
    /// password without a user name, and a broker cannot tell an empty name from none).
    pub fn user(&self) -> Option<&str> {
        self.username.as_deref().filter(|u| !u.is_empty())
    }
}

/// A login or TLS setting that cannot be used, naming the file or setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot read the CA file {path}: {source}")]
    CaFileRead { path: PathBuf, source: io::Error },
    #[error("the CA file {path} cannot be used: {reason}")]
    CaFileInvalid { path: PathBuf, reason: String },
    #[error(
        "the CA file {0} holds no certificate (expected PEM blocks that start with \
         -----BEGIN CERTIFICATE-----)"
    )]
    CaFileEmpty(PathBuf),
    #[error(
        "found no trusted root certificates on this system ({0}); give the broker's CA \
         certificate as the CA file"
    )]
    NoSystemRoots(String),
    #[error(
        "a CA file ({path}) was given, but {url} does not use TLS: use mqtts:// or wss:// \
         (or drop the CA file)"
    )]
    CaFileWithoutTls { path: PathBuf, url: String },
    #[error("cannot read the password file {path}: {source}")]
    PasswordFile { path: PathBuf, source: io::Error },
    #[error("the password file {0} is empty")]
    PasswordFileEmpty(PathBuf),
    #[error("a password was given without a user name (MQTT sends a password only with one)")]
    PasswordWithoutUser,
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// The rumqttc transport for `url`: plain TCP or WebSocket, or for `mqtts://` and `wss://` a
/// rustls config with the ring provider that trusts the CA file (else the system's roots).
///
/// [`crate::mqtt::client`] calls it; it is public so that a binary can check the CA file when it
/// checks its configuration, before anything connects.
pub fn transport(url: &BrokerUrl, security: &Security) -> Result<Transport, SecurityError> {
    if !url.scheme.is_tls() {
        return match &security.ca_file {
            // Ignoring it would send the password in clear text to a user who believes TLS is on.
            Some(path) => Err(SecurityError::CaFileWithoutTls {
                path: path.clone(),
                url: url.to_string(),
            }),
            None if url.scheme.is_websocket() => Ok(Transport::Ws),
            None => Ok(Transport::Tcp),
        };
    }
    let roots = match &security.ca_file {
        Some(path) => ca_file_roots(path)?,
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = TlsConfiguration::Rustls(Arc::new(config));
    Ok(if url.scheme.is_websocket() {
        Transport::Wss(tls)
    } else {
        Transport::Tls(tls)
    })
}

/// Every certificate in a PEM file (a CA bundle may hold several, e.g. a root and an
/// intermediate, or the old and the new CA during a rotation). Other PEM blocks, such as a key
/// pasted into the same file, are skipped.
fn ca_file_roots(path: &Path) -> Result<RootCertStore, SecurityError> {
    let invalid = |reason: String| SecurityError::CaFileInvalid {
        path: path.to_path_buf(),
        reason,
    };
    let read_error = |e: rustls_pki_types::pem::Error| match e {
        rustls_pki_types::pem::Error::Io(source) => SecurityError::CaFileRead {
            path: path.to_path_buf(),
            source,
        },
        other => invalid(format!("bad PEM ({other})")),
    };
    let mut roots = RootCertStore::empty();
    for (n, cert) in CertificateDer::pem_file_iter(path)
        .map_err(read_error)?
        .enumerate()
    {
        let cert = cert.map_err(read_error)?;
        roots.add(cert).map_err(|e| {
            let why = match e {
                rustls::Error::InvalidCertificate(c) => c.to_string(),
                other => other.to_string(),
            };
            invalid(format!(
                "certificate {} is not a usable X.509 certificate ({why})",
                n + 1
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(SecurityError::CaFileEmpty(path.to_path_buf()));
    }
    Ok(roots)
}

/// The operating system's trusted roots (on Linux the distribution's bundle; `SSL_CERT_FILE`
/// and `SSL_CERT_DIR` override it). A few unreadable entries are tolerated as long as some
/// roots load, as browsers and curl do.
fn system_roots() -> Result<RootCertStore, SecurityError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = match found.errors.first() {
            Some(e) => e.to_string(),
            None => "the certificate store is empty".to_string(),
        };
        return Err(SecurityError::NoSystemRoots(why));
    }
    Ok(roots)
}

/// Test fixtures shared with the handshake tests in [`crate::mqtt`].
#[cfg(test)]
pub(crate) mod fixtures {
    use std::path::PathBuf;

    /// `testdata/tls/<name>` (see `testdata/tls/gen.sh`).
    pub fn path(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/tls")
            .join(name)
    }

    /// A file under the system temp directory that is removed when dropped.
    /// A file with `contents` under the system temp dir, removed on drop.
    pub struct TempFile(tempfile::NamedTempFile);

    impl TempFile {
        pub fn new(tag: &str, contents: &[u8]) -> TempFile {
            let mut f = tempfile::Builder::new()
                .prefix("pifleet-test-")
                .suffix(&format!("-{tag}"))
                .tempfile()
                .expect("create temp file");
            std::io::Write::write_all(&mut f, contents).expect("write temp file");
            TempFile(f)
        }

        pub fn path(&self) -> &std::path::Path {
            self.0.path()
        }
    }
}

#[cfg(test)]
mod test {
    use super::fixtures::{path, TempFile};
    use super::*;

    fn url(s: &str) -> BrokerUrl {
        s.parse().unwrap()
    }

    fn with_ca(ca: &Path) -> Security {
        Security {
            ca_file: Some(ca.to_path_buf()),
            ..Security::default()
        }
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let s = Security {
            username: Some("alice".into()),
            password: Some(Password::new("hunter2-very-secret")),
            ca_file: None,
        };
        for shown in [format!("{s:?}"), format!("{s:#?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(
                shown.contains("alice") && shown.contains("(set)"),
                "{shown}"
            );
        }
        assert_eq!(s.password.as_ref().unwrap().expose(), "hunter2-very-secret");
    }

    #[test]
    fn password_files_lose_their_trailing_newline_only() {
        let f = TempFile::new("pw", b"  s3cret pass \r\n");
        assert_eq!(
            Password::from_file(f.path()).unwrap().expose(),
            "  s3cret pass "
        );
        let f = TempFile::new("pw", b"s3cret");
        assert_eq!(Password::from_file(f.path()).unwrap().expose(), "s3cret");
        let f = TempFile::new("pw", b"\n");
        let e = Password::from_file(f.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("the password file {} is empty", f.path().display())
        );
        let e = Password::from_file(Path::new("/nonexistent/pifleet-pw")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read the password file /nonexistent/pifleet-pw: "),
            "{e}"
        );
    }

    #[test]
    fn plain_schemes_need_no_tls_config() {
        let s = Security::default();
        assert!(matches!(
            transport(&url("mqtt://h"), &s),
            Ok(Transport::Tcp)
        ));
        assert!(matches!(transport(&url("ws://h"), &s), Ok(Transport::Ws)));
    }

    #[test]
    fn tls_schemes_trust_the_ca_file() {
        let s = with_ca(&path("ca.pem"));
        assert!(matches!(
            transport(&url("mqtts://h"), &s),
            Ok(Transport::Tls(TlsConfiguration::Rustls(_)))
        ));
        assert!(matches!(
            transport(&url("wss://h"), &s),
            Ok(Transport::Wss(TlsConfiguration::Rustls(_)))
        ));
        // A bundle with several certificates, and a key block among them, is fine.
        let mut bundle = std::fs::read(path("other-ca.pem")).unwrap();
        bundle.extend(std::fs::read(path("server.key")).unwrap());
        bundle.extend(std::fs::read(path("ca.pem")).unwrap());
        let f = TempFile::new("bundle.pem", &bundle);
        assert_eq!(ca_file_roots(f.path()).unwrap().len(), 2);
    }

    #[test]
    fn a_bad_ca_file_is_one_sentence_naming_it() {
        let u = url("mqtts://h");
        let e = transport(&u, &with_ca(Path::new("/nonexistent/ca.pem")))
            .err()
            .expect("refused");
        assert!(
            e.to_string()
                .starts_with("cannot read the CA file /nonexistent/ca.pem: "),
            "{e}"
        );

        let f = TempFile::new("empty.pem", b"this is not a certificate\n");
        let e = transport(&u, &with_ca(f.path())).err().expect("refused");
        assert_eq!(
            e.to_string(),
            format!(
                "the CA file {} holds no certificate (expected PEM blocks that start with \
                 -----BEGIN CERTIFICATE-----)",
                f.path().display()
            )
        );

        // Only a key: no certificate either.
        let e = transport(&u, &with_ca(&path("server.key")))
            .err()
            .expect("refused");
        assert!(matches!(e, SecurityError::CaFileEmpty(_)), "{e}");

        let f = TempFile::new(
            "broken.pem",
            b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        );
        let e = transport(&u, &with_ca(f.path())).err().expect("refused");
        assert!(
            e.to_string().starts_with(&format!(
                "the CA file {} cannot be used: bad PEM (",
                f.path().display()
            )),
            "{e}"
        );

        let f = TempFile::new(
            "truncated.pem",
            b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n",
        );
        let e = transport(&u, &with_ca(f.path())).err().expect("refused");
        assert!(matches!(e, SecurityError::CaFileInvalid { .. }), "{e}");

        // Well-formed PEM around bytes that are not a certificate.
        let f = TempFile::new(
            "garbage.pem",
            b"-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
        );
        let e = transport(&u, &with_ca(f.path())).err().expect("refused");
        assert!(
            e.to_string()
                .contains("certificate 1 is not a usable X.509 certificate ("),
            "names the bad certificate: {e}"
        );
    }

    #[test]
    fn a_ca_file_on_a_plain_url_is_refused_rather_than_ignored() {
        let e = transport(&url("mqtt://h:1883"), &with_ca(&path("ca.pem")))
            .err()
            .expect("refused");
        assert_eq!(
            e.to_string(),
            format!(
                "a CA file ({}) was given, but mqtt://h:1883 does not use TLS: use mqtts:// or \
                 wss:// (or drop the CA file)",
                path("ca.pem").display()
            )
        );
    }

    #[test]
    fn without_a_ca_file_the_system_roots_are_used() {
        // Containers may have no CA bundle; then the error must say what to do instead.
        match transport(&url("mqtts://h"), &Security::default()) {
            Ok(t) => assert!(matches!(t, Transport::Tls(_))),
            Err(e) => {
                assert!(matches!(e, SecurityError::NoSystemRoots(_)), "{e}");
                assert!(e.to_string().contains("give the broker's CA certificate"));
            }
        }
    }
}
