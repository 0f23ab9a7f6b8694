//! Identity: password hashes, access tokens, rotating refresh tokens, quick
//! links and anonymous starts for temporary customers, and the REST extractor
//! that authenticates a request.
//!
//! Access tokens are JWTs signed with HS256 (the algorithm is pinned; `iss`,
//! `aud`, `exp` and the token type are checked) and live 15 minutes by default.
//! Each login starts a token *family*; refresh tokens are opaque random strings
//! stored as SHA-256 hashes, rotate on every use, and a reused one revokes the
//! family — which also invalidates the family's access tokens, because both the
//! REST extractor and the WebSocket `auth` check the family.
//!
//! Layout:
//! - [`users`]: the `users` table.
//! - [`passwords`]: argon2id hashing off the async runtime.
//! - [`identity`]: customers signed in by an embedding website (HMAC-signed identity).
//! - [`anonymous`]: visitors starting without a link, and their per-address bound.
//! - this file: [`TokenKeys`], sessions (login, refresh), quick links, [`AuthUser`].

pub mod anonymous;
pub mod identity;
pub mod passwords;
pub mod users;

use std::sync::LazyLock;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use switchboard_protocol::{ConversationInfo, Role, UserRef};

use crate::conversations;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::store::Store;
use crate::util::{new_id, now_ms, random_token, sha256_hex};
use users::User;

const ISSUER: &str = "switchboard";
const AUDIENCE: &str = "switchboard";
const ACCESS: &str = "access";

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    /// Token family (one per login); revoking it revokes this token.
    pub fam: String,
    pub typ: String,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

/// Signing and verification keys for access tokens.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    access_ttl_s: u64,
}

impl TokenKeys {
    pub fn new(secret: &[u8], access_ttl_s: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // Why 5 s: clocks of nodes in one cluster differ by little; a long
        // leeway would extend every token's life.
        validation.leeway = 5;
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            access_ttl_s,
        }
    }

    pub fn access_ttl_s(&self) -> u64 {
        self.access_ttl_s
    }

    /// A signed access token for the user in the given family.
    pub fn issue_access(&self, user_id: &str, role: Role, family: &str) -> AppResult<String> {
        let now = now_ms() / 1000;
        let claims = Claims {
            sub: user_id.to_string(),
            role,
            fam: family.to_string(),
            typ: ACCESS.into(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now,
            exp: now + self.access_ttl_s as i64,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AppError::internal(format!("signing token: {e}")))
    }

    /// Verifies signature, algorithm, issuer, audience, expiry and token type.
    pub fn verify_access(&self, token: &str) -> AppResult<Claims> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    AppError::unauthorized("the access token has expired; refresh it")
                }
                _ => AppError::unauthorized("the access token is invalid"),
            })?;
        if data.claims.typ != ACCESS {
            return Err(AppError::unauthorized("not an access token"));
        }
        Ok(data.claims)
    }
}

/// The JWT secret: the configured one, else one generated once and kept in the
/// database so that every node sharing the database signs alike.
pub async fn load_jwt_secret(store: &Store, configured: Option<&str>) -> AppResult<Vec<u8>> {
    if let Some(secret) = configured {
        return Ok(secret.as_bytes().to_vec());
    }
    sqlx::query(
        "INSERT INTO server_secrets (name, value, created_at) VALUES ('jwt', $1, $2) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(random_token())
    .bind(now_ms())
    .execute(store.write())
    .await?;
    let row = sqlx::query("SELECT value FROM server_secrets WHERE name = 'jwt'")
        .fetch_one(store.write())
        .await?;
    let value: String = row.try_get("value")?;
    Ok(value.into_bytes())
}

/// What login, refresh, quick registration, anonymous starts and signed
/// identities return.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub user: UserRef,
    pub must_change_password: bool,
}

/// Starts a new token family for the user and returns its first tokens.
pub async fn start_session(state: &AppState, user: &User) -> AppResult<TokenPair> {
    let family = new_id("f_");
    let now = now_ms();
    sqlx::query("INSERT INTO token_families (id, user_id, created_at) VALUES ($1, $2, $3)")
        .bind(&family)
        .bind(&user.id)
        .bind(now)
        .execute(state.store().write())
        .await?;
    issue_pair(state, user, &family).await
}

