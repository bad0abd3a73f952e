//! The operator's endpoints: `/health` (liveness: answers while the process serves, with
//! a snapshot of the replica for `causalkv status`), `/ready` (readiness: bootstrapped and
//! in its own view) and `/metrics` (Prometheus). Not part of the classroom contract; none
//! changes its routes.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::ApiError;
use crate::server::metrics;
use crate::server::node::Node;

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
}

async fn metrics(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let text = node
        .metrics
        .render(&node.health())
        .map_err(|_| ApiError::MalformedBody("metrics could not be encoded".into()))?;
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

async fn health(State(node): State<Arc<Node>>) -> Response {
    Json(node.health()).into_response()
}

async fn ready(State(node): State<Arc<Node>>) -> Response {
    let health = node.health();
    if health.ready {
        Json(json!({"ready": true, "incarnation": health.incarnation})).into_response()
    } else {
        let error = match health.incarnation {
            None => "Replica is bootstrapping: copying the store from its peers",
            Some(_) => "Replica is not in its own view",
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "error": error})),
        )
            .into_response()
    }
}
