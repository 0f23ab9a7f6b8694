//! The protocol client shared by the scenarios: connect and `auth`, send
//! frames built with `switchboard-protocol`, read the next text frame while
//! counting how the server closed the connection, keep an idle connection
//! alive, and close politely.

use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, Stream, StreamExt};
use switchboard_protocol::{AuthOk, ClientFrame, OkBody, ReqId, ServerFrame};
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

use crate::body::{self, Incoming};
use crate::net::{Connector, Ws};
use crate::stats::Stats;

/// How long the `auth` reply may take. Why 15 s: the server answers at once
/// (one token check and one query), so only a server drowning in a connect
/// storm is slower, and then the attempt is a failure worth reporting.
const AUTH_REPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a polite close may take before the socket is just dropped. Why
/// 1 s: a close frame to loopback is immediate unless the peer stopped
/// reading, and thousands of connections close at the end of a run.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The `req` of the `auth` frame; scenarios number their requests from 2.
pub(crate) const AUTH_REQ: ReqId = 1;

/// Sends one client frame as a text frame (flushed).
pub(crate) async fn send<S>(sink: &mut S, frame: &ClientFrame) -> anyhow::Result<()>
where
    S: futures_util::Sink<WsMessage, Error = WsError> + Unpin,
{
    sink.send(WsMessage::text(frame.to_json()))
        .await
        .context("sending a frame")
}

/// The next text frame, skipping control frames; `None` once the connection
/// ended, after counting how it ended in `stats`.
pub(crate) async fn next_text<S>(stream: &mut S, stats: &Stats) -> Option<Utf8Bytes>
where
    S: Stream<Item = Result<WsMessage, WsError>> + Unpin,
{
    loop {
        match stream.next().await {
            Some(Ok(WsMessage::Text(t))) => return Some(t),
            Some(Ok(WsMessage::Close(frame))) => {
                stats.server_closed(frame.as_ref());
                return None;
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => {
                stats.dropped();
                return None;
            }
        }
    }
}

/// Connects and authenticates; the reply's session on success.
pub(crate) async fn connect_authed(
    connector: &Connector,
    token: &str,
    stats: &Stats,
) -> anyhow::Result<(Ws, AuthOk)> {
    let mut ws = connector.connect().await?;
    let auth = ClientFrame::Auth {
        req: Some(AUTH_REQ),
        token: token.to_string(),
    };
    send(&mut ws, &auth).await?;
    let ok = tokio::time::timeout(AUTH_REPLY_TIMEOUT, await_auth_reply(&mut ws, stats))
        .await
        .map_err(|_| anyhow::anyhow!("no auth reply within {AUTH_REPLY_TIMEOUT:?}"))??;
    Ok((ws, ok))
}

async fn await_auth_reply(ws: &mut Ws, stats: &Stats) -> anyhow::Result<AuthOk> {
    loop {
        let Some(text) = next_text(ws, stats).await else {
            anyhow::bail!("connection closed before the auth reply");
        };
        if let Incoming::Frame(frame) = body::classify(&text)? {
            match *frame {
                ServerFrame::Ok {
                    req: Some(AUTH_REQ),
                    body: OkBody::Auth(ok),
                } => return Ok(ok),
                ServerFrame::Error {
                    req: Some(AUTH_REQ),
                    code,
                    message,
                } => {
                    stats.error_reply(code);
                    anyhow::bail!("auth refused: {}: {message}", code.as_str());
                }
                _ => {}
            }
        }
    }
}

/// Connects to the baseline server, which greets every registered
/// connection with one text frame; returns once greeted, so that the
/// connection is known to receive broadcasts.
pub(crate) async fn connect_baseline(connector: &Connector, stats: &Stats) -> anyhow::Result<Ws> {
    let mut ws = connector.connect().await?;
    let greeting = tokio::time::timeout(AUTH_REPLY_TIMEOUT, next_text(&mut ws, stats))
        .await
        .map_err(|_| anyhow::anyhow!("no greeting from the baseline server"))?;
    match greeting {
        Some(t) if t.as_str() == crate::baseline::GREETING => Ok(ws),
        Some(t) => anyhow::bail!(
            "unexpected first frame from the baseline: {}",
            body::clip(&t)
        ),
        None => anyhow::bail!("the baseline server closed the connection"),
    }
}

/// Holds an idle connection until `stop` turns true, answering the server
/// and sending a `ping` every `heartbeat` so that the server does not close
/// it as idle. Returns `false` if the server closed it first.
pub(crate) async fn hold_idle(
    mut ws: Ws,
    heartbeat: Option<Duration>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    stats: &Stats,
) -> bool {
    // With no heartbeat (the baseline) the interval is effectively never.
    let period = heartbeat.unwrap_or(Duration::from_secs(24 * 3600));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            _ = until_set(&mut stop) => {
                close_quietly(ws).await;
                return true;
            }
            _ = ping.tick() => {
                if send(&mut ws, &ClientFrame::Ping { req: None }).await.is_err() {
                    stats.dropped();
                    return false;
                }
            }
            text = next_text(&mut ws, stats) => {
                if text.is_none() {
                    return false;
                }
            }
        }
    }
}

/// Sends a normal close and drops the socket, within [`CLOSE_TIMEOUT`].
pub(crate) async fn close_quietly(mut ws: Ws) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
}

/// Heartbeat period from an `auth` reply.
pub(crate) fn heartbeat_of(ok: &AuthOk) -> Option<Duration> {
    (ok.heartbeat_s > 0).then(|| Duration::from_secs(ok.heartbeat_s))
}

/// Waits until a stop flag turns true (or its sender is gone). The guard
/// `wait_for` returns is dropped here, so callers can `.await` afterwards.
pub(crate) async fn until_set(flag: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}
