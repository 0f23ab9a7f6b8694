//! One WebSocket connection, from `auth` to close.
//!
//! A single task owns the socket and runs one loop over: a close request (slow
//! consumer, idle, shutdown), the outbound queue, the replies of committed
//! sends and inbound frames. Everything sent to the client — replies and events alike —
//! goes through the connection's bounded outbound queue, so ordering is the
//! queue's order; the writer takes whatever is queued and writes it with one
//! flush, which is what lets one connection receive tens of thousands of
//! frames per second without a system call per frame.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use switchboard_protocol::{
    close, AuthOk, ClientFrame, ErrorCode, OkBody, ReqId, ReqOnly, ServerFrame, UserRef,
};

use super::outbox::{CloseRequest, Outbox};
use super::registry::ConnHandle;
use super::writer::Writer;
use crate::auth;
use crate::conversations::messages;
use crate::dispatch;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::util::{new_id, now_ms};

/// A session's socket.
pub type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

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

/// Runs of the loop in one poll before it yields to other tasks. Why 64: a
/// connection that always has work (a flood in and out) still lets the other
/// connections on its worker thread run every few dozen frames.
const MAX_TURNS_PER_POLL: usize = 64;

/// A connection's task, from the upgrade to the end.
///
/// The task's future lives as long as the connection, so its size is memory
/// every idle connection holds. Setting up (the upgrade, the `auth`, reading
/// the user's conversations) and closing are boxed futures that exist only
/// while they run; in between, the task holds [`Serving`] and the
/// registration, nothing else. (An `async fn` over the same steps kept room
/// for its arguments and for every `select!` branch's futures beside the
/// loop's state: 2.6 KiB per connection in a release build, measured,
/// against about 0.6 KiB here.)
pub struct Connection(Phase);

// The size difference is the point: the task holds the large variant
// inline for the connection's life, and the short-lived ones are boxed.
#[allow(clippy::large_enum_variant)]
enum Phase {
    Starting(BoxFuture<'static, Option<(Serving, Unregister)>>),
    Serving(Serving, Unregister),
    Closing(BoxFuture<'static, ()>),
    Done,
}

impl Connection {
    /// The task of a socket hyper is upgrading.
    pub fn start(state: AppState, on_upgrade: OnUpgrade, config: WebSocketConfig) -> Connection {
        Connection(Phase::Starting(Box::pin(async move {
            let ws = finish_upgrade(on_upgrade, config).await?;
            start(state, ws).await
        })))
    }
}

impl Future for Connection {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut self.get_mut().0;
        loop {
            match this {
                Phase::Starting(setup) => match std::task::ready!(setup.poll_unpin(cx)) {
                    Some((serving, registered)) => *this = Phase::Serving(serving, registered),
                    None => {
                        *this = Phase::Done;
                        return Poll::Ready(());
                    }
                },
                Phase::Serving(serving, _) => {
                    let stop = std::task::ready!(serving.poll_unpin(cx));
                    let Phase::Serving(serving, registered) = std::mem::replace(this, Phase::Done)
                    else {
                        unreachable!("matched above");
                    };
                    *this = Phase::Closing(Box::pin(async move {
                        serving.finish(stop).await;
                        // Unregistered once the close is written.
                        drop(registered);
                    }));
                }
                Phase::Closing(close) => {
                    std::task::ready!(close.poll_unpin(cx));
                    *this = Phase::Done;
                    return Poll::Ready(());
                }
                Phase::Done => return Poll::Ready(()),
            }
        }
    }
}

/// The upgraded socket as a WebSocket, once hyper has handed it over.
async fn finish_upgrade(on_upgrade: OnUpgrade, config: WebSocketConfig) -> Option<Ws> {
    match on_upgrade.await {
        Ok(upgraded) => Some(
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await,
        ),
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            None
        }
    }
}

