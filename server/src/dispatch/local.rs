//! The in-process dispatch engine: all state behind one mutex, so every
//! operation is atomic on this node. Used when no Redis is configured.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use switchboard_protocol::PresenceStatus;

use super::engine::{
    effective_status, eligible, pick, AgentLive, AgentSpec, Assignment, Candidate, EngineOps,
    Intake, Refusal, Snapshot, TeamPlan, Ticket, Waiting, SCAN,
};
use crate::error::AppResult;

#[derive(Debug)]
struct Agent {
    spec: AgentSpec,
    status: PresenceStatus,
    since: i64,
    seen: i64,
    load: u32,
    last_assigned: i64,
}

#[derive(Debug, Default)]
struct Team {
    members: BTreeSet<String>,
    /// (score, conv): priority then waiting time.
    queue: BTreeSet<(i64, String)>,
    rr_last: Option<String>,
    weights: HashMap<String, i64>,
}

#[derive(Debug)]
struct Entry {
    ticket: Ticket,
    /// Agents whose offer of this conversation expired.
    tried: Vec<String>,
    /// The agent it is offered to, and until when.
    offer: Option<(String, i64)>,
}

#[derive(Debug, Default)]
struct State {
    agents: HashMap<String, Agent>,
    teams: HashMap<String, Team>,
    /// Waiting and offered conversations.
    entries: HashMap<String, Entry>,
}

/// One node's engine.
#[derive(Debug, Default)]
pub struct LocalEngine {
    // Why one std Mutex: every operation is a short, synchronous walk over
    // in-memory maps; one lock makes each atomic, and it is never held across
    // an await.
    state: Mutex<State>,
}

impl LocalEngine {
    pub fn new() -> LocalEngine {
        LocalEngine::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("dispatch lock poisoned")
    }
}

fn new_agent(spec: AgentSpec) -> Agent {
    Agent {
        spec,
        status: PresenceStatus::Offline,
        since: 0,
        seen: i64::MIN / 2,
        load: 0,
        last_assigned: 0,
    }
}

fn live(a: &Agent, now: i64) -> AgentLive {
    AgentLive {
        id: a.spec.id.clone(),
        status: effective_status(a.status, a.seen, now),
        since: a.since,
        load: a.load,
        capacity: a.spec.capacity,
    }
}

impl EngineOps for LocalEngine {
    async fn rebuild(&self, snapshot: Snapshot, _now: i64) -> AppResult<()> {
        let mut s = self.lock();
        let mut old = std::mem::take(&mut s.agents);
        for (spec, load) in snapshot.agents {
            let mut agent = match old.remove(&spec.id) {
                Some(mut a) => {
                    a.spec = spec;
                    a
                }
                None => new_agent(spec),
            };
            agent.load = load;
            s.agents.insert(agent.spec.id.clone(), agent);
        }
        s.teams.clear();
        for (team, members) in snapshot.members {
            s.teams.entry(team).or_default().members = members.into_iter().collect();
        }
        s.entries.clear();
        for ticket in snapshot.waiting {
            let team = s.teams.entry(ticket.team.clone()).or_default();
            team.queue.insert((ticket.score(), ticket.conv.clone()));
            s.entries.insert(
                ticket.conv.clone(),
                Entry {
                    ticket,
                    tried: Vec::new(),
                    offer: None,
                },
            );
        }
        for (ticket, agent, expires) in snapshot.offers {
            s.entries.insert(
                ticket.conv.clone(),
                Entry {
                    ticket,
                    tried: Vec::new(),
                    offer: Some((agent, expires)),
                },
            );
        }
        Ok(())
    }

    async fn needs_rebuild(&self) -> AppResult<bool> {
        Ok(false)
    }

    async fn set_agent(&self, spec: AgentSpec) -> AppResult<()> {
        let mut s = self.lock();
        match s.agents.get_mut(&spec.id) {
            Some(a) => a.spec = spec,
            None => {
                s.agents.insert(spec.id.clone(), new_agent(spec));
            }
        }
        Ok(())
    }

    async fn set_members(&self, team: &str, agents: Vec<String>) -> AppResult<()> {
        let mut s = self.lock();
        s.teams.entry(team.to_string()).or_default().members = agents.into_iter().collect();
        Ok(())
    }

