//! `gen-signed <out dir> <count> <ed25519|ecdsa-p256-sha256|hmac-sha256> <key id> <authority>
//! <path> [<hmac secret, standard base64>]`: RFC 9421 signatures for the signed-route
//! configurations of the benchmark, with keygate-core's signer. In <out dir>:
//!
//!   public.txt   the public key (base64url of the raw key) for Ed25519 and P-256, to
//!                register as the key's signing material (HMAC: the secret is the key's own)
//!   signed.txt   <count> lines "<Signature-Input>\t<Signature>" for `GET <path>` to
//!                <authority>, each with its own nonce, all created now
//!
//! The runner gives the signed route a long `max_age_seconds`, so requests signed before the
//! run stay valid through it; every nonce is used once.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use keygate_core::signature::{sign_request, Request, SignOptions, SigningKey};
use rand_core::OsRng;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: gen-signed <out dir> <count> <alg> <key id> <authority> <path> [secret]";
    let mut args = std::env::args().skip(1);
    let out = std::path::PathBuf::from(args.next().ok_or(usage)?);
    let count: usize = args.next().ok_or(usage)?.parse()?;
    let alg = args.next().ok_or(usage)?;
    let key_id = args.next().ok_or(usage)?;
    let authority = args.next().ok_or(usage)?;
    let path = args.next().ok_or(usage)?;
    let key = match alg.as_str() {
        "ed25519" => SigningKey::Ed25519(ed25519_dalek::SigningKey::generate(&mut OsRng)),
        "ecdsa-p256-sha256" => SigningKey::P256(p256::ecdsa::SigningKey::random(&mut OsRng)),
        "hmac-sha256" => {
            let secret = STANDARD.decode(args.next().ok_or("hmac-sha256 needs the secret")?)?;
            SigningKey::Hmac(zeroize::Zeroizing::new(secret))
        }
        other => return Err(format!("unknown algorithm {other}").into()),
    };
    std::fs::create_dir_all(&out)?;
    if let Some(public) = key.public_key() {
        std::fs::write(out.join("public.txt"), public)?;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let request = Request {
        method: "GET",
        scheme: "http",
        authority: &authority,
        target: &path,
        headers: &[],
    };
    let mut file = std::io::BufWriter::new(std::fs::File::create(out.join("signed.txt"))?);
    for i in 0..count {
        let options = SignOptions {
            key_id: key_id.clone(),
            created_s: now,
            nonce: Some(format!("bench-{now}-{i}")),
            label: "sig1".into(),
            ..SignOptions::default()
        };
        let (input, signature) = sign_request(&request, &key, &options)?;
        writeln!(file, "{input}\t{signature}")?;
    }
    file.flush()?;
    Ok(())
}
