//! The gate in front of the internal endpoints: who may talk to this replica as a peer.
//!
//! Every internal request names its sender in the `x-causalkv-from` header, and the
//! message body's `from` must be the same address. Then, in order:
//!
//! 1. With `--tls-ca`, the connection must have presented a certificate that the cluster's
//!    CA signed (mutual TLS).
//! 2. With a cluster secret, the request must carry a valid signature inside the replay
//!    window, with a nonce not seen before (see `auth`); the answer is signed in turn.
//! 3. Without a secret, the TCP source IP must be the IP of the sender's address, and the
//!    sender must be a member this replica knows: in its view for view changes, in its view
//!    or down for probes (a down member's probes must be answered for it to come back), and
//!    anyone for an announcement (a restarting member). Replication and catch-up requests
//!    from outside the view get the node's `409` ("not in my view").
//!
//! No replica sends to itself, so a message claiming this replica as its sender is refused.
//! A refusal is `401` with a JSON error, changes nothing, and is logged at `warn` with the
//! source address, at most once per second (with the count of refusals not logged).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use super::{ApiError, Remote};
use crate::protocol::causal::{Addr, parse_addr};
use crate::protocol::membership::Status;
use crate::protocol::wire;
use crate::server::auth::{self, AuthError, Signed};
use crate::server::node::Node;
use crate::server::wallclock::now_ms;

/// The authenticated sender of an internal request.
#[derive(Clone, Debug)]
pub struct Sender(pub Addr);

/// Authenticates an internal request (see the module doc), then signs the answer.
pub async fn internal(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let remote = request.extensions().get::<Remote>().copied();
    let (mut parts, body) = request.into_parts();
    // The body was buffered by `read_whole_body`; collecting it again copies nothing.
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => return ApiError::MalformedBody(error.to_string()).into_response(),
    };
    let nonce = header(&parts.headers, auth::NONCE).map(str::to_string);
    let response = match authenticate(&node, remote, &parts, &body) {
        Ok(sender) => {
            parts.extensions.insert(Sender(sender));
            next.run(Request::from_parts(parts, Body::from(body))).await
        }
        Err(why) => {
            log_refusal(remote, &parts, &why);
            ApiError::Unauthenticated(why).into_response()
        }
    };
    match (node.trust.keyring(), nonce) {
        (Some(keys), Some(nonce)) => sign(&node, &keys, &nonce, response).await,
        _ => response,
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The sender, if the request may be acted on; else why not.
fn authenticate(
    node: &Node,
    remote: Option<Remote>,
    parts: &Parts,
    body: &Bytes,
) -> Result<Addr, String> {
    let from = header(&parts.headers, auth::FROM)
        .ok_or_else(|| format!("missing {} header", auth::FROM))?;
    wire::check_addr(from)?;
    if from == &*node.config.me {
        return Err("a replica never sends to itself".into());
    }
    if node.trust.mutual_tls && !remote.is_some_and(|r| r.peer_certificate) {
        return Err("internal endpoints need a client certificate signed by the cluster CA".into());
    }
    let path = parts.uri.path();
    match node.trust.keyring() {
        Some(keys) => {
            let signed = signed_headers(&parts.headers, from).map_err(|e| e.to_string())?;
            node.trust
                .verifier
                .verify_request(&keys, parts.method.as_str(), path, &signed, body, now_ms())
                .map_err(|e| e.to_string())?;
        }
        None => {
            check_source(remote, from)?;
            check_member(node, path, from)?;
        }
    }
    Ok(Addr::from(from))
}

fn signed_headers(headers: &HeaderMap, from: &str) -> Result<Signed, AuthError> {
    let time_ms = header(headers, auth::TIME)
        .and_then(|t| t.parse().ok())
        .ok_or(AuthError::MissingHeader(auth::TIME))?;
    let nonce = header(headers, auth::NONCE).ok_or(AuthError::MissingHeader(auth::NONCE))?;
    let mac = header(headers, auth::MAC).ok_or(AuthError::MissingHeader(auth::MAC))?;
    Ok(Signed {
        from: from.to_string(),
        time_ms,
        nonce: nonce.to_string(),
        mac: mac.to_string(),
    })
}

/// Without a secret: the connection must come from the IP the sender claims.
fn check_source(remote: Option<Remote>, from: &str) -> Result<(), String> {
    let claimed = parse_addr(from)
        .ok_or_else(|| format!("{from:?} is not an IP:PORT address"))?
        .ip();
    let source = remote
        .map(|r| canonical(r.addr.ip()))
        .ok_or("the connection's source address is unknown")?;
    if source == canonical(claimed) {
        Ok(())
    } else {
        Err(format!(
            "the connection comes from {source}, not from the sender's address {from}"
        ))
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Without a secret: who may send what (see the module doc).
fn check_member(node: &Node, path: &str, from: &str) -> Result<(), String> {
    let status = node.member_status(from);
    let allowed = match path {
        wire::ANNOUNCE | wire::REPLICATE | wire::SYNC => true,
        wire::HEARTBEAT => matches!(status, Some(Status::Up | Status::Down)),
        _ => status == Some(Status::Up),
    };
    if allowed {
        Ok(())
    } else {
        Err(format!("{from} is not a member of this replica's view"))
    }
}

/// Adds the answer's MAC, bound to the request's nonce.
async fn sign(node: &Node, keys: &auth::Keyring, nonce: &str, response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => return ApiError::MalformedBody(error.to_string()).into_response(),
    };
    let mac = auth::sign_answer(keys, nonce, parts.status.as_u16(), &node.config.me, &body);
    if let Ok(value) = mac.parse() {
        parts.headers.insert(auth::MAC, value);
    }
    Response::from_parts(parts, Body::from(body))
}

/// When the last refusal was logged (ms since the Unix epoch), and how many were not.
static LAST_LOGGED_MS: AtomicU64 = AtomicU64::new(0);
static NOT_LOGGED: AtomicU64 = AtomicU64::new(0);

fn log_refusal(remote: Option<Remote>, parts: &Parts, why: &str) {
    let now = now_ms();
    let last = LAST_LOGGED_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) < 1000
        || LAST_LOGGED_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        NOT_LOGGED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let suppressed = NOT_LOGGED.swap(0, Ordering::Relaxed);
    let source = remote.map_or_else(|| "unknown".to_string(), |r| r.addr.to_string());
    tracing::warn!(
        %source,
        path = parts.uri.path(),
        why,
        refusals_not_logged = suppressed,
        "refused an internal request"
    );
}
