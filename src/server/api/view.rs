//! `/view`: list, add and remove replicas, as the contract says. Changes made here are
//! passed on to the other replicas by the node.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, parse_json, read_body};
use crate::protocol::causal::{Addr, addr_of, parse_addr};
use crate::server::node::Node;

pub fn routes() -> Router<Arc<Node>> {
    Router::new().route("/view", get(list).put(add).delete(remove))
}

#[derive(Debug, Default, Deserialize)]
struct ViewBody {
    #[serde(default, rename = "socket-address")]
    socket_address: Option<serde_json::Value>,
}

/// The `socket-address` of the body, in canonical `IP:PORT` form.
fn socket_address(node: &Node, body: Result<Bytes, BytesRejection>) -> Result<Addr, ApiError> {
    let body: ViewBody = parse_json(&read_body(body, node.config.max_body_bytes)?)?;
    match body.socket_address {
        None | Some(serde_json::Value::Null) => Err(ApiError::MissingSocketAddress),
        Some(serde_json::Value::String(text)) => parse_addr(&text)
            .map(addr_of)
            .ok_or(ApiError::BadSocketAddress),
        Some(_) => Err(ApiError::BadSocketAddress),
    }
}

async fn list(State(node): State<Arc<Node>>) -> Response {
    Json(json!({ "view": node.view() })).into_response()
}

async fn add(
    State(node): State<Arc<Node>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let addr = socket_address(&node, body)?;
    Ok(match node.add_to_view(&addr) {
        true => (StatusCode::CREATED, Json(json!({"result": "added"}))),
        false => (StatusCode::OK, Json(json!({"result": "already present"}))),
    }
    .into_response())
}

async fn remove(
    State(node): State<Arc<Node>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let addr = socket_address(&node, body)?;
    match node.remove_from_view(&addr) {
        true => Ok(Json(json!({"result": "deleted"})).into_response()),
        false => Err(ApiError::NotInView),
    }
}
