//! Store conformance: the same test bodies run against a SQLite file and a
//! fresh PostgreSQL database, through the domain functions the server uses
//! (users, groups, send/sync/recall/read, sessions and refresh rotation, the
//! generated JWT secret). Each body is an `async fn name(store: Store)`; the
//! `conformance!` macro turns it into `name::sqlite` and `name::postgres`.
//! What must hold on both engines: migrations are idempotent, the rebuild of
//! the message and event tables keeps their rows and keys, `seq` is gapless
//! under concurrent senders, `client_msg_id` is idempotent per sender, a
//! reused refresh token revokes its family, and an unreachable database is an
//! error rather than a hang.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use switchboard_protocol::{ErrorCode, MessageKind, Role, UserRef};
use switchboard_server::auth::{self, users};
use switchboard_server::bus::local::LocalNetwork;
use switchboard_server::bus::Bus;
use switchboard_server::config::Config;
use switchboard_server::conversations::committer::Stored;
use switchboard_server::conversations::messages::{self, Page, SendInput};
use switchboard_server::conversations::{self, create_group};
use switchboard_server::error::AppResult;
use switchboard_server::metrics::Metrics;
use switchboard_server::state::{AppState, StateParts};
use switchboard_server::store::{Store, MIGRATOR};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Runs one body against both engines.
macro_rules! conformance {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().expect("temp dir");
                let store = super::Store::open_sqlite_file(&dir.path().join("conformance.db"))
                    .await
                    .expect("open sqlite");
                super::$name(store.clone()).await;
                store.close().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let url = super::common::fresh_postgres_database().await;
                let store = super::Store::connect(&url).await.expect("connect postgres");
                super::$name(store.clone()).await;
                store.close().await;
            }
        }
    };
}

/// A migrated store wrapped in a full application state (in-process bus with
/// no peers), as the server builds it. The temp dir holds the uploads.
async fn app(store: &Store) -> (AppState, tempfile::TempDir) {
    store.migrate().await.expect("migrate");
    let dir = tempfile::tempdir().expect("temp dir");
    let metrics = Arc::new(Metrics::new("test"));
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let state = AppState::new(StateParts {
        config,
        node_id: "test".into(),
        store: store.clone(),
        bus: Bus::Local(LocalNetwork::new().bus("test", metrics.clone())),
        keys: auth::TokenKeys::new(b"store-conformance-secret-0123456789abcdef", 900),
        metrics,
        files: switchboard_server::uploads::FileStore::new(dir.path().join("uploads"))
            .expect("file store"),
        dispatch: switchboard_server::dispatch::Dispatcher::new(
            switchboard_server::dispatch::Engine::Local(Default::default()),
        ),
        shutdown: CancellationToken::new(),
        tracker: TaskTracker::new(),
    });
    (state, dir)
}

fn skill(name: &str, level: u8) -> switchboard_server::dispatch::Skill {
    switchboard_server::dispatch::Skill {
        name: name.into(),
        level,
    }
}

/// The error code of a result that must have failed.
fn code_of<T: std::fmt::Debug>(result: AppResult<T>) -> ErrorCode {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code(),
    }
}

async fn user(store: &Store, username: &str, name: &str, role: Role) -> users::User {
    users::create_user(
        store,
        users::NewUser {
            username: Some(username.into()),
            name: name.into(),
            role,
            password_hash: None,
            temporary: false,
            max_concurrency: None,
            skills: vec![],
        },
    )
    .await
    .expect("create user")
}

fn text(conv: &str, client_msg_id: &str, body: &str) -> SendInput {
    SendInput {
        conv: conv.into(),
        client_msg_id: client_msg_id.into(),
        kind: MessageKind::Text,
        body: Some(body.into()),
        attachment: None,
    }
}

/// Every message of a conversation, paging through `sync`.
async fn all_messages(
    state: &AppState,
    reader: &UserRef,
    conv: &str,
) -> Vec<switchboard_protocol::Message> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = messages::sync_messages(state, reader, conv, Page::After(after), 100)
            .await
            .expect("sync");
        if let Some(last) = page.messages.last() {
            after = last.seq;
        }
        out.extend(page.messages);
        if !page.has_more {
            return out;
        }
    }
}

