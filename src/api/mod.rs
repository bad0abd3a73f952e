//! The HTTP API: the contract's `/kvs` and `/view` endpoints for clients and the internal
//! endpoints for peers, as one axum router over a shared [`Node`].
//!
//! Handlers only translate: they parse and validate a request (all `400`s happen here,
//! before any causal wait), call the node, and render its answer. Every response, errors
//! and unknown routes included, is JSON.

mod error;
mod internal;
mod kvs;
mod view;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

pub use error::ApiError;

use crate::node::Node;

/// Largest message a peer may send (a batch of replicated writes).
const INTERNAL_BODY_LIMIT: usize = 1 << 30;

/// The whole API of one replica.
pub fn router(node: Arc<Node>) -> Router {
    let public = Router::new()
        .merge(kvs::routes())
        .merge(view::routes())
        .layer(DefaultBodyLimit::max(node.config.max_body_bytes));
    let internal = internal::routes().layer(DefaultBodyLimit::max(INTERNAL_BODY_LIMIT));
    public
        .merge(internal)
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(node)
}

async fn no_route() -> ApiError {
    ApiError::NoRoute
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The body of a request, or the error for a body that could not be read.
fn read_body(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(limit),
        _ => ApiError::MalformedBody(rejection.body_text()),
    })
}

/// Parses a JSON object body; an empty body or `null` is `T::default()`.
fn parse_json<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = bytes.trim_ascii();
    if text.is_empty() || text == b"null" {
        return Ok(T::default());
    }
    serde_json::from_slice(text).map_err(|e| ApiError::MalformedBody(e.to_string()))
}
