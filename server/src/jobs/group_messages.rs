//! Scheduled and recurring group messages (定时发送): a staff member of a
//! group schedules a text once (`at`) or on a cron recurrence in a time zone;
//! each occurrence is a job whose handler posts the text into the group as
//! the scheduling user, through the same send path as any message, so
//! members receive it live and it gets its `seq` like any other.
//!
//! Exactly once per occurrence: the scheduler makes one job per occurrence
//! (unique key), and the handler sends with `client_msg_id = "job:<job id>"`,
//! so a job run again after its worker died finds the message already stored
//! instead of storing a second one.
//!
//! Who may do what: creating needs a staff account that is a member of the
//! group — also for supervisors and admins, because the message is sent in
//! the creator's name and only members can send; listing is open to staff
//! members and to supervisors and admins; cancelling to the creator, the
//! group's owner, supervisors and admins.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use switchboard_protocol::{limits, MessageKind, Role, UserRef};

use super::schedule::{self, NewSchedule, Schedule, When};
use super::{HandlerResult, Job, Settings};
use crate::auth::users;
use crate::conversations::messages::{self, SendInput};
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::store::Store;
use crate::util::now_ms;

/// The job (and schedule) kind of a scheduled group message.
pub const KIND: &str = "group_message";
/// Scheduled messages with an occurrence ahead that one group may have. Why
/// 100: far more than a team schedules by hand, and a runaway client cannot
/// fill the scheduler with one group's messages.
pub const MAX_PENDING_PER_GROUP: i64 = 100;
/// The zone of a schedule that names none.
pub const DEFAULT_TIMEZONE: &str = "UTC";

/// A request to schedule a message.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleInput {
    pub body: String,
    /// Once, at this time (ms since the epoch).
    pub at: Option<i64>,
    /// On every occurrence of this cron expression.
    pub cron: Option<String>,
    /// IANA zone of the cron fields (and of `at`, for display); default UTC.
    pub timezone: Option<String>,
}

/// A scheduled message as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduledMessage {
    pub id: String,
    pub group: String,
    pub body: String,
    pub at: Option<i64>,
    pub cron: Option<String>,
    pub timezone: String,
    /// The next occurrence; `null` once a one-shot message's time has come,
    /// or when cancelled.
    pub next_run_at: Option<i64>,
    pub created_by: Option<String>,
    pub created_at: i64,
    /// `false` once cancelled.
    pub enabled: bool,
}

/// What each occurrence's job carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payload {
    group: String,
    body: String,
    sender: String,
    /// Added by the scheduler: the schedule, to skip cancelled ones.
    #[serde(default)]
    schedule: Option<String>,
}

/// The API's view. `next_run_at` is computed for `now` rather than read from
/// the row, whose value runs up to [`schedule::LOOKAHEAD`] ahead of the
/// occurrences already handed to the job queue.
fn view(s: Schedule, now: i64) -> ScheduledMessage {
    let next_run_at = match (&s.cron, s.at) {
        _ if !s.enabled => None,
        (Some(expr), _) => schedule::parse_timezone(&s.timezone)
            .and_then(|tz| schedule::Recurrence::parse(expr, tz))
            .ok()
            .and_then(|r| r.next_after(now)),
        (None, Some(at)) => (at > now).then_some(at),
        (None, None) => None,
    };
    let body = s
        .payload
        .get("body")
        .and_then(|b| b.as_str())
        .unwrap_or_default()
        .to_string();
    ScheduledMessage {
        id: s.id,
        group: s.target_id.unwrap_or_default(),
        body,
        at: s.at,
        cron: s.cron,
        timezone: s.timezone,
        next_run_at,
        created_by: s.created_by,
        created_at: s.created_at,
        enabled: s.enabled,
    }
}

/// The caller's standing in a group.
struct GroupAccess {
    member: bool,
    owner: bool,
}

/// `not_found` unless `group` is a group; customers get `forbidden`.
async fn group_access(store: &Store, user: &UserRef, group: &str) -> AppResult<GroupAccess> {
    if !user.role.is_staff() {
        return Err(AppError::forbidden("this needs a staff account"));
    }
    let row = sqlx::query(
        "SELECT c.kind, c.owner_id, m.user_id AS member FROM conversations c \
         LEFT JOIN conversation_members m ON m.conv_id = c.id AND m.user_id = $2 \
         WHERE c.id = $1",
    )
    .bind(group)
    .bind(&user.id)
    .fetch_optional(store.read())
    .await?
    .ok_or_else(|| AppError::not_found("no such group"))?;
    let kind: String = row.try_get("kind")?;
    if kind != "group" {
        return Err(AppError::not_found("no such group"));
    }
    let owner: Option<String> = row.try_get("owner_id")?;
    let member: Option<String> = row.try_get("member")?;
    Ok(GroupAccess {
        member: member.is_some(),
        owner: owner.as_deref() == Some(user.id.as_str()),
    })
}