// 1. Migrations.

async fn migrations_apply_once_and_rerun_is_a_no_op(store: Store) {
    // A fresh database has no schema yet.
    assert!(
        sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(store.read())
            .await
            .is_err(),
        "the fresh database already has a users table"
    );
    store.migrate().await.expect("first migrate");
    let applied = |store: Store| async move {
        let rows = sqlx::query("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(store.read())
            .await
            .expect("read migration history");
        rows.iter()
            .map(|r| r.try_get::<i64, _>("version").unwrap())
            .collect::<Vec<_>>()
    };
    let first = applied(store.clone()).await;
    let expected: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    assert!(!expected.is_empty());
    assert_eq!(first, expected, "every embedded migration is recorded once");

    store.migrate().await.expect("second migrate is a no-op");
    assert_eq!(applied(store.clone()).await, first, "nothing re-applied");

    // The schema is usable: every table the server owns exists and is empty.
    for table in [
        "users",
        "token_families",
        "refresh_tokens",
        "quick_links",
        "conversations",
        "conversation_members",
        "messages",
        "uploads",
        "upload_conversations",
        "server_secrets",
    ] {
        let row = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
            .fetch_one(store.read())
            .await
            .unwrap_or_else(|e| panic!("table {table} after migrations: {e}"));
        assert_eq!(row.try_get::<i64, _>("n").unwrap(), 0, "{table} is empty");
    }
}
conformance!(migrations_apply_once_and_rerun_is_a_no_op);

/// The migration that rebuilt `messages` and `conversation_events` (without
/// their foreign key to `conversations`).
const LOG_TABLES_REBUILT: i64 = 20261204000001;

async fn rebuilt_log_tables_keep_their_rows_and_keys(store: Store) {
    // A database as the previous release left it, with rows in both tables.
    let before = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            MIGRATOR
                .iter()
                .filter(|m| m.version < LOG_TABLES_REBUILT)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    assert!(before.iter().count() < MIGRATOR.iter().count());
    before.run(store.write()).await.expect("migrate to before");
    let exec = |sql: &'static str| {
        let store = store.clone();
        async move {
            sqlx::query(sql)
                .execute(store.write())
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    };
    exec(
        "INSERT INTO conversations (id, kind, state, last_seq, created_at, updated_at) \
          VALUES ('cv_1', 'service', 'active', 2, 1, 1)",
    )
    .await;
    exec("INSERT INTO messages (id, conv_id, seq, sender_id, sender_role, sender_name, kind, body, \
          client_msg_id, ts) VALUES \
          ('m_1', 'cv_1', 1, 'system', 'system', '系统', 'system', '客服 小王 为您服务', NULL, 10), \
          ('m_2', 'cv_1', 2, 'u_1', 'customer', '张三', 'text', '你好', 'c-1', 11)")
    .await;
    exec(
        "INSERT INTO conversation_events (id, conv_id, kind, team_id, agent_id, at) \
          VALUES ('ev_1', 'cv_1', 'assigned', 't_1', 'u_2', 10)",
    )
    .await;

    store.migrate().await.expect("migrate the rest");

    // The rows are kept as they were.
    let rows = sqlx::query(
        "SELECT id, seq, sender_name, body, client_msg_id FROM messages WHERE conv_id = 'cv_1' ORDER BY seq",
    )
    .fetch_all(store.read())
    .await
    .expect("read messages");
    let got: Vec<(String, i64, String, String, Option<String>)> = rows
        .iter()
        .map(|r| {
            (
                r.try_get("id").unwrap(),
                r.try_get("seq").unwrap(),
                r.try_get("sender_name").unwrap(),
                r.try_get("body").unwrap(),
                r.try_get("client_msg_id").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "m_1".into(),
                1,
                "系统".into(),
                "客服 小王 为您服务".into(),
                None
            ),
            (
                "m_2".into(),
                2,
                "张三".into(),
                "你好".into(),
                Some("c-1".into())
            ),
        ]
    );
    let event =
        sqlx::query("SELECT kind, agent_id, at FROM conversation_events WHERE conv_id = 'cv_1'")
            .fetch_one(store.read())
            .await
            .expect("read the event");
    assert_eq!(event.try_get::<String, _>("kind").unwrap(), "assigned");
    assert_eq!(event.try_get::<String, _>("agent_id").unwrap(), "u_2");
    assert_eq!(event.try_get::<i64, _>("at").unwrap(), 10);

    // The keys still hold: a second message with the same seq, or the same
    // sender's client_msg_id again, is refused; messages without a
    // client_msg_id (system messages) are not one key.
    let insert = |id: &'static str,
                  seq: i64,
                  sender: &'static str,
                  client: Option<&'static str>| {
        let store = store.clone();
        async move {
            sqlx::query(
                "INSERT INTO messages (id, conv_id, seq, sender_id, sender_role, sender_name, kind, \
                 body, client_msg_id, ts) VALUES ($1, 'cv_1', $2, $3, 'customer', 'x', 'text', 'x', $4, 12)",
            )
            .bind(id)
            .bind(seq)
            .bind(sender)
            .bind(client)
            .execute(store.write())
            .await
        }
    };
    let dup_seq = insert("m_3", 2, "u_1", Some("c-2"))
        .await
        .expect_err("seq 2 twice");
    assert!(
        switchboard_server::error::is_unique_violation(&dup_seq),
        "{dup_seq}"
    );
    let dup_client = insert("m_4", 3, "u_1", Some("c-1"))
        .await
        .expect_err("c-1 twice");
    assert!(
        switchboard_server::error::is_unique_violation(&dup_client),
        "{dup_client}"
    );
    insert("m_5", 3, "u_3", Some("c-1"))
        .await
        .expect("another sender's c-1");
    insert("m_6", 4, "system", None)
        .await
        .expect("no client_msg_id");
    insert("m_7", 5, "system", None)
        .await
        .expect("again no client_msg_id");
    let dup_id = insert("m_7", 6, "system", None)
        .await
        .expect_err("id m_7 twice");
    assert!(
        switchboard_server::error::is_unique_violation(&dup_id),
        "{dup_id}"
    );
}
conformance!(rebuilt_log_tables_keep_their_rows_and_keys);

