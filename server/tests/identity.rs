//! Signed customer identity (`POST /api/v1/auth/identity`) against a real
//! server: a valid signature signs the customer in (created once, renamed
//! later, history kept); a wrong signature, a stale or future `ts`, malformed
//! fields and a server without a secret are refused and create nothing.
//! Runs on SQLite and on PostgreSQL + Redis.

mod common;

use common::{Backend, Setup, TestServer};
use serde_json::{json, Value};
use switchboard_protocol::{ClientFrame, OkBody, ServerFrame};
use switchboard_server::auth::identity::sign;
use switchboard_server::config::Secret;

const SECRET: &str = "site-identity-secret-0123456789abcdef";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn signed(id: &str, name: &str, ts: i64) -> Value {
    json!({"id": id, "name": name, "ts": ts, "sig": sign(SECRET.as_bytes(), id, name, ts)})
}

async fn identity(server: &TestServer, body: Value) -> (u16, Value) {
    server.post("/api/v1/auth/identity", None, body).await
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

async fn consult(server: &TestServer, token: &str) -> String {
    let mut c = server.client(token).await;
    let reply = c
        .request(|req| ClientFrame::Consult {
            req,
            team: None,
            topic: None,
            text: Some("我的订单还没到".into()),
        })
        .await;
    match reply {
        ServerFrame::Ok {
            body: OkBody::Consulted { conv },
            ..
        } => conv,
        other => panic!("consult answered {other:?}"),
    }
}

async fn signed_identity_signs_customers_in(backend: Backend) {
    let s = Setup::with(backend, |c| {
        c.widget_identity_secret = Some(Secret::new(SECRET));
    })
    .await;
    let server = &s.server;
    let (status, team) = server
        .post(
            "/api/v1/teams",
            Some(&s.admin_token),
            json!({"name": "售前", "default": true}),
        )
        .await;
    assert_eq!(status, 201, "{team}");

    // Failures first: none of them creates a customer.
    let now = now_ms();
    let mut wrong = signed("cust-42", "张三", now);
    wrong["sig"] = json!(sign(
        b"another-secret-of-at-least-32-chars!",
        "cust-42",
        "张三",
        now
    ));
    let mut tampered = signed("cust-42", "张三", now);
    tampered["name"] = json!("李四");
    let mut zeros = signed("cust-42", "张三", now);
    zeros["sig"] = json!("0".repeat(64));
    for body in [
        wrong,
        tampered,
        zeros,
        signed("cust-42", "张三", now - 11 * 60 * 1000),
        signed("cust-42", "张三", now + 11 * 60 * 1000),
    ] {
        let (status, reply) = identity(server, body.clone()).await;
        assert_error(status, &reply, 401, "unauthorized");
    }
    let long_id = "i".repeat(129);
    let long_name = "名".repeat(65);
    for body in [
        signed("", "张三", now),
        signed(&long_id, "张三", now),
        signed("cust-42", "", now),
        signed("cust-42", "   ", now),
        signed("cust-42", &long_name, now),
        signed("cust\n42", "张三", now),
        signed("cust-42", "张三", 0),
        json!({"id": "cust-42", "name": "张三", "ts": now, "sig": "not-hex"}),
        json!({"id": "cust-42", "name": "张三", "ts": now}),
        json!({"id": "cust-42", "name": "张三", "ts": "yesterday", "sig": "00"}),
    ] {
        let (status, reply) = identity(server, body.clone()).await;
        assert_error(status, &reply, 400, "bad_request");
    }
    assert_eq!(customer_count(&s).await, 0, "a failure created a customer");

    // Valid: a customer (not temporary) with tokens, who can consult.
    // 128 characters of id and a ts a few minutes old are fine.
    let id = format!("cust-{}", "7".repeat(123));
    let (status, first) = identity(server, signed(&id, "张三", now - 5 * 60 * 1000)).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["user"]["role"], "customer");
    assert_eq!(first["user"]["name"], "张三");
    assert!(first["refresh_token"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    assert!(first["expires_in"].as_u64().is_some_and(|n| n > 0));
    let token = first["access_token"].as_str().unwrap();
    let (status, me) = server.get("/api/v1/me", Some(token)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["temporary"], false);
    assert_eq!(me["role"], "customer");
    let conv = consult(server, token).await;

    // Again (a later visit, another name): the same customer, renamed, who
    // sees the earlier conversation.
    let (status, second) = identity(server, signed(&id, "张三丰", now_ms())).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["user"]["id"], first["user"]["id"]);
    assert_eq!(second["user"]["name"], "张三丰");
    let token2 = second["access_token"].as_str().unwrap();
    assert_ne!(token2, token);
    let (status, list) = server.get("/api/v1/conversations", Some(token2)).await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert!(ids.contains(&conv.as_str()), "{list}");
    let (status, me) = server.get("/api/v1/me", Some(token2)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["name"], "张三丰");
    // The refresh token works like a login's.
    let (status, refreshed) = server
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": second["refresh_token"]}),
        )
        .await;
    assert_eq!(status, 200, "{refreshed}");

    // Another site customer is another account.
    let (status, other) = identity(server, signed("cust-43", "李四", now_ms())).await;
    assert_eq!(status, 200, "{other}");
    assert_ne!(other["user"]["id"], first["user"]["id"]);
    assert_eq!(customer_count(&s).await, 2);

    // A disabled customer cannot come back through the site either.
    let user_id = first["user"]["id"].as_str().unwrap();
    let resp = server
        .http
        .patch(server.url(&format!("/api/v1/users/{user_id}")))
        .bearer_auth(&s.admin_token)
        .json(&json!({"disabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (status, reply) = identity(server, signed(&id, "张三", now_ms())).await;
    assert_error(status, &reply, 401, "unauthorized");
    s.server.stop().await;
}

#[tokio::test]
async fn signed_identity_sqlite() {
    signed_identity_signs_customers_in(Backend::Sqlite).await;
}

#[tokio::test]
async fn signed_identity_postgres_redis() {
    signed_identity_signs_customers_in(Backend::PostgresRedis).await;
}

#[tokio::test]
async fn without_a_secret_signed_identity_is_unavailable() {
    let s = Setup::new(Backend::Sqlite).await;
    let (status, reply) = identity(&s.server, signed("cust-42", "张三", now_ms())).await;
    assert_error(status, &reply, 503, "unavailable");
    assert_eq!(customer_count(&s).await, 0);
    s.server.stop().await;
}
