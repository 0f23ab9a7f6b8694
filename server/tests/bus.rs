//! Bus conformance: the same bodies run against the in-process network (two
//! `LocalBus` nodes on one `LocalNetwork`) and Redis pub/sub (two `RedisBus`
//! nodes sharing a unique channel prefix). A message published on node A
//! reaches node B once, byte for byte and in order, and never comes back to A.
//! Redis-only tests cover what the in-process bus cannot lose: the subscriber
//! reconnecting after Redis drops it, a Redis that is not there at all (publish
//! never blocks, drops are counted), the wire encoding on the channel, and a
//! whole server that keeps acking sends while its bus is unreachable.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Backend, Cluster, TestServer, ADMIN, ADMIN_PASSWORD};
use futures_util::StreamExt;
use switchboard_protocol::ServerFrame;
use switchboard_server::bus::local::LocalNetwork;
use switchboard_server::bus::redis::RedisBus;
use switchboard_server::bus::{self, Bus, BusMessage, Envelope, Exclude, Target};
use switchboard_server::config::{Config, ServiceUrl};
use switchboard_server::metrics::Metrics;
use switchboard_server::util::now_ms;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const WAIT: Duration = Duration::from_secs(10);
/// The conversation id of probe messages, which `recv` skips.
const PROBE: &str = "__probe__";
/// A frame with Chinese text, an emoji, an escaped newline and a raw one.
const CHINESE_FRAME: &str =
    "{\"type\":\"message\",\"msg\":{\"conv\":\"cv_群聊\",\"body\":\"你好，世界 🌏\\n第二行\"}}\n尾巴";

#[derive(Debug, Clone, Copy)]
enum Kind {
    Local,
    Redis,
}

struct Node {
    bus: Bus,
    id: String,
    metrics: Arc<Metrics>,
    rx: mpsc::UnboundedReceiver<BusMessage>,
}

/// Two started nodes; dropping it stops their tasks.
struct Pair {
    a: Node,
    b: Node,
    prefix: String,
    cancel: CancellationToken,
    _tracker: TaskTracker,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn unique_prefix() -> String {
    format!("sbbus_{}", uuid::Uuid::now_v7().simple())
}

fn start(
    bus: Bus,
    id: &str,
    metrics: Arc<Metrics>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Node {
    let (tx, rx) = mpsc::unbounded_channel();
    bus.start(
        Arc::new(move |msg| {
            let _ = tx.send(msg);
        }),
        tracker,
        cancel.clone(),
    );
    Node {
        bus,
        id: id.to_string(),
        metrics,
        rx,
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two nodes of the given kind, subscribed, with a probe seen A → B.
async fn pair(kind: Kind) -> Pair {
    match kind {
        Kind::Local => {
            let network = LocalNetwork::new();
            let make = |id: &str| {
                let metrics = Arc::new(Metrics::new(id));
                (Bus::Local(network.bus(id, metrics.clone())), metrics)
            };
            started(make("node-a"), make("node-b"), unique_prefix()).await
        }
        Kind::Redis => redis_pair(&common::require_redis().await).await,
    }
}

async fn redis_pair(url: &str) -> Pair {
    let prefix = unique_prefix();
    let make = |id: &str| {
        let metrics = Arc::new(Metrics::new(id));
        let bus = RedisBus::new(url, &prefix, id, metrics.clone()).expect("redis bus");
        (Bus::Redis(bus), metrics)
    };
    started(make("node-a"), make("node-b"), prefix.clone()).await
}

async fn started(a: (Bus, Arc<Metrics>), b: (Bus, Arc<Metrics>), prefix: String) -> Pair {
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let mut pair = Pair {
        a: start(a.0, "node-a", a.1, &tracker, &cancel),
        b: start(b.0, "node-b", b.1, &tracker, &cancel),
        prefix,
        cancel,
        _tracker: tracker,
    };
    wait_until("node A is subscribed", || pair.a.bus.is_connected()).await;
    wait_until("node B is subscribed", || pair.b.bus.is_connected()).await;
    probe(&pair.a, &mut pair.b).await;
    pair
}

fn message(origin: &str, envelope: Envelope) -> BusMessage {
    BusMessage {
        origin: origin.to_string(),
        sent_at: now_ms(),
        envelope,
    }
}

fn deliver(origin: &str, frame: &str) -> BusMessage {
    message(
        origin,
        Envelope::Deliver {
            target: Target::Conv("cv_1".into()),
            exclude: Exclude::Nobody,
            frame: Utf8Bytes::from(frame.to_string()),
        },
    )
}

fn is_probe(msg: &BusMessage) -> bool {
    matches!(&msg.envelope, Envelope::MembersAdded { conv, .. } if conv == PROBE)
}

/// Publishes probes from `from` until one reaches `to`: the publisher has
/// connected and the subscription is live end to end.
async fn probe(from: &Node, to: &mut Node) {
    let deadline = Instant::now() + WAIT;
    loop {
        from.bus.publish(message(
            &from.id,
            Envelope::MembersAdded {
                conv: PROBE.into(),
                users: vec![],
            },
        ));
        if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(200), to.rx.recv()).await
        {
            assert!(
                is_probe(&msg),
                "unexpected message before any was sent: {msg:?}"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no probe from {} reached {}",
            from.id,
            to.id
        );
    }
}

/// The next message that is not a probe.
async fn recv(node: &mut Node) -> BusMessage {
    let deadline = Instant::now() + WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, node.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{} received nothing", node.id))
            .expect("bus handler channel open");
        if !is_probe(&msg) {
            return msg;
        }
    }
}

/// Asserts that no message other than a probe arrives within `quiet`.
async fn expect_nothing(node: &mut Node, quiet: Duration) {
    let deadline = Instant::now() + quiet;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, node.rx.recv()).await {
        assert!(is_probe(&msg), "{} received an unexpected {msg:?}", node.id);
    }
}

/// The value of a metric in the text exposition, or 0 when absent.
fn metric(metrics: &Metrics, name: &str) -> f64 {
    let text = metrics.render();
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().expect("numeric metric"))
        .unwrap_or(0.0)
}

/// Runs one body against both buses.
macro_rules! conformance {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local() {
                super::$name(super::pair(super::Kind::Local).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name(super::pair(super::Kind::Redis).await).await;
            }
        }
    };
}

