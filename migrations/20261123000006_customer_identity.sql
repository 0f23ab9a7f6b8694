-- Signed customer identity (widget): the id a website gives its logged-in
-- customer, so the same customer keeps one account across visits. NULL for
-- everyone else; unique when set (several NULLs are allowed on SQLite and
-- PostgreSQL alike).
ALTER TABLE users ADD COLUMN external_id TEXT;
CREATE UNIQUE INDEX users_external_id ON users (external_id);
