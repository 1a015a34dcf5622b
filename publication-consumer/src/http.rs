//! The HTTP API and the operations endpoints. The router is built from [`ROUTES`], the list the
//! OpenAPI document (`openapi.json`, served at `/openapi.json`) is checked against, so a route
//! cannot be added without being described.
//!
//! "Now" is the service's [`Clock`]: embargo statuses and "ready" are computed at the clock's
//! time, which tests move past the embargo.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use butler_repository::DatabaseError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use service_kit::Chain;
use service_kit::http::{Metadata, OPERATIONS_ROUTES, Operations, operations};
use tracing::warn;
use uuid::Uuid;

use crate::clock::Clock;
use crate::store::{DatasetQuery, DatasetView, Store};

/// The OpenAPI 3 description of [`ROUTES`].
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route (all `GET`), in axum's path syntax, which is OpenAPI's.
pub const ROUTES: &[&str] = &[
    "/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/api/v1/counts",
    "/api/v1/datasets/ready",
    "/api/v1/datasets/{id}",
    "/api/v1/visits/{visit}/datasets",
    "/api/v1/failed-events",
    "/api/v1/transfers",
];

/// Default page size.
pub const DEFAULT_LIMIT: i64 = 100;
/// Largest page size.
pub const MAX_LIMIT: i64 = 1000;

/// What the API's handlers read.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The state database.
    pub store: Store,
    /// "Now".
    pub clock: Clock,
    /// The transfer tasks' progress.
    pub progress: crate::tasks::Progress,
}

/// The routes: the service kit's operations endpoints and the API.
pub fn router(state: HttpState, operations_state: Operations) -> Router {
    ROUTES
        .iter()
        .filter(|path| !OPERATIONS_ROUTES.contains(path))
        .fold(operations(operations_state), |router, path| {
            router.route(path, handler(path).with_state(state.clone()))
        })
}

fn handler(path: &str) -> MethodRouter<HttpState> {
    match path {
        "/openapi.json" => get(openapi),
        "/api/v1/counts" => get(counts),
        "/api/v1/datasets/ready" => get(ready),
        "/api/v1/datasets/{id}" => get(dataset),
        "/api/v1/visits/{visit}/datasets" => get(visit_datasets),
        "/api/v1/failed-events" => get(failed_events),
        "/api/v1/transfers" => get(transfers),
        _ => get(|| async { StatusCode::NOT_FOUND }),
    }
}

/// An error answer: `{"error": "..."}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

fn unavailable(error: &DatabaseError) -> ApiError {
    let text = Chain(error).to_string();
    warn!(error = %text, "an API query failed");
    ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the state database did not answer: {text}"),
    )
}

/// `/`: what this service is, and where its API is.
pub fn metadata() -> Metadata {
    Metadata {
        name: "publication-consumer",
        version: crate::VERSION,
        description: env!("CARGO_PKG_DESCRIPTION"),
        repository_url: env!("CARGO_PKG_REPOSITORY"),
        documentation_url: concat!(
            env!("CARGO_PKG_REPOSITORY"),
            "/tree/main/publication-consumer"
        ),
        links: Some(serde_json::json!({
            "openapi": "/openapi.json",
            "counts": "/api/v1/counts",
            "ready": "/api/v1/datasets/ready",
            "health": "/healthz",
            "readiness": "/readyz",
            "metrics": "/metrics",
        })),
    }
}

