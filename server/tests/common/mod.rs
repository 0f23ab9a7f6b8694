//! Shared helpers of the integration tests: start real servers on port 0 over a
//! real SQLite file or a fresh PostgreSQL database (with Redis), log in over
//! REST, and speak the protocol with real tokio-tungstenite clients.
//!
//! PostgreSQL and Redis come from `TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and `TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`). When they are unreachable the tests fail with a
//! message saying so; they never skip.

#![allow(dead_code, unreachable_pub)]

pub mod dispatch;

/// Generates `sqlite::name` and `postgres_redis::name` tests that call the
/// file's `async fn name(backend: Backend)` once per backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::PostgresRedis).await;
                }
            )*
        }
    };
}

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_protocol::{AuthOk, ClientFrame, OkBody, ServerFrame};
use switchboard_server::auth::{passwords, users};
use switchboard_server::bus::local::LocalNetwork;
use switchboard_server::config::{Config, Secret, ServiceUrl};
use switchboard_server::store::Store;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub use switchboard_protocol::Role;

/// How long a test waits for an expected frame before failing. A deadline,
/// not a timing assertion: a passing test returns as soon as the frame
/// arrives. Generous because CI runs the suites in parallel on two shared
/// cores, where a debug build serving 200 clients on two nodes has been seen
/// to take over 10 s for one step.
pub const WAIT: Duration = Duration::from_secs(30);

pub const ADMIN: &str = "admin";
pub const ADMIN_PASSWORD: &str = "admin-password-1";

/// Which store and bus a test server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temporary directory, in-process bus.
    Sqlite,
    /// A fresh PostgreSQL database and Redis with a unique channel prefix.
    PostgresRedis,
}

pub fn test_database_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn test_redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        uuid::Uuid::now_v7().simple().to_string()[16..].to_ascii_lowercase()
    )
}

/// Creates a fresh PostgreSQL database and returns its URL. Panics, naming
/// the URL, when PostgreSQL cannot be reached.
pub async fn fresh_postgres_database() -> String {
    let admin_url = test_database_admin_url();
    let name = unique("sbtest");
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin_url)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is required for this test and is not reachable at {admin_url}: {e}. Run scripts/test, which starts it.")
        });
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .expect("database URL with a path");
    format!("{base}/{name}")
}

/// Fails loudly when Redis is unreachable.
pub async fn require_redis() -> String {
    let url = test_redis_url();
    let client = redis::Client::open(url.as_str()).expect("valid TEST_REDIS_URL");
    let mut conn = tokio::time::timeout(
        Duration::from_secs(3),
        client.get_multiplexed_async_connection(),
    )
    .await
    .unwrap_or_else(|_| panic!("Redis is required and timed out at {url}"))
    .unwrap_or_else(|e| {
        panic!("Redis is required for this test and is not reachable at {url}: {e}. Run scripts/test, which starts it.")
    });
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("redis PING");
    assert_eq!(pong, "PONG");
    url
}

/// Where a cluster of test servers keeps its data.
pub struct Cluster {
    pub backend: Backend,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    pub jwt_secret: String,
    pub network: LocalNetwork,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn new(backend: Backend) -> Cluster {
        let (database_url, redis_url) = match backend {
            Backend::Sqlite => (None, None),
            Backend::PostgresRedis => (
                Some(fresh_postgres_database().await),
                Some(require_redis().await),
            ),
        };
        Cluster {
            backend,
            database_url,
            redis_url,
            redis_prefix: unique("sbtest"),
            jwt_secret: format!("test-secret-{}", "x".repeat(32)),
            network: LocalNetwork::new(),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The configuration of one node; `tweak` adjusts it per test.
    pub fn config(&self, node: &str) -> Config {
        let mut c = Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            data_dir: self.dir.path().to_path_buf(),
            database_url: self.database_url.clone().map(ServiceUrl::new),
            redis_url: self.redis_url.clone().map(ServiceUrl::new),
            redis_prefix: self.redis_prefix.clone(),
            jwt_secret: Some(Secret::new(self.jwt_secret.clone())),
            node_id: Some(node.to_string()),
            ..Config::default()
        };
        c.limits.shutdown_drain_s = 3;
        c
    }

    /// Opens the cluster's store directly (to seed users).
    pub async fn store(&self) -> Store {
        let store = Store::open(&self.config("seed")).await.expect("open store");
        store.migrate().await.expect("migrate");
        store
    }

    /// Creates a staff user directly in the store, like `switchboard user create`.
    pub async fn seed_user(&self, username: &str, password: &str, role: Role) -> users::User {
        let store = self.store().await;
        let user = users::create_user(
            &store,
            users::NewUser {
                username: Some(username.into()),
                name: username.into(),
                role,
                password_hash: Some(passwords::hash(password).await.unwrap()),
                temporary: false,
                max_concurrency: None,
                skills: vec![],
            },
        )
        .await
        .expect("seed user");
        store.close().await;
        user
    }

    /// Starts a node with the default test configuration.
    pub async fn start(&self, node: &str) -> TestServer {
        self.start_with(node, |_| {}).await
    }

    /// Starts a node after `tweak` adjusted its configuration.
    pub async fn start_with(&self, node: &str, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = self.config(node);
        tweak(&mut config);
        TestServer::start(config, self.network.clone()).await
    }
}

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<Result<(), switchboard_server::ServerError>>>,
    pub http: reqwest::Client,
}

