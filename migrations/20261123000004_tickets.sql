-- Tickets schema: tickets, their state-change history, follow-up notes, SLA
-- policies and which SLA thresholds have fired. Same rules as the
-- foundation: TEXT and BIGINT only, times in ms since the Unix epoch (UTC),
-- JSON documents in TEXT columns.

-- status: open → processing → pending_confirmation → resolved → closed;
-- resolved/closed → processing reopens. The SLA clock is business time
-- (the team's working hours, or 24/7): sla_used_ms counted before
-- sla_since, and running from sla_since unless that is NULL (paused while
-- pending_confirmation, stopped once resolved or closed). sla_generation
-- changes whenever the clock's plan changes, so threshold jobs planned
-- for an earlier generation do nothing. *_met: NULL while open, 1 met, 0 missed.
CREATE TABLE tickets (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    type TEXT NOT NULL,
    priority TEXT NOT NULL,
    status TEXT NOT NULL,
    customer_id TEXT NOT NULL REFERENCES users(id),
    team_id TEXT,
    assignee_id TEXT,
    created_by TEXT NOT NULL,
    conv_id TEXT,
    escalation_level BIGINT NOT NULL DEFAULT 0,
    -- JSON array of upload ids.
    attachments TEXT NOT NULL DEFAULT '[]',
    sla_policy_id TEXT,
    sla_used_ms BIGINT NOT NULL DEFAULT 0,
    sla_since BIGINT,
    sla_generation BIGINT NOT NULL DEFAULT 0,
    first_response_at BIGINT,
    first_response_met BIGINT,
    resolved_at BIGINT,
    resolution_met BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX tickets_customer ON tickets(customer_id, id);
CREATE INDEX tickets_assignee ON tickets(assignee_id, id);
CREATE INDEX tickets_status ON tickets(status, id);
CREATE INDEX tickets_conv ON tickets(conv_id);

-- Every change of a ticket: created, status, priority, assigned, team,
-- escalated, sla_warning, sla_breach. from_value/to_value hold the change.
CREATE TABLE ticket_events (
    id TEXT PRIMARY KEY,
    ticket_id TEXT NOT NULL REFERENCES tickets(id),
    kind TEXT NOT NULL,
    from_value TEXT,
    to_value TEXT,
    actor_id TEXT,
    at BIGINT NOT NULL
);
CREATE INDEX ticket_events_ticket ON ticket_events(ticket_id, at);

-- visibility: internal (staff only) or public (the customer sees it too).
CREATE TABLE ticket_notes (
    id TEXT PRIMARY KEY,
    ticket_id TEXT NOT NULL REFERENCES tickets(id),
    author_id TEXT NOT NULL,
    body TEXT NOT NULL,
    visibility TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX ticket_notes_ticket ON ticket_notes(ticket_id, created_at);

-- Targets in seconds of business time. A policy with a team_id wins over
-- the one without (team_id NULL) for the same priority.
CREATE TABLE sla_policies (
    id TEXT PRIMARY KEY,
    priority TEXT NOT NULL,
    team_id TEXT,
    first_response_s BIGINT NOT NULL,
    resolution_s BIGINT NOT NULL,
    escalation_group TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX sla_policies_priority ON sla_policies(priority, team_id);

-- One row per threshold that has fired: a threshold is announced once per
-- ticket, whatever the re-planning after pauses does.
CREATE TABLE ticket_sla_fired (
    ticket_id TEXT NOT NULL REFERENCES tickets(id),
    target TEXT NOT NULL,
    threshold BIGINT NOT NULL,
    fired_at BIGINT NOT NULL,
    PRIMARY KEY (ticket_id, target, threshold)
);
