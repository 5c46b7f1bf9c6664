//! Request-signing material on keys (both backends): registered on create or with
//! `PUT /api/v1/auth/keys/{id}/signing-material`, removed with `DELETE`, owner-scoped and
//! audited; the lookup carries it; an HMAC secret is derived (never stored), shown once, and
//! is the secret the filter derives.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use keygate_core::signature::{derive_hmac_secret, SigningKey};

use super::*;

on_both_backends!(signing_material_is_registered_looked_up_replaced_and_removed,);

const ED25519_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";

fn material(id: &str) -> String {
    format!("{KEYS}/{id}/signing-material")
}

async fn signing_material_is_registered_looked_up_replaced_and_removed(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let raw = SigningKey::from_pkcs8_pem(ED25519_PEM)
        .unwrap()
        .public_key()
        .unwrap();

    // On create, as a JWK: the key object and the lookup carry the public key.
    let created = h
        .create(
            json!({"name": "signer", "scopes": ["demo:read"], "owner": "alice",
            "signing_material": {"public_key": {"kty": "OKP", "crv": "Ed25519", "x": raw}}}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created["signing_material"],
        json!({"alg": "ed25519", "public_key": raw})
    );
    assert_eq!(h.show(&id).await["signing_material"]["alg"], "ed25519");
    let lookup = h.lookup(&id).await;
    let wire: keygate_core::wire::KeyLookup = serde_json::from_value(lookup.body).unwrap();
    let signing = wire.signing.unwrap();
    assert_eq!(
        (signing.alg.as_str(), signing.public_key.as_deref()),
        ("ed25519", Some(raw.as_str()))
    );

    // Bad material is refused, on create (no key is made) and on PUT.
    let before = h.admin("GET", KEYS, None).await.body["keys"]
        .as_array()
        .unwrap()
        .len();
    let refused = h
        .admin(
            "POST",
            KEYS,
            Some(json!({"name": "x", "scopes": ["demo:read"],
            "signing_material": {"alg": "ecdsa-p256-sha256", "public_key": raw}})),
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    assert_eq!(
        h.admin("GET", KEYS, None).await.body["keys"]
            .as_array()
            .unwrap()
            .len(),
        before
    );
    for body in [
        json!({}),
        json!({"alg": "hmac-sha256", "public_key": raw}),
        json!({"alg": "rsa"}),
        json!({"public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"}),
    ] {
        let answer = h.admin("PUT", &material(&id), Some(body.clone())).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            answer.body
        );
        assert_eq!(answer.body["type"], "urn:keygate:problem:invalid-request");
    }

    // Replaced by HMAC: the secret is shown once and is the one the filter derives.
    let set = h
        .admin("PUT", &material(&id), Some(json!({"alg": "hmac-sha256"})))
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    assert_eq!(set.body["alg"], "hmac-sha256");
    let generation = u32::try_from(set.body["generation"].as_u64().unwrap()).unwrap();
    let gateway = GatewayKey::from_hex(GATEWAY_HEX).unwrap();
    let secret = STANDARD
        .decode(set.body["secret"].as_str().unwrap())
        .unwrap();
    assert_eq!(secret, *derive_hmac_secret(&gateway, &id, generation));
    let shown = h.show(&id).await;
    assert_eq!(
        shown["signing_material"],
        json!({"alg": "hmac-sha256", "generation": generation})
    );
    let wire: keygate_core::wire::KeyLookup =
        serde_json::from_value(h.lookup(&id).await.body).unwrap();
    let signing = wire.signing.unwrap();
    assert_eq!(
        (signing.alg.as_str(), signing.public_key, signing.generation),
        ("hmac-sha256", None, generation)
    );
    // Registering again makes a new secret; removing and registering again never brings an
    // old one back.
    let again = h
        .admin("PUT", &material(&id), Some(json!({"alg": "hmac-sha256"})))
        .await;
    assert_ne!(again.body["secret"], set.body["secret"]);
    let removed = h.admin("DELETE", &material(&id), None).await;
    assert_eq!(removed.status, StatusCode::OK);
    assert_eq!(removed.body, json!({"id": id, "signing_material": null}));
    assert!(h.show(&id).await.get("signing_material").is_none());
    let lookup = h.lookup(&id).await;
    assert!(lookup.body.get("signing").is_none(), "{}", lookup.body);
    let gone = h.admin("DELETE", &material(&id), None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let third = h
        .admin("PUT", &material(&id), Some(json!({"alg": "hmac-sha256"})))
        .await;
    assert!(third.body["generation"].as_u64().unwrap() > u64::from(generation) + 1);

    // A P-256 key as PEM.
    use p256::pkcs8::EncodePublicKey as _;
    let p = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
    let pem = p
        .verifying_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .unwrap();
    let set = h
        .admin("PUT", &material(&id), Some(json!({"public_key": pem})))
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    assert_eq!(set.body["alg"], "ecdsa-p256-sha256");
    assert_eq!(
        set.body["public_key"],
        URL_SAFE_NO_PAD.encode(p.verifying_key().to_encoded_point(false).as_bytes())
    );
    assert!(set.body.get("secret").is_none());

    // Owner-scoped: another owner's management key sees 404; the owner's own works.
    let bob = h
        .create(json!({"name": "bob", "scopes": ["keygate:owner:bob"]}))
        .await;
    let bob = bob["key"].as_str().unwrap();
    for (method, body) in [
        ("PUT", Some(json!({"alg": "hmac-sha256"}).to_string())),
        ("DELETE", None),
    ] {
        let answer = h
            .send(method, &material(&id), Some(bob), body.as_deref())
            .await;
        assert_eq!(
            answer.status,
            StatusCode::NOT_FOUND,
            "{method}: {}",
            answer.body
        );
    }
    let alice = h
        .create(json!({"name": "alice", "scopes": ["keygate:owner:alice"]}))
        .await;
    let alice = alice["key"].as_str().unwrap();
    let body = json!({"alg": "ed25519", "public_key": raw}).to_string();
    let answer = h
        .send("PUT", &material(&id), Some(alice), Some(&body))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

    // Audited, with the algorithm and never a secret.
    let page = h
        .admin(
            "GET",
            "/api/v1/audit?action=signing_material_set&limit=500",
            None,
        )
        .await;
    let entries = page.body["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", page.body));
    assert!(
        entries.iter().any(|e| e["target"] == id.as_str()
            && e["outcome"] == "ok"
            && e["detail"] == json!({"alg": "hmac-sha256"})),
        "{}",
        page.body
    );
    assert!(!page
        .body
        .to_string()
        .contains(again.body["secret"].as_str().unwrap()));
    let removed = h
        .admin("GET", "/api/v1/audit?action=signing_material_remove", None)
        .await;
    assert!(!removed.body["entries"].as_array().unwrap().is_empty());
}
