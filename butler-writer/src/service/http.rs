//! The operations endpoints: `/` (metadata, as Rubin's Safir services serve it), `/healthz`,
//! `/readyz` and `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;

use super::health::Health;
use super::metrics::Metrics;

/// What the handlers read.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// Readiness and liveness.
    pub health: Arc<Health>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// `/healthz` fails when the consume loop has not turned for this long.
    pub stall_timeout: Duration,
}

/// The service's metadata (no settings, no secrets).
#[derive(Debug, Serialize)]
struct Metadata {
    name: &'static str,
    version: &'static str,
    description: &'static str,
    repository_url: &'static str,
    documentation_url: &'static str,
}

/// The routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(metadata))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn metadata() -> Json<Metadata> {
    Json(Metadata {
        name: "butler-writer",
        version: crate::VERSION,
        description: env!("CARGO_PKG_DESCRIPTION"),
        repository_url: env!("CARGO_PKG_REPOSITORY"),
        documentation_url: concat!(env!("CARGO_PKG_REPOSITORY"), "/tree/main/butler-writer"),
    })
}

async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    liveness(state.health.since_heartbeat(), state.stall_timeout)
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    let readiness = state.health.readiness();
    state.metrics.ready.set(i64::from(readiness.ready));
    readiness_response(readiness.ready, readiness)
}

/// `/healthz` for any of the services: 200 while the main loop turns, 503 once it has not for
/// `stall_timeout` (so Kubernetes restarts a wedged process, and only that).
pub fn liveness(since: Duration, stall_timeout: Duration) -> (StatusCode, Json<serde_json::Value>) {
    if since > stall_timeout {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "status": "stalled",
                "consume_loop_idle_seconds": since.as_secs_f64(),
            })),
        )
    } else {
        (StatusCode::OK, Json(serde_json::json!({ "status": "ok" })))
    }
}

/// `/readyz` for any of the services: the readiness body, 200 when ready and 503 otherwise.
pub fn readiness_response<R: Serialize>(ready: bool, body: R) -> (StatusCode, Json<R>) {
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let ready = state.health.readiness().ready;
    state.metrics.ready.set(i64::from(ready));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
