//! The REST API end to end against a real server: login and its errors,
//! refresh-token rotation and family revocation (REST and WebSocket), JWT
//! validation, staff accounts and paging, quick links, uploads and who may
//! read them, groups and conversation history, the operational endpoints, and
//! the OpenAPI document checked against the live router in both directions.
//! Login, refresh and groups also run on PostgreSQL + Redis.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use base64::Engine as _;
use common::{error_code, Backend, Client, Setup, TestServer, ADMIN, ADMIN_PASSWORD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};
use switchboard_protocol::{
    close, ClientFrame, ErrorCode, MessageKind, OkBody, ServerFrame, SyncOk,
};
use switchboard_server::auth::Claims;

/// The message of the router's fallback for unknown `/api/v1/...` routes.
const NO_SUCH_ROUTE: &str = "no such API route";

/// A PNG signature followed by some bytes: enough for the magic-byte check.
fn png_bytes() -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend_from_slice(b"\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0");
    bytes.extend((0u8..=255).cycle().take(300));
    bytes
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn now_ms() -> i64 {
    now_s() * 1000
}

/// Asserts a REST error: status and `{code, message}` with a non-empty message.
#[track_caller]
fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "unexpected status; body {body}");
    assert_eq!(body["code"], want_code, "unexpected body {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {body}"
    );
}

