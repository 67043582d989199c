//! Administration: `POST /api/admin/snapshot` writes a snapshot of the data
//! directory (see `snapshot`) and answers as Prometheus's
//! `/api/v1/admin/tsdb/snapshot` does,
//! `{"status":"success","data":{"name":...}}`, plus the snapshot's path.
//! Guarded by the admin scope in `api::router`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use super::ApiState;
use crate::snapshot::SnapshotError;

/// The administration routes, merged into the API router.
pub fn router() -> Router<Arc<ApiState>> {
    Router::new().route("/api/admin/snapshot", post(snapshot))
}

async fn snapshot(State(state): State<Arc<ApiState>>) -> Result<Response, SnapshotError> {
    let written = state.snapshots.take().await?;
    Ok(axum::Json(json!({
        "status": "success",
        "data": {
            "name": written.name,
            "path": written.path.display().to_string(),
        },
    }))
    .into_response())
}

impl IntoResponse for SnapshotError {
    fn into_response(self) -> Response {
        let status = if self.is_storage_full() {
            StatusCode::INSUFFICIENT_STORAGE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        (
            status,
            axum::Json(json!({
                "status": "error",
                "errorType": "internal",
                "error": self.to_string(),
            })),
        )
            .into_response()
    }
}
