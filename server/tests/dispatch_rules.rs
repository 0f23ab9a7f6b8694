//! Dispatch queue rules over real servers and real WebSocket clients: the
//! `max_wait_s` overflow (to a fallback team, or as a left message), the
//! skill strategy's `skill_fallback_s`, `max_queue`, the idle auto-close and
//! the supervisors' batch assignment. Each test runs on SQLite with the
//! in-process engine and on PostgreSQL with the Redis engine.
//!
//! The background sweep (overflow, drains, idle close) runs every 2 s, so a
//! rule that fires after 1 s is seen within about 3 s; each wait below allows
//! 6 s.

mod common;

use std::time::{Duration, Instant};

use common::dispatch::*;
use common::{error_code, Backend, Client, Setup, TestServer};
use serde_json::{json, Value};
use switchboard_protocol::{
    ClientFrame, ConversationState, ErrorCode, MessageKind, NoticeLevel, PresenceStatus,
    ServerFrame,
};

on_both_backends!(
    max_wait_overflows_to_fallback_team,
    overflow_goes_ahead_in_the_fallback_queue,
    max_wait_without_fallback_becomes_left_message,
    skill_overflow_to_fallback_team,
    max_queue_skips_a_full_team,
    max_queue_skips_a_full_team_to_next_candidate,
    idle_conversations_close_automatically,
    batch_assign_reports_each_item,
);

/// How long a test waits for something the 2 s sweep does.
const SWEEP_WAIT: Duration = Duration::from_secs(6);

// ---------------------------------------------------------------------------
// Helpers (the small ones are copied from tests/dispatch_flows.rs).

/// The waiting and the pending conversation ids of a REST queue.
fn queue_ids(q: &Value) -> (Vec<String>, Vec<String>) {
    let ids = |list: &Value, field: &str| -> Vec<String> {
        list.as_array()
            .expect("a list")
            .iter()
            .map(|e| e[field].as_str().unwrap().to_string())
            .collect()
    };
    (ids(&q["waiting"], "conv"), ids(&q["pending"], "id"))
}

