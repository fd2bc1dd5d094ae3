//! The HTTP endpoint: `/health` (no auth, for load balancers) and `/metrics` (Prometheus
//! text), behind the token like every other path. The operations dashboard and its JSON API
//! join here.

use super::Shared;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves HTTP until `stop` completes.
pub async fn run(
    shared: Arc<Shared>,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> crate::Result<()> {
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(stop)
        .await
        .map_err(crate::TallyError::Io)
}

fn router(shared: Arc<Shared>) -> Router {
    let guarded =
        Router::new()
            .route("/metrics", get(metrics))
            .route_layer(middleware::from_fn_with_state(
                Arc::clone(&shared),
                require_token,
            ));
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(guarded)
        .with_state(shared)
}

async fn require_token(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if shared.token.accepts_header(header) {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer, Basic realm=\"tally\"")],
            "missing or wrong token\n",
        )
            .into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    shared
        .metrics
        .set_reserved(shared.catalog.runtime().memory_pool.reserved());
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &shared.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
