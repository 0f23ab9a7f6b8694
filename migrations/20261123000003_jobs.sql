-- Jobs schema: the durable scheduler every timed action runs on, and the
-- recurring schedules that feed it. Same rules as the foundation: TEXT and
-- BIGINT only, times in ms since the Unix epoch (UTC), JSON documents in TEXT.

-- One row per unit of background work. status: queued → running → done, or
-- back to queued (retry with backoff) and finally dead after max_attempts.
-- A running row belongs to the node in leased_by until lease_until; its
-- (leased_by, attempts) pair fences completion, so a worker whose lease ran
-- out cannot mark a job another node has taken since. unique_key makes
-- enqueueing idempotent (NULL: no key; NULLs never conflict).
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    unique_key TEXT UNIQUE,
    payload TEXT NOT NULL DEFAULT '{}',
    run_at BIGINT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    lease_until BIGINT,
    leased_by TEXT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT
);
-- Claiming: due queued jobs by run_at, expired leases by lease_until.
CREATE INDEX jobs_status_run_at ON jobs(status, run_at);
CREATE INDEX jobs_status_lease ON jobs(status, lease_until);
-- The admin list: one status, newest first.
CREATE INDEX jobs_status_id ON jobs(status, id);

-- Recurring (cron + IANA time zone) or one-shot (cron NULL, at set) work. The
-- scheduler turns each occurrence into a job with the unique key
-- schedule:<id>:<occurrence ms> and moves next_run_at on in the same
-- transaction. next_run_at NULL: no occurrence left. enabled 0: cancelled.
CREATE TABLE schedules (
    id TEXT PRIMARY KEY,
    -- The job kind every occurrence becomes.
    kind TEXT NOT NULL,
    -- What the schedule belongs to (a group for scheduled messages).
    target_id TEXT,
    cron TEXT,
    at BIGINT,
    timezone TEXT NOT NULL,
    payload TEXT NOT NULL DEFAULT '{}',
    next_run_at BIGINT,
    enabled BIGINT NOT NULL DEFAULT 1,
    created_by TEXT REFERENCES users(id),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    cancelled_at BIGINT,
    cancelled_by TEXT
);
CREATE INDEX schedules_due ON schedules(enabled, next_run_at);
CREATE INDEX schedules_target ON schedules(target_id, kind, created_at);
