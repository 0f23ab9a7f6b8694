//! Dispatch: customers consult, conversations wait in their team's queue, and
//! the team's strategy gives each to an agent with room for it; then accept,
//! transfer, close, rating, and the supervisors' live view and hand
//! assignment.
//!
//! The database holds every conversation's state and its history
//! (`conversation_events`); the [`Engine`] holds the live queues, presence and
//! loads and makes the atomic choice of an agent. An engine step happens
//! first, then the database change it implies, guarded by the state the step
//! expected (`WHERE state = 'queued'` and so on): if the conversation moved
//! meanwhile the step is undone, so a conversation is never assigned twice.
//!
//! Layout:
//! - this file: [`Dispatcher`] (one per node) and the operations behind the
//!   frames `consult`, `presence`, `accept`, `transfer`, `close`, `rate`,
//!   `watch`, `assign`; the background ticks (offer timeouts, queue overflow,
//!   idle auto-close, presence liveness) and queue-position notices.
//! - [`engine`]: the engine seam, its types and the in-process pick rules.
//! - [`local`] / [`redis`] (+ `dispatch.lua`): the two engines.
//! - [`snapshot`]: the engine state as the database says it is (rebuilds).
//! - [`teams`]: teams, members, customer–team relationships.
//! - [`eta`]: the waiting-time estimate.
//! - [`api`]: the REST routes of all of the above.

pub mod api;
pub mod engine;
pub mod eta;
pub mod local;
pub mod redis;
pub mod snapshot;
pub mod teams;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::Row;
use switchboard_protocol::{
    limits, AgentState, ConversationInfo, ConversationKind, ConversationState, NoticeLevel,
    PresenceStatus, QueuedConversation, Role, ServerFrame, TeamQueue, UserRef, WatchSnapshot,
    WatchTeams,
};
use tokio::sync::Notify;

pub use engine::Skill;
use engine::{AgentLive, AgentSpec, Assignment, EngineOps, Refusal, Ticket};
use teams::Team;

use crate::bus::{Exclude, Target};
use crate::conversations::{self, messages};
use crate::error::{is_unique_violation, AppError, AppResult};
use crate::gateway::registry::ALL_TEAMS;
use crate::state::AppState;
use crate::store::Store;
use crate::util::{new_id, now_ms};

/// How long a node reuses a team's settings. A change is announced on the
/// bus (`TeamsChanged`) and every node drops its copy at once; the lifetime
/// bounds how long a lost announcement (a Redis reconnect) leaves one stale.
/// Why 2 s: short for that, and consults do not each pay for reading the
/// team.
const TEAM_CACHE: Duration = Duration::from_secs(2);
/// Background tick: offer timeouts, overflow, drains. Why 250 ms: an offer
/// expires at most this late, and the tick's work is a few engine calls.
const TICK: Duration = Duration::from_millis(250);
/// Every this many ticks each team is drained even without an event (working
/// hours opening, an agent's liveness returning), and overflow and idle
/// conversations are checked.
const SWEEP_TICKS: u32 = 8;
/// Left-message pickup runs every this many ticks (and when an agent comes online).
const SLOW_TICKS: u32 = 40;
/// Queue-position notices are coalesced for this long. Why 50 ms: a burst of
/// consults or assignments sends each waiting customer one update, not one per
/// change, while the customer still sees it immediately.
const NOTIFY_DELAY: Duration = Duration::from_millis(50);
/// An agent's `presence` delta goes out at most this often. Why 100 ms: a
/// draining queue changes each agent's load many times a second, and each
/// change was a frame to the agent and to every watcher of its teams (and a
/// bus message); a supervisor's view needs the latest load, not every step.
/// A change after a quiet spell goes out at once.
const PRESENCE_EVERY: Duration = Duration::from_millis(100);
/// Assignments per engine call. Why 64: a freed capacity rarely admits more;
/// a large backlog drains in steps that keep each script call short.
const DRAIN_MAX: usize = 64;
/// Longest rating comment.
const MAX_COMMENT_CHARS: usize = 1000;
/// Longest transfer note.
const MAX_NOTE_CHARS: usize = 500;

/// The engine this node uses.
pub enum Engine {
    Local(std::sync::Arc<local::LocalEngine>),
    Redis(Box<redis::RedisEngine>),
}

macro_rules! engine {
    ($self:expr, $e:ident => $call:expr) => {
        match $self {
            Engine::Local($e) => $call,
            Engine::Redis($e) => $call,
        }
    };
}

impl Engine {
    pub async fn rebuild(&self, snapshot: engine::Snapshot, now: i64) -> AppResult<()> {
        engine!(self, e => e.rebuild(snapshot, now).await)
    }
    pub async fn needs_rebuild(&self) -> AppResult<bool> {
        engine!(self, e => e.needs_rebuild().await)
    }
    pub async fn set_agent(&self, spec: AgentSpec) -> AppResult<()> {
        engine!(self, e => e.set_agent(spec).await)
    }
    pub async fn set_members(&self, team: &str, agents: Vec<String>) -> AppResult<()> {
        engine!(self, e => e.set_members(team, agents).await)
    }
    pub async fn presence(
        &self,
        agent: &str,
        status: PresenceStatus,
        now: i64,
    ) -> AppResult<AgentLive> {
        engine!(self, e => e.presence(agent, status, now).await)
    }
    pub async fn heartbeat(&self, agents: &[(String, PresenceStatus)], now: i64) -> AppResult<()> {
        engine!(self, e => e.heartbeat(agents, now).await)
    }
    pub async fn drain(
        &self,
        plan: &engine::TeamPlan,
        enqueue: Option<&Ticket>,
        now: i64,
        max: usize,
    ) -> AppResult<Vec<Assignment>> {
        engine!(self, e => e.drain(plan, enqueue, now, max).await)
    }
    pub async fn dequeue(&self, team: &str, conv: &str) -> AppResult<bool> {
        engine!(self, e => e.dequeue(team, conv).await)
    }
    pub async fn release(&self, agent: &str, conv: &str) -> AppResult<()> {
        engine!(self, e => e.release(agent, conv).await)
    }
    pub async fn assign(
        &self,
        conv: &str,
        agent: &str,
        from_queue: Option<&str>,
        previous: Option<&str>,
        need_online: bool,
        now: i64,
    ) -> AppResult<Result<(), Refusal>> {
        engine!(self, e => e.assign(conv, agent, from_queue, previous, need_online, now).await)
    }
    pub async fn accept(&self, conv: &str, agent: &str) -> AppResult<bool> {
        engine!(self, e => e.accept(conv, agent).await)
    }
    pub async fn expire_offers(&self, now: i64) -> AppResult<Vec<Assignment>> {
        engine!(self, e => e.expire_offers(now).await)
    }
    pub async fn take_overdue(&self, team: &str, cutoff: i64) -> AppResult<Vec<engine::Waiting>> {
        engine!(self, e => e.take_overdue(team, cutoff).await)
    }
    pub async fn queue(&self, team: &str, first: Option<usize>) -> AppResult<Vec<engine::Waiting>> {
        engine!(self, e => e.queue(team, first).await)
    }
    pub async fn agents(&self, ids: &[String], now: i64) -> AppResult<Vec<AgentLive>> {
        engine!(self, e => e.agents(ids, now).await)
    }
    pub async fn intake(&self, team: &str, now: i64) -> AppResult<engine::Intake> {
        engine!(self, e => e.intake(team, now).await)
    }
}

/// A team's settings and its routed agents, as cached by a node.
#[derive(Clone)]
struct TeamEntry {
    team: Team,
    agents: Vec<String>,
    /// Display names of the members (for system messages).
    names: HashMap<String, String>,
}

/// One node's dispatcher.
pub struct Dispatcher {
    engine: Engine,
    // Why std Mutexes below: each guards a small map for a lookup or insert
    // and is never held across an await.
    teams: Mutex<HashMap<String, (Instant, TeamEntry)>>,
    /// Bumped (under the `teams` lock) whenever a team is invalidated: a
    /// read that started before is not cached, or a team changed while one
    /// of its reads was on the way would be cached stale.
    teams_generation: AtomicU64,
    /// Staff connected to this node: declared status and connection count.
    local: Mutex<HashMap<String, (PresenceStatus, usize)>>,
    /// Teams whose waiting customers need a position update; true where
    /// the change was made on this node (the other nodes are then told).
    dirty: Mutex<HashMap<String, bool>>,
    notify: Notify,
    eta: eta::Estimator,
    /// Conversation → customer, for queue views (a conversation's customer
    /// never changes, so entries never go stale).
    customers: Mutex<HashMap<String, String>>,
    /// What each team's waiting customers connected here were last told.
    told: Mutex<HashMap<String, TeamTold>>,
    /// Agent → its teams, reused for [`TEAM_CACHE`].
    agent_teams: Mutex<HashMap<String, (Instant, Vec<String>)>>,
    /// Agents whose status or load changed since their last `presence`
    /// delta: sent together by one task (see [`PRESENCE_EVERY`]).
    presence_dirty: Mutex<HashSet<String>>,
    presence_notify: Notify,
}

/// Conversation → customer entries kept at most. Why 100k: a few MB; past it
/// the map starts over and misses are read from the database again.
const MAX_CACHED_CUSTOMERS: usize = 100_000;

