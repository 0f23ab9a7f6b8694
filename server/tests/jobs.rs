//! The durable job scheduler and scheduled group messages, on real SQLite
//! files and a real PostgreSQL (with Redis where whole servers run):
//!
//! - two workers racing for 1,000 due jobs run each exactly once (PostgreSQL
//!   and SQLite);
//! - failures back off exponentially and end dead-lettered with their error,
//!   which admins see and can send back to the queue;
//! - a job whose worker stopped (a claim never finished; a real `switchboard`
//!   process killed with SIGKILL while blocked inside the job) runs again
//!   after its lease expired, and its effect happens once;
//! - the scheduler makes each occurrence one job across nodes, catches up
//!   missed occurrences and skips those missed too long ago;
//! - a recurring group message arrives once per occurrence across a restart
//!   of the server, without gaps; one-shot messages arrive live, cancelled
//!   ones never;
//! - bad input is refused with stable codes and stores nothing.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, Cluster, Setup, TestServer, ADMIN, ADMIN_PASSWORD};
use serde_json::{json, Value};
use sqlx::Row;
use switchboard_protocol::{Role, ServerFrame};
use switchboard_server::jobs::schedule::{self, NewSchedule, When};
use switchboard_server::jobs::store as jobs;
use switchboard_server::jobs::worker::Worker;
use switchboard_server::jobs::{group_messages, Job, NewJob, Registry, Settings, Status};
use switchboard_server::store::Store;
use switchboard_server::util::now_ms;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// Polls `check` every 20 ms until it holds; panics naming `what` after `limit`.
async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn count(store: &Store, sql: &str, bind: &str) -> i64 {
    let q = sqlx::query(sql);
    let q = if sql.contains("$1") { q.bind(bind) } else { q };
    q.fetch_one(store.read()).await.unwrap().get::<i64, _>(0)
}

/// Two handles on one fresh database, like two nodes: two PostgreSQL pools,
/// or two SQLite write connections on one file (which SQLite's file lock
/// serializes).
async fn two_stores(backend: Backend) -> (Store, Store, Option<tempfile::TempDir>) {
    match backend {
        Backend::PostgresRedis => {
            let url = common::fresh_postgres_database().await;
            let a = Store::connect(&url).await.unwrap();
            a.migrate().await.unwrap();
            let b = Store::connect(&url).await.unwrap();
            (a, b, None)
        }
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("jobs.db");
            let a = Store::open_sqlite_file(&path).await.unwrap();
            a.migrate().await.unwrap();
            let b = Store::open_sqlite_file(&path).await.unwrap();
            (a, b, Some(dir))
        }
    }
}

/// What the counting handler of the tests gets: its node's store and name.
#[derive(Clone)]
struct Counter {
    store: Store,
    node: String,
}

/// Records every run in `effects` without any uniqueness, so a job run twice
/// would show up as two rows.
fn counting_registry() -> Arc<Registry<Counter>> {
    let mut r = Registry::new();
    r.register("count", |c: Counter, job: Job| async move {
        sqlx::query("INSERT INTO effects (job_id, node, attempt) VALUES ($1, $2, $3)")
            .bind(&job.id)
            .bind(&c.node)
            .bind(job.attempts)
            .execute(c.store.write())
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    });
    Arc::new(r)
}

fn test_settings() -> Settings {
    Settings {
        concurrency: 8,
        lease: Duration::from_secs(30),
        poll: Duration::from_millis(50),
        ..Settings::default()
    }
}

