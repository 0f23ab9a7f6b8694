//! The bus seam: how one node tells the others what to deliver.
//!
//! Each node delivers events to its own connections directly and publishes
//! them on the bus; every *other* node receives them and delivers to its own
//! connections. The database is the truth: a lost bus message costs a live
//! update, never a message, because clients `sync`.
//!
//! Two implementations exist: [`local::LocalNetwork`] (in-process; one node in
//! production, several in tests) and [`redis::RedisBus`] (Redis pub/sub on one
//! channel per deployment). [`Bus`] is the one type the rest of the server uses.
//!
//! Layout:
//! - this file: [`Envelope`], [`BusMessage`], its wire encoding, [`Bus`].
//! - [`local`]: the in-process network.
//! - [`redis`]: Redis pub/sub with reconnecting subscriber and batching publisher.

pub mod local;
pub mod redis;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

/// Who receives a delivered frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", content = "id", rename_all = "snake_case")]
pub enum Target {
    /// Every connection of every member of the conversation.
    Conv(String),
    /// Every connection of one user.
    User(String),
    /// Every connection watching a team's queue (supervisors' `watch`).
    Watch(String),
}

/// Connections left out of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "t", content = "id", rename_all = "snake_case")]
pub enum Exclude {
    #[default]
    Nobody,
    /// The connection that caused the event (it got a reply instead).
    Conn(String),
    /// Every connection of this user (e.g. the typer).
    User(String),
}

/// What one node asks the others to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    /// Write an already-serialized frame to the target's connections.
    Deliver {
        target: Target,
        exclude: Exclude,
        frame: Utf8Bytes,
    },
    /// Users joined a conversation: index their connections for it.
    MembersAdded { conv: String, users: Vec<String> },
    /// Users left a conversation.
    MembersRemoved { conv: String, users: Vec<String> },
    /// These teams' queues changed: each node tells its own waiting
    /// customers and watchers their positions. One small message instead of
    /// one per waiting customer, whose connection may be on any node.
    QueueChanged { teams: Vec<String> },
}

/// An envelope with where and when it was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    pub origin: String,
    /// Publish time, ms since the epoch: receivers report the lag.
    pub sent_at: i64,
    pub envelope: Envelope,
}

/// The JSON header line of an encoded [`BusMessage`]; the frame follows it raw,
/// so a message's JSON is never parsed or re-serialized on the way.
#[derive(Serialize, Deserialize)]
struct Header {
    o: String,
    s: i64,
    #[serde(flatten)]
    k: HeaderKind,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum HeaderKind {
    Deliver { to: Target, ex: Exclude },
    Added { conv: String, users: Vec<String> },
    Removed { conv: String, users: Vec<String> },
    Queue { teams: Vec<String> },
}

impl BusMessage {
    /// `header JSON` + `\n` + frame text (empty for membership changes).
    pub fn encode(&self) -> Vec<u8> {
        let (kind, frame) = match &self.envelope {
            Envelope::Deliver {
                target,
                exclude,
                frame,
            } => (
                HeaderKind::Deliver {
                    to: target.clone(),
                    ex: exclude.clone(),
                },
                frame.as_str(),
            ),
            Envelope::MembersAdded { conv, users } => (
                HeaderKind::Added {
                    conv: conv.clone(),
                    users: users.clone(),
                },
                "",
            ),
            Envelope::MembersRemoved { conv, users } => (
                HeaderKind::Removed {
                    conv: conv.clone(),
                    users: users.clone(),
                },
                "",
            ),
            Envelope::QueueChanged { teams } => (
                HeaderKind::Queue {
                    teams: teams.clone(),
                },
                "",
            ),
        };
        let header = Header {
            o: self.origin.clone(),
            s: self.sent_at,
            k: kind,
        };
        let mut out = serde_json::to_vec(&header).expect("bus headers always serialize");
        out.push(b'\n');
        out.extend_from_slice(frame.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<BusMessage, String> {
        let split = bytes
            .iter()
            .position(|b| *b == b'\n')
            .ok_or("bus message without header line")?;
        let header: Header =
            serde_json::from_slice(&bytes[..split]).map_err(|e| format!("bus header: {e}"))?;
        let envelope = match header.k {
            HeaderKind::Deliver { to, ex } => {
                let text = std::str::from_utf8(&bytes[split + 1..])
                    .map_err(|e| format!("bus frame is not UTF-8: {e}"))?;
                Envelope::Deliver {
                    target: to,
                    exclude: ex,
                    frame: Utf8Bytes::from(text.to_owned()),
                }
            }
            HeaderKind::Added { conv, users } => Envelope::MembersAdded { conv, users },
            HeaderKind::Removed { conv, users } => Envelope::MembersRemoved { conv, users },
            HeaderKind::Queue { teams } => Envelope::QueueChanged { teams },
        };
        Ok(BusMessage {
            origin: header.o,
            sent_at: header.s,
            envelope,
        })
    }
}

/// Largest packet published at once. Why 512 KiB: a batch of 256 messages
/// rarely comes near it, and Redis buffers each packet for every subscriber.
const MAX_PACKET: usize = 512 * 1024;

/// Joins encoded messages into packets for one PUBLISH each: every message
/// is its length (4 bytes, big-endian) then its bytes. Why: a PUBLISH costs
/// Redis and each subscriber about the same for a small message as for a
/// packet of hundreds, and dispatch publishes a dozen small messages per
/// assignment.
pub fn pack(messages: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut packets = Vec::new();
    let mut packet: Vec<u8> = Vec::new();
    for m in messages {
        if !packet.is_empty() && packet.len() + 4 + m.len() > MAX_PACKET {
            packets.push(std::mem::take(&mut packet));
        }
        packet.extend_from_slice(&(m.len() as u32).to_be_bytes());
        packet.extend_from_slice(m);
    }
    if !packet.is_empty() {
        packets.push(packet);
    }
    packets
}

/// The messages of a packet made by [`pack`].
pub fn unpack(mut packet: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    while !packet.is_empty() {
        let Some((len, rest)) = packet.split_first_chunk::<4>() else {
            return Err("bus packet: truncated length".into());
        };
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err("bus packet: truncated message".into());
        }
        let (m, rest) = rest.split_at(len);
        out.push(m);
        packet = rest;
    }
    Ok(out)
}

/// Called for every message another node published.
pub type Handler = Arc<dyn Fn(BusMessage) + Send + Sync>;

/// The bus one node uses.
#[derive(Clone)]
pub enum Bus {
    Local(local::LocalBus),
    Redis(redis::RedisBus),
}

impl Bus {
    /// Hands a message to the other nodes. Never blocks and never fails the
    /// caller: when the bus is down or backed up the message is dropped and
    /// counted, and clients recover with `sync`.
    pub fn publish(&self, msg: BusMessage) {
        match self {
            Bus::Local(b) => b.publish(msg),
            Bus::Redis(b) => b.publish(msg),
        }
    }

