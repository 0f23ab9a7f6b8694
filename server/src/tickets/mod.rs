//! Tickets (工单): work that outlives a conversation. Created by staff by
//! hand or from a service conversation (carrying the conversation, its
//! customer and team, and the SLA time the customer already waited), then
//! moved along open → processing → pending_confirmation → resolved → closed,
//! with reopen (resolved/closed → processing); any other move is `conflict`.
//! Staff add follow-up notes, internal or visible to the customer, transfer
//! (assignee, team), assign by hand and change the escalation level; every
//! change is a row of `ticket_events` with its time, and a `ticket` event to
//! the customer, the assignee and the creator.
//!
//! Who may do what: staff see and change every ticket (escalation needs a
//! supervisor or admin). Customers see and comment on their own tickets only
//! (anyone else's is `not_found`), see public notes only, and may confirm a
//! solution (pending_confirmation → resolved) or reopen (resolved/closed →
//! processing).
//!
//! `type` is 1 to 64 characters; while the catalogue ([`types`]) has any
//! type it must be an enabled one. A ticket created with a team and no
//! assignee goes to one of the team's agents (`auto_assignee`). A resolved
//! ticket the customer does not reopen is closed after
//! `limits.ticket_auto_close_s` by a durable job keyed
//! `ticket_auto_close:<ticket>:<resolved_at>`.
//!
//! Layout: this file (tickets, notes, events, who is told); [`sla`] (policies,
//! the business-time clock of each ticket, threshold jobs, breach
//! escalation); [`api`] (REST).

pub mod api;
pub mod sla;
pub mod types;

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use switchboard_protocol::{Role, ServerFrame, TicketInfo, UserRef};

use crate::bus::{Exclude, Target};
use crate::calendar::BusinessClock;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::store::Store;
use crate::util::{new_id, now_ms};

pub const PRIORITIES: &[&str] = &["urgent", "high", "medium", "low"];
/// Longest title. Why 200: a subject line, not a document.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest description or note. Why 10,000: several screens of text.
pub const MAX_TEXT_CHARS: usize = 10_000;
/// Longest type name.
pub const MAX_TYPE_CHARS: usize = 64;
/// Attachments one ticket may carry.
pub const MAX_ATTACHMENTS: usize = 20;

/// Where a ticket is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Open,
    Processing,
    PendingConfirmation,
    Resolved,
    Closed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Processing => "processing",
            Status::PendingConfirmation => "pending_confirmation",
            Status::Resolved => "resolved",
            Status::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "open" => Status::Open,
            "processing" => Status::Processing,
            "pending_confirmation" => Status::PendingConfirmation,
            "resolved" => Status::Resolved,
            "closed" => Status::Closed,
            _ => return None,
        })
    }

    /// Whether `self → to` is a move of the status flow.
    pub fn can_move_to(self, to: Status) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (Open, Processing)
                | (Open, Resolved)
                | (Processing, PendingConfirmation)
                | (Processing, Resolved)
                | (PendingConfirmation, Processing)
                | (PendingConfirmation, Resolved)
                | (Resolved, Closed)
                | (Resolved, Processing)
                | (Closed, Processing)
        )
    }

    /// Whether the SLA clock runs in this status.
    pub fn clock_runs(self) -> bool {
        matches!(self, Status::Open | Status::Processing)
    }

    pub fn is_done(self) -> bool {
        matches!(self, Status::Resolved | Status::Closed)
    }
}

/// A ticket row.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub id: String,
    pub title: String,
    pub description: String,
    pub kind: String,
    pub priority: String,
    pub status: Status,
    pub customer: String,
    pub team: Option<String>,
    pub assignee: Option<String>,
    pub created_by: String,
    pub conversation: Option<String>,
    pub escalation_level: i64,
    pub attachments: Vec<String>,
    pub sla_policy: Option<String>,
    pub clock: BusinessClock,
    pub sla_generation: i64,
    pub first_response_at: Option<i64>,
    pub first_response_met: Option<bool>,
    pub resolved_at: Option<i64>,
    pub resolution_met: Option<bool>,
    /// Business ms used when a customer's public note began waiting for a
    /// staff answer; `None` when nothing waits.
    pub next_response_from: Option<i64>,
    pub next_response_round: i64,
    pub next_response_met: Option<bool>,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLUMNS: &str = "id, title, description, type, priority, status, customer_id, team_id, \
    assignee_id, created_by, conv_id, escalation_level, attachments, sla_policy_id, sla_used_ms, \
    sla_since, sla_generation, first_response_at, first_response_met, resolved_at, resolution_met, \
    next_response_from, next_response_round, next_response_met, created_at, updated_at";