/// Schedules a message into `group`; nothing is stored when any check fails.
pub async fn create(
    state: &AppState,
    caller: &UserRef,
    group: &str,
    input: ScheduleInput,
) -> AppResult<ScheduledMessage> {
    let store = state.store();
    let access = group_access(store, caller, group).await?;
    if !access.member {
        return Err(AppError::forbidden(
            "scheduled messages are sent in your name, so only members of the group may schedule them",
        ));
    }
    let body = input.body.trim();
    if body.is_empty() || input.body.chars().count() > limits::MAX_BODY_CHARS {
        return Err(AppError::bad_request(format!(
            "body must be 1 to {} characters",
            limits::MAX_BODY_CHARS
        )));
    }
    let now = now_ms();
    let when = match (input.at, input.cron) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(AppError::bad_request("give exactly one of at and cron"))
        }
        (Some(at), None) if at <= now => {
            return Err(AppError::bad_request("at must be in the future"))
        }
        (Some(at), None) => When::At(at),
        (None, Some(cron)) => When::Cron(cron),
    };
    let timezone = input
        .timezone
        .unwrap_or_else(|| DEFAULT_TIMEZONE.to_string());
    if schedule::count_pending(store, KIND, group).await? >= MAX_PENDING_PER_GROUP {
        return Err(AppError::conflict(format!(
            "a group may have at most {MAX_PENDING_PER_GROUP} scheduled messages ahead; cancel some first"
        )));
    }
    let payload = Payload {
        group: group.to_string(),
        // Sent as written; only the emptiness check ignores whitespace.
        body: input.body.clone(),
        sender: caller.id.clone(),
        schedule: None,
    };
    let new = NewSchedule {
        kind: KIND.to_string(),
        target_id: Some(group.to_string()),
        when,
        timezone,
        payload: serde_json::to_value(&payload)
            .map_err(|e| AppError::internal(format!("payload: {e}")))?,
        created_by: Some(caller.id.clone()),
    };
    let created = schedule::create(store, &new, now).await?;
    // Make a near occurrence a job now rather than on the scheduler's next
    // tick; the tick would do the same, so a failure here only delays it.
    let settings = Settings::from_limits(&state.config().limits);
    if let Err(e) = schedule::advance(store, &created, now, settings.misfire).await {
        e.log();
    }
    tracing::info!(schedule = %created.id, group, "scheduled a group message");
    Ok(view(created, now))
}

/// The group's scheduled messages that are not cancelled, oldest first.
pub async fn list(
    state: &AppState,
    caller: &UserRef,
    group: &str,
) -> AppResult<Vec<ScheduledMessage>> {
    let store = state.store();
    let access = group_access(store, caller, group).await?;
    if !access.member && !caller.role.is_supervisor() {
        return Err(AppError::forbidden(
            "only members of the group, supervisors and admins may see its scheduled messages",
        ));
    }
    let now = now_ms();
    Ok(schedule::list_for_target(store, KIND, group)
        .await?
        .into_iter()
        .map(|s| view(s, now))
        .collect())
}

/// Cancels a scheduled message. Cancelling one already cancelled succeeds.
pub async fn cancel(state: &AppState, caller: &UserRef, id: &str) -> AppResult<()> {
    let store = state.store();
    let s = schedule::get(store, id)
        .await?
        .filter(|s| s.kind == KIND)
        .ok_or_else(|| AppError::not_found("no such scheduled message"))?;
    let group = s.target_id.clone().unwrap_or_default();
    let access = match group_access(store, caller, &group).await {
        Ok(a) => a,
        Err(e) if e.code() == switchboard_protocol::ErrorCode::NotFound => {
            return Err(AppError::not_found("no such scheduled message"))
        }
        Err(e) => return Err(e),
    };
    let creator = s.created_by.as_deref() == Some(caller.id.as_str());
    let overseer = matches!(caller.role, Role::Supervisor | Role::Admin);
    if !(creator || access.owner || overseer) {
        return Err(if access.member {
            AppError::forbidden(
                "only its creator, the group's owner, supervisors and admins may cancel a scheduled message",
            )
        } else {
            AppError::not_found("no such scheduled message")
        });
    }
    if schedule::cancel(store, id, &caller.id, now_ms()).await? {
        tracing::info!(schedule = %id, "cancelled a scheduled group message");
    }
    Ok(())
}

/// The job handler: posts one occurrence into the group.
pub async fn run(state: AppState, job: Job) -> HandlerResult {
    let internal = |e: AppError| {
        e.log();
        e.public_message()
    };
    let p: Payload = serde_json::from_value(job.payload.clone())
        .map_err(|e| format!("bad group message payload: {e}"))?;
    let store = state.store();
    if let Some(id) = &p.schedule {
        let live = schedule::get(store, id)
            .await
            .map_err(internal)?
            .is_some_and(|s| s.enabled);
        if !live {
            tracing::debug!(schedule = %id, "scheduled message cancelled; occurrence skipped");
            return Ok(());
        }
    }
    let sender = users::get_user(store, &p.sender)
        .await
        .map_err(internal)?
        .ok_or("the sender's account no longer exists")?;
    if sender.disabled {
        return Err("the sender's account is disabled".into());
    }
    let input = SendInput {
        conv: p.group,
        client_msg_id: format!("job:{}", job.id),
        kind: MessageKind::Text,
        body: Some(p.body),
        attachment: None,
    };
    messages::send_message(&state, &sender.as_ref(), None, input)
        .await
        .map_err(|e| {
            e.log();
            format!("sending failed: {}", e.public_message())
        })?;
    Ok(())
}
