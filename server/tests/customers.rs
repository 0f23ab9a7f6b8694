//! Customers as staff see them (`GET /api/v1/customers/{id}` and
//! `/customers/{id}/conversations`) and the read-only access to a customer's
//! earlier conversations that an agent who serves or served the customer
//! gets: who may look, paging newest first, bad input, and that nothing
//! writable opens up. Each test runs on SQLite and on PostgreSQL with Redis.

mod common;

use std::time::Duration;

use common::dispatch::*;
use common::{error_code, Backend, Client, Setup, TestServer};
use serde_json::{json, Value};
use switchboard_protocol::{
    ClientFrame, ConversationState, ErrorCode, MessageKind, PresenceStatus, ServerFrame,
};

on_both_backends!(
    a_returning_customer_is_seen_by_the_agents_who_served_it,
    an_agent_who_transferred_a_customer_away_still_sees_its_conversations,
);

async fn get(server: &TestServer, path: &str, token: &str) -> (u16, Value) {
    server.get(path, Some(token)).await
}

fn assert_error(status: u16, body: &Value, want: u16, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["code"], code, "{body}");
}

/// The ids of a page of conversations, in order.
fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {page}"))
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

async fn send_text(c: &mut Client, conv: &str, id: &str, body: &str) -> ServerFrame {
    c.request(|req| ClientFrame::Send {
        req,
        conv: conv.to_string(),
        client_msg_id: id.to_string(),
        kind: MessageKind::Text,
        body: Some(body.to_string()),
        attachment: None,
    })
    .await
}

async fn close(c: &mut Client, conv: &str) {
    ok(c, |req| ClientFrame::Close {
        req,
        conv: conv.to_string(),
    })
    .await;
}

/// A consult by `customer` that `agent` (online, alone) gets; returns the conversation.
async fn served_by(
    customer: &mut Client,
    agent: &mut Client,
    agent_id: &str,
    text: &str,
) -> String {
    let conv = consult_with(customer, None, None, Some(text)).await;
    assert_eq!(assigned_agent(customer, &conv).await, agent_id);
    conversation_where(agent, &conv, "the assignment reaches the agent", |i| {
        i.state == ConversationState::Active
    })
    .await;
    conv
}

