//! One WebSocket connection, from `auth` to close.
//!
//! A single task owns the socket and runs one `select!` over: a close request
//! (slow consumer), server shutdown, the outbound queue, inbound frames and the
//! idle deadline. Everything sent to the client — replies and events alike —
//! goes through the connection's bounded outbound queue, so ordering is the
//! queue's order; the writer takes whatever is queued and writes it with one
//! flush, which is what lets one connection receive tens of thousands of
//! frames per second without a system call per frame.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use switchboard_protocol::{
    close, AuthOk, ClientFrame, ErrorCode, OkBody, ReqId, ReqOnly, ServerFrame, UserRef,
};

use super::outbox::Outbox;
use super::registry::{ConnHandle, Kill};
use crate::auth;
use crate::conversations::{self, messages};
use crate::dispatch;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::util::{new_id, now_ms};

/// A session's socket.
pub type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Frames written per flush at most. Why 512: large enough that a burst goes
/// out in a handful of writes, small enough that a connection under a flood
/// still returns to reading its own socket regularly.
const MAX_BATCH: usize = 512;
/// How long a close frame may take to reach a client before the socket is
/// dropped anyway (a slow consumer may never read it).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// After our close frame, how long we keep reading so that unread input does
/// not make the kernel reset the connection before the client reads the close.
const LINGER: Duration = Duration::from_millis(500);
/// Window over which rate-limit strikes are counted.
const STRIKE_WINDOW: Duration = Duration::from_secs(10);
/// Sends of one connection waiting for their commit. Why 256: a client that
/// pipelines sends fills the committer's batches (one transaction for many
/// messages) without holding unbounded work per connection; at the bound the
/// session stops reading until acks complete, which pushes back on the client.
const MAX_SENDS_IN_FLIGHT: usize = 256;
/// 1013 "try again later": the store is down while a client authenticates.
const TRY_AGAIN_LATER: u16 = 1013;

/// Runs a connection to its end.
///
/// The future of this function lives as long as the connection, inside its
/// task, so its size is memory every idle connection holds: authenticating
/// and setting up (reads, a reply, a dozen locals) are done in a boxed
/// future that is freed once the session is ready, and only [`Session::serve`]
/// is inlined here.
pub async fn run(state: AppState, ws: Ws) {
    let Some(Ready {
        mut session,
        ws,
        registered,
        span,
    }) = Box::pin(start(state, ws)).await
    else {
        return;
    };
    session.serve(ws).instrument(span).await;
    drop(registered);
}

/// A connection that authenticated, with what its loop needs.
struct Ready {
    session: Session,
    ws: Ws,
    /// Unregisters the connection when dropped, after the loop ended.
    registered: Unregister,
    span: tracing::Span,
}

/// Authenticates the connection, registers it and sends the `auth` reply.
async fn start(state: AppState, mut ws: Ws) -> Option<Ready> {
    let (user, req) = await_auth(&state, &mut ws).await?;
    let conn_id: Arc<str> = Arc::from(new_id("c_"));
    let span = tracing::info_span!("session", conn = %conn_id, user = %user.id);
    let setup = async move {
        let limits = &state.config().limits;
        let handle = ConnHandle {
            id: conn_id.clone(),
            user: Arc::from(user.id.as_str()),
            outbox: Arc::new(Outbox::new(limits.outbound_queue)),
            kill: Arc::new(Kill::default()),
        };
        // Register before reading the conversation list: a membership change
        // published meanwhile then reaches this connection's index.
        state.registry().register(handle.clone());
        let staff = user.role.is_staff().then(|| user.id.clone());
        let registered = Unregister(state.clone(), conn_id.clone(), staff.clone());
        let conversations =
            match conversations::open_conversations_of(state.store(), &user.id).await {
                Ok(c) => c,
                Err(e) => {
                    e.log();
                    let _ = ws
                        .send(text(&ServerFrame::error(req, e.code(), e.public_message())))
                        .await;
                    close_gracefully(&mut ws, TRY_AGAIN_LATER, "try again later").await;
                    return None;
                }
            };
        state
            .registry()
            .join(&user.id, conversations.iter().map(|c| c.id.as_str()));
        tracing::debug!(conversations = conversations.len(), "authenticated");
        let welcome = ServerFrame::Ok {
            req,
            body: OkBody::Auth(AuthOk {
                user: user.clone(),
                connection: conn_id.to_string(),
                server_time: now_ms(),
                heartbeat_s: limits.heartbeat_s,
                conversations,
            }),
        };
        let session = Session {
            state: state.clone(),
            user,
            handle,
            limiter: RateLimiter::new(limits.rate_per_sec, limits.rate_burst, limits.rate_strikes),
            in_flight: FuturesOrdered::new(),
        };
        session.reply(&welcome);
        if staff.is_some() {
            dispatch::staff_connected(&state, &session.user);
        }
        Some((session, ws, registered))
    };
    let (session, ws, registered) = setup.instrument(span.clone()).await?;
    Some(Ready {
        session,
        ws,
        registered,
        span,
    })
}

