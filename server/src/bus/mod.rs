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

use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

/// Who receives a delivered frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every connection of every member of the conversation.
    Conv(String),
    /// Every connection of one user.
    User(String),
    /// Every connection watching a team's queue (supervisors' `watch`).
    Watch(String),
}

/// Connections left out of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
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
    /// These teams' settings or members changed: each node forgets what it
    /// cached of them (without this a node served consults from a stale
    /// member list for up to the cache's lifetime).
    TeamsChanged { teams: Vec<String> },
}

/// An envelope with where and when it was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    pub origin: String,
    /// Publish time, ms since the epoch: receivers report the lag.
    pub sent_at: i64,
    pub envelope: Envelope,
}

/// The first byte of an encoded [`BusMessage`]: the encoding's version. A
/// node of another version (during a rolling upgrade) sees a message it
/// cannot decode, logs it and skips it; clients recover with `sync`.
/// Version 1 was a JSON header line, which started with `{`.
const ENCODING: u8 = 2;

/// Tags of the envelope kinds, targets and exclusions on the wire.
const DELIVER: u8 = 0;
const ADDED: u8 = 1;
const REMOVED: u8 = 2;
const QUEUE: u8 = 3;
const TEAMS: u8 = 4;

/// The binary encoding of a [`BusMessage`]:
///
/// `version u8 · origin str · sent_at i64 · kind u8 · fields`, where a
/// `str` is its length (u32, big-endian) then its UTF-8 bytes. A delivery's
/// fields are `target u8 · id str · exclude u8 · [id str]` followed by the
/// frame's bytes, raw, to the end; the other kinds carry `conv str` (not
/// for `QUEUE` and `TEAMS`) and a list (`count u32 · str…`).
///
/// Why binary rather than JSON: every node decodes every message on the
/// channel, and during a dispatch drain the JSON header (a flattened,
/// internally tagged enum, which serde buffers before it can decode it)
/// took a tenth of each node's CPU. A frame's JSON is never parsed or
/// re-serialized on the way.
impl BusMessage {
    pub fn encode(&self) -> Vec<u8> {
        // Why 160: the version, the origin, the time, the kind and two ids
        // fit, so a delivery is one allocation.
        let mut out = Vec::with_capacity(160 + self.frame_len());
        out.push(ENCODING);
        put_str(&mut out, &self.origin);
        out.extend_from_slice(&self.sent_at.to_be_bytes());
        match &self.envelope {
            Envelope::Deliver {
                target,
                exclude,
                frame,
            } => {
                out.push(DELIVER);
                let (tag, id) = match target {
                    Target::Conv(id) => (0, id),
                    Target::User(id) => (1, id),
                    Target::Watch(id) => (2, id),
                };
                out.push(tag);
                put_str(&mut out, id);
                match exclude {
                    Exclude::Nobody => out.push(0),
                    Exclude::Conn(id) => {
                        out.push(1);
                        put_str(&mut out, id);
                    }
                    Exclude::User(id) => {
                        out.push(2);
                        put_str(&mut out, id);
                    }
                }
                out.extend_from_slice(frame.as_bytes());
            }
            Envelope::MembersAdded { conv, users } | Envelope::MembersRemoved { conv, users } => {
                let added = matches!(self.envelope, Envelope::MembersAdded { .. });
                out.push(if added { ADDED } else { REMOVED });
                put_str(&mut out, conv);
                put_list(&mut out, users);
            }
            Envelope::QueueChanged { teams } => {
                out.push(QUEUE);
                put_list(&mut out, teams);
            }
            Envelope::TeamsChanged { teams } => {
                out.push(TEAMS);
                put_list(&mut out, teams);
            }
        }
        out
    }

    fn frame_len(&self) -> usize {
        match &self.envelope {
            Envelope::Deliver { frame, .. } => frame.len(),
            _ => 0,
        }
    }

    /// The publishing node of an encoded message, read without decoding the
    /// rest: a node skips its own messages, which the channel echoes back.
    pub fn origin_of(bytes: &[u8]) -> Option<&str> {
        let mut r = Reader(bytes);
        (r.u8().ok()? == ENCODING).then_some(())?;
        r.str().ok()
    }