impl TestServer {
    pub async fn start(config: Config, network: LocalNetwork) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(switchboard_server::run_on(
            config,
            listener,
            shutdown.clone(),
            network,
        ));
        let http = reqwest::Client::new();
        let server = TestServer {
            addr,
            shutdown,
            task: Some(task),
            http,
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(r) = self.http.get(self.url("/readyz")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server at {} never became ready",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Stops the server and waits for it to finish draining.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("server stops within its drain timeout")
                .expect("server task")
                .expect("server result");
        }
    }

    /// POSTs JSON with an optional bearer token; returns status and body.
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.http.post(self.url(path)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("http request");
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// GETs with an optional bearer token; returns status and JSON body.
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("http request");
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Logs in; returns the whole token reply.
    pub async fn login(&self, username: &str, password: &str) -> Value {
        let (status, body) = self
            .post(
                "/api/v1/auth/login",
                None,
                json!({"username": username, "password": password}),
            )
            .await;
        assert_eq!(status, 200, "login {username}: {body}");
        body
    }

    /// Logs in and returns the access token.
    pub async fn token(&self, username: &str, password: &str) -> String {
        self.login(username, password).await["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Creates a staff user as the admin; returns its id.
    pub async fn create_staff(&self, admin_token: &str, username: &str, role: &str) -> String {
        let (status, body) = self
            .post(
                "/api/v1/users",
                Some(admin_token),
                json!({"username": username, "password": format!("{username}-password"), "role": role, "name": username}),
            )
            .await;
        assert_eq!(status, 201, "create {username}: {body}");
        body["id"].as_str().unwrap().to_string()
    }

    /// A new temporary customer through a quick link; returns (id, access token).
    pub async fn quick_customer(&self, staff_token: &str, name: &str) -> (String, String) {
        let (status, link) = self
            .post("/api/v1/quick-links", Some(staff_token), json!({}))
            .await;
        assert_eq!(status, 201, "quick link: {link}");
        let (status, tokens) = self
            .post(
                "/api/v1/auth/quick",
                None,
                json!({"token": link["token"], "name": name}),
            )
            .await;
        assert_eq!(status, 200, "quick register: {tokens}");
        (
            tokens["user"]["id"].as_str().unwrap().to_string(),
            tokens["access_token"].as_str().unwrap().to_string(),
        )
    }

    /// Creates a group as a staff member; returns the conversation id.
    pub async fn create_group(&self, staff_token: &str, title: &str, members: &[&str]) -> String {
        let (status, body) = self
            .post(
                "/api/v1/groups",
                Some(staff_token),
                json!({"title": title, "members": members}),
            )
            .await;
        assert_eq!(status, 201, "create group: {body}");
        body["id"].as_str().unwrap().to_string()
    }

    /// Connects and authenticates.
    pub async fn client(&self, token: &str) -> Client {
        let mut c = Client::connect(&self.ws_url()).await;
        c.auth(token).await;
        c
    }
}

/// An admin ready to work: a cluster, one running server and the admin's token.
pub struct Setup {
    pub cluster: Cluster,
    pub server: TestServer,
    pub admin_token: String,
}

impl Setup {
    pub async fn new(backend: Backend) -> Setup {
        Setup::with(backend, |_| {}).await
    }

    pub async fn with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Setup {
        let cluster = Cluster::new(backend).await;
        cluster.seed_user(ADMIN, ADMIN_PASSWORD, Role::Admin).await;
        let server = cluster.start_with("node-a", tweak).await;
        let admin_token = server.token(ADMIN, ADMIN_PASSWORD).await;
        Setup {
            cluster,
            server,
            admin_token,
        }
    }

    /// A staff user and its token.
    pub async fn staff(&self, username: &str, role: &str) -> (String, String) {
        let id = self
            .server
            .create_staff(&self.admin_token, username, role)
            .await;
        let token = self
            .server
            .token(username, &format!("{username}-password"))
            .await;
        (id, token)
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol client over a real WebSocket.
pub struct Client {
    pub ws: Socket,
    next_req: u64,
    pub auth: Option<AuthOk>,
    /// Frames received while waiting for something else.
    pub backlog: Vec<ServerFrame>,
}

impl Client {
    /// Opens the WebSocket without authenticating.
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connect");
        Client {
            ws,
            next_req: 1,
            auth: None,
            backlog: Vec::new(),
        }
    }

    pub fn next_req(&mut self) -> u64 {
        let r = self.next_req;
        self.next_req += 1;
        r
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(WsMessage::Text(text.to_string().into()))
            .await
            .expect("send text");
    }

    pub async fn send_frame(&mut self, frame: &ClientFrame) {
        self.send_text(&frame.to_json()).await;
    }

    /// Authenticates and keeps the `ok` reply.
    pub async fn auth(&mut self, token: &str) -> AuthOk {
        let req = self.next_req();
        self.send_frame(&ClientFrame::Auth {
            req: Some(req),
            token: token.to_string(),
        })
        .await;
        match self.reply(req).await {
            ServerFrame::Ok {
                body: OkBody::Auth(ok),
                ..
            } => {
                self.auth = Some(ok.clone());
                ok
            }
            other => panic!("auth failed: {other:?}"),
        }
    }

    /// The next server frame, parsed; panics on close or timeout.
    pub async fn recv(&mut self) -> ServerFrame {
        if !self.backlog.is_empty() {
            return self.backlog.remove(0);
        }
        self.recv_socket().await
    }

    async fn recv_socket(&mut self) -> ServerFrame {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("connection ended")
                .expect("websocket error");
            match msg {
                WsMessage::Text(t) => {
                    return serde_json::from_str(&t)
                        .unwrap_or_else(|e| panic!("unparseable server frame {t}: {e}"))
                }
                WsMessage::Close(c) => panic!("connection closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Receives until `pred` holds; other frames are kept for later `recv`s.
    pub async fn recv_until(&mut self, mut pred: impl FnMut(&ServerFrame) -> bool) -> ServerFrame {
        if let Some(pos) = self.backlog.iter().position(&mut pred) {
            return self.backlog.remove(pos);
        }
        loop {
            let f = self.recv_socket().await;
            if pred(&f) {
                return f;
            }
            self.backlog.push(f);
        }
    }

    /// The reply (ok, error or pong) to request `req`.
    pub async fn reply(&mut self, req: u64) -> ServerFrame {
        self.recv_until(|f| match f {
            ServerFrame::Ok { req: r, .. }
            | ServerFrame::Error { req: r, .. }
            | ServerFrame::Pong { req: r } => *r == Some(req),
            _ => false,
        })
        .await
    }

    /// Sends a frame built with the next `req` and returns the reply.
    pub async fn request(&mut self, build: impl FnOnce(Option<u64>) -> ClientFrame) -> ServerFrame {
        let req = self.next_req();
        self.send_frame(&build(Some(req))).await;
        self.reply(req).await
    }

    /// Sends a text message; returns the stored message from the ack.
    pub async fn send_text_message(
        &mut self,
        conv: &str,
        client_msg_id: &str,
        body: &str,
    ) -> switchboard_protocol::Message {
        let reply = self
            .request(|req| ClientFrame::Send {
                req,
                conv: conv.to_string(),
                client_msg_id: client_msg_id.to_string(),
                kind: switchboard_protocol::MessageKind::Text,
                body: Some(body.to_string()),
                attachment: None,
            })
            .await;
        match reply {
            ServerFrame::Ok {
                body: OkBody::Sent { msg },
                ..
            } => msg,
            other => panic!("send failed: {other:?}"),
        }
    }

    /// Syncs after `after`; returns the page.
    pub async fn sync_after(
        &mut self,
        conv: &str,
        after: i64,
        limit: u32,
    ) -> switchboard_protocol::SyncOk {
        let reply = self
            .request(|req| ClientFrame::Sync {
                req,
                conv: conv.to_string(),
                after: Some(after),
                before: None,
                limit: Some(limit),
            })
            .await;
        match reply {
            ServerFrame::Ok {
                body: OkBody::Sync(page),
                ..
            } => page,
            other => panic!("sync failed: {other:?}"),
        }
    }

    /// Waits for the server to close the connection; returns the close code.
    /// Text frames before the close are skipped.
    pub async fn expect_close(&mut self) -> u16 {
        let deadline = tokio::time::Instant::now() + WAIT * 3;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("timed out waiting for the server to close");
            match next {
                Some(Ok(WsMessage::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(WsMessage::Close(None))) => return u16::from(CloseCode::Status),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed without a close frame: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Asserts that no frame arrives within `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        assert!(
            self.backlog.is_empty(),
            "unexpected frames: {:?}",
            self.backlog
        );
        if let Ok(Some(Ok(WsMessage::Text(t)))) = tokio::time::timeout(quiet, self.ws.next()).await
        {
            panic!("expected silence, got {t}");
        }
    }
}

/// The error code of an `error` frame, or a panic naming what came instead.
pub fn error_code(frame: &ServerFrame) -> switchboard_protocol::ErrorCode {
    match frame {
        ServerFrame::Error { code, .. } => *code,
        other => panic!("expected an error, got {other:?}"),
    }
}
