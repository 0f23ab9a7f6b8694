//! [`AppState`]: the cheap, cloneable handle every handler and task gets. Its
//! `deliver*` and `members_*` methods forward to the node's [`Fanout`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::anonymous::AnonymousLimiter;
use crate::auth::TokenKeys;
use crate::bus::{Bus, BusMessage, Exclude, Target};
use crate::config::Config;
use crate::conversations::committer::Committer;
use crate::dispatch::Dispatcher;
use crate::fanout::Fanout;
use crate::gateway::registry::Registry;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::uploads::FileStore;

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
    fanout: Arc<Fanout>,
    keys: TokenKeys,
    metrics: Arc<Metrics>,
    files: FileStore,
    dispatch: Dispatcher,
    /// This node's count of new anonymous customers per client address.
    anonymous: AnonymousLimiter,
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
    pub dispatch: Dispatcher,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

impl AppState {
    pub fn new(p: StateParts) -> AppState {
        let fanout = Arc::new(Fanout::new(
            p.node_id.clone(),
            Registry::new(p.metrics.clone()),
            p.bus,
        ));
        let anonymous = AnonymousLimiter::new(
            p.config.limits.anonymous_per_ip_per_min,
            p.metrics.registry(),
        );
        AppState {
            inner: Arc::new(Inner {
                anonymous,
                committer: Committer::start(p.store.clone(), fanout.clone(), p.metrics.clone()),
                fanout,
                config: p.config,
                node_id: p.node_id,
                store: p.store,
                keys: p.keys,
                metrics: p.metrics,
                files: p.files,
                dispatch: p.dispatch,
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
        self.inner.fanout.bus()
    }
    pub fn registry(&self) -> &Registry {
        self.inner.fanout.registry()
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
    /// Queues, presence and assignment.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.inner.dispatch
    }
    /// The per-address bound of anonymous starts (`POST /auth/anonymous`).
    pub fn anonymous_limiter(&self) -> &AnonymousLimiter {
        &self.inner.anonymous
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

    /// How events leave this node (registry plus bus).
    pub fn fanout(&self) -> &Arc<Fanout> {
        &self.inner.fanout
    }

    /// Sends a serialized frame to the target's connections on every node.
    pub fn deliver(&self, target: Target, exclude: Exclude, frame: Utf8Bytes) {
        self.inner.fanout.deliver(target, exclude, frame);
    }

    /// Serializes a frame once and delivers it.
    pub fn deliver_frame<F: Serialize>(&self, target: Target, exclude: Exclude, frame: &F) {
        self.inner.fanout.deliver_frame(target, exclude, frame);
    }

    /// Users joined a conversation: every node indexes their connections.
    pub fn members_added(&self, conv: &str, users: Vec<String>) {
        self.inner.fanout.members_added(conv, users);
    }

    /// Applies what another node published.
    pub fn apply_bus_message(&self, msg: BusMessage) {
        match msg.envelope {
            crate::bus::Envelope::QueueChanged { teams } => {
                self.dispatcher().queues_changed_elsewhere(teams)
            }
            crate::bus::Envelope::TeamsChanged { teams } => {
                for team in &teams {
                    self.dispatcher().invalidate(team);
                }
            }
            _ => self.inner.fanout.apply(msg),
        }
    }
}
