//! `/kvs/<key>`: PUT, GET and DELETE with causal metadata, exactly as the contract says.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{ApiError, parse_json, read_body};
use crate::protocol::causal::{Clock, metadata};
use crate::protocol::store::{Key, Value};
use crate::server::node::Node;

/// Longest key, in characters, after percent-decoding.
pub const MAX_KEY_CHARS: usize = 50;

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route(
            "/kvs/{*key}",
            axum::routing::put(put).get(get).delete(delete),
        )
        .route("/kvs", any(empty_key))
        .route("/kvs/", any(empty_key))
}

#[derive(Debug, Default, Deserialize)]
struct KvsBody {
    #[serde(default)]
    value: Option<Box<RawValue>>,
    #[serde(default, rename = "causal-metadata")]
    causal_metadata: Option<serde_json::Value>,
}

/// A parsed, validated request.
struct KvsRequest {
    key: Key,
    value: Option<Box<RawValue>>,
    deps: Clock,
}

fn parse(
    node: &Node,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<KvsRequest, ApiError> {
    let Path(key) = path.map_err(|r| ApiError::MalformedPath(r.body_text()))?;
    if key.chars().count() > MAX_KEY_CHARS {
        return Err(ApiError::KeyTooLong);
    }
    let body: KvsBody = parse_json(&read_body(body, node.config.max_body_bytes)?)?;
    let deps = metadata::decode(body.causal_metadata.as_ref())?;
    Ok(KvsRequest {
        key: key.into(),
        value: body.value,
        deps,
    })
}

/// A `/kvs` answer: `{"result": ..., "value": ..., "causal-metadata": ...}`.
///
/// Written by hand rather than through serde: `value` is JSON text the store already holds
/// (checked when it was written), and the result and metadata (base64url) need no escaping.
fn answer(status: StatusCode, result: &'static str, value: Option<&str>, m: &Clock) -> Response {
    let metadata = metadata::encode(m);
    let value_len = value.map_or(0, |v| v.len() + 10);
    let mut body = String::with_capacity(48 + result.len() + value_len + metadata.len());
    body.push_str("{\"result\":\"");
    body.push_str(result);
    body.push('"');
    if let Some(value) = value {
        body.push_str(",\"value\":");
        body.push_str(value);
    }
    body.push_str(",\"causal-metadata\":\"");
    body.push_str(&metadata);
    body.push_str("\"}");
    let json = [(header::CONTENT_TYPE, "application/json")];
    (status, json, body).into_response()
}

async fn put(
    State(node): State<Arc<Node>>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = parse(&node, path, body)?;
    let value = request.value.ok_or(ApiError::MissingValue)?;
    let written = node
        .put(request.key, Value::from(value), &request.deps)
        .await?;
    Ok(match written.existed {
        true => answer(StatusCode::OK, "replaced", None, &written.metadata),
        false => answer(StatusCode::CREATED, "created", None, &written.metadata),
    })
}

async fn get(
    State(node): State<Arc<Node>>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = parse(&node, path, body)?;
    match node.get(&request.key, &request.deps).await? {
        Ok(found) => Ok(answer(
            StatusCode::OK,
            "found",
            Some(&found.value),
            &found.metadata,
        )),
        Err(missing) => Err(ApiError::KeyNotFound {
            metadata: missing.metadata,
        }),
    }
}

async fn delete(
    State(node): State<Arc<Node>>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = parse(&node, path, body)?;
    match node.delete(request.key, &request.deps).await? {
        Ok(written) => Ok(answer(StatusCode::OK, "deleted", None, &written.metadata)),
        Err(missing) => Err(ApiError::KeyNotFound {
            metadata: missing.metadata,
        }),
    }
}

async fn empty_key() -> ApiError {
    ApiError::KeyEmpty
}
