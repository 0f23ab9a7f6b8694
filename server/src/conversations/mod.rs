//! Conversations (service and group), their members, and their messages.
//!
//! This module owns the `conversations`, `conversation_members`, `messages` and
//! `upload_conversations` tables and the protocol frames that act on them. Both
//! the WebSocket gateway and the REST API call the functions here, so a rule
//! (who may read, the recall window, idempotency) lives in one place.
//!
//! Layout:
//! - this file: conversation rows, membership checks, listing, group creation.
//! - [`committer`]: group commit of sends: many messages, one transaction.
//! - [`messages`]: send (idempotent, gapless `seq`), sync, read receipts,
//!   typing, recall.

pub mod committer;
pub mod messages;

use std::sync::LazyLock;

use sqlx::any::AnyRow;
use sqlx::Row;
use switchboard_protocol::{
    ConversationInfo, ConversationKind, ConversationState, Role, ServerFrame, UserRef,
};

use crate::bus::{Exclude, Target};
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::store::Store;
use crate::util::{new_id, now_ms};

/// The most members a group may be created with.
pub const MAX_GROUP_MEMBERS: usize = 10_000;

/// Rows per multi-row INSERT: 4 parameters each keeps a statement well under
/// SQLite's 32766-parameter limit and PostgreSQL's 65535.
const INSERT_CHUNK: usize = 500;

const INFO_COLUMNS: &str = "c.id, c.kind, c.state, c.title, c.team_id, c.agent_id, \
                            c.customer_id, c.last_seq, c.created_at, c.topic, c.offered_to, \
                            c.offer_expires_at, c.pending";

/// The columns of [`ConversationInfo`] unqualified, for `RETURNING` (an
/// update returns the row it wrote, so the event needs no read back).
pub const RETURNING_INFO: &str = "id, kind, state, title, team_id, agent_id, customer_id, \
                                  last_seq, created_at, topic, offered_to, offer_expires_at, \
                                  pending";

/// A [`ConversationInfo`] from a row holding [`INFO_COLUMNS`] or
/// [`RETURNING_INFO`].
pub fn info_from_row(row: &AnyRow, last_read_seq: i64) -> AppResult<ConversationInfo> {
    let kind: String = row.try_get("kind")?;
    let state: String = row.try_get("state")?;
    Ok(ConversationInfo {
        id: row.try_get("id")?,
        kind: ConversationKind::parse(&kind)
            .ok_or_else(|| AppError::internal(format!("bad conversation kind {kind}")))?,
        state: ConversationState::parse(&state)
            .ok_or_else(|| AppError::internal(format!("bad conversation state {state}")))?,
        title: row.try_get("title")?,
        team: row.try_get("team_id")?,
        agent: row.try_get("agent_id")?,
        customer: row.try_get("customer_id")?,
        last_seq: row.try_get("last_seq")?,
        last_read_seq,
        created_at: row.try_get("created_at")?,
        topic: row.try_get("topic")?,
        offered_to: row.try_get("offered_to")?,
        offer_expires_at: row.try_get("offer_expires_at")?,
        pending: row.try_get::<i64, _>("pending")? == 1,
    })
}

/// A conversation as everyone sees it (no per-user read position).
pub async fn conversation_info(store: &Store, conv: &str) -> AppResult<ConversationInfo> {
    let row = sqlx::query(&format!(
        "SELECT {INFO_COLUMNS} FROM conversations c WHERE c.id = $1"
    ))
    .bind(conv)
    .fetch_optional(store.read())
    .await?
    .ok_or_else(|| AppError::not_found("no such conversation"))?;
    info_from_row(&row, 0)
}

/// Every conversation the user `$1` is a member of that is not closed, as
/// [`INFO_COLUMNS`] plus `last_read_seq` and `sort_at` (latest activity; the
/// `auth` reply lists them newest first). Every connection's `auth` reads it,
/// joined to the token's session check in one statement
/// ([`crate::auth::open_session`]), so it has no `ORDER BY`: the caller sorts
/// (a sort node costs PostgreSQL more to set up than the few rows cost).
pub static MEMBER_CONVERSATIONS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {INFO_COLUMNS}, m.last_read_seq, c.updated_at AS sort_at \
         FROM conversation_members m JOIN conversations c ON c.id = m.conv_id \
         WHERE m.user_id = $1 AND c.state <> 'closed'"
    )
});

