//! SLA: policies by priority (and optionally team) with a first-response and
//! a resolution target in seconds of business time; the clock of each ticket
//! ([`BusinessClock`] under the team's working hours, none = 24/7) runs while
//! the ticket is open or processing, pauses while pending_confirmation and
//! stops once resolved or closed.
//!
//! Every plan of the clock (creation, any change) gets a new generation and
//! enqueues, for each open target and each threshold not yet fired (50 %,
//! 80 %, 100 %), a durable job at the instant the clock reaches it, keyed
//! `sla:<ticket>:<target>:<threshold>:<generation>`. A job of an older
//! generation finds the generation changed and does nothing; a threshold
//! fires at most once per ticket (`ticket_sla_fired`), so re-planning after a
//! pause never sends twice. Firing sends `sla` events to the assignee and the
//! supervisors — the team's supervisors (`team_members.role = supervisor`),
//! or every supervisor account when the ticket has no team or the team none.
//! The breach (100 %) also stores the target as missed, raises the
//! escalation level by one and posts a system message into the policy's
//! `escalation_group`.

use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row};
use switchboard_protocol::{ServerFrame, SlaKind};

use super::{load_in, record, Ticket, PRIORITIES};
use crate::bus::{Exclude, Target};
use crate::calendar::Hours;
use crate::conversations::messages;
use crate::error::{AppError, AppResult};
use crate::jobs::{store as jobs_store, HandlerResult, Job, NewJob};
use crate::state::AppState;
use crate::store::Store;
use crate::util::{new_id, now_ms};

/// The job kind of an SLA threshold.
pub const KIND: &str = "sla";
/// Warning thresholds and the breach, in percent of a target.
pub const THRESHOLDS: &[i64] = &[50, 80, 100];
pub const TARGETS: &[&str] = &["first_response", "resolution"];
/// Longest target. Why one year: longer is a typo.
pub const MAX_TARGET_S: i64 = 366 * 24 * 3600;

/// An SLA policy.
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub id: String,
    pub priority: String,
    pub team: Option<String>,
    pub first_response_s: i64,
    pub resolution_s: i64,
    pub escalation_group: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPolicy {
    pub priority: String,
    pub team: Option<String>,
    pub first_response_s: i64,
    pub resolution_s: i64,
    pub escalation_group: Option<String>,
}

const POLICY_COLUMNS: &str =
    "id, priority, team_id, first_response_s, resolution_s, escalation_group, created_at";

fn policy_from_row(r: &sqlx::any::AnyRow) -> AppResult<Policy> {
    Ok(Policy {
        id: r.try_get("id")?,
        priority: r.try_get("priority")?,
        team: r.try_get("team_id")?,
        first_response_s: r.try_get("first_response_s")?,
        resolution_s: r.try_get("resolution_s")?,
        escalation_group: r.try_get("escalation_group")?,
        created_at: r.try_get("created_at")?,
    })
}

/// Creates a policy (admins). Tickets created or re-prioritised afterwards use it.
pub async fn create_policy(store: &Store, input: NewPolicy) -> AppResult<Policy> {
    if !PRIORITIES.contains(&input.priority.as_str()) {
        return Err(AppError::bad_request(
            "priority must be urgent, high, medium or low",
        ));
    }
    for (name, v) in [
        ("first_response_s", input.first_response_s),
        ("resolution_s", input.resolution_s),
    ] {
        if !(1..=MAX_TARGET_S).contains(&v) {
            return Err(AppError::bad_request(format!(
                "{name} must be 1 to {MAX_TARGET_S} seconds"
            )));
        }
    }
    if let Some(t) = &input.team {
        if crate::dispatch::teams::get(store, t).await?.is_none() {
            return Err(AppError::bad_request("no such team"));
        }
    }
    if let Some(g) = &input.escalation_group {
        let row = sqlx::query("SELECT kind FROM conversations WHERE id = $1")
            .bind(g)
            .fetch_optional(store.read())
            .await?;
        let kind: Option<String> = row.map(|r| r.try_get("kind")).transpose()?;
        if kind.as_deref() != Some("group") {
            return Err(AppError::bad_request("escalation_group must be a group"));
        }
    }
    let p = Policy {
        id: new_id("slp_"),
        priority: input.priority,
        team: input.team,
        first_response_s: input.first_response_s,
        resolution_s: input.resolution_s,
        escalation_group: input.escalation_group,
        created_at: now_ms(),
    };
    sqlx::query(&format!(
        "INSERT INTO sla_policies ({POLICY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
    ))
    .bind(&p.id)
    .bind(&p.priority)
    .bind(&p.team)
    .bind(p.first_response_s)
    .bind(p.resolution_s)
    .bind(&p.escalation_group)
    .bind(p.created_at)
    .execute(store.write())
    .await?;
    Ok(p)
}

pub async fn list_policies(store: &Store) -> AppResult<Vec<Policy>> {
    let rows = sqlx::query(&format!(
        "SELECT {POLICY_COLUMNS} FROM sla_policies ORDER BY created_at, id"
    ))
    .fetch_all(store.read())
    .await?;
    rows.iter().map(policy_from_row).collect()
}