/// A fresh access token and refresh token of the user in a family.
async fn issue_pair(state: &AppState, user: &User, family: &str) -> AppResult<TokenPair> {
    let refresh_token = insert_refresh_token(state, family, &user.id).await?;
    Ok(TokenPair {
        access_token: state.keys().issue_access(&user.id, user.role, family)?,
        refresh_token,
        expires_in: state.keys().access_ttl_s(),
        user: user.as_ref(),
        must_change_password: user.must_change_password,
    })
}

async fn insert_refresh_token(state: &AppState, family: &str, user_id: &str) -> AppResult<String> {
    let token = random_token();
    let now = now_ms();
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, family_id, user_id, issued_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(sha256_hex(&token))
    .bind(family)
    .bind(user_id)
    .bind(now)
    .bind(now + state.config().limits.refresh_token_ttl_s as i64 * 1000)
    .execute(state.store().write())
    .await?;
    Ok(token)
}

/// A staff account to create (from the REST API or the command line).
#[derive(Debug, Clone)]
pub struct NewStaff {
    pub username: String,
    pub password: String,
    pub name: Option<String>,
    pub role: Role,
    pub skills: Vec<crate::dispatch::Skill>,
    pub max_concurrency: Option<i64>,
}

/// Validates and creates a staff account with an argon2id password hash.
pub async fn create_staff(store: &Store, new: NewStaff) -> AppResult<User> {
    if !new.role.is_staff() {
        return Err(AppError::bad_request(
            "role must be agent, supervisor or admin",
        ));
    }
    users::validate_username(&new.username)?;
    passwords::validate(&new.password)?;
    let name = users::validate_name(new.name.as_deref().unwrap_or(&new.username))?;
    if new.max_concurrency.is_some_and(|n| !(1..=100).contains(&n)) {
        return Err(AppError::bad_request("max_concurrency must be 1 to 100"));
    }
    crate::dispatch::teams::validate_skills("skills", &new.skills)?;
    let hash = passwords::hash(&new.password).await?;
    users::create_user(
        store,
        users::NewUser {
            username: Some(new.username),
            name,
            role: new.role,
            password_hash: Some(hash),
            temporary: false,
            max_concurrency: new.max_concurrency,
            skills: new.skills,
        },
    )
    .await
}

/// Checks a username and password; the same error whether the user exists or not.
pub async fn login(state: &AppState, username: &str, password: &str) -> AppResult<TokenPair> {
    let denied = || AppError::unauthorized("wrong username or password");
    let user = users::get_user_by_username(state.store(), username).await?;
    let hash = user.as_ref().and_then(|u| u.password_hash.clone());
    // Verify against a dummy hash when the user is unknown, so that timing does
    // not tell which usernames exist.
    let ok = passwords::verify(password, hash.as_deref()).await?;
    match user {
        Some(user) if ok && !user.disabled => start_session(state, &user).await,
        _ => Err(denied()),
    }
}

/// Rotates a refresh token. A token used twice revokes its whole family.
pub async fn refresh(state: &AppState, refresh_token: &str) -> AppResult<TokenPair> {
    let store = state.store();
    let hash = sha256_hex(refresh_token);
    let row = sqlx::query(
        "SELECT r.family_id, r.user_id, r.expires_at, r.used_at, f.revoked_at \
         FROM refresh_tokens r JOIN token_families f ON f.id = r.family_id \
         WHERE r.token_hash = $1",
    )
    .bind(&hash)
    .fetch_optional(store.read())
    .await?;
    let Some(row) = row else {
        return Err(AppError::unauthorized(
            "unknown refresh token; sign in again",
        ));
    };
    let family: String = row.try_get("family_id")?;
    let user_id: String = row.try_get("user_id")?;
    let expires_at: i64 = row.try_get("expires_at")?;
    let used_at: Option<i64> = row.try_get("used_at")?;
    let revoked_at: Option<i64> = row.try_get("revoked_at")?;
    let now = now_ms();
    if revoked_at.is_some() {
        return Err(AppError::unauthorized(
            "this session was revoked; sign in again",
        ));
    }
    if used_at.is_some() {
        revoke_family(store, &family).await?;
        return Err(AppError::unauthorized(
            "refresh token reuse detected; the session was revoked, sign in again",
        ));
    }
    if expires_at <= now {
        return Err(AppError::unauthorized(
            "the refresh token has expired; sign in again",
        ));
    }
    // Mark used atomically: of two concurrent refreshes with one token, one wins
    // and the other is treated as reuse.
    let marked = sqlx::query(
        "UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
    )
    .bind(now)
    .bind(&hash)
    .execute(store.write())
    .await?;
    if marked.rows_affected() != 1 {
        revoke_family(store, &family).await?;
        return Err(AppError::unauthorized(
            "refresh token reuse detected; the session was revoked, sign in again",
        ));
    }
    let user = users::get_user(store, &user_id)
        .await?
        .filter(|u| !u.disabled)
        .ok_or_else(|| AppError::unauthorized("this account is disabled"))?;
    issue_pair(state, &user, &family).await
}

