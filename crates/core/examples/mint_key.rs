//! Mints an opaque key offline, for experiments and tests:
//! `cargo run -p keygate-core --example mint_key -- <gateway key hex> [prefix]`.
//! Keys minted this way are unknown to any key service unless it stores their digest.

use std::io::Read;

use keygate_core::key::{mint_opaque_key, GatewayKey, KeyPrefix, ID_LEN, SECRET_LEN};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let gateway = GatewayKey::from_hex(
        &args
            .next()
            .ok_or("usage: mint_key <gateway key hex> [prefix]")?,
    )?;
    let prefix = KeyPrefix::parse(&args.next().unwrap_or_else(|| "kg_test_".to_owned()))?;
    let mut random = [0u8; ID_LEN + SECRET_LEN];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
    let mut id = [0u8; ID_LEN];
    let mut secret = [0u8; SECRET_LEN];
    id.copy_from_slice(&random[..ID_LEN]);
    secret.copy_from_slice(&random[ID_LEN..]);
    let key = mint_opaque_key(&prefix, &gateway, id, secret);
    println!("{} {} {}", key.plaintext, key.id, key.digest.to_hex());
    Ok(())
}
