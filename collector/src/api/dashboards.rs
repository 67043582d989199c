//! The dashboard API: `GET /api/dashboards` lists them; `GET`, `PUT` and
//! `DELETE` on `/api/dashboards/{id}` read, create or replace, and delete one.
//! `GET` answers exactly the stored JSON, and `PUT` takes it back (import).
//! The store (`store::dashboards`) knows no HTTP; `DashboardError` gets its
//! status codes here, in one place.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

use super::ApiState;
use crate::store::dashboards::{
    Dashboard, DashboardError, DashboardId, DashboardStore, MAX_BODY_BYTES,
};

type Result<T, E = DashboardError> = std::result::Result<T, E>;

/// The dashboard routes, merged into the API router.
pub fn router() -> Router<Arc<ApiState>> {
    Router::new().route("/api/dashboards", get(list)).route(
        "/api/dashboards/{id}",
        get(read).put(replace).delete(remove),
    )
}

impl DashboardError {
    /// The one table from error to HTTP status.
    fn status(&self) -> StatusCode {
        match self {
            DashboardError::InvalidId(_)
            | DashboardError::Malformed(_)
            | DashboardError::Invalid { .. } => StatusCode::BAD_REQUEST,
            DashboardError::NotFound(_) => StatusCode::NOT_FOUND,
            DashboardError::BuiltIn(_) => StatusCode::FORBIDDEN,
            DashboardError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            DashboardError::Corrupt { .. } | DashboardError::Io(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            DashboardError::Backend(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for DashboardError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "DashboardStoreError");
        }
        (status, axum::Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// Runs file work on the dashboard store off the async workers.
async fn with_store<T: Send + 'static>(
    state: &ApiState,
    work: impl FnOnce(&DashboardStore) -> Result<T> + Send + 'static,
) -> Result<T> {
    let store = state.stores.dashboards.clone();
    tokio::task::spawn_blocking(move || work(&store)).await?
}

impl From<tokio::task::JoinError> for DashboardError {
    fn from(error: tokio::task::JoinError) -> Self {
        DashboardError::Io(std::io::Error::other(error))
    }
}

fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

async fn list(State(state): State<Arc<ApiState>>) -> Result<Response> {
    let dashboards = with_store(&state, |store| store.list()).await?;
    Ok(axum::Json(json!({ "dashboards": dashboards })).into_response())
}

async fn read(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> Result<Response> {
    let id = DashboardId::parse(&id)?;
    let bytes = with_store(&state, move |store| store.get(&id)).await?;
    Ok(json_bytes(StatusCode::OK, bytes))
}

/// Creates (201) or replaces (200) a dashboard; answers the stored JSON.
async fn replace(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response> {
    let id = DashboardId::parse(&id)?;
    if id.is_built_in() {
        return Err(DashboardError::BuiltIn(id.as_str().to_owned()));
    }
    let bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(DashboardError::TooLarge);
        }
        Err(error) => {
            return Err(DashboardError::Malformed(format!(
                "could not read the request body: {error}"
            )));
        }
    };
    let dashboard = Dashboard::from_json(&bytes)?;
    let (created, json) = with_store(&state, move |store| store.put(&id, &dashboard)).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_bytes(status, json))
}

async fn remove(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> Result<Response> {
    let id = DashboardId::parse(&id)?;
    with_store(&state, move |store| store.delete(&id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
