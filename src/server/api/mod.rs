//! The HTTP API: the contract's `/kvs` and `/view` endpoints for clients and the internal
//! endpoints for peers, as one axum router over a shared [`Node`].
//!
//! Handlers only translate: they parse and validate a request (all `400`s happen here,
//! before any causal wait), call the node, and render its answer. Every response, errors
//! and unknown routes included, is JSON.

mod error;
mod guard;
mod health;
mod internal;
mod kvs;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

pub use error::ApiError;

use crate::server::metrics::Route;
use crate::server::node::Node;

/// Largest message a peer may send (a batch of replicated writes).
const INTERNAL_BODY_LIMIT: usize = 1 << 30;
/// A body this large is read to its end even when the request is refused, so that the
/// client gets the answer rather than a connection reset (as Go's `net/http` does).
const DRAIN_LIMIT: usize = 256 * 1024;

/// Where a request came from, as the listener saw its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remote {
    pub addr: SocketAddr,
    /// The connection presented a client certificate that the cluster's CA signed.
    pub peer_certificate: bool,
}

/// The whole API of one replica.
pub fn router(node: Arc<Node>) -> Router {
    let public = Router::new()
        .merge(kvs::routes())
        .merge(view::routes())
        .merge(health::routes());
    let internal = internal::routes().route_layer(middleware::from_fn_with_state(
        node.clone(),
        guard::internal,
    ));
    let routes = public
        .merge(internal)
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        // Bodies are read whole before routing (see `read_whole_body`); the extractors'
        // own limit must not cut them shorter.
        .layer(DefaultBodyLimit::disable())
        .with_state(node.clone());
    // Counting and reading bodies run once around the whole router, before routing:
    // layered on the router itself they would wrap, and be cloned with, every route.
    Router::new()
        .fallback_service(routes)
        .layer(middleware::from_fn_with_state(
            node.clone(),
            read_whole_body,
        ))
        .layer(middleware::from_fn_with_state(node, count))
}

/// Counts and times every request (see `metrics`).
async fn count(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let route = Route::of(request.uri().path(), request.method().as_str());
    let started = Instant::now();
    let response = next.run(request).await;
    node.metrics
        .request(route, response.status().as_u16(), started.elapsed());
    response
}

/// Reads a request's whole body before any handler runs, up to the route's limit, so that
/// every handler, including those that ignore the body or refuse the request early, leaves
/// nothing unread on the connection. A body over the limit is answered `413` after reading
/// on to [`DRAIN_LIMIT`] bytes.
async fn read_whole_body(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let limit = if request.uri().path().starts_with("/internal/") {
        INTERNAL_BODY_LIMIT
    } else {
        node.config.max_body_bytes
    };
    let head = request.method() == Method::HEAD;
    if declared_length(request.headers()).is_some_and(|n| n > limit.max(DRAIN_LIMIT)) {
        return close(refusal(ApiError::TooLarge(limit), head));
    }
    let (parts, mut body) = request.into_parts();
    let mut whole = Whole::default();
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
            Err(error) => return close(refusal(ApiError::MalformedBody(error.to_string()), head)),
        };
        if whole.len.saturating_add(data.len()) > limit.max(DRAIN_LIMIT) {
            return close(refusal(ApiError::TooLarge(limit), head));
        }
        whole.push(data, limit);
    }
    if whole.len > limit {
        return refusal(ApiError::TooLarge(limit), head);
    }
    next.run(Request::from_parts(parts, Body::from(whole.into_bytes())))
        .await
}

/// A body read frame by frame: a body of one frame (the usual case) is kept as it came,
/// without a copy.
#[derive(Default)]
struct Whole {
    first: Bytes,
    rest: Option<bytes::BytesMut>,
    len: usize,
}

impl Whole {
    /// Adds a frame; past `limit` bytes, frames are counted but not kept.
    fn push(&mut self, data: Bytes, limit: usize) {
        self.len = self.len.saturating_add(data.len());
        if self.len > limit {
            return;
        }
        match &mut self.rest {
            Some(rest) => rest.extend_from_slice(&data),
            None if self.first.is_empty() => self.first = data,
            None => {
                let mut rest = bytes::BytesMut::from(&self.first[..]);
                rest.extend_from_slice(&data);
                self.rest = Some(rest);
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        match self.rest {
            Some(rest) => rest.freeze(),
            None => self.first,
        }
    }
}

/// The answer to a request refused before routing; a `HEAD` answer has no body (the
/// router strips it from the answers it makes).
fn refusal(error: ApiError, head: bool) -> Response {
    let response = error.into_response();
    if head {
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    response
}

fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// An answer after which the connection closes: part of the request was left unread.
fn close(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

async fn no_route() -> ApiError {
    ApiError::NoRoute
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The body of a request, or the error for a body that could not be read (the body was
/// already read whole, within its limit, by `read_whole_body`).
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
