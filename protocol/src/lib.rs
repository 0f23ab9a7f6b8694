//! Switchboard's wire protocol, version 1: every frame of `PROTOCOL.md` as typed
//! serde enums, shared by the server, the load tester and the tests.
//!
//! A WebSocket text frame holds one JSON object whose `type` field names the
//! frame. Client frames are [`ClientFrame`], server frames are [`ServerFrame`];
//! both are closed enums so that the gateway matches every variant explicitly.
//! Identifiers are strings, times are milliseconds since the Unix epoch (UTC),
//! `seq` is an integer. `protocol/README.md` documents every field and rule;
//! the JSON files under `protocol/fixtures/` are canonical examples that the
//! Rust tests and the web client's tests both read.
//!
//! Layout:
//! - [`ClientFrame`] and its payload types: what a client may send.
//! - [`ServerFrame`], [`OkBody`] and the event payloads: what the server sends.
//! - [`ErrorCode`]: the stable error codes of `error` frames and REST errors.
//! - [`close`]: WebSocket close codes.
//! - [`limits`]: protocol-level defaults a client can rely on.

use serde::{Deserialize, Serialize};

/// WebSocket close codes used by the server.
pub mod close {
    /// Normal closure; also used for an idle connection (no frame for 3 × heartbeat).
    pub const NORMAL: u16 = 1000;
    /// A frame larger than the configured maximum.
    pub const TOO_LARGE: u16 = 1009;
    /// The server is restarting or shutting down: reconnect with backoff.
    pub const RESTARTING: u16 = 1012;
    /// No `auth` within the handshake timeout, or another frame before `auth`.
    pub const NOT_AUTHENTICATED: u16 = 4001;
    /// Token invalid, expired or revoked.
    pub const BAD_TOKEN: u16 = 4003;
    /// The client did not read fast enough; its outbound queue overflowed.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The client kept sending above its rate limit.
    pub const RATE_LIMITED: u16 = 4029;
}

/// Defaults a client can rely on unless the server's operator changed them.
pub mod limits {
    /// Largest frame, in bytes, either side may send (close 1009 beyond it).
    pub const MAX_FRAME_BYTES: usize = 64 * 1024;
    /// Seconds the server waits for the first frame (`auth`) after the upgrade.
    pub const AUTH_TIMEOUT_S: u64 = 10;
    /// Seconds between client heartbeats; silence for 3 × this closes the connection.
    pub const HEARTBEAT_S: u64 = 25;
    /// Default and maximum page size of `sync`.
    pub const SYNC_DEFAULT_LIMIT: u32 = 50;
    pub const SYNC_MAX_LIMIT: u32 = 200;
    /// Longest `body` of a text or emoji message, in Unicode scalar values.
    pub const MAX_BODY_CHARS: usize = 8000;
    /// Longest `client_msg_id`, in bytes.
    pub const MAX_CLIENT_MSG_ID_BYTES: usize = 128;
}

/// A request id chosen by the client, echoed in the reply.
pub type ReqId = u64;