async fn thousand_jobs_run_exactly_once(backend: Backend) {
    const JOBS: usize = 1000;
    let (a, b, _dir) = two_stores(backend).await;
    sqlx::query(
        "CREATE TABLE effects (job_id TEXT NOT NULL, node TEXT NOT NULL, attempt BIGINT NOT NULL)",
    )
    .execute(a.write())
    .await
    .unwrap();
    let now = now_ms();
    let mut tx = a.write().begin().await.unwrap();
    for i in 0..JOBS {
        let job = NewJob::new("count", json!({ "i": i }), now - 1000 + (i as i64 % 7));
        jobs::enqueue_in(&mut tx, &job, now).await.unwrap().unwrap();
    }
    tx.commit().await.unwrap();

    let cancel = CancellationToken::new();
    let mut workers = Vec::new();
    for (store, node) in [(a.clone(), "node-a"), (b.clone(), "node-b")] {
        let ctx = Counter {
            store: store.clone(),
            node: node.into(),
        };
        let worker = Worker::new(store, node, counting_registry(), ctx, test_settings());
        workers.push(tokio::spawn(worker.run(cancel.clone())));
    }
    let started = std::time::Instant::now();
    wait_until("1,000 jobs done", Duration::from_secs(40), || async {
        count(&a, "SELECT COUNT(*) FROM jobs WHERE status = 'done'", "").await == JOBS as i64
    })
    .await;
    let took = started.elapsed();
    cancel.cancel();
    for w in workers {
        w.await.unwrap();
    }

    let effects = count(&a, "SELECT COUNT(*) FROM effects", "").await;
    let distinct = count(&a, "SELECT COUNT(DISTINCT job_id) FROM effects", "").await;
    assert_eq!(effects, JOBS as i64, "every job ran, and none twice");
    assert_eq!(distinct, JOBS as i64);
    let first_try = count(
        &a,
        "SELECT COUNT(*) FROM jobs WHERE status = 'done' AND attempts = 1 AND last_error IS NULL",
        "",
    )
    .await;
    assert_eq!(first_try, JOBS as i64, "no job needed a second attempt");
    let by_a = count(&a, "SELECT COUNT(*) FROM effects WHERE node = $1", "node-a").await;
    let by_b = count(&a, "SELECT COUNT(*) FROM effects WHERE node = $1", "node-b").await;
    eprintln!("{backend:?}: {JOBS} jobs in {took:?}; node-a ran {by_a}, node-b {by_b}");
    assert_eq!(by_a + by_b, JOBS as i64);
    if backend == Backend::PostgresRedis {
        // SKIP LOCKED lets both claim side by side.
        assert!(by_a > 0 && by_b > 0, "both workers took part");
    }
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_race_for_1000_jobs_on_postgres_and_each_runs_once() {
    thousand_jobs_run_exactly_once(Backend::PostgresRedis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_race_for_1000_jobs_on_sqlite_and_each_runs_once() {
    thousand_jobs_run_exactly_once(Backend::Sqlite).await;
}

async fn store_operations(backend: Backend) {
    let (store, other, _dir) = two_stores(backend).await;
    let now = now_ms();
    // Idempotent by unique key, from either node.
    let key = "reminder:g1:2026-11-23";
    let first = NewJob::new("count", json!({"n": 1}), now)
        .unique(key)
        .max_attempts(1);
    let id = jobs::enqueue(&store, &first)
        .await
        .unwrap()
        .expect("enqueued");
    assert_eq!(jobs::enqueue(&other, &first).await.unwrap(), None);
    let again = NewJob::new("count", json!({"n": 2}), now).unique(key);
    assert_eq!(jobs::enqueue(&store, &again).await.unwrap(), None);
    let job = jobs::get_by_key(&store, key).await.unwrap().unwrap();
    assert_eq!(
        (job.id.as_str(), &job.payload),
        (id.as_str(), &json!({"n": 1}))
    );
    let plain = jobs::enqueue(&store, &NewJob::new("count", json!(null), now + 60_000))
        .await
        .unwrap()
        .unwrap();

    // Only the due one is claimed; a second claimer finds nothing.
    let claimed = jobs::claim(&store, "node-a", 10, Duration::from_secs(5), now)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (claimed[0].id.as_str(), claimed[0].attempts),
        (id.as_str(), 1)
    );
    assert!(
        jobs::claim(&other, "node-b", 10, Duration::from_secs(5), now)
            .await
            .unwrap()
            .is_empty()
    );
    // Its only attempt failed: dead, error kept.
    let status = jobs::fail(&store, &claimed[0], "no luck", now + 1000, now)
        .await
        .unwrap();
    assert_eq!(status, Some(Status::Dead));

    let all = jobs::list(&store, None, None, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        vec![plain.as_str(), id.as_str()],
        "newest first"
    );
    let dead = jobs::list(&other, Some(Status::Dead), None, 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_error.as_deref(), Some("no luck"));
    let after = jobs::list(&store, None, Some(&plain), 10).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].id, id);
    assert_eq!(jobs::stats(&store, now).await.unwrap().dead, 1);

    // Retried: queued with more attempts; the old claim's marks are refused.
    let retried = jobs::retry(&other, &id, 3, now + 10).await.unwrap();
    assert_eq!((retried.status, retried.max_attempts), (Status::Queued, 4));
    assert!(!jobs::complete(&store, &claimed[0], now).await.unwrap());
    let e = jobs::retry(&store, &id, 3, now).await.unwrap_err();
    assert_eq!(e.code(), switchboard_protocol::ErrorCode::Conflict);
    let reclaimed = jobs::claim(&other, "node-b", 10, Duration::from_secs(5), now + 10)
        .await
        .unwrap();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].attempts, 2);
    assert!(jobs::complete(&other, &reclaimed[0], now + 20)
        .await
        .unwrap());
    assert_eq!(
        jobs::get(&store, &id).await.unwrap().unwrap().status,
        Status::Done
    );
    // Done jobs are purged after the retention; their key is free again.
    assert_eq!(jobs::purge_done(&store, now + 1000).await.unwrap(), 1);
    assert!(jobs::enqueue(&store, &first).await.unwrap().is_some());
    store.close().await;
    other.close().await;
}

#[tokio::test]
async fn enqueue_claim_and_admin_queries_work_on_postgres() {
    store_operations(Backend::PostgresRedis).await;
}

#[tokio::test]
async fn enqueue_claim_and_admin_queries_work_on_sqlite() {
    store_operations(Backend::Sqlite).await;
}

/// Attempts as the flaky handlers saw them: (job id, attempt, time).
type Seen = Arc<Mutex<Vec<(String, i64, i64)>>>;