/// A conversation's dispatch history, oldest first.
async fn events(server: &TestServer, token: &str, conv: &str) -> Vec<Value> {
    let (status, history) = server
        .get(&format!("/api/v1/conversations/{conv}/events"), Some(token))
        .await;
    assert_eq!(status, 200, "{history}");
    history["items"].as_array().unwrap().clone()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

/// The next `left_message` notice.
async fn left_message_notice(c: &mut Client, limit: Duration) {
    let notice = expect_within(
        c,
        limit,
        "the left_message notice",
        |f| matches!(f, ServerFrame::Notice { code: Some(code), .. } if code == "left_message"),
    )
    .await;
    let ServerFrame::Notice { level, text, .. } = notice else {
        unreachable!()
    };
    assert_eq!(level, NoticeLevel::Info, "{text}");
    assert!(!text.is_empty());
}

fn has_left_message_notice(frames: &[ServerFrame]) -> bool {
    frames.iter().any(
        |f| matches!(f, ServerFrame::Notice { code: Some(code), .. } if code == "left_message"),
    )
}

/// Whether any of `frames` shows `conv` in a state other than `queued`.
fn moved_on(frames: &[ServerFrame], conv: &str) -> bool {
    frames.iter().any(|f| {
        matches!(f, ServerFrame::Conversation { conv: i }
            if i.id == conv && i.state != ConversationState::Queued)
    })
}

// ---------------------------------------------------------------------------
// 1. max_wait_s with a fallback team.

async fn max_wait_overflows_to_fallback_team(backend: Backend) {
    let s = Setup::new(backend).await;
    let (a, mut agent_a) = online_staff(&s, "wait-a").await;
    let (b, mut agent_b) = online_staff(&s, "wait-b").await;
    let team_b = create_team(&s.server, &s.admin_token, json!({"name": "后备组"})).await;
    let team_a = create_team(
        &s.server,
        &s.admin_token,
        json!({"name": "一线组", "max_concurrency": 1, "max_wait_s": 1,
               "fallback_team": team_b}),
    )
    .await;
    add_member(&s.server, &s.admin_token, &team_a, &a).await;
    add_member(&s.server, &s.admin_token, &team_b, &b).await;

    // A's only agent is busy with the first customer.
    let (_, mut c1) = customer(&s, "先到客户").await;
    let conv1 = consult_with(&mut c1, Some(&team_a), None, Some("你好")).await;
    assert_eq!(assigned_agent(&mut c1, &conv1).await, a);

    // The second one waits in A, then moves to B and B's agent takes it.
    let (_, mut c2) = customer(&s, "后到客户").await;
    let conv2 = consult_with(&mut c2, Some(&team_a), None, Some("在吗")).await;
    let started = Instant::now();
    let queued = conversation_where(&mut c2, &conv2, "queued in team A", |_| true).await;
    assert_eq!(queued.state, ConversationState::Queued, "{queued:?}");
    assert_eq!(queued.team.as_deref(), Some(team_a.as_str()), "{queued:?}");
    assert!(
        !queued.pending,
        "A can serve (its agent is online): {queued:?}"
    );
    let q = rest_queue(&s.server, &s.admin_token, &team_a).await;
    assert_eq!(queue_ids(&q).0, vec![conv2.clone()], "{q}");

    let moved = conversation_within(&mut c2, SWEEP_WAIT, &conv2, "moved to team B", |i| {
        i.team.as_deref() == Some(team_b.as_str())
    })
    .await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "overflowed before max_wait_s (after {waited:?})"
    );
    assert_eq!(moved.state, ConversationState::Queued, "{moved:?}");
    assert!(!moved.pending, "{moved:?}");
    let served = conversation_within(&mut c2, SWEEP_WAIT, &conv2, "served by B", |i| {
        i.state == ConversationState::Active
    })
    .await;
    assert_eq!(served.agent.as_deref(), Some(b.as_str()), "{served:?}");
    assert_eq!(served.team.as_deref(), Some(team_b.as_str()), "{served:?}");
    conversation_where(&mut agent_b, &conv2, "B's agent has it", |i| {
        i.state == ConversationState::Active
    })
    .await;

    // Not a left message; A's queue is empty; A's agent saw nothing of it.
    let frames = drain_quiet(&mut c2, Duration::from_millis(200)).await;
    assert!(!has_left_message_notice(&frames), "{frames:?}");
    let q = rest_queue(&s.server, &s.admin_token, &team_a).await;
    assert_eq!(queue_ids(&q), (vec![], vec![]), "{q}");
    let a_frames = drain_quiet(&mut agent_a, Duration::from_millis(200)).await;
    assert!(
        !a_frames
            .iter()
            .any(|f| matches!(f, ServerFrame::Conversation { conv } if conv.id == conv2)),
        "{a_frames:?}"
    );

    let history = events(&s.server, &s.admin_token, &conv2).await;
    assert_eq!(
        kinds(&history),
        ["queued", "overflowed", "assigned"],
        "{history:?}"
    );
    assert_eq!(history[0]["team"], json!(team_a));
    assert_eq!(history[1]["team"], json!(team_b));
    assert_eq!(history[2]["team"], json!(team_b));
    assert_eq!(history[2]["agent"], json!(b));
}

