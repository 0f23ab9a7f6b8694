//! Dispatch engine conformance: the same test bodies run against the
//! in-process engine (`local::*`) and the Redis engine (`redis::*`, one unique
//! key prefix per test, a migrated SQLite store in a temp dir for its
//! rebuilds). Every operation takes `now` from the test (a manual clock), so
//! nothing sleeps. Each body sets the engine up with `rebuild` first.
//!
//! What must hold on both: round robin rotates exactly in agent-id order and
//! skips agents that are not eligible; least load breaks ties to the agent
//! idle longest, then by id; skill routing covers the needed levels, lets a
//! covered ticket pass a blocked one and widens after `widen_ms`; weighted
//! shares follow smooth weighted round robin exactly; capacity holds; offers
//! count in the load, are accepted once, and when they expire go to another
//! agent; liveness lapses after `LIVE_MS` without a heartbeat; overflow,
//! dequeue and direct assignment obey their rules; the head of a queue reads
//! as the whole queue's first entries; concurrent drains never
//! exceed capacity nor assign a conversation twice. Redis only: a lost state
//! (the ready marker gone) is rebuilt from the database on the next call,
//! loads counted from open conversations; after a full loss heartbeats
//! restore the agents' declared status; a rebuild leaves no stale queue; the
//! set of agents declared online is rebuilt with the state and healed by
//! heartbeats. Both: a consult's `intake` sees the first online agent and
//! the queue's length.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use switchboard_protocol::PresenceStatus;
use switchboard_server::dispatch::engine::{
    AgentLive, AgentSpec, Assignment, Intake, Refusal, Skill, Snapshot, Strategy, TeamPlan, Ticket,
    Waiting, LIVE_MS,
};
use switchboard_server::dispatch::local::LocalEngine;
use switchboard_server::dispatch::redis::RedisEngine;
use switchboard_server::dispatch::{snapshot, Engine};
use switchboard_server::store::Store;

/// Runs each body against both engines; the `redis_only` bodies only against
/// the Redis engine.
macro_rules! conformance {
    ([$($name:ident),* $(,)?], redis_only: [$($only:ident),* $(,)?]) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = super::Harness::local().await;
                    super::$name(&h).await;
                    h.finish().await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = super::Harness::redis().await;
                    super::$name(&h).await;
                    h.finish().await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $only() {
                    let h = super::Harness::redis().await;
                    super::$only(&h).await;
                    h.finish().await;
                }
            )*
        }
    };
}

conformance!(
    [
        round_robin_exact_rotation,
        least_load_ties_go_to_longest_idle,
        skill_covers_levels_widens_and_does_not_block,
        weighted_shares_follow_capacities,
        capacity_holds_and_queue_order,
        offer_accept_expire_goes_to_another_agent,
        presence_liveness_lapses_and_heartbeat_restores,
        overdue_dequeue_and_direct_assignment,
        concurrent_drains_respect_capacity,
        intake_sees_online_agents_and_the_queue_length,
    ],
    redis_only: [
        rebuild_from_database_after_state_loss,
        heartbeat_restores_presence_after_redis_restart,
        partial_loss_leaves_no_stale_queue,
        the_online_set_is_rebuilt_and_healed,
    ]
);

/// The manual clock's origin.
const T: i64 = 1_763_000_000_000;
const TEAM: &str = "t1";
const WIDEN_MS: i64 = 60_000;

/// One engine under test, with the store a Redis engine rebuilds from.
struct Harness {
    engine: Arc<Engine>,
    store: Store,
    /// Redis URL and key prefix (Redis engine only), to clean up and to
    /// simulate a state loss.
    redis: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

async fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_sqlite_file(&dir.path().join("engine.db"))
        .await
        .expect("open sqlite");
    store.migrate().await.expect("migrate");
    (dir, store)
}

async fn redis_conn(url: &str) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect redis")
}

impl Harness {
    async fn local() -> Harness {
        let (dir, store) = temp_store().await;
        Harness {
            engine: Arc::new(Engine::Local(Arc::new(LocalEngine::new()))),
            store,
            redis: None,
            _dir: dir,
        }
    }

    async fn redis() -> Harness {
        let url = common::require_redis().await;
        let (dir, store) = temp_store().await;
        let prefix = format!("sbtest_engine_{}", uuid::Uuid::now_v7().simple());
        let engine = RedisEngine::new(&url, &prefix, store.clone()).expect("redis engine");
        Harness {
            engine: Arc::new(Engine::Redis(Box::new(engine))),
            store,
            redis: Some((url, prefix)),
            _dir: dir,
        }
    }

    /// Removes the test's Redis keys and closes the store.
    async fn finish(self) {
        if let Some((url, prefix)) = &self.redis {
            let mut conn = redis_conn(url).await;
            let keys: Vec<String> = ::redis::cmd("KEYS")
                .arg(format!("{prefix}:*"))
                .query_async(&mut conn)
                .await
                .expect("KEYS");
            if !keys.is_empty() {
                let _: i64 = ::redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .expect("DEL");
            }
        }
        self.store.close().await;
    }
}

// ---------------------------------------------------------------------------
// Helpers.

fn skills(list: &[(&str, u8)]) -> Vec<Skill> {
    list.iter()
        .map(|(name, level)| Skill {
            name: (*name).to_string(),
            level: *level,
        })
        .collect()
}

fn spec(id: &str, capacity: u32, have: &[(&str, u8)]) -> AgentSpec {
    AgentSpec {
        id: id.to_string(),
        capacity,
        skills: skills(have),
    }
}

fn plan(strategy: Strategy) -> TeamPlan {
    TeamPlan {
        id: TEAM.to_string(),
        strategy,
        open: true,
        offer_ms: None,
        widen_ms: WIDEN_MS,
    }
}

fn ticket_in(team: &str, conv: &str, priority: i64, queued_at: i64, need: &[(&str, u8)]) -> Ticket {
    Ticket {
        conv: conv.to_string(),
        team: team.to_string(),
        priority,
        queued_at,
        skills: skills(need),
    }
}

fn ticket(conv: &str, priority: i64, queued_at: i64, need: &[(&str, u8)]) -> Ticket {
    ticket_in(TEAM, conv, priority, queued_at, need)
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_string()).collect()
}

/// Rebuilds the engine with these agents (spec, load), all members of TEAM.
async fn setup(h: &Harness, agents: Vec<(AgentSpec, u32)>) {
    let members: Vec<String> = agents.iter().map(|(a, _)| a.id.clone()).collect();
    h.engine
        .rebuild(
            Snapshot {
                agents,
                members: vec![(TEAM.to_string(), members)],
                ..Snapshot::default()
            },
            T,
        )
        .await
        .expect("rebuild");
}

