//! The registry of this node's live connections and the indexes that route a
//! delivery to them: connection → outbox, user → connections, conversation →
//! local member users.
//!
//! All methods are synchronous and take one lock for their whole duration, so
//! the indexes can never be seen half-updated; the lock guard cannot cross an
//! `.await`. Delivering only pushes an already-serialized frame into each
//! connection's bounded [`Outbox`]: a full outbox marks the connection for a 4008
//! close instead of waiting or silently dropping.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::outbox::{CloseRequest, Outbox, Push};
use crate::bus::{Exclude, Target};
use crate::metrics::Metrics;

/// What the registry holds for one connection.
#[derive(Clone)]
pub struct ConnHandle {
    pub id: Arc<str>,
    pub user: Arc<str>,
    /// Its queue, close request and last activity (see [`Outbox`]).
    pub outbox: Arc<Outbox>,
}

#[derive(Default)]
struct UserEntry {
    conns: Vec<Arc<str>>,
    convs: HashSet<Arc<str>>,
}

#[derive(Default)]
struct Inner {
    conns: HashMap<Arc<str>, ConnHandle>,
    users: HashMap<Arc<str>, UserEntry>,
    /// Conversation → the local connections of its members. Holding the
    /// handles here makes a delivery one walk over a map's values, with no
    /// lookup per member: profiles of large fan-outs were dominated by those.
    convs: HashMap<Arc<str>, HashMap<Arc<str>, ConnHandle>>,
    /// Team (or [`ALL_TEAMS`]) → the local connections watching it.
    watchers: HashMap<Arc<str>, HashMap<Arc<str>, ConnHandle>>,
}

/// The watcher key of a connection that watches every team.
pub const ALL_TEAMS: &str = "*";

