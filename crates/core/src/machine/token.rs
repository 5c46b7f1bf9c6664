//! JWT credentials: each issuer's key set (inline, or fetched by one worker per Envoy and
//! shared with the others through shared data), the verified-token cache, and requests that
//! wait for a JWKS refetch after presenting an unknown `kid`.

use crate::binding::Attributes;
use crate::binding::Requirement;
use crate::config::{JwksSource, Revocation};
use crate::decision::{authorize_scopes, header_safe, DenyReason, Identity};
use crate::host::LogLevel;
use crate::jwt::cache::CachedToken;
use crate::jwt::{looks_like_jwt, peek_issuer, verify_jwt_with, JwtError, NativeVerifier};
use crate::key::KeyId;
use crate::machine::jwks::{jwks_lease_key, load_shared, JwksFetcher};
use crate::machine::lease::SharedLease;

use crate::host::Event;
use crate::host::Host;
use crate::machine::answer::complete;
use crate::machine::records::resolve_record;
use crate::machine::state::{
    Forwarding, JwtState, Presented, Proof, Shared, Step, TokenRequest, TokenWaiter,
};

/// How long a token without `exp` stays in the verified-token cache.
const NO_EXPIRY_CACHE_S: u64 = 300;

/// At configure: create the fetch leases (so taking one is a compare-and-swap) and load
/// whatever JWKS another worker already fetched.
pub fn on_start(host: &impl Host, shared: &Shared) {
    let count = shared.jwt.borrow().issuers.len();
    for index in 0..count {
        SharedLease::new(&jwks_lease_key(index)).create(host);
        load_shared_jwks(host, shared, index);
    }
}

/// Finds a token in the verified-token cache, or else (when it has a JWT's shape: three
/// base64url segments) verifies it; then checks revocation and scopes. Any other credential
/// is a malformed key. A cached token was seen whole before, so its shape is not looked at
/// again: on the cached path the token's bytes are read once, by its fingerprint.
pub fn evaluate_token(
    host: &impl Host,
    shared: &Shared,
    context_id: u32,
    token: &str,
    required: Requirement,
    forwarding: Forwarding,
) -> Step {
    let now_ms = shared.now(host);
    let hash = shared.fingerprints.of(token.as_bytes());
    let hit = shared
        .jwt
        .borrow_mut()
        .cache
        .get(&hash, now_ms / 1000)
        .cloned();
    if let Some(cached) = hit {
        shared.metrics.count(host, Event::TokenCacheHit);
        return decide_token(host, shared, context_id, cached, required, forwarding);
    }
    let mode = forwarding.mode;
    if !looks_like_jwt(token) {
        return Step::Deny(DenyReason::MalformedKey, None, mode);
    }
    match verify(host, shared, token, now_ms) {
        Verified::Token(cached) => {
            shared.jwt.borrow_mut().cache.insert(hash, cached.clone());
            decide_token(host, shared, context_id, cached, required, forwarding)
        }
        Verified::UnknownKid(issuer) => {
            let request = TokenRequest {
                token: token.to_owned(),
                required,
                forwarding,
            };
            if wait_for_keys(host, shared, issuer, context_id, request, now_ms) {
                return Step::Wait;
            }
            Step::Deny(DenyReason::InvalidToken(JwtError::UnknownKeyId), None, mode)
        }
        Verified::Refused(err) => Step::Deny(DenyReason::InvalidToken(err), None, mode),
    }
}

fn decide_token(
    host: &impl Host,
    shared: &Shared,
    context_id: u32,
    cached: CachedToken,
    required: Requirement,
    forwarding: Forwarding,
) -> Step {
    let revocation = shared
        .config
        .jwt
        .issuers
        .get(cached.issuer)
        .map_or(Revocation::None, |i| i.revocation);
    let revoked = if cached.identity.key_id.is_empty() {
        None
    } else {
        crate::machine::state::revocation(shared, &cached.identity.key_id, shared.now(host))
    };
    if let Some(reason) = revoked {
        return Step::Deny(
            reason,
            Some(cached.identity.key_id.to_string()),
            forwarding.mode,
        );
    }
    match revocation {
        Revocation::None => Step::Decided(forwarding, authorize_scopes(cached.identity, &required)),
        Revocation::KeyService => match KeyId::parse(&cached.identity.key_id) {
            Ok(key_id) => resolve_record(
                host,
                shared,
                context_id,
                Presented {
                    key_id,
                    proof: Proof::Token(cached.identity),
                    required,
                    forwarding,
                    legacy: false,
                },
            ),
            // This issuer's tokens name a key record in `jti`; one without is not ours.
            Err(_) => Step::Deny(DenyReason::UnknownKey, None, forwarding.mode),
        },
    }
}