async fn set_status(h: &Harness, agents: &[&str], status: PresenceStatus, now: i64) {
    for a in agents {
        h.engine.presence(a, status, now).await.expect("presence");
    }
}

async fn online(h: &Harness, agents: &[&str], now: i64) {
    set_status(h, agents, PresenceStatus::Online, now).await;
}

async fn drain(h: &Harness, p: &TeamPlan, enqueue: Option<&Ticket>, now: i64) -> Vec<Assignment> {
    h.engine.drain(p, enqueue, now, 64).await.expect("drain")
}

/// (conv, agent) of each assignment, in order.
fn pairs(got: &[Assignment]) -> Vec<(String, String)> {
    got.iter()
        .map(|a| (a.conv.clone(), a.agent.clone()))
        .collect()
}

fn pair(conv: &str, agent: &str) -> (String, String) {
    (conv.to_string(), agent.to_string())
}

/// Enqueues a ticket and expects exactly it to be assigned; returns the agent.
async fn one(h: &Harness, p: &TeamPlan, t: &Ticket, now: i64) -> String {
    let got = drain(h, p, Some(t), now).await;
    assert_eq!(
        got.len(),
        1,
        "{} should be assigned at once: {got:?}",
        t.conv
    );
    let a = &got[0];
    assert_eq!(a.conv, t.conv);
    assert_eq!(a.team, t.team);
    assert_eq!(a.queued_at, t.queued_at);
    assert_eq!(a.offered, p.offer_ms.is_some());
    a.agent.clone()
}

async fn live(h: &Harness, agents: &[&str], now: i64) -> Vec<AgentLive> {
    h.engine.agents(&ids(agents), now).await.expect("agents")
}

async fn loads(h: &Harness, agents: &[&str], now: i64) -> Vec<u32> {
    let got = live(h, agents, now).await;
    assert_eq!(got.len(), agents.len(), "all agents known: {got:?}");
    got.into_iter().map(|a| a.load).collect()
}

async fn queue(h: &Harness, team: &str) -> Vec<Waiting> {
    h.engine.queue(team, None).await.expect("queue")
}

async fn queued_convs(h: &Harness, team: &str) -> Vec<String> {
    queue(h, team).await.into_iter().map(|w| w.conv).collect()
}

fn waiting(conv: &str, queued_at: i64) -> Waiting {
    Waiting {
        conv: conv.to_string(),
        queued_at,
    }
}

// ---------------------------------------------------------------------------
// 1. Round robin.

async fn round_robin_exact_rotation(h: &Harness) {
    setup(
        h,
        vec![
            (spec("a1", 10, &[]), 0),
            (spec("a2", 10, &[]), 0),
            (spec("a3", 10, &[]), 0),
        ],
    )
    .await;
    online(h, &["a1", "a2", "a3"], T).await;
    let p = plan(Strategy::RoundRobin);
    let mut n = 0;
    // Assigns `count` new tickets one by one; returns their agents.
    async fn rotate(h: &Harness, p: &TeamPlan, n: &mut i64, count: usize) -> Vec<String> {
        let mut got = Vec::new();
        for _ in 0..count {
            *n += 1;
            let now = T + 10 * *n;
            got.push(one(h, p, &ticket(&format!("c{n}"), 0, now, &[]), now).await);
        }
        got
    }
    assert_eq!(
        rotate(h, &p, &mut n, 7).await,
        ["a1", "a2", "a3", "a1", "a2", "a3", "a1"]
    );
    // a2 goes offline: skipped; the rotation continues after a1 (the last).
    set_status(h, &["a2"], PresenceStatus::Offline, T + 10 * n).await;
    assert_eq!(rotate(h, &p, &mut n, 4).await, ["a3", "a1", "a3", "a1"]);
    // a1 too (the last assigned): only a3 remains.
    set_status(h, &["a1"], PresenceStatus::Offline, T + 10 * n).await;
    assert_eq!(rotate(h, &p, &mut n, 2).await, ["a3", "a3"]);
    // Both back: after a3 the rotation wraps to a1.
    online(h, &["a1", "a2"], T + 10 * n).await;
    assert_eq!(rotate(h, &p, &mut n, 3).await, ["a1", "a2", "a3"]);

    assert_eq!(loads(h, &["a1", "a2", "a3"], T + 1000).await, [6, 3, 7]);
    assert!(queue(h, TEAM).await.is_empty());
}

// ---------------------------------------------------------------------------
// 2. Least load.

async fn least_load_ties_go_to_longest_idle(h: &Harness) {
    setup(
        h,
        vec![
            (spec("a1", 10, &[]), 2),
            (spec("a2", 10, &[]), 0),
            (spec("a3", 10, &[]), 0),
        ],
    )
    .await;
    online(h, &["a1", "a2", "a3"], T).await;
    let p = plan(Strategy::LeastLoad);
    // Loads 2,0,0, none assigned yet: the tie a2/a3 goes by id.
    assert_eq!(one(h, &p, &ticket("c1", 0, T + 1, &[]), T + 1).await, "a2");
    // 2,1,0: a3 has the least.
    assert_eq!(one(h, &p, &ticket("c2", 0, T + 2, &[]), T + 2).await, "a3");
    // 2,1,1: a2 (assigned at T+1) has been idle longer than a3 (T+2).
    assert_eq!(one(h, &p, &ticket("c3", 0, T + 3, &[]), T + 3).await, "a2");
    // 2,2,1: a3.
    assert_eq!(one(h, &p, &ticket("c4", 0, T + 4, &[]), T + 4).await, "a3");
    // 2,2,2: a1 never got one, so it has been idle longest.
    assert_eq!(one(h, &p, &ticket("c5", 0, T + 5, &[]), T + 5).await, "a1");
    // 3,2,2: a2 (last T+3) before a3 (last T+4).
    assert_eq!(one(h, &p, &ticket("c6", 0, T + 6, &[]), T + 6).await, "a2");
    // 3,3,2: a3.
    assert_eq!(one(h, &p, &ticket("c7", 0, T + 7, &[]), T + 7).await, "a3");
    // 3,3,3 with last a1 T+5, a2 T+6, a3 T+7: a1.
    assert_eq!(one(h, &p, &ticket("c8", 0, T + 8, &[]), T + 8).await, "a1");
    // Load beats idleness: release one of a3's, 4,3,2 → a3 although it was
    // assigned more recently than a2.
    h.engine.release("a3", "c2").await.expect("release");
    assert_eq!(loads(h, &["a1", "a2", "a3"], T + 9).await, [4, 3, 2]);
    assert_eq!(one(h, &p, &ticket("c9", 0, T + 9, &[]), T + 9).await, "a3");
    // 4,3,3 with last a2 T+6, a3 T+9: a2.
    assert_eq!(
        one(h, &p, &ticket("c10", 0, T + 10, &[]), T + 10).await,
        "a2"
    );
    // Idleness beats id order: a2 releases one, 4,3,3 with a2 last at T+10
    // and a3 at T+9 → a3.
    h.engine.release("a2", "c1").await.expect("release");
    assert_eq!(
        one(h, &p, &ticket("c11", 0, T + 11, &[]), T + 11).await,
        "a3"
    );
    // 4,3,4 → a2; 4,4,4 with a1 T+8, a2 T+12, a3 T+11 → a1.
    assert_eq!(
        one(h, &p, &ticket("c12", 0, T + 12, &[]), T + 12).await,
        "a2"
    );
    assert_eq!(
        one(h, &p, &ticket("c13", 0, T + 13, &[]), T + 13).await,
        "a1"
    );
    // 5,4,4 with a2 T+12, a3 T+11 → a3 again before a2; then 5,4,5 → a2.
    assert_eq!(
        one(h, &p, &ticket("c14", 0, T + 14, &[]), T + 14).await,
        "a3"
    );
    assert_eq!(
        one(h, &p, &ticket("c15", 0, T + 15, &[]), T + 15).await,
        "a2"
    );
    assert_eq!(loads(h, &["a1", "a2", "a3"], T + 16).await, [5, 5, 5]);
}