// 2. Users.

async fn users_round_trip_conflict_and_keyset_paging(store: Store) {
    let (_state, _dir) = app(&store).await;
    let created = users::create_user(
        &store,
        users::NewUser {
            username: Some("wangxm".into()),
            name: "王小明".into(),
            role: Role::Agent,
            password_hash: Some("$argon2id$not-a-real-hash".into()),
            temporary: false,
            max_concurrency: Some(5),
            skills: vec![skill("售前咨询", 4), skill("退款", 2), skill("english", 5)],
        },
    )
    .await
    .expect("create 王小明");
    assert!(created.id.starts_with("u_"));

    let by_id = users::get_user(&store, &created.id)
        .await
        .unwrap()
        .expect("found by id");
    let by_name = users::get_user_by_username(&store, "wangxm")
        .await
        .unwrap()
        .expect("found by username");
    for got in [&by_id, &by_name] {
        assert_eq!(got.id, created.id);
        assert_eq!(got.username.as_deref(), Some("wangxm"));
        assert_eq!(got.name, "王小明");
        assert_eq!(got.role, Role::Agent);
        assert_eq!(
            got.password_hash.as_deref(),
            Some("$argon2id$not-a-real-hash")
        );
        assert!(!got.temporary && !got.disabled && !got.must_change_password);
        assert_eq!(got.max_concurrency, Some(5));
        assert_eq!(
            got.skills,
            vec![skill("售前咨询", 4), skill("退款", 2), skill("english", 5)]
        );
        assert_eq!(got.created_at, created.created_at);
    }
    assert!(users::get_user(&store, "u_missing")
        .await
        .unwrap()
        .is_none());
    assert!(users::get_user_by_username(&store, "nobody")
        .await
        .unwrap()
        .is_none());

    // The same username again is a conflict, and nothing was inserted.
    let again = users::create_user(
        &store,
        users::NewUser {
            username: Some("wangxm".into()),
            name: "另一个王小明".into(),
            role: Role::Customer,
            password_hash: None,
            temporary: false,
            max_concurrency: None,
            skills: vec![],
        },
    )
    .await;
    assert_eq!(code_of(again), ErrorCode::Conflict);

    // Keyset paging: 19 more users of mixed roles (20 in all), pages of 7.
    let mut ids = vec![created.id.clone()];
    let mut supervisors = HashSet::new();
    for i in 0..19 {
        let role = match i % 3 {
            0 => Role::Supervisor,
            1 => Role::Customer,
            _ => Role::Agent,
        };
        let u = user(&store, &format!("user-{i:02}"), &format!("用户{i}"), role).await;
        if role == Role::Supervisor {
            supervisors.insert(u.id.clone());
        }
        ids.push(u.id);
    }
    ids.sort();
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = users::list_users(&store, None, after.as_deref(), 7)
            .await
            .expect("list users");
        pages += 1;
        assert!(pages <= 10, "paging does not terminate");
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        assert!(page.len() <= 7);
        paged.extend(page.into_iter().map(|u| u.id));
    }
    assert_eq!(paged, ids, "every user exactly once, in id order");
    assert_eq!(
        pages, 4,
        "20 users in pages of 7: 7 + 7 + 6, then an empty page"
    );

    let only: Vec<users::User> = users::list_users(&store, Some(Role::Supervisor), None, 100)
        .await
        .expect("list supervisors");
    assert!(only.iter().all(|u| u.role == Role::Supervisor));
    assert_eq!(
        only.iter().map(|u| u.id.clone()).collect::<HashSet<_>>(),
        supervisors
    );
    // The role filter and the cursor combine.
    let first = &only[0].id;
    let rest = users::list_users(&store, Some(Role::Supervisor), Some(first), 100)
        .await
        .unwrap();
    assert_eq!(rest.len(), only.len() - 1);
    assert!(rest
        .iter()
        .all(|u| u.id > *first && u.role == Role::Supervisor));
}
conformance!(users_round_trip_conflict_and_keyset_paging);

