//! Teams, their members, agents' routing settings, and customer–team
//! relationships: the `teams`, `team_members` and `customer_teams` tables.
//!
//! A team's settings are one JSON document ([`TeamInput`]) for create and
//! replace alike; a PATCH merges its keys into the current document and
//! validates the result, so every path checks the same rules.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use switchboard_protocol::Role;

use super::engine::{Skill, Strategy, TeamPlan};
use crate::calendar::{Calendar, Hours};
use crate::error::{is_unique_violation, AppError, AppResult};
use crate::store::Store;
use crate::util::{new_id, now_ms};

/// Max concurrency when neither the agent nor a team sets one.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 5;
/// Skill strategy: seconds before a conversation may go to any team agent.
pub const DEFAULT_SKILL_WIDEN_S: u32 = 60;

/// Strategy parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StrategyParams {
    /// Offer mode: the agent must `accept` within this many seconds, or the
    /// conversation goes to the next agent. Absent: conversations are assigned.
    #[serde(default)]
    pub offer_timeout_s: Option<u32>,
    /// Skill strategy: after this many seconds of waiting, any agent of the
    /// team may take the conversation (default 60).
    #[serde(default)]
    pub skill_widen_s: Option<u32>,
    /// Skill strategy: after this many seconds of waiting, the conversation
    /// overflows to the fallback team (needs `fallback_team`).
    #[serde(default)]
    pub skill_fallback_s: Option<u32>,
}

/// A team's settings as clients send them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamInput {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub lead: Option<String>,
    #[serde(default)]
    pub topics: Vec<String>,
    #[serde(default)]
    pub skills: Vec<Skill>,
    #[serde(default)]
    pub working_hours: Option<Calendar>,
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    #[serde(default = "default_strategy")]
    pub strategy: String,
    #[serde(default)]
    pub strategy_params: StrategyParams,
    #[serde(default)]
    pub max_queue: Option<u32>,
    #[serde(default)]
    pub max_wait_s: Option<u32>,
    #[serde(default)]
    pub fallback_team: Option<String>,
    #[serde(default)]
    pub default: bool,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_strategy() -> String {
    "round_robin".into()
}
fn yes() -> bool {
    true
}

/// A team as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Team {
    pub id: String,
    pub name: String,
    pub description: String,
    pub lead: Option<String>,
    pub topics: Vec<String>,
    pub skills: Vec<Skill>,
    pub working_hours: Option<Calendar>,
    pub max_concurrency: u32,
    pub strategy: Strategy,
    pub strategy_params: StrategyParams,
    pub max_queue: Option<u32>,
    pub max_wait_s: Option<u32>,
    pub fallback_team: Option<String>,
    pub default: bool,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Team {
    /// The settings document of this team (what PATCH merges into).
    pub fn input(&self) -> TeamInput {
        TeamInput {
            name: self.name.clone(),
            description: self.description.clone(),
            lead: self.lead.clone(),
            topics: self.topics.clone(),
            skills: self.skills.clone(),
            working_hours: self.working_hours.clone(),
            max_concurrency: Some(self.max_concurrency),
            strategy: self.strategy.as_str().to_string(),
            strategy_params: self.strategy_params.clone(),
            max_queue: self.max_queue,
            max_wait_s: self.max_wait_s,
            fallback_team: self.fallback_team.clone(),
            default: self.default,
            enabled: self.enabled,
        }
    }

    fn hours(&self) -> Option<Hours> {
        // Stored calendars were validated on the way in.
        self.working_hours.as_ref().and_then(|c| c.compile().ok())
    }

    /// Enabled and inside its working hours at `now`.
    pub fn is_open(&self, now: i64) -> bool {
        self.enabled && self.hours().is_none_or(|h| h.is_open(now))
    }

    /// The routing rules at `now`.
    pub fn plan(&self, now: i64) -> TeamPlan {
        TeamPlan {
            id: self.id.clone(),
            strategy: self.strategy,
            open: self.is_open(now),
            offer_ms: self
                .strategy_params
                .offer_timeout_s
                .map(|s| i64::from(s) * 1000),
            widen_ms: i64::from(
                self.strategy_params
                    .skill_widen_s
                    .unwrap_or(DEFAULT_SKILL_WIDEN_S),
            ) * 1000,
        }
    }

    /// Seconds of waiting after which a conversation leaves the queue
    /// (to the fallback team, or as a left message).
    pub fn overflow_after_s(&self) -> Option<u32> {
        let skill = match (self.strategy, &self.fallback_team) {
            (Strategy::Skill, Some(_)) => self.strategy_params.skill_fallback_s,
            _ => None,
        };
        match (self.max_wait_s, skill) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The skills a conversation about `topic` needs here: the team's listed
    /// skill of that name if there is one, else every listed skill.
    pub fn skills_for(&self, topic: Option<&str>) -> Vec<Skill> {
        if let Some(t) = topic {
            if let Some(s) = self.skills.iter().find(|s| s.name == t) {
                return vec![s.clone()];
            }
        }
        self.skills.clone()
    }
}

/// A team member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    pub user: String,
    pub name: String,
    /// `agent` or `supervisor` within the team.
    pub role: String,
    pub joined_at: i64,
}

