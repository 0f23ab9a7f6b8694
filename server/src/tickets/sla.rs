//! SLA: policies by priority (and optionally ticket type and team) with a
//! first-response, an optional next-response and a resolution target in
//! seconds of business time; a type match beats a priority-only policy, then
//! a team's own beats the general one, then the newest wins. The clock of
//! each ticket ([`BusinessClock`](crate::calendar::BusinessClock) under the
//! team's working hours, none = 24/7) runs while the ticket is open or
//! processing, pauses while
//! pending_confirmation and stops once resolved or closed. The next-response
//! target counts on the same clock from a customer's public note (after the
//! first response) to the next public staff note; each such wait (a
//! "round") has its own thresholds.
//!
//! Every plan of the clock (creation, any change) gets a new generation and
//! enqueues, for each open target and each threshold not yet fired (the
//! policy's `warn_at`, default 50 % and 80 %, then 100 %), a durable job at
//! the instant the clock reaches it, keyed
//! `sla:<ticket>:<target>:<threshold>:<generation>` (target
//! `next_response:<round>` for next responses). A job of an older
//! generation (or round) does nothing; a threshold fires at most once per
//! ticket and round (`ticket_sla_fired`), so re-planning after a pause never
//! sends twice. Firing sends `sla` events to the assignee and the
//! supervisors — the team's supervisors (`team_members.role = supervisor`),
//! or every supervisor account when the ticket has no team or the team none.
//! The breach (100 %) also stores the target as missed, raises the
//! escalation level by one, posts a system message into the policy's
//! `escalation_group` and, with `reassign_on_breach`, gives the ticket to the
//! team's other agent with the fewest open tickets ([`least_loaded_agent`]).

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
/// Warning thresholds of a policy that names none, in percent of a target.
pub const DEFAULT_WARN_AT: &[i64] = &[50, 80];
/// Most warning thresholds a policy may have.
pub const MAX_WARNINGS: usize = 5;
pub const TARGETS: &[&str] = &["first_response", "next_response", "resolution"];
/// Longest target. Why one year: longer is a typo.
pub const MAX_TARGET_S: i64 = 366 * 24 * 3600;

/// An SLA policy.
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub id: String,
    pub priority: String,
    /// The ticket type it is for; `None`: any type.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub team: Option<String>,
    pub first_response_s: i64,
    /// From a customer's public note to the next public note by staff.
    pub next_response_s: Option<i64>,
    pub resolution_s: i64,
    /// Warning thresholds in percent, ascending; the breach is 100.
    pub warn_at: Vec<i64>,
    pub reassign_on_breach: bool,
    pub escalation_group: Option<String>,
    pub created_at: i64,
}