fn ticket_from_row(r: &AnyRow) -> AppResult<Ticket> {
    let status: String = r.try_get("status")?;
    let attachments: String = r.try_get("attachments")?;
    let flag = |v: Option<i64>| v.map(|v| v != 0);
    Ok(Ticket {
        id: r.try_get("id")?,
        title: r.try_get("title")?,
        description: r.try_get("description")?,
        kind: r.try_get("type")?,
        priority: r.try_get("priority")?,
        status: Status::parse(&status)
            .ok_or_else(|| AppError::internal(format!("bad ticket status {status:?}")))?,
        customer: r.try_get("customer_id")?,
        team: r.try_get("team_id")?,
        assignee: r.try_get("assignee_id")?,
        created_by: r.try_get("created_by")?,
        conversation: r.try_get("conv_id")?,
        escalation_level: r.try_get("escalation_level")?,
        attachments: serde_json::from_str(&attachments).unwrap_or_default(),
        sla_policy: r.try_get("sla_policy_id")?,
        clock: BusinessClock {
            used_ms: r.try_get("sla_used_ms")?,
            since: r.try_get("sla_since")?,
        },
        sla_generation: r.try_get("sla_generation")?,
        first_response_at: r.try_get("first_response_at")?,
        first_response_met: flag(r.try_get("first_response_met")?),
        resolved_at: r.try_get("resolved_at")?,
        resolution_met: flag(r.try_get("resolution_met")?),
        next_response_from: r.try_get("next_response_from")?,
        next_response_round: r.try_get("next_response_round")?,
        next_response_met: flag(r.try_get("next_response_met")?),
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

impl Ticket {
    pub fn info(&self) -> TicketInfo {
        TicketInfo {
            id: self.id.clone(),
            title: self.title.clone(),
            status: self.status.as_str().to_string(),
            priority: self.priority.clone(),
            assignee: self.assignee.clone(),
            customer: self.customer.clone(),
            updated_at: self.updated_at,
        }
    }
}

pub async fn load(store: &Store, id: &str) -> AppResult<Option<Ticket>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM tickets WHERE id = $1"))
        .bind(id)
        .fetch_optional(store.read())
        .await?;
    row.as_ref().map(ticket_from_row).transpose()
}

async fn load_in(conn: &mut AnyConnection, id: &str) -> AppResult<Option<Ticket>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM tickets WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(ticket_from_row).transpose()
}

/// The ticket as `user` may see it, or `not_found` (also for a customer's
/// look at someone else's ticket, so ids cannot be probed).
pub async fn visible(store: &Store, user: &UserRef, id: &str) -> AppResult<Ticket> {
    let t = load(store, id).await?;
    match t {
        Some(t) if user.role.is_staff() || t.customer == user.id => Ok(t),
        _ => Err(AppError::not_found("no such ticket")),
    }
}

/// Stores one history row.
pub async fn record(
    conn: &mut AnyConnection,
    ticket: &str,
    kind: &str,
    from: Option<&str>,
    to: Option<&str>,
    actor: Option<&str>,
    at: i64,
) -> AppResult<()> {
    sqlx::query(
        "INSERT INTO ticket_events (id, ticket_id, kind, from_value, to_value, actor_id, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(new_id("tev_"))
    .bind(ticket)
    .bind(kind)
    .bind(from)
    .bind(to)
    .bind(actor)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Sends the ticket's state to its customer, assignee and creator (and to
/// `also`, e.g. the assignee it was taken from).
pub fn announce(state: &AppState, t: &Ticket, also: &[&str]) {
    let frame = ServerFrame::Ticket { ticket: t.info() };
    let mut told: Vec<&str> = Vec::new();
    let people = [Some(t.customer.as_str()), t.assignee.as_deref()]
        .into_iter()
        .flatten()
        .chain([t.created_by.as_str()])
        .chain(also.iter().copied());
    for user in people {
        if !told.contains(&user) {
            told.push(user);
            state.deliver_frame(Target::User(user.to_string()), Exclude::Nobody, &frame);
        }
    }
}

fn check_text(field: &str, v: &str, min: usize, max: usize) -> AppResult<()> {
    let n = v.trim().chars().count();
    if n < min || v.chars().count() > max {
        return Err(AppError::bad_request(format!(
            "{field} must be {min} to {max} characters"
        )));
    }
    Ok(())
}

fn check_priority(p: &str) -> AppResult<()> {
    if PRIORITIES.contains(&p) {
        Ok(())
    } else {
        Err(AppError::bad_request(
            "priority must be urgent, high, medium or low",
        ))
    }
}

async fn user_role(store: &Store, id: &str) -> AppResult<Option<Role>> {
    let row = sqlx::query("SELECT role FROM users WHERE id = $1 AND disabled = 0")
        .bind(id)
        .fetch_optional(store.read())
        .await?;
    Ok(row
        .map(|r| r.try_get::<String, _>("role"))
        .transpose()?
        .and_then(|r| Role::parse(&r)))
}

async fn check_assignee(store: &Store, id: &str) -> AppResult<()> {
    match user_role(store, id).await? {
        Some(r) if r.is_staff() => Ok(()),
        _ => Err(AppError::bad_request(
            "assignee must be an enabled staff account",
        )),
    }
}

async fn check_team(store: &Store, id: &str) -> AppResult<()> {
    if crate::dispatch::teams::get(store, id).await?.is_none() {
        return Err(AppError::bad_request("no such team"));
    }
    Ok(())
}

/// What creating a ticket takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTicket {
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "medium")]
    pub priority: String,
    /// Required when created by hand; taken from the conversation otherwise.
    pub customer: Option<String>,
    pub team: Option<String>,
    pub assignee: Option<String>,
    #[serde(default)]
    pub attachments: Vec<String>,
}

