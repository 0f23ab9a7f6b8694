//! The Redis dispatch engine: the state lives in Redis and every operation is
//! one call of `dispatch.lua`, so it is atomic across all nodes and costs one
//! round trip. When Redis lost the state (first start, restart without
//! persistence) a script answers `NOTREADY`; the engine then rebuilds the
//! state from the database in one script call and retries once.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::json;
use switchboard_protocol::PresenceStatus;
use tokio::sync::OnceCell;

use super::engine::{
    AgentLive, AgentSpec, Assignment, EngineOps, Intake, Refusal, Skill, Snapshot, TeamPlan,
    Ticket, Waiting, LIVE_MS,
};
use super::snapshot;
use crate::error::{AppError, AppResult};
use crate::store::Store;
use crate::util::now_ms;

/// Connecting to Redis or getting a reply gives up after this. Why 2 s: a
/// dispatch step is a few hundred microseconds; a dead Redis must fail the
/// request with `unavailable` quickly rather than hang a customer's consult.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// One node's handle on the shared engine.
pub struct RedisEngine {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    prefix: String,
    script: redis::Script,
    store: Store,
}

/// A skill list as the script reads it: `{"name": level}`.
pub fn skills_json(skills: &[Skill]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = skills
        .iter()
        .map(|s| (s.name.clone(), json!(s.level)))
        .collect();
    serde_json::Value::Object(map).to_string()
}

fn status_str(s: PresenceStatus) -> &'static str {
    match s {
        PresenceStatus::Online => "online",
        PresenceStatus::Busy => "busy",
        PresenceStatus::Away => "away",
        PresenceStatus::Offline => "offline",
    }
}

fn parse_status(s: &str) -> PresenceStatus {
    match s {
        "online" => PresenceStatus::Online,
        "busy" => PresenceStatus::Busy,
        "away" => PresenceStatus::Away,
        _ => PresenceStatus::Offline,
    }
}

fn int(s: &str) -> i64 {
    s.parse::<f64>().map(|f| f as i64).unwrap_or(0)
}

fn redis_error(e: redis::RedisError) -> AppError {
    tracing::warn!(error = %e, "dispatch engine: redis error");
    AppError::unavailable("the dispatch service is unreachable; try again shortly")
}

impl RedisEngine {
    pub fn new(url: &str, prefix: &str, store: Store) -> Result<RedisEngine, redis::RedisError> {
        Ok(RedisEngine {
            client: redis::Client::open(url)?,
            conn: OnceCell::new(),
            prefix: format!("{prefix}:dispatch"),
            script: redis::Script::new(include_str!("dispatch.lua")),
            store,
        })
    }

    async fn conn(&self) -> AppResult<ConnectionManager> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                let connect = async {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(REDIS_TIMEOUT)
                        .set_response_timeout(REDIS_TIMEOUT)
                        .set_number_of_retries(1);
                    ConnectionManager::new_with_config(self.client.clone(), config).await
                };
                match tokio::time::timeout(REDIS_TIMEOUT, connect).await {
                    Ok(r) => r,
                    Err(_) => Err(redis::RedisError::from((
                        redis::ErrorKind::IoError,
                        "cannot connect to redis in time",
                    ))),
                }
            })
            .await
            .map_err(redis_error)?;
        Ok(conn.clone())
    }

    /// Runs one operation; rebuilds and retries once on `NOTREADY`.
    async fn call<T: redis::FromRedisValue>(&self, op: &str, args: &[String]) -> AppResult<T> {
        self.when_ready(|| self.invoke(op, args)).await
    }

    /// Runs a request; when it finds the state lost (`NOTREADY`), rebuilds
    /// the state from the database and runs it once more.
    async fn when_ready<T, F, Fut>(&self, request: F) -> AppResult<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        match request().await {
            Err(e) if is_not_ready(&e) => {
                self.rebuild(snapshot::load(&self.store).await?, now_ms())
                    .await?;
                request().await.map_err(redis_error)
            }
            other => other.map_err(redis_error),
        }
    }

    /// A team's queue read with `ZRANGE … WITHSCORES` in a `MULTI` with the
    /// ready marker (`NOTREADY` when the marker is gone, as the script says).
    async fn read_queue(
        &self,
        team: &str,
        first: Option<usize>,
    ) -> Result<Vec<Waiting>, redis::RedisError> {
        if first == Some(0) {
            return Ok(Vec::new());
        }
        let mut conn = self.redis_conn().await?;
        let mut pipe = redis::pipe();
        // ZRANGE's stop is inclusive; -1 is the last entry.
        let stop = first.map_or(-1, |n| n as isize - 1);
        pipe.atomic()
            .exists(format!("{}:ready", self.prefix))
            .zrange_withscores(format!("{}:team:{team}:q", self.prefix), 0, stop);
        let (ready, queue): (bool, Vec<(String, f64)>) =
            bounded(pipe.query_async(&mut conn)).await?;
        if !ready {
            return Err(redis::RedisError::from((
                redis::ErrorKind::ResponseError,
                "NOTREADY",
                "dispatch state must be rebuilt".to_string(),
            )));
        }
        Ok(queue
            .into_iter()
            .map(|(conv, score)| Waiting {
                conv,
                queued_at: Ticket::queued_at_of(score as i64),
            })
            .collect())
    }

    /// [`RedisEngine::conn`] for a request that reports Redis errors.
    async fn redis_conn(&self) -> Result<ConnectionManager, redis::RedisError> {
        self.conn().await.map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::IoError, "cannot connect to redis"))
        })
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        op: &str,
        args: &[String],
    ) -> Result<T, redis::RedisError> {
        let mut conn = self.redis_conn().await?;
        let mut inv = self.script.prepare_invoke();
        inv.arg(op).arg(&self.prefix);
        for a in args {
            inv.arg(a);
        }
        bounded(inv.invoke_async(&mut conn)).await
    }
}

