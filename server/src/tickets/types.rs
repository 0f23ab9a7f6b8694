//! The catalogue of ticket types (`ticket_types`): admins create, list and
//! disable (or enable again) types. While the catalogue has any type, a new
//! ticket's `type` must be the name of an enabled one; an empty catalogue
//! leaves `type` free text.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{check_text, MAX_TEXT_CHARS, MAX_TYPE_CHARS};
use crate::error::{is_unique_violation, AppError, AppResult};
use crate::store::Store;
use crate::util::{new_id, now_ms};

/// A ticket type.
#[derive(Debug, Clone, Serialize)]
pub struct TicketType {
    pub id: String,
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewType {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypePatch {
    pub enabled: bool,
}

fn from_row(r: &AnyRow) -> AppResult<TicketType> {
    Ok(TicketType {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        enabled: r.try_get::<i64, _>("enabled")? != 0,
        created_at: r.try_get("created_at")?,
    })
}

pub async fn create(store: &Store, input: NewType) -> AppResult<TicketType> {
    check_text("name", &input.name, 1, MAX_TYPE_CHARS)?;
    check_text("description", &input.description, 0, MAX_TEXT_CHARS)?;
    let t = TicketType {
        id: new_id("tty_"),
        name: input.name.trim().to_string(),
        description: input.description,
        enabled: true,
        created_at: now_ms(),
    };
    let done = sqlx::query(
        "INSERT INTO ticket_types (id, name, description, enabled, created_at) \
         VALUES ($1, $2, $3, 1, $4)",
    )
    .bind(&t.id)
    .bind(&t.name)
    .bind(&t.description)
    .bind(t.created_at)
    .execute(store.write())
    .await;
    match done {
        Ok(_) => Ok(t),
        Err(e) if is_unique_violation(&e) => {
            Err(AppError::conflict("a ticket type of that name exists"))
        }
        Err(e) => Err(e.into()),
    }
}

/// Every type, enabled or not, by name.
pub async fn list(store: &Store) -> AppResult<Vec<TicketType>> {
    let rows = sqlx::query(
        "SELECT id, name, description, enabled, created_at FROM ticket_types ORDER BY name, id",
    )
    .fetch_all(store.read())
    .await?;
    rows.iter().map(from_row).collect()
}

/// Disables or enables a type again.
pub async fn set_enabled(store: &Store, id: &str, enabled: bool) -> AppResult<TicketType> {
    sqlx::query("UPDATE ticket_types SET enabled = $2 WHERE id = $1")
        .bind(id)
        .bind(i64::from(enabled))
        .execute(store.write())
        .await?;
    let row = sqlx::query(
        "SELECT id, name, description, enabled, created_at FROM ticket_types WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(store.write())
    .await?;
    match row {
        Some(r) => from_row(&r),
        None => Err(AppError::not_found("no such ticket type")),
    }
}

/// `bad_request` unless `name` may be a new ticket's type.
pub async fn check(store: &Store, name: &str) -> AppResult<()> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n, COALESCE(SUM(CASE WHEN name = $1 AND enabled = 1 THEN 1 ELSE 0 END), 0) AS ok \
         FROM ticket_types",
    )
    .bind(name)
    .fetch_one(store.read())
    .await?;
    let n: i64 = row.try_get("n")?;
    let ok: i64 = row.try_get("ok")?;
    if n > 0 && ok == 0 {
        return Err(AppError::bad_request(format!(
            "type must be an enabled ticket type (GET /api/v1/ticket-types); {name:?} is not"
        )));
    }
    Ok(())
}