/// Removes the connection from the registry however the session ends, and
/// tells dispatch when a staff member's connection went away.
struct Unregister(AppState, Arc<str>, Option<String>);

impl Drop for Unregister {
    fn drop(&mut self) {
        self.0.registry().unregister(&self.1);
        if let Some(user) = &self.2 {
            dispatch::staff_disconnected(&self.0, user);
        }
    }
}

fn text(frame: &ServerFrame) -> WsMessage {
    WsMessage::Text(Utf8Bytes::from(frame.to_json()))
}

fn is_too_large(e: &WsError) -> bool {
    matches!(e, WsError::Capacity(_))
}

/// Waits for the first frame, which must be a valid `auth`.
async fn await_auth(state: &AppState, ws: &mut Ws) -> Option<(UserRef, Option<ReqId>)> {
    let deadline = Instant::now() + Duration::from_secs(state.config().limits.auth_timeout_s);
    loop {
        let next = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => {
                close_gracefully(ws, close::NOT_AUTHENTICATED, "auth timeout").await;
                return None;
            }
            Ok(None) => return None,
            Ok(Some(Err(e))) => {
                if is_too_large(&e) {
                    close_gracefully(ws, close::TOO_LARGE, "frame too large").await;
                }
                return None;
            }
            Ok(Some(Ok(m))) => m,
        };
        let text = match next {
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => continue,
            WsMessage::Close(_) => return None,
            WsMessage::Binary(_) => {
                close_gracefully(ws, close::NOT_AUTHENTICATED, "auth required").await;
                return None;
            }
            WsMessage::Text(t) => t,
        };
        let Ok(ClientFrame::Auth { req, token }) = serde_json::from_str::<ClientFrame>(&text)
        else {
            close_gracefully(ws, close::NOT_AUTHENTICATED, "auth required").await;
            return None;
        };
        return match auth::authenticate(state, &token).await {
            Ok(user) => Some((user, req)),
            Err(e) => {
                e.log();
                let code = e.code();
                let _ = ws.send(text_frame(req, code, e.public_message())).await;
                if code == ErrorCode::Unavailable || code == ErrorCode::Internal {
                    close_gracefully(ws, TRY_AGAIN_LATER, "try again later").await;
                } else {
                    close_gracefully(ws, close::BAD_TOKEN, "invalid token").await;
                }
                None
            }
        };
    }
}

fn text_frame(req: Option<ReqId>, code: ErrorCode, message: String) -> WsMessage {
    text(&ServerFrame::error(req, code, message))
}

/// Sends a close frame, half-closes, and reads briefly so that input the
/// client already sent (an oversize frame, say) does not turn our orderly
/// close into a TCP reset that would hide the close code from the client.
async fn close_gracefully(ws: &mut Ws, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    if tokio::time::timeout(CLOSE_TIMEOUT, ws.send(WsMessage::Close(Some(frame))))
        .await
        .is_err()
    {
        return;
    }
    let io = ws.get_mut();
    let _ = tokio::time::timeout(LINGER, io.shutdown()).await;
    let linger = async {
        let mut scratch = [0u8; 4096];
        let mut total = 0usize;
        // Bounded: at most 1 MiB is read and thrown away.
        while total < 1 << 20 {
            match io.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, linger).await;
}

/// Per-connection token bucket plus a count of recent rejections.
struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    strikes: u32,
    max_strikes: u32,
    window_start: Instant,
}

enum RateVerdict {
    Allow,
    Reject,
    Close,
}

impl RateLimiter {
    fn new(rate: u32, burst: u32, max_strikes: u32) -> Self {
        let now = Instant::now();
        RateLimiter {
            rate: rate as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: now,
            strikes: 0,
            max_strikes,
            window_start: now,
        }
    }

    fn check(&mut self) -> RateVerdict {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return RateVerdict::Allow;
        }
        if now.duration_since(self.window_start) > STRIKE_WINDOW {
            self.window_start = now;
            self.strikes = 0;
        }
        self.strikes += 1;
        if self.strikes > self.max_strikes {
            RateVerdict::Close
        } else {
            RateVerdict::Reject
        }
    }
}

