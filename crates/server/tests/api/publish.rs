//! A JWT signing key is in the JWKS before it signs: a filter that meets its `kid` has either
//! fetched it already or may refetch (see `keygate_server::service::signing`).

use std::time::Instant;

use keygate_server::service::signing::JwtSettings;

use crate::{harness_with, jwt_settings, NOW};

const DELAY: i64 = 10;

fn kid_of(created: &serde_json::Value) -> String {
    created["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_rotated_signing_key_is_published_for_the_delay_before_it_signs() {
    let h = harness_with(JwtSettings {
        publish_delay_s: DELAY,
        ..jwt_settings()
    })
    .await;
    // Keys made at start, long ago: they sign at once.
    h.state
        .jwt()
        .prepare(h.state.store(), NOW - 3600)
        .await
        .unwrap();
    let old_es = kid_of(&h.create_jwt("ES256", 60).await);
    let kids = h.jwks_kids().await;
    let old_ed = kids
        .iter()
        .find(|k| k.starts_with("kg-eddsa-"))
        .unwrap()
        .clone();

    let new_es = h.rotate_signing_key("ES256").await["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let new_ed = h.rotate_signing_key("EdDSA").await["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    // Published at once, beside the keys they replace.
    let kids = h.jwks_kids().await;
    for kid in [&old_es, &new_es, &old_ed, &new_ed] {
        assert!(kids.contains(kid), "{kid} not in {kids:?}");
    }
    // Until the delay has passed, the previous keys go on signing.
    for _ in 0..DELAY {
        assert_eq!(kid_of(&h.create_jwt("ES256", 60).await), old_es);
        let kids = h.jwks_kids().await;
        assert!(kids.contains(&old_ed) && kids.contains(&new_ed), "{kids:?}");
        h.clock.advance(1);
    }
    // Then the new ones take over, each in the JWKS for DELAY seconds already.
    assert_eq!(kid_of(&h.create_jwt("ES256", 60).await), new_es);
    assert_eq!(kid_of(&h.create_jwt("EdDSA", 60).await), new_ed);
    // The old ES256 key stays published while tokens it signed live; the old EdDSA key,
    // which signed nothing, leaves once it can no longer sign (and the JWKS leeway is over).
    let kids = h.jwks_kids().await;
    assert!(kids.contains(&old_es), "{kids:?}");
    h.clock.advance(61);
    let kids = h.jwks_kids().await;
    assert!(!kids.contains(&old_ed), "{kids:?}");
    assert!(kids.contains(&new_es) && kids.contains(&new_ed), "{kids:?}");
    // The management API says from when each key signs.
    let list = h.admin("GET", crate::SIGNING_KEYS, None).await;
    let rotated = list.body["signing_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == new_es.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        rotated["signs_from"],
        crate::rfc3339(NOW + DELAY).as_str(),
        "{rotated}"
    );
}

#[tokio::test]
async fn the_first_key_of_an_algorithm_waits_out_the_delay_before_it_signs() {
    let h = harness_with(JwtSettings {
        publish_delay_s: 1,
        ..jwt_settings()
    })
    .await;
    // No key yet (a database's very first start): the key is made and published now, and the
    // token is signed only once it has been published for the delay.
    let started = Instant::now();
    let created = h.create_jwt("RS256", 60).await;
    assert!(
        started.elapsed().as_millis() >= 1000,
        "signed after {:?}",
        started.elapsed()
    );
    assert!(h.jwks_kids().await.contains(&kid_of(&created)));
}