/// "with a `fallback_team`: it joins that team's queue ahead of conversations
/// of normal priority": a conversation that overflowed after waiting in A goes
/// ahead of one that started waiting in B after it; its waiting time for B's
/// own rules counts from the overflow.
async fn overflow_goes_ahead_in_the_fallback_queue(backend: Backend) {
    let s = Setup::new(backend).await;
    let (a, _agent_a) = online_staff(&s, "keep-a").await;
    let (b, _agent_b) = online_staff(&s, "keep-b").await;
    let team_b = create_team(
        &s.server,
        &s.admin_token,
        json!({"name": "后备组", "max_concurrency": 1}),
    )
    .await;
    let team_a = create_team(
        &s.server,
        &s.admin_token,
        json!({"name": "一线组", "max_concurrency": 1, "max_wait_s": 1,
               "fallback_team": team_b}),
    )
    .await;
    add_member(&s.server, &s.admin_token, &team_a, &a).await;
    add_member(&s.server, &s.admin_token, &team_b, &b).await;
    // Both agents busy.
    let (_, mut busy_a) = customer(&s, "占线A").await;
    let conv = consult_with(&mut busy_a, Some(&team_a), None, None).await;
    assert_eq!(assigned_agent(&mut busy_a, &conv).await, a);
    let (_, mut busy_b) = customer(&s, "占线B").await;
    let conv = consult_with(&mut busy_b, Some(&team_b), None, None).await;
    assert_eq!(assigned_agent(&mut busy_b, &conv).await, b);

    // X waits in A first; Y starts waiting in B after X.
    let (_, mut x) = customer(&s, "早到X").await;
    let conv_x = consult_with(&mut x, Some(&team_a), None, None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, mut y) = customer(&s, "晚到Y").await;
    let conv_y = consult_with(&mut y, Some(&team_b), None, None).await;
    let q = rest_queue(&s.server, &s.admin_token, &team_a).await;
    let x_since = q["waiting"][0]["since"].as_i64().expect("X waits in A");
    conversation_within(&mut x, SWEEP_WAIT, &conv_x, "X moved to team B", |i| {
        i.team.as_deref() == Some(team_b.as_str())
    })
    .await;
    let q = rest_queue(&s.server, &s.admin_token, &team_b).await;
    assert_eq!(
        queue_ids(&q).0,
        [conv_x.clone(), conv_y.clone()],
        "X waited longer, so it is ahead of Y in B's queue: {q}"
    );
    let moved_since = q["waiting"][0]["since"].as_i64().expect("X waits in B");
    assert!(
        moved_since > x_since,
        "B's clock starts at the overflow: {q}"
    );
}

// ---------------------------------------------------------------------------
// 2. max_wait_s without a fallback team.

async fn max_wait_without_fallback_becomes_left_message(backend: Backend) {
    let s = Setup::new(backend).await;
    let (a, mut agent) = online_staff(&s, "lonely-agent").await;
    let team = create_team(
        &s.server,
        &s.admin_token,
        json!({"name": "单人组", "max_concurrency": 1, "max_wait_s": 1}),
    )
    .await;
    add_member(&s.server, &s.admin_token, &team, &a).await;

    let (_, mut c1) = customer(&s, "占线客户").await;
    let conv1 = consult_with(&mut c1, Some(&team), None, Some("你好")).await;
    assert_eq!(assigned_agent(&mut c1, &conv1).await, a);
    conversation_where(&mut agent, &conv1, "the agent has the first one", |i| {
        i.state == ConversationState::Active
    })
    .await;

    let (_, mut c2) = customer(&s, "等太久的客户").await;
    let conv2 = consult_with(&mut c2, Some(&team), None, Some("有人吗")).await;
    let started = Instant::now();
    let queued = conversation_where(&mut c2, &conv2, "queued", |_| true).await;
    assert_eq!(queued.state, ConversationState::Queued);
    assert!(!queued.pending, "{queued:?}");

    // After max_wait_s: a left message of its own team.
    left_message_notice(&mut c2, SWEEP_WAIT).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "left message before max_wait_s (after {waited:?})"
    );
    let left = conversation_within(
        &mut c2,
        SWEEP_WAIT,
        &conv2,
        "the pending conversation",
        |i| i.pending,
    )
    .await;
    assert_eq!(left.state, ConversationState::Queued, "{left:?}");
    assert_eq!(left.team.as_deref(), Some(team.as_str()), "{left:?}");
    assert_eq!(left.agent, None);
    // The supervisors' queue lists it under `pending`, not `waiting`. (Every
    // 10 s a left message of a team with an online agent rejoins the queue,
    // so look again for a moment if that happened to fall in between.)
    let deadline = Instant::now() + SWEEP_WAIT;
    loop {
        let q = rest_queue(&s.server, &s.admin_token, &team).await;
        let (waiting, pending) = queue_ids(&q);
        if pending == [conv2.clone()] && waiting.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "never listed as pending: {q}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let history = events(&s.server, &s.admin_token, &conv2).await;
    assert_eq!(
        &kinds(&history)[..2],
        ["queued", "left_message"],
        "{history:?}"
    );
    assert_eq!(history[1]["team"], json!(team));
    // The customer can keep writing.
    c2.send_text_message(&conv2, "left-1", "我等一下").await;

    // The agent frees its seat and comes back online: the left message is served.
    ok(&mut agent, |req| ClientFrame::Close {
        req,
        conv: conv1.clone(),
    })
    .await;
    set_presence(&mut agent, PresenceStatus::Offline).await;
    go_online(&mut agent).await;
    let served = conversation_within(
        &mut c2,
        SWEEP_WAIT,
        &conv2,
        "the left message served",
        |i| i.state == ConversationState::Active,
    )
    .await;
    assert_eq!(served.agent.as_deref(), Some(a.as_str()), "{served:?}");
    assert!(!served.pending, "{served:?}");
    let page = agent.sync_after(&conv2, 0, 100).await;
    let bodies: Vec<&str> = page.messages.iter().map(|m| m.body.as_str()).collect();
    assert!(bodies.contains(&"有人吗"), "{bodies:?}");
    assert!(bodies.contains(&"我等一下"), "{bodies:?}");
    let q = rest_queue(&s.server, &s.admin_token, &team).await;
    assert_eq!(queue_ids(&q), (vec![], vec![]), "{q}");
}

