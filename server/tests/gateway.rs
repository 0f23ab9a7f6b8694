//! The WebSocket gateway end to end, against a real server over real sockets
//! (SQLite unless a test says otherwise): the auth handshake and its close
//! codes (4001 before auth, 4003 for bad tokens, 1009 for oversize frames),
//! unusable frames answered with `bad_request` on a connection that stays
//! open, the slow-consumer (4008), rate-limit (4029) and idle (1000) closes,
//! the `Origin` check on the upgrade, gapless `seq` under concurrent senders
//! (also on PostgreSQL + Redis), idempotent resends across reconnects, recall,
//! read receipts, typing, membership access rules, send validation, `sync`
//! paging, the `auth` reply's conversation list, and the dispatch frames that
//! this version answers with `unavailable`.
//!
//! Users (the admin included) are seeded straight into the store with a token
//! family and a token signed with the cluster's secret, as a login would leave
//! them, so that no test pays for argon2 hashing; logins are covered elsewhere.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{error_code, Backend, Client, Cluster, Role, Setup, TestServer, ADMIN};
use futures_util::{SinkExt, StreamExt};
use switchboard_protocol::{
    close, AllTeams, ClientFrame, ErrorCode, MessageKind, OkBody, PresenceStatus, ServerFrame,
    SyncOk, WatchTeams,
};
use switchboard_server::auth::{users, TokenKeys};
use switchboard_server::config::Config;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

/// How long "nothing more arrives" is waited for.
const QUIET: Duration = Duration::from_millis(400);

/// A seeded user and an access token of a session of theirs.
#[derive(Debug, Clone)]
struct Member {
    id: String,
    token: String,
    family: String,
}

/// Creates users directly in the store together with a token family, and
/// signs their access tokens with the cluster's secret: the same rows that
/// `auth::start_session` writes on login, without an argon2 hash per user
/// (each costs about half a second of CPU in a debug build).
async fn seed_users(s: &Setup, people: &[(&str, Role)]) -> Vec<Member> {
    seed_into(&s.cluster, people).await
}

async fn seed_into(cluster: &Cluster, people: &[(&str, Role)]) -> Vec<Member> {
    let store = cluster.store().await;
    let keys = TokenKeys::new(cluster.jwt_secret.as_bytes(), 900);
    let mut out = Vec::new();
    for (username, role) in people {
        let user = users::create_user(
            &store,
            users::NewUser {
                username: Some(username.to_string()),
                name: format!("{username} 同学"),
                role: *role,
                password_hash: None,
                temporary: false,
                max_concurrency: None,
                skills: vec![],
            },
        )
        .await
        .expect("seed user");
        let family = switchboard_server::util::new_id("f_");
        sqlx::query("INSERT INTO token_families (id, user_id, created_at) VALUES ($1, $2, $3)")
            .bind(&family)
            .bind(&user.id)
            .bind(switchboard_server::util::now_ms())
            .execute(store.write())
            .await
            .expect("seed token family");
        let token = keys
            .issue_access(&user.id, *role, &family)
            .expect("sign token");
        out.push(Member {
            id: user.id,
            token,
            family,
        });
    }
    store.close().await;
    out
}

/// `Setup::with`, with the admin seeded like [`seed_users`] rather than
/// through a password hash and a login: that pair costs about a second of CPU
/// per test in a debug build, which would dominate this file's wall time.
async fn setup_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Setup {
    let cluster = Cluster::new(backend).await;
    let admin = seed_into(&cluster, &[(ADMIN, Role::Admin)]).await.remove(0);
    let server = cluster.start_with("node-a", tweak).await;
    Setup {
        cluster,
        server,
        admin_token: admin.token,
    }
}

async fn setup(backend: Backend) -> Setup {
    setup_with(backend, |_| {}).await
}

/// A group created by the admin with the given members, each connected once.
struct Group {
    conv: String,
    members: Vec<Member>,
    clients: Vec<Client>,
}

async fn group_of(s: &Setup, people: &[(&str, Role)]) -> Group {
    let members = seed_users(s, people).await;
    let mut clients = Vec::new();
    for m in &members {
        clients.push(s.server.client(&m.token).await);
    }
    let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
    let conv = s
        .server
        .create_group(&s.admin_token, "网关测试群", &ids)
        .await;
    for c in &mut clients {
        c.recv_until(|f| matches!(f, ServerFrame::Conversation { conv: info } if info.id == conv))
            .await;
    }
    Group {
        conv,
        members,
        clients,
    }
}

/// `n` agents named agent1, agent2, …
fn agents(n: usize) -> Vec<(String, Role)> {
    (1..=n)
        .map(|i| (format!("agent{i}"), Role::Agent))
        .collect()
}

fn people(list: &[(String, Role)]) -> Vec<(&str, Role)> {
    list.iter().map(|(n, r)| (n.as_str(), *r)).collect()
}

fn send_frame(
    conv: &str,
    client_msg_id: &str,
    kind: MessageKind,
    body: Option<&str>,
    attachment: Option<&str>,
) -> impl FnOnce(Option<u64>) -> ClientFrame {
    let (conv, client_msg_id) = (conv.to_string(), client_msg_id.to_string());
    let (body, attachment) = (body.map(str::to_string), attachment.map(str::to_string));
    move |req| ClientFrame::Send {
        req,
        conv,
        client_msg_id,
        kind,
        body,
        attachment,
    }
}

fn sync_frame(
    conv: &str,
    after: Option<i64>,
    before: Option<i64>,
    limit: Option<u32>,
) -> impl FnOnce(Option<u64>) -> ClientFrame {
    let conv = conv.to_string();
    move |req| ClientFrame::Sync {
        req,
        conv,
        after,
        before,
        limit,
    }
}

fn read_frame(conv: &str, seq: i64) -> impl FnOnce(Option<u64>) -> ClientFrame {
    let conv = conv.to_string();
    move |req| ClientFrame::Read { req, conv, seq }
}

fn typing_frame(conv: &str) -> impl FnOnce(Option<u64>) -> ClientFrame {
    let conv = conv.to_string();
    move |req| ClientFrame::Typing { req, conv }
}

fn recall_frame(conv: &str, msg_id: &str) -> impl FnOnce(Option<u64>) -> ClientFrame {
    let (conv, msg_id) = (conv.to_string(), msg_id.to_string());
    move |req| ClientFrame::Recall { req, conv, msg_id }
}

