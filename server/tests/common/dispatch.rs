//! Helpers of the dispatch suites: frames awaited with a deadline, requests
//! that must succeed, consults, teams over REST, and waiting for a
//! conversation to reach a state.

use std::time::Duration;

use serde_json::{json, Value};
use switchboard_protocol::{
    ClientFrame, ConversationInfo, ConversationState, OkBody, PresenceStatus, ServerFrame,
};

use super::{Client, Setup, TestServer, WAIT};

/// Waits for a frame, with a deadline that names what was awaited.
pub async fn expect(
    c: &mut Client,
    what: &str,
    pred: impl FnMut(&ServerFrame) -> bool,
) -> ServerFrame {
    expect_within(c, WAIT, what, pred).await
}

pub async fn expect_within(
    c: &mut Client,
    limit: Duration,
    what: &str,
    pred: impl FnMut(&ServerFrame) -> bool,
) -> ServerFrame {
    tokio::time::timeout(limit, c.recv_until(pred))
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"))
}

pub async fn ok(c: &mut Client, frame: impl FnOnce(Option<u64>) -> ClientFrame) -> OkBody {
    match c.request(frame).await {
        ServerFrame::Ok { body, .. } => body,
        other => panic!("expected ok, got {other:?}"),
    }
}

pub async fn set_presence(c: &mut Client, status: PresenceStatus) {
    ok(c, |req| ClientFrame::Presence { req, status }).await;
}

pub async fn go_online(c: &mut Client) {
    set_presence(c, PresenceStatus::Online).await;
}

pub async fn consult_with(
    c: &mut Client,
    team: Option<&str>,
    topic: Option<&str>,
    text: Option<&str>,
) -> String {
    match ok(c, |req| ClientFrame::Consult {
        req,
        team: team.map(str::to_string),
        topic: topic.map(str::to_string),
        text: text.map(str::to_string),
    })
    .await
    {
        OkBody::Consulted { conv } => conv,
        other => panic!("consult answered {other:?}"),
    }
}

pub async fn consult(c: &mut Client) -> String {
    consult_with(c, None, None, Some("你好，我想咨询")).await
}

/// The conversation's next `conversation` frame that satisfies `pred`,
/// within `limit`.
pub async fn conversation_within(
    c: &mut Client,
    limit: Duration,
    conv: &str,
    what: &str,
    mut pred: impl FnMut(&ConversationInfo) -> bool,
) -> ConversationInfo {
    let f = expect_within(
        c,
        limit,
        what,
        |f| matches!(f, ServerFrame::Conversation { conv: info } if info.id == conv && pred(info)),
    )
    .await;
    match f {
        ServerFrame::Conversation { conv } => conv,
        _ => unreachable!(),
    }
}

/// The conversation's next `conversation` frame that satisfies `pred`.
pub async fn conversation_where(
    c: &mut Client,
    conv: &str,
    what: &str,
    pred: impl FnMut(&ConversationInfo) -> bool,
) -> ConversationInfo {
    conversation_within(c, WAIT, conv, what, pred).await
}

/// The agent a conversation is active with, once the event arrives.
pub async fn assigned_agent(c: &mut Client, conv: &str) -> String {
    conversation_where(c, conv, "assignment", |i| {
        i.state == ConversationState::Active
    })
    .await
    .agent
    .expect("active has an agent")
}

/// Every frame already received plus those arriving until the connection
/// has been quiet for `quiet`.
pub async fn drain_quiet(c: &mut Client, quiet: Duration) -> Vec<ServerFrame> {
    let mut out = std::mem::take(&mut c.backlog);
    while let Ok(f) = tokio::time::timeout(quiet, c.recv()).await {
        out.push(f);
    }
    out
}

/// Creates a team as the admin; returns its id.
pub async fn create_team(server: &TestServer, admin: &str, body: Value) -> String {
    let (status, team) = server.post("/api/v1/teams", Some(admin), body).await;
    assert_eq!(status, 201, "create team: {team}");
    team["id"].as_str().unwrap().to_string()
}

pub async fn add_member(server: &TestServer, admin: &str, team: &str, user: &str) {
    let (status, body) = server
        .post(
            &format!("/api/v1/teams/{team}/members"),
            Some(admin),
            json!({"user": user}),
        )
        .await;
    assert_eq!(status, 200, "add member: {body}");
}

/// PATCHes JSON; returns status and body.
pub async fn patch(server: &TestServer, path: &str, token: &str, body: Value) -> (u16, Value) {
    let resp = server
        .http
        .patch(server.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("http request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The team's live queue as a supervisor sees it over REST.
pub async fn rest_queue(server: &TestServer, token: &str, team: &str) -> Value {
    let (status, q) = server
        .get(&format!("/api/v1/teams/{team}/queue"), Some(token))
        .await;
    assert_eq!(status, 200, "queue: {q}");
    q
}

/// A connected staff member who went online.
pub async fn online_staff(s: &Setup, username: &str) -> (String, Client) {
    let (id, token) = s.staff(username, "agent").await;
    let mut c = s.server.client(&token).await;
    go_online(&mut c).await;
    (id, c)
}

pub async fn customer(s: &Setup, name: &str) -> (String, Client) {
    let (id, token) = s.server.quick_customer(&s.admin_token, name).await;
    (id, s.server.client(&token).await)
}
