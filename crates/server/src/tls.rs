//! TLS for the key service and its CLI: rustls on the `ring` provider, TLS 1.3 and 1.2 only.
//!
//! `keygate serve --tls-cert --tls-key` loads one certificate chain and its private key from
//! PEM files, once at start. The CLI trusts the system's roots plus an optional CA file
//! (`--ca-cert`), and verifies the server's name against its certificate. Errors name the
//! file and what is wrong with it, never its content.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

/// The protocol versions offered and accepted: TLS 1.0 and 1.1 are not in rustls at all.
const PROTOCOLS: &[&SupportedProtocolVersion] = &[&TLS13, &TLS12];

/// The key service speaks HTTP/1.1 only; saying so in ALPN lets a client that asks for h2
/// alone fail at the handshake instead of at its first request.
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// Why a TLS certificate, key or CA file cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot read the TLS certificate file {path}: {reason}")]
    ReadCertificate { path: PathBuf, reason: String },
    #[error("the TLS certificate file {path} is not valid PEM: {reason}")]
    CertificatePem { path: PathBuf, reason: String },
    #[error("the TLS certificate file {path} holds no certificate (expected a PEM block -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("the TLS certificate in {path} cannot be used: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("cannot read the TLS key file {path}: {reason}")]
    ReadKey { path: PathBuf, reason: String },
    /// The PEM parser's reason is left out: it can quote the key's own text.
    #[error("the TLS key file {path} is not valid PEM")]
    KeyPem { path: PathBuf },
    #[error("the TLS key file {path} holds no private key (expected a PEM block -----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)")]
    NoKey { path: PathBuf },
    #[error("the private key in {path} is not an RSA, ECDSA (P-256, P-384) or Ed25519 key rustls can use")]
    UnusableKey { path: PathBuf },
    #[error("the private key in {key} does not belong to the certificate in {certificate} (their public keys differ)")]
    KeyMismatch { certificate: PathBuf, key: PathBuf },
    #[error("cannot read the CA certificate file {path}: {reason}")]
    ReadCa { path: PathBuf, reason: String },
    #[error("the CA certificate file {path} is not valid PEM: {reason}")]
    CaPem { path: PathBuf, reason: String },
    #[error("the CA certificate file {path} holds no certificate (expected a PEM block -----BEGIN CERTIFICATE-----)")]
    NoCa { path: PathBuf },
    #[error("a certificate in the CA file {path} cannot be a trust anchor: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("no CA certificate to verify the key service with: the system has none; pass --ca-cert FILE (PEM)")]
    NoTrustAnchors,
    #[error("rustls refused the configuration: {0}")]
    Rustls(String),
}

/// The key service's TLS configuration, loaded from `--tls-cert` and `--tls-key`.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    certificate: PathBuf,
}

