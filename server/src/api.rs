//! HTTP routes: the REST API under `/api/v1`, the OpenAPI document, health,
//! readiness and metrics endpoints, the WebSocket upgrade and the web client.
//!
//! Handlers are thin: they check the caller's role, parse input with
//! [`ApiJson`] (so malformed bodies get the same `{code, message}` errors as
//! everything else) and call the domain modules.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::multipart::MultipartRejection;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Multipart, Path, Query, Request,
    State,
};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use switchboard_protocol::{limits, ConversationInfo, Role, SyncOk};

use crate::auth::{self, users, AuthUser, QuickLink, TokenPair};
use crate::conversations::{self, messages};
use crate::error::{AppError, AppResult};
use crate::gateway;
use crate::state::AppState;
use crate::uploads::{self, UploadInfo};

/// The OpenAPI document of every route below.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Every route of the server.
pub fn router(state: AppState) -> Router {
    let upload_limit = state.config().limits.upload_max_bytes + 64 * 1024;
    let api = Router::new()
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/quick", post(redeem_quick_link))
        .route("/auth/identity", post(identity_sign_in))
        .route("/auth/anonymous", post(anonymous_sign_up))
        .route("/auth/sms/send", post(sms_unavailable))
        .route("/auth/sms/verify", post(sms_unavailable))
        .route("/me", get(get_me))
        .route("/users", post(create_user).get(list_users))
        .route("/quick-links", post(create_quick_link))
        .route(
            "/uploads",
            post(create_upload).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/uploads/{id}", get(get_upload))
        .route("/groups", post(create_group))
        .route("/conversations", get(list_conversations))
        .route("/conversations/{id}", get(get_conversation))
        .route("/conversations/{id}/messages", get(list_messages))
        .route("/conversations/{id}/members", get(list_members))
        .merge(crate::customers::api::routes())
        .merge(crate::dispatch::api::routes())
        .merge(crate::jobs::api::routes())
        .merge(crate::tickets::api::routes())
        .fallback(api_not_found)
        .method_not_allowed_fallback(api_method_not_allowed);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/openapi.json", get(openapi))
        .route("/ws", get(gateway::upgrade))
        .nest("/api/v1", api)
        // Anything else under /api/ (`/api/v1/`, another version) is an API
        // client's mistake: the same JSON error, not the web pages' 404.
        .route("/api/", any(api_not_found))
        .route("/api/{*rest}", any(api_not_found))
        .merge(crate::web::routes())
        .with_state(state)
}

/// A JSON body whose rejection is an [`AppError`] with code `bad_request`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> AppResult<Self> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(AppError::too_large("the request body is too large"))
            }
            Err(rejection) => Err(AppError::bad_request(rejection.body_text())),
        }
    }
}

/// A query string whose rejection is an [`AppError`] with code `bad_request`
/// (axum's own rejection is plain text, not `{code, message}`).
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> AppResult<Self> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(rejection) => Err(AppError::bad_request(rejection.body_text())),
        }
    }
}

