//! Server TLS: loading a certificate and key into a rustls configuration, and
//! `tls self-signed`, which makes a private CA and a server certificate for fleets that have no
//! public DNS name (a broker on a home server reached by IP address or a `.local` name).
//!
//! A private CA rather than one self-signed server certificate: agents and the CLI trust
//! `ca.pem` once (`ca_file` / `--ca-file`), and the server certificate can be re-issued for new
//! host names without touching every Pi.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How long the CA is valid: long, because replacing it means visiting every Pi.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a server certificate is valid: re-issuing it only touches the broker.
pub const SERVER_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);

/// Why TLS could not be set up. Every variant names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {} is not a PEM file (expected a `-----BEGIN ...-----` line)", path.display())]
    NotPem { what: &'static str, path: PathBuf },
    #[error("{what} {} is not valid PEM: {message}", path.display())]
    BadPem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("certificate file {} holds no certificate (`-----BEGIN CERTIFICATE-----`)", .0.display())]
    NoCertificate(PathBuf),
    #[error("key file {} holds no private key (`-----BEGIN PRIVATE KEY-----`, `... EC PRIVATE KEY-----` or `... RSA PRIVATE KEY-----`)", .0.display())]
    NoKey(PathBuf),
    #[error("the key in {} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("certificate {} with key {}: {message}", cert.display(), key.display())]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    #[error("{} already exist; pass --force to replace them (agents trusting the old ca.pem will then need the new one)", list_paths(.0))]
    Exists(Vec<PathBuf>),
    #[error("--host {0:?} is neither an IP address nor a DNS name")]
    BadHost(String),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loads a certificate chain and its private key (PEM) into a server configuration, checking
/// up front that they belong together so a mistake shows at start, not at the first client.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    const CERT: &str = "certificate file";
    const KEY: &str = "key file";
    let cert_pem = read_pem(CERT, cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            what: CERT,
            path: cert.to_path_buf(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_path_buf()));
    }
    let key_pem = read_pem(KEY, key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey(key.to_path_buf()),
        e => TlsError::BadPem {
            what: KEY,
            path: key.to_path_buf(),
            message: e.to_string(),
        },
    })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("the ring provider supports the default protocol versions")
    .with_no_client_auth()
    .with_single_cert(chain, private)
    .map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            }
        }
        e => TlsError::Unusable {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            message: e.to_string(),
        },
    })?;
    Ok(Arc::new(config))
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(TlsError::NotPem {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// The files `tls self-signed` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfSigned {
    /// The CA certificate, to be trusted by agents and the CLI (`ca_file`, `--ca-file`).
    pub ca_cert: PathBuf,
    /// The CA's private key (mode 0600): keep it to issue new server certificates; it is not
    /// needed by the running broker.
    pub ca_key: PathBuf,
    /// The server certificate (`[tls] cert`).
    pub server_cert: PathBuf,
    /// The server certificate's private key (`[tls] key`, mode 0600).
    pub server_key: PathBuf,
    /// The names and addresses the server certificate is valid for.
    pub names: Vec<String>,
}

/// Creates `ca.pem`, `ca.key`, `server.pem` and `server.key` in `out_dir` (created if
/// needed). The server certificate is valid for `hosts` plus `localhost`, `127.0.0.1` and
/// `::1` (so tests and a CLI on the broker's host work too). Existing files are refused unless
/// `force`: overwriting the CA silently would cut off every Pi that trusts the old one.
pub fn self_signed(hosts: &[String], out_dir: &Path, force: bool) -> Result<SelfSigned, TlsError> {
    let mut sans: Vec<SanType> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let defaults = ["localhost", "127.0.0.1", "::1"].map(String::from);
    for host in hosts.iter().chain(&defaults) {
        let h = host.trim();
        let h = h
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(h);
        let san = if let Ok(ip) = h.parse::<IpAddr>() {
            SanType::IpAddress(ip)
        } else if valid_dns_name(h) {
            SanType::DnsName(
                h.to_ascii_lowercase()
                    .try_into()
                    .map_err(|_| TlsError::BadHost(host.clone()))?,
            )
        } else {
            return Err(TlsError::BadHost(host.clone()));
        };
        if !sans.contains(&san) {
            sans.push(san);
            names.push(h.to_string());
        }
    }

    let out = SelfSigned {
        ca_cert: out_dir.join("ca.pem"),
        ca_key: out_dir.join("ca.key"),
        server_cert: out_dir.join("server.pem"),
        server_key: out_dir.join("server.key"),
        names,
    };
    let all = [&out.ca_cert, &out.ca_key, &out.server_cert, &out.server_key];
    let existing: Vec<PathBuf> = all
        .iter()
        .filter(|p| p.exists())
        .map(|p| p.to_path_buf())
        .collect();
    if !existing.is_empty() && !force {
        return Err(TlsError::Exists(existing));
    }

    // Backdated an hour so a Pi whose clock lags a little still accepts the certificate.
    let now = rcgen::date_time_ymd(1970, 1, 1)
        + SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
    let not_before = now - Duration::from_secs(3600);

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    // A random tag makes each CA's name unique: a client trusting another pifleet CA then
    // reports an unknown issuer instead of trying that CA and failing on the signature.
    let mut tag = [0u8; 6];
    OsRng.fill_bytes(&mut tag);
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    ca.distinguished_name
        .push(DnType::CommonName, format!("pifleet broker CA {tag}"));
    ca.distinguished_name
        .push(DnType::OrganizationName, "pifleet");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = now + CA_VALIDITY;
    let ca_cert = ca.self_signed(&ca_key)?;

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::default();
    server.distinguished_name = DistinguishedName::new();
    server
        .distinguished_name
        .push(DnType::CommonName, out.names[0].as_str());
    server.subject_alt_names = sans;
    server.is_ca = IsCa::ExplicitNoCa;
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.use_authority_key_identifier_extension = true;
    server.not_before = not_before;
    server.not_after = now + SERVER_VALIDITY;
    let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key)?;

    // Keys first: a certificate without its key is useless, the reverse can be re-issued.
    let files: [(&PathBuf, String, u32); 4] = [
        (&out.ca_key, ca_key.serialize_pem(), 0o600),
        (&out.server_key, server_key.serialize_pem(), 0o600),
        (&out.ca_cert, ca_cert.pem(), 0o644),
        (&out.server_cert, server_cert.pem(), 0o644),
    ];
    for (path, pem, mode) in files {
        pifleet_client::files::write_atomic(path, pem.as_bytes(), mode).map_err(|source| {
            TlsError::Write {
                path: path.clone(),
                source,
            }
        })?;
    }
    Ok(out)
}

