//! The engine's state as the database says it is: what a rebuild loads.
//! Loads are counted from open conversations, never carried over, so they
//! cannot drift from the truth.

use std::collections::HashMap;

use sqlx::Row;

use super::engine::{AgentSpec, Skill, Snapshot, Ticket};
use super::teams::DEFAULT_MAX_CONCURRENCY;
use crate::error::{AppError, AppResult};
use crate::store::Store;

fn skills(text: &str) -> Vec<Skill> {
    serde_json::from_str(text).unwrap_or_default()
}

/// Reads the whole routing state.
pub async fn load(store: &Store) -> AppResult<Snapshot> {
    let db = store.read();
    // Agents: every user who is an agent of some team.
    let rows = sqlx::query(
        "SELECT u.id, u.skills, u.max_concurrency AS own, MIN(t.max_concurrency) AS team_default \
         FROM team_members m JOIN users u ON u.id = m.user_id JOIN teams t ON t.id = m.team_id \
         WHERE m.role = 'agent' GROUP BY u.id, u.skills, u.max_concurrency",
    )
    .fetch_all(db)
    .await?;
    let mut agents: Vec<AgentSpec> = Vec::with_capacity(rows.len());
    for r in &rows {
        let own: Option<i64> = r.try_get("own")?;
        let team: Option<i64> = r.try_get("team_default")?;
        agents.push(AgentSpec {
            id: r.try_get("id")?,
            capacity: own
                .or(team)
                .map(|v| v as u32)
                .unwrap_or(DEFAULT_MAX_CONCURRENCY),
            skills: skills(&r.try_get::<String, _>("skills")?),
        });
    }
    // Loads: active conversations plus open offers.
    let rows = sqlx::query(
        "SELECT COALESCE(agent_id, offered_to) AS agent, COUNT(*) AS n FROM conversations \
         WHERE kind = 'service' AND ((state = 'active' AND agent_id IS NOT NULL) \
            OR (state = 'queued' AND offered_to IS NOT NULL)) \
         GROUP BY COALESCE(agent_id, offered_to)",
    )
    .fetch_all(db)
    .await?;
    let mut loads: HashMap<String, u32> = HashMap::new();
    for r in &rows {
        loads.insert(r.try_get("agent")?, r.try_get::<i64, _>("n")? as u32);
    }
    let rows = sqlx::query(
        "SELECT team_id, user_id FROM team_members WHERE role = 'agent' ORDER BY team_id, user_id",
    )
    .fetch_all(db)
    .await?;
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for r in &rows {
        let team: String = r.try_get("team_id")?;
        let user: String = r.try_get("user_id")?;
        match members.last_mut() {
            Some((t, users)) if *t == team => users.push(user),
            _ => members.push((team, vec![user])),
        }
    }
    let rows = sqlx::query(
        "SELECT id, team_id, priority, queued_at, skills, offered_to, offer_expires_at \
         FROM conversations WHERE kind = 'service' AND state = 'queued' AND pending = 0 \
         AND team_id IS NOT NULL",
    )
    .fetch_all(db)
    .await?;
    let mut waiting = Vec::new();
    let mut offers = Vec::new();
    for r in &rows {
        let ticket = Ticket {
            conv: r.try_get("id")?,
            team: r.try_get("team_id")?,
            priority: r.try_get("priority")?,
            queued_at: r
                .try_get::<Option<i64>, _>("queued_at")?
                .ok_or_else(|| AppError::internal("queued conversation without queued_at"))?,
            skills: skills(&r.try_get::<String, _>("skills")?),
        };
        match r.try_get::<Option<String>, _>("offered_to")? {
            Some(agent) => {
                let expires: Option<i64> = r.try_get("offer_expires_at")?;
                offers.push((ticket, agent, expires.unwrap_or(0)));
            }
            None => waiting.push(ticket),
        }
    }
    Ok(Snapshot {
        agents: agents
            .into_iter()
            .map(|a| {
                let load = loads.get(&a.id).copied().unwrap_or(0);
                (a, load)
            })
            .collect(),
        members,
        waiting,
        offers,
    })
}
