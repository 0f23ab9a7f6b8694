//! Tickets and SLA over real servers and real WebSocket clients: a
//! conversation becomes a ticket with its history; the status flow and its
//! refused moves; customers see their own tickets only; with an SLA of a few
//! seconds the assignee and a supervisor receive the 50 % and 80 % warnings
//! and the breach in order and the escalation group gets its message. Each
//! test runs on SQLite and on PostgreSQL + Redis. (Business time across
//! weekends and holidays, and pause/resume, are unit tests in `calendar.rs`.)

mod common;

use std::time::Duration;

use common::{Backend, Client, Setup};
use serde_json::{json, Value};
use switchboard_protocol::{
    ClientFrame, ConversationState, OkBody, PresenceStatus, ServerFrame, SlaKind,
};

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::PostgresRedis).await;
                }
            )*
        }
    };
}

on_both_backends!(
    conversation_becomes_a_ticket,
    status_flow_and_notes,
    customers_see_their_own_tickets_only,
    sla_warnings_and_breach_in_order,
);

async fn expect(c: &mut Client, what: &str, pred: impl FnMut(&ServerFrame) -> bool) -> ServerFrame {
    tokio::time::timeout(Duration::from_secs(15), c.recv_until(pred))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn ok(c: &mut Client, frame: impl FnOnce(Option<u64>) -> ClientFrame) -> OkBody {
    match c.request(frame).await {
        ServerFrame::Ok { body, .. } => body,
        other => panic!("expected ok, got {other:?}"),
    }
}

async fn patch(s: &Setup, path: &str, token: &str, body: Value) -> (u16, Value) {
    let resp = s
        .server
        .http
        .patch(s.server.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("http request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A ticket made by hand by `staff_token` for `customer`.
async fn hand_ticket(s: &Setup, staff_token: &str, customer: &str, extra: Value) -> Value {
    let mut body = json!({
        "title": "打印机无法连接",
        "description": "客户反映打印机无法连接网络",
        "type": "故障",
        "priority": "medium",
        "customer": customer,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, t) = s
        .server
        .post("/api/v1/tickets", Some(staff_token), body)
        .await;
    assert_eq!(status, 201, "{t}");
    t
}

/// A customer consults, an agent is assigned; the agent turns the
/// conversation into a ticket that carries the conversation, the customer,
/// the team and the time already waited; the customer is told and can read
/// the ticket and, through its transcript link, the history.
async fn conversation_becomes_a_ticket(backend: Backend) {
    let s = Setup::new(backend).await;
    let (agent, agent_token) = s.staff("agent-one", "agent").await;
    let (status, team) = s
        .server
        .post(
            "/api/v1/teams",
            Some(&s.admin_token),
            json!({"name": "售后服务", "strategy": "round_robin", "max_concurrency": 2, "default": true}),
        )
        .await;
    assert_eq!(status, 201, "{team}");
    let team_id = team["id"].as_str().unwrap().to_string();
    let (status, body) = s
        .server
        .post(
            &format!("/api/v1/teams/{team_id}/members"),
            Some(&s.admin_token),
            json!({"user": agent}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // A policy for high priority: the ticket shows its clock.
    let (status, policy) = s
        .server
        .post(
            "/api/v1/sla-policies",
            Some(&s.admin_token),
            json!({"priority": "high", "first_response_s": 3600, "resolution_s": 86400}),
        )
        .await;
    assert_eq!(status, 201, "{policy}");

    let mut a = s.server.client(&agent_token).await;
    ok(&mut a, |req| ClientFrame::Presence {
        req,
        status: PresenceStatus::Online,
    })
    .await;
    let (customer, customer_token) = s.server.quick_customer(&s.admin_token, "张三").await;
    let mut c = s.server.client(&customer_token).await;
    let conv = match ok(&mut c, |req| ClientFrame::Consult {
        req,
        team: None,
        topic: None,
        text: Some("我的订单一直没有发货".into()),
    })
    .await
    {
        OkBody::Consulted { conv } => conv,
        other => panic!("consult answered {other:?}"),
    };
    expect(&mut c, "assignment", |f| {
        matches!(f, ServerFrame::Conversation { conv: info }
            if info.id == conv && info.state == ConversationState::Active)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let (status, t) = s
        .server
        .post(
            &format!("/api/v1/conversations/{conv}/ticket"),
            Some(&agent_token),
            json!({"title": "订单未发货", "type": "物流", "priority": "high", "assignee": agent}),
        )
        .await;
    assert_eq!(status, 201, "{t}");
    let id = t["id"].as_str().unwrap().to_string();
    assert_eq!(t["conversation"], conv.as_str());
    assert_eq!(t["customer"], customer.as_str());
    assert_eq!(t["team"], team_id.as_str());
    assert_eq!(t["assignee"], agent.as_str());
    assert_eq!(t["status"], "open");
    assert_eq!(t["priority"], "high");
    assert_eq!(
        t["transcript"],
        format!("/api/v1/conversations/{conv}/messages").as_str()
    );
    let used = t["sla"]["resolution"]["used_ms"].as_i64().unwrap();
    assert!(used >= 50, "the time already waited counts: {t}");
    assert_eq!(t["sla"]["resolution"]["target_s"], 86400);
    assert!(t["sla"]["first_response"]["remaining_ms"].as_i64().unwrap() <= 3_600_000 - 50);
    assert_eq!(t["sla"]["paused"], false);

    let f = expect(
        &mut c,
        "ticket event for the customer",
        |f| matches!(f, ServerFrame::Ticket { ticket } if ticket.id == id),
    )
    .await;
    let ServerFrame::Ticket { ticket } = f else {
        unreachable!()
    };
    assert_eq!(ticket.status, "open");
    assert_eq!(ticket.customer, customer);

    let (status, mine) = s
        .server
        .get(&format!("/api/v1/tickets/{id}"), Some(&customer_token))
        .await;
    assert_eq!(status, 200, "{mine}");
    let created = &mine["events"][0];
    assert_eq!(created["kind"], "created");
    assert_eq!(created["from"], conv.as_str());
    let (status, history) = s
        .server
        .get(mine["transcript"].as_str().unwrap(), Some(&customer_token))
        .await;
    assert_eq!(status, 200, "{history}");
    assert!(
        history.to_string().contains("我的订单一直没有发货"),
        "{history}"
    );
    // A group is no service conversation.
    let group = s.server.create_group(&agent_token, "内部群", &[]).await;
    let (status, body) = s
        .server
        .post(
            &format!("/api/v1/conversations/{group}/ticket"),
            Some(&agent_token),
            json!({"title": "x", "type": "y"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // Customers cannot make tickets.
    let (status, body) = s
        .server
        .post(
            &format!("/api/v1/conversations/{conv}/ticket"),
            Some(&customer_token),
            json!({"title": "x", "type": "y"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    s.server.stop().await;
}

/// open → processing → pending_confirmation → resolved → closed → reopened,
/// each stored with its time and announced; moves outside the flow are
/// `conflict`; notes are internal or public, and the customer sees the
/// public ones only; the clock pauses while pending confirmation.
async fn status_flow_and_notes(backend: Backend) {
    let s = Setup::new(backend).await;
    let (agent, agent_token) = s.staff("agent-one", "agent").await;
    let (customer, customer_token) = s.server.quick_customer(&s.admin_token, "李四").await;
    for priority in ["medium", "urgent"] {
        let (status, _) = s
            .server
            .post(
                "/api/v1/sla-policies",
                Some(&s.admin_token),
                json!({"priority": priority, "first_response_s": 3600, "resolution_s": 7200}),
            )
            .await;
        assert_eq!(status, 201);
    }
    let t = hand_ticket(&s, &agent_token, &customer, json!({})).await;
    let id = t["id"].as_str().unwrap().to_string();
    assert_eq!(t["created_by"], agent.as_str());
    let path = format!("/api/v1/tickets/{id}");
    let mut c = s.server.client(&customer_token).await;

    // Refused: skipping ahead or going back to open.
    for to in ["pending_confirmation", "closed", "open"] {
        let (status, body) = patch(&s, &path, &agent_token, json!({"status": to})).await;
        assert_eq!(status, 409, "open → {to}: {body}");
        assert_eq!(body["code"], "conflict");
    }
    let (status, body) = patch(&s, &path, &agent_token, json!({"status": "bogus"})).await;
    assert_eq!(status, 400, "{body}");

    let flow = [
        "processing",
        "pending_confirmation",
        "resolved",
        "closed",
        "processing",
    ];
    for to in flow {
        let (status, body) = patch(&s, &path, &agent_token, json!({"status": to})).await;
        assert_eq!(status, 200, "→ {to}: {body}");
        assert_eq!(body["status"], to);
        let paused = to != "processing";
        assert_eq!(body["sla"]["paused"], paused, "→ {to}: {body}");
        expect(&mut c, "ticket event", |f| {
            matches!(f, ServerFrame::Ticket { ticket } if ticket.id == id && ticket.status == to)
        })
        .await;
    }
    let (status, body) = patch(&s, &path, &agent_token, json!({"status": "closed"})).await;
    assert_eq!(status, 409, "processing → closed: {body}");

    // Transfer, priority, and who may escalate.
    let (other, _) = s.staff("agent-two", "agent").await;
    let (status, body) = patch(
        &s,
        &path,
        &agent_token,
        json!({"assignee": other, "priority": "urgent"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["assignee"], other.as_str());
    let (status, _) = patch(&s, &path, &agent_token, json!({"escalation_level": 2})).await;
    assert_eq!(status, 403);
    let (status, body) = patch(&s, &path, &s.admin_token, json!({"escalation_level": 2})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["escalation_level"], 2);
    // Customers may not change the priority.
    let (status, _) = patch(&s, &path, &customer_token, json!({"priority": "low"})).await;
    assert_eq!(status, 403);

    // Notes.
    let notes = format!("{path}/notes");
    let (status, n) = s
        .server
        .post(
            &notes,
            Some(&agent_token),
            json!({"body": "内部：需要联系仓库"}),
        )
        .await;
    assert_eq!(status, 201, "{n}");
    assert_eq!(n["visibility"], "internal");
    let (status, n) = s
        .server
        .post(
            &notes,
            Some(&agent_token),
            json!({"body": "您好，我们正在处理", "visibility": "public"}),
        )
        .await;
    assert_eq!(status, 201, "{n}");
    let (status, n) = s
        .server
        .post(&notes, Some(&customer_token), json!({"body": "谢谢"}))
        .await;
    assert_eq!(status, 201, "{n}");
    assert_eq!(n["visibility"], "public");

    let (_, staff_view) = s.server.get(&path, Some(&agent_token)).await;
    assert_eq!(staff_view["notes"].as_array().unwrap().len(), 3);
    assert_eq!(staff_view["sla"]["first_response"]["met"], true);
    let (_, mine) = s.server.get(&path, Some(&customer_token)).await;
    let bodies: Vec<&str> = mine["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["您好，我们正在处理", "谢谢"]);
    // The history: every status change with its time, in order.
    let statuses: Vec<&str> = staff_view["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "status")
        .map(|e| {
            assert!(e["at"].as_i64().unwrap() > 0);
            e["to"].as_str().unwrap()
        })
        .collect();
    assert_eq!(statuses, flow);
    assert!(mine["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["kind"] != "escalated" && e["to"] != "internal"));

    // The customer confirms: pending_confirmation → resolved.
    let (status, _) = patch(
        &s,
        &path,
        &agent_token,
        json!({"status": "pending_confirmation"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = patch(&s, &path, &customer_token, json!({"status": "resolved"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sla"]["resolution"]["met"], true);
    s.server.stop().await;
}

/// Another customer's ticket does not exist for a customer: not readable,
/// not commentable, not changeable, not listed.
async fn customers_see_their_own_tickets_only(backend: Backend) {
    let s = Setup::new(backend).await;
    let (_, agent_token) = s.staff("agent-one", "agent").await;
    let (alice, alice_token) = s.server.quick_customer(&s.admin_token, "甲").await;
    let (bob, bob_token) = s.server.quick_customer(&s.admin_token, "乙").await;
    let ta = hand_ticket(&s, &agent_token, &alice, json!({})).await;
    let tb = hand_ticket(&s, &agent_token, &bob, json!({"title": "乙的工单"})).await;
    let a_id = ta["id"].as_str().unwrap();
    let path = format!("/api/v1/tickets/{a_id}");

    let (status, body) = s.server.get(&path, Some(&bob_token)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "not_found");
    let (status, _) = s
        .server
        .post(
            &format!("{path}/notes"),
            Some(&bob_token),
            json!({"body": "偷看"}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = patch(&s, &path, &bob_token, json!({"status": "processing"})).await;
    assert_eq!(status, 404);
    let (status, body) = s.server.get(&path, Some(&alice_token)).await;
    assert_eq!(status, 200, "{body}");

    // Bob lists his own only, whatever filter he passes.
    let (status, list) = s
        .server
        .get(
            &format!("/api/v1/tickets?customer={alice}"),
            Some(&bob_token),
        )
        .await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [tb["id"].as_str().unwrap()]);
    // Staff filter and page.
    let (_, list) = s
        .server
        .get(
            &format!("/api/v1/tickets?customer={alice}"),
            Some(&agent_token),
        )
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (_, page) = s
        .server
        .get("/api/v1/tickets?limit=1&status=open", Some(&agent_token))
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let (_, page2) = s
        .server
        .get(
            &format!("/api/v1/tickets?limit=1&status=open&cursor={cursor}"),
            Some(&agent_token),
        )
        .await;
    assert_eq!(page2["items"].as_array().unwrap().len(), 1);
    assert_ne!(page2["items"][0]["id"], page["items"][0]["id"]);
    // Customers cannot create tickets by hand.
    let (status, _) = s
        .server
        .post(
            "/api/v1/tickets",
            Some(&bob_token),
            json!({"title": "x", "type": "y", "customer": bob}),
        )
        .await;
    assert_eq!(status, 403);
    s.server.stop().await;
}

fn sla_of(f: &ServerFrame, id: &str) -> Option<SlaKind> {
    match f {
        ServerFrame::Sla { ticket, kind, .. } if ticket == id => Some(*kind),
        _ => None,
    }
}

/// Resolution target 4 s: the assignee and a supervisor receive the 50 %
/// (2 s) and 80 % (3.2 s) warnings and the breach (4 s) in that order, the
/// escalation group gets a message naming the ticket, the escalation level
/// goes up and the target is stored as missed.
async fn sla_warnings_and_breach_in_order(backend: Backend) {
    let s = Setup::new(backend).await;
    let (agent, agent_token) = s.staff("agent-one", "agent").await;
    let (_sup, sup_token) = s.staff("supervisor-one", "supervisor").await;
    let (customer, _) = s.server.quick_customer(&s.admin_token, "王五").await;
    let group = s
        .server
        .create_group(&sup_token, "升级处理群", &[agent.as_str()])
        .await;
    let (status, policy) = s
        .server
        .post(
            "/api/v1/sla-policies",
            Some(&s.admin_token),
            json!({"priority": "urgent", "first_response_s": 3600, "resolution_s": 4,
                   "escalation_group": group}),
        )
        .await;
    assert_eq!(status, 201, "{policy}");
    let mut a = s.server.client(&agent_token).await;
    let mut v = s.server.client(&sup_token).await;
    let t = hand_ticket(
        &s,
        &sup_token,
        &customer,
        json!({"priority": "urgent", "assignee": agent}),
    )
    .await;
    let id = t["id"].as_str().unwrap().to_string();
    let due = t["sla"]["resolution"]["due_at"].as_i64().unwrap();
    assert!(due > t["created_at"].as_i64().unwrap());

    for (who, c) in [("assignee", &mut a), ("supervisor", &mut v)] {
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let f = expect(c, &format!("sla events for the {who}"), |f| {
                sla_of(f, &id).is_some()
            })
            .await;
            seen.push(sla_of(&f, &id).unwrap());
        }
        assert_eq!(
            seen,
            [SlaKind::Warning, SlaKind::Warning, SlaKind::Breach],
            "{who}"
        );
    }
    let f = expect(
        &mut a,
        "the escalation group's message",
        |f| matches!(f, ServerFrame::Message { msg } if msg.conv == group),
    )
    .await;
    let ServerFrame::Message { msg } = f else {
        unreachable!()
    };
    assert!(msg.body.contains(&id), "{}", msg.body);

    let (_, after) = s
        .server
        .get(&format!("/api/v1/tickets/{id}"), Some(&sup_token))
        .await;
    assert_eq!(after["escalation_level"], 1, "{after}");
    assert_eq!(after["sla"]["resolution"]["met"], false);
    assert!(after["sla"]["resolution"]["remaining_ms"].as_i64().unwrap() <= 0);
    assert_eq!(after["sla"]["first_response"]["met"], Value::Null);
    let kinds: Vec<String> = after["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["kind"].as_str().unwrap(),
                e["to"].as_str().unwrap_or("")
            )
        })
        .collect();
    for k in [
        "sla_warning:resolution:50",
        "sla_warning:resolution:80",
        "sla_breach:resolution",
        "escalated:1",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
    }
    s.server.stop().await;
}
