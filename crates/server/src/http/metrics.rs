//! Prometheus metrics over HTTP: the middleware that counts every answer, and `GET /metrics`
//! (see [`crate::service::metrics`]).

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::state::AppState;
use crate::service::metrics::{render, CONTENT_TYPE, OTHER};

/// Middleware: counts every answer by route template (one of the router's own, or [`OTHER`]),
/// method and status class.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| OTHER.to_owned(), |path| path.as_str().to_owned());
    let method = request.method().clone();
    let response = next.run(request).await;
    state
        .metrics()
        .count_request(&route, &method, response.status());
    response
}

/// `GET /metrics` (no credential).
pub async fn metrics_endpoint(State(state): State<AppState>) -> Response {
    let service = state.service();
    let body = render(
        service.metrics(),
        state.lookups_served(),
        service.feed_counters(),
        service.store(),
        service.now(),
    )
    .await;
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}