pub async fn policy(store: &Store, id: &str) -> AppResult<Option<Policy>> {
    let row = sqlx::query(&format!(
        "SELECT {POLICY_COLUMNS} FROM sla_policies WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(store.read())
    .await?;
    row.as_ref().map(policy_from_row).transpose()
}

/// The policy of a priority and team: the team's own, else the one for all
/// teams; the newest when there are several.
pub async fn policy_for(
    store: &Store,
    priority: &str,
    team: Option<&str>,
) -> AppResult<Option<Policy>> {
    let row = sqlx::query(&format!(
        "SELECT {POLICY_COLUMNS} FROM sla_policies WHERE priority = $1 \
         AND (team_id IS NULL OR team_id = $2) \
         ORDER BY CASE WHEN team_id IS NULL THEN 1 ELSE 0 END, created_at DESC, id DESC LIMIT 1"
    ))
    .bind(priority)
    .bind(team)
    .fetch_optional(store.read())
    .await?;
    row.as_ref().map(policy_from_row).transpose()
}

/// The team's working hours; `None` (24/7) without a team or a calendar.
pub async fn team_hours(store: &Store, team: Option<&str>) -> AppResult<Option<Hours>> {
    let Some(team) = team else { return Ok(None) };
    Ok(crate::dispatch::teams::get(store, team)
        .await?
        .and_then(|t| t.working_hours)
        .and_then(|c| c.compile().ok()))
}

fn target_s(p: &Policy, target: &str) -> i64 {
    if target == "first_response" {
        p.first_response_s
    } else {
        p.resolution_s
    }
}

fn target_open(t: &Ticket, target: &str) -> bool {
    if target == "first_response" {
        t.first_response_at.is_none() && t.first_response_met.is_none()
    } else {
        t.resolved_at.is_none() && t.resolution_met.is_none()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payload {
    ticket: String,
    target: String,
    threshold: i64,
    generation: i64,
}

/// Enqueues the threshold jobs of the ticket's current generation, inside
/// the transaction that made it.
pub async fn plan(
    conn: &mut AnyConnection,
    t: &Ticket,
    policy: Option<&Policy>,
    hours: Option<&Hours>,
    now: i64,
) -> AppResult<()> {
    let Some(p) = policy else { return Ok(()) };
    if t.clock.since.is_none() {
        return Ok(());
    }
    let rows = sqlx::query("SELECT target, threshold FROM ticket_sla_fired WHERE ticket_id = $1")
        .bind(&t.id)
        .fetch_all(&mut *conn)
        .await?;
    let fired: Vec<(String, i64)> = rows
        .iter()
        .map(|r| Ok((r.try_get("target")?, r.try_get("threshold")?)))
        .collect::<AppResult<_>>()?;
    for target in TARGETS {
        if !target_open(t, target) {
            continue;
        }
        let full_ms = target_s(p, target) * 1000;
        for th in THRESHOLDS {
            if fired.iter().any(|(g, h)| g == target && h == th) {
                continue;
            }
            let Some(run_at) = t.clock.due_at(hours, full_ms * th / 100) else {
                continue;
            };
            let payload = Payload {
                ticket: t.id.clone(),
                target: target.to_string(),
                threshold: *th,
                generation: t.sla_generation,
            };
            let job = NewJob::new(
                KIND,
                serde_json::to_value(&payload)
                    .map_err(|e| AppError::internal(format!("payload: {e}")))?,
                run_at.max(now),
            )
            .unique(format!("sla:{}:{target}:{th}:{}", t.id, t.sla_generation));
            jobs_store::enqueue_in(conn, &job, now).await?;
        }
    }
    Ok(())
}

/// One target's standing, as the ticket API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetView {
    pub target_s: i64,
    /// Business time used so far.
    pub used_ms: i64,
    /// Business time left (negative once breached).
    pub remaining_ms: i64,
    /// When it falls due at the current pace; `null` while the clock is
    /// paused or stopped, or when the target is done.
    pub due_at: Option<i64>,
    /// `null` while open, then whether it was met.
    pub met: Option<bool>,
}

/// The SLA part of a ticket view.
#[derive(Debug, Clone, Serialize)]
pub struct SlaView {
    pub policy: String,
    /// Whether the clock is stopped (pending_confirmation, resolved, closed).
    pub paused: bool,
    pub first_response: TargetView,
    pub resolution: TargetView,
}

pub async fn view(store: &Store, t: &Ticket, now: i64) -> AppResult<Option<SlaView>> {
    let Some(pid) = &t.sla_policy else {
        return Ok(None);
    };
    let Some(p) = policy(store, pid).await? else {
        return Ok(None);
    };
    let hours = team_hours(store, t.team.as_deref()).await?;
    let used = t.clock.elapsed(hours.as_ref(), now);
    let one = |target: &str, met: Option<bool>| {
        let full = target_s(&p, target) * 1000;
        let open = target_open(t, target);
        TargetView {
            target_s: target_s(&p, target),
            used_ms: used,
            remaining_ms: full - used,
            due_at: if open {
                t.clock.due_at(hours.as_ref(), full)
            } else {
                None
            },
            met,
        }
    };
    Ok(Some(SlaView {
        policy: p.id.clone(),
        paused: t.clock.since.is_none(),
        first_response: one("first_response", t.first_response_met),
        resolution: one("resolution", t.resolution_met),
    }))
}

/// Who hears about a ticket's SLA: its team's supervisors, or every
/// supervisor account when there is no team or it has none.
async fn supervisors(store: &Store, team: Option<&str>) -> AppResult<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    if let Some(team) = team {
        let rows = sqlx::query(
            "SELECT user_id FROM team_members WHERE team_id = $1 AND role = 'supervisor'",
        )
        .bind(team)
        .fetch_all(store.read())
        .await?;
        for r in rows {
            out.push(r.try_get("user_id")?);
        }
    }
    if out.is_empty() {
        let rows = sqlx::query("SELECT id FROM users WHERE role = 'supervisor' AND disabled = 0")
            .fetch_all(store.read())
            .await?;
        for r in rows {
            out.push(r.try_get("id")?);
        }
    }
    Ok(out)
}

/// The job handler: announces one threshold of one target, once.
pub async fn run(state: AppState, job: Job) -> HandlerResult {
    let internal = |e: AppError| {
        e.log();
        e.public_message()
    };
    let p: Payload =
        serde_json::from_value(job.payload.clone()).map_err(|e| format!("bad sla payload: {e}"))?;
    fire(&state, &p).await.map_err(internal)
}

async fn fire(state: &AppState, p: &Payload) -> AppResult<()> {
    let store = state.store();
    let now = now_ms();
    let mut tx = store.write().begin().await?;
    let Some(t) = load_in(&mut tx, &p.ticket).await? else {
        return Ok(());
    };
    // A newer plan (pause, resume, change) owns the clock now.
    if t.sla_generation != p.generation || t.clock.since.is_none() || !target_open(&t, &p.target) {
        return Ok(());
    }
    let Some(policy) = t.sla_policy.as_deref() else {
        return Ok(());
    };
    let Some(policy) = self::policy(store, policy).await? else {
        return Ok(());
    };
    let inserted = sqlx::query(
        "INSERT INTO ticket_sla_fired (ticket_id, target, threshold, fired_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (ticket_id, target, threshold) DO NOTHING",
    )
    .bind(&t.id)
    .bind(&p.target)
    .bind(p.threshold)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(());
    }
    let hours = team_hours(store, t.team.as_deref()).await?;
    let full = target_s(&policy, &p.target) * 1000;
    let due_at = t.clock.due_at(hours.as_ref(), full).unwrap_or(now);
    let breach = p.threshold >= 100;
    let mut group_msg = None;
    if breach {
        let column = if p.target == "first_response" {
            "first_response_met"
        } else {
            "resolution_met"
        };
        sqlx::query(&format!(
            "UPDATE tickets SET {column} = 0, escalation_level = escalation_level + 1, \
             updated_at = $2 WHERE id = $1"
        ))
        .bind(&t.id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        record(
            &mut tx,
            &t.id,
            "sla_breach",
            None,
            Some(&p.target),
            None,
            now,
        )
        .await?;
        let (from, to) = (
            t.escalation_level.to_string(),
            (t.escalation_level + 1).to_string(),
        );
        record(
            &mut tx,
            &t.id,
            "escalated",
            Some(&from),
            Some(&to),
            None,
            now,
        )
        .await?;
        if let Some(group) = &policy.escalation_group {
            let what = if p.target == "first_response" {
                "首次响应"
            } else {
                "解决"
            };
            let body = format!(
                "工单 {} 《{}》（{}）已超出{}时限，升级至第 {} 级",
                t.id,
                t.title,
                t.priority,
                what,
                t.escalation_level + 1
            );
            group_msg = Some(messages::insert_system_message(&mut tx, group, &body, now).await?);
        }
    } else {
        let to = format!("{}:{}", p.target, p.threshold);
        record(&mut tx, &t.id, "sla_warning", None, Some(&to), None, now).await?;
    }
    let after = load_in(&mut tx, &t.id).await?;
    tx.commit().await?;
    tracing::info!(ticket = %t.id, target = %p.target, threshold = p.threshold, "sla threshold reached");
    let frame = ServerFrame::Sla {
        ticket: t.id.clone(),
        kind: if breach {
            SlaKind::Breach
        } else {
            SlaKind::Warning
        },
        due_at,
    };
    let mut people = supervisors(store, t.team.as_deref()).await?;
    if let Some(a) = &t.assignee {
        people.push(a.clone());
    }
    people.sort();
    people.dedup();
    for user in people {
        state.deliver_frame(Target::User(user), Exclude::Nobody, &frame);
    }
    if let Some(msg) = group_msg {
        state.deliver_frame(
            Target::Conv(msg.conv.clone()),
            Exclude::Nobody,
            &ServerFrame::Message { msg },
        );
    }
    if let (true, Some(after)) = (breach, after) {
        super::announce(state, &after, &[]);
    }
    Ok(())
}
