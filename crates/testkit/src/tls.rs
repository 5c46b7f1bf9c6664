//! A test PKI: a CA and a server certificate it signed, generated per test (`rcgen`).

use std::fs;
use std::path::{Path, PathBuf};

/// The key service's name in its certificate, and the SNI Envoy sends (as in envoy.yaml).
pub const SERVICE_NAME: &str = "keygate.internal";

/// PEM files: a CA, and a certificate for [`SERVICE_NAME`] and 127.0.0.1 that it signed.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn generate(dir: &Path) -> Self {
        fs::create_dir_all(dir).expect("creating the PKI dir");
        let ca_key = rcgen::KeyPair::generate().expect("a CA key");
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Keygate e2e CA");
        let ca = ca_params.self_signed(&ca_key).expect("the CA certificate");
        let key = rcgen::KeyPair::generate().expect("a server key");
        let params = rcgen::CertificateParams::new(vec![SERVICE_NAME.into(), "127.0.0.1".into()])
            .expect("server certificate parameters");
        let cert = params
            .signed_by(&key, &ca, &ca_key)
            .expect("the server certificate");
        let pki = Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        fs::write(&pki.ca, ca.pem()).expect("writing ca.pem");
        fs::write(&pki.cert, cert.pem()).expect("writing cert.pem");
        fs::write(&pki.key, key.serialize_pem()).expect("writing key.pem");
        pki
    }
}

/// A certificate and its key, as PEM files.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A PKI for a listener that requires client certificates (mTLS): a CA, a server certificate
/// for 127.0.0.1 and client certificates with the URI SANs asked for (SPIFFE IDs), all signed by
/// the CA.
pub struct MtlsPki {
    pub ca: PathBuf,
    pub server: CertFiles,
    /// In the order of the `uri_sans` given to [`MtlsPki::generate`].
    pub clients: Vec<CertFiles>,
}

impl MtlsPki {
    /// One client certificate per entry: with that URI SAN, or (`None`) with only a DNS name.
    pub fn generate(dir: &Path, uri_sans: &[Option<&str>]) -> Self {
        fs::create_dir_all(dir).expect("creating the mTLS PKI dir");
        let ca_key = rcgen::KeyPair::generate().expect("a CA key");
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Keygate e2e workload CA");
        let ca = ca_params.self_signed(&ca_key).expect("the CA certificate");
        let write = |name: &str, params: rcgen::CertificateParams| {
            let key = rcgen::KeyPair::generate().expect("a key");
            let cert = params.signed_by(&key, &ca, &ca_key).expect("a certificate");
            let files = CertFiles {
                cert: dir.join(format!("{name}.pem")),
                key: dir.join(format!("{name}-key.pem")),
            };
            fs::write(&files.cert, cert.pem()).expect("writing a certificate");
            fs::write(&files.key, key.serialize_pem()).expect("writing a key");
            files
        };
        let server = write(
            "server",
            rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
                .expect("server certificate parameters"),
        );
        let clients = uri_sans
            .iter()
            .enumerate()
            .map(|(i, uri)| {
                let mut params = rcgen::CertificateParams::new(vec![format!("client-{i}.test")])
                    .expect("client certificate parameters");
                if let Some(uri) = uri {
                    let uri = rcgen::Ia5String::try_from(*uri).expect("an IA5 URI SAN");
                    params.subject_alt_names.push(rcgen::SanType::URI(uri));
                }
                params
                    .distinguished_name
                    .push(rcgen::DnType::CommonName, format!("client-{i}"));
                write(&format!("client-{i}"), params)
            })
            .collect();
        let ca_path = dir.join("ca.pem");
        fs::write(&ca_path, ca.pem()).expect("writing ca.pem");
        MtlsPki {
            ca: ca_path,
            server,
            clients,
        }
    }
}
