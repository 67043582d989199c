//! The web UI: the static files of `ui/` (ES modules, CSS), embedded into the
//! binary at build time and served at `/` (the page) and `/ui/*` (assets).
//!
//! **Invariant**: no runtime filesystem reads; what the binary was built
//! with is what it serves. The UI only adds `/` and `/ui/...`, so it never
//! shadows an API route.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The files of `ui/`, embedded in debug builds too (`debug-embed`).
#[derive(rust_embed::Embed)]
#[folder = "../ui/"]
struct Assets;

/// The UI routes, merged into the API router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        // Elasticsearch clients read `/` first; browsers ask for HTML.
        .route(
            "/",
            get(|headers: HeaderMap| async move {
                if crate::elastic::wants_cluster_info(&headers) {
                    crate::elastic::cluster_info()
                } else {
                    asset("index.html")
                }
            }),
        )
        .route("/ui", get(|| async { asset("index.html") }))
        .route("/ui/", get(|| async { asset("index.html") }))
        .route(
            "/ui/{*path}",
            get(|Path(path): Path<String>| async move { asset(&path) }),
        )
}

fn asset(path: &str) -> Response {
    match Assets::get(path) {
        Some(file) => (
            [
                (header::CONTENT_TYPE, content_type(path)),
                // No fingerprinted names: revalidate so an upgrade shows at once.
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            file.data,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_known_content_type() {
        for path in Assets::iter() {
            assert_ne!(
                content_type(&path),
                "application/octet-stream",
                "{path} would be served without a real content type"
            );
        }
        assert!(Assets::get("index.html").is_some());
    }
}