// ---------------------------------------------------------------------------
// 3. The skill strategy's skill_fallback_s.

async fn skill_overflow_to_fallback_team(backend: Backend) {
    let s = Setup::new(backend).await;
    let (plain, mut plain_client) = online_staff(&s, "skill-plain").await;
    let (b, mut agent_b) = online_staff(&s, "skill-backup").await;
    let team_b = create_team(&s.server, &s.admin_token, json!({"name": "综合组"})).await;
    let team_a = create_team(
        &s.server,
        &s.admin_token,
        json!({"name": "账务组", "strategy": "skill",
               "skills": [{"name": "billing", "level": 5}],
               "strategy_params": {"skill_widen_s": 100, "skill_fallback_s": 1},
               "fallback_team": team_b}),
    )
    .await;
    add_member(&s.server, &s.admin_token, &team_a, &plain).await;
    add_member(&s.server, &s.admin_token, &team_b, &b).await;

    let (_, mut c) = customer(&s, "账单客户").await;
    let conv = consult_with(&mut c, Some(&team_a), Some("billing"), Some("账单不对")).await;
    let started = Instant::now();
    let queued = conversation_where(&mut c, &conv, "queued in A", |_| true).await;
    assert_eq!(queued.state, ConversationState::Queued);
    assert_eq!(queued.team.as_deref(), Some(team_a.as_str()));
    assert_eq!(queued.topic.as_deref(), Some("billing"));
    assert!(!queued.pending, "{queued:?}");

    let served = conversation_within(&mut c, SWEEP_WAIT, &conv, "served by team B", |i| {
        i.state == ConversationState::Active
    })
    .await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "left A before skill_fallback_s (after {waited:?})"
    );
    assert_eq!(served.agent.as_deref(), Some(b.as_str()), "{served:?}");
    assert_eq!(served.team.as_deref(), Some(team_b.as_str()), "{served:?}");
    conversation_where(&mut agent_b, &conv, "B's agent has it", |i| {
        i.state == ConversationState::Active
    })
    .await;
    let plain_frames = drain_quiet(&mut plain_client, Duration::from_millis(200)).await;
    assert!(
        !plain_frames
            .iter()
            .any(|f| matches!(f, ServerFrame::Conversation { conv: i } if i.id == conv)),
        "the unskilled agent of A was given nothing: {plain_frames:?}"
    );
    let frames = drain_quiet(&mut c, Duration::from_millis(200)).await;
    assert!(!has_left_message_notice(&frames), "{frames:?}");

    let history = events(&s.server, &s.admin_token, &conv).await;
    assert_eq!(
        kinds(&history),
        ["queued", "overflowed", "assigned"],
        "{history:?}"
    );
    assert_eq!(history[1]["team"], json!(team_b));
    assert_eq!(history[2]["agent"], json!(b));
}

