//! `/internal/...`: the endpoints replicas use among themselves (see `wire`).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::guard::Sender;
use super::{ApiError, read_body};
use crate::protocol::machine::{Answer, Message};
use crate::protocol::wire::{self, Validate};
use crate::server::node::Node;
use crate::server::wallclock::limits;

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route(wire::HEARTBEAT, post(heartbeat))
        .route(wire::ANNOUNCE, post(announce))
        .route(wire::VIEW_CHANGE, post(view_change))
        .route(wire::REPLICATE, post(replicate))
        .route(wire::SYNC, post(sync))
}

/// A peer message with its sender, as the guard authenticated it.
trait FromPeer {
    fn from(&self) -> &str;
}

macro_rules! from_peer {
    ($($t:ty),*) => {$(impl FromPeer for $t { fn from(&self) -> &str { &self.from } })*};
}
from_peer!(
    wire::Heartbeat,
    wire::Announce,
    wire::ViewChange,
    wire::Replicate,
    wire::SyncRequest
);

/// Parses and validates a peer message; unlike client bodies, an empty one is malformed.
/// Its `from` must be the sender the guard authenticated.
fn message<T: DeserializeOwned + Validate + FromPeer>(
    sender: Option<Extension<Sender>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = read_body(body, super::INTERNAL_BODY_LIMIT)?;
    let message: T =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedBody(e.to_string()))?;
    message
        .validate(&limits())
        .map_err(ApiError::MalformedBody)?;
    match sender {
        Some(Extension(Sender(sender))) if *sender == *message.from() => Ok(message),
        _ => Err(ApiError::Unauthenticated(format!(
            "the message's sender {} is not the authenticated one",
            message.from()
        ))),
    }
}

async fn heartbeat(
    State(node): State<Arc<Node>>,
    sender: Option<Extension<Sender>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    answer(&node, Message::Heartbeat(message(sender, body)?))
}

async fn announce(
    State(node): State<Arc<Node>>,
    sender: Option<Extension<Sender>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    answer(&node, Message::Announce(message(sender, body)?))
}

async fn view_change(
    State(node): State<Arc<Node>>,
    sender: Option<Extension<Sender>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    answer(&node, Message::ViewChange(message(sender, body)?))
}

async fn replicate(
    State(node): State<Arc<Node>>,
    sender: Option<Extension<Sender>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    answer(&node, Message::Replicate(message(sender, body)?))
}

async fn sync(
    State(node): State<Arc<Node>>,
    sender: Option<Extension<Sender>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    answer(&node, Message::Sync(message(sender, body)?))
}

/// Steps a peer's message into the machine and renders its answer.
fn answer(node: &Node, message: Message) -> Result<Response, ApiError> {
    Ok(match node.on_message(message)? {
        Answer::Status(status) => Json(status).into_response(),
        Answer::Done => Json(json!({"result": "ok"})).into_response(),
        Answer::Taken(received) => Json(json!({
            "applied": received.applied,
            "buffered": received.buffered,
            "duplicates": received.duplicates,
            "refused": received.refused,
        }))
        .into_response(),
        Answer::Delta(delta) => Json(delta).into_response(),
    })
}
