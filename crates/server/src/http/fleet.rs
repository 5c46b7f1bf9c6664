//! The gateway fleet: `GET /api/v1/fleet` (admin only). Every Envoy that follows the
//! revocation feed or reports usage names itself (its `node.id`); the key service keeps when
//! each was last seen (see [`crate::service::usage::fleet`]).

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use crate::http::state::AppState;
use crate::model::GatewayRow;
use crate::service::error::ApiError;
use crate::timestamp::format_rfc3339;

/// A gateway as the management API shows it.
#[derive(Debug, Serialize)]
pub struct GatewayView {
    /// Envoy's `node.id`.
    pub gateway: String,
    /// The revocation feed sequence its last feed request asked from (`since`): what it has.
    pub last_feed_sequence: Option<i64>,
    pub last_feed_at: Option<String>,
    pub last_usage_batch_at: Option<String>,
    /// Rows in its last usage batch.
    pub last_usage_rows: Option<i64>,
    pub last_seen_at: Option<String>,
}

impl GatewayView {
    fn of(row: GatewayRow) -> Self {
        Self {
            gateway: row.gateway,
            last_feed_sequence: row.last_feed_sequence,
            last_feed_at: row.last_feed_at.and_then(format_rfc3339),
            last_usage_batch_at: row.last_usage_batch_at.and_then(format_rfc3339),
            last_usage_rows: row.last_usage_rows,
            last_seen_at: format_rfc3339(row.last_seen_at),
        }
    }
}

/// `GET /api/v1/fleet` (admin): the gateways seen in the last 7 days (at most 1000), most
/// recently seen first.
pub async fn list_fleet(State(state): State<AppState>) -> Result<Json<Vec<GatewayView>>, ApiError> {
    let rows = crate::service::usage::fleet(state.service()).await?;
    Ok(Json(rows.into_iter().map(GatewayView::of).collect()))
}
