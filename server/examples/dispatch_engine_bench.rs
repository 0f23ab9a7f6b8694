//! Assignments per second of the dispatch engine's atomic step alone: on
//! Redis from two "nodes" (two engines, two connections, one key prefix), and
//! in-process for comparison. Each assignment is one `drain` call that
//! enqueues a conversation, picks an agent by the team's strategy, checks its
//! capacity, increments its load and dequeues, in one Redis round trip; a
//! second call releases the load again (what a close does), so loads stay
//! bounded while the run goes on.
//!
//! ```text
//! cargo run --release -p switchboard-server --example dispatch_engine_bench -- \
//!     [redis://127.0.0.1:6379] [assignments=100000] [tasks=64]
//! ```
//!
//! `AGENTS=n` sets the team size (default 10); `STRATEGY=least_load` runs one
//! strategy only. A run must stay under 30 s, the agents' liveness.
//!
//! The Redis keys it makes (prefix `sbbench_engine_<pid>`) are deleted at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use switchboard_protocol::PresenceStatus;
use switchboard_server::config::Config;
use switchboard_server::dispatch::engine::{AgentSpec, Snapshot, Strategy, TeamPlan, Ticket};
use switchboard_server::dispatch::local::LocalEngine;
use switchboard_server::dispatch::redis::RedisEngine;
use switchboard_server::dispatch::Engine;
use switchboard_server::store::Store;

/// Agents in the team (each drain reads every member's state).
fn agents() -> usize {
    std::env::var("AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}
const TEAM: &str = "t_bench";

fn plan(strategy: Strategy) -> TeamPlan {
    TeamPlan {
        id: TEAM.into(),
        strategy,
        open: true,
        offer_ms: None,
        widen_ms: 60_000,
    }
}

fn snapshot() -> Snapshot {
    let agents: Vec<String> = (0..agents()).map(|i| format!("a{i:03}")).collect();
    Snapshot {
        agents: agents
            .iter()
            .map(|id| {
                (
                    AgentSpec {
                        id: id.clone(),
                        capacity: 1_000,
                        skills: Vec::new(),
                    },
                    0,
                )
            })
            .collect(),
        members: vec![(TEAM.into(), agents)],
        waiting: Vec::new(),
        offers: Vec::new(),
    }
}

async fn prepare(engine: &Engine, now: i64) {
    engine.rebuild(snapshot(), now).await.expect("rebuild");
    for i in 0..agents() {
        engine
            .presence(&format!("a{i:03}"), PresenceStatus::Online, now)
            .await
            .expect("presence");
    }
}

/// Runs `total` assignments over `tasks` tasks spread over `engines`.
async fn run(engines: Vec<Arc<Engine>>, strategy: Strategy, total: u64, tasks: usize) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let engine = engines[t % engines.len()].clone();
        let done = done.clone();
        let next = next.clone();
        handles.push(tokio::spawn(async move {
            let plan = plan(strategy);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return;
                }
                let now = switchboard_server::util::now_ms();
                let ticket = Ticket {
                    conv: format!("cv_{n}"),
                    team: TEAM.into(),
                    priority: 0,
                    queued_at: now,
                    skills: Vec::new(),
                };
                let got = engine
                    .drain(&plan, Some(&ticket), now, 1)
                    .await
                    .expect("drain");
                for a in got {
                    done.fetch_add(1, Ordering::Relaxed);
                    engine.release(&a.agent, &a.conv).await.expect("release");
                }
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    let secs = started.elapsed().as_secs_f64();
    let assigned = done.load(Ordering::Relaxed);
    assert_eq!(
        assigned, total,
        "every ticket is assigned (capacity is ample)"
    );
    assigned as f64 / secs
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let redis_url = args
        .first()
        .cloned()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let total: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let tasks: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let dir = tempfile_dir();
    let config = Config {
        data_dir: dir.clone(),
        ..Config::default()
    };
    let store = Store::open(&config).await.expect("store");
    store.migrate().await.expect("migrate");
    let prefix = format!("sbbench_engine_{}", std::process::id());
    println!(
        "dispatch engine: {total} assignments, {tasks} concurrent tasks, {} agents",
        agents()
    );
    let only = std::env::var("STRATEGY").ok();
    for strategy in [
        Strategy::RoundRobin,
        Strategy::LeastLoad,
        Strategy::Weighted,
    ] {
        if only.as_deref().is_some_and(|o| o != strategy.as_str()) {
            continue;
        }
        // Presence is fresh for each run: agents stay live for 30 s.
        let now = switchboard_server::util::now_ms();
        let local = Arc::new(Engine::Local(Arc::new(LocalEngine::new())));
        prepare(&local, now).await;
        let local_rate = run(vec![local], strategy, total, tasks).await;

        let node = |p: String| {
            Arc::new(Engine::Redis(Box::new(
                RedisEngine::new(&redis_url, &p, store.clone()).expect("redis engine"),
            )))
        };
        let p = format!("{prefix}_{}", strategy.as_str());
        let (a, b) = (node(p.clone()), node(p.clone()));
        let now = switchboard_server::util::now_ms();
        prepare(&a, now).await;
        let redis_rate = run(vec![a, b], strategy, total, tasks).await;
        cleanup(&redis_url, &p).await;
        println!(
            "  {:<12} redis, 2 nodes: {:>9.0} assignments/s   in-process: {:>9.0} assignments/s",
            strategy.as_str(),
            redis_rate,
            local_rate
        );
    }
    store.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sbbench-engine-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

async fn cleanup(url: &str, prefix: &str) {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .expect("del");
    }
}