fn medium() -> String {
    "medium".into()
}

/// Where a ticket made from a conversation comes from.
struct Origin {
    conv: String,
    customer: String,
    team: Option<String>,
    queued_at: i64,
}

/// Creates a ticket by hand (staff).
pub async fn create(state: &AppState, caller: &UserRef, input: NewTicket) -> AppResult<Ticket> {
    if !caller.role.is_staff() {
        return Err(AppError::forbidden("this needs a staff account"));
    }
    insert(state, caller, input, None).await
}

/// Creates a ticket from a service conversation the caller may see.
pub async fn create_from_conversation(
    state: &AppState,
    caller: &UserRef,
    conv: &str,
    input: NewTicket,
) -> AppResult<Ticket> {
    if !caller.role.is_staff() {
        return Err(AppError::forbidden("this needs a staff account"));
    }
    crate::conversations::visible_conversation(state.store(), caller, conv).await?;
    let row = sqlx::query(
        "SELECT kind, customer_id, team_id, queued_at, created_at FROM conversations WHERE id = $1",
    )
    .bind(conv)
    .fetch_one(state.store().read())
    .await?;
    let kind: String = row.try_get("kind")?;
    let customer: Option<String> = row.try_get("customer_id")?;
    let (Some(customer), true) = (customer, kind == "service") else {
        return Err(AppError::bad_request(
            "only a service conversation with a customer becomes a ticket",
        ));
    };
    if input.customer.as_deref().is_some_and(|c| c != customer) {
        return Err(AppError::bad_request(
            "customer is the conversation's customer; leave it out",
        ));
    }
    let queued_at: Option<i64> = row.try_get("queued_at")?;
    let origin = Origin {
        conv: conv.to_string(),
        customer,
        team: row.try_get("team_id")?,
        queued_at: queued_at.unwrap_or(row.try_get("created_at")?),
    };
    insert(state, caller, input, Some(origin)).await
}

