//! [`Fanout`]: how events leave a node. Every event is applied to this node's
//! connections through the registry and published on the bus for the others;
//! what other nodes publish is applied here by [`Fanout::apply`].
//!
//! It is its own handle (not part of `AppState`) so that the message
//! committer can deliver a whole committed batch in one tight loop.

use serde::Serialize;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::bus::{Bus, BusMessage, Envelope, Exclude, Target};
use crate::gateway::registry::Registry;
use crate::util::now_ms;

/// This node's registry and bus, joined.
pub struct Fanout {
    node_id: String,
    registry: Registry,
    bus: Bus,
}

impl Fanout {
    pub fn new(node_id: String, registry: Registry, bus: Bus) -> Fanout {
        Fanout {
            node_id,
            registry,
            bus,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Sends a serialized frame to the target's connections on every node.
    pub fn deliver(&self, target: Target, exclude: Exclude, frame: Utf8Bytes) {
        self.registry.deliver(&target, &exclude, &frame);
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

    /// Serializes a frame and delivers it to this node's connections only:
    /// for what every node computes for its own connections.
    pub fn deliver_local_frame<F: Serialize>(&self, target: Target, exclude: Exclude, frame: &F) {
        match serde_json::to_string(frame) {
            Ok(text) => {
                self.registry
                    .deliver(&target, &exclude, &Utf8Bytes::from(text));
            }
            Err(e) => tracing::error!(error = %e, "cannot serialize event"),
        }
    }

    /// Tells the other nodes that these teams' queues changed.
    pub fn queue_changed(&self, teams: Vec<String>) {
        self.publish(Envelope::QueueChanged { teams });
    }

    /// Tells the other nodes that these teams' settings or members changed.
    pub fn teams_changed(&self, teams: Vec<String>) {
        self.publish(Envelope::TeamsChanged { teams });
    }

    /// Users joined a conversation: every node indexes their connections.
    pub fn members_added(&self, conv: &str, users: Vec<String>) {
        self.registry.join_many(conv, &users);
        self.publish(Envelope::MembersAdded {
            conv: conv.to_string(),
            users,
        });
    }

    /// Users left a conversation.
    pub fn members_removed(&self, conv: &str, users: Vec<String>) {
        self.registry.leave_many(conv, &users);
        self.publish(Envelope::MembersRemoved {
            conv: conv.to_string(),
            users,
        });
    }

    fn publish(&self, envelope: Envelope) {
        self.bus.publish(BusMessage {
            origin: self.node_id.clone(),
            sent_at: now_ms(),
            envelope,
        });
    }

    /// Applies what another node published.
    pub fn apply(&self, msg: BusMessage) {
        match msg.envelope {
            Envelope::Deliver {
                target,
                exclude,
                frame,
            } => {
                self.registry.deliver(&target, &exclude, &frame);
            }
            Envelope::MembersAdded { conv, users } => self.registry.join_many(&conv, &users),
            Envelope::MembersRemoved { conv, users } => self.registry.leave_many(&conv, &users),
            // The dispatcher's (see `AppState::apply_bus_message`).
            Envelope::QueueChanged { .. } | Envelope::TeamsChanged { .. } => {}
        }
    }
}