async fn revoke_family(store: &Store, family: &str) -> AppResult<()> {
    sqlx::query("UPDATE token_families SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(now_ms())
        .bind(family)
        .execute(store.write())
        .await?;
    Ok(())
}

/// Verifies an access token and that its user and family are still in good
/// standing (REST requests; the WebSocket `auth` uses [`open_session`]).
pub async fn authenticate(state: &AppState, token: &str) -> AppResult<UserRef> {
    let claims = state.keys().verify_access(token)?;
    let row = sqlx::query(
        "SELECT u.name, u.role, u.disabled, f.revoked_at FROM users u \
         JOIN token_families f ON f.user_id = u.id WHERE u.id = $1 AND f.id = $2",
    )
    .bind(&claims.sub)
    .bind(&claims.fam)
    .fetch_optional(state.store().read())
    .await?;
    session_user(row.as_ref(), claims)
}

/// The statement of a WebSocket `auth`: the token's session check of
/// [`authenticate`] joined to the conversations the user is a member of
/// ([`conversations::MEMBER_CONVERSATIONS`]): one row per conversation, or
/// one with no conversation columns when there are none, or none when the
/// user or the family does not exist. Why one statement: every connection
/// runs it, and each pooled statement costs a hand-off to the connection and,
/// on PostgreSQL, a network round trip.
static OPEN_SESSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT u.name, u.role, u.disabled, f.revoked_at, v.* FROM users u \
         JOIN token_families f ON f.user_id = u.id \
         LEFT JOIN ({}) v ON 1 = 1 \
         WHERE u.id = $1 AND f.id = $2",
        *conversations::MEMBER_CONVERSATIONS
    )
});

/// The user of a verified access token ([`TokenKeys::verify_access`]) and the
/// conversations its `auth` reply lists: those it is a member of, newest
/// activity first, then for staff the offers waiting for it (a second
/// statement, for the few connections that are staff).
pub async fn open_session(
    state: &AppState,
    claims: Claims,
) -> AppResult<(UserRef, Vec<ConversationInfo>)> {
    let rows = sqlx::query(OPEN_SESSION.as_str())
        .bind(&claims.sub)
        .bind(&claims.fam)
        .fetch_all(state.store().read())
        .await?;
    let user = session_user(rows.first(), claims)?;
    let mut member = Vec::with_capacity(rows.len());
    for row in &rows {
        if row.try_get::<Option<String>, _>("id")?.is_some() {
            let info = conversations::info_from_row(row, row.try_get("last_read_seq")?)?;
            member.push((row.try_get::<i64, _>("sort_at")?, info));
        }
    }
    member.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    let mut listed: Vec<ConversationInfo> = member.into_iter().map(|(_, c)| c).collect();
    if user.role.is_staff() {
        listed.extend(conversations::offers_to(state.store(), &user.id).await?);
    }
    Ok((user, listed))
}

/// The user of a verified access token from the row of its session check
/// (`name`, `role`, `disabled`, `revoked_at`; none when the user or the family
/// does not exist): the account must exist and be enabled, and the token's
/// session (family) must not be revoked.
fn session_user(row: Option<&AnyRow>, claims: Claims) -> AppResult<UserRef> {
    let Some(row) = row else {
        return Err(AppError::unauthorized("the access token is invalid"));
    };
    let disabled: i64 = row.try_get("disabled")?;
    let revoked_at: Option<i64> = row.try_get("revoked_at")?;
    if disabled != 0 {
        return Err(AppError::unauthorized("this account is disabled"));
    }
    if revoked_at.is_some() {
        return Err(AppError::unauthorized(
            "this session was revoked; sign in again",
        ));
    }
    let role: String = row.try_get("role")?;
    Ok(UserRef {
        id: claims.sub,
        role: Role::parse(&role).ok_or_else(|| AppError::internal("bad role"))?,
        name: row.try_get("name")?,
    })
}

