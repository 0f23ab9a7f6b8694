-- Dispatch schema: teams, their members, customer–team relationships, the
-- dispatch columns of service conversations, their state-change history and
-- ratings. Same rules as the foundation: TEXT and BIGINT only, times in ms
-- since the Unix epoch (UTC), JSON documents in TEXT columns.

CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    lead_id TEXT REFERENCES users(id),
    -- Service scope: topics this team serves (JSON array of strings).
    topics TEXT NOT NULL DEFAULT '[]',
    -- Skills conversations routed here require (JSON [{name, level}]).
    skills TEXT NOT NULL DEFAULT '[]',
    -- Working-hours calendar (JSON) or NULL for always open.
    working_hours TEXT,
    max_concurrency BIGINT NOT NULL,
    strategy TEXT NOT NULL,
    -- Strategy parameters (JSON): offer_timeout_s, skill_widen_s, skill_fallback_s.
    strategy_params TEXT NOT NULL DEFAULT '{}',
    max_queue BIGINT,
    max_wait_s BIGINT,
    fallback_team_id TEXT,
    is_default BIGINT NOT NULL DEFAULT 0,
    enabled BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE team_members (
    team_id TEXT NOT NULL REFERENCES teams(id),
    user_id TEXT NOT NULL REFERENCES users(id),
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX team_members_user ON team_members(user_id);

CREATE TABLE customer_teams (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES users(id),
    team_id TEXT NOT NULL REFERENCES teams(id),
    relation TEXT NOT NULL,
    topics TEXT NOT NULL DEFAULT '[]',
    valid_from BIGINT,
    valid_to BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX customer_teams_customer ON customer_teams(customer_id);

ALTER TABLE conversations ADD COLUMN topic TEXT;
ALTER TABLE conversations ADD COLUMN priority BIGINT NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN skills TEXT NOT NULL DEFAULT '[]';
-- 1 while a queued conversation waits as a left message, outside the live queue.
ALTER TABLE conversations ADD COLUMN pending BIGINT NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN queued_at BIGINT;
ALTER TABLE conversations ADD COLUMN offered_to TEXT;
ALTER TABLE conversations ADD COLUMN offer_expires_at BIGINT;
ALTER TABLE conversations ADD COLUMN assigned_at BIGINT;
ALTER TABLE conversations ADD COLUMN first_response_at BIGINT;
ALTER TABLE conversations ADD COLUMN closed_by TEXT;
CREATE INDEX conversations_state_team ON conversations(state, team_id);
CREATE INDEX conversations_agent_state ON conversations(agent_id, state);
CREATE INDEX conversations_customer_state ON conversations(customer_id, state);

-- Every dispatch state change of a service conversation: queued, offered,
-- assigned, accepted, offer_expired, transferred, overflowed, left_message,
-- closed, rated. The assignment history and the reports read it.
CREATE TABLE conversation_events (
    id TEXT PRIMARY KEY,
    conv_id TEXT NOT NULL REFERENCES conversations(id),
    kind TEXT NOT NULL,
    team_id TEXT,
    agent_id TEXT,
    actor_id TEXT,
    note TEXT,
    at BIGINT NOT NULL
);
CREATE INDEX conversation_events_conv ON conversation_events(conv_id, at);
CREATE INDEX conversation_events_at ON conversation_events(at);

-- One rating per conversation: the primary key refuses a second.
CREATE TABLE ratings (
    conv_id TEXT PRIMARY KEY REFERENCES conversations(id),
    customer_id TEXT NOT NULL,
    agent_id TEXT,
    team_id TEXT,
    score BIGINT NOT NULL,
    comment TEXT,
    created_at BIGINT NOT NULL
);