/// Panics unless the frame is an `ok`.
fn assert_ok(frame: &ServerFrame) {
    assert!(
        matches!(frame, ServerFrame::Ok { .. }),
        "expected ok, got {frame:?}"
    );
}

fn sync_page(frame: ServerFrame) -> SyncOk {
    match frame {
        ServerFrame::Ok {
            body: OkBody::Sync(page),
            ..
        } => page,
        other => panic!("expected a sync page, got {other:?}"),
    }
}

fn seqs(page: &SyncOk) -> Vec<i64> {
    page.messages.iter().map(|m| m.seq).collect()
}

/// Everything already received plus whatever arrives until the connection has
/// been quiet for [`QUIET`].
async fn collect_quiet(c: &mut Client) -> Vec<ServerFrame> {
    let mut frames = std::mem::take(&mut c.backlog);
    while let Ok(next) = tokio::time::timeout(QUIET, c.ws.next()).await {
        match next {
            Some(Ok(WsMessage::Text(t))) => frames.push(
                serde_json::from_str(&t).unwrap_or_else(|e| panic!("unparseable frame {t}: {e}")),
            ),
            Some(Ok(WsMessage::Close(c))) => panic!("unexpected close: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("websocket error: {e}"),
            None => panic!("connection ended"),
        }
    }
    frames
}

/// [`collect_quiet`] on several connections at once.
async fn quiet_all<const N: usize>(clients: [&mut Client; N]) -> Vec<Vec<ServerFrame>> {
    futures_util::future::join_all(clients.into_iter().map(collect_quiet)).await
}

/// Reads until the server closes; returns the text frames that came first and
/// the close code and reason.
async fn frames_until_close(c: &mut Client) -> (Vec<ServerFrame>, u16, String) {
    let mut frames = std::mem::take(&mut c.backlog);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let next = tokio::time::timeout_at(deadline, c.ws.next())
            .await
            .expect("timed out waiting for the server to close");
        match next {
            Some(Ok(WsMessage::Text(t))) => frames.push(
                serde_json::from_str(&t).unwrap_or_else(|e| panic!("unparseable frame {t}: {e}")),
            ),
            Some(Ok(WsMessage::Close(Some(f)))) => {
                return (frames, u16::from(f.code), f.reason.to_string())
            }
            Some(Ok(WsMessage::Close(None))) => panic!("close frame without a code"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("connection failed without a close frame: {e}"),
            None => panic!("connection ended without a close frame"),
        }
    }
}

/// The value of a metric on `/metrics` (summed over its label sets).
async fn metric(server: &TestServer, name: &str) -> f64 {
    let text = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    let values: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("unparseable metric line {l}"))
        })
        .collect();
    assert!(
        !values.is_empty(),
        "metric {name} missing from /metrics:\n{text}"
    );
    values.iter().sum()
}

// 1.
#[tokio::test]
async fn a_first_frame_other_than_auth_closes_with_4001_and_no_reply() {
    let s = setup(Backend::Sqlite).await;
    let mut c = Client::connect(&s.server.ws_url()).await;
    c.send_text(r#"{"type":"ping","req":1}"#).await;
    let (frames, code, reason) = frames_until_close(&mut c).await;
    assert!(frames.is_empty(), "no reply before auth: {frames:?}");
    assert_eq!(code, close::NOT_AUTHENTICATED);
    assert_eq!(reason, "auth required");

    // Text that does not parse and a binary frame are no better.
    let mut c = Client::connect(&s.server.ws_url()).await;
    c.send_text("hello?").await;
    let (frames, code, _) = frames_until_close(&mut c).await;
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(code, close::NOT_AUTHENTICATED);
    let mut c = Client::connect(&s.server.ws_url()).await;
    c.ws.send(WsMessage::Binary(vec![1u8, 2, 3].into()))
        .await
        .expect("send binary");
    let (frames, code, _) = frames_until_close(&mut c).await;
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(code, close::NOT_AUTHENTICATED);
}

// 2.
#[tokio::test]
async fn no_frame_within_the_auth_timeout_closes_with_4001() {
    let s = setup_with(Backend::Sqlite, |c| c.limits.auth_timeout_s = 1).await;
    let started = Instant::now();
    let mut c = Client::connect(&s.server.ws_url()).await;
    let (frames, code, reason) = frames_until_close(&mut c).await;
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(code, close::NOT_AUTHENTICATED);
    assert_eq!(reason, "auth timeout");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the auth timeout: {:?}",
        started.elapsed()
    );
}

// 3.
#[tokio::test]
async fn bad_tokens_get_unauthorized_then_close_4003() {
    let s = setup(Backend::Sqlite).await;
    let m = seed_users(&s, &[("agent1", Role::Agent)]).await.remove(0);
    // Same user, same live session family, right claims: only the key differs.
    let foreign = TokenKeys::new(b"some-other-deployment-secret-0123456789", 900)
        .issue_access(&m.id, Role::Agent, &m.family)
        .expect("sign");
    for token in ["not-a-jwt", foreign.as_str()] {
        let mut c = Client::connect(&s.server.ws_url()).await;
        c.send_frame(&ClientFrame::Auth {
            req: Some(7),
            token: token.to_string(),
        })
        .await;
        let (frames, code, _) = frames_until_close(&mut c).await;
        assert_eq!(frames.len(), 1, "exactly one reply for {token}: {frames:?}");
        match &frames[0] {
            ServerFrame::Error { req, code, .. } => {
                assert_eq!(*req, Some(7));
                assert_eq!(*code, ErrorCode::Unauthorized);
            }
            other => panic!("expected an error, got {other:?}"),
        }
        assert_eq!(code, close::BAD_TOKEN, "token {token}");
    }
    // The genuine token of that session is accepted: the key was the difference.
    let c = s.server.client(&m.token).await;
    assert_eq!(c.auth.as_ref().unwrap().user.id, m.id);
}