async fn insert(
    state: &AppState,
    caller: &UserRef,
    input: NewTicket,
    origin: Option<Origin>,
) -> AppResult<Ticket> {
    let store = state.store();
    check_text("title", &input.title, 1, MAX_TITLE_CHARS)?;
    check_text("description", &input.description, 0, MAX_TEXT_CHARS)?;
    check_text("type", &input.kind, 1, MAX_TYPE_CHARS)?;
    types::check(store, input.kind.trim()).await?;
    check_priority(&input.priority)?;
    let customer = match (&origin, &input.customer) {
        (Some(o), _) => o.customer.clone(),
        (None, Some(c)) => {
            if user_role(store, c).await? != Some(Role::Customer) {
                return Err(AppError::bad_request("customer must be a customer account"));
            }
            c.clone()
        }
        (None, None) => return Err(AppError::bad_request("customer is required")),
    };
    let team = input
        .team
        .clone()
        .or_else(|| origin.as_ref().and_then(|o| o.team.clone()));
    if let Some(t) = &team {
        check_team(store, t).await?;
    }
    if let Some(a) = &input.assignee {
        check_assignee(store, a).await?;
    }
    // Without an assignee, a team's ticket goes to one of its agents.
    let (assignee, auto) = match (&input.assignee, &team) {
        (Some(a), _) => (Some(a.clone()), false),
        (None, Some(team)) => (auto_assignee(store, team).await?, true),
        (None, None) => (None, false),
    };
    if input.attachments.len() > MAX_ATTACHMENTS {
        return Err(AppError::bad_request(format!(
            "at most {MAX_ATTACHMENTS} attachments"
        )));
    }
    for a in &input.attachments {
        let row = sqlx::query("SELECT owner_id FROM uploads WHERE id = $1")
            .bind(a)
            .fetch_optional(store.read())
            .await?;
        if row.is_none() {
            return Err(AppError::bad_request(format!("no such upload {a}")));
        }
    }
    let now = now_ms();
    let policy =
        sla::policy_for(store, &input.priority, input.kind.trim(), team.as_deref()).await?;
    let hours = sla::team_hours(store, team.as_deref()).await?;
    // The time the customer already waited counts against the targets.
    let used = origin.as_ref().map_or(0, |o| {
        crate::calendar::business_ms(hours.as_ref(), o.queued_at, now)
    });
    let id = new_id("tk_");
    let mut tx = store.write().begin().await?;
    sqlx::query(
        "INSERT INTO tickets (id, title, description, type, priority, status, customer_id, team_id, \
         assignee_id, created_by, conv_id, escalation_level, attachments, sla_policy_id, sla_used_ms, \
         sla_since, sla_generation, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'open', $6, $7, $8, $9, $10, 0, $11, $12, $13, $14, 1, $14, $14)",
    )
    .bind(&id)
    .bind(input.title.trim())
    .bind(&input.description)
    .bind(input.kind.trim())
    .bind(&input.priority)
    .bind(&customer)
    .bind(&team)
    .bind(&assignee)
    .bind(&caller.id)
    .bind(origin.as_ref().map(|o| o.conv.as_str()))
    .bind(serde_json::to_string(&input.attachments).unwrap_or_else(|_| "[]".into()))
    .bind(policy.as_ref().map(|p| p.id.as_str()))
    .bind(used)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    record(
        &mut tx,
        &id,
        "created",
        origin.as_ref().map(|o| o.conv.as_str()),
        Some("open"),
        Some(&caller.id),
        now,
    )
    .await?;
    if let Some(a) = &assignee {
        // By the team's strategy: no actor.
        let actor = (!auto).then_some(caller.id.as_str());
        record(&mut tx, &id, "assigned", None, Some(a), actor, now).await?;
    }
    let t = load_in(&mut tx, &id)
        .await?
        .ok_or_else(|| AppError::internal("ticket vanished"))?;
    sla::plan(&mut tx, &t, policy.as_ref(), hours.as_ref(), now).await?;
    tx.commit().await?;
    tracing::info!(ticket = %id, conv = ?origin.as_ref().map(|o| &o.conv), "ticket created");
    announce(state, &t, &[]);
    Ok(t)
}

/// The agent a new ticket of `team` gets when none is named: the team's
/// members with team role `agent` and an enabled account are the candidates.
/// A `round_robin` team takes them in user-id order, starting after the
/// assignee of the team's newest assigned ticket; every other strategy
/// (`least_load`, `skill`, `weighted`) takes the one with the fewest open
/// tickets (not resolved or closed), ties to the lowest user id. Ticket
/// counts only — the live chat engine's loads are not used.
async fn auto_assignee(store: &Store, team_id: &str) -> AppResult<Option<String>> {
    use crate::dispatch::engine::Strategy;
    let Some(team) = crate::dispatch::teams::get(store, team_id).await? else {
        return Ok(None);
    };
    let mut conn = store.read().acquire().await?;
    if team.strategy != Strategy::RoundRobin {
        return sla::least_loaded_agent(&mut conn, team_id, None).await;
    }
    let rows = sqlx::query(
        "SELECT m.user_id FROM team_members m JOIN users u ON u.id = m.user_id \
         WHERE m.team_id = $1 AND m.role = 'agent' AND u.disabled = 0 ORDER BY m.user_id",
    )
    .bind(team_id)
    .fetch_all(&mut *conn)
    .await?;
    let agents: Vec<String> = rows
        .iter()
        .map(|r| r.try_get("user_id"))
        .collect::<Result<_, _>>()?;
    let last: Option<String> = sqlx::query(
        "SELECT assignee_id FROM tickets WHERE team_id = $1 AND assignee_id IS NOT NULL \
         ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    .bind(team_id)
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| r.try_get("assignee_id"))
    .transpose()?;
    let next = match &last {
        Some(last) => agents.iter().find(|a| *a > last).or(agents.first()),
        None => agents.first(),
    };
    Ok(next.cloned())
}

