//! The API's error type: every failure a client can see, each with its status and the
//! contract's message, rendered as `{"error": "..."}` in one place.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::protocol::causal::Clock;
use crate::protocol::causal::metadata::{self, MetadataError};
use crate::server::node::NodeError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Key is too long")]
    KeyTooLong,
    #[error("Key is empty")]
    KeyEmpty,
    #[error("PUT request does not specify a value")]
    MissingValue,
    #[error("Key does not exist")]
    KeyNotFound { metadata: Clock },
    #[error("View has no such replica")]
    NotInView,
    #[error("Request does not specify a socket-address")]
    MissingSocketAddress,
    #[error("socket-address must be an IP:PORT string")]
    BadSocketAddress,
    #[error("Malformed request body: {0}")]
    MalformedBody(String),
    #[error("Malformed causal-metadata: {0}")]
    Metadata(#[from] MetadataError),
    #[error("Malformed request path: {0}")]
    MalformedPath(String),
    #[error("Request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("No such endpoint")]
    NoRoute,
    #[error("Method not allowed")]
    MethodNotAllowed,
    #[error("Not authenticated: {0}")]
    Unauthenticated(String),
    #[error(transparent)]
    Node(#[from] NodeError),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::KeyTooLong
            | ApiError::KeyEmpty
            | ApiError::MissingValue
            | ApiError::MissingSocketAddress
            | ApiError::BadSocketAddress
            | ApiError::MalformedBody(_)
            | ApiError::Metadata(_)
            | ApiError::MalformedPath(_) => StatusCode::BAD_REQUEST,
            ApiError::KeyNotFound { .. } | ApiError::NotInView | ApiError::NoRoute => {
                StatusCode::NOT_FOUND
            }
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Node(NodeError::CausalTimeout | NodeError::ClockAhead(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Node(NodeError::NotInView(_)) => StatusCode::CONFLICT,
            ApiError::Node(NodeError::Storage(_)) => StatusCode::INSUFFICIENT_STORAGE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match &self {
            ApiError::KeyNotFound { metadata: m } => json!({
                "error": self.to_string(),
                "causal-metadata": metadata::encode(m),
            }),
            _ => json!({ "error": self.to_string() }),
        };
        (self.status(), Json(body)).into_response()
    }
}