    /// Starts receiving other nodes' messages into `handler`, on the tracker,
    /// until `cancel` fires.
    pub fn start(&self, handler: Handler, tracker: &TaskTracker, cancel: CancellationToken) {
        match self {
            Bus::Local(b) => b.start(handler, tracker, cancel),
            Bus::Redis(b) => b.start(handler, tracker, cancel),
        }
    }

    /// Whether this node currently reaches the other nodes (for `/readyz`).
    pub fn is_connected(&self) -> bool {
        match self {
            Bus::Local(_) => true,
            Bus::Redis(b) => b.is_connected(),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        match self {
            Bus::Local(b) => b.metrics(),
            Bus::Redis(b) => b.metrics(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_keeps_the_frame_verbatim() {
        let frame = r#"{"type":"message","msg":{"body":"你好\n世界"}}"#;
        for envelope in [
            Envelope::Deliver {
                target: Target::Conv("cv_1".into()),
                exclude: Exclude::Conn("c_9".into()),
                frame: Utf8Bytes::from(frame.to_string()),
            },
            Envelope::Deliver {
                target: Target::User("u_1".into()),
                exclude: Exclude::Nobody,
                frame: Utf8Bytes::from(frame.to_string()),
            },
            Envelope::MembersAdded {
                conv: "cv_1".into(),
                users: vec!["u_1".into(), "u_2".into()],
            },
            Envelope::MembersRemoved {
                conv: "cv_1".into(),
                users: vec!["u_3".into()],
            },
            Envelope::QueueChanged {
                teams: vec!["t_1".into(), "t_2".into()],
            },
        ] {
            let msg = BusMessage {
                origin: "node-a".into(),
                sent_at: 1_763_880_000_000,
                envelope,
            };
            assert_eq!(BusMessage::decode(&msg.encode()).unwrap(), msg);
        }
    }

    #[test]
    fn packets_round_trip_and_stay_bounded() {
        let messages: Vec<Vec<u8>> = (0..300u32)
            .map(|i| format!("message {i} 你好").into_bytes())
            .chain([vec![b'x'; MAX_PACKET], Vec::new()])
            .collect();
        let packets = pack(&messages);
        assert!(
            packets.len() >= 3,
            "the large message gets a packet of its own"
        );
        let back: Vec<Vec<u8>> = packets
            .iter()
            .flat_map(|p| unpack(p).unwrap())
            .map(<[u8]>::to_vec)
            .collect();
        assert_eq!(back, messages);
        assert!(pack(&[]).is_empty());
        assert!(unpack(&[0, 0, 0, 5, b'a']).is_err());
        assert!(unpack(&[0, 0]).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(BusMessage::decode(b"no header").is_err());
        assert!(BusMessage::decode(b"{\"o\":1}\n").is_err());
        assert!(BusMessage::decode(b"{\"o\":\"a\",\"s\":1,\"k\":\"deliver\",\"to\":{\"t\":\"conv\",\"id\":\"x\"},\"ex\":{\"t\":\"nobody\"}}\n\xff").is_err());
    }
}
