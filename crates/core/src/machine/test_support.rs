//! What the fake-host tests of the request machines share: the secrets, the clock, a worker
//! started from a JSON config, one minted opaque key, and its record.

use std::rc::Rc;

use crate::config::FilterConfig;
use crate::host::fake::FakeHost;
use crate::key::{mint_opaque_key, GatewayKey, KeyPrefix, MintedKey};
use crate::machine::state::Shared;
use crate::machine::worker;
use crate::wire::KeyLookup;

pub const GATEWAY_HEX: &str = "0101010101010101010101010101010101010101010101010101010101010101";
pub const SERVICE_TOKEN: &str = "service-token-service-token-service-token";
pub const NOW_MS: u64 = 1_700_000_000_000;

/// A worker started on `host` with `config` and the secrets above.
pub fn start_with(host: &FakeHost, config: &serde_json::Value) -> Rc<Shared> {
    let config = FilterConfig::parse(config.to_string().as_bytes()).unwrap();
    let secrets = config
        .load_secrets(|var| {
            Some(if var.contains("GATEWAY") {
                GATEWAY_HEX.to_owned()
            } else {
                SERVICE_TOKEN.to_owned()
            })
        })
        .unwrap();
    worker::start(host, config, secrets, [7; 16])
}

/// The one opaque key the tests present.
pub fn minted() -> MintedKey {
    mint_opaque_key(
        &KeyPrefix::parse("kg_live_").unwrap(),
        &GatewayKey::from_hex(GATEWAY_HEX).unwrap(),
        [3; crate::key::ID_LEN],
        [4; crate::key::SECRET_LEN],
    )
}

/// The record of `key` as the key service answers it: active, subject `team-a`, scope `a`,
/// nothing else set.
pub fn record_of(key: &MintedKey) -> KeyLookup {
    KeyLookup::active(key.id.as_str(), key.digest.to_hex())
}
