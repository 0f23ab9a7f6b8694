//! Messages: idempotent send with a gapless `seq`, sync, read receipts, typing
//! and recall.
//!
//! `seq` comes from `conversations.last_seq`, incremented by the same
//! transaction that inserts the message: the row update serializes concurrent
//! senders of one conversation (a row lock on PostgreSQL, the single writer on
//! SQLite) and a rolled-back send gives its number back, so `seq` has no gaps.
//! Idempotency rests on the unique key (conv, sender, client_msg_id), so it
//! holds across nodes and restarts; the ack is sent only after commit.

use sqlx::any::AnyRow;
use sqlx::Row;
use switchboard_protocol::{limits, Message, MessageKind, Role, ServerFrame, SyncOk, UserRef};

use std::sync::Arc;

use super::committer::{Pending, Stored};
use super::{require_member, visible_conversation};
use crate::bus::{Exclude, Target};
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::store::{Backend, Placeholders, Store};
use crate::util::now_ms;

pub(super) const COLUMNS: &str =
    "id, conv_id, seq, sender_id, sender_role, sender_name, kind, body, \
                       attachment_id, client_msg_id, ts, recalled_at";

/// Stores a server-made `system` message inside the caller's transaction
/// (with the state change it reports) and returns it; the caller delivers it
/// after commit.
pub async fn insert_system_message(
    conn: &mut sqlx::AnyConnection,
    conv: &str,
    body: &str,
    now: i64,
) -> AppResult<Message> {
    let row = sqlx::query(
        "UPDATE conversations SET last_seq = last_seq + 1, updated_at = $2 WHERE id = $1 \
         RETURNING last_seq",
    )
    .bind(conv)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    let msg = system_message(conv, row.try_get("last_seq")?, body, now);
    insert_messages(conn, Backend::of(conn), std::iter::once(&msg)).await?;
    Ok(msg)
}

/// A server-made `system` message at `seq`; the caller has reserved `seq`
/// (bumped the conversation's `last_seq`) in the transaction that stores it.
pub fn system_message(conv: &str, seq: i64, body: &str, now: i64) -> Message {
    Message {
        id: crate::util::new_id("m_"),
        conv: conv.to_string(),
        seq,
        sender: UserRef {
            id: "system".into(),
            role: Role::System,
            name: "系统".into(),
        },
        kind: MessageKind::System,
        body: body.to_string(),
        attachment: None,
        client_msg_id: None,
        ts: now,
        recalled: false,
    }
}