/// Everything a client may send. Every variant may carry `req`; a frame with
/// `req` gets exactly one reply (`ok` or `error`) carrying the same `req`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Auth {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<ReqId>,
        token: String,
    },
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<ReqId>,
    },
    Send {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<ReqId>,
        conv: String,
        client_msg_id: String,
        kind: MessageKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attachment: Option<String>,
    },
    Sync {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<ReqId>,
        conv: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    Read {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<ReqId>,
        conv: String,
        seq: i64,
    },
    Typing {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<ReqId>,
        conv: String,
    },
    Recall {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<ReqId>,
        conv: String,
        msg_id: String,
    },
    Consult {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<ReqId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        team: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
    Presence {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<ReqId>,
        status: PresenceStatus,
    },
    Accept {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<ReqId>,
        conv: String,
    },
    Transfer {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<ReqId>,
        conv: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_agent: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_team: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    Close {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<ReqId>,
        conv: String,
    },
    Rate {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<ReqId>,
        conv: String,
        score: u8,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
    Watch {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<ReqId>,
        teams: WatchTeams,
    },
    Assign {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<ReqId>,
        conv: String,
        agent: String,
    },
}

impl ClientFrame {
    /// The frame's `req`, if the client asked for a reply.
    pub fn req(&self) -> Option<ReqId> {
        match self {
            ClientFrame::Auth { req, .. }
            | ClientFrame::Ping { req }
            | ClientFrame::Send { req, .. }
            | ClientFrame::Sync { req, .. }
            | ClientFrame::Read { req, .. }
            | ClientFrame::Typing { req, .. }
            | ClientFrame::Recall { req, .. }
            | ClientFrame::Consult { req, .. }
            | ClientFrame::Presence { req, .. }
            | ClientFrame::Accept { req, .. }
            | ClientFrame::Transfer { req, .. }
            | ClientFrame::Close { req, .. }
            | ClientFrame::Rate { req, .. }
            | ClientFrame::Watch { req, .. }
            | ClientFrame::Assign { req, .. } => *req,
        }
    }

    /// The frame's `type` name, for logs and metrics.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientFrame::Auth { .. } => "auth",
            ClientFrame::Ping { .. } => "ping",
            ClientFrame::Send { .. } => "send",
            ClientFrame::Sync { .. } => "sync",
            ClientFrame::Read { .. } => "read",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::Recall { .. } => "recall",
            ClientFrame::Consult { .. } => "consult",
            ClientFrame::Presence { .. } => "presence",
            ClientFrame::Accept { .. } => "accept",
            ClientFrame::Transfer { .. } => "transfer",
            ClientFrame::Close { .. } => "close",
            ClientFrame::Rate { .. } => "rate",
            ClientFrame::Watch { .. } => "watch",
            ClientFrame::Assign { .. } => "assign",
        }
    }
}

/// Only the `req` of a frame: used to answer a frame that failed to parse.
#[derive(Debug, Default, Deserialize)]
pub struct ReqOnly {
    #[serde(default)]
    pub req: Option<ReqId>,
}

/// `teams` of a `watch` frame: a list of team ids or the string `"all"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WatchTeams {
    All(AllTeams),
    List(Vec<String>),
}

/// The literal `"all"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllTeams {
    #[serde(rename = "all")]
    All,
}

/// What a message holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Text,
    Emoji,
    Image,
    File,
    /// Server-made only (assignment, transfer, reminders…); a client may not send it.
    System,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Text => "text",
            MessageKind::Emoji => "emoji",
            MessageKind::Image => "image",
            MessageKind::File => "file",
            MessageKind::System => "system",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "text" => MessageKind::Text,
            "emoji" => MessageKind::Emoji,
            "image" => MessageKind::Image,
            "file" => MessageKind::File,
            "system" => MessageKind::System,
            _ => return None,
        })
    }
}

/// A user's role. Staff roles are agent, supervisor and admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Customer,
    Agent,
    Supervisor,
    Admin,
    /// The server itself: the sender of `system` messages. No account has it.
    System,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Agent => "agent",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
            Role::System => "system",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "customer" => Role::Customer,
            "agent" => Role::Agent,
            "supervisor" => Role::Supervisor,
            "admin" => Role::Admin,
            _ => return None,
        })
    }

    /// Agents, supervisors and admins.
    pub fn is_staff(self) -> bool {
        matches!(self, Role::Agent | Role::Supervisor | Role::Admin)
    }

    /// Supervisors and admins: may watch queues and assign by hand.
    pub fn is_supervisor(self) -> bool {
        matches!(self, Role::Supervisor | Role::Admin)
    }
}

/// An agent's declared status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Busy,
    Away,
    Offline,
}