/// The job kind that closes a resolved ticket after
/// `limits.ticket_auto_close_s`.
pub const AUTO_CLOSE_KIND: &str = "ticket_auto_close";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AutoClose {
    ticket: String,
    /// The resolution it belongs to: a ticket reopened and resolved again
    /// has a new one (and a new job).
    resolved_at: i64,
}

/// The job handler: closes the ticket if it is still in the resolution the
/// job was planned for; otherwise (reopened, closed by hand) does nothing.
pub async fn run_auto_close(state: AppState, job: crate::jobs::Job) -> crate::jobs::HandlerResult {
    let p: AutoClose = serde_json::from_value(job.payload.clone())
        .map_err(|e| format!("bad auto-close payload: {e}"))?;
    auto_close(&state, &p).await.map_err(|e| {
        e.log();
        e.public_message()
    })
}

async fn auto_close(state: &AppState, p: &AutoClose) -> AppResult<()> {
    let now = now_ms();
    let mut tx = state.store().write().begin().await?;
    let Some(t) = load_in(&mut tx, &p.ticket).await? else {
        return Ok(());
    };
    if t.status != Status::Resolved || t.resolved_at != Some(p.resolved_at) {
        return Ok(());
    }
    let done = sqlx::query(
        "UPDATE tickets SET status = 'closed', sla_generation = sla_generation + 1, \
         updated_at = $2 WHERE id = $1 AND status = 'resolved' AND sla_generation = $3",
    )
    .bind(&t.id)
    .bind(now)
    .bind(t.sla_generation)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(());
    }
    record(
        &mut tx,
        &t.id,
        "status",
        Some("resolved"),
        Some("closed"),
        None,
        now,
    )
    .await?;
    record(&mut tx, &t.id, "auto_closed", None, None, None, now).await?;
    let after = load_in(&mut tx, &t.id)
        .await?
        .ok_or_else(|| AppError::internal("ticket vanished"))?;
    tx.commit().await?;
    tracing::info!(ticket = %t.id, "resolved ticket closed automatically");
    announce(state, &after, &[]);
    Ok(())
}

/// A change asked for with PATCH; absent fields stay.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketPatch {
    pub status: Option<String>,
    pub priority: Option<String>,
    pub assignee: Option<String>,
    pub team: Option<String>,
    pub escalation_level: Option<i64>,
}