// 3. Sending.

async fn send_is_gapless_idempotent_and_checked(store: Store) {
    let (state, _dir) = app(&store).await;
    let alice = user(&store, "alice", "爱丽丝", Role::Agent).await.as_ref();
    let bob = user(&store, "bob", "鲍勃", Role::Agent).await.as_ref();
    let carol = user(&store, "carol", "卡罗尔", Role::Agent).await.as_ref();
    let group = create_group(&state, &alice, "售后服务群", std::slice::from_ref(&bob.id))
        .await
        .expect("create group");
    let conv = group.id.clone();

    let m1 = messages::send_message(&state, &alice, None, text(&conv, "c-1", "你好"))
        .await
        .unwrap();
    let m2 = messages::send_message(&state, &bob, None, text(&conv, "b-1", "收到"))
        .await
        .unwrap();
    assert_eq!((m1.seq, m2.seq), (1, 2), "seq starts at 1 and is gapless");
    assert_eq!(m1.body, "你好");
    assert_eq!(m1.sender, alice);

    // The same client_msg_id returns the original and consumes no seq.
    let again = messages::send_message(&state, &alice, None, text(&conv, "c-1", "你好（重发）"))
        .await
        .unwrap();
    assert_eq!(again, m1, "the original message, same id, seq and body");
    // Another sender may use the same client_msg_id string.
    let bobs = messages::send_message(&state, &bob, None, text(&conv, "c-1", "我的 c-1"))
        .await
        .unwrap();
    assert_ne!(bobs.id, m1.id);
    assert_eq!(bobs.seq, 3, "the resend did not take seq 3");
    let history = all_messages(&state, &alice, &conv).await;
    assert_eq!(
        history.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );

    // A non-member gets not_found, as for an unknown conversation.
    let carols = messages::send_message(&state, &carol, None, text(&conv, "x-1", "我能发吗")).await;
    assert_eq!(code_of(carols), ErrorCode::NotFound);
    let unknown =
        messages::send_message(&state, &alice, None, text("cv_unknown", "x-2", "喂")).await;
    assert_eq!(code_of(unknown), ErrorCode::NotFound);

    // A closed conversation refuses sends with conflict (members only; a
    // non-member still learns nothing) and keeps last_seq.
    sqlx::query("UPDATE conversations SET state = 'closed' WHERE id = $1")
        .bind(&conv)
        .execute(store.write())
        .await
        .unwrap();
    let closed = messages::send_message(&state, &alice, None, text(&conv, "c-2", "还在吗")).await;
    assert_eq!(code_of(closed), ErrorCode::Conflict);
    let closed_outsider =
        messages::send_message(&state, &carol, None, text(&conv, "x-3", "还在吗")).await;
    assert_eq!(code_of(closed_outsider), ErrorCode::NotFound);
    let last_seq: i64 = sqlx::query("SELECT last_seq FROM conversations WHERE id = $1")
        .bind(&conv)
        .fetch_one(store.read())
        .await
        .unwrap()
        .try_get("last_seq")
        .unwrap();
    assert_eq!(last_seq, 3, "refused sends take no seq");
}
conformance!(send_is_gapless_idempotent_and_checked);

