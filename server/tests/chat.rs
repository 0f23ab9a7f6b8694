//! End-to-end chat on one node: an admin creates two agents and a group, the
//! agents exchange messages, resends are idempotent, and a reconnect `sync`s
//! exactly what was missed. Runs on SQLite and on PostgreSQL + Redis.

mod common;

use common::{Backend, Setup};
use switchboard_protocol::ServerFrame;

async fn agents_chat_in_a_group(backend: Backend) {
    let s = Setup::new(backend).await;
    let (alice, alice_token) = s.staff("alice", "agent").await;
    let (bob, bob_token) = s.staff("bob", "agent").await;
    let mut a = s.server.client(&alice_token).await;
    let mut b = s.server.client(&bob_token).await;

    let conv = s
        .server
        .create_group(&s.admin_token, "售后服务群", &[&alice, &bob])
        .await;
    // Both learn about the new group live.
    for c in [&mut a, &mut b] {
        let f = c
            .recv_until(|f| matches!(f, ServerFrame::Conversation { .. }))
            .await;
        let ServerFrame::Conversation { conv: info } = f else {
            unreachable!()
        };
        assert_eq!(info.id, conv);
        assert_eq!(info.title.as_deref(), Some("售后服务群"));
    }

    let m1 = a.send_text_message(&conv, "a-1", "你好，Bob").await;
    assert_eq!(m1.seq, 1);
    let got = b
        .recv_until(|f| matches!(f, ServerFrame::Message { .. }))
        .await;
    let ServerFrame::Message { msg } = got else {
        unreachable!()
    };
    assert_eq!(msg, m1);
    assert_eq!(msg.body, "你好，Bob");

    let m2 = b.send_text_message(&conv, "b-1", "收到 👍").await;
    assert_eq!(m2.seq, 2);
    let ServerFrame::Message { msg } = a
        .recv_until(|f| matches!(f, ServerFrame::Message { .. }))
        .await
    else {
        unreachable!()
    };
    assert_eq!(msg.id, m2.id);

    // A resend with the same client_msg_id returns the original and delivers nothing new.
    let again = a.send_text_message(&conv, "a-1", "你好，Bob").await;
    assert_eq!(again, m1);
    b.expect_silence(std::time::Duration::from_millis(300))
        .await;

    // Bob disconnects; Alice sends three; Bob reconnects and syncs exactly those.
    drop(b);
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(
            a.send_text_message(&conv, &format!("a-offline-{i}"), &format!("离线消息 {i}"))
                .await,
        );
    }
    let mut b = s.server.client(&bob_token).await;
    let listed = b
        .auth
        .as_ref()
        .unwrap()
        .conversations
        .iter()
        .find(|c| c.id == conv)
        .cloned()
        .unwrap();
    assert_eq!(listed.last_seq, 5);
    let page = b.sync_after(&conv, 2, 100).await;
    assert_eq!(page.messages, sent);
    assert!(!page.has_more);
    s.server.stop().await;
}

#[tokio::test]
async fn agents_chat_in_a_group_sqlite() {
    agents_chat_in_a_group(Backend::Sqlite).await;
}

#[tokio::test]
async fn agents_chat_in_a_group_postgres_redis() {
    agents_chat_in_a_group(Backend::PostgresRedis).await;
}