/// Authenticates the connection, registers it and sends the `auth` reply.
async fn start(state: AppState, mut ws: Ws) -> Option<(Serving, Unregister)> {
    let (claims, req) = await_auth(&state, &mut ws).await?;
    let conn_id: Arc<str> = Arc::from(new_id("c_"));
    let span = tracing::info_span!("session", conn = %conn_id, user = %claims.sub);
    let setup = async move {
        let limits = &state.config().limits;
        let outbox = Outbox::new(limits.outbound_queue);
        // Heard from now (the `auth`), so the idle sweep counts from here.
        outbox.heard_at(clock_ms());
        let handle = ConnHandle {
            id: conn_id.clone(),
            user: Arc::from(claims.sub.as_str()),
            outbox: Arc::new(outbox),
        };
        // Registered under the token's user before the store is asked about
        // the session and the conversations: a membership change published
        // meanwhile then reaches this connection's index. Nothing queued
        // reaches the socket before the `auth` reply is queued, so a session
        // the store refuses is unregistered having been told nothing.
        state.registry().register(handle.clone());
        let mut registered = Unregister(state.clone(), conn_id.clone(), None);
        // Shutdown asks the registered connections to close; one that
        // registered after that asks itself.
        if state.shutdown_token().is_cancelled() {
            handle.outbox.request_close(CloseRequest::Restarting);
        }
        let (user, conversations) = match auth::open_session(&state, claims).await {
            Ok(found) => found,
            Err(e) => {
                refuse(&mut ws, req, e).await;
                return None;
            }
        };
        let staff = user.role.is_staff().then(|| user.id.clone());
        registered.2 = staff.clone();
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
            limiter: RateLimiter::new(limits.rate_per_sec, limits.rate_burst, limits.rate_strikes),
            in_flight: None,
            client: Arc::new(Client {
                state: state.clone(),
                user,
                handle,
            }),
        };
        session.client.reply(&welcome);
        if staff.is_some() {
            dispatch::staff_connected(&state, &session.client.user);
        }
        Some((session, ws, registered))
    };
    let (session, ws, registered) = setup.instrument(span.clone()).await?;
    let serving = Serving {
        outbox: session.client.handle.outbox.clone(),
        session,
        ws,
        handling: None,
        writer: Writer::default(),
        span,
    };
    Some((serving, registered))
}

/// Milliseconds on the sessions' clock, which starts at the first call. It is
/// tokio's clock, so a test that pauses time controls it.
pub(crate) fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    Instant::now().saturating_duration_since(epoch).as_millis() as u64
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

/// Waits for the first frame, which must be a valid `auth` with an access
/// token whose signature and claims check out; returns the token's claims and
/// the frame's `req` (the store's checks follow in `start`).
async fn await_auth(state: &AppState, ws: &mut Ws) -> Option<(auth::Claims, Option<ReqId>)> {
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
        return match state.keys().verify_access(&token) {
            Ok(claims) => Some((claims, req)),
            Err(e) => {
                refuse(ws, req, e).await;
                None
            }
        };
    }
}

