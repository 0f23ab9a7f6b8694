//! Anonymous customers (`POST /api/v1/auth/anonymous`) against a real server:
//! a visitor without a link becomes a temporary customer who connects over
//! WebSocket, consults and is served by an agent; the switch turned off
//! answers 403, the per-address bound 429 with `Retry-After`, bad input 400,
//! and none of those creates a customer. Runs on SQLite and on
//! PostgreSQL + Redis.

mod common;

use common::dispatch::{add_member, assigned_agent, consult_with, create_team, online_staff};
use common::{Backend, Setup, TestServer};
use serde_json::{json, Value};
use switchboard_protocol::ServerFrame;

const ROUTE: &str = "/api/v1/auth/anonymous";

async fn anonymous(server: &TestServer, body: Value) -> (u16, Value) {
    server.post(ROUTE, None, body).await
}

/// POSTs a raw body; returns status, `Retry-After` and the JSON body.
async fn anonymous_raw(
    server: &TestServer,
    content_type: &str,
    body: &str,
) -> (u16, Option<String>, Value) {
    let resp = server
        .http
        .post(server.url(ROUTE))
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body.to_string())
        .send()
        .await
        .expect("http request");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, resp.json().await.unwrap_or(Value::Null))
}

#[track_caller]
fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "unexpected status; body {body}");
    assert_eq!(body["code"], want_code, "unexpected body {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {body}"
    );
}