// 3b.
#[tokio::test]
async fn a_revoked_session_or_a_disabled_account_is_refused_with_4003() {
    let s = setup(Backend::Sqlite).await;
    let ms = seed_users(
        &s,
        &[("revoked1", Role::Agent), ("disabled1", Role::Customer)],
    )
    .await;
    let (revoked, disabled) = (&ms[0], &ms[1]);
    let group = s
        .server
        .create_group(
            &s.admin_token,
            "撤销测试",
            &[revoked.id.as_str(), disabled.id.as_str()],
        )
        .await;
    // Someone else stays connected throughout: a refusal must not touch them.
    let mut admin = s.server.client(&s.admin_token).await;
    let store = s.cluster.store().await;
    sqlx::query("UPDATE token_families SET revoked_at = $1 WHERE id = $2")
        .bind(switchboard_server::util::now_ms())
        .bind(&revoked.family)
        .execute(store.write())
        .await
        .expect("revoke family");
    sqlx::query("UPDATE users SET disabled = 1 WHERE id = $1")
        .bind(&disabled.id)
        .execute(store.write())
        .await
        .expect("disable user");
    store.close().await;
    let before = metric(&s.server, "switchboard_connections").await;
    for (m, why) in [
        (revoked, "this session was revoked; sign in again"),
        (disabled, "this account is disabled"),
    ] {
        // The tokens' signatures and claims are still good: only the store
        // knows, and a member of a conversation hears nothing of it.
        let mut c = Client::connect(&s.server.ws_url()).await;
        c.send_frame(&ClientFrame::Auth {
            req: Some(3),
            token: m.token.clone(),
        })
        .await;
        let (frames, code, _) = frames_until_close(&mut c).await;
        assert_eq!(frames.len(), 1, "exactly one reply for {why}: {frames:?}");
        match &frames[0] {
            ServerFrame::Error { req, code, message } => {
                assert_eq!(*req, Some(3));
                assert_eq!(*code, ErrorCode::Unauthorized);
                assert_eq!(message, why);
            }
            other => panic!("expected an error, got {other:?}"),
        }
        assert_eq!(code, close::BAD_TOKEN, "{why}");
    }
    assert_eq!(
        metric(&s.server, "switchboard_connections").await,
        before,
        "a refused connection left the registry"
    );
    admin
        .send_text_message(&group, "still-here", "我还在")
        .await;
}

