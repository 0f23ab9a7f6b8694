//! The WebSocket gateway at `/ws`: the HTTP upgrade (with the `Origin`
//! allow-list), the per-connection session loop, and the registry that routes
//! deliveries to this node's connections.
//!
//! The upgrade is done here on top of hyper rather than through axum's
//! WebSocket wrapper so that tokio-tungstenite's buffers and limits are set
//! deliberately and the session owns the socket, including its close.
//!
//! Layout:
//! - this file: [`upgrade`], origin checks, the tungstenite configuration,
//!   the idle sweep and the close of every session at shutdown.
//! - [`session`]: one connection's life: auth, frames, writes, close.
//! - [`outbox`]: a connection's shared half: its bounded queue of frames to
//!   write, its close request, when it was last heard from.
//! - [`registry`]: this node's connections and routing indexes.
//! - [`writer`]: writes a connection's queued frames to its socket in batches.

pub mod outbox;
pub mod registry;
pub mod session;
pub mod writer;

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::error::AppError;
use crate::state::AppState;
use outbox::CloseRequest;

/// Bytes read from the socket at a time. Why 1 KiB: tungstenite allocates this
/// eagerly for every connection, idle or not, and client frames are small
/// (a `send` of a short text is ~200 bytes); a larger frame grows the buffer
/// as it is read. 4 KiB cost 3 KiB more per idle connection, measured.
const READ_BUFFER: usize = 1024;
/// Bytes buffered before tungstenite writes to the socket; the session flushes
/// after each batch anyway. Why 64 KiB: one write per batch of queued frames
/// without holding much memory for a connection that received a burst.
const WRITE_BUFFER: usize = 64 * 1024;

/// The tungstenite settings of every connection.
pub fn ws_config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}

/// Closes the connections nothing arrived from for three heartbeats
/// (`limits.heartbeat_s`; any frame counts, the clients' `ping` is the
/// least), until `stop`.
///
/// One task for the node instead of a timer per connection: a timer is
/// memory every idle connection holds and a re-arm on every frame. Why a
/// quarter of a heartbeat between sweeps: a silent connection is closed
/// between 3 and 3¼ heartbeats after it was last heard, and a sweep reads
/// one timestamp per connection under the registry's read lock (about a
/// millisecond per 100,000 connections), a few times a heartbeat.
pub fn start_idle_sweep(
    state: &AppState,
    tracker: &tokio_util::task::TaskTracker,
    stop: tokio_util::sync::CancellationToken,
) {
    let heartbeat_ms = state.config().limits.heartbeat_s.saturating_mul(1000);
    let idle_ms = heartbeat_ms.saturating_mul(3);
    let every = Duration::from_millis((heartbeat_ms / 4).max(100));
    let state = state.clone();
    tracker.spawn(async move {
        let mut every = crate::util::Every::new(every);
        while every.tick(&stop).await {
            let heard_before = session::clock_ms().saturating_sub(idle_ms);
            let closed = state.registry().close_idle(heard_before);
            if closed > 0 {
                tracing::debug!(closed, "closing idle connections");
            }
        }
    });
}

/// Asks every session of this node to close with 1012 "server restarting"
/// after answering its pending sends and writing what is queued. (A session
/// that registers later sees the shutdown token and asks itself.)
pub fn close_all_sessions(state: &AppState) -> usize {
    state.registry().close_all(CloseRequest::Restarting)
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether the upgrade's `Origin` may connect. No `Origin` header means a
/// non-browser client, which the browser-protection rule does not concern.
pub fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    if allowed.iter().any(|a| a == "*") {
        return true;
    }
    let Ok(origin_url) = url::Url::parse(origin) else {
        return false;
    };
    let normalized = origin_url.origin().ascii_serialization();
    if allowed.is_empty() {
        // Same origin: the Origin's host and port must be the Host we were reached at.
        let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let port = origin_url.port_or_known_default();
        let origin_host = match (origin_url.host_str(), port) {
            (Some(h), Some(p)) if Some(p) == default_port(origin_url.scheme()) => h.to_string(),
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return false,
        };
        return origin_host.eq_ignore_ascii_case(host);
    }
    allowed.iter().any(|a| {
        url::Url::parse(a)
            .map(|u| u.origin().ascii_serialization() == normalized)
            .unwrap_or(false)
    })
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// `GET /ws`: checks the request and hands the upgraded socket to a session.
pub async fn upgrade(State(state): State<AppState>, mut req: Request) -> Response {
    if !state.is_accepting() {
        return AppError::unavailable("the server is shutting down; reconnect shortly")
            .into_response();
    }
    let headers = req.headers();
    let is_upgrade = req.method() == Method::GET
        && header_has(headers, header::CONNECTION, "upgrade")
        && header_has(headers, header::UPGRADE, "websocket")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13");
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let (true, Some(key)) = (is_upgrade, key) else {
        return AppError::bad_request("expected a WebSocket upgrade (version 13)").into_response();
    };
    if !origin_allowed(&state.config().allowed_origins, headers) {
        return AppError::forbidden("this origin may not connect").into_response();
    }
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return AppError::bad_request("this connection cannot be upgraded").into_response();
    };
    let config = ws_config(state.config().limits.max_frame_bytes);
    state.tracker().spawn(session::Connection::start(
        state.clone(),
        on_upgrade,
        config,
    ));
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        )
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        h
    }

    #[test]
    fn same_origin_by_default() {
        let none: Vec<String> = vec![];
        assert!(origin_allowed(
            &none,
            &headers(Some("http://chat.example:8080"), "chat.example:8080")
        ));
        assert!(origin_allowed(
            &none,
            &headers(Some("https://chat.example"), "chat.example")
        ));
        assert!(!origin_allowed(
            &none,
            &headers(Some("https://evil.example"), "chat.example")
        ));
        assert!(!origin_allowed(
            &none,
            &headers(Some("http://chat.example:9999"), "chat.example:8080")
        ));
        assert!(origin_allowed(&none, &headers(None, "chat.example")));
    }

    #[test]
    fn allow_list_and_wildcard() {
        let list = vec!["https://shop.example".to_string()];
        assert!(origin_allowed(
            &list,
            &headers(Some("https://shop.example"), "chat.example")
        ));
        assert!(!origin_allowed(
            &list,
            &headers(Some("https://chat.example"), "chat.example")
        ));
        let any = vec!["*".to_string()];
        assert!(origin_allowed(
            &any,
            &headers(Some("https://anything.example"), "x")
        ));
        assert!(!origin_allowed(&list, &headers(Some("not a url"), "x")));
    }
}