async fn concurrent_senders_get_exactly_seqs_1_to_200(store: Store) {
    let (state, _dir) = app(&store).await;
    let alice = user(&store, "alice", "爱丽丝", Role::Agent).await.as_ref();
    let bob = user(&store, "bob", "鲍勃", Role::Agent).await.as_ref();
    let conv = create_group(&state, &alice, "并发群", std::slice::from_ref(&bob.id))
        .await
        .unwrap()
        .id;

    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..20 {
        let state = state.clone();
        let sender = if t % 2 == 0 {
            alice.clone()
        } else {
            bob.clone()
        };
        let conv = conv.clone();
        tasks.spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..10 {
                let m = messages::send_message(
                    &state,
                    &sender,
                    None,
                    text(&conv, &format!("t{t}-{i}"), &format!("任务{t} 第{i}条")),
                )
                .await
                .unwrap_or_else(|e| panic!("send t{t}-{i}: {e}"));
                seqs.push(m.seq);
            }
            seqs
        });
    }
    let mut seqs = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let mine = done.expect("sender task");
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "one sender's seqs increase: {mine:?}"
        );
        seqs.extend(mine);
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=200).collect::<Vec<i64>>(),
        "no gap, no duplicate"
    );

    let stored = all_messages(&state, &alice, &conv).await;
    assert_eq!(
        stored.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=200).collect::<Vec<i64>>()
    );
    let client_ids: HashSet<_> = stored
        .iter()
        .map(|m| m.client_msg_id.clone().unwrap())
        .collect();
    assert_eq!(client_ids.len(), 200, "every send stored once");
}
conformance!(concurrent_senders_get_exactly_seqs_1_to_200);

// 4. Sync, recall, read marks.