// 1. Delivery.

async fn deliver_reaches_the_other_node_once_byte_for_byte(mut p: Pair) {
    let sent = message(
        "node-a",
        Envelope::Deliver {
            target: Target::Conv("cv_售后".into()),
            exclude: Exclude::Conn("c_王小明".into()),
            frame: Utf8Bytes::from(CHINESE_FRAME.to_string()),
        },
    );
    p.a.bus.publish(sent.clone());
    let got = recv(&mut p.b).await;
    assert_eq!(got, sent);
    let Envelope::Deliver { frame, .. } = &got.envelope else {
        unreachable!()
    };
    assert_eq!(
        frame.as_bytes(),
        CHINESE_FRAME.as_bytes(),
        "frame bytes identical"
    );

    // Other targets and exclusions survive too, from B to A as well.
    let to_user = message(
        "node-b",
        Envelope::Deliver {
            target: Target::User("u_李四".into()),
            exclude: Exclude::User("u_张三".into()),
            frame: Utf8Bytes::from("{\"type\":\"typing\"}".to_string()),
        },
    );
    p.b.bus.publish(to_user.clone());
    assert_eq!(recv(&mut p.a).await, to_user);

    // Exactly once on B; never back to its origin.
    let (a, b) = (&mut p.a, &mut p.b);
    tokio::join!(
        expect_nothing(a, Duration::from_millis(300)),
        expect_nothing(b, Duration::from_millis(300))
    );
}
conformance!(deliver_reaches_the_other_node_once_byte_for_byte);

// 2. Membership changes and order.

async fn membership_changes_arrive_intact_and_order_is_kept(mut p: Pair) {
    let added = message(
        "node-a",
        Envelope::MembersAdded {
            conv: "cv_群".into(),
            users: vec!["u_1".into(), "u_王".into(), "u_3".into()],
        },
    );
    let removed = message(
        "node-a",
        Envelope::MembersRemoved {
            conv: "cv_群".into(),
            users: vec!["u_王".into()],
        },
    );
    p.a.bus.publish(added.clone());
    p.a.bus.publish(removed.clone());
    assert_eq!(recv(&mut p.b).await, added);
    assert_eq!(recv(&mut p.b).await, removed);

    for n in 0..1000 {
        p.a.bus.publish(deliver(
            "node-a",
            &format!("{{\"n\":{n},\"body\":\"消息{n}\"}}"),
        ));
    }
    for n in 0..1000 {
        let got = recv(&mut p.b).await;
        let Envelope::Deliver { frame, .. } = &got.envelope else {
            panic!("expected deliver #{n}, got {got:?}");
        };
        assert_eq!(
            frame.as_str(),
            format!("{{\"n\":{n},\"body\":\"消息{n}\"}}"),
            "message {n} out of order"
        );
    }
    expect_nothing(&mut p.b, Duration::from_millis(200)).await;
    expect_nothing(&mut p.a, Duration::from_millis(1)).await;
}
conformance!(membership_changes_arrive_intact_and_order_is_kept);