// ---------------------------------------------------------------------------
// 4. max_queue.

/// Team A (default, topic "refund", max_queue 1, max_concurrency 1) with its
/// one agent busy and one customer waiting; returns the setup, A, the waiting
/// conversation and the clients to keep open.
async fn full_team(backend: Backend, second_team: bool) -> FullTeam {
    let s = Setup::new(backend).await;
    let (a, agent_a) = online_staff(&s, "full-a").await;
    let team_a = create_team(
        &s.server,
        &s.admin_token,
        json!({"name": "退款组", "default": true, "topics": ["refund"],
               "max_queue": 1, "max_concurrency": 1}),
    )
    .await;
    add_member(&s.server, &s.admin_token, &team_a, &a).await;
    let second = if second_team {
        let (b, agent_b) = online_staff(&s, "full-b").await;
        let team_b = create_team(
            &s.server,
            &s.admin_token,
            json!({"name": "总台", "default": true}),
        )
        .await;
        add_member(&s.server, &s.admin_token, &team_b, &b).await;
        Some((team_b, b, agent_b))
    } else {
        None
    };

    let (_, mut c1) = customer(&s, "第一位").await;
    let conv1 = consult_with(&mut c1, None, Some("refund"), Some("退款")).await;
    assert_eq!(assigned_agent(&mut c1, &conv1).await, a);
    // The first waiting customer still gets into A's queue (0 < max_queue).
    let (_, mut c2) = customer(&s, "第二位").await;
    let conv2 = consult_with(&mut c2, None, Some("refund"), Some("退款")).await;
    let info = conversation_where(&mut c2, &conv2, "queued in A", |_| true).await;
    assert_eq!(info.state, ConversationState::Queued, "{info:?}");
    assert_eq!(info.team.as_deref(), Some(team_a.as_str()), "{info:?}");
    assert!(!info.pending, "{info:?}");
    let frames = drain_quiet(&mut c2, Duration::from_millis(200)).await;
    assert!(!has_left_message_notice(&frames), "{frames:?}");
    let q = rest_queue(&s.server, &s.admin_token, &team_a).await;
    assert_eq!(queue_ids(&q), (vec![conv2.clone()], vec![]), "{q}");
    FullTeam {
        s,
        team_a,
        conv2,
        second,
        _keep: vec![agent_a, c1, c2],
    }
}

struct FullTeam {
    s: Setup,
    team_a: String,
    conv2: String,
    second: Option<(String, String, Client)>,
    _keep: Vec<Client>,
}

async fn max_queue_skips_a_full_team(backend: Backend) {
    let f = full_team(backend, false).await;
    let s = &f.s;
    // A full and no other candidate: a left message of A.
    let (_, mut c3) = customer(s, "第三位").await;
    let conv3 = consult_with(&mut c3, None, Some("refund"), Some("退款")).await;
    left_message_notice(&mut c3, Duration::from_secs(3)).await;
    let info = conversation_where(&mut c3, &conv3, "the left message", |_| true).await;
    assert_eq!(info.state, ConversationState::Queued, "{info:?}");
    assert!(info.pending, "{info:?}");
    assert_eq!(info.team.as_deref(), Some(f.team_a.as_str()), "{info:?}");
    let q = rest_queue(&s.server, &s.admin_token, &f.team_a).await;
    assert_eq!(
        queue_ids(&q),
        (vec![f.conv2.clone()], vec![conv3.clone()]),
        "{q}"
    );
    assert_eq!(
        kinds(&events(&s.server, &s.admin_token, &conv3).await),
        ["left_message"]
    );
    // It stays a left message while A's queue is full (the sweep does not
    // pull it in).
    let frames = drain_quiet(&mut c3, Duration::from_millis(2500)).await;
    assert!(!moved_on(&frames, &conv3), "{frames:?}");
    let q = rest_queue(&s.server, &s.admin_token, &f.team_a).await;
    assert_eq!(queue_ids(&q), (vec![f.conv2.clone()], vec![conv3]), "{q}");
}