// ---------------------------------------------------------------------------
// 3. Skill.

async fn skill_covers_levels_widens_and_does_not_block(h: &Harness) {
    setup(
        h,
        vec![
            (spec("a1", 10, &[("billing", 2)]), 0),
            (spec("a2", 10, &[("billing", 4)]), 1),
            (spec("a3", 10, &[("billing", 5), ("tech", 1)]), 0),
        ],
    )
    .await;
    online(h, &["a1", "a2", "a3"], T).await;
    let p = plan(Strategy::Skill);
    // billing 3: a2 (load 1) and a3 (load 0) cover it; a1 (level 2) does not.
    assert_eq!(
        one(h, &p, &ticket("c1", 0, T, &[("billing", 3)]), T).await,
        "a3"
    );
    // Nobody has legal: it waits.
    let blocked = ticket("c2", 0, T + 1, &[("legal", 1)]);
    assert!(drain(h, &p, Some(&blocked), T + 1).await.is_empty());
    assert_eq!(queue(h, TEAM).await, [waiting("c2", T + 1)]);
    // A coverable ticket behind it is served: loads 0,1,1 → a1.
    let behind = ticket("c3", 0, T + 2, &[("billing", 1)]);
    assert_eq!(
        pairs(&drain(h, &p, Some(&behind), T + 2).await),
        [pair("c3", "a1")]
    );
    // Level equal to the need counts; only a3 covers billing 5 though it
    // has the most load (1,1,1 → a3 with tech too).
    assert_eq!(
        one(
            h,
            &p,
            &ticket("c4", 0, T + 3, &[("billing", 5), ("tech", 1)]),
            T + 3
        )
        .await,
        "a3"
    );
    assert_eq!(queued_convs(h, TEAM).await, ["c2"]);
    // a1 finishes c3: loads 0,1,2.
    h.engine.release("a1", "c3").await.expect("release");
    // The agents stay live across the widening time.
    let all: Vec<(String, PresenceStatus)> = ids(&["a1", "a2", "a3"])
        .into_iter()
        .map(|a| (a, PresenceStatus::Online))
        .collect();
    h.engine
        .heartbeat(&all, T + WIDEN_MS)
        .await
        .expect("heartbeat");
    // Exactly widen_ms of waiting: not widened yet.
    assert!(drain(h, &p, None, T + 1 + WIDEN_MS).await.is_empty());
    assert_eq!(queued_convs(h, TEAM).await, ["c2"]);
    // One ms more: any agent of the team, the least loaded (a1).
    let got = drain(h, &p, None, T + 1 + WIDEN_MS + 1).await;
    assert_eq!(pairs(&got), [pair("c2", "a1")]);
    assert_eq!(got[0].queued_at, T + 1);
    assert!(queue(h, TEAM).await.is_empty());
    assert_eq!(
        loads(h, &["a1", "a2", "a3"], T + WIDEN_MS + 2).await,
        [1, 1, 2]
    );
}

// ---------------------------------------------------------------------------
// 4. Weighted.

async fn weighted_shares_follow_capacities(h: &Harness) {
    setup(
        h,
        vec![
            (spec("a1", 1, &[]), 0),
            (spec("a2", 2, &[]), 0),
            (spec("a3", 3, &[]), 0),
        ],
    )
    .await;
    online(h, &["a1", "a2", "a3"], T).await;
    let p = plan(Strategy::Weighted);
    let mut seq = Vec::new();
    for i in 0..60 {
        let conv = format!("c{i}");
        let agent = one(h, &p, &ticket(&conv, 0, T + i, &[]), T + i).await;
        // Keep every load 0 so all three stay eligible.
        h.engine.release(&agent, &conv).await.expect("release");
        seq.push(agent);
    }
    // Smooth weighted round robin with weights 1,2,3 (ties to the lower id):
    // a3 a2 a1 a3 a2 a3, repeated.
    let cycle = ["a3", "a2", "a1", "a3", "a2", "a3"];
    for (i, chunk) in seq.chunks(6).enumerate() {
        assert_eq!(chunk, cycle, "cycle {i} of {seq:?}");
    }
    let mut shares: HashMap<&str, usize> = HashMap::new();
    for a in &seq {
        *shares.entry(a.as_str()).or_default() += 1;
    }
    assert_eq!(shares["a1"], 10);
    assert_eq!(shares["a2"], 20);
    assert_eq!(shares["a3"], 30);
    assert_eq!(loads(h, &["a1", "a2", "a3"], T + 100).await, [0, 0, 0]);
}

// ---------------------------------------------------------------------------
// 5. Capacity and queue order.

