//! The `users` table: staff accounts and customers (registered or temporary).

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use switchboard_protocol::{Role, UserRef};

use crate::error::{is_unique_violation, AppError, AppResult};
use crate::store::Store;
use crate::util::{new_id, now_ms};

/// A user as stored.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    pub name: String,
    pub role: Role,
    #[serde(skip)]
    pub password_hash: Option<String>,
    pub temporary: bool,
    pub must_change_password: bool,
    pub disabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<i64>,
    pub skills: Vec<crate::dispatch::Skill>,
    pub created_at: i64,
}

impl User {
    pub fn as_ref(&self) -> UserRef {
        UserRef {
            id: self.id.clone(),
            role: self.role,
            name: self.name.clone(),
        }
    }
}

const COLUMNS: &str = "id, username, name, role, password_hash, temporary, must_change_password, \
                       disabled, max_concurrency, skills, created_at";

fn from_row(row: &AnyRow) -> AppResult<User> {
    let role: String = row.try_get("role")?;
    let skills: String = row.try_get("skills")?;
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        name: row.try_get("name")?,
        role: Role::parse(&role).ok_or_else(|| AppError::internal(format!("bad role {role}")))?,
        password_hash: row.try_get("password_hash")?,
        temporary: row.try_get::<i64, _>("temporary")? != 0,
        must_change_password: row.try_get::<i64, _>("must_change_password")? != 0,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        max_concurrency: row.try_get("max_concurrency")?,
        skills: serde_json::from_str(&skills).unwrap_or_default(),
        created_at: row.try_get("created_at")?,
    })
}

/// What a new user is made of.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: Option<String>,
    pub name: String,
    pub role: Role,
    pub password_hash: Option<String>,
    pub temporary: bool,
    pub max_concurrency: Option<i64>,
    pub skills: Vec<crate::dispatch::Skill>,
}

impl NewUser {
    /// A customer without a login of its own (an anonymous start or a quick
    /// link): it holds only the tokens it was given.
    pub fn temporary_customer(name: String) -> NewUser {
        NewUser {
            username: None,
            name,
            role: Role::Customer,
            password_hash: None,
            temporary: true,
            max_concurrency: None,
            skills: Vec::new(),
        }
    }
}

/// Checks a username: 3–64 characters of letters, digits, `.`, `_`, `-`, `@`.
pub fn validate_username(username: &str) -> AppResult<()> {
    let ok_len = (3..=64).contains(&username.chars().count());
    let ok_chars = username
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err(AppError::bad_request(
            "username must be 3 to 64 letters, digits or . _ - @",
        ))
    }
}

/// Checks a display name: 1–64 characters after trimming (Chinese counts per character).
pub fn validate_name(name: &str) -> AppResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(AppError::bad_request("name must be 1 to 64 characters"));
    }
    Ok(name.to_string())
}

pub async fn create_user(store: &Store, new: NewUser) -> AppResult<User> {
    let user = User {
        id: new_id("u_"),
        username: new.username,
        name: new.name,
        role: new.role,
        password_hash: new.password_hash,
        temporary: new.temporary,
        must_change_password: false,
        disabled: false,
        max_concurrency: new.max_concurrency,
        skills: new.skills,
        created_at: now_ms(),
    };
    let result = sqlx::query(
        "INSERT INTO users (id, username, name, role, password_hash, temporary, \
         must_change_password, disabled, max_concurrency, skills, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 0, 0, $7, $8, $9)",
    )
    .bind(&user.id)
    .bind(&user.username)
    .bind(&user.name)
    .bind(user.role.as_str())
    .bind(&user.password_hash)
    .bind(user.temporary as i64)
    .bind(user.max_concurrency)
    .bind(serde_json::to_string(&user.skills).unwrap_or_else(|_| "[]".into()))
    .bind(user.created_at)
    .execute(store.write())
    .await;
    match result {
        Ok(_) => Ok(user),
        Err(e) if is_unique_violation(&e) => Err(AppError::conflict("this username is taken")),
        Err(e) => Err(e.into()),
    }
}

pub async fn get_user(store: &Store, id: &str) -> AppResult<Option<User>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(store.read())
        .await?;
    row.as_ref().map(from_row).transpose()
}

pub async fn get_user_by_username(store: &Store, username: &str) -> AppResult<Option<User>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM users WHERE username = $1"))
        .bind(username)
        .fetch_optional(store.read())
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The customer a website knows by `external_id` (signed identity). Reads
/// the primary, as it runs right after a possible insert.
pub async fn get_user_by_external_id(store: &Store, external_id: &str) -> AppResult<Option<User>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM users WHERE external_id = $1"
    ))
    .bind(external_id)
    .fetch_optional(store.write())
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Users ordered by id, `limit` after the `after` id (keyset paging).
pub async fn list_users(
    store: &Store,
    role: Option<Role>,
    after: Option<&str>,
    limit: i64,
) -> AppResult<Vec<User>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM users WHERE ($1 IS NULL OR role = $1) AND id > $2 \
         ORDER BY id LIMIT $3"
    ))
    .bind(role.map(|r| r.as_str()))
    .bind(after.unwrap_or(""))
    .bind(limit)
    .fetch_all(store.read())
    .await?;
    rows.iter().map(from_row).collect()
}

/// Changes to a user's profile and routing settings (`PATCH /users/{id}`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    pub name: Option<String>,
    pub skills: Option<Vec<crate::dispatch::Skill>>,
    /// `null` clears it (the team default applies).
    #[serde(default, deserialize_with = "double_option")]
    pub max_concurrency: Option<Option<i64>>,
    pub disabled: Option<bool>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    serde::Deserialize::deserialize(d).map(Some)
}

/// Applies a patch; returns the updated user.
pub async fn update_user(store: &Store, id: &str, patch: &UserPatch) -> AppResult<User> {
    let user = get_user(store, id)
        .await?
        .ok_or_else(|| AppError::not_found("no such user"))?;
    let name = match &patch.name {
        Some(n) => validate_name(n)?,
        None => user.name.clone(),
    };
    let skills = patch.skills.clone().unwrap_or(user.skills.clone());
    crate::dispatch::teams::validate_skills("skills", &skills)?;
    let max = match patch.max_concurrency {
        Some(v) => v,
        None => user.max_concurrency,
    };
    if max.is_some_and(|n| !(1..=100).contains(&n)) {
        return Err(AppError::bad_request("max_concurrency must be 1 to 100"));
    }
    let disabled = patch.disabled.unwrap_or(user.disabled);
    sqlx::query(
        "UPDATE users SET name = $2, skills = $3, max_concurrency = $4, disabled = $5 WHERE id = $1",
    )
    .bind(id)
    .bind(&name)
    .bind(serde_json::to_string(&skills).unwrap_or_else(|_| "[]".into()))
    .bind(max)
    .bind(i64::from(disabled))
    .execute(store.write())
    .await?;
    get_user(store, id)
        .await?
        .ok_or_else(|| AppError::internal("user vanished after update"))
}