/// Answers an `auth` the server cannot accept with its error, then closes:
/// with "try again later" when the fault is the server's (the store is down),
/// else with "invalid token".
async fn refuse(ws: &mut Ws, req: Option<ReqId>, e: AppError) {
    e.log();
    let code = e.code();
    let _ = ws.send(text_frame(req, code, e.public_message())).await;
    if code == ErrorCode::Unavailable || code == ErrorCode::Internal {
        close_gracefully(ws, TRY_AGAIN_LATER, "try again later").await;
    } else {
        close_gracefully(ws, close::BAD_TOKEN, "invalid token").await;
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

/// The authenticated client of a connection: who it is and how to reach it.
/// Shared (one `Arc`) with the futures that answer its requests, which
/// outlive the borrow of a loop turn.
struct Client {
    state: AppState,
    user: UserRef,
    handle: ConnHandle,
}

impl Client {
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
}

/// A connection's own state, touched only by its task.
struct Session {
    client: Arc<Client>,
    limiter: RateLimiter,
    /// Replies to sends whose commit is pending, in the order they were sent.
    /// Made at the first send: an empty one allocates its queue's stub.
    in_flight: Option<FuturesOrdered<BoxFuture<'static, ServerFrame>>>,
}

/// How a request is answered.
enum Answer {
    /// Now (`None`: nothing to answer, the frame had no `req`).
    Now(Option<Box<ServerFrame>>),
    /// When the future completes (a send waiting for its commit).
    Later(BoxFuture<'static, ServerFrame>),
}

/// A request being executed: its `req` and its outcome.
type Handling = BoxFuture<'static, (Option<ReqId>, AppResult<Answer>)>;

/// Why the connection loop ended.
enum Stop {
    /// Asked from outside (slow consumer, idle, shutdown).
    Requested(CloseRequest),
    /// We close with this code and reason.
    Close(u16, &'static str),
    /// The client sent its close frame: ours goes back, then the socket ends.
    ClientClosed,
    /// The client went away or the socket failed: nothing to send.
    Gone,
}

/// What the loop does after an inbound frame.
enum Flow {
    Continue,
    Close(u16, &'static str),
}

/// What an inbound text frame became.
enum Inbound {
    Done(Flow),
    /// A request to execute before the next frame is read.
    Execute(Handling),
}

/// The connection's loop, as a future that completes with why it ended.
///
/// Each poll, in this order: a close requested from outside; writing what
/// the outbox holds (a batch of up to [`MAX_BATCH`](super::writer::MAX_BATCH) frames, see [`Writer`];
/// nothing else happens while a batch waits for the socket); the
/// replies of committed sends; the request being executed; then the next
/// inbound frame, unless a request is executing or [`MAX_SENDS_IN_FLIGHT`]
/// sends await their commit (back-pressure). The outbox, the socket and the
/// futures polled each hold the task's waker, so a push, a close request,
/// a frame or a commit wakes it.
struct Serving {
    session: Session,
    /// The session's outbox, held here too so that a poll can read it while
    /// the session is borrowed mutably (instead of a reference count per poll).
    outbox: Arc<Outbox>,
    ws: Ws,
    handling: Option<Handling>,
    writer: Writer,
    span: tracing::Span,
}

impl Future for Serving {
    type Output = Stop;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Stop> {
        let this = self.get_mut();
        // A clone (a reference count, or nothing for a disabled span), since
        // the guard would otherwise borrow `this` across the whole poll.
        let span = this.span.clone();
        let _entered = span.enter();
        let outbox = &this.outbox;
        // Before looking at the queue: a push after the look wakes us.
        outbox.register(cx.waker());
        for _ in 0..MAX_TURNS_PER_POLL {
            // Close requests first: a slow consumer must not be fed more.
            if let Some(why) = outbox.close_requested() {
                return Poll::Ready(Stop::Requested(why));
            }
            let mut progressed = match this.writer.poll_write(cx, &mut this.ws, outbox) {
                Poll::Ready(Ok(0)) => false,
                Poll::Ready(Ok(frames)) => {
                    let metrics = this.session.client.state.metrics();
                    metrics.frames_out.inc_by(frames as u64);
                    true
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Stop::Gone),
                // A stuck socket: wait for it (or for a close request).
                Poll::Pending => return Poll::Pending,
            };
            if let Some(in_flight) = &mut this.session.in_flight {
                while let Poll::Ready(Some(reply)) = in_flight.poll_next_unpin(cx) {
                    this.session.client.reply(&reply);
                    progressed = true;
                }
            }
            if let Some(handling) = &mut this.handling {
                if let Poll::Ready((req, outcome)) = handling.poll_unpin(cx) {
                    this.handling = None;
                    this.session.on_outcome(req, outcome);
                    progressed = true;
                }
            }
            if this.handling.is_none() && this.session.in_flight_len() < MAX_SENDS_IN_FLIGHT {
                if let Poll::Ready(inbound) = this.ws.poll_next_unpin(cx) {
                    progressed = true;
                    outbox.heard_at(clock_ms());
                    let message = match inbound {
                        None => return Poll::Ready(Stop::Gone),
                        Some(Err(e)) if is_too_large(&e) => {
                            return Poll::Ready(Stop::Close(close::TOO_LARGE, "frame too large"))
                        }
                        Some(Err(_)) => return Poll::Ready(Stop::Gone),
                        Some(Ok(message)) => message,
                    };
                    let flow = match message {
                        WsMessage::Text(t) => match this.session.on_text(&t) {
                            Inbound::Done(flow) => flow,
                            Inbound::Execute(handling) => {
                                this.handling = Some(handling);
                                Flow::Continue
                            }
                        },
                        WsMessage::Binary(_) => this.session.on_rejected_frame(
                            None,
                            AppError::bad_request(
                                "binary frames are not supported; send JSON text frames",
                            ),
                        ),
                        WsMessage::Close(_) => return Poll::Ready(Stop::ClientClosed),
                        WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {
                            Flow::Continue
                        }
                    };
                    if let Flow::Close(code, reason) = flow {
                        return Poll::Ready(Stop::Close(code, reason));
                    }
                }
            }
            if !progressed {
                return Poll::Pending;
            }
        }
        // Still busy: let the other tasks on this thread run, then go on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Serving {
    /// Closes the connection the way `stop` says. A request still executing
    /// is finished first (requests are not abandoned half done), then a batch
    /// the socket took only part of: a close frame must not land inside a
    /// frame, so a socket that does not take the batch is dropped instead.
    async fn finish(mut self, mut stop: Stop) {
        let span = self.span.clone();
        async move {
            if let Some(handling) = self.handling.take() {
                let (req, outcome) = handling.await;
                self.session.on_outcome(req, outcome);
            }
            let outbox = self.outbox.clone();
            if self.writer.is_writing() {
                let rest = std::future::poll_fn(|cx| self.writer.poll_finish(cx, &mut self.ws));
                if !matches!(tokio::time::timeout(CLOSE_TIMEOUT, rest).await, Ok(Ok(_))) {
                    stop = Stop::Gone;
                }
            }
            match stop {
                Stop::Requested(CloseRequest::Restarting) => {
                    // Answer the sends already taken, deliver what is queued,
                    // then tell the client to reconnect.
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.drain()).await;
                    if !self.writer.is_writing() {
                        let (code, reason) = CloseRequest::Restarting.close_frame();
                        close_gracefully(&mut self.ws, code, reason).await;
                    }
                }
                Stop::Requested(why) => {
                    outbox.close();
                    let (code, reason) = why.close_frame();
                    tracing::info!(code, reason, "closing connection");
                    close_gracefully(&mut self.ws, code, reason).await;
                }
                Stop::Close(code, reason) => {
                    outbox.close();
                    close_gracefully(&mut self.ws, code, reason).await;
                }
                Stop::ClientClosed => {
                    // Writes our close frame, which tungstenite queued in reply.
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.flush()).await;
                }
                Stop::Gone => {}
            }
            outbox.close();
        }
        .instrument(span)
        .await
    }

    /// Answers the sends in flight and writes everything queued (shutdown).
    async fn drain(&mut self) {
        if let Some(in_flight) = &mut self.session.in_flight {
            while let Some(reply) = in_flight.next().await {
                self.session.client.reply(&reply);
            }
        }
        let client = self.session.client.clone();
        let written = std::future::poll_fn(|cx| loop {
            match std::task::ready!(self
                .writer
                .poll_write(cx, &mut self.ws, &client.handle.outbox))
            {
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(frames) => client.state.metrics().frames_out.inc_by(frames as u64),
                Err(e) => return Poll::Ready(Err(e)),
            }
        });
        let _ = written.await;
    }
}

impl Session {
    fn in_flight_len(&self) -> usize {
        self.in_flight.as_ref().map_or(0, FuturesOrdered::len)
    }

    /// A frame that is counted against the rate limit but cannot be executed.
    fn on_rejected_frame(&mut self, req: Option<ReqId>, error: AppError) -> Flow {
        if let Some(flow) = self.rate_check(req) {
            return flow;
        }
        self.client
            .state
            .metrics()
            .frames_in
            .with_label_values(&["invalid"])
            .inc();
        self.client.reply_error(req, &error);
        Flow::Continue
    }

    /// `Some(flow)` when the rate limit stops this frame.
    fn rate_check(&mut self, req: Option<ReqId>) -> Option<Flow> {
        match self.limiter.check() {
            RateVerdict::Allow => None,
            RateVerdict::Reject => {
                self.client.state.metrics().rate_limited.inc();
                self.client.reply(&ServerFrame::error(
                    req,
                    ErrorCode::RateLimited,
                    "too many frames; slow down",
                ));
                Some(Flow::Continue)
            }
            RateVerdict::Close => {
                self.client.state.metrics().rate_limited.inc();
                Some(Flow::Close(close::RATE_LIMITED, "rate limit exceeded"))
            }
        }
    }

    fn on_text(&mut self, text: &str) -> Inbound {
        let frame = match serde_json::from_str::<ClientFrame>(text) {
            Ok(frame) => frame,
            Err(e) => {
                let req = serde_json::from_str::<ReqOnly>(text)
                    .ok()
                    .and_then(|r| r.req);
                return Inbound::Done(
                    self.on_rejected_frame(req, AppError::bad_request(describe_parse_error(&e))),
                );
            }
        };
        let req = frame.req();
        if let Some(flow) = self.rate_check(req) {
            return Inbound::Done(flow);
        }
        self.client
            .state
            .metrics()
            .frames_in
            .with_label_values(&[frame.type_name()])
            .inc();
        let client = self.client.clone();
        Inbound::Execute(Box::pin(async move {
            let outcome = execute(&client, frame).await;
            (req, outcome)
        }))
    }

    /// Answers a request that finished executing.
    fn on_outcome(&mut self, req: Option<ReqId>, outcome: AppResult<Answer>) {
        match outcome {
            Ok(Answer::Now(Some(reply))) => self.client.reply(&reply),
            Ok(Answer::Now(None)) => {}
            Ok(Answer::Later(reply)) => self
                .in_flight
                .get_or_insert_with(FuturesOrdered::new)
                .push_back(reply),
            Err(e) => self.client.reply_error(req, &e),
        }
    }
}

/// Runs one request.
async fn execute(client: &Client, frame: ClientFrame) -> AppResult<Answer> {
    let state = &client.state;
    let user = &client.user;
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
                messages::prepare_send(state, user, Some(client.handle.id.clone()), input).await?;
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
            let snapshot = Box::pin(dispatch::watch(state, user, &client.handle.id, teams)).await?;
            Ok(ok(req, OkBody::Watch(snapshot)))
        }
        ClientFrame::Assign { req, conv, agent } => {
            Box::pin(dispatch::assign(state, user, &conv, &agent)).await?;
            Ok(empty(req))
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_long_lived_connection_future_stays_small() {
        // Every connection holds this future for its whole life (see
        // `Connection`): a change that inlines transient work into it shows
        // up here before it shows up as memory per connection. 592 bytes in
        // a debug build when this was written, 328 of them the socket; the
        // `async fn` it replaced was 2,136.
        let size = std::mem::size_of::<Connection>();
        assert!(size <= 720, "the connection future grew to {size} bytes");
    }
}