async fn capacity_holds_and_queue_order(h: &Harness) {
    setup(h, vec![(spec("a1", 2, &[]), 0)]).await;
    online(h, &["a1"], T).await;
    let p = plan(Strategy::RoundRobin);
    assert_eq!(
        one(h, &p, &ticket("c1", 0, T + 100, &[]), T + 100).await,
        "a1"
    );
    assert_eq!(
        one(h, &p, &ticket("c2", 0, T + 200, &[]), T + 200).await,
        "a1"
    );
    // Full: the third waits.
    assert!(drain(h, &p, Some(&ticket("c3", 0, T + 300, &[])), T + 300)
        .await
        .is_empty());
    assert_eq!(
        live(h, &["a1"], T + 300).await,
        [AgentLive {
            id: "a1".into(),
            status: PresenceStatus::Online,
            since: T,
            load: 2,
            capacity: 2,
        }]
    );
    // More arrive: higher priority first, then by waiting time (not by
    // arrival order).
    for t in [
        ticket("c4", 5, T + 400, &[]),
        ticket("c5", 0, T + 250, &[]),
        ticket("c6", 5, T + 350, &[]),
        ticket("c7", 9, T + 500, &[]),
    ] {
        assert!(drain(h, &p, Some(&t), T + 500).await.is_empty());
    }
    // Enqueueing a conversation already waiting changes nothing.
    assert!(drain(h, &p, Some(&ticket("c3", 0, T + 999, &[])), T + 500)
        .await
        .is_empty());
    let before = queue(h, TEAM).await;
    assert_eq!(
        before,
        [
            waiting("c7", T + 500),
            waiting("c6", T + 350),
            waiting("c4", T + 400),
            waiting("c5", T + 250),
            waiting("c3", T + 300),
        ]
    );
    // The head of the queue alone, in the same order.
    let head = |n| async move { h.engine.queue(TEAM, Some(n)).await.expect("queue head") };
    assert_eq!(head(2).await, before[..2]);
    assert_eq!(head(5).await, before);
    assert_eq!(head(50).await, before);
    assert!(head(0).await.is_empty());
    // Still full: a drain assigns nothing.
    assert!(drain(h, &p, None, T + 600).await.is_empty());
    assert_eq!(queue(h, TEAM).await, before);
    // A closed team does not assign even with room.
    h.engine.release("a1", "c1").await.expect("release");
    let closed = TeamPlan {
        open: false,
        ..p.clone()
    };
    assert!(drain(h, &closed, None, T + 700).await.is_empty());
    assert_eq!(queue(h, TEAM).await, before);
    // Open: the head goes; every other position moves up by one.
    assert_eq!(
        pairs(&drain(h, &p, None, T + 700).await),
        [pair("c7", "a1")]
    );
    let after = queue(h, TEAM).await;
    assert_eq!(after, before[1..]);
    // Two free: `max` bounds one drain.
    h.engine.release("a1", "c2").await.expect("release");
    h.engine.release("a1", "c7").await.expect("release");
    let got = h.engine.drain(&p, None, T + 800, 1).await.expect("drain");
    assert_eq!(pairs(&got), [pair("c6", "a1")]);
    assert_eq!(
        pairs(&drain(h, &p, None, T + 801).await),
        [pair("c4", "a1")]
    );
    assert_eq!(queue(h, TEAM).await, before[3..]);
    assert_eq!(loads(h, &["a1"], T + 802).await, [2]);
}

// ---------------------------------------------------------------------------
// 6. Offer mode.

async fn offer_accept_expire_goes_to_another_agent(h: &Harness) {
    setup(
        h,
        vec![
            (spec("a1", 10, &[]), 0),
            (spec("a2", 10, &[]), 3),
            (spec("a3", 10, &[]), 3),
        ],
    )
    .await;
    online(h, &["a1", "a2", "a3"], T).await;
    let p = TeamPlan {
        offer_ms: Some(5000),
        ..plan(Strategy::LeastLoad)
    };
    let got = drain(h, &p, Some(&ticket("c1", 0, T, &[])), T).await;
    assert_eq!(
        got,
        [Assignment {
            conv: "c1".into(),
            team: TEAM.into(),
            agent: "a1".into(),
            offered: true,
            queued_at: T,
        }]
    );
    // The offer counts in the load and is no longer waiting.
    assert_eq!(loads(h, &["a1", "a2", "a3"], T).await, [1, 3, 3]);
    assert!(queue(h, TEAM).await.is_empty());
    assert!(!h.engine.accept("c1", "a2").await.expect("accept"));
    assert!(h.engine.accept("c1", "a1").await.expect("accept"));
    assert!(!h.engine.accept("c1", "a1").await.expect("accept"));
    assert_eq!(loads(h, &["a1", "a2", "a3"], T).await, [1, 3, 3]);

    // c2 offered to a1 (load 1 < 3) and left unanswered.
    assert_eq!(
        one(h, &p, &ticket("c2", 0, T + 10, &[]), T + 10).await,
        "a1"
    );
    assert_eq!(loads(h, &["a1", "a2", "a3"], T + 10).await, [2, 3, 3]);
    // Not yet expired one ms before its deadline; an accepted offer never
    // expires.
    assert!(h
        .engine
        .expire_offers(T + 10 + 4999)
        .await
        .expect("expire")
        .is_empty());
    let expired = h.engine.expire_offers(T + 10 + 5001).await.expect("expire");
    assert_eq!(
        expired,
        [Assignment {
            conv: "c2".into(),
            team: TEAM.into(),
            agent: "a1".into(),
            offered: true,
            queued_at: T + 10,
        }]
    );
    assert!(h
        .engine
        .expire_offers(T + 10 + 5001)
        .await
        .expect("expire")
        .is_empty());
    // The load dropped; the conversation waits again at its old place.
    assert_eq!(loads(h, &["a1", "a2", "a3"], T + 5011).await, [1, 3, 3]);
    assert_eq!(queue(h, TEAM).await, [waiting("c2", T + 10)]);
    assert!(!h.engine.accept("c2", "a1").await.expect("accept"));
    // a1 still has the least load but let it expire: a2 gets it.
    let got = drain(h, &p, None, T + 5012).await;
    assert_eq!(
        got,
        [Assignment {
            conv: "c2".into(),
            team: TEAM.into(),
            agent: "a2".into(),
            offered: true,
            queued_at: T + 10,
        }]
    );
    assert_eq!(loads(h, &["a1", "a2", "a3"], T + 5012).await, [1, 4, 3]);
    // a2 lets it expire too: a3, never a1 or a2.
    let expired = h
        .engine
        .expire_offers(T + 5012 + 5000)
        .await
        .expect("expire");
    assert_eq!(pairs(&expired), [pair("c2", "a2")]);
    let got = drain(h, &p, None, T + 10_100).await;
    assert_eq!(pairs(&got), [pair("c2", "a3")]);
    // A new conversation still goes to a1 (its skip is per conversation).
    assert_eq!(
        one(h, &p, &ticket("c3", 0, T + 10_200, &[]), T + 10_200).await,
        "a1"
    );
    // a3 lets c2 expire: every eligible agent tried it, so it waits.
    let expired = h.engine.expire_offers(T + 20_000).await.expect("expire");
    let mut expired = pairs(&expired);
    expired.sort();
    assert_eq!(expired, [pair("c2", "a3"), pair("c3", "a1")]);
    assert_eq!(
        pairs(&drain(h, &p, None, T + 20_001).await),
        [pair("c3", "a2")]
    );
    assert_eq!(queued_convs(h, TEAM).await, ["c2"]);
    // Releasing an offered conversation withdraws the offer.
    h.engine.release("a2", "c3").await.expect("release");
    assert!(!h.engine.accept("c3", "a2").await.expect("accept"));
    assert!(h
        .engine
        .expire_offers(T + 100_000)
        .await
        .expect("expire")
        .is_empty());
    assert_eq!(loads(h, &["a1", "a2", "a3"], T + 20_002).await, [1, 3, 3]);
}