/// This node's connections.
pub struct Registry {
    // Why RwLock: deliveries (readers) vastly outnumber connects and membership
    // changes (writers), and many deliveries may run at once.
    inner: RwLock<Inner>,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>) -> Registry {
        Registry {
            inner: RwLock::new(Inner::default()),
            metrics,
        }
    }

    /// Adds a connection. Its conversations are added with [`Registry::join`]
    /// after this, so that a membership change published in between is not lost.
    pub fn register(&self, handle: ConnHandle) {
        let mut inner = self.inner.write().expect("registry lock poisoned");
        let Inner {
            conns,
            users,
            convs,
            ..
        } = &mut *inner;
        let entry = users.entry(handle.user.clone()).or_default();
        entry.conns.push(handle.id.clone());
        // Another connection of this user may already have joined conversations.
        for conv in &entry.convs {
            convs
                .entry(conv.clone())
                .or_default()
                .insert(handle.id.clone(), handle.clone());
        }
        conns.insert(handle.id.clone(), handle);
        self.metrics.connections.set(conns.len() as i64);
    }

    /// Removes a connection; the user's conversations leave the index with its
    /// last connection.
    pub fn unregister(&self, conn: &str) {
        let mut inner = self.inner.write().expect("registry lock poisoned");
        let Inner {
            conns,
            users,
            convs,
            watchers,
        } = &mut *inner;
        let Some(handle) = conns.remove(conn) else {
            return;
        };
        watchers.retain(|_, w| {
            w.remove(conn);
            !w.is_empty()
        });
        if let Some(entry) = users.get_mut(&handle.user) {
            entry.conns.retain(|c| &**c != conn);
            for conv in &entry.convs {
                if let Some(members) = convs.get_mut(conv) {
                    members.remove(conn);
                    if members.is_empty() {
                        convs.remove(conv);
                    }
                }
            }
            if entry.conns.is_empty() {
                users.remove(&handle.user);
            }
        }
        self.metrics.connections.set(conns.len() as i64);
    }

    /// Indexes `user`'s local connections as members of `convs`. Users with no
    /// connection here are ignored.
    pub fn join<'a>(&self, user: &str, convs: impl IntoIterator<Item = &'a str>) {
        let mut inner = self.inner.write().expect("registry lock poisoned");
        let Inner {
            conns,
            users,
            convs: by_conv,
            ..
        } = &mut *inner;
        let Some(entry) = users.get_mut(user) else {
            return;
        };
        for conv in convs {
            let conv: Arc<str> = match by_conv.get_key_value(conv) {
                Some((k, _)) => k.clone(),
                None => Arc::from(conv),
            };
            if !entry.convs.insert(conv.clone()) {
                continue;
            }
            let members = by_conv.entry(conv).or_default();
            for id in &entry.conns {
                if let Some(handle) = conns.get(id) {
                    members.insert(id.clone(), handle.clone());
                }
            }
        }
    }

    /// Several users joined one conversation.
    pub fn join_many(&self, conv: &str, users: &[String]) {
        for user in users {
            self.join(user, [conv]);
        }
    }

    /// Users left a conversation.
    pub fn leave_many(&self, conv: &str, users: &[String]) {
        let mut inner = self.inner.write().expect("registry lock poisoned");
        let Inner {
            users: by_user,
            convs,
            ..
        } = &mut *inner;
        for user in users {
            let Some(entry) = by_user.get_mut(user.as_str()) else {
                continue;
            };
            if !entry.convs.remove(conv) {
                continue;
            }
            if let Some(members) = convs.get_mut(conv) {
                for id in &entry.conns {
                    members.remove(id);
                }
                if members.is_empty() {
                    convs.remove(conv);
                }
            }
        }
    }

    /// Makes a connection a watcher of these teams (or of [`ALL_TEAMS`]),
    /// replacing what it watched before.
    pub fn watch(&self, conn: &str, teams: &[String]) {
        let mut inner = self.inner.write().expect("registry lock poisoned");
        let Some(handle) = inner.conns.get(conn).cloned() else {
            return;
        };
        inner.watchers.retain(|_, w| {
            w.remove(conn);
            !w.is_empty()
        });
        for team in teams {
            inner
                .watchers
                .entry(Arc::from(team.as_str()))
                .or_default()
                .insert(handle.id.clone(), handle.clone());
        }
    }

    /// The users with at least one connection on this node.
    pub fn local_users(&self) -> Vec<String> {
        let inner = self.inner.read().expect("registry lock poisoned");
        inner.users.keys().map(|u| u.to_string()).collect()
    }

    /// Whether a user has a connection on this node.
    pub fn is_connected(&self, user: &str) -> bool {
        let inner = self.inner.read().expect("registry lock poisoned");
        inner.users.contains_key(user)
    }

    /// Queues `frame` on every matching local connection; returns how many.
    /// Whether any connection on this node is indexed for the conversation.
    pub fn has_conv(&self, conv: &str) -> bool {
        let inner = self.inner.read().expect("registry lock poisoned");
        inner.convs.get(conv).is_some_and(|m| !m.is_empty())
    }

    /// Whether any connection on this node watches the team (or all teams).
    pub fn has_watchers(&self, team: &str) -> bool {
        let inner = self.inner.read().expect("registry lock poisoned");
        [team, ALL_TEAMS]
            .iter()
            .any(|k| inner.watchers.get(*k).is_some_and(|w| !w.is_empty()))
    }

    pub fn deliver(&self, target: &Target, exclude: &Exclude, frame: &Utf8Bytes) -> usize {
        let inner = self.inner.read().expect("registry lock poisoned");
        // The excluded connection is found once and then recognised by its
        // outbox's address: comparing its id with every member's was a
        // string comparison per delivery (7 % of a large fan-out's CPU).
        let skip_conn = match exclude {
            Exclude::Conn(c) => inner.conns.get(c.as_str()).map(|h| &h.outbox),
            _ => None,
        };
        let excluded = |handle: &ConnHandle| match exclude {
            Exclude::Nobody => false,
            Exclude::Conn(_) => skip_conn.is_some_and(|o| Arc::ptr_eq(o, &handle.outbox)),
            Exclude::User(u) => **u == *handle.user,
        };
        let mut delivered = 0;
        match target {
            Target::Conv(conv) => {
                if let Some(members) = inner.convs.get(conv.as_str()) {
                    for handle in members.values() {
                        if !excluded(handle) && self.push(handle, frame.clone()) {
                            delivered += 1;
                        }
                    }
                }
            }
            Target::Watch(team) => {
                // A connection watching the team and all teams gets it once.
                let mut seen: Vec<&Arc<str>> = Vec::new();
                for key in [team.as_str(), ALL_TEAMS] {
                    if let Some(watchers) = inner.watchers.get(key) {
                        for (id, handle) in watchers {
                            if seen.contains(&id) {
                                continue;
                            }
                            seen.push(id);
                            if !excluded(handle) && self.push(handle, frame.clone()) {
                                delivered += 1;
                            }
                        }
                    }
                }
            }
            Target::User(user) => {
                if let Some(entry) = inner.users.get(user.as_str()) {
                    for id in &entry.conns {
                        if let Some(handle) = inner.conns.get(id) {
                            if !excluded(handle) && self.push(handle, frame.clone()) {
                                delivered += 1;
                            }
                        }
                    }
                }
            }
        }
        delivered
    }

    /// Queues a frame on one connection: a full queue asks the connection to
    /// close as a slow consumer.
    pub fn push(&self, handle: &ConnHandle, frame: Utf8Bytes) -> bool {
        match handle.outbox.push(frame) {
            Push::Queued => true,
            Push::Full => {
                self.metrics.outbound_drops.inc();
                if handle.outbox.close_requested().is_none() {
                    self.metrics.slow_consumer_closes.inc();
                }
                handle.outbox.request_close(CloseRequest::SlowConsumer);
                false
            }
            // The connection is closing; its task unregisters it.
            Push::Closed => false,
        }
    }

    /// Asks every connection to close (shutdown); returns how many.
    pub fn close_all(&self, why: CloseRequest) -> usize {
        let inner = self.inner.read().expect("registry lock poisoned");
        for handle in inner.conns.values() {
            handle.outbox.request_close(why);
        }
        inner.conns.len()
    }

    /// Asks every connection not heard from since `heard_before_ms` to close
    /// as idle; returns how many were asked.
    pub fn close_idle(&self, heard_before_ms: u64) -> usize {
        let inner = self.inner.read().expect("registry lock poisoned");
        let mut asked = 0;
        for handle in inner.conns.values() {
            if handle.outbox.last_heard_ms() < heard_before_ms {
                handle.outbox.request_close(CloseRequest::Idle);
                asked += 1;
            }
        }
        asked
    }

    /// Number of live connections on this node.
    pub fn len(&self) -> usize {
        self.inner
            .read()
            .expect("registry lock poisoned")
            .conns
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Panics if the indexes disagree; called by tests after every scenario.
    pub fn check_invariants(&self) {
        let inner = self.inner.read().expect("registry lock poisoned");
        for (id, handle) in &inner.conns {
            let entry = inner
                .users
                .get(&handle.user)
                .unwrap_or_else(|| panic!("connection {id} has no user entry"));
            assert!(entry.conns.contains(id), "user entry lacks connection {id}");
        }
        for (user, entry) in &inner.users {
            assert!(
                !entry.conns.is_empty(),
                "user {user} kept without connections"
            );
            for conn in &entry.conns {
                assert!(inner.conns.contains_key(conn), "dangling connection {conn}");
                for conv in &entry.convs {
                    assert!(
                        inner.convs.get(conv).is_some_and(|m| m.contains_key(conn)),
                        "conversation {conv} index lacks connection {conn} of {user}"
                    );
                }
            }
        }
        for (conv, members) in &inner.convs {
            assert!(!members.is_empty(), "empty member map kept for {conv}");
            for (id, handle) in members {
                assert!(
                    inner.conns.contains_key(id),
                    "dangling connection {id} in {conv}"
                );
                assert!(
                    inner
                        .users
                        .get(&handle.user)
                        .is_some_and(|e| e.convs.contains(conv)),
                    "connection {id} indexed in {conv} without its user's entry"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(id: &str, user: &str, cap: usize) -> (ConnHandle, Arc<Outbox>) {
        let outbox = Arc::new(Outbox::new(cap));
        (
            ConnHandle {
                id: Arc::from(id),
                user: Arc::from(user),
                outbox: outbox.clone(),
            },
            outbox,
        )
    }

    fn registry() -> Registry {
        Registry::new(Arc::new(Metrics::new("test")))
    }

    #[test]
    fn routes_by_conversation_and_user_with_exclusions() {
        let reg = registry();
        let (a1, ra1) = handle("c1", "alice", 8);
        let (a2, ra2) = handle("c2", "alice", 8);
        let (b1, rb1) = handle("c3", "bob", 8);
        for h in [a1, a2, b1] {
            reg.register(h);
        }
        reg.join("alice", ["cv"]);
        reg.join("bob", ["cv", "other"]);
        reg.join("nobody", ["cv"]);
        reg.check_invariants();

        let f = Utf8Bytes::from_static("x");
        assert_eq!(
            reg.deliver(&Target::Conv("cv".into()), &Exclude::Nobody, &f),
            3
        );
        assert_eq!(
            reg.deliver(&Target::Conv("cv".into()), &Exclude::Conn("c1".into()), &f),
            2
        );
        assert_eq!(
            reg.deliver(
                &Target::Conv("cv".into()),
                &Exclude::User("alice".into()),
                &f
            ),
            1
        );
        assert_eq!(
            reg.deliver(&Target::User("alice".into()), &Exclude::Nobody, &f),
            2
        );
        assert_eq!(
            reg.deliver(&Target::Conv("none".into()), &Exclude::Nobody, &f),
            0
        );
        assert_eq!(ra1.pop().as_deref(), Some("x"));
        assert!(ra2.pop().is_some() && rb1.pop().is_some());

        reg.unregister("c1");
        reg.check_invariants();
        assert_eq!(
            reg.deliver(&Target::Conv("cv".into()), &Exclude::Nobody, &f),
            2
        );
        reg.unregister("c2");
        reg.check_invariants();
        assert_eq!(
            reg.deliver(&Target::Conv("cv".into()), &Exclude::Nobody, &f),
            1
        );
        reg.leave_many("cv", &["bob".into()]);
        reg.check_invariants();
        assert_eq!(
            reg.deliver(&Target::Conv("cv".into()), &Exclude::Nobody, &f),
            0
        );
        reg.unregister("c3");
        reg.check_invariants();
        assert!(reg.is_empty());
    }

    #[test]
    fn a_later_connection_of_a_member_receives_its_conversations() {
        let reg = registry();
        let (a1, _ra1) = handle("c1", "alice", 8);
        reg.register(a1);
        reg.join("alice", ["cv", "cv2"]);
        let (a2, ra2) = handle("c2", "alice", 8);
        reg.register(a2);
        reg.check_invariants();
        let f = Utf8Bytes::from_static("x");
        assert_eq!(
            reg.deliver(&Target::Conv("cv2".into()), &Exclude::Nobody, &f),
            2
        );
        assert!(ra2.pop().is_some());
        reg.unregister("c1");
        reg.check_invariants();
        assert_eq!(
            reg.deliver(&Target::Conv("cv".into()), &Exclude::Nobody, &f),
            1
        );
        reg.unregister("c2");
        reg.check_invariants();
        assert_eq!(
            reg.deliver(&Target::Conv("cv".into()), &Exclude::Nobody, &f),
            0
        );
    }

    #[test]
    fn a_full_outbox_requests_a_slow_consumer_close() {
        let reg = registry();
        let (h, rx) = handle("c1", "alice", 1);
        reg.register(h);
        reg.join("alice", ["cv"]);
        let f = Utf8Bytes::from_static("x");
        assert_eq!(
            reg.deliver(&Target::Conv("cv".into()), &Exclude::Nobody, &f),
            1
        );
        assert_eq!(rx.close_requested(), None);
        assert_eq!(
            reg.deliver(&Target::Conv("cv".into()), &Exclude::Nobody, &f),
            0
        );
        assert_eq!(rx.close_requested(), Some(CloseRequest::SlowConsumer));
    }

    #[test]
    fn idle_and_shutdown_close_requests() {
        let reg = registry();
        let (quiet, rq) = handle("c1", "alice", 4);
        let (chatty, rc) = handle("c2", "bob", 4);
        rq.heard_at(1_000);
        rc.heard_at(5_000);
        reg.register(quiet);
        reg.register(chatty);
        assert_eq!(reg.close_idle(4_000), 1);
        assert_eq!(rq.close_requested(), Some(CloseRequest::Idle));
        assert_eq!(rc.close_requested(), None);
        assert_eq!(reg.close_all(CloseRequest::Restarting), 2);
        assert_eq!(rc.close_requested(), Some(CloseRequest::Restarting));
        // The first request stands.
        assert_eq!(rq.close_requested(), Some(CloseRequest::Idle));
    }
}