// 4.
#[tokio::test]
async fn oversize_frames_close_with_1009_before_and_after_auth() {
    let s = setup(Backend::Sqlite).await;
    let padded = |n: usize| format!(r#"{{"type":"ping","req":1,"pad":"{}"}}"#, "x".repeat(n));

    // Just under the 64 KiB limit is fine.
    let mut c = s.server.client(&s.admin_token).await;
    let fits = padded(60_000);
    assert!(fits.len() < 64 * 1024);
    c.send_text(&fits).await;
    assert_eq!(c.reply(1).await, ServerFrame::Pong { req: Some(1) });

    let too_big = padded(70_000);
    assert!(too_big.len() > 64 * 1024);
    c.send_text(&too_big).await;
    assert_eq!(c.expect_close().await, close::TOO_LARGE);

    let mut c = Client::connect(&s.server.ws_url()).await;
    c.send_text(&too_big).await;
    assert_eq!(c.expect_close().await, close::TOO_LARGE);
}

/// The next frame must be `error` `bad_request` with this `req`.
async fn expect_bad_request(c: &mut Client, req: Option<u64>) {
    match c.recv().await {
        ServerFrame::Error {
            req: r,
            code: ErrorCode::BadRequest,
            ..
        } => assert_eq!(r, req),
        other => panic!("expected bad_request with req {req:?}, got {other:?}"),
    }
}

// 5.
#[tokio::test]
async fn unusable_frames_get_bad_request_and_the_connection_stays_usable() {
    let s = setup(Backend::Sqlite).await;
    let mut g = group_of(&s, &[("agent1", Role::Agent)]).await;
    let conv = g.conv.clone();
    let c = &mut g.clients[0];

    c.send_text("this is not json {").await;
    expect_bad_request(c, None).await;
    c.send_text("[1, 2, 3]").await;
    expect_bad_request(c, None).await;
    c.send_text(r#"{"type":"shout","req":11}"#).await;
    expect_bad_request(c, Some(11)).await;
    c.send_text(r#"{"req":12,"conv":"cv_x"}"#).await;
    expect_bad_request(c, Some(12)).await;
    c.send_text(r#"{"type":"sync","req":13,"conv":5}"#).await;
    expect_bad_request(c, Some(13)).await;
    c.send_text(&format!(
        r#"{{"type":"send","req":14,"conv":"{conv}","client_msg_id":"k","kind":"shout","body":"hi"}}"#
    ))
    .await;
    expect_bad_request(c, Some(14)).await;
    // A `req` that is not an integer cannot be echoed.
    c.send_text(r#"{"type":"ping","req":"abc"}"#).await;
    expect_bad_request(c, None).await;
    c.ws.send(WsMessage::Binary(
        br#"{"type":"ping","req":15}"#.to_vec().into(),
    ))
    .await
    .expect("send binary");
    expect_bad_request(c, None).await;

    c.send_text(r#"{"type":"ping","req":16}"#).await;
    assert_eq!(c.recv().await, ServerFrame::Pong { req: Some(16) });
    let msg = c
        .send_text_message(&conv, "after-bad", "仍然可以发送")
        .await;
    assert_eq!(msg.seq, 1, "none of the bad frames stored anything");
}

// 6.
#[tokio::test]
async fn a_reader_that_stops_reading_is_closed_as_a_slow_consumer() {
    const SLOW: &str = "switchboard_slow_consumer_closes_total";
    let s = setup_with(Backend::Sqlite, |c| {
        c.limits.outbound_queue = 16;
        c.limits.rate_per_sec = 100_000;
        c.limits.rate_burst = 100_000;
    })
    .await;
    let mut g = group_of(&s, &[("reader", Role::Agent), ("sender", Role::Agent)]).await;
    let mut sender = g.clients.pop().unwrap();
    let mut reader = g.clients.pop().unwrap();
    assert_eq!(metric(&s.server, SLOW).await, 0.0);

    // ~21 KB of UTF-8 per message, under both the 8000-character body limit
    // and the 64 KiB frame limit. The reader's socket is not polled from here on.
    let body: String = "慢速消费者测试，".chars().cycle().take(7000).collect();
    let mut sent = 0;
    while metric(&s.server, SLOW).await < 1.0 {
        assert!(
            sent < 3000,
            "the reader's queue never overflowed after {sent} messages"
        );
        for _ in 0..10 {
            sender
                .send_text_message(&g.conv, &format!("big-{sent}"), &body)
                .await;
            sent += 1;
        }
    }
    assert!(sent >= 16, "the queue of 16 cannot overflow sooner");

    // The reader resumes: after whatever was already on the wire comes 4008.
    assert_eq!(reader.expect_close().await, close::SLOW_CONSUMER);
    assert!(metric(&s.server, SLOW).await >= 1.0);
    // The sender was not affected.
    let pong = sender.request(|req| ClientFrame::Ping { req }).await;
    assert!(matches!(pong, ServerFrame::Pong { .. }), "{pong:?}");
}

// 7.
#[tokio::test]
async fn flooding_gets_rate_limited_then_closed_with_4029() {
    let s = setup_with(Backend::Sqlite, |c| {
        c.limits.rate_per_sec = 5;
        c.limits.rate_burst = 5;
        c.limits.rate_strikes = 3;
    })
    .await;
    let mut c = s.server.client(&s.admin_token).await;
    // Sends may fail once the server has closed: the close is read below.
    for req in 1..=10u64 {
        let ping = ClientFrame::Ping { req: Some(req) };
        let _ = c.ws.send(WsMessage::Text(ping.to_json().into())).await;
    }
    let mut frames = Vec::new();
    let mut next_req = 11u64;
    let code = loop {
        match tokio::time::timeout(Duration::from_millis(300), c.ws.next()).await {
            Ok(Some(Ok(WsMessage::Text(t)))) => {
                frames.push(serde_json::from_str::<ServerFrame>(&t).expect("frame"))
            }
            Ok(Some(Ok(WsMessage::Close(Some(f))))) => break u16::from(f.code),
            Ok(Some(Ok(_))) => {}
            Ok(other) => panic!("connection ended without a close frame: {other:?}"),
            // Quiet: keep flooding. Sends may fail once the server has closed.
            Err(_) => {
                assert!(next_req < 200, "never closed; got {frames:?}");
                for _ in 0..10 {
                    let ping = ClientFrame::Ping {
                        req: Some(next_req),
                    };
                    next_req += 1;
                    let _ = c.ws.send(WsMessage::Text(ping.to_json().into())).await;
                }
            }
        }
    };
    assert_eq!(code, close::RATE_LIMITED);
    let pongs: Vec<u64> = frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Pong { req } => *req,
            _ => None,
        })
        .collect();
    let limited: Vec<u64> = frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Error {
                req,
                code: ErrorCode::RateLimited,
                ..
            } => Some(req.expect("rate_limited carries the req")),
            _ => None,
        })
        .collect();
    assert!(
        pongs.starts_with(&[1, 2, 3, 4, 5]),
        "the burst of 5 is served: {frames:?}"
    );
    assert!(
        !limited.is_empty(),
        "some pings were rate limited: {frames:?}"
    );
    assert!(
        limited.iter().all(|r| !pongs.contains(r)),
        "a rate-limited frame was also executed: {frames:?}"
    );
    assert!(metric(&s.server, "switchboard_rate_limited_total").await >= 1.0);
}

// 8.
#[tokio::test]
async fn silent_connections_are_closed_and_pinging_ones_stay_open() {
    let s = setup_with(Backend::Sqlite, |c| c.limits.heartbeat_s = 1).await;
    let mut silent = s.server.client(&s.admin_token).await;
    let mut pinging = s.server.client(&s.admin_token).await;
    assert_eq!(silent.auth.as_ref().unwrap().heartbeat_s, 1);

    let silent_side = async {
        let started = Instant::now();
        let (frames, code, reason) = frames_until_close(&mut silent).await;
        (frames, code, reason, started.elapsed())
    };
    let pinging_side = async {
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(4500) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let pong = pinging.request(|req| ClientFrame::Ping { req }).await;
            assert!(matches!(pong, ServerFrame::Pong { .. }), "{pong:?}");
        }
    };
    let ((frames, code, reason, elapsed), ()) = tokio::join!(silent_side, pinging_side);
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(code, close::NORMAL);
    assert_eq!(reason, "idle timeout");
    assert!(
        elapsed >= Duration::from_millis(2500) && elapsed <= Duration::from_secs(8),
        "idle close after {elapsed:?}, expected about 3 × heartbeat_s"
    );
    // Still open past 4 s.
    let pong = pinging.request(|req| ClientFrame::Ping { req }).await;
    assert!(matches!(pong, ServerFrame::Pong { .. }), "{pong:?}");
}

/// Upgrades with an `Origin` header: `Ok(status)` on success, `Err(status)`
/// when the server refused with an HTTP response.
async fn upgrade_with_origin(server: &TestServer, origin: &str) -> Result<u16, u16> {
    let mut request = server.ws_url().into_client_request().expect("request");
    request
        .headers_mut()
        .insert("origin", HeaderValue::from_str(origin).expect("header"));
    match tokio_tungstenite::connect_async(request).await {
        Ok((_ws, response)) => Ok(response.status().as_u16()),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("upgrade failed without an HTTP response: {e}"),
    }
}

// 9.
#[tokio::test]
async fn the_origin_of_an_upgrade_is_checked() {
    let s = setup(Backend::Sqlite).await;
    assert_eq!(
        upgrade_with_origin(&s.server, "https://evil.example").await,
        Err(403)
    );
    let same = format!("http://{}", s.server.addr);
    assert_eq!(upgrade_with_origin(&s.server, &same).await, Ok(101));

    let s = setup_with(Backend::Sqlite, |c| {
        c.allowed_origins = vec!["https://shop.example".into()];
    })
    .await;
    assert_eq!(
        upgrade_with_origin(&s.server, "https://shop.example").await,
        Ok(101)
    );
    assert_eq!(
        upgrade_with_origin(&s.server, "https://evil.example").await,
        Err(403)
    );
}

// 10.
async fn concurrent_senders_get_gapless_seqs(backend: Backend) {
    const MEMBERS: usize = 20;
    const EACH: usize = 10;
    let s = setup(backend).await;
    let names = agents(MEMBERS);
    let g = group_of(&s, &people(&names)).await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(MEMBERS));
    let tasks: Vec<_> = g
        .clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let conv = g.conv.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let mut acked = Vec::new();
                for j in 0..EACH {
                    let m = c
                        .send_text_message(
                            &conv,
                            &format!("m{i}-{j}"),
                            &format!("成员{i}的第{j}条"),
                        )
                        .await;
                    acked.push((m.seq, m.id));
                }
                (c, acked)
            })
        })
        .collect();
    let mut by_seq = BTreeMap::new();
    let mut clients = Vec::new();
    for result in futures_util::future::join_all(tasks).await {
        let (c, acked) = result.expect("sender task");
        for (seq, id) in acked {
            assert!(by_seq.insert(seq, id).is_none(), "seq {seq} acked twice");
        }
        clients.push(c);
    }
    let total = (MEMBERS * EACH) as i64;
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );

    let c = &mut clients[0];
    let mut synced = Vec::new();
    let mut after = 0;
    loop {
        let page = c.sync_after(&g.conv, after, 200).await;
        synced.extend(page.messages.iter().map(|m| (m.seq, m.id.clone())));
        if !page.has_more {
            break;
        }
        after = page.messages.last().expect("a page with has_more").seq;
    }
    assert_eq!(synced, by_seq.into_iter().collect::<Vec<_>>());
    s.server.stop().await;
}