/// POSTs a raw body with the given content type.
async fn post_raw(
    server: &TestServer,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &'static str,
) -> (u16, Value) {
    let mut req = server
        .http
        .post(server.url(path))
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("http request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get_response(server: &TestServer, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = server.http.get(server.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("http request")
}

/// Uploads `bytes` as multipart field `file`.
async fn upload(
    server: &TestServer,
    token: &str,
    bytes: Vec<u8>,
    file_name: &str,
    mime: &str,
) -> (u16, Value) {
    let part = Part::bytes(bytes)
        .file_name(file_name.to_string())
        .mime_str(mime)
        .expect("valid mime");
    upload_form(server, token, Form::new().part("file", part)).await
}

async fn upload_form(server: &TestServer, token: &str, form: Form) -> (u16, Value) {
    let resp = server
        .http
        .post(server.url("/api/v1/uploads"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .expect("upload request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Asserts that a WebSocket `auth` with `token` gets `error unauthorized` and close 4003.
async fn assert_ws_auth_rejected(server: &TestServer, token: &str) {
    let mut c = Client::connect(&server.ws_url()).await;
    let reply = c
        .request(|req| ClientFrame::Auth {
            req,
            token: token.to_string(),
        })
        .await;
    assert_eq!(error_code(&reply), ErrorCode::Unauthorized, "{reply:?}");
    assert_eq!(c.expect_close().await, close::BAD_TOKEN);
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key} in {v}"))
}

// ---------------------------------------------------------------- 1. login

async fn login_answers_tokens_and_uniform_errors(backend: Backend) {
    let s = Setup::new(backend).await;
    let server = &s.server;

    let (status, body) = server
        .post(
            "/api/v1/auth/login",
            None,
            json!({"username": ADMIN, "password": ADMIN_PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(!str_of(&body, "access_token").is_empty());
    assert!(!str_of(&body, "refresh_token").is_empty());
    assert_ne!(body["access_token"], body["refresh_token"]);
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["must_change_password"], false);
    let user = &body["user"];
    assert!(str_of(user, "id").starts_with("u_"), "{user}");
    assert_eq!(user["role"], "admin");
    assert_eq!(user["name"], ADMIN);
    // The token works.
    let (status, me) = server
        .get("/api/v1/me", body["access_token"].as_str())
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["id"], user["id"]);

    // Wrong password and unknown user are indistinguishable.
    let (status, wrong) = server
        .post(
            "/api/v1/auth/login",
            None,
            json!({"username": ADMIN, "password": "not-the-password"}),
        )
        .await;
    assert_error(status, &wrong, 401, "unauthorized");
    let (status, unknown) = server
        .post(
            "/api/v1/auth/login",
            None,
            json!({"username": "nobody-here", "password": ADMIN_PASSWORD}),
        )
        .await;
    assert_error(status, &unknown, 401, "unauthorized");
    assert_eq!(wrong["message"], unknown["message"]);

    // Malformed bodies are JSON errors, not plain-text rejections.
    let (status, body) = post_raw(
        server,
        "/api/v1/auth/login",
        None,
        "application/json",
        "{\"username\": \"admin\", ",
    )
    .await;
    assert_error(status, &body, 400, "bad_request");
    let (status, body) = server
        .post("/api/v1/auth/login", None, json!({"username": ADMIN}))
        .await;
    assert_error(status, &body, 400, "bad_request");
    let (status, body) = post_raw(
        server,
        "/api/v1/auth/login",
        None,
        "text/plain",
        "username=admin",
    )
    .await;
    assert_error(status, &body, 400, "bad_request");
    s.server.stop().await;
}

#[tokio::test]
async fn login_sqlite() {
    login_answers_tokens_and_uniform_errors(Backend::Sqlite).await;
}

#[tokio::test]
async fn login_postgres_redis() {
    login_answers_tokens_and_uniform_errors(Backend::PostgresRedis).await;
}

// ------------------------------------------------------- 2. refresh rotation

async fn refresh(server: &TestServer, refresh_token: &str) -> (u16, Value) {
    server
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": refresh_token}),
        )
        .await
}

async fn refresh_rotates_and_reuse_revokes_the_family(backend: Backend) {
    let s = Setup::new(backend).await;
    let server = &s.server;
    let first = server.login(ADMIN, ADMIN_PASSWORD).await;
    let r1 = str_of(&first, "refresh_token").to_string();

    let (status, second) = refresh(server, &r1).await;
    assert_eq!(status, 200, "{second}");
    let r2 = str_of(&second, "refresh_token").to_string();
    assert_ne!(r2, r1, "the refresh token rotates");
    assert_eq!(second["expires_in"], 900);
    assert_eq!(second["user"], first["user"]);

    // The new refresh token works and rotates again.
    let (status, third) = refresh(server, &r2).await;
    assert_eq!(status, 200, "{third}");
    let r3 = str_of(&third, "refresh_token").to_string();
    let a3 = str_of(&third, "access_token").to_string();
    assert_ne!(r3, r2);
    let (status, _) = server.get("/api/v1/me", Some(&a3)).await;
    assert_eq!(
        status, 200,
        "the family's access token works before the reuse"
    );

    // Reusing the spent first token is refused and revokes the family.
    let (status, body) = refresh(server, &r1).await;
    assert_error(status, &body, 401, "unauthorized");
    let (status, body) = refresh(server, &r3).await;
    assert_error(status, &body, 401, "unauthorized");
    for access in [a3.as_str(), str_of(&first, "access_token")] {
        let (status, body) = server.get("/api/v1/me", Some(access)).await;
        assert_error(status, &body, 401, "unauthorized");
    }
    assert_ws_auth_rejected(server, &a3).await;

    // Another login is another family: unaffected.
    let (status, me) = server.get("/api/v1/me", Some(&s.admin_token)).await;
    assert_eq!(status, 200, "{me}");
    let fresh = server.login(ADMIN, ADMIN_PASSWORD).await;
    let (status, again) = refresh(server, str_of(&fresh, "refresh_token")).await;
    assert_eq!(status, 200, "{again}");
    let mut c = server.client(str_of(&again, "access_token")).await;
    assert_eq!(c.auth.as_ref().unwrap().user.name, ADMIN);
    let pong = c.request(|req| ClientFrame::Ping { req }).await;
    assert!(matches!(pong, ServerFrame::Pong { .. }), "{pong:?}");

    // An unknown refresh token is refused too.
    let (status, body) = refresh(server, "not-a-refresh-token").await;
    assert_error(status, &body, 401, "unauthorized");
    s.server.stop().await;
}

#[tokio::test]
async fn refresh_rotation_sqlite() {
    refresh_rotates_and_reuse_revokes_the_family(Backend::Sqlite).await;
}

#[tokio::test]
async fn refresh_rotation_postgres_redis() {
    refresh_rotates_and_reuse_revokes_the_family(Backend::PostgresRedis).await;
}

// ------------------------------------------------------------- 3. JWT checks

fn sign(claims: &Claims, alg: Algorithm, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret))
        .expect("sign token")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn access_tokens_are_fully_validated() {
    let s = Setup::new(Backend::Sqlite).await;
    let server = &s.server;
    let secret = s.cluster.jwt_secret.as_bytes();

    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&["switchboard"]);
    validation.set_issuer(&["switchboard"]);
    let real = jsonwebtoken::decode::<Claims>(
        &s.admin_token,
        &DecodingKey::from_secret(secret),
        &validation,
    )
    .expect("the login token decodes with the cluster's secret")
    .claims;
    assert_eq!(real.typ, "access");
    assert_eq!(real.exp - real.iat, 900);
    assert!(real.fam.starts_with("f_"), "{real:?}");

    let now = now_s();
    let valid = Claims {
        iat: now,
        exp: now + 600,
        ..real.clone()
    };
    // Control: a token built this way is accepted, so the refusals below are
    // about the one thing each changes.
    let (status, me) = server
        .get("/api/v1/me", Some(&sign(&valid, Algorithm::HS256, secret)))
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["id"], real.sub.as_str());

    let expired = Claims {
        iat: now - 7200,
        exp: now - 3600,
        ..real.clone()
    };
    let expired_token = sign(&expired, Algorithm::HS256, secret);
    let wrong_type = Claims {
        typ: "refresh".into(),
        ..valid.clone()
    };
    let wrong_audience = Claims {
        aud: "someone-else".into(),
        ..valid.clone()
    };
    let wrong_issuer = Claims {
        iss: "someone-else".into(),
        ..valid.clone()
    };
    let unknown_family = Claims {
        fam: "f_not_a_family".into(),
        ..valid.clone()
    };
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(&serde_json::to_vec(&valid).unwrap())
    );
    let cases = [
        (
            "another secret",
            sign(
                &valid,
                Algorithm::HS256,
                b"another-secret-another-secret-xx",
            ),
        ),
        ("expired", expired_token.clone()),
        ("typ refresh", sign(&wrong_type, Algorithm::HS256, secret)),
        ("wrong aud", sign(&wrong_audience, Algorithm::HS256, secret)),
        ("wrong iss", sign(&wrong_issuer, Algorithm::HS256, secret)),
        (
            "unknown fam",
            sign(&unknown_family, Algorithm::HS256, secret),
        ),
        ("HS512", sign(&valid, Algorithm::HS512, secret)),
        ("alg none", alg_none),
        ("garbage", "not.a.jwt".to_string()),
    ];
    for (what, token) in &cases {
        let (status, body) = server.get("/api/v1/me", Some(token)).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["code"], "unauthorized", "{what}: {body}");
    }
    let (_, body) = server.get("/api/v1/me", Some(&expired_token)).await;
    assert!(
        str_of(&body, "message").contains("expired"),
        "an expired token says so: {body}"
    );
    // No header, and a header that is not Bearer.
    let (status, body) = server.get("/api/v1/me", None).await;
    assert_error(status, &body, 401, "unauthorized");
    let resp = server
        .http
        .get(server.url("/api/v1/me"))
        .header("Authorization", format!("Basic {}", b64(b"admin:pw")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // The WebSocket applies the same checks.
    assert_ws_auth_rejected(server, &expired_token).await;
    s.server.stop().await;
}

// ------------------------------------------------------------------ 4. users

#[tokio::test]
async fn admins_create_staff_and_staff_page_through_users() {
    let s = Setup::new(Backend::Sqlite).await;
    let server = &s.server;
    let admin = Some(s.admin_token.as_str());

    let mut created = HashMap::new();
    for (username, role) in [
        ("agent.one", "agent"),
        ("super_1", "supervisor"),
        ("admin-2", "admin"),
    ] {
        let (status, user) = server
            .post(
                "/api/v1/users",
                admin,
                json!({"username": username, "password": format!("{username}-password"),
                       "role": role, "name": format!("{username} 名"),
                       "skills": ["billing"], "max_concurrency": 4}),
            )
            .await;
        assert_eq!(status, 201, "{username}: {user}");
        assert_eq!(user["role"], role);
        assert_eq!(user["username"], username);
        assert_eq!(user["name"], format!("{username} 名"));
        // A bare skill name means level 1; users show skills as objects.
        assert_eq!(user["skills"], json!([{"name": "billing", "level": 1}]));
        assert_eq!(user["max_concurrency"], 4);
        assert_eq!(user["temporary"], false);
        let obj = user.as_object().unwrap();
        for secret in ["password_hash", "password"] {
            assert!(!obj.contains_key(secret), "{secret} leaked: {user}");
        }
        created.insert(username, str_of(&user, "id").to_string());
    }

    let attempt = |username: &str, password: &str, role: &str| json!({"username": username, "password": password, "role": role});
    let (status, body) = server
        .post(
            "/api/v1/users",
            admin,
            attempt("cust", "long-enough-pw", "customer"),
        )
        .await;
    assert_error(status, &body, 400, "bad_request");
    let (status, body) = server
        .post(
            "/api/v1/users",
            admin,
            attempt("agent.one", "long-enough-pw", "agent"),
        )
        .await;
    assert_error(status, &body, 409, "conflict");
    let (status, body) = server
        .post("/api/v1/users", admin, attempt("shorty", "short", "agent"))
        .await;
    assert_error(status, &body, 400, "bad_request");
    let (status, body) = server
        .post(
            "/api/v1/users",
            admin,
            attempt("bad name!", "long-enough-pw", "agent"),
        )
        .await;
    assert_error(status, &body, 400, "bad_request");

    let agent_token = server.token("agent.one", "agent.one-password").await;
    let (status, body) = server
        .post(
            "/api/v1/users",
            Some(&agent_token),
            attempt("sneaky", "long-enough-pw", "admin"),
        )
        .await;
    assert_error(status, &body, 403, "forbidden");
    let (status, body) = server
        .post(
            "/api/v1/users",
            None,
            attempt("sneaky", "long-enough-pw", "admin"),
        )
        .await;
    assert_error(status, &body, 401, "unauthorized");
    let (status, body) = server.get("/api/v1/users", None).await;
    assert_error(status, &body, 401, "unauthorized");

    // A customer exists too; customers may not list users.
    let (customer, customer_token) = server.quick_customer(&agent_token, "李四").await;
    let (status, body) = server.get("/api/v1/users", Some(&customer_token)).await;
    assert_error(status, &body, 403, "forbidden");

    // Walk every page of two: each user exactly once.
    let (_, me) = server.get("/api/v1/me", admin).await;
    let mut expected: BTreeSet<String> = created.values().cloned().collect();
    expected.insert(str_of(&me, "id").to_string());
    expected.insert(customer.clone());
    let mut seen = Vec::new();
    let mut path = "/api/v1/users?limit=2".to_string();
    for _ in 0..10 {
        let (status, page) = server.get(&path, Some(&agent_token)).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2, "{page}");
        seen.extend(items.iter().map(|u| str_of(u, "id").to_string()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/users?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a user appeared twice: {seen:?}");
    assert_eq!(unique, expected);

    let (status, agents) = server
        .get("/api/v1/users?role=agent", Some(&agent_token))
        .await;
    assert_eq!(status, 200, "{agents}");
    let agent_ids: BTreeSet<String> = agents["items"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|u| assert_eq!(u["role"], "agent", "{u}"))
        .map(|u| str_of(u, "id").to_string())
        .collect();
    assert_eq!(agent_ids, BTreeSet::from([created["agent.one"].clone()]));
    assert!(agents["next_cursor"].is_null());
    let (status, customers) = server.get("/api/v1/users?role=customer", admin).await;
    assert_eq!(status, 200);
    assert_eq!(customers["items"].as_array().unwrap().len(), 1);
    assert_eq!(customers["items"][0]["temporary"], true);
    assert!(customers["items"][0].get("username").is_none());

    // Bad query values are JSON errors too.
    let (status, body) = server.get("/api/v1/users?role=boss", admin).await;
    assert_error(status, &body, 400, "bad_request");
    let (status, body) = server.get("/api/v1/users?limit=many", admin).await;
    assert_error(status, &body, 400, "bad_request");
    s.server.stop().await;
}

// ------------------------------------------------------------ 5. quick links

async fn redeem(server: &TestServer, token: &str, name: Option<&str>) -> (u16, Value) {
    let body = match name {
        Some(n) => json!({"token": token, "name": n}),
        None => json!({"token": token}),
    };
    server.post("/api/v1/auth/quick", None, body).await
}

#[tokio::test]
async fn quick_links_register_temporary_customers() {
    let s = Setup::new(Backend::Sqlite).await;
    let server = &s.server;
    let (_, agent_token) = s.staff("agent1", "agent").await;

    let before = now_ms();
    let (status, link) = server
        .post("/api/v1/quick-links", Some(&agent_token), json!({}))
        .await;
    assert_eq!(status, 201, "{link}");
    let token = str_of(&link, "token").to_string();
    assert!(str_of(&link, "id").starts_with("ql_"), "{link}");
    // The token rides in the fragment, which browsers never send to a server.
    assert_eq!(
        str_of(&link, "url"),
        format!("/widget#quick={token}"),
        "{link}"
    );
    let expires_at = link["expires_at"].as_i64().unwrap();
    assert!(expires_at > before + 3600 * 1000, "{link}");

    let (status, pair) = redeem(server, &token, Some("张三")).await;
    assert_eq!(status, 200, "{pair}");
    assert_eq!(pair["user"]["role"], "customer");
    assert_eq!(pair["user"]["name"], "张三");
    let (status, me) = server
        .get("/api/v1/me", pair["access_token"].as_str())
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["temporary"], true);
    assert_eq!(me["name"], "张三");

    // Without a name (or a blank one) the server picks one.
    for name in [None, Some("   ")] {
        let (status, pair) = redeem(server, &token, name).await;
        assert_eq!(status, 200, "{pair}");
        assert!(!str_of(&pair["user"], "name").trim().is_empty(), "{pair}");
        assert_eq!(pair["user"]["role"], "customer");
    }
    // A name too long is refused.
    let (status, body) = redeem(server, &token, Some(&"名".repeat(65))).await;
    assert_error(status, &body, 400, "bad_request");

    // max_uses = 1: one redemption, then 401.
    let (status, once) = server
        .post(
            "/api/v1/quick-links",
            Some(&agent_token),
            json!({"max_uses": 1}),
        )
        .await;
    assert_eq!(status, 201, "{once}");
    let (status, _) = redeem(server, str_of(&once, "token"), Some("王五")).await;
    assert_eq!(status, 200);
    let (status, body) = redeem(server, str_of(&once, "token"), Some("赵六")).await;
    assert_error(status, &body, 401, "unauthorized");

    // ttl_s = 1: works at once, not after it expired.
    let (status, short) = server
        .post(
            "/api/v1/quick-links",
            Some(&agent_token),
            json!({"ttl_s": 1}),
        )
        .await;
    assert_eq!(status, 201, "{short}");
    let (status, _) = redeem(server, str_of(&short, "token"), None).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = redeem(server, str_of(&short, "token"), None).await;
    assert_error(status, &body, 401, "unauthorized");

    // Bad settings, an empty body, customers, strangers and forged tokens.
    for bad in [json!({"ttl_s": 0}), json!({"max_uses": 0})] {
        let (status, body) = server
            .post("/api/v1/quick-links", Some(&agent_token), bad)
            .await;
        assert_error(status, &body, 400, "bad_request");
    }
    let (status, body) = post_raw(
        server,
        "/api/v1/quick-links",
        Some(&agent_token),
        "application/json",
        "",
    )
    .await;
    assert_eq!(status, 201, "an empty body means defaults: {body}");
    let customer_token = str_of(&pair, "access_token");
    let (status, body) = server
        .post("/api/v1/quick-links", Some(customer_token), json!({}))
        .await;
    assert_error(status, &body, 403, "forbidden");
    let (status, body) = server.post("/api/v1/quick-links", None, json!({})).await;
    assert_error(status, &body, 401, "unauthorized");
    let (status, body) = redeem(server, "forged-token", Some("张三")).await;
    assert_error(status, &body, 401, "unauthorized");
    s.server.stop().await;
}

// ---------------------------------------------------------------- 6. uploads

#[tokio::test]
async fn uploads_are_checked_served_and_shared_with_conversation_members() {
    let s = Setup::with(Backend::Sqlite, |c| c.limits.upload_max_bytes = 1024).await;
    let server = &s.server;
    let (agent, agent_token) = s.staff("agent1", "agent").await;

    let png = png_bytes();
    let (status, info) = upload(server, &agent_token, png.clone(), "pic.png", "image/png").await;
    assert_eq!(status, 201, "{info}");
    let id = str_of(&info, "id").to_string();
    assert!(id.starts_with("up_"), "{info}");
    assert_eq!(info["url"], format!("/api/v1/uploads/{id}"));
    assert_eq!(info["mime"], "image/png");
    assert_eq!(info["size"], png.len());
    assert_eq!(info["name"], "pic.png");

    let resp = get_response(server, str_of(&info, "url"), Some(&agent_token)).await;
    assert_eq!(resp.status().as_u16(), 200);
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert_eq!(header(&resp, "content-type"), "image/png");
    assert_eq!(header(&resp, "x-content-type-options"), "nosniff");
    assert!(header(&resp, "content-disposition").starts_with("inline"));
    assert_eq!(resp.bytes().await.unwrap().as_ref(), png.as_slice());

    // A Chinese file name survives in RFC 6266 form.
    let pdf = b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n".to_vec();
    let (status, doc) = upload(
        server,
        &agent_token,
        pdf.clone(),
        "报告.pdf",
        "application/pdf",
    )
    .await;
    assert_eq!(status, 201, "{doc}");
    assert_eq!(doc["name"], "报告.pdf");
    let resp = get_response(server, str_of(&doc, "url"), Some(&agent_token)).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(header(&resp, "content-type"), "application/pdf");
    let disposition = header(&resp, "content-disposition");
    assert!(disposition.starts_with("attachment"), "{disposition}");
    let encoded = disposition
        .split("filename*=UTF-8''")
        .nth(1)
        .unwrap_or_else(|| panic!("no filename*: {disposition}"));
    let decoded: String = url::form_urlencoded::parse(format!("n={encoded}").as_bytes())
        .next()
        .unwrap()
        .1
        .into_owned();
    assert_eq!(decoded, "报告.pdf");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), pdf.as_slice());

    // Refusals.
    let (status, body) = upload(
        server,
        &agent_token,
        b"<script>x</script>".to_vec(),
        "x.png",
        "image/png",
    )
    .await;
    assert_error(status, &body, 400, "bad_request");
    let (status, body) = upload(
        server,
        &agent_token,
        b"MZ\x90\0\x03\0\0\0".to_vec(),
        "setup.exe",
        "application/x-msdownload",
    )
    .await;
    assert_error(status, &body, 400, "bad_request");
    let mut big = png_bytes();
    big.resize(2000, 7);
    let (status, body) = upload(server, &agent_token, big, "big.png", "image/png").await;
    assert_error(status, &body, 413, "too_large");
    // Far beyond the limit: cut off while reading the body, still too_large.
    let mut huge = png_bytes();
    huge.resize(100_000, 7);
    let (status, body) = upload(server, &agent_token, huge, "huge.png", "image/png").await;
    assert_error(status, &body, 413, "too_large");
    let (status, body) =
        upload_form(server, &agent_token, Form::new().text("other", "value")).await;
    assert_error(status, &body, 400, "bad_request");
    let (status, body) = post_raw(
        server,
        "/api/v1/uploads",
        Some(&agent_token),
        "application/json",
        "{}",
    )
    .await;
    assert_error(status, &body, 400, "bad_request");
    let (status, body) = upload_form(server, "", Form::new().text("file", "x")).await;
    assert_error(status, &body, 401, "unauthorized");

    // Visibility: customers see it only once it was sent into their conversation.
    let (c1, c1_token) = server.quick_customer(&agent_token, "客户一").await;
    let (_, c2_token) = server.quick_customer(&agent_token, "客户二").await;
    let (status, body) = server
        .get(&format!("/api/v1/uploads/{id}"), Some(&c1_token))
        .await;
    assert_error(status, &body, 404, "not_found");
    let conv = server
        .create_group(&s.admin_token, "图片群", &[&agent, &c1])
        .await;
    let mut a = server.client(&agent_token).await;
    let reply = a
        .request(|req| ClientFrame::Send {
            req,
            conv: conv.clone(),
            client_msg_id: "img-1".into(),
            kind: MessageKind::Image,
            body: Some("截图".into()),
            attachment: Some(id.clone()),
        })
        .await;
    let ServerFrame::Ok {
        body: OkBody::Sent { msg },
        ..
    } = reply
    else {
        panic!("image send failed: {reply:?}")
    };
    assert_eq!(msg.attachment.as_deref(), Some(id.as_str()));
    let resp = get_response(server, &format!("/api/v1/uploads/{id}"), Some(&c1_token)).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), png.as_slice());
    let (status, body) = server
        .get(&format!("/api/v1/uploads/{id}"), Some(&c2_token))
        .await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = server
        .get("/api/v1/uploads/up_nothing", Some(&agent_token))
        .await;
    assert_error(status, &body, 404, "not_found");

    // A member may not send someone else's upload.
    let mut c = server.client(&c1_token).await;
    let reply = c
        .request(|req| ClientFrame::Send {
            req,
            conv: conv.clone(),
            client_msg_id: "steal-1".into(),
            kind: MessageKind::Image,
            body: None,
            attachment: Some(id.clone()),
        })
        .await;
    assert_eq!(error_code(&reply), ErrorCode::NotFound, "{reply:?}");
    s.server.stop().await;
}

