//! `authz <port> <good key file>`: the smallest useful ext_authz HTTP service, for the
//! "callout per request" configuration of the benchmark. Envoy's ext_authz (HTTP) forwards
//! `authorization`; this answers 200 when it is `Bearer <the good key>`, 401 when absent and
//! 403 otherwise. One thread (current-thread tokio runtime), HTTP/1.1 keep-alive.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

fn answer(good: &[u8], req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let status = match req.headers().get("authorization") {
        None => StatusCode::UNAUTHORIZED,
        Some(value) => match value.as_bytes().strip_prefix(b"Bearer ") {
            Some(key) if key == good => StatusCode::OK,
            _ => StatusCode::FORBIDDEN,
        },
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .ok_or("usage: authz <port> <good key file>")?
        .parse()?;
    let good = std::fs::read_to_string(args.next().ok_or("usage: authz <port> <good key file>")?)?;
    let good: Rc<[u8]> = Rc::from(good.trim().as_bytes());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let good = good.clone();
            tokio::task::spawn_local(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let response = answer(&good, &req);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    })?;
    Ok(())
}
