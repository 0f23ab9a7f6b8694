//! Signed customer identity: a website that embeds the widget vouches for its
//! logged-in customer, so that customer keeps one Switchboard account (and its
//! history) across visits and devices.
//!
//! The site's backend signs `"{id}\n{name}\n{ts}"` with HMAC-SHA256 under the
//! shared `widget_identity_secret` and hands `{id, name, ts, sig}` to the page;
//! the widget exchanges it at `POST /api/v1/auth/identity` for a token pair.
//! A signature is accepted while `ts` is within [`MAX_SKEW_MS`] of the
//! server's clock, so a leaked one is useful for minutes, not forever.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use switchboard_protocol::Role;

use super::users::{self, User};
use super::{start_session, TokenPair};
use crate::error::{is_unique_violation, AppError, AppResult};
use crate::state::AppState;
use crate::util::{new_id, now_ms};

/// How far `ts` may be from the server's clock, either way.
pub const MAX_SKEW_MS: i64 = 10 * 60 * 1000;

/// Longest external customer id, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// The body of `POST /api/v1/auth/identity`.
#[derive(Debug, Clone, Deserialize)]
pub struct SignedIdentity {
    /// The site's own id of its customer.
    pub id: String,
    /// The customer's display name.
    pub name: String,
    /// When the site signed it, ms since the Unix epoch.
    pub ts: i64,
    /// Lowercase hex HMAC-SHA256 of `"{id}\n{name}\n{ts}"`.
    pub sig: String,
}

/// What the site signs.
pub fn signed_text(id: &str, name: &str, ts: i64) -> String {
    format!("{id}\n{name}\n{ts}")
}

/// The signature a site computes (used by tests and documentation examples).
pub fn sign(secret: &[u8], id: &str, name: &str, ts: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(signed_text(id, name, ts).as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Checks the fields' shapes; returns the display name to store (trimmed).
fn validate(identity: &SignedIdentity) -> AppResult<String> {
    let id_len = identity.id.chars().count();
    if id_len == 0 || id_len > MAX_ID_CHARS || identity.id.chars().any(char::is_control) {
        return Err(AppError::bad_request(
            "id must be 1 to 128 characters without control characters",
        ));
    }
    if identity.name.chars().any(char::is_control) {
        return Err(AppError::bad_request(
            "name must not contain control characters",
        ));
    }
    let name = users::validate_name(&identity.name)?;
    if identity.ts <= 0 {
        return Err(AppError::bad_request(
            "ts must be milliseconds since the Unix epoch",
        ));
    }
    if identity.sig.len() != 64 || !identity.sig.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AppError::bad_request(
            "sig must be the 64 hex digits of an HMAC-SHA256",
        ));
    }
    Ok(name)
}

/// Verifies a signed identity and starts a session of its customer, created
/// on first sight and renamed when the site sends another name.
pub async fn sign_in(state: &AppState, identity: &SignedIdentity) -> AppResult<TokenPair> {
    let Some(secret) = state.config().widget_identity_secret.clone() else {
        return Err(AppError::unavailable(
            "signed customer identity is not configured on this server",
        ));
    };
    let name = validate(identity)?;
    if (now_ms() - identity.ts).abs() > MAX_SKEW_MS {
        return Err(AppError::unauthorized(
            "the identity's ts is more than 10 minutes from the server's clock; sign it again",
        ));
    }
    let sig =
        hex::decode(&identity.sig).map_err(|_| AppError::bad_request("sig must be hexadecimal"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .map_err(|e| AppError::internal(format!("HMAC key: {e}")))?;
    mac.update(signed_text(&identity.id, &identity.name, identity.ts).as_bytes());
    // verify_slice compares in constant time.
    if mac.verify_slice(&sig).is_err() {
        return Err(AppError::unauthorized(
            "the identity's signature is invalid",
        ));
    }
    let user = find_or_create(state, &identity.id, &name).await?;
    if user.disabled {
        return Err(AppError::unauthorized("this account is disabled"));
    }
    start_session(state, &user).await
}

async fn find_or_create(state: &AppState, external_id: &str, name: &str) -> AppResult<User> {
    let store = state.store();
    if let Some(user) = users::get_user_by_external_id(store, external_id).await? {
        // A disabled customer is refused by the caller; leave it untouched.
        if user.name != name && !user.disabled {
            sqlx::query("UPDATE users SET name = $1 WHERE id = $2")
                .bind(name)
                .bind(&user.id)
                .execute(store.write())
                .await?;
            return Ok(User {
                name: name.to_string(),
                ..user
            });
        }
        return Ok(user);
    }
    let inserted = sqlx::query(
        "INSERT INTO users (id, username, name, role, password_hash, temporary, \
         must_change_password, disabled, max_concurrency, skills, created_at, external_id) \
         VALUES ($1, NULL, $2, $3, NULL, 0, 0, 0, NULL, '[]', $4, $5)",
    )
    .bind(new_id("u_"))
    .bind(name)
    .bind(Role::Customer.as_str())
    .bind(now_ms())
    .bind(external_id)
    .execute(store.write())
    .await;
    match inserted {
        Ok(_) => {}
        // Another request created it at the same moment: use that one.
        Err(e) if is_unique_violation(&e) => {}
        Err(e) => return Err(e.into()),
    }
    users::get_user_by_external_id(store, external_id)
        .await?
        .ok_or_else(|| AppError::internal("the customer vanished after it was created"))
}
