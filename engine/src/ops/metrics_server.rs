//! `--metrics ADDR`: `/metrics` (Prometheus text, behind `TALLY_TOKEN` when set) and
//! `/health`, for processes that run without `tally serve`: `tally live` and `tally worker`.

use super::LiveOps;
use crate::error::{Result, TallyError};
use crate::serve::auth::{self, Token};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// The content type of Prometheus' OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr`, refusing a non-loopback address without a token (an open metrics port
/// shows partner names to the network).
pub async fn bind(addr: SocketAddr, token: &Token) -> Result<TcpListener> {
    if !token.is_required() && !addr.ip().is_loopback() {
        return Err(TallyError::Usage {
            message: format!(
                "refusing to serve --metrics {addr} without TALLY_TOKEN: set TALLY_TOKEN, or bind a loopback address such as 127.0.0.1"
            ),
        });
    }
    TcpListener::bind(addr)
        .await
        .map_err(|e| TallyError::InvalidArgument {
            what: "--metrics address".into(),
            message: format!("cannot listen on {addr}: {e}"),
        })
}

/// What a process shows on `/metrics`.
pub trait MetricsSource: Send + Sync {
    /// Appends the series in Prometheus text (without the final `# EOF`).
    fn encode(&self, out: &mut String) -> std::fmt::Result;
}

impl MetricsSource for LiveOps {
    fn encode(&self, out: &mut String) -> std::fmt::Result {
        LiveOps::encode(self, out)
    }
}

/// Serves until `stop` completes.
pub async fn run(
    ops: Arc<dyn MetricsSource>,
    listener: TcpListener,
    token: Token,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .with_state(ops)
        .route_layer(axum::middleware::from_fn_with_state(
            token,
            auth::http_guard,
        ));
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(guarded);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .map_err(TallyError::Io)
}

async fn metrics(
    axum::extract::State(ops): axum::extract::State<Arc<dyn MetricsSource>>,
) -> Response {
    let mut text = String::new();
    let encoded = ops
        .encode(&mut text)
        .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut text));
    match encoded {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
