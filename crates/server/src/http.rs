//! The HTTP layer: the REST API over the [`crate::service`] operations. The management API
//! (admin key), the filter's lookup, revocation feed, usage and stats (service token), the
//! public JWKS, health and metrics.
//!
//! [`state`] holds [`state::AppState`], [`extract`] what handlers take from a
//! request (credentials, the caller, a JSON body), [`problem`] the mapping of a service error
//! to an RFC 9457 problem; every other file is one resource's handlers. [`app`] routes them.

pub mod audit;
pub mod blocks;
pub mod events;
pub mod extract;
pub mod feed;
pub mod fleet;
pub mod health;
pub mod keys;
pub mod leases;
pub mod legacy;
pub mod lookup;
pub mod metrics;
pub mod pools;
pub mod problem;
pub mod roles;
pub mod secret_scanning;
pub mod session;
pub mod signing_keys;
pub mod state;
pub mod ui;
pub mod usage;
pub mod webhooks;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{delete, get, post, put};
use axum::Router;

use crate::service::error::ApiError;
use crate::service::legacy::MAX_IMPORT_BYTES;
use state::AppState;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The whole HTTP API, ready to serve or to test with `oneshot`.
pub fn app(state: AppState) -> Router {
    // Owners may use these (each handler limits them to their own keys).
    let managed = Router::new()
        .route(
            "/api/v1/auth/keys",
            post(keys::create_key).get(keys::list_keys),
        )
        .route(
            "/api/v1/auth/keys/{id}",
            get(keys::show_key)
                .delete(keys::revoke_key)
                .patch(keys::update_key),
        )
        .route("/api/v1/auth/keys/{id}/usage", get(usage::key_usage))
        .route("/api/v1/auth/keys/{id}/rotate", post(keys::rotate_key))
        .route("/api/v1/auth/keys/{id}/expire", post(keys::expire_key))
        .route(
            "/api/v1/auth/keys/{id}/signing-material",
            put(keys::set_signing_material).delete(keys::remove_signing_material),
        )
        .route("/api/v1/audit", get(audit::list_audit))
        .route("/api/v1/events", get(events::events));
    // Admins only: an owner gets 403 `forbidden`.
    let admin_only = Router::new()
        .route("/api/v1/signing-keys", get(signing_keys::list_signing_keys))
        .route(
            "/api/v1/signing-keys/rotate",
            post(signing_keys::rotate_signing_key),
        )
        .route("/api/v1/fleet", get(fleet::list_fleet))
        .route("/api/v1/pools", get(pools::list_pools))
        .route(
            "/api/v1/pools/{owner}",
            get(pools::show_pool)
                .put(pools::set_pool)
                .delete(pools::delete_pool),
        )
        .route(
            "/api/v1/roles",
            post(roles::create_role).get(roles::list_roles),
        )
        .route(
            "/api/v1/roles/{name}",
            get(roles::show_role)
                .patch(roles::update_role)
                .delete(roles::delete_role),
        )
        .route(
            "/api/v1/blocks",
            post(blocks::add_block).get(blocks::list_blocks),
        )
        .route("/api/v1/blocks/{id}", delete(blocks::remove_block))
        .route(
            "/api/v1/webhooks",
            post(webhooks::create_webhook).get(webhooks::list_webhooks),
        )
        .route(
            "/api/v1/webhooks/{id}",
            get(webhooks::show_webhook).delete(webhooks::delete_webhook),
        )
        .route(
            "/api/v1/webhooks/{id}/deliveries",
            get(webhooks::list_deliveries),
        )
        .route(
            "/api/v1/webhooks/{id}/deliveries/{delivery}/redeliver",
            post(webhooks::redeliver),
        )
        .route(
            "/api/v1/auth/keys/import",
            post(legacy::import_keys).layer(DefaultBodyLimit::max(MAX_IMPORT_BYTES)),
        )
        .route_layer(middleware::from_fn(extract::admin_only));
    let management = managed
        .merge(admin_only)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            audit::audit_management,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            extract::require_management,
        ));
    let service = Router::new()
        .route("/v1/keys/{id}", get(lookup::lookup_key))
        .route("/v1/revocations", get(feed::revocations))
        .route("/v1/stats", get(health::stats))
        .route("/v1/legacy-keys/{digest}", get(legacy::lookup_legacy_key))
        .route(
            keygate_core::fleet::LEASES_PATH,
            post(leases::take_leases)
                .layer(DefaultBodyLimit::max(
                    keygate_core::fleet::LEASES_BODY_LIMIT,
                ))
                .route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    extract::require_service,
                )),
        )
        .route(
            keygate_core::wire::USAGE_PATH,
            post(usage::ingest_usage)
                .layer(DefaultBodyLimit::max(state.usage_body_limit()))
                // Before the body is read: an anonymous client never makes the service hold
                // a batch of up to the usage body limit.
                .route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    extract::require_service,
                )),
        );
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/.well-known/jwks.json", get(signing_keys::jwks))
        .route("/metrics", get(metrics::metrics_endpoint))
        // Authenticated by the report's own signature, not a bearer credential.
        .route("/api/v1/secret-scanning", post(secret_scanning::report))
        .route(
            "/ui/api/session",
            post(session::login)
                .get(session::show)
                .delete(session::logout),
        )
        .merge(management)
        .merge(service)
        .merge(ui::routes())
        .fallback(|| async { ApiError::RouteNotFound })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::map_response(problem::problem_for_every_error))
        .layer(middleware::from_fn(session::no_store))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}