#[tokio::test]
async fn concurrent_senders_get_gapless_seqs_sqlite() {
    concurrent_senders_get_gapless_seqs(Backend::Sqlite).await;
}

#[tokio::test]
async fn concurrent_senders_get_gapless_seqs_postgres_redis() {
    concurrent_senders_get_gapless_seqs(Backend::PostgresRedis).await;
}

// 11.
#[tokio::test]
async fn a_resend_after_reconnecting_returns_the_original_once() {
    let s = setup(Backend::Sqlite).await;
    let g = group_of(&s, &people(&agents(2))).await;
    let mut clients = g.clients.into_iter();
    let (mut a, mut b) = (clients.next().unwrap(), clients.next().unwrap());

    let first = a.send_text_message(&g.conv, "resend-x", "第一次发送").await;
    let ServerFrame::Message { msg } = b
        .recv_until(|f| matches!(f, ServerFrame::Message { .. }))
        .await
    else {
        unreachable!()
    };
    assert_eq!(msg, first);

    a.ws.close(None).await.expect("close");
    drop(a);
    let mut a = s.server.client(&g.members[0].token).await;
    let again = a
        .send_text_message(&g.conv, "resend-x", "重发时正文不同")
        .await;
    assert_eq!(again, first, "same id, seq, ts and body as the original");

    let later = collect_quiet(&mut b).await;
    assert!(
        !later
            .iter()
            .any(|f| matches!(f, ServerFrame::Message { .. })),
        "a second message event: {later:?}"
    );
    let page = b.sync_after(&g.conv, 0, 50).await;
    assert_eq!(page.messages, vec![first]);
}

fn is_recalled(f: &ServerFrame) -> bool {
    matches!(f, ServerFrame::Recalled { .. })
}

// 12.
#[tokio::test]
async fn recall_rules_and_events() {
    let s = setup_with(Backend::Sqlite, |c| c.limits.recall_window_s = 1).await;
    let g = group_of(
        &s,
        &[
            ("agent1", Role::Agent),
            ("agent2", Role::Agent),
            ("super1", Role::Supervisor),
        ],
    )
    .await;
    let conv = g.conv.clone();
    let mut clients = g.clients.into_iter();
    let (mut a, mut b, mut sup) = (
        clients.next().unwrap(),
        clients.next().unwrap(),
        clients.next().unwrap(),
    );

    // The sender recalls within the window: everyone is told.
    let m1 = a.send_text_message(&conv, "r-1", "发错了，马上撤回").await;
    assert_ok(&a.request(recall_frame(&conv, &m1.id)).await);
    for c in [&mut a, &mut b, &mut sup] {
        let f = c
            .recv_until(|f| matches!(f, ServerFrame::Recalled { msg_id, .. } if *msg_id == m1.id))
            .await;
        assert_eq!(
            f,
            ServerFrame::Recalled {
                conv: conv.clone(),
                msg_id: m1.id.clone(),
                seq: 1
            }
        );
    }
    let page = b.sync_after(&conv, 0, 50).await;
    assert_eq!(page.messages.len(), 1);
    let shown = &page.messages[0];
    assert!(shown.recalled);
    assert_eq!(shown.body, "");
    assert_eq!(shown.attachment, None);
    assert_eq!((shown.id.as_str(), shown.seq), (m1.id.as_str(), 1));

    // Another agent may not recall it, even within the window.
    let m2 = a.send_text_message(&conv, "r-2", "这条会过期").await;
    assert_eq!(
        error_code(&b.request(recall_frame(&conv, &m2.id)).await),
        ErrorCode::Forbidden
    );
    // Past the window the sender may not either.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        error_code(&a.request(recall_frame(&conv, &m2.id)).await),
        ErrorCode::Forbidden
    );
    let page = b.sync_after(&conv, 1, 50).await;
    assert_eq!(
        page.messages,
        vec![m2.clone()],
        "the refusals changed nothing"
    );
    for frames in quiet_all([&mut a, &mut b, &mut sup]).await {
        assert!(!frames.iter().any(is_recalled), "{frames:?}");
    }

    // A supervisor may recall anything, at any time.
    assert_ok(&sup.request(recall_frame(&conv, &m2.id)).await);
    let f = b.recv_until(is_recalled).await;
    assert_eq!(
        f,
        ServerFrame::Recalled {
            conv: conv.clone(),
            msg_id: m2.id.clone(),
            seq: 2
        }
    );
    quiet_all([&mut a, &mut b, &mut sup]).await;

    // Recalling again: ok, and nobody hears of it twice.
    assert_ok(&sup.request(recall_frame(&conv, &m2.id)).await);
    assert_ok(&a.request(recall_frame(&conv, &m1.id)).await);
    for frames in quiet_all([&mut a, &mut b, &mut sup]).await {
        assert!(!frames.iter().any(is_recalled), "second event: {frames:?}");
    }
}

fn receipts(frames: &[ServerFrame]) -> Vec<&ServerFrame> {
    frames
        .iter()
        .filter(|f| matches!(f, ServerFrame::Receipt { .. }))
        .collect()
}

