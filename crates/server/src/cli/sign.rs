//! `keygate sign`: the headers that sign one request (RFC 9421), printed for `curl -H`.
//! Offline: it needs the key's private material, never the key service.

use std::process::ExitCode;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use keygate_core::signature::{
    content_digest, sign_request, Request, SignOptions, SigningKey, MAX_NONCE_BYTES,
};

use crate::cli::args::SignArgs;
use crate::cli::client::CliError;
use crate::cli::print::report;

/// Runs `sign` and reports failures on stderr.
pub fn run_sign(args: SignArgs) -> ExitCode {
    match signed_headers(&args, now_s(), random_nonce) {
        Ok(lines) => {
            for line in lines {
                outln!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => report(false, Err(err)),
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_nonce() -> Result<String, CliError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)
        .map_err(|err| CliError::Usage(format!("no randomness for a nonce: {err}")))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn usage(message: impl Into<String>) -> CliError {
    CliError::Usage(message.into())
}

/// The header lines (`Name: value`) that sign the request `args` describe.
fn signed_headers(
    args: &SignArgs,
    now_s: u64,
    nonce: impl FnOnce() -> Result<String, CliError>,
) -> Result<Vec<String>, CliError> {
    let key = match (&args.private_key, &args.secret_file) {
        (Some(path), None) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|err| usage(format!("{}: {err}", path.display())))?;
            SigningKey::from_pkcs8_pem(&pem).map_err(|_| {
                usage(format!(
                    "{}: not a PKCS#8 PEM Ed25519 or P-256 private key",
                    path.display()
                ))
            })?
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|err| usage(format!("{}: {err}", path.display())))?;
            let secret = STANDARD
                .decode(text.trim())
                .map_err(|_| usage(format!("{}: not a base64 secret", path.display())))?;
            SigningKey::Hmac(zeroize::Zeroizing::new(secret))
        }
        _ => return Err(usage("give --private-key FILE or --secret-file FILE")),
    };
    let url = url::Url::parse(&args.url).map_err(|err| usage(format!("--url: {err}")))?;
    let authority = match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => return Err(usage("the URL has no host")),
    };
    let target = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let body = match (&args.data, &args.data_file) {
        (Some(data), _) => Some(data.clone().into_bytes()),
        (None, Some(path)) => {
            Some(std::fs::read(path).map_err(|err| usage(format!("{}: {err}", path.display())))?)
        }
        (None, None) => None,
    };
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    let mut extra = Vec::new();
    for header in &args.header {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| usage(format!("-H {header:?}: give `name: value`")))?;
        let name = name.trim().to_ascii_lowercase();
        headers.push((name.clone(), value.trim().as_bytes().to_vec()));
        extra.push(name);
    }
    let digest = body.as_deref().map(content_digest);
    if let Some(digest) = &digest {
        headers.push(("content-digest".into(), digest.clone().into_bytes()));
    }
    let nonce = match &args.nonce {
        Some(nonce) if !nonce.is_empty() && nonce.len() <= MAX_NONCE_BYTES => nonce.clone(),
        Some(_) => return Err(usage("--nonce: 1 to 128 characters")),
        None => nonce()?,
    };
    let pairs: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    let request = Request {
        method: &args.method,
        scheme: url.scheme(),
        authority: &authority,
        target: &target,
        headers: &pairs,
    };
    let options = SignOptions {
        extra_components: extra,
        key_id: args.key_id.clone(),
        created_s: now_s,
        expires_s: args.expires_in.map(|s| now_s.saturating_add(s)),
        nonce: Some(nonce),
        include_alg: true,
        label: "sig1".into(),
    };
    let (input, signature) =
        sign_request(&request, &key, &options).map_err(|err| usage(err.to_string()))?;
    let mut lines = Vec::new();
    if let Some(digest) = digest {
        lines.push(format!("Content-Digest: {digest}"));
    }
    lines.push(format!("Signature-Input: {input}"));
    lines.push(format!("Signature: {signature}"));
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::signature::{verify_request, Material, Policy, SigningAlgorithm};

    const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";

    #[test]
    fn prints_headers_the_filter_accepts() {
        let dir = std::env::temp_dir().join(format!("keygate-sign-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = dir.join("key.pem");
        std::fs::write(&pem, PEM).unwrap();
        let args = SignArgs {
            method: "POST".into(),
            url: "https://api.example.com:8443/pay?to=bob".into(),
            key_id: "k1".into(),
            private_key: Some(pem),
            secret_file: None,
            data: Some("{\"amount\": 1}".into()),
            data_file: None,
            header: vec!["X-Tenant: acme".into()],
            expires_in: Some(60),
            nonce: None,
        };
        let lines = signed_headers(&args, 1_800_000_000, || Ok("n0".into())).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("Content-Digest: sha-256=:"));
        assert!(lines[1].starts_with(
            "Signature-Input: sig1=(\"@method\" \"@authority\" \"@path\" \"@query\" \"x-tenant\" \"content-digest\");created=1800000000;expires=1800000060;nonce=\"n0\";alg=\"ed25519\";keyid=\"k1\""
        ), "{}", lines[1]);
        let value = |line: &str| line.split_once(": ").unwrap().1.as_bytes().to_vec();
        let headers: Vec<(&str, Vec<u8>)> = vec![
            ("x-tenant", b"acme".to_vec()),
            ("content-digest", value(&lines[0])),
            ("signature-input", value(&lines[1])),
            ("signature", value(&lines[2])),
        ];
        let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let request = Request {
            method: "POST",
            scheme: "https",
            authority: "api.example.com:8443",
            target: "/pay?to=bob",
            headers: &pairs,
        };
        let material = Material::public(
            SigningAlgorithm::Ed25519,
            "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs",
        )
        .unwrap();
        let extra = vec!["x-tenant".to_owned()];
        let policy = Policy {
            max_age_s: 300,
            skew_s: 0,
            require_nonce: true,
            extra_components: &extra,
            has_body: true,
        };
        verify_request(&request, "k1", &material, &policy, 1_800_000_010, None).unwrap();
    }

    #[test]
    fn needs_material_and_a_url() {
        let args = SignArgs {
            method: "GET".into(),
            url: "https://api.example.com/".into(),
            key_id: "k1".into(),
            private_key: None,
            secret_file: None,
            data: None,
            data_file: None,
            header: vec![],
            expires_in: None,
            nonce: None,
        };
        assert!(matches!(
            signed_headers(&args, 0, || Ok("n".into())),
            Err(CliError::Usage(_))
        ));
    }
}
