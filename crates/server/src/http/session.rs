//! Login sessions of the management page: `POST|GET|DELETE /ui/api/session` (see
//! [`crate::service::sessions`]), the session cookie, the CSRF check of requests made with it,
//! and `Cache-Control: no-store` on every API answer.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

#[cfg(test)]
use crate::http::extract::same_origin;
use crate::http::extract::{
    check_csrf, login_address, parse_json, read_body, session_cookie, source_of,
};
use crate::http::state::AppState;
use crate::service::error::{ApiError, Realm};
use crate::service::sessions::{self, LiveSession, LoginClient, SESSION_COOKIE};

/// The body of `POST /ui/api/session`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    key: String,
}

fn set_cookie(state: &AppState, value: &str, max_age: i64) -> Result<HeaderValue, ApiError> {
    let secure = if state.service().sessions().settings().secure_cookie {
        "; Secure"
    } else {
        ""
    };
    let text = format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    );
    HeaderValue::from_str(&text)
        .map_err(|_| ApiError::Internal("session cookie is not a header value".into()))
}

/// `POST /ui/api/session`: logs in with an admin key or management key.
pub async fn login(
    State(state): State<AppState>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = read_body(body)?;
    let request: LoginRequest = parse_json(&body)?;
    let client = LoginClient {
        address: login_address(&parts),
        source: source_of(&parts),
    };
    let (view, session_id) = sessions::login(state.service(), &request.key, &client).await?;
    let ttl = view.expires_at.saturating_sub(state.now());
    let cookie = set_cookie(&state, &session_id, ttl)?;
    let mut response = Json(view).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

/// The live session of a request's cookie, or 401.
async fn live_session(state: &AppState, headers: &HeaderMap) -> Result<LiveSession, ApiError> {
    let cookie = session_cookie(headers).ok_or(ApiError::MissingCredential(Realm::Admin))?;
    sessions::resolve(state.service(), cookie)
        .await?
        .ok_or(ApiError::InvalidCredential(Realm::Admin))
}

/// `GET /ui/api/session`: the session of the cookie, with its CSRF token.
pub async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<sessions::SessionView>, ApiError> {
    Ok(Json(live_session(&state, &headers).await?.view))
}

/// `DELETE /ui/api/session`: logs out (needs the CSRF header) and clears the cookie.
pub async fn logout(State(state): State<AppState>, parts: Parts) -> Result<Response, ApiError> {
    let session = live_session(&state, &parts.headers).await?;
    check_csrf(&parts, &session)?;
    sessions::logout(state.service(), &session, source_of(&parts)).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&state, "", 0)?);
    Ok(response)
}

/// Middleware: `Cache-Control: no-store` on every answer under `/api/` and `/ui/api/`.
pub async fn no_store(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let api = path.starts_with("/api/") || path.starts_with("/ui/api/");
    let mut response = next.run(request).await;
    if api {
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        assert_eq!(session_cookie(&headers), None);
        headers.insert(
            header::COOKIE,
            "a=1; keygate_session=abc ; b=2".parse().unwrap(),
        );
        assert_eq!(session_cookie(&headers), Some("abc"));
    }

    #[test]
    fn origins_must_match_the_host() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, value.parse().unwrap());
            }
            map
        };
        assert!(same_origin(&headers(&[("host", "k:8080")])));
        assert!(same_origin(&headers(&[
            ("host", "k:8080"),
            ("origin", "http://k:8080")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "k:8080"),
            ("origin", "https://evil.example")
        ])));
        assert!(!same_origin(&headers(&[("host", "k"), ("origin", "null")])));
        assert!(!same_origin(&headers(&[
            ("host", "k"),
            ("sec-fetch-site", "cross-site")
        ])));
    }
}