enum Verified {
    Token(CachedToken),
    UnknownKid(usize),
    Refused(JwtError),
}

fn select_issuer(shared: &Shared, token: &str) -> Option<usize> {
    let issuers = &shared.config.jwt.issuers;
    if issuers.len() == 1 {
        // `verify_jwt` checks `iss` anyway; no need to decode the claims twice.
        return Some(0);
    }
    let iss = peek_issuer(token)?;
    issuers.iter().position(|i| i.validation.issuer == iss)
}

/// Verifies a token; on an unknown `kid`, first picks up a JWKS that another worker may
/// have fetched since this one last looked, and tries once more.
fn verify(host: &impl Host, shared: &Shared, token: &str, now_ms: u64) -> Verified {
    match verify_once(host, shared, token, now_ms) {
        Verified::UnknownKid(index) if load_shared_jwks(host, shared, index) => {
            verify_once(host, shared, token, now_ms)
        }
        other => other,
    }
}

fn verify_once(host: &impl Host, shared: &Shared, token: &str, now_ms: u64) -> Verified {
    let Some(index) = select_issuer(shared, token) else {
        return Verified::Refused(JwtError::WrongIssuer);
    };
    let Some(issuer) = shared.config.jwt.issuers.get(index) else {
        return Verified::Refused(JwtError::WrongIssuer);
    };
    let state = shared.jwt.borrow();
    let Some(keys) = state.issuers.get(index).map(|i| &i.keys) else {
        return Verified::Refused(JwtError::WrongIssuer);
    };
    let verifier = state.host_crypto.as_ref().map(|h| h.verifier(host));
    let native = verifier.as_ref().map(|v| v as &dyn NativeVerifier);
    match verify_jwt_with(token, keys, &issuer.validation, now_ms / 1000, native) {
        Ok(verified) => {
            let now_s = now_ms / 1000;
            let valid_until_s = verified.expires_at.unwrap_or(now_s + NO_EXPIRY_CACHE_S);
            // Only a Keygate issuer's `jti` is a Keygate key id. An outside issuer's token
            // carries none: its identity, bucket and usage are its issuer's and subject's, so
            // a `sub` or `jti` that spells a Keygate owner or key id is never taken for one.
            let key_id = match issuer.revocation {
                Revocation::KeyService => verified.jti.as_deref().map(header_safe),
                Revocation::None => None,
            };
            Verified::Token(CachedToken {
                identity: Identity::new(
                    &header_safe(&verified.subject),
                    key_id.as_deref().unwrap_or_default(),
                    verified.scopes,
                    None,
                )
                .issued_by(&header_safe(&verified.issuer))
                .with_attributes(Attributes {
                    claims: verified.claims,
                    ..Attributes::default()
                }),
                issuer: index,
                kid: verified.kid.into(),
                valid_until_s,
            })
        }
        Err(JwtError::UnknownKeyId) if issuer_is_remote(shared, index) => {
            Verified::UnknownKid(index)
        }
        Err(err) => Verified::Refused(err),
    }
}

fn issuer_is_remote(shared: &Shared, index: usize) -> bool {
    matches!(
        shared.config.jwt.issuers.get(index).map(|i| &i.jwks),
        Some(JwksSource::Remote(_))
    )
}

/// Parks a request whose `kid` is unknown while the issuer's JWKS is refetched. Returns
/// false when no refetch may happen now (one was done too recently): the token is refused.
fn wait_for_keys(
    host: &impl Host,
    shared: &Shared,
    index: usize,
    context_id: u32,
    request: TokenRequest,
    now_ms: u64,
) -> bool {
    let mut state = shared.jwt.borrow_mut();
    let Some(issuer) = state.issuers.get_mut(index) else {
        return false;
    };
    let Some(remote) = &issuer.remote else {
        return false;
    };
    issuer.wait.park(
        host,
        JwksFetcher { index, remote },
        &mut shared.callouts.borrow_mut(),
        now_ms,
        || {
            let mut request = request;
            crate::machine::state::resolve_client(host, &mut request.forwarding);
            TokenWaiter {
                context_id,
                request,
            }
        },
    )
}