/// Uploads a small PNG as `token`; returns the upload id.
async fn upload_png(server: &TestServer, token: &str) -> String {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend((0u8..=255).cycle().take(100));
    let part = reqwest::multipart::Part::bytes(bytes)
        .file_name("快递单.png")
        .mime_str("image/png")
        .unwrap();
    let resp = server
        .http
        .post(server.url("/api/v1/uploads"))
        .bearer_auth(token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .expect("upload request");
    assert_eq!(resp.status().as_u16(), 201);
    let body: Value = resp.json().await.unwrap();
    body["id"].as_str().unwrap().to_string()
}

/// The status of `GET /api/v1/uploads/{id}` for `token`.
async fn upload_status(server: &TestServer, token: &str, id: &str) -> u16 {
    server
        .http
        .get(server.url(&format!("/api/v1/uploads/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .expect("http request")
        .status()
        .as_u16()
}

/// The bodies of a conversation's messages as `token` reads them over REST.
async fn bodies(server: &TestServer, token: &str, conv: &str) -> (u16, Vec<String>) {
    let (status, page) = get(
        server,
        &format!("/api/v1/conversations/{conv}/messages?after=0&limit=200"),
        token,
    )
    .await;
    let list = page["messages"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| m["body"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    (status, list)
}

// ---------------------------------------------------------------------------
// 1. Alice serves a customer, then Bob, then Alice again: Bob sees all three
//    conversations newest first, pages through them, reads Alice's, and can
//    write into none of hers. Carol never served the customer: 404 everywhere.

async fn a_returning_customer_is_seen_by_the_agents_who_served_it(backend: Backend) {
    let s = Setup::new(backend).await;
    let server = &s.server;
    let team = create_team(
        server,
        &s.admin_token,
        json!({"name": "售后", "default": true}),
    )
    .await;
    let (alice, mut alice_c) = online_staff(&s, "alice").await;
    let (bob, bob_token) = s.staff("bob", "agent").await;
    let (_carol, carol_token) = s.staff("carol", "agent").await;
    let (_sup, sup_token) = s.staff("sup", "supervisor").await;
    add_member(server, &s.admin_token, &team, &alice).await;
    add_member(server, &s.admin_token, &team, &bob).await;
    let (cust, cust_token) = server.quick_customer(&s.admin_token, "老顾客").await;
    let mut cust_c = server.client(&cust_token).await;

    // First visit: Alice (Bob is not connected).
    let conv1 = served_by(&mut cust_c, &mut alice_c, &alice, "第一次咨询").await;
    cust_c.send_text_message(&conv1, "c1", "我的快递没到").await;
    let picture = upload_png(server, &cust_token).await;
    let sent = cust_c
        .request(|req| ClientFrame::Send {
            req,
            conv: conv1.clone(),
            client_msg_id: "c-img".into(),
            kind: MessageKind::Image,
            body: None,
            attachment: Some(picture.clone()),
        })
        .await;
    assert!(matches!(sent, ServerFrame::Ok { .. }), "{sent:?}");
    alice_c
        .send_text_message(&conv1, "a1", "您好，我是小李，帮您查")
        .await;
    close(&mut alice_c, &conv1).await;

    // Second visit: Bob (Alice is away).
    set_presence(&mut alice_c, PresenceStatus::Away).await;
    let mut bob_c = server.client(&bob_token).await;
    go_online(&mut bob_c).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let conv2 = served_by(&mut cust_c, &mut bob_c, &bob, "第二次咨询").await;
    bob_c.send_text_message(&conv2, "b1", "我是小王").await;
    close(&mut bob_c, &conv2).await;

    // Third visit: Alice again, still active.
    set_presence(&mut bob_c, PresenceStatus::Away).await;
    set_presence(&mut alice_c, PresenceStatus::Online).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let conv3 = served_by(&mut cust_c, &mut alice_c, &alice, "第三次咨询").await;
    let hers = alice_c.send_text_message(&conv3, "a2", "又见面了").await;

    // A group with the customer: not a service conversation, members only.
    let group = server
        .create_group(&s.admin_token, "老顾客群", &[&cust, &alice])
        .await;

    // The profile, for Bob (served it once) and for a supervisor.
    let created: Vec<i64> = {
        let mut v = Vec::new();
        for conv in [&conv1, &conv2, &conv3] {
            let (status, info) = get(
                server,
                &format!("/api/v1/conversations/{conv}"),
                &s.admin_token,
            )
            .await;
            assert_eq!(status, 200, "{info}");
            v.push(info["created_at"].as_i64().unwrap());
        }
        v
    };
    for token in [&bob_token, &sup_token, &s.admin_token] {
        let (status, p) = get(server, &format!("/api/v1/customers/{cust}"), token).await;
        assert_eq!(status, 200, "{p}");
        assert_eq!(p["id"], cust.as_str());
        assert_eq!(p["name"], "老顾客");
        assert_eq!(p["role"], "customer");
        assert_eq!(p["temporary"], true);
        assert_eq!(p["conversations"], 3, "{p}");
        assert_eq!(p["last_conversation_at"], created[2], "{p}");
        assert!(p["created_at"].as_i64().unwrap() <= created[0], "{p}");
        assert!(p.get("phone").is_none(), "no phone stored: {p}");
    }

    // Newest first, the same for Bob and the supervisor; paging by cursor.
    let newest_first = vec![conv3.clone(), conv2.clone(), conv1.clone()];
    for token in [&bob_token, &sup_token] {
        let (status, all) = get(
            server,
            &format!("/api/v1/customers/{cust}/conversations"),
            token,
        )
        .await;
        assert_eq!(status, 200, "{all}");
        assert_eq!(ids(&all), newest_first);
        assert_eq!(all["next_cursor"], Value::Null);
        assert!(all["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["kind"] == "service"));
        assert_eq!(all["items"][0]["agent"], alice.as_str());
        assert_eq!(all["items"][0]["state"], "active");
        assert_eq!(all["items"][2]["state"], "closed");

        let (status, first) = get(
            server,
            &format!("/api/v1/customers/{cust}/conversations?limit=2"),
            token,
        )
        .await;
        assert_eq!(status, 200, "{first}");
        assert_eq!(ids(&first), newest_first[..2]);
        let cursor = first["next_cursor"]
            .as_str()
            .expect("a next page")
            .to_string();
        let (status, second) = get(
            server,
            &format!("/api/v1/customers/{cust}/conversations?limit=2&cursor={cursor}"),
            token,
        )
        .await;
        assert_eq!(status, 200, "{second}");
        assert_eq!(ids(&second), newest_first[2..]);
        assert_eq!(second["next_cursor"], Value::Null, "{second}");
    }
    // limit is clamped into 1..200 like every list.
    let (status, one) = get(
        server,
        &format!("/api/v1/customers/{cust}/conversations?limit=0"),
        &bob_token,
    )
    .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(ids(&one), newest_first[..1]);
    let (status, many) = get(
        server,
        &format!("/api/v1/customers/{cust}/conversations?limit=5000"),
        &bob_token,
    )
    .await;
    assert_eq!(status, 200, "{many}");
    assert_eq!(ids(&many), newest_first);

    // Bad input: 400 bad_request, nothing changed.
    for query in [
        "limit=abc",
        "limit=1.5",
        "cursor=nonsense",
        "cursor=12",
        "cursor=-1:cv_x",
        "cursor=x:cv_x",
        "cursor=",
    ] {
        let (status, body) = get(
            server,
            &format!("/api/v1/customers/{cust}/conversations?{query}"),
            &bob_token,
        )
        .await;
        assert_error(status, &body, 400, "bad_request");
    }
    let (_, again) = get(
        server,
        &format!("/api/v1/customers/{cust}/conversations"),
        &bob_token,
    )
    .await;
    assert_eq!(ids(&again), newest_first);
    let (_, p) = get(server, &format!("/api/v1/customers/{cust}"), &bob_token).await;
    assert_eq!(p["conversations"], 3);

    // Bob reads Alice's conversations over REST, read only.
    for conv in [&conv1, &conv3] {
        let (status, info) =
            get(server, &format!("/api/v1/conversations/{conv}"), &bob_token).await;
        assert_eq!(status, 200, "{info}");
        assert_eq!(info["last_read_seq"], 0);
        let (status, members) = get(
            server,
            &format!("/api/v1/conversations/{conv}/members"),
            &bob_token,
        )
        .await;
        assert_eq!(status, 200, "{members}");
        assert!(
            !members.to_string().contains(&bob),
            "Bob did not become a member: {members}"
        );
    }
    let (status, list) = bodies(server, &bob_token, &conv1).await;
    assert_eq!(status, 200);
    assert!(
        list.contains(&"您好，我是小李，帮您查".to_string()),
        "{list:?}"
    );
    assert!(list.contains(&"我的快递没到".to_string()), "{list:?}");

    // The picture the customer sent in Alice's conversation: Bob may see it.
    assert_eq!(upload_status(server, &bob_token, &picture).await, 200);

    // And over WebSocket: sync works; send, read, typing and recall do not,
    // and the connection stays open.
    let page = bob_c.sync_after(&conv1, 0, 50).await;
    assert!(page
        .messages
        .iter()
        .any(|m| m.body == "您好，我是小李，帮您查"));
    let page = bob_c.sync_after(&conv3, 0, 50).await;
    assert!(page.messages.iter().any(|m| m.body == "又见面了"));
    let last_seq = page.messages.last().unwrap().seq;
    for conv in [&conv1, &conv3] {
        let reply = send_text(&mut bob_c, conv, "bob-intrudes", "我来插一句").await;
        assert_eq!(error_code(&reply), ErrorCode::NotFound, "{reply:?}");
    }
    let reply = bob_c
        .request(|req| ClientFrame::Read {
            req,
            conv: conv3.clone(),
            seq: last_seq,
        })
        .await;
    assert_eq!(error_code(&reply), ErrorCode::NotFound);
    let reply = bob_c
        .request(|req| ClientFrame::Typing {
            req,
            conv: conv3.clone(),
        })
        .await;
    assert_eq!(error_code(&reply), ErrorCode::NotFound);
    let reply = bob_c
        .request(|req| ClientFrame::Recall {
            req,
            conv: conv3.clone(),
            msg_id: hers.id.clone(),
        })
        .await;
    assert_eq!(error_code(&reply), ErrorCode::NotFound);
    let reply = bob_c.request(|req| ClientFrame::Ping { req }).await;
    assert!(matches!(reply, ServerFrame::Pong { .. }), "{reply:?}");
    let (_, list) = bodies(server, &s.admin_token, &conv3).await;
    assert!(!list.iter().any(|b| b == "我来插一句"), "{list:?}");
    assert!(
        list.contains(&"又见面了".to_string()),
        "not recalled: {list:?}"
    );
    let (_, info) = get(
        server,
        &format!("/api/v1/conversations/{conv3}"),
        &s.admin_token,
    )
    .await;
    assert_eq!(info["last_seq"], last_seq, "nothing was added: {info}");

    // The group stays members-only for Bob.
    let (status, body) = get(
        server,
        &format!("/api/v1/conversations/{group}"),
        &bob_token,
    )
    .await;
    assert_error(status, &body, 404, "not_found");
    let reply = bob_c
        .request(|req| ClientFrame::Sync {
            req,
            conv: group.clone(),
            after: Some(0),
            before: None,
            limit: None,
        })
        .await;
    assert_eq!(error_code(&reply), ErrorCode::NotFound);

    // Carol never served the customer: it looks like an unknown id.
    for path in [
        format!("/api/v1/customers/{cust}"),
        format!("/api/v1/customers/{cust}/conversations"),
        format!("/api/v1/conversations/{conv1}"),
        format!("/api/v1/conversations/{conv1}/messages"),
        "/api/v1/customers/u_nobody".to_string(),
    ] {
        let (status, body) = get(server, &path, &carol_token).await;
        assert_error(status, &body, 404, "not_found");
    }
    assert_eq!(upload_status(server, &carol_token, &picture).await, 404);
    let mut carol_c = server.client(&carol_token).await;
    let reply = carol_c
        .request(|req| ClientFrame::Sync {
            req,
            conv: conv1.clone(),
            after: Some(0),
            before: None,
            limit: None,
        })
        .await;
    assert_eq!(error_code(&reply), ErrorCode::NotFound);

    // Unknown ids and staff ids are 404 even for a supervisor.
    for id in ["u_nobody", bob.as_str(), conv1.as_str()] {
        for path in [
            format!("/api/v1/customers/{id}"),
            format!("/api/v1/customers/{id}/conversations"),
        ] {
            let (status, body) = get(server, &path, &sup_token).await;
            assert_error(status, &body, 404, "not_found");
        }
    }

    // Customers: 403, their own id included.
    let (other, other_token) = server.quick_customer(&s.admin_token, "别的顾客").await;
    for (token, id) in [
        (&cust_token, &cust),
        (&other_token, &cust),
        (&other_token, &other),
    ] {
        for path in [
            format!("/api/v1/customers/{id}"),
            format!("/api/v1/customers/{id}/conversations"),
        ] {
            let (status, body) = get(server, &path, token).await;
            assert_error(status, &body, 403, "forbidden");
        }
    }
    // Without a token: 401.
    let (status, body) = server.get(&format!("/api/v1/customers/{cust}"), None).await;
    assert_error(status, &body, 401, "unauthorized");
    s.server.stop().await;
}

// ---------------------------------------------------------------------------
// 2. Dave transfers a customer to Erin: no longer a member, Dave still sees
//    the customer (from the conversation's history) and reads the
//    conversation; Erin, who has it now, sees it too.

async fn an_agent_who_transferred_a_customer_away_still_sees_its_conversations(backend: Backend) {
    let s = Setup::new(backend).await;
    let server = &s.server;
    let team = create_team(
        server,
        &s.admin_token,
        json!({"name": "一线", "default": true}),
    )
    .await;
    let (dave, mut dave_c) = online_staff(&s, "dave").await;
    let (erin, erin_token) = s.staff("erin", "agent").await;
    add_member(server, &s.admin_token, &team, &dave).await;
    add_member(server, &s.admin_token, &team, &erin).await;
    let (cust, cust_token) = server.quick_customer(&s.admin_token, "转接顾客").await;
    let mut cust_c = server.client(&cust_token).await;
    let conv = served_by(&mut cust_c, &mut dave_c, &dave, "要开发票").await;
    dave_c
        .send_text_message(&conv, "d1", "我帮您转给财务")
        .await;
    let dave_token = server.token("dave", "dave-password").await;

    let mut erin_c = server.client(&erin_token).await;
    go_online(&mut erin_c).await;
    ok(&mut dave_c, |req| ClientFrame::Transfer {
        req,
        conv: conv.clone(),
        to_agent: Some(erin.clone()),
        to_team: None,
        note: None,
    })
    .await;
    conversation_where(&mut erin_c, &conv, "the transfer", |i| {
        i.agent.as_deref() == Some(erin.as_str())
    })
    .await;

    let (_, members) = get(
        server,
        &format!("/api/v1/conversations/{conv}/members"),
        &s.admin_token,
    )
    .await;
    assert!(!members.to_string().contains(&dave), "Dave left: {members}");
    for token in [&dave_token, &erin_token] {
        let (status, p) = get(server, &format!("/api/v1/customers/{cust}"), token).await;
        assert_eq!(status, 200, "{p}");
        assert_eq!(p["conversations"], 1);
        let (status, page) = get(
            server,
            &format!("/api/v1/customers/{cust}/conversations"),
            token,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(ids(&page), vec![conv.clone()]);
        let (status, list) = bodies(server, token, &conv).await;
        assert_eq!(status, 200);
        assert!(list.contains(&"我帮您转给财务".to_string()), "{list:?}");
    }
    // Dave may no longer write into it.
    let reply = send_text(&mut dave_c, &conv, "d2", "还在吗").await;
    assert_eq!(error_code(&reply), ErrorCode::NotFound, "{reply:?}");
    s.server.stop().await;
}
