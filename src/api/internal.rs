//! `/internal/...`: the endpoints replicas use among themselves (see `wire`).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{ApiError, read_body};
use crate::node::Node;
use crate::wire::{self, Validate};

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route(wire::HEARTBEAT, post(heartbeat))
        .route(wire::ANNOUNCE, post(announce))
        .route(wire::VIEW_CHANGE, post(view_change))
        .route(wire::REPLICATE, post(replicate))
        .route(wire::SYNC, post(sync))
}

/// Parses and validates a peer message; unlike client bodies, an empty one is malformed.
fn message<T: DeserializeOwned + Validate>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = read_body(body, super::INTERNAL_BODY_LIMIT)?;
    let message: T =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedBody(e.to_string()))?;
    message.validate().map_err(ApiError::MalformedBody)?;
    Ok(message)
}

async fn heartbeat(
    State(node): State<Arc<Node>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    Ok(Json(node.on_heartbeat(message(body)?)).into_response())
}

async fn announce(
    State(node): State<Arc<Node>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    Ok(Json(node.on_announce(message(body)?)).into_response())
}

async fn view_change(
    State(node): State<Arc<Node>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    node.on_view_change(message(body)?);
    Ok(Json(json!({"result": "ok"})).into_response())
}

async fn replicate(
    State(node): State<Arc<Node>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let received = node.on_replicate(message(body)?)?;
    Ok(Json(json!({
        "applied": received.applied,
        "buffered": received.buffered,
        "duplicates": received.duplicates,
        "refused": received.refused,
    }))
    .into_response())
}

async fn sync(
    State(node): State<Arc<Node>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    Ok(Json(node.on_sync(message(body)?)?).into_response())
}
