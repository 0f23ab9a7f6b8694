//! The dispatch engine seam: the live queues, agent presence and loads, and
//! the one atomic step that picks an agent for a waiting conversation.
//!
//! Two implementations hold the same state and obey the same rules:
//! [`super::local::LocalEngine`] (one node; one mutex) and
//! [`super::redis::RedisEngine`] (any number of nodes; every operation is one
//! Lua script, so it is atomic across nodes and costs one round trip). The
//! database stays the truth: the engine's loads and queues are rebuilt from
//! open conversations whenever the engine lost them (first start, Redis
//! restart), so they cannot drift.
//!
//! Every operation takes `now` from the caller instead of reading a clock, so
//! the timed rules (30 s presence liveness, offer timeouts, skill widening)
//! are tested with a manual clock.

use serde::{Deserialize, Serialize};
use switchboard_protocol::PresenceStatus;

use crate::error::AppResult;

/// An agent with no live connection for this long counts as offline for
/// routing, whatever status it last declared. Nodes refresh the liveness of
/// their connected agents every [`HEARTBEAT_MS`].
pub const LIVE_MS: i64 = 30_000;
/// How often a node refreshes the liveness of its connected agents. Why 10 s:
/// three refreshes fit in [`LIVE_MS`], so one late refresh never makes a
/// connected agent look offline.
pub const HEARTBEAT_MS: i64 = 10_000;
/// How many waiting conversations one drain looks at. Why 200: a conversation
/// that no eligible agent can take (skills, agents that declined its offer)
/// must not block the ones behind it, but a drain must stay a bounded step.
pub const SCAN: usize = 200;

/// How a team picks an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Exact rotation over the eligible agents, in agent-id order.
    RoundRobin,
    /// Fewest open conversations; ties go to the agent idle longest.
    LeastLoad,
    /// Agents whose skills cover the conversation's, then least load; after
    /// the team's widening time, any agent of the team.
    Skill,
    /// Shares proportional to capacity (smooth weighted round robin).
    Weighted,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::LeastLoad => "least_load",
            Strategy::Skill => "skill",
            Strategy::Weighted => "weighted",
        }
    }

    pub fn parse(s: &str) -> Option<Strategy> {
        Some(match s {
            "round_robin" => Strategy::RoundRobin,
            "least_load" => Strategy::LeastLoad,
            "skill" => Strategy::Skill,
            "weighted" => Strategy::Weighted,
            _ => return None,
        })
    }
}

/// A skill with a proficiency level 1–5.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Skill {
    pub name: String,
    pub level: u8,
}

impl<'de> Deserialize<'de> for Skill {
    /// `{"name":"billing","level":4}`, or a bare `"billing"` meaning level 1.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Skill, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Name(String),
            Full { name: String, level: u8 },
        }
        Ok(match Form::deserialize(d)? {
            Form::Name(name) => Skill { name, level: 1 },
            Form::Full { name, level } => Skill { name, level },
        })
    }
}

/// Whether `have` covers every skill of `need` at or above its level.
pub fn covers(have: &[Skill], need: &[Skill]) -> bool {
    need.iter()
        .all(|n| have.iter().any(|h| h.name == n.name && h.level >= n.level))
}

/// What routing needs to know of an agent (from the users and teams tables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSpec {
    pub id: String,
    pub capacity: u32,
    pub skills: Vec<Skill>,
}

/// A team's routing rules at the moment of a drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamPlan {
    pub id: String,
    pub strategy: Strategy,
    /// Enabled and inside working hours.
    pub open: bool,
    /// Offer mode: the agent must `accept` within this many ms.
    pub offer_ms: Option<i64>,
    /// Skill strategy: a conversation waiting longer than this may go to any
    /// agent of the team.
    pub widen_ms: i64,
}

/// A conversation waiting in (or offered from) a team's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub conv: String,
    pub team: String,
    /// 0 (normal) to 9; higher is served first.
    pub priority: i64,
    pub queued_at: i64,
    pub skills: Vec<Skill>,
}

/// One priority step of a queue score ([`Ticket::score`]).
const SCORE_PRIORITY_STEP: i64 = 10_000_000_000_000;