/// A user as other users see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRef {
    pub id: String,
    pub role: Role,
    pub name: String,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    pub conv: String,
    pub seq: i64,
    pub sender: UserRef,
    pub kind: MessageKind,
    /// Text of a text, emoji or system message; the caption (may be empty) of an
    /// image or file; empty once recalled.
    pub body: String,
    /// Upload id of an image or file message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    pub ts: i64,
    /// Set once the message is recalled: its body and attachment are gone.
    #[serde(default, skip_serializing_if = "is_false")]
    pub recalled: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `service` (a customer with the service team) or `group` (a service group).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    Service,
    Group,
}

impl ConversationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationKind::Service => "service",
            ConversationKind::Group => "group",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "service" => Some(ConversationKind::Service),
            "group" => Some(ConversationKind::Group),
            _ => None,
        }
    }
}

/// Life of a conversation. Groups are `active` until closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationState {
    /// Waiting in a team's queue (service only).
    Queued,
    /// Being served (service) or open (group).
    Active,
    Closed,
}

impl ConversationState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationState::Queued => "queued",
            ConversationState::Active => "active",
            ConversationState::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(ConversationState::Queued),
            "active" => Some(ConversationState::Active),
            "closed" => Some(ConversationState::Closed),
            _ => None,
        }
    }
}

/// A conversation as the `conversation` event and the `auth` reply show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationInfo {
    pub id: String,
    pub kind: ConversationKind,
    pub state: ConversationState,
    /// Group title; absent for service conversations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    pub last_seq: i64,
    /// The highest `seq` the receiving user has marked read.
    #[serde(default)]
    pub last_read_seq: i64,
    pub created_at: i64,
    /// The topic the customer consulted about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Offer mode: the agent this queued conversation is offered to; it must
    /// `accept` before `offer_expires_at` (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offered_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_expires_at: Option<i64>,
    /// A queued conversation waiting as a left message (no team could serve
    /// when it was opened); it joins the live queue when the team returns.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pending: bool,
}

/// The `ok` reply to `auth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthOk {
    pub user: UserRef,
    pub connection: String,
    pub server_time: i64,
    pub heartbeat_s: u64,
    pub conversations: Vec<ConversationInfo>,
}

/// The `ok` reply to `sync`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncOk {
    pub conv: String,
    pub messages: Vec<Message>,
    pub has_more: bool,
}

/// A waiting conversation in a supervisor's queue view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedConversation {
    pub conv: String,
    pub customer: String,
    pub position: u32,
    /// When it entered the queue (ms since epoch).
    pub since: i64,
}

/// One team's queue for supervisors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamQueue {
    pub team: String,
    pub waiting: Vec<QueuedConversation>,
}

/// One agent for supervisors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub user: String,
    pub status: PresenceStatus,
    pub load: u32,
    pub capacity: u32,
    /// When the agent entered its current status (ms since epoch).
    pub since: i64,
}

/// The `ok` reply to `watch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchSnapshot {
    pub queues: Vec<TeamQueue>,
    pub agents: Vec<AgentState>,
}

/// The result fields of an `ok` reply, flattened next to `type` and `req`.
/// Which shape comes back depends on the request: `auth` → [`AuthOk`], `send` →
/// `msg`, `sync` → [`SyncOk`], `consult` → `conv`, `watch` → [`WatchSnapshot`],
/// everything else → no fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OkBody {
    Auth(AuthOk),
    Sent { msg: Message },
    Sync(SyncOk),
    Watch(WatchSnapshot),
    Consulted { conv: String },
    Empty {},
}

/// A stable error code; the human text travels beside it in `message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    RateLimited,
    TooLarge,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status the REST API answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::RateLimited => 429,
            ErrorCode::TooLarge => 413,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

/// `sla` event kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlaKind {
    Warning,
    Breach,
}

/// `notice` level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeLevel {
    Info,
    Warning,
    Error,
}

/// A ticket as the `ticket` event shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketInfo {
    pub id: String,
    pub title: String,
    pub status: String,
    pub priority: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    pub customer: String,
    pub updated_at: i64,
}