async fn sync_pages_recall_erases_and_read_only_moves_forward(store: Store) {
    let (state, _dir) = app(&store).await;
    let alice = user(&store, "alice", "爱丽丝", Role::Agent).await.as_ref();
    let bob = user(&store, "bob", "鲍勃", Role::Agent).await.as_ref();
    let conv = create_group(&state, &alice, "历史群", std::slice::from_ref(&bob.id))
        .await
        .unwrap()
        .id;
    for i in 1..=25 {
        let m = messages::send_message(
            &state,
            &alice,
            None,
            text(&conv, &format!("a-{i}"), &format!("第{i}条消息")),
        )
        .await
        .unwrap();
        assert_eq!(m.seq, i);
    }
    let page = |p: Page, limit: u32| {
        let state = state.clone();
        let bob = bob.clone();
        let conv = conv.clone();
        async move {
            let page = messages::sync_messages(&state, &bob, &conv, p, limit)
                .await
                .expect("sync");
            assert_eq!(page.conv, conv);
            (
                page.messages.iter().map(|m| m.seq).collect::<Vec<i64>>(),
                page.has_more,
            )
        }
    };
    assert_eq!(page(Page::After(0), 10).await, ((1..=10).collect(), true));
    assert_eq!(page(Page::After(10), 10).await, ((11..=20).collect(), true));
    assert_eq!(
        page(Page::After(20), 10).await,
        ((21..=25).collect(), false)
    );
    assert_eq!(
        page(Page::After(15), 10).await,
        ((16..=25).collect(), false)
    );
    assert_eq!(page(Page::After(25), 10).await, (vec![], false));
    // Before: the newest older messages, still in ascending order.
    assert_eq!(
        page(Page::Before(26), 10).await,
        ((16..=25).collect(), true)
    );
    assert_eq!(page(Page::Before(16), 10).await, ((6..=15).collect(), true));
    assert_eq!(
        page(Page::Before(11), 10).await,
        ((1..=10).collect(), false)
    );
    assert_eq!(page(Page::Before(1), 10).await, (vec![], false));
    let zero = messages::sync_messages(&state, &bob, &conv, Page::After(0), 0).await;
    assert_eq!(code_of(zero), ErrorCode::BadRequest);
    let outsider = user(&store, "carol", "卡罗尔", Role::Agent).await.as_ref();
    let hidden = messages::sync_messages(&state, &outsider, &conv, Page::After(0), 10).await;
    assert_eq!(code_of(hidden), ErrorCode::NotFound);

    // Recall by the sender erases the body; others may not recall it.
    let third = all_messages(&state, &bob, &conv).await[2].clone();
    assert_eq!(third.body, "第3条消息");
    let denied = messages::recall(&state, &bob, &conv, &third.id).await;
    assert_eq!(code_of(denied), ErrorCode::Forbidden);
    messages::recall(&state, &alice, &conv, &third.id)
        .await
        .expect("recall");
    messages::recall(&state, &alice, &conv, &third.id)
        .await
        .expect("recalling twice is fine");
    let after = all_messages(&state, &bob, &conv).await;
    assert_eq!(after.len(), 25);
    let recalled = &after[2];
    assert_eq!(recalled.id, third.id);
    assert_eq!(recalled.seq, 3);
    assert!(recalled.recalled);
    assert_eq!(recalled.body, "", "the body is erased in the store");
    assert!(after.iter().filter(|m| m.recalled).count() == 1);
    let row = sqlx::query("SELECT body, recalled_at FROM messages WHERE id = $1")
        .bind(&third.id)
        .fetch_one(store.read())
        .await
        .unwrap();
    assert_eq!(row.try_get::<String, _>("body").unwrap(), "");
    assert!(row
        .try_get::<Option<i64>, _>("recalled_at")
        .unwrap()
        .is_some());
    let missing = messages::recall(&state, &alice, &conv, "m_missing").await;
    assert_eq!(code_of(missing), ErrorCode::NotFound);

    // Read marks only move forward and are clamped to the last message.
    let read_mark = |u: UserRef| {
        let state = state.clone();
        let conv = conv.clone();
        async move {
            conversations::visible_conversation(state.store(), &u, &conv)
                .await
                .unwrap()
                .0
                .last_read_seq
        }
    };
    assert_eq!(read_mark(bob.clone()).await, 0);
    messages::mark_read(&state, &bob, &conv, 10).await.unwrap();
    assert_eq!(read_mark(bob.clone()).await, 10);
    messages::mark_read(&state, &bob, &conv, 5).await.unwrap();
    assert_eq!(read_mark(bob.clone()).await, 10, "a lower mark is ignored");
    messages::mark_read(&state, &bob, &conv, 999).await.unwrap();
    assert_eq!(read_mark(bob.clone()).await, 25, "clamped to last_seq");
    assert_eq!(read_mark(alice.clone()).await, 0, "marks are per member");
    let negative = messages::mark_read(&state, &bob, &conv, -1).await;
    assert_eq!(code_of(negative), ErrorCode::BadRequest);
}
conformance!(sync_pages_recall_erases_and_read_only_moves_forward);

// 5. Sessions.

