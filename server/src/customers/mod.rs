//! Customers as staff see them: a customer's profile and every service
//! conversation it has had, whichever agent or team served it, so an agent
//! who takes over a returning customer sees its earlier conversations.
//!
//! **Who may look.** Supervisors and admins always. An agent only while it
//! serves or once it has served the customer ([`serves`]): it is or was the
//! agent of one of the customer's service conversations (a member now, or
//! named by an `assigned`, `accepted`, `reassigned` or `transferred` event of
//! the conversation's history), or one of them is offered to it right now.
//! For any other agent a customer looks like an unknown id (`not_found`), so
//! ids cannot be probed; an id that is not a customer's is `not_found` too.
//! Customers get `forbidden`, their own id included: they have `/me` and
//! `/conversations`.
//!
//! The same rule lets such an agent read those conversations
//! ([`crate::conversations::Access::Served`]): history and `sync`, never
//! send, read marks, typing or recall. Group conversations stay members-only.
//!
//! REST routes: [`api`].

pub mod api;

use serde::Serialize;
use sqlx::Row;
use switchboard_protocol::{ConversationInfo, Role, UserRef};

use crate::conversations;
use crate::error::{AppError, AppResult};
use crate::store::Store;

/// The dispatch history events that make their `agent_id` the agent of a
/// conversation (the event kinds of `conversation_events`).
const SERVED_EVENTS: &str = "'assigned', 'accepted', 'reassigned', 'transferred'";

/// A customer's profile: what the `users` table holds about it plus a summary
/// of its service conversations.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub id: String,
    pub name: String,
    /// Always `customer`.
    pub role: Role,
    /// True for customers created through a quick link.
    pub temporary: bool,
    /// Absent when none is stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// When the customer first came (its account was made), ms.
    pub created_at: i64,
    /// How many service conversations it has had, open ones included.
    pub conversations: i64,
    /// When its newest service conversation began, ms; absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_conversation_at: Option<i64>,
}

/// Where a page of a customer's conversations continues: after the
/// conversation created at `created_at` with id `id` (newest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: i64,
    pub id: String,
}

impl Cursor {
    /// Parses a `next_cursor` this API handed out (`created_at:id`).
    pub fn parse(s: &str) -> AppResult<Cursor> {
        let invalid = || AppError::bad_request("invalid cursor");
        let (at, id) = s.split_once(':').ok_or_else(invalid)?;
        let created_at = at.parse::<i64>().map_err(|_| invalid())?;
        if created_at < 0 || id.is_empty() {
            return Err(invalid());
        }
        Ok(Cursor {
            created_at,
            id: id.to_string(),
        })
    }

    fn after(info: &ConversationInfo) -> Cursor {
        Cursor {
            created_at: info.created_at,
            id: info.id.clone(),
        }
    }

    /// The form handed out as `next_cursor`.
    pub fn encode(&self) -> String {
        format!("{}:{}", self.created_at, self.id)
    }
}

/// Whether `agent` serves or has served `customer`: it is or was the agent
/// of one of the customer's service conversations, or one of them is offered
/// to it now.
pub async fn serves(store: &Store, agent: &str, customer: &str) -> AppResult<bool> {
    let row = sqlx::query(&format!(
        "SELECT 1 AS one FROM conversations c \
         WHERE c.kind = 'service' AND c.customer_id = $1 AND ( \
           (c.state = 'queued' AND c.offered_to = $2) \
           OR EXISTS (SELECT 1 FROM conversation_members m \
                      WHERE m.conv_id = c.id AND m.user_id = $2) \
           OR EXISTS (SELECT 1 FROM conversation_events e \
                      WHERE e.conv_id = c.id AND e.agent_id = $2 AND e.kind IN ({SERVED_EVENTS})) \
         ) LIMIT 1"
    ))
    .bind(customer)
    .bind(agent)
    .fetch_optional(store.read())
    .await?;
    Ok(row.is_some())
}

/// Checks that `viewer` may look at customer `id`; see the module doc.
async fn authorize(store: &Store, viewer: &UserRef, id: &str) -> AppResult<()> {
    if !viewer.role.is_staff() {
        return Err(AppError::forbidden("this needs a staff account"));
    }
    let not_found = || AppError::not_found("no such customer");
    let row = sqlx::query("SELECT role FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(store.read())
        .await?
        .ok_or_else(not_found)?;
    if row.try_get::<String, _>("role")? != Role::Customer.as_str() {
        return Err(not_found());
    }
    if viewer.role.is_supervisor() || serves(store, &viewer.id, id).await? {
        Ok(())
    } else {
        Err(not_found())
    }
}

/// Customer `id`'s profile, if `viewer` may see it.
pub async fn profile(store: &Store, viewer: &UserRef, id: &str) -> AppResult<Profile> {
    authorize(store, viewer, id).await?;
    let user =
        sqlx::query("SELECT id, name, temporary, phone, created_at FROM users WHERE id = $1")
            .bind(id)
            .fetch_one(store.read())
            .await?;
    let summary = sqlx::query(
        "SELECT COUNT(*) AS n, MAX(created_at) AS last FROM conversations \
         WHERE kind = 'service' AND customer_id = $1",
    )
    .bind(id)
    .fetch_one(store.read())
    .await?;
    Ok(Profile {
        id: user.try_get("id")?,
        name: user.try_get("name")?,
        role: Role::Customer,
        temporary: user.try_get::<i64, _>("temporary")? != 0,
        phone: user.try_get("phone")?,
        created_at: user.try_get("created_at")?,
        conversations: summary.try_get("n")?,
        last_conversation_at: summary.try_get("last")?,
    })
}

/// A page of customer `id`'s service conversations, newest first (by
/// creation, then id), if `viewer` may see them; with the cursor of the next
/// page, `None` on the last one. `last_read_seq` is the viewer's own.
pub async fn conversations(
    store: &Store,
    viewer: &UserRef,
    id: &str,
    limit: i64,
    cursor: Option<&Cursor>,
) -> AppResult<(Vec<ConversationInfo>, Option<Cursor>)> {
    authorize(store, viewer, id).await?;
    let after = cursor.map(|c| (c.created_at, c.id.as_str()));
    let mut items =
        conversations::service_conversations_of_customer(store, &viewer.id, id, after, limit + 1)
            .await?;
    let next = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(Cursor::after)
    } else {
        None
    };
    Ok((items, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let c = Cursor {
            created_at: 1_763_880_000_000,
            id: "cv_9d4e1b7a".into(),
        };
        assert_eq!(Cursor::parse(&c.encode()).unwrap(), c);
        for bad in ["", "abc", "12", "x:cv_1", "-5:cv_1", "12:", "1.5:cv_1"] {
            let e = Cursor::parse(bad).unwrap_err();
            assert_eq!(e.public_message(), "invalid cursor", "{bad}");
        }
    }
}
