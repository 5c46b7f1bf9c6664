//! The key service's connections: HTTP/1.1 over TCP or TLS, with bounded request heads, and a
//! graceful stop.
//!
//! Limits on what a client can make the service buffer before any handler runs:
//!
//! | what | limit | answer |
//! |---|---|---|
//! | bytes buffered while a request head is incomplete | [`MAX_BUFFERED_HEAD_BYTES`] | 431, connection closed |
//! | a complete request head (request line and headers) | [`MAX_REQUEST_HEAD_BYTES`] | 431, connection closed |
//! | header fields | [`MAX_HEADERS`] | 431, connection closed |
//! | the request target (path and query) | [`MAX_REQUEST_TARGET_BYTES`] | 414 problem+json |
//! | header names and values together | [`MAX_HEADER_BYTES`] | 431 problem+json |
//! | a TLS handshake | [`TLS_HANDSHAKE_TIMEOUT`] | connection closed |
//! | reading a request head (and the wait for the next one on a kept-alive connection) | [`HEADER_READ_TIMEOUT`] | connection closed |
//! | open connections | [`MAX_CONNECTIONS`] | a new one is closed at once |
//!
//! The first three are enforced by hyper's parser, whose answers have no body; the others are
//! checked before routing and answered as `application/problem+json`. Bodies are limited per
//! endpoint by the API itself.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// The most bytes buffered for one request head that is not complete yet (hyper's read
/// buffer). Past it hyper answers 431 and closes the connection.
pub const MAX_BUFFERED_HEAD_BYTES: usize = 64 * 1024;
/// The largest complete request head (request line and header section). Past it: 431.
pub const MAX_REQUEST_HEAD_BYTES: usize = 32 * 1024;
/// The most header fields in one request. Past it: 431.
pub const MAX_HEADERS: usize = 100;
/// The longest request target (path and query). Past it: 414.
pub const MAX_REQUEST_TARGET_BYTES: usize = 8 * 1024;
/// The most bytes of header names and values in one request. Past it: 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// How long a client has to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stop waits for open connections to finish the request they are on.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long a client has to send a whole request head, counted from when the service is ready
/// to read it; on a kept-alive connection that includes the wait for the next request, so an
/// idle connection is closed after this long (as nginx's default `keepalive_timeout`; Envoy's
/// connection pool opens a new one). Bounds how long a slow client can hold a connection.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(75);
/// The most connections served at once; past it a new connection is closed at once. Bounds
/// the memory that clients without any credential can make the service hold (each connection
/// can buffer up to [`MAX_BUFFERED_HEAD_BYTES`]).
pub const MAX_CONNECTIONS: usize = 4096;
/// The pause after a failed accept (out of file descriptors, say) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `shutdown` completes: each connection gets its own task,
/// over TLS when `tls` is given. Then stops accepting, lets open connections finish the
/// request they are on (up to [`SHUTDOWN_GRACE`]), and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) {
    serve_with_limits(listener, app, tls, ConnectionLimits::default(), shutdown).await;
}

/// How long a request head may take and how many connections are served at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// [`serve`] with other [`ConnectionLimits`] (tests use short ones).
pub async fn serve_with_limits(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Per-connection failures (a peer that reset before accept) are not worth
                    // a pause; running out of descriptors is.
                    if !is_connection_error(&error) {
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    continue;
                }
            },
        };
        // Held for the connection's life; none left: closed at once (not logged one by one, as
        // a flood would fill the log).
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::debug!(%peer, "connection limit reached: closed");
            drop(tcp);
            continue;
        };
        // Answers are small and latency matters (a long-poll answer is a revocation on its
        // way): no Nagle delay waiting for the peer's delayed ACK.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let watcher = graceful.watcher();
        let app = app.clone();
        let acceptor = acceptor.clone();
        let head_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                None => serve_connection(tcp, peer, app, watcher, head_timeout).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, app, watcher, head_timeout).await
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_seconds = SHUTDOWN_GRACE.as_secs(),
            "connections still open after the shutdown grace; closing them"
        );
    }
}

/// Serves HTTP/1.1 requests on one connection until the peer closes it or a stop begins.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    app: Router,
    watcher: Watcher,
    header_read_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move {
            match oversized_head(&request) {
                Some(refusal) => Ok::<_, Infallible>(refusal),
                None => app.oneshot(request).await,
            }
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(MAX_BUFFERED_HEAD_BYTES)
        .max_header_size(MAX_REQUEST_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    let connection = http.serve_connection(TokioIo::new(stream), service);
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}

/// The refusal of a request whose target or headers exceed the limits, if they do.
fn oversized_head<B>(request: &Request<B>) -> Option<Response<Body>> {
    let uri = request.uri();
    let target = uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if target > MAX_REQUEST_TARGET_BYTES {
        return Some(problem(
            StatusCode::URI_TOO_LONG,
            "uri-too-long",
            "URI too long",
            &format!("the request target (path and query) must be at most {MAX_REQUEST_TARGET_BYTES} bytes"),
        ));
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Some(problem(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            "Request header fields too large",
            &format!("the request headers must be at most {MAX_HEADER_BYTES} bytes in total"),
        ));
    }
    None
}

/// An RFC 9457 answer in the shape of the API's own problems (`crate::http::problem`).
fn problem(status: StatusCode, slug: &str, title: &str, detail: &str) -> Response<Body> {
    let body = serde_json::json!({
        "type": format!("urn:keygate:problem:{slug}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, headers: &[(&str, String)]) -> Request<()> {
        let mut builder = Request::get(target);
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn heads_within_the_limits_pass() {
        let path = format!("/{}", "a".repeat(MAX_REQUEST_TARGET_BYTES - 1));
        let value = "v".repeat(MAX_HEADER_BYTES - "x-big".len());
        assert!(oversized_head(&request(&path, &[("x-big", value)])).is_none());
    }

    #[test]
    fn a_long_target_is_414_and_large_headers_431() {
        let path = format!("/{}", "a".repeat(MAX_REQUEST_TARGET_BYTES));
        let refused = oversized_head(&request(&path, &[])).unwrap();
        assert_eq!(refused.status(), StatusCode::URI_TOO_LONG);
        assert_eq!(
            refused.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let query = format!("/x?q={}", "a".repeat(MAX_REQUEST_TARGET_BYTES));
        let refused = oversized_head(&request(&query, &[])).unwrap();
        assert_eq!(refused.status(), StatusCode::URI_TOO_LONG);
        let half = "v".repeat(MAX_HEADER_BYTES / 2);
        let refused =
            oversized_head(&request("/", &[("x-a", half.clone()), ("x-b", half)])).unwrap();
        assert_eq!(
            refused.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }
}