/// Everything the server sends: replies (`ok`, `error`, `pong`) and events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Ok {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<ReqId>,
        #[serde(flatten)]
        body: OkBody,
    },
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<ReqId>,
        code: ErrorCode,
        message: String,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<ReqId>,
    },
    Message {
        msg: Message,
    },
    Receipt {
        conv: String,
        user: String,
        seq: i64,
    },
    Typing {
        conv: String,
        user: String,
    },
    Recalled {
        conv: String,
        msg_id: String,
        seq: i64,
    },
    Conversation {
        conv: ConversationInfo,
    },
    Queue {
        conv: String,
        position: u32,
        eta_s: u32,
    },
    QueueUpdate {
        queue: TeamQueue,
    },
    Presence {
        user: String,
        status: PresenceStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        load: Option<u32>,
    },
    Ticket {
        ticket: TicketInfo,
    },
    Sla {
        ticket: String,
        kind: SlaKind,
        due_at: i64,
    },
    RateRequest {
        conv: String,
    },
    Notice {
        level: NoticeLevel,
        text: String,
        /// A stable code for clients that show their own wording, e.g.
        /// `left_message` or `overflowed`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        /// The conversation the notice is about, when there is one (e.g. a
        /// `transfer_note` or a `left_message`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conv: Option<String>,
    },
}

impl ServerFrame {
    /// An `ok` reply with no result fields.
    pub fn ok(req: Option<ReqId>) -> Self {
        ServerFrame::Ok {
            req,
            body: OkBody::Empty {},
        }
    }

    /// An `error` reply.
    pub fn error(req: Option<ReqId>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            req,
            code,
            message: message.into(),
        }
    }

    /// The JSON text of this frame.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: no maps with non-string keys, no
        // custom Serialize impls that error.
        serde_json::to_string(self).expect("server frames always serialize")
    }
}

impl ClientFrame {
    /// The JSON text of this frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("client frames always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_frame_shape() {
        let f = ServerFrame::error(Some(3), ErrorCode::NotFound, "no such conversation");
        let v: serde_json::Value = serde_json::from_str(&f.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"error","req":3,"code":"not_found","message":"no such conversation"})
        );
    }

    #[test]
    fn unknown_type_is_an_error_and_req_is_recoverable() {
        let text = r#"{"type":"shout","req":9}"#;
        assert!(serde_json::from_str::<ClientFrame>(text).is_err());
        let r: ReqOnly = serde_json::from_str(text).unwrap();
        assert_eq!(r.req, Some(9));
    }

    #[test]
    fn watch_teams_all_or_list() {
        let a: ClientFrame = serde_json::from_str(r#"{"type":"watch","teams":"all"}"#).unwrap();
        assert_eq!(
            a,
            ClientFrame::Watch {
                req: None,
                teams: WatchTeams::All(AllTeams::All)
            }
        );
        let l: ClientFrame = serde_json::from_str(r#"{"type":"watch","teams":["t_1"]}"#).unwrap();
        assert_eq!(
            l,
            ClientFrame::Watch {
                req: None,
                teams: WatchTeams::List(vec!["t_1".into()])
            }
        );
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"watch","teams":"some"}"#).is_err());
    }

    #[test]
    fn empty_ok_has_only_type_and_req() {
        assert_eq!(
            ServerFrame::ok(Some(1)).to_json(),
            r#"{"type":"ok","req":1}"#
        );
    }

    #[test]
    fn enum_names_match_their_strings() {
        for k in [
            MessageKind::Text,
            MessageKind::Emoji,
            MessageKind::Image,
            MessageKind::File,
            MessageKind::System,
        ] {
            assert_eq!(MessageKind::parse(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
        for r in [Role::Customer, Role::Agent, Role::Supervisor, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
        for c in [
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::RateLimited,
            ErrorCode::TooLarge,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ] {
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.as_str())
            );
        }
    }
}
