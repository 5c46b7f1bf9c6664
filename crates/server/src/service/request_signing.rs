//! Keys' request-signing material (RFC 9421 signatures on signed routes):
//! `PUT`/`DELETE /api/v1/auth/keys/{id}/signing-material`, and `signing_material` on create.
//!
//! Ed25519 and P-256 keys register their public key (PEM, JWK or base64url of the raw key).
//! For `hmac-sha256` the service stores only a generation: the secret is derived from the
//! gateway key, the key id and the generation, by the filter as by the service, and shown
//! once in the answer that registers it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use keygate_core::key::KeyId;
use keygate_core::signature::{derive_hmac_secret, public_key_from_text, SigningAlgorithm};
use keygate_core::wire::SigningMaterial;
use serde::{Deserialize, Serialize};

use crate::model::RequestSigningRow;
use crate::service::access::Access;
use crate::service::context::Service;
use crate::service::error::ApiError;

/// The body of `PUT /api/v1/auth/keys/{id}/signing-material`, and `signing_material` on
/// create.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningMaterialRequest {
    /// `ed25519`, `ecdsa-p256-sha256` or `hmac-sha256`; may be left out with a PEM or JWK
    /// public key (the key says it).
    #[serde(default)]
    pub alg: Option<String>,
    /// The public key: SubjectPublicKeyInfo PEM, a public JWK (as an object or its text), or
    /// base64url of the raw key. Not with `hmac-sha256`.
    #[serde(default)]
    pub public_key: Option<serde_json::Value>,
}

/// Material checked and ready to store.
#[derive(Clone, Debug)]
pub struct ValidMaterial {
    alg: SigningAlgorithm,
    public_key: Option<String>,
}

/// The signing material as the API shows it; `secret` only in the answer that registers an
/// HMAC secret (it is never shown again).
#[derive(Debug, Serialize)]
pub struct SigningMaterialView {
    pub alg: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// The key, if the caller may see (and so change) it: another owner's key is "not found".
async fn visible(service: &Service, access: &Access, id: &KeyId) -> Result<(), ApiError> {
    let record = service
        .store()
        .get_key(id.as_str())
        .await?
        .ok_or(ApiError::KeyNotFound)?;
    access.visible(record).map(|_| ())
}

fn bad(reason: &str) -> ApiError {
    ApiError::BadSigningMaterial(reason.to_owned())
}

/// Checks a registration: a known algorithm, and a valid public key for it (none for HMAC).
pub fn validate(request: &SigningMaterialRequest) -> Result<ValidMaterial, ApiError> {
    let alg = match request.alg.as_deref() {
        None => None,
        Some(name) => Some(
            SigningAlgorithm::from_name(name)
                .ok_or_else(|| bad("alg must be ed25519, ecdsa-p256-sha256 or hmac-sha256"))?,
        ),
    };
    let text = match &request.public_key {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(text)) => Some(text.clone()),
        Some(jwk @ serde_json::Value::Object(_)) => Some(jwk.to_string()),
        Some(_) => return Err(bad("public_key must be a PEM text, a JWK or base64url")),
    };
    match (alg, text) {
        (Some(SigningAlgorithm::HmacSha256), None) => Ok(ValidMaterial {
            alg: SigningAlgorithm::HmacSha256,
            public_key: None,
        }),
        (Some(SigningAlgorithm::HmacSha256), Some(_)) => Err(bad(
            "hmac-sha256 takes no public_key: the service derives the secret",
        )),
        (_, None) => Err(bad(
            "give public_key (PEM, JWK or base64url), or alg hmac-sha256",
        )),
        (alg, Some(text)) => {
            let (alg, raw) = public_key_from_text(alg, &text).map_err(|_| {
                bad("public_key is not a valid Ed25519 or P-256 public key (PEM, JWK or base64url of the raw key) for alg")
            })?;
            Ok(ValidMaterial {
                alg,
                public_key: Some(raw),
            })
        }
    }
}