    pub fn decode(bytes: &[u8]) -> Result<BusMessage, String> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != ENCODING {
            return Err(format!(
                "bus message of encoding {version}, this node speaks {ENCODING}"
            ));
        }
        let origin = r.str()?.to_owned();
        let sent_at = i64::from_be_bytes(r.take(8)?.try_into().expect("8 bytes"));
        let envelope = match r.u8()? {
            DELIVER => {
                let tag = r.u8()?;
                let id = r.str()?.to_owned();
                let target = match tag {
                    0 => Target::Conv(id),
                    1 => Target::User(id),
                    2 => Target::Watch(id),
                    t => return Err(format!("bus message: unknown target {t}")),
                };
                let exclude = match r.u8()? {
                    0 => Exclude::Nobody,
                    1 => Exclude::Conn(r.str()?.to_owned()),
                    2 => Exclude::User(r.str()?.to_owned()),
                    t => return Err(format!("bus message: unknown exclusion {t}")),
                };
                let text =
                    std::str::from_utf8(r.0).map_err(|e| format!("bus frame is not UTF-8: {e}"))?;
                Envelope::Deliver {
                    target,
                    exclude,
                    frame: Utf8Bytes::from(text.to_owned()),
                }
            }
            kind @ (ADDED | REMOVED) => {
                let conv = r.str()?.to_owned();
                let users = r.list()?;
                if kind == ADDED {
                    Envelope::MembersAdded { conv, users }
                } else {
                    Envelope::MembersRemoved { conv, users }
                }
            }
            QUEUE => Envelope::QueueChanged { teams: r.list()? },
            TEAMS => Envelope::TeamsChanged { teams: r.list()? },
            k => return Err(format!("bus message: unknown kind {k}")),
        };
        if !matches!(envelope, Envelope::Deliver { .. }) && !r.0.is_empty() {
            return Err("bus message: trailing bytes".into());
        }
        Ok(BusMessage {
            origin,
            sent_at,
            envelope,
        })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_list(out: &mut Vec<u8>, items: &[String]) {
    out.extend_from_slice(&(items.len() as u32).to_be_bytes());
    for s in items {
        put_str(out, s);
    }
}

/// Reads an encoded message front to back; every read checks the length.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("bus message: truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<usize, String> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize)
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let n = self.u32()?;
        std::str::from_utf8(self.take(n)?).map_err(|e| format!("bus message: {e}"))
    }

    fn list(&mut self) -> Result<Vec<String>, String> {
        let n = self.u32()?;
        // Why the bound: a corrupt count must not reserve gigabytes; every
        // item takes at least its 4-byte length.
        let mut items = Vec::with_capacity(n.min(self.0.len() / 4));
        for _ in 0..n {
            items.push(self.str()?.to_owned());
        }
        Ok(items)
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
    let total: usize = messages.iter().map(|m| 4 + m.len()).sum();
    let mut packets = Vec::new();
    let mut packet: Vec<u8> = Vec::with_capacity(total.min(MAX_PACKET));
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
            Envelope::TeamsChanged {
                teams: vec!["t_3".into()],
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
        let good = BusMessage {
            origin: "node-a".into(),
            sent_at: 1,
            envelope: Envelope::Deliver {
                target: Target::Conv("cv_1".into()),
                exclude: Exclude::Nobody,
                frame: Utf8Bytes::from_static("{}"),
            },
        }
        .encode();
        assert_eq!(BusMessage::origin_of(&good), Some("node-a"));
        // Every truncation of a message before its frame is refused.
        for cut in 0..good.len() - 2 {
            assert!(BusMessage::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        // The previous encoding (a JSON header line) is refused by version.
        let old = b"{\"o\":\"a\",\"s\":1,\"k\":\"queue\",\"teams\":[]}\n";
        let e = BusMessage::decode(old).unwrap_err();
        assert!(e.contains("encoding 123"), "{e}");
        assert_eq!(BusMessage::origin_of(old), None);
        // A frame that is not UTF-8, an unknown kind, a huge list count.
        let mut bad = good.clone();
        bad.push(0xff);
        assert!(BusMessage::decode(&bad).is_err());
        let mut kind = good[..good.len() - 2].to_vec();
        let at = 1 + 4 + "node-a".len() + 8;
        kind[at] = 9;
        assert!(BusMessage::decode(&kind)
            .unwrap_err()
            .contains("unknown kind"));
        let mut list = good[..at].to_vec();
        list.push(QUEUE);
        list.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(BusMessage::decode(&list).is_err());
    }
}
