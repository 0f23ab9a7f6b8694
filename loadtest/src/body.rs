//! Message bodies that carry a tag, and the fast reading of `message` events.
//!
//! Every body the tool sends starts with `LT<tag>~` (the tag is a decimal
//! number naming the send, used to look up its send instant and to check
//! what arrived), padded with `.` to the requested size. Receivers see up to
//! hundreds of thousands of events per second while sharing two cores with
//! the server, so a `message` event is read by scanning for its `seq` and
//! body tag instead of deserializing the whole frame; anything the scan does
//! not recognise falls back to `serde` through `switchboard-protocol`.

use switchboard_protocol::ServerFrame;

/// Start of every tagged body.
const MARKER: &str = "LT";
/// End of the tag inside the body.
const END: char = '~';

/// A body of at least `size` bytes carrying `tag`. The body is longer than
/// `size` only when `size` is too small to hold the tag itself.
pub(crate) fn encode(tag: u64, size: usize) -> String {
    let mut body = format!("{MARKER}{tag}{END}");
    if body.len() < size {
        body.extend(std::iter::repeat_n('.', size - body.len()));
    }
    body
}

/// The tag of a body made by [`encode`], if it is one.
pub(crate) fn decode(body: &str) -> Option<u64> {
    let rest = body.strip_prefix(MARKER)?;
    let end = rest.find(END)?;
    let digits = &rest[..end];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A `message` event, reduced to what the scenarios check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MessageEvent {
    pub(crate) seq: i64,
    /// The body's tag; `None` for a message the tool did not send.
    pub(crate) tag: Option<u64>,
}

/// What one server text frame is.
#[derive(Debug)]
pub(crate) enum Incoming {
    Message(MessageEvent),
    /// Any other frame, fully parsed.
    Frame(Box<ServerFrame>),
}

/// Reads one server text frame: `message` events by the fast scan, the rest
/// (and any event the scan cannot read) through `serde`.
pub(crate) fn classify(text: &str) -> anyhow::Result<Incoming> {
    if let Some(ev) = scan_message_event(text) {
        return Ok(Incoming::Message(ev));
    }
    let frame: ServerFrame = serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("unreadable server frame ({e}): {}", clip(text)))?;
    Ok(match frame {
        ServerFrame::Message { msg } => Incoming::Message(MessageEvent {
            seq: msg.seq,
            tag: decode(&msg.body),
        }),
        other => Incoming::Frame(Box::new(other)),
    })
}

