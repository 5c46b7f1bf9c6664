//! The dashboard: one small page (HTML, CSS, JS) embedded in the binary and served at `/ui/`.
//! It talks to the management API with `fetch` and to `/api/v1/events` with `EventSource`,
//! through the session cookie of `/ui/api/session`; it has no server-side rendering.
//!
//! Every asset answers with a strict Content-Security-Policy (its own origin only, no inline
//! script or style), `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff` and
//! `Referrer-Policy: no-referrer`; nothing here is cached (`Cache-Control: no-store`), so a
//! logged-out browser keeps no copy of a page that once showed a key.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::http::state::AppState;

/// The page's Content-Security-Policy: scripts, styles, fonts and requests from the page's own
/// origin only, images also as `data:`; no framing, no `<base>`, forms post to the origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");
const ICON_SVG: &str = include_str!("../../ui/icon.svg");

/// The routes of the page's assets: `/ui` (redirect), `/ui/`, `/ui/app.js`, `/ui/app.css`,
/// `/ui/icon.svg`. Any other path under `/ui/` falls through to the API's 404 problem.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route(
            "/ui/",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/index.html",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/ui/icon.svg",
            get(|| async { asset(ICON_SVG, "image/svg+xml") }),
        )
}

/// An embedded asset with the page's security headers.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The headers every asset carries.
const SECURITY_HEADERS: [(HeaderName, &str); 5] = [
    (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CACHE_CONTROL, "no-store"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_nothing_inline() {
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        assert!(CONTENT_SECURITY_POLICY.contains("frame-ancestors 'none'"));
        assert!(CONTENT_SECURITY_POLICY.starts_with("default-src 'none';"));
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        for text in [INDEX_HTML, ICON_SVG] {
            let lower = text.to_ascii_lowercase();
            assert!(!lower.contains("<script>"), "inline script");
            assert!(!lower.contains("style="), "inline style attribute");
            assert!(!lower.contains("<style"), "inline style element");
            assert!(!has_inline_handler(&lower), "inline event handler");
            assert!(!lower.contains("javascript:"), "javascript: URL");
        }
        // The script never writes markup from strings: text goes in through textContent.
        assert!(!APP_JS.contains("innerHTML"));
        assert!(!APP_JS.contains("outerHTML"));
        assert!(!APP_JS.contains("insertAdjacentHTML"));
        assert!(!APP_JS.contains("eval("));
        assert!(!APP_JS.contains("setAttribute('style'"));
    }

    /// An attribute like ` onclick=`: ` on`, letters, `=`.
    fn has_inline_handler(text: &str) -> bool {
        text.match_indices(" on").any(|(at, _)| {
            let rest = &text[at + 3..];
            let letters = rest.chars().take_while(char::is_ascii_alphabetic).count();
            letters > 0 && rest[letters..].trim_start().starts_with('=')
        })
    }

    #[test]
    fn every_asset_has_the_security_headers() {
        let response = asset(INDEX_HTML, "text/html; charset=utf-8");
        let headers = response.headers();
        assert_eq!(
            headers.get(header::CONTENT_SECURITY_POLICY),
            Some(&HeaderValue::from_static(CONTENT_SECURITY_POLICY))
        );
        assert_eq!(
            headers.get(header::X_FRAME_OPTIONS),
            Some(&HeaderValue::from_static("DENY"))
        );
        assert_eq!(
            headers.get(header::CACHE_CONTROL),
            Some(&HeaderValue::from_static("no-store"))
        );
    }
}