// ----------------------------------------------------------------- 7. groups

fn ids_of(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {page}"))
        .iter()
        .map(|c| str_of(c, "id").to_string())
        .collect()
}

async fn groups_and_conversation_reads(backend: Backend) {
    let s = Setup::new(backend).await;
    let server = &s.server;
    let (agent, agent_token) = s.staff("agent1", "agent").await;
    let (customer, customer_token) = server.quick_customer(&agent_token, "成员客户").await;
    let (_, outsider_token) = server.quick_customer(&agent_token, "路人").await;

    let (status, body) = server
        .post(
            "/api/v1/groups",
            Some(&customer_token),
            json!({"title": "客户的群", "members": [customer]}),
        )
        .await;
    assert_error(status, &body, 403, "forbidden");
    let (status, body) = server
        .post(
            "/api/v1/groups",
            Some(&agent_token),
            json!({"title": "群", "members": [customer, "u_nobody"]}),
        )
        .await;
    assert_error(status, &body, 400, "bad_request");
    assert!(str_of(&body, "message").contains("u_nobody"), "{body}");
    let (status, body) = server
        .post(
            "/api/v1/groups",
            Some(&agent_token),
            json!({"title": "   ", "members": [customer]}),
        )
        .await;
    assert_error(status, &body, 400, "bad_request");
    let (status, body) = server
        .post("/api/v1/groups", Some(&agent_token), json!({"title": "群"}))
        .await;
    assert_error(status, &body, 400, "bad_request");

    let (status, group) = server
        .post(
            "/api/v1/groups",
            Some(&agent_token),
            json!({"title": "售后一群", "members": [customer]}),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    assert_eq!(group["kind"], "group");
    assert_eq!(group["state"], "active");
    assert_eq!(group["title"], "售后一群");
    assert_eq!(group["last_seq"], 0);
    let conv = str_of(&group, "id").to_string();
    let g2 = server
        .create_group(&agent_token, "售后二群", &[&customer])
        .await;
    let g3 = server
        .create_group(&agent_token, "售后三群", &[&customer])
        .await;

    // The customer pages through its conversations: each exactly once.
    let mut seen = Vec::new();
    let mut path = "/api/v1/conversations?limit=2".to_string();
    for _ in 0..5 {
        let (status, page) = server.get(&path, Some(&customer_token)).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(ids_of(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/conversations?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    seen.sort();
    let mut expected = vec![conv.clone(), g2.clone(), g3.clone()];
    expected.sort();
    assert_eq!(seen, expected);
    let (status, page) = server
        .get("/api/v1/conversations", Some(&outsider_token))
        .await;
    assert_eq!(status, 200);
    assert!(ids_of(&page).is_empty(), "{page}");
    let (status, body) = server
        .get("/api/v1/conversations?cursor=-3", Some(&customer_token))
        .await;
    assert_error(status, &body, 400, "bad_request");

    let path = format!("/api/v1/conversations/{conv}");
    let (status, info) = server.get(&path, Some(&customer_token)).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["title"], "售后一群");
    let (status, body) = server.get(&path, Some(&outsider_token)).await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = server
        .get("/api/v1/conversations/cv_nothing", Some(&customer_token))
        .await;
    assert_error(status, &body, 404, "not_found");
    // Admins may look at any conversation.
    let (status, _) = server.get(&path, Some(&s.admin_token)).await;
    assert_eq!(status, 200);

    // History over REST equals the WebSocket sync.
    let mut a = server.client(&agent_token).await;
    for i in 0..4 {
        a.send_text_message(&conv, &format!("m-{i}"), &format!("第 {i} 条"))
            .await;
    }
    let ws_page = a.sync_after(&conv, 0, 50).await;
    assert_eq!(ws_page.messages.len(), 4);
    let (status, rest) = server
        .get(&format!("{path}/messages?after=0"), Some(&customer_token))
        .await;
    assert_eq!(status, 200, "{rest}");
    let rest: SyncOk = serde_json::from_value(rest).expect("a sync page");
    assert_eq!(rest, ws_page);
    let (_, default) = server
        .get(&format!("{path}/messages"), Some(&customer_token))
        .await;
    assert_eq!(serde_json::from_value::<SyncOk>(default).unwrap(), ws_page);
    let (status, partial) = server
        .get(
            &format!("{path}/messages?after=1&limit=2"),
            Some(&customer_token),
        )
        .await;
    assert_eq!(status, 200, "{partial}");
    let partial: SyncOk = serde_json::from_value(partial).unwrap();
    assert_eq!(partial.messages, ws_page.messages[1..3].to_vec());
    assert!(partial.has_more);
    let ws_before = a
        .request(|req| ClientFrame::Sync {
            req,
            conv: conv.clone(),
            after: None,
            before: Some(4),
            limit: Some(2),
        })
        .await;
    let ServerFrame::Ok {
        body: OkBody::Sync(ws_before),
        ..
    } = ws_before
    else {
        panic!("sync before failed: {ws_before:?}")
    };
    let (_, rest_before) = server
        .get(
            &format!("{path}/messages?before=4&limit=2"),
            Some(&customer_token),
        )
        .await;
    assert_eq!(
        serde_json::from_value::<SyncOk>(rest_before).unwrap(),
        ws_before
    );
    assert_eq!(ws_before.messages, ws_page.messages[1..3].to_vec());
    let (status, body) = server
        .get(
            &format!("{path}/messages?after=1&before=3"),
            Some(&customer_token),
        )
        .await;
    assert_error(status, &body, 400, "bad_request");
    let (status, body) = server
        .get(&format!("{path}/messages?after=0"), Some(&outsider_token))
        .await;
    assert_error(status, &body, 404, "not_found");

    // Members and their roles: the creator owns the group.
    let (status, members) = server
        .get(&format!("{path}/members"), Some(&customer_token))
        .await;
    assert_eq!(status, 200, "{members}");
    let roles: HashMap<String, String> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (str_of(m, "user").to_string(), str_of(m, "role").to_string()))
        .collect();
    assert_eq!(
        roles,
        HashMap::from([
            (agent.clone(), "owner".to_string()),
            (customer.clone(), "member".to_string())
        ])
    );
    let (status, body) = server
        .get(&format!("{path}/members"), Some(&outsider_token))
        .await;
    assert_error(status, &body, 404, "not_found");
    s.server.stop().await;
}

#[tokio::test]
async fn groups_sqlite() {
    groups_and_conversation_reads(Backend::Sqlite).await;
}

#[tokio::test]
async fn groups_postgres_redis() {
    groups_and_conversation_reads(Backend::PostgresRedis).await;
}

// ------------------------------------------------ 8. operational endpoints

#[tokio::test]
async fn sms_fallback_health_readiness_and_metrics() {
    let s = Setup::new(Backend::Sqlite).await;
    let server = &s.server;

    for path in ["/api/v1/auth/sms/send", "/api/v1/auth/sms/verify"] {
        let (status, body) = server
            .post(
                path,
                None,
                json!({"phone": "+8613800000000", "code": "123456"}),
            )
            .await;
        assert_error(status, &body, 503, "unavailable");
    }
    for path in [
        "/api/v1/nothing-here",
        "/api/v1/users/u_x/teams",
        "/api/v1/",
        "/api/",
        "/api/v2/users",
    ] {
        let (status, body) = server.get(path, Some(&s.admin_token)).await;
        assert_error(status, &body, 404, "not_found");
        assert!(str_of(&body, "message").contains(NO_SUCH_ROUTE), "{body}");
    }
    let (status, body) = server.post("/api/v1/nothing-here", None, json!({})).await;
    assert_error(status, &body, 404, "not_found");

    let resp = get_response(server, "/healthz", None).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok");
    let (status, ready) = server.get("/readyz", None).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["store"], "ok");
    assert_eq!(ready["bus"], "ok");
    assert_eq!(ready["accepting"], true);
    assert_eq!(ready["node"], "node-a");

    // One connection and one stored message show in the metrics.
    let (group_member, _) = s.staff("agent1", "agent").await;
    let conv = server
        .create_group(&s.admin_token, "指标", &[&group_member])
        .await;
    let mut c = server.client(&s.admin_token).await;
    c.send_text_message(&conv, "metric-1", "你好").await;
    let resp = get_response(server, "/metrics", None).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    let value_of = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in metrics:\n{text}"))
    };
    assert_eq!(value_of("switchboard_connections"), 1.0);
    assert_eq!(value_of("switchboard_messages_stored_total"), 1.0);
    s.server.stop().await;
}