/// Inserts messages whose `seq` the caller reserved, with one statement
/// whatever their number (each statement costs a round trip or a hand-off to
/// SQLite's thread).
pub async fn insert_messages<'m>(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    messages: impl Iterator<Item = &'m Message> + Clone,
) -> Result<(), sqlx::Error> {
    let n = messages.clone().count();
    if n == 0 {
        return Ok(());
    }
    let mut p = Placeholders::new(backend);
    let sql = format!(
        "INSERT INTO messages ({COLUMNS}) VALUES {}",
        (0..n)
            .map(|_| {
                let cells: Vec<String> = (0..11).map(|_| p.one()).collect();
                format!("({}, NULL)", cells.join(", "))
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut q = sqlx::query(&sql);
    for m in messages {
        q = q
            .bind(&m.id)
            .bind(&m.conv)
            .bind(m.seq)
            .bind(&m.sender.id)
            .bind(m.sender.role.as_str())
            .bind(&m.sender.name)
            .bind(m.kind.as_str())
            .bind(&m.body)
            .bind(&m.attachment)
            .bind(&m.client_msg_id)
            .bind(m.ts);
    }
    q.execute(&mut *conn).await?;
    Ok(())
}

pub(super) fn message_from_row(row: &AnyRow) -> AppResult<Message> {
    let kind: String = row.try_get("kind")?;
    let role: String = row.try_get("sender_role")?;
    let recalled_at: Option<i64> = row.try_get("recalled_at")?;
    Ok(Message {
        id: row.try_get("id")?,
        conv: row.try_get("conv_id")?,
        seq: row.try_get("seq")?,
        sender: UserRef {
            id: row.try_get("sender_id")?,
            role: match role.as_str() {
                "system" => Role::System,
                r => Role::parse(r).ok_or_else(|| AppError::internal("bad sender role"))?,
            },
            name: row.try_get("sender_name")?,
        },
        kind: MessageKind::parse(&kind).ok_or_else(|| AppError::internal("bad message kind"))?,
        body: row.try_get("body")?,
        attachment: row.try_get("attachment_id")?,
        client_msg_id: row.try_get("client_msg_id")?,
        ts: row.try_get("ts")?,
        recalled: recalled_at.is_some(),
    })
}

/// A client's `send`.
#[derive(Debug, Clone)]
pub struct SendInput {
    pub conv: String,
    pub client_msg_id: String,
    pub kind: MessageKind,
    pub body: Option<String>,
    pub attachment: Option<String>,
}

/// Checks a send's fields; returns the body to store.
async fn validate_send(store: &Store, sender: &UserRef, input: &SendInput) -> AppResult<String> {
    let id_len = input.client_msg_id.len();
    if id_len == 0 || id_len > limits::MAX_CLIENT_MSG_ID_BYTES {
        return Err(AppError::bad_request(format!(
            "client_msg_id must be 1 to {} bytes",
            limits::MAX_CLIENT_MSG_ID_BYTES
        )));
    }
    let body = input.body.clone().unwrap_or_default();
    if body.chars().count() > limits::MAX_BODY_CHARS {
        return Err(AppError::bad_request(format!(
            "body must be at most {} characters",
            limits::MAX_BODY_CHARS
        )));
    }
    match input.kind {
        MessageKind::System => Err(AppError::forbidden(
            "system messages are made by the server only",
        )),
        MessageKind::Text | MessageKind::Emoji => {
            if input.attachment.is_some() {
                return Err(AppError::bad_request(
                    "text and emoji messages carry no attachment; use kind image or file",
                ));
            }
            if body.trim().is_empty() {
                return Err(AppError::bad_request("body must not be empty"));
            }
            Ok(body)
        }
        MessageKind::Image | MessageKind::File => {
            let upload = input.attachment.as_deref().ok_or_else(|| {
                AppError::bad_request("image and file messages need an attachment")
            })?;
            let row = sqlx::query("SELECT mime FROM uploads WHERE id = $1 AND owner_id = $2")
                .bind(upload)
                .bind(&sender.id)
                .fetch_optional(store.read())
                .await?;
            let mime: String = row
                .ok_or_else(|| AppError::not_found("no such upload of yours"))?
                .try_get("mime")?;
            if input.kind == MessageKind::Image && !mime.starts_with("image/") {
                return Err(AppError::bad_request(
                    "this upload is not an image; send it as kind file",
                ));
            }
            Ok(body)
        }
    }
}

pub(super) async fn find_by_client_id(
    store: &Store,
    conv: &str,
    sender: &str,
    client_msg_id: &str,
) -> AppResult<Option<Message>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM messages WHERE conv_id = $1 AND sender_id = $2 \
         AND client_msg_id = $3 AND client_msg_id IS NOT NULL"
    ))
    .bind(conv)
    .bind(sender)
    .bind(client_msg_id)
    // The read pool sees every committed row (WAL on SQLite), so this does not
    // queue behind the single SQLite writer.
    .fetch_optional(store.read())
    .await?;
    row.as_ref().map(message_from_row).transpose()
}

/// Checks a send and queues it for storage; returns without waiting for the
/// commit, so a connection can have many sends in flight. Sends prepared one
/// after another are stored in that order. The committer delivers the message
/// to every member except `origin_conn` (which gets the ack instead).
pub async fn prepare_send(
    state: &AppState,
    sender: &UserRef,
    origin_conn: Option<Arc<str>>,
    input: SendInput,
) -> AppResult<Pending> {
    let store = state.store();
    // No look-up of an earlier copy here: the committer finds resends of
    // stored messages for a whole batch in one query.
    let body = validate_send(store, sender, &input).await?;
    state
        .committer()
        .submit(sender, input, body, origin_conn)
        .await
}