#[tokio::test]
async fn failures_back_off_exponentially_and_end_dead_with_their_error() {
    let (store, _b, _dir) = two_stores(Backend::Sqlite).await;
    let seen: Seen = Arc::default();
    let mut r: Registry<Seen> = Registry::new();
    r.register("always_fails", |seen: Seen, job: Job| async move {
        seen.lock()
            .unwrap()
            .push((job.id.clone(), job.attempts, now_ms()));
        Err(format!("boom on attempt {}", job.attempts))
    });
    r.register("fails_twice", |seen: Seen, job: Job| async move {
        seen.lock()
            .unwrap()
            .push((job.id.clone(), job.attempts, now_ms()));
        if job.attempts <= 2 {
            Err("not yet".to_string())
        } else {
            Ok(())
        }
    });
    r.register("panics", |_seen: Seen, _job: Job| async move {
        panic!("a deliberate panic in a test handler");
    });
    let now = now_ms();
    let dead = jobs::enqueue(
        &store,
        &NewJob::new("always_fails", json!({}), now).max_attempts(3),
    )
    .await
    .unwrap()
    .unwrap();
    let flaky = jobs::enqueue(
        &store,
        &NewJob::new("fails_twice", json!({}), now).max_attempts(5),
    )
    .await
    .unwrap()
    .unwrap();
    let panicky = jobs::enqueue(
        &store,
        &NewJob::new("panics", json!({}), now).max_attempts(1),
    )
    .await
    .unwrap()
    .unwrap();

    let cancel = CancellationToken::new();
    let worker = Worker::new(
        store.clone(),
        "node-a",
        Arc::new(r),
        seen.clone(),
        test_settings(),
    );
    let task = tokio::spawn(worker.run(cancel.clone()));
    let status = |id: String| {
        let store = store.clone();
        async move { jobs::get(&store, &id).await.unwrap().unwrap() }
    };
    wait_until("the jobs to settle", Duration::from_secs(15), || async {
        status(dead.clone()).await.status == Status::Dead
            && status(flaky.clone()).await.status == Status::Done
            && status(panicky.clone()).await.status == Status::Dead
    })
    .await;
    cancel.cancel();
    task.await.unwrap();

    let d = status(dead.clone()).await;
    assert_eq!(d.attempts, 3);
    assert_eq!(d.last_error.as_deref(), Some("boom on attempt 3"));
    assert!(d.finished_at.is_some() && d.lease_until.is_none());
    let f = status(flaky.clone()).await;
    assert_eq!(f.attempts, 3);
    let p = status(panicky.clone()).await;
    assert_eq!(p.last_error.as_deref(), Some("the handler panicked"));

    // The delays before attempts 2 and 3 are at least 1 s and 2 s.
    let seen = seen.lock().unwrap().clone();
    for id in [&dead, &flaky] {
        let times: Vec<(i64, i64)> = seen
            .iter()
            .filter(|(j, _, _)| j == id)
            .map(|(_, a, t)| (*a, *t))
            .collect();
        assert_eq!(
            times.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let gap1 = times[1].1 - times[0].1;
        let gap2 = times[2].1 - times[1].1;
        assert!((1000..2500).contains(&gap1), "first retry after {gap1} ms");
        assert!((2000..4000).contains(&gap2), "second retry after {gap2} ms");
    }
}

fn member_ids(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn admins_see_dead_jobs_with_their_error_and_can_retry_them() {
    let s = Setup::new(Backend::Sqlite).await;
    let (_agent, agent_token) = s.staff("alice", "agent").await;
    let store = s.cluster.store().await;
    let now = now_ms();
    let mut ids = Vec::new();
    for i in 0..2 {
        let job = NewJob::new("no_such_kind", json!({ "i": i }), now).max_attempts(2);
        ids.push(jobs::enqueue(&store, &job).await.unwrap().unwrap());
    }
    wait_until("both jobs dead", Duration::from_secs(10), || async {
        count(
            &store,
            "SELECT COUNT(*) FROM jobs WHERE status = 'dead'",
            "",
        )
        .await
            == 2
    })
    .await;

    let (status, page) = s
        .server
        .get("/api/v1/jobs?status=dead", Some(&s.admin_token))
        .await;
    assert_eq!(status, 200, "{page}");
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    for job in items {
        assert_eq!(job["status"], "dead");
        assert_eq!(job["attempts"], 2);
        assert_eq!(job["kind"], "no_such_kind");
        let error = job["last_error"].as_str().unwrap();
        assert!(error.contains("no handler for job kind"), "{error}");
        assert!(job["finished_at"].is_i64());
    }
    // Newest first, one per page.
    let (_, first) = s
        .server
        .get("/api/v1/jobs?status=dead&limit=1", Some(&s.admin_token))
        .await;
    assert_eq!(member_ids(&first), vec![ids[1].clone()]);
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    let (_, second) = s
        .server
        .get(
            &format!("/api/v1/jobs?status=dead&limit=1&cursor={cursor}"),
            Some(&s.admin_token),
        )
        .await;
    assert_eq!(member_ids(&second), vec![ids[0].clone()]);

    // Only admins; only known statuses.
    let (status, body) = s.server.get("/api/v1/jobs", Some(&agent_token)).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, body) = s
        .server
        .get("/api/v1/jobs?status=sleeping", Some(&s.admin_token))
        .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")));

    // Retry: dead → queued with fresh attempts; then it is not dead any more.
    let retry = format!("/api/v1/jobs/{}/retry", ids[0]);
    let (status, body) = s.server.post(&retry, Some(&agent_token), json!({})).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, job) = s.server.post(&retry, Some(&s.admin_token), json!({})).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["status"], "queued");
    assert_eq!(job["max_attempts"], 12);
    assert!(job["finished_at"].is_null());
    let (status, body) = s.server.post(&retry, Some(&s.admin_token), json!({})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    let (status, body) = s
        .server
        .post("/api/v1/jobs/j_nope/retry", Some(&s.admin_token), json!({}))
        .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    // The retried job ran again (its kind is still unknown here).
    wait_until(
        "the retried job's third attempt",
        Duration::from_secs(10),
        || async { jobs::get(&store, &ids[0]).await.unwrap().unwrap().attempts >= 3 },
    )
    .await;

    // The figures are on /metrics.
    let text = s
        .server
        .http
        .get(s.server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "switchboard_jobs_due",
        "switchboard_jobs_running",
        "switchboard_jobs_dead",
        "switchboard_jobs_oldest_due_seconds",
        "switchboard_job_lag_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("switchboard_job_runs_total") && l.contains("outcome=\"dead\"")),
        "dead outcomes counted"
    );
    store.close().await;
    s.server.stop().await;
}

