//! The HTTP endpoint (SPEC "HTTP"): `/` the operations dashboard, `/api/live`, `/api/status`,
//! `/metrics` (Prometheus text: the server's series, and the live loop's with `--live`), and
//! `/health` (no auth, for load balancers). Everything but `/health` is behind the token.

use super::metrics::{Endpoint, Outcome};
use super::{auth, dashboard, live_api, Shared};
use crate::error::TallyError;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use datafusion_postgres::pgwire::tokio::tokio_rustls;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;

/// The hour the dashboard shows.
const DASHBOARD_MINUTES: i64 = 60;

/// Serves HTTP until `stop` completes.
pub async fn run(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> crate::Result<()> {
    match tls {
        None => axum::serve(listener, router(shared))
            .with_graceful_shutdown(stop)
            .await
            .map_err(crate::TallyError::Io),
        Some(acceptor) => {
            let listener = super::tls::TlsListener::new(listener, acceptor)?;
            axum::serve(listener, router(shared))
                .with_graceful_shutdown(stop)
                .await
                .map_err(crate::TallyError::Io)
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let guarded = Router::new()
        .route("/", get(page))
        .route("/assets/{name}", get(asset))
        .route("/api/live", get(api_live))
        .route("/api/status", get(api_status))
        .route("/metrics", get(metrics))
        .with_state(Arc::clone(&shared))
        .route_layer(axum::middleware::from_fn_with_state(
            shared.token.clone(),
            auth::http_guard,
        ));
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(guarded)
}

/// A failed API call: one line naming what went wrong; 400 for the caller's mistakes.
fn failure(shared: &Shared, started: Instant, e: &TallyError) -> Response {
    shared
        .metrics
        .record(Endpoint::Http, Outcome::of(e), started);
    let status = match e.kind() {
        crate::ErrorKind::User => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let line = e.to_string().lines().next().unwrap_or_default().to_string();
    (status, format!("{line}\n")).into_response()
}

async fn page(State(shared): State<Arc<Shared>>) -> Response {
    let started = Instant::now();
    let rendered = async {
        let session = shared.catalog.session().await?;
        let partners = live_api::partner_totals(&session, DASHBOARD_MINUTES).await?;
        let status = live_api::status(&session, shared.ops.as_deref(), &shared.commits).await?;
        Ok::<_, TallyError>(dashboard::render(&partners, &status))
    }
    .await;
    match rendered {
        Ok(html) => {
            shared.metrics.record(Endpoint::Http, Outcome::Ok, started);
            ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
        }
        Err(e) => failure(&shared, started, &e),
    }
}

async fn asset(Path(name): Path<String>) -> Response {
    match dashboard::ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, body)) => (
            [
                (header::CONTENT_TYPE, *kind),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

#[derive(serde::Deserialize)]
struct LiveQuery {
    minutes: Option<String>,
}

async fn api_live(State(shared): State<Arc<Shared>>, Query(q): Query<LiveQuery>) -> Response {
    let started = Instant::now();
    let minutes = match q.minutes.as_deref().map(str::parse::<i64>) {
        None => Ok(DASHBOARD_MINUTES),
        Some(Ok(m)) if (1..=live_api::MAX_MINUTES).contains(&m) => Ok(m),
        Some(_) => Err(TallyError::InvalidArgument {
            what: "minutes".into(),
            message: format!(
                "{:?} is not a whole number of minutes from 1 to {}",
                q.minutes.as_deref().unwrap_or_default(),
                live_api::MAX_MINUTES
            ),
        }),
    };
    let rows = async {
        let minutes = minutes?;
        let session = shared.catalog.session().await?;
        live_api::live_rows(&session, minutes).await
    }
    .await;
    match rows {
        Ok(rows) => {
            shared.metrics.record(Endpoint::Http, Outcome::Ok, started);
            ([(header::CACHE_CONTROL, "no-store")], Json(rows)).into_response()
        }
        Err(e) => failure(&shared, started, &e),
    }
}

async fn api_status(State(shared): State<Arc<Shared>>) -> Response {
    let started = Instant::now();
    let status = async {
        let session = shared.catalog.session().await?;
        live_api::status(&session, shared.ops.as_deref(), &shared.commits).await
    }
    .await;
    match status {
        Ok(s) => {
            shared.metrics.record(Endpoint::Http, Outcome::Ok, started);
            ([(header::CACHE_CONTROL, "no-store")], Json(s)).into_response()
        }
        Err(e) => failure(&shared, started, &e),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    shared
        .metrics
        .set_reserved(shared.catalog.runtime().memory_pool.reserved());
    let mut text = String::new();
    let mut encoded =
        prometheus_client::encoding::text::encode_registry(&mut text, &shared.registry);
    if let (Ok(()), Some(ops)) = (&encoded, &shared.ops) {
        encoded = ops.encode(&mut text);
    }
    let encoded = encoded.and_then(|()| prometheus_client::encoding::text::encode_eof(&mut text));
    match encoded {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                crate::ops::metrics_server::OPENMETRICS,
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