/// A Redis request bounded by [`REDIS_TIMEOUT`] whatever the connection
/// does (reconnects included).
async fn bounded<T>(
    request: impl std::future::Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, redis::RedisError> {
    match tokio::time::timeout(REDIS_TIMEOUT, request).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::IoError,
            "redis did not answer in time",
        ))),
    }
}

fn is_not_ready(e: &redis::RedisError) -> bool {
    e.code() == Some("NOTREADY") || e.to_string().contains("NOTREADY")
}

fn triples(flat: Vec<String>, team: &str, offered: bool) -> Vec<Assignment> {
    flat.chunks_exact(3)
        .map(|c| Assignment {
            conv: c[0].clone(),
            team: team.to_string(),
            agent: c[1].clone(),
            offered,
            queued_at: int(&c[2]),
        })
        .collect()
}

fn waiting(flat: Vec<String>) -> Vec<Waiting> {
    flat.chunks_exact(2)
        .map(|c| Waiting {
            conv: c[0].clone(),
            queued_at: int(&c[1]),
        })
        .collect()
}

impl EngineOps for RedisEngine {
    async fn rebuild(&self, snapshot: Snapshot, now: i64) -> AppResult<()> {
        let ticket = |t: &Ticket| {
            json!([
                t.conv,
                t.team,
                t.score(),
                t.queued_at,
                skills_json(&t.skills)
            ])
        };
        let doc = json!({
            "agents": snapshot.agents.iter().map(|(a, load)| json!([a.id, a.capacity, skills_json(&a.skills), load])).collect::<Vec<_>>(),
            "members": snapshot.members.iter().map(|(t, ids)| json!([t, ids])).collect::<Vec<_>>(),
            "waiting": snapshot.waiting.iter().map(ticket).collect::<Vec<_>>(),
            "offers": snapshot.offers.iter().map(|(t, agent, expires)| {
                let mut v = ticket(t);
                if let Some(a) = v.as_array_mut() {
                    a.push(json!(agent));
                    a.push(json!(expires));
                }
                v
            }).collect::<Vec<_>>(),
        });
        let _: i64 = self
            .invoke("rebuild", &[now.to_string(), doc.to_string()])
            .await
            .map_err(redis_error)?;
        tracing::info!(
            agents = snapshot.agents.len(),
            waiting = snapshot.waiting.len(),
            "dispatch state rebuilt in redis from the database"
        );
        Ok(())
    }

    async fn needs_rebuild(&self) -> AppResult<bool> {
        let n: i64 = self
            .invoke("needs_rebuild", &[])
            .await
            .map_err(redis_error)?;
        Ok(n == 1)
    }

    async fn set_agent(&self, spec: AgentSpec) -> AppResult<()> {
        let _: i64 = self
            .call(
                "set_agent",
                &[
                    spec.id,
                    spec.capacity.to_string(),
                    skills_json(&spec.skills),
                ],
            )
            .await?;
        Ok(())
    }

    async fn set_members(&self, team: &str, agents: Vec<String>) -> AppResult<()> {
        let mut args = vec![team.to_string()];
        args.extend(agents);
        let _: i64 = self.call("set_members", &args).await?;
        Ok(())
    }

    async fn presence(
        &self,
        agent: &str,
        status: PresenceStatus,
        now: i64,
    ) -> AppResult<AgentLive> {
        let v: Vec<String> = self
            .call(
                "presence",
                &[
                    agent.to_string(),
                    status_str(status).to_string(),
                    now.to_string(),
                    LIVE_MS.to_string(),
                ],
            )
            .await?;
        Ok(AgentLive {
            id: agent.to_string(),
            status: parse_status(v.first().map(String::as_str).unwrap_or("offline")),
            since: v.get(1).map(|s| int(s)).unwrap_or(now),
            load: v.get(2).map(|s| int(s) as u32).unwrap_or(0),
            capacity: v.get(3).map(|s| int(s) as u32).unwrap_or(0),
        })
    }

