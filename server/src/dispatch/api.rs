//! REST routes of dispatch: teams and members, agents' routing settings,
//! customer–team relationships, queues, batch assignment, and the assignment
//! history. Merged into the `/api/v1` router by [`crate::api`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use switchboard_protocol::{ConversationInfo, TeamQueue};

use super::teams::{self, CustomerTeam, CustomerTeamInput, Member, Team, TeamInput};
use crate::api::{ApiJson, ApiQuery, Page};
use crate::auth::{users, AuthUser};
use crate::conversations;
use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// The dispatch routes, relative to `/api/v1`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/teams", post(create_team).get(list_teams))
        .route("/teams/{id}", get(get_team).patch(patch_team))
        .route("/teams/{id}/members", get(list_members).post(add_member))
        .route("/teams/{id}/members/{user}", delete(remove_member))
        .route("/teams/{id}/queue", get(get_queue))
        .route("/users/{id}", patch(patch_user))
        .route("/customer-teams", post(create_relation).get(list_relations))
        .route("/customer-teams/{id}", delete(delete_relation))
        .route("/assignments", get(list_assignments).post(batch_assign))
        .route("/conversations/{id}/events", get(conversation_events))
}

/// A team with its members.
#[derive(Serialize)]
struct TeamView {
    #[serde(flatten)]
    team: Team,
    members: Vec<Member>,
}

async fn view(state: &AppState, team: Team) -> AppResult<TeamView> {
    let members = teams::members(state.store(), &team.id).await?;
    Ok(TeamView { team, members })
}

async fn create_team(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(body): ApiJson<TeamInput>,
) -> AppResult<(StatusCode, Json<TeamView>)> {
    caller.require_admin()?;
    let team = teams::create(state.store(), &body).await?;
    super::team_changed(&state, &team.id).await?;
    Ok((StatusCode::CREATED, Json(view(&state, team).await?)))
}

async fn list_teams(
    State(state): State<AppState>,
    caller: AuthUser,
) -> AppResult<Json<Page<TeamView>>> {
    caller.require_staff()?;
    let mut items = Vec::new();
    for t in teams::list(state.store()).await? {
        items.push(view(&state, t).await?);
    }
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}

async fn find_team(state: &AppState, id: &str) -> AppResult<Team> {
    teams::get(state.store(), id)
        .await?
        .ok_or_else(|| AppError::not_found("no such team"))
}

