//! REST routes of customers: a customer's profile and its service
//! conversations. Merged into the `/api/v1` router by [`crate::api`]; who may
//! call them is in the [module doc](super).

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use switchboard_protocol::ConversationInfo;

use super::{Cursor, Profile};
use crate::api::{page_limit, ApiQuery, Page, PageQuery};
use crate::auth::AuthUser;
use crate::error::AppResult;
use crate::state::AppState;

/// The customer routes, relative to `/api/v1`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/customers/{id}", get(get_profile))
        .route("/customers/{id}/conversations", get(list_conversations))
}

async fn get_profile(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> AppResult<Json<Profile>> {
    Ok(Json(super::profile(state.store(), &caller.0, &id).await?))
}

/// The customer's service conversations, newest first, paged by keyset.
async fn list_conversations(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> AppResult<Json<Page<ConversationInfo>>> {
    let limit = page_limit(&q);
    let cursor = q.cursor.as_deref().map(Cursor::parse).transpose()?;
    let (items, next) =
        super::conversations(state.store(), &caller.0, &id, limit, cursor.as_ref()).await?;
    Ok(Json(Page {
        items,
        next_cursor: next.map(|c| c.encode()),
    }))
}