// 13.
#[tokio::test]
async fn read_receipts_reach_every_member_connection() {
    let s = setup(Backend::Sqlite).await;
    let g = group_of(&s, &people(&agents(2))).await;
    let conv = g.conv.clone();
    let reader_id = g.members[0].id.clone();
    let mut clients = g.clients.into_iter();
    let (mut a1, mut b) = (clients.next().unwrap(), clients.next().unwrap());
    let mut a2 = s.server.client(&g.members[0].token).await;
    for i in 1..=3 {
        b.send_text_message(&conv, &format!("b-{i}"), &format!("第{i}条"))
            .await;
    }

    assert_ok(&a1.request(read_frame(&conv, 2)).await);
    let expected = ServerFrame::Receipt {
        conv: conv.clone(),
        user: reader_id.clone(),
        seq: 2,
    };
    for frames in quiet_all([&mut a1, &mut a2, &mut b]).await {
        assert_eq!(receipts(&frames), vec![&expected], "{frames:?}");
    }

    // Not forward: ok, no receipt.
    assert_ok(&a1.request(read_frame(&conv, 1)).await);
    assert_ok(&a1.request(read_frame(&conv, 2)).await);
    for frames in quiet_all([&mut a1, &mut a2, &mut b]).await {
        assert!(receipts(&frames).is_empty(), "{frames:?}");
    }

    // Beyond the last message: clamped to it.
    assert_ok(&a1.request(read_frame(&conv, 99)).await);
    let clamped = ServerFrame::Receipt {
        conv: conv.clone(),
        user: reader_id,
        seq: 3,
    };
    for frames in quiet_all([&mut a1, &mut a2, &mut b]).await {
        assert_eq!(receipts(&frames), vec![&clamped], "{frames:?}");
    }
    let a3 = s.server.client(&g.members[0].token).await;
    let listed = a3.auth.as_ref().unwrap().conversations.clone();
    let info = listed.iter().find(|c| c.id == conv).expect("listed");
    assert_eq!((info.last_seq, info.last_read_seq), (3, 3));
}

fn typings(frames: &[ServerFrame]) -> Vec<&ServerFrame> {
    frames
        .iter()
        .filter(|f| matches!(f, ServerFrame::Typing { .. }))
        .collect()
}

// 14.
#[tokio::test]
async fn typing_reaches_other_members_only() {
    let s = setup(Backend::Sqlite).await;
    let g = group_of(&s, &people(&agents(2))).await;
    let conv = g.conv.clone();
    let (a_id, b_id) = (g.members[0].id.clone(), g.members[1].id.clone());
    let mut clients = g.clients.into_iter();
    let (mut a1, mut b) = (clients.next().unwrap(), clients.next().unwrap());
    let mut a2 = s.server.client(&g.members[0].token).await;

    assert_ok(&a1.request(typing_frame(&conv)).await);
    let frames = collect_quiet(&mut b).await;
    assert_eq!(
        typings(&frames),
        vec![&ServerFrame::Typing {
            conv: conv.clone(),
            user: a_id
        }]
    );
    for frames in quiet_all([&mut a1, &mut a2]).await {
        assert!(typings(&frames).is_empty(), "the typer's own: {frames:?}");
    }

    // Without req: no ok, but the others still hear it.
    b.send_frame(&ClientFrame::Typing {
        req: None,
        conv: conv.clone(),
    })
    .await;
    let expected = ServerFrame::Typing {
        conv: conv.clone(),
        user: b_id,
    };
    for frames in quiet_all([&mut a1, &mut a2]).await {
        assert_eq!(frames, vec![expected.clone()]);
    }
    assert_eq!(collect_quiet(&mut b).await, vec![]);
}

// 15.
#[tokio::test]
async fn non_members_cannot_see_a_group() {
    let s = setup(Backend::Sqlite).await;
    let mut g = group_of(&s, &[("agent1", Role::Agent)]).await;
    let conv = g.conv.clone();
    let m = g.clients[0]
        .send_text_message(&conv, "seen", "只有成员能看到")
        .await;

    let (_, customer_token) = s.server.quick_customer(&s.admin_token, "王小明").await;
    let mut cust = s.server.client(&customer_token).await;
    assert!(cust.auth.as_ref().unwrap().conversations.is_empty());
    for target in [conv.as_str(), "cv_00000000000000000000000000000000"] {
        let replies = [
            cust.request(send_frame(
                target,
                "c-1",
                MessageKind::Text,
                Some("你好"),
                None,
            ))
            .await,
            cust.request(sync_frame(target, Some(0), None, None)).await,
            cust.request(read_frame(target, 1)).await,
            cust.request(typing_frame(target)).await,
            cust.request(recall_frame(target, &m.id)).await,
        ];
        for r in &replies {
            assert_eq!(error_code(r), ErrorCode::NotFound, "{target}: {r:?}");
        }
    }

    // A supervisor who is not a member may read, not write, and hears nothing.
    let sup = seed_users(&s, &[("super1", Role::Supervisor)])
        .await
        .remove(0);
    let mut sc = s.server.client(&sup.token).await;
    assert!(sc.auth.as_ref().unwrap().conversations.is_empty());
    let page = sc.sync_after(&conv, 0, 50).await;
    assert_eq!(page.messages, vec![m]);
    assert_eq!(
        error_code(
            &sc.request(send_frame(
                &conv,
                "s-1",
                MessageKind::Text,
                Some("我来说一句"),
                None
            ))
            .await
        ),
        ErrorCode::NotFound
    );
    g.clients[0]
        .send_text_message(&conv, "seen-2", "第二条")
        .await;
    let frames = collect_quiet(&mut sc).await;
    assert!(frames.is_empty(), "oversight gets no events: {frames:?}");
    let page = g.clients[0].sync_after(&conv, 0, 50).await;
    assert_eq!(seqs(&page), vec![1, 2], "the refused frames stored nothing");
}