/// The conversations waiting for the agent to accept them (offer mode: not a
/// member yet, but a reconnecting agent must still see its open offers),
/// newest first: the `auth` reply of staff lists them after
/// [`MEMBER_CONVERSATIONS`].
pub async fn offers_to(store: &Store, user: &str) -> AppResult<Vec<ConversationInfo>> {
    let rows = sqlx::query(&format!(
        "SELECT {INFO_COLUMNS} FROM conversations c \
         WHERE c.offered_to = $1 AND c.state = 'queued' ORDER BY c.updated_at DESC"
    ))
    .bind(user)
    .fetch_all(store.read())
    .await?;
    rows.iter().map(|r| info_from_row(r, 0)).collect()
}

/// The user's conversations (closed ones too), newest activity first, paged
/// by `updated_at` then id.
pub async fn list_conversations_of(
    store: &Store,
    user: &str,
    limit: i64,
    offset: i64,
) -> AppResult<Vec<ConversationInfo>> {
    let rows = sqlx::query(&format!(
        "SELECT {INFO_COLUMNS}, m.last_read_seq FROM conversation_members m \
         JOIN conversations c ON c.id = m.conv_id \
         WHERE m.user_id = $1 ORDER BY c.updated_at DESC, c.id DESC LIMIT $2 OFFSET $3"
    ))
    .bind(user)
    .bind(limit)
    .bind(offset)
    .fetch_all(store.read())
    .await?;
    rows.iter()
        .map(|r| info_from_row(r, r.try_get("last_read_seq")?))
        .collect()
}

/// A customer's service conversations, newest first (creation time, then
/// id), strictly after `after` (`created_at`, id) when given; `last_read_seq`
/// is `viewer`'s own (0 where it is not a member). Who may ask is decided by
/// [`crate::customers`].
pub async fn service_conversations_of_customer(
    store: &Store,
    viewer: &str,
    customer: &str,
    after: Option<(i64, &str)>,
    limit: i64,
) -> AppResult<Vec<ConversationInfo>> {
    // Without a cursor: past every real row (ids are never empty, and no
    // conversation is created at i64::MAX).
    let (at, id) = after.unwrap_or((i64::MAX, ""));
    let rows = sqlx::query(&format!(
        "SELECT {INFO_COLUMNS}, m.last_read_seq AS member_read FROM conversations c \
         LEFT JOIN conversation_members m ON m.conv_id = c.id AND m.user_id = $2 \
         WHERE c.kind = 'service' AND c.customer_id = $1 \
         AND (c.created_at < $3 OR (c.created_at = $3 AND c.id < $4)) \
         ORDER BY c.created_at DESC, c.id DESC LIMIT $5"
    ))
    .bind(customer)
    .bind(viewer)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(store.read())
    .await?;
    rows.iter()
        .map(|r| info_from_row(r, r.try_get::<Option<i64>, _>("member_read")?.unwrap_or(0)))
        .collect()
}

/// What a user may do in a conversation. Only [`Access::Member`] writes
/// (send, read marks, typing); the other kinds read history and `sync` only,
/// get no events and do not become members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A member: read and write.
    Member,
    /// A supervisor or admin who is not a member: read only.
    Oversight,
    /// An agent who is not a member of this service conversation but serves
    /// or has served its customer ([`crate::customers::serves`]): read only,
    /// so that it can read the customer's earlier conversations.
    Served,
}

/// A conversation as one user is allowed to see it, or `not_found` — also when
/// it exists but the user may not see it, so ids cannot be probed. Members
/// see their conversations; supervisors and admins see any (read only); an
/// agent sees, read only, the service conversations of a customer it serves
/// or has served. Group conversations are for their members only (and
/// oversight).
pub async fn visible_conversation(
    store: &Store,
    user: &UserRef,
    conv: &str,
) -> AppResult<(ConversationInfo, Access)> {
    let row = sqlx::query(&format!(
        "SELECT {INFO_COLUMNS}, m.last_read_seq AS member_read FROM conversations c \
         LEFT JOIN conversation_members m ON m.conv_id = c.id AND m.user_id = $2 \
         WHERE c.id = $1"
    ))
    .bind(conv)
    .bind(&user.id)
    .fetch_optional(store.read())
    .await?;
    let not_found = || AppError::not_found("no such conversation");
    let row = row.ok_or_else(not_found)?;
    let member_read: Option<i64> = row.try_get("member_read")?;
    match member_read {
        Some(read) => Ok((info_from_row(&row, read)?, Access::Member)),
        None if matches!(user.role, Role::Supervisor | Role::Admin) => {
            Ok((info_from_row(&row, 0)?, Access::Oversight))
        }
        None if user.role == Role::Agent => {
            let info = info_from_row(&row, 0)?;
            match (&info.kind, &info.customer) {
                (ConversationKind::Service, Some(customer))
                    if crate::customers::serves(store, &user.id, customer).await? =>
                {
                    Ok((info, Access::Served))
                }
                _ => Err(not_found()),
            }
        }
        None => Err(not_found()),
    }
}