// ---------------------------------------------------------------------------
// 7. Presence liveness.

async fn presence_liveness_lapses_and_heartbeat_restores(h: &Harness) {
    setup(h, vec![(spec("a1", 5, &[]), 0)]).await;
    let got = h
        .engine
        .presence("a1", PresenceStatus::Online, T)
        .await
        .expect("presence");
    assert_eq!(
        got,
        AgentLive {
            id: "a1".into(),
            status: PresenceStatus::Online,
            since: T,
            load: 0,
            capacity: 5,
        }
    );
    let p = plan(Strategy::RoundRobin);
    // Live up to exactly LIVE_MS.
    assert_eq!(
        live(h, &["a1"], T + LIVE_MS).await[0].status,
        PresenceStatus::Online
    );
    // One ms later, without a heartbeat: offline, and not eligible.
    let lapsed = T + LIVE_MS + 1;
    assert_eq!(
        live(h, &["a1"], lapsed).await[0].status,
        PresenceStatus::Offline
    );
    assert!(drain(h, &p, Some(&ticket("c1", 0, lapsed, &[])), lapsed)
        .await
        .is_empty());
    assert_eq!(queued_convs(h, TEAM).await, ["c1"]);
    // A heartbeat restores it.
    h.engine
        .heartbeat(&[("a1".to_string(), PresenceStatus::Online)], lapsed + 1)
        .await
        .expect("heartbeat");
    assert_eq!(
        live(h, &["a1"], lapsed + 1).await,
        [AgentLive {
            id: "a1".into(),
            status: PresenceStatus::Online,
            since: T,
            load: 0,
            capacity: 5,
        }]
    );
    assert_eq!(
        pairs(&drain(h, &p, None, lapsed + 1).await),
        [pair("c1", "a1")]
    );
    // Heartbeats keep it live well past LIVE_MS from the presence frame.
    let mut now = lapsed + 1;
    for _ in 0..5 {
        now += 10_000;
        h.engine
            .heartbeat(&[("a1".to_string(), PresenceStatus::Online)], now)
            .await
            .expect("heartbeat");
    }
    now += LIVE_MS;
    assert_eq!(
        live(h, &["a1"], now).await[0].status,
        PresenceStatus::Online
    );
    // Busy is live but not eligible.
    let busy = h
        .engine
        .presence("a1", PresenceStatus::Busy, now)
        .await
        .expect("presence");
    assert_eq!(
        (busy.status, busy.since, busy.load),
        (PresenceStatus::Busy, now, 1)
    );
    assert!(drain(h, &p, Some(&ticket("c2", 0, now, &[])), now)
        .await
        .is_empty());
    online(h, &["a1"], now + 1).await;
    assert_eq!(
        pairs(&drain(h, &p, None, now + 1).await),
        [pair("c2", "a1")]
    );
    // Unknown agents are left out of agents().
    assert_eq!(live(h, &["nobody", "a1"], now + 1).await.len(), 1);
}

// ---------------------------------------------------------------------------
// 8. Overflow, dequeue and direct assignment.

async fn overdue_dequeue_and_direct_assignment(h: &Harness) {
    h.engine
        .rebuild(
            Snapshot {
                agents: vec![
                    (spec("a1", 1, &[]), 0),
                    (spec("a2", 2, &[]), 0),
                    (spec("a3", 2, &[]), 0),
                ],
                members: vec![
                    (TEAM.to_string(), ids(&["a1", "a2", "a3"])),
                    ("t2".to_string(), ids(&["a1"])),
                ],
                ..Snapshot::default()
            },
            T,
        )
        .await
        .expect("rebuild");
    // Nobody online: tickets only queue.
    let p = plan(Strategy::RoundRobin);
    for (conv, at) in [("c1", 100), ("c2", 200), ("c3", 300)] {
        assert!(drain(h, &p, Some(&ticket(conv, 0, T + at, &[])), T + 300)
            .await
            .is_empty());
    }
    // Overdue: strictly before the cutoff.
    assert_eq!(
        h.engine.take_overdue(TEAM, T + 200).await.expect("overdue"),
        [waiting("c1", T + 100)]
    );
    assert!(h
        .engine
        .take_overdue("t2", T + 1000)
        .await
        .expect("overdue")
        .is_empty());
    assert_eq!(
        queue(h, TEAM).await,
        [waiting("c2", T + 200), waiting("c3", T + 300)]
    );
    // Dequeue: only from its own team, once.
    assert!(!h.engine.dequeue("t2", "c2").await.expect("dequeue"));
    assert!(h.engine.dequeue(TEAM, "c2").await.expect("dequeue"));
    assert!(!h.engine.dequeue(TEAM, "c2").await.expect("dequeue"));
    assert!(!h.engine.dequeue(TEAM, "c1").await.expect("dequeue"));
    assert_eq!(queue(h, TEAM).await, [waiting("c3", T + 300)]);

    let now = T + 1000;
    let assign = |conv: &'static str,
                  agent: &'static str,
                  from: Option<&'static str>,
                  previous: Option<&'static str>,
                  need_online: bool| {
        let engine = h.engine.clone();
        async move {
            engine
                .assign(conv, agent, from, previous, need_online, now)
                .await
                .expect("assign")
        }
    };
    assert_eq!(
        assign("c3", "ghost", Some(TEAM), None, false).await,
        Err(Refusal::UnknownAgent)
    );
    // a1 offline.
    assert_eq!(
        assign("c3", "a1", Some(TEAM), None, true).await,
        Err(Refusal::Offline)
    );
    online(h, &["a1", "a2"], now).await;
    // Wrong team.
    assert_eq!(
        assign("c3", "a1", Some("t2"), None, true).await,
        Err(Refusal::NotWaiting)
    );
    assert_eq!(queued_convs(h, TEAM).await, ["c3"]);
    assert_eq!(assign("c3", "a1", Some(TEAM), None, true).await, Ok(()));
    assert!(queue(h, TEAM).await.is_empty());
    assert_eq!(loads(h, &["a1", "a2", "a3"], now).await, [1, 0, 0]);
    // Already assigned: no longer waiting.
    assert_eq!(
        assign("c3", "a2", Some(TEAM), None, true).await,
        Err(Refusal::NotWaiting)
    );
    // a1 is full (cap 1).
    assert_eq!(
        assign("x1", "a1", None, None, false).await,
        Err(Refusal::Full)
    );
    // a3 is offline: refused when it must be online, else fine.
    assert_eq!(
        assign("x1", "a3", None, None, true).await,
        Err(Refusal::Offline)
    );
    assert_eq!(assign("x1", "a3", None, None, false).await, Ok(()));
    assert_eq!(loads(h, &["a1", "a2", "a3"], now).await, [1, 0, 1]);

    // An offered conversation is not waiting.
    let offer = TeamPlan {
        offer_ms: Some(5000),
        ..p.clone()
    };
    let got = drain(h, &offer, Some(&ticket("c4", 0, now, &[])), now).await;
    assert_eq!(pairs(&got), [pair("c4", "a2")]);
    assert_eq!(
        assign("c4", "a3", Some(TEAM), None, false).await,
        Err(Refusal::NotWaiting)
    );
    // Moving it to a3 with previous = a2 moves the load and withdraws the
    // offer.
    assert_eq!(assign("c4", "a3", None, Some("a2"), false).await, Ok(()));
    assert_eq!(loads(h, &["a1", "a2", "a3"], now).await, [1, 0, 2]);
    assert!(!h.engine.accept("c4", "a2").await.expect("accept"));
    assert!(h
        .engine
        .expire_offers(now + 100_000)
        .await
        .expect("expire")
        .is_empty());
    // a3 is full now; Full is reported before Offline.
    assert_eq!(
        assign("x2", "a3", None, None, true).await,
        Err(Refusal::Full)
    );
    // A transfer of an active conversation: previous a1 → a2.
    assert_eq!(assign("c3", "a2", None, Some("a1"), true).await, Ok(()));
    assert_eq!(loads(h, &["a1", "a2", "a3"], now).await, [0, 1, 2]);
}

