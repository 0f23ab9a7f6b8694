//! [`AppState`]: the cheap, cloneable handle every handler and task gets, and
//! the two ways events leave a node — [`AppState::deliver`] and
//! [`AppState::members_added`] — which apply locally and publish on the bus.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::TokenKeys;
use crate::bus::{Bus, BusMessage, Envelope, Exclude, Target};
use crate::config::Config;
use crate::conversations::committer::Committer;
use crate::gateway::registry::Registry;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::uploads::FileStore;
use crate::util::now_ms;

/// Shared server state.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    node_id: String,
    store: Store,
    committer: Committer,
    bus: Bus,
    registry: Registry,
    keys: TokenKeys,
    metrics: Arc<Metrics>,
    files: FileStore,
    /// Fired when the server shuts down: sessions close with 1012.
    shutdown: CancellationToken,
    /// Every session and background task, so shutdown can wait for them.
    tracker: TaskTracker,
    accepting: AtomicBool,
}

/// The parts [`AppState::new`] assembles.
pub struct StateParts {
    pub config: Config,
    pub node_id: String,
    pub store: Store,
    pub bus: Bus,
    pub keys: TokenKeys,
    pub metrics: Arc<Metrics>,
    pub files: FileStore,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

impl AppState {
    pub fn new(p: StateParts) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                registry: Registry::new(p.metrics.clone()),
                committer: Committer::start(p.store.clone()),
                config: p.config,
                node_id: p.node_id,
                store: p.store,
                bus: p.bus,
                keys: p.keys,
                metrics: p.metrics,
                files: p.files,
                shutdown: p.shutdown,
                tracker: p.tracker,
                accepting: AtomicBool::new(true),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }
    pub fn store(&self) -> &Store {
        &self.inner.store
    }
    /// Where sends are stored, in group-committed batches.
    pub fn committer(&self) -> &Committer {
        &self.inner.committer
    }
    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }
    pub fn keys(&self) -> &TokenKeys {
        &self.inner.keys
    }
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
    pub fn files(&self) -> &FileStore {
        &self.inner.files
    }
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }
    pub fn tracker(&self) -> &TaskTracker {
        &self.inner.tracker
    }

    /// Whether new WebSocket sessions are accepted (false once shutdown began).
    pub fn is_accepting(&self) -> bool {
        self.inner.accepting.load(Ordering::Acquire)
    }
    pub fn stop_accepting(&self) {
        self.inner.accepting.store(false, Ordering::Release);
    }

    /// Sends a serialized frame to the target's connections on every node.
    pub fn deliver(&self, target: Target, exclude: Exclude, frame: Utf8Bytes) {
        self.registry().deliver(&target, &exclude, &frame);
        self.publish(Envelope::Deliver {
            target,
            exclude,
            frame,
        });
    }

    /// Serializes a frame once and delivers it.
    pub fn deliver_frame<F: Serialize>(&self, target: Target, exclude: Exclude, frame: &F) {
        match serde_json::to_string(frame) {
            Ok(text) => self.deliver(target, exclude, Utf8Bytes::from(text)),
            Err(e) => tracing::error!(error = %e, "cannot serialize event"),
        }
    }

    /// Users joined a conversation: every node indexes their connections.
    pub fn members_added(&self, conv: &str, users: Vec<String>) {
        self.registry().join_many(conv, &users);
        self.publish(Envelope::MembersAdded {
            conv: conv.to_string(),
            users,
        });
    }

    /// Users left a conversation.
    pub fn members_removed(&self, conv: &str, users: Vec<String>) {
        self.registry().leave_many(conv, &users);
        self.publish(Envelope::MembersRemoved {
            conv: conv.to_string(),
            users,
        });
    }

    fn publish(&self, envelope: Envelope) {
        self.bus().publish(BusMessage {
            origin: self.node_id().to_string(),
            sent_at: now_ms(),
            envelope,
        });
    }

    /// Applies what another node published.
    pub fn apply_bus_message(&self, msg: BusMessage) {
        match msg.envelope {
            Envelope::Deliver {
                target,
                exclude,
                frame,
            } => {
                self.registry().deliver(&target, &exclude, &frame);
            }
            Envelope::MembersAdded { conv, users } => self.registry().join_many(&conv, &users),
            Envelope::MembersRemoved { conv, users } => self.registry().leave_many(&conv, &users),
        }
    }
}