impl Dispatcher {
    pub fn new(engine: Engine) -> Dispatcher {
        Dispatcher {
            engine,
            teams: Mutex::new(HashMap::new()),
            teams_generation: AtomicU64::new(0),
            local: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashMap::new()),
            notify: Notify::new(),
            eta: eta::Estimator::default(),
            customers: Mutex::new(HashMap::new()),
            told: Mutex::new(HashMap::new()),
            agent_teams: Mutex::new(HashMap::new()),
            presence_dirty: Mutex::new(HashSet::new()),
            presence_notify: Notify::new(),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Forgets a cached team (after this node or, told over the bus,
    /// another node changed it).
    pub fn invalidate(&self, team: &str) {
        let mut teams = self.teams.lock().expect("teams lock");
        teams.remove(team);
        self.teams_generation.fetch_add(1, Ordering::Relaxed);
        drop(teams);
        self.agent_teams.lock().expect("agent teams lock").clear();
    }

    fn remember_customer(&self, conv: &str, customer: &str) {
        let mut map = self.customers.lock().expect("customers lock");
        if map.len() >= MAX_CACHED_CUSTOMERS {
            map.clear();
        }
        map.insert(conv.to_string(), customer.to_string());
    }

    fn touch(&self, team: &str) {
        self.dirty
            .lock()
            .expect("dirty lock")
            .insert(team.to_string(), true);
        self.notify.notify_one();
    }

    /// The customer of `conv` is sent its position at the next update even
    /// if it did not change.
    fn forget_told(&self, team: &str, conv: &str) {
        if let Some(told) = self.told.lock().expect("told lock").get_mut(team) {
            told.convs.remove(conv);
            told.joined = true;
        }
    }

    /// A customer connected here joined the team's queue: the next update
    /// reads the whole queue, so that it is told its position at once.
    fn joined(&self, team: &str) {
        self.told
            .lock()
            .expect("told lock")
            .entry(team.to_string())
            .or_default()
            .joined = true;
        self.touch(team);
    }

    /// Another node changed these teams' queues: this node's waiting
    /// customers and watchers get their update too.
    pub fn queues_changed_elsewhere(&self, teams: Vec<String>) {
        let mut dirty = self.dirty.lock().expect("dirty lock");
        for team in teams {
            dirty.entry(team).or_insert(false);
        }
        drop(dirty);
        self.notify.notify_one();
    }
}

async fn team_entry(state: &AppState, id: &str) -> AppResult<Option<TeamEntry>> {
    let d = state.dispatcher();
    if let Some((at, e)) = d.teams.lock().expect("teams lock").get(id) {
        if at.elapsed() < TEAM_CACHE {
            return Ok(Some(e.clone()));
        }
    }
    let generation = d.teams_generation.load(Ordering::Relaxed);
    let Some(team) = teams::get(state.store(), id).await? else {
        return Ok(None);
    };
    let members = teams::members(state.store(), id).await?;
    let agents = members
        .iter()
        .filter(|m| m.role == "agent")
        .map(|m| m.user.clone())
        .collect();
    let names = members.into_iter().map(|m| (m.user, m.name)).collect();
    let entry = TeamEntry {
        team,
        agents,
        names,
    };
    let mut cache = d.teams.lock().expect("teams lock");
    if d.teams_generation.load(Ordering::Relaxed) == generation {
        cache.insert(id.to_string(), (Instant::now(), entry.clone()));
    }
    Ok(Some(entry))
}

/// Loads the engine's state from the database if the engine lost it (always
/// for the in-process engine), then starts the background tasks.
pub async fn start(
    state: &AppState,
    tracker: &tokio_util::task::TaskTracker,
    cancel: tokio_util::sync::CancellationToken,
) -> AppResult<()> {
    let d = state.dispatcher();
    let must = match d.engine() {
        Engine::Local(_) => true,
        Engine::Redis(_) => d.engine().needs_rebuild().await.unwrap_or(false),
    };
    if must {
        d.engine()
            .rebuild(snapshot::load(state.store()).await?, now_ms())
            .await?;
    }
    {
        let state = state.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let mut ticker = tokio::time::interval(TICK);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n: u32 = 0;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                n = n.wrapping_add(1);
                if let Err(e) = tick(&state, n).await {
                    e.log();
                }
            }
        });
    }
    {
        let state = state.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let mut ticker =
                tokio::time::interval(Duration::from_millis(engine::HEARTBEAT_MS as u64));
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                if let Err(e) = heartbeat(&state).await {
                    e.log();
                }
            }
        });
    }
    {
        let state = state.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let d = state.dispatcher();
            let mut last = tokio::time::Instant::now() - PRESENCE_EVERY;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = d.presence_notify.notified() => {}
                }
                tokio::time::sleep_until(last + PRESENCE_EVERY).await;
                let agents: Vec<String> = d
                    .presence_dirty
                    .lock()
                    .expect("presence lock")
                    .drain()
                    .collect();
                // A wake-up whose agents an earlier round already sent.
                if agents.is_empty() {
                    continue;
                }
                last = tokio::time::Instant::now();
                if let Err(e) = tell_presence(&state, &agents).await {
                    e.log();
                }
            }
        });
    }
    {
        let state = state.clone();
        tracker.spawn(async move {
            // Teams with an update still to send (see `announce_queue`) and
            // when to look at them again.
            let mut recheck: HashMap<String, tokio::time::Instant> = HashMap::new();
            loop {
                let next = recheck.values().min().copied();
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = state.dispatcher().notify.notified() => {}
                    _ = tokio::time::sleep_until(next.unwrap_or_else(tokio::time::Instant::now)),
                        if next.is_some() => {}
                }
                tokio::time::sleep(NOTIFY_DELAY).await;
                let mut teams: HashMap<String, bool> = state
                    .dispatcher()
                    .dirty
                    .lock()
                    .expect("dirty lock")
                    .drain()
                    .collect();
                let now = tokio::time::Instant::now();
                recheck.retain(|team, at| {
                    if *at <= now {
                        teams.entry(team.clone()).or_insert(false);
                        false
                    } else {
                        true
                    }
                });
                let changed_here: Vec<String> = teams
                    .iter()
                    .filter(|(_, here)| **here)
                    .map(|(team, _)| team.clone())
                    .collect();
                if !changed_here.is_empty() {
                    state.fanout().queue_changed(changed_here);
                }
                let mut notified = 0;
                for team in teams.into_keys() {
                    match announce_queue(&state, &team).await {
                        Ok(told) => {
                            notified += told.sent;
                            if let Some(again_in) = told.again_in {
                                recheck.insert(team, now + again_in);
                            }
                        }
                        Err(e) => e.log(),
                    }
                }
                // Why: a long queue sends many updates per round, so it is
                // updated less often (20 µs per update sent, at most one more
                // second) to keep the cost bounded.
                let extra = Duration::from_micros(20 * notified as u64);
                tokio::time::sleep(extra.min(Duration::from_secs(1))).await;
            }
        });
    }
    Ok(())
}

async fn heartbeat(state: &AppState) -> AppResult<()> {
    let agents: Vec<(String, PresenceStatus)> = state
        .dispatcher()
        .local
        .lock()
        .expect("local lock")
        .iter()
        .map(|(id, (status, _))| (id.clone(), *status))
        .collect();
    state
        .dispatcher()
        .engine()
        .heartbeat(&agents, now_ms())
        .await
}