impl Ticket {
    /// Queue order: priority first, then waiting time. Exact as an f64 (what
    /// Redis sorted sets hold): at most 9e13 + 4e12 < 2^53.
    pub fn score(&self) -> i64 {
        (9 - self.priority.clamp(0, 9)) * SCORE_PRIORITY_STEP + self.queued_at
    }

    /// The queued time within a queue score (the inverse of [`Ticket::score`]
    /// for the time).
    pub fn queued_at_of(score: i64) -> i64 {
        score.rem_euclid(SCORE_PRIORITY_STEP)
    }
}

/// One conversation given to (or offered to) one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub conv: String,
    pub team: String,
    pub agent: String,
    pub offered: bool,
    pub queued_at: i64,
}

/// An agent as the engine sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLive {
    pub id: String,
    /// The declared status, or `offline` when not live for [`LIVE_MS`].
    pub status: PresenceStatus,
    pub since: i64,
    pub load: u32,
    pub capacity: u32,
}

/// What a consult looks at before it queues a conversation with a team.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intake {
    /// Whether one of the team's agents is online now.
    pub anyone_online: bool,
    /// How many conversations wait in the team's queue.
    pub waiting: usize,
}

/// A waiting conversation, in queue order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub conv: String,
    pub queued_at: i64,
}

/// Why a direct assignment was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The conversation is not waiting in the given team's queue (already
    /// assigned, closed, or offered to someone).
    NotWaiting,
    /// The agent is at its max concurrency.
    Full,
    /// The agent is not online (or not live).
    Offline,
    /// The agent is not part of the engine (not a member of any team).
    UnknownAgent,
}

/// Everything the engine holds, as the database says it should be.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Agents with their open load (active plus offered conversations).
    pub agents: Vec<(AgentSpec, u32)>,
    /// Team → member agents.
    pub members: Vec<(String, Vec<String>)>,
    /// Conversations waiting in live queues.
    pub waiting: Vec<Ticket>,
    /// Offered conversations: ticket, agent, expiry.
    pub offers: Vec<(Ticket, String, i64)>,
}

/// Whether an agent can take one more conversation now.
pub fn eligible(status: PresenceStatus, seen: i64, load: u32, capacity: u32, now: i64) -> bool {
    status == PresenceStatus::Online && now - seen <= LIVE_MS && load < capacity
}

/// The status to report: the declared one while live, else offline.
pub fn effective_status(status: PresenceStatus, seen: i64, now: i64) -> PresenceStatus {
    if now - seen <= LIVE_MS {
        status
    } else {
        PresenceStatus::Offline
    }
}

/// One candidate agent of a pick, already known eligible.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub id: &'a str,
    pub load: u32,
    pub capacity: u32,
    /// When it last got a conversation (0 = never): least load breaks ties to
    /// the longest idle.
    pub last_assigned: i64,
    pub skills: &'a [Skill],
}

