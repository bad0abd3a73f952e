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
use crate::protocol::machine::{Reply, Request};
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
    let request = Request::Put {
        key: request.key,
        value: Value::from(value),
        deps: request.deps,
    };
    render(node.kvs(request).await, |existed| match existed {
        true => (StatusCode::OK, "replaced"),
        false => (StatusCode::CREATED, "created"),
    })
}

async fn get(
    State(node): State<Arc<Node>>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = parse(&node, path, body)?;
    let request = Request::Get {
        key: request.key,
        deps: request.deps,
    };
    // A GET never writes: the closure is never called.
    render(node.kvs(request).await, |_| (StatusCode::OK, "found"))
}

async fn delete(
    State(node): State<Arc<Node>>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = parse(&node, path, body)?;
    let request = Request::Delete {
        key: request.key,
        deps: request.deps,
    };
    render(node.kvs(request).await, |_| (StatusCode::OK, "deleted"))
}

/// The answer to a machine's reply; `written` names the status and result of a write
/// (given whether the key held a value before).
fn render(
    reply: Reply,
    written: impl FnOnce(bool) -> (StatusCode, &'static str),
) -> Result<Response, ApiError> {
    match reply {
        Reply::Found { value, metadata } => {
            Ok(answer(StatusCode::OK, "found", Some(&value), &metadata))
        }
        Reply::Written {
            existed, metadata, ..
        } => {
            let (status, result) = written(existed);
            Ok(answer(status, result, None, &metadata))
        }
        Reply::Missing { metadata } => Err(ApiError::KeyNotFound { metadata }),
        Reply::Failed(error) => Err(ApiError::Node(error)),
    }
}

async fn empty_key() -> ApiError {
    ApiError::KeyEmpty
}