/// A JWKS fetch answered: keep a good document (share it, load it), keep the old keys on a
/// bad one. Then answer the requests that waited.
pub fn on_response(host: &impl Host, shared: &Shared, index: usize, body_size: usize) {
    let remote = shared
        .jwt
        .borrow()
        .issuers
        .get(index)
        .and_then(|i| i.remote.clone());
    if let Some(remote) = remote {
        let fetcher = JwksFetcher {
            index,
            remote: &remote,
        };
        if fetcher.on_response(host, body_size, shared.now(host)) {
            load_shared_jwks(host, shared, index);
        }
    }
    retry_waiters(host, shared, index);
}

/// Loads the issuer's JWKS from shared data when it changed since this worker last did.
/// Returns true when new keys were loaded.
fn load_shared_jwks(host: &impl Host, shared: &Shared, index: usize) -> bool {
    let loaded = shared
        .jwt
        .borrow()
        .issuers
        .get(index)
        .and_then(|i| i.version);
    let Some((keys, cas)) = load_shared(host, index, loaded) else {
        return false;
    };
    let mut state = shared.jwt.borrow_mut();
    let JwtState { issuers, cache, .. } = &mut *state;
    let Some(issuer) = issuers.get_mut(index) else {
        return false;
    };
    issuer.keys = keys;
    issuer.version = Some(cas);
    // A signing key that left the JWKS takes the verdicts it signed with it.
    let keys = &issuer.keys;
    let dropped = cache.drop_removed_keys(index, |kid| keys.get(kid).is_some());
    drop(state);
    if dropped > 0 {
        host.log(
            LogLevel::Info,
            &format!(
                "JWKS of issuer {index}: dropped {dropped} cached token(s) of removed signing keys"
            ),
        );
    }
    true
}

/// Re-runs the requests that waited for an issuer's keys: they pass, fail, or go on to
/// wait for a key record.
fn retry_waiters(host: &impl Host, shared: &Shared, index: usize) {
    let waiters = match shared.jwt.borrow_mut().issuers.get_mut(index) {
        Some(issuer) => issuer.wait.take(),
        None => return,
    };
    let now_ms = shared.now(host);
    for waiter in waiters {
        let mode = waiter.request.forwarding.mode;
        let step = match verify(host, shared, &waiter.request.token, now_ms) {
            Verified::Token(cached) => {
                let hash = shared.fingerprints.of(waiter.request.token.as_bytes());
                shared.jwt.borrow_mut().cache.insert(hash, cached.clone());
                let request = waiter.request;
                decide_token(
                    host,
                    shared,
                    waiter.context_id,
                    cached,
                    request.required,
                    request.forwarding,
                )
            }
            Verified::UnknownKid(_) => {
                Step::Deny(DenyReason::InvalidToken(JwtError::UnknownKeyId), None, mode)
            }
            Verified::Refused(err) => Step::Deny(DenyReason::InvalidToken(err), None, mode),
        };
        complete(host, shared, waiter.context_id, step);
    }
}

/// Periodic work: pick up a JWKS another worker fetched, refresh a JWKS that is due, and
/// give up on waiters whose fetch never came.
pub fn on_tick(host: &impl Host, shared: &Shared) {
    let now_ms = shared.now(host);
    {
        // Ticks come fast while the feed is followed; JWKS work needs them once a second
        // unless requests wait for keys.
        let mut state = shared.jwt.borrow_mut();
        if !state.has_waiters() && now_ms.saturating_sub(state.last_tick_ms) < 1_000 {
            return;
        }
        state.last_tick_ms = now_ms;
    }
    let count = shared.jwt.borrow().issuers.len();
    for index in 0..count {
        let (remote, overdue) = {
            let state = shared.jwt.borrow();
            let Some(issuer) = state.issuers.get(index) else {
                continue;
            };
            let Some(remote) = issuer.remote.clone() else {
                continue;
            };
            let overdue = issuer.wait.overdue(&remote, now_ms);
            (remote, overdue)
        };
        if load_shared_jwks(host, shared, index) {
            retry_waiters(host, shared, index);
            continue;
        }
        if overdue {
            retry_waiters(host, shared, index);
        }
        if let Some(issuer) = shared.jwt.borrow_mut().issuers.get_mut(index) {
            let fetcher = JwksFetcher {
                index,
                remote: &remote,
            };
            let mut callouts = shared.callouts.borrow_mut();
            issuer.wait.refresh(host, fetcher, &mut callouts, now_ms);
        }
    }
}