/// How many customers the server has (as an admin sees them).
async fn customer_count(s: &Setup) -> usize {
    let (status, page) = s
        .server
        .get(
            "/api/v1/users?role=customer&limit=200",
            Some(&s.admin_token),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().unwrap().len()
}

/// The value of one sample of the anonymous-start counter.
async fn started(server: &TestServer, outcome: &str) -> f64 {
    let text = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| {
            l.starts_with("switchboard_anonymous_customers_total")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

async fn anonymous_visitors_chat_with_an_agent(backend: Backend) {
    let s = Setup::new(backend).await;
    let server = &s.server;
    let team = create_team(
        server,
        &s.admin_token,
        json!({"name": "售后服务", "default": true}),
    )
    .await;
    let (agent_id, mut agent) = online_staff(&s, "alice").await;
    add_member(server, &s.admin_token, &team, &agent_id).await;

    // A Chinese name, trimmed; 64 characters are fine; no name or a blank one
    // gets a visitor's name.
    let (status, pair) = anonymous(server, json!({"name": "  王小明 "})).await;
    assert_eq!(status, 200, "{pair}");
    assert_eq!(pair["user"]["role"], "customer");
    assert_eq!(pair["user"]["name"], "王小明");
    assert!(pair["refresh_token"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    assert!(pair["expires_in"].as_u64().is_some_and(|n| n > 0));
    assert_eq!(pair["must_change_password"], false);
    let (status, long) = anonymous(server, json!({"name": "名".repeat(64)})).await;
    assert_eq!(status, 200, "{long}");
    assert_eq!(long["user"]["name"], "名".repeat(64));
    for body in [json!({}), json!({"name": null}), json!({"name": " \t "})] {
        let (status, other) = anonymous(server, body.clone()).await;
        assert_eq!(status, 200, "{body}: {other}");
        let name = other["user"]["name"].as_str().unwrap();
        assert!(name.starts_with("访客"), "{name}");
        assert_eq!(name.chars().count(), 6, "{name}");
    }
    assert_eq!(customer_count(&s).await, 5);
    assert_eq!(started(server, "created").await, 5.0);

    // A temporary customer who connects, consults and is served.
    let token = pair["access_token"].as_str().unwrap();
    let (status, me) = server.get("/api/v1/me", Some(token)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["temporary"], true);
    assert!(me.get("username").is_none_or(Value::is_null), "{me}");
    let mut customer = server.client(token).await;
    let conv = consult_with(&mut customer, None, None, Some("我想查询退款进度")).await;
    assert_eq!(assigned_agent(&mut customer, &conv).await, agent_id);
    // The agent is told and reads the customer's question (sent before the
    // assignment, so it comes by sync).
    assert_eq!(assigned_agent(&mut agent, &conv).await, agent_id);
    let page = agent.sync_after(&conv, 0, 50).await;
    assert!(
        page.messages.iter().any(|m| m.body == "我想查询退款进度"),
        "{:?}",
        page.messages
    );
    let reply = agent
        .send_text_message(&conv, "a1", "您好，正在为您查询")
        .await;
    let got = customer
        .recv_until(|f| matches!(f, ServerFrame::Message { msg } if msg.id == reply.id))
        .await;
    match got {
        ServerFrame::Message { msg } => assert_eq!(msg.body, "您好，正在为您查询"),
        _ => unreachable!(),
    }

    // Its refresh token works like a login's.
    let (status, refreshed) = server
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": pair["refresh_token"]}),
        )
        .await;
    assert_eq!(status, 200, "{refreshed}");
    assert_eq!(refreshed["user"]["id"], pair["user"]["id"]);
    s.server.stop().await;
}

async fn turned_off_anonymous_starts_are_forbidden(backend: Backend) {
    let s = Setup::with(backend, |c| c.limits.anonymous_customers = false).await;
    let server = &s.server;
    for body in [json!({}), json!({"name": "王小明"}), json!({"name": 7})] {
        let (status, reply) = anonymous(server, body).await;
        assert_error(status, &reply, 403, "forbidden");
        assert!(
            reply["message"]
                .as_str()
                .unwrap()
                .contains("anonymous_customers"),
            "{reply}"
        );
    }
    let (status, _, reply) = anonymous_raw(server, "application/json", "not json").await;
    assert_error(status, &reply, 403, "forbidden");
    assert_eq!(
        customer_count(&s).await,
        0,
        "a refused start created a customer"
    );
    // Quick links still work.
    let (_, token) = server.quick_customer(&s.admin_token, "张三").await;
    assert!(!token.is_empty());
    assert_eq!(customer_count(&s).await, 1);
    s.server.stop().await;
}

async fn the_per_address_bound_answers_429(backend: Backend) {
    let s = Setup::with(backend, |c| c.limits.anonymous_per_ip_per_min = 3).await;
    let server = &s.server;
    // Bad requests do not use up the budget.
    for _ in 0..5 {
        let (status, reply) = anonymous(server, json!({"name": "名".repeat(65)})).await;
        assert_error(status, &reply, 400, "bad_request");
    }
    for i in 0..3 {
        let (status, reply) = anonymous(server, json!({"name": format!("访客{i}")})).await;
        assert_eq!(status, 200, "start {i}: {reply}");
    }
    for _ in 0..3 {
        let (status, retry, reply) =
            anonymous_raw(server, "application/json", r#"{"name":"李四"}"#).await;
        assert_error(status, &reply, 429, "rate_limited");
        assert!(
            reply["message"].as_str().unwrap().contains("minute"),
            "{reply}"
        );
        let retry: u64 = retry.expect("Retry-After").parse().unwrap();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
    }
    assert_eq!(
        customer_count(&s).await,
        3,
        "a refused start created a customer"
    );
    assert_eq!(started(server, "created").await, 3.0);
    assert_eq!(started(server, "rate_limited").await, 3.0);
    // Quick links are not counted against it.
    server.quick_customer(&s.admin_token, "张三").await;
    assert_eq!(customer_count(&s).await, 4);
    s.server.stop().await;
}

async fn bad_input_is_refused_and_creates_nothing(backend: Backend) {
    let s = Setup::new(backend).await;
    let server = &s.server;
    for body in [
        json!({"name": "名".repeat(65)}),
        json!({"name": 42}),
        json!({"name": ["王"]}),
        json!("王小明"),
    ] {
        let (status, reply) = anonymous(server, body.clone()).await;
        assert_error(status, &reply, 400, "bad_request");
    }
    for (content_type, body) in [
        ("application/json", "{\"name\": "),
        ("application/json", ""),
        ("text/plain", "{}"),
    ] {
        let (status, _, reply) = anonymous_raw(server, content_type, body).await;
        assert_error(status, &reply, 400, "bad_request");
    }
    assert_eq!(
        customer_count(&s).await,
        0,
        "a refused start created a customer"
    );
    s.server.stop().await;
}

on_both_backends!(
    anonymous_visitors_chat_with_an_agent,
    turned_off_anonymous_starts_are_forbidden,
    the_per_address_bound_answers_429,
    bad_input_is_refused_and_creates_nothing,
);