/// Applies a change; every field that changes is one history row.
pub async fn update(
    state: &AppState,
    caller: &UserRef,
    id: &str,
    patch: TicketPatch,
) -> AppResult<Ticket> {
    let store = state.store();
    let current = visible(store, caller, id).await?;
    let staff = caller.role.is_staff();
    if !staff {
        // Customers confirm a solution or reopen, nothing else.
        let allowed = patch.priority.is_none()
            && patch.assignee.is_none()
            && patch.team.is_none()
            && patch.escalation_level.is_none()
            && matches!(
                (current.status, patch.status.as_deref()),
                (Status::PendingConfirmation, Some("resolved"))
                    | (Status::Resolved | Status::Closed, Some("processing"))
            );
        if !allowed {
            return Err(AppError::forbidden(
                "customers may only confirm a solution (resolved) or reopen (processing)",
            ));
        }
    }
    let status = patch
        .status
        .as_deref()
        .map(|s| {
            Status::parse(s).ok_or_else(|| {
                AppError::bad_request(
                    "status must be open, processing, pending_confirmation, resolved or closed",
                )
            })
        })
        .transpose()?;
    if let Some(p) = &patch.priority {
        check_priority(p)?;
    }
    if let Some(a) = &patch.assignee {
        check_assignee(store, a).await?;
    }
    if let Some(t) = &patch.team {
        check_team(store, t).await?;
    }
    if let Some(level) = patch.escalation_level {
        if !caller.role.is_supervisor() {
            return Err(AppError::forbidden(
                "changing the escalation level needs a supervisor or administrator",
            ));
        }
        if !(0..=10).contains(&level) {
            return Err(AppError::bad_request("escalation_level must be 0 to 10"));
        }
    }
    let now = now_ms();
    let mut tx = store.write().begin().await?;
    // Read again inside the transaction: the status move is checked against
    // the row as it is now, and the update is guarded by it.
    let t = load_in(&mut tx, id)
        .await?
        .ok_or_else(|| AppError::not_found("no such ticket"))?;
    if let Some(to) = status {
        if !t.status.can_move_to(to) {
            return Err(AppError::conflict(format!(
                "a ticket cannot go from {} to {}",
                t.status.as_str(),
                to.as_str()
            )));
        }
    }
    let old_hours = sla::team_hours(store, t.team.as_deref()).await?;
    let new_status = status.unwrap_or(t.status);
    let priority = patch.priority.clone().unwrap_or(t.priority.clone());
    let team = patch.team.clone().or(t.team.clone());
    let assignee = patch.assignee.clone().or(t.assignee.clone());
    let level = patch.escalation_level.unwrap_or(t.escalation_level);
    let new_hours = sla::team_hours(store, team.as_deref()).await?;
    let policy = if priority != t.priority || team != t.team {
        sla::policy_for(store, &priority, &t.kind, team.as_deref()).await?
    } else {
        match &t.sla_policy {
            Some(p) => sla::policy(store, p).await?,
            None => None,
        }
    };
    // The clock is stopped under the old calendar and, if it runs in the
    // new status, started again now: a new plan, a new generation.
    let mut clock = t.clock;
    clock.pause(old_hours.as_ref(), now);
    if new_status.clock_runs() {
        clock.resume(now);
    }
    let mut first_response_at = t.first_response_at;
    let mut first_response_met = t.first_response_met;
    let mut resolved_at = t.resolved_at;
    let mut resolution_met = t.resolution_met;
    if let Some(p) = &policy {
        if new_status == Status::Resolved && !t.status.is_done() {
            resolved_at = Some(now);
            resolution_met.get_or_insert(clock.used_ms <= p.resolution_s * 1000);
            // Resolving answers the customer too.
            if first_response_at.is_none() {
                first_response_at = Some(now);
                first_response_met.get_or_insert(clock.used_ms <= p.first_response_s * 1000);
            }
        }
    } else if new_status == Status::Resolved && !t.status.is_done() {
        resolved_at = Some(now);
    }
    if new_status == Status::Processing && t.status.is_done() {
        // Reopened: resolution is open again; a missed target stays missed.
        resolved_at = None;
        if resolution_met == Some(true) {
            resolution_met = None;
        }
    }
    let flag = |b: Option<bool>| b.map(i64::from);
    let done = sqlx::query(
        "UPDATE tickets SET status = $2, priority = $3, team_id = $4, assignee_id = $5, \
         escalation_level = $6, sla_policy_id = $7, sla_used_ms = $8, sla_since = $9, \
         sla_generation = sla_generation + 1, first_response_at = $10, first_response_met = $11, \
         resolved_at = $12, resolution_met = $13, updated_at = $14 \
         WHERE id = $1 AND status = $15 AND sla_generation = $16",
    )
    .bind(id)
    .bind(new_status.as_str())
    .bind(&priority)
    .bind(&team)
    .bind(&assignee)
    .bind(level)
    .bind(policy.as_ref().map(|p| p.id.as_str()))
    .bind(clock.used_ms)
    .bind(clock.since)
    .bind(first_response_at)
    .bind(flag(first_response_met))
    .bind(resolved_at)
    .bind(flag(resolution_met))
    .bind(now)
    .bind(t.status.as_str())
    .bind(t.sla_generation)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        return Err(AppError::conflict(
            "the ticket changed meanwhile; read it again",
        ));
    }
    let actor = Some(caller.id.as_str());
    let changes = [
        ("status", Some(t.status.as_str()), Some(new_status.as_str())),
        (
            "priority",
            Some(t.priority.as_str()),
            Some(priority.as_str()),
        ),
        ("team", t.team.as_deref(), team.as_deref()),
        ("assigned", t.assignee.as_deref(), assignee.as_deref()),
    ];
    for (kind, from, to) in changes {
        if from != to {
            record(&mut tx, id, kind, from, to, actor, now).await?;
        }
    }
    if level != t.escalation_level {
        let (from, to) = (t.escalation_level.to_string(), level.to_string());
        record(&mut tx, id, "escalated", Some(&from), Some(&to), actor, now).await?;
    }
    let t2 = load_in(&mut tx, id)
        .await?
        .ok_or_else(|| AppError::internal("ticket vanished"))?;
    sla::plan(&mut tx, &t2, policy.as_ref(), new_hours.as_ref(), now).await?;
    let auto_close_s = state.config().limits.ticket_auto_close_s as i64;
    if let (Status::Resolved, Some(resolved_at), true) =
        (t2.status, t2.resolved_at, auto_close_s > 0)
    {
        if !t.status.is_done() {
            let payload = serde_json::to_value(AutoClose {
                ticket: t2.id.clone(),
                resolved_at,
            })
            .map_err(|e| AppError::internal(format!("payload: {e}")))?;
            let job = crate::jobs::NewJob::new(
                AUTO_CLOSE_KIND,
                payload,
                resolved_at + auto_close_s * 1000,
            )
            .unique(format!("ticket_auto_close:{}:{resolved_at}", t2.id));
            crate::jobs::store::enqueue_in(&mut tx, &job, now).await?;
        }
    }
    tx.commit().await?;
    let previous = t
        .assignee
        .as_deref()
        .filter(|p| Some(*p) != t2.assignee.as_deref());
    announce(state, &t2, previous.as_slice());
    Ok(t2)
}