async fn refresh_rotates_and_reuse_revokes_the_family(store: Store) {
    let (state, _dir) = app(&store).await;
    let alice = user(&store, "alice", "爱丽丝", Role::Agent).await;

    let first = auth::start_session(&state, &alice).await.unwrap();
    let me = auth::authenticate(&state, &first.access_token)
        .await
        .unwrap();
    assert_eq!(me, alice.as_ref());

    let second = auth::refresh(&state, &first.refresh_token).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token, "refresh rotates");
    assert_eq!(second.user, alice.as_ref());
    assert_eq!(
        auth::authenticate(&state, &second.access_token)
            .await
            .unwrap(),
        alice.as_ref()
    );

    // Reusing the first refresh token revokes the family: both tokens of it die.
    let reuse = auth::refresh(&state, &first.refresh_token).await;
    assert_eq!(code_of(reuse), ErrorCode::Unauthorized);
    assert_eq!(
        code_of(auth::authenticate(&state, &second.access_token).await),
        ErrorCode::Unauthorized
    );
    assert_eq!(
        code_of(auth::authenticate(&state, &first.access_token).await),
        ErrorCode::Unauthorized
    );
    assert_eq!(
        code_of(auth::refresh(&state, &second.refresh_token).await),
        ErrorCode::Unauthorized
    );
    assert_eq!(
        code_of(auth::refresh(&state, "not-a-token").await),
        ErrorCode::Unauthorized
    );

    // Another login is a separate family and unaffected.
    let other = auth::start_session(&state, &alice).await.unwrap();
    assert!(auth::authenticate(&state, &other.access_token)
        .await
        .is_ok());
}
conformance!(refresh_rotates_and_reuse_revokes_the_family);

async fn concurrent_refreshes_with_one_token_let_at_most_one_win(store: Store) {
    let (state, _dir) = app(&store).await;
    let alice = user(&store, "alice", "爱丽丝", Role::Agent).await;
    for round in 0..5 {
        let session = auth::start_session(&state, &alice).await.unwrap();
        let (a, b) = tokio::join!(
            auth::refresh(&state, &session.refresh_token),
            auth::refresh(&state, &session.refresh_token)
        );
        let results = [a, b];
        let wins = results.iter().filter(|r| r.is_ok()).count();
        assert!(
            wins <= 1,
            "round {round}: both concurrent refreshes succeeded"
        );
        for r in results.into_iter().filter_map(Result::err) {
            assert_eq!(r.code(), ErrorCode::Unauthorized, "round {round}: {r}");
        }
        // Whoever lost saw the token used, so the family is revoked.
        assert_eq!(
            code_of(auth::authenticate(&state, &session.access_token).await),
            ErrorCode::Unauthorized,
            "round {round}: the family survived a double refresh"
        );
    }
}
conformance!(concurrent_refreshes_with_one_token_let_at_most_one_win);

// 6. The JWT secret.

async fn generated_jwt_secret_is_kept_in_the_database(store: Store) {
    store.migrate().await.expect("migrate");
    let first = auth::load_jwt_secret(&store, None).await.unwrap();
    let second = auth::load_jwt_secret(&store, None).await.unwrap();
    assert_eq!(first, second, "the generated secret is reused");
    assert!(first.len() >= 32, "a strong secret: {} bytes", first.len());
    let rows = sqlx::query("SELECT value FROM server_secrets WHERE name = 'jwt'")
        .fetch_all(store.read())
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].try_get::<String, _>("value").unwrap().into_bytes(),
        first
    );

    let configured = "a-configured-secret-of-more-than-32-bytes";
    assert_eq!(
        auth::load_jwt_secret(&store, Some(configured))
            .await
            .unwrap(),
        configured.as_bytes()
    );
    // The configured secret does not replace the stored one.
    assert_eq!(auth::load_jwt_secret(&store, None).await.unwrap(), first);
}
conformance!(generated_jwt_secret_is_kept_in_the_database);

// 7. An unreachable database.

#[tokio::test]
async fn unreachable_postgres_is_an_error_not_a_hang() {
    let result = tokio::time::timeout(
        Duration::from_secs(15),
        Store::connect("postgres://postgres@127.0.0.1:1/x"),
    )
    .await
    .expect("connecting to a dead PostgreSQL must not hang");
    assert!(result.is_err(), "connected to nothing?");
}

