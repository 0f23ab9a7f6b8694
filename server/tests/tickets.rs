//! Tickets and SLA over real servers and real WebSocket clients: a
//! conversation becomes a ticket with its history; the status flow and its
//! refused moves; customers see their own tickets only; with an SLA of a few
//! seconds the assignee and a supervisor receive the 50 % and 80 % warnings
//! and the breach in order and the escalation group gets its message. Each
//! test runs on SQLite and on PostgreSQL + Redis. Also: auto-close of
//! resolved tickets, configurable warnings, the next-response target,
//! policies by type, reassignment on breach, the type catalogue and
//! assignment by the team's strategy. (Business time across
//! weekends and holidays, and pause/resume, are unit tests in `calendar.rs`.)

mod common;

use std::time::Duration;

use common::{Backend, Client, Setup};
use serde_json::{json, Value};
use switchboard_protocol::{
    ClientFrame, ConversationState, OkBody, PresenceStatus, ServerFrame, SlaKind,
};

on_both_backends!(
    conversation_becomes_a_ticket,
    status_flow_and_notes,
    customers_see_their_own_tickets_only,
    sla_warnings_and_breach_in_order,
    resolved_tickets_close_by_themselves,
    configurable_warnings_and_next_response,
    policies_by_type_and_reassign_on_breach,
    ticket_type_catalogue,
    team_tickets_assigned_by_strategy,
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

/// A team of `strategy` whose members are `agents` (team role agent).
async fn team_with(s: &Setup, name: &str, strategy: &str, agents: &[&str]) -> String {
    let (status, team) = s
        .server
        .post(
            "/api/v1/teams",
            Some(&s.admin_token),
            json!({"name": name, "strategy": strategy, "max_concurrency": 5}),
        )
        .await;
    assert_eq!(status, 201, "{team}");
    let id = team["id"].as_str().unwrap().to_string();
    for a in agents {
        let (status, body) = s
            .server
            .post(
                &format!("/api/v1/teams/{id}/members"),
                Some(&s.admin_token),
                json!({"user": a}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    id
}

fn event_kinds(t: &Value) -> Vec<String> {
    t["events"]
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
        .collect()
}

/// With `ticket_auto_close_s = 1`, a resolved ticket is closed by a job
/// about a second later and everyone concerned is told; a ticket reopened
/// before then stays open, and resolving it again plans a new closing.
async fn resolved_tickets_close_by_themselves(backend: Backend) {
    let s = Setup::with(backend, |c| c.limits.ticket_auto_close_s = 1).await;
    let (_, agent_token) = s.staff("agent-one", "agent").await;
    let (customer, customer_token) = s.server.quick_customer(&s.admin_token, "赵六").await;
    let mut c = s.server.client(&customer_token).await;
    let a = hand_ticket(&s, &agent_token, &customer, json!({})).await;
    let b = hand_ticket(&s, &agent_token, &customer, json!({"title": "第二个"})).await;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    for id in [a, b] {
        let (status, body) = patch(
            &s,
            &format!("/api/v1/tickets/{id}"),
            &agent_token,
            json!({"status": "resolved"}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    // The customer reopens b at once.
    let (status, body) = patch(
        &s,
        &format!("/api/v1/tickets/{b}"),
        &customer_token,
        json!({"status": "processing"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    expect(&mut c, "a closed by itself", |f| {
        matches!(f, ServerFrame::Ticket { ticket } if ticket.id == a && ticket.status == "closed")
    })
    .await;
    let (_, after) = s
        .server
        .get(&format!("/api/v1/tickets/{a}"), Some(&agent_token))
        .await;
    assert_eq!(after["status"], "closed");
    let closing = after["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "status" && e["to"] == "closed")
        .unwrap();
    assert_eq!(closing["actor"], Value::Null, "closed by the system");
    assert!(event_kinds(&after).contains(&"auto_closed:".to_string()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, still) = s
        .server
        .get(&format!("/api/v1/tickets/{b}"), Some(&agent_token))
        .await;
    assert_eq!(still["status"], "processing", "reopened stays open");
    // Resolved again: a new resolution, a new closing.
    let (status, _) = patch(
        &s,
        &format!("/api/v1/tickets/{b}"),
        &agent_token,
        json!({"status": "resolved"}),
    )
    .await;
    assert_eq!(status, 200);
    expect(&mut c, "b closed by itself", |f| {
        matches!(f, ServerFrame::Ticket { ticket } if ticket.id == b && ticket.status == "closed")
    })
    .await;
    s.server.stop().await;
}

/// A policy with warnings at 25 % only and a next-response target of 2 s:
/// after the first response, a customer's note starts the next-response
/// clock; the assignee gets the 25 % warning and the breach (no 50 %/80 %);
/// the next staff answer ends the wait, the miss stays stored; a second wait
/// answered in time is met. Bad thresholds are refused.
async fn configurable_warnings_and_next_response(backend: Backend) {
    let s = Setup::new(backend).await;
    let (agent, agent_token) = s.staff("agent-one", "agent").await;
    let (customer, customer_token) = s.server.quick_customer(&s.admin_token, "钱七").await;
    for bad in [
        json!([80, 50]),
        json!([0]),
        json!([100]),
        json!([10, 20, 30, 40, 50, 60]),
    ] {
        let (status, body) = s
            .server
            .post(
                "/api/v1/sla-policies",
                Some(&s.admin_token),
                json!({"priority": "urgent", "first_response_s": 60, "resolution_s": 60,
                       "warn_at": bad}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
    }
    let (status, policy) = s
        .server
        .post(
            "/api/v1/sla-policies",
            Some(&s.admin_token),
            json!({"priority": "urgent", "first_response_s": 3600, "resolution_s": 3600,
                   "next_response_s": 2, "warn_at": [25]}),
        )
        .await;
    assert_eq!(status, 201, "{policy}");
    assert_eq!(policy["warn_at"], json!([25]));
    assert_eq!(policy["next_response_s"], 2);
    let (_, p) = s
        .server
        .get("/api/v1/sla-policies", Some(&agent_token))
        .await;
    assert_eq!(p["items"][0]["warn_at"], json!([25]));
    let mut a = s.server.client(&agent_token).await;
    let t = hand_ticket(
        &s,
        &agent_token,
        &customer,
        json!({"priority": "urgent", "assignee": agent}),
    )
    .await;
    let id = t["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/tickets/{id}");
    assert_eq!(t["sla"]["next_response"]["used_ms"], 0);
    assert_eq!(t["sla"]["next_response"]["due_at"], Value::Null);
    let notes = format!("{path}/notes");
    let note = |token: &str, body: &str| {
        let (token, body) = (token.to_string(), body.to_string());
        let notes = notes.clone();
        let s = &s;
        async move {
            let (status, n) = s
                .server
                .post(
                    &notes,
                    Some(&token),
                    json!({"body": body, "visibility": "public"}),
                )
                .await;
            assert_eq!(status, 201, "{n}");
        }
    };
    note(&agent_token, "您好，正在处理").await;
    note(&customer_token, "还没好吗？").await;
    let (_, waiting) = s.server.get(&path, Some(&agent_token)).await;
    assert!(
        waiting["sla"]["next_response"]["due_at"].as_i64().is_some(),
        "{waiting}"
    );
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let f = expect(&mut a, "next-response sla events", |f| {
            sla_of(f, &id).is_some()
        })
        .await;
        seen.push(sla_of(&f, &id).unwrap());
    }
    assert_eq!(seen, [SlaKind::Warning, SlaKind::Breach]);
    let (_, after) = s.server.get(&path, Some(&agent_token)).await;
    let kinds = event_kinds(&after);
    assert!(
        kinds.contains(&"sla_warning:next_response:25".to_string()),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&"sla_breach:next_response".to_string()),
        "{kinds:?}"
    );
    assert!(!kinds.iter().any(|k| k.ends_with(":50")), "{kinds:?}");
    assert_eq!(after["sla"]["next_response"]["met"], false);
    assert_eq!(after["sla"]["first_response"]["met"], true);
    assert_eq!(after["escalation_level"], 1);
    // The late answer ends the wait; the miss stays.
    note(&agent_token, "抱歉久等").await;
    let (_, answered) = s.server.get(&path, Some(&agent_token)).await;
    assert_eq!(answered["sla"]["next_response"]["met"], false);
    assert_eq!(answered["sla"]["next_response"]["due_at"], Value::Null);
    // A second wait answered in time.
    note(&customer_token, "好的").await;
    note(&agent_token, "已处理").await;
    let (_, again) = s.server.get(&path, Some(&agent_token)).await;
    assert_eq!(again["sla"]["next_response"]["met"], true, "{again}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, later) = s.server.get(&path, Some(&agent_token)).await;
    assert_eq!(later["escalation_level"], 1, "no second breach: {later}");
    s.server.stop().await;
}

/// A policy for the ticket's type beats the priority-only ones, a team's
/// own beats the general one; a breach with `reassign_on_breach` moves the
/// ticket to the team's other agent with the fewest open tickets.
async fn policies_by_type_and_reassign_on_breach(backend: Backend) {
    let s = Setup::new(backend).await;
    let (one, one_token) = s.staff("agent-one", "agent").await;
    let (two, _) = s.staff("agent-two", "agent").await;
    let (three, _) = s.staff("agent-three", "agent").await;
    let (customer, _) = s.server.quick_customer(&s.admin_token, "孙八").await;
    let team = team_with(&s, "退款组", "least_load", &[&one, &two, &three]).await;
    let policy = |body: Value| {
        let s = &s;
        async move {
            let (status, p) = s
                .server
                .post("/api/v1/sla-policies", Some(&s.admin_token), body)
                .await;
            assert_eq!(status, 201, "{p}");
            p["id"].as_str().unwrap().to_string()
        }
    };
    let general =
        policy(json!({"priority": "high", "first_response_s": 3600, "resolution_s": 3600})).await;
    let by_team = policy(
        json!({"priority": "high", "team": team, "first_response_s": 3600,
                                "resolution_s": 7200}),
    )
    .await;
    let by_type = policy(
        json!({"priority": "high", "type": "退款", "first_response_s": 3600,
                                "resolution_s": 2, "reassign_on_breach": true}),
    )
    .await;
    // agent-three is busy: two open tickets.
    for _ in 0..2 {
        hand_ticket(&s, &one_token, &customer, json!({"assignee": three})).await;
    }
    let cases = [
        (json!({"type": "退款", "team": team}), &by_type),
        (json!({"type": "退款"}), &by_type),
        (json!({"type": "其他", "team": team}), &by_team),
        (json!({"type": "其他"}), &general),
    ];
    let mut refund = None;
    for (extra, want) in cases {
        let mut extra = extra;
        extra["priority"] = json!("high");
        extra["assignee"] = json!(one);
        let t = hand_ticket(&s, &one_token, &customer, extra.clone()).await;
        assert_eq!(t["sla"]["policy"], want.as_str(), "{extra}");
        if refund.is_none() {
            refund = Some(t["id"].as_str().unwrap().to_string());
        }
    }
    let id = refund.unwrap();
    let mut c1 = s.server.client(&one_token).await;
    expect(&mut c1, "breach", |f| {
        sla_of(f, &id) == Some(SlaKind::Breach)
    })
    .await;
    let (_, after) = s
        .server
        .get(&format!("/api/v1/tickets/{id}"), Some(&one_token))
        .await;
    assert_eq!(
        after["assignee"],
        two.as_str(),
        "least-loaded other agent: {after}"
    );
    let moved = after["events"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|e| e["kind"] == "assigned")
        .unwrap();
    assert_eq!(moved["from"], one.as_str());
    assert_eq!(moved["to"], two.as_str());
    assert_eq!(moved["actor"], Value::Null);
    s.server.stop().await;
}

/// Admins keep a catalogue of types; once it has any, new tickets must use
/// an enabled one; disabled types are refused until enabled again.
async fn ticket_type_catalogue(backend: Backend) {
    let s = Setup::new(backend).await;
    let (_, agent_token) = s.staff("agent-one", "agent").await;
    let (customer, customer_token) = s.server.quick_customer(&s.admin_token, "周九").await;
    // Empty catalogue: free text.
    hand_ticket(&s, &agent_token, &customer, json!({"type": "随便"})).await;
    let (status, _) = s
        .server
        .post(
            "/api/v1/ticket-types",
            Some(&agent_token),
            json!({"name": "故障"}),
        )
        .await;
    assert_eq!(status, 403);
    let mut ids = Vec::new();
    for name in ["故障", "咨询"] {
        let (status, t) = s
            .server
            .post(
                "/api/v1/ticket-types",
                Some(&s.admin_token),
                json!({"name": name, "description": "说明"}),
            )
            .await;
        assert_eq!(status, 201, "{t}");
        assert_eq!(t["enabled"], true);
        ids.push(t["id"].as_str().unwrap().to_string());
    }
    let (status, body) = s
        .server
        .post(
            "/api/v1/ticket-types",
            Some(&s.admin_token),
            json!({"name": "故障"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, list) = s
        .server
        .get("/api/v1/ticket-types", Some(&agent_token))
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let (status, _) = s
        .server
        .get("/api/v1/ticket-types", Some(&customer_token))
        .await;
    assert_eq!(status, 403);

    let try_type = |kind: &str| {
        let body = json!({"title": "t", "type": kind, "customer": customer});
        let s = &s;
        let token = agent_token.clone();
        async move { s.server.post("/api/v1/tickets", Some(&token), body).await.0 }
    };
    assert_eq!(try_type("随便").await, 400);
    assert_eq!(try_type("故障").await, 201);
    let path = format!("/api/v1/ticket-types/{}", ids[0]);
    let (status, t) = patch(&s, &path, &agent_token, json!({"enabled": false})).await;
    assert_eq!(status, 403, "{t}");
    let (status, t) = patch(&s, &path, &s.admin_token, json!({"enabled": false})).await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["enabled"], false);
    assert_eq!(try_type("故障").await, 400);
    assert_eq!(try_type("咨询").await, 201);
    let (status, _) = patch(&s, &path, &s.admin_token, json!({"enabled": true})).await;
    assert_eq!(status, 200);
    assert_eq!(try_type("故障").await, 201);
    let (status, _) = patch(
        &s,
        "/api/v1/ticket-types/tty_nope",
        &s.admin_token,
        json!({"enabled": true}),
    )
    .await;
    assert_eq!(status, 404);
    s.server.stop().await;
}

/// A ticket created with a team and no assignee goes to one of the team's
/// agents (never a supervisor member): in turn for a round-robin team, to
/// the one with the fewest open tickets otherwise.
async fn team_tickets_assigned_by_strategy(backend: Backend) {
    let s = Setup::new(backend).await;
    let (a, token) = s.staff("agent-a", "agent").await;
    let (b, _) = s.staff("agent-b", "agent").await;
    let (sup, _) = s.staff("sup-a", "supervisor").await;
    let (customer, _) = s.server.quick_customer(&s.admin_token, "吴十").await;
    let rr = team_with(&s, "轮流组", "round_robin", &[&a, &b]).await;
    let (status, body) = s
        .server
        .post(
            &format!("/api/v1/teams/{rr}/members"),
            Some(&s.admin_token),
            json!({"user": sup, "role": "supervisor"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut order = [a.clone(), b.clone()];
    order.sort();
    let mut got = Vec::new();
    for _ in 0..3 {
        let t = hand_ticket(&s, &token, &customer, json!({"team": rr})).await;
        got.push(t["assignee"].as_str().unwrap().to_string());
    }
    assert_eq!(got, [order[0].clone(), order[1].clone(), order[0].clone()]);
    let (c, _) = s.staff("agent-c", "agent").await;
    let (d, _) = s.staff("agent-d", "agent").await;
    let ll = team_with(&s, "负载组", "least_load", &[&c, &d]).await;
    for _ in 0..2 {
        hand_ticket(&s, &token, &customer, json!({"assignee": c})).await;
    }
    for _ in 0..2 {
        let t = hand_ticket(&s, &token, &customer, json!({"team": ll})).await;
        assert_eq!(t["assignee"], d.as_str());
        let (_, full) = s
            .server
            .get(
                &format!("/api/v1/tickets/{}", t["id"].as_str().unwrap()),
                Some(&token),
            )
            .await;
        let assigned = full["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "assigned")
            .unwrap();
        assert_eq!(assigned["actor"], Value::Null, "by the strategy");
    }
    // A named assignee wins; a team without agents leaves it unassigned.
    let t = hand_ticket(&s, &token, &customer, json!({"team": ll, "assignee": a})).await;
    assert_eq!(t["assignee"], a.as_str());
    let empty = team_with(&s, "空组", "least_load", &[]).await;
    let t = hand_ticket(&s, &token, &customer, json!({"team": empty})).await;
    assert_eq!(t["assignee"], Value::Null);
    s.server.stop().await;
}