// ---------------------------------------------------------------- 9. OpenAPI

/// Every route of `api.rs`, by hand: the document must name each of them.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/api/openapi.json"),
    ("get", "/ws"),
    ("post", "/api/v1/auth/login"),
    ("post", "/api/v1/auth/refresh"),
    ("post", "/api/v1/auth/quick"),
    ("post", "/api/v1/auth/identity"),
    ("post", "/api/v1/auth/anonymous"),
    ("post", "/api/v1/auth/sms/send"),
    ("post", "/api/v1/auth/sms/verify"),
    ("get", "/api/v1/me"),
    ("post", "/api/v1/users"),
    ("get", "/api/v1/users"),
    ("post", "/api/v1/quick-links"),
    ("post", "/api/v1/uploads"),
    ("get", "/api/v1/uploads/{id}"),
    ("post", "/api/v1/groups"),
    ("get", "/api/v1/conversations"),
    ("get", "/api/v1/conversations/{id}"),
    ("get", "/api/v1/conversations/{id}/messages"),
    ("get", "/api/v1/conversations/{id}/members"),
    ("get", "/api/v1/conversations/{id}/events"),
    ("get", "/api/v1/customers/{id}"),
    ("get", "/api/v1/customers/{id}/conversations"),
    ("post", "/api/v1/teams"),
    ("get", "/api/v1/teams"),
    ("get", "/api/v1/teams/{id}"),
    ("patch", "/api/v1/teams/{id}"),
    ("get", "/api/v1/teams/{id}/members"),
    ("post", "/api/v1/teams/{id}/members"),
    ("delete", "/api/v1/teams/{id}/members/{user}"),
    ("get", "/api/v1/teams/{id}/queue"),
    ("patch", "/api/v1/users/{id}"),
    ("post", "/api/v1/customer-teams"),
    ("get", "/api/v1/customer-teams"),
    ("delete", "/api/v1/customer-teams/{id}"),
    ("get", "/api/v1/assignments"),
    ("post", "/api/v1/assignments"),
    ("post", "/api/v1/groups/{id}/scheduled-messages"),
    ("get", "/api/v1/groups/{id}/scheduled-messages"),
    ("delete", "/api/v1/scheduled-messages/{id}"),
    ("get", "/api/v1/jobs"),
    ("post", "/api/v1/jobs/{id}/retry"),
    ("post", "/api/v1/tickets"),
    ("get", "/api/v1/tickets"),
    ("get", "/api/v1/tickets/{id}"),
    ("patch", "/api/v1/tickets/{id}"),
    ("post", "/api/v1/tickets/{id}/notes"),
    ("post", "/api/v1/conversations/{id}/ticket"),
    ("post", "/api/v1/sla-policies"),
    ("get", "/api/v1/sla-policies"),
    ("post", "/api/v1/ticket-types"),
    ("get", "/api/v1/ticket-types"),
    ("patch", "/api/v1/ticket-types/{id}"),
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every `$ref` in the document, to check that each resolves.
fn collect_refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    out.extend(v.as_str());
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn openapi_document_matches_the_router() {
    let s = Setup::new(Backend::Sqlite).await;
    let server = &s.server;
    let resp = get_response(server, "/api/openapi.json", None).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let doc: Value = serde_json::from_str(&resp.text().await.unwrap())
        .expect("the OpenAPI document is valid JSON");
    assert!(
        str_of(&doc, "openapi").starts_with("3.1."),
        "openapi {}",
        doc["openapi"]
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );

    // The Error schema lists exactly the protocol's error codes.
    let codes: BTreeSet<&str> = doc["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
        .as_array()
        .expect("Error.code enum")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let all = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::RateLimited,
        ErrorCode::TooLarge,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];
    assert_eq!(codes, all.iter().map(|c| c.as_str()).collect());

    // Every reference resolves.
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external $ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
    }

    // Each documented operation exists: no 404 from the fallback, no 405.
    // Without a token, operations that need one answer 401; the others do not.
    let global_security = doc["security"].as_array().is_some_and(|s| !s.is_empty());
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented = BTreeSet::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            documented.insert((method.clone(), path.clone()));
            let what = format!("{} {path}", method.to_uppercase());
            assert!(
                operation["description"]
                    .as_str()
                    .is_some_and(|d| d.contains("**Who:**")),
                "{what}: the description must say who may call it"
            );
            let needs_token = match operation.get("security") {
                Some(sec) => sec.as_array().is_some_and(|s| !s.is_empty()),
                None => global_security,
            };
            let url = server.url(&path.replace("{id}", "dummy_id_0"));
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = server
                .http
                .request(method, url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body("{}")
                .send()
                .await
                .expect("http request");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            assert_ne!(status, 405, "{what}: method not allowed: {body}");
            if status == 404 {
                assert!(
                    operation["responses"].get("404").is_some(),
                    "{what}: 404 is not a documented answer: {body}"
                );
                assert!(
                    !body["message"]
                        .as_str()
                        .unwrap_or_default()
                        .contains(NO_SUCH_ROUTE),
                    "{what}: no such route: {body}"
                );
            }
            if needs_token {
                assert_eq!(status, 401, "{what} without a token: {body}");
                assert!(
                    operation["responses"].get("401").is_some(),
                    "{what}: 401 is not documented"
                );
            } else {
                assert_ne!(status, 401, "{what} is documented as public: {body}");
            }
            if status >= 400 && path.starts_with("/api/v1/") {
                let code = body["code"].as_str().unwrap_or("");
                assert!(
                    operation["responses"].get(status.to_string()).is_some(),
                    "{what}: answered {status} ({code}), which is not documented"
                );
            }
        }
    }

    // And the other way: every route of the router is documented.
    let missing: Vec<String> = ROUTES
        .iter()
        .filter(|(m, p)| !documented.contains(&(m.to_string(), p.to_string())))
        .map(|(m, p)| format!("{} {p}", m.to_uppercase()))
        .collect();
    assert!(
        missing.is_empty(),
        "routes missing from openapi.json: {missing:?}"
    );
    s.server.stop().await;
}
