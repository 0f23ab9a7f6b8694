//! The in-process bus. A [`LocalNetwork`] joins the nodes of one process: in
//! production that is a single node (publishing reaches nobody and costs
//! nothing), in tests several nodes share one network and behave as a cluster.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{BusMessage, Handler};
use crate::metrics::Metrics;
use crate::util::now_ms;

/// Messages buffered per receiving node. Why 8192: a burst of fan-out events
/// from another node must not be dropped while this node's receiver task is
/// briefly busy; beyond this the receiver is truly stuck and drops are counted.
const INBOX: usize = 8192;

/// Where a node receives what the others publish.
type Inbox = mpsc::Sender<Arc<BusMessage>>;

/// The nodes of one process.
#[derive(Clone, Default)]
pub struct LocalNetwork {
    // Why a std Mutex: held only to clone or push senders, never across .await.
    nodes: Arc<Mutex<Vec<(String, Inbox)>>>,
    /// The dispatch engine the nodes of this process share (one lock, so
    /// assignment stays atomic across them as with Redis).
    dispatch: Arc<crate::dispatch::local::LocalEngine>,
}

impl LocalNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    /// The in-process dispatch engine shared by this network's nodes.
    pub fn dispatch_engine(&self) -> Arc<crate::dispatch::local::LocalEngine> {
        self.dispatch.clone()
    }

    /// The bus handle of one node on this network.
    pub fn bus(&self, node_id: &str, metrics: Arc<Metrics>) -> LocalBus {
        LocalBus {
            network: self.clone(),
            node_id: node_id.to_string(),
            metrics,
        }
    }
}

/// One node's view of a [`LocalNetwork`].
#[derive(Clone)]
pub struct LocalBus {
    network: LocalNetwork,
    node_id: String,
    metrics: Arc<Metrics>,
}

impl LocalBus {
    pub fn publish(&self, msg: BusMessage) {
        let peers: Vec<_> = {
            let nodes = self.network.nodes.lock().expect("bus lock poisoned");
            nodes
                .iter()
                .filter(|(id, _)| *id != self.node_id)
                .map(|(_, tx)| tx.clone())
                .collect()
        };
        if peers.is_empty() {
            return;
        }
        let msg = Arc::new(msg);
        for tx in peers {
            if tx.try_send(msg.clone()).is_ok() {
                self.metrics.bus_published.inc();
            } else {
                self.metrics.bus_publish_dropped.inc();
            }
        }
    }

    pub fn start(&self, handler: Handler, tracker: &TaskTracker, cancel: CancellationToken) {
        let (tx, mut rx) = mpsc::channel::<Arc<BusMessage>>(INBOX);
        self.network
            .nodes
            .lock()
            .expect("bus lock poisoned")
            .push((self.node_id.clone(), tx));
        self.metrics.bus_connected.set(1);
        let network = self.network.clone();
        let node_id = self.node_id.clone();
        let metrics = self.metrics.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    msg = rx.recv() => match msg {
                        Some(msg) => {
                            let lag = (now_ms() - msg.sent_at).max(0) as f64 / 1000.0;
                            metrics.bus_lag_seconds.with_label_values(&[&msg.origin]).observe(lag);
                            handler(Arc::unwrap_or_clone(msg));
                        }
                        None => break,
                    },
                }
            }
            network
                .nodes
                .lock()
                .expect("bus lock poisoned")
                .retain(|(id, _)| *id != node_id);
            metrics.bus_connected.set(0);
        });
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}