async fn transfers(State(state): State<HttpState>) -> impl IntoResponse {
    let progress = state
        .progress
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Json(progress)
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn counts(State(state): State<HttpState>) -> Result<impl IntoResponse, ApiError> {
    let counts = state
        .store
        .counts(state.clock.now())
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(Json(counts))
}

/// Query parameters of the dataset lists.
#[derive(Debug, Deserialize)]
pub struct ListParams {
    /// Page size (default 100, at most 1000).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only this visit.
    pub visit: Option<i64>,
    /// Only this instrument.
    pub instrument: Option<String>,
    /// Only this dataset type.
    pub dataset_type: Option<String>,
}

/// A page of datasets.
#[derive(Debug, Serialize, Deserialize)]
pub struct DatasetPage {
    /// The time statuses were computed at.
    pub at: DateTime<Utc>,
    /// The datasets, by release time then id.
    pub datasets: Vec<DatasetView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A cursor: the `(release_at, id)` of the last dataset of a page, as `<unix µs>-<uuid>`, or
/// `never-<uuid>` for a dataset the policy never releases (those come last).
pub fn encode_cursor(release_at: Option<DateTime<Utc>>, id: Uuid) -> String {
    match release_at {
        Some(at) => format!("{}-{id}", at.timestamp_micros()),
        None => format!("never-{id}"),
    }
}

/// Reads a cursor made by [`encode_cursor`].
pub fn decode_cursor(cursor: &str) -> Option<(Option<DateTime<Utc>>, Uuid)> {
    let (micros, id) = cursor.split_once('-')?;
    let at = if micros == "never" {
        None
    } else {
        Some(DateTime::from_timestamp_micros(micros.parse().ok()?)?)
    };
    Some((at, id.parse().ok()?))
}

fn dataset_query(params: ListParams) -> Result<DatasetQuery, ApiError> {
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let after = match params.cursor.as_deref() {
        None | Some("") => None,
        Some(cursor) => Some(decode_cursor(cursor).ok_or_else(|| bad_request("invalid cursor"))?),
    };
    Ok(DatasetQuery {
        ready_at: None,
        visit: params.visit,
        instrument: params.instrument,
        dataset_type: params.dataset_type,
        after,
        limit,
    })
}

async fn page(
    state: &HttpState,
    query: DatasetQuery,
    at: DateTime<Utc>,
) -> Result<Json<DatasetPage>, ApiError> {
    let datasets = state
        .store
        .datasets(&query, at)
        .await
        .map_err(|e| unavailable(&e))?;
    let full = i64::try_from(datasets.len()).unwrap_or(i64::MAX) == query.limit;
    let next_cursor = datasets
        .last()
        .filter(|_| full)
        .map(|d| encode_cursor(d.release_at, d.id));
    Ok(Json(DatasetPage {
        at,
        datasets,
        next_cursor,
    }))
}

async fn ready(
    State(state): State<HttpState>,
    Query(params): Query<ListParams>,
) -> Result<Json<DatasetPage>, ApiError> {
    let at = state.clock.now();
    let mut query = dataset_query(params)?;
    query.ready_at = Some(at);
    page(&state, query, at).await
}

async fn visit_datasets(
    State(state): State<HttpState>,
    Path(visit): Path<i64>,
    Query(params): Query<ListParams>,
) -> Result<Json<DatasetPage>, ApiError> {
    let at = state.clock.now();
    let mut query = dataset_query(params)?;
    query.visit = Some(visit);
    page(&state, query, at).await
}

async fn dataset(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Json<DatasetView>, ApiError> {
    let id: Uuid = id
        .parse()
        .map_err(|_| bad_request(format!("{id:?} is not a dataset id (a UUID)")))?;
    match state.store.dataset(id, state.clock.now()).await {
        Ok(Some(view)) => Ok(Json(view)),
        Ok(None) => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("dataset {id} is not recorded"),
        )),
        Err(e) => Err(unavailable(&e)),
    }
}

/// Query parameters of `/api/v1/failed-events`.
#[derive(Debug, Deserialize)]
pub struct FailedParams {
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
}

async fn failed_events(
    State(state): State<HttpState>,
    Query(params): Query<FailedParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let events = state
        .store
        .failed_events(limit)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(Json(serde_json::json!({ "failed_events": events })))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_route_is_in_the_openapi_document_and_nothing_else() {
        let document: serde_json::Value =
            serde_json::from_str(OPENAPI).unwrap_or_else(|e| panic!("openapi.json: {e}"));
        assert!(
            document["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3."))
        );
        let paths = document["paths"].as_object().cloned().unwrap_or_default();
        let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
        let routed: BTreeSet<&str> = ROUTES.iter().copied().collect();
        assert_eq!(documented, routed);
        for path in ROUTES {
            assert!(paths[*path]["get"].is_object(), "{path} documents its GET");
        }
    }

    #[test]
    fn cursors_round_trip() {
        let at = DateTime::from_timestamp_micros(1_777_680_000_123_456).unwrap_or_default();
        let id = Uuid::from_u128(42);
        assert_eq!(
            decode_cursor(&encode_cursor(Some(at), id)),
            Some((Some(at), id))
        );
        assert_eq!(decode_cursor(&encode_cursor(None, id)), Some((None, id)));
        assert_eq!(decode_cursor("nonsense"), None);
        assert_eq!(decode_cursor("12-notauuid"), None);
    }
}