struct Session {
    state: AppState,
    user: UserRef,
    handle: ConnHandle,
    limiter: RateLimiter,
    /// Replies to sends whose commit is pending, in the order they were sent.
    in_flight: FuturesOrdered<BoxFuture<'static, ServerFrame>>,
}

/// How a request is answered.
enum Answer {
    /// Now (`None`: nothing to answer, the frame had no `req`).
    Now(Option<Box<ServerFrame>>),
    /// When the future completes (a send waiting for its commit).
    Later(BoxFuture<'static, ServerFrame>),
}

/// Why the connection loop ended.
enum Stop {
    /// Closed from outside (slow consumer): the code is in the kill switch.
    Killed,
    /// The server is shutting down.
    Shutdown,
    /// We close with this code and reason.
    Close(u16, &'static str),
    /// The client went away or the socket failed: nothing to send.
    Gone,
}

/// What the loop does after an inbound frame.
enum Flow {
    Continue,
    Close(u16, &'static str),
}

impl Session {
    /// Queues a frame for this connection.
    fn reply(&self, frame: &ServerFrame) {
        self.state
            .registry()
            .push(&self.handle, Utf8Bytes::from(frame.to_json()));
    }

    fn reply_error(&self, req: Option<ReqId>, error: &AppError) {
        error.log();
        self.reply(&ServerFrame::error(
            req,
            error.code(),
            error.public_message(),
        ));
    }

    async fn serve(&mut self, mut ws: Ws) {
        let kill = self.handle.kill.clone();
        let outbox = self.handle.outbox.clone();
        let shutdown = self.state.shutdown_token().clone();
        let idle_after = Duration::from_secs(self.state.config().limits.heartbeat_s * 3);
        // Made once, not per turn of the loop: a fresh cancellation future
        // registers a waiter and a fresh sleep a timer entry, and on a fan-out
        // server that is paid on every wake-up of every connection. The idle
        // timer is re-armed lazily from the last activity instead.
        let killed = kill.requested();
        tokio::pin!(killed);
        let stopping = shutdown.cancelled();
        tokio::pin!(stopping);
        let idle = tokio::time::sleep(idle_after);
        tokio::pin!(idle);
        let mut last_activity = Instant::now();
        let stop = loop {
            tokio::select! {
                // Close requests first: a slow consumer must not be fed more.
                biased;
                _ = &mut killed => break Stop::Killed,
                _ = &mut stopping => break Stop::Shutdown,
                first = outbox.next() => {
                    let written = tokio::select! {
                        // Boxed for the session future's size (see `run`):
                        // one allocation per burst written, next to a write.
                        r = Box::pin(write_batch(&mut ws, first, &outbox)) => r,
                        // A stuck socket must not keep us from closing it.
                        _ = &mut killed => break Stop::Killed,
                        _ = &mut stopping => break Stop::Shutdown,
                    };
                    match written {
                        Ok(n) => self.state.metrics().frames_out.inc_by(n as u64),
                        Err(_) => break Stop::Gone,
                    }
                }
                Some(reply) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.reply(&reply);
                }
                // Not read while too many sends are in flight: back-pressure.
                inbound = ws.next(), if self.in_flight.len() < MAX_SENDS_IN_FLIGHT => {
                    last_activity = Instant::now();
                    let flow = match inbound {
                        None => break Stop::Gone,
                        Some(Err(e)) if is_too_large(&e) => Flow::Close(close::TOO_LARGE, "frame too large"),
                        Some(Err(_)) => break Stop::Gone,
                        // Boxed for the session future's size (see `run`).
                        Some(Ok(WsMessage::Text(t))) => Box::pin(self.on_text(&t)).await,
                        Some(Ok(WsMessage::Binary(_))) => {
                            self.on_rejected_frame(None, AppError::bad_request(
                                "binary frames are not supported; send JSON text frames",
                            ))
                        }
                        Some(Ok(WsMessage::Close(_))) => {
                            let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
                            break Stop::Gone;
                        }
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {
                            Flow::Continue
                        }
                    };
                    if let Flow::Close(code, reason) = flow {
                        break Stop::Close(code, reason);
                    }
                }
                _ = &mut idle => {
                    let deadline = last_activity + idle_after;
                    if deadline <= Instant::now() {
                        break Stop::Close(close::NORMAL, "idle timeout");
                    }
                    idle.as_mut().reset(deadline);
                }
            }
        };
        let code = kill.code();
        Box::pin(self.finish(stop, ws, &outbox, code)).await;
        outbox.close();
    }

