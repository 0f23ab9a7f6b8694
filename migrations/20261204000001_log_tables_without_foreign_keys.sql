-- `messages` and `conversation_events` without their foreign key to
-- `conversations`, and the messages' idempotency key only where there is
-- one (system messages have no client_msg_id).
--
-- Why: these two tables take a row per message and per state change, the
-- most written rows there are; checking each row's conversation was a
-- quarter of PostgreSQL's time while a queue drained (docs/performance.md,
-- "Dispatch"). The check cannot fail: conversations are never deleted, and
-- every row of either table is written in the transaction that creates,
-- updates or locks its conversation row (a message reserves its `seq` with
-- an UPDATE of the conversation; an event records that transaction's change).
--
-- Portable SQL for SQLite and PostgreSQL: SQLite cannot drop a constraint,
-- so each table is copied, dropped and created again under its own name
-- (so that PostgreSQL names its constraints as a fresh install does).

CREATE TABLE messages_copy AS SELECT * FROM messages;
DROP TABLE messages;
CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    conv_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    sender_id TEXT NOT NULL,
    sender_role TEXT NOT NULL,
    sender_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    attachment_id TEXT,
    client_msg_id TEXT,
    ts BIGINT NOT NULL,
    recalled_at BIGINT,
    UNIQUE (conv_id, seq)
);
INSERT INTO messages (id, conv_id, seq, sender_id, sender_role, sender_name, kind, body,
                      attachment_id, client_msg_id, ts, recalled_at)
    SELECT id, conv_id, seq, sender_id, sender_role, sender_name, kind, body,
           attachment_id, client_msg_id, ts, recalled_at
    FROM messages_copy;
DROP TABLE messages_copy;
-- The idempotency key (conv, sender, client_msg_id): it holds across nodes
-- and restarts. Queries that look a resend up name the index's condition.
CREATE UNIQUE INDEX messages_idempotency ON messages (conv_id, sender_id, client_msg_id)
    WHERE client_msg_id IS NOT NULL;

CREATE TABLE conversation_events_copy AS SELECT * FROM conversation_events;
DROP TABLE conversation_events;
CREATE TABLE conversation_events (
    id TEXT PRIMARY KEY,
    conv_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    team_id TEXT,
    agent_id TEXT,
    actor_id TEXT,
    note TEXT,
    at BIGINT NOT NULL
);
INSERT INTO conversation_events (id, conv_id, kind, team_id, agent_id, actor_id, note, at)
    SELECT id, conv_id, kind, team_id, agent_id, actor_id, note, at FROM conversation_events_copy;
DROP TABLE conversation_events_copy;
CREATE INDEX conversation_events_conv ON conversation_events(conv_id, at);
CREATE INDEX conversation_events_at ON conversation_events(at);