    async fn presence(
        &self,
        agent: &str,
        status: PresenceStatus,
        now: i64,
    ) -> AppResult<AgentLive> {
        let mut s = self.lock();
        let a = s.agents.entry(agent.to_string()).or_insert_with(|| {
            new_agent(AgentSpec {
                id: agent.to_string(),
                capacity: 0,
                skills: Vec::new(),
            })
        });
        if effective_status(a.status, a.seen, now) != status {
            a.since = now;
        }
        a.status = status;
        a.seen = now;
        Ok(live(a, now))
    }

    async fn heartbeat(&self, agents: &[(String, PresenceStatus)], now: i64) -> AppResult<()> {
        let mut s = self.lock();
        for (id, _) in agents {
            if let Some(a) = s.agents.get_mut(id) {
                a.seen = now;
            }
        }
        Ok(())
    }

    async fn drain(
        &self,
        plan: &TeamPlan,
        enqueue: Option<&Ticket>,
        now: i64,
        max: usize,
    ) -> AppResult<Vec<Assignment>> {
        let mut guard = self.lock();
        let State {
            agents,
            teams,
            entries,
        } = &mut *guard;
        let team = teams.entry(plan.id.clone()).or_default();
        if let Some(t) = enqueue {
            if !entries.contains_key(&t.conv) {
                team.queue.insert((t.score(), t.conv.clone()));
                entries.insert(
                    t.conv.clone(),
                    Entry {
                        ticket: t.clone(),
                        tried: Vec::new(),
                        offer: None,
                    },
                );
            }
        }
        let mut out = Vec::new();
        if !plan.open {
            return Ok(out);
        }
        let scan: Vec<(i64, String)> = team.queue.iter().take(SCAN).cloned().collect();
        for (score, conv) in scan {
            if out.len() >= max {
                break;
            }
            let Some(entry) = entries.get_mut(&conv) else {
                team.queue.remove(&(score, conv));
                continue;
            };
            let mut any_eligible = false;
            let candidates: Vec<Candidate<'_>> = team
                .members
                .iter()
                .filter_map(|id| agents.get(id))
                .filter(|a| eligible(a.status, a.seen, a.load, a.spec.capacity, now))
                .inspect(|_| any_eligible = true)
                .filter(|a| !entry.tried.contains(&a.spec.id))
                .map(|a| Candidate {
                    id: &a.spec.id,
                    load: a.load,
                    capacity: a.spec.capacity,
                    last_assigned: a.last_assigned,
                    skills: &a.spec.skills,
                })
                .collect();
            if !any_eligible {
                break;
            }
            let widened = now - entry.ticket.queued_at > plan.widen_ms;
            let Some(i) = pick(
                plan.strategy,
                &candidates,
                &entry.ticket.skills,
                widened,
                &mut team.rr_last,
                &mut team.weights,
            ) else {
                continue;
            };
            let agent_id = candidates[i].id.to_string();
            drop(candidates);
            team.queue.remove(&(score, conv.clone()));
            if let Some(a) = agents.get_mut(&agent_id) {
                a.load += 1;
                a.last_assigned = now;
            }
            let offered = plan.offer_ms.is_some();
            let assignment = Assignment {
                conv: conv.clone(),
                team: plan.id.clone(),
                agent: agent_id.clone(),
                offered,
                queued_at: entry.ticket.queued_at,
            };
            match plan.offer_ms {
                Some(ms) => entry.offer = Some((agent_id, now + ms)),
                None => {
                    entries.remove(&conv);
                }
            }
            out.push(assignment);
        }
        Ok(out)
    }

    async fn dequeue(&self, team: &str, conv: &str) -> AppResult<bool> {
        let mut s = self.lock();
        let Some(entry) = s.entries.get(conv) else {
            return Ok(false);
        };
        if entry.offer.is_some() || entry.ticket.team != team {
            return Ok(false);
        }
        let key = (entry.ticket.score(), conv.to_string());
        s.entries.remove(conv);
        if let Some(t) = s.teams.get_mut(team) {
            t.queue.remove(&key);
        }
        Ok(true)
    }

    async fn release(&self, agent: &str, conv: &str) -> AppResult<()> {
        let mut s = self.lock();
        if let Some(a) = s.agents.get_mut(agent) {
            a.load = a.load.saturating_sub(1);
        }
        if s.entries
            .get(conv)
            .is_some_and(|e| e.offer.as_ref().is_some_and(|(a, _)| a == agent))
        {
            s.entries.remove(conv);
        }
        Ok(())
    }