/// A quick-register link as returned to staff.
#[derive(Debug, Serialize, Deserialize)]
pub struct QuickLink {
    pub id: String,
    pub token: String,
    pub url: String,
    pub expires_at: i64,
}

/// Creates a link that lets one or more people start as temporary customers.
pub async fn create_quick_link(
    state: &AppState,
    creator: &UserRef,
    ttl_s: Option<u64>,
    max_uses: Option<i64>,
    team: Option<String>,
) -> AppResult<QuickLink> {
    let ttl_s = ttl_s.unwrap_or(state.config().limits.quick_link_ttl_s);
    if ttl_s == 0 || ttl_s > 365 * 24 * 3600 {
        return Err(AppError::bad_request(
            "ttl_s must be between 1 s and 365 days",
        ));
    }
    if max_uses.is_some_and(|n| n < 1) {
        return Err(AppError::bad_request("max_uses must be at least 1"));
    }
    let token = random_token();
    let id = new_id("ql_");
    let now = now_ms();
    let expires_at = now + ttl_s as i64 * 1000;
    sqlx::query(
        "INSERT INTO quick_links (token_hash, id, created_by, team_id, max_uses, uses, expires_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, 0, $6, $7)",
    )
    .bind(sha256_hex(&token))
    .bind(&id)
    .bind(&creator.id)
    .bind(&team)
    .bind(max_uses)
    .bind(expires_at)
    .bind(now)
    .execute(state.store().write())
    .await?;
    let base = state.config().public_url.clone().unwrap_or_default();
    Ok(QuickLink {
        id,
        // In the fragment: browsers never send it, so the token stays out of
        // server and proxy access logs.
        url: format!("{}/widget#quick={token}", base.trim_end_matches('/')),
        token,
        expires_at,
    })
}

/// The display name of a new temporary customer (quick link or anonymous):
/// the given one trimmed, 1 to 64 characters (400 beyond); absent or blank,
/// "访客" (visitor) and four random digits.
pub fn visitor_name(name: Option<&str>) -> AppResult<String> {
    match name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(n) => users::validate_name(n),
        None => Ok(format!("访客{:04}", rand::random::<u16>() % 10000)),
    }
}

/// Redeems a quick link: a new temporary customer and its tokens.
pub async fn redeem_quick_link(
    state: &AppState,
    token: &str,
    name: Option<&str>,
) -> AppResult<TokenPair> {
    let name = visitor_name(name)?;
    let used = sqlx::query(
        "UPDATE quick_links SET uses = uses + 1 WHERE token_hash = $1 AND expires_at > $2 \
         AND (max_uses IS NULL OR uses < max_uses) RETURNING id",
    )
    .bind(sha256_hex(token))
    .bind(now_ms())
    .fetch_optional(state.store().write())
    .await?;
    if used.is_none() {
        return Err(AppError::unauthorized(
            "this link is invalid, used up or expired",
        ));
    }
    let user = users::create_user(state.store(), users::NewUser::temporary_customer(name)).await?;
    start_session(state, &user).await
}

/// The authenticated caller of a REST request (`Authorization: Bearer …`).
#[derive(Debug, Clone)]
pub struct AuthUser(pub UserRef);

impl AuthUser {
    pub fn require_staff(&self) -> AppResult<()> {
        if self.0.role.is_staff() {
            Ok(())
        } else {
            Err(AppError::forbidden("this needs a staff account"))
        }
    }

    pub fn require_supervisor(&self) -> AppResult<()> {
        if self.0.role.is_supervisor() {
            Ok(())
        } else {
            Err(AppError::forbidden(
                "this needs a supervisor or administrator",
            ))
        }
    }

    pub fn require_admin(&self) -> AppResult<()> {
        if self.0.role == Role::Admin {
            Ok(())
        } else {
            Err(AppError::forbidden("this needs an administrator"))
        }
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> AppResult<Self> {
        let header = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| AppError::unauthorized("missing Authorization: Bearer <token>"))?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| AppError::unauthorized("expected Authorization: Bearer <token>"))?;
        Ok(AuthUser(authenticate(state, token.trim()).await?))
    }
}