async fn max_queue_skips_a_full_team_to_next_candidate(backend: Backend) {
    let mut f = full_team(backend, true).await;
    let (team_b, b, agent_b) = f.second.as_mut().unwrap();
    let s = &f.s;
    // A (by topic) is full; the default team B, next in line, takes it.
    let (_, mut c3) = customer(s, "第三位").await;
    let conv3 = consult_with(&mut c3, None, Some("refund"), Some("退款")).await;
    let info = conversation_where(&mut c3, &conv3, "queued", |_| true).await;
    assert_eq!(info.team.as_deref(), Some(team_b.as_str()), "{info:?}");
    assert!(!info.pending, "{info:?}");
    assert_eq!(assigned_agent(&mut c3, &conv3).await, *b);
    conversation_where(agent_b, &conv3, "B's agent has it", |i| {
        i.state == ConversationState::Active
    })
    .await;
    let frames = drain_quiet(&mut c3, Duration::from_millis(200)).await;
    assert!(!has_left_message_notice(&frames), "{frames:?}");
    let q = rest_queue(&s.server, &s.admin_token, &f.team_a).await;
    assert_eq!(queue_ids(&q), (vec![f.conv2.clone()], vec![]), "{q}");
    assert_eq!(
        kinds(&events(&s.server, &s.admin_token, &conv3).await),
        ["queued", "assigned"]
    );
}

// ---------------------------------------------------------------------------
// 5. Idle auto-close.