/// A follow-up note.
#[derive(Debug, Clone, Serialize)]
pub struct Note {
    pub id: String,
    pub author: String,
    pub body: String,
    /// `internal` (staff only) or `public` (the customer sees it too).
    pub visibility: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewNote {
    pub body: String,
    /// `internal` or `public`; staff default to internal, customers' notes
    /// are always public.
    pub visibility: Option<String>,
}

/// Adds a note. The first public note by staff is the first response.
pub async fn add_note(
    state: &AppState,
    caller: &UserRef,
    id: &str,
    input: NewNote,
) -> AppResult<Note> {
    let store = state.store();
    let t = visible(store, caller, id).await?;
    check_text("body", &input.body, 1, MAX_TEXT_CHARS)?;
    let visibility = match (caller.role.is_staff(), input.visibility.as_deref()) {
        (true, None | Some("internal")) => "internal",
        (_, Some("public")) | (false, None) => "public",
        (false, Some("internal")) => {
            return Err(AppError::forbidden("customers' notes are public"))
        }
        _ => {
            return Err(AppError::bad_request(
                "visibility must be internal or public",
            ))
        }
    };
    let now = now_ms();
    let note = Note {
        id: new_id("tn_"),
        author: caller.id.clone(),
        body: input.body,
        visibility: visibility.to_string(),
        created_at: now,
    };
    let mut tx = store.write().begin().await?;
    sqlx::query(
        "INSERT INTO ticket_notes (id, ticket_id, author_id, body, visibility, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&note.id)
    .bind(id)
    .bind(&note.author)
    .bind(&note.body)
    .bind(&note.visibility)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    record(
        &mut tx,
        id,
        "note",
        None,
        Some(visibility),
        Some(&caller.id),
        now,
    )
    .await?;
    if caller.role.is_staff() && visibility == "public" && t.first_response_at.is_none() {
        let hours = sla::team_hours(store, t.team.as_deref()).await?;
        let met = match &t.sla_policy {
            Some(p) => sla::policy(store, p).await?.map(|p| {
                i64::from(t.clock.elapsed(hours.as_ref(), now) <= p.first_response_s * 1000)
            }),
            None => None,
        };
        sqlx::query(
            "UPDATE tickets SET first_response_at = $2, \
             first_response_met = COALESCE(first_response_met, $3), updated_at = $2 \
             WHERE id = $1 AND first_response_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .bind(met)
        .execute(&mut *tx)
        .await?;
        record(
            &mut tx,
            id,
            "first_response",
            None,
            None,
            Some(&caller.id),
            now,
        )
        .await?;
    } else if caller.role.is_staff() && visibility == "public" && t.next_response_from.is_some() {
        // The answer to a waiting customer note: the next response.
        let hours = sla::team_hours(store, t.team.as_deref()).await?;
        let waited = t.clock.elapsed(hours.as_ref(), now) - t.next_response_from.unwrap_or(0);
        let met = match &t.sla_policy {
            Some(p) => sla::policy(store, p)
                .await?
                .and_then(|p| p.next_response_s)
                .map(|s| i64::from(waited <= s * 1000)),
            None => None,
        };
        sqlx::query(
            "UPDATE tickets SET next_response_from = NULL, \
             next_response_met = COALESCE(next_response_met, $3), updated_at = $2 WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .bind(met)
        .execute(&mut *tx)
        .await?;
        record(
            &mut tx,
            id,
            "next_response",
            None,
            None,
            Some(&caller.id),
            now,
        )
        .await?;
    } else if !caller.role.is_staff()
        && t.first_response_at.is_some()
        && t.next_response_from.is_none()
    {
        // A customer's note after the first response waits for the next one.
        let hours = sla::team_hours(store, t.team.as_deref()).await?;
        sqlx::query(
            "UPDATE tickets SET next_response_from = $3, \
             next_response_round = next_response_round + 1, next_response_met = NULL, \
             updated_at = $2 WHERE id = $1 AND next_response_from IS NULL",
        )
        .bind(id)
        .bind(now)
        .bind(t.clock.elapsed(hours.as_ref(), now))
        .execute(&mut *tx)
        .await?;
        let t2 = load_in(&mut tx, id)
            .await?
            .ok_or_else(|| AppError::internal("ticket vanished"))?;
        let policy = match &t2.sla_policy {
            Some(p) => sla::policy(store, p).await?,
            None => None,
        };
        sla::plan(&mut tx, &t2, policy.as_ref(), hours.as_ref(), now).await?;
    } else {
        sqlx::query("UPDATE tickets SET updated_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    let t2 = load_in(&mut tx, id)
        .await?
        .ok_or_else(|| AppError::internal("ticket vanished"))?;
    tx.commit().await?;
    announce(state, &t2, &[]);
    Ok(note)
}

/// The notes `user` may see, oldest first.
pub async fn notes(store: &Store, user: &UserRef, id: &str) -> AppResult<Vec<Note>> {
    let rows = sqlx::query(
        "SELECT id, author_id, body, visibility, created_at FROM ticket_notes \
         WHERE ticket_id = $1 AND ($2 = 1 OR visibility = 'public') ORDER BY created_at, id",
    )
    .bind(id)
    .bind(i64::from(user.role.is_staff()))
    .fetch_all(store.read())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Note {
                id: r.try_get("id")?,
                author: r.try_get("author_id")?,
                body: r.try_get("body")?,
                visibility: r.try_get("visibility")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

/// One history row.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub kind: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub actor: Option<String>,
    pub at: i64,
}

/// The ticket's history, oldest first. Customers do not see internal notes
/// being added, nor SLA and escalation rows.
pub async fn events(store: &Store, user: &UserRef, id: &str) -> AppResult<Vec<Event>> {
    let rows = sqlx::query(
        "SELECT kind, from_value, to_value, actor_id, at FROM ticket_events \
         WHERE ticket_id = $1 ORDER BY at, id",
    )
    .bind(id)
    .fetch_all(store.read())
    .await?;
    let staff = user.role.is_staff();
    let mut out = Vec::new();
    for r in rows {
        let e = Event {
            kind: r.try_get("kind")?,
            from: r.try_get("from_value")?,
            to: r.try_get("to_value")?,
            actor: r.try_get("actor_id")?,
            at: r.try_get("at")?,
        };
        let hidden = matches!(e.kind.as_str(), "sla_warning" | "sla_breach" | "escalated")
            || (e.kind == "note" && e.to.as_deref() == Some("internal"));
        if staff || !hidden {
            out.push(e);
        }
    }
    Ok(out)
}

/// List filters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub status: Option<String>,
    pub assignee: Option<String>,
    pub customer: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// Tickets newest first; customers get their own only.
pub async fn list(store: &Store, user: &UserRef, q: &ListQuery) -> AppResult<Vec<Ticket>> {
    if let Some(s) = &q.status {
        Status::parse(s).ok_or_else(|| AppError::bad_request("unknown status"))?;
    }
    let customer = if user.role.is_staff() {
        q.customer.clone()
    } else {
        Some(user.id.clone())
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM tickets WHERE ($1 IS NULL OR status = $1) \
         AND ($2 IS NULL OR assignee_id = $2) AND ($3 IS NULL OR customer_id = $3) \
         AND ($4 IS NULL OR id < $4) ORDER BY id DESC LIMIT $5"
    ))
    .bind(&q.status)
    .bind(&q.assignee)
    .bind(&customer)
    .bind(&q.cursor)
    .bind(limit)
    .fetch_all(store.read())
    .await?;
    rows.iter().map(ticket_from_row).collect()
}