fn view(service: &Service, row: &RequestSigningRow, with_secret: bool) -> SigningMaterialView {
    let alg = row.alg.clone().unwrap_or_default();
    let hmac = alg == SigningAlgorithm::HmacSha256.name();
    let secret = (hmac && with_secret).then(|| {
        STANDARD.encode(
            derive_hmac_secret(service.gateway_key(), &row.key_id, row.generation).as_slice(),
        )
    });
    SigningMaterialView {
        alg,
        public_key: row.public_key.clone(),
        generation: hmac.then_some(row.generation),
        secret,
    }
}

/// Stores checked material for key `key_id` (a new generation).
pub async fn store(
    service: &Service,
    key_id: &str,
    material: &ValidMaterial,
) -> Result<SigningMaterialView, ApiError> {
    let row = service
        .store()
        .set_request_signing(
            key_id,
            material.alg.name(),
            material.public_key.as_deref(),
            service.now(),
        )
        .await?;
    tracing::info!(key_id = %key_id, alg = material.alg.name(), "signing material set");
    Ok(view(service, &row, true))
}

/// Sets (registers or replaces) the signing material of a key the caller may change.
pub async fn set(
    service: &Service,
    access: &Access,
    id: &KeyId,
    request: &SigningMaterialRequest,
) -> Result<SigningMaterialView, ApiError> {
    visible(service, access, id).await?;
    let material = validate(request)?;
    store(service, id.as_str(), &material).await
}

/// Removes the signing material of a key the caller may change.
pub async fn remove(service: &Service, access: &Access, id: &KeyId) -> Result<(), ApiError> {
    visible(service, access, id).await?;
    if service
        .store()
        .remove_request_signing(id.as_str(), service.now())
        .await?
    {
        tracing::info!(key_id = %id, "signing material removed");
        Ok(())
    } else {
        Err(ApiError::SigningMaterialNotFound)
    }
}

/// The material of a key as the key object shows it (no secret).
pub async fn shown(
    service: &Service,
    key_id: &str,
) -> Result<Option<SigningMaterialView>, ApiError> {
    let row = service.store().get_request_signing(key_id).await?;
    Ok(row.map(|row| view(service, &row, false)))
}

/// The material of a key as its lookup answer carries it.
pub async fn wire(
    service: &Service,
    key_id: &str,
) -> Result<Option<Box<SigningMaterial>>, ApiError> {
    let row = service.store().get_request_signing(key_id).await?;
    Ok(row.and_then(|row| {
        Some(Box::new(SigningMaterial {
            alg: row.alg?,
            public_key: row.public_key,
            generation: row.generation,
        }))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: serde_json::Value) -> SigningMaterialRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn registrations_are_checked() {
        let raw = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let ok = validate(&request(
            serde_json::json!({"alg": "ed25519", "public_key": raw}),
        ))
        .unwrap();
        assert_eq!(ok.alg, SigningAlgorithm::Ed25519);
        assert_eq!(ok.public_key.as_deref(), Some(raw));
        let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": raw});
        assert!(validate(&request(serde_json::json!({"public_key": jwk}))).is_ok());
        let hmac = validate(&request(serde_json::json!({"alg": "hmac-sha256"}))).unwrap();
        assert_eq!(
            (hmac.alg, hmac.public_key),
            (SigningAlgorithm::HmacSha256, None)
        );
        for body in [
            serde_json::json!({}),
            serde_json::json!({"alg": "rsa"}),
            serde_json::json!({"alg": "hmac-sha256", "public_key": raw}),
            serde_json::json!({"public_key": raw}),
            serde_json::json!({"alg": "ecdsa-p256-sha256", "public_key": raw}),
            serde_json::json!({"alg": "ed25519", "public_key": 7}),
        ] {
            assert!(validate(&request(body.clone())).is_err(), "{body}");
        }
        assert!(serde_json::from_value::<SigningMaterialRequest>(
            serde_json::json!({"secret": "x"})
        )
        .is_err());
    }
}