// 3. Redis: the subscriber reconnects.

/// Ids of the pub/sub clients whose selected database is `db`: the buses of
/// this test, and nobody else's (other tests use database 0).
async fn pubsub_clients_in_db(
    conn: &mut redis::aio::MultiplexedConnection,
    db: u32,
) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(conn)
        .await
        .expect("CLIENT LIST");
    list.lines()
        .filter(|l| l.split(' ').any(|f| f == format!("db={db}")))
        .filter_map(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("id="))
                .map(String::from)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_subscriber_reconnects_after_the_server_drops_it() {
    // A database number of its own marks this test's connections, so that
    // killing them leaves the subscribers of tests running beside it alone.
    const DB: u32 = 11;
    let mut url = url::Url::parse(&common::require_redis().await).expect("redis url");
    url.set_path(&format!("/{DB}"));
    let mut p = redis_pair(url.as_str()).await;
    let control = redis::Client::open(url.as_str()).unwrap();
    let mut conn = control.get_multiplexed_async_connection().await.unwrap();

    let before = pubsub_clients_in_db(&mut conn, DB).await;
    assert_eq!(before.len(), 2, "one subscriber per node: {before:?}");
    for id in &before {
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut conn)
            .await
            .expect("CLIENT KILL");
        assert_eq!(killed, 1, "killed subscriber {id}");
    }

    // Both nodes subscribe again on new connections.
    let deadline = Instant::now() + WAIT;
    loop {
        let now = pubsub_clients_in_db(&mut conn, DB).await;
        if now.len() == 2
            && now.iter().all(|id| !before.contains(id))
            && p.a.bus.is_connected()
            && p.b.bus.is_connected()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "subscribers did not come back: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let sent = deliver("node-a", CHINESE_FRAME);
    p.a.bus.publish(sent.clone());
    assert_eq!(recv(&mut p.b).await, sent);
    let back = deliver("node-b", "{\"type\":\"pong\"}");
    p.b.bus.publish(back.clone());
    assert_eq!(recv(&mut p.a).await, back);
    assert_eq!(metric(&p.a.metrics, "switchboard_bus_connected"), 1.0);
    assert_eq!(metric(&p.b.metrics, "switchboard_bus_connected"), 1.0);
}

// 4. Redis that is not there.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_never_blocks_publish_and_counts_drops() {
    let metrics = Arc::new(Metrics::new("node-x"));
    let bus = Bus::Redis(
        RedisBus::new(
            "redis://127.0.0.1:1",
            &unique_prefix(),
            "node-x",
            metrics.clone(),
        )
        .expect("a valid URL is accepted without connecting"),
    );
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let _node = start(bus.clone(), "node-x", metrics.clone(), &tracker, &cancel);
    assert!(!bus.is_connected());

    // publish is synchronous: run it off the runtime and only require that
    // the 100 calls return (a hang fails the generous guard, not a stopwatch).
    let publisher = bus.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || {
            for n in 0..100 {
                publisher.publish(deliver("node-x", &format!("{{\"n\":{n}}}")));
            }
        }),
    )
    .await
    .expect("publish returned")
    .expect("publish did not panic");

    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&metrics, "switchboard_bus_publish_dropped_total") < 100.0 {
        assert!(!bus.is_connected(), "connected to nothing?");
        assert!(
            Instant::now() < deadline,
            "drops not counted: {}",
            metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(&metrics, "switchboard_bus_publish_dropped_total"),
        100.0
    );
    assert_eq!(metric(&metrics, "switchboard_bus_published_total"), 0.0);
    assert_eq!(metric(&metrics, "switchboard_bus_connected"), 0.0);
    assert!(!bus.is_connected());

    // Stopping is prompt even while the subscriber is backing off.
    cancel.cancel();
    tracker.close();
    tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .expect("bus tasks stop when cancelled");
}

// 5. A server whose bus is down still takes messages.