impl ServerTls {
    /// Loads the certificate chain (leaf first) and the private key, and checks that they
    /// belong together.
    pub fn load(certificate: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain = read_certificates(certificate)?;
        let key_der = read_private_key(key)?;
        let provider = Arc::new(default_provider());
        let signing_key = provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|_| TlsError::UnusableKey {
                path: key.to_path_buf(),
            })?;
        let certified = rustls::sign::CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(TlsError::KeyMismatch {
                    certificate: certificate.to_path_buf(),
                    key: key.to_path_buf(),
                })
            }
            // The ring provider always knows a key's public half; anything else is the leaf
            // certificate failing to parse.
            Err(error) => {
                return Err(TlsError::BadCertificate {
                    path: certificate.to_path_buf(),
                    reason: error.to_string(),
                })
            }
        }
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(PROTOCOLS)
            .map_err(|error| TlsError::Rustls(error.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
        config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
        Ok(Self {
            config: Arc::new(config),
            certificate: certificate.to_path_buf(),
        })
    }

    /// The rustls configuration to accept connections with.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

/// The CLI's client configuration: the system's roots, plus every certificate in `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    // Unreadable system certificates are skipped: the roots that did load still verify, and
    // with none at all the error below says what to do.
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    if let Some(path) = ca_file {
        let bytes = std::fs::read(path).map_err(|e| TlsError::ReadCa {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let certificates = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, pem::Error>>()
            .map_err(|e| TlsError::CaPem {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        if certificates.is_empty() {
            return Err(TlsError::NoCa {
                path: path.to_path_buf(),
            });
        }
        for certificate in certificates {
            roots.add(certificate).map_err(|e| TlsError::BadCa {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoTrustAnchors);
    }
    let config = ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_protocol_versions(PROTOCOLS)
        .map_err(|error| TlsError::Rustls(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::ReadCertificate {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| TlsError::CertificatePem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| TlsError::ReadKey {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?);
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| match error {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        _ => TlsError::KeyPem {
            path: path.to_path_buf(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pki {
        dir: tempfile::TempDir,
    }

    impl Pki {
        /// A CA and a server certificate for `localhost` and 127.0.0.1, signed by it.
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca = ca_params.self_signed(&ca_key).unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let params =
                rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
                    .unwrap();
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            let pki = Pki { dir };
            std::fs::write(pki.path("ca.pem"), ca.pem()).unwrap();
            std::fs::write(pki.path("cert.pem"), cert.pem()).unwrap();
            std::fs::write(pki.path("key.pem"), key.serialize_pem()).unwrap();
            pki
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn write(&self, name: &str, content: &str) -> PathBuf {
            let path = self.path(name);
            std::fs::write(&path, content).unwrap();
            path
        }
    }

    #[test]
    fn loads_a_certificate_and_its_key() {
        let pki = Pki::new();
        let tls = ServerTls::load(&pki.path("cert.pem"), &pki.path("key.pem")).unwrap();
        assert_eq!(tls.config().alpn_protocols, vec![b"http/1.1".to_vec()]);
        let debug = format!("{tls:?}");
        assert!(debug.contains("cert.pem") && !debug.contains("PRIVATE"));
    }

    #[test]
    fn bad_files_are_refused_naming_the_file() {
        let pki = Pki::new();
        let cert = pki.path("cert.pem");
        let key = pki.path("key.pem");
        let missing = pki.path("missing.pem");
        let key_text = std::fs::read_to_string(&key).unwrap();
        let not_pem = pki.write("garbage.pem", "this is not a certificate\n");
        let broken = pki.write(
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\nMIIB!!!!\n-----END CERTIFICATE-----\n",
        );
        let cases = [
            (
                ServerTls::load(&missing, &key).unwrap_err(),
                &missing,
                "cannot read the TLS certificate file",
            ),
            (
                ServerTls::load(&not_pem, &key).unwrap_err(),
                &not_pem,
                "holds no certificate",
            ),
            (
                ServerTls::load(&broken, &key).unwrap_err(),
                &broken,
                "not valid PEM",
            ),
            (
                ServerTls::load(&cert, &missing).unwrap_err(),
                &missing,
                "cannot read the TLS key file",
            ),
            // A certificate where the key should be.
            (
                ServerTls::load(&cert, &cert).unwrap_err(),
                &cert,
                "holds no private key",
            ),
        ];
        for (error, path, expected) in cases {
            let message = error.to_string();
            assert!(
                message.contains(&path.display().to_string()) && message.contains(expected),
                "{message:?} should name {} and say {expected:?}",
                path.display()
            );
            assert!(!message.contains(key_text.trim()), "{message}");
        }
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let pki = Pki::new();
        let other = rcgen::KeyPair::generate().unwrap();
        let other_key = pki.write("other-key.pem", &other.serialize_pem());
        let error = ServerTls::load(&pki.path("cert.pem"), &other_key).unwrap_err();
        assert_eq!(
            error,
            TlsError::KeyMismatch {
                certificate: pki.path("cert.pem"),
                key: other_key.clone(),
            }
        );
        let message = error.to_string();
        assert!(message.contains("other-key.pem") && message.contains("cert.pem"));
    }

    #[test]
    fn a_corrupt_key_is_refused_without_quoting_it() {
        let pki = Pki::new();
        let secret_line = "c2VjcmV0LWtleS1tYXRlcmlhbC1uZXZlci1sb2dnZWQ=";
        let corrupt = pki.write(
            "corrupt-key.pem",
            &format!("-----BEGIN PRIVATE KEY-----\n{secret_line}\n"),
        );
        let error = ServerTls::load(&pki.path("cert.pem"), &corrupt).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("corrupt-key.pem"), "{message}");
        assert!(!message.contains(secret_line), "{message}");
        let unusable = pki.write(
            "unusable-key.pem",
            &format!("-----BEGIN PRIVATE KEY-----\n{secret_line}\n-----END PRIVATE KEY-----\n"),
        );
        let error = ServerTls::load(&pki.path("cert.pem"), &unusable).unwrap_err();
        assert_eq!(error, TlsError::UnusableKey { path: unusable });
    }

    #[test]
    fn client_config_takes_a_ca_file_and_refuses_a_bad_one() {
        let pki = Pki::new();
        client_config(Some(&pki.path("ca.pem"))).unwrap();
        let missing = pki.path("missing-ca.pem");
        assert!(matches!(
            client_config(Some(&missing)).unwrap_err(),
            TlsError::ReadCa { path, .. } if path == missing
        ));
        let empty = pki.write("empty-ca.pem", "");
        assert_eq!(
            client_config(Some(&empty)).unwrap_err(),
            TlsError::NoCa { path: empty }
        );
    }
}