async fn tick(state: &AppState, n: u32) -> AppResult<()> {
    let d = state.dispatcher();
    let now = now_ms();
    for expired in d.engine().expire_offers(now).await? {
        offer_expired(state, &expired).await?;
    }
    if n.is_multiple_of(SWEEP_TICKS) {
        // One team's failure is logged and does not stop the sweep.
        for team in teams::list(state.store()).await? {
            if let Some(after) = team.overflow_after_s() {
                let cutoff = now - i64::from(after) * 1000;
                let overdue = d.engine().take_overdue(&team.id, cutoff).await?;
                for w in overdue {
                    if let Err(e) = overflow(state, &team, &w.conv, "waited too long").await {
                        e.log();
                    }
                }
            }
            if team.enabled {
                if let Err(e) = drain(state, &team.id).await {
                    e.log();
                }
            }
        }
        if let Err(e) = auto_close_idle(state, now).await {
            e.log();
        }
    }
    if n.is_multiple_of(SLOW_TICKS) {
        pick_up_left_messages(state, now).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Service conversations as dispatch sees them.

struct Service {
    id: String,
    state: ConversationState,
    team: Option<String>,
    agent: Option<String>,
    customer: Option<String>,
    offered_to: Option<String>,
    priority: i64,
    queued_at: Option<i64>,
    pending: bool,
    skills: Vec<Skill>,
}

async fn load_service(store: &Store, conv: &str) -> AppResult<Service> {
    let row = sqlx::query(
        "SELECT id, kind, state, team_id, agent_id, customer_id, offered_to, priority, \
         queued_at, pending, skills FROM conversations WHERE id = $1",
    )
    .bind(conv)
    .fetch_optional(store.read())
    .await?
    .ok_or_else(|| AppError::not_found("no such conversation"))?;
    let kind: String = row.try_get("kind")?;
    if kind != ConversationKind::Service.as_str() {
        return Err(AppError::bad_request(
            "this is a group conversation, not a service conversation",
        ));
    }
    let st: String = row.try_get("state")?;
    Ok(Service {
        id: row.try_get("id")?,
        state: ConversationState::parse(&st)
            .ok_or_else(|| AppError::internal(format!("bad state {st}")))?,
        team: row.try_get("team_id")?,
        agent: row.try_get("agent_id")?,
        customer: row.try_get("customer_id")?,
        offered_to: row.try_get("offered_to")?,
        priority: row.try_get("priority")?,
        queued_at: row.try_get("queued_at")?,
        pending: row.try_get::<i64, _>("pending")? == 1,
        skills: serde_json::from_str(&row.try_get::<String, _>("skills")?).unwrap_or_default(),
    })
}

impl Service {
    fn ticket(&self) -> Option<Ticket> {
        Some(Ticket {
            conv: self.id.clone(),
            team: self.team.clone()?,
            priority: self.priority,
            queued_at: self.queued_at?,
            skills: self.skills.clone(),
        })
    }
}

#[allow(clippy::too_many_arguments)]
async fn record(
    conn: &mut sqlx::AnyConnection,
    conv: &str,
    kind: &str,
    team: Option<&str>,
    agent: Option<&str>,
    actor: Option<&str>,
    note: Option<&str>,
    at: i64,
) -> AppResult<()> {
    sqlx::query(
        "INSERT INTO conversation_events (id, conv_id, kind, team_id, agent_id, actor_id, note, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(new_id("ev_"))
    .bind(conv)
    .bind(kind)
    .bind(team)
    .bind(agent)
    .bind(actor)
    .bind(note)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn user_name(store: &Store, id: &str) -> AppResult<String> {
    let row = sqlx::query("SELECT name FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(store.read())
        .await?;
    Ok(row
        .map(|r| r.try_get::<String, _>("name"))
        .transpose()?
        .unwrap_or_else(|| id.to_string()))
}

/// Sends a conversation's current state to its members and its team's watchers.
async fn announce(state: &AppState, conv: &str, also: &[&str]) -> AppResult<ConversationInfo> {
    let info = conversations::conversation_info(state.store(), conv).await?;
    deliver_conversation(state, &info, also);
    Ok(info)
}

/// Sends a conversation's state (as just written) to its members, to `also`
/// and to its team's watchers.
fn deliver_conversation(state: &AppState, info: &ConversationInfo, also: &[&str]) {
    let frame = ServerFrame::Conversation { conv: info.clone() };
    state.deliver_frame(Target::Conv(info.id.clone()), Exclude::Nobody, &frame);
    for user in also {
        state.deliver_frame(Target::User(user.to_string()), Exclude::Nobody, &frame);
    }
    if let Some(team) = &info.team {
        state.deliver_frame(Target::Watch(team.clone()), Exclude::Nobody, &frame);
    }
}

fn deliver_message(state: &AppState, msg: &switchboard_protocol::Message) {
    state.deliver_frame(
        Target::Conv(msg.conv.clone()),
        Exclude::Nobody,
        &ServerFrame::Message { msg: msg.clone() },
    );
}

fn notice(state: &AppState, user: &str, conv: &str, level: NoticeLevel, code: &str, text: &str) {
    state.deliver_frame(
        Target::User(user.to_string()),
        Exclude::Nobody,
        &ServerFrame::Notice {
            level,
            text: text.to_string(),
            code: Some(code.to_string()),
            conv: Some(conv.to_string()),
        },
    );
}

// ---------------------------------------------------------------------------
// Consult.

/// Whether a team can take a conversation now: open, with an online agent,
/// and room in its queue.
async fn can_serve(state: &AppState, entry: &TeamEntry, now: i64) -> AppResult<bool> {
    if !entry.team.is_open(now) {
        return Ok(false);
    }
    let intake = state
        .dispatcher()
        .engine()
        .intake(&entry.team.id, now)
        .await?;
    Ok(intake.anyone_online
        && entry
            .team
            .max_queue
            .is_none_or(|max| intake.waiting < max as usize))
}

/// A customer's `consult`: opens a service conversation (or returns the one
/// already open) and queues it with the team chosen for it.
pub async fn consult(
    state: &AppState,
    user: &UserRef,
    team: Option<&str>,
    topic: Option<&str>,
    text: Option<&str>,
) -> AppResult<ConversationInfo> {
    if user.role != Role::Customer {
        return Err(AppError::forbidden("only customers consult"));
    }
    let topic = topic.map(str::trim).filter(|t| !t.is_empty());
    if topic.is_some_and(|t| t.chars().count() > 50) {
        return Err(AppError::bad_request("topic must be at most 50 characters"));
    }
    let text = text.map(str::trim).filter(|t| !t.is_empty());
    if text.is_some_and(|t| t.chars().count() > limits::MAX_BODY_CHARS) {
        return Err(AppError::bad_request(format!(
            "text must be at most {} characters",
            limits::MAX_BODY_CHARS
        )));
    }
    let store = state.store();
    // One open service conversation per customer: a second consult returns it.
    let open = sqlx::query(
        "SELECT id FROM conversations WHERE customer_id = $1 AND kind = 'service' \
         AND state <> 'closed' ORDER BY created_at DESC LIMIT 1",
    )
    .bind(&user.id)
    .fetch_optional(store.read())
    .await?;
    if let Some(row) = open {
        let id: String = row.try_get("id")?;
        if let Some(text) = text {
            // What the customer wrote is not lost: it goes into the open one.
            messages::send_message(
                state,
                user,
                None,
                messages::SendInput {
                    conv: id.clone(),
                    client_msg_id: format!("consult:{}", new_id("")),
                    kind: switchboard_protocol::MessageKind::Text,
                    body: Some(text.to_string()),
                    attachment: None,
                },
            )
            .await?;
        }
        let info = conversations::conversation_info(store, &id).await?;
        if let Some(team) = &info.team {
            // A repeated consult (a customer back after a reconnect) is
            // always told its position again.
            state.dispatcher().forget_told(team, &id);
            state.dispatcher().touch(team);
        }
        return Ok(info);
    }
    let now = now_ms();
    let candidates: Vec<Team> = match team {
        Some(id) => {
            let t = teams::get(store, id)
                .await?
                .filter(|t| t.enabled)
                .ok_or_else(|| AppError::not_found("no such team"))?;
            vec![t]
        }
        None => teams::candidates_for(store, &user.id, topic, now).await?,
    };
    if candidates.is_empty() {
        return Err(AppError::unavailable(
            "no service team is set up yet; please try again later",
        ));
    }
    let mut chosen: Option<TeamEntry> = None;
    for t in &candidates {
        if let Some(entry) = team_entry(state, &t.id).await? {
            if can_serve(state, &entry, now).await? {
                chosen = Some(entry);
                break;
            }
        }
    }
    let pending = chosen.is_none();
    let team = match chosen {
        Some(e) => e.team,
        None => candidates[0].clone(),
    };
    let skills = team.skills_for(topic);
    let id = new_id("cv_");
    let mut tx = store.write().begin().await?;
    sqlx::query(
        "INSERT INTO conversations (id, kind, state, team_id, customer_id, last_seq, created_at, \
         updated_at, topic, priority, skills, pending, queued_at) \
         VALUES ($1, 'service', 'queued', $2, $3, 0, $4, $4, $5, 0, $6, $7, $4)",
    )
    .bind(&id)
    .bind(&team.id)
    .bind(&user.id)
    .bind(now)
    .bind(topic)
    .bind(serde_json::to_string(&skills).expect("skills serialize"))
    .bind(i64::from(pending))
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO conversation_members (conv_id, user_id, role, last_read_seq, joined_at) \
         VALUES ($1, $2, 'customer', 0, $3)",
    )
    .bind(&id)
    .bind(&user.id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    record(
        &mut tx,
        &id,
        if pending { "left_message" } else { "queued" },
        Some(&team.id),
        None,
        Some(&user.id),
        topic,
        now,
    )
    .await?;
    tx.commit().await?;
    state.dispatcher().remember_customer(&id, &user.id);
    state.members_added(&id, vec![user.id.clone()]);
    if let Some(text) = text {
        messages::send_message(
            state,
            user,
            None,
            messages::SendInput {
                conv: id.clone(),
                client_msg_id: format!("consult:{id}"),
                kind: switchboard_protocol::MessageKind::Text,
                body: Some(text.to_string()),
                attachment: None,
            },
        )
        .await?;
    }
    let info = announce(state, &id, &[]).await?;
    if pending {
        notice(
            state,
            &user.id,
            &id,
            NoticeLevel::Info,
            "left_message",
            "暂时没有客服可以接待，您可以留言，客服上线后会尽快回复。No agent is available right now; leave a message and we will reply as soon as we are back.",
        );
        return Ok(info);
    }
    let ticket = Ticket {
        conv: id.clone(),
        team: team.id.clone(),
        priority: 0,
        queued_at: now,
        skills,
    };
    let assignments = state
        .dispatcher()
        .engine()
        .drain(&team.plan(now), Some(&ticket), now, DRAIN_MAX)
        .await?;
    apply(state, assignments, now).await?;
    state.dispatcher().joined(&team.id);
    Ok(info)
}

// ---------------------------------------------------------------------------
// Assignment.

/// Drains a team's queue as far as capacity allows.
pub async fn drain(state: &AppState, team: &str) -> AppResult<()> {
    let Some(entry) = team_entry(state, team).await? else {
        return Ok(());
    };
    let now = now_ms();
    let plan = entry.team.plan(now);
    loop {
        let assignments = state
            .dispatcher()
            .engine()
            .drain(&plan, None, now, DRAIN_MAX)
            .await?;
        let n = assignments.len();
        if n > 0 {
            state.dispatcher().touch(team);
        }
        apply(state, assignments, now).await?;
        if n < DRAIN_MAX {
            return Ok(());
        }
    }
}

/// The teams an agent belongs to, cached for [`TEAM_CACHE`].
async fn teams_of(state: &AppState, agent: &str) -> AppResult<Vec<String>> {
    let d = state.dispatcher();
    if let Some((at, teams)) = d.agent_teams.lock().expect("agent teams lock").get(agent) {
        if at.elapsed() < TEAM_CACHE {
            return Ok(teams.clone());
        }
    }
    let generation = d.teams_generation.load(Ordering::Relaxed);
    let teams = teams::teams_of(state.store(), agent).await?;
    let mut cache = d.agent_teams.lock().expect("agent teams lock");
    if d.teams_generation.load(Ordering::Relaxed) == generation {
        cache.insert(agent.to_string(), (Instant::now(), teams.clone()));
    }
    Ok(teams)
}

/// Drains every team the agent belongs to (its capacity grew or it came online).
async fn drain_teams_of(state: &AppState, agent: &str) -> AppResult<()> {
    for team in teams_of(state, agent).await? {
        drain(state, &team).await?;
    }
    Ok(())
}

/// Writes what the engine decided in a drain at `drained_at` (the `now` the
/// engine was given: an offer's deadline is counted from it, as the engine
/// counts it).
async fn apply(state: &AppState, assignments: Vec<Assignment>, drained_at: i64) -> AppResult<()> {
    let (offers, routed): (Vec<Assignment>, Vec<Assignment>) =
        assignments.into_iter().partition(|a| a.offered);
    if !routed.is_empty() {
        activate_routed(state, routed).await?;
    }
    let mut offers = offers.into_iter();
    while let Some(a) = offers.next() {
        match offer(state, &a, drained_at).await {
            Ok(true) => {}
            // The conversation moved meanwhile (closed by the customer): undo.
            Ok(false) => {
                state
                    .dispatcher()
                    .engine()
                    .release(&a.agent, &a.conv)
                    .await?
            }
            Err(e) => {
                // Nothing after the failure was written: undo it all.
                let unstored: Vec<Assignment> = std::iter::once(a).chain(offers).collect();
                undo_unstored(state, &unstored).await?;
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Undoes assignments the engine made but the database did not take: the
/// agents' loads drop, and each conversation the database still has
/// `queued` goes back into the engine's queue. Without the second step they
/// left the engine's queue and never reached an agent: waiting for ever, in
/// no queue. A drain of at most 0 only enqueues; a later drain assigns them.
/// One that cannot be read now is left for the next rebuild of the engine
/// from the database.
async fn undo_unstored(state: &AppState, assignments: &[Assignment]) -> AppResult<()> {
    let engine = state.dispatcher().engine();
    for a in assignments {
        engine.release(&a.agent, &a.conv).await?;
    }
    for a in assignments {
        let service = match load_service(state.store(), &a.conv).await {
            Ok(s) => s,
            Err(e) => {
                e.log();
                continue;
            }
        };
        if service.state != ConversationState::Queued {
            continue;
        }
        let Some(ticket) = service.ticket() else {
            continue;
        };
        let Ok(Some(entry)) = team_entry(state, &ticket.team).await else {
            continue;
        };
        let now = now_ms();
        if let Err(e) = engine
            .drain(&entry.team.plan(now), Some(&ticket), now, 0)
            .await
        {
            e.log();
        }
    }
    Ok(())
}

/// Attempts at storing a batch of assignments. Why 3: on PostgreSQL a batch
/// can deadlock with the message committer, which bumps the same
/// conversations' `last_seq`; the database aborts one side and a retry
/// goes through.
const BATCH_ATTEMPTS: u32 = 3;

/// Makes the engine's routed assignments real — in one transaction of four
/// statements whatever their number, because per assignment the statements
/// and commits were what limited a draining queue — then tells everyone
/// concerned. An assignment whose conversation moved meanwhile (the
/// customer closed it) is undone in the engine.
async fn activate_routed(state: &AppState, assignments: Vec<Assignment>) -> AppResult<()> {
    let engine = state.dispatcher().engine();
    let mut agents: Vec<String> = assignments.iter().map(|a| a.agent.clone()).collect();
    agents.sort_unstable();
    agents.dedup();
    let stored = async {
        // A drain is one team's: its cached entry has the names.
        let names = match team_entry(state, &assignments[0].team).await? {
            Some(e) if agents.iter().all(|a| e.names.contains_key(a)) => e.names,
            _ => user_names(state.store(), &agents).await?,
        };
        let mut attempt = 1;
        loop {
            match store_routed(state.store(), &assignments, &names, now_ms()).await {
                Ok(stored) => return Ok(stored),
                Err(e) if attempt < BATCH_ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "assignment batch failed; retrying");
                    attempt += 1;
                }
                Err(e) => return Err(AppError::from(e)),
            }
        }
    }
    .await;
    let stored = match stored {
        Ok(stored) => stored,
        Err(e) => {
            undo_unstored(state, &assignments).await?;
            return Err(e);
        }
    };
    let done: HashSet<&str> = stored.iter().map(|(info, _)| info.id.as_str()).collect();
    for a in assignments
        .iter()
        .filter(|a| !done.contains(a.conv.as_str()))
    {
        engine.release(&a.agent, &a.conv).await?;
    }
    for (info, msg) in &stored {
        if let Some(agent) = &info.agent {
            state.members_added(&info.id, vec![agent.clone()]);
        }
        deliver_message(state, msg);
        deliver_conversation(state, info, &[]);
    }
    presence_changed_many(state, &agents);
    Ok(())
}

/// The write of [`activate_routed`]: returns each conversation that was
/// still waiting, as it is now, with its system message.
async fn store_routed(
    store: &Store,
    assignments: &[Assignment],
    names: &HashMap<String, String>,
    now: i64,
) -> Result<Vec<(ConversationInfo, switchboard_protocol::Message)>, sqlx::Error> {
    use crate::store::Placeholders;
    let backend = store.backend();
    let mut tx = store.write().begin().await?;
    // The UPDATE reads the table: planned for its values (see
    // `store::Plans`); the three INSERTs read nothing and keep a generic plan.
    crate::store::plan_with(&mut tx, backend, crate::store::Plans::Custom).await?;
    // 1. Every conversation still waiting (and not offered) becomes active
    // with its agent; its `seq` is bumped for the system message.
    let mut p = Placeholders::new(backend);
    let cases: Vec<String> = assignments
        .iter()
        .map(|_| format!("WHEN {} THEN {}", p.one(), p.one()))
        .collect();
    let (assigned_at, updated_at) = (p.one(), p.one());
    let ids: Vec<String> = assignments.iter().map(|_| p.one()).collect();
    // The state test is wrapped in a CASE so that no index can serve it:
    // the planner would otherwise read every waiting conversation (and the
    // dead versions of those just assigned) through the state index, where
    // one primary-key look-up per id is what this needs.
    let sql = format!(
        "UPDATE conversations SET state = 'active', agent_id = CASE id {} END, \
         assigned_at = COALESCE(assigned_at, {assigned_at}), offered_to = NULL, \
         offer_expires_at = NULL, pending = 0, last_seq = last_seq + 1, updated_at = {updated_at} \
         WHERE id IN ({}) \
         AND CASE WHEN state = 'queued' AND offered_to IS NULL THEN 1 ELSE 0 END = 1 \
         RETURNING {}",
        cases.join(" "),
        ids.join(", "),
        conversations::RETURNING_INFO,
    );
    let mut q = sqlx::query(&sql);
    for a in assignments {
        q = q.bind(&a.conv).bind(&a.agent);
    }
    q = q.bind(now).bind(now);
    for a in assignments {
        q = q.bind(&a.conv);
    }
    let mut stored = Vec::with_capacity(assignments.len());
    for row in q.fetch_all(&mut *tx).await? {
        let info = conversations::info_from_row(&row, 0)
            .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        let agent = info.agent.clone().unwrap_or_default();
        let name = names.get(&agent).map_or(agent.as_str(), String::as_str);
        let body = format!("客服 {name} 为您服务");
        let msg = messages::system_message(&info.id, info.last_seq, &body, now);
        stored.push((info, msg));
    }
    if stored.is_empty() {
        return Ok(stored);
    }
    crate::store::plan_with(&mut tx, backend, crate::store::Plans::Generic).await?;
    // 2. The agents' member rows.
    let mut p = Placeholders::new(backend);
    let rows: Vec<String> = stored
        .iter()
        .map(|_| format!("({}, {}, 'agent', 0, {})", p.one(), p.one(), p.one()))
        .collect();
    let sql = format!(
        "INSERT INTO conversation_members (conv_id, user_id, role, last_read_seq, joined_at) \
         VALUES {} ON CONFLICT (conv_id, user_id) DO NOTHING",
        rows.join(", ")
    );
    let mut q = sqlx::query(&sql);
    for (info, _) in &stored {
        q = q.bind(&info.id).bind(&info.agent).bind(now);
    }
    q.execute(&mut *tx).await?;
    // 3. The history.
    let mut p = Placeholders::new(backend);
    let rows: Vec<String> = stored
        .iter()
        .map(|_| {
            format!(
                "({}, {}, 'assigned', {}, {}, NULL, NULL, {})",
                p.one(),
                p.one(),
                p.one(),
                p.one(),
                p.one()
            )
        })
        .collect();
    let sql = format!(
        "INSERT INTO conversation_events (id, conv_id, kind, team_id, agent_id, actor_id, note, at) \
         VALUES {}",
        rows.join(", ")
    );
    let mut q = sqlx::query(&sql);
    for (info, _) in &stored {
        q = q
            .bind(new_id("ev_"))
            .bind(&info.id)
            .bind(&info.team)
            .bind(&info.agent)
            .bind(now);
    }
    q.execute(&mut *tx).await?;
    // 4. The system messages.
    messages::insert_messages(&mut tx, backend, stored.iter().map(|(_, m)| m)).await?;
    tx.commit().await?;
    Ok(stored)
}

/// Display names of users (their id where a user has none).
async fn user_names(store: &Store, ids: &[String]) -> AppResult<HashMap<String, String>> {
    let mut names = HashMap::with_capacity(ids.len());
    if ids.is_empty() {
        return Ok(names);
    }
    let mut p = crate::store::Placeholders::new(store.backend());
    let ph: Vec<String> = ids.iter().map(|_| p.one()).collect();
    let sql = format!("SELECT id, name FROM users WHERE id IN ({})", ph.join(", "));
    let mut q = sqlx::query(&sql);
    for id in ids {
        q = q.bind(id);
    }
    for r in q.fetch_all(store.read()).await? {
        names.insert(r.try_get("id")?, r.try_get("name")?);
    }
    Ok(names)
}

/// Stores an offer the engine made at `drained_at`. Its deadline is the
/// engine's own (`drained_at` + the offer timeout), not counted from now:
/// counted from now it would lie a few milliseconds after the moment the
/// engine withdraws the offer, and the agent would be shown a deadline later
/// than the real one.
async fn offer(state: &AppState, a: &Assignment, drained_at: i64) -> AppResult<bool> {
    let Some(entry) = team_entry(state, &a.team).await? else {
        return Ok(false);
    };
    let now = now_ms();
    let timeout = entry.team.plan(drained_at).offer_ms.unwrap_or(30_000);
    let mut tx = state.store().write().begin().await?;
    let done = sqlx::query(
        "UPDATE conversations SET offered_to = $2, offer_expires_at = $3, updated_at = $4 \
         WHERE id = $1 AND state = 'queued' AND offered_to IS NULL",
    )
    .bind(&a.conv)
    .bind(&a.agent)
    .bind(drained_at + timeout)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    record(
        &mut tx,
        &a.conv,
        "offered",
        Some(&a.team),
        Some(&a.agent),
        None,
        None,
        now,
    )
    .await?;
    tx.commit().await?;
    announce(state, &a.conv, &[&a.agent]).await?;
    Ok(true)
}

async fn offer_expired(state: &AppState, a: &Assignment) -> AppResult<()> {
    let now = now_ms();
    let mut tx = state.store().write().begin().await?;
    let done = sqlx::query(
        "UPDATE conversations SET offered_to = NULL, offer_expires_at = NULL, updated_at = $3 \
         WHERE id = $1 AND state = 'queued' AND offered_to = $2",
    )
    .bind(&a.conv)
    .bind(&a.agent)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 1 {
        record(
            &mut tx,
            &a.conv,
            "offer_expired",
            Some(&a.team),
            Some(&a.agent),
            None,
            None,
            now,
        )
        .await?;
    }
    tx.commit().await?;
    announce(state, &a.conv, &[&a.agent]).await?;
    drain(state, &a.team).await?;
    state.dispatcher().joined(&a.team);
    Ok(())
}

/// How a conversation came to its agent.
#[derive(Clone, Copy)]
enum How<'a> {
    /// The agent accepted an offer.
    Accepted,
    /// A supervisor assigned it, from the queue or from `previous`.
    Manual {
        actor: &'a str,
        previous: Option<&'a str>,
    },
    /// Transferred by `actor` from `previous`.
    Transfer {
        actor: &'a str,
        previous: &'a str,
        note: Option<&'a str>,
    },
}

/// Makes `agent` the conversation's agent in the database, with its member
/// row, history event and system message, then tells everyone concerned.
/// False when the conversation was no longer in the expected state.
async fn activate(state: &AppState, conv: &str, agent: &str, how: How<'_>) -> AppResult<bool> {
    let store = state.store();
    let now = now_ms();
    let name = user_name(store, agent).await?;
    let guard = match how {
        How::Accepted => "state = 'queued' AND offered_to = $2",
        How::Manual { .. } => "state <> 'closed'",
        How::Transfer { .. } => "state = 'active' AND agent_id = $4",
    };
    let previous = match how {
        How::Manual { previous, .. } => previous,
        How::Transfer { previous, .. } => Some(previous),
        _ => None,
    };
    let mut tx = store.write().begin().await?;
    let sql = format!(
        "UPDATE conversations SET state = 'active', agent_id = $2, \
         assigned_at = COALESCE(assigned_at, $3), offered_to = NULL, offer_expires_at = NULL, \
         pending = 0, last_seq = last_seq + 1, updated_at = $3 WHERE id = $1 AND {guard} \
         RETURNING {}",
        conversations::RETURNING_INFO
    );
    let mut q = sqlx::query(&sql).bind(conv).bind(agent).bind(now);
    if let How::Transfer { previous, .. } = how {
        q = q.bind(previous);
    }
    let row = q.fetch_optional(&mut *tx).await?;
    let Some(row) = row else {
        return Ok(false);
    };
    // The seq bumped above is the system message's.
    let info = conversations::info_from_row(&row, 0)?;
    if let Some(prev) = previous {
        sqlx::query(
            "DELETE FROM conversation_members WHERE conv_id = $1 AND user_id = $2 AND role = 'agent'",
        )
        .bind(conv)
        .bind(prev)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO conversation_members (conv_id, user_id, role, last_read_seq, joined_at) \
         VALUES ($1, $2, 'agent', 0, $3) ON CONFLICT (conv_id, user_id) DO NOTHING",
    )
    .bind(conv)
    .bind(agent)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let (kind, actor, note, body) = match how {
        How::Accepted => (
            "accepted",
            Some(agent),
            None,
            format!("客服 {name} 为您服务"),
        ),
        How::Manual { actor, previous } => (
            if previous.is_some() {
                "reassigned"
            } else {
                "assigned"
            },
            Some(actor),
            None,
            format!("主管已将会话分配给客服 {name}"),
        ),
        How::Transfer { actor, note, .. } => (
            "transferred",
            Some(actor),
            note,
            format!("会话已转接给客服 {name}"),
        ),
    };
    record(
        &mut tx,
        conv,
        kind,
        info.team.as_deref(),
        Some(agent),
        actor,
        note,
        now,
    )
    .await?;
    let msg = messages::system_message(conv, info.last_seq, &body, now);
    messages::insert_messages(&mut tx, store.backend(), std::iter::once(&msg)).await?;
    tx.commit().await?;
    if let Some(prev) = previous {
        state.fanout().members_removed(conv, vec![prev.to_string()]);
    }
    state.members_added(conv, vec![agent.to_string()]);
    deliver_message(state, &msg);
    if let How::Transfer { note: Some(n), .. } = how {
        // The note is for the receiving agent; the customer sees the system
        // message only. It is kept in the conversation's history too.
        notice(state, agent, conv, NoticeLevel::Info, "transfer_note", n);
    }
    deliver_conversation(state, &info, previous.as_slice());
    let mut agents = vec![agent.to_string()];
    agents.extend(previous.map(str::to_string));
    presence_changed_many(state, &agents);
    Ok(true)
}

// ---------------------------------------------------------------------------
// Presence.

/// A staff connection opened on this node. Counted at once (so that a quick
/// disconnect cannot overtake it); the engine is told in the background, so a
/// slow or unreachable engine never holds up the connection.
pub fn staff_connected(state: &AppState, user: &UserRef) {
    let status = {
        let mut local = state.dispatcher().local.lock().expect("local lock");
        let entry = local
            .entry(user.id.clone())
            .or_insert((PresenceStatus::Offline, 0));
        entry.1 += 1;
        entry.0
    };
    let (state, user) = (state.clone(), user.clone());
    state.tracker().clone().spawn(async move {
        if let Err(e) = staff_live(&state, &user, status).await {
            e.log();
        }
    });
}

async fn staff_live(state: &AppState, user: &UserRef, status: PresenceStatus) -> AppResult<()> {
    let now = now_ms();
    state
        .dispatcher()
        .engine()
        .heartbeat(&[(user.id.clone(), status)], now)
        .await?;
    // Back after a drop: if the agent's declared status was online, its teams
    // may have waited for it.
    let live = state
        .dispatcher()
        .engine()
        .agents(std::slice::from_ref(&user.id), now)
        .await?;
    if let Some(a) = live.first() {
        state
            .dispatcher()
            .local
            .lock()
            .expect("local lock")
            .entry(user.id.clone())
            .and_modify(|e| e.0 = a.status);
        if a.status == PresenceStatus::Online {
            drain_teams_of(state, &user.id).await?;
        }
    }
    Ok(())
}

/// A staff connection on this node closed. When its last one closes, the
/// agent stops being refreshed and counts as offline after
/// [`engine::LIVE_MS`]; supervisors are told then.
pub fn staff_disconnected(state: &AppState, user: &str) {
    let last = {
        let mut local = state.dispatcher().local.lock().expect("local lock");
        match local.get_mut(user) {
            Some(entry) if entry.1 > 1 => {
                entry.1 -= 1;
                false
            }
            Some(_) => {
                local.remove(user);
                true
            }
            None => false,
        }
    };
    if !last {
        return;
    }
    let state2 = state.clone();
    let user = user.to_string();
    let cancel = state.shutdown_token().clone();
    state.tracker().spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(engine::LIVE_MS as u64 + 1000)) => {}
        }
        if state2.registry().is_connected(&user) {
            return;
        }
        presence_changed(&state2, &user);
    });
}

/// The agent's other tabs and its teams' watchers are told its status and
/// load, within [`PRESENCE_EVERY`].
fn presence_changed(state: &AppState, agent: &str) {
    presence_changed_many(state, &[agent.to_string()]);
}

/// [`presence_changed`] for several agents.
fn presence_changed_many(state: &AppState, agents: &[String]) {
    if agents.is_empty() {
        return;
    }
    let d = state.dispatcher();
    d.presence_dirty
        .lock()
        .expect("presence lock")
        .extend(agents.iter().cloned());
    d.presence_notify.notify_one();
}

/// Sends the agents' current status and load, read with one engine call.
async fn tell_presence(state: &AppState, agents: &[String]) -> AppResult<()> {
    let live = state.dispatcher().engine().agents(agents, now_ms()).await?;
    for a in live {
        let frame = ServerFrame::Presence {
            user: a.id.clone(),
            status: a.status,
            load: Some(a.load),
        };
        state.deliver_frame(Target::User(a.id.clone()), Exclude::Nobody, &frame);
        for team in teams_of(state, &a.id).await? {
            state.deliver_frame(Target::Watch(team), Exclude::Nobody, &frame);
        }
    }
    Ok(())
}

/// The `presence` frame.
pub async fn presence(state: &AppState, user: &UserRef, status: PresenceStatus) -> AppResult<()> {
    if !user.role.is_staff() {
        return Err(AppError::forbidden("only staff set a presence status"));
    }
    if let Some(e) = state
        .dispatcher()
        .local
        .lock()
        .expect("local lock")
        .get_mut(&user.id)
    {
        e.0 = status;
    }
    state
        .dispatcher()
        .engine()
        .presence(&user.id, status, now_ms())
        .await?;
    presence_changed(state, &user.id);
    if status == PresenceStatus::Online {
        drain_teams_of(state, &user.id).await?;
        // Left messages of its teams can be served now.
        pick_up_left_messages(state, now_ms()).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Accept, transfer, close, rate, assign.

/// The `accept` frame: the agent takes the conversation offered to it.
pub async fn accept(state: &AppState, user: &UserRef, conv: &str) -> AppResult<()> {
    if !user.role.is_staff() {
        return Err(AppError::forbidden("only agents accept conversations"));
    }
    let svc = load_service(state.store(), conv).await?;
    if svc.offered_to.as_deref() != Some(user.id.as_str()) {
        return Err(AppError::conflict(
            "this conversation is not offered to you (the offer may have expired)",
        ));
    }
    if !state.dispatcher().engine().accept(conv, &user.id).await? {
        return Err(AppError::conflict(
            "this conversation is not offered to you (the offer may have expired)",
        ));
    }
    if !activate(state, conv, &user.id, How::Accepted).await? {
        state.dispatcher().engine().release(&user.id, conv).await?;
        return Err(AppError::conflict("the conversation was closed meanwhile"));
    }
    Ok(())
}

fn refusal_error(r: Refusal, agent: &str) -> AppError {
    match r {
        Refusal::Full => AppError::conflict(format!("agent {agent} is at max concurrency")),
        Refusal::Offline => AppError::conflict(format!("agent {agent} is not online")),
        Refusal::NotWaiting => {
            AppError::conflict("the conversation is no longer waiting in its queue")
        }
        Refusal::UnknownAgent => {
            AppError::bad_request(format!("{agent} is not an agent of any team"))
        }
    }
}

/// The `transfer` frame.
pub async fn transfer(
    state: &AppState,
    user: &UserRef,
    conv: &str,
    to_agent: Option<&str>,
    to_team: Option<&str>,
    note: Option<&str>,
) -> AppResult<()> {
    if !user.role.is_staff() {
        return Err(AppError::forbidden("only agents and supervisors transfer"));
    }
    let note = note.map(str::trim).filter(|n| !n.is_empty());
    if note.is_some_and(|n| n.chars().count() > MAX_NOTE_CHARS) {
        return Err(AppError::bad_request(format!(
            "note must be at most {MAX_NOTE_CHARS} characters"
        )));
    }
    let svc = load_service(state.store(), conv).await?;
    let is_agent = svc.agent.as_deref() == Some(user.id.as_str());
    if !is_agent && !user.role.is_supervisor() {
        return Err(AppError::forbidden(
            "only the conversation's agent or a supervisor may transfer it",
        ));
    }
    if svc.state != ConversationState::Active {
        return Err(AppError::conflict(
            "only an active conversation can be transferred",
        ));
    }
    let previous = svc
        .agent
        .clone()
        .ok_or_else(|| AppError::internal("active service conversation without agent"))?;
    let d = state.dispatcher();
    let now = now_ms();
    match (to_agent, to_team) {
        (Some(agent), None) => {
            if agent == previous {
                return Err(AppError::bad_request(
                    "the conversation is already with this agent",
                ));
            }
            d.engine()
                .assign(conv, agent, None, Some(&previous), true, now)
                .await?
                .map_err(|r| refusal_error(r, agent))?;
            let how = How::Transfer {
                actor: &user.id,
                previous: &previous,
                note,
            };
            if !activate(state, conv, agent, how).await? {
                // Closed meanwhile: the close released `previous` already.
                d.engine().release(agent, conv).await?;
                return Err(AppError::conflict("the conversation was closed meanwhile"));
            }
            drain_teams_of(state, &previous).await?;
            Ok(())
        }
        (None, Some(team_id)) => {
            let entry = team_entry(state, team_id)
                .await?
                .filter(|e| e.team.enabled)
                .ok_or_else(|| AppError::not_found("no such team"))?;
            let team = &entry.team;
            let skills = team.skills_for(None);
            let mut tx = state.store().write().begin().await?;
            let done = sqlx::query(
                "UPDATE conversations SET state = 'queued', team_id = $2, agent_id = NULL, \
                 queued_at = $3, priority = 1, pending = 0, skills = $5, updated_at = $3 \
                 WHERE id = $1 AND state = 'active' AND agent_id = $4",
            )
            .bind(conv)
            .bind(&team.id)
            .bind(now)
            .bind(&previous)
            .bind(serde_json::to_string(&skills).expect("skills serialize"))
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                return Err(AppError::conflict("the conversation changed meanwhile"));
            }
            sqlx::query(
                "DELETE FROM conversation_members WHERE conv_id = $1 AND user_id = $2 AND role = 'agent'",
            )
            .bind(conv)
            .bind(&previous)
            .execute(&mut *tx)
            .await?;
            record(
                &mut tx,
                conv,
                "transferred",
                Some(&team.id),
                None,
                Some(&user.id),
                note,
                now,
            )
            .await?;
            let body = format!("会话已转接至「{}」，请稍候", team.name);
            let msg = messages::insert_system_message(&mut tx, conv, &body, now).await?;
            tx.commit().await?;
            d.engine().release(&previous, conv).await?;
            state.fanout().members_removed(conv, vec![previous.clone()]);
            deliver_message(state, &msg);
            announce(state, conv, &[&previous]).await?;
            presence_changed(state, &previous);
            let ticket = Ticket {
                conv: conv.to_string(),
                team: team.id.clone(),
                priority: 1,
                queued_at: now,
                skills,
            };
            let assignments = d
                .engine()
                .drain(&team.plan(now), Some(&ticket), now, DRAIN_MAX)
                .await?;
            apply(state, assignments, now).await?;
            d.joined(&team.id);
            drain_teams_of(state, &previous).await?;
            Ok(())
        }
        _ => Err(AppError::bad_request(
            "give exactly one of to_agent and to_team",
        )),
    }
}

/// Closes a service conversation. `actor` is `None` for the idle auto-close,
/// which also passes `idle_before`: a message that arrived since the
/// conversation was found idle keeps it open.
async fn close_conversation(
    state: &AppState,
    svc: &Service,
    actor: Option<&str>,
    idle_before: Option<i64>,
) -> AppResult<bool> {
    let now = now_ms();
    let mut tx = state.store().write().begin().await?;
    let done = sqlx::query(
        "UPDATE conversations SET state = 'closed', closed_at = $2, closed_by = $3, \
         offered_to = NULL, offer_expires_at = NULL, pending = 0, updated_at = $2 \
         WHERE id = $1 AND state <> 'closed' AND updated_at < $4",
    )
    .bind(&svc.id)
    .bind(now)
    .bind(actor.unwrap_or("system"))
    .bind(idle_before.unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    record(
        &mut tx,
        &svc.id,
        "closed",
        svc.team.as_deref(),
        svc.agent.as_deref(),
        actor,
        None,
        now,
    )
    .await?;
    let body = match actor {
        None => "会话因长时间无消息已自动结束",
        Some(a) if Some(a) == svc.customer.as_deref() => "客户已结束会话",
        Some(_) => "会话已结束",
    };
    let msg = messages::insert_system_message(&mut tx, &svc.id, body, now).await?;
    tx.commit().await?;
    let d = state.dispatcher();
    match (&svc.agent, &svc.offered_to, &svc.team) {
        (Some(agent), _, _) | (None, Some(agent), _) => d.engine().release(agent, &svc.id).await?,
        (None, None, Some(team)) => {
            d.engine().dequeue(team, &svc.id).await?;
        }
        _ => {}
    }
    deliver_message(state, &msg);
    // An agent the conversation was offered to is not a member: tell it too.
    announce(state, &svc.id, svc.offered_to.as_deref().as_slice()).await?;
    if let Some(customer) = &svc.customer {
        state.deliver_frame(
            Target::User(customer.clone()),
            Exclude::Nobody,
            &ServerFrame::RateRequest {
                conv: svc.id.clone(),
            },
        );
    }
    if let Some(agent) = svc.agent.as_ref().or(svc.offered_to.as_ref()) {
        presence_changed(state, agent);
        drain_teams_of(state, agent).await?;
    }
    if let Some(team) = &svc.team {
        d.touch(team);
    }
    Ok(true)
}

/// The `close` frame.
pub async fn close(state: &AppState, user: &UserRef, conv: &str) -> AppResult<()> {
    let svc = load_service(state.store(), conv).await?;
    let allowed = svc.customer.as_deref() == Some(user.id.as_str())
        || svc.agent.as_deref() == Some(user.id.as_str())
        || user.role.is_supervisor();
    if !allowed {
        return Err(AppError::not_found("no such conversation"));
    }
    if svc.state == ConversationState::Closed {
        return Err(AppError::conflict("this conversation is already closed"));
    }
    if !close_conversation(state, &svc, Some(&user.id), None).await? {
        return Err(AppError::conflict("this conversation is already closed"));
    }
    Ok(())
}

/// The `rate` frame: the customer rates a closed conversation, once.
pub async fn rate(
    state: &AppState,
    user: &UserRef,
    conv: &str,
    score: u8,
    comment: Option<&str>,
) -> AppResult<()> {
    let svc = load_service(state.store(), conv).await?;
    if svc.customer.as_deref() != Some(user.id.as_str()) {
        return Err(if user.role == Role::Customer {
            AppError::not_found("no such conversation")
        } else {
            AppError::forbidden("only the customer rates a conversation")
        });
    }
    if !(1..=5).contains(&score) {
        return Err(AppError::bad_request("score must be 1 to 5"));
    }
    let comment = comment.map(str::trim).filter(|c| !c.is_empty());
    if comment.is_some_and(|c| c.chars().count() > MAX_COMMENT_CHARS) {
        return Err(AppError::bad_request(format!(
            "comment must be at most {MAX_COMMENT_CHARS} characters"
        )));
    }
    if svc.state != ConversationState::Closed {
        return Err(AppError::conflict(
            "a conversation can be rated once it is closed",
        ));
    }
    let now = now_ms();
    let mut tx = state.store().write().begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO ratings (conv_id, customer_id, agent_id, team_id, score, comment, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(conv)
    .bind(&user.id)
    .bind(&svc.agent)
    .bind(&svc.team)
    .bind(i64::from(score))
    .bind(comment)
    .bind(now)
    .execute(&mut *tx)
    .await;
    match inserted {
        Err(e) if is_unique_violation(&e) => {
            return Err(AppError::conflict("this conversation was already rated"))
        }
        r => {
            r?;
        }
    }
    record(
        &mut tx,
        conv,
        "rated",
        svc.team.as_deref(),
        svc.agent.as_deref(),
        Some(&user.id),
        Some(&score.to_string()),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The `assign` frame: a supervisor gives a queued or active conversation to
/// an agent (capacity still holds).
pub async fn assign(state: &AppState, user: &UserRef, conv: &str, agent: &str) -> AppResult<()> {
    if !user.role.is_supervisor() {
        return Err(AppError::forbidden("only supervisors assign conversations"));
    }
    let svc = load_service(state.store(), conv).await?;
    let d = state.dispatcher();
    let now = now_ms();
    let (from_queue, previous) = match svc.state {
        ConversationState::Closed => {
            return Err(AppError::conflict("this conversation is closed"));
        }
        ConversationState::Active => (None, svc.agent.clone()),
        ConversationState::Queued if svc.offered_to.is_some() => (None, svc.offered_to.clone()),
        ConversationState::Queued if svc.pending => (None, None),
        ConversationState::Queued => (svc.team.clone(), None),
    };
    if previous.as_deref() == Some(agent) && svc.state == ConversationState::Active {
        return Err(AppError::bad_request(
            "the conversation is already with this agent",
        ));
    }
    d.engine()
        .assign(
            conv,
            agent,
            from_queue.as_deref(),
            previous.as_deref(),
            false,
            now,
        )
        .await?
        .map_err(|r| refusal_error(r, agent))?;
    let prev_member = if svc.state == ConversationState::Active {
        previous.as_deref()
    } else {
        None
    };
    let how = How::Manual {
        actor: &user.id,
        previous: prev_member,
    };
    if !activate(state, conv, agent, how).await? {
        d.engine().release(agent, conv).await?;
        return Err(AppError::conflict("the conversation was closed meanwhile"));
    }
    if let Some(offered) = svc.offered_to.as_deref().filter(|o| *o != agent) {
        // The offer is withdrawn: its holder learns the conversation went elsewhere.
        announce(state, conv, &[offered]).await?;
        presence_changed(state, offered);
    }
    if let Some(team) = &svc.team {
        d.touch(team);
    }
    if let Some(prev) = &previous {
        if prev != agent {
            drain_teams_of(state, prev).await?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Overflow, left messages, idle close.

/// An overflowing conversation has waited already: in the fallback team it
/// goes ahead of normal arrivals (priority 1, like a transfer).
fn overflow_priority(priority: i64, pending: bool) -> i64 {
    if pending {
        priority
    } else {
        priority.max(1)
    }
}

/// A conversation left its queue by a queue rule: to the fallback team, or
/// it waits as a left message.
async fn overflow(state: &AppState, team: &Team, conv: &str, why: &str) -> AppResult<()> {
    let now = now_ms();
    let fallback = match &team.fallback_team {
        Some(f) => team_entry(state, f).await?,
        None => None,
    };
    let svc = load_service(state.store(), conv).await?;
    let mut tx = state.store().write().begin().await?;
    let (to_team, pending) = match &fallback {
        Some(f) => (f.team.id.clone(), false),
        None => (team.id.clone(), true),
    };
    let skills = match &fallback {
        Some(f) => f.team.skills_for(None),
        None => svc.skills.clone(),
    };
    let done = sqlx::query(
        // The waiting time restarts in the new team (or as a left message):
        // its own max-wait rule must not fire at once.
        "UPDATE conversations SET team_id = $2, pending = $3, skills = $4, updated_at = $5, \
         queued_at = $5, priority = $6 WHERE id = $1 AND state = 'queued' AND offered_to IS NULL",
    )
    .bind(conv)
    .bind(&to_team)
    .bind(i64::from(pending))
    .bind(serde_json::to_string(&skills).expect("skills serialize"))
    .bind(now)
    .bind(overflow_priority(svc.priority, pending))
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(());
    }
    record(
        &mut tx,
        conv,
        if pending {
            "left_message"
        } else {
            "overflowed"
        },
        Some(&to_team),
        None,
        None,
        Some(why),
        now,
    )
    .await?;
    tx.commit().await?;
    state.dispatcher().touch(&team.id);
    if let Some(customer) = &svc.customer {
        if pending {
            notice(
                state,
                customer,
                conv,
                NoticeLevel::Info,
                "left_message",
                "客服正忙，您的消息已作为留言保存，客服会尽快回复。All agents are busy; your conversation is kept as a message and we will reply as soon as we can.",
            );
        }
    }
    announce(state, conv, &[]).await?;
    if let Some(f) = fallback {
        let ticket = Ticket {
            conv: conv.to_string(),
            team: f.team.id.clone(),
            priority: overflow_priority(svc.priority, false),
            queued_at: now,
            skills,
        };
        let assignments = state
            .dispatcher()
            .engine()
            .drain(&f.team.plan(now), Some(&ticket), now, DRAIN_MAX)
            .await?;
        apply(state, assignments, now).await?;
        state.dispatcher().joined(&f.team.id);
    }
    Ok(())
}

/// Left messages join their team's live queue once the team can serve.
async fn pick_up_left_messages(state: &AppState, now: i64) -> AppResult<()> {
    let rows = sqlx::query(
        "SELECT DISTINCT team_id FROM conversations WHERE kind = 'service' AND state = 'queued' \
         AND pending = 1 AND team_id IS NOT NULL",
    )
    .fetch_all(state.store().read())
    .await?;
    for r in rows {
        let team: String = r.try_get("team_id")?;
        let Some(entry) = team_entry(state, &team).await? else {
            continue;
        };
        // Free capacity, not just someone online: otherwise a max-wait rule
        // would turn it back into a left message moments later.
        let free = state
            .dispatcher()
            .engine()
            .agents(&entry.agents, now)
            .await?
            .iter()
            .any(|a| a.status == PresenceStatus::Online && a.load < a.capacity);
        if !free || !can_serve(state, &entry, now).await? {
            continue;
        }
        let convs = sqlx::query(
            "SELECT id FROM conversations WHERE team_id = $1 AND kind = 'service' \
             AND state = 'queued' AND pending = 1 ORDER BY queued_at LIMIT 100",
        )
        .bind(&team)
        .fetch_all(state.store().read())
        .await?;
        for c in convs {
            let id: String = c.try_get("id")?;
            // It joins the queue as a new arrival: its waiting time starts
            // now, or a max-wait rule would send it straight back.
            let mut tx = state.store().write().begin().await?;
            let done = sqlx::query(
                "UPDATE conversations SET pending = 0, queued_at = $2, updated_at = $2 \
                 WHERE id = $1 AND state = 'queued' AND pending = 1",
            )
            .bind(&id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                continue;
            }
            record(&mut tx, &id, "requeued", Some(&team), None, None, None, now).await?;
            tx.commit().await?;
            let svc = load_service(state.store(), &id).await?;
            if let Some(ticket) = svc.ticket() {
                let a = state
                    .dispatcher()
                    .engine()
                    .drain(&entry.team.plan(now), Some(&ticket), now, DRAIN_MAX)
                    .await?;
                apply(state, a, now).await?;
            }
            announce(state, &id, &[]).await?;
        }
        state.dispatcher().joined(&team);
    }
    Ok(())
}

async fn auto_close_idle(state: &AppState, now: i64) -> AppResult<()> {
    let idle_s = state.config().limits.idle_close_s;
    if idle_s == 0 {
        return Ok(());
    }
    let cutoff = now - (idle_s as i64) * 1000;
    let rows = sqlx::query(
        "SELECT id FROM conversations WHERE kind = 'service' AND state = 'active' \
         AND updated_at < $1 ORDER BY updated_at LIMIT 100",
    )
    .bind(cutoff)
    .fetch_all(state.store().read())
    .await?;
    for r in rows {
        let id: String = r.try_get("id")?;
        let svc = load_service(state.store(), &id).await?;
        close_conversation(state, &svc, None, Some(cutoff)).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Queue positions and the supervisors' view.

/// A team's waiting conversations, with customers, for supervisors.
async fn team_queue(state: &AppState, team: &str) -> AppResult<TeamQueue> {
    let waiting = state.dispatcher().engine().queue(team, None).await?;
    with_customers(state, team, waiting).await
}

/// A team's queue as supervisors see it: `waiting` (the whole queue, in
/// order) with each conversation's customer.
async fn with_customers(
    state: &AppState,
    team: &str,
    waiting: Vec<engine::Waiting>,
) -> AppResult<TeamQueue> {
    let mut customers: HashMap<String, String> = HashMap::new();
    let mut unknown: Vec<&engine::Waiting> = Vec::new();
    {
        let cache = state.dispatcher().customers.lock().expect("customers lock");
        for w in &waiting {
            match cache.get(&w.conv) {
                Some(c) => {
                    customers.insert(w.conv.clone(), c.clone());
                }
                None => unknown.push(w),
            }
        }
    }
    for chunk in unknown.chunks(500) {
        let ph: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT id, customer_id FROM conversations WHERE id IN ({})",
            ph.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for w in chunk {
            q = q.bind(&w.conv);
        }
        for r in q.fetch_all(state.store().read()).await? {
            let customer: Option<String> = r.try_get("customer_id")?;
            let conv: String = r.try_get("id")?;
            let customer = customer.unwrap_or_default();
            state.dispatcher().remember_customer(&conv, &customer);
            customers.insert(conv, customer);
        }
    }
    Ok(TeamQueue {
        team: team.to_string(),
        waiting: waiting
            .into_iter()
            .enumerate()
            .map(|(i, w)| QueuedConversation {
                customer: customers.get(&w.conv).cloned().unwrap_or_default(),
                conv: w.conv,
                position: i as u32 + 1,
                since: w.queued_at,
            })
            .collect(),
    })
}

/// A queue position a customer was sent.
#[derive(Clone, Copy)]
struct Told {
    position: u32,
    eta_s: u32,
    at: Instant,
}

/// Positions up to this are sent on every change. Why 10: the last few
/// places before being served are what a customer watches most closely.
const ALWAYS_TELL_WITHIN: u32 = 10;
/// Further back, one customer gets at most one update per this. Why 1 s: a
/// number that changes faster cannot be read, and a long queue draining
/// fast would otherwise send every waiting customer an update every 50 ms.
const TELL_AT_MOST_EVERY: Duration = Duration::from_secs(1);
/// Beyond [`TELL_NEAR`], a change is sent when the position moved by at
/// least this fraction, or the last update is [`TELL_AT_LEAST_EVERY`] old.
/// Why 1,000, 1/20 and 5 s: "4,213" after "4,214" tells a customer nothing,
/// while the customer still sees the number fall every few seconds; the
/// queues of almost every team stay within the first rule.
const TELL_NEAR: u32 = 1000;
const TELL_FRACTION: u32 = 20;
const TELL_AT_LEAST_EVERY: Duration = Duration::from_secs(5);

/// Whether a waiting customer should be sent its new position.
fn worth_telling(last: Option<&Told>, position: u32, eta_s: u32) -> bool {
    let Some(last) = last else {
        return true;
    };
    if last.position == position && last.eta_s == eta_s {
        return false;
    }
    if position <= ALWAYS_TELL_WITHIN {
        return true;
    }
    let age = last.at.elapsed();
    if age < TELL_AT_MOST_EVERY {
        return false;
    }
    position <= TELL_NEAR
        || last.position.abs_diff(position) >= position.div_ceil(TELL_FRACTION)
        || age >= TELL_AT_LEAST_EVERY
}

/// What this node last told one team's waiting customers.
#[derive(Default)]
struct TeamTold {
    /// Per waiting conversation connected here: see [`worth_telling`].
    convs: HashMap<String, Told>,
    /// When the whole queue was last read, and how long it was then.
    whole_read: Option<(Instant, usize)>,
    /// A customer connected here joined the queue (or asked again) since.
    joined: bool,
}

/// Between whole reads of a long queue, an update reads only its first
/// [`ALWAYS_TELL_WITHIN`] entries (the positions told on every change); the
/// rest cannot be told more than once a second anyway. A whole read is due
/// this long per waiting conversation after the last one, at most
/// [`TELL_AT_MOST_EVERY`], or at once when a customer connected here joined.
/// Why 20 µs: reading one entry (Redis, the node and its bookkeeping
/// together) costs about 1 µs, so a long queue draining fast costs its
/// announcer at most about 5 % of a core; queues of up to 2,500 are still
/// read whole on every update (50 ms), 10,000 every 200 ms.
const WHOLE_READ_PER_WAITING: Duration = Duration::from_micros(20);

impl TeamTold {
    /// How long until the next update must read the whole queue (zero: now).
    fn whole_read_in(&self) -> Duration {
        match self.whole_read {
            Some((at, len)) if !self.joined => {
                let every = WHOLE_READ_PER_WAITING
                    .saturating_mul(len.min(u32::MAX as usize) as u32)
                    .min(TELL_AT_MOST_EVERY);
                every.saturating_sub(at.elapsed())
            }
            _ => Duration::ZERO,
        }
    }
}

/// What one queue announcement did.
struct Announced {
    /// Position updates sent.
    sent: usize,
    /// When the team needs another update even if its queue does not
    /// change: a changed position was held back, or only the head of the
    /// queue was read.
    again_in: Option<Duration>,
}

/// Sends every waiting customer of a team connected to this node its
/// position and estimate, and this node's watchers of the team the queue.
/// Every node does this for its own connections when a queue changed
/// anywhere (see [`Dispatcher::queues_changed_elsewhere`]), so positions
/// never cross the bus one customer at a time.
async fn announce_queue(state: &AppState, team: &str) -> AppResult<Announced> {
    let Some(entry) = team_entry(state, team).await? else {
        return Ok(Announced {
            sent: 0,
            again_in: None,
        });
    };
    let now = now_ms();
    let fanout = state.fanout();
    let d = state.dispatcher();
    // Watchers are sent the whole queue, so it is read whole for them.
    let watched = fanout.registry().has_watchers(team);
    let whole_read_in = d
        .told
        .lock()
        .expect("told lock")
        .get(team)
        .map_or(Duration::ZERO, TeamTold::whole_read_in);
    let whole = watched || whole_read_in.is_zero();
    let first = (!whole).then_some(ALWAYS_TELL_WITHIN as usize);
    let waiting = d.engine().queue(team, first).await?;
    let capacity: u32 = d
        .engine()
        .agents(&entry.agents, now)
        .await?
        .iter()
        .filter(|a| a.status == PresenceStatus::Online)
        .map(|a| a.capacity)
        .sum();
    let stats = d.eta.stats(state.store(), team, now).await?;
    let mut updates = Vec::new();
    let mut held_back = false;
    {
        let mut all = d.told.lock().expect("told lock");
        let t = all.entry(team.to_string()).or_default();
        let mut previous = std::mem::take(&mut t.convs);
        let mut told = HashMap::with_capacity(if whole { previous.len() } else { 0 });
        for (i, w) in waiting.iter().enumerate() {
            if !fanout.registry().has_conv(&w.conv) {
                continue;
            }
            let position = i as u32 + 1;
            let eta_s = stats.eta_s(position as usize, capacity);
            let now_told = match previous.remove(&w.conv) {
                Some(last) if !worth_telling(Some(&last), position, eta_s) => {
                    held_back |= last.position != position || last.eta_s != eta_s;
                    last
                }
                _ => {
                    updates.push((w.conv.clone(), position, eta_s));
                    Told {
                        position,
                        eta_s,
                        at: Instant::now(),
                    }
                }
            };
            told.insert(w.conv.clone(), now_told);
        }
        if whole {
            // Only conversations still waiting are remembered.
            t.whole_read = Some((Instant::now(), waiting.len()));
            t.joined = false;
        } else {
            // The rest of the queue was not read: what it was told stands.
            told.extend(previous);
        }
        t.convs = told;
    }
    let again_in = [
        held_back.then_some(TELL_AT_MOST_EVERY),
        (!whole).then_some(whole_read_in),
    ]
    .into_iter()
    .flatten()
    .min();
    let sent = updates.len();
    for (conv, position, eta_s) in updates {
        fanout.deliver_local_frame(
            Target::Conv(conv.clone()),
            Exclude::Nobody,
            &ServerFrame::Queue {
                conv,
                position,
                eta_s,
            },
        );
    }
    if watched {
        let queue = with_customers(state, team, waiting).await?;
        fanout.deliver_local_frame(
            Target::Watch(team.to_string()),
            Exclude::Nobody,
            &ServerFrame::QueueUpdate { queue },
        );
    }
    Ok(Announced { sent, again_in })
}

/// The `watch` frame: the snapshot; the connection then receives deltas.
pub async fn watch(
    state: &AppState,
    user: &UserRef,
    conn: &str,
    which: WatchTeams,
) -> AppResult<WatchSnapshot> {
    if !user.role.is_supervisor() {
        return Err(AppError::forbidden("only supervisors watch queues"));
    }
    let all = teams::list(state.store()).await?;
    let (ids, keys): (Vec<String>, Vec<String>) = match which {
        WatchTeams::All(_) => (
            all.iter().map(|t| t.id.clone()).collect(),
            vec![ALL_TEAMS.to_string()],
        ),
        WatchTeams::List(list) => {
            if list.is_empty() || list.len() > 100 {
                return Err(AppError::bad_request(
                    "teams: 1 to 100 team ids, or \"all\"",
                ));
            }
            if let Some(bad) = list.iter().find(|id| !all.iter().any(|t| &t.id == *id)) {
                return Err(AppError::not_found(format!("no such team {bad}")));
            }
            (list.clone(), list)
        }
    };
    state.registry().watch(conn, &keys);
    let now = now_ms();
    let mut queues = Vec::with_capacity(ids.len());
    let mut agent_ids: Vec<String> = Vec::new();
    for id in &ids {
        queues.push(team_queue(state, id).await?);
        if let Some(entry) = team_entry(state, id).await? {
            agent_ids.extend(entry.agents);
        }
    }
    agent_ids.sort();
    agent_ids.dedup();
    let agents = state
        .dispatcher()
        .engine()
        .agents(&agent_ids, now)
        .await?
        .into_iter()
        .map(|a| AgentState {
            user: a.id,
            status: a.status,
            load: a.load,
            capacity: a.capacity,
            since: a.since,
        })
        .collect();
    Ok(WatchSnapshot { queues, agents })
}

// ---------------------------------------------------------------------------
// Configuration changes that affect routing.

/// After a team's settings or members changed on this node: refresh the
/// engine's view and drain the queue (capacity may have grown).
pub async fn team_changed(state: &AppState, team: &str) -> AppResult<()> {
    let d = state.dispatcher();
    d.invalidate(team);
    state.fanout().teams_changed(vec![team.to_string()]);
    let members = teams::members(state.store(), team).await?;
    let agents: Vec<String> = members
        .iter()
        .filter(|m| m.role == "agent")
        .map(|m| m.user.clone())
        .collect();
    for m in &members {
        agent_changed_quiet(state, &m.user).await?;
    }
    d.engine().set_members(team, agents).await?;
    drain(state, team).await?;
    d.touch(team);
    Ok(())
}

async fn agent_changed_quiet(state: &AppState, user: &str) -> AppResult<()> {
    let row = sqlx::query("SELECT skills FROM users WHERE id = $1")
        .bind(user)
        .fetch_optional(state.store().read())
        .await?;
    let Some(row) = row else {
        return Ok(());
    };
    let skills: Vec<Skill> =
        serde_json::from_str(&row.try_get::<String, _>("skills")?).unwrap_or_default();
    let capacity = teams::capacity_of(state.store(), user).await?;
    state
        .dispatcher()
        .engine()
        .set_agent(AgentSpec {
            id: user.to_string(),
            capacity,
            skills,
        })
        .await
}

/// After an agent's skills or max concurrency changed.
pub async fn agent_changed(state: &AppState, user: &str) -> AppResult<()> {
    agent_changed_quiet(state, user).await?;
    presence_changed(state, user);
    drain_teams_of(state, user).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn told(position: u32, eta_s: u32, ago: Duration) -> Told {
        Told {
            position,
            eta_s,
            at: Instant::now() - ago,
        }
    }

    #[test]
    fn positions_near_the_front_are_told_every_change() {
        let fresh = Duration::ZERO;
        assert!(worth_telling(None, 4_000, 600));
        assert!(worth_telling(Some(&told(2, 60, fresh)), 1, 30));
        assert!(worth_telling(Some(&told(11, 60, fresh)), 10, 59));
        // Only the estimate moved: still news near the front.
        assert!(worth_telling(Some(&told(7, 60, fresh)), 7, 50));
        assert!(!worth_telling(Some(&told(7, 60, fresh)), 7, 60));
    }

    #[test]
    fn further_back_at_most_one_update_a_second() {
        let fresh = Duration::ZERO;
        let second = TELL_AT_MOST_EVERY;
        assert!(!worth_telling(Some(&told(50, 60, fresh)), 20, 30));
        assert!(worth_telling(Some(&told(50, 60, second)), 49, 59));
        assert!(!worth_telling(Some(&told(12, 60, fresh)), 11, 55));
    }

    #[test]
    fn far_back_only_noticeable_moves_or_old_news_are_told() {
        let second = TELL_AT_MOST_EVERY;
        // 1/20 of 4,000 is 200 places (beyond the first 1,000).
        assert!(!worth_telling(Some(&told(4_001, 900, second)), 4_000, 899));
        assert!(!worth_telling(Some(&told(4_199, 900, second)), 4_000, 850));
        assert!(worth_telling(Some(&told(4_200, 900, second)), 4_000, 850));
        // Five seconds on, any change is sent.
        let old = TELL_AT_LEAST_EVERY;
        assert!(worth_telling(Some(&told(4_001, 900, old)), 4_000, 899));
        assert!(!worth_telling(Some(&told(4_000, 899, old)), 4_000, 899));
    }

    fn read_whole(ago: Duration, len: usize, joined: bool) -> TeamTold {
        TeamTold {
            convs: HashMap::new(),
            whole_read: Some((Instant::now() - ago, len)),
            joined,
        }
    }

    #[test]
    fn long_queues_are_read_whole_less_often() {
        // Never read, or a customer joined here: read whole now.
        assert_eq!(TeamTold::default().whole_read_in(), Duration::ZERO);
        let fresh = Duration::ZERO;
        assert_eq!(
            read_whole(fresh, 10_000, true).whole_read_in(),
            Duration::ZERO
        );
        // 2,500 waiting: within one 50 ms update.
        assert!(read_whole(fresh, 2_500, false).whole_read_in() <= Duration::from_millis(50));
        // 10,000: 200 ms after the last whole read.
        let wait = read_whole(fresh, 10_000, false).whole_read_in();
        assert!(wait > Duration::from_millis(150) && wait <= Duration::from_millis(200));
        let wait = read_whole(Duration::from_millis(150), 10_000, false).whole_read_in();
        assert!(wait <= Duration::from_millis(50), "{wait:?}");
        assert_eq!(
            read_whole(Duration::from_millis(200), 10_000, false).whole_read_in(),
            Duration::ZERO
        );
        // However long, at least once a second.
        let wait = read_whole(fresh, 1_000_000, false).whole_read_in();
        assert!(wait > Duration::from_millis(900) && wait <= TELL_AT_MOST_EVERY);
    }
}