/// Group commit: copies of one send racing each other, inside one batch or
/// across batches, store one message; a batch that hits a duplicate already
/// committed elsewhere falls back to one transaction per send and still
/// answers every send correctly, with gapless `seq`.
async fn group_commit_dedupes_and_falls_back(store: Store) {
    let (state, _dir) = app(&store).await;
    let alice = user(&store, "alice", "爱丽丝", Role::Agent).await.as_ref();
    let bob = user(&store, "bob", "鲍勃", Role::Agent).await.as_ref();
    let conv = create_group(&state, &alice, "批量群", std::slice::from_ref(&bob.id))
        .await
        .unwrap()
        .id;

    // 16 concurrent copies of one send: one message, the same answer for all.
    let copies = futures_util::future::join_all(
        (0..16).map(|_| messages::send_message(&state, &alice, None, text(&conv, "dup", "同一条"))),
    )
    .await;
    let ids: HashSet<String> = copies.into_iter().map(|m| m.unwrap().id).collect();
    assert_eq!(ids.len(), 1, "one message for all copies");

    // Bypass the pre-check: hand the committer a duplicate of a committed send
    // together with fresh sends, so the batch fails and is retried one by one.
    let committer = state.committer();
    let results = futures_util::future::join_all(
        std::iter::once(committer.commit(&alice, text(&conv, "dup", "同一条"), "同一条".into()))
            .chain((0..5).map(|i| {
                committer.commit(
                    &bob,
                    text(&conv, &format!("fresh-{i}"), "新的"),
                    "新的".into(),
                )
            })),
    )
    .await;
    let mut seqs = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match (i, r.expect("every send is answered")) {
            (0, Stored::Existing(m)) => assert!(ids.contains(&m.id), "the original comes back"),
            (0, other) => panic!("the duplicate must return the original, got {other:?}"),
            (_, Stored::New(m)) => seqs.push(m.seq),
            (_, other) => panic!("a fresh send must be stored, got {other:?}"),
        }
    }
    seqs.sort_unstable();
    assert_eq!(seqs, vec![2, 3, 4, 5, 6], "gapless after the fallback");
    let stored = all_messages(&state, &alice, &conv).await;
    assert_eq!(
        stored.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<i64>>()
    );
}
conformance!(group_commit_dedupes_and_falls_back);

// 7. SQLite checkpoints beside the writer.

/// The database file itself is written only by checkpoints: with the
/// writer's own checkpoint far off (tens of MiB of WAL), the file grows
/// after a burst of sends only because the checkpointer task copied them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpointer_copies_the_wal_into_the_sqlite_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("checkpoints.db");
    let store = Store::open_sqlite_file(&path).await.expect("open sqlite");
    let (state, _uploads) = app(&store).await;
    let (log, copied) = store
        .checkpoint()
        .await
        .expect("checkpoint")
        .expect("SQLite checkpoints");
    assert_eq!(log, copied, "an idle WAL is copied whole");
    let before = std::fs::metadata(&path).expect("db file").len();

    let alice = user(&store, "alice", "爱丽丝", Role::Agent).await.as_ref();
    let bob = user(&store, "bob", "鲍勃", Role::Agent).await.as_ref();
    let conv = create_group(&state, &alice, "检查点", std::slice::from_ref(&bob.id))
        .await
        .unwrap()
        .id;
    let body = "消息".repeat(200);
    for i in 0..300 {
        messages::send_message(&state, &alice, None, text(&conv, &format!("c{i}"), &body))
            .await
            .expect("send");
    }
    assert_eq!(
        std::fs::metadata(&path).expect("db file").len(),
        before,
        "without the checkpointer the sends are only in the WAL"
    );

    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    switchboard_server::store::start_checkpoints(&store, &tasks, stop.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while std::fs::metadata(&path).expect("db file").len() <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the checkpointer copied nothing into the database file within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    assert_eq!(all_messages(&state, &alice, &conv).await.len(), 300);
    store.close().await;
}

#[tokio::test]
async fn postgres_has_no_wal_checkpoints_to_run() {
    let url = common::fresh_postgres_database().await;
    let store = Store::connect(&url).await.expect("connect postgres");
    assert_eq!(store.checkpoint().await.expect("no error"), None);
    store.close().await;
}