/// The IP address of the request's TCP peer, when the server is served with
/// connect info (as [`crate::run`] does); `None` otherwise. Behind a reverse
/// proxy this is the proxy's address: forwarding headers are not trusted.
pub struct PeerIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerIp {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Infallible> {
        Ok(PeerIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// A page of a list.
#[derive(Debug, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct PageQuery {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// Page sizes default to 50 and are clamped to 1..=200.
pub fn page_limit(q: &PageQuery) -> i64 {
    q.limit.unwrap_or(50).clamp(1, 200)
}

/// HTTP 405 with the usual JSON error body (code `bad_request`).
async fn api_method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(serde_json::json!({
            "code": "bad_request",
            "message": "this route does not take that method; see /api/openapi.json",
        })),
    )
        .into_response()
}

async fn api_not_found() -> AppError {
    AppError::not_found("no such API route; see /api/openapi.json")
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the store answers within 2 s and the bus is connected.
async fn readyz(State(state): State<AppState>) -> Response {
    let store_ok = matches!(
        tokio::time::timeout(Duration::from_secs(2), state.store().ping()).await,
        Ok(Ok(()))
    );
    let bus_ok = state.bus().is_connected();
    let status = if store_ok && bus_ok && state.is_accepting() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unreachable" };
    (
        status,
        Json(serde_json::json!({
            "store": word(store_ok),
            "bus": word(bus_ok),
            "accepting": state.is_accepting(),
            "node": state.node_id(),
        })),
    )
        .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics().render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[derive(Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

async fn login(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LoginBody>,
) -> AppResult<Json<TokenPair>> {
    Ok(Json(
        auth::login(&state, &body.username, &body.password).await?,
    ))
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

async fn refresh(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> AppResult<Json<TokenPair>> {
    Ok(Json(auth::refresh(&state, &body.refresh_token).await?))
}

#[derive(Deserialize)]
struct QuickBody {
    token: String,
    name: Option<String>,
}

async fn redeem_quick_link(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<QuickBody>,
) -> AppResult<Json<TokenPair>> {
    Ok(Json(
        auth::redeem_quick_link(&state, &body.token, body.name.as_deref()).await?,
    ))
}

async fn identity_sign_in(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<auth::identity::SignedIdentity>,
) -> AppResult<Json<TokenPair>> {
    Ok(Json(auth::identity::sign_in(&state, &body).await?))
}

#[derive(Deserialize)]
struct AnonymousBody {
    name: Option<String>,
}

async fn anonymous_sign_up(
    State(state): State<AppState>,
    PeerIp(peer): PeerIp,
    body: Result<ApiJson<AnonymousBody>, AppError>,
) -> Result<Json<TokenPair>, auth::anonymous::Refusal> {
    // Turned off: 403 whatever the body, so the client learns the reason
    // that matters rather than a detail of its request.
    auth::anonymous::ensure_enabled(&state)?;
    let ApiJson(body) = body?;
    Ok(Json(
        auth::anonymous::sign_up(&state, peer, body.name.as_deref()).await?,
    ))
}

async fn sms_unavailable() -> AppError {
    AppError::unavailable("SMS login is not available in this version")
}

async fn get_me(
    State(state): State<AppState>,
    AuthUser(me): AuthUser,
) -> AppResult<Json<users::User>> {
    let user = users::get_user(state.store(), &me.id)
        .await?
        .ok_or_else(|| AppError::not_found("no such user"))?;
    Ok(Json(user))
}

#[derive(Deserialize)]
struct CreateUserBody {
    username: String,
    password: String,
    name: Option<String>,
    role: String,
    #[serde(default)]
    skills: Vec<crate::dispatch::Skill>,
    max_concurrency: Option<i64>,
}

async fn create_user(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(body): ApiJson<CreateUserBody>,
) -> AppResult<(StatusCode, Json<users::User>)> {
    caller.require_admin()?;
    let role = Role::parse(&body.role)
        .ok_or_else(|| AppError::bad_request("role must be agent, supervisor or admin"))?;
    let user = auth::create_staff(
        state.store(),
        auth::NewStaff {
            username: body.username,
            password: body.password,
            name: body.name,
            role,
            skills: body.skills,
            max_concurrency: body.max_concurrency,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

#[derive(Deserialize)]
struct ListUsersQuery {
    role: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

async fn list_users(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(q): ApiQuery<ListUsersQuery>,
) -> AppResult<Json<Page<users::User>>> {
    caller.require_staff()?;
    let role = match q.role.as_deref() {
        None => None,
        Some(r) => Some(Role::parse(r).ok_or_else(|| {
            AppError::bad_request("role must be customer, agent, supervisor or admin")
        })?),
    };
    let limit = page_limit(&PageQuery {
        limit: q.limit,
        cursor: None,
    });
    let items = users::list_users(state.store(), role, q.cursor.as_deref(), limit).await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|u| u.id.clone()))
        .flatten();
    Ok(Json(Page { items, next_cursor }))
}

#[derive(Deserialize, Default)]
struct QuickLinkBody {
    ttl_s: Option<u64>,
    max_uses: Option<i64>,
    team: Option<String>,
}

async fn create_quick_link(
    State(state): State<AppState>,
    caller: AuthUser,
    body: axum::body::Bytes,
) -> AppResult<(StatusCode, Json<QuickLink>)> {
    caller.require_staff()?;
    // The body is optional: an empty one means all defaults.
    let body: QuickLinkBody = if body.iter().all(u8::is_ascii_whitespace) {
        QuickLinkBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AppError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let link =
        auth::create_quick_link(&state, &caller.0, body.ttl_s, body.max_uses, body.team).await?;
    Ok((StatusCode::CREATED, Json(link)))
}

async fn create_upload(
    State(state): State<AppState>,
    caller: AuthUser,
    multipart: Result<Multipart, MultipartRejection>,
) -> AppResult<(StatusCode, Json<UploadInfo>)> {
    let mut multipart = multipart.map_err(|e| {
        AppError::bad_request(format!("expected multipart/form-data: {}", e.body_text()))
    })?;
    let too_large = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::too_large("the file is too large")
        } else {
            AppError::bad_request(format!("malformed multipart body: {}", e.body_text()))
        }
    };
    while let Some(field) = multipart.next_field().await.map_err(too_large)? {
        if field.name() != Some("file") {
            continue;
        }
        let name = field.file_name().unwrap_or("file").to_string();
        let mime = field
            .content_type()
            .unwrap_or("application/octet-stream")
            .to_string();
        let bytes = field.bytes().await.map_err(too_large)?;
        let info = uploads::save_upload(&state, &caller.0, &name, &mime, &bytes).await?;
        return Ok((StatusCode::CREATED, Json(info)));
    }
    Err(AppError::bad_request(
        "send the file in a multipart field named \"file\"",
    ))
}

async fn get_upload(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> AppResult<Response> {
    let (info, bytes) = uploads::read_upload(&state, &caller.0, &id).await?;
    let disposition = if info.mime.starts_with("image/") {
        "inline"
    } else {
        "attachment"
    };
    // RFC 6266 filename* keeps Chinese names intact.
    let encoded: String = url::form_urlencoded::byte_serialize(info.name.as_bytes()).collect();
    Ok((
        [
            (header::CONTENT_TYPE, info.mime.clone()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "{disposition}; filename*=UTF-8''{}",
                    encoded.replace('+', "%20")
                ),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (header::CACHE_CONTROL, "private, max-age=86400".to_string()),
        ],
        bytes,
    )
        .into_response())
}

#[derive(Deserialize)]
struct CreateGroupBody {
    title: String,
    members: Vec<String>,
}

async fn create_group(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(body): ApiJson<CreateGroupBody>,
) -> AppResult<(StatusCode, Json<ConversationInfo>)> {
    caller.require_staff()?;
    let info = conversations::create_group(&state, &caller.0, &body.title, &body.members).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn list_conversations(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> AppResult<Json<Page<ConversationInfo>>> {
    let limit = page_limit(&q);
    let offset = match q.cursor.as_deref() {
        None => 0,
        Some(c) => c
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| AppError::bad_request("invalid cursor"))?,
    };
    let items =
        conversations::list_conversations_of(state.store(), &caller.0.id, limit, offset).await?;
    let next_cursor = (items.len() as i64 == limit).then(|| (offset + limit).to_string());
    Ok(Json(Page { items, next_cursor }))
}

async fn get_conversation(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> AppResult<Json<ConversationInfo>> {
    let (info, _) = conversations::visible_conversation(state.store(), &caller.0, &id).await?;
    Ok(Json(info))
}

#[derive(Deserialize)]
struct MessagesQuery {
    after: Option<i64>,
    before: Option<i64>,
    limit: Option<u32>,
}

async fn list_messages(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<MessagesQuery>,
) -> AppResult<Json<SyncOk>> {
    let page = messages::Page::from_bounds(q.after, q.before)?;
    let limit = q.limit.unwrap_or(limits::SYNC_DEFAULT_LIMIT);
    Ok(Json(
        messages::sync_messages(&state, &caller.0, &id, page, limit).await?,
    ))
}

#[derive(Serialize)]
struct Member {
    user: String,
    role: String,
    last_read_seq: i64,
}

async fn list_members(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> AppResult<Json<Vec<Member>>> {
    conversations::visible_conversation(state.store(), &caller.0, &id).await?;
    let members = conversations::members_of(state.store(), &id).await?;
    Ok(Json(
        members
            .into_iter()
            .map(|(user, role, last_read_seq)| Member {
                user,
                role,
                last_read_seq,
            })
            .collect(),
    ))
}