    async fn heartbeat(&self, agents: &[(String, PresenceStatus)], now: i64) -> AppResult<()> {
        if agents.is_empty() {
            return Ok(());
        }
        let mut args = vec![now.to_string()];
        for (id, status) in agents {
            args.push(id.clone());
            args.push(status_str(*status).to_string());
        }
        let _: i64 = self.call("heartbeat", &args).await?;
        Ok(())
    }

    async fn drain(
        &self,
        plan: &TeamPlan,
        enqueue: Option<&Ticket>,
        now: i64,
        max: usize,
    ) -> AppResult<Vec<Assignment>> {
        let mut args = vec![
            plan.id.clone(),
            now.to_string(),
            plan.strategy.as_str().to_string(),
            if plan.open { "1" } else { "0" }.to_string(),
            plan.offer_ms.unwrap_or(0).to_string(),
            plan.widen_ms.to_string(),
            max.to_string(),
            LIVE_MS.to_string(),
        ];
        if let Some(t) = enqueue {
            args.push(t.conv.clone());
            args.push(t.score().to_string());
            args.push(t.queued_at.to_string());
            args.push(skills_json(&t.skills));
        }
        let flat: Vec<String> = self.call("drain", &args).await?;
        Ok(triples(flat, &plan.id, plan.offer_ms.is_some()))
    }

    async fn dequeue(&self, team: &str, conv: &str) -> AppResult<bool> {
        let n: i64 = self
            .call("dequeue", &[team.to_string(), conv.to_string()])
            .await?;
        Ok(n == 1)
    }

    async fn release(&self, agent: &str, conv: &str) -> AppResult<()> {
        let _: i64 = self
            .call("release", &[agent.to_string(), conv.to_string()])
            .await?;
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
        let answer: String = self
            .call(
                "assign",
                &[
                    conv.to_string(),
                    agent.to_string(),
                    from_queue.unwrap_or("").to_string(),
                    previous.unwrap_or("").to_string(),
                    if need_online { "1" } else { "0" }.to_string(),
                    now.to_string(),
                    LIVE_MS.to_string(),
                ],
            )
            .await?;
        Ok(match answer.as_str() {
            "ok" => Ok(()),
            "full" => Err(Refusal::Full),
            "offline" => Err(Refusal::Offline),
            "not_waiting" => Err(Refusal::NotWaiting),
            _ => Err(Refusal::UnknownAgent),
        })
    }

    async fn accept(&self, conv: &str, agent: &str) -> AppResult<bool> {
        let n: i64 = self
            .call("accept", &[conv.to_string(), agent.to_string()])
            .await?;
        Ok(n == 1)
    }

    async fn expire_offers(&self, now: i64) -> AppResult<Vec<Assignment>> {
        let flat: Vec<String> = self.call("expire", &[now.to_string()]).await?;
        Ok(flat
            .chunks_exact(4)
            .map(|c| Assignment {
                conv: c[0].clone(),
                agent: c[1].clone(),
                team: c[2].clone(),
                offered: true,
                queued_at: int(&c[3]),
            })
            .collect())
    }

    async fn take_overdue(&self, team: &str, cutoff: i64) -> AppResult<Vec<Waiting>> {
        let flat: Vec<String> = self
            .call("overdue", &[team.to_string(), cutoff.to_string()])
            .await?;
        Ok(waiting(flat))
    }

    /// Read with `ZRANGE … WITHSCORES` ([`RedisEngine::read_queue`]), not
    /// through the script: the announcer reads every queue it tells
    /// positions from on every change, and in the script each score was
    /// formatted as a Lua string, parsed back and formatted again (with
    /// 10,000 waiting, that conversion was most of Redis's time while
    /// customers consulted). Still one round trip, and still atomic.
    async fn queue(&self, team: &str, first: Option<usize>) -> AppResult<Vec<Waiting>> {
        self.when_ready(|| self.read_queue(team, first)).await
    }

    async fn agents(&self, ids: &[String], now: i64) -> AppResult<Vec<AgentLive>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec![now.to_string(), LIVE_MS.to_string()];
        args.extend(ids.iter().cloned());
        let flat: Vec<String> = self.call("agents", &args).await?;
        Ok(flat
            .chunks_exact(5)
            .map(|c| AgentLive {
                id: c[0].clone(),
                status: parse_status(&c[1]),
                since: int(&c[2]),
                load: int(&c[3]) as u32,
                capacity: int(&c[4]) as u32,
            })
            .collect())
    }

    async fn intake(&self, team: &str, now: i64) -> AppResult<Intake> {
        let args = [team.to_string(), now.to_string(), LIVE_MS.to_string()];
        let (online, waiting): (i64, i64) = self.call("intake", &args).await?;
        Ok(Intake {
            anyone_online: online == 1,
            waiting: waiting.max(0) as usize,
        })
    }
}
