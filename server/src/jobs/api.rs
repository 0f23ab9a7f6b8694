//! REST routes of the jobs module: scheduled group messages, and the admins'
//! view of the job table with retry of dead jobs. Merged into the `/api/v1`
//! router by [`crate::api`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::group_messages::{self, ScheduleInput, ScheduledMessage};
use super::store::{self, JobRecord};
use super::{Status, DEFAULT_MAX_ATTEMPTS};
use crate::api::{ApiJson, ApiQuery, Page};
use crate::auth::AuthUser;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::util::now_ms;

/// The jobs routes, relative to `/api/v1`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/groups/{id}/scheduled-messages",
            post(create_scheduled_message).get(list_scheduled_messages),
        )
        .route("/scheduled-messages/{id}", delete(cancel_scheduled_message))
        .route("/jobs", get(list_jobs))
        .route("/jobs/{id}/retry", post(retry_job))
}

async fn create_scheduled_message(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(group): Path<String>,
    ApiJson(body): ApiJson<ScheduleInput>,
) -> AppResult<(StatusCode, Json<ScheduledMessage>)> {
    let created = group_messages::create(&state, &caller.0, &group, body).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[derive(Serialize)]
struct Items<T> {
    items: Vec<T>,
}

async fn list_scheduled_messages(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(group): Path<String>,
) -> AppResult<Json<Items<ScheduledMessage>>> {
    Ok(Json(Items {
        items: group_messages::list(&state, &caller.0, &group).await?,
    }))
}

async fn cancel_scheduled_message(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    group_messages::cancel(&state, &caller.0, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsQuery {
    status: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

async fn list_jobs(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(q): ApiQuery<JobsQuery>,
) -> AppResult<Json<Page<JobRecord>>> {
    caller.require_admin()?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            AppError::bad_request("status must be queued, running, done or dead")
        })?),
    };
    // Same page sizes as every list: 50 by default, 1 to 200.
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let items = store::list(state.store(), status, q.cursor.as_deref(), limit).await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|j| j.id.clone()))
        .flatten();
    Ok(Json(Page { items, next_cursor }))
}

async fn retry_job(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> AppResult<Json<JobRecord>> {
    caller.require_admin()?;
    let job = store::retry(state.store(), &id, DEFAULT_MAX_ATTEMPTS, now_ms()).await?;
    tracing::info!(job = %id, admin = %caller.0.id, "dead job queued again");
    Ok(Json(job))
}