impl Policy {
    /// The warnings and the breach, ascending.
    pub fn thresholds(&self) -> Vec<i64> {
        let mut t = self.warn_at.clone();
        t.push(100);
        t
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPolicy {
    pub priority: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub team: Option<String>,
    pub first_response_s: i64,
    pub next_response_s: Option<i64>,
    pub resolution_s: i64,
    pub warn_at: Option<Vec<i64>>,
    #[serde(default)]
    pub reassign_on_breach: bool,
    pub escalation_group: Option<String>,
}

const POLICY_COLUMNS: &str = "id, priority, type, team_id, first_response_s, next_response_s, \
    resolution_s, warn_at, reassign_on_breach, escalation_group, created_at";

fn policy_from_row(r: &sqlx::any::AnyRow) -> AppResult<Policy> {
    Ok(Policy {
        id: r.try_get("id")?,
        priority: r.try_get("priority")?,
        kind: r.try_get("type")?,
        team: r.try_get("team_id")?,
        first_response_s: r.try_get("first_response_s")?,
        next_response_s: r.try_get("next_response_s")?,
        resolution_s: r.try_get("resolution_s")?,
        warn_at: serde_json::from_str(&r.try_get::<String, _>("warn_at")?)
            .unwrap_or_else(|_| DEFAULT_WARN_AT.to_vec()),
        reassign_on_breach: r.try_get::<i64, _>("reassign_on_breach")? != 0,
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
        ("next_response_s", input.next_response_s.unwrap_or(1)),
    ] {
        if !(1..=MAX_TARGET_S).contains(&v) {
            return Err(AppError::bad_request(format!(
                "{name} must be 1 to {MAX_TARGET_S} seconds"
            )));
        }
    }
    let warn_at = input.warn_at.unwrap_or_else(|| DEFAULT_WARN_AT.to_vec());
    let ascending = warn_at.windows(2).all(|w| w[0] < w[1]);
    if warn_at.len() > MAX_WARNINGS || !ascending || warn_at.iter().any(|w| !(1..=99).contains(w)) {
        return Err(AppError::bad_request(format!(
            "warn_at must be at most {MAX_WARNINGS} ascending percentages from 1 to 99"
        )));
    }
    let kind = input.kind.map(|k| k.trim().to_string());
    if let Some(k) = &kind {
        super::check_text("type", k, 1, super::MAX_TYPE_CHARS)?;
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
        kind,
        team: input.team,
        first_response_s: input.first_response_s,
        next_response_s: input.next_response_s,
        resolution_s: input.resolution_s,
        warn_at,
        reassign_on_breach: input.reassign_on_breach,
        escalation_group: input.escalation_group,
        created_at: now_ms(),
    };
    sqlx::query(&format!(
        "INSERT INTO sla_policies ({POLICY_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    ))
    .bind(&p.id)
    .bind(&p.priority)
    .bind(&p.kind)
    .bind(&p.team)
    .bind(p.first_response_s)
    .bind(p.next_response_s)
    .bind(p.resolution_s)
    .bind(serde_json::to_string(&p.warn_at).unwrap_or_else(|_| "[50,80]".into()))
    .bind(i64::from(p.reassign_on_breach))
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

/// The policy of a priority, type and team: among the policies of the
/// priority whose type (if any) and team (if any) match, one for the
/// ticket's type beats one for any type, then a team's own beats the one for
/// all teams, then the newest wins.
pub async fn policy_for(
    store: &Store,
    priority: &str,
    kind: &str,
    team: Option<&str>,
) -> AppResult<Option<Policy>> {
    let row = sqlx::query(&format!(
        "SELECT {POLICY_COLUMNS} FROM sla_policies WHERE priority = $1 \
         AND (type IS NULL OR type = $2) AND (team_id IS NULL OR team_id = $3) \
         ORDER BY CASE WHEN type IS NULL THEN 1 ELSE 0 END, \
         CASE WHEN team_id IS NULL THEN 1 ELSE 0 END, created_at DESC, id DESC LIMIT 1"
    ))
    .bind(priority)
    .bind(kind)
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

/// The target's length in seconds; `None` when the policy has none.
fn target_s(p: &Policy, target: &str) -> Option<i64> {
    match target {
        "first_response" => Some(p.first_response_s),
        "next_response" => p.next_response_s,
        _ => Some(p.resolution_s),
    }
}

/// Business ms of the ticket's clock at which the target's time starts.
fn target_start(t: &Ticket, target: &str) -> i64 {
    if target == "next_response" {
        t.next_response_from.unwrap_or(0)
    } else {
        0
    }
}

fn target_open(t: &Ticket, target: &str) -> bool {
    match target {
        "first_response" => t.first_response_at.is_none() && t.first_response_met.is_none(),
        // Open while a customer's note waits for staff, until breached.
        "next_response" => t.next_response_from.is_some() && t.next_response_met.is_none(),
        _ => t.resolved_at.is_none() && t.resolution_met.is_none(),
    }
}

/// The name a threshold is stored under in `ticket_sla_fired`: each wait for
/// a next response has its own thresholds.
fn fired_name(t: &Ticket, target: &str) -> String {
    if target == "next_response" {
        format!("next_response:{}", t.next_response_round)
    } else {
        target.to_string()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payload {
    ticket: String,
    target: String,
    threshold: i64,
    generation: i64,
    /// The next-response wait it belongs to.
    #[serde(default)]
    round: i64,
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
        let Some(secs) = target_s(p, target) else {
            continue;
        };
        if !target_open(t, target) {
            continue;
        }
        let full_ms = secs * 1000;
        let start = target_start(t, target);
        let name = fired_name(t, target);
        for th in p.thresholds() {
            if fired.iter().any(|(g, h)| *g == name && *h == th) {
                continue;
            }
            let Some(run_at) = t.clock.due_at(hours, start + full_ms * th / 100) else {
                continue;
            };
            let payload = Payload {
                ticket: t.id.clone(),
                target: target.to_string(),
                threshold: th,
                generation: t.sla_generation,
                round: t.next_response_round,
            };
            let job = NewJob::new(
                KIND,
                serde_json::to_value(&payload)
                    .map_err(|e| AppError::internal(format!("payload: {e}")))?,
                run_at.max(now),
            )
            .unique(format!("sla:{}:{name}:{th}:{}", t.id, t.sla_generation));
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
    /// `null` when the policy has no next-response target; `used_ms` counts
    /// from the customer's public note still waiting for staff (0 when none
    /// waits), `met` is the last wait's outcome.
    pub next_response: Option<TargetView>,
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
    let elapsed = t.clock.elapsed(hours.as_ref(), now);
    let one = |target: &str, met: Option<bool>| {
        let secs = target_s(&p, target)?;
        let full = secs * 1000;
        let open = target_open(t, target);
        let start = target_start(t, target);
        let used = if target == "next_response" && t.next_response_from.is_none() {
            0
        } else {
            elapsed - start
        };
        Some(TargetView {
            target_s: secs,
            used_ms: used,
            remaining_ms: full - used,
            due_at: if open {
                t.clock.due_at(hours.as_ref(), start + full)
            } else {
                None
            },
            met,
        })
    };
    let next_response = one("next_response", t.next_response_met).map(|mut v| {
        // Not waiting: nothing is due.
        if t.next_response_from.is_none() {
            v.due_at = None;
        }
        v
    });
    let (Some(first_response), Some(resolution)) = (
        one("first_response", t.first_response_met),
        one("resolution", t.resolution_met),
    ) else {
        return Ok(None);
    };
    Ok(Some(SlaView {
        policy: p.id.clone(),
        paused: t.clock.since.is_none(),
        first_response,
        next_response,
        resolution,
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
    if t.sla_generation != p.generation
        || t.clock.since.is_none()
        || !target_open(&t, &p.target)
        || (p.target == "next_response" && t.next_response_round != p.round)
    {
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
    .bind(fired_name(&t, &p.target))
    .bind(p.threshold)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(());
    }
    let Some(secs) = target_s(&policy, &p.target) else {
        return Ok(());
    };
    let hours = team_hours(store, t.team.as_deref()).await?;
    let full = secs * 1000;
    let due_at = t
        .clock
        .due_at(hours.as_ref(), target_start(&t, &p.target) + full)
        .unwrap_or(now);
    let breach = p.threshold >= 100;
    let mut group_msg = None;
    let mut reassigned_from = None;
    if breach {
        let column = match p.target.as_str() {
            "first_response" => "first_response_met",
            "next_response" => "next_response_met",
            _ => "resolution_met",
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
            let what = match p.target.as_str() {
                "first_response" => "首次响应",
                "next_response" => "再次响应",
                _ => "解决",
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
        if policy.reassign_on_breach {
            if let Some(team) = &t.team {
                let to = least_loaded_agent(&mut tx, team, t.assignee.as_deref()).await?;
                if let Some(to) = to {
                    sqlx::query("UPDATE tickets SET assignee_id = $2 WHERE id = $1")
                        .bind(&t.id)
                        .bind(&to)
                        .execute(&mut *tx)
                        .await?;
                    record(
                        &mut tx,
                        &t.id,
                        "assigned",
                        t.assignee.as_deref(),
                        Some(&to),
                        None,
                        now,
                    )
                    .await?;
                    reassigned_from = t.assignee.clone();
                }
            }
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
        if let Some(new) = after
            .assignee
            .as_ref()
            .filter(|_| reassigned_from.is_some())
        {
            // The new assignee hears about the breach too.
            state.deliver_frame(Target::User(new.clone()), Exclude::Nobody, &frame);
        }
        let previous: Vec<&str> = reassigned_from.iter().map(String::as_str).collect();
        super::announce(state, &after, &previous);
    }
    Ok(())
}

/// The agent of `team` (team role `agent`, enabled account, not `except`)
/// with the fewest open tickets (any status but resolved and closed); ties
/// go to the lowest user id. `None` when the team has no other agent.
pub async fn least_loaded_agent(
    conn: &mut AnyConnection,
    team: &str,
    except: Option<&str>,
) -> AppResult<Option<String>> {
    let row = sqlx::query(
        "SELECT m.user_id, (SELECT COUNT(*) FROM tickets t WHERE t.assignee_id = m.user_id \
         AND t.status NOT IN ('resolved', 'closed')) AS open_count \
         FROM team_members m JOIN users u ON u.id = m.user_id \
         WHERE m.team_id = $1 AND m.role = 'agent' AND u.disabled = 0 \
         AND ($2 IS NULL OR m.user_id <> $2) ORDER BY open_count, m.user_id LIMIT 1",
    )
    .bind(team)
    .bind(except)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| r.try_get("user_id")).transpose()?)
}
