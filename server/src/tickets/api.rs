//! REST routes of tickets and SLA policies. Merged into the `/api/v1` router
//! by [`crate::api`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde::Serialize;

use super::sla::{self, NewPolicy, Policy, SlaView};
use super::types::{self, NewType, TicketType, TypePatch};
use super::{Event, ListQuery, NewNote, NewTicket, Note, Ticket, TicketPatch};
use crate::api::{ApiJson, ApiQuery, Page};
use crate::auth::AuthUser;
use crate::error::AppResult;
use crate::state::AppState;
use crate::util::now_ms;

/// The ticket routes, relative to `/api/v1`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/tickets", post(create_ticket).get(list_tickets))
        .route("/tickets/{id}", get(get_ticket).patch(patch_ticket))
        .route("/tickets/{id}/notes", post(add_note))
        .route("/conversations/{id}/ticket", post(ticket_from_conversation))
        .route("/sla-policies", post(create_policy).get(list_policies))
        .route("/ticket-types", post(create_type).get(list_types))
        .route("/ticket-types/{id}", patch(patch_type))
}

/// A ticket as the API shows it; `events` and `notes` only on the single
/// ticket's GET, filtered to what the caller may see.
#[derive(Serialize)]
pub struct TicketView {
    pub id: String,
    pub title: String,
    pub description: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub priority: String,
    pub status: String,
    pub customer: String,
    pub team: Option<String>,
    pub assignee: Option<String>,
    pub created_by: String,
    /// The conversation the ticket was made from.
    pub conversation: Option<String>,
    /// Where its history (transcript) is read.
    pub transcript: Option<String>,
    pub escalation_level: i64,
    pub attachments: Vec<String>,
    pub sla: Option<SlaView>,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<Event>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes: Option<Vec<Note>>,
}

async fn view(state: &AppState, t: Ticket) -> AppResult<TicketView> {
    let sla = sla::view(state.store(), &t, now_ms()).await?;
    Ok(TicketView {
        transcript: t
            .conversation
            .as_ref()
            .map(|c| format!("/api/v1/conversations/{c}/messages")),
        id: t.id,
        title: t.title,
        description: t.description,
        kind: t.kind,
        priority: t.priority,
        status: t.status.as_str().to_string(),
        customer: t.customer,
        team: t.team,
        assignee: t.assignee,
        created_by: t.created_by,
        conversation: t.conversation,
        escalation_level: t.escalation_level,
        attachments: t.attachments,
        sla,
        created_at: t.created_at,
        updated_at: t.updated_at,
        events: None,
        notes: None,
    })
}

async fn create_ticket(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(body): ApiJson<NewTicket>,
) -> AppResult<(StatusCode, Json<TicketView>)> {
    caller.require_staff()?;
    let t = super::create(&state, &caller.0, body).await?;
    Ok((StatusCode::CREATED, Json(view(&state, t).await?)))
}

async fn ticket_from_conversation(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(conv): Path<String>,
    ApiJson(body): ApiJson<NewTicket>,
) -> AppResult<(StatusCode, Json<TicketView>)> {
    caller.require_staff()?;
    let t = super::create_from_conversation(&state, &caller.0, &conv, body).await?;
    Ok((StatusCode::CREATED, Json(view(&state, t).await?)))
}

async fn list_tickets(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> AppResult<Json<Page<TicketView>>> {
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let tickets = super::list(state.store(), &caller.0, &q).await?;
    let next_cursor = (tickets.len() as i64 == limit)
        .then(|| tickets.last().map(|t| t.id.clone()))
        .flatten();
    let mut items = Vec::with_capacity(tickets.len());
    for t in tickets {
        items.push(view(&state, t).await?);
    }
    Ok(Json(Page { items, next_cursor }))
}

async fn get_ticket(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> AppResult<Json<TicketView>> {
    let store = state.store();
    let t = super::visible(store, &caller.0, &id).await?;
    let mut v = view(&state, t).await?;
    v.events = Some(super::events(store, &caller.0, &id).await?);
    v.notes = Some(super::notes(store, &caller.0, &id).await?);
    Ok(Json(v))
}

async fn patch_ticket(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TicketPatch>,
) -> AppResult<Json<TicketView>> {
    let t = super::update(&state, &caller.0, &id, body).await?;
    Ok(Json(view(&state, t).await?))
}

async fn add_note(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<NewNote>,
) -> AppResult<(StatusCode, Json<Note>)> {
    let note = super::add_note(&state, &caller.0, &id, body).await?;
    Ok((StatusCode::CREATED, Json(note)))
}

async fn create_policy(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(body): ApiJson<NewPolicy>,
) -> AppResult<(StatusCode, Json<Policy>)> {
    caller.require_admin()?;
    let p = sla::create_policy(state.store(), body).await?;
    Ok((StatusCode::CREATED, Json(p)))
}

async fn list_policies(
    State(state): State<AppState>,
    caller: AuthUser,
) -> AppResult<Json<Page<Policy>>> {
    caller.require_staff()?;
    Ok(Json(Page {
        items: sla::list_policies(state.store()).await?,
        next_cursor: None,
    }))
}

async fn create_type(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(body): ApiJson<NewType>,
) -> AppResult<(StatusCode, Json<TicketType>)> {
    caller.require_admin()?;
    let t = types::create(state.store(), body).await?;
    Ok((StatusCode::CREATED, Json(t)))
}

async fn list_types(
    State(state): State<AppState>,
    caller: AuthUser,
) -> AppResult<Json<Page<TicketType>>> {
    caller.require_staff()?;
    Ok(Json(Page {
        items: types::list(state.store()).await?,
        next_cursor: None,
    }))
}

async fn patch_type(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TypePatch>,
) -> AppResult<Json<TicketType>> {
    caller.require_admin()?;
    Ok(Json(
        types::set_enabled(state.store(), &id, body.enabled).await?,
    ))
}
