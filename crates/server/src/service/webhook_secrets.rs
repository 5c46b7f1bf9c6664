//! Webhook secrets at rest: sealed with AES-256-GCM under a key derived from the gateway key,
//! bound to the webhook's id. The service signs deliveries with them, so they cannot be
//! digests; sealed, a copy of the database alone does not give them away.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::service::context::Service;
use crate::service::error::ApiError;
use crate::service::signing::SigningSecret;

/// How a stored webhook secret starts when it is sealed.
const SEALED_PREFIX: &str = "sealed1:";

/// The key that seals webhook secrets at rest: AES-256-GCM under a key derived from the
/// gateway key, bound to the webhook's id. The service signs deliveries with the secrets, so
/// they cannot be digests; sealed, a copy of the database alone does not give them away.
fn sealing_key(service: &Service) -> SigningSecret {
    SigningSecret::from_bytes(
        service
            .gateway_key()
            .derive(&[b"keygate webhook secrets\0"]),
    )
}

/// `secret` of webhook `id` as it is stored.
pub fn seal_secret(service: &Service, id: &str, secret: &str) -> Result<String, ApiError> {
    let sealed = sealing_key(service)
        .seal(id, secret.as_bytes())
        .map_err(|e| ApiError::Internal(format!("sealing a webhook secret: {e}")))?;
    Ok(format!("{SEALED_PREFIX}{}", STANDARD.encode(sealed)))
}

/// The secret of webhook `id` from what is stored (a secret stored before secrets were
/// sealed is read as it is). The error says why it cannot be opened, never the secret.
pub fn open_secret(
    service: &Service,
    id: &str,
    stored: &str,
) -> Result<Zeroizing<String>, &'static str> {
    let Some(sealed) = stored.strip_prefix(SEALED_PREFIX) else {
        return Ok(Zeroizing::new(stored.to_owned()));
    };
    let cannot = "the webhook's secret cannot be opened: was the gateway key changed? \
                  Register the webhook again";
    let sealed = STANDARD.decode(sealed).map_err(|_| cannot)?;
    let plain = sealing_key(service).open(id, &sealed).map_err(|_| cannot)?;
    String::from_utf8(plain.to_vec())
        .map(Zeroizing::new)
        .map_err(|_| cannot)
}
