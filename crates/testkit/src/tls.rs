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