    /// Closes the connection the way `stop` says.
    async fn finish(&mut self, stop: Stop, mut ws: Ws, outbox: &Outbox, kill_code: u16) {
        match stop {
            Stop::Killed => {
                outbox.close();
                tracing::info!(code = kill_code, "closing connection");
                close_gracefully(&mut ws, kill_code, reason_of(kill_code)).await;
            }
            Stop::Shutdown => {
                // Answer the sends already taken, deliver what is queued, then
                // tell the client to reconnect.
                let finish = async {
                    while let Some(reply) = self.in_flight.next().await {
                        self.reply(&reply);
                    }
                    self.drain(&mut ws, outbox).await;
                };
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, finish).await;
                close_gracefully(&mut ws, close::RESTARTING, "server restarting").await;
            }
            Stop::Close(code, reason) => {
                outbox.close();
                close_gracefully(&mut ws, code, reason).await;
            }
            Stop::Gone => {}
        }
    }

    /// Writes everything still queued (used on shutdown).
    async fn drain(&mut self, ws: &mut Ws, outbox: &Outbox) {
        while let Some(first) = outbox.pop() {
            match write_batch(ws, first, outbox).await {
                Ok(n) => self.state.metrics().frames_out.inc_by(n as u64),
                Err(_) => return,
            }
        }
    }

    /// A frame that is counted against the rate limit but cannot be executed.
    fn on_rejected_frame(&mut self, req: Option<ReqId>, error: AppError) -> Flow {
        if let Some(flow) = self.rate_check(req) {
            return flow;
        }
        self.state
            .metrics()
            .frames_in
            .with_label_values(&["invalid"])
            .inc();
        self.reply_error(req, &error);
        Flow::Continue
    }

    /// `Some(flow)` when the rate limit stops this frame.
    fn rate_check(&mut self, req: Option<ReqId>) -> Option<Flow> {
        match self.limiter.check() {
            RateVerdict::Allow => None,
            RateVerdict::Reject => {
                self.state.metrics().rate_limited.inc();
                self.reply(&ServerFrame::error(
                    req,
                    ErrorCode::RateLimited,
                    "too many frames; slow down",
                ));
                Some(Flow::Continue)
            }
            RateVerdict::Close => {
                self.state.metrics().rate_limited.inc();
                Some(Flow::Close(close::RATE_LIMITED, "rate limit exceeded"))
            }
        }
    }

    async fn on_text(&mut self, text: &str) -> Flow {
        let frame = match serde_json::from_str::<ClientFrame>(text) {
            Ok(frame) => frame,
            Err(e) => {
                let req = serde_json::from_str::<ReqOnly>(text)
                    .ok()
                    .and_then(|r| r.req);
                return self
                    .on_rejected_frame(req, AppError::bad_request(describe_parse_error(&e)));
            }
        };
        let req = frame.req();
        if let Some(flow) = self.rate_check(req) {
            return flow;
        }
        self.state
            .metrics()
            .frames_in
            .with_label_values(&[frame.type_name()])
            .inc();
        match self.execute(frame).await {
            Ok(Answer::Now(Some(reply))) => self.reply(&reply),
            Ok(Answer::Now(None)) => {}
            Ok(Answer::Later(reply)) => self.in_flight.push_back(reply),
            Err(e) => self.reply_error(req, &e),
        }
        Flow::Continue
    }

