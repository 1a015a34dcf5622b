//! The operations endpoints every service serves: `/` (metadata, as Rubin's Safir services serve
//! it), `/healthz` (liveness), `/readyz` (readiness) and `/metrics` (Prometheus). A service with
//! an API of its own merges its routes into [`operations`]' router.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::health::Health;
use crate::metrics::{CONTENT_TYPE, Exposition};

/// The routes [`operations`] serves.
pub const OPERATIONS_ROUTES: [&str; 4] = ["/", "/healthz", "/readyz", "/metrics"];

/// A service's metadata (no settings, no secrets).
#[derive(Debug, Clone, Serialize)]
pub struct Metadata {
    /// The service's name.
    pub name: &'static str,
    /// Its version.
    pub version: &'static str,
    /// One line on what it does.
    pub description: &'static str,
    /// Its source repository.
    pub repository_url: &'static str,
    /// Its documentation.
    pub documentation_url: &'static str,
    /// Links to the service's other endpoints, when it has an API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub links: Option<serde_json::Value>,
}

/// What the operations endpoints read.
#[derive(Debug, Clone)]
pub struct Operations {
    /// `/`.
    pub metadata: Metadata,
    /// Readiness and liveness.
    pub health: Arc<Health>,
    /// `/metrics`.
    pub metrics: Arc<dyn Exposition>,
    /// `/healthz` fails when the main loop has not turned for this long.
    pub stall_timeout: Duration,
}

/// The operations routes, to serve alone or to merge a service's own routes into.
pub fn operations<S>(state: Operations) -> Router<S> {
    Router::new()
        .route("/", get(metadata))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn metadata(State(state): State<Operations>) -> impl IntoResponse {
    Json(state.metadata)
}

async fn healthz(State(state): State<Operations>) -> impl IntoResponse {
    liveness(state.health.since_heartbeat(), state.stall_timeout)
}

async fn readyz(State(state): State<Operations>) -> impl IntoResponse {
    let readiness = state.health.readiness();
    state.metrics.common().ready.set(i64::from(readiness.ready));
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness))
}

async fn metrics(State(state): State<Operations>) -> impl IntoResponse {
    let ready = state.health.readiness().ready;
    state.metrics.common().ready.set(i64::from(ready));
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics.render(),
    )
}

/// `/healthz`: 200 while the main loop turns, 503 once it has not for `stall_timeout`.
fn liveness(since: Duration, stall_timeout: Duration) -> (StatusCode, Json<serde_json::Value>) {
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

/// Cannot listen where the endpoints were asked to listen.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} for the HTTP endpoints")]
pub struct BindError {
    /// Where.
    pub address: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// HTTP endpoints being served.
#[derive(Debug)]
pub struct HttpServer {
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Binds `address` (port 0: any free port) and serves `router` until `stop` fires.
    pub async fn start(
        address: SocketAddr,
        router: Router,
        stop: CancellationToken,
    ) -> Result<Self, BindError> {
        let bind_error = |source| BindError { address, source };
        let listener = TcpListener::bind(address).await.map_err(bind_error)?;
        let address = listener.local_addr().map_err(bind_error)?;
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                error!(error = %e, "the HTTP endpoints failed");
            }
        });
        Ok(Self { address, task })
    }

    /// Where the endpoints listen.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Waits for the server to finish (after its `stop` fired).
    pub async fn finished(self) {
        let _ = self.task.await;
    }
}