async fn get_team(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> AppResult<Json<TeamView>> {
    caller.require_staff()?;
    let team = find_team(&state, &id).await?;
    Ok(Json(view(&state, team).await?))
}

async fn patch_team(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> AppResult<Json<TeamView>> {
    caller.require_admin()?;
    let current = find_team(&state, &id).await?;
    let input = teams::merge_patch(&current, body)?;
    let team = teams::update(state.store(), &id, &input).await?;
    super::team_changed(&state, &id).await?;
    Ok(Json(view(&state, team).await?))
}

async fn list_members(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> AppResult<Json<Page<Member>>> {
    caller.require_staff()?;
    find_team(&state, &id).await?;
    Ok(Json(Page {
        items: teams::members(state.store(), &id).await?,
        next_cursor: None,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMember {
    user: String,
    #[serde(default = "agent_role")]
    role: String,
}

fn agent_role() -> String {
    "agent".into()
}

async fn add_member(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AddMember>,
) -> AppResult<Json<TeamView>> {
    caller.require_admin()?;
    teams::add_member(state.store(), &id, &body.user, &body.role).await?;
    super::team_changed(&state, &id).await?;
    let team = find_team(&state, &id).await?;
    Ok(Json(view(&state, team).await?))
}

async fn remove_member(
    State(state): State<AppState>,
    caller: AuthUser,
    Path((id, user)): Path<(String, String)>,
) -> AppResult<StatusCode> {
    caller.require_admin()?;
    teams::remove_member(state.store(), &id, &user).await?;
    super::team_changed(&state, &id).await?;
    super::agent_changed(&state, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A team's live queue and its left messages.
#[derive(Serialize)]
struct QueueView {
    #[serde(flatten)]
    queue: TeamQueue,
    /// Left messages: conversations waiting for the team to return.
    pending: Vec<ConversationInfo>,
}

async fn get_queue(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> AppResult<Json<QueueView>> {
    caller.require_supervisor()?;
    find_team(&state, &id).await?;
    let queue = super::team_queue(&state, &id).await?;
    let rows = sqlx::query(
        "SELECT id FROM conversations WHERE team_id = $1 AND kind = 'service' \
         AND state = 'queued' AND pending = 1 ORDER BY queued_at LIMIT 500",
    )
    .bind(&id)
    .fetch_all(state.store().read())
    .await?;
    let mut pending = Vec::with_capacity(rows.len());
    for r in rows {
        let conv: String = r.try_get("id")?;
        pending.push(conversations::conversation_info(state.store(), &conv).await?);
    }
    Ok(Json(QueueView { queue, pending }))
}

async fn patch_user(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<users::UserPatch>,
) -> AppResult<Json<users::User>> {
    caller.require_admin()?;
    let user = users::update_user(state.store(), &id, &body).await?;
    if user.role.is_staff() {
        super::agent_changed(&state, &id).await?;
    }
    Ok(Json(user))
}

async fn create_relation(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(body): ApiJson<CustomerTeamInput>,
) -> AppResult<(StatusCode, Json<CustomerTeam>)> {
    caller.require_supervisor()?;
    let rel = teams::create_relation(state.store(), &body).await?;
    Ok((StatusCode::CREATED, Json(rel)))
}

#[derive(Deserialize)]
struct RelationQuery {
    customer: String,
}

async fn list_relations(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(q): ApiQuery<RelationQuery>,
) -> AppResult<Json<Page<CustomerTeam>>> {
    caller.require_staff()?;
    Ok(Json(Page {
        items: teams::relations_of(state.store(), &q.customer).await?,
        next_cursor: None,
    }))
}

async fn delete_relation(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    caller.require_supervisor()?;
    teams::delete_relation(state.store(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One entry of a conversation's dispatch history.
#[derive(Serialize)]
struct Event {
    id: String,
    conv: String,
    kind: String,
    team: Option<String>,
    agent: Option<String>,
    actor: Option<String>,
    note: Option<String>,
    at: i64,
}

fn event_from_row(r: &sqlx::any::AnyRow) -> AppResult<Event> {
    Ok(Event {
        id: r.try_get("id")?,
        conv: r.try_get("conv_id")?,
        kind: r.try_get("kind")?,
        team: r.try_get("team_id")?,
        agent: r.try_get("agent_id")?,
        actor: r.try_get("actor_id")?,
        note: r.try_get("note")?,
        at: r.try_get("at")?,
    })
}

const EVENT_COLUMNS: &str = "id, conv_id, kind, team_id, agent_id, actor_id, note, at";

#[derive(Deserialize)]
struct AssignmentQuery {
    team: Option<String>,
    agent: Option<String>,
    conv: Option<String>,
    limit: Option<i64>,
    /// `at:id` of the last item of the previous page.
    cursor: Option<String>,
}

/// The assignment history, newest first: offers, assignments, accepts,
/// expired offers, transfers and reassignments.
async fn list_assignments(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(q): ApiQuery<AssignmentQuery>,
) -> AppResult<Json<Page<Event>>> {
    caller.require_supervisor()?;
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let (cursor_at, cursor_id) = match q.cursor.as_deref() {
        None => (i64::MAX, String::new()),
        Some(c) => {
            let (at, id) = c
                .split_once(':')
                .ok_or_else(|| AppError::bad_request("cursor is not one this API returned"))?;
            let at: i64 = at
                .parse()
                .map_err(|_| AppError::bad_request("cursor is not one this API returned"))?;
            (at, id.to_string())
        }
    };
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM conversation_events \
         WHERE kind IN ('offered', 'assigned', 'accepted', 'offer_expired', 'transferred', 'reassigned') \
         AND ($1 = '' OR team_id = $1) AND ($2 = '' OR agent_id = $2) AND ($3 = '' OR conv_id = $3) \
         AND (at < $4 OR (at = $4 AND id < $5)) \
         ORDER BY at DESC, id DESC LIMIT $6"
    ))
    .bind(q.team.unwrap_or_default())
    .bind(q.agent.unwrap_or_default())
    .bind(q.conv.unwrap_or_default())
    .bind(cursor_at)
    .bind(if cursor_id.is_empty() { "\u{10FFFF}".to_string() } else { cursor_id })
    .bind(limit)
    .fetch_all(state.store().read())
    .await?;
    let items = rows
        .iter()
        .map(event_from_row)
        .collect::<AppResult<Vec<_>>>()?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|e| format!("{}:{}", e.at, e.id)))
        .flatten();
    Ok(Json(Page { items, next_cursor }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchAssign {
    items: Vec<AssignItem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignItem {
    conv: String,
    agent: String,
}

#[derive(Serialize)]
struct AssignResult {
    conv: String,
    agent: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<switchboard_protocol::ErrorCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

#[derive(Serialize)]
struct BatchResult {
    results: Vec<AssignResult>,
}

/// Assigns several conversations by hand; each item succeeds or fails alone.
async fn batch_assign(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(body): ApiJson<BatchAssign>,
) -> AppResult<Json<BatchResult>> {
    caller.require_supervisor()?;
    if body.items.is_empty() || body.items.len() > 200 {
        return Err(AppError::bad_request("items: 1 to 200 assignments"));
    }
    let mut results = Vec::with_capacity(body.items.len());
    for item in body.items {
        let r = super::assign(&state, &caller.0, &item.conv, &item.agent).await;
        results.push(AssignResult {
            ok: r.is_ok(),
            code: r.as_ref().err().map(AppError::code),
            message: r.as_ref().err().map(AppError::public_message),
            conv: item.conv,
            agent: item.agent,
        });
    }
    Ok(Json(BatchResult { results }))
}

/// A conversation's whole dispatch history, oldest first.
async fn conversation_events(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> AppResult<Json<Page<Event>>> {
    caller.require_staff()?;
    conversations::visible_conversation(state.store(), &caller.0, &id).await?;
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM conversation_events WHERE conv_id = $1 ORDER BY at, id LIMIT 1000"
    ))
    .bind(&id)
    .fetch_all(state.store().read())
    .await?;
    Ok(Json(Page {
        items: rows
            .iter()
            .map(event_from_row)
            .collect::<AppResult<Vec<_>>>()?,
        next_cursor: None,
    }))
}
