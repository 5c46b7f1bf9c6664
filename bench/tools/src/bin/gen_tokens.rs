//! `gen-tokens <out dir> <count> [ES256|EdDSA|RS256]`: a fresh signing key (default ES256)
//! and, in <out dir>:
//!
//!   jwks.json      the public key as a JWKS (kid "bench-<alg>"): Keygate's inline `jwks`
//!                  and jwt_authn's `local_jwks` use the same document
//!   tokens.txt     <count> distinct tokens (different `sub` and `jti`), scope "openid demo:read"
//!   good.jwt       the first of them
//!   noscope.jwt    same key and issuer, scope "openid other:write"      -> must get 403
//!   forged.jwt     same kid, claims and header, signed by ANOTHER key   -> must get 401
//!   claims.json    issuer / audience / key id used, for the Envoy configs
//!
//! Tokens expire in 24 h (the benchmark runs minutes).

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use keygate_core::jwt::{Algorithm, Jwks, SigningKey};
use rand_core::OsRng;
use serde_json::json;

pub const ISSUER: &str = "https://issuer.bench.keygate.local";
pub const AUDIENCE: &str = "keygate-bench";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = std::path::PathBuf::from(args.next().ok_or("usage: gen-tokens <out dir> <count>")?);
    let count: usize = args.next().unwrap_or_else(|| "10000".into()).parse()?;
    let alg_name = args.next().unwrap_or_else(|| "ES256".into());
    let alg = Algorithm::parse(&alg_name).ok_or("the algorithm must be ES256, EdDSA or RS256")?;
    let kid = format!("bench-{}", alg_name.to_ascii_lowercase());
    let kid = kid.as_str();
    std::fs::create_dir_all(&out)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();

    let key = SigningKey::generate(alg, &mut OsRng)?;
    let other = SigningKey::generate(alg, &mut OsRng)?;
    let jwks = Jwks {
        keys: vec![key.public_jwk(kid)],
    };
    std::fs::write(out.join("jwks.json"), serde_json::to_vec(&jwks)?)?;

    let claims = |i: usize, scope: &str| {
        json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": format!("user-{i:06}"),
            "jti": format!("bench-{now}-{i:06}"),
            "iat": now,
            "exp": now + 86_400,
            "scope": scope,
        })
    };
    let mut tokens = std::io::BufWriter::new(std::fs::File::create(out.join("tokens.txt"))?);
    let mut first = None;
    for i in 0..count {
        let token = key.sign(kid, "JWT", &claims(i, "openid demo:read"))?;
        writeln!(tokens, "{token}")?;
        first.get_or_insert(token);
    }
    tokens.flush()?;
    std::fs::write(
        out.join("good.jwt"),
        first.ok_or("count must be at least 1")?,
    )?;
    std::fs::write(
        out.join("noscope.jwt"),
        key.sign(kid, "JWT", &claims(count + 1, "openid other:write"))?,
    )?;
    std::fs::write(
        out.join("forged.jwt"),
        other.sign(kid, "JWT", &claims(0, "openid demo:read"))?,
    )?;
    std::fs::write(
        out.join("claims.json"),
        serde_json::to_vec_pretty(
            &json!({"issuer": ISSUER, "audience": AUDIENCE, "kid": kid, "algorithm": alg.as_str(), "count": count}),
        )?,
    )?;
    Ok(())
}
