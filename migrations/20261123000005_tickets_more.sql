-- Tickets, second part: SLA policies by type with configurable warning
-- thresholds, a next-response target and reassignment on breach; the
-- next-response clock of each ticket; the catalogue of ticket types.
-- Same rules as the foundation: TEXT and BIGINT only, times in ms since the
-- Unix epoch (UTC), JSON documents in TEXT columns.

-- type: NULL = any type; a policy for the ticket's type wins over one for
-- any type, then a team's own over the one for all teams.
-- warn_at: JSON array of warning thresholds in percent, ascending, 1..99.
-- next_response_s: NULL = no next-response target.
-- reassign_on_breach: 1 = a breach reassigns to the team's least-loaded agent.
ALTER TABLE sla_policies ADD COLUMN type TEXT;
ALTER TABLE sla_policies ADD COLUMN warn_at TEXT NOT NULL DEFAULT '[50,80]';
ALTER TABLE sla_policies ADD COLUMN next_response_s BIGINT;
ALTER TABLE sla_policies ADD COLUMN reassign_on_breach BIGINT NOT NULL DEFAULT 0;

-- Next response: set when a customer's public note waits for staff.
-- next_response_from = business ms the clock had used at that note (NULL when
-- nothing waits); next_response_round counts such waits (each has its own
-- thresholds); next_response_met = the last finished or breached wait.
ALTER TABLE tickets ADD COLUMN next_response_from BIGINT;
ALTER TABLE tickets ADD COLUMN next_response_round BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tickets ADD COLUMN next_response_met BIGINT;

-- The catalogue of ticket types. While it has any row, a new ticket's type
-- must be the name of an enabled one.
CREATE TABLE ticket_types (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    enabled BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL
);