/// A group owned by a new agent `alice` with member `bob`: (alice id, alice
/// token, bob token, group id).
async fn group_of_two(s: &Setup) -> (String, String, String, String) {
    let (alice, alice_token) = s.staff("alice", "agent").await;
    let (bob, bob_token) = s.staff("bob", "agent").await;
    let group = s
        .server
        .create_group(&alice_token, "晨会提醒", &[bob.as_str()])
        .await;
    (alice, alice_token, bob_token, group)
}

/// The group's messages as stored: (client_msg_id, body).
async fn stored_messages(store: &Store, group: &str) -> Vec<(Option<String>, String)> {
    sqlx::query("SELECT client_msg_id, body FROM messages WHERE conv_id = $1 ORDER BY seq")
        .bind(group)
        .fetch_all(store.read())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("client_msg_id"), r.get("body")))
        .collect()
}

fn group_message_job(group: &str, sender: &str, body: &str, run_at: i64) -> NewJob {
    NewJob::new(
        group_messages::KIND,
        json!({"group": group, "sender": sender, "body": body}),
        run_at,
    )
}

#[tokio::test]
async fn a_job_whose_worker_stopped_runs_again_after_its_lease_and_acts_once() {
    let s = Setup::new(Backend::Sqlite).await;
    let (alice, alice_token, bob_token, group) = group_of_two(&s).await;
    let mut bob = s.server.client(&bob_token).await;
    let store = s.cluster.store().await;
    let run_at = now_ms() + 1500;
    let did = jobs::enqueue(
        &store,
        &group_message_job(&group, &alice, "did it, then died", run_at),
    )
    .await
    .unwrap()
    .unwrap();
    let didnt = jobs::enqueue(
        &store,
        &group_message_job(&group, &alice, "died first", run_at),
    )
    .await
    .unwrap()
    .unwrap();
    // A worker on a node that then dies claims both with a 1 s lease. (It
    // claims "at run_at", before the server's own worker may.)
    let claimed = jobs::claim(&store, "node-dead", 2, Duration::from_secs(1), run_at)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(claimed
        .iter()
        .all(|j| j.attempts == 1 && j.leased_by == "node-dead"));
    // It had already posted the first job's message, as the handler would.
    let mut alice_ws = s.server.client(&alice_token).await;
    alice_ws
        .send_text_message(&group, &format!("job:{did}"), "did it, then died")
        .await;

    wait_until(
        "both jobs done by the server",
        Duration::from_secs(15),
        || async {
            let a = jobs::get(&store, &did).await.unwrap().unwrap();
            let b = jobs::get(&store, &didnt).await.unwrap().unwrap();
            a.status == Status::Done && b.status == Status::Done
        },
    )
    .await;
    for id in [&did, &didnt] {
        let job = jobs::get(&store, id).await.unwrap().unwrap();
        assert_eq!(job.attempts, 2, "run again once, after the lease");
        assert_ne!(job.leased_by.as_deref(), Some("node-dead"));
        let error = job.last_error.unwrap();
        assert!(error.contains("lease expired: worker node-dead"), "{error}");
        assert!(
            job.finished_at.unwrap() >= run_at + 1000,
            "not before the lease ended"
        );
    }
    // The dead worker's late marks are refused: the lease is not its own.
    for job in &claimed {
        assert!(!jobs::complete(&store, job, now_ms()).await.unwrap());
        assert_eq!(
            jobs::fail(&store, job, "late", now_ms(), now_ms())
                .await
                .unwrap(),
            None
        );
    }
    // Each effect happened once.
    let messages = stored_messages(&store, &group).await;
    let ids: Vec<String> = messages.iter().filter_map(|(c, _)| c.clone()).collect();
    assert_eq!(ids, vec![format!("job:{did}"), format!("job:{didnt}")]);
    let mut live = Vec::new();
    for _ in 0..2 {
        match bob
            .recv_until(|f| matches!(f, ServerFrame::Message { .. }))
            .await
        {
            ServerFrame::Message { msg } => live.push(msg.client_msg_id.unwrap()),
            _ => unreachable!(),
        }
    }
    assert_eq!(live, ids);
    bob.expect_silence(Duration::from_millis(300)).await;
    store.close().await;
    s.server.stop().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_worker_killed_with_sigkill_inside_a_job_is_replaced_after_its_lease() {
    let cluster = Cluster::new(Backend::PostgresRedis).await;
    cluster.seed_user(ADMIN, ADMIN_PASSWORD, Role::Admin).await;
    let port = free_port();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SWITCHBOARD_DATA_DIR", cluster.dir.path())
        .env("SWITCHBOARD_ADDR", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", cluster.database_url.as_deref().unwrap())
        .env("REDIS_URL", cluster.redis_url.as_deref().unwrap())
        .env("SWITCHBOARD_REDIS_PREFIX", &cluster.redis_prefix)
        .env("SWITCHBOARD_JWT_SECRET", &cluster.jwt_secret)
        .env("SWITCHBOARD_NODE_ID", "node-doomed")
        .env("SWITCHBOARD_JOB_LEASE_S", "4")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // The binary serves the same API as an in-process node.
    let doomed = TestServer {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        shutdown: CancellationToken::new(),
        task: None,
        http: reqwest::Client::new(),
    };
    wait_until("the binary to serve", Duration::from_secs(15), || async {
        doomed
            .http
            .get(doomed.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    let admin_token = doomed.token(ADMIN, ADMIN_PASSWORD).await;
    doomed.create_staff(&admin_token, "alice", "agent").await;
    let alice_token = doomed.token("alice", "alice-password").await;
    let group = doomed.create_group(&alice_token, "值班群", &[]).await;

    // Hold the group's row: the job's send will block inside its
    // transaction, so the process is killed in the middle of the job.
    let store = cluster.store().await;
    let mut blocker = store.write().begin().await.unwrap();
    sqlx::query("SELECT id FROM conversations WHERE id = $1 FOR UPDATE")
        .bind(&group)
        .fetch_one(&mut *blocker)
        .await
        .unwrap();
    let (status, scheduled) = doomed
        .post(
            &format!("/api/v1/groups/{group}/scheduled-messages"),
            Some(&alice_token),
            json!({"body": "交班提醒", "at": now_ms() + 500}),
        )
        .await;
    assert_eq!(status, 201, "{scheduled}");
    let key_prefix = format!("schedule:{}:%", scheduled["id"].as_str().unwrap());
    let job_id = Arc::new(Mutex::new(String::new()));
    wait_until("the doomed node to be inside the job", Duration::from_secs(10), || async {
        let row = sqlx::query(
            "SELECT id FROM jobs WHERE unique_key LIKE $1 AND status = 'running' AND leased_by = 'node-doomed'",
        )
        .bind(&key_prefix)
        .fetch_optional(store.read())
        .await
        .unwrap();
        let waiting = count(
            &store,
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock'",
            "",
        )
        .await;
        match row {
            Some(r) if waiting > 0 => {
                *job_id.lock().unwrap() = r.get("id");
                true
            }
            _ => false,
        }
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let job_id = job_id.lock().unwrap().clone();
    let job = jobs::get(&store, &job_id).await.unwrap().unwrap();
    assert_eq!(
        (job.status, job.attempts, job.leased_by.as_deref()),
        (Status::Running, 1, Some("node-doomed")),
        "killed while the job ran"
    );
    blocker.rollback().await.unwrap();
    assert!(stored_messages(&store, &group).await.is_empty());

    // Another node takes the job over once the lease has run out.
    let survivor = cluster.start("node-survivor").await;
    wait_until("the job to be done", Duration::from_secs(15), || async {
        jobs::get(&store, &job_id).await.unwrap().unwrap().status == Status::Done
    })
    .await;
    let job = jobs::get(&store, &job_id).await.unwrap().unwrap();
    assert_eq!(job.attempts, 2);
    assert_eq!(job.leased_by.as_deref(), Some("node-survivor"));
    assert!(
        job.finished_at.unwrap() >= job.run_at + 4000,
        "only after the lease"
    );
    assert!(job.last_error.unwrap().contains("node-doomed"));
    let messages = stored_messages(&store, &group).await;
    assert_eq!(
        messages,
        vec![(Some(format!("job:{job_id}")), "交班提醒".to_string())],
        "the message was posted exactly once"
    );
    store.close().await;
    survivor.stop().await;
}

#[tokio::test]
async fn each_occurrence_becomes_one_job_across_nodes_with_catch_up_and_misfire() {
    let (a, b, _dir) = two_stores(Backend::PostgresRedis).await;
    let now = now_ms();
    let misfire = Duration::from_secs(3600);
    // Every second, created 5 s ago (the nodes were down since).
    let every_second = schedule::create(
        &a,
        &NewSchedule {
            kind: "count".into(),
            target_id: None,
            when: When::Cron("* * * * * *".into()),
            timezone: "Asia/Shanghai".into(),
            payload: json!({"x": 1}),
            created_by: None,
        },
        now - 5000,
    )
    .await
    .unwrap();
    // Every minute, created two hours ago: the first hour is too old.
    let every_minute = schedule::create(
        &a,
        &NewSchedule {
            kind: "count".into(),
            target_id: None,
            when: When::Cron("* * * * *".into()),
            timezone: "UTC".into(),
            payload: json!({}),
            created_by: None,
        },
        now - 2 * 3600 * 1000,
    )
    .await
    .unwrap();

    // Both nodes run their scheduler at the same moments.
    let mut total = schedule::Advanced::default();
    for _ in 0..3 {
        let (x, y) = tokio::join!(
            schedule::tick(&a, now, misfire),
            schedule::tick(&b, now, misfire)
        );
        total += x.unwrap();
        total += y.unwrap();
    }
    let occurrences = |id: String| {
        let a = a.clone();
        async move {
            let rows = sqlx::query(
                "SELECT unique_key, run_at, payload FROM jobs WHERE unique_key LIKE $1",
            )
            .bind(format!("schedule:{id}:%"))
            .fetch_all(a.read())
            .await
            .unwrap();
            let mut out = Vec::new();
            for r in rows {
                let key: String = r.get("unique_key");
                let occ: i64 = key.rsplit(':').next().unwrap().parse().unwrap();
                assert_eq!(occ, r.get::<i64, _>("run_at"));
                let payload: Value = serde_json::from_str(&r.get::<String, _>("payload")).unwrap();
                assert_eq!(payload["schedule"], id.as_str());
                assert_eq!(payload["occurrence"], occ);
                out.push(occ);
            }
            out.sort();
            out
        }
    };
    let secs = occurrences(every_second.id.clone()).await;
    // Each second after the creation up to the lookahead, once.
    let first = (now - 5000).div_euclid(1000) * 1000 + 1000;
    let last = (now + schedule::LOOKAHEAD.as_millis() as i64).div_euclid(1000) * 1000;
    let expected: Vec<i64> = (0..)
        .map(|i| first + i * 1000)
        .take_while(|t| *t <= last)
        .collect();
    assert_eq!(secs, expected);
    let mins = occurrences(every_minute.id.clone()).await;
    assert!(
        mins.first().unwrap() >= &(now - 3600 * 1000),
        "older ones skipped"
    );
    assert!(mins.windows(2).all(|w| w[1] - w[0] == 60_000), "no gap");
    assert!((60..=61).contains(&mins.len()), "{} minutes", mins.len());
    assert_eq!(
        total.enqueued,
        secs.len() + mins.len(),
        "no occurrence enqueued twice"
    );
    assert_eq!(total.skipped, 1);
    // The schedules moved past the lookahead.
    let s = schedule::get(&a, &every_second.id).await.unwrap().unwrap();
    assert_eq!(s.next_run_at, Some(last + 1000));
    a.close().await;
    b.close().await;
}

/// Messages of `group` that scheduled jobs posted: occurrence → count.
async fn posted_occurrences(store: &Store, group: &str) -> BTreeMap<i64, usize> {
    let rows = sqlx::query(
        "SELECT j.unique_key FROM messages m JOIN jobs j ON m.client_msg_id = 'job:' || j.id \
         WHERE m.conv_id = $1",
    )
    .bind(group)
    .fetch_all(store.read())
    .await
    .unwrap();
    let mut out = BTreeMap::new();
    for r in rows {
        let key: String = r.get("unique_key");
        let occ: i64 = key.rsplit(':').next().unwrap().parse().unwrap();
        *out.entry(occ).or_insert(0) += 1;
    }
    out
}

async fn recurring_message_across_a_restart(backend: Backend) {
    let s = Setup::new(backend).await;
    // On PostgreSQL a second node works the same queue the whole time.
    let other = match backend {
        Backend::PostgresRedis => Some(s.cluster.start("node-b").await),
        Backend::Sqlite => None,
    };
    let (_alice, alice_token, bob_token, group) = group_of_two(&s).await;
    // Bob stays connected through the restart where a node survives it.
    let mut bob = match &other {
        Some(b) => Some(b.client(&bob_token).await),
        None => None,
    };
    let created = now_ms();
    let (status, sm) = s
        .server
        .post(
            &format!("/api/v1/groups/{group}/scheduled-messages"),
            Some(&alice_token),
            json!({"body": "每秒提醒", "cron": "* * * * * *", "timezone": "Asia/Shanghai"}),
        )
        .await;
    let answered = now_ms();
    assert_eq!(status, 201, "{sm}");
    assert_eq!(sm["cron"], "* * * * * *");
    assert_eq!(sm["timezone"], "Asia/Shanghai");
    assert!(sm["at"].is_null() && sm["enabled"] == true);
    let next = sm["next_run_at"].as_i64().unwrap();
    assert!(
        next > created && next <= answered + 1000,
        "{next}: the first second after the request ({created}..{answered})"
    );
    let id = sm["id"].as_str().unwrap().to_string();

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let Setup {
        cluster,
        server,
        admin_token: _,
    } = s;
    server.stop().await;
    // Down for a while: occurrences fall due with no node-a.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let server = cluster.start("node-a-again").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, list) = server
        .get(
            &format!("/api/v1/groups/{group}/scheduled-messages"),
            Some(&alice_token),
        )
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(member_ids(&list), vec![id.clone()]);
    let cancel_at = now_ms();
    let resp = server
        .http
        .delete(server.url(&format!("/api/v1/scheduled-messages/{id}")))
        .bearer_auth(&alice_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let store = cluster.store().await;
    let posted = posted_occurrences(&store, &group).await;
    let occurrences: Vec<i64> = posted.keys().copied().collect();
    assert!(
        posted.values().all(|n| *n == 1),
        "an occurrence posted twice: {posted:?}"
    );
    assert!(
        occurrences.windows(2).all(|w| w[1] - w[0] == 1000),
        "a gap: {occurrences:?}"
    );
    assert_eq!(
        occurrences.first(),
        Some(&next),
        "from the first occurrence"
    );
    let last = *occurrences.last().unwrap();
    assert!(
        last >= cancel_at - 2500 && last <= cancel_at + 1000,
        "until the cancel: last {last}, cancelled at {cancel_at}"
    );
    assert!(occurrences.len() >= 6, "{occurrences:?}");
    // Nothing else reached the group, and no message after the cancel.
    let messages = stored_messages(&store, &group).await;
    assert_eq!(messages.len(), occurrences.len());
    assert!(messages.iter().all(|(_, body)| body == "每秒提醒"));

    if let Some(bob) = bob.as_mut() {
        // Live, across the restart, each once.
        let mut live = HashSet::new();
        for _ in 0..messages.len() {
            match bob
                .recv_until(|f| matches!(f, ServerFrame::Message { .. }))
                .await
            {
                ServerFrame::Message { msg } => {
                    assert!(live.insert(msg.id.clone()), "delivered twice: {msg:?}");
                }
                _ => unreachable!(),
            }
        }
        // The group's creation may reach node-b after bob connected there.
        bob.backlog
            .retain(|f| !matches!(f, ServerFrame::Conversation { .. }));
        bob.expect_silence(Duration::from_millis(300)).await;
    }
    let (_, list) = server
        .get(
            &format!("/api/v1/groups/{group}/scheduled-messages"),
            Some(&alice_token),
        )
        .await;
    assert!(
        member_ids(&list).is_empty(),
        "cancelled ones are not listed"
    );
    store.close().await;
    server.stop().await;
    if let Some(b) = other {
        b.stop().await;
    }
}

#[tokio::test]
async fn a_recurring_group_message_arrives_once_per_occurrence_across_a_restart_on_sqlite() {
    recurring_message_across_a_restart(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_recurring_group_message_arrives_once_per_occurrence_across_a_restart_on_two_postgres_nodes(
) {
    recurring_message_across_a_restart(Backend::PostgresRedis).await;
}

#[tokio::test]
async fn a_one_shot_message_arrives_live_and_a_cancelled_one_never() {
    let s = Setup::new(Backend::Sqlite).await;
    let (alice, alice_token, bob_token, group) = group_of_two(&s).await;
    let (_carol, carol_token) = s.staff("carol", "agent").await;
    let (_sup, sup_token) = s.staff("sam", "supervisor").await;
    let mut bob = s.server.client(&bob_token).await;
    let path = format!("/api/v1/groups/{group}/scheduled-messages");
    let at = now_ms() + 1200;
    let (status, once) = s
        .server
        .post(
            &path,
            Some(&alice_token),
            json!({"body": "明天九点开会", "at": at}),
        )
        .await;
    assert_eq!(status, 201, "{once}");
    assert_eq!(once["group"], group.as_str());
    assert_eq!(once["body"], "明天九点开会");
    assert_eq!(once["at"], at);
    assert_eq!(once["next_run_at"], at);
    assert_eq!(once["timezone"], "UTC");
    assert_eq!(once["created_by"], alice.as_str());
    assert!(once["cron"].is_null());
    let (status, cancelled) = s
        .server
        .post(
            &path,
            Some(&alice_token),
            json!({"body": "取消了", "at": at + 300}),
        )
        .await;
    assert_eq!(status, 201);
    let cancelled_id = cancelled["id"].as_str().unwrap();

    // Listing: members and supervisors; other agents not.
    let (status, list) = s.server.get(&path, Some(&alice_token)).await;
    assert_eq!(status, 200);
    assert_eq!(member_ids(&list).len(), 2);
    let (status, _) = s.server.get(&path, Some(&sup_token)).await;
    assert_eq!(status, 200);
    let (status, body) = s.server.get(&path, Some(&carol_token)).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));

    // Cancelling: not another agent; the creator, twice.
    let delete = |token: String, id: String| {
        let http = s.server.http.clone();
        let url = s.server.url(&format!("/api/v1/scheduled-messages/{id}"));
        async move {
            let r = http.delete(url).bearer_auth(token).send().await.unwrap();
            r.status().as_u16()
        }
    };
    assert_eq!(delete(carol_token.clone(), cancelled_id.into()).await, 404);
    assert_eq!(delete(bob_token.clone(), cancelled_id.into()).await, 403);
    assert_eq!(delete(alice_token.clone(), cancelled_id.into()).await, 204);
    assert_eq!(delete(alice_token.clone(), cancelled_id.into()).await, 204);
    assert_eq!(delete(alice_token.clone(), "sc_nope".into()).await, 404);

    let frame = bob
        .recv_until(|f| matches!(f, ServerFrame::Message { .. }))
        .await;
    let ServerFrame::Message { msg } = frame else {
        unreachable!()
    };
    assert_eq!(msg.body, "明天九点开会");
    assert_eq!(msg.sender.id, alice);
    assert!(msg.ts >= at, "not before its time");
    assert!(msg.client_msg_id.unwrap().starts_with("job:"));
    // The cancelled one's time passes without a message.
    bob.expect_silence(Duration::from_millis(1500)).await;
    let store = s.cluster.store().await;
    assert_eq!(stored_messages(&store, &group).await.len(), 1);
    let (_, list) = s.server.get(&path, Some(&alice_token)).await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert!(items[0]["next_run_at"].is_null(), "sent: nothing ahead");
    store.close().await;
    s.server.stop().await;
}

#[tokio::test]
async fn bad_scheduled_messages_are_refused_with_stable_codes_and_store_nothing() {
    let s = Setup::new(Backend::Sqlite).await;
    let (_alice, alice_token, _bob_token, group) = group_of_two(&s).await;
    let (_carol, carol_token) = s.staff("carol", "agent").await;
    let (_cust, customer_token) = s.server.quick_customer(&alice_token, "顾客").await;
    let path = format!("/api/v1/groups/{group}/scheduled-messages");
    let later = now_ms() + 60_000;
    let bad: Vec<(Value, &str)> = vec![
        (json!({"body": "x", "cron": "not a cron"}), "invalid cron"),
        (json!({"body": "x", "cron": "61 * * * *"}), "invalid cron"),
        (
            json!({"body": "x", "cron": "0 0 31 2 *"}),
            "no future occurrence",
        ),
        (
            json!({"body": "x", "cron": "0 9 * * *", "timezone": "Mars/Olympus"}),
            "time zone",
        ),
        (
            json!({"body": "x", "at": later, "cron": "0 9 * * *"}),
            "exactly one of at and cron",
        ),
        (json!({"body": "x"}), "exactly one of at and cron"),
        (json!({"body": "x", "at": now_ms() - 1000}), "in the future"),
        (json!({"body": "   ", "at": later}), "body must be"),
        (
            json!({"body": "长".repeat(8001), "at": later}),
            "body must be",
        ),
        (
            json!({"body": "x", "at": later, "repeat": true}),
            "unknown field",
        ),
        (json!({"at": later}), "body"),
        (json!({"body": "x", "at": "tomorrow"}), "at"),
    ];
    for (body, says) in bad {
        let (status, reply) = s.server.post(&path, Some(&alice_token), body.clone()).await;
        assert_eq!(status, 400, "{body} → {reply}");
        assert_eq!(reply["code"], "bad_request", "{body}");
        let message = reply["message"].as_str().unwrap();
        assert!(
            message.contains(says),
            "{body}: {message:?} should say {says:?}"
        );
    }
    let good = json!({"body": "x", "cron": "0 9 * * 1-5", "timezone": "Asia/Shanghai"});
    let (status, reply) = s.server.post(&path, Some(&carol_token), good.clone()).await;
    assert_eq!(
        (status, reply["code"].as_str()),
        (403, Some("forbidden")),
        "non-member"
    );
    let (status, reply) = s
        .server
        .post(&path, Some(&customer_token), good.clone())
        .await;
    assert_eq!(
        (status, reply["code"].as_str()),
        (403, Some("forbidden")),
        "customer"
    );
    let (status, reply) = s
        .server
        .post(&path, Some(&s.admin_token), good.clone())
        .await;
    assert_eq!(
        (status, reply["code"].as_str()),
        (403, Some("forbidden")),
        "admin, not a member"
    );
    let (status, reply) = s
        .server
        .post(
            "/api/v1/groups/cv_nope/scheduled-messages",
            Some(&alice_token),
            good.clone(),
        )
        .await;
    assert_eq!((status, reply["code"].as_str()), (404, Some("not_found")));
    let (status, _) = s.server.post(&path, None, good.clone()).await;
    assert_eq!(status, 401);

    let store = s.cluster.store().await;
    assert_eq!(count(&store, "SELECT COUNT(*) FROM schedules", "").await, 0);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM jobs", "").await, 0);
    // The same request from a member is fine.
    let (status, reply) = s.server.post(&path, Some(&alice_token), good).await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(count(&store, "SELECT COUNT(*) FROM schedules", "").await, 1);
    store.close().await;
    s.server.stop().await;
}
