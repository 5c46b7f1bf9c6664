//! A request to a signed route as the filter keeps it until its key is known: what the
//! signature covers, read once at the request's start (the check is in
//! [`super::signed`]). Kept apart so the worker's state can hold it without depending on the
//! check.

use std::sync::Arc;

use crate::decision::Identity;
use crate::signature::{
    accept_signature, check_content_digest, KeySigning, RouteSignature, SignatureError,
};

/// A request to a signed route, as read at its start.
#[derive(Clone, Debug)]
pub struct SignedRequest {
    pub route: Arc<RouteSignature>,
    pub(crate) method: String,
    pub(crate) scheme: String,
    pub(crate) authority: String,
    pub(crate) target: String,
    /// The request's headers (pseudo-headers included), as the signature covers them.
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    /// The request had a body: `content-digest` must be covered. With the outcome of
    /// checking the body against it (done when the body was read).
    pub(crate) body: Option<Result<(), SignatureError>>,
}

impl SignedRequest {
    /// Keeps what the signature check needs of a request to `route`, with its body (`None`:
    /// the request has none).
    pub fn capture(
        route: &Arc<RouteSignature>,
        headers: &[(&str, &[u8])],
        body: Option<&[u8]>,
    ) -> Self {
        let pseudo = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        Self {
            route: Arc::clone(route),
            method: pseudo(":method"),
            scheme: pseudo(":scheme"),
            authority: pseudo(":authority"),
            target: pseudo(":path"),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
                .collect(),
            body: body.map(|body| check_content_digest(headers, body)),
        }
    }

    /// What a refused request is told to sign (`Accept-Signature`).
    pub fn accept_signature(&self, identity: Option<&Identity>) -> String {
        let signing = identity.and_then(|i| i.signing.as_deref());
        accept_signature(
            &self.route.extra_components,
            self.body.is_some(),
            identity.map(|i| &*i.key_id).filter(|id| !id.is_empty()),
            signing.and_then(KeySigning::algorithm),
        )
    }
}