// 16.
#[tokio::test]
async fn invalid_sends_are_refused_and_store_nothing() {
    let s = setup(Backend::Sqlite).await;
    let mut g = group_of(&s, &[("agent1", Role::Agent)]).await;
    let conv = g.conv.clone();
    let c = &mut g.clients[0];
    let long_id = "k".repeat(200);
    let too_long: String = "字".repeat(8001);
    let cases: Vec<(ErrorCode, ClientFrame)> = vec![
        (
            ErrorCode::Forbidden,
            send_frame(&conv, "v-1", MessageKind::System, Some("系统消息"), None)(Some(1)),
        ),
        (
            ErrorCode::BadRequest,
            send_frame(&conv, "v-2", MessageKind::Text, Some(""), None)(Some(2)),
        ),
        (
            ErrorCode::BadRequest,
            send_frame(&conv, "v-3", MessageKind::Text, Some(" \n\t　"), None)(Some(3)),
        ),
        (
            ErrorCode::BadRequest,
            send_frame(&conv, "v-4", MessageKind::Text, None, None)(Some(4)),
        ),
        (
            ErrorCode::BadRequest,
            send_frame(&conv, "v-5", MessageKind::Text, Some("看图"), Some("up_x"))(Some(5)),
        ),
        (
            ErrorCode::BadRequest,
            send_frame(&conv, "v-6", MessageKind::Image, Some("截图"), None)(Some(6)),
        ),
        (
            ErrorCode::BadRequest,
            send_frame(&conv, &long_id, MessageKind::Text, Some("你好"), None)(Some(7)),
        ),
        (
            ErrorCode::BadRequest,
            send_frame(&conv, "", MessageKind::Text, Some("你好"), None)(Some(8)),
        ),
        (
            ErrorCode::BadRequest,
            send_frame(&conv, "v-9", MessageKind::Text, Some(&too_long), None)(Some(9)),
        ),
    ];
    for (expected, frame) in cases {
        let req = frame.req().unwrap();
        c.send_frame(&frame).await;
        let reply = c.reply(req).await;
        assert_eq!(error_code(&reply), expected, "case {req}: {reply:?}");
    }
    let page = c.sync_after(&conv, 0, 50).await;
    assert!(page.messages.is_empty(), "{:?}", page.messages);

    // 8000 characters (24 000 bytes) is within the limit, and gets seq 1.
    let longest: String = "字".repeat(8000);
    let m = c.send_text_message(&conv, "v-ok", &longest).await;
    assert_eq!(m.seq, 1);
    assert_eq!(m.body.chars().count(), 8000);
}

// 17.
#[tokio::test]
async fn sync_pages_forwards_and_backwards() {
    let s = setup_with(Backend::Sqlite, |c| {
        c.limits.rate_per_sec = 100_000;
        c.limits.rate_burst = 100_000;
    })
    .await;
    let mut g = group_of(&s, &[("agent1", Role::Agent)]).await;
    let conv = g.conv.clone();
    let c = &mut g.clients[0];
    for i in 1..=25 {
        c.send_text_message(&conv, &format!("p-{i}"), &format!("消息 {i}"))
            .await;
    }

    let page = sync_page(c.request(sync_frame(&conv, Some(0), None, Some(10))).await);
    assert_eq!(seqs(&page), (1..=10).collect::<Vec<_>>());
    assert!(page.has_more);
    let page = sync_page(c.request(sync_frame(&conv, None, Some(26), Some(10))).await);
    assert_eq!(seqs(&page), (16..=25).collect::<Vec<_>>());
    assert!(page.has_more);
    let page = sync_page(c.request(sync_frame(&conv, None, Some(3), Some(10))).await);
    assert_eq!(seqs(&page), vec![1, 2]);
    assert!(!page.has_more);
    let page = sync_page(c.request(sync_frame(&conv, Some(20), None, Some(10))).await);
    assert_eq!(seqs(&page), (21..=25).collect::<Vec<_>>());
    assert!(!page.has_more);

    for (after, before, limit) in [
        (Some(0), Some(10), Some(10)),
        (Some(0), None, Some(0)),
        (Some(-1), None, None),
    ] {
        let r = c.request(sync_frame(&conv, after, before, limit)).await;
        assert_eq!(
            error_code(&r),
            ErrorCode::BadRequest,
            "{after:?} {before:?} {limit:?}"
        );
    }

    // A limit over 200 is clamped to 200: visible once there are more than 200.
    for i in 26..=201 {
        c.send_text_message(&conv, &format!("p-{i}"), &format!("消息 {i}"))
            .await;
    }
    let page = sync_page(
        c.request(sync_frame(&conv, Some(0), None, Some(1000)))
            .await,
    );
    assert_eq!(seqs(&page), (1..=200).collect::<Vec<_>>());
    assert!(page.has_more);
    // Neither after nor before: from the beginning, 50 by default.
    let page = sync_page(c.request(sync_frame(&conv, None, None, None)).await);
    assert_eq!(seqs(&page), (1..=50).collect::<Vec<_>>());
    assert!(page.has_more);
}

// 18.
#[tokio::test]
async fn the_auth_reply_lists_open_conversations_and_auth_is_once() {
    let s = setup(Backend::Sqlite).await;
    let ms = seed_users(&s, &people(&agents(2))).await;
    let (a, b) = (&ms[0], &ms[1]);
    let g1 = s
        .server
        .create_group(&s.admin_token, "一组", &[a.id.as_str()])
        .await;
    let g2 = s
        .server
        .create_group(&s.admin_token, "二组", &[a.id.as_str()])
        .await;
    let g3 = s
        .server
        .create_group(&s.admin_token, "已关闭", &[a.id.as_str()])
        .await;
    let other = s
        .server
        .create_group(&s.admin_token, "别人的", &[b.id.as_str()])
        .await;

    let mut a1 = s.server.client(&a.token).await;
    for i in 1..=3 {
        a1.send_text_message(&g1, &format!("g1-{i}"), "一组消息")
            .await;
    }
    // Apart in time, so the reply's order (newest activity first) is defined.
    tokio::time::sleep(Duration::from_millis(5)).await;
    a1.send_text_message(&g2, "g2-1", "二组消息").await;
    a1.send_text_message(&g3, "g3-1", "关闭前").await;
    assert_ok(&a1.request(read_frame(&g1, 2)).await);
    // No REST route closes a group in this version: close it in the store.
    let store = s.cluster.store().await;
    sqlx::query("UPDATE conversations SET state = 'closed' WHERE id = $1")
        .bind(&g3)
        .execute(store.write())
        .await
        .expect("close group");
    store.close().await;

    let mut a2 = s.server.client(&a.token).await;
    let ok = a2.auth.clone().unwrap();
    assert_eq!(ok.user.id, a.id);
    assert_eq!(ok.heartbeat_s, 25);
    assert!(ok.connection.starts_with("c_"));
    let listed: BTreeMap<&str, (i64, i64, Option<&str>)> = ok
        .conversations
        .iter()
        .map(|c| {
            (
                c.id.as_str(),
                (c.last_seq, c.last_read_seq, c.title.as_deref()),
            )
        })
        .collect();
    let expected: BTreeMap<&str, (i64, i64, Option<&str>)> = [
        (g1.as_str(), (3, 2, Some("一组"))),
        (g2.as_str(), (1, 0, Some("二组"))),
    ]
    .into();
    assert_eq!(listed, expected, "neither {g3} (closed) nor {other}");
    // Newest activity first: g2 had the later message.
    let order: Vec<&str> = ok.conversations.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(order, [g2.as_str(), g1.as_str()], "the auth reply's order");

    // A second auth, even with another user's token, changes nothing.
    let r = a2
        .request(|req| ClientFrame::Auth {
            req,
            token: b.token.clone(),
        })
        .await;
    assert_eq!(error_code(&r), ErrorCode::BadRequest);
    let pong = a2.request(|req| ClientFrame::Ping { req }).await;
    assert!(matches!(pong, ServerFrame::Pong { .. }), "{pong:?}");
    let m = a2
        .send_text_message(&g1, "after-second-auth", "还是我")
        .await;
    assert_eq!(m.sender.id, a.id);
    assert_eq!(m.seq, 4);
}