    async fn assign(
        &self,
        conv: &str,
        agent: &str,
        from_queue: Option<&str>,
        previous: Option<&str>,
        need_online: bool,
        now: i64,
    ) -> AppResult<Result<(), Refusal>> {
        let mut guard = self.lock();
        let State {
            agents,
            teams,
            entries,
        } = &mut *guard;
        let Some(a) = agents.get(agent) else {
            return Ok(Err(Refusal::UnknownAgent));
        };
        if a.load >= a.spec.capacity {
            return Ok(Err(Refusal::Full));
        }
        if need_online && !eligible(a.status, a.seen, a.load, a.spec.capacity, now) {
            return Ok(Err(Refusal::Offline));
        }
        if let Some(team) = from_queue {
            let waiting = entries
                .get(conv)
                .is_some_and(|e| e.offer.is_none() && e.ticket.team == team);
            if !waiting {
                return Ok(Err(Refusal::NotWaiting));
            }
            let e = entries.remove(conv).expect("checked above");
            if let Some(t) = teams.get_mut(team) {
                t.queue.remove(&(e.ticket.score(), conv.to_string()));
            }
        } else if entries.get(conv).is_some_and(|e| e.offer.is_some()) {
            entries.remove(conv);
        }
        if let Some(p) = previous.and_then(|p| agents.get_mut(p)) {
            p.load = p.load.saturating_sub(1);
        }
        let a = agents.get_mut(agent).expect("checked above");
        a.load += 1;
        a.last_assigned = now;
        Ok(Ok(()))
    }

    async fn accept(&self, conv: &str, agent: &str) -> AppResult<bool> {
        let mut s = self.lock();
        let open = s
            .entries
            .get(conv)
            .is_some_and(|e| e.offer.as_ref().is_some_and(|(a, _)| a == agent));
        if open {
            s.entries.remove(conv);
        }
        Ok(open)
    }

    async fn expire_offers(&self, now: i64) -> AppResult<Vec<Assignment>> {
        let mut guard = self.lock();
        let State {
            agents,
            teams,
            entries,
        } = &mut *guard;
        let mut out = Vec::new();
        for entry in entries.values_mut() {
            let Some((agent, expires)) = entry.offer.clone() else {
                continue;
            };
            if expires > now {
                continue;
            }
            entry.offer = None;
            entry.tried.push(agent.clone());
            if let Some(a) = agents.get_mut(&agent) {
                a.load = a.load.saturating_sub(1);
            }
            teams
                .entry(entry.ticket.team.clone())
                .or_default()
                .queue
                .insert((entry.ticket.score(), entry.ticket.conv.clone()));
            out.push(Assignment {
                conv: entry.ticket.conv.clone(),
                team: entry.ticket.team.clone(),
                agent,
                offered: true,
                queued_at: entry.ticket.queued_at,
            });
        }
        Ok(out)
    }

    async fn take_overdue(&self, team: &str, cutoff: i64) -> AppResult<Vec<Waiting>> {
        let mut guard = self.lock();
        let State { teams, entries, .. } = &mut *guard;
        let Some(t) = teams.get_mut(team) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        t.queue.retain(|(_, conv)| {
            let overdue = entries
                .get(conv)
                .is_some_and(|e| e.ticket.queued_at < cutoff);
            if overdue {
                let e = entries.remove(conv).expect("checked above");
                out.push(Waiting {
                    conv: conv.clone(),
                    queued_at: e.ticket.queued_at,
                });
            }
            !overdue
        });
        Ok(out)
    }

    async fn queue(&self, team: &str, first: Option<usize>) -> AppResult<Vec<Waiting>> {
        let s = self.lock();
        Ok(s.teams
            .get(team)
            .map(|t| {
                t.queue
                    .iter()
                    .filter_map(|(_, conv)| s.entries.get(conv))
                    .take(first.unwrap_or(usize::MAX))
                    .map(|e| Waiting {
                        conv: e.ticket.conv.clone(),
                        queued_at: e.ticket.queued_at,
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn agents(&self, ids: &[String], now: i64) -> AppResult<Vec<AgentLive>> {
        let s = self.lock();
        Ok(ids
            .iter()
            .filter_map(|id| s.agents.get(id))
            .map(|a| live(a, now))
            .collect())
    }

    async fn intake(&self, team: &str, now: i64) -> AppResult<Intake> {
        let s = self.lock();
        let t = s.teams.get(team);
        Ok(Intake {
            anyone_online: t.is_some_and(|t| {
                t.members
                    .iter()
                    .filter_map(|id| s.agents.get(id))
                    .any(|a| effective_status(a.status, a.seen, now) == PresenceStatus::Online)
            }),
            waiting: t.map_or(0, |t| t.queue.len()),
        })
    }
}