    /// Runs one request.
    async fn execute(&mut self, frame: ClientFrame) -> AppResult<Answer> {
        let state = &self.state;
        let user = &self.user;
        let ok = |req: Option<ReqId>, body: OkBody| {
            Answer::Now(req.map(|req| {
                Box::new(ServerFrame::Ok {
                    req: Some(req),
                    body,
                })
            }))
        };
        let empty = |req: Option<ReqId>| ok(req, OkBody::Empty {});
        match frame {
            ClientFrame::Auth { .. } => Err(AppError::bad_request(
                "this connection is already authenticated",
            )),
            ClientFrame::Ping { req } => Ok(Answer::Now(Some(Box::new(ServerFrame::Pong { req })))),
            ClientFrame::Send {
                req,
                conv,
                client_msg_id,
                kind,
                body,
                attachment,
            } => {
                let started = std::time::Instant::now();
                let input = messages::SendInput {
                    conv,
                    client_msg_id,
                    kind,
                    body,
                    attachment,
                };
                let prepared =
                    messages::prepare_send(state, user, Some(self.handle.id.clone()), input)
                        .await?;
                let state = state.clone();
                Ok(Answer::Later(Box::pin(async move {
                    match messages::finish_send(prepared).await {
                        Ok(msg) => {
                            state
                                .metrics()
                                .send_ack_seconds
                                .observe(started.elapsed().as_secs_f64());
                            ServerFrame::Ok {
                                req,
                                body: OkBody::Sent { msg },
                            }
                        }
                        Err(e) => {
                            e.log();
                            ServerFrame::error(req, e.code(), e.public_message())
                        }
                    }
                })))
            }
            ClientFrame::Sync {
                req,
                conv,
                after,
                before,
                limit,
            } => {
                let page = messages::Page::from_bounds(after, before)?;
                let limit = limit.unwrap_or(switchboard_protocol::limits::SYNC_DEFAULT_LIMIT);
                let page = messages::sync_messages(state, user, &conv, page, limit).await?;
                Ok(ok(req, OkBody::Sync(page)))
            }
            ClientFrame::Read { req, conv, seq } => {
                messages::mark_read(state, user, &conv, seq).await?;
                Ok(empty(req))
            }
            ClientFrame::Typing { req, conv } => {
                messages::typing(state, user, &conv).await?;
                Ok(empty(req))
            }
            ClientFrame::Recall { req, conv, msg_id } => {
                messages::recall(state, user, &conv, &msg_id).await?;
                Ok(empty(req))
            }
            ClientFrame::Consult {
                req,
                team,
                topic,
                text,
            } => {
                let info = Box::pin(dispatch::consult(
                    state,
                    user,
                    team.as_deref(),
                    topic.as_deref(),
                    text.as_deref(),
                ))
                .await?;
                Ok(ok(req, OkBody::Consulted { conv: info.id }))
            }
            ClientFrame::Presence { req, status } => {
                Box::pin(dispatch::presence(state, user, status)).await?;
                Ok(empty(req))
            }
            ClientFrame::Accept { req, conv } => {
                Box::pin(dispatch::accept(state, user, &conv)).await?;
                Ok(empty(req))
            }
            ClientFrame::Transfer {
                req,
                conv,
                to_agent,
                to_team,
                note,
            } => {
                Box::pin(dispatch::transfer(
                    state,
                    user,
                    &conv,
                    to_agent.as_deref(),
                    to_team.as_deref(),
                    note.as_deref(),
                ))
                .await?;
                Ok(empty(req))
            }
            ClientFrame::Close { req, conv } => {
                Box::pin(dispatch::close(state, user, &conv)).await?;
                Ok(empty(req))
            }
            ClientFrame::Rate {
                req,
                conv,
                score,
                comment,
            } => {
                Box::pin(dispatch::rate(
                    state,
                    user,
                    &conv,
                    score,
                    comment.as_deref(),
                ))
                .await?;
                Ok(empty(req))
            }
            ClientFrame::Watch { req, teams } => {
                let snapshot =
                    Box::pin(dispatch::watch(state, user, &self.handle.id, teams)).await?;
                Ok(ok(req, OkBody::Watch(snapshot)))
            }
            ClientFrame::Assign { req, conv, agent } => {
                Box::pin(dispatch::assign(state, user, &conv, &agent)).await?;
                Ok(empty(req))
            }
        }
    }
}

fn reason_of(code: u16) -> &'static str {
    match code {
        close::SLOW_CONSUMER => "slow consumer",
        close::RATE_LIMITED => "rate limit exceeded",
        close::RESTARTING => "server restarting",
        _ => "closing",
    }
}

/// A parse error in words a client developer can act on.
fn describe_parse_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => format!("frame is not valid JSON: {e}"),
        Category::Data => format!("frame does not match the protocol: {e}"),
        Category::Io => "frame could not be read".to_string(),
    }
}

/// Writes `first` and whatever else is queued, then flushes once.
async fn write_batch(ws: &mut Ws, first: Utf8Bytes, outbox: &Outbox) -> Result<usize, WsError> {
    ws.feed(WsMessage::Text(first)).await?;
    let mut n = 1;
    while n < MAX_BATCH {
        match outbox.pop() {
            Some(frame) => {
                ws.feed(WsMessage::Text(frame)).await?;
                n += 1;
            }
            None => break,
        }
    }
    ws.flush().await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future a two-argument async function returns,
    /// without calling it.
    fn future_size<A, B, F: std::future::Future>(_: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn the_long_lived_session_future_stays_small() {
        // Every connection holds this future for its whole life (see `run`):
        // a change that inlines transient work into it shows up here before
        // it shows up as memory per connection.
        // 2,136 bytes in a debug build when this was written (a release
        // build lays it out differently); with the setup inlined, over
        // 5,000.
        let size = future_size(run);
        assert!(size <= 2400, "the session future grew to {size} bytes");
    }
}