// 19.
#[tokio::test]
/// Dispatch frames that make no sense for this caller or conversation (an
/// agent consulting, a group treated as a service conversation, an agent
/// watching) are refused with a precise code, store nothing, and leave the
/// connection working.
async fn misdirected_dispatch_frames_are_refused_cleanly() {
    let s = setup(Backend::Sqlite).await;
    let mut g = group_of(&s, &[("agent1", Role::Agent)]).await;
    let conv = g.conv.clone();
    let agent = g.members[0].id.clone();
    let c = &mut g.clients[0];
    let frames: Vec<Box<dyn FnOnce(Option<u64>) -> ClientFrame>> = vec![
        Box::new(|req| ClientFrame::Consult {
            req,
            team: None,
            topic: Some("refund".into()),
            text: Some("我想查询一下退款进度".into()),
        }),
        Box::new(|req| ClientFrame::Presence {
            req,
            status: PresenceStatus::Busy,
        }),
        Box::new({
            let conv = conv.clone();
            move |req| ClientFrame::Accept { req, conv }
        }),
        Box::new({
            let (conv, agent) = (conv.clone(), agent.clone());
            move |req| ClientFrame::Transfer {
                req,
                conv,
                to_agent: Some(agent),
                to_team: None,
                note: Some("请跟进".into()),
            }
        }),
        Box::new({
            let conv = conv.clone();
            move |req| ClientFrame::Close { req, conv }
        }),
        Box::new({
            let conv = conv.clone();
            move |req| ClientFrame::Rate {
                req,
                conv,
                score: 5,
                comment: Some("很好".into()),
            }
        }),
        Box::new(|req| ClientFrame::Watch {
            req,
            teams: WatchTeams::All(AllTeams::All),
        }),
        Box::new({
            let conv = conv.clone();
            move |req| ClientFrame::Assign { req, conv, agent }
        }),
    ];
    use ErrorCode::{BadRequest, Forbidden};
    let expected = [
        Some(Forbidden),  // consult: customers only
        None,             // presence: staff may
        Some(BadRequest), // accept: a group is not a service conversation
        Some(BadRequest), // transfer
        Some(BadRequest), // close
        Some(BadRequest), // rate
        Some(Forbidden),  // watch: supervisors only
        Some(Forbidden),  // assign: supervisors only
    ];
    for (build, want) in frames.into_iter().zip(expected) {
        let r = c.request(build).await;
        match want {
            None => assert!(matches!(r, ServerFrame::Ok { .. }), "{r:?}"),
            Some(code) => assert_eq!(error_code(&r), code, "{r:?}"),
        }
    }
    // Field types are checked.
    c.send_text(r#"{"type":"watch","req":90,"teams":"some"}"#)
        .await;
    assert_eq!(error_code(&c.reply(90).await), ErrorCode::BadRequest);

    let pong = c.request(|req| ClientFrame::Ping { req }).await;
    assert!(matches!(pong, ServerFrame::Pong { .. }), "{pong:?}");
    let m = c
        .send_text_message(&conv, "after-dispatch", "照常工作")
        .await;
    assert_eq!(m.seq, 1, "the refused dispatch frames stored nothing");
}

/// A client that pipelines sends (does not wait for each ack) gets every ack,
/// in the order it sent, with `seq` in send order; the other member receives
/// the messages in `seq` order; a resend inside the pipeline is still one message.
#[tokio::test]
async fn pipelined_sends_are_acked_in_order_and_stored_in_send_order() {
    let s = setup_with(Backend::Sqlite, |c| {
        c.limits.rate_per_sec = 100_000;
        c.limits.rate_burst = 100_000;
    })
    .await;
    let mut g = group_of(&s, &people(&agents(2))).await;
    let conv = g.conv.clone();
    let (sender, rest) = g.clients.split_first_mut().unwrap();
    let receiver = &mut rest[0];

    let n = 300u64;
    for i in 0..n {
        // Every 50th frame repeats the previous client_msg_id.
        let id = if i % 50 == 49 { i - 1 } else { i };
        sender
            .send_frame(&ClientFrame::Send {
                req: Some(1000 + i),
                conv: conv.clone(),
                client_msg_id: format!("p-{id}"),
                kind: MessageKind::Text,
                body: Some(format!("流水线 {id}")),
                attachment: None,
            })
            .await;
    }
    let mut acks = Vec::new();
    while acks.len() < n as usize {
        match sender.recv().await {
            ServerFrame::Ok {
                req: Some(req),
                body: OkBody::Sent { msg },
            } => acks.push((req, msg)),
            ServerFrame::Message { .. } => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
    let reqs: Vec<u64> = acks.iter().map(|(r, _)| *r).collect();
    assert_eq!(
        reqs,
        (1000..1000 + n).collect::<Vec<_>>(),
        "acks in send order"
    );
    let mut last = 0;
    for (req, msg) in &acks {
        let i = req - 1000;
        if i % 50 == 49 {
            assert_eq!(
                msg.client_msg_id.as_deref(),
                Some(format!("p-{}", i - 1).as_str())
            );
            assert_eq!(msg.seq, last, "a repeat answers with the original");
        } else {
            assert_eq!(msg.seq, last + 1, "seq follows send order");
            last = msg.seq;
        }
    }
    let unique = n - n / 50;
    assert_eq!(last, unique as i64);

    let mut seen = Vec::new();
    while seen.len() < unique as usize {
        if let ServerFrame::Message { msg } = receiver.recv().await {
            seen.push(msg.seq);
        }
    }
    assert_eq!(
        seen,
        (1..=unique as i64).collect::<Vec<_>>(),
        "delivered in seq order, once"
    );
    receiver.expect_silence(Duration::from_millis(200)).await;
}
