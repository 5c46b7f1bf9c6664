//! `POST /api/v1/secret-scanning`: leaked-key reports in the shape of GitHub's
//! secret-scanning partner program (see [`crate::service::secret_scanning`]). No bearer
//! credential: the report's ECDSA signature is its authentication (401 when it does not
//! verify, 503 when no key set is configured). The body is read raw, as signed.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;

use crate::http::extract::read_body;
use crate::http::state::AppState;
use crate::service::error::ApiError;
use crate::service::secret_scanning::{self, TokenLabel};

pub const KEY_IDENTIFIER_HEADER: &str = "github-public-key-identifier";
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";

pub async fn report(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Vec<TokenLabel>>, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let body = read_body(body)?;
    let labels = secret_scanning::report(
        state.service(),
        header(KEY_IDENTIFIER_HEADER),
        header(SIGNATURE_HEADER),
        &body,
    )
    .await?;
    Ok(Json(labels))
}