/// Letters, digits and `-` in dot-separated labels, optionally a leading `*.` wildcard.
fn valid_dns_name(h: &str) -> bool {
    let h = h.strip_prefix("*.").unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::credentials::test::temp_dir;
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn client_trusting(ca: &Path) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// Runs a handshake and one byte each way; the client's result.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: tokio_rustls::TlsConnector,
        name: &str,
    ) -> std::io::Result<()> {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let server = async move {
            let mut tls = acceptor.accept(s).await?;
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await?;
            tls.write_all(&b).await?;
            tls.flush().await?;
            std::io::Result::Ok(())
        };
        let name = ServerName::try_from(name.to_string()).unwrap();
        let client = async move {
            let mut tls = client.connect(name, c).await?;
            tls.write_all(b"x").await?;
            tls.flush().await?;
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await?;
            assert_eq!(&b, b"x");
            std::io::Result::Ok(())
        };
        let (_, client) = tokio::join!(server, client);
        client
    }

    #[tokio::test]
    async fn self_signed_certificates_serve_real_handshakes() {
        let dir = temp_dir("tls");
        let out = self_signed(
            &["pi.example".into(), "192.168.1.5".into()],
            dir.path(),
            false,
        )
        .unwrap();
        assert_eq!(
            out.names,
            ["pi.example", "192.168.1.5", "localhost", "127.0.0.1", "::1"]
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&out.ca_key), 0o600);
            assert_eq!(mode(&out.server_key), 0o600);
        }
        let server = server_config(&out.server_cert, &out.server_key).unwrap();
        for name in ["localhost", "pi.example", "127.0.0.1", "192.168.1.5"] {
            handshake(server.clone(), client_trusting(&out.ca_cert), name)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        // A name the certificate was not made for is refused.
        assert!(handshake(
            server.clone(),
            client_trusting(&out.ca_cert),
            "other.example"
        )
        .await
        .is_err());

        // A client that trusts a different CA refuses the server.
        let other = temp_dir("tls-other");
        let other = self_signed(&[], other.path(), false).unwrap();
        let e = handshake(server, client_trusting(&other.ca_cert), "localhost")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    }

    #[test]
    fn existing_files_are_kept_unless_forced() {
        let dir = temp_dir("tls-force");
        let first = self_signed(&[], dir.path(), false).unwrap();
        let ca = std::fs::read(&first.ca_cert).unwrap();
        let e = self_signed(&[], dir.path(), false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        assert!(e.to_string().contains("ca.pem"), "{e}");
        assert_eq!(std::fs::read(&first.ca_cert).unwrap(), ca);
        self_signed(&[], dir.path(), true).unwrap();
        assert_ne!(std::fs::read(&first.ca_cert).unwrap(), ca);
    }

    #[test]
    fn bad_hosts_are_refused() {
        let dir = temp_dir("tls-host");
        for bad in ["a b", "", "x..y", "-x", "küche.local", "a/b"] {
            assert!(
                matches!(
                    self_signed(&[bad.to_string()], dir.path(), false),
                    Err(TlsError::BadHost(_))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn loading_errors_name_the_file_and_the_problem() {
        let dir = temp_dir("tls-err");
        let a = self_signed(&[], &dir.path().join("a"), false).unwrap();
        let b = self_signed(&[], &dir.path().join("b"), false).unwrap();
        let missing = dir.path().join("missing.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, b"\x30\x82\x01\x0a binary DER").unwrap();

        let msg = |r: Result<_, TlsError>| r.map(|_| ()).unwrap_err().to_string();
        let e = msg(server_config(&missing, &a.server_key));
        assert!(
            e.contains("missing.pem") && e.contains("cannot read"),
            "{e}"
        );
        let e = msg(server_config(&garbage, &a.server_key));
        assert!(
            e.contains("garbage.pem") && e.contains("not a PEM file"),
            "{e}"
        );
        let e = msg(server_config(&a.server_key, &a.server_key));
        assert!(e.contains("holds no certificate"), "{e}");
        let e = msg(server_config(&a.server_cert, &a.server_cert));
        assert!(e.contains("holds no private key"), "{e}");
        let e = msg(server_config(&a.server_cert, &b.server_key));
        assert!(e.contains("does not match"), "{e}");
        assert!(e.contains(&a.server_cert.display().to_string()), "{e}");
    }
}