async fn idle_conversations_close_automatically(backend: Backend) {
    const IDLE_TEXT: &str = "会话因长时间无消息已自动结束";
    let s = Setup::with(backend, |config| config.limits.idle_close_s = 1).await;
    let (a, mut agent) = online_staff(&s, "idle-agent").await;
    let team = create_team(
        &s.server,
        &s.admin_token,
        json!({"name": "闲置组", "default": true, "max_concurrency": 1}),
    )
    .await;
    add_member(&s.server, &s.admin_token, &team, &a).await;

    // Assigned, then nobody writes.
    let (_, mut c1) = customer(&s, "沉默客户").await;
    let conv1 = consult_with(&mut c1, None, None, None).await;
    assert_eq!(assigned_agent(&mut c1, &conv1).await, a);
    let assigned_at = Instant::now();
    // A second customer waits for the agent's only seat; waiting is never
    // closed this way.
    let (_, mut c2) = customer(&s, "排队客户").await;
    let conv2 = consult_with(&mut c2, None, None, Some("轮到我了吗")).await;
    let queued = conversation_where(&mut c2, &conv2, "queued", |_| true).await;
    assert_eq!(queued.state, ConversationState::Queued);

    let msg = expect_within(&mut c1, SWEEP_WAIT, "the auto-close message", |f| {
        matches!(f, ServerFrame::Message { msg } if msg.conv == conv1 && msg.kind == MessageKind::System
            && msg.body == IDLE_TEXT)
    })
    .await;
    let ServerFrame::Message { msg } = msg else {
        unreachable!()
    };
    assert_eq!(msg.sender.id, "system", "{msg:?}");
    let idle = assigned_at.elapsed();
    assert!(
        idle >= Duration::from_millis(800),
        "closed before idle_close_s (after {idle:?})"
    );
    let closed = conversation_within(&mut c1, SWEEP_WAIT, &conv1, "closed", |i| {
        i.state == ConversationState::Closed
    })
    .await;
    assert_eq!(closed.agent.as_deref(), Some(a.as_str()), "{closed:?}");
    expect_within(
        &mut c1,
        SWEEP_WAIT,
        "rate_request",
        |f| matches!(f, ServerFrame::RateRequest { conv } if *conv == conv1),
    )
    .await;
    conversation_where(&mut agent, &conv1, "the agent sees it closed", |i| {
        i.state == ConversationState::Closed
    })
    .await;
    let history = events(&s.server, &s.admin_token, &conv1).await;
    let last = history.last().unwrap();
    assert_eq!(last["kind"], "closed", "{history:?}");
    assert_eq!(
        last["actor"],
        Value::Null,
        "closed by the server: {history:?}"
    );

    // The seat is free: the waiting customer is served.
    let served = conversation_within(&mut c2, SWEEP_WAIT, &conv2, "the waiting one served", |i| {
        i.state == ConversationState::Active
    })
    .await;
    assert_eq!(served.agent.as_deref(), Some(a.as_str()), "{served:?}");

    // Messages keep a conversation open: 3.2 s of a message every 400 ms
    // spans at least one sweep.
    for i in 0..8 {
        c2.send_text_message(&conv2, &format!("alive-{i}"), "还在")
            .await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(
        !c2.backlog.iter().any(|f| matches!(f,
            ServerFrame::Conversation { conv: i } if i.id == conv2 && i.state == ConversationState::Closed)
            || matches!(f, ServerFrame::RateRequest { .. })),
        "closed although messages kept coming: {:?}",
        c2.backlog
    );
    // Then silence closes it too.
    let silent = Instant::now();
    conversation_within(&mut c2, SWEEP_WAIT, &conv2, "closed once silent", |i| {
        i.state == ConversationState::Closed
    })
    .await;
    assert!(
        silent.elapsed() >= Duration::from_millis(500),
        "{:?}",
        silent.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 6. Batch assignment.

async fn batch_assign_reports_each_item(backend: Backend) {
    let s = Setup::new(backend).await;
    let (x, mut agent_x) = online_staff(&s, "batch-x").await;
    let (y, mut agent_y) = online_staff(&s, "batch-y").await;
    let (sup, sup_token) = s.staff("batch-sup", "supervisor").await;
    let agent_x_token = s.server.token("batch-x", "batch-x-password").await;
    let team_a = create_team(
        &s.server,
        &s.admin_token,
        json!({"name": "前台", "default": true, "max_concurrency": 1}),
    )
    .await;
    let team_b = create_team(
        &s.server,
        &s.admin_token,
        json!({"name": "后台", "max_concurrency": 1}),
    )
    .await;
    add_member(&s.server, &s.admin_token, &team_a, &x).await;
    add_member(&s.server, &s.admin_token, &team_b, &y).await;

    // X is busy with c1; c2 waits; c4 waited and was closed by its customer;
    // c3 waits.
    let (_, mut c1) = customer(&s, "批量1").await;
    let conv1 = consult_with(&mut c1, None, None, Some("一")).await;
    assert_eq!(assigned_agent(&mut c1, &conv1).await, x);
    let (_, mut c2) = customer(&s, "批量2").await;
    let conv2 = consult_with(&mut c2, None, None, Some("二")).await;
    let (_, mut c4) = customer(&s, "批量4").await;
    let conv4 = consult_with(&mut c4, None, None, Some("四")).await;
    ok(&mut c4, |req| ClientFrame::Close {
        req,
        conv: conv4.clone(),
    })
    .await;
    conversation_where(&mut c4, &conv4, "closed", |i| {
        i.state == ConversationState::Closed
    })
    .await;
    let (_, mut c3) = customer(&s, "批量3").await;
    let conv3 = consult_with(&mut c3, None, None, Some("三")).await;
    let q = rest_queue(&s.server, &sup_token, &team_a).await;
    assert_eq!(
        queue_ids(&q),
        (vec![conv2.clone(), conv3.clone()], vec![]),
        "{q}"
    );

    let (status, reply) = s
        .server
        .post(
            "/api/v1/assignments",
            Some(&sup_token),
            json!({"items": [
                {"conv": conv2, "agent": y},
                {"conv": conv3, "agent": y},
                {"conv": "cv_no_such_conversation", "agent": y},
                {"conv": conv4, "agent": y},
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let results = reply["results"].as_array().expect("results");
    assert_eq!(results.len(), 4, "{reply}");
    let expected = [
        (&conv2, None),
        (&conv3, Some("conflict")),
        (&"cv_no_such_conversation".to_string(), Some("not_found")),
        (&conv4, Some("conflict")),
    ];
    for (r, (conv, code)) in results.iter().zip(expected) {
        assert_eq!(r["conv"], json!(conv), "{r}");
        assert_eq!(r["agent"], json!(y), "{r}");
        assert_eq!(r["ok"], json!(code.is_none()), "{r}");
        match code {
            None => assert!(r.get("code").is_none(), "{r}"),
            Some(code) => {
                assert_eq!(r["code"], json!(code), "{r}");
                assert!(!r["message"].as_str().unwrap_or_default().is_empty(), "{r}");
            }
        }
    }

    // Only c2 moved: active with Y, told by a system message.
    let info = conversation_where(&mut c2, &conv2, "active with Y", |i| {
        i.state == ConversationState::Active
    })
    .await;
    assert_eq!(info.agent.as_deref(), Some(y.as_str()), "{info:?}");
    expect(&mut c2, "the assignment message", |f| {
        matches!(f, ServerFrame::Message { msg } if msg.conv == conv2
            && msg.kind == MessageKind::System && msg.body == "主管已将会话分配给客服 batch-y")
    })
    .await;
    conversation_where(&mut agent_y, &conv2, "Y has it", |i| {
        i.state == ConversationState::Active
    })
    .await;
    let q = rest_queue(&s.server, &sup_token, &team_a).await;
    assert_eq!(queue_ids(&q), (vec![conv3.clone()], vec![]), "{q}");
    let c3_frames = drain_quiet(&mut c3, Duration::from_millis(300)).await;
    assert!(!moved_on(&c3_frames, &conv3), "{c3_frames:?}");
    let c4_frames = drain_quiet(&mut c4, Duration::from_millis(100)).await;
    assert!(
        !c4_frames
            .iter()
            .any(|f| matches!(f, ServerFrame::Conversation { conv: i }
            if i.id == conv4 && i.state == ConversationState::Active)),
        "{c4_frames:?}"
    );
    let x_frames = drain_quiet(&mut agent_x, Duration::from_millis(100)).await;
    assert!(
        !x_frames
            .iter()
            .any(|f| matches!(f, ServerFrame::Conversation { conv: i }
            if i.id != conv1 && i.state == ConversationState::Active)),
        "{x_frames:?}"
    );
    let h2 = events(&s.server, &s.admin_token, &conv2).await;
    assert_eq!(kinds(&h2), ["queued", "assigned"], "{h2:?}");
    assert_eq!(h2[1]["agent"], json!(y));
    assert_eq!(h2[1]["actor"], json!(sup));
    assert_eq!(
        kinds(&events(&s.server, &s.admin_token, &conv3).await),
        ["queued"]
    );
    assert_eq!(
        kinds(&events(&s.server, &s.admin_token, &conv4).await),
        ["queued", "closed"]
    );

    // An agent may not; an empty list is refused.
    let (status, reply) = s
        .server
        .post(
            "/api/v1/assignments",
            Some(&agent_x_token),
            json!({"items": [{"conv": conv3, "agent": x}]}),
        )
        .await;
    assert_eq!(status, 403, "{reply}");
    assert_eq!(reply["code"], "forbidden", "{reply}");
    let (status, reply) = s
        .server
        .post(
            "/api/v1/assignments",
            Some(&sup_token),
            json!({"items": []}),
        )
        .await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["code"], "bad_request", "{reply}");
    let too_many: Vec<Value> = (0..201)
        .map(|_| json!({"conv": conv3, "agent": y}))
        .collect();
    let (status, reply) = s
        .server
        .post(
            "/api/v1/assignments",
            Some(&sup_token),
            json!({"items": too_many}),
        )
        .await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["code"], "bad_request", "{reply}");
    // Nothing changed by the refused calls.
    let q = rest_queue(&s.server, &sup_token, &team_a).await;
    assert_eq!(queue_ids(&q), (vec![conv3.clone()], vec![]), "{q}");

    // The error frame of a WebSocket `assign` by an agent, for comparison.
    let refused = agent_x
        .request(|req| ClientFrame::Assign {
            req,
            conv: conv3.clone(),
            agent: x.clone(),
        })
        .await;
    assert_eq!(error_code(&refused), ErrorCode::Forbidden, "{refused:?}");
}