/// The in-process pick; `redis/dispatch.lua` implements the same rules.
/// `candidates` are eligible, not yet tried for this conversation, and in
/// agent-id order. Updates the rotation state (`rr_last`, `weights`).
pub fn pick(
    strategy: Strategy,
    candidates: &[Candidate<'_>],
    need: &[Skill],
    widened: bool,
    rr_last: &mut Option<String>,
    weights: &mut std::collections::HashMap<String, i64>,
) -> Option<usize> {
    if candidates.is_empty() {
        return None;
    }
    let least_load = |pool: &mut dyn Iterator<Item = usize>| {
        pool.min_by_key(|&i| {
            let c = &candidates[i];
            (c.load, c.last_assigned, c.id)
        })
    };
    match strategy {
        Strategy::RoundRobin => {
            let after = rr_last.as_deref();
            let chosen = candidates
                .iter()
                .position(|c| after.is_none_or(|last| c.id > last))
                .unwrap_or(0);
            *rr_last = Some(candidates[chosen].id.to_string());
            Some(chosen)
        }
        Strategy::LeastLoad => least_load(&mut (0..candidates.len())),
        Strategy::Skill => {
            if widened {
                least_load(&mut (0..candidates.len()))
            } else {
                least_load(
                    &mut (0..candidates.len()).filter(|&i| covers(candidates[i].skills, need)),
                )
            }
        }
        Strategy::Weighted => {
            // Smooth weighted round robin (as in nginx): every candidate gains
            // its weight, the largest current weight wins and pays the total.
            let total: i64 = candidates.iter().map(|c| i64::from(c.capacity)).sum();
            let mut best: Option<(usize, i64)> = None;
            for (i, c) in candidates.iter().enumerate() {
                let w = weights.entry(c.id.to_string()).or_insert(0);
                *w += i64::from(c.capacity);
                if best.is_none_or(|(_, bw)| *w > bw) {
                    best = Some((i, *w));
                }
            }
            let (chosen, _) = best?;
            if let Some(w) = weights.get_mut(candidates[chosen].id) {
                *w -= total;
            }
            Some(chosen)
        }
    }
}

/// The operations every engine offers. Each is atomic.
// Why allowed: the trait is only called through the concrete `Engine` enum,
// whose futures the compiler checks for `Send` where they are spawned.
#[allow(async_fn_in_trait)]
pub trait EngineOps {
    /// Replaces the engine's state with the database's (keeps declared
    /// presence where the engine still has it).
    async fn rebuild(&self, snapshot: Snapshot, now: i64) -> AppResult<()>;
    /// Whether the engine lost its state and needs a rebuild.
    async fn needs_rebuild(&self) -> AppResult<bool>;
    /// Adds or updates an agent's capacity and skills (load untouched).
    async fn set_agent(&self, spec: AgentSpec) -> AppResult<()>;
    /// Replaces a team's member agents.
    async fn set_members(&self, team: &str, agents: Vec<String>) -> AppResult<()>;
    /// Declares an agent's status (and marks it live).
    async fn presence(&self, agent: &str, status: PresenceStatus, now: i64)
        -> AppResult<AgentLive>;
    /// Marks agents live; restores a declared status the engine lost.
    async fn heartbeat(&self, agents: &[(String, PresenceStatus)], now: i64) -> AppResult<()>;
    /// Adds a ticket to its team's queue (if given) and drains the queue.
    async fn drain(
        &self,
        plan: &TeamPlan,
        enqueue: Option<&Ticket>,
        now: i64,
        max: usize,
    ) -> AppResult<Vec<Assignment>>;
    /// Removes a waiting conversation; false if it was not waiting there.
    async fn dequeue(&self, team: &str, conv: &str) -> AppResult<bool>;
    /// An agent's conversation ended or moved away: one load less; an open
    /// offer of it is withdrawn.
    async fn release(&self, agent: &str, conv: &str) -> AppResult<()>;
    /// Gives a conversation to an agent directly (supervisor assignment,
    /// transfer): checks capacity (and liveness when `need_online`), takes
    /// the conversation out of `from_queue` if given, moves the load from
    /// `previous` if given.
    async fn assign(
        &self,
        conv: &str,
        agent: &str,
        from_queue: Option<&str>,
        previous: Option<&str>,
        need_online: bool,
        now: i64,
    ) -> AppResult<Result<(), Refusal>>;
    /// The agent accepts its offer: true if the offer was open.
    async fn accept(&self, conv: &str, agent: &str) -> AppResult<bool>;
    /// Withdraws expired offers: each goes back to its queue with the agent
    /// remembered as tried, and the agent's load drops. Returns them.
    async fn expire_offers(&self, now: i64) -> AppResult<Vec<Assignment>>;
    /// Removes and returns the conversations of a queue waiting since before
    /// `cutoff` (queue overflow by waiting time).
    async fn take_overdue(&self, team: &str, cutoff: i64) -> AppResult<Vec<Waiting>>;
    /// A team's queue in order: all of it, or its first `first` entries.
    async fn queue(&self, team: &str, first: Option<usize>) -> AppResult<Vec<Waiting>>;
    /// Agents as they are now (unknown ids are skipped).
    async fn agents(&self, ids: &[String], now: i64) -> AppResult<Vec<AgentLive>>;
    /// Whether one of the team's members (as the engine holds them, the same
    /// for every node) is online, and the length of the team's queue: what
    /// every consult checks, in one look that stops at the first online
    /// agent and does not read the queue (with 100 agents and 10,000
    /// waiting, reading both whole was most of a consult's cost in Redis).
    /// Not a node's cached member list: a node that cached the team before
    /// its members were added on another node took every consult for a
    /// left message until the cache expired.
    async fn intake(&self, team: &str, now: i64) -> AppResult<Intake>;
}