/// The fast path. In JSON an unescaped `"` cannot occur inside a string, so
/// `"seq":` and `"body":"` can only be the keys of those names; in a
/// `message` event these keys exist only in `msg` (the sender object has
/// `id`, `role` and `name`).
fn scan_message_event(text: &str) -> Option<MessageEvent> {
    if !text.starts_with(r#"{"type":"message","#) {
        return None;
    }
    let seq_at = text.find(r#""seq":"#)? + r#""seq":"#.len();
    let seq_digits = text[seq_at..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    let seq: i64 = text[seq_at..seq_at + seq_digits].parse().ok()?;
    let body_at = text.find(r#""body":""#)? + r#""body":""#.len();
    let rest = &text[body_at..];
    // Only our own tag is read; a body that starts otherwise has no tag.
    let tag = if rest.starts_with(MARKER) {
        let end = rest.find(['"', END])?;
        if rest.as_bytes()[end] == b'"' {
            None
        } else {
            decode(&rest[..=end])
        }
    } else {
        None
    };
    Some(MessageEvent { seq, tag })
}

/// A `conversation` event, reduced to what an agent of the `dispatch`
/// scenario looks at.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct ConversationEvent {
    pub(crate) id: String,
    pub(crate) state: switchboard_protocol::ConversationState,
    #[serde(default)]
    pub(crate) agent: Option<String>,
    #[serde(default)]
    pub(crate) offered_to: Option<String>,
}

/// Reads a `conversation` event into a plain struct: `None` for any other
/// frame. Why not [`classify`]: `ServerFrame` is a tagged enum, which serde
/// buffers whole before decoding it, and in a drained backlog the agents
/// read two such frames per assignment, which made the tool as busy as a
/// server node.
pub(crate) fn conversation_event(text: &str) -> Option<ConversationEvent> {
    #[derive(serde::Deserialize)]
    struct Event {
        conv: ConversationEvent,
    }
    if !text.starts_with(r#"{"type":"conversation","#) {
        return None;
    }
    serde_json::from_str::<Event>(text).ok().map(|e| e.conv)
}

/// The start of a frame, for error messages.
pub(crate) fn clip(text: &str) -> &str {
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_protocol::{Message, MessageKind, Role, UserRef};

    fn event(seq: i64, body: &str, sender_name: &str) -> String {
        ServerFrame::Message {
            msg: Message {
                id: "m_1".into(),
                conv: "cv_1".into(),
                seq,
                sender: UserRef {
                    id: "u_1".into(),
                    role: Role::Customer,
                    name: sender_name.into(),
                },
                kind: MessageKind::Text,
                body: body.into(),
                attachment: None,
                client_msg_id: Some("x".into()),
                ts: 1,
                recalled: false,
            },
        }
        .to_json()
    }

    #[test]
    fn conversation_events_are_read_and_other_frames_are_not() {
        use switchboard_protocol::{ConversationInfo, ConversationKind, ConversationState};
        let frame = ServerFrame::Conversation {
            conv: ConversationInfo {
                id: "cv_1".into(),
                kind: ConversationKind::Service,
                state: ConversationState::Active,
                title: None,
                team: Some("t_1".into()),
                agent: Some("u_客服".into()),
                customer: Some("u_2".into()),
                last_seq: 3,
                last_read_seq: 0,
                created_at: 1,
                topic: Some("退款".into()),
                offered_to: None,
                offer_expires_at: None,
                pending: false,
            },
        }
        .to_json();
        let ev = conversation_event(&frame).expect("a conversation event");
        assert_eq!(ev.id, "cv_1");
        assert_eq!(ev.state, ConversationState::Active);
        assert_eq!(ev.agent.as_deref(), Some("u_客服"));
        assert_eq!(ev.offered_to, None);
        assert!(conversation_event(&event(1, "hi", "a")).is_none());
        assert!(conversation_event(r#"{"type":"conversation","conv":{}}"#).is_none());
    }

    #[test]
    fn bodies_round_trip_and_have_the_requested_size() {
        for (tag, size) in [
            (0u64, 64usize),
            (42, 64),
            (u64::MAX, 64),
            (7, 1),
            (123, 8000),
        ] {
            let body = encode(tag, size);
            assert!(body.len() >= size);
            assert!(body.len() == size || size < format!("LT{tag}~").len());
            assert_eq!(decode(&body), Some(tag));
        }
        for not_ours in ["", "hello", "LT~", "LTx~", "LT12", "lt12~", "LT-1~"] {
            assert_eq!(decode(not_ours), None, "{not_ours}");
        }
    }

    #[test]
    fn the_fast_scan_reads_what_the_protocol_crate_writes() {
        let text = event(17, &encode(99, 64), "lt \"seq\":5 \"body\":\"LT3~");
        assert!(
            scan_message_event(&text).is_some(),
            "fast path taken: {text}"
        );
        match classify(&text).unwrap() {
            Incoming::Message(ev) => assert_eq!(
                ev,
                MessageEvent {
                    seq: 17,
                    tag: Some(99)
                }
            ),
            other => panic!("{other:?}"),
        }
        // A body that is not ours has no tag.
        match classify(&event(3, "你好", "n")).unwrap() {
            Incoming::Message(ev) => assert_eq!(ev, MessageEvent { seq: 3, tag: None }),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_frames_go_through_serde() {
        let ok = ServerFrame::ok(Some(5)).to_json();
        assert!(matches!(
            classify(&ok).unwrap(),
            Incoming::Frame(f) if matches!(*f, ServerFrame::Ok { req: Some(5), .. })
        ));
        // Field order other than the crate's still parses, via serde.
        let reordered = r#"{"msg":{"id":"m","conv":"c","seq":8,"sender":{"id":"u","role":"agent","name":"n"},"kind":"text","body":"LT4~..","ts":1},"type":"message"}"#;
        match classify(reordered).unwrap() {
            Incoming::Message(ev) => assert_eq!(
                ev,
                MessageEvent {
                    seq: 8,
                    tag: Some(4)
                }
            ),
            other => panic!("{other:?}"),
        }
        assert!(classify("not json").is_err());
    }
}
