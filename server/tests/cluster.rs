//! Several nodes behaving as one: two servers sharing PostgreSQL and Redis
//! (and, without Redis, two servers sharing a SQLite file on the in-process
//! bus) deliver to each other's clients, keep `seq` gapless when both take
//! sends for one conversation, and hold idempotency across nodes.

mod common;

use std::collections::BTreeSet;

use common::{Backend, Cluster, Role, ADMIN, ADMIN_PASSWORD};
use switchboard_protocol::ServerFrame;

async fn two_nodes_act_as_one(backend: Backend) {
    let cluster = Cluster::new(backend).await;
    cluster.seed_user(ADMIN, ADMIN_PASSWORD, Role::Admin).await;
    let a = cluster.start("node-a").await;
    let b = cluster.start("node-b").await;
    let admin = a.token(ADMIN, ADMIN_PASSWORD).await;
    let alice = a.create_staff(&admin, "alice", "agent").await;
    let bob = a.create_staff(&admin, "bob", "agent").await;
    // Tokens from node A work on node B: the nodes share the signing key.
    let alice_token = b.token("alice", "alice-password").await;
    let bob_token = a.token("bob", "bob-password").await;
    let mut on_a = a.client(&alice_token).await;
    let mut on_b = b.client(&bob_token).await;

    // The group is created through node A; Bob on node B hears of it live.
    let conv = a.create_group(&admin, "跨节点群", &[&alice, &bob]).await;
    let ServerFrame::Conversation { conv: info } = on_b
        .recv_until(|f| matches!(f, ServerFrame::Conversation { .. }))
        .await
    else {
        unreachable!()
    };
    assert_eq!(info.id, conv);

    // A message sent on A reaches B, and the other way round.
    let m1 = on_a.send_text_message(&conv, "x-1", "从节点 A 发出").await;
    let ServerFrame::Message { msg } = on_b
        .recv_until(|f| matches!(f, ServerFrame::Message { .. }))
        .await
    else {
        unreachable!()
    };
    assert_eq!(msg, m1);
    let m2 = on_b.send_text_message(&conv, "y-1", "从节点 B 回复").await;
    let ServerFrame::Message { msg } = on_a
        .recv_until(|f| matches!(f, ServerFrame::Message { .. }))
        .await
    else {
        unreachable!()
    };
    assert_eq!(msg, m2);

    // Alice resends x-1 through node B: the original comes back, nothing new.
    let mut alice_on_b = b.client(&alice_token).await;
    let again = alice_on_b
        .send_text_message(&conv, "x-1", "从节点 A 发出")
        .await;
    assert_eq!(again, m1);

    // Both nodes take sends for the same conversation at once: seq stays gapless.
    let (ra, rb) = tokio::join!(
        async {
            let mut seqs = Vec::new();
            for i in 0..25 {
                seqs.push(
                    on_a.send_text_message(&conv, &format!("a-{i}"), "并发 A")
                        .await
                        .seq,
                );
            }
            seqs
        },
        async {
            let mut seqs = Vec::new();
            for i in 0..25 {
                seqs.push(
                    on_b.send_text_message(&conv, &format!("b-{i}"), "并发 B")
                        .await
                        .seq,
                );
            }
            seqs
        }
    );
    let all: BTreeSet<i64> = ra.iter().chain(rb.iter()).copied().collect();
    assert_eq!(all.len(), 50, "no seq assigned twice");
    assert_eq!(all, (3..=52).collect::<BTreeSet<i64>>(), "gapless");
    let page = on_b.sync_after(&conv, 0, 200).await;
    let seqs: Vec<i64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=52).collect::<Vec<_>>());

    // Every message sent on A reached Bob on B as a live event (25 from Alice).
    let mut live_from_a = BTreeSet::new();
    while live_from_a.len() < 25 {
        let f = on_b
            .recv_until(|f| matches!(f, ServerFrame::Message { msg } if msg.sender.id == alice))
            .await;
        if let ServerFrame::Message { msg } = f {
            live_from_a.insert(msg.seq);
        }
    }
    assert!(live_from_a.iter().all(|s| ra.contains(s)));

    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn two_nodes_on_postgres_and_redis_act_as_one() {
    two_nodes_act_as_one(Backend::PostgresRedis).await;
}

#[tokio::test]
async fn two_nodes_on_one_sqlite_file_and_the_in_process_bus_act_as_one() {
    two_nodes_act_as_one(Backend::Sqlite).await;
}