/// Waits for a prepared send's commit: the stored message, or the original
/// of a repeated `client_msg_id`.
pub async fn finish_send(pending: Pending) -> AppResult<Message> {
    match pending
        .await
        .map_err(|_| AppError::internal("committer dropped a send"))??
    {
        Stored::New(msg) | Stored::Existing(msg) => Ok(msg),
    }
}

/// Stores a message, delivers it to every member except `origin_conn`, and
/// returns it. A repeated `client_msg_id` returns the original message and
/// delivers nothing.
pub async fn send_message(
    state: &AppState,
    sender: &UserRef,
    origin_conn: Option<&str>,
    input: SendInput,
) -> AppResult<Message> {
    finish_send(prepare_send(state, sender, origin_conn.map(Arc::from), input).await?).await
}

/// Why a conversation did not take a message: `not_found` for non-members and
/// unknown ids alike, `conflict` when it is closed.
pub(super) async fn why_not_writable(store: &Store, user: &str, conv: &str) -> AppError {
    if let Err(e) = require_member(store, user, conv).await {
        return e;
    }
    AppError::conflict("this conversation is closed")
}

/// Where a `sync` page starts.
#[derive(Debug, Clone, Copy)]
pub enum Page {
    After(i64),
    Before(i64),
}

impl Page {
    /// The page a `sync` (or its REST twin) asks for: `before` pages
    /// backwards, `after` (default 0) forwards; both at once is an error.
    pub fn from_bounds(after: Option<i64>, before: Option<i64>) -> AppResult<Page> {
        match (after, before) {
            (Some(_), Some(_)) => Err(AppError::bad_request(
                "give either after or before, not both",
            )),
            (None, Some(b)) => Ok(Page::Before(b)),
            (a, None) => Ok(Page::After(a.unwrap_or(0))),
        }
    }
}

/// A page of history in ascending `seq`.
pub async fn sync_messages(
    state: &AppState,
    user: &UserRef,
    conv: &str,
    page: Page,
    limit: u32,
) -> AppResult<SyncOk> {
    if limit == 0 {
        return Err(AppError::bad_request("limit must be at least 1"));
    }
    let limit = limit.min(limits::SYNC_MAX_LIMIT) as i64;
    visible_conversation(state.store(), user, conv).await?;
    let (sql, from) = match page {
        Page::After(s) if s >= 0 => (
            format!("SELECT {COLUMNS} FROM messages WHERE conv_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3"),
            s,
        ),
        Page::Before(s) if s >= 0 => (
            format!("SELECT {COLUMNS} FROM messages WHERE conv_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"),
            s,
        ),
        _ => return Err(AppError::bad_request("after and before must not be negative")),
    };
    let rows = sqlx::query(&sql)
        .bind(conv)
        .bind(from)
        .bind(limit + 1)
        .fetch_all(state.store().read())
        .await?;
    let has_more = rows.len() as i64 > limit;
    let mut messages = rows
        .iter()
        .take(limit as usize)
        .map(message_from_row)
        .collect::<AppResult<Vec<_>>>()?;
    if matches!(page, Page::Before(_)) {
        messages.reverse();
    }
    Ok(SyncOk {
        conv: conv.to_string(),
        messages,
        has_more,
    })
}