/// Starts a server without waiting for `/readyz` to say 200 (it will not
/// while the bus is unreachable); waits only until it answers HTTP at all.
async fn start_unready(config: Config, network: LocalNetwork) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(switchboard_server::run_on(
        config,
        listener,
        shutdown.clone(),
        network,
    ));
    let server = TestServer {
        addr,
        shutdown,
        task: Some(task),
        http: reqwest::Client::new(),
    };
    let deadline = Instant::now() + WAIT;
    while server.http.get(server.url("/readyz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "server never answered HTTP");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_with_unreachable_redis_still_acks_and_reports_not_ready() {
    let cluster = Cluster::new(Backend::PostgresRedis).await;
    cluster
        .seed_user(ADMIN, ADMIN_PASSWORD, common::Role::Admin)
        .await;
    let mut config = cluster.config("node-a");
    config.redis_url = Some(ServiceUrl::new("redis://127.0.0.1:1"));
    let server = start_unready(config, cluster.network.clone()).await;

    let (status, ready) = server.get("/readyz", None).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["bus"], "unreachable");
    assert_eq!(ready["store"], "ok");

    let admin = server.token(ADMIN, ADMIN_PASSWORD).await;
    let alice = server.create_staff(&admin, "alice", "agent").await;
    let bob = server.create_staff(&admin, "bob", "agent").await;
    let alice_token = server.token("alice", "alice-password").await;
    let bob_token = server.token("bob", "bob-password").await;
    let conv = server.create_group(&admin, "断线群", &[&alice, &bob]).await;

    let mut a = server.client(&alice_token).await;
    let sent = a.send_text_message(&conv, "a-1", "总线断了也能发").await;
    assert_eq!(sent.seq, 1);
    let mut b = server.client(&bob_token).await;
    let page = b.sync_after(&conv, 0, 50).await;
    assert_eq!(page.messages, vec![sent.clone()]);
    // Bob, connected after the send, is not sent it live twice.
    b.expect_silence(Duration::from_millis(200)).await;
    let reply = b
        .request(|req| switchboard_protocol::ClientFrame::Ping { req })
        .await;
    assert!(matches!(reply, ServerFrame::Pong { .. }), "{reply:?}");

    // What could not be published is counted.
    let deadline = Instant::now() + WAIT;
    loop {
        let text = server
            .http
            .get(server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let dropped = text
            .lines()
            .find(|l| l.starts_with("switchboard_bus_publish_dropped_total"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if dropped >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no bus drop counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, ready) = server.get("/readyz", None).await;
    assert_eq!(status, 503);
    assert_eq!(ready["bus"], "unreachable");
    drop((a, b));
    server.stop().await;
}

// 6. The encoding on the Redis channel.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_carries_the_encoded_message_and_b_decodes_it() {
    let url = common::require_redis().await;
    let mut p = redis_pair(&url).await;
    let channel = format!("{}:events", p.prefix);
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut watcher = client.get_async_pubsub().await.unwrap();
    watcher.subscribe(&channel).await.unwrap();
    let mut watched = watcher.on_message();

    // What A publishes is a packet holding exactly `encode()`, and B decodes
    // it back to the very message, frame bytes included.
    let sent = message(
        "node-a",
        Envelope::Deliver {
            target: Target::Conv("cv_编码".into()),
            exclude: Exclude::Conn("c_1".into()),
            frame: Utf8Bytes::from(CHINESE_FRAME.to_string()),
        },
    );
    p.a.bus.publish(sent.clone());
    let raw = loop {
        let m = tokio::time::timeout(WAIT, watched.next())
            .await
            .expect("watcher got the publish")
            .expect("watcher stream open");
        let packet = m.get_payload_bytes().to_vec();
        let inner = bus::unpack(&packet).expect("a packet");
        assert_eq!(inner.len(), 1, "one message was queued, one is packed");
        let bytes = inner[0].to_vec();
        if !is_probe(&BusMessage::decode(&bytes).expect("decodable payload")) {
            break bytes;
        }
    };
    assert_eq!(raw, sent.encode());
    assert!(
        raw.ends_with(CHINESE_FRAME.as_bytes()),
        "the frame travels raw"
    );
    let got = recv(&mut p.b).await;
    assert_eq!(got, sent);

    // Bytes another node put on the channel: garbage is skipped, a valid
    // message after it still arrives on both nodes.
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(&b"not a bus message"[..])
        .query_async(&mut conn)
        .await
        .unwrap();
    let foreign = message(
        "node-z",
        Envelope::MembersRemoved {
            conv: "cv_编码".into(),
            users: vec!["u_赵六".into()],
        },
    );
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(bus::pack(&[foreign.encode()]).remove(0))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        receivers, 3,
        "node A, node B and the watcher are subscribed"
    );
    assert_eq!(recv(&mut p.b).await, foreign);
    assert_eq!(recv(&mut p.a).await, foreign);
    let (a, b) = (&mut p.a, &mut p.b);
    tokio::join!(
        expect_nothing(a, Duration::from_millis(200)),
        expect_nothing(b, Duration::from_millis(200))
    );
}