fn json_list<T: serde::de::DeserializeOwned>(row: &AnyRow, col: &str) -> AppResult<T> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text)
        .map_err(|e| AppError::internal(format!("bad JSON in teams.{col}: {e}")))
}

const TEAM_COLUMNS: &str = "id, name, description, lead_id, topics, skills, working_hours, \
    max_concurrency, strategy, strategy_params, max_queue, max_wait_s, fallback_team_id, \
    is_default, enabled, created_at, updated_at";

fn team_from_row(row: &AnyRow) -> AppResult<Team> {
    let strategy: String = row.try_get("strategy")?;
    let hours: Option<String> = row.try_get("working_hours")?;
    let opt_u32 = |col: &str| -> AppResult<Option<u32>> {
        Ok(row.try_get::<Option<i64>, _>(col)?.map(|v| v as u32))
    };
    Ok(Team {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        lead: row.try_get("lead_id")?,
        topics: json_list(row, "topics")?,
        skills: json_list(row, "skills")?,
        working_hours: hours
            .map(|h| serde_json::from_str(&h))
            .transpose()
            .map_err(|e| AppError::internal(format!("bad working_hours: {e}")))?,
        max_concurrency: row.try_get::<i64, _>("max_concurrency")? as u32,
        strategy: Strategy::parse(&strategy)
            .ok_or_else(|| AppError::internal(format!("bad strategy {strategy}")))?,
        strategy_params: json_list(row, "strategy_params")?,
        max_queue: opt_u32("max_queue")?,
        max_wait_s: opt_u32("max_wait_s")?,
        fallback_team: row.try_get("fallback_team_id")?,
        default: row.try_get::<i64, _>("is_default")? == 1,
        enabled: row.try_get::<i64, _>("enabled")? == 1,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn check_skills(field: &str, skills: &[Skill]) -> AppResult<()> {
    if skills.len() > 50 {
        return Err(AppError::bad_request(format!("{field}: at most 50 skills")));
    }
    for s in skills {
        let len = s.name.chars().count();
        if len == 0 || len > 50 || !(1..=5).contains(&s.level) {
            return Err(AppError::bad_request(format!(
                "{field}: each skill has a name of 1 to 50 characters and a level 1 to 5"
            )));
        }
    }
    Ok(())
}

/// Checks a skill list for users and teams.
pub fn validate_skills(field: &str, skills: &[Skill]) -> AppResult<()> {
    check_skills(field, skills)
}

/// Checks a team document; returns the parsed strategy.
async fn validate(store: &Store, id: Option<&str>, t: &TeamInput) -> AppResult<Strategy> {
    let name_len = t.name.trim().chars().count();
    if name_len == 0 || name_len > 100 {
        return Err(AppError::bad_request("name must be 1 to 100 characters"));
    }
    if t.description.chars().count() > 2000 {
        return Err(AppError::bad_request(
            "description must be at most 2000 characters",
        ));
    }
    if t.topics.len() > 50
        || t.topics
            .iter()
            .any(|s| s.is_empty() || s.chars().count() > 50)
    {
        return Err(AppError::bad_request(
            "topics: at most 50, each 1 to 50 characters",
        ));
    }
    check_skills("skills", &t.skills)?;
    if let Some(c) = &t.working_hours {
        c.compile()?;
    }
    if t.max_concurrency.is_some_and(|n| !(1..=100).contains(&n)) {
        return Err(AppError::bad_request("max_concurrency must be 1 to 100"));
    }
    let strategy = Strategy::parse(&t.strategy).ok_or_else(|| {
        AppError::bad_request("strategy must be one of round_robin, least_load, skill, weighted")
    })?;
    let p = &t.strategy_params;
    if p.offer_timeout_s.is_some_and(|s| !(1..=3600).contains(&s)) {
        return Err(AppError::bad_request(
            "strategy_params.offer_timeout_s must be 1 to 3600",
        ));
    }
    if p.skill_widen_s.is_some_and(|s| s > 86_400)
        || p.skill_fallback_s
            .is_some_and(|s| !(1..=86_400).contains(&s))
    {
        return Err(AppError::bad_request(
            "strategy_params.skill_widen_s must be 0 to 86400 and skill_fallback_s 1 to 86400",
        ));
    }
    if t.max_queue.is_some_and(|n| !(1..=100_000).contains(&n)) {
        return Err(AppError::bad_request("max_queue must be 1 to 100000"));
    }
    if t.max_wait_s.is_some_and(|n| !(1..=86_400).contains(&n)) {
        return Err(AppError::bad_request("max_wait_s must be 1 to 86400"));
    }
    if let Some(lead) = &t.lead {
        let row = sqlx::query("SELECT role FROM users WHERE id = $1")
            .bind(lead)
            .fetch_optional(store.read())
            .await?;
        let role: Option<String> = row.map(|r| r.try_get("role")).transpose()?;
        if !role
            .and_then(|r| Role::parse(&r))
            .is_some_and(Role::is_staff)
        {
            return Err(AppError::bad_request("lead must be a staff user's id"));
        }
    }
    if let Some(fallback) = &t.fallback_team {
        if Some(fallback.as_str()) == id {
            return Err(AppError::bad_request("fallback_team must be another team"));
        }
        if get(store, fallback).await?.is_none() {
            return Err(AppError::bad_request("fallback_team: no such team"));
        }
    }
    Ok(strategy)
}

fn hours_json(t: &TeamInput) -> Option<String> {
    t.working_hours
        .as_ref()
        .map(|c| serde_json::to_string(c).expect("calendars serialize"))
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("team fields serialize")
}

/// Runs the team INSERT or UPDATE, both shaped `$1` = id, `$2`..`$15` = the
/// settings, `$16` = now; returns the rows written.
async fn write_team(
    conn: &mut sqlx::AnyConnection,
    sql: &str,
    id: &str,
    t: &TeamInput,
    strategy: Strategy,
    now: i64,
) -> AppResult<u64> {
    let result = sqlx::query(sql)
        .bind(id)
        .bind(t.name.trim())
        .bind(&t.description)
        .bind(&t.lead)
        .bind(to_json(&t.topics))
        .bind(to_json(&t.skills))
        .bind(hours_json(t))
        .bind(i64::from(
            t.max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY),
        ))
        .bind(strategy.as_str())
        .bind(to_json(&t.strategy_params))
        .bind(t.max_queue.map(i64::from))
        .bind(t.max_wait_s.map(i64::from))
        .bind(&t.fallback_team)
        .bind(i64::from(t.default))
        .bind(i64::from(t.enabled))
        .bind(now)
        .execute(conn)
        .await;
    match result {
        Err(e) if is_unique_violation(&e) => {
            Err(AppError::conflict("a team with this name exists"))
        }
        r => Ok(r?.rows_affected()),
    }
}

/// Creates a team.
pub async fn create(store: &Store, t: &TeamInput) -> AppResult<Team> {
    let strategy = validate(store, None, t).await?;
    let id = new_id("t_");
    let now = now_ms();
    let mut tx = store.write().begin().await?;
    if t.default {
        sqlx::query("UPDATE teams SET is_default = 0 WHERE is_default = 1")
            .execute(&mut *tx)
            .await?;
    }
    let sql = format!(
        "INSERT INTO teams ({TEAM_COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16)"
    );
    write_team(&mut tx, &sql, &id, t, strategy, now).await?;
    tx.commit().await?;
    get(store, &id)
        .await?
        .ok_or_else(|| AppError::internal("team vanished after insert"))
}

/// Replaces a team's settings.
pub async fn update(store: &Store, id: &str, t: &TeamInput) -> AppResult<Team> {
    let strategy = validate(store, Some(id), t).await?;
    let now = now_ms();
    let mut tx = store.write().begin().await?;
    if t.default {
        sqlx::query("UPDATE teams SET is_default = 0 WHERE is_default = 1 AND id <> $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    let sql = "UPDATE teams SET name = $2, description = $3, lead_id = $4, topics = $5, \
               skills = $6, working_hours = $7, max_concurrency = $8, strategy = $9, \
               strategy_params = $10, max_queue = $11, max_wait_s = $12, fallback_team_id = $13, \
               is_default = $14, enabled = $15, updated_at = $16 WHERE id = $1";
    if write_team(&mut tx, sql, id, t, strategy, now).await? == 0 {
        return Err(AppError::not_found("no such team"));
    }
    tx.commit().await?;
    get(store, id)
        .await?
        .ok_or_else(|| AppError::internal("team vanished after update"))
}

/// Merges a JSON patch into a team's settings document.
pub fn merge_patch(team: &Team, patch: serde_json::Value) -> AppResult<TeamInput> {
    let serde_json::Value::Object(patch) = patch else {
        return Err(AppError::bad_request("the body must be a JSON object"));
    };
    let mut doc = serde_json::to_value(team.input()).expect("team input serializes");
    let obj = doc.as_object_mut().expect("team input is an object");
    for (k, v) in patch {
        if !obj.contains_key(&k) {
            return Err(AppError::bad_request(format!("unknown field `{k}`")));
        }
        obj.insert(k, v);
    }
    serde_json::from_value(doc).map_err(|e| AppError::bad_request(e.to_string()))
}

pub async fn get(store: &Store, id: &str) -> AppResult<Option<Team>> {
    let row = sqlx::query(&format!("SELECT {TEAM_COLUMNS} FROM teams WHERE id = $1"))
        .bind(id)
        .fetch_optional(store.read())
        .await?;
    row.as_ref().map(team_from_row).transpose()
}

pub async fn list(store: &Store) -> AppResult<Vec<Team>> {
    let rows = sqlx::query(&format!(
        "SELECT {TEAM_COLUMNS} FROM teams ORDER BY name, id"
    ))
    .fetch_all(store.read())
    .await?;
    rows.iter().map(team_from_row).collect()
}

/// The team's members.
pub async fn members(store: &Store, team: &str) -> AppResult<Vec<Member>> {
    let rows = sqlx::query(
        "SELECT m.user_id, u.name, m.role, m.created_at FROM team_members m \
         JOIN users u ON u.id = m.user_id WHERE m.team_id = $1 ORDER BY m.user_id",
    )
    .bind(team)
    .fetch_all(store.read())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Member {
                user: r.try_get("user_id")?,
                name: r.try_get("name")?,
                role: r.try_get("role")?,
                joined_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

/// Adds a staff user to a team (or changes its role there).
pub async fn add_member(store: &Store, team: &str, user: &str, role: &str) -> AppResult<()> {
    if !matches!(role, "agent" | "supervisor") {
        return Err(AppError::bad_request("role must be agent or supervisor"));
    }
    if get(store, team).await?.is_none() {
        return Err(AppError::not_found("no such team"));
    }
    let row = sqlx::query("SELECT role FROM users WHERE id = $1")
        .bind(user)
        .fetch_optional(store.read())
        .await?;
    let user_role: Option<String> = row.map(|r| r.try_get("role")).transpose()?;
    match user_role.as_deref().and_then(Role::parse) {
        None => return Err(AppError::bad_request("user: no such user")),
        Some(r) if !r.is_staff() => {
            return Err(AppError::bad_request(
                "user: customers cannot be team members",
            ))
        }
        Some(_) => {}
    }
    sqlx::query(
        "INSERT INTO team_members (team_id, user_id, role, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (team_id, user_id) DO UPDATE SET role = excluded.role",
    )
    .bind(team)
    .bind(user)
    .bind(role)
    .bind(now_ms())
    .execute(store.write())
    .await?;
    Ok(())
}

pub async fn remove_member(store: &Store, team: &str, user: &str) -> AppResult<()> {
    let done = sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
        .bind(team)
        .bind(user)
        .execute(store.write())
        .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::not_found("no such member of this team"));
    }
    Ok(())
}

/// The ids of the teams a user belongs to.
pub async fn teams_of(store: &Store, user: &str) -> AppResult<Vec<String>> {
    let rows = sqlx::query("SELECT team_id FROM team_members WHERE user_id = $1 ORDER BY team_id")
        .bind(user)
        .fetch_all(store.read())
        .await?;
    rows.iter().map(|r| Ok(r.try_get("team_id")?)).collect()
}

/// The ids of the teams a user leads or supervises.
pub async fn supervised_by(store: &Store, user: &str) -> AppResult<Vec<String>> {
    let rows = sqlx::query(
        "SELECT team_id FROM team_members WHERE user_id = $1 AND role = 'supervisor' \
         UNION SELECT id AS team_id FROM teams WHERE lead_id = $1",
    )
    .bind(user)
    .fetch_all(store.read())
    .await?;
    rows.iter().map(|r| Ok(r.try_get("team_id")?)).collect()
}

/// A customer–team relationship.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CustomerTeam {
    pub id: String,
    pub customer: String,
    pub team: String,
    /// `primary` or `secondary`.
    pub relation: String,
    pub topics: Vec<String>,
    pub valid_from: Option<i64>,
    pub valid_to: Option<i64>,
    pub created_at: i64,
}

/// What a client sends to create one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerTeamInput {
    pub customer: String,
    pub team: String,
    pub relation: String,
    #[serde(default)]
    pub topics: Vec<String>,
    #[serde(default)]
    pub valid_from: Option<i64>,
    #[serde(default)]
    pub valid_to: Option<i64>,
}

fn relation_from_row(r: &AnyRow) -> AppResult<CustomerTeam> {
    Ok(CustomerTeam {
        id: r.try_get("id")?,
        customer: r.try_get("customer_id")?,
        team: r.try_get("team_id")?,
        relation: r.try_get("relation")?,
        topics: json_list(r, "topics")?,
        valid_from: r.try_get("valid_from")?,
        valid_to: r.try_get("valid_to")?,
        created_at: r.try_get("created_at")?,
    })
}

const RELATION_COLUMNS: &str =
    "id, customer_id, team_id, relation, topics, valid_from, valid_to, created_at";

pub async fn create_relation(store: &Store, input: &CustomerTeamInput) -> AppResult<CustomerTeam> {
    if !matches!(input.relation.as_str(), "primary" | "secondary") {
        return Err(AppError::bad_request(
            "relation must be primary or secondary",
        ));
    }
    if let (Some(from), Some(to)) = (input.valid_from, input.valid_to) {
        if to <= from {
            return Err(AppError::bad_request("valid_to must be after valid_from"));
        }
    }
    if input.topics.len() > 50 {
        return Err(AppError::bad_request("topics: at most 50"));
    }
    let row = sqlx::query("SELECT role FROM users WHERE id = $1")
        .bind(&input.customer)
        .fetch_optional(store.read())
        .await?;
    let role: Option<String> = row.map(|r| r.try_get("role")).transpose()?;
    if role.as_deref() != Some("customer") {
        return Err(AppError::bad_request("customer: no such customer"));
    }
    if get(store, &input.team).await?.is_none() {
        return Err(AppError::bad_request("team: no such team"));
    }
    let id = new_id("ct_");
    sqlx::query(&format!(
        "INSERT INTO customer_teams ({RELATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    ))
    .bind(&id)
    .bind(&input.customer)
    .bind(&input.team)
    .bind(&input.relation)
    .bind(to_json(&input.topics))
    .bind(input.valid_from)
    .bind(input.valid_to)
    .bind(now_ms())
    .execute(store.write())
    .await?;
    let row = sqlx::query(&format!(
        "SELECT {RELATION_COLUMNS} FROM customer_teams WHERE id = $1"
    ))
    .bind(&id)
    .fetch_one(store.read())
    .await?;
    relation_from_row(&row)
}

pub async fn relations_of(store: &Store, customer: &str) -> AppResult<Vec<CustomerTeam>> {
    let rows = sqlx::query(&format!(
        "SELECT {RELATION_COLUMNS} FROM customer_teams WHERE customer_id = $1 \
         ORDER BY relation, created_at"
    ))
    .bind(customer)
    .fetch_all(store.read())
    .await?;
    rows.iter().map(relation_from_row).collect()
}

pub async fn delete_relation(store: &Store, id: &str) -> AppResult<()> {
    let done = sqlx::query("DELETE FROM customer_teams WHERE id = $1")
        .bind(id)
        .execute(store.write())
        .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::not_found("no such relationship"));
    }
    Ok(())
}

/// Candidate teams for a customer's consult, best first: valid primary
/// relationships, then valid secondary ones (those whose topics include the
/// consult's topic first), then teams whose topics or skills name the topic,
/// then the default team. Disabled teams are left out.
pub async fn candidates_for(
    store: &Store,
    customer: &str,
    topic: Option<&str>,
    now: i64,
) -> AppResult<Vec<Team>> {
    let all = list(store).await?;
    let by_id = |id: &str| all.iter().find(|t| t.id == id && t.enabled).cloned();
    let mut out: Vec<Team> = Vec::new();
    let push = |t: Option<Team>, out: &mut Vec<Team>| {
        if let Some(t) = t {
            if !out.iter().any(|o| o.id == t.id) {
                out.push(t);
            }
        }
    };
    let mut relations: Vec<CustomerTeam> = relations_of(store, customer)
        .await?
        .into_iter()
        .filter(|r| r.valid_from.is_none_or(|f| f <= now) && r.valid_to.is_none_or(|t| now < t))
        .collect();
    // Primary before secondary; within each, a relation scoped to the topic first.
    relations.sort_by_key(|r| {
        (
            r.relation != "primary",
            !topic.is_some_and(|t| r.topics.iter().any(|x| x == t)),
        )
    });
    for r in &relations {
        push(by_id(&r.team), &mut out);
    }
    if let Some(topic) = topic {
        for t in &all {
            if t.enabled
                && (t.topics.iter().any(|x| x == topic) || t.skills.iter().any(|s| s.name == topic))
            {
                push(Some(t.clone()), &mut out);
            }
        }
    }
    for t in &all {
        if t.enabled && t.default {
            push(Some(t.clone()), &mut out);
        }
    }
    Ok(out)
}

/// An agent's max concurrency: its own setting, else the smallest default of
/// its teams, else [`DEFAULT_MAX_CONCURRENCY`].
pub async fn capacity_of(store: &Store, user: &str) -> AppResult<u32> {
    let row = sqlx::query(
        "SELECT u.max_concurrency AS own, \
         (SELECT MIN(t.max_concurrency) FROM team_members m JOIN teams t ON t.id = m.team_id \
          WHERE m.user_id = u.id AND m.role = 'agent') AS team_default \
         FROM users u WHERE u.id = $1",
    )
    .bind(user)
    .fetch_optional(store.read())
    .await?;
    let Some(row) = row else {
        return Ok(0);
    };
    let own: Option<i64> = row.try_get("own")?;
    let team: Option<i64> = row.try_get("team_default")?;
    Ok(own
        .or(team)
        .map(|v| v as u32)
        .unwrap_or(DEFAULT_MAX_CONCURRENCY))
}
