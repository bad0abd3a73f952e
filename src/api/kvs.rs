//! `/kvs/<key>`: PUT, GET and DELETE with causal metadata, exactly as the contract says.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{ApiError, parse_json, read_body};
use crate::causal::{Clock, metadata};
use crate::node::Node;
use crate::store::{Key, Value};

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

#[derive(Serialize)]
struct Answer<'a> {
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a RawValue>,
    #[serde(rename = "causal-metadata")]
    causal_metadata: String,
}

fn answer(
    status: StatusCode,
    result: &'static str,
    value: Option<&RawValue>,
    m: &Clock,
) -> Response {
    let body = Answer {
        result,
        value,
        causal_metadata: metadata::encode(m),
    };
    (status, Json(body)).into_response()
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
