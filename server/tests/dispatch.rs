//! Dispatch over real servers and real WebSocket clients: consult, queue
//! positions, round robin, closing drains the queue, rating once, the
//! supervisor's watch, and who may do what. Each test runs on SQLite with the
//! in-process engine and on PostgreSQL with the Redis engine.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::dispatch::*;
use common::{error_code, Backend, Setup};
use serde_json::json;
use switchboard_protocol::{
    ClientFrame, ConversationState, ErrorCode, OkBody, PresenceStatus, ServerFrame, WatchTeams,
};

on_both_backends!(done_means_scenario, roles_are_enforced);

/// The admin makes a team with two agents of max concurrency 2; four
/// customers are spread 2/2 by round robin; a fifth waits at position 1 with
/// an estimate; closing one conversation assigns the fifth to that agent
/// within a second; one rating is taken, a second refused; a supervisor's
/// watch shows it all as it happens.
async fn done_means_scenario(backend: Backend) {
    let s = Setup::new(backend).await;
    let (a1, a1_token) = s.staff("agent-one", "agent").await;
    let (a2, a2_token) = s.staff("agent-two", "agent").await;
    let (_sup, sup_token) = s.staff("supervisor-one", "supervisor").await;
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
    for agent in [&a1, &a2] {
        let (status, body) = s
            .server
            .post(
                &format!("/api/v1/teams/{team_id}/members"),
                Some(&s.admin_token),
                json!({"user": agent}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    let mut sup = s.server.client(&sup_token).await;
    let snapshot = match ok(&mut sup, |req| ClientFrame::Watch {
        req,
        teams: WatchTeams::List(vec![team_id.clone()]),
    })
    .await
    {
        OkBody::Watch(w) => w,
        other => panic!("watch answered {other:?}"),
    };
    assert_eq!(snapshot.queues.len(), 1);
    assert_eq!(snapshot.agents.len(), 2);
    assert!(snapshot
        .agents
        .iter()
        .all(|a| a.status == PresenceStatus::Offline && a.capacity == 2));

    let mut agent1 = s.server.client(&a1_token).await;
    let mut agent2 = s.server.client(&a2_token).await;
    go_online(&mut agent1).await;
    go_online(&mut agent2).await;
    expect(&mut sup, "presence of agent one", |f| {
        matches!(f, ServerFrame::Presence { user, status: PresenceStatus::Online, .. } if *user == a1)
    })
    .await;

    let mut customers = Vec::new();
    let mut convs = Vec::new();
    let mut agents = Vec::new();
    for i in 0..4 {
        let (_, token) = s
            .server
            .quick_customer(&s.admin_token, &format!("客户{i}"))
            .await;
        let mut c = s.server.client(&token).await;
        let conv = consult(&mut c).await;
        agents.push(assigned_agent(&mut c, &conv).await);
        convs.push(conv);
        customers.push(c);
    }
    // Round robin in agent-id order: alternating, two each.
    assert_eq!(agents.iter().filter(|a| **a == a1).count(), 2, "{agents:?}");
    assert_eq!(agents.iter().filter(|a| **a == a2).count(), 2, "{agents:?}");
    assert_ne!(agents[0], agents[1]);
    assert_eq!(agents[0], agents[2]);
    // The watcher's `presence` deltas are coalesced (at most one per agent
    // every 100 ms) and end at each agent's latest load: two.
    let mut full: HashSet<String> = HashSet::new();
    while full.len() < 2 {
        if let ServerFrame::Presence {
            user,
            load: Some(load),
            ..
        } = expect(&mut sup, "presence deltas with load 2", |f| {
            matches!(f, ServerFrame::Presence { .. })
        })
        .await
        {
            assert!(load <= 2, "{user} above its capacity: {load}");
            if load == 2 {
                full.insert(user);
            } else {
                full.remove(&user);
            }
        }
    }

    let (_, token5) = s.server.quick_customer(&s.admin_token, "客户5").await;
    let mut c5 = s.server.client(&token5).await;
    let conv5 = consult(&mut c5).await;
    let q = expect(
        &mut c5,
        "queue position",
        |f| matches!(f, ServerFrame::Queue { conv, .. } if *conv == conv5),
    )
    .await;
    match q {
        ServerFrame::Queue {
            position, eta_s, ..
        } => {
            assert_eq!(position, 1);
            assert!(eta_s > 0, "an estimate is given");
        }
        _ => unreachable!(),
    }
    expect(&mut sup, "queue update with the fifth customer", |f| {
        matches!(f, ServerFrame::QueueUpdate { queue } if queue.waiting.iter().any(|w| w.conv == conv5 && w.position == 1))
    })
    .await;

    // The first agent closes its first conversation: the fifth goes to it.
    let closer = agents[0].clone();
    let (closer_client, closed_conv) = if closer == a1 {
        (&mut agent1, convs[0].clone())
    } else {
        (&mut agent2, convs[0].clone())
    };
    ok(closer_client, |req| ClientFrame::Close {
        req,
        conv: closed_conv.clone(),
    })
    .await;
    let started = std::time::Instant::now();
    let got = assigned_agent(&mut c5, &conv5).await;
    assert_eq!(got, closer);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "assigned within a second"
    );

    // The first customer is asked to rate, rates once, and a second is refused.
    let c0 = &mut customers[0];
    expect(
        c0,
        "rate request",
        |f| matches!(f, ServerFrame::RateRequest { conv } if *conv == closed_conv),
    )
    .await;
    ok(c0, |req| ClientFrame::Rate {
        req,
        conv: closed_conv.clone(),
        score: 5,
        comment: Some("很好".into()),
    })
    .await;
    let again = c0
        .request(|req| ClientFrame::Rate {
            req,
            conv: closed_conv.clone(),
            score: 1,
            comment: None,
        })
        .await;
    assert_eq!(error_code(&again), ErrorCode::Conflict);

    // The supervisor saw the close and the new assignment.
    expect(&mut sup, "closed conversation", |f| {
        matches!(f, ServerFrame::Conversation { conv } if conv.id == closed_conv && conv.state == ConversationState::Closed)
    })
    .await;
    expect(&mut sup, "fifth assigned", |f| {
        matches!(f, ServerFrame::Conversation { conv } if conv.id == conv5 && conv.state == ConversationState::Active)
    })
    .await;

    // The assignment history has all five.
    let (status, history) = s
        .server
        .get(
            &format!("/api/v1/assignments?team={team_id}"),
            Some(&sup_token),
        )
        .await;
    assert_eq!(status, 200, "{history}");
    let assigned = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "assigned")
        .count();
    assert_eq!(assigned, 5, "{history}");
}

/// A customer cannot accept, assign or watch; an agent cannot watch or assign.
async fn roles_are_enforced(backend: Backend) {
    let s = Setup::new(backend).await;
    let (agent, agent_token) = s.staff("agent-r", "agent").await;
    let (status, team) = s
        .server
        .post(
            "/api/v1/teams",
            Some(&s.admin_token),
            json!({"name": "T", "default": true}),
        )
        .await;
    assert_eq!(status, 201, "{team}");
    let (_, token) = s.server.quick_customer(&s.admin_token, "c").await;
    let mut c = s.server.client(&token).await;
    let conv = consult(&mut c).await;
    let mut a = s.server.client(&agent_token).await;
    let all = || WatchTeams::All(switchboard_protocol::AllTeams::All);
    let as_customer = [
        ClientFrame::Accept {
            req: Some(90),
            conv: conv.clone(),
        },
        ClientFrame::Assign {
            req: Some(91),
            conv: conv.clone(),
            agent: agent.clone(),
        },
        ClientFrame::Watch {
            req: Some(92),
            teams: all(),
        },
        ClientFrame::Presence {
            req: Some(95),
            status: PresenceStatus::Online,
        },
    ];
    let as_agent = [
        ClientFrame::Watch {
            req: Some(93),
            teams: all(),
        },
        ClientFrame::Assign {
            req: Some(94),
            conv: conv.clone(),
            agent: agent.clone(),
        },
    ];
    for (client, frames) in [(&mut c, &as_customer[..]), (&mut a, &as_agent[..])] {
        for frame in frames {
            let req = frame.req().unwrap();
            client.send_frame(frame).await;
            let reply = client.reply(req).await;
            assert_eq!(error_code(&reply), ErrorCode::Forbidden, "{frame:?}");
        }
    }
    // The connections stay usable.
    go_online(&mut a).await;
    let r = c.request(|req| ClientFrame::Ping { req }).await;
    assert!(matches!(r, ServerFrame::Pong { .. }));
}