/// Marks the conversation read up to `seq` (clamped to its last message).
/// Members are told with a `receipt` only when the mark moved forward.
pub async fn mark_read(state: &AppState, user: &UserRef, conv: &str, seq: i64) -> AppResult<()> {
    if seq < 0 {
        return Err(AppError::bad_request("seq must not be negative"));
    }
    let (info, access) = visible_conversation(state.store(), user, conv).await?;
    if access != super::Access::Member {
        return Err(AppError::not_found("no such conversation"));
    }
    let seq = seq.min(info.last_seq);
    let moved = sqlx::query(
        "UPDATE conversation_members SET last_read_seq = $3 \
         WHERE conv_id = $1 AND user_id = $2 AND last_read_seq < $3",
    )
    .bind(conv)
    .bind(&user.id)
    .bind(seq)
    .execute(state.store().write())
    .await?;
    if moved.rows_affected() > 0 {
        state.deliver_frame(
            Target::Conv(conv.to_string()),
            Exclude::Nobody,
            &ServerFrame::Receipt {
                conv: conv.to_string(),
                user: user.id.clone(),
                seq,
            },
        );
    }
    Ok(())
}

/// Tells the other members that the user is typing; nothing is stored.
pub async fn typing(state: &AppState, user: &UserRef, conv: &str) -> AppResult<()> {
    require_member(state.store(), &user.id, conv).await?;
    state.deliver_frame(
        Target::Conv(conv.to_string()),
        Exclude::User(user.id.clone()),
        &ServerFrame::Typing {
            conv: conv.to_string(),
            user: user.id.clone(),
        },
    );
    Ok(())
}

/// Recalls a message: the sender within the window, a supervisor or admin, or
/// the group's owner at any time. Body and attachment are erased.
pub async fn recall(state: &AppState, user: &UserRef, conv: &str, msg_id: &str) -> AppResult<()> {
    let store = state.store();
    let row = sqlx::query(
        "SELECT m.seq, m.sender_id, m.kind, m.ts, m.recalled_at, c.owner_id, \
         (SELECT 1 FROM conversation_members x WHERE x.conv_id = m.conv_id AND x.user_id = $3) AS member \
         FROM messages m JOIN conversations c ON c.id = m.conv_id \
         WHERE m.id = $1 AND m.conv_id = $2",
    )
    .bind(msg_id)
    .bind(conv)
    .bind(&user.id)
    .fetch_optional(store.read())
    .await?;
    let overseer = matches!(user.role, Role::Supervisor | Role::Admin);
    let row = row.ok_or_else(|| AppError::not_found("no such message"))?;
    let member: Option<i64> = row.try_get("member")?;
    if member.is_none() && !overseer {
        return Err(AppError::not_found("no such message"));
    }
    let seq: i64 = row.try_get("seq")?;
    let sender: String = row.try_get("sender_id")?;
    let kind: String = row.try_get("kind")?;
    let ts: i64 = row.try_get("ts")?;
    let recalled_at: Option<i64> = row.try_get("recalled_at")?;
    let owner: Option<String> = row.try_get("owner_id")?;
    if recalled_at.is_some() {
        return Ok(());
    }
    let window_ms = state.config().limits.recall_window_s as i64 * 1000;
    let is_owner = owner.as_deref() == Some(user.id.as_str());
    let allowed = if kind == MessageKind::System.as_str() {
        overseer
    } else {
        overseer || is_owner || (sender == user.id && now_ms() - ts <= window_ms)
    };
    if !allowed {
        return Err(if sender == user.id {
            AppError::forbidden(format!(
                "messages can be recalled only within {} seconds of sending",
                state.config().limits.recall_window_s
            ))
        } else {
            AppError::forbidden("only the sender, the group owner or a supervisor may recall this")
        });
    }
    let changed = sqlx::query(
        "UPDATE messages SET recalled_at = $1, body = '', attachment_id = NULL \
         WHERE id = $2 AND recalled_at IS NULL",
    )
    .bind(now_ms())
    .bind(msg_id)
    .execute(store.write())
    .await?;
    if changed.rows_affected() > 0 {
        state.deliver_frame(
            Target::Conv(conv.to_string()),
            Exclude::Nobody,
            &ServerFrame::Recalled {
                conv: conv.to_string(),
                msg_id: msg_id.to_string(),
                seq,
            },
        );
    }
    Ok(())
}