// ---------------------------------------------------------------------------
// 9. Concurrency.

async fn concurrent_drains_respect_capacity(h: &Harness) {
    let agents: Vec<String> = (0..10).map(|i| format!("a{i:02}")).collect();
    setup(h, agents.iter().map(|a| (spec(a, 3, &[]), 0)).collect()).await;
    let refs: Vec<&str> = agents.iter().map(String::as_str).collect();
    online(h, &refs, T).await;
    let p = plan(Strategy::LeastLoad);
    let now = T + 1000;
    let mut tasks = Vec::new();
    for task in 0..50i64 {
        let engine = h.engine.clone();
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for k in 0..4 {
                let n = task * 4 + k;
                let t = ticket(&format!("c{n:03}"), 0, T + n, &[]);
                got.extend(engine.drain(&p, Some(&t), now, 64).await.expect("drain"));
                got.extend(engine.drain(&p, None, now, 64).await.expect("drain"));
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    assert_eq!(all.len(), 30, "{all:?}");
    let mut per_agent: HashMap<&str, usize> = HashMap::new();
    let mut assigned = HashSet::new();
    for a in &all {
        *per_agent.entry(a.agent.as_str()).or_default() += 1;
        assert!(assigned.insert(a.conv.clone()), "{} assigned twice", a.conv);
        assert!(!a.offered);
    }
    for (agent, n) in &per_agent {
        assert!(*n <= 3, "{agent} got {n}");
    }
    assert_eq!(loads(h, &refs, now).await, vec![3; 10]);
    let rest = queue(h, TEAM).await;
    assert_eq!(rest.len(), 170);
    assert!(
        rest.windows(2).all(|w| w[0].queued_at < w[1].queued_at),
        "queue not in waiting order: {rest:?}"
    );
    let mut everyone: HashSet<String> = rest.iter().map(|w| w.conv.clone()).collect();
    assert_eq!(everyone.len(), 170);
    for c in &assigned {
        assert!(everyone.insert(c.clone()), "{c} both assigned and waiting");
    }
    assert_eq!(everyone.len(), 200);
    for w in &rest {
        let n: i64 = w.conv[1..].parse().expect("conv number");
        assert_eq!(w.queued_at, T + n);
    }
    // Nothing more fits.
    assert!(drain(h, &p, None, now).await.is_empty());
}

// ---------------------------------------------------------------------------
// 10. Redis only: state loss, rebuilt from the database.

async fn intake_sees_online_agents_and_the_queue_length(h: &Harness) {
    setup(h, vec![(spec("a1", 1, &[]), 0), (spec("a2", 1, &[]), 0)]).await;
    let intake = |team: &'static str, now: i64| async move {
        h.engine.intake(team, now).await.expect("intake")
    };
    assert_eq!(
        intake(TEAM, T).await,
        Intake {
            anyone_online: false,
            waiting: 0
        }
    );
    let p = plan(Strategy::RoundRobin);
    for (i, conv) in ["c1", "c2", "c3"].into_iter().enumerate() {
        assert!(drain(h, &p, Some(&ticket(conv, 0, T + i as i64, &[])), T)
            .await
            .is_empty());
    }
    assert_eq!(
        intake(TEAM, T).await,
        Intake {
            anyone_online: false,
            waiting: 3
        }
    );
    // Away is not online; the second agent online is seen.
    set_status(h, &["a1"], PresenceStatus::Away, T).await;
    online(h, &["a2"], T).await;
    assert!(intake(TEAM, T).await.anyone_online);
    // Another team's queue and members are not this team's: an online
    // agent counts only once the engine holds it as a member.
    let elsewhere = Intake {
        anyone_online: false,
        waiting: 0,
    };
    assert_eq!(intake("elsewhere", T).await, elsewhere);
    h.engine
        .set_members("elsewhere", ids(&["a1"]))
        .await
        .expect("members");
    assert_eq!(intake("elsewhere", T).await, elsewhere);
    h.engine
        .set_members("elsewhere", ids(&["a1", "a2"]))
        .await
        .expect("members");
    assert!(intake("elsewhere", T).await.anyone_online);
    // Draining assigns c1 to a2 (capacity 1): two wait.
    assert_eq!(pairs(&drain(h, &p, None, T).await), [pair("c1", "a2")]);
    assert_eq!(intake(TEAM, T).await.waiting, 2);
    // Without a heartbeat a2 lapses to offline.
    assert!(!intake(TEAM, T + LIVE_MS + 1).await.anyone_online);
}

async fn exec(store: &Store, sql: &str, args: &[Option<String>]) {
    let mut q = sqlx::query(sql);
    for a in args {
        q = q.bind(a.clone());
    }
    q.execute(store.write()).await.expect(sql);
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

async fn insert_user(store: &Store, id: &str, max_concurrency: Option<i64>) {
    sqlx::query(
        "INSERT INTO users (id, username, name, role, max_concurrency, skills, created_at) \
         VALUES ($1, $2, $3, 'agent', $4, '[]', 0)",
    )
    .bind(id)
    .bind(id)
    .bind(id)
    .bind(max_concurrency)
    .execute(store.write())
    .await
    .expect("insert user");
}

#[allow(clippy::too_many_arguments)]
async fn insert_conv(
    store: &Store,
    id: &str,
    state: &str,
    agent: Option<&str>,
    queued_at: i64,
    offered_to: Option<&str>,
    offer_expires_at: Option<i64>,
) {
    sqlx::query(
        "INSERT INTO conversations (id, kind, state, team_id, agent_id, priority, skills, \
         pending, queued_at, offered_to, offer_expires_at, created_at, updated_at) \
         VALUES ($1, 'service', $2, $3, $4, 0, '[]', 0, $5, $6, $7, $5, $5)",
    )
    .bind(id)
    .bind(state)
    .bind(TEAM)
    .bind(agent)
    .bind(queued_at)
    .bind(offered_to)
    .bind(offer_expires_at)
    .execute(store.write())
    .await
    .expect("insert conversation");
}

async fn rebuild_from_database_after_state_loss(h: &Harness) {
    let (url, prefix) = h.redis.clone().expect("redis harness");
    let store = &h.store;
    // The database: a1 and a2 with their own capacity 2, a3 with the team's 5.
    insert_user(store, "a1", Some(2)).await;
    insert_user(store, "a2", Some(2)).await;
    insert_user(store, "a3", None).await;
    exec(
        store,
        "INSERT INTO teams (id, name, max_concurrency, strategy, created_at, updated_at) \
         VALUES ($1, $2, 5, 'least_load', 0, 0)",
        &[s(TEAM), s("Team one")],
    )
    .await;
    for a in ["a1", "a2", "a3"] {
        exec(
            store,
            "INSERT INTO team_members (team_id, user_id, role, created_at) \
             VALUES ($1, $2, 'agent', 0)",
            &[s(TEAM), s(a)],
        )
        .await;
    }
    // First start: the engine is loaded from the (empty of conversations)
    // database.
    assert!(h.engine.needs_rebuild().await.expect("needs_rebuild"));
    h.engine
        .rebuild(snapshot::load(store).await.expect("snapshot"), T)
        .await
        .expect("rebuild");
    assert!(!h.engine.needs_rebuild().await.expect("needs_rebuild"));
    online(h, &["a1", "a2"], T).await;
    let p = plan(Strategy::LeastLoad);
    let mut got = Vec::new();
    for i in 1..=5 {
        let t = ticket(&format!("c{i}"), 0, T + i, &[]);
        got.extend(pairs(&drain(h, &p, Some(&t), T + i).await));
    }
    assert_eq!(
        got,
        [
            pair("c1", "a1"),
            pair("c2", "a2"),
            pair("c3", "a1"),
            pair("c4", "a2"),
        ]
    );
    assert_eq!(queued_convs(h, TEAM).await, ["c5"]);
    // A supervisor hands c8 to a3 directly.
    assert_eq!(
        h.engine
            .assign("c8", "a3", None, None, false, T + 6)
            .await
            .expect("assign"),
        Ok(())
    );
    // The database as the server would have written it, plus what happened
    // while Redis was away: c2 was closed, c6 queued, c7 offered to a3.
    insert_conv(store, "c1", "active", Some("a1"), T + 1, None, None).await;
    insert_conv(store, "c2", "closed", Some("a2"), T + 2, None, None).await;
    insert_conv(store, "c3", "active", Some("a1"), T + 3, None, None).await;
    insert_conv(store, "c4", "active", Some("a2"), T + 4, None, None).await;
    insert_conv(store, "c5", "queued", None, T + 5, None, None).await;
    insert_conv(store, "c6", "queued", None, T + 6, None, None).await;
    insert_conv(
        store,
        "c7",
        "queued",
        None,
        T + 7,
        Some("a3"),
        Some(T + 9000),
    )
    .await;
    insert_conv(store, "c8", "active", Some("a3"), T + 8, None, None).await;

    // Redis restarted without its state: the ready marker is gone.
    let mut conn = redis_conn(&url).await;
    let removed: i64 = ::redis::cmd("DEL")
        .arg(format!("{prefix}:dispatch:ready"))
        .query_async(&mut conn)
        .await
        .expect("DEL ready");
    assert_eq!(removed, 1, "the ready marker existed");
    assert!(h.engine.needs_rebuild().await.expect("needs_rebuild"));

    // The next operation rebuilds from the database and then answers.
    assert_eq!(
        queue(h, TEAM).await,
        [waiting("c5", T + 5), waiting("c6", T + 6)]
    );
    assert!(!h.engine.needs_rebuild().await.expect("needs_rebuild"));
    let exists: i64 = ::redis::cmd("EXISTS")
        .arg(format!("{prefix}:dispatch:ready"))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert_eq!(exists, 1);
    // Loads from open conversations (c2 closed; c7's offer counts); capacities
    // from the users and teams; declared presence kept. a3 has c8 and the
    // offer of c7.
    let now = T + 10;
    let agents = live(h, &["a1", "a2", "a3"], now).await;
    let summary: Vec<(String, PresenceStatus, u32, u32)> = agents
        .into_iter()
        .map(|a| (a.id, a.status, a.load, a.capacity))
        .collect();
    assert_eq!(
        summary,
        [
            ("a1".to_string(), PresenceStatus::Online, 2, 2),
            ("a2".to_string(), PresenceStatus::Online, 1, 2),
            ("a3".to_string(), PresenceStatus::Offline, 2, 5),
        ]
    );
    // a1 is full, a3 offline: c5 goes to a2.
    assert_eq!(pairs(&drain(h, &p, None, now).await), [pair("c5", "a2")]);
    assert_eq!(queued_convs(h, TEAM).await, ["c6"]);
    // The offer came back too: it expires at its database deadline.
    assert!(h
        .engine
        .expire_offers(T + 8999)
        .await
        .expect("expire")
        .is_empty());
    let expired = h.engine.expire_offers(T + 9000).await.expect("expire");
    assert_eq!(
        expired,
        [Assignment {
            conv: "c7".into(),
            team: TEAM.into(),
            agent: "a3".into(),
            offered: true,
            queued_at: T + 7,
        }]
    );
    assert_eq!(loads(h, &["a1", "a2", "a3"], now).await, [2, 2, 1]);
    assert_eq!(
        queue(h, TEAM).await,
        [waiting("c6", T + 6), waiting("c7", T + 7)]
    );
}

async fn seed_team(store: &Store, agents: &[&str]) {
    for a in agents {
        insert_user(store, a, None).await;
    }
    exec(
        store,
        "INSERT INTO teams (id, name, max_concurrency, strategy, created_at, updated_at) \
         VALUES ($1, $2, 5, 'round_robin', 0, 0)",
        &[s(TEAM), s("Team one")],
    )
    .await;
    for a in agents {
        exec(
            store,
            "INSERT INTO team_members (team_id, user_id, role, created_at) \
             VALUES ($1, $2, 'agent', 0)",
            &[s(TEAM), s(a)],
        )
        .await;
    }
}

/// The Redis engine reads only the members declared online (`P:online`):
/// a rebuild makes that set from the agents' declared presence, and a
/// heartbeat puts back an online agent the set lost.
async fn the_online_set_is_rebuilt_and_healed(h: &Harness) {
    let (url, prefix) = h.redis.clone().expect("redis harness");
    let mut conn = redis_conn(&url).await;
    setup(h, vec![(spec("a1", 5, &[]), 0), (spec("a2", 5, &[]), 0)]).await;
    online(h, &["a1", "a2"], T).await;
    set_status(h, &["a2"], PresenceStatus::Away, T).await;
    let members = |conn: &mut ::redis::aio::MultiplexedConnection| {
        let key = format!("{prefix}:dispatch:online");
        let mut conn = conn.clone();
        async move {
            let mut got: Vec<String> = ::redis::cmd("SMEMBERS")
                .arg(key)
                .query_async(&mut conn)
                .await
                .expect("SMEMBERS");
            got.sort();
            got
        }
    };
    assert_eq!(members(&mut conn).await, ["a1"], "away is not online");
    // A lost state is rebuilt: the set follows the declared presence.
    let _: i64 = ::redis::cmd("DEL")
        .arg(format!("{prefix}:dispatch:ready"))
        .arg(format!("{prefix}:dispatch:online"))
        .query_async(&mut conn)
        .await
        .expect("DEL");
    setup(h, vec![(spec("a1", 5, &[]), 0), (spec("a2", 5, &[]), 0)]).await;
    assert_eq!(members(&mut conn).await, ["a1"]);
    let p = plan(Strategy::RoundRobin);
    assert_eq!(one(h, &p, &ticket("c1", 0, T + 1, &[]), T + 1).await, "a1");
    // The set alone is lost: nobody is assigned until the next heartbeat.
    let _: i64 = ::redis::cmd("DEL")
        .arg(format!("{prefix}:dispatch:online"))
        .query_async(&mut conn)
        .await
        .expect("DEL online");
    assert!(drain(h, &p, Some(&ticket("c2", 0, T + 2, &[])), T + 2)
        .await
        .is_empty());
    let declared = [
        ("a1".to_string(), PresenceStatus::Online),
        ("a2".to_string(), PresenceStatus::Away),
    ];
    h.engine
        .heartbeat(&declared, T + 3)
        .await
        .expect("heartbeat");
    assert_eq!(members(&mut conn).await, ["a1"]);
    assert_eq!(pairs(&drain(h, &p, None, T + 3).await), [pair("c2", "a1")]);
    // Going offline leaves the set.
    set_status(h, &["a1"], PresenceStatus::Offline, T + 4).await;
    assert!(members(&mut conn).await.is_empty());
}

async fn delete_all_keys(h: &Harness) {
    let (url, prefix) = h.redis.clone().expect("redis harness");
    let mut conn = redis_conn(&url).await;
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    let _: i64 = ::redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .expect("DEL");
}

/// Redis lost everything (restart without persistence): the next call
/// rebuilds from the database, and the nodes' heartbeats restore the declared
/// status of their connected agents. (Regression: the rebuild used to write
/// status `offline` for every agent, so the heartbeat found a status and
/// never restored it; connected agents stayed offline for routing until they
/// sent `presence` again.)
async fn heartbeat_restores_presence_after_redis_restart(h: &Harness) {
    seed_team(&h.store, &["a1"]).await;
    h.engine
        .rebuild(snapshot::load(&h.store).await.expect("snapshot"), T)
        .await
        .expect("rebuild");
    online(h, &["a1"], T).await;
    delete_all_keys(h).await;
    // The node's heartbeat names the connected agent and its declared status.
    let declared = [("a1".to_string(), PresenceStatus::Online)];
    h.engine
        .heartbeat(&declared, T + 1)
        .await
        .expect("heartbeat");
    let got = live(h, &["a1"], T + 2).await;
    assert_eq!(got[0].status, PresenceStatus::Online, "{got:?}");
    let p = plan(Strategy::RoundRobin);
    assert_eq!(one(h, &p, &ticket("c1", 0, T + 3, &[]), T + 3).await, "a1");
}

/// Only the ready marker was lost: the rebuild must clear every queue it does
/// not reload, including that of a team with no agent members. (Regression:
/// `drain` did not record the team in `P:teams`, so the rebuild left its queue
/// behind, and `queue` reported the vanished ticket with `queued_at` 0.)
async fn partial_loss_leaves_no_stale_queue(h: &Harness) {
    seed_team(&h.store, &["a1"]).await;
    h.engine
        .rebuild(snapshot::load(&h.store).await.expect("snapshot"), T)
        .await
        .expect("rebuild");
    // A team with no agent members in the snapshot gets a ticket.
    let p = TeamPlan {
        id: "t9".into(),
        ..plan(Strategy::RoundRobin)
    };
    assert!(drain(h, &p, Some(&ticket_in("t9", "x1", 0, T, &[])), T)
        .await
        .is_empty());
    // The ready marker is lost (evicted); the database has no x1 queued.
    let (url, prefix) = h.redis.clone().expect("redis harness");
    let mut conn = redis_conn(&url).await;
    let _: i64 = ::redis::cmd("DEL")
        .arg(format!("{prefix}:dispatch:ready"))
        .query_async(&mut conn)
        .await
        .expect("DEL");
    assert_eq!(queue(h, "t9").await, []);
}
