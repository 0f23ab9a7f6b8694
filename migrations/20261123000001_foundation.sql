-- Foundation schema: identity, conversations, messages, uploads.
-- One migration set for SQLite and PostgreSQL: only TEXT and BIGINT columns,
-- no engine-specific types or defaults. Times are ms since the Unix epoch (UTC);
-- flags are BIGINT 0/1 because SQLite has no boolean type.

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    username TEXT UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    password_hash TEXT,
    temporary BIGINT NOT NULL DEFAULT 0,
    must_change_password BIGINT NOT NULL DEFAULT 0,
    disabled BIGINT NOT NULL DEFAULT 0,
    max_concurrency BIGINT,
    skills TEXT NOT NULL DEFAULT '[]',
    phone TEXT UNIQUE,
    created_at BIGINT NOT NULL
);

-- One family per login; every refresh token of a login belongs to it. A reused
-- refresh token revokes the family, and with it the family's access tokens.
CREATE TABLE token_families (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id TEXT NOT NULL REFERENCES token_families(id),
    user_id TEXT NOT NULL REFERENCES users(id),
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family_id);

CREATE TABLE quick_links (
    token_hash TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    created_by TEXT NOT NULL REFERENCES users(id),
    team_id TEXT,
    max_uses BIGINT,
    uses BIGINT NOT NULL DEFAULT 0,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE conversations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    title TEXT,
    team_id TEXT,
    agent_id TEXT,
    customer_id TEXT,
    owner_id TEXT,
    last_seq BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    closed_at BIGINT
);

CREATE TABLE conversation_members (
    conv_id TEXT NOT NULL REFERENCES conversations(id),
    user_id TEXT NOT NULL REFERENCES users(id),
    role TEXT NOT NULL,
    last_read_seq BIGINT NOT NULL DEFAULT 0,
    joined_at BIGINT NOT NULL,
    PRIMARY KEY (conv_id, user_id)
);
CREATE INDEX conversation_members_user ON conversation_members(user_id);

-- seq is unique per conversation and assigned in the storing transaction from
-- conversations.last_seq, so it is gapless. (conv_id, sender_id, client_msg_id)
-- is the idempotency key: it holds across nodes and restarts.
CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    conv_id TEXT NOT NULL REFERENCES conversations(id),
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
    UNIQUE (conv_id, seq),
    UNIQUE (conv_id, sender_id, client_msg_id)
);

CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL REFERENCES users(id),
    name TEXT NOT NULL,
    mime TEXT NOT NULL,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Which conversations an upload was sent into: members of these may read it.
CREATE TABLE upload_conversations (
    upload_id TEXT NOT NULL REFERENCES uploads(id),
    conv_id TEXT NOT NULL REFERENCES conversations(id),
    PRIMARY KEY (upload_id, conv_id)
);

-- Server-wide secrets generated on first start (the JWT signing key when none
-- is configured). Kept in the database so every node of a cluster shares it.
CREATE TABLE server_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