/// Fails with `not_found` unless the user is a member.
pub async fn require_member(store: &Store, user: &str, conv: &str) -> AppResult<()> {
    let row = sqlx::query(
        "SELECT 1 AS one FROM conversation_members WHERE conv_id = $1 AND user_id = $2",
    )
    .bind(conv)
    .bind(user)
    .fetch_optional(store.read())
    .await?;
    row.map(|_| ())
        .ok_or_else(|| AppError::not_found("no such conversation"))
}

/// Keeps the ids that name existing users, in order, without duplicates.
async fn existing_users(store: &Store, ids: &[String]) -> AppResult<Vec<String>> {
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<&String> = ids.iter().filter(|id| seen.insert(id.as_str())).collect();
    let mut found = std::collections::HashSet::new();
    for chunk in unique.chunks(INSERT_CHUNK) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT id FROM users WHERE id IN ({})",
            placeholders.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(id.as_str());
        }
        for row in q.fetch_all(store.read()).await? {
            found.insert(row.try_get::<String, _>("id")?);
        }
    }
    Ok(unique
        .into_iter()
        .filter(|id| found.contains(id.as_str()))
        .cloned()
        .collect())
}

/// Creates a group conversation owned by `creator` (a staff member) with the
/// given members; every member's connections receive a `conversation` event.
pub async fn create_group(
    state: &AppState,
    creator: &UserRef,
    title: &str,
    members: &[String],
) -> AppResult<ConversationInfo> {
    let title = title.trim();
    if title.is_empty() || title.chars().count() > 100 {
        return Err(AppError::bad_request("title must be 1 to 100 characters"));
    }
    if members.len() > MAX_GROUP_MEMBERS {
        return Err(AppError::bad_request(format!(
            "a group may have at most {MAX_GROUP_MEMBERS} members"
        )));
    }
    let existing = existing_users(state.store(), members).await?;
    let unknown: Vec<&String> = members
        .iter()
        .filter(|m| !existing.contains(m))
        .take(5)
        .collect();
    if !unknown.is_empty() {
        return Err(AppError::bad_request(format!(
            "unknown user ids: {}",
            unknown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut all: Vec<(String, &str)> = vec![(creator.id.clone(), "owner")];
    all.extend(
        existing
            .into_iter()
            .filter(|m| *m != creator.id)
            .map(|m| (m, "member")),
    );

    let id = new_id("cv_");
    let now = now_ms();
    let mut tx = state.store().write().begin().await?;
    sqlx::query(
        "INSERT INTO conversations (id, kind, state, title, owner_id, last_seq, created_at, updated_at) \
         VALUES ($1, 'group', 'active', $2, $3, 0, $4, $4)",
    )
    .bind(&id)
    .bind(title)
    .bind(&creator.id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    for chunk in all.chunks(INSERT_CHUNK) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| {
                format!(
                    "(${}, ${}, ${}, ${}, 0)",
                    i * 4 + 1,
                    i * 4 + 2,
                    i * 4 + 3,
                    i * 4 + 4
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO conversation_members (conv_id, user_id, role, joined_at, last_read_seq) VALUES {}",
            values.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (user, role) in chunk {
            q = q.bind(&id).bind(user.as_str()).bind(*role).bind(now);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;

    let info = ConversationInfo {
        id: id.clone(),
        kind: ConversationKind::Group,
        state: ConversationState::Active,
        title: Some(title.to_string()),
        team: None,
        agent: None,
        customer: None,
        last_seq: 0,
        last_read_seq: 0,
        created_at: now,
        topic: None,
        offered_to: None,
        offer_expires_at: None,
        pending: false,
    };
    state.members_added(&id, all.into_iter().map(|(u, _)| u).collect());
    state.deliver_frame(
        Target::Conv(id),
        Exclude::Nobody,
        &ServerFrame::Conversation { conv: info.clone() },
    );
    Ok(info)
}

/// The members of a conversation with their roles, for REST.
pub async fn members_of(store: &Store, conv: &str) -> AppResult<Vec<(String, String, i64)>> {
    let rows = sqlx::query(
        "SELECT user_id, role, last_read_seq FROM conversation_members WHERE conv_id = $1 ORDER BY joined_at, user_id",
    )
    .bind(conv)
    .fetch_all(store.read())
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("user_id")?,
                r.try_get("role")?,
                r.try_get("last_read_seq")?,
            ))
        })
        .collect()
}
